//! The read side: showsite, listsites, backup ("store LKC": the exported Site
//! JSON carries the live key and full chain, or the OKC), and certificates.

use super::ctx::Ctx;
use super::facts;
use super::renew::ts;
use crate::error::{Error, Result};
use crate::fsutil;
use crate::site::{Site, SiteId, TlsKind};
use crate::store::{Material, Place};
use serde_json::{json, Value};
use std::path::Path;

/// A stored site as exported: with its TLS material unless `notls`.
pub fn exported(ctx: &Ctx, s: &Site, notls: bool) -> Value {
    let mut v = serde_json::to_value(s).unwrap_or(Value::Null);
    match s.kind() {
        TlsKind::Http => {}
        TlsKind::Letsencrypt => {
            let mut tls = json!({"letsencrypt": true});
            if !notls {
                if let Material::Present(kc) = ctx.store.material(&s.hostname, Place::Live) {
                    tls["key"] = kc.key_pem.into();
                    tls["crt"] = kc.chain_pem.into();
                }
            }
            v["tls"] = tls;
        }
        TlsKind::Okc => {
            let p = ctx.cfg.okc_paths(&s.siteid);
            let read = |f: &Path| std::fs::read_to_string(f).ok();
            match (notls, read(&p.key), read(&p.crt)) {
                (false, Some(k), Some(c)) => {
                    let mut tls = json!({"key": k, "crt": c});
                    if let Some(ca) = read(&p.cacrt) {
                        tls["cacrt"] = ca.into();
                    }
                    v["tls"] = tls;
                }
                (true, _, _) => {
                    if let Some(o) = v.as_object_mut() {
                        o.remove("tls");
                    }
                }
                _ => {
                    tracing::warn!("site {}: its own certificate files are missing from {}", s.siteid, ctx.cfg.ssl_dir.display());
                    if let Some(o) = v.as_object_mut() {
                        o.remove("tls");
                    }
                }
            }
        }
    }
    v
}

/// `showsite --siteid`: the Site JSON with its TLS material.
pub fn showsite(ctx: &Ctx, siteid: &SiteId) -> Result<i32> {
    let s = facts::load_stored(&ctx.cfg, siteid)?.ok_or_else(|| Error::invalid(format!("site {siteid} is not deployed")))?;
    ctx.print_json(&exported(ctx, &s, false))?;
    Ok(0)
}

/// `listsites`: every deployed Site JSON, with TLS material.
pub fn listsites(ctx: &Ctx) -> Result<i32> {
    let all = facts::all_stored(&ctx.cfg)?;
    if ctx.json {
        ctx.print_json(&Value::Array(all.iter().map(|s| exported(ctx, s, false)).collect()))?;
    } else {
        for s in &all {
            // What the virtual host serves, not what the Site JSON asks for.
            let served = served(ctx, s);
            let state = match s.kind() {
                TlsKind::Letsencrypt if facts::is_pending(&ctx.store, s) => format!("{served}, Let's Encrypt pending"),
                TlsKind::Letsencrypt if served != Served::Lkc => format!("{served}: falling back, its Let's Encrypt certificate is not served (renew retries)"),
                TlsKind::Okc if served != Served::Okc => format!("{served}: its own certificate is not served"),
                _ => served.to_string(),
            };
            println!("{}  {}  {state}", s.siteid, s.hostname);
        }
        if all.is_empty() {
            println!("no sites deployed");
        }
    }
    Ok(0)
}

/// What a site's virtual host serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Served {
    Nothing,
    Http,
    Okc,
    Lkc,
}

impl std::fmt::Display for Served {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Served::Nothing => "not served (its virtual host is missing)",
            Served::Http => "http",
            Served::Okc => "https (own certificate)",
            Served::Lkc => "https (Let's Encrypt)",
        })
    }
}

