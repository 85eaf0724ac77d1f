//! The `site-admin` binary: parse, set up logging, run, map errors to exit codes.

use clap::Parser;
use site_admin::cli::Cli;

fn main() {
    let cli = Cli::parse();
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
    match site_admin::engine::run(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("site-admin: {e}");
            std::process::exit(e.exit_code());
        }
    }
}
