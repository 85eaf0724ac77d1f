//! The fleet's record of one host's certificate: one etcd key per host
//! (`<prefix>lineages/<host>`), so the key and the certificate always change
//! together. The private key is sealed ([`super::seal`]) with the record's
//! etcd key and version as associated data.
//!
//! A record is anything a peer — or whoever can write the prefix — put
//! there, so reading one trusts nothing it says: the JSON is bounded and
//! strict (unknown fields, another schema, a host that is not a host, or not
//! the one its key names are refused, naming the etcd key and never echoing
//! a value), and what the certificate says (serial, notAfter, CertID, names)
//! is taken from the certificate itself and must agree with the record.

use super::seal::{FleetKey, SealError};
use crate::certs;
use crate::site::Host;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The record layout this version writes and reads.
pub const SCHEMA: u32 = 1;

/// The most a record may hold.
pub const MAX_RECORD: usize = super::etcd::MAX_VALUE;

/// Where a lineage record lives.
pub fn lineage_key(prefix: &str, host: &Host) -> String {
    format!("{prefix}lineages/{}", host.as_str())
}

/// The ARI state the fleet shares for a lineage.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AriRecord {
    /// The suggested window.
    pub window: Option<(DateTime<Utc>, DateTime<Utc>)>,
    /// The moment picked inside it (once per window, for the whole fleet).
    pub chosen: Option<DateTime<Utc>>,
    /// Not to be asked again before.
    pub retry_after: Option<DateTime<Utc>>,
}

/// One host's record as stored (the key sealed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LineageRecord {
    /// [`SCHEMA`].
    pub schema: u32,
    /// The host.
    pub host: Host,
    /// The fleet's version of this lineage: 1, 2, … one per certificate.
    pub version: u64,
    /// The certificate and its chain (PEM, leaf first).
    pub fullchain: String,
    /// The private key, sealed.
    pub key: String,
    /// The leaf's serial (lowercase hex).
    pub serial: String,
    /// The leaf's notAfter.
    pub not_after: DateTime<Utc>,
    /// The leaf's ARI CertID.
    pub cert_id: Option<String>,
    /// The ACME server that issued it (the directory URL).
    pub server: String,
    /// The fleet account that ordered it.
    pub account: Option<String>,
    /// The profile it was ordered with.
    pub profile: Option<String>,
    /// Shared ARI state.
    #[serde(default)]
    pub ari: AriRecord,
    /// The device that renewed it.
    pub renewed_by: String,
    /// When.
    pub renewed_at: DateTime<Utc>,
}

/// A record opened: its key in the clear, its certificate checked.
#[derive(Debug, Clone)]
pub struct OpenLineage {
    /// The record.
    pub record: LineageRecord,
    /// The private key (PEM).
    pub key_pem: String,
    /// The parsed leaf.
    pub leaf: certs::CertInfo,
}

/// What is wrong with a record; always names its etcd key, never a value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// Too large.
    #[error("fleet record {key}: {size} bytes, more than {MAX_RECORD}")]
    TooLarge {
        /// The etcd key.
        key: String,
        /// Its size.
        size: usize,
    },
    /// Not a record of this layout.
    #[error("fleet record {key} cannot be read: {why}")]
    Parse {
        /// The etcd key.
        key: String,
        /// Where and what kind of error (no value from the record).
        why: String,
    },
    /// It contradicts itself or its key.
    #[error("fleet record {key}: {why}")]
    Invalid {
        /// The etcd key.
        key: String,
        /// Why.
        why: String,
    },
    /// The key cannot be opened.
    #[error(transparent)]
    Seal(#[from] SealError),
}

/// What the fleet records about a certificate, besides the certificate.
#[derive(Debug, Clone)]
pub struct Meta {
    /// The issuing ACME server.
    pub server: String,
    /// The account that ordered it.
    pub account: Option<String>,
    /// The profile.
    pub profile: Option<String>,
    /// Shared ARI state.
    pub ari: AriRecord,
    /// This device.
    pub device: String,
    /// Now.
    pub now: DateTime<Utc>,
}

impl LineageRecord {
    /// Seal `key_pem` with `fullchain` as version `version` of `host`.
    pub fn seal(
        fleet: &FleetKey,
        prefix: &str,
        host: &Host,
        version: u64,
        key_pem: &str,
        fullchain: &str,
        meta: Meta,
    ) -> Result<LineageRecord, RecordError> {
        let key = lineage_key(prefix, host);
        let leaf = certs::parse_first_cert(fullchain.as_bytes()).map_err(|e| {
            RecordError::Invalid { key: key.clone(), why: format!("the certificate: {e}") }
        })?;
        Ok(LineageRecord {
            schema: SCHEMA,
            host: host.clone(),
            version,
            fullchain: fullchain.to_string(),
            key: fleet.seal(&key, version, key_pem.as_bytes())?,
            serial: leaf.serial.clone(),
            not_after: leaf.not_after,
            cert_id: leaf.ari_id.clone(),
            server: meta.server,
            account: meta.account,
            profile: meta.profile,
            ari: meta.ari,
            renewed_by: meta.device,
            renewed_at: meta.now,
        })
    }

