//! Let's Encrypt material in certbot's on-disk layout (docs/design.md, Files), so that
//! certbot itself can list and renew it:
//!
//! ```text
//! archive/<host>/{cert,chain,fullchain,privkey}N.pem
//! live/<host>/*.pem -> ../../archive/<host>/*N.pem      (relative links)
//! renewal/<host>.conf
//! norenewal/<host>/ and norenewal/<host>.conf           (the stash, UBOS layout)
//! accounts/<server netloc+path>/<id>/{private_key.json,regr.json,meta.json}
//! ```
//!
//! A new version is written as N+1 across all four files, each fsynced; the
//! `live/<host>` directory is then swapped in one step (a new directory of
//! links exchanged with the old by `renameat2(RENAME_EXCHANGE)`), so a reader
//! never sees a key from one version next to a certificate from another.

pub mod accounts;

use crate::certs::KeyCert;
use crate::fsutil::{self, IoContext, IoError};
use crate::model::KeyType;
use crate::renewal_conf::RenewalConf;
use std::fs;
use std::path::{Path, PathBuf};

/// The four files of a version, in certbot's order.
pub const KINDS: [&str; 4] = ["cert", "chain", "fullchain", "privkey"];
/// The file name of the deploy hook site-admin installs in certbot's
/// `renewal-hooks/deploy/`, so that a renewal certbot makes reaches Apache.
pub const CERTBOT_DEPLOY_HOOK: &str = "site-admin-reload-apache";
/// certbot keeps the current version plus this many older ones.
pub const KEEP_OLDER: u32 = 5;
/// The certbot version we write into renewal confs (older than any we test
/// with, so certbot does not warn that the conf comes from a newer certbot).
pub const CONF_VERSION: &str = "2.0.0";

const LIVE_README: &str = "This directory contains your keys and certificates.\n\n`[cert name]/privkey.pem`  : the private key for your certificate.\n`[cert name]/fullchain.pem`: the certificate file used in most server software.\n`[cert name]/chain.pem`    : used for OCSP stapling in Nginx >=1.3.7.\n`[cert name]/cert.pem`     : will break many server configurations, and should not be used\n                             without reading further documentation (see link below).\n\nWARNING: DO NOT MOVE OR RENAME THESE FILES!\n         Certbot expects these files to remain in this location in order\n         to function properly!\n\nWe recommend not moving these files. For more information, see the Certbot\nUser Guide at https://certbot.eff.org/docs/using.html#where-are-my-certificates.\n";

/// What can go wrong in the store beyond the file system. The store does
/// not choose exit codes: the command that knows where the bytes came from
/// does (material from a Site JSON is invalid input; a damaged stash on the
/// device is a failure).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Key and certificate that would not serve (unreadable, or not a pair).
    #[error("{host}: {why}")]
    Unusable { host: String, why: String },
    /// The stash entry to take back is missing or damaged.
    #[error("{host}: {why}")]
    Stash { host: String, why: String },
    #[error(transparent)]
    Io(#[from] IoError),
}

type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Where a lineage's links are: under renewal, or stashed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Place {
    Live,
    Stashed,
}

/// What a lineage's current links hold.
#[derive(Debug, Clone)]
pub enum Material {
    Absent,
    /// Present but unreadable: a dangling link, garbage PEM.
    Broken(String),
    Present(KeyCert),
}

impl Material {
    pub fn keycert(&self) -> Option<&KeyCert> {
        match self {
            Material::Present(kc) => Some(kc),
            _ => None,
        }
    }
}

/// What the renewal conf of a new or changed lineage says about renewing it.
#[derive(Debug, Clone)]
pub struct RenewalParams {
    /// The account id (certbot's), when one is known: an empty `account =`
    /// is never written.
    pub account: Option<String>,
    pub server: String,
    pub webroot: PathBuf,
    pub key_type: KeyType,
    /// The profile renewals ask for again.
    pub profile: Option<ProfileWish>,
}

/// What a lineage's renewal conf says, typed. Only this module knows
/// certbot's keys (`[renewalparams] account`, `webroot_path`,
/// `[[webroot_map]]`, ...); the engine reads this.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LineageConf {
    pub account: Option<String>,
    pub server: Option<String>,
    /// The webroot answering HTTP-01 for the lineage's host: its
    /// `[[webroot_map]]` entry, else the first of `webroot_path`.
    pub webroot: Option<PathBuf>,
    /// None when the conf names none or one site-admin does not know.
    pub key_type: Option<KeyType>,
    pub renew_before_expiry: Option<chrono::Duration>,
    /// The certificate profile renewals ask for (certbot's
    /// `preferred_profile` / `required_profile`).
    pub profile: Option<ProfileWish>,
    /// What ARI said last ([`AriState`]).
    pub ari: AriState,
}

