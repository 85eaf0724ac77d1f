//! The Apache writer: one `<apache.sites_dir>/<siteid>.conf` per site, and
//! every change to Apache's files as a transaction — write, `configtest`,
//! and either reload or put every file back exactly as it was.
//!
//! A transaction keeps a journal ([`crate::journal`]: each file's previous
//! content and mode) until it is decided, so that a crash between writing
//! and testing is rolled back by the next run: Apache's last good
//! configuration survives any interruption (docs/design.md, invariant 5).

use crate::config::Config;
use crate::error::{Error, Result};
use crate::fsutil;
use crate::journal::{self, Completion, Index, Previous, Saved};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Which certificate the TLS virtual host serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VhostTls {
    /// Plain http only.
    None,
    /// `live/<host>/fullchain.pem` + `privkey.pem`.
    Lkc { fullchain: PathBuf, privkey: PathBuf },
    /// `<ssl_dir>/<siteid>.crt` + `.key` (+ `.cacrt`).
    Okc { crt: PathBuf, key: PathBuf, cacrt: Option<PathBuf> },
}

fn q(p: &Path) -> String {
    format!("\"{}\"", p.display().to_string().replace('"', "\\\""))
}

/// A hostname as it goes into a URL's authority, a `Host` header or
/// `ServerName`: an IPv6 address in brackets (`[::1]`), anything else as is.
pub fn url_host(hostname: &str) -> String {
    match hostname.parse::<std::net::Ipv6Addr>() {
        Ok(_) => format!("[{hostname}]"),
        Err(_) => hostname.to_string(),
    }
}

/// Render a site's virtual hosts.
pub fn render(cfg: &Config, siteid: &str, hostname: &str, tls: &VhostTls) -> String {
    let docroot = cfg.site_docroot(siteid);
    let challenge = cfg.site_wellknown(siteid).join(".well-known/acme-challenge");
    let names = if hostname == "*" {
        "    ServerName any-host.invalid\n    ServerAlias *\n".to_string()
    } else if hostname.parse::<std::net::Ipv6Addr>().is_ok() {
        // `ServerName` takes no IPv6 literal (`::1` reads as a port, `[::1]`
        // as a wildcard pattern); Apache matches a request for `[::1]` by
        // the bare address, which `ServerAlias` takes as is.
        format!("    ServerName {siteid}.ipv6-literal.invalid\n    ServerAlias {hostname}\n")
    } else {
        format!("    ServerName {hostname}\n")
    };
    let challenge_block = format!(
        "    # ACME HTTP-01: served on plain http, never redirected (renewals need it).\n    Alias /.well-known/acme-challenge/ {}\n    <Directory {}>\n        Options None\n        AllowOverride None\n        ForceType text/plain\n        Require all granted\n    </Directory>\n",
        q(&challenge.join("")),
        q(&challenge)
    );
    let docroot_block = format!("    DocumentRoot {}\n    <Directory {}>\n        Require all granted\n    </Directory>\n", q(&docroot), q(&docroot));
    let mut s = format!("# site-admin: site {siteid} ({hostname}). Generated; changes are overwritten.\n");
    let http_port = cfg.apache.http_port;
    let https_port = cfg.apache.https_port;
    match tls {
        VhostTls::None => {
            s += &format!("<VirtualHost *:{http_port}>\n{names}{docroot_block}{challenge_block}</VirtualHost>\n");
        }
        VhostTls::Lkc { .. } | VhostTls::Okc { .. } => {
            let authority = url_host(hostname);
            let target = if https_port == 443 { format!("https://{authority}") } else { format!("https://{authority}:{https_port}") };
            s += &format!(
                "<VirtualHost *:{http_port}>\n{names}{docroot_block}{challenge_block}    RewriteEngine On\n    RewriteCond %{{REQUEST_URI}} !^/\\.well-known/acme-challenge/\n    RewriteRule ^(.*)$ {target}$1 [R=301,L]\n</VirtualHost>\n"
            );
            let files = match tls {
                VhostTls::Lkc { fullchain, privkey } => format!("    SSLCertificateFile {}\n    SSLCertificateKeyFile {}\n", q(fullchain), q(privkey)),
                VhostTls::Okc { crt, key, cacrt } => {
                    let mut f = format!("    SSLCertificateFile {}\n    SSLCertificateKeyFile {}\n", q(crt), q(key));
                    if let Some(ca) = cacrt {
                        f += &format!("    SSLCACertificateFile {}\n", q(ca));
                    }
                    f
                }
                VhostTls::None => unreachable!(),
            };
            s += &format!(
                "<VirtualHost *:{https_port}>\n{names}{docroot_block}    SSLEngine on\n{files}    SSLProtocol all -SSLv3 -TLSv1 -TLSv1.1\n    SSLHonorCipherOrder off\n{challenge_block}</VirtualHost>\n"
            );
        }
    }
    s
}

