//! Faults on the bed, each bounded: concurrent runs on one domain (the per-domain lock), a
//! full storage pool, guests that never lease or never answer their agent, modules killed in
//! the middle of a snapshot or a revert, and (opt-in) libvirtd restarted under a waiting run.
//!
//! Every domain here is named `fx-...`; each test removes what it made, however it ends.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bed::Bed;
use serde_json::{json, Value};
use virtfarm_libvirt::lock::{LockPolicy, LOCK_SUFFIX, UNWRITTEN_GRACE};
use virtfarm_libvirt::{Error, Hypervisor, PowerState};

fn hypervisor() -> Hypervisor {
    Hypervisor::open(&Bed::get().uri).expect("connect to the bed")
}

fn virsh(args: &[&str]) -> std::process::Output {
    Command::new("virsh").arg("-c").arg(&Bed::get().uri).args(args).stdin(Stdio::null()).output().expect("run virsh")
}

/// kvm_provision arguments for one guest of the bed in `pool`, defined but not started.
fn vm_args(name: &str, pool: &str) -> Value {
    let bed = Bed::get();
    json!({
        "name": name, "uri": bed.uri, "image": bed.base_volume, "image_pool": bed.images_pool, "pool": pool,
        "memory": 384, "networks": [bed.network], "state": "present",
        "kernel": { "path": bed.kernel, "initrd": bed.initrd, "cmdline": bed::GUEST_CMDLINE },
    })
}

/// Removes kvm_provision's VMs with their volumes, however the test ends.
struct Provisioned(Vec<Value>);

impl Drop for Provisioned {
    fn drop(&mut self) {
        for args in &self.0 {
            let mut args = args.clone();
            args["state"] = json!("absent");
            args["remove_storage"] = json!(true);
            Bed::get().run_module("kvm_provision", args);
        }
    }
}

/// Starts a module binary as Ansible would, without waiting for it (to race or kill it).
fn spawn_module(module: &str, args: &Value) -> (Child, PathBuf) {
    let bed = Bed::get();
    let dir = bed::tempdir();
    let args_file = dir.join("args");
    std::fs::write(&args_file, args.to_string()).expect("write the args file");
    // `ip netns exec` execs the module: the child's pid is the module's.
    let child = Command::new("ip")
        .args(["netns", "exec", &bed.netns])
        .arg(bed.binary(module))
        .arg(&args_file)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the module");
    (child, dir)
}

/// The one JSON object a finished module printed.
fn reply_of(child: Child, dir: PathBuf) -> Value {
    let output = child.wait_with_output().expect("wait for the module");
    let _ = std::fs::remove_dir_all(dir);
    let stdout = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!("no single JSON object ({e}): {stdout}\n{}", String::from_utf8_lossy(&output.stderr))
    })
}

fn failed(reply: &Value) -> bool {
    reply["failed"] == true
}

fn msg(reply: &Value) -> &str {
    reply["msg"].as_str().unwrap_or_default()
}

fn lock_volume(bed: &Bed, domain: &str) -> PathBuf {
    bed.disks_dir.join(format!("{domain}{LOCK_SUFFIX}"))
}

/// What the lock volume of a process that no longer exists looks like.
fn dead_owner() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("host name");
    format!("{} {} {}\n", host.trim(), u32::MAX - 7, virtfarm_libvirt::wait::unix_now())
}

