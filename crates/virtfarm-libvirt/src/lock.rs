//! Per-domain locks that hold on any URI, local or remote: two runs must never change one
//! domain at the same time, and they may run on different controllers.
//!
//! The lock is a small volume `<domain>.virtfarm-lock` in a storage pool of the domain's
//! hypervisor. Creating a volume that exists fails inside libvirt under the pool's lock (and
//! `O_EXCL` on the file for directory pools), so exactly one creator wins, wherever it runs.
//! The volume holds its owner (`host pid since`) for the message the losers get; it is
//! deleted when the [`DomainLock`] is dropped. A run killed while holding it leaves it behind:
//! the next run on the same host sees that the owner process is gone and takes it over;
//! from other hosts a lock is taken over once older than [`LockPolicy::stale_after`]. A run
//! killed between creating the volume and writing its owner leaves a lock with no owner:
//! it is taken over once it has stayed so for [`UNWRITTEN_GRACE`].
//!
//! ```no_run
//! use virtfarm_libvirt::{Hypervisor, lock::LockPolicy};
//!
//! let hypervisor = Hypervisor::open("qemu+ssh://root@host1/system")?;
//! let lock = hypervisor.lock_domain("default", "web1", &LockPolicy::default())?;
//! // ... change web1 ...
//! lock.release()?;
//! # Ok::<(), virtfarm_libvirt::Error>(())
//! ```

use std::path::Path;
use std::time::{Duration, Instant};

use virt::storage_pool::StoragePool;
use virt::storage_vol::StorageVol;
use virt::stream::Stream;

use crate::connection::Hypervisor;
use crate::error::{Doing, Error, Result};
use crate::storage::{volume_xml, VolumeXml};
use crate::vm::Vm;
use crate::wait::unix_now;

/// What the lock volume of a domain is called: `<domain>` followed by this.
pub const LOCK_SUFFIX: &str = ".virtfarm-lock";

/// An owner record is a host name, a pid and a time: never more than this.
const MAX_OWNER_BYTES: usize = 512;

/// A live run writes its owner record right after creating the lock volume (one call): a
/// record still missing after this long, as seen by the run waiting, was never going to come.
pub const UNWRITTEN_GRACE: Duration = Duration::from_secs(5);

/// How to take a lock that another run holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LockPolicy {
    /// How long to wait for the other run to finish before failing; zero fails at once.
    pub wait: Duration,
    /// A lock older than this is taken over even when its owner may still run elsewhere.
    pub stale_after: Duration,
}

impl Default for LockPolicy {
    /// Fail at once (the caller reports which run holds the domain); take over after an hour.
    fn default() -> Self {
        LockPolicy { wait: Duration::ZERO, stale_after: Duration::from_secs(3600) }
    }
}

/// Who holds a lock, as written in its volume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockOwner {
    /// Host name of the controller that took it.
    pub host: String,
    /// Process id of the run there.
    pub pid: u32,
    /// When it was taken (Unix seconds).
    pub since: i64,
    /// The boot and PID namespace its pid belongs to: containers on one host may share a host
    /// name while each sees only its own processes. `None` in the records of older releases.
    pub pid_space: Option<String>,
}

impl LockOwner {
    fn me() -> LockOwner {
        LockOwner { host: local_hostname(), pid: std::process::id(), since: unix_now(), pid_space: Some(pid_space()) }
    }

    fn to_text(&self) -> String {
        let space = self.pid_space.as_deref().map(|s| format!(" {s}")).unwrap_or_default();
        format!("{} {} {}{space}\n", self.host, self.pid, self.since)
    }

    fn parse(text: &str) -> Option<LockOwner> {
        let mut words = text.split_whitespace();
        let owner = LockOwner {
            host: words.next()?.to_string(),
            pid: words.next()?.parse().ok()?,
            since: words.next()?.parse().ok()?,
            pid_space: words.next().map(str::to_string),
        };
        words.next().is_none().then_some(owner)
    }

    /// True when the owner is a process that this run could see and that no longer exists.
    fn is_gone(&self) -> bool {
        self.host == local_hostname()
            && self.pid_space.as_ref().is_none_or(|space| *space == pid_space())
            && self.pid != std::process::id()
            && !Path::new(&format!("/proc/{}", self.pid)).exists()
    }
}

