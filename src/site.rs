//! The UBOS Site JSON (docs/design.md): the typed [`Site`], the conversion
//! from the JSON document that is its validation (the rules `ubos-admin`
//! enforces; every refusal names the field and says why), and the wire shape
//! it is written in.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The conversions of a string newtype made only by its `parse` (which fails
/// with `$e`): from and into `String` (for serde), `FromStr` (for clap), and
/// reading as a `str`.
macro_rules! string_newtype {
    ($t:ident, $e:ty) => {
        impl std::str::FromStr for $t {
            type Err = $e;
            fn from_str(s: &str) -> std::result::Result<$t, $e> {
                $t::parse(s)
            }
        }
        impl TryFrom<String> for $t {
            type Error = $e;
            fn try_from(s: String) -> std::result::Result<$t, $e> {
                $t::parse(&s)
            }
        }
        impl From<$t> for String {
            fn from(v: $t) -> String {
                v.0
            }
        }
        impl std::ops::Deref for $t {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl PartialEq<str> for $t {
            fn eq(&self, o: &str) -> bool {
                self.0 == o
            }
        }
        impl PartialEq<&str> for $t {
            fn eq(&self, o: &&str) -> bool {
                self.0 == *o
            }
        }
    };
}

/// A site id: `s` followed by 40 lowercase hex digits. Made only by
/// [`SiteId::parse`], so holding one means it is valid (it is also safe as a
/// file name).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SiteId(String);

/// A string that is not a site id ([`SiteId::parse`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a site id (\"s\" followed by 40 lowercase hex digits)")]
pub struct BadSiteId(pub String);

impl SiteId {
    pub fn parse(s: &str) -> std::result::Result<SiteId, BadSiteId> {
        if is_id(s, 's') {
            Ok(SiteId(s.to_string()))
        } else {
            Err(BadSiteId(s.to_string()))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

string_newtype!(SiteId, BadSiteId);

/// A site's hostname, parsed: a DNS name (lowercase), an IP address (its
/// canonical text), or `*` (any host). Made only by [`Host::parse`] (and
/// deserializing, which parses), so holding one means it is one of those.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Host(String);

/// What kind of name a [`Host`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKind {
    Any,
    Dns,
    Ip(std::net::IpAddr),
}

/// Why a string is not a [`Host`] ([`Host::parse`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BadHost {
    /// Longer than a lineage's file names allow.
    #[error(
        "{len} characters long; at most {max} fit in certbot's layout (renewal/<hostname>.conf must fit in a file name)",
        max = MAX_HOSTNAME
    )]
    TooLong { len: usize },
    /// Neither `*`, an IP address nor a DNS name.
    #[error("{0:?}: not a DNS name")]
    NotDns(String),
}

impl Host {
    pub fn parse(s: &str) -> std::result::Result<Host, BadHost> {
        if s == "*" {
            return Ok(Host(s.into()));
        }
        if let Ok(ip) = s.parse::<std::net::IpAddr>() {
            return Ok(Host(ip.to_string()));
        }
        if s.len() > MAX_HOSTNAME {
            return Err(BadHost::TooLong { len: s.len() });
        }
        if !is_dns_name(s) {
            return Err(BadHost::NotDns(s.to_string()));
        }
        Ok(Host(s.to_ascii_lowercase()))
    }
    pub fn kind(&self) -> HostKind {
        match self.0.parse::<std::net::IpAddr>() {
            _ if self.0 == "*" => HostKind::Any,
            Ok(ip) => HostKind::Ip(ip),
            Err(_) => HostKind::Dns,
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

string_newtype!(Host, BadHost);

/// One site as the administrator describes it: parsed once, from a Site
/// JSON ([`parse_site`], [`site_from_value`]) or from its stored form
/// ([`AtRest`]); written back in the Site JSON's shape ([`SiteWire`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Site {
    pub siteid: SiteId,
    pub hostname: Host,
    pub admin: Admin,
    pub tls: Tls,
    /// The apps: an open document `site-admin` checks but does not use.
    pub appconfigs: Option<Vec<Value>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    pub userid: String,
    pub username: String,
    pub email: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// What a site's `tls` section asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Tls {
    /// No `tls`: plain http.
    Http,
    /// `letsencrypt: true`: a certificate from the ACME CA (an LKC), asked
    /// for with `profile`; `carried` is the LKC a backup or migration brings
    /// along (never at rest).
    LetsEncrypt { profile: Option<Profile>, carried: Option<CarriedPair> },
    /// An own certificate (OKC); its material, `None` at rest (it lives in
    /// `ssl_dir` then).
    Own(Option<OwnCert>),
}

/// The ACME certificate profile a Let's Encrypt site asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    pub name: String,
    /// `profile_required` as written: must the CA offer it (else its
    /// default, with a warning)?
    pub required: Option<bool>,
}

/// The key and full chain of an LKC a Let's Encrypt site carries (readable
/// PEM; whether it is usable is judged at deploy time).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CarriedPair {
    pub key: String,
    pub fullchain: String,
}

