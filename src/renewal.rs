//! What one `renew` pass does, as one pure function (docs/design.md, "When a
//! lineage renews"): [`plan`] takes plain facts — each live lineage, each
//! pending site, each stash entry, `now`, `--force` — and returns the jobs to
//! run, the stash entries to delete, and the lineages left alone and why. It
//! does no I/O; `engine::renew` gathers the facts and carries the plan out.
//!
//! The rules:
//! 1. A lineage is **due** when ARI says so — the moment picked inside the
//!    server's latest suggested window has passed (a window in the past means
//!    now) — or by the backstop: less than a third of its lifetime is left
//!    (half, for lifetimes of ten days or less), or from `renew_before_expiry`
//!    before its notAfter when its conf sets that ([`due_at`]); whichever
//!    comes first. `--force` makes every lineage due.
//! 2. A lineage whose certificate cannot be read (but whose links exist) is
//!    due: renewing it is how it is mended.
//! 3. A renewal conf without links is reported as failed, never guessed at.
//! 4. A due lineage needs a webroot (its conf's, else the deployed site's
//!    challenge directory); without one it is reported as failed.
//! 5. A lineage renews with the server configured now, keeping its conf's key
//!    type and profile; when its conf names another server the job says so
//!    (`moved_from`). It names the certificate it replaces (ARI `replaces`)
//!    when its server offers ARI and it stays with that server.
//! 6. Every pending site is provisioned, with the configured server and key type.
//! 7. An expired stash entry is deleted — unless the clock cannot be right
//!    ([`crate::decide::clock_plausible`]), then none is.
//! 8. A lineage or pending site whose last failures have it backing off
//!    ([`crate::backoff`]) is not tried before its next attempt, unless
//!    `--force` — or unless the record cannot hold ([`crate::backoff::verdict`]):
//!    a next attempt further ahead than now + the longest step was written
//!    while the clock was ahead, and a failure under another configuration
//!    (server, EAB, contact...) may have been fixed by the change; both are
//!    ignored and reported (`ignored_backoff`).
//! 9. A lineage whose current certificate is owed a revocation (`revoke`
//!    began, the CA has not confirmed) is due now: its replacement is served
//!    before the revocation is sent ([`owed_step`]). One owed without
//!    replacement (`--no-replace`) is never served or renewed again: it is
//!    retired (its site is pending and gets a new key) and then revoked. A
//!    certificate no lineage serves any more is simply revoked.
//! 10. ARI never makes a certificate due before it is [`ari_min_age`] old (a
//!     day, or a tenth of its lifetime when that is shorter): a window in the
//!     past would otherwise renew at every run. The lineage is then not due,
//!     and its skip says why (`ari_held`).
//! 11. A pass succeeds ([`outcome`]) only when nothing due is left undone: a
//!     failure, a due lineage or pending site backing off, or a failed Apache
//!     step make it fail (exit 1), with the reason. A dry run changes nothing
//!     and fails for nothing but its own errors. A revocation still owed
//!     (rule 9) fails the pass too, dry run or not, until the CA confirms it.
//! 12. Fleet mode (docs/design.md, "Several devices"): while the fleet cannot
//!     be reached nothing is ordered without its lineage lock — except, under
//!     the opt-in emergency rule `fleet.isolated_renew_below` (days), a
//!     lineage whose certificate has fewer days left than that
//!     ([`isolated_may_order`]); a pending site (no certificate to lose) never
//!     is. The pass then fails (exit 1), naming the fleet error.

use crate::model::{AriState, KeyType, ProfileWish};
use chrono::{DateTime, Duration, Utc};
use std::path::PathBuf;

/// When a certificate becomes due: `renew_before_expiry` before notAfter when
/// set; else when a third of its lifetime is left (half, for lifetimes of ten
/// days or less) — certbot's rule.
pub(crate) fn due_at(
    not_before: DateTime<Utc>,
    not_after: DateTime<Utc>,
    renew_before_expiry: Option<Duration>,
) -> DateTime<Utc> {
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

/// Rule 9: how old a certificate must be before ARI can make it due: a day,
/// or a tenth of its lifetime when that is shorter.
pub(crate) fn ari_min_age(not_before: DateTime<Utc>, not_after: DateTime<Utc>) -> Duration {
    Duration::days(1).min((not_after - not_before) / 10)
}

/// One lineage with a renewal conf under `renewal/`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LineageFacts {
    pub host: String,
    /// The deployed site that uses it, if any.
    pub siteid: Option<String>,
    /// Whether `live/<host>` exists.
    pub has_links: bool,
    /// (notBefore, notAfter) of its certificate, if it can be read.
    pub validity: Option<(DateTime<Utc>, DateTime<Utc>)>,
    pub renew_before_expiry: Option<Duration>,
    /// Its conf's webroot, else the deployed site's challenge directory.
    pub webroot: Option<PathBuf>,
    /// The server its conf names.
    pub server: Option<String>,
    pub key_type: Option<KeyType>,
    pub profile: Option<ProfileWish>,
    /// What ARI said about its current certificate, if it was asked.
    pub ari: Option<AriFacts>,
    /// Its certificate's ARI CertID, when its server offers ARI.
    pub replaces: Option<String>,
    /// Rule 9: its current certificate is owed a revocation, to be replaced first.
    pub revocation_owed: bool,
}