/// A held lock on one domain; dropping it releases it.
#[derive(Debug)]
pub struct DomainLock {
    volume: StorageVol,
    path: String,
    /// The owner record written into it: released only while it still says this.
    owner: String,
    /// The connection, to read the record back before releasing.
    hypervisor: virt::connect::Connect,
    released: bool,
}

impl DomainLock {
    /// The lock volume's path on the hypervisor.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// True while the lock volume holds this run's record: false once another run took the
    /// lock over, having judged this one stale, or when it cannot be read.
    pub fn is_held(&self) -> bool {
        download(&self.hypervisor, &self.volume, &self.path, MAX_OWNER_BYTES).is_ok_and(|text| text == self.owner)
    }

    /// Releases the lock now, reporting a failure (dropping releases it silently).
    pub fn release(mut self) -> Result<()> {
        self.released = true;
        self.delete_if_mine()
    }

    /// Deletes the lock volume unless another run took it over meanwhile (it judged this run
    /// stale and wrote its own record): that run's lock is not this one's to release.
    fn delete_if_mine(&self) -> Result<()> {
        match download(&self.hypervisor, &self.volume, &self.path, MAX_OWNER_BYTES) {
            Ok(text) if text != self.owner => Ok(()),
            _ => delete_lock_volume(&self.volume, &self.path),
        }
    }
}

impl Drop for DomainLock {
    fn drop(&mut self) {
        if !self.released {
            // A lock left behind is taken over later (see the module docs): nothing else to do here.
            let _ = self.delete_if_mine();
        }
    }
}

fn delete_lock_volume(volume: &StorageVol, path: &str) -> Result<()> {
    match volume.delete(0) {
        Ok(()) => Ok(()),
        Err(e) if e.code().is(virt::error::ErrorNumber::NoStorageVolume) => Ok(()),
        Err(e) => Err(e).doing(|| format!("releasing the lock volume {path}")),
    }
}

/// What an attempt to create the lock volume found.
enum Attempt {
    Taken(DomainLock),
    /// Held by someone else: its volume, path and holder.
    Held(StorageVol, String, Holder),
}

/// Who holds a lock volume, as far as it tells.
#[derive(PartialEq, Eq)]
enum Holder {
    /// Its owner record.
    Known(LockOwner),
    /// Read, but no record in it: a run between creating the volume and writing it, or one
    /// killed there. `since` is the volume's modification time (the hypervisor's clock).
    Unwritten { since: Option<i64> },
    /// It could not be read at all.
    Unreadable { since: Option<i64> },
}

impl Holder {
    fn since(&self) -> Option<i64> {
        match self {
            Holder::Known(owner) => Some(owner.since),
            Holder::Unwritten { since } | Holder::Unreadable { since } => *since,
        }
    }
}

impl Hypervisor {
    /// Takes the lock on domain `domain`, in storage pool `pool_name`.
    ///
    /// Fails with [`Error::Refused`] naming the owner when another run holds it for longer
    /// than `policy.wait`, and with [`Error::NotFound`] when the pool does not exist.
    pub fn lock_domain(&self, pool_name: &str, domain: &str, policy: &LockPolicy) -> Result<DomainLock> {
        self.lock_named(pool_name, domain, &format!("domain {domain}"), policy)
    }

    /// Takes the lock on giving the MAC address `mac` to a domain, in storage pool `pool_name`:
    /// two runs that define different domains with one explicit MAC take turns, so the second
    /// sees the first's domain when it checks that the MAC is free.
    pub fn lock_mac(&self, pool_name: &str, mac: &str, policy: &LockPolicy) -> Result<DomainLock> {
        self.lock_named(pool_name, &format!("mac-{}", mac.replace(':', "-")), &format!("MAC {mac}"), policy)
    }

    /// Takes the lock on importing an image file as the volume `volume` of `pool_name`: two
    /// runs (or two VMs of one run) that import one image take turns, and the second finds
    /// the first's import.
    pub fn lock_import(&self, pool_name: &str, volume: &str, policy: &LockPolicy) -> Result<DomainLock> {
        self.lock_named(pool_name, &format!("import-{volume}"), &format!("the import of {volume}"), policy)
    }

