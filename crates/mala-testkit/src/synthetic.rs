//! Synthetic trackers for benchmarks, shaped like research/beads-scripts/gen10k.py:
//! 1 % epics, about 60 % of other issues under an epic, 20 % blocked by an
//! earlier issue, 20 % closed and 10 % in progress.

use std::fmt::Write as _;

/// A small deterministic generator, so every run benchmarks the same tracker.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number in `0..bound`.
    fn below(&mut self, bound: usize) -> usize {
        let bound = u64::try_from(bound).unwrap();
        usize::try_from(self.next() % bound).unwrap()
    }

    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
}

fn base36(mut n: u64) -> String {
    const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).expect("ascii digits")
}

fn stamp(seconds: u64) -> String {
    let (h, m, s) = (seconds / 3600, seconds / 60 % 60, seconds % 60);
    let (d, h) = (1 + h / 24, h % 24);
    format!("2026-01-{d:02}T{h:02}:{m:02}:{s:02}.000000Z")
}

/// The ids of a synthetic tracker with `prefix` (`<prefix>-<base36>`, sorted).
pub fn synthetic_ids(prefix: &str, issues: usize) -> Vec<String> {
    let mut ids: Vec<String> = (0..issues as u64)
        .map(|i| format!("{prefix}-{}", base36(1296 + i)))
        .collect();
    ids.sort();
    ids
}

/// A tracker of `issues` issues as br's issues.jsonl (sorted by id).
pub fn synthetic_tracker(prefix: &str, issues: usize, seed: u64) -> String {
    let mut rng = XorShift(seed.max(1));
    let raw: Vec<String> = (0..issues as u64)
        .map(|i| format!("{prefix}-{}", base36(1296 + i)))
        .collect();
    let epics = (issues / 100).max(1);
    let mut rows: Vec<(String, String)> = Vec::with_capacity(issues);
    for (i, id) in raw.iter().enumerate() {
        let is_epic = i < epics;
        let status = if is_epic {
            "open"
        } else {
            match rng.below(10) {
                0 | 1 => "closed",
                2 => "in_progress",
                _ => "open",
            }
        };
        let t = 37 * i as u64;
        let kind = if is_epic {
            "epic"
        } else {
            ["task", "task", "task", "bug", "feature"][rng.below(5)]
        };
        let mut row = format!(
            r#"{{"id":"{id}","title":"Benchmark issue {i}","description":"Lorem ipsum dolor sit amet, consectetur adipiscing elit.","acceptance_criteria":"- builds\n- tests pass","status":"{status}","priority":{},"issue_type":"{kind}","created_at":"{}","created_by":"bench","updated_at":"{}""#,
            rng.below(5),
            stamp(t),
            stamp(t + 5),
        );
        if status == "closed" {
            let _ = write!(
                row,
                r#","closed_at":"{}","close_reason":"done""#,
                stamp(t + 6)
            );
        }
        row.push_str(r#","compaction_level":0,"original_size":0"#);
        if rng.chance(30) {
            row.push_str(r#","labels":["backend","needs-followup"]"#);
        }
        let mut deps = Vec::new();
        if !is_epic && rng.chance(60) {
            deps.push((raw[rng.below(epics)].clone(), "parent-child"));
        }
        if !is_epic && i > epics + 10 && rng.chance(20) {
            let earlier = epics + rng.below(i - epics);
            deps.push((raw[earlier].clone(), "blocks"));
        }
        deps.sort();
        if !deps.is_empty() {
            row.push_str(r#","dependencies":["#);
            for (n, (on, kind)) in deps.iter().enumerate() {
                if n > 0 {
                    row.push(',');
                }
                let _ = write!(
                    row,
                    r#"{{"issue_id":"{id}","depends_on_id":"{on}","type":"{kind}","created_at":"{}","created_by":"bench","metadata":"{{}}","thread_id":""}}"#,
                    stamp(t)
                );
            }
            row.push(']');
        }
        row.push('}');
        rows.push((id.clone(), row));
    }
    rows.sort();
    let mut out = String::new();
    for (_, row) in rows {
        out.push_str(&row);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_valid_json_sorted_and_deterministic() {
        let text = synthetic_tracker("b", 300, 7);
        assert_eq!(text, synthetic_tracker("b", 300, 7));
        let ids: Vec<String> = text
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["id"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        assert_eq!(ids, synthetic_ids("b", 300));
    }
}
