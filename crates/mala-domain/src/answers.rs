//! Reading a reviewer's or an epic verifier's answer: the model's free text,
//! somewhere in which is one JSON object. Nothing here slices the text by a
//! computed range, so no answer, however malformed, can panic the run.

use mala_core::{Finding, ReviewError, ReviewVerdict};
use serde::Deserialize;
use serde::de::DeserializeOwned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReviewAnswer {
    findings: Vec<RawFinding>,
}

#[derive(Debug, Deserialize)]
struct EpicAnswer {
    passed: bool,
    #[serde(default)]
    findings: Vec<RawFinding>,
}

#[derive(Debug, Deserialize)]
struct RawFinding {
    priority: u8,
    title: String,
    #[serde(default)]
    body: String,
    #[serde(default)]
    file: Option<String>,
    #[serde(default)]
    line_start: Option<u32>,
    #[serde(default)]
    line_end: Option<u32>,
}

/// An epic verifier's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpicVerdict {
    pub passed: bool,
    pub findings: Vec<Finding>,
}

/// The first JSON object in `text` that has the shape `T`, or why none does.
/// Candidates start at each `{` (a char boundary: it is ASCII) and end where
/// the JSON value ends, so prose, code fences and stray braces around the
/// object do not matter.
fn first_object<T: DeserializeOwned>(text: &str) -> Result<T, String> {
    let mut last_error = None;
    for (start, _) in text.match_indices('{') {
        let Some(rest) = text.get(start..) else {
            continue;
        };
        let mut values = serde_json::Deserializer::from_str(rest).into_iter::<T>();
        match values.next() {
            Some(Ok(value)) => return Ok(value),
            Some(Err(error)) => last_error = Some(error.to_string()),
            None => {}
        }
    }
    Err(match last_error {
        Some(error) => format!("the answer is not the expected JSON: {error}"),
        None => format!(
            "no JSON object in the answer: {}",
            text.chars().take(200).collect::<String>()
        ),
    })
}

fn check(raw: Vec<RawFinding>) -> Result<Vec<Finding>, ReviewError> {
    raw.into_iter()
        .map(|raw| {
            if raw.priority > 3 {
                return Err(ReviewError::InvalidAnswer(format!(
                    "priority {} is not 0-3",
                    raw.priority
                )));
            }
            if raw.title.trim().is_empty() {
                return Err(ReviewError::InvalidAnswer(
                    "a finding has no title".to_owned(),
                ));
            }
            Ok(Finding {
                priority: raw.priority,
                title: raw.title,
                body: raw.body,
                file: raw.file.filter(|f| !f.is_empty()),
                line_start: raw.line_start,
                line_end: raw.line_end,
            })
        })
        .collect()
}

/// Reads a reviewer's answer: one JSON object `{"findings": [...]}`, maybe
/// inside a code fence or prose. Priorities are 0–3; every finding has a title.
pub fn parse_review_answer(text: &str) -> Result<ReviewVerdict, ReviewError> {
    let answer: ReviewAnswer = first_object(text).map_err(ReviewError::InvalidAnswer)?;
    Ok(ReviewVerdict {
        findings: check(answer.findings)?,
    })
}

/// Reads `{"passed": bool, "findings": [...]}`. A failed verdict without a
/// blocking finding gets one, so the failure has a reason to act on; a
/// "pass" with a blocking finding is not a pass.
pub fn parse_epic_answer(text: &str) -> Result<EpicVerdict, ReviewError> {
    let answer: EpicAnswer = first_object(text).map_err(ReviewError::InvalidAnswer)?;
    let mut findings = check(answer.findings)?;
    let blocked = |findings: &[Finding]| findings.iter().any(Finding::blocks);
    if !answer.passed && !blocked(&findings) {
        findings.push(Finding {
            priority: 1,
            title: "The epic's acceptance criteria are not met".to_owned(),
            body: "The verifier failed the epic without naming a blocking finding; look at its acceptance criteria again.".to_owned(),
            file: None,
            line_start: None,
            line_end: None,
        });
    }
    Ok(EpicVerdict {
        passed: answer.passed && !blocked(&findings),
        findings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_object_is_found_inside_prose_and_fences() {
        let text = "Here you go } (a stray brace first)\n```json\n{\"findings\": [{\"priority\": 1, \"title\": \"t\"}]}\n```\nThanks {bye}";
        let verdict = parse_review_answer(text).unwrap();
        assert_eq!(verdict.findings.len(), 1);
        assert_eq!(verdict.findings[0].priority, 1);
    }

    #[test]
    fn a_closing_brace_before_the_first_opening_one_is_an_answer_error_not_a_panic() {
        for text in [
            "no findings } see {",
            "}{",
            "}",
            "{",
            "",
            "{\"findings\": [}",
        ] {
            assert!(
                matches!(
                    parse_review_answer(text),
                    Err(ReviewError::InvalidAnswer(_))
                ),
                "{text:?}"
            );
            assert!(
                matches!(parse_epic_answer(text), Err(ReviewError::InvalidAnswer(_))),
                "{text:?}"
            );
        }
    }

    #[test]
    fn findings_are_checked() {
        let bad_priority = r#"{"findings": [{"priority": 7, "title": "t"}]}"#;
        let no_title = r#"{"findings": [{"priority": 2, "title": " "}]}"#;
        let unknown_key = r#"{"findings": [], "verdict": "ok"}"#;
        for text in [bad_priority, no_title, unknown_key] {
            assert!(parse_review_answer(text).is_err(), "{text}");
        }
    }

    #[test]
    fn an_epic_failed_without_a_blocking_finding_gets_one_and_a_blocked_pass_fails() {
        let failed = parse_epic_answer(r#"{"passed": false, "findings": []}"#).unwrap();
        assert!(!failed.passed);
        assert!(failed.findings.iter().any(Finding::blocks));
        let blocked_pass =
            parse_epic_answer(r#"{"passed": true, "findings": [{"priority": 0, "title": "t"}]}"#)
                .unwrap();
        assert!(!blocked_pass.passed);
        let advisory_pass =
            parse_epic_answer(r#"{"passed": true, "findings": [{"priority": 3, "title": "t"}]}"#)
                .unwrap();
        assert!(advisory_pass.passed);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// No text at all can panic either parser.
        #[test]
        fn no_answer_panics(text in "\\PC*") {
            let _ = parse_review_answer(&text);
            let _ = parse_epic_answer(&text);
        }

        /// Braces and JSON punctuation, dense: the shapes that broke slicing.
        #[test]
        fn no_brace_soup_panics(text in "[{}\\[\\]\":,a-z0-9 é\n]{0,64}") {
            let _ = parse_review_answer(&text);
            let _ = parse_epic_answer(&text);
        }

        /// A valid answer is found whatever brace-free prose surrounds it.
        #[test]
        fn a_valid_answer_survives_any_prose_around_it(
            before in "[^{}]{0,40}",
            after in "[^{}]{0,40}",
            priority in 0u8..=3,
            title in "[a-zA-Z][a-zA-Z ]{0,20}",
        ) {
            let answer = serde_json::json!({"findings": [{"priority": priority, "title": title}]});
            let text = format!("{before}{answer}{after}");
            let verdict = parse_review_answer(&text).unwrap();
            prop_assert_eq!(verdict.findings.len(), 1);
            prop_assert_eq!(verdict.findings[0].priority, priority);
        }
    }
}
