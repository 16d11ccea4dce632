//! `cargo xtask demo`: the collection as a user meets it. Builds and installs it, brings
//! libvirt up (the host's running libvirtd, else the bed's own in its namespace), runs the
//! shipped playbook `virtfarm.libvirt.demo` with per-task timings, and cleans up.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::json;

use crate::{bed, collection, image, setup};

pub fn run(root: &Path) -> Result<()> {
    let started = Instant::now();
    step("install the Debian packages and the Ansible venv");
    setup::packages()?;
    let venv = setup::venv(root)?;
    step("build the guest image from Debian packages (cached after the first time)");
    let image = image::ensure(root)?;
    step("build the collection tarball and install it");
    let collections = collection::build_and_install(root, &venv)?;
    step("bring libvirt up");
    let on_host = bed::host_libvirtd_running();
    let already_up = !on_host && bed::bed_is_up();
    if on_host {
        bed::adopt(&image, &venv, &collections)?;
    } else {
        bed::up(&image, &venv, &collections)?;
    }

    let vars = bed::state_dir().join("demo-hypervisor.json");
    let hypervisor = json!({
        "uri": bed::URI,
        "image": image.bootable_volume()?,
        "image_pool": bed::IMAGES_POOL,
        "pool": bed::DISKS_POOL,
        "network": bed::NETWORK,
        "ssh_public_key": std::fs::read_to_string(image.dir.join("id_ed25519.pub"))?.trim(),
    });
    std::fs::write(&vars, serde_json::to_string_pretty(&hypervisor)?)?;

    step("run the playbook virtfarm.libvirt.demo");
    let playbook = venv.join("bin/ansible-playbook");
    let mut command = if on_host {
        Command::new(&playbook)
    } else {
        // The guests live in the bed's namespace: so must everything that talks to them.
        let mut in_netns = Command::new("ip");
        in_netns.args(["netns", "exec", bed::NETNS]).arg(&playbook);
        in_netns
    };
    let path = format!("{}:{}", venv.join("bin").display(), std::env::var("PATH").unwrap_or_default());
    let status = command
        .arg("virtfarm.libvirt.demo")
        .arg("-e")
        .arg(format!("@{}", vars.display()))
        .env("PATH", path)
        .env("ANSIBLE_COLLECTIONS_PATH", &collections)
        .env("ANSIBLE_PRIVATE_KEY_FILE", image.dir.join("id_ed25519"))
        .env("ANSIBLE_HOST_KEY_CHECKING", "False")
        .env("ANSIBLE_CALLBACKS_ENABLED", "ansible.posix.profile_tasks")
        .env("ANSIBLE_LOCALHOST_WARNING", "False")
        .env("ANSIBLE_INVENTORY_UNPARSED_WARNING", "False")
        .status()
        .context("run ansible-playbook")?;

    step("clean up");
    if !status.success() {
        // The playbook stopped before its own clean-up: remove what it made.
        let cleanup =
            json!({"uri": bed::URI, "stem": "demo", "vms": ["1", "2"], "state": "absent", "remove_storage": true});
        let _ = Command::new(venv.join("bin/ansible"))
            .args(["localhost", "-c", "local", "-i", "localhost,", "-m", "virtfarm.libvirt.kvm_provision", "-a"])
            .arg(cleanup.to_string())
            .env("ANSIBLE_COLLECTIONS_PATH", &collections)
            .status();
    }
    if on_host {
        bed::release()?;
    } else if !already_up {
        bed::down()?;
    }
    eprintln!("demo: {:.0} s in all", started.elapsed().as_secs_f64());
    if !status.success() {
        bail!("the demo playbook failed: {status}");
    }
    Ok(())
}

fn step(what: &str) {
    eprintln!("\n==> {what}");
}
