//! Hooks run after `renew` (docs/design.md, "When a lineage renews"): each executable in `hooks_dir` (byte
//! order) with `SITE_ADMIN_EVENT=renew`, `RENEWED_DOMAINS`, `FAILED_DOMAINS`
//! and the JSON report on stdin; and certbot's `renewal-hooks/deploy/*` once
//! per renewed lineage with `RENEWED_LINEAGE` and `RENEWED_DOMAINS`. A hook
//! that fails or overruns its time limit is reported, never fatal.

use serde::Serialize;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// How long one hook may run before it is killed.
pub(crate) const HOOK_TIME_LIMIT: Duration = Duration::from_secs(60);

/// How long, once a hook has exited (or was killed), its output is still
/// read: a background process it started may hold the pipes open for good,
/// and must not hold up the command (and its lock) with them.
pub(crate) const OUTPUT_GRACE: Duration = Duration::from_secs(1);

/// What one hook run came to.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct HookRun {
    pub hook: String,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Executable regular files in `dir`, in byte order, skipping `*~` and dot files.
pub(crate) fn executables(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| {
                    let name =
                        p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                    !name.ends_with('~')
                        && !name.starts_with('.')
                        && std::fs::metadata(p)
                            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                            .unwrap_or(false)
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort_by(|a, b| a.as_os_str().as_encoded_bytes().cmp(b.as_os_str().as_encoded_bytes()));
    v
}

/// Run one hook with `env` and `stdin`, within `limit`.
pub(crate) fn run_hook(
    path: &Path,
    env: &[(&str, String)],
    stdin: &[u8],
    limit: Duration,
) -> HookRun {
    let hook = path.display().to_string();
    let mut child = match spawn(path, env) {
        Ok(c) => c,
        Err(e) => return HookRun { hook, ok: false, error: Some(format!("cannot run: {e}")) },
    };
    if let Some(mut si) = child.stdin.take() {
        let data = stdin.to_vec();
        // A hook that does not read its stdin must not block us.
        std::thread::spawn(move || {
            let _ = si.write_all(&data);
        });
    }
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let output = Output::forward(&mut child, &name);
    let status = wait_within(&mut child, limit);
    output.drain(&name);
    match status {
        Some(s) if s.success() => HookRun { hook, ok: true, error: None },
        Some(s) => HookRun { hook, ok: false, error: Some(format!("exited with {s}")) },
        None => HookRun {
            hook,
            ok: false,
            error: Some(format!("killed after the time limit of {} s", limit.as_secs())),
        },
    }
}

/// Start the hook in its own process group, so that on timeout its children
/// die with it (and release the output pipes we read).
fn spawn(path: &Path, env: &[(&str, String)]) -> std::io::Result<std::process::Child> {
    let mut cmd = Command::new(path);
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    cmd.envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
}

/// Wait for the hook's exit; past `limit` its process group is killed
/// (None: killed, or its status could not be read).
fn wait_within(child: &mut std::process::Child, limit: Duration) -> Option<ExitStatus> {
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(s)) => return Some(s),
            Ok(None) if start.elapsed() > limit => {
                if let Some(pgid) = rustix::process::Pid::from_raw(child.id() as i32) {
                    let _ =
                        rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
                }
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(_) => return None,
        }
    }
}

/// The readers forwarding the hook's stdout and stderr to the log.
struct Output {
    /// Tells the readers to forward nothing more.
    stop: Arc<AtomicBool>,
    /// Each reader says here when it reached EOF.
    done: mpsc::Receiver<()>,
}

impl Output {
    fn forward(child: &mut std::process::Child, name: &str) -> Output {
        let out = child.stdout.take();
        let err = child.stderr.take();
        let stop = Arc::new(AtomicBool::new(false));
        let (done_tx, done) = mpsc::channel::<()>();
        for r in [
            out.map(|o| Box::new(o) as Box<dyn Read + Send>),
            err.map(|e| Box::new(e) as Box<dyn Read + Send>),
        ] {
            let (name, stop, done) = (name.to_string(), stop.clone(), done_tx.clone());
            std::thread::spawn(move || {
                forward(r, &name, &stop);
                let _ = done.send(());
            });
        }
        Output { stop, done }
    }

    /// Once the hook has exited, the readers get OUTPUT_GRACE to reach EOF;
    /// then they are left behind (a background child of the hook keeps the
    /// pipes open, maybe for good) and forward nothing more.
    fn drain(self, name: &str) {
        let grace_end = Instant::now() + OUTPUT_GRACE;
        let mut open = 2;
        while open > 0 {
            let left = grace_end.saturating_duration_since(Instant::now());
            match self.done.recv_timeout(left) {
                Ok(()) => open -= 1,
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    self.stop.store(true, Ordering::Relaxed);
                    tracing::warn!("hook {name}: it left a background process holding its output open; no longer reading it");
                    break;
                }
            }
        }
    }
}

fn forward(r: Option<Box<dyn Read + Send>>, name: &str, stop: &AtomicBool) {
    if let Some(r) = r {
        use std::io::BufRead;
        for line in std::io::BufReader::new(r).lines().map_while(|l| l.ok()) {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            tracing::info!("hook {name}: {line}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    #[test]
    fn order_env_stdin_failure_and_time_limit() {
        let t = tempfile::tempdir().unwrap();
        let out = t.path().join("out");
        script(t.path(), "b", &format!("echo \"b $RENEWED_DOMAINS $(cat)\" >> {}", out.display()));
        script(t.path(), "a", &format!("echo a >> {}; exit 3", out.display()));
        script(t.path(), "c~", "exit 0");
        std::fs::write(t.path().join("d"), "not executable").unwrap();
        let hooks = executables(t.path());
        assert_eq!(
            hooks.iter().map(|p| p.file_name().unwrap().to_str().unwrap()).collect::<Vec<_>>(),
            vec!["a", "b"]
        );
        let runs: Vec<HookRun> = hooks
            .iter()
            .map(|h| {
                run_hook(
                    h,
                    &[("RENEWED_DOMAINS", "x.test y.test".into())],
                    b"{\"r\":1}",
                    HOOK_TIME_LIMIT,
                )
            })
            .collect();
        assert!(
            !runs[0].ok && runs[0].error.as_deref() == Some("exited with exit status: 3"),
            "{runs:?}"
        );
        assert!(runs[1].ok);
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "a\nb x.test y.test {\"r\":1}\n");
        let slow = script(t.path(), "slow", "sleep 30");
        let r = run_hook(&slow, &[], b"", Duration::from_millis(300));
        assert!(!r.ok && r.error.unwrap().contains("time limit"));
    }

    #[test]
    fn a_background_child_holding_the_output_does_not_hold_us() {
        let t = tempfile::tempdir().unwrap();
        let pid = t.path().join("pid");
        let h = script(t.path(), "daemon", &format!("sleep 30 &\necho $! > {}", pid.display()));
        let start = Instant::now();
        let r = run_hook(&h, &[], b"", HOOK_TIME_LIMIT);
        let took = start.elapsed();
        if let Some(p) = std::fs::read_to_string(&pid)
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .and_then(rustix::process::Pid::from_raw)
        {
            let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
        }
        assert!(r.ok, "{r:?}");
        assert!(took < OUTPUT_GRACE + Duration::from_secs(2), "{took:?}");
    }
}
