//! Fleets: one playbook over two hypervisors (`cargo xtask fleet up` adds the second next to the
//! bed). Four VMs are placed, provisioned in parallel, snapshotted as a group and listed by one
//! inventory run; a re-run changes nothing; a hypervisor stopped mid-run fails only its VMs, and
//! clearly; then everything is removed. The same four VMs on one hypervisor give the comparison.
//! An image file on the controller is imported over ssh into the second hypervisor's pool.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bed::{AnsibleRun, Bed};
use serde::Deserialize;
use serde_json::{json, Value};

/// What `fleet.json` says about the second hypervisor.
#[derive(Debug, Deserialize)]
pub(crate) struct Fleet {
    /// Its URI from the bed's namespace (libvirt over ssh).
    uri: String,
    /// Its sshd's address.
    pub(crate) address: String,
    /// The key its sshd accepts for root.
    pub(crate) ssh_key: PathBuf,
    /// Its socket from this host, for checks that need no ssh.
    local_uri: String,
    /// The directory holding its sockets and pid files.
    #[serde(skip)]
    run_dir: PathBuf,
}

impl Fleet {
    pub(crate) fn get() -> Fleet {
        let run_dir = PathBuf::from("/run/virtfarm-fleet");
        let path = run_dir.join("fleet.json");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!("the second hypervisor is not up ({}: {e}); run `cargo xtask fleet up`", path.display())
        });
        Fleet { run_dir, ..serde_json::from_str(&text).unwrap() }
    }

    pub(crate) fn pid(&self, daemon: &str) -> String {
        std::fs::read_to_string(self.run_dir.join(format!("{daemon}.pid"))).unwrap().trim().to_string()
    }

    /// Stops its libvirtd (the guests keep running, as on a real host whose daemon dies).
    fn stop_libvirtd(&self) {
        assert!(Command::new("kill").arg(self.pid("libvirtd")).status().unwrap().success());
        wait_until(Duration::from_secs(20), "the second libvirtd to stop", || !self.answers());
    }

    /// Starts it again inside the namespaces its sshd lives in.
    fn start_libvirtd(&self) {
        let pid_file = self.run_dir.join("libvirtd.pid");
        let status = Command::new("nsenter")
            .args(["-t", &self.pid("sshd"), "-m", "-n", "libvirtd", "-d", "-p"])
            .arg(&pid_file)
            .status()
            .unwrap();
        assert!(status.success());
        wait_until(Duration::from_secs(30), "the second libvirtd to answer", || self.answers());
    }

    fn answers(&self) -> bool {
        virsh(&self.local_uri, &["version"]).is_some()
    }
}

fn virsh(uri: &str, args: &[&str]) -> Option<String> {
    let out = Command::new("virsh").args(["-c", uri]).args(args).output().unwrap();
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

pub(crate) fn wait_until(bound: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + bound;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Runs the playbook's removal phase on drop, so that a failed assertion leaves no VM behind.
struct Removal(Value);

impl Drop for Removal {
    fn drop(&mut self) {
        let _ = playbook(&self.0);
    }
}

/// Runs tests/ansible/fleet/fleet.yml on the controller with `vars`; returns the run and its time.
fn playbook(vars: &Value) -> (AnsibleRun, f64) {
    let dir = bed::tempdir();
    let vars_file = dir.join("vars.json");
    std::fs::write(&vars_file, vars.to_string()).unwrap();
    let site = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("ansible/fleet/fleet.yml");
    let started = Instant::now();
    let extra = format!("@{}", vars_file.display());
    let run = Bed::get().ansible("ansible-playbook", &["-i", "localhost,", site.to_str().unwrap(), "-e", &extra]);
    let seconds = started.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(&dir);
    (run, seconds)
}

/// The localhost result of the task named `task` (the loop's `results` for a loop).
fn task<'a>(doc: &'a Value, task: &str) -> &'a Value {
    let tasks = doc["plays"][0]["tasks"].as_array().expect("a play with tasks");
    let found = tasks.iter().find(|t| t["task"]["name"].as_str().is_some_and(|n| n.starts_with(task)));
    &found.unwrap_or_else(|| panic!("no task {task}: {doc}"))["hosts"]["localhost"]
}

