//! Fleet mode in the commands (docs/design.md, "Several devices"): the
//! device's side of the fleet that [`crate::fleet`] stores in etcd.
//!
//! - [`sync`]: the fleet's records against this device's certbot tree —
//!   newer fleet certificates are materialized as the next `archive/`
//!   version, a newer local one is pushed (the pure rule is
//!   [`crate::fleet::plan::reconcile`]); the fleet's one ACME account per
//!   server is installed (so every device gives the same stateless HTTP-01
//!   answer); this device's heartbeat is written.
//! - [`order_exclusive`]: one issuance for a host under its lineage lock:
//!   re-read the record, take what a peer already renewed, else order (the
//!   lock checked before finalize), publish fenced by the lock, and only
//!   then write the local tree.
//! - [`FleetState`]: what this device last heard from the fleet (when it
//!   synced, the error and since when), in `<state dir>/fleet.json`, for
//!   `certificates`, `doctor` and the reports.

use super::ctx::Ctx;
use crate::acme::{Gate, Issued};
use crate::apache::{self, Recovered};
use crate::fleet::config::FleetConfig;
use crate::fleet::etcd::{
    Compare, Etcd, EtcdError, EtcdOptions, PutRequest, RequestOp, TxnRequest,
};
use crate::fleet::plan::{reconcile, Cert, Reconcile};
use crate::fleet::record::{AriRecord, LineageRecord, Meta, OpenLineage};
use crate::fleet::store::FleetStore;
use crate::fleet::{
    Acquired, FleetKey, FleetStoreError, LineageLock, LockError, RecordError, SealError,
};
use crate::site::{BadHost, Host, Site, Tls};
use crate::store::accounts::{CarriedError, ServerUrlError};
use crate::store::{accounts, Material, NewVersion, Place, RenewalParams, StoreError};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a device waits for a peer's lineage lock before it gives up on
/// the lineage for this pass (a peer's issuance, or a dead holder's lease
/// running out: [`crate::fleet::store::LOCK_TTL`] + margin).
pub(crate) const LOCK_WAIT: Duration = Duration::from_secs(75);

/// How long a heartbeat lives without the next sync (three timer periods).
pub(crate) const HEARTBEAT_TTL: i64 = 900;

/// One etcd call's limit.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// The fleet, connected (no request made yet).
pub struct Fleet {
    /// As configured.
    pub cfg: FleetConfig,
    /// The records.
    pub store: FleetStore,
    etcd: Arc<Etcd>,
}

impl Fleet {
    /// Set up the client: the fleet key and the etcd credentials are read
    /// now (a file that cannot be used is a configuration error, exit 2).
    pub fn open(cfg: &FleetConfig) -> crate::error::Result<Fleet> {
        let bad = |e: String| crate::error::Error::invalid(e);
        let key =
            FleetKey::load(&cfg.secret_file).map_err(|e| bad(format!("fleet.secret_file: {e}")))?;
        let auth = match &cfg.auth {
            None => None,
            Some((user, file)) => {
                let pw = crate::fsutil::read_user_file(file)
                    .map_err(|e| bad(format!("fleet.password_file {}: {e}", file.display())))?;
                Some((user.clone(), pw.trim_end_matches(['\n', '\r']).to_string()))
            }
        };
        let opts = EtcdOptions {
            endpoints: cfg.endpoints.clone(),
            ca: cfg.ca.clone(),
            cert: cfg.cert.as_ref().map(|c| c.0.clone()),
            key: cfg.cert.as_ref().map(|c| c.1.clone()),
            auth,
            timeout: CALL_TIMEOUT,
        };
        let etcd = Arc::new(Etcd::new(&opts).map_err(|e| bad(format!("fleet: {e}")))?);
        Ok(Fleet {
            store: FleetStore::new(etcd.clone(), &cfg.prefix, key, &cfg.device_id),
            cfg: cfg.clone(),
            etcd,
        })
    }
}

// ---------------------------------------------------------------- state

/// What this device last heard from the fleet.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct FleetState {
    /// The last sync that reached the fleet.
    pub last_sync: Option<DateTime<Utc>>,
    /// The fleet error since then, if any.
    pub error: Option<String>,
    /// Since when the fleet cannot be used.
    pub since: Option<DateTime<Utc>>,
    /// The fleet's account id per ACME server (the one every order uses).
    #[serde(default)]
    pub accounts: BTreeMap<String, String>,
    /// Per host, the record's mod revision and this device's live
    /// certificate (its link target) when the last sync reconciled them: a
    /// sync reads again only the records where either changed.
    #[serde(default)]
    pub seen: BTreeMap<String, (i64, Option<String>)>,
    /// Per host, the live link and the serial behind it, as the last
    /// heartbeat said (so an unchanged certificate is not parsed again).
    #[serde(default)]
    pub serving: BTreeMap<String, (String, String)>,
}

fn state_path(ctx: &Ctx) -> std::path::PathBuf {
    ctx.cfg.state_dir().join("fleet.json")
}

