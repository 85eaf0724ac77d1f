//! The lifecycle decision core: the decision table of docs/design.md as one pure function.
//!
//! [`decide`] takes plain data — the event, what the Site JSON asks for, what
//! is deployed now, which LKC is live or stashed for the host, and `now` — and
//! returns a [`Plan`]: the ordered actions, what will be served, what will be
//! served if provisioning fails, and why. It does no I/O; the engine gathers
//! the facts and carries out the plan.
//!
//! The table it implements (rows: what the Site JSON says; columns: what is
//! deployed now):
//!
//! | Site JSON says | not deployed / http | deployed with OKC | deployed with LKC |
//! |---|---|---|---|
//! | no `tls` | http | remove OKC; http | stash LKC; http |
//! | LE, no usable LKC | usable stash → unstash; else provision, fallback http (pending) | same, fallback: keep usable old OKC | keep (renew now if expired) |
//! | LE with usable LKC | newest of {JSON, usable stash} | same | newest of {JSON, live} |
//! | OKC | write OKC | replace OKC | stash LKC; write OKC |
//!
//! Cells the notes leave open, decided here:
//! - A live lineage for H that no deployed site uses (certbot made it) is a
//!   candidate like a stash entry: usable and newest, it is kept and served.
//! - Ties in notAfter keep what is already on the device (live, then stash),
//!   so a redeploy of an exported Site JSON changes nothing.
//! - A stash entry that is unusable for another reason than expiry (key does
//!   not match) is left alone for `doctor`, never unstashed.
//! - An OKC that does not cover the host or has expired is deployed with a
//!   warning (the administrator chose it); only a mismatched key is refused.
//! - On a hostname change, the old host's LKC is stashed first and the site is
//!   then judged as deployed http (or with its OKC) for the new host.

use chrono::{DateTime, Utc};
use serde::Serialize;

/// What happens to the site.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Event {
    /// Deploy, redeploy, redeploy during an update, restore from backup.
    Deploy,
    Undeploy,
}

/// A key + certificate pair as the core sees it: plain facts, computed by
/// the caller against the site's (new) hostname.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Candidate {
    pub not_before: DateTime<Utc>,
    pub not_after: DateTime<Utc>,
    pub key_matches: bool,
    pub covers_host: bool,
    /// Why this is not a Let's Encrypt certificate at all, as the caller
    /// judged it (self-signed, issuer not trusted by this device, refused by
    /// OpenSSL's security level). Only set for a carried certificate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_lkc: Option<String>,
}

/// How much clock skew a certificate's notBefore is allowed.
pub(crate) fn clock_skew() -> chrono::Duration {
    chrono::Duration::minutes(5)
}

impl Candidate {
    /// Why it is not usable at `now`, or None: it parses (the caller's
    /// part), its key matches, it covers the host (by SAN), it is valid
    /// already (notBefore ≤ now + a few minutes of skew), it has not expired.
    pub(crate) fn problem(&self, host: &str, now: DateTime<Utc>) -> Option<String> {
        if !self.key_matches {
            Some("its key does not match its certificate".into())
        } else if !self.covers_host {
            Some(format!("its certificate does not cover {host}"))
        } else if let Some(why) = &self.not_lkc {
            Some(why.clone())
        } else if self.not_before > now + clock_skew() {
            Some(format!("it is not valid until {}", fmt_date(self.not_before)))
        } else if self.not_after <= now {
            Some(format!("it expired at {}", fmt_date(self.not_after)))
        } else {
            None
        }
    }
    pub(crate) fn usable(&self, host: &str, now: DateTime<Utc>) -> bool {
        self.problem(host, now).is_none()
    }
}

/// What is deployed now for this site id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum Current {
    NotDeployed,
    /// Deployed on plain http (including a pending site without OKC).
    Http {
        host: String,
    },
    /// Deployed with an OKC (or pending while still serving an old OKC).
    Okc {
        host: String,
        okc: Candidate,
    },
    /// Deployed with the LKC of `live/<host>`.
    Lkc {
        host: String,
    },
}

/// What the Site JSON's `tls` asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub(crate) enum Wish {
    Http,
    LetsEncrypt { carried: Option<Candidate> },
    Okc { okc: Candidate },
}

/// All the facts the decision needs.
#[derive(Debug, Clone)]
pub(crate) struct Facts {
    pub event: Event,
    pub hostname: String,
    pub wish: Wish,
    pub current: Current,
    /// The lineage in `live/<hostname>`, if any.
    pub live: Option<Candidate>,
    /// The stash entry `norenewal/<hostname>`, if any.
    pub stash: Option<Candidate>,
    pub now: DateTime<Utc>,
    /// False when `now` cannot be right (see [`clock_plausible`]): then
    /// nothing is deleted for having expired.
    pub clock_plausible: bool,
}

