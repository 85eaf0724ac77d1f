//! Fleet mode end to end (issue #19, tests 1–8): three devices with their
//! own roots and Apaches on 127.0.0.1/2/3 (same ports), a 3-member etcd,
//! one pebble whose DNS decides which device a validation reaches. Written
//! against the fleet contract: `sync`, `fleet status`, fleet-aware `renew`
//! and `deploy`, the per-lineage lock and its fencing.
//!
//! Lineages are made due without waiting: a site carries a certificate every
//! device trusts with 5 days of a 90-day life left (due by the third-of-life
//! rule); its renewal comes from pebble with a five-year life, so nothing is
//! due again in the same test.

use crate::common::fleet::{wait_line, FleetOptions, FleetWorld, IDS, PREFIX};
use crate::common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn le() -> Option<Value> {
    Some(json!({"letsencrypt": true}))
}

/// The status of `host` in a renew report.
fn status_of(rep: &Value, host: &str) -> String {
    rep["lineages"]
        .as_array()
        .and_then(|ls| ls.iter().find(|l| l["host"] == host))
        .map(|l| l["status"].as_str().unwrap_or("").to_string())
        .unwrap_or_else(|| panic!("no lineage {host} in {rep}"))
}

/// The live certificate and key of `host` on `d` belong together.
fn assert_pair_matches(d: &Device, host: &str) {
    let live = d.le().join("live").join(host);
    let cert =
        openssl::x509::X509::from_pem(&std::fs::read(live.join("cert.pem")).unwrap()).unwrap();
    let key = openssl::pkey::PKey::private_key_from_pem(
        &std::fs::read(live.join("privkey.pem")).unwrap(),
    )
    .unwrap();
    assert!(
        cert.public_key().unwrap().public_eq(&key),
        "{}: live cert.pem and privkey.pem do not match",
        live.display()
    );
}

/// Two snapshots are equal; else the paths that differ.
fn assert_same(
    before: &std::collections::BTreeMap<String, String>,
    after: &std::collections::BTreeMap<String, String>,
    what: &str,
) {
    let changed: Vec<String> = before
        .keys()
        .chain(after.keys())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .filter(|k| before.get(*k) != after.get(*k))
        .map(|k| {
            format!(
                "{k}: {} -> {}",
                before.get(k).map(|v| &v[..v.len().min(40)]).unwrap_or("none"),
                after.get(k).map(|v| &v[..v.len().min(40)]).unwrap_or("none")
            )
        })
        .collect();
    assert!(changed.is_empty(), "{what}: {changed:#?}");
}

/// Every device syncs and then serves the fleet's certificate for each host
/// (a TLS handshake on its own address), and its live pair matches.
fn assert_converged(w: &FleetWorld, hosts: &[&str]) -> Vec<String> {
    for i in 0..3 {
        w.sync(i);
    }
    hosts
        .iter()
        .map(|h| {
            let rec = w
                .status_lineage(0, h)
                .unwrap_or_else(|| panic!("the fleet has no record of {h}: {}", w.status(0)));
            let serial = rec["serial"].as_str().unwrap().trim_start_matches('0').to_lowercase();
            for (i, id) in IDS.iter().enumerate() {
                assert_eq!(
                    w.dev(i).live_serial(h).as_deref(),
                    Some(serial.as_str()),
                    "{id}: live {h} is not the fleet's"
                );
                w.wait_serial(i, h, &serial);
                assert_pair_matches(w.dev(i), h);
            }
            serial
        })
        .collect()
}

