//! The Apache writer on a real apache2 — per-host certificates by
//! SNI, redirects except the challenge path, http-only sites, the configtest
//! transaction with rollback, and HTTP-01 answered through the vhost.
use crate::common::*;
use serde_json::json;

fn okc(host: &str, days: i64) -> (serde_json::Value, String) {
    let (k, c) = self_signed(&[host], days);
    let serial = pem_serial(c.as_bytes()).unwrap();
    (json!({"key": k, "crt": c}), serial)
}

#[test]
fn each_host_gets_its_own_certificate_and_http_redirects_except_the_challenge() {
    let w = World::new();
    let d = &w.dev;
    let (tls_a, serial_a) = okc("a.example.test", 30);
    let (tls_b, serial_b) = okc("b.example.test", 30);
    d.deploy(&site_json(&siteid(1), "a.example.test", Some(tls_a)));
    d.deploy(&site_json(&siteid(2), "b.example.test", Some(tls_b)));
    d.deploy(&site_json(&siteid(3), "le.example.test", Some(json!({"letsencrypt": true}))));
    d.deploy(&site_json(&siteid(4), "plain.example.test", None));
    let serial_le = d.live_serial("le.example.test").unwrap();
    d.apache.wait_serial("a.example.test", &serial_a);
    d.apache.wait_serial("b.example.test", &serial_b);
    d.apache.wait_serial("le.example.test", &serial_le);
    assert_ne!(serial_a, serial_b);

    // TLS sites: everything redirects to https, except the challenge path.
    let (st, loc, _) = d.apache.http_get("a.example.test", "/some/page?x=1");
    assert_eq!(st, 301);
    assert_eq!(
        loc.unwrap(),
        format!("https://a.example.test:{}/some/page?x=1", d.apache.https_port)
    );
    let chall =
        d.root.join("srv/http/wellknown").join(siteid(1)).join(".well-known/acme-challenge");
    std::fs::create_dir_all(&chall).unwrap();
    std::fs::write(chall.join("tok123"), "tok123.thumb").unwrap();
    let (st, loc, body) = d.apache.http_get("a.example.test", "/.well-known/acme-challenge/tok123");
    assert_eq!((st, loc, body.as_str()), (200, None, "tok123.thumb"));

    // The http-only site: no redirect, and no TLS virtual host of its own.
    let (st, _, _) = d.apache.http_get("plain.example.test", "/");
    assert_ne!(st, 301);
    let conf =
        std::fs::read_to_string(d.root.join("etc/httpd/sites").join(format!("{}.conf", siteid(4))))
            .unwrap();
    assert!(!conf.contains("SSLEngine"), "{conf}");
    assert!(!conf.contains(&format!(":{}>", d.apache.https_port)));
    // The LE vhost points at live/, the OKC vhost at the ssl dir.
    let conf =
        std::fs::read_to_string(d.root.join("etc/httpd/sites").join(format!("{}.conf", siteid(3))))
            .unwrap();
    assert!(conf.contains("etc/letsencrypt/live/le.example.test/fullchain.pem"), "{conf}");
    let conf =
        std::fs::read_to_string(d.root.join("etc/httpd/sites").join(format!("{}.conf", siteid(1))))
            .unwrap();
    assert!(conf.contains(&format!("etc/httpd/ssl/{}.crt", siteid(1))), "{conf}");
}

#[test]
fn okc_with_cacrt_is_written_and_referenced() {
    let w = World::new();
    let d = &w.dev;
    let (k, c) = self_signed(&["ca.example.test"], 30);
    let (_, ca) = self_signed(&["Test CA"], 300);
    d.deploy(&site_json(
        &siteid(7),
        "ca.example.test",
        Some(json!({"key": k, "crt": c, "cacrt": ca})),
    ));
    let ssl = d.root.join("etc/httpd/ssl");
    assert_eq!(std::fs::read_to_string(ssl.join(format!("{}.cacrt", siteid(7)))).unwrap(), ca);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(ssl.join(format!("{}.key", siteid(7)))).unwrap().permissions().mode()
            & 0o777,
        0o600
    );
    let conf =
        std::fs::read_to_string(d.root.join("etc/httpd/sites").join(format!("{}.conf", siteid(7))))
            .unwrap();
    assert!(conf.contains("SSLCACertificateFile"), "{conf}");
    d.apache.wait_serial("ca.example.test", &pem_serial(c.as_bytes()).unwrap());
}

