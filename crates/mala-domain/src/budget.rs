//! What an issue, and the run, may still spend.

use crate::Spend;

/// Dollars and tokens spent so far.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Spent {
    pub cost_usd: f64,
    pub tokens: u64,
}

impl Spent {
    pub fn add(&mut self, cost_usd: f64, tokens: u64) {
        self.cost_usd += cost_usd.max(0.0);
        self.tokens = self.tokens.saturating_add(tokens);
    }
}

/// Why `spent` is at or past `limit`, in words; `None` while it is under.
pub fn budget_reached(limit: &Spend, spent: &Spent) -> Option<String> {
    if let Some(max) = limit.max_cost_usd
        && spent.cost_usd >= max
    {
        return Some(format!("${:.2} spent of ${max:.2}", spent.cost_usd));
    }
    if let Some(max) = limit.max_tokens
        && spent.tokens >= max
    {
        return Some(format!("{} tokens spent of {max}", spent.tokens));
    }
    None
}

/// The dollars a new session may spend: the least of what is left, when
/// any limit is in dollars.
pub fn dollars_left(limits: &[(&Spend, &Spent)]) -> Option<f64> {
    limits
        .iter()
        .filter_map(|(limit, spent)| {
            limit
                .max_cost_usd
                .map(|max| (max - spent.cost_usd).max(0.0))
        })
        .reduce(f64::min)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_is_reached_at_its_limit_in_dollars_or_tokens() {
        let limit = Spend {
            max_cost_usd: Some(1.0),
            max_tokens: Some(1000),
        };
        let mut spent = Spent::default();
        spent.add(0.5, 400);
        assert_eq!(budget_reached(&limit, &spent), None);
        spent.add(0.5, 0);
        assert_eq!(
            budget_reached(&limit, &spent).as_deref(),
            Some("$1.00 spent of $1.00")
        );
        let tokens = Spent {
            cost_usd: 0.1,
            tokens: 1000,
        };
        assert_eq!(
            budget_reached(&limit, &tokens).as_deref(),
            Some("1000 tokens spent of 1000")
        );
        assert_eq!(budget_reached(&Spend::default(), &tokens), None, "no limit");
        spent.add(-3.0, 0);
        assert!(
            (spent.cost_usd - 1.0).abs() < 1e-9,
            "a refund is not credit"
        );
    }

    #[test]
    fn a_session_gets_the_least_of_what_is_left() {
        let issue = Spend {
            max_cost_usd: Some(2.0),
            max_tokens: None,
        };
        let run = Spend {
            max_cost_usd: Some(10.0),
            max_tokens: None,
        };
        let issue_spent = Spent {
            cost_usd: 1.5,
            tokens: 0,
        };
        let run_spent = Spent {
            cost_usd: 9.75,
            tokens: 0,
        };
        assert_eq!(
            dollars_left(&[(&issue, &issue_spent), (&run, &Spent::default())]),
            Some(0.5)
        );
        assert_eq!(
            dollars_left(&[(&issue, &issue_spent), (&run, &run_spent)]),
            Some(0.25)
        );
        assert_eq!(dollars_left(&[(&Spend::default(), &issue_spent)]), None);
        let over = Spent {
            cost_usd: 3.0,
            tokens: 0,
        };
        assert_eq!(dollars_left(&[(&issue, &over)]), Some(0.0));
    }
}
