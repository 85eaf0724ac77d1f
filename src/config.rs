//! The configuration file of docs/design.md and the paths it resolves under `--root`.

use crate::error::{Error, Result};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// Let's Encrypt's production directory, the default ACME server.
pub const LETSENCRYPT_PRODUCTION: &str = "https://acme-v02.api.letsencrypt.org/directory";

/// Certificate key algorithm for new keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyType {
    /// ECDSA P-256 (the default).
    Ecdsa,
    /// RSA 2048.
    Rsa,
}

impl KeyType {
    /// certbot's spelling (`key_type = ecdsa|rsa`).
    pub fn parse(s: &str) -> Option<KeyType> {
        match s.trim() {
            "ecdsa" => Some(KeyType::Ecdsa),
            "rsa" => Some(KeyType::Rsa),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            KeyType::Ecdsa => "ecdsa",
            KeyType::Rsa => "rsa",
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApache {
    sites_dir: Option<String>,
    http_port: Option<u16>,
    https_port: Option<u16>,
    address: Option<String>,
    pid_file: Option<String>,
    configtest: Option<Vec<String>>,
    reload: Option<Vec<String>>,
    start: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEab {
    kid: String,
    hmac_key: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    acme_server: Option<String>,
    acme_eab: Option<RawEab>,
    acme_profile: Option<String>,
    acme_ca_bundle: Option<String>,
    contact_email: Option<String>,
    key_type: Option<KeyType>,
    letsencrypt_dir: Option<String>,
    sites_dir: Option<String>,
    ssl_dir: Option<String>,
    wellknown_dir: Option<String>,
    docroot_dir: Option<String>,
    hooks_dir: Option<String>,
    lock_file: Option<String>,
    apache: Option<RawApache>,
}

/// Apache-related settings.
#[derive(Debug, Clone)]
pub struct ApacheConfig {
    pub sites_dir: PathBuf,
    pub http_port: u16,
    pub https_port: u16,
    /// The address every check of what Apache serves connects to.
    pub address: std::net::IpAddr,
    /// Apache's PidFile: when set, a reload signals that parent (SIGUSR1, a
    /// graceful restart) instead of running `reload`, which parses the
    /// whole configuration again after `configtest` did.
    pub pid_file: Option<PathBuf>,
    pub configtest: Vec<String>,
    pub reload: Vec<String>,
    /// argv that starts Apache when a reload made it exit.
    pub start: Vec<String>,
}

/// The resolved configuration: every path absolute, under the root.
#[derive(Debug, Clone)]
pub struct Config {
    pub root: PathBuf,
    /// The config file named with --config (None: the default under the root).
    pub config_file: Option<PathBuf>,
    pub acme_server: String,
    pub acme_ca_bundle: Option<PathBuf>,
    pub contact_email: Option<String>,
    /// External Account Binding for CAs that require it.
    pub acme_eab: Option<crate::acme::Eab>,
    /// The profile for sites that name none.
    pub acme_profile: Option<String>,
    pub key_type: KeyType,
    pub letsencrypt_dir: PathBuf,
    pub sites_dir: PathBuf,
    pub ssl_dir: PathBuf,
    pub wellknown_dir: PathBuf,
    pub docroot_dir: PathBuf,
    pub hooks_dir: PathBuf,
    pub lock_file: PathBuf,
    pub apache: ApacheConfig,
}

/// What the command line (or its environment variables) says beyond the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub config_file: Option<PathBuf>,
    pub acme_server: Option<String>,
    pub acme_ca_bundle: Option<PathBuf>,
}

/// A path from the config: relative paths (and every default) are taken
/// under the root; an absolute path in the config file stays as written.
fn under(root: &Path, p: &str) -> PathBuf {
    let path = Path::new(p);
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        root.join(path)
    }
}

impl Config {
    /// Read the config file (default `<root>/etc/site-admin/config.json`; a
    /// missing default file means all defaults) and apply the overrides.
    pub fn load(root: &Path, ov: &Overrides) -> Result<Config> {
        let root = if root.is_absolute() {
            root.to_path_buf()
        } else {
            std::env::current_dir().map_err(|e| Error::failed(format!("current directory: {e}")))?.join(root)
        };
        if !root.is_dir() {
            return Err(Error::invalid(format!("--root {}: no such directory (the root every default path is under)", root.display())));
        }
        let (path, explicit) = match &ov.config_file {
            Some(p) => (p.clone(), true),
            None => (root.join("etc/site-admin/config.json"), false),
        };
        let raw: RawConfig = match crate::fsutil::read_user_file(&path) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| Error::invalid(format!("config file {}: {e}", path.display())))?,
            Err(crate::fsutil::InputError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound && !explicit => RawConfig::default(),
            Err(e) => return Err(Error::invalid(format!("config file {}: {e}", path.display()))),
        };
        let mut c = Self::from_raw(root, raw, ov, &path)?;
        c.config_file = if explicit { Some(path) } else { None };
        Ok(c)
    }

    fn from_raw(root: PathBuf, raw: RawConfig, ov: &Overrides, path: &Path) -> Result<Config> {
        let bad = |field: &str, why: &str| Error::invalid(format!("config file {}: {field}: {why}", path.display()));
        let p = |v: &Option<String>, d: &str| under(&root, v.as_deref().unwrap_or(d));
        let ap = raw.apache.unwrap_or_default();
        let configtest = ap.configtest.unwrap_or_else(|| vec!["apachectl".into(), "configtest".into()]);
        let reload = ap.reload.unwrap_or_else(|| vec!["apachectl".into(), "graceful".into()]);
        let start = ap.start.unwrap_or_else(|| vec!["apachectl".into(), "start".into()]);
        if start.is_empty() {
            return Err(bad("apache.start", "must name a program"));
        }
        if configtest.is_empty() {
            return Err(bad("apache.configtest", "must name a program"));
        }
        if reload.is_empty() {
            return Err(bad("apache.reload", "must name a program"));
        }
        let http_port = ap.http_port.unwrap_or(80);
        let https_port = ap.https_port.unwrap_or(443);
        if http_port == 0 || https_port == 0 || http_port == https_port {
            return Err(bad("apache.http_port/https_port", "must be two different non-zero ports"));
        }
        let address = match &ap.address {
            None => std::net::IpAddr::from([127, 0, 0, 1]),
            Some(a) => a.trim().parse().map_err(|_| bad("apache.address", "must be an IP address Apache listens on (e.g. 127.0.0.1 or ::1)"))?,
        };
        let acme_server = ov.acme_server.clone().or(raw.acme_server).unwrap_or_else(|| LETSENCRYPT_PRODUCTION.into());
        if !(acme_server.starts_with("https://") || acme_server.starts_with("http://")) {
            return Err(Error::invalid(format!("acme_server {acme_server:?}: not an http(s) URL")));
        }
        let acme_ca_bundle = match &ov.acme_ca_bundle {
            Some(b) => Some(if b.is_absolute() { b.clone() } else { std::env::current_dir().unwrap_or_default().join(b) }),
            None => raw.acme_ca_bundle.as_deref().map(|b| under(&root, b)),
        };
        if let Some(b) = &acme_ca_bundle {
            if !b.is_file() {
                let what = if ov.acme_ca_bundle.is_some() { "--acme-ca-bundle" } else { "acme_ca_bundle" };
                return Err(Error::invalid(format!("{what} {}: no such file", b.display())));
            }
        }
        if let Some(e) = &raw.contact_email {
            if !crate::site::looks_like_email(e) {
                return Err(bad("contact_email", "not an e-mail address"));
            }
        }
        let acme_eab = match raw.acme_eab {
            None => None,
            Some(e) => {
                use base64::Engine;
                if e.kid.trim().is_empty() {
                    return Err(bad("acme_eab.kid", "is empty"));
                }
                let key = base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(e.hmac_key.trim().trim_end_matches('='))
                    .map_err(|_| bad("acme_eab.hmac_key", "not base64url (the MAC key exactly as the CA shows it)"))?;
                if key.is_empty() {
                    return Err(bad("acme_eab.hmac_key", "is empty"));
                }
                Some(crate::acme::Eab { kid: e.kid, hmac_key: key })
            }
        };
        if let Some(p) = &raw.acme_profile {
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
                return Err(bad("acme_profile", "must be a profile name (letters, digits, - _ .)"));
            }
        }
        Ok(Config {
            acme_profile: raw.acme_profile,
            config_file: None,
            acme_server,
            acme_ca_bundle,
            acme_eab,
            contact_email: raw.contact_email,
            key_type: raw.key_type.unwrap_or(KeyType::Ecdsa),
            letsencrypt_dir: p(&raw.letsencrypt_dir, "etc/letsencrypt"),
            sites_dir: p(&raw.sites_dir, "var/lib/site-admin/sites"),
            ssl_dir: p(&raw.ssl_dir, "etc/httpd/ssl"),
            wellknown_dir: p(&raw.wellknown_dir, "srv/http/wellknown"),
            docroot_dir: p(&raw.docroot_dir, "srv/http/sites"),
            hooks_dir: p(&raw.hooks_dir, "etc/site-admin/hooks.d"),
            lock_file: p(&raw.lock_file, "run/site-admin/site-admin.lock"),
            apache: ApacheConfig {
                sites_dir: p(&ap.sites_dir, "etc/httpd/sites"),
                http_port,
                https_port,
                address,
                pid_file: ap.pid_file.as_deref().map(|f| under(&root, f)),
                configtest,
                reload,
                start,
            },
            root,
        })
    }

