//! `cargo xtask`: the project's automation, in Rust.
//!
//! - `cargo xtask setup`: install the Debian packages and the Python venv.
//! - `cargo xtask image`: build (or find cached) the Debian guest image.
//! - `cargo xtask collection`: release binaries into the Galaxy collection tarball, installed.
//! - `cargo xtask bed up|down`: the libvirt test bed in its own network namespace.
//! - `cargo xtask fleet up|down`: a second hypervisor next to the bed (see fleet.rs).
//! - `cargo xtask lxd up|down`: the bed's LXD daemon alone (`bed up` starts it too; see lxd.rs).
//! - `cargo xtask test`: everything above, then every test, then the bed down.
//! - `cargo xtask demo`: the collection as a user meets it, on this host's libvirt.
//! - `cargo xtask fuzz [seconds]`: every fuzz target for `seconds` each (see fuzz.rs).
//! - `cargo xtask bench [--quick] [section…]`: figures against the peers, into bench/results/.

mod apt;
mod bed;
mod bench;
mod collection;
mod demo;
mod fleet;
mod fuzz;
mod image;
mod lxd;
mod portable;
mod setup;
mod sh;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let root = project_root()?;
    match args.as_slice() {
        ["setup"] => setup::packages().and(setup::venv(&root).map(drop)),
        ["image"] => setup::packages().and(image::ensure(&root).map(drop)),
        ["collection"] => setup::packages().and_then(|()| collection::build_and_install(&root, &setup::venv(&root)?)).map(drop),
        ["bed", "up"] => bed_up(&root).map(drop),
        ["bed", "down"] => bed_down(),
        ["fleet", "up"] => setup::packages().and_then(|()| fleet::up(&image::ensure(&root)?)).map(drop),
        ["fleet", "down"] => fleet::down(),
        ["lxd", "up"] => setup::packages().and_then(|()| lxd::up(&image::ensure_lxd(&root, &image::ensure(&root)?)?)),
        ["lxd", "down"] => lxd::down(),
        ["test", rest @ ..] => test(&root, rest),
        ["demo"] => demo::run(&root),
        ["fuzz", rest @ ..] if rest.len() <= 1 => fuzz::run(&root, fuzz::seconds(rest.first().copied())?),
        ["bench", rest @ ..] => bench(&root, rest),
        _ => bail!("usage: cargo xtask setup | image | collection | bed up | bed down | fleet up | fleet down | lxd up | lxd down | test [cargo test filters] | demo | fuzz [seconds] | bench [--quick] [section…]"),
    }
}

pub fn project_root() -> Result<PathBuf> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("run through cargo xtask")?;
    Ok(Path::new(&manifest_dir).parent().context("xtask has a parent")?.to_path_buf())
}

fn bed_up(root: &Path) -> Result<PathBuf> {
    setup::packages()?;
    let venv = setup::venv(root)?;
    let image = image::ensure(root)?;
    let collections = collection::build_and_install(root, &venv)?;
    let bed_json = bed::up(&image, &venv, &collections)?;
    lxd::up(&image::ensure_lxd(root, &image)?)?;
    Ok(bed_json)
}

/// The bed and what lives in it, down. The fleet's daemon would keep the next `bed up` from
/// starting: it goes first; LXD goes before the namespace it lives in.
fn bed_down() -> Result<()> {
    fleet::down().and(lxd::down()).and(bed::down())
}

/// The benchmarks on the bed and the second hypervisor, both left up for the next run.
fn bench(root: &Path, args: &[&str]) -> Result<()> {
    let quick = args.contains(&"--quick");
    let sections: Vec<&str> = args.iter().copied().filter(|a| *a != "--quick").collect();
    let bed_json = bed_up(root)?;
    let fleet_json = fleet::up(&image::ensure(root)?)?;
    bench::run(root, &bed_json, &fleet_json, quick, &sections)
}

/// Every test: unit tests, then the integration tests on the bed, which is torn down after.
fn test(root: &Path, filters: &[&str]) -> Result<()> {
    let started = std::time::Instant::now();
    let bed_json = bed_up(root)?;
    // The second hypervisor costs about 11 s: the fleet tests always get it.
    fleet::up(&image::ensure(root)?)?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    // The integration tests run the module binaries as Ansible would: build them first.
    let result = sh::run(&cargo, &["build", "--workspace", "--bins"]).and_then(|()| {
        std::env::set_var("VIRTFARM_BED", &bed_json);
        // Two test threads: a third lengthened every test on a loaded machine until the demo's
        // playbook and a lease wait ran out of time (the busy share below says how loaded).
        let mut args = vec!["test", "--workspace", "--", "--include-ignored", "--test-threads=2"];
        args.extend_from_slice(filters);
        let fuzz_check = if filters.is_empty() { Some(fuzz::start_check(root, &cargo)?) } else { None };
        let cpu_before = cpu_times();
        let tested = sh::run(&cargo, &args);
        if let (Some((busy0, all0)), Some((busy1, all1))) = (cpu_before, cpu_times()) {
            let busy = 100.0 * (busy1 - busy0) as f64 / (all1 - all0).max(1) as f64;
            eprintln!("xtask test: the CPUs were {busy:.0}% busy while the tests ran");
        }
        let fuzz_checked = fuzz_check.map_or(Ok(()), fuzz::finish_check);
        tested?;
        fuzz_checked?;
        if !filters.is_empty() {
            return Ok(());
        }
        // Restarting libvirtd would disturb the tests running beside it: this one runs alone.
        std::env::set_var("VIRTFARM_FAULTS_RESTART", "1");
        let restart = "faults::daemon_restart_while_waiting_for_a_lease";
        sh::run(
            &cargo,
            &["test", "-p", "virtfarm-tests", "--test", "integration", "--", "--include-ignored", "--exact", restart],
        )
    });
    let teardown = if std::env::var_os("VIRTFARM_KEEP_BED").is_some() { Ok(()) } else { bed_down() };
    eprintln!("xtask test: {:.0} s in all", started.elapsed().as_secs_f64());
    result.and(teardown)
}

/// The machine's busy and total CPU time so far (`/proc/stat`, in ticks): idle and iowait
/// count as not busy.
fn cpu_times() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let ticks: Vec<u64> = stat.lines().next()?.split_whitespace().skip(1).filter_map(|t| t.parse().ok()).collect();
    let all: u64 = ticks.iter().sum();
    let idle = ticks.get(3)? + ticks.get(4)?;
    Some((all - idle, all))
}