/// The ARI answer for a lineage's current certificate.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct AriFacts {
    pub window: (DateTime<Utc>, DateTime<Utc>),
    /// The moment picked inside the window.
    pub chosen: DateTime<Utc>,
    pub explanation_url: Option<String>,
}

/// Why a job is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum DueBy {
    /// The ARI window's chosen moment has passed.
    Ari,
    /// The lifetime rule (or renew_before_expiry).
    Backstop,
    Forced,
    /// The certificate cannot be read.
    Unreadable,
    /// A pending site's first certificate.
    Pending,
    /// Its certificate is owed a revocation (rule 9): replaced first.
    Revocation,
}

/// Rule 9: what one owed revocation needs, given the serial the host's live
/// lineage serves now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OwedStep {
    /// Served, and owed without replacement: take it out of service first
    /// (the site is pending), then revoke it.
    RetireThenRevoke,
    /// Served, and a replacement comes first: the lineage renews, and the
    /// revocation waits for it (a revoked certificate is never left served).
    WaitForReplacement,
    /// No longer served: send the revocation.
    Revoke,
}

pub(crate) fn owed_step(
    owed_serial: &str,
    live_serial: Option<&str>,
    no_replace: bool,
) -> OwedStep {
    match (live_serial == Some(owed_serial), no_replace) {
        (false, _) => OwedStep::Revoke,
        (true, true) => OwedStep::RetireThenRevoke,
        (true, false) => OwedStep::WaitForReplacement,
    }
}

/// When a lineage is due and why: the earlier of ARI's chosen moment and the backstop.
pub(crate) fn due_of(l: &LineageFacts) -> Option<(DateTime<Utc>, DueBy)> {
    let (nb, na) = l.validity?;
    Some(due(nb, na, l.renew_before_expiry, l.ari.as_ref()))
}

/// The same for a certificate's dates, its conf's `renew_before_expiry` and
/// what ARI said: the earlier of ARI's chosen moment and the backstop.
pub(crate) fn due(
    not_before: DateTime<Utc>,
    not_after: DateTime<Utc>,
    renew_before_expiry: Option<Duration>,
    ari: Option<&AriFacts>,
) -> (DateTime<Utc>, DueBy) {
    let backstop = due_at(not_before, not_after, renew_before_expiry);
    match ari.map(|a| a.chosen.max(not_before + ari_min_age(not_before, not_after))) {
        Some(at) if at < backstop => (at, DueBy::Ari),
        _ => (backstop, DueBy::Backstop),
    }
}

/// What an ARI state says, as the planner sees it: only when it was said
/// about this very certificate (CertID `cert_id`).
pub(crate) fn ari_facts(st: &AriState, cert_id: Option<&str>) -> Option<AriFacts> {
    match (&st.window, st.chosen, &st.cert_id) {
        (Some(w), Some(chosen), Some(id)) if Some(id.as_str()) == cert_id => {
            Some(AriFacts { window: *w, chosen, explanation_url: st.explanation_url.clone() })
        }
        _ => None,
    }
}

/// Rule 5 (ARI side): is ARI asked about this certificate in this pass? Only
/// a certificate with a CertID that has not expired (RFC 9773 §4.3: no
/// renewal information for an expired one) and whose last `Retry-After` has
/// passed — so a pass with every check ahead sends no request.
pub(crate) fn ari_check_due(
    cert_id: Option<&str>,
    not_after: Option<DateTime<Utc>>,
    retry_after: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> bool {
    cert_id.is_some()
        && not_after.is_some_and(|na| na > now)
        && retry_after.is_none_or(|t| t <= now)
}

/// Rule 5: the certificate an order names as the one it replaces (ARI
/// `replaces`): the current one, only when its server is known to offer ARI.
pub(crate) fn replaces(cert_id: Option<&str>, offered: Option<bool>) -> Option<String> {
    cert_id.filter(|_| offered == Some(true)).map(str::to_string)
}

/// The facts after this pass's ARI answers: a lineage answered about gets
/// its new ARI facts and, when the server offers ARI, the CertID its order
/// replaces. New facts; the gathered ones are not edited.
pub(crate) fn with_ari_answers(f: &PassFacts, answers: &[(String, AriState)]) -> PassFacts {
    let mut out = f.clone();
    for (host, st) in answers {
        if let Some(l) = out.lineages.iter_mut().find(|l| &l.host == host) {
            l.ari = ari_facts(st, st.cert_id.as_deref());
            if st.offered == Some(true) {
                l.replaces = st.cert_id.clone();
            }
        }
    }
    out
}

/// Rule 11: the exit code of a pass — 0 only when it is complete, no
/// revocation is still owed and the owed ones could be read.
pub(crate) fn exit_code(incomplete: bool, revocations_owed: bool, revocation_error: bool) -> i32 {
    if incomplete || revocations_owed || revocation_error {
        1
    } else {
        0
    }
}

/// A Let's Encrypt site without a usable live lineage.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PendingFacts {
    pub host: String,
    pub siteid: String,
    pub webroot: PathBuf,
    pub profile: Option<ProfileWish>,
}

