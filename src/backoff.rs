//! Failures back off (docs/design.md, "When a lineage renews"): after a
//! failed renewal or provisioning, a lineage or pending site is not tried
//! again before 1 min, then 10 min, 100 min, and then once a day, counting
//! consecutive failures; `--force` ignores it. The rule is [`delay`] (pure);
//! the state is one small JSON file, `<state dir>/backoff.json`, keyed by host.
//!
//! Whether a record still holds an attempt back is [`verdict`] (pure): not
//! when its next attempt lies further ahead than now + the longest step (it
//! was written while the clock was ahead: the clock-plausibility rule that
//! protects the stash), and not when the configuration the failure depended
//! on ([`config_fingerprint`]) has changed since (an administrator fixed it).

use crate::error::{Error, Result};
use crate::fsutil;
use chrono::{DateTime, Duration, Utc};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The wait after `failures` consecutive failures.
pub fn delay(failures: u32) -> Duration {
    match failures {
        0 => Duration::zero(),
        1 => Duration::minutes(1),
        2 => Duration::minutes(10),
        3 => Duration::minutes(100),
        _ => Duration::days(1),
    }
}

/// The longest step: no honest record's next attempt lies further ahead.
pub fn longest() -> Duration {
    delay(u32::MAX)
}

/// What a record means for an attempt at `now` with the configuration
/// whose fingerprint is `config`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// No record, or its next attempt has come.
    Go,
    /// Backing off: not before its next attempt.
    Wait,
    /// Its next attempt lies further ahead than now + [`longest`]: written
    /// while the clock was ahead; ignored (with a warning).
    Implausible,
    /// It failed under another configuration (server, EAB, contact, CA
    /// bundle, profile, key type): the change may be the fix; no wait.
    ConfigChanged,
}

/// The back-off rule for one record. Pure. A record without a fingerprint
/// (written before they were kept) counts as the same configuration.
pub fn verdict(next_attempt: DateTime<Utc>, recorded_config: Option<&str>, now: DateTime<Utc>, config: &str) -> Verdict {
    if next_attempt <= now {
        Verdict::Go
    } else if next_attempt > now + longest() {
        Verdict::Implausible
    } else if recorded_config.is_some_and(|c| c != config) {
        Verdict::ConfigChanged
    } else {
        Verdict::Wait
    }
}

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

/// The pure part of [`config_fingerprint`]: each part length-prefixed, hashed.
pub fn fingerprint(parts: &[Vec<u8>]) -> String {
    let mut data = b"site-admin backoff config v1".to_vec();
    for p in parts {
        data.extend_from_slice(&(p.len() as u64).to_be_bytes());
        data.extend_from_slice(p);
    }
    // ring, not OpenSSL: a no-op renew pass then never initializes libcrypto
    // (3.4 MiB of resident pages for one hash).
    ring::digest::digest(&ring::digest::SHA256, &data).as_ref()[..12].iter().map(|b| format!("{b:02x}")).collect()
}

/// One host's record.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Failures {
    pub failures: u32,
    pub last_error: String,
    pub last_attempt: DateTime<Utc>,
    pub next_attempt: DateTime<Utc>,
    /// [`config_fingerprint`] of the configuration it failed under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<String>,
}

/// Every host's record.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct State {
    #[serde(flatten)]
    pub hosts: BTreeMap<String, Failures>,
}

