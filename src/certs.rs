//! Certificate material: PEM keys and chains, what a certificate says
//! (validity, names, issuer, serial), whether a key matches it, and whether
//! it covers a host name. Bad input is an error, never a panic.

use chrono::{DateTime, TimeZone, Utc};
use openssl::pkey::{PKey, Private};
use serde::Serialize;
use std::fmt;

/// Why some PEM could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PemError(pub String);

impl fmt::Display for PemError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for PemError {}

/// What one certificate says, as plain data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertInfo {
    pub not_before: DateTime<Utc>,
    pub not_after: DateTime<Utc>,
    /// subjectAltNames: DNS names (lowercase) and IP addresses; never the CN.
    pub names: Vec<String>,
    /// The ARI CertID ([RFC 9773 §4.1]): base64url(AKI keyIdentifier) "."
    /// base64url(serial), when the certificate has an AKI.
    ///
    /// [RFC 9773 §4.1]: https://www.rfc-editor.org/rfc/rfc9773#section-4.1
    pub ari_id: Option<String>,
    pub issuer: String,
    pub subject: String,
    /// Serial number, lowercase hex without leading zeros.
    pub serial: String,
    #[serde(skip)]
    pub der: Vec<u8>,
}

impl CertInfo {
    /// Does this certificate cover `host` (exact name, or a one-label
    /// wildcard; an IP address exactly)?
    pub fn covers(&self, host: &str) -> bool {
        if let Ok(ip) = host.parse::<std::net::IpAddr>() {
            return self.names.iter().any(|n| n.parse::<std::net::IpAddr>().ok() == Some(ip));
        }
        let host = host.to_ascii_lowercase();
        self.names.iter().any(|n| name_covers(n, &host))
    }
    pub fn expired_at(&self, now: DateTime<Utc>) -> bool {
        self.not_after <= now
    }
    /// Lifetime of the certificate.
    pub fn lifetime(&self) -> chrono::Duration {
        self.not_after - self.not_before
    }
}

/// `*.example.com` covers `a.example.com` only: one label, not the apex.
pub fn name_covers(pattern: &str, host: &str) -> bool {
    if let Some(suffix) = pattern.strip_prefix("*.") {
        match host.split_once('.') {
            Some((first, rest)) => !first.is_empty() && rest == suffix,
            None => false,
        }
    } else {
        pattern == host
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    // One string for the whole serial (it used to be one per byte: 20
    // allocations per certificate read, on every lineage of a no-op pass).
    let mut s = String::with_capacity(2 * bytes.len());
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    match s.trim_start_matches('0') {
        "" => "0".into(),
        t if t.len() == s.len() => s,
        t => t.into(),
    }
}

/// Parse one DER certificate.
pub fn parse_cert_der(der: &[u8]) -> Result<CertInfo, PemError> {
    use x509_parser::prelude::*;
    let (rest, cert) = X509Certificate::from_der(der)
        .map_err(|_| PemError("not a valid X.509 certificate (corrupt or truncated)".into()))?;
    if !rest.is_empty() {
        return Err(PemError("trailing data after the certificate".into()));
    }
    let ts = |t: ASN1Time| {
        Utc.timestamp_opt(t.timestamp(), 0)
            .single()
            .ok_or_else(|| PemError("certificate date out of range".into()))
    };
    // Names by subjectAltName only, never the CN (the `tlsserver` and
    // `shortlived` profiles issue certificates without one): DNS names, and
    // IP addresses (RFC 8738) in their text form.
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for gn in &san.value.general_names {
            match gn {
                GeneralName::DNSName(n) => names.push(n.to_ascii_lowercase()),
                GeneralName::IPAddress(b) => {
                    let ip: Option<std::net::IpAddr> = match b.len() {
                        4 => <[u8; 4]>::try_from(*b).ok().map(|a| a.into()),
                        16 => <[u8; 16]>::try_from(*b).ok().map(|a| a.into()),
                        _ => None,
                    };
                    if let Some(ip) = ip {
                        names.push(ip.to_string());
                    }
                }
                _ => {}
            }
        }
    }
    let ari_id = cert.extensions().iter().find_map(|e| match e.parsed_extension() {
        ParsedExtension::AuthorityKeyIdentifier(aki) => {
            aki.key_identifier.as_ref().map(|k| k.0.to_vec())
        }
        _ => None,
    });
    let ari_id = ari_id.map(|kid| {
        use base64::Engine;
        let b = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!("{}.{}", b.encode(kid), b.encode(cert.raw_serial()))
    });
    Ok(CertInfo {
        ari_id,
        not_before: ts(cert.validity().not_before)?,
        not_after: ts(cert.validity().not_after)?,
        names,
        issuer: cert.issuer().to_string(),
        subject: cert.subject().to_string(),
        serial: hex(cert.raw_serial()),
        der: der.to_vec(),
    })
}

