//! Renewal for the CA world of 2026–2028, against acme2certifier (an ACME
//! server independent of pebble): ARI windows and `replaces`, profiles, and
//! certbot reading the state; IP-address sites against pebble, which
//! validates them (docs/design.md, "When a lineage renews").
use crate::common::*;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn le(profile: Option<(&str, bool)>) -> Option<Value> {
    let mut t = json!({"letsencrypt": true});
    if let Some((p, req)) = profile {
        t["profile"] = p.into();
        if req {
            t["profile_required"] = true.into();
        }
    }
    Some(t)
}

/// A device whose ACME server is this acme2certifier.
fn device(a: &A2c) -> Device {
    let mut d = Device::new();
    d.env.push(("SITE_ADMIN_ACME_SERVER".into(), a.directory()));
    d.apache.start();
    d
}

fn lifetime_days(d: &Device, host: &str) -> i64 {
    let pem = std::fs::read(d.le().join("live").join(host).join("cert.pem")).unwrap();
    let c = openssl::x509::X509::from_pem(&pem).unwrap();
    let diff = c.not_before().diff(c.not_after()).unwrap();
    diff.days as i64
}

#[test]
fn an_ari_window_in_the_past_renews_now_naming_the_replaced_certificate() {
    let t = tempfile::tempdir().unwrap();
    let a = A2c::start(
        &t.path().join("a2c"),
        A2cOptions { renewal_threshold_pctg: -100.0, retry_after: 600, window_secs: Some(3600) },
    );
    let d = device(&a);
    let h = "ari-now.example.test";
    d.deploy(&site_json(&siteid(1), h, le(None)));
    let old = d.live_serial(h).unwrap();
    let old_id = {
        let pem = std::fs::read(d.le().join("live").join(h).join("cert.pem")).unwrap();
        site_admin::certs::parse_first_cert(&pem).unwrap().ari_id.unwrap()
    };
    // Issued a moment ago: ARI renews nothing younger than a day, and says so.
    let (code, rep, err) = renew_json(&d, &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(rep["renewed_domains"], json!([]), "{rep}");
    assert_eq!(
        (rep["lineages"][0]["status"].as_str(), rep["lineages"][0]["due_by"].as_str()),
        (Some("not_due"), Some("ari")),
        "{rep}"
    );
    assert!(
        rep["lineages"][0]["note"].as_str().unwrap().contains("issued less than a day"),
        "{rep}"
    );
    assert!(err.contains("the ARI window has passed, but"), "{err}");
    // Two days later (the clock moved on): the backstop of a 30-day
    // certificate says not due; ARI says now.
    require("faketime");
    let o = std::process::Command::new("faketime")
        .args(["-f", "+2d"])
        .arg(bin())
        .args(["--json", "renew"])
        .envs(d.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .unwrap();
    let (code, rep, err) = (
        o.status.code().unwrap(),
        serde_json::from_str::<Value>(&stdout(&o)).unwrap_or_default(),
        stderr(&o),
    );
    assert_eq!(code, 0, "{err}\n{}", a.log());
    assert_eq!(rep["renewed_domains"], json!([h]), "{rep}");
    let line = rep["lineages"].as_array().unwrap().iter().find(|l| l["host"] == h).unwrap().clone();
    assert_eq!(line["due_by"], "ari", "{line}");
    assert_eq!(line["replaced"], old_id.as_str(), "{line}");
    // The order carried replaces, naming the old certificate (seen by the server).
    let orders = a.orders();
    assert_eq!(orders.last().unwrap()["replaces"], old_id.as_str(), "{orders:?}");
    let new = d.live_serial(h).unwrap();
    assert_ne!(new, old);
    d.apache.wait_serial(h, &new);
    // The new certificate's window is in the past too: three more runs
    // renew nothing (they renewed at every run before).
    let issued = a.orders().len();
    for _ in 0..3 {
        let (code, rep, err) = renew_json(&d, &[]);
        assert_eq!(code, 0, "{err}");
        assert_eq!(rep["renewed_domains"], json!([]), "{rep}");
    }
    assert_eq!(a.orders().len(), issued);
    assert_eq!(d.live_serial(h).unwrap(), new);
}

#[test]
fn an_ari_window_ahead_leaves_it_alone_and_no_request_is_sent_before_retry_after() {
    let t = tempfile::tempdir().unwrap();
    let a = A2c::start(
        &t.path().join("a2c"),
        A2cOptions { renewal_threshold_pctg: 85.0, retry_after: 600, window_secs: None },
    );
    let d = device(&a);
    let h = "ari-later.example.test";
    d.deploy(&site_json(&siteid(1), h, le(None)));
    let (code, rep, err) = renew_json(&d, &[]);
    assert_eq!(code, 0, "{err}");
    let line = rep["lineages"][0].clone();
    assert_eq!(line["status"], "not_due", "{rep}");
    assert!(line["next_ari_check"].is_string(), "{line}");
    let asked = a
        .requests()
        .iter()
        .filter(|r| r["path"].as_str().unwrap_or("").contains("renewal-info"))
        .count();
    assert_eq!(asked, 1, "{:?}", a.requests());
    // Before Retry-After: a pass with nothing due sends no request at all.
    let before = a.requests().len();
    let (code, rep, _) = renew_json(&d, &[]);
    assert_eq!(code, 0);
    assert_eq!(rep["lineages"][0]["status"], "not_due");
    assert_eq!(a.requests().len(), before, "requests sent: {:?}", &a.requests()[before..]);
    // certificates and --dry-run say why and when.
    let rows: Value = serde_json::from_str(&d.ok(&["--json", "certificates"])).unwrap();
    let row = rows.as_array().unwrap().iter().find(|r| r["host"] == h).unwrap().clone();
    assert!(
        row["due_by"].is_string()
            && row["next_ari_check"].is_string()
            && row["ari_window"].is_array(),
        "{row}"
    );
    let o = d.run(&["--json", "renew", "--dry-run"]);
    let rep: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert!(rep["lineages"][0]["due_by"].is_string(), "{rep}");
    assert_eq!(a.requests().len(), before, "a dry run sends nothing");
}

/// A scripted stand-in for a renewalInfo endpoint that is broken in one of
/// the ways no real server is on demand: the directory is acme2certifier's,
/// but `renewalInfo` points here, where every answer is a 500 or garbage.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Broken {
    Status500,
    Garbage,
    /// Accepts the connection and never answers (the client's timeout).
    Hangs,
    /// renewalInfo points at a port nothing listens on.
    Unreachable,
    /// A valid window whose explanationURL carries line breaks and a
    /// `[renewalparams]` section with a `pre_hook` (no real CA answers so).
    HostileExplanation,
    /// A problem document whose detail carries a line break and a forged log line.
    HostileProblem,
}

/// A hostile `explanationURL`: lines that would add a second
/// `[renewalparams]` with a `pre_hook` to the renewal conf.
const HOSTILE_URL: &str =
    "https://ca.example.test/why\n[renewalparams]\npre_hook = touch /tmp/site-admin-owned\r\n";

fn broken_ari(a: &A2c, how: Broken) -> (String, Arc<AtomicBool>) {
    let real: Value = reqwest::blocking::get(a.directory()).unwrap().json().unwrap();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://127.0.0.1:{}", l.local_addr().unwrap().port());
    let mut dir = real.clone();
    dir["renewalInfo"] = if how == Broken::Unreachable {
        format!("http://127.0.0.1:{}/ri", free_port())
    } else {
        format!("{base}/ri")
    }
    .into();
    l.set_nonblocking(true).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = stop.clone();
    std::thread::spawn(move || {
        let start = std::time::Instant::now();
        while !s2.load(Ordering::Relaxed) && start.elapsed() < Duration::from_secs(120) {
            let Ok((mut c, _)) = l.accept() else {
                std::thread::sleep(Duration::from_millis(2));
                continue;
            };
            c.set_nonblocking(false).ok();
            let mut buf = [0u8; 8192];
            let n = c.read(&mut buf).unwrap_or(0);
            let req = String::from_utf8_lossy(&buf[..n]).to_string();
            let (status, body) = if req.starts_with("GET /directory") {
                (200, dir.to_string())
            } else if how == Broken::Hangs {
                std::thread::sleep(Duration::from_secs(15));
                continue;
            } else if how == Broken::Garbage {
                (200, "{\"suggestedWindow\": \"soon\"".to_string())
            } else if how == Broken::HostileExplanation {
                let at = |days| {
                    (chrono::Utc::now() + chrono::Duration::days(days))
                        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                };
                (200, json!({"suggestedWindow": {"start": at(10), "end": at(11)}, "explanationURL": HOSTILE_URL}).to_string())
            } else if how == Broken::HostileProblem {
                (500, json!({"type": "urn:ietf:params:acme:error:serverInternal", "detail": "broken\nsite-admin: forged line\r\n"}).to_string())
            } else {
                (500, "{\"type\": \"urn:ietf:params:acme:error:serverInternal\", \"detail\": \"broken\"}".to_string())
            };
            let _ = c.write_all(
                format!("HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
                    .as_bytes(),
            );
        }
    });
    (format!("{base}/directory"), stop)
}

#[test]
fn a_broken_ari_leaves_the_decision_to_the_backstop_and_nothing_fails() {
    let t = tempfile::tempdir().unwrap();
    let a = A2c::start(&t.path().join("a2c"), A2cOptions::default());
    for how in [Broken::Status500, Broken::Garbage, Broken::Hangs, Broken::Unreachable] {
        let garbage = format!("{how:?}");
        let (dir, stop) = broken_ari(&a, how);
        let mut d = Device::new();
        d.env.push(("SITE_ADMIN_ACME_SERVER".into(), dir));
        d.apache.start();
        let (fresh, due) = ("fresh.example.test", "due.example.test");
        d.deploy(&site_json(&siteid(1), fresh, le(None)));
        d.deploy(&site_json(&siteid(2), due, le(None)));
        // The backstop says due for one of them.
        let conf = d.le().join(format!("renewal/{due}.conf"));
        let text = std::fs::read_to_string(&conf).unwrap();
        std::fs::write(&conf, format!("renew_before_expiry = 40 days\n{text}")).unwrap();
        let (code, rep, err) = renew_json(&d, &[]);
        assert_eq!(code, 0, "garbage={garbage}: {err}");
        assert_eq!(rep["renewed_domains"], json!([due]), "garbage={garbage}: {rep}");
        assert!(err.contains("renewal information could not be had"), "garbage={garbage}: {err}");
        let line = rep["lineages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["host"] == fresh)
            .unwrap()
            .clone();
        assert_eq!(
            (line["status"].as_str(), line["due_by"].as_str()),
            (Some("not_due"), Some("backstop")),
            "{line}"
        );
        stop.store(true, Ordering::Relaxed);
    }
}

#[test]
fn profiles_are_asked_for_kept_for_renewals_and_refused_or_dropped_when_the_ca_lacks_them() {
    let t = tempfile::tempdir().unwrap();
    let a = A2c::start(&t.path().join("a2c"), A2cOptions::default());
    let d = device(&a);
    let (short, classic) = ("short.example.test", "classic.example.test");
    d.deploy(&site_json(&siteid(1), short, le(Some(("shortlived", false)))));
    d.deploy(&site_json(&siteid(2), classic, le(None)));
    assert_eq!(lifetime_days(&d, short), 6);
    assert_eq!(lifetime_days(&d, classic), 30);
    let conf = std::fs::read_to_string(d.le().join(format!("renewal/{short}.conf"))).unwrap();
    assert!(conf.contains("preferred_profile = shortlived"), "{conf}");
    // The profile survives renewal.
    let (code, rep, err) = renew_json(&d, &["--force"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(rep["renewed_domains"].as_array().unwrap().len(), 2);
    assert_eq!(lifetime_days(&d, short), 6);
    assert!(
        a.orders().iter().filter(|o| o["profile"] == "shortlived").count() >= 2,
        "{:?}",
        a.orders()
    );
    // Required but not offered: pending, with that reason; exit 0 and a warning.
    let f = d.tmp.path().join("req.json");
    std::fs::write(
        &f,
        site_json(&siteid(3), "required.example.test", le(Some(("tlsserver", true)))),
    )
    .unwrap();
    let o = d.run(&["--json", "deploy", "--file", f.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let rep: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(rep["pending"], true);
    assert!(
        rep["pending_reason"]
            .as_str()
            .unwrap()
            .contains("does not offer the required profile \"tlsserver\""),
        "{rep}"
    );
    // Preferred but not offered: the CA's default, with a warning.
    let f = d.tmp.path().join("pref.json");
    std::fs::write(
        &f,
        site_json(&siteid(4), "preferred.example.test", le(Some(("tlsserver", false)))),
    )
    .unwrap();
    let o = d.run(&["--json", "deploy", "--file", f.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("does not offer the profile \"tlsserver\""), "{}", stderr(&o));
    assert_eq!(lifetime_days(&d, "preferred.example.test"), 30);
}

#[test]
fn certbot_still_lists_and_renews_a_lineage_with_ari_state_and_a_profile() {
    let t = tempfile::tempdir().unwrap();
    let a = A2c::start(&t.path().join("a2c"), A2cOptions::default());
    let d = device(&a);
    let h = "both.example.test";
    d.deploy(&site_json(&siteid(1), h, le(Some(("shortlived", false)))));
    renew_json(&d, &[]);
    let conf = std::fs::read_to_string(d.le().join(format!("renewal/{h}.conf"))).unwrap();
    assert!(
        conf.contains("[acme_renewal_info]")
            && conf.contains("ari_retry_after")
            && conf.contains("preferred_profile"),
        "{conf}"
    );
    let certbot =
        std::env::var_os("SITE_ADMIN_CERTBOT").map(std::path::PathBuf::from).unwrap_or_else(|| {
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/certbot")
        });
    let cb = |args: &[&str]| {
        let o = std::process::Command::new(&certbot)
            .args(args)
            .args([
                "--config-dir",
                d.le().to_str().unwrap(),
                "--work-dir",
                d.tmp.path().join("cbw").to_str().unwrap(),
                "--logs-dir",
                d.tmp.path().join("cbl").to_str().unwrap(),
            ])
            .output()
            .unwrap();
        (
            o.status.success(),
            format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)),
        )
    };
    let (ok, text) = cb(&["certificates"]);
    assert!(ok && text.contains(h) && !text.to_lowercase().contains("skipped"), "{text}");
    let old = d.live_serial(h).unwrap();
    let (ok, text) =
        cb(&["renew", "--force-renewal", "--no-random-sleep-on-renew", "--cert-name", h]);
    assert!(ok, "{text}");
    assert_ne!(d.live_serial(h).unwrap(), old);
    assert_eq!(lifetime_days(&d, h), 6, "certbot asked for the kept profile too");
}

#[test]
fn an_ip_address_site_gets_a_certificate_for_its_address() {
    let w = World::new();
    let (id, ip) = (siteid(1), "127.0.0.1");
    let rep = w.dev.deploy(&site_json(&id, ip, le(None)));
    assert_eq!(rep["pending"], false, "{rep}");
    let pem = std::fs::read(w.dev.le().join("live").join(ip).join("cert.pem")).unwrap();
    let info = site_admin::certs::parse_first_cert(&pem).unwrap();
    assert_eq!(
        info.names,
        vec![ip.to_string()],
        "the SAN is the address (our CSR has no CN; pebble adds one)"
    );
    w.dev.apache.wait_serial(ip, &w.dev.live_serial(ip).unwrap());
    w.dev.ok(&["doctor"]);
    // A private address with Let's Encrypt's server: refused, nothing changed.
    let d = Device::new();
    let before = snapshot(&d.root);
    let f = d.tmp.path().join("ip.json");
    std::fs::write(&f, site_json(&siteid(2), "10.1.2.3", le(None))).unwrap();
    let o = d.run(&["deploy", "--file", f.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("10.1.2.3 is not a globally reachable address"), "{}", stderr(&o));
    assert_eq!(snapshot(&d.root), before);
}

/// Stops a scripted server when dropped (also when the test fails).
struct Stop(Arc<AtomicBool>);

impl Drop for Stop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

#[test]
fn a_hostile_explanation_url_or_problem_detail_cannot_rewrite_the_renewal_conf_or_forge_a_log_line()
{
    let t = tempfile::tempdir().unwrap();
    let a = A2c::start(&t.path().join("a2c"), A2cOptions::default());
    for how in [Broken::HostileExplanation, Broken::HostileProblem] {
        let what = format!("{how:?}");
        // A scripted stand-in ARI server (a2c's ACME, a hostile renewalInfo): no real CA answers so.
        let (dir, stop) = broken_ari(&a, how);
        let _stop = Stop(stop);
        let mut d = Device::new();
        d.env.push(("SITE_ADMIN_ACME_SERVER".into(), dir));
        d.apache.start();
        let h = "hostile.example.test";
        d.deploy(&site_json(&siteid(1), h, le(None)));
        let (code, rep, err) = renew_json(&d, &[]);
        assert_eq!(code, 0, "{what}: {err}");
        assert_eq!(rep["renewed_domains"], json!([]), "{what}: {rep}");
        for l in err.lines() {
            assert!(
                !l.starts_with("site-admin: forged")
                    && !l.starts_with("[renewalparams]")
                    && !l.starts_with("pre_hook"),
                "{what}: a forged log line: {err}"
            );
        }
        let conf = std::fs::read_to_string(d.le().join(format!("renewal/{h}.conf"))).unwrap();
        assert_eq!(
            conf.lines().filter(|l| l.trim() == "[renewalparams]").count(),
            1,
            "{what}: {conf}"
        );
        assert!(!conf.lines().any(|l| l.trim_start().starts_with("pre_hook")), "{what}: {conf}");
        assert!(conf.contains("[acme_renewal_info]"), "{what}: the ARI state is kept: {conf}");
        match how {
            Broken::HostileExplanation => {
                assert!(err.contains("ignoring an explanationURL"), "{err}");
                assert!(!conf.contains("site_admin_explanation_url"), "{conf}");
            }
            _ => assert!(
                err.contains("broken\\nsite-admin: forged line"),
                "the detail is shown escaped: {err}"
            ),
        }
        // certbot still reads the conf, and doctor finds nothing to say.
        let o = std::process::Command::new(
            std::env::var("SITE_ADMIN_CERTBOT").unwrap_or_else(|_| ".venv/bin/certbot".into()),
        )
        .args(["certificates", "--config-dir", d.le().to_str().unwrap()])
        .args([
            "--work-dir",
            d.tmp.path().join("cbw").to_str().unwrap(),
            "--logs-dir",
            d.tmp.path().join("cbl").to_str().unwrap(),
        ])
        .output()
        .unwrap();
        let out =
            format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        assert!(
            o.status.success() && out.contains(h) && !out.contains("skipping"),
            "{what}: {out}"
        );
        d.ok(&["doctor"]);
        // A conf injected before this fix (a second [renewalparams]): doctor names it.
        std::fs::write(
            d.le().join(format!("renewal/{h}.conf")),
            format!("{conf}[renewalparams]\npre_hook = touch /tmp/site-admin-owned\n"),
        )
        .unwrap();
        let o = d.run(&["doctor"]);
        assert_eq!(o.status.code(), Some(1), "{what}: {}", stdout(&o));
        assert!(
            stdout(&o).contains("certbot cannot parse it")
                && stdout(&o).contains("duplicate section name [renewalparams]"),
            "{}",
            stdout(&o)
        );
    }
}

/// An IPv6 site deploys (Apache needs `ServerName [::1]`, not `::1`): on
/// http, then with a certificate pebble issues for the address (it validates
/// on [::1], where the test Apache listens too), served over https on [::1]
/// to a client that sends no server name, as clients of an address do.
#[test]
fn an_ipv6_site_is_served_over_https_with_its_address() {
    let w = World::with_ipv6();
    let (id, ip) = (siteid(1), "::1");
    let rep = w.dev.deploy(&site_json(&id, ip, None));
    assert_eq!(rep["serving"], "http", "{rep}");
    let c = reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = c.get(format!("http://[::1]:{}/", w.dev.apache.http_port)).send().unwrap();
    assert_ne!(r.status().as_u16(), 400, "the http vhost answers for [::1]");
    let rep = w.dev.deploy(&site_json(&id, ip, le(None)));
    assert_eq!(rep["pending"], false, "{rep}");
    let pem = std::fs::read(w.dev.le().join("live").join(ip).join("cert.pem")).unwrap();
    let info = site_admin::certs::parse_first_cert(&pem).unwrap();
    assert_eq!(info.names.len(), 1, "{:?}", info.names);
    assert!(
        info.covers("::1") && info.covers("0:0:0:0:0:0:0:1"),
        "the SAN is the address: {:?}",
        info.names
    );
    let live = w.dev.live_serial(ip).unwrap();
    let start = std::time::Instant::now();
    while apache::served_serial("::1", w.dev.apache.https_port, "::1").as_deref()
        != Some(live.as_str())
    {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "https on [::1] serves {:?}, not {live}",
            apache::served_serial("::1", w.dev.apache.https_port, "::1")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // http redirects to https on the bracketed address.
    let r = c.get(format!("http://[::1]:{}/x", w.dev.apache.http_port)).send().unwrap();
    let loc =
        r.headers().get("location").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    assert_eq!(loc, format!("https://[::1]:{}/x", w.dev.apache.https_port));
    w.dev.ok(&["doctor"]);
}

/// An IP site's clients send no server name, so Apache hands them the
/// default (first) TLS vhost of the port: the IP site must be it even when
/// a DNS site's vhost file sorts before its own — and the DNS site is still
/// served its own certificate by name.
#[test]
fn an_ip_site_is_the_default_tls_vhost_beside_a_dns_site() {
    let w = World::new();
    let (dns_id, ip_id, h, ip) = (siteid(1), siteid(2), "dns.example.test", "127.0.0.1");
    assert!(dns_id < ip_id, "the DNS site's vhost file sorts first");
    w.dev.deploy(&site_json(&dns_id, h, le(None)));
    let rep = w.dev.deploy(&site_json(&ip_id, ip, le(None)));
    assert_eq!(rep["pending"], false, "{rep}");
    let (dns_live, ip_live) = (w.dev.live_serial(h).unwrap(), w.dev.live_serial(ip).unwrap());
    w.dev.apache.wait_serial(ip, &ip_live); // no SNI: the default vhost
    w.dev.apache.wait_serial(h, &dns_live);
    w.dev.ok(&["doctor"]);
    // A device whose IP site was deployed before the default file existed:
    // doctor finds it, and --repair brings it back.
    let default = w.dev.root.join("etc/httpd/sites/00-site-admin-ip-default.conf");
    std::fs::remove_file(&default).unwrap();
    let o = w.dev.run(&["doctor"]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(stdout(&o).contains("default TLS virtual host"), "{}", stdout(&o));
    w.dev.ok(&["doctor", "--repair"]);
    assert!(default.exists());
    w.dev.ok(&["doctor"]);
    // A second IP site over https cannot be served: refused, nothing changed.
    let before = snapshot(&w.dev.root);
    let f = w.dev.tmp.path().join("ip6.json");
    std::fs::write(&f, site_json(&siteid(3), "::1", le(None))).unwrap();
    let o = w.dev.run(&["deploy", "--file", f.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains(&ip_id) && stderr(&o).contains("default"), "{}", stderr(&o));
    assert_eq!(snapshot(&w.dev.root), before);
    // Once the IP site is undeployed, the DNS site is the default again.
    w.dev.ok(&["undeploy", "--siteid", &ip_id]);
    w.dev.apache.wait_serial(ip, &dns_live);
    w.dev.apache.wait_serial(h, &dns_live);
    w.dev.ok(&["doctor"]);
}
