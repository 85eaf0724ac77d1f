//! etcd's v3 API through its JSON gateway (`/v3/...`), over the blocking
//! reqwest client the ACME client already uses: no async runtime, no protoc.
//!
//! Every request and response is a typed struct. The gateway's traps, each
//! handled here once (and each driven by a test against a real etcd):
//! - int64 fields arrive as JSON strings (`"revision": "7"`): [`i64_str`];
//! - zero and false fields are omitted: a failed txn has no `succeeded`, an
//!   empty range no `kvs` — every field has a default;
//! - unknown request fields are silently ignored, so requests are built only
//!   from these structs (a misspelt field cannot compile);
//! - unary errors are `{"error": string, "code": n}` with HTTP 4xx/5xx, but a
//!   streaming call (`lease/keepalive`) wraps its answer as `{"result": ..}`
//!   or `{"error": {..}}` with HTTP 200;
//! - a keepalive of an expired or revoked lease answers 200 with no `TTL`:
//!   that is a lost lease, never a success.
//!
//! Reads are linearizable (`serializable: false`): a decision is never made
//! from a member's possibly stale copy. A member that cannot be reached or
//! answers 503 (no leader, or in a minority) makes the client try the next
//! endpoint; every answer is read with a size cap.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// The most one answer may hold. etcd refuses requests over 1.5 MiB by
/// default, so a range over the fleet's prefix stays well below this unless
/// the prefix holds something that is not ours.
pub const MAX_RESPONSE: u64 = 32 << 20;

/// The most one fleet record may hold (a certificate chain and an encrypted
/// key are a few KiB).
pub const MAX_VALUE: usize = 256 << 10;

/// What went wrong talking to etcd.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EtcdError {
    /// No endpoint answered (connection refused, timeout, TLS failure).
    #[error("no etcd endpoint could be reached ({0})")]
    Unreachable(String),
    /// etcd answered with an error (a refused request, no leader, a denied
    /// permission).
    #[error("etcd refused the request: {message} (code {code}, HTTP {http})")]
    Refused {
        /// The gRPC status code etcd gave.
        code: i64,
        /// etcd's message.
        message: String,
        /// The gateway's HTTP status.
        http: u16,
    },
    /// An answer that is not what the API promises.
    #[error("etcd's answer to {what} cannot be read: {why}")]
    Malformed {
        /// The call.
        what: &'static str,
        /// Why.
        why: String,
    },
    /// A value larger than a fleet record may be.
    #[error("the etcd value of {key} is {size} bytes, more than the {limit} bytes a fleet record may hold")]
    TooLarge {
        /// The key, as text.
        key: String,
        /// Its size.
        size: usize,
        /// [`MAX_VALUE`].
        limit: usize,
    },
    /// The client could not be set up (a certificate file, a bad URL).
    #[error("{0}")]
    Setup(String),
}

/// int64 and uint64 fields: etcd's gateway writes them as strings; a number
/// is taken too, and an omitted field is 0 (each use says `default`).
pub mod i64_str {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::fmt::Display;
    use std::str::FromStr;

    /// Write as a string, as the gateway does.
    pub fn serialize<T: Display, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }

    /// Read a string or a number.
    pub fn deserialize<'de, T: FromStr + Deserialize<'de>, D: Deserializer<'de>>(
        d: D,
    ) -> Result<T, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum N<T> {
            S(String),
            I(T),
        }
        match N::<T>::deserialize(d)? {
            N::I(i) => Ok(i),
            N::S(s) => s.parse().map_err(|_| {
                serde::de::Error::custom(format!("not a 64-bit integer: {} characters", s.len()))
            }),
        }
    }
}

/// Bytes fields: base64 in both directions.
mod b64 {
    use base64::engine::general_purpose::STANDARD as B64;
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&B64.encode(v))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        B64.decode(s.as_bytes())
            .map_err(|_| serde::de::Error::custom("a bytes field is not base64"))
    }
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