fn changed(doc: &Value) -> u64 {
    doc["stats"]["localhost"]["changed"].as_u64().unwrap_or(0)
}

fn vars(hypervisors: &[&str], names: &[String], phase: &str) -> Value {
    let bed = Bed::get();
    json!({
        "hypervisors": hypervisors, "names": names, "phase": phase, "image": bed.base_volume,
        "images_pool": bed.images_pool, "disks_pool": bed.disks_pool, "network": bed.network,
        "kernel": { "path": bed.kernel, "initrd": bed.initrd, "cmdline": bed::GUEST_CMDLINE },
    })
}

/// Runs the playbook, asserting success, and returns its JSON document and time.
fn ok(vars: &Value, what: &str) -> (Value, f64) {
    let (run, seconds) = playbook(vars);
    assert!(run.success, "{what}: {}\n{}", run.stdout, run.stderr);
    (run.json(), seconds)
}

fn snapshots(uri: &str, vm: &str) -> Vec<String> {
    virsh(uri, &["snapshot-list", vm, "--name"]).unwrap_or_default().split_whitespace().map(str::to_string).collect()
}

#[test]
#[ignore = "needs the test bed: cargo xtask test"]
fn four_vms_on_two_hypervisors_from_one_playbook() {
    let bed = Bed::get();
    let fleet = Fleet::get();
    let two = [bed.uri.as_str(), fleet.uri.as_str()];
    let names: Vec<String> = (0..4).map(|_| bed.unique_name("fl")).collect();
    let _cleanup = Removal(vars(&two, &names, "down"));
    let local = |uri: &str| if uri == fleet.uri { fleet.local_uri.clone() } else { bed.uri.clone() };

    // Place, provision in parallel, snapshot the group.
    let (doc, two_hypervisors) = ok(&vars(&two, &names, "up"), "provisioning on two hypervisors");
    let provisioned = task(&doc, "Place and provision");
    let placement = provisioned["placement"].as_object().expect("a placement map").clone();
    let snapshotted = task(&doc, "Snapshot the group in one call");
    let taken = snapshotted["vms"].as_array().expect("one result per VM");
    assert_eq!(taken.len(), 4, "one call snapshots the group on both hypervisors: {snapshotted}");
    for (index, name) in names.iter().enumerate() {
        assert_eq!(placement[name], two[index % 2], "round robin: {placement:?}");
        let uri = local(two[index % 2]);
        assert_eq!(virsh(&uri, &["domstate", name]).unwrap().trim(), "running", "{name}");
        assert_eq!(snapshots(&uri, name), ["fleet-baseline"], "{name}");
    }
    // The controller's namespace reaches the second hypervisor's guests too.
    let remote_vm = provisioned["vms"].as_array().unwrap().iter().find(|v| v["uri"] == fleet.uri).unwrap();
    let ip = remote_vm["ip"].as_str().expect("an address from the lease");
    assert!(ip.starts_with("10.79.0."), "{ip}");
    let mac = bed.ssh_until_ok(ip, "cat /sys/class/net/eth0/address", Duration::from_secs(180));
    assert_eq!(mac, remote_vm["mac"].as_str().unwrap(), "ssh reached {ip}, which is not {}", remote_vm["name"]);

    // Re-run: the placement holds and nothing changes.
    let (again, rerun) = ok(&vars(&two, &names, "up"), "re-run");
    assert_eq!(changed(&again), 0, "{again}");
    assert_eq!(task(&again, "Place and provision")["placement"].as_object().unwrap(), &placement);

    // One inventory run over both hypervisors: every VM, grouped per hypervisor.
    let config_dir = bed::tempdir();
    let config = config_dir.join("fleet.libvirt_leases.yml");
    std::fs::write(&config, format!("plugin: virtfarm.libvirt.libvirt_leases\nuris: {}\n", json!(two))).unwrap();
    let listed = bed.ansible("ansible-inventory", &["-i", config.to_str().unwrap(), "--list"]);
    assert!(listed.success, "{}", listed.stderr);
    let inventory = listed.json();
    for name in &names {
        let uri = &inventory["_meta"]["hostvars"][name]["libvirt_uri"];
        assert_eq!(uri.get("__ansible_unsafe").unwrap_or(uri), &placement[name], "{name}: {inventory}");
        let hypervisor = if placement[name] == fleet.uri { "10_78_255_2" } else { "localhost" };
        let members = &inventory[format!("hypervisor_{hypervisor}")]["hosts"];
        assert!(
            members.as_array().is_some_and(|h| h.contains(&json!(name))),
            "{name} in hypervisor_{hypervisor}: {inventory}"
        );
    }

    // Revert the group across both hypervisors in one call: all back, each with its lease.
    let mut revert_vars = vars(&two, &names, "revert");
    revert_vars["placement_map"] = json!(placement);
    let (reverted, revert_seconds) = ok(&revert_vars, "group revert across hypervisors");
    let results = task(&reverted, "Revert the group in one call")["vms"].as_array().expect("revert results").clone();
    assert_eq!(results.len(), 4, "{results:?}");
    for result in &results {
        assert_eq!(result["power_state"], "running", "{result}");
        assert!(result["ip"].as_str().is_some_and(|ip| ip.starts_with("10.7")), "{result}");
    }

    // The second hypervisor's daemon stops: its VMs fail, by name and why; the others are fine.
    fleet.stop_libvirtd();
    let (run, _) = playbook(&vars(&two, &names, "up"));
    fleet.start_libvirtd();
    assert!(!run.success);
    let partial = task(&run.json(), "Place and provision").clone();
    assert_eq!(partial["failed"], true, "{partial}");
    let msg = partial["msg"].as_str().unwrap();
    for (index, name) in names.iter().enumerate() {
        let vm = partial["vms"].as_array().unwrap().iter().find(|v| v["name"] == *name).unwrap();
        if index % 2 == 1 {
            assert!(msg.contains(&format!("{name}: not placed, {} cannot be read", fleet.uri)), "{msg}");
            assert_eq!(vm["failed"], true, "{vm}");
        } else {
            assert_eq!((vm["failed"].as_bool(), vm["changed"].as_bool()), (None, Some(false)), "{vm}");
        }
    }

    // Remove everything; a second removal changes nothing.
    let (removed, _) = ok(&vars(&two, &names, "down"), "removal");
    assert!(changed(&removed) > 0);
    for (index, name) in names.iter().enumerate() {
        assert!(virsh(&local(two[index % 2]), &["domstate", name]).is_none(), "{name} is gone");
    }
    let (removed_again, _) = ok(&vars(&two, &names, "down"), "second removal");
    assert_eq!(changed(&removed_again), 0, "{removed_again}");

    // The same four VMs on one hypervisor, for the figures.
    let one_names: Vec<String> = (0..4).map(|_| bed.unique_name("fl")).collect();
    let _cleanup_one = Removal(vars(&[bed.uri.as_str()], &one_names, "down"));
    let (_, one_hypervisor) = ok(&vars(&[bed.uri.as_str()], &one_names, "up"), "provisioning on one hypervisor");
    ok(&vars(&[bed.uri.as_str()], &one_names, "down"), "removal from one hypervisor");
    eprintln!(
        "fleet figures: 4 VMs provisioned (running with a lease) and snapshotted: {two_hypervisors:.1} s on 2 hypervisors, \
         {one_hypervisor:.1} s on 1 (both share this machine's 2 cores); re-run {rerun:.1} s; \
         group revert of the 4 across both in one call {revert_seconds:.1} s"
    );
}

