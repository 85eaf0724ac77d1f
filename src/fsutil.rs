//! Crash-safe file system primitives: every file is written to a temporary
//! name, fsynced and renamed over its target; every symlink is swapped by
//! renaming a new link over the old one; directories are fsynced after.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// An I/O error with what was being done and to which path:
/// `writing /x/y: Permission denied`. The file-system layer's error; the
/// layers above wrap it in their own.
#[derive(Debug, thiserror::Error)]
#[error("{what} {}: {source}", path.display())]
pub struct IoError {
    pub what: &'static str,
    pub path: PathBuf,
    pub source: std::io::Error,
}

pub(crate) type Result<T, E = IoError> = std::result::Result<T, E>;

/// Attach a path and a verb to an I/O error ([`IoError`]).
pub trait IoContext<T> {
    fn io_ctx(self, what: &'static str, path: &Path) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn io_ctx(self, what: &'static str, path: &Path) -> Result<T> {
        self.map_err(|source| IoError { what, path: path.to_path_buf(), source })
    }
}

/// Why [`resolve_guarded`] would not resolve a path.
#[derive(Debug, thiserror::Error)]
pub(crate) enum GuardError {
    #[error("{}: too many levels of symbolic links", .0.display())]
    Loop(PathBuf),
    /// A link another user planted where others can write.
    #[error("{} is a symlink owned by uid {uid} in {}, a directory other users can write; it is not followed (give the file itself)", link.display(), dir.display())]
    Foreign { link: PathBuf, uid: u32, dir: PathBuf },
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
}

/// Why [`user_output_target`] refuses a path; the caller names the flag.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OutputError {
    #[error(transparent)]
    Guard(#[from] GuardError),
    #[error("{0}")]
    Io(std::io::Error),
    #[error("is a symlink to {0}; give a regular file, or - for standard output")]
    LinkTo(&'static str),
    #[error("is a symlink that points nowhere; give a regular file, or - for standard output")]
    Dangling,
    #[error("is {0}; give a regular file, or - for standard output")]
    NotRegular(&'static str),
}

/// A temporary name next to `path`, unique in this process and across
/// processes, and not guessable: it ends in 64 random bits, so another user
/// cannot pre-create it in a shared directory (`backup --out /tmp/...`) and
/// make the write fail. It does not repeat the target's name, so it fits in
/// NAME_MAX whenever the target does (a 250-character hostname's `<host>.conf`).
pub(crate) fn temp_sibling(path: &Path) -> PathBuf {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    path.with_file_name(format!("{TEMP_PREFIX}{}-{n}-{:016x}", std::process::id(), random_u64()))
}

/// 64 unpredictable bits: from the system's CSPRNG (ring's, which, unlike
/// OpenSSL's, initializes nothing), else SipHash under the standard
/// library's random per-process keys.
fn random_u64() -> u64 {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 8];
    if ring::rand::SystemRandom::new().fill(&mut b).is_ok() {
        return u64::from_ne_bytes(b);
    }
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    h.finish()
}

/// The kernel's `fs.protected_symlinks` rule, applied by site-admin itself
/// (the sysctl may be off): a symlink in a directory that users other than
/// the caller (`euid`) and root can write — group- or world-writable, or
/// owned by another user — is followed only if the caller owns it, or the
/// directory's owner does and that owner is root or the caller.
pub(crate) fn link_may_be_followed(dir_mode: u32, dir_uid: u32, link_uid: u32, euid: u32) -> bool {
    let shared = dir_mode & 0o022 != 0 || (dir_uid != euid && dir_uid != 0);
    !shared || link_uid == euid || (link_uid == dir_uid && (dir_uid == 0 || dir_uid == euid))
}

/// Resolve every symlink in the absolute `path` the way the kernel would,
/// but refuse (naming it) a link that [`link_may_be_followed`] forbids.
/// Components that do not exist are kept as written.
pub(crate) fn resolve_guarded(path: &Path) -> Result<PathBuf, GuardError> {
    use std::os::unix::fs::MetadataExt;
    use std::path::Component;
    let euid = rustix::process::geteuid().as_raw();
    let mut todo: Vec<std::ffi::OsString> = Vec::new();
    let push = |todo: &mut Vec<std::ffi::OsString>, p: &Path| {
        for c in p.components().rev() {
            match c {
                Component::Normal(n) => todo.push(n.to_os_string()),
                Component::ParentDir => todo.push("..".into()),
                Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            }
        }
    };
    push(&mut todo, path);
    let mut cur = PathBuf::from("/");
    let mut hops = 0;
    while let Some(c) = todo.pop() {
        if c == ".." {
            cur.pop();
            continue;
        }
        let next = cur.join(&c);
        match fs::symlink_metadata(&next) {
            Ok(md) if md.file_type().is_symlink() => {
                hops += 1;
                if hops > 40 {
                    return Err(GuardError::Loop(next));
                }
                let dir = fs::metadata(&cur)
                    .map_err(|source| GuardError::Io { path: cur.clone(), source })?;
                if !link_may_be_followed(dir.mode(), dir.uid(), md.uid(), euid) {
                    return Err(GuardError::Foreign { link: next, uid: md.uid(), dir: cur });
                }
                let target = fs::read_link(&next)
                    .map_err(|source| GuardError::Io { path: next.clone(), source })?;
                if target.is_absolute() {
                    cur = PathBuf::from("/");
                }
                push(&mut todo, &target);
            }
            _ => cur = next,
        }
    }
    Ok(cur)
}

/// Every temporary name [`temp_sibling`] makes starts with this.
pub(crate) const TEMP_PREFIX: &str = ".site-admin-tmp-";

/// The most any input file (Site JSON, backup, config, CA bundle) may hold.
pub(crate) const INPUT_LIMIT: u64 = 64 * 1024 * 1024;

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
pub(crate) fn read_limited(r: impl std::io::Read) -> Result<String, InputError> {
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
pub(crate) fn read_user_file(path: &Path) -> Result<String, InputError> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(path)
        .map_err(InputError::Io)?;
    let md = f.metadata().map_err(InputError::Io)?;
    if !md.is_file() {
        return Err(InputError::NotRegular(kind_of(&md.file_type())));
    }
    if md.len() > INPUT_LIMIT {
        return Err(InputError::TooLarge);
    }
    read_limited(f)
}

/// Where to write a file the user named (`backup --out`, an absolute path):
/// the path itself when nothing is there or a regular file is; the file a
/// symlink points at when that is an existing regular file (the link is
/// kept). Anything else (a device, FIFO, directory, dangling link or a link
/// to one of those) is refused, so a private key never lands where it was
/// not asked to go; so is a link, anywhere on the path, that another user
/// planted in a directory others can write ([`resolve_guarded`]).
pub(crate) fn user_output_target(path: &Path) -> Result<PathBuf, OutputError> {
    let resolved = resolve_guarded(path)?;
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(resolved),
        Err(e) => Err(OutputError::Io(e)),
        Ok(md) if md.is_file() => Ok(resolved),
        Ok(md) if md.file_type().is_symlink() => match fs::metadata(&resolved) {
            Ok(t) if t.is_file() => Ok(resolved),
            Ok(t) => Err(OutputError::LinkTo(kind_of(&t.file_type()))),
            Err(_) => Err(OutputError::Dangling),
        },
        Ok(md) => Err(OutputError::NotRegular(kind_of(&md.file_type()))),
    }
}

