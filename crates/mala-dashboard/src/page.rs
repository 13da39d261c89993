//! The page: plain HTML, CSS and JavaScript compiled in, put together once,
//! with a Content-Security-Policy that lets only these exact script and
//! style texts run (by hash), so text that got into the page as markup
//! still could not act.

use sha2::{Digest, Sha256};

const HTML: &str = include_str!("../assets/index.html");
const CSS: &str = include_str!("../assets/app.css");
const JS: &str = include_str!("../assets/app.js");

/// The page and the policy it is served with.
#[derive(Debug, Clone)]
pub(crate) struct Page {
    pub(crate) html: String,
    pub(crate) policy: String,
}

impl Page {
    pub(crate) fn build() -> Self {
        let html = HTML
            .replacen("/*APP_CSS*/", CSS, 1)
            .replacen("/*APP_JS*/", JS, 1);
        let policy = format!(
            "default-src 'none'; script-src 'sha256-{}'; style-src 'sha256-{}'; \
             connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
             form-action 'none'; frame-ancestors 'none'",
            base64(&Sha256::digest(JS.as_bytes())),
            base64(&Sha256::digest(CSS.as_bytes()))
        );
        Self { html, policy }
    }
}

/// Standard base64 with padding, as CSP hashes are written.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> shift) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_standard_vectors() {
        for (raw, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(raw.as_bytes()), encoded, "{raw}");
        }
    }

    #[test]
    fn the_page_inlines_its_script_and_style_and_the_policy_names_their_hashes() {
        let page = Page::build();
        assert!(page.html.contains(JS) && page.html.contains(CSS));
        assert!(!page.html.contains("/*APP_JS*/") && !page.html.contains("/*APP_CSS*/"));
        let script = base64(&Sha256::digest(JS.as_bytes()));
        assert!(
            page.policy
                .contains(&format!("script-src 'sha256-{script}'"))
        );
        assert!(!page.policy.contains("unsafe-inline"));
        // Nothing on the page runs from markup: no handlers, no inline styles.
        let handlers = HTML.match_indices(" on").filter(|(at, _)| {
            let rest = &HTML[at + 3..];
            let name = rest.bytes().take_while(u8::is_ascii_lowercase).count();
            name > 0 && rest[name..].starts_with('=')
        });
        assert_eq!(handlers.count(), 0, "an inline event handler in index.html");
        assert!(!HTML.contains(" style=") && !HTML.contains("javascript:"));
        assert!(!JS.contains("innerHTML") && !JS.contains("insertAdjacentHTML"));
        assert!(!JS.contains("eval(") && !JS.contains("new Function"));
    }
}
