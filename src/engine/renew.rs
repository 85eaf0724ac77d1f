//! `site-admin renew`, the renewal timer's entry point (docs/design.md,
//! "When a lineage renews"): gather the facts, let [`crate::renewal::plan`]
//! decide, run the jobs (a bounded number at a time), bring sites to https,
//! reload Apache once, run the hooks, and report — one typed [`Report`],
//! rendered as text or as JSON.

use super::ctx::Ctx;
use super::facts;
use super::owed;
pub(crate) use super::owed::RevocationEntry;
use super::provision;
use super::serving::serve_changed;
use super::ts;
use crate::apache::Recovered;
use crate::backoff_file;
use crate::error::{Error, Result};
use crate::hooks;
use crate::renewal::{self, DueBy, Job, LineageFacts, PassFacts, PendingFacts, Skip};
use crate::revocations;
use crate::site::Site;
use crate::store::{Material, NewVersion, Place, RenewalParams};
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

/// How many renewals run at once.
pub(crate) const CONCURRENCY: usize = 3;

/// What happened to one lineage or pending site.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(tag = "status", rename_all = "snake_case")]
pub(crate) enum Status {
    NotDue {
        #[serde(serialize_with = "super::ser_ts")]
        due: DateTime<Utc>,
        /// What decides when: the ARI window, or the backstop.
        due_by: DueBy,
        /// When ARI is asked again (not before).
        #[serde(skip_serializing_if = "Option::is_none", serialize_with = "super::ser_ts_opt")]
        next_ari_check: Option<DateTime<Utc>>,
        /// Why ARI's passed window did not make it due (renewal rule 9).
        #[serde(skip_serializing_if = "Option::is_none")]
        note: Option<String>,
    },
    /// Failed `failures` times in a row; not tried before `next_attempt`.
    BackingOff {
        failures: u32,
        #[serde(serialize_with = "super::ser_ts")]
        next_attempt: DateTime<Utc>,
        last_error: String,
    },
    /// Dry run: it would be renewed (provisioned, for a pending site).
    WouldRenew {
        #[serde(skip_serializing_if = "Option::is_none", serialize_with = "super::ser_ts_opt")]
        due: Option<DateTime<Utc>>,
        due_by: DueBy,
    },
    WouldProvision,
    Renewed {
        #[serde(serialize_with = "super::ser_ts")]
        new_not_after: DateTime<Utc>,
        due_by: DueBy,
        /// The ARI CertID of the certificate it replaced, if the order named it.
        #[serde(skip_serializing_if = "Option::is_none")]
        replaced: Option<String>,
        /// ARI's explanation of the window that made it due.
        #[serde(skip_serializing_if = "Option::is_none")]
        explanation_url: Option<String>,
    },
    Provisioned {
        #[serde(serialize_with = "super::ser_ts")]
        new_not_after: DateTime<Utc>,
    },
    /// Fleet mode: a peer renewed it; its certificate was taken.
    PeerRenewed {
        #[serde(serialize_with = "super::ser_ts")]
        new_not_after: DateTime<Utc>,
        renewed_by: String,
    },
    /// Fleet mode: due, but the fleet cannot be used, so it is not
    /// ordered without the lock (`fleet.isolated_renew_below` did not apply).
    FleetUnavailable {
        error: String,
    },
    Failed {
        error: String,
    },
}

/// One row of the report.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Entry {
    pub host: String,
    pub siteid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "super::ser_ts_opt")]
    pub old_not_after: Option<DateTime<Utc>>,
    #[serde(flatten)]
    pub status: Status,
}

impl Entry {
    fn is_success(&self) -> bool {
        matches!(
            self.status,
            Status::Renewed { .. } | Status::Provisioned { .. } | Status::PeerRenewed { .. }
        )
    }
}

/// The report printed with `--json` and given to hooks on stdin.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Report {
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
    /// The owed revocations this pass tried or left.
    pub revocations: Vec<RevocationEntry>,
    /// Hosts a certificate of which the CA confirmed revoked in this pass.
    pub revoked_domains: Vec<String>,
    /// Hosts still owed a revocation after this pass (the exit is 1).
    pub revocation_owed: Vec<String>,
    /// The owed revocations could not be read: why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revocation_error: Option<String>,
    /// Due lineages and pending sites left for later: backing off.
    pub backing_off_domains: Vec<String>,
    /// Why the pass failed (exit 1), when it did: renewal rule 10.
    pub incomplete: Option<String>,
    /// Fleet mode: what the sync before the pass did, or the fleet error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fleet: Option<FleetReport>,
    pub hooks: Vec<hooks::HookRun>,
}