/// fsync a directory so that a rename or create inside it is durable.
pub(crate) fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|f| f.sync_all()).io_ctx("syncing directory", dir)
}

/// Write `data` to `path` atomically with `mode`: temp file, fsync, rename, fsync dir.
/// Never writes through an existing symlink: the rename replaces the link itself.
pub(crate) fn atomic_write(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = temp_sibling(path);
    let res = (|| {
        // O_EXCL: never through a link or into a file someone else made.
        let mut tries = 0;
        let mut f = loop {
            match OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp) {
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && tries < 3 => {
                    tries += 1;
                    tmp = temp_sibling(path);
                }
                r => break r.io_ctx("creating", &tmp)?,
            }
        };
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
pub(crate) fn create_dir_all_mode(dir: &Path, mode: u32) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        if !parent.as_os_str().is_empty() {
            create_dir_all_mode(parent, mode.max(0o700))?;
        }
    }
    match fs::create_dir(dir) {
        Ok(()) => fs::set_permissions(dir, fs::Permissions::from_mode(mode))
            .io_ctx("setting mode of", dir),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) => Err(e).io_ctx("creating directory", dir),
    }
}

/// Make `dir` exist with exactly `mode` (creating it if needed).
pub(crate) fn ensure_dir_mode(dir: &Path, mode: u32) -> Result<()> {
    create_dir_all_mode(dir, mode)?;
    let cur = fs::metadata(dir).io_ctx("reading", dir)?.permissions().mode() & 0o7777;
    if cur != mode {
        fs::set_permissions(dir, fs::Permissions::from_mode(mode))
            .io_ctx("setting mode of", dir)?;
    }
    Ok(())
}

