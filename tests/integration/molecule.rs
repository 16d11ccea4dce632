use std::time::Instant;

use bed::Bed;

/// `molecule test` of the collection's own scenario (extensions/molecule/default) on the
/// bootable image, the user made by cloud-init, twice with
/// VIRTFARM_MOLECULE_REUSE: the second run resets the kept instance to its clean snapshot
/// instead of booting a new one.
#[test]
#[ignore = "needs the test bed: cargo xtask test"]
fn molecule_test_passes_and_a_kept_instance_is_reset_not_rebuilt() {
    let bed = Bed::get();
    // Its own copy of the collection tree: Molecule works in it and installs it from there.
    let scratch = bed::tempdir();
    let tree = scratch.join("ansible_collections/virtfarm/libvirt");
    bed::copy_tree(&bed.collection_tree, &tree);
    let molecule = |action: &str, reuse: bool| {
        let started = Instant::now();
        let output = bed
            .ansible_command("molecule")
            .arg(action)
            .current_dir(&tree)
            .env("ANSIBLE_STDOUT_CALLBACK", "default")
            .env("VIRTFARM_URI", &bed.uri)
            .env("VIRTFARM_IMAGE", &bed.bootable_volume)
            .env("VIRTFARM_IMAGE_POOL", &bed.images_pool)
            .env("VIRTFARM_POOL", &bed.disks_pool)
            .env("VIRTFARM_NETWORK", &bed.network)
            .env("VIRTFARM_SSH_USER", &bed.ssh_user)
            .env("VIRTFARM_SSH_KEY", &bed.ssh_key)
            .env("VIRTFARM_MOLECULE_REUSE", reuse.to_string())
            .output()
            .expect("run molecule");
        let log = format!("{}\n{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        assert!(output.status.success(), "molecule {action} (reuse={reuse}) failed:\n{log}");
        (started.elapsed().as_secs_f64(), log)
    };
    let _slot = bed.boot_slot();
    let (first, _) = molecule("test", true);
    let (second, log) = molecule("test", true);
    let reset = task_output(&log, "Reset kept instances by reverting to their clean snapshot");
    assert!(reset.contains("changed: [localhost] => (item=mol-instance1)"), "the kept instance was not reset:\n{log}");
    // Without reuse, destroy removes the instance: nothing is left behind on the bed.
    molecule("destroy", false);
    let _ = std::fs::remove_dir_all(&scratch);
    eprintln!("molecule test: first run {first:.0} s (boots the instance), second run {second:.0} s (resets it)");
}

/// What the default callback printed for the task named `task`: up to the next task.
fn task_output<'a>(log: &'a str, task: &str) -> &'a str {
    let Some(start) = log.find(&format!("TASK [{task}]")) else { return "" };
    let rest = &log[start + task.len()..];
    rest.find("TASK [").map_or(rest, |end| &rest[..end])
}
