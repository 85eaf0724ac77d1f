//! The `site-admin` binary: parse, set up logging, run, map errors to exit codes.

use clap::Parser;
use site_admin::cli::Cli;

fn main() {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                e.exit();
            }
            let _ = e.print();
            // A script asked for JSON: it gets its error object too.
            if std::env::args_os().any(|a| a == "--json") {
                let text = e.render().to_string();
                let first: Vec<&str> =
                    text.lines().take_while(|l| !l.trim().is_empty()).map(str::trim).collect();
                let msg = first.join(" ").trim_start_matches("error: ").to_string();
                println!(
                    "{}",
                    serde_json::json!({"error": {"kind": "usage", "message": msg, "exit": 2}})
                );
            }
            std::process::exit(2);
        }
    };
    let level = if cli.quiet {
        tracing::Level::WARN
    } else {
        match cli.verbose {
            0 => tracing::Level::INFO,
            1 => tracing::Level::DEBUG,
            _ => tracing::Level::TRACE,
        }
    };
    // `SITE_ADMIN_LOG` takes `target=level` directives and a bare default
    // level (tracing-subscriber's `Targets` syntax); unset or unparsable, the
    // verbosity flags decide. Not `EnvFilter`: its span and field matching
    // are unused here and its code was part of every run's resident pages.
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = std::env::var("SITE_ADMIN_LOG")
        .ok()
        .and_then(|s| s.parse::<tracing_subscriber::filter::Targets>().ok())
        .unwrap_or_else(|| {
            tracing_subscriber::filter::Targets::new()
                .with_target("site_admin", level)
                .with_default(tracing::Level::WARN)
        });
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let registry = tracing_subscriber::registry().with(filter);
    // Timestamps only on request (SITE_ADMIN_LOG_TIME=1), for profiling.
    if std::env::var_os("SITE_ADMIN_LOG_TIME").is_some() {
        registry.with(fmt.with_timer(tracing_subscriber::fmt::time::uptime())).init();
    } else {
        registry.with(fmt.without_time()).init();
    }
    let json = cli.json;
    match site_admin::engine::run(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            // The one place an error becomes an exit code.
            let kind = e.kind();
            eprintln!("site-admin: {e}");
            if json {
                println!(
                    "{}",
                    serde_json::json!({"error": {"kind": kind.name(), "message": e.to_string(), "exit": kind.code()}})
                );
            }
            std::process::exit(kind.code());
        }
    }
}
