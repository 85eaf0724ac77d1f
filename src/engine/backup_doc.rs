//! The backup file: one document, written by `backup` and read by `restore`.
//!
//! ```json
//! {"type": "site-admin-backup", "version": 1, "created": "…",
//!  "sites": [Site JSON, …], "accounts": [carried account, …]}
//! ```
//!
//! `accounts` is left out of a `--notls` backup. `restore` also takes a bare
//! array of Site JSONs or a single Site JSON, and has never checked the
//! header (`type`, `version`, `created`): a header it cannot read is `None`,
//! never a refusal. A site is written as a [`crate::site::Site`] and read as
//! an open JSON value, which `restore` validates as it validates a deploy's
//! Site JSON (each refusal naming its field).

use crate::store::accounts::Carried;
use chrono::{DateTime, Utc};
use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

/// The `type` a backup written by this tool names.
pub(super) const KIND: &str = "site-admin-backup";
/// The envelope's version.
pub(super) const VERSION: u32 = 1;

/// The backup envelope; `S` is a site as written ([`crate::site::Site`]) or
/// as read ([`Value`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(bound(deserialize = "S: DeserializeOwned"))]
pub(super) struct Backup<S> {
    #[serde(
        rename = "type",
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub kind: Option<String>,
    #[serde(default, deserialize_with = "lenient", skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    /// Written as `DateTime::to_rfc3339` (fractional seconds, `+00:00`), as
    /// every backup so far.
    #[serde(
        default,
        deserialize_with = "lenient",
        serialize_with = "rfc3339",
        skip_serializing_if = "Option::is_none"
    )]
    pub created: Option<DateTime<Utc>>,
    #[serde(deserialize_with = "sites")]
    pub sites: Vec<S>,
    /// The ACME accounts the backed-up lineages renew with, each listing its
    /// hosts (a backup with keys carries them, so a restored lineage keeps
    /// its account). Checked by `restore` before anything is installed.
    #[serde(default, deserialize_with = "accounts", skip_serializing_if = "Option::is_none")]
    pub accounts: Option<Vec<Carried>>,
}

impl<S> Backup<S> {
    /// A new backup of `sites`, created `now`; `accounts` is `None` for `--notls`.
    pub(super) fn new(now: DateTime<Utc>, sites: Vec<S>, accounts: Option<Vec<Carried>>) -> Self {
        Backup {
            kind: Some(KIND.into()),
            version: Some(VERSION),
            created: Some(now),
            sites,
            accounts,
        }
    }

    /// Sites without an envelope: no header, no accounts.
    fn bare(sites: Vec<S>) -> Self {
        Backup { kind: None, version: None, created: None, sites, accounts: None }
    }
}

/// Why a file is not a backup `restore` can read; each message follows
/// "backup FILE: ".
#[derive(Debug, thiserror::Error)]
pub(super) enum ReadError {
    #[error("not valid JSON: {0}")]
    NotJson(serde_json::Error),
    /// A field of the envelope (`"sites" must be an array`, `"accounts": …`).
    #[error("{0}")]
    Envelope(serde_json::Error),
    #[error("not a site-admin backup")]
    NotBackup,
}

impl Backup<Value> {
    /// Read a backup file's text: an envelope (an object with `sites`), a
    /// bare array of Site JSONs, or one Site JSON (any other object).
    pub(super) fn read(text: &str) -> Result<Self, ReadError> {
        let v: Value = serde_json::from_str(text).map_err(ReadError::NotJson)?;
        match v {
            Value::Array(sites) => Ok(Backup::bare(sites)),
            Value::Object(ref o) if o.contains_key("sites") => {
                Backup::deserialize(&v).map_err(ReadError::Envelope)
            }
            Value::Object(_) => Ok(Backup::bare(vec![v])),
            _ => Err(ReadError::NotBackup),
        }
    }
}

/// A header field: its value when it has the expected type, else `None`.
fn lenient<'de, D: Deserializer<'de>, T: DeserializeOwned>(d: D) -> Result<Option<T>, D::Error> {
    Ok(T::deserialize(Value::deserialize(d)?).ok())
}

fn sites<'de, D: Deserializer<'de>, S: DeserializeOwned>(d: D) -> Result<Vec<S>, D::Error> {
    match Value::deserialize(d)? {
        Value::Array(a) => {
            a.into_iter().map(|s| S::deserialize(s).map_err(D::Error::custom)).collect()
        }
        _ => Err(D::Error::custom("\"sites\" must be an array")),
    }
}

