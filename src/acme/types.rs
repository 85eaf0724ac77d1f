//! The ACME resources as types ([RFC 8555 §7.1]): orders, authorizations and
//! challenges with their states (§7.1.6), and problem documents (§6.7) with
//! the types the engine acts on. Nothing here matches on strings elsewhere.
//!
//! [RFC 8555 §7.1]: https://www.rfc-editor.org/rfc/rfc8555#section-7.1
//! [RFC 8555 §7.1.6]: https://www.rfc-editor.org/rfc/rfc8555#section-7.1.6
//! [RFC 8555 §6.7]: https://www.rfc-editor.org/rfc/rfc8555#section-6.7

use serde::{Deserialize, Deserializer};
use std::fmt;

/// CA-provided text made safe for one log line or one renewal-conf value:
/// every control character (CR, LF, tab, ESC, NEL...) and the Unicode line
/// and paragraph separators are written as escapes (`\n`, `\u{1b}`). Every
/// string of an ACME resource passes through this once, when it is parsed.
pub fn clean(s: &str) -> String {
    if !s.chars().any(needs_escape) {
        return s.to_string();
    }
    s.chars()
        .map(|c| if needs_escape(c) { c.escape_default().to_string() } else { c.to_string() })
        .collect()
}

fn needs_escape(c: char) -> bool {
    c.is_control() || c == '\u{2028}' || c == '\u{2029}'
}

/// A CA-provided URL to show or keep (an ARI `explanationURL`, terms of
/// service): an http(s) URL of printable ASCII without spaces, quotes,
/// backslashes or commas, cut at its fragment; else none.
pub fn clean_url(s: &str) -> Option<String> {
    let s = s.split('#').next().unwrap_or("");
    let ok = (s.starts_with("https://") || s.starts_with("http://"))
        && s.len() <= 2048
        && s.chars().all(|c| c.is_ascii_graphic() && !matches!(c, '"' | '\'' | '\\' | ','));
    ok.then(|| s.to_string())
}

fn de_clean<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(clean(&String::deserialize(d)?))
}

fn de_clean_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(Option::<String>::deserialize(d)?.map(|s| clean(&s)))
}

fn de_clean_vec<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(Vec::<String>::deserialize(d)?.iter().map(|s| clean(s)).collect())
}

/// An order's state (§7.1.6): pending → ready → processing → valid, or invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OrderStatus {
    Pending,
    Ready,
    Processing,
    Valid,
    Invalid,
    #[serde(other)]
    Unknown,
}

/// An authorization's state (§7.1.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthzStatus {
    Pending,
    Valid,
    Invalid,
    Deactivated,
    Expired,
    Revoked,
    #[serde(other)]
    Unknown,
}

/// A challenge's state (§7.1.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChallengeStatus {
    Pending,
    Processing,
    Valid,
    Invalid,
    #[serde(other)]
    Unknown,
}

macro_rules! lowercase_display {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let s = format!("{self:?}").to_lowercase();
                f.write_str(if s == "unknown" { "in an unknown state" } else { &s })
            }
        }
    )*};
}
lowercase_display!(OrderStatus, AuthzStatus, ChallengeStatus);

/// An identifier (§7.1.3).
#[derive(Debug, Clone, Deserialize)]
pub struct Identifier {
    #[serde(rename = "type", default, deserialize_with = "de_clean")]
    pub kind: String,
    #[serde(default, deserialize_with = "de_clean")]
    pub value: String,
}

/// An order object (§7.1.3).
#[derive(Debug, Clone, Deserialize)]
pub struct Order {
    pub status: OrderStatus,
    #[serde(default, deserialize_with = "de_clean_vec")]
    pub authorizations: Vec<String>,
    #[serde(deserialize_with = "de_clean")]
    pub finalize: String,
    #[serde(default, deserialize_with = "de_clean_opt")]
    pub certificate: Option<String>,
    #[serde(default)]
    pub error: Option<Problem>,
}

/// An authorization object (§7.1.4).
#[derive(Debug, Clone, Deserialize)]
pub struct Authorization {
    pub status: AuthzStatus,
    pub identifier: Identifier,
    #[serde(default)]
    pub challenges: Vec<Challenge>,
}

/// A challenge object (§7.1.5, §8).
#[derive(Debug, Clone, Deserialize)]
pub struct Challenge {
    #[serde(rename = "type", deserialize_with = "de_clean")]
    pub kind: String,
    #[serde(deserialize_with = "de_clean")]
    pub url: String,
    #[serde(default, deserialize_with = "de_clean")]
    pub token: String,
    pub status: ChallengeStatus,
    #[serde(default)]
    pub error: Option<Problem>,
}

