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
use super::{facts, owed, provision};
use crate::apache;
use crate::cli::RevocationReason;
use crate::error::{Error, Result};
use crate::hooks;
use crate::renewal::{owed_step, OwedStep};
use crate::revocations::{self, Owed};
use crate::site::{Site, SiteId, Tls};
use crate::store::{NewVersion, Place};
use serde::Serialize;

/// What `revoke` was asked, checked.
struct Request<'a> {
    siteid: &'a SiteId,
    host: String,
    reason: RevocationReason,
    no_replace: bool,
    /// `--serial`, normalized.
    wanted: Option<String>,
}

impl Request<'_> {
    fn not_revocable(&self, why: &str) -> Error {
        Error::invalid(format!("site {}: {why}, so there is no certificate to revoke", self.siteid))
    }
}

pub(super) fn revoke_command(
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
    let mut req = Request { siteid, host: String::new(), reason, no_replace, wanted };
    let site = facts::load_stored(&ctx.cfg, siteid)?
        .ok_or_else(|| req.not_revocable("it is not deployed"))?;
    req.host = site.hostname.to_string();
    let host = req.host.clone();
    let locked = ctx.lock(&format!("revoke {siteid}"))?;
    let state_dir = ctx.cfg.state_dir();
    let mut owed = revocations::load(&state_dir)?;
    let live = if matches!(site.tls, Tls::LetsEncrypt { .. }) {
        ctx.store.leaf(&host, Place::Live)
    } else {
        None
    };
    let live_serial = live.as_ref().map(|c| c.serial.clone());

    // What to revoke: fixed now, and recorded before any network step.
    let mut targets = targets(ctx, &req, &site, &owed, live_serial.as_deref())?;
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
        owed::retire(ctx, &locked.recovered, &site, &host)?;
        tracing::warn!(
            "site {siteid} ({host}) is served on plain http now; `site-admin renew` (or a redeploy) provisions a new certificate with a new key for it"
        );
    } else if steps.contains(&OwedStep::WaitForReplacement) {
        replaced_by = replace(ctx, &site, live_serial.clone().unwrap_or_default())?;
    }
    if req.wanted.is_none() && !targets.iter().any(|t| Some(&t.serial) == live_serial.as_ref()) {
        if let Some(s) = &live_serial {
            ctx.progress(&format!("{host}: the live certificate (serial {s}) is a clean replacement and is not revoked; run revoke again to revoke it too"));
        }
    }
    let results = send(ctx, &host, &mut owed, &targets)?;
    finish(ctx, siteid, &host, results, replaced_by, owed.of_host(&host))
}

/// The certificates to revoke: the one `--serial` names (owed already, or
/// found live, archived or stashed); else what is owed for the host first;
/// else its live certificate; else its stashed one.
fn targets(
    ctx: &Ctx,
    req: &Request,
    site: &Site,
    owed: &revocations::State,
    live_serial: Option<&str>,
) -> Result<Vec<Owed>> {
    let host = req.host.as_str();
    if let Some(want) = &req.wanted {
        if let Some(o) = owed.owed.get(want).filter(|o| o.host == host) {
            return Ok(vec![o.clone()]);
        }
        let pem = if live_serial == Some(want.as_str()) {
            read_pem(&ctx.store.cert_file(host, Place::Live))
        } else {
            find_version(ctx, host, want)
        }
        .ok_or_else(|| {
            Error::invalid(format!("site {}: no certificate of {host} has serial {want} (looked in live/, archive/ and the stash)", req.siteid))
        })?;
        return Ok(vec![new_owed(ctx, host, &pem, req.reason, req.no_replace)?]);
    }
    let pending = owed.of_host(host);
    if !pending.is_empty() {
        ctx.progress(&format!(
            "{host}: revoking what is owed first (serial {})",
            pending.iter().map(|o| o.serial.as_str()).collect::<Vec<_>>().join(", ")
        ));
        Ok(pending)
    } else if live_serial.is_some() {
        let pem = read_pem(&ctx.store.cert_file(host, Place::Live))
            .ok_or_else(|| Error::failed(format!("{host}: the live certificate cannot be read")))?;
        Ok(vec![new_owed(ctx, host, &pem, req.reason, req.no_replace)?])
    } else if let Some(pem) = read_pem(&ctx.store.cert_file(host, Place::Stashed)) {
        // A stashed certificate (the site serves http or its own
        // certificate now) can be revoked too; it then leaves the stash.
        Ok(vec![new_owed(ctx, host, &pem, req.reason, true)?])
    } else if !matches!(site.tls, Tls::LetsEncrypt { .. }) {
        Err(req.not_revocable("it does not use Let's Encrypt and has no stashed certificate"))
    } else {
        Err(req.not_revocable("it has no live Let's Encrypt certificate (it is pending)"))
    }
}

