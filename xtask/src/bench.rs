//! `cargo xtask bench [--quick]`: this collection against the tools users would pick instead,
//! measured in the same run on the test bed, pair by pair (see bench/README.md).
//!
//! Every figure is timed here, outside `cargo test`: the machines are shared and noisy, so the
//! figures are medians of repetitions, each of ours paired with the peer's run right after it.
//! Domains and volumes made here are named `bn-…` and removed at the end of their section.

mod boot;
mod cache;
mod inventory;
mod lxd;
mod measure;
mod per_task;
mod provision;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::sh;
use measure::{Row, Samples};

/// What every section needs: where the bed and its tools are, and how hard to try.
pub struct Bench {
    root: PathBuf,
    bed: Value,
    /// The second hypervisor (`cargo xtask fleet up`): the remote host reached over ssh.
    fleet: Value,
    /// Scratch files (playbooks, inventories, args): target/bench.
    work: PathBuf,
    quick: bool,
}

impl Bench {
    /// Reads bed.json and fleet.json of running beds.
    pub fn new(root: &Path, bed_json: &Path, fleet_json: &Path, quick: bool) -> Result<Bench> {
        let read = |path: &Path| -> Result<Value> {
            Ok(serde_json::from_str(
                &std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?,
            )?)
        };
        let work = root.join("target/bench");
        std::fs::create_dir_all(&work)?;
        Ok(Bench { root: root.to_path_buf(), bed: read(bed_json)?, fleet: read(fleet_json)?, work, quick })
    }

    /// A string field of bed.json.
    fn bed(&self, key: &str) -> Result<&str> {
        self.bed[key].as_str().with_context(|| format!("bed.json has no {key}"))
    }

    /// A string field of fleet.json.
    fn fleet(&self, key: &str) -> Result<&str> {
        self.fleet[key].as_str().with_context(|| format!("fleet.json has no {key}"))
    }

    /// Repetitions: `full` normally, one with `--quick`.
    fn reps(&self, full: usize) -> usize {
        if self.quick {
            1
        } else {
            full
        }
    }

    fn venv_bin(&self, program: &str) -> Result<PathBuf> {
        Ok(Path::new(self.bed("venv")?).join("bin").join(program))
    }

    /// An installed module binary or the inventory executable, as Ansible gets them.
    fn collection_file(&self, relative: &str) -> Result<PathBuf> {
        Ok(Path::new(self.bed("collections_path")?).join("ansible_collections/virtfarm/libvirt").join(relative))
    }

    /// An Ansible program of the venv, inside the bed's namespace, with the installed
    /// collection; fails with its output when it fails.
    fn ansible(&self, program: &str, args: &[&str], env: &[(&str, &str)]) -> Result<String> {
        let path = format!("{}:{}", self.venv_bin("")?.display(), std::env::var("PATH").unwrap_or_default());
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", self.bed("netns")?, "timeout", "1800"])
            .arg(self.venv_bin(program)?)
            .args(args)
            .env("PATH", path)
            .env("ANSIBLE_COLLECTIONS_PATH", self.bed("collections_path")?)
            .env("ANSIBLE_HOST_KEY_CHECKING", "False")
            .env("ANSIBLE_NOCOLOR", "1")
            .env("ANSIBLE_RETRY_FILES_ENABLED", "False")
            .env("ANSIBLE_LOCALHOST_WARNING", "False")
            .env("ANSIBLE_INVENTORY_UNPARSED_WARNING", "False")
            .envs(env.iter().copied());
        checked(&mut command, program)
    }

    /// Runs an installed module as Ansible does (args file in argv[1]) inside the bed's
    /// namespace, so that its waits for ssh reach the guests; fails when the result does.
    fn module(&self, name: &str, args: &Value) -> Result<Value> {
        let args_file = self.work.join(format!("{name}.args.json"));
        std::fs::write(&args_file, args.to_string())?;
        let binary = self.collection_file(&format!("plugins/modules/{name}"))?;
        let mut command = Command::new("ip");
        command.args(["netns", "exec", self.bed("netns")?, "timeout", "1800"]).arg(binary).arg(&args_file);
        let stdout = checked(&mut command, name)?;
        let result: Value =
            serde_json::from_str(&stdout).with_context(|| format!("{name} printed no JSON: {stdout}"))?;
        if result["failed"] == true {
            bail!("{name} failed: {}", result["msg"]);
        }
        Ok(result)
    }

