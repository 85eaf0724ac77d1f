//! `site-admin revoke --siteid ID [--reason R] [--no-replace]`: revoke a
//! site's live Let's Encrypt certificate (docs/design.md, "Revocation").
//! A replacement with a new key is provisioned and served first (unless
//! `--no-replace`), then the old certificate is revoked with the account key
//! its lineage renews with; the hooks are told (`SITE_ADMIN_EVENT=revoke`).

use super::ctx::Ctx;
use super::{facts, provision};
use crate::apache::{self, VhostTls};
use crate::error::{Error, Result};
use crate::hooks;
use crate::site::{SiteId, TlsKind};
use crate::store::{NewVersion, Place};
use serde_json::json;

/// The RFC 5280 reasons `--reason` takes, with their CRLReason codes.
pub const REASONS: [(&str, u8); 4] = [("unspecified", 0), ("keyCompromise", 1), ("superseded", 4), ("cessationOfOperation", 5)];

/// The code of a reason name.
pub fn reason_code(name: &str) -> Option<u8> {
    REASONS.iter().find(|(n, _)| *n == name).map(|(_, c)| *c)
}

pub fn revoke_command(ctx: &Ctx, siteid: &SiteId, reason: &str, no_replace: bool) -> Result<i32> {
    let code = reason_code(reason).ok_or_else(|| {
        Error::invalid(format!("--reason {reason:?}: not a revocation reason (one of {})", REASONS.iter().map(|r| r.0).collect::<Vec<_>>().join(", ")))
    })?;
    let not_revocable = |why: &str| Error::invalid(format!("site {siteid}: {why}, so there is no certificate to revoke"));
    let site = facts::load_stored(&ctx.cfg, siteid)?.ok_or_else(|| not_revocable("it is not deployed"))?;
    let host = site.hostname.clone();
    // A stashed certificate (the site serves http or its own certificate
    // now) can be revoked too; it then leaves the stash.
    if !(site.kind() == TlsKind::Letsencrypt && ctx.store.has(&host, Place::Live)) && ctx.store.has(&host, Place::Stashed) {
        return revoke_stashed(ctx, &site, reason, code);
    }
    if site.kind() != TlsKind::Letsencrypt {
        return Err(not_revocable("it does not use Let's Encrypt and has no stashed certificate"));
    }
    if !ctx.store.has(&host, Place::Live) {
        return Err(not_revocable("it has no live Let's Encrypt certificate (it is pending)"));
    }
    let locked = ctx.lock(&format!("revoke {siteid}"))?;
    let old = ctx.store.leaf(&host, Place::Live).ok_or_else(|| Error::failed(format!("{host}: the live certificate cannot be read")))?;
    let client = lineage_client(ctx, &host, Place::Live)?;

    let mut replaced_by = None;
    if no_replace {
        // The revoked certificate must not be served any more: back to http.
        let mut txn = apache::Transaction::begin(&ctx.cfg, &locked.recovered)?;
        let conf_text = apache::render(&ctx.cfg, &site.siteid, &host, &VhostTls::None);
        txn.write(&ctx.cfg.vhost_file(&site.siteid), conf_text.as_bytes(), 0o644)?;
        txn.commit(false, &|m| ctx.progress(&format!("site {siteid}: {m}")), &|_| Ok(()))?;
    } else {
        ctx.progress(&format!("{host}: provisioning a replacement with a new key before revoking serial {}", old.serial));
        let session = provision::Session::open(ctx, &ctx.cfg.acme_server)?;
        let (issued, account) = provision::issue_in(ctx, &session, &site)?;
        let params = provision::renewal_params(ctx, &site, Some(account));
        ctx.store.add_version(&host, &NewVersion::from_key_and_fullchain(&issued.key_pem, &issued.fullchain_pem)?, &params)?;
        let proof = super::lifecycle::proof_for(ctx, &site.siteid, &host, &crate::decide::Serve::Lkc { host: host.to_string() });
        apache::reload_proven(&ctx.cfg, proof.as_slice()).map_err(|said| {
            Error::failed(format!("{host}: the replacement is on disk but Apache could not be reloaded ({said}); the old certificate is not revoked yet"))
        })?;
        replaced_by = ctx.store.leaf(&host, Place::Live).map(|c| c.serial);
    }
    ctx.progress(&format!("{host}: revoking the certificate with serial {} ({reason})", old.serial));
    let revoked = client.revoke(&old.der, code);
    if no_replace {
        if revoked.is_ok() {
            ctx.store.delete_live(&host)?;
        }
        tracing::warn!("site {siteid} ({host}) is served on plain http now; `site-admin renew` (or a redeploy) provisions a new certificate for it");
    }
    finish(ctx, siteid, &host, &old.serial, reason, revoked.map_err(|e| e.to_string()), replaced_by)
}

