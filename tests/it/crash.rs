//! Crash safety (docs/design.md, invariants 3 and 5). Every step of deploy,
//! redeploy, undeploy, restore and renew is interrupted in turn
//! (deterministic fault injection: the process aborts as under `kill -9`),
//! then a random-kill sweep; after each, the next command recovers, `doctor`
//! finds nothing (invariants 1, 2, 4), Apache's configtest passes
//! (invariant 5), and no usable LKC is lost (invariant 3).
use crate::common::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::process::Command;

const H: &str = "crash.example.test";

fn id() -> String {
    siteid(1)
}

fn write_site(d: &Device, name: &str, tls: Option<Value>) -> String {
    let f = d.tmp.path().join(name);
    std::fs::write(&f, site_json(&id(), H, tls)).unwrap();
    f.display().to_string()
}

fn le() -> Option<Value> {
    Some(json!({"letsencrypt": true}))
}

/// Run site-admin with extra environment.
fn run_env(d: &Device, args: &[&str], extra: &[(&str, String)]) -> std::process::Output {
    let mut env: Vec<(&str, &str)> = d.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    for (k, v) in extra {
        env.push((k, v.as_str()));
    }
    run(args, &env, None)
}

fn configtest_passes(d: &Device) -> bool {
    Command::new(apache::BIN)
        .args(["-f", d.apache.conf.to_str().unwrap(), "-t"])
        .output()
        .unwrap()
        .status
        .success()
}

fn doctor_clean(d: &Device) -> Result<(), String> {
    let o = d.run(&["--json", "doctor"]);
    let v: Value = serde_json::from_str(&stdout(&o))
        .map_err(|e| format!("doctor printed no JSON: {e} {}", stderr(&o)))?;
    if v["ok"] == true && o.status.success() {
        Ok(())
    } else {
        Err(format!("doctor: {v}"))
    }
}

/// One operation to interrupt: how to set the device up, the command, and
/// what must hold once the next run has recovered.
struct Scenario {
    name: &'static str,
    setup: fn(&World) -> Vec<String>,
    op: fn(&World) -> Vec<String>,
    /// Serials of LKCs that must survive: live, stashed, or superseded by a newer live version.
    expect: fn(&World, &[String]) -> Result<(), String>,
}

