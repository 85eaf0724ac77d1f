//! ACME accounts that survive and travel, External Account Binding,
//! revocation, back-off, and orders that follow RFC 8555 to the letter
//! (docs/design.md, "ACME accounts, revocation, back-off").
use crate::common::*;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn le() -> Option<Value> {
    Some(json!({"letsencrypt": true}))
}

fn conf_account(d: &Device, host: &str) -> String {
    let t = std::fs::read_to_string(d.le().join(format!("renewal/{host}.conf"))).unwrap();
    t.lines().find_map(|l| l.strip_prefix("account = ")).unwrap_or("").to_string()
}

fn account_ids(d: &Device, p: &Pebble) -> Vec<String> {
    let dir = d.le().join("accounts").join(format!("127.0.0.1:{}", p.port)).join("dir");
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn orders(p: &Pebble) -> usize {
    p.log().matches("POST /order-plz").count()
}

#[test]
fn a_ca_that_forgot_the_account_gets_a_new_one_and_renew_carries_on() {
    let mut w = World::new();
    let (a, p) = ("kept.example.test", "waiting.example.test");
    w.dev.deploy(&site_json(&siteid(1), a, le()));
    let old_account = conf_account(&w.dev, a);
    assert!(!old_account.is_empty());
    w.pebble.set_a(p, "127.0.0.3");
    let rep = w.dev.deploy(&site_json(&siteid(2), p, le()));
    assert_eq!(rep["pending"], true);
    // The CA restarts and forgets every account.
    w.pebble.restart_ca();
    w.pebble.set_a(p, "127.0.0.1");
    let old_serial = w.dev.live_serial(a).unwrap();
    let o = w.dev.run(&["--json", "renew", "--force"]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(0), "{err}");
    let rep: Value = serde_json::from_str(&stdout(&o)).unwrap();
    let mut renewed: Vec<String> = rep["renewed_domains"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    renewed.sort();
    assert_eq!(renewed, vec![a.to_string(), p.to_string()], "{rep}");
    // One warning, naming the old and the new account.
    let warnings: Vec<&str> =
        err.lines().filter(|l| l.contains("no longer knows the account")).collect();
    assert_eq!(warnings.len(), 1, "{err}");
    let new_account = conf_account(&w.dev, a);
    assert_ne!(new_account, old_account);
    assert!(
        warnings[0].contains(&old_account) && warnings[0].contains(&new_account),
        "{}",
        warnings[0]
    );
    assert_eq!(conf_account(&w.dev, p), new_account);
    assert_ne!(w.dev.live_serial(a).unwrap(), old_serial);
    w.dev.apache.wait_serial(p, &w.dev.live_serial(p).unwrap());
    // Never an empty account = in a renewal conf.
    for e in std::fs::read_dir(w.dev.le().join("renewal")).unwrap() {
        let t = std::fs::read_to_string(e.unwrap().path()).unwrap();
        assert!(!t.lines().any(|l| l.trim() == "account =" || l.trim() == "account = "), "{t}");
    }
    // certbot still reads the account tree (and the lineages).
    let o = std::process::Command::new(certbot_bin())
        .args(["certificates", "--config-dir", w.dev.le().to_str().unwrap()])
        .args([
            "--work-dir",
            w.dev.tmp.path().join("cbw").to_str().unwrap(),
            "--logs-dir",
            w.dev.tmp.path().join("cbl").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let t = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success() && t.contains(a) && t.contains(p), "{t}");
}

fn certbot_bin() -> std::path::PathBuf {
    std::env::var_os("SITE_ADMIN_CERTBOT").map(std::path::PathBuf::from).unwrap_or_else(|| {
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/certbot")
    })
}

#[test]
fn a_migrated_lineage_renews_with_the_account_the_backup_carried() {
    let (pebble, a, b) = two_devices();
    let (id, h) = (siteid(1), "travels.example.test");
    pebble.set_a(h, "127.0.0.1");
    a.deploy(&site_json(&id, h, le()));
    let account = conf_account(&a, h);
    let backup = a.tmp.path().join("backup.json");
    a.ok(&["backup", "--siteid", &id, "--out", backup.to_str().unwrap()]);
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&backup).unwrap()).unwrap();
    assert_eq!(doc["accounts"][0]["id"], account.as_str(), "the envelope carries the account");
    assert_eq!(doc["accounts"][0]["hosts"], json!([h]));
    // --notls carries no account.
    let bare = a.tmp.path().join("bare.json");
    a.ok(&["backup", "--siteid", &id, "--notls", "--out", bare.to_str().unwrap()]);
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&bare).unwrap()).unwrap();
    assert!(doc.get("accounts").is_none(), "{doc}");

    pebble.set_a(h, "127.0.0.3");
    b.ok(&["restore", "--in", backup.to_str().unwrap()]);
    assert_eq!(conf_account(&b, h), account, "B's renewal conf names the carried account");
    assert_eq!(account_ids(&b, &pebble), vec![account.clone()]);
    // DNS moves to B: the renewal is ordered by that account (B registers none).
    pebble.set_a(h, "127.0.0.2");
    let rep: Value = serde_json::from_str(&b.ok(&["--json", "renew", "--force"])).unwrap();
    assert_eq!(rep["renewed_domains"], json!([h]), "{rep}");
    assert_eq!(account_ids(&b, &pebble), vec![account.clone()]);
    assert_eq!(conf_account(&b, h), account);
    // An old backup without accounts still restores (on a third device).
    let c = {
        let mut c = Device::new_on("127.0.0.1", free_port(), free_port());
        c.use_pebble(&pebble);
        c
    };
    let mut old: Value = serde_json::from_str(&std::fs::read_to_string(&backup).unwrap()).unwrap();
    old.as_object_mut().unwrap().remove("accounts");
    let f = c.tmp.path().join("old.json");
    std::fs::write(&f, old.to_string()).unwrap();
    c.apache.start();
    c.ok(&["restore", "--in", f.to_str().unwrap()]);
}

