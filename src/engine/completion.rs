//! Carrying out a journaled [`Completion`] once Apache accepted the new
//! configuration (or again, after a crash): stash, store or remove the Site
//! JSON, remove directories. Every step is idempotent.

use crate::config::Config;
use crate::error::{Error, Result};
use crate::fsutil;
use crate::journal::Completion;
use crate::site::AtRest;
use crate::store::{Place, Store};

/// Run a completion.
pub(super) fn run(cfg: &Config, store: &Store, c: &Completion) -> Result<()> {
    for host in &c.stash {
        if store.has(host, Place::Live) {
            tracing::info!("{host}: stashing the certificate (kept for a later redeploy)");
            store.stash(host)?;
            crate::fault::point("complete.stashed");
        }
    }
    if let Some(site) = &c.store_site {
        write_stored(cfg, site)?;
        crate::fault::point("complete.stored");
    }
    if let Some(id) = &c.remove_site {
        fsutil::remove_file_if_exists(&cfg.stored_site(id))?;
    }
    for d in &c.remove_dirs {
        fsutil::remove_dir_all_if_exists(d)?;
    }
    Ok(())
}

/// Store the Site JSON at rest: mode 0600, never with keys or certificates.
pub(super) fn write_stored(cfg: &Config, site: &AtRest) -> Result<()> {
    fsutil::create_dir_all_mode(&cfg.sites_dir, 0o700)?;
    let text = serde_json::to_string_pretty(site).map_err(|e| Error::failed(e.to_string()))? + "\n";
    Ok(fsutil::atomic_write(&cfg.stored_site(&site.siteid), text.as_bytes(), 0o600)?)
}
