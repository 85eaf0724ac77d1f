//! deploy / redeploy / restore / undeploy, carried out as the decision table (docs/design.md) decides.
//!
//! The order of effects keeps every usable LKC and Apache's last good
//! configuration through a failure at any step:
//! 1. store actions that add (unstash, import, provision; a provision first
//!    brings up the vhost its fallback serves, so the challenge is answered,
//!    as an interim, undecided step of the transaction of 2, whose journal is
//!    open from before the first of them and says how to roll them back),
//! 2. one Apache transaction (OKC files + vhost), decided by `configtest`,
//! 3. stash actions (only once Apache no longer points at those files),
//! 4. the stored Site JSON, without keys.

use super::backup_doc::Backup;
use super::completion;
use super::ctx::Ctx;
use super::facts;
use super::provision;
use crate::apache::Recovered;
use crate::apache::{self, VhostTls};
use crate::decide::{self, Action, Event, Plan, Serve};
use crate::error::{Error, Result};
use crate::fsutil;
use crate::journal::Completion;
use crate::site::{self, Host, OwnCert, Site, SiteId, Tls};
use crate::store::accounts;
use crate::store::{ensure_nl, NewVersion, Place, StoreError};
use chrono::Utc;
use serde::Serialize;
use std::path::Path;

/// Read the Site JSON text from a file or stdin.
pub(super) fn read_input(file: Option<&Path>, stdin: bool) -> Result<(String, String)> {
    if stdin {
        let s = fsutil::read_limited(std::io::stdin().lock())
            .map_err(|e| Error::invalid(format!("--stdin: the Site JSON {e}")))?;
        return Ok((s, "<stdin>".into()));
    }
    let f = file.ok_or_else(|| Error::invalid("deploy needs --file or --stdin"))?;
    let text = fsutil::read_user_file(f)
        .map_err(|e| Error::invalid(format!("--file {}: {e}", f.display())))?;
    Ok((text, f.display().to_string()))
}

/// What a deploy did, for the report.
#[derive(Debug, Clone)]
pub(super) struct Outcome {
    pub siteid: SiteId,
    pub hostname: String,
    pub serve: Serve,
    pub pending: Option<String>,
    pub plan: Plan,
}

impl Outcome {
    /// The document `deploy --json` prints for it.
    pub(super) fn doc(&self) -> OutcomeDoc<'_> {
        OutcomeDoc {
            siteid: &self.siteid,
            hostname: &self.hostname,
            serving: serving_name(&self.serve),
            pending: self.pending.is_some(),
            pending_reason: self.pending.as_deref(),
            reason: &self.plan.reason,
            warnings: &self.plan.warnings,
            actions: &self.plan.actions,
        }
    }
}

/// What `deploy --json` (and `restore --json`) prints of one site.
#[derive(Debug, Serialize)]
pub(super) struct OutcomeDoc<'a> {
    pub siteid: &'a SiteId,
    pub hostname: &'a str,
    pub serving: &'static str,
    pub pending: bool,
    pub pending_reason: Option<&'a str>,
    pub reason: &'a str,
    pub warnings: &'a [String],
    pub actions: &'a [Action],
}

/// What `deploy --dry-run --json` prints: the decision, nothing changed.
#[derive(Debug, Serialize)]
struct DryRunDoc<'a> {
    dry_run: bool,
    siteid: &'a SiteId,
    hostname: &'a Host,
    current: &'a decide::Current,
    serve: &'a Serve,
    serving: &'static str,
    on_failure: &'a Option<Serve>,
    actions: &'a [Action],
    reason: &'a str,
    warnings: &'a [String],
}

/// What `undeploy --json` prints.
#[derive(Debug, Serialize)]
struct UndeployDoc<'a> {
    siteid: &'a SiteId,
    hostname: &'a Host,
    undeployed: bool,
    actions: &'a [Action],
    reason: &'a str,
}

pub(super) fn serving_name(s: &Serve) -> &'static str {
    match s {
        Serve::Nothing => "nothing",
        Serve::Http => "http",
        Serve::Okc => "okc",
        Serve::Lkc { .. } => "letsencrypt",
    }
}

fn describe_serve(s: &Serve) -> String {
    match s {
        Serve::Nothing => "nothing (removed)".into(),
        Serve::Http => "plain http, no certificate".into(),
        Serve::Okc => "the site's own certificate (OKC) from the ssl directory".into(),
        Serve::Lkc { host } => format!("the Let's Encrypt certificate in live/{host}"),
    }
}

fn describe_action(a: &Action) -> String {
    match a {
        Action::StashLive { host } => format!("stash the Let's Encrypt certificate of {host}"),
        Action::DeleteStash { host } => format!("delete the stashed certificate of {host}"),
        Action::Unstash { host } => format!("unstash the certificate of {host} (no new issuance)"),
        Action::ImportCarried { host } => {
            format!("import the certificate carried in the Site JSON for {host}")
        }
        Action::Provision { host } => format!("obtain a certificate for {host} from the CA now"),
        Action::RemoveOkc => "remove the old own certificate files".into(),
        Action::WriteOkc => "write the own certificate files".into(),
    }
}

