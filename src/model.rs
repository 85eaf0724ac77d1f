//! Plain data the pure cores ([`crate::decide`], [`crate::renewal`],
//! [`crate::backoff`]) share with the modules that do I/O: the ground floor.
//!
//! This module imports no other module of the crate, and does no I/O: the
//! modules that read and write these values (the config file, the renewal
//! confs, the ACME client) sit above it and re-export what they own at their
//! old paths (`config::KeyType`, `acme::Eab`, `site::ProfileWish`,
//! `store::AriState`).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Certificate key algorithm for new keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyType {
    /// ECDSA P-256 (the default).
    Ecdsa,
    /// RSA 2048.
    Rsa,
}

impl KeyType {
    /// certbot's spelling (`key_type = ecdsa|rsa`).
    pub fn parse(s: &str) -> Option<KeyType> {
        match s.trim() {
            "ecdsa" => Some(KeyType::Ecdsa),
            "rsa" => Some(KeyType::Rsa),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            KeyType::Ecdsa => "ecdsa",
            KeyType::Rsa => "rsa",
        }
    }
}

/// An External Account Binding credential ([RFC 8555 §7.3.4]): the key id
/// and the MAC key (base64url) the CA gave the administrator.
///
/// [RFC 8555 §7.3.4]: https://www.rfc-editor.org/rfc/rfc8555#section-7.3.4
#[derive(Clone)]
pub struct Eab {
    pub kid: String,
    pub hmac_key: Vec<u8>,
}

impl std::fmt::Debug for Eab {
    /// Never the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Eab {{ kid: {:?}, hmac_key: <{} bytes> }}", self.kid, self.hmac_key.len())
    }
}

/// A certificate profile to ask for, and whether the CA must offer it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileWish {
    pub name: String,
    pub required: bool,
}

/// A lineage's ARI state, kept in its renewal conf's `[acme_renewal_info]`
/// section — where certbot 5 keeps its own `ari_retry_after` (a naive local
/// time, which certbot honours too) — beside site-admin's own keys. Reading
/// and writing it is [`crate::store`]'s.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AriState {
    /// Not to be asked again before this (`Retry-After` of the last answer).
    pub retry_after: Option<DateTime<Utc>>,
    /// The CertID the rest is about (a new version invalidates it).
    pub cert_id: Option<String>,
    /// The latest suggested window.
    pub window: Option<(DateTime<Utc>, DateTime<Utc>)>,
    /// The moment picked (once) inside that window.
    pub chosen: Option<DateTime<Utc>>,
    pub explanation_url: Option<String>,
    /// Whether the lineage's server offers ARI at all (None: not asked yet).
    pub offered: Option<bool>,
}

#[cfg(test)]
mod tests {
    /// The pure cores and this module, by name and source.
    const GROUND_FLOOR: [(&str, &str); 4] = [
        ("model", include_str!("model.rs")),
        ("decide", include_str!("decide.rs")),
        ("renewal", include_str!("renewal.rs")),
        ("backoff", include_str!("backoff.rs")),
    ];

    /// The crate modules and std paths a module of the ground floor uses
    /// outside its comments and its tests (`mod tests` comes last).
    fn uses(src: &str) -> Vec<String> {
        let code = src.split("#[cfg(test)]").next().unwrap_or(src);
        let mut out = Vec::new();
        for line in code.lines().map(|l| l.split("//").next().unwrap_or("")) {
            for (i, _) in line.match_indices("crate::") {
                let rest = &line[i + "crate::".len()..];
                if rest.starts_with('{') {
                    let group = &rest[1..rest.find('}').unwrap_or(rest.len())];
                    out.extend(
                        group
                            .split(',')
                            .map(|p| p.trim().split("::").next().unwrap_or("").to_string()),
                    );
                } else {
                    out.push(
                        rest.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                            .next()
                            .unwrap_or("")
                            .to_string(),
                    );
                }
            }
            for io in [
                "std::fs",
                "std::net",
                "std::process",
                "std::io",
                "std::env",
                "tracing::",
                "openssl::",
                "reqwest::",
            ] {
                if line.contains(io) {
                    out.push(io.to_string());
                }
            }
        }
        out
    }

    #[test]
    fn the_pure_cores_import_only_each_other_and_this_module() {
        let floor: Vec<&str> = GROUND_FLOOR.iter().map(|(n, _)| *n).collect();
        for (name, src) in GROUND_FLOOR {
            for used in uses(src) {
                assert!(
                    floor.contains(&used.as_str()),
                    "{name} uses {used}: the pure cores import no module that does I/O"
                );
            }
        }
    }

    #[test]
    fn the_check_sees_a_use_of_an_io_module() {
        assert_eq!(
            uses("use crate::config::KeyType;\nuse crate::{store::AriState, model};\n"),
            ["config", "store", "model"]
        );
        assert_eq!(uses("let t = std::fs::read(p);\n// crate::apache in a comment\n#[cfg(test)]\nuse crate::lock;"), ["std::fs"]);
    }
}
