//! Snapshots of one domain or of a group: internal and external, create, list, revert, delete.
//!
//! libvirt 9.0 takes both kinds but reverts only internal ones; an external revert is done
//! here: a fresh overlay per disk on top of the snapshot's files, the domain pointed at
//! them, the snapshot marked current again, the previous power state restored, and the
//! overlays nobody depends on any more deleted. No operation writes to an image that any
//! other image is based on: merges only ever go into a file the snapshot alone depends on.
//!
//! ```no_run
//! use virtfarm_libvirt::Hypervisor;
//! use virtfarm_libvirt::snapshot::{self, CreateOptions, Member, RevertOptions};
//!
//! let (here, there) = (Hypervisor::open("qemu:///system")?, Hypervisor::open("qemu+ssh://root@h2/system")?);
//! let vms = vec![here.vm("web1")?, there.vm("db1")?];
//! let group = [Member { hypervisor: &here, vm: &vms[0] }, Member { hypervisor: &there, vm: &vms[1] }];
//! let taken = snapshot::create_group(&group, "before-upgrade", &CreateOptions::default())?;
//! println!("{} snapshots, quiesced by {}", taken.len(), taken[0].quiesce.as_str());
//! snapshot::revert(&here, &vms[0], "before-upgrade", &RevertOptions::default())?;
//! # Ok::<(), virtfarm_libvirt::Error>(())
//! ```

pub mod backing_file;
mod blockjob;
pub mod cache;
mod chain;
pub(crate) mod domain_disks;
mod group;
mod marker;
mod nvram;
pub mod orchestrate;
pub(crate) mod qcow2;
mod xml;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use virt::domain_snapshot::DomainSnapshot;

pub use group::{create_group, Created, Member, Quiesce};
pub use xml::{SnapshotDisk, SnapshotInfo, SnapshotType};

use crate::connection::Hypervisor;
use crate::domain_facts::DomainFacts;
use crate::error::{Doing, Error, Result, SnapshotRefusal};
use crate::naming::snapshot_overlay_prefix;
use crate::vm::{PowerState, Vm};
pub(crate) use nvram::Nvram;

/// The kind of snapshot asked for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Requested {
    /// Internal where the domain allows it, external otherwise.
    #[default]
    Auto,
    /// Internal only.
    Internal,
    /// External (disk-only) only.
    External,
}

/// How to take a snapshot.
#[derive(Clone, Debug, Default)]
pub struct CreateOptions {
    /// Internal, external, or chosen per domain.
    pub requested: Requested,
    /// Include RAM: `None` means "when the domain runs and the snapshot is internal".
    pub memory: Option<bool>,
    /// Freeze guest file systems (or at least sync them) around a disk-only snapshot.
    pub quiesce: bool,
}

/// Why a domain cannot have internal snapshots, if it cannot.
fn internal_impossible(facts: &DomainFacts) -> Option<String> {
    if facts.has_pflash {
        return Some("it boots UEFI firmware from pflash".to_string());
    }
    facts
        .disks
        .iter()
        .find(|d| d.device == "disk" && d.format.as_deref() != Some("qcow2"))
        .map(|d| format!("its disk {} is {}, not qcow2", d.target, d.format.as_deref().unwrap_or("of unknown format")))
}

/// Decides the snapshot type for one domain; a refusal says whether the type or the RAM is at fault.
pub fn choose_type(facts: &DomainFacts, running: bool, options: &CreateOptions) -> Result<SnapshotType> {
    let impossible = internal_impossible(facts);
    let kind = match (options.requested, &impossible) {
        (Requested::Internal, Some(why)) => {
            let message = format!("{} cannot have internal snapshots: {why}", facts.name);
            return Err(Error::SnapshotRefused { kind: SnapshotRefusal::InternalImpossible, message });
        }
        (Requested::Internal, None) => SnapshotType::Internal,
        (Requested::External, _) | (Requested::Auto, Some(_)) => SnapshotType::External,
        // libvirt 9.0 refuses an internal snapshot of a running domain without its RAM.
        (Requested::Auto, None) if running && options.memory == Some(false) => SnapshotType::External,
        (Requested::Auto, None) => SnapshotType::Internal,
    };
    if kind == SnapshotType::External && options.memory == Some(true) {
        let why = impossible.map(|w| format!(" ({} needs an external one: {w})", facts.name)).unwrap_or_default();
        let message = format!("external snapshots are disk-only; RAM is kept by internal snapshots only{why}");
        return Err(Error::SnapshotRefused { kind: SnapshotRefusal::MemoryNeedsInternal, message });
    }
    Ok(kind)
}

