//! Faults found by trying to break site-admin, as an administrator and as a
//! hostile local user would: each test reproduces one on a real pebble +
//! Apache world and shows it handled (docs/design.md names the rules).
use crate::common::*;
use serde_json::{json, Value};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

fn le() -> Option<Value> {
    Some(json!({"letsencrypt": true}))
}

fn write_site(d: &Device, name: &str, json: &str) -> String {
    let f = d.tmp.path().join(name);
    std::fs::write(&f, json).unwrap();
    f.display().to_string()
}

/// A key + self-signed certificate made with OpenSSL: `bits` RSA, signed with `md`.
fn rsa_self_signed(
    host: &str,
    bits: u32,
    md: openssl::hash::MessageDigest,
) -> (openssl::pkey::PKey<openssl::pkey::Private>, openssl::x509::X509) {
    use openssl::x509::{X509NameBuilder, X509};
    let key = openssl::pkey::PKey::from_rsa(openssl::rsa::Rsa::generate(bits).unwrap()).unwrap();
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", host).unwrap();
    let name = name.build();
    let mut b = X509::builder().unwrap();
    b.set_version(2).unwrap();
    b.set_subject_name(&name).unwrap();
    b.set_issuer_name(&name).unwrap();
    b.set_pubkey(&key).unwrap();
    b.set_not_before(&openssl::asn1::Asn1Time::days_from_now(0).unwrap()).unwrap();
    b.set_not_after(&openssl::asn1::Asn1Time::days_from_now(30).unwrap()).unwrap();
    let san = openssl::x509::extension::SubjectAlternativeName::new()
        .dns(host)
        .build(&b.x509v3_context(None, None))
        .unwrap();
    b.append_extension(san).unwrap();
    b.sign(&key, md).unwrap();
    (key, b.build())
}

/// A leaf for `host` (RSA 2048, SHA-256) under an intermediate CA that its
/// root signed with SHA-1: (key, leaf, intermediate).
fn sha1_chain(host: &str) -> (String, String, String) {
    use openssl::hash::MessageDigest;
    use openssl::x509::extension::{BasicConstraints, SubjectAlternativeName};
    use openssl::x509::{X509NameBuilder, X509};
    let mk = |cn: &str| {
        let mut n = X509NameBuilder::new().unwrap();
        n.append_entry_by_text("CN", cn).unwrap();
        n.build()
    };
    let key = || openssl::pkey::PKey::from_rsa(openssl::rsa::Rsa::generate(2048).unwrap()).unwrap();
    let (rk, ik, lk) = (key(), key(), key());
    let cert = |subject: &str,
                issuer: &str,
                pubkey: &openssl::pkey::PKey<openssl::pkey::Private>,
                signer: &openssl::pkey::PKey<openssl::pkey::Private>,
                ca: bool,
                md: MessageDigest| {
        let mut b = X509::builder().unwrap();
        b.set_version(2).unwrap();
        b.set_subject_name(&mk(subject)).unwrap();
        b.set_issuer_name(&mk(issuer)).unwrap();
        b.set_pubkey(pubkey).unwrap();
        b.set_not_before(&openssl::asn1::Asn1Time::days_from_now(0).unwrap()).unwrap();
        b.set_not_after(&openssl::asn1::Asn1Time::days_from_now(30).unwrap()).unwrap();
        if ca {
            b.append_extension(BasicConstraints::new().critical().ca().build().unwrap()).unwrap();
        } else {
            let san = SubjectAlternativeName::new()
                .dns(host)
                .build(&b.x509v3_context(None, None))
                .unwrap();
            b.append_extension(san).unwrap();
        }
        b.sign(signer, md).unwrap();
        b.build()
    };
    let inter = cert("weak intermediate", "test root", &ik, &rk, true, MessageDigest::sha1());
    let leaf = cert(host, "weak intermediate", &lk, &ik, false, MessageDigest::sha256());
    let pem = |c: &X509| String::from_utf8(c.to_pem().unwrap()).unwrap();
    (String::from_utf8(lk.private_key_to_pem_pkcs8().unwrap()).unwrap(), pem(&leaf), pem(&inter))
}

