//! The fleet commands (docs/design.md, "Several devices"): `site-admin
//! sync` and `site-admin fleet status`. The fleet machinery they share with
//! the other commands is [`super::fleet`], which is no command.

use super::ctx::Ctx;
use super::{facts, fleet, serving};
use crate::site::Site;
use chrono::{DateTime, Utc};

fn no_fleet(what: &str) -> crate::error::Error {
    crate::error::Error::invalid(format!("{what}: no fleet is configured (the `fleet` object of config.json; docs/design.md, \"Several devices\")"))
}

/// `site-admin sync`: exit 0, or 1 when the fleet cannot be used, a
/// record cannot be used, or the Apache step failed.
pub(super) fn sync_command(ctx: &Ctx) -> crate::error::Result<i32> {
    let Some(f) = ctx.fleet()? else { return Err(no_fleet("sync")) };
    let locked = ctx.lock("sync")?;
    let sites = facts::all_stored(&ctx.cfg)?;
    let mut rep = match fleet::sync(ctx, &f, &locked.recovered, &sites) {
        Ok(r) => r,
        Err(e) => {
            let st = fleet::load_state(ctx);
            tracing::error!("the fleet cannot be used: {e}; this device keeps serving what it has");
            fleet::SyncReport {
                event: "sync",
                device: f.cfg.device_id.clone(),
                error: Some(e.message),
                since: st.since,
                ..Default::default()
            }
        }
    };
    for e in &rep.errors {
        tracing::warn!("fleet: {}: {}", e.key, e.error);
    }
    if rep.error.is_none() {
        let owed = crate::revocations::load(&ctx.cfg.state_dir()).unwrap_or_default();
        // Only what this sync changed: the sites whose certificate it took
        // (a site on http for another reason is renew's and doctor's).
        let changed: Vec<Site> = sites
            .iter()
            .filter(|s| rep.taken.iter().any(|h| h == s.hostname.as_str()))
            .cloned()
            .collect();
        let (reloaded, err) = serving::serve_changed(
            ctx,
            Some(&locked.recovered),
            &changed,
            &rep.taken,
            &owed,
            Utc::now(),
        );
        rep.reloaded = reloaded;
        rep.apache_error = rep.apache_error.take().or(err);
    }
    if ctx.json {
        ctx.print_json(
            &serde_json::to_value(&rep).map_err(|e| crate::error::Error::failed(e.to_string()))?,
        )?;
    } else if !ctx.quiet {
        eprintln!(
            "sync: {} taken from the fleet, {} published, {} unusable record(s){}{}",
            rep.taken.len(),
            rep.pushed.len(),
            rep.errors.len(),
            if rep.reloaded { ", Apache reloaded" } else { "" },
            rep.error
                .as_ref()
                .map(|e| format!("; the fleet cannot be used: {e}"))
                .unwrap_or_default()
        );
    }
    Ok(if rep.error.is_none() && rep.errors.is_empty() && rep.apache_error.is_none() {
        0
    } else {
        1
    })
}

/// `site-admin fleet status`.
pub(super) fn status_command(ctx: &Ctx) -> crate::error::Result<i32> {
    let Some(f) = ctx.fleet()? else { return Err(no_fleet("fleet status")) };
    let rep = match fleet::status(&f) {
        Ok(r) => r,
        Err(e) => {
            // Read, not written: `fleet status` takes no lock.
            let st = fleet::load_state(ctx);
            return Err(crate::error::Error::failed(format!(
                "the fleet cannot be used: {e} (since {})",
                st.since
                    .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                    .unwrap_or_default()
            )));
        }
    };
    if ctx.json {
        ctx.print_json(
            &serde_json::to_value(&rep).map_err(|e| crate::error::Error::failed(e.to_string()))?,
        )?;
        return Ok(if rep.errors.is_empty() { 0 } else { 1 });
    }
    let t = |d: DateTime<Utc>| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    println!("fleet (this device: {})", rep.device);
    println!("devices:");
    for d in &rep.devices {
        println!(
            "  {:<20} last sync {}  serves {} host(s)",
            fleet::shown(&d.device),
            t(d.at),
            d.serves.len()
        );
    }
    println!("lineages:");
    for l in &rep.lineages {
        println!(
            "  {:<32} v{:<3} serial {}  until {}  renewed by {} at {}{}",
            l.host,
            l.version,
            l.serial,
            t(l.not_after),
            l.renewed_by,
            t(l.renewed_at),
            l.lock
                .as_ref()
                .map(|h| format!("  LOCKED by {} (pid {}) since {}", h.device, h.pid, t(h.since)))
                .unwrap_or_default()
        );
    }
    for e in &rep.errors {
        println!("  unusable: {}: {}", e.key, e.error);
    }
    Ok(if rep.errors.is_empty() { 0 } else { 1 })
}