/// Every answer's header.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Header {
    /// The store's revision when the request was served.
    #[serde(default, with = "i64_str")]
    pub revision: i64,
    /// The member that served it.
    #[serde(default, with = "i64_str")]
    pub member_id: u64,
}

/// One key and its value.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct KeyValue {
    /// The key.
    #[serde(default, with = "b64")]
    pub key: Vec<u8>,
    /// The value.
    #[serde(default, with = "b64")]
    pub value: Vec<u8>,
    /// The revision that created the key (0: it does not exist).
    #[serde(default, with = "i64_str")]
    pub create_revision: i64,
    /// The revision of its last change.
    #[serde(default, with = "i64_str")]
    pub mod_revision: i64,
    /// How often it was written since it was created.
    #[serde(default, with = "i64_str")]
    pub version: i64,
    /// The lease it is attached to (0: none).
    #[serde(default, with = "i64_str")]
    pub lease: i64,
}

impl KeyValue {
    /// The key as text (keys are ours and ASCII; anything else shows lossily).
    pub fn key_str(&self) -> String {
        String::from_utf8_lossy(&self.key).into_owned()
    }
}

/// `/v3/kv/range`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RangeRequest {
    /// The key, or the start of the range.
    #[serde(with = "b64")]
    pub key: Vec<u8>,
    /// The end of the range (exclusive); empty: the key alone.
    #[serde(with = "b64", skip_serializing_if = "Vec::is_empty")]
    pub range_end: Vec<u8>,
    /// At most this many keys (0: all).
    #[serde(with = "i64_str", skip_serializing_if = "is_zero")]
    pub limit: i64,
    /// Always false: a linearizable read.
    pub serializable: bool,
    /// Keys and revisions only, no values.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub keys_only: bool,
}

/// The answer to a range.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RangeResponse {
    /// The header.
    #[serde(default)]
    pub header: Header,
    /// The keys found (omitted when none).
    #[serde(default)]
    pub kvs: Vec<KeyValue>,
    /// How many keys the range holds.
    #[serde(default, with = "i64_str")]
    pub count: i64,
    /// Whether `limit` cut it short.
    #[serde(default)]
    pub more: bool,
}

/// `/v3/kv/put`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PutRequest {
    /// The key.
    #[serde(with = "b64")]
    pub key: Vec<u8>,
    /// The value.
    #[serde(with = "b64")]
    pub value: Vec<u8>,
    /// A lease to attach the key to (0: none).
    #[serde(with = "i64_str", skip_serializing_if = "is_zero")]
    pub lease: i64,
}

/// `/v3/kv/deleterange`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DeleteRangeRequest {
    /// The key, or the start of the range.
    #[serde(with = "b64")]
    pub key: Vec<u8>,
    /// The end of the range (exclusive); empty: the key alone.
    #[serde(with = "b64", skip_serializing_if = "Vec::is_empty")]
    pub range_end: Vec<u8>,
}

/// What a compare looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CompareTarget {
    /// The key's version.
    Version,
    /// The revision that created the key.
    Create,
    /// The revision of its last change.
    Mod,
    /// Its value (not used by site-admin: records are compared by revision).
    Value,
    /// Its lease.
    Lease,
}

/// How a compare compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CompareResult {
    /// Equal.
    Equal,
    /// Greater.
    Greater,
    /// Less.
    Less,
    /// Not equal.
    NotEqual,
}

/// One condition of a txn. The compared number is a protobuf `oneof`: only
/// the field of the target may be sent (the gateway takes the last one it
/// sees, so a zero `lease` after the revision would silently compare that).
#[derive(Debug, Clone)]
pub struct Compare {
    /// The key.
    pub key: Vec<u8>,
    /// What is compared.
    pub target: CompareTarget,
    /// How.
    pub result: CompareResult,
    /// The number it is compared with (for every target but `Value`).
    pub number: i64,
}