/// Read the state (missing or unreadable: empty).
pub(crate) fn load_state(ctx: &Ctx) -> FleetState {
    std::fs::read(state_path(ctx))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

fn save_state(ctx: &Ctx, s: &FleetState) {
    let r = crate::fsutil::create_dir_all_mode(&ctx.cfg.state_dir(), 0o755).and_then(|_| {
        crate::fsutil::atomic_write(
            &state_path(ctx),
            &serde_json::to_vec_pretty(s).unwrap_or_default(),
            0o600,
        )
    });
    if let Err(e) = r {
        tracing::warn!("recording the fleet state: {e}");
    }
}

/// Record that the fleet could not be reached; returns the state.
pub(crate) fn note_error(ctx: &Ctx, error: &str) -> FleetState {
    let mut s = load_state(ctx);
    s.since = s.since.or(Some(Utc::now()));
    s.error = Some(error.to_string());
    save_state(ctx, &s);
    s
}

fn note_ok(ctx: &Ctx, seen: BTreeMap<String, (i64, Option<String>)>) {
    let mut s = load_state(ctx);
    s.seen = seen;
    s.last_sync = Some(Utc::now());
    s.error = None;
    s.since = None;
    save_state(ctx, &s);
}

/// The fleet's account id for `server`, as last synced (fleet mode only).
pub(crate) fn fleet_account(ctx: &Ctx, server: &str) -> Option<String> {
    ctx.cfg.fleet.as_ref()?;
    load_state(ctx).accounts.get(server).cloned()
}

// ---------------------------------------------------------------- sync

/// What one sync did.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct SyncReport {
    /// The event (`sync`).
    pub event: &'static str,
    /// This device.
    pub device: String,
    /// Hosts whose fleet certificate was materialized here.
    pub taken: Vec<String>,
    /// Hosts whose local certificate was pushed to the fleet.
    pub pushed: Vec<String>,
    /// Records that could not be used, by etcd key.
    pub errors: Vec<KeyError>,
    /// Apache was reloaded.
    pub reloaded: bool,
    /// The Apache step failed: why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub apache_error: Option<String>,
    /// The fleet's account for the configured server.
    pub account: Option<String>,
    /// The fleet could not be reached: why, and since when.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<DateTime<Utc>>,
    /// What to remember as reconciled ([`FleetState::seen`]).
    #[serde(skip)]
    pub(super) seen: BTreeMap<String, (i64, Option<String>)>,
}

/// A record that could not be used.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct KeyError {
    /// The etcd key (or host).
    pub key: String,
    /// Why (no value from the record).
    pub error: String,
}

/// Is this certificate usable for `host` now?
fn usable_local(
    ctx: &Ctx,
    host: &str,
    now: DateTime<Utc>,
) -> Option<(crate::certs::KeyCert, bool)> {
    match ctx.store.material(host, Place::Live) {
        Material::Present(kc) => {
            let ok = super::facts::candidate(&kc, host).usable(host, now);
            Some((kc, ok))
        }
        _ => None,
    }
}

/// Why a sync did not reach its end.
#[derive(Debug, Clone)]
pub(crate) struct SyncError {
    /// etcd could not be reached (or answered that it cannot serve: no
    /// leader, a minority): the only case the emergency rule
    /// (`fleet.isolated_renew_below`) applies to.
    pub unreachable: bool,
    /// What happened.
    pub message: String,
}

impl std::fmt::Display for SyncError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<EtcdError> for SyncError {
    fn from(e: EtcdError) -> Self {
        let unreachable = matches!(e, EtcdError::Unreachable(_))
            || matches!(e, EtcdError::Refused { http: 503, .. });
        SyncError { unreachable, message: e.to_string() }
    }
}

impl From<FleetError> for SyncError {
    fn from(e: FleetError) -> Self {
        match e {
            FleetError::Etcd(e) => e.into(),
            e => SyncError { unreachable: false, message: e.to_string() },
        }
    }
}

/// A source error of this device's own (its account store, its Apache
/// configuration, the caller's order), kept as it is.
pub(crate) type DeviceError = Box<dyn std::error::Error + Send + Sync>;

