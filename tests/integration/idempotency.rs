//! Every module and every state through the binaries as Ansible runs them, in community.libvirt's
//! `define_check_mode` pattern: check mode, for real, for real again, check mode again. The
//! second run must change nothing; the outcomes are printed as a table.
//!
//! One guest (`a`) is booted once and carries kvm_provision's running/stopped states, the
//! snapshots and guest_provision's lifecycle; a second one (`b`) is only defined and stays
//! shut off for kvm_provision's `present` and the backing-file mode.

use std::path::Path;
use std::process::Command;

use bed::Bed;
use serde_json::{json, Value};

/// What the four runs of one row must report as `changed`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// The first run changes something, the second nothing: changed, changed, ok, ok.
    Converges,
    /// Nothing ever changes (lists, pings, plans, probes): ok four times.
    ReadOnly,
    /// A documented action that libvirt cannot tell apart from a no-op (reverting to a
    /// snapshot: nothing records whether the disks changed since), so every run does it.
    EveryRun,
}

impl Expect {
    fn pattern(self) -> [bool; 4] {
        match self {
            Expect::Converges => [true, true, false, false],
            Expect::ReadOnly => [false; 4],
            Expect::EveryRun => [true; 4],
        }
    }
}

/// One line of the table: the `changed` of check, first, second, check again.
struct Row {
    module: &'static str,
    case: String,
    expect: Expect,
    changed: [bool; 4],
}

/// Collects the rows; prints the table (and fails on a mismatch) at the end of the scenario.
#[derive(Default)]
struct Table(Vec<Row>);

impl Table {
    /// Runs `module` with `args` in check mode, twice for real, and in check mode again;
    /// returns the reply of the first real run. A failed run stops the test at once.
    fn twice(&mut self, module: &'static str, case: &str, args: Value, expect: Expect) -> Value {
        let bed = Bed::get();
        let checked = with(args.clone(), json!({ "_ansible_check_mode": true }));
        let replies = [checked.clone(), args.clone(), args, checked].map(|args| {
            let reply = bed.run_module(module, args.clone());
            assert_ne!(reply["failed"], true, "{module} {case}: {args} failed: {reply}\n{}", self.render());
            reply
        });
        let changed = replies.each_ref().map(|reply| reply["changed"] == true);
        self.0.push(Row { module, case: case.to_string(), expect, changed });
        let [_, first, ..] = replies;
        first
    }

    fn render(&self) -> String {
        let word = |changed: bool| if changed { "changed" } else { "ok" };
        let mut out = String::from("module           | state/options                                | check   | first   | second  | check again\n");
        out.push_str("-----------------|----------------------------------------------|---------|---------|---------|------------\n");
        for row in &self.0 {
            let [check, first, second, again] = row.changed.map(word);
            let note = match row.expect {
                Expect::EveryRun => "  (acts on every run, by design)",
                _ => "",
            };
            let mark = if row.changed == row.expect.pattern() { "" } else { "  <-- NOT AS EXPECTED" };
            out.push_str(&format!(
                "{:<16} | {:<44} | {check:<7} | {first:<7} | {second:<7} | {again}{note}{mark}\n",
                row.module, row.case
            ));
        }
        out
    }

    /// Prints the table and fails when a row did not follow its pattern.
    fn finish(&self) {
        let table = self.render();
        eprintln!("\nIdempotency table (check mode, first run, second run, check mode again):\n{table}");
        let wrong: Vec<String> = self
            .0
            .iter()
            .filter(|r| r.changed != r.expect.pattern())
            .map(|r| format!("{} {}", r.module, r.case))
            .collect();
        assert!(wrong.is_empty(), "not idempotent: {}\n{table}", wrong.join(", "));
    }
}

fn with(mut args: Value, extra: Value) -> Value {
    for (key, value) in extra.as_object().expect("an object").clone() {
        args[key] = value;
    }
    args
}

