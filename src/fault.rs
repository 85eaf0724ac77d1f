//! Deterministic fault injection for crash-safety tests.
//!
//! `SITE_ADMIN_FAULT=<step>` aborts the process (as a `kill -9` would, no
//! unwinding, no cleanup) the first time it reaches that step;
//! `SITE_ADMIN_FAULT=<step>#<n>` the n-th time. `SITE_ADMIN_FAULT_TRACE=<file>`
//! appends the name of every step reached, so a test can enumerate the steps
//! of an operation and then interrupt each in turn. Unset (always, in
//! production), a step costs one check of a cached value.

use std::io::Write;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

struct Setting {
    step: Option<(String, u32)>,
    trace: Option<std::path::PathBuf>,
}

static SETTING: OnceLock<Setting> = OnceLock::new();
static HITS: AtomicU32 = AtomicU32::new(0);

fn setting() -> &'static Setting {
    SETTING.get_or_init(|| {
        let step = std::env::var("SITE_ADMIN_FAULT").ok().filter(|s| !s.is_empty()).map(|s| match s.rsplit_once('#') {
            Some((name, n)) => (name.to_string(), n.parse().unwrap_or(1)),
            None => (s, 1),
        });
        let trace = std::env::var_os("SITE_ADMIN_FAULT_TRACE").map(Into::into);
        Setting { step, trace }
    })
}

/// A named step: abort here if `SITE_ADMIN_FAULT` names it.
pub fn point(step: &str) {
    let s = setting();
    if let Some(path) = &s.trace {
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
            let _ = writeln!(f, "{step}");
        }
    }
    if let Some((name, n)) = &s.step {
        if name == step && HITS.fetch_add(1, Ordering::SeqCst) + 1 == *n {
            eprintln!("site-admin: fault injected at {step}: aborting");
            std::process::abort();
        }
    }
}
