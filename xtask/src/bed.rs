//! The test bed: libvirtd in a network namespace of its own, a NAT network with DHCP,
//! storage pools for the guest image and for clones. Every bridge, dnsmasq and guest lives in
//! the namespace, so tests reach guests only from inside it and nothing leaves the machine.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::json;

use crate::image::GuestImage;
use crate::sh;

/// The network namespace of the bed's libvirtd and guests.
pub const NETNS: &str = "vfbed";
pub const NETWORK: &str = "vfnet";
const BRIDGE: &str = "vfbr0";
const GATEWAY: &str = "10.77.0.1";
pub const IMAGES_POOL: &str = "vfimages";
pub const DISKS_POOL: &str = "vfdisks";
pub const URI: &str = "qemu:///system";

/// Where the bed keeps its runtime files; `bed.json` there tells the tests about it.
pub fn state_dir() -> PathBuf {
    PathBuf::from("/run/virtfarm-bed")
}

fn disks_dir() -> PathBuf {
    PathBuf::from("/var/lib/virtfarm-bed/disks")
}

fn virsh(args: &[&str]) -> Result<String> {
    let mut all = vec!["-c", URI];
    all.extend_from_slice(args);
    sh::output("virsh", &all)
}

fn libvirtd_running() -> bool {
    // Running, sleeping or in I/O: a stopped daemon's zombie, not yet reaped, does not count.
    sh::succeeds("pgrep", &["-x", "-r", "R,S,D", "libvirtd"])
}

/// True when the bed described by `bed.json` answers.
pub fn bed_is_up() -> bool {
    state_dir().join("bed.json").exists() && libvirtd_running() && virsh(&["net-info", NETWORK]).is_ok()
}

/// Brings the bed up, or finds it up already; returns the path of `bed.json`.
pub fn up(image: &GuestImage, venv: &Path, collections: &Path) -> Result<PathBuf> {
    kvm_device_as_udev_leaves_it()?;
    let bed_json = state_dir().join("bed.json");
    if bed_is_up() {
        add_bootable(image)?;
        write_description(&bed_json, image, venv, collections)?;
        eprintln!("test bed: already up ({})", bed_json.display());
        return Ok(bed_json);
    }
    if libvirtd_running() {
        bail!("a libvirtd is running outside the test bed; stop it first (the bed runs its own, in namespace {NETNS})");
    }
    let started = Instant::now();
    if !sh::succeeds("ip", &["netns", "exec", NETNS, "true"]) {
        sh::run("ip", &["netns", "add", NETNS])?;
    }
    sh::run("ip", &["netns", "exec", NETNS, "ip", "link", "set", "lo", "up"])?;
    // No systemd here: virtlogd is not socket-activated, so it is started by hand too.
    sh::run("ip", &["netns", "exec", NETNS, "virtlogd", "-d"])?;
    sh::run("ip", &["netns", "exec", NETNS, "libvirtd", "-d"])?;
    wait_until(Duration::from_secs(30), "libvirtd to answer", || virsh(&["version"]).is_ok())?;
    define_resources(image)?;
    write_description(&bed_json, image, venv, collections)?;
    eprintln!("test bed: up in {:.1} s ({})", started.elapsed().as_secs_f64(), bed_json.display());
    Ok(bed_json)
}

/// Gives `/dev/kvm` the group and mode udev's rule gives it (kvm, 0660) on a host without udev,
/// where it stays root's alone. libvirt probes QEMU's capabilities with KVM as root, then
/// checks whether its QEMU user can open the device: when the two disagree it drops its cache
/// and probes QEMU again at every lookup, and every define and start looks up (30-104 s per
/// define measured here, with no guest running). The guests stay TCG: a domain's type follows
/// the CPU's vmx/svm flags, which this machine's CPU lacks.
fn kvm_device_as_udev_leaves_it() -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let device = "/dev/kvm";
    let Ok(metadata) = std::fs::metadata(device) else { return Ok(()) };
    if metadata.permissions().mode() & 0o060 == 0o060 {
        return Ok(());
    }
    sh::run("chgrp", &["kvm", device])?;
    sh::run("chmod", &["0660", device])
}

/// Uses the host's own running libvirtd: defines the bed's network and pools on it.
/// Guests then live in the host's network namespace, reachable from the host.
pub fn adopt(image: &GuestImage, venv: &Path, collections: &Path) -> Result<PathBuf> {
    eprintln!("libvirt: reusing the libvirtd running on this host");
    define_resources(image)?;
    let bed_json = state_dir().join("bed.json");
    write_description(&bed_json, image, venv, collections)?;
    Ok(bed_json)
}

/// True when a libvirtd runs that is not the bed's (outside its namespace).
pub fn host_libvirtd_running() -> bool {
    libvirtd_running() && !bed_is_up()
}

/// The bed's network and pools on the running daemon, after removing stale ones.
fn define_resources(image: &GuestImage) -> Result<()> {
    std::fs::create_dir_all(state_dir())?;
    std::fs::create_dir_all(disks_dir())?;
    remove_leftovers()?;

    let net_xml = state_dir().join("network.xml");
    std::fs::write(
        &net_xml,
        format!(
            "<network><name>{NETWORK}</name><forward mode='nat'/><bridge name='{BRIDGE}' stp='off' delay='0'/>\
             <ip address='{GATEWAY}' netmask='255.255.255.0'><dhcp><range start='10.77.0.10' end='10.77.0.250'/></dhcp></ip></network>"
        ),
    )?;
    virsh(&["net-define", path_str(&net_xml)?])?;
    virsh(&["net-start", NETWORK])?;
    define_pool(IMAGES_POOL, &image.dir)?;
    add_bootable(image)?;
    define_pool(DISKS_POOL, &disks_dir())
}

