//! A second hypervisor for the test bed, so that fleet features are tested against two daemons.
//!
//! It is a libvirtd that shares nothing with the bed's: its own network namespace (`vfbed2`) and,
//! through a mount namespace, its own /run/libvirt, /etc/libvirt, /var/lib/libvirt, /var/log/libvirt
//! and /var/cache/libvirt (bind mounts of per-fleet directories). A veth pair joins the two
//! namespaces; an sshd in the second one makes it reachable from the bed as a remote host would
//! be, `qemu+ssh://root@10.78.255.2/system`. Its guests live on 10.79.0.0/24, routed (not NATed)
//! so that the bed's namespace reaches them as it reaches its own.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde_json::json;

use crate::bed::{self, path_str, wait_until};
use crate::image::GuestImage;
use crate::sh;

/// The network namespace of the second daemon, its guests and its sshd.
const NETNS: &str = "vfbed2";
/// The veth end in the bed's namespace, and its peer in the fleet's.
const VETH_BED: &str = "vffl0";
const VETH_FLEET: &str = "vffl1";
const ADDRESS_BED: &str = "10.78.255.1";
const ADDRESS_FLEET: &str = "10.78.255.2";
/// The guest network: the bed's network and pool names, so one playbook fits both hypervisors.
const BRIDGE: &str = "vfbr1";
const GATEWAY: &str = "10.79.0.1";
const SUBNET: &str = "10.79.0.0/24";

/// Directories of the host that the second daemon gets a private copy of.
const PRIVATE_DIRS: &[(&str, &str)] = &[
    ("/run/libvirt", "run"),
    ("/etc/libvirt", "etc"),
    ("/var/lib/libvirt", "lib"),
    ("/var/log/libvirt", "log"),
    ("/var/cache/libvirt", "cache"),
];

/// Runtime files: the daemon's sockets (through the `run` bind mount), pid files, `fleet.json`.
fn run_dir() -> PathBuf {
    PathBuf::from("/run/virtfarm-fleet")
}

/// Persistent state of the second daemon, and its guests' disks; wiped on `fleet down`.
fn state_dir() -> PathBuf {
    PathBuf::from("/var/lib/virtfarm-fleet")
}

fn disks_dir() -> PathBuf {
    state_dir().join("disks")
}

/// The daemon's socket as seen from outside its mount namespace.
fn local_uri() -> String {
    format!("qemu+unix:///system?socket={}/libvirt-sock", run_dir().display())
}

/// How the bed's namespace reaches the second daemon: libvirt's ssh transport.
fn ssh_uri(key: &Path) -> String {
    format!("qemu+ssh://root@{ADDRESS_FLEET}/system?keyfile={}&no_verify=1", key.display())
}

fn virsh(args: &[&str]) -> Result<String> {
    let uri = local_uri();
    let mut all = vec!["-c", uri.as_str()];
    all.extend_from_slice(args);
    sh::output("virsh", &all)
}

fn in_netns(netns: &str, args: &[&str]) -> Result<()> {
    let mut all = vec!["netns", "exec", netns];
    all.extend_from_slice(args);
    sh::run("ip", &all)
}

/// True when the second daemon answers and `fleet.json` describes it.
fn fleet_is_up() -> bool {
    run_dir().join("fleet.json").exists() && virsh(&["net-info", bed::NETWORK]).is_ok()
}

/// Brings the second hypervisor up next to a running bed, or finds it up; returns `fleet.json`.
pub fn up(image: &GuestImage) -> Result<PathBuf> {
    if !bed::bed_is_up() {
        bail!("the test bed is not up: `cargo xtask bed up` first");
    }
    let fleet_json = run_dir().join("fleet.json");
    let keys = ensure_keys()?;
    if fleet_is_up() {
        eprintln!("fleet: already up ({})", fleet_json.display());
        return Ok(fleet_json);
    }
    down()?;
    let started = Instant::now();
    prepare_dirs()?;
    link_namespaces()?;
    start_daemons(&keys)?;
    wait_until(Duration::from_secs(30), "the second libvirtd to answer", || virsh(&["version"]).is_ok())?;
    define_resources(image)?;
    let uri = ssh_uri(&keys.client);
    wait_until(Duration::from_secs(30), "libvirt over ssh from the bed", || {
        sh::succeeds("ip", &["netns", "exec", bed::NETNS, "virsh", "-c", &uri, "version"])
    })?;
    let description = json!({
        "uri": uri,
        "local_uri": local_uri(),
        "netns": NETNS,
        "address": ADDRESS_FLEET,
        "network": bed::NETWORK,
        "bridge": BRIDGE,
        "gateway": GATEWAY,
        "images_pool": bed::IMAGES_POOL,
        "disks_pool": bed::DISKS_POOL,
        "disks_dir": disks_dir(),
        "ssh_key": keys.client,
    });
    std::fs::write(&fleet_json, serde_json::to_string_pretty(&description)?)?;
    eprintln!("fleet: second hypervisor up in {:.1} s ({})", started.elapsed().as_secs_f64(), fleet_json.display());
    Ok(fleet_json)
}

/// Fresh private libvirt directories; the configuration is the host's, without its objects.
fn prepare_dirs() -> Result<()> {
    for (_, private) in PRIVATE_DIRS {
        std::fs::create_dir_all(private_dir(private))?;
    }
    std::fs::create_dir_all(disks_dir())?;
    // Where domains' console logs go; the host's has it from the package, the copy must too.
    std::fs::create_dir_all(private_dir("log").join("qemu"))?;
    // Only the top-level *.conf files: the subdirectories hold the bed daemon's networks and pools.
    for entry in std::fs::read_dir("/etc/libvirt")?.flatten() {
        let path = entry.path();
        if path.is_file() && path.extension().is_some_and(|e| e == "conf") {
            std::fs::copy(&path, private_dir("etc").join(entry.file_name()))?;
        }
    }
    Ok(())
}

