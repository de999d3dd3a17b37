//! The Jupyter server's REST API over plain HTTP (the lab's notebook is only reachable on
//! loopback), and the WebSockets opened with the client's cookie. Kernels and terminals are
//! started through it by their own modules (`kernel`, `terminal`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{CONTENT_TYPE, COOKIE, HeaderValue, SET_COOKIE};
use hyper::{Method, Request};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use serde_json::Value;

use crate::JupyterError;
use crate::websocket::{self, WsStream};

/// How long one REST call may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Jupyter's XSRF cookie (tornado's default name).
const XSRF_COOKIE: &str = "_xsrf";

/// A Jupyter server, e.g. `http://127.0.0.1:1234/` (with a base path if it has one).
#[derive(Clone)]
pub struct JupyterClient {
    inner: Arc<Inner>,
}

struct Inner {
    /// `host:port`.
    authority: String,
    /// The server's base path, starting and ending with `/`.
    prefix: String,
    http: Client<HttpConnector, Full<Bytes>>,
    /// The XSRF token sent with state-changing requests (cookie and header, as a browser does).
    xsrf: tokio::sync::Mutex<Option<String>>,
}

/// `GET /api/status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct ServerStatus {
    #[serde(default)]
    pub started: String,
    #[serde(default)]
    pub last_activity: String,
    #[serde(default)]
    pub connections: u64,
    #[serde(default)]
    pub kernels: u64,
}

impl std::fmt::Debug for JupyterClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "JupyterClient({})", self.base_url())
    }
}

impl JupyterClient {
    /// A client for the server at `base_url` (`http://host:port/` plus an optional base path).
    pub fn new(base_url: &str) -> Result<Self, JupyterError> {
        let bad = |reason: &str| JupyterError::BadUrl {
            url: base_url.to_string(),
            reason: reason.to_string(),
        };
        let rest = base_url.strip_prefix("http://").ok_or_else(|| {
            bad("only http:// URLs are supported (the lab's notebook is on loopback)")
        })?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() || authority.contains(['@', '?', '#']) {
            return Err(bad("expected http://host:port/"));
        }
        if path.contains(['?', '#']) {
            return Err(bad("the base URL must not have a query or a fragment"));
        }
        let authority = if authority.rsplit_once(':').is_some_and(|(h, p)| {
            !h.is_empty() && !p.is_empty() && p.chars().all(|c| c.is_ascii_digit())
        }) || authority.ends_with(']') && authority.contains("]:")
        {
            authority.to_string()
        } else if authority.contains(':') && !authority.starts_with('[') {
            return Err(bad("bad port"));
        } else {
            format!("{authority}:80")
        };
        let mut prefix = path.to_string();
        if !prefix.ends_with('/') {
            prefix.push('/');
        }
        let http = Client::builder(TokioExecutor::new()).build_http();
        Ok(JupyterClient {
            inner: Arc::new(Inner {
                authority,
                prefix,
                http,
                xsrf: tokio::sync::Mutex::new(None),
            }),
        })
    }

    /// `http://host:port/base/`.
    pub fn base_url(&self) -> String {
        format!("http://{}{}", self.inner.authority, self.inner.prefix)
    }