    fn lock_named(&self, pool_name: &str, stem: &str, what: &str, policy: &LockPolicy) -> Result<DomainLock> {
        let pool = self.pool(pool_name)?;
        let name = format!("{stem}{LOCK_SUFFIX}");
        let deadline = crate::wait::deadline(policy.wait);
        // Measured on this side: the hypervisor's clock may differ from ours.
        let mut unwritten_since: Option<Instant> = None;
        loop {
            let (volume, path, holder) = match self.try_lock(&pool, pool_name, &name)? {
                Attempt::Taken(lock) => return Ok(lock),
                Attempt::Held(volume, path, holder) => (volume, path, holder),
            };
            let age = holder.since().map(|since| unix_now().saturating_sub(since));
            let stale = age.is_some_and(|age| age >= policy.stale_after.as_secs() as i64);
            let unwritten = matches!(holder, Holder::Unwritten { .. });
            unwritten_since = if unwritten { Some(unwritten_since.unwrap_or_else(Instant::now)) } else { None };
            let abandoned = unwritten_since.is_some_and(|since| since.elapsed() >= UNWRITTEN_GRACE);
            let gone = matches!(&holder, Holder::Known(owner) if owner.is_gone());
            // Another run may have judged the same and taken the lock over since: delete only
            // what was judged, read once more just before.
            if (gone || stale || abandoned) && self.read_holder(&volume, &path) == holder {
                delete_lock_volume(&volume, &path)?;
                unwritten_since = None;
                continue;
            }
            // An unwritten lock is waited on even without `policy.wait`, for at most the grace.
            if Instant::now() >= deadline && !unwritten {
                return Err(Error::Refused(held_message(what, pool_name, &name, &holder, policy)));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Takes the lock on `vm` in the pool that holds its first disk; `None` when none of its
    /// disks is in a storage pool (there is then no volume of ours to protect).
    pub fn lock_vm(&self, vm: &Vm, policy: &LockPolicy) -> Result<Option<DomainLock>> {
        let files: Vec<String> = vm.facts()?.disks.into_iter().filter_map(|d| d.file).collect();
        self.pool_of_first_disk(&files)?.map(|pool| self.lock_domain(&pool, vm.name(), policy)).transpose()
    }

    /// The storage pool whose directory holds the first of `files` that is in one: where the
    /// lock of a domain with these disks lives.
    pub fn pool_of_first_disk(&self, files: &[String]) -> Result<Option<String>> {
        let pools = self
            .raw()
            .list_all_storage_pools(virt::sys::VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE)
            .doing(|| "listing storage pools".to_string())?;
        let mut dirs = Vec::new();
        for pool in &pools {
            let name = pool.name().doing(|| "reading a storage pool name".to_string())?;
            // A pool without a target path (rbd, iscsi-direct...) holds no file of ours.
            if let Ok(path) = self.pool_path(&name) {
                dirs.push((path, name));
            }
        }
        // The pool of the first disk, found by directory: overlays the pool has not listed yet count too.
        Ok(files.iter().find_map(|file| {
            let parent = Path::new(file).parent()?;
            dirs.iter().find(|(dir, _)| Path::new(dir) == parent).map(|(_, name)| name.clone())
        }))
    }

    fn try_lock(&self, pool: &StoragePool, pool_name: &str, name: &str) -> Result<Attempt> {
        let owner = LockOwner::me().to_text();
        let xml = volume_xml(name, owner.len() as u64, "raw", None)?;
        match StorageVol::create_xml(pool, &xml, 0) {
            Ok(volume) => {
                let path = volume.path().doing(|| format!("reading the path of the lock volume {name}"))?;
                if let Err(e) = self.upload(&volume, name, owner.as_bytes(), owner.len() as u64) {
                    let _ = delete_lock_volume(&volume, &path);
                    return Err(e);
                }
                let lock = DomainLock { volume, path, owner, hypervisor: self.raw().clone(), released: false };
                Ok(Attempt::Taken(lock))
            }
            Err(create_error) => {
                // A file the pool has not listed yet also refuses the create: look again after a refresh.
                let _ = pool.refresh(0);
                let Some(volume) = self.volume_in(pool, pool_name, name)? else {
                    return Err(create_error).doing(|| format!("creating the lock volume {name} in pool {pool_name}"));
                };
                let path = volume.path().doing(|| format!("reading the path of the lock volume {name}"))?;
                let holder = self.read_holder(&volume, &path);
                Ok(Attempt::Held(volume, path, holder))
            }
        }
    }

    /// Who holds a lock volume: the owner it records, else the file's time.
    fn read_holder(&self, volume: &StorageVol, path: &str) -> Holder {
        match download(self.raw(), volume, path, MAX_OWNER_BYTES) {
            Ok(text) => match LockOwner::parse(&text) {
                Some(owner) => Holder::Known(owner),
                None => Holder::Unwritten { since: modified_time(volume) },
            },
            Err(_) => Holder::Unreadable { since: modified_time(volume) },
        }
    }
}

/// The text of a small volume (a lock, a record), at most `max` bytes of it.
pub(crate) fn download(conn: &virt::connect::Connect, volume: &StorageVol, path: &str, max: usize) -> Result<String> {
    let stream = Stream::new(conn, 0).doing(|| format!("opening a stream for {path}"))?;
    volume.download(&stream, 0, max as u64, 0).doing(|| format!("reading {path}"))?;
    let mut text = Vec::new();
    let mut buffer = vec![0u8; max];
    while text.len() < max {
        match stream.recv(&mut buffer) {
            Ok(n) if n > 0 => text.extend_from_slice(&buffer[..n as usize]),
            Ok(_) => break,
            Err(e) => {
                let _ = stream.abort();
                return Err(e).doing(|| format!("reading {path}"));
            }
        }
    }
    stream.finish().doing(|| format!("reading {path}"))?;
    Ok(String::from_utf8_lossy(&text).into_owned())
}

fn held_message(what: &str, pool: &str, name: &str, holder: &Holder, policy: &LockPolicy) -> String {
    let holder = match holder {
        Holder::Known(o) => format!("process {} on {} since {} s", o.pid, o.host, unix_now().saturating_sub(o.since)),
        Holder::Unwritten { .. } | Holder::Unreadable { .. } => "a run that could not be identified".to_string(),
    };
    format!(
        "{what} is being changed by another run ({holder}): it holds the lock volume {name} in pool {pool}; \
         retry when that run ends (a lock older than {} s is taken over; `virsh vol-delete --pool {pool} {name}` removes it by hand)",
        policy.stale_after.as_secs()
    )
}

/// The volume file's modification time, when the pool reports one.
fn modified_time(volume: &StorageVol) -> Option<i64> {
    VolumeXml::parse(&volume.xml_desc(0).ok()?, "lock").ok()?.modified
}

/// This boot and PID namespace, e.g. `3f1c…:4026531836`; `unknown` where /proc does not tell,
/// which never matches another run's, so its locks are taken over only when stale.
fn pid_space() -> String {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").map(|b| b.trim().to_string());
    let namespace = std::fs::read_link("/proc/self/ns/pid").map(|l| l.to_string_lossy().into_owned());
    match (boot, namespace) {
        (Ok(boot), Ok(namespace)) => {
            let inode: String = namespace.chars().filter(char::is_ascii_digit).collect();
            format!("{boot}:{inode}")
        }
        _ => format!("unknown-{}", std::process::id()),
    }
}

fn local_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_text_round_trips_and_rejects_garbage() {
        let owner = LockOwner { host: "ctl1".into(), pid: 42, since: 1_700_000_000, pid_space: Some("b:1".into()) };
        assert_eq!(LockOwner::parse(&owner.to_text()), Some(owner.clone()));
        // The records of older releases have no PID namespace.
        let older = LockOwner { pid_space: None, ..owner };
        assert_eq!(LockOwner::parse("ctl1 42 1700000000"), Some(older));
        assert_eq!(LockOwner::parse(""), None);
        assert_eq!(LockOwner::parse("ctl1 notapid 5"), None);
        assert_eq!(LockOwner::parse("ctl1 1 2 b:1 extra"), None);
    }

    #[test]
    fn an_owner_process_that_is_gone_is_seen_only_on_this_host() {
        let gone = LockOwner { host: local_hostname(), pid: u32::MAX - 1, since: 0, pid_space: Some(pid_space()) };
        assert!(gone.is_gone());
        assert!(!LockOwner { host: "elsewhere.invalid".into(), ..gone.clone() }.is_gone());
        // Same host name, another container's PID namespace: its pids are not ours to judge.
        assert!(!LockOwner { pid_space: Some("other-boot:4026531836".into()), ..gone.clone() }.is_gone());
        assert!(!LockOwner { pid: std::process::id(), ..gone }.is_gone());
    }
}
