//! The global lock (docs/design.md, invariant 6): an exclusive `flock` on
//! `lock_file` plus certbot's own POSIX record lock (`fcntl`) on
//! `<letsencrypt_dir>/.certbot.lock`, so site-admin and certbot exclude each
//! other. Waits up to the timeout, says once who holds it, then gives up
//! with exit 3.
//!
//! Other users must not be able to block or redirect it: the lock file is
//! 0600 and owned by whoever runs site-admin (so nobody else can open it,
//! and `flock` needs an open descriptor), it is opened with `O_NOFOLLOW` (a
//! planted symlink is refused, never followed), and its directory must not
//! be writable by other users (the default is `run/site-admin/`, not the
//! world-writable `run/lock/`).

use crate::fsutil::{self, IoContext, IoError};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Why the global lock was not had. Which of these is a lock timeout
/// (exit 3) is the command layer's choice ([`crate::error::Error::kind`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LockError {
    /// Another process held the lock for the whole timeout.
    #[error("the global lock {} is held by {holder}; gave up after {secs} s (--lock-timeout)", file.display())]
    Held { file: PathBuf, holder: String, secs: u64 },
    /// A running certbot held its lock for the whole timeout.
    #[error("certbot holds its lock {}; gave up after {secs} s (--lock-timeout)", file.display())]
    CertbotHolds { file: PathBuf, secs: u64 },
    /// The lock file's directory can be written by other users.
    #[error("lock_file: its directory {} can be written by other users, who could then block or redirect site-admin; use a directory only root can write (the default is run/site-admin/)", dir.display())]
    SharedDir { dir: PathBuf },
    #[error("the lock file {} is a symlink; refusing to follow it (remove it: site-admin creates its own)", .0.display())]
    Symlink(PathBuf),
    #[error("opening the lock file {}: {source}", path.display())]
    Open { path: PathBuf, source: std::io::Error },
    #[error("the lock file {} is not a regular file; remove it", .0.display())]
    NotRegular(PathBuf),
    #[error("the lock file {} belongs to uid {uid}, not to this user (uid {me}); another user may be trying to block site-admin: remove it", path.display())]
    Foreign { path: PathBuf, uid: u32, me: u32 },
    #[error(transparent)]
    Io(#[from] IoError),
}

type Result<T, E = LockError> = std::result::Result<T, E>;

/// Both locks, released on drop.
pub struct GlobalLock {
    file: File,
    certbot: Option<(File, PathBuf)>,
}

/// Who holds the lock, as its holder wrote it into the file.
fn holder(lock_file: &Path) -> String {
    let mut text = String::new();
    let _ = File::open(lock_file).and_then(|mut f| f.read_to_string(&mut text));
    match text.trim() {
        "" => "another process".to_string(),
        t => t.to_string(),
    }
}

/// Try certbot's lock: `fcntl(F_SETLK, F_WRLCK)` on the whole file (a POSIX
/// record lock, as Python's `fcntl.lockf` takes it).
fn try_fcntl(f: &File) -> std::io::Result<bool> {
    use rustix::fs::{fcntl_lock, FlockOperation};
    match fcntl_lock(f, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(true),
        Err(e) if e == rustix::io::Errno::AGAIN || e == rustix::io::Errno::ACCESS => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Open (creating) a lock file: never through a symlink, only a regular
/// file of ours, made 0600 so no other user can open it to hold the lock.
fn open_private(path: &Path) -> Result<File> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(
            (rustix::fs::OFlags::NOFOLLOW
                | rustix::fs::OFlags::CLOEXEC
                | rustix::fs::OFlags::NONBLOCK)
                .bits() as i32,
        )
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) {
                LockError::Symlink(path.to_path_buf())
            } else {
                LockError::Open { path: path.to_path_buf(), source: e }
            }
        })?;
    let md = f.metadata().io_ctx("reading", path)?;
    if !md.is_file() {
        return Err(LockError::NotRegular(path.to_path_buf()));
    }
    let me = rustix::process::geteuid().as_raw();
    if md.uid() != me {
        return Err(LockError::Foreign { path: path.to_path_buf(), uid: md.uid(), me });
    }
    if md.mode() & 0o7777 != 0o600 {
        f.set_permissions(std::fs::Permissions::from_mode(0o600))
            .io_ctx("setting mode of", path)?;
    }
    Ok(f)
}