/// Refuses a new internal snapshot `name` when an image it would go into already holds an
/// internal snapshot of that name that libvirt does not list (a removed domain's, say): QEMU
/// would keep both, and a revert to `name` could load the old one.
pub fn refuse_name_inside(hv: &Hypervisor, facts: &DomainFacts, name: &str) -> Result<()> {
    for disk in facts.disks.iter().filter(|d| d.device == "disk" && d.format.as_deref() == Some("qcow2")) {
        let Some(file) = disk.file.as_deref() else { continue };
        if hv.internal_snapshots_in(file)?.iter().any(|inside| inside == name) {
            let message = format!(
                "{file} (disk {} of {}) already holds an internal snapshot named {name} that libvirt \
                 does not list: a revert could load that one; choose another name",
                disk.target, facts.name
            );
            return Err(Error::SnapshotRefused { kind: SnapshotRefusal::Snapshot, message });
        }
    }
    Ok(())
}

impl Vm {
    /// Every snapshot of the domain, oldest first, the current one marked.
    pub fn snapshots(&self) -> Result<Vec<SnapshotInfo>> {
        let handles = self.raw().list_all_snapshots(0).doing(|| format!("listing the snapshots of {}", self.name()))?;
        let mut all = handles.iter().map(|s| self.describe(s)).collect::<Result<Vec<_>>>()?;
        all.sort_by(|a, b| (a.creation_time, &a.name).cmp(&(b.creation_time, &b.name)));
        Ok(all)
    }

    /// The snapshot called `name`, or `None`.
    pub fn find_snapshot(&self, name: &str) -> Result<Option<SnapshotInfo>> {
        self.snapshot_handle(name)?.map(|s| self.describe(&s)).transpose()
    }

    fn snapshot_handle(&self, name: &str) -> Result<Option<DomainSnapshot>> {
        match virt::domain::Domain::lookup_snapshot_by_name(self.raw(), name, 0) {
            Ok(snapshot) => Ok(Some(snapshot)),
            Err(e) if e.code().is(virt::error::ErrorNumber::NoDomainSnapshot) => Ok(None),
            Err(e) => Err(e).doing(|| format!("looking up snapshot {name} of {}", self.name())),
        }
    }

    fn existing_snapshot(&self, name: &str) -> Result<DomainSnapshot> {
        self.snapshot_handle(name)?
            .ok_or_else(|| Error::NotFound { kind: "snapshot", name: format!("{name} of {}", self.name()) })
    }

    fn describe(&self, snapshot: &DomainSnapshot) -> Result<SnapshotInfo> {
        let xml = snapshot.xml_desc(0).doing(|| format!("reading a snapshot of {}", self.name()))?;
        let mut info = SnapshotInfo::parse(&xml)?;
        info.current = snapshot.is_current(0).doing(|| format!("asking whether {} is current", info.name))?;
        Ok(info)
    }
}

/// Takes one snapshot of `vm` with libvirt, an external one with a copy of its NVRAM;
/// quiescing and pausing are the caller's.
fn take(hv: &Hypervisor, vm: &Vm, facts: &DomainFacts, name: &str, kind: SnapshotType, memory: bool) -> Result<()> {
    let (request, flags) = match kind {
        SnapshotType::Internal => (xml::internal_request(name, memory)?, 0),
        SnapshotType::External => {
            let overlays: Vec<(String, Option<String>)> = facts
                .disks
                .iter()
                .map(|d| {
                    let overlay = (d.device == "disk")
                        .then(|| d.file.as_deref().map(|f| sibling(f, &overlay_name(vm.name(), &d.target, name))))
                        .flatten();
                    (d.target.clone(), overlay)
                })
                .collect();
            let disks: Vec<_> = overlays.iter().map(|(t, o)| (t.as_str(), o.as_deref())).collect();
            let flags = virt::sys::VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY | virt::sys::VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC;
            (xml::external_request(name, &disks)?, flags)
        }
    };
    // The copy comes first: a snapshot without it would revert the disks but not the firmware.
    let nvram = match kind {
        SnapshotType::External if facts.has_pflash => Nvram::of(hv, vm)?,
        _ => None,
    };
    if let Some(nvram) = &nvram {
        nvram.save(name)?;
    }
    let taken = vm
        .raw()
        .create_snapshot_xml(&request, flags)
        .doing(|| format!("taking the {} snapshot {name} of {}", kind.as_str(), vm.name()));
    if let (Err(_), Some(nvram)) = (&taken, &nvram) {
        let _ = nvram.forget(name);
    }
    taken.map(drop)
}