/// Deploy each (host, days left) on every device, site ids from `first`,
/// with a certificate due now; after a sync on each, the fleet has every
/// record. The carried serials.
fn due_everywhere(w: &FleetWorld, first: u32, hosts: &[(&str, f64)]) -> Vec<String> {
    let serials: Vec<String> = hosts
        .iter()
        .enumerate()
        .map(|(n, (h, days_left))| {
            let (json, serial) = w.due_site(first + n as u32, h, *days_left);
            w.deploy_everywhere(&json);
            serial
        })
        .collect();
    for i in 0..3 {
        w.sync(i);
    }
    for ((h, _), s) in hosts.iter().zip(&serials) {
        let rec = w
            .status_lineage(0, h)
            .unwrap_or_else(|| panic!("no fleet record of {h} after a sync on every device"));
        assert_eq!(
            rec["serial"].as_str().map(|x| x.trim_start_matches('0').to_lowercase()).as_deref(),
            Some(s.as_str())
        );
        for i in 0..3 {
            w.wait_serial(i, h, s);
        }
    }
    serials
}

/// [`due_everywhere`] for hosts with 5 days left.
fn due5(w: &FleetWorld, hosts: &[&str]) -> Vec<String> {
    due_everywhere(w, 1, &hosts.iter().map(|h| (*h, 5.0)).collect::<Vec<_>>())
}

/// The harness itself, without a fleet: etcd answers, all three Apaches
/// listen on their own address, and pebble's DNS decides which device
/// validates (b deploys while its host points at b; at a, b cannot).
#[test]
fn harness_the_world_starts_and_dns_decides_which_device_validates() {
    let w = FleetWorld::new();
    assert_eq!(w.etcd.endpoints().len(), 3);
    assert!(w.etcd.leader().is_some(), "the cluster has a leader");
    assert!(w.etcd_get_prefix_raw().is_empty(), "a fresh fleet is empty");
    for (i, d) in w.devices.iter().enumerate() {
        assert!(d.apache.is_running(), "{} Apache", IDS[i]);
        assert_eq!(d.apache.ip, crate::common::fleet::IPS[i]);
        assert_eq!(
            (d.apache.http_port, d.apache.https_port),
            (w.dev(0).apache.http_port, w.dev(0).apache.https_port)
        );
        assert_eq!(
            std::fs::read(d.root.join(crate::common::fleet::SECRET_FILE)).unwrap(),
            w.secret
        );
    }
    w.set_fleet(1, None);
    let h = "harness.fleet.test";
    // DNS at a: b's order cannot validate.
    w.set_dns(h, 0);
    let f = w.dev(1).tmp.path().join("site.json");
    std::fs::write(&f, site_json(&siteid(1), h, le())).unwrap();
    let before = w.issued_count();
    let o = w.dev(1).run(&["--json", "deploy", "--file", f.to_str().unwrap()]);
    assert_eq!(
        w.issued_count(),
        before,
        "validated at the wrong device: {}{}",
        stdout(&o),
        stderr(&o)
    );
    // DNS at b: it validates and serves it, on 127.0.0.2 only.
    w.set_dns(h, 1);
    let rep = w.dev(1).deploy(&site_json(&siteid(1), h, le()));
    assert_eq!(w.issued_count(), before + 1, "{rep}");
    let serial = w.dev(1).live_serial(h).unwrap();
    w.wait_serial(1, h, &serial);
    assert_ne!(w.served_serial(0, h).as_deref(), Some(serial.as_str()));
    assert_ne!(w.served_serial(2, h).as_deref(), Some(serial.as_str()));
}

