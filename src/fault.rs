//! Deterministic fault injection for crash-safety tests.
//!
//! When the environment variable `SITE_ADMIN_FAULT` names a step (for example
//! `store.version_written`), the process aborts the moment it reaches that
//! step, as a `kill -9` would. Unset (always, in production), it costs one
//! cached environment read.

use std::sync::OnceLock;

static FAULT: OnceLock<Option<String>> = OnceLock::new();

/// Abort the process here if `SITE_ADMIN_FAULT` names this step.
pub fn point(step: &str) {
    let f = FAULT.get_or_init(|| std::env::var("SITE_ADMIN_FAULT").ok().filter(|s| !s.is_empty()));
    if let Some(name) = f {
        if name == step {
            eprintln!("site-admin: fault injected at {step}: aborting");
            std::process::abort();
        }
    }
}
