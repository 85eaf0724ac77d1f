//! The command line of docs/design.md: pure argument parsing (clap derive, every
//! global flag also from its environment variable), kept apart from the
//! environment-bound setup in `main.rs` and the work in the engine.

use crate::site::SiteId;
use clap::{ArgAction, Parser, Subcommand};
use std::path::PathBuf;

const EXIT_CODES: &str = "\
Exit codes:
  0  success (a deploy that fell back to http because the CA could not issue is a success: it says why, and renew retries)
  1  the operation failed
  2  usage or invalid input (nothing was changed)
  3  the global lock could not be had within --lock-timeout

The contract: docs/design.md. Every global option also reads its environment variable.";

#[derive(Debug, Parser)]
#[command(
    name = "site-admin",
    version,
    about = "Keeps the TLS certificates of the web sites on this device, from deploy to renewal.",
    long_about = "Keeps the TLS certificates of the web sites on this device right through each site's life: deploy, \
redeploy, undeploy, backup, restore, migration to another device, and timed renewal. Let's Encrypt material \
lives in certbot's layout; Apache gets one virtual-host file per site.",
    after_help = EXIT_CODES,
    disable_help_subcommand = true
)]
pub struct Cli {
    /// Prefix of every default path (runs unprivileged in a temporary directory).
    #[arg(
        long,
        env = "SITE_ADMIN_ROOT",
        default_value = "/",
        global = true,
        value_name = "DIR",
        help_heading = "Global options"
    )]
    pub root: PathBuf,
    /// Config file [default: <root>/etc/site-admin/config.json].
    #[arg(
        long,
        env = "SITE_ADMIN_CONFIG",
        global = true,
        value_name = "FILE",
        help_heading = "Global options"
    )]
    pub config: Option<PathBuf>,
    /// ACME directory URL; overrides the config's acme_server, and moves the lineages renew renews to it.
    #[arg(
        long,
        env = "SITE_ADMIN_ACME_SERVER",
        global = true,
        value_name = "URL",
        help_heading = "Global options"
    )]
    pub acme_server: Option<String>,
    /// Extra PEM roots to trust for the ACME server's TLS and the certificates it issues.
    #[arg(
        long,
        env = "SITE_ADMIN_ACME_CA_BUNDLE",
        global = true,
        value_name = "PEM",
        help_heading = "Global options"
    )]
    pub acme_ca_bundle: Option<PathBuf>,
    /// Seconds to wait for the global lock before giving up (exit 3).
    #[arg(
        long,
        env = "SITE_ADMIN_LOCK_TIMEOUT",
        default_value_t = 300,
        global = true,
        value_name = "SECS",
        help_heading = "Global options"
    )]
    pub lock_timeout: u64,
    /// More log output (-v, -vv).
    #[arg(short, long, action = ArgAction::Count, global = true, conflicts_with = "quiet", help_heading = "Global options")]
    pub verbose: u8,
    /// Only warnings and errors on stderr.
    #[arg(short, long, global = true, help_heading = "Global options")]
    pub quiet: bool,
    /// Print one JSON document on stdout (on failure: {"error": {"kind", "message", "exit"}}).
    #[arg(long, global = true, help_heading = "Global options")]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

/// Shells `completions` writes a script for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

/// The RFC 5280 reasons `revoke --reason` takes (CRLReason), by their
/// RFC names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RevocationReason {
    /// No reason given.
    #[value(name = "unspecified")]
    Unspecified,
    /// The key leaked.
    #[value(name = "keyCompromise")]
    KeyCompromise,
    /// Replaced by a new certificate.
    #[value(name = "superseded")]
    Superseded,
    /// The site is gone.
    #[value(name = "cessationOfOperation")]
    CessationOfOperation,
}