impl State {
    /// Record a failure at `now` under the configuration `config`: one more
    /// in a row (the count saturates, never wraps), and the next attempt.
    pub fn failed(&mut self, host: &str, error: &str, now: DateTime<Utc>, config: &str) {
        let n = self.hosts.get(host).map(|f| f.failures).unwrap_or(0).saturating_add(1);
        let f = Failures { failures: n, last_error: error.into(), last_attempt: now, next_attempt: now + delay(n), config: Some(config.into()) };
        self.hosts.insert(host.into(), f);
    }
    /// A success ends the run of failures.
    pub fn succeeded(&mut self, host: &str) {
        self.hosts.remove(host);
    }
    /// When `host` may be tried next, if it is backing off at `now` under
    /// the configuration `config` ([`verdict`]).
    pub fn waiting(&self, host: &str, now: DateTime<Utc>, config: &str) -> Option<&Failures> {
        self.hosts.get(host).filter(|f| verdict(f.next_attempt, f.config.as_deref(), now, config) == Verdict::Wait)
    }
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

pub fn save(state_dir: &Path, s: &State) -> Result<()> {
    fsutil::create_dir_all_mode(state_dir, 0o755)?;
    let data = serde_json::to_vec_pretty(s).map_err(|e| Error::failed(e.to_string()))?;
    fsutil::atomic_write(&path(state_dir), &data, 0o600)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn one_ten_hundred_minutes_then_daily() {
        assert_eq!(delay(1), Duration::minutes(1));
        assert_eq!(delay(2), Duration::minutes(10));
        assert_eq!(delay(3), Duration::minutes(100));
        assert_eq!(delay(4), Duration::days(1));
        assert_eq!(delay(40), Duration::days(1));
    }

    #[test]
    fn consecutive_failures_count_and_a_success_resets() {
        let now = Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap();
        let mut s = State::default();
        s.failed("a", "x", now, "c");
        s.failed("a", "y", now, "c");
        assert_eq!(s.hosts["a"].failures, 2);
        assert_eq!(s.hosts["a"].next_attempt, now + Duration::minutes(10));
        assert!(s.waiting("a", now + Duration::minutes(9), "c").is_some());
        assert!(s.waiting("a", now + Duration::minutes(10), "c").is_none());
        s.succeeded("a");
        assert!(s.hosts.is_empty());
        let t = tempfile::tempdir().unwrap();
        s.failed("b", "z", now, "c");
        save(t.path(), &s).unwrap();
        assert_eq!(load(t.path()), s);
    }

    #[test]
    fn the_failure_count_saturates_instead_of_wrapping() {
        let now = Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap();
        let mut s: State = serde_json::from_str(
            r#"{"a": {"failures": 4294967295, "last_error": "x", "last_attempt": "2026-12-01T00:00:00Z", "next_attempt": "2026-12-01T00:00:00Z"}}"#,
        )
        .unwrap();
        s.failed("a", "y", now, "c");
        assert_eq!(s.hosts["a"].failures, u32::MAX);
        assert_eq!(s.hosts["a"].next_attempt, now + Duration::days(1));
    }

    #[test]
    fn a_next_attempt_beyond_the_longest_step_is_implausible() {
        let now = Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap();
        assert_eq!(longest(), Duration::days(1));
        assert_eq!(verdict(now + Duration::days(1), Some("c"), now, "c"), Verdict::Wait);
        assert_eq!(verdict(now + Duration::days(1) + Duration::seconds(1), Some("c"), now, "c"), Verdict::Implausible);
        assert_eq!(verdict(now + Duration::days(365), None, now, "c"), Verdict::Implausible);
        assert_eq!(verdict(now, Some("c"), now, "c"), Verdict::Go);
        let mut s = State::default();
        s.failed("a", "x", now + Duration::days(365), "c");
        assert!(s.waiting("a", now, "c").is_none(), "recorded under a clock a year ahead");
    }

    #[test]
    fn a_changed_configuration_ends_the_wait_and_no_fingerprint_is_the_same() {
        let now = Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap();
        let next = now + Duration::minutes(5);
        assert_eq!(verdict(next, Some("old"), now, "new"), Verdict::ConfigChanged);
        assert_eq!(verdict(next, None, now, "new"), Verdict::Wait);
        assert_eq!(verdict(next, Some("new"), now, "new"), Verdict::Wait);
    }

    #[test]
    fn the_fingerprint_tells_the_parts_apart_and_names_no_secret() {
        let a = fingerprint(&[b"ab".to_vec(), b"c".to_vec()]);
        assert_ne!(a, fingerprint(&[b"a".to_vec(), b"bc".to_vec()]));
        assert_eq!(a, fingerprint(&[b"ab".to_vec(), b"c".to_vec()]));
        assert_eq!(a.len(), 24);
        let root = tempfile::tempdir().unwrap();
        let mut cfg = crate::config::Config::load(root.path(), &Default::default()).unwrap();
        let plain = config_fingerprint(&cfg);
        cfg.acme_eab = Some(crate::acme::Eab { kid: "kid".into(), hmac_key: b"secret".to_vec() });
        let with_eab = config_fingerprint(&cfg);
        assert_ne!(plain, with_eab);
        assert!(!with_eab.contains("secret") && !with_eab.contains("kid"));
        cfg.contact_email = Some("admin@example.test".into());
        assert_ne!(config_fingerprint(&cfg), with_eab);
    }
}