/// The fleet part of a renew report.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct FleetReport {
    pub device: String,
    /// Hosts whose fleet certificate the sync took.
    pub taken: Vec<String>,
    /// Hosts whose certificate the sync pushed to the fleet.
    pub pushed: Vec<String>,
    /// The fleet could not be reached: why, and since when.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
}

impl Report {
    fn count(&self, f: impl Fn(&Status) -> bool) -> usize {
        self.lineages.iter().filter(|e| f(&e.status)).count()
    }

    /// The one-line summary on stderr.
    pub(crate) fn summary(&self) -> String {
        let dry = if self.dry_run {
            format!(
                " (dry run: {} would be renewed)",
                self.count(|s| matches!(s, Status::WouldRenew { .. } | Status::WouldProvision))
            )
        } else {
            String::new()
        };
        format!(
            "renew: {} renewed, {} provisioned, {} failed, {} backing off, {} not due, {} expired stash entries deleted, {} revoked, {} revocations owed{}{dry}",
            self.count(|s| matches!(s, Status::Renewed { .. })),
            self.count(|s| matches!(s, Status::Provisioned { .. })),
            self.count(|s| matches!(s, Status::Failed { .. })),
            self.count(|s| matches!(s, Status::BackingOff { .. })),
            self.count(|s| matches!(s, Status::NotDue { .. })),
            self.stash_deleted.len(),
            self.revocations.iter().filter(|r| r.status == "revoked").count(),
            self.revocations.iter().filter(|r| r.status != "revoked").count(),
            if self.apache_error.is_some() { "; the Apache step FAILED" } else { "" },
        )
    }
}

/// What the pass starts from, read once: the stored sites, the back-off
/// state (as read, and as the fleet's records merged into it), the owed
/// revocations (or why they could not be read).
struct Start {
    sites: Vec<Site>,
    backoff_read: crate::backoff::State,
    backoff: crate::backoff::State,
    owed: revocations::State,
    revocation_error: Option<String>,
}

/// Read the state the pass starts from; under the lock, first take out of
/// service each served certificate owed a revocation without replacement
/// (rule 9: a revoke interrupted; its site is pending then, and provisioned
/// with a new key below).
fn start(ctx: &Ctx, rec: Option<&Recovered>) -> Result<Start> {
    let sites = facts::all_stored(&ctx.cfg)?;
    let backoff = backoff_file::load(&ctx.cfg.state_dir());
    let (owed, revocation_error) = match revocations::load(&ctx.cfg.state_dir()) {
        Ok(st) => (st, None),
        Err(e) => {
            tracing::error!("{e}");
            (revocations::State::default(), Some(e.to_string()))
        }
    };
    if let Some(rec) = rec {
        owed::retire_owed(ctx, rec, &sites, &owed);
    }
    Ok(Start { backoff_read: backoff.clone(), sites, backoff, owed, revocation_error })
}

/// What the fleet sync before the pass came to.
struct Synced {
    report: FleetReport,
    /// Hosts whose fleet certificate the sync took.
    taken: Vec<String>,
    /// The fleet cannot be used: why.
    down: Option<super::fleet::SyncError>,
}

/// Fleet mode: the fleet's records first (a peer's renewal is taken, not
/// repeated), read from etcd now — never a cached copy; its back-off and
/// ARI records merged into this device's.
fn sync_fleet(
    ctx: &Ctx,
    f: &super::fleet::Fleet,
    rec: &Recovered,
    sites: &[Site],
    backoff: &mut crate::backoff::State,
) -> Synced {
    match super::fleet::sync(ctx, f, rec, sites) {
        Ok(r) => {
            for e in &r.errors {
                tracing::warn!("fleet: {}: {}", e.key, e.error);
            }
            // Back-off is the fleet's: a failure on one device holds every device back.
            if let Err(e) = super::fleet::merge_backoff(ctx, f, sites, backoff) {
                tracing::warn!("fleet: reading the shared back-off: {e}");
            }
            // ARI is asked once for the fleet: a peer's answer is this device's.
            if let Err(e) = super::fleet::merge_ari(ctx, f) {
                tracing::warn!("fleet: reading the shared ARI state: {e}");
            }
            Synced {
                taken: r.taken.clone(),
                report: FleetReport {
                    device: r.device,
                    taken: r.taken,
                    pushed: r.pushed,
                    error: None,
                    since: None,
                },
                down: None,
            }
        }
        Err(e) => {
            let st = super::fleet::load_state(ctx);
            tracing::error!("the fleet cannot be used: {e}; serving what is on disk, ordering nothing without the fleet's lock");
            Synced {
                report: FleetReport {
                    device: f.cfg.device_id.clone(),
                    taken: vec![],
                    pushed: vec![],
                    error: Some(e.message.clone()),
                    since: st.since.map(ts),
                },
                taken: vec![],
                down: Some(e),
            }
        }
    }
}

