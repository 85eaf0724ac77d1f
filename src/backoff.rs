//! Failures back off (docs/design.md, "When a lineage renews"): after a
//! failed renewal or provisioning, a lineage or pending site is not tried
//! again before 1 min, then 10 min, 100 min, and then once a day, counting
//! consecutive failures; `--force` ignores it. The rule is [`delay`] (pure);
//! the state is one small JSON file, `<state dir>/backoff.json`, keyed by host.

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

/// One host's record.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Failures {
    pub failures: u32,
    pub last_error: String,
    pub last_attempt: DateTime<Utc>,
    pub next_attempt: DateTime<Utc>,
}

/// Every host's record.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct State {
    #[serde(flatten)]
    pub hosts: BTreeMap<String, Failures>,
}

impl State {
    /// Record a failure at `now`: one more in a row, and the next attempt.
    pub fn failed(&mut self, host: &str, error: &str, now: DateTime<Utc>) {
        let n = self.hosts.get(host).map(|f| f.failures).unwrap_or(0) + 1;
        self.hosts.insert(host.into(), Failures { failures: n, last_error: error.into(), last_attempt: now, next_attempt: now + delay(n) });
    }
    /// A success ends the run of failures.
    pub fn succeeded(&mut self, host: &str) {
        self.hosts.remove(host);
    }
    /// When `host` may be tried next, if it is backing off at `now`.
    pub fn waiting(&self, host: &str, now: DateTime<Utc>) -> Option<&Failures> {
        self.hosts.get(host).filter(|f| f.next_attempt > now)
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
        s.failed("a", "x", now);
        s.failed("a", "y", now);
        assert_eq!(s.hosts["a"].failures, 2);
        assert_eq!(s.hosts["a"].next_attempt, now + Duration::minutes(10));
        assert!(s.waiting("a", now + Duration::minutes(9)).is_some());
        assert!(s.waiting("a", now + Duration::minutes(10)).is_none());
        s.succeeded("a");
        assert!(s.hosts.is_empty());
        let t = tempfile::tempdir().unwrap();
        s.failed("b", "z", now);
        save(t.path(), &s).unwrap();
        assert_eq!(load(t.path()), s);
    }
}
