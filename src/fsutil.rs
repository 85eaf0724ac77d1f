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

/// A temporary name next to `path`, unique in this process and across
/// processes. It does not repeat the target's name, so it fits in NAME_MAX
/// whenever the target does (a 250-character hostname's `<host>.conf`).
pub fn temp_sibling(path: &Path) -> PathBuf {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    path.with_file_name(format!("{TEMP_PREFIX}{}-{n}", std::process::id()))
}

/// Every temporary name [`temp_sibling`] makes starts with this.
pub const TEMP_PREFIX: &str = ".site-admin-tmp-";

/// The most any input file (Site JSON, backup, config, CA bundle) may hold.
pub const INPUT_LIMIT: u64 = 64 * 1024 * 1024;

/// Why a user-named input could not be read; the caller names the flag.
#[derive(Debug)]
pub enum InputError {
    /// Not a regular file (a device, FIFO, directory, socket).
    NotRegular(&'static str),
    TooLarge,
    NotUtf8,
    Io(std::io::Error),
}

impl std::fmt::Display for InputError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InputError::NotRegular(what) => write!(f, "is {what}, not a regular file"),
            InputError::TooLarge => write!(f, "is larger than {} MiB", INPUT_LIMIT / (1024 * 1024)),
            InputError::NotUtf8 => write!(f, "is not UTF-8 text"),
            InputError::Io(e) => write!(f, "{e}"),
        }
    }
}

fn kind_of(ft: &fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_dir() {
        "a directory"
    } else if ft.is_char_device() {
        "a character device"
    } else if ft.is_block_device() {
        "a block device"
    } else if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

/// Read at most [`INPUT_LIMIT`] bytes of text from `r`.
pub fn read_limited(r: impl std::io::Read) -> Result<String, InputError> {
    use std::io::Read;
    let mut buf = Vec::new();
    r.take(INPUT_LIMIT + 1).read_to_end(&mut buf).map_err(InputError::Io)?;
    if buf.len() as u64 > INPUT_LIMIT {
        return Err(InputError::TooLarge);
    }
    String::from_utf8(buf).map_err(|_| InputError::NotUtf8)
}

/// Read a file the user named: a regular file (a symlink to one is fine),
/// never a device or FIFO (which could block or never end), at most
/// [`INPUT_LIMIT`] bytes.
pub fn read_user_file(path: &Path) -> Result<String, InputError> {
    let f = OpenOptions::new().read(true).custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32).open(path).map_err(InputError::Io)?;
    let md = f.metadata().map_err(InputError::Io)?;
    if !md.is_file() {
        return Err(InputError::NotRegular(kind_of(&md.file_type())));
    }
    if md.len() > INPUT_LIMIT {
        return Err(InputError::TooLarge);
    }
    read_limited(f)
}

/// Where to write a file the user named (`backup --out`): the path itself
/// when nothing is there or a regular file is; the file a symlink points at
/// when that is an existing regular file (the link is kept). Anything else
/// (a device, FIFO, directory, dangling link or a link to one of those) is
/// refused, so a private key never lands where it was not asked to go.
pub fn user_output_target(path: &Path) -> Result<PathBuf, String> {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(path.to_path_buf()),
        Err(e) => Err(e.to_string()),
        Ok(md) if md.is_file() => Ok(path.to_path_buf()),
        Ok(md) if md.file_type().is_symlink() => match fs::metadata(path) {
            Ok(t) if t.is_file() => fs::canonicalize(path).map_err(|e| e.to_string()),
            Ok(t) => Err(format!("is a symlink to {}; give a regular file, or - for standard output", kind_of(&t.file_type()))),
            Err(_) => Err("is a symlink that points nowhere; give a regular file, or - for standard output".into()),
        },
        Ok(md) => Err(format!("is {}; give a regular file, or - for standard output", kind_of(&md.file_type()))),
    }
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
