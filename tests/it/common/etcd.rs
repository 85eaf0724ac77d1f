//! A real etcd cluster (Debian's etcd-server) of three members on loopback:
//! free ports, its own data directories, torn down on drop (every member
//! killed, even when the test failed). A port taken between picking it and
//! etcd binding it makes the cluster start again on new ports.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Member {
    pub name: String,
    pub client_url: String,
    peer_url: String,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

pub struct EtcdCluster {
    pub members: Vec<Member>,
    initial_cluster: String,
    tls: Option<EtcdPki>,
}

/// A CA, a server certificate for 127.0.0.1, and client certificates with
/// no CN (etcd's JSON gateway refuses any request whose client certificate
/// has one once auth is enabled).
#[derive(Clone)]
pub struct EtcdPki {
    pub dir: PathBuf,
    pub ca: PathBuf,
    server: (PathBuf, PathBuf),
    ca_cert: std::sync::Arc<(rcgen::Certificate, rcgen::KeyPair)>,
}

impl EtcdPki {
    pub fn create(dir: &Path) -> EtcdPki {
        std::fs::create_dir_all(dir).unwrap();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name.push(rcgen::DnType::CommonName, "etcd test CA");
        let ca = p.self_signed(&ca_key).unwrap();
        let pki = EtcdPki {
            dir: dir.to_path_buf(),
            ca: dir.join("ca.pem"),
            server: (dir.join("server.pem"), dir.join("server.key")),
            ca_cert: std::sync::Arc::new((ca, ca_key)),
        };
        std::fs::write(&pki.ca, pki.ca_cert.0.pem()).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut sp = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        sp.subject_alt_names.push(rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap()));
        sp.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = sp.signed_by(&key, &pki.ca_cert.0, &pki.ca_cert.1).unwrap();
        std::fs::write(&pki.server.0, cert.pem()).unwrap();
        std::fs::write(&pki.server.1, key.serialize_pem()).unwrap();
        pki
    }

    /// A client certificate and key for `name` (in the SAN; no CN), 0600.
    pub fn client(&self, name: &str) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(vec![format!("{name}.fleet")]).unwrap();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let cert = p.signed_by(&key, &self.ca_cert.0, &self.ca_cert.1).unwrap();
        let (c, k) = (self.dir.join(format!("{name}.pem")), self.dir.join(format!("{name}.key")));
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        std::fs::set_permissions(&k, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        (c, k)
    }

    fn http(&self, client: Option<&(PathBuf, PathBuf)>) -> reqwest::blocking::Client {
        let mut b = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(3))
            .tls_built_in_root_certs(false)
            .add_root_certificate(
                reqwest::Certificate::from_pem(&std::fs::read(&self.ca).unwrap()).unwrap(),
            );
        if let Some((c, k)) = client {
            let mut pem = std::fs::read(c).unwrap();
            pem.extend(std::fs::read(k).unwrap());
            b = b.identity(reqwest::Identity::from_pem(&pem).unwrap());
        }
        b.build().unwrap()
    }
}

fn etcd_bin() -> PathBuf {
    super::require("etcd");
    PathBuf::from("etcd")
}

impl EtcdCluster {
    /// Start `n` members under `dir` and wait until they have a leader.
    pub fn start(dir: &Path, n: usize) -> EtcdCluster {
        EtcdCluster::start_with(dir, n, None)
    }

    /// Start `n` members that require client certificates from `pki`.
    pub fn start_tls(dir: &Path, n: usize, pki: &EtcdPki) -> EtcdCluster {
        EtcdCluster::start_with(dir, n, Some(pki.clone()))
    }

    fn start_with(dir: &Path, n: usize, tls: Option<EtcdPki>) -> EtcdCluster {
        let mut last = String::new();
        for attempt in 0..5 {
            let d = dir.join(format!("etcd-{attempt}"));
            std::fs::create_dir_all(&d).unwrap();
            let mut c = EtcdCluster::configure(&d, n, tls.clone());
            for i in 0..n {
                c.spawn(i, "new");
            }
            match c.wait_ready(Duration::from_secs(20)) {
                Ok(()) => return c,
                Err(e) => last = e,
            }
            // Dropping `c` kills what started; try again on new ports.
        }
        panic!("etcd cluster did not form: {last}");
    }

    fn configure(dir: &Path, n: usize, tls: Option<EtcdPki>) -> EtcdCluster {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let members: Vec<Member> = (0..n)
            .map(|i| {
                let (c, p) = (super::free_port(), super::free_port());
                Member {
                    name: format!("m{i}"),
                    client_url: format!("{scheme}://127.0.0.1:{c}"),
                    peer_url: format!("http://127.0.0.1:{p}"),
                    data_dir: dir.join(format!("m{i}.data")),
                    log: dir.join(format!("m{i}.log")),
                    child: None,
                }
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url))
            .collect::<Vec<_>>()
            .join(",");
        EtcdCluster { members, initial_cluster, tls }
    }