/// 1. Five lineages due; `renew` on all three devices at once, twice: pebble
///    issues exactly one certificate per lineage; after a sync all three
///    serve the same serial for each host, share one account, and `doctor`
///    is clean on each.
#[test]
fn renew_on_three_devices_at_once_orders_each_due_lineage_exactly_once() {
    let w = FleetWorld::new();
    let hosts: Vec<String> = (0..5).map(|i| format!("due{i}.fleet.test")).collect();
    let hosts: Vec<&str> = hosts.iter().map(String::as_str).collect();
    let carried = due5(&w, &hosts);
    let before = w.issued_count();
    for round in 0..2 {
        let runs: Vec<_> = (0..3).map(|i| w.spawn(i, &["--json", "renew"], &[])).collect();
        let reps: Vec<Value> = runs
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                let o = r.wait(Duration::from_secs(150));
                assert_eq!(
                    o.status.code(),
                    Some(0),
                    "round {round}, {}: {}{}",
                    IDS[i],
                    stdout(&o),
                    stderr(&o)
                );
                serde_json::from_str(&stdout(&o)).unwrap_or_else(|e| panic!("{e}: {}", stdout(&o)))
            })
            .collect();
        for h in &hosts {
            let st: Vec<String> = reps.iter().map(|r| status_of(r, h)).collect();
            if round == 0 {
                assert_eq!(
                    st.iter().filter(|s| *s == "renewed").count(),
                    1,
                    "{h}: exactly one device renews it: {st:?}"
                );
                assert!(
                    st.iter().all(|s| ["renewed", "peer_renewed", "not_due"].contains(&s.as_str())),
                    "{h}: {st:?}"
                );
            } else {
                assert!(
                    st.iter().all(|s| s == "not_due"),
                    "{h}: renewed twice in one due period: {st:?}"
                );
            }
        }
        assert_eq!(
            w.issued_count() - before,
            hosts.len(),
            "round {round}: pebble issued one certificate per lineage"
        );
    }
    let serials = assert_converged(&w, &hosts);
    for (s, c) in serials.iter().zip(&carried) {
        assert_ne!(s, c, "the fleet still has the carried certificate");
    }
    // Every device's heartbeat says it serves the fleet's certificates.
    let st = w.status(2);
    for id in IDS {
        let hb = st["devices"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["device"] == id)
            .unwrap_or_else(|| panic!("no heartbeat of {id}: {st}"));
        for (h, s) in hosts.iter().zip(&serials) {
            let served = hb["serves"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p[0] == *h)
                .and_then(|p| p[1].as_str())
                .map(|x| x.trim_start_matches('0').to_lowercase());
            assert_eq!(served.as_deref(), Some(s.as_str()), "{id} {h}: {hb}");
        }
    }
    let accounts: Vec<Value> = (0..3).map(|i| w.sync(i)["account"].clone()).collect();
    assert!(
        accounts[0].is_string() && accounts.iter().all(|a| *a == accounts[0]),
        "one account for the fleet: {accounts:?}"
    );
    for h in &hosts {
        let rec = w.status_lineage(1, h).unwrap();
        assert!(rec["lock"].is_null(), "{h}: a lock left behind: {rec}");
        assert_eq!(rec["version"], 2, "{h}: the carried version and one renewal: {rec}");
    }
    for d in &w.devices {
        d.ok(&["doctor"]);
    }
}

/// 2. Validation reaches a device other than the one that ordered, also one
///    that has not deployed the site yet: its stateless answer
///    (`<token>.<thumbprint>` of the fleet's account) satisfies pebble.
#[test]
fn validation_succeeds_on_a_device_other_than_the_orderer() {
    let w = FleetWorld::new();
    let (h0, h1, h2) = ("first.fleet.test", "tob.fleet.test", "toc.fleet.test");
    // The fleet's account comes with its first order (validated at a).
    w.set_dns(h0, 0);
    w.deploy_everywhere(&site_json(&siteid(1), h0, le()));
    let before = w.issued_count();
    assert_eq!(before, 1, "b and c took a's certificate");
    // b and c answer any token with the fleet account's thumbprint.
    let answers: Vec<String> = (1..3)
        .map(|i| {
            let (code, _, body) =
                w.dev(i).apache.http_get(h0, "/.well-known/acme-challenge/Tok-3n_x");
            assert_eq!(code, 200, "{}: {body}", IDS[i]);
            let thumb = body
                .trim()
                .strip_prefix("Tok-3n_x.")
                .unwrap_or_else(|| panic!("{}: not a key authorization: {body}", IDS[i]))
                .to_string();
            assert_eq!(thumb.len(), 43, "a SHA-256 thumbprint, base64url: {thumb}");
            thumb
        })
        .collect();
    assert_eq!(answers[0], answers[1], "b and c answer for the same account");

    // New sites ordered by a while their names point at b and at c, which
    // have not deployed them.
    w.set_dns(h1, 1);
    w.set_dns(h2, 2);
    for (n, h) in [(2, h1), (3, h2)] {
        w.dev(0).deploy(&site_json(&siteid(n), h, le()));
        w.wait_serial(0, h, &w.dev(0).live_serial(h).unwrap());
    }
    assert_eq!(w.issued_count(), before + 2);
    for i in 1..3 {
        w.dev(i).deploy(&site_json(&siteid(2), h1, le()));
        w.dev(i).deploy(&site_json(&siteid(3), h2, le()));
    }
    assert_eq!(w.issued_count(), before + 2, "b and c took the fleet's certificates");

    // a renews every host while each points at b or c.
    w.set_dns(h0, 2);
    w.set_dns(h1, 2);
    w.set_dns(h2, 1);
    let (code, rep, err) = w.renew(0, &["--force"]);
    assert_eq!(code, 0, "{rep}\n{err}\n{}", w.logs());
    for h in [h0, h1, h2] {
        assert_eq!(status_of(&rep, h), "renewed", "{rep}");
    }
    assert_eq!(w.issued_count(), before + 5);
    assert_converged(&w, &[h0, h1, h2]);
}

