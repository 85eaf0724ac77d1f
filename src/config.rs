//! The configuration file of docs/design.md and the paths it resolves under `--root`.

use crate::fleet::config::FleetConfigError;
use crate::fsutil::InputError;
use crate::store::accounts::ServerUrlError;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// Let's Encrypt's production directory, the default ACME server.
pub const LETSENCRYPT_PRODUCTION: &str = "https://acme-v02.api.letsencrypt.org/directory";

pub use crate::model::KeyType;

/// Why the configuration cannot be used. Every message names the file and
/// the key (or the flag) and says what it must hold; none repeats a value
/// from the file, which may be a secret (`acme_eab.hmac_key`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The current directory (for a relative `--root`) is gone.
    #[error("current directory: {0}")]
    CurrentDir(std::io::Error),
    #[error("--root {}: no such directory (the root every default path is under)", .0.display())]
    NoRoot(PathBuf),
    /// The file could not be read.
    #[error("config file {}: {why}", file.display())]
    Read { file: PathBuf, why: InputError },
    /// The file's text is not a configuration.
    #[error("config file {}: {why}", file.display())]
    Parse { file: PathBuf, why: ParseError },
    /// A key holds a value that cannot be used.
    #[error("config file {}: {key}: {why}", file.display())]
    Key { file: PathBuf, key: &'static str, why: String },
    /// The `fleet` object.
    #[error("config file {}: {why}", file.display())]
    Fleet { file: PathBuf, why: FleetConfigError },
    #[error("--acme-server: {0}")]
    ServerFlag(ServerUrlError),
    #[error("--acme-ca-bundle {}: no such file", .0.display())]
    BundleFlag(PathBuf),
}

/// Why the config file's text is not a configuration; no message repeats
/// a value from it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// serde_json's syntax errors name a line and column, never the text.
    #[error("{0}")]
    Syntax(serde_json::Error),
    #[error("must be a JSON object")]
    NotObject,
    /// A key (`at`, dotted) holds the wrong shape.
    #[error("{at}: must be {expected}")]
    Shape { at: String, expected: String },
    /// `prefix` is the enclosing key and `: `, or empty at the top.
    #[error("{prefix}unknown field `{key}`, expected one of {names}")]
    Unknown { prefix: String, key: String, names: String },
    #[error("{prefix}missing field `{field}`")]
    Missing { prefix: String, field: &'static str },
    /// A key given twice (serde's message names the key only).
    #[error("{0}")]
    Duplicate(String),
    #[error("not a valid configuration (see docs/design.md, \"Files\")")]
    NotValid,
}

type Result<T, E = ConfigError> = std::result::Result<T, E>;

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
    /// Checked by [`crate::fleet::config::parse`].
    fleet: Option<serde_json::Value>,
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

/// What one key of the config file must hold. The file is checked against
/// this before serde reads it, so that a wrong value gets a message naming
/// the key and the expected type only: serde's own ("invalid type: string
/// \"...\"") repeats the value, which may be a secret (`acme_eab`).
#[derive(Clone, Copy)]
enum Shape {
    Str,
    Port,
    Argv,
    KeyType,
    /// Any JSON object, checked key by key by its own parser (`fleet`).
    AnyObject,
    /// Fields, and which of them are required (the others may be null).
    Object(&'static [(&'static str, Shape)], &'static [&'static str]),
}

const APACHE_SHAPE: &[(&str, Shape)] = &[
    ("sites_dir", Shape::Str),
    ("http_port", Shape::Port),
    ("https_port", Shape::Port),
    ("address", Shape::Str),
    ("pid_file", Shape::Str),
    ("configtest", Shape::Argv),
    ("reload", Shape::Argv),
    ("start", Shape::Argv),
];
const EAB_SHAPE: &[(&str, Shape)] = &[("kid", Shape::Str), ("hmac_key", Shape::Str)];
const CONFIG_SHAPE: &[(&str, Shape)] = &[
    ("acme_server", Shape::Str),
    ("acme_eab", Shape::Object(EAB_SHAPE, &["kid", "hmac_key"])),
    ("acme_profile", Shape::Str),
    ("acme_ca_bundle", Shape::Str),
    ("contact_email", Shape::Str),
    ("key_type", Shape::KeyType),
    ("letsencrypt_dir", Shape::Str),
    ("sites_dir", Shape::Str),
    ("ssl_dir", Shape::Str),
    ("wellknown_dir", Shape::Str),
    ("docroot_dir", Shape::Str),
    ("hooks_dir", Shape::Str),
    ("lock_file", Shape::Str),
    ("apache", Shape::Object(APACHE_SHAPE, &[])),
    ("fleet", Shape::AnyObject),
];

