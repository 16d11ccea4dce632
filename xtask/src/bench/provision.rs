//! Provisioning and snapshots on booted guests of the bed.
//!
//! - N = 1, 2, 4 guests to ready (`wait: ssh`, checked from the bed's namespace) in one
//!   kvm_provision call against N calls one after the other, as a loop over the module would.
//!   The one call is watched (see boot.rs): per guest, its own power-on to sshd against
//!   power-on to the call's return, and what the call adds on top.
//! - Linked clone against `clone: full`: time of the call (defined, not started) and the blocks
//!   the new disk takes.
//! - Snapshots (their own section) on four guests provisioned in one call: internal with memory
//!   and external quiesced on one running guest, and the group snapshot of all four; `virsh`
//!   (what people script today) as the reference for the internal and group ones.

use std::os::unix::fs::MetadataExt;

use anyhow::{anyhow, Context, Result};
use serde_json::{json, Value};

use super::boot;
use super::measure::{seconds, Row, Samples};
use super::Bench;

const PROVISION: &str = "Provisioning (kvm_provision, wait: ssh, 1 vCPU, 384 MiB, TCG)";
const BOOT: &str =
    "Boot to sshd (host clock: libvirt's started event, the serial console's \"Started ssh.service\" line)";
const CLONES: &str = "Disks (kvm_provision state=present, the guest image as base)";
const SNAPSHOTS: &str = "Snapshots (snapshot_libvirt on running guests)";
const COUNTS: [usize; 3] = [1, 2, 4];

/// Clones, then 1, 2 and 4 guests to ready in one call against as many calls.
pub fn run(bench: &Bench) -> Result<Vec<Row>> {
    let mut rows = clones(bench)?;
    // Each count boots its guests twice; all counts together boot 14 guests, about 15 min under
    // TCG on a loaded 2-core machine: one repetition, even in a full run.
    for count in COUNTS {
        let together = names("bn-p", count);
        eprintln!("bench: {count} guest(s) to ready in one call");
        remove(bench, &together);
        let watched = boot::watch(bench.bed("uri")?, &together, || provision(bench, &together));
        remove(bench, &together);
        let one_call = watched.as_ref().map(|w| (w.returned - w.started).as_secs_f64()).map_err(|e| anyhow!("{e:#}"));
        let apart = names("bn-s", count);
        eprintln!("bench: {count} guest(s) to ready in {count} calls");
        let separate = timed_provision(bench, &apart, |names| {
            names.iter().try_for_each(|n| provision(bench, std::slice::from_ref(n)))
        });
        remove(bench, &apart);
        rows.push(
            Row::ours(PROVISION, format!("{count} guest(s) to ready in one call"), "s", Samples(vec![one_call?]))
                .against(format!("{count} separate calls"), Samples(vec![separate?])),
        );
        rows.extend(boot_rows(count, &watched?));
    }
    Ok(rows)
}

/// Per guest of a call: power-on to sshd started (the guest's own boot) beside power-on to the
/// call's return (ready as reported), and what the call adds after sshd (negative when the
/// call saw sshd answer before systemd printed its line); per call, what it takes beyond its
/// slowest guest's boot.
fn boot_rows(count: usize, watched: &boot::Watched) -> Vec<Row> {
    let one = |seconds: f64| Samples(vec![seconds]);
    let returned = watched.at(watched.returned);
    let mut rows = Vec::new();
    for boot in &watched.boots {
        let figure = |what: &str| format!("{count} in one call, {}: {what}", boot.name);
        let (power_on, sshd) = (watched.at(boot.power_on), watched.at(boot.sshd_started));
        rows.push(
            Row::ours(BOOT, figure("power-on to ready reported"), "s", one(returned - power_on))
                .against("power-on to sshd started (serial console)", one(sshd - power_on)),
        );
        rows.push(Row::ours(BOOT, figure("ready reported after sshd started"), "s", one(returned - sshd)).goal(1.0));
    }
    let boot_seconds = |b: &boot::Boot| watched.at(b.sshd_started) - watched.at(b.power_on);
    let slowest = watched.boots.iter().map(boot_seconds).fold(0.0, f64::max);
    let first_power_on = watched.boots.iter().map(|b| watched.at(b.power_on)).fold(f64::INFINITY, f64::min);
    rows.push(Row::ours(
        BOOT,
        format!("{count} in one call: call start to first power-on (define, clone)"),
        "s",
        one(first_power_on),
    ));
    rows.push(
        Row::ours(
            BOOT,
            format!("{count} in one call: call time beyond its slowest guest's power-on to sshd"),
            "s",
            one(returned - slowest),
        )
        .goal(1.0),
    );
    rows
}