/// Everything one pass is decided on.
#[derive(Debug, Clone)]
pub(crate) struct PassFacts {
    pub lineages: Vec<LineageFacts>,
    pub pending: Vec<PendingFacts>,
    /// (host, notAfter) of each stash entry whose certificate can be read.
    pub stash: Vec<(String, DateTime<Utc>)>,
    pub now: DateTime<Utc>,
    pub force: bool,
    /// The ACME server and key type configured now.
    pub server: String,
    pub key_type: KeyType,
    pub clock_plausible: bool,
    /// Hosts backing off: their records.
    pub backoff: std::collections::BTreeMap<String, crate::backoff::Failures>,
    /// [`crate::backoff_file::config_fingerprint`] of the configuration now.
    pub config: String,
}

/// One issuance to run: a renewal, or a pending site's provisioning.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Job {
    pub host: String,
    pub siteid: Option<String>,
    pub webroot: PathBuf,
    pub server: String,
    pub key_type: KeyType,
    pub old_not_after: Option<DateTime<Utc>>,
    /// When it is due (None: forced, or its certificate is unreadable).
    pub due: Option<DateTime<Utc>>,
    pub due_by: DueBy,
    /// A pending site's first certificate, not a renewal.
    pub pending: bool,
    /// The server its conf named, when that is not the configured one.
    pub moved_from: Option<String>,
    pub profile: Option<ProfileWish>,
    /// The ARI CertID of the certificate it replaces.
    pub replaces: Option<String>,
    /// ARI's explanation of its window, if it gave one.
    pub ari_explanation: Option<String>,
}

/// A lineage this pass leaves alone.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Skip {
    NotDue {
        due: DateTime<Utc>,
        due_by: DueBy,
        not_after: DateTime<Utc>,
        /// Rule 9: ARI's moment has passed, but the certificate is younger
        /// than [`ari_min_age`]; ARI may renew it from `due`.
        ari_held: bool,
    },
    /// Rule 8: failed `failures` times in a row; not before `next_attempt`.
    BackingOff { failures: u32, next_attempt: DateTime<Utc> },
    /// Cannot be renewed as it is: rules 3 and 4.
    Broken { why: String },
}

/// The decision for one pass.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct Plan {
    pub jobs: Vec<Job>,
    /// (host, siteid, why) of each lineage left alone.
    pub skipped: Vec<(String, Option<String>, Skip)>,
    pub delete_stash: Vec<String>,
    /// Expired stash entries kept because the clock cannot be right.
    pub kept_expired_stash: Vec<String>,
    /// Rule 8: back-off records ignored, and why (host, verdict, next attempt).
    pub ignored_backoff: Vec<(String, crate::backoff::Verdict, DateTime<Utc>)>,
}

/// Decide one pass. Pure: same facts, same plan.
pub(crate) fn plan(f: &PassFacts) -> Plan {
    use crate::backoff::Verdict;
    let mut p = plan_ignoring_backoff(f);
    if !f.force {
        let mut go = Vec::new();
        for j in std::mem::take(&mut p.jobs) {
            let Some(b) = f.backoff.get(&j.host) else {
                go.push(j);
                continue;
            };
            match crate::backoff::verdict(b.next_attempt, b.config.as_deref(), f.now, &f.config) {
                Verdict::Go => go.push(j),
                Verdict::Wait => p.skipped.push((
                    j.host,
                    j.siteid,
                    Skip::BackingOff { failures: b.failures, next_attempt: b.next_attempt },
                )),
                v @ (Verdict::Implausible | Verdict::ConfigChanged) => {
                    p.ignored_backoff.push((j.host.clone(), v, b.next_attempt));
                    go.push(j);
                }
            }
        }
        p.jobs = go;
    }
    p
}

/// Rule 12: may a due job be ordered on this device alone while the fleet
/// cannot be reached? Only a lineage whose certificate (notAfter
/// `old_not_after`) has fewer than `below` days left, when the emergency
/// rule is configured.
pub(crate) fn isolated_may_order(
    old_not_after: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    below: Option<u32>,
) -> bool {
    match (old_not_after, below) {
        (Some(na), Some(days)) => na - now < Duration::days(days.into()),
        _ => false,
    }
}

