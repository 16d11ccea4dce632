use bed::Bed;
use serde_json::{json, Value};

/// The snapshot_libvirt role with the variables of TripleO's snapshot-libvirt README:
/// `snapshot_create: true`, then `snapshot_restore: true`, on `overcloud_nodes` whose disks
/// are `<libvirt_volume_path>/<name>.qcow2`.
#[test]
#[ignore = "needs the test bed: cargo xtask test"]
fn the_snapshot_role_takes_tripleo_snapshot_libvirt_variables() {
    let bed = Bed::get();
    let node = bed.define_vm(&bed.unique_name("rl"));
    let dir = bed::tempdir();
    let playbook = dir.join("snapshot.yml");
    std::fs::write(
        &playbook,
        "- name: Snapshot\n  hosts: localhost\n  connection: local\n  gather_facts: false\n  roles:\n    - virtfarm.libvirt.snapshot_libvirt\n",
    )
    .expect("write the playbook");
    let tripleo = |extra: Value| {
        let mut vars = json!({
            "libvirt_uri": bed.uri,
            "libvirt_volume_path": bed.disks_dir,
            "overcloud_nodes": [{ "name": node.name }],
        });
        vars.as_object_mut().expect("an object").extend(extra.as_object().expect("an object").clone());
        let run = bed.ansible(
            "ansible-playbook",
            &["-i", "localhost,", playbook.to_str().expect("UTF-8"), "-e", &vars.to_string()],
        );
        assert!(run.success, "{extra}:\n{}\n{}", run.stdout, run.stderr);
    };

    tripleo(json!({ "snapshot_create": true }));
    assert_eq!(backing_file(&node.disk), format!("{}.bak", node.disk.display()), "the disk is an overlay on its .bak");
    tripleo(json!({ "snapshot_restore": true }));
    assert_eq!(backing_file(&node.disk), format!("{}.bak", node.disk.display()), "a fresh overlay on the same .bak");

    // What the TripleO role lacks: removal of the .bak, merged back into the disk.
    let removed = bed.run_module(
        "snapshot_libvirt",
        json!({ "names": [node.name], "uri": bed.uri, "mode": "backing_file", "volume_path": bed.disks_dir, "state": "absent" }),
    );
    assert_eq!(removed["failed"], Value::Null, "{removed}");
    assert!(!std::path::Path::new(&format!("{}.bak", node.disk.display())).exists(), "{removed}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The backing file `qemu-img` reports for `disk`.
fn backing_file(disk: &std::path::Path) -> String {
    let out = std::process::Command::new("qemu-img")
        .args(["info", "-U", "--output=json"])
        .arg(disk)
        .output()
        .expect("run qemu-img");
    let info: Value = serde_json::from_slice(&out.stdout).expect("qemu-img JSON");
    info["full-backing-filename"].as_str().or(info["backing-filename"].as_str()).unwrap_or_default().to_string()
}
