//! A catalog of bad inputs across every command — config files,
//! flags, backups, lock file states, truncated or foreign files in the store
//! (the 36 bad Site JSONs are in tests/site_json.rs). Each gets its
//! documented exit code and one clear message, and the tree is unchanged
//! (the lock files themselves excepted — `run/site-admin/`, certbot's
//! `.certbot.lock` and the letsencrypt directory that holds it: they are the
//! lock, not state; everything inside the letsencrypt directory is compared).
use crate::common::*;
use serde_json::json;
use std::path::Path;

struct Case {
    name: &'static str,
    setup: Box<dyn Fn(&Device)>,
    args: Vec<String>,
    code: i32,
    message: &'static str,
}

fn case(
    name: &'static str,
    setup: impl Fn(&Device) + 'static,
    args: &[&str],
    code: i32,
    message: &'static str,
) -> Case {
    Case {
        name,
        setup: Box::new(setup),
        args: args.iter().map(|s| s.to_string()).collect(),
        code,
        message,
    }
}

fn nothing(_: &Device) {}

fn config(d: &Device, v: serde_json::Value) {
    std::fs::write(&d.config, v.to_string()).unwrap();
}

fn write(d: &Device, rel: &str, text: &str) {
    let p = d.root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

/// A deployed Let's Encrypt site, its lineage imported from a self-signed pair.
fn deployed_le(d: &Device) {
    let (k, c) = d.lkc(&["s.example.test"], 30);
    let f = d.tmp.path().join("s.json");
    std::fs::write(
        &f,
        site_json(
            &siteid(1),
            "s.example.test",
            Some(json!({"letsencrypt": true, "key": k, "crt": c})),
        ),
    )
    .unwrap();
    let o = d.run(&[
        "--acme-ca-bundle",
        d.trusted.to_str().unwrap(),
        "deploy",
        "--file",
        f.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
}

fn backup(d: &Device, sites: serde_json::Value) {
    write(d, "../backup.json", &json!({"sites": sites}).to_string());
}

fn site(n: u32, host: &str) -> serde_json::Value {
    serde_json::from_str(&site_json(&siteid(n), host, None)).unwrap()
}

/// The tree without the lock files.
fn state(root: &Path) -> std::collections::BTreeMap<String, String> {
    snapshot(root)
        .into_iter()
        .filter(|(k, _)| {
            !k.starts_with("run") && !k.ends_with(".certbot.lock") && k != "etc/letsencrypt"
        })
        .collect()
}

fn catalog() -> Vec<Case> {
    let b = "BACKUP"; // replaced by the device's backup path
    vec![
        // ---- config files ----
        case("config: unknown key", |d| config(d, json!({"acme_sever": "https://x/dir"})), &["listsites"], 2, "acme_sever"),
        case("config: bad key_type", |d| config(d, json!({"key_type": "dsa"})), &["listsites"], 2, "key_type: must be \"ecdsa\" or \"rsa\""),
        case(
            "config: port 0",
            |d| config(d, json!({"apache": {"http_port": 0}})),
            &["listsites"],
            2,
            "apache.http_port/https_port: must be two different non-zero ports",
        ),
        case("config: same ports", |d| config(d, json!({"apache": {"http_port": 8080, "https_port": 8080}})), &["listsites"], 2, "must be two different"),
        case("config: empty configtest", |d| config(d, json!({"apache": {"configtest": []}})), &["listsites"], 2, "apache.configtest: must name a program"),
        case("config: acme_server not a URL", |d| config(d, json!({"acme_server": "ftp://ca/dir"})), &["listsites"], 2, "not an http(s) URL"),
        case("config: bad contact_email", |d| config(d, json!({"contact_email": "nobody"})), &["listsites"], 2, "contact_email: not an e-mail address"),
        case("config: not JSON", |d| write(d, "etc/site-admin/config.json", "{acme_server:"), &["listsites"], 2, "config.json"),
        case("config: missing CA bundle", |d| config(d, json!({"acme_ca_bundle": "etc/nope.pem"})), &["listsites"], 2, "acme_ca_bundle"),
        case("config: --config is a directory", nothing, &["--config", "/tmp", "listsites"], 2, "config file /tmp"),
        // ---- flags ----
        case("flag: lock timeout not a number", nothing, &["--lock-timeout", "soon", "renew"], 2, "invalid value 'soon'"),
        case("flag: unknown command", nothing, &["frobnicate"], 2, "unrecognized subcommand"),
        case("flag: unknown flag", nothing, &["deploy", "--frobnicate"], 2, "unexpected argument"),
        case("flag: backup without --out", nothing, &["backup", "--all"], 2, "--out"),
        case("flag: backup bad site id", nothing, &["backup", "--siteid", "x1", "--out", "/tmp/x.json"], 2, "\"x1\" is not a site id"),
        case(
            "flag: backup unknown site",
            nothing,
            &["backup", "--siteid", "s0000000000000000000000000000000000000042", "--out", "/tmp/x.json"],
            2,
            "is not deployed",
        ),
        case("flag: backup into a missing dir", nothing, &["backup", "--all", "--out", "/nonexistent/dir/b.json"], 2, "does not exist"),
        case("flag: undeploy bad site id", nothing, &["undeploy", "--siteid", "../etc"], 2, "not a site id"),
        case("flag: undeploy unknown site", nothing, &["undeploy", "--siteid", "s0000000000000000000000000000000000000042"], 2, "is not deployed"),
        case("flag: showsite unknown site", nothing, &["showsite", "--siteid", "s0000000000000000000000000000000000000042"], 2, "is not deployed"),
        case("flag: deploy missing file", nothing, &["deploy", "--file", "/nonexistent/site.json"], 2, "/nonexistent/site.json"),
        case("flag: deploy a directory", nothing, &["deploy", "--file", "/tmp"], 2, "/tmp"),
        case("flag: --file and --stdin", nothing, &["deploy", "--file", "x", "--stdin"], 2, "cannot be used with"),
        case("flag: restore without --in", nothing, &["restore"], 2, "--in"),
        case(
            "flag: missing --acme-ca-bundle",
            nothing,
            &["--acme-ca-bundle", "/nonexistent/ca.pem", "renew"],
            2,
            "--acme-ca-bundle /nonexistent/ca.pem: no such file",
        ),
        // ---- backups ----
        case("backup: not JSON", |d| write(d, "../backup.json", "not json"), &["restore", "--in", b], 2, "not valid JSON"),
        case(
            "backup: truncated",
            |d| write(d, "../backup.json", &json!({"sites": [site(1, "t.example.test")]}).to_string()[..40]),
            &["restore", "--in", b],
            2,
            "not valid JSON",
        ),
        case("backup: sites not an array", |d| write(d, "../backup.json", r#"{"sites": {"a": 1}}"#), &["restore", "--in", b], 2, "\"sites\" must be an array"),
        case("backup: no sites", |d| backup(d, json!([])), &["restore", "--in", b], 2, "holds no site"),
        case("backup: a number", |d| write(d, "../backup.json", "42"), &["restore", "--in", b], 2, "not a site-admin backup"),
        case("backup: an invalid site", |d| backup(d, json!([site(1, "ok.example.test"), site(2, "bad/host")])), &["restore", "--in", b], 2, "site #2"),
        case(
            "backup: duplicate site id",
            |d| backup(d, json!([site(1, "a.example.test"), site(1, "b.example.test")])),
            &["restore", "--in", b],
            2,
            "appears twice",
        ),
        case(
            "backup: duplicate hostname",
            |d| backup(d, json!([site(1, "a.example.test"), site(2, "a.example.test")])),
            &["restore", "--in", b],
            2,
            "share the hostname",
        ),
        case(
            "backup: selected site missing",
            |d| backup(d, json!([site(1, "a.example.test")])),
            &["restore", "--in", b, "--siteid", "s0000000000000000000000000000000000000042"],
            2,
            "holds no site s0000000000000000000000000000000000000042",
        ),
        case("backup: missing file", nothing, &["restore", "--in", "/nonexistent/backup.json"], 2, "/nonexistent/backup.json"),
        case(
            "backup: mismatched OKC",
            |d| {
                let (k, _) = self_signed(&["m.example.test"], 30);
                let (_, c) = self_signed(&["m.example.test"], 30);
                let mut s = site(1, "m.example.test");
                s["tls"] = json!({"key": k, "crt": c});
                backup(d, json!([s]));
            },
            &["restore", "--in", b],
            2,
            "tls.key: does not match the certificate in tls.crt",
        ),
        case(
            "backup: hostname taken by a deployed site",
            |d| {
                deployed_le(d);
                backup(d, json!([site(2, "s.example.test")]));
            },
            &["restore", "--in", b],
            2,
            "is already used by deployed site",
        ),
        case(
            "backup: a carried account whose key is garbage",
            |d| {
                let doc = json!({"sites": [site(1, "g.example.test")], "accounts": [{
                    "server": "https://ca.example/dir", "id": "0123456789abcdef0123456789abcdef", "uri": "https://ca.example/acct/1",
                    "key": {"kty": "EC", "crv": "P-256", "x": "garbage"}, "hosts": ["g.example.test"]}]});
                write(d, "../backup.json", &doc.to_string());
            },
            &["restore", "--in", b],
            2,
            "account #1 (0123456789abcdef0123456789abcdef of https://ca.example/dir): its key is not a usable JWK",
        ),
        // ---- new flags and keys ----
        case(
            "flag: revoke with a reason RFC 5280 does not name",
            nothing,
            &["revoke", "--siteid", "s0000000000000000000000000000000000000042", "--reason", "nonsense"],
            2,
            // clap refuses it (the values are in --help).
            "invalid value 'nonsense' for '--reason <R>'",
        ),
        case("flag: revoke an unknown site", nothing, &["revoke", "--siteid", "s0000000000000000000000000000000000000042"], 2, "it is not deployed"),
        case("config: acme_eab without hmac_key", |d| config(d, json!({"acme_eab": {"kid": "k1"}})), &["listsites"], 2, "missing field `hmac_key`"),
        case(
            "config: acme_eab hmac_key not base64url",
            |d| config(d, json!({"acme_eab": {"kid": "k1", "hmac_key": "not base64!"}})),
            &["listsites"],
            2,
            "acme_eab.hmac_key",
        ),
        // ---- lock file states ----
        case(
            "lock: the lock file is a directory",
            |d| std::fs::create_dir_all(d.root.join("run/site-admin/site-admin.lock")).unwrap(),
            &["renew"],
            1,
            "site-admin.lock",
        ),
        case(
            "lock: the certbot lock is a directory",
            |d| std::fs::create_dir_all(d.root.join("etc/letsencrypt/.certbot.lock")).unwrap(),
            &["renew"],
            1,
            ".certbot.lock",
        ),
        // ---- truncated or foreign files in the store ----
        case(
            "store: a corrupt stored Site JSON",
            |d| write(d, &format!("var/lib/site-admin/sites/{}.json", siteid(7)), "{\"siteid\": "),
            &["listsites"],
            1,
            "stored site",
        ),
        case(
            "store: a stored Site JSON with unknown keys",
            |d| write(d, &format!("var/lib/site-admin/sites/{}.json", siteid(7)), "{\"x\": 1}"),
            &["certificates"],
            1,
            "unknown field `x`",
        ),
        case("store: an unreadable Apache journal", |d| write(d, "var/lib/site-admin/journal/apache/index.json", "garbage"), &["renew"], 1, "its journal"),
        case(
            "store: a truncated live key",
            |d| {
                deployed_le(d);
                let k = d.le().join("archive/s.example.test/privkey1.pem");
                let t = std::fs::read_to_string(&k).unwrap();
                std::fs::write(&k, &t[..t.len() / 2]).unwrap();
            },
            &["doctor"],
            1,
            "live/s.example.test: unreadable",
        ),
        case(
            "store: a live key that does not match",
            |d| {
                deployed_le(d);
                let (k, _) = self_signed(&["s.example.test"], 30);
                std::fs::write(d.le().join("archive/s.example.test/privkey1.pem"), k).unwrap();
            },
            &["doctor"],
            1,
            "live/s.example.test: privkey.pem does not match cert.pem",
        ),
        case(
            "store: a foreign renewal conf without links",
            |d| write(d, "etc/letsencrypt/renewal/foreign.example.test.conf", "cert = /nowhere/cert.pem\n[renewalparams]\n"),
            &["renew"],
            1,
            "renewal/foreign.example.test.conf has no live/foreign.example.test links",
        ),
        case(
            "store: the same foreign conf, seen by doctor",
            |d| write(d, "etc/letsencrypt/renewal/foreign.example.test.conf", "garbage\n"),
            &["doctor"],
            1,
            "renewal/foreign.example.test.conf: its live/foreign.example.test links are missing",
        ),
    ]
}

#[test]
fn every_bad_input_gets_its_exit_code_a_clear_message_and_changes_nothing() {
    let cases = catalog();
    assert!(cases.len() >= 51, "the catalog lost cases: {}", cases.len());
    for c in cases {
        let d = Device::new();
        (c.setup)(&d);
        let before = state(&d.root);
        let backup = d.root.join("../backup.json");
        let args: Vec<String> = c
            .args
            .iter()
            .map(|a| if a == "BACKUP" { backup.display().to_string() } else { a.clone() })
            .collect();
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = d.run(&argv);
        let err = stderr(&o);
        let out = stdout(&o);
        assert_eq!(o.status.code(), Some(c.code), "{}: {err}", c.name);
        assert!(
            err.contains(c.message) || out.contains(c.message),
            "{}: expected {:?} in:\n{err}{out}",
            c.name,
            c.message
        );
        assert!(!err.contains("panicked"), "{}: {err}", c.name);
        assert_eq!(state(&d.root), before, "{}: the tree changed", c.name);
    }
}

#[test]
fn stale_lock_files_from_a_killed_run_do_not_block() {
    let d = Device::new();
    write(&d, "run/site-admin/site-admin.lock", "pid 99999 (deploy s...)\n");
    write(&d, "etc/letsencrypt/.certbot.lock", "");
    let o = d.run(&["--lock-timeout", "1", "renew"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

#[test]
fn foreign_files_in_the_store_are_ignored_by_listings() {
    let d = Device::new();
    deployed_le(&d);
    write(&d, "etc/letsencrypt/live/notes.txt", "hello");
    write(&d, "etc/letsencrypt/renewal/notes.txt", "x");
    let rows: serde_json::Value = serde_json::from_str(&d.ok(&["--json", "certificates"])).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 1, "{rows}");
    d.ok(&["doctor"]);
}

#[test]
fn an_eab_key_is_never_echoed_and_a_config_others_can_read_is_warned_about() {
    use std::os::unix::fs::PermissionsExt;
    let secret = "c2VjcmV0LW1hYy1rZXktZm9yLWVhYg";
    let d = Device::new();
    // The key where an object belongs: the type error names the key only.
    config(&d, json!({ "acme_eab": secret }));
    let o = d.run(&["listsites"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("acme_eab: must be an object"), "{}", stderr(&o));
    assert!(
        !stderr(&o).contains(secret) && !stdout(&o).contains(secret),
        "the key was echoed: {}",
        stderr(&o)
    );
    // A well-formed EAB in a file every user can read: it works, with a warning that says how to fix it.
    config(&d, json!({"acme_eab": {"kid": "kid-1", "hmac_key": secret}}));
    std::fs::set_permissions(&d.config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let o = d.run(&["listsites"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("holds acme_eab.hmac_key and every user can read it (mode 0644)"),
        "{}",
        stderr(&o)
    );
    assert!(stderr(&o).contains(&format!("chmod 600 {}", d.config.display())), "{}", stderr(&o));
    assert!(!stderr(&o).contains(secret), "{}", stderr(&o));
    std::fs::set_permissions(&d.config, std::fs::Permissions::from_mode(0o600)).unwrap();
    let o = d.run(&["listsites"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(!stderr(&o).contains("acme_eab"), "{}", stderr(&o));
}