/// Rule 10: why a pass fails (exit 1), or None when it succeeds. `failed`:
/// the hosts whose renewal or provisioning failed (or that cannot be
/// renewed); `backing_off`: the due lineages and pending sites left for
/// later; `apache_error`: the Apache step failed.
pub(crate) fn outcome(
    failed: &[String],
    backing_off: &[String],
    apache_error: bool,
    dry_run: bool,
) -> Option<String> {
    if dry_run {
        return None;
    }
    let mut why = Vec::new();
    if !failed.is_empty() {
        why.push(format!("failed: {}", failed.join(", ")));
    }
    if !backing_off.is_empty() {
        why.push(format!("due but backing off after failures, so not renewed yet (`renew --force` tries now): {}", backing_off.join(", ")));
    }
    if apache_error {
        why.push("the Apache step failed".to_string());
    }
    (!why.is_empty()).then(|| why.join("; "))
}

fn plan_ignoring_backoff(f: &PassFacts) -> Plan {
    let mut p = Plan::default();
    for l in &f.lineages {
        match lineage_job(f, l) {
            Ok(Some(job)) => p.jobs.push(job),
            Ok(None) => {}
            Err(skip) => p.skipped.push((l.host.clone(), l.siteid.clone(), skip)),
        }
    }
    p.jobs.extend(f.pending.iter().map(|s| pending_job(f, s)));
    for (host, na) in &f.stash {
        if *na <= f.now {
            if f.clock_plausible {
                p.delete_stash.push(host.clone());
            } else {
                p.kept_expired_stash.push(host.clone());
            }
        }
    }
    p
}

/// One lineage under renewal: its job when it is due, why it is skipped,
/// or nothing (not due, and its due date unknown).
fn lineage_job(f: &PassFacts, l: &LineageFacts) -> Result<Option<Job>, Skip> {
    if !l.has_links {
        let why =
            format!("renewal/{h}.conf has no live/{h} links (see site-admin doctor)", h = l.host);
        return Err(Skip::Broken { why });
    }
    let due = due_of(l);
    let is_due = f.force || l.revocation_owed || due.map(|(d, _)| f.now >= d).unwrap_or(true);
    if !is_due {
        return match (due, l.validity) {
            (Some((d, by)), Some((_, na))) => {
                let ari_held =
                    by == DueBy::Ari && l.ari.as_ref().is_some_and(|a| a.chosen <= f.now);
                Err(Skip::NotDue { due: d, due_by: by, not_after: na, ari_held })
            }
            _ => Ok(None),
        };
    }
    let due_by = match due {
        _ if l.revocation_owed => DueBy::Revocation,
        Some((d, by)) if f.now >= d => by,
        Some(_) => DueBy::Forced,
        None => DueBy::Unreadable,
    };
    let Some(webroot) = l.webroot.clone() else {
        let why = "its renewal conf names no webroot and no deployed site uses it".to_string();
        return Err(Skip::Broken { why });
    };
    Ok(Some(Job {
        host: l.host.clone(),
        siteid: l.siteid.clone(),
        webroot,
        server: f.server.clone(),
        key_type: l.key_type.unwrap_or(f.key_type),
        old_not_after: l.validity.map(|v| v.1),
        due: due.map(|d| d.0),
        due_by,
        pending: false,
        moved_from: l.server.clone().filter(|s| s != &f.server),
        profile: l.profile.clone(),
        // `replaces` is honoured only by the server that issued it.
        replaces: l.replaces.clone().filter(|_| l.server.as_deref() == Some(f.server.as_str())),
        ari_explanation: l.ari.as_ref().and_then(|a| a.explanation_url.clone()),
    }))
}