    /// The directory of one site's ACME challenge files (served at
    /// `/.well-known/acme-challenge/`), one per site.
    pub fn site_wellknown(&self, siteid: &str) -> PathBuf {
        self.wellknown_dir.join(siteid)
    }
    pub fn site_docroot(&self, siteid: &str) -> PathBuf {
        self.docroot_dir.join(siteid)
    }
    pub fn stored_site(&self, siteid: &str) -> PathBuf {
        self.sites_dir.join(format!("{siteid}.json"))
    }
    pub fn okc_paths(&self, siteid: &str) -> OkcPaths {
        OkcPaths {
            key: self.ssl_dir.join(format!("{siteid}.key")),
            crt: self.ssl_dir.join(format!("{siteid}.crt")),
            cacrt: self.ssl_dir.join(format!("{siteid}.cacrt")),
        }
    }
    pub fn vhost_file(&self, siteid: &str) -> PathBuf {
        self.apache.sites_dir.join(format!("{siteid}.conf"))
    }
    /// certbot's lock file in the letsencrypt dir.
    pub fn certbot_lock(&self) -> PathBuf {
        self.letsencrypt_dir.join(".certbot.lock")
    }
    /// State dir for site-admin's own bookkeeping (the operation journal).
    pub fn state_dir(&self) -> PathBuf {
        self.sites_dir.parent().map(|p| p.to_path_buf()).unwrap_or_else(|| self.root.join("var/lib/site-admin"))
    }
}

