//! ACME accounts stored where and how certbot keeps them:
//! `accounts/<server netloc + path>/<id>/{private_key.json,regr.json,meta.json}`,
//! `<id>` the MD5 of the public key's SubjectPublicKeyInfo PEM. A renewal conf
//! written here names an account certbot can use, and an account certbot
//! made (EC or RSA) is used here.

use crate::acme::AccountKey;
use crate::error::{Error, Result};
use crate::fsutil;
use serde_json::{json, Value};
use std::fs;
use std::path::{Path, PathBuf};

/// An account of one server, as stored.
#[derive(Debug, Clone)]
pub struct StoredAccount {
    pub id: String,
    pub key: AccountKey,
    pub uri: String,
}

/// `accounts/<netloc><path>` for a directory URL, as certbot derives it.
pub fn server_dir(letsencrypt_dir: &Path, server: &str) -> Result<PathBuf> {
    let rest = server
        .strip_prefix("https://")
        .or_else(|| server.strip_prefix("http://"))
        .ok_or_else(|| Error::invalid(format!("ACME server {server:?}: not an http(s) URL")))?;
    let rest = rest.split(['?', '#']).next().unwrap_or("");
    if rest.is_empty() || rest.split('/').any(|seg| seg == "..") {
        return Err(Error::invalid(format!("ACME server {server:?}: not a usable URL")));
    }
    Ok(letsencrypt_dir.join("accounts").join(rest))
}

/// The first usable account stored for `server` (by id order), if any.
pub fn load(letsencrypt_dir: &Path, server: &str) -> Result<Option<StoredAccount>> {
    let dir = server_dir(letsencrypt_dir, server)?;
    let mut ids: Vec<String> = match fs::read_dir(&dir) {
        Ok(rd) => rd.filter_map(|e| e.ok()).filter(|e| e.path().is_dir()).map(|e| e.file_name().to_string_lossy().into_owned()).collect(),
        Err(_) => return Ok(None),
    };
    ids.sort();
    for id in ids {
        let d = dir.join(&id);
        let key = fs::read_to_string(d.join("private_key.json")).ok().and_then(|t| serde_json::from_str::<Value>(&t).ok());
        let regr = fs::read_to_string(d.join("regr.json")).ok().and_then(|t| serde_json::from_str::<Value>(&t).ok());
        let (Some(key), Some(regr)) = (key, regr) else {
            tracing::warn!("skipping the unreadable ACME account {}", d.display());
            continue;
        };
        let Ok(key) = AccountKey::from_private_jwk(&key) else {
            tracing::warn!("skipping the ACME account {} (unsupported key)", d.display());
            continue;
        };
        let Some(uri) = regr.get("uri").and_then(Value::as_str) else {
            continue;
        };
        return Ok(Some(StoredAccount { id, key, uri: uri.to_string() }));
    }
    Ok(None)
}

/// Store an account as certbot does; returns its id. `terms` is the CA's
/// terms-of-service URL agreed to at registration, kept in `regr.json` as
/// certbot keeps it.
pub fn save(letsencrypt_dir: &Path, server: &str, key: &AccountKey, uri: &str, terms: Option<&str>) -> Result<String> {
    let id = key.certbot_id().map_err(Error::failed)?;
    let base = letsencrypt_dir.join("accounts");
    fsutil::ensure_dir_mode(&base, 0o700)?;
    let dir = server_dir(letsencrypt_dir, server)?.join(&id);
    fsutil::create_dir_all_mode(&dir, 0o700)?;
    let jwk = key.private_jwk().map_err(Error::failed)?;
    let host = fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_else(|_| "localhost".into());
    let meta = json!({"creation_dt": chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string(), "creation_host": host});
    // regr and meta first: the key file is what makes the account visible.
    let mut regr = json!({"body": {}, "uri": uri});
    if let Some(t) = terms {
        regr["terms_of_service"] = t.into();
    }
    fsutil::atomic_write(&dir.join("regr.json"), regr.to_string().as_bytes(), 0o644)?;
    fsutil::atomic_write(&dir.join("meta.json"), meta.to_string().as_bytes(), 0o644)?;
    fsutil::atomic_write(&dir.join("private_key.json"), jwk.to_string().as_bytes(), 0o400)?;
    Ok(id)
}

/// One account as a backup carries it: enough to install it on another
/// device so its lineages renew with the same account there.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Carried {
    pub server: String,
    pub id: String,
    pub uri: String,
    /// The account's private key as a JWK (a backup is a secret, 0600).
    pub key: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terms_of_service: Option<String>,
    /// The lineages (hosts) that renew with it.
    pub hosts: Vec<String>,
}

/// The account `id` of `server`, for a backup.
pub fn export(letsencrypt_dir: &Path, server: &str, id: &str) -> Option<Carried> {
    let d = server_dir(letsencrypt_dir, server).ok()?.join(id);
    let key: Value = serde_json::from_str(&fs::read_to_string(d.join("private_key.json")).ok()?).ok()?;
    let regr: Value = serde_json::from_str(&fs::read_to_string(d.join("regr.json")).ok()?).ok()?;
    Some(Carried {
        server: server.into(),
        id: id.into(),
        uri: regr.get("uri")?.as_str()?.into(),
        key,
        terms_of_service: regr.get("terms_of_service").and_then(Value::as_str).map(str::to_string),
        hosts: Vec::new(),
    })
}