/// The default TLS virtual host of the https port, from the site files in
/// `sites_dir`: a copy of the TLS vhost of the IP-address site (at most one:
/// `facts::check_hostname_free`), or None. A client of an address sends no
/// server name (SNI), so Apache hands it the port's first TLS vhost; that
/// copy lives in [`Config::default_tls_vhost_file`], which sorts before every
/// site's file. Binding the vhost to the address instead (`<VirtualHost
/// [::1]:443>`) would win every connection to that address, and so take the
/// DNS sites on it away from their own certificates.
pub fn render_default(cfg: &Config) -> Option<String> {
    let default = cfg.default_tls_vhost_file();
    let mut files: Vec<PathBuf> = fs::read_dir(&cfg.apache.sites_dir).ok()?.filter_map(|e| e.ok()).map(|e| e.path()).collect();
    files.sort();
    let open = format!("<VirtualHost *:{}>", cfg.apache.https_port);
    for f in files.iter().filter(|f| **f != default && f.extension().is_some_and(|x| x == "conf")) {
        let Ok(text) = fs::read_to_string(f) else { continue };
        // "# site-admin: site <id> (<host>). Generated; ..."
        let Some(rest) = text.lines().next().and_then(|l| l.strip_prefix("# site-admin: site ")) else { continue };
        let Some((id, rest)) = rest.split_once(" (") else { continue };
        let Some((host, _)) = rest.split_once("). ") else { continue };
        if host.parse::<std::net::IpAddr>().is_err() {
            continue;
        }
        if let Some(at) = text.find(&open) {
            return Some(format!(
                "# site-admin: the TLS virtual host of site {id} ({host}), first of port {} so that clients of the address, which send no server name, get its certificate. Generated; changes are overwritten.\n{}",
                cfg.apache.https_port,
                &text[at..]
            ));
        }
    }
    None
}

/// Is the default TLS vhost file what the site files call for?
pub fn default_in_line(cfg: &Config) -> bool {
    fs::read_to_string(cfg.default_tls_vhost_file()).ok() == render_default(cfg)
}

/// Bring the default TLS vhost file in line (`doctor --repair`: a device
/// whose IP site was deployed before site-admin kept that file), as one
/// transaction.
pub fn repair_default(cfg: &Config, rec: &Recovered, progress: &dyn Fn(&str)) -> std::result::Result<(), ApacheError> {
    let mut txn = Transaction::begin(cfg, rec)?;
    txn.sync_default()?;
    txn.commit(false, progress, &|_| Ok(()))
}