/// The facts of one pass, from the store and the stored sites — each conf
/// and certificate read once — and the lineages whose ARI check has come.
fn gather(
    ctx: &Ctx,
    sites: &[Site],
    now: DateTime<Utc>,
    force: bool,
    backoff: &crate::backoff::State,
    owed: &revocations::State,
) -> Gathered {
    let site_by_host: BTreeMap<&str, &Site> =
        sites.iter().map(|s| (s.hostname.as_str(), s)).collect();
    let mut ari_due = Vec::new();
    let mut next_ari_check = BTreeMap::new();
    let mut lineages = Vec::new();
    for name in ctx.store.names_with_conf(Place::Live) {
        let site = site_by_host.get(name.as_str()).copied();
        let (l, check, retry_after) = lineage_facts(ctx, name, site, owed, now);
        if let Some(t) = retry_after {
            next_ari_check.insert(l.host.clone(), t);
        }
        ari_due.extend(check);
        lineages.push(l);
    }
    let pending = sites
        .iter()
        .filter(|s| facts::is_pending(&ctx.store, s))
        .map(|s| PendingFacts {
            host: s.hostname.to_string(),
            siteid: s.siteid.to_string(),
            webroot: ctx.cfg.site_wellknown(&s.siteid),
            profile: s.profile_wish(ctx.cfg.acme_profile.as_deref()),
        })
        .collect();
    let stash: Vec<(String, DateTime<Utc>, DateTime<Utc>)> = ctx
        .store
        .names_with_links(Place::Stashed)
        .into_iter()
        .filter_map(|n| ctx.store.leaf(&n, Place::Stashed).map(|c| (n, c.not_before, c.not_after)))
        .collect();
    // Clock plausibility from what was read already (live and stashed).
    let validity: Vec<(DateTime<Utc>, DateTime<Utc>)> = lineages
        .iter()
        .filter_map(|l| l.validity)
        .chain(stash.iter().map(|s| (s.1, s.2)))
        .collect();
    let facts = PassFacts {
        lineages,
        pending,
        stash: stash.into_iter().map(|(n, _, na)| (n, na)).collect(),
        now,
        force,
        server: ctx.cfg.acme_server.clone(),
        key_type: ctx.cfg.key_type,
        clock_plausible: crate::decide::clock_plausible(now, &validity),
        backoff: backoff.hosts.clone(),
        config: backoff_file::config_fingerprint(&ctx.cfg),
    };
    Gathered { facts, ari_due, next_ari_check }
}

/// One lineage's facts, its ARI check if it has come (rule 5), and when
/// ARI is to be asked again as recorded.
fn lineage_facts(
    ctx: &Ctx,
    name: String,
    site: Option<&Site>,
    owed: &revocations::State,
    now: DateTime<Utc>,
) -> (LineageFacts, Option<super::ari::Candidate>, Option<DateTime<Utc>>) {
    let conf = ctx.store.lineage_conf(&name, Place::Live).unwrap_or_default();
    // The certificate alone decides whether it is due; the key is
    // read only for the lineages that are renewed (fast no-op passes).
    let leaf = ctx.store.leaf(&name, Place::Live);
    let validity = leaf.as_ref().map(|c| (c.not_before, c.not_after));
    let cert_id = leaf.as_ref().and_then(|c| c.ari_id.clone());
    let server = conf.server.clone().unwrap_or_else(|| ctx.cfg.acme_server.clone());
    let check = renewal::ari_check_due(
        cert_id.as_deref(),
        validity.map(|v| v.1),
        conf.ari.retry_after,
        now,
    )
    .then(|| super::ari::Candidate {
        host: name.clone(),
        server,
        cert_id: cert_id.clone().unwrap_or_default(),
        state: conf.ari.clone(),
    });
    let facts = LineageFacts {
        siteid: site.map(|s| s.siteid.to_string()),
        has_links: ctx.store.has(&name, Place::Live),
        validity,
        renew_before_expiry: conf.renew_before_expiry,
        webroot: conf.webroot.or_else(|| site.map(|s| ctx.cfg.site_wellknown(&s.siteid))),
        server: conf.server,
        key_type: conf.key_type,
        profile: conf.profile,
        ari: renewal::ari_facts(&conf.ari, cert_id.as_deref()),
        replaces: renewal::replaces(cert_id.as_deref(), conf.ari.offered),
        revocation_owed: leaf
            .as_ref()
            .and_then(|c| owed.owed.get(&c.serial))
            .map(|o| o.host == name && !o.no_replace)
            .unwrap_or(false),
        host: name,
    };
    (facts, check, conf.ari.retry_after)
}