impl RevocationReason {
    /// The RFC 5280 name, as `--reason` takes it and an owed revocation records it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Unspecified => "unspecified",
            Self::KeyCompromise => "keyCompromise",
            Self::Superseded => "superseded",
            Self::CessationOfOperation => "cessationOfOperation",
        }
    }

    /// The reason of a recorded name, if it is one.
    pub fn from_name(name: &str) -> Option<Self> {
        <Self as clap::ValueEnum>::value_variants().iter().copied().find(|r| r.name() == name)
    }

    /// The CRLReason code sent to the CA.
    pub fn code(self) -> u8 {
        match self {
            Self::Unspecified => 0,
            Self::KeyCompromise => 1,
            Self::Superseded => 4,
            Self::CessationOfOperation => 5,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Deploy or redeploy one site.
    #[command(
        group(clap::ArgGroup::new("source").required(true).args(["file", "stdin"])),
        after_help = "Examples:\n  site-admin deploy --file blog.json\n  site-admin deploy --dry-run --file blog.json   # which certificate would be served, and why\n  ubos-admin showsite --siteid s... | site-admin deploy --stdin"
    )]
    Deploy {
        /// The Site JSON file to deploy.
        #[arg(long, value_name = "SITE.json")]
        file: Option<PathBuf>,
        /// Read the Site JSON from standard input.
        #[arg(long)]
        stdin: bool,
        /// Change nothing; print which key and certificate would be served and why.
        #[arg(long)]
        dry_run: bool,
    },
    /// Remove a site (its Let's Encrypt certificate is stashed for a later redeploy).
    #[command(
        after_help = "Example:\n  site-admin undeploy --siteid s3f2c9a0b1d4e5f60718293a4b5c6d7e8f9012345"
    )]
    Undeploy {
        /// The site to remove ("s" followed by 40 hex digits).
        #[arg(long, value_name = "ID")]
        siteid: SiteId,
    },
    /// Write deployed sites, with their TLS material and ACME accounts, to a backup file (mode 0600).
    #[command(
        after_help = "Examples:\n  site-admin backup --all --out /var/backups/sites.json\n  site-admin backup --siteid s3f2... --notls --out - | less"
    )]
    Backup {
        /// The sites to back up (one or more).
        #[arg(long, num_args = 1.., required_unless_present = "all", conflicts_with = "all", value_name = "ID")]
        siteid: Vec<SiteId>,
        /// Back up every deployed site.
        #[arg(long)]
        all: bool,
        /// The backup file (a regular file), or - for standard output.
        #[arg(long, value_name = "FILE|-")]
        out: PathBuf,
        /// Leave keys, certificates and accounts out.
        #[arg(long)]
        notls: bool,
    },
    /// Deploy the sites of a backup (all, or the named ones): how a site moves to another device.
    #[command(
        after_help = "Examples:\n  site-admin restore --in sites.json\n  site-admin restore --in sites.json --siteid s3f2..."
    )]
    Restore {
        /// The backup file.
        #[arg(long = "in", value_name = "FILE")]
        input: PathBuf,
        /// Restore only these sites.
        #[arg(long, num_args = 1.., value_name = "ID")]
        siteid: Vec<SiteId>,
    },
    /// Print one deployed Site JSON, with its TLS material.
    #[command(
        after_help = "Example:\n  site-admin showsite --siteid s3f2c9a0b1d4e5f60718293a4b5c6d7e8f9012345"
    )]
    Showsite {
        /// The site to show.
        #[arg(long, value_name = "ID")]
        siteid: SiteId,
    },
    /// List the deployed sites (with --json: every Site JSON, with TLS material).
    #[command(after_help = "Examples:\n  site-admin listsites\n  site-admin --json listsites")]
    Listsites,
    /// List live, stashed, own (OKC) and pending certificates, with when each is due; warns about trouble.
    #[command(
        after_help = "Examples:\n  site-admin certificates\n  site-admin --json certificates"
    )]
    Certificates,
    /// Renew what is due, retry pending sites, reload Apache, run the hooks (the timer's entry point).
    #[command(
        after_help = "Examples:\n  site-admin renew                # what the timer runs\n  site-admin renew --dry-run      # what would be renewed, and when each is due\n  site-admin renew --force        # renew every lineage now"
    )]
    Renew {
        /// Renew every live lineage, due or not, and ignore back-off.
        #[arg(long)]
        force: bool,
        /// Only report what would be done; takes no lock, changes nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Revoke a site's live Let's Encrypt certificate (a replacement is served first).
    #[command(
        after_help = "Examples:\n  site-admin revoke --siteid s3f2... --reason keyCompromise\n  site-admin revoke --siteid s3f2... --no-replace\n  site-admin revoke --siteid s3f2... --serial 3a:9f:01"
    )]
    Revoke {
        /// The site whose certificate is revoked.
        #[arg(long, value_name = "ID")]
        siteid: SiteId,
        /// The RFC 5280 reason.
        #[arg(long, value_enum, default_value = "superseded", value_name = "R")]
        reason: RevocationReason,
        /// Revoke without a replacement: the site is served on plain http until renew provisions one.
        #[arg(long)]
        no_replace: bool,
        /// Revoke this version of the site's lineage (hex serial; an archived or stashed one, or an owed one).
        #[arg(long, value_name = "HEX")]
        serial: Option<String>,
    },
    /// Fleet mode: take the fleet's newer certificates, publish this device's newer ones, reload once, say what it serves.
    #[command(
        after_help = "Examples:\n  site-admin sync            # what site-admin-sync.timer runs every 5 minutes\n  site-admin --json sync"
    )]
    Sync,
    /// Fleet mode: the devices, the lineages and who holds their locks.
    #[command(
        after_help = "Examples:\n  site-admin fleet status\n  site-admin --json fleet status\n  site-admin fleet configured && echo fleet mode"
    )]
    Fleet {
        /// What to show.
        #[command(subcommand)]
        what: FleetCommand,
    },
    /// Print a shell completion script.
    #[command(
        after_help = "Examples:\n  site-admin completions bash > /etc/bash_completion.d/site-admin\n  site-admin completions fish > ~/.config/fish/completions/site-admin.fish"
    )]
    Completions {
        /// The shell.
        shell: Shell,
    },
    /// Check (and with --repair mend) every invariant of docs/design.md.
    #[command(after_help = "Examples:\n  site-admin doctor\n  site-admin doctor --repair")]
    Doctor {
        /// Mend what can be mended without guessing (relink, modes, reload or start Apache, move a damaged journal aside).
        #[arg(long)]
        repair: bool,
    },
    /// Print the help of site-admin or of one command.
    #[command(after_help = "Example:\n  site-admin help renew")]
    Help {
        /// The command.
        command: Option<String>,
    },
}