/// `deploy --file/--stdin [--dry-run]`.
pub(super) fn deploy_command(ctx: &Ctx, text: &str, origin: &str, dry_run: bool) -> Result<i32> {
    let site = site::parse_site_for(text, origin, &ctx.cfg.acme_server)?;
    if dry_run {
        return dry_run_report(ctx, &site);
    }
    let locked = ctx.lock(&format!("deploy {}", site.siteid))?;
    // Fleet mode: the fleet's certificates first, so a host the fleet has a
    // usable certificate for is served with it and nothing is ordered.
    let fleet = ctx.fleet()?;
    let mut fleet_up = false;
    if let Some(f) = &fleet {
        // The stored sites, with this one as it is being deployed.
        let mut all = facts::all_stored(&ctx.cfg)?;
        all.retain(|s| s.siteid != site.siteid);
        all.push(site.clone());
        match super::fleet::sync(ctx, f, &locked.recovered, &all) {
            Ok(_) => fleet_up = true,
            Err(e) => tracing::warn!("the fleet cannot be used ({e}): deploying with what this device has; nothing is ordered without the fleet's lock"),
        }
    }
    let out = deploy_one(ctx, &locked.recovered, &site)?;
    if let (Some(f), true) = (&fleet, fleet_up) {
        super::fleet::beat(ctx, f);
    }
    report(ctx, &[out])
}

fn report(ctx: &Ctx, outs: &[Outcome]) -> Result<i32> {
    for o in outs {
        match &o.pending {
            None => ctx.progress(&format!("site {} ({}) deployed: serving {}", o.siteid, o.hostname, describe_serve(&o.serve))),
            Some(why) => tracing::warn!(
                "site {} ({}) deployed without a Let's Encrypt certificate: {why}. It serves {} for now and stays pending; `site-admin renew` will retry.",
                o.siteid,
                o.hostname,
                describe_serve(&o.serve)
            ),
        }
    }
    if ctx.json {
        if outs.len() == 1 {
            ctx.print_json(&outs[0].doc())?;
        } else {
            ctx.print_json(&outs.iter().map(Outcome::doc).collect::<Vec<_>>())?;
        }
    }
    Ok(0)
}

fn dry_run_report(ctx: &Ctx, site: &Site) -> Result<i32> {
    let all = facts::all_stored(&ctx.cfg)?;
    facts::check_hostname_free(&all, site)?;
    let stored = all.iter().find(|s| s.siteid == site.siteid);
    let f = facts::gather(&ctx.cfg, &ctx.store, site, stored, Event::Deploy, Utc::now());
    let plan =
        decide::decide(&f).map_err(|r| Error::invalid(format!("site {}: {}", site.siteid, r.0)))?;
    if ctx.json {
        ctx.print_json(&DryRunDoc {
            dry_run: true,
            siteid: &site.siteid,
            hostname: &site.hostname,
            current: &f.current,
            serve: &plan.serve,
            serving: serving_name(&plan.serve),
            on_failure: &plan.on_failure,
            actions: &plan.actions,
            reason: &plan.reason,
            warnings: &plan.warnings,
        })?;
    } else {
        let cur = match &f.current {
            decide::Current::NotDeployed => "not deployed".to_string(),
            decide::Current::Http { host } => format!("deployed on http as {host}"),
            decide::Current::Okc { host, .. } => {
                format!("deployed with its own certificate as {host}")
            }
            decide::Current::Lkc { host } => {
                format!("deployed with the Let's Encrypt certificate of {host}")
            }
        };
        println!("site {} ({}) — dry run, nothing changed", site.siteid, site.hostname);
        println!("  now:        {cur}");
        println!("  will serve: {}", describe_serve(&plan.serve));
        if let Some(fb) = &plan.on_failure {
            println!(
                "  if the CA cannot issue: {} (the site stays pending; renew retries)",
                describe_serve(fb)
            );
        }
        if plan.actions.is_empty() {
            println!("  steps:      none");
        }
        for (i, a) in plan.actions.iter().enumerate() {
            println!(
                "  {} {}",
                if i == 0 { "steps:     " } else { "           " },
                describe_action(a)
            );
        }
        println!("  why:        {}", plan.reason);
        for w in &plan.warnings {
            println!("  warning:    {w}");
        }
    }
    Ok(0)
}

fn vhost_tls(ctx: &Ctx, site: &Site, serve: &Serve) -> VhostTls {
    match serve {
        Serve::Nothing | Serve::Http => VhostTls::None,
        Serve::Lkc { host } => super::serving::lkc_tls(ctx, host),
        Serve::Okc => {
            let p = ctx.cfg.okc_paths(&site.siteid);
            let has_ca = match &site.tls {
                Tls::Own(own) => own.as_ref().is_some_and(|c| c.cacrt.is_some()),
                _ => p.cacrt.exists(),
            };
            VhostTls::Okc {
                crt: p.crt,
                key: p.key,
                cacrt: if has_ca { Some(p.cacrt) } else { None },
            }
        }
    }
}

