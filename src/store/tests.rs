use super::*;
use crate::certs::testutil::make;
use chrono::{Duration, Timelike, Utc};
use std::os::unix::fs::PermissionsExt;

const H: &str = "a.example.com";

fn params(dir: &Path) -> RenewalParams {
    RenewalParams {
        account: Some("acct".into()),
        server: "https://ca.test/dir".into(),
        webroot: dir.join("wk"),
        key_type: crate::model::KeyType::Ecdsa,
        profile: None,
    }
}

fn version(days: i64) -> NewVersion {
    let now = Utc::now();
    let (k, c) = make(&[H], now - Duration::days(1), now + Duration::days(days));
    NewVersion::from_key_and_fullchain(&k, &c).unwrap()
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn new_lineage_in_certbot_layout() {
    let t = tempfile::tempdir().unwrap();
    let s = Store::new(t.path().join("le"));
    let n = s.add_version(H, &version(30), &params(t.path())).unwrap();
    assert_eq!(n, 1);
    for k in KINDS {
        let link = s.live_dir(H).join(format!("{k}.pem"));
        assert_eq!(
            fs::read_link(&link).unwrap(),
            PathBuf::from(format!("../../archive/{H}/{k}1.pem"))
        );
    }
    assert_eq!(mode(&s.dir.join("live")), 0o700);
    assert_eq!(mode(&s.dir.join("archive")), 0o700);
    assert_eq!(mode(&s.archive_dir(H).join("privkey1.pem")), 0o600);
    let c = s.read_conf(H, Place::Live).unwrap();
    assert_eq!(c.get(Some("renewalparams"), "authenticator").unwrap(), "webroot");
    assert_eq!(c.get(Some("renewalparams"), "account").unwrap(), "acct");
    assert_eq!(c.get(None, "cert").unwrap(), s.live_dir(H).join("cert.pem").display().to_string());
    assert!(s.material(H, Place::Live).keycert().unwrap().key_matches);
}

#[test]
fn next_version_and_pruning() {
    let t = tempfile::tempdir().unwrap();
    let s = Store::new(t.path().join("le"));
    for i in 1..=8 {
        assert_eq!(s.add_version(H, &version(30 + i), &params(t.path())).unwrap(), i as u32);
    }
    assert_eq!(s.current_version(H, Place::Live), Some(8));
    assert_eq!(s.archive_versions(H), vec![3, 4, 5, 6, 7, 8]);
}

#[test]
fn rewrite_keeps_unknown_conf_fields() {
    let t = tempfile::tempdir().unwrap();
    let s = Store::new(t.path().join("le"));
    s.add_version(H, &version(30), &params(t.path())).unwrap();
    let p = s.renewal_conf_path(H);
    let text = fs::read_to_string(&p).unwrap() + "[some_plugin]\nsetting = x\n[acme_renewal_info]\nari_retry_after = 2026-12-01T10:00:00\n";
    fs::write(&p, text).unwrap();
    s.add_version(H, &version(31), &params(t.path())).unwrap();
    let after = fs::read_to_string(&p).unwrap();
    assert!(after.contains("[some_plugin]\nsetting = x"), "{after}");
    // What ARI said was about the old certificate: a new version drops it.
    assert!(!after.contains("ari_retry_after"), "{after}");
}

#[test]
fn ari_state_and_profile_round_trip_through_the_conf_certbot_reads() {
    let t = tempfile::tempdir().unwrap();
    let s = Store::new(t.path().join("le"));
    let mut p = params(t.path());
    p.profile = Some(ProfileWish { name: "shortlived".into(), required: true });
    s.add_version(H, &version(30), &p).unwrap();
    let now = chrono::Utc::now().with_nanosecond(0).unwrap();
    let st = AriState {
        retry_after: Some(now + Duration::hours(6)),
        cert_id: Some("a.b".into()),
        window: Some((now, now + Duration::hours(2))),
        chosen: Some(now + Duration::hours(1)),
        explanation_url: Some("https://ca.test/why".into()),
        offered: Some(true),
    };
    s.write_ari(H, &st).unwrap();
    let c = s.lineage_conf(H, Place::Live).unwrap();
    assert_eq!(c.ari, st);
    assert_eq!(c.profile, Some(ProfileWish { name: "shortlived".into(), required: true }));
    let text = fs::read_to_string(s.renewal_conf_path(H)).unwrap();
    assert!(
        text.contains("required_profile = shortlived")
            && text.contains("[acme_renewal_info]\nari_retry_after = "),
        "{text}"
    );
}

#[test]
fn interrupted_version_write_never_becomes_live() {
    let t = tempfile::tempdir().unwrap();
    let s = Store::new(t.path().join("le"));
    s.add_version(H, &version(30), &params(t.path())).unwrap();
    // A crash left half of version 2 behind.
    fs::write(s.archive_dir(H).join("cert2.pem"), "partial").unwrap();
    fs::write(s.archive_dir(H).join("privkey2.pem"), "").unwrap();
    assert_eq!(s.current_version(H, Place::Live), Some(1));
    assert_eq!(s.complete_versions(H), vec![1]);
    // The next write skips over it.
    assert_eq!(s.add_version(H, &version(31), &params(t.path())).unwrap(), 3);
    assert!(s.material(H, Place::Live).keycert().unwrap().key_matches);
}

#[test]
fn mismatched_pair_is_refused_and_nothing_written() {
    let t = tempfile::tempdir().unwrap();
    let s = Store::new(t.path().join("le"));
    let mut v = version(30);
    v.key_pem = version(30).key_pem;
    let e = s.add_version(H, &v, &params(t.path())).unwrap_err();
    assert!(e.to_string().contains("does not match"), "{e}");
    // The store says what is wrong; the command chooses the exit code.
    assert!(matches!(e, StoreError::Unusable { .. }), "{e:?}");
    assert!(!s.dir.exists());
}

#[test]
fn stash_and_unstash_round_trip() {
    let t = tempfile::tempdir().unwrap();
    let s = Store::new(t.path().join("le"));
    s.add_version(H, &version(30), &params(t.path())).unwrap();
    let serial = s.material(H, Place::Live).keycert().unwrap().leaf.serial.clone();
    s.stash(H).unwrap();
    assert!(!s.has(H, Place::Live));
    assert!(!s.renewal_conf_path(H).exists());
    assert!(s.stash_conf_path(H).exists());
    assert_eq!(mode(&s.dir.join("norenewal")), 0o700);
    assert_eq!(s.material(H, Place::Stashed).keycert().unwrap().leaf.serial, serial);
    s.unstash(H, &params(t.path())).unwrap();
    assert!(!s.has(H, Place::Stashed));
    assert_eq!(s.material(H, Place::Live).keycert().unwrap().leaf.serial, serial);
    assert!(s.renewal_conf_path(H).exists());
}

#[test]
fn unstash_over_live_becomes_next_version() {
    let t = tempfile::tempdir().unwrap();
    let s = Store::new(t.path().join("le"));
    s.add_version(H, &version(30), &params(t.path())).unwrap();
    s.stash(H).unwrap();
    s.add_version(H, &version(10), &params(t.path())).unwrap();
    let stashed = s.material(H, Place::Stashed).keycert().unwrap().leaf.serial.clone();
    s.unstash(H, &params(t.path())).unwrap();
    assert_eq!(s.current_version(H, Place::Live), Some(3));
    assert_eq!(s.material(H, Place::Live).keycert().unwrap().leaf.serial, stashed);
    assert!(!s.has(H, Place::Stashed));
}

#[test]
fn delete_stash_removes_unused_archive() {
    let t = tempfile::tempdir().unwrap();
    let s = Store::new(t.path().join("le"));
    s.add_version(H, &version(30), &params(t.path())).unwrap();
    s.stash(H).unwrap();
    s.delete_stash(H).unwrap();
    assert!(!s.archive_dir(H).exists());
    assert!(!s.stash_conf_path(H).exists());
}

#[test]
fn stash_keeps_the_newer_of_two() {
    let t = tempfile::tempdir().unwrap();
    let s = Store::new(t.path().join("le"));
    s.add_version(H, &version(60), &params(t.path())).unwrap();
    s.stash(H).unwrap();
    s.add_version(H, &version(20), &params(t.path())).unwrap();
    let older_live = s.material(H, Place::Live).keycert().unwrap().leaf.serial.clone();
    s.stash(H).unwrap();
    assert!(!s.has(H, Place::Live));
    assert_ne!(s.material(H, Place::Stashed).keycert().unwrap().leaf.serial, older_live);
}

#[test]
fn recover_finishes_half_stash() {
    let t = tempfile::tempdir().unwrap();
    let s = Store::new(t.path().join("le"));
    s.add_version(H, &version(30), &params(t.path())).unwrap();
    fs::create_dir_all(s.dir.join("norenewal")).unwrap();
    fs::rename(s.live_dir(H), s.stash_dir(H)).unwrap(); // crash before the conf moved
    let done = s.recover().unwrap();
    assert_eq!(done.len(), 1, "{done:?}");
    assert!(s.stash_conf_path(H).exists());
    assert!(!s.renewal_conf_path(H).exists());
    assert!(s.recover().unwrap().is_empty());
}

#[test]
fn broken_links_are_reported_not_panicked() {
    let t = tempfile::tempdir().unwrap();
    let s = Store::new(t.path().join("le"));
    s.add_version(H, &version(30), &params(t.path())).unwrap();
    fs::remove_file(s.archive_dir(H).join("privkey1.pem")).unwrap();
    assert!(matches!(s.material(H, Place::Live), Material::Broken(_)));
    fs::write(s.archive_dir(H).join("privkey1.pem"), "garbage").unwrap();
    assert!(matches!(s.material(H, Place::Live), Material::Broken(_)));
}

#[test]
fn recover_links_a_new_lineage_interrupted_before_its_links() {
    let t = tempfile::tempdir().unwrap();
    let s = Store::new(t.path().join("le"));
    s.add_version(H, &version(30), &params(t.path())).unwrap();
    let serial = s.material(H, Place::Live).keycert().unwrap().leaf.serial.clone();
    fs::remove_dir_all(s.live_dir(H)).unwrap(); // the crash came before the links
    let done = s.recover().unwrap();
    assert_eq!(done.len(), 1, "{done:?}");
    assert_eq!(s.material(H, Place::Live).keycert().unwrap().leaf.serial, serial);
    // With no complete version, nothing is touched (doctor reports it).
    fs::remove_dir_all(s.live_dir(H)).unwrap();
    fs::remove_file(s.archive_dir(H).join("privkey1.pem")).unwrap();
    assert!(s.recover().unwrap().is_empty());
    assert!(s.renewal_conf_path(H).exists());
}
