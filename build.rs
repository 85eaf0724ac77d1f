//! Link the `site-admin` binary with packed relative relocations (DT_RELR,
//! glibc ≥ 2.36, binutils ≥ 2.38) on GNU/Linux: the dynamic loader reads
//! ≈10 KiB of relocations at start instead of ≈260 KiB of `.rela.dyn`, which
//! every run (a no-op renewal pass included) had resident. Measured in
//! docs/benchmarks.md, "Where a no-op pass's memory goes".
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if os == "linux" && env == "gnu" {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
    // The functions a nothing-due renewal pass runs, placed together at the
    // start of the code (link/hot-text.ld, written by scripts/hot-text): the
    // kernel maps 64 KiB around each page fault, so scattered they made
    // nearly all of `.text` resident. GNU ld and lld both take the script
    // (it only adds an output section before `.text`).
    // SITE_ADMIN_HOT_TEXT=0 leaves it out: the build scripts/hot-text
    // profiles (valgrind attributes code in the extra section to no object).
    println!("cargo:rerun-if-env-changed=SITE_ADMIN_HOT_TEXT");
    let wanted = std::env::var("SITE_ADMIN_HOT_TEXT").map(|v| v != "0").unwrap_or(true);
    if os == "linux" && wanted {
        let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
        println!("cargo:rerun-if-changed=link/hot-text.ld");
        println!("cargo:rustc-link-arg-bins=-Wl,-T,{dir}/link/hot-text.ld");
    }
}