fn private_dir(name: &str) -> PathBuf {
    if name == "run" {
        run_dir()
    } else {
        state_dir().join(name)
    }
}

/// The namespace, the veth pair between it and the bed's, and the route to its guests.
fn link_namespaces() -> Result<()> {
    sh::run("ip", &["netns", "add", NETNS])?;
    in_netns(NETNS, &["ip", "link", "set", "lo", "up"])?;
    sh::run(
        "ip",
        &["link", "add", VETH_BED, "netns", bed::NETNS, "type", "veth", "peer", "name", VETH_FLEET, "netns", NETNS],
    )?;
    in_netns(bed::NETNS, &["ip", "addr", "add", &format!("{ADDRESS_BED}/30"), "dev", VETH_BED])?;
    in_netns(bed::NETNS, &["ip", "link", "set", VETH_BED, "up"])?;
    in_netns(NETNS, &["ip", "addr", "add", &format!("{ADDRESS_FLEET}/30"), "dev", VETH_FLEET])?;
    in_netns(NETNS, &["ip", "link", "set", VETH_FLEET, "up"])?;
    in_netns(bed::NETNS, &["ip", "route", "replace", SUBNET, "via", ADDRESS_FLEET])
}

/// virtlogd, libvirtd and sshd in one new mount namespace inside the fleet's network namespace.
///
/// The script only holds paths this file chose; the daemons outlive it and keep the namespace.
fn start_daemons(keys: &Keys) -> Result<()> {
    let sshd_config = write_sshd_config(keys)?;
    let mut script = String::from("set -e\n");
    for (target, private) in PRIVATE_DIRS {
        script += &format!("mount --bind {} {target}\n", private_dir(private).display());
    }
    let run = run_dir();
    script += &format!("virtlogd -d -p {}/virtlogd.pid\n", run.display());
    script += &format!("libvirtd -d -p {}/libvirtd.pid\n", run.display());
    script += &format!("mkdir -p /run/sshd\n/usr/sbin/sshd -f {}\n", sshd_config.display());
    in_netns(NETNS, &["unshare", "--mount", "--propagation", "private", "sh", "-c", &script])
}

/// The harness's own sshd: root by key only, listening on the veth address alone.
///
/// Its sessions start with `SHLVL=1`, so root's login shell (bash, which sshd runs for every
/// command) skips `~/.bashrc`: the remote host is this machine, whose root `~/.bashrc` belongs
/// to the build machine (0.2 s of `pyenv init` here) and not to a hypervisor; it would add
/// that to every ssh task of the figures, ours and the peers'.
fn write_sshd_config(keys: &Keys) -> Result<PathBuf> {
    let authorized = state_dir().join("authorized_keys");
    std::fs::copy(keys.client.with_extension("pub"), &authorized)?;
    let config = state_dir().join("sshd_config");
    std::fs::write(
        &config,
        format!(
            "ListenAddress {ADDRESS_FLEET}\nHostKey {}\nAuthorizedKeysFile {}\nPidFile {}/sshd.pid\n\
             PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
             UsePAM no\nStrictModes no\nSetEnv SHLVL=1\n",
            keys.host.display(),
            authorized.display(),
            run_dir().display(),
        ),
    )?;
    Ok(config)
}

/// The guest network (routed, DHCP) and the two pools, under the bed's names.
fn define_resources(image: &GuestImage) -> Result<()> {
    let net_xml = state_dir().join("network.xml");
    std::fs::write(
        &net_xml,
        format!(
            "<network><name>{}</name><forward mode='route'/><bridge name='{BRIDGE}' stp='off' delay='0'/>\
             <ip address='{GATEWAY}' netmask='255.255.255.0'><dhcp><range start='10.79.0.10' end='10.79.0.250'/></dhcp></ip></network>",
            bed::NETWORK
        ),
    )?;
    virsh(&["net-define", path_str(&net_xml)?])?;
    virsh(&["net-start", bed::NETWORK])?;
    for (pool, dir) in [(bed::IMAGES_POOL, image.dir.as_path()), (bed::DISKS_POOL, &disks_dir())] {
        virsh(&["pool-define-as", pool, "dir", "--target", path_str(dir)?])?;
        virsh(&["pool-start", pool])?;
    }
    Ok(())
}

/// The sshd host key and the client key, kept between runs so the host key stays the same.
struct Keys {
    host: PathBuf,
    client: PathBuf,
}

fn ensure_keys() -> Result<Keys> {
    let dir = crate::setup::cache_dir().join("fleet");
    std::fs::create_dir_all(&dir)?;
    let keys = Keys { host: dir.join("ssh_host_ed25519_key"), client: dir.join("id_ed25519") };
    for key in [&keys.host, &keys.client] {
        if !key.exists() {
            sh::output("ssh-keygen", &["-q", "-t", "ed25519", "-N", "", "-C", "virtfarm-fleet", "-f", path_str(key)?])?;
        }
    }
    Ok(keys)
}

/// Stops the second hypervisor: every process in its namespace, the namespace (and so the
/// veth pair and the route), and its private state with its guests' disks. The bed is untouched.
pub fn down() -> Result<()> {
    bed::remove_netns(NETNS)?;
    // The kernel frees a deleted namespace's devices later, so the bed's end of the pair may
    // outlive it for a moment; deleting it takes its peer too.
    let _ = sh::output("ip", &["-n", bed::NETNS, "link", "del", VETH_BED]);
    let _ = std::fs::remove_dir_all(run_dir());
    let _ = std::fs::remove_dir_all(state_dir());
    eprintln!("fleet: down");
    Ok(())
}