/// `site-admin fleet …`.
#[derive(Debug, Subcommand)]
pub enum FleetCommand {
    /// Every device's last heartbeat, every lineage with its version, serial, notAfter, renewer and lock holder.
    #[command(after_help = "Example:\n  site-admin --json fleet status")]
    Status,
    /// Exit 0 when a fleet is configured, 1 when not (systemd's ExecCondition of site-admin-sync.service).
    #[command(after_help = "Example:\n  site-admin fleet configured")]
    Configured,
}

/// The clap definition, for help, completions and the man page.
pub fn command() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
}

/// The completion script for `shell` (generated from the definition).
pub fn completions(shell: Shell) -> Vec<u8> {
    let mut cmd = command();
    let g = match shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    let mut out = Vec::new();
    clap_complete::generate(g, &mut cmd, "site-admin", &mut out);
    out
}

/// The help text of site-admin or of one command; None for an unknown command.
pub fn help_text(command_name: Option<&str>) -> Option<String> {
    let mut cmd = command();
    cmd.build();
    match command_name {
        None => Some(cmd.render_long_help().to_string()),
        Some(n) => cmd.find_subcommand_mut(n).map(|c| c.render_long_help().to_string()),
    }
}

/// The man page `site-admin.1`: the program, then one section per command
/// (synopsis, options, examples), all generated from the definition.
pub fn man_page() -> std::io::Result<Vec<u8>> {
    let cmd = command();
    let mut out = Vec::new();
    clap_mangen::Man::new(cmd.clone()).render(&mut out)?;
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        let name = format!("site-admin {}", sub.get_name());
        out.extend_from_slice(format!(".SH \"{}\"\n", name.to_uppercase()).as_bytes());
        if let Some(about) = sub.get_about() {
            out.extend_from_slice(format!("{}\n", roff_escape(&about.to_string())).as_bytes());
        }
        let after = sub.get_after_help().map(|h| h.to_string());
        let man = clap_mangen::Man::new(sub.clone().name(name));
        man.render_synopsis_section(&mut out)?;
        man.render_options_section(&mut out)?;
        if let Some(after) = after {
            out.extend_from_slice(format!(".PP\n.nf\n{}\n.fi\n", roff_escape(&after)).as_bytes());
        }
    }
    Ok(out)
}