/// Why a step of a sync or of an exclusive order failed: the messages are
/// the ones the commands print.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FleetError {
    /// etcd could not be asked, or refused.
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    /// The fleet's record of a lineage could not be read.
    #[error(transparent)]
    Store(#[from] FleetStoreError),
    /// A lineage record could not be sealed or opened.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// The fleet key could not seal a value.
    #[error(transparent)]
    Seal(#[from] SealError),
    /// This device's certbot tree refused a new version.
    #[error(transparent)]
    Tree(#[from] StoreError),
    /// This device's account store or Apache configuration refused.
    #[error(transparent)]
    Device(DeviceError),
    /// Not a host name.
    #[error("{host}: {why}")]
    Host { host: String, why: BadHost },
    /// The ACME server URL names no account directory.
    #[error("the ACME server URL: {0}")]
    ServerUrl(ServerUrlError),
    /// The fleet's account record cannot be used.
    #[error("fleet record {key}: {why}")]
    AccountRecord { key: String, why: AccountRecordError },
    /// This device's account cannot be exported to the fleet.
    #[error("the ACME account {0} cannot be read")]
    AccountUnreadable(String),
    /// The fleet's account record kept changing (the server named).
    #[error("the fleet's ACME account of {0} changed while it was read; try again")]
    AccountRaced(String),
    /// A fleet lineage record's certificate does not parse.
    #[error("its certificate cannot be read")]
    CertUnreadable,
    /// Writing a fleet certificate into this device's tree failed.
    #[error("{host}: materializing the fleet's certificate: {source}")]
    Materialize { host: String, source: StoreError },
    /// etcd could not say who holds a lineage lock.
    #[error("the fleet lock of {host}: {source}")]
    LockUnknown { host: String, source: EtcdError },
    /// A peer held the lineage lock for longer than [`LOCK_WAIT`].
    #[error("{who} has held the fleet lock of {host} for longer than {} s; the next pass tries again", LOCK_WAIT.as_secs())]
    LockBusy { who: String, host: String },
    /// The lineage lock was lost (or could not be confirmed).
    #[error("{}", lost_text(.0))]
    Lost(LockError),
    /// The record was written by another while the lock was held.
    #[error("{0}: the fleet's record changed while the lock was held (a push from an isolated device); the certificate just issued is not used, the next sync takes the fleet's")]
    RecordChanged(String),
    /// The order itself (the caller's) failed.
    #[error(transparent)]
    Order(DeviceError),
}

fn device(e: impl Into<DeviceError>) -> FleetError {
    FleetError::Device(e.into())
}

/// Why the fleet's account record cannot be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AccountRecordError {
    /// Not an account record.
    #[error("cannot be read: {0:?} error at line {1} column {2}")]
    Unreadable(serde_json::error::Category, usize, usize),
    /// It names another schema or server.
    #[error("another schema or another server than its key names")]
    Mismatch,
    /// Its key cannot be opened with the fleet key.
    #[error(transparent)]
    Seal(SealError),
    /// The opened key is no JSON.
    #[error("the sealed key is not a JWK")]
    NotJwk,
    /// The opened key is not a usable account key.
    #[error(transparent)]
    Key(CarriedError),
}

/// A key or value from etcd, fit for a message: control characters
/// escaped, at most 200 characters.
pub(crate) fn shown(s: &str) -> String {
    let e: String = s.escape_debug().collect();
    if e.chars().count() > 200 {
        format!("{}…", e.chars().take(200).collect::<String>())
    } else {
        e
    }
}

/// Sync with the fleet (the global lock is held): account, lineages,
/// heartbeat. The Apache step is the caller's ([`SyncReport::taken`]); the
/// stateless answer's file is written here when the account changed.
/// `Err`: the fleet could not be reached (recorded in [`FleetState`]).
pub(crate) fn sync(
    ctx: &Ctx,
    fleet: &Fleet,
    rec: &Recovered,
    sites: &[Site],
) -> Result<SyncReport, SyncError> {
    let r = sync_inner(ctx, fleet, rec, sites);
    match &r {
        Ok(rep) => note_ok(ctx, rep.seen.clone()),
        Err(e) => {
            note_error(ctx, &e.message);
        }
    }
    r
}

fn sync_inner(
    ctx: &Ctx,
    fleet: &Fleet,
    rec: &Recovered,
    sites: &[Site],
) -> Result<SyncReport, SyncError> {
    let now = Utc::now();
    let mut rep =
        SyncReport { event: "sync", device: fleet.cfg.device_id.clone(), ..Default::default() };
    rep.account = sync_account(ctx, fleet, &ctx.cfg.acme_server)?;
    if rep.account.is_some() {
        if let Err(e) = answer_for_fleet_account(ctx, rec) {
            rep.apache_error = Some(e.to_string());
            tracing::error!("writing the stateless HTTP-01 answer of the fleet's account: {e}");
        }
    }
    let seen_hosts = sync_lineages(ctx, fleet, sites, now, &mut rep)?;
    push_unrecorded(ctx, fleet, sites, now, &seen_hosts, &mut rep);
    if let Err(e) = heartbeat(ctx, fleet, sites) {
        tracing::warn!("fleet: the heartbeat: {e}");
    }
    Ok(rep)
}

/// The fleet's lineage records against this device's: which records changed
/// since the last sync (keys and revisions only); only those, and those
/// whose local certificate changed, are read. Returns the hosts the fleet
/// has a record of.
fn sync_lineages(
    ctx: &Ctx,
    fleet: &Fleet,
    sites: &[Site],
    now: DateTime<Utc>,
    rep: &mut SyncReport,
) -> Result<Vec<String>, SyncError> {
    let lineage_prefix = format!("{}lineages/", fleet.cfg.prefix);
    let revs = fleet.store.lineage_revisions()?;
    let before = load_state(ctx).seen;
    let mut processed = Vec::new();
    let mut errored = std::collections::BTreeSet::new();
    let mut seen_hosts = Vec::new();
    // Only the hosts of this device's Let's Encrypt sites: a lineage no site
    // here uses (undeployed here, or never deployed) is not taken back.
    let ours = |h: &str| {
        sites.iter().any(|s| matches!(s.tls, Tls::LetsEncrypt { .. }) && s.hostname.as_str() == h)
    };
    let owed = crate::revocations::load(&ctx.cfg.state_dir()).unwrap_or_default();
    for (raw_key, modrev) in revs {
        let host = raw_key.strip_prefix(&lineage_prefix).unwrap_or_default().to_string();
        seen_hosts.push(host.clone());
        if !ours(&host) {
            continue;
        }
        if before.get(&host) == Some(&(modrev, ctx.store.live_mark(&host))) {
            processed.push((host, modrev));
            continue;
        }
        let Some((modrev, rec)) = fleet.store.lineage_at(&raw_key)? else { continue };
        let key = shown(&raw_key);
        let rec = match rec {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("{e}");
                rep.errors.push(KeyError { key, error: e.to_string() });
                continue;
            }
        };
        processed.push((host.clone(), modrev));
        // A certificate this device owes a revocation is never taken back.
        if owed.owed.contains_key(&rec.serial) {
            continue;
        }
        if let Err(e) = sync_record(ctx, fleet, sites, now, &host, (&rec, modrev), rep) {
            rep.errors.push(KeyError { key, error: e.to_string() });
            errored.insert(host);
        }
    }
    for (h, m) in processed {
        if !errored.contains(&h) {
            let mark = ctx.store.live_mark(&h);
            rep.seen.insert(h, (m, mark));
        }
    }
    Ok(seen_hosts)
}

/// One changed record (and its mod revision) against this device's
/// certificate of `host`: take the fleet's, push this device's, or keep
/// both. `Err`: the record could not be used.
fn sync_record(
    ctx: &Ctx,
    fleet: &Fleet,
    sites: &[Site],
    now: DateTime<Utc>,
    host: &str,
    (rec, modrev): (&LineageRecord, i64),
    rep: &mut SyncReport,
) -> Result<(), FleetError> {
    // The certificate alone decides (its key is read only to push it),
    // and a record is opened only to be taken: a sync with nothing new
    // parses one leaf per lineage.
    let leaf = ctx.store.leaf(host, Place::Live);
    if leaf.as_ref().is_some_and(|c| c.serial == rec.serial) {
        return Ok(());
    }
    let lc = leaf.as_ref().map(|c| Cert {
        serial: c.serial.clone(),
        issued: c.not_before,
        not_after: c.not_after,
        usable: c.not_before <= now && now < c.not_after && c.covers(host),
    });
    // Newer means issued later: the record's own certificate says when
    // (its claims are checked against it when it is opened to be taken).
    let Ok(fleaf) = crate::certs::parse_first_cert(rec.fullchain.as_bytes()) else {
        return Err(FleetError::CertUnreadable);
    };
    let fc = Cert {
        serial: rec.serial.clone(),
        issued: fleaf.not_before,
        not_after: rec.not_after,
        usable: fleaf.not_before <= now && now < rec.not_after,
    };
    match reconcile(lc.as_ref(), Some(&fc)) {
        Reconcile::Take => {
            let open = rec.open(fleet.store.fleet_key(), fleet.store.prefix()).inspect_err(|e| {
                tracing::warn!("{e}");
            })?;
            take(ctx, &open, sites)
                .map_err(|source| FleetError::Materialize { host: host.into(), source })?;
            ctx.progress(&format!(
                "{host}: took the fleet's certificate (version {}, renewed by {})",
                rec.version, rec.renewed_by
            ));
            rep.taken.push(host.into());
        }
        Reconcile::Push => match usable_local(ctx, host, now) {
            Some((kc, true)) => {
                if push(ctx, fleet, host, &kc, Some((rec, modrev)))? {
                    rep.pushed.push(host.into());
                } else {
                    tracing::info!("{host}: a peer wrote the fleet's record first; the next sync takes it");
                }
            }
            _ => tracing::warn!("{host}: this device's certificate is newer than the fleet's but its key does not match; not published"),
        },
        // (Its conf said autorenew = False when it was taken or pushed.)
        Reconcile::Keep => {}
    }
    Ok(())
}

