//! Builds the Galaxy collection as users get it: release binaries built for the glibc floor
//! (portable.rs), sidecar docs, the inventory executable, roles and metadata assembled into a
//! tree, built into a tarball with `ansible-galaxy collection build`, and installed from that
//! tarball into a fresh path.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::{portable, sh};

/// Module binaries, each shipped as `plugins/modules/<name>` beside `<name>.yml` docs.
pub const MODULES: &[&str] = &["kvm_provision", "snapshot_libvirt", "guest_provision", "libvirt_ping"];
/// The inventory executable, shipped in `libexec/` for the inventory plugin to run.
const INVENTORY: &str = "libvirt_inventory";

/// Builds the tarball and installs it; returns the collections path to give Ansible.
pub fn build_and_install(root: &Path, venv: &Path) -> Result<PathBuf> {
    let bins: Vec<&str> = MODULES.iter().copied().chain([INVENTORY]).collect();
    let release = portable::build(root, &bins)?;

    let target = root.join("target");
    let tree = tree(root);
    let _ = std::fs::remove_dir_all(&tree);
    std::fs::create_dir_all(&tree)?;
    copy_tree(&root.join("collection"), &tree)?;
    copy_tree(&root.join("roles"), &tree.join("roles"))?;
    for file in ["galaxy.yml", "README.md", "LICENSE"] {
        std::fs::copy(root.join(file), tree.join(file)).with_context(|| format!("copy {file}"))?;
    }
    for module in MODULES {
        install_executable(&release.join(module), &tree.join("plugins/modules").join(module))?;
    }
    install_executable(&release.join(INVENTORY), &tree.join("libexec").join(INVENTORY))?;

    let galaxy = venv.join("bin/ansible-galaxy");
    let galaxy = galaxy.to_str().context("non-UTF-8 venv path")?;
    let tree_str = tree.to_str().context("non-UTF-8 path")?;
    let dist = target.join("dist");
    let dist_str = dist.to_str().context("non-UTF-8 path")?;
    sh::run(galaxy, &["collection", "build", tree_str, "--output-path", dist_str, "--force"])?;
    let tarball = dist.join(format!("virtfarm-libvirt-{}.tar.gz", version(root)?));
    let installed = target.join("collections");
    let _ = std::fs::remove_dir_all(&installed);
    let tarball_str = tarball.to_str().context("non-UTF-8 path")?;
    let installed_str = installed.to_str().context("non-UTF-8 path")?;
    sh::run(galaxy, &["collection", "install", tarball_str, "-p", installed_str, "--force"])?;
    eprintln!(
        "collection: {} ({} KiB), installed in {installed_str}",
        tarball.display(),
        std::fs::metadata(&tarball)?.len() / 1024
    );
    Ok(installed)
}

/// Where the collection is assembled before `ansible-galaxy collection build`.
pub fn tree(root: &Path) -> PathBuf {
    root.join("target/collection/ansible_collections/virtfarm/libvirt")
}

/// The collection version from galaxy.yml.
fn version(root: &Path) -> Result<String> {
    let galaxy = std::fs::read_to_string(root.join("galaxy.yml"))?;
    galaxy
        .lines()
        .find_map(|l| l.strip_prefix("version:").map(|v| v.trim().to_string()))
        .context("galaxy.yml has no version")
}

fn install_executable(from: &Path, to: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(to.parent().context("a file has a parent")?)?;
    std::fs::copy(from, to).with_context(|| format!("copy {}", from.display()))?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    if !from.exists() {
        return Ok(());
    }
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from).with_context(|| format!("read {}", from.display()))? {
        let entry = entry?;
        let dest = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &dest)?;
        } else {
            std::fs::copy(entry.path(), &dest).with_context(|| format!("copy {}", entry.path().display()))?;
        }
    }
    Ok(())
}