impl Serialize for Compare {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(4))?;
        m.serialize_entry("key", &B64.encode(&self.key))?;
        m.serialize_entry("target", &self.target)?;
        m.serialize_entry("result", &self.result)?;
        let field = match self.target {
            CompareTarget::Version => "version",
            CompareTarget::Create => "create_revision",
            CompareTarget::Mod => "mod_revision",
            CompareTarget::Lease => "lease",
            CompareTarget::Value => "value",
        };
        m.serialize_entry(field, &self.number.to_string())?;
        m.end()
    }
}

impl Compare {
    fn new(key: &str, target: CompareTarget, result: CompareResult, number: i64) -> Compare {
        Compare { key: key.as_bytes().to_vec(), target, result, number }
    }
    /// The key was created at revision `rev` (0: it does not exist).
    pub fn created_at(key: &str, rev: i64) -> Compare {
        Compare::new(key, CompareTarget::Create, CompareResult::Equal, rev)
    }
    /// The key was last changed at revision `rev` (0: it does not exist).
    pub fn modified_at(key: &str, rev: i64) -> Compare {
        Compare::new(key, CompareTarget::Mod, CompareResult::Equal, rev)
    }
    /// The key is attached to `lease`.
    pub fn on_lease(key: &str, lease: i64) -> Compare {
        Compare::new(key, CompareTarget::Lease, CompareResult::Equal, lease)
    }
}

/// One operation of a txn.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestOp {
    /// A read.
    RequestRange(RangeRequest),
    /// A write.
    RequestPut(PutRequest),
    /// A delete.
    RequestDeleteRange(DeleteRangeRequest),
}

/// `/v3/kv/txn`: if every compare holds, `success`, else `failure`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TxnRequest {
    /// The conditions.
    pub compare: Vec<Compare>,
    /// Done when they hold.
    pub success: Vec<RequestOp>,
    /// Done when one does not.
    pub failure: Vec<RequestOp>,
}

/// The answer of one txn operation (only reads carry anything we use).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ResponseOp {
    /// A read's answer.
    #[serde(default)]
    pub response_range: Option<RangeResponse>,
}

/// The answer to a txn.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct TxnResponse {
    /// The header (its revision is the txn's, when it wrote).
    #[serde(default)]
    pub header: Header,
    /// Whether the compares held (omitted when false).
    #[serde(default)]
    pub succeeded: bool,
    /// One answer per operation done.
    #[serde(default)]
    pub responses: Vec<ResponseOp>,
}

#[derive(Serialize)]
struct LeaseGrantRequest {
    #[serde(rename = "TTL", with = "i64_str")]
    ttl: i64,
}

#[derive(Deserialize)]
struct LeaseGrantResponse {
    #[serde(rename = "ID", default, with = "i64_str")]
    id: i64,
    #[serde(rename = "TTL", default, with = "i64_str")]
    ttl: i64,
    #[serde(default)]
    error: String,
}

#[derive(Serialize)]
struct LeaseId {
    #[serde(rename = "ID", with = "i64_str")]
    id: i64,
}

#[derive(Deserialize)]
struct KeepAliveResult {
    #[serde(rename = "TTL", default, with = "i64_str")]
    ttl: i64,
}

#[derive(Deserialize)]
struct StreamError {
    #[serde(default, with = "i64_str")]
    grpc_code: i64,
    #[serde(default, with = "i64_str")]
    http_code: i64,
    #[serde(default)]
    message: String,
}

/// A streaming call's one message: a result or an error object.
#[derive(Deserialize)]
struct Streamed<T> {
    result: Option<T>,
    error: Option<StreamError>,
}

/// A unary error answer.
#[derive(Deserialize)]
struct UnaryError {
    #[serde(default)]
    error: String,
    #[serde(default)]
    message: String,
    #[serde(default, with = "i64_str")]
    code: i64,
}

