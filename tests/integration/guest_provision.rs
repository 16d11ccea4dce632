//! The guest_provision role through ansible-playbook on one booted guest, reused by every
//! scenario: first run, cached run, cache invalidated by an edit, failing main, restricted
//! steps; then the module's check mode and idempotency on the same VM.

use std::path::{Path, PathBuf};
use std::time::Instant;

use bed::{AnsibleRun, Bed};
use serde_json::{json, Value};
use virtfarm_libvirt::{Hypervisor, PowerState};

const PROJECT: &str = "gptest";

/// A copy of tests/ansible/guest_provision with an inventory for one VM.
struct Project {
    dir: PathBuf,
}

impl Project {
    fn new(vm: &str) -> Self {
        let dir = bed::tempdir();
        bed::copy_tree(&Path::new(env!("CARGO_MANIFEST_DIR")).join("ansible/guest_provision"), &dir);
        let inventory = json!({ "vms": { "hosts": { vm: {
            "kvm_host": "localhost",
            "vm": { "metadata": { "name": vm, "connection": Bed::get().uri, "platform_name": "debian", "target_name": "amd64" } },
            "project_id": PROJECT,
            "guest_provision_wait": "lease",
            "connection_timeout": 240,
            "retry_count": 12,
            "retry_delay": 5,
            "ansible_python_interpreter": "/usr/bin/python3",
        } } } });
        std::fs::write(dir.join("inventory.json"), inventory.to_string()).unwrap();
        Project { dir }
    }

    /// Runs site.yml with `extra` vars; returns the run and its wall time.
    fn run(&self, extra: Value) -> (AnsibleRun, f64) {
        let started = Instant::now();
        let inventory = self.dir.join("inventory.json");
        let site = self.dir.join("site.yml");
        let run = Bed::get().ansible(
            "ansible-playbook",
            &["-i", inventory.to_str().unwrap(), site.to_str().unwrap(), "-e", &extra.to_string()],
        );
        (run, started.elapsed().as_secs_f64())
    }
}

/// The results of `host` for every task whose name ends with `task`, in run order.
fn results<'a>(doc: &'a Value, host: &str, task: &str) -> Vec<&'a Value> {
    doc["plays"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|play| play["tasks"].as_array().into_iter().flatten())
        .filter(|t| t["task"]["name"].as_str().is_some_and(|name| name.ends_with(task)))
        .filter_map(|t| t["hosts"].get(host))
        .collect()
}

/// True when the task ran (was not skipped) for `host`.
pub(crate) fn ran(doc: &Value, host: &str, task: &str) -> bool {
    results(doc, host, task).iter().any(|r| r["skipped"] != true)
}

/// One line per task of `host`: its outcome and name, for assertion messages.
pub(crate) fn outline(doc: &Value, host: &str) -> String {
    let tasks =
        doc["plays"].as_array().into_iter().flatten().flat_map(|play| play["tasks"].as_array().into_iter().flatten());
    let lines = tasks.filter_map(|t| {
        let result = t["hosts"].get(host)?;
        let outcome = ["failed", "unreachable", "skipped"].into_iter().find(|o| result[*o] == true).unwrap_or("ok");
        Some(format!(
            "{outcome:>11} {} {}",
            t["task"]["name"].as_str().unwrap_or("?"),
            result["msg"].as_str().unwrap_or("")
        ))
    });
    lines.collect::<Vec<_>>().join("\n")
}

/// The single result of a task that must have run.
pub(crate) fn result<'a>(doc: &'a Value, host: &str, task: &str) -> &'a Value {
    let found = results(doc, host, task);
    let run: Vec<_> = found.into_iter().filter(|r| r["skipped"] != true).collect();
    assert_eq!(run.len(), 1, "task {task:?} should have run once: {run:?}");
    run[0]
}

pub(crate) fn snapshots(vm: &str) -> Vec<String> {
    let hypervisor = Hypervisor::open(&Bed::get().uri).unwrap();
    let mut names: Vec<String> = hypervisor.vm(vm).unwrap().snapshots().unwrap().into_iter().map(|s| s.name).collect();
    names.sort();
    names
}

/// The project's clean snapshot and `init`, in the order [`snapshots`] lists them.
fn clean_and(init: &str) -> Vec<String> {
    let mut names = vec![format!("{PROJECT}.clean"), init.to_string()];
    names.sort();
    names
}

pub(crate) fn power_state(vm: &str) -> PowerState {
    Hypervisor::open(&Bed::get().uri).unwrap().vm(vm).unwrap().power_state().unwrap()
}

pub(crate) fn assert_ok(run: &AnsibleRun, what: &str) -> Value {
    assert!(run.success, "{what} failed:\n{}\n{}", run.stdout, run.stderr);
    run.json()
}

const DEPENDENCIES: &str = "phase dependencies generic";
const INIT: &str = "phase init platform";
const MAIN: &str = "phase main target";
const TERMINATE: &str = "phase terminate generic";
pub(crate) const SAVE: &str = "Save the init cache";
pub(crate) const CACHE: &str = "Restore or create the cache snapshots";
pub(crate) const SHUTDOWN: &str = "Shut down the VM";

