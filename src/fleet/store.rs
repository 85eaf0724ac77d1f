//! What lives in etcd under the fleet's prefix, and the only code that reads
//! or writes it:
//!
//! - `lineages/<host>`: one [`LineageRecord`] per host;
//! - `locks/<host>`: the lineage lock ([`super::lock`]);
//! - `devices/<device>`: each device's heartbeat, on a lease, saying what it
//!   serves.
//!
//! Reads are linearizable and see one revision; a record that does not
//! parse is reported by its key and does not hide the others.

use super::etcd::{Compare, Etcd, EtcdError, PutRequest, RequestOp};
use super::lock::{self, Acquired, LineageLock, LockError};
use super::record::{lineage_key, LineageRecord, RecordError};
use super::seal::FleetKey;
use crate::site::Host;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// How long a lineage lock lives without a keepalive.
pub const LOCK_TTL: i64 = 30;

/// A device's heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    /// The device.
    pub device: String,
    /// When it last synced.
    pub at: DateTime<Utc>,
    /// What it serves: host and serial.
    pub serves: Vec<(String, String)>,
}

/// One record as read: the record, or why it cannot be used.
pub type RecordRead = Result<LineageRecord, RecordError>;

/// Every lineage record, read at one revision.
#[derive(Debug)]
pub struct Snapshot {
    /// The store's revision.
    pub revision: i64,
    /// Each record (or why it cannot be read), with its mod revision.
    pub lineages: Vec<(String, i64, Result<LineageRecord, RecordError>)>,
}

/// The fleet's store.
#[derive(Debug, Clone)]
pub struct FleetStore {
    etcd: Arc<Etcd>,
    prefix: String,
    key: FleetKey,
    device: String,
}

impl FleetStore {
    /// The store under `prefix`, sealing with `key`, written as `device`.
    pub fn new(etcd: Arc<Etcd>, prefix: &str, key: FleetKey, device: &str) -> FleetStore {
        FleetStore { etcd, prefix: prefix.to_string(), key, device: device.to_string() }
    }

    /// The fleet key.
    pub fn fleet_key(&self) -> &FleetKey {
        &self.key
    }

    /// The prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// This device.
    pub fn device(&self) -> &str {
        &self.device
    }

    /// Every lineage record.
    pub fn lineages(&self) -> Result<Snapshot, EtcdError> {
        // One oversized record is refused by its key; it does not hide the others.
        let r = self.etcd.get_prefix_all(&format!("{}lineages/", self.prefix))?;
        let lineages = r
            .kvs
            .into_iter()
            .map(|kv| {
                let key = kv.key_str();
                let rec = LineageRecord::parse(&self.prefix, &key, &kv.value);
                (key, kv.mod_revision, rec)
            })
            .collect();
        Ok(Snapshot { revision: r.header.revision, lineages })
    }

    /// Every lineage record's key and mod revision, without the records: a
    /// sync fetches only those that changed since it last looked.
    pub fn lineage_revisions(&self) -> Result<Vec<(String, i64)>, EtcdError> {
        Ok(self
            .etcd
            .keys_prefix(&format!("{}lineages/", self.prefix))?
            .kvs
            .into_iter()
            .map(|kv| (kv.key_str(), kv.mod_revision))
            .collect())
    }

    /// The record at `key` (as [`FleetStore::lineages`] lists it) and its mod revision.
    pub fn lineage_at(&self, key: &str) -> Result<Option<(i64, RecordRead)>, EtcdError> {
        let r = self.etcd.get_prefix_all(key)?;
        Ok(r.kvs
            .into_iter()
            .find(|kv| kv.key_str() == key)
            .map(|kv| (kv.mod_revision, LineageRecord::parse(&self.prefix, key, &kv.value))))
    }

    /// One host's record and its mod revision (0: none), read linearizably.
    pub fn lineage(&self, host: &Host) -> Result<Option<(LineageRecord, i64)>, FleetStoreError> {
        let key = lineage_key(&self.prefix, host);
        match self.etcd.get(&key)? {
            None => Ok(None),
            Some(kv) => {
                Ok(Some((LineageRecord::parse(&self.prefix, &key, &kv.value)?, kv.mod_revision)))
            }
        }
    }

    /// Try once to take `host`'s lineage lock.
    pub fn lock(&self, host: &Host) -> Result<Acquired, EtcdError> {
        lock::acquire(
            &self.etcd,
            &format!("{}locks/{}", self.prefix, host.as_str()),
            &self.device,
            LOCK_TTL,
        )
    }

    /// Write `rec` while `lock` is ours and the record is still the one read
    /// at `seen` (its mod revision; 0: there was none). `Ok(false)`: a peer
    /// wrote it in between (re-read and decide again).
    pub fn publish(
        &self,
        lock: &LineageLock,
        rec: &LineageRecord,
        seen: i64,
    ) -> Result<bool, LockError> {
        let key = lineage_key(&self.prefix, &rec.host);
        let put = RequestOp::RequestPut(PutRequest {
            key: key.as_bytes().to_vec(),
            value: rec.to_bytes(),
            lease: 0,
        });
        lock.fenced(vec![Compare::modified_at(&key, seen)], vec![put])
    }

    /// Write `rec` without the lock, only if the record is still the one
    /// read at `seen`: how a device that renewed while isolated pushes its
    /// certificate when it is back (newest usable wins; a peer's write in
    /// between makes this fail).
    pub fn push_if_unchanged(&self, rec: &LineageRecord, seen: i64) -> Result<bool, EtcdError> {
        let key = lineage_key(&self.prefix, &rec.host);
        let put = RequestOp::RequestPut(PutRequest {
            key: key.as_bytes().to_vec(),
            value: rec.to_bytes(),
            lease: 0,
        });
        let t = super::etcd::TxnRequest {
            compare: vec![Compare::modified_at(&key, seen)],
            success: vec![put],
            failure: vec![],
        };
        Ok(self.etcd.txn(&t)?.succeeded)
    }

    /// Say what this device serves, on a lease of `ttl` seconds (a device
    /// that stops syncing drops out of `fleet status` by itself).
    pub fn heartbeat(&self, serves: Vec<(String, String)>, ttl: i64) -> Result<(), EtcdError> {
        let lease = self.etcd.grant(ttl)?;
        let hb = Heartbeat { device: self.device.clone(), at: Utc::now(), serves };
        let value = serde_json::to_vec(&hb)
            .map_err(|e| EtcdError::Malformed { what: "heartbeat", why: e.to_string() })?;
        self.etcd.put(&format!("{}devices/{}", self.prefix, self.device), &value, lease.id)?;
        Ok(())
    }

    /// Every device's last heartbeat (those that do not parse are skipped with a warning).
    pub fn devices(&self) -> Result<Vec<Heartbeat>, EtcdError> {
        let r = self.etcd.get_prefix(&format!("{}devices/", self.prefix))?;
        Ok(r.kvs
            .into_iter()
            .filter_map(|kv| match serde_json::from_slice::<Heartbeat>(&kv.value) {
                Ok(h) => Some(h),
                Err(_) => {
                    tracing::warn!(
                        "fleet: ignoring the heartbeat {} that cannot be read",
                        kv.key_str()
                    );
                    None
                }
            })
            .collect())
    }
}

/// Reading one record failed.
#[derive(Debug, thiserror::Error)]
pub enum FleetStoreError {
    /// etcd could not be asked.
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    /// The record is not usable.
    #[error(transparent)]
    Record(#[from] RecordError),
}