fn served_live(w: &World) -> Result<(), String> {
    let live = w.dev.live_serial(H).ok_or("no live certificate")?;
    let start = std::time::Instant::now();
    loop {
        if w.dev.apache.served_serial(H).as_deref() == Some(live.as_str()) {
            return Ok(());
        }
        if start.elapsed() > std::time::Duration::from_secs(10) {
            return Err(format!(
                "Apache serves {:?}, live is {live}",
                w.dev.apache.served_serial(H)
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

fn kept(w: &World, serials: &[String]) -> Result<(), String> {
    let archive = w.dev.le().join("archive").join(H);
    for s in serials {
        let in_live = w.dev.live_serial(H).as_deref() == Some(s.as_str());
        let in_stash = w.dev.stash_serial(H).as_deref() == Some(s.as_str());
        let superseded = w.dev.live_serial(H).is_some()
            && std::fs::read_dir(&archive)
                .map(|rd| {
                    rd.filter_map(|e| e.ok())
                        .any(|e| cert_serial(&e.path()).as_deref() == Some(s.as_str()))
                })
                .unwrap_or(false);
        if !(in_live || in_stash || superseded) {
            return Err(format!("invariant 3: the LKC {s} was lost"));
        }
    }
    Ok(())
}

fn deploy_le(w: &World) -> Vec<String> {
    vec!["deploy".into(), "--file".into(), write_site(&w.dev, "le.json", le())]
}

fn setup_deployed(w: &World) -> Vec<String> {
    w.dev.deploy(&site_json(&id(), H, le()));
    vec![w.dev.live_serial(H).unwrap()]
}

fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario {
            name: "deploy",
            setup: |_| vec![],
            op: deploy_le,
            expect: |w, _| served_live(w),
        },
        Scenario {
            name: "redeploy_to_okc",
            setup: setup_deployed,
            op: |w| {
                let (k, c) = self_signed(&[H], 30);
                vec![
                    "deploy".into(),
                    "--file".into(),
                    write_site(&w.dev, "okc.json", Some(json!({"key": k, "crt": c}))),
                ]
            },
            expect: |w, lkc| {
                kept(w, lkc)?;
                let crt = w.dev.root.join("etc/httpd/ssl").join(format!("{}.crt", id()));
                let okc = cert_serial(&crt).ok_or("no OKC")?;
                if w.dev.stash_serial(H).as_deref() != Some(lkc[0].as_str()) {
                    return Err("the LKC is not stashed".into());
                }
                let start = std::time::Instant::now();
                while w.dev.apache.served_serial(H).as_deref() != Some(okc.as_str()) {
                    if start.elapsed() > std::time::Duration::from_secs(10) {
                        return Err("the OKC is not served".into());
                    }
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Ok(())
            },
        },
        Scenario {
            name: "redeploy_unstash",
            setup: |w| {
                let s = setup_deployed(w);
                w.dev.ok(&["undeploy", "--siteid", &id()]);
                s
            },
            op: deploy_le,
            expect: |w, lkc| {
                kept(w, lkc)?;
                served_live(w)?;
                if w.dev.live_serial(H).as_deref() != Some(lkc[0].as_str()) {
                    return Err("a new certificate was issued instead of unstashing".into());
                }
                Ok(())
            },
        },
        Scenario {
            name: "undeploy",
            setup: setup_deployed,
            op: |_| vec!["undeploy".into(), "--siteid".into(), id()],
            expect: |w, lkc| {
                kept(w, lkc)?;
                if w.dev.stored_site(&id()).is_some() {
                    return Err("still deployed".into());
                }
                if w.dev.stash_serial(H).as_deref() != Some(lkc[0].as_str()) {
                    return Err("the LKC is not in the stash".into());
                }
                Ok(())
            },
        },
        Scenario {
            name: "restore",
            setup: |w| {
                let s = setup_deployed(w);
                let out = w.dev.tmp.path().join("backup.json");
                w.dev.ok(&["backup", "--all", "--out", out.to_str().unwrap()]);
                w.dev.ok(&["undeploy", "--siteid", &id()]);
                // The stash goes too: the restore must import the carried LKC.
                std::fs::remove_dir_all(w.dev.le().join("norenewal")).unwrap();
                std::fs::remove_dir_all(w.dev.le().join("archive").join(H)).unwrap();
                s
            },
            op: |w| {
                vec![
                    "restore".into(),
                    "--in".into(),
                    w.dev.tmp.path().join("backup.json").display().to_string(),
                ]
            },
            expect: |w, lkc| {
                served_live(w)?;
                if w.dev.live_serial(H).as_deref() != Some(lkc[0].as_str()) {
                    return Err("the carried certificate is not live".into());
                }
                Ok(())
            },
        },
        Scenario {
            name: "renew",
            setup: setup_deployed,
            op: |_| vec!["renew".into(), "--force".into()],
            expect: |w, lkc| {
                kept(w, lkc)?;
                served_live(w)
            },
        },
    ]
}

/// The steps an operation goes through, each with its occurrence number.
fn steps_of(s: &Scenario) -> Vec<String> {
    let w = World::new();
    let _ = (s.setup)(&w);
    let trace = w.dev.tmp.path().join("trace");
    let args = (s.op)(&w);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = run_env(&w.dev, &argv, &[("SITE_ADMIN_FAULT_TRACE", trace.display().to_string())]);
    assert!(o.status.success(), "{}: {}", s.name, stderr(&o));
    let mut seen: BTreeMap<String, u32> = BTreeMap::new();
    std::fs::read_to_string(&trace)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let n = seen.entry(l.to_string()).or_insert(0);
            *n += 1;
            format!("{l}#{n}")
        })
        .collect()
}

fn interrupt_every_step(name: &str) {
    let s = scenarios().into_iter().find(|s| s.name == name).unwrap();
    let steps = steps_of(&s);
    assert!(steps.len() >= 5, "{name}: only {steps:?}");
    eprintln!("{name}: {} steps: {steps:?}", steps.len());
    for step in &steps {
        let w = World::new();
        let lkc = (s.setup)(&w);
        let args = (s.op)(&w);
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = run_env(&w.dev, &argv, &[("SITE_ADMIN_FAULT", step.clone())]);
        assert!(
            o.status.code().is_none(),
            "{name} at {step}: the fault did not abort ({:?}): {}",
            o.status,
            stderr(&o)
        );
        // The next run of the same command recovers and finishes the job.
        let o = w.dev.run(&argv);
        let undeploy_done = name == "undeploy"
            && o.status.code() == Some(2)
            && stderr(&o).contains("is not deployed");
        assert!(
            o.status.success() || undeploy_done,
            "{name} at {step}: the next run failed: {}",
            stderr(&o)
        );
        if let Err(e) = doctor_clean(&w.dev) {
            panic!("{name} at {step}: {e}");
        }
        assert!(configtest_passes(&w.dev), "{name} at {step}: Apache's configtest fails");
        if let Err(e) = (s.expect)(&w, &lkc) {
            panic!("{name} at {step}: {e}");
        }
    }
}

#[test]
fn interrupt_every_step_of_deploy() {
    interrupt_every_step("deploy");
}

#[test]
fn interrupt_every_step_of_redeploy_to_okc() {
    interrupt_every_step("redeploy_to_okc");
}

#[test]
fn interrupt_every_step_of_redeploy_unstash() {
    interrupt_every_step("redeploy_unstash");
}

#[test]
fn interrupt_every_step_of_undeploy() {
    interrupt_every_step("undeploy");
}

#[test]
fn interrupt_every_step_of_restore() {
    interrupt_every_step("restore");
}

#[test]
fn interrupt_every_step_of_renew() {
    interrupt_every_step("renew");
}

/// xorshift64*: enough randomness for kill timings, seeded and printed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn random_kill_sweep() {
    let seed = std::env::var("SWEEP_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
            as u64
            | 1
    });
    eprintln!("random_kill_sweep seed {seed} (SWEEP_SEED={seed} repeats it)");
    let mut rng = Rng(seed);
    let w = World::new();
    let d = &w.dev;
    let hosts: Vec<String> = (0..3).map(|i| format!("k{i}.example.test")).collect();
    // Each site also changes its hostname now and then (kN ↔ kN-b).
    let renamed: Vec<String> = (0..3).map(|i| format!("k{i}-b.example.test")).collect();
    let all_hosts: Vec<&String> = hosts.iter().chain(&renamed).collect();
    let runs = 80;
    let mut killed = 0;
    let mut checked = 0;
    for i in 0..runs {
        // The usable LKCs of each host before this run (all live or stashed).
        let before: Vec<(String, String)> = all_hosts
            .iter()
            .flat_map(|h| {
                [d.live_serial(h), d.stash_serial(h)]
                    .into_iter()
                    .flatten()
                    .map(move |s| (h.to_string(), s))
            })
            .collect();
        let k = rng.below(3) as usize;
        let (sid, host) = (
            siteid(10 + k as u32),
            if rng.below(3) == 0 { renamed[k].clone() } else { hosts[k].clone() },
        );
        let args: Vec<String> = match rng.below(4) {
            0 | 1 => {
                let f = d.tmp.path().join(format!("r{i}.json"));
                std::fs::write(&f, site_json(&sid, &host, le())).unwrap();
                vec!["deploy".into(), "--file".into(), f.display().to_string()]
            }
            2 => vec!["undeploy".into(), "--siteid".into(), sid.clone()],
            _ => vec!["renew".into(), "--force".into()],
        };
        let mut c = Command::new(bin());
        c.args(&args)
            .envs(d.env.iter().map(|(k, v)| (k.clone(), v.clone())))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let mut child = c.spawn().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(rng.below(120)));
        if child.try_wait().unwrap().is_none() {
            let _ = child.kill(); // SIGKILL
            killed += 1;
        }
        let _ = child.wait();
        // The next command recovers: the same one again, or (half the time)
        // an unrelated locked one, which must finish or roll back the
        // interrupted change on its own (a hostname change, say).
        let other = d.tmp.path().join(format!("plain{i}.json"));
        std::fs::write(&other, site_json(&siteid(20), "plain.example.test", None)).unwrap();
        let plain = ["deploy".to_string(), "--file".into(), other.display().to_string()];
        let args: &[String] = if rng.below(2) == 0 { &plain } else { &args };
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = d.run(&argv);
        let benign = o.status.code() == Some(2) && stderr(&o).contains("is not deployed");
        assert!(o.status.success() || benign, "run {i} {args:?} after the kill: {}", stderr(&o));
        if let Err(e) = doctor_clean(d) {
            panic!("run {i} {args:?} (seed {seed}): {e}");
        }
        assert!(configtest_passes(d), "run {i}: invariant 5: configtest fails (seed {seed})");
        // Invariant 3: none of them is lost — each is live, stashed, or
        // superseded (still in its archive beside a current lineage).
        for (h, serial) in &before {
            let live = d.live_serial(h);
            let stash = d.stash_serial(h);
            let in_archive = std::fs::read_dir(d.le().join("archive").join(h))
                .map(|rd| {
                    rd.filter_map(|e| e.ok())
                        .any(|e| cert_serial(&e.path()).as_deref() == Some(serial.as_str()))
                })
                .unwrap_or(false);
            let kept = live.as_deref() == Some(serial.as_str())
                || stash.as_deref() == Some(serial.as_str())
                || (in_archive && (live.is_some() || stash.is_some()));
            assert!(kept, "run {i} {args:?} (seed {seed}): invariant 3: the LKC {serial} of {h} was lost (live {live:?}, stash {stash:?})");
            checked += 1;
        }
    }
    assert!(checked >= runs, "too few LKCs were there to check ({checked})");
    eprintln!("random_kill_sweep: {runs} runs, {killed} killed mid-way");
    assert!(killed >= 10, "too few kills landed mid-operation ({killed})");
    // Every site comes back to https, and the newest LKC of each host survived.
    for (k, h) in hosts.iter().enumerate() {
        d.deploy(&site_json(&siteid(10 + k as u32), h, le()));
        let live = d.live_serial(h).unwrap();
        d.apache.wait_serial(h, &live);
    }
    doctor_clean(d).unwrap();
}

