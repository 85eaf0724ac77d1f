//! The ACME protocol flow ([RFC 8555 §7]): directory, nonces, account,
//! order, HTTP-01 challenge, finalize with a CSR, certificate download.
//!
//! [RFC 8555 §7]: https://www.rfc-editor.org/rfc/rfc8555#section-7

use super::jws::{b64, AccountKey};
use super::retry::{parse_retry_after, Backoff};
use super::types::{
    clean, clean_url, Authorization, AuthzStatus, ChallengeStatus, Order, OrderStatus, Problem,
    ProblemKind,
};
use super::AcmeError;
use crate::model::KeyType;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

/// How often a `badNonce` is retried with the fresh nonce it came with.
const BAD_NONCE_RETRIES: u32 = 20;

/// Settings of one client.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// The directory URL.
    pub directory: String,
    /// Extra PEM roots to trust for the server's TLS.
    pub ca_bundle: Option<PathBuf>,
    /// Overall deadline for one issuance (and for one request's retries).
    pub deadline: Duration,
    /// External Account Binding for `newAccount`, for CAs that require it.
    pub eab: Option<Eab>,
}

pub use crate::model::Eab;

/// The directory resource ([RFC 8555 §7.1.1]).
///
/// [RFC 8555 §7.1.1]: https://www.rfc-editor.org/rfc/rfc8555#section-7.1.1
#[derive(Debug, Clone)]
struct Directory {
    new_nonce: String,
    new_account: String,
    new_order: String,
    revoke_cert: Option<String>,
    terms_of_service: Option<String>,
    /// ARI ([RFC 9773]): the base URL of renewal information, if offered.
    ///
    /// [RFC 9773]: https://www.rfc-editor.org/rfc/rfc9773
    renewal_info: Option<String>,
    /// The profiles the CA offers (`meta.profiles`), name → description.
    profiles: Vec<(String, String)>,
}

/// What one order asks for ([RFC 8555 §7.4], [RFC 8738], [RFC 9773 §5],
/// draft-ietf-acme-profiles).
///
/// [RFC 8555 §7.4]: https://www.rfc-editor.org/rfc/rfc8555#section-7.4
/// [RFC 8738]: https://www.rfc-editor.org/rfc/rfc8738
/// [RFC 9773 §5]: https://www.rfc-editor.org/rfc/rfc9773#section-5
#[derive(Debug, Clone, Default)]
pub struct OrderOptions {
    /// The certificate profile to ask for.
    pub profile: Option<String>,
    /// The ARI CertID of the certificate this one replaces.
    pub replaces: Option<String>,
    /// Asked just before the order is finalized: an error stops the
    /// issuance there (fleet mode: the lineage lock must still be held).
    pub gate: Option<Gate>,
}

/// Why a [`Gate`] stopped an issuance: the caller's own error, whose
/// message the order's error carries.
pub type GateError = Box<dyn std::error::Error + Send + Sync>;

/// A check run before finalizing an order ([`OrderOptions::gate`]).
#[derive(Clone)]
pub struct Gate(std::sync::Arc<dyn Fn() -> Result<(), GateError> + Send + Sync>);

impl Gate {
    /// A gate that runs `check`; its error stops the issuance.
    pub fn new<E: Into<GateError>>(
        check: impl Fn() -> Result<(), E> + Send + Sync + 'static,
    ) -> Gate {
        Gate(std::sync::Arc::new(move || check().map_err(Into::into)))
    }
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Gate")
    }
}

/// A renewal information answer ([RFC 9773 §4.2]).
///
/// [RFC 9773 §4.2]: https://www.rfc-editor.org/rfc/rfc9773#section-4.2
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenewalInfo {
    pub start: chrono::DateTime<chrono::Utc>,
    pub end: chrono::DateTime<chrono::Utc>,
    pub explanation_url: Option<String>,
    /// When to ask again (`Retry-After`).
    pub retry_after: Option<Duration>,
}

/// An issued certificate.
#[derive(Debug, Clone)]
pub struct Issued {
    pub key_pem: String,
    pub fullchain_pem: String,
}

struct Response {
    status: u16,
    location: Option<String>,
    retry_after: Option<Duration>,
    body: Vec<u8>,
}

impl Response {
    fn json(&self, url: &str) -> Result<Value, AcmeError> {
        serde_json::from_slice(&self.body)
            .map_err(|e| AcmeError::Protocol { url: url.into(), detail: format!("not JSON: {e}") })
    }
    /// The body as a typed resource.
    fn typed<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T, AcmeError> {
        serde_json::from_slice(&self.body).map_err(|e| AcmeError::Protocol {
            url: url.into(),
            detail: format!("not the expected resource: {e}"),
        })
    }
}

