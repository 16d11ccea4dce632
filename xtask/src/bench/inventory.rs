//! Inventory: `ansible-inventory --list` with our executable (as a script inventory and through
//! our plugin) against community.libvirt's `libvirt` inventory plugin, at 10, 100 and 1000
//! defined domains, each with a lease in libvirt's lease status file of the bed network; the
//! executable alone; and the libvirt RPCs each makes, counted the same way for both: client-side
//! libvirt logging (`RPC_CLIENT_MSG_TX_QUEUE`, one per call sent, connection set-up included).

use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context, Result};
use serde_json::{json, Value};

use super::measure::{seconds, Row, Samples};
use super::{idle_domain_xml, path_str, Bench};

const SIZES: [usize; 3] = [10, 100, 1000];
const SECTION: &str = "Inventory (`ansible-inventory --list`, defined domains each with a lease)";
/// Locally administered MACs ("bn"), so no real NIC and no other fixture has them.
const MAC_PREFIX: &str = "02:62:6e";

pub fn run(bench: &Bench) -> Result<Vec<Row>> {
    let fixture = Fixture::new(bench)?;
    fixture.remove();
    let measured = measure_sizes(bench, &fixture);
    fixture.remove();
    measured
}

fn measure_sizes(bench: &Bench, fixture: &Fixture) -> Result<Vec<Row>> {
    let sources = Sources::write(bench)?;
    let mut rows = vec![startup_floor(bench)?];
    let mut defined = 0;
    for size in SIZES {
        fixture.grow(defined, size)?;
        defined = size;
        let all =
            bench.virsh(fixture.uri, &["list", "--all", "--name"])?.lines().filter(|l| !l.trim().is_empty()).count();
        eprintln!("bench: inventory at {size} fixture domains ({all} on the daemon)");
        rows.extend(measure_size(bench, &sources, size, all)?);
    }
    Ok(rows)
}

/// The figures at one size: ansible-inventory with each source, the executable alone, RPCs.
fn measure_size(bench: &Bench, sources: &Sources, size: usize, all: usize) -> Result<Vec<Row>> {
    let hosts_only = sources.hosts_only(bench, size)?;
    let [mut script, mut plugin, mut peer, mut alone, mut scan, mut floor] = [(); 6].map(|()| Samples::default());
    for _ in 0..bench.reps(5) {
        floor.push(seconds(|| sources.list(bench, &hosts_only, &[]).map(drop))?);
        script.push(seconds(|| sources.list(bench, &sources.script, &[]).map(drop))?);
        plugin.push(seconds(|| sources.list(bench, &sources.plugin, &[]).map(drop))?);
        peer.push(seconds(|| sources.list(bench, &sources.peer, &[]).map(drop))?);
        let mut scan_ms = 0.0;
        alone.push(seconds(|| {
            scan_ms = sources.scan_ms()?;
            Ok(())
        })?);
        scan.push(scan_ms / 1000.0);
    }
    let ours_calls = rpc_calls(bench, |env| sources.executable_alone(env))?;
    let peer_calls = rpc_calls(bench, |env| sources.list(bench, &sources.peer, env))?;
    let at = format!("{size} domains ({all} on the daemon)");
    let goal = |row: Row, limit: f64| if size == 1000 { row.goal(limit) } else { row };
    let peer_name = "community.libvirt.libvirt plugin";
    Ok(vec![
        Row::ours(
            SECTION,
            format!("{at}: floor: the same {size} hosts, no variables, from a static script"),
            "s",
            floor,
        )
        .against(peer_name, peer.clone()),
        goal(
            Row::ours(SECTION, format!("{at}: our executable as script inventory"), "s", script.clone())
                .against(peer_name, peer.clone()),
            0.2,
        ),
        Row::ours(SECTION, format!("{at}: our libvirt_leases plugin"), "s", plugin).against(peer_name, peer),
        goal(Row::ours(SECTION, format!("{at}: our executable alone, --list"), "s", alone), 0.05),
        Row::ours(SECTION, format!("{at}: of which the libvirt scan (--stats)"), "s", scan),
        Row::ours(
            SECTION,
            format!("{at}: libvirt RPCs (executable / ansible-inventory)"),
            "calls",
            Samples(vec![ours_calls]),
        )
        .against(peer_name, Samples(vec![peer_calls])),
    ])
}