/// The file name of the overlay that takes a disk's writes after snapshot `label`.
fn overlay_name(domain: &str, target: &str, label: &str) -> String {
    format!("{}{label}.qcow2", snapshot_overlay_prefix(domain, target))
}

/// `file_name` in the directory of `path`.
fn sibling(path: &str, file_name: &str) -> String {
    match path.rsplit_once('/') {
        Some((dir, _)) => format!("{dir}/{file_name}"),
        None => file_name.to_string(),
    }
}

/// How to revert.
#[derive(Clone, Debug)]
pub struct RevertOptions {
    /// Set the guest clock from the host's after reverting a running guest's RAM.
    pub sync_clock: bool,
    /// How long to wait for the guest agent before the clock sync.
    pub agent_timeout: Duration,
}

impl Default for RevertOptions {
    fn default() -> Self {
        RevertOptions { sync_clock: true, agent_timeout: Duration::from_secs(30) }
    }
}

/// What happened to the guest clock after a revert.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClockSync {
    /// Set from the host's clock through the agent.
    Synced,
    /// Not needed: the guest is off, booted afresh, or the sync was not asked for.
    NotNeeded,
    /// The agent could not set it; the message says why.
    Failed(String),
}

impl ClockSync {
    /// `synced`, `not_needed` or `failed`, as in results.
    pub fn as_str(&self) -> &'static str {
        match self {
            ClockSync::Synced => "synced",
            ClockSync::NotNeeded => "not_needed",
            ClockSync::Failed(_) => "failed",
        }
    }
}

/// The result of a revert.
#[derive(Clone, Debug)]
pub struct Reverted {
    /// The kind of snapshot reverted to.
    pub kind: SnapshotType,
    /// Seconds the revert itself took (clock sync excluded).
    pub seconds: f64,
    /// The guest clock.
    pub clock: ClockSync,
    /// The power state after the revert.
    pub power_state: PowerState,
    /// Overlay files deleted because nothing depends on them any more.
    pub removed_files: Vec<String>,
}

/// Reverts `vm` to its snapshot `name`.
pub fn revert(hv: &Hypervisor, vm: &Vm, name: &str, options: &RevertOptions) -> Result<Reverted> {
    let handle = vm.existing_snapshot(name)?;
    let info = vm.describe(&handle)?;
    let started = Instant::now();
    let removed_files = match info.kind {
        SnapshotType::Internal => revert_internal(hv, vm, &handle, &info)?,
        SnapshotType::External => revert_external(hv, vm, &handle, &info)?,
    };
    let seconds = started.elapsed().as_secs_f64();
    let power_state = vm.power_state()?;
    // Only a revert that restored RAM leaves the guest clock behind; a fresh boot reads the host's.
    let clock = if options.sync_clock && info.memory && power_state == PowerState::Running {
        sync_clock(vm, options.agent_timeout)
    } else {
        ClockSync::NotNeeded
    };
    Ok(Reverted { kind: info.kind, seconds, clock, power_state, removed_files })
}