/// The PEM blocks of a text, each normalised to end in a newline.
pub fn pem_blocks(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur: Option<String> = None;
    for line in text.lines() {
        let l = line.trim_end();
        if l.starts_with("-----BEGIN ") {
            cur = Some(String::new());
        }
        if let Some(c) = cur.as_mut() {
            c.push_str(l);
            c.push('\n');
        }
        if l.starts_with("-----END ") {
            if let Some(c) = cur.take() {
                out.push(c);
            }
        }
    }
    out
}

/// The first certificate of a PEM text (a leaf's `cert.pem`), parsed: what
/// a no-op renewal pass needs, without reading the rest.
pub fn parse_first_cert(pem: &[u8]) -> Result<CertInfo, PemError> {
    let (_, p) = x509_parser::pem::parse_x509_pem(pem)
        .map_err(|_| PemError("no PEM CERTIFICATE block found".into()))?;
    parse_cert_der(&p.contents)
}

/// Parse a PEM chain: one or more `CERTIFICATE` blocks, leaf first.
pub fn parse_chain(pem: &str) -> Result<Vec<CertInfo>, PemError> {
    if pem.trim().is_empty() {
        return Err(PemError("empty (no certificate)".into()));
    }
    let mut out = Vec::new();
    for item in x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes()) {
        let p = item.map_err(|e| PemError(format!("not valid PEM ({e})")))?;
        if p.label != "CERTIFICATE" {
            return Err(PemError(format!(
                "holds a {} block where a CERTIFICATE was expected",
                p.label
            )));
        }
        out.push(parse_cert_der(&p.contents)?);
    }
    if out.is_empty() {
        return Err(PemError("no PEM CERTIFICATE block found".into()));
    }
    Ok(out)
}

/// Parse a PEM private key (PKCS#8, SEC1 EC or PKCS#1 RSA).
pub fn parse_key(pem: &str) -> Result<PKey<Private>, PemError> {
    if pem.trim().is_empty() {
        return Err(PemError("empty (no private key)".into()));
    }
    if !pem.contains("PRIVATE KEY-----") {
        return Err(PemError("no PEM PRIVATE KEY block found".into()));
    }
    if pem.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----")
        || pem.contains("Proc-Type: 4,ENCRYPTED")
    {
        return Err(PemError(
            "is encrypted with a passphrase, which Apache cannot use unattended; give it unencrypted (openssl pkey -in key.pem -out plain.pem)".into(),
        ));
    }
    // Never the library's default passphrase prompt on a terminal: a key
    // that still asks for one gets an empty passphrase and fails.
    PKey::private_key_from_pem_callback(pem.as_bytes(), |_buf| Ok(0))
        .map_err(|_| PemError("not a readable private key (truncated or corrupt PEM)".into()))
}

/// Would OpenSSL, at this system's default security level (the library and
/// configuration mod_ssl uses), load this key and chain as Apache will? An
/// RSA key under 2048 bits, a chain certificate signed with SHA-1 or MD5, a
/// curve or algorithm the policy forbids: Apache's graceful reload fails on
/// these and takes every site down, although `apachectl configtest` (which
/// loads no key) passes. `extra` is the `SSLCACertificateFile` content.
pub fn check_loadable(key_pem: &str, chain_pem: &str, extra: Option<&str>) -> Result<(), PemError> {
    use openssl::ssl::{Ssl, SslContext, SslMethod};
    use openssl::x509::X509;
    let why = |what: &str, e: openssl::error::ErrorStack| {
        let reasons: Vec<String> =
            e.errors().iter().filter_map(|x| x.reason().map(str::to_string)).collect();
        let r = if reasons.is_empty() { e.to_string() } else { reasons.join(", ") };
        PemError(format!("{what} is refused by OpenSSL at this system's security level ({r}), so Apache would fail to load it"))
    };
    let key = parse_key(key_pem)?;
    let certs = X509::stack_from_pem(chain_pem.as_bytes())
        .map_err(|_| PemError("certificate: not valid PEM".into()))?;
    let mut certs = certs.into_iter();
    let leaf = certs.next().ok_or_else(|| PemError("certificate: empty chain".into()))?;
    let mut b = SslContext::builder(SslMethod::tls_server())
        .map_err(|e| PemError(format!("OpenSSL setup: {e}")))?;
    b.set_certificate(&leaf).map_err(|e| why("the certificate in tls.crt", e))?;
    b.set_private_key(&key).map_err(|e| why("the key in tls.key", e))?;
    b.check_private_key().map_err(|e| why("the key in tls.key", e))?;
    let ctx = b.build();
    let mut ssl = Ssl::new(&ctx).map_err(|e| PemError(format!("OpenSSL setup: {e}")))?;
    for c in certs {
        ssl.add_chain_cert(c).map_err(|e| why("a chain certificate in tls.crt", e))?;
    }
    if let Some(extra) = extra {
        for c in X509::stack_from_pem(extra.as_bytes())
            .map_err(|_| PemError("tls.cacrt: not valid PEM".into()))?
        {
            ssl.add_chain_cert(c).map_err(|e| why("a certificate in tls.cacrt", e))?;
        }
    }
    Ok(())
}

