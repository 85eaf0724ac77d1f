//! `site-admin renew` (docs/design.md, "When a lineage renews"), the renewal timer's entry point: renew every
//! live lineage that is due (a bounded number at a time), retry pending
//! sites, delete expired stash entries, reload Apache once, run the hooks.

use super::facts;
use super::provision;
use super::Ctx;
use crate::acme::AcmeClient;
use crate::apache::{self, VhostTls};
use crate::config::KeyType;
use crate::error::{Error, Result};
use crate::hooks;
use crate::site::Site;
use crate::store::{Material, NewVersion, Place, RenewalParams};
use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use serde_json::json;
use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::Mutex;

/// How many renewals run at once.
pub const CONCURRENCY: usize = 4;

/// When a certificate becomes due: `renew_before_expiry` before notAfter when
/// set; else when a third of its lifetime is left (half, for lifetimes of ten
/// days or less) — certbot's rule.
pub fn due_at(not_before: DateTime<Utc>, not_after: DateTime<Utc>, renew_before_expiry: Option<Duration>) -> DateTime<Utc> {
    if let Some(d) = renew_before_expiry {
        return not_after - d;
    }
    let life = not_after - not_before;
    if life <= Duration::days(10) {
        not_after - life / 2
    } else {
        not_after - life / 3
    }
}

/// What happened to one lineage or pending site.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    pub host: String,
    pub siteid: Option<String>,
    /// renewed, failed, not_due, provisioned (a pending site), would_renew (dry run)
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub old_not_after: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_not_after: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub due: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The report printed with `--json` and given to hooks on stdin.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub event: &'static str,
    pub dry_run: bool,
    pub lineages: Vec<Entry>,
    pub renewed_domains: Vec<String>,
    pub failed_domains: Vec<String>,
    pub stash_deleted: Vec<String>,
    pub reloaded: bool,
    /// The Apache step after the renewals failed: why.
    pub apache_error: Option<String>,
    /// Renewed, but not served yet (the Apache step failed).
    pub not_served: Vec<String>,
    pub hooks: Vec<hooks::HookRun>,
}

struct Job {
    host: String,
    siteid: Option<String>,
    webroot: PathBuf,
    server: String,
    key_type: KeyType,
    old_not_after: Option<DateTime<Utc>>,
    pending: bool,
}

/// RFC 3339 in whole seconds, as every report and listing prints times.
pub(super) fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn key_type_of(s: Option<String>, default: KeyType) -> KeyType {
    match s.as_deref() {
        Some("rsa") => KeyType::Rsa,
        Some("ecdsa") => KeyType::Ecdsa,
        _ => default,
    }
}

