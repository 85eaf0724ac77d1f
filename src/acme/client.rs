//! The ACME protocol flow ([RFC 8555 §7]): directory, nonces, account,
//! order, HTTP-01 challenge, finalize with a CSR, certificate download.
//!
//! [RFC 8555 §7]: https://www.rfc-editor.org/rfc/rfc8555#section-7

use super::jws::{b64, AccountKey};
use super::retry::{parse_retry_after, Backoff};
use super::AcmeError;
use crate::config::KeyType;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

const BAD_NONCE: &str = "urn:ietf:params:acme:error:badNonce";
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
}

/// The directory resource ([RFC 8555 §7.1.1]).
///
/// [RFC 8555 §7.1.1]: https://www.rfc-editor.org/rfc/rfc8555#section-7.1.1
#[derive(Debug, Clone)]
struct Directory {
    new_nonce: String,
    new_account: String,
    new_order: String,
}

/// An issued certificate.
#[derive(Debug, Clone)]
pub struct Issued {
    pub key_pem: String,
    pub fullchain_pem: String,
}

struct Response {
    location: Option<String>,
    retry_after: Option<Duration>,
    body: Vec<u8>,
}

impl Response {
    fn json(&self, url: &str) -> Result<Value, AcmeError> {
        serde_json::from_slice(&self.body).map_err(|e| AcmeError::Protocol { url: url.into(), detail: format!("not JSON: {e}") })
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
    match serde_json::from_slice::<Value>(body) {
        Ok(v) if v.get("type").is_some() => {
            let subs = v
                .get("subproblems")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .map(|s| {
                            let id = s.pointer("/identifier/value").and_then(Value::as_str).unwrap_or("?");
                            format!("{id}: {} {}", s.get("type").and_then(Value::as_str).unwrap_or(""), s.get("detail").and_then(Value::as_str).unwrap_or(""))
                        })
                        .collect()
                })
                .unwrap_or_default();
            AcmeError::Problem {
                url: url.into(),
                status,
                ptype: v["type"].as_str().unwrap_or("?").to_string(),
                detail: v.get("detail").and_then(Value::as_str).unwrap_or("(no detail)").to_string(),
                subproblems: subs,
            }
        }
        _ => AcmeError::Protocol { url: url.into(), detail: format!("HTTP {status}: {}", String::from_utf8_lossy(&body[..body.len().min(200)])) },
    }
}

fn str_field<'a>(v: &'a Value, k: &str, url: &str) -> Result<&'a str, AcmeError> {
    v.get(k).and_then(Value::as_str).ok_or_else(|| AcmeError::Protocol { url: url.into(), detail: format!("missing {k:?}") })
}