/// Snapshot figures on four running guests provisioned for them in one call.
pub fn snapshots(bench: &Bench) -> Result<Vec<Row>> {
    let group = names("bn-g", 4);
    let figures = provision(bench, &group).and_then(|()| snapshot_figures(bench, &group));
    remove(bench, &group);
    figures
}

fn names(prefix: &str, count: usize) -> Vec<String> {
    (1..=count).map(|i| format!("{prefix}{count}-{i}")).collect()
}

/// Arguments every guest of the bed needs: the base image, direct kernel boot, the bed network.
///
/// No getty on the serial console: systemd stops printing unit status to a console a getty
/// runs on, and the boot figures read sshd's start from that status (see boot.rs).
pub(super) fn base_args(bench: &Bench) -> Result<Value> {
    Ok(json!({
        "uri": bench.bed("uri")?, "image": bench.bed("base_volume")?, "image_pool": bench.bed("images_pool")?,
        "pool": bench.bed("disks_pool")?, "memory": 384, "vcpus": 1, "networks": [bench.bed("network")?],
        "domain_type": "qemu",
        "kernel": { "path": bench.bed("kernel")?, "initrd": bench.bed("initrd")?, "cmdline": "root=/dev/vda rw console=ttyS0 net.ifnames=0 systemd.mask=serial-getty@ttyS0.service" },
    }))
}

/// `vms` entries by name (bare strings would be node specs, which need a `stem`).
fn vms(names: &[String]) -> Value {
    names.iter().map(|name| json!({ "name": name })).collect()
}

pub(super) fn with(mut args: Value, extra: Value) -> Value {
    if let (Some(args), Some(extra)) = (args.as_object_mut(), extra.as_object()) {
        args.extend(extra.clone());
    }
    args
}

/// Guests `names` running and answering ssh, in one call.
fn provision(bench: &Bench, names: &[String]) -> Result<()> {
    let args =
        with(base_args(bench)?, json!({ "vms": vms(names), "state": "running", "wait": "ssh", "wait_timeout": 900 }));
    bench.module("kvm_provision", &args).map(drop)
}

/// Wall time of `work` on guests that did not exist before (leftovers of a broken run removed).
fn timed_provision(bench: &Bench, names: &[String], work: impl FnOnce(&[String]) -> Result<()>) -> Result<f64> {
    remove(bench, names);
    seconds(|| work(names))
}

/// Removes the guests and the volumes kvm_provision made for them; best effort.
pub(super) fn remove(bench: &Bench, names: &[String]) {
    if names.is_empty() {
        return;
    }
    let removed = base_args(bench).and_then(|base| {
        bench.module(
            "kvm_provision",
            &with(base, json!({ "vms": vms(names), "state": "absent", "remove_storage": true, "stop_timeout": 5 })),
        )
    });
    if let Err(error) = removed {
        eprintln!("bench: removing {names:?}: {error:#}");
        for name in names {
            bench.remove_domain(bench.bed("uri").unwrap_or("qemu:///system"), name);
        }
    }
}