/// `renew [--force] [--dry-run]`.
pub fn renew_command(ctx: &Ctx, force: bool, dry_run: bool) -> Result<i32> {
    let _lock = if dry_run { None } else { Some(ctx.lock("renew")?) };
    tracing::trace!("locked");
    let now = Utc::now();
    let sites = facts::all_stored(&ctx.cfg)?;
    let site_by_host: BTreeMap<String, &Site> = sites.iter().map(|s| (s.hostname.clone(), s)).collect();
    let mut entries = Vec::new();
    let mut jobs = Vec::new();

    for name in ctx.store.names_with_conf(Place::Live) {
        let conf = ctx.store.read_conf(&name, Place::Live);
        let get = |sec: Option<&str>, k: &str| conf.as_ref().and_then(|c| c.get(sec, k));
        let rbe = get(None, "renew_before_expiry").and_then(|s| crate::renewal_conf::parse_interval(&s));
        let site = site_by_host.get(&name).copied();
        let webroot = conf
            .as_ref()
            .and_then(|c| c.section("webroot_map").into_iter().find(|(k, _)| k == &name).map(|(_, v)| PathBuf::from(v)))
            .or_else(|| get(Some("renewalparams"), "webroot_path").map(|w| PathBuf::from(w.trim_end_matches(',').split(',').next().unwrap_or("").trim())))
            .or_else(|| site.map(|s| ctx.cfg.site_wellknown(&s.siteid)));
        // The certificate alone decides whether it is due; the key is read
        // only for the lineages that are renewed (fast no-op passes).
        let leaf = ctx.store.leaf(&name, Place::Live);
        let (old, due) = match (&leaf, ctx.store.has(&name, Place::Live)) {
            (Some(c), _) => (Some(c.not_after), Some(due_at(c.not_before, c.not_after, rbe))),
            (None, true) => (None, None),
            (None, false) => {
                // A conf without links: broken for certbot too; not ours to guess.
                entries.push(Entry {
                    host: name.clone(),
                    siteid: site.map(|s| s.siteid.clone()),
                    status: "failed".into(),
                    old_not_after: None,
                    new_not_after: None,
                    due: None,
                    error: Some(format!("renewal/{name}.conf has no live/{name} links (see site-admin doctor)")),
                });
                continue;
            }
        };
        let is_due = force || due.map(|d| now >= d).unwrap_or(true);
        let mut e = Entry {
            host: name.clone(),
            siteid: site.map(|s| s.siteid.clone()),
            status: "not_due".into(),
            old_not_after: old.map(ts),
            new_not_after: None,
            due: due.map(ts),
            error: None,
        };
        if !is_due {
            entries.push(e);
            continue;
        }
        let Some(webroot) = webroot else {
            e.status = "failed".into();
            e.error = Some("its renewal conf names no webroot and no deployed site uses it".into());
            entries.push(e);
            continue;
        };
        if dry_run {
            e.status = "would_renew".into();
            entries.push(e);
            continue;
        }
        // A lineage renews with the server the configuration (or
        // --acme-server) names now: moving to another CA moves it.
        if let Some(old) = get(Some("renewalparams"), "server").filter(|s| s != &ctx.cfg.acme_server) {
            tracing::warn!("{name}: moving from the ACME server {old} to {} (the configured server), as of this renewal", ctx.cfg.acme_server);
        }
        jobs.push(Job {
            host: name.clone(),
            siteid: e.siteid.clone(),
            webroot,
            server: ctx.cfg.acme_server.clone(),
            key_type: key_type_of(get(Some("renewalparams"), "key_type"), ctx.cfg.key_type),
            old_not_after: old,
            pending: false,
        });
    }
    for s in sites.iter().filter(|s| facts::is_pending(&ctx.store, s)) {
        if dry_run {
            entries.push(Entry {
                host: s.hostname.clone(),
                siteid: Some(s.siteid.clone()),
                status: "would_provision".into(),
                old_not_after: None,
                new_not_after: None,
                due: None,
                error: None,
            });
            continue;
        }
        jobs.push(Job {
            host: s.hostname.clone(),
            siteid: Some(s.siteid.clone()),
            webroot: ctx.cfg.site_wellknown(&s.siteid),
            server: ctx.cfg.acme_server.clone(),
            key_type: ctx.cfg.key_type,
            old_not_after: None,
            pending: true,
        });
    }

    // Expired stash entries go, unless the clock cannot be right.
    let mut stash_deleted = Vec::new();
    let clock_ok = crate::decide::clock_plausible(now, &facts::device_validity(&ctx.store));
    if !clock_ok {
        tracing::warn!(
            "the clock says {}, later than every certificate on this device by more than a lifetime: it cannot be right, so no expired stash entry is deleted",
            ts(now)
        );
    }
    for name in ctx.store.names_with_links(Place::Stashed) {
        if let Some(leaf) = ctx.store.leaf(&name, Place::Stashed) {
            if leaf.not_after <= now && clock_ok {
                if !dry_run {
                    ctx.progress(&format!("{name}: deleting the expired stashed certificate"));
                    ctx.store.delete_stash(&name)?;
                }
                stash_deleted.push(name);
            }
        }
    }

    let done = run_jobs(ctx, jobs);
    for (job, res) in &done {
        let mut e = Entry {
            host: job.host.clone(),
            siteid: job.siteid.clone(),
            status: String::new(),
            old_not_after: job.old_not_after.map(ts),
            new_not_after: None,
            due: None,
            error: None,
        };
        match res {
            Ok(na) => {
                e.status = if job.pending { "provisioned".into() } else { "renewed".into() };
                e.new_not_after = Some(ts(*na));
            }
            Err(err) => {
                e.status = "failed".into();
                e.error = Some(format!("{} failed: {err}", if job.pending { "provisioning" } else { "renewal" }));
            }
        }
        entries.push(e);
    }

    let renewed: Vec<String> = entries.iter().filter(|e| e.status == "renewed" || e.status == "provisioned").map(|e| e.host.clone()).collect();
    let failed: Vec<String> = entries.iter().filter(|e| e.status == "failed").map(|e| e.host.clone()).collect();
    // Every Let's Encrypt site whose vhost does not serve its usable live
    // certificate goes (back) to https: a pending site just provisioned, and
    // one that fell back to http while its expired lineage waited for renew.
    let switched: Vec<&Site> = if dry_run { Vec::new() } else { sites.iter().filter(|s| needs_https(ctx, s, now)).collect() };
    let mut reloaded = false;
    let mut apache_error = None;
    if !dry_run && (!renewed.is_empty() || !switched.is_empty()) {
        let res = if switched.is_empty() {
            ctx.progress("reloading Apache for the renewed certificates");
            apache::reload(&ctx.cfg).map_err(|said| format!("reloading Apache: {said}"))
        } else {
            switch_to_https(ctx, &switched).map_err(|e| e.to_string())
        };
        match res {
            Ok(()) => reloaded = true,
            Err(e) => {
                tracing::error!("{e}; the renewed certificates ({}) are on disk but not served yet", renewed.join(", "));
                apache_error = Some(e);
            }
        }
    }

    if !dry_run {
        ctx.install_certbot_hook();
    }
    let not_served = if apache_error.is_some() { renewed.clone() } else { Vec::new() };
    let mut report = Report {
        event: "renew",
        dry_run,
        lineages: entries,
        renewed_domains: renewed,
        failed_domains: failed,
        stash_deleted,
        reloaded,
        apache_error,
        not_served,
        hooks: Vec::new(),
    };
    if !dry_run {
        report.hooks = run_all_hooks(ctx, &report);
    }
    for e in &report.lineages {
        match e.status.as_str() {
            "renewed" | "provisioned" => ctx.progress(&format!("{}: {} (valid until {})", e.host, e.status, e.new_not_after.as_deref().unwrap_or("?"))),
            "not_due" => tracing::debug!("{}: not due until {}", e.host, e.due.as_deref().unwrap_or("?")),
            "failed" => tracing::warn!("{}: {}", e.host, e.error.as_deref().unwrap_or("failed")),
            _ => {}
        }
    }
    if ctx.json {
        ctx.print_json(&serde_json::to_value(&report).map_err(|e| Error::failed(e.to_string()))?)?;
    } else if !ctx.quiet {
        let n = |s: &str| report.lineages.iter().filter(|e| e.status == s).count();
        eprintln!(
            "renew: {} renewed, {} provisioned, {} failed, {} not due, {} expired stash entries deleted{}",
            n("renewed"),
            n("provisioned"),
            n("failed"),
            n("not_due"),
            report.stash_deleted.len(),
            if dry_run { format!(" (dry run: {} would be renewed)", n("would_renew") + n("would_provision")) } else { String::new() }
        );
    }
    Ok(if report.failed_domains.is_empty() && report.apache_error.is_none() { 0 } else { 1 })
}