/// One ACME client bound to a server and an account key. Safe to share
/// between threads: the nonce pool is behind a mutex.
pub struct AcmeClient {
    http: reqwest::blocking::Client,
    opts: ClientOptions,
    dir: Directory,
    key: AccountKey,
    kid: Mutex<Option<String>>,
    nonces: Mutex<Vec<String>>,
    bad_nonces: std::sync::atomic::AtomicU32,
}

/// Turn an error response into one [`AcmeError`] ([RFC 8555 §6.7]); any bytes are accepted.
///
/// [RFC 8555 §6.7]: https://www.rfc-editor.org/rfc/rfc8555#section-6.7
pub fn problem_of(url: &str, status: u16, body: &[u8]) -> AcmeError {
    match serde_json::from_slice::<Problem>(body) {
        Ok(problem) if !problem.ptype.is_empty() => {
            AcmeError::Problem { url: url.into(), status, problem }
        }
        _ => {
            let text: String = String::from_utf8_lossy(&body[..body.len().min(200)])
                .chars()
                .filter(|c| !c.is_control())
                .collect();
            AcmeError::Protocol { url: url.into(), detail: format!("HTTP {status}: {text}") }
        }
    }
}

fn str_field<'a>(v: &'a Value, k: &str, url: &str) -> Result<&'a str, AcmeError> {
    v.get(k)
        .and_then(Value::as_str)
        .ok_or_else(|| AcmeError::Protocol { url: url.into(), detail: format!("missing {k:?}") })
}