/// What can go wrong with a change to Apache's configuration. The command
/// decides what it means for its exit code (all are failures today).
#[derive(Debug, thiserror::Error)]
pub enum ApacheError {
    /// `configtest` refused the new configuration; the previous one is back.
    #[error("Apache refused the new configuration, so the previous one was put back: {said}")]
    Refused { said: String },
    /// `configtest` fails without our change too (another file is broken).
    #[error("Apache's configuration fails its test even without this change (another file is broken), so nothing was changed: {said}")]
    AlreadyBroken { said: String },
    /// The reload made Apache exit (or failed); the previous configuration is back.
    #[error("Apache could not load the new configuration ({said}); the previous configuration was put back and {}", match .back { Ok(()) => "Apache serves it again".to_string(), Err(e) => format!("Apache could not be brought back: {e}") })]
    ReloadFailed { said: String, back: std::result::Result<(), String> },
    /// Reloading for a certificate that changed under an unchanged vhost failed.
    #[error("reloading Apache for the new certificate: {said}")]
    Reload { said: String },
    #[error(transparent)]
    Fs(#[from] Error),
}

impl From<ApacheError> for Error {
    fn from(e: ApacheError) -> Error {
        match e {
            ApacheError::Fs(e) => e,
            other => Error::Failed(other.to_string()),
        }
    }
}

/// What finishes an operation after Apache accepted its configuration
/// (stash the old certificate, store the Site JSON, ...): the engine runs the
/// journaled [`Completion`]; after a crash it runs it again.
pub type Complete<'c> = &'c dyn Fn(&Completion) -> Result<()>;

/// Proof that a crash's leftover transaction has been dealt with: only
/// [`recover`] makes one, and [`Transaction::begin`] needs one.
#[derive(Debug)]
pub struct Recovered {
    _private: (),
}

/// A set of changes to Apache-related files (vhosts, OKC files), decided
/// together by `configtest`.
pub struct Transaction<'a> {
    cfg: &'a Config,
    index: Index,
}

impl<'a> Transaction<'a> {
    /// Start a transaction, once any interrupted one was recovered.
    pub fn begin(cfg: &'a Config, _recovered: &Recovered) -> Result<Transaction<'a>> {
        journal::start(cfg)?;
        Ok(Transaction { cfg, index: Index::default() })
    }

    fn write_index(&self) -> Result<()> {
        journal::write(self.cfg, &self.index)
    }

    /// What to run once `configtest` has passed (journaled with the files).
    pub fn set_completion(&mut self, c: Completion) -> Result<()> {
        self.index.completion = Some(c);
        if !self.index.saved.is_empty() {
            self.write_index()?;
        }
        Ok(())
    }

    /// What to run if the transaction is rolled back instead. Journaled at
    /// once, even before any file changed: the operation may add to the
    /// store (a lineage) before it writes Apache's files.
    pub fn set_rollback(&mut self, c: Completion) -> Result<()> {
        self.index.rollback = Some(c);
        self.write_index()
    }

    /// Give the transaction up undecided (the operation failed on its way):
    /// every file put back, Apache reloaded if it had loaded an interim
    /// step, the rollback run, the journal dropped.
    pub fn abort(self, complete: Complete) -> Result<()> {
        journal::restore(&self.index.saved)?;
        if self.index.interim {
            if let Err(e) = reload(self.cfg) {
                tracing::warn!("reloading Apache on the previous configuration: {e}");
            }
        }
        if let Some(c) = &self.index.rollback {
            complete(c)?;
        }
        journal::finish(self.cfg)
    }

    fn save(&mut self, path: &Path) -> Result<()> {
        if self.index.saved.iter().any(|s| s.path == path) {
            return Ok(());
        }
        let n = self.index.saved.len();
        let saved = match journal::previous(path)? {
            Previous::Link(target) => Saved { path: path.to_path_buf(), copy: None, mode: 0, link: Some(target) },
            Previous::File { data, mode } => Saved { path: path.to_path_buf(), copy: Some(journal::keep_copy(self.cfg, n, &data)?), mode, link: None },
            Previous::Missing => Saved { path: path.to_path_buf(), copy: None, mode: 0, link: None },
        };
        self.index.saved.push(saved);
        self.write_index()
    }

    /// Write a file as part of the transaction (nothing happens if it holds
    /// these bytes with this mode already).
    pub fn write(&mut self, path: &Path, data: &[u8], mode: u32) -> Result<()> {
        let unchanged = fs::read(path).map(|d| d == data).unwrap_or(false)
            && fs::symlink_metadata(path).map(|m| m.is_file() && m.permissions().mode() & 0o7777 == mode).unwrap_or(false);
        if unchanged {
            return Ok(());
        }
        self.save(path)?;
        if let Some(p) = path.parent() {
            fsutil::create_dir_all_mode(p, 0o755)?;
        }
        fsutil::atomic_write(path, data, mode)?;
        crate::fault::point("apache.wrote_file");
        Ok(())
    }

    /// Remove a file as part of the transaction.
    pub fn remove(&mut self, path: &Path) -> Result<()> {
        if !fsutil::exists_nofollow(path) {
            return Ok(());
        }
        self.save(path)?;
        fsutil::remove_file_if_exists(path)?;
        crate::fault::point("apache.removed_file");
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.index.saved.is_empty()
    }

    /// Bring the default TLS vhost ([`render_default`]) in line with the
    /// site files as this transaction left them (part of the transaction).
    fn sync_default(&mut self) -> Result<()> {
        let path = self.cfg.default_tls_vhost_file();
        match render_default(self.cfg) {
            Some(text) => self.write(&path, text.as_bytes(), 0o644),
            None => self.remove(&path),
        }
    }

    /// Load an interim step of the transaction: `configtest`, then reload
    /// Apache on it, but keep the journal open and undecided (marked
    /// `interim`), so the operation goes on in the same transaction and a
    /// crash before [`Transaction::commit`] decides rolls everything back
    /// (Apache reloaded on the previous files). On failure every file is put
    /// back, as by `commit`.
    pub fn commit_interim(mut self, progress: &dyn Fn(&str)) -> Result<Transaction<'a>, ApacheError> {
        if self.index.saved.is_empty() {
            return Ok(self);
        }
        self.sync_default()?;
        progress("checking the Apache configuration");
        if let Err(said) = run_argv(&self.cfg.apache.configtest) {
            return Err(self.refused(said, None));
        }
        self.index.interim = true;
        self.write_index()?;
        crate::fault::point("apache.interim_marked");
        progress("reloading Apache");
        if let Err(said) = reload(self.cfg) {
            journal::restore(&self.index.saved)?;
            journal::finish(self.cfg)?;
            return Err(ApacheError::ReloadFailed { said, back: restart(self.cfg) });
        }
        crate::fault::point("apache.interim_loaded");
        Ok(self)
    }