/// Build the HTTP client: system roots plus the extra bundle.
pub fn http_client(ca_bundle: Option<&Path>) -> Result<reqwest::blocking::Client, AcmeError> {
    let mut b = reqwest::blocking::Client::builder()
        .user_agent(concat!("site-admin/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(30));
    if let Some(path) = ca_bundle {
        let pem = crate::fsutil::read_user_file(path).map_err(|e| AcmeError::Local(format!("the ACME CA bundle {}: {e}", path.display())))?;
        let certs = reqwest::Certificate::from_pem_bundle(pem.as_bytes())
            .map_err(|e| AcmeError::Local(format!("the ACME CA bundle {} is not PEM certificates: {e}", path.display())))?;
        if certs.is_empty() {
            return Err(AcmeError::Local(format!("the ACME CA bundle {} holds no certificate", path.display())));
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
    pub fn connect(opts: ClientOptions, key: AccountKey, kid: Option<String>) -> Result<AcmeClient, AcmeError> {
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
        let v: Value = serde_json::from_slice(&body).map_err(|e| AcmeError::Protocol { url: url.clone(), detail: format!("directory is not JSON: {e}") })?;
        let dir = Directory {
            new_nonce: str_field(&v, "newNonce", &url)?.into(),
            new_account: str_field(&v, "newAccount", &url)?.into(),
            new_order: str_field(&v, "newOrder", &url)?.into(),
        };
        Ok(AcmeClient { http, opts, dir, key, kid: Mutex::new(kid), nonces: Mutex::new(Vec::new()), bad_nonces: Default::default() })
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
            .ok_or_else(|| AcmeError::Protocol { url: url.clone(), detail: "no Replay-Nonce header".into() })
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
    /// after `Retry-After`, within the deadline.
    ///
    /// [RFC 8555 §6.2]: https://www.rfc-editor.org/rfc/rfc8555#section-6.2
    /// [RFC 8555 §6.3]: https://www.rfc-editor.org/rfc/rfc8555#section-6.3
    fn post(&self, url: &str, payload: Option<&Value>, use_jwk: bool, accept: Option<&str>) -> Result<Response, AcmeError> {
        let start = Instant::now();
        let mut bad_nonces = 0;
        loop {
            let nonce = self.nonce()?;
            let mut protected = json!({"alg": self.key.alg(), "nonce": nonce, "url": url});
            if use_jwk {
                protected["jwk"] = self.key.public_jwk().map_err(AcmeError::Local)?;
            } else {
                let kid = self.account_url().ok_or_else(|| AcmeError::Local("no ACME account yet".into()))?;
                protected["kid"] = Value::String(kid);
            }
            let p = match payload {
                Some(v) => b64(v.to_string().as_bytes()),
                None => String::new(),
            };
            let body = self.key.sign(&protected, &p).map_err(AcmeError::Local)?;
            let mut req = self.http.post(url).header("Content-Type", "application/jose+json").body(body.to_string());
            if let Some(a) = accept {
                req = req.header("Accept", a);
            }
            let resp = req.send().map_err(|e| connect_err(url, e))?;
            tracing::trace!(url, status = resp.status().as_u16(), "ACME response");
            self.keep_nonce(resp.headers());
            let status = resp.status().as_u16();
            let header = |n: &str| resp.headers().get(n).and_then(|h| h.to_str().ok()).map(str::to_string);
            let location = header("location");
            let retry_after = header("retry-after").and_then(|v| parse_retry_after(&v, SystemTime::now()));
            let bytes = resp.bytes().map_err(|e| connect_err(url, e))?.to_vec();
            if status < 400 {
                return Ok(Response { location, retry_after, body: bytes });
            }
            let err = problem_of(url, status, &bytes);
            if let AcmeError::Problem { ptype, .. } = &err {
                if ptype == BAD_NONCE && bad_nonces < BAD_NONCE_RETRIES {
                    bad_nonces += 1;
                    self.bad_nonces.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::debug!(url, bad_nonces, "badNonce: retrying with the fresh nonce");
                    continue;
                }
            }
            if status == 429 || status == 503 {
                if let Some(wait) = retry_after {
                    if start.elapsed() + wait < self.opts.deadline {
                        tracing::info!(url, ?wait, "the ACME server asks to retry later");
                        std::thread::sleep(wait);
                        continue;
                    }
                }
            }
            return Err(err);
        }
    }

    /// Create the account ([RFC 8555 §7.3]) unless this client has one;
    /// returns the account URL.
    ///
    /// [RFC 8555 §7.3]: https://www.rfc-editor.org/rfc/rfc8555#section-7.3
    pub fn ensure_account(&self, contact_email: Option<&str>) -> Result<String, AcmeError> {
        if let Some(k) = self.account_url() {
            return Ok(k);
        }
        let mut payload = json!({"termsOfServiceAgreed": true});
        if let Some(e) = contact_email {
            payload["contact"] = json!([format!("mailto:{e}")]);
        }
        let url = self.dir.new_account.clone();
        let resp = self.post(&url, Some(&payload), true, None)?;
        let kid = resp.location.ok_or_else(|| AcmeError::Protocol { url: url.clone(), detail: "newAccount answered without a Location".into() })?;
        if let Ok(mut k) = self.kid.lock() {
            *k = Some(kid.clone());
        }
        Ok(kid)
    }

    /// Obtain a certificate for `host` ([RFC 8555 §7.4]): order, answer
    /// HTTP-01 by writing the key authorization under
    /// `<webroot>/.well-known/acme-challenge/`, finalize with a new key of
    /// `key_type`, and download the full chain.
    ///
    /// [RFC 8555 §7.4]: https://www.rfc-editor.org/rfc/rfc8555#section-7.4
    pub fn issue(&self, host: &str, webroot: &Path, key_type: KeyType) -> Result<Issued, AcmeError> {
        let deadline = Instant::now() + self.opts.deadline;
        let new_order = self.dir.new_order.clone();
        let resp = self.post(&new_order, Some(&json!({"identifiers": [{"type": "dns", "value": host}]})), false, None)?;
        let order_url =
            resp.location.clone().ok_or_else(|| AcmeError::Protocol { url: new_order.clone(), detail: "newOrder answered without a Location".into() })?;
        let order = resp.json(&new_order)?;
        let authzs: Vec<String> = order
            .get("authorizations")
            .and_then(Value::as_array)
            .ok_or_else(|| AcmeError::Protocol { url: order_url.clone(), detail: "order without authorizations".into() })?
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect();
        let finalize = str_field(&order, "finalize", &order_url)?.to_string();
        for a in &authzs {
            self.authorize(a, webroot, deadline)?;
        }
        // Finalize ([RFC 8555 §7.4]) with a CSR for a fresh key.
        let (key_pem, csr_der) = new_key_and_csr(host, key_type)?;
        let resp = self.post(&finalize, Some(&json!({"csr": b64(&csr_der)})), false, None)?;
        let mut order = resp.json(&finalize)?;
        let mut backoff = Backoff::default();
        let mut wait = resp.retry_after;
        loop {
            match order.get("status").and_then(Value::as_str) {
                Some("valid") => break,
                Some("invalid") => {
                    return Err(AcmeError::Invalid {
                        what: format!("the order for {host}"),
                        detail: order.get("error").map(|e| e.to_string()).unwrap_or_else(|| "order invalid".into()),
                    })
                }
                Some(_) => {}
                None => return Err(AcmeError::Protocol { url: order_url.clone(), detail: "order without status".into() }),
            }
            sleep_until_next(&mut backoff, wait, deadline, &format!("the order for {host}"))?;
            let r = self.post(&order_url, None, false, None)?;
            wait = r.retry_after;
            order = r.json(&order_url)?;
        }
        let cert_url = str_field(&order, "certificate", &order_url)?.to_string();
        let r = self.post(&cert_url, None, false, Some("application/pem-certificate-chain"))?;
        let fullchain_pem = String::from_utf8(r.body).map_err(|_| AcmeError::Protocol { url: cert_url.clone(), detail: "certificate is not text".into() })?;
        if crate::certs::parse_chain(&fullchain_pem).is_err() {
            return Err(AcmeError::Protocol { url: cert_url, detail: "certificate is not a PEM chain".into() });
        }
        Ok(Issued { key_pem, fullchain_pem })
    }

    /// Satisfy one authorization ([RFC 8555 §7.5]) with HTTP-01 ([RFC 8555 §8.3]).
    ///
    /// [RFC 8555 §7.5]: https://www.rfc-editor.org/rfc/rfc8555#section-7.5
    /// [RFC 8555 §8.3]: https://www.rfc-editor.org/rfc/rfc8555#section-8.3
    fn authorize(&self, url: &str, webroot: &Path, deadline: Instant) -> Result<(), AcmeError> {
        let authz = self.post(url, None, false, None)?.json(url)?;
        let ident = authz.pointer("/identifier/value").and_then(Value::as_str).unwrap_or("?").to_string();
        match authz.get("status").and_then(Value::as_str) {
            Some("valid") => return Ok(()),
            Some("pending") => {}
            other => return Err(AcmeError::Invalid { what: format!("the authorization for {ident}"), detail: format!("status {other:?}") }),
        }
        let chall = authz
            .get("challenges")
            .and_then(Value::as_array)
            .and_then(|cs| cs.iter().find(|c| c.get("type").and_then(Value::as_str) == Some("http-01")))
            .ok_or_else(|| AcmeError::Protocol { url: url.into(), detail: format!("no http-01 challenge offered for {ident}") })?;
        let token = str_field(chall, "token", url)?;
        if token.is_empty() || !token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return Err(AcmeError::Protocol { url: url.into(), detail: "challenge token is not base64url".into() });
        }
        let chall_url = str_field(chall, "url", url)?.to_string();
        let keyauth = format!("{token}.{}", self.key.thumbprint().map_err(AcmeError::Local)?);
        let _file = ChallengeFile::write(webroot, token, &keyauth)?;
        self.post(&chall_url, Some(&json!({})), false, None)?;
        let mut backoff = Backoff::default();
        loop {
            let r = self.post(url, None, false, None)?;
            let wait = r.retry_after;
            let a = r.json(url)?;
            match a.get("status").and_then(Value::as_str) {
                Some("valid") => return Ok(()),
                Some("pending") | Some("processing") => {}
                _ => {
                    let detail = a
                        .get("challenges")
                        .and_then(Value::as_array)
                        .and_then(|cs| cs.iter().find_map(|c| c.get("error")))
                        .map(|e| format!("{} {}", e.get("type").and_then(Value::as_str).unwrap_or(""), e.get("detail").and_then(Value::as_str).unwrap_or("")))
                        .unwrap_or_else(|| format!("status {}", a.get("status").unwrap_or(&Value::Null)));
                    return Err(AcmeError::Invalid { what: format!("HTTP-01 validation of {ident}"), detail });
                }
            }
            sleep_until_next(&mut backoff, wait, deadline, &format!("the validation of {ident}"))?;
        }
    }
}

fn sleep_until_next(backoff: &mut Backoff, hint: Option<Duration>, deadline: Instant, what: &str) -> Result<(), AcmeError> {
    let d = hint.unwrap_or_else(|| backoff.next_delay());
    if Instant::now() + d > deadline {
        return Err(AcmeError::Timeout { what: what.into() });
    }
    std::thread::sleep(d);
    Ok(())
}

/// The challenge file; removed when dropped, whatever happened.
struct ChallengeFile {
    path: PathBuf,
}

impl ChallengeFile {
    fn write(webroot: &Path, token: &str, keyauth: &str) -> Result<ChallengeFile, AcmeError> {
        let dir = webroot.join(".well-known/acme-challenge");
        crate::fsutil::create_dir_all_mode(&dir, 0o755).map_err(|e| AcmeError::Local(e.to_string()))?;
        let path = dir.join(token);
        crate::fsutil::atomic_write(&path, keyauth.as_bytes(), 0o644).map_err(|e| AcmeError::Local(e.to_string()))?;
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
    let local = |e: &dyn std::fmt::Display| AcmeError::Local(format!("making the certificate key: {e}"));
    let pkey = match key_type {
        KeyType::Ecdsa => {
            let group = openssl::ec::EcGroup::from_curve_name(openssl::nid::Nid::X9_62_PRIME256V1).map_err(|e| local(&e))?;
            openssl::pkey::PKey::from_ec_key(openssl::ec::EcKey::generate(&group).map_err(|e| local(&e))?).map_err(|e| local(&e))?
        }
        KeyType::Rsa => openssl::pkey::PKey::from_rsa(openssl::rsa::Rsa::generate(2048).map_err(|e| local(&e))?).map_err(|e| local(&e))?,
    };
    let pem = String::from_utf8(pkey.private_key_to_pem_pkcs8().map_err(|e| local(&e))?).map_err(|e| local(&e))?;
    let kp = rcgen::KeyPair::from_pem(&pem).map_err(|e| local(&e))?;
    let mut params = rcgen::CertificateParams::new(vec![host.to_string()]).map_err(|e| local(&e))?;
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
    fn problem_documents_become_sentences() {
        let e = problem_of("https://ca/x", 403, br#"{"type":"urn:ietf:params:acme:error:unauthorized","detail":"no","subproblems":[{"type":"urn:x:dns","detail":"nx","identifier":{"type":"dns","value":"a.test"}}]}"#);
        let s = e.to_string();
        assert!(s.contains("403 urn:ietf:params:acme:error:unauthorized"), "{s}");
        assert!(s.contains("a.test: urn:x:dns nx"), "{s}");
        assert!(problem_of("u", 500, b"<html>").to_string().contains("HTTP 500"));
    }
}
