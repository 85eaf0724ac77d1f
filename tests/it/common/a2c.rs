//! acme2certifier (PyPI), an ACME server independent of pebble that offers
//! ARI and profiles: its WSGI application served on a free loopback port
//! (plain http) by `a2c_serve.py`, which records every request with its
//! decoded payload, so a test can count requests and read `replaces`.
//! HTTP-01 validation is switched off (acme2certifier would fetch from port
//! 80 through its own DNS); pebble's tests prove validation.

use super::free_port;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct A2c {
    pub port: u16,
    pub dir: PathBuf,
    child: Child,
}

#[derive(Clone)]
pub struct A2cOptions {
    /// `[Renewalinfo] renewalthreshold_pctg`: a negative one puts the window in the past.
    pub renewal_threshold_pctg: f64,
    /// `[Renewalinfo] retry_after_timeout` (seconds).
    pub retry_after: u64,
    /// `[Renewalinfo] renewal_window_duration` (seconds): with a negative
    /// threshold, a short window lies wholly in the past.
    pub window_secs: Option<u64>,
}

impl Default for A2cOptions {
    fn default() -> Self {
        A2cOptions { renewal_threshold_pctg: 85.0, retry_after: 600, window_secs: None }
    }
}

pub fn python() -> PathBuf {
    std::env::var_os("SITE_ADMIN_A2C_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv-a2c/bin/python"))
}

impl A2c {
    pub fn start(dir: &Path, opts: A2cOptions) -> A2c {
        let py = python();
        assert!(
            py.exists(),
            "acme2certifier's venv is missing at {} (run scripts/setup)",
            py.display()
        );
        std::fs::create_dir_all(dir.join("certs")).unwrap();
        let ok = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-days",
                "30",
                "-subj",
                "/CN=acme2certifier test CA",
            ])
            .args([
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ])
            .arg("-keyout")
            .arg(dir.join("ca.key"))
            .arg("-out")
            .arg(dir.join("ca.pem"))
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success();
        assert!(ok, "openssl made no test CA");
        let d = dir.display();
        let handler = |validity: u32| {
            format!(
                "handler_module: acme2certifier.cahandlers.openssl_ca_handler\nissuing_ca_key: {d}/ca.key\nissuing_ca_cert: {d}/ca.pem\nissuing_ca_crl: {d}/ca.crl\ncert_save_path: {d}/certs\ncert_validity_days: {validity}\n"
            )
        };
        let cfg = format!(
            "[DEFAULT]\ndebug: False\n\n[Nonce]\nnonce_check_disable: False\n\n[Account]\ncontact_check_disable: True\n\n\
             [CAhandler]\nmulti_handler: True\ndefault_handler: classic\n\n[CAhandler:classic]\n{}\n[CAhandler:shortlived]\n{}\n\
             [DBhandler]\nhandler: wsgi\ndbfile: {d}/acme_srv.db\n\n[Challenge]\nchallenge_validation_disable: True\n\n\
             [Order]\nprofiles: {{\"classic\": \"30 days\", \"shortlived\": \"6 days\"}}\nprofile_cahandler: {{\"classic\": \"classic\", \"shortlived\": \"shortlived\"}}\n\n\
             [Renewalinfo]\nrenewalthreshold_pctg: {}\nretry_after_timeout: {}\n{}",
            handler(30),
            handler(6),
            opts.renewal_threshold_pctg,
            opts.retry_after,
            opts.window_secs.map(|w| format!("renewal_window_duration: {w}\n")).unwrap_or_default()
        );
        std::fs::write(dir.join("acme_srv.cfg"), cfg).unwrap();
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/it/common/a2c_serve.py");
        let mut last = String::new();
        for _ in 0..4 {
            let port = free_port();
            let log = std::fs::File::create(dir.join("server.log")).unwrap();
            let mut child = Command::new(&py)
                .arg(&script)
                .arg(dir.join("acme_srv.cfg"))
                .arg(port.to_string())
                .arg(dir.join("requests.jsonl"))
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("start acme2certifier");
            let start = Instant::now();
            loop {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return A2c { port, dir: dir.into(), child };
                }
                if let Ok(Some(st)) = child.try_wait() {
                    last = format!(
                        "exited with {st}: {}",
                        std::fs::read_to_string(dir.join("server.log")).unwrap_or_default()
                    );
                    break;
                }
                if start.elapsed() > Duration::from_secs(30) {
                    let _ = child.kill();
                    let _ = child.wait();
                    last = "not listening after 30 s".into();
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        panic!("acme2certifier did not start: {last}");
    }

    pub fn directory(&self) -> String {
        format!("http://127.0.0.1:{}/directory", self.port)
    }

    /// Every request so far: {"method", "path", "payload"}.
    pub fn requests(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.join("requests.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The payloads of the newOrder requests so far.
    pub fn orders(&self) -> Vec<serde_json::Value> {
        self.requests()
            .into_iter()
            .filter(|r| r["path"].as_str().unwrap_or("").ends_with("/neworders"))
            .map(|r| r["payload"].clone())
            .collect()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }
}

impl Drop for A2c {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
