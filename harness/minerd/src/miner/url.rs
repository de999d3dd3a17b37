//! The pool address of `--url`, in the forms cpuminer and the scenario use.

use std::fmt;

/// Port used when the URL names none (common Stratum pool port).
pub const DEFAULT_PORT: u16 = 3333;

/// A pool address from `--url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolUrl {
    pub host: String,
    pub port: u16,
    /// Credentials given in the URL (`stratum+tcp://user:pass@host:port`).
    pub user: Option<String>,
    pub pass: Option<String>,
}

/// Why `--url` was refused; messages follow cpuminer's.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UrlError {
    #[error("unknown protocol -- '{0}'")]
    UnknownProtocol(String),
    #[error(
        "unsupported protocol -- '{0}' (guardlab's stand-in speaks only stratum+tcp; a URL without a scheme means stratum+tcp here)"
    )]
    Unsupported(String),
    #[error("invalid URL -- '{0}'")]
    Invalid(String),
}

impl PoolUrl {
    /// Accepts `stratum+tcp://[user[:pass]@]host[:port][/...]`, `host:port` and a bare
    /// `host` (port 3333). IPv6 literals go in brackets.
    pub fn parse(url: &str) -> Result<PoolUrl, UrlError> {
        let rest = match url.split_once("://") {
            Some((scheme, rest)) => {
                if scheme.eq_ignore_ascii_case("stratum+tcp") {
                    rest
                } else if ["http", "https", "stratum+tcps"]
                    .iter()
                    .any(|s| scheme.eq_ignore_ascii_case(s))
                {
                    return Err(UrlError::Unsupported(url.to_string()));
                } else {
                    return Err(UrlError::UnknownProtocol(url.to_string()));
                }
            }
            None => url,
        };
        let invalid = || UrlError::Invalid(url.to_string());
        let rest = rest.split('/').next().unwrap_or_default();
        let (userinfo, hostport) = match rest.rsplit_once('@') {
            Some((userinfo, hostport)) => (Some(userinfo), hostport),
            None => (None, rest),
        };
        let (user, pass) = match userinfo {
            None => (None, None),
            Some(info) => match info.split_once(':') {
                Some((u, p)) => (Some(u.to_string()), Some(p.to_string())),
                None => (Some(info.to_string()), None),
            },
        };
        let (host, port) = if let Some(bracketed) = hostport.strip_prefix('[') {
            let (host, after) = bracketed.split_once(']').ok_or_else(invalid)?;
            match after {
                "" => (host, None),
                _ => (host, Some(after.strip_prefix(':').ok_or_else(invalid)?)),
            }
        } else {
            match hostport.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (hostport, None),
            }
        };
        if host.is_empty() || host.contains(':') && !hostport.starts_with('[') {
            return Err(invalid());
        }
        let port = match port {
            None => DEFAULT_PORT,
            Some(p) => p.parse().ok().filter(|&p| p != 0).ok_or_else(invalid)?,
        };
        Ok(PoolUrl {
            host: host.to_string(),
            port,
            user,
            pass,
        })
    }
}

impl fmt::Display for PoolUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "stratum+tcp://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "stratum+tcp://{}:{}", self.host, self.port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(host: &str, port: u16) -> PoolUrl {
        PoolUrl {
            host: host.into(),
            port,
            user: None,
            pass: None,
        }
    }

    #[test]
    fn urls_in_the_forms_the_scenario_and_cpuminer_use() {
        assert_eq!(
            PoolUrl::parse("fakeminingpool.example.com").unwrap(),
            url("fakeminingpool.example.com", 3333)
        );
        assert_eq!(
            PoolUrl::parse("fakeminingpool.example.com:4444").unwrap(),
            url("fakeminingpool.example.com", 4444)
        );
        assert_eq!(
            PoolUrl::parse("stratum+tcp://198.18.0.7:3333").unwrap(),
            url("198.18.0.7", 3333)
        );
        assert_eq!(
            PoolUrl::parse("STRATUM+TCP://pool/").unwrap(),
            url("pool", 3333)
        );
        assert_eq!(
            PoolUrl::parse("stratum+tcp://[::1]:3334").unwrap(),
            url("::1", 3334)
        );
        let with_credentials = PoolUrl::parse("stratum+tcp://ME:passwd@pool:3333").unwrap();
        assert_eq!(with_credentials.user.as_deref(), Some("ME"));
        assert_eq!(with_credentials.pass.as_deref(), Some("passwd"));
        assert_eq!(with_credentials.to_string(), "stratum+tcp://pool:3333");
        assert_eq!(
            PoolUrl::parse("[::1]").unwrap().to_string(),
            "stratum+tcp://[::1]:3333"
        );
    }

    #[test]
    fn bad_urls_are_refused_with_cpuminer_messages() {
        assert_eq!(
            PoolUrl::parse("gopher://pool").unwrap_err().to_string(),
            "unknown protocol -- 'gopher://pool'"
        );
        assert!(matches!(
            PoolUrl::parse("http://pool:8332"),
            Err(UrlError::Unsupported(_))
        ));
        for bad in [
            "",
            ":3333",
            "pool:",
            "pool:0",
            "pool:99999",
            "pool:x",
            "a:b:c",
        ] {
            assert_eq!(
                PoolUrl::parse(bad),
                Err(UrlError::Invalid(bad.to_string())),
                "{bad:?}"
            );
        }
    }
}