/// What [`gather`] found.
struct Gathered {
    facts: PassFacts,
    /// The lineages whose ARI check has come.
    ari_due: Vec<super::ari::Candidate>,
    /// When ARI is asked about each lineage next, as recorded.
    next_ari_check: BTreeMap<String, DateTime<Utc>>,
}

/// Ask ARI (not in a dry run) only about the lineages whose next check has
/// come, so a pass with every check ahead sends no request. The answers
/// make new facts; the gathered ones are not edited.
fn refresh_ari(
    ctx: &Ctx,
    g: Gathered,
    now: DateTime<Utc>,
    share: Option<&super::fleet::Fleet>,
) -> Gathered {
    if g.ari_due.is_empty() {
        return g;
    }
    let answers = super::ari::refresh(ctx, g.ari_due, now);
    if let Some(f) = share {
        super::fleet::publish_ari(f, &answers);
    }
    let answered = answers.iter().filter_map(|(h, st)| st.retry_after.map(|t| (h.clone(), t)));
    Gathered {
        facts: renewal::with_ari_answers(&g.facts, &answers),
        ari_due: Vec::new(),
        next_ari_check: g.next_ari_check.into_iter().chain(answered).collect(),
    }
}

/// The report rows of the lineages the plan leaves alone.
fn skipped_entries(
    plan: &renewal::Plan,
    next_ari_check: &BTreeMap<String, DateTime<Utc>>,
    backoff: &crate::backoff::State,
) -> Vec<Entry> {
    plan.skipped
        .iter()
        .map(|(host, siteid, skip)| {
            let (old_not_after, status) = match skip {
                Skip::NotDue { due, due_by, not_after, ari_held } => (
                    Some(*not_after),
                    Status::NotDue {
                        due: *due,
                        due_by: *due_by,
                        next_ari_check: next_ari_check.get(host).copied(),
                        note: ari_held.then(|| {
                            format!(
                                "the ARI window has passed, but the certificate was issued less than a day (or a tenth of its lifetime) ago: ARI renews it from {}",
                                ts(*due)
                            )
                        }),
                    },
                ),
                Skip::Broken { why } => (None, Status::Failed { error: why.clone() }),
                Skip::BackingOff { failures, next_attempt } => (
                    None,
                    Status::BackingOff {
                        failures: *failures,
                        next_attempt: *next_attempt,
                        last_error: backoff
                            .hosts
                            .get(host)
                            .map(|f| f.last_error.clone())
                            .unwrap_or_default(),
                    },
                ),
            };
            Entry { host: host.clone(), siteid: siteid.clone(), old_not_after, status }
        })
        .collect()
}

/// Say what the plan noticed: stash entries kept because the clock cannot
/// be right, and back-off records ignored.
fn warn_plan(plan: &renewal::Plan, now: DateTime<Utc>) {
    if !plan.kept_expired_stash.is_empty() {
        tracing::warn!(
            "the clock says {}, later than every certificate on this device by more than a lifetime: it cannot be right, so the expired-looking stash entries of {} are kept",
            ts(now),
            plan.kept_expired_stash.join(", ")
        );
    }
    for (host, verdict, next) in &plan.ignored_backoff {
        let why = match verdict {
            crate::backoff::Verdict::Implausible => {
                format!("its next attempt ({}) lies further ahead than the longest back-off step, so it was recorded while the clock was ahead", ts(*next))
            }
            _ => "the configuration it failed under (ACME server, EAB, contact, CA bundle, profile or key type) has changed since".to_string(),
        };
        tracing::warn!("{host}: ignoring its back-off: {why}; trying now");
    }
}

/// A dry run's report: what would be renewed or provisioned, and the
/// revocations owed; nothing done.
fn dry_run_report(plan: renewal::Plan, mut entries: Vec<Entry>, start: Start) -> Report {
    for j in plan.jobs {
        let status = if j.pending {
            Status::WouldProvision
        } else {
            Status::WouldRenew { due: j.due, due_by: j.due_by }
        };
        entries.push(Entry {
            host: j.host,
            siteid: j.siteid,
            old_not_after: j.old_not_after,
            status,
        });
    }
    let revocations = start
        .owed
        .owed
        .values()
        .map(|o| owed::revocation_entry(o, "owed", None))
        .collect::<Vec<_>>();
    Report {
        event: "renew",
        dry_run: true,
        lineages: entries,
        renewed_domains: vec![],
        failed_domains: vec![],
        stash_deleted: plan.delete_stash,
        reloaded: false,
        apache_error: None,
        not_served: vec![],
        revocation_owed: owed::hosts_of(&revocations),
        revocations,
        revoked_domains: vec![],
        revocation_error: start.revocation_error,
        backing_off_domains: vec![],
        incomplete: None,
        fleet: None,
        hooks: vec![],
    }
}