/// Removes both guests, their volumes and any backing file left behind, however the test ends.
struct Cleanup {
    names: [String; 2],
    phases: std::path::PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let bed = Bed::get();
        bed.run_module("kvm_provision", json!({ "uri": bed.uri, "vms": self.names.each_ref().map(|name| json!({ "name": name })), "state": "absent", "remove_storage": true }));
        for entry in std::fs::read_dir(&bed.disks_dir).into_iter().flatten().flatten() {
            let file = entry.file_name().to_string_lossy().into_owned();
            if self
                .names
                .iter()
                .any(|vm| file.starts_with(&format!("{vm}.qcow2")) || file.starts_with(&format!("{vm}-vda.")))
            {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        let _ = Command::new("virsh").args(["-c", &bed.uri, "pool-refresh", &bed.disks_pool]).output();
        let _ = std::fs::remove_dir_all(&self.phases);
    }
}

#[test]
#[ignore = "needs the test bed: cargo xtask test"]
fn every_module_and_state_twice_changes_nothing_the_second_time() {
    let bed = Bed::get();
    let prefix = bed.unique_name("id");
    let (a, b) = (format!("{prefix}-a"), format!("{prefix}-b"));
    let phases = bed::tempdir();
    let _cleanup = Cleanup { names: [a.clone(), b.clone()], phases: phases.clone() };
    let mut table = Table::default();

    let guest = |name: &str, extra: Value| {
        with(
            json!({
                "uri": bed.uri, "name": name, "image": bed.base_volume, "image_pool": bed.images_pool, "pool": bed.disks_pool,
                "memory": 384, "networks": [bed.network],
                "kernel": { "path": bed.kernel, "initrd": bed.initrd, "cmdline": bed::GUEST_CMDLINE },
            }),
            extra,
        )
    };

    // kvm_provision: b defined only, a started, then a's memory changed while it runs.
    table.twice("kvm_provision", "present", guest(&b, json!({ "state": "present" })), Expect::Converges);
    let running = guest(&a, json!({ "state": "running", "wait": "agent", "wait_timeout": 600 }));
    {
        let _slot = bed.boot_slot();
        table.twice("kvm_provision", "running, wait: agent", running.clone(), Expect::Converges);
    }
    let bigger = with(running, json!({ "memory": 512 }));
    table.twice("kvm_provision", "running, memory 384 -> 512", bigger.clone(), Expect::Converges);

    // snapshot_libvirt's snapshot mode on the running guest.
    let snapshot = |extra: Value| with(json!({ "uri": bed.uri, "name": a }), extra);
    let internal = snapshot(json!({ "snapshot": "id-int", "type": "internal" }));
    let external = snapshot(json!({ "snapshot": "id-ext", "type": "external" }));
    // libvirt 9.0 cannot delete an external snapshot whose parent is internal: one kind at a time.
    table.twice("snapshot_libvirt", "present, type: internal (with RAM)", internal.clone(), Expect::Converges);
    table.twice(
        "snapshot_libvirt",
        "reverted (internal)",
        with(internal.clone(), json!({ "state": "reverted" })),
        Expect::EveryRun,
    );
    table.twice(
        "snapshot_libvirt",
        "absent (internal)",
        with(internal, json!({ "state": "absent" })),
        Expect::Converges,
    );
    table.twice("snapshot_libvirt", "present, type: external (quiesced)", external.clone(), Expect::Converges);
    table.twice("snapshot_libvirt", "list", snapshot(json!({ "state": "list" })), Expect::ReadOnly);
    table.twice(
        "snapshot_libvirt",
        "absent (external: merged)",
        with(external, json!({ "state": "absent" })),
        Expect::Converges,
    );

    // guest_provision's lifecycle on the same guest.
    std::fs::write(phases.join("init.yaml"), "- ansible.builtin.debug: msg=init\n").expect("write a phase file");
    let plan =
        table.twice("guest_provision", "phases", json!({ "state": "phases", "lookup_dir": phases }), Expect::ReadOnly);
    let revision = plan["revision"].as_str().unwrap_or_else(|| panic!("no revision: {plan}"));
    let cache = json!({ "uri": bed.uri, "name": a, "project_id": "idp", "revision": revision });
    let prepared = with(cache.clone(), json!({ "state": "cache_prepared" }));
    table.twice("guest_provision", "cache_prepared (create, then restore clean)", prepared.clone(), Expect::EveryRun);
    table.twice("guest_provision", "cache_saved", with(cache, json!({ "state": "cache_saved" })), Expect::Converges);
    table.twice("guest_provision", "cache_prepared (restore init)", prepared, Expect::EveryRun);
    let lifecycle = json!({ "uri": bed.uri, "name": a, "retry_delay": 5, "retry_count": 12 });
    table.twice(
        "guest_provision",
        "stopped",
        with(lifecycle.clone(), json!({ "state": "stopped" })),
        Expect::Converges,
    );
    let started = {
        let _slot = bed.boot_slot();
        let started = with(lifecycle, json!({ "state": "started", "wait": "lease", "timeout": 600 }));
        table.twice("guest_provision", "started, wait: lease", started, Expect::Converges)
    };
    let ip = started["ansible_host"].as_str().unwrap_or_else(|| panic!("no ansible_host: {started}"));
    let reachable = json!({ "state": "reachable", "host": ip, "port": 22, "timeout": 300 });
    table.twice("guest_provision", "reachable, port 22", reachable, Expect::ReadOnly);

    table.twice("libvirt_ping", "(no uri)", json!({}), Expect::ReadOnly);
    table.twice("libvirt_ping", "uri", json!({ "uri": bed.uri }), Expect::ReadOnly);

    table.twice("kvm_provision", "stopped", with(bigger, json!({ "state": "stopped" })), Expect::Converges);

    // snapshot_libvirt's backing-file mode on the guest that never ran.
    let backing = |state: &str| json!({ "uri": bed.uri, "names": [b], "mode": "backing_file", "volume_path": bed.disks_dir, "state": state });
    let level_2 = |state: &str| with(backing(state), json!({ "snapshot": "l2" }));
    table.twice("snapshot_libvirt", "mode: backing_file, present", backing("present"), Expect::Converges);
    table.twice("snapshot_libvirt", "mode: backing_file, list", backing("list"), Expect::ReadOnly);
    table.twice("snapshot_libvirt", "mode: backing_file, present, level l2", level_2("present"), Expect::Converges);
    table.twice("snapshot_libvirt", "mode: backing_file, reverted (from l2)", backing("reverted"), Expect::Converges);
    table.twice("snapshot_libvirt", "mode: backing_file, absent, level l2", level_2("absent"), Expect::Converges);
    table.twice("snapshot_libvirt", "mode: backing_file, absent (merged back)", backing("absent"), Expect::Converges);
    assert!(!Path::new(&format!("{}/{b}.qcow2.bak", bed.disks_dir.display())).exists(), "the level is merged back");

    let gone =
        json!({ "uri": bed.uri, "vms": [{ "name": a }, { "name": b }], "state": "absent", "remove_storage": true });
    table.twice("kvm_provision", "absent, remove_storage (both guests)", gone, Expect::Converges);
    for name in [&a, &b] {
        assert!(!bed.disks_dir.join(format!("{name}.qcow2")).exists(), "{name}'s disk is deleted");
    }
    assert!(bed.base_image.exists(), "the base image is untouched");

    table.finish();
}
