//! ACME accounts stored where and how certbot keeps them:
//! `accounts/<server netloc + path>/<id>/{private_key.json,regr.json,meta.json}`,
//! `<id>` the MD5 of the public key's SubjectPublicKeyInfo PEM. A renewal conf
//! written here names an account certbot can use, and an account certbot
//! made (EC or RSA) is used here.

use crate::acme::{AccountKey, JwsError};
use crate::fsutil::{self, IoError};
use serde_json::{json, Value};
use std::fs;
use std::path::{Path, PathBuf};

/// Why a directory URL is not one [`server_rel`] maps to a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ServerUrlError {
    #[error("contains control characters, spaces or backslashes")]
    Characters,
    #[error("not an http(s) URL")]
    NotHttp,
    #[error("user information in the URL")]
    UserInfo,
    #[error("an unclosed [IPv6 address]")]
    UnclosedIpv6,
    #[error("not an IPv6 address in [ ]")]
    NotIpv6,
    #[error("junk after the [IPv6 address]")]
    JunkAfterIpv6,
    #[error("no usable host name")]
    NoHost,
    #[error("not a usable port")]
    Port,
    #[error("a . or .. path segment")]
    DotSegment,
}

/// An account id that is not a plain name ([`check_id`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the account id {0:?} is not a plain name (letters, digits, - and _)")]
pub struct BadAccountId(pub String);

/// Why a carried account (from a backup) cannot be installed
/// ([`check_carried`]).
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum CarriedError {
    #[error("its server is not a usable ACME server URL: {0}")]
    Server(ServerUrlError),
    #[error("{0}")]
    Id(#[from] BadAccountId),
    #[error("its key is not a usable JWK ({0})")]
    Key(JwsError),
    /// Its certbot id could not be computed.
    #[error("{0}")]
    KeyId(JwsError),
    #[error("its id {id} is not its key's ({key_id})")]
    IdMismatch { id: String, key_id: String },
    #[error("its account URI is not a URL")]
    Uri,
    #[error("its terms_of_service holds control characters")]
    Terms,
    #[error("its host {0:?} holds control characters")]
    Host(String),
}

/// What can go wrong with the stored accounts.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AccountsError {
    /// The server URL cannot name a directory under `accounts/`.
    #[error("ACME server {server:?}: {why}")]
    Server { server: String, why: ServerUrlError },
    /// The account id cannot name a directory.
    #[error("ACME server {server:?}: {why}")]
    Id { server: String, why: BadAccountId },
    /// The key could not make its JWK or certbot id.
    #[error("{0}")]
    Key(JwsError),
    #[error(transparent)]
    Io(#[from] IoError),
}

type Result<T, E = AccountsError> = std::result::Result<T, E>;

/// An account of one server, as stored.
#[derive(Debug, Clone)]
pub struct StoredAccount {
    pub id: String,
    pub key: AccountKey,
    pub uri: String,
}

/// `accounts/<netloc><path>` for a directory URL, as certbot derives it.
/// The one place a server URL becomes a path: only a clean http(s) URL maps
/// (a host, an optional port, a path without `.`/`..` segments, no user
/// info, no control characters or spaces), so a crafted one (`https:///tmp/x`,
/// `https://../x`, a newline) can never name a directory outside `accounts/`.
pub fn server_dir(letsencrypt_dir: &Path, server: &str) -> Result<PathBuf> {
    let rel =
        server_rel(server).map_err(|why| AccountsError::Server { server: server.into(), why })?;
    Ok(letsencrypt_dir.join("accounts").join(rel))
}

/// `<netloc><path>` of a clean http(s) URL, or why it is not one.
pub fn server_rel(server: &str) -> Result<String, ServerUrlError> {
    if server.chars().any(|c| c.is_control() || c.is_whitespace() || c == '\\') {
        return Err(ServerUrlError::Characters);
    }
    let rest = server
        .strip_prefix("https://")
        .or_else(|| server.strip_prefix("http://"))
        .ok_or(ServerUrlError::NotHttp)?;
    let rest = rest.split(['?', '#']).next().unwrap_or("");
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    if authority.contains('@') {
        return Err(ServerUrlError::UserInfo);
    }
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => {
            let (addr, after) = v6.split_once(']').ok_or(ServerUrlError::UnclosedIpv6)?;
            if addr.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(ServerUrlError::NotIpv6);
            }
            (
                addr,
                after
                    .strip_prefix(':')
                    .map(Some)
                    .or_else(|| after.is_empty().then_some(None))
                    .ok_or(ServerUrlError::JunkAfterIpv6)?,
            )
        }
        None => match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        },
    };
    if !authority.starts_with('[')
        && (host.is_empty()
            || host.split('.').any(|l| {
                l.is_empty()
                    || !l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            }))
    {
        return Err(ServerUrlError::NoHost);
    }
    if let Some(p) = port {
        if !matches!(p.parse::<u16>(), Ok(n) if n > 0) || p.starts_with(['+', '0']) {
            return Err(ServerUrlError::Port);
        }
    }
    if path.split('/').any(|seg| seg == "." || seg == "..") {
        return Err(ServerUrlError::DotSegment);
    }
    Ok(format!("{authority}{path}"))
}

