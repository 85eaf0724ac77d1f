//! Crash-safe file system primitives: every file is written to a temporary
//! name, fsynced and renamed over its target; every symlink is swapped by
//! renaming a new link over the old one; directories are fsynced after.

use crate::error::{IoContext, Result};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A temporary name next to `path`, unique in this process and across processes.
pub fn temp_sibling(path: &Path) -> PathBuf {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = path.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}-{n}", std::process::id()))
}

/// fsync a directory so that a rename or create inside it is durable.
pub fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|f| f.sync_all()).io_ctx("syncing directory", dir)
}

/// Write `data` to `path` atomically with `mode`: temp file, fsync, rename, fsync dir.
/// Never writes through an existing symlink: the rename replaces the link itself.
pub fn atomic_write(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = temp_sibling(path);
    let res = (|| {
        let mut f = OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp).io_ctx("creating", &tmp)?;
        // The umask may have cleared bits of `mode`; set them exactly.
        f.set_permissions(fs::Permissions::from_mode(mode)).io_ctx("setting mode of", &tmp)?;
        f.write_all(data).io_ctx("writing", &tmp)?;
        f.sync_all().io_ctx("syncing", &tmp)?;
        drop(f);
        crate::fault::point("atomic_write.before_rename");
        fs::rename(&tmp, path).io_ctx("renaming into place", path)
    })();
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res?;
    fsync_dir(dir)
}

/// Create `dir` and its missing parents; the directories this call creates get `mode`.
pub fn create_dir_all_mode(dir: &Path, mode: u32) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        if !parent.as_os_str().is_empty() {
            create_dir_all_mode(parent, mode.max(0o700))?;
        }
    }
    match fs::create_dir(dir) {
        Ok(()) => fs::set_permissions(dir, fs::Permissions::from_mode(mode)).io_ctx("setting mode of", dir),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) => Err(e).io_ctx("creating directory", dir),
    }
}

/// Make `dir` exist with exactly `mode` (creating it if needed).
pub fn ensure_dir_mode(dir: &Path, mode: u32) -> Result<()> {
    create_dir_all_mode(dir, mode)?;
    let cur = fs::metadata(dir).io_ctx("reading", dir)?.permissions().mode() & 0o7777;
    if cur != mode {
        fs::set_permissions(dir, fs::Permissions::from_mode(mode)).io_ctx("setting mode of", dir)?;
    }
    Ok(())
}

/// Point the symlink `link` at `target` atomically: a new link at a temporary
/// name is renamed over the old one, so `link` always resolves to something.
pub fn swap_symlink(target: &Path, link: &Path) -> Result<()> {
    let tmp = temp_sibling(link);
    std::os::unix::fs::symlink(target, &tmp).io_ctx("creating link", &tmp)?;
    if let Err(e) = fs::rename(&tmp, link).io_ctx("renaming link into place", link) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(())
}

/// Rename `from` to `to` and fsync both parents.
pub fn rename_durable(from: &Path, to: &Path) -> Result<()> {
    fs::rename(from, to).io_ctx("moving", from)?;
    if let Some(p) = to.parent() {
        fsync_dir(p)?;
    }
    if let Some(p) = from.parent() {
        fsync_dir(p)?;
    }
    Ok(())
}

/// Read a file to a string, naming it in the error.
pub fn read_string(path: &Path) -> Result<String> {
    fs::read_to_string(path).io_ctx("reading", path)
}

/// Remove a file if it exists.
pub fn remove_file_if_exists(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).io_ctx("removing", path),
    }
}

/// Remove a directory tree if it exists.
pub fn remove_dir_all_if_exists(path: &Path) -> Result<()> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).io_ctx("removing", path),
    }
}

/// Does anything (file, dir, or dangling link) exist at `path`?
pub fn exists_nofollow(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok()
}
