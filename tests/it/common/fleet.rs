//! The fleet test world (issue #19): a 3-member etcd cluster, one pebble,
//! and three devices — dev-a on 127.0.0.1, dev-b on 127.0.0.2, dev-c on
//! 127.0.0.3 — with the same http/https ports, so the test DNS
//! (pebble-challtestsrv, `set_dns`) decides which device a validation
//! reaches. Every device's config.json has a `fleet` object naming the
//! cluster and the same fleet key. Everything started is stopped on drop,
//! also when a test panics: the devices' Apaches first, then pebble, then
//! etcd, then the directory.

use super::etcd::{EtcdCluster, EtcdPki};
use super::{free_port, pem_serial, stderr, stdout, Device, Pebble, PebbleOptions, TestIssuer};
use serde_json::{json, Value};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The device ids, by index.
pub const IDS: [&str; 3] = ["dev-a", "dev-b", "dev-c"];
/// The devices' addresses, by index.
pub const IPS: [&str; 3] = ["127.0.0.1", "127.0.0.2", "127.0.0.3"];
/// The fleet's etcd prefix (the default).
pub const PREFIX: &str = "/site-admin/v1/";
/// Where each device's fleet key lives, relative to its root (as config.json names it).
pub const SECRET_FILE: &str = "etc/site-admin/fleet.key";
/// etcd's root password in a world with auth.
const ROOT_PASSWORD: &str = "root-pw";

#[derive(Clone, Default)]
pub struct FleetOptions {
    /// etcd with client TLS (a certificate per device) and auth (a user per
    /// device whose role may use only the fleet's prefix).
    pub tls: bool,
    pub pebble: PebbleOptions,
}

/// Three devices sharing one fleet. Fields drop in order.
pub struct FleetWorld {
    pub devices: Vec<Device>,
    pub pebble: Pebble,
    pub etcd: EtcdCluster,
    pub pki: Option<EtcdPki>,
    /// The fleet key every device has.
    pub secret: [u8; 32],
    /// Issues LKCs every device trusts (carried certificates with chosen dates).
    pub issuer: TestIssuer,
    pub dir: tempfile::TempDir,
}

/// A port free on all three device addresses.
fn free_port_3() -> u16 {
    loop {
        let p = free_port();
        if IPS.iter().all(|ip| std::net::TcpListener::bind((*ip, p)).is_ok()) {
            return p;
        }
    }
}

impl FleetWorld {
    pub fn new() -> FleetWorld {
        Self::with(FleetOptions::default())
    }

    pub fn with(opts: FleetOptions) -> FleetWorld {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::Builder::new().prefix("site-admin-fleet-").tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let (etcd, pki) = if opts.tls {
            let pki = EtcdPki::create(&dir.path().join("pki"));
            let c = EtcdCluster::start_tls(&dir.path().join("etcd"), 3, &pki);
            let users: Vec<(String, String)> =
                IDS.iter().map(|d| (d.to_string(), format!("pw-{d}"))).collect();
            let mut u: Vec<(&str, &str, &str)> =
                users.iter().map(|(d, p)| (d.as_str(), p.as_str(), PREFIX)).collect();
            // A user whose role may use another prefix only.
            u.push(("outsider", "pw-outsider", "/elsewhere/"));
            c.enable_auth(ROOT_PASSWORD, &u);
            (c, Some(pki))
        } else {
            (EtcdCluster::start(&dir.path().join("etcd"), 3), None)
        };
        let mut secret = [0u8; 32];
        openssl::rand::rand_bytes(&mut secret).unwrap();
        let issuer = TestIssuer::new("site-admin fleet test issuer");
        let mut last = String::new();
        for attempt in 0..4 {
            let (http, https) = (free_port_3(), free_port_3());
            let mut devices: Vec<Device> =
                IPS.iter().map(|ip| Device::new_on(ip, http, https)).collect();
            let pebble = Pebble::start(
                &dir.path().join(format!("pebble-{attempt}")),
                http,
                opts.pebble.clone(),
            );
            for (i, d) in devices.iter_mut().enumerate() {
                d.use_pebble(&pebble);
                let mut t = std::fs::read_to_string(&d.trusted).unwrap();
                t.push_str(&issuer.pem);
                std::fs::write(&d.trusted, t).unwrap();
                let key = d.root.join(SECRET_FILE);
                std::fs::write(&key, secret).unwrap();
                std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
                let fleet = fleet_object(i, &etcd, pki.as_ref(), &d.root);
                set_fleet_object(d, Some(fleet));
            }
            match devices.iter().try_for_each(|d| d.apache.try_start()) {
                Ok(()) => return FleetWorld { devices, pebble, etcd, pki, secret, issuer, dir },
                Err(e) if e.contains("could not bind") || e.contains("Address already in use") => {
                    last = e
                }
                Err(e) => panic!("{e}"),
            }
            // Dropping `devices` and `pebble` stops what started; new ports.
        }
        panic!("the fleet's Apaches did not start: {last}");
    }

