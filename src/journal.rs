//! The journal of an Apache transaction (docs/design.md, invariant 5): under
//! `<state dir>/journal/apache/`, a copy of each file's previous content (or
//! link target) and `index.json` — which files, whether `configtest` has
//! decided for the new configuration, and the typed [`Completion`] that
//! finishes the operation once it has. A crash leaves it behind; the next
//! locked command rolls it back (undecided; reloading Apache when it had
//! loaded an interim step) or completes it (decided).

use crate::config::Config;
use crate::fsutil::{self, IoContext, IoError};
use crate::site::AtRest;
use std::fs;
use std::path::{Path, PathBuf};

/// What can go wrong with the journal.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JournalError {
    /// A crash's journal is still there (recover it first).
    #[error("an interrupted Apache change in {} was not recovered", .0.display())]
    NotRecovered(PathBuf),
    /// The index cannot be read: nobody knows what the copies belong to.
    #[error("recovering an interrupted Apache change: its journal {} is unreadable ({source}); `site-admin doctor --repair` moves it aside and recovers what it can", path.display())]
    Damaged { path: PathBuf, source: serde_json::Error },
    #[error("{0}")]
    Encode(serde_json::Error),
    #[error(transparent)]
    Io(#[from] IoError),
}

type Result<T, E = JournalError> = std::result::Result<T, E>;

/// One file's state before the transaction touched it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct Saved {
    pub path: PathBuf,
    /// Where its previous content is kept, or None if it did not exist.
    pub copy: Option<PathBuf>,
    pub mode: u32,
    /// It was a symlink to this target (put back as that link, not a copy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<PathBuf>,
}

/// What finishes a deploy or undeploy once Apache accepted the new
/// configuration. A decided transaction found after a crash runs it again,
/// so every step is idempotent.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Completion {
    /// Hosts whose live LKC is stashed (Apache no longer points at them).
    #[serde(default)]
    pub stash: Vec<String>,
    /// The Site JSON to store at rest (already without key material).
    #[serde(default)]
    pub store_site: Option<AtRest>,
    /// A site id whose stored Site JSON is removed (undeploy).
    #[serde(default)]
    pub remove_site: Option<String>,
    /// Directories removed (undeploy: the site's challenge webroot).
    #[serde(default)]
    pub remove_dirs: Vec<PathBuf>,
}

/// `index.json`.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct Index {
    pub saved: Vec<Saved>,
    pub decided: bool,
    pub completion: Option<Completion>,
    /// Apache was reloaded on these files before the operation was decided:
    /// an interim step (the http vhost under a site's new name that answers
    /// the challenge while it is provisioned). The operation is not done —
    /// the old name's LKC is not stashed, the new Site JSON not stored — so
    /// an undecided interim journal is rolled back: every file put back and
    /// Apache reloaded on them (the site serves its old name and certificate).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub interim: bool,
    /// What undoes the store side of the operation when it is rolled back
    /// (after the files): the LKC a deploy unstashed, imported or provisioned
    /// for a name its site did not serve before is stashed, as no deployed
    /// site uses it (a later deploy of that name takes it back, no new
    /// issuance, and `renew` does not try to validate a name nobody serves).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback: Option<Completion>,
}

/// The journal directory of this configuration.
pub(crate) fn dir(cfg: &Config) -> PathBuf {
    cfg.state_dir().join("journal/apache")
}

fn index_path(cfg: &Config) -> PathBuf {
    dir(cfg).join("index.json")
}

/// Start a journal for a new transaction. One a crash left behind must have
/// been recovered first.
pub(crate) fn start(cfg: &Config) -> Result<PathBuf> {
    let d = dir(cfg);
    if index_path(cfg).exists() {
        return Err(JournalError::NotRecovered(d));
    }
    fsutil::create_dir_all_mode(&d, 0o700)?;
    fsutil::ensure_dir_mode(&d, 0o700)?;
    Ok(d)
}

/// Write the index (atomically).
pub(crate) fn write(cfg: &Config, index: &Index) -> Result<()> {
    let data = serde_json::to_vec(index).map_err(JournalError::Encode)?;
    Ok(fsutil::atomic_write(&index_path(cfg), &data, 0o600)?)
}

/// Keep a copy of a file's previous content as the n-th saved file.
pub(crate) fn keep_copy(cfg: &Config, n: usize, data: &[u8]) -> Result<PathBuf> {
    let copy = dir(cfg).join(format!("{n}.orig"));
    fsutil::atomic_write(&copy, data, 0o600)?;
    Ok(copy)
}