pub use crate::model::ProfileWish;

pub use crate::model::AriState;

const ARI: &str = "acme_renewal_info";

fn utc(s: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::parse_from_rfc3339(s.trim()).ok().map(|t| t.with_timezone(&chrono::Utc))
}

/// certbot's `ari_retry_after`: a naive local time.
fn naive_local(s: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    use chrono::TimeZone;
    let n = chrono::NaiveDateTime::parse_from_str(s.trim(), "%Y-%m-%dT%H:%M:%S").ok()?;
    chrono::Local.from_local_datetime(&n).earliest().map(|t| t.with_timezone(&chrono::Utc))
}

impl AriState {
    fn from_conf(c: &RenewalConf) -> AriState {
        let g = |k: &str| c.get(Some(ARI), k).filter(|v| !v.trim().is_empty());
        AriState {
            retry_after: g("ari_retry_after").and_then(|v| naive_local(&v).or_else(|| utc(&v))),
            cert_id: g("site_admin_cert_id"),
            window: match (
                g("site_admin_window_start").and_then(|v| utc(&v)),
                g("site_admin_window_end").and_then(|v| utc(&v)),
            ) {
                (Some(a), Some(b)) => Some((a, b)),
                _ => None,
            },
            chosen: g("site_admin_chosen").and_then(|v| utc(&v)),
            explanation_url: g("site_admin_explanation_url"),
            offered: g("site_admin_ari_offered").map(|v| v.trim() == "True" || v.trim() == "true"),
        }
    }

    fn to_pairs(&self) -> Vec<(String, String)> {
        let t = |d: &chrono::DateTime<chrono::Utc>| {
            d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        };
        let mut v = Vec::new();
        if let Some(r) = &self.retry_after {
            v.push((
                "ari_retry_after".into(),
                r.with_timezone(&chrono::Local).format("%Y-%m-%dT%H:%M:%S").to_string(),
            ));
        }
        if let Some(o) = self.offered {
            v.push((
                "site_admin_ari_offered".into(),
                if o { "True".into() } else { "False".into() },
            ));
        }
        if let Some(id) = &self.cert_id {
            v.push(("site_admin_cert_id".into(), id.clone()));
        }
        if let Some((a, b)) = &self.window {
            v.push(("site_admin_window_start".into(), t(a)));
            v.push(("site_admin_window_end".into(), t(b)));
        }
        if let Some(c) = &self.chosen {
            v.push(("site_admin_chosen".into(), t(c)));
        }
        if let Some(u) = &self.explanation_url {
            v.push(("site_admin_explanation_url".into(), u.clone()));
        }
        v
    }
}

impl LineageConf {
    fn from_conf(host: &str, c: &RenewalConf) -> LineageConf {
        let rp = |k: &str| c.get(Some("renewalparams"), k).filter(|v| !v.trim().is_empty());
        let webroot = c
            .section("webroot_map")
            .into_iter()
            .find(|(k, _)| k == host)
            .map(|(_, v)| PathBuf::from(v))
            .or_else(|| {
                rp("webroot_path").and_then(|w| {
                    w.split(',').map(str::trim).find(|p| !p.is_empty()).map(PathBuf::from)
                })
            });
        LineageConf {
            account: rp("account"),
            server: rp("server"),
            webroot,
            key_type: rp("key_type").and_then(|k| KeyType::parse(&k)),
            renew_before_expiry: c
                .get(None, "renew_before_expiry")
                .and_then(|s| crate::renewal_conf::parse_interval(&s)),
            profile: match (rp("required_profile"), rp("preferred_profile")) {
                (Some(name), _) => Some(ProfileWish { name, required: true }),
                (None, Some(name)) => Some(ProfileWish { name, required: false }),
                _ => None,
            },
            ari: AriState::from_conf(c),
        }
    }
}

/// A key and its chain to be written as a version.
#[derive(Debug, Clone)]
pub struct NewVersion {
    pub key_pem: String,
    pub cert_pem: String,
    pub chain_pem: String,
    pub fullchain_pem: String,
}

impl NewVersion {
    /// Split a full chain (leaf first) into cert and chain.
    pub fn from_key_and_fullchain(
        key_pem: &str,
        fullchain: &str,
    ) -> Result<NewVersion, StoreError> {
        let blocks = crate::certs::pem_blocks(fullchain);
        if blocks.is_empty() {
            return Err(StoreError::Unusable {
                host: "certificate".into(),
                why: "no PEM CERTIFICATE block".into(),
            });
        }
        Ok(NewVersion {
            key_pem: ensure_nl(key_pem),
            cert_pem: blocks[0].clone(),
            chain_pem: blocks[1..].concat(),
            fullchain_pem: blocks.concat(),
        })
    }
}

