//! Bounded fuzzing in CI (proptest). Site JSON parsing and
//! validation, PEM parsing, renewal confs, Retry-After, and the ACME client
//! against a fake server answering garbage: errors, never a panic.
use proptest::prelude::*;
use site_admin::acme::{AccountKey, AcmeClient, ClientOptions};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const FIXTURE: &str = include_str!("../fixtures/valid/okc-with-cacrt.json");
const LKC: &str = include_str!("../fixtures/valid/letsencrypt-with-lkc.json");

fn cases(n: u32) -> ProptestConfig {
    let n = std::env::var("FUZZ_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(n);
    ProptestConfig { cases: n, failure_persistence: None, ..ProptestConfig::default() }
}

/// Arbitrary JSON values, a few levels deep, with Site JSON's key names mixed in.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let key = prop_oneof![
        Just("siteid".to_string()),
        Just("hostname".to_string()),
        Just("admin".to_string()),
        Just("tls".to_string()),
        Just("letsencrypt".to_string()),
        Just("key".to_string()),
        Just("crt".to_string()),
        Just("cacrt".to_string()),
        Just("appconfigs".to_string()),
        Just("appconfigid".to_string()),
        Just("context".to_string()),
        "[a-z]{0,8}",
    ];
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(|f| serde_json::json!(f)),
        ".{0,40}".prop_map(serde_json::Value::from),
        Just(serde_json::Value::from("s3f2c9a0b1d4e5f60718293a4b5c6d7e8f9012345")),
        Just(serde_json::Value::from(
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
        )),
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(serde_json::Value::Array),
            prop::collection::vec((key.clone(), inner), 0..7)
                .prop_map(|kv| serde_json::Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// A text with a few bytes changed, inserted or cut.
fn mutate(base: &'static str) -> impl Strategy<Value = String> {
    (prop::collection::vec((0usize..base.len(), any::<u8>(), 0u8..3), 1..8), 0usize..=base.len())
        .prop_map(move |(edits, cut)| {
            let mut b = base.as_bytes().to_vec();
            for (pos, byte, kind) in edits {
                let pos = pos.min(b.len().saturating_sub(1));
                match kind {
                    0 if !b.is_empty() => b[pos] = byte,
                    1 => b.insert(pos, byte),
                    _ if !b.is_empty() => {
                        b.remove(pos);
                    }
                    _ => {}
                }
            }
            b.truncate(cut.max(1).min(b.len()));
            String::from_utf8_lossy(&b).into_owned()
        })
}

proptest! {
    #![proptest_config(cases(3000))]

    #[test]
    fn site_json_text_never_panics(s in ".{0,300}") {
        let _ = site_admin::site::parse_site(&s, "fuzz");
    }

    #[test]
    fn site_json_values_never_panic(v in json_value()) {
        let _ = site_admin::site::site_from_value(&v);
        let mut obj = serde_json::json!({"siteid": "s3f2c9a0b1d4e5f60718293a4b5c6d7e8f9012345", "hostname": "a.example.com",
            "admin": {"userid": "a", "username": "A", "email": "a@b.c"}});
        obj["tls"] = v.clone();
        let _ = site_admin::site::site_from_value(&obj);
        obj["appconfigs"] = v;
        let _ = site_admin::site::site_from_value(&obj);
    }

    #[test]
    fn mutated_site_json_never_panics(s in mutate(FIXTURE)) {
        let _ = site_admin::site::parse_site(&s, "fuzz");
    }

    #[test]
    fn mutated_pem_never_panics(s in mutate(LKC)) {
        // The fixture's PEM strings, damaged in place.
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&s) {
            let k = v.pointer("/tls/key").and_then(|x| x.as_str()).unwrap_or("");
            let c = v.pointer("/tls/crt").and_then(|x| x.as_str()).unwrap_or("");
            let _ = site_admin::certs::parse_key(k);
            let _ = site_admin::certs::parse_chain(c);
            let _ = site_admin::certs::KeyCert::parse(k, c);
        }
        let _ = site_admin::certs::parse_chain(&s);
        let _ = site_admin::certs::parse_key(&s);
        let _ = site_admin::store::NewVersion::from_key_and_fullchain(&s, &s);
    }

    #[test]
    fn random_bytes_as_pem_never_panic(b in prop::collection::vec(any::<u8>(), 0..600)) {
        let s = format!("-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n", String::from_utf8_lossy(&b));
        let _ = site_admin::certs::parse_chain(&s);
        let _ = site_admin::certs::parse_cert_der(&b);
        let k = format!("-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n", String::from_utf8_lossy(&b));
        let _ = site_admin::certs::parse_key(&k);
    }

    #[test]
    fn renewal_confs_and_intervals_never_panic(s in "(\\[{0,2}[a-z_]{0,10}\\]{0,2}|[a-z_ ]{0,10}=?[ -~]{0,20}|#.{0,10}|\n){0,30}", i in "(.|[\"',#\n\r]){0,40}") {
        let mut c = site_admin::renewal_conf::RenewalConf::parse(&s);
        let _ = c.get(Some("renewalparams"), "account");
        let _ = c.section("webroot_map");
        c.set(Some("renewalparams"), "account", "x");
        c.set(None, "version", "2.0.0");
        c.replace_section("webroot_map", &[("h".into(), "/w".into())]);
        let again = site_admin::renewal_conf::RenewalConf::parse(&c.to_text());
        prop_assert_eq!(again.get(Some("renewalparams"), "account"), Some("x".to_string()));
        let _ = site_admin::renewal_conf::parse_interval(&i);
        // Any value, written into a conf certbot parses, leaves one certbot parses.
        let _ = site_admin::renewal_conf::certbot_parse_error(&s);
        let mut c = site_admin::renewal_conf::RenewalConf::parse("version = 5.8.0\n[renewalparams]\naccount = a\n[acme_renewal_info]\n");
        c.set(Some("acme_renewal_info"), "site_admin_explanation_url", &i);
        c.set(Some("renewalparams"), "server", &i);
        prop_assert_eq!(site_admin::renewal_conf::certbot_parse_error(&c.to_text()), None, "{:?}", c.to_text());
    }

    #[test]
    fn acme_problem_documents_never_panic(status in 400u16..600, v in json_value(), raw in ".{0,200}") {
        let s = site_admin::acme::client::problem_of("https://ca/x", status, v.to_string().as_bytes()).to_string();
        prop_assert!(!s.is_empty());
        let _ = site_admin::acme::client::problem_of("https://ca/x", status, raw.as_bytes());
        let _ = site_admin::acme::retry::parse_retry_after(&raw, std::time::SystemTime::now());
    }
}

