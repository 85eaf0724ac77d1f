//! The read side: showsite, listsites, backup ("store LKC": the exported Site
//! JSON carries the live key and full chain, or the OKC), and certificates.

use super::backup_doc::Backup;
use super::cert_row::{CertificateRow, OwedRow, Row, State};
use super::ctx::Ctx;
use super::facts;
use super::ts;
use crate::error::{Error, Result};
use crate::fsutil;
use crate::site::{CarriedPair, OwnCert, Site, SiteId, Tls};
use crate::store::{Material, Place};
use std::path::Path;

/// A stored site as exported: with its TLS material unless `notls`. A Let's
/// Encrypt site carries its live key and full chain; an own certificate its
/// files from `ssl_dir` (the site is exported without `tls` when they are
/// missing, or with `notls`).
pub(super) fn exported(ctx: &Ctx, s: &Site, notls: bool) -> Site {
    let tls = match &s.tls {
        Tls::Http => Tls::Http,
        // `letsencrypt`, the profile the site asked for, and the live pair: a
        // restore elsewhere orders the same profile.
        Tls::LetsEncrypt { profile, .. } => Tls::LetsEncrypt {
            profile: profile.clone(),
            carried: match (notls, ctx.store.material(&s.hostname, Place::Live)) {
                (false, Material::Present(kc)) => {
                    Some(CarriedPair { key: kc.key_pem, fullchain: kc.chain_pem })
                }
                _ => None,
            },
        },
        Tls::Own(_) => {
            let p = ctx.cfg.okc_paths(&s.siteid);
            let read = |f: &Path| std::fs::read_to_string(f).ok();
            match (notls, read(&p.key), read(&p.crt)) {
                (false, Some(key), Some(crt)) => {
                    Tls::Own(Some(OwnCert { key, crt, cacrt: read(&p.cacrt) }))
                }
                (true, _, _) => Tls::Http,
                _ => {
                    tracing::warn!(
                        "site {}: its own certificate files are missing from {}",
                        s.siteid,
                        ctx.cfg.ssl_dir.display()
                    );
                    Tls::Http
                }
            }
        }
    };
    Site { tls, ..s.clone() }
}

/// `showsite --siteid`: the Site JSON with its TLS material.
pub(super) fn showsite(ctx: &Ctx, siteid: &SiteId) -> Result<i32> {
    let s = facts::load_stored(&ctx.cfg, siteid)?
        .ok_or_else(|| Error::invalid(format!("site {siteid} is not deployed")))?;
    ctx.print_json(&exported(ctx, &s, false))?;
    Ok(0)
}