/// An own certificate: key, certificate (maybe with chain) and optional CA
/// certificate, checked to match and to load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnCert {
    pub key: String,
    pub crt: String,
    pub cacrt: Option<String>,
}

pub use crate::model::ProfileWish;

/// Let's Encrypt issues IP-address certificates only with this profile, so
/// it is an IP site's default.
pub const IP_DEFAULT_PROFILE: &str = "shortlived";

impl Site {
    /// The profile this site's certificate is asked for: its own
    /// (`tls.profile`), else `default` (the config's `acme_profile`), else
    /// `shortlived` for an IP address; each preferred unless the site says
    /// `profile_required`.
    pub fn profile_wish(&self, default: Option<&str>) -> Option<ProfileWish> {
        if let Tls::LetsEncrypt { profile: Some(p), .. } = &self.tls {
            return Some(ProfileWish { name: p.name.clone(), required: p.required == Some(true) });
        }
        if let Some(d) = default {
            return Some(ProfileWish { name: d.to_string(), required: false });
        }
        self.is_ip().then(|| ProfileWish { name: IP_DEFAULT_PROFILE.into(), required: false })
    }

    /// Is the hostname an IP address (an RFC 8738 `ip` identifier)?
    pub fn is_ip(&self) -> bool {
        matches!(self.hostname.kind(), HostKind::Ip(_))
    }

    /// The Site JSON as stored at rest: no key, no certificate (docs/design.md, invariant 4).
    pub fn without_tls_material(&self) -> AtRest {
        let tls = match &self.tls {
            Tls::Http => Tls::Http,
            Tls::LetsEncrypt { profile, .. } => {
                Tls::LetsEncrypt { profile: profile.clone(), carried: None }
            }
            // An OKC's material lives in ssl_dir; at rest only the fact remains.
            Tls::Own(_) => Tls::Own(None),
        };
        AtRest(Site { tls, ..self.clone() })
    }
}

/// The Site JSON's shape, as serde reads and writes it: how a [`Site`] is
/// written (backup, `showsite`, the stored file) and how a stored one is
/// read back ([`AtRest`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteWire {
    pub siteid: SiteId,
    pub hostname: Host,
    pub admin: Admin,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsWire>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub appconfigs: Option<Vec<Value>>,
}

/// The `tls` section's shape: `letsencrypt: true` with an optional carried
/// LKC, or an OKC.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsWire {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub letsencrypt: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crt: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cacrt: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile_required: Option<bool>,
}

impl TlsWire {
    /// Does it hold a key or a certificate (which a stored site must not)?
    pub fn has_material(&self) -> bool {
        self.key.is_some() || self.crt.is_some()
    }
}

impl From<&Tls> for Option<TlsWire> {
    /// An own certificate with its material is written without
    /// `letsencrypt` (as `backup` always has), without it (at rest) as
    /// `"letsencrypt": false`.
    fn from(t: &Tls) -> Option<TlsWire> {
        Some(match t {
            Tls::Http => return None,
            Tls::LetsEncrypt { profile, carried } => TlsWire {
                letsencrypt: Some(true),
                key: carried.as_ref().map(|c| c.key.clone()),
                crt: carried.as_ref().map(|c| c.fullchain.clone()),
                profile: profile.as_ref().map(|p| p.name.clone()),
                profile_required: profile.as_ref().and_then(|p| p.required),
                ..TlsWire::default()
            },
            Tls::Own(None) => TlsWire { letsencrypt: Some(false), ..TlsWire::default() },
            Tls::Own(Some(c)) => TlsWire {
                key: Some(c.key.clone()),
                crt: Some(c.crt.clone()),
                cacrt: c.cacrt.clone(),
                ..TlsWire::default()
            },
        })
    }
}

impl From<&Site> for SiteWire {
    fn from(s: &Site) -> SiteWire {
        SiteWire {
            siteid: s.siteid.clone(),
            hostname: s.hostname.clone(),
            admin: s.admin.clone(),
            tls: (&s.tls).into(),
            appconfigs: s.appconfigs.clone(),
        }
    }
}