/// Can `now` be right, given the (notBefore, notAfter) of every certificate
/// on the device? Not when it is later than every notAfter by more than the
/// longest lifetime among them (and by more than a day, so that test
/// certificates of seconds do not make a few seconds look implausible): no
/// device is switched off that long while keeping its certificates, but a
/// clock reset far ahead (a dead RTC battery, a bad NTP answer) looks exactly
/// like that. With no certificates, yes.
pub(crate) fn clock_plausible(
    now: DateTime<Utc>,
    certs: &[(DateTime<Utc>, DateTime<Utc>)],
) -> bool {
    let Some(latest) = certs.iter().map(|c| c.1).max() else { return true };
    let longest = certs.iter().map(|c| c.1 - c.0).max().unwrap_or_else(chrono::Duration::zero);
    now <= latest + longest.max(chrono::Duration::days(1))
}

/// One step of a plan, carried out in order by the engine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub(crate) enum Action {
    /// Move `live/<host>` and its renewal conf to `norenewal/`.
    StashLive { host: String },
    /// Delete the stash entry of `host` (expired, or superseded).
    DeleteStash { host: String },
    /// Move the stash entry back under renewal (as the next version of a
    /// live lineage if one exists).
    Unstash { host: String },
    /// Import the LKC carried in the Site JSON: a new lineage, or the next
    /// version of the live one.
    ImportCarried { host: String },
    /// Obtain a certificate from the CA now (a new lineage, or the next
    /// version of the live one). May fail: then the plan's `on_failure` applies
    /// and the remaining actions are skipped.
    Provision { host: String },
    /// Remove the site's OKC files from `ssl_dir`.
    RemoveOkc,
    /// Write the Site JSON's OKC into `ssl_dir`.
    WriteOkc,
}

/// What the site's virtual host serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub(crate) enum Serve {
    /// Nothing: the site is removed.
    Nothing,
    Http,
    Okc,
    Lkc {
        host: String,
    },
}

/// Which certificate candidate was chosen, for the reason text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Source {
    Live,
    Stash,
    Json,
}

/// The decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Plan {
    pub actions: Vec<Action>,
    pub serve: Serve,
    /// What is served if a `Provision` action fails; the site is then pending.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_failure: Option<Serve>,
    pub reason: String,
    pub warnings: Vec<String>,
}

/// Why a deploy is refused outright (exit 2, nothing changed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal(pub String);

fn fmt_date(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%SZ").to_string()
}

/// Decide what to do. Pure: same facts, same plan.
///
/// The table read row by row: a hostname change first (the old host's LKC
/// is stashed), then the undeploy event, then one function per row of the
/// Site JSON's wish, each looking at the columns (what is deployed now).
pub(crate) fn decide(f: &Facts) -> Result<Plan, Refusal> {
    let mut d = Draft::default();
    let current = hostname_change(f, &mut d);
    if f.event == Event::Undeploy {
        return Ok(undeploy(&current, d));
    }
    let col = Column::of(&current, &f.hostname);
    match &f.wish {
        Wish::Http => Ok(row_no_tls(f, col, d)),
        Wish::Okc { okc } => row_okc(f, okc, col, d),
        Wish::LetsEncrypt { carried } => {
            Ok(row_lets_encrypt(f, carried.as_ref(), &current, col, d))
        }
    }
}

/// The plan being drawn up: actions, reasons and warnings in the order the
/// rules add them.
#[derive(Default)]
struct Draft {
    actions: Vec<Action>,
    reasons: Vec<String>,
    warnings: Vec<String>,
}

impl Draft {
    fn plan(self, serve: Serve, on_failure: Option<Serve>) -> Plan {
        plan(self.actions, serve, on_failure, self.reasons, self.warnings)
    }
}

/// The table's column for the site's (new) hostname: is its LKC or an OKC
/// deployed now (anything else counts as not deployed / http).
#[derive(Clone, Copy)]
struct Column {
    lkc_here: bool,
    okc: bool,
}

impl Column {
    fn of(current: &Current, h: &str) -> Column {
        Column {
            lkc_here: matches!(current, Current::Lkc { host } if host == h),
            okc: matches!(current, Current::Okc { .. }),
        }
    }
}

/// A hostname change: the old host's LKC is stashed first; for the new
/// host the site counts as deployed http. Returns the column to judge by.
fn hostname_change(f: &Facts, d: &mut Draft) -> Current {
    match &f.current {
        Current::Lkc { host } if host != &f.hostname && f.event == Event::Deploy => {
            d.actions.push(Action::StashLive { host: host.clone() });
            d.reasons.push(format!("the hostname changed from {host}: its certificate is stashed"));
            Current::Http { host: host.clone() }
        }
        c => c.clone(),
    }
}

