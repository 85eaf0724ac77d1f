//! A private pebble ACME CA with pebble-challtestsrv as its DNS, so that every
//! name resolves to 127.0.0.1 (or where `set_a` points it).

use super::{free_port, require, TestCa};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

pub struct Pebble {
    pub port: u16,
    pub mgmt_port: u16,
    pub chall_mgmt_port: u16,
    pub ca: TestCa,
    pub dir: PathBuf,
    pebble: Child,
    chall: Child,
    /// How pebble was started, to start it again.
    argv: Vec<String>,
    nonce_reject_percent: u32,
}

#[derive(Clone, Default)]
pub struct PebbleOptions {
    pub nonce_reject_percent: u32,
    /// certificateValidityPeriod in seconds (None: pebble's default, ~5 years).
    pub validity_secs: Option<u64>,
    /// Require External Account Binding with these (kid, base64url MAC key).
    pub eab_keys: Vec<(String, String)>,
}

impl Pebble {
    /// Start pebble validating HTTP-01 against `http_port` on loopback.
    /// Retries on fresh ports if a port turned out to be taken.
    pub fn start(dir: &Path, http_port: u16, opts: PebbleOptions) -> Pebble {
        require("pebble");
        require("pebble-challtestsrv");
        let mut last = String::new();
        for attempt in 0..4 {
            let d = dir.join(format!("try{attempt}"));
            match Self::try_start(&d, http_port, &opts) {
                Ok(p) => return p,
                Err(e) => last = e,
            }
        }
        panic!("pebble did not start: {last}");
    }