/// Does this Let's Encrypt site have a usable live certificate that its
/// vhost does not serve?
fn needs_https(ctx: &Ctx, s: &Site, now: DateTime<Utc>) -> bool {
    if !s.is_letsencrypt() || !ctx.store.has(&s.hostname, Place::Live) {
        return false;
    }
    let usable = match ctx.store.material(&s.hostname, Place::Live) {
        Material::Present(kc) => facts::candidate(&kc, &s.hostname).usable(&s.hostname, now),
        _ => false,
    };
    usable && std::fs::read_to_string(ctx.cfg.vhost_file(&s.siteid)).map(|t| t != lkc_vhost(ctx, s)).unwrap_or(true)
}

fn lkc_vhost(ctx: &Ctx, s: &Site) -> String {
    let live = ctx.store.live_dir(&s.hostname);
    apache::render(&ctx.cfg, &s.siteid, &s.hostname, &VhostTls::Lkc { fullchain: live.join("fullchain.pem"), privkey: live.join("privkey.pem") })
}

/// Point these sites' vhosts at their live certificates (their OKC files
/// go), in one transaction; it reloads Apache.
pub fn switch_to_https(ctx: &Ctx, sites: &[&Site]) -> Result<()> {
    let mut txn = apache::Transaction::begin(&ctx.cfg)?;
    for s in sites {
        txn.write(&ctx.cfg.vhost_file(&s.siteid), lkc_vhost(ctx, s).as_bytes(), 0o644)?;
        let p = ctx.cfg.okc_paths(&s.siteid);
        txn.remove(&p.key)?;
        txn.remove(&p.crt)?;
        txn.remove(&p.cacrt)?;
        ctx.progress(&format!("site {} ({}): switching to https", s.siteid, s.hostname));
    }
    txn.commit_with(true, &|m| ctx.progress(m), &|_| Ok(()))
}