/// What a deploy does to the site's own (OKC) files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OkcFiles {
    Keep,
    /// Write the Site JSON's OKC.
    Write,
    /// Remove the old OKC (unless the site still serves it).
    Remove,
}

/// One change to a site's Apache files, carried out as one transaction.
struct VhostChange<'a> {
    serve: &'a Serve,
    okc: OkcFiles,
    /// The LKC it serves got a new version: reload even if no file changed.
    new_certificate: bool,
    completion: Option<Completion>,
    /// What undoes the store side if the transaction is rolled back.
    rollback: Option<Completion>,
}

/// A deploy's Apache transaction while it provisions (see [`provision_now`]).
struct Interim<'c> {
    /// The site's vhost answers the challenge for its (new) name already.
    serves_challenge: bool,
    /// The deploy's transaction (after an interim http vhost: loaded, undecided).
    txn: Option<apache::Transaction<'c>>,
}

/// Write the site's vhost (and OKC files) as `change` says, in one
/// transaction: `interim`'s (the provisioning's http vhost, whose journal
/// still holds the files as they were before the deploy) or a new one.
fn apply_apache<'c>(
    ctx: &'c Ctx,
    rec: &Recovered,
    site: &Site,
    change: VhostChange,
    interim: Option<apache::Transaction<'c>>,
) -> Result<()> {
    let txn = stage_apache(ctx, rec, site, &change, interim)?;
    txn.commit(
        change.new_certificate,
        &|m| ctx.progress(&format!("site {}: {m}", site.siteid)),
        &|c| completion::run(&ctx.cfg, &ctx.store, c),
    )
}

/// The files of [`apply_apache`], written but not yet tested.
fn stage_apache<'c>(
    ctx: &'c Ctx,
    rec: &Recovered,
    site: &Site,
    change: &VhostChange,
    interim: Option<apache::Transaction<'c>>,
) -> Result<apache::Transaction<'c>> {
    let mut txn = match interim {
        Some(t) => t,
        None => apache::Transaction::begin(&ctx.cfg, rec)?,
    };
    if let Some(c) = &change.completion {
        txn.set_completion(c.clone())?;
    }
    if let Some(c) = &change.rollback {
        txn.set_rollback(c.clone())?;
    }
    let p = ctx.cfg.okc_paths(&site.siteid);
    match change.okc {
        OkcFiles::Write => {
            if let Tls::Own(Some(OwnCert { key, crt, cacrt })) = &site.tls {
                fsutil::create_dir_all_mode(&ctx.cfg.ssl_dir, 0o755)?;
                txn.write(&p.key, ensure_nl(key).as_bytes(), 0o600)?;
                txn.write(&p.crt, ensure_nl(crt).as_bytes(), 0o644)?;
                match cacrt {
                    Some(ca) => txn.write(&p.cacrt, ensure_nl(ca).as_bytes(), 0o644)?,
                    None => txn.remove(&p.cacrt)?,
                }
            }
        }
        OkcFiles::Remove if *change.serve != Serve::Okc => {
            txn.remove(&p.key)?;
            txn.remove(&p.crt)?;
            txn.remove(&p.cacrt)?;
        }
        OkcFiles::Remove | OkcFiles::Keep => {}
    }
    let conf =
        apache::render(&ctx.cfg, &site.siteid, &site.hostname, &vhost_tls(ctx, site, change.serve));
    txn.write(&ctx.cfg.vhost_file(&site.siteid), conf.as_bytes(), 0o644)?;
    // The stateless challenge answer of the server's account rides along,
    // so the next new site needs no vhost (and no reload) for its challenge.
    if let Some(t) = account_thumbprint(ctx) {
        txn.write(
            &apache::acme_conf_file(&ctx.cfg),
            apache::render_acme_conf(&t).as_bytes(),
            0o644,
        )?;
    }
    if let Some(p) = super::serving::proof_for(ctx, &site.siteid, &site.hostname, change.serve) {
        txn.prove(p);
    }
    Ok(txn)
}

/// The account a stash conf names, if this device has it.
fn stash_account(ctx: &Ctx, host: &str) -> Option<String> {
    let c = ctx.store.lineage_conf(host, Place::Stashed)?;
    let (acct, server) = (c.account?, c.server?);
    (server == ctx.cfg.acme_server
        && crate::store::accounts::exists(&ctx.cfg.letsencrypt_dir, &server, &acct))
    .then_some(acct)
}

/// Deploy one validated site (the lock is held).
pub(super) fn deploy_one(ctx: &Ctx, rec: &Recovered, site: &Site) -> Result<Outcome> {
    deploy_one_with(ctx, rec, site, None)
}

