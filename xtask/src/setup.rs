//! Installs what the project needs on a Debian 12 host: libvirt, QEMU, dnsmasq, debootstrap,
//! and a Python venv with ansible-core. Idempotent: a second run installs nothing.

use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::sh;

/// Debian packages for the hypervisor side and the image build.
const PACKAGES: &[&str] = &[
    "libvirt-daemon-system",
    "libvirt-clients",
    "libvirt-dev",
    "pkg-config",
    "qemu-system-x86",
    "qemu-utils",
    "dnsmasq-base",
    "iptables",
    "iproute2",
    "debootstrap",
    "openssh-client",
    "e2fsprogs",
    "xorriso",
];

/// Where the venv, the guest image and other caches live: outside the clone, kept between runs.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("VIRTFARM_CACHE").map_or_else(|| PathBuf::from("/var/cache/virtfarm"), PathBuf::from)
}

/// Installs the Debian packages that are missing.
pub fn packages() -> Result<()> {
    let missing: Vec<&str> = PACKAGES.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    sh::run("apt-get", &["update", "-qq"])?;
    // qemu-utils must match qemu-system-x86: a newer backported qemu-utils breaks bookworm's QEMU.
    let qemu = sh::output("apt-cache", &["policy", "qemu-system-x86"])?;
    let version = qemu.lines().find_map(|l| l.trim().strip_prefix("Candidate: ")).unwrap_or("").to_string();
    let pinned_utils = format!("qemu-utils={version}");
    let mut args = vec!["install", "-y", "-qq", "--allow-downgrades"];
    args.extend(PACKAGES.iter().map(|p| if *p == "qemu-utils" && !version.is_empty() { pinned_utils.as_str() } else { p }));
    std::env::set_var("DEBIAN_FRONTEND", "noninteractive");
    sh::run("apt-get", &args)
}

fn installed(package: &str) -> bool {
    sh::output("dpkg-query", &["-W", "-f=${Status}", package]).is_ok_and(|s| s.contains("install ok installed"))
}

/// The venv with ansible-core, created from tests/requirements.txt; keyed on its content.
pub fn venv(root: &Path) -> Result<PathBuf> {
    let requirements = root.join("tests/requirements.txt");
    let key = crate::image::content_key(&[&requirements])?;
    let venv = cache_dir().join(format!("venv-{key}"));
    if venv.join("bin/ansible-playbook").exists() {
        return Ok(venv);
    }
    std::fs::create_dir_all(cache_dir())?;
    let venv_str = venv.to_string_lossy();
    sh::run("python3", &["-m", "venv", &venv_str])?;
    let pip = venv.join("bin/pip");
    sh::run(&pip.to_string_lossy(), &["install", "-q", "-r", &requirements.to_string_lossy()])?;
    Ok(venv)
}