/// 3. The lock holder dies (a) after newOrder, (b) after finalize and before
///    its write: another device completes within the lock's TTL and one
///    pass; (a) costs no extra issuance, (b) at most one; no device ever has
///    a mismatched pair.
fn holder_killed_at(step: &str) -> (usize, String) {
    let w = FleetWorld::new();
    let h = "killed.fleet.test";
    let carried = due5(&w, &[h]).remove(0);
    let before = w.issued_count();
    let o = w.run_env(0, &["--json", "renew"], &[("SITE_ADMIN_FAULT", step)]);
    assert!(
        !o.status.success() && stderr(&o).contains("fault injected"),
        "a did not die at {step}: {}{}",
        stdout(&o),
        stderr(&o)
    );
    assert_eq!(
        w.dev(0).live_serial(h).as_deref(),
        Some(carried.as_str()),
        "a wrote before it died"
    );
    assert_pair_matches(w.dev(0), h);
    w.wait_serial(0, h, &carried);

    let start = Instant::now();
    let (code, rep, err) = w.renew(1, &[]);
    let took = start.elapsed();
    assert_eq!(code, 0, "{rep}\n{err}");
    assert!(
        took < Duration::from_secs(30 + 25),
        "b took {took:?}: more than the lock's TTL and one pass"
    );
    let st = status_of(&rep, h);
    assert!(st == "renewed" || st == "peer_renewed", "{rep}");
    let serials = assert_converged(&w, &[h]);
    assert_ne!(serials[0], carried);
    (w.issued_count() - before, st)
}

#[test]
fn a_holder_killed_after_new_order_costs_no_extra_issuance() {
    let (issued, st) = holder_killed_at("acme.ordered");
    assert_eq!(st, "renewed");
    assert_eq!(issued, 1, "only b's order was finalized");
}

#[test]
fn a_holder_killed_after_finalize_costs_at_most_one_extra_issuance() {
    let (issued, st) = holder_killed_at("renew.issued");
    // a's certificate was issued; b orders again unless a had published it.
    match st.as_str() {
        "renewed" => assert_eq!(issued, 2),
        _ => assert_eq!(issued, 1),
    }
}

