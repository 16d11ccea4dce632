//! kvm_provision against the bed: three guests in one call, idempotency, a change with its
//! diff, check mode, power transitions, removal with storage; then definitions that need no
//! boot: ansible_farm's format, a given XML, reservation and MAC conflicts, a remote URI,
//! and bad arguments.

use std::path::Path;
use std::time::{Duration, Instant};

use bed::Bed;
use serde_json::{json, Value};
use virtfarm_libvirt::{Hypervisor, PowerState};

/// Removes the VMs (and the volumes kvm_provision made for them) however the test ends.
struct Cleanup(Value);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let mut args = self.0.clone();
        args["state"] = json!("absent");
        args["remove_storage"] = json!(true);
        Bed::get().run_module("kvm_provision", args);
    }
}

fn guest_kernel(bed: &Bed) -> Value {
    json!({ "path": bed.kernel, "initrd": bed.initrd, "cmdline": bed::GUEST_CMDLINE })
}

/// Arguments every guest of the bed needs.
fn base_args(bed: &Bed) -> Value {
    json!({
        "uri": bed.uri, "image": bed.base_volume, "image_pool": bed.images_pool, "pool": bed.disks_pool,
        "memory": 384, "networks": [bed.network], "kernel": guest_kernel(bed),
    })
}

fn with(mut args: Value, extra: Value) -> Value {
    for (key, value) in extra.as_object().expect("an object").clone() {
        args[key] = value;
    }
    args
}

fn vms(result: &Value) -> &Vec<Value> {
    result["vms"].as_array().unwrap_or_else(|| panic!("no vms in {result}"))
}

fn memory_mib(hypervisor: &Hypervisor, name: &str) -> u64 {
    let xml = hypervisor.vm(name).expect("defined").xml(true).expect("xml");
    virtfarm_libvirt::domain_facts::DomainFacts::parse(&xml).expect("facts").memory_mib
}

fn assert_ok(result: &Value) {
    assert!(result.get("failed").is_none(), "module failed: {result}");
}