/// Read from the site's virtual host: the files it points at.
fn served(ctx: &Ctx, s: &Site) -> Served {
    let text = std::fs::read_to_string(ctx.cfg.vhost_file(&s.siteid)).unwrap_or_default();
    let names = |p: &Path| text.contains(&p.display().to_string());
    if text.is_empty() {
        Served::Nothing
    } else if !text.contains("SSLEngine on") {
        Served::Http
    } else if s.hostname.as_str() != "*" && names(&ctx.store.live_dir(&s.hostname).join("fullchain.pem")) {
        Served::Lkc
    } else {
        Served::Okc
    }
}

/// `backup (--siteid ... | --all) --out FILE [--notls]`, written 0600.
pub fn backup(ctx: &Ctx, ids: &[SiteId], all: bool, out: &Path, notls: bool) -> Result<i32> {
    // No lock: backup only reads, and every read of the store goes through
    // links that are switched atomically.
    let stored = facts::all_stored(&ctx.cfg)?;
    let chosen: Vec<&Site> = if all {
        stored.iter().collect()
    } else {
        let mut v = Vec::new();
        for id in ids {
            v.push(stored.iter().find(|s| &s.siteid == id).ok_or_else(|| Error::invalid(format!("site {id} is not deployed")))?);
        }
        v
    };
    let mut doc = json!({
        "type": "site-admin-backup",
        "version": 1,
        "created": chrono::Utc::now().to_rfc3339(),
        "sites": chosen.iter().map(|s| exported(ctx, s, notls)).collect::<Vec<_>>(),
    });
    if !notls {
        doc["accounts"] = json!(carried_accounts(ctx, &chosen));
    }
    let text = serde_json::to_string_pretty(&doc).map_err(|e| Error::failed(e.to_string()))? + "\n";
    let what = if notls { " without keys and certificates" } else { "" };
    if out == Path::new("-") {
        // The backup itself is the JSON document on stdout.
        use std::io::Write;
        let mut so = std::io::stdout().lock();
        so.write_all(text.as_bytes()).and_then(|_| so.flush()).map_err(|e| Error::failed(format!("writing the backup to standard output: {e}")))?;
        ctx.progress(&format!("backed up {} site(s) to standard output{what}", chosen.len()));
        return Ok(0);
    }
    let out_abs = if out.is_absolute() { out.to_path_buf() } else { std::env::current_dir().unwrap_or_default().join(out) };
    let target = fsutil::user_output_target(&out_abs).map_err(|why| Error::invalid(format!("--out {}: {why}", out.display())))?;
    if let Some(p) = target.parent() {
        if !p.is_dir() {
            return Err(Error::invalid(format!("--out {}: the directory {} does not exist", out.display(), p.display())));
        }
    }
    fsutil::atomic_write(&target, text.as_bytes(), 0o600)?;
    ctx.progress(&format!("backed up {} site(s) to {}{what}", chosen.len(), out.display()));
    if ctx.json {
        ctx.print_json(&json!({"out": out_abs, "sites": chosen.iter().map(|s| &s.siteid).collect::<Vec<_>>(), "notls": notls}))?;
    }
    Ok(0)
}

/// The ACME accounts the chosen sites' live lineages renew with, each
/// listing its hosts: a backup carries them so that a restored lineage keeps
/// renewing with its own account (ARI `replaces`, CAA `accounturi`).
fn carried_accounts(ctx: &Ctx, sites: &[&Site]) -> Vec<crate::store::accounts::Carried> {
    let mut out: Vec<crate::store::accounts::Carried> = Vec::new();
    for s in sites.iter().filter(|s| s.kind() == TlsKind::Letsencrypt) {
        let Some(conf) = ctx.store.lineage_conf(&s.hostname, Place::Live) else { continue };
        let (Some(id), Some(server)) = (conf.account, conf.server) else { continue };
        match out.iter_mut().find(|a| a.id == id && a.server == server) {
            Some(a) => a.hosts.push(s.hostname.to_string()),
            None => match crate::store::accounts::export(&ctx.cfg.letsencrypt_dir, &server, &id) {
                Some(mut a) => {
                    a.hosts.push(s.hostname.to_string());
                    out.push(a);
                }
                None => tracing::warn!("{}: its renewal conf names the account {id} of {server}, which this device does not have", s.hostname),
            },
        }
    }
    out
}