fn accounts<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<Carried>>, D::Error> {
    let v = Value::deserialize(d)?;
    Vec::<Carried>::deserialize(v)
        .map(Some)
        .map_err(|e| D::Error::custom(format!("\"accounts\": {e}")))
}

fn rfc3339<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.serialize_str(&t.to_rfc3339()),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn carried() -> Value {
        json!({"server": "https://ca.example/dir", "id": "0123", "uri": "https://ca.example/acct/1", "key": {"kty": "EC"}, "hosts": ["a.example"]})
    }

    #[test]
    fn writes_the_envelope_as_backup_always_has() {
        let now = DateTime::parse_from_rfc3339("2026-01-02T03:04:05.123456789Z")
            .unwrap()
            .with_timezone(&Utc);
        let a: Carried = serde_json::from_value(carried()).unwrap();
        let doc = Backup::new(now, vec![json!({"siteid": "s1"})], Some(vec![a]));
        let old = json!({
            "type": "site-admin-backup",
            "version": 1,
            "created": now.to_rfc3339(),
            "sites": [{"siteid": "s1"}],
            "accounts": [carried()],
        });
        assert_eq!(
            serde_json::to_string_pretty(&doc).unwrap(),
            serde_json::to_string_pretty(&old).unwrap()
        );
        let notls = Backup::new(now, Vec::<Value>::new(), None);
        assert_eq!(
            serde_json::to_string(&notls).unwrap(),
            format!(
                r#"{{"type":"site-admin-backup","version":1,"created":"{}","sites":[]}}"#,
                now.to_rfc3339()
            )
        );
    }

    #[test]
    fn reads_what_it_writes() {
        let now = Utc::now();
        let a: Carried = serde_json::from_value(carried()).unwrap();
        let doc = Backup::new(now, vec![json!({"siteid": "s1"})], Some(vec![a]));
        let text = serde_json::to_string(&doc).unwrap();
        let back = Backup::read(&text).unwrap();
        assert_eq!(
            (back.kind.as_deref(), back.version, back.created),
            (Some(KIND), Some(VERSION), Some(now))
        );
        assert_eq!(serde_json::to_string(&back).unwrap(), text);
    }

    #[test]
    fn reads_the_three_shapes() {
        let site = json!({"siteid": "s1"});
        assert_eq!(Backup::read(&json!([site]).to_string()).unwrap().sites, vec![site.clone()]);
        let one = Backup::read(&site.to_string()).unwrap();
        assert_eq!((one.sites, one.kind, one.accounts.is_none()), (vec![site.clone()], None, true));
        // The header is not checked: foreign values and other keys are ignored.
        let odd = Backup::read(&json!({"type": 7, "version": "x", "created": "yesterday", "extra": 1, "sites": [site]}).to_string()).unwrap();
        assert_eq!((odd.kind, odd.version, odd.created, odd.sites.len()), (None, None, None, 1));
    }

    #[test]
    fn refuses_with_the_messages_restore_always_gave() {
        let msg = |t: &str| Backup::read(t).unwrap_err().to_string();
        assert!(msg("not json").starts_with("not valid JSON: "), "{}", msg("not json"));
        assert_eq!(msg("42"), "not a site-admin backup");
        assert_eq!(msg("\"x\""), "not a site-admin backup");
        assert_eq!(msg(r#"{"sites": {"a": 1}}"#), "\"sites\" must be an array");
        assert_eq!(msg(r#"{"sites": null}"#), "\"sites\" must be an array");
        assert_eq!(
            msg(r#"{"sites": [], "accounts": null}"#),
            "\"accounts\": invalid type: null, expected a sequence"
        );
        assert!(
            msg(r#"{"sites": [], "accounts": [{"id": "x"}]}"#)
                .starts_with("\"accounts\": missing field"),
            "{}",
            msg(r#"{"sites": [], "accounts": [{"id": "x"}]}"#)
        );
        let unknown = json!({"sites": [], "accounts": [{"nope": 1}]}).to_string();
        assert!(
            msg(&unknown).starts_with("\"accounts\": unknown field `nope`"),
            "{}",
            msg(&unknown)
        );
    }
}