/// Build the HTTP client: system roots plus the extra bundle.
pub fn http_client(ca_bundle: Option<&Path>) -> Result<reqwest::blocking::Client, AcmeError> {
    let mut b = reqwest::blocking::Client::builder()
        .user_agent(concat!("site-admin/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(30));
    if let Some(path) = ca_bundle {
        let pem = crate::fsutil::read_user_file(path)
            .map_err(|e| AcmeError::Local(format!("the ACME CA bundle {}: {e}", path.display())))?;
        let certs = reqwest::Certificate::from_pem_bundle(pem.as_bytes()).map_err(|e| {
            AcmeError::Local(format!(
                "the ACME CA bundle {} is not PEM certificates: {e}",
                path.display()
            ))
        })?;
        if certs.is_empty() {
            return Err(AcmeError::Local(format!(
                "the ACME CA bundle {} holds no certificate",
                path.display()
            )));
        }
        for c in certs {
            b = b.add_root_certificate(c);
        }
    }
    b.build().map_err(|e| AcmeError::Local(format!("TLS setup: {e}")))
}

fn connect_err(url: &str, e: reqwest::Error) -> AcmeError {
    let mut detail = e.to_string();
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        detail = format!("{detail}: {s}");
        src = s.source();
    }
    if detail.contains("CaUsedAsEndEntity") {
        detail.push_str(" (the ACME server presents a CA certificate as its own TLS certificate; give it a leaf certificate signed by a CA, and put that CA in acme_ca_bundle)");
    } else if detail.contains("UnknownIssuer") {
        detail.push_str(" (the ACME server's TLS certificate is not signed by a CA this device trusts; put that CA in acme_ca_bundle)");
    }
    AcmeError::Connect { url: url.into(), detail }
}

impl AcmeClient {
    /// Fetch the directory ([RFC 8555 §7.1.1]) and make a client for `key`.
    /// `kid` is the account URL when the account exists already.
    ///
    /// [RFC 8555 §7.1.1]: https://www.rfc-editor.org/rfc/rfc8555#section-7.1.1
    pub fn connect(
        opts: ClientOptions,
        key: AccountKey,
        kid: Option<String>,
    ) -> Result<AcmeClient, AcmeError> {
        let http = http_client(opts.ca_bundle.as_deref())?;
        tracing::trace!("HTTP client ready");
        let url = opts.directory.clone();
        let resp = http.get(&url).send().map_err(|e| connect_err(&url, e))?;
        let status = resp.status().as_u16();
        let body = resp.bytes().map_err(|e| connect_err(&url, e))?;
        tracing::trace!(url, status, "ACME directory");
        if status != 200 {
            return Err(problem_of(&url, status, &body));
        }
        let v: Value = serde_json::from_slice(&body).map_err(|e| AcmeError::Protocol {
            url: url.clone(),
            detail: format!("directory is not JSON: {e}"),
        })?;
        let dir = Directory {
            // The CA's strings, made safe for a log line once, here (types::clean).
            new_nonce: clean(str_field(&v, "newNonce", &url)?),
            new_account: clean(str_field(&v, "newAccount", &url)?),
            new_order: clean(str_field(&v, "newOrder", &url)?),
            revoke_cert: v.get("revokeCert").and_then(Value::as_str).map(clean),
            terms_of_service: v.pointer("/meta/termsOfService").and_then(Value::as_str).map(clean),
            renewal_info: v
                .get("renewalInfo")
                .and_then(Value::as_str)
                .map(|u| clean(u.trim_end_matches('/'))),
            profiles: v
                .pointer("/meta/profiles")
                .and_then(Value::as_object)
                .map(|o| {
                    o.iter().map(|(k, d)| (clean(k), clean(d.as_str().unwrap_or("")))).collect()
                })
                .unwrap_or_default(),
        };
        Ok(AcmeClient {
            http,
            opts,
            dir,
            key,
            kid: Mutex::new(kid),
            nonces: Mutex::new(Vec::new()),
            bad_nonces: Default::default(),
        })
    }

    /// A client of the same server for another account key (`kid`: its
    /// URL when known), sharing this one's connections and directory: no
    /// new connection and no second directory request.
    pub fn with_account(&self, key: AccountKey, kid: Option<String>) -> AcmeClient {
        AcmeClient {
            http: self.http.clone(),
            opts: self.opts.clone(),
            dir: self.dir.clone(),
            key,
            kid: Mutex::new(kid),
            nonces: Mutex::new(Vec::new()),
            bad_nonces: Default::default(),
        }
    }

    pub fn account_url(&self) -> Option<String> {
        self.kid.lock().map(|k| k.clone()).unwrap_or(None)
    }

    /// How many `badNonce` answers this client has retried (for tests and benchmarks).
    pub fn bad_nonce_retries(&self) -> u32 {
        self.bad_nonces.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn key(&self) -> &AccountKey {
        &self.key
    }

    /// The CA's terms of service (`meta.termsOfService`), if it names them.
    pub fn terms_of_service(&self) -> Option<&str> {
        self.dir.terms_of_service.as_deref()
    }

    pub fn directory_url(&self) -> &str {
        &self.opts.directory
    }

    /// Does the CA offer renewal information (ARI)?
    pub fn offers_renewal_info(&self) -> bool {
        self.dir.renewal_info.is_some()
    }

    /// The profiles the CA's directory lists (`meta.profiles`).
    pub fn profiles(&self) -> Vec<String> {
        self.dir.profiles.iter().map(|p| p.0.clone()).collect()
    }

    /// Ask for the renewal information of a certificate by its CertID
    /// ([RFC 9773 §4.1]): an unauthenticated GET.
    ///
    /// [RFC 9773 §4.1]: https://www.rfc-editor.org/rfc/rfc9773#section-4.1
    pub fn renewal_info(&self, cert_id: &str) -> Result<RenewalInfo, AcmeError> {
        let base = self.dir.renewal_info.clone().ok_or_else(|| AcmeError::Protocol {
            url: self.opts.directory.clone(),
            detail: "the directory offers no renewalInfo".into(),
        })?;
        let url = format!("{base}/{cert_id}");
        let resp = self
            .http
            .get(&url)
            .timeout(Duration::from_secs(10))
            .send()
            .map_err(|e| connect_err(&url, e))?;
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|h| h.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        let body = resp.bytes().map_err(|e| connect_err(&url, e))?;
        if status != 200 {
            return Err(problem_of(&url, status, &body));
        }
        let v: Value = serde_json::from_slice(&body).map_err(|e| AcmeError::Protocol {
            url: url.clone(),
            detail: format!("renewal information is not JSON: {e}"),
        })?;
        let when = |k: &str| {
            v.pointer(&format!("/suggestedWindow/{k}"))
                .and_then(Value::as_str)
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.with_timezone(&chrono::Utc))
                .ok_or_else(|| AcmeError::Protocol {
                    url: url.clone(),
                    detail: format!("renewal information without a suggestedWindow {k}"),
                })
        };
        let (start, end) = (when("start")?, when("end")?);
        if end < start {
            return Err(AcmeError::Protocol {
                url,
                detail: "the suggested window ends before it starts".into(),
            });
        }
        // Kept in the renewal conf and logged: only a plain URL (types::clean_url).
        let explanation_url = v.get("explanationURL").and_then(Value::as_str).and_then(|u| {
            let kept = clean_url(u);
            if kept.is_none() {
                tracing::warn!(
                    "{url}: ignoring an explanationURL that is not a plain URL: {}",
                    clean(u)
                );
            }
            kept
        });
        Ok(RenewalInfo { start, end, explanation_url, retry_after })
    }

    /// A fresh nonce: one kept from an earlier response, or HEAD newNonce
    /// ([RFC 8555 §7.2]).
    ///
    /// [RFC 8555 §7.2]: https://www.rfc-editor.org/rfc/rfc8555#section-7.2
    fn nonce(&self) -> Result<String, AcmeError> {
        if let Some(n) = self.nonces.lock().ok().and_then(|mut v| v.pop()) {
            return Ok(n);
        }
        let url = &self.dir.new_nonce;
        let resp = self.http.head(url).send().map_err(|e| connect_err(url, e))?;
        resp.headers()
            .get("replay-nonce")
            .and_then(|h| h.to_str().ok())
            .map(str::to_string)
            .ok_or_else(|| AcmeError::Protocol {
                url: url.clone(),
                detail: "no Replay-Nonce header".into(),
            })
    }

    fn keep_nonce(&self, headers: &reqwest::header::HeaderMap) {
        if let Some(n) = headers.get("replay-nonce").and_then(|h| h.to_str().ok()) {
            if let Ok(mut v) = self.nonces.lock() {
                v.push(n.to_string());
            }
        }
    }

    /// POST a JWS ([RFC 8555 §6.2]); `payload` None is POST-as-GET
    /// ([RFC 8555 §6.3]). Retries `badNonce` with the fresh nonce, and 429/503
    /// after `Retry-After` — but never past `deadline`: a CA that asks for
    /// more is answered with an error that says what it asked.
    ///
    /// [RFC 8555 §6.2]: https://www.rfc-editor.org/rfc/rfc8555#section-6.2
    /// [RFC 8555 §6.3]: https://www.rfc-editor.org/rfc/rfc8555#section-6.3
    fn post(
        &self,
        url: &str,
        payload: Option<&Value>,
        signer: Signer,
        accept: Option<&str>,
        deadline: Instant,
    ) -> Result<Response, AcmeError> {
        let mut bad_nonces = 0;
        loop {
            let nonce = self.nonce()?;
            let mut protected = json!({"alg": self.key.alg(), "nonce": nonce, "url": url});
            match signer {
                Signer::Jwk => protected["jwk"] = self.key.public_jwk()?,
                Signer::Kid => {
                    let kid = self
                        .account_url()
                        .ok_or_else(|| AcmeError::Local("no ACME account yet".into()))?;
                    protected["kid"] = Value::String(kid);
                }
            }
            let p = match payload {
                Some(v) => b64(v.to_string().as_bytes()),
                None => String::new(),
            };
            let body = self.key.sign(&protected, &p)?;
            let mut req = self
                .http
                .post(url)
                .header("Content-Type", "application/jose+json")
                .body(body.to_string());
            if let Some(a) = accept {
                req = req.header("Accept", a);
            }
            let resp = req.send().map_err(|e| connect_err(url, e))?;
            tracing::trace!(url, status = resp.status().as_u16(), "ACME response");
            self.keep_nonce(resp.headers());
            let status = resp.status().as_u16();
            let header =
                |n: &str| resp.headers().get(n).and_then(|h| h.to_str().ok()).map(str::to_string);
            let location = header("location");
            let retry_after =
                header("retry-after").and_then(|v| parse_retry_after(&v, SystemTime::now()));
            let bytes = resp.bytes().map_err(|e| connect_err(url, e))?.to_vec();
            if status < 400 {
                return Ok(Response { status, location, retry_after, body: bytes });
            }
            let err = problem_of(url, status, &bytes);
            if err.kind() == Some(ProblemKind::BadNonce) && bad_nonces < BAD_NONCE_RETRIES {
                bad_nonces += 1;
                self.bad_nonces.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::debug!(url, bad_nonces, "badNonce: retrying with the fresh nonce");
                continue;
            }
            if status == 429 || status == 503 {
                if let Some(wait) = retry_after {
                    if Instant::now() + wait < deadline {
                        tracing::info!(url, ?wait, "the ACME server asks to retry later");
                        std::thread::sleep(wait);
                        continue;
                    }
                    tracing::warn!("the ACME server asks to retry in {} s: {err}", wait.as_secs());
                    return Err(AcmeError::Deadline {
                        what: format!("the request to {url}"),
                        asked: Some(wait),
                        deadline: self.opts.deadline,
                    });
                }
            }
            return Err(err);
        }
    }

    fn deadline(&self) -> Instant {
        Instant::now() + self.opts.deadline
    }

    /// Create the account ([RFC 8555 §7.3]) unless this client has one;
    /// returns the account URL. Agrees to the CA's terms of service (logged,
    /// see [`Self::terms_of_service`]) and binds an external account when
    /// the options carry one ([RFC 8555 §7.3.4]).
    ///
    /// [RFC 8555 §7.3]: https://www.rfc-editor.org/rfc/rfc8555#section-7.3
    /// [RFC 8555 §7.3.4]: https://www.rfc-editor.org/rfc/rfc8555#section-7.3.4
    pub fn ensure_account(&self, contact_email: Option<&str>) -> Result<String, AcmeError> {
        if let Some(k) = self.account_url() {
            return Ok(k);
        }
        let mut payload = json!({"termsOfServiceAgreed": true});
        if let Some(e) = contact_email {
            payload["contact"] = json!([format!("mailto:{e}")]);
        }
        let url = self.dir.new_account.clone();
        if let Some(eab) = &self.opts.eab {
            payload["externalAccountBinding"] = self.eab_jws(eab, &url)?;
        }
        if let Some(tos) = self.terms_of_service() {
            tracing::info!("agreeing to the terms of service of {}: {tos}", self.opts.directory);
        }
        let resp = self.post(&url, Some(&payload), Signer::Jwk, None, self.deadline())?;
        let kid = resp.location.ok_or_else(|| AcmeError::Protocol {
            url: url.clone(),
            detail: "newAccount answered without a Location".into(),
        })?;
        self.set_account_url(&kid);
        Ok(kid)
    }

    /// The account this key has with the CA, if the CA still knows it
    /// (`onlyReturnExisting`, [RFC 8555 §7.3.1]); sets it as this client's.
    ///
    /// [RFC 8555 §7.3.1]: https://www.rfc-editor.org/rfc/rfc8555#section-7.3.1
    pub fn find_account(&self) -> Result<Option<String>, AcmeError> {
        let url = self.dir.new_account.clone();
        match self.post(
            &url,
            Some(&json!({"onlyReturnExisting": true})),
            Signer::Jwk,
            None,
            self.deadline(),
        ) {
            Ok(r) => {
                let kid = r.location.ok_or_else(|| AcmeError::Protocol {
                    url,
                    detail: "newAccount answered without a Location".into(),
                })?;
                self.set_account_url(&kid);
                Ok(Some(kid))
            }
            Err(e) if e.account_gone() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Ask the CA whether this client's account still exists and is valid
    /// (POST-as-GET of the account, [RFC 8555 §7.3.2]).
    ///
    /// [RFC 8555 §7.3.2]: https://www.rfc-editor.org/rfc/rfc8555#section-7.3.2
    pub fn check_account(&self) -> Result<(), AcmeError> {
        let kid =
            self.account_url().ok_or_else(|| AcmeError::Local("no ACME account yet".into()))?;
        let r = self.post(&kid, None, Signer::Kid, None, self.deadline())?;
        match r.json(&kid)?.get("status").and_then(Value::as_str) {
            Some("deactivated") | Some("revoked") => Err(AcmeError::Problem {
                url: kid,
                status: r.status,
                problem: Problem {
                    ptype: "urn:ietf:params:acme:error:unauthorized".into(),
                    detail: "the account is deactivated".into(),
                    subproblems: vec![],
                },
            }),
            _ => Ok(()),
        }
    }

    fn set_account_url(&self, kid: &str) {
        if let Ok(mut k) = self.kid.lock() {
            *k = Some(kid.to_string());
        }
    }

    /// The `externalAccountBinding` JWS: HS256 over the account's public JWK.
    fn eab_jws(&self, eab: &Eab, url: &str) -> Result<Value, AcmeError> {
        let protected =
            b64(json!({"alg": "HS256", "kid": eab.kid, "url": url}).to_string().as_bytes());
        let payload = b64(self.key.public_jwk()?.to_string().as_bytes());
        let local = |e: openssl::error::ErrorStack| {
            AcmeError::Local(format!("External Account Binding: {e}"))
        };
        let key = openssl::pkey::PKey::hmac(&eab.hmac_key).map_err(local)?;
        let mut signer = openssl::sign::Signer::new(openssl::hash::MessageDigest::sha256(), &key)
            .map_err(local)?;
        signer.update(format!("{protected}.{payload}").as_bytes()).map_err(local)?;
        let sig = signer.sign_to_vec().map_err(local)?;
        Ok(json!({"protected": protected, "payload": payload, "signature": b64(&sig)}))
    }

    /// Revoke a certificate ([RFC 8555 §7.6]) with the account key; `reason`
    /// is an RFC 5280 CRLReason code.
    ///
    /// [RFC 8555 §7.6]: https://www.rfc-editor.org/rfc/rfc8555#section-7.6
    pub fn revoke(&self, cert_der: &[u8], reason: u8) -> Result<(), AcmeError> {
        let url = self.dir.revoke_cert.clone().ok_or_else(|| AcmeError::Protocol {
            url: self.opts.directory.clone(),
            detail: "the directory offers no revokeCert".into(),
        })?;
        self.post(
            &url,
            Some(&json!({"certificate": b64(cert_der), "reason": reason})),
            Signer::Kid,
            None,
            self.deadline(),
        )?;
        Ok(())
    }

    /// Obtain a certificate for `host` ([RFC 8555 §7.4]) within one
    /// deadline: order, answer HTTP-01 by writing the key authorization under
    /// `<webroot>/.well-known/acme-challenge/`, wait for the order to be
    /// `ready`, finalize with a new key of `key_type`, poll `processing`
    /// (after `Retry-After`, or a bounded backoff) until `valid`, download
    /// the full chain.
    ///
    /// [RFC 8555 §7.4]: https://www.rfc-editor.org/rfc/rfc8555#section-7.4
    pub fn issue(
        &self,
        host: &str,
        webroot: &Path,
        key_type: KeyType,
    ) -> Result<Issued, AcmeError> {
        self.issue_with(host, webroot, key_type, &OrderOptions::default())
    }

    /// [`Self::issue`] with a profile and the certificate it replaces. An IP
    /// address is ordered as an `ip` identifier ([RFC 8738]). A `replaces`
    /// the CA refuses (`alreadyReplaced`, or any refusal of the new order)
    /// is retried once without it.
    ///
    /// [RFC 8738]: https://www.rfc-editor.org/rfc/rfc8738
    pub fn issue_with(
        &self,
        host: &str,
        webroot: &Path,
        key_type: KeyType,
        o: &OrderOptions,
    ) -> Result<Issued, AcmeError> {
        let deadline = self.deadline();
        let what = format!("the order for {host}");
        let (order_url, order) = self.new_order(host, o, deadline)?;
        tracing::debug!(host, "step: order created");
        crate::fault::point("acme.ordered");
        for a in &order.authorizations {
            self.authorize(a, webroot, deadline)?;
        }
        tracing::debug!(host, "step: challenge validated");
        let order = self.wait_until_ready(&what, &order_url, order, deadline)?;
        if order.status == OrderStatus::Ready {
            if let Some(g) = &o.gate {
                (g.0)().map_err(|e| AcmeError::Local(e.to_string()))?;
            }
            let (key_pem, order) =
                self.finalize(host, key_type, &what, &order_url, &order, deadline)?;
            tracing::debug!(host, "step: finalized");
            let fullchain_pem = self.download(&order_url, &order, deadline)?;
            tracing::debug!(host, "step: certificate downloaded");
            return Ok(Issued { key_pem, fullchain_pem });
        }
        // An order that was processing or valid before we finalized is not ours to finish.
        Err(AcmeError::Protocol {
            url: order_url,
            detail: format!("the new order is already {} before it was finalized", order.status),
        })
    }

    /// The new order ([RFC 8555 §7.4]) for `host`, naming the certificate
    /// it replaces if one is given (and again without it if the CA refuses
    /// that): its URL and its first state.
    ///
    /// [RFC 8555 §7.4]: https://www.rfc-editor.org/rfc/rfc8555#section-7.4
    fn new_order(
        &self,
        host: &str,
        o: &OrderOptions,
        deadline: Instant,
    ) -> Result<(String, Order), AcmeError> {
        let new_order = self.dir.new_order.clone();
        let kind = if host.parse::<std::net::IpAddr>().is_ok() { "ip" } else { "dns" };
        let mut payload = json!({"identifiers": [{"type": kind, "value": host}]});
        if let Some(p) = &o.profile {
            payload["profile"] = p.clone().into();
        }
        let mut with_replaces = payload.clone();
        if let Some(r) = &o.replaces {
            with_replaces["replaces"] = r.clone().into();
        }
        let resp = match self.post(&new_order, Some(&with_replaces), Signer::Kid, None, deadline) {
            Err(e @ AcmeError::Problem { .. }) if o.replaces.is_some() && !e.account_gone() => {
                tracing::warn!("{host}: the CA refused the order naming the certificate it replaces ({e}); ordering again without replaces");
                self.post(&new_order, Some(&payload), Signer::Kid, None, deadline)?
            }
            r => r?,
        };
        let order_url = resp.location.clone().ok_or_else(|| AcmeError::Protocol {
            url: new_order.clone(),
            detail: "newOrder answered without a Location".into(),
        })?;
        let order: Order = resp.typed(&new_order)?;
        Ok((order_url, order))
    }

    /// Finalize only once the order is ready (§7.1.6): poll pending → ready
    /// (or processing, valid: the caller refuses those).
    fn wait_until_ready(
        &self,
        what: &str,
        order_url: &str,
        mut order: Order,
        deadline: Instant,
    ) -> Result<Order, AcmeError> {
        let mut backoff = Backoff::default();
        let mut wait = None;
        loop {
            match order.status {
                OrderStatus::Ready | OrderStatus::Processing | OrderStatus::Valid => break,
                OrderStatus::Pending => {}
                OrderStatus::Invalid => return Err(order_failed(what, &order)),
                OrderStatus::Unknown => {
                    return Err(AcmeError::Protocol {
                        url: order_url.to_string(),
                        detail: "the order is in an unknown state".into(),
                    })
                }
            }
            self.sleep_until_next(&mut backoff, wait, deadline, what)?;
            let r = self.post(order_url, None, Signer::Kid, None, deadline)?;
            wait = r.retry_after;
            order = r.typed(order_url)?;
        }
        Ok(order)
    }

    /// Finalize the ready order with a new key's CSR and poll it to valid:
    /// the key and the valid order.
    fn finalize(
        &self,
        host: &str,
        key_type: KeyType,
        what: &str,
        order_url: &str,
        order: &Order,
        deadline: Instant,
    ) -> Result<(String, Order), AcmeError> {
        let (key_pem, csr_der) = new_key_and_csr(host, key_type)?;
        let r = self.post(
            &order.finalize.clone(),
            Some(&json!({"csr": b64(&csr_der)})),
            Signer::Kid,
            None,
            deadline,
        )?;
        let mut wait = r.retry_after;
        let mut order: Order = r.typed(order_url)?;
        let mut backoff = Backoff::default();
        loop {
            match order.status {
                OrderStatus::Valid => break,
                OrderStatus::Processing | OrderStatus::Ready => {}
                OrderStatus::Invalid => return Err(order_failed(what, &order)),
                s => {
                    return Err(AcmeError::Protocol {
                        url: order_url.to_string(),
                        detail: format!("after finalize the order is {s}"),
                    })
                }
            }
            self.sleep_until_next(&mut backoff, wait, deadline, what)?;
            let r = self.post(order_url, None, Signer::Kid, None, deadline)?;
            wait = r.retry_after;
            order = r.typed(order_url)?;
        }
        Ok((key_pem, order))
    }

    /// Download the valid order's certificate chain (PEM).
    fn download(
        &self,
        order_url: &str,
        order: &Order,
        deadline: Instant,
    ) -> Result<String, AcmeError> {
        let cert_url = order.certificate.clone().ok_or_else(|| AcmeError::Protocol {
            url: order_url.to_string(),
            detail: "a valid order without a certificate URL".into(),
        })?;
        let r = self.post(
            &cert_url,
            None,
            Signer::Kid,
            Some("application/pem-certificate-chain"),
            deadline,
        )?;
        let fullchain_pem = String::from_utf8(r.body).map_err(|_| AcmeError::Protocol {
            url: cert_url.clone(),
            detail: "certificate is not text".into(),
        })?;
        if crate::certs::parse_chain(&fullchain_pem).is_err() {
            return Err(AcmeError::Protocol {
                url: cert_url,
                detail: "certificate is not a PEM chain".into(),
            });
        }
        Ok(fullchain_pem)
    }

    /// Satisfy one authorization ([RFC 8555 §7.5]) with HTTP-01 ([RFC 8555 §8.3]).
    ///
    /// [RFC 8555 §7.5]: https://www.rfc-editor.org/rfc/rfc8555#section-7.5
    /// [RFC 8555 §8.3]: https://www.rfc-editor.org/rfc/rfc8555#section-8.3
    fn authorize(&self, url: &str, webroot: &Path, deadline: Instant) -> Result<(), AcmeError> {
        let authz: Authorization = self.post(url, None, Signer::Kid, None, deadline)?.typed(url)?;
        let ident = authz.identifier.value.clone();
        match authz.status {
            AuthzStatus::Valid => return Ok(()),
            AuthzStatus::Pending => {}
            s => {
                return Err(AcmeError::Invalid {
                    what: format!("the authorization for {ident}"),
                    detail: format!("it is {s}"),
                })
            }
        }
        let chall = authz.challenges.iter().find(|c| c.kind == "http-01").ok_or_else(|| {
            AcmeError::Protocol {
                url: url.into(),
                detail: format!("no http-01 challenge offered for {ident}"),
            }
        })?;
        let token = &chall.token;
        if token.is_empty()
            || !token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(AcmeError::Protocol {
                url: url.into(),
                detail: "challenge token is not base64url".into(),
            });
        }
        let keyauth = format!("{token}.{}", self.key.thumbprint()?);
        let _file = ChallengeFile::write(webroot, token, &keyauth)?;
        if chall.status == ChallengeStatus::Pending {
            self.post(&chall.url, Some(&json!({})), Signer::Kid, None, deadline)?;
        }
        let what = format!("the validation of {ident}");
        let mut backoff = Backoff::default();
        loop {
            let r = self.post(url, None, Signer::Kid, None, deadline)?;
            let wait = r.retry_after;
            let a: Authorization = r.typed(url)?;
            match a.status {
                AuthzStatus::Valid => return Ok(()),
                AuthzStatus::Pending => {}
                s => {
                    let detail = a
                        .challenges
                        .iter()
                        .find_map(|c| c.error.as_ref())
                        .map(|p| p.to_string())
                        .unwrap_or_else(|| format!("the authorization is {s}"));
                    return Err(AcmeError::Invalid {
                        what: format!("HTTP-01 validation of {ident}"),
                        detail,
                    });
                }
            }
            self.sleep_until_next(&mut backoff, wait, deadline, &what)?;
        }
    }

    fn sleep_until_next(
        &self,
        backoff: &mut Backoff,
        hint: Option<Duration>,
        deadline: Instant,
        what: &str,
    ) -> Result<(), AcmeError> {
        let d = hint.unwrap_or_else(|| backoff.next_delay());
        if Instant::now() + d > deadline {
            return Err(AcmeError::Deadline {
                what: what.into(),
                asked: hint,
                deadline: self.opts.deadline,
            });
        }
        std::thread::sleep(d);
        Ok(())
    }
}

/// Who signs a request: the account key's JWK (newAccount), or the account URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Signer {
    Jwk,
    Kid,
}

fn order_failed(what: &str, order: &Order) -> AcmeError {
    AcmeError::Invalid {
        what: what.into(),
        detail: order
            .error
            .as_ref()
            .map(|p| p.to_string())
            .unwrap_or_else(|| "the order became invalid".into()),
    }
}

/// The challenge file; removed when dropped, whatever happened.
struct ChallengeFile {
    path: PathBuf,
}

impl ChallengeFile {
    fn write(webroot: &Path, token: &str, keyauth: &str) -> Result<ChallengeFile, AcmeError> {
        let dir = webroot.join(".well-known/acme-challenge");
        crate::fsutil::create_dir_all_mode(&dir, 0o755)
            .map_err(|e| AcmeError::Local(e.to_string()))?;
        let path = dir.join(token);
        crate::fsutil::atomic_write(&path, keyauth.as_bytes(), 0o644)
            .map_err(|e| AcmeError::Local(e.to_string()))?;
        Ok(ChallengeFile { path })
    }
}

impl Drop for ChallengeFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A new certificate key (ECDSA P-256 or RSA 2048, by openssl) and a CSR for
/// `host` made by rcgen with it. Returns the key as PKCS#8 PEM and the CSR DER.
pub fn new_key_and_csr(host: &str, key_type: KeyType) -> Result<(String, Vec<u8>), AcmeError> {
    let local =
        |e: &dyn std::fmt::Display| AcmeError::Local(format!("making the certificate key: {e}"));
    let pkey = match key_type {
        KeyType::Ecdsa => {
            let group = openssl::ec::EcGroup::from_curve_name(openssl::nid::Nid::X9_62_PRIME256V1)
                .map_err(|e| local(&e))?;
            openssl::pkey::PKey::from_ec_key(
                openssl::ec::EcKey::generate(&group).map_err(|e| local(&e))?,
            )
            .map_err(|e| local(&e))?
        }
        KeyType::Rsa => {
            openssl::pkey::PKey::from_rsa(openssl::rsa::Rsa::generate(2048).map_err(|e| local(&e))?)
                .map_err(|e| local(&e))?
        }
    };
    let pem = String::from_utf8(pkey.private_key_to_pem_pkcs8().map_err(|e| local(&e))?)
        .map_err(|e| local(&e))?;
    let kp = rcgen::KeyPair::from_pem(&pem).map_err(|e| local(&e))?;
    // The name only in the subjectAltName (DNS or IP), no CN: what the
    // `tlsserver` and `shortlived` profiles issue, and what RFC 8738 asks.
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(|e| local(&e))?;
    params.subject_alt_names = vec![match host.parse::<std::net::IpAddr>() {
        Ok(ip) => rcgen::SanType::IpAddress(ip),
        Err(_) => rcgen::SanType::DnsName(host.to_string().try_into().map_err(|e| local(&e))?),
    }];
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params.serialize_request(&kp).map_err(|e| local(&e))?;
    Ok((pem, csr.der().to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csr_for_both_key_types() {
        for kt in [KeyType::Ecdsa, KeyType::Rsa] {
            let (pem, der) = new_key_and_csr("a.example.com", kt).unwrap();
            let req = openssl::x509::X509Req::from_der(&der).unwrap();
            let key = openssl::pkey::PKey::private_key_from_pem(pem.as_bytes()).unwrap();
            assert!(req.verify(&req.public_key().unwrap()).unwrap());
            assert!(req.public_key().unwrap().public_eq(&key));
        }
    }

    #[test]
    fn csrs_name_the_host_only_in_the_san_dns_or_ip() {
        for (host, want) in [
            ("a.example.com", "DNS:a.example.com"),
            ("127.0.0.1", "IP Address:127.0.0.1"),
            ("2001:db8::1", "IP Address:2001:DB8:0:0:0:0:0:1"),
        ] {
            let (_, der) = new_key_and_csr(host, KeyType::Ecdsa).unwrap();
            let req = openssl::x509::X509Req::from_der(&der).unwrap();
            assert_eq!(req.subject_name().entries().count(), 0, "{host}: no CN");
            let text = String::from_utf8(req.to_text().unwrap()).unwrap();
            assert!(text.contains(want), "{host}: {text}");
        }
    }

    #[test]
    fn problem_documents_become_sentences() {
        let e = problem_of("https://ca/x", 403, br#"{"type":"urn:ietf:params:acme:error:unauthorized","detail":"no","subproblems":[{"type":"urn:x:dns","detail":"nx","identifier":{"type":"dns","value":"a.test"}}]}"#);
        let s = e.to_string();
        assert!(s.contains("HTTP 403, unauthorized: no"), "{s}");
        assert!(s.contains("a.test: dns nx"), "{s}");
        assert_eq!(e.kind(), Some(ProblemKind::Unauthorized));
        assert!(problem_of("u", 500, b"<html>").to_string().contains("HTTP 500"));
    }
}
