//! LXD inventory: our executable (`--lxd`, no libvirt URI) and our plugin listing 10 and 30
//! running busybox containers `bn-lxd-NN` of the bed's LXD, each with its address; the time,
//! and the LXD API requests `--stats` counts. No peer: community.general's `lxd` inventory
//! plugin reads one server too, but over HTTPS only (`url`), which the bed's server does not
//! listen on.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use super::measure::{seconds, Row, Samples};
use super::{checked, path_str, Bench};

const SIZES: [usize; 2] = [10, 30];
const SECTION: &str = "LXD inventory (running busybox containers with addresses, `dir` storage)";
const PREFIX: &str = "bn-lxd-";

pub fn run(bench: &Bench) -> Result<Vec<Row>> {
    let path = crate::lxd::description();
    let described: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?)?;
    let field = |key: &str| described[key].as_str().with_context(|| format!("{} has no {key}", path.display()));
    let lxd = Lxd { dir: field("dir")?, socket: field("socket")?, image: field("busybox_image")? };
    lxd.remove();
    let measured = measure_sizes(bench, &lxd);
    lxd.remove();
    measured
}

fn measure_sizes(bench: &Bench, lxd: &Lxd) -> Result<Vec<Row>> {
    let plugin = bench.work.join("bench-lxd.libvirt_leases.yml");
    std::fs::write(&plugin, format!("plugin: virtfarm.libvirt.libvirt_leases\nlxd: ['{}']\n", lxd.socket))?;
    let executable = bench.collection_file("libexec/libvirt_inventory")?;
    let mut rows = Vec::new();
    let mut made = 0;
    for size in SIZES {
        let started = Instant::now();
        for index in made..size {
            lxd.lxc(&["launch", lxd.image, &format!("{PREFIX}{index:02}")])?;
        }
        made = size;
        lxd.wait_for_addresses(&executable, size)?;
        eprintln!("bench: {size} LXD containers running with addresses after {:.1} s", started.elapsed().as_secs_f64());
        let [mut alone, mut read, mut plugin_list] = [(); 3].map(|()| Samples::default());
        let mut calls = 0.0;
        for _ in 0..bench.reps(5) {
            let mut stats = (0.0, 0.0);
            alone.push(seconds(|| {
                stats = lxd.stats(&executable)?;
                Ok(())
            })?);
            read.push(stats.0 / 1000.0);
            calls = stats.1;
            plugin_list.push(seconds(|| {
                bench.ansible("ansible-inventory", &["-i", path_str(&plugin)?, "--list"], &[]).map(drop)
            })?);
        }
        let at = format!("{size} containers");
        rows.extend([
            Row::ours(SECTION, format!("{at}: our executable alone, --list --lxd"), "s", alone),
            Row::ours(SECTION, format!("{at}: of which the LXD read (--stats)"), "s", read),
            Row::ours(SECTION, format!("{at}: our libvirt_leases plugin (ansible-inventory --list)"), "s", plugin_list),
            Row::ours(SECTION, format!("{at}: LXD API requests"), "calls", Samples(vec![calls])),
        ]);
    }
    Ok(rows)
}

/// The bed's LXD, as the `lxc` client and the executable reach it.
struct Lxd<'a> {
    dir: &'a str,
    socket: &'a str,
    image: &'a str,
}

impl Lxd<'_> {
    fn lxc(&self, args: &[&str]) -> Result<String> {
        let mut command = Command::new("timeout");
        command.arg("120").arg("lxc").args(args).env("LXD_DIR", self.dir).stdin(Stdio::null());
        checked(&mut command, "lxc")
    }

    /// The executable's listing of the server alone, with `--stats`: (read ms, API requests).
    fn stats(&self, executable: &std::path::Path) -> Result<(f64, f64)> {
        let output = Command::new(executable).args(["--list", "--stats", "--lxd", self.socket]).output()?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        // "libvirt_inventory: <socket>: N instances, M LXD API calls, T ms"
        let line = stderr
            .lines()
            .find(|l| l.contains("LXD API calls"))
            .with_context(|| format!("no --stats line in: {stderr}"))?;
        let numbers: Vec<f64> = line
            .rsplit(": ")
            .next()
            .unwrap_or_default()
            .split(',')
            .filter_map(|part| part.split_whitespace().next()?.parse().ok())
            .collect();
        let [_, calls, ms] = numbers[..] else { bail!("unexpected --stats line: {line}") };
        Ok((ms, calls))
    }

    /// Waits (up to a minute) until the executable lists `count` bench containers with an address.
    fn wait_for_addresses(&self, executable: &std::path::Path, count: usize) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut command = Command::new(executable);
            command.args(["--list", "--lxd", self.socket]);
            let listed: Value = serde_json::from_str(&checked(&mut command, "libvirt_inventory")?)?;
            let hostvars = listed["_meta"]["hostvars"].as_object().context("no hostvars")?;
            let ready = hostvars.iter().filter(|(n, v)| n.starts_with(PREFIX) && v["ansible_host"].is_string()).count();
            if ready >= count {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{ready} of {count} LXD containers have an address after 60 s");
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Deletes every `bn-lxd-` container; best effort.
    fn remove(&self) {
        let names = self.lxc(&["list", "--format", "csv", "--columns", "n"]).unwrap_or_default();
        let ours: Vec<&str> = names.lines().map(str::trim).filter(|n| n.starts_with(PREFIX)).collect();
        if !ours.is_empty() {
            let mut args = vec!["delete", "--force"];
            args.extend(ours);
            let _ = self.lxc(&args);
        }
    }
}