    /// community.libvirt's `virt` module needs lxml, which the `ansible` package does not
    /// bring: installed into the venv as its documentation asks users to.
    fn ensure_peer_requirements(&self) -> Result<()> {
        let python = self.venv_bin("python")?;
        if !sh::succeeds(path_str(&python)?, &["-c", "import lxml"]) {
            sh::run(path_str(&self.venv_bin("pip")?)?, &["install", "-q", "lxml"])?;
        }
        Ok(())
    }

    /// `virsh -c uri args…`.
    fn virsh(&self, uri: &str, args: &[&str]) -> Result<String> {
        let mut all = vec!["-c", uri];
        all.extend_from_slice(args);
        sh::output("virsh", &all)
    }

    /// Defines a small shut-off domain with no disk, for figures that only read state.
    fn define_idle_domain(&self, uri: &str, name: &str) -> Result<()> {
        let xml = self.work.join(format!("{name}.xml"));
        std::fs::write(&xml, idle_domain_xml(name, "52:54:00:bb:ff:ff", self.bed("network")?))?;
        self.virsh(uri, &["define", path_str(&xml)?]).map(drop)
    }

    /// Undefines `name` if it exists (ours: `bn-` names only).
    fn remove_domain(&self, uri: &str, name: &str) {
        debug_assert!(name.starts_with("bn-"));
        let _ = self.virsh(uri, &["destroy", name]);
        let _ = self.virsh(uri, &["undefine", name, "--snapshots-metadata", "--nvram"]);
    }
}

/// A domain XML with one NIC on `network`; names and MACs here are the harness's own.
fn idle_domain_xml(name: &str, mac: &str, network: &str) -> String {
    format!(
        "<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory><os><type arch='x86_64'>hvm</type></os>\
         <devices><interface type='network'><mac address='{mac}'/><source network='{network}'/></interface></devices></domain>"
    )
}

/// Runs `command` with its output captured; fails with the end of it when it exits non-zero.
fn checked(command: &mut Command, what: &str) -> Result<String> {
    let out: Output = command.stdin(Stdio::null()).output().with_context(|| format!("cannot run {what}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        let tail = |text: &[u8]| {
            let text = String::from_utf8_lossy(text);
            text.chars().rev().take(3000).collect::<Vec<_>>().into_iter().rev().collect::<String>()
        };
        bail!("{what} failed ({}):\n{}\n{}", out.status, tail(&out.stdout), tail(&out.stderr));
    }
    Ok(stdout)
}

fn path_str(path: &Path) -> Result<&str> {
    path.to_str().context("non-UTF-8 path")
}

/// One part of the run: its rows of figures.
type Section = fn(&Bench) -> Result<Vec<Row>>;

/// Runs every section (or those whose name contains one of `only`), then writes
/// bench/results/<date>[-quick][-<only>…].md and prints it: a partial run never overwrites a
/// full one.
pub fn run(root: &Path, bed_json: &Path, fleet_json: &Path, quick: bool, only: &[&str]) -> Result<()> {
    let bench = Bench::new(root, bed_json, fleet_json, quick)?;
    bench.ensure_peer_requirements()?;
    let load_before = load_average();
    let started = std::time::Instant::now();
    let mut rows = Vec::new();
    let mut failures = Vec::new();
    let sections: [(&str, Section); 7] = [
        ("binary sizes", binary_sizes),
        ("per-task cost", per_task::run),
        ("inventory", inventory::run),
        ("lxd", lxd::run),
        ("provisioning", provision::run),
        ("snapshots", provision::snapshots),
        ("guest_provision cache", cache::run),
    ];
    for (name, section) in
        sections.into_iter().filter(|(name, _)| only.is_empty() || only.iter().any(|o| name.contains(o)))
    {
        eprintln!("bench: {name}");
        match section(&bench) {
            Ok(more) => rows.extend(more),
            Err(error) => {
                eprintln!("bench: {name} failed: {error:#}");
                failures.push(format!("- {name}: {error:#}"));
            }
        }
    }
    let report = report(&bench, &rows, &failures, &load_before, started.elapsed().as_secs_f64())?;
    let date = sh::output("date", &["-u", "+%F"])?.trim().to_string();
    let results = root.join("bench/results");
    std::fs::create_dir_all(&results)?;
    let mut name = date;
    for part in quick.then_some("quick").into_iter().chain(only.iter().copied()) {
        name = format!("{name}-{}", part.replace(|c: char| !c.is_ascii_alphanumeric(), "_"));
    }
    let file = results.join(format!("{name}.md"));
    std::fs::write(&file, &report)?;
    println!("{report}");
    eprintln!("bench: written to {}", file.display());
    if failures.is_empty() {
        Ok(())
    } else {
        bail!("{} section(s) failed (see the report)", failures.len())
    }
}