/// An account id as a directory name: certbot's are the hex MD5 of the key;
/// anything that is not a plain name (`/`, `..`, control characters) is refused.
pub fn check_id(id: &str) -> Result<(), BadAccountId> {
    if id.is_empty()
        || id.len() > 128
        || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(BadAccountId(id.to_string()));
    }
    Ok(())
}

/// `accounts/<server>/<id>`: the one place an account id becomes a path.
pub fn account_dir(letsencrypt_dir: &Path, server: &str, id: &str) -> Result<PathBuf> {
    check_id(id).map_err(|why| AccountsError::Id { server: server.into(), why })?;
    Ok(server_dir(letsencrypt_dir, server)?.join(id))
}

/// The first usable account stored for `server` (by id order), if any.
pub fn load(letsencrypt_dir: &Path, server: &str) -> Result<Option<StoredAccount>> {
    let dir = server_dir(letsencrypt_dir, server)?;
    let mut ids: Vec<String> = match fs::read_dir(&dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_dir())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => return Ok(None),
    };
    ids.retain(|id| check_id(id).is_ok());
    ids.sort();
    for id in ids {
        let d = dir.join(&id);
        let key = fs::read_to_string(d.join("private_key.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok());
        let regr = fs::read_to_string(d.join("regr.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok());
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
pub fn save(
    letsencrypt_dir: &Path,
    server: &str,
    key: &AccountKey,
    uri: &str,
    terms: Option<&str>,
) -> Result<String> {
    let id = key.certbot_id().map_err(AccountsError::Key)?;
    let base = letsencrypt_dir.join("accounts");
    fsutil::ensure_dir_mode(&base, 0o700)?;
    let dir = account_dir(letsencrypt_dir, server, &id)?;
    fsutil::create_dir_all_mode(&dir, 0o700)?;
    let jwk = key.private_jwk().map_err(AccountsError::Key)?;
    let host = fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
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
    let d = account_dir(letsencrypt_dir, server, id).ok()?;
    let key: Value =
        serde_json::from_str(&fs::read_to_string(d.join("private_key.json")).ok()?).ok()?;
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
pub fn check_carried(c: &Carried) -> Result<AccountKey, CarriedError> {
    server_rel(&c.server).map_err(CarriedError::Server)?;
    check_id(&c.id)?;
    let key = AccountKey::from_private_jwk(&c.key).map_err(CarriedError::Key)?;
    let id = key.certbot_id().map_err(CarriedError::KeyId)?;
    if id != c.id {
        return Err(CarriedError::IdMismatch { id: c.id.clone(), key_id: id });
    }
    if !(c.uri.starts_with("https://") || c.uri.starts_with("http://"))
        || c.uri.chars().any(|ch| ch.is_control() || ch.is_whitespace())
    {
        return Err(CarriedError::Uri);
    }
    if c.terms_of_service.as_deref().is_some_and(|t| t.chars().any(char::is_control)) {
        return Err(CarriedError::Terms);
    }
    for h in &c.hosts {
        if h.chars().any(char::is_control) {
            return Err(CarriedError::Host(h.clone()));
        }
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
    let d = account_dir(letsencrypt_dir, server, id)?;
    let key = fs::read_to_string(d.join("private_key.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok());
    let regr = fs::read_to_string(d.join("regr.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok());
    let (Some(key), Some(regr)) = (key, regr) else { return Ok(None) };
    let Ok(key) = AccountKey::from_private_jwk(&key) else { return Ok(None) };
    let Some(uri) = regr.get("uri").and_then(Value::as_str) else { return Ok(None) };
    Ok(Some(StoredAccount { id: id.into(), key, uri: uri.into() }))
}

/// Does `accounts/<server>/<id>` exist?
pub fn exists(letsencrypt_dir: &Path, server: &str, id: &str) -> bool {
    account_dir(letsencrypt_dir, server, id)
        .map(|d| d.join("private_key.json").is_file())
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_dirs_like_certbot() {
        let le = Path::new("/e");
        assert_eq!(
            server_dir(le, "https://127.0.0.1:14000/dir").unwrap(),
            PathBuf::from("/e/accounts/127.0.0.1:14000/dir")
        );
        assert_eq!(
            server_dir(le, "https://acme-v02.api.letsencrypt.org/directory").unwrap(),
            PathBuf::from("/e/accounts/acme-v02.api.letsencrypt.org/directory")
        );
        assert!(server_dir(le, "ftp://x").is_err());
        assert!(server_dir(le, "https://x/../../etc").is_err());
        assert_eq!(
            server_dir(le, "https://[::1]:14000/dir?x=1").unwrap(),
            PathBuf::from("/e/accounts/[::1]:14000/dir")
        );
        assert_eq!(
            server_dir(le, "https://ca.test").unwrap(),
            PathBuf::from("/e/accounts/ca.test")
        );
    }

    #[test]
    fn crafted_server_urls_and_ids_name_no_path() {
        let le = Path::new("/e");
        for bad in [
            "https:///tmp/x",
            "https://../x",
            "https://./x",
            "https://ca.test/dir\nsecond line",
            "https://ca.test/di\rr",
            "https://ca.test\t/dir",
            "https://ca test/dir",
            "https://user@ca.test/dir",
            "https://ca.test:0/dir",
            "https://ca.test:99999/dir",
            "https://ca.test:/dir",
            "https://ca..test/dir",
            "https://[::1/dir",
            "https://[zz]/dir",
            "https://ca.test/./dir",
            "https://ca.test\\..\\x",
            "https:/ca.test/dir",
            "file:///etc",
        ] {
            assert!(server_dir(le, bad).is_err(), "{bad:?}");
            assert!(!exists(le, bad, "0123"), "{bad:?}");
        }
        let e = server_dir(le, "https://ca.test/\nx").unwrap_err().to_string();
        assert!(!e.contains('\n'), "the error names the URL escaped: {e}");
        for bad in ["", "..", ".", "a/b", "/etc", "a\nb", "a b", "é"] {
            assert!(check_id(bad).is_err(), "{bad:?}");
            assert!(account_dir(le, "https://ca.test/dir", bad).is_err(), "{bad:?}");
        }
        assert!(check_id("0123456789abcdef0123456789abcdef").is_ok());
    }

    #[test]
    fn save_and_load() {
        let t = tempfile::tempdir().unwrap();
        let k = AccountKey::generate().unwrap();
        let id = save(
            t.path(),
            "https://ca.test/dir",
            &k,
            "https://ca.test/acct/1",
            Some("https://ca.test/tos"),
        )
        .unwrap();
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
        assert_eq!(
            load_id(t2.path(), "https://ca.test/dir", &id).unwrap().unwrap().uri,
            "https://ca.test/acct/1"
        );
        let mut bad = c.clone();
        bad.key = json!({"kty": "EC", "crv": "P-256", "x": "garbage"});
        assert!(matches!(check_carried(&bad), Err(CarriedError::Key(_))));
        let mut other = c.clone();
        other.id = "0".repeat(32);
        let e = check_carried(&other).unwrap_err();
        assert!(matches!(e, CarriedError::IdMismatch { .. }));
        assert!(e.to_string().contains("not its key's"));
    }

    #[test]
    fn typed_account_errors_keep_their_messages() {
        assert_eq!(
            check_id("a/b").unwrap_err().to_string(),
            r#"the account id "a/b" is not a plain name (letters, digits, - and _)"#
        );
        assert_eq!(server_rel("ftp://x"), Err(ServerUrlError::NotHttp));
        assert_eq!(
            server_rel("https://[::1").unwrap_err().to_string(),
            "an unclosed [IPv6 address]"
        );
        let mut c = Carried {
            server: "https://ca.test/dir".into(),
            id: "a/b".into(),
            uri: String::new(),
            key: json!({}),
            terms_of_service: None,
            hosts: vec![],
        };
        assert_eq!(
            check_carried(&c).unwrap_err().to_string(),
            r#"the account id "a/b" is not a plain name (letters, digits, - and _)"#
        );
        c.server = "https://u@ca.test/".into();
        assert_eq!(
            check_carried(&c).unwrap_err().to_string(),
            "its server is not a usable ACME server URL: user information in the URL"
        );
        c.server = "https://ca.test/dir".into();
        c.id = "abc".into();
        assert_eq!(
            check_carried(&c).unwrap_err().to_string(),
            r#"its key is not a usable JWK (unsupported JWK kty None)"#
        );
    }
}
