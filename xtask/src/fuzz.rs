//! `cargo xtask fuzz [seconds]`: every target of the `fuzz/` crate for `seconds` each (30 by
//! default), one after the other, each on one core.
//!
//! cargo-fuzz builds with nightly flags; `RUSTC_BOOTSTRAP=1` lets the stable toolchain take
//! them. Each target's corpus grows in `fuzz/corpus/<target>/`; a crash stops the run, and
//! libFuzzer leaves the input in `fuzz/artifacts/<target>/` with the command that replays it.

use std::path::Path;
use std::process::{Child, Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::sh;

/// Seconds per target when none are given: the short run `cargo xtask test` could afford.
pub const DEFAULT_SECONDS: u64 = 30;

/// Runs every fuzz target for `seconds`.
pub fn run(root: &Path, seconds: u64) -> Result<()> {
    if !sh::succeeds("cargo", &["fuzz", "--version"]) {
        sh::run("cargo", &["install", "--locked", "cargo-fuzz"])?;
    }
    std::env::set_var("RUSTC_BOOTSTRAP", "1");
    let fuzz_dir = root.join("fuzz");
    let fuzz_dir = fuzz_dir.to_str().context("the fuzz directory's path is not UTF-8")?;
    let targets = sh::output("cargo", &["fuzz", "list", "--fuzz-dir", fuzz_dir])?;
    let targets: Vec<&str> = targets.lines().map(str::trim).filter(|t| !t.is_empty()).collect();
    if targets.is_empty() {
        bail!("no fuzz targets in {fuzz_dir}");
    }
    sh::run("cargo", &["fuzz", "build", "--fuzz-dir", fuzz_dir])?;
    let max_time = format!("-max_total_time={seconds}");
    for target in targets {
        let corpus = format!("{fuzz_dir}/corpus/{target}");
        std::fs::create_dir_all(&corpus).with_context(|| format!("creating {corpus}"))?;
        sh::run(
            "cargo",
            &["fuzz", "run", "--fuzz-dir", fuzz_dir, target, &corpus, "--", &max_time, "-rss_limit_mb=2048"],
        )?;
    }
    Ok(())
}

/// The seconds argument: a whole number, or the default when absent.
pub fn seconds(arg: Option<&str>) -> Result<u64> {
    arg.map_or(Ok(DEFAULT_SECONDS), |text| {
        text.parse().with_context(|| format!("fuzz: {text:?} is not a number of seconds"))
    })
}

/// Starts `cargo check` of every fuzz target, at the lowest CPU priority: the crate is outside
/// the workspace, and its targets compile the modules' own files, so nothing else notices when a
/// change breaks them. Run beside the tests, it takes only the CPU they leave idle.
pub fn start_check(root: &Path, cargo: &str) -> Result<Child> {
    let manifest = root.join("fuzz/Cargo.toml");
    Command::new("nice")
        .args(["-n", "19", cargo, "check", "--all-targets", "--manifest-path"])
        .arg(manifest)
        // A check links nothing: the path stops libfuzzer-sys from compiling libFuzzer's C++.
        .env("CUSTOM_LIBFUZZER_PATH", "/nonexistent/libfuzzer.a")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting cargo check of the fuzz targets")
}

/// Waits for [`start_check`]'s check; its errors when it failed.
pub fn finish_check(check: Child) -> Result<()> {
    let output = check.wait_with_output().context("waiting for cargo check of the fuzz targets")?;
    if !output.status.success() {
        bail!("the fuzz targets do not compile:\n{}", String::from_utf8_lossy(&output.stderr));
    }
    eprintln!("xtask test: the fuzz targets compile");
    Ok(())
}