/// Two runs on one domain never change it at once; a lock left by a killed run is taken
/// over; nothing is created while another run holds the domain. No guest boots here.
#[test]
#[ignore = "needs the test bed: cargo xtask test"]
fn concurrent_runs_on_one_domain_take_turns() {
    let bed = Bed::get();
    let hv = hypervisor();
    let name = bed.unique_name("fx-lock");
    let args = vm_args(&name, &bed.disks_pool);
    let _cleanup = Provisioned(vec![args.clone()]);

    // The library: one holder at a time; the loser is told who holds it; drop releases.
    let held = hv.lock_domain(&bed.disks_pool, &name, &LockPolicy::default()).expect("first lock");
    let started = Instant::now();
    let waiting = LockPolicy { wait: Duration::from_secs(2), ..LockPolicy::default() };
    let refused = hv.lock_domain(&bed.disks_pool, &name, &waiting).expect_err("a second lock while held");
    assert!(
        started.elapsed() >= Duration::from_secs(2) && started.elapsed() < Duration::from_secs(10),
        "waited {:?}",
        started.elapsed()
    );
    let text = refused.to_string();
    assert!(matches!(refused, Error::Refused(_)), "{refused:?}");
    assert!(text.contains(&name) && text.contains(&format!("process {}", std::process::id())), "{text}");

    // kvm_provision while the test holds the domain: refused naming it, nothing created.
    let reply = bed.run_module("kvm_provision", args.clone());
    assert!(failed(&reply) && msg(&reply).contains("being changed by another run"), "{reply}");
    assert!(hv.find_vm(&name).expect("lookup").is_none(), "defined while locked");
    assert!(!bed.disks_dir.join(format!("{name}.qcow2")).exists(), "disk cloned while locked");
    // Check mode takes no lock: it changes nothing, so it may look while another run works.
    let mut check = args.clone();
    check["_ansible_check_mode"] = json!(true);
    let reply = bed.run_module("kvm_provision", check);
    assert!(!failed(&reply) && reply["changed"] == true, "{reply}");
    drop(held);
    assert!(!lock_volume(bed, &name).exists(), "the lock volume outlived its lock");

    // A lock left by a run that was killed on this host is taken over at once.
    hv.put_volume(&bed.disks_pool, &format!("{name}{LOCK_SUFFIX}"), dead_owner().as_bytes())
        .expect("plant a dead owner's lock");
    let reply = bed.run_module("kvm_provision", args.clone());
    assert!(!failed(&reply) && reply["changed"] == true, "{reply}");
    assert!(!lock_volume(bed, &name).exists(), "kvm_provision left its lock behind");
    // A run killed between creating its lock volume and writing its owner left zeros: the next
    // run waits out the grace (the creator may be about to write) and then takes it over.
    hv.put_volume(&bed.disks_pool, &format!("{name}{LOCK_SUFFIX}"), &[0u8; 24]).expect("plant an unwritten lock");
    let started = Instant::now();
    let reply = bed.run_module("kvm_provision", args.clone());
    assert!(!failed(&reply), "{reply}");
    assert!(started.elapsed() >= UNWRITTEN_GRACE, "taken over after {:?}", started.elapsed());
    assert!(!lock_volume(bed, &name).exists(), "kvm_provision left its lock behind");
    // A fresh lock of another host is respected; the same lock, old, is taken over.
    let other = format!("ctl9.invalid 4242 {}\n", virtfarm_libvirt::wait::unix_now());
    hv.put_volume(&bed.disks_pool, &format!("{name}{LOCK_SUFFIX}"), other.as_bytes()).expect("plant a live lock");
    let refused =
        hv.lock_domain(&bed.disks_pool, &name, &LockPolicy::default()).expect_err("another host's fresh lock");
    assert!(refused.to_string().contains("process 4242 on ctl9.invalid"), "{refused}");
    let impatient = LockPolicy { wait: Duration::ZERO, stale_after: Duration::ZERO };
    hv.lock_domain(&bed.disks_pool, &name, &impatient).expect("a stale lock is taken over").release().expect("release");

    // Two runs at once on one name with different memory: each either changes the domain
    // alone or fails naming the other; one domain, one disk, one of the two definitions.
    for round in 0..3 {
        let mut runs = Vec::new();
        for memory in [400, 448] {
            let mut args = args.clone();
            args["memory"] = json!(memory + round);
            runs.push(spawn_module("kvm_provision", &args));
        }
        let replies: Vec<Value> = runs.into_iter().map(|(child, dir)| reply_of(child, dir)).collect();
        for reply in replies.iter().filter(|r| failed(r)) {
            assert!(msg(reply).contains("being changed by another run"), "round {round}: {reply}");
        }
        assert!(replies.iter().any(|r| !failed(r)), "round {round}: both failed: {replies:?}");
        let facts = hv.vm(&name).expect("still defined").facts().expect("facts");
        assert!([400 + round, 448 + round].contains(&facts.memory_mib), "round {round}: {} MiB", facts.memory_mib);
        assert_eq!(facts.disks.iter().filter(|d| d.target == "vda").count(), 1);
        assert!(!lock_volume(bed, &name).exists(), "round {round}: a lock was left behind");
        eprintln!("fx: concurrent round {round}: {} of 2 runs refused", replies.iter().filter(|r| failed(r)).count());
    }

    // snapshot_libvirt while the domain is held (a shut-off domain: internal snapshots need no boot).
    let held = hv.lock_domain(&bed.disks_pool, &name, &LockPolicy::default()).expect("lock again");
    let snapshot = json!({"name": name, "uri": bed.uri, "snapshot": "fx1"});
    let reply = bed.run_module("snapshot_libvirt", snapshot.clone());
    assert!(failed(&reply) && msg(&reply).contains("being changed by another run"), "{reply}");
    assert!(hv.vm(&name).expect("defined").facts().is_ok());
    drop(held);
    let reply = bed.run_module("snapshot_libvirt", snapshot.clone());
    assert!(!failed(&reply) && reply["changed"] == true, "{reply}");
    let reply =
        bed.run_module("snapshot_libvirt", json!({"name": name, "uri": bed.uri, "snapshot": "fx1", "state": "absent"}));
    assert!(!failed(&reply), "{reply}");
}