impl Serialize for Site {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        SiteWire::from(self).serialize(s)
    }
}

/// A Site JSON as it may be stored at rest: made only by
/// [`Site::without_tls_material`], or read from a stored file (which drops
/// any key or certificate it holds), so it cannot hold a key or certificate.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(transparent)]
pub struct AtRest(Site);

impl From<SiteWire> for AtRest {
    /// A stored site's `tls` says only which kind it is (and the profile).
    fn from(w: SiteWire) -> AtRest {
        let tls = match w.tls {
            None => Tls::Http,
            Some(t) if t.letsencrypt == Some(true) => Tls::LetsEncrypt {
                profile: t.profile.map(|name| Profile { name, required: t.profile_required }),
                carried: None,
            },
            Some(_) => Tls::Own(None),
        };
        let SiteWire { siteid, hostname, admin, appconfigs, .. } = w;
        AtRest(Site { siteid, hostname, admin, tls, appconfigs })
    }
}

impl<'de> Deserialize<'de> for AtRest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<AtRest, D::Error> {
        SiteWire::deserialize(d).map(AtRest::from)
    }
}

impl AtRest {
    pub fn into_site(self) -> Site {
        self.0
    }
}

impl std::ops::Deref for AtRest {
    type Target = Site;
    fn deref(&self) -> &Site {
        &self.0
    }
}

/// Why a Site JSON is refused: always the input's fault (the engine maps
/// it to exit 2). Each message names the field; none echoes a key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SiteError {
    #[error("{origin}: not valid JSON: {source}")]
    NotJson { origin: String, source: serde_json::Error },
    #[error("Site JSON: must be a JSON object")]
    NotObject,
    /// A field breaks a rule; `site` is the site id as written (`?` when
    /// it is not a string).
    #[error("site {site}: {field}: {why}")]
    Field { site: String, field: String, why: String },
    /// The ACME server that will be asked cannot issue for the site.
    #[error("site {site}: {why}")]
    Refused { site: SiteId, why: String },
    /// Where the document came from (a file name, a backup's entry).
    #[error("{origin}: {inner}")]
    In { origin: String, inner: Box<SiteError> },
}

impl SiteError {
    /// This error, saying where the document came from.
    pub fn context(self, origin: impl std::fmt::Display) -> SiteError {
        SiteError::In { origin: origin.to_string(), inner: Box::new(self) }
    }
}

/// Parse and validate one Site JSON document. `origin` names where it came
/// from (a file name) for the error message.
pub fn parse_site(text: &str, origin: &str) -> std::result::Result<Site, SiteError> {
    let v: Value = serde_json::from_str(text)
        .map_err(|source| SiteError::NotJson { origin: origin.into(), source })?;
    site_from_value(&v).map_err(|e| e.context(origin))
}

/// [`parse_site`], then the rules that depend on the ACME server that will
/// be asked ([`ip_refused_by`]): what `deploy` applies.
pub fn parse_site_for(
    text: &str,
    origin: &str,
    server: &str,
) -> std::result::Result<Site, SiteError> {
    let site = parse_site(text, origin)?;
    if let Some(why) = ip_refused_by(&site, server) {
        return Err(SiteError::Refused { site: site.siteid, why }.context(origin));
    }
    Ok(site)
}

/// Validate a Site JSON already parsed as a JSON value.
pub fn site_from_value(v: &Value) -> std::result::Result<Site, SiteError> {
    Site::try_from(v)
}

/// The validation rules are the conversion: each part of the document
/// (ids, hostname, admin, tls, appconfigs) is checked and typed in the order
/// of the document's description, from the JSON value itself, so a wrong
/// type names its field in the same words as any other refusal and no
/// value that may be secret (a key) is ever echoed.
impl TryFrom<&Value> for Site {
    type Error = SiteError;
    fn try_from(v: &Value) -> std::result::Result<Site, SiteError> {
        let obj = v.as_object().ok_or(SiteError::NotObject)?;
        let hint = obj.get("siteid").and_then(Value::as_str).unwrap_or("?");
        site_from_object(obj).map_err(|Bad { field, why }| SiteError::Field {
            site: hint.to_string(),
            field,
            why,
        })
    }
}

/// A refusal of one field, before it is said of which site.
struct Bad {
    field: String,
    why: String,
}

type Checked<T> = std::result::Result<T, Bad>;

fn bad(field: &str, why: impl std::fmt::Display) -> Bad {
    Bad { field: field.to_string(), why: why.to_string() }
}

fn req_str<'a>(obj: &'a Map<String, Value>, key: &str, field: &str) -> Checked<&'a str> {
    match obj.get(key) {
        None => Err(bad(field, "missing (required)")),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(bad(field, "must be a string")),
    }
}

