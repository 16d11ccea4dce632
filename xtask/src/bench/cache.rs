//! The guest_provision cache: the role's first run (startup, clean snapshot, dependencies, an
//! init phase of about 60 s of real work, init snapshot, main, shutdown) against the next run,
//! which restores the init snapshot and skips dependencies and init. Both through
//! ansible-playbook, as users run the role, on a fresh guest each repetition.

use std::path::Path;

use anyhow::Result;
use serde_json::json;

use super::measure::{seconds, Row, Samples};
use super::{path_str, provision, Bench};

const SECTION: &str = "guest_provision cache (the role through ansible-playbook)";
const VM: &str = "bn-cache";
/// How long the init phase works in the guest.
const INIT_SECONDS: u32 = 60;

pub fn run(bench: &Bench) -> Result<Vec<Row>> {
    // The role finds the phase files relative to the playbook: it runs from bench/playbooks.
    let site = bench.root.join("bench/playbooks/cache/site.yml");
    let inventory = json!({ "vms": { "hosts": { VM: {
        "kvm_host": "localhost",
        "vm": { "metadata": { "name": VM, "connection": bench.bed("uri")?, "platform_name": "debian", "target_name": "amd64" } },
        "project_id": "bench",
        "guest_provision_wait": "lease",
        "connection_timeout": 600,
        "retry_count": 24,
        "retry_delay": 5,
        "ansible_python_interpreter": "/usr/bin/python3",
        "bench_init_seconds": INIT_SECONDS,
    } } } });
    let inventory_file = bench.work.join("cache_inventory.json");
    std::fs::write(&inventory_file, inventory.to_string())?;
    let (mut first, mut cached) = (Samples::default(), Samples::default());
    let measured = (0..bench.reps(2)).try_for_each(|rep| {
        eprintln!("bench: guest_provision cache, repetition {}", rep + 1);
        // A fresh guest each time, so that the first run really finds no snapshot.
        remove(bench);
        define(bench)?;
        first.push(seconds(|| playbook(bench, &inventory_file, &site))?);
        cached.push(seconds(|| playbook(bench, &inventory_file, &site))?);
        Ok::<_, anyhow::Error>(())
    });
    remove(bench);
    measured?;
    Ok(vec![Row::ours(
        SECTION,
        format!("cached run (init of {INIT_SECONDS} s restored from its snapshot)"),
        "s",
        cached,
    )
    .against("first run (dependencies, init, snapshots)", first)
    .goal(0.3)])
}

/// The guest defined and shut off: the role starts it, as users' playbooks have it.
fn define(bench: &Bench) -> Result<()> {
    let args = provision::with(provision::base_args(bench)?, json!({ "name": VM, "state": "present" }));
    bench.module("kvm_provision", &args).map(drop)
}

fn remove(bench: &Bench) {
    provision::remove(bench, &[VM.to_string()]);
}

fn playbook(bench: &Bench, inventory: &Path, site: &Path) -> Result<()> {
    let env = [
        ("ANSIBLE_PRIVATE_KEY_FILE", bench.bed("ssh_key")?),
        ("ANSIBLE_REMOTE_USER", bench.bed("ssh_user")?),
        ("ANSIBLE_PIPELINING", "True"),
    ];
    bench.ansible("ansible-playbook", &["-i", path_str(inventory)?, path_str(site)?], &env).map(drop)
}