/// Every certificate: live and stashed lineages, OKCs, pending sites.
pub fn certificate_rows(ctx: &Ctx) -> Result<Vec<Value>> {
    let sites = facts::all_stored(&ctx.cfg)?;
    let site_of = |host: &str| sites.iter().find(|s| s.hostname == host && s.kind() == TlsKind::Letsencrypt).map(|s| s.siteid.clone());
    let mut rows = Vec::new();
    for l in ctx.store.lineages() {
        let state = match l.place {
            Place::Live => "live",
            Place::Stashed => "stashed",
        };
        let mut row = json!({"host": l.name, "siteid": if l.place == Place::Live { site_of(&l.name) } else { None }, "state": state, "version": l.version});
        match &l.material {
            Material::Present(kc) => {
                let rbe = l.conf.as_ref().and_then(|c| c.renew_before_expiry);
                row["not_before"] = ts(kc.leaf.not_before).into();
                row["not_after"] = ts(kc.leaf.not_after).into();
                row["serial"] = kc.leaf.serial.clone().into();
                row["issuer"] = kc.leaf.issuer.clone().into();
                row["names"] = json!(kc.leaf.names);
                if l.place == Place::Live {
                    let ari = l.conf.as_ref().map(|c| &c.ari);
                    let said = ari.and_then(|a| crate::renewal::ari_facts(a, kc.leaf.ari_id.as_deref()));
                    let (due, by) = crate::renewal::due(kc.leaf.not_before, kc.leaf.not_after, rbe, said.as_ref());
                    row["due"] = ts(due).into();
                    row["due_by"] = json!(by);
                    if let Some((a, b)) = ari.and_then(|a| a.window) {
                        row["ari_window"] = json!([ts(a), ts(b)]);
                    }
                    if let Some(n) = ari.and_then(|a| a.retry_after) {
                        row["next_ari_check"] = ts(n).into();
                    }
                    if let Some(p) = l.conf.as_ref().and_then(|c| c.profile.as_ref()) {
                        row["profile"] = p.name.clone().into();
                    }
                }
                if !kc.key_matches {
                    row["problem"] = "the key does not match the certificate".into();
                }
            }
            Material::Broken(why) => row["problem"] = why.clone().into(),
            Material::Absent => row["problem"] = "the renewal conf has no live links".into(),
        }
        rows.push(row);
    }
    for s in &sites {
        match s.kind() {
            TlsKind::Okc => {
                let mut row = json!({"host": s.hostname, "siteid": s.siteid, "state": "okc"});
                match facts::read_okc(&ctx.cfg, &s.siteid) {
                    Some(Ok(kc)) => {
                        row["not_before"] = ts(kc.leaf.not_before).into();
                        row["not_after"] = ts(kc.leaf.not_after).into();
                        row["serial"] = kc.leaf.serial.clone().into();
                        row["issuer"] = kc.leaf.issuer.clone().into();
                    }
                    Some(Err(e)) => row["problem"] = e.to_string().into(),
                    None => row["problem"] = "its files are missing".into(),
                }
                rows.push(row);
            }
            TlsKind::Letsencrypt if facts::is_pending(&ctx.store, s) => {
                rows.push(json!({"host": s.hostname, "siteid": s.siteid, "state": "pending"}));
            }
            _ => {}
        }
    }
    Ok(rows)
}

