//! Failures back off (docs/design.md, "When a lineage renews"): after a
//! failed renewal or provisioning, a lineage or pending site is not tried
//! again before 1 min, then 10 min, 100 min, and then once a day, counting
//! consecutive failures; `--force` ignores it. The rule is [`delay`]; the
//! state, keyed by host, is [`State`]. This module is pure and imports no
//! module that does I/O: the state file (`<state dir>/backoff.json`) and the
//! configuration's fingerprint are [`crate::backoff_file`]'s.
//!
//! Whether a record still holds an attempt back is [`verdict`] (pure): not
//! when its next attempt lies further ahead than now + the longest step (it
//! was written while the clock was ahead: the clock-plausibility rule that
//! protects the stash), and not when the configuration the failure depended
//! on ([`crate::backoff_file::config_fingerprint`]) has changed since (an administrator fixed it).

use chrono::{DateTime, Duration, Utc};
use std::collections::BTreeMap;

/// The wait after `failures` consecutive failures.
pub(crate) fn delay(failures: u32) -> Duration {
    match failures {
        0 => Duration::zero(),
        1 => Duration::minutes(1),
        2 => Duration::minutes(10),
        3 => Duration::minutes(100),
        _ => Duration::days(1),
    }
}

/// The longest step: no honest record's next attempt lies further ahead.
pub(crate) fn longest() -> Duration {
    delay(u32::MAX)
}

/// What a record means for an attempt at `now` with the configuration
/// whose fingerprint is `config`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
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
pub(crate) fn verdict(
    next_attempt: DateTime<Utc>,
    recorded_config: Option<&str>,
    now: DateTime<Utc>,
    config: &str,
) -> Verdict {
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

/// The pure part of [`crate::backoff_file::config_fingerprint`]: each part length-prefixed, hashed.
pub(crate) fn fingerprint(parts: &[Vec<u8>]) -> String {
    let mut data = b"site-admin backoff config v1".to_vec();
    for p in parts {
        data.extend_from_slice(&(p.len() as u64).to_be_bytes());
        data.extend_from_slice(p);
    }
    // ring, not OpenSSL: a no-op renew pass then never initializes libcrypto
    // (3.4 MiB of resident pages for one hash).
    ring::digest::digest(&ring::digest::SHA256, &data).as_ref()[..12]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// One host's record.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Failures {
    pub failures: u32,
    pub last_error: String,
    pub last_attempt: DateTime<Utc>,
    pub next_attempt: DateTime<Utc>,
    /// [`crate::backoff_file::config_fingerprint`] of the configuration it
    /// failed under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<String>,
}

/// Every host's record.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct State {
    #[serde(flatten)]
    pub hosts: BTreeMap<String, Failures>,
}

impl State {
    /// Record a failure at `now` under the configuration `config`: one more
    /// in a row (the count saturates, never wraps), and the next attempt.
    pub(crate) fn failed(&mut self, host: &str, error: &str, now: DateTime<Utc>, config: &str) {
        let n = self.hosts.get(host).map(|f| f.failures).unwrap_or(0).saturating_add(1);
        let f = Failures {
            failures: n,
            last_error: error.into(),
            last_attempt: now,
            next_attempt: now + delay(n),
            config: Some(config.into()),
        };
        self.hosts.insert(host.into(), f);
    }
    /// A success ends the run of failures.
    pub(crate) fn succeeded(&mut self, host: &str) {
        self.hosts.remove(host);
    }
    /// When `host` may be tried next, if it is backing off at `now` under
    /// the configuration `config` ([`verdict`]). The tests' view of the rule.
    #[cfg(test)]
    pub(crate) fn waiting(
        &self,
        host: &str,
        now: DateTime<Utc>,
        config: &str,
    ) -> Option<&Failures> {
        self.hosts
            .get(host)
            .filter(|f| verdict(f.next_attempt, f.config.as_deref(), now, config) == Verdict::Wait)
    }
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
        assert_eq!(
            verdict(now + Duration::days(1) + Duration::seconds(1), Some("c"), now, "c"),
            Verdict::Implausible
        );
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
    fn the_fingerprint_tells_the_parts_apart() {
        let a = fingerprint(&[b"ab".to_vec(), b"c".to_vec()]);
        assert_ne!(a, fingerprint(&[b"a".to_vec(), b"bc".to_vec()]));
        assert_eq!(a, fingerprint(&[b"ab".to_vec(), b"c".to_vec()]));
        assert_eq!(a.len(), 24);
    }
}