/// This device's certificates the fleet has no record of (`seen_hosts`):
/// push them (only hosts of sites deployed here, whose lineages site-admin
/// keeps).
fn push_unrecorded(
    ctx: &Ctx,
    fleet: &Fleet,
    sites: &[Site],
    now: DateTime<Utc>,
    seen_hosts: &[String],
    rep: &mut SyncReport,
) {
    for s in sites.iter().filter(|s| {
        matches!(s.tls, Tls::LetsEncrypt { .. })
            && !seen_hosts.iter().any(|h| h == s.hostname.as_str())
    }) {
        if let Some((kc, true)) = usable_local(ctx, &s.hostname, now) {
            match push(ctx, fleet, &s.hostname, &kc, None) {
                Ok(true) => {
                    mark_fleet_managed(ctx, &s.hostname);
                    rep.pushed.push(s.hostname.to_string())
                }
                Ok(false) => tracing::info!(
                    "{}: a peer wrote the fleet's record first; the next sync takes it",
                    s.hostname
                ),
                Err(e) => {
                    rep.errors.push(KeyError { key: s.hostname.to_string(), error: e.to_string() })
                }
            }
        }
    }
}

/// Every device answers HTTP-01 for the fleet's account (the CA may reach
/// any of them): the server-wide stateless answer with its thumbprint, one
/// reload when it changed.
fn answer_for_fleet_account(ctx: &Ctx, rec: &Recovered) -> Result<(), FleetError> {
    let Some(a) = super::ctx::stored_account(ctx, &ctx.cfg.acme_server).map_err(device)? else {
        return Ok(());
    };
    let text = apache::render_acme_conf(&a.key.thumbprint().map_err(device)?);
    let file = apache::acme_conf_file(&ctx.cfg);
    if std::fs::read_to_string(&file).ok().as_deref() == Some(text.as_str()) {
        return Ok(());
    }
    let mut txn = apache::Transaction::begin(&ctx.cfg, rec).map_err(device)?;
    txn.write(&file, text.as_bytes(), 0o644).map_err(device)?;
    txn.commit(false, &|m| ctx.progress(m), &|_| Ok::<(), apache::ApacheError>(())).map_err(device)
}

/// Say again what this device serves, after a command changed it (a
/// deploy, a renewal): a failure is only logged, the next sync says it.
pub(crate) fn beat(ctx: &Ctx, fleet: &Fleet) {
    let sites = super::facts::all_stored(&ctx.cfg).unwrap_or_default();
    if let Err(e) = heartbeat(ctx, fleet, &sites) {
        tracing::warn!("fleet: the heartbeat: {e}");
    }
}

/// Write this device's heartbeat: what each Let's Encrypt site serves.
fn heartbeat(ctx: &Ctx, fleet: &Fleet, sites: &[Site]) -> Result<(), EtcdError> {
    // A certificate is parsed for its serial only when its live link moved
    // since the last heartbeat (the serials are kept with their links).
    let mut st = load_state(ctx);
    let mut serving = BTreeMap::new();
    for s in sites.iter().filter(|s| matches!(s.tls, Tls::LetsEncrypt { .. })) {
        let Some(mark) = ctx.store.live_mark(&s.hostname) else { continue };
        let serial = match st.serving.get(s.hostname.as_str()) {
            Some((m, serial)) if *m == mark => Some(serial.clone()),
            _ => ctx.store.leaf(&s.hostname, Place::Live).map(|c| c.serial),
        };
        if let Some(serial) = serial {
            serving.insert(s.hostname.to_string(), (mark, serial));
        }
    }
    let serves = serving.iter().map(|(h, (_, serial))| (h.clone(), serial.clone())).collect();
    let r = fleet.store.heartbeat(serves, HEARTBEAT_TTL);
    if st.serving != serving {
        st.serving = serving;
        save_state(ctx, &st);
    }
    r
}

/// certbot must not renew a fleet lineage behind the fleet's back.
fn mark_fleet_managed(ctx: &Ctx, host: &str) {
    if let Err(e) = ctx.store.set_autorenew(host, false) {
        tracing::warn!("{host}: marking the lineage autorenew = False: {e}");
    }
}

/// The renewal parameters a materialized fleet certificate's conf gets:
/// what this device's conf says, else the site's, else the record's.
fn params_for(ctx: &Ctx, host: &str, rec: &LineageRecord, sites: &[Site]) -> RenewalParams {
    let conf = ctx.store.lineage_conf(host, Place::Live).unwrap_or_default();
    let site = sites.iter().find(|s| s.hostname.as_str() == host);
    RenewalParams {
        account: rec.account.clone().or(conf.account),
        server: rec.server.clone(),
        webroot: conf
            .webroot
            .or_else(|| site.map(|s| ctx.cfg.site_wellknown(&s.siteid)))
            .unwrap_or_else(|| ctx.cfg.wellknown_dir.join("fleet")),
        key_type: conf.key_type.unwrap_or(ctx.cfg.key_type),
        profile: conf
            .profile
            .or_else(|| site.and_then(|s| s.profile_wish(ctx.cfg.acme_profile.as_deref()))),
    }
}