/// `renew [--force] [--dry-run]`: gather → plan → execute → report.
pub(crate) fn renew_command(ctx: &Ctx, force: bool, dry_run: bool) -> Result<i32> {
    // A dry run takes no lock and changes nothing.
    let locked = if dry_run { None } else { Some(ctx.lock("renew")?) };
    let rec = locked.as_ref().map(|l| &l.recovered);
    let now = Utc::now();
    let mut start = start(ctx, rec)?;
    let fleet = if dry_run { None } else { ctx.fleet()? };
    let synced = match (fleet.as_deref(), rec) {
        (Some(f), Some(rec)) => Some(sync_fleet(ctx, f, rec, &start.sites, &mut start.backoff)),
        _ => None,
    };
    // The fleet, when it can be used: its lineage locks, its records.
    let usable = fleet.as_deref().filter(|_| synced.as_ref().is_none_or(|s| s.down.is_none()));
    let gathered = gather(ctx, &start.sites, now, force, &start.backoff, &start.owed);
    let gathered = if dry_run { gathered } else { refresh_ari(ctx, gathered, now, usable) };
    let plan = renewal::plan(&gathered.facts);
    let entries = skipped_entries(&plan, &gathered.next_ari_check, &start.backoff);
    warn_plan(&plan, now);
    if dry_run {
        return finish(ctx, dry_run_report(plan, entries, start));
    }
    let below = fleet.as_ref().and_then(|f| f.cfg.isolated_renew_below);
    let down = synced.as_ref().and_then(|s| s.down.as_ref());
    let ran = execute(ctx, plan, &gathered.facts, entries, &mut start, usable, (down, below))?;
    let mut report = serve_and_report(ctx, rec, ran, start, synced, usable, now);
    // The hooks run whatever happened once renewals began.
    report.hooks = run_all_hooks(ctx, &report);
    finish(ctx, report)
}

/// What [`execute`] did: every row of the report, the stash entries deleted.
struct Ran {
    entries: Vec<Entry>,
    stash_deleted: Vec<String>,
}

/// Carry out the plan: delete the expired stash entries, hold what the
/// fleet's absence holds (rule 12), run the jobs, record each outcome in the
/// back-off state (shared with the fleet). `entries`: the skipped rows.
fn execute(
    ctx: &Ctx,
    plan: renewal::Plan,
    facts: &PassFacts,
    mut entries: Vec<Entry>,
    start: &mut Start,
    fleet: Option<&super::fleet::Fleet>,
    (down, below): (Option<&super::fleet::SyncError>, Option<u32>),
) -> Result<Ran> {
    for j in &plan.jobs {
        if let Some(old) = &j.moved_from {
            tracing::warn!("{}: moving from the ACME server {old} to {} (the configured server), as of this renewal", j.host, j.server);
        }
    }
    let mut stash_deleted = Vec::new();
    for name in &plan.delete_stash {
        ctx.progress(&format!("{name}: deleting the expired stashed certificate"));
        ctx.store.delete_stash(name)?;
        stash_deleted.push(name.clone());
    }
    for j in &plan.jobs {
        if let Some(u) = &j.ari_explanation {
            tracing::warn!("{}: the CA asks for an early renewal: {u}", j.host);
        }
    }
    // Fleet mode with the fleet out of reach: nothing is ordered without
    // the lineage lock, unless the emergency rule says the certificate
    // would expire first (`fleet.isolated_renew_below`); the certificate
    // renewed so is pushed when the fleet is back (newest usable wins).
    let jobs = match down {
        None => plan.jobs,
        Some(e) => {
            let (go, held) =
                renewal::split_without_fleet(plan.jobs, facts.now, below, e.unreachable);
            for j in &go {
                tracing::warn!("{}: the fleet cannot be used and the certificate expires within fleet.isolated_renew_below: renewing on this device alone", j.host);
            }
            entries.extend(held.into_iter().map(|j| Entry {
                host: j.host,
                siteid: j.siteid,
                old_not_after: j.old_not_after,
                status: Status::FleetUnavailable {
                    error: format!("the fleet cannot be used ({e}); not ordered without its lock"),
                },
            }));
            go
        }
    };
    for (job, res) in run_jobs(ctx, jobs, fleet, &start.sites) {
        entries.push(job_entry(job, res, &mut start.backoff, &facts.config));
    }
    if let Some(f) = fleet {
        let touched: Vec<String> = entries
            .iter()
            .filter(|e| e.is_success() || matches!(e.status, Status::Failed { .. }))
            .map(|e| e.host.clone())
            .collect();
        super::fleet::publish_backoff(f, &start.backoff, &touched);
    }
    backoff_file::save_if_changed(&ctx.cfg.state_dir(), &start.backoff_read, &start.backoff);
    Ok(Ran { entries, stash_deleted })
}

