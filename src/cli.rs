//! The command line of docs/design.md: pure argument parsing (clap derive, every
//! global flag also from its environment variable), kept apart from the
//! environment-bound setup in `main.rs` and the work in the engine.

use crate::site::SiteId;
use clap::{ArgAction, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(name = "site-admin", version, about = "Keeps the TLS certificates of the web sites on this device, from deploy to renewal.")]
pub struct Cli {
    /// Prefix of every default path (runs unprivileged in a temporary directory).
    #[arg(long, env = "SITE_ADMIN_ROOT", default_value = "/", global = true)]
    pub root: PathBuf,
    /// Config file [default: <root>/etc/site-admin/config.json].
    #[arg(long, env = "SITE_ADMIN_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// ACME directory URL (overrides the config's acme_server).
    #[arg(long, env = "SITE_ADMIN_ACME_SERVER", global = true)]
    pub acme_server: Option<String>,
    /// Extra PEM roots to trust for the ACME server's TLS.
    #[arg(long, env = "SITE_ADMIN_ACME_CA_BUNDLE", global = true)]
    pub acme_ca_bundle: Option<PathBuf>,
    /// Seconds to wait for the global lock before giving up (exit 3).
    #[arg(long, env = "SITE_ADMIN_LOCK_TIMEOUT", default_value_t = 300, global = true)]
    pub lock_timeout: u64,
    /// More log output (-v, -vv).
    #[arg(short, long, action = ArgAction::Count, global = true, conflicts_with = "quiet")]
    pub verbose: u8,
    /// Only warnings and errors on stderr.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Print one JSON document on stdout.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Deploy or redeploy one site.
    Deploy {
        /// The Site JSON file.
        #[arg(long, conflicts_with = "stdin", required_unless_present = "stdin")]
        file: Option<PathBuf>,
        /// Read the Site JSON from standard input.
        #[arg(long)]
        stdin: bool,
        /// Change nothing; print which key and certificate would be served and why.
        #[arg(long)]
        dry_run: bool,
    },
    /// Remove a site (its Let's Encrypt certificate is stashed).
    Undeploy {
        #[arg(long)]
        siteid: SiteId,
    },
    /// Write deployed sites, with their TLS material, to a backup file.
    Backup {
        #[arg(long, num_args = 1.., required_unless_present = "all", conflicts_with = "all")]
        siteid: Vec<SiteId>,
        #[arg(long)]
        all: bool,
        #[arg(long)]
        out: PathBuf,
        /// Leave keys and certificates out.
        #[arg(long)]
        notls: bool,
    },
    /// Deploy the sites of a backup (all, or the named ones).
    Restore {
        #[arg(long = "in")]
        input: PathBuf,
        #[arg(long, num_args = 1..)]
        siteid: Vec<SiteId>,
    },
    /// One deployed Site JSON, with its TLS material.
    Showsite {
        #[arg(long)]
        siteid: SiteId,
    },
    /// All deployed Site JSONs.
    Listsites,
    /// Live, stashed, own (OKC) and pending certificates.
    Certificates,
    /// Renew what is due, retry pending sites, run hooks (the timer's entry point).
    Renew {
        /// Renew every live lineage, due or not.
        #[arg(long)]
        force: bool,
        /// Only report what would be done.
        #[arg(long)]
        dry_run: bool,
    },
    /// Revoke a site's live Let's Encrypt certificate (a replacement is served first).
    Revoke {
        /// The site whose certificate is revoked.
        #[arg(long)]
        siteid: SiteId,
        /// RFC 5280 reason: unspecified, keyCompromise, superseded, cessationOfOperation.
        #[arg(long, default_value = "superseded")]
        reason: String,
        /// Revoke without a replacement: the site is served on plain http until renew provisions one.
        #[arg(long)]
        no_replace: bool,
    },
    /// Check (and with --repair mend) every invariant.
    Doctor {
        #[arg(long)]
        repair: bool,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn flags_anywhere() {
        let c = Cli::try_parse_from(["site-admin", "deploy", "--file", "x.json", "--root", "/r", "--json", "--dry-run"]).unwrap();
        assert_eq!(c.root, PathBuf::from("/r"));
        assert!(c.json);
        assert!(matches!(c.command, Command::Deploy { dry_run: true, .. }));
    }

    #[test]
    fn deploy_needs_a_source() {
        assert!(Cli::try_parse_from(["site-admin", "deploy"]).is_err());
        assert!(Cli::try_parse_from(["site-admin", "deploy", "--file", "a", "--stdin"]).is_err());
    }

    #[test]
    fn backup_siteids() {
        let (a, b) = ("s".to_string() + &"a".repeat(40), "s".to_string() + &"b".repeat(40));
        let c = Cli::try_parse_from(["site-admin", "backup", "--siteid", &a, &b, "--out", "f"]).unwrap();
        match c.command {
            Command::Backup { siteid, all, .. } => {
                assert_eq!(siteid, vec![SiteId::parse(&a).unwrap(), SiteId::parse(&b).unwrap()]);
                assert!(!all);
            }
            _ => panic!(),
        }
        assert!(Cli::try_parse_from(["site-admin", "backup", "--out", "f"]).is_err());
        let e = Cli::try_parse_from(["site-admin", "undeploy", "--siteid", "../etc"]).unwrap_err();
        assert!(e.to_string().contains("not a site id"), "{e}");
    }
}
