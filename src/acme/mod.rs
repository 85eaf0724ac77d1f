//! The embedded ACME client ([RFC 8555]) on blocking reqwest and openssl.
//!
//! - [`jws`]: account keys, JWK, thumbprints, ES256/RS256 signatures.
//! - [`retry`]: `Retry-After` and backoff.
//! - [`types`]: orders, authorizations, challenges and problems, typed.
//! - [`client`]: directory, nonces, account, order, HTTP-01, finalize, download, revocation.
//!
//! [RFC 8555]: https://www.rfc-editor.org/rfc/rfc8555

pub mod client;
pub mod jws;
pub mod retry;
pub mod types;

pub use client::{AcmeClient, ClientOptions, Eab, Gate, Issued, OrderOptions, RenewalInfo};
pub use jws::{AccountKey, JwsError};
pub use types::{Problem, ProblemKind};

use std::fmt;
use std::time::Duration;

/// What went wrong talking to the CA. Every variant reads as one sentence;
/// a problem document stays typed, so the engine can tell a rate limit from
/// a validation failure from a forgotten account from a dead CA.
#[derive(Debug, Clone)]
pub enum AcmeError {
    /// The server could not be reached (connection refused, DNS, TLS).
    Connect { url: String, detail: String },
    /// The server answered with a problem document ([RFC 8555 §6.7]).
    ///
    /// [RFC 8555 §6.7]: https://www.rfc-editor.org/rfc/rfc8555#section-6.7
    Problem { url: String, status: u16, problem: Problem },
    /// The server answered something we cannot use.
    Protocol { url: String, detail: String },
    /// An authorization or order ended invalid.
    Invalid { what: String, detail: String },
    /// The issuance's deadline passed, or the CA asked (`Retry-After`) to
    /// wait beyond it.
    Deadline { what: String, asked: Option<Duration>, deadline: Duration },
    /// Local trouble (key generation, writing the challenge file).
    Local(String),
    /// The account key could not make a JWK or a signature.
    Jws(JwsError),
}

impl AcmeError {
    /// The problem type, when the CA answered with a problem document.
    pub fn kind(&self) -> Option<ProblemKind> {
        match self {
            AcmeError::Problem { problem, .. } => Some(ProblemKind::of(&problem.ptype)),
            _ => None,
        }
    }

    /// Does the CA no longer know the account (forgotten, or deactivated)?
    pub fn account_gone(&self) -> bool {
        match self {
            AcmeError::Problem { problem, .. } => match ProblemKind::of(&problem.ptype) {
                ProblemKind::AccountDoesNotExist => true,
                ProblemKind::Unauthorized => problem.detail.to_lowercase().contains("deactivated"),
                _ => false,
            },
            _ => false,
        }
    }
}

impl fmt::Display for AcmeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AcmeError::Connect { url, detail } => write!(f, "cannot reach the ACME server at {url}: {detail}"),
            AcmeError::Problem { url, status, problem } => {
                write!(f, "the ACME server refused (HTTP {status}, {problem}) at {url}")?;
                if ProblemKind::of(&problem.ptype) == ProblemKind::ExternalAccountRequired {
                    write!(f, "; this CA requires External Account Binding: set acme_eab {{\"kid\", \"hmac_key\"}} in the config, from the CA's account page")?;
                }
                Ok(())
            }
            AcmeError::Protocol { url, detail } => write!(f, "unexpected answer from the ACME server at {url}: {detail}"),
            AcmeError::Invalid { what, detail } => write!(f, "{what} failed: {detail}"),
            AcmeError::Deadline { what, asked: Some(w), deadline } => write!(
                f,
                "gave up on {what}: the CA asked to retry in {} s (Retry-After), past this issuance's deadline of {} s",
                w.as_secs(),
                deadline.as_secs()
            ),
            AcmeError::Deadline { what, asked: None, deadline } => write!(f, "gave up waiting for {what}: the deadline of {} s passed", deadline.as_secs()),
            AcmeError::Local(d) => f.write_str(d),
            AcmeError::Jws(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for AcmeError {}

impl From<JwsError> for AcmeError {
    fn from(e: JwsError) -> Self {
        AcmeError::Jws(e)
    }
}