/// A pending site (asks for Let's Encrypt, has no usable LKC): always a job.
fn pending_job(f: &PassFacts, s: &PendingFacts) -> Job {
    Job {
        host: s.host.clone(),
        siteid: Some(s.siteid.clone()),
        webroot: s.webroot.clone(),
        server: f.server.clone(),
        key_type: f.key_type,
        old_not_after: None,
        due: None,
        due_by: DueBy::Pending,
        pending: true,
        moved_from: None,
        profile: s.profile.clone(),
        replaces: None,
        ari_explanation: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 1, 12, 0, 0).unwrap()
    }
    /// A 90-day lineage issued `age` days ago.
    fn lineage(host: &str, age: i64) -> LineageFacts {
        let nb = now() - Duration::days(age);
        LineageFacts {
            host: host.into(),
            siteid: Some("s1".into()),
            has_links: true,
            validity: Some((nb, nb + Duration::days(90))),
            renew_before_expiry: None,
            webroot: Some(PathBuf::from("/wk/s1")),
            server: Some("https://ca/dir".into()),
            key_type: Some(KeyType::Rsa),
            profile: None,
            ari: None,
            replaces: Some("kid.serial".into()),
            revocation_owed: false,
        }
    }
    fn facts(lineages: Vec<LineageFacts>) -> PassFacts {
        PassFacts {
            lineages,
            pending: vec![],
            stash: vec![],
            now: now(),
            force: false,
            server: "https://ca/dir".into(),
            key_type: KeyType::Ecdsa,
            clock_plausible: true,
            backoff: Default::default(),
            config: "cfg".into(),
        }
    }
    fn failures(n: u32, next_attempt: DateTime<Utc>) -> crate::backoff::Failures {
        crate::backoff::Failures {
            failures: n,
            last_error: "x".into(),
            last_attempt: now(),
            next_attempt,
            config: Some("cfg".into()),
        }
    }

    #[test]
    fn rule_1_due_rules() {
        let nb = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        assert_eq!(due_at(nb, nb + Duration::days(90), None), nb + Duration::days(60));
        assert_eq!(due_at(nb, nb + Duration::days(6), None), nb + Duration::days(3));
        assert_eq!(
            due_at(nb, nb + Duration::days(90), Some(Duration::days(10))),
            nb + Duration::days(80)
        );
        assert_eq!(due_at(nb, nb + Duration::seconds(300), None), nb + Duration::seconds(150));
    }

    #[test]
    fn rule_1_fresh_is_left_alone_due_is_renewed_force_renews_all() {
        let p = plan(&facts(vec![lineage("fresh", 10), lineage("due", 70)]));
        assert_eq!(p.jobs.iter().map(|j| j.host.as_str()).collect::<Vec<_>>(), vec!["due"]);
        assert!(matches!(p.skipped[0], (ref h, _, Skip::NotDue { .. }) if h == "fresh"));
        let mut f = facts(vec![lineage("fresh", 10), lineage("due", 70)]);
        f.force = true;
        assert_eq!(plan(&f).jobs.len(), 2);
    }

    #[test]
    fn rule_1_an_ari_window_in_the_past_makes_it_due_although_the_backstop_does_not() {
        let mut l = lineage("ari", 10);
        let past = now() - Duration::days(1);
        l.ari = Some(AriFacts {
            window: (past - Duration::hours(1), past),
            chosen: past - Duration::minutes(30),
            explanation_url: Some("https://ca/why".into()),
        });
        let p = plan(&facts(vec![l.clone()]));
        assert_eq!(p.jobs.len(), 1);
        assert_eq!(p.jobs[0].due_by, DueBy::Ari);
        assert_eq!(p.jobs[0].replaces.as_deref(), Some("kid.serial"));
        assert_eq!(p.jobs[0].ari_explanation.as_deref(), Some("https://ca/why"));
        // A window ahead: not due, and it says so.
        let ahead = now() + Duration::days(5);
        l.ari = Some(AriFacts {
            window: (ahead, ahead + Duration::days(1)),
            chosen: ahead + Duration::hours(2),
            explanation_url: None,
        });
        let p = plan(&facts(vec![l]));
        assert!(p.jobs.is_empty());
        assert!(
            matches!(p.skipped[0].2, Skip::NotDue { due_by: DueBy::Ari, .. }),
            "{:?}",
            p.skipped
        );
    }

    #[test]
    fn rule_1_the_backstop_decides_without_ari_and_when_it_comes_first() {
        let mut l = lineage("due", 70);
        let later = now() + Duration::days(30);
        l.ari = Some(AriFacts { window: (later, later), chosen: later, explanation_url: None });
        let p = plan(&facts(vec![l]));
        assert_eq!(p.jobs[0].due_by, DueBy::Backstop);
    }

    #[test]
    fn rule_5_replaces_only_with_the_server_that_issued_it() {
        let mut l = lineage("x", 70);
        l.server = Some("https://staging/dir".into());
        let p = plan(&facts(vec![l]));
        assert_eq!(p.jobs[0].replaces, None);
        let p = plan(&facts(vec![lineage("y", 70)]));
        assert_eq!(p.jobs[0].replaces.as_deref(), Some("kid.serial"));
    }

    #[test]
    fn rule_1_renew_before_expiry_makes_it_due_sooner() {
        let mut l = lineage("x", 10);
        l.renew_before_expiry = Some(Duration::days(85));
        assert_eq!(plan(&facts(vec![l])).jobs.len(), 1);
    }

    #[test]
    fn rule_2_an_unreadable_certificate_is_due() {
        let mut l = lineage("x", 1);
        l.validity = None;
        let p = plan(&facts(vec![l]));
        assert_eq!(p.jobs.len(), 1);
        assert_eq!(p.jobs[0].old_not_after, None);
    }

    #[test]
    fn rule_3_a_conf_without_links_is_reported() {
        let mut l = lineage("x", 70);
        l.has_links = false;
        let p = plan(&facts(vec![l]));
        assert!(p.jobs.is_empty());
        assert!(matches!(&p.skipped[0].2, Skip::Broken { why } if why.contains("no live/x links")));
    }

    #[test]
    fn rule_4_no_webroot_is_reported() {
        let mut l = lineage("x", 70);
        l.webroot = None;
        let p = plan(&facts(vec![l]));
        assert!(p.jobs.is_empty());
        assert!(matches!(&p.skipped[0].2, Skip::Broken { why } if why.contains("no webroot")));
    }

    #[test]
    fn rule_5_the_configured_server_and_the_confs_key_type() {
        let mut l = lineage("x", 70);
        l.server = Some("https://staging/dir".into());
        let p = plan(&facts(vec![l, lineage("y", 70)]));
        assert_eq!(p.jobs[0].server, "https://ca/dir");
        assert_eq!(p.jobs[0].moved_from.as_deref(), Some("https://staging/dir"));
        assert_eq!(p.jobs[0].key_type, KeyType::Rsa);
        assert_eq!(p.jobs[1].moved_from, None);
    }

    #[test]
    fn rule_6_pending_sites_are_provisioned() {
        let mut f = facts(vec![]);
        f.pending = vec![PendingFacts {
            host: "p".into(),
            siteid: "s2".into(),
            webroot: "/wk/s2".into(),
            profile: None,
        }];
        let p = plan(&f);
        assert_eq!(p.jobs.len(), 1);
        assert!(p.jobs[0].pending);
        assert_eq!(p.jobs[0].key_type, KeyType::Ecdsa);
    }

    #[test]
    fn rule_8_a_backing_off_job_waits_unless_forced() {
        let mut f = facts(vec![lineage("due", 70), lineage("other", 70)]);
        f.pending = vec![PendingFacts {
            host: "p".into(),
            siteid: "s2".into(),
            webroot: "/wk/s2".into(),
            profile: None,
        }];
        f.backoff.insert("due".into(), failures(2, now() + Duration::minutes(5)));
        f.backoff.insert("p".into(), failures(1, now() + Duration::seconds(30)));
        f.backoff.insert("other".into(), failures(3, now() - Duration::seconds(1)));
        let p = plan(&f);
        assert_eq!(p.jobs.iter().map(|j| j.host.as_str()).collect::<Vec<_>>(), vec!["other"]);
        assert!(p
            .skipped
            .iter()
            .any(|(h, _, s)| h == "due" && matches!(s, Skip::BackingOff { failures: 2, .. })));
        assert!(p
            .skipped
            .iter()
            .any(|(h, _, s)| h == "p" && matches!(s, Skip::BackingOff { failures: 1, .. })));
        f.force = true;
        assert_eq!(plan(&f).jobs.len(), 3);
    }

    #[test]
    fn rule_9_a_certificate_owed_a_revocation_is_replaced_first_and_then_revoked() {
        let mut l = lineage("owed", 1);
        l.revocation_owed = true;
        let p = plan(&facts(vec![l, lineage("fresh", 1)]));
        assert_eq!(
            p.jobs.iter().map(|j| (j.host.as_str(), j.due_by)).collect::<Vec<_>>(),
            vec![("owed", DueBy::Revocation)]
        );
        // Served and to be replaced: the revocation waits for the replacement.
        assert_eq!(owed_step("ab", Some("ab"), false), OwedStep::WaitForReplacement);
        // Served and owed without replacement: out of service first, never back.
        assert_eq!(owed_step("ab", Some("ab"), true), OwedStep::RetireThenRevoke);
        // Replaced already (or archived, stashed, retired): revoke it.
        assert_eq!(owed_step("ab", Some("cd"), false), OwedStep::Revoke);
        assert_eq!(owed_step("ab", None, true), OwedStep::Revoke);
    }

    #[test]
    fn rule_7_expired_stash_goes_unless_the_clock_cannot_be_right() {
        let mut f = facts(vec![]);
        f.stash = vec![
            ("old".into(), now() - Duration::days(1)),
            ("ok".into(), now() + Duration::days(1)),
        ];
        assert_eq!(plan(&f).delete_stash, vec!["old".to_string()]);
        f.clock_plausible = false;
        let p = plan(&f);
        assert!(p.delete_stash.is_empty());
        assert_eq!(p.kept_expired_stash, vec!["old".to_string()]);
    }

    #[test]
    fn rule_8_a_back_off_recorded_while_the_clock_was_ahead_is_ignored() {
        let mut f = facts(vec![lineage("due", 70), lineage("ok", 70)]);
        f.backoff.insert("due".into(), failures(1, now() + Duration::days(365)));
        f.backoff.insert("ok".into(), failures(4, now() + Duration::hours(23)));
        let p = plan(&f);
        assert_eq!(p.jobs.iter().map(|j| j.host.as_str()).collect::<Vec<_>>(), vec!["due"]);
        assert_eq!(
            p.ignored_backoff,
            vec![(
                "due".to_string(),
                crate::backoff::Verdict::Implausible,
                now() + Duration::days(365)
            )]
        );
        assert!(matches!(p.skipped[0].2, Skip::BackingOff { failures: 4, .. }));
    }

    #[test]
    fn rule_8_a_failure_under_another_configuration_does_not_wait() {
        let mut f = facts(vec![lineage("due", 70)]);
        f.pending = vec![PendingFacts {
            host: "p".into(),
            siteid: "s2".into(),
            webroot: "/wk/s2".into(),
            profile: None,
        }];
        f.backoff.insert("due".into(), failures(3, now() + Duration::minutes(50)));
        f.backoff.insert("p".into(), failures(1, now() + Duration::seconds(30)));
        f.config = "fixed".into();
        let p = plan(&f);
        assert_eq!(p.jobs.len(), 2);
        assert!(p
            .ignored_backoff
            .iter()
            .all(|(_, v, _)| *v == crate::backoff::Verdict::ConfigChanged));
        assert_eq!(p.ignored_backoff.len(), 2);
    }

    #[test]
    fn rule_10_ari_renews_no_certificate_younger_than_a_day_or_a_tenth_of_its_life() {
        assert_eq!(ari_min_age(now(), now() + Duration::days(90)), Duration::days(1));
        assert_eq!(
            ari_min_age(now(), now() + Duration::days(6)),
            Duration::hours(14) + Duration::minutes(24)
        );
        // Issued an hour ago, its ARI window already past.
        let mut l = lineage("young", 0);
        let nb = now() - Duration::hours(1);
        l.validity = Some((nb, nb + Duration::days(90)));
        let past = now() - Duration::days(2);
        l.ari = Some(AriFacts {
            window: (past, past + Duration::hours(1)),
            chosen: past,
            explanation_url: None,
        });
        let p = plan(&facts(vec![l.clone()]));
        assert!(p.jobs.is_empty(), "{:?}", p.jobs);
        assert_eq!(
            p.skipped[0].2,
            Skip::NotDue {
                due: nb + Duration::days(1),
                due_by: DueBy::Ari,
                not_after: nb + Duration::days(90),
                ari_held: true
            }
        );
        // A day old: ARI renews it.
        let nb = now() - Duration::days(1);
        l.validity = Some((nb, nb + Duration::days(90)));
        let p = plan(&facts(vec![l]));
        assert_eq!(p.jobs[0].due_by, DueBy::Ari);
        // A window ahead is not "held".
        let mut l = lineage("later", 10);
        let ahead = now() + Duration::days(3);
        l.ari = Some(AriFacts { window: (ahead, ahead), chosen: ahead, explanation_url: None });
        assert!(matches!(plan(&facts(vec![l])).skipped[0].2, Skip::NotDue { ari_held: false, .. }));
    }

    #[test]
    fn rule_11_a_pass_fails_while_due_work_is_backing_off() {
        assert_eq!(outcome(&[], &[], false, false), None);
        let why = outcome(&[], &["a.test".into()], false, false).unwrap();
        assert!(why.contains("backing off") && why.contains("a.test"), "{why}");
        assert!(outcome(&["b".into()], &[], false, false).unwrap().contains("failed: b"));
        assert!(outcome(&[], &[], true, false).unwrap().contains("Apache"));
        assert_eq!(outcome(&["b".into()], &["a".into()], true, true), None, "a dry run");
    }

    #[test]
    fn rule12_an_isolated_device_orders_only_what_would_expire_first() {
        let now = Utc::now();
        let soon = Some(now + Duration::days(3));
        let later = Some(now + Duration::days(30));
        assert!(isolated_may_order(soon, now, Some(7)), "3 days left, the rule says 7");
        assert!(!isolated_may_order(later, now, Some(7)), "30 days left");
        assert!(!isolated_may_order(soon, now, None), "the rule is opt-in");
        assert!(!isolated_may_order(None, now, Some(7)), "a pending site has nothing to lose");
        assert!(
            isolated_may_order(Some(now - Duration::days(1)), now, Some(7)),
            "an expired one renews"
        );
    }

    #[test]
    fn rule5_ari_is_asked_only_about_a_live_certificate_whose_retry_after_passed() {
        let now = Utc::now();
        let (later, earlier) = (Some(now + Duration::days(1)), Some(now - Duration::days(1)));
        assert!(ari_check_due(Some("id"), later, None, now));
        assert!(ari_check_due(Some("id"), later, earlier, now));
        assert!(!ari_check_due(Some("id"), later, later, now), "Retry-After ahead");
        assert!(!ari_check_due(Some("id"), earlier, None, now), "expired: RFC 9773 §4.3");
        assert!(!ari_check_due(None, later, None, now), "no CertID");
    }

    #[test]
    fn rule5_replaces_is_named_only_where_ari_is_offered() {
        assert_eq!(replaces(Some("id"), Some(true)), Some("id".into()));
        assert_eq!(replaces(Some("id"), Some(false)), None);
        assert_eq!(replaces(Some("id"), None), None);
        assert_eq!(replaces(None, Some(true)), None);
    }

    #[test]
    fn rule11_the_exit_code_is_0_only_for_a_complete_pass_with_nothing_owed() {
        assert_eq!(exit_code(false, false, false), 0);
        assert_eq!(exit_code(true, false, false), 1);
        assert_eq!(exit_code(false, true, false), 1);
        assert_eq!(exit_code(false, false, true), 1);
    }
}

