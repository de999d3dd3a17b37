//! The lab's web hosts: static sites served over HTTP and HTTPS, chosen by the Host header,
//! with a log of every request for the scenario to inspect.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HOST, HeaderValue, SERVER, USER_AGENT};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::ServicesError;
use crate::dns::normalize_name;

/// A client that does not finish the TLS handshake in this time is dropped.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const SERVER_NAME: &str = "guardlab-lab";

/// One static resource of a site.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// Absolute path, matched exactly (the query string is ignored).
    pub path: String,
    pub body: Bytes,
    pub content_type: String,
}

impl Route {
    pub fn new(path: impl Into<String>, content_type: impl Into<String>, body: Bytes) -> Route {
        Route {
            path: path.into(),
            body,
            content_type: content_type.into(),
        }
    }
}

/// A lab web host: its name and its resources. Every other path answers 404.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Site {
    /// The host name clients use (Host header / SNI); an IP literal is allowed too.
    pub host: String,
    pub routes: Vec<Route>,
}

/// HTTP or HTTPS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

/// One request a lab web host answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestLog {
    pub scheme: Scheme,
    /// The Host header (or HTTP/2 authority), lowercase, without port.
    pub host: String,
    pub method: String,
    /// Path and query as requested.
    pub path: String,
    pub status: u16,
    pub peer: SocketAddr,
    /// The listening address the request came in on.
    pub local: SocketAddr,
    pub user_agent: Option<String>,
    /// Length of the response body (0 for HEAD).
    pub body_bytes: u64,
}

/// Host -> path -> route, checked once.
#[derive(Debug)]
pub(crate) struct Router {
    sites: HashMap<String, HashMap<String, Route>>,
}

impl Router {
    pub(crate) fn new(sites: &[Site]) -> Result<Router, ServicesError> {
        let mut table: HashMap<String, HashMap<String, Route>> = HashMap::new();
        for site in sites {
            let bad = |detail: String| ServicesError::BadSite {
                host: site.host.clone(),
                detail,
            };
            let host = normalize_name(&site.host);
            if host.is_empty() {
                return Err(bad("the host name is empty".to_string()));
            }
            if table.contains_key(&host) {
                return Err(bad("two sites have this host name".to_string()));
            }
            let mut routes = HashMap::new();
            for route in &site.routes {
                if !route.path.starts_with('/') || route.path.contains(['?', '#']) {
                    return Err(bad(format!(
                        "route {:?}: a path starts with '/' and has no query or fragment",
                        route.path
                    )));
                }
                if HeaderValue::from_str(&route.content_type).is_err() {
                    return Err(bad(format!(
                        "route {:?}: content type {:?} is not a valid header value",
                        route.path, route.content_type
                    )));
                }
                if routes.insert(route.path.clone(), route.clone()).is_some() {
                    return Err(bad(format!("route {:?} appears twice", route.path)));
                }
            }
            table.insert(host, routes);
        }
        Ok(Router { sites: table })
    }

    /// The host names, for the TLS certificate.
    pub(crate) fn hosts(&self) -> Vec<String> {
        let mut hosts: Vec<String> = self.sites.keys().cloned().collect();
        hosts.sort();
        hosts
    }

    fn respond(&self, host: &str, method: &Method, path: &str) -> Response<Full<Bytes>> {
        let Some(routes) = self.sites.get(host) else {
            return plain(StatusCode::NOT_FOUND, "404 Not Found: no such site here\n");
        };
        let Some(route) = routes.get(path) else {
            return plain(StatusCode::NOT_FOUND, "404 Not Found\n");
        };
        if method != Method::GET && method != Method::HEAD {
            let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "405 Method Not Allowed\n");
            response
                .headers_mut()
                .insert("allow", HeaderValue::from_static("GET, HEAD"));
            return response;
        }
        let mut response = Response::new(Full::new(route.body.clone()));
        if let Ok(content_type) = HeaderValue::from_str(&route.content_type) {
            response.headers_mut().insert(CONTENT_TYPE, content_type);
        }
        response
    }
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// The host a request is for: the Host header, else the HTTP/2 authority; no port, lowercase.
fn request_host(request: &Request<Incoming>) -> String {
    let raw = request
        .headers()
        .get(HOST)
        .and_then(|value| value.to_str().ok())
        .map(str::to_string)
        .or_else(|| request.uri().authority().map(|a| a.as_str().to_string()))
        .unwrap_or_default();
    normalize_name(&strip_port(&raw))
}

fn strip_port(authority: &str) -> String {
    let authority = authority.rsplit('@').next().unwrap_or(authority);
    if let Some(rest) = authority.strip_prefix('[') {
        // [v6]:port -> v6
        return rest.split(']').next().unwrap_or(rest).to_string();
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => host.to_string(),
        _ => authority.to_string(),
    }
}