/// A hostname change (H → H2, Let's Encrypt both) interrupted at every step,
/// and then *another* locked command (an unrelated http site's deploy), not
/// the same deploy again: that command must complete or roll back the
/// change (invariant 5). Before the interim http vhost was journaled, a kill
/// while H2 was provisioned left the site stored as H with its vhost on
/// plain http for H2: the other deploy exited 0 and https for H served
/// nothing of its own until the next renew.
#[test]
fn interrupt_every_step_of_hostname_change() {
    const H2: &str = "crash2.example.test";
    let rename = |w: &World| {
        let f = w.dev.tmp.path().join("renamed.json");
        std::fs::write(&f, site_json(&id(), H2, le())).unwrap();
        vec!["deploy".to_string(), "--file".into(), f.display().to_string()]
    };
    let steps = {
        let w = World::new();
        setup_deployed(&w);
        let trace = w.dev.tmp.path().join("trace");
        let args = rename(&w);
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = run_env(&w.dev, &argv, &[("SITE_ADMIN_FAULT_TRACE", trace.display().to_string())]);
        assert!(o.status.success(), "{}", stderr(&o));
        let mut seen: BTreeMap<String, u32> = BTreeMap::new();
        let steps: Vec<String> = std::fs::read_to_string(&trace)
            .unwrap_or_default()
            .lines()
            .map(|l| {
                let n = seen.entry(l.to_string()).or_insert(0);
                *n += 1;
                format!("{l}#{n}")
            })
            .collect();
        steps
    };
    assert!(
        steps.iter().any(|s| s.starts_with("provision.issued")),
        "the rename provisions: {steps:?}"
    );
    eprintln!("hostname_change: {} steps: {steps:?}", steps.len());
    for step in &steps {
        let w = World::new();
        let lkc = setup_deployed(&w);
        let args = rename(&w);
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = run_env(&w.dev, &argv, &[("SITE_ADMIN_FAULT", step.clone())]);
        assert!(
            o.status.code().is_none(),
            "at {step}: the fault did not abort ({:?}): {}",
            o.status,
            stderr(&o)
        );
        // The next locked command is another site's deploy.
        w.dev.deploy(&site_json(&siteid(2), "other.example.test", None));
        if let Err(e) = doctor_clean(&w.dev) {
            panic!("hostname change at {step}: {e}");
        }
        assert!(configtest_passes(&w.dev), "hostname change at {step}: Apache's configtest fails");
        if let Err(e) = kept(&w, &lkc) {
            panic!("hostname change at {step}: {e}");
        }
        // Rolled back (still H, its LKC served) or completed (H2, its own).
        let stored = w.dev.stored_site(&id()).expect("the site is still deployed");
        let host = stored["hostname"].as_str().unwrap().to_string();
        assert!(host == H || host == H2, "at {step}: stored as {host}");
        // Rolled back, no live lineage is left that no site uses (renew
        // could not validate it): what was issued for H2 is in the stash.
        if host == H {
            assert_eq!(
                w.dev.live_serial(H2),
                None,
                "at {step}: rolled back, but live/{H2} is left"
            );
        }
        let live =
            w.dev.live_serial(&host).unwrap_or_else(|| panic!("at {step}: no live LKC for {host}"));
        let start = std::time::Instant::now();
        while w.dev.apache.served_serial(&host).as_deref() != Some(live.as_str()) {
            assert!(
                start.elapsed() < std::time::Duration::from_secs(10),
                "hostname change at {step}: stored as {host}, but Apache serves {:?} for it, not its LKC {live}",
                w.dev.apache.served_serial(&host)
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}