/// `listsites`: every deployed Site JSON, with TLS material.
pub(super) fn listsites(ctx: &Ctx) -> Result<i32> {
    let all = facts::all_stored(&ctx.cfg)?;
    if ctx.json {
        ctx.print_json(&all.iter().map(|s| exported(ctx, s, false)).collect::<Vec<_>>())?;
    } else {
        for s in &all {
            // What the virtual host serves, not what the Site JSON asks for.
            let served = served(ctx, s);
            let state = match s.tls {
                Tls::LetsEncrypt { .. } if facts::is_pending(&ctx.store, s) => format!("{served}, Let's Encrypt pending"),
                Tls::LetsEncrypt { .. } if served != Served::Lkc => format!("{served}: falling back, its Let's Encrypt certificate is not served (renew retries)"),
                Tls::Own(_) if served != Served::Okc => format!("{served}: its own certificate is not served"),
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
    } else if s.hostname.as_str() != "*"
        && names(&ctx.store.live_dir(&s.hostname).join("fullchain.pem"))
    {
        Served::Lkc
    } else {
        Served::Okc
    }
}

/// `backup (--siteid ... | --all) --out FILE [--notls]`, written 0600.
pub(super) fn backup(ctx: &Ctx, ids: &[SiteId], all: bool, out: &Path, notls: bool) -> Result<i32> {
    // No lock: backup only reads, and every read of the store goes through
    // links that are switched atomically.
    let stored = facts::all_stored(&ctx.cfg)?;
    let chosen: Vec<&Site> = if all {
        stored.iter().collect()
    } else {
        let mut v = Vec::new();
        for id in ids {
            v.push(
                stored
                    .iter()
                    .find(|s| &s.siteid == id)
                    .ok_or_else(|| Error::invalid(format!("site {id} is not deployed")))?,
            );
        }
        v
    };
    let sites = chosen.iter().map(|s| exported(ctx, s, notls)).collect();
    let doc =
        Backup::new(chrono::Utc::now(), sites, (!notls).then(|| carried_accounts(ctx, &chosen)));
    let text = serde_json::to_string_pretty(&doc).map_err(|e| Error::failed(e.to_string()))? + "\n";
    let what = if notls { " without keys and certificates" } else { "" };
    if out == Path::new("-") {
        // The backup itself is the JSON document on stdout.
        use std::io::Write;
        let mut so = std::io::stdout().lock();
        so.write_all(text.as_bytes())
            .and_then(|_| so.flush())
            .map_err(|e| Error::failed(format!("writing the backup to standard output: {e}")))?;
        ctx.progress(&format!("backed up {} site(s) to standard output{what}", chosen.len()));
        return Ok(0);
    }
    let out_abs = if out.is_absolute() {
        out.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_default().join(out)
    };
    let target = fsutil::user_output_target(&out_abs)
        .map_err(|why| Error::invalid(format!("--out {}: {why}", out.display())))?;
    if let Some(p) = target.parent() {
        if !p.is_dir() {
            return Err(Error::invalid(format!(
                "--out {}: the directory {} does not exist",
                out.display(),
                p.display()
            )));
        }
    }
    fsutil::atomic_write(&target, text.as_bytes(), 0o600)?;
    ctx.progress(&format!("backed up {} site(s) to {}{what}", chosen.len(), out.display()));
    if ctx.json {
        let sites = chosen.iter().map(|s| &s.siteid).collect();
        ctx.print_json(&BackupResult { out: out_abs, sites, notls })?;
    }
    Ok(0)
}

/// What `backup --json` prints once the file is written.
#[derive(serde::Serialize)]
struct BackupResult<'a> {
    out: std::path::PathBuf,
    sites: Vec<&'a SiteId>,
    notls: bool,
}

/// The ACME accounts the chosen sites' live lineages renew with, each
/// listing its hosts: a backup carries them so that a restored lineage keeps
/// renewing with its own account (ARI `replaces`, CAA `accounturi`).
fn carried_accounts(ctx: &Ctx, sites: &[&Site]) -> Vec<crate::store::accounts::Carried> {
    let mut out: Vec<crate::store::accounts::Carried> = Vec::new();
    for s in sites.iter().filter(|s| matches!(s.tls, Tls::LetsEncrypt { .. })) {
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
pub(super) fn certificate_rows(ctx: &Ctx) -> Result<Vec<CertificateRow>> {
    let sites = facts::all_stored(&ctx.cfg)?;
    let site_of = |host: &str| {
        sites
            .iter()
            .find(|s| s.hostname == host && matches!(s.tls, Tls::LetsEncrypt { .. }))
            .map(|s| s.siteid.clone())
    };
    let mut rows = Vec::new();
    for l in ctx.store.lineages() {
        let (state, siteid) = match l.place {
            Place::Live => (State::Live, site_of(&l.name)),
            Place::Stashed => (State::Stashed, None),
        };
        let mut row = CertificateRow::new(l.name.clone(), siteid, state);
        row.version = Some(l.version);
        match &l.material {
            Material::Present(kc) => {
                let rbe = l.conf.as_ref().and_then(|c| c.renew_before_expiry);
                row.not_before = Some(kc.leaf.not_before);
                row.not_after = Some(kc.leaf.not_after);
                row.serial = Some(kc.leaf.serial.clone());
                row.issuer = Some(kc.leaf.issuer.clone());
                row.names = Some(kc.leaf.names.clone());
                if l.place == Place::Live {
                    let ari = l.conf.as_ref().map(|c| &c.ari);
                    let said =
                        ari.and_then(|a| crate::renewal::ari_facts(a, kc.leaf.ari_id.as_deref()));
                    let (due, by) = crate::renewal::due(
                        kc.leaf.not_before,
                        kc.leaf.not_after,
                        rbe,
                        said.as_ref(),
                    );
                    row.due = Some(due);
                    row.due_by = Some(by);
                    row.ari_window = ari.and_then(|a| a.window);
                    row.next_ari_check = ari.and_then(|a| a.retry_after);
                    row.profile =
                        l.conf.as_ref().and_then(|c| c.profile.as_ref()).map(|p| p.name.clone());
                }
                if !kc.key_matches {
                    row.problem = Some("the key does not match the certificate".into());
                }
            }
            Material::Broken(why) => row.problem = Some(why.clone()),
            Material::Absent => row.problem = Some("the renewal conf has no live links".into()),
        }
        rows.push(row);
    }
    for s in &sites {
        match s.tls {
            Tls::Own(_) => {
                let mut row =
                    CertificateRow::new(s.hostname.to_string(), Some(s.siteid.clone()), State::Okc);
                match facts::read_okc(&ctx.cfg, &s.siteid) {
                    Some(Ok(kc)) => {
                        row.not_before = Some(kc.leaf.not_before);
                        row.not_after = Some(kc.leaf.not_after);
                        row.serial = Some(kc.leaf.serial);
                        row.issuer = Some(kc.leaf.issuer);
                    }
                    Some(Err(e)) => row.problem = Some(e.to_string()),
                    None => row.problem = Some("its files are missing".into()),
                }
                rows.push(row);
            }
            Tls::LetsEncrypt { .. } if facts::is_pending(&ctx.store, s) => {
                rows.push(CertificateRow::new(
                    s.hostname.to_string(),
                    Some(s.siteid.clone()),
                    State::Pending,
                ));
            }
            _ => {}
        }
    }
    Ok(rows)
}

/// `certificates`.
pub(super) fn certificates(ctx: &Ctx) -> Result<i32> {
    let mut rows = certificate_rows(ctx)?;
    // Renewal failures and back-off, and what needs attention soon: Let's
    // Encrypt no longer mails before expiry, so site-admin must say so.
    let backoff = crate::backoff_file::load(&ctx.cfg.state_dir());
    let config = crate::backoff_file::config_fingerprint(&ctx.cfg);
    let soon = chrono::Utc::now() + chrono::Duration::days(7);
    let owed_rows = owed_rows(ctx);
    let fleet_error = fleet_error(ctx);
    for r in rows.iter_mut() {
        if ctx.cfg.fleet.is_some() && r.state == State::Live {
            r.fleet = true;
            r.fleet_error = fleet_error.clone();
        }
        if let Some(f) =
            backoff.hosts.get(&r.host).filter(|_| matches!(r.state, State::Live | State::Pending))
        {
            note_backoff(r, f, &config);
        }
        if let (Some(na), true) = (r.not_after, matches!(r.state, State::Live | State::Okc)) {
            if na < soon {
                tracing::warn!(
                    "{}: its {} certificate expires at {} (within 7 days)",
                    r.host,
                    if r.state == State::Okc { "own" } else { "Let's Encrypt" },
                    ts(na)
                );
            }
        }
    }
    let rows: Vec<Row> = rows
        .into_iter()
        .map(Row::Certificate)
        .chain(owed_rows.into_iter().map(Row::Owed))
        .collect();
    if ctx.json {
        ctx.print_json(&rows)?;
        return Ok(0);
    }
    if rows.is_empty() {
        println!("no certificates");
    }
    for r in rows {
        println!("{}", r.text());
    }
    Ok(0)
}

/// Revocations the CA has not confirmed yet (docs/design.md, "Revocation"),
/// each warned about.
fn owed_rows(ctx: &Ctx) -> Vec<OwedRow> {
    let mut owed_rows = Vec::new();
    match crate::revocations::load(&ctx.cfg.state_dir()) {
        Ok(owed) => {
            for o in owed.owed.values() {
                let why = format!(
                    "the revocation of serial {} ({}) is owed since {}, {} attempt(s){}",
                    o.serial,
                    o.reason,
                    ts(o.since),
                    o.attempts,
                    o.last_error
                        .as_deref()
                        .map(|e| format!(", last error: {e}"))
                        .unwrap_or_default()
                );
                tracing::warn!("{}: {why}; `site-admin renew` retries it", o.host);
                owed_rows.push(OwedRow {
                    host: o.host.clone(),
                    state: State::RevocationOwed,
                    serial: o.serial.clone(),
                    reason: o.reason.clone(),
                    since: o.since,
                    attempts: o.attempts,
                    last_error: o.last_error.clone(),
                    problem: why,
                });
            }
        }
        Err(e) => tracing::error!("{e}"),
    }
    owed_rows
}

/// Fleet mode: every live lineage is the fleet's; a sync that could not
/// reach it is named on each, with since when (and warned about once).
fn fleet_error(ctx: &Ctx) -> Option<String> {
    let fleet_error = ctx.cfg.fleet.as_ref().and_then(|_| {
        let st = super::fleet::load_state(ctx);
        st.error.map(|e| format!("{e} (since {})", st.since.map(ts).unwrap_or_else(|| "-".into())))
    });
    if let Some(e) = &fleet_error {
        tracing::warn!(
            "the fleet cannot be used: {e}; this device serves what it has and orders nothing"
        );
    }
    fleet_error
}

/// A row's failed renewals and when the next attempt is (the rule `renew`
/// applies: a record that cannot hold does not wait), warned about.
fn note_backoff(r: &mut CertificateRow, f: &crate::backoff::Failures, config: &str) {
    r.failures = Some(f.failures);
    r.last_error = Some(f.last_error.clone());
    let next = match crate::backoff::verdict(
        f.next_attempt,
        f.config.as_deref(),
        chrono::Utc::now(),
        config,
    ) {
        crate::backoff::Verdict::Implausible => {
            r.backoff_ignored =
                Some("its next attempt was recorded while the clock was ahead".into());
            "the next renew (the recorded next attempt was written while the clock was ahead)"
                .to_string()
        }
        crate::backoff::Verdict::ConfigChanged => {
            r.backoff_ignored = Some("the configuration changed since it failed".into());
            "the next renew (the configuration changed since)".to_string()
        }
        _ => {
            r.next_attempt = Some(f.next_attempt);
            ts(f.next_attempt)
        }
    };
    tracing::warn!(
        "{}: its last {} renewal attempt(s) failed ({}); next attempt at {next}",
        r.host,
        f.failures,
        f.last_error
    );
}