/// Check a carried account before anything is installed: its key must load
/// and its id must be that key's certbot id. Returns the key.
pub fn check_carried(c: &Carried) -> std::result::Result<AccountKey, String> {
    server_dir(Path::new("/"), &c.server).map_err(|e| e.to_string())?;
    let key = AccountKey::from_private_jwk(&c.key).map_err(|e| format!("its key is not a usable JWK ({e})"))?;
    let id = key.certbot_id()?;
    if id != c.id {
        return Err(format!("its id {} is not its key's ({id})", c.id));
    }
    if !(c.uri.starts_with("https://") || c.uri.starts_with("http://")) {
        return Err("its account URI is not a URL".into());
    }
    Ok(key)
}

/// Install a carried account this device does not have yet (a checked one).
/// Returns whether it was installed.
pub fn install(letsencrypt_dir: &Path, c: &Carried, key: &AccountKey) -> Result<bool> {
    if exists(letsencrypt_dir, &c.server, &c.id) {
        return Ok(false);
    }
    save(letsencrypt_dir, &c.server, key, &c.uri, c.terms_of_service.as_deref())?;
    Ok(true)
}

/// Load one stored account by id.
pub fn load_id(letsencrypt_dir: &Path, server: &str, id: &str) -> Result<Option<StoredAccount>> {
    let d = server_dir(letsencrypt_dir, server)?.join(id);
    let key = fs::read_to_string(d.join("private_key.json")).ok().and_then(|t| serde_json::from_str::<Value>(&t).ok());
    let regr = fs::read_to_string(d.join("regr.json")).ok().and_then(|t| serde_json::from_str::<Value>(&t).ok());
    let (Some(key), Some(regr)) = (key, regr) else { return Ok(None) };
    let Ok(key) = AccountKey::from_private_jwk(&key) else { return Ok(None) };
    let Some(uri) = regr.get("uri").and_then(Value::as_str) else { return Ok(None) };
    Ok(Some(StoredAccount { id: id.into(), key, uri: uri.into() }))
}

/// Does `accounts/<server>/<id>` exist?
pub fn exists(letsencrypt_dir: &Path, server: &str, id: &str) -> bool {
    server_dir(letsencrypt_dir, server).map(|d| d.join(id).join("private_key.json").is_file()).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_dirs_like_certbot() {
        let le = Path::new("/e");
        assert_eq!(server_dir(le, "https://127.0.0.1:14000/dir").unwrap(), PathBuf::from("/e/accounts/127.0.0.1:14000/dir"));
        assert_eq!(
            server_dir(le, "https://acme-v02.api.letsencrypt.org/directory").unwrap(),
            PathBuf::from("/e/accounts/acme-v02.api.letsencrypt.org/directory")
        );
        assert!(server_dir(le, "ftp://x").is_err());
        assert!(server_dir(le, "https://x/../../etc").is_err());
    }

    #[test]
    fn save_and_load() {
        let t = tempfile::tempdir().unwrap();
        let k = AccountKey::generate().unwrap();
        let id = save(t.path(), "https://ca.test/dir", &k, "https://ca.test/acct/1", Some("https://ca.test/tos")).unwrap();
        assert_eq!(id.len(), 32);
        let a = load(t.path(), "https://ca.test/dir").unwrap().unwrap();
        assert_eq!(a.id, id);
        assert_eq!(a.uri, "https://ca.test/acct/1");
        assert_eq!(a.key.thumbprint().unwrap(), k.thumbprint().unwrap());
        assert!(exists(t.path(), "https://ca.test/dir", &id));
        assert!(load(t.path(), "https://other.test/dir").unwrap().is_none());
        use std::os::unix::fs::PermissionsExt;
        let m = fs::metadata(t.path().join("accounts")).unwrap().permissions().mode() & 0o777;
        assert_eq!(m, 0o700);
        // Exported, checked and installed elsewhere: the same account.
        let c = export(t.path(), "https://ca.test/dir", &id).unwrap();
        assert_eq!(c.terms_of_service.as_deref(), Some("https://ca.test/tos"));
        let key = check_carried(&c).unwrap();
        let t2 = tempfile::tempdir().unwrap();
        assert!(install(t2.path(), &c, &key).unwrap());
        assert!(!install(t2.path(), &c, &key).unwrap());
        assert_eq!(load_id(t2.path(), "https://ca.test/dir", &id).unwrap().unwrap().uri, "https://ca.test/acct/1");
        let mut bad = c.clone();
        bad.key = json!({"kty": "EC", "crv": "P-256", "x": "garbage"});
        assert!(check_carried(&bad).is_err());
        let mut other = c.clone();
        other.id = "0".repeat(32);
        assert!(check_carried(&other).unwrap_err().contains("not its key's"));
    }
}
