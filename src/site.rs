//! The UBOS Site JSON (docs/design.md): a serde model and the validation rules
//! `ubos-admin` enforces. Every refusal names the field and says why.

use crate::error::{Error, Result};
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

/// One site as the administrator describes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Site {
    pub siteid: SiteId,
    pub hostname: Host,
    pub admin: Admin,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<Tls>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
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

/// The `tls` section: `letsencrypt: true` with an optional carried LKC, or an OKC.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub letsencrypt: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crt: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cacrt: Option<String>,
    /// The ACME certificate profile to ask for (with `letsencrypt: true`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// Whether the CA must offer `profile` (else: its default, with a warning).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile_required: Option<bool>,
}

pub use crate::model::ProfileWish;

/// Let's Encrypt issues IP-address certificates only with this profile, so
/// it is an IP site's default.
pub const IP_DEFAULT_PROFILE: &str = "shortlived";

/// What the `tls` section asks for, once validated.
#[derive(Debug, Clone, PartialEq)]
pub enum TlsWish {
    /// No `tls`: plain http.
    None,
    /// `letsencrypt: true`, with the LKC (key, full chain) a backup or migration carries.
    LetsEncrypt { carried: Option<(String, String)> },
    /// An OKC: key, certificate (maybe with chain), optional CA certificate.
    Other { key: String, crt: String, cacrt: Option<String> },
}

/// Which kind of TLS a site has, without its material (what a stored,
/// at-rest site still says).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsKind {
    Http,
    Okc,
    Letsencrypt,
}

impl Site {
    /// Which kind of TLS this site has.
    pub fn kind(&self) -> TlsKind {
        match &self.tls {
            None => TlsKind::Http,
            Some(t) if t.letsencrypt == Some(true) => TlsKind::Letsencrypt,
            Some(_) => TlsKind::Okc,
        }
    }

    /// What this site's `tls` section asks for. Only meaningful after [`parse_site`].
    pub fn tls_wish(&self) -> TlsWish {
        match &self.tls {
            None => TlsWish::None,
            Some(t) if t.letsencrypt == Some(true) => TlsWish::LetsEncrypt {
                carried: match (&t.key, &t.crt) {
                    (Some(k), Some(c)) => Some((k.clone(), c.clone())),
                    _ => None,
                },
            },
            Some(t) => TlsWish::Other {
                key: t.key.clone().unwrap_or_default(),
                crt: t.crt.clone().unwrap_or_default(),
                cacrt: t.cacrt.clone(),
            },
        }
    }

    /// The profile this site's certificate is asked for: its own
    /// (`tls.profile`), else `default` (the config's `acme_profile`), else
    /// `shortlived` for an IP address; each preferred unless the site says
    /// `profile_required`.
    pub fn profile_wish(&self, default: Option<&str>) -> Option<ProfileWish> {
        if let Some(name) = self.tls.as_ref().and_then(|t| t.profile.clone()) {
            let required = self.tls.as_ref().and_then(|t| t.profile_required).unwrap_or(false);
            return Some(ProfileWish { name, required });
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

    pub fn is_letsencrypt(&self) -> bool {
        matches!(self.tls_wish(), TlsWish::LetsEncrypt { .. })
    }

    /// The Site JSON as stored at rest: no key, no certificate (docs/design.md, invariant 4).
    pub fn without_tls_material(&self) -> AtRest {
        AtRest(self.stripped())
    }

    fn stripped(&self) -> Site {
        let mut s = self.clone();
        if let Some(t) = &mut s.tls {
            if t.letsencrypt == Some(true) {
                *t = Tls {
                    letsencrypt: Some(true),
                    profile: t.profile.clone(),
                    profile_required: t.profile_required,
                    ..Default::default()
                };
            } else {
                // An OKC's material lives in ssl_dir; at rest only the fact remains.
                *t = Tls { letsencrypt: Some(false), ..Default::default() };
            }
        }
        s
    }
}

/// A Site JSON as it may be stored at rest: made only by
/// [`Site::without_tls_material`], so it cannot hold a key or certificate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AtRest(Site);

impl std::ops::Deref for AtRest {
    type Target = Site;
    fn deref(&self) -> &Site {
        &self.0
    }
}

/// Parse and validate one Site JSON document. `origin` names where it came
/// from (a file name) for the error message.
pub fn parse_site(text: &str, origin: &str) -> Result<Site> {
    let v: Value = serde_json::from_str(text)
        .map_err(|e| Error::invalid(format!("{origin}: not valid JSON: {e}")))?;
    site_from_value(&v).map_err(|e| e.context(origin))
}

/// [`parse_site`], then the rules that depend on the ACME server that will
/// be asked ([`ip_refused_by`]): what `deploy` applies.
pub fn parse_site_for(text: &str, origin: &str, server: &str) -> Result<Site> {
    let site = parse_site(text, origin)?;
    if let Some(why) = ip_refused_by(&site, server) {
        return Err(Error::invalid(format!("{origin}: site {}: {why}", site.siteid)));
    }
    Ok(site)
}

/// Validate a Site JSON already parsed as a JSON value.
pub fn site_from_value(v: &Value) -> Result<Site> {
    let obj = v.as_object().ok_or_else(|| Error::invalid("Site JSON: must be a JSON object"))?;
    let siteid_hint = obj.get("siteid").and_then(Value::as_str).unwrap_or("?");
    validate(obj).map_err(|e| e.context(format!("site {siteid_hint}")))?;
    let site: Site = serde_json::from_value(v.clone())
        .map_err(|e| Error::invalid(format!("site {siteid_hint}: {e}")))?;
    Ok(site)
}

fn bad(field: &str, why: impl std::fmt::Display) -> Error {
    Error::invalid(format!("{field}: {why}"))
}

fn req_str<'a>(obj: &'a Map<String, Value>, key: &str, field: &str) -> Result<&'a str> {
    match obj.get(key) {
        None => Err(bad(field, "missing (required)")),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(bad(field, "must be a string")),
    }
}

