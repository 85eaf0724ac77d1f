//! The test harness shared by every integration test: a private pebble +
//! pebble-challtestsrv, a real apache2, a tiny static file server, the
//! site-admin binary runner, and tree snapshots. Every instance listens on
//! free loopback ports and is torn down on drop, so tests run in parallel.

pub mod a2c;
pub mod apache;
pub mod etcd;
pub mod fleet;
pub mod pebble;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub use a2c::{A2c, A2cOptions};
pub use apache::Apache;
pub use pebble::Pebble;
pub use pebble::PebbleOptions;

/// A free TCP port on 127.0.0.1 (bound and released), handed out from a
/// per-process counter so one test process never gives a port twice. The
/// ports lie below the kernel's ephemeral range (32768–60999 here): an
/// outgoing connection's local port is taken from that range, and one of
/// those taking a port between this check and the server's bind is how a test
/// once failed with `AH00072: could not bind`.
pub fn free_port() -> u16 {
    use std::sync::atomic::AtomicU16;
    const LOW: u16 = 20000;
    const HIGH: u16 = 32000;
    static NEXT: AtomicU16 = AtomicU16::new(0);
    if NEXT.load(Ordering::Relaxed) == 0 {
        // A per-process starting point, so test binaries run one after the
        // other (or side by side) rarely pick the same ports.
        let seed = std::process::id() as u64
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos() as u64;
        let base = LOW + (seed % ((HIGH - LOW) as u64 / 100)) as u16 * 100;
        let _ = NEXT.compare_exchange(0, base, Ordering::Relaxed, Ordering::Relaxed);
    }
    loop {
        let p = NEXT.fetch_add(1, Ordering::Relaxed);
        if p >= HIGH {
            NEXT.store(LOW, Ordering::Relaxed);
            continue;
        }
        if TcpListener::bind(("127.0.0.1", p)).is_ok()
            && std::net::UdpSocket::bind(("127.0.0.1", p)).is_ok()
            && TcpListener::bind(("127.0.0.2", p)).is_ok()
        {
            return p;
        }
    }
}

/// Is this program installed? Tests need it; CI installs it.
pub fn require(program: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
                .any(|d| d.join(program).is_file())
        })
        .unwrap_or(false);
    assert!(
        found,
        "{program} is not installed: run `bash .ci/run` once, or apt-get install pebble apache2"
    );
}

/// A test CA that signs the TLS certificate of pebble's own listener.
pub struct TestCa {
    pub ca_pem: PathBuf,
    pub cert_pem: PathBuf,
    pub key_pem: PathBuf,
}

impl TestCa {
    pub fn create(dir: &Path) -> TestCa {
        std::fs::create_dir_all(dir).unwrap();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(rcgen::DnType::CommonName, "site-admin test CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params.subject_alt_names.push(rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap()));
        let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
        let t = TestCa {
            ca_pem: dir.join("ca.pem"),
            cert_pem: dir.join("cert.pem"),
            key_pem: dir.join("key.pem"),
        };
        std::fs::write(&t.ca_pem, ca.pem()).unwrap();
        std::fs::write(&t.cert_pem, cert.pem()).unwrap();
        std::fs::write(&t.key_pem, key.serialize_pem()).unwrap();
        t
    }
}

/// A test CA that issues "Let's Encrypt" certificates a device trusts (its
/// root goes into the device's `acme_ca_bundle`): for carried LKCs with
/// chosen names and dates, which pebble cannot issue.
pub struct TestIssuer {
    key: rcgen::KeyPair,
    cert: rcgen::Certificate,
    pub pem: String,
}

impl TestIssuer {
    pub fn new(name: &str) -> TestIssuer {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name.push(rcgen::DnType::CommonName, name);
        let cert = p.self_signed(&key).unwrap();
        let pem = cert.pem();
        TestIssuer { key, cert, pem }
    }