/// The report row of one job, its outcome recorded in the back-off state.
fn job_entry(job: Job, res: JobResult, backoff: &mut crate::backoff::State, config: &str) -> Entry {
    let status = match res {
        Ok(Done { not_after: na, peer: Some(by), .. }) => {
            backoff_file::note(backoff, &job.host, Ok(()), config);
            Status::PeerRenewed { new_not_after: na, renewed_by: by }
        }
        Ok(Done { not_after: na, replaced, peer: None }) => {
            backoff_file::note(backoff, &job.host, Ok(()), config);
            if job.pending {
                Status::Provisioned { new_not_after: na }
            } else {
                Status::Renewed {
                    new_not_after: na,
                    due_by: job.due_by,
                    replaced,
                    explanation_url: job.ari_explanation.clone(),
                }
            }
        }
        Err(err) => {
            let error =
                format!("{} failed: {err}", if job.pending { "provisioning" } else { "renewal" });
            backoff_file::note(backoff, &job.host, Err(&error), config);
            Status::Failed { error }
        }
    };
    Entry { host: job.host, siteid: job.siteid, old_not_after: job.old_not_after, status }
}

/// After the jobs: every Let's Encrypt site whose vhost does not serve its
/// usable live certificate goes (back) to https — a pending site just
/// provisioned, and one that fell back to http while its expired lineage
/// waited for renew; never one whose certificate is owed a revocation
/// without replacement. Apache is reloaded once; then the owed revocations
/// are sent (once the replacements are served), and the report is made.
fn serve_and_report(
    ctx: &Ctx,
    rec: Option<&Recovered>,
    ran: Ran,
    mut start: Start,
    synced: Option<Synced>,
    fleet: Option<&super::fleet::Fleet>,
    now: DateTime<Utc>,
) -> Report {
    let Ran { entries, stash_deleted } = ran;
    let hosts = |f: fn(&Entry) -> bool| -> Vec<String> {
        entries.iter().filter(|e| f(e)).map(|e| e.host.clone()).collect()
    };
    let mut renewed = hosts(Entry::is_success);
    for h in synced.iter().flat_map(|s| s.taken.iter()) {
        if !renewed.contains(h) {
            renewed.push(h.clone());
        }
    }
    let failed = hosts(|e| matches!(e.status, Status::Failed { .. }));
    let backing_off = hosts(|e| matches!(e.status, Status::BackingOff { .. }));
    let (reloaded, apache_error) =
        serve_changed(ctx, rec, &start.sites, &renewed, &start.owed, now);
    if let (Some(f), false) = (fleet, renewed.is_empty()) {
        super::fleet::beat(ctx, f);
    }
    ctx.install_certbot_hook();
    let not_served = renewal::not_served(&renewed, apache_error.is_some());
    // Owed revocations, once the replacements are served.
    let revocations = owed::send_due(ctx, &mut start.owed, &not_served);
    let mut revoked_domains: Vec<String> =
        revocations.iter().filter(|r| r.status == "revoked").map(|r| r.host.clone()).collect();
    revoked_domains.dedup();
    let down = synced.as_ref().and_then(|s| s.down.as_ref()).map(|e| e.to_string());
    let incomplete =
        renewal::pass_incomplete(&failed, &backing_off, apache_error.is_some(), down.as_deref());
    Report {
        event: "renew",
        dry_run: false,
        lineages: entries,
        renewed_domains: renewed,
        failed_domains: failed,
        stash_deleted,
        reloaded,
        apache_error,
        not_served,
        revocation_owed: owed::hosts_of(&revocations),
        revocations,
        revoked_domains,
        revocation_error: start.revocation_error,
        backing_off_domains: backing_off,
        incomplete,
        fleet: synced.map(|s| s.report),
        hooks: Vec::new(),
    }
}