/// Materialize a fleet certificate as the next version of the host's lineage.
fn take(ctx: &Ctx, open: &OpenLineage, sites: &[Site]) -> Result<(), StoreError> {
    let host = open.record.host.as_str();
    let params = params_for(ctx, host, &open.record, sites);
    let v = NewVersion::from_key_and_fullchain(&open.key_pem, &open.record.fullchain)?;
    ctx.store.add_version(host, &v, &params)?;
    mark_fleet_managed(ctx, host);
    Ok(())
}

/// Publish this device's certificate of `host` if the record is still the
/// one read (`prev`: it and its mod revision; None: there was none).
fn push(
    ctx: &Ctx,
    fleet: &Fleet,
    host: &str,
    kc: &crate::certs::KeyCert,
    prev: Option<(&LineageRecord, i64)>,
) -> Result<bool, FleetError> {
    let conf = ctx.store.lineage_conf(host, Place::Live).unwrap_or_default();
    let h = parse_host(host)?;
    let version = prev.map(|(r, _)| r.version + 1).unwrap_or(1);
    let meta = Meta {
        server: conf.server.unwrap_or_else(|| ctx.cfg.acme_server.clone()),
        account: conf.account,
        profile: conf.profile.map(|p| p.name),
        ari: AriRecord::default(),
        device: fleet.cfg.device_id.clone(),
        now: Utc::now(),
    };
    let rec = LineageRecord::seal(
        fleet.store.fleet_key(),
        fleet.store.prefix(),
        &h,
        version,
        &kc.key_pem,
        &kc.chain_pem,
        meta,
    )?;
    let ok = fleet.store.push_if_unchanged(&rec, prev.map(|p| p.1).unwrap_or(0))?;
    if ok {
        ctx.progress(&format!(
            "{host}: published this device's certificate to the fleet (version {version})"
        ));
    }
    Ok(ok)
}

// ---------------------------------------------------------------- back-off

/// Merge the fleet's back-off records (`backoff/<host>`) into this
/// device's: for each host the later next attempt wins, so a lineage whose
/// order failed on one device is not tried by every other at once. A record
/// that does not parse is skipped with a warning naming its key.
pub(crate) fn merge_backoff(
    ctx: &Ctx,
    fleet: &Fleet,
    sites: &[Site],
    local: &mut crate::backoff::State,
) -> Result<(), EtcdError> {
    let prefix = format!("{}backoff/", fleet.cfg.prefix);
    for kv in fleet.etcd.get_prefix(&prefix)?.kvs {
        let key = kv.key_str();
        let host = key.trim_start_matches(&prefix).to_string();
        let Ok(f) = serde_json::from_slice::<crate::backoff::Failures>(&kv.value) else {
            tracing::warn!(
                "fleet: ignoring the back-off record {} that cannot be read",
                shown(&key)
            );
            continue;
        };
        if Host::parse(&host).is_err()
            || f.last_error.len() > 4000
            || f.last_error.chars().any(char::is_control)
        {
            tracing::warn!("fleet: ignoring the back-off record {}: not a host name, or an error message no site-admin writes", shown(&key));
            continue;
        }
        // Only lineages this device has.
        if !ctx.store.has(&host, Place::Live) && !sites.iter().any(|s| s.hostname.as_str() == host)
        {
            continue;
        }
        let later = local.hosts.get(&host).map(|l| f.next_attempt > l.next_attempt).unwrap_or(true);
        if later {
            local.hosts.insert(host, f);
        }
    }
    Ok(())
}

/// Publish the back-off state of `hosts` (a failure, or none any more).
pub(crate) fn publish_backoff(fleet: &Fleet, state: &crate::backoff::State, hosts: &[String]) {
    for h in hosts {
        let key = format!("{}backoff/{h}", fleet.cfg.prefix);
        let r = match state.hosts.get(h) {
            Some(f) => {
                fleet.etcd.put(&key, &serde_json::to_vec(f).unwrap_or_default(), 0).map(|_| ())
            }
            None => fleet.etcd.delete(&key),
        };
        if let Err(e) = r {
            tracing::warn!("fleet: recording the back-off of {h}: {e}");
        }
    }
}

// ---------------------------------------------------------------- ARI

/// A lineage's ARI state as the fleet shares it (`ari/<host>`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SharedAri {
    cert_id: Option<String>,
    window: Option<(DateTime<Utc>, DateTime<Utc>)>,
    chosen: Option<DateTime<Utc>>,
    retry_after: Option<DateTime<Utc>>,
    explanation_url: Option<String>,
    offered: Option<bool>,
}