/// 4. The holder is stopped (SIGSTOP) past the lock's TTL after finalize;
///    a peer takes the lock and renews; resumed, the holder's write is
///    refused: it exits 1 with "fleet lock lost" and its tree is unchanged.
#[test]
fn a_holder_paused_past_the_ttl_cannot_write_and_says_fleet_lock_lost() {
    let w = FleetWorld::new();
    let h = "paused.fleet.test";
    let carried = due5(&w, &[h]).remove(0);
    let (pause, trace) = (w.dir.path().join("pause"), w.dir.path().join("trace"));
    std::fs::write(&pause, "").unwrap();
    let a = w.spawn(
        0,
        &["--json", "renew"],
        &[
            ("SITE_ADMIN_FAULT_PAUSE", &format!("renew.issued:{}", pause.display())),
            ("SITE_ADMIN_FAULT_TRACE", trace.to_str().unwrap()),
        ],
    );
    assert!(
        wait_line(&trace, "renew.issued", Duration::from_secs(60)),
        "a never reached renew.issued"
    );
    a.signal("STOP");
    std::fs::remove_file(&pause).unwrap();
    // The tree as a left it (without certbot's lock file, which a holds while it runs).
    let tree_of = |d: &Device| {
        let mut t = snapshot(&d.le());
        t.remove(".certbot.lock");
        t
    };
    let tree = tree_of(w.dev(0));

    // b waits for a's lock until its lease runs out, then renews.
    let start = Instant::now();
    let (code, rep, err) = w.renew(1, &[]);
    assert_eq!(code, 0, "{rep}\n{err}");
    assert_eq!(status_of(&rep, h), "renewed", "{rep}");
    assert!(
        start.elapsed() > Duration::from_secs(5),
        "b renewed at once while a held the lock ({:?})",
        start.elapsed()
    );
    let renewed = w.dev(1).live_serial(h).unwrap();

    a.signal("CONT");
    let o = a.wait(Duration::from_secs(60));
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    assert!(stderr(&o).contains("fleet lock lost"), "{}", stderr(&o));
    assert_same(&tree, &tree_of(w.dev(0)), "a wrote after it lost the lock");
    assert_eq!(w.dev(0).live_serial(h).as_deref(), Some(carried.as_str()));
    let rec = w.status_lineage(2, h).unwrap();
    assert_eq!(rec["renewed_by"], "dev-b", "{rec}");
    assert_eq!(assert_converged(&w, &[h]), vec![renewed]);
}

/// 5. The etcd leader is killed while a renewal runs: it completes (or one
///    retry does), and nothing is ordered twice.
#[test]
fn the_etcd_leader_killed_during_a_renewal_costs_no_duplicate_order() {
    let mut w = FleetWorld::new();
    let hosts = ["l0.fleet.test", "l1.fleet.test", "l2.fleet.test"];
    due5(&w, &hosts);
    let before = w.issued_count();
    let (pause, trace) = (w.dir.path().join("pause"), w.dir.path().join("trace"));
    std::fs::write(&pause, "").unwrap();
    let a = w.spawn(
        0,
        &["--json", "renew"],
        &[
            ("SITE_ADMIN_FAULT_PAUSE", &format!("renew.issued:{}", pause.display())),
            ("SITE_ADMIN_FAULT_TRACE", trace.to_str().unwrap()),
        ],
    );
    assert!(
        wait_line(&trace, "renew.issued", Duration::from_secs(60)),
        "a never reached renew.issued"
    );
    let leader = w.etcd.leader().expect("a leader");
    w.etcd.kill(leader);
    std::fs::remove_file(&pause).unwrap();
    let o = a.wait(Duration::from_secs(120));
    let mut renewed: Vec<String> = Vec::new();
    let rep: Value = serde_json::from_str(&stdout(&o))
        .unwrap_or_else(|e| panic!("{e}: {}{}", stdout(&o), stderr(&o)));
    renewed.extend(hosts.iter().filter(|h| status_of(&rep, h) == "renewed").map(|h| h.to_string()));
    if o.status.code() != Some(0) {
        // One retry once the cluster has its new leader.
        let (code, rep, err) = w.renew(0, &[]);
        assert_eq!(code, 0, "the retry failed too: {rep}\n{err}");
        renewed.extend(
            hosts.iter().filter(|h| status_of(&rep, h) == "renewed").map(|h| h.to_string()),
        );
    }
    renewed.sort();
    assert_eq!(renewed, hosts.to_vec(), "each renewed once: {}", stderr(&o));
    assert_eq!(w.issued_count() - before, hosts.len(), "no duplicate order");
    for i in 1..3 {
        let (code, rep, err) = w.renew(i, &[]);
        assert_eq!(code, 0, "{rep}\n{err}");
        for h in hosts {
            assert!(["not_due", "peer_renewed"].contains(&status_of(&rep, h).as_str()), "{rep}");
        }
    }
    assert_eq!(w.issued_count() - before, hosts.len());
    assert_converged(&w, &hosts);
    for h in hosts {
        assert_eq!(w.status_lineage(1, h).unwrap()["version"], 2, "{h}: published once");
    }
    assert_eq!(
        w.etcd_get_prefix_raw()
            .iter()
            .filter(|(k, _)| k.starts_with(&format!("{PREFIX}lineages/")))
            .count(),
        hosts.len()
    );
}

