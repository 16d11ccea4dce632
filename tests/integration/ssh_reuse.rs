//! Tasks against one `qemu+ssh://` hypervisor share one ssh connection (see
//! `virtfarm_libvirt::ssh_reuse`). Each test counts the sessions on an sshd of its own, started
//! beside the second hypervisor's, and runs `libvirt_ping` as Ansible would, with a home
//! directory of its own, so that no other test's connections mix in. No guest boots.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bed::Bed;
use serde_json::{json, Value};
use virtfarm_libvirt::ssh_reuse::PERSIST;

use crate::fleet::{wait_until, Fleet};

/// The second hypervisor's sshd configuration (xtask's fleet.rs writes it).
const FLEET_SSHD_CONFIG: &str = "/var/lib/virtfarm-fleet/sshd_config";

/// An sshd on its own port in the second hypervisor's namespaces, with its host key and
/// authorized key, logging every session it accepts; stopped on drop.
struct CountingSshd {
    child: Child,
    log: PathBuf,
    port: u16,
}

impl CountingSshd {
    fn start(fleet: &Fleet, dir: &Path, port: u16) -> CountingSshd {
        let config: String = std::fs::read_to_string(FLEET_SSHD_CONFIG)
            .expect("the second hypervisor's sshd_config")
            .lines()
            .map(|line| match line.split_once(' ') {
                Some(("ListenAddress", address)) => format!("ListenAddress {address}:{port}\n"),
                Some(("PidFile", _)) => "PidFile none\n".to_string(),
                _ => format!("{line}\n"),
            })
            .collect();
        let config_path = dir.join("sshd_config");
        std::fs::write(&config_path, config).unwrap();
        let log = dir.join("sshd.log");
        let child = Command::new("nsenter")
            .args(["-t", &fleet.pid("sshd"), "-m", "-n", "/usr/sbin/sshd", "-D", "-e", "-f"])
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start sshd");
        let sshd = CountingSshd { child, log, port };
        wait_until(Duration::from_secs(10), "the test's sshd to listen", || sshd.logged("Server listening") > 0);
        sshd
    }

    /// Lines of its log that contain `text`.
    fn logged(&self, text: &str) -> usize {
        std::fs::read_to_string(&self.log).unwrap_or_default().lines().filter(|l| l.contains(text)).count()
    }

    /// ssh sessions it accepted so far.
    fn sessions(&self) -> usize {
        self.logged("Accepted publickey")
    }
}

impl Drop for CountingSshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A controller's view: a home directory of its own (where the control sockets go) and the
/// args file of `libvirt_ping` against the counting sshd's `qemu+ssh://` URI.
struct Controller {
    home: PathBuf,
    args: PathBuf,
}

impl Controller {
    fn new(fleet: &Fleet, sshd: &CountingSshd, uri_extra: &str) -> Controller {
        let home = bed::tempdir();
        let uri = format!(
            "qemu+ssh://root@{}:{}/system?keyfile={}&no_verify=1{uri_extra}",
            fleet.address,
            sshd.port,
            fleet.ssh_key.display()
        );
        let args = home.join("args.json");
        std::fs::write(&args, json!({ "uri": uri }).to_string()).unwrap();
        Controller { home, args }
    }

    /// One task: `libvirt_ping uri=…` run as Ansible runs it, on the controller; asserts it
    /// read the hypervisor.
    fn task(&self) -> Value {
        let bed = Bed::get();
        let output = Command::new("ip")
            .args(["netns", "exec", &bed.netns, "timeout", "60"])
            .arg(bed.binary("libvirt_ping"))
            .arg(&self.args)
            .env("HOME", &self.home)
            .stdin(Stdio::null())
            .output()
            .expect("run libvirt_ping");
        let result: Value = serde_json::from_slice(&output.stdout)
            .unwrap_or_else(|e| panic!("no JSON ({e}): {}", String::from_utf8_lossy(&output.stderr)));
        assert!(result["libvirt"]["hostname"].as_str().is_some_and(|h| !h.is_empty()), "{result}");
        result
    }

