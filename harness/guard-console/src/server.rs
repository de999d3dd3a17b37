//! Where the console listens, who may ask it, and its routes.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::api;
use crate::assets;
use crate::shared::SharedStore;

/// The console's port, next to the notebook's 1234.
pub const DEFAULT_PORT: u16 = 1235;

/// How the console is served.
#[derive(Clone, Debug)]
pub struct ConsoleOptions {
    pub listen: SocketAddr,
    /// Allow an address other than loopback (`--listen-any`); then every request needs the token.
    pub allow_remote: bool,
    /// The token a remote listener requires; one is made when none is given.
    pub token: Option<String>,
    /// What the pages say they look at: the lab, or the scenario run.
    pub title: String,
}

impl Default for ConsoleOptions {
    fn default() -> Self {
        ConsoleOptions {
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), DEFAULT_PORT),
            allow_remote: false,
            token: None,
            title: "guardlab".into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error(
        "the console listens on loopback only; {0} is not a loopback address (pass --listen-any to allow it, with a token)"
    )]
    NotLoopback(IpAddr),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A console being served.
pub struct ConsoleServer {
    addr: SocketAddr,
    token: Option<String>,
    task: JoinHandle<()>,
}

#[derive(Clone)]
pub(crate) struct AppState {
    pub store: SharedStore,
    pub title: String,
    token: Option<String>,
}

impl ConsoleServer {
    /// Bind and serve until dropped (or [`ConsoleServer::stop`]).
    pub async fn start(store: SharedStore, options: ConsoleOptions) -> Result<Self, ConsoleError> {
        let ip = options.listen.ip();
        let token = if ip.is_loopback() {
            None
        } else if options.allow_remote {
            Some(
                options
                    .token
                    .clone()
                    .unwrap_or_else(|| guardlab_host::random_hex(16)),
            )
        } else {
            return Err(ConsoleError::NotLoopback(ip));
        };
        let listener =
            TcpListener::bind(options.listen)
                .await
                .map_err(|source| ConsoleError::Bind {
                    addr: options.listen,
                    source,
                })?;
        let addr = listener.local_addr().map_err(|source| ConsoleError::Bind {
            addr: options.listen,
            source,
        })?;
        let state = AppState {
            store,
            title: options.title,
            token: token.clone(),
        };
        let app = routes(state);
        let task = tokio::spawn(async move {
            // The server ends with its task; an accept error is not worth ending a run for.
            let _ = axum::serve(listener, app).await;
        });
        Ok(ConsoleServer { addr, token, task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address to open, with the token when one is needed.
    pub fn url(&self) -> String {
        match &self.token {
            Some(t) => format!("http://{}/?token={t}", self.addr),
            None => format!("http://{}/", self.addr),
        }
    }

    pub fn stop(self) {
        self.task.abort();
    }
}

impl Drop for ConsoleServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn routes(state: AppState) -> Router {
    Router::new()
        .route("/", get(assets::index))
        .route("/assets/app.js", get(assets::script))
        .route("/assets/app.css", get(assets::style))
        .route("/api/state", get(api::state))
        .route("/api/events", get(api::events))
        .route("/api/fingerprints/{name}", get(api::fingerprint))
        .route("/api/policies/preview", post(api::preview_policy))
        .route("/api/policies", post(api::create_policy))
        .route(
            "/api/policies/{policy}",
            get(api::policy).post(api::save_policy),
        )
        .route("/api/policies/{policy}/graph.svg", get(api::policy_graph))
        .route("/api/policies/{policy}/merge", post(api::merge))
        .route("/api/investigation", get(api::investigation))
        .route("/api/investigation.svg", get(api::investigation_graph))
        .route("/api/flags", get(api::flags))
        .route("/api/viewed", post(api::viewed))
        .route("/api/workshop/go", post(api::workshop_go))
        .layer(middleware::from_fn_with_state(state.clone(), require_token))
        .with_state(state)
}

/// On a non-loopback listener, every request carries the token: `?token=`, a bearer
/// header, or the cookie the first page sets.
async fn require_token(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some(token) = &state.token else {
        return next.run(request).await;
    };
    let in_query = request
        .uri()
        .query()
        .is_some_and(|q| q.split('&').any(|kv| kv == format!("token={token}")));
    let in_header = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == format!("Bearer {token}"));
    let in_cookie = request
        .headers()
        .get(header::COOKIE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .any(|c| c.trim() == format!("guardlab_token={token}"))
        });
    if !(in_query || in_header || in_cookie) {
        return (StatusCode::UNAUTHORIZED, "the console needs its token\n").into_response();
    }
    let mut response = next.run(request).await;
    if in_query
        && let Ok(cookie) =
            format!("guardlab_token={token}; HttpOnly; SameSite=Strict; Path=/").parse()
    {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    response
}