#[test]
fn own_certificates_openssl_refuses_are_exit_2_nothing_changes_and_apache_keeps_serving_the_others()
{
    let w = World::new();
    let d = &w.dev;
    let (good_k, good_c) = self_signed(&["good.example.test"], 30);
    d.deploy(&site_json(
        &siteid(1),
        "good.example.test",
        Some(json!({"key": good_k, "crt": good_c})),
    ));
    let good_serial = pem_serial(good_c.as_bytes()).unwrap();
    d.apache.wait_serial("good.example.test", &good_serial);

    let h = "weak.example.test";
    let (k1024, c1024) = rsa_self_signed(h, 1024, openssl::hash::MessageDigest::sha256());
    let pem = |b: Vec<u8>| String::from_utf8(b).unwrap();
    let (sk, sleaf, sinter) = sha1_chain(h);
    let encrypted = pem(k1024
        .private_key_to_pem_pkcs8_passphrase(openssl::symm::Cipher::aes_256_cbc(), b"secret")
        .unwrap());
    let (ek, ec) = rsa_self_signed(h, 2048, openssl::hash::MessageDigest::sha256());
    let enc2048 = pem(ek
        .private_key_to_pem_pkcs8_passphrase(openssl::symm::Cipher::aes_256_cbc(), b"secret")
        .unwrap());
    let cases = [
        (
            "RSA-1024 key",
            json!({"key": pem(k1024.private_key_to_pem_pkcs8().unwrap()), "crt": pem(c1024.to_pem().unwrap())}),
            "key too small",
        ),
        (
            "SHA-1 signed chain in crt",
            json!({"key": sk, "crt": format!("{sleaf}{sinter}")}),
            "md too weak",
        ),
        (
            "SHA-1 signed CA in cacrt",
            json!({"key": sk, "crt": sleaf, "cacrt": sinter}),
            "md too weak",
        ),
        (
            "encrypted key",
            json!({"key": encrypted, "crt": pem(c1024.to_pem().unwrap())}),
            "encrypted",
        ),
        (
            "encrypted strong key",
            json!({"key": enc2048, "crt": pem(ec.to_pem().unwrap())}),
            "encrypted",
        ),
    ];
    for (i, (what, tls, msg)) in cases.into_iter().enumerate() {
        let before = snapshot(&d.root);
        let f = write_site(d, &format!("weak{i}.json"), &site_json(&siteid(2), h, Some(tls)));
        // No terminal, no stdin: a passphrase prompt would hang or fail oddly.
        let start = Instant::now();
        let o = d.run(&["deploy", "--file", &f]);
        assert!(start.elapsed() < Duration::from_secs(20), "{what}: took {:?}", start.elapsed());
        assert_eq!(o.status.code(), Some(2), "{what}: {}", stderr(&o));
        assert!(stderr(&o).contains(msg), "{what}: expected {msg:?} in {}", stderr(&o));
        assert!(
            !stderr(&o).to_lowercase().contains("pass phrase:"),
            "{what}: prompted: {}",
            stderr(&o)
        );
        assert_eq!(snapshot(&d.root), before, "{what}: the tree changed");
        assert!(d.apache.is_running(), "{what}: Apache died\n{}", d.apache.error_log());
        assert_eq!(
            d.apache.served_serial("good.example.test").as_deref(),
            Some(good_serial.as_str()),
            "{what}"
        );
    }
}

#[test]
fn a_reload_that_kills_apache_is_rolled_back_and_apache_started_again() {
    // A scripted stand-in for a reload that fails at load time (what mod_ssl
    // does with a key it refuses after configtest passed): the reload
    // command stops Apache. No real key can get this far any more.
    let w = World::new();
    let d = &w.dev;
    let (k, c) = self_signed(&["one.example.test"], 30);
    d.deploy(&site_json(&siteid(1), "one.example.test", Some(json!({"key": k, "crt": c}))));
    let serial = pem_serial(c.as_bytes()).unwrap();
    d.apache.wait_serial("one.example.test", &serial);
    let mut cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(&d.config).unwrap()).unwrap();
    let pid = d.apache.dir.join("httpd.pid");
    cfg["apache"]["reload"] =
        json!(["sh", "-c", format!("kill -TERM $(cat {}); sleep 0.5", pid.display())]);
    std::fs::write(&d.config, cfg.to_string()).unwrap();
    let vhosts = snapshot(&d.root.join("etc/httpd"));
    let f = write_site(d, "two.json", &site_json(&siteid(2), "two.example.test", None));
    let o = d.run(&["deploy", "--file", &f]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("previous configuration was put back")
            && stderr(&o).contains("serves it again"),
        "{}",
        stderr(&o)
    );
    assert_eq!(snapshot(&d.root.join("etc/httpd")), vhosts, "the previous configuration is back");
    assert!(d.stored_site(&siteid(2)).is_none(), "the failed deploy is not recorded");
    d.apache.wait_serial("one.example.test", &serial);
}