#[test]
#[ignore = "needs the test bed: cargo xtask test"]
fn cached_lifecycle_through_the_role() {
    let bed = Bed::get();
    let name = bed.unique_name("gp-");
    let _vm = bed.boot_vm(&name);
    // The role starts the VM itself, as users' playbooks have it: begin from shut off.
    Hypervisor::open(&bed.uri).unwrap().vm(&name).unwrap().destroy().unwrap();
    let project = Project::new(&name);
    let _slot = bed.boot_slot();

    // 1. First run: everything runs, clean and init snapshots are taken, the VM ends off.
    let (first, first_seconds) = project.run(json!({ "run_id": 1 }));
    let doc = assert_ok(&first, "first run");
    for task in [DEPENDENCIES, INIT, MAIN, TERMINATE, SAVE, SHUTDOWN] {
        assert!(ran(&doc, &name, task), "first run: {task} did not run");
    }
    assert_eq!(result(&doc, &name, CACHE)["action"], "create clean");
    assert_eq!(result(&doc, &name, MAIN)["stdout"], "1");
    let init = result(&doc, &name, SAVE)["snapshot"].as_str().unwrap().to_string();
    assert!(init.starts_with(&format!("{PROJECT}.")) && init.ends_with(".init"), "{init}");
    assert_eq!(snapshots(&name), clean_and(&init));
    assert_eq!(power_state(&name), PowerState::ShutOff);

    // 2. Cached run: init restored, dependencies and init skipped, the marker is run 1's.
    let (second, cached_seconds) = project.run(json!({ "run_id": 2 }));
    let doc = assert_ok(&second, "cached run");
    assert_eq!(result(&doc, &name, CACHE)["action"], "restore init");
    for task in [DEPENDENCIES, INIT, SAVE] {
        assert!(!ran(&doc, &name, task), "cached run: {task} ran");
    }
    assert!(ran(&doc, &name, TERMINATE) && ran(&doc, &name, SHUTDOWN));
    assert_eq!(result(&doc, &name, MAIN)["stdout"], "1", "the init marker comes from the snapshot");
    eprintln!("guest_provision: first run {first_seconds:.1} s, cached run {cached_seconds:.1} s");

    // 3. Editing init.yaml changes the auto revision: clean restored, init rebuilt, old init pruned.
    let init_file = project.dir.join("provision_phases/debian/init.yaml");
    let edited = std::fs::read_to_string(&init_file).unwrap() + "# edited\n";
    std::fs::write(&init_file, edited).unwrap();
    let (third, rebuild_seconds) = project.run(json!({ "run_id": 3 }));
    let doc = assert_ok(&third, "run after the edit");
    let cache = result(&doc, &name, CACHE);
    assert_eq!(cache["action"], "restore clean");
    assert_eq!(cache["pruned"], json!([init]));
    assert!(ran(&doc, &name, DEPENDENCIES) && ran(&doc, &name, INIT) && ran(&doc, &name, SAVE));
    assert_eq!(result(&doc, &name, MAIN)["stdout"], "3");
    let new_init = result(&doc, &name, SAVE)["snapshot"].as_str().unwrap().to_string();
    assert_ne!(new_init, init);
    assert_eq!(snapshots(&name), clean_and(&new_init));
    eprintln!("guest_provision: rebuild after an edit {rebuild_seconds:.1} s");

    // 4. A failing main phase: the run fails, terminate and the shutdown still run.
    let (failing, _) = project.run(json!({ "run_id": 4, "fail_main": true }));
    assert!(!failing.success, "a failing main must fail the run");
    let doc = failing.json();
    let tasks = outline(&doc, &name);
    assert!(ran(&doc, &name, "phase main failing on request"), "{tasks}");
    assert!(ran(&doc, &name, TERMINATE), "terminate must run after a failure:\n{tasks}");
    assert!(ran(&doc, &name, SHUTDOWN), "shutdown must run after a failure:\n{tasks}");
    assert_eq!(power_state(&name), PowerState::ShutOff);

    // 5. allowed_phases: no init restore, no dependencies, no init snapshot, no terminate.
    let allowed = json!(["startup", "restore clean", "init", "main", "shutdown"]);
    let (restricted, _) = project.run(json!({ "run_id": 5, "allowed_phases": allowed }));
    let doc = assert_ok(&restricted, "restricted run");
    assert_eq!(result(&doc, &name, CACHE)["action"], "restore clean");
    assert!(ran(&doc, &name, INIT) && ran(&doc, &name, MAIN) && ran(&doc, &name, SHUTDOWN));
    for task in [DEPENDENCIES, SAVE, TERMINATE] {
        assert!(!ran(&doc, &name, task), "restricted run: {task} ran");
    }
    assert_eq!(result(&doc, &name, MAIN)["stdout"], "5");
    assert_eq!(snapshots(&name), clean_and(&new_init));
    assert_eq!(power_state(&name), PowerState::ShutOff);

    // 6. The module on the same VM: check mode changes nothing; repeated steps change nothing.
    let on_vm = |extra: Value| {
        let mut args = json!({ "name": name, "uri": bed.uri, "project_id": PROJECT, "revision": new_init.split('.').nth(1).unwrap() });
        args.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        let reply = bed.run_module("guest_provision", args);
        assert_ne!(reply["failed"], true, "{reply}");
        reply
    };
    let checked = on_vm(json!({ "state": "cache_prepared", "_ansible_check_mode": true }));
    assert_eq!((checked["changed"].clone(), checked["action"].clone()), (json!(true), json!("restore init")));
    assert_eq!(power_state(&name), PowerState::ShutOff, "check mode must not revert");
    assert_eq!(on_vm(json!({ "state": "started", "_ansible_check_mode": true }))["changed"], true);
    assert_eq!(power_state(&name), PowerState::ShutOff, "check mode must not start");
    assert_eq!(on_vm(json!({ "state": "cache_saved" }))["changed"], false, "the init snapshot exists");
    assert_eq!(on_vm(json!({ "state": "stopped" }))["changed"], false, "already off");
    let missing =
        bed.run_module("guest_provision", json!({ "state": "stopped", "name": "gp-no-such-vm", "uri": bed.uri }));
    assert!(missing["msg"].as_str().unwrap_or_default().starts_with("name"), "{missing}");
}
