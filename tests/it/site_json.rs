//! Site JSON validation agrees with its JSON Schema; every bad Site
//! JSON gets exit 2, its own clear message, and leaves the tree untouched;
//! `deploy --dry-run` explains its decision and changes nothing.
use crate::common::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn fixtures() -> (PathBuf, BTreeMap<String, Value>) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let expect: BTreeMap<String, Value> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expect.json")).unwrap()).unwrap();
    (dir, expect)
}

fn schema() -> jsonschema::Validator {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("site-schemas/site.schema.json");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
    jsonschema::validator_for(&v).expect("the schema compiles")
}

#[test]
fn every_fixture_is_listed_and_there_are_enough() {
    let (dir, expect) = fixtures();
    let mut on_disk = Vec::new();
    for sub in ["valid", "invalid"] {
        for e in std::fs::read_dir(dir.join(sub)).unwrap() {
            on_disk.push(format!("{sub}/{}", e.unwrap().file_name().to_string_lossy()));
        }
    }
    on_disk.sort();
    assert_eq!(on_disk, expect.keys().cloned().collect::<Vec<_>>());
    assert!(expect.values().filter(|e| e["valid"] == false).count() >= 20);
    for need in
        ["http", "letsencrypt", "letsencrypt-with-lkc", "okc", "okc-with-cacrt", "appconfigs"]
    {
        assert!(expect.contains_key(&format!("valid/{need}.json")), "{need}");
    }
}

#[test]
fn code_and_schema_agree_on_every_fixture() {
    let (dir, expect) = fixtures();
    let schema = schema();
    for (name, e) in &expect {
        let text = std::fs::read_to_string(dir.join(name)).unwrap();
        // What deploy decides with the default server (Let's Encrypt), and
        // the exit kind it gives a refusal.
        let code = site_admin::site::parse_site_for(
            &text,
            name,
            site_admin::config::LETSENCRYPT_PRODUCTION,
        )
        .map_err(site_admin::error::Error::from);
        let want_valid = e["valid"] == true;
        match &code {
            Ok(_) => assert!(want_valid, "{name}: the code accepts it, expected a refusal"),
            Err(err) => {
                assert!(!want_valid, "{name}: the code refuses it: {err}");
                let msg = e["message"].as_str().unwrap();
                assert!(
                    err.to_string().contains(msg),
                    "{name}: message {:?} lacks {msg:?}",
                    err.to_string()
                );
                assert_eq!(err.exit_code(), 2);
            }
        }
        if e.get("not_json").is_some() {
            assert!(serde_json::from_str::<Value>(&text).is_err());
            continue;
        }
        let doc: Value = serde_json::from_str(&text).unwrap();
        let schema_valid = schema.is_valid(&doc);
        if let Some(why) = e.get("beyond_schema") {
            assert!(
                schema_valid,
                "{name}: marked beyond the schema ({why}) but the schema refuses it"
            );
        } else {
            assert_eq!(
                schema_valid, want_valid,
                "{name}: the schema says {schema_valid}, the code says {want_valid}"
            );
        }
    }
}

/// A root that already holds a deployed-looking tree, so "unchanged" means something.
fn populated_root() -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    let r = t.path();
    std::fs::create_dir_all(r.join("etc/site-admin")).unwrap();
    std::fs::write(
        r.join("etc/site-admin/config.json"),
        r#"{"apache": {"configtest": ["true"], "reload": ["true"]}}"#,
    )
    .unwrap();
    let live = r.join("etc/letsencrypt/live/blog.example.com");
    std::fs::create_dir_all(&live).unwrap();
    let (k, c) = self_signed(&["blog.example.com"], 60);
    let arch = r.join("etc/letsencrypt/archive/blog.example.com");
    std::fs::create_dir_all(&arch).unwrap();
    std::fs::write(arch.join("privkey1.pem"), k).unwrap();
    std::fs::write(arch.join("fullchain1.pem"), &c).unwrap();
    std::fs::write(arch.join("cert1.pem"), &c).unwrap();
    std::fs::write(arch.join("chain1.pem"), "").unwrap();
    for kind in ["privkey", "fullchain", "cert", "chain"] {
        std::os::unix::fs::symlink(
            format!("../../archive/blog.example.com/{kind}1.pem"),
            live.join(format!("{kind}.pem")),
        )
        .unwrap();
    }
    std::fs::create_dir_all(r.join("var/lib/site-admin/sites")).unwrap();
    t
}