fn check_keys(obj: &Map<String, Value>, allowed: &[&str], prefix: &str) -> Checked<()> {
    for k in obj.keys() {
        if !allowed.contains(&k.as_str()) {
            return Err(bad(
                &format!("{prefix}{k}"),
                format!("unknown key (allowed: {})", allowed.join(", ")),
            ));
        }
    }
    Ok(())
}

/// The longest hostname the store can hold: `renewal/<hostname>.conf` must
/// fit in one file name (255 bytes), so 250, below DNS's own 253.
pub const MAX_HOSTNAME: usize = 250;

/// `s` followed by 40 lowercase hex digits (and `a` for appconfig ids).
pub fn is_id(s: &str, prefix: char) -> bool {
    s.len() == 41
        && s.starts_with(prefix)
        && s[1..].bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A DNS host name: labels of letters, digits and hyphens, 1..=63 long,
/// without a leading or trailing hyphen, 253 characters at most.
pub fn is_dns_name(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// Why Let's Encrypt cannot issue for this (valid DNS) name, if it cannot.
pub fn not_public_reason(h: &str) -> Option<&'static str> {
    let lower = h.to_ascii_lowercase();
    if lower.parse::<std::net::IpAddr>().is_ok() {
        // An IP literal is an RFC 8738 identifier; whether the CA can issue
        // for it depends on the CA ([`ip_refused_by`]).
        return None;
    }
    if lower.split('.').all(|l| l.bytes().all(|b| b.is_ascii_digit())) {
        return Some("an IP address, and Let's Encrypt issues only for public DNS names");
    }
    if lower == "local" || lower.ends_with(".local") {
        return Some("a .local (mDNS) name, and Let's Encrypt issues only for public DNS names");
    }
    if !lower.contains('.') {
        return Some("a single-label name, and Let's Encrypt issues only for public DNS names");
    }
    if lower == "localhost" || lower.ends_with(".localhost") {
        return Some("a localhost name, and Let's Encrypt issues only for public DNS names");
    }
    None
}

/// Is this address globally reachable? Not private, loopback, link-local,
/// documentation, unique-local, shared (CGNAT), multicast, reserved or one
/// of the other special-purpose ranges.
pub fn is_global_ip(ip: std::net::IpAddr) -> bool {
    use std::net::IpAddr;
    match ip {
        IpAddr::V4(a) => {
            let o = a.octets();
            !(a.is_private()
                || a.is_loopback()
                || a.is_link_local()
                || a.is_documentation()
                || a.is_broadcast()
                || a.is_multicast()
                || a.is_unspecified()
                || o[0] == 0
                || o[0] >= 240
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
                || (o[0] == 192 && o[1] == 0 && o[2] == 0)
                || (o[0] == 198 && (o[1] & 0xfe) == 18))
        }
        IpAddr::V6(a) => {
            let s = a.segments();
            if let Some(v4) = a.to_ipv4_mapped() {
                return is_global_ip(IpAddr::V4(v4));
            }
            !(a.is_loopback()
                || a.is_unspecified()
                || a.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] == 0x2001 && s[1] == 0x0db8)
                || (s[0] == 0x0064 && s[1] == 0xff9b)
                || (s[0] == 0x2001 && s[1] < 0x0200))
        }
    }
}

/// Why `server` will not issue for this site's IP address, if it will not:
/// Let's Encrypt (production or staging) issues only for globally reachable
/// addresses.
pub fn ip_refused_by(site: &Site, server: &str) -> Option<String> {
    let HostKind::Ip(ip) = site.hostname.kind() else { return None };
    let letsencrypt = server.contains("api.letsencrypt.org");
    (matches!(site.tls, Tls::LetsEncrypt { .. }) && letsencrypt && !is_global_ip(ip))
        .then(|| format!("hostname: {ip} is not a globally reachable address, and Let's Encrypt ({server}) issues IP certificates only for those"))
}

pub fn looks_like_email(e: &str) -> bool {
    match e.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && !domain.is_empty()
                && !e.chars().any(|c| c.is_whitespace() || c.is_control())
                && !domain.contains('@')
        }
        None => false,
    }
}

fn pem_field(t: &Map<String, Value>, key: &str) -> Checked<Option<String>> {
    let field = format!("tls.{key}");
    match t.get(key) {
        None => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Err(bad(&field, "is empty")),
        Some(Value::String(s)) => {
            if !s.contains("-----BEGIN ") {
                return Err(bad(&field, "not PEM (no -----BEGIN line)"));
            }
            Ok(Some(s.clone()))
        }
        Some(_) => Err(bad(&field, "must be a PEM string")),
    }
}