    /// Read the record stored at `key`: bounded, strict, its host the one its key names.
    pub fn parse(prefix: &str, raw_key: &str, value: &[u8]) -> Result<LineageRecord, RecordError> {
        // The key as messages show it: whoever wrote it may have put anything there.
        let shown_key: String = raw_key.escape_debug().take(200).collect();
        let key = shown_key.as_str();
        if value.len() > MAX_RECORD {
            return Err(RecordError::TooLarge { key: key.into(), size: value.len() });
        }
        let r: LineageRecord = serde_json::from_slice(value).map_err(|e| RecordError::Parse {
            key: key.into(),
            why: format!("{:?} error at line {} column {}", e.classify(), e.line(), e.column()),
        })?;
        let invalid = |why: String| RecordError::Invalid { key: key.into(), why };
        if r.schema != SCHEMA {
            return Err(invalid(format!("schema {} (this site-admin reads {SCHEMA})", r.schema)));
        }
        if lineage_key(prefix, &r.host) != raw_key {
            return Err(invalid("it names another host than its key".into()));
        }
        if r.version == 0 {
            return Err(invalid("version 0".into()));
        }
        // What is not sealed is checked: each field is what it claims to be,
        // so nothing from a record reaches a conf, a request or a message
        // unless it has the shape of its kind.
        let word = |v: &str, max: usize| {
            !v.is_empty()
                && v.len() <= max
                && v.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        };
        if crate::store::accounts::server_rel(&r.server).is_err() {
            return Err(invalid("its server is not a usable ACME server URL".into()));
        }
        if r.account.as_deref().is_some_and(|a| crate::store::accounts::check_id(a).is_err()) {
            return Err(invalid("its account is not an account id".into()));
        }
        if !word(&r.renewed_by, 64) {
            return Err(invalid("its renewed_by is not a device id".into()));
        }
        if r.serial.is_empty()
            || r.serial.len() > 40
            || !r.serial.chars().all(|c| c.is_ascii_hexdigit())
        {
            return Err(invalid("its serial is not a serial number".into()));
        }
        if r.profile.as_deref().is_some_and(|p| !word(p, 64)) {
            return Err(invalid("its profile is not a profile name".into()));
        }
        if r.cert_id
            .as_deref()
            .is_some_and(|c| c.len() > 300 || !c.chars().all(|c| c.is_ascii_graphic()))
        {
            return Err(invalid("its CertID is not one".into()));
        }
        Ok(r)
    }

    /// Open the key and check the certificate against the record.
    pub fn open(&self, fleet: &FleetKey, prefix: &str) -> Result<OpenLineage, RecordError> {
        let key = lineage_key(prefix, &self.host);
        let invalid = |why: String| RecordError::Invalid { key: key.clone(), why };
        let plain = fleet.open(&key, self.version, &self.key)?;
        let key_pem =
            String::from_utf8(plain).map_err(|_| invalid("the sealed key is not PEM".into()))?;
        let kc =
            certs::KeyCert::parse(&key_pem, &self.fullchain).map_err(|e| invalid(e.to_string()))?;
        if !kc.key_matches {
            return Err(invalid("the key does not match the certificate".into()));
        }
        let leaf = kc.leaf;
        if !leaf.covers(self.host.as_str()) {
            return Err(invalid("the certificate does not name its host".into()));
        }
        if leaf.serial != self.serial
            || leaf.not_after != self.not_after
            || leaf.ari_id != self.cert_id
        {
            return Err(invalid(
                "its serial, notAfter or CertID differ from the certificate's".into(),
            ));
        }
        Ok(OpenLineage { record: self.clone(), key_pem, leaf })
    }