/// 6. One device cut off from etcd: it keeps serving, sends no ACME request
///    (unless the emergency rule applies), and says so in the renew report
///    and in `certificates`; once back, one `sync` converges it — the newest
///    usable certificate wins in both directions.
#[test]
fn a_device_cut_off_from_etcd_keeps_serving_orders_nothing_and_converges_on_return() {
    let w = FleetWorld::new();
    let (far, near) = ("far.fleet.test", "near.fleet.test");
    let carried = due_everywhere(&w, 1, &[(far, 20.0), (near, 5.0)]);
    let (carried_far, carried_near) = (&carried[0], &carried[1]);
    let closed = free_port();
    let mut cut = w.fleet_object(2);
    cut["endpoints"] = json!([format!("http://127.0.0.1:{closed}")]);
    w.set_fleet(2, Some(cut.clone()));

    let (log, issued) = (w.pebble.log().len(), w.issued_count());
    let (code, rep, err) = w.renew(2, &[]);
    assert_eq!(code, 1, "{rep}\n{err}");
    for h in [far, near] {
        assert_eq!(status_of(&rep, h), "fleet_unavailable", "{rep}");
    }
    assert_eq!(rep["fleet"]["device"], "dev-c", "{rep}");
    assert!(
        rep["fleet"]["error"].as_str().is_some_and(|e| !e.is_empty())
            && rep["fleet"]["since"].is_string(),
        "{rep}"
    );
    assert_eq!(
        (w.pebble.log().len(), w.issued_count()),
        (log, issued),
        "c talked to the CA while cut off"
    );
    w.wait_serial(2, far, carried_far);
    w.wait_serial(2, near, carried_near);
    // `certificates` and `doctor` while cut off (checked at the end, after the rest).
    let fleet_error = rep["fleet"]["error"].as_str().unwrap().to_string();
    let certificates = w.dev(2).run(&["--json", "certificates"]);
    let doctor = w.dev(2).run(&["doctor"]);

    // The others renew both meanwhile.
    let (code, rep, err) = w.renew(0, &[]);
    assert_eq!(code, 0, "{rep}\n{err}");
    assert_eq!(w.issued_count(), issued + 2);
    // A clock tick, so c's emergency certificate expires later than a's.
    std::thread::sleep(Duration::from_millis(1100));

    // The emergency rule: fewer days left than isolated_renew_below.
    cut["isolated_renew_below"] = json!(7);
    w.set_fleet(2, Some(cut));
    let (code, rep, err) = w.renew(2, &[]);
    assert_eq!(code, 1, "{rep}\n{err}");
    assert_eq!(status_of(&rep, far), "fleet_unavailable", "{rep}");
    assert_eq!(status_of(&rep, near), "renewed", "{rep}");
    assert_eq!(w.issued_count(), issued + 3);
    let emergency = w.dev(2).live_serial(near).unwrap();
    w.wait_serial(2, near, &emergency);

    // Back: one sync takes a's far and pushes c's newer near.
    w.set_fleet(2, Some(w.fleet_object(2)));
    let s = w.sync(2);
    assert_eq!(s["taken"], json!([far]), "{s}");
    assert_eq!(s["pushed"], json!([near]), "{s}");
    let serials = assert_converged(&w, &[far, near]);
    assert_eq!(serials[1], emergency);
    assert_eq!(w.issued_count(), issued + 3);

    // While cut off, `doctor` and `certificates` named the fleet error, and
    // `certificates` marked the fleet's lineages.
    let names_error =
        |said: &str| said.contains(&fleet_error) || said.contains(&format!("127.0.0.1:{closed}"));
    let said = format!("{}{}", stdout(&doctor), stderr(&doctor));
    assert!(names_error(&said), "doctor does not name the fleet error ({fleet_error}): {said}");
    let said = format!("{}{}", stdout(&certificates), stderr(&certificates));
    assert!(
        names_error(&said),
        "certificates does not name the fleet error ({fleet_error}): {said}"
    );
    let rows: Value =
        serde_json::from_str(&stdout(&certificates)).unwrap_or_else(|e| panic!("{e}: {said}"));
    let rows = rows
        .as_array()
        .cloned()
        .unwrap_or_else(|| rows["certificates"].as_array().cloned().unwrap_or_default());
    assert!(
        rows.iter().any(|r| r["host"] == far && r["fleet"] == true),
        "no row of {far} with \"fleet\": true: {said}"
    );
}

