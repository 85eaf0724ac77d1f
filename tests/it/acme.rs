//! The embedded ACME client against real pebble (validating HTTP-01
//! through a tiny static file server that serves the webroot).
use crate::common::*;
use site_admin::acme::{AccountKey, AcmeClient, ClientOptions};
use site_admin::config::KeyType;
use std::time::{Duration, Instant};

struct Ca {
    pebble: Pebble,
    _server: StaticServer,
    webroot: tempfile::TempDir,
}

fn ca(nonce_reject: u32) -> Ca {
    let webroot = tempfile::tempdir().unwrap();
    let port = free_port();
    let server = StaticServer::start(webroot.path(), port);
    let pebble = Pebble::start(
        &webroot.path().join("pebble-state"),
        port,
        PebbleOptions { nonce_reject_percent: nonce_reject, ..Default::default() },
    );
    Ca { pebble, _server: server, webroot }
}

fn opts(p: &Pebble) -> ClientOptions {
    ClientOptions {
        directory: p.directory(),
        ca_bundle: Some(p.ca.ca_pem.clone()),
        deadline: Duration::from_secs(60),
        eab: None,
    }
}

fn challenge_files(webroot: &std::path::Path) -> usize {
    std::fs::read_dir(webroot.join(".well-known/acme-challenge")).map(|d| d.count()).unwrap_or(0)
}

#[test]
fn ten_orders_in_a_row_with_half_the_nonces_rejected() {
    let ca = ca(50);
    let client =
        AcmeClient::connect(opts(&ca.pebble), AccountKey::generate().unwrap(), None).unwrap();
    let kid = client.ensure_account(Some("admin@example.com")).unwrap();
    for i in 0..10 {
        let host = format!("n{i}.example.test");
        let issued = client
            .issue(&host, ca.webroot.path(), KeyType::Ecdsa)
            .unwrap_or_else(|e| panic!("order {i}: {e}\n{}", ca.pebble.log()));
        let kc = site_admin::certs::KeyCert::parse(&issued.key_pem, &issued.fullchain_pem).unwrap();
        assert!(kc.key_matches);
        assert!(kc.leaf.covers(&host));
        assert!(
            site_admin::certs::parse_chain(&issued.fullchain_pem).unwrap().len() >= 2,
            "full chain"
        );
        assert_eq!(challenge_files(ca.webroot.path()), 0, "challenge file left behind");
        // The account is reused: the same kid, no new registration.
        assert_eq!(client.account_url().unwrap(), kid);
    }
    let retried = client.bad_nonce_retries();
    assert!(retried >= 5, "pebble rejected only {retried} nonces at 50%");
    eprintln!("badNonce answers retried: {retried}");
}

#[test]
fn rsa_and_ecdsa_keys() {
    let ca = ca(0);
    let client =
        AcmeClient::connect(opts(&ca.pebble), AccountKey::generate().unwrap(), None).unwrap();
    client.ensure_account(None).unwrap();
    let rsa = client.issue("rsa.example.test", ca.webroot.path(), KeyType::Rsa).unwrap();
    let k = openssl::pkey::PKey::private_key_from_pem(rsa.key_pem.as_bytes()).unwrap();
    assert_eq!(k.id(), openssl::pkey::Id::RSA);
    assert_eq!(k.bits(), 2048);
    let ec = client.issue("ec.example.test", ca.webroot.path(), KeyType::Ecdsa).unwrap();
    let k = openssl::pkey::PKey::private_key_from_pem(ec.key_pem.as_bytes()).unwrap();
    assert_eq!(k.id(), openssl::pkey::Id::EC);
}

#[test]
fn stored_account_is_reused_by_a_new_client() {
    let ca = ca(0);
    let key = AccountKey::generate().unwrap();
    let c1 = AcmeClient::connect(opts(&ca.pebble), key.clone(), None).unwrap();
    let kid = c1.ensure_account(None).unwrap();
    let le = tempfile::tempdir().unwrap();
    let id = site_admin::store::accounts::save(le.path(), &ca.pebble.directory(), &key, &kid, None)
        .unwrap();
    let stored =
        site_admin::store::accounts::load(le.path(), &ca.pebble.directory()).unwrap().unwrap();
    assert_eq!(stored.id, id);
    let c2 = AcmeClient::connect(opts(&ca.pebble), stored.key, Some(stored.uri)).unwrap();
    c2.issue("reuse.example.test", ca.webroot.path(), KeyType::Ecdsa).unwrap();
    assert_eq!(c2.account_url().unwrap(), kid);
}

#[test]
fn failed_validation_is_one_clear_error_and_leaves_no_challenge_file() {
    let ca = ca(0);
    ca.pebble.set_a("nowhere.example.test", "127.0.0.3");
    let client =
        AcmeClient::connect(opts(&ca.pebble), AccountKey::generate().unwrap(), None).unwrap();
    client.ensure_account(None).unwrap();
    let e = client
        .issue("nowhere.example.test", ca.webroot.path(), KeyType::Ecdsa)
        .unwrap_err()
        .to_string();
    assert!(e.contains("HTTP-01 validation of nowhere.example.test failed"), "{e}");
    // The problem document as one sentence: its short type and detail.
    assert!(e.contains("connection:"), "{e}");
    assert!(e.contains("127.0.0.3"), "validation went to the address the DNS names: {e}");
    assert_eq!(challenge_files(ca.webroot.path()), 0);
}

#[test]
fn a_ca_that_is_down_gives_a_clear_error_quickly() {
    let port = free_port();
    let start = Instant::now();
    let o = ClientOptions {
        directory: format!("https://127.0.0.1:{port}/dir"),
        ca_bundle: None,
        deadline: Duration::from_secs(10),
        eab: None,
    };
    let e = match AcmeClient::connect(o, AccountKey::generate().unwrap(), None) {
        Ok(_) => panic!("connected to nothing"),
        Err(e) => e.to_string(),
    };
    assert!(
        e.contains(&format!("cannot reach the ACME server at https://127.0.0.1:{port}/dir")),
        "{e}"
    );
    assert!(start.elapsed() < Duration::from_secs(10));
}

#[test]
fn an_untrusted_ca_is_a_tls_error_naming_the_server() {
    let ca = ca(0);
    let o = ClientOptions {
        directory: ca.pebble.directory(),
        ca_bundle: None,
        deadline: Duration::from_secs(10),
        eab: None,
    };
    let e = match AcmeClient::connect(o, AccountKey::generate().unwrap(), None) {
        Ok(_) => panic!("trusted pebble without its bundle"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains(&ca.pebble.directory()), "{e}");
}