fn sync_clock(vm: &Vm, timeout: Duration) -> ClockSync {
    // A domain without an agent channel never answers: no point waiting for it.
    match vm.xml(false) {
        Ok(xml) if !xml.contains("org.qemu.guest_agent.0") => {
            return ClockSync::Failed(format!("{} has no guest agent channel", vm.name()))
        }
        _ => {}
    }
    // Any number of seconds is a valid timeout: one too large for the clock ends in a century.
    let deadline = crate::wait::deadline(timeout);
    let agent = vm.agent();
    while !agent.ping() {
        if Instant::now() >= deadline {
            return ClockSync::Failed(format!("the guest agent did not answer within {} s", timeout.as_secs()));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    match agent.sync_clock() {
        Ok(()) => ClockSync::Synced,
        Err(e) => ClockSync::Failed(e.to_string()),
    }
}

/// The file each disk of the domain writes to now, by target.
fn current_tops(vm: &Vm) -> Result<HashMap<String, String>> {
    Ok(vm.facts()?.disks.into_iter().filter(|d| d.device == "disk").filter_map(|d| Some((d.target, d.file?))).collect())
}

/// Internal revert. libvirt rewrites the file the snapshot lives in and points the disk back
/// at it, so it is refused (before anything changes) when that file is no longer the disk's
/// top and anything but the discarded current state stands on it: the files of external
/// snapshots taken after it, or images of other snapshots or domains. The images above it that
/// held only the current state are removed afterwards.
fn revert_internal(hv: &Hypervisor, vm: &Vm, handle: &DomainSnapshot, info: &SnapshotInfo) -> Result<Vec<String>> {
    let tops = current_tops(vm)?;
    let moves = info
        .disks
        .iter()
        .filter(|d| d.snapshot == "internal")
        .filter_map(|d| Some((d.target.as_str(), d.frozen.as_deref()?, tops.get(&d.target)?)))
        .any(|(_, frozen, top)| frozen != top);
    if moves {
        refuse_rewriting_below(hv, vm, info, &tops)?;
    }
    handle.revert(0).doing(|| format!("reverting {} to snapshot {}", vm.name(), info.name))?;
    if !moves {
        return Ok(Vec::new());
    }
    let now = current_tops(vm)?;
    let keep = files_in_use(hv, vm)?;
    let mut removed = Vec::new();
    for old in tops.values().filter(|old| !now.values().any(|n| n == *old)) {
        removed.extend(chain::prune_dangling(hv.raw(), old, &keep)?);
    }
    Ok(removed)
}

/// The refusal of [`revert_internal`] for a snapshot whose file is below the disk's top.
fn refuse_rewriting_below(hv: &Hypervisor, vm: &Vm, info: &SnapshotInfo, tops: &HashMap<String, String>) -> Result<()> {
    let conn = hv.raw();
    let snapshots = vm.snapshots()?;
    let mut standing = Vec::new();
    let mut images = Vec::new();
    let mut files = Vec::new();
    for disk in info.disks.iter().filter(|d| d.snapshot == "internal") {
        let (Some(frozen), Some(top)) = (disk.frozen.as_deref(), tops.get(&disk.target)) else { continue };
        if frozen == top {
            continue;
        }
        files.push(frozen.to_string());
        // What stands on the file may go only if it is the current state: the disk's own
        // chain above it, which no snapshot names and nothing else stands on.
        let chain = active_chain(hv, top);
        let above = chain.iter().position(|f| f == frozen).map_or(&[][..], |k| &chain[..k]);
        for snapshot in snapshots.iter().filter(|s| s.name != info.name) {
            let froze_it = snapshot.external_disks().any(|(_, f, _)| f == frozen);
            let names_above = snapshot
                .disks
                .iter()
                .any(|d| [&d.frozen, &d.overlay].iter().any(|f| f.as_ref().is_some_and(|f| above.contains(f))));
            if (froze_it || names_above) && !standing.contains(&snapshot.name) {
                standing.push(snapshot.name.clone());
            }
        }
        for file in std::iter::once(frozen).chain(above.iter().map(String::as_str)) {
            for dependant in chain::dependants(conn, file)? {
                if !above.contains(&dependant) && !images.contains(&dependant) {
                    images.push(dependant);
                }
            }
        }
    }
    if standing.is_empty() && images.is_empty() {
        if vm.power_state()? != PowerState::ShutOff {
            let message = format!(
                "{} of {} lives in {}, which the running domain no longer uses (an external snapshot \
                 was taken after it): shut {} off to revert to it",
                info.name,
                vm.name(),
                files.join(", "),
                vm.name()
            );
            return Err(Error::SnapshotRefused { kind: SnapshotRefusal::Snapshot, message });
        }
        return Ok(());
    }
    let mut what = Vec::new();
    if !standing.is_empty() {
        what.push(format!("the snapshots {standing:?}"));
    }
    if !images.is_empty() {
        what.push(format!("the images {images:?}"));
    }
    let message = format!(
        "{} of {} lives in {}, which {} stand on: reverting to it would rewrite or remove their data; \
         delete those first",
        info.name,
        vm.name(),
        files.join(", "),
        what.join(" and ")
    );
    Err(Error::SnapshotRefused { kind: SnapshotRefusal::DeleteSnapshotsFirst, message })
}

/// External revert: new overlays on the snapshot's files, domain redefined, snapshot made
/// current, power state restored, the old overlays removed when nothing needs them.
fn revert_external(hv: &Hypervisor, vm: &Vm, handle: &DomainSnapshot, info: &SnapshotInfo) -> Result<Vec<String>> {
    let conn = hv.raw();
    let definition = vm.xml(true)?;
    let old_tops: Vec<String> = DomainFacts::parse(&definition)?.disks.into_iter().filter_map(|d| d.file).collect();
    // The overlays come first: if one cannot be made, the domain has not been touched.
    // Milliseconds: two reverts to one snapshot within a second (the domain's lock lets them
    // follow each other that fast) would otherwise name the same overlay.
    let millis = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
    let label = format!("{}-r{millis}", info.name);
    let mut new_tops = HashMap::new();
    for (target, frozen, _) in info.external_disks() {
        match chain::create_overlay(conn, frozen, &overlay_name(vm.name(), target, &label)) {
            Ok(overlay) => new_tops.insert(target.to_string(), overlay),
            Err(e) => {
                for made in new_tops.values() {
                    let _ = chain::delete_image(conn, made);
                }
                return Err(e);
            }
        };
    }
    // Found while the domain runs: libvirt 9.0 names the file in the running domain's XML only.
    let nvram = Nvram::of(hv, vm)?;
    let before = vm.power_state()?;
    if before != PowerState::ShutOff {
        // The snapshot is disk-only: the running state is being thrown away, not saved.
        vm.destroy()?;
    }
    hv.define_vm(&domain_disks::repoint_disks(&definition, &new_tops)?)?;
    if let Some(nvram) = &nvram {
        nvram.restore(hv, &info.name)?;
    }
    let snapshot_xml = handle.xml_desc(0).doing(|| format!("reading snapshot {}", info.name))?;
    let flags = virt::sys::VIR_DOMAIN_SNAPSHOT_CREATE_REDEFINE | virt::sys::VIR_DOMAIN_SNAPSHOT_CREATE_CURRENT;
    vm.raw().create_snapshot_xml(&snapshot_xml, flags).doing(|| format!("marking snapshot {} current", info.name))?;
    match before {
        PowerState::ShutOff => {}
        PowerState::Paused => vm
            .raw()
            .create_with_flags(virt::sys::VIR_DOMAIN_START_PAUSED)
            .doing(|| format!("starting {} paused", vm.name()))?,
        _ => vm.start()?,
    }
    let keep = files_in_use(hv, vm)?;
    let mut removed = Vec::new();
    for top in old_tops.iter().filter(|t| !new_tops.values().any(|n| n == *t)) {
        removed.extend(chain::prune_dangling(conn, top, &keep)?);
    }
    Ok(removed)
}

/// Every image the domain or one of its snapshots still needs: the active chains and the
/// files the snapshots were taken from (which hold or carry their data).
fn files_in_use(hv: &Hypervisor, vm: &Vm) -> Result<HashSet<String>> {
    let mut keep: HashSet<String> = HashSet::new();
    for snapshot in vm.snapshots()? {
        keep.extend(snapshot.disks.into_iter().filter_map(|d| d.frozen));
    }
    for top in DomainFacts::parse(&vm.xml(true)?)?.disks.into_iter().filter_map(|d| d.file) {
        keep.extend(active_chain(hv, &top));
    }
    Ok(keep)
}

/// `top` and its backing files, as far as the storage pools know them.
fn active_chain(hv: &Hypervisor, top: &str) -> Vec<String> {
    let mut found = vec![top.to_string()];
    while let Some(backing) = found.last().and_then(|f| chain::image_at(hv.raw(), f).ok()).and_then(|i| i.backing) {
        if found.contains(&backing) {
            break;
        }
        found.push(backing);
    }
    found
}

/// The result of a delete.
#[derive(Clone, Debug)]
pub struct Deleted {
    /// The kind of snapshot deleted.
    pub kind: SnapshotType,
    /// Seconds it took, merge included.
    pub seconds: f64,
    /// How the data was handled: `libvirt` (internal, or an external merge by libvirt) or
    /// `metadata` (an external snapshot off the domain's current branch: its files removed).
    pub method: &'static str,
    /// Overlay files deleted because nothing depends on them any more.
    pub removed_files: Vec<String>,
}

/// Deletes the snapshot `name` of `vm`, keeping the data of every other snapshot.
pub fn delete(hv: &Hypervisor, vm: &Vm, name: &str) -> Result<Deleted> {
    let handle = vm.existing_snapshot(name)?;
    let info = vm.describe(&handle)?;
    let started = Instant::now();
    let doing = || format!("deleting snapshot {name} of {}", vm.name());
    if info.kind == SnapshotType::External {
        let in_use = files_in_use(hv, vm)?;
        let on_current_branch =
            info.external_disks().all(|(_, _, overlay)| overlay.is_some_and(|o| in_use.contains(o)));
        if !on_current_branch {
            return delete_off_branch(hv, vm, &handle, &info, started);
        }
        // libvirt merges each overlay into the file below it and deletes the overlay: the
        // internal snapshots inside it would go with it.
        for overlay in info.external_disks().filter_map(|(_, _, overlay)| overlay) {
            let inside = hv.internal_snapshots_in(overlay)?;
            if !inside.is_empty() {
                let message = format!(
                    "deleting {name} of {} would merge {overlay} away, which holds the internal \
                     snapshots {inside:?}: delete those first",
                    vm.name()
                );
                return Err(Error::SnapshotRefused { kind: SnapshotRefusal::DeleteSnapshotsFirst, message });
            }
        }
        // libvirt merges each overlay into the file below it: that file must be the snapshot's alone.
        for (target, frozen, overlay) in info.external_disks() {
            let others: Vec<String> =
                chain::dependants(hv.raw(), frozen)?.into_iter().filter(|d| Some(d.as_str()) != overlay).collect();
            if !others.is_empty() {
                return Err(Error::Refused(format!(
                    "snapshot {name} of {} cannot be merged safely: disk {target}'s image {frozen} is also the base of {}",
                    vm.name(),
                    others.join(", ")
                )));
            }
        }
    }
    if let Err(e) = handle.delete(0).doing(doing) {
        return Err(explain_refused_delete(vm, &info, e));
    }
    forget_nvram(hv, vm, &info)?;
    Ok(Deleted {
        kind: info.kind,
        seconds: started.elapsed().as_secs_f64(),
        method: "libvirt",
        removed_files: Vec::new(),
    })
}

/// Deletes the NVRAM copy of a deleted external snapshot.
fn forget_nvram(hv: &Hypervisor, vm: &Vm, info: &SnapshotInfo) -> Result<()> {
    if info.kind == SnapshotType::Internal {
        return Ok(());
    }
    Nvram::of(hv, vm)?.map_or(Ok(()), |nvram| nvram.forget(&info.name))
}

/// libvirt deletes an internal snapshot of a running domain through QEMU, which knows only the
/// images the domain runs on: one taken before an external snapshot is refused. Says so.
fn explain_refused_delete(vm: &Vm, info: &SnapshotInfo, error: Error) -> Error {
    let below = info.kind == SnapshotType::Internal
        && vm.power_state().is_ok_and(|p| p != PowerState::ShutOff)
        && current_tops(vm).is_ok_and(|tops| {
            info.disks.iter().any(|d| d.frozen.as_deref().is_some_and(|f| tops.get(&d.target).is_some_and(|t| t != f)))
        });
    if !below {
        return error;
    }
    Error::Refused(format!(
        "{error}; {} of {} lives in an image the running domain no longer uses (an external snapshot was \
         taken after it): it can be deleted once {} is shut off, or once that external snapshot is deleted",
        info.name,
        vm.name(),
        vm.name()
    ))
}

/// Deletes the overlays that a killed external revert of `vm` made and never used: volumes
/// called `<vm>-<target>.<snapshot>-r<time>.qcow2` beside the domain's disks, standing on an
/// image of this domain in the same directory, that no domain uses, no snapshot of it names
/// and nothing stands on.
/// Returns the deleted paths.
///
/// Call it holding the domain's lock: then no revert of ours is between making its overlay
/// and pointing the domain at it.
pub fn remove_unused_revert_overlays(hv: &Hypervisor, vm: &Vm) -> Result<Vec<String>> {
    let conn = hv.raw();
    let facts = DomainFacts::parse(&vm.xml(true)?)?;
    let prefixes: Vec<String> = facts
        .disks
        .iter()
        .filter(|d| d.device == "disk")
        .map(|d| snapshot_overlay_prefix(vm.name(), &d.target))
        .collect();
    let ours = |file: &str| {
        prefixes.iter().any(|p| {
            file.strip_prefix(p.as_str())
                .and_then(|rest| rest.strip_suffix(".qcow2"))
                .and_then(|label| label.rsplit_once("-r"))
                .is_some_and(|(snap, time)| {
                    !snap.is_empty() && !time.is_empty() && time.bytes().all(|b| b.is_ascii_digit())
                })
        })
    };
    let mut candidates = Vec::new();
    let dirs: HashSet<&str> =
        facts.disks.iter().filter_map(|d| d.file.as_deref()?.rsplit_once('/').map(|(dir, _)| dir)).collect();
    for dir in dirs {
        let Ok(pool) = conn.lookup_storage_pool_by_target_path(dir) else { continue };
        let _ = pool.refresh(0);
        for volume in pool.list_all_volumes(0).doing(|| format!("listing the images in {dir}"))? {
            if volume.name().is_ok_and(|n| ours(&n)) {
                candidates.push(volume.path().doing(|| format!("reading the path of an image in {dir}"))?);
            }
        }
    }
    if candidates.is_empty() {
        return Ok(Vec::new());
    }
    let mut keep = files_in_use(hv, vm)?;
    keep.extend(vm.facts()?.disks.into_iter().filter_map(|d| d.file));
    let survey = hv.disk_use()?;
    let mut removed = Vec::new();
    for path in candidates.into_iter().filter(|p| !keep.contains(p)) {
        // On one of the domain's own images beside it (not on a base image in another pool).
        let dir = |p: &str| p.rsplit_once('/').map(|(dir, _)| dir.to_string());
        let on_ours = chain::image_at(conn, &path)?.backing.is_some_and(|b| keep.contains(&b) && dir(&b) == dir(&path));
        if on_ours && survey.dependants(&path).is_empty() && survey.other_users(&path, vm.name()).next().is_none() {
            chain::delete_image(conn, &path)?;
            removed.push(path);
        }
    }
    Ok(removed)
}

/// An external snapshot off the current branch: libvirt cannot merge it, so only its
/// metadata goes, then the overlays nothing depends on any more.
fn delete_off_branch(
    hv: &Hypervisor,
    vm: &Vm,
    handle: &DomainSnapshot,
    info: &SnapshotInfo,
    started: Instant,
) -> Result<Deleted> {
    handle
        .delete(virt::sys::VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY)
        .doing(|| format!("deleting the metadata of snapshot {} of {}", info.name, vm.name()))?;
    let keep = files_in_use(hv, vm)?;
    let mut removed = Vec::new();
    for overlay in info.external_disks().filter_map(|(_, _, overlay)| overlay) {
        removed.extend(chain::prune_dangling(hv.raw(), overlay, &keep)?);
    }
    forget_nvram(hv, vm, info)?;
    Ok(Deleted {
        kind: info.kind,
        seconds: started.elapsed().as_secs_f64(),
        method: "metadata",
        removed_files: removed,
    })
}

/// What [`repair_left_by_killed_run`] did to a domain.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Repaired {
    /// A group snapshot had paused it and was killed before resuming it: resumed.
    pub resumed: bool,
    /// Its file systems were left frozen: thawed.
    pub thawed: bool,
    /// A merge of the backing-file mode had started it paused and was killed: forced off again.
    pub stopped_merge: bool,
}

/// Undoes what a killed run of ours left on `vm`, exactly that: resumes it if a group
/// snapshot recorded pausing it (a domain its user paused carries no record and stays
/// paused), forces off the paused QEMU of a killed merge, then thaws a guest left frozen.
///
/// Call it holding the domain's lock: then no run of ours is in the middle of its work.
pub fn repair_left_by_killed_run(vm: &Vm) -> Result<Repaired> {
    let mut repaired = Repaired::default();
    let state = vm.power_state()?;
    if marker::get(vm, false)? == Some(marker::Mark::Merging) {
        if state != PowerState::ShutOff {
            // Its QEMU runs no guest code; a merge job it still runs is aborted and left undone.
            vm.destroy()?;
            repaired.stopped_merge = true;
        }
        marker::clear(vm, marker::Mark::Merging)?;
        return Ok(repaired);
    }
    if state != PowerState::ShutOff && marker::get(vm, true)? == Some(marker::Mark::Paused) {
        // Paused by us (not by libvirt for a snapshot still being saved): resume it.
        if state == PowerState::Paused && marker::paused_by_request(vm)? {
            vm.resume()?;
            repaired.resumed = true;
        }
        marker::clear(vm, marker::Mark::Paused)?;
    }
    repaired.thawed = thaw_if_left_frozen(vm)?;
    Ok(repaired)
}

/// Thaws a running guest whose file systems a killed run left frozen; true when it did.
///
/// Call it holding the domain's lock: then no run of ours is between a freeze and its thaw,
/// so a frozen guest is a leftover. A guest without an answering agent is left alone.
pub fn thaw_if_left_frozen(vm: &Vm) -> Result<bool> {
    if vm.power_state()? != PowerState::Running {
        return Ok(false);
    }
    let agent = vm.agent();
    if !agent.is_frozen().unwrap_or(false) {
        return Ok(false);
    }
    agent.thaw()?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain_facts::Disk;

    fn facts(format: &str, pflash: bool) -> DomainFacts {
        let disk = Disk {
            device: "disk".into(),
            target: "vda".into(),
            format: Some(format.into()),
            file: Some("/p/a".into()),
        };
        DomainFacts { name: "web1".into(), disks: vec![disk], has_pflash: pflash, ..DomainFacts::default() }
    }

    fn options(requested: Requested, memory: Option<bool>) -> CreateOptions {
        CreateOptions { requested, memory, quiesce: false }
    }

    #[test]
    fn auto_prefers_internal_and_falls_back_to_external() {
        let auto = options(Requested::Auto, None);
        assert_eq!(choose_type(&facts("qcow2", false), true, &auto).unwrap(), SnapshotType::Internal);
        assert_eq!(choose_type(&facts("raw", false), true, &auto).unwrap(), SnapshotType::External);
        assert_eq!(choose_type(&facts("qcow2", true), false, &auto).unwrap(), SnapshotType::External);
        let no_ram = options(Requested::Auto, Some(false));
        assert_eq!(choose_type(&facts("qcow2", false), true, &no_ram).unwrap(), SnapshotType::External);
        assert_eq!(choose_type(&facts("qcow2", false), false, &no_ram).unwrap(), SnapshotType::Internal);
    }

    #[test]
    fn impossible_combinations_say_what_is_at_fault() {
        let refusal = |facts: &DomainFacts, options: &CreateOptions| match choose_type(facts, true, options) {
            Err(Error::SnapshotRefused { kind, message }) => (kind, message),
            other => panic!("not a snapshot refusal: {other:?}"),
        };
        let (kind, err) = refusal(&facts("raw", false), &options(Requested::Internal, None));
        assert!(kind == SnapshotRefusal::InternalImpossible && err.contains("vda is raw"), "{err}");
        let (kind, err) = refusal(&facts("qcow2", false), &options(Requested::External, Some(true)));
        assert_eq!(kind, SnapshotRefusal::MemoryNeedsInternal, "{err}");
        let (kind, err) = refusal(&facts("qcow2", true), &options(Requested::Auto, Some(true)));
        assert!(kind == SnapshotRefusal::MemoryNeedsInternal && err.contains("pflash"), "{err}");
    }

    #[test]
    fn overlays_live_beside_the_image_they_cover() {
        assert_eq!(sibling("/pool/web1.qcow2", &overlay_name("web1", "vda", "s1")), "/pool/web1-vda.s1.qcow2");
    }
}
