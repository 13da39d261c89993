//! Labels as br stores them, and the labels mala's rules give meaning to.

use sha2::{Digest, Sha256};

/// The label mala puts on issues that need a person (or a later run).
pub const NEEDS_FOLLOWUP: &str = "needs-followup";

/// Labels br and the original mala agree on: `[A-Za-z0-9_:-]`, at most 50
/// characters (longer ones keep a 41-character prefix and a hash).
pub fn normalize_label(label: &str) -> String {
    let clean: String = label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | ':' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    if clean.len() <= 50 {
        return clean;
    }
    let digest = Sha256::digest(clean.as_bytes());
    let hash: String = digest.iter().take(4).fold(String::new(), |mut hex, b| {
        use std::fmt::Write;
        // Writing to a String cannot fail.
        let _ = write!(hex, "{b:02x}");
        hex
    });
    format!("{}:{hash}", &clean[..41])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_normalised_like_the_original() {
        assert_eq!(normalize_label("review:src/a b.rs"), "review:src-a-b-rs");
        let long = "x".repeat(60);
        let label = normalize_label(&long);
        assert_eq!(label.len(), 50);
        assert!(label.starts_with(&"x".repeat(41)));
        assert_eq!(normalize_label(&long), label, "stable");
    }
}
