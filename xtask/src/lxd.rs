//! The bed's LXD daemon: Debian's `lxd`, started inside the bed's network namespace with a
//! state directory of its own (so it never meets an LXD of the host's), a `dir` storage pool,
//! a bridge of its own without NAT, HTTPS on that bridge's address, and the two images the project builds (see
//! xtask/guest/build-lxd-images.sh). `bed down` removes it all.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::json;

use crate::bed::{self, wait_until, NETNS};
use crate::sh;

const NETWORK: &str = "vflxd0";
const GATEWAY_CIDR: &str = "10.81.0.1/24";
/// LXD's HTTPS API on its bridge's address: reachable only inside the namespace.
const HTTPS_ADDRESS: &str = "10.81.0.1:8443";
const POOL: &str = "default";
/// Image aliases: a busybox-static root, and the bullseye root (python3) with busybox as init.
const BUSYBOX_IMAGE: &str = "vf-busybox";
const PYTHON_IMAGE: &str = "vf-python";

/// LXD's state directory; its `unix.socket` is the REST API.
fn dir() -> PathBuf {
    PathBuf::from("/var/lib/virtfarm-bed/lxd")
}

fn socket() -> PathBuf {
    dir().join("unix.socket")
}

/// `lxd.json`, which tells the tests about the daemon: a file of its own, so that a `bed.json`
/// written by another checkout of the project, running beside this one, does not drop it.
pub fn description() -> PathBuf {
    bed::state_dir().join("lxd.json")
}

fn lxc(args: &[&str]) -> Result<String> {
    let mut command = Command::new("lxc");
    command.env("LXD_DIR", dir()).args(args).stdin(Stdio::null());
    let out = command.output().context("cannot run lxc")?;
    if !out.status.success() {
        bail!("lxc {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn answers() -> bool {
    socket().exists() && lxc(&["query", "/1.0"]).is_ok()
}

/// Starts the daemon (or finds it running) and makes its pool, bridge, profile and images;
/// each step is skipped when already done.
pub fn up(images: &Path) -> Result<()> {
    if !sh::succeeds("ip", &["netns", "exec", NETNS, "true"]) {
        bail!("the bed's namespace {NETNS} is missing: run `cargo xtask bed up`");
    }
    let started = Instant::now();
    if !answers() {
        start()?;
        eprintln!("lxd: daemon answers after {:.1} s", started.elapsed().as_secs_f64());
    }
    if lxc(&["storage", "show", POOL]).is_err() {
        lxc(&["storage", "create", POOL, "dir"])?;
    }
    if lxc(&["network", "show", NETWORK]).is_err() {
        let address = format!("ipv4.address={GATEWAY_CIDR}");
        lxc(&["network", "create", NETWORK, &address, "ipv4.nat=false", "ipv6.address=none"])?;
    }
    let profile = lxc(&["profile", "show", "default"])?;
    if !profile.contains("root:") {
        lxc(&["profile", "device", "add", "default", "root", "disk", "path=/", &format!("pool={POOL}")])?;
    }
    if !profile.contains("eth0:") {
        lxc(&["profile", "device", "add", "default", "eth0", "nic", &format!("network={NETWORK}"), "name=eth0"])?;
    }
    if lxc(&["config", "get", "core.https_address"])?.trim() != HTTPS_ADDRESS {
        lxc(&["config", "set", "core.https_address", HTTPS_ADDRESS])?;
    }
    for (alias, file) in [(BUSYBOX_IMAGE, "busybox.tar.gz"), (PYTHON_IMAGE, "python.tar")] {
        if lxc(&["image", "show", alias]).is_err() {
            lxc(&["image", "import", bed::path_str(&images.join(file))?, "--alias", alias])?;
        }
    }
    let described = json!({
        "dir": dir(),
        "socket": socket(),
        "https_address": HTTPS_ADDRESS,
        "server_cert": dir().join("server.crt"),
        "network": NETWORK,
        "busybox_image": BUSYBOX_IMAGE,
        "python_image": PYTHON_IMAGE,
    });
    std::fs::write(description(), serde_json::to_string_pretty(&described)?)?;
    eprintln!("lxd: up in {:.1} s ({})", started.elapsed().as_secs_f64(), description().display());
    Ok(())
}

/// Starts `lxd` in the bed's network namespace, in a mount namespace of its own: `/sys` is
/// mounted again there so that LXD sees the namespace's network devices (as `ip netns exec`
/// does), with the host's cgroup hierarchies moved back under it (which `ip netns exec`
/// would hide, and LXD needs them).
fn start() -> Result<()> {
    std::fs::create_dir_all(dir())?;
    std::fs::create_dir_all(bed::state_dir())?;
    let log = std::fs::File::create(bed::state_dir().join("lxd.log"))?;
    let cgroup = bed::state_dir().join("lxd-cgroup");
    let script = format!(
        "set -e; mkdir -p {cgroup}; mount --rbind /sys/fs/cgroup {cgroup}; mount -t sysfs sysfs /sys; \
         mount --move {cgroup} /sys/fs/cgroup; exec lxd --group root",
        cgroup = bed::path_str(&cgroup)?
    );
    let netns = format!("--net=/run/netns/{NETNS}");
    eprintln!("$ setsid nsenter {netns} unshare -m --propagation slave sh -c '{script}'");
    Command::new("setsid")
        .args(["nsenter", &netns, "unshare", "-m", "--propagation", "slave", "sh", "-c", &script])
        .env("LXD_DIR", dir())
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("cannot start lxd")?;
    wait_until(Duration::from_secs(30), "lxd to answer", answers)
}

/// Deletes the instances and the bridge, stops the daemon, and removes its state directory.
pub fn down() -> Result<()> {
    if answers() {
        // The tests make theirs in the default project.
        for name in lxc(&["list", "--format", "csv", "--columns", "n"])?.lines() {
            let _ = lxc(&["delete", "--force", name.trim()]);
        }
        let _ = lxc(&["network", "delete", NETWORK]);
        let mut shutdown = Command::new("timeout");
        shutdown.args(["60", "lxd", "shutdown"]).env("LXD_DIR", dir()).stdin(Stdio::null());
        let _ = shutdown.status();
    }
    let _ = std::fs::remove_dir_all(dir());
    let _ = std::fs::remove_file(description());
    eprintln!("lxd: down");
    Ok(())
}