/// Every module binary and the inventory executable as installed: release, LTO, stripped.
fn binary_sizes(bench: &Bench) -> Result<Vec<Row>> {
    let mut files: Vec<String> = crate::collection::MODULES.iter().map(|m| format!("plugins/modules/{m}")).collect();
    files.push("libexec/libvirt_inventory".to_string());
    files
        .iter()
        .map(|relative| {
            let path = bench.collection_file(relative)?;
            let bytes = std::fs::metadata(&path).with_context(|| format!("{}", path.display()))?.len();
            let name = relative.rsplit('/').next().unwrap_or(relative);
            Ok(Row::ours("Binary sizes (release, stripped)", name, "MiB", Samples(vec![bytes as f64 / 1048576.0]))
                .goal(2.0))
        })
        .collect()
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// The header with the machine facts, the table, and what failed.
fn report(bench: &Bench, rows: &[Row], failures: &[String], load_before: &str, seconds: f64) -> Result<String> {
    let date = sh::output("date", &["-u", "+%F %H:%M UTC"])?;
    let cores = sh::output("nproc", &[])?;
    let meminfo = std::fs::read_to_string("/proc/meminfo")?;
    let memory_gib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1048576.0);
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo")?;
    let accel = if cpuinfo.contains(" vmx") || cpuinfo.contains(" svm") {
        "KVM"
    } else {
        "TCG (no vmx/svm: guests run under plain QEMU emulation)"
    };
    let uri = bench.bed("uri")?;
    let versions = bench.virsh(uri, &["version"])?;
    let version_of = |prefix: &str| {
        versions
            .lines()
            .find(|l| l.starts_with(prefix))
            .map_or("?", |l| l.rsplit(' ').next().unwrap_or("?"))
            .to_string()
    };
    let ansible = bench.ansible("ansible", &["--version"], &[])?;
    let ansible_core = ansible.lines().next().unwrap_or("?").to_string();
    let galaxy = bench.ansible("ansible-galaxy", &["collection", "list", "community.libvirt"], &[])?;
    let community = galaxy
        .lines()
        .find(|l| l.starts_with("community.libvirt"))
        .map_or("?", |l| l.split_whitespace().nth(1).unwrap_or("?"));
    let mode = if bench.quick { "quick (one repetition, fewer tasks)" } else { "full" };
    let mut out = format!(
        "# virtfarm benchmarks, {date}\n\
         Run: {mode}, {seconds:.0} s. Machine: {} cores, {memory_gib:.1} GiB, {accel}; libvirt {}, QEMU {}; {ansible_core}, community.libvirt {community}.\n\
         Load average (1/5/15 min) before: {load_before}; after: {}. The machine was shared with other test runs: ratios are computed pair by pair within a repetition.\n\
         Reproduce: `cargo xtask bench` (see bench/README.md for what each figure runs).\n",
        cores.trim(),
        version_of("Using library"),
        version_of("Running hypervisor"),
        load_average(),
    );
    out += &measure::table(rows);
    if !failures.is_empty() {
        out += "\n### Sections that failed\n\n";
        out += &failures.join("\n");
        out += "\n";
    }
    Ok(out)
}