    /// `configtest` refused the files: put every file back (reloading Apache
    /// if it had loaded an interim step), run the rollback completion, and
    /// say whose fault it is.
    fn refused(self, said: String, complete: Option<Complete>) -> ApacheError {
        if let Err(e) = journal::restore(&self.index.saved) {
            return e.into();
        }
        // Reload before the journal goes: a crash in between rolls back again.
        if self.index.interim {
            if let Err(e) = reload(self.cfg) {
                tracing::warn!("reloading Apache on the previous configuration: {e}");
            }
        }
        if let (Some(c), Some(complete)) = (&self.index.rollback, complete) {
            if let Err(e) = complete(c) {
                return e.into();
            }
        }
        if let Err(e) = journal::finish(self.cfg) {
            return e.into();
        }
        // Whose fault? Test again without our change.
        match run_argv(&self.cfg.apache.configtest) {
            Ok(()) => ApacheError::Refused { said },
            Err(_) => ApacheError::AlreadyBroken { said },
        }
    }

    /// Run `configtest`; on failure put every file back and fail with what
    /// Apache said; on success record the decision, reload Apache (checking
    /// it still serves), run the completion, and drop the journal. With
    /// `reload_anyway`, Apache is reloaded even when no file of the
    /// transaction changed (a certificate a vhost points at changed under it).
    pub fn commit(mut self, reload_anyway: bool, progress: &dyn Fn(&str), complete: Complete) -> Result<(), ApacheError> {
        if self.index.saved.is_empty() {
            if reload_anyway {
                progress("reloading Apache for the new certificate");
                reload(self.cfg).map_err(|said| ApacheError::Reload { said })?;
            }
            if let Some(c) = &self.index.completion {
                complete(c)?;
            }
            return Ok(journal::finish(self.cfg)?);
        }
        self.sync_default()?;
        crate::fault::point("apache.before_configtest");
        progress("checking the Apache configuration");
        if let Err(said) = run_argv(&self.cfg.apache.configtest) {
            return Err(self.refused(said, Some(complete)));
        }
        self.index.decided = true;
        self.write_index()?;
        crate::fault::point("apache.decided");
        progress("reloading Apache");
        if let Err(said) = reload(self.cfg) {
            // The new configuration passed configtest but Apache could not
            // load it (a key or chain mod_ssl refuses): put the previous one
            // back and bring Apache up on it, so the other sites keep serving.
            self.index.decided = false;
            self.write_index()?;
            journal::restore(&self.index.saved)?;
            if let Some(c) = &self.index.rollback {
                complete(c)?;
            }
            journal::finish(self.cfg)?;
            return Err(ApacheError::ReloadFailed { said, back: restart(self.cfg) });
        }
        crate::fault::point("apache.reloaded");
        if let Some(c) = &self.index.completion {
            complete(c)?;
        }
        crate::fault::point("apache.completed");
        Ok(journal::finish(self.cfg)?)
    }
}