/// 7. With client TLS and auth: nothing under the prefix holds a private
///    key; a device whose certificate etcd's CA did not sign, or whose role
///    lacks the prefix, is refused and changes nothing.
#[test]
fn no_private_key_reaches_etcd_and_strangers_are_refused() {
    let w = FleetWorld::with(FleetOptions { tls: true, ..Default::default() });
    let h = "sealed.fleet.test";
    w.set_dns(h, 0);
    w.deploy_everywhere(&site_json(&siteid(1), h, le()));
    assert_eq!(w.issued_count(), 1);
    assert_converged(&w, &[h]);
    let kvs = w.etcd_get_prefix_raw();
    let keys: Vec<&str> = kvs.iter().map(|(k, _)| k.as_str()).collect();
    assert!(keys.contains(&format!("{PREFIX}lineages/{h}").as_str()), "{keys:?}");
    assert!(
        keys.iter().any(|k| k.starts_with(&format!("{PREFIX}accounts/"))),
        "the account is shared: {keys:?}"
    );
    assert!(
        keys.iter().any(|k| k.starts_with(&format!("{PREFIX}devices/"))),
        "heartbeats: {keys:?}"
    );
    for (k, v) in &kvs {
        let v = String::from_utf8_lossy(v);
        assert!(
            !v.contains("PRIVATE KEY") && !v.contains("\"d\":"),
            "{k} holds a private key in the clear"
        );
    }

    let refused = |fleet: Value, needle: &str, code: i32| {
        w.set_fleet(2, Some(fleet));
        let before = snapshot(&w.dev(2).root.join("etc"));
        let o = w.dev(2).run(&["--json", "sync"]);
        assert_eq!(o.status.code(), Some(code), "{}{}", stdout(&o), stderr(&o));
        let said = format!("{}{}", stdout(&o), stderr(&o));
        assert!(said.contains(needle), "expected {needle:?} in: {said}");
        assert!(!said.contains("pw-"), "a password in a message: {said}");
        assert_same(
            &before,
            &snapshot(&w.dev(2).root.join("etc")),
            "a refused sync changed the device",
        );
    };
    // A client certificate from another CA: the handshake is refused.
    let stranger = crate::common::etcd::EtcdPki::create(&w.dir.path().join("stranger"));
    let (cert, key) = stranger.client("dev-c");
    let mut f = w.fleet_object(2);
    f["cert"] = cert.display().to_string().into();
    f["key"] = key.display().to_string().into();
    refused(f, "fleet", 1);
    // No client certificate at all: refused before etcd is asked.
    let mut f = w.fleet_object(2);
    f.as_object_mut().unwrap().remove("cert");
    f.as_object_mut().unwrap().remove("key");
    refused(f, "fleet.cert", 2);
    // A user whose role may use another prefix only.
    let mut f = w.fleet_object(2);
    f["user"] = "outsider".into();
    std::fs::write(w.dev(2).root.join("etc/site-admin/etcd.password"), "pw-outsider").unwrap();
    refused(f, "permission denied", 1);
    // Its own user again: it syncs.
    w.set_fleet(2, Some(w.fleet_object(2)));
    w.sync(2);
}

