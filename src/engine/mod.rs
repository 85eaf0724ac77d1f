//! The lifecycle engine: the commands of docs/design.md carried out with the
//! decision cores ([`crate::decide`], [`crate::renewal`]), the certbot-layout
//! store ([`crate::store`]), the ACME client ([`crate::acme`]), the Apache
//! writer ([`crate::apache`]) and the global lock ([`crate::lock`]).
//!
//! This module only dispatches; each command lives in its own module, and
//! none of them imports this one or another command: they share [`ctx::Ctx`]
//! and the non-command modules (`facts`, `serving`, `owed`, `provision`,
//! `ari`, `fleet`, ...).

mod ari;
mod backup_doc;
mod cert_row;
mod completion;
pub(crate) mod ctx;
pub(crate) mod doctor;
pub(crate) mod facts;
pub(crate) mod fleet;
mod fleet_cmd;
mod lifecycle;
mod listing;
mod owed;
mod provision;
pub(crate) mod renew;
mod revoke;
mod serving;

use crate::cli::{Cli, Command};
use crate::config::{Config, Overrides};
use crate::error::Result;
pub use ctx::Ctx;
use std::time::Duration;

/// Run one command; returns the exit code.
pub fn run(cli: Cli) -> Result<i32> {
    // Commands that need no configuration.
    match &cli.command {
        Command::Completions { shell } => {
            use std::io::Write;
            let mut so = std::io::stdout().lock();
            so.write_all(&crate::cli::completions(*shell)).and_then(|_| so.flush()).map_err(
                |e| crate::error::Error::failed(format!("writing the completion script: {e}")),
            )?;
            return Ok(0);
        }
        Command::Help { command } => {
            let text = crate::cli::help_text(command.as_deref()).ok_or_else(|| {
                crate::error::Error::invalid(format!(
                    "help: there is no command {:?} (see site-admin --help)",
                    command.as_deref().unwrap_or("")
                ))
            })?;
            use std::io::Write;
            let _ = std::io::stdout().lock().write_all(text.as_bytes());
            return Ok(0);
        }
        _ => {}
    }
    let ov = Overrides {
        config_file: cli.config.clone(),
        acme_server: cli.acme_server.clone(),
        acme_ca_bundle: cli.acme_ca_bundle.clone(),
    };
    tracing::debug!("step: process started");
    let cfg = Config::load(&cli.root, &ov)?;
    tracing::debug!("step: config read");
    let ctx = Ctx::new(cfg, cli.json, cli.quiet, Duration::from_secs(cli.lock_timeout));
    match cli.command {
        Command::Deploy { file, stdin, dry_run } => {
            let (text, origin) = lifecycle::read_input(file.as_deref(), stdin)?;
            lifecycle::deploy_command(&ctx, &text, &origin, dry_run)
        }
        Command::Undeploy { siteid } => lifecycle::undeploy_command(&ctx, &siteid),
        Command::Backup { siteid, all, out, notls } => {
            listing::backup(&ctx, &siteid, all, &out, notls)
        }
        Command::Restore { input, siteid } => lifecycle::restore_command(&ctx, &input, &siteid),
        Command::Showsite { siteid } => listing::showsite(&ctx, &siteid),
        Command::Listsites => listing::listsites(&ctx),
        Command::Certificates => listing::certificates(&ctx),
        Command::Renew { force, dry_run } => renew::renew_command(&ctx, force, dry_run),
        Command::Revoke { siteid, reason, no_replace, serial } => {
            revoke::revoke_command(&ctx, &siteid, reason, no_replace, serial.as_deref())
        }
        Command::Doctor { repair } => doctor::doctor_command(&ctx, repair),
        Command::Sync => fleet_cmd::sync_command(&ctx),
        Command::Fleet { what: crate::cli::FleetCommand::Status } => {
            fleet_cmd::status_command(&ctx)
        }
        Command::Fleet { what: crate::cli::FleetCommand::Configured } => {
            Ok(if ctx.cfg.fleet.is_some() { 0 } else { 1 })
        }
        Command::Completions { .. } | Command::Help { .. } => Ok(0),
    }
}

/// RFC 3339 in whole seconds, as every report and listing prints times.
pub(crate) fn ts(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// `serialize_with` for a document's timestamp: [`ts`]'s one format.
pub(crate) fn ser_ts<S: serde::Serializer>(
    t: &chrono::DateTime<chrono::Utc>,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&ts(*t))
}

/// `serialize_with` for an optional timestamp (`null` when absent).
pub(crate) fn ser_ts_opt<S: serde::Serializer>(
    t: &Option<chrono::DateTime<chrono::Utc>>,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.serialize_str(&ts(*t)),
        None => s.serialize_none(),
    }
}
