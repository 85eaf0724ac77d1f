//! Faults of the back-off and of `renew`'s verdict (issue #22, third round):
//! a back-off that cannot hold (written under a clock ahead, or under a
//! configuration fixed since), a failure count at its limit, due work left
//! backing off while `renew` says success; and the smaller things around
//! deploy, listsites and doctor (docs/design.md, "ACME accounts, revocation,
//! back-off" and "When a lineage renews").
use crate::common::*;
use serde_json::{json, Value};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn le() -> Option<Value> {
    Some(json!({"letsencrypt": true}))
}

fn write_site(d: &Device, name: &str, json: &str) -> String {
    let f = d.tmp.path().join(name);
    std::fs::write(&f, json).unwrap();
    f.display().to_string()
}

/// Make a lineage due now by the backstop: its conf asks for renewal a
/// decade before expiry.
fn make_due(d: &Device, host: &str) {
    let conf = d.le().join(format!("renewal/{host}.conf"));
    let text = std::fs::read_to_string(&conf).unwrap();
    std::fs::write(&conf, format!("renew_before_expiry = 3650 days\n{text}")).unwrap();
}

fn backoff_json(d: &Device) -> Value {
    serde_json::from_str(
        &std::fs::read_to_string(d.root.join("var/lib/site-admin/backoff.json")).unwrap(),
    )
    .unwrap()
}

