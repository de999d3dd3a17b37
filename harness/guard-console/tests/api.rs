//! The console over HTTP, as the page uses it: the tutorial's actions change the one store,
//! the live stream says so, and a listener that is not loopback needs its token.

use std::net::SocketAddr;
use std::time::Duration;

use guardlab_browser_test_support::http;
use guardlab_guard_console::{
    ConsoleError, ConsoleOptions, ConsoleServer, PolicyStore, SharedStore,
};
use guardlab_test_support::notebook::{FIRST, baseline};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<Value>,
    extra: &str,
) -> (u16, String, String) {
    let reply = http::request(addr, method, path, body.as_ref(), extra)
        .await
        .unwrap();
    (reply.status, reply.headers, reply.body)
}

async fn json_of(addr: SocketAddr, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let reply = http::request(addr, method, path, body.as_ref(), "")
        .await
        .unwrap();
    (reply.status, reply.json())
}

fn learned_store() -> SharedStore {
    let nb = baseline(&FIRST);
    let mut store = PolicyStore::default();
    for e in &nb.s.events {
        store.observe(e);
    }
    SharedStore::new(store)
}

fn loopback() -> ConsoleOptions {
    ConsoleOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..ConsoleOptions::default()
    }
}

#[tokio::test]
async fn the_tutorials_actions_go_through_the_one_store() {
    let store = learned_store();
    let server = ConsoleServer::start(store.clone(), loopback())
        .await
        .unwrap();
    let addr = server.addr();

    let (status, page, html) = request(addr, "GET", "/", None, "").await;
    assert_eq!(status, 200);
    assert!(html.contains("/assets/app.js"), "{html}");
    assert!(
        page.to_ascii_lowercase()
            .contains("content-security-policy: default-src 'self'"),
        "the page may load nothing from elsewhere: {page}"
    );

    let (_, state) = json_of(addr, "GET", "/api/state", None).await;
    let fingerprint = state["fingerprints"][0]["name"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(state["fingerprints"][0]["namespace"], "cryptominer");
    assert_eq!(state["learning"], true);

    // A preview keeps nothing; an empty selection is refused in words.
    let (status, preview) = json_of(
        addr,
        "POST",
        "/api/policies/preview",
        Some(json!({ "fingerprints": [fingerprint] })),
    )
    .await;
    assert_eq!(status, 200);
    let yaml = preview["yaml"].as_str().unwrap();
    assert!(
        yaml.contains("kind: SpyderbatPolicy") && yaml.contains("mode: audit"),
        "{yaml}"
    );
    let (status, refused) = json_of(addr, "POST", "/api/policies/preview", Some(json!({}))).await;
    assert_eq!(status, 400);
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .contains("no fingerprint selected")
    );
    assert!(store.read(|s| s.policies().is_empty()));

    // The edited preview is what is saved.
    let edited = yaml.replace(
        &preview["name"].as_str().unwrap().to_string(),
        "from-the-console",
    );
    let (status, made) = json_of(
        addr,
        "POST",
        "/api/policies",
        Some(json!({ "yaml": edited, "mode": "audit" })),
    )
    .await;
    assert_eq!(status, 201, "{made}");
    assert_eq!(made["name"], "from-the-console");
    assert_eq!(
        store.read(|s| s.latest_policy().unwrap().metadata.name.clone()),
        "from-the-console"
    );

    // Policy info's Save: the store's policy, as the runner's set_mode would change it.
    let (status, saved) = json_of(
        addr,
        "POST",
        "/api/policies/from-the-console",
        Some(json!({ "mode": "enforce" })),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(saved["status"], "Enforcing");
    let (status, _) = json_of(
        addr,
        "POST",
        "/api/policies/from-the-console",
        Some(json!({ "mode": "sideways" })),
    )
    .await;
    assert_eq!(status, 400);
    let (status, _) = json_of(addr, "GET", "/api/policies/nope", None).await;
    assert_eq!(status, 404);

    let (status, headers, svg) = request(
        addr,
        "GET",
        "/api/policies/from-the-console/graph.svg",
        None,
        "",
    )
    .await;
    assert_eq!(status, 200);
    assert!(headers.contains("image/svg+xml"));
    assert!(svg.starts_with("<svg") && svg.contains("jupyter"), "{svg}");
}

#[tokio::test]
async fn the_live_stream_says_what_changed() {
    let store = learned_store();
    let server = ConsoleServer::start(store.clone(), loopback())
        .await
        .unwrap();
    let mut stream = TcpStream::connect(server.addr()).await.unwrap();
    stream
        .write_all(b"GET /api/events HTTP/1.1\r\nHost: console\r\n\r\n")
        .await
        .unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    // The headers first, then a change made after the page connected.
    while !seen.contains("\r\n\r\n") {
        let n = stream.read(&mut buf).await.unwrap();
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(seen.contains("text/event-stream"), "{seen}");
    store.update(|s| s.viewed("deviations"));
    let got = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let n = stream.read(&mut buf).await.unwrap();
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
            if seen.contains("\"page\":\"deviations\"") {
                return;
            }
        }
    })
    .await;
    assert!(got.is_ok(), "no change came: {seen}");
    assert!(seen.contains("event: change"));
}

#[tokio::test]
async fn only_loopback_unless_asked_and_then_only_with_the_token() {
    let store = learned_store();
    let any: SocketAddr = "0.0.0.0:0".parse().unwrap();
    let refused = ConsoleServer::start(
        store.clone(),
        ConsoleOptions {
            listen: any,
            ..ConsoleOptions::default()
        },
    )
    .await;
    match refused {
        Err(e @ ConsoleError::NotLoopback(_)) => assert!(e.to_string().contains("--listen-any")),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("a console listened on 0.0.0.0 without --listen-any"),
    }

    let server = ConsoleServer::start(
        store,
        ConsoleOptions {
            listen: any,
            allow_remote: true,
            token: Some("s3cret".into()),
            ..ConsoleOptions::default()
        },
    )
    .await
    .unwrap();
    assert!(server.url().ends_with("/?token=s3cret"), "{}", server.url());
    let addr: SocketAddr = format!("127.0.0.1:{}", server.addr().port())
        .parse()
        .unwrap();
    let (status, _, _) = request(addr, "GET", "/api/state", None, "").await;
    assert_eq!(status, 401);
    let (status, _, _) = request(addr, "GET", "/api/state?token=wrong", None, "").await;
    assert_eq!(status, 401);
    let (status, headers, _) = request(addr, "GET", "/?token=s3cret", None, "").await;
    assert_eq!(status, 200);
    assert!(
        headers.contains("guardlab_token=s3cret"),
        "the page's requests carry it on: {headers}"
    );
    let (status, _, _) = request(
        addr,
        "GET",
        "/api/state",
        None,
        "Cookie: guardlab_token=s3cret\r\n",
    )
    .await;
    assert_eq!(status, 200);
    let (status, _, _) = request(
        addr,
        "GET",
        "/api/state",
        None,
        "Authorization: Bearer s3cret\r\n",
    )
    .await;
    assert_eq!(status, 200);
}