/// Take the fleet's ARI answers about the certificates this device serves
/// (rule 5 of [`crate::fleet::plan`]) into their renewal confs, before the
/// pass reads them: ARI is asked once for the fleet, and the moment picked
/// inside a window is the same on every device. A record that does not
/// parse, or names a host that is not one, is skipped with a warning.
pub(crate) fn merge_ari(ctx: &Ctx, fleet: &Fleet) -> Result<usize, EtcdError> {
    let prefix = format!("{}ari/", fleet.cfg.prefix);
    let mut n = 0;
    for kv in fleet.etcd.get_prefix(&prefix)?.kvs {
        let key = kv.key_str();
        let host = key.trim_start_matches(&prefix).to_string();
        let (Ok(sh), true) =
            (serde_json::from_slice::<SharedAri>(&kv.value), Host::parse(&host).is_ok())
        else {
            tracing::warn!("fleet: ignoring the ARI record {} that cannot be read", shown(&key));
            continue;
        };
        // What no CA answer makes: a Retry-After beyond the longest one kept
        // (a day), a moment outside its window.
        let now = Utc::now();
        let sane = sh
            .retry_after
            .is_none_or(|t| t <= now + chrono::Duration::days(1) + chrono::Duration::minutes(5))
            && match (sh.window, sh.chosen) {
                (Some((a, b)), Some(c)) => a <= b && a <= c && c <= b,
                (None, None) => true,
                _ => false,
            };
        if !sane {
            tracing::warn!("fleet: ignoring the ARI record {}: a Retry-After or a chosen moment no CA answer gives", shown(&key));
            continue;
        }
        let clean = |u: Option<String>| u.and_then(|u| crate::acme::types::clean_url(&u));
        let Some(live) = ctx.store.leaf(&host, Place::Live) else { continue };
        let Some(conf) = ctx.store.lineage_conf(&host, Place::Live) else { continue };
        let local = &conf.ari;
        if !crate::fleet::plan::take_shared_ari(
            live.ari_id.as_deref(),
            local.cert_id.as_deref(),
            local.retry_after,
            sh.cert_id.as_deref(),
            sh.retry_after,
        ) {
            continue;
        }
        let st = crate::model::AriState {
            retry_after: sh.retry_after,
            cert_id: sh.cert_id,
            window: sh.window,
            chosen: sh.chosen,
            explanation_url: clean(sh.explanation_url),
            offered: sh.offered,
        };
        match ctx.store.write_ari(&host, &st) {
            Ok(()) => n += 1,
            Err(e) => tracing::warn!("{host}: recording the fleet's ARI state: {e}"),
        }
    }
    Ok(n)
}

/// Publish the ARI answers this pass got.
pub(crate) fn publish_ari(fleet: &Fleet, answers: &[(String, crate::model::AriState)]) {
    for (host, st) in answers {
        let sh = SharedAri {
            cert_id: st.cert_id.clone(),
            window: st.window,
            chosen: st.chosen,
            retry_after: st.retry_after,
            explanation_url: st.explanation_url.clone(),
            offered: st.offered,
        };
        if let Err(e) = fleet.etcd.put(
            &format!("{}ari/{host}", fleet.cfg.prefix),
            &serde_json::to_vec(&sh).unwrap_or_default(),
            0,
        ) {
            tracing::warn!("fleet: publishing the ARI state of {host}: {e}");
        }
    }
}

// ---------------------------------------------------------------- account

/// The fleet's ACME account of one server, as stored in etcd (its key sealed).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct AccountRecord {
    schema: u32,
    server: String,
    id: String,
    uri: String,
    /// The account's private JWK, sealed.
    key: String,
    terms_of_service: Option<String>,
}

fn account_key(fleet: &Fleet, server: &str) -> Result<String, FleetError> {
    let rel = accounts::server_rel(server).map_err(FleetError::ServerUrl)?;
    Ok(format!("{}accounts/{rel}", fleet.cfg.prefix))
}

/// Make the fleet's account of `server` this device's (installing it, and
/// the stateless answer of its thumbprint); a fleet without one gets this
/// device's, or one registered now under the fleet's account lock.
fn sync_account(ctx: &Ctx, fleet: &Fleet, server: &str) -> Result<Option<String>, SyncError> {
    let key = account_key(fleet, server)?;
    for _ in 0..3 {
        if let Some(kv) = fleet.etcd.get(&key)? {
            let id = install_account(ctx, fleet, &key, &kv.value, server)?;
            return Ok(Some(id));
        }
        // None in the fleet: this device's, else register one (once for the fleet).
        let (local, account_lock) = match local_account(ctx, fleet, server, &key)? {
            LocalAccount::Ready(a, lock) => (a, lock),
            LocalAccount::Retry => continue,
            LocalAccount::NoneYet => return Ok(None),
        };
        let done = offer_account(ctx, fleet, server, &key, &local.id)?;
        drop(account_lock);
        if done {
            ctx.progress(&format!(
                "published the ACME account {} of {server} as the fleet's",
                local.id
            ));
            remember_account(ctx, server, &local.id);
            return Ok(Some(local.id));
        }
    }
    Err(FleetError::AccountRaced(server.into()).into())
}

/// This device's account to offer the fleet, when the fleet has none.
enum LocalAccount {
    /// This one; registered now under the fleet's account lock (held until
    /// it is published).
    Ready(accounts::StoredAccount, Option<LineageLock>),
    /// Another device holds the account lock, or published one meanwhile.
    Retry,
    /// None could be registered; the next sync tries again.
    NoneYet,
}

/// This device's account of `server`, else one registered now (once for
/// the fleet: under the fleet's account lock, the fleet's record `key`
/// read again).
fn local_account(
    ctx: &Ctx,
    fleet: &Fleet,
    server: &str,
    key: &str,
) -> Result<LocalAccount, SyncError> {
    if let Some(a) = super::ctx::stored_account(ctx, server).map_err(device)? {
        return Ok(LocalAccount::Ready(a, None));
    }
    let lock = match crate::fleet::lock::acquire(
        &fleet.etcd,
        &format!("{}locks/.account", fleet.cfg.prefix),
        &fleet.cfg.device_id,
        30,
    )? {
        Acquired::Held(l) => l,
        Acquired::Busy(_) => {
            std::thread::sleep(Duration::from_secs(1));
            return Ok(LocalAccount::Retry);
        }
    };
    if fleet.etcd.get(key)?.is_some() {
        return Ok(LocalAccount::Retry);
    }
    match super::provision::client_for(ctx, server) {
        Ok(_) => {}
        Err(e) => {
            tracing::warn!("the fleet has no ACME account for {server} yet and none could be registered ({e}); the next sync tries again");
            return Ok(LocalAccount::NoneYet);
        }
    }
    let Some(a) = super::ctx::stored_account(ctx, server).map_err(device)? else {
        return Ok(LocalAccount::NoneYet);
    };
    // Published by the caller while the lock is still held.
    Ok(LocalAccount::Ready(a, Some(lock)))
}

