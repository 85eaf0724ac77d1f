//! Revocations owed (docs/design.md, "Revocation"): the certificate
//! `revoke` is asked to revoke is fixed when the command starts and
//! recorded here, before any network step, until the CA confirms (or says
//! it is revoked already). `renew` and a retried `revoke` send what is owed.
//! The state is one small JSON file, `<state dir>/revocations.json`, keyed by
//! serial; each record carries the certificate itself (public), so a version
//! that left the archive or the stash stays revocable.

use crate::fsutil::IoError;
use crate::state_file::{self, ReadError, WriteError};
use chrono::{DateTime, Utc};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One certificate whose revocation the CA has not confirmed yet.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Owed {
    pub host: String,
    /// Lowercase hex, without leading zeros.
    pub serial: String,
    /// The certificate (PEM): what revokeCert is sent.
    pub cert_pem: String,
    /// The RFC 5280 reason name.
    pub reason: String,
    /// The ACME server and account of its lineage.
    pub server: String,
    #[serde(default)]
    pub account: Option<String>,
    /// `--no-replace`: it is never served again, and nothing replaces it first.
    #[serde(default)]
    pub no_replace: bool,
    pub since: DateTime<Utc>,
    #[serde(default)]
    pub attempts: u32,
    #[serde(default)]
    pub last_error: Option<String>,
}

/// Every owed revocation, by serial.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct State {
    #[serde(flatten)]
    pub owed: BTreeMap<String, Owed>,
}

impl State {
    /// The revocations owed for `host`, oldest first.
    pub(crate) fn of_host(&self, host: &str) -> Vec<Owed> {
        let mut v: Vec<Owed> = self.owed.values().filter(|o| o.host == host).cloned().collect();
        v.sort_by_key(|o| o.since);
        v
    }
    /// A failed attempt: counted, with its error.
    pub(crate) fn failed(&mut self, serial: &str, error: &str) {
        if let Some(o) = self.owed.get_mut(serial) {
            o.attempts += 1;
            o.last_error = Some(error.to_string());
        }
    }
}

const FILE: &str = "revocations.json";

pub(crate) fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE)
}

/// A serial as the user may write it (hex, colons allowed, any case),
/// normalized to lowercase hex without leading zeros.
pub(crate) fn normalize_serial(s: &str) -> Option<String> {
    let hex: String = s.chars().filter(|c| *c != ':').collect::<String>().to_ascii_lowercase();
    if hex.is_empty() || hex.len() > 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let t = hex.trim_start_matches('0');
    Some(if t.is_empty() { "0".into() } else { t.into() })
}

/// Read the state; a missing file is an empty state. A damaged one is an
/// error naming the file: an obligation is never silently dropped.
/// What can go wrong with the owed revocations' file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RevocationsError {
    /// The file cannot be read: an obligation is never silently dropped.
    #[error("the owed revocations in {} cannot be read ({source}); fix or move it aside", path.display())]
    Damaged { path: PathBuf, source: serde_json::Error },
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error(transparent)]
    Io(#[from] IoError),
}

type Result<T, E = RevocationsError> = std::result::Result<T, E>;

pub(crate) fn load(state_dir: &Path) -> Result<State> {
    let p = path(state_dir);
    match state_file::read(&p) {
        Ok(s) => Ok(s),
        Err(ReadError::Missing) => Ok(State::default()),
        Err(ReadError::Damaged(source)) => Err(RevocationsError::Damaged { path: p, source }),
        Err(ReadError::Io(source)) => Err(IoError { what: "reading", path: p, source }.into()),
    }
}

pub(crate) fn save(state_dir: &Path, s: &State) -> Result<()> {
    Ok(state_file::write(state_dir, FILE, s)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn owed(host: &str, serial: &str, day: u32) -> Owed {
        Owed {
            host: host.into(),
            serial: serial.into(),
            cert_pem: "PEM".into(),
            reason: "keyCompromise".into(),
            server: "https://ca/dir".into(),
            account: Some("acc".into()),
            no_replace: false,
            since: Utc.with_ymd_and_hms(2026, 12, day, 0, 0, 0).unwrap(),
            attempts: 0,
            last_error: None,
        }
    }

    #[test]
    fn kept_by_serial_per_host_oldest_first_and_saved_as_it_was() {
        let mut s = State::default();
        s.owed.insert("b2".into(), owed("h", "b2", 2));
        s.owed.insert("a1".into(), owed("h", "a1", 3));
        s.owed.insert("c3".into(), owed("other", "c3", 1));
        assert_eq!(
            s.of_host("h").iter().map(|o| o.serial.as_str()).collect::<Vec<_>>(),
            vec!["b2", "a1"]
        );
        s.failed("a1", "403");
        assert_eq!((s.owed["a1"].attempts, s.owed["a1"].last_error.as_deref()), (1, Some("403")));
        let t = tempfile::tempdir().unwrap();
        assert_eq!(load(t.path()).unwrap(), State::default());
        save(t.path(), &s).unwrap();
        assert_eq!(load(t.path()).unwrap(), s);
        std::fs::write(path(t.path()), b"{not json").unwrap();
        assert!(load(t.path()).unwrap_err().to_string().contains("revocations.json"));
    }

    #[test]
    fn serials_are_normalized() {
        assert_eq!(normalize_serial("00:AB:cd").as_deref(), Some("abcd"));
        assert_eq!(normalize_serial("000").as_deref(), Some("0"));
        assert_eq!(normalize_serial("xyz"), None);
        assert_eq!(normalize_serial(""), None);
    }
}
