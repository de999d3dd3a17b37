//! Shared helpers of the integration tests: loopback sockets, a DNS client, HTTP(S) clients
//! that trust only the lab CA, and bounded child processes. Everything stays on 127.0.0.1.
#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};
use http_body_util::{BodyExt, Empty};
use hyper::{HeaderMap, Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

pub const LOOPBACK: &str = "127.0.0.1";

/// Runs a test body with a time bound, so a hung server fails the test instead of CI.
pub async fn within<T>(seconds: u64, body: impl Future<Output = T>) -> T {
    match tokio::time::timeout(Duration::from_secs(seconds), body).await {
        Ok(value) => value,
        Err(_) => panic!("the test did not finish within {seconds} s"),
    }
}

pub fn udp_socket() -> std::net::UdpSocket {
    std::net::UdpSocket::bind((LOOPBACK, 0)).expect("bind a loopback UDP socket")
}

pub fn tcp_listener() -> std::net::TcpListener {
    std::net::TcpListener::bind((LOOPBACK, 0)).expect("bind a loopback TCP listener")
}

/// Sends one DNS question over UDP or TCP and returns the parsed response.
pub async fn dns_query(
    server: SocketAddr,
    name: &str,
    record_type: RecordType,
    tcp: bool,
) -> Message {
    let mut message = Message::new();
    message
        .set_id(0x4242)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true)
        .add_query(Query::query(Name::from_ascii(name).unwrap(), record_type));
    let request = message.to_vec().unwrap();
    let response = if tcp {
        let mut stream = TcpStream::connect(server).await.unwrap();
        let mut framed = (request.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&request);
        stream.write_all(&framed).await.unwrap();
        let length = stream.read_u16().await.unwrap() as usize;
        let mut response = vec![0; length];
        stream.read_exact(&mut response).await.unwrap();
        response
    } else {
        let socket = UdpSocket::bind((LOOPBACK, 0)).await.unwrap();
        socket.send_to(&request, server).await.unwrap();
        let mut buffer = vec![0; 4096];
        let (length, _) = socket.recv_from(&mut buffer).await.unwrap();
        buffer.truncate(length);
        buffer
    };
    let response = Message::from_vec(&response).unwrap();
    assert_eq!(response.id(), 0x4242);
    assert_eq!(response.message_type(), MessageType::Response);
    response
}

pub struct HttpResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A GET (or other method) over plain HTTP/1.1 to `address` with the given Host header.
pub async fn http_request(
    address: SocketAddr,
    host: &str,
    method: Method,
    path: &str,
) -> HttpResponse {
    let stream = TcpStream::connect(address).await.unwrap();
    send_http1(stream, host, method, path).await
}

/// A GET over HTTPS to `address`, with SNI `server_name`, trusting only `ca`.
pub async fn https_get(
    address: SocketAddr,
    server_name: &str,
    path: &str,
    ca: CertificateDer<'static>,
) -> Result<HttpResponse, std::io::Error> {
    let stream = TcpStream::connect(address).await?;
    let tls = tls_connect(stream, server_name, ca).await?;
    Ok(send_http1(tls, server_name, Method::GET, path).await)
}

pub async fn tls_connect(
    stream: TcpStream,
    server_name: &str,
    ca: CertificateDer<'static>,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, std::io::Error> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = ServerName::try_from(server_name.to_string()).unwrap();
    connector.connect(name, stream).await
}

async fn send_http1<S>(stream: S, host: &str, method: Method, path: &str) -> HttpResponse
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    let driver = tokio::spawn(connection);
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", host)
        .header("user-agent", "guardlab-test")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    driver.abort();
    HttpResponse {
        status,
        headers,
        body,
    }
}

/// Runs a host program with a time bound, without any proxy or CA bundle from the
/// environment (the tests talk to loopback only and name their CA explicitly; requests, under
/// pip, would let REQUESTS_CA_BUNDLE override `--cert`). Panics when it cannot run.
pub async fn run(program: &str, args: &[&str], cwd: &Path, seconds: u64) -> Output {
    if program == "python3" {
        host_python();
    }
    // The programs the pod downloads with, installed the way the lab gets its tools.
    let tool = match program {
        "curl" => Some(&guardlab_host::catalog::CURL),
        "wget" => Some(&guardlab_host::catalog::WGET),
        _ => None,
    };
    if let Some(tool) = tool {
        guardlab_host::Host::new(false)
            .ensure(&[tool], &guardlab_host::StderrProgress)
            .unwrap_or_else(|e| panic!("these tests run {program}: {e}"));
    }
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .current_dir(cwd)
        .kill_on_drop(true)
        .env("NO_PROXY", "*")
        .env("no_proxy", "*");
    for variable in [
        "http_proxy",
        "https_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "all_proxy",
        "REQUESTS_CA_BUNDLE",
        "CURL_CA_BUNDLE",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
    ] {
        command.env_remove(variable);
    }
    tokio::time::timeout(Duration::from_secs(seconds), command.output())
        .await
        .unwrap_or_else(|_| panic!("{program} {args:?} did not finish within {seconds} s"))
        .unwrap_or_else(|e| panic!("cannot run {program} (install it for these tests): {e}"))
}

pub fn describe(output: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A small tarball-like payload that is not valid UTF-8 and not trivially compressible.
pub fn miner_bytes() -> Bytes {
    let mut state: u32 = 0x1234_5678;
    let bytes: Vec<u8> = (0..300_000)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            (state >> 24) as u8
        })
        .collect();
    let mut with_gzip_magic = vec![0x1f, 0x8b];
    with_gzip_magic.extend_from_slice(&bytes);
    Bytes::from(with_gzip_magic)
}

/// After `shutdown`, the listening socket at `address` can be bound again. Tasks that held
/// accepted connections are aborted by then, but the kernel may finish closing them a moment
/// later, so this tries for up to two seconds before it fails.
pub async fn assert_tcp_released(address: SocketAddr, what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    loop {
        match std::net::TcpListener::bind(address) {
            Ok(_) => return,
            Err(error) if tokio::time::Instant::now() >= deadline => {
                panic!("{what} at {address} is still in use 2 s after shutdown: {error}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// The host's python3 with pip, installed (with apt, saying so) when this machine lacks them,
/// as the lab itself gets them: a fresh machine runs these tests too.
pub fn host_python() {
    static READY: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    READY.get_or_init(|| {
        use guardlab_host::catalog::{PIP, PYTHON3};
        guardlab_host::Host::new(false)
            .ensure(&[&PYTHON3, &PIP], &guardlab_host::StderrProgress)
            .unwrap_or_else(|e| panic!("these tests run the host's python3 -m pip: {e}"));
    });
}