    /// (key PEM, full chain PEM) for `names`, valid from `nb` to `na` (days from now).
    pub fn issue(&self, names: &[&str], nb_days: f64, na_days: f64) -> (String, String) {
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now + time::Duration::seconds_f64(nb_days * 86400.0);
        params.not_after = now + time::Duration::seconds_f64(na_days * 86400.0);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        (key.serialize_pem(), cert.pem())
    }
}

/// A minimal static file server: GET /<path> serves `<root>/<path>`.
pub struct StaticServer {
    stop: Arc<AtomicBool>,
}

impl StaticServer {
    pub fn start(root: &Path, port: u16) -> StaticServer {
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let (s2, root) = (stop.clone(), root.to_path_buf());
        std::thread::spawn(move || {
            while !s2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut c, _)) => {
                        c.set_nonblocking(false).ok();
                        c.set_read_timeout(Some(Duration::from_secs(5))).ok();
                        let mut buf = [0u8; 4096];
                        let n = c.read(&mut buf).unwrap_or(0);
                        let req = String::from_utf8_lossy(&buf[..n]);
                        let path = req
                            .split_whitespace()
                            .nth(1)
                            .unwrap_or("/")
                            .trim_start_matches('/')
                            .to_string();
                        let resp = if path.split('/').any(|s| s == "..") {
                            None
                        } else {
                            std::fs::read(root.join(&path)).ok()
                        };
                        let _ = match resp {
                            Some(body) => c
                                .write_all(format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len()).as_bytes())
                                .and_then(|_| c.write_all(&body)),
                            None => c.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
                        };
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        StaticServer { stop }
    }
}

impl Drop for StaticServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The site-admin binary under test.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_site-admin"))
}

/// Run site-admin with `args`, `env` and optional stdin; never inherits the
/// developer's SITE_ADMIN_* variables.
pub fn run(args: &[&str], env: &[(&str, &str)], stdin: Option<&str>) -> Output {
    let mut c = Command::new(bin());
    c.args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("SITE_ADMIN_") {
            c.env_remove(k);
        }
    }
    c.envs(env.iter().copied());
    c.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = c.spawn().expect("run site-admin");
    if let Some(s) = stdin {
        child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
    }
    child.wait_with_output().unwrap()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Every file, directory and link under `root`, with contents, link targets
/// and modes, to prove "nothing changed".
pub fn snapshot(root: &Path) -> BTreeMap<String, String> {
    use std::os::unix::fs::PermissionsExt;
    let mut m = BTreeMap::new();
    if !root.exists() {
        return m;
    }
    for e in walkdir::WalkDir::new(root).follow_links(false) {
        let e = e.unwrap();
        let rel = e.path().strip_prefix(root).unwrap().display().to_string();
        let md = e.path().symlink_metadata().unwrap();
        let v = if md.file_type().is_symlink() {
            format!("link -> {}", std::fs::read_link(e.path()).unwrap().display())
        } else if md.is_dir() {
            format!("dir {:o}", md.permissions().mode() & 0o7777)
        } else {
            format!(
                "file {:o} {:?}",
                md.permissions().mode() & 0o7777,
                std::fs::read(e.path()).unwrap()
            )
        };
        m.insert(rel, v);
    }
    m
}

/// A Site JSON text.
pub fn site_json(siteid: &str, host: &str, tls: Option<serde_json::Value>) -> String {
    let mut v = serde_json::json!({
        "siteid": siteid, "hostname": host,
        "admin": {"userid": "admin", "username": "Admin", "email": "admin@example.com"},
        "appconfigs": [{"appconfigid": format!("a{}", &siteid[1..]), "appid": "wordpress", "context": "/blog"}]
    });
    if let Some(t) = tls {
        v["tls"] = t;
    }
    serde_json::to_string_pretty(&v).unwrap()
}

/// A site id from a small number.
pub fn siteid(n: u32) -> String {
    format!("s{:040x}", n as u128 * 0x1234_5678_9abc_def1 + 0xabc)
}

/// Self-signed key + certificate for names, valid for `days` from now - 1 day.
pub fn self_signed(names: &[&str], days: i64) -> (String, String) {
    let mut params =
        rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(days);
    params.distinguished_name.push(rcgen::DnType::CommonName, names[0]);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    (key.serialize_pem(), cert.pem())
}