/// The undeploy event: keep an LKC in the stash, remove an OKC.
fn undeploy(current: &Current, mut d: Draft) -> Plan {
    let reason = match current {
        Current::Lkc { host } => {
            d.actions.push(Action::StashLive { host: host.clone() });
            format!(
                "undeploy: the Let's Encrypt certificate of {host} is stashed for a later redeploy"
            )
        }
        Current::Okc { .. } => {
            d.actions.push(Action::RemoveOkc);
            "undeploy: the site's own certificate files are removed".into()
        }
        Current::Http { .. } => "undeploy: an http site has no certificate to keep".into(),
        Current::NotDeployed => "undeploy: the site is not deployed".into(),
    };
    Plan {
        actions: d.actions,
        serve: Serve::Nothing,
        on_failure: None,
        reason,
        warnings: d.warnings,
    }
}

/// Row "no `tls`": http; an OKC is removed, an LKC stashed.
fn row_no_tls(f: &Facts, col: Column, mut d: Draft) -> Plan {
    if col.okc {
        d.actions.push(Action::RemoveOkc);
        d.reasons.push("no tls: the old own certificate files are removed; http".into());
    } else if col.lkc_here {
        d.actions.push(Action::StashLive { host: f.hostname.clone() });
        d.reasons.push(
            "no tls: the Let's Encrypt certificate is stashed (kept for a later redeploy); http"
                .into(),
        );
    } else {
        d.reasons.push("no tls: deploy on http".into());
    }
    d.plan(Serve::Http, None)
}

/// Row "OKC": write it (replacing an old OKC, stashing an LKC); refused only
/// when its key does not match, a warning when browsers will complain.
fn row_okc(f: &Facts, okc: &Candidate, col: Column, mut d: Draft) -> Result<Plan, Refusal> {
    let h = f.hostname.as_str();
    if !okc.key_matches {
        return Err(Refusal("tls.key does not match the certificate in tls.crt".into()));
    }
    if !okc.covers_host {
        d.warnings
            .push(format!("the own certificate in tls.crt does not cover {h}; browsers will warn"));
    } else if okc.not_after <= f.now {
        d.warnings.push(format!(
            "the own certificate in tls.crt expired at {}; browsers will warn",
            fmt_date(okc.not_after)
        ));
    } else if okc.not_before > f.now + clock_skew() {
        d.warnings.push(format!(
            "the own certificate in tls.crt is not valid until {}; browsers will warn until then",
            fmt_date(okc.not_before)
        ));
    }
    if col.lkc_here {
        d.actions.push(Action::StashLive { host: h.into() });
        d.reasons.push(
            "own certificate: the Let's Encrypt certificate is stashed and the own one written"
                .into(),
        );
    } else if col.okc {
        d.reasons.push("own certificate: replaces the old own certificate".into());
    } else {
        d.reasons.push("own certificate: written to the ssl directory; https".into());
    }
    d.actions.push(Action::WriteOkc);
    Ok(d.plan(Serve::Okc, None))
}

/// Rows "LE, no usable LKC" and "LE with usable LKC": the newest usable
/// candidate is served; with none, provision one now.
fn row_lets_encrypt(
    f: &Facts,
    carried: Option<&Candidate>,
    current: &Current,
    col: Column,
    mut d: Draft,
) -> Plan {
    let h = f.hostname.as_str();
    let judged = judge_candidates(f, carried, &mut d);
    let Some((source, chosen)) = newest(&judged.usable) else {
        return provision(f, current, col, d);
    };
    let vs = over_the_others(&judged.usable, source);
    match source {
        Source::Live => {
            d.reasons.push(format!(
                "keep the live certificate, valid until {}{vs}",
                fmt_date(chosen.not_after)
            ));
        }
        Source::Stash => {
            d.actions.push(Action::Unstash { host: h.into() });
            d.reasons.push(format!(
                "unstash the stashed certificate, valid until {}{vs}; no new issuance",
                fmt_date(chosen.not_after)
            ));
        }
        Source::Json => {
            if judged.stash_usable {
                d.actions.push(Action::DeleteStash { host: h.into() });
            }
            d.actions.push(Action::ImportCarried { host: h.into() });
            let how = if f.live.is_some() {
                "as the next version of the live lineage"
            } else {
                "as a new lineage under renewal"
            };
            d.reasons.push(format!(
                "use the certificate carried in the Site JSON, valid until {}{vs}, {how}",
                fmt_date(chosen.not_after)
            ));
        }
    }
    if col.okc {
        d.actions.push(Action::RemoveOkc);
    }
    d.plan(Serve::Lkc { host: h.into() }, None)
}