/// 8. A second device deploying a site the fleet already has a usable
///    certificate for takes it and orders nothing (the DNS points nowhere,
///    so any order would fail).
#[test]
fn a_second_device_deploying_a_site_the_fleet_serves_orders_nothing() {
    let w = FleetWorld::new();
    let h = "shared.fleet.test";
    w.set_dns(h, 0);
    let json = site_json(&siteid(1), h, le());
    w.dev(0).deploy(&json);
    let serial = w.dev(0).live_serial(h).unwrap();
    let before = w.issued_count();
    assert_eq!(before, 1);
    w.pebble.set_a(h, "127.0.0.9");
    for (i, id) in IDS.iter().enumerate().skip(1) {
        let rep = w.dev(i).deploy(&json);
        assert_eq!(w.issued_count(), before, "{id} ordered: {rep}");
        assert_eq!(w.dev(i).live_serial(h).as_deref(), Some(serial.as_str()), "{rep}");
        w.wait_serial(i, h, &serial);
        assert_pair_matches(w.dev(i), h);
    }
    let st = w.status(1);
    let rec = st["lineages"].as_array().unwrap().iter().find(|l| l["host"] == h).unwrap().clone();
    assert_eq!(
        (rec["renewed_by"].as_str(), rec["version"].as_i64()),
        (Some("dev-a"), Some(1)),
        "{st}"
    );
    // a renews; c, whose fleet key is not the fleet's, cannot open the new
    // record: its sync names the record's key and changes nothing on c.
    w.set_dns(h, 0);
    let (code, rep, err) = w.renew(0, &["--force"]);
    assert_eq!((code, status_of(&rep, h).as_str()), (0, "renewed"), "{rep}\n{err}");
    std::fs::write(w.dev(2).root.join(crate::common::fleet::SECRET_FILE), [9u8; 32]).unwrap();
    let before = snapshot(&w.dev(2).le());
    let o = w.dev(2).run(&["--json", "sync"]);
    let said = format!("{}{}", stdout(&o), stderr(&o));
    // (The account's record or the lineage's, whichever it opens first.)
    assert!(
        said.contains(&format!("{PREFIX}lineages/{h}"))
            || said.contains(&format!("{PREFIX}accounts/")),
        "the refusal names the record's key: {said}"
    );
    assert_same(&before, &snapshot(&w.dev(2).le()), "a record sealed with another key changed c");
    w.wait_serial(2, h, &serial);
    std::fs::write(w.dev(2).root.join(crate::common::fleet::SECRET_FILE), w.secret).unwrap();
    let s = w.sync(2);
    assert_eq!(s["taken"], json!([h]), "{s}");

    // `fleet configured` (systemd's ExecCondition for the sync timer).
    assert_eq!(w.dev(1).run(&["fleet", "configured"]).status.code(), Some(0));
    w.set_fleet(2, None);
    let o = w.dev(2).run(&["fleet", "configured"]);
    assert_eq!((o.status.code(), o.stdout.is_empty()), (Some(1), true), "{}", stderr(&o));
    let renewal = std::fs::read_to_string(w.dev(1).le().join(format!("renewal/{h}.conf"))).unwrap();
    assert!(
        renewal.contains("autorenew = False"),
        "certbot must not renew a fleet lineage: {renewal}"
    );
}
