//! The shape both small state files share (`<state dir>/backoff.json`,
//! [`crate::backoff_file`]; `<state dir>/revocations.json`,
//! [`crate::revocations`]): JSON read whole, written atomically with mode
//! 0600 in a state directory created 0755. What a missing or damaged file
//! means is each file's own rule.

use crate::fsutil::{self, IoError};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::path::Path;

/// Why a state file could not be read.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The file is not there: an empty state.
    Missing,
    /// It could not be read.
    Io(std::io::Error),
    /// It is not the JSON of its state.
    Damaged(serde_json::Error),
}

/// Read and parse the state file `path`.
pub(crate) fn read<T: DeserializeOwned>(path: &Path) -> std::result::Result<T, ReadError> {
    let b = std::fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => ReadError::Missing,
        _ => ReadError::Io(e),
    })?;
    serde_json::from_slice(&b).map_err(ReadError::Damaged)
}

/// Why a state file could not be written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    #[error("{0}")]
    Encode(serde_json::Error),
    #[error(transparent)]
    Io(#[from] IoError),
}

/// Write `state` as the file `name` of `state_dir`: the directory created
/// (0755) if need be, the file replaced atomically with mode 0600.
pub(crate) fn write<T: Serialize>(
    state_dir: &Path,
    name: &str,
    state: &T,
) -> Result<(), WriteError> {
    fsutil::create_dir_all_mode(state_dir, 0o755)?;
    let data = serde_json::to_vec_pretty(state).map_err(WriteError::Encode)?;
    Ok(fsutil::atomic_write(&state_dir.join(name), &data, 0o600)?)
}