/// Time and allocated size of a linked clone against a full copy of the base image.
fn clones(bench: &Bench) -> Result<Vec<Row>> {
    let mut times = [Samples::default(), Samples::default()];
    let mut sizes = [Samples::default(), Samples::default()];
    for _ in 0..bench.reps(3) {
        for (index, clone) in ["linked", "full"].into_iter().enumerate() {
            let name = vec![format!("bn-clone-{clone}")];
            remove(bench, &name);
            let mut result = Value::Null;
            let args = with(base_args(bench)?, json!({ "vms": vms(&name), "state": "present", "clone": clone }));
            times[index].push(seconds(|| {
                result = bench.module("kvm_provision", &args)?;
                Ok(())
            })?);
            let disk = result["vms"][0]["disks"][0].as_str().with_context(|| format!("no disk in {result}"))?;
            sizes[index].push(std::fs::metadata(disk)?.blocks() as f64 * 512.0 / 1048576.0);
            remove(bench, &name);
        }
    }
    let [linked_time, full_time] = times;
    let [linked_size, full_size] = sizes;
    Ok(vec![
        Row::ours(CLONES, "define with a linked clone: time", "s", linked_time).against("clone: full", full_time),
        Row::ours(CLONES, "define with a linked clone: disk space allocated", "MiB", linked_size)
            .against("clone: full", full_size),
    ])
}

/// Create and revert times of each snapshot kind, ours next to virsh where virsh can do it.
fn snapshot_figures(bench: &Bench, group: &[String]) -> Result<Vec<Row>> {
    let first = group.first().context("no guests for the snapshot figures")?;
    let uri = bench.bed("uri")?;
    let snapshot = |names: &[String], name: &str, state: &str, extra: Value| -> Result<()> {
        let target = if names.len() == 1 { json!({ "name": names[0] }) } else { json!({ "names": names }) };
        let args = with(with(json!({ "uri": uri, "snapshot": name, "state": state }), target), extra);
        bench.module("snapshot_libvirt", &args).map(drop)
    };
    let virsh_each = |names: &[String], args: &[&str]| -> Result<()> {
        names.iter().try_for_each(|n| {
            let mut all = vec![args[0], n.as_str()];
            all.extend_from_slice(&args[1..]);
            bench.virsh(uri, &all).map(drop)
        })
    };
    let one = std::slice::from_ref(first);
    let kinds: [(&str, &[String], Value, bool); 3] = [
        ("internal with memory, 1 guest", one, json!({ "type": "internal", "memory": true }), true),
        ("external disk-only, quiesced, 1 guest", one, json!({ "type": "external", "quiesce": true }), false),
        ("group of 4 guests, internal with memory", group, json!({ "type": "internal", "memory": true }), true),
    ];
    let mut rows = Vec::new();
    for (kind, names, extra, virsh_peer) in kinds {
        let [mut create, mut revert, mut virsh_create, mut virsh_revert] = [(); 4].map(|()| Samples::default());
        for rep in 0..bench.reps(3) {
            eprintln!("bench: snapshots, {kind}, repetition {}", rep + 1);
            create.push(seconds(|| snapshot(names, "bn-snap", "present", extra.clone()))?);
            revert.push(seconds(|| snapshot(names, "bn-snap", "reverted", json!({})))?);
            snapshot(names, "bn-snap", "absent", json!({}))?;
            if virsh_peer {
                virsh_create.push(seconds(|| virsh_each(names, &["snapshot-create-as", "bn-virsh"]))?);
                virsh_revert.push(seconds(|| virsh_each(names, &["snapshot-revert", "bn-virsh"]))?);
                virsh_each(names, &["snapshot-delete", "bn-virsh"])?;
            }
        }
        let (create_row, revert_row) = (
            Row::ours(SNAPSHOTS, format!("{kind}: create"), "s", create),
            Row::ours(SNAPSHOTS, format!("{kind}: revert"), "s", revert),
        );
        if virsh_peer {
            rows.push(create_row.against("virsh snapshot-create-as (one by one)", virsh_create));
            rows.push(revert_row.against("virsh snapshot-revert (one by one, no clock sync)", virsh_revert));
        } else {
            rows.extend([create_row, revert_row]);
        }
    }
    Ok(rows)
}