/// Deletes the volumes (and their import records) at these paths on drop, after the VMs that
/// stand on them are gone.
struct ImportedVolumes(virtfarm_libvirt::Hypervisor, Vec<String>);

impl Drop for ImportedVolumes {
    fn drop(&mut self) {
        for path in &self.1 {
            let _ = self.0.delete_volume(&format!("{path}{}", virtfarm_libvirt::import::RECORD_SUFFIX));
            let _ = self.0.delete_volume(path);
        }
    }
}

/// `qemu-img` with `args`, which must succeed; its stdout.
fn qemu_img(args: &[&str]) -> String {
    let out = Command::new("qemu-img").args(args).output().expect("qemu-img");
    assert!(out.status.success(), "qemu-img {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An image file on the controller imported over `qemu+ssh://` into the second hypervisor's
/// pool, then a linked clone defined from it (no boot); a second call reuses the volume; a raw
/// file is converted to qcow2; a missing file, a file that is no disk image and a volume name
/// that holds another image fail naming `image_upload`.
#[test]
#[ignore = "needs the test bed: cargo xtask test"]
fn an_image_file_on_the_controller_is_imported_once_then_cloned() {
    use crate::kvm_provision::{assert_ok, vms, with, Cleanup};

    let bed = Bed::get();
    let fleet = Fleet::get();
    let remote = virtfarm_libvirt::Hypervisor::open(&fleet.local_uri).expect("connect to the second hypervisor");
    let dir = bed::tempdir();
    let stem = bed.unique_name("up");
    // A few MiB with known data: 1 MiB of 0xa5 in a 16 MiB qcow2, 64 KiB of 0x5a in an 8 MiB raw file.
    let qcow2 = dir.join("small.qcow2").display().to_string();
    qemu_img(&["create", "-q", "-f", "qcow2", &qcow2, "16M"]);
    let raw = dir.join("small.img").display().to_string();
    qemu_img(&["create", "-q", "-f", "raw", &raw, "8M"]);
    for (file, format, command) in [(&qcow2, "qcow2", "write -P 0xa5 0 1M"), (&raw, "raw", "write -P 0x5a 1M 64k")] {
        let written = Command::new("qemu-io").args(["-f", format, "-c", command, file]).output().expect("qemu-io");
        assert!(written.status.success(), "{command} {file}");
    }
    let (volume, raw_volume) = (format!("{stem}-base.qcow2"), format!("{stem}-raw-base.qcow2"));
    // The second hypervisor's images pool is the bed's directory: its own disks pool keeps
    // what this test makes from the bed's tests.
    let images_dir = remote.pool_path("vfdisks").expect("the disks pool");
    let paths = [format!("{images_dir}/{volume}"), format!("{images_dir}/{raw_volume}")];
    let _volumes =
        ImportedVolumes(virtfarm_libvirt::Hypervisor::open(&fleet.local_uri).expect("connect"), paths.to_vec());
    let args = json!({
        "uri": fleet.uri, "state": "present", "image_pool": "vfdisks", "pool": "vfdisks", "memory": 256,
        "vms": [{ "name": stem, "image_upload": qcow2, "image": volume },
                { "name": format!("{stem}-raw"), "image_upload": raw, "image": raw_volume }],
    });
    let _cleanup = Cleanup(args.clone());

    let started = Instant::now();
    let imported = bed.run_module("kvm_provision", args.clone());
    let import_seconds = started.elapsed().as_secs_f64();
    assert_ok(&imported);
    for (vm, path) in vms(&imported).iter().zip(&paths) {
        assert!(vm["actions"].to_string().contains(&format!("image {path} imported from")), "{vm}");
        let base = remote.base_image(path, None).expect("the imported volume");
        assert_eq!(base.format, "qcow2", "{path}");
        // The clone stands on the imported volume, which holds what the file holds.
        let disk = vm["disks"][0].as_str().expect("a disk");
        let info: Value = serde_json::from_str(&qemu_img(&["info", "-U", "--output=json", disk])).expect("json");
        assert_eq!(info["backing-filename"], json!(path), "{info}");
    }
    qemu_img(&["compare", "-f", "qcow2", "-F", "qcow2", &qcow2, &paths[0]]);
    qemu_img(&["compare", "-f", "raw", "-F", "qcow2", &raw, &paths[1]]);
    assert_eq!(remote.base_image(&paths[0], None).unwrap().capacity, 16 << 20);
    assert_eq!(remote.base_image(&paths[1], None).unwrap().capacity, 8 << 20, "the raw file's size");
    let leftovers: Vec<String> = std::fs::read_dir(&images_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|f| f.starts_with(&stem) && f.ends_with(virtfarm_libvirt::import::UPLOAD_SUFFIX))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // Again: the volumes are reused as they are, nothing is uploaded.
    let modified = |path: &str| std::fs::metadata(path).and_then(|m| m.modified()).expect("mtime");
    let before: Vec<_> = paths.iter().map(|p| modified(p)).collect();
    let started = Instant::now();
    let again = bed.run_module("kvm_provision", args.clone());
    let reuse_seconds = started.elapsed().as_secs_f64();
    assert_ok(&again);
    assert_eq!(again["changed"], false, "{again}");
    assert_eq!(paths.iter().map(|p| modified(p)).collect::<Vec<_>>(), before);

    // Bad input fails naming the option, and defines nothing.
    let text = dir.join("notes.txt").display().to_string();
    std::fs::write(&text, "not a disk\n").unwrap();
    let other = format!("{stem}-bad");
    for (file, image, expected) in [
        (dir.join("missing.qcow2").display().to_string(), None, "cannot be read here"),
        (text, None, "is not a disk image"),
        (raw.clone(), Some(volume.clone()), "was imported from another file (small.qcow2"),
    ] {
        let mut vm = json!({ "name": other, "image_upload": file });
        if let Some(image) = image {
            vm["image"] = json!(image);
        }
        let refused = bed.run_module("kvm_provision", with(args.clone(), json!({ "vms": [vm] })));
        assert_eq!(refused["failed"], true, "{refused}");
        let msg = refused["msg"].as_str().expect("msg");
        assert!(msg.contains("image_upload: ") && msg.contains(expected), "{msg}");
        assert!(virsh(&fleet.local_uri, &["domstate", &other]).is_none(), "{other} was defined");
    }

    // A volume of that name that no import recorded is not taken, though its content begins
    // as the file's; with the upload a killed run left beside it, it is that run's unfinished
    // copy, imported again.
    let killed = format!("{stem}-killed-base.qcow2");
    let killed_path = format!("{images_dir}/{killed}");
    let _killed_volumes = ImportedVolumes(
        virtfarm_libvirt::Hypervisor::open(&fleet.local_uri).expect("connect"),
        vec![killed_path.clone()],
    );
    let truncated = std::fs::read(&qcow2).expect("the file")[..256 << 10].to_vec();
    std::fs::write(&killed_path, truncated).unwrap();
    let refresh = || assert!(virsh(&fleet.local_uri, &["pool-refresh", "vfdisks"]).is_some());
    refresh();
    let killed_args = with(args.clone(), json!({ "vms": [{ "name": other, "image_upload": qcow2, "image": killed }] }));
    let _killed_cleanup = Cleanup(killed_args.clone());
    let refused = bed.run_module("kvm_provision", killed_args.clone());
    assert!(
        refused["msg"].as_str().is_some_and(|m| m.contains("exists and was not imported from this file")),
        "{refused}"
    );
    let upload = format!("{killed_path}{}", virtfarm_libvirt::import::UPLOAD_SUFFIX);
    std::fs::write(&upload, b"").unwrap();
    refresh();
    let redone = bed.run_module("kvm_provision", killed_args);
    assert_ok(&redone);
    assert!(vms(&redone)[0]["actions"].to_string().contains("imported from"), "{redone}");
    qemu_img(&["compare", "-f", "qcow2", "-F", "qcow2", &qcow2, &killed_path]);
    assert!(!Path::new(&upload).exists(), "the leftover upload is deleted");

    let _ = std::fs::remove_dir_all(&dir);
    eprintln!("image upload figures: two small images imported over ssh and cloned in {import_seconds:.1} s; reused in {reuse_seconds:.1} s");
}