    /// A client of the raw gateway (with the root certificate when TLS is on).
    pub fn raw(&self) -> reqwest::blocking::Client {
        match &self.tls {
            Some(pki) => pki.http(Some(&pki.client("harness"))),
            None => reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(3))
                .build()
                .unwrap(),
        }
    }

    /// Turn on auth: a root user, and for each (user, password, prefix) a
    /// user whose role may read and write only under that prefix.
    pub fn enable_auth(&self, root_password: &str, users: &[(&str, &str, &str)]) {
        let http = self.raw();
        let url = &self.members[0].client_url;
        let b64 = |s: &str| {
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, s.as_bytes())
        };
        let post = |path: &str, body: serde_json::Value| {
            let r = http.post(format!("{url}{path}")).json(&body).send().unwrap();
            let st = r.status();
            let text = r.text().unwrap();
            assert!(st.is_success() && !text.contains("\"error\""), "{path}: {st} {text}");
        };
        post("/v3/auth/user/add", serde_json::json!({"name": "root", "password": root_password}));
        post("/v3/auth/user/grant", serde_json::json!({"user": "root", "role": "root"}));
        for (user, password, prefix) in users {
            let end = site_admin::fleet::etcd::prefix_end(prefix.as_bytes());
            let role = format!("{user}-role");
            post("/v3/auth/role/add", serde_json::json!({"name": role}));
            post(
                "/v3/auth/role/grant",
                serde_json::json!({"name": role, "perm": {"permType": "READWRITE", "key": b64(prefix), "range_end": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &end)}}),
            );
            post("/v3/auth/user/add", serde_json::json!({"name": user, "password": password}));
            post("/v3/auth/user/grant", serde_json::json!({"user": user, "role": role}));
        }
        post("/v3/auth/enable", serde_json::json!({}));
    }

    fn spawn(&mut self, i: usize, state: &str) {
        let ic = self.initial_cluster.clone();
        let m = &mut self.members[i];
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&m.log).unwrap();
        let mut cmd = Command::new(etcd_bin());
        if let Some(pki) = &self.tls {
            cmd.arg("--client-cert-auth")
                .arg("--trusted-ca-file")
                .arg(&pki.ca)
                .arg("--cert-file")
                .arg(&pki.server.0)
                .arg("--key-file")
                .arg(&pki.server.1);
        }
        let child = cmd
            .args(["--name", &m.name, "--data-dir"])
            .arg(&m.data_dir)
            .args(["--listen-client-urls", &m.client_url, "--advertise-client-urls", &m.client_url])
            .args(["--listen-peer-urls", &m.peer_url, "--initial-advertise-peer-urls", &m.peer_url])
            .args([
                "--initial-cluster",
                &ic,
                "--initial-cluster-state",
                state,
                "--initial-cluster-token",
                "site-admin-test",
            ])
            .args([
                "--heartbeat-interval",
                "100",
                "--election-timeout",
                "1000",
                "--logger",
                "zap",
                "--log-outputs",
                "stderr",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting etcd");
        m.child = Some(child);
    }

    fn wait_ready(&mut self, limit: Duration) -> Result<(), String> {
        let start = Instant::now();
        let http = self.raw();
        loop {
            for m in &mut self.members {
                if let Some(Ok(Some(st))) = m.child.as_mut().map(|c| c.try_wait()) {
                    return Err(format!("{} exited ({st}): {}", m.name, tail(&m.log)));
                }
            }
            let ready = self.members.iter().all(|m| {
                http.post(format!("{}/v3/kv/range", m.client_url))
                    .body(r#"{"key":"cmVhZHk="}"#)
                    .send()
                    .map(|r| r.status().is_success())
                    .unwrap_or(false)
            });
            if ready {
                return Ok(());
            }
            if start.elapsed() > limit {
                return Err(format!("no quorum after {limit:?}: {}", tail(&self.members[0].log)));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client_url.clone()).collect()
    }

    /// The index of the current leader.
    pub fn leader(&self) -> Option<usize> {
        let http = self.raw();
        for m in self.members.iter().filter(|m| m.child.is_some()) {
            let Ok(r) =
                http.post(format!("{}/v3/maintenance/status", m.client_url)).body("{}").send()
            else {
                continue;
            };
            let Ok(v) = r.json::<serde_json::Value>() else { continue };
            let leader = v["leader"].as_str().unwrap_or("").to_string();
            if leader.is_empty() {
                continue;
            }
            for (i, o) in self.members.iter().enumerate() {
                let Ok(r) =
                    http.post(format!("{}/v3/maintenance/status", o.client_url)).body("{}").send()
                else {
                    continue;
                };
                let Ok(s) = r.json::<serde_json::Value>() else { continue };
                if s["header"]["member_id"].as_str() == Some(leader.as_str()) {
                    return Some(i);
                }
            }
        }
        None
    }

    /// Kill member `i` (SIGKILL), as a crash would.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn tail(p: &Path) -> String {
    let s = std::fs::read_to_string(p).unwrap_or_default();
    s.lines().rev().take(5).collect::<Vec<_>>().join(" | ")
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}
