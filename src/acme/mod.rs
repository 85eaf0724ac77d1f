//! The embedded ACME client ([RFC 8555]) on blocking reqwest and openssl.
//!
//! - [`jws`]: account keys, JWK, thumbprints, ES256/RS256 signatures.
//! - [`retry`]: `Retry-After` and backoff.
//! - [`client`]: directory, nonces, account, order, HTTP-01, finalize, download.
//!
//! [RFC 8555]: https://www.rfc-editor.org/rfc/rfc8555

pub mod client;
pub mod jws;
pub mod retry;

pub use client::{AcmeClient, ClientOptions, Issued};
pub use jws::AccountKey;

use std::fmt;

/// What went wrong talking to the CA. Every variant reads as one sentence.
#[derive(Debug, Clone)]
pub enum AcmeError {
    /// The server could not be reached (connection refused, DNS, TLS).
    Connect { url: String, detail: String },
    /// The server answered with a problem document ([RFC 8555 §6.7]).
    ///
    /// [RFC 8555 §6.7]: https://www.rfc-editor.org/rfc/rfc8555#section-6.7
    Problem { url: String, status: u16, ptype: String, detail: String, subproblems: Vec<String> },
    /// The server answered something we cannot use.
    Protocol { url: String, detail: String },
    /// An authorization or order ended invalid.
    Invalid { what: String, detail: String },
    /// The overall deadline passed.
    Timeout { what: String },
    /// Local trouble (key generation, writing the challenge file).
    Local(String),
}

impl fmt::Display for AcmeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AcmeError::Connect { url, detail } => write!(f, "cannot reach the ACME server at {url}: {detail}"),
            AcmeError::Problem { url, status, ptype, detail, subproblems } => {
                write!(f, "the ACME server refused ({status} {ptype}): {detail}")?;
                if !subproblems.is_empty() {
                    write!(f, " [{}]", subproblems.join("; "))?;
                }
                write!(f, " (at {url})")
            }
            AcmeError::Protocol { url, detail } => write!(f, "unexpected answer from the ACME server at {url}: {detail}"),
            AcmeError::Invalid { what, detail } => write!(f, "{what} failed: {detail}"),
            AcmeError::Timeout { what } => write!(f, "gave up waiting for {what}: the deadline passed"),
            AcmeError::Local(d) => f.write_str(d),
        }
    }
}

impl std::error::Error for AcmeError {}

impl From<AcmeError> for crate::error::Error {
    fn from(e: AcmeError) -> Self {
        crate::error::Error::Failed(e.to_string())
    }
}
