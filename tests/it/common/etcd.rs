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
}

fn etcd_bin() -> PathBuf {
    super::require("etcd");
    PathBuf::from("etcd")
}

impl EtcdCluster {
    /// Start `n` members under `dir` and wait until they have a leader.
    pub fn start(dir: &Path, n: usize) -> EtcdCluster {
        let mut last = String::new();
        for attempt in 0..5 {
            let d = dir.join(format!("etcd-{attempt}"));
            std::fs::create_dir_all(&d).unwrap();
            let mut c = EtcdCluster::configure(&d, n);
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

    fn configure(dir: &Path, n: usize) -> EtcdCluster {
        let members: Vec<Member> = (0..n)
            .map(|i| {
                let (c, p) = (super::free_port(), super::free_port());
                Member {
                    name: format!("m{i}"),
                    client_url: format!("http://127.0.0.1:{c}"),
                    peer_url: format!("http://127.0.0.1:{p}"),
                    data_dir: dir.join(format!("m{i}.data")),
                    log: dir.join(format!("m{i}.log")),
                    child: None,
                }
            })
            .collect();
        let initial_cluster = members.iter().map(|m| format!("{}={}", m.name, m.peer_url)).collect::<Vec<_>>().join(",");
        EtcdCluster { members, initial_cluster }
    }

    fn spawn(&mut self, i: usize, state: &str) {
        let ic = self.initial_cluster.clone();
        let m = &mut self.members[i];
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&m.log).unwrap();
        let child = Command::new(etcd_bin())
            .args(["--name", &m.name, "--data-dir"])
            .arg(&m.data_dir)
            .args(["--listen-client-urls", &m.client_url, "--advertise-client-urls", &m.client_url])
            .args(["--listen-peer-urls", &m.peer_url, "--initial-advertise-peer-urls", &m.peer_url])
            .args(["--initial-cluster", &ic, "--initial-cluster-state", state, "--initial-cluster-token", "site-admin-test"])
            .args(["--heartbeat-interval", "100", "--election-timeout", "1000", "--logger", "zap", "--log-outputs", "stderr"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting etcd");
        m.child = Some(child);
    }

    fn wait_ready(&mut self, limit: Duration) -> Result<(), String> {
        let start = Instant::now();
        let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(2)).build().unwrap();
        loop {
            for m in &mut self.members {
                if let Some(Ok(Some(st))) = m.child.as_mut().map(|c| c.try_wait()) {
                    return Err(format!("{} exited ({st}): {}", m.name, tail(&m.log)));
                }
            }
            let ready = self.members.iter().all(|m| {
                http.post(format!("{}/v3/kv/range", m.client_url)).body(r#"{"key":"cmVhZHk="}"#).send().map(|r| r.status().is_success()).unwrap_or(false)
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
        let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(2)).build().unwrap();
        for m in self.members.iter().filter(|m| m.child.is_some()) {
            let Ok(r) = http.post(format!("{}/v3/maintenance/status", m.client_url)).body("{}").send() else { continue };
            let Ok(v) = r.json::<serde_json::Value>() else { continue };
            let leader = v["leader"].as_str().unwrap_or("").to_string();
            if leader.is_empty() {
                continue;
            }
            for (i, o) in self.members.iter().enumerate() {
                let Ok(r) = http.post(format!("{}/v3/maintenance/status", o.client_url)).body("{}").send() else { continue };
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
