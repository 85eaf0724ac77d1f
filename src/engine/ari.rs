//! Asking ARI (RFC 9773) when each lineage should renew (docs/design.md,
//! "When a lineage renews"). Only the lineage's own server is asked, and not
//! before the `Retry-After` of its last answer; the window's chosen moment is
//! picked once per window and kept in the renewal conf with the rest of the
//! state ([`crate::store::AriState`]). Anything that goes wrong is a warning:
//! the backstop then decides.

use super::ctx::Ctx;
use crate::acme::{AccountKey, AcmeClient};
use crate::store::AriState;
use chrono::{DateTime, Duration, Utc};
use std::collections::BTreeMap;
use std::sync::Mutex;

/// How many renewal-information requests run at once (as many as renewals).
const CONCURRENCY: usize = 4;

/// How long before a server without ARI, or a failed ARI request, is asked again.
fn retry_later() -> Duration {
    Duration::hours(6)
}

/// A `Retry-After` is honoured, within reason (1 minute to 1 day).
fn clamp(d: std::time::Duration) -> Duration {
    Duration::from_std(d)
        .unwrap_or_else(|_| Duration::days(1))
        .clamp(Duration::minutes(1), Duration::days(1))
}

/// A moment picked uniformly at random inside `[start, end]`.
pub(super) fn pick(start: DateTime<Utc>, end: DateTime<Utc>) -> DateTime<Utc> {
    let span = (end - start).num_seconds().max(0) as u64;
    if span == 0 {
        return start;
    }
    let mut b = [0u8; 8];
    let r =
        if openssl::rand::rand_bytes(&mut b).is_ok() { u64::from_le_bytes(b) } else { span / 2 };
    start + Duration::seconds((r % (span + 1)) as i64)
}

/// A lineage whose ARI check has come.
#[derive(Debug, Clone)]
pub(super) struct Candidate {
    pub host: String,
    /// Its own server (from its renewal conf).
    pub server: String,
    pub cert_id: String,
    pub state: AriState,
}

/// Ask ARI about these lineages (grouped by server, a bounded number at a
/// time); record what it said (or that it could not say) in each lineage's
/// conf. Returns the new state of each.
pub(super) fn refresh(
    ctx: &Ctx,
    candidates: Vec<Candidate>,
    now: DateTime<Utc>,
) -> Vec<(String, AriState)> {
    let mut by_server: BTreeMap<String, Vec<(String, String, AriState)>> = BTreeMap::new();
    for c in candidates {
        by_server.entry(c.server).or_default().push((c.host, c.cert_id, c.state));
    }
    let done = Mutex::new(Vec::new());
    for (server, lineages) in by_server {
        let key = match AccountKey::generate() {
            Ok(k) => k,
            Err(_) => continue,
        };
        let client = match ctx.acme_client(&server, key, None) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("cannot ask {server} for renewal information ({e}); the lifetime rule decides for now");
                for (host, id, mut st) in lineages {
                    st.cert_id = Some(id);
                    st.retry_after = Some(now + retry_later());
                    write(ctx, &host, &st);
                    push(&done, host, st);
                }
                continue;
            }
        };
        if !client.offers_renewal_info() {
            for (host, id, st) in lineages {
                let st = AriState {
                    offered: Some(false),
                    cert_id: Some(id),
                    retry_after: Some(now + retry_later()),
                    ..st
                };
                write(ctx, &host, &st);
                push(&done, host, st);
            }
            continue;
        }
        let queue = Mutex::new(lineages);
        std::thread::scope(|sc| {
            for _ in 0..CONCURRENCY {
                sc.spawn(|| loop {
                    let next = queue.lock().ok().and_then(|mut q| q.pop());
                    let Some((host, id, st)) = next else { break };
                    let st = ask(&client, &host, &id, st, now);
                    write(ctx, &host, &st);
                    push(&done, host, st);
                });
            }
        });
    }
    done.into_inner().unwrap_or_default()
}

fn push(done: &Mutex<Vec<(String, AriState)>>, host: String, st: AriState) {
    if let Ok(mut v) = done.lock() {
        v.push((host, st));
    }
}

/// One renewal-information request, and the state it leaves.
fn ask(
    client: &AcmeClient,
    host: &str,
    id: &str,
    mut st: AriState,
    now: DateTime<Utc>,
) -> AriState {
    st.offered = Some(true);
    match client.renewal_info(id) {
        Ok(info) => {
            let window = (info.start, info.end);
            // Picked once per window (and certificate).
            if st.window != Some(window) || st.cert_id.as_deref() != Some(id) || st.chosen.is_none()
            {
                st.chosen = Some(pick(info.start, info.end));
            }
            st.window = Some(window);
            st.cert_id = Some(id.to_string());
            st.explanation_url = info.explanation_url.clone();
            st.retry_after = Some(now + info.retry_after.map(clamp).unwrap_or_else(retry_later));
            if let Some(u) = &info.explanation_url {
                tracing::info!("{host}: the CA explains its renewal window at {u}");
            }
            tracing::debug!("{host}: ARI window {} .. {}", info.start, info.end);
        }
        Err(e) => {
            tracing::warn!(
                "{host}: renewal information could not be had ({e}); the lifetime rule decides"
            );
            st.cert_id = Some(id.to_string());
            st.window = None;
            st.chosen = None;
            st.retry_after = Some(now + Duration::hours(1));
        }
    }
    st
}

fn write(ctx: &Ctx, host: &str, st: &AriState) {
    if let Err(e) = ctx.store.write_ari(host, st) {
        tracing::warn!("{host}: recording its renewal information: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn the_moment_is_inside_the_window() {
        let a = Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap();
        for _ in 0..200 {
            let t = pick(a, a + Duration::hours(6));
            assert!(t >= a && t <= a + Duration::hours(6));
        }
        assert_eq!(pick(a, a), a);
        assert_eq!(clamp(std::time::Duration::from_secs(1)), Duration::minutes(1));
        assert_eq!(clamp(std::time::Duration::from_secs(7200)), Duration::hours(2));
    }
}
