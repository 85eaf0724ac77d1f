//! The error the commands end with, and its mapping to the exit codes of
//! docs/design.md: 0 success, 1 operation failed, 2 usage or invalid input,
//! 3 the global lock could not be had.

use std::fmt;
use std::path::Path;

/// Everything that can go wrong, sorted by what the caller should do about it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The input (Site JSON, backup, config file, flag) is wrong. Exit 2.
    #[error("{0}")]
    Invalid(String),
    /// The operation could not be carried out. Exit 1.
    #[error("{0}")]
    Failed(String),
    /// The global lock was not had within `--lock-timeout`. Exit 3.
    #[error("{0}")]
    Lock(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn invalid(msg: impl fmt::Display) -> Self {
        Error::Invalid(msg.to_string())
    }
    pub fn failed(msg: impl fmt::Display) -> Self {
        Error::Failed(msg.to_string())
    }
    /// The process exit code (docs/design.md) for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Failed(_) => 1,
            Error::Invalid(_) => 2,
            Error::Lock(_) => 3,
        }
    }
    /// The kind, as the `--json` error object names it.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Error::Failed(_) => "failed",
            Error::Invalid(_) => "invalid",
            Error::Lock(_) => "lock",
        }
    }
    /// Prefix the message with more context, keeping the kind.
    pub fn context(self, ctx: impl fmt::Display) -> Self {
        match self {
            Error::Invalid(m) => Error::Invalid(format!("{ctx}: {m}")),
            Error::Failed(m) => Error::Failed(format!("{ctx}: {m}")),
            Error::Lock(m) => Error::Lock(format!("{ctx}: {m}")),
        }
    }
}

/// Attach a path and a verb to an I/O error: `writing /x/y: Permission denied`.
pub trait IoContext<T> {
    fn io_ctx(self, what: &str, path: &Path) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn io_ctx(self, what: &str, path: &Path) -> Result<T> {
        self.map_err(|e| Error::Failed(format!("{what} {}: {e}", path.display())))
    }
}
