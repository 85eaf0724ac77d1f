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
        "warn"
    } else {
        match cli.verbose {
            0 => "info",
            1 => "debug",
            _ => "trace",
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("SITE_ADMIN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("site_admin={level},warn")));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    // Timestamps only on request (SITE_ADMIN_LOG_TIME=1), for profiling.
    if std::env::var_os("SITE_ADMIN_LOG_TIME").is_some() {
        fmt.with_timer(tracing_subscriber::fmt::time::uptime()).init();
    } else {
        fmt.without_time().init();
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