/// Rule 12 over a pass: with the fleet unusable, the due jobs ordered on
/// this device alone (first) and the ones held (second). The emergency
/// rule (`below`: `fleet.isolated_renew_below`, see [`isolated_may_order`])
/// is for a fleet out of reach (`unreachable`), not for one whose records
/// this device cannot use (a wrong fleet key, a bad record); a pending
/// site's first certificate is never ordered without the fleet.
pub(crate) fn split_without_fleet(
    jobs: Vec<Job>,
    now: DateTime<Utc>,
    below: Option<u32>,
    unreachable: bool,
) -> (Vec<Job>, Vec<Job>) {
    let below = below.filter(|_| unreachable);
    jobs.into_iter().partition(|j| !j.pending && isolated_may_order(j.old_not_after, now, below))
}

/// Rule 10 for a pass that ran: [`outcome`], and with the fleet unusable
/// (`fleet_down`: why) a pass that ordered nothing without its lock fails.
pub(crate) fn pass_incomplete(
    failed: &[String],
    backing_off: &[String],
    apache_error: bool,
    fleet_down: Option<&str>,
) -> Option<String> {
    outcome(failed, backing_off, apache_error, false).or_else(|| {
        fleet_down.map(|e| {
            format!("the fleet cannot be used ({e}): nothing was ordered without its lock")
        })
    })
}

