//! `site-admin renew` with short-lived certificates from pebble:
//! due rules, hooks and certbot deploy hooks, the CA down, pending sites,
//! stash housekeeping, the lock; and the systemd units.
use crate::common::*;
use serde_json::{json, Value};
use std::time::Duration;

fn le() -> Option<Value> {
    Some(json!({"letsencrypt": true}))
}

#[test]
fn renews_only_what_is_due_serves_it_and_runs_both_kinds_of_hook() {
    let w = World::with(PebbleOptions { validity_secs: Some(8), ..Default::default() });
    let d = &w.dev;
    let (a, b) = ("due.example.test", "fresh.example.test");
    d.deploy(&site_json(&siteid(1), a, le()));
    let out = d.tmp.path().join("hook.out");
    write_hook(
        &d.root.join("etc/site-admin/hooks.d/20-record"),
        &format!("echo \"event=$SITE_ADMIN_EVENT renewed=[$RENEWED_DOMAINS] failed=[$FAILED_DOMAINS]\" >> {o}; cat >> {o}; echo >> {o}", o = out.display()),
    );
    write_hook(&d.root.join("etc/site-admin/hooks.d/10-fails"), "exit 7");
    let cb_out = d.tmp.path().join("certbot-hook.out");
    write_hook(
        &d.le().join("renewal-hooks/deploy/record"),
        &format!("echo \"$RENEWED_LINEAGE $RENEWED_DOMAINS\" >> {}", cb_out.display()),
    );

    // Fresh: nothing due (8 s lifetime: due at half).
    let (code, rep, _) = renew_json(d, &[]);
    assert_eq!(code, 0);
    assert_eq!(rep["renewed_domains"], json!([]), "{rep}");
    assert_eq!(rep["lineages"][0]["status"], "not_due");
    let first = d.live_serial(a).unwrap();

    std::thread::sleep(Duration::from_millis(4500));
    d.deploy(&site_json(&siteid(2), b, le()));
    let (code, rep, err) = renew_json(d, &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(rep["renewed_domains"], json!([a]), "{rep}");
    let fresh =
        rep["lineages"].as_array().unwrap().iter().find(|l| l["host"] == b).unwrap().clone();
    assert_eq!(fresh["status"], "not_due");
    let renewed = d.live_serial(a).unwrap();
    assert_ne!(renewed, first);
    d.apache.wait_serial(a, &renewed);

    // Hooks: byte order, environment, the report on stdin; a failing one is reported, not fatal.
    let hooks = rep["hooks"].as_array().unwrap();
    let names: Vec<String> = hooks
        .iter()
        .map(|h| h["hook"].as_str().unwrap().rsplit('/').next().unwrap().to_string())
        .collect();
    assert_eq!(names, vec!["record", "10-fails", "20-record"], "{rep}");
    assert_eq!(hooks[1]["ok"], false);
    assert!(err.contains("10-fails"), "{err}");
    let text = std::fs::read_to_string(&out).unwrap();
    let last = text.lines().rev().take(2).collect::<Vec<_>>();
    assert_eq!(last[1], format!("event=renew renewed=[{a}] failed=[]"));
    let stdin: Value = serde_json::from_str(last[0]).unwrap();
    let l = stdin["lineages"].as_array().unwrap().iter().find(|l| l["host"] == a).unwrap().clone();
    assert_eq!(l["siteid"], siteid(1));
    assert!(l["old_not_after"].is_string() && l["new_not_after"].is_string(), "{l}");
    assert_eq!(
        std::fs::read_to_string(&cb_out).unwrap().trim(),
        format!("{} {a}", d.le().join("live").join(a).display())
    );
}

#[test]
fn renew_before_expiry_in_the_conf_makes_a_lineage_due() {
    let w = World::new();
    let d = &w.dev;
    d.deploy(&site_json(&siteid(1), "rbe.example.test", le()));
    d.deploy(&site_json(&siteid(2), "other.example.test", le()));
    let conf = d.le().join("renewal/rbe.example.test.conf");
    let text = std::fs::read_to_string(&conf).unwrap();
    std::fs::write(&conf, format!("renew_before_expiry = 3000 days\n{text}")).unwrap();
    let (code, rep, _) = renew_json(d, &[]);
    assert_eq!(code, 0);
    assert_eq!(rep["renewed_domains"], json!(["rbe.example.test"]), "{rep}");
    // The rewrite kept the field.
    assert!(std::fs::read_to_string(&conf).unwrap().contains("renew_before_expiry = 3000 days"));
    // --dry-run reports and changes nothing; --force renews all.
    let before = snapshot(&d.le());
    let (_, rep, _) = renew_json(d, &["--dry-run", "--force"]);
    assert_eq!(rep["dry_run"], true);
    assert_eq!(
        rep["lineages"].as_array().unwrap().iter().filter(|l| l["status"] == "would_renew").count(),
        2
    );
    assert_eq!(snapshot(&d.le()), before);
    let (_, rep, _) = renew_json(d, &["--force"]);
    assert_eq!(rep["renewed_domains"].as_array().unwrap().len(), 2);
}

#[test]
fn with_the_ca_down_renew_exits_1_and_hooks_see_failed_domains() {
    let mut w = World::new();
    let h = "down.example.test";
    w.dev.deploy(&site_json(&siteid(1), h, le()));
    let serial = w.dev.live_serial(h).unwrap();
    let out = w.dev.tmp.path().join("hook.out");
    write_hook(
        &w.dev.root.join("etc/site-admin/hooks.d/record"),
        &format!("echo \"failed=[$FAILED_DOMAINS]\" > {}", out.display()),
    );
    w.pebble.stop_ca();
    let (code, rep, err) = renew_json(&w.dev, &["--force"]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(rep["failed_domains"], json!([h]));
    assert!(
        rep["lineages"][0]["error"].as_str().unwrap().contains("cannot reach the ACME server"),
        "{rep}"
    );
    assert_eq!(std::fs::read_to_string(&out).unwrap().trim(), format!("failed=[{h}]"));
    assert_eq!(w.dev.live_serial(h).unwrap(), serial, "the certificate stays");
    w.dev.apache.wait_serial(h, &serial);
}

#[test]
fn a_pending_site_becomes_https_once_validation_works() {
    let w = World::new();
    let (id, h) = (siteid(1), "later.example.test");
    let (k, c) = self_signed(&[h], 30);
    let okc_serial = pem_serial(c.as_bytes()).unwrap();
    w.dev.deploy(&site_json(&id, h, Some(json!({"key": k, "crt": c}))));
    w.pebble.set_a(h, "127.0.0.3");
    let rep = w.dev.deploy(&site_json(&id, h, le()));
    assert_eq!(rep["pending"], true);
    // --force: the failed provisioning has the site backing off for a minute.
    let (code, rep, _) = renew_json(&w.dev, &["--force"]);
    assert_eq!(code, 1, "the retry failed: {rep}");
    w.dev.apache.wait_serial(h, &okc_serial);
    w.pebble.set_a(h, "127.0.0.1");
    let (code, rep, err) = renew_json(&w.dev, &["--force"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(rep["lineages"][0]["status"], "provisioned", "{rep}");
    let serial = w.dev.live_serial(h).unwrap();
    w.dev.apache.wait_serial(h, &serial);
    assert!(
        !w.dev.root.join("etc/httpd/ssl").join(format!("{id}.key")).exists(),
        "the old OKC is gone"
    );
    let rows: Value = serde_json::from_str(&w.dev.ok(&["--json", "certificates"])).unwrap();
    assert!(rows.as_array().unwrap().iter().all(|r| r["state"] != "pending"), "{rows}");
}

#[test]
fn expired_stash_entries_are_deleted_by_renew() {
    let w = World::with(PebbleOptions { validity_secs: Some(3), ..Default::default() });
    let (id, h) = (siteid(1), "gone.example.test");
    w.dev.deploy(&site_json(&id, h, le()));
    w.dev.ok(&["undeploy", "--siteid", &id]);
    assert!(w.dev.stash_serial(h).is_some());
    std::thread::sleep(Duration::from_millis(3500));
    let (code, rep, _) = renew_json(&w.dev, &[]);
    assert_eq!(code, 0);
    assert_eq!(rep["stash_deleted"], json!([h]));
    assert!(!w.dev.le().join("norenewal").join(h).exists());
    assert!(!w.dev.le().join("archive").join(h).exists());
}

#[test]
fn renew_waits_for_a_held_lock_or_gives_exit_3() {
    let d = Device::new();
    let lock = d.root.join("run/site-admin/site-admin.lock");
    let held = site_admin::lock::GlobalLock::acquire(
        &lock,
        &d.le(),
        Duration::from_secs(5),
        "a long deploy",
    )
    .unwrap();
    let o = d.run(&["--lock-timeout", "1", "renew"]);
    assert_eq!(o.status.code(), Some(3));
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1500));
        drop(held);
    });
    let start = std::time::Instant::now();
    let o = d.run(&["--lock-timeout", "30", "renew"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(start.elapsed() >= Duration::from_millis(1000), "it waited");
    assert!(
        stderr(&o).contains("waiting for the global lock") && stderr(&o).contains("a long deploy"),
        "{}",
        stderr(&o)
    );
    t.join().unwrap();
}

#[test]
fn systemd_units_verify() {
    // scripts/setup installs it (Debian package systemd).
    let sa = ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("systemd-analyze is not installed: run scripts/setup");
    let svc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/systemd/site-admin-renew.service"
    ))
    .unwrap();
    assert!(
        svc.contains("After=") && svc.contains("time-sync.target"),
        "the service waits for the clock: {svc}"
    );
    let timer = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/systemd/site-admin-renew.timer"
    ))
    .unwrap();
    assert!(timer.contains("Persistent=true") && timer.contains("RandomizedDelaySec="), "{timer}");
    let t = tempfile::tempdir().unwrap();
    let svc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/systemd/site-admin-renew.service"
    ))
    .unwrap();
    std::fs::write(
        t.path().join("site-admin-renew.service"),
        svc.replace("/usr/bin/site-admin", bin().to_str().unwrap()),
    )
    .unwrap();
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/site-admin-renew.timer"),
        t.path().join("site-admin-renew.timer"),
    )
    .unwrap();
    let o = std::process::Command::new(sa)
        .arg("verify")
        .arg(t.path().join("site-admin-renew.timer"))
        .arg(t.path().join("site-admin-renew.service"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "systemd-analyze verify: {err}");
    assert!(!err.contains("site-admin-renew"), "warnings about our units: {err}");
}