/// `faketime -f OFFSET site-admin ARGS` on this device.
fn faketime(d: &Device, offset: &str, args: &[&str]) -> Output {
    require("faketime");
    let mut c = Command::new("faketime");
    c.args(["-f", offset])
        .arg(bin())
        .args(args)
        .envs(d.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    c.output().unwrap()
}

#[test]
fn a_back_off_recorded_under_a_clock_a_year_ahead_does_not_block_renewal() {
    let w = World::new();
    let d = &w.dev;
    let h = "ahead.example.test";
    d.deploy(&site_json(&siteid(1), h, le()));
    let old = d.live_serial(h).unwrap();
    make_due(d, h);
    // One failed renew while the clock is a year ahead (validation fails).
    w.pebble.set_a(h, "127.0.0.3");
    let o = faketime(d, "+365d", &["--json", "renew"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let next = backoff_json(d)[h]["next_attempt"].as_str().unwrap().to_string();
    assert!(
        next.starts_with(
            &(chrono::Utc::now().date_naive() + chrono::Days::new(365)).format("%Y-").to_string()
        ),
        "a year ahead: {next}"
    );
    // certificates applies the same rule.
    let rows: Value = serde_json::from_str(&d.ok(&["--json", "certificates"])).unwrap();
    let row = rows.as_array().unwrap().iter().find(|r| r["host"] == h).unwrap().clone();
    assert!(row["backoff_ignored"].as_str().unwrap().contains("clock was ahead"), "{row}");
    // The clock is right again: the due lineage is renewed, with a warning.
    w.pebble.set_a(h, "127.0.0.1");
    let (code, rep, err) = renew_json(d, &[]);
    assert_eq!(code, 0, "{err}\n{rep}");
    assert_eq!(rep["renewed_domains"], json!([h]), "{rep}");
    assert!(
        err.contains(&format!("{h}: ignoring its back-off")) && err.contains("clock was ahead"),
        "{err}"
    );
    let new = d.live_serial(h).unwrap();
    assert_ne!(new, old);
    d.apache.wait_serial(h, &new);
}

#[test]
fn renew_fails_while_due_work_backs_off_and_the_failure_count_saturates() {
    let w = World::new();
    let d = &w.dev;
    let (h, p) = ("due.example.test", "pending.example.test");
    d.deploy(&site_json(&siteid(1), h, le()));
    make_due(d, h);
    w.pebble.set_a(h, "127.0.0.3");
    w.pebble.set_a(p, "127.0.0.3");
    assert_eq!(d.deploy(&site_json(&siteid(2), p, le()))["pending"], true);
    let (code, rep, _) = renew_json(d, &[]);
    assert_eq!(code, 1, "the renewal failed: {rep}");
    assert_eq!(rep["failed_domains"], json!([h]), "{rep}");
    // Both now back off: nothing due is done, so the timer must not report success.
    let (code, rep, err) = renew_json(d, &[]);
    assert_eq!(code, 1, "{err}\n{rep}");
    assert_eq!(rep["backing_off_domains"], json!([h, p]), "{rep}");
    assert_eq!(rep["failed_domains"], json!([]), "{rep}");
    let why = rep["incomplete"].as_str().unwrap();
    assert!(why.contains("backing off") && why.contains(h) && why.contains(p), "{why}");
    let o = d.run(&["renew"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("renew did not complete") && stderr(&o).contains("backing off"),
        "{}",
        stderr(&o)
    );
    // A dry run fails for nothing.
    assert!(d.run(&["renew", "--dry-run"]).status.success());
    // A count at its limit stays there (it wrapped to 0 before).
    let path = d.root.join("var/lib/site-admin/backoff.json");
    let mut b = backoff_json(d);
    b[h]["failures"] = json!(u32::MAX);
    b[h]["next_attempt"] = json!("2020-01-01T00:00:00Z");
    std::fs::write(&path, b.to_string()).unwrap();
    let (code, rep, err) = renew_json(d, &[]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(rep["failed_domains"], json!([h]), "{rep}");
    assert_eq!(backoff_json(d)[h]["failures"], json!(u32::MAX));
    // Fixed: everything is done, exit 0.
    w.pebble.set_a(h, "127.0.0.1");
    w.pebble.set_a(p, "127.0.0.1");
    let (code, rep, err) = renew_json(d, &["--force"]);
    assert_eq!(code, 0, "{err}\n{rep}");
    assert_eq!(rep["incomplete"], Value::Null);
    let (code, rep, err) = renew_json(d, &[]);
    assert_eq!(code, 0, "{err}\n{rep}");
}

#[test]
fn setting_acme_eab_ends_the_back_off_of_the_failure_it_caused() {
    let key = "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W";
    let w = World::with(PebbleOptions {
        eab_keys: vec![("kid-1".into(), key.into())],
        ..Default::default()
    });
    let d = &w.dev;
    let (id, h) = (siteid(1), "bound-later.example.test");
    let rep = d.deploy(&site_json(&id, h, le()));
    assert_eq!(rep["pending"], true, "{rep}");
    let (code, rep, _) = renew_json(d, &[]);
    assert_eq!((code, rep["lineages"][0]["status"].as_str()), (1, Some("backing_off")), "{rep}");
    // The administrator sets acme_eab: the next renew tries at once.
    let mut cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(&d.config).unwrap()).unwrap();
    cfg["acme_eab"] = json!({"kid": "kid-1", "hmac_key": key});
    std::fs::write(&d.config, cfg.to_string()).unwrap();
    let (code, rep, err) = renew_json(d, &[]);
    assert_eq!(code, 0, "{err}\n{rep}");
    assert_eq!(rep["lineages"][0]["status"], "provisioned", "{rep}");
    assert!(err.contains("the configuration it failed under"), "{err}");
    d.apache.wait_serial(h, &d.live_serial(h).unwrap());
}

#[test]
fn an_own_certificate_not_valid_yet_deploys_with_a_warning() {
    let d = Device::new();
    d.apache.start();
    let h = "early.example.test";
    let (k, c) = d.issuer.issue(&[h], 3.0, 90.0);
    let f =
        write_site(&d, "early.json", &site_json(&siteid(1), h, Some(json!({"key": k, "crt": c}))));
    let o = d.run(&["deploy", "--file", &f]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("tls.crt is not valid until"), "{}", stderr(&o));
}

#[test]
fn listsites_says_http_while_a_site_is_on_http_fallback() {
    let w = World::with(PebbleOptions { validity_secs: Some(3), ..Default::default() });
    let d = &w.dev;
    let (id, h) = (siteid(1), "fallback.example.test");
    d.deploy(&site_json(&id, h, le()));
    let line =
        |d: &Device| d.ok(&["listsites"]).lines().find(|l| l.contains(&id)).unwrap().to_string();
    assert!(line(d).ends_with("https (Let's Encrypt)"), "{}", line(d));
    // Expired, redeployed while the CA cannot be reached: http fallback.
    std::thread::sleep(Duration::from_secs(4));
    let f = write_site(d, "again.json", &site_json(&id, h, le()));
    let o = d.run(&["--acme-server", "https://127.0.0.1:1/dir", "deploy", "--file", &f]);
    assert!(o.status.success(), "{}", stderr(&o));
    let l = line(d);
    assert!(l.contains(&format!("{h}  http: falling back")) && !l.contains("https"), "{l}");
}

#[test]
fn a_deploy_apache_refuses_before_provisioning_changes_nothing() {
    let w = World::new();
    let d = &w.dev;
    // Another file breaks Apache's configuration.
    d.deploy(&site_json(&siteid(1), "first.example.test", None));
    std::fs::write(d.root.join("etc/httpd/sites/zz-broken.conf"), "NoSuchDirective on\n").unwrap();
    let before = snapshot(&d.root);
    let f = write_site(d, "new.json", &site_json(&siteid(2), "new.example.test", le()));
    let o = d.run(&["deploy", "--file", &f]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("nothing was changed"), "{}", stderr(&o));
    assert_eq!(snapshot(&d.root), before, "no directories, no back-off entry");
}

#[test]
fn doctor_does_not_report_a_change_another_command_is_making() {
    let d = Device::new();
    d.apache.start();
    let (id, h) = (siteid(1), "busy.example.test");
    let (k, c) = self_signed(&[h], 30);
    d.deploy(&site_json(&id, h, Some(json!({"key": k, "crt": c}))));
    d.ok(&["doctor"]);
    // A redeploy with a new certificate, paused once its files are written
    // (Apache not reloaded yet) while it holds the lock.
    let pause = d.tmp.path().join("pause");
    let trace = d.tmp.path().join("trace");
    std::fs::write(&pause, "").unwrap();
    let (k2, c2) = self_signed(&[h], 60);
    let f = write_site(&d, "new.json", &site_json(&id, h, Some(json!({"key": k2, "crt": c2}))));
    let spawn = |args: &[&str], extra: &[(&str, &str)], err: std::process::Stdio| {
        Command::new(bin())
            .args(args)
            .envs(d.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .envs(extra.iter().copied())
            .stdout(std::process::Stdio::piped())
            .stderr(err)
            .spawn()
            .unwrap()
    };
    /// Kills the paused child if the test fails before it is waited for.
    struct Reap(Option<std::process::Child>);
    impl Drop for Reap {
        fn drop(&mut self) {
            if let Some(c) = self.0.as_mut() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
    let pause_env = format!("apache.before_configtest:{}", pause.display());
    let extra = [
        ("SITE_ADMIN_FAULT_PAUSE", pause_env.as_str()),
        ("SITE_ADMIN_FAULT_TRACE", trace.to_str().unwrap()),
    ];
    let mut deploy =
        Reap(Some(spawn(&["deploy", "--file", &f], &extra, std::process::Stdio::piped())));
    let start = Instant::now();
    while !std::fs::read_to_string(&trace).unwrap_or_default().contains("apache.before_configtest")
    {
        assert!(start.elapsed() < Duration::from_secs(60), "the deploy never reached the step");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Half-way: the new files are on disk, Apache serves the old certificate.
    // doctor sees the half-way state; it either reports it at once (exit)
    // or waits for the lock to look again (says so on stderr).
    let doctor_err = d.tmp.path().join("doctor.err");
    let mut doctor = Reap(Some(spawn(
        &["--json", "doctor"],
        &[],
        std::fs::File::create(&doctor_err).unwrap().into(),
    )));
    let start = Instant::now();
    while !std::fs::read_to_string(&doctor_err)
        .unwrap_or_default()
        .contains("waiting for the global lock")
    {
        if doctor.0.as_mut().unwrap().try_wait().unwrap().is_some() {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "doctor neither finished nor waited");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::fs::remove_file(&pause).unwrap();
    let o = deploy.0.take().unwrap().wait_with_output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let o = doctor.0.take().unwrap().wait_with_output().unwrap();
    let err = std::fs::read_to_string(&doctor_err).unwrap();
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap_or_else(|e| panic!("{e}: {err}"));
    assert_eq!(v["findings"], json!([]), "{v}\n{err}");
    assert_eq!(o.status.code(), Some(0), "{v}\n{err}");
    d.apache.wait_serial(h, &pem_serial(c2.as_bytes()).unwrap());
}