#[test]
fn a_site_that_fell_back_to_http_while_its_lineage_was_expired_is_back_on_https_after_renew() {
    let w = World::with(PebbleOptions { validity_secs: Some(5), ..Default::default() });
    let d = &w.dev;
    let (id, h) = (siteid(1), "stuck.example.test");
    d.deploy(&site_json(&id, h, le()));
    let first = d.live_serial(h).unwrap();
    d.apache.wait_serial(h, &first);
    // The device was off: the certificate expired. Redeployed while the CA
    // cannot be reached, the site falls back to http.
    std::thread::sleep(Duration::from_secs(6));
    let f = write_site(d, "again.json", &site_json(&id, h, le()));
    let o = d.run(&["--acme-server", "https://127.0.0.1:1/dir", "--json", "deploy", "--file", &f]);
    assert!(o.status.success(), "{}", stderr(&o));
    let vhost =
        std::fs::read_to_string(d.root.join("etc/httpd/sites").join(format!("{id}.conf"))).unwrap();
    assert!(!vhost.contains("SSLEngine"), "fell back to http:\n{vhost}");
    // The CA is back: renew renews the lineage and switches the vhost back
    // (--force: the failed attempt has it backing off for a minute).
    let o = d.run(&["--json", "renew", "--force"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let renewed = d.live_serial(h).unwrap();
    assert_ne!(renewed, first);
    d.apache.wait_serial(h, &renewed);
    d.ok(&["doctor"]);
}

#[test]
fn no_other_user_can_take_or_redirect_the_lock() {
    let d = Device::new();
    let f = write_site(&d, "h.json", &site_json(&siteid(1), "h.example.test", None));
    let o = d.run(&["--lock-timeout", "1", "deploy", "--file", &f]);
    assert!(o.status.success(), "{}", stderr(&o));
    let lock = d.root.join("run/site-admin/site-admin.lock");
    let md = std::fs::metadata(&lock).unwrap();
    assert_eq!(md.permissions().mode() & 0o777, 0o600, "the lock file is private");
    assert_eq!(
        std::fs::metadata(lock.parent().unwrap()).unwrap().permissions().mode() & 0o022,
        0,
        "its directory is not writable by others"
    );
    if rustix::process::geteuid().is_root() {
        // `nobody` cannot even open it, so it cannot flock it.
        let o = Command::new("flock")
            .args(["-n", lock.to_str().unwrap(), "true"])
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap();
        assert!(
            !o.status.success(),
            "nobody took the lock: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    // A symlink planted at the lock path is refused, and its target untouched.
    let secret = d.tmp.path().join("root-only-file");
    std::fs::write(&secret, "precious\n").unwrap();
    std::fs::remove_file(&lock).unwrap();
    std::os::unix::fs::symlink(&secret, &lock).unwrap();
    let o = d.run(&["--lock-timeout", "1", "renew"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("symlink"), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(&secret).unwrap(), "precious\n");
    // A lock in a world-writable directory (like /run/lock) is refused.
    std::fs::remove_file(&lock).unwrap();
    let open = d.root.join("run/lock");
    std::fs::create_dir_all(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).unwrap();
    std::fs::write(&d.config, json!({"lock_file": "run/lock/site-admin.lock"}).to_string())
        .unwrap();
    let o = d.run(&["--lock-timeout", "1", "renew"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("can be written by other users"), "{}", stderr(&o));
}

#[test]
fn a_carried_certificate_not_valid_yet_or_self_signed_loses_to_the_live_one() {
    let w = World::new();
    let d = &w.dev;
    let (id, h) = (siteid(1), "carried.example.test");
    d.deploy(&site_json(&id, h, le()));
    let live = d.live_serial(h).unwrap();
    // pebble's certificates last five years; each carried one lasts longer.
    // Trusted issuer, later notAfter, but valid only from tomorrow.
    let (k, c) = d.issuer.issue(&[h], 1.0, 2500.0);
    let rep = d.deploy(&site_json(&id, h, Some(json!({"letsencrypt": true, "key": k, "crt": c}))));
    assert_eq!(d.live_serial(h).unwrap(), live, "{rep}");
    assert!(rep["warnings"].to_string().contains("not valid until"), "{rep}");
    // Self-signed, later notAfter.
    let (k, c) = self_signed(&[h], 2500);
    let rep = d.deploy(&site_json(&id, h, Some(json!({"letsencrypt": true, "key": k, "crt": c}))));
    assert_eq!(d.live_serial(h).unwrap(), live, "{rep}");
    assert!(rep["warnings"].to_string().contains("self-signed"), "{rep}");
    // From a CA the device does not trust (a staging CA, say).
    let staging = TestIssuer::new("(STAGING) Pretend Pear X1");
    let (k, c) = staging.issue(&[h], -1.0, 2500.0);
    let rep = d.deploy(&site_json(&id, h, Some(json!({"letsencrypt": true, "key": k, "crt": c}))));
    assert_eq!(d.live_serial(h).unwrap(), live, "{rep}");
    assert!(rep["warnings"].to_string().contains("not a CA this device trusts"), "{rep}");
    // A trusted, valid, newer one wins.
    let (k, c) = d.lkc(&[h], 2500);
    let rep = d.deploy(&site_json(
        &id,
        h,
        Some(json!({"letsencrypt": true, "key": k, "crt": c.clone()})),
    ));
    assert_eq!(d.live_serial(h).unwrap(), pem_serial(c.as_bytes()).unwrap(), "{rep}");
    d.apache.wait_serial(h, &pem_serial(c.as_bytes()).unwrap());
}

#[test]
fn another_acme_server_on_the_command_line_or_in_the_config_moves_renewals_to_it() {
    let mut w = World::new();
    let h = "moving.example.test";
    w.dev.deploy(&site_json(&siteid(1), h, le()));
    let b = Pebble::start(
        &w.dev.tmp.path().join("pebble-b"),
        w.dev.apache.http_port,
        PebbleOptions::default(),
    );
    let mut t = std::fs::read_to_string(&w.dev.trusted).unwrap();
    t.push_str(&std::fs::read_to_string(&b.ca.ca_pem).unwrap());
    std::fs::write(&w.dev.trusted, t).unwrap();
    let (a_before, b_before) = (w.pebble.issued_count(), b.issued_count());
    let o = w.dev.run(&["--acme-server", &b.directory(), "renew", "--force"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&w.pebble.directory()) && stderr(&o).contains(&b.directory()),
        "the warning names both: {}",
        stderr(&o)
    );
    assert_eq!((w.pebble.issued_count(), b.issued_count()), (a_before, b_before + 1));
    let conf = std::fs::read_to_string(w.dev.le().join(format!("renewal/{h}.conf"))).unwrap();
    assert!(conf.contains(&format!("server = {}", b.directory())), "{conf}");
    // The config names A again (no --acme-server): the next renewal goes to A.
    w.dev.env.retain(|(k, _)| k != "SITE_ADMIN_ACME_SERVER");
    let mut cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(&w.dev.config).unwrap()).unwrap();
    cfg["acme_server"] = w.pebble.directory().into();
    std::fs::write(&w.dev.config, cfg.to_string()).unwrap();
    let o = w.dev.run(&["renew", "--force"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!((w.pebble.issued_count(), b.issued_count()), (a_before + 1, b_before + 1));
    let served = w.dev.live_serial(h).unwrap();
    w.dev.apache.wait_serial(h, &served);
}

#[test]
fn a_clock_far_ahead_deletes_no_stashed_certificate() {
    require("faketime");
    let w = World::with(PebbleOptions { validity_secs: Some(3600), ..Default::default() });
    let d = &w.dev;
    let (id, h) = (siteid(1), "kept.example.test");
    d.deploy(&site_json(&id, h, le()));
    d.ok(&["undeploy", "--siteid", &id]);
    let stashed = d.stash_serial(h).unwrap();
    let env: Vec<(&str, &str)> = d.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut c = Command::new("faketime");
    c.args(["-f", "+400d", bin().to_str().unwrap(), "renew"]).envs(env.iter().copied());
    let o = c.output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("cannot be right"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(d.stash_serial(h).as_deref(), Some(stashed.as_str()), "the stash is kept");
    // Ninety minutes ahead is plausible (within a day past the last
    // notAfter): the expired stash goes.
    let mut c = Command::new("faketime");
    c.args(["-f", "+90m", bin().to_str().unwrap(), "renew"]).envs(env.iter().copied());
    let o = c.output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(d.stash_serial(h), None);
}

#[test]
fn backup_out_refuses_devices_and_links_to_them_and_dash_is_stdout() {
    let d = Device::new();
    let f = write_site(&d, "b.json", &site_json(&siteid(1), "b.example.test", None));
    d.ok(&["deploy", "--file", &f]);
    let link = d.tmp.path().join("to-null");
    std::os::unix::fs::symlink("/dev/null", &link).unwrap();
    for out in [link.to_str().unwrap(), "/dev/null", d.tmp.path().to_str().unwrap()] {
        let o = d.run(&["backup", "--all", "--out", out]);
        assert_eq!(o.status.code(), Some(2), "{out}: {}", stderr(&o));
        assert!(stderr(&o).contains("--out"), "{}", stderr(&o));
    }
    assert_eq!(
        std::fs::read_link(&link).unwrap(),
        std::path::Path::new("/dev/null"),
        "the link is left alone"
    );
    assert!(std::os::unix::fs::FileTypeExt::is_char_device(
        &std::fs::metadata("/dev/null").unwrap().file_type()
    ));
    let o = d.run(&["backup", "--all", "--out", "-"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["sites"][0]["siteid"], siteid(1));
    // A symlink to an existing regular file is written through (the link stays).
    let real = d.tmp.path().join("real.json");
    std::fs::write(&real, "old").unwrap();
    let via = d.tmp.path().join("via.json");
    std::os::unix::fs::symlink(&real, &via).unwrap();
    d.ok(&["backup", "--all", "--out", via.to_str().unwrap()]);
    assert!(std::fs::symlink_metadata(&via).unwrap().file_type().is_symlink());
    assert!(std::fs::read_to_string(&real).unwrap().contains(&siteid(1)));
    assert_eq!(std::fs::metadata(&real).unwrap().permissions().mode() & 0o777, 0o600);
}

#[test]
fn backup_out_in_a_shared_directory_follows_no_link_another_user_planted() {
    // /tmp as seen with fs.protected_symlinks=0: a sticky world-writable
    // directory where uid 65534 planted `b.json` -> a root-only file.
    let d = Device::new();
    let f = write_site(&d, "b.json", &site_json(&siteid(1), "b.example.test", None));
    d.ok(&["deploy", "--file", &f]);
    let shared = d.tmp.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let victim = d.tmp.path().join("root-only.conf");
    std::fs::write(&victim, "precious\n").unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
    let planted = shared.join("b.json");
    std::os::unix::fs::symlink(&victim, &planted).unwrap();
    std::os::unix::fs::lchown(&planted, Some(65534), Some(65534)).unwrap();
    // A planted link to a directory, used as a path component, is no better.
    let via_dir = shared.join("dir");
    std::os::unix::fs::symlink(d.tmp.path(), &via_dir).unwrap();
    std::os::unix::fs::lchown(&via_dir, Some(65534), Some(65534)).unwrap();
    for out in [planted.clone(), via_dir.join("root-only.conf"), via_dir.join("new.json")] {
        let o = d.run(&["backup", "--all", "--out", out.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(2), "{}: {}", out.display(), stderr(&o));
        assert!(
            stderr(&o).contains("owned by uid 65534") && stderr(&o).contains("not followed"),
            "{}",
            stderr(&o)
        );
    }
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
    assert!(!d.tmp.path().join("new.json").exists());
    assert!(
        std::fs::symlink_metadata(&planted).unwrap().file_type().is_symlink(),
        "the planted link is left alone"
    );
    let strays: Vec<_> = std::fs::read_dir(&shared)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().starts_with(".site-admin-tmp"))
        .collect();
    assert!(strays.is_empty(), "{strays:?}");
    // The caller's own link there is followed, as the kernel's rule allows.
    let mine = shared.join("mine.json");
    let real = d.tmp.path().join("real.json");
    std::fs::write(&real, "old").unwrap();
    std::os::unix::fs::symlink(&real, &mine).unwrap();
    d.ok(&["backup", "--all", "--out", mine.to_str().unwrap()]);
    assert!(std::fs::read_to_string(&real).unwrap().contains(&siteid(1)));
    // And a plain new file in the shared directory is written, 0600.
    let plain = shared.join("plain.json");
    d.ok(&["backup", "--all", "--out", plain.to_str().unwrap()]);
    assert_eq!(std::fs::symlink_metadata(&plain).unwrap().permissions().mode() & 0o777, 0o600);
}

#[test]
fn a_hostname_longer_than_the_store_holds_is_refused_and_the_longest_one_is_stored() {
    let w = World::new();
    let d = &w.dev;
    let label = |n: usize| "a".repeat(n);
    // 63+1+63+1+63+1+59 = 251 characters.
    let long = format!("{}.{}.{}.{}", label(63), label(63), label(63), label(59));
    assert_eq!(long.len(), 251);
    let before = snapshot(&d.root);
    let f = write_site(d, "long.json", &site_json(&siteid(1), &long, le()));
    let o = d.run(&["deploy", "--file", &f]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("hostname") && stderr(&o).contains("250"), "{}", stderr(&o));
    assert_eq!(snapshot(&d.root), before);
    // 250 characters: stored in certbot's layout (an LKC the device trusts).
    let ok = format!("{}.{}.{}.{}", label(63), label(63), label(63), label(58));
    let (k, c) = d.lkc(&[&ok], 30);
    d.deploy(&site_json(&siteid(1), &ok, Some(json!({"letsencrypt": true, "key": k, "crt": c}))));
    assert!(d.le().join("renewal").join(format!("{ok}.conf")).is_file());
    assert_eq!(std::fs::read_dir(d.le().join("archive").join(&ok)).unwrap().count(), 4);
    d.ok(&["doctor"]);
}

#[test]
fn huge_or_endless_input_is_refused_quickly_within_bounded_memory() {
    require("time");
    let d = Device::new();
    let env: Vec<(&str, &str)> = d.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    // --file /dev/zero: a device, refused at once.
    let start = Instant::now();
    let o = Command::new("/usr/bin/time")
        .args(["-f", "%M", bin().to_str().unwrap(), "deploy", "--file", "/dev/zero"])
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(start.elapsed() < Duration::from_secs(10));
    assert_eq!(o.status.code(), Some(2), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("character device"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // --stdin fed from /dev/zero: stops at the limit.
    let start = Instant::now();
    let zero = std::fs::File::open("/dev/zero").unwrap();
    let o = Command::new("/usr/bin/time")
        .args(["-f", "%M", bin().to_str().unwrap(), "deploy", "--stdin"])
        .envs(env.iter().copied())
        .stdin(zero)
        .output()
        .unwrap();
    assert!(start.elapsed() < Duration::from_secs(20), "{:?}", start.elapsed());
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("larger than 64 MiB"), "{err}");
    let kib: u64 = err.lines().last().unwrap().trim().parse().unwrap();
    assert!(kib < 256 * 1024, "peak RSS {kib} KiB");
    // --in and --config: the same limit (a sparse file, so the disk is spared).
    let big = d.tmp.path().join("big.json");
    std::fs::File::create(&big).unwrap().set_len(65 * 1024 * 1024).unwrap();
    for args in [
        vec!["restore", "--in", big.to_str().unwrap()],
        vec!["--config", big.to_str().unwrap(), "listsites"],
    ] {
        let o = d.run(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains("larger than 64 MiB"), "{}", stderr(&o));
    }
}

#[test]
fn a_renew_whose_reload_fails_exits_1_and_tells_the_hooks() {
    let w = World::new();
    let d = &w.dev;
    let h = "reload.example.test";
    d.deploy(&site_json(&siteid(1), h, le()));
    let old = d.live_serial(h).unwrap();
    let mut cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(&d.config).unwrap()).unwrap();
    cfg["apache"]["reload"] = json!(["sh", "-c", "echo reload refused >&2; exit 1"]);
    std::fs::write(&d.config, cfg.to_string()).unwrap();
    let out = d.tmp.path().join("hook.out");
    let hook = d.root.join("etc/site-admin/hooks.d/10-record");
    std::fs::create_dir_all(hook.parent().unwrap()).unwrap();
    std::fs::write(&hook, format!("#!/bin/sh\ncat > {}\n", out.display())).unwrap();
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    let o = d.run(&["--json", "renew", "--force"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let rep: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert!(rep["apache_error"].as_str().unwrap().contains("reload refused"), "{rep}");
    assert_eq!(rep["not_served"], json!([h]));
    assert_eq!(rep["renewed_domains"], json!([h]));
    let told: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert!(told["apache_error"].as_str().unwrap().contains("reload refused"), "{told}");
    assert_eq!(told["not_served"], json!([h]));
    assert_ne!(d.live_serial(h).unwrap(), old);
    assert_eq!(d.apache.served_serial(h).as_deref(), Some(old.as_str()), "not reloaded");
}

#[test]
fn readers_without_the_lock_never_pair_a_key_with_another_versions_certificate() {
    let w = World::new();
    let d = &w.dev;
    let hosts = ["p1.example.test", "p2.example.test"];
    for (i, h) in hosts.iter().enumerate() {
        d.deploy(&site_json(&siteid(i as u32 + 1), h, le()));
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let renewer = {
        let env: Vec<(String, String)> = d.env.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let e: Vec<(&str, &str)> =
                    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                let o = run(&["-q", "renew", "--force"], &e, None);
                assert!(o.status.success(), "{}", stderr(&o));
                n += 1;
            }
            n
        })
    };
    let start = Instant::now();
    let (mut pairs, mut backups) = (0, 0);
    while start.elapsed() < Duration::from_secs(30) {
        let o = d.run(&["-q", "backup", "--all", "--out", "-"]);
        assert!(o.status.success(), "{}", stderr(&o));
        let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
        for s in v["sites"].as_array().unwrap() {
            let key = openssl::pkey::PKey::private_key_from_pem(
                s["tls"]["key"].as_str().unwrap().as_bytes(),
            )
            .unwrap();
            let crt = openssl::x509::X509::from_pem(s["tls"]["crt"].as_str().unwrap().as_bytes())
                .unwrap();
            assert!(
                crt.public_key().unwrap().public_eq(&key),
                "backup #{backups}: {} exported a key with another version's certificate",
                s["hostname"]
            );
            pairs += 1;
        }
        backups += 1;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let renewals = renewer.join().unwrap();
    eprintln!("{backups} backups, {pairs} exported pairs, all matching, during {renewals} renew --force runs");
    assert!(
        renewals >= 5 && pairs >= 20,
        "too little overlap to mean anything: {renewals} renewals, {pairs} pairs"
    );
}

#[test]
fn a_damaged_journal_is_moved_aside_by_doctor_repair_and_named_by_every_other_command() {
    let w = World::new();
    let d = &w.dev;
    d.deploy(&site_json(&siteid(1), "j.example.test", le()));
    let journal = d.root.join("var/lib/site-admin/journal/apache");
    std::fs::create_dir_all(&journal).unwrap();
    std::fs::write(journal.join("index.json"), "{ garbage").unwrap();
    let f = write_site(d, "k.json", &site_json(&siteid(2), "k.example.test", None));
    let o = d.run(&["deploy", "--file", &f]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains(&journal.join("index.json").display().to_string())
            && stderr(&o).contains("doctor --repair"),
        "{}",
        stderr(&o)
    );
    let o = d.run(&["doctor"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).contains("journal"), "{}", stdout(&o));
    let o = d.run(&["doctor", "--repair"]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("moved it aside"), "{}", stdout(&o));
    d.ok(&["deploy", "--file", &f]);
    d.ok(&["doctor"]);
}

#[test]
fn doctor_sees_a_dead_apache_and_a_stale_certificate_and_repair_mends_both() {
    let w = World::new();
    let d = &w.dev;
    let h = "doc.example.test";
    d.deploy(&site_json(&siteid(1), h, le()));
    let serial = d.live_serial(h).unwrap();
    d.apache.wait_serial(h, &serial);
    // A new version behind Apache's back (as certbot's renewal without a hook).
    let (k, c) = d.lkc(&[h], 80);
    let store = site_admin::store::Store::new(d.le());
    let params = site_admin::store::RenewalParams {
        account: None,
        server: w.pebble.directory(),
        webroot: d.root.join("x"),
        key_type: site_admin::config::KeyType::Ecdsa,
        profile: None,
    };
    store
        .add_version(
            h,
            &site_admin::store::NewVersion::from_key_and_fullchain(&k, &c).unwrap(),
            &params,
        )
        .unwrap();
    let o = d.run(&["doctor"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).contains("was not reloaded"), "{}", stdout(&o));
    d.ok(&["doctor", "--repair"]);
    d.apache.wait_serial(h, &pem_serial(c.as_bytes()).unwrap());
    // Apache stopped.
    let pid = std::fs::read_to_string(d.apache.dir.join("httpd.pid")).unwrap();
    Command::new("kill").arg(pid.trim()).status().unwrap();
    let start = Instant::now();
    while d.apache.is_running() && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    let o = d.run(&["doctor"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).contains("Apache: does not answer"), "{}", stdout(&o));
    d.ok(&["doctor", "--repair"]);
    d.apache.wait_serial(h, &pem_serial(c.as_bytes()).unwrap());
}

/// Kills a process group whose id a hook wrote to a file, when dropped (also
/// when the test fails), so no sleeper outlives the test.
struct KillGroup(std::path::PathBuf);

impl Drop for KillGroup {
    fn drop(&mut self) {
        let pgid = std::fs::read_to_string(&self.0).ok().and_then(|t| t.trim().parse::<i32>().ok());
        if let Some(pid) = pgid.and_then(rustix::process::Pid::from_raw) {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
    }
}

#[test]
fn a_hook_that_leaves_a_background_child_does_not_hold_the_lock() {
    let d = Device::new();
    d.apache.start();
    let pgid = d.tmp.path().join("hook.pgid");
    let _guard = KillGroup(pgid.clone());
    // The hook runs in its own process group ($$ is its id); its sleeper
    // inherits the hook's stdout and stderr pipes and keeps them open.
    // It also lists the files it inherited: never the lock files.
    let fds = d.tmp.path().join("hook.fds");
    write_hook(
        &d.root.join("etc/site-admin/hooks.d/10-daemon"),
        &format!("echo $$ > {}\nfor f in /proc/$$/fd/*; do readlink $f; done > {}\necho started\nsleep 150 &", pgid.display(), fds.display()),
    );
    let t = Instant::now();
    let (code, rep, err) = renew_json(&d, &[]);
    let took = t.elapsed();
    assert_eq!(code, 0, "{err}");
    assert!(took < Duration::from_secs(15), "renew took {took:?}: {err}");
    assert_eq!(rep["hooks"][0]["ok"], json!(true), "{rep}");
    assert!(
        err.contains("hook 10-daemon: started"),
        "the output before the hook exited is still forwarded: {err}"
    );
    assert!(err.contains("background process"), "{err}");
    assert!(pgid.exists());
    let inherited = std::fs::read_to_string(&fds).unwrap();
    assert!(inherited.contains("pipe:"), "{inherited}");
    assert!(
        !inherited.contains("site-admin.lock") && !inherited.contains(".certbot.lock"),
        "a lock fd leaked into the hook: {inherited}"
    );
    eprintln!("renew with a hook leaving a background child took {took:?}");
    // The lock is free: a deploy gets it at once.
    let f = d.tmp.path().join("site.json");
    std::fs::write(&f, site_json(&siteid(1), "daemon.example.test", None)).unwrap();
    let o = d.run(&["--lock-timeout", "1", "deploy", "--file", f.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}