/// The lock's directory must not let other users replace the lock file.
fn check_private_dir(dir: &Path) -> Result<()> {
    let md = std::fs::metadata(dir).io_ctx("reading", dir)?;
    let me = rustix::process::geteuid().as_raw();
    if md.mode() & 0o022 != 0 || (md.uid() != me && md.uid() != 0) {
        return Err(LockError::SharedDir { dir: dir.to_path_buf() });
    }
    Ok(())
}

/// One attempt at certbot's lock, as certbot itself does it: open (0600),
/// lock, then check the path still names the locked file.
fn try_certbot_lock(path: &Path) -> Result<Option<File>> {
    let f = open_private(path)?;
    if !try_fcntl(&f).io_ctx("locking", path)? {
        return Ok(None);
    }
    let same = match (f.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
        _ => false,
    };
    Ok(if same { Some(f) } else { None })
}

impl GlobalLock {
    /// Take both locks within `timeout`. `what` (the command) is written
    /// into the lock file so a waiter can say who holds it.
    pub fn acquire(
        lock_file: &Path,
        letsencrypt_dir: &Path,
        timeout: Duration,
        what: &str,
    ) -> Result<GlobalLock> {
        let deadline = Instant::now() + timeout;
        if let Some(p) = lock_file.parent() {
            fsutil::create_dir_all_mode(p, 0o755)?;
            check_private_dir(p)?;
        }
        let mut file = open_private(lock_file)?;
        let mut told = false;
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(std::fs::TryLockError::Error(e)) => {
                    return Err(e).io_ctx("locking", lock_file)?
                }
                Err(_) if Instant::now() < deadline => {
                    if !told {
                        tracing::info!(
                            "waiting for the global lock {} (held by {})",
                            lock_file.display(),
                            holder(lock_file)
                        );
                        told = true;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(_) => {
                    return Err(LockError::Held {
                        file: lock_file.to_path_buf(),
                        holder: holder(lock_file),
                        secs: timeout.as_secs(),
                    });
                }
            }
        }
        let _ = file.set_len(0);
        let _ = file.rewind();
        let _ = writeln!(file, "pid {} ({})", std::process::id(), what);
        let _ = file.sync_all();

        fsutil::create_dir_all_mode(letsencrypt_dir, 0o755)?;
        let cb = letsencrypt_dir.join(".certbot.lock");
        let mut told = false;
        let certbot = loop {
            if let Some(f) = try_certbot_lock(&cb)? {
                break f;
            }
            if Instant::now() >= deadline {
                return Err(LockError::CertbotHolds { file: cb, secs: timeout.as_secs() });
            }
            if !told {
                tracing::info!(
                    "waiting for a running certbot to finish (it holds {})",
                    cb.display()
                );
                told = true;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        Ok(GlobalLock { file, certbot: Some((certbot, cb)) })
    }
}

impl Drop for GlobalLock {
    fn drop(&mut self) {
        if let Some((f, path)) = self.certbot.take() {
            // As certbot does: remove the file, then close (which unlocks).
            let _ = std::fs::remove_file(&path);
            drop(f);
        }
        let _ = self.file.set_len(0);
        let _ = self.file.unlock();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_taker_times_out_with_exit_3() {
        let t = tempfile::tempdir().unwrap();
        let lf = t.path().join("run/site-admin/site-admin.lock");
        let le = t.path().join("le");
        let held = GlobalLock::acquire(&lf, &le, Duration::from_secs(1), "test holder").unwrap();
        // flock locks are per open file description: a second open in this process conflicts.
        let e = GlobalLock::acquire(&lf, &le, Duration::from_millis(200), "second").err().unwrap();
        assert!(e.to_string().contains("test holder"), "{e}");
        assert!(matches!(e, LockError::Held { .. }), "{e:?}");
        assert_eq!(crate::error::Error::from(e).exit_code(), 3);
        drop(held);
        let again = GlobalLock::acquire(&lf, &le, Duration::from_millis(200), "third");
        assert!(again.is_ok());
    }
}
