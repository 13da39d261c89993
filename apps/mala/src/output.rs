//! Writing to stdout and stderr. A closed pipe (`mala ... | head`) is not an error.

use std::io::{self, Write};

/// Writes `text` to stdout, ignoring a closed pipe.
pub(crate) fn stdout(text: &str) {
    let mut out = io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

/// Writes one line to stderr.
pub(crate) fn note(text: &str) {
    let mut err = io::stderr().lock();
    let _ = writeln!(err, "{text}");
}