/// `s`, ending in a newline.
pub fn ensure_nl(s: &str) -> String {
    if s.ends_with('\n') {
        s.to_string()
    } else {
        format!("{s}\n")
    }
}

/// One lineage, as `certificates` lists it.
#[derive(Debug, Clone)]
pub struct Lineage {
    pub name: String,
    pub place: Place,
    pub conf: Option<LineageConf>,
    pub material: Material,
    pub version: Option<u32>,
}

/// The certbot-layout store rooted at `letsencrypt_dir`.
#[derive(Debug, Clone)]
pub struct Store {
    pub dir: PathBuf,
}

impl Store {
    pub fn new(dir: impl Into<PathBuf>) -> Store {
        Store { dir: dir.into() }
    }
    pub fn live_dir(&self, host: &str) -> PathBuf {
        self.dir.join("live").join(host)
    }
    pub fn archive_dir(&self, host: &str) -> PathBuf {
        self.dir.join("archive").join(host)
    }
    pub fn renewal_conf_path(&self, host: &str) -> PathBuf {
        self.dir.join("renewal").join(format!("{host}.conf"))
    }
    pub fn stash_dir(&self, host: &str) -> PathBuf {
        self.dir.join("norenewal").join(host)
    }
    pub fn stash_conf_path(&self, host: &str) -> PathBuf {
        self.dir.join("norenewal").join(format!("{host}.conf"))
    }
    fn links_dir(&self, host: &str, place: Place) -> PathBuf {
        match place {
            Place::Live => self.live_dir(host),
            Place::Stashed => self.stash_dir(host),
        }
    }
    /// The `cert.pem` link of `host` in `place`.
    pub fn cert_file(&self, host: &str, place: Place) -> PathBuf {
        self.links_dir(host, place).join("cert.pem")
    }
    fn conf_path(&self, host: &str, place: Place) -> PathBuf {
        match place {
            Place::Live => self.renewal_conf_path(host),
            Place::Stashed => self.stash_conf_path(host),
        }
    }

    pub fn has(&self, host: &str, place: Place) -> bool {
        fsutil::exists_nofollow(&self.links_dir(host, place))
    }

