//! Who may look and who may act: the run's access token on every request,
//! and for a control also the token in a header, the page's CSRF token and
//! a same-origin request. On loopback, the Host must be loopback too, so a
//! page elsewhere cannot reach the server through a name it rebinds.

use std::net::SocketAddr;

use axum::http::HeaderMap;
use axum::http::header::{AUTHORIZATION, HOST, ORIGIN};

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Denied {
    /// No token, or the wrong one: 401.
    Token,
    /// A control without the page's CSRF token or from another origin: 403.
    Forgery,
    /// A loopback server asked for under a name that is not loopback: 403.
    Host,
}

impl Denied {
    pub(crate) fn message(self) -> &'static str {
        match self {
            Self::Token => {
                "this dashboard needs its access token (the `?token=` of the address mala printed)"
            }
            Self::Forgery => {
                "a control needs the token in a header, the page's CSRF token and a same-origin request"
            }
            Self::Host => {
                "this dashboard answers on loopback names only (127.0.0.1, localhost, [::1])"
            }
        }
    }
}

/// The run's secrets and where the server listens.
#[derive(Debug, Clone)]
pub(crate) struct Access {
    pub(crate) token: String,
    pub(crate) csrf: String,
    pub(crate) addr: SocketAddr,
    pub(crate) public: bool,
}

/// A secret of 244 random bits, as hex.
pub(crate) fn secret() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// Equal without saying where they differ, by the time taken.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |diff, (x, y)| diff | (x ^ y))
            == 0
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn header_token(headers: &HeaderMap) -> Option<&str> {
    header(headers, "x-mala-token").or_else(|| {
        headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
    })
}

impl Access {
    /// A read: the token in a header or in the query.
    pub(crate) fn read(&self, headers: &HeaderMap, query: Option<&str>) -> Result<(), Denied> {
        self.host(headers)?;
        let given = header_token(headers).or(query);
        if given.is_some_and(|token| same(token, &self.token)) {
            Ok(())
        } else {
            Err(Denied::Token)
        }
    }

    /// A control: the token in a header (a link cannot carry it), the CSRF
    /// token, and no other site's origin.
    pub(crate) fn control(&self, headers: &HeaderMap) -> Result<(), Denied> {
        self.host(headers)?;
        if !header_token(headers).is_some_and(|token| same(token, &self.token)) {
            return Err(Denied::Token);
        }
        if !header(headers, "x-mala-csrf").is_some_and(|csrf| same(csrf, &self.csrf)) {
            return Err(Denied::Forgery);
        }
        let host = header(headers, HOST.as_str()).unwrap_or_default();
        if let Some(origin) = header(headers, ORIGIN.as_str())
            && origin != format!("http://{host}")
        {
            return Err(Denied::Forgery);
        }
        if header(headers, "sec-fetch-site").is_some_and(|site| site != "same-origin") {
            return Err(Denied::Forgery);
        }
        Ok(())
    }

    fn host(&self, headers: &HeaderMap) -> Result<(), Denied> {
        if self.public {
            return Ok(());
        }
        let port = self.addr.port();
        let host = header(headers, HOST.as_str()).unwrap_or_default();
        // The loopback names, and the address itself as printed (127.0.0.2…).
        let loopback = ["127.0.0.1", "localhost", "[::1]"]
            .iter()
            .any(|name| host == format!("{name}:{port}"))
            || host == self.addr.to_string();
        if loopback { Ok(()) } else { Err(Denied::Host) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn access(public: bool) -> Access {
        Access {
            token: "t0ken".into(),
            csrf: "c5rf".into(),
            addr: "127.0.0.1:4000".parse().unwrap(),
            public,
        }
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn a_read_needs_the_token_in_a_header_or_the_query() {
        let access = access(false);
        let host = ("host", "127.0.0.1:4000");
        assert_eq!(access.read(&headers(&[host]), None), Err(Denied::Token));
        assert_eq!(
            access.read(&headers(&[host]), Some("wrong")),
            Err(Denied::Token)
        );
        assert_eq!(
            access.read(&headers(&[host]), Some("t0ke")),
            Err(Denied::Token)
        );
        assert_eq!(access.read(&headers(&[host]), Some("t0ken")), Ok(()));
        assert_eq!(
            access.read(&headers(&[host, ("x-mala-token", "t0ken")]), None),
            Ok(())
        );
        let bearer = ("authorization", "Bearer t0ken");
        assert_eq!(access.read(&headers(&[host, bearer]), None), Ok(()));
    }

    #[test]
    fn a_loopback_server_refuses_other_host_names() {
        let access = access(false);
        for host in ["evil.example:4000", "127.0.0.1:4001", "127.0.0.1", ""] {
            assert_eq!(
                access.read(&headers(&[("host", host)]), Some("t0ken")),
                Err(Denied::Host),
                "{host}"
            );
        }
        for host in ["localhost:4000", "[::1]:4000", "127.0.0.1:4000"] {
            assert_eq!(
                access.read(&headers(&[("host", host)]), Some("t0ken")),
                Ok(())
            );
        }
        // Served publicly, any name will do; the token is still needed.
        let public = self::access(true);
        let far = ("host", "dash.example:4000");
        assert_eq!(public.read(&headers(&[far]), Some("t0ken")), Ok(()));
        assert_eq!(public.read(&headers(&[far]), None), Err(Denied::Token));
    }

    #[test]
    fn a_control_needs_the_header_token_the_csrf_token_and_the_same_origin() {
        let access = access(false);
        let host = ("host", "127.0.0.1:4000");
        let token = ("x-mala-token", "t0ken");
        let csrf = ("x-mala-csrf", "c5rf");
        assert_eq!(access.control(&headers(&[host, token, csrf])), Ok(()));
        let same = ("origin", "http://127.0.0.1:4000");
        let fetch = ("sec-fetch-site", "same-origin");
        assert_eq!(
            access.control(&headers(&[host, token, csrf, same, fetch])),
            Ok(())
        );
        // The query's token is not enough: a link or a form could carry it.
        assert_eq!(access.control(&headers(&[host, csrf])), Err(Denied::Token));
        assert_eq!(
            access.control(&headers(&[host, token])),
            Err(Denied::Forgery)
        );
        let wrong = ("x-mala-csrf", "c5rg");
        assert_eq!(
            access.control(&headers(&[host, token, wrong])),
            Err(Denied::Forgery)
        );
        let other = ("origin", "http://evil.example");
        assert_eq!(
            access.control(&headers(&[host, token, csrf, other])),
            Err(Denied::Forgery)
        );
        let cross = ("sec-fetch-site", "cross-site");
        assert_eq!(
            access.control(&headers(&[host, token, csrf, cross])),
            Err(Denied::Forgery)
        );
    }

    #[test]
    fn secrets_are_long_and_differ() {
        let (a, b) = (secret(), secret());
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
    }
}