#[test]
fn a_ca_that_requires_external_account_binding() {
    let key = "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W";
    let w = World::with(PebbleOptions {
        eab_keys: vec![("kid-1".into(), key.into())],
        ..Default::default()
    });
    let (id, h) = (siteid(1), "bound.example.test");
    let o = {
        let f = w.dev.tmp.path().join("b.json");
        std::fs::write(&f, site_json(&id, h, le())).unwrap();
        w.dev.run(&["--json", "deploy", "--file", f.to_str().unwrap()])
    };
    assert!(o.status.success(), "{}", stderr(&o));
    let rep: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(rep["pending"], true);
    let why = rep["pending_reason"].as_str().unwrap();
    assert!(why.contains("External Account Binding") && why.contains("acme_eab"), "{why}");
    let mut cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(&w.dev.config).unwrap()).unwrap();
    cfg["acme_eab"] = json!({"kid": "kid-1", "hmac_key": key});
    std::fs::write(&w.dev.config, cfg.to_string()).unwrap();
    let rep = w.dev.deploy(&site_json(&id, h, le()));
    assert_eq!(rep["pending"], false, "{rep}");
    w.dev.apache.wait_serial(h, &w.dev.live_serial(h).unwrap());
}

#[test]
fn revoke_replaces_first_then_revokes_and_no_replace_leaves_http() {
    let w = World::new();
    let d = &w.dev;
    let out = d.tmp.path().join("hook.out");
    write_hook(
        &d.root.join("etc/site-admin/hooks.d/10-record"),
        &format!("echo \"$SITE_ADMIN_EVENT revoked=[$REVOKED_DOMAINS]\" >> {}", out.display()),
    );
    let (id, h) = (siteid(1), "leaked.example.test");
    d.deploy(&site_json(&id, h, le()));
    let old = d.live_serial(h).unwrap();
    let o = d.run(&["--json", "revoke", "--siteid", &id, "--reason", "keyCompromise"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let new = d.live_serial(h).unwrap();
    assert_ne!(new, old);
    d.apache.wait_serial(h, &new);
    assert_eq!(w.pebble.cert_status(&old), "Revoked");
    assert_eq!(w.pebble.cert_status(&new), "Valid");
    assert_eq!(std::fs::read_to_string(&out).unwrap().trim(), format!("revoke revoked=[{h}]"));

    let (id2, h2) = (siteid(2), "gone.example.test");
    d.deploy(&site_json(&id2, h2, le()));
    let s2 = d.live_serial(h2).unwrap();
    let o = d.run(&["revoke", "--siteid", &id2, "--no-replace"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("plain http"), "{}", stderr(&o));
    assert_eq!(w.pebble.cert_status(&s2), "Revoked");
    assert_eq!(d.live_serial(h2), None, "the revoked certificate is not kept");
    let vhost = std::fs::read_to_string(d.root.join("etc/httpd/sites").join(format!("{id2}.conf")))
        .unwrap();
    assert!(!vhost.contains("SSLEngine"), "{vhost}");
    // Pending now: renew provisions it again.
    d.ok(&["renew"]);
    d.apache.wait_serial(h2, &d.live_serial(h2).unwrap());

    // A stashed certificate: the site moved to its own certificate.
    let (id3, h3) = (siteid(3), "moved.example.test");
    d.deploy(&site_json(&id3, h3, le()));
    let s3 = d.live_serial(h3).unwrap();
    let (k, c) = self_signed(&[h3], 30);
    d.deploy(&site_json(&id3, h3, Some(json!({"key": k, "crt": c}))));
    assert_eq!(d.stash_serial(h3).as_deref(), Some(s3.as_str()));
    d.ok(&["revoke", "--siteid", &id3]);
    assert_eq!(w.pebble.cert_status(&s3), "Revoked");
    assert_eq!(d.stash_serial(h3), None, "the revoked certificate left the stash");
}

#[test]
fn failures_back_off_and_force_tries_anyway() {
    let w = World::new();
    let (id, h) = (siteid(1), "flaky.example.test");
    w.pebble.set_a(h, "127.0.0.3");
    let rep = w.dev.deploy(&site_json(&id, h, le()));
    assert_eq!(rep["pending"], true);
    let before = orders(&w.pebble);
    assert!(before >= 1, "the deploy ordered");
    for _ in 0..3 {
        let o = w.dev.run(&["--json", "renew"]);
        let rep: Value = serde_json::from_str(&stdout(&o)).unwrap();
        assert_eq!(rep["lineages"][0]["status"], "backing_off", "{rep}");
        assert_eq!(rep["lineages"][0]["failures"], 1, "{rep}");
    }
    assert_eq!(orders(&w.pebble), before, "three runs within a minute sent no order");
    let rows: Value = serde_json::from_str(&w.dev.ok(&["--json", "certificates"])).unwrap();
    let row = rows.as_array().unwrap().iter().find(|r| r["host"] == h).unwrap().clone();
    assert_eq!(row["failures"], 1, "{row}");
    assert!(row["last_error"].as_str().unwrap().contains("provisioning failed"), "{row}");
    assert!(row["next_attempt"].is_string(), "{row}");
    let o = w.dev.run(&["--json", "renew", "--force"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(orders(&w.pebble), before + 1, "--force tries anyway");
    let rows: Value = serde_json::from_str(&w.dev.ok(&["--json", "certificates"])).unwrap();
    let row = rows.as_array().unwrap().iter().find(|r| r["host"] == h).unwrap().clone();
    assert_eq!(row["failures"], 2, "{row}");
}

/// A scripted stand-in for the one case no real server produces on demand:
/// an order that stays `processing` three times (Retry-After: 1), then a
/// certificate download answered 429 with Retry-After: 120.
fn slow_ca() -> (String, Arc<AtomicBool>, Arc<Mutex<Vec<String>>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://127.0.0.1:{}", l.local_addr().unwrap().port());
    l.set_nonblocking(true).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (b, s2, seen2) = (base.clone(), stop.clone(), seen.clone());
    std::thread::spawn(move || {
        let mut polls = 0;
        let started = Instant::now();
        while !s2.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(60) {
            let Ok((mut c, _)) = l.accept() else {
                std::thread::sleep(Duration::from_millis(2));
                continue;
            };
            c.set_nonblocking(false).ok();
            c.set_read_timeout(Some(Duration::from_millis(500))).ok();
            let mut buf = vec![0u8; 65536];
            let n = c.read(&mut buf).unwrap_or(0);
            let req = String::from_utf8_lossy(&buf[..n]).to_string();
            let line = req.lines().next().unwrap_or("").to_string();
            seen2.lock().unwrap().push(line.clone());
            let path = line.split_whitespace().nth(1).unwrap_or("");
            let order = |status: &str| {
                json!({"status": status, "authorizations": [format!("{b}/authz/1")], "finalize": format!("{b}/finalize/1"), "certificate": format!("{b}/cert/1")}).to_string()
            };
            let (status, body, extra): (u16, String, String) = match path {
                "/dir" => (
                    200,
                    json!({"newNonce": format!("{b}/nonce"), "newAccount": format!("{b}/acct"), "newOrder": format!("{b}/order")}).to_string(),
                    String::new(),
                ),
                "/nonce" => (200, String::new(), String::new()),
                "/acct" => (201, "{}".into(), format!("Location: {b}/acct/1\r\n")),
                "/order" => (201, order("pending"), format!("Location: {b}/order/1\r\n")),
                "/authz/1" => {
                    (200, json!({"status": "valid", "identifier": {"type": "dns", "value": "slow.test"}, "challenges": []}).to_string(), String::new())
                }
                "/order/1" => {
                    polls += 1;
                    match polls {
                        1 => (200, order("ready"), String::new()),
                        2 | 3 => (200, order("processing"), "Retry-After: 1\r\n".into()),
                        _ => (200, order("valid"), String::new()),
                    }
                }
                "/finalize/1" => (200, order("processing"), "Retry-After: 1\r\n".into()),
                "/cert/1" => (
                    429,
                    json!({"type": "urn:ietf:params:acme:error:rateLimited", "detail": "too many certificates"}).to_string(),
                    "Retry-After: 120\r\n".into(),
                ),
                _ => (404, "{}".into(), String::new()),
            };
            let head = format!("HTTP/1.1 {status} X\r\nContent-Length: {}\r\nReplay-Nonce: n{polls}\r\nConnection: close\r\n{extra}\r\n", body.len());
            let _ = c.write_all(format!("{head}{body}").as_bytes());
        }
    });
    (format!("{base}/dir"), stop, seen)
}

#[test]
fn processing_is_polled_after_retry_after_and_a_429_past_the_deadline_says_what_the_ca_asked() {
    use site_admin::acme::{AccountKey, AcmeClient, ClientOptions};
    let (dir, stop, seen) = slow_ca();
    let webroot = tempfile::tempdir().unwrap();
    let opts = ClientOptions {
        directory: dir,
        ca_bundle: None,
        deadline: Duration::from_secs(90),
        eab: None,
    };
    let c = AcmeClient::connect(opts, AccountKey::generate().unwrap(), None).unwrap();
    c.ensure_account(None).unwrap();
    let start = Instant::now();
    let e = c.issue("slow.test", webroot.path(), site_admin::config::KeyType::Ecdsa).unwrap_err();
    let took = start.elapsed();
    stop.store(true, Ordering::Relaxed);
    let msg = e.to_string();
    assert!(msg.contains("asked to retry in 120 s") && msg.contains("deadline of 90 s"), "{msg}");
    assert!(
        !msg.contains("Some(") && !msg.contains("{\""),
        "no debug formatting or raw JSON: {msg}"
    );
    // Three Retry-After: 1 waits, no 120 s sleep.
    assert!(took >= Duration::from_secs(2) && took < Duration::from_secs(10), "{took:?}");
    let seen = seen.lock().unwrap().clone();
    let finalize_at = seen.iter().position(|l| l.contains("/finalize/1")).unwrap();
    let ready_at = seen.iter().position(|l| l.contains("/order/1")).unwrap();
    assert!(ready_at < finalize_at, "finalized only after the order was ready: {seen:?}");
    assert_eq!(seen.iter().filter(|l| l.contains("/order/1")).count(), 4, "{seen:?}");
}

#[test]
fn a_crafted_backup_installs_no_account_outside_the_tree_and_only_those_restored_lineages_name() {
    let (pebble, a, b) = two_devices();
    let (id1, h1, id2, h2) = (siteid(1), "carried.example.test", siteid(2), "plain.example.test");
    pebble.set_a(h1, "127.0.0.1");
    let rep = a.deploy(&site_json(&id1, h1, le()));
    assert_eq!(rep["pending"], false, "{rep}");
    a.deploy(&site_json(&id2, h2, None));
    let account = conf_account(&a, h1);
    let backup = a.tmp.path().join("backup.json");
    a.ok(&["backup", "--all", "--out", backup.to_str().unwrap()]);
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&backup).unwrap()).unwrap();
    let carried = doc["accounts"][0].clone();
    assert_eq!(carried["id"], account.as_str());
    let write = |name: &str, accounts: Value| {
        let mut d = doc.clone();
        d["accounts"] = accounts;
        let f = b.tmp.path().join(name);
        std::fs::write(&f, d.to_string()).unwrap();
        f
    };
    let with = |k: &str, v: &str| {
        let mut c = carried.clone();
        c[k] = json!(v);
        json!([c])
    };
    // A server URL or an id that would become a path outside accounts/, or
    // a line break: exit 2, naming the field, nothing installed anywhere.
    let outside = b.tmp.path().join("outside");
    let before = snapshot(&b.root);
    for (name, accounts, says) in [
        ("root-path", with("server", &format!("https://{}", outside.display())), "server"),
        (
            "dot-dot-host",
            with("server", &format!("https://../../..{}", outside.display())),
            "server",
        ),
        (
            "newline",
            with(
                "server",
                &format!("{}\nsite-admin: forged log line", carried["server"].as_str().unwrap()),
            ),
            "server",
        ),
        ("id", with("id", &format!("../../../..{}", outside.display())), "id"),
    ] {
        let f = write(name, accounts);
        let o = b.run(&["restore", "--in", f.to_str().unwrap()]);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{name}: {err}");
        assert!(err.contains("account #1") && err.contains(says), "{name}: {err}");
        assert!(
            !err.lines().any(|l| l.starts_with("site-admin: forged")),
            "{name}: the CA's newline split a line: {err}"
        );
        assert!(!outside.exists(), "{name}: wrote outside the tree");
        assert_eq!(snapshot(&b.root), before, "{name}: something changed");
    }
    // An account of another server, and one restored with --siteid for a site
    // that carries no certificate: neither is installed.
    let mut other = carried.clone();
    other["server"] = json!("https://other-ca.example.test/directory");
    let f = write("two-servers", json!([carried.clone(), other]));
    b.ok(&["restore", "--siteid", &id2, "--in", f.to_str().unwrap()]);
    assert!(
        !b.le().join("accounts").exists(),
        "restore --siteid {id2} installed an account no restored lineage names"
    );
    b.ok(&["undeploy", "--siteid", &id2]);
    pebble.set_a(h1, "127.0.0.3");
    b.ok(&["restore", "--in", f.to_str().unwrap()]);
    assert_eq!(account_ids(&b, &pebble), vec![account.clone()]);
    assert_eq!(conf_account(&b, h1), account);
    assert!(
        !b.le().join("accounts/other-ca.example.test").exists(),
        "an account of a server no lineage uses was installed"
    );
}

#[test]
fn an_order_is_not_preceded_by_a_request_for_the_account() {
    // The CA says accountDoesNotExist on the order itself when it forgot the
    // account (the test above): asking for the account first is a round trip
    // it did not ask for.
    let w = World::new();
    let h = "direct.example.test";
    w.dev.deploy(&site_json(&siteid(1), h, le()));
    let account_gets = || w.pebble.log().matches("POST /my-account/").count();
    let (before, orders_before) = (account_gets(), orders(&w.pebble));
    let (code, rep, err) = renew_json(&w.dev, &["--force"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(rep["renewed_domains"], json!([h]));
    assert_eq!(orders(&w.pebble), orders_before + 1, "one order");
    assert_eq!(
        account_gets(),
        before,
        "no POST-as-GET of the account before (or after) the order\n{}",
        w.pebble.log()
    );
}