/// One device: a temporary root with site-admin's config pointing at its own
/// real Apache, plus (usually) the shared pebble of the test.
/// Fields drop in order: the Apache (whose pid file lives in `tmp`) is
/// stopped before `tmp` is removed.
pub struct Device {
    pub apache: Apache,
    pub root: PathBuf,
    pub config: PathBuf,
    pub env: Vec<(String, String)>,
    /// Issues LKCs this device trusts; its root is in `trusted`.
    pub issuer: TestIssuer,
    /// A CA bundle with the issuer's root (and, after `use_pebble`, pebble's
    /// TLS CA and issuing root): the device's `acme_ca_bundle` once a pebble
    /// is used, else to be passed with --acme-ca-bundle.
    pub trusted: PathBuf,
    pub tmp: tempfile::TempDir,
}

impl Device {
    /// A device whose Apache is configured (not started) on `ip` and ports.
    pub fn new_on(ip: &str, http_port: u16, https_port: u16) -> Device {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::Builder::new().prefix("site-admin-test-").tempdir().unwrap();
        // Apache's children (www-data) must reach the webroots below it.
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let root = tmp.path().join("root");
        std::fs::create_dir_all(root.join("etc/site-admin")).unwrap();
        let sites_dir = root.join("etc/httpd/sites");
        let apache =
            Apache::configure_on(&tmp.path().join("apache"), &sites_dir, ip, http_port, https_port);
        let config = root.join("etc/site-admin/config.json");
        let cfg = serde_json::json!({
            "contact_email": "admin@example.com",
            "apache": {
                "http_port": http_port, "https_port": https_port, "address": ip,
                "configtest": apache.configtest_argv(), "reload": apache.reload_argv(), "start": apache.start_argv()
            }
        });
        std::fs::write(&config, serde_json::to_string_pretty(&cfg).unwrap()).unwrap();
        let issuer = TestIssuer::new("site-admin test issuer");
        let trusted = tmp.path().join("trusted.pem");
        std::fs::write(&trusted, &issuer.pem).unwrap();
        Device {
            env: vec![("SITE_ADMIN_ROOT".into(), root.display().to_string())],
            tmp,
            root,
            apache,
            config,
            issuer,
            trusted,
        }
    }

    /// An LKC this device trusts: (key, full chain) for `names`, valid for `days`.
    pub fn lkc(&self, names: &[&str], days: i64) -> (String, String) {
        self.issuer.issue(names, -1.0, days as f64)
    }

    pub fn new() -> Device {
        Self::new_on("127.0.0.1", free_port(), free_port())
    }

    /// Point site-admin at this pebble.
    pub fn use_pebble(&mut self, p: &Pebble) {
        self.env.push(("SITE_ADMIN_ACME_SERVER".into(), p.directory()));
        let mut t = std::fs::read_to_string(&self.trusted).unwrap();
        t.push_str(&std::fs::read_to_string(&p.ca.ca_pem).unwrap());
        std::fs::write(&self.trusted, t).unwrap();
        self.env.retain(|(k, _)| k != "SITE_ADMIN_ACME_CA_BUNDLE");
        self.env.push(("SITE_ADMIN_ACME_CA_BUNDLE".into(), self.trusted.display().to_string()));
    }

    /// Run site-admin on this device.
    pub fn run(&self, args: &[&str]) -> Output {
        self.run_stdin(args, None)
    }

    pub fn run_stdin(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let env: Vec<(&str, &str)> =
            self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        run(args, &env, stdin)
    }

