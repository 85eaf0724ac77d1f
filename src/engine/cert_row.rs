//! A row of `certificates`: one certificate (a live or stashed lineage, an
//! own certificate, a pending site) or one revocation still owed. `--json`
//! prints the rows serialized; the text listing reads the same fields. Every
//! time is a [`DateTime`], printed in RFC 3339 in whole seconds with `Z`.

use super::ts;
use crate::renewal::DueBy;
use crate::site::SiteId;
use chrono::{DateTime, Utc};
use serde::{Serialize, Serializer};

/// What a row is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum State {
    Live,
    Stashed,
    /// The site's own certificate.
    Okc,
    /// A Let's Encrypt site with no certificate yet.
    Pending,
    /// A revocation the CA has not confirmed yet.
    RevocationOwed,
}

impl State {
    pub(super) fn name(self) -> &'static str {
        match self {
            State::Live => "live",
            State::Stashed => "stashed",
            State::Okc => "okc",
            State::Pending => "pending",
            State::RevocationOwed => "revocation_owed",
        }
    }
}

/// One row, as `certificates --json` prints it.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub(super) enum Row {
    Certificate(CertificateRow),
    Owed(OwedRow),
}

/// A certificate: the fields a row does not have are left out.
#[derive(Debug, Clone, Serialize)]
pub(super) struct CertificateRow {
    pub host: String,
    /// The site it belongs to; `null` for a lineage no deployed site names.
    pub siteid: Option<SiteId>,
    pub state: State,
    /// A lineage's version (`Some(None)`: `null`, it cannot be read); left
    /// out for an own certificate and a pending site.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<Option<u32>>,
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "super::ser_ts_opt")]
    pub not_before: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "super::ser_ts_opt")]
    pub not_after: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub names: Option<Vec<String>>,
    /// When renew renews it (a live lineage), and which rule says so.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "super::ser_ts_opt")]
    pub due: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub due_by: Option<DueBy>,
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "secs_pair_opt")]
    pub ari_window: Option<(DateTime<Utc>, DateTime<Utc>)>,
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "super::ser_ts_opt")]
    pub next_ari_check: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    /// Renewal back-off (a live lineage or a pending site that failed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failures: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Why the recorded next attempt does not hold (then there is no `next_attempt`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backoff_ignored: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "super::ser_ts_opt")]
    pub next_attempt: Option<DateTime<Utc>>,
    /// Fleet mode: a lineage the fleet shares (left out on a single device).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub fleet: bool,
    /// Fleet mode: the fleet could not be reached at the last sync: why, since when.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fleet_error: Option<String>,
}

impl CertificateRow {
    /// A row with only its host, site and state; the rest is filled in.
    pub(super) fn new(host: impl Into<String>, siteid: Option<SiteId>, state: State) -> Self {
        CertificateRow {
            host: host.into(),
            siteid,
            state,
            version: None,
            not_before: None,
            not_after: None,
            serial: None,
            issuer: None,
            names: None,
            due: None,
            due_by: None,
            ari_window: None,
            next_ari_check: None,
            profile: None,
            problem: None,
            failures: None,
            last_error: None,
            backoff_ignored: None,
            next_attempt: None,
            fleet: false,
            fleet_error: None,
        }
    }
}

/// A revocation still owed.
#[derive(Debug, Clone, Serialize)]
pub(super) struct OwedRow {
    pub host: String,
    /// Always [`State::RevocationOwed`].
    pub state: State,
    pub serial: String,
    pub reason: String,
    #[serde(serialize_with = "super::ser_ts")]
    pub since: DateTime<Utc>,
    pub attempts: u32,
    /// Always present (`null` before the first attempt fails).
    pub last_error: Option<String>,
    pub problem: String,
}

impl Row {
    /// The line the text listing prints.
    pub(super) fn text(&self) -> String {
        let dash = |t: Option<DateTime<Utc>>| t.map(ts).unwrap_or_else(|| "-".into());
        let (state, host, siteid, expires, due, by, problem, failing) = match self {
            Row::Certificate(r) => (
                r.state,
                r.host.as_str(),
                r.siteid.as_ref().map(SiteId::as_str).unwrap_or("-"),
                dash(r.not_after),
                dash(r.due),
                r.due_by.map(|b| format!(" ({})", due_by_name(b))).unwrap_or_default(),
                r.problem.as_deref(),
                match r.failures {
                    Some(n) => format!(
                        "  FAILED {n}x, next attempt {}: {}",
                        dash(r.next_attempt),
                        r.last_error.as_deref().unwrap_or("-")
                    ),
                    None => String::new(),
                } + if r.fleet { "  fleet" } else { "" }
                    + &r.fleet_error
                        .as_deref()
                        .map(|e| format!("  FLEET UNREACHABLE: {e}"))
                        .unwrap_or_default(),
            ),
            Row::Owed(o) => (
                o.state,
                o.host.as_str(),
                "-",
                dash(None),
                dash(None),
                String::new(),
                Some(o.problem.as_str()),
                String::new(),
            ),
        };
        let problem = problem.map(|p| format!("  PROBLEM: {p}")).unwrap_or_default();
        format!("{:<8} {host:<40} site {siteid:<41} expires {expires:<20} due {due:<20}{by}{problem}{failing}", state.name())
    }
}