/// A client for the lineage's own server, signing with the account that got
/// its certificate when this device has it (else the server's account).
fn lineage_client(ctx: &Ctx, host: &str, place: Place) -> Result<crate::acme::AcmeClient> {
    let conf = ctx.store.lineage_conf(host, place).unwrap_or_default();
    let server = conf.server.clone().unwrap_or_else(|| ctx.cfg.acme_server.clone());
    match conf.account.as_deref().map(|id| crate::store::accounts::load_id(&ctx.cfg.letsencrypt_dir, &server, id)) {
        Some(Ok(Some(a))) => Ok(crate::acme::AcmeClient::connect(provision::options(ctx, &server), a.key, Some(a.uri))?),
        _ => Ok(provision::client_for(ctx, &server)?.0),
    }
}

/// Revoke the stashed certificate of the site's host, then delete it from the stash.
fn revoke_stashed(ctx: &Ctx, site: &crate::site::Site, reason: &str, code: u8) -> Result<i32> {
    let host = site.hostname.clone();
    let _locked = ctx.lock(&format!("revoke {}", site.siteid))?;
    let old = ctx.store.leaf(&host, Place::Stashed).ok_or_else(|| Error::failed(format!("{host}: the stashed certificate cannot be read")))?;
    let client = lineage_client(ctx, &host, Place::Stashed)?;
    ctx.progress(&format!("{host}: revoking the stashed certificate with serial {} ({reason})", old.serial));
    let revoked = client.revoke(&old.der, code).map_err(|e| e.to_string());
    if revoked.is_ok() {
        ctx.store.delete_stash(&host)?;
        ctx.progress(&format!("{host}: the revoked certificate left the stash"));
    }
    finish(ctx, &site.siteid, &host, &old.serial, reason, revoked, None)
}

/// Tell the hooks, print the report, choose the exit code.
fn finish(
    ctx: &Ctx,
    siteid: &SiteId,
    host: &str,
    serial: &str,
    reason: &str,
    revoked: std::result::Result<(), String>,
    replaced_by: Option<String>,
) -> Result<i32> {
    let host = host.to_string();
    let old_serial = serial.to_string();
    let report = json!({
        "event": "revoke",
        "siteid": siteid.as_str(),
        "host": host,
        "revoked_serial": old_serial,
        "reason": reason,
        "revoked": revoked.is_ok(),
        "error": revoked.as_ref().err(),
        "replaced_by": replaced_by,
    });
    let stdin = serde_json::to_vec(&report).unwrap_or_default();
    let mut runs = Vec::new();
    for h in hooks::executables(&ctx.cfg.hooks_dir) {
        let mut env = vec![
            ("SITE_ADMIN_EVENT", "revoke".to_string()),
            ("REVOKED_DOMAINS", if revoked.is_ok() { host.clone() } else { String::new() }),
            ("RENEWED_DOMAINS", if replaced_by.is_some() { host.clone() } else { String::new() }),
            ("FAILED_DOMAINS", if revoked.is_err() { host.clone() } else { String::new() }),
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
    match revoked {
        Ok(()) => {
            ctx.progress(&format!("{host}: serial {old_serial} revoked{}", replaced_by.map(|s| format!("; serving serial {s}")).unwrap_or_default()));
            Ok(0)
        }
        Err(e) => Err(Error::failed(format!("{host}: revoking serial {old_serial} failed: {e}"))),
    }
}