/// Why a certificate carried as `letsencrypt: true` is not one a CA this
/// device trusts issued, if it is not: self-signed, or its chain does not
/// lead to a root in the system's store or in `extra_roots` (the
/// `acme_ca_bundle`, which names the roots of a private ACME CA). Dates are
/// not judged here (expiry and notBefore are the decision core's).
pub fn untrusted_issuer(chain_pem: &str, extra_roots: Option<&std::path::Path>) -> Option<String> {
    use openssl::stack::Stack;
    use openssl::x509::store::X509StoreBuilder;
    use openssl::x509::verify::X509VerifyFlags;
    use openssl::x509::{X509StoreContext, X509};
    let certs = X509::stack_from_pem(chain_pem.as_bytes()).ok()?;
    let leaf = certs.first()?;
    if leaf.issued(leaf) == openssl::x509::X509VerifyResult::OK
        && leaf.public_key().and_then(|k| leaf.verify(&k)).unwrap_or(false)
    {
        return Some(
            "it is self-signed, so it is no Let's Encrypt (ACME-issued) certificate".into(),
        );
    }
    let verdict =
        (|| -> Result<Result<(), openssl::x509::X509VerifyResult>, openssl::error::ErrorStack> {
            let mut b = X509StoreBuilder::new()?;
            b.set_default_paths()?;
            if let Some(path) = extra_roots {
                if let Ok(text) = crate::fsutil::read_user_file(path) {
                    for c in X509::stack_from_pem(text.as_bytes()).unwrap_or_default() {
                        let _ = b.add_cert(c);
                    }
                }
            }
            b.set_flags(X509VerifyFlags::NO_CHECK_TIME)?;
            let store = b.build();
            let mut chain = Stack::new()?;
            for c in certs.iter().skip(1) {
                chain.push(c.clone())?;
            }
            let mut ctx = X509StoreContext::new()?;
            ctx.init(&store, leaf, &chain, |c| {
                Ok(if c.verify_cert()? { Ok(()) } else { Err(c.error()) })
            })
        })();
    match verdict {
        Ok(Ok(())) => None,
        Ok(Err(why)) => {
            let issuer = parse_chain(chain_pem)
                .ok()
                .and_then(|c| c.into_iter().next())
                .map(|c| c.issuer)
                .unwrap_or_default();
            let why = why.error_string();
            Some(format!("its issuer ({issuer}) is not a CA this device trusts ({why}); a staging or private CA's root belongs in acme_ca_bundle"))
        }
        Err(e) => Some(format!("its chain could not be checked: {e}")),
    }
}

/// Does the private key belong to this certificate?
pub fn key_matches(key: &PKey<Private>, cert: &CertInfo) -> bool {
    match openssl::x509::X509::from_der(&cert.der).and_then(|c| c.public_key()) {
        Ok(pubkey) => pubkey.public_eq(key),
        Err(_) => false,
    }
}

/// A key with its certificate chain, parsed.
#[derive(Debug, Clone)]
pub struct KeyCert {
    pub key_pem: String,
    pub chain_pem: String,
    pub leaf: CertInfo,
    pub key_matches: bool,
}

impl KeyCert {
    /// Parse a key and a full chain. Unreadable PEM is an error; a key that
    /// does not match is reported in `key_matches`, for the caller to judge.
    pub fn parse(key_pem: &str, chain_pem: &str) -> Result<KeyCert, PemError> {
        let key = parse_key(key_pem).map_err(|e| PemError(format!("key: {e}")))?;
        let chain = parse_chain(chain_pem).map_err(|e| PemError(format!("certificate: {e}")))?;
        let leaf =
            chain.into_iter().next().ok_or_else(|| PemError("certificate: empty chain".into()))?;
        let key_matches = key_matches(&key, &leaf);
        Ok(KeyCert {
            key_pem: key_pem.to_string(),
            chain_pem: chain_pem.to_string(),
            leaf,
            key_matches,
        })
    }
}

#[cfg(test)]
pub(crate) mod testutil {
    //! Self-signed test material with chosen names and validity.
    use chrono::{DateTime, Utc};