/// The whole document, part by part.
fn site_from_object(obj: &Map<String, Value>) -> Checked<Site> {
    check_keys(obj, &["siteid", "hostname", "admin", "tls", "appconfigs"], "")?;
    let siteid = req_str(obj, "siteid", "siteid")?;
    let siteid = SiteId::parse(siteid).map_err(|why| bad("siteid", why))?;
    let name = req_str(obj, "hostname", "hostname")?;
    let hostname = Host::parse(name).map_err(|why| bad("hostname", why))?;
    let admin = admin(obj.get("admin"))?;
    let tls = match obj.get("tls") {
        None => Tls::Http,
        Some(t) => tls(t, name)?,
    };
    let appconfigs = match obj.get("appconfigs") {
        None => None,
        Some(a) => Some(appconfigs(a)?),
    };
    Ok(Site { siteid, hostname, admin, tls, appconfigs })
}

fn admin(v: Option<&Value>) -> Checked<Admin> {
    let a = match v {
        None => return Err(bad("admin", "missing (required)")),
        Some(Value::Object(a)) => a,
        Some(_) => return Err(bad("admin", "must be an object")),
    };
    check_keys(a, &["userid", "username", "email", "credential"], "admin.")?;
    let userid = req_str(a, "userid", "admin.userid")?;
    if userid.is_empty() || !userid.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()) {
        return Err(bad("admin.userid", format!("{userid:?}: only lowercase letters and digits")));
    }
    let username = req_str(a, "username", "admin.username")?;
    if username.trim().is_empty() {
        return Err(bad("admin.username", "is empty"));
    }
    let email = req_str(a, "email", "admin.email")?;
    if !looks_like_email(email) {
        return Err(bad("admin.email", format!("{email:?}: not an e-mail address")));
    }
    let credential = match a.get("credential") {
        None => None,
        Some(Value::String(c)) => Some(c.clone()),
        Some(_) => return Err(bad("admin.credential", "must be a string")),
    };
    Ok(Admin { userid: userid.into(), username: username.into(), email: email.into(), credential })
}

/// The `tls` section of a site whose hostname is `host` (as written).
fn tls(v: &Value, host: &str) -> Checked<Tls> {
    let t = v.as_object().ok_or_else(|| bad("tls", "must be an object"))?;
    check_keys(t, &["letsencrypt", "key", "crt", "cacrt", "profile", "profile_required"], "tls.")?;
    if host == "*" {
        return Err(bad("tls", "a site with hostname \"*\" (any host) cannot use TLS"));
    }
    let le = match t.get("letsencrypt") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(bad("tls.letsencrypt", "must be true or false")),
    };
    let key = pem_field(t, "key")?;
    let crt = pem_field(t, "crt")?;
    let cacrt = pem_field(t, "cacrt")?;
    let profile = profile(t, le)?;
    if le {
        letsencrypt(host, profile, key, crt, cacrt)
    } else {
        own(key, crt, cacrt)
    }
}

/// `tls.profile` and `tls.profile_required`.
fn profile(t: &Map<String, Value>, le: bool) -> Checked<Option<Profile>> {
    let name_ok = |p: &str| {
        !p.is_empty()
            && p.len() <= 64
            && p.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    };
    let name =
        match t.get("profile") {
            None => None,
            Some(Value::String(p)) if name_ok(p) && !le => {
                return Err(bad(
                    "tls.profile",
                    "only with \"letsencrypt\": true (it names an ACME certificate profile)",
                ));
            }
            Some(Value::String(p)) if name_ok(p) => Some(p.clone()),
            Some(_) => return Err(bad(
                "tls.profile",
                "must be a profile name (letters, digits, - _ .), as the CA's directory lists them",
            )),
        };
    let required = match t.get("profile_required") {
        None => None,
        Some(Value::Bool(b)) if name.is_some() => Some(*b),
        Some(Value::Bool(_)) => return Err(bad("tls.profile_required", "needs tls.profile")),
        Some(_) => return Err(bad("tls.profile_required", "must be true or false")),
    };
    Ok(name.map(|name| Profile { name, required }))
}