/// The main scenario, on one set of three guests so that each boots once or twice.
#[test]
#[ignore = "needs the test bed: cargo xtask test"]
fn three_guests_in_one_call_through_their_whole_life() {
    let bed = Bed::get();
    let hypervisor = Hypervisor::open(&bed.uri).expect("connect");
    let stem = format!("{}-n", bed.unique_name("kp"));
    let names: Vec<String> = (1..=3).map(|i| format!("{stem}{i:02}")).collect();
    let seeded = names[2].clone();
    let args = with(
        base_args(bed),
        json!({
            "stem": stem,
            // The third guest also gets a cloud-init seed.
            "vms": ["1", format!("{stem}2"), {"name": seeded, "cloud_init": {"runcmd": ["touch /var/tmp/seeded"]}}],
            "metadata": {"groups": ["kp"], "ansible_user": bed.ssh_user},
            "wait": "ssh", "wait_timeout": 900,
        }),
    );
    let _cleanup = Cleanup(args.clone());

    let started = Instant::now();
    let created = {
        let _slots = (bed.boot_slot(), bed.boot_slot());
        bed.run_module("kvm_provision", args.clone())
    };
    let boot_seconds = started.elapsed().as_secs_f64();
    assert_ok(&created);
    assert_eq!(created["changed"], true);
    let got: Vec<&str> = vms(&created).iter().map(|v| v["name"].as_str().expect("name")).collect();
    assert_eq!(got, names.iter().map(String::as_str).collect::<Vec<_>>(), "pool naming");
    for vm in vms(&created) {
        let ip = vm["ansible_host"].as_str().unwrap_or_else(|| panic!("no ansible_host: {vm}"));
        assert_eq!(vm["state"], "running");
        let user = bed.ssh_until_ok(ip, "id -un", Duration::from_secs(60));
        assert_eq!(user, bed.ssh_user);
        assert!(vm["disks"][0].as_str().expect("disk").starts_with(bed.disks_dir.to_str().expect("path")));
    }
    let seeded_ip = vms(&created)[2]["ip"].as_str().expect("ip").to_string();
    bed.ssh_until_ok(&seeded_ip, "test -e /var/tmp/seeded", Duration::from_secs(180));

    let again = bed.run_module("kvm_provision", args.clone());
    assert_ok(&again);
    assert_eq!(again["changed"], false, "second run: {again}");
    for (first, second) in vms(&created).iter().zip(vms(&again)) {
        assert_eq!((&first["uuid"], &first["mac"]), (&second["uuid"], &second["mac"]), "identity is stable");
    }

    let bigger = with(args.clone(), json!({ "memory": 512, "_ansible_diff": true }));
    let checked = bed.run_module("kvm_provision", with(bigger.clone(), json!({ "_ansible_check_mode": true })));
    assert_ok(&checked);
    assert_eq!(checked["changed"], true);
    assert_eq!(memory_mib(&hypervisor, &names[0]), 384, "check mode changed nothing");

    let changed = bed.run_module("kvm_provision", bigger.clone());
    assert_ok(&changed);
    assert_eq!(changed["changed"], true);
    let diff = &changed["diff"][0];
    assert!(diff["before"].as_str().expect("before").contains("393216"), "{diff}");
    assert!(diff["after"].as_str().expect("after").contains("524288"), "{diff}");
    assert_eq!(memory_mib(&hypervisor, &names[0]), 512);
    assert_eq!(bed.run_module("kvm_provision", bigger.clone())["changed"], false);

    // One guest through stopped and back; the others stay as they are.
    let first_only = with(bigger.clone(), json!({ "vms": ["1"], "wait": "lease" }));
    let stopped = bed.run_module("kvm_provision", with(first_only.clone(), json!({ "state": "stopped" })));
    assert_ok(&stopped);
    assert_eq!(vms(&stopped)[0]["state"], "shutoff");
    assert_eq!(hypervisor.vm(&names[0]).expect("vm").power_state().expect("state"), PowerState::ShutOff);
    let restarted = {
        let _slot = bed.boot_slot();
        bed.run_module("kvm_provision", first_only)
    };
    assert_ok(&restarted);
    assert_eq!(vms(&restarted)[0]["state"], "running");
    assert!(vms(&restarted)[0]["ip"].is_string(), "{restarted}");

    let gone =
        bed.run_module("kvm_provision", with(args.clone(), json!({ "state": "absent", "remove_storage": true })));
    assert_ok(&gone);
    for (name, vm) in names.iter().zip(vms(&created)) {
        assert!(hypervisor.find_vm(name).expect("lookup").is_none(), "{name} is gone");
        for disk in vm["disks"].as_array().expect("disks") {
            assert!(!Path::new(disk.as_str().expect("path")).exists(), "{disk} deleted");
        }
    }
    assert!(bed.base_image.exists(), "the base image is untouched");
    eprintln!("kvm_provision: three guests reachable over ssh after {boot_seconds:.1} s");
}