/// [`deploy_one`]; a carried certificate's lineage names `account` (the
/// account a backup carried for it) when given.
fn deploy_one_with(
    ctx: &Ctx,
    rec: &Recovered,
    site: &Site,
    account: Option<String>,
) -> Result<Outcome> {
    let all = facts::all_stored(&ctx.cfg)?;
    facts::check_hostname_free(&all, site)?;
    let stored = all.iter().find(|s| s.siteid == site.siteid).cloned();
    let f = facts::gather(&ctx.cfg, &ctx.store, site, stored.as_ref(), Event::Deploy, Utc::now());
    let plan =
        decide::decide(&f).map_err(|r| Error::invalid(format!("site {}: {}", site.siteid, r.0)))?;
    ctx.progress(&format!("site {} ({}): {}", site.siteid, site.hostname, plan.reason));
    for w in &plan.warnings {
        tracing::warn!("site {} ({}): {w}", site.siteid, site.hostname);
    }
    // The site's directories: a deploy that fails takes back the ones it made.
    let made = NewDirs::create(&[
        ctx.cfg.site_docroot(&site.siteid),
        ctx.cfg.site_wellknown(&site.siteid),
    ])?;
    let out = carry_out(ctx, rec, site, account, stored.as_ref(), &f.current, plan);
    // Kept once a vhost may point at them.
    if out.is_ok() || fsutil::exists_nofollow(&ctx.cfg.vhost_file(&site.siteid)) {
        made.keep();
    }
    out
}

/// Directories a deploy created; removed on drop unless kept.
struct NewDirs(Vec<std::path::PathBuf>);

impl NewDirs {
    /// Create each directory (0755) and remember the ones that were missing
    /// (the topmost missing ancestor of each).
    fn create(dirs: &[std::path::PathBuf]) -> Result<NewDirs> {
        let mut made = NewDirs(Vec::new());
        for d in dirs {
            let mut top = None;
            let mut p = Some(d.as_path());
            while let Some(q) = p.filter(|q| !fsutil::exists_nofollow(q)) {
                top = Some(q.to_path_buf());
                p = q.parent();
            }
            fsutil::create_dir_all_mode(d, 0o755)?;
            made.0.extend(top);
        }
        Ok(made)
    }
    fn keep(mut self) {
        self.0.clear();
    }
}

impl Drop for NewDirs {
    fn drop(&mut self) {
        for d in self.0.iter().rev() {
            if let Err(e) = std::fs::remove_dir_all(d) {
                tracing::warn!("removing {} after the failed deploy: {e}", d.display());
            }
        }
    }
}

/// Carry out a deploy's plan (the site's directories exist).
fn carry_out(
    ctx: &Ctx,
    rec: &Recovered,
    site: &Site,
    account: Option<String>,
    stored: Option<&Site>,
    current: &decide::Current,
    plan: Plan,
) -> Result<Outcome> {
    // One Apache transaction carries the whole deploy (docs/design.md,
    // invariant 5): the http vhost a provisioning brings up under the site's
    // new name is an interim step of it, loaded by Apache but undecided, and
    // the final vhost below goes on in the same journal. Rolled back, the
    // deploy leaves no live lineage that no site uses: the one it unstashes,
    // imports or provisions for a name the site did not serve before is
    // stashed (a later deploy takes it back, no new issuance). That is
    // journaled before the lineage is added, so a crash at any step rolls
    // back or (once `configtest` decided) completes the whole change.
    let rollback = deploy_rollback(ctx, site, current, &plan);
    let mut txn = apache::Transaction::begin(&ctx.cfg, rec)?;
    if let Some(c) = &rollback {
        txn.set_rollback(c.clone())?;
    }
    let serves_challenge = stored.as_ref().map(|s| s.hostname == site.hostname).unwrap_or(false)
        && ctx.cfg.vhost_file(&site.siteid).exists();
    let mut interim = Interim { serves_challenge, txn: Some(txn) };
    let mut done = Done {
        serve: plan.serve.clone(),
        pending: None,
        okc: OkcFiles::Keep,
        stash_later: Vec::new(),
        cert_changed: false,
    };
    if let Err(e) = run_actions(ctx, rec, site, account, &plan, &mut interim, &mut done) {
        // Nothing decided: undo what the deploy did so far.
        if let Some(t) = interim.txn.take() {
            let complete = |c: &Completion| completion::run(&ctx.cfg, &ctx.store, c);
            if let Err(e2) = t.abort(&complete) {
                tracing::warn!("site {}: rolling back the failed deploy: {e2}", site.siteid);
            }
        }
        return Err(e);
    }
    crate::fault::point("deploy.before_apache");
    if let (Serve::Lkc { host }, false) = (&done.serve, done.cert_changed) {
        done.cert_changed = renewed_behind_apache(ctx, host);
    }
    let completion = Completion {
        stash: done.stash_later,
        store_site: Some(site.without_tls_material()),
        ..Default::default()
    };
    let new_certificate = done.cert_changed && matches!(done.serve, Serve::Lkc { .. });
    let change = VhostChange {
        serve: &done.serve,
        okc: done.okc,
        new_certificate,
        completion: Some(completion),
        rollback,
    };
    apply_apache(ctx, rec, site, change, interim.txn)?;
    ctx.install_certbot_hook();
    Ok(Outcome {
        siteid: site.siteid.clone(),
        hostname: site.hostname.to_string(),
        serve: done.serve,
        pending: done.pending,
        plan,
    })
}

