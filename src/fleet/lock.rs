//! One lock per lineage, on an etcd lease, with a fencing token.
//!
//! Taking it is one txn: "the lock key does not exist → create it on my
//! lease". The revision that created the key is the **fencing token**: every
//! write of a result is a txn that compares the lock key's `create_revision`
//! with it, so a holder whose lease expired (paused, cut off) cannot write
//! over the work of the device that took the lock after it.
//!
//! A keeper thread renews the lease every third of its TTL. The holder asks
//! [`LineageLock::check`] before each step that must not run twice (finalize,
//! write): it fails once a keepalive said the lease is gone, or when no
//! keepalive succeeded for a whole TTL (a pause or a partition looks like
//! that from inside) — "fleet lock lost". Released on drop (the lease is
//! revoked, so the key goes at once rather than after the TTL).

use super::etcd::{Compare, Etcd, EtcdError, PutRequest, RangeRequest, RequestOp, TxnRequest};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Who holds a lock, as its value says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// The device.
    pub device: String,
    /// Its process.
    pub pid: u32,
    /// Since when (RFC 3339).
    pub since: chrono::DateTime<chrono::Utc>,
}

/// The lock could not be used any more.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// The lease ran out (or a write's fencing compare failed): another
    /// device may hold the lock now, so nothing more may be written.
    #[error("fleet lock lost for {key}: {why}")]
    Lost {
        /// The lock key.
        key: String,
        /// Why it is taken as lost.
        why: String,
    },
    /// etcd could not be asked.
    #[error(transparent)]
    Etcd(#[from] EtcdError),
}

/// The outcome of trying to take a lock.
#[derive(Debug)]
pub enum Acquired {
    /// Ours.
    Held(LineageLock),
    /// Another holder has it.
    Busy(Option<Holder>),
}

struct Keeper {
    /// A keepalive said the lease is gone.
    gone: AtomicBool,
    /// The last moment a keepalive succeeded.
    last_ok: Mutex<Instant>,
    stop: AtomicBool,
}

/// A held lineage lock.
pub struct LineageLock {
    etcd: Arc<Etcd>,
    key: String,
    lease: i64,
    ttl: Duration,
    token: i64,
    keeper: Arc<Keeper>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for LineageLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LineageLock").field("key", &self.key).field("token", &self.token).finish()
    }
}

/// Try once to take the lock at `key` for `ttl` seconds.
pub fn acquire(etcd: &Arc<Etcd>, key: &str, device: &str, ttl: i64) -> Result<Acquired, EtcdError> {
    // The lease's age counts from before it was asked for.
    let asked = Instant::now();
    let lease = etcd.grant(ttl)?;
    let holder =
        Holder { device: device.to_string(), pid: std::process::id(), since: chrono::Utc::now() };
    let value = serde_json::to_vec(&holder)
        .map_err(|e| EtcdError::Malformed { what: "lock", why: e.to_string() })?;
    let txn = TxnRequest {
        compare: vec![Compare::created_at(key, 0)],
        success: vec![RequestOp::RequestPut(PutRequest {
            key: key.as_bytes().to_vec(),
            value,
            lease: lease.id,
        })],
        failure: vec![RequestOp::RequestRange(RangeRequest {
            key: key.as_bytes().to_vec(),
            ..Default::default()
        })],
    };
    let r = match etcd.txn(&txn) {
        Ok(r) => r,
        Err(e) => {
            let _ = etcd.revoke(lease.id);
            return Err(e);
        }
    };
    if !r.succeeded {
        let _ = etcd.revoke(lease.id);
        let kv =
            r.responses.into_iter().filter_map(|o| o.response_range).flat_map(|rr| rr.kvs).next();
        return Ok(Acquired::Busy(kv.and_then(|kv| serde_json::from_slice(&kv.value).ok())));
    }
    // The txn created the key, so its create_revision is the txn's revision.
    let token = r.header.revision;
    let keeper = Arc::new(Keeper {
        gone: AtomicBool::new(false),
        last_ok: Mutex::new(asked),
        stop: AtomicBool::new(false),
    });
    let ttl_d = Duration::from_secs(lease.ttl.max(1) as u64);
    let thread = {
        let (etcd, keeper) = (Arc::clone(etcd), Arc::clone(&keeper));
        std::thread::spawn(move || keep_alive(&etcd, lease.id, ttl_d, &keeper))
    };
    Ok(Acquired::Held(LineageLock {
        etcd: Arc::clone(etcd),
        key: key.to_string(),
        lease: lease.id,
        ttl: ttl_d,
        token,
        keeper,
        thread: Some(thread),
    }))
}

fn keep_alive(etcd: &Etcd, lease: i64, ttl: Duration, k: &Keeper) {
    let every = (ttl / 3).max(Duration::from_millis(200));
    let mut next = Instant::now() + every;
    while !k.stop.load(Ordering::Relaxed) {
        if Instant::now() < next {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        // A keepalive renews the lease as of when it was sent, at the latest.
        let sent = Instant::now();
        match etcd.keepalive(lease) {
            Ok(Some(_)) => {
                if let Ok(mut t) = k.last_ok.lock() {
                    *t = sent;
                }
                next = Instant::now() + every;
            }
            Ok(None) => {
                k.gone.store(true, Ordering::Relaxed);
                return;
            }
            // etcd unreachable for now: try again soon; check() decides by age.
            Err(_) => next = Instant::now() + Duration::from_millis(250),
        }
    }
}

impl LineageLock {
    /// The fencing token (the lock key's create_revision).
    pub fn token(&self) -> i64 {
        self.token
    }

    /// The lock key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Still ours? Fails once the lease is known gone, or when no keepalive
    /// sent in the last TTL minus a margin (a third of the TTL, at least
    /// 5 s: the step the check guards — a finalize — must end before the
    /// lease could) succeeded.
    pub fn check(&self) -> Result<(), LockError> {
        if self.keeper.gone.load(Ordering::Relaxed) {
            return Err(self.lost("etcd says its lease has expired"));
        }
        let age = self.keeper.last_ok.lock().map(|t| t.elapsed()).unwrap_or(self.ttl);
        let margin = (self.ttl / 3).max(Duration::from_secs(5)).min(self.ttl / 2);
        if age >= self.ttl - margin {
            return Err(self.lost(&format!(
                "no lease keepalive succeeded for {} s (TTL {} s)",
                age.as_secs(),
                self.ttl.as_secs()
            )));
        }
        Ok(())
    }

    fn lost(&self, why: &str) -> LockError {
        LockError::Lost { key: self.key.clone(), why: why.to_string() }
    }

    /// A txn that runs `ops` only while this lock is still ours (fenced by
    /// its token), plus `also` conditions. `Ok(false)` when one of `also`
    /// failed; a lost lock is [`LockError::Lost`].
    pub fn fenced(&self, also: Vec<Compare>, ops: Vec<RequestOp>) -> Result<bool, LockError> {
        self.check()?;
        let mut compare = vec![Compare::created_at(&self.key, self.token)];
        compare.extend(also.iter().cloned());
        let r = self.etcd.txn(&TxnRequest { compare, success: ops, failure: vec![] })?;
        if r.succeeded {
            return Ok(true);
        }
        // Which condition failed? The lock's own means it is lost.
        let still =
            self.etcd.get(&self.key)?.map(|kv| kv.create_revision == self.token).unwrap_or(false);
        if !still {
            return Err(self.lost("another holder took it (the fencing compare failed)"));
        }
        Ok(false)
    }
}

impl Drop for LineageLock {
    fn drop(&mut self) {
        self.keeper.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = self.etcd.revoke(self.lease);
    }
}
