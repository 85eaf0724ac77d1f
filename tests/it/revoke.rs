//! Revocations the CA did not confirm stay owed until it does
//! (docs/design.md, "Revocation"): `renew` retries them and says so, a retried
//! `revoke` settles them before anything else and never revokes a clean
//! replacement, and `--no-replace` never brings the certificate back.
use crate::common::*;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn le() -> Option<Value> {
    Some(json!({"letsencrypt": true}))
}

/// What the proxy does with a request.
#[derive(Clone, Copy, PartialEq)]
#[repr(u8)]
enum Mode {
    /// Forward everything to pebble.
    Pass = 0,
    /// Answer revokeCert with a 403 problem; forward the rest.
    RefuseRevocation = 1,
    /// Drop every revokeCert connection unanswered (the CA down at the
    /// revocation step); forward the rest.
    DownAtRevocation = 2,
    /// Drop every connection (the CA down).
    Down = 3,
}

/// A TLS proxy in front of the real pebble, for the answers no real server
/// gives on demand: a 403 on revokeCert only, or a CA that is down at the
/// revocation step only. Everything else is pebble's own answer: the proxy
/// forwards the request as it came (its Host header makes pebble name the
/// proxy in every URL, and the JWS `url` checks hold). It serves with the
/// TLS certificate of pebble's test CA, which the device trusts.
struct CaProxy {
    port: u16,
    mode: Arc<AtomicU8>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl CaProxy {
    fn start(p: &Pebble) -> CaProxy {
        use openssl::ssl::{SslAcceptor, SslConnector, SslFiletype, SslMethod, SslVerifyMode};
        let mut a = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls()).unwrap();
        a.set_private_key_file(&p.ca.key_pem, SslFiletype::PEM).unwrap();
        a.set_certificate_chain_file(&p.ca.cert_pem).unwrap();
        let acceptor = Arc::new(a.build());
        let mut c = SslConnector::builder(SslMethod::tls()).unwrap();
        c.set_verify(SslVerifyMode::NONE);
        let connector = Arc::new(c.build());
        let port = free_port();
        let l = TcpListener::bind(("127.0.0.1", port)).unwrap();
        l.set_nonblocking(true).unwrap();
        let (mode, stop) =
            (Arc::new(AtomicU8::new(Mode::Pass as u8)), Arc::new(AtomicBool::new(false)));
        let (m2, s2, upstream) = (mode.clone(), stop.clone(), p.port);
        let thread = std::thread::spawn(move || {
            while !s2.load(Ordering::Relaxed) {
                let Ok((tcp, _)) = l.accept() else {
                    std::thread::sleep(Duration::from_millis(2));
                    continue;
                };
                let (acc, con, mode) =
                    (acceptor.clone(), connector.clone(), m2.load(Ordering::Relaxed));
                std::thread::spawn(move || {
                    let _ = serve_one(&acc, &con, tcp, upstream, mode);
                });
            }
        });
        CaProxy { port, mode, stop, thread: Some(thread) }
    }

    fn directory(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.port)
    }

    fn set(&self, m: Mode) {
        self.mode.store(m as u8, Ordering::Relaxed);
    }
}

impl Drop for CaProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One request on one connection (answered with `Connection: close`).
fn serve_one(
    acc: &openssl::ssl::SslAcceptor,
    con: &openssl::ssl::SslConnector,
    tcp: TcpStream,
    upstream: u16,
    mode: u8,
) -> std::io::Result<()> {
    tcp.set_nonblocking(false)?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    if mode == Mode::Down as u8 {
        return Ok(());
    }
    let mut s = acc.accept(tcp).map_err(|e| std::io::Error::other(e.to_string()))?;
    // The request: head, then Content-Length bytes of body.
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.split_once(':')
                .filter(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                .map(|(_, v)| v.trim().parse().unwrap_or(0))
        })
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
    if path.contains("revoke") && mode == Mode::DownAtRevocation as u8 {
        return Ok(());
    }
    if path.contains("revoke") && mode == Mode::RefuseRevocation as u8 {
        let body = json!({"type": "urn:ietf:params:acme:error:unauthorized", "detail": "revocation refused (test stand-in)"}).to_string();
        let resp =
            format!("HTTP/1.1 403 Forbidden\r\nContent-Type: application/problem+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
        return s.write_all(resp.as_bytes());
    }
    // Forward, one request per upstream connection.
    let head: String = head
        .trim_end()
        .lines()
        .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
        .map(|l| format!("{l}\r\n"))
        .collect();
    let up = TcpStream::connect(("127.0.0.1", upstream))?;
    up.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut u = con.connect("localhost", up).map_err(|e| std::io::Error::other(e.to_string()))?;
    u.write_all(format!("{head}Connection: close\r\n\r\n").as_bytes())?;
    u.write_all(&buf[head_end..])?;
    let mut resp = Vec::new();
    loop {
        match u.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => resp.extend_from_slice(&chunk[..n]),
        }
    }
    s.write_all(&resp)?;
    let _ = s.shutdown();
    Ok(())
}

