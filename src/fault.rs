//! Deterministic fault injection for crash-safety tests.
//!
//! `SITE_ADMIN_FAULT=<step>` aborts the process (as a `kill -9` would, no
//! unwinding, no cleanup) the first time it reaches that step;
//! `SITE_ADMIN_FAULT=<step>#<n>` the n-th time. `SITE_ADMIN_FAULT_TRACE=<file>`
//! appends the name of every step reached, so a test can enumerate the steps
//! of an operation and then interrupt each in turn.
//! `SITE_ADMIN_FAULT_PAUSE=<step>:<file>` pauses at that step while `<file>`
//! exists (at most two minutes), so a test can look at a command half-way
//! through its change. Unset (always, in production), a step costs one check
//! of a cached value.

use std::io::Write;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

struct Setting {
    step: Option<(String, u32)>,
    trace: Option<std::path::PathBuf>,
    pause: Option<(String, std::path::PathBuf)>,
}

static SETTING: OnceLock<Setting> = OnceLock::new();
static HITS: AtomicU32 = AtomicU32::new(0);

fn setting() -> &'static Setting {
    SETTING.get_or_init(|| {
        let step =
            std::env::var("SITE_ADMIN_FAULT").ok().filter(|s| !s.is_empty()).map(|s| {
                match s.rsplit_once('#') {
                    Some((name, n)) => (name.to_string(), n.parse().unwrap_or(1)),
                    None => (s, 1),
                }
            });
        let trace = std::env::var_os("SITE_ADMIN_FAULT_TRACE").map(Into::into);
        let pause = std::env::var("SITE_ADMIN_FAULT_PAUSE")
            .ok()
            .and_then(|s| s.split_once(':').map(|(a, b)| (a.to_string(), b.into())));
        Setting { step, trace, pause }
    })
}

/// A named step: abort here if `SITE_ADMIN_FAULT` names it.
pub(crate) fn point(step: &str) {
    let s = setting();
    if let Some(path) = &s.trace {
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
            let _ = writeln!(f, "{step}");
        }
    }
    if let Some((name, file)) = &s.pause {
        let start = std::time::Instant::now();
        while name == step && file.exists() && start.elapsed() < std::time::Duration::from_secs(120)
        {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
    if let Some((name, n)) = &s.step {
        if name == step && HITS.fetch_add(1, Ordering::SeqCst) + 1 == *n {
            eprintln!("site-admin: fault injected at {step}: aborting");
            std::process::abort();
        }
    }
}