/// Puts the bootable disk into the images pool (whose directory is the direct-kernel image's),
/// as a hard link: no copy, and a bed that is up gets it without redefining its pool.
fn add_bootable(image: &GuestImage) -> Result<()> {
    let volume = image.dir.join(image.bootable_volume()?);
    if !volume.exists() {
        std::fs::hard_link(&image.bootable, &volume).or_else(|_| std::fs::copy(&image.bootable, &volume).map(drop))?;
    }
    virsh(&["pool-refresh", IMAGES_POOL]).map(drop)
}

/// Writes `bed.json`, which tells the tests where everything is.
fn write_description(bed_json: &Path, image: &GuestImage, venv: &Path, collections: &Path) -> Result<()> {
    let description = json!({
        "uri": URI,
        "netns": NETNS,
        "network": NETWORK,
        "bridge": BRIDGE,
        "gateway": GATEWAY,
        "images_pool": IMAGES_POOL,
        "base_volume": crate::image::BASE_VOLUME,
        "base_image": image.base(),
        "bootable_volume": image.bootable_volume()?,
        "bootable_image": image.dir.join(image.bootable_volume()?),
        "disks_pool": DISKS_POOL,
        "disks_dir": disks_dir(),
        "kernel": image.dir.join("vmlinuz"),
        "initrd": image.dir.join("initrd.img"),
        "ssh_key": image.dir.join("id_ed25519"),
        "ssh_user": "ansible",
        "bullseye_root": image.bullseye_root,
        "venv": venv,
        "collections_path": collections,
        "collection_tree": crate::collection::tree(&crate::project_root()?),
    });
    std::fs::write(bed_json, serde_json::to_string_pretty(&description)?)?;
    Ok(())
}

fn define_pool(name: &str, dir: &Path) -> Result<()> {
    virsh(&["pool-define-as", name, "dir", "--target", path_str(dir)?])?;
    virsh(&["pool-start", name])?;
    Ok(())
}

/// Removes what [`adopt`] defined on the host's libvirtd; the daemon keeps running.
pub fn release() -> Result<()> {
    remove_leftovers()?;
    let _ = std::fs::remove_dir_all(state_dir());
    let _ = std::fs::remove_dir_all(disks_dir());
    Ok(())
}

/// Tears the bed down: its domains, network, pools, daemons and namespace. Keeps the image.
pub fn down() -> Result<()> {
    if libvirtd_running() && virsh(&["version"]).is_ok() {
        remove_leftovers()?;
    }
    remove_netns(NETNS)?;
    let _ = std::fs::remove_dir_all(state_dir());
    let _ = std::fs::remove_dir_all(disks_dir());
    eprintln!("test bed: down");
    Ok(())
}

/// Stops every process in `netns` (all of them ours: daemons, dnsmasq, qemu, sshd), then
/// deletes the namespace.
pub(crate) fn remove_netns(netns: &str) -> Result<()> {
    let pids = sh::output("ip", &["netns", "pids", netns]).unwrap_or_default();
    for pid in pids.split_whitespace() {
        let _ = sh::output("kill", &[pid]);
    }
    let _ = wait_until(Duration::from_secs(15), &format!("the processes in {netns} to exit"), || {
        sh::output("ip", &["netns", "pids", netns]).map_or(true, |p| p.trim().is_empty())
    });
    if sh::succeeds("ip", &["netns", "exec", netns, "true"]) {
        sh::run("ip", &["netns", "del", netns])?;
    }
    Ok(())
}

/// Removes what a bed (this or an interrupted earlier one) defined: domains attached to its
/// network or disks, the network and the pools. Nothing else on the daemon is touched.
fn remove_leftovers() -> Result<()> {
    let names = virsh(&["list", "--all", "--name"])?;
    let disks = disks_dir();
    for name in names.lines().map(str::trim).filter(|n| !n.is_empty()) {
        let xml = virsh(&["dumpxml", "--inactive", name]).unwrap_or_default();
        if xml.contains(&format!("network='{NETWORK}'")) || xml.contains(&*disks.to_string_lossy()) {
            let _ = virsh(&["destroy", name]);
            let _ = virsh(&["undefine", name, "--snapshots-metadata", "--managed-save", "--checkpoints-metadata"]);
        }
    }
    let _ = virsh(&["net-destroy", NETWORK]);
    let _ = virsh(&["net-undefine", NETWORK]);
    for pool in [IMAGES_POOL, DISKS_POOL] {
        let _ = virsh(&["pool-destroy", pool]);
        let _ = virsh(&["pool-undefine", pool]);
    }
    Ok(())
}

pub(crate) fn wait_until(bound: Duration, what: &str, mut ready: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + bound;
    while !ready() {
        if Instant::now() >= deadline {
            bail!("timed out after {} s waiting for {what}", bound.as_secs());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

pub(crate) fn path_str(path: &Path) -> Result<&str> {
    path.to_str().context("non-UTF-8 path")
}