    /// (key PEM, certificate PEM) for `names`, valid from `nb` to `na`.
    pub(crate) fn make(names: &[&str], nb: DateTime<Utc>, na: DateTime<Utc>) -> (String, String) {
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.not_before = time::OffsetDateTime::from_unix_timestamp(nb.timestamp()).unwrap();
        params.not_after = time::OffsetDateTime::from_unix_timestamp(na.timestamp()).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        (key.serialize_pem(), cert.pem())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        assert!(name_covers("*.example.com", "a.example.com"));
        assert!(!name_covers("*.example.com", "example.com"));
        assert!(!name_covers("*.example.com", "a.b.example.com"));
        assert!(name_covers("a.example.com", "a.example.com"));
    }

    #[test]
    fn key_match_names_and_dates() {
        let now = Utc::now();
        let (k1, c1) = testutil::make(
            &["a.example.com", "*.w.example.com"],
            now - chrono::Duration::days(1),
            now + chrono::Duration::days(9),
        );
        let (k2, _) = testutil::make(&["b.example.com"], now, now + chrono::Duration::days(1));
        let kc = KeyCert::parse(&k1, &c1).unwrap();
        assert!(kc.key_matches);
        assert!(kc.leaf.covers("A.example.com"));
        assert!(kc.leaf.covers("x.w.example.com"));
        // The facts the decision core judges usability by (decide::Candidate).
        assert!(!kc.leaf.expired_at(now));
        assert!(!kc.leaf.covers("b.example.com"));
        assert!(kc.leaf.expired_at(now + chrono::Duration::days(10)));
        assert_eq!((kc.leaf.not_after - kc.leaf.not_before).num_days(), 10);
        let bad = KeyCert::parse(&k2, &c1).unwrap();
        assert!(!bad.key_matches);
        assert!(!bad.key_matches);
        // A certificate given as a key, and a key given as a certificate.
        assert!(parse_key(&c1).is_err());
        assert!(parse_chain(&k1).unwrap_err().0.contains("PRIVATE KEY"));
        // Truncated in the middle.
        assert!(parse_chain(&c1[..c1.len() / 2]).is_err());
        assert!(parse_key(&k1[..k1.len() / 2]).is_err());
    }

    #[test]
    fn ari_cert_id_as_rfc_9773_computes_it() {
        // RFC 9773 §4.1's example: keyIdentifier 69:88:5B:...:C8:D4, serial 00:87:65:43:21.
        use openssl::asn1::{Asn1Object, Asn1OctetString};
        let key = openssl::pkey::PKey::generate_ed25519().unwrap();
        let mut b = openssl::x509::X509::builder().unwrap();
        b.set_version(2).unwrap();
        b.set_serial_number(
            &openssl::bn::BigNum::from_hex_str("87654321").unwrap().to_asn1_integer().unwrap(),
        )
        .unwrap();
        b.set_pubkey(&key).unwrap();
        b.set_not_before(&openssl::asn1::Asn1Time::days_from_now(0).unwrap()).unwrap();
        b.set_not_after(&openssl::asn1::Asn1Time::days_from_now(1).unwrap()).unwrap();
        let kid = [
            0x69, 0x88, 0x5B, 0x6B, 0x87, 0x46, 0x40, 0x41, 0xE1, 0xB3, 0x7B, 0x84, 0x7B, 0xA0,
            0xAE, 0x2C, 0xDE, 0x01, 0xC8, 0xD4,
        ];
        let mut aki = vec![0x30, 0x16, 0x80, 0x14];
        aki.extend_from_slice(&kid);
        let ext = openssl::x509::X509Extension::new_from_der(
            &Asn1Object::from_str("2.5.29.35").unwrap(),
            false,
            &Asn1OctetString::new_from_bytes(&aki).unwrap(),
        )
        .unwrap();
        b.append_extension(ext).unwrap();
        b.sign(&key, openssl::hash::MessageDigest::null()).unwrap();
        let info = parse_cert_der(&b.build().to_der().unwrap()).unwrap();
        assert_eq!(info.ari_id.as_deref(), Some("aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE"));
    }

    #[test]
    fn names_are_sans_never_the_cn_and_ips_match_exactly() {
        let now = Utc::now();
        let (_, c) = testutil::make(&["a.example.com"], now, now + chrono::Duration::days(1));
        let info = parse_chain(&c).unwrap().remove(0);
        assert_eq!(info.names, vec!["a.example.com".to_string()]);
        let mut ipinfo = info.clone();
        ipinfo.names = vec!["127.0.0.1".into(), "::1".into()];
        assert!(
            ipinfo.covers("127.0.0.1")
                && ipinfo.covers("0:0:0:0:0:0:0:1")
                && !ipinfo.covers("127.0.0.2")
        );
    }

    #[test]
    fn garbage_is_an_error() {
        for bad in [
            "",
            "   ",
            "garbage",
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            "-----BEGIN CERTIFICATE-----\nMIIB",
        ] {
            assert!(parse_chain(bad).is_err(), "{bad:?}");
            assert!(parse_key(bad).is_err(), "{bad:?}");
        }
    }
}
