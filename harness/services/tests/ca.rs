//! The lab CA persists, reloads to the same certificate, refuses half a CA, and the leaves a
//! reloaded CA signs are trusted by a client that knows only the first CA certificate.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use common::*;
use guardlab_services::*;

#[test]
fn ca_is_persisted_and_reloads_to_the_same_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("nested/ca");
    let created = LabCa::load_or_create(&ca_dir).unwrap();
    let pem = created.ca_cert_pem();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
    assert_eq!(fs::read_to_string(LabCa::cert_path(&ca_dir)).unwrap(), pem);
    let key_mode = fs::metadata(ca_dir.join(CA_KEY_FILE))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(key_mode & 0o777, 0o600, "the CA key must be private");

    let reloaded = LabCa::load_or_create(&ca_dir).unwrap();
    assert_eq!(reloaded.ca_cert_pem(), pem);
    assert_eq!(reloaded.ca_cert_der(), created.ca_cert_der());
    // No stray temporary files next to the CA.
    let mut names: Vec<String> = fs::read_dir(&ca_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        vec![CA_CERT_FILE.to_string(), CA_KEY_FILE.to_string()]
    );

    // A different directory makes a different CA.
    let other = LabCa::load_or_create(&dir.path().join("other")).unwrap();
    assert_ne!(other.ca_cert_pem(), pem);
}

#[test]
fn half_a_ca_is_an_error_and_nothing_is_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    LabCa::load_or_create(dir.path()).unwrap();
    let key_before = fs::read(dir.path().join(CA_KEY_FILE)).unwrap();
    fs::remove_file(dir.path().join(CA_CERT_FILE)).unwrap();

    let error = LabCa::load_or_create(dir.path()).unwrap_err().to_string();
    assert!(
        error.contains(CA_KEY_FILE) && error.contains(CA_CERT_FILE) && error.contains("incomplete"),
        "{error}"
    );
    assert_eq!(fs::read(dir.path().join(CA_KEY_FILE)).unwrap(), key_before);
    assert!(!dir.path().join(CA_CERT_FILE).exists());
}

#[test]
fn a_certificate_of_another_key_or_garbage_is_refused_with_the_file_name() {
    let first = tempfile::tempdir().unwrap();
    let second = tempfile::tempdir().unwrap();
    LabCa::load_or_create(first.path()).unwrap();
    LabCa::load_or_create(second.path()).unwrap();
    fs::copy(
        second.path().join(CA_CERT_FILE),
        first.path().join(CA_CERT_FILE),
    )
    .unwrap();
    let error = LabCa::load_or_create(first.path()).unwrap_err().to_string();
    assert!(
        error.contains(CA_CERT_FILE) && error.contains("does not belong"),
        "{error}"
    );

    fs::write(second.path().join(CA_KEY_FILE), "not a key").unwrap();
    let error = LabCa::load_or_create(second.path())
        .unwrap_err()
        .to_string();
    assert!(
        error.contains(CA_KEY_FILE) && error.contains("private key"),
        "{error}"
    );
}

#[tokio::test]
async fn leaves_of_a_reloaded_ca_are_trusted_through_the_first_certificate() {
    within(30, async {
        let dir = tempfile::tempdir().unwrap();
        let trusted = LabCa::load_or_create(dir.path()).unwrap().ca_cert_der();
        let reloaded = Arc::new(LabCa::load_or_create(dir.path()).unwrap());

        let https = tcp_listener();
        let address = https.local_addr().unwrap();
        let spec = InternetSpec {
            zone: Zone::new(vec![(
                SOURCEFORGE_HOST.to_string(),
                LOOPBACK.parse().unwrap(),
            )]),
            sites: vec![sourceforge_site(miner_bytes())],
            ca: reloaded,
        };
        let sockets = InternetSockets {
            https: vec![https],
            ..Default::default()
        };
        let internet = LabInternet::start(spec, sockets).await.unwrap();
        let response = https_get(address, SOURCEFORGE_HOST, "/", trusted)
            .await
            .unwrap();
        assert_eq!(response.status, 200);

        // A client trusting some other CA must be refused: the lab CA is what makes it work.
        let stranger = tempfile::tempdir().unwrap();
        let other_ca = LabCa::load_or_create(stranger.path())
            .unwrap()
            .ca_cert_der();
        let refused = https_get(address, SOURCEFORGE_HOST, "/", other_ca).await;
        assert!(
            refused.is_err(),
            "a foreign CA must not verify the lab's certificate"
        );
        // And a name outside the certificate too.
        let trusted = LabCa::load_or_create(dir.path()).unwrap().ca_cert_der();
        let wrong_name = https_get(address, "example.org", "/", trusted).await;
        assert!(wrong_name.is_err(), "example.org is not in the certificate");
        internet.shutdown().await;
    })
    .await;
}
