//! Per-task cost: playbooks of N identical read-only tasks, ours against community.libvirt's
//! `virt`, on the local connection and over ssh to the second hypervisor, whose sshd runs in
//! its own namespace as a remote host would (see fleet.rs).
//!
//! Cost per task = (playbook wall time − an empty playbook's) / N, so Ansible's start-up is not
//! counted. Python modules get Ansible's documented best setting, pipelining; our binaries
//! cannot be pipelined and are copied on every task over ssh, which is what the figures show.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::Result;
use serde_json::json;

use super::measure::{seconds, Row, Samples};
use super::{path_str, Bench};
use crate::sh;

/// The idle domain whose state the domain-level tasks read, on both hypervisors.
const DOMAIN: &str = "bn-state";
const SECTION: &str = "Per-task cost (seconds per task, 50-task playbooks)";
const SECTION_QUICK: &str = "Per-task cost (seconds per task, 10-task playbooks)";

/// Where the tasks run: on the controller, or on the remote host over ssh.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Target {
    Local,
    Ssh,
}

/// Which hypervisor URI the tasks are given.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Uri {
    /// `qemu:///system` where the task runs (the bed's daemon locally, the fleet's remotely).
    System,
    /// The fleet's daemon through libvirt's ssh transport, from the controller.
    QemuSsh,
    /// The same with `command=ssh`: our binaries' shared ssh connection turned off, so every
    /// task opens an ssh session of its own.
    QemuSshUnshared,
}

/// One playbook to time: a task template repeated, run on a target against a URI.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct Run {
    template: &'static str,
    target: Target,
    uri: Uri,
}

const fn timed(template: &'static str, target: Target, uri: Uri) -> Run {
    Run { template, target, uri }
}

/// A row of the table: our run against the peer's, timed one right after the other.
struct Pair {
    figure: &'static str,
    ours: Run,
    peer_name: &'static str,
    peer: Run,
    goal: Option<f64>,
}

const PAIRS: &[Pair] = &[
    Pair {
        figure: "local, connection read: libvirt_ping uri=… vs virt list_vms",
        ours: timed("ours_ping", Target::Local, Uri::System),
        peer_name: "community.libvirt.virt list_vms",
        peer: timed("peer_list_vms", Target::Local, Uri::System),
        goal: Some(0.35),
    },
    Pair {
        figure: "local, domain read: snapshot_libvirt state=list vs virt status",
        ours: timed("ours_snapshot_list", Target::Local, Uri::System),
        peer_name: "community.libvirt.virt status",
        peer: timed("peer_status", Target::Local, Uri::System),
        goal: Some(0.35),
    },
    Pair {
        figure: "ssh to the remote host, connection read (ours copied each task; peer pipelined)",
        ours: timed("ours_ping", Target::Ssh, Uri::System),
        peer_name: "community.libvirt.virt list_vms",
        peer: timed("peer_list_vms", Target::Ssh, Uri::System),
        goal: None,
    },
    Pair {
        figure: "controller against qemu+ssh://remote, connection read",
        ours: timed("ours_ping", Target::Local, Uri::QemuSsh),
        peer_name: "community.libvirt.virt list_vms",
        peer: timed("peer_list_vms", Target::Local, Uri::QemuSsh),
        goal: None,
    },
    Pair {
        figure: "controller against qemu+ssh://remote, one ssh session per task (command=ssh) vs the peer pipelined over ssh",
        ours: timed("ours_ping", Target::Local, Uri::QemuSshUnshared),
        peer_name: "community.libvirt.virt list_vms over ssh, pipelined",
        peer: timed("peer_list_vms", Target::Ssh, Uri::System),
        goal: None,
    },
    Pair {
        figure: "controller against qemu+ssh://remote, shared ssh connection vs the peer pipelined over ssh",
        ours: timed("ours_ping", Target::Local, Uri::QemuSsh),
        peer_name: "community.libvirt.virt list_vms over ssh, pipelined",
        peer: timed("peer_list_vms", Target::Ssh, Uri::System),
        goal: Some(0.5),
    },
    Pair {
        figure: "libvirt_ping on the controller against qemu+ssh:// vs on the remote over ssh",
        ours: timed("ours_ping", Target::Local, Uri::QemuSsh),
        peer_name: "virtfarm libvirt_ping over ssh",
        peer: timed("ours_ping", Target::Ssh, Uri::System),
        goal: None,
    },
];

pub fn run(bench: &Bench) -> Result<Vec<Row>> {
    let tasks = if bench.quick { 10 } else { 50 };
    let inventories = Inventories::write(bench)?;
    let fleet_local = bench.fleet("local_uri")?.to_string();
    bench.remove_domain(bench.bed("uri")?, DOMAIN);
    bench.remove_domain(&fleet_local, DOMAIN);
    bench.define_idle_domain(bench.bed("uri")?, DOMAIN)?;
    bench.define_idle_domain(&fleet_local, DOMAIN)?;
    let measured = measure(bench, &inventories, tasks);
    bench.remove_domain(bench.bed("uri")?, DOMAIN);
    bench.remove_domain(&fleet_local, DOMAIN);
    let (ours, peers) = measured?;
    let section = if bench.quick { SECTION_QUICK } else { SECTION };
    let mut rows: Vec<Row> = PAIRS
        .iter()
        .zip(ours.into_iter().zip(peers))
        .map(|(pair, (ours, peer))| {
            let row = Row::ours(section, pair.figure, "s", ours).against(pair.peer_name, peer);
            match pair.goal {
                Some(limit) => row.goal(limit),
                None => row,
            }
        })
        .collect();
    rows.push(Row::ours(section, REMOTE_COMMAND, "s", remote_command(bench)?));
    Ok(rows)
}