/// A lease etcd granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// Its id.
    pub id: i64,
    /// Its time to live, in seconds.
    pub ttl: i64,
}

/// How to reach the cluster: its client URLs and this device's TLS material.
#[derive(Debug, Clone, Default)]
pub struct EtcdOptions {
    /// Client URLs (`https://host:2379`; `http://` only on loopback).
    pub endpoints: Vec<String>,
    /// etcd's CA (PEM), for `https://` endpoints.
    pub ca: Option<PathBuf>,
    /// This device's client certificate (PEM).
    pub cert: Option<PathBuf>,
    /// Its key (PEM).
    pub key: Option<PathBuf>,
    /// The etcd user and its password, when the cluster has auth enabled.
    /// (The JSON gateway ignores a client certificate's CN — etcd 3.4
    /// refuses any request whose certificate has one once auth is on — so a
    /// device authenticates with a password and its certificate, which has
    /// no CN, only opens the TLS connection.)
    pub auth: Option<(String, String)>,
    /// The limit for one call to one endpoint.
    pub timeout: Duration,
}

/// A client of one etcd cluster.
pub struct Etcd {
    http: reqwest::blocking::Client,
    endpoints: Vec<String>,
    /// The endpoint that answered last; tried first.
    current: AtomicUsize,
    auth: Option<(String, String)>,
    /// The auth token, once had; renewed when etcd says it is invalid.
    token: Mutex<Option<String>>,
}

impl std::fmt::Debug for Etcd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Etcd").field("endpoints", &self.endpoints).finish()
    }
}

/// The end of the range of every key that starts with `prefix` (etcd's
/// `--prefix`: the prefix with its last byte incremented).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn read_pem(path: &Path, what: &str) -> Result<Vec<u8>, EtcdError> {
    crate::fsutil::read_user_file(path)
        .map(String::into_bytes)
        .map_err(|e| EtcdError::Setup(format!("fleet.{what} {}: {e}", path.display())))
}

impl Etcd {
    /// A client for `opts` (no request is sent yet).
    pub fn new(opts: &EtcdOptions) -> Result<Etcd, EtcdError> {
        if opts.endpoints.is_empty() {
            return Err(EtcdError::Setup("fleet.endpoints is empty".into()));
        }
        let timeout = if opts.timeout.is_zero() { Duration::from_secs(5) } else { opts.timeout };
        let mut b = reqwest::blocking::Client::builder()
            .user_agent(concat!("site-admin/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(2).min(timeout))
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none());
        if let Some(ca) = &opts.ca {
            let pem = read_pem(ca, "ca")?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|_| {
                EtcdError::Setup(format!("fleet.ca {}: not PEM certificates", ca.display()))
            })?;
            if certs.is_empty() {
                return Err(EtcdError::Setup(format!(
                    "fleet.ca {}: holds no certificate",
                    ca.display()
                )));
            }
            b = b.tls_built_in_root_certs(false);
            for c in certs {
                b = b.add_root_certificate(c);
            }
        }
        match (&opts.cert, &opts.key) {
            (Some(cert), Some(key)) => {
                let mut pem = read_pem(cert, "cert")?;
                pem.push(b'\n');
                pem.extend(read_pem(key, "key")?);
                let id = reqwest::Identity::from_pem(&pem).map_err(|_| {
                    EtcdError::Setup(format!(
                        "fleet.cert {} and fleet.key {}: not a certificate and its key",
                        cert.display(),
                        key.display()
                    ))
                })?;
                b = b.identity(id);
            }
            (None, None) => {}
            _ => return Err(EtcdError::Setup("fleet.cert and fleet.key go together".into())),
        }
        let http = b
            .build()
            .map_err(|e| EtcdError::Setup(format!("the etcd client cannot be set up: {e}")))?;
        let endpoints =
            opts.endpoints.iter().map(|e| e.trim_end_matches('/').to_string()).collect();
        Ok(Etcd {
            http,
            endpoints,
            current: AtomicUsize::new(0),
            auth: opts.auth.clone(),
            token: Mutex::new(None),
        })
    }

