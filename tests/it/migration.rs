//! Device migration before DNS has moved, and concurrency under the
//! global lock.
use crate::common::*;
use serde_json::{json, Value};
use std::time::Duration;

#[test]
fn a_site_moves_to_another_device_with_its_certificate_before_dns_moves() {
    // Device A listens on 127.0.0.1, device B on 127.0.0.2, same ports: the
    // test DNS decides which one pebble reaches for the host.
    let (pebble, a, b) = two_devices();

    let (id, h) = (siteid(1), "moving.example.test");
    pebble.set_a(h, "127.0.0.1");
    a.deploy(&site_json(&id, h, Some(json!({"letsencrypt": true}))));
    let serial = a.live_serial(h).unwrap();
    a.apache.wait_serial(h, &serial);
    let backup = a.tmp.path().join("backup.json");
    a.ok(&["backup", "--siteid", &id, "--out", backup.to_str().unwrap()]);

    // DNS still points elsewhere (nothing listens on 127.0.0.3): B cannot
    // validate, so it must use the certificate the backup carries.
    pebble.set_a(h, "127.0.0.3");
    let issued = pebble.issued_count();
    b.ok(&["restore", "--in", backup.to_str().unwrap()]);
    assert_eq!(pebble.issued_count(), issued);
    assert_eq!(b.live_serial(h).unwrap(), serial);
    b.apache.wait_serial(h, &serial);
    let certs: Value = serde_json::from_str(&b.ok(&["--json", "certificates"])).unwrap();
    let row = certs.as_array().unwrap().iter().find(|r| r["host"] == h).unwrap().clone();
    assert_eq!(row["state"], "live", "under renewal on B: {row}");
    assert!(b.le().join(format!("renewal/{h}.conf")).exists());

    // While DNS has not moved, B's renewal fails and says so.
    let o = b.run(&["--json", "renew", "--force"]);
    assert_eq!(o.status.code(), Some(1));
    let rep: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(rep["failed_domains"], json!([h]));
    assert_eq!(b.live_serial(h).unwrap(), serial, "a failed renewal keeps the certificate");

    // DNS moves to B: B renews it.
    pebble.set_a(h, "127.0.0.2");
    let rep: Value = serde_json::from_str(&b.ok(&["--json", "renew", "--force"])).unwrap();
    assert_eq!(rep["renewed_domains"], json!([h]), "{rep}");
    let renewed = b.live_serial(h).unwrap();
    assert_ne!(renewed, serial);
    b.apache.wait_serial(h, &renewed);
}

#[test]
fn several_deploys_at_once_all_complete_serialised_by_the_lock() {
    let w = World::new();
    let n = 6;
    let files: Vec<std::path::PathBuf> = (0..n)
        .map(|i| {
            let f = w.dev.tmp.path().join(format!("c{i}.json"));
            let tls = if i % 2 == 0 { Some(json!({"letsencrypt": true})) } else { None };
            std::fs::write(&f, site_json(&siteid(100 + i), &format!("c{i}.example.test"), tls))
                .unwrap();
            f
        })
        .collect();
    let children: Vec<std::process::Child> = files
        .iter()
        .map(|f| {
            let mut c = std::process::Command::new(bin());
            c.args(["deploy", "--file", f.to_str().unwrap()]);
            c.envs(w.dev.env.iter().map(|(k, v)| (k.clone(), v.clone())));
            c.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped());
            c.spawn().unwrap()
        })
        .collect();
    for c in children {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let all: Value = serde_json::from_str(&w.dev.ok(&["--json", "listsites"])).unwrap();
    assert_eq!(all.as_array().unwrap().len(), n as usize);
    for i in (0..n).step_by(2) {
        let h = format!("c{i}.example.test");
        w.dev.apache.wait_serial(&h, &w.dev.live_serial(&h).unwrap());
    }
    w.dev.ok(&["doctor"]);
}

#[test]
fn a_held_lock_gives_exit_3_after_the_timeout_and_changes_nothing() {
    let d = Device::new();
    let f = d.tmp.path().join("l.json");
    std::fs::write(&f, site_json(&siteid(1), "l.example.test", None)).unwrap();
    let lock = d.root.join("run/site-admin/site-admin.lock");
    let held = site_admin::lock::GlobalLock::acquire(
        &lock,
        &d.le(),
        Duration::from_secs(5),
        "deploy by the test",
    )
    .unwrap();
    let before = snapshot(&d.root.join("etc"));
    let start = std::time::Instant::now();
    let o = d.run(&["--lock-timeout", "1", "deploy", "--file", f.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(start.elapsed() >= Duration::from_secs(1));
    assert!(stderr(&o).contains("deploy by the test"), "names the holder: {}", stderr(&o));
    assert_eq!(snapshot(&d.root.join("etc")), before);
    // SITE_ADMIN_LOCK_TIMEOUT works the same.
    let mut env: Vec<(&str, &str)> = d.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    env.push(("SITE_ADMIN_LOCK_TIMEOUT", "1"));
    let o = run(&["renew"], &env, None);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    drop(held);
    // Read-only commands do not wait for the lock.
    let held =
        site_admin::lock::GlobalLock::acquire(&lock, &d.le(), Duration::from_secs(5), "x").unwrap();
    let o = d.run(&["--lock-timeout", "1", "listsites"]);
    assert_eq!(o.status.code(), Some(0));
    drop(held);
}
