//! A real apache2 with its own small main configuration on free loopback
//! ports, including the per-site files site-admin writes.

use super::require;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub struct Apache {
    pub ip: String,
    pub http_port: u16,
    pub https_port: u16,
    pub dir: PathBuf,
    pub conf: PathBuf,
}

pub const BIN: &str = "/usr/sbin/apache2";
const MODULES: &str = "/usr/lib/apache2/modules";

impl Apache {
    /// Write the main config (Listen on `ip`:`http_port` and `https_port`,
    /// mod_ssl, mod_rewrite, mod_alias, `IncludeOptional <sites_dir>/*.conf`);
    /// not started yet. Device B of a migration listens on 127.0.0.2 with
    /// device A's port numbers.
    pub fn configure_on(
        dir: &Path,
        sites_dir: &Path,
        ip: &str,
        http_port: u16,
        https_port: u16,
    ) -> Apache {
        require("apache2");
        std::fs::create_dir_all(dir.join("run")).unwrap();
        std::fs::create_dir_all(sites_dir).unwrap();
        let conf = dir.join("httpd.conf");
        let user = if unsafe_is_root() { "User www-data\nGroup www-data\n" } else { "" };
        let text = format!(
            "ServerRoot \"{dir}\"\nServerName localhost\nPidFile \"{dir}/httpd.pid\"\nDefaultRuntimeDir \"{dir}/run\"\nErrorLog \"{dir}/error.log\"\nLogLevel warn\n{user}\
             LoadModule mpm_event_module {m}/mod_mpm_event.so\nLoadModule authz_core_module {m}/mod_authz_core.so\nLoadModule mime_module {m}/mod_mime.so\nTypesConfig /etc/mime.types\n\
             LoadModule alias_module {m}/mod_alias.so\nLoadModule rewrite_module {m}/mod_rewrite.so\nLoadModule socache_shmcb_module {m}/mod_socache_shmcb.so\nLoadModule ssl_module {m}/mod_ssl.so\nLoadModule dir_module {m}/mod_dir.so\n\
             StartServers 1\nServerLimit 4\nThreadsPerChild 8\nMaxRequestWorkers 32\nMinSpareThreads 2\nMaxSpareThreads 16\nListen {ip}:{http_port}\nListen {ip}:{https_port}\n\
             SSLSessionCache \"shmcb:{dir}/run/ssl_scache(51200)\"\nDocumentRoot \"{dir}\"\n<Directory />\n    Require all denied\n</Directory>\n\
             IncludeOptional \"{sites}/*.conf\"\n",
            dir = dir.display(),
            m = MODULES,
            sites = sites_dir.display()
        );
        std::fs::write(&conf, text).unwrap();
        Apache { ip: ip.into(), http_port, https_port, dir: dir.into(), conf }
    }

    /// Listen on `ip` (e.g. `[::1]`) too, with the same ports (before start):
    /// pebble validates an IPv6 site's address there.
    pub fn also_listen(&self, ip: &str) {
        let mut text = std::fs::read_to_string(&self.conf).unwrap();
        text = text.replacen(
            "Listen ",
            &format!("Listen {ip}:{}\nListen {ip}:{}\nListen ", self.http_port, self.https_port),
            1,
        );
        std::fs::write(&self.conf, text).unwrap();
    }

    /// The argv site-admin runs for `apache.configtest` and `apache.reload`.
    pub fn configtest_argv(&self) -> Vec<String> {
        vec![BIN.into(), "-f".into(), self.conf.display().to_string(), "-t".into()]
    }
    pub fn start_argv(&self) -> Vec<String> {
        vec![BIN.into(), "-f".into(), self.conf.display().to_string(), "-k".into(), "start".into()]
    }
    pub fn reload_argv(&self) -> Vec<String> {
        vec![
            BIN.into(),
            "-f".into(),
            self.conf.display().to_string(),
            "-k".into(),
            "graceful".into(),
        ]
    }

    pub fn start(&self) {
        if let Err(e) = self.try_start() {
            panic!("{e}");
        }
    }