/// Run the jobs, [`CONCURRENCY`] at a time; one ACME client per server.
fn run_jobs(ctx: &Ctx, jobs: Vec<Job>) -> Vec<(Job, std::result::Result<DateTime<Utc>, String>)> {
    if jobs.is_empty() {
        return Vec::new();
    }
    let mut clients: BTreeMap<String, std::result::Result<(AcmeClient, String), String>> = BTreeMap::new();
    for j in &jobs {
        if !clients.contains_key(&j.server) {
            clients.insert(j.server.clone(), provision::client_for(ctx, &j.server).map_err(|e| e.to_string()));
        }
    }
    let queue = Mutex::new(jobs.into_iter().collect::<VecDeque<Job>>());
    let results = Mutex::new(Vec::new());
    let workers = CONCURRENCY.min(queue.lock().map(|q| q.len()).unwrap_or(1)).max(1);
    std::thread::scope(|sc| {
        for _ in 0..workers {
            // The queue's lock is held only while a job is taken (inside
            // `next`), never while it runs.
            let next = || queue.lock().ok().and_then(|mut q| q.pop_front());
            let (clients, results) = (&clients, &results);
            sc.spawn(move || {
                while let Some(job) = next() {
                    let r = match clients.get(&job.server) {
                        Some(Ok((client, account))) => renew_one(ctx, client, account, &job),
                        Some(Err(e)) => Err(e.clone()),
                        None => Err("no ACME client".into()),
                    };
                    if let Ok(mut v) = results.lock() {
                        v.push((job, r));
                    }
                }
            });
        }
    });
    let mut v = results.into_inner().unwrap_or_default();
    v.sort_by(|a, b| a.0.host.cmp(&b.0.host));
    v
}

fn renew_one(ctx: &Ctx, client: &AcmeClient, account: &str, job: &Job) -> std::result::Result<DateTime<Utc>, String> {
    ctx.progress(&format!("{}: {} a certificate", job.host, if job.pending { "provisioning" } else { "renewing" }));
    crate::fsutil::create_dir_all_mode(&job.webroot, 0o755).map_err(|e| e.to_string())?;
    let issued = client.issue(&job.host, &job.webroot, job.key_type).map_err(|e| e.to_string())?;
    let v = NewVersion::from_key_and_fullchain(&issued.key_pem, &issued.fullchain_pem).map_err(|e| e.to_string())?;
    let params =
        RenewalParams { account: account.to_string(), server: job.server.clone(), webroot: job.webroot.clone(), key_type: job.key_type.as_str().into() };
    crate::fault::point("renew.issued");
    ctx.store.add_version(&job.host, &v, &params).map_err(|e| e.to_string())?;
    match ctx.store.material(&job.host, Place::Live) {
        Material::Present(kc) => Ok(kc.leaf.not_after),
        _ => Err("the new version is not readable".into()),
    }
}

fn run_all_hooks(ctx: &Ctx, report: &Report) -> Vec<hooks::HookRun> {
    let mut runs = Vec::new();
    // certbot's deploy hooks, once per renewed lineage.
    // Our own deploy hook (for certbot's renewals) is not needed here: this
    // run reloads Apache itself.
    let deploy_hooks: Vec<_> = hooks::executables(&ctx.cfg.letsencrypt_dir.join("renewal-hooks/deploy"))
        .into_iter()
        .filter(|h| h.file_name().and_then(|n| n.to_str()) != Some(crate::store::CERTBOT_DEPLOY_HOOK))
        .collect();
    for host in &report.renewed_domains {
        for h in &deploy_hooks {
            let env = [("RENEWED_LINEAGE", ctx.store.live_dir(host).display().to_string()), ("RENEWED_DOMAINS", host.clone())];
            let r = hooks::run_hook(h, &env, b"", hooks::HOOK_TIME_LIMIT);
            if !r.ok {
                tracing::warn!("certbot deploy hook {} for {host}: {}", r.hook, r.error.as_deref().unwrap_or(""));
            }
            runs.push(r);
        }
    }
    let stdin = serde_json::to_vec(&json!({
        "event": report.event,
        "lineages": report.lineages,
        "renewed_domains": report.renewed_domains,
        "failed_domains": report.failed_domains,
        "stash_deleted": report.stash_deleted,
        "reloaded": report.reloaded,
        "apache_error": report.apache_error,
        "not_served": report.not_served,
    }))
    .unwrap_or_default();
    for h in hooks::executables(&ctx.cfg.hooks_dir) {
        let env = [
            ("SITE_ADMIN_EVENT", "renew".to_string()),
            ("RENEWED_DOMAINS", report.renewed_domains.join(" ")),
            ("FAILED_DOMAINS", report.failed_domains.join(" ")),
        ];
        ctx.progress(&format!("running hook {}", h.display()));
        let r = hooks::run_hook(&h, &env, &stdin, hooks::HOOK_TIME_LIMIT);
        if !r.ok {
            tracing::warn!("hook {}: {}", r.hook, r.error.as_deref().unwrap_or(""));
        }
        runs.push(r);
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn due_rules() {
        let nb = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        assert_eq!(due_at(nb, nb + Duration::days(90), None), nb + Duration::days(60));
        assert_eq!(due_at(nb, nb + Duration::days(6), None), nb + Duration::days(3));
        assert_eq!(due_at(nb, nb + Duration::days(90), Some(Duration::days(10))), nb + Duration::days(80));
        assert_eq!(due_at(nb, nb + Duration::seconds(300), None), nb + Duration::seconds(150));
    }
}
