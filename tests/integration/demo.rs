use bed::Bed;
use serde_json::{json, Value};

/// The demo playbook `virtfarm.libvirt.demo`, as `cargo xtask demo` runs it, on the bootable
/// image with cloud-init making the user: two VMs in one
/// call, the cached lifecycle twice (the second restores the init cache), a group snapshot
/// and revert, the inventory graph, clean-up.
#[test]
#[ignore = "needs the test bed: cargo xtask test"]
fn the_demo_playbook_runs_end_to_end() {
    let bed = Bed::get();
    let key = std::fs::read_to_string(bed.ssh_key.with_extension("pub")).expect("the bed's public key");
    let vars = json!({
        "uri": bed.uri, "image": bed.bootable_volume, "image_pool": bed.images_pool, "pool": bed.disks_pool,
        "network": bed.network, "ssh_public_key": key.trim(),
    });
    let _slot = bed.boot_slot();
    let run = bed.ansible("ansible-playbook", &["virtfarm.libvirt.demo", "-e", &vars.to_string()]);
    assert!(run.success, "the demo failed:\n{}\n{}", run.stdout, run.stderr);
    let doc = run.json();
    let comparison = task_results(&doc, "Compare the two runs");
    let msg = comparison.first().and_then(|r| r["msg"].as_str()).unwrap_or_default();
    assert!(msg.contains("init restored: True"), "the second run restores the init cache: {msg}");
    eprintln!("demo: {msg}");
    let graph = task_results(&doc, "Show the graph");
    let graph = graph.first().map(|r| r["msg"].to_string()).unwrap_or_default();
    assert!(graph.contains("demo01") && graph.contains("demo02"), "the inventory lists both VMs: {graph}");
}

/// Every host's result of the tasks named `name`, in run order.
fn task_results<'a>(doc: &'a Value, name: &str) -> Vec<&'a Value> {
    doc["plays"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|play| play["tasks"].as_array().into_iter().flatten())
        .filter(|task| task["task"]["name"] == name)
        .flat_map(|task| task["hosts"].as_object().into_iter().flat_map(|hosts| hosts.values()))
        .collect()
}