    pub(crate) fn http_url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url())
    }

    pub(crate) fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{}{path}", self.inner.authority, self.inner.prefix)
    }

    /// `GET /api/status`.
    pub async fn status(&self) -> Result<ServerStatus, JupyterError> {
        let v = self.request(Method::GET, "api/status", None).await?;
        serde_json::from_value(v).map_err(|source| JupyterError::Json {
            what: "GET api/status: unexpected answer".into(),
            source,
        })
    }

    /// Polls `GET /api/status` until the server answers (it may still be starting).
    pub async fn wait_until_up(&self, timeout: Duration) -> Result<ServerStatus, JupyterError> {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.status().await {
                Ok(s) => return Ok(s),
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                return Err(JupyterError::Timeout {
                    what: format!(
                        "the Jupyter server at {} to answer GET api/status (last: {last})",
                        self.base_url()
                    ),
                    after: timeout,
                    partial: String::new(),
                });
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The ids of the server's running kernels.
    pub async fn kernel_ids(&self) -> Result<Vec<String>, JupyterError> {
        let v = self.request(Method::GET, "api/kernels", None).await?;
        Ok(names(&v, "id"))
    }

    /// The names of the server's open terminals.
    pub async fn terminal_names(&self) -> Result<Vec<String>, JupyterError> {
        let v = self.request(Method::GET, "api/terminals", None).await?;
        Ok(names(&v, "name"))
    }

    /// The XSRF token for state-changing requests: the one the server set as a cookie, else one
    /// of our own (the server only checks that the cookie and the header agree).
    async fn xsrf_token(&self) -> Result<String, JupyterError> {
        if let Some(t) = self.inner.xsrf.lock().await.clone() {
            return Ok(t);
        }
        // Pages set the cookie; the API alone may not.
        let _ = self.send(Method::GET, "", None, None).await;
        let mut guard = self.inner.xsrf.lock().await;
        Ok(guard
            .get_or_insert_with(|| guardlab_host::random_hex(16))
            .clone())
    }

    /// A REST call; the JSON answer (`null` for an empty body), or an error naming the call.
    pub(crate) async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, JupyterError> {
        let xsrf = if method == Method::GET {
            None
        } else {
            Some(self.xsrf_token().await?)
        };
        let (status, bytes) = self.send(method.clone(), path, body, xsrf).await?;
        let url = self.http_url(path);
        if !(200..300).contains(&status) {
            return Err(JupyterError::Http {
                method: method.to_string(),
                url,
                status,
                body: String::from_utf8_lossy(&bytes).chars().take(500).collect(),
            });
        }
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&bytes).map_err(|source| JupyterError::Json {
            what: format!("{method} {url}: the answer is not JSON"),
            source,
        })
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        xsrf: Option<String>,
    ) -> Result<(u16, Bytes), JupyterError> {
        let url = self.http_url(path);
        let what = format!("{method} {url}");
        let mut req = Request::builder().method(method).uri(&url);
        if let Some(t) = &xsrf {
            req = req
                .header(COOKIE, format!("{XSRF_COOKIE}={t}"))
                .header("X-XSRFToken", t.as_str());
        }
        let payload = match body {
            Some(v) => {
                req = req.header(CONTENT_TYPE, "application/json");
                Bytes::from(v.to_string())
            }
            None => Bytes::new(),
        };
        let req = req
            .body(Full::new(payload))
            .map_err(|e| JupyterError::BadUrl {
                url: url.clone(),
                reason: e.to_string(),
            })?;
        let exchange = async {
            let resp =
                self.inner
                    .http
                    .request(req)
                    .await
                    .map_err(|e| JupyterError::Unreachable {
                        what: what.clone(),
                        reason: error_chain(&e),
                    })?;
            let status = resp.status().as_u16();
            self.remember_xsrf(resp.headers().get_all(SET_COOKIE).iter())
                .await;
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| JupyterError::Unreachable {
                    what: what.clone(),
                    reason: format!("reading the answer: {e}"),
                })?
                .to_bytes();
            Ok((status, bytes))
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| JupyterError::Timeout {
                what: format!("the answer to {what}"),
                after: REQUEST_TIMEOUT,
                partial: String::new(),
            })?
    }

    async fn remember_xsrf<'a>(&self, cookies: impl Iterator<Item = &'a HeaderValue>) {
        for c in cookies {
            let Ok(c) = c.to_str() else { continue };
            let first = c.split(';').next().unwrap_or("");
            if let Some((name, value)) = first.split_once('=')
                && name.trim() == XSRF_COOKIE
                && !value.is_empty()
            {
                *self.inner.xsrf.lock().await = Some(value.trim().trim_matches('"').to_string());
            }
        }
    }

    /// Connects a WebSocket to `path` (relative to the base URL), with the XSRF cookie when
    /// there is one.
    pub(crate) async fn websocket(&self, path: &str) -> Result<WsStream, JupyterError> {
        let cookie = self.inner.xsrf.lock().await.clone();
        let cookie = cookie.map(|t| format!("{XSRF_COOKIE}={t}"));
        websocket::connect(&self.ws_url(path), cookie, REQUEST_TIMEOUT).await
    }

    /// `POST path` that answers a JSON object naming what it made: that name (`key` of the
    /// answer). `naming` says what the name is, for the error when it is missing.
    pub(crate) async fn create(
        &self,
        path: &'static str,
        body: Value,
        key: &str,
        naming: &'static str,
    ) -> Result<String, JupyterError> {
        let v = self.request(Method::POST, path, Some(body)).await?;
        match v[key].as_str() {
            Some(name) => Ok(name.to_string()),
            None => Err(JupyterError::MissingInAnswer {
                call: format!("POST {path}"),
                missing: naming,
                answer: v.to_string(),
            }),
        }
    }
}

fn names(v: &Value, key: &str) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e[key].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_are_parsed() {
        let c = JupyterClient::new("http://127.0.0.1:1234").unwrap();
        assert_eq!(c.base_url(), "http://127.0.0.1:1234/");
        assert_eq!(
            c.ws_url("api/kernels/x/channels"),
            "ws://127.0.0.1:1234/api/kernels/x/channels"
        );
        let c = JupyterClient::new("http://localhost:8888/user/jovyan").unwrap();
        assert_eq!(
            c.http_url("api/status"),
            "http://localhost:8888/user/jovyan/api/status"
        );
        let c = JupyterClient::new("http://[::1]:8888/").unwrap();
        assert_eq!(c.base_url(), "http://[::1]:8888/");
        assert_eq!(
            JupyterClient::new("http://localhost/").unwrap().base_url(),
            "http://localhost:80/"
        );
        for bad in [
            "https://x:1/",
            "127.0.0.1:1234",
            "http://:1/",
            "http://h:x/",
            "http://h:1/?q",
        ] {
            assert!(
                matches!(JupyterClient::new(bad), Err(JupyterError::BadUrl { .. })),
                "{bad}"
            );
        }
    }
}