/// One canned answer of the fake ACME server.
#[derive(Debug, Clone)]
struct Answer {
    status: u16,
    body: String,
    nonce: bool,
    location: bool,
    retry_after: Option<String>,
}

fn answer() -> impl Strategy<Value = Answer> {
    let body = prop_oneof![
        json_value().prop_map(|v| v.to_string()),
        Just(r#"{"type":"urn:ietf:params:acme:error:badNonce","detail":"x"}"#.to_string()),
        Just(r#"{"status":"valid","certificate":"URL/cert","authorizations":[],"finalize":"URL/fin"}"#.to_string()),
        Just(r#"{"status":"pending","authorizations":["URL/authz"],"finalize":"URL/fin"}"#.to_string()),
        Just(r#"{"status":"pending","identifier":{"value":"a.test"},"challenges":[{"type":"http-01","token":"abc","url":"URL/chall"}]}"#.to_string()),
        Just(
            r#"{"status":"pending","identifier":{"value":"a.test"},"challenges":[{"type":"http-01","token":"../../etc/passwd","url":"URL/chall"}]}"#
                .to_string()
        ),
        Just(r#"{"status":"invalid","challenges":[{"error":{"type":"x","detail":"y"}}]}"#.to_string()),
        Just("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".to_string()),
        ".{0,80}",
    ];
    (
        prop_oneof![Just(200u16), Just(201), Just(400), Just(404), Just(429), Just(500), Just(503)],
        body,
        any::<bool>(),
        any::<bool>(),
        prop::option::of(prop_oneof![
            Just("0".to_string()),
            Just("soon".to_string()),
            Just("Thu, 01 Jan 1970 00:00:00 GMT".to_string())
        ]),
    )
        .prop_map(|(status, body, nonce, location, retry_after)| Answer {
            status,
            body,
            nonce,
            location,
            retry_after,
        })
}

/// Serve `answers` in turn (then 500s) on a loopback port; the first answer is a real directory.
fn fake_ca(answers: Vec<Answer>) -> (String, Arc<Mutex<bool>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let base = format!("http://127.0.0.1:{port}");
    let stop = Arc::new(Mutex::new(false));
    let (b2, s2) = (base.clone(), stop.clone());
    l.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let mut queue = answers.into_iter();
        let started = std::time::Instant::now();
        while !*s2.lock().unwrap() && started.elapsed() < Duration::from_secs(20) {
            let Ok((mut c, _)) = l.accept() else {
                std::thread::sleep(Duration::from_millis(1));
                continue;
            };
            c.set_nonblocking(false).ok();
            c.set_read_timeout(Some(Duration::from_millis(500))).ok();
            let mut buf = vec![0u8; 65536];
            let n = c.read(&mut buf).unwrap_or(0);
            let req = String::from_utf8_lossy(&buf[..n]).to_string();
            let (status, body, nonce, location, retry) = if req.starts_with("GET /dir") {
                (
                    200,
                    format!(
                        r#"{{"newNonce":"{b2}/nonce","newAccount":"{b2}/acct","newOrder":"{b2}/order"}}"#
                    ),
                    true,
                    false,
                    None,
                )
            } else if req.starts_with("HEAD") {
                (200, String::new(), true, false, None)
            } else {
                match queue.next() {
                    Some(a) => {
                        (a.status, a.body.replace("URL", &b2), a.nonce, a.location, a.retry_after)
                    }
                    None => (500, "{}".to_string(), true, false, None),
                }
            };
            let mut head = format!(
                "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n",
                body.len()
            );
            if nonce {
                head += "Replay-Nonce: n0nce\r\n";
            }
            if location {
                head += &format!("Location: {b2}/loc\r\n");
            }
            if let Some(r) = retry {
                head += &format!("Retry-After: {r}\r\n");
            }
            let _ = c.write_all(format!("{head}\r\n{body}").as_bytes());
        }
    });
    (format!("{base}/dir"), stop)
}

proptest! {
    #![proptest_config(cases(120))]

    #[test]
    fn acme_client_against_a_garbage_server_never_panics(answers in prop::collection::vec(answer(), 1..12)) {
        let (dir, stop) = fake_ca(answers);
        let webroot = tempfile::tempdir().unwrap();
        let opts = ClientOptions { directory: dir, ca_bundle: None, deadline: Duration::from_secs(2), eab: None };
        // The directory is always a real one: connecting must work, or the
        // case tests nothing.
        let c = AcmeClient::connect(opts, AccountKey::generate().unwrap(), None);
        prop_assert!(c.is_ok(), "the client could not reach the fake CA: {:?}", c.err().map(|e| e.to_string()));
        if let Ok(c) = c {
            let _ = c.ensure_account(Some("a@example.com"));
            // Garbage never yields a certificate (nor a panic, which fails the case).
            let r = c.issue("a.test", webroot.path(), site_admin::config::KeyType::Ecdsa);
            prop_assert!(r.is_err(), "a certificate from garbage answers");
            // Nothing may escape the webroot, and no challenge file is left behind.
            let left = std::fs::read_dir(webroot.path().join(".well-known/acme-challenge")).map(|d| d.count()).unwrap_or(0);
            prop_assert_eq!(left, 0);
        }
        *stop.lock().unwrap() = true;
    }
}