/// Log, print, and choose the exit code.
fn finish(ctx: &Ctx, report: Report) -> Result<i32> {
    for e in &report.lineages {
        match &e.status {
            Status::Renewed { new_not_after, .. } | Status::Provisioned { new_not_after } => {
                let what = if matches!(e.status, Status::Renewed { .. }) {
                    "renewed"
                } else {
                    "provisioned"
                };
                ctx.progress(&format!("{}: {what} (valid until {new_not_after})", e.host))
            }
            Status::NotDue { note: Some(note), .. } => {
                tracing::info!("{}: not due: {note}", e.host)
            }
            Status::NotDue { due, due_by, .. } => {
                tracing::debug!("{}: not due until {due} ({due_by:?})", e.host)
            }
            Status::Failed { error } => tracing::warn!("{}: {error}", e.host),
            Status::FleetUnavailable { error } => tracing::warn!("{}: due: {error}", e.host),
            Status::PeerRenewed { new_not_after, renewed_by } => ctx.progress(&format!(
                "{}: renewed by {renewed_by} (valid until {new_not_after}); taken from the fleet",
                e.host
            )),
            Status::BackingOff { failures, next_attempt, .. } => {
                tracing::info!("{}: failed {failures} time(s) in a row; next attempt at {next_attempt} (--force tries now)", e.host)
            }
            _ => {}
        }
    }
    if ctx.json {
        ctx.print_json(&report)?;
    } else if !ctx.quiet {
        eprintln!("{}", report.summary());
    }
    for r in report.revocations.iter().filter(|r| r.status != "revoked") {
        tracing::warn!(
            "{}: serial {} is owed a revocation ({}) since {}: {}",
            r.host,
            r.serial,
            r.reason,
            r.since,
            match (&r.error, r.status) {
                (Some(e), _) => format!("the CA did not confirm it: {e}"),
                (None, "waiting_for_replacement") =>
                    "it is still served; its replacement comes first".to_string(),
                _ => "it is retried by the next renew".to_string(),
            }
        );
    }
    if let Some(why) = &report.incomplete {
        tracing::error!("renew did not complete: {why}");
    }
    Ok(renewal::exit_code(
        report.incomplete.is_some(),
        !report.revocation_owed.is_empty(),
        report.revocation_error.is_some(),
    ))
}

/// What one job came to.
struct Done {
    /// The new notAfter.
    not_after: DateTime<Utc>,
    /// The CertID the order said it replaces.
    replaced: Option<String>,
    /// Fleet mode: the peer that had renewed it already.
    peer: Option<String>,
}

