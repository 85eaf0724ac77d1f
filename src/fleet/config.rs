//! The `fleet` object of config.json (docs/design.md, "Several devices"),
//! parsed once into a [`FleetConfig`]: every key checked, paths resolved
//! under `--root` like the other keys, and refused naming the key (never
//! echoing a value) when half set, unknown, or unsafe.

use crate::fsutil::under;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// The default etcd key prefix.
pub const DEFAULT_PREFIX: &str = "/site-admin/v1/";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFleet {
    endpoints: Vec<String>,
    ca: Option<String>,
    cert: Option<String>,
    key: Option<String>,
    user: Option<String>,
    password_file: Option<String>,
    device_id: Option<String>,
    prefix: Option<String>,
    secret_file: String,
    isolated_renew_below: Option<u32>,
}

/// The fleet, as configured.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetConfig {
    /// etcd client URLs.
    pub endpoints: Vec<String>,
    /// etcd's CA.
    pub ca: Option<PathBuf>,
    /// This device's client certificate and key.
    pub cert: Option<(PathBuf, PathBuf)>,
    /// The etcd user (default: the device id) and its password file.
    pub auth: Option<(String, PathBuf)>,
    /// This device's name in the fleet.
    pub device_id: String,
    /// The etcd key prefix (ends with `/`).
    pub prefix: String,
    /// The fleet key that seals private keys.
    pub secret_file: PathBuf,
    /// Renew locally while etcd cannot be reached, when a certificate has
    /// fewer than this many days left (off by default).
    pub isolated_renew_below: Option<u32>,
}

/// A `fleet` key that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("fleet.{key}: {why}")]
pub struct FleetConfigError {
    /// The key at fault.
    pub key: &'static str,
    /// Why.
    pub why: String,
}

fn bad(key: &'static str, why: impl Into<String>) -> FleetConfigError {
    FleetConfigError { key, why: why.into() }
}

/// Is `host` (from a URL) a loopback address or `localhost`?
fn is_loopback(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h == "localhost" || h.parse::<std::net::IpAddr>().map(|ip| ip.is_loopback()).unwrap_or(false)
}

/// Parse the `fleet` object; `hostname` is this machine's name (the default device id).
pub fn parse(
    value: &serde_json::Value,
    root: &Path,
    hostname: &str,
) -> Result<FleetConfig, FleetConfigError> {
    let raw: RawFleet = serde_json::from_value(value.clone()).map_err(not_a_fleet_object)?;
    check_endpoints(&raw)?;
    let cert = client_cert(&raw, root)?;
    if raw.endpoints.iter().any(|e| e.starts_with("https://"))
        && (raw.ca.is_none() || cert.is_none())
    {
        return Err(bad(
            if raw.ca.is_none() { "ca" } else { "cert" },
            "missing: https endpoints need etcd's CA and this device's client certificate and key",
        ));
    }
    let device_id = device_id(raw.device_id, hostname)?;
    let prefix = prefix(raw.prefix)?;
    let auth = match (raw.user, raw.password_file) {
        (u, Some(p)) => Some((u.unwrap_or_else(|| device_id.clone()), under(root, &p))),
        (Some(_), None) => {
            return Err(bad("password_file", "missing: fleet.user needs its password file"))
        }
        (None, None) => None,
    };
    if let Some(d) = raw.isolated_renew_below {
        if d == 0 || d > 60 {
            return Err(bad("isolated_renew_below", "a number of days from 1 to 60"));
        }
    }
    Ok(FleetConfig {
        endpoints: raw.endpoints,
        ca: raw.ca.map(|c| under(root, &c)),
        cert,
        auth,
        device_id,
        prefix,
        secret_file: under(root, &raw.secret_file),
        isolated_renew_below: raw.isolated_renew_below,
    })
}