const REMOTE_COMMAND: &str =
    "the remote host's part of any ssh task: `ssh host true` over a shared connection (its login shell starting)";

/// Seconds per `true` run over a shared ssh connection to the remote host: what its side costs
/// every task that runs over ssh, ours (`virt-ssh-helper`) and the peer's (Python), whatever
/// the client does.
fn remote_command(bench: &Bench) -> Result<Samples> {
    let control = bench.work.join("cp");
    std::fs::create_dir_all(&control)?;
    let control_path = format!("ControlPath={}/%C", control.display());
    let target = format!("root@{}", bench.fleet("address")?);
    #[rustfmt::skip]
    let args = ["netns", "exec", bench.bed("netns")?, "timeout", "30", "ssh", "-i", bench.fleet("ssh_key")?,
        "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
        "-o", "BatchMode=yes", "-o", "ControlMaster=auto", "-o", &control_path, "-o", "ControlPersist=5",
        &target, "true"];
    sh::output("ip", &args)?;
    let mut samples = Samples::default();
    for _ in 0..10 {
        samples.push(seconds(|| sh::output("ip", &args).map(drop))?);
    }
    Ok(samples)
}

/// Each pair's samples (ours, peer's); each distinct run is timed once per repetition.
fn measure(bench: &Bench, inventories: &Inventories, tasks: usize) -> Result<(Vec<Samples>, Vec<Samples>)> {
    let mut ours = vec![Samples::default(); PAIRS.len()];
    let mut peers = vec![Samples::default(); PAIRS.len()];
    for rep in 0..bench.reps(3) {
        eprintln!("bench: per-task repetition {}", rep + 1);
        let empty = time_playbook(bench, inventories, None, Target::Local, Uri::System)?;
        let mut per_task: HashMap<Run, f64> = HashMap::new();
        let mut cost = |run: Run| -> Result<f64> {
            if let Some(known) = per_task.get(&run) {
                return Ok(*known);
            }
            let total = time_playbook(bench, inventories, Some((run.template, tasks)), run.target, run.uri)?;
            let value = (total - empty).max(0.0) / tasks as f64;
            per_task.insert(run, value);
            Ok(value)
        };
        for (index, pair) in PAIRS.iter().enumerate() {
            ours[index].push(cost(pair.ours)?);
            peers[index].push(cost(pair.peer)?);
        }
    }
    Ok((ours, peers))
}

/// One inventory per target, each holding the single host `bench`.
struct Inventories {
    local: PathBuf,
    ssh: PathBuf,
}

impl Inventories {
    fn write(bench: &Bench) -> Result<Inventories> {
        // The venv's Python has libvirt-python, which the peer needs; the remote host shares
        // this machine's file system, so the same path works there.
        let python = bench.venv_bin("python")?;
        let local = json!({ "all": { "hosts": { "bench": {
            "ansible_connection": "local", "ansible_python_interpreter": python,
        } } } });
        let ssh = json!({ "all": { "hosts": { "bench": {
            "ansible_host": bench.fleet("address")?, "ansible_user": "root",
            "ansible_ssh_private_key_file": bench.fleet("ssh_key")?, "ansible_python_interpreter": python,
            // The harness's sshd has no sftp subsystem: without this every task of ours would
            // first try sftp and scp, a cost a normal host does not have.
            "ansible_ssh_transfer_method": "piped",
        } } } });
        let inventories =
            Inventories { local: bench.work.join("per_task_local.json"), ssh: bench.work.join("per_task_ssh.json") };
        std::fs::write(&inventories.local, local.to_string())?;
        std::fs::write(&inventories.ssh, ssh.to_string())?;
        Ok(inventories)
    }
}

/// Writes a playbook of `tasks` copies of a template (or none) and times it.
fn time_playbook(
    bench: &Bench,
    inventories: &Inventories,
    body: Option<(&str, usize)>,
    target: Target,
    uri: Uri,
) -> Result<f64> {
    let playbook = write_playbook(bench, body)?;
    let inventory = match target {
        Target::Local => &inventories.local,
        Target::Ssh => &inventories.ssh,
    };
    let uri = match uri {
        Uri::System => "qemu:///system".to_string(),
        Uri::QemuSsh => bench.fleet("uri")?.to_string(),
        Uri::QemuSshUnshared => format!("{}&command=ssh", bench.fleet("uri")?),
    };
    let extra = json!({ "bench_uri": uri, "bench_domain": DOMAIN }).to_string();
    let args = ["-i", path_str(inventory)?, path_str(&playbook)?, "-e", &extra];
    let attempt = || seconds(|| bench.ansible("ansible-playbook", &args, &[("ANSIBLE_PIPELINING", "True")]).map(drop));
    // Other test runs restart the daemons now and then (fault tests): one retry, then give up.
    attempt().or_else(|error| {
        eprintln!("bench: retrying {}: {error:#}", playbook.display());
        std::thread::sleep(std::time::Duration::from_secs(5));
        attempt()
    })
}

fn write_playbook(bench: &Bench, body: Option<(&str, usize)>) -> Result<PathBuf> {
    let mut playbook = String::from("- name: Per-task cost\n  hosts: bench\n  gather_facts: false\n  tasks:\n");
    let name = match body {
        None => {
            playbook += "    []\n";
            "per_task_empty.yml".to_string()
        }
        Some((template, tasks)) => {
            let path = bench.root.join("bench/playbooks/per_task").join(format!("{template}.yml"));
            let text = std::fs::read_to_string(&path)?;
            let task: String = text.lines().filter(|l| !l.starts_with('#')).map(|l| format!("    {l}\n")).collect();
            playbook += &task.repeat(tasks);
            format!("per_task_{template}_{tasks}.yml")
        }
    };
    let path = bench.work.join(name);
    std::fs::write(&path, playbook)?;
    Ok(path)
}