/// What a deploy's steps did so far ([`run_actions`]).
struct Done {
    serve: Serve,
    /// Why provisioning failed: the site is pending.
    pending: Option<String>,
    okc: OkcFiles,
    stash_later: Vec<String>,
    cert_changed: bool,
}

/// What undoes the store side if the deploy is rolled back: a lineage it
/// adds for a name the site did not serve before is stashed.
fn deploy_rollback(
    ctx: &Ctx,
    site: &Site,
    current: &decide::Current,
    plan: &Plan,
) -> Option<Completion> {
    let host = site.hostname.to_string();
    let adds =
        plan.actions.iter().any(|a| matches!(a, Action::Unstash { host: h } | Action::ImportCarried { host: h } | Action::Provision { host: h } if *h == host));
    let served_before = matches!(current, decide::Current::Lkc { host: h } if *h == host);
    (adds && !served_before && !ctx.store.has(&host, Place::Live))
        .then(|| Completion { stash: vec![host.clone()], ..Default::default() })
}

/// The plan's actions in order, up to a failed provisioning (the site is
/// then pending and served with the plan's fallback).
fn run_actions<'c>(
    ctx: &'c Ctx,
    rec: &Recovered,
    site: &Site,
    account: Option<String>,
    plan: &Plan,
    interim: &mut Interim<'c>,
    done: &mut Done,
) -> Result<()> {
    for a in &plan.actions {
        match a {
            Action::StashLive { host } => done.stash_later.push(host.clone()),
            Action::DeleteStash { host } => {
                ctx.progress(&format!("{host}: deleting the stashed certificate"));
                ctx.store.delete_stash(host)?;
            }
            Action::Unstash { host } => {
                ctx.progress(&format!("{host}: unstashing the certificate (no new issuance)"));
                let account = stash_account(ctx, host).or_else(|| provision::resolve_account(ctx));
                let params = provision::renewal_params(ctx, site, account);
                ctx.store.unstash(host, &params)?;
                done.cert_changed = true;
            }
            Action::ImportCarried { host } => {
                import_carried(ctx, site, host, account.clone())?;
                done.cert_changed = true;
            }
            Action::Provision { host } => {
                let fallback = plan.on_failure.clone().unwrap_or(Serve::Http);
                match provision_step(ctx, rec, site, host, &fallback, interim)? {
                    None => done.cert_changed = true,
                    Some(why) => {
                        done.pending = Some(why);
                        done.serve = fallback;
                        break;
                    }
                }
            }
            Action::RemoveOkc if done.okc == OkcFiles::Keep => done.okc = OkcFiles::Remove,
            Action::RemoveOkc => {}
            Action::WriteOkc => done.okc = OkcFiles::Write,
        }
    }
    Ok(())
}

/// Store the LKC the Site JSON carries as a new version of `host`'s lineage.
fn import_carried(ctx: &Ctx, site: &Site, host: &str, account: Option<String>) -> Result<()> {
    let Tls::LetsEncrypt { carried: Some(carried), .. } = &site.tls else {
        return Err(Error::failed("internal: import without a carried certificate"));
    };
    ctx.progress(&format!("{host}: importing the certificate carried in the Site JSON"));
    let account = account.or_else(|| provision::resolve_account(ctx));
    let params = provision::renewal_params(ctx, site, account);
    // The bytes came from the Site JSON: material that cannot be
    // stored is the input's fault.
    let invalid = |e: StoreError| match e {
        StoreError::Unusable { why, .. } => {
            Error::invalid(format!("site {}: tls: {why}", site.siteid))
        }
        e => e.into(),
    };
    let version =
        NewVersion::from_key_and_fullchain(&carried.key, &carried.fullchain).map_err(invalid)?;
    ctx.store.add_version(host, &version, &params).map_err(invalid)?;
    Ok(())
}

/// Obtain a certificate for `host` now; `Some(why)` when provisioning failed
/// (the site is pending: `renew` retries it, backing off).
fn provision_step<'c>(
    ctx: &'c Ctx,
    rec: &Recovered,
    site: &Site,
    host: &str,
    fallback: &Serve,
    interim: &mut Interim<'c>,
) -> Result<Option<String>> {
    // Apache refusing the challenge vhost is no provisioning
    // failure: the deploy fails as it is (undone), with no back-off.
    // The stateless answer needs the account: with one stored,
    // the session is opened first (no registration, nothing
    // written); without, only once the challenge vhost is up,
    // so a deploy Apache refuses registers nothing. The CA
    // down is a provisioning failure (pending), not the deploy's.
    let stored =
        accounts::load(&ctx.cfg.letsencrypt_dir, &ctx.cfg.acme_server).ok().flatten().is_some();
    let early = stored.then(|| provision::Session::open(ctx, &ctx.cfg.acme_server));
    let ready = early.as_ref().and_then(|r| r.as_ref().ok());
    bring_up_challenge_vhost(ctx, rec, site, host, fallback, interim, ready)?;
    let session = early.unwrap_or_else(|| provision::Session::open(ctx, &ctx.cfg.acme_server));
    let res = session.and_then(|s| provision_now(ctx, &s, site, host));
    record_backoff(ctx, host, &res);
    Ok(res.err().map(|e| e.to_string()))
}

