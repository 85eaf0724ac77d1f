//! The back-off state file, `<state dir>/backoff.json` (keyed by host), and
//! the fingerprint of the configuration a failure is recorded under. The rule
//! itself is [`crate::backoff`] (pure); this is its I/O.

use crate::backoff::{fingerprint, State};
use crate::state_file::{self, ReadError};
use chrono::Utc;
use std::path::{Path, PathBuf};

/// A fingerprint of the configuration an issuance depends on: the ACME
/// server, the CA bundle (path and contents), the contact, the EAB, the
/// default profile and the key type. A short SHA-256: it names no secret.
pub(crate) fn config_fingerprint(cfg: &crate::config::Config) -> String {
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

const FILE: &str = "backoff.json";

/// Why the back-off state could not be saved.
pub(crate) type BackoffFileError = state_file::WriteError;

pub(crate) fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE)
}

/// Read the state; a missing file is an empty state, a damaged one is
/// reported and treated as empty (it only delays retries).
pub(crate) fn load(state_dir: &Path) -> State {
    let p = path(state_dir);
    match state_file::read(&p) {
        Ok(s) => s,
        Err(ReadError::Damaged(e)) => {
            tracing::warn!("ignoring the unreadable back-off state {} ({e})", p.display());
            State::default()
        }
        Err(ReadError::Missing | ReadError::Io(_)) => State::default(),
    }
}

pub(crate) fn save(state_dir: &Path, s: &State) -> Result<(), BackoffFileError> {
    state_file::write(state_dir, FILE, s)
}

/// The one back-off update: each outcome recorded (a success clears the
/// host's failures; a failure is counted, with its error, under the
/// fingerprint `config` of the configuration it failed under).
pub(crate) fn note(
    state: &mut State,
    host: &str,
    outcome: std::result::Result<(), &str>,
    config: &str,
) {
    match outcome {
        Ok(()) => state.succeeded(host),
        Err(error) => state.failed(host, error, Utc::now(), config),
    }
}

/// Write `state` if it differs from `before`; a failure to write is logged
/// (it only delays retries).
pub(crate) fn save_if_changed(state_dir: &Path, before: &State, state: &State) {
    if state != before {
        if let Err(e) = save(state_dir, state) {
            tracing::warn!("recording the back-off state: {e}");
        }
    }
}

/// One outcome recorded in the state file (read, updated, written if changed).
pub(crate) fn record(
    cfg: &crate::config::Config,
    host: &str,
    outcome: std::result::Result<(), &str>,
) {
    let dir = cfg.state_dir();
    let before = load(&dir);
    let mut state = before.clone();
    note(&mut state, host, outcome, &config_fingerprint(cfg));
    save_if_changed(&dir, &before, &state);
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

    #[test]
    fn one_update_records_a_failure_under_the_config_and_a_success_clears_it() {
        let root = tempfile::tempdir().unwrap();
        let cfg = crate::config::Config::load(root.path(), &Default::default()).unwrap();
        record(&cfg, "a.test", Err("provisioning failed: 503"));
        let s = load(&cfg.state_dir());
        let f = &s.hosts["a.test"];
        assert_eq!(f.last_error, "provisioning failed: 503");
        assert_eq!(f.config, Some(config_fingerprint(&cfg)));
        record(&cfg, "a.test", Ok(()));
        assert_eq!(load(&cfg.state_dir()), State::default());
    }
}