/// Two deployments at once that ask for one new network: it is created once, and neither
/// run leaves the other's VM broken.
#[test]
#[ignore = "needs the test bed: cargo xtask test"]
fn two_deployments_creating_one_network_at_once() {
    let bed = Bed::get();
    let hv = hypervisor();
    let network = bed.unique_name("fx-net");
    let subnet = format!("10.79.{}.0/24", std::process::id() % 200 + 20);
    let names = [bed.unique_name("fx-dep"), bed.unique_name("fx-dep")];
    let args: Vec<Value> = names
        .iter()
        .map(|name| {
            let mut args = vm_args(name, &bed.disks_pool);
            args["networks"] = json!([{ "network": network, "subnet": subnet }]);
            args
        })
        .collect();
    let _cleanup = Provisioned(args.clone());
    let runs: Vec<_> = args.iter().map(|a| spawn_module("kvm_provision", a)).collect();
    let replies: Vec<Value> = runs.into_iter().map(|(child, dir)| reply_of(child, dir)).collect();
    let _ = virsh(&["net-destroy", &network]);
    let _ = virsh(&["net-undefine", &network]);
    for (name, reply) in names.iter().zip(&replies) {
        if failed(reply) {
            // The loser says what clashed, and left nothing of its own.
            assert!(msg(reply).contains(&network), "{reply}");
            assert!(hv.find_vm(name).expect("lookup").is_none(), "{name} half-created: {reply}");
        }
    }
    assert!(replies.iter().any(|r| !failed(r)), "both failed: {replies:?}");
    eprintln!("fx: one network, two deployments: {} of 2 refused", replies.iter().filter(|r| failed(r)).count());
}

