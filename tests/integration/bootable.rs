//! The bootable image booted as users boot theirs: no kernel given, under BIOS and under UEFI at
//! once, reached over SSH as the user cloud-init made from the seed (the image has none); then
//! the UEFI guest's external snapshot and its revert, and, shut off, its NVRAM: its own file, kept
//! on redefinition, removed with it.

use std::path::Path;
use std::time::Duration;

use bed::Bed;
use serde_json::json;
use virtfarm_libvirt::Hypervisor;

use crate::kvm_provision::{assert_ok, boot_with_two_slots, vms, with, Cleanup};

/// The user cloud-init makes.
const USER: &str = "tester";

/// The NVRAM file of `name`, if it has one. libvirt 9.0 picks UEFI firmware, and names the NVRAM,
/// when the domain starts: only the running domain's XML has it.
fn nvram(hypervisor: &Hypervisor, name: &str) -> Option<String> {
    let xml = hypervisor.vm(name).expect("defined").xml(false).expect("xml");
    let (_, rest) = xml.split_once("<nvram")?;
    let (_, rest) = rest.split_once('>')?;
    rest.split_once("</nvram>").map(|(path, _)| path.to_string())
}

#[test]
#[ignore = "needs the test bed: cargo xtask test"]
fn bios_and_uefi_guests_boot_the_bootable_image_to_ssh_as_the_cloud_init_user() {
    let bed = Bed::get();
    assert!(!bed.bootable_volume.is_empty(), "bed.json has no bootable_volume: run `cargo xtask bed up`");
    let hypervisor = Hypervisor::open(&bed.uri).expect("connect");
    let stem = bed.unique_name("bt");
    let (bios, efi) = (format!("{stem}-bios"), format!("{stem}-efi"));
    let key = std::fs::read_to_string(bed.ssh_key.with_extension("pub")).expect("the bed's public key");
    let seed = |hostname: &str| json!({ "user": USER, "ssh_authorized_keys": [key.trim()], "hostname": hostname });
    let efi_vm = json!({ "name": efi, "firmware": "efi", "cloud_init": seed(&efi) });
    let args = json!({
        "uri": bed.uri, "image": bed.bootable_volume, "image_pool": bed.images_pool, "pool": bed.disks_pool,
        "memory": 512, "networks": [bed.network], "wait": "ssh", "wait_timeout": 900,
        "vms": [{ "name": bios, "cloud_init": seed(&bios) }, efi_vm],
    });
    let _cleanup = Cleanup(args.clone());

    let (created, boot_seconds) = boot_with_two_slots(bed, &args);
    let probe =
        "id -un; hostname; test -d /sys/firmware/efi && echo uefi || echo bios; getent passwd ansible || echo none";
    for (vm, (name, firmware)) in vms(&created).iter().zip([(&bios, "bios"), (&efi, "uefi")]) {
        let ip = vm["ansible_host"].as_str().unwrap_or_else(|| panic!("no ansible_host: {vm}"));
        // sshd answers before cloud-init has made the user.
        let seen = bed.ssh_as_until_ok(USER, ip, probe, Duration::from_secs(300));
        assert_eq!(seen.lines().collect::<Vec<_>>(), [USER, name.as_str(), firmware, "none"], "{name}");
    }
    eprintln!("bootable image: BIOS and UEFI guests, booted together, reachable over ssh after {boot_seconds:.1} s");

    let file = nvram(&hypervisor, &efi).expect("the UEFI guest has an NVRAM file");
    assert!(file.contains(&efi), "an NVRAM file of its own: {file}");
    assert_eq!(nvram(&hypervisor, &bios), None, "a BIOS guest has none");

    // libvirt refuses internal snapshots of a UEFI guest: the default takes an external one. It
    // is reverted to once the guest is off (a revert of a running guest would boot it again).
    let snapshot = json!({ "uri": bed.uri, "name": efi, "snapshot": "first-boot" });
    assert_ok(&bed.run_module("snapshot_libvirt", snapshot.clone()));
    let listed = bed.run_module("snapshot_libvirt", json!({ "uri": bed.uri, "name": efi, "state": "list" }));
    assert_eq!(listed["snapshots"][0]["type"], "external", "{listed}");
    let efi_args = with(args.clone(), json!({ "vms": [efi_vm], "wait": "none", "state": "stopped" }));
    assert_ok(&bed.run_module("kvm_provision", efi_args.clone()));
    assert_ok(&bed.run_module("snapshot_libvirt", with(snapshot, json!({ "state": "reverted" }))));
    let before = std::fs::read(&file).expect("read the NVRAM");
    let redefined = bed.run_module("kvm_provision", with(efi_args.clone(), json!({ "memory": 640 })));
    assert_ok(&redefined);
    assert_eq!(redefined["changed"], true);
    assert!(std::fs::read(&file).expect("the redefinition keeps the NVRAM file") == before, "and what it holds");
    let removed = with(efi_args, json!({ "state": "absent", "remove_storage": true }));
    assert_ok(&bed.run_module("kvm_provision", removed));
    assert!(!Path::new(&file).exists(), "{file} is removed with the VM");
}