/// Why a job did not end with a certificate; its message goes into the
/// report and the back-off.
#[derive(Debug, thiserror::Error)]
enum JobError {
    /// The session with the job's ACME server could not be opened (one
    /// error, shared by every job of that server).
    #[error("{0}")]
    Session(std::sync::Arc<Error>),
    #[error(transparent)]
    Command(#[from] Error),
    /// The fleet's exclusive order failed.
    #[error(transparent)]
    Fleet(super::fleet::FleetError),
}

type JobResult = std::result::Result<Done, JobError>;

/// Run the jobs, [`CONCURRENCY`] at a time; one ACME client per server.
fn run_jobs(
    ctx: &Ctx,
    jobs: Vec<Job>,
    fleet: Option<&super::fleet::Fleet>,
    sites: &[Site],
) -> Vec<(Job, JobResult)> {
    if jobs.is_empty() {
        return Vec::new();
    }
    let mut clients: BTreeMap<String, Result<provision::Session, std::sync::Arc<Error>>> =
        BTreeMap::new();
    for j in &jobs {
        if !clients.contains_key(&j.server) {
            clients.insert(
                j.server.clone(),
                provision::Session::open(ctx, &j.server).map_err(std::sync::Arc::new),
            );
        }
    }
    let queue = Mutex::new(jobs.into_iter().collect::<VecDeque<Job>>());
    let results = Mutex::new(Vec::new());
    let workers = CONCURRENCY.min(queue.lock().map(|q| q.len()).unwrap_or(1)).max(1);
    // One worker: the queue taken on this thread. The jobs and their order
    // are the same; no thread, so no thread stack and no second malloc arena
    // (each thread that allocates gets its own: ~0.2–0.4 MiB of an
    // issuance's peak RSS).
    let work = || {
        // The queue's lock is held only while a job is taken (inside
        // `next`), never while it runs.
        let next = || queue.lock().ok().and_then(|mut q| q.pop_front());
        while let Some(job) = next() {
            let r = match clients.get(&job.server) {
                Some(Ok(session)) => renew_one(ctx, session, &job, fleet, sites),
                Some(Err(e)) => Err(JobError::Session(e.clone())),
                None => Err(Error::failed("no ACME client").into()),
            };
            if let Ok(mut v) = results.lock() {
                v.push((job, r));
            }
        }
    };
    if workers == 1 {
        work();
    } else {
        std::thread::scope(|sc| {
            for _ in 0..workers {
                sc.spawn(work);
            }
        });
    }
    let mut v = results.into_inner().unwrap_or_default();
    v.sort_by(|a, b| a.0.host.cmp(&b.0.host));
    v
}

fn renew_one(
    ctx: &Ctx,
    session: &provision::Session,
    job: &Job,
    fleet: Option<&super::fleet::Fleet>,
    sites: &[Site],
) -> JobResult {
    ctx.progress(&format!(
        "{}: {} a certificate",
        job.host,
        if job.pending { "provisioning" } else { "renewing" }
    ));
    crate::fsutil::create_dir_all_mode(&job.webroot, 0o755).map_err(Error::from)?;
    let profile = provision::order_profile(&*session.client()?, &job.host, job.profile.as_ref())?;
    // One order, with or without the fleet's gate (checked before finalize).
    let order = |gate: Option<crate::acme::Gate>| {
        let opts = crate::acme::OrderOptions {
            profile: profile.clone(),
            replaces: job.replaces.clone(),
            gate,
        };
        let (issued, account) = session.run(|c, id| {
            c.issue_with(&job.host, &job.webroot, job.key_type, &opts).map(|i| (i, id.to_string()))
        })?;
        crate::fault::point("renew.issued");
        let params = RenewalParams {
            account: Some(account),
            server: job.server.clone(),
            webroot: job.webroot.clone(),
            key_type: job.key_type,
            profile: job.profile.clone(),
        };
        Ok::<_, Error>((issued, params))
    };
    if let Some(f) = fleet {
        let local = super::fleet::local_cert(ctx, &job.host);
        let r = super::fleet::order_exclusive(ctx, f, &job.host, local, sites, |gate| {
            Ok(order(Some(gate))?)
        })
        .map_err(JobError::Fleet)?;
        return Ok(match r {
            super::fleet::Exclusive::Issued(na) => {
                Done { not_after: na, replaced: job.replaces.clone(), peer: None }
            }
            super::fleet::Exclusive::PeerRenewed(na, by) => {
                Done { not_after: na, replaced: None, peer: Some(by) }
            }
        });
    }
    let (issued, params) = order(None)?;
    let v = NewVersion::from_key_and_fullchain(&issued.key_pem, &issued.fullchain_pem)
        .map_err(Error::from)?;
    ctx.store.add_version(&job.host, &v, &params).map_err(Error::from)?;
    tracing::debug!(host = %job.host, "step: written");
    match ctx.store.material(&job.host, Place::Live) {
        Material::Present(kc) => {
            Ok(Done { not_after: kc.leaf.not_after, replaced: job.replaces.clone(), peer: None })
        }
        _ => Err(Error::failed("the new version is not readable").into()),
    }
}

fn run_all_hooks(ctx: &Ctx, report: &Report) -> Vec<hooks::HookRun> {
    let mut runs = Vec::new();
    // certbot's deploy hooks, once per renewed lineage.
    // Our own deploy hook (for certbot's renewals) is not needed here: this
    // run reloads Apache itself.
    let deploy_hooks: Vec<_> = hooks::executables(&ctx.store.deploy_hooks_dir())
        .into_iter()
        .filter(|h| {
            h.file_name().and_then(|n| n.to_str()) != Some(crate::store::CERTBOT_DEPLOY_HOOK)
        })
        .collect();
    for host in &report.renewed_domains {
        for h in &deploy_hooks {
            let env = [
                ("RENEWED_LINEAGE", ctx.store.live_dir(host).display().to_string()),
                ("RENEWED_DOMAINS", host.clone()),
            ];
            let r = hooks::run_hook(h, &env, b"", hooks::HOOK_TIME_LIMIT);
            if !r.ok {
                tracing::warn!(
                    "certbot deploy hook {} for {host}: {}",
                    r.hook,
                    r.error.as_deref().unwrap_or("")
                );
            }
            runs.push(r);
        }
    }
    let hooks = hooks::executables(&ctx.cfg.hooks_dir);
    // The hooks' stdin is the report itself, serialized straight to bytes
    // (no JSON tree per lineage), and only when a hook will read it: over
    // 10 000 lineages the tree alone took 9 MiB.
    let stdin =
        if hooks.is_empty() { Vec::new() } else { serde_json::to_vec(report).unwrap_or_default() };
    for h in hooks {
        let mut env = vec![
            ("SITE_ADMIN_EVENT", "renew".to_string()),
            ("RENEWED_DOMAINS", report.renewed_domains.join(" ")),
            ("FAILED_DOMAINS", report.failed_domains.join(" ")),
            ("REVOKED_DOMAINS", report.revoked_domains.join(" ")),
            ("REVOCATION_OWED_DOMAINS", report.revocation_owed.join(" ")),
        ];
        env.extend(ctx.hook_env());
        ctx.progress(&format!("running hook {}", h.display()));
        let r = hooks::run_hook(&h, &env, &stdin, hooks::HOOK_TIME_LIMIT);
        if !r.ok {
            tracing::warn!("hook {}: {}", r.hook, r.error.as_deref().unwrap_or(""));
        }
        runs.push(r);
    }
    runs
}
