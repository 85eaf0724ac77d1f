//! Revocations owed (docs/design.md, "Revocation"), as `revoke` and `renew`
//! settle them: a served certificate owed a revocation without replacement
//! is taken out of service, an owed revocation is sent with the account of
//! its lineage, and the outcome is recorded in [`crate::revocations`]. The
//! step each one is at is the pure rule [`crate::renewal::owed_step`].

use super::ctx::Ctx;
use super::provision;
use super::ts;
use crate::apache::{self, Recovered, VhostTls};
use crate::cli::RevocationReason;
use crate::error::{Error, Result};
use crate::renewal;
use crate::revocations::{self, Owed};
use crate::site::Site;
use crate::store::Place;
use chrono::{DateTime, Utc};
use serde::Serialize;

/// One owed revocation (docs/design.md, "Revocation"), as this pass left it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct RevocationEntry {
    pub host: String,
    pub serial: String,
    pub reason: String,
    #[serde(serialize_with = "super::ser_ts")]
    pub since: DateTime<Utc>,
    /// `revoked`, `failed`, `waiting_for_replacement` (still served, its
    /// replacement comes first), or `owed` (a dry run).
    pub status: &'static str,
    pub attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Why one owed revocation could not be sent (it stays owed).
#[derive(Debug, thiserror::Error)]
pub(super) enum SendError {
    /// The certificate recorded in the owed list does not parse.
    #[error("the recorded certificate cannot be read: {0}")]
    Unreadable(crate::certs::PemError),
    /// No client for the lineage's server (account, directory).
    #[error("{0}")]
    Setup(Error),
    /// The CA refused, or could not be reached.
    #[error("{0}")]
    Acme(#[from] crate::acme::AcmeError),
}

/// What one revocation came to.
pub(super) type Sent = std::result::Result<(), SendError>;

/// Record the outcome of one attempt: a confirmed revocation leaves the
/// owed list (and the stash, if it was the stashed certificate).
pub(super) fn settle(ctx: &Ctx, owed: &mut revocations::State, t: &Owed, r: &Sent) -> Result<()> {
    match r {
        Ok(()) => {
            owed.owed.remove(&t.serial);
            if ctx.store.leaf(&t.host, Place::Stashed).map(|c| c.serial) == Some(t.serial.clone()) {
                ctx.store.delete_stash(&t.host)?;
                ctx.progress(&format!("{}: the revoked certificate left the stash", t.host));
            }
        }
        Err(e) => owed.failed(&t.serial, &e.to_string()),
    }
    Ok(revocations::save(&ctx.cfg.state_dir(), owed)?)
}

/// Take the site's live certificate out of service: its vhost goes to plain
/// http (Apache reloaded), then its live lineage is retired (the archive
/// stays). The site is pending: renew provisions a new key and certificate.
pub(super) fn retire(ctx: &Ctx, rec: &Recovered, site: &Site, host: &str) -> Result<()> {
    let mut txn = apache::Transaction::begin(&ctx.cfg, rec)?;
    let conf_text = apache::render(&ctx.cfg, &site.siteid, host, &VhostTls::None);
    txn.write(&ctx.cfg.vhost_file(&site.siteid), conf_text.as_bytes(), 0o644)?;
    txn.commit(false, &|m| ctx.progress(&format!("site {}: {m}", site.siteid)), &|_| {
        Ok::<(), Error>(())
    })?;
    crate::fault::point("revoke.http_before_retire");
    Ok(ctx.store.retire_live(host)?)
}

/// Send one owed revocation with the account its lineage renewed with when
/// this device has it (else the server's account). `alreadyRevoked` counts
/// as done.
pub(super) fn send_owed(ctx: &Ctx, o: &Owed) -> Sent {
    let der =
        crate::certs::parse_first_cert(o.cert_pem.as_bytes()).map_err(SendError::Unreadable)?.der;
    // A recorded name this version does not know is sent as unspecified (0).
    let code = RevocationReason::from_name(&o.reason).map_or(0, RevocationReason::code);
    let client = match o
        .account
        .as_deref()
        .map(|id| crate::store::accounts::load_id(&ctx.cfg.letsencrypt_dir, &o.server, id))
    {
        Some(Ok(Some(a))) => crate::acme::AcmeClient::connect(
            provision::options(ctx, &o.server),
            a.key,
            Some(a.uri),
        )?,
        _ => provision::client_for(ctx, &o.server).map_err(SendError::Setup)?.0,
    };
    match client.revoke(&der, code) {
        Ok(()) => Ok(()),
        Err(crate::acme::AcmeError::Problem { problem, .. })
            if problem.ptype.ends_with(":alreadyRevoked") =>
        {
            ctx.progress(&format!(
                "{}: the CA says serial {} is revoked already",
                o.host, o.serial
            ));
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

pub(super) fn revocation_entry(
    o: &revocations::Owed,
    status: &'static str,
    error: Option<String>,
) -> RevocationEntry {
    RevocationEntry {
        host: o.host.clone(),
        serial: o.serial.clone(),
        reason: o.reason.clone(),
        since: o.since,
        status,
        attempts: o.attempts,
        error,
    }
}

/// The hosts of the revocations still owed.
pub(super) fn hosts_of(v: &[RevocationEntry]) -> Vec<String> {
    let mut h: Vec<String> =
        v.iter().filter(|r| r.status != "revoked").map(|r| r.host.clone()).collect();
    h.sort();
    h.dedup();
    h
}

/// Rule 9: take out of service each served certificate owed a revocation without replacement.
pub(super) fn retire_owed(ctx: &Ctx, rec: &Recovered, sites: &[Site], owed: &revocations::State) {
    for o in owed.owed.values() {
        let live = ctx.store.leaf(&o.host, Place::Live).map(|c| c.serial);
        if renewal::owed_step(&o.serial, live.as_deref(), o.no_replace)
            != renewal::OwedStep::RetireThenRevoke
        {
            continue;
        }
        ctx.progress(&format!(
            "{}: serial {} is owed a revocation without replacement: taking it out of service",
            o.host, o.serial
        ));
        let done = match sites.iter().find(|s| s.hostname.as_str() == o.host) {
            Some(s) => retire(ctx, rec, s, &o.host),
            None => ctx.store.retire_live(&o.host).map_err(Error::from),
        };
        if let Err(e) = done {
            tracing::error!("{}: taking serial {} out of service failed: {e}", o.host, o.serial);
        }
    }
}

/// Rule 9: send each owed revocation whose certificate is no longer served
/// (a replacement renewed but not served yet waits too); record the outcome.
pub(super) fn send_due(
    ctx: &Ctx,
    owed: &mut revocations::State,
    not_served: &[String],
) -> Vec<RevocationEntry> {
    let mut out = Vec::new();
    for o in owed.owed.values().cloned().collect::<Vec<_>>() {
        let live = ctx.store.leaf(&o.host, Place::Live).map(|c| c.serial);
        let step = renewal::owed_step(&o.serial, live.as_deref(), o.no_replace);
        if step != renewal::OwedStep::Revoke || not_served.contains(&o.host) {
            out.push(revocation_entry(&o, "waiting_for_replacement", None));
            continue;
        }
        ctx.progress(&format!(
            "{}: revoking the certificate with serial {} ({}), owed since {}",
            o.host,
            o.serial,
            o.reason,
            ts(o.since)
        ));
        let r = send_owed(ctx, &o);
        if let Err(e) = settle(ctx, owed, &o, &r) {
            tracing::error!("recording the owed revocations: {e}");
        }
        let after = owed.owed.get(&o.serial).cloned().unwrap_or(o);
        out.push(match r {
            Ok(()) => revocation_entry(&after, "revoked", None),
            Err(e) => revocation_entry(&after, "failed", Some(e.to_string())),
        });
    }
    out
}