/// Definitions that need no boot: every one is defined (`present`) and removed again.
#[test]
#[ignore = "needs the test bed: cargo xtask test"]
fn definitions_conflicts_remote_uri_and_bad_arguments() {
    let bed = Bed::get();
    let hypervisor = Hypervisor::open(&bed.uri).expect("connect");
    let prefix = bed.unique_name("kp");

    // ansible_farm's VM definition, as its users have it.
    let legacy_name = format!("{prefix}-farm");
    let legacy = json!({ "uri": bed.uri, "state": "present", "vm": {
        "metadata": { "name": legacy_name, "hostname": "farm", "connection": "ssh",
                      "libvirt_pool_dir": format!("{}/", bed.disks_dir.display()), "platform_name": "debian_12",
                      "target_name": "amd64", "template": "default.xml.j2", "auth": { "user": "ansible", "password": "x" } },
        "arch": "x86_64", "virt_domain": "qemu", "machine": "q35", "cpu": "", "vcpus": 1, "ram": 320,
        "disks": [{ "type": "qcow2", "devname": "vda", "src": format!("{legacy_name}.qcow2") }],
        "net": { "type": "network", "source": bed.network },
    }});
    let _legacy_cleanup = Cleanup(legacy.clone());
    let defined = bed.run_module("kvm_provision", legacy.clone());
    assert_ok(&defined);
    let xml = hypervisor.vm(&legacy_name).expect("defined").xml(true).expect("xml");
    assert!(
        xml.contains("<vf:platform>debian_12</vf:platform>") && xml.contains("<vf:target>amd64</vf:target>"),
        "{xml}"
    );
    assert_eq!(memory_mib(&hypervisor, &legacy_name), 320);
    assert_eq!(bed.run_module("kvm_provision", legacy.clone())["changed"], false);

    // Check mode on a new guest changes nothing.
    let fresh = with(
        base_args(bed),
        json!({ "name": format!("{prefix}-fresh"), "state": "present", "_ansible_check_mode": true }),
    );
    let checked = bed.run_module("kvm_provision", fresh);
    assert_eq!(checked["changed"], true, "{checked}");
    assert!(hypervisor.find_vm(&format!("{prefix}-fresh")).expect("lookup").is_none());
    assert!(!bed.disks_dir.join(format!("{prefix}-fresh.qcow2")).exists());

    // A reservation, then another guest asking for the same address, then one with the same MAC.
    let owner = with(
        base_args(bed),
        json!({ "name": format!("{prefix}-owner"), "state": "present",
                "networks": [{ "network": bed.network, "ip": "10.77.0.251", "mac": "52:54:00:7f:00:01" }] }),
    );
    let _owner_cleanup = Cleanup(owner.clone());
    assert_ok(&bed.run_module("kvm_provision", owner.clone()));
    let thief = with(
        base_args(bed),
        json!({ "name": format!("{prefix}-thief"), "state": "present", "networks": [{ "network": bed.network, "ip": "10.77.0.251" }] }),
    );
    let _thief_cleanup = Cleanup(thief.clone());
    let refused = bed.run_module("kvm_provision", thief);
    assert_eq!(refused["failed"], true);
    let msg = refused["msg"].as_str().expect("msg");
    assert!(msg.contains("10.77.0.251 is already reserved") && msg.contains("52:54:00:7f:00:01"), "{msg}");
    let twin = with(
        base_args(bed),
        json!({ "name": format!("{prefix}-twin"), "state": "present", "networks": [{ "network": bed.network, "mac": "52:54:00:7f:00:01" }] }),
    );
    let _twin_cleanup = Cleanup(twin.clone());
    let refused = bed.run_module("kvm_provision", twin);
    assert!(
        refused["msg"].as_str().expect("msg").contains(&format!("already used by domain {prefix}-owner")),
        "{refused}"
    );
    let clash = with(
        base_args(bed),
        json!({ "name": format!("{prefix}-clash"), "state": "present",
                "networks": [{ "network": format!("{prefix}-net"), "subnet": "10.77.0.0/25" }] }),
    );
    let refused = bed.run_module("kvm_provision", clash);
    assert!(refused["msg"].as_str().expect("msg").contains("overlaps 10.77.0.0/24"), "{refused}");

    // A full domain XML, through the remote driver over a unix socket.
    let given_name = format!("{prefix}-xml");
    let remote_uri = "qemu+unix:///system?socket=/run/libvirt/libvirt-sock";
    let given = json!({ "uri": remote_uri, "name": given_name, "state": "present",
        "xml": "<domain type='qemu'><name>placeholder</name><memory unit='MiB'>256</memory><os><type arch='x86_64'>hvm</type></os></domain>" });
    let _given_cleanup = Cleanup(given.clone());
    let defined = bed.run_module("kvm_provision", given.clone());
    assert_ok(&defined);
    assert_eq!(vms(&defined)[0]["uri"], remote_uri);
    assert_eq!(memory_mib(&hypervisor, &given_name), 256);
    assert_eq!(bed.run_module("kvm_provision", given.clone())["changed"], false);

    // Every bad argument fails naming itself.
    let bad = [
        (json!({ "name": "kp-x", "image": "b", "memory": "lots" }), "memory"),
        (json!({ "name": "kp x", "image": "b" }), "name"),
        (json!({ "name": "kp-x", "image": "b", "state": "on" }), "state"),
        (json!({ "name": "kp-x", "image": "b", "wait_timeout": "soon" }), "wait_timeout"),
        (json!({ "name": "kp-x", "image": "b", "networks": [{ "network": "n", "mac": "1:2" }] }), "networks[0].mac"),
        (json!({ "name": "kp-x", "image": "b", "bogus": 1 }), "bogus"),
        (json!({ "stem": "kp", "vms": ["x1"], "image": "b" }), "vms[0]"),
        (
            json!({ "name": "kp-x", "uri": bed.uri, "image": "no-such-volume", "pool": bed.disks_pool, "state": "present" }),
            "image",
        ),
    ];
    for (args, parameter) in bad {
        let result = bed.run_module("kvm_provision", args.clone());
        assert_eq!(result["failed"], true, "{args} was accepted");
        assert!(result["msg"].as_str().expect("msg").contains(parameter), "{args}: {result}");
    }
}
