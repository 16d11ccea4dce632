//! Helpers for tests that run against the test bed (`cargo xtask bed up`).
//!
//! The bed is one libvirtd in the network namespace `vfbed`; `bed.json` describes it. Tests
//! share it: names are unique per test, and [`Bed::boot_slot`] keeps the number of guests
//! booting at once low, since a TCG guest boot is CPU-bound on a 2-core machine.
#![deny(missing_docs)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::Value;
use virtfarm_libvirt::{wait, Hypervisor};

/// What `bed.json` says about the running bed.
#[derive(Debug, Deserialize)]
pub struct Bed {
    /// libvirt URI of the bed's daemon.
    pub uri: String,
    /// The network namespace everything lives in.
    pub netns: String,
    /// The NAT network with DHCP.
    pub network: String,
    /// Its bridge.
    pub bridge: String,
    /// Its gateway address.
    pub gateway: String,
    /// The pool holding the base image.
    pub images_pool: String,
    /// The base image's volume name in `images_pool`.
    pub base_volume: String,
    /// The base image's path.
    pub base_image: PathBuf,
    /// The bootable disk's volume name in `images_pool` (partitions, BIOS and UEFI boot
    /// loaders, no user or key: cloud-init makes them); empty in a bed described before it.
    #[serde(default)]
    pub bootable_volume: String,
    /// The bootable disk's path.
    #[serde(default)]
    pub bootable_image: PathBuf,
    /// The pool for clones.
    pub disks_pool: String,
    /// Its directory.
    pub disks_dir: PathBuf,
    /// The guest kernel (direct kernel boot).
    pub kernel: PathBuf,
    /// The guest initrd.
    pub initrd: PathBuf,
    /// The private key the guest's `ssh_user` accepts.
    pub ssh_key: PathBuf,
    /// The guest user with passwordless sudo.
    pub ssh_user: String,
    /// The Python venv with ansible-core.
    pub venv: PathBuf,
    /// Where `cargo xtask collection` installed the built collection tarball.
    pub collections_path: PathBuf,
    /// The assembled collection tree the tarball was built from (it has galaxy.yml).
    pub collection_tree: PathBuf,
    /// A Debian bullseye root directory with libvirt0 and python3, to chroot into; empty in a
    /// bed described before it.
    #[serde(default)]
    pub bullseye_root: PathBuf,
}

/// What an Ansible command did.
#[derive(Debug)]
pub struct AnsibleRun {
    /// True when it exited 0.
    pub success: bool,
    /// Its stdout: with the `json` callback, one JSON document.
    pub stdout: String,
    /// Its stderr.
    pub stderr: String,
}

impl AnsibleRun {
    /// stdout parsed as the `json` callback's document; panics with the output otherwise.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}):\nstdout: {}\nstderr: {}", self.stdout, self.stderr))
    }
}

/// Guests that may boot at once across the test binary.
const CONCURRENT_BOOTS: usize = 2;

/// Kernel command line of the bed's guest image.
pub const GUEST_CMDLINE: &str = "root=/dev/vda rw console=ttyS0 net.ifnames=0";

static BED: OnceLock<Bed> = OnceLock::new();

/// When the first test asked for the bed: the end of each test is logged against it, to show
/// how the two test threads fill the run.
static RUN_STARTED: OnceLock<Instant> = OnceLock::new();

thread_local! {
    /// Started by a test's first [`Bed::get`]; says how long the test took when its thread
    /// ends, so that every run's log shows what each VM test costs.
    static TEST_CLOCK: TestClock = TestClock(Instant::now());
}

struct TestClock(Instant);

impl Drop for TestClock {
    fn drop(&mut self) {
        use std::io::Write;
        let name = std::thread::current().name().unwrap_or("a test").to_string();
        // Straight to stderr: libtest captures print macros, and a passing test's output is dropped.
        let (took, into_run) = (self.0.elapsed(), RUN_STARTED.get().map_or(Duration::ZERO, Instant::elapsed));
        let (took, into_run) = (took.as_secs_f64(), into_run.as_secs_f64());
        let _ = writeln!(std::io::stderr(), "bed: {name} took {took:.1} s, ended {into_run:.0} s into the run");
    }
}
static BOOTING: (Mutex<usize>, Condvar) = (Mutex::new(0), Condvar::new());
static NAMES: AtomicUsize = AtomicUsize::new(0);

