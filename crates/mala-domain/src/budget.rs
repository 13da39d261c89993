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

/// What a model's tokens cost, in dollars per million (`coder_options.codex.prices`):
/// for a backend that reports tokens, not dollars.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct TokenPrice {
    pub input: f64,
    /// Input read from the provider's cache.
    pub cached_input: f64,
    pub output: f64,
}

impl TokenPrice {
    /// The dollars `usage` costs.
    pub fn cost(&self, usage: &mala_core::TokenUsage) -> f64 {
        #[allow(clippy::cast_precision_loss)] // token counts are far below 2^52
        let dollars = |tokens: u64, per_million: f64| tokens as f64 * per_million / 1e6;
        dollars(
            usage.input_tokens + usage.cache_creation_input_tokens,
            self.input,
        ) + dollars(usage.cache_read_input_tokens, self.cached_input)
            + dollars(usage.output_tokens, self.output)
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

    #[test]
    fn a_price_counts_fresh_cached_and_output_tokens_per_million() {
        let price = TokenPrice {
            input: 2.0,
            cached_input: 0.5,
            output: 10.0,
        };
        let usage = mala_core::TokenUsage {
            input_tokens: 1_000_000,
            output_tokens: 100_000,
            cache_read_input_tokens: 2_000_000,
            cache_creation_input_tokens: 0,
        };
        assert!(
            (price.cost(&usage) - 4.0).abs() < 1e-9,
            "{}",
            price.cost(&usage)
        );
    }
}