/// Provision a replacement with a new key (in fleet mode, the fleet's) and
/// serve it, before the live certificate with serial `old` is revoked; the
/// serial of the replacement.
fn replace(ctx: &Ctx, site: &Site, old: String) -> Result<Option<String>> {
    let host = site.hostname.to_string();
    let owed_msg = format!("serial {old} stays owed a revocation: `site-admin renew` replaces and then revokes it, or run revoke again");
    ctx.progress(&format!(
        "{host}: provisioning a replacement with a new key before revoking serial {old}"
    ));
    let no_replacement =
        |e: Error| Error::failed(format!("{host}: no replacement ({e}); {owed_msg}"));
    let session = provision::Session::open(ctx, &ctx.cfg.acme_server).map_err(no_replacement)?;
    if let Some(f) = ctx.fleet()? {
        // Fleet mode: the replacement is the fleet's, ordered under the
        // lineage lock and published before it is written here.
        let all = facts::all_stored(&ctx.cfg)?;
        let local = super::fleet::local_cert(ctx, &host);
        super::fleet::order_exclusive(ctx, &f, &host, local, &all, |gate| {
            let (issued, account) =
                provision::issue_in(ctx, &session, site, Some(gate)).map_err(|e| e.to_string())?;
            Ok((issued, provision::renewal_params(ctx, site, Some(account))))
        })
        .map_err(|e| no_replacement(Error::failed(e)))?;
    } else {
        let (issued, account) =
            provision::issue_in(ctx, &session, site, None).map_err(no_replacement)?;
        let params = provision::renewal_params(ctx, site, Some(account));
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
    Ok(ctx.store.leaf(&host, Place::Live).map(|c| c.serial))
}

/// Send each target's revocation and record its outcome.
fn send(
    ctx: &Ctx,
    host: &str,
    owed: &mut revocations::State,
    targets: &[Owed],
) -> Result<Vec<(Owed, owed::Sent)>> {
    let mut results = Vec::new();
    for t in targets {
        ctx.progress(&format!(
            "{host}: revoking the certificate with serial {} ({})",
            t.serial, t.reason
        ));
        let r = owed::send_owed(ctx, t);
        owed::settle(ctx, owed, t, &r)?;
        results.push((t.clone(), r));
    }
    Ok(results)
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

/// The report `revoke` gives its hooks on stdin and prints with `--json`.
#[derive(Debug, Serialize)]
struct Report {
    event: &'static str,
    siteid: String,
    host: String,
    /// The first certificate revoked (or tried).
    revoked_serial: Option<String>,
    reason: Option<String>,
    /// Every revocation tried was confirmed.
    revoked: bool,
    /// The first error.
    error: Option<String>,
    /// The serial of the replacement served first.
    replaced_by: Option<String>,
    revocations: Vec<Revocation>,
    /// The serials of the host still owed a revocation.
    owed: Vec<String>,
    /// The hooks' runs: printed, not given to the hooks.
    #[serde(skip_serializing_if = "Option::is_none")]
    hooks: Option<Vec<hooks::HookRun>>,
}

/// One revocation tried, in the [`Report`].
#[derive(Debug, Serialize)]
struct Revocation {
    serial: String,
    reason: String,
    revoked: bool,
    error: Option<String>,
}

/// Tell the hooks, print the report, choose the exit code.
fn finish(
    ctx: &Ctx,
    siteid: &SiteId,
    host: &str,
    results: Vec<(Owed, owed::Sent)>,
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
    let mut report = Report {
        event: "revoke",
        siteid: siteid.as_str().to_string(),
        host: host.clone(),
        revoked_serial: first.map(|(t, _)| t.serial.clone()),
        reason: first.map(|(t, _)| t.reason.clone()),
        revoked: all_ok,
        error: first_err.as_ref().map(|(_, e)| e.clone()),
        replaced_by: replaced_by.clone(),
        revocations: results
            .iter()
            .map(|(t, r)| Revocation {
                serial: t.serial.clone(),
                reason: t.reason.clone(),
                revoked: r.is_ok(),
                error: r.as_ref().err().map(ToString::to_string),
            })
            .collect(),
        owed: still_owed.iter().map(|o| o.serial.clone()).collect(),
        hooks: None,
    };
    let nonempty = |yes: bool| if yes { host.clone() } else { String::new() };
    let env = [
        ("SITE_ADMIN_EVENT", "revoke".to_string()),
        ("REVOKED_DOMAINS", nonempty(!revoked_serials.is_empty())),
        ("REVOKED_SERIALS", revoked_serials.join(" ")),
        ("RENEWED_DOMAINS", nonempty(replaced_by.is_some())),
        ("FAILED_DOMAINS", nonempty(!all_ok)),
        ("REVOCATION_OWED_DOMAINS", nonempty(!still_owed.is_empty())),
    ];
    report.hooks = Some(run_hooks(ctx, &env, &report));
    if ctx.json {
        ctx.print_json(&report)?;
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

/// Run the hooks with `env` and the report (without runs) on stdin.
fn run_hooks(ctx: &Ctx, env: &[(&'static str, String)], report: &Report) -> Vec<hooks::HookRun> {
    let stdin = serde_json::to_vec(report).unwrap_or_default();
    let mut runs = Vec::new();
    for h in hooks::executables(&ctx.cfg.hooks_dir) {
        let mut env = env.to_vec();
        env.extend(ctx.hook_env());
        let r = hooks::run_hook(&h, &env, &stdin, hooks::HOOK_TIME_LIMIT);
        if !r.ok {
            tracing::warn!("hook {}: {}", r.hook, r.error.as_deref().unwrap_or(""));
        }
        runs.push(r);
    }
    runs
}