    pub fn dev(&self, i: usize) -> &Device {
        &self.devices[i]
    }

    /// The `fleet` object device `i` was configured with.
    pub fn fleet_object(&self, i: usize) -> Value {
        fleet_object(i, &self.etcd, self.pki.as_ref(), &self.devices[i].root)
    }

    /// Replace device `i`'s `fleet` object (None: no fleet).
    pub fn set_fleet(&self, i: usize, fleet: Option<Value>) {
        set_fleet_object(&self.devices[i], fleet)
    }

    /// Deploy a Site JSON on a, then b, then c; their --json reports.
    pub fn deploy_everywhere(&self, site_json: &str) -> Vec<Value> {
        self.devices.iter().map(|d| d.deploy(site_json)).collect()
    }

    /// Point `host` at device `i` in pebble's DNS: its validations go there.
    pub fn set_dns(&self, host: &str, i: usize) {
        self.pebble.set_a(host, IPS[i]);
    }

    /// The serial device `i`'s Apache serves for `host` (TLS with SNI on its address).
    pub fn served_serial(&self, i: usize, host: &str) -> Option<String> {
        self.devices[i].apache.served_serial(host)
    }

    /// Wait until device `i` serves `serial` for `host`.
    pub fn wait_serial(&self, i: usize, host: &str, serial: &str) {
        self.devices[i].apache.wait_serial(host, serial)
    }

    /// How many certificates pebble issued so far.
    pub fn issued_count(&self) -> usize {
        self.pebble.issued_count()
    }

    /// A certificate (key, full chain) for `names` every device trusts,
    /// valid from `nb_days` to `na_days` (days from now).
    pub fn lkc(&self, names: &[&str], nb_days: f64, na_days: f64) -> (String, String) {
        self.issuer.issue(names, nb_days, na_days)
    }

    /// A Site JSON for `host` that carries a certificate every device trusts
    /// with `days_left` of a 90-day life left: renew finds it due (a third
    /// of its lifetime or less) without waiting; its serial.
    pub fn due_site(&self, n: u32, host: &str, days_left: f64) -> (String, String) {
        let (k, c) = self.lkc(&[host], days_left - 90.0, days_left);
        let serial = pem_serial(c.as_bytes()).unwrap();
        (
            super::site_json(
                &super::siteid(n),
                host,
                Some(json!({"letsencrypt": true, "key": k, "crt": c})),
            ),
            serial,
        )
    }

    /// Start site-admin on device `i` without waiting, with `env` added.
    pub fn spawn(&self, i: usize, args: &[&str], env: &[(&str, &str)]) -> Running {
        let mut c = Command::new(super::bin());
        c.args(args);
        for (k, _) in std::env::vars() {
            if k.starts_with("SITE_ADMIN_") {
                c.env_remove(k);
            }
        }
        c.envs(self.devices[i].env.iter().map(|(k, v)| (k.clone(), v.clone())));
        c.envs(env.iter().copied());
        c.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        Running { child: Some(c.spawn().expect("run site-admin")) }
    }

    /// Run site-admin on device `i` with `env` added.
    pub fn run_env(&self, i: usize, args: &[&str], env: &[(&str, &str)]) -> Output {
        self.spawn(i, args, env).wait(Duration::from_secs(180))
    }

    /// `--json renew ARGS` on device `i`: (exit code, report, stderr).
    pub fn renew(&self, i: usize, args: &[&str]) -> (i32, Value, String) {
        super::renew_json(&self.devices[i], args)
    }