/// How long a graceful reload may take to fail (measured: 13 ms after
/// `graceful` returned, with an RSA-1024 key): Apache's parent re-reads
/// its configuration after `graceful` has returned, and exits if mod_ssl
/// cannot load a key or chain.
const RELOAD_SETTLE: Duration = Duration::from_millis(100);

/// Does Apache accept connections on the local http port?
pub fn serving(cfg: &Config) -> bool {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], cfg.apache.http_port));
    std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
}

/// Ask Apache to read its configuration, then check it still serves. Err
/// says what went wrong when the reload command failed or Apache, serving
/// before, stopped serving after it. An Apache that was not running is not
/// an error (the configuration is valid and is read when Apache starts).
pub fn reload(cfg: &Config) -> std::result::Result<(), String> {
    let was_serving = serving(cfg);
    let res = run_argv(&cfg.apache.reload);
    if !was_serving {
        if let Err(said) = res {
            tracing::warn!("reloading Apache failed ({said}); it was not running, and the new configuration is read when it starts");
        }
        return Ok(());
    }
    res?;
    // Watch through the settle time: a parent that exits closes its sockets.
    let settle = Instant::now();
    while settle.elapsed() < RELOAD_SETTLE {
        std::thread::sleep(Duration::from_millis(25));
        if !serving(cfg) {
            break;
        }
    }
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(2) {
        if serving(cfg) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!("Apache stopped serving on port {} after the reload (see its error log)", cfg.apache.http_port))
}

/// Bring Apache up again after a reload killed it: `apache.start`, then
/// check it serves.
pub fn restart(cfg: &Config) -> std::result::Result<(), String> {
    if serving(cfg) {
        return run_argv(&cfg.apache.reload);
    }
    run_argv(&cfg.apache.start)?;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        if serving(cfg) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!("`{}` ran, but Apache does not serve on port {}", cfg.apache.start.join(" "), cfg.apache.http_port))
}

/// The serial (lowercase hex, no leading zeros) of the certificate Apache
/// serves for `host` (SNI) on the local https port, if it serves one.
pub fn served_serial(cfg: &Config, host: &str) -> Option<String> {
    use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
    let mut b = SslConnector::builder(SslMethod::tls_client()).ok()?;
    b.set_verify(SslVerifyMode::NONE);
    let conn = b.build().configure().ok()?.verify_hostname(false).use_server_name_indication(true);
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], cfg.apache.https_port));
    let tcp = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    tcp.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    tcp.set_write_timeout(Some(Duration::from_secs(3))).ok()?;
    let s = conn.connect(host, tcp).ok()?;
    let cert = s.ssl().peer_certificate()?;
    let hex = cert.serial_number().to_bn().ok()?.to_hex_str().ok()?.to_string().to_lowercase();
    let t = hex.trim_start_matches('0');
    Some(if t.is_empty() { "0".into() } else { t.into() })
}

/// What [`recover`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    Nothing,
    /// An undecided transaction: every file put back.
    RolledBack,
    /// A decided one: Apache reloaded and the completion run again.
    Completed,
}