    fn try_start(dir: &Path, http_port: u16, opts: &PebbleOptions) -> Result<Pebble, String> {
        std::fs::create_dir_all(dir).unwrap();
        let ca = TestCa::create(&dir.join("tls"));
        let (port, mgmt_port, dns_port, chall_mgmt_port) =
            (free_port(), free_port(), free_port(), free_port());
        let log = |n: &str| std::fs::File::create(dir.join(n)).unwrap();
        let mut chall = Command::new("pebble-challtestsrv")
            .args([
                "-dns01",
                &format!("127.0.0.1:{dns_port}"),
                "-http01",
                "",
                "-https01",
                "",
                "-tlsalpn01",
                "",
            ])
            .args([
                "-management",
                &format!("127.0.0.1:{chall_mgmt_port}"),
                "-defaultIPv6",
                "",
                "-defaultIPv4",
                "127.0.0.1",
            ])
            .stdout(log("challtestsrv.log"))
            .stderr(log("challtestsrv.err"))
            .spawn()
            .expect("start pebble-challtestsrv");
        let mut cfg = serde_json::json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{port}"),
            "managementListenAddress": format!("127.0.0.1:{mgmt_port}"),
            "certificate": ca.cert_pem, "privateKey": ca.key_pem,
            "httpPort": http_port, "tlsPort": free_port(),
            "ocspResponderURL": "", "externalAccountBindingRequired": false
        }});
        if !opts.eab_keys.is_empty() {
            cfg["pebble"]["externalAccountBindingRequired"] = true.into();
            cfg["pebble"]["externalAccountMACKeys"] = opts
                .eab_keys
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::Value::from(v.clone())))
                .collect();
        }
        if let Some(v) = opts.validity_secs {
            cfg["pebble"]["certificateValidityPeriod"] = v.into();
        }
        let cfg_path = dir.join("pebble-config.json");
        std::fs::write(&cfg_path, cfg.to_string()).unwrap();
        if let Err(e) = wait_child_port(&mut chall, chall_mgmt_port, &dir.join("challtestsrv.err"))
        {
            let _ = chall.kill();
            let _ = chall.wait();
            return Err(format!("pebble-challtestsrv: {e}"));
        }
        let argv: Vec<String> = vec![
            "-config".into(),
            cfg_path.display().to_string(),
            "-dnsserver".into(),
            format!("127.0.0.1:{dns_port}"),
        ];
        let mut pebble = Self::spawn(dir, &argv, opts.nonce_reject_percent);
        if let Err(e) = wait_child_port(&mut pebble, port, &dir.join("pebble.err")) {
            for c in [&mut pebble, &mut chall] {
                let _ = c.kill();
                let _ = c.wait();
            }
            return Err(format!("pebble: {e}"));
        }
        let p = Pebble {
            port,
            mgmt_port,
            chall_mgmt_port,
            ca,
            dir: dir.into(),
            pebble,
            chall,
            argv,
            nonce_reject_percent: opts.nonce_reject_percent,
        };
        // The device trusts the roots in acme_ca_bundle for the certificates
        // its CA issues too (a carried LKC must come from a trusted CA): add
        // pebble's issuing root beside the test CA of its TLS listener.
        let root = p.management_get("roots/0").map_err(|e| format!("pebble roots/0: {e}"))?;
        let mut bundle = std::fs::read_to_string(&p.ca.ca_pem).unwrap();
        bundle.push_str(&root);
        std::fs::write(&p.ca.ca_pem, bundle).unwrap();
        Ok(p)
    }

    fn spawn(dir: &Path, argv: &[String], nonce_reject_percent: u32) -> Child {
        let log = |n: &str| {
            std::fs::OpenOptions::new().create(true).append(true).open(dir.join(n)).unwrap()
        };
        Command::new("pebble")
            .args(argv)
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", nonce_reject_percent.to_string())
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdin(Stdio::null())
            .stdout(log("pebble.log"))
            .stderr(log("pebble.err"))
            .spawn()
            .expect("start pebble")
    }

    /// Restart pebble on the same ports: it forgets every account and order
    /// (as a staging reset or a CA that deleted an account would).
    pub fn restart_ca(&mut self) {
        self.stop_ca();
        self.pebble = Self::spawn(&self.dir, &self.argv, self.nonce_reject_percent);
        wait_child_port(&mut self.pebble, self.port, &self.dir.join("pebble.err"))
            .expect("pebble restarts");
    }

    /// What pebble's management interface says of a certificate serial
    /// (lowercase hex): its status, e.g. "Valid" or "Revoked".
    pub fn cert_status(&self, serial: &str) -> String {
        let v: serde_json::Value = serde_json::from_str(
            &self.management_get(&format!("cert-status-by-serial/{serial}")).unwrap(),
        )
        .unwrap();
        v["Status"].as_str().unwrap_or("").to_string()
    }

    /// GET on pebble's management interface (HTTPS, the test CA).
    pub fn management_get(&self, path: &str) -> Result<String, String> {
        let ca = reqwest::Certificate::from_pem(&std::fs::read(&self.ca.ca_pem).unwrap()).unwrap();
        let c = reqwest::blocking::Client::builder()
            .add_root_certificate(ca)
            .timeout(std::time::Duration::from_secs(10))
            .build()
            .unwrap();
        let r = c
            .get(format!("https://127.0.0.1:{}/{path}", self.mgmt_port))
            .send()
            .map_err(|e| e.to_string())?;
        if !r.status().is_success() {
            return Err(format!("status {}", r.status()));
        }
        r.text().map_err(|e| e.to_string())
    }

    pub fn directory(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.port)
    }

    /// Point `host` at `ip` in the test DNS (an address nothing listens on
    /// makes validation fail, as when DNS has not moved yet).
    pub fn set_a(&self, host: &str, ip: &str) {
        // add-a appends to the host's addresses: clear them first.
        self.chall_post("clear-a", serde_json::json!({"host": host}));
        self.chall_post("add-a", serde_json::json!({"host": host, "addresses": [ip]}));
    }

    fn chall_post(&self, path: &str, body: serde_json::Value) {
        let r = reqwest::blocking::Client::new()
            .post(format!("http://127.0.0.1:{}/{path}", self.chall_mgmt_port))
            .body(body.to_string())
            .send()
            .unwrap();
        assert!(r.status().is_success(), "challtestsrv {path}: {}", r.status());
    }

    /// Stop pebble (the CA goes down); the DNS stays.
    pub fn stop_ca(&mut self) {
        let _ = self.pebble.kill();
        let _ = self.pebble.wait();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("pebble.log")).unwrap_or_default()
            + &std::fs::read_to_string(self.dir.join("pebble.err")).unwrap_or_default()
    }

    /// How many certificates pebble issued so far (from its log).
    pub fn issued_count(&self) -> usize {
        self.log().matches("Issued certificate serial").count()
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        let _ = self.pebble.kill();
        let _ = self.chall.kill();
        let _ = self.pebble.wait();
        let _ = self.chall.wait();
    }
}

/// Wait until the child listens on `port`; fail early if it exits.
fn wait_child_port(child: &mut Child, port: u16, errlog: &Path) -> Result<(), String> {
    let start = std::time::Instant::now();
    loop {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        if let Ok(Some(st)) = child.try_wait() {
            return Err(format!(
                "exited with {st}: {}",
                std::fs::read_to_string(errlog).unwrap_or_default()
            ));
        }
        if start.elapsed() > std::time::Duration::from_secs(60) {
            return Err(format!(
                "not listening on {port} after 60 s: {}",
                std::fs::read_to_string(errlog).unwrap_or_default()
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