    /// The record as stored.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    fn meta() -> Meta {
        Meta {
            server: "https://ca.test/dir".into(),
            account: Some("acct".into()),
            profile: None,
            ari: AriRecord::default(),
            device: "dev-a".into(),
            now: Utc::now(),
        }
    }

    fn material(names: &[&str]) -> (String, String) {
        let now = Utc::now();
        certs::testutil::make(names, now - Duration::days(1), now + Duration::days(60))
    }

    #[test]
    fn a_sealed_record_round_trips_and_shows_no_key() {
        let fk = FleetKey::from_bytes([3; 32]);
        let host = Host::parse("a.example").unwrap();
        let (k, c) = material(&["a.example"]);
        let r = LineageRecord::seal(&fk, "/p/", &host, 2, &k, &c, meta()).unwrap();
        let bytes = r.to_bytes();
        assert!(!String::from_utf8_lossy(&bytes).contains("PRIVATE KEY"));
        let back = LineageRecord::parse("/p/", "/p/lineages/a.example", &bytes).unwrap();
        let open = back.open(&fk, "/p/").unwrap();
        assert_eq!(open.key_pem, k);
        assert_eq!(open.leaf.serial, r.serial);
    }

    #[test]
    fn hostile_records_are_refused_naming_their_key_and_no_value() {
        let fk = FleetKey::from_bytes([3; 32]);
        let host = Host::parse("a.example").unwrap();
        let (k, c) = material(&["a.example"]);
        let r = LineageRecord::seal(&fk, "/p/", &host, 1, &k, &c, meta()).unwrap();
        let key = "/p/lineages/a.example";
        // Under another host's key.
        let e = LineageRecord::parse("/p/", "/p/lineages/b.example", &r.to_bytes())
            .unwrap_err()
            .to_string();
        assert!(e.contains("/p/lineages/b.example") && e.contains("another host"), "{e}");
        // Garbage, a wrong type (its value not echoed), an unknown field, another schema.
        for (bad, want) in [
            (b"{".to_vec(), "cannot be read"),
            (br#"{"schema":"secret-value\nX"}"#.to_vec(), "cannot be read"),
            (
                [&r.to_bytes()[..r.to_bytes().len() - 1], br#","extra":1}"#].concat(),
                "cannot be read",
            ),
        ] {
            let e = LineageRecord::parse("/p/", key, &bad).unwrap_err().to_string();
            assert!(
                e.contains(key)
                    && e.contains(want)
                    && !e.contains("secret-value")
                    && !e.contains('\n'),
                "{e}"
            );
        }
        let mut v: serde_json::Value = serde_json::from_slice(&r.to_bytes()).unwrap();
        v["schema"] = 9.into();
        assert!(LineageRecord::parse("/p/", key, v.to_string().as_bytes())
            .unwrap_err()
            .to_string()
            .contains("schema 9"));
        v["schema"] = 1.into();
        v["host"] = "bad host\n".into();
        assert!(LineageRecord::parse("/p/", key, v.to_string().as_bytes()).is_err());
        // Huge.
        assert!(matches!(
            LineageRecord::parse("/p/", key, &vec![b' '; MAX_RECORD + 1]),
            Err(RecordError::TooLarge { .. })
        ));
        // A record whose claims differ from its certificate, or whose key is another's.
        let mut lying = r.clone();
        lying.not_after += Duration::days(300);
        assert!(lying.open(&fk, "/p/").unwrap_err().to_string().contains("differ"));
        let (k2, _) = material(&["a.example"]);
        let swapped = LineageRecord::seal(&fk, "/p/", &host, 1, &k2, &c, meta()).unwrap();
        assert!(swapped.open(&fk, "/p/").unwrap_err().to_string().contains("does not match"));
        let (k3, c3) = material(&["other.example"]);
        let wrong_name = LineageRecord::seal(&fk, "/p/", &host, 1, &k3, &c3, meta()).unwrap();
        assert!(wrong_name.open(&fk, "/p/").unwrap_err().to_string().contains("does not name"));
        // Another fleet key, or a version replayed.
        assert!(r.open(&FleetKey::from_bytes([4; 32]), "/p/").is_err());
        let mut replayed = r.clone();
        replayed.version = 5;
        assert!(replayed.open(&fk, "/p/").is_err());
    }

    #[test]
    fn a_records_unsealed_fields_must_have_the_shape_of_their_kind() {
        let fk = FleetKey::from_bytes([3; 32]);
        let host = Host::parse("a.example").unwrap();
        let (k, c) = material(&["a.example"]);
        let r = LineageRecord::seal(&fk, "/p/", &host, 1, &k, &c, meta()).unwrap();
        let key = "/p/lineages/a.example";
        for (field, bad, want) in [
            ("server", serde_json::json!("file:///etc/passwd"), "server"),
            ("account", serde_json::json!("../../x"), "account"),
            ("renewed_by", serde_json::json!("dev\n[evil]"), "renewed_by"),
            ("serial", serde_json::json!("zz"), "serial"),
            ("profile", serde_json::json!("a b"), "profile"),
        ] {
            let mut v: serde_json::Value = serde_json::from_slice(&r.to_bytes()).unwrap();
            v[field] = bad;
            let e =
                LineageRecord::parse("/p/", key, v.to_string().as_bytes()).unwrap_err().to_string();
            assert!(
                e.contains(want) && e.contains(key) && !e.contains("evil") && !e.contains("passwd"),
                "{field}: {e}"
            );
        }
        // A key with a newline is shown escaped.
        let e = LineageRecord::parse("/p/", "/p/lineages/x\ny", b"{").unwrap_err().to_string();
        assert!(!e.contains('\n'), "{e}");
    }
}
