//! ansible_farm's playbooks with only the role names changed: the Example Playbook of its
//! guest_provision README against an inventory in its shape (no `ansible_host`), its
//! libvirt_snapshot variables in that playbook's shape, and its kvm_provision role run on a
//! hypervisor host for a list of VMs. The VM definitions carry no cloud-init, as in
//! ansible_farm: the bed's direct-kernel image has its user and key baked in.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bed::{AnsibleRun, Bed, TestVm, GUEST_CMDLINE};
use serde_json::{json, Value};
use virtfarm_libvirt::naming::derived_mac;
use virtfarm_libvirt::{scan, Hypervisor, PowerState};

use crate::guest_provision::{assert_ok, outline, power_state, ran, result, snapshots, CACHE, SAVE, SHUTDOWN};

const DEPENDENCIES: &str = "phase dependencies generic";
const INIT: &str = "phase init platform";
const PROJECT: &str = "farm";

/// A copy of tests/ansible/ansible_farm, with the json callback, and an inventory.
struct Farm {
    dir: PathBuf,
}

impl Farm {
    fn new(inventory: &Value) -> Self {
        let dir = bed::tempdir();
        let ansible = Path::new(env!("CARGO_MANIFEST_DIR")).join("ansible");
        bed::copy_tree(&ansible.join("ansible_farm"), &dir);
        bed::copy_tree(&ansible.join("guest_provision/callback_plugins"), &dir.join("callback_plugins"));
        std::fs::write(dir.join("inventory.json"), inventory.to_string()).expect("write the inventory");
        Farm { dir }
    }

    /// Runs `playbook` with `extra` vars; returns the run and its wall time.
    fn run(&self, playbook: &str, extra: Value) -> (AnsibleRun, f64) {
        let started = Instant::now();
        let mut vars = json!({ "farm_fetch_dir": self.dir });
        vars.as_object_mut().expect("an object").extend(extra.as_object().expect("an object").clone());
        let inventory = self.dir.join("inventory.json");
        let playbook = self.dir.join(playbook);
        let run = Bed::get().ansible(
            "ansible-playbook",
            &["-i", inventory.to_str().expect("UTF-8"), playbook.to_str().expect("UTF-8"), "-e", &vars.to_string()],
        );
        (run, started.elapsed().as_secs_f64())
    }