#[test]
fn every_bad_site_json_exits_2_with_its_own_message_and_changes_nothing() {
    let (dir, expect) = fixtures();
    let root = populated_root();
    let before = snapshot(root.path());
    let mut messages = BTreeMap::new();
    for (name, e) in expect.iter().filter(|(_, e)| e["valid"] == false) {
        let file = dir.join(name);
        // The device trusts the fixtures' issuer, as it trusts its ACME CA.
        let bundle = dir.join("issuer.pem");
        let env = [
            ("SITE_ADMIN_ROOT", root.path().to_str().unwrap()),
            ("SITE_ADMIN_ACME_CA_BUNDLE", bundle.to_str().unwrap()),
        ];
        for args in [
            vec!["deploy", "--file", file.to_str().unwrap()],
            vec!["deploy", "--dry-run", "--file", file.to_str().unwrap()],
        ] {
            let o = run(&args, &env, None);
            assert_eq!(o.status.code(), Some(2), "{name} {args:?}: {}", stderr(&o));
            let err = stderr(&o);
            assert!(err.contains(e["message"].as_str().unwrap()), "{name}: {err}");
            assert!(!err.contains("panicked"), "{name}: {err}");
            assert_eq!(err.trim().lines().count(), 1, "{name}: one clear sentence, got {err}");
            messages.insert(err.trim().to_string(), name.clone());
        }
        // The same through --stdin.
        let o = run(&["deploy", "--stdin"], &env, Some(&std::fs::read_to_string(&file).unwrap()));
        assert_eq!(o.status.code(), Some(2), "{name} via stdin");
        assert_eq!(snapshot(root.path()), before, "{name} changed the tree");
    }
    let distinct: std::collections::BTreeSet<&String> = messages.values().collect();
    assert_eq!(
        distinct.len(),
        expect.values().filter(|e| e["valid"] == false).count(),
        "each bad fixture has its own message"
    );
}

#[test]
fn valid_fixtures_dry_run_and_change_nothing() {
    let (dir, expect) = fixtures();
    let root = populated_root();
    let before = snapshot(root.path());
    for (name, _) in expect.iter().filter(|(_, e)| e["valid"] == true) {
        let file = dir.join(name);
        // The device trusts the fixtures' issuer, as it trusts its ACME CA.
        let bundle = dir.join("issuer.pem");
        let env = [
            ("SITE_ADMIN_ROOT", root.path().to_str().unwrap()),
            ("SITE_ADMIN_ACME_CA_BUNDLE", bundle.to_str().unwrap()),
        ];
        let o =
            run(&["--json", "deploy", "--dry-run", "--file", file.to_str().unwrap()], &env, None);
        assert_eq!(o.status.code(), Some(0), "{name}: {}", stderr(&o));
        let plan: Value = serde_json::from_str(&stdout(&o)).unwrap();
        assert_eq!(plan["dry_run"], true);
        assert!(plan["reason"].as_str().unwrap().len() > 10, "{name}: {plan}");
        let human = run(&["deploy", "--dry-run", "--file", file.to_str().unwrap()], &env, None);
        assert!(stdout(&human).contains("will serve:"), "{name}");
        assert_eq!(snapshot(root.path()), before, "{name} dry run changed the tree");
    }
}

#[test]
fn dry_run_reads_the_tree_under_root() {
    let (dir, _) = fixtures();
    let root = populated_root();
    // The device trusts the fixtures' issuer, as it trusts its ACME CA.
    let bundle = dir.join("issuer.pem");
    let env = [
        ("SITE_ADMIN_ROOT", root.path().to_str().unwrap()),
        ("SITE_ADMIN_ACME_CA_BUNDLE", bundle.to_str().unwrap()),
    ];
    // live/blog.example.com exists (60 days); the Site JSON carries one of 100 years: it wins.
    let o = run(
        &[
            "--json",
            "deploy",
            "--dry-run",
            "--file",
            dir.join("valid/letsencrypt-with-lkc.json").to_str().unwrap(),
        ],
        &env,
        None,
    );
    let plan: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(plan["actions"][0]["action"], "import_carried", "{plan}");
    assert!(
        plan["reason"].as_str().unwrap().contains("next version of the live lineage"),
        "{plan}"
    );
    // Plain letsencrypt: the unused live lineage is adopted, nothing issued.
    let o = run(
        &[
            "--json",
            "deploy",
            "--dry-run",
            "--file",
            dir.join("valid/letsencrypt.json").to_str().unwrap(),
        ],
        &env,
        None,
    );
    let plan: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(plan["actions"], serde_json::json!([]), "{plan}");
    assert_eq!(plan["serving"], "letsencrypt");
    // An LKC for another host is ignored with a warning, and a certificate is to be provisioned.
    let o = run(
        &[
            "--json",
            "deploy",
            "--dry-run",
            "--file",
            dir.join("valid/letsencrypt-with-lkc-for-other-host.json").to_str().unwrap(),
        ],
        &env,
        None,
    );
    let plan: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(plan["actions"][0]["action"], "provision", "{plan}");
    assert!(
        plan["warnings"][0].as_str().unwrap().contains("does not cover news.example.com"),
        "{plan}"
    );
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        vec!["deploy"],
        vec!["frobnicate"],
        vec!["backup", "--out", "x"],
        vec!["deploy", "--file", "/nonexistent/site.json"],
    ] {
        let o = run(&args, &[("SITE_ADMIN_ROOT", "/nonexistent-root")], None);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
    }
    let o = run(&["--config", "/nonexistent/config.json", "listsites"], &[], None);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("/nonexistent/config.json"));
}

#[test]
fn bad_config_names_the_key() {
    let t = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(t.path().join("etc/site-admin")).unwrap();
    std::fs::write(
        t.path().join("etc/site-admin/config.json"),
        r#"{"acme_sever": "https://x/dir"}"#,
    )
    .unwrap();
    let o = run(&["listsites"], &[("SITE_ADMIN_ROOT", t.path().to_str().unwrap())], None);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("acme_sever"), "{}", stderr(&o));
}