/// Publish this device's account `id` of `server` as the fleet's, at `key`,
/// if the fleet still has none: whether it was.
fn offer_account(
    ctx: &Ctx,
    fleet: &Fleet,
    server: &str,
    key: &str,
    id: &str,
) -> Result<bool, SyncError> {
    let carried = accounts::export(&ctx.cfg.letsencrypt_dir, server, id)
        .ok_or_else(|| FleetError::AccountUnreadable(id.into()))?;
    let sealed = fleet
        .store
        .fleet_key()
        .seal(key, 1, carried.key.to_string().as_bytes())
        .map_err(FleetError::Seal)?;
    let rec = AccountRecord {
        schema: 1,
        server: server.into(),
        id: carried.id.clone(),
        uri: carried.uri,
        key: sealed,
        terms_of_service: carried.terms_of_service,
    };
    let put = RequestOp::RequestPut(PutRequest {
        key: key.as_bytes().to_vec(),
        value: serde_json::to_vec(&rec).unwrap_or_default(),
        lease: 0,
    });
    let t = TxnRequest {
        compare: vec![Compare::created_at(key, 0)],
        success: vec![put],
        failure: vec![],
    };
    Ok(fleet.etcd.txn(&t)?.succeeded)
}

/// Check and install the account record stored at `key`.
fn install_account(
    ctx: &Ctx,
    fleet: &Fleet,
    key: &str,
    value: &[u8],
    server: &str,
) -> Result<String, FleetError> {
    let bad = |why: AccountRecordError| FleetError::AccountRecord { key: key.into(), why };
    let rec: AccountRecord = serde_json::from_slice(value)
        .map_err(|e| bad(AccountRecordError::Unreadable(e.classify(), e.line(), e.column())))?;
    if rec.schema != 1 || rec.server != server {
        return Err(bad(AccountRecordError::Mismatch));
    }
    let plain = fleet
        .store
        .fleet_key()
        .open(key, 1, &rec.key)
        .map_err(|e| bad(AccountRecordError::Seal(e)))?;
    let jwk: serde_json::Value =
        serde_json::from_slice(&plain).map_err(|_| bad(AccountRecordError::NotJwk))?;
    let carried = accounts::Carried {
        server: rec.server,
        id: rec.id.clone(),
        uri: rec.uri,
        key: jwk,
        terms_of_service: rec.terms_of_service,
        hosts: vec![],
    };
    let k = accounts::check_carried(&carried).map_err(|e| bad(AccountRecordError::Key(e)))?;
    if accounts::install(&ctx.cfg.letsencrypt_dir, &carried, &k).map_err(device)? {
        ctx.progress(&format!("installed the fleet's ACME account {} of {server}", rec.id));
    }
    remember_account(ctx, server, &rec.id);
    Ok(rec.id)
}

fn remember_account(ctx: &Ctx, server: &str, id: &str) {
    let mut s = load_state(ctx);
    if s.accounts.get(server).map(String::as_str) != Some(id) {
        s.accounts.insert(server.to_string(), id.to_string());
        save_state(ctx, &s);
    }
}

// ---------------------------------------------------------------- issuance

/// What [`order_exclusive`] came to.
#[derive(Debug)]
pub(crate) enum Exclusive {
    /// Ordered here, published, written: the new notAfter.
    Issued(DateTime<Utc>),
    /// A peer had renewed it: its certificate was taken (notAfter, device).
    PeerRenewed(DateTime<Utc>, String),
}