impl Bed {
    /// The running bed. Panics with what to do when it is not up: VM tests are `#[ignore]`d
    /// and run only through `cargo xtask test`, which brings it up.
    pub fn get() -> &'static Bed {
        RUN_STARTED.get_or_init(Instant::now);
        TEST_CLOCK.with(|_| {});
        BED.get_or_init(|| {
            let path = std::env::var("VIRTFARM_BED").unwrap_or_else(|_| "/run/virtfarm-bed/bed.json".into());
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("the test bed is not up ({path}: {e}); run `cargo xtask test`"));
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
        })
    }

    /// Blocks until fewer than two guests are booting; hold the guard while yours boots.
    pub fn boot_slot(&self) -> BootSlot {
        let (count, freed) = &BOOTING;
        let mut booting = count.lock().unwrap_or_else(|e| e.into_inner());
        while *booting >= CONCURRENT_BOOTS {
            booting = freed.wait(booting).unwrap_or_else(|e| e.into_inner());
        }
        *booting += 1;
        BootSlot(())
    }

    /// A domain name unique in this test run, e.g. `kp-4711-3`.
    pub fn unique_name(&self, prefix: &str) -> String {
        format!("{prefix}-{}-{}", std::process::id() % 100_000, NAMES.fetch_add(1, Ordering::Relaxed))
    }

    /// Path of a binary built from this workspace (`cargo xtask test` builds them first).
    pub fn binary(&self, name: &str) -> PathBuf {
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"), PathBuf::from);
        let path = target.join("debug").join(name);
        assert!(path.exists(), "{} is not built: run `cargo build --workspace --bins`", path.display());
        path
    }

    /// Runs a module binary the way Ansible does (flat JSON args in a file named by argv[1]),
    /// inside the namespace, and returns its one JSON result.
    pub fn run_module(&self, module: &str, args: Value) -> Value {
        self.run_program(&self.binary(module), args)
    }

    /// Runs the module binary at `program` as Ansible does; see [`Bed::run_module`].
    pub fn run_program(&self, program: &Path, args: Value) -> Value {
        let dir = tempdir();
        let args_file = dir.join("args");
        std::fs::write(&args_file, args.to_string()).expect("write the args file");
        let output = self.in_netns(program.to_str().expect("UTF-8 path"), &[args_file.to_str().expect("UTF-8 path")]);
        let _ = std::fs::remove_dir_all(&dir);
        let stdout = String::from_utf8_lossy(&output.stdout);
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
            panic!(
                "{} printed no single JSON object ({e}):\nstdout: {stdout}\nstderr: {}",
                program.display(),
                String::from_utf8_lossy(&output.stderr)
            )
        })
    }

    /// Runs a command inside the bed's namespace.
    pub fn in_netns(&self, program: &str, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.netns, program])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run ip netns exec")
    }

    /// Runs an Ansible program of the venv (`ansible`, `ansible-playbook`, `ansible-inventory`,
    /// `ansible-doc`, ...) inside the namespace, with the installed collection, the guest key,
    /// and the `json` stdout callback; bounded to 15 minutes.
    pub fn ansible(&self, program: &str, args: &[&str]) -> AnsibleRun {
        let output = self.ansible_command(program).args(args).output().unwrap_or_else(|e| panic!("run {program}: {e}"));
        AnsibleRun {
            success: output.status.success(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// The command [`Bed::ansible`] runs, for callers that add a working directory or env.
    pub fn ansible_command(&self, program: &str) -> Command {
        let program = self.venv.join("bin").join(program);
        let path = format!("{}:{}", self.venv.join("bin").display(), std::env::var("PATH").unwrap_or_default());
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.netns, "timeout", "900"])
            .arg(&program)
            .env("PATH", path)
            .env("ANSIBLE_COLLECTIONS_PATH", &self.collections_path)
            .env("ANSIBLE_PRIVATE_KEY_FILE", &self.ssh_key)
            .env("ANSIBLE_REMOTE_USER", &self.ssh_user)
            .env("ANSIBLE_HOST_KEY_CHECKING", "False")
            // Ansible's recommended setting: a Python task in a guest is one SSH command, not
            // four (put, chmod, run, remove), each a process started in a TCG guest.
            .env("ANSIBLE_PIPELINING", "True")
            .env("ANSIBLE_STDOUT_CALLBACK", "json")
            .env("ANSIBLE_LOAD_CALLBACK_PLUGINS", "1")
            .env("ANSIBLE_NOCOLOR", "1")
            .env("ANSIBLE_RETRY_FILES_ENABLED", "False")
            .env("ANSIBLE_LOCALHOST_WARNING", "False")
            .env("ANSIBLE_INVENTORY_UNPARSED_WARNING", "False")
            .stdin(Stdio::null());
        command
    }

    /// Runs `command` on the guest at `ip` over SSH as `ssh_user`, from inside the namespace.
    pub fn ssh(&self, ip: &str, command: &str) -> Output {
        self.ssh_as(&self.ssh_user, ip, command)
    }

    /// Runs `command` on the guest at `ip` over SSH as `user` (who accepts `ssh_key`).
    pub fn ssh_as(&self, user: &str, ip: &str, command: &str) -> Output {
        let target = format!("{user}@{ip}");
        let key = self.ssh_key.to_str().expect("UTF-8 path");
        #[rustfmt::skip]
        let args = ["60", "ssh", "-i", key, "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "LogLevel=ERROR", "-o", "BatchMode=yes", "-o", "ConnectTimeout=5", &target, command];
        self.in_netns("timeout", &args)
    }

    /// Runs `command` over SSH until it succeeds or `bound` passes; returns its stdout.
    pub fn ssh_until_ok(&self, ip: &str, command: &str, bound: Duration) -> String {
        self.ssh_as_until_ok(&self.ssh_user, ip, command, bound)
    }

    /// [`Bed::ssh_until_ok`] as `user`.
    pub fn ssh_as_until_ok(&self, user: &str, ip: &str, command: &str, bound: Duration) -> String {
        let deadline = std::time::Instant::now() + bound;
        loop {
            let output = self.ssh_as(user, ip, command);
            if output.status.success() {
                return String::from_utf8_lossy(&output.stdout).trim().to_string();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "ssh {ip} {command}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    /// Boots a guest from a linked clone of the base image; it is removed with its disk on drop.
    pub fn boot_vm(&self, name: &str) -> TestVm {
        let guest = self.define_vm(name);
        let hypervisor = Hypervisor::open(&self.uri).expect("connect to the bed");
        let vm = hypervisor.vm(name).expect("the test domain is defined");
        let _slot = self.boot_slot();
        vm.start().expect("start the test domain");
        guest
    }

    /// Defines (without starting) a guest on a linked clone of the base image, its disk in
    /// the bed's disks pool as `<name>.qcow2`; it is removed with its disk on drop.
    pub fn define_vm(&self, name: &str) -> TestVm {
        let disk = self.clone_disk(name);
        let hypervisor = Hypervisor::open(&self.uri).expect("connect to the bed");
        let domain_type = hypervisor.preferred_domain_type().expect("read capabilities");
        hypervisor.define_vm(&self.domain_xml(name, domain_type.as_str(), &disk)).expect("define the test domain");
        TestVm { name: name.to_string(), disk }
    }

    /// Makes `<name>.qcow2` in the bed's disks pool, a linked clone of the base image, for a
    /// domain that the caller defines (remove it with the domain: see [`TestVm`]).
    pub fn clone_disk(&self, name: &str) -> PathBuf {
        let disk = self.disks_dir.join(format!("{name}.qcow2"));
        let base = self.base_image.to_str().expect("UTF-8 path");
        let status = Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", base])
            .arg(&disk)
            .status()
            .expect("run qemu-img");
        assert!(status.success(), "qemu-img create {}", disk.display());
        // The pool learns of the new file only when refreshed.
        let _ = Command::new("virsh")
            .args(["-c", &self.uri, "pool-refresh", &self.disks_pool])
            .stdout(Stdio::null())
            .status();
        disk
    }

    /// A small domain for the bed's guest image: direct kernel boot, virtio, agent channel.
    pub fn domain_xml(&self, name: &str, domain_type: &str, disk: &Path) -> String {
        // The 128 MiB translation cache halves a TCG guest's host memory; KVM has none.
        let tcg = if domain_type == "qemu" { "<tcg><tb-cache unit='MiB'>128</tb-cache></tcg>" } else { "" };
        format!(
            "<domain type='{domain_type}'><name>{name}</name><memory unit='MiB'>384</memory><vcpu>1</vcpu>
             <os><type arch='x86_64' machine='q35'>hvm</type><kernel>{kernel}</kernel><initrd>{initrd}</initrd>
               <cmdline>{GUEST_CMDLINE}</cmdline></os>
             <features><acpi/><apic/>{tcg}</features><on_poweroff>destroy</on_poweroff>
             <devices>
               <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='{disk}'/><target dev='vda' bus='virtio'/></disk>
               <interface type='network'><source network='{network}'/><model type='virtio'/></interface>
               <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
               <serial type='pty'/><console type='pty'/>
               <rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>
               <controller type='usb' model='none'/><memballoon model='none'/>
             </devices></domain>",
            kernel = self.kernel.display(),
            initrd = self.initrd.display(),
            disk = disk.display(),
            network = self.network,
        )
    }
}

/// Held while a guest boots; see [`Bed::boot_slot`].
pub struct BootSlot(());

impl Drop for BootSlot {
    fn drop(&mut self) {
        let (count, freed) = &BOOTING;
        *count.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
        freed.notify_one();
    }
}

/// A guest booted by [`Bed::boot_vm`].
pub struct TestVm {
    /// Its domain name.
    pub name: String,
    /// Its overlay disk.
    pub disk: PathBuf,
}

impl TestVm {
    /// Waits (bounded) for the guest's DHCP lease and returns its address; holds a boot slot meanwhile.
    pub fn wait_ip(&self, timeout: Duration) -> String {
        let bed = Bed::get();
        let _slot = bed.boot_slot();
        let hypervisor = Hypervisor::open(&bed.uri).expect("connect to the bed");
        let vm = hypervisor.vm(&self.name).expect("the test domain exists");
        let readiness = wait::Readiness { signal: wait::Signal::Lease, timeout };
        let ready = wait::wait_ready(&hypervisor, &vm, &wait::LeaseBaseline::any(), readiness)
            .unwrap_or_else(|e| panic!("{}: {e}", self.name));
        ready.ip.expect("a lease has an address")
    }
}

impl Drop for TestVm {
    fn drop(&mut self) {
        let uri = &Bed::get().uri;
        for args in [vec!["destroy", &self.name], vec!["undefine", &self.name, "--snapshots-metadata"]] {
            let _ = Command::new("virsh")
                .arg("-c")
                .arg(uri)
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let _ = std::fs::remove_file(&self.disk);
    }
}

/// Copies the directory tree `from` to `to` (files and directories; permissions kept).
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap_or_else(|e| panic!("create {}: {e}", to.display()));
    for entry in std::fs::read_dir(from).unwrap_or_else(|e| panic!("read {}: {e}", from.display())) {
        let entry = entry.expect("a directory entry");
        let dest = to.join(entry.file_name());
        if entry.file_type().expect("a file type").is_dir() {
            copy_tree(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), &dest).unwrap_or_else(|e| panic!("copy {}: {e}", entry.path().display()));
        }
    }
}

/// A fresh private directory under the system temp dir.
pub fn tempdir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "virtfarm-test-{}-{}",
        std::process::id(),
        NAMES.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("create a temp dir");
    dir
}