/// `certificates`.
pub fn certificates(ctx: &Ctx) -> Result<i32> {
    let mut rows = certificate_rows(ctx)?;
    // Renewal failures and back-off, and what needs attention soon: Let's
    // Encrypt no longer mails before expiry, so site-admin must say so.
    let backoff = crate::backoff_file::load(&ctx.cfg.state_dir());
    let config = crate::backoff_file::config_fingerprint(&ctx.cfg);
    let soon = chrono::Utc::now() + chrono::Duration::days(7);
    // Revocations the CA has not confirmed yet (docs/design.md, "Revocation").
    match crate::revocations::load(&ctx.cfg.state_dir()) {
        Ok(owed) => {
            for o in owed.owed.values() {
                let why = format!(
                    "the revocation of serial {} ({}) is owed since {}, {} attempt(s){}",
                    o.serial,
                    o.reason,
                    ts(o.since),
                    o.attempts,
                    o.last_error.as_deref().map(|e| format!(", last error: {e}")).unwrap_or_default()
                );
                tracing::warn!("{}: {why}; `site-admin renew` retries it", o.host);
                rows.push(json!({
                    "host": o.host, "state": "revocation_owed", "serial": o.serial, "reason": o.reason, "since": ts(o.since),
                    "attempts": o.attempts, "last_error": o.last_error, "problem": why,
                }));
            }
        }
        Err(e) => tracing::error!("{e}"),
    }
    for r in rows.iter_mut() {
        let host = r.get("host").and_then(Value::as_str).unwrap_or("").to_string();
        let state = r.get("state").and_then(Value::as_str).unwrap_or("").to_string();
        if let Some(f) = backoff.hosts.get(&host).filter(|_| state == "live" || state == "pending") {
            r["failures"] = f.failures.into();
            r["last_error"] = f.last_error.clone().into();
            // The rule `renew` applies: a record that cannot hold does not wait.
            let next = match crate::backoff::verdict(f.next_attempt, f.config.as_deref(), chrono::Utc::now(), &config) {
                crate::backoff::Verdict::Implausible => {
                    r["backoff_ignored"] = "its next attempt was recorded while the clock was ahead".into();
                    "the next renew (the recorded next attempt was written while the clock was ahead)".to_string()
                }
                crate::backoff::Verdict::ConfigChanged => {
                    r["backoff_ignored"] = "the configuration changed since it failed".into();
                    "the next renew (the configuration changed since)".to_string()
                }
                _ => {
                    r["next_attempt"] = ts(f.next_attempt).into();
                    ts(f.next_attempt)
                }
            };
            tracing::warn!("{host}: its last {} renewal attempt(s) failed ({}); next attempt at {next}", f.failures, f.last_error);
        }
        let expires = r.get("not_after").and_then(Value::as_str).and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
        if let (Some(na), true) = (expires, state == "live" || state == "okc") {
            if na < soon {
                tracing::warn!("{host}: its {} certificate expires at {} (within 7 days)", if state == "okc" { "own" } else { "Let's Encrypt" }, ts(na.into()));
            }
        }
    }
    if ctx.json {
        ctx.print_json(&Value::Array(rows))?;
        return Ok(0);
    }
    if rows.is_empty() {
        println!("no certificates");
    }
    for r in rows {
        let g = |k: &str| r.get(k).and_then(Value::as_str).unwrap_or("-").to_string();
        let failing = match r.get("failures").and_then(Value::as_u64) {
            Some(n) => format!("  FAILED {n}x, next attempt {}: {}", g("next_attempt"), g("last_error")),
            None => String::new(),
        };
        let by = r.get("due_by").and_then(Value::as_str).map(|b| format!(" ({b})")).unwrap_or_default();
        println!(
            "{:<8} {:<40} site {:<41} expires {:<20} due {:<20}{by}{}{failing}",
            g("state"),
            g("host"),
            g("siteid"),
            g("not_after"),
            g("due"),
            r.get("problem").and_then(Value::as_str).map(|p| format!("  PROBLEM: {p}")).unwrap_or_default()
        );
    }
    Ok(0)
}