/// serde's message may quote a value (a password-like string): keep only
/// the field it names, if any.
fn not_a_fleet_object(e: serde_json::Error) -> FleetConfigError {
    let msg = e.to_string();
    let field = msg
        .split('`')
        .nth(1)
        .filter(|f| f.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        .map(|f| format!(" (`{f}`)"))
        .unwrap_or_default();
    bad(
        "*",
        format!(
            "not a fleet object: an unknown or missing key, or a value of the wrong type{field}"
        ),
    )
}

/// `endpoints`: at least one, each a bare http(s) URL; http only for a
/// loopback trial without TLS.
fn check_endpoints(raw: &RawFleet) -> Result<(), FleetConfigError> {
    if raw.endpoints.is_empty() {
        return Err(bad("endpoints", "lists no etcd client URL"));
    }
    let tls = raw.ca.is_some() || raw.cert.is_some() || raw.key.is_some();
    for (i, e) in raw.endpoints.iter().enumerate() {
        let u = reqwest::Url::parse(e)
            .map_err(|_| bad("endpoints", format!("entry {}: not a URL", i + 1)))?;
        let host = u.host_str().unwrap_or("");
        if host.is_empty()
            || e.chars().any(char::is_control)
            || !u.path().trim_matches('/').is_empty()
        {
            return Err(bad(
                "endpoints",
                format!("entry {}: a URL like https://etcd1.example:2379", i + 1),
            ));
        }
        match u.scheme() {
            "https" => {}
            "http" if is_loopback(host) && !tls => {}
            "http" => {
                return Err(bad(
                    "endpoints",
                    format!(
                        "entry {}: http:// is only for loopback trials without TLS; use https://",
                        i + 1
                    ),
                ))
            }
            _ => return Err(bad("endpoints", format!("entry {}: not an http(s) URL", i + 1))),
        }
    }
    Ok(())
}

/// `cert` and `key`: both or neither, resolved under the root.
fn client_cert(
    raw: &RawFleet,
    root: &Path,
) -> Result<Option<(PathBuf, PathBuf)>, FleetConfigError> {
    match (&raw.cert, &raw.key) {
        (Some(c), Some(k)) => Ok(Some((under(root, c), under(root, k)))),
        (None, None) => Ok(None),
        (Some(_), None) => Err(bad("key", "missing: fleet.cert needs its key")),
        (None, Some(_)) => Err(bad("cert", "missing: fleet.key needs its certificate")),
    }
}

/// `device_id`: the host name by default.
fn device_id(raw: Option<String>, hostname: &str) -> Result<String, FleetConfigError> {
    let device_id = raw.unwrap_or_else(|| hostname.to_string());
    if device_id.is_empty()
        || device_id.len() > 64
        || !device_id.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(bad(
            "device_id",
            "1 to 64 letters, digits, '-', '_' or '.' (the host name by default)",
        ));
    }
    Ok(device_id)
}

/// `prefix`: [`DEFAULT_PREFIX`] by default.
fn prefix(raw: Option<String>) -> Result<String, FleetConfigError> {
    let prefix = raw.unwrap_or_else(|| DEFAULT_PREFIX.into());
    if !prefix.starts_with('/')
        || !prefix.ends_with('/')
        || prefix.len() > 200
        || prefix.chars().any(|c| c.is_control() || c == ' ')
    {
        return Err(bad(
            "prefix",
            "a key prefix such as /site-admin/v1/ (starting and ending with '/')",
        ));
    }
    Ok(prefix)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn p(v: serde_json::Value) -> Result<FleetConfig, FleetConfigError> {
        parse(&v, Path::new("/r"), "box1")
    }
    /// The message of the error `v` is refused with.
    fn err(v: serde_json::Value) -> String {
        p(v).unwrap_err().to_string()
    }

    #[test]
    fn defaults_and_paths_under_the_root() {
        let c = p(json!({"endpoints": ["http://127.0.0.1:2379"], "secret_file": "etc/site-admin/fleet.key"})).unwrap();
        assert_eq!((c.device_id.as_str(), c.prefix.as_str()), ("box1", DEFAULT_PREFIX));
        assert_eq!(c.secret_file, PathBuf::from("/r/etc/site-admin/fleet.key"));
        let c = p(json!({"endpoints": ["https://e1:2379"], "ca": "ca.pem", "cert": "/etc/d.pem", "key": "d.key",
            "password_file": "pw", "secret_file": "k"}))
        .unwrap();
        assert_eq!(c.cert, Some((PathBuf::from("/etc/d.pem"), PathBuf::from("/r/d.key"))));
        assert_eq!(c.auth, Some(("box1".into(), PathBuf::from("/r/pw"))));
    }

    #[test]
    fn half_set_unsafe_or_unknown_keys_are_refused_by_name() {
        let base = || json!({"endpoints": ["https://e1:2379"], "ca": "ca.pem", "cert": "c", "key": "k", "secret_file": "s"});
        let mut v = base();
        v.as_object_mut().unwrap().remove("key");
        assert!(err(v).starts_with("fleet.key:"));
        let mut v = base();
        v.as_object_mut().unwrap().remove("ca");
        assert!(err(v).starts_with("fleet.ca:"));
        let mut v = base();
        v["endpoints"] = json!(["http://10.0.0.1:2379"]);
        assert!(err(v).contains("loopback"));
        let mut v = base();
        v["endpoints"] = json!([]);
        assert!(err(v).starts_with("fleet.endpoints:"));
        let mut v = base();
        v["device_id"] = json!("a/b\n");
        assert!(err(v).starts_with("fleet.device_id:"));
        let mut v = base();
        v["prefix"] = json!("no-slash");
        assert!(err(v).starts_with("fleet.prefix:"));
        let mut v = base();
        v["isolated_renew_below"] = json!(0);
        assert!(err(v).starts_with("fleet.isolated_renew_below:"));
        let mut v = base();
        v["user"] = json!("dev");
        assert!(err(v).starts_with("fleet.password_file:"));
        let mut v = base();
        v["sekret"] = json!("hunter2");
        let e = err(v);
        assert!(e.contains("sekret") && !e.contains("hunter2"), "{e}");
        let mut v = base();
        v["secret_file"] = json!(["hunter2"]);
        assert!(!err(v).contains("hunter2"));
    }
}
