//! The lab package index works for a real pip over HTTPS trusting only the lab CA, and
//! fetch_wheels fills its cache once through the host's pip with exactly the pinned wheels.
//!
//! pip runs with `--isolated` and an explicit `--index-url`/`--cert` so that the host's own
//! pip configuration (find-links, registry, certificates) cannot leak into the check: the
//! only index it sees is the lab's, on loopback.

mod common;

use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use common::*;
use guardlab_services::*;
use sha2::{Digest, Sha256};

/// Serves the wheels of `wheel_dir` as an index on https://127.0.0.1:PORT/simple.
async fn start_index(wheel_dir: &Path, ca_dir: &Path) -> (LabInternetHandle, SocketAddr) {
    let https = tcp_listener();
    let address = https.local_addr().unwrap();
    let spec = InternetSpec {
        zone: Zone::default(),
        sites: vec![package_index_site(LOOPBACK, wheel_dir).unwrap()],
        ca: Arc::new(LabCa::load_or_create(ca_dir).unwrap()),
    };
    let sockets = InternetSockets {
        https: vec![https],
        ..Default::default()
    };
    (LabInternet::start(spec, sockets).await.unwrap(), address)
}

/// `python3 -m pip <args>` against the lab index only.
async fn lab_pip(
    subcommand: &str,
    index: SocketAddr,
    ca_dir: &Path,
    args: &[&str],
    cwd: &Path,
) -> std::process::Output {
    let index_url = format!("https://{index}/simple");
    let ca = LabCa::cert_path(ca_dir);
    let mut all = vec![
        "-m",
        "pip",
        subcommand,
        "--isolated",
        "--no-cache-dir",
        "--disable-pip-version-check",
        "--no-input",
        "--retries",
        "0",
        "--timeout",
        "20",
        "--index-url",
        &index_url,
        "--cert",
        ca.to_str().unwrap(),
    ];
    all.extend_from_slice(args);
    run("python3", &all, cwd, 240).await
}

/// Writes a minimal, valid pure-Python wheel `guardlab_probe-1.0-py3-none-any.whl`.
async fn write_probe_wheel(dir: &Path) {
    let script = r#"
import base64, hashlib, sys, zipfile
files = {
    "guardlab_probe/__init__.py": b'VALUE = "from the lab index"\n',
    "guardlab_probe-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: guardlab-probe\nVersion: 1.0\n",
    "guardlab_probe-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: guardlab-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
}
record = []
for name, data in files.items():
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    record.append(f"{name},sha256={digest},{len(data)}")
record.append("guardlab_probe-1.0.dist-info/RECORD,,")
files["guardlab_probe-1.0.dist-info/RECORD"] = ("\n".join(record) + "\n").encode()
with zipfile.ZipFile(sys.argv[1], "w") as wheel:
    for name, data in files.items():
        wheel.writestr(name, data)
"#;
    let target = dir.join("guardlab_probe-1.0-py3-none-any.whl");
    let output = run(
        "python3",
        &["-c", script, target.to_str().unwrap()],
        dir,
        30,
    )
    .await;
    assert!(output.status.success(), "{}", describe(&output));
}