/// A storage pool on a tmpfs too small for a clone: a clear error naming the VM and the
/// volume, and no domain, volume or lock left behind, on this run and the next.
#[test]
#[ignore = "needs the test bed: cargo xtask test"]
fn a_full_pool_fails_clearly_and_leaves_nothing() {
    let bed = Bed::get();
    let hv = hypervisor();
    let pool = bed.unique_name("fx-tiny");
    let dir = bed::tempdir();
    let dir_text = dir.to_str().expect("UTF-8 path").to_string();
    // Three pages: room for a lock volume, not for a qcow2 overlay (four clusters written).
    // Mounted where libvirtd sees it: the bed's daemon has a mount namespace of its own.
    in_daemon_mounts(&["mount", "-t", "tmpfs", "-o", "size=12k", "fxtiny", &dir_text]);
    struct Teardown(String, String);
    impl Drop for Teardown {
        fn drop(&mut self) {
            let _ = virsh(&["pool-destroy", &self.0]);
            in_daemon_mounts(&["umount", &self.1]);
            let _ = std::fs::remove_dir_all(&self.1);
        }
    }
    let _teardown = Teardown(pool.clone(), dir_text.clone());
    let xml_file = bed::tempdir().join("pool.xml");
    std::fs::write(
        &xml_file,
        format!("<pool type='dir'><name>{pool}</name><target><path>{dir_text}</path></target></pool>"),
    )
    .expect("pool xml");
    let created = virsh(&["pool-create", xml_file.to_str().expect("UTF-8")]);
    let _ = std::fs::remove_dir_all(xml_file.parent().expect("parent"));
    assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stderr));

    let name = bed.unique_name("fx-full");
    let mut args = vm_args(&name, &pool);
    args["cloud_init"] = json!({ "runcmd": ["true"] });
    let _cleanup = Provisioned(vec![args.clone()]);
    for attempt in 0..2 {
        let reply = bed.run_module("kvm_provision", args.clone());
        assert!(failed(&reply), "attempt {attempt}: {reply}");
        let text = msg(&reply);
        assert!(text.contains(&name) && text.contains(&format!("{name}.qcow2")), "attempt {attempt}: {text}");
        assert!(hv.find_vm(&name).expect("lookup").is_none(), "attempt {attempt}: defined on a full pool");
        let _ = virsh(&["pool-refresh", &pool]);
        let left = String::from_utf8_lossy(&virsh(&["vol-list", &pool, "--name"]).stdout).trim().to_string();
        assert!(left.is_empty(), "attempt {attempt}: left in the full pool: {left} ({text})");
        eprintln!("fx: full pool, attempt {attempt}: {text}");
    }
}

#[test]
#[ignore = "needs the test bed: cargo xtask test"]
fn a_definition_libvirt_refuses_leaves_no_volumes() {
    let bed = Bed::get();
    let name = bed.unique_name("fx-undefinable");
    let mut args = vm_args(&name, &bed.disks_pool);
    args["cloud_init"] = json!({ "runcmd": ["true"] });
    // Valid for the module, refused by libvirt at define time: after the clone and the seed exist.
    args["machine"] = json!("no-such-machine");
    let _cleanup = Provisioned(vec![args.clone()]);
    let reply = bed.run_module("kvm_provision", args);
    assert!(failed(&reply), "{reply}");
    assert!(msg(&reply).contains(&format!("{name}: defining a domain")), "{reply}");
    assert!(hypervisor().find_vm(&name).expect("lookup").is_none(), "{reply}");
    let _ = virsh(&["pool-refresh", &bed.disks_pool]);
    let volumes = String::from_utf8_lossy(&virsh(&["vol-list", &bed.disks_pool, "--name"]).stdout).to_string();
    let left: Vec<&str> = volumes.lines().map(str::trim).filter(|v| v.starts_with(&name)).collect();
    assert!(left.is_empty(), "volumes of a domain that was never defined: {left:?} ({reply})");
}

/// Runs a command in the mount namespace of the bed's libvirtd.
fn in_daemon_mounts(command: &[&str]) {
    let pid = std::fs::read_to_string("/run/libvirtd.pid").expect("libvirtd pid file");
    let status =
        Command::new("nsenter").args(["-t", pid.trim(), "-m", "--"]).args(command).status().expect("run nsenter");
    assert!(status.success() || command[0] == "umount", "{command:?} in libvirtd's mount namespace");
}

/// A guest whose network and agent never come up: `wait: lease` and `wait: agent` fail
/// within their timeouts, naming the VM and what never came.
#[test]
#[ignore = "needs the test bed: cargo xtask test"]
fn silent_guests_fail_within_the_timeout_naming_vm_and_signal() {
    let bed = Bed::get();
    let name = bed.unique_name("fx-silent");
    let mut args = vm_args(&name, &bed.disks_pool);
    let cmdline =
        format!("{} systemd.mask=systemd-networkd.service systemd.mask=qemu-guest-agent.service", bed::GUEST_CMDLINE);
    args["kernel"]["cmdline"] = json!(cmdline);
    args["state"] = json!("running");
    let _cleanup = Provisioned(vec![args.clone()]);
    let _slot = bed.boot_slot();
    for (signal, timeout) in [("lease", 45), ("agent", 20)] {
        let mut args = args.clone();
        args["wait"] = json!(signal);
        args["wait_timeout"] = json!(timeout);
        let started = Instant::now();
        let reply = bed.run_module("kvm_provision", args);
        let took = started.elapsed();
        assert!(failed(&reply), "{signal}: {reply}");
        assert!(msg(&reply).contains(&name) && msg(&reply).contains(signal), "{signal}: {}", msg(&reply));
        assert!(took < Duration::from_secs(timeout + 30), "{signal}: took {took:?} for a {timeout} s bound");
        eprintln!(
            "fx: silent guest, wait {signal} {timeout} s: failed after {:.1} s: {}",
            took.as_secs_f64(),
            msg(&reply)
        );
    }
}