#[test]
fn a_failing_configtest_puts_every_file_back_and_apache_keeps_serving() {
    let w = World::new();
    let d = &w.dev;
    let id = siteid(5);
    let (tls1, serial1) = okc("t.example.test", 30);
    d.deploy(&site_json(&id, "t.example.test", Some(tls1)));
    d.apache.wait_serial("t.example.test", &serial1);
    // Another, broken file in the sites dir makes Apache's configtest fail.
    let broken = d.root.join("etc/httpd/sites/zz-broken.conf");
    std::fs::write(&broken, "ThisIsNotADirective on\n").unwrap();
    let before = snapshot(&d.root.join("etc/httpd"));
    let (tls2, _) = okc("t.example.test", 60);
    let f = d.tmp.path().join("t2.json");
    std::fs::write(&f, site_json(&id, "t.example.test", Some(tls2))).unwrap();
    let o = d.run(&["deploy", "--file", f.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    // The message blames the broken file, not this deploy.
    assert!(
        err.contains("fails its test even without this change")
            && err.contains("ThisIsNotADirective"),
        "{err}"
    );
    assert_eq!(
        snapshot(&d.root.join("etc/httpd")),
        before,
        "vhost and OKC files must be byte-identical"
    );
    assert_eq!(d.apache.served_serial("t.example.test").unwrap(), serial1);
    assert!(d.apache.is_running());
    // The journal is gone: nothing left to roll back.
    let journal = d.root.join("var/lib/site-admin/journal/apache");
    assert_eq!(std::fs::read_dir(&journal).map(|r| r.count()).unwrap_or(0), 0);
    std::fs::remove_file(&broken).unwrap();
}

#[test]
fn a_crash_before_configtest_is_rolled_back_by_the_next_run() {
    let w = World::new();
    let d = &w.dev;
    let id = siteid(6);
    let (tls1, serial1) = okc("c.example.test", 30);
    d.deploy(&site_json(&id, "c.example.test", Some(tls1)));
    let before = snapshot(&d.root.join("etc/httpd"));
    let (tls2, _) = okc("c.example.test", 60);
    let f = d.tmp.path().join("c2.json");
    std::fs::write(&f, site_json(&id, "c.example.test", Some(tls2))).unwrap();
    let mut dev_env = d.env.clone();
    dev_env.push(("SITE_ADMIN_FAULT".into(), "apache.before_configtest".into()));
    let env: Vec<(&str, &str)> = dev_env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let o = run(&["deploy", "--file", f.to_str().unwrap()], &env, None);
    assert!(!o.status.success());
    assert_ne!(snapshot(&d.root.join("etc/httpd")), before, "the crash happened after writing");
    d.ok(&["doctor", "--repair"]);
    assert_eq!(snapshot(&d.root.join("etc/httpd")), before, "the next run rolled back");
    assert_eq!(d.apache.served_serial("c.example.test").unwrap(), serial1);
}

#[test]
fn undeploy_removes_the_vhost_and_reloads() {
    let w = World::new();
    let d = &w.dev;
    let id = siteid(8);
    let (tls, serial) = okc("u.example.test", 30);
    d.deploy(&site_json(&id, "u.example.test", Some(tls)));
    d.apache.wait_serial("u.example.test", &serial);
    d.ok(&["undeploy", "--siteid", &id]);
    assert!(!d.root.join("etc/httpd/sites").join(format!("{id}.conf")).exists());
    assert!(!d.root.join("etc/httpd/ssl").join(format!("{id}.key")).exists());
    let start = std::time::Instant::now();
    while d.apache.served_serial("u.example.test").as_deref() == Some(serial.as_str()) {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(15),
            "still served after undeploy"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn pebble_validates_through_the_vhost_and_the_certificate_is_served() {
    let w = World::new();
    let id = siteid(9);
    let host = "blog.example.test";
    let rep = w.dev.deploy(&site_json(&id, host, Some(json!({"letsencrypt": true}))));
    assert_eq!(rep["serving"], "letsencrypt", "{rep}");
    assert_eq!(rep["pending"], false);
    let serial = w.dev.live_serial(host).expect("a live lineage");
    w.dev.apache.wait_serial(host, &serial);
    // The challenge file is gone after validation.
    let chall = w.dev.root.join("srv/http/wellknown").join(&id).join(".well-known/acme-challenge");
    assert_eq!(std::fs::read_dir(&chall).map(|r| r.count()).unwrap_or(0), 0);
}