/// A world whose device reaches pebble through a [`CaProxy`].
fn proxied() -> (World, CaProxy) {
    let mut w = World::new();
    let proxy = CaProxy::start(&w.pebble);
    w.dev.env.retain(|(k, _)| k != "SITE_ADMIN_ACME_SERVER");
    w.dev.env.push(("SITE_ADMIN_ACME_SERVER".into(), proxy.directory()));
    (w, proxy)
}

fn json_out(o: &std::process::Output) -> Value {
    serde_json::from_str(&stdout(o))
        .unwrap_or_else(|e| panic!("no JSON ({e}): {}\n{}", stdout(o), stderr(o)))
}

fn owed_rows(d: &Device) -> Vec<Value> {
    let rows: Value = serde_json::from_str(&d.ok(&["--json", "certificates"])).unwrap();
    rows.as_array().unwrap().iter().filter(|r| r["state"] == "revocation_owed").cloned().collect()
}

#[test]
fn a_refused_revocation_without_replacement_stays_owed_and_the_certificate_is_never_served_again() {
    let (w, proxy) = proxied();
    let d = &w.dev;
    let out = d.tmp.path().join("hook.out");
    write_hook(
        &d.root.join("etc/site-admin/hooks.d/10-record"),
        &format!("echo \"$SITE_ADMIN_EVENT revoked=[$REVOKED_DOMAINS] owed=[$REVOCATION_OWED_DOMAINS]\" >> {}", out.display()),
    );
    let (id, h) = (siteid(1), "leaked.example.test");
    let rep = d.deploy(&site_json(&id, h, le()));
    assert_eq!(rep["pending"], false, "issued through the proxy: {rep}");
    let compromised = d.live_serial(h).unwrap();
    d.apache.wait_serial(h, &compromised);

    proxy.set(Mode::RefuseRevocation);
    let o =
        d.run(&["--json", "revoke", "--siteid", &id, "--no-replace", "--reason", "keyCompromise"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let rep = json_out(&o);
    assert_eq!(rep["revoked"], false, "{rep}");
    assert_eq!(rep["owed"], json!([compromised]), "{rep}");
    assert!(stderr(&o).contains("stays owed"), "{}", stderr(&o));
    assert_eq!(w.pebble.cert_status(&compromised), "Valid");
    assert_eq!(d.live_serial(h), None, "out of service");
    let vhost =
        std::fs::read_to_string(d.root.join("etc/httpd/sites").join(format!("{id}.conf"))).unwrap();
    assert!(!vhost.contains("SSLEngine"), "{vhost}");
    let rows = owed_rows(d);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(
        (rows[0]["host"].as_str(), rows[0]["serial"].as_str()),
        (Some(h), Some(compromised.as_str()))
    );
    assert!(rows[0]["last_error"].as_str().unwrap().contains("refused"), "{rows:?}");

    // The CA still refuses: renew serves a NEW certificate (never the owed
    // one), retries the revocation, and says it is still owed.
    let (code, rep, err) = renew_json(d, &[]);
    assert_eq!(code, 1, "{rep}\n{err}");
    assert_eq!(rep["revocation_owed"], json!([h]), "{rep}");
    assert_eq!(rep["revocations"][0]["status"], "failed", "{rep}");
    assert_eq!(rep["revocations"][0]["serial"], compromised.as_str(), "{rep}");
    let fresh = d.live_serial(h).unwrap();
    assert_ne!(fresh, compromised);
    d.apache.wait_serial(h, &fresh);
    assert!(err.contains("owed a revocation"), "{err}");
    // Deploying the site again brings nothing back either.
    d.deploy(&site_json(&id, h, le()));
    assert_eq!(d.apache.served_serial(h).as_deref(), Some(fresh.as_str()));

    // The CA takes it now.
    proxy.set(Mode::Pass);
    let (code, rep, err) = renew_json(d, &[]);
    assert_eq!(code, 0, "{rep}\n{err}");
    assert_eq!(rep["revoked_domains"], json!([h]), "{rep}");
    assert_eq!(w.pebble.cert_status(&compromised), "Revoked");
    assert_eq!(w.pebble.cert_status(&fresh), "Valid");
    assert!(owed_rows(d).is_empty());
    let (code, rep, _) = renew_json(d, &[]);
    assert_eq!((code, rep["revocations"].as_array().map(|a| a.len())), (0, Some(0)), "{rep}");
    let hooks = std::fs::read_to_string(&out).unwrap();
    let lines: Vec<&str> = hooks.lines().collect();
    assert_eq!(lines[0], format!("revoke revoked=[] owed=[{h}]"), "{hooks}");
    assert_eq!(lines[1], format!("renew revoked=[] owed=[{h}]"), "{hooks}");
    assert!(lines.contains(&format!("renew revoked=[{h}] owed=[]").as_str()), "{hooks}");
}

#[test]
fn a_retried_revoke_settles_what_is_owed_and_never_revokes_the_clean_replacement() {
    let (w, proxy) = proxied();
    let d = &w.dev;
    let (id, h) = (siteid(1), "retry.example.test");
    let rep = d.deploy(&site_json(&id, h, le()));
    assert_eq!(rep["pending"], false, "issued through the proxy: {rep}");
    let compromised = d.live_serial(h).unwrap();

    // The replacement is issued and served; then the CA is down.
    proxy.set(Mode::DownAtRevocation);
    let o = d.run(&["revoke", "--siteid", &id, "--reason", "keyCompromise"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let replacement = d.live_serial(h).unwrap();
    assert_ne!(replacement, compromised);
    d.apache.wait_serial(h, &replacement);
    assert_eq!(w.pebble.cert_status(&compromised), "Valid");

    // The administrator retries the same command.
    proxy.set(Mode::Pass);
    let issued = w.pebble.issued_count();
    let o = d.run(&["--json", "revoke", "--siteid", &id, "--reason", "keyCompromise"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(json_out(&o)["revoked_serial"], compromised.as_str());
    assert_eq!(w.pebble.cert_status(&compromised), "Revoked");
    assert_eq!(w.pebble.cert_status(&replacement), "Valid", "the clean replacement is not revoked");
    assert_eq!(w.pebble.issued_count(), issued, "no third certificate");
    assert_eq!(d.live_serial(h).as_deref(), Some(replacement.as_str()));
    assert!(owed_rows(d).is_empty());

    // An older version of the lineage, by serial.
    d.ok(&["renew", "--force"]);
    let current = d.live_serial(h).unwrap();
    assert_ne!(current, replacement);
    let o = d.run(&["revoke", "--siteid", &id, "--serial", "12345abc"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("12345abc"), "{}", stderr(&o));
    let o = d.run(&["revoke", "--siteid", &id, "--serial", "not-hex"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    d.ok(&["revoke", "--siteid", &id, "--serial", &replacement.to_uppercase()]);
    assert_eq!(w.pebble.cert_status(&replacement), "Revoked");
    assert_eq!(w.pebble.cert_status(&current), "Valid");
    assert_eq!(d.live_serial(h).as_deref(), Some(current.as_str()));
    d.apache.wait_serial(h, &current);
}

#[test]
fn a_revoke_whose_replacement_failed_is_finished_by_renew_replacement_first() {
    let (w, proxy) = proxied();
    let d = &w.dev;
    let (id, h) = (siteid(1), "later.example.test");
    let rep = d.deploy(&site_json(&id, h, le()));
    assert_eq!(rep["pending"], false, "issued through the proxy: {rep}");
    let compromised = d.live_serial(h).unwrap();
    proxy.set(Mode::Down);
    let o = d.run(&["revoke", "--siteid", &id, "--reason", "keyCompromise"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("stays owed"), "{}", stderr(&o));
    // Still served (nothing replaces it yet), and owed.
    assert_eq!(d.live_serial(h).as_deref(), Some(compromised.as_str()));
    assert_eq!(owed_rows(d).len(), 1);

    proxy.set(Mode::Pass);
    let (code, rep, err) = renew_json(d, &[]);
    assert_eq!(code, 0, "{rep}\n{err}");
    let l = rep["lineages"].as_array().unwrap().iter().find(|l| l["host"] == h).unwrap().clone();
    assert_eq!(
        (l["status"].as_str(), l["due_by"].as_str()),
        (Some("renewed"), Some("revocation")),
        "{rep}"
    );
    assert_eq!(rep["revoked_domains"], json!([h]), "{rep}");
    let replacement = d.live_serial(h).unwrap();
    assert_ne!(replacement, compromised);
    d.apache.wait_serial(h, &replacement);
    assert_eq!(w.pebble.cert_status(&compromised), "Revoked");
    assert_eq!(w.pebble.cert_status(&replacement), "Valid");
}

#[test]
fn a_revoke_without_replacement_killed_before_the_certificate_left_service_never_brings_it_back() {
    let w = World::new();
    let d = &w.dev;
    let (id, h) = (siteid(1), "killed.example.test");
    let rep = d.deploy(&site_json(&id, h, le()));
    assert_eq!(rep["pending"], false, "{rep}");
    let compromised = d.live_serial(h).unwrap();
    d.apache.wait_serial(h, &compromised);
    // Killed after the vhost went to http, before the lineage was retired.
    let mut env: Vec<(&str, &str)> = d.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    env.push(("SITE_ADMIN_FAULT", "revoke.http_before_retire"));
    let o =
        run(&["revoke", "--siteid", &id, "--no-replace", "--reason", "keyCompromise"], &env, None);
    assert!(!o.status.success(), "{}", stderr(&o));
    assert_eq!(d.live_serial(h).as_deref(), Some(compromised.as_str()), "still on disk");
    assert_eq!(owed_rows(d).len(), 1);

    // Neither doctor --repair nor a redeploy puts it back on https.
    let o = d.run(&["doctor", "--repair"]);
    assert!(
        stderr(&o).contains("owed a revocation") || stdout(&o).contains("owed a revocation"),
        "{}{}",
        stdout(&o),
        stderr(&o)
    );
    assert_ne!(d.apache.served_serial(h).as_deref(), Some(compromised.as_str()));
    std::fs::write(d.tmp.path().join("again.json"), site_json(&id, h, le())).unwrap();
    d.ok(&["deploy", "--file", d.tmp.path().join("again.json").to_str().unwrap()]);
    assert_ne!(d.apache.served_serial(h).as_deref(), Some(compromised.as_str()));

    // renew finishes the job: a new certificate served, the old one revoked.
    let (code, rep, err) = renew_json(d, &[]);
    assert_eq!(code, 0, "{rep}\n{err}");
    assert_eq!(rep["revoked_domains"], json!([h]), "{rep}");
    let fresh = d.live_serial(h).unwrap();
    assert_ne!(fresh, compromised);
    d.apache.wait_serial(h, &fresh);
    assert_eq!(w.pebble.cert_status(&compromised), "Revoked");
    assert_eq!(w.pebble.cert_status(&fresh), "Valid");
}

#[test]
fn a_stashed_certificate_whose_revocation_is_owed_is_never_taken_back() {
    let (w, proxy) = proxied();
    let d = &w.dev;
    let (id, h) = (siteid(1), "stashed.example.test");
    let rep = d.deploy(&site_json(&id, h, le()));
    assert_eq!(rep["pending"], false, "issued through the proxy: {rep}");
    let compromised = d.live_serial(h).unwrap();
    let (k, c) = self_signed(&[h], 30);
    d.deploy(&site_json(&id, h, Some(json!({"key": k, "crt": c}))));
    assert_eq!(d.stash_serial(h).as_deref(), Some(compromised.as_str()));

    proxy.set(Mode::RefuseRevocation);
    let o = d.run(&["revoke", "--siteid", &id, "--reason", "keyCompromise"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert_eq!(owed_rows(d).len(), 1);
    // Back to Let's Encrypt: a new certificate, not the stashed one.
    let rep = d.deploy(&site_json(&id, h, le()));
    assert_eq!(rep["pending"], false, "{rep}");
    let fresh = d.live_serial(h).unwrap();
    assert_ne!(fresh, compromised, "{rep}");
    d.apache.wait_serial(h, &fresh);

    proxy.set(Mode::Pass);
    let (code, rep, err) = renew_json(d, &[]);
    assert_eq!(code, 0, "{rep}\n{err}");
    assert_eq!(w.pebble.cert_status(&compromised), "Revoked");
    assert_eq!(w.pebble.cert_status(&fresh), "Valid");
    assert!(owed_rows(d).is_empty());
}
