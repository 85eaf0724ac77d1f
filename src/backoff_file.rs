//! The back-off state file, `<state dir>/backoff.json` (keyed by host), and
//! the fingerprint of the configuration a failure is recorded under. The rule
//! itself is [`crate::backoff`] (pure); this is its I/O.

use crate::backoff::{fingerprint, State};
use crate::fsutil::{self, IoError};
use std::path::{Path, PathBuf};

/// A fingerprint of the configuration an issuance depends on: the ACME
/// server, the CA bundle (path and contents), the contact, the EAB, the
/// default profile and the key type. A short SHA-256: it names no secret.
pub fn config_fingerprint(cfg: &crate::config::Config) -> String {
    let mut parts: Vec<Vec<u8>> = vec![cfg.acme_server.as_bytes().to_vec()];
    match &cfg.acme_ca_bundle {
        Some(p) => {
            parts.push(p.display().to_string().into_bytes());
            parts.push(std::fs::read(p).unwrap_or_default());
        }
        None => parts.extend([Vec::new(), Vec::new()]),
    }
    parts.push(cfg.contact_email.clone().unwrap_or_default().into_bytes());
    match &cfg.acme_eab {
        Some(e) => {
            parts.push(e.kid.as_bytes().to_vec());
            parts.push(e.hmac_key.clone());
        }
        None => parts.extend([Vec::new(), Vec::new()]),
    }
    parts.push(cfg.acme_profile.clone().unwrap_or_default().into_bytes());
    parts.push(format!("{:?}", cfg.key_type).into_bytes());
    fingerprint(&parts)
}

/// Why the back-off state could not be saved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackoffFileError {
    #[error("{0}")]
    Encode(serde_json::Error),
    #[error(transparent)]
    Io(#[from] IoError),
}

pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join("backoff.json")
}

/// Read the state; a missing file is an empty state, a damaged one is
/// reported and treated as empty (it only delays retries).
pub fn load(state_dir: &Path) -> State {
    let p = path(state_dir);
    match std::fs::read(&p) {
        Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
            tracing::warn!("ignoring the unreadable back-off state {} ({e})", p.display());
            State::default()
        }),
        Err(_) => State::default(),
    }
}

pub fn save(state_dir: &Path, s: &State) -> Result<(), BackoffFileError> {
    fsutil::create_dir_all_mode(state_dir, 0o755)?;
    let data = serde_json::to_vec_pretty(s).map_err(BackoffFileError::Encode)?;
    Ok(fsutil::atomic_write(&path(state_dir), &data, 0o600)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    #[test]
    fn the_state_survives_a_save_and_a_load() {
        let now = Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap();
        let mut s = State::default();
        s.failed("b", "z", now, "c");
        let t = tempfile::tempdir().unwrap();
        assert_eq!(load(t.path()), State::default(), "no file: an empty state");
        save(t.path(), &s).unwrap();
        assert_eq!(load(t.path()), s);
    }

    #[test]
    fn the_config_fingerprint_tells_configurations_apart_and_names_no_secret() {
        let root = tempfile::tempdir().unwrap();
        let mut cfg = crate::config::Config::load(root.path(), &Default::default()).unwrap();
        let plain = config_fingerprint(&cfg);
        cfg.acme_eab = Some(crate::model::Eab { kid: "kid".into(), hmac_key: b"secret".to_vec() });
        let with_eab = config_fingerprint(&cfg);
        assert_ne!(plain, with_eab);
        assert!(!with_eab.contains("secret") && !with_eab.contains("kid"));
        cfg.contact_email = Some("admin@example.test".into());
        assert_ne!(config_fingerprint(&cfg), with_eab);
    }
}