#[tokio::test]
async fn pip_installs_from_the_lab_index_over_https() {
    within(300, async {
        let wheels = tempfile::tempdir().unwrap();
        let ca_dir = tempfile::tempdir().unwrap();
        let work = tempfile::tempdir().unwrap();
        write_probe_wheel(wheels.path()).await;
        let (index, address) = start_index(wheels.path(), ca_dir.path()).await;

        let target = work.path().join("target");
        let output = lab_pip(
            "install",
            address,
            ca_dir.path(),
            &["--target", target.to_str().unwrap(), "guardlab-probe"],
            work.path(),
        )
        .await;
        assert!(output.status.success(), "{}", describe(&output));
        let installed = fs::read_to_string(target.join("guardlab_probe/__init__.py")).unwrap();
        assert_eq!(installed, "VALUE = \"from the lab index\"\n");

        let log = index.requests();
        let fetched: Vec<(&str, u16)> = log.iter().map(|r| (r.path.as_str(), r.status)).collect();
        assert!(
            fetched.contains(&("/simple/guardlab-probe/", 200)),
            "{fetched:?}"
        );
        assert!(
            fetched.contains(&("/files/guardlab_probe-1.0-py3-none-any.whl", 200)),
            "{fetched:?}"
        );
        assert!(
            log.iter()
                .all(|r| r.scheme == Scheme::Https && r.host == LOOPBACK)
        );

        // A project the index does not have: pip fails and the index answered 404.
        let output = lab_pip(
            "download",
            address,
            ca_dir.path(),
            &["--dest", work.path().to_str().unwrap(), "no-such-project"],
            work.path(),
        )
        .await;
        assert!(!output.status.success(), "{}", describe(&output));
        let misses: Vec<RequestLog> = index
            .requests()
            .into_iter()
            .filter(|r| r.path.starts_with("/simple/no-such-project"))
            .collect();
        assert!(
            !misses.is_empty() && misses.iter().all(|r| r.status == 404),
            "{misses:?}"
        );
        index.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn host_pip_fills_the_cache_once_and_the_lab_serves_the_baseline_upgrade() {
    within(600, async {
        let cache = tempfile::tempdir().unwrap();
        let wheels = cache.path().join("wheels");
        let ca_dir = tempfile::tempdir().unwrap();
        let work = tempfile::tempdir().unwrap();

        let lock = PythonLock::read(
            &Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../manifests/image")
                .join(INDEX_LOCK_FILE),
        )
        .unwrap();
        let first = tokio::task::spawn_blocking({
            let wheels = wheels.clone();
            let lock = lock.clone();
            move || fetch_wheels(&wheels, &lock)
        })
        .await
        .unwrap()
        .unwrap();
        assert!(first.downloaded);
        assert!(missing_pins(&wheels, &lock).unwrap().is_empty());
        assert_eq!(first.wheels.len(), lock.pins.len(), "{:?}", first.wheels);
        let leftovers: Vec<_> = fs::read_dir(&wheels)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|name| !name.ends_with(".whl"))
            .collect();
        assert!(leftovers.is_empty(), "staging left behind: {leftovers:?}");

        let second = fetch_wheels(&wheels, &lock).unwrap();
        assert!(!second.downloaded, "a filled cache must not run pip again");
        assert_eq!(second.wheels, first.wheels);

        // The baseline's wheels, served by the lab and downloaded by pip, byte for byte.
        let (index, address) = start_index(&wheels, ca_dir.path()).await;
        let out = work.path().join("out");
        let mut args = vec![
            "--no-deps",
            "--only-binary=:all:",
            "--dest",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(&BASELINE_REQUIREMENTS);
        let output = lab_pip("download", address, ca_dir.path(), &args, work.path()).await;
        assert!(output.status.success(), "{}", describe(&output));
        let mut downloaded: Vec<String> = fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        downloaded.sort();
        assert_eq!(downloaded.len(), 3, "{downloaded:?}");
        for name in &downloaded {
            let served = Sha256::digest(fs::read(out.join(name)).unwrap());
            let cached = Sha256::digest(fs::read(wheels.join(name)).unwrap());
            assert_eq!(served, cached, "{name}");
        }

        // `pip install --upgrade wheel` needs wheel's dependencies from the lab index too.
        let target = work.path().join("target");
        let output = lab_pip(
            "install",
            address,
            ca_dir.path(),
            &["--upgrade", "--target", target.to_str().unwrap(), "wheel"],
            work.path(),
        )
        .await;
        assert!(output.status.success(), "{}", describe(&output));
        assert!(target.join("wheel").is_dir(), "{}", describe(&output));
        index.shutdown().await;
    })
    .await;
}