/// The back-off bookkeeping of one provisioning attempt.
fn record_backoff(ctx: &Ctx, host: &str, res: &Result<()>) {
    let error = res.as_ref().err().map(|e| format!("provisioning failed: {e}"));
    crate::backoff_file::record(&ctx.cfg, host, error.as_deref().map_or(Ok(()), Err));
}

/// A lineage renewed behind Apache's back (by certbot, say) is served
/// only after a reload: does Apache serve an older certificate of `host`
/// than the live one?
fn renewed_behind_apache(ctx: &Ctx, host: &str) -> bool {
    let (Some(served), Some(live)) =
        (apache::served_serial(&ctx.cfg, host), ctx.store.leaf(host, Place::Live))
    else {
        return false;
    };
    if served == live.serial {
        return false;
    }
    ctx.progress(&format!("{host}: Apache serves an older certificate (serial {served}) than live/{host} (serial {}); reloading", live.serial));
    true
}

/// Before provisioning, make sure the challenge is answered on plain http
/// for the host — by the site's own vhost, or by the stateless answer Apache
/// gives already (checked with a probe), else by bringing up the fallback's
/// vhost. That vhost is an interim step: its transaction stays open in
/// `interim` for the deploy to finish (docs/design.md, invariant 5).
fn bring_up_challenge_vhost<'c>(
    ctx: &'c Ctx,
    rec: &Recovered,
    site: &Site,
    host: &str,
    fallback: &Serve,
    interim: &mut Interim<'c>,
    session: Option<&provision::Session>,
) -> Result<()> {
    if !interim.serves_challenge && !session.is_some_and(|s| stateless_answer_served(ctx, s, host))
    {
        ctx.progress(&format!(
            "site {}: bringing up its http virtual host for the challenge",
            site.siteid
        ));
        let change = VhostChange {
            serve: fallback,
            okc: OkcFiles::Keep,
            new_certificate: false,
            completion: None,
            rollback: None,
        };
        let txn = stage_apache(ctx, rec, site, &change, interim.txn.take())?;
        interim.txn =
            Some(txn.commit_interim(&|m| ctx.progress(&format!("site {}: {m}", site.siteid)))?);
        wait_for_vhost(ctx, &site.siteid, host);
        interim.serves_challenge = true;
    }
    Ok(())
}

/// Provision with the CA (the challenge is answered).
fn provision_now(ctx: &Ctx, session: &provision::Session, site: &Site, host: &str) -> Result<()> {
    if let Some(f) = ctx.fleet()? {
        // Fleet mode: ordered once for the fleet, under the lineage lock.
        if let Some(e) = super::fleet::load_state(ctx).error {
            return Err(Error::failed(format!(
                "the fleet cannot be used ({e}); nothing is ordered without its lock"
            )));
        }
        let local = super::fleet::local_cert(ctx, host);
        super::fleet::order_exclusive(ctx, &f, host, local, std::slice::from_ref(site), |gate| {
            let (issued, account) =
                provision::issue_in(ctx, session, site, Some(gate)).map_err(|e| e.to_string())?;
            crate::fault::point("provision.issued");
            Ok((issued, provision::renewal_params(ctx, site, Some(account))))
        })
        .map_err(Error::failed)?;
        return Ok(());
    }
    let (issued, account) = provision::issue_in(ctx, session, site, None)?;
    crate::fault::point("provision.issued");
    let params = provision::renewal_params(ctx, site, Some(account));
    ctx.store.add_version(
        host,
        &NewVersion::from_key_and_fullchain(&issued.key_pem, &issued.fullchain_pem)?,
        &params,
    )?;
    Ok(())
}

/// The thumbprint of the server's stored account, if there is one.
fn account_thumbprint(ctx: &Ctx) -> Option<String> {
    super::ctx::stored_account(ctx, &ctx.cfg.acme_server).ok()??.key.thumbprint().ok()
}

/// Does Apache already give the stateless challenge answer of the session's
/// account for `host` on plain http? A probe token is asked for and the
/// answer must be `<token>.<thumbprint>`.
fn stateless_answer_served(ctx: &Ctx, session: &provision::Session, host: &str) -> bool {
    let Some(thumbprint) = session.client().ok().and_then(|c| c.key().thumbprint().ok()) else {
        return false;
    };
    let token =
        format!("site-admin-probe-{}-{}", std::process::id(), Utc::now().timestamp_micros());
    let ok = matches!(apache::http_get(&ctx.cfg, host, &format!("/.well-known/acme-challenge/{token}")), Some((200, body)) if body == format!("{token}.{thumbprint}"));
    tracing::debug!(host, ok, "the stateless challenge answer");
    ok
}

