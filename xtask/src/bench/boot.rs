//! Host-side clocks of guests booting, for the provisioning figures: libvirt's lifecycle
//! events say when each guest powered on, and its serial console (which virtlogd writes to a
//! file as it comes) says when sshd started: systemd's "Started ssh.service" line, printed once
//! sshd listens (Debian's unit is `Type=notify`). Both are stamped with this host's clock as
//! they arrive; the guest's own clocks are too coarse for the figures, and drift under TCG.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// How often a console log is read: the precision of the sshd figure.
const CONSOLE_POLL: Duration = Duration::from_millis(10);

/// How long the console lines may come after the guests were reported ready.
const CONSOLE_LAG: Duration = Duration::from_secs(30);

/// One guest's boot as the host saw it.
pub struct Boot {
    pub name: String,
    pub power_on: Instant,
    pub sshd_started: Instant,
}

/// What [`watch`] saw: when the work started and returned, and each guest's boot.
pub struct Watched {
    pub started: Instant,
    pub returned: Instant,
    pub boots: Vec<Boot>,
}

impl Watched {
    /// Seconds from the start of the work to `moment`; moments are compared through this, as
    /// the console line may come after the return.
    pub fn at(&self, moment: Instant) -> f64 {
        moment.saturating_duration_since(self.started).as_secs_f64()
    }
}

/// Runs `work`, which starts the guests `names` on `uri` and returns once it reports them
/// ready, while watching them boot.
pub fn watch(uri: &str, names: &[String], work: impl FnOnce() -> Result<()>) -> Result<Watched> {
    let mut events = Command::new("virsh")
        .args(["-c", uri, "event", "--event", "lifecycle", "--loop"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot run virsh event")?;
    let stdout = events.stdout.take().context("virsh event has no stdout")?;
    let power_on: Mutex<HashMap<String, Instant>> = Mutex::default();
    let done = AtomicBool::new(false);
    let (result, started, returned, sshd) = std::thread::scope(|scope| {
        scope.spawn(|| {
            // "event 'lifecycle' for domain 'NAME': Started Booted", one line per event, flushed.
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let Some((_, rest)) = line.split_once("for domain '") else { continue };
                if let Some((name, _)) = rest.split_once("': Started") {
                    power_on.lock().unwrap().entry(name.to_string()).or_insert_with(Instant::now);
                }
            }
        });
        let consoles: Vec<_> =
            names.iter().map(|name| scope.spawn(|| sshd_started(&console_log(name), &done))).collect();
        // virsh registers for events before the guests start.
        std::thread::sleep(Duration::from_millis(500));
        let started = Instant::now();
        let result = work();
        let returned = Instant::now();
        // sshd answers before systemd prints that it started: its line may come after the call.
        let lag = returned + CONSOLE_LAG;
        while Instant::now() < lag && !consoles.iter().all(|c| c.is_finished()) {
            std::thread::sleep(CONSOLE_POLL);
        }
        done.store(true, Ordering::Relaxed);
        let _ = events.kill();
        let _ = events.wait();
        let sshd: Vec<Option<Instant>> = consoles.into_iter().map(|c| c.join().ok().flatten()).collect();
        (result, started, returned, sshd)
    });
    result?;
    let power_on = power_on.into_inner().unwrap();
    let boots = names
        .iter()
        .zip(sshd)
        .map(|(name, sshd)| {
            Ok(Boot {
                name: name.clone(),
                power_on: *power_on.get(name).with_context(|| format!("no started event for {name}"))?,
                sshd_started: sshd.with_context(|| format!("no \"Started ssh.service\" on the console of {name}"))?,
            })
        })
        .collect::<Result<_>>()?;
    Ok(Watched { started, returned, boots })
}

/// Where kvm_provision has virtlogd write a guest's serial console (modules/kvm_provision's
/// definition.rs).
fn console_log(name: &str) -> PathBuf {
    PathBuf::from(format!("/var/log/libvirt/qemu/{name}-console.log"))
}

/// Reads `path` as it grows until a line says sshd started: the moment it was read; `None`
/// once `done` is set.
fn sshd_started(path: &Path, done: &AtomicBool) -> Option<Instant> {
    // A log left by an earlier guest of that name is appended to: only what comes now counts.
    let mut offset = std::fs::metadata(path).map_or(0, |m| m.len());
    let mut tail = String::new();
    while !done.load(Ordering::Relaxed) {
        let mut grown = Vec::new();
        if let Ok(mut file) = File::open(path) {
            if file.metadata().is_ok_and(|m| m.len() < offset) {
                offset = 0;
            }
            if file.seek(SeekFrom::Start(offset)).is_ok() && file.read_to_end(&mut grown).is_ok() {
                offset += grown.len() as u64;
            }
        }
        tail.push_str(&String::from_utf8_lossy(&grown));
        if tail.lines().any(|line| line.contains("Started") && line.contains("ssh.service")) {
            return Some(Instant::now());
        }
        // Keep only the unfinished last line.
        tail = tail.rsplit_once('\n').map_or(tail.clone(), |(_, rest)| rest.to_string());
        std::thread::sleep(CONSOLE_POLL);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sshd_counts_only_once_its_line_arrives_after_the_watch_began() {
        let path = std::env::temp_dir().join(format!("vf-boot-{}.log", std::process::id()));
        // An earlier guest's boot, already in the log.
        std::fs::write(&path, "[  OK  ] Started \x1b[0;1;39mssh.service\x1b[0m - OpenBSD Secure Shell server.\r\n")
            .unwrap();
        let done = AtomicBool::new(false);
        let (seen, written) = std::thread::scope(|scope| {
            let watcher = scope.spawn(|| sshd_started(&path, &done));
            std::thread::sleep(Duration::from_millis(50));
            let mut log = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
            std::io::Write::write_all(&mut log, b"[  OK  ] Started \x1b[0;1;39mssh").unwrap();
            std::thread::sleep(Duration::from_millis(50));
            let written = Instant::now();
            std::io::Write::write_all(&mut log, b".service\x1b[0m - OpenBSD Secure Shell server.\r\n").unwrap();
            (watcher.join().unwrap(), written)
        });
        let _ = std::fs::remove_file(&path);
        let seen = seen.expect("the line was seen");
        assert!(seen >= written && seen - written < Duration::from_millis(200));
    }
}