/// A problem document (§6.7).
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Problem {
    #[serde(rename = "type", default, deserialize_with = "de_clean")]
    pub ptype: String,
    #[serde(default, deserialize_with = "de_clean")]
    pub detail: String,
    #[serde(default)]
    pub subproblems: Vec<SubProblem>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct SubProblem {
    #[serde(rename = "type", default, deserialize_with = "de_clean")]
    pub ptype: String,
    #[serde(default, deserialize_with = "de_clean")]
    pub detail: String,
    #[serde(default)]
    pub identifier: Option<SubIdentifier>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct SubIdentifier {
    #[serde(default, deserialize_with = "de_clean")]
    pub value: String,
}

impl fmt::Display for Problem {
    /// One sentence: the short type name and the detail, then subproblems.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let short = self.ptype.rsplit(':').next().unwrap_or(&self.ptype);
        write!(
            f,
            "{short}: {}",
            if self.detail.is_empty() { "(no detail)" } else { &self.detail }
        )?;
        if !self.subproblems.is_empty() {
            let subs: Vec<String> = self
                .subproblems
                .iter()
                .map(|s| {
                    format!(
                        "{}: {} {}",
                        s.identifier.as_ref().map(|i| i.value.as_str()).unwrap_or("?"),
                        s.ptype.rsplit(':').next().unwrap_or(""),
                        s.detail
                    )
                })
                .collect();
            write!(f, " [{}]", subs.join("; "))?;
        }
        Ok(())
    }
}

/// The problem types the engine tells apart (§6.7, RFC 9773 §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProblemKind {
    AccountDoesNotExist,
    AlreadyReplaced,
    BadNonce,
    ExternalAccountRequired,
    RateLimited,
    /// Also how a deactivated account is answered.
    Unauthorized,
    /// A validation failure: the CA could not reach or verify the challenge.
    Validation,
    Malformed,
    Other,
}

impl ProblemKind {
    pub fn of(ptype: &str) -> ProblemKind {
        match ptype.strip_prefix("urn:ietf:params:acme:error:").unwrap_or("") {
            "accountDoesNotExist" => ProblemKind::AccountDoesNotExist,
            "alreadyReplaced" => ProblemKind::AlreadyReplaced,
            "badNonce" => ProblemKind::BadNonce,
            "externalAccountRequired" => ProblemKind::ExternalAccountRequired,
            "rateLimited" => ProblemKind::RateLimited,
            "unauthorized" => ProblemKind::Unauthorized,
            "connection" | "dns" | "incorrectResponse" | "tls" | "caa" => ProblemKind::Validation,
            "malformed" => ProblemKind::Malformed,
            _ => ProblemKind::Other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_parse_and_unknown_ones_do_not_fail() {
        let o: Order =
            serde_json::from_str(r#"{"status":"ready","finalize":"u","authorizations":["a"]}"#)
                .unwrap();
        assert_eq!(o.status, OrderStatus::Ready);
        let o: Order = serde_json::from_str(r#"{"status":"frozen","finalize":"u"}"#).unwrap();
        assert_eq!(o.status, OrderStatus::Unknown);
        assert_eq!(AuthzStatus::Invalid.to_string(), "invalid");
        assert_eq!(OrderStatus::Unknown.to_string(), "in an unknown state");
    }

    #[test]
    fn problems_read_as_one_sentence_and_have_a_kind() {
        let p: Problem = serde_json::from_str(
            r#"{"type":"urn:ietf:params:acme:error:rejectedIdentifier","detail":"no","subproblems":[{"type":"urn:ietf:params:acme:error:dns","detail":"NXDOMAIN","identifier":{"type":"dns","value":"a.test"}}]}"#,
        )
        .unwrap();
        assert_eq!(p.to_string(), "rejectedIdentifier: no [a.test: dns NXDOMAIN]");
        assert_eq!(
            ProblemKind::of("urn:ietf:params:acme:error:accountDoesNotExist"),
            ProblemKind::AccountDoesNotExist
        );
        assert_eq!(
            ProblemKind::of("urn:ietf:params:acme:error:connection"),
            ProblemKind::Validation
        );
        assert_eq!(ProblemKind::of("about:blank"), ProblemKind::Other);
    }

    #[test]
    fn ca_text_never_breaks_a_line() {
        let p: Problem = serde_json::from_str(
            r#"{"type":"urn:ietf:params:acme:error:malformed\n[renewalparams]","detail":"bad\r\npre_hook = rm -rf /\u001b[2J\u2028x","subproblems":[{"type":"t","detail":"a\nb","identifier":{"value":"h\n.test"}}]}"#,
        )
        .unwrap();
        let shown = p.to_string();
        assert!(!shown.chars().any(|c| c.is_control() || c == '\u{2028}'), "{shown}");
        assert!(shown.contains("bad\\r\\npre_hook = rm -rf /\\u{1b}[2J\\u{2028}x"), "{shown}");
        let o: Order = serde_json::from_str(r#"{"status":"ready","finalize":"u\nv","authorizations":["a\tb"],"certificate":"c\rd"}"#).unwrap();
        assert_eq!(
            (o.finalize.as_str(), o.authorizations[0].as_str(), o.certificate.as_deref()),
            ("u\\nv", "a\\tb", Some("c\\rd"))
        );
        assert_eq!(clean("plain"), "plain");
        assert_eq!(
            clean_url("https://ca.test/why?a=1#frag").as_deref(),
            Some("https://ca.test/why?a=1")
        );
        for bad in [
            "https://ca.test/\n[renewalparams]",
            "https://ca.test/ x",
            "\"https://ca.test/",
            "https://ca.test/a,b",
            "ftp://x",
            "https://ca.test/é",
        ] {
            assert_eq!(clean_url(bad), None, "{bad:?}");
        }
    }
}