/// Guest files and their checksums, written and checked over SSH.
struct GuestFiles {
    ip: String,
    sums: Vec<(String, String)>,
}

impl GuestFiles {
    /// Writes 1 MiB of random data to `path`, flushed, and remembers its checksum.
    fn write(&mut self, path: &str) {
        let command = format!("head -c 1048576 /dev/urandom > {path} && sync && sha256sum {path}");
        let out = Bed::get().ssh_until_ok(&self.ip, &command, Duration::from_secs(240));
        self.sums.push((path.to_string(), out));
    }

    /// The first `count` files written read back with their checksums.
    fn check(&self, count: usize, when: &str) {
        for (path, sum) in &self.sums[..count] {
            let now = Bed::get().ssh_until_ok(&self.ip, &format!("sha256sum {path}"), Duration::from_secs(240));
            assert_eq!(&now, sum, "{when}: {path} changed");
        }
    }
}

/// snapshot_libvirt killed (SIGKILL) at several points of an external create and of a
/// revert: the next run repairs or refuses clearly, the guest runs, no written data is lost.
#[test]
#[ignore = "needs the test bed: cargo xtask test"]
fn killed_snapshot_runs_are_repaired_or_refused_and_lose_no_data() {
    let bed = Bed::get();
    let hv = hypervisor();
    let name = bed.unique_name("fx-kill");
    let vm = bed.boot_vm(&name);
    let _overlays = Overlays(bed.disks_dir.clone(), name.clone());
    let mut files = GuestFiles { ip: vm.wait_ip(Duration::from_secs(300)), sums: Vec::new() };
    files.write("/var/tmp/before");
    let base = json!({"name": name, "uri": bed.uri});
    let with = |extra: Value| {
        let mut args = base.clone();
        args.as_object_mut().expect("object").extend(extra.as_object().expect("object").clone());
        args
    };
    for (i, delay_ms) in [0u64, 40, 120, 300, 700].into_iter().enumerate() {
        let snapshot = format!("fx{i}");
        let args = with(json!({"snapshot": snapshot, "type": "external"}));
        let again = kill_then_rerun("snapshot_libvirt", &args, delay_ms);
        eprintln!("fx: create of {snapshot} killed at {delay_ms} ms: {}", summary(&again));
        assert!(!failed(&again) || !msg(&again).is_empty(), "{again}");
        assert_eq!(
            hv.vm(&name).expect("domain").power_state().expect("state"),
            PowerState::Running,
            "after {snapshot}"
        );
        files.check(files.sums.len(), &format!("after killing the create of {snapshot}"));
        files.write(&format!("/var/tmp/after-{snapshot}"));
    }
    // A revert to fx0 brings back what the guest had then: "before" and nothing later.
    for delay_ms in [0u64, 80, 300, 1000] {
        let args =
            with(json!({"snapshot": "fx0", "state": "reverted", "after_revert": {"wait": "lease", "timeout": 300}}));
        let again = kill_then_rerun("snapshot_libvirt", &args, delay_ms);
        eprintln!("fx: revert to fx0 killed at {delay_ms} ms: {}", summary(&again));
        assert!(!failed(&again), "the run after a killed revert: {again}");
        let domain = hv.vm(&name).expect("domain");
        if domain.power_state().expect("state") == PowerState::ShutOff {
            // Killed after the guest was stopped for the disk swap, the revert's "restore the
            // power state" died with it: the next run sees a shut-off guest and keeps it so.
            // Known gap (reported): the guest's data is intact; start it as a user would.
            eprintln!("fx: revert killed at {delay_ms} ms left {name} shut off; the next run did not start it again");
            domain.start().expect("start the guest again");
            files.ip = vm.wait_ip(Duration::from_secs(300));
        }
        files.check(1, &format!("after a revert killed at {delay_ms} ms"));
    }
    assert!(!lock_volume(bed, &name).exists(), "a killed run's lock outlived the repair");
    drop(vm);
}