/// After a graceful reload Apache takes a moment to serve the new vhost: wait
/// (briefly) until a probe file in the site's challenge directory is served
/// for this host on the local http port. Proceeds anyway after a few seconds.
pub(super) fn wait_for_vhost(ctx: &Ctx, siteid: &str, host: &str) {
    let dir = ctx.cfg.site_wellknown(siteid).join(".well-known/acme-challenge");
    if fsutil::create_dir_all_mode(&dir, 0o755).is_err() {
        return;
    }
    let token = format!("site-admin-probe-{}", std::process::id());
    let path = dir.join(&token);
    if fsutil::atomic_write(&path, token.as_bytes(), 0o644).is_err() {
        return;
    }
    let url = format!(
        "http://{}/.well-known/acme-challenge/{token}",
        std::net::SocketAddr::new(ctx.cfg.apache.address, ctx.cfg.apache.http_port)
    );
    let client = reqwest::blocking::Client::builder()
        .timeout(std::time::Duration::from_secs(2))
        .redirect(reqwest::redirect::Policy::none())
        .build();
    let start = std::time::Instant::now();
    if let Ok(c) = client {
        while start.elapsed() < std::time::Duration::from_secs(5) {
            if let Ok(r) = c.get(&url).header("Host", apache::url_host(host)).send() {
                if r.status().is_success() && r.text().map(|t| t == token).unwrap_or(false) {
                    break;
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(25));
        }
    }
    let _ = std::fs::remove_file(&path);
}

/// `undeploy --siteid`.
pub(super) fn undeploy_command(ctx: &Ctx, siteid: &SiteId) -> Result<i32> {
    let not_deployed = || Error::invalid(format!("site {siteid} is not deployed"));
    // Refuse an unknown site before taking the lock (which creates its files).
    facts::load_stored(&ctx.cfg, siteid)?.ok_or_else(not_deployed)?;
    let locked = ctx.lock(&format!("undeploy {siteid}"))?;
    let stored = facts::load_stored(&ctx.cfg, siteid)?.ok_or_else(not_deployed)?;
    let f =
        facts::gather(&ctx.cfg, &ctx.store, &stored, Some(&stored), Event::Undeploy, Utc::now());
    let plan = decide::decide(&f).map_err(|r| Error::invalid(r.0))?;
    ctx.progress(&format!("site {siteid} ({}): {}", stored.hostname, plan.reason));
    // Apache first: once it no longer points at the files, they can move.
    let mut txn = apache::Transaction::begin(&ctx.cfg, &locked.recovered)?;
    txn.remove(&ctx.cfg.vhost_file(siteid))?;
    if plan.actions.contains(&Action::RemoveOkc) || stored.tls != Tls::Http {
        let p = ctx.cfg.okc_paths(siteid);
        txn.remove(&p.key)?;
        txn.remove(&p.crt)?;
        txn.remove(&p.cacrt)?;
    }
    let completion = Completion {
        stash: plan
            .actions
            .iter()
            .filter_map(
                |a| if let Action::StashLive { host } = a { Some(host.clone()) } else { None },
            )
            .collect(),
        remove_site: Some(siteid.to_string()),
        remove_dirs: vec![ctx.cfg.site_wellknown(siteid)],
        ..Default::default()
    };
    txn.set_completion(completion)?;
    txn.commit(false, &|m| ctx.progress(&format!("site {siteid}: {m}")), &|c| {
        completion::run(&ctx.cfg, &ctx.store, c)
    })?;
    ctx.progress(&format!("site {siteid} ({}) undeployed", stored.hostname));
    if ctx.json {
        ctx.print_json(&UndeployDoc {
            siteid,
            hostname: &stored.hostname,
            undeployed: true,
            actions: &plan.actions,
            reason: &plan.reason,
        })?;
    }
    Ok(0)
}

/// An account a backup carries, with its key loaded (so it was checked).
pub(super) type CheckedAccount = (accounts::Carried, crate::acme::AccountKey);

/// A backup as `restore` reads it: each site validated as a deploy's Site
/// JSON, each carried account checked.
#[derive(Debug)]
pub(super) struct Restorable {
    pub sites: Vec<Site>,
    pub accounts: Vec<CheckedAccount>,
}

/// The Site JSONs of a backup file (see [`Backup`]: an envelope, a bare
/// array, or one site) and the ACME accounts it carries, each checked: its
/// key loads and is the one its id names.
pub(super) fn read_backup(path: &Path) -> Result<Restorable> {
    let text = fsutil::read_user_file(path)
        .map_err(|e| Error::invalid(format!("backup {}: {e}", path.display())))?;
    let doc = Backup::read(&text)
        .map_err(|e| Error::invalid(format!("backup {}: {e}", path.display())))?;
    let mut carried = Vec::new();
    for (i, a) in doc.accounts.unwrap_or_default().into_iter().enumerate() {
        let key = accounts::check_carried(&a).map_err(|why| {
            Error::invalid(format!(
                "backup {}: account #{} ({} of {}): {why}",
                path.display(),
                i + 1,
                a.id.escape_debug(),
                a.server.escape_debug()
            ))
        })?;
        carried.push((a, key));
    }
    let mut sites = Vec::new();
    for (i, v) in doc.sites.iter().enumerate() {
        let s = site::site_from_value(v)
            .map_err(|e| e.context(format!("backup {} site #{}", path.display(), i + 1)))?;
        sites.push(s);
    }
    Ok(Restorable { sites, accounts: carried })
}

/// `restore --in FILE [--siteid ...]`: validate everything first, then deploy each.
pub(super) fn restore_command(ctx: &Ctx, input: &Path, only: &[SiteId]) -> Result<i32> {
    let Restorable { sites, accounts: carried } = read_backup(input)?;
    let sites = chosen_sites(input, sites, only)?;
    let locked = ctx.lock(&format!("restore {}", input.display()))?;
    check_restorable(ctx, input, &sites)?;
    let hints = install_carried_accounts(ctx, &sites, &carried)?;
    let mut outs = Vec::new();
    let mut failed = 0;
    for (s, hint) in sites.iter().zip(&hints) {
        let hint = hint.map(|(a, _)| a.id.clone());
        match deploy_one_with(ctx, &locked.recovered, s, hint) {
            Ok(o) => outs.push(o),
            Err(e) => {
                tracing::error!("site {} ({}): restore failed: {e}", s.siteid, s.hostname);
                failed += 1;
            }
        }
    }
    report(ctx, &outs)?;
    if failed > 0 {
        return Err(Error::failed(format!(
            "{failed} of {} sites could not be restored",
            sites.len()
        )));
    }
    Ok(0)
}

/// The backup's sites `restore` deploys (all, or those of `only`); refused
/// when none, or when two share a site id or a hostname.
fn chosen_sites(input: &Path, mut sites: Vec<Site>, only: &[SiteId]) -> Result<Vec<Site>> {
    for id in only {
        if !sites.iter().any(|s| &s.siteid == id) {
            return Err(Error::invalid(format!("backup {}: holds no site {id}", input.display())));
        }
    }
    if !only.is_empty() {
        sites.retain(|s| only.contains(&s.siteid));
    }
    if sites.is_empty() {
        return Err(Error::invalid(format!("backup {}: holds no site", input.display())));
    }
    for (i, a) in sites.iter().enumerate() {
        for b in &sites[i + 1..] {
            if a.siteid == b.siteid {
                return Err(Error::invalid(format!(
                    "backup {}: site {} appears twice",
                    input.display(),
                    a.siteid
                )));
            }
            if a.hostname == b.hostname {
                return Err(Error::invalid(format!(
                    "backup {}: sites {} and {} share the hostname {}",
                    input.display(),
                    a.siteid,
                    b.siteid,
                    a.hostname
                )));
            }
        }
    }
    Ok(sites)
}

/// What must hold of every site before any is restored (the lock is held):
/// its hostname is free, the CA can issue for it, its own certificate
/// matches its key.
fn check_restorable(ctx: &Ctx, input: &Path, sites: &[Site]) -> Result<()> {
    let all = facts::all_stored(&ctx.cfg)?;
    for s in sites {
        facts::check_hostname_free(&all, s)?;
        if let Some(why) = site::ip_refused_by(s, &ctx.cfg.acme_server) {
            return Err(Error::invalid(format!(
                "backup {}: site {}: {why}",
                input.display(),
                s.siteid
            )));
        }
        if let Tls::Own(Some(OwnCert { key, crt, .. })) = &s.tls {
            let kc = crate::certs::KeyCert::parse(key, crt)
                .map_err(|e| Error::invalid(format!("site {}: tls: {e}", s.siteid)))?;
            if !kc.key_matches {
                return Err(Error::invalid(format!(
                    "site {}: tls.key does not match the certificate in tls.crt",
                    s.siteid
                )));
            }
        }
    }
    Ok(())
}

/// The accounts the lineages renew with come along: the one a restored
/// site's carried certificate names (its host, this device's server) is
/// installed when this device lacks it, and named by the lineage. No other
/// carried account is installed (other servers, sites not restored). The
/// account of each site, in order.
fn install_carried_accounts<'a>(
    ctx: &Ctx,
    sites: &[Site],
    carried: &'a [CheckedAccount],
) -> Result<Vec<Option<&'a CheckedAccount>>> {
    let hints: Vec<Option<&CheckedAccount>> = sites
        .iter()
        .map(|s| {
            let carries = matches!(s.tls, Tls::LetsEncrypt { carried: Some(_), .. });
            carried.iter().find(|(a, _)| {
                carries
                    && a.server == ctx.cfg.acme_server
                    && a.hosts.iter().any(|h| h == s.hostname.as_str())
            })
        })
        .collect();
    for (i, (a, key)) in hints.iter().enumerate().filter_map(|(i, h)| h.map(|h| (i, h))) {
        if hints[..i].iter().flatten().any(|(b, _)| b.id == a.id) {
            continue;
        }
        if accounts::install(&ctx.cfg.letsencrypt_dir, a, key)? {
            ctx.progress(&format!(
                "installed the ACME account {} of {} carried by the backup",
                a.id, a.server
            ));
        }
    }
    Ok(hints)
}