/// `letsencrypt: true`, maybe carrying an LKC.
fn letsencrypt(
    host: &str,
    profile: Option<Profile>,
    key: Option<String>,
    crt: Option<String>,
    cacrt: Option<String>,
) -> Checked<Tls> {
    if let Some(why) = not_public_reason(host) {
        return Err(bad("hostname", format!("{host:?} with tls.letsencrypt: {why}")));
    }
    if cacrt.is_some() {
        return Err(bad(
            "tls.cacrt",
            "not allowed with letsencrypt (the chain belongs in tls.crt)",
        ));
    }
    let carried = match (key, crt) {
        (None, None) => None,
        (Some(key), Some(fullchain)) => {
            // Carried material must be readable; whether it is usable (host,
            // key match, expiry) is judged at deploy time, with a warning.
            crate::certs::parse_key(&key).map_err(|e| bad("tls.key", e))?;
            crate::certs::parse_chain(&fullchain).map_err(|e| bad("tls.crt", e))?;
            Some(CarriedPair { key, fullchain })
        }
        (key, _) => {
            return Err(bad(
                if key.is_some() { "tls.crt" } else { "tls.key" },
                "missing: a carried Let's Encrypt certificate needs both key and crt",
            ))
        }
    };
    Ok(Tls::LetsEncrypt { profile, carried })
}

/// An own certificate: key and certificate that match and load.
fn own(key: Option<String>, crt: Option<String>, cacrt: Option<String>) -> Checked<Tls> {
    let Some(key) = key else {
        return Err(bad(
            "tls.key",
            "missing: tls needs either \"letsencrypt\": true or a key and crt",
        ));
    };
    let Some(crt) = crt else {
        return Err(bad("tls.crt", "missing: an own certificate needs both key and crt"));
    };
    let k = crate::certs::parse_key(&key).map_err(|e| bad("tls.key", e))?;
    let chain = crate::certs::parse_chain(&crt).map_err(|e| bad("tls.crt", e))?;
    if let Some(c) = &cacrt {
        crate::certs::parse_chain(c).map_err(|e| bad("tls.cacrt", e))?;
    }
    if !crate::certs::key_matches(&k, &chain[0]) {
        return Err(bad("tls.key", "does not match the certificate in tls.crt"));
    }
    crate::certs::check_loadable(&key, &crt, cacrt.as_deref()).map_err(|e| bad("tls", e))?;
    Ok(Tls::Own(Some(OwnCert { key, crt, cacrt })))
}

fn appconfigs(v: &Value) -> Checked<Vec<Value>> {
    let arr = v.as_array().ok_or_else(|| bad("appconfigs", "must be an array"))?;
    let mut seen = std::collections::HashSet::new();
    for (i, ac) in arr.iter().enumerate() {
        appconfig(i, ac, &mut seen)?;
    }
    Ok(arr.clone())
}

/// One entry of `appconfigs`, whose id must not be in `seen` (it is added).
fn appconfig<'a>(
    i: usize,
    ac: &'a Value,
    seen: &mut std::collections::HashSet<&'a str>,
) -> Checked<()> {
    let f = |k: &str| format!("appconfigs[{i}].{k}");
    let a = ac.as_object().ok_or_else(|| bad(&format!("appconfigs[{i}]"), "must be an object"))?;
    check_keys(
        a,
        &["appconfigid", "appid", "context", "isdefault", "customizationpoints"],
        &format!("appconfigs[{i}]."),
    )?;
    let id = req_str(a, "appconfigid", &f("appconfigid"))?;
    if !is_id(id, 'a') {
        return Err(bad(
            &f("appconfigid"),
            format!("{id:?} is not \"a\" followed by 40 lowercase hex digits"),
        ));
    }
    if !seen.insert(id) {
        return Err(bad(&f("appconfigid"), format!("{id} appears twice")));
    }
    let appid = req_str(a, "appid", &f("appid"))?;
    if appid.is_empty()
        || !appid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        return Err(bad(&f("appid"), format!("{appid:?}: not a package name")));
    }
    if let Some(c) = a.get("context") {
        let c = c.as_str().ok_or_else(|| bad(&f("context"), "must be a string"))?;
        if !context_ok(c) {
            return Err(bad(&f("context"), format!("{c:?}: must be empty or a path like /blog")));
        }
    }
    if a.get("isdefault").is_some_and(|d| !d.is_boolean()) {
        return Err(bad(&f("isdefault"), "must be true or false"));
    }
    if a.get("customizationpoints").is_some_and(|cp| !(cp.is_object() || cp.is_null())) {
        return Err(bad(&f("customizationpoints"), "must be an object"));
    }
    Ok(())
}

