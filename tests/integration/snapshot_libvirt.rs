//! snapshot_libvirt on two booted guests, reused by every scenario: internal and external
//! snapshots with revert and delete, a group snapshot, check mode, idempotency, bad input;
//! and on domains that never boot: a group call failing part way, the largest timeouts.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use bed::{Bed, TestVm};
use serde_json::{json, Value};

const MODULE: &str = "snapshot_libvirt";

/// Runs the module and returns its result, after checking it did not fail.
fn ok(args: Value) -> Value {
    let reply = Bed::get().run_module(MODULE, args.clone());
    assert_ne!(reply["failed"], true, "{args} failed: {reply}");
    reply
}

/// Runs the module expecting a failure whose message starts with `prefix`.
fn fails(args: Value, prefix: &str) {
    let reply = Bed::get().run_module(MODULE, args.clone());
    assert_eq!(reply["failed"], true, "{args} should fail: {reply}");
    let msg = reply["msg"].as_str().unwrap_or_default();
    assert!(msg.starts_with(prefix), "{args}: message {msg:?} should start with {prefix:?}");
}

fn seconds(reply: &Value) -> f64 {
    reply["vms"][0]["seconds"].as_f64().unwrap_or(f64::NAN)
}

/// True when `path` exists in the guest (which must answer SSH within a minute).
fn exists(ip: &str, path: &str) -> bool {
    Bed::get().ssh_until_ok(ip, &format!("test -e {path} && echo yes || echo no"), Duration::from_secs(60)) == "yes"
}

/// Writes a file in the guest and flushes it to disk.
fn write(ip: &str, path: &str) {
    Bed::get().ssh_until_ok(ip, &format!("echo data > {path} && sync"), Duration::from_secs(60));
}

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap_or_default().to_string()
}

/// Removes what the external and backing-file scenarios may leave in the disks directory if they fail half-way.
struct Overlays(Vec<String>);