/// Finish a transaction a crash interrupted: roll it back if `configtest`
/// had not decided for it (and reload Apache if it had loaded an interim
/// step of it), else reload and complete it. Needs the global
/// lock; returns the proof that new transactions may begin.
pub fn recover(cfg: &Config, _lock: &crate::lock::GlobalLock, complete: Complete) -> Result<(Recovered, Recovery)> {
    let Some(index) = journal::read(cfg)? else {
        return Ok((Recovered { _private: () }, Recovery::Nothing));
    };
    let what = if index.decided {
        if let Err(said) = reload(cfg) {
            tracing::warn!("reloading Apache while completing an interrupted operation: {said}");
        }
        if let Some(c) = &index.completion {
            complete(c)?;
        }
        journal::finish(cfg)?;
        tracing::warn!("completed an interrupted operation (Apache had accepted its configuration)");
        Recovery::Completed
    } else {
        journal::restore(&index.saved)?;
        if index.interim {
            // Apache had loaded an interim step (a renamed site's http vhost
            // during its provisioning): serve the previous files again.
            if let Err(said) = reload(cfg) {
                tracing::warn!("reloading Apache while rolling back an interrupted operation: {said}");
            }
        }
        if let Some(c) = &index.rollback {
            complete(c)?;
        }
        journal::finish(cfg)?;
        tracing::warn!("rolled back an interrupted change to the Apache configuration");
        Recovery::RolledBack
    };
    Ok((Recovered { _private: () }, what))
}

/// Run an argv; Err carries what it printed.
pub fn run_argv(argv: &[String]) -> std::result::Result<(), String> {
    let (prog, args) = argv.split_first().ok_or_else(|| "empty command".to_string())?;
    match Command::new(prog).args(args).stdin(std::process::Stdio::null()).output() {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => {
            let text = format!("{}{}", String::from_utf8_lossy(&o.stderr), String::from_utf8_lossy(&o.stdout));
            let text: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
            Err(format!("`{}` exited with {}: {}", argv.join(" "), o.status, text.join(" / ")))
        }
        Err(e) => Err(format!("cannot run `{}`: {e}", argv.join(" "))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(root: &Path) -> Config {
        fs::create_dir_all(root).unwrap();
        Config::load(root, &crate::config::Overrides::default()).unwrap()
    }

    #[test]
    fn an_ipv6_site_is_named_by_alias_and_redirected_in_brackets() {
        let tmp = std::env::temp_dir().join(format!("sa-apache-render-{}", std::process::id()));
        let c = cfg(&tmp);
        let tls = VhostTls::Lkc { fullchain: "/f".into(), privkey: "/k".into() };
        let text = render(&c, "s1", "::1", &tls);
        assert!(text.contains("    ServerAlias ::1\n") && !text.contains("ServerName ::1") && !text.contains("ServerName [::1]"), "{text}");
        assert!(text.contains("RewriteRule ^(.*)$ https://[::1]$1"), "{text}");
        let v4 = render(&c, "s2", "192.0.2.7", &tls);
        assert!(v4.contains("    ServerName 192.0.2.7\n") && v4.contains("https://192.0.2.7$1"), "{v4}");
        assert_eq!(url_host("2001:db8::1"), "[2001:db8::1]");
        assert_eq!(url_host("a.example"), "a.example");
        fs::remove_dir_all(&tmp).unwrap();
    }

    #[test]
    fn the_ip_sites_tls_vhost_is_the_default() {
        let tmp = std::env::temp_dir().join(format!("sa-apache-unit-{}", std::process::id()));
        let c = cfg(&tmp);
        fs::create_dir_all(&c.apache.sites_dir).unwrap();
        let tls = VhostTls::Lkc { fullchain: "/f".into(), privkey: "/k".into() };
        fs::write(c.vhost_file("s1"), render(&c, "s1", "a.example", &tls)).unwrap();
        fs::write(c.vhost_file("s2"), render(&c, "s2", "::1", &VhostTls::None)).unwrap();
        assert_eq!(render_default(&c), None, "an IP site on http needs no default");
        fs::write(c.vhost_file("s2"), render(&c, "s2", "::1", &tls)).unwrap();
        let d = render_default(&c).unwrap();
        assert!(d.contains("site s2 (::1)") && d.contains("<VirtualHost *:443>") && d.contains("ServerAlias ::1") && !d.contains("*:80"), "{d}");
        assert!(c.default_tls_vhost_file().file_name().unwrap().to_str().unwrap() < "s", "sorts before every site's file");
        fs::remove_dir_all(&tmp).unwrap();
    }
}