/// Rename `from` to `to` and fsync both parents.
pub(crate) fn rename_durable(from: &Path, to: &Path) -> Result<()> {
    fs::rename(from, to).io_ctx("moving", from)?;
    if let Some(p) = to.parent() {
        fsync_dir(p)?;
    }
    if let Some(p) = from.parent() {
        fsync_dir(p)?;
    }
    Ok(())
}

/// Remove a file if it exists.
pub(crate) fn remove_file_if_exists(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).io_ctx("removing", path),
    }
}

/// Remove a directory tree if it exists.
pub(crate) fn remove_dir_all_if_exists(path: &Path) -> Result<()> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).io_ctx("removing", path),
    }
}

/// Does anything (file, dir, or dangling link) exist at `path`?
pub(crate) fn exists_nofollow(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok()
}

/// A path from the config: relative paths (and every default) are taken
/// under the root; an absolute path in the config file stays as written.
pub(crate) fn under(root: &Path, p: &str) -> PathBuf {
    let path = Path::new(p);
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        root.join(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_names_are_not_guessable() {
        let p = Path::new("/tmp/backup.json");
        let (a, b) = (temp_sibling(p), temp_sibling(p));
        let name = a.file_name().unwrap().to_str().unwrap().to_string();
        let guessable = format!("{TEMP_PREFIX}{}-", std::process::id());
        let rest = name.strip_prefix(&guessable).unwrap();
        // pid and counter, then 16 random hex digits: not `<pid>-<n>` alone.
        let (_, random) = rest.split_once('-').expect("a random part after the counter");
        assert_eq!(random.len(), 16, "{name}");
        assert!(random.bytes().all(|c| c.is_ascii_hexdigit()), "{name}");
        let other =
            b.file_name().unwrap().to_str().unwrap().rsplit('-').next().unwrap().to_string();
        assert_ne!(random, other, "two names share their random part");
    }

    #[test]
    fn links_in_shared_directories_follow_the_protected_symlinks_rule() {
        let (root, me, other) = (0, 1000, 65534);
        // A private directory (the caller's or root's): any link is followed.
        assert!(link_may_be_followed(0o755, me, other, me));
        assert!(link_may_be_followed(0o700, root, other, root));
        // /tmp (root, sticky, world-writable): the caller's own links and root's.
        assert!(!link_may_be_followed(0o41777, root, other, root));
        assert!(link_may_be_followed(0o41777, root, root, root));
        assert!(link_may_be_followed(0o41777, root, me, me));
        assert!(link_may_be_followed(0o41777, root, root, me));
        // Group-writable and world-writable without the sticky bit count too.
        assert!(!link_may_be_followed(0o775, root, other, root));
        assert!(!link_may_be_followed(0o777, me, other, me));
        // Another user's directory: only the caller's own links, not its owner's.
        assert!(!link_may_be_followed(0o755, other, other, root));
        assert!(link_may_be_followed(0o755, other, root, root));
    }

    #[test]
    fn resolve_guarded_refuses_a_foreign_link_in_a_shared_directory() {
        let t = tempfile::tempdir().unwrap();
        let shared = t.path().join("shared");
        fs::create_dir(&shared).unwrap();
        fs::set_permissions(&shared, fs::Permissions::from_mode(0o1777)).unwrap();
        let victim = t.path().join("victim");
        fs::write(&victim, "x").unwrap();
        let link = shared.join("out.json");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        let canon = fs::canonicalize(t.path()).unwrap();
        assert_eq!(
            resolve_guarded(&link).unwrap(),
            canon.join("victim"),
            "the caller's own link is followed"
        );
        assert_eq!(resolve_guarded(&shared.join("sub/../out.json")).unwrap(), canon.join("victim"));
        if rustix::process::geteuid().is_root() {
            std::os::unix::fs::lchown(&link, Some(65534), Some(65534)).unwrap();
            let e = resolve_guarded(&link).unwrap_err().to_string();
            assert!(e.contains("owned by uid 65534") && e.contains("not followed"), "{e}");
            // A foreign link to a directory on the way is refused as well.
            let dirlink = shared.join("d");
            std::os::unix::fs::symlink(t.path(), &dirlink).unwrap();
            std::os::unix::fs::lchown(&dirlink, Some(65534), Some(65534)).unwrap();
            assert!(resolve_guarded(&dirlink.join("new.json"))
                .unwrap_err()
                .to_string()
                .contains("not followed"));
        }
    }
}
