//! The error a command ends with, and the one place its exit kind is chosen.
//!
//! The design (docs/design.md, after the exit codes):
//! - Each layer below the commands has its own typed error and knows nothing
//!   of exit codes: [`crate::fsutil::IoError`] (an I/O error with its verb and
//!   path), [`crate::lock::LockError`], [`crate::config::ConfigError`],
//!   [`crate::store::StoreError`], [`crate::store::accounts::AccountsError`],
//!   [`crate::journal::JournalError`], [`crate::revocations::RevocationsError`],
//!   [`crate::backoff_file::BackoffFileError`], [`crate::apache::ApacheError`],
//!   [`crate::acme::AcmeError`], [`crate::site::SiteError`].
//! - A command ends with [`Error`]: one typed variant per layer (a `?` wraps
//!   the layer's error as it is, via `From`), plus [`Error::Invalid`] and
//!   [`Error::Failed`] for what the command itself decides.
//! - [`Error::kind`] maps every variant, and the variants of the layers'
//!   errors where they differ, to an [`ExitKind`]: this is the only place an
//!   exit kind is chosen. `main.rs` alone turns the kind into the process
//!   exit code (0 success, 1 failed, 2 invalid input, 3 the global lock) and
//!   the `--json` error object.
//! - Messages are the layers' own `Display`; [`Error::context`] prefixes one
//!   (`backup x site #2: ...`) and keeps the kind.

use crate::acme::AcmeError;
use crate::apache::ApacheError;
use crate::backoff_file::BackoffFileError;
use crate::config::ConfigError;
use crate::fsutil::IoError;
use crate::journal::JournalError;
use crate::lock::LockError;
use crate::revocations::RevocationsError;
use crate::site::SiteError;
use crate::store::accounts::AccountsError;
use crate::store::StoreError;
use std::fmt;

pub use crate::fsutil::IoContext;

/// What the caller should do about an error, as the exit code says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitKind {
    /// The operation could not be carried out. Exit 1.
    Failed,
    /// The input (Site JSON, backup, config file, flag) is wrong. Exit 2.
    Invalid,
    /// The global lock was not had within `--lock-timeout`. Exit 3.
    Lock,
}

impl ExitKind {
    /// The process exit code (docs/design.md).
    pub fn code(self) -> i32 {
        match self {
            ExitKind::Failed => 1,
            ExitKind::Invalid => 2,
            ExitKind::Lock => 3,
        }
    }
    /// The kind, as the `--json` error object names it.
    pub fn name(self) -> &'static str {
        match self {
            ExitKind::Failed => "failed",
            ExitKind::Invalid => "invalid",
            ExitKind::Lock => "lock",
        }
    }
}

/// The error a command ends with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The command found its input wrong.
    #[error("{0}")]
    Invalid(String),
    /// The command could not carry the operation out.
    #[error("{0}")]
    Failed(String),
    #[error(transparent)]
    Io(#[from] IoError),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Accounts(#[from] AccountsError),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(transparent)]
    Revocations(#[from] RevocationsError),
    #[error(transparent)]
    Backoff(#[from] BackoffFileError),
    #[error(transparent)]
    Apache(#[from] ApacheError),
    #[error(transparent)]
    Acme(#[from] AcmeError),
    /// A Site JSON (a file, a backup's entry) breaks a rule.
    #[error(transparent)]
    Site(#[from] SiteError),
    /// Another error, with what was being done.
    #[error("{context}: {source}")]
    Context { context: String, source: Box<Error> },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn invalid(msg: impl fmt::Display) -> Self {
        Error::Invalid(msg.to_string())
    }
    pub fn failed(msg: impl fmt::Display) -> Self {
        Error::Failed(msg.to_string())
    }

    /// The exit kind: the one mapping from what went wrong to what the exit
    /// code says about it.
    pub fn kind(&self) -> ExitKind {
        match self {
            Error::Invalid(_) | Error::Site(_) => ExitKind::Invalid,
            Error::Lock(LockError::Held { .. } | LockError::CertbotHolds { .. }) => ExitKind::Lock,
            // A lock directory others can write is a configuration to fix.
            Error::Lock(LockError::SharedDir { .. }) => ExitKind::Invalid,
            Error::Config(ConfigError::CurrentDir(_)) => ExitKind::Failed,
            Error::Config(_) => ExitKind::Invalid,
            // A server URL or account id that cannot name a directory.
            Error::Accounts(AccountsError::Server { .. } | AccountsError::Id { .. }) => {
                ExitKind::Invalid
            }
            Error::Context { source, .. } => source.kind(),
            Error::Failed(_)
            | Error::Io(_)
            | Error::Lock(_)
            | Error::Store(_)
            | Error::Accounts(_)
            | Error::Journal(_)
            | Error::Revocations(_)
            | Error::Backoff(_)
            | Error::Apache(_)
            | Error::Acme(_) => ExitKind::Failed,
        }
    }

    /// The process exit code for this error.
    pub fn exit_code(&self) -> i32 {
        self.kind().code()
    }

    /// Prefix the message with more context, keeping the kind.
    pub fn context(self, ctx: impl fmt::Display) -> Self {
        Error::Context { context: ctx.to_string(), source: Box::new(self) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn the_kind_is_chosen_from_the_layer_error_and_kept_through_context() {
        let io = || IoError {
            what: "writing",
            path: PathBuf::from("/x"),
            source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        };
        let held = LockError::Held { file: "/l".into(), holder: "pid 1".into(), secs: 2 };
        let cases: Vec<(Error, ExitKind)> = vec![
            (held.into(), ExitKind::Lock),
            (LockError::CertbotHolds { file: "/c".into(), secs: 2 }.into(), ExitKind::Lock),
            (LockError::SharedDir { dir: "/tmp".into() }.into(), ExitKind::Invalid),
            (LockError::Io(io()).into(), ExitKind::Failed),
            (ConfigError::NoRoot("/r".into()).into(), ExitKind::Invalid),
            (ConfigError::CurrentDir(std::io::ErrorKind::NotFound.into()).into(), ExitKind::Failed),
            (
                AccountsError::Server {
                    server: "ftp://x".into(),
                    why: crate::store::accounts::ServerUrlError::NotHttp,
                }
                .into(),
                ExitKind::Invalid,
            ),
            (AccountsError::Io(io()).into(), ExitKind::Failed),
            (io().into(), ExitKind::Failed),
            (StoreError::Io(io()).into(), ExitKind::Failed),
            (crate::site::SiteError::NotObject.into(), ExitKind::Invalid),
            (Error::invalid("bad"), ExitKind::Invalid),
            (Error::failed("no"), ExitKind::Failed),
        ];
        for (e, kind) in cases {
            let msg = e.to_string();
            assert_eq!(e.kind(), kind, "{msg}");
            let e = e.context("backup /b site #2");
            assert_eq!(e.kind(), kind, "context keeps the kind: {msg}");
            assert_eq!(e.to_string(), format!("backup /b site #2: {msg}"));
        }
        assert_eq!(
            [ExitKind::Failed, ExitKind::Invalid, ExitKind::Lock].map(|k| (k.code(), k.name())),
            [(1, "failed"), (2, "invalid"), (3, "lock")]
        );
        let e: Error = io().into();
        assert_eq!(e.to_string(), "writing /x: permission denied");
    }
}
