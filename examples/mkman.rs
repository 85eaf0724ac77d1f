//! Print the man page `site-admin.1`, generated from the clap definition
//! (scripts/package runs it; nothing is written by hand).
fn main() -> std::io::Result<()> {
    use std::io::Write;
    std::io::stdout().write_all(&site_admin::cli::man_page()?)
}