/// What every web connection needs: the sites and the request log.
pub(crate) struct WebContext {
    pub(crate) router: Arc<Router>,
    pub(crate) log: Arc<Mutex<Vec<RequestLog>>>,
}

/// Serves HTTP (or HTTPS with `tls`) on `listener` until the task running it is aborted.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    scheme: Scheme,
    tls: Option<Arc<ServerConfig>>,
    context: Arc<WebContext>,
) {
    let local = match listener.local_addr() {
        Ok(local) => local,
        Err(error) => {
            tracing::error!(%error, "a web listener has no local address");
            return;
        }
    };
    let acceptor = tls.map(TlsAcceptor::from);
    // Owned here so that aborting this loop also drops every open connection.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Out of descriptors and the like: back off instead of spinning.
                        tracing::warn!(%error, %local, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let context = context.clone();
                let acceptor = acceptor.clone();
                connections.spawn(async move {
                    match acceptor {
                        None => serve(stream, scheme, peer, local, context).await,
                        Some(acceptor) => {
                            match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                                Ok(Ok(tls)) => serve(tls, scheme, peer, local, context).await,
                                Ok(Err(error)) => tracing::info!(%error, %peer, %local, "TLS handshake failed"),
                                Err(_) => tracing::info!(%peer, %local, "TLS handshake timed out"),
                            }
                        }
                    }
                });
            }
            // Reap finished connections so the set does not grow for the lab's lifetime.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn serve<S>(
    stream: S,
    scheme: Scheme,
    peer: SocketAddr,
    local: SocketAddr,
    context: Arc<WebContext>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |request: Request<Incoming>| {
        let context = context.clone();
        async move {
            let host = request_host(&request);
            let method = request.method().clone();
            let path = request.uri().path().to_string();
            let mut response = context.router.respond(&host, &method, &path);
            response
                .headers_mut()
                .insert(SERVER, HeaderValue::from_static(SERVER_NAME));
            let body_bytes = if method == Method::HEAD {
                0
            } else {
                hyper::body::Body::size_hint(response.body())
                    .exact()
                    .unwrap_or(0)
            };
            let entry = RequestLog {
                scheme,
                host,
                method: method.to_string(),
                path: request
                    .uri()
                    .path_and_query()
                    .map(|p| p.as_str().to_string())
                    .unwrap_or(path),
                status: response.status().as_u16(),
                peer,
                local,
                user_agent: request
                    .headers()
                    .get(USER_AGENT)
                    .and_then(|value| value.to_str().ok())
                    .map(str::to_string),
                body_bytes,
            };
            tracing::debug!(?entry, "web request");
            context
                .log
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(entry);
            Ok::<_, Infallible>(response)
        }
    });
    let builder = auto::Builder::new(TokioExecutor::new());
    if let Err(error) = builder
        .serve_connection(TokioIo::new(stream), service)
        .await
    {
        tracing::debug!(%error, %peer, %local, "web connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strip_port_handles_names_v4_and_v6() {
        assert_eq!(strip_port("sourceforge.net:443"), "sourceforge.net");
        assert_eq!(strip_port("sourceforge.net"), "sourceforge.net");
        assert_eq!(strip_port("127.0.0.1:8080"), "127.0.0.1");
        assert_eq!(strip_port("[::1]:80"), "::1");
        assert_eq!(strip_port("[::1]"), "::1");
    }

    #[test]
    fn router_rejects_bad_sites() {
        let route = |path: &str| Route::new(path, "text/plain", Bytes::from_static(b"x"));
        let site = |host: &str, routes| Site {
            host: host.to_string(),
            routes,
        };
        let cases = [
            (vec![site("", vec![])], "host name is empty"),
            (
                vec![site("a.test", vec![]), site("A.test.", vec![])],
                "two sites",
            ),
            (vec![site("a.test", vec![route("nope")])], "starts with '/'"),
            (vec![site("a.test", vec![route("/a?b")])], "no query"),
            (
                vec![site("a.test", vec![route("/a"), route("/a")])],
                "appears twice",
            ),
        ];
        for (sites, expected) in cases {
            let error = Router::new(&sites).unwrap_err().to_string();
            assert!(error.contains(expected), "{error} lacks {expected}");
        }
    }

    #[test]
    fn router_answers_routes_404_and_405() {
        let router = Router::new(&[Site {
            host: "Example.TEST".to_string(),
            routes: vec![Route::new("/", "text/html", Bytes::from_static(b"hi"))],
        }])
        .unwrap();
        assert_eq!(router.hosts(), vec!["example.test".to_string()]);
        let ok = router.respond("example.test", &Method::GET, "/");
        assert_eq!(ok.status(), StatusCode::OK);
        assert_eq!(ok.headers()[CONTENT_TYPE], "text/html");
        assert_eq!(
            router
                .respond("example.test", &Method::GET, "/other")
                .status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            router.respond("other.test", &Method::GET, "/").status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            router.respond("example.test", &Method::POST, "/").status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
    }
}
