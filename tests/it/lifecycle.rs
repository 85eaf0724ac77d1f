//! Every row and column of the decision table (docs/design.md) and its bullet rules,
//! end to end against real pebble and real Apache, observed from outside:
//! the serial Apache serves, what lies in live/, norenewal/, the ssl dir and
//! the stored Site JSON. Plus backup/restore, showsite/listsites.
#![allow(non_snake_case)] // test names are row__column of the decision table
use crate::common::*;
use serde_json::{json, Value};
use std::time::Duration;

const LE: fn() -> Option<Value> = || Some(json!({"letsencrypt": true}));

fn okc(host: &str, days: i64) -> (Value, String) {
    let (k, c) = self_signed(&[host], days);
    let s = pem_serial(c.as_bytes()).unwrap();
    (json!({"key": k, "crt": c}), s)
}

fn ssl_file(d: &Device, id: &str, ext: &str) -> std::path::PathBuf {
    d.root.join("etc/httpd/ssl").join(format!("{id}.{ext}"))
}

/// Wait until `host` is no longer served a TLS certificate with `serial`.
fn wait_not_serial(d: &Device, host: &str, serial: &str) {
    let start = std::time::Instant::now();
    while d.apache.served_serial(host).as_deref() == Some(serial) {
        assert!(start.elapsed() < Duration::from_secs(15), "{host} still served {serial}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn assert_no_key_at_rest(d: &Device, id: &str) {
    use std::os::unix::fs::PermissionsExt;
    let p = d.root.join("var/lib/site-admin/sites").join(format!("{id}.json"));
    let text = std::fs::read_to_string(&p).unwrap();
    assert!(
        !text.contains("PRIVATE KEY") && !text.contains("BEGIN CERTIFICATE"),
        "key material at rest: {text}"
    );
    assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
}

// ---- row: no tls ----

#[test]
fn no_tls__not_deployed__is_http() {
    let w = World::new();
    let rep = w.dev.deploy(&site_json(&siteid(1), "h.example.test", None));
    assert_eq!(rep["serving"], "http");
    assert!(!w.dev.le().join("live/h.example.test").exists());
    let (st, _, _) = w.dev.apache.http_get("h.example.test", "/");
    assert_ne!(st, 301);
}

#[test]
fn no_tls__deployed_okc__removes_okc_files() {
    let w = World::new();
    let id = siteid(2);
    let (tls, _) = okc("o.example.test", 30);
    w.dev.deploy(&site_json(&id, "o.example.test", Some(tls)));
    assert!(ssl_file(&w.dev, &id, "key").exists());
    w.dev.deploy(&site_json(&id, "o.example.test", None));
    assert!(!ssl_file(&w.dev, &id, "key").exists() && !ssl_file(&w.dev, &id, "crt").exists());
    assert_eq!(w.dev.stored_site(&id).unwrap().get("tls"), None);
}

#[test]
fn no_tls__deployed_lkc__stashes_it() {
    let w = World::new();
    let (id, h) = (siteid(3), "s.example.test");
    w.dev.deploy(&site_json(&id, h, LE()));
    let serial = w.dev.live_serial(h).unwrap();
    w.dev.apache.wait_serial(h, &serial);
    w.dev.deploy(&site_json(&id, h, None));
    assert_eq!(w.dev.live_serial(h), None);
    assert_eq!(w.dev.stash_serial(h).unwrap(), serial);
    assert!(w.dev.le().join(format!("norenewal/{h}.conf")).exists());
    assert!(!w.dev.le().join(format!("renewal/{h}.conf")).exists());
    wait_not_serial(&w.dev, h, &serial);
}

// ---- row: letsencrypt, no usable LKC ----

#[test]
fn le_no_lkc__not_deployed__unstashes_without_new_issuance() {
    let w = World::new();
    let (id, h) = (siteid(4), "u.example.test");
    w.dev.deploy(&site_json(&id, h, LE()));
    let serial = w.dev.live_serial(h).unwrap();
    w.dev.ok(&["undeploy", "--siteid", &id]);
    assert_eq!(w.dev.stash_serial(h).unwrap(), serial);
    let issued = w.pebble.issued_count();
    let rep = w.dev.deploy(&site_json(&id, h, LE()));
    assert_eq!(rep["actions"][0]["action"], "unstash", "{rep}");
    assert_eq!(w.pebble.issued_count(), issued, "no new issuance");
    assert_eq!(w.dev.live_serial(h).unwrap(), serial);
    assert_eq!(w.dev.stash_serial(h), None);
    w.dev.apache.wait_serial(h, &serial);
}

#[test]
fn le_no_lkc__not_deployed__ca_failure_falls_back_to_http_and_stays_pending() {
    let w = World::new();
    let (id, h) = (siteid(5), "pending.example.test");
    w.pebble.set_a(h, "127.0.0.3"); // DNS does not point here yet
    let rep = w.dev.deploy(&site_json(&id, h, LE()));
    assert_eq!(rep["serving"], "http", "{rep}");
    assert_eq!(rep["pending"], true);
    assert!(rep["pending_reason"].as_str().unwrap().contains("validation"), "{rep}");
    assert_eq!(
        w.dev.stored_site(&id).unwrap()["tls"]["letsencrypt"],
        true,
        "pending keeps letsencrypt: true"
    );
    let (st, _, _) = w.dev.apache.http_get(h, "/");
    assert_ne!(st, 301);
    let o = w.dev.run(&["deploy", "--file", &{
        let f = w.dev.tmp.path().join("p.json");
        std::fs::write(&f, site_json(&id, h, LE())).unwrap();
        f.display().to_string()
    }]);
    assert_eq!(o.status.code(), Some(0));
    assert!(stderr(&o).contains("renew` will retry"), "{}", stderr(&o));
    let rows: Value = serde_json::from_str(&w.dev.ok(&["--json", "certificates"])).unwrap();
    assert!(
        rows.as_array().unwrap().iter().any(|r| r["host"] == h && r["state"] == "pending"),
        "{rows}"
    );
}

#[test]
fn le_no_lkc__deployed_http__provisions() {
    let w = World::new();
    let (id, h) = (siteid(6), "up.example.test");
    w.dev.deploy(&site_json(&id, h, None));
    let rep = w.dev.deploy(&site_json(&id, h, LE()));
    assert_eq!(rep["actions"][0]["action"], "provision");
    assert_eq!(rep["serving"], "letsencrypt");
    w.dev.apache.wait_serial(h, &w.dev.live_serial(h).unwrap());
}

#[test]
fn le_no_lkc__deployed_okc__ca_failure_keeps_serving_the_old_okc() {
    let w = World::new();
    let (id, h) = (siteid(7), "keep.example.test");
    let (tls, okc_serial) = okc(h, 30);
    w.dev.deploy(&site_json(&id, h, Some(tls)));
    w.pebble.set_a(h, "127.0.0.3");
    let rep = w.dev.deploy(&site_json(&id, h, LE()));
    assert_eq!(rep["pending"], true, "{rep}");
    assert_eq!(rep["serving"], "okc");
    assert!(ssl_file(&w.dev, &id, "key").exists());
    w.dev.apache.wait_serial(h, &okc_serial);
    assert_eq!(w.dev.stored_site(&id).unwrap()["tls"]["letsencrypt"], true);
    assert_no_key_at_rest(&w.dev, &id);
}

#[test]
fn le_no_lkc__deployed_okc__success_replaces_the_okc() {
    let w = World::new();
    let (id, h) = (siteid(8), "switch.example.test");
    let (tls, okc_serial) = okc(h, 30);
    w.dev.deploy(&site_json(&id, h, Some(tls)));
    w.dev.apache.wait_serial(h, &okc_serial);
    let rep = w.dev.deploy(&site_json(&id, h, LE()));
    assert_eq!(rep["serving"], "letsencrypt", "{rep}");
    assert!(!ssl_file(&w.dev, &id, "key").exists());
    w.dev.apache.wait_serial(h, &w.dev.live_serial(h).unwrap());
}

#[test]
fn le_no_lkc__deployed_lkc__keeps_it() {
    let w = World::new();
    let (id, h) = (siteid(9), "keep-lkc.example.test");
    w.dev.deploy(&site_json(&id, h, LE()));
    let serial = w.dev.live_serial(h).unwrap();
    let issued = w.pebble.issued_count();
    let rep = w.dev.deploy(&site_json(&id, h, LE()));
    assert_eq!(rep["actions"], json!([]), "{rep}");
    assert_eq!(w.pebble.issued_count(), issued);
    assert_eq!(w.dev.live_serial(h).unwrap(), serial);
}

// ---- row: letsencrypt with a usable LKC in the Site JSON ----

/// Two exports of one site: the first LKC, then a later one (forced renewal).
fn two_exports(w: &World, id: &str, h: &str) -> (Value, String, Value, String) {
    w.dev.deploy(&site_json(id, h, LE()));
    let first: Value = serde_json::from_str(&w.dev.ok(&["showsite", "--siteid", id])).unwrap();
    let s1 = w.dev.live_serial(h).unwrap();
    std::thread::sleep(Duration::from_millis(1100)); // notAfter has a resolution of seconds
    w.dev.ok(&["renew", "--force"]);
    let second: Value = serde_json::from_str(&w.dev.ok(&["showsite", "--siteid", id])).unwrap();
    let s2 = w.dev.live_serial(h).unwrap();
    assert_ne!(s1, s2);
    (first, s1, second, s2)
}

#[test]
fn le_with_lkc__deployed_lkc__older_json_keeps_live_newer_json_becomes_next_version() {
    let w = World::new();
    let (id, h) = (siteid(10), "carried.example.test");
    let (first, _s1, second, s2) = two_exports(&w, &id, h);
    // The live one (second) expires later than the carried first: keep.
    let rep = w.dev.deploy(&first.to_string());
    assert_eq!(rep["actions"], json!([]), "{rep}");
    assert_eq!(w.dev.live_serial(h).unwrap(), s2);
    assert_no_key_at_rest(&w.dev, &id);

    // On device B, live = first (restored); deploying the second (later) wins as version 2.
    let b = Device::new();
    let mut b = b;
    b.use_pebble(&w.pebble);
    b.apache.start();
    let rep = b.deploy(&first.to_string());
    assert_eq!(rep["actions"][0]["action"], "import_carried", "{rep}");
    let rep = b.deploy(&second.to_string());
    assert_eq!(rep["actions"][0]["action"], "import_carried", "{rep}");
    assert_eq!(b.live_serial(h).unwrap(), s2);
    assert_eq!(
        std::fs::read_link(b.le().join("live").join(h).join("cert.pem"))
            .unwrap()
            .display()
            .to_string(),
        format!("../../archive/{h}/cert2.pem")
    );
    b.apache.wait_serial(h, &s2);
}

#[test]
fn le_with_lkc__not_deployed__newest_of_json_and_stash() {
    let w = World::new();
    let (id, h) = (siteid(11), "stash-vs-json.example.test");
    let (first, _s1, second, s2) = two_exports(&w, &id, h);
    w.dev.ok(&["undeploy", "--siteid", &id]);
    assert_eq!(w.dev.stash_serial(h).unwrap(), s2);
    // The stash (second) is newer than the carried first: unstash.
    let rep = w.dev.deploy(&first.to_string());
    assert_eq!(rep["actions"][0]["action"], "unstash", "{rep}");
    assert_eq!(w.dev.live_serial(h).unwrap(), s2);
    // Equal dates keep what the device has.
    let rep = w.dev.deploy(&second.to_string());
    assert_eq!(rep["actions"], json!([]), "{rep}");
}

#[test]
fn le_with_lkc__json_newer_than_stash_wins_and_deletes_the_stash() {
    let w = World::new();
    let (id, h) = (siteid(12), "json-wins.example.test");
    let (first, s1, second, s2) = two_exports(&w, &id, h);
    // Device B: deploy first, undeploy (stash = first); deploy second: JSON wins.
    let mut b = Device::new();
    b.use_pebble(&w.pebble);
    b.apache.start();
    b.deploy(&first.to_string());
    b.ok(&["undeploy", "--siteid", &id]);
    assert_eq!(b.stash_serial(h).unwrap(), s1);
    let rep = b.deploy(&second.to_string());
    assert_eq!(
        rep["actions"],
        json!([{"action": "delete_stash", "host": h}, {"action": "import_carried", "host": h}]),
        "{rep}"
    );
    assert_eq!(b.stash_serial(h), None);
    assert_eq!(b.live_serial(h).unwrap(), s2);
}

#[test]
fn le_with_lkc__for_another_host_is_ignored_with_a_warning() {
    let w = World::new();
    let (k, c) = self_signed(&["other.example.test"], 30);
    let id = siteid(13);
    let h = "mine.example.test";
    let f = w.dev.tmp.path().join("wrong.json");
    std::fs::write(&f, site_json(&id, h, Some(json!({"letsencrypt": true, "key": k, "crt": c}))))
        .unwrap();
    let o = w.dev.run(&["--json", "deploy", "--file", f.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("is ignored")
            && stderr(&o).contains("does not cover mine.example.test"),
        "{}",
        stderr(&o)
    );
    let rep: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(rep["actions"][0]["action"], "provision");
    assert_ne!(w.dev.live_serial(h).unwrap(), pem_serial(c.as_bytes()).unwrap());
}

#[test]
fn rule_an_expired_stash_is_deleted_not_unstashed() {
    let w = World::with(PebbleOptions { validity_secs: Some(4), ..Default::default() });
    let (id, h) = (siteid(14), "expire.example.test");
    w.dev.deploy(&site_json(&id, h, LE()));
    let old = w.dev.live_serial(h).unwrap();
    w.dev.ok(&["undeploy", "--siteid", &id]);
    assert_eq!(w.dev.stash_serial(h).unwrap(), old);
    std::thread::sleep(Duration::from_secs(5));
    let rep = w.dev.deploy(&site_json(&id, h, LE()));
    assert_eq!(rep["actions"][0], json!({"action": "delete_stash", "host": h}), "{rep}");
    assert_eq!(rep["actions"][1]["action"], "provision");
    assert_eq!(w.dev.stash_serial(h), None);
    assert_ne!(w.dev.live_serial(h).unwrap(), old);
}

// ---- row: OKC ----

#[test]
fn okc__not_deployed_then_replaced() {
    let w = World::new();
    let (id, h) = (siteid(15), "okc.example.test");
    let (t1, s1) = okc(h, 30);
    w.dev.deploy(&site_json(&id, h, Some(t1)));
    w.dev.apache.wait_serial(h, &s1);
    let (t2, s2) = okc(h, 60);
    w.dev.deploy(&site_json(&id, h, Some(t2)));
    w.dev.apache.wait_serial(h, &s2);
    assert_no_key_at_rest(&w.dev, &id);
}

#[test]
fn okc__deployed_lkc__stashes_the_lkc() {
    let w = World::new();
    let (id, h) = (siteid(16), "to-okc.example.test");
    w.dev.deploy(&site_json(&id, h, LE()));
    let lkc = w.dev.live_serial(h).unwrap();
    let (t, s) = okc(h, 30);
    w.dev.deploy(&site_json(&id, h, Some(t)));
    assert_eq!(w.dev.stash_serial(h).unwrap(), lkc);
    w.dev.apache.wait_serial(h, &s);
}

#[test]
fn rule_a_mismatched_okc_is_refused_and_nothing_changes() {
    let w = World::new();
    let (id, h) = (siteid(17), "mismatch.example.test");
    w.dev.deploy(&site_json(&id, h, LE()));
    let before = snapshot(&w.dev.root);
    let (k, _) = self_signed(&[h], 30);
    let (_, c) = self_signed(&[h], 30);
    let f = w.dev.tmp.path().join("mm.json");
    std::fs::write(&f, site_json(&id, h, Some(json!({"key": k, "crt": c})))).unwrap();
    let o = w.dev.run(&["deploy", "--file", f.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("tls.key: does not match the certificate in tls.crt"),
        "{}",
        stderr(&o)
    );
    assert_eq!(snapshot(&w.dev.root), before);
}

#[test]
fn rule_a_hostname_change_stashes_the_old_hosts_lkc() {
    let w = World::new();
    let id = siteid(18);
    w.dev.deploy(&site_json(&id, "old.example.test", LE()));
    let old = w.dev.live_serial("old.example.test").unwrap();
    let rep = w.dev.deploy(&site_json(&id, "new.example.test", LE()));
    assert_eq!(
        rep["actions"][0],
        json!({"action": "stash_live", "host": "old.example.test"}),
        "{rep}"
    );
    assert_eq!(w.dev.stash_serial("old.example.test").unwrap(), old);
    let new = w.dev.live_serial("new.example.test").unwrap();
    w.dev.apache.wait_serial("new.example.test", &new);
}

#[test]
fn a_hostname_used_by_another_site_is_refused() {
    let w = World::new();
    w.dev.deploy(&site_json(&siteid(19), "dup.example.test", None));
    let before = snapshot(&w.dev.root);
    let f = w.dev.tmp.path().join("dup.json");
    std::fs::write(&f, site_json(&siteid(20), "dup.example.test", None)).unwrap();
    let o = w.dev.run(&["deploy", "--file", f.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains(&format!(
            "hostname dup.example.test is already used by deployed site {}",
            siteid(19)
        )),
        "{}",
        stderr(&o)
    );
    assert_eq!(snapshot(&w.dev.root), before);
    // And a second "*" site.
    w.dev.deploy(&site_json(&siteid(21), "*", None));
    std::fs::write(&f, site_json(&siteid(22), "*", None)).unwrap();
    let o = w.dev.run(&["deploy", "--file", f.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("a second \"*\" site"), "{}", stderr(&o));
}

// ---- backup, restore, showsite, listsites ----

#[test]
fn backup_and_restore_carry_the_material() {
    use std::os::unix::fs::PermissionsExt;
    let w = World::new();
    let (a, b, c) = (siteid(23), siteid(24), siteid(25));
    w.dev.deploy(&site_json(&a, "ba.example.test", LE()));
    let (t, okc_serial) = okc("bb.example.test", 30);
    w.dev.deploy(&site_json(&b, "bb.example.test", Some(t)));
    w.dev.deploy(&site_json(&c, "bc.example.test", None));
    let out = w.dev.tmp.path().join("backup.json");
    w.dev.ok(&["backup", "--all", "--out", out.to_str().unwrap()]);
    assert_eq!(std::fs::metadata(&out).unwrap().permissions().mode() & 0o777, 0o600);
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let sites = doc["sites"].as_array().unwrap();
    assert_eq!(sites.len(), 3);
    let sa = sites.iter().find(|s| s["siteid"] == a.as_str()).unwrap();
    assert!(sa["tls"]["key"].as_str().unwrap().contains("PRIVATE KEY"));
    assert_eq!(
        pem_serial(sa["tls"]["crt"].as_str().unwrap().as_bytes()).unwrap(),
        w.dev.live_serial("ba.example.test").unwrap()
    );
    let sb = sites.iter().find(|s| s["siteid"] == b.as_str()).unwrap();
    assert_eq!(pem_serial(sb["tls"]["crt"].as_str().unwrap().as_bytes()).unwrap(), okc_serial);

    let notls = w.dev.tmp.path().join("notls.json");
    w.dev.ok(&["backup", "--siteid", &a, &b, "--out", notls.to_str().unwrap(), "--notls"]);
    let text = std::fs::read_to_string(&notls).unwrap();
    assert!(!text.contains("PRIVATE KEY") && !text.contains("CERTIFICATE"), "{text}");

    // listsites --json carries the material too; showsite for one.
    let all: Value = serde_json::from_str(&w.dev.ok(&["--json", "listsites"])).unwrap();
    assert_eq!(all.as_array().unwrap().len(), 3);
    // Restore only two sites onto a fresh device.
    let mut d2 = Device::new();
    d2.use_pebble(&w.pebble);
    d2.apache.start();
    let issued = w.pebble.issued_count();
    d2.ok(&["restore", "--in", out.to_str().unwrap(), "--siteid", &a, &b]);
    assert_eq!(w.pebble.issued_count(), issued, "restore re-issued nothing");
    assert_eq!(d2.live_serial("ba.example.test"), w.dev.live_serial("ba.example.test"));
    d2.apache.wait_serial("ba.example.test", &w.dev.live_serial("ba.example.test").unwrap());
    d2.apache.wait_serial("bb.example.test", &okc_serial);
    assert!(d2.stored_site(&c).is_none());
    assert_no_key_at_rest(&d2, &a);
    assert_no_key_at_rest(&d2, &b);
    // A restored lineage is under renewal with an account that exists on d2.
    let conf = std::fs::read_to_string(d2.le().join("renewal/ba.example.test.conf")).unwrap();
    let acct = conf.lines().find_map(|l| l.strip_prefix("account = ")).unwrap().to_string();
    assert!(
        d2.le()
            .join("accounts")
            .join(format!("127.0.0.1:{}", w.pebble.port))
            .join("dir")
            .join(&acct)
            .join("private_key.json")
            .exists(),
        "{conf}"
    );
}

#[test]
fn backup_and_showsite_keep_the_profile_a_site_asked_for() {
    // A restore elsewhere must order the same profile: the exported site keeps
    // `profile` (pebble offers no profiles; not required, so it issues).
    let w = World::new();
    let id = siteid(26);
    let tls = json!({"letsencrypt": true, "profile": "shortlived"});
    w.dev.deploy(&site_json(&id, "bp.example.test", Some(tls)));
    let out = w.dev.tmp.path().join("profile.json");
    w.dev.ok(&["backup", "--siteid", &id, "--out", out.to_str().unwrap(), "--notls"]);
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(doc["sites"][0]["tls"]["profile"], "shortlived", "{doc}");
    let shown: Value = serde_json::from_str(&w.dev.ok(&["showsite", "--siteid", &id])).unwrap();
    assert_eq!(shown["tls"]["profile"], "shortlived", "{shown}");
}

#[test]
fn restore_refuses_bad_backups_and_changes_nothing() {
    let d = Device::new();
    let before = snapshot(&d.root);
    let f = d.tmp.path().join("bad.json");
    for (content, msg) in [
        ("not json", "not valid JSON"),
        (r#"{"sites": 5}"#, "\"sites\" must be an array"),
        (r#"{"sites": []}"#, "holds no site"),
        (&format!(r#"{{"sites": [{}]}}"#, site_json(&siteid(1), "a/b", None)), "site #1"),
        (
            &format!(
                r#"{{"sites": [{}, {}]}}"#,
                site_json(&siteid(1), "x.example.test", None),
                site_json(&siteid(2), "x.example.test", None)
            ),
            "share the hostname",
        ),
    ] {
        std::fs::write(&f, content).unwrap();
        let o = d.run(&["restore", "--in", f.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(2), "{content}: {}", stderr(&o));
        assert!(stderr(&o).contains(msg), "{content}: {}", stderr(&o));
    }
    std::fs::write(
        &f,
        format!(r#"{{"sites": [{}]}}"#, site_json(&siteid(1), "x.example.test", None)),
    )
    .unwrap();
    let o = d.run(&["restore", "--in", f.to_str().unwrap(), "--siteid", &siteid(2)]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains(&format!("holds no site {}", siteid(2))));
    let o = d.run(&["restore", "--in", "/nonexistent/backup.json"]);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(snapshot(&d.root), before);
}

#[test]
fn undeploy_and_showsite_of_unknown_sites_exit_2() {
    let d = Device::new();
    for args in [
        vec!["undeploy", "--siteid", &siteid(99)],
        vec!["showsite", "--siteid", &siteid(99)],
        vec!["undeploy", "--siteid", "nonsense"],
    ] {
        let o = d.run(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
    }
}