/// An appconfig's context: empty, or a path like `/blog` (no `..`, no `//`).
fn context_ok(c: &str) -> bool {
    c.is_empty()
        || (c.starts_with('/')
            && c[1..].split('/').all(|seg| {
                seg.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
                    && seg.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.~".contains(&b))
            }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "s3f2c9a0b1d4e5f60718293a4b5c6d7e8f9012345";

    fn site(extra: &str) -> String {
        format!(
            r#"{{"siteid":"{ID}","hostname":"blog.example.com","admin":{{"userid":"admin","username":"A","email":"a@example.com"}}{extra}}}"#
        )
    }

    #[test]
    fn minimal_http_site() {
        let s = parse_site(&site(""), "t").unwrap();
        assert_eq!(s.tls, Tls::Http);
    }

    #[test]
    fn letsencrypt_site() {
        let s = parse_site(&site(r#","tls":{"letsencrypt":true}"#), "t").unwrap();
        assert_eq!(s.tls, Tls::LetsEncrypt { profile: None, carried: None });
    }

    #[test]
    fn typo_key_is_named() {
        let e = parse_site(&site(r#","tsl":{"letsencrypt":true}"#), "t").unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("t: site {ID}: tsl: unknown key (allowed: siteid, hostname, admin, tls, appconfigs)")
        );
        assert!(matches!(e, SiteError::In { .. }));
    }

    #[test]
    fn typed_parse_errors_keep_their_messages() {
        assert_eq!(SiteId::parse("x").unwrap_err(), BadSiteId("x".into()));
        assert_eq!(
            "x".parse::<SiteId>().unwrap_err().to_string(),
            r#""x" is not a site id ("s" followed by 40 lowercase hex digits)"#
        );
        assert_eq!(Host::parse("a b").unwrap_err().to_string(), r#""a b": not a DNS name"#);
        let long = format!("{}.example", "a".repeat(300));
        assert_eq!(Host::parse(&long).unwrap_err(), BadHost::TooLong { len: long.len() });
        assert_eq!(
            Host::parse(&long).unwrap_err().to_string(),
            format!("{} characters long; at most {MAX_HOSTNAME} fit in certbot's layout (renewal/<hostname>.conf must fit in a file name)", long.len())
        );
        // serde goes through the same parse and says the same.
        let e = serde_json::from_str::<Host>(r#""a b""#).unwrap_err().to_string();
        assert!(e.starts_with(r#""a b": not a DNS name"#), "{e}");
    }

    #[test]
    fn dns_names() {
        assert!(is_dns_name("a.b-c.example"));
        assert!(!is_dns_name("a/b.example.com"));
        assert!(!is_dns_name("-a.example.com"));
        assert!(!is_dns_name("a..b"));
        assert!(!is_dns_name(&"a".repeat(64)));
        assert!(!is_dns_name(&format!("{}.com", ["abc"; 70].join("."))));
    }

    #[test]
    fn public_names() {
        assert!(
            not_public_reason("10.0.0.1").is_none(),
            "an IP literal is judged by the CA that is asked"
        );
        let ip = |h: &str| {
            parse_site(
                &format!(
                    r#"{{"siteid":"{ID}","hostname":"{h}","admin":{{"userid":"admin","username":"A","email":"a@example.com"}},"tls":{{"letsencrypt":true}}}}"#
                ),
                "t",
            )
            .unwrap()
        };
        let le = crate::config::LETSENCRYPT_PRODUCTION;
        assert!(ip_refused_by(&ip("10.1.2.3"), le)
            .unwrap()
            .contains("not a globally reachable address"));
        assert!(ip_refused_by(&ip("127.0.0.1"), le).is_some());
        assert!(ip_refused_by(&ip("fd00::1"), le).is_some());
        assert!(ip_refused_by(&ip("192.0.2.7"), le).is_some());
        assert!(ip_refused_by(&ip("93.184.216.34"), le).is_none());
        assert!(ip_refused_by(&ip("2606:4700::1111"), le).is_none());
        assert!(
            ip_refused_by(&ip("127.0.0.1"), "https://127.0.0.1:14000/dir").is_none(),
            "a private CA may issue for it"
        );
        assert_eq!(ip("127.0.0.1").profile_wish(None).unwrap().name, "shortlived");
        assert!(!ip("127.0.0.1").profile_wish(None).unwrap().required);
        assert!(not_public_reason("box.local").is_some());
        assert!(not_public_reason("blog.example.com").is_none());
    }

    #[test]
    fn at_rest_has_no_material() {
        let mut s = parse_site(&site(r#","tls":{"letsencrypt":true}"#), "t").unwrap();
        let carried = CarriedPair { key: "K".into(), fullchain: "C".into() };
        s.tls = Tls::LetsEncrypt { profile: None, carried: Some(carried.clone()) };
        let r = s.without_tls_material();
        assert_eq!(r.tls, Tls::LetsEncrypt { profile: None, carried: None });
        s.tls = Tls::Own(Some(OwnCert { key: "K".into(), crt: "C".into(), cacrt: None }));
        assert_eq!(s.without_tls_material().tls, Tls::Own(None));
        // A stored file that holds material anyway is read without it.
        let stored: AtRest = serde_json::from_str(&site(
            r#","tls":{"letsencrypt":true,"key":"K","crt":"C","profile":"p"}"#,
        ))
        .unwrap();
        let profile = Some(Profile { name: "p".into(), required: None });
        assert_eq!(stored.tls, Tls::LetsEncrypt { profile, carried: None });
    }

    /// The text a Site is written as, byte for byte as before the typed
    /// `Tls`: at rest, exported with its material, and read back.
    #[test]
    fn written_as_before_and_read_back() {
        let at_rest = |extra: &str| {
            let s = Site { tls: Tls::Http, ..parse_site(&site(""), "t").unwrap() };
            let s = Site { tls: serde_json::from_str::<AtRest>(&site(extra)).unwrap().0.tls, ..s };
            serde_json::to_string(&s.without_tls_material()).unwrap()
        };
        let head = format!(
            r#"{{"siteid":"{ID}","hostname":"blog.example.com","admin":{{"userid":"admin","username":"A","email":"a@example.com"}}"#
        );
        assert_eq!(at_rest(""), format!("{head}}}"));
        assert_eq!(
            at_rest(r#","tls":{"letsencrypt":true,"profile":"classic","profile_required":false}"#),
            format!(
                r#"{head},"tls":{{"letsencrypt":true,"profile":"classic","profile_required":false}}}}"#
            )
        );
        assert_eq!(
            at_rest(r#","tls":{"letsencrypt":false}"#),
            format!(r#"{head},"tls":{{"letsencrypt":false}}}}"#)
        );
        // Every form survives a write and a read at rest unchanged.
        for extra in [
            "",
            r#","tls":{"letsencrypt":true}"#,
            r#","tls":{"letsencrypt":true,"profile":"shortlived","profile_required":true}"#,
            r#","tls":{"letsencrypt":false}"#,
            r#","appconfigs":[{"appconfigid":"a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c","appid":"wordpress","context":"/blog"}]"#,
        ] {
            let text = site(extra);
            let read: AtRest = serde_json::from_str(&text).unwrap();
            assert_eq!(serde_json::to_string(&read).unwrap(), text, "{extra}");
        }
        // Material is written as the backup always wrote it.
        let mut s = parse_site(&site(""), "t").unwrap();
        s.tls = Tls::LetsEncrypt {
            profile: None,
            carried: Some(CarriedPair { key: "K".into(), fullchain: "C".into() }),
        };
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            format!(r#"{head},"tls":{{"letsencrypt":true,"key":"K","crt":"C"}}}}"#)
        );
        s.tls =
            Tls::Own(Some(OwnCert { key: "K".into(), crt: "C".into(), cacrt: Some("A".into()) }));
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            format!(r#"{head},"tls":{{"key":"K","crt":"C","cacrt":"A"}}}}"#)
        );
    }

    #[test]
    fn a_wrong_type_names_the_field_and_never_echoes_a_key() {
        let secret = "-----BEGIN PRIVATE KEY----- secret";
        for (extra, want) in [
            (
                r#","tls":{"letsencrypt":"-----BEGIN PRIVATE KEY----- secret"}"#,
                "tls.letsencrypt: must be true or false",
            ),
            (
                r#","tls":{"key":["-----BEGIN PRIVATE KEY----- secret"]}"#,
                "tls.key: must be a PEM string",
            ),
            (
                r#","tls":{"letsencrypt":true,"key":"-----BEGIN PRIVATE KEY----- secret"}"#,
                "tls.crt: missing",
            ),
            (r#","appconfigs":{"a":1}"#, "appconfigs: must be an array"),
        ] {
            let e = parse_site(&site(extra), "t").unwrap_err().to_string();
            assert!(e.starts_with(&format!("t: site {ID}: {want}")), "{e}");
            assert!(!e.contains(secret), "{e}");
        }
        let e = site_from_value(&serde_json::json!({"siteid": 5, "admin": 1})).unwrap_err();
        assert_eq!(e.to_string(), "site ?: siteid: must be a string");
        let e = site_from_value(&serde_json::json!([1])).unwrap_err();
        assert_eq!(e.to_string(), "Site JSON: must be a JSON object");
    }
}