/// Starts `module`, SIGKILLs it after `delay_ms`, then runs it again to the end.
fn kill_then_rerun(module: &str, args: &Value, delay_ms: u64) -> Value {
    let (mut child, dir) = spawn_module(module, args);
    std::thread::sleep(Duration::from_millis(delay_ms));
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(dir);
    Bed::get().run_module(module, args.clone())
}

fn summary(reply: &Value) -> String {
    if failed(reply) {
        format!("next run failed: {}", msg(reply))
    } else {
        "next run ok".to_string()
    }
}

/// Removes the external overlays of a test domain (named after it) from the disks pool.
struct Overlays(PathBuf, String);

impl Drop for Overlays {
    fn drop(&mut self) {
        let Ok(entries) = std::fs::read_dir(&self.0) else { return };
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(&self.1) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        let _ = virsh(&["pool-refresh", &Bed::get().disks_pool]);
    }
}

/// libvirtd restarted while kvm_provision waits for a lease: the run fails or recovers with
/// a clear message within its timeout, and the bed works afterwards. Restarting the shared
/// daemon breaks other runs' connections, so this runs only with VIRTFARM_FAULTS_RESTART=1.
#[test]
#[ignore = "needs the test bed: cargo xtask test"]
fn daemon_restart_while_waiting_for_a_lease() {
    if std::env::var("VIRTFARM_FAULTS_RESTART").as_deref() != Ok("1") {
        eprintln!("fx: daemon restart skipped (set VIRTFARM_FAULTS_RESTART=1; it disturbs other runs on the bed)");
        return;
    }
    let bed = Bed::get();
    let name = bed.unique_name("fx-restart");
    let mut args = vm_args(&name, &bed.disks_pool);
    args["state"] = json!("running");
    args["wait"] = json!("lease");
    args["wait_timeout"] = json!(240);
    let _cleanup = Provisioned(vec![args.clone()]);
    let _slot = bed.boot_slot();
    let started = Instant::now();
    let (child, dir) = spawn_module("kvm_provision", &args);
    // Restart the daemon once the domain runs, i.e. while the module waits.
    let hv = hypervisor();
    while !hv.find_vm(&name).ok().flatten().is_some_and(|vm| vm.power_state().ok() == Some(PowerState::Running)) {
        assert!(started.elapsed() < Duration::from_secs(60), "the VM never started");
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(hv);
    restart_libvirtd(bed);
    let reply = reply_of(child, dir);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(240 + 30), "took {took:?}");
    if failed(&reply) {
        assert!(msg(&reply).contains(&name), "{reply}");
    } else {
        assert!(reply["vms"][0]["ip"].is_string(), "{reply}");
    }
    eprintln!(
        "fx: libvirtd restarted during wait: after {:.1} s: {}",
        took.as_secs_f64(),
        if failed(&reply) { msg(&reply) } else { "recovered" }
    );
    assert!(hypervisor().find_vm(&name).expect("the bed answers again").is_some());
}

/// True while `pid` runs; a zombie (stopped, not yet reaped by init) counts as gone.
fn process_alive(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| !stat.rsplit(')').next().unwrap_or_default().trim_start().starts_with('Z'))
}

fn restart_libvirtd(bed: &Bed) {
    let pid = std::fs::read_to_string("/run/libvirtd.pid").expect("libvirtd pid file");
    let pid = pid.trim();
    let killed = Command::new("kill").arg(pid).status().expect("kill");
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    while process_alive(pid) {
        assert!(Instant::now() < deadline, "libvirtd {pid} did not stop");
        std::thread::sleep(Duration::from_millis(100));
    }
    let started = bed.in_netns("libvirtd", &["-d"]);
    assert!(started.status.success(), "{}", String::from_utf8_lossy(&started.stderr));
    while Hypervisor::open(&bed.uri).is_err() {
        assert!(Instant::now() < deadline, "libvirtd did not come back");
        std::thread::sleep(Duration::from_millis(100));
    }
}
