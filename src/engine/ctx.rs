//! What every command works with: the configuration, the store, the output
//! flags, and the global lock — taken together with the recovery of what a
//! crash interrupted, so a locked command always starts from a whole state.

use super::completion;
use crate::apache::{self, Recovered};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::lock::GlobalLock;
use crate::store::Store;
use std::time::Duration;

pub struct Ctx {
    pub cfg: Config,
    pub store: Store,
    pub json: bool,
    pub quiet: bool,
    pub lock_timeout: Duration,
    /// One ACME connection (and directory) per server for the whole run.
    acme: std::sync::Mutex<
        std::collections::BTreeMap<String, std::sync::Arc<crate::acme::AcmeClient>>,
    >,
    /// The fleet's client, set up on first use (fleet mode only).
    fleet: std::sync::OnceLock<std::sync::Arc<super::fleet::Fleet>>,
}

/// The global lock, held, with interrupted operations recovered: the
/// [`Recovered`] proof is what Apache transactions begin with.
pub struct Locked {
    pub recovered: Recovered,
    _lock: GlobalLock,
}

impl Ctx {
    pub fn new(cfg: Config, json: bool, quiet: bool, lock_timeout: Duration) -> Ctx {
        let store = Store::new(cfg.letsencrypt_dir.clone());
        Ctx {
            cfg,
            store,
            json,
            quiet,
            lock_timeout,
            acme: Default::default(),
            fleet: Default::default(),
        }
    }

    /// The fleet, when one is configured (its key and credentials read on
    /// first use: a file that cannot be used is an error, exit 2).
    pub fn fleet(&self) -> Result<Option<std::sync::Arc<super::fleet::Fleet>>> {
        let Some(fc) = &self.cfg.fleet else { return Ok(None) };
        if let Some(f) = self.fleet.get() {
            return Ok(Some(f.clone()));
        }
        let f = std::sync::Arc::new(super::fleet::Fleet::open(fc)?);
        Ok(Some(self.fleet.get_or_init(|| f).clone()))
    }

    /// A client of `server` for `key` (`kid`: its account URL when known),
    /// sharing the run's one connection to that server and its directory,
    /// which the first call makes.
    pub fn acme_client(
        &self,
        server: &str,
        key: crate::acme::AccountKey,
        kid: Option<String>,
    ) -> Result<crate::acme::AcmeClient> {
        let mut m =
            self.acme.lock().map_err(|_| Error::failed("internal: ACME client cache lock"))?;
        if let Some(base) = m.get(server) {
            return Ok(base.with_account(key, kid));
        }
        let c =
            crate::acme::AcmeClient::connect(super::provision::options(self, server), key, kid)?;
        let base = std::sync::Arc::new(c.with_account(c.key().clone(), None));
        m.insert(server.to_string(), base);
        Ok(c)
    }

    /// Take the global lock, then finish or roll back what a crash interrupted.
    pub fn lock(&self, what: &str) -> Result<Locked> {
        let l = GlobalLock::acquire(
            &self.cfg.lock_file,
            &self.cfg.letsencrypt_dir,
            self.lock_timeout,
            what,
        )?;
        let recovered = self.recover(&l)?;
        Ok(Locked { recovered, _lock: l })
    }

    /// The lock for `doctor --repair`: a damaged Apache journal (which makes
    /// every other command stop) is moved aside first, and said so.
    pub fn lock_for_repair(&self) -> Result<(Locked, Vec<String>)> {
        let l = GlobalLock::acquire(
            &self.cfg.lock_file,
            &self.cfg.letsencrypt_dir,
            self.lock_timeout,
            "doctor --repair",
        )?;
        let mut did = Vec::new();
        if crate::journal::damaged(&self.cfg) {
            let to = crate::journal::set_aside(&self.cfg)?;
            did.push(format!(
                "the Apache journal was unreadable: moved it aside to {} (its copies cannot be matched to files; the configuration is checked below)",
                to.display()
            ));
        }
        let recovered = self.recover(&l)?;
        Ok((Locked { recovered, _lock: l }, did))
    }

    /// Complete or roll back interrupted operations (the lock is held).
    fn recover(&self, lock: &GlobalLock) -> Result<Recovered> {
        for what in self.store.recover()? {
            tracing::warn!("{what}");
        }
        let (recovered, _) =
            apache::recover(&self.cfg, lock, &|c| completion::run(&self.cfg, &self.store, c))?;
        Ok(recovered)
    }

    /// Install certbot's deploy hook (once there is a lineage), so that a
    /// renewal by certbot (Debian's certbot.timer) is tested and reloaded
    /// into Apache with this configuration's commands. The hook takes no
    /// lock: certbot holds its own while it runs hooks.
    pub fn install_certbot_hook(&self) {
        if !self.store.has_lineages() {
            return;
        }
        let q = |argv: &[String]| {
            argv.iter()
                .map(|a| format!("'{}'", a.replace('\'', "'\\''")))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let script = format!(
            "#!/bin/sh\n# Installed by site-admin: certbot runs this after it renews a certificate, so that\n# Apache serves the new one. site-admin rewrites it from its configuration.\n{} >/dev/null 2>&1 || {{ echo \"site-admin: Apache's configuration test failed; not reloading\" >&2; exit 1; }}\nexec {}\n",
            q(&self.cfg.apache.configtest),
            q(&self.cfg.apache.reload)
        );
        if let Err(e) = self.store.install_deploy_hook(&script) {
            tracing::warn!("installing certbot's deploy hook: {e}");
        }
    }

    /// What every hook learns about the site-admin that runs it, so it can
    /// ask it more (`SITE_ADMIN_BIN --root $SITE_ADMIN_ROOT --json certificates`).
    pub fn hook_env(&self) -> Vec<(&'static str, String)> {
        let mut v = vec![("SITE_ADMIN_ROOT", self.cfg.root.display().to_string())];
        if let Some(c) = &self.cfg.config_file {
            v.push(("SITE_ADMIN_CONFIG", c.display().to_string()));
        }
        if let Ok(exe) = std::env::current_exe() {
            v.push(("SITE_ADMIN_BIN", exe.display().to_string()));
        }
        v
    }

    /// One progress line on stderr (suppressed by -q).
    pub fn progress(&self, msg: &str) {
        tracing::info!("{msg}");
    }

    /// Print a JSON document on stdout (a typed document, serialized once).
    pub fn print_json(&self, v: &impl serde::Serialize) -> Result<()> {
        println!("{}", serde_json::to_string_pretty(v).map_err(|e| Error::failed(e.to_string()))?);
        Ok(())
    }
}

/// The account this device orders with for `server`: in fleet mode the
/// fleet's (as the last sync installed it), else the first stored one.
pub(crate) fn stored_account(
    ctx: &Ctx,
    server: &str,
) -> Result<Option<crate::store::accounts::StoredAccount>> {
    if let Some(id) = super::fleet::fleet_account(ctx, server) {
        if let Some(a) = crate::store::accounts::load_id(&ctx.cfg.letsencrypt_dir, server, &id)? {
            return Ok(Some(a));
        }
    }
    Ok(crate::store::accounts::load(&ctx.cfg.letsencrypt_dir, server)?)
}