    /// `--json sync` on device `i`, which must succeed; its report.
    pub fn sync(&self, i: usize) -> Value {
        let out = self.devices[i].ok(&["--json", "sync"]);
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("sync --json printed no JSON ({e}): {out}"))
    }

    /// `fleet status --json` on device `i`, which must succeed.
    pub fn status(&self, i: usize) -> Value {
        let out = self.devices[i].ok(&["--json", "fleet", "status"]);
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("fleet status --json printed no JSON ({e}): {out}"))
    }

    /// The fleet's record of `host` as `fleet status` shows it.
    pub fn status_lineage(&self, i: usize, host: &str) -> Option<Value> {
        self.status(i)["lineages"].as_array()?.iter().find(|l| l["host"] == host).cloned()
    }

    /// Every key and value under the fleet's prefix, read from etcd
    /// directly (with the root user when auth is on), from the first member
    /// that answers (a test may have killed some).
    pub fn etcd_get_prefix_raw(&self) -> Vec<(String, Vec<u8>)> {
        let mut last = String::new();
        for url in self.etcd.endpoints() {
            match self.range_prefix(&url) {
                Ok(kvs) => return kvs,
                Err(e) => last = format!("{url}: {e}"),
            }
        }
        panic!("no etcd member answered: {last}");
    }

    fn range_prefix(&self, url: &str) -> Result<Vec<(String, Vec<u8>)>, String> {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD;
        let http = self.etcd.raw();
        let mut token = None;
        if self.pki.is_some() {
            let r: Value = http
                .post(format!("{url}/v3/auth/authenticate"))
                .json(&json!({"name": "root", "password": ROOT_PASSWORD}))
                .send()
                .and_then(|r| r.json())
                .map_err(|e| e.to_string())?;
            token = Some(r["token"].as_str().ok_or_else(|| format!("no token: {r}"))?.to_string());
        }
        let end = site_admin::fleet::etcd::prefix_end(PREFIX.as_bytes());
        let mut req = http
            .post(format!("{url}/v3/kv/range"))
            .json(&json!({"key": b64.encode(PREFIX), "range_end": b64.encode(end)}));
        if let Some(t) = &token {
            req = req.header("Authorization", t);
        }
        let r: Value = req.send().and_then(|r| r.json()).map_err(|e| e.to_string())?;
        if r.get("error").is_some() {
            return Err(format!("range: {r}"));
        }
        Ok(r["kvs"]
            .as_array()
            .map(|kvs| {
                kvs.iter()
                    .map(|kv| {
                        let k =
                            b64.decode(kv["key"].as_str().unwrap_or_default()).unwrap_or_default();
                        let v = kv["value"]
                            .as_str()
                            .map(|v| b64.decode(v).unwrap_or_default())
                            .unwrap_or_default();
                        (String::from_utf8_lossy(&k).into_owned(), v)
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    /// What went on in the world, for a failed assertion's message.
    pub fn logs(&self) -> String {
        let mut s = String::new();
        for (i, d) in self.devices.iter().enumerate() {
            s.push_str(&format!("--- {} apache error log:\n{}\n", IDS[i], d.apache.error_log()));
        }
        s
    }
}

fn fleet_object(i: usize, etcd: &EtcdCluster, pki: Option<&EtcdPki>, root: &Path) -> Value {
    let mut f =
        json!({"endpoints": etcd.endpoints(), "device_id": IDS[i], "secret_file": SECRET_FILE});
    if let Some(pki) = pki {
        let (cert, key) = pki.client(IDS[i]);
        let pw = root.join("etc/site-admin/etcd.password");
        std::fs::write(&pw, format!("pw-{}", IDS[i])).unwrap();
        std::fs::set_permissions(&pw, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        f["ca"] = pki.ca.display().to_string().into();
        f["cert"] = cert.display().to_string().into();
        f["key"] = key.display().to_string().into();
        f["user"] = IDS[i].into();
        f["password_file"] = "etc/site-admin/etcd.password".into();
    }
    f
}

fn set_fleet_object(d: &Device, fleet: Option<Value>) {
    let mut cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(&d.config).unwrap()).unwrap();
    match fleet {
        Some(f) => cfg["fleet"] = f,
        None => {
            cfg.as_object_mut().unwrap().remove("fleet");
        }
    }
    std::fs::write(&d.config, serde_json::to_string_pretty(&cfg).unwrap()).unwrap();
}

/// A site-admin started without waiting; killed on drop if it still runs
/// (a test that panics leaves no process behind).
pub struct Running {
    child: Option<Child>,
}

impl Running {
    pub fn id(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Has it exited?
    pub fn exited(&mut self) -> bool {
        self.child.as_mut().unwrap().try_wait().unwrap().is_some()
    }

    /// Its output once it exits; killed (and the test fails) after `limit`.
    pub fn wait(mut self, limit: Duration) -> Output {
        let start = Instant::now();
        while !self.exited() {
            if start.elapsed() > limit {
                let mut c = self.child.take().unwrap();
                let _ = c.kill();
                let o = c.wait_with_output().unwrap();
                panic!("site-admin still ran after {limit:?}:\n{}{}", stdout(&o), stderr(&o));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.child.take().unwrap().wait_with_output().unwrap()
    }

    /// Send `sig` ("STOP", "CONT", "KILL") to it.
    pub fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.id().to_string())
            .status()
            .unwrap();
        assert!(st.success(), "kill -{sig} {}", self.id());
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Wait until `file` has a line equal to `line` (a fault trace).
pub fn wait_line(file: &Path, line: &str, limit: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if std::fs::read_to_string(file).map(|t| t.lines().any(|l| l == line)).unwrap_or(false) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}