    /// The guest's log as the main phase of run `run_id` found it on `host`.
    fn guest_log(&self, host: &str, run_id: u32) -> Vec<String> {
        let path = self.dir.join(format!("{host}-run{run_id}.log"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        text.lines().map(str::to_string).collect()
    }
}

impl Drop for Farm {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A VM definition in ansible_farm's format for the bed's image, on the disk
/// [`Bed::clone_disk`] made for `name`. Paths are given relative to `libvirt_pool_dir`, as
/// that format has them.
fn definition(bed: &Bed, name: &str) -> Value {
    let relative = |path: &Path| path.to_str().expect("UTF-8").trim_start_matches('/').to_string();
    let domain_type = Hypervisor::open(&bed.uri).expect("connect").preferred_domain_type().expect("capabilities");
    json!({
        "metadata": {
            "name": name, "hostname": name, "platform_name": "debian", "target_name": "amd64",
            "libvirt_pool_dir": "/", "connection": bed.uri, "auth": { "user": bed.ssh_user },
        },
        "virt_domain": domain_type.as_str(), "arch": "x86_64", "machine": "q35", "cpu": "", "vcpus": 1, "ram": 384,
        "disks": [{ "type": "qcow2", "devname": "vda", "src": relative(&bed.disks_dir.join(format!("{name}.qcow2"))) }],
        "kernel": { "src": relative(&bed.kernel), "initrd": relative(&bed.initrd), "params": GUEST_CMDLINE },
        "net": { "type": "network", "source": bed.network, "mac": derived_mac(name, 0) },
    })
}

/// The lines each phase leaves in the guest's log when dependencies and init ran in run
/// `init_run` and main in run `main_run`: the platform's init and the target's main win
/// over the generic files.
fn log(init_run: u32, main_run: u32) -> Vec<String> {
    vec![
        format!("dependencies generic {init_run}"),
        format!("init platform {init_run}"),
        format!("main target {main_run}"),
    ]
}

#[test]
#[ignore = "needs the test bed: cargo xtask test"]
fn the_guest_provision_readme_playbook_runs_with_fqcn_role_names() {
    let bed = Bed::get();
    let name = bed.unique_name("af");
    let _vm = TestVm { name: name.clone(), disk: bed.clone_disk(&name) };
    let inventory = json!({ "all": {
        "hosts": { "hv": { "ansible_connection": "local", "ansible_python_interpreter": "{{ ansible_playbook_python }}" } },
        "children": { "vms": { "hosts": { &name: {
            "kvm_host": "hv",
            "vm": definition(bed, &name),
            // Defined only: guest_provision starts it, after restoring a snapshot if it can.
            "kvm_provision_state": "present",
            "project_id": PROJECT,
            "connection_timeout": 600,
            "retry_count": 12,
            "retry_delay": 5,
            "ansible_python_interpreter": "/usr/bin/python3",
        } } } },
    } });
    let farm = Farm::new(&inventory);
    let _slot = bed.boot_slot();

    // 1. Defined by the kvm_provision role; guest_provision takes the clean snapshot, starts
    // it, finds it at its lease, runs dependencies and init, and takes the init snapshot.
    let (first, first_seconds) = farm.run("readme.yml", json!({ "run_id": 1 }));
    let doc = assert_ok(&first, "first run");
    assert_eq!(result(&doc, &name, CACHE)["action"], "create clean", "{}", outline(&doc, &name));
    assert_eq!(result(&doc, &name, "Start the VM")["ip_source"], "lease");
    assert!(ran(&doc, &name, SAVE) && ran(&doc, &name, SHUTDOWN));
    assert_eq!(farm.guest_log(&name, 1), log(1, 1));
    let init = result(&doc, &name, SAVE)["snapshot"].as_str().expect("the init snapshot").to_string();
    assert_eq!(snapshots(&name), sorted([format!("{PROJECT}.clean"), init.clone()]));
    assert_eq!(power_state(&name), PowerState::ShutOff);

    // 2. The init snapshot restored: dependencies and init skipped, the guest holds run 1's.
    let (second, cached_seconds) = farm.run("readme.yml", json!({ "run_id": 2 }));
    let doc = assert_ok(&second, "cached run");
    assert_eq!(result(&doc, &name, CACHE)["action"], "restore init", "{}", outline(&doc, &name));
    for task in [DEPENDENCIES, INIT, SAVE] {
        assert!(!ran(&doc, &name, task), "cached run: {task} ran");
    }
    assert_eq!(farm.guest_log(&name, 2), log(1, 2));

    // 3. The platform's init file changes: with the auto revision, clean is restored and
    // everything since rebuilt.
    let init_file = farm.dir.join("provision_phases/debian/init.yaml");
    std::fs::write(&init_file, std::fs::read_to_string(&init_file).expect("read") + "# edited\n").expect("edit");
    let (third, rebuild_seconds) = farm.run("readme.yml", json!({ "run_id": 3 }));
    let doc = assert_ok(&third, "run after the edit");
    assert_eq!(result(&doc, &name, CACHE)["action"], "restore clean", "{}", outline(&doc, &name));
    assert_eq!(farm.guest_log(&name, 3), log(3, 3));
    let new_init = result(&doc, &name, SAVE)["snapshot"].as_str().expect("the init snapshot").to_string();
    assert_ne!(new_init, init);
    eprintln!(
        "ansible_farm readme playbook: first run {first_seconds:.1} s, cached {cached_seconds:.1} s, \
         rebuild {rebuild_seconds:.1} s"
    );

    // ansible_farm's libvirt_snapshot variables: create one of the VM as it is (off), restore
    // the init snapshot, list; then delete the first.
    let listed = |what: Value| -> Vec<String> {
        let (run, _) = farm.run("snapshots.yml", what.clone());
        assert_ok(&run, &format!("snapshot role with {what}"));
        let path = farm.dir.join(format!("{name}-snapshots.json"));
        let mut names: Vec<String> =
            serde_json::from_str(&std::fs::read_to_string(path).expect("the list")).expect("JSON");
        names.sort();
        names
    };
    let all = listed(json!({ "create": "farm-off", "restore": new_init, "list": true }));
    assert_eq!(all, sorted([format!("{PROJECT}.clean"), new_init.clone(), "farm-off".to_string()]));
    assert_eq!(power_state(&name), PowerState::Running, "the init snapshot holds the running guest");
    let hypervisor = Hypervisor::open(&bed.uri).expect("connect");
    let domain = hypervisor.vm(&name).expect("the VM");
    let deadline = Instant::now() + Duration::from_secs(120);
    let ip = loop {
        if let Some((ip, _)) = scan::address_of(&hypervisor, &domain).expect("look the address up") {
            break ip;
        }
        assert!(Instant::now() < deadline, "{name} has no address after the restore");
        std::thread::sleep(Duration::from_secs(1));
    };
    let held = bed.ssh_until_ok(&ip, "cat /var/tmp/farm/log", Duration::from_secs(120));
    assert_eq!(held.lines().collect::<Vec<_>>(), log(3, 3)[..2], "the guest as its init snapshot holds it");

    // The shutdown_hypervisor handler, notified by a guest nested in this VM. No nesting under
    // TCG: the nested guest is a defined bed domain, and the libvirt steps delegated to the VM
    // standing in as its hypervisor run here, against the bed.
    let nested = bed.define_vm(&bed.unique_name("af-nested"));
    let stand_in = json!({ "all": { "children": {
        "hypervisor_vms": { "hosts": { &name: {
            "ansible_connection": "local", "kvm_host": "hv", "vm": definition(bed, &name),
        } } },
        "nested": { "hosts": { &nested.name: {
            "ansible_connection": "local", "kvm_host": name, "retry_count": 6, "retry_delay": 5,
            "vm": { "metadata": { "name": nested.name, "connection": bed.uri } },
        } } },
    }, "hosts": { "hv": { "ansible_connection": "local" } } } });
    let stand_in_path = farm.dir.join("nested.json");
    std::fs::write(&stand_in_path, stand_in.to_string()).expect("write the inventory");
    let playbook = farm.dir.join("nested.yml");
    let run = bed.ansible(
        "ansible-playbook",
        &[
            "-i",
            stand_in_path.to_str().expect("UTF-8"),
            playbook.to_str().expect("UTF-8"),
            "-e",
            "ansible_python_interpreter={{ ansible_playbook_python }}",
        ],
    );
    let doc = assert_ok(&run, "nested guest");
    let stopped = result(&doc, &nested.name, "Shut down the VM");
    assert_eq!(stopped["changed"], true, "{stopped}");
    assert_eq!(power_state(&name), PowerState::ShutOff, "the handler shuts the hypervisor VM down");

    let left = listed(json!({ "delete": "farm-off", "list": true }));
    assert_eq!(left, sorted([format!("{PROJECT}.clean"), new_init]));
}

#[test]
#[ignore = "needs the test bed: cargo xtask test"]
fn the_kvm_provision_role_on_a_hypervisor_host_then_guest_provision() {
    let bed = Bed::get();
    let names = [bed.unique_name("af2"), bed.unique_name("af2")];
    let _vms = names.clone().map(|name| TestVm { disk: bed.clone_disk(&name), name });
    // virtual_machines items as ansible_farm's examples write them ({vm: ...}) and bare. The
    // second VM is in the inventory already, reached through its guest agent: the role keeps
    // its connection, and guest_provision needs no address for it.
    let inventory = json!({
        "hypervisors": { "hosts": { "hv": {
            "ansible_connection": "local",
            "ansible_python_interpreter": "{{ ansible_playbook_python }}",
            "virtual_machines": [{ "vm": definition(bed, &names[0]) }, definition(bed, &names[1])],
        } } },
        "vms": { "hosts": { &names[1]: {
            "ansible_connection": "community.libvirt.libvirt_qemu", "ansible_libvirt_uri": bed.uri,
        } } },
    });
    let farm = Farm::new(&inventory);
    // One slot for both: they boot together, as the role starts them in one call.
    let _slot = bed.boot_slot();
    let extra = json!({
        "run_id": 1, "project_id": PROJECT, "connection_timeout": 600, "retry_count": 12, "retry_delay": 5,
        "ansible_python_interpreter": "/usr/bin/python3",
    });
    let (run, seconds) = farm.run("two_vms.yml", extra);
    let doc = assert_ok(&run, "two VMs");
    let started = |name: &str| result(&doc, name, "Start the VM")["ip_source"].clone();
    let leases = Hypervisor::open(&bed.uri).and_then(|hv| hv.network_leases(&bed.network));
    assert_eq!((started(&names[0]), started(&names[1])), (json!("lease"), Value::Null), "leases now: {leases:?}");
    for name in &names {
        assert_eq!(result(&doc, name, CACHE)["action"], "create clean", "{}", outline(&doc, name));
        assert_eq!(farm.guest_log(name, 1), log(1, 1), "{name}");
        let init = result(&doc, name, SAVE)["snapshot"].as_str().expect("the init snapshot").to_string();
        assert_eq!(snapshots(name), sorted([format!("{PROJECT}.clean"), init]));
        assert_eq!(power_state(name), PowerState::ShutOff);
    }
    eprintln!("ansible_farm kvm_provision role for two VMs, then guest_provision: {seconds:.1} s");
}

fn sorted<const N: usize>(names: [String; N]) -> Vec<String> {
    let mut names = names.to_vec();
    names.sort();
    names
}