/// The usable LKC candidates, in the order ties are broken by (live, stash,
/// Site JSON), and whether the stash entry is one of them.
struct Judged {
    usable: Vec<(Source, Candidate)>,
    stash_usable: bool,
}

/// Judge each LKC candidate: unusable ones are reported (an expired stash
/// entry is deleted unless the clock cannot be right, any other unusable one
/// is left alone).
fn judge_candidates(f: &Facts, carried: Option<&Candidate>, d: &mut Draft) -> Judged {
    let (h, now) = (f.hostname.as_str(), f.now);
    let mut usable: Vec<(Source, Candidate)> = Vec::new();
    if let Some(live) = &f.live {
        match live.problem(h, now) {
            None => usable.push((Source::Live, live.clone())),
            Some(p) => d.reasons.push(format!("the live certificate of {h} is not usable: {p}")),
        }
    }
    let mut stash_usable = false;
    if let Some(st) = &f.stash {
        if st.not_after <= now && !f.clock_plausible {
            d.warnings.push(format!(
                "the stashed certificate of {h} looks expired ({}), but the clock cannot be right (later than every certificate on this device by more than a lifetime): it is left alone",
                fmt_date(st.not_after)
            ));
        } else if st.not_after <= now {
            d.actions.push(Action::DeleteStash { host: h.into() });
            d.reasons.push(format!(
                "the stashed certificate of {h} expired at {}: deleted",
                fmt_date(st.not_after)
            ));
        } else if let Some(p) = st.problem(h, now) {
            d.warnings.push(format!(
                "the stashed certificate of {h} is not usable and is left alone: {p}"
            ));
        } else {
            stash_usable = true;
            usable.push((Source::Stash, st.clone()));
        }
    }
    if let Some(c) = carried {
        match c.problem(h, now) {
            None => usable.push((Source::Json, c.clone())),
            Some(p) => d
                .warnings
                .push(format!("the Let's Encrypt certificate in the Site JSON is ignored: {p}")),
        }
    }
    Judged { usable, stash_usable }
}

/// Newest wins; ties keep what the device has (the candidates' order).
fn newest(cands: &[(Source, Candidate)]) -> Option<(Source, &Candidate)> {
    cands.iter().fold(None::<(Source, &Candidate)>, |best, (s, c)| match best {
        Some((_, b)) if b.not_after >= c.not_after => best,
        _ => Some((*s, c)),
    })
}

/// " (over the …)" naming the usable candidates that were not chosen, or "".
fn over_the_others(cands: &[(Source, Candidate)], chosen: Source) -> String {
    let others: Vec<String> = cands
        .iter()
        .filter(|(s, _)| *s != chosen)
        .map(|(s, c)| format!("{} until {}", source_name(*s), fmt_date(c.not_after)))
        .collect();
    if others.is_empty() {
        String::new()
    } else {
        format!(" (over the {})", others.join(", "))
    }
}

/// No usable LKC: provision one now; if that fails, keep serving a usable
/// old OKC, else http (the site is pending).
fn provision(f: &Facts, current: &Current, col: Column, mut d: Draft) -> Plan {
    let h = f.hostname.as_str();
    d.actions.push(Action::Provision { host: h.into() });
    if col.okc {
        d.actions.push(Action::RemoveOkc);
    }
    let fallback = match current {
        Current::Okc { okc, .. } if okc.usable(h, f.now) => {
            d.reasons.push("no usable Let's Encrypt certificate: provision one now; if that fails, keep serving the old own certificate".into());
            Serve::Okc
        }
        _ => {
            let what = if col.lkc_here {
                "renew the expired live certificate now"
            } else {
                "provision one now"
            };
            d.reasons.push(format!("no usable Let's Encrypt certificate: {what}; if that fails, serve http and retry at the next renew"));
            Serve::Http
        }
    };
    d.plan(Serve::Lkc { host: h.into() }, Some(fallback))
}

fn source_name(s: Source) -> &'static str {
    match s {
        Source::Live => "live certificate",
        Source::Stash => "stashed certificate",
        Source::Json => "Site JSON's certificate",
    }
}

fn plan(
    actions: Vec<Action>,
    serve: Serve,
    on_failure: Option<Serve>,
    reasons: Vec<String>,
    warnings: Vec<String>,
) -> Plan {
    Plan { actions, serve, on_failure, reason: reasons.join("; "), warnings }
}

#[cfg(test)]
mod tests;