/// Take `host`'s lineage lock, waiting up to [`LOCK_WAIT`] for a peer's.
fn wait_lock(fleet: &Fleet, host: &Host) -> Result<LineageLock, FleetError> {
    let until = Instant::now() + LOCK_WAIT;
    let mut said = false;
    loop {
        match fleet
            .store
            .lock(host)
            .map_err(|source| FleetError::LockUnknown { host: host.to_string(), source })?
        {
            Acquired::Held(l) => return Ok(l),
            Acquired::Busy(holder) => {
                let who = holder
                    .map(|h| format!("{} (pid {})", shown(&h.device), h.pid))
                    .unwrap_or_else(|| "another device".into());
                if Instant::now() >= until {
                    return Err(FleetError::LockBusy { who, host: host.to_string() });
                }
                if !said {
                    tracing::info!("{host}: {who} holds the fleet lock; waiting for it");
                    said = true;
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    }
}

/// What a lost lineage lock is called.
fn lost_text(e: &LockError) -> String {
    match e {
        LockError::Lost { .. } => e.to_string(),
        LockError::Etcd(e) => format!("fleet lock lost: etcd could not confirm it ({e})"),
    }
}

fn parse_host(host: &str) -> Result<Host, FleetError> {
    Host::parse(host).map_err(|why| FleetError::Host { host: host.into(), why })
}

/// Order a certificate for `host` once for the whole fleet: under the
/// lineage lock, after re-reading the record (a peer's newer certificate
/// than `local` — this device's certificate — is taken instead);
/// `issue` orders (its gate checks the lock before finalize). The record is
/// published fenced by the lock *before* the local tree is written, so a
/// holder that lost its lock changes nothing here.
pub(crate) fn order_exclusive(
    ctx: &Ctx,
    fleet: &Fleet,
    host: &str,
    local: Option<Cert>,
    sites: &[Site],
    issue: impl FnOnce(Gate) -> Result<(Issued, RenewalParams), DeviceError>,
) -> Result<Exclusive, FleetError> {
    let h = parse_host(host)?;
    let lock = Arc::new(wait_lock(fleet, &h)?);
    let (rec, seen) = match fleet.store.lineage(&h)? {
        Some((r, m)) => (Some(r), m),
        None => (None, 0),
    };
    if let Some(r) = &rec {
        if let Some(done) = take_if_peer_renewed(ctx, fleet, host, r, local.as_ref(), sites)? {
            return Ok(done);
        }
    }
    lock.check().map_err(FleetError::Lost)?;
    let l2 = lock.clone();
    let gate = Gate::new(move || l2.check().map_err(|e| lost_text(&e)));
    let (issued, params) = issue(gate).map_err(FleetError::Order)?;
    crate::fault::point("fleet.issued");
    lock.check().map_err(FleetError::Lost)?;
    let new = publish_issued(fleet, (host, &h), &lock, (rec.as_ref(), seen), &issued, &params)?;
    crate::fault::point("fleet.published");
    let v = NewVersion::from_key_and_fullchain(&issued.key_pem, &issued.fullchain_pem)?;
    ctx.store.add_version(host, &v, &params)?;
    mark_fleet_managed(ctx, host);
    drop(lock);
    Ok(Exclusive::Issued(new.not_after))
}

/// The fleet's record `r` of `host`, re-read under the lock: a peer's
/// certificate newer than `local` and not expired is taken instead of an
/// order.
fn take_if_peer_renewed(
    ctx: &Ctx,
    fleet: &Fleet,
    host: &str,
    r: &LineageRecord,
    local: Option<&Cert>,
    sites: &[Site],
) -> Result<Option<Exclusive>, FleetError> {
    // Newer means issued later (a shorter-lived renewal is still newer).
    let issued = crate::certs::parse_first_cert(r.fullchain.as_bytes()).map(|c| c.not_before).ok();
    let newer = match (local, issued) {
        (_, None) => false,
        (None, Some(_)) => true,
        (Some(l), Some(i)) => crate::fleet::plan::newer(
            &Cert { serial: r.serial.clone(), issued: i, not_after: r.not_after, usable: true },
            l,
        ),
    };
    let now = Utc::now();
    if !(newer && r.not_after > now) {
        return Ok(None);
    }
    let open = r.open(fleet.store.fleet_key(), fleet.store.prefix())?;
    take(ctx, &open, sites)?;
    ctx.progress(&format!(
        "{host}: {} renewed it already; took the fleet's certificate",
        r.renewed_by
    ));
    Ok(Some(Exclusive::PeerRenewed(r.not_after, r.renewed_by.clone())))
}

/// Publish the certificate just issued as the next version of the fleet's
/// record (`prev`: the record read under the lock and its mod revision),
/// fenced by the lock (`host` as the caller spelled it, `h` parsed).
fn publish_issued(
    fleet: &Fleet,
    (host, h): (&str, &Host),
    lock: &LineageLock,
    (prev, seen): (Option<&LineageRecord>, i64),
    issued: &Issued,
    params: &RenewalParams,
) -> Result<LineageRecord, FleetError> {
    let meta = Meta {
        server: params.server.clone(),
        account: params.account.clone(),
        profile: params.profile.as_ref().map(|p| p.name.clone()),
        ari: AriRecord::default(),
        device: fleet.cfg.device_id.clone(),
        now: Utc::now(),
    };
    let version = prev.map(|r| r.version + 1).unwrap_or(1);
    let new = LineageRecord::seal(
        fleet.store.fleet_key(),
        fleet.store.prefix(),
        h,
        version,
        &issued.key_pem,
        &issued.fullchain_pem,
        meta,
    )?;
    match fleet.store.publish(lock, &new, seen) {
        Ok(true) => Ok(new),
        // A retried txn whose first attempt was applied fails its compare:
        // the record holding this very certificate is success.
        Ok(false)
            if fleet
                .store
                .lineage(h)
                .ok()
                .flatten()
                .is_some_and(|(r, _)| r.serial == new.serial) =>
        {
            Ok(new)
        }
        Ok(false) => Err(FleetError::RecordChanged(host.into())),
        Err(e) => Err(FleetError::Lost(e)),
    }
}

// ---------------------------------------------------------------- status

/// `fleet status`: the devices, the lineages, the locks.
#[derive(Debug, Serialize)]
pub(crate) struct StatusReport {
    /// This device.
    pub device: String,
    /// Every device's last heartbeat.
    pub devices: Vec<crate::fleet::store::Heartbeat>,
    /// Every lineage.
    pub lineages: Vec<StatusLineage>,
    /// Records that could not be read.
    pub errors: Vec<KeyError>,
}

/// One lineage in [`StatusReport`].
#[derive(Debug, Serialize)]
pub(crate) struct StatusLineage {
    /// The host.
    pub host: String,
    /// The fleet's version.
    pub version: u64,
    /// The serial.
    pub serial: String,
    /// notAfter.
    pub not_after: DateTime<Utc>,
    /// Who renewed it.
    pub renewed_by: String,
    /// When.
    pub renewed_at: DateTime<Utc>,
    /// Who holds its lock now.
    pub lock: Option<crate::fleet::lock::Holder>,
}

/// Read the fleet's state.
pub(crate) fn status(fleet: &Fleet) -> Result<StatusReport, EtcdError> {
    let snap = fleet.store.lineages()?;
    let locks = fleet.etcd.get_prefix(&format!("{}locks/", fleet.cfg.prefix))?;
    let holder = |host: &str| {
        let k = format!("{}locks/{host}", fleet.cfg.prefix);
        locks
            .kvs
            .iter()
            .find(|kv| kv.key_str() == k)
            .and_then(|kv| serde_json::from_slice::<crate::fleet::lock::Holder>(&kv.value).ok())
    };
    let mut lineages = Vec::new();
    let mut errors = Vec::new();
    for (key, _, rec) in snap.lineages {
        match rec {
            Ok(r) => lineages.push(StatusLineage {
                lock: holder(r.host.as_str()),
                host: r.host.to_string(),
                version: r.version,
                serial: r.serial,
                not_after: r.not_after,
                renewed_by: r.renewed_by,
                renewed_at: r.renewed_at,
            }),
            Err(e) => errors.push(KeyError { key, error: e.to_string() }),
        }
    }
    Ok(StatusReport {
        device: fleet.cfg.device_id.clone(),
        devices: fleet.store.devices()?,
        lineages,
        errors,
    })
}

/// This device's live certificate of `host`, as [`order_exclusive`] compares it.
pub(crate) fn local_cert(ctx: &Ctx, host: &str) -> Option<Cert> {
    ctx.store.leaf(host, Place::Live).map(|c| Cert {
        serial: c.serial,
        issued: c.not_before,
        not_after: c.not_after,
        usable: true,
    })
}