    /// Tasks run at once, as Ansible's forks run them.
    fn forks(&self, count: usize) {
        std::thread::scope(|scope| {
            let forks: Vec<_> = (0..count).map(|_| scope.spawn(|| self.task())).collect();
            forks.into_iter().for_each(|fork| drop(fork.join().expect("a fork failed")));
        });
    }

    /// Processes that use this home's control sockets: the master and its clients.
    fn ssh_processes(&self) -> Vec<String> {
        let home = self.home.to_str().unwrap();
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|entry| std::fs::read(entry.path().join("cmdline")).ok())
            .map(|cmdline| String::from_utf8_lossy(&cmdline).replace('\0', " "))
            .filter(|cmdline| cmdline.contains(home))
            .collect()
    }

    /// Waits, bounded by the persist time, until the shared connection is gone: no process and
    /// no socket left.
    fn wait_until_closed(&self) {
        let sockets = self.home.join(".ansible/cp");
        wait_until(PERSIST + Duration::from_secs(15), "the shared ssh connection to close", || {
            self.ssh_processes().is_empty() && std::fs::read_dir(&sockets).map_or(true, |mut d| d.next().is_none())
        });
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.home);
    }
}

/// A port for this test's sshd that no other test run picks at the same moment.
fn port(offset: u16) -> u16 {
    20000 + (std::process::id() % 10000) as u16 * 2 + offset
}

#[test]
#[ignore = "needs the test bed: cargo xtask test"]
fn ten_tasks_in_a_row_share_one_ssh_session_that_closes_after_the_play() {
    let fleet = Fleet::get();
    let dir = bed::tempdir();
    let sshd = CountingSshd::start(&fleet, &dir, port(0));

    let shared = Controller::new(&fleet, &sshd, "");
    let started = Instant::now();
    for _ in 0..10 {
        shared.task();
    }
    let per_task = started.elapsed().as_secs_f64() / 10.0;
    assert_eq!(sshd.sessions(), 1, "ten tasks, one ssh session");
    assert!(!shared.ssh_processes().is_empty(), "the connection persists between tasks");

    // Four forks at once go through the same connection.
    shared.forks(4);
    assert_eq!(sshd.sessions(), 1, "four forks, still one ssh session");

    // `command=` in the URI turns sharing off: a session per task, as libvirt alone does.
    let own = Controller::new(&fleet, &sshd, "&command=ssh");
    let started = Instant::now();
    for _ in 0..2 {
        own.task();
    }
    let per_task_unshared = started.elapsed().as_secs_f64() / 2.0;
    assert_eq!(sshd.sessions(), 3, "one session per task without sharing");
    assert!(own.ssh_processes().is_empty() && !own.home.join(".ansible").exists(), "nothing shared");

    // After the play, the connection closes by itself.
    let idle = Instant::now();
    shared.wait_until_closed();
    // Straight to stderr: libtest captures print macros, and a passing test's output is dropped.
    let _ = writeln!(
        std::io::stderr(),
        "ssh reuse figures: {per_task:.3} s per task shared, {per_task_unshared:.3} s unshared; \
         closed {:.1} s after the last task",
        idle.elapsed().as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
#[ignore = "needs the test bed: cargo xtask test"]
fn four_forks_starting_together_all_connect_and_leave_nothing_running() {
    let fleet = Fleet::get();
    let dir = bed::tempdir();
    let sshd = CountingSshd::start(&fleet, &dir, port(1));
    let controller = Controller::new(&fleet, &sshd, "");

    // No connection to share yet: the forks race to become the master; none may fail.
    controller.forks(4);
    let sessions = sshd.sessions();
    assert!((1..=4).contains(&sessions), "{sessions} sessions");
    controller.forks(4);
    assert_eq!(sshd.sessions(), sessions, "the next forks share the master");

    controller.wait_until_closed();
    let _ = std::fs::remove_dir_all(&dir);
}
