//! The bootable image booted as users boot theirs: no kernel given, under BIOS and under UEFI at
//! once, reached over SSH as the user cloud-init made from the seed (the image has none); then
//! on the UEFI guest: an external snapshot and, shut off, its revert (the NVRAM restored, checked
//! byte for byte), the NVRAM and the vTPM's state kept on redefinition, guest_provision's cache,
//! and removal with its NVRAM, the snapshots' copies and the TPM state. The UEFI guest has a TPM
//! 2.0 (swtpm), seen by its kernel.

use std::path::Path;
use std::time::Duration;

use bed::Bed;
use serde_json::{json, Value};
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
    let efi_vm = json!({ "name": efi, "firmware": "efi", "tpm": true, "cloud_init": seed(&efi) });
    let args = json!({
        "uri": bed.uri, "image": bed.bootable_volume, "image_pool": bed.images_pool, "pool": bed.disks_pool,
        "memory": 512, "networks": [bed.network], "wait": "ssh", "wait_timeout": 900,
        "vms": [{ "name": bios, "cloud_init": seed(&bios) }, efi_vm],
    });
    let _cleanup = Cleanup(args.clone());

    let (created, boot_seconds) = boot_with_two_slots(bed, &args);
    let probe =
        "id -un; hostname; test -d /sys/firmware/efi && echo uefi || echo bios; getent passwd ansible || echo none; \
         cat /sys/class/tpm/tpm0/tpm_version_major 2>/dev/null || echo none";
    let tpms = [(&bios, "bios", "none"), (&efi, "uefi", "2")];
    for (vm, (name, firmware, tpm)) in vms(&created).iter().zip(tpms) {
        let ip = vm["ansible_host"].as_str().unwrap_or_else(|| panic!("no ansible_host: {vm}"));
        // sshd answers before cloud-init has made the user.
        let seen = bed.ssh_as_until_ok(USER, ip, probe, Duration::from_secs(300));
        assert_eq!(seen.lines().collect::<Vec<_>>(), [USER, name.as_str(), firmware, "none", tpm], "{name}");
    }
    eprintln!("bootable image: BIOS and UEFI guests, booted together, reachable over ssh after {boot_seconds:.1} s");
    assert_eq!(nvram(&hypervisor, &bios), None, "a BIOS guest has none");
    // The rest is the UEFI guest's: the BIOS guest's CPU goes back to the other tests.
    let bios_args = with(args.clone(), json!({ "vms": [{ "name": bios }], "state": "absent", "remove_storage": true }));
    assert_ok(&bed.run_module("kvm_provision", bios_args));

    let file = nvram(&hypervisor, &efi).expect("the UEFI guest has an NVRAM file");
    assert!(file.contains(&efi), "an NVRAM file of its own: {file}");

    // libvirt refuses internal snapshots of a UEFI guest: the default takes an external one,
    // with a copy of the NVRAM. Then the guest writes a file and a firmware variable.
    let snapshot = json!({ "uri": bed.uri, "name": efi, "snapshot": "first-boot" });
    assert_ok(&bed.run_module("snapshot_libvirt", snapshot.clone()));
    let listed = bed.run_module("snapshot_libvirt", json!({ "uri": bed.uri, "name": efi, "state": "list" }));
    assert_eq!(listed["snapshots"][0]["type"], "external", "{listed}");
    let copy = format!("{file}.first-boot.snapshot");
    let at_snapshot = std::fs::read(&copy).unwrap_or_else(|e| panic!("the snapshot's NVRAM copy {copy}: {e}"));
    let efi_ip = vms(&created)[1]["ansible_host"].as_str().expect("an address").to_string();
    let variable = "/sys/firmware/efi/efivars/VirtfarmTest-5a3c1e0d-7b2f-4d6e-9c8a-1f0e2d3c4b5a";
    let change =
        format!("sudo sh -c 'echo after > /var/tmp/after; printf \"\\007\\000\\000\\000x\" > {variable}; sync'");
    bed.ssh_as_until_ok(USER, &efi_ip, &change, Duration::from_secs(60));
    let efi_args = with(args.clone(), json!({ "vms": [efi_vm], "wait": "none", "state": "stopped" }));
    assert_ok(&bed.run_module("kvm_provision", efi_args.clone()));
    // swtpm keeps the TPM's state by the domain's UUID; it changes only while the guest runs.
    let uuid = hypervisor.vm(&efi).expect("defined").uuid().expect("its UUID");
    let tpm = Path::new("/var/lib/libvirt/swtpm").join(uuid).join("tpm2/tpm2-00.permall");
    let tpm_state = std::fs::read(&tpm).unwrap_or_else(|e| panic!("the TPM state {}: {e}", tpm.display()));
    assert_ne!(std::fs::read(&file).expect("read the NVRAM"), at_snapshot, "the new variable is in the NVRAM");

    // The revert, the domain off: its disks and its NVRAM are the snapshot's again.
    assert_ok(&bed.run_module("snapshot_libvirt", with(snapshot, json!({ "state": "reverted" }))));
    assert!(std::fs::read(&file).expect("read the NVRAM") == at_snapshot, "the revert restores the NVRAM");
    let redefined = bed.run_module("kvm_provision", with(efi_args.clone(), json!({ "memory": 640 })));
    assert_ok(&redefined);
    assert_eq!(redefined["changed"], true);
    assert!(std::fs::read(&file).expect("the redefinition keeps the NVRAM file") == at_snapshot, "and what it holds");
    assert!(std::fs::read(&tpm).expect("the redefinition keeps the TPM state") == tpm_state, "and what it holds");

    // guest_provision's cache on the UEFI guest: clean taken off, the guest started from the
    // reverted disks (the file and the variable written after first-boot are gone), the init
    // snapshot taken running, then restored.
    let lifecycle = |state: &str, extra: Value| {
        let mut args = json!({ "state": state, "name": efi, "uri": bed.uri, "project_id": "uefi", "revision": "r1" });
        args.as_object_mut().expect("an object").extend(extra.as_object().expect("an object").clone());
        let result = bed.run_module("guest_provision", args);
        assert_ok(&result);
        result
    };
    assert_eq!(lifecycle("cache_prepared", json!({}))["action"], "create clean");
    let started = {
        let _slot = bed.boot_slot();
        lifecycle("started", json!({ "wait": "ssh", "timeout": 600 }))
    };
    let ip = started["ansible_host"].as_str().unwrap_or_else(|| panic!("no ansible_host: {started}"));
    let after =
        format!("cat /var/tmp/after 2>/dev/null; test -e {variable} && echo variable; echo init > /var/tmp/init");
    assert_eq!(bed.ssh_as_until_ok(USER, ip, &after, Duration::from_secs(300)).trim(), "", "written after first-boot");
    let saved = lifecycle("cache_saved", json!({}));
    let init = saved["snapshot"].as_str().unwrap_or_else(|| panic!("no snapshot: {saved}")).to_string();
    lifecycle("stopped", json!({}));
    assert_eq!(lifecycle("cache_prepared", json!({}))["action"], "restore init");
    let listed = bed.run_module("snapshot_libvirt", json!({ "uri": bed.uri, "name": efi, "state": "list" }));
    let kinds: Vec<(&str, &str)> = listed["snapshots"]
        .as_array()
        .expect("a list")
        .iter()
        .map(|s| (s["name"].as_str().expect("a name"), s["type"].as_str().expect("a type")))
        .collect();
    assert_eq!(kinds, [("first-boot", "external"), ("uefi.clean", "external"), (init.as_str(), "external")]);

    let removed = with(efi_args, json!({ "state": "absent", "remove_storage": true }));
    assert_ok(&bed.run_module("kvm_provision", removed));
    let dir = Path::new(&file).parent().expect("a directory");
    let left: Vec<String> = std::fs::read_dir(dir)
        .expect("the NVRAM directory")
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| name.starts_with(&efi))
        .collect();
    assert!(left.is_empty(), "the NVRAM file and its snapshots' copies go with the VM: {left:?}");
    assert!(!tpm.parent().is_some_and(Path::exists), "so does the TPM state");
}