/// ansible-inventory with an inline one-host inventory: what any source costs before it
/// reads anything (interpreter start, plugin loading, output), for both ours and the peer.
fn startup_floor(bench: &Bench) -> Result<Row> {
    let mut floor = Samples::default();
    for _ in 0..bench.reps(5) {
        floor.push(seconds(|| bench.ansible("ansible-inventory", &["-i", "localhost,", "--list"], &[]).map(drop))?);
    }
    Ok(Row::ours(SECTION, "ansible-inventory start-up alone (inline `localhost,` inventory)", "s", floor))
}

/// Runs `work` with client-side libvirt logging of RPC events; counts the calls sent.
fn rpc_calls(bench: &Bench, work: impl FnOnce(&[(&str, &str)]) -> Result<String>) -> Result<f64> {
    let log = bench.work.join("rpc.log");
    let _ = std::fs::remove_file(&log);
    let outputs = format!("1:file:{}", log.display());
    work(&[("LIBVIRT_LOG_FILTERS", "1:rpc.netclient 1:rpc.netmessage"), ("LIBVIRT_LOG_OUTPUTS", &outputs)])?;
    let text = std::fs::read_to_string(&log).with_context(|| format!("no libvirt log at {}", log.display()))?;
    Ok(text.lines().filter(|l| l.contains("RPC_CLIENT_MSG_TX_QUEUE")).count() as f64)
}

/// The three inventory sources, as files Ansible is given.
struct Sources {
    script: PathBuf,
    plugin: PathBuf,
    peer: PathBuf,
    uri: String,
}

impl Sources {
    fn write(bench: &Bench) -> Result<Sources> {
        let uri = bench.bed("uri")?.to_string();
        let plugin = bench.work.join("bench.libvirt_leases.yml");
        std::fs::write(&plugin, format!("plugin: virtfarm.libvirt.libvirt_leases\nuris: ['{uri}']\n"))?;
        let peer = bench.work.join("bench.libvirt.yml");
        std::fs::write(&peer, format!("plugin: community.libvirt.libvirt\nuri: '{uri}'\n"))?;
        Ok(Sources { script: bench.collection_file("libexec/libvirt_inventory")?, plugin, peer, uri })
    }

    /// A script that prints the fixture's first `size` hosts in one group with no variables:
    /// what ansible-inventory costs for that many hosts whatever the source, the floor of any
    /// ratio against the peer.
    fn hosts_only(&self, bench: &Bench, size: usize) -> Result<PathBuf> {
        let hosts: Vec<String> = (0..size).map(fixture_name).collect();
        let hostvars: serde_json::Map<String, Value> = hosts.iter().map(|h| (h.clone(), json!({}))).collect();
        let document = bench.work.join(format!("hosts-only-{size}.json"));
        std::fs::write(&document, json!({"fixture": {"hosts": hosts}, "_meta": {"hostvars": hostvars}}).to_string())?;
        let script = bench.work.join(format!("hosts-only-{size}.sh"));
        std::fs::write(&script, format!("#!/bin/sh\nexec cat '{}'\n", path_str(&document)?))?;
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        Ok(script)
    }

    fn list(&self, bench: &Bench, source: &Path, env: &[(&str, &str)]) -> Result<String> {
        let mut all =
            vec![("LIBVIRT_INVENTORY_URIS", self.uri.as_str()), ("ANSIBLE_INVENTORY_UNPARSED_FAILED", "True")];
        all.extend_from_slice(env);
        bench.ansible("ansible-inventory", &["-i", path_str(source)?, "--list"], &all)
    }