impl Drop for Overlays {
    fn drop(&mut self) {
        let bed = Bed::get();
        for entry in std::fs::read_dir(&bed.disks_dir).into_iter().flatten().flatten() {
            let file = entry.file_name().to_string_lossy().into_owned();
            if self
                .0
                .iter()
                .any(|vm| file.starts_with(&format!("{vm}-vda.")) || file.starts_with(&format!("{vm}.qcow2.")))
            {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        let _ = Command::new("virsh").args(["-c", &bed.uri, "pool-refresh", &bed.disks_pool]).output();
    }
}

/// Boots the two guests in parallel and returns them with their addresses.
fn two_guests() -> ((TestVm, String), (TestVm, String)) {
    let bed = Bed::get();
    let boot = |prefix: &str| {
        let vm = bed.boot_vm(&bed.unique_name(prefix));
        let ip = vm.wait_ip(Duration::from_secs(400));
        // Bounded generously: other tests may be booting guests on the same two cores.
        bed.ssh_until_ok(&ip, "true", Duration::from_secs(400));
        (vm, ip)
    };
    std::thread::scope(|s| {
        let a = s.spawn(|| boot("sn-a"));
        let b = s.spawn(|| boot("sn-b"));
        (a.join().unwrap(), b.join().unwrap())
    })
}

#[test]
#[ignore = "needs the test bed: cargo xtask test"]
fn internal_external_group_check_mode_and_bad_input_on_two_guests() {
    let bed = Bed::get();
    let ((a, ip_a), (b, ip_b)) = two_guests();
    let _overlays = Overlays(vec![a.name.clone(), b.name.clone()]);
    let uri = bed.uri.as_str();
    let base_before = sha256(&bed.base_image);

    // Bad input: every message names the option at fault.
    fails(json!({"uri": uri, "name": "sn-no-such-domain", "snapshot": "s"}), "name: ");
    fails(json!({"uri": uri, "names": [a.name, "sn-no-such-domain"], "snapshot": "s"}), "names: ");
    fails(json!({"uri": uri, "name": a.name, "snapshot": "../etc"}), "snapshot: ");
    fails(json!({"uri": uri, "name": a.name, "snapshot": "a/b"}), "snapshot: ");
    fails(json!({"uri": uri, "name": a.name, "snapshot": "tab\there"}), "snapshot: ");
    fails(json!({"uri": uri, "name": a.name, "snapshot": "never-taken", "state": "reverted"}), "snapshot: ");
    fails(json!({"uri": uri, "name": a.name, "snapshot": "x", "type": "external", "memory": true}), "memory: ");

    // Internal, running guest: check mode, create, idempotent create.
    let internal = json!({"uri": uri, "name": a.name, "snapshot": "clean"});
    let check = ok(
        json!({"uri": uri, "name": a.name, "snapshot": "clean", "_ansible_check_mode": true, "_ansible_diff": true}),
    );
    assert_eq!(check["changed"], true, "{check}");
    assert_eq!(check["diff"]["after"][&a.name], json!(["clean"]), "{check}");
    assert!(
        ok(json!({"uri": uri, "name": a.name, "state": "list"}))["snapshots"].as_array().unwrap().is_empty(),
        "check mode created nothing"
    );
    let created = ok(internal.clone());
    assert_eq!(
        (created["changed"].clone(), created["vms"][0]["type"].clone()),
        (json!(true), json!("internal")),
        "{created}"
    );
    assert_eq!(created["vms"][0]["memory"], true, "{created}");
    let internal_create = seconds(&created);
    assert_eq!(ok(internal.clone())["changed"], false, "present twice");

    // Change, revert, change gone, clock synced.
    write(&ip_a, "/home/ansible/after-internal");
    let revert = json!({"uri": uri, "name": a.name, "snapshot": "clean", "state": "reverted"});
    assert_eq!(
        ok(json!({"uri": uri, "name": a.name, "snapshot": "clean", "state": "reverted", "_ansible_check_mode": true}))
            ["changed"],
        true
    );
    assert!(exists(&ip_a, "/home/ansible/after-internal"), "check mode reverted nothing");
    let reverted = ok(revert.clone());
    assert_eq!(reverted["vms"][0]["clock"], "synced", "{reverted}");
    let internal_revert = seconds(&reverted);
    assert!(!exists(&ip_a, "/home/ansible/after-internal"), "the file written after the snapshot is gone");
    let guest_now: i64 = bed.ssh_until_ok(&ip_a, "date +%s", Duration::from_secs(30)).parse().unwrap();
    assert!((guest_now - virtfarm_libvirt::wait::unix_now()).abs() <= 5, "guest clock is {guest_now}");
    // libvirt cannot tell whether the disks changed since: a second revert reverts again.
    assert_eq!(ok(revert)["changed"], true);
    let listed = ok(json!({"uri": uri, "name": a.name, "state": "list"}));
    assert_eq!(listed["snapshots"][0]["name"], "clean");
    assert_eq!(listed["snapshots"][0]["current"], true);
    assert_eq!(listed["snapshots"][0]["type"], "internal");
    let absent = json!({"uri": uri, "name": a.name, "snapshot": "clean", "state": "absent"});
    assert_eq!(ok(absent.clone())["changed"], true);
    assert_eq!(ok(absent)["changed"], false, "absent twice");

    // External, quiesced, disk-only, no shutdown: a chain e1 <- e2 <- e3 with a file after each.
    let mut external_create = Vec::new();
    for (step, snapshot) in ["e1", "e2", "e3"].into_iter().enumerate() {
        let taken = ok(json!({"uri": uri, "name": a.name, "snapshot": snapshot, "type": "external", "quiesce": true}));
        let vm = &taken["vms"][0];
        assert_eq!((vm["type"].as_str(), vm["quiesce"].as_str()), (Some("external"), Some("fsfreeze")), "{taken}");
        external_create.push(seconds(&taken));
        write(&ip_a, &format!("/home/ansible/f{}", step + 1));
    }
    assert_eq!(ok(json!({"uri": uri, "name": a.name, "snapshot": "e3", "type": "external"}))["changed"], false);

    // Delete the middle one, then the newest: the running guest keeps every file.
    for snapshot in ["e2", "e3"] {
        let deleted = ok(json!({"uri": uri, "name": a.name, "snapshot": snapshot, "state": "absent"}));
        assert_eq!(deleted["changed"], true, "{deleted}");
        eprintln!("snapshot_libvirt: external delete of {snapshot} took {:.2} s", seconds(&deleted));
        for file in ["f1", "f2", "f3"] {
            assert!(exists(&ip_a, &format!("/home/ansible/{file}")), "{file} kept after deleting {snapshot}");
        }
    }

    // Revert to e1: a fresh overlay on e1's image, the old one removed, the files gone.
    let reverted = ok(
        json!({"uri": uri, "name": a.name, "snapshot": "e1", "state": "reverted", "after_revert": {"wait": "lease", "timeout": 400}}),
    );
    let vm = &reverted["vms"][0];
    assert_eq!((vm["type"].as_str(), vm["power_state"].as_str()), (Some("external"), Some("running")), "{reverted}");
    let removed: Vec<&str> = vm["removed_files"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert!(!removed.is_empty() && removed.iter().all(|f| !Path::new(f).exists()), "{reverted}");
    let external_revert = seconds(&reverted);
    let ip_a = vm["ip"].as_str().map_or(ip_a, str::to_string);
    bed.ssh_until_ok(&ip_a, "true", Duration::from_secs(120));
    for file in ["f1", "f2", "f3"] {
        assert!(!exists(&ip_a, &format!("/home/ansible/{file}")), "{file} gone after the revert to e1");
    }
    let listed = ok(json!({"uri": uri, "name": a.name, "state": "list"}));
    assert_eq!(listed["snapshots"].as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed["snapshots"][0]["current"], true, "{listed}");
    assert_eq!(ok(json!({"uri": uri, "name": a.name, "snapshot": "e1", "state": "absent"}))["changed"], true);
    assert_eq!(sha256(&bed.base_image), base_before, "the shared base image never changes");

    // A group: one snapshot of both guests, a file on each, revert both, files gone.
    let group = json!({"uri": uri, "names": [a.name, b.name], "snapshot": "g1"});
    let check = ok(json!({"uri": uri, "names": [a.name, b.name], "snapshot": "g1", "_ansible_check_mode": true}));
    assert_eq!(check["vms"].as_array().unwrap().len(), 2, "{check}");
    let taken = ok(group.clone());
    assert_eq!(taken["vms"].as_array().unwrap().len(), 2, "{taken}");
    assert_eq!(ok(group)["changed"], false);
    write(&ip_a, "/home/ansible/g");
    write(&ip_b, "/home/ansible/g");
    let reverted = ok(json!({"uri": uri, "names": [a.name, b.name], "snapshot": "g1", "state": "reverted"}));
    assert_eq!(reverted["vms"].as_array().unwrap().len(), 2, "{reverted}");
    assert!(!exists(&ip_a, "/home/ansible/g") && !exists(&ip_b, "/home/ansible/g"), "group revert");
    assert_eq!(
        ok(json!({"uri": uri, "names": [a.name, b.name], "snapshot": "g1", "state": "absent"}))["changed"],
        true
    );

    backing_file_levels(&b, &ip_b, &a.name);

    eprintln!(
        "snapshot_libvirt timings: internal create {internal_create:.2} s, revert {internal_revert:.2} s; \
         external create {external_create:?} s, revert (with fresh boot) {external_revert:.2} s"
    );
}

/// A group where the second domain fails rolls the first one's new snapshot back: `off` is
/// shut off (an internal snapshot without RAM works), the other runs (libvirt refuses one).
fn group_roll_back(off: &TestVm, running: &str) {
    let bed = Bed::get();
    let args =
        json!({"uri": bed.uri, "names": [off.name, running], "snapshot": "half", "type": "internal", "memory": false});
    let reply = bed.run_module(MODULE, args);
    assert_eq!(reply["failed"], true, "{reply}");
    assert!(reply["msg"].as_str().unwrap().contains(&format!("rolled back on {}", off.name)), "{reply}");
    let listed = ok(json!({"uri": bed.uri, "name": off.name, "state": "list"}));
    assert!(listed["snapshots"].as_array().unwrap().is_empty(), "{listed}");
}

/// The backing-file mode on a running guest (with the group roll-back on the way, `running` being the other guest): save (copy into `.bak`), commit, restore, a named
/// level on top, listing, a refused removal, and removing both levels back into the disk.
fn backing_file_levels(vm: &TestVm, ip: &str, running: &str) {
    let bed = Bed::get();
    let args = |state: &str, level: Option<&str>| {
        let mut args = json!({"uri": bed.uri, "names": [vm.name], "mode": "backing_file", "volume_path": bed.disks_dir, "state": state});
        if let Some(level) = level {
            args["snapshot"] = json!(level);
        }
        args
    };
    let disk = vm.disk.to_str().unwrap().to_string();
    let hv = virtfarm_libvirt::Hypervisor::open(&bed.uri).unwrap();
    let domain = hv.vm(&vm.name).unwrap();
    // Each call shuts the guest down and starts it again.
    let call = |args: Value| after_restart(&hv, &domain, || ok(args));
    write(ip, "/home/ansible/kept");
    let (saved, ip) = call(args("present", None));
    assert_eq!(saved["vms"][0]["action"], "created", "{saved}");
    eprintln!("snapshot_libvirt: backing_file create (with shutdown and start) {:.2} s", seconds(&saved));
    assert!(Path::new(&format!("{disk}.bak")).exists());
    write(&ip, "/home/ansible/committed");
    let (committed, ip) = call(args("present", None));
    assert_eq!(committed["vms"][0]["action"], "committed", "{committed}");
    eprintln!("snapshot_libvirt: backing_file commit (with shutdown and start) {:.2} s", seconds(&committed));
    write(&ip, "/home/ansible/dropped");
    let (restored, ip) = call(args("reverted", None));
    assert_eq!(restored["vms"][0]["action"], "restored", "{restored}");
    eprintln!("snapshot_libvirt: backing_file restore (with shutdown and start) {:.2} s", seconds(&restored));
    assert!(
        exists(&ip, "/home/ansible/committed") && !exists(&ip, "/home/ansible/dropped"),
        "restore keeps the committed state only"
    );

    // Offline from here: the module leaves a shut-off domain shut off.
    virtfarm_libvirt::power::stop(&domain, &virtfarm_libvirt::power::StopPolicy::default()).unwrap();
    group_roll_back(vm, running);
    assert_eq!(ok(args("present", Some("l2")))["vms"][0]["action"], "created");
    let listed = ok(args("list", None));
    let levels = listed["vms"][0]["levels"].as_array().unwrap().clone();
    assert_eq!(levels.len(), 2, "{listed}");
    assert!(levels.iter().any(|l| l["name"] == "l2" && l["current"] == true), "{listed}");
    fails(args("absent", None), &format!("{}: {disk}.bak is the base of", vm.name));
    ok(args("reverted", None));
    assert_eq!(ok(args("absent", Some("l2")))["changed"], true);
    assert_eq!(ok(args("absent", None))["changed"], true);
    assert_eq!(ok(args("absent", None))["changed"], false, "absent twice");
    assert!(ok(args("list", None))["vms"][0]["levels"].as_array().unwrap().is_empty());

    // Merged back: the guest boots from its own image with the committed data.
    let ((), ip) = after_restart(&hv, &domain, || domain.start().unwrap());
    assert!(exists(&ip, "/home/ansible/kept") && exists(&ip, "/home/ansible/committed"));
}

/// Runs `act`, which (re)starts `domain`, and waits until the guest answers SSH at its fresh
/// lease: it may come back with another address (its DHCP client id follows a machine-id
/// that the disk may not have kept).
fn after_restart<T>(
    hv: &virtfarm_libvirt::Hypervisor,
    domain: &virtfarm_libvirt::Vm,
    act: impl FnOnce() -> T,
) -> (T, String) {
    use virtfarm_libvirt::wait::{self, LeaseBaseline, Readiness, Signal};
    let bed = Bed::get();
    let baseline = LeaseBaseline::capture(hv, domain).unwrap();
    let out = act();
    let _slot = bed.boot_slot();
    let readiness = Readiness { signal: Signal::Lease, timeout: Duration::from_secs(400) };
    let ip = wait::wait_ready(hv, domain, &baseline, readiness).unwrap().ip.unwrap();
    bed.ssh_until_ok(&ip, "true", Duration::from_secs(300));
    (out, ip)
}

fn virsh(args: &[&str]) -> std::process::Output {
    Command::new("virsh").args(["-c", &Bed::get().uri]).args(args).output().expect("run virsh")
}

/// A group call that fails part way says what it changed: `changed` and the results of the
/// members it did change come with the failure; one refused for a member before it starts
/// changes nothing. Shut-off domains: nothing boots.
#[test]
#[ignore = "needs the test bed: cargo xtask test"]
fn a_group_call_failing_part_way_reports_the_members_it_changed() {
    let bed = Bed::get();
    let (a, b) = (bed.define_vm(&bed.unique_name("sn-pa")), bed.define_vm(&bed.unique_name("sn-pb")));
    let _overlays = Overlays(vec![a.name.clone(), b.name.clone()]);
    let uri = bed.uri.as_str();
    let pool_refresh = || virsh(&["pool-refresh", &bed.disks_pool]);
    let mut problems = Vec::new();
    let mut expect_partial = |what: &str, reply: &Value, changed_domain: &str, failed_domain: &str| {
        assert_eq!(reply["failed"], true, "{what}: {reply}");
        assert!(reply["msg"].as_str().unwrap_or_default().contains(failed_domain), "{what}: {reply}");
        if reply["changed"] != true {
            problems.push(format!("{what}: changed is not true although {changed_domain} changed: {reply}"));
        }
        let vms = reply["vms"].as_array().cloned().unwrap_or_default();
        if !vms.iter().any(|vm| vm["name"] == changed_domain && vm["changed"] == true) {
            problems.push(format!("{what}: no result for {changed_domain}, which changed: {reply}"));
        }
    };
    ok(json!({"uri": uri, "name": a.name, "snapshot": "p", "type": "internal"}));
    ok(json!({"uri": uri, "name": b.name, "snapshot": "p", "type": "external"}));

    // Deleting: b's merge is refused (its snapshot's file is also the base of another image).
    let extra = bed.disks_dir.join(format!("{}-vda.extra.qcow2", b.name));
    let base = b.disk.to_str().unwrap();
    let made =
        Command::new("qemu-img").args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", base]).arg(&extra).status();
    assert!(made.unwrap().success());
    pool_refresh();
    let reply =
        bed.run_module(MODULE, json!({"uri": uri, "names": [a.name, b.name], "snapshot": "p", "state": "absent"}));
    expect_partial("absent", &reply, &a.name, &b.name);
    let _ = std::fs::remove_file(&extra);
    pool_refresh();

    // Reverting: b's snapshot file is out of its pool for the call, a reverts.
    ok(json!({"uri": uri, "name": a.name, "snapshot": "p", "type": "internal"}));
    let aside = b.disk.with_extension("qcow2.aside");
    std::fs::rename(&b.disk, &aside).unwrap();
    pool_refresh();
    let reply =
        bed.run_module(MODULE, json!({"uri": uri, "names": [a.name, b.name], "snapshot": "p", "state": "reverted"}));
    std::fs::rename(&aside, &b.disk).unwrap();
    pool_refresh();
    expect_partial("reverted", &reply, &a.name, &b.name);
    ok(json!({"uri": uri, "name": a.name, "snapshot": "p", "state": "absent"}));

    // The backing-file mode refuses the whole group before it changes anything when a member
    // cannot be done: b's snapshot overlay stands on its disk (listed by libvirt or not).
    let args = |state: &str| json!({"uri": uri, "names": [a.name, b.name], "mode": "backing_file", "volume_path": bed.disks_dir, "state": state});
    let a_level = format!("{}.bak", a.disk.display());
    for forget in [false, true] {
        if forget {
            assert!(virsh(&["snapshot-delete", &b.name, "p", "--metadata"]).status.success());
        }
        let reply = bed.run_module(MODULE, args("present"));
        assert_eq!(reply["failed"], true, "{reply}");
        assert!(reply["msg"].as_str().unwrap_or_default().contains(&b.name), "{reply}");
        assert_ne!(reply["changed"], true, "{reply}");
        assert!(!Path::new(&a_level).exists(), "a's level was made by a refused call: {reply}");
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

/// Timeouts too large for the clock are valid and must not overflow its arithmetic: a
/// revert with RAM of a running domain (firmware only, no agent) with the largest timeout.
#[test]
#[ignore = "needs the test bed: cargo xtask test"]
fn the_largest_timeouts_do_not_overflow_the_clock() {
    let bed = Bed::get();
    let name = bed.unique_name("sn-huge");
    let _vm = crate::faults::firmware_only_vm(&name, false);
    let taken = ok(json!({"uri": bed.uri, "name": name, "snapshot": "h", "type": "internal"}));
    assert_eq!(taken["vms"][0]["memory"], true, "{taken}");
    let started = std::time::Instant::now();
    let reverted = bed.run_module(
        MODULE,
        json!({"uri": bed.uri, "name": name, "snapshot": "h", "state": "reverted",
               "after_revert": {"timeout": i64::MAX, "sync_clock": true}}),
    );
    assert_ne!(reverted["failed"], true, "{reverted}");
    let vm = &reverted["vms"][0];
    assert_eq!((vm["power_state"].as_str(), vm["clock"].as_str()), (Some("running"), Some("failed")), "{reverted}");
    assert!(started.elapsed() < Duration::from_secs(60), "took {:?}: {reverted}", started.elapsed());
}