fn roff_escape(s: &str) -> String {
    s.replace('\\', "\\e")
        .lines()
        .map(|l| {
            if l.starts_with('.') || l.starts_with('\'') {
                format!("\\&{l}")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
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
    fn every_argument_of_every_command_is_described_and_every_command_has_an_example() {
        let mut cmd = command();
        cmd.build();
        let mut missing = Vec::new();
        for a in cmd.get_arguments() {
            if a.get_help().is_none() && !matches!(a.get_id().as_str(), "help" | "version") {
                missing.push(format!("site-admin --{}", a.get_id()));
            }
        }
        for sub in cmd.get_subcommands() {
            if sub.get_about().is_none() {
                missing.push(format!("{}: no description", sub.get_name()));
            }
            if sub.get_after_help().map(|h| !h.to_string().contains("site-admin")).unwrap_or(true) {
                missing.push(format!("{}: no example", sub.get_name()));
            }
            for a in sub.get_arguments() {
                if a.get_help().is_none() && a.get_id().as_str() != "help" {
                    missing.push(format!("{} {}", sub.get_name(), a.get_id()));
                }
            }
        }
        assert!(missing.is_empty(), "undescribed: {missing:?}");
        let top = help_text(None).unwrap();
        assert!(top.contains("Exit codes:") && top.contains("3  the global lock"), "{top}");
        assert!(help_text(Some("deploy")).unwrap().contains("<--file <SITE.json>|--stdin>"));
        assert!(help_text(Some("nonsense")).is_none());
    }

    #[test]
    fn completions_and_the_man_page_come_from_the_definition() {
        for sh in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let s = String::from_utf8(completions(sh)).unwrap();
            assert!(
                s.contains("site-admin") && s.contains("renew") && s.contains("siteid"),
                "{sh:?}"
            );
        }
        let man = String::from_utf8(man_page().unwrap()).unwrap();
        assert!(man.starts_with(".ie") || man.contains(".TH"), "{}", &man[..200]);
        for sub in command().get_subcommands().filter(|s| s.get_name() != "help") {
            assert!(
                man.contains(&format!("SITE-ADMIN {}", sub.get_name().to_uppercase())),
                "{} missing from the man page",
                sub.get_name()
            );
        }
    }

    #[test]
    fn flags_anywhere() {
        let c = Cli::try_parse_from([
            "site-admin",
            "deploy",
            "--file",
            "x.json",
            "--root",
            "/r",
            "--json",
            "--dry-run",
        ])
        .unwrap();
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
    fn revoke_reasons() {
        let id = "s".to_string() + &"a".repeat(40);
        let reason = |r: &[&str]| {
            let args = [&["site-admin", "revoke", "--siteid", id.as_str()][..], r].concat();
            Cli::try_parse_from(args).map(|c| match c.command {
                Command::Revoke { reason, .. } => reason,
                _ => panic!(),
            })
        };
        assert_eq!(reason(&[]).unwrap(), RevocationReason::Superseded);
        for (name, code) in [
            ("unspecified", 0),
            ("keyCompromise", 1),
            ("superseded", 4),
            ("cessationOfOperation", 5),
        ] {
            let r = reason(&["--reason", name]).unwrap();
            assert_eq!(
                (r.name(), r.code(), RevocationReason::from_name(name)),
                (name, code, Some(r))
            );
        }
        for bad in ["nonsense", "keycompromise", "key-compromise", "1"] {
            let e = reason(&["--reason", bad]).unwrap_err();
            assert_eq!(e.kind(), clap::error::ErrorKind::InvalidValue, "{bad}");
            assert!(e.to_string().contains("keyCompromise"), "{e}");
        }
        assert_eq!(RevocationReason::from_name("nonsense"), None);
        let mut help = Vec::new();
        command().find_subcommand_mut("revoke").unwrap().write_long_help(&mut help).unwrap();
        let help = String::from_utf8(help).unwrap();
        assert!(
            ["unspecified", "keyCompromise", "superseded", "cessationOfOperation"]
                .iter()
                .all(|r| help.contains(r)),
            "{help}"
        );
    }

    #[test]
    fn backup_siteids() {
        let (a, b) = ("s".to_string() + &"a".repeat(40), "s".to_string() + &"b".repeat(40));
        let c = Cli::try_parse_from(["site-admin", "backup", "--siteid", &a, &b, "--out", "f"])
            .unwrap();
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
