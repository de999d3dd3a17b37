//! The lab's sourceforge over HTTP and HTTPS: the scenario's download URL returns the exact
//! miner bytes, other paths 404, and every request is logged. Checked with our own client and
//! with the clients the pod uses (curl/OpenSSL, wget/GnuTLS, Python's strict OpenSSL mode).

mod common;

use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use common::*;
use guardlab_services::*;
use hyper::Method;

struct Lab {
    internet: LabInternetHandle,
    http: SocketAddr,
    https: SocketAddr,
    ca_dir: tempfile::TempDir,
}

impl Lab {
    fn ca_pem_path(&self) -> std::path::PathBuf {
        LabCa::cert_path(self.ca_dir.path())
    }
}

/// sourceforge.net, plus the same routes under the IP literal 127.0.0.1 for clients that
/// cannot be told to resolve sourceforge.net to loopback (wget).
async fn start_lab() -> Lab {
    let ca_dir = tempfile::tempdir().unwrap();
    let ca = Arc::new(LabCa::load_or_create(ca_dir.path()).unwrap());
    let sourceforge = sourceforge_site(miner_bytes());
    let by_ip = Site {
        host: LOOPBACK.to_string(),
        routes: sourceforge.routes.clone(),
    };
    let (http, https) = (tcp_listener(), tcp_listener());
    let (http_address, https_address) = (http.local_addr().unwrap(), https.local_addr().unwrap());
    let spec = InternetSpec {
        zone: Zone::new(vec![(
            SOURCEFORGE_HOST.to_string(),
            LOOPBACK.parse().unwrap(),
        )]),
        sites: vec![sourceforge, by_ip],
        ca,
    };
    let sockets = InternetSockets {
        http: vec![http],
        https: vec![https],
        ..Default::default()
    };
    let internet = LabInternet::start(spec, sockets).await.unwrap();
    Lab {
        internet,
        http: http_address,
        https: https_address,
        ca_dir,
    }
}