    /// [`Self::start`], saying why it did not start instead of panicking
    /// (a world of several devices picks new ports when one is taken).
    pub fn try_start(&self) -> Result<(), String> {
        let mut o = Command::new(BIN)
            .args(["-f", self.conf.to_str().unwrap(), "-k", "start"])
            .output()
            .unwrap();
        // A port the harness found free can be taken for a moment by another
        // socket before Apache binds it: wait and try again, a few times.
        for _ in 0..5 {
            let said = format!(
                "{}{}",
                String::from_utf8_lossy(&o.stderr),
                String::from_utf8_lossy(&o.stdout)
            );
            if o.status.success()
                || !(said.contains("could not bind") || said.contains("Address already in use"))
            {
                break;
            }
            std::thread::sleep(Duration::from_secs(1));
            o = Command::new(BIN)
                .args(["-f", self.conf.to_str().unwrap(), "-k", "start"])
                .output()
                .unwrap();
        }
        if !o.status.success() {
            return Err(format!(
                "apache2 did not start: {}{}\n{}",
                String::from_utf8_lossy(&o.stderr),
                String::from_utf8_lossy(&o.stdout),
                self.error_log()
            ));
        }
        let start = Instant::now();
        while std::net::TcpStream::connect((self.ip.as_str(), self.http_port)).is_err() {
            if start.elapsed() > Duration::from_secs(20) {
                return Err(format!("apache2 did not listen\n{}", self.error_log()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }

    fn pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.dir.join("httpd.pid")).ok()?.trim().parse().ok()
    }

    pub fn is_running(&self) -> bool {
        self.pid().map(|p| Path::new(&format!("/proc/{p}")).exists()).unwrap_or(false)
    }

    /// GET http://127.0.0.1:<http_port><path> for `host`, without following
    /// redirects: (status, Location, body).
    pub fn http_get(&self, host: &str, path: &str) -> (u16, Option<String>, String) {
        let c = reqwest::blocking::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        let r = c
            .get(format!("http://{}:{}{path}", self.ip, self.http_port))
            .header("Host", host)
            .send()
            .unwrap();
        let loc = r.headers().get("location").and_then(|v| v.to_str().ok()).map(str::to_string);
        (r.status().as_u16(), loc, r.text().unwrap_or_default())
    }

    /// The serial (lowercase hex) of the certificate served for `host` with
    /// SNI on the https port, or None if no TLS is served.
    pub fn served_serial(&self, host: &str) -> Option<String> {
        served_serial(&self.ip, self.https_port, host)
    }

    /// Wait until `host` is served the certificate with `serial` (a graceful
    /// reload takes effect in the background).
    pub fn wait_serial(&self, host: &str, serial: &str) {
        let start = Instant::now();
        loop {
            let got = self.served_serial(host);
            if got.as_deref() == Some(serial) {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "{host}: Apache serves {got:?}, expected {serial}\n{}",
                self.error_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn unsafe_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// TLS handshake with SNI `host` on 127.0.0.1:`port`; the leaf's serial.
pub fn served_serial(ip: &str, port: u16, host: &str) -> Option<String> {
    use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
    let mut b = SslConnector::builder(SslMethod::tls()).ok()?;
    b.set_verify(SslVerifyMode::NONE);
    let conn = b.build().configure().ok()?.verify_hostname(false);
    let tcp = std::net::TcpStream::connect((ip, port)).ok()?;
    tcp.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let s = conn.connect(host, tcp).ok()?;
    let cert = s.ssl().peer_certificate()?;
    let bn = cert.serial_number().to_bn().ok()?;
    let hex = bn.to_hex_str().ok()?.to_string().to_lowercase();
    let t = hex.trim_start_matches('0');
    Some(if t.is_empty() { "0".into() } else { t.into() })
}

impl Drop for Apache {
    fn drop(&mut self) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill").arg(pid.to_string()).status();
            let start = Instant::now();
            while Path::new(&format!("/proc/{pid}")).exists()
                && start.elapsed() < Duration::from_secs(5)
            {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}
