//! A reload is done when Apache serves what was written (docs/design.md,
//! "Apache reload"): the proofs, their deadline, the address they ask, and
//! the reloads a change costs.
use crate::common::*;
use serde_json::{json, Value};
use std::path::Path;

fn le() -> Option<Value> {
    Some(json!({"letsencrypt": true}))
}

fn set_apache(d: &Device, key: &str, argv: Vec<String>) {
    let mut cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(&d.config).unwrap()).unwrap();
    cfg["apache"][key] = json!(argv);
    std::fs::write(&d.config, cfg.to_string()).unwrap();
}

/// `argv`, run through a shell that first appends a line to `marker`.
fn counting(marker: &Path, argv: &[String]) -> Vec<String> {
    let quoted: Vec<String> = argv.iter().map(|a| format!("'{a}'")).collect();
    vec![
        "sh".into(),
        "-c".into(),
        format!("echo x >> '{}'; exec {}", marker.display(), quoted.join(" ")),
    ]
}

fn lines(p: &Path) -> usize {
    std::fs::read_to_string(p).map(|t| t.lines().count()).unwrap_or(0)
}

#[test]
fn a_renewal_that_only_switches_live_links_runs_no_configtest() {
    let w = World::new();
    let d = &w.dev;
    let h = "links.example.test";
    d.deploy(&site_json(&siteid(1), h, le()));
    let tests = d.tmp.path().join("configtests");
    set_apache(d, "configtest", counting(&tests, &d.apache.configtest_argv()));
    let (code, rep, err) = renew_json(d, &["--force"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(rep["renewed_domains"], json!([h]));
    let new = d.live_serial(h).unwrap();
    assert_eq!(
        d.apache.served_serial(h).as_deref(),
        Some(new.as_str()),
        "served when renew returned"
    );
    assert_eq!(lines(&tests), 0, "no configtest for a renewal that only moved live/ links");
}

#[test]
fn a_reload_that_never_brings_the_new_certificate_fails_after_the_deadline_naming_the_host() {
    let w = World::new();
    let d = &w.dev;
    let h = "stale.example.test";
    d.deploy(&site_json(&siteid(1), h, le()));
    let old = d.live_serial(h).unwrap();
    // A reload command that succeeds and does nothing.
    set_apache(d, "reload", vec!["true".into()]);
    let (code, rep, err) = renew_json(d, &["--force"]);
    assert_eq!(code, 1, "{err}");
    let said = rep["apache_error"].as_str().unwrap_or_default();
    assert!(
        said.contains(h)
            && said.contains("did not serve")
            && said.contains(&format!("serial {old}")),
        "{rep}"
    );
    assert_eq!(rep["not_served"], json!([h]));
    assert_eq!(d.apache.served_serial(h).as_deref(), Some(old.as_str()));
}

#[test]
fn device_b_checks_its_own_apache_not_the_one_on_127_0_0_1() {
    // Device A serves on 127.0.0.1, B on 127.0.0.2 with the same ports. B's
    // reload stops B's Apache (a scripted stand-in for a key mod_ssl refuses
    // at load time): B must see that, though A still answers on 127.0.0.1.
    let (_pebble, a, b) = two_devices();
    let (k, c) = self_signed(&["a.example.test"], 30);
    a.deploy(&site_json(&siteid(1), "a.example.test", Some(json!({"key": k, "crt": c}))));
    let (k, c) = self_signed(&["one.example.test"], 30);
    b.deploy(&site_json(&siteid(2), "one.example.test", Some(json!({"key": k, "crt": c}))));
    let serial = pem_serial(c.as_bytes()).unwrap();
    b.apache.wait_serial("one.example.test", &serial);
    let pid = b.apache.dir.join("httpd.pid");
    set_apache(
        &b,
        "reload",
        vec!["sh".into(), "-c".into(), format!("kill -TERM $(cat {}); sleep 0.5", pid.display())],
    );
    let vhosts = snapshot(&b.root.join("etc/httpd"));
    let (k, c) = self_signed(&["two.example.test"], 30);
    let f = b.tmp.path().join("two.json");
    std::fs::write(
        &f,
        site_json(&siteid(3), "two.example.test", Some(json!({"key": k, "crt": c}))),
    )
    .unwrap();
    let o = b.run(&["deploy", "--file", f.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("127.0.0.2")
            && stderr(&o).contains("previous configuration was put back"),
        "{}",
        stderr(&o)
    );
    assert_eq!(snapshot(&b.root.join("etc/httpd")), vhosts, "the previous configuration is back");
    b.apache.wait_serial("one.example.test", &serial);
    assert!(b.apache.is_running(), "B's Apache was started again");
}

#[test]
fn a_new_site_is_served_with_exactly_one_reload() {
    let w = World::new();
    let d = &w.dev;
    // The first site registers the account; its deploy writes the stateless
    // challenge answer of that account for every host.
    d.deploy(&site_json(&siteid(1), "first.example.test", le()));
    let reloads = d.tmp.path().join("reloads");
    set_apache(d, "reload", counting(&reloads, &d.apache.reload_argv()));
    let h = "second.example.test";
    let rep = d.deploy(&site_json(&siteid(2), h, le()));
    assert_eq!(rep["serving"], "letsencrypt", "{rep}");
    let serial = d.live_serial(h).unwrap();
    assert_eq!(
        d.apache.served_serial(h).as_deref(),
        Some(serial.as_str()),
        "served when deploy returned"
    );
    assert_eq!(lines(&reloads), 1, "one reload for a new site");
    // A challenge file that exists is served, not the stateless answer.
    let dir = d.root.join("srv/http/wellknown").join(siteid(1)).join(".well-known/acme-challenge");
    std::fs::write(dir.join("filetoken"), "from-the-file").unwrap();
    assert_eq!(
        d.apache.http_get("first.example.test", "/.well-known/acme-challenge/filetoken").2,
        "from-the-file"
    );
}

#[test]
fn with_apache_pid_file_a_reload_signals_the_parent_instead_of_running_the_reload_command() {
    let w = World::new();
    let d = &w.dev;
    let h = "signalled.example.test";
    d.deploy(&site_json(&siteid(1), h, le()));
    let mut cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(&d.config).unwrap()).unwrap();
    cfg["apache"]["pid_file"] = json!(d.apache.dir.join("httpd.pid"));
    // The reload command would fail: the signal is what reloads.
    cfg["apache"]["reload"] = json!(["sh", "-c", "echo not this >&2; exit 1"]);
    std::fs::write(&d.config, cfg.to_string()).unwrap();
    let (code, rep, err) = renew_json(d, &["--force"]);
    assert_eq!(code, 0, "{err}\n{rep}");
    let new = d.live_serial(h).unwrap();
    assert_eq!(
        d.apache.served_serial(h).as_deref(),
        Some(new.as_str()),
        "served when renew returned"
    );
    // A pid file naming no Apache falls back to the reload command.
    let fake = d.tmp.path().join("fake.pid");
    std::fs::write(&fake, format!("{}\n", std::process::id())).unwrap();
    cfg["apache"]["pid_file"] = json!(fake);
    std::fs::write(&d.config, cfg.to_string()).unwrap();
    let (code, rep, _) = renew_json(d, &["--force"]);
    assert_eq!(code, 1);
    assert!(rep["apache_error"].as_str().unwrap_or_default().contains("not this"), "{rep}");
}