/// The three OKC files of one site in `ssl_dir`.
#[derive(Debug, Clone)]
pub struct OkcPaths {
    pub key: PathBuf,
    pub crt: PathBuf,
    pub cacrt: PathBuf,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_under_root() {
        let c = Config::from_raw("/r".into(), RawConfig::default(), &Overrides::default(), Path::new("x")).unwrap();
        assert_eq!(c.letsencrypt_dir, PathBuf::from("/r/etc/letsencrypt"));
        assert_eq!(c.apache.sites_dir, PathBuf::from("/r/etc/httpd/sites"));
        assert_eq!(c.lock_file, PathBuf::from("/r/run/site-admin/site-admin.lock"));
        assert_eq!(c.acme_server, LETSENCRYPT_PRODUCTION);
        assert_eq!(c.key_type, KeyType::Ecdsa);
        assert_eq!(c.apache.http_port, 80);
        assert_eq!(c.apache.address.to_string(), "127.0.0.1");
    }

    #[test]
    fn apache_address_is_an_ip_address() {
        let raw: RawConfig = serde_json::from_str(r#"{"apache": {"address": "127.0.0.2"}}"#).unwrap();
        let c = Config::from_raw("/r".into(), raw, &Overrides::default(), Path::new("x")).unwrap();
        assert_eq!(c.apache.address.to_string(), "127.0.0.2");
        let raw: RawConfig = serde_json::from_str(r#"{"apache": {"address": "localhost"}}"#).unwrap();
        let e = Config::from_raw("/r".into(), raw, &Overrides::default(), Path::new("x")).unwrap_err();
        assert!(e.to_string().contains("apache.address"), "{e}");
    }

    #[test]
    fn unknown_key_is_refused() {
        let e = serde_json::from_str::<RawConfig>(r#"{"acme_sever": "x"}"#).unwrap_err();
        assert!(e.to_string().contains("acme_sever"), "{e}");
    }

    #[test]
    fn override_wins() {
        let raw: RawConfig = serde_json::from_str(r#"{"acme_server": "https://a/dir", "apache": {"http_port": 8080, "https_port": 8443}}"#).unwrap();
        let ov = Overrides { acme_server: Some("https://b/dir".into()), ..Default::default() };
        let c = Config::from_raw("/r".into(), raw, &ov, Path::new("x")).unwrap();
        assert_eq!(c.acme_server, "https://b/dir");
        assert_eq!(c.apache.http_port, 8080);
    }
}