    /// Runs the executable alone with `--stats`; returns the scan time it reports, in ms.
    fn scan_ms(&self) -> Result<f64> {
        let output = std::process::Command::new(&self.script)
            .args(["--list", "--stats", "--uri", &self.uri])
            .stdin(Stdio::null())
            .output()?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        // "libvirt_inventory: <uri>: N domains, M libvirt calls, T ms"
        let line = stderr
            .lines()
            .find(|l| l.contains("libvirt calls"))
            .with_context(|| format!("no --stats line in: {stderr}"))?;
        let last = line.trim_end_matches("ms").trim().rsplit(' ').next().unwrap_or_default();
        last.parse().with_context(|| format!("no time in {line}"))
    }

    fn executable_alone(&self, env: &[(&str, &str)]) -> Result<String> {
        let mut command = std::process::Command::new(&self.script);
        command.args(["--list", "--uri", &self.uri]).envs(env.iter().copied());
        super::checked(&mut command, "libvirt_inventory")
    }
}

/// The name of the fixture's domain number `index`.
fn fixture_name(index: usize) -> String {
    format!("bn-inv-{index:04}")
}

/// `bn-inv-NNNN` domains on the bed's daemon, each with a lease entry in the bed network's
/// lease status file; both removed by [`Fixture::remove`].
struct Fixture<'a> {
    bench: &'a Bench,
    uri: &'a str,
    network: &'a str,
    lease_file: PathBuf,
}

impl<'a> Fixture<'a> {
    fn new(bench: &'a Bench) -> Result<Fixture<'a>> {
        let lease_file = PathBuf::from(format!("/var/lib/libvirt/dnsmasq/{}.status", bench.bed("bridge")?));
        Ok(Fixture { bench, uri: bench.bed("uri")?, network: bench.bed("network")?, lease_file })
    }

    /// Defines domains `from..to` in one virsh session and adds their leases.
    fn grow(&self, from: usize, to: usize) -> Result<()> {
        let dir = self.bench.work.join("inventory-fixture");
        std::fs::create_dir_all(&dir)?;
        let mut commands = String::new();
        let expiry = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs() + 3600;
        let mut leases = Vec::new();
        for index in from..to {
            let (name, mac) = (fixture_name(index), format!("{MAC_PREFIX}:00:{:02x}:{:02x}", index / 256, index % 256));
            let xml = dir.join(format!("{name}.xml"));
            std::fs::write(&xml, idle_domain_xml(&name, &mac, self.network))?;
            commands += &format!("define {};", path_str(&xml)?);
            let ip = format!("10.77.{}.{}", 100 + index / 250, 1 + index % 250);
            leases.push(json!({"ip-address": ip, "mac-address": mac, "hostname": name, "client-id": format!("ff:{mac}"), "expiry-time": expiry}));
        }
        self.bench.virsh(self.uri, &["-q", &commands])?;
        self.edit_leases(|current| current.extend(leases))
    }

    /// Undefines every `bn-inv-` domain and drops our lease entries; best effort.
    fn remove(&self) {
        let names = self.bench.virsh(self.uri, &["list", "--all", "--name"]).unwrap_or_default();
        let commands: String = names
            .lines()
            .map(str::trim)
            .filter(|n| n.starts_with("bn-inv-"))
            .map(|n| format!("undefine {n};"))
            .collect();
        if !commands.is_empty() {
            let _ = self.bench.virsh(self.uri, &["-q", &commands]);
        }
        let _ = self.edit_leases(|current| {
            current.retain(|l| !l["mac-address"].as_str().unwrap_or("").starts_with(MAC_PREFIX))
        });
    }

    /// Rewrites the lease file atomically; dnsmasq's helper may rewrite it between read and
    /// rename, so the window is kept to one read and one write.
    fn edit_leases(&self, edit: impl FnOnce(&mut Vec<Value>)) -> Result<()> {
        let mut leases: Vec<Value> = std::fs::read_to_string(&self.lease_file)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
        edit(&mut leases);
        let partial = self.lease_file.with_extension("status.bn-partial");
        std::fs::write(&partial, serde_json::to_string_pretty(&leases)?)?;
        std::fs::rename(&partial, &self.lease_file)?;
        Ok(())
    }
}