    /// The key and full chain the links of `host` point at, as one pair.
    ///
    /// Readers that take no lock (backup, showsite, listsites) may race a
    /// renewal that switches `live/<host>` between reading the key and the
    /// chain. So both links are resolved first: they must name the same
    /// version N, and the archive's files of version N (never rewritten) are
    /// read; a pair whose key does not match is read again (a few times)
    /// before it is reported as it is.
    pub fn material(&self, host: &str, place: Place) -> Material {
        let mut last = Material::Absent;
        for _ in 0..5 {
            last = self.material_once(host, place);
            match &last {
                Material::Present(kc) if !kc.key_matches => {}
                Material::Broken(_) => {}
                _ => return last,
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        last
    }

    /// The archive version a link in `dir` names (`../../archive/<host>/<kind>N.pem`).
    fn link_version_of(dir: &Path, kind: &str) -> Option<(PathBuf, u32)> {
        let target = fs::read_link(dir.join(format!("{kind}.pem"))).ok()?;
        let n =
            target.file_name()?.to_str()?.strip_prefix(kind)?.strip_suffix(".pem")?.parse().ok()?;
        Some((dir.join(target), n))
    }

    fn material_once(&self, host: &str, place: Place) -> Material {
        let dir = self.links_dir(host, place);
        if !fsutil::exists_nofollow(&dir) {
            return Material::Absent;
        }
        if let (Some((kp, kn)), Some((cp, cn))) =
            (Self::link_version_of(&dir, "privkey"), Self::link_version_of(&dir, "fullchain"))
        {
            if kn == cn {
                if let (Ok(key), Ok(chain)) = (fs::read_to_string(&kp), fs::read_to_string(&cp)) {
                    return match KeyCert::parse(&key, &chain) {
                        Ok(kc) => Material::Present(kc),
                        Err(e) => Material::Broken(format!("{}: {e}", dir.display())),
                    };
                }
            }
        }
        let key = match fs::read_to_string(dir.join("privkey.pem")) {
            Ok(k) => k,
            Err(e) => {
                return Material::Broken(format!("{}: {e}", dir.join("privkey.pem").display()))
            }
        };
        let chain = match fs::read_to_string(dir.join("fullchain.pem")) {
            Ok(k) => k,
            Err(e) => {
                return Material::Broken(format!("{}: {e}", dir.join("fullchain.pem").display()))
            }
        };
        match KeyCert::parse(&key, &chain) {
            Ok(kc) => Material::Present(kc),
            Err(e) => Material::Broken(format!("{}: {e}", dir.display())),
        }
    }

    /// Only the certificate (`cert.pem`) of a lineage: enough to know when
    /// it expires or is due, without reading and parsing its private key.
    pub fn leaf(&self, host: &str, place: Place) -> Option<crate::certs::CertInfo> {
        let pem = fs::read(self.links_dir(host, place).join("cert.pem")).ok()?;
        crate::certs::parse_first_cert(&pem).ok()
    }

    /// The version number the `cert.pem` link of `host` points at.
    pub fn current_version(&self, host: &str, place: Place) -> Option<u32> {
        let target = fs::read_link(self.links_dir(host, place).join("cert.pem")).ok()?;
        let name = target.file_name()?.to_str()?;
        name.strip_prefix("cert")?.strip_suffix(".pem")?.parse().ok()
    }

    /// Every version number with at least one file in `archive/<host>`.
    pub fn archive_versions(&self, host: &str) -> Vec<u32> {
        let mut v: Vec<u32> = fs::read_dir(self.archive_dir(host))
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter_map(|e| {
                        let n = e.file_name().to_string_lossy().into_owned();
                        KINDS.iter().find_map(|k| {
                            n.strip_prefix(k)
                                .and_then(|r| r.strip_suffix(".pem"))
                                .and_then(|d| d.parse().ok())
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Versions whose four files all exist.
    pub fn complete_versions(&self, host: &str) -> Vec<u32> {
        let a = self.archive_dir(host);
        self.archive_versions(host)
            .into_iter()
            .filter(|n| KINDS.iter().all(|k| a.join(format!("{k}{n}.pem")).is_file()))
            .collect()
    }

    fn ensure_top_dirs(&self) -> Result<()> {
        fsutil::ensure_dir_mode(&self.dir, 0o755)?;
        for d in ["live", "archive"] {
            fsutil::ensure_dir_mode(&self.dir.join(d), 0o700)?;
        }
        fsutil::ensure_dir_mode(&self.dir.join("renewal"), 0o755)?;
        for d in ["pre", "deploy", "post"] {
            fsutil::create_dir_all_mode(&self.dir.join("renewal-hooks").join(d), 0o755)?;
        }
        let readme = self.dir.join("live/README");
        if !readme.exists() {
            fsutil::atomic_write(&readme, LIVE_README.as_bytes(), 0o644)?;
        }
        Ok(())
    }

    /// Add a version to the lineage of `host` (creating the lineage if it has
    /// none), switch `live/<host>` to it, and write its renewal conf (keeping
    /// what an existing conf holds that we do not set). Returns N.
    pub fn add_version(
        &self,
        host: &str,
        v: &NewVersion,
        params: &RenewalParams,
    ) -> Result<u32, StoreError> {
        // Refuse material that would not serve: never write a mismatched pair.
        let kc = KeyCert::parse(&v.key_pem, &v.fullchain_pem)
            .map_err(|e| StoreError::Unusable { host: host.into(), why: e.to_string() })?;
        if !kc.key_matches {
            return Err(StoreError::Unusable {
                host: host.into(),
                why: "the private key does not match the certificate".into(),
            });
        }
        self.ensure_top_dirs()?;
        let archive = self.archive_dir(host);
        let new_lineage = !fsutil::exists_nofollow(&archive)
            && !self.has(host, Place::Live)
            && !self.has(host, Place::Stashed);
        let res = self.write_version(host, v, params);
        if res.is_err() && new_lineage && !self.has(host, Place::Live) {
            // A failed new lineage leaves nothing behind (no orphan archive,
            // no conf without links), so a retry starts from version 1.
            let _ = fsutil::remove_file_if_exists(&self.renewal_conf_path(host));
            let _ = fsutil::remove_dir_all_if_exists(&archive);
        }
        res
    }

    fn write_version(&self, host: &str, v: &NewVersion, params: &RenewalParams) -> Result<u32> {
        let archive = self.archive_dir(host);
        fsutil::ensure_dir_mode(&archive, 0o755)?;
        // N+1 over every file present, so a half-written N never becomes live.
        let n = self.archive_versions(host).last().copied().unwrap_or(0) + 1;
        for (kind, data) in [
            ("cert", &v.cert_pem),
            ("chain", &v.chain_pem),
            ("fullchain", &v.fullchain_pem),
            ("privkey", &v.key_pem),
        ] {
            let mode = if kind == "privkey" { 0o600 } else { 0o644 };
            fsutil::atomic_write(&archive.join(format!("{kind}{n}.pem")), data.as_bytes(), mode)?;
            crate::fault::point(&format!("store.wrote_{kind}"));
        }
        crate::fault::point("store.version_written");
        // The conf before the links: a crash in between leaves a conf whose
        // links are missing, which `recover` completes from the archive.
        self.write_conf(host, Place::Live, params)?;
        crate::fault::point("store.conf_written");
        self.link_version(host, n)?;
        crate::fault::point("store.linked");
        self.prune(host)?;
        Ok(n)
    }

    /// Point `live/<host>` at version `n` in one atomic directory exchange.
    pub fn link_version(&self, host: &str, n: u32) -> Result<()> {
        let live_parent = self.dir.join("live");
        fsutil::ensure_dir_mode(&live_parent, 0o700)?;
        let live = self.live_dir(host);
        // A short name (not the host's), so it fits wherever the host does.
        let tmp = fsutil::temp_sibling(&live).with_extension("new");
        fsutil::remove_dir_all_if_exists(&tmp)?;
        fs::create_dir(&tmp).io_ctx("creating", &tmp)?;
        // Exactly 0755, whatever the umask.
        fs::set_permissions(
            &tmp,
            <fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o755),
        )
        .io_ctx("setting mode of", &tmp)?;
        for k in KINDS {
            let target = PathBuf::from(format!("../../archive/{host}/{k}{n}.pem"));
            std::os::unix::fs::symlink(&target, tmp.join(format!("{k}.pem")))
                .io_ctx("linking", &tmp)?;
        }
        fsutil::atomic_write(&tmp.join("README"), lineage_readme().as_bytes(), 0o644)?;
        fsutil::fsync_dir(&tmp)?;
        crate::fault::point("store.links_ready");
        if fsutil::exists_nofollow(&live) {
            exchange(&tmp, &live)?;
            fsutil::remove_dir_all_if_exists(&tmp)?;
        } else {
            fs::rename(&tmp, &live).io_ctx("renaming into place", &live)?;
        }
        Ok(fsutil::fsync_dir(&live_parent)?)
    }

    /// Point every renewal conf (live and stashed) of `server` that names the
    /// account `old` at `new`; returns the hosts repointed.
    pub fn repoint_account(&self, server: &str, old: &str, new: &str) -> Result<Vec<String>> {
        let mut done = Vec::new();
        for place in [Place::Live, Place::Stashed] {
            for host in self.names_with_conf(place) {
                let Some(lc) = self.lineage_conf(&host, place) else { continue };
                if lc.account.as_deref() == Some(old) && lc.server.as_deref() == Some(server) {
                    let path = self.conf_path(&host, place);
                    let mut c =
                        self.read_conf(&host, place).unwrap_or_else(|| RenewalConf::parse(""));
                    c.set(Some("renewalparams"), "account", new);
                    fsutil::atomic_write(&path, c.to_text().as_bytes(), 0o644)?;
                    done.push(host);
                }
            }
        }
        Ok(done)
    }

    /// Record a lineage's ARI state in its renewal conf (keeping the rest).
    pub fn write_ari(&self, host: &str, state: &AriState) -> Result<()> {
        let Some(mut c) = self.read_conf(host, Place::Live) else { return Ok(()) };
        c.replace_section(ARI, &state.to_pairs());
        Ok(fsutil::atomic_write(&self.renewal_conf_path(host), c.to_text().as_bytes(), 0o644)?)
    }

    /// Say in the live lineage's renewal conf whether certbot may renew it
    /// (`[renewalparams] autorenew`; certbot skips a lineage that says
    /// False): a fleet's lineages renew through the fleet only.
    pub fn set_autorenew(&self, host: &str, on: bool) -> Result<()> {
        let Some(mut c) = self.read_conf(host, Place::Live) else { return Ok(()) };
        let want = if on { "True" } else { "False" };
        if c.get(Some("renewalparams"), "autorenew").as_deref() == Some(want) {
            return Ok(());
        }
        c.set(Some("renewalparams"), "autorenew", want);
        Ok(fsutil::atomic_write(&self.renewal_conf_path(host), c.to_text().as_bytes(), 0o644)?)
    }

    /// What `live/<host>/cert.pem` points at (a new version changes it): a
    /// cheap mark of the live certificate, read without parsing it.
    pub fn live_mark(&self, host: &str) -> Option<String> {
        fs::read_link(self.live_dir(host).join("cert.pem")).ok().map(|p| p.display().to_string())
    }

    /// certbot's deploy hooks (`renewal-hooks/deploy/`).
    pub fn deploy_hooks_dir(&self) -> PathBuf {
        self.dir.join("renewal-hooks/deploy")
    }

    /// Is there a `live/` directory (any lineage at all)?
    pub fn has_lineages(&self) -> bool {
        self.dir.join("live").is_dir()
    }

    /// The directories that hold keys, with the mode each must have (0700).
    pub fn private_dirs(&self) -> Vec<(PathBuf, u32)> {
        ["live", "archive", "norenewal", "accounts"]
            .iter()
            .map(|d| (self.dir.join(d), 0o700))
            .collect()
    }

    /// Where every version of every lineage lives (`archive/`).
    pub fn archive_root(&self) -> PathBuf {
        self.dir.join("archive")
    }

    /// Install (or update) certbot's deploy hook with this script text.
    pub fn install_deploy_hook(&self, script: &str) -> Result<()> {
        let dir = self.deploy_hooks_dir();
        fsutil::create_dir_all_mode(&dir, 0o755)?;
        let path = dir.join(CERTBOT_DEPLOY_HOOK);
        let same = fs::symlink_metadata(&path).map(|m| m.is_file()).unwrap_or(false)
            && fs::read_to_string(&path).map(|t| t == script).unwrap_or(false);
        if !same {
            fsutil::atomic_write(&path, script.as_bytes(), 0o755)?;
        }
        Ok(())
    }

    /// Write (or rewrite, keeping unknown fields) the renewal conf of `host`.
    pub fn write_conf(&self, host: &str, place: Place, p: &RenewalParams) -> Result<()> {
        let path = self.conf_path(host, place);
        let mut c = match fs::read_to_string(&path) {
            Ok(t) => RenewalConf::parse(&t),
            Err(_) => RenewalConf::parse(
                "# renewal configuration written by site-admin, readable by certbot",
            ),
        };
        let live = self.live_dir(host);
        let s = |p: &Path| p.display().to_string();
        c.set(None, "version", CONF_VERSION);
        c.set(None, "archive_dir", &s(&self.archive_dir(host)));
        for k in KINDS {
            c.set(None, k, &s(&live.join(format!("{k}.pem"))));
        }
        if let Some(a) = p.account.as_deref().filter(|a| !a.is_empty()) {
            c.set(Some("renewalparams"), "account", a);
        }
        c.set(Some("renewalparams"), "server", &p.server);
        c.set(Some("renewalparams"), "authenticator", "webroot");
        c.set(Some("renewalparams"), "webroot_path", &format!("{},", s(&p.webroot)));
        c.set(Some("renewalparams"), "key_type", p.key_type.as_str());
        // certbot's own keys for the profile, so renewals ask for it again.
        c.remove(Some("renewalparams"), "preferred_profile");
        c.remove(Some("renewalparams"), "required_profile");
        if let Some(w) = &p.profile {
            c.set(
                Some("renewalparams"),
                if w.required { "required_profile" } else { "preferred_profile" },
                &w.name,
            );
        }
        // A new current certificate: what ARI said is about the old one.
        c.replace_section(ARI, &[]);
        c.replace_section("webroot_map", &[(host.to_string(), s(&p.webroot))]);
        Ok(fsutil::atomic_write(&path, c.to_text().as_bytes(), 0o644)?)
    }

    pub fn read_conf(&self, host: &str, place: Place) -> Option<RenewalConf> {
        fs::read_to_string(self.conf_path(host, place)).ok().map(|t| RenewalConf::parse(&t))
    }

    /// The renewal conf of `host`, typed; None when there is none.
    pub fn lineage_conf(&self, host: &str, place: Place) -> Option<LineageConf> {
        self.read_conf(host, place).map(|c| LineageConf::from_conf(host, &c))
    }

    /// The files Apache serves for a live lineage: (full chain, private key).
    pub fn live_files(&self, host: &str) -> (PathBuf, PathBuf) {
        let d = self.live_dir(host);
        (d.join("fullchain.pem"), d.join("privkey.pem"))
    }

    /// Delete archive versions older than the current one minus [`KEEP_OLDER`].
    fn prune(&self, host: &str) -> Result<()> {
        let cur = match self.current_version(host, Place::Live) {
            Some(c) => c,
            None => return Ok(()),
        };
        let archive = self.archive_dir(host);
        for n in self.archive_versions(host) {
            if n + KEEP_OLDER < cur {
                for k in KINDS {
                    fsutil::remove_file_if_exists(&archive.join(format!("{k}{n}.pem")))?;
                }
            }
        }
        Ok(())
    }

    /// Stash: move `live/<host>` and its conf to `norenewal/`; the archive
    /// stays. If a stash entry exists already, the newer of the two is kept.
    pub fn stash(&self, host: &str) -> Result<()> {
        let live = self.live_dir(host);
        if !fsutil::exists_nofollow(&live) {
            return Ok(());
        }
        fsutil::ensure_dir_mode(&self.dir.join("norenewal"), 0o700)?;
        if self.has(host, Place::Stashed) {
            let stash_na = self.material(host, Place::Stashed).keycert().map(|k| k.leaf.not_after);
            let live_na = self.material(host, Place::Live).keycert().map(|k| k.leaf.not_after);
            if live_na >= stash_na {
                self.remove_links(host, Place::Stashed)?;
            } else {
                // The stash is newer: the live links go; their files stay in the archive.
                return self.remove_links(host, Place::Live);
            }
        }
        fsutil::rename_durable(&live, &self.stash_dir(host))?;
        crate::fault::point("store.stash_moved_links");
        let conf = self.renewal_conf_path(host);
        if conf.exists() {
            fsutil::rename_durable(&conf, &self.stash_conf_path(host))?;
        }
        Ok(())
    }

    /// Unstash: move the stash entry back under renewal. When a live lineage
    /// exists already, the stashed material becomes its next version.
    /// `params` is used when the stash has no conf (or the conf must name this
    /// device's account and server).
    pub fn unstash(&self, host: &str, params: &RenewalParams) -> Result<(), StoreError> {
        let stash = |why: String| StoreError::Stash { host: host.into(), why };
        if !self.has(host, Place::Stashed) {
            return Err(stash("no stashed certificate".into()));
        }
        if self.has(host, Place::Live) {
            let kc = match self.material(host, Place::Stashed) {
                Material::Present(kc) => kc,
                Material::Broken(why) => {
                    return Err(stash(format!("the stashed certificate is unreadable: {why}")))
                }
                Material::Absent => {
                    return Err(stash("the stashed certificate disappeared".into()))
                }
            };
            let v = NewVersion::from_key_and_fullchain(&kc.key_pem, &kc.chain_pem)
                .map_err(|e| stash(format!("the stashed certificate is damaged: {e}")))?;
            self.add_version(host, &v, params).map_err(|e| match e {
                StoreError::Unusable { why, .. } => {
                    stash(format!("the stashed certificate is damaged: {why}"))
                }
                e => e,
            })?;
            return self.remove_links(host, Place::Stashed);
        }
        self.ensure_top_dirs()?;
        fsutil::rename_durable(&self.stash_dir(host), &self.live_dir(host))?;
        crate::fault::point("store.unstash_moved_links");
        let sconf = self.stash_conf_path(host);
        if sconf.exists() {
            fsutil::rename_durable(&sconf, &self.renewal_conf_path(host))?;
        }
        self.write_conf(host, Place::Live, params)
    }

    /// Delete the live lineage of `host` (a revoked certificate): its links,
    /// its renewal conf, and its archive unless a stash entry uses it.
    pub fn delete_live(&self, host: &str) -> Result<()> {
        self.remove_links(host, Place::Live)?;
        if !self.has(host, Place::Stashed) {
            fsutil::remove_dir_all_if_exists(&self.archive_dir(host))?;
        }
        Ok(())
    }

    /// Take a revoked (or to-be-revoked) certificate out of service: the
    /// live links and the renewal conf of `host` go, its archive stays (the
    /// older versions remain revocable by serial). The site is pending then.
    pub fn retire_live(&self, host: &str) -> Result<()> {
        self.remove_links(host, Place::Live)
    }

    /// Delete a stash entry. Its archive goes too when no live lineage uses it.
    pub fn delete_stash(&self, host: &str) -> Result<()> {
        self.remove_links(host, Place::Stashed)?;
        if !self.has(host, Place::Live) {
            fsutil::remove_dir_all_if_exists(&self.archive_dir(host))?;
        }
        Ok(())
    }

    fn remove_links(&self, host: &str, place: Place) -> Result<()> {
        fsutil::remove_file_if_exists(&self.conf_path(host, place))?;
        Ok(fsutil::remove_dir_all_if_exists(&self.links_dir(host, place))?)
    }

    /// Finish a stash or unstash that a crash interrupted between its two
    /// renames: a conf goes where its links are. Also removes the temporary
    /// link directories of an interrupted switch. Returns what it did.
    pub fn recover(&self) -> Result<Vec<String>> {
        let mut done = Vec::new();
        if let Ok(rd) = fs::read_dir(self.dir.join("live")) {
            for e in rd.filter_map(|e| e.ok()) {
                let n = e.file_name().to_string_lossy().into_owned();
                if (n.starts_with(fsutil::TEMP_PREFIX) && n.ends_with(".new"))
                    || (n.starts_with('.') && n.contains(".new-"))
                {
                    fsutil::remove_dir_all_if_exists(&e.path())?;
                    done.push(format!("removed the unfinished link directory live/{n}"));
                }
            }
        }
        for (from, to) in [(Place::Live, Place::Stashed), (Place::Stashed, Place::Live)] {
            for host in self.names_with_conf(from) {
                if !self.has(&host, from)
                    && self.has(&host, to)
                    && !self.conf_path(&host, to).exists()
                {
                    fsutil::rename_durable(
                        &self.conf_path(&host, from),
                        &self.conf_path(&host, to),
                    )?;
                    done.push(format!(
                        "{host}: finished an interrupted {} (moved its renewal conf)",
                        if to == Place::Stashed { "stash" } else { "unstash" }
                    ));
                }
            }
        }
        // A new lineage interrupted between its conf and its links: link the
        // newest complete version whose key matches. (A conf with nothing to
        // link is not ours to delete: `doctor` reports it.)
        for host in self.names_with_conf(Place::Live) {
            if self.has(&host, Place::Live) || self.has(&host, Place::Stashed) {
                continue;
            }
            if let Some(n) = self.newest_matching_version(&host) {
                self.link_version(&host, n)?;
                done.push(format!(
                    "{host}: finished an interrupted new lineage (linked version {n})"
                ));
            }
        }
        Ok(done)
    }

    /// The newest complete version in the archive whose key matches its certificate.
    pub fn newest_matching_version(&self, host: &str) -> Option<u32> {
        let a = self.archive_dir(host);
        self.complete_versions(host).into_iter().rev().find(|n| {
            let key = fs::read_to_string(a.join(format!("privkey{n}.pem"))).unwrap_or_default();
            let chain = fs::read_to_string(a.join(format!("fullchain{n}.pem"))).unwrap_or_default();
            KeyCert::parse(&key, &chain).map(|kc| kc.key_matches).unwrap_or(false)
        })
    }

    /// Names of lineages that have a conf in `place`.
    pub fn names_with_conf(&self, place: Place) -> Vec<String> {
        let dir = match place {
            Place::Live => self.dir.join("renewal"),
            Place::Stashed => self.dir.join("norenewal"),
        };
        sorted_names(&dir, |t, n| {
            if t.is_file() {
                n.strip_suffix(".conf").map(str::to_string)
            } else {
                None
            }
        })
    }

    /// Names of lineages with links in `place` (a conf or not).
    pub fn names_with_links(&self, place: Place) -> Vec<String> {
        let dir = match place {
            Place::Live => self.dir.join("live"),
            Place::Stashed => self.dir.join("norenewal"),
        };
        sorted_names(&dir, |t, n| (t.is_dir() && !n.starts_with('.')).then(|| n.to_string()))
    }

    /// Every lineage, live and stashed.
    pub fn lineages(&self) -> Vec<Lineage> {
        let mut out = Vec::new();
        for place in [Place::Live, Place::Stashed] {
            let mut names = self.names_with_conf(place);
            names.extend(self.names_with_links(place));
            names.sort();
            names.dedup();
            for name in names {
                out.push(Lineage {
                    material: self.material(&name, place),
                    version: self.current_version(&name, place),
                    conf: self.lineage_conf(&name, place),
                    name,
                    place,
                });
            }
        }
        out
    }
}

/// The entries of `dir` that `pick` maps to a name, sorted; none if `dir` is missing.
fn sorted_names(dir: &Path, pick: impl Fn(fs::FileType, &str) -> Option<String>) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| pick(e.file_type().ok()?, e.file_name().to_str()?))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn lineage_readme() -> String {
    "This directory contains your keys and certificates.\n\n`privkey.pem`  : the private key for your certificate.\n`fullchain.pem`: the certificate file used in most server software.\n`chain.pem`    : used for OCSP stapling in Nginx >=1.3.7.\n`cert.pem`     : will break many server configurations, and should not be used\n                 without reading further documentation (see link below).\n\nWARNING: DO NOT MOVE OR RENAME THESE FILES!\n         Certbot expects these files to remain in this location in order\n         to function properly!\n\nWe recommend not moving these files. For more information, see the Certbot\nUser Guide at https://certbot.eff.org/docs/using.html#where-are-my-certificates.\n".to_string()
}

/// Atomically exchange two directory entries (Linux `renameat2(RENAME_EXCHANGE)`).
fn exchange(a: &Path, b: &Path) -> Result<()> {
    use rustix::fs::{renameat_with, RenameFlags, CWD};
    Ok(renameat_with(CWD, a, CWD, b, RenameFlags::EXCHANGE)
        .map_err(std::io::Error::from)
        .io_ctx("switching", b)?)
}

#[cfg(test)]
mod tests;
