//! Fleet mode's foundations against a real 3-member etcd cluster (Debian's
//! etcd-server): the JSON gateway's traps, the per-lineage lock and its
//! fencing, leader failover, and sealed keys.

use crate::common::etcd::EtcdCluster;
use site_admin::fleet::etcd::{Compare, PutRequest, RequestOp};
use site_admin::fleet::{Acquired, Etcd, EtcdError, EtcdOptions, FleetKey, LockError};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn client(c: &EtcdCluster) -> Arc<Etcd> {
    Arc::new(
        Etcd::new(&EtcdOptions {
            endpoints: c.endpoints(),
            timeout: Duration::from_secs(3),
            ..Default::default()
        })
        .unwrap(),
    )
}

#[test]
fn gateway_answers_are_typed_whatever_etcd_omits() {
    let t = tempfile::tempdir().unwrap();
    let c = EtcdCluster::start(t.path(), 3);
    let e = client(&c);
    assert!(e.get("/t/missing").unwrap().is_none(), "an empty range has no kvs at all");
    let rev = e.put("/t/a", b"one", 0).unwrap();
    assert!(rev > 1, "int64 revisions arrive as strings and parse: {rev}");
    e.put("/t/a", b"two", 0).unwrap();
    let kv = e.get("/t/a").unwrap().unwrap();
    assert_eq!((kv.value.as_slice(), kv.version, kv.create_revision), (&b"two"[..], 2, rev));
    assert!(kv.mod_revision > kv.create_revision);

    // A txn whose compare fails: etcd omits `succeeded`, which must read as false.
    let t1 = site_admin::fleet::etcd::TxnRequest {
        compare: vec![Compare::created_at("/t/a", 0)],
        success: vec![RequestOp::RequestPut(PutRequest {
            key: b"/t/a".to_vec(),
            value: b"three".to_vec(),
            lease: 0,
        })],
        failure: vec![],
    };
    assert!(!e.txn(&t1).unwrap().succeeded);
    assert_eq!(e.get("/t/a").unwrap().unwrap().value, b"two");

    // A keepalive of a lease that is gone answers 200 without a TTL: lost, not kept.
    let lease = e.grant(5).unwrap();
    assert_eq!(e.keepalive(lease.id).unwrap().map(|t| t > 0), Some(true));
    e.revoke(lease.id).unwrap();
    assert_eq!(e.keepalive(lease.id).unwrap(), None);
    e.revoke(lease.id).expect("revoking a lease that is gone is fine");

    // etcd refuses a request over its 1.5 MiB limit: a typed refusal.
    match e.put("/t/huge", &vec![b'x'; 1600 << 10], 0) {
        Err(EtcdError::Refused { message, .. }) => {
            assert!(message.contains("too large"), "{message}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // A value larger than a fleet record may be is refused on reading, naming its key.
    e.put("/t/big", &vec![b'x'; 300 << 10], 0).unwrap();
    let err = e.get("/t/big").unwrap_err().to_string();
    assert!(err.contains("/t/big") && err.contains("more than"), "{err}");
    assert!(e.get_prefix("/t/").is_err());
    e.delete("/t/big").unwrap();
    let all = e.get_prefix("/t/").unwrap();
    assert_eq!(all.kvs.iter().map(|kv| kv.key_str()).collect::<Vec<_>>(), vec!["/t/a"]);
}

#[test]
fn one_holder_per_lineage_and_a_lost_lock_cannot_write() {
    let t = tempfile::tempdir().unwrap();
    let c = EtcdCluster::start(t.path(), 3);
    let (a, b) = (client(&c), client(&c));
    let key = "/t/locks/a.example";
    let Acquired::Held(la) = site_admin::fleet::lock::acquire(&a, key, "dev-a", 10).unwrap() else {
        panic!("a free lock was refused")
    };
    match site_admin::fleet::lock::acquire(&b, key, "dev-b", 10).unwrap() {
        Acquired::Busy(Some(h)) => assert_eq!(h.device, "dev-a"),
        other => panic!("a held lock was given to a second device: {other:?}"),
    }
    let put = |v: &str| {
        vec![RequestOp::RequestPut(PutRequest {
            key: b"/t/lineages/a.example".to_vec(),
            value: v.as_bytes().to_vec(),
            lease: 0,
        })]
    };
    assert!(la.fenced(vec![], put("by a")).unwrap());

    // a's lease ends behind its back (as an expiry would); b takes the lock.
    let lease = a.get(key).unwrap().unwrap().lease;
    a.revoke(lease).unwrap();
    let Acquired::Held(lb) = site_admin::fleet::lock::acquire(&b, key, "dev-b", 10).unwrap() else {
        panic!("a released lock stayed busy")
    };
    assert!(lb.token() > la.token(), "fencing tokens grow: {} then {}", la.token(), lb.token());
    match la.fenced(vec![], put("late write by a")) {
        Err(LockError::Lost { key: k, .. }) => assert_eq!(k, key),
        other => panic!("a write under a lost lock went through: {other:?}"),
    }
    assert_eq!(a.get("/t/lineages/a.example").unwrap().unwrap().value, b"by a");
    // a's keeper learns it at its next keepalive.
    let start = Instant::now();
    while la.check().is_ok() && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(la.check().is_err(), "the holder never noticed its lease was gone");
    // A compare of the holder's own that fails is not a lost lock.
    assert!(!lb
        .fenced(vec![Compare::modified_at("/t/lineages/a.example", 1)], put("by b"))
        .unwrap());
    assert!(lb.fenced(vec![], put("by b")).unwrap());
    drop(la);
    drop(lb);
    assert!(b.get(key).unwrap().is_none(), "a dropped lock is released at once");
}

#[test]
fn a_holder_cut_off_from_etcd_knows_its_lock_is_lost_within_the_ttl() {
    let t = tempfile::tempdir().unwrap();
    let mut c = EtcdCluster::start(t.path(), 3);
    let e = client(&c);
    let Acquired::Held(l) =
        site_admin::fleet::lock::acquire(&e, "/t/locks/b.example", "dev-a", 2).unwrap()
    else {
        panic!()
    };
    l.check().unwrap();
    for i in 0..3 {
        c.kill(i);
    }
    let start = Instant::now();
    while l.check().is_ok() && start.elapsed() < Duration::from_secs(6) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let err = l.check().unwrap_err().to_string();
    assert!(err.contains("fleet lock lost"), "{err}");
    assert!(start.elapsed() <= Duration::from_millis(2500), "noticed after {:?}", start.elapsed());
}

#[test]
fn requests_go_on_when_the_leader_dies() {
    let t = tempfile::tempdir().unwrap();
    let mut c = EtcdCluster::start(t.path(), 3);
    let e = client(&c);
    e.put("/t/x", b"1", 0).unwrap();
    let leader = c.leader().expect("a leader");
    c.kill(leader);
    let start = Instant::now();
    loop {
        let err = match e.put("/t/x", b"2", 0) {
            Ok(_) => break,
            Err(err) => err.to_string(),
        };
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "no write within 15 s of the leader's death: {err}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(e.get("/t/x").unwrap().unwrap().value, b"2");
}

#[test]
fn private_keys_are_sealed_before_they_reach_etcd() {
    let t = tempfile::tempdir().unwrap();
    let c = EtcdCluster::start(t.path(), 3);
    let e = client(&c);
    let pem = rcgen::KeyPair::generate().unwrap().serialize_pem();
    assert!(pem.contains("PRIVATE KEY"));
    let mut raw = [0u8; 32];
    openssl::rand::rand_bytes(&mut raw).unwrap();
    let k = FleetKey::from_bytes(raw);
    let key = "/t/lineages/a.example";
    e.put(key, k.seal(key, 1, pem.as_bytes()).unwrap().as_bytes(), 0).unwrap();
    for kv in e.get_prefix("/t/").unwrap().kvs {
        assert!(
            !String::from_utf8_lossy(&kv.value).contains("PRIVATE KEY"),
            "{} holds a key in the clear",
            kv.key_str()
        );
    }
    let stored = String::from_utf8(e.get(key).unwrap().unwrap().value).unwrap();
    assert_eq!(k.open(key, 1, &stored).unwrap(), pem.as_bytes());
    assert!(k.open("/t/lineages/b.example", 1, &stored).is_err());
}

#[test]
fn a_device_needs_its_certificate_and_its_role_limits_it_to_the_prefix() {
    use crate::common::etcd::EtcdPki;
    let t = tempfile::tempdir().unwrap();
    let pki = EtcdPki::create(&t.path().join("pki"));
    let c = EtcdCluster::start_tls(&t.path().join("etcd"), 3, &pki);
    c.enable_auth("root-pw", &[("dev-a", "pw-a", "/site-admin/v1/")]);
    let (cert, key) = pki.client("dev-a");
    let opts = |cert: Option<std::path::PathBuf>,
                key: Option<std::path::PathBuf>,
                auth: Option<(&str, &str)>| EtcdOptions {
        endpoints: c.endpoints(),
        ca: Some(pki.ca.clone()),
        cert,
        key,
        auth: auth.map(|(u, p)| (u.to_string(), p.to_string())),
        timeout: Duration::from_secs(3),
    };
    let a =
        Etcd::new(&opts(Some(cert.clone()), Some(key.clone()), Some(("dev-a", "pw-a")))).unwrap();
    a.put("/site-admin/v1/x", b"1", 0).expect("the device's own prefix");
    assert_eq!(a.get("/site-admin/v1/x").unwrap().unwrap().value, b"1");
    match a.put("/elsewhere", b"1", 0) {
        Err(EtcdError::Refused { message, .. }) => {
            assert!(message.contains("permission denied"), "{message}")
        }
        other => panic!("a write outside the role's prefix: {other:?}"),
    }
    // Without a client certificate the TLS handshake is refused.
    let no_cert = Etcd::new(&opts(None, None, Some(("dev-a", "pw-a")))).unwrap();
    assert!(matches!(no_cert.get("/site-admin/v1/x"), Err(EtcdError::Unreachable(_))));
    // With the certificate but a wrong password: refused, and the password is never in the message.
    let wrong =
        Etcd::new(&opts(Some(cert.clone()), Some(key.clone()), Some(("dev-a", "not-the-pw"))))
            .unwrap();
    let err = wrong.get("/site-admin/v1/x").unwrap_err().to_string();
    assert!(err.contains("authentication failed") && !err.contains("not-the-pw"), "{err}");
    // Without a user: auth is on, so nothing is readable.
    let anon = Etcd::new(&opts(Some(cert), Some(key), None)).unwrap();
    assert!(anon.get("/site-admin/v1/x").is_err());
}

#[test]
fn records_are_written_once_under_the_lock_and_read_back_by_every_device() {
    use site_admin::fleet::record::{AriRecord, Meta};
    use site_admin::fleet::FleetStore;
    use site_admin::site::Host;
    let t = tempfile::tempdir().unwrap();
    let c = EtcdCluster::start(t.path(), 3);
    let fk = FleetKey::from_bytes([5; 32]);
    let (a, b) = (
        FleetStore::new(client(&c), "/f/", fk.clone(), "dev-a"),
        FleetStore::new(client(&c), "/f/", fk.clone(), "dev-b"),
    );
    let host = Host::parse("a.example").unwrap();
    let issuer = crate::common::TestIssuer::new("fleet test CA");
    let meta = |d: &str| Meta {
        server: "https://ca.test/dir".into(),
        account: None,
        profile: None,
        ari: AriRecord::default(),
        device: d.into(),
        now: chrono::Utc::now(),
    };

    let Acquired::Held(la) = a.lock(&host).unwrap() else { panic!("free lock refused") };
    assert!(matches!(b.lock(&host).unwrap(), Acquired::Busy(Some(h)) if h.device == "dev-a"));
    assert!(a.lineage(&host).unwrap().is_none());
    let (k1, c1) = issuer.issue(&["a.example"], -1.0, 60.0);
    let r1 = site_admin::fleet::LineageRecord::seal(&fk, "/f/", &host, 1, &k1, &c1, meta("dev-a"))
        .unwrap();
    assert!(a.publish(&la, &r1, 0).unwrap());
    drop(la);

    // b sees it, opens it, and renews it as version 2 under its own lock.
    let (seen, rev) = b.lineage(&host).unwrap().unwrap();
    assert_eq!(seen.open(&fk, "/f/").unwrap().key_pem, k1);
    let Acquired::Held(lb) = b.lock(&host).unwrap() else { panic!("released lock still busy") };
    let (k2, c2) = issuer.issue(&["a.example"], -1.0, 80.0);
    let r2 = site_admin::fleet::LineageRecord::seal(&fk, "/f/", &host, 2, &k2, &c2, meta("dev-b"))
        .unwrap();
    assert!(
        !b.publish(&lb, &r2, 0).unwrap(),
        "a write that assumed no record must not replace one"
    );
    assert!(b.publish(&lb, &r2, rev).unwrap());
    drop(lb);
    // A device back from isolation pushes only over what it read.
    let (k3, c3) = issuer.issue(&["a.example"], -1.0, 70.0);
    let r3 = site_admin::fleet::LineageRecord::seal(&fk, "/f/", &host, 2, &k3, &c3, meta("dev-a"))
        .unwrap();
    assert!(!a.push_if_unchanged(&r3, rev).unwrap(), "pushed over a peer's newer write");
    assert_eq!(a.lineage(&host).unwrap().unwrap().0.renewed_by, "dev-b");

    // A record someone else put there does not hide the good ones.
    client(&c).put("/f/lineages/bad.example", b"{not json", 0).unwrap();
    let snap = a.lineages().unwrap();
    assert_eq!(snap.lineages.len(), 2);
    for (key, _, r) in &snap.lineages {
        match key.as_str() {
            "/f/lineages/a.example" => assert_eq!(r.as_ref().unwrap().version, 2),
            _ => assert!(r.as_ref().unwrap_err().to_string().contains("/f/lineages/bad.example")),
        }
    }
    a.heartbeat(vec![("a.example".into(), seen.serial.clone())], 10).unwrap();
    let devs = b.devices().unwrap();
    assert_eq!(devs.len(), 1);
    assert_eq!(devs[0].device, "dev-a");
    for kv in client(&c).get_prefix("/f/").unwrap().kvs {
        assert!(!String::from_utf8_lossy(&kv.value).contains("PRIVATE KEY"), "{}", kv.key_str());
    }
}

/// Two devices of one fleet behind one name (same ports on 127.0.0.1 and
/// 127.0.0.2; pebble's DNS decides which one validates): the first deploy
/// orders once and publishes; the second takes the fleet's certificate and
/// orders nothing; a renewal on one device validates on the other (the
/// stateless answer of the fleet's one account) and reaches it by sync.
#[test]
fn two_devices_share_one_certificate_and_validate_for_each_other() {
    use crate::common::{site_json, siteid, two_devices};
    let t = tempfile::tempdir().unwrap();
    let cluster = EtcdCluster::start(t.path(), 3);
    let (pebble, a, b) = two_devices();
    for (d, name) in [(&a, "dev-a"), (&b, "dev-b")] {
        join_fleet(d, &cluster, name);
    }
    let host = "shared.example";
    pebble.set_a(host, "127.0.0.1");
    let site = site_json(&siteid(1), host, Some(serde_json::json!({"letsencrypt": true})));
    a.deploy(&site);
    assert_eq!(pebble.issued_count(), 1);
    let serial = a.live_serial(host).unwrap();
    b.deploy(&site);
    assert_eq!(pebble.issued_count(), 1, "the second device ordered nothing");
    assert_eq!(b.live_serial(host).as_deref(), Some(serial.as_str()));
    b.apache.wait_serial(host, &serial);
    let conf =
        std::fs::read_to_string(b.le().join("renewal").join(format!("{host}.conf"))).unwrap();
    assert!(conf.contains("autorenew = False"), "{conf}");
    // B renews; the CA reaches A, which answers with the fleet account's thumbprint.
    let o = b.run(&["--json", "renew", "--force"]);
    assert!(o.status.success(), "{}", crate::common::stderr(&o));
    assert_eq!(pebble.issued_count(), 2);
    let new = b.live_serial(host).unwrap();
    assert_ne!(new, serial);
    let said = a.ok(&["--json", "sync"]);
    let nb = |d: &crate::common::Device| {
        let pem = std::fs::read(d.le().join("live").join(host).join("cert.pem")).unwrap();
        let c = openssl::x509::X509::from_pem(&pem).unwrap();
        format!("{} .. {}", c.not_before(), c.not_after())
    };
    assert_eq!(
        a.live_serial(host).as_deref(),
        Some(new.as_str()),
        "a: {}, b: {}; sync said {said}",
        nb(&a),
        nb(&b)
    );
    a.apache.wait_serial(host, &new);
    for d in [&a, &b] {
        d.ok(&["doctor"]);
        let rows: serde_json::Value =
            serde_json::from_str(&d.ok(&["--json", "certificates"])).unwrap();
        assert_eq!(rows[0]["fleet"], true, "{rows}");
        assert!(rows[0].get("fleet_error").is_none(), "{rows}");
    }
    let st: serde_json::Value =
        serde_json::from_str(&a.ok(&["--json", "fleet", "status"])).unwrap();
    assert_eq!(st["lineages"][0]["renewed_by"], "dev-b", "{st}");
    assert_eq!(st["lineages"][0]["version"], 2, "{st}");
    // In fleet mode a revocation comes with a replacement the fleet takes.
    let o = a.run(&["revoke", "--siteid", &siteid(1), "--no-replace"]);
    assert_eq!(o.status.code(), Some(2), "{}", crate::common::stderr(&o));
    assert!(crate::common::stderr(&o).contains("fleet mode"), "{}", crate::common::stderr(&o));
    // A site undeployed on one device is not brought back by its next sync.
    a.ok(&["undeploy", "--siteid", &siteid(1)]);
    a.ok(&["sync"]);
    assert!(a.live_serial(host).is_none(), "the undeployed site's lineage came back");
    assert_eq!(a.stash_serial(host).as_deref(), Some(new.as_str()));
    // No private key in the clear anywhere under the prefix.
    let e = client(&cluster);
    for kv in e.get_prefix("/site-admin/v1/").unwrap().kvs {
        assert!(!String::from_utf8_lossy(&kv.value).contains("PRIVATE KEY"), "{}", kv.key_str());
    }
}

/// Put `d` in the fleet of `cluster` as `name` (one fleet key for all).
fn join_fleet(d: &crate::common::Device, cluster: &EtcdCluster, name: &str) {
    use std::os::unix::fs::PermissionsExt;
    let key = d.root.join("etc/site-admin/fleet.key");
    std::fs::write(&key, [7u8; 32]).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&d.config).unwrap()).unwrap();
    cfg["fleet"] = serde_json::json!({"endpoints": cluster.endpoints(), "device_id": name, "secret_file": "etc/site-admin/fleet.key"});
    std::fs::write(&d.config, cfg.to_string()).unwrap();
}

/// ARI is asked once for the fleet (against acme2certifier, which offers
/// ARI): the device that asks publishes the answer, the other takes it at
/// its next pass and sends no renewalInfo request of its own.
#[test]
fn ari_is_asked_once_for_the_whole_fleet() {
    use crate::common::a2c::{A2c, A2cOptions};
    use crate::common::{renew_json, site_json, siteid, Device};
    let t = tempfile::tempdir().unwrap();
    let cluster = EtcdCluster::start(t.path(), 3);
    let ca = A2c::start(
        &t.path().join("a2c"),
        A2cOptions { renewal_threshold_pctg: 85.0, retry_after: 600, window_secs: None },
    );
    let devices: Vec<Device> = ["dev-a", "dev-b"]
        .iter()
        .map(|name| {
            let mut d = Device::new();
            d.env.push(("SITE_ADMIN_ACME_SERVER".into(), ca.directory()));
            d.apache.start();
            join_fleet(&d, &cluster, name);
            d
        })
        .collect();
    let (a, b) = (&devices[0], &devices[1]);
    let h = "ari-fleet.example.test";
    let site = site_json(&siteid(1), h, Some(serde_json::json!({"letsencrypt": true})));
    a.deploy(&site);
    b.deploy(&site);
    assert_eq!(a.live_serial(h), b.live_serial(h), "one certificate for the fleet");
    let asked = || {
        ca.requests()
            .iter()
            .filter(|r| r["path"].as_str().unwrap_or("").contains("renewal-info"))
            .count()
    };
    let (code, rep, err) = renew_json(a, &[]);
    assert_eq!((code, rep["lineages"][0]["status"].as_str()), (0, Some("not_due")), "{err}");
    assert_eq!(asked(), 1);
    let (code, rep, err) = renew_json(b, &[]);
    assert_eq!((code, rep["lineages"][0]["status"].as_str()), (0, Some("not_due")), "{err}");
    assert!(rep["lineages"][0]["next_ari_check"].is_string(), "{rep}");
    assert_eq!(asked(), 1, "the second device asked ARI again: {:?}", ca.requests());
    let conf = |d: &Device| {
        std::fs::read_to_string(d.le().join("renewal").join(format!("{h}.conf"))).unwrap()
    };
    let chosen = |c: &str| c.lines().find(|l| l.contains("chosen")).map(str::to_string);
    assert!(
        chosen(&conf(a)).is_some() && chosen(&conf(a)) == chosen(&conf(b)),
        "one moment in the window for the fleet:\n{}\n{}",
        conf(a),
        conf(b)
    );
}