/// The index a crash left behind: None when there is none (any copies
/// without an index are from a transaction that had changed nothing yet,
/// and are removed). A damaged index is an error naming the file and what
/// to do.
pub(crate) fn read(cfg: &Config) -> Result<Option<Index>> {
    let path = index_path(cfg);
    let text = match fs::read(&path) {
        Ok(t) => t,
        Err(_) => {
            if dir(cfg).is_dir() {
                finish(cfg)?;
            }
            return Ok(None);
        }
    };
    serde_json::from_slice(&text).map(Some).map_err(|source| JournalError::Damaged { path, source })
}

/// Drop the journal: the index first (without it the copies mean nothing).
pub(crate) fn finish(cfg: &Config) -> Result<()> {
    let d = dir(cfg);
    fsutil::remove_file_if_exists(&d.join("index.json"))?;
    if let Ok(rd) = fs::read_dir(&d) {
        for e in rd.filter_map(|e| e.ok()) {
            fsutil::remove_file_if_exists(&e.path())?;
        }
    }
    Ok(())
}

/// Is there an index that cannot be read?
pub(crate) fn damaged(cfg: &Config) -> bool {
    match fs::read(index_path(cfg)) {
        Ok(t) => serde_json::from_slice::<Index>(&t).is_err(),
        Err(_) => false,
    }
}

/// Move a damaged journal aside (`journal/apache.damaged-<time>`), so that
/// locked commands can run again. What it held cannot be replayed: without a
/// readable index nobody knows which file each copy belongs to.
pub(crate) fn set_aside(cfg: &Config) -> Result<PathBuf> {
    let d = dir(cfg);
    let to =
        d.with_file_name(format!("apache.damaged-{}", chrono::Utc::now().format("%Y%m%dT%H%M%SZ")));
    fsutil::rename_durable(&d, &to)?;
    Ok(to)
}

/// Put every saved file back as it was, last first.
pub(crate) fn restore(saved: &[Saved]) -> Result<()> {
    for s in saved.iter().rev() {
        match (&s.link, &s.copy) {
            (Some(target), _) => {
                fsutil::remove_file_if_exists(&s.path)?;
                std::os::unix::fs::symlink(target, &s.path).io_ctx("restoring link", &s.path)?;
            }
            (None, Some(c)) => {
                let data = fs::read(c).io_ctx("reading", c)?;
                fsutil::atomic_write(&s.path, &data, s.mode)?;
            }
            (None, None) => fsutil::remove_file_if_exists(&s.path)?,
        }
    }
    Ok(())
}

/// A path's state before a transaction touches it.
pub(crate) enum Previous {
    Link(PathBuf),
    File { data: Vec<u8>, mode: u32 },
    Missing,
}

/// What is at `path` now, for [`Saved`].
pub(crate) fn previous(path: &Path) -> Result<Previous> {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(target) = fs::read_link(path) {
        return Ok(Previous::Link(target));
    }
    match fs::read(path) {
        Ok(data) => {
            let mode = fs::metadata(path).io_ctx("reading", path)?.permissions().mode() & 0o7777;
            Ok(Previous::File { data, mode })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Previous::Missing),
        Err(e) => Err(e).io_ctx("reading", path)?,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_old_untyped_completion_still_reads() {
        // What earlier versions journaled: the same shape, as JSON.
        let old = r#"{"saved":[],"decided":true,"completion":{"stash":["a.test"],"store_site":null,"remove_site":"s1","remove_dirs":[]}}"#;
        let i: Index = serde_json::from_str(old).unwrap();
        let c = i.completion.unwrap();
        assert_eq!(c.stash, vec!["a.test".to_string()]);
        assert_eq!(c.remove_site.as_deref(), Some("s1"));
        assert!(!i.interim && i.rollback.is_none());
    }

    #[test]
    fn an_interim_journal_keeps_its_rollback() {
        let i = Index {
            interim: true,
            rollback: Some(Completion { stash: vec!["a2.test".into()], ..Default::default() }),
            ..Default::default()
        };
        let back: Index = serde_json::from_slice(&serde_json::to_vec(&i).unwrap()).unwrap();
        assert!(back.interim && !back.decided);
        assert_eq!(back.rollback.unwrap().stash, vec!["a2.test".to_string()]);
    }
}
