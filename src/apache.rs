//! The Apache writer: one `<apache.sites_dir>/<siteid>.conf` per site, and
//! every change to Apache's files as a transaction — write, `configtest`,
//! and either reload or put every file back exactly as it was.
//!
//! A transaction keeps a journal ([`crate::journal`]: each file's previous
//! content and mode) until it is decided, so that a crash between writing
//! and testing is rolled back by the next run: Apache's last good
//! configuration survives any interruption (docs/design.md, invariant 5).

use crate::config::Config;
use crate::fsutil::{self, IoError};
use crate::journal::{self, Completion, Index, JournalError, Previous, Saved};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Which certificate the TLS virtual host serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum VhostTls {
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
pub(crate) fn url_host(hostname: &str) -> String {
    match hostname.parse::<std::net::Ipv6Addr>() {
        Ok(_) => format!("[{hostname}]"),
        Err(_) => hostname.to_string(),
    }
}

/// Render a site's virtual hosts.
pub(crate) fn render(cfg: &Config, siteid: &str, hostname: &str, tls: &VhostTls) -> String {
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
    let docroot_block = format!(
        "    DocumentRoot {}\n    <Directory {}>\n        Require all granted\n    </Directory>\n",
        q(&docroot),
        q(&docroot)
    );
    let mut s =
        format!("# site-admin: site {siteid} ({hostname}). Generated; changes are overwritten.\n");
    let http_port = cfg.apache.http_port;
    let https_port = cfg.apache.https_port;
    match tls {
        VhostTls::None => {
            s += &format!("<VirtualHost *:{http_port}>\n{names}{docroot_block}{challenge_block}</VirtualHost>\n");
        }
        VhostTls::Lkc { .. } | VhostTls::Okc { .. } => {
            let authority = url_host(hostname);
            let target = if https_port == 443 {
                format!("https://{authority}")
            } else {
                format!("https://{authority}:{https_port}")
            };
            s += &format!(
                "<VirtualHost *:{http_port}>\n{names}{docroot_block}{challenge_block}    RewriteEngine On\n    RewriteCond %{{REQUEST_URI}} !^/\\.well-known/acme-challenge/\n    RewriteRule ^(.*)$ {target}$1 [R=301,L]\n</VirtualHost>\n"
            );
            let files = match tls {
                VhostTls::Lkc { fullchain, privkey } => format!(
                    "    SSLCertificateFile {}\n    SSLCertificateKeyFile {}\n",
                    q(fullchain),
                    q(privkey)
                ),
                VhostTls::Okc { crt, key, cacrt } => {
                    let mut f = format!(
                        "    SSLCertificateFile {}\n    SSLCertificateKeyFile {}\n",
                        q(crt),
                        q(key)
                    );
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
pub(crate) fn render_default(cfg: &Config) -> Option<String> {
    let default = cfg.default_tls_vhost_file();
    let mut files: Vec<PathBuf> = fs::read_dir(&cfg.apache.sites_dir)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .collect();
    files.sort();
    let open = format!("<VirtualHost *:{}>", cfg.apache.https_port);
    for f in files.iter().filter(|f| **f != default && f.extension().is_some_and(|x| x == "conf")) {
        let Ok(text) = fs::read_to_string(f) else { continue };
        // "# site-admin: site <id> (<host>). Generated; ..."
        let Some(rest) = text.lines().next().and_then(|l| l.strip_prefix("# site-admin: site "))
        else {
            continue;
        };
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
pub(crate) fn default_in_line(cfg: &Config) -> bool {
    fs::read_to_string(cfg.default_tls_vhost_file()).ok() == render_default(cfg)
}

/// Bring the default TLS vhost file in line (`doctor --repair`: a device
/// whose IP site was deployed before site-admin kept that file), as one
/// transaction.
pub(crate) fn repair_default(
    cfg: &Config,
    rec: &Recovered,
    progress: &dyn Fn(&str),
) -> std::result::Result<(), ApacheError> {
    let mut txn = Transaction::begin(cfg, rec)?;
    txn.sync_default()?;
    txn.commit(false, progress, &|_| Ok::<(), ApacheError>(()))
}

/// The server-wide file (in `apache.sites_dir`, so Apache includes it) with
/// the stateless HTTP-01 answer of the server's account.
pub(crate) fn acme_conf_file(cfg: &Config) -> PathBuf {
    cfg.apache.sites_dir.join("site-admin-acme-challenge.conf")
}

/// The stateless HTTP-01 answer ([RFC 8555 §8.1]: `<token>.<account key
/// thumbprint>`) for every host, so that a new site's challenge is answered
/// before its own vhost exists (one reload per new site). A challenge file
/// that exists (a site's own webroot, certbot's) is served instead.
///
/// [RFC 8555 §8.1]: https://www.rfc-editor.org/rfc/rfc8555#section-8.1
pub(crate) fn render_acme_conf(thumbprint: &str) -> String {
    format!(
        "# site-admin: the stateless ACME HTTP-01 answer of this device's account, for hosts\n\
         # no site's vhost serves yet. Generated; changes are overwritten.\n\
         <IfModule rewrite_module>\n\
         <LocationMatch \"^/\\.well-known/acme-challenge/(?<tok>[-_A-Za-z0-9]+)$\">\n\
         \x20   <If \"! -f %{{REQUEST_FILENAME}}\">\n\
         \x20       Require all granted\n\
         \x20       # mod_rewrite needs it; only where no file exists, so no link is followed.\n\
         \x20       Options +FollowSymLinks\n\
         \x20       ErrorDocument 200 \"%{{env:MATCH_TOK}}.{thumbprint}\"\n\
         \x20       RewriteEngine On\n\
         \x20       RewriteRule ^ - [R=200,L]\n\
         \x20   </If>\n\
         </LocationMatch>\n\
         </IfModule>\n"
    )
}

/// What can go wrong with a change to Apache's configuration. The command
/// decides what it means for its exit code (all are failures today).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApacheError {
    /// `configtest` refused the new configuration; the previous one is back.
    #[error("Apache refused the new configuration, so the previous one was put back: {said}")]
    Refused { said: RunError },
    /// `configtest` fails without our change too (another file is broken).
    #[error("Apache's configuration fails its test even without this change (another file is broken), so nothing was changed: {said}")]
    AlreadyBroken { said: RunError },
    /// The reload made Apache exit (or failed); the previous configuration is back.
    #[error("Apache could not load the new configuration ({said}); the previous configuration was put back and {}", match .back { Ok(()) => "Apache serves it again".to_string(), Err(e) => format!("Apache could not be brought back: {e}") })]
    ReloadFailed { said: ReloadError, back: Result<(), ReloadError> },
    /// Reloading for a certificate that changed under an unchanged vhost failed.
    #[error("reloading Apache for the new certificate: {said}")]
    Reload { said: ReloadError },
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(transparent)]
    Io(#[from] IoError),
}

/// Why a command of `apache.*` (or any argv) did not succeed; the message
/// carries what it printed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    #[error("empty command")]
    Empty,
    #[error("`{argv}` exited with {status}: {said}")]
    Exited { argv: String, status: std::process::ExitStatus, said: String },
    #[error("cannot run `{argv}`: {source}")]
    Spawn { argv: String, source: std::io::Error },
}

/// Why a reload (or a restart) did not leave Apache serving what was written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReloadError {
    #[error(transparent)]
    Run(#[from] RunError),
    #[error("signalling Apache (pid file {}): {source}", pid_file.display())]
    Signal { pid_file: PathBuf, source: rustix::io::Errno },
    /// Apache, serving before, stopped serving after the reload.
    #[error("Apache stopped serving on {0} after the reload (see its error log)")]
    Stopped(std::net::SocketAddr),
    /// The proofs did not all hold within the deadline; `what` names each host.
    #[error("Apache did not serve the new configuration within {} s after the reload: {what} (asked on {address})", RELOAD_DEADLINE.as_secs())]
    NotServed { what: String, address: std::net::IpAddr },
    /// `apache.start` ran, yet nothing serves.
    #[error("`{start}` ran, but Apache does not serve on port {port}")]
    NotUp { start: String, port: u16 },
}

type Result<T, E = ApacheError> = std::result::Result<T, E>;

/// What finishes an operation after Apache accepted its configuration
/// (stash the old certificate, store the Site JSON, ...): the engine runs the
/// journaled [`Completion`]; after a crash it runs it again. Its error is the
/// caller's own (`E`), passed through as it is; a transaction that takes one
/// ends with that error type, into which its own [`ApacheError`]s convert.
pub(crate) type Complete<'c, E> = &'c dyn Fn(&Completion) -> Result<(), E>;

/// Proof that a crash's leftover transaction has been dealt with: only
/// [`recover`] makes one, and [`Transaction::begin`] needs one.
#[derive(Debug)]
pub struct Recovered {
    _private: (),
}

/// A set of changes to Apache-related files (vhosts, OKC files), decided
/// together by `configtest`.
pub(crate) struct Transaction<'a> {
    cfg: &'a Config,
    index: Index,
    /// What shows that the reload took effect (not journaled: a crash's
    /// recovery reloads without proof).
    proofs: Vec<Proof>,
}

impl<'a> Transaction<'a> {
    /// Start a transaction, once any interrupted one was recovered.
    pub(crate) fn begin(cfg: &'a Config, _recovered: &Recovered) -> Result<Transaction<'a>> {
        journal::start(cfg)?;
        Ok(Transaction { cfg, index: Index::default(), proofs: Vec::new() })
    }

    fn write_index(&self) -> Result<()> {
        Ok(journal::write(self.cfg, &self.index)?)
    }

    /// What to run once `configtest` has passed (journaled with the files).
    pub(crate) fn set_completion(&mut self, c: Completion) -> Result<()> {
        self.index.completion = Some(c);
        if !self.index.saved.is_empty() {
            self.write_index()?;
        }
        Ok(())
    }

    /// What to run if the transaction is rolled back instead. Journaled at
    /// once, even before any file changed: the operation may add to the
    /// store (a lineage) before it writes Apache's files.
    pub(crate) fn set_rollback(&mut self, c: Completion) -> Result<()> {
        self.index.rollback = Some(c);
        self.write_index()
    }

    /// Give the transaction up undecided (the operation failed on its way):
    /// every file put back, Apache reloaded if it had loaded an interim
    /// step, the rollback run, the journal dropped.
    pub(crate) fn abort<E: From<ApacheError>>(self, complete: Complete<E>) -> Result<(), E> {
        journal::restore(&self.index.saved).map_err(ApacheError::from)?;
        if self.index.interim {
            if let Err(e) = reload(self.cfg) {
                tracing::warn!("reloading Apache on the previous configuration: {e}");
            }
        }
        if let Some(c) = &self.index.rollback {
            complete(c)?;
        }
        Ok(journal::finish(self.cfg).map_err(ApacheError::from)?)
    }

    fn save(&mut self, path: &Path) -> Result<()> {
        if self.index.saved.iter().any(|s| s.path == path) {
            return Ok(());
        }
        let n = self.index.saved.len();
        let saved = match journal::previous(path)? {
            Previous::Link(target) => {
                Saved { path: path.to_path_buf(), copy: None, mode: 0, link: Some(target) }
            }
            Previous::File { data, mode } => Saved {
                path: path.to_path_buf(),
                copy: Some(journal::keep_copy(self.cfg, n, &data)?),
                mode,
                link: None,
            },
            Previous::Missing => {
                Saved { path: path.to_path_buf(), copy: None, mode: 0, link: None }
            }
        };
        self.index.saved.push(saved);
        self.write_index()
    }

    /// Write a file as part of the transaction (nothing happens if it holds
    /// these bytes with this mode already).
    pub(crate) fn write(&mut self, path: &Path, data: &[u8], mode: u32) -> Result<()> {
        let unchanged = fs::read(path).map(|d| d == data).unwrap_or(false)
            && fs::symlink_metadata(path)
                .map(|m| m.is_file() && m.permissions().mode() & 0o7777 == mode)
                .unwrap_or(false);
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
    pub(crate) fn remove(&mut self, path: &Path) -> Result<()> {
        if !fsutil::exists_nofollow(path) {
            return Ok(());
        }
        self.save(path)?;
        fsutil::remove_file_if_exists(path)?;
        crate::fault::point("apache.removed_file");
        Ok(())
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
    pub(crate) fn commit_interim(
        mut self,
        progress: &dyn Fn(&str),
    ) -> Result<Transaction<'a>, ApacheError> {
        if self.index.saved.is_empty() {
            return Ok(self);
        }
        self.sync_default()?;
        progress("checking the Apache configuration");
        if let Err(said) = run_argv(&self.cfg.apache.configtest) {
            return Err(self.refused::<ApacheError>(said, None));
        }
        self.index.interim = true;
        self.write_index()?;
        crate::fault::point("apache.interim_marked");
        progress("reloading Apache");
        if let Err(said) = reload_proven(self.cfg, &self.proofs) {
            journal::restore(&self.index.saved)?;
            journal::finish(self.cfg)?;
            return Err(ApacheError::ReloadFailed { said, back: restart(self.cfg) });
        }
        // What proved this step proves nothing about the next one.
        self.proofs.clear();
        crate::fault::point("apache.interim_loaded");
        Ok(self)
    }

    /// `configtest` refused the files: put every file back (reloading Apache
    /// if it had loaded an interim step), run the rollback completion, and
    /// say whose fault it is.
    fn refused<E: From<ApacheError>>(self, said: RunError, complete: Option<Complete<E>>) -> E {
        if let Err(e) = journal::restore(&self.index.saved) {
            return ApacheError::from(e).into();
        }
        // Reload before the journal goes: a crash in between rolls back again.
        if self.index.interim {
            if let Err(e) = reload(self.cfg) {
                tracing::warn!("reloading Apache on the previous configuration: {e}");
            }
        }
        if let (Some(c), Some(complete)) = (&self.index.rollback, complete) {
            if let Err(e) = complete(c) {
                return e;
            }
        }
        if let Err(e) = journal::finish(self.cfg) {
            return ApacheError::from(e).into();
        }
        // Whose fault? Test again without our change.
        match run_argv(&self.cfg.apache.configtest) {
            Ok(()) => ApacheError::Refused { said },
            Err(_) => ApacheError::AlreadyBroken { said },
        }
        .into()
    }

    /// Add what shows that Apache serves this transaction's files once it
    /// reloaded (see [`reload_proven`]).
    pub(crate) fn prove(&mut self, p: Proof) {
        self.proofs.push(p);
    }

    /// Run `configtest`; on failure put every file back and fail with what
    /// Apache said; on success record the decision, reload Apache (checking
    /// it still serves), run the completion, and drop the journal. With
    /// `reload_anyway`, Apache is reloaded even when no file of the
    /// transaction changed (a certificate a vhost points at changed under it).
    pub(crate) fn commit<E: From<ApacheError>>(
        mut self,
        reload_anyway: bool,
        progress: &dyn Fn(&str),
        complete: Complete<E>,
    ) -> Result<(), E> {
        if self.index.saved.is_empty() {
            if reload_anyway {
                progress("reloading Apache for the new certificate");
                reload_proven(self.cfg, &self.proofs)
                    .map_err(|said| ApacheError::Reload { said })?;
            }
            if let Some(c) = &self.index.completion {
                complete(c)?;
            }
            return Ok(journal::finish(self.cfg).map_err(ApacheError::from)?);
        }
        self.sync_default()?;
        crate::fault::point("apache.before_configtest");
        progress("checking the Apache configuration");
        if let Err(said) = run_argv(&self.cfg.apache.configtest) {
            return Err(self.refused(said, Some(complete)));
        }
        tracing::debug!("step: configtest passed");
        self.index.decided = true;
        self.write_index()?;
        crate::fault::point("apache.decided");
        progress("reloading Apache");
        if let Err(said) = reload_proven(self.cfg, &self.proofs) {
            // The new configuration passed configtest but Apache could not
            // load it (a key or chain mod_ssl refuses): put the previous one
            // back and bring Apache up on it, so the other sites keep serving.
            self.index.decided = false;
            self.write_index()?;
            journal::restore(&self.index.saved).map_err(ApacheError::from)?;
            if let Some(c) = &self.index.rollback {
                complete(c)?;
            }
            journal::finish(self.cfg).map_err(ApacheError::from)?;
            return Err(ApacheError::ReloadFailed { said, back: restart(self.cfg) }.into());
        }
        crate::fault::point("apache.reloaded");
        if let Some(c) = &self.index.completion {
            complete(c)?;
        }
        crate::fault::point("apache.completed");
        Ok(journal::finish(self.cfg).map_err(ApacheError::from)?)
    }
}

/// How long a graceful reload may take to fail when nothing proves it done
/// (measured: 13 ms after `graceful` returned, with an RSA-1024 key):
/// Apache's parent re-reads its configuration after `graceful` has
/// returned, and exits if mod_ssl cannot load a key or chain. Only a reload
/// without a [`Proof`] (undeploy, crash recovery) watches this window.
const RELOAD_SETTLE: Duration = Duration::from_millis(100);

/// How long a reload may take to serve what was written before it fails.
pub(crate) const RELOAD_DEADLINE: Duration = Duration::from_secs(10);

/// How often the proofs are polled after a reload.
const PROOF_POLL: Duration = Duration::from_millis(5);

/// How long Apache may refuse connections after a reload before it counts
/// as stopped (a parent that exited closes its listening sockets for good).
const DOWN_GRACE: Duration = Duration::from_secs(1);

/// What shows that Apache serves the configuration a reload was for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Proof {
    /// The TLS handshake with this SNI on the https port presents the
    /// certificate with this serial (lowercase hex, no leading zeros).
    Serial { host: String, serial: String },
    /// A probe file written into this challenge directory
    /// (`.../.well-known/acme-challenge`) is served for this host on the
    /// http port: the host's vhost answers (an http-only change).
    Probe { host: String, dir: PathBuf },
}

/// A probe file, removed when dropped whatever happened.
struct ProbeFile {
    path: PathBuf,
    token: String,
}

impl ProbeFile {
    fn write(dir: &Path) -> Option<ProbeFile> {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let token = format!("site-admin-probe-{}-{n}-{nanos}", std::process::id());
        fsutil::create_dir_all_mode(dir, 0o755).ok()?;
        let path = dir.join(&token);
        fsutil::atomic_write(&path, token.as_bytes(), 0o644).ok()?;
        Some(ProbeFile { path, token })
    }
}

impl Drop for ProbeFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// Does Apache accept connections on the http port of `apache.address`?
pub(crate) fn serving(cfg: &Config) -> bool {
    let addr = std::net::SocketAddr::new(cfg.apache.address, cfg.apache.http_port);
    std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
}

/// GET `path` for `host` on the http port of `apache.address`, over a
/// new connection (a kept-alive one would stay with an old child, which
/// serves the old configuration for as long as it is reused): the status
/// and at most 64 KiB of the body. Plain HTTP/1.0, no TLS roots to load.
pub(crate) fn http_get(cfg: &Config, host: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let addr = std::net::SocketAddr::new(cfg.apache.address, cfg.apache.http_port);
    let mut tcp = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    tcp.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    tcp.set_write_timeout(Some(Duration::from_secs(2))).ok()?;
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    tcp.write_all(
        format!("GET {path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: site-admin\r\n\r\n").as_bytes(),
    )
    .ok()?;
    let mut buf = Vec::new();
    tcp.take(64 * 1024).read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

/// Is the probe file served for `host` on the http port?
fn probe_served(cfg: &Config, host: &str, probe: &ProbeFile) -> bool {
    matches!(http_get(cfg, host, &format!("/.well-known/acme-challenge/{}", probe.token)), Some((200, body)) if body == probe.token)
}

/// Ask Apache to read its configuration, then check it still serves. Err
/// says what went wrong when the reload command failed or Apache, serving
/// before, stopped serving after it. An Apache that was not running is not
/// an error (the configuration is valid and is read when Apache starts).
/// Nothing proves the new configuration is served: see [`reload_proven`].
pub(crate) fn reload(cfg: &Config) -> Result<(), ReloadError> {
    reload_proven(cfg, &[])
}

/// [`reload`], done only when Apache serves what was written: every proof
/// holds (polled every few milliseconds: the serial each host presents, the
/// probe each vhost answers). A parent that exited (mod_ssl refused a key)
/// is an error, and so is a proof that does not hold within
/// [`RELOAD_DEADLINE`] (naming the host). With no proof, Apache is watched
/// through a short settle window instead.
pub(crate) fn reload_proven(cfg: &Config, proofs: &[Proof]) -> Result<(), ReloadError> {
    let where_ = std::net::SocketAddr::new(cfg.apache.address, cfg.apache.http_port);
    let was_serving = serving(cfg);
    if !was_serving {
        tracing::info!("Apache is not running (nothing answers on {where_}); reloading anyway, and the new configuration is read when it starts");
    }
    // The probe files go in before the reload: the new vhost answers at once.
    let probes = write_probes(proofs);
    let res = ask_reload(cfg);
    if !was_serving {
        if let Err(said) = res {
            tracing::warn!("reloading Apache failed ({said}); it was not running, and the new configuration is read when it starts");
        }
        return Ok(());
    }
    res?;
    tracing::debug!("step: reload command returned");
    let stopped = || ReloadError::Stopped(where_);
    if proofs.is_empty() {
        return if still_serving_after_settle(cfg) { Ok(()) } else { Err(stopped()) };
    }
    match await_proofs(cfg, proofs, &probes) {
        Ok(()) => Ok(()),
        Err(Unproven::Stopped) => Err(stopped()),
        Err(Unproven::Late(what)) => {
            Err(ReloadError::NotServed { what: what.join("; "), address: cfg.apache.address })
        }
    }
}

/// The probe file of each [`Proof::Probe`], by the proof's index (None: it
/// could not be written).
fn write_probes(proofs: &[Proof]) -> Vec<(usize, Option<ProbeFile>)> {
    proofs
        .iter()
        .enumerate()
        .filter_map(|(i, p)| {
            if let Proof::Probe { dir, .. } = p {
                Some((i, ProbeFile::write(dir)))
            } else {
                None
            }
        })
        .collect()
}

/// With no proof: watch Apache through the settle time (a parent that exits
/// closes its sockets), then give it two seconds to answer.
fn still_serving_after_settle(cfg: &Config) -> bool {
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
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Why the proofs of a reload did not hold.
enum Unproven {
    /// Apache stopped serving (for longer than [`DOWN_GRACE`], or at the end).
    Stopped,
    /// Not within [`RELOAD_DEADLINE`]: what each pending proof saw.
    Late(Vec<String>),
}

/// Poll the proofs until all hold (and Apache still serves), Apache stops
/// serving, or [`RELOAD_DEADLINE`] passes.
fn await_proofs(
    cfg: &Config,
    proofs: &[Proof],
    probes: &[(usize, Option<ProbeFile>)],
) -> std::result::Result<(), Unproven> {
    let started = Instant::now();
    let mut pending: Vec<usize> = (0..proofs.len()).collect();
    let mut last_seen: Vec<Option<String>> = vec![None; proofs.len()];
    let mut down_since: Option<Instant> = None;
    loop {
        // One proof at a time, in order: one generation of Apache serves
        // them all, so while the first does not hold the others are not
        // asked (50 handshakes a round would slow the restart they wait for).
        while let Some(&i) = pending.first() {
            if !proof_holds(
                cfg,
                &proofs[i],
                probes.iter().find(|(j, _)| *j == i),
                &mut last_seen[i],
            ) {
                break;
            }
            pending.remove(0);
        }
        if pending.is_empty() {
            tracing::debug!(
                "step: proof: Apache serves the new configuration {} ms after the reload returned",
                started.elapsed().as_millis()
            );
            return if serving(cfg) { Ok(()) } else { Err(Unproven::Stopped) };
        }
        if serving(cfg) {
            down_since = None;
        } else if down_since.get_or_insert_with(Instant::now).elapsed() > DOWN_GRACE {
            return Err(Unproven::Stopped);
        }
        if started.elapsed() > RELOAD_DEADLINE {
            return Err(Unproven::Late(
                pending.iter().map(|&i| late(&proofs[i], &last_seen[i])).collect(),
            ));
        }
        std::thread::sleep(PROOF_POLL);
    }
}

/// Does one proof hold now? A serial proof records the serial it saw.
fn proof_holds(
    cfg: &Config,
    proof: &Proof,
    probe: Option<&(usize, Option<ProbeFile>)>,
    last_seen: &mut Option<String>,
) -> bool {
    match proof {
        Proof::Serial { host, serial } => {
            let got = served_serial(cfg, host);
            let ok = got.as_deref() == Some(serial.as_str());
            *last_seen = got;
            ok
        }
        Proof::Probe { host, .. } => match probe {
            Some((_, Some(f))) => probe_served(cfg, host, f),
            // The probe file could not be written: liveness only.
            _ => true,
        },
    }
}

/// What a proof that did not hold in time saw.
fn late(proof: &Proof, last_seen: &Option<String>) -> String {
    match proof {
        Proof::Serial { host, serial } => format!(
            "{host} is served {} instead of the new certificate (serial {serial})",
            last_seen
                .as_deref()
                .map(|s| format!("serial {s}"))
                .unwrap_or_else(|| "no certificate".into())
        ),
        Proof::Probe { host, .. } => {
            format!("{host} does not answer on plain http from its site's challenge directory")
        }
    }
}

/// Ask Apache for a graceful restart: SIGUSR1 to the parent named by
/// `apache.pid_file` when that is a running apache2/httpd (what `apachectl
/// graceful` does once it has parsed the configuration again, which
/// `configtest` just did), else run `apache.reload`.
fn ask_reload(cfg: &Config) -> Result<(), ReloadError> {
    if let Some(pf) = &cfg.apache.pid_file {
        match apache_parent(pf) {
            Some(pid) => {
                tracing::debug!(
                    pid = pid.as_raw_nonzero().get(),
                    "signalling Apache's parent (SIGUSR1, graceful)"
                );
                return rustix::process::kill_process(pid, rustix::process::Signal::USR1)
                    .map_err(|source| ReloadError::Signal { pid_file: pf.clone(), source });
            }
            None => {
                tracing::debug!("{} names no running Apache; running apache.reload", pf.display())
            }
        }
    }
    Ok(run_argv(&cfg.apache.reload)?)
}

/// The pid in Apache's PidFile, if that process is an apache2/httpd.
fn apache_parent(pid_file: &Path) -> Option<rustix::process::Pid> {
    let raw: i32 = fs::read_to_string(pid_file).ok()?.trim().parse().ok()?;
    if raw <= 1 {
        return None;
    }
    let comm = fs::read_to_string(format!("/proc/{raw}/comm")).ok()?;
    if !matches!(comm.trim(), "apache2" | "httpd") {
        return None;
    }
    rustix::process::Pid::from_raw(raw)
}

/// Bring Apache up again after a reload killed it: `apache.start`, then
/// check it serves.
pub(crate) fn restart(cfg: &Config) -> Result<(), ReloadError> {
    if serving(cfg) {
        return Ok(run_argv(&cfg.apache.reload)?);
    }
    run_argv(&cfg.apache.start)?;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        if serving(cfg) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(ReloadError::NotUp { start: cfg.apache.start.join(" "), port: cfg.apache.http_port })
}

/// The serial (lowercase hex, no leading zeros) of the certificate Apache
/// serves for `host` (SNI) on the https port of `apache.address`, if it serves one.
pub(crate) fn served_serial(cfg: &Config, host: &str) -> Option<String> {
    use openssl::ssl::{Ssl, SslContext, SslMethod, SslVerifyMode};
    // One context for the process, without the system's roots (nothing is
    // verified: only the serial is read): an SslConnector loads them for
    // every handshake, ~30 ms, which made a reload's proofs for 50 hosts
    // take seconds.
    static CTX: std::sync::OnceLock<Option<SslContext>> = std::sync::OnceLock::new();
    let ctx = CTX
        .get_or_init(|| {
            let mut b = SslContext::builder(SslMethod::tls_client()).ok()?;
            b.set_verify(SslVerifyMode::NONE);
            Some(b.build())
        })
        .as_ref()?;
    let mut ssl = Ssl::new(ctx).ok()?;
    // SNI names a host, never an address (as SslConnector does).
    if host.parse::<std::net::IpAddr>().is_err() {
        ssl.set_hostname(host).ok()?;
    }
    let addr = std::net::SocketAddr::new(cfg.apache.address, cfg.apache.https_port);
    let tcp = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    tcp.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    tcp.set_write_timeout(Some(Duration::from_secs(3))).ok()?;
    let s = ssl.connect(tcp).ok()?;
    let cert = s.ssl().peer_certificate()?;
    let hex = cert.serial_number().to_bn().ok()?.to_hex_str().ok()?.to_string().to_lowercase();
    let t = hex.trim_start_matches('0');
    Some(if t.is_empty() { "0".into() } else { t.into() })
}

/// What [`recover`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Recovery {
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
pub(crate) fn recover<E: From<ApacheError>>(
    cfg: &Config,
    _lock: &crate::lock::GlobalLock,
    complete: Complete<E>,
) -> Result<(Recovered, Recovery), E> {
    let jr = |r: Result<(), JournalError>| r.map_err(|e| E::from(ApacheError::from(e)));
    let Some(index) = journal::read(cfg).map_err(ApacheError::from)? else {
        return Ok((Recovered { _private: () }, Recovery::Nothing));
    };
    let what = if index.decided {
        if let Err(said) = reload(cfg) {
            tracing::warn!("reloading Apache while completing an interrupted operation: {said}");
        }
        if let Some(c) = &index.completion {
            complete(c)?;
        }
        jr(journal::finish(cfg))?;
        tracing::warn!(
            "completed an interrupted operation (Apache had accepted its configuration)"
        );
        Recovery::Completed
    } else {
        jr(journal::restore(&index.saved))?;
        if index.interim {
            // Apache had loaded an interim step (a renamed site's http vhost
            // during its provisioning): serve the previous files again.
            if let Err(said) = reload(cfg) {
                tracing::warn!(
                    "reloading Apache while rolling back an interrupted operation: {said}"
                );
            }
        }
        if let Some(c) = &index.rollback {
            complete(c)?;
        }
        jr(journal::finish(cfg))?;
        tracing::warn!("rolled back an interrupted change to the Apache configuration");
        Recovery::RolledBack
    };
    Ok((Recovered { _private: () }, what))
}

/// Run an argv; Err carries what it printed.
pub(crate) fn run_argv(argv: &[String]) -> Result<(), RunError> {
    let (prog, args) = argv.split_first().ok_or(RunError::Empty)?;
    match Command::new(prog).args(args).stdin(std::process::Stdio::null()).output() {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&o.stderr),
                String::from_utf8_lossy(&o.stdout)
            );
            let text: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
            Err(RunError::Exited { argv: argv.join(" "), status: o.status, said: text.join(" / ") })
        }
        Err(source) => Err(RunError::Spawn { argv: argv.join(" "), source }),
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
        assert!(
            text.contains("    ServerAlias ::1\n")
                && !text.contains("ServerName ::1")
                && !text.contains("ServerName [::1]"),
            "{text}"
        );
        assert!(text.contains("RewriteRule ^(.*)$ https://[::1]$1"), "{text}");
        let v4 = render(&c, "s2", "192.0.2.7", &tls);
        assert!(
            v4.contains("    ServerName 192.0.2.7\n") && v4.contains("https://192.0.2.7$1"),
            "{v4}"
        );
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
        assert!(
            d.contains("site s2 (::1)")
                && d.contains("<VirtualHost *:443>")
                && d.contains("ServerAlias ::1")
                && !d.contains("*:80"),
            "{d}"
        );
        assert!(
            c.default_tls_vhost_file().file_name().unwrap().to_str().unwrap() < "s",
            "sorts before every site's file"
        );
        fs::remove_dir_all(&tmp).unwrap();
    }
}