fn check_keys(obj: &Map<String, Value>, allowed: &[&str], prefix: &str) -> Result<()> {
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
    (site.is_letsencrypt() && letsencrypt && !is_global_ip(ip))
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

fn pem_field(t: &Map<String, Value>, key: &str) -> Result<Option<String>> {
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

fn validate(obj: &Map<String, Value>) -> Result<()> {
    check_keys(obj, &["siteid", "hostname", "admin", "tls", "appconfigs"], "")?;
    let siteid = req_str(obj, "siteid", "siteid")?;
    SiteId::parse(siteid).map_err(|why| bad("siteid", why))?;
    let hostname = req_str(obj, "hostname", "hostname")?;
    Host::parse(hostname).map_err(|why| bad("hostname", why))?;

    match obj.get("admin") {
        None => return Err(bad("admin", "missing (required)")),
        Some(Value::Object(a)) => {
            check_keys(a, &["userid", "username", "email", "credential"], "admin.")?;
            let userid = req_str(a, "userid", "admin.userid")?;
            if userid.is_empty()
                || !userid.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            {
                return Err(bad(
                    "admin.userid",
                    format!("{userid:?}: only lowercase letters and digits"),
                ));
            }
            let username = req_str(a, "username", "admin.username")?;
            if username.trim().is_empty() {
                return Err(bad("admin.username", "is empty"));
            }
            let email = req_str(a, "email", "admin.email")?;
            if !looks_like_email(email) {
                return Err(bad("admin.email", format!("{email:?}: not an e-mail address")));
            }
            if let Some(c) = a.get("credential") {
                if !c.is_string() {
                    return Err(bad("admin.credential", "must be a string"));
                }
            }
        }
        Some(_) => return Err(bad("admin", "must be an object")),
    }

    if let Some(tls) = obj.get("tls") {
        let t = tls.as_object().ok_or_else(|| bad("tls", "must be an object"))?;
        check_keys(
            t,
            &["letsencrypt", "key", "crt", "cacrt", "profile", "profile_required"],
            "tls.",
        )?;
        if hostname == "*" {
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
        let profile_name_ok = |p: &str| {
            !p.is_empty()
                && p.len() <= 64
                && p.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        };
        match t.get("profile") {
            None => {}
            Some(Value::String(p)) if profile_name_ok(p) && !le => {
                return Err(bad(
                    "tls.profile",
                    "only with \"letsencrypt\": true (it names an ACME certificate profile)",
                ));
            }
            Some(Value::String(p)) if profile_name_ok(p) => {}
            Some(_) => return Err(bad(
                "tls.profile",
                "must be a profile name (letters, digits, - _ .), as the CA's directory lists them",
            )),
        }
        match t.get("profile_required") {
            None => {}
            Some(Value::Bool(_)) if t.get("profile").is_some() => {}
            Some(Value::Bool(_)) => return Err(bad("tls.profile_required", "needs tls.profile")),
            Some(_) => return Err(bad("tls.profile_required", "must be true or false")),
        }
        if le {
            if let Some(why) = not_public_reason(hostname) {
                return Err(bad("hostname", format!("{hostname:?} with tls.letsencrypt: {why}")));
            }
            if cacrt.is_some() {
                return Err(bad(
                    "tls.cacrt",
                    "not allowed with letsencrypt (the chain belongs in tls.crt)",
                ));
            }
            if key.is_some() != crt.is_some() {
                return Err(bad(
                    if key.is_some() { "tls.crt" } else { "tls.key" },
                    "missing: a carried Let's Encrypt certificate needs both key and crt",
                ));
            }
            // Carried material must be readable; whether it is usable (host,
            // key match, expiry) is judged at deploy time, with a warning.
            if let (Some(k), Some(c)) = (&key, &crt) {
                crate::certs::parse_key(k).map_err(|e| bad("tls.key", e))?;
                crate::certs::parse_chain(c).map_err(|e| bad("tls.crt", e))?;
            }
        } else {
            if key.is_none() {
                return Err(bad(
                    "tls.key",
                    "missing: tls needs either \"letsencrypt\": true or a key and crt",
                ));
            }
            if crt.is_none() {
                return Err(bad("tls.crt", "missing: an own certificate needs both key and crt"));
            }
            let (key, crt) = (key.unwrap_or_default(), crt.unwrap_or_default());
            let k = crate::certs::parse_key(&key).map_err(|e| bad("tls.key", e))?;
            let chain = crate::certs::parse_chain(&crt).map_err(|e| bad("tls.crt", e))?;
            if let Some(c) = &cacrt {
                crate::certs::parse_chain(c).map_err(|e| bad("tls.cacrt", e))?;
            }
            if !crate::certs::key_matches(&k, &chain[0]) {
                return Err(bad("tls.key", "does not match the certificate in tls.crt"));
            }
            crate::certs::check_loadable(&key, &crt, cacrt.as_deref())
                .map_err(|e| bad("tls", e))?;
        }
    }

    if let Some(acs) = obj.get("appconfigs") {
        let arr = acs.as_array().ok_or_else(|| bad("appconfigs", "must be an array"))?;
        let mut seen = std::collections::HashSet::new();
        for (i, ac) in arr.iter().enumerate() {
            let f = |k: &str| format!("appconfigs[{i}].{k}");
            let a = ac
                .as_object()
                .ok_or_else(|| bad(&format!("appconfigs[{i}]"), "must be an object"))?;
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
            if !seen.insert(id.to_string()) {
                return Err(bad(&f("appconfigid"), format!("{id} appears twice")));
            }
            let appid = req_str(a, "appid", &f("appid"))?;
            if appid.is_empty()
                || !appid
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
            {
                return Err(bad(&f("appid"), format!("{appid:?}: not a package name")));
            }
            if let Some(c) = a.get("context") {
                let c = c.as_str().ok_or_else(|| bad(&f("context"), "must be a string"))?;
                let ok = c.is_empty()
                    || (c.starts_with('/')
                        && c[1..].split('/').all(|seg| {
                            seg.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
                                && seg
                                    .bytes()
                                    .all(|b| b.is_ascii_alphanumeric() || b"-_.~".contains(&b))
                        }));
                if !ok {
                    return Err(bad(
                        &f("context"),
                        format!("{c:?}: must be empty or a path like /blog"),
                    ));
                }
            }
            if let Some(d) = a.get("isdefault") {
                if !d.is_boolean() {
                    return Err(bad(&f("isdefault"), "must be true or false"));
                }
            }
            if let Some(cp) = a.get("customizationpoints") {
                if !(cp.is_object() || cp.is_null()) {
                    return Err(bad(&f("customizationpoints"), "must be an object"));
                }
            }
        }
    }
    Ok(())
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
        assert_eq!(s.tls_wish(), TlsWish::None);
    }

    #[test]
    fn letsencrypt_site() {
        let s = parse_site(&site(r#","tls":{"letsencrypt":true}"#), "t").unwrap();
        assert_eq!(s.tls_wish(), TlsWish::LetsEncrypt { carried: None });
    }

    #[test]
    fn typo_key_is_named() {
        let e = parse_site(&site(r#","tsl":{"letsencrypt":true}"#), "t").unwrap_err();
        assert!(e.to_string().contains("tsl: unknown key"), "{e}");
        assert_eq!(e.exit_code(), 2);
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
        s.tls.as_mut().unwrap().key = Some("K".into());
        s.tls.as_mut().unwrap().crt = Some("C".into());
        let r = s.without_tls_material();
        assert_eq!(r.tls.clone().unwrap(), Tls { letsencrypt: Some(true), ..Default::default() });
    }
}