#[tokio::test]
async fn download_url_returns_the_exact_bytes_over_http_and_https() {
    within(30, async {
        let lab = start_lab().await;
        let ca = LabCa::load_or_create(lab.ca_dir.path())
            .unwrap()
            .ca_cert_der();

        let secure = https_get(lab.https, SOURCEFORGE_HOST, MINER_DOWNLOAD_PATH, ca.clone())
            .await
            .unwrap();
        assert_eq!(secure.status, 200);
        assert_eq!(secure.headers["content-type"], "application/x-gzip");
        assert_eq!(
            secure.headers["content-length"],
            miner_bytes().len().to_string().as_str()
        );
        assert!(
            secure.body == miner_bytes(),
            "HTTPS body differs from the tarball"
        );

        let plain =
            http_request(lab.http, SOURCEFORGE_HOST, Method::GET, MINER_DOWNLOAD_PATH).await;
        assert_eq!(plain.status, 200);
        assert!(
            plain.body == miner_bytes(),
            "HTTP body differs from the tarball"
        );

        let front = http_request(lab.http, "SourceForge.net:80", Method::GET, "/").await;
        assert_eq!(front.status, 200);
        assert!(
            front.headers["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/html")
        );
        assert!(String::from_utf8_lossy(&front.body).contains("<h1>SourceForge</h1>"));

        let head = http_request(
            lab.http,
            SOURCEFORGE_HOST,
            Method::HEAD,
            MINER_DOWNLOAD_PATH,
        )
        .await;
        assert_eq!(head.status, 200);
        assert!(head.body.is_empty());

        let missing = https_get(lab.https, SOURCEFORGE_HOST, "/projects/cpuminer/", ca)
            .await
            .unwrap();
        assert_eq!(missing.status, 404);
        let unknown_site = http_request(lab.http, "example.org", Method::GET, "/").await;
        assert_eq!(unknown_site.status, 404);
        let posted = http_request(lab.http, SOURCEFORGE_HOST, Method::POST, "/").await;
        assert_eq!(posted.status, 405);

        let log = lab.internet.requests();
        let summary: Vec<(Scheme, &str, &str, &str, u16)> = log
            .iter()
            .map(|r| {
                (
                    r.scheme,
                    r.host.as_str(),
                    r.method.as_str(),
                    r.path.as_str(),
                    r.status,
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                (
                    Scheme::Https,
                    "sourceforge.net",
                    "GET",
                    MINER_DOWNLOAD_PATH,
                    200
                ),
                (
                    Scheme::Http,
                    "sourceforge.net",
                    "GET",
                    MINER_DOWNLOAD_PATH,
                    200
                ),
                (Scheme::Http, "sourceforge.net", "GET", "/", 200),
                (
                    Scheme::Http,
                    "sourceforge.net",
                    "HEAD",
                    MINER_DOWNLOAD_PATH,
                    200
                ),
                (
                    Scheme::Https,
                    "sourceforge.net",
                    "GET",
                    "/projects/cpuminer/",
                    404
                ),
                (Scheme::Http, "example.org", "GET", "/", 404),
                (Scheme::Http, "sourceforge.net", "POST", "/", 405),
            ]
        );
        assert_eq!(log[0].body_bytes, miner_bytes().len() as u64);
        assert_eq!(log[0].local, lab.https);
        assert_eq!(log[0].user_agent.as_deref(), Some("guardlab-test"));
        assert_eq!(log[3].body_bytes, 0);
        assert!(log.iter().all(|r| r.peer.ip().is_loopback()));

        let (http, https) = (lab.http, lab.https);
        lab.internet.shutdown().await;
        assert_tcp_released(http, "the HTTP socket").await;
        assert_tcp_released(https, "the HTTPS socket").await;
    })
    .await;
}

#[tokio::test]
async fn curl_with_only_the_lab_ca_downloads_over_https_and_http() {
    within(60, async {
        let lab = start_lab().await;
        let work = tempfile::tempdir().unwrap();
        let ca = lab.ca_pem_path();
        let resolve_https = format!("{SOURCEFORGE_HOST}:{}:{LOOPBACK}", lab.https.port());
        let url = format!(
            "https://{SOURCEFORGE_HOST}:{}{MINER_DOWNLOAD_PATH}",
            lab.https.port()
        );
        let output = run(
            "curl",
            &[
                "--silent",
                "--show-error",
                "--fail",
                "--cacert",
                ca.to_str().unwrap(),
                "--resolve",
                &resolve_https,
                "--output",
                "tarball",
                &url,
            ],
            work.path(),
            30,
        )
        .await;
        assert!(output.status.success(), "{}", describe(&output));
        assert!(fs::read(work.path().join("tarball")).unwrap() == miner_bytes());
        // curl speaks HTTP/2 over TLS when it can: the host then comes from :authority.
        let logged = lab.internet.requests().pop().unwrap();
        assert_eq!(
            (
                logged.scheme,
                logged.host.as_str(),
                logged.path.as_str(),
                logged.status
            ),
            (Scheme::Https, SOURCEFORGE_HOST, MINER_DOWNLOAD_PATH, 200)
        );

        // Plain HTTP, as `curl sourceforge.net > /dev/null` in the attack.
        let resolve_http = format!("{SOURCEFORGE_HOST}:{}:{LOOPBACK}", lab.http.port());
        let url = format!("http://{SOURCEFORGE_HOST}:{}/", lab.http.port());
        let output = run(
            "curl",
            &[
                "--silent",
                "--show-error",
                "--fail",
                "--resolve",
                &resolve_http,
                &url,
            ],
            work.path(),
            30,
        )
        .await;
        assert!(output.status.success(), "{}", describe(&output));
        assert!(String::from_utf8_lossy(&output.stdout).contains("SourceForge"));

        // With another CA instead of the lab's, curl must refuse the certificate.
        let foreign = work.path().join("foreign-ca");
        LabCa::load_or_create(&foreign).unwrap();
        let foreign_pem = LabCa::cert_path(&foreign);
        let url = format!("https://{SOURCEFORGE_HOST}:{}/", lab.https.port());
        let output = run(
            "curl",
            &[
                "--silent",
                "--show-error",
                "--cacert",
                foreign_pem.to_str().unwrap(),
                "--resolve",
                &resolve_https,
                &url,
            ],
            work.path(),
            30,
        )
        .await;
        assert!(
            String::from_utf8_lossy(&output.stderr).contains("certificate"),
            "{}",
            describe(&output)
        );
        assert!(
            !output.status.success(),
            "curl trusted the lab without its CA"
        );
        lab.internet.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn wget_with_gnutls_saves_the_download_as_typed() {
    within(60, async {
        let lab = start_lab().await;
        let work = tempfile::tempdir().unwrap();
        let ca = lab.ca_pem_path();
        // wget cannot map sourceforge.net to loopback, so it uses the IP-literal twin site;
        // the certificate chain it validates is the same.
        let url = format!(
            "https://{LOOPBACK}:{}{MINER_DOWNLOAD_PATH}",
            lab.https.port()
        );
        let ca_option = format!("--ca-certificate={}", ca.display());
        let output = run(
            "wget",
            &["--no-verbose", "--no-config", &ca_option, &url],
            work.path(),
            30,
        )
        .await;
        assert!(output.status.success(), "{}", describe(&output));
        assert!(
            fs::read(work.path().join("download")).unwrap() == miner_bytes(),
            "wget saved something else than the tarball as `download`"
        );
        let last = lab.internet.requests().pop().unwrap();
        assert_eq!(
            (last.host.as_str(), last.path.as_str(), last.status),
            (LOOPBACK, MINER_DOWNLOAD_PATH, 200)
        );
        assert!(last.user_agent.unwrap_or_default().starts_with("Wget/"));
        lab.internet.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn python_strict_x509_verification_accepts_the_lab_chain() {
    // Python 3.13 (the pod's pip) enables VERIFY_X509_STRICT by default, which wants key
    // identifiers, critical basic constraints and so on; check with the host's Python.
    within(60, async {
        let lab = start_lab().await;
        let script = "import socket, ssl, sys\n\
                      ctx = ssl.create_default_context(cafile=sys.argv[1])\n\
                      ctx.verify_flags |= ssl.VERIFY_X509_STRICT\n\
                      raw = socket.create_connection(('127.0.0.1', int(sys.argv[2])), timeout=10)\n\
                      tls = ctx.wrap_socket(raw, server_hostname=sys.argv[3])\n\
                      print(tls.version())\n";
        let port = lab.https.port().to_string();
        let ca = lab.ca_pem_path();
        let output = run(
            "python3",
            &["-c", script, ca.to_str().unwrap(), &port, SOURCEFORGE_HOST],
            Path::new("/"),
            30,
        )
        .await;
        assert!(output.status.success(), "{}", describe(&output));
        assert!(String::from_utf8_lossy(&output.stdout).starts_with("TLSv1."));
        lab.internet.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_site_missing_from_the_zone_is_refused_at_start() {
    within(30, async {
        let ca_dir = tempfile::tempdir().unwrap();
        let spec = InternetSpec {
            zone: Zone::default(),
            sites: vec![sourceforge_site(miner_bytes())],
            ca: Arc::new(LabCa::load_or_create(ca_dir.path()).unwrap()),
        };
        let sockets = InternetSockets {
            http: vec![tcp_listener()],
            ..Default::default()
        };
        let error = LabInternet::start(spec, sockets)
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(
            error.starts_with("site \"sourceforge.net\": the zone has no address"),
            "{error}"
        );

        let error = LabInternet::start(
            InternetSpec {
                zone: Zone::default(),
                sites: Vec::new(),
                ca: Arc::new(LabCa::load_or_create(ca_dir.path()).unwrap()),
            },
            InternetSockets::default(),
        )
        .await
        .err()
        .unwrap()
        .to_string();
        assert!(error.contains("no sockets"), "{error}");
    })
    .await;
}
