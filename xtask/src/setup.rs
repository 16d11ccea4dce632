//! Installs what the project needs on a Debian 12 host: libvirt, QEMU, dnsmasq, debootstrap,
//! LXD, and a Python venv with ansible-core. Idempotent: a second run installs nothing.

use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::sh;

/// Debian packages for the hypervisor side and the image build, installed without their
/// recommendations (which bring GTK, GStreamer and qemu-system-gui onto a host): what the project
/// uses of those is listed here, `qemu-utils` and `ovmf` (recommended by qemu-system-x86),
/// `dnsmasq-base` and `iproute2` (by libvirt-daemon-system), `debian-archive-keyring` (by
/// debootstrap, which checks the mirror's signatures with it).
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
    "debian-archive-keyring",
    "openssh-client",
    "openssh-server",
    "e2fsprogs",
    // The bootable image's partition table, EFI system partition, and the firmware to boot it with.
    "fdisk",
    "dosfstools",
    "mtools",
    "ovmf",
    "xorriso",
    // swtpm, which libvirt must find to offer an emulated TPM (`tpm: true`), and swtpm_setup,
    // which makes a TPM's state when its domain first starts.
    "swtpm",
    "swtpm-tools",
    // The bed's LXD daemon and its client, which the community.general.lxd connection runs.
    "lxd",
    "lxd-client",
    // The libvirt link stubs (cc) and the check of the shipped binaries' symbol versions (objdump).
    "gcc",
    "binutils",
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
    let mut args = vec!["install", "-y", "-qq", "--no-install-recommends", "--allow-downgrades"];
    args.extend(
        PACKAGES.iter().map(|p| if *p == "qemu-utils" && !version.is_empty() { pinned_utils.as_str() } else { p }),
    );
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
    if !venv.join("bin/ansible-playbook").exists() {
        std::fs::create_dir_all(cache_dir())?;
        let venv_str = venv.to_string_lossy();
        sh::run("python3", &["-m", "venv", &venv_str])?;
        let pip = venv.join("bin/pip");
        sh::run(&pip.to_string_lossy(), &["install", "-q", "-r", &requirements.to_string_lossy()])?;
    }
    install_pip_bootstrap(root, &venv)?;
    Ok(venv)
}

/// Gives ansible-test the pip bootstrap script it would otherwise download from a host that
/// only the package registries' mirrors stand in for here (see xtask/ansible-test/get_pip.py).
fn install_pip_bootstrap(root: &Path, venv: &Path) -> Result<()> {
    let pattern = "pip='";
    let Some(requirements) = glob_one(&venv.join("lib"), "site-packages/ansible_test/_internal/python_requirements.py")
    else {
        return Ok(());
    };
    let source = std::fs::read_to_string(&requirements)?;
    let Some(version) = source.split_once(pattern).and_then(|(_, rest)| rest.split_once('\'')).map(|(v, _)| v) else {
        return Ok(());
    };
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
    let cache = home.join(".ansible/test/cache");
    std::fs::create_dir_all(&cache)?;
    std::fs::copy(
        root.join("xtask/ansible-test/get_pip.py"),
        cache.join(format!("get_pip_{}.py", version.replace('.', "_"))),
    )?;
    Ok(())
}

/// The first `lib/python3.*/<suffix>` under `lib`.
fn glob_one(lib: &Path, suffix: &str) -> Option<PathBuf> {
    std::fs::read_dir(lib).ok()?.flatten().map(|e| e.path().join(suffix)).find(|p| p.exists())
}
