//! The lifecycle engine: the commands of docs/design.md carried out with the
//! decision core ([`crate::decide`]), the certbot-layout store
//! ([`crate::store`]), the ACME client ([`crate::acme`]), the Apache writer
//! ([`crate::apache`]) and the global lock ([`crate::lock`]).

pub mod facts;
mod lifecycle;
mod listing;
mod provision;
pub mod renew;

use crate::cli::{Cli, Command};
use crate::config::{Config, Overrides};
use crate::error::{Error, Result};
use crate::lock::GlobalLock;
use crate::store::Store;
use std::time::Duration;

/// What every command works with.
pub struct Ctx {
    pub cfg: Config,
    pub store: Store,
    pub json: bool,
    pub quiet: bool,
    pub lock_timeout: Duration,
}

impl Ctx {
    pub fn new(cfg: Config, json: bool, quiet: bool, lock_timeout: Duration) -> Ctx {
        let store = Store::new(cfg.letsencrypt_dir.clone());
        Ctx { cfg, store, json, quiet, lock_timeout }
    }

    /// Take the global lock, then finish or roll back what a crash interrupted.
    pub fn lock(&self, what: &str) -> Result<GlobalLock> {
        let l = GlobalLock::acquire(&self.cfg.lock_file, &self.cfg.letsencrypt_dir, self.lock_timeout, what)?;
        self.recover()?;
        Ok(l)
    }

    /// The lock for `doctor --repair`: a damaged Apache journal (which makes
    /// every other command stop) is moved aside first, and said so.
    pub fn lock_for_repair(&self) -> Result<(GlobalLock, Vec<String>)> {
        let l = GlobalLock::acquire(&self.cfg.lock_file, &self.cfg.letsencrypt_dir, self.lock_timeout, "doctor --repair")?;
        let mut did = Vec::new();
        if crate::apache::journal_damaged(&self.cfg) {
            let to = crate::apache::set_aside_journal(&self.cfg)?;
            did.push(format!(
                "the Apache journal was unreadable: moved it aside to {} (its copies cannot be matched to files; the configuration is checked below)",
                to.display()
            ));
        }
        self.recover()?;
        Ok((l, did))
    }

    /// Complete or roll back interrupted operations (call with the lock held).
    pub fn recover(&self) -> Result<()> {
        for what in self.store.recover()? {
            tracing::warn!("{what}");
        }
        crate::apache::recover(&self.cfg, &|v| lifecycle::complete(self, v))?;
        Ok(())
    }

    /// Install certbot's deploy hook (once there is a lineage), so that a
    /// renewal by certbot (Debian's certbot.timer) is tested and reloaded
    /// into Apache with this configuration's commands. The hook takes no
    /// lock: certbot holds its own while it runs hooks.
    pub fn install_certbot_hook(&self) {
        if !self.cfg.letsencrypt_dir.join("live").is_dir() {
            return;
        }
        let q = |argv: &[String]| argv.iter().map(|a| format!("'{}'", a.replace('\'', "'\\''"))).collect::<Vec<_>>().join(" ");
        let script = format!(
            "#!/bin/sh\n# Installed by site-admin: certbot runs this after it renews a certificate, so that\n# Apache serves the new one. site-admin rewrites it from its configuration.\n{} >/dev/null 2>&1 || {{ echo \"site-admin: Apache's configuration test failed; not reloading\" >&2; exit 1; }}\nexec {}\n",
            q(&self.cfg.apache.configtest),
            q(&self.cfg.apache.reload)
        );
        if let Err(e) = self.store.install_deploy_hook(&script) {
            tracing::warn!("installing certbot's deploy hook: {e}");
        }
    }

    /// One progress line on stderr (suppressed by -q).
    pub fn progress(&self, msg: &str) {
        tracing::info!("{msg}");
    }

    /// Print a JSON document on stdout.
    pub fn print_json(&self, v: &serde_json::Value) -> Result<()> {
        println!("{}", serde_json::to_string_pretty(v).map_err(|e| Error::failed(e.to_string()))?);
        Ok(())
    }
}

/// Run one command; returns the exit code.
pub fn run(cli: Cli) -> Result<i32> {
    let ov = Overrides { config_file: cli.config.clone(), acme_server: cli.acme_server.clone(), acme_ca_bundle: cli.acme_ca_bundle.clone() };
    let cfg = Config::load(&cli.root, &ov)?;
    let ctx = Ctx::new(cfg, cli.json, cli.quiet, Duration::from_secs(cli.lock_timeout));
    match cli.command {
        Command::Deploy { file, stdin, dry_run } => {
            let (text, origin) = lifecycle::read_input(file.as_deref(), stdin)?;
            lifecycle::deploy_command(&ctx, &text, &origin, dry_run)
        }
        Command::Undeploy { siteid } => lifecycle::undeploy_command(&ctx, &siteid),
        Command::Backup { siteid, all, out, notls } => listing::backup(&ctx, &siteid, all, &out, notls),
        Command::Restore { input, siteid } => lifecycle::restore_command(&ctx, &input, &siteid),
        Command::Showsite { siteid } => listing::showsite(&ctx, &siteid),
        Command::Listsites => listing::listsites(&ctx),
        Command::Certificates => listing::certificates(&ctx),
        Command::Renew { force, dry_run } => renew::renew_command(&ctx, force, dry_run),
        Command::Doctor { repair } => crate::doctor::doctor_command(&ctx, repair),
    }
}