impl Shape {
    fn expected(self) -> String {
        match self {
            Shape::Str => "a string".into(),
            Shape::Port => "a port number (0-65535)".into(),
            Shape::Argv => "a list of strings (a program and its arguments)".into(),
            Shape::KeyType => "\"ecdsa\" or \"rsa\"".into(),
            Shape::AnyObject => "an object".into(),
            Shape::Object(fields, _) => format!(
                "an object with {}",
                fields.iter().map(|(k, _)| format!("`{k}`")).collect::<Vec<_>>().join(", ")
            ),
        }
    }

    /// Check `v` against the shape; the error names the key (`at`) and what it must be.
    fn check(self, v: &serde_json::Value, at: &str) -> Result<(), ParseError> {
        let fits = match self {
            Shape::Str => v.is_string(),
            Shape::Port => v.as_u64().is_some_and(|n| n <= 65535),
            Shape::Argv => v.as_array().is_some_and(|a| a.iter().all(|x| x.is_string())),
            Shape::KeyType => matches!(v.as_str(), Some("ecdsa" | "rsa")),
            Shape::AnyObject => v.is_object(),
            Shape::Object(fields, required) => {
                let Some(map) = v.as_object() else {
                    return Err(if at.is_empty() {
                        ParseError::NotObject
                    } else {
                        ParseError::Shape { at: at.into(), expected: self.expected() }
                    });
                };
                let prefix = if at.is_empty() { String::new() } else { format!("{at}: ") };
                for (k, x) in map {
                    let Some((_, shape)) = fields.iter().find(|(name, _)| name == k) else {
                        let names = fields
                            .iter()
                            .map(|(k, _)| format!("`{k}`"))
                            .collect::<Vec<_>>()
                            .join(", ");
                        return Err(ParseError::Unknown {
                            prefix: prefix.clone(),
                            key: k.clone(),
                            names,
                        });
                    };
                    if x.is_null() && !required.contains(&k.as_str()) {
                        continue;
                    }
                    shape.check(x, &if at.is_empty() { k.clone() } else { format!("{at}.{k}") })?;
                }
                if let Some(missing) = required.iter().find(|r| !map.contains_key(**r)) {
                    return Err(ParseError::Missing { prefix, field: missing });
                }
                true
            }
        };
        if fits {
            Ok(())
        } else {
            Err(ParseError::Shape { at: at.into(), expected: self.expected() })
        }
    }
}

/// Parse the config file's text; no error message repeats a value from it.
fn parse(text: &str) -> Result<RawConfig, ParseError> {
    // serde_json's syntax errors name a line and column, never the text.
    let v: serde_json::Value = serde_json::from_str(text).map_err(ParseError::Syntax)?;
    Shape::Object(CONFIG_SHAPE, &[]).check(&v, "")?;
    // From the text, not the value: a key given twice is refused, not the last one taken.
    serde_json::from_str(text).map_err(|e| match e.to_string() {
        m if m.starts_with("duplicate field `") => ParseError::Duplicate(m),
        _ => ParseError::NotValid,
    })
}

/// Who besides its owner (and root) can read a config file with this
/// mode, owner and group, read by `euid`: None when nobody else can.
fn eab_readers(mode: u32, uid: u32, gid: u32, euid: u32) -> Option<&'static str> {
    if mode & 0o004 != 0 {
        Some("every user")
    } else if mode & 0o040 != 0 && gid != 0 {
        Some("its group")
    } else if uid != euid && uid != 0 {
        Some("its owner, another user,")
    } else {
        None
    }
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
    pub acme_eab: Option<crate::model::Eab>,
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
    /// Fleet mode (docs/design.md, "Several devices"): None on a single device.
    pub fleet: Option<crate::fleet::config::FleetConfig>,
}