/// `due_by` as the JSON names it.
fn due_by_name(b: DueBy) -> String {
    serde_json::to_value(b).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
}

fn secs_pair_opt<S: Serializer>(
    t: &Option<(DateTime<Utc>, DateTime<Utc>)>,
    s: S,
) -> Result<S::Ok, S::Error> {
    t.map(|(a, b)| [ts(a), ts(b)]).serialize(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn a_live_row_prints_as_the_listing_always_has() {
        let mut r = CertificateRow::new("a.example", None, State::Live);
        r.version = Some(Some(2));
        r.not_before = Some(at("2026-01-01T00:00:00Z"));
        r.not_after = Some(at("2026-04-01T00:00:00Z"));
        r.serial = Some("3a9f".into());
        r.issuer = Some("CN=R1".into());
        r.names = Some(vec!["a.example".into()]);
        r.due = Some(at("2026-03-02T00:00:00.5Z"));
        r.due_by = Some(DueBy::Ari);
        r.ari_window = Some((at("2026-03-01T12:00:00.25+00:00"), at("2026-03-03T00:00:00Z")));
        r.failures = Some(2);
        r.last_error = Some("timeout".into());
        r.next_attempt = Some(at("2026-03-02T01:40:00Z"));
        let text = serde_json::to_string(&Row::Certificate(r.clone())).unwrap();
        let old = json!({
            "host": "a.example", "siteid": null, "state": "live", "version": 2,
            "not_before": "2026-01-01T00:00:00Z", "not_after": "2026-04-01T00:00:00Z", "serial": "3a9f", "issuer": "CN=R1",
            "names": ["a.example"], "due": "2026-03-02T00:00:00Z", "due_by": "ari",
            "ari_window": ["2026-03-01T12:00:00Z", "2026-03-03T00:00:00Z"],
            "failures": 2, "last_error": "timeout", "next_attempt": "2026-03-02T01:40:00Z",
        });
        assert_eq!(text, old.to_string());
        assert_eq!(
            Row::Certificate(r).text(),
            format!(
                "{:<8} {:<40} site {:<41} expires {:<20} due {:<20} (ari)  FAILED 2x, next attempt 2026-03-02T01:40:00Z: timeout",
                "live", "a.example", "-", "2026-04-01T00:00:00Z", "2026-03-02T00:00:00Z"
            )
        );
    }

    #[test]
    fn pending_okc_and_owed_rows_leave_out_what_they_lack() {
        let id = SiteId::parse(&format!("s{}", "1".repeat(40))).unwrap();
        let p = CertificateRow::new("p.example", Some(id.clone()), State::Pending);
        assert_eq!(
            serde_json::to_value(Row::Certificate(p)).unwrap(),
            json!({"host": "p.example", "siteid": id.as_str(), "state": "pending"})
        );
        let mut o = CertificateRow::new("o.example", Some(id.clone()), State::Okc);
        o.problem = Some("its files are missing".into());
        assert_eq!(
            serde_json::to_string(&Row::Certificate(o)).unwrap(),
            json!({"host": "o.example", "siteid": id.as_str(), "state": "okc", "problem": "its files are missing"}).to_string()
        );
        let mut l = CertificateRow::new("l.example", None, State::Stashed);
        l.version = Some(None);
        assert_eq!(
            serde_json::to_string(&Row::Certificate(l)).unwrap(),
            r#"{"host":"l.example","siteid":null,"state":"stashed","version":null}"#
        );
        let owed = Row::Owed(OwedRow {
            host: "r.example".into(),
            state: State::RevocationOwed,
            serial: "3a".into(),
            reason: "keyCompromise".into(),
            since: at("2026-01-01T00:00:00.9Z"),
            attempts: 0,
            last_error: None,
            problem: "owed".into(),
        });
        let old = json!({
            "host": "r.example", "state": "revocation_owed", "serial": "3a", "reason": "keyCompromise", "since": "2026-01-01T00:00:00Z",
            "attempts": 0, "last_error": null, "problem": "owed",
        });
        assert_eq!(serde_json::to_string(&owed).unwrap(), old.to_string());
        assert!(owed.text().starts_with("revocation_owed r.example"), "{}", owed.text());
        assert!(owed.text().ends_with("  PROBLEM: owed"), "{}", owed.text());
    }
}