    /// Run and insist on exit code `code`; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "site-admin {args:?} failed ({:?}):\n{}{}\n{}",
            o.status.code(),
            stdout(&o),
            stderr(&o),
            self.apache.error_log()
        );
        stdout(&o)
    }

    /// Write a Site JSON into the device's temp dir and deploy it; returns the --json report.
    pub fn deploy(&self, json: &str) -> serde_json::Value {
        let f = self.tmp.path().join(format!(
            "site-{}.json",
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
        ));
        std::fs::write(&f, json).unwrap();
        let out = self.ok(&["--json", "deploy", "--file", f.to_str().unwrap()]);
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("deploy --json printed no JSON ({e}): {out}"))
    }

    pub fn le(&self) -> PathBuf {
        self.root.join("etc/letsencrypt")
    }

    /// Serial of the live certificate of `host`.
    pub fn live_serial(&self, host: &str) -> Option<String> {
        cert_serial(&self.le().join("live").join(host).join("cert.pem"))
    }

    pub fn stash_serial(&self, host: &str) -> Option<String> {
        cert_serial(&self.le().join("norenewal").join(host).join("cert.pem"))
    }

    pub fn stored_site(&self, siteid: &str) -> Option<serde_json::Value> {
        let t = std::fs::read_to_string(
            self.root.join("var/lib/site-admin/sites").join(format!("{siteid}.json")),
        )
        .ok()?;
        Some(serde_json::from_str(&t).unwrap())
    }
}

/// Serial (lowercase hex, no leading zeros) of the first certificate in a PEM file.
pub fn cert_serial(path: &Path) -> Option<String> {
    let pem = std::fs::read(path).ok()?;
    pem_serial(&pem)
}

pub fn pem_serial(pem: &[u8]) -> Option<String> {
    let c = openssl::x509::X509::from_pem(pem).ok()?;
    let hex = c.serial_number().to_bn().ok()?.to_hex_str().ok()?.to_string().to_lowercase();
    let t = hex.trim_start_matches('0');
    Some(if t.is_empty() { "0".into() } else { t.into() })
}

/// A device with its Apache started and a pebble validating against it.
pub struct World {
    pub pebble: Pebble,
    pub dev: Device,
}

impl World {
    pub fn new() -> World {
        Self::with(pebble::PebbleOptions::default())
    }

    /// A world whose Apache listens on [::1] too (same ports), so pebble
    /// can validate an IPv6 site's address.
    pub fn with_ipv6() -> World {
        let mut dev = Device::new();
        dev.apache.also_listen("[::1]");
        let pebble = Pebble::start(
            &dev.tmp.path().join("pebble"),
            dev.apache.http_port,
            PebbleOptions::default(),
        );
        dev.use_pebble(&pebble);
        dev.apache.start();
        World { pebble, dev }
    }

    pub fn with(opts: pebble::PebbleOptions) -> World {
        let mut dev = Device::new();
        let pebble = Pebble::start(&dev.tmp.path().join("pebble"), dev.apache.http_port, opts);
        dev.use_pebble(&pebble);
        dev.apache.start();
        World { pebble, dev }
    }
}

/// `--json renew ARGS` on a device: (exit code, the report, stderr).
pub fn renew_json(d: &Device, args: &[&str]) -> (i32, serde_json::Value, String) {
    let mut a = vec!["--json", "renew"];
    a.extend_from_slice(args);
    let o = d.run(&a);
    let rep = serde_json::from_str(&stdout(&o))
        .unwrap_or_else(|e| panic!("renew printed no JSON ({e}): {}\n{}", stdout(&o), stderr(&o)));
    (o.status.code().unwrap(), rep, stderr(&o))
}

/// An executable shell hook at `path`.
pub fn write_hook(path: &Path, body: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Two devices with the same ports — A on 127.0.0.1, B on 127.0.0.2 — and
/// one pebble validating on that http port: the test DNS decides which
/// device pebble reaches for a host (a migration before DNS moves).
pub fn two_devices() -> (Pebble, Device, Device) {
    let (http, https) = (free_port(), free_port());
    let mut a = Device::new_on("127.0.0.1", http, https);
    let pebble = Pebble::start(&a.tmp.path().join("pebble"), http, PebbleOptions::default());
    a.use_pebble(&pebble);
    a.apache.start();
    let mut b = Device::new_on("127.0.0.2", http, https);
    b.use_pebble(&pebble);
    b.apache.start();
    (pebble, a, b)
}
