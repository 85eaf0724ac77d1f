//! The store is certbot's layout for real — certbot (from PyPI)
//! lists and renews what site-admin wrote, with site-admin's account, and
//! site-admin adopts, lists and renews what certbot made; the two exclude
//! each other through certbot's own lock.
use crate::common::*;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::{Command, Output};

fn certbot_bin() -> PathBuf {
    let p = std::env::var_os("SITE_ADMIN_CERTBOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/certbot"));
    assert!(p.exists(), "certbot not found at {} (run scripts/setup)", p.display());
    p
}

/// certbot on the device's letsencrypt dir, trusting pebble.
fn certbot(w: &World, args: &[&str]) -> Output {
    let work = w.dev.tmp.path().join("certbot-work");
    let logs = w.dev.tmp.path().join("certbot-logs");
    Command::new(certbot_bin())
        .args(args)
        .args([
            "--config-dir",
            w.dev.le().to_str().unwrap(),
            "--work-dir",
            work.to_str().unwrap(),
            "--logs-dir",
            logs.to_str().unwrap(),
        ])
        .env("REQUESTS_CA_BUNDLE", &w.pebble.ca.ca_pem)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn certificates(w: &World) -> Vec<Value> {
    serde_json::from_str::<Value>(&w.dev.ok(&["--json", "certificates"]))
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn certbot_lists_and_renews_what_site_admin_wrote_and_ignores_the_stash() {
    let w = World::new();
    let (a, b) = ("lineage.example.test", "stashed.example.test");
    w.dev.deploy(&site_json(&siteid(1), a, Some(json!({"letsencrypt": true}))));
    w.dev.deploy(&site_json(&siteid(2), b, Some(json!({"letsencrypt": true}))));
    w.dev.ok(&["undeploy", "--siteid", &siteid(2)]);

    let o = certbot(&w, &["certificates"]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains(&format!("Certificate Name: {a}")), "{t}");
    assert!(t.contains("VALID"), "{t}");
    assert!(!t.contains(b), "certbot must not see the stashed lineage: {t}");
    assert!(!t.to_lowercase().contains("skipped"), "certbot skipped a conf as broken: {t}");

    let old = w.dev.live_serial(a).unwrap();
    let o =
        certbot(&w, &["renew", "--force-renewal", "--no-random-sleep-on-renew", "--cert-name", a]);
    assert!(o.status.success(), "certbot renew failed:\n{}", text(&o));
    let new = w.dev.live_serial(a).unwrap();
    assert_ne!(old, new, "certbot renewed");
    // site-admin's deploy hook in renewal-hooks/deploy/ made Apache serve it.
    w.dev.apache.wait_serial(a, &new);
    assert_eq!(
        std::fs::read_link(w.dev.le().join("live").join(a).join("cert.pem")).unwrap(),
        PathBuf::from(format!("../../archive/{a}/cert2.pem"))
    );
    // certbot used site-admin's account: still exactly one account.
    let accts =
        w.dev.le().join("accounts").join(format!("127.0.0.1:{}", w.pebble.port)).join("dir");
    assert_eq!(std::fs::read_dir(&accts).unwrap().count(), 1);
    // site-admin sees the new version.
    let row = certificates(&w).into_iter().find(|r| r["host"] == a).unwrap();
    assert_eq!(row["version"], 2);
    assert_eq!(row["serial"], new.as_str());
    let shown: Value =
        serde_json::from_str(&w.dev.ok(&["showsite", "--siteid", &siteid(1)])).unwrap();
    assert_eq!(pem_serial(shown["tls"]["crt"].as_str().unwrap().as_bytes()).unwrap(), new);
}

#[test]
fn site_admin_adopts_lists_and_renews_a_lineage_certbot_made() {
    let w = World::new();
    let host = "madebycertbot.example.test";
    let id = siteid(3);
    // An http site answers the challenge for certbot's webroot.
    w.dev.deploy(&site_json(&id, host, None));
    let webroot = w.dev.root.join("srv/http/wellknown").join(&id);
    let o = certbot(
        &w,
        &[
            "certonly",
            "--webroot",
            "-w",
            webroot.to_str().unwrap(),
            "-d",
            host,
            "--server",
            &w.pebble.directory(),
            "--agree-tos",
            "-m",
            "a@example.com",
            "--non-interactive",
            "--no-eff-email",
        ],
    );
    assert!(o.status.success(), "certbot certonly failed:\n{}", text(&o));
    let certbot_serial = w.dev.live_serial(host).unwrap();
    let row = certificates(&w).into_iter().find(|r| r["host"] == host).expect("listed");
    assert_eq!(row["state"], "live");
    assert_eq!(row["serial"], certbot_serial.as_str());

    // Redeploying the site with Let's Encrypt adopts it: no new issuance.
    let issued_before = w.pebble.issued_count();
    let rep = w.dev.deploy(&site_json(&id, host, Some(json!({"letsencrypt": true}))));
    assert_eq!(rep["actions"], json!([]), "{rep}");
    assert_eq!(w.pebble.issued_count(), issued_before);
    w.dev.apache.wait_serial(host, &certbot_serial);

    // site-admin renews it, with certbot's own account.
    let rep: Value = serde_json::from_str(&w.dev.ok(&["--json", "renew", "--force"])).unwrap();
    assert_eq!(rep["renewed_domains"], json!([host]), "{rep}");
    let new = w.dev.live_serial(host).unwrap();
    assert_ne!(new, certbot_serial);
    w.dev.apache.wait_serial(host, &new);
    // And certbot still accepts the lineage afterwards.
    let o = certbot(&w, &["certificates"]);
    assert!(
        text(&o).contains(&format!("Certificate Name: {host}")) && text(&o).contains("VALID"),
        "{}",
        text(&o)
    );
}

#[test]
fn site_admin_and_certbot_exclude_each_other() {
    let w = World::new();
    // certbot holds its lock (a pre-hook keeps it busy) ...
    let host = "lock.example.test";
    w.dev.deploy(&site_json(&siteid(4), host, Some(json!({"letsencrypt": true}))));
    let work = w.dev.tmp.path().join("certbot-work");
    let logs = w.dev.tmp.path().join("certbot-logs");
    let mut cb = Command::new(certbot_bin())
        .args(["renew", "--force-renewal", "--no-random-sleep-on-renew", "--pre-hook", "sleep 4"])
        .args([
            "--config-dir",
            w.dev.le().to_str().unwrap(),
            "--work-dir",
            work.to_str().unwrap(),
            "--logs-dir",
            logs.to_str().unwrap(),
        ])
        .env("REQUESTS_CA_BUNDLE", &w.pebble.ca.ca_pem)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while !w.dev.le().join(".certbot.lock").exists() {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(20),
            "certbot never took its lock"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    // ... so site-admin gives up with exit 3 after its timeout,
    let o = w.dev.run(&["--lock-timeout", "1", "renew"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains("certbot"), "{}", stderr(&o));
    // ... or waits for it.
    let o = w.dev.run(&["--lock-timeout", "60", "undeploy", "--siteid", &siteid(4)]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(cb.wait().unwrap().success(), "certbot's renew itself succeeded");

    // While site-admin holds the lock, certbot cannot start.
    let _held = site_admin::lock::GlobalLock::acquire(
        &w.dev.root.join("run/site-admin/site-admin.lock"),
        &w.dev.le(),
        std::time::Duration::from_secs(5),
        "test",
    )
    .unwrap();
    let o = certbot(&w, &["certificates"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("Another instance of Certbot is already running"), "{}", text(&o));
}