    /// POST `body` to `path` on the first endpoint that answers, starting
    /// with the one that answered last. A connection failure or a 503 (no
    /// leader, a member cut off from the quorum) moves on to the next one;
    /// any other answer is final.
    fn call(
        &self,
        what: &'static str,
        path: &str,
        body: &impl Serialize,
    ) -> Result<Vec<u8>, EtcdError> {
        let body = serde_json::to_vec(body)
            .map_err(|e| EtcdError::Malformed { what, why: e.to_string() })?;
        if self.auth.is_none() {
            return self.send(what, path, &body, None);
        }
        let token = self.token(false)?;
        match self.send(what, path, &body, Some(&token)) {
            // Simple tokens expire after a few idle minutes: log in again, once.
            Err(EtcdError::Refused { code: 16, .. }) => {
                let token = self.token(true)?;
                self.send(what, path, &body, Some(&token))
            }
            r => r,
        }
    }

    /// The auth token: the one had, or a new one from `/v3/auth/authenticate`.
    fn token(&self, renew: bool) -> Result<String, EtcdError> {
        let mut held = self
            .token
            .lock()
            .map_err(|_| EtcdError::Setup("the etcd token lock is poisoned".into()))?;
        if let (false, Some(t)) = (renew, held.as_ref()) {
            return Ok(t.clone());
        }
        let Some((name, password)) = &self.auth else {
            return Err(EtcdError::Setup("no etcd user configured".into()));
        };
        #[derive(Serialize)]
        struct Login<'a> {
            name: &'a str,
            password: &'a str,
        }
        #[derive(Deserialize)]
        struct Token {
            #[serde(default)]
            token: String,
        }
        let body = serde_json::to_vec(&Login { name, password })
            .map_err(|e| EtcdError::Malformed { what: "authenticate", why: e.to_string() })?;
        let data = self.send("authenticate", "/v3/auth/authenticate", &body, None)?;
        let t: Token = serde_json::from_slice(&data)
            .map_err(|e| EtcdError::Malformed { what: "authenticate", why: e.to_string() })?;
        if t.token.is_empty() {
            return Err(EtcdError::Malformed {
                what: "authenticate",
                why: "no token (is auth enabled on the cluster?)".into(),
            });
        }
        *held = Some(t.token.clone());
        Ok(t.token)
    }

    fn send(
        &self,
        what: &'static str,
        path: &str,
        body: &[u8],
        token: Option<&str>,
    ) -> Result<Vec<u8>, EtcdError> {
        let n = self.endpoints.len();
        let start = self.current.load(Ordering::Relaxed);
        let mut last = String::new();
        for i in 0..n {
            let idx = (start + i) % n;
            let url = format!("{}{path}", self.endpoints[idx]);
            let mut req =
                self.http.post(&url).header("Content-Type", "application/json").body(body.to_vec());
            if let Some(t) = token {
                req = req.header("Authorization", t);
            }
            let resp = match req.send() {
                Ok(r) => r,
                Err(e) => {
                    last = format!("{}: {}", self.endpoints[idx], without_url(&e));
                    continue;
                }
            };
            let status = resp.status().as_u16();
            let mut data = Vec::new();
            if let Err(e) = resp.take(MAX_RESPONSE + 1).read_to_end(&mut data) {
                last = format!("{}: {e}", self.endpoints[idx]);
                continue;
            }
            if data.len() as u64 > MAX_RESPONSE {
                return Err(EtcdError::Malformed {
                    what,
                    why: format!("more than {MAX_RESPONSE} bytes"),
                });
            }
            if status == 503 {
                last = format!("{}: {}", self.endpoints[idx], unary_error(&data, status));
                continue;
            }
            self.current.store(idx, Ordering::Relaxed);
            if status != 200 {
                return Err(unary_error(&data, status));
            }
            return Ok(data);
        }
        Err(EtcdError::Unreachable(last))
    }

    fn call_json<T: for<'de> Deserialize<'de>>(
        &self,
        what: &'static str,
        path: &str,
        body: &impl Serialize,
    ) -> Result<T, EtcdError> {
        let data = self.call(what, path, body)?;
        serde_json::from_slice(&data).map_err(|e| EtcdError::Malformed { what, why: e.to_string() })
    }

    /// One key, read linearizably; its value at most [`MAX_VALUE`] bytes.
    pub fn get(&self, key: &str) -> Result<Option<KeyValue>, EtcdError> {
        let r: RangeResponse = self.call_json(
            "range",
            "/v3/kv/range",
            &RangeRequest { key: key.as_bytes().to_vec(), ..Default::default() },
        )?;
        let kv = r.kvs.into_iter().next();
        if let Some(kv) = &kv {
            check_size(kv)?;
        }
        Ok(kv)
    }

    /// Every key under `prefix`, read linearizably at one revision, with the
    /// store's revision. A value over [`MAX_VALUE`] is an error naming its key.
    pub fn get_prefix(&self, prefix: &str) -> Result<RangeResponse, EtcdError> {
        let r = self.get_prefix_all(prefix)?;
        for kv in &r.kvs {
            check_size(kv)?;
        }
        Ok(r)
    }

    /// The keys under `prefix` with their revisions, no values (a
    /// linearizable read).
    pub fn keys_prefix(&self, prefix: &str) -> Result<RangeResponse, EtcdError> {
        let p = prefix.as_bytes().to_vec();
        let req = RangeRequest {
            range_end: prefix_end(&p),
            key: p,
            keys_only: true,
            ..Default::default()
        };
        self.call_json("range", "/v3/kv/range", &req)
    }

    /// [`Etcd::get_prefix`], values of any size included (the answer as a
    /// whole is still bounded): for a caller that refuses an oversized
    /// value by its key and goes on with the others.
    pub fn get_prefix_all(&self, prefix: &str) -> Result<RangeResponse, EtcdError> {
        let p = prefix.as_bytes().to_vec();
        let req = RangeRequest { range_end: prefix_end(&p), key: p, ..Default::default() };
        self.call_json("range", "/v3/kv/range", &req)
    }

    /// Write a key unconditionally; the store's revision after the write.
    pub fn put(&self, key: &str, value: &[u8], lease: i64) -> Result<i64, EtcdError> {
        let r: RangeResponse = self.call_json(
            "put",
            "/v3/kv/put",
            &PutRequest { key: key.as_bytes().to_vec(), value: value.to_vec(), lease },
        )?;
        Ok(r.header.revision)
    }

    /// Delete a key.
    pub fn delete(&self, key: &str) -> Result<(), EtcdError> {
        let _: RangeResponse = self.call_json(
            "deleterange",
            "/v3/kv/deleterange",
            &DeleteRangeRequest { key: key.as_bytes().to_vec(), range_end: Vec::new() },
        )?;
        Ok(())
    }

    /// A transaction.
    pub fn txn(&self, t: &TxnRequest) -> Result<TxnResponse, EtcdError> {
        self.call_json("txn", "/v3/kv/txn", t)
    }

    /// A new lease of `ttl` seconds.
    pub fn grant(&self, ttl: i64) -> Result<Lease, EtcdError> {
        let r: LeaseGrantResponse =
            self.call_json("lease grant", "/v3/lease/grant", &LeaseGrantRequest { ttl })?;
        if !r.error.is_empty() || r.id == 0 || r.ttl <= 0 {
            return Err(EtcdError::Malformed {
                what: "lease grant",
                why: if r.error.is_empty() { "no lease id or TTL".into() } else { r.error },
            });
        }
        Ok(Lease { id: r.id, ttl: r.ttl })
    }

    /// Keep a lease alive: its new TTL, or `None` when the lease is gone
    /// (expired or revoked — the gateway says so with a 200 and no TTL).
    pub fn keepalive(&self, id: i64) -> Result<Option<i64>, EtcdError> {
        let data = self.call("lease keepalive", "/v3/lease/keepalive", &LeaseId { id })?;
        // One request in the body: one message back (a stream of one).
        let first = data
            .split(|b| *b == b'\n')
            .find(|l| !l.iter().all(u8::is_ascii_whitespace))
            .unwrap_or(&[]);
        let s: Streamed<KeepAliveResult> = serde_json::from_slice(first)
            .map_err(|e| EtcdError::Malformed { what: "lease keepalive", why: e.to_string() })?;
        if let Some(e) = s.error {
            return Err(EtcdError::Refused {
                code: e.grpc_code,
                message: e.message,
                http: e.http_code.clamp(0, 999) as u16,
            });
        }
        Ok(s.result.map(|r| r.ttl).filter(|t| *t > 0))
    }

    /// Give a lease up (its keys go with it). A lease that is already gone is fine.
    pub fn revoke(&self, id: i64) -> Result<(), EtcdError> {
        match self.call("lease revoke", "/v3/lease/revoke", &LeaseId { id }) {
            Ok(_) => Ok(()),
            Err(EtcdError::Refused { message, .. }) if message.contains("lease not found") => {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}

fn check_size(kv: &KeyValue) -> Result<(), EtcdError> {
    if kv.value.len() > MAX_VALUE {
        return Err(EtcdError::TooLarge {
            key: kv.key_str(),
            size: kv.value.len(),
            limit: MAX_VALUE,
        });
    }
    Ok(())
}

fn unary_error(data: &[u8], http: u16) -> EtcdError {
    match serde_json::from_slice::<UnaryError>(data) {
        Ok(e) => EtcdError::Refused {
            code: e.code,
            message: printable(if e.message.is_empty() { &e.error } else { &e.message }),
            http,
        },
        // The gateway answers some refusals in plain text.
        Err(_) => {
            EtcdError::Refused { code: 0, message: printable(&String::from_utf8_lossy(data)), http }
        }
    }
}

/// At most 200 characters of `s`, control characters shown as `?`: what
/// etcd says goes into one log line and never more.
fn printable(s: &str) -> String {
    let t: String =
        s.trim().chars().take(200).map(|c| if c.is_control() { '?' } else { c }).collect();
    if s.trim().chars().count() > 200 {
        format!("{t}…")
    } else {
        t
    }
}

/// A reqwest error without the URL repeated (the caller names the endpoint).
fn without_url(e: &reqwest::Error) -> String {
    let mut s = String::from(if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    });
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

/// Base64 of a key, for messages about raw gateway bodies in tests.
pub fn b64_key(key: &str) -> String {
    B64.encode(key.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_the_last_byte() {
        assert_eq!(prefix_end(b"/a/"), b"/a0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff"), vec![0]);
    }

    #[test]
    fn int64_fields_come_as_strings_or_numbers_or_not_at_all() {
        let kv: KeyValue =
            serde_json::from_str(r#"{"key":"YQ==","create_revision":"7","mod_revision":9}"#)
                .unwrap();
        assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (7, 9, 0));
        assert!(serde_json::from_str::<KeyValue>(r#"{"version":"x"}"#).is_err());
        let t: TxnResponse = serde_json::from_str(r#"{"header":{"revision":"3"}}"#).unwrap();
        assert!(!t.succeeded, "a failed txn omits succeeded");
    }

    #[test]
    fn compares_carry_only_their_target() {
        let c = serde_json::to_value(Compare::created_at("k", 5)).unwrap();
        assert_eq!(c["target"], "CREATE");
        assert_eq!(c["create_revision"], "5");
        assert_eq!(c["key"], "aw==");
        assert_eq!(c.as_object().unwrap().len(), 4, "one number field only: {c}");
    }
}
