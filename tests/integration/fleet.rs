//! Fleets: one playbook over two hypervisors (`cargo xtask fleet up` adds the second next to the
//! bed). Four VMs are placed, provisioned in parallel, snapshotted as a group and listed by one
//! inventory run; a re-run changes nothing; a hypervisor stopped mid-run fails only its VMs, and
//! clearly; then everything is removed. The same four VMs on one hypervisor give the comparison.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use bed::{AnsibleRun, Bed};
use serde::Deserialize;
use serde_json::{json, Value};

/// What `fleet.json` says about the second hypervisor.
#[derive(Debug, Deserialize)]
struct Fleet {
    /// Its URI from the bed's namespace (libvirt over ssh).
    uri: String,
    /// Its socket from this host, for checks that need no ssh.
    local_uri: String,
    /// The directory holding its sockets and pid files.
    #[serde(skip)]
    run_dir: PathBuf,
}

impl Fleet {
    fn get() -> Fleet {
        let run_dir = PathBuf::from("/run/virtfarm-fleet");
        let path = run_dir.join("fleet.json");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!("the second hypervisor is not up ({}: {e}); run `cargo xtask fleet up`", path.display())
        });
        Fleet { run_dir, ..serde_json::from_str(&text).unwrap() }
    }

    fn pid(&self, daemon: &str) -> String {
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

fn wait_until(bound: Duration, what: &str, mut done: impl FnMut() -> bool) {
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