/// What the command line (or its environment variables) says beyond the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub config_file: Option<PathBuf>,
    pub acme_server: Option<String>,
    pub acme_ca_bundle: Option<PathBuf>,
}

pub(crate) use crate::fsutil::under;

/// A config file key that cannot be used (the value is never repeated).
fn bad(path: &Path, key: &'static str, why: &str) -> ConfigError {
    ConfigError::Key { file: path.to_path_buf(), key, why: why.to_string() }
}

impl Config {
    /// Read the config file (default `<root>/etc/site-admin/config.json`; a
    /// missing default file means all defaults) and apply the overrides.
    pub fn load(root: &Path, ov: &Overrides) -> Result<Config> {
        let root = if root.is_absolute() {
            root.to_path_buf()
        } else {
            std::env::current_dir().map_err(ConfigError::CurrentDir)?.join(root)
        };
        if !root.is_dir() {
            return Err(ConfigError::NoRoot(root));
        }
        let (path, explicit) = match &ov.config_file {
            Some(p) => (p.clone(), true),
            None => (root.join("etc/site-admin/config.json"), false),
        };
        let raw: RawConfig = match crate::fsutil::read_user_file(&path) {
            Ok(text) => {
                parse(&text).map_err(|why| ConfigError::Parse { file: path.clone(), why })?
            }
            Err(InputError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
                RawConfig::default()
            }
            Err(why) => return Err(ConfigError::Read { file: path, why }),
        };
        if raw.acme_eab.is_some() {
            if let Ok(md) = std::fs::metadata(&path) {
                use std::os::unix::fs::MetadataExt;
                if let Some(who) =
                    eab_readers(md.mode(), md.uid(), md.gid(), rustix::process::geteuid().as_raw())
                {
                    tracing::warn!(
                        "config file {}: it holds acme_eab.hmac_key and {who} can read it (mode {:04o}); make it readable by its owner alone: chmod 600 {}",
                        path.display(),
                        md.mode() & 0o7777,
                        path.display()
                    );
                }
            }
        }
        let mut c = Self::from_raw(root, raw, ov, &path)?;
        c.config_file = if explicit { Some(path) } else { None };
        Ok(c)
    }

    fn from_raw(root: PathBuf, raw: RawConfig, ov: &Overrides, path: &Path) -> Result<Config> {
        let p = |v: &Option<String>, d: &str| under(&root, v.as_deref().unwrap_or(d));
        let apache = Self::apache_from_raw(&root, raw.apache.unwrap_or_default(), path)?;
        let acme_server = Self::acme_server_from_raw(raw.acme_server, ov, path)?;
        let acme_ca_bundle = Self::ca_bundle_from_raw(&root, raw.acme_ca_bundle, ov, path)?;
        if let Some(e) = &raw.contact_email {
            if !crate::site::looks_like_email(e) {
                return Err(bad(path, "contact_email", "not an e-mail address"));
            }
        }
        let acme_eab = match raw.acme_eab {
            None => None,
            Some(e) => Some(Self::eab_from_raw(e, path)?),
        };
        if let Some(p) = &raw.acme_profile {
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            {
                return Err(bad(
                    path,
                    "acme_profile",
                    "must be a profile name (letters, digits, - _ .)",
                ));
            }
        }
        let fleet = match &raw.fleet {
            None => None,
            Some(v) => {
                let host = rustix::system::uname().nodename().to_string_lossy().into_owned();
                Some(
                    crate::fleet::config::parse(v, &root, &host)
                        .map_err(|why| ConfigError::Fleet { file: path.to_path_buf(), why })?,
                )
            }
        };
        Ok(Config {
            fleet,
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
            apache,
            root,
        })
    }

