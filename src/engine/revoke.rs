//! `site-admin revoke --siteid ID [--reason R] [--no-replace] [--serial HEX]`:
//! revoke a site's Let's Encrypt certificate (docs/design.md, "Revocation").
//! The certificate to revoke is fixed when the command starts and recorded
//! as owed ([`crate::revocations`]) before any network step. A replacement
//! with a new key is provisioned and served first (unless `--no-replace`:
//! then the certificate is taken out of service and never served again), then
//! the revocation is sent with the account its lineage renews with; it stays
//! owed until the CA confirms. A retry revokes what is owed first and never a
//! clean replacement; `--serial` names an older (archived or stashed)
//! version. The hooks are told (`SITE_ADMIN_EVENT=revoke`).

use super::ctx::Ctx;
use super::{facts, provision};
use crate::apache::{self, Recovered, VhostTls};
use crate::cli::RevocationReason;
use crate::error::{Error, Result};
use crate::hooks;
use crate::renewal::{owed_step, OwedStep};
use crate::revocations::{self, Owed};
use crate::site::{Site, SiteId, TlsKind};
use crate::store::{NewVersion, Place};
use serde_json::json;

/// Why one owed revocation could not be sent (it stays owed).
#[derive(Debug, thiserror::Error)]
pub enum SendError {
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
type Sent = std::result::Result<(), SendError>;

pub fn revoke_command(
    ctx: &Ctx,
    siteid: &SiteId,
    reason: RevocationReason,
    no_replace: bool,
    serial: Option<&str>,
) -> Result<i32> {
    if no_replace && ctx.cfg.fleet.is_some() {
        return Err(Error::invalid(format!(
            "site {siteid}: --no-replace is refused in fleet mode: it would take the certificate out of service on this device alone, while the other devices serve it and sync it back; revoke it with a replacement (without --no-replace), which the fleet takes"
        )));
    }
    let wanted = match serial {
        Some(s) => Some(revocations::normalize_serial(s).ok_or_else(|| {
            Error::invalid(format!(
                "--serial {s:?}: not a certificate serial number (hex digits, colons allowed)"
            ))
        })?),
        None => None,
    };
    let not_revocable = |why: &str| {
        Error::invalid(format!("site {siteid}: {why}, so there is no certificate to revoke"))
    };
    let site =
        facts::load_stored(&ctx.cfg, siteid)?.ok_or_else(|| not_revocable("it is not deployed"))?;
    let host = site.hostname.to_string();
    let locked = ctx.lock(&format!("revoke {siteid}"))?;
    let state_dir = ctx.cfg.state_dir();
    let mut owed = revocations::load(&state_dir)?;
    let live =
        if site.kind() == TlsKind::Letsencrypt { ctx.store.leaf(&host, Place::Live) } else { None };
    let live_serial = live.as_ref().map(|c| c.serial.clone());

    // What to revoke: fixed now, and recorded before any network step.
    let mut targets: Vec<Owed> = match &wanted {
        Some(want) => match owed.owed.get(want).filter(|o| o.host == host) {
            Some(o) => vec![o.clone()],
            None => {
                let place = if live_serial.as_deref() == Some(want.as_str()) {
                    Some(Place::Live)
                } else {
                    None
                };
                let pem = match place {
                    Some(p) => read_pem(&ctx.store.cert_file(&host, p)),
                    None => find_version(ctx, &host, want),
                }
                .ok_or_else(|| {
                    Error::invalid(format!("site {siteid}: no certificate of {host} has serial {want} (looked in live/, archive/ and the stash)"))
                })?;
                vec![new_owed(ctx, &host, &pem, reason, no_replace)?]
            }
        },
        None => {
            let pending = owed.of_host(&host);
            if !pending.is_empty() {
                ctx.progress(&format!(
                    "{host}: revoking what is owed first (serial {})",
                    pending.iter().map(|o| o.serial.as_str()).collect::<Vec<_>>().join(", ")
                ));
                pending
            } else if live.is_some() {
                let pem = read_pem(&ctx.store.cert_file(&host, Place::Live)).ok_or_else(|| {
                    Error::failed(format!("{host}: the live certificate cannot be read"))
                })?;
                vec![new_owed(ctx, &host, &pem, reason, no_replace)?]
            } else if let Some(pem) = read_pem(&ctx.store.cert_file(&host, Place::Stashed)) {
                // A stashed certificate (the site serves http or its own
                // certificate now) can be revoked too; it then leaves the stash.
                vec![new_owed(ctx, &host, &pem, reason, true)?]
            } else if site.kind() != TlsKind::Letsencrypt {
                return Err(not_revocable(
                    "it does not use Let's Encrypt and has no stashed certificate",
                ));
            } else {
                return Err(not_revocable(
                    "it has no live Let's Encrypt certificate (it is pending)",
                ));
            }
        }
    };
    for t in targets.iter_mut() {
        // `--no-replace` now: a served certificate owed is never served again.
        t.no_replace |= no_replace;
        owed.owed.insert(t.serial.clone(), t.clone());
    }
    revocations::save(&state_dir, &owed)?;

    // Out of service, or replaced, before the CA is asked.
    let steps: Vec<OwedStep> = targets
        .iter()
        .map(|t| owed_step(&t.serial, live_serial.as_deref(), t.no_replace))
        .collect();
    let mut replaced_by = None;
    if steps.contains(&OwedStep::RetireThenRevoke) {
        retire(ctx, &locked.recovered, &site, &host)?;
        tracing::warn!(
            "site {siteid} ({host}) is served on plain http now; `site-admin renew` (or a redeploy) provisions a new certificate with a new key for it"
        );
    } else if steps.contains(&OwedStep::WaitForReplacement) {
        let old = live_serial.clone().unwrap_or_default();
        let owed_msg = format!("serial {old} stays owed a revocation: `site-admin renew` replaces and then revokes it, or run revoke again");
        ctx.progress(&format!(
            "{host}: provisioning a replacement with a new key before revoking serial {old}"
        ));
        let no_replacement =
            |e: Error| Error::failed(format!("{host}: no replacement ({e}); {owed_msg}"));
        let session =
            provision::Session::open(ctx, &ctx.cfg.acme_server).map_err(no_replacement)?;
        if let Some(f) = ctx.fleet()? {
            // Fleet mode: the replacement is the fleet's, ordered under the
            // lineage lock and published before it is written here.
            let all = facts::all_stored(&ctx.cfg)?;
            let local = super::fleet::local_cert(ctx, &host);
            super::fleet::order_exclusive(ctx, &f, &host, local, &all, |gate| {
                let (issued, account) = provision::issue_in(ctx, &session, &site, Some(gate))
                    .map_err(|e| e.to_string())?;
                Ok((issued, provision::renewal_params(ctx, &site, Some(account))))
            })
            .map_err(|e| no_replacement(Error::failed(e)))?;
        } else {
            let (issued, account) =
                provision::issue_in(ctx, &session, &site, None).map_err(no_replacement)?;
            let params = provision::renewal_params(ctx, &site, Some(account));
            ctx.store.add_version(
                &host,
                &NewVersion::from_key_and_fullchain(&issued.key_pem, &issued.fullchain_pem)?,
                &params,
            )?;
        }
        let proof = super::serving::proof_for(
            ctx,
            &site.siteid,
            &host,
            &crate::decide::Serve::Lkc { host: host.to_string() },
        );
        apache::reload_proven(&ctx.cfg, proof.as_slice()).map_err(|said| {
            Error::failed(format!(
                "{host}: the replacement is on disk but Apache could not be reloaded ({said}); the old certificate is not revoked yet; {owed_msg}"
            ))
        })?;
        replaced_by = ctx.store.leaf(&host, Place::Live).map(|c| c.serial);
    }
    if wanted.is_none() && !targets.iter().any(|t| Some(&t.serial) == live_serial.as_ref()) {
        if let Some(s) = &live_serial {
            ctx.progress(&format!("{host}: the live certificate (serial {s}) is a clean replacement and is not revoked; run revoke again to revoke it too"));
        }
    }

    let mut results = Vec::new();
    for t in &targets {
        ctx.progress(&format!(
            "{host}: revoking the certificate with serial {} ({})",
            t.serial, t.reason
        ));
        let r = send_owed(ctx, t);
        settle(ctx, &mut owed, t, &r)?;
        results.push((t.clone(), r));
    }
    finish(ctx, siteid, &host, results, replaced_by, owed.of_host(&host))
}

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

/// A new owed record for the certificate `pem` of `host`, with the server
/// and account of its lineage (live, else stashed; else the configured server).
fn new_owed(
    ctx: &Ctx,
    host: &str,
    pem: &str,
    reason: RevocationReason,
    no_replace: bool,
) -> Result<Owed> {
    let info = crate::certs::parse_first_cert(pem.as_bytes()).map_err(|e| {
        Error::failed(format!("{host}: the certificate to revoke cannot be read: {e}"))
    })?;
    let conf = ctx
        .store
        .lineage_conf(host, Place::Live)
        .or_else(|| ctx.store.lineage_conf(host, Place::Stashed))
        .unwrap_or_default();
    Ok(Owed {
        host: host.to_string(),
        serial: info.serial,
        cert_pem: pem.to_string(),
        reason: reason.name().to_string(),
        server: conf.server.unwrap_or_else(|| ctx.cfg.acme_server.clone()),
        account: conf.account,
        no_replace,
        since: chrono::Utc::now(),
        attempts: 0,
        last_error: None,
    })
}

fn read_pem(p: &std::path::Path) -> Option<String> {
    std::fs::read_to_string(p).ok().filter(|t| crate::certs::parse_first_cert(t.as_bytes()).is_ok())
}

/// The certificate of `host` with `serial`: the stashed one, else a version in its archive.
fn find_version(ctx: &Ctx, host: &str, serial: &str) -> Option<String> {
    let is = |pem: &String| {
        crate::certs::parse_first_cert(pem.as_bytes()).map(|c| c.serial == serial).unwrap_or(false)
    };
    if let Some(p) = read_pem(&ctx.store.cert_file(host, Place::Stashed)).filter(is) {
        return Some(p);
    }
    let dir = ctx.store.archive_dir(host);
    ctx.store
        .archive_versions(host)
        .into_iter()
        .rev()
        .filter_map(|n| read_pem(&dir.join(format!("cert{n}.pem"))))
        .find(is)
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

/// Tell the hooks, print the report, choose the exit code.
fn finish(
    ctx: &Ctx,
    siteid: &SiteId,
    host: &str,
    results: Vec<(Owed, Sent)>,
    replaced_by: Option<String>,
    still_owed: Vec<Owed>,
) -> Result<i32> {
    let host = host.to_string();
    let first = results.first();
    let all_ok = results.iter().all(|(_, r)| r.is_ok());
    let first_err = results
        .iter()
        .find_map(|(t, r)| r.as_ref().err().map(|e| (t.serial.clone(), e.to_string())));
    let revoked_serials: Vec<String> =
        results.iter().filter(|(_, r)| r.is_ok()).map(|(t, _)| t.serial.clone()).collect();
    let report = json!({
        "event": "revoke",
        "siteid": siteid.as_str(),
        "host": host,
        "revoked_serial": first.map(|(t, _)| t.serial.clone()),
        "reason": first.map(|(t, _)| t.reason.clone()),
        "revoked": all_ok,
        "error": first_err.as_ref().map(|(_, e)| e.clone()),
        "replaced_by": replaced_by,
        "revocations": results.iter().map(|(t, r)| json!({"serial": t.serial, "reason": t.reason, "revoked": r.is_ok(), "error": r.as_ref().err().map(ToString::to_string)})).collect::<Vec<_>>(),
        "owed": still_owed.iter().map(|o| o.serial.clone()).collect::<Vec<_>>(),
    });
    let stdin = serde_json::to_vec(&report).unwrap_or_default();
    let mut runs = Vec::new();
    for h in hooks::executables(&ctx.cfg.hooks_dir) {
        let mut env = vec![
            ("SITE_ADMIN_EVENT", "revoke".to_string()),
            (
                "REVOKED_DOMAINS",
                if revoked_serials.is_empty() { String::new() } else { host.clone() },
            ),
            ("REVOKED_SERIALS", revoked_serials.join(" ")),
            ("RENEWED_DOMAINS", if replaced_by.is_some() { host.clone() } else { String::new() }),
            ("FAILED_DOMAINS", if all_ok { String::new() } else { host.clone() }),
            (
                "REVOCATION_OWED_DOMAINS",
                if still_owed.is_empty() { String::new() } else { host.clone() },
            ),
        ];
        env.extend(ctx.hook_env());
        let r = hooks::run_hook(&h, &env, &stdin, hooks::HOOK_TIME_LIMIT);
        if !r.ok {
            tracing::warn!("hook {}: {}", r.hook, r.error.as_deref().unwrap_or(""));
        }
        runs.push(r);
    }
    if ctx.json {
        let mut out = report.clone();
        out["hooks"] = json!(runs);
        ctx.print_json(&out)?;
    }
    match first_err {
        None => {
            ctx.progress(&format!(
                "{host}: serial {} revoked{}",
                revoked_serials.join(", "),
                replaced_by.map(|s| format!("; serving serial {s}")).unwrap_or_default()
            ));
            Ok(0)
        }
        Some((serial, e)) => {
            let msg = format!("{host}: revoking serial {serial} failed: {e}; the revocation stays owed: `site-admin renew` retries it, or run revoke again");
            if ctx.json {
                // One JSON document: the report above carries the error.
                tracing::error!("{msg}");
                Ok(1)
            } else {
                Err(Error::failed(msg))
            }
        }
    }
}
