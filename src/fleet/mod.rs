//! Fleet mode's foundations (docs/design.md, "Several devices"): several
//! devices serve the same sites and share one certificate per name through
//! etcd. This module holds the parts every fleet command stands on, each
//! tested against a real etcd cluster:
//!
//! - [`etcd`]: etcd's v3 API through its JSON gateway, typed, linearizable
//!   reads, endpoint failover, bounded answers;
//! - [`seal`]: AES-256-GCM sealing of private keys with the fleet key before
//!   they reach etcd, bound to the record's key and version;
//! - [`lock`]: one lock per lineage on an etcd lease, whose creation revision
//!   fences every write of a result;
//! - [`record`]: the typed record of one host's certificate, read as hostile
//!   input;
//! - [`config`]: the `fleet` object of config.json, parsed once;
//! - [`plan`]: the pure rule that reconciles a device's certificate with
//!   the fleet's (newest usable wins).
//!
//! Not wired into the commands yet: config.json still refuses `fleet`, and
//! `sync`, `fleet status` and fleet-aware `renew`/`deploy` build on these.

pub mod config;
pub mod etcd;
pub mod lock;
pub mod plan;
pub mod record;
pub mod seal;
pub mod store;

pub use etcd::{Etcd, EtcdError, EtcdOptions};
pub use lock::{Acquired, LineageLock, LockError};
pub use record::{LineageRecord, OpenLineage, RecordError};
pub use seal::{FleetKey, SealError};
pub use store::{FleetStore, FleetStoreError};