/// Renewed, but not served yet: every renewed host when the Apache step
/// failed (their owed revocations wait).
pub(crate) fn not_served(renewed: &[String], apache_failed: bool) -> Vec<String> {
    if apache_failed {
        renewed.to_vec()
    } else {
        Vec::new()
    }
}

#[cfg(test)]
mod pass_rule_tests {
    use super::*;
    use chrono::TimeZone;

    fn job(host: &str, pending: bool, days_left: Option<i64>) -> Job {
        let now = Utc.with_ymd_and_hms(2026, 12, 1, 12, 0, 0).unwrap();
        Job {
            host: host.into(),
            siteid: None,
            webroot: PathBuf::from("/wk"),
            server: "https://ca/dir".into(),
            key_type: KeyType::Rsa,
            old_not_after: days_left.map(|d| now + Duration::days(d)),
            due: None,
            due_by: DueBy::Backstop,
            pending,
            moved_from: None,
            profile: None,
            replaces: None,
            ari_explanation: None,
        }
    }

    fn hosts(v: &[Job]) -> Vec<&str> {
        v.iter().map(|j| j.host.as_str()).collect()
    }

    #[test]
    fn without_the_fleet_only_an_unreachable_fleet_lets_a_lineage_near_expiry_renew_alone() {
        let now = Utc.with_ymd_and_hms(2026, 12, 1, 12, 0, 0).unwrap();
        let jobs =
            vec![job("near", false, Some(3)), job("far", false, Some(20)), job("new", true, None)];
        let (go, held) = split_without_fleet(jobs.clone(), now, Some(7), true);
        assert_eq!((hosts(&go), hosts(&held)), (vec!["near"], vec!["far", "new"]));
        let (go, held) = split_without_fleet(jobs.clone(), now, Some(7), false);
        assert_eq!((hosts(&go), hosts(&held)), (vec![], vec!["near", "far", "new"]));
        let (go, _) = split_without_fleet(jobs, now, None, true);
        assert!(go.is_empty(), "no emergency rule configured: nothing alone");
    }

    #[test]
    fn a_pass_with_the_fleet_down_fails_after_its_own_reasons() {
        let f = vec!["a.test".to_string()];
        assert_eq!(pass_incomplete(&[], &[], false, None), None);
        assert_eq!(
            pass_incomplete(&[], &[], false, Some("etcd down")).as_deref(),
            Some("the fleet cannot be used (etcd down): nothing was ordered without its lock")
        );
        assert_eq!(
            pass_incomplete(&f, &[], false, Some("etcd down")).as_deref(),
            Some("failed: a.test")
        );
    }

    #[test]
    fn renewed_hosts_are_not_served_only_when_the_apache_step_failed() {
        let r = vec!["a.test".to_string()];
        assert_eq!(not_served(&r, true), r);
        assert!(not_served(&r, false).is_empty());
    }
}