    /// The `apache` object: its commands, ports and address.
    fn apache_from_raw(root: &Path, ap: RawApache, path: &Path) -> Result<ApacheConfig> {
        let bad = |key: &'static str, why: &str| bad(path, key, why);
        let configtest =
            ap.configtest.unwrap_or_else(|| vec!["apachectl".into(), "configtest".into()]);
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
            Some(a) => a.trim().parse().map_err(|_| {
                bad(
                    "apache.address",
                    "must be an IP address Apache listens on (e.g. 127.0.0.1 or ::1)",
                )
            })?,
        };
        Ok(ApacheConfig {
            sites_dir: under(root, ap.sites_dir.as_deref().unwrap_or("etc/httpd/sites")),
            http_port,
            https_port,
            address,
            pid_file: ap.pid_file.as_deref().map(|f| under(root, f)),
            configtest,
            reload,
            start,
        })
    }

    /// The ACME server: `--acme-server`, else `acme_server`, else Let's
    /// Encrypt's production server.
    fn acme_server_from_raw(raw: Option<String>, ov: &Overrides, path: &Path) -> Result<String> {
        let acme_server =
            ov.acme_server.clone().or(raw).unwrap_or_else(|| LETSENCRYPT_PRODUCTION.into());
        // The server URL becomes the accounts directory: only a clean one.
        // The value is not repeated: a config error never echoes one.
        if let Err(why) = crate::store::accounts::server_rel(&acme_server) {
            return Err(match &ov.acme_server {
                Some(_) => ConfigError::ServerFlag(why),
                None => bad(path, "acme_server", &why.to_string()),
            });
        }
        Ok(acme_server)
    }

    /// The ACME server's CA bundle: `--acme-ca-bundle` (relative to the
    /// working directory), else `acme_ca_bundle` (under the root); it must exist.
    fn ca_bundle_from_raw(
        root: &Path,
        raw: Option<String>,
        ov: &Overrides,
        path: &Path,
    ) -> Result<Option<PathBuf>> {
        let acme_ca_bundle = match &ov.acme_ca_bundle {
            Some(b) => Some(if b.is_absolute() {
                b.clone()
            } else {
                std::env::current_dir().unwrap_or_default().join(b)
            }),
            None => raw.as_deref().map(|b| under(root, b)),
        };
        if let Some(b) = &acme_ca_bundle {
            if !b.is_file() {
                return Err(match &ov.acme_ca_bundle {
                    Some(_) => ConfigError::BundleFlag(b.clone()),
                    None => bad(
                        path,
                        "acme_ca_bundle",
                        "no such file (a relative path is taken under --root)",
                    ),
                });
            }
        }
        Ok(acme_ca_bundle)
    }

    /// The `acme_eab` object: a key id and the MAC key as the CA shows it.
    fn eab_from_raw(e: RawEab, path: &Path) -> Result<crate::model::Eab> {
        use base64::Engine;
        if e.kid.trim().is_empty() {
            return Err(bad(path, "acme_eab.kid", "is empty"));
        }
        let key = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(e.hmac_key.trim().trim_end_matches('='))
            .map_err(|_| {
                bad(
                    path,
                    "acme_eab.hmac_key",
                    "not base64url (the MAC key exactly as the CA shows it)",
                )
            })?;
        if key.is_empty() {
            return Err(bad(path, "acme_eab.hmac_key", "is empty"));
        }
        Ok(crate::model::Eab { kid: e.kid, hmac_key: key })
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
    /// The copy of the IP-address site's TLS virtual host that sorts before
    /// every site's file, so it is the port's default (see `apache::render_default`).
    pub fn default_tls_vhost_file(&self) -> PathBuf {
        self.apache.sites_dir.join("00-site-admin-ip-default.conf")
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
        self.sites_dir
            .parent()
            .map(|p| p.to_path_buf())
            .unwrap_or_else(|| self.root.join("var/lib/site-admin"))
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
        let c = Config::from_raw(
            "/r".into(),
            RawConfig::default(),
            &Overrides::default(),
            Path::new("x"),
        )
        .unwrap();
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
        let raw: RawConfig =
            serde_json::from_str(r#"{"apache": {"address": "127.0.0.2"}}"#).unwrap();
        let c = Config::from_raw("/r".into(), raw, &Overrides::default(), Path::new("x")).unwrap();
        assert_eq!(c.apache.address.to_string(), "127.0.0.2");
        let raw: RawConfig =
            serde_json::from_str(r#"{"apache": {"address": "localhost"}}"#).unwrap();
        let e =
            Config::from_raw("/r".into(), raw, &Overrides::default(), Path::new("x")).unwrap_err();
        assert!(e.to_string().contains("apache.address"), "{e}");
    }

    #[test]
    fn unknown_key_is_refused() {
        let e = serde_json::from_str::<RawConfig>(r#"{"acme_sever": "x"}"#).unwrap_err();
        assert!(e.to_string().contains("acme_sever"), "{e}");
    }

    #[test]
    fn a_wrong_value_is_named_by_its_key_and_never_repeated() {
        let secret = "c2VjcmV0LW1hYy1rZXk";
        for (doc, want) in [
            (
                format!(r#"{{"acme_eab": "{secret}"}}"#),
                "acme_eab: must be an object with `kid`, `hmac_key`",
            ),
            (
                format!(r#"{{"acme_eab": {{"kid": "k", "hmac_key": ["{secret}"]}}}}"#),
                "acme_eab.hmac_key: must be a string",
            ),
            (
                format!(r#"{{"acme_eab": {{"kid": 7, "hmac_key": "{secret}"}}}}"#),
                "acme_eab.kid: must be a string",
            ),
            (format!(r#"{{"key_type": "{secret}"}}"#), "key_type: must be \"ecdsa\" or \"rsa\""),
            (format!(r#"{{"contact_email": ["{secret}"]}}"#), "contact_email: must be a string"),
            (
                format!(r#"{{"apache": {{"http_port": "{secret}"}}}}"#),
                "apache.http_port: must be a port number",
            ),
            (
                r#"{"apache": {"https_port": 7654321}}"#.to_string(),
                "apache.https_port: must be a port number",
            ),
            (
                format!(r#"{{"apache": {{"reload": ["x", {{"{secret}": 1}}]}}}}"#),
                "apache.reload: must be a list of strings",
            ),
            (format!(r#"{{"apache": "{secret}"}}"#), "apache: must be an object"),
            (format!(r#"["{secret}"]"#), "must be a JSON object"),
            (
                format!(r#"{{"acme_eab": {{"hmac_key": "{secret}"}}}}"#),
                "acme_eab: missing field `kid`",
            ),
            (format!(r#"{{"acme_eab": {{"kid": "k", "hmac_key": "{secret}"#), "EOF while parsing"),
        ] {
            let e = parse(&doc).map(|_| ()).unwrap_err().to_string();
            assert!(e.contains(want), "{doc}: {e}");
            assert!(
                !e.contains(secret) && !e.contains("7654321"),
                "{doc}: the message repeats the value: {e}"
            );
        }
        let e = parse(&format!(
            r#"{{"acme_eab": {{"kid": "k", "hmac_key": "{secret}"}}, "acme_eab": null}}"#
        ))
        .map(|_| ())
        .unwrap_err()
        .to_string();
        assert!(e.contains("duplicate field `acme_eab`") && !e.contains(secret), "{e}");
        assert!(parse(r#"{"acme_profile": null, "apache": {"http_port": 8080, "start": ["a", "b"]}, "key_type": "rsa"}"#).is_ok());
    }

    #[test]
    fn an_eab_key_readable_by_others_is_noticed() {
        assert_eq!(eab_readers(0o600, 0, 0, 0), None);
        assert_eq!(eab_readers(0o640, 0, 0, 0), None, "group root");
        assert_eq!(eab_readers(0o644, 0, 0, 0), Some("every user"));
        assert_eq!(eab_readers(0o640, 0, 110, 0), Some("its group"));
        assert_eq!(eab_readers(0o600, 1000, 1000, 1000), None, "a user's own config");
        assert_eq!(eab_readers(0o600, 1000, 1000, 0), Some("its owner, another user,"));
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
