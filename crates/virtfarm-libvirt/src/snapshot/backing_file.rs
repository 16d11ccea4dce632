//! The backing-file mode of the TripleO `snapshot-libvirt` role, with named levels.
//!
//! A level is a read-only image `<disk>.bak` (the default level) or `<disk>.<level>.bak`;
//! the domain runs on an empty overlay `<disk>` on top of one of them. Saving a level that
//! does not exist moves the disk's data into it (a byte copy through libvirt streams, so it
//! works on remote URIs, then the old file is replaced by an empty overlay); saving one the
//! overlay sits on commits the overlay into it. Restoring drops the overlay and makes a fresh
//! one on the level. Removing a level pulls its data up into the disk (the level is only
//! read), then deletes it once nothing is based on it. Everything works on shut-off domains
//! only, as the role did.
//!
//! The storage API has no rename, so replacing the disk's file is a copy, a delete and a
//! create: at every instant one complete copy of the data exists, and an operation that
//! replaces or rewrites a file is announced by a marker volume `<level file>.<operation>`
//! (an empty volume, see [`Pending`]) made before its first change and deleted after its
//! last. A run killed in between leaves the marker, and [`repair`] tells from it and from
//! what the disk's file is (missing, on the level, or not) whether to finish the operation
//! or undo it: a copy is partial until the disk's file is gone, which happens only once the
//! copy is whole; a level is half-committed until its marker goes.

use std::time::Duration;

use serde::Serialize;
use virt::connect::Connect;
use virt::storage_pool::StoragePool;
use virt::storage_vol::StorageVol;
use virt::stream::Stream;

use super::chain::{create_overlay, delete_image, dependants, image_at, volume_at};
use super::marker::{self, Mark};
use super::qcow2::is_empty_overlay;
use super::xml::serialise;
use super::{blockjob, domain_disks};
use crate::connection::Hypervisor;
use crate::error::{Doing, Error, Result, SnapshotRefusal};
use crate::vm::{PowerState, Vm};

/// The longest a commit or a pull may take.
const MERGE_TIMEOUT: Duration = Duration::from_secs(1800);

/// The file of a level: `<disk>.bak` for the default level, `<disk>.<level>.bak` otherwise.
pub fn level_path(disk: &str, level: Option<&str>) -> String {
    match level {
        None => format!("{disk}.bak"),
        Some(level) => format!("{disk}.{level}.bak"),
    }
}

/// One saved level of a disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Level {
    /// The level's name; `None` for the default level (`<disk>.bak`).
    pub name: Option<String>,
    /// Its image file.
    pub file: String,
    /// The image it is based on, if any.
    pub backing: Option<String>,
    /// True when the disk's overlay sits directly on it.
    pub current: bool,
    /// An operation on it that a killed run left under way, which the next changing run
    /// finishes or undoes (see [`repair`]).
    pub pending: Option<Pending>,
}

/// What saving a level did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Saved {
    /// The level is new: the disk's data moved into it, the disk is an empty overlay on it.
    Created,
    /// The overlay's changes were committed into the existing level.
    Committed,
}

impl Saved {
    /// `created` or `committed`.
    pub fn as_str(self) -> &'static str {
        match self {
            Saved::Created => "created",
            Saved::Committed => "committed",
        }
    }
}

/// An operation on a level that replaces or rewrites a file, announced by the marker volume
/// `<level file>.<operation>` for as long as it runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pending {
    /// Saving a new level: the disk copied into the level, then replaced by an overlay on it.
    Saving,
    /// Committing the overlay into its level, then replacing it by an empty overlay.
    Committing,
    /// Replacing the disk by an empty overlay on the level.
    Restoring,
}

impl Pending {
    const ALL: [Pending; 3] = [Pending::Saving, Pending::Committing, Pending::Restoring];

    /// `saving`, `committing` or `restoring`.
    pub fn as_str(self) -> &'static str {
        match self {
            Pending::Saving => "saving",
            Pending::Committing => "committing",
            Pending::Restoring => "restoring",
        }
    }

    fn marker(self, level_file: &str) -> String {
        format!("{level_file}.{}", self.as_str())
    }
}

/// An operation a killed run left under way on a level of a disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unfinished {
    /// What it was doing.
    pub operation: Pending,
    /// The level's name (`None` for the default level).
    pub level: Option<String>,
    /// The level's file (which may not exist).
    pub file: String,
}

impl Unfinished {
    /// The marker volume that announces it.
    pub fn marker_file(&self) -> String {
        self.operation.marker(&self.file)
    }

    /// The level as users name it, for messages.
    fn level_name(&self) -> &str {
        self.level.as_deref().unwrap_or("the default level")
    }
}

/// The pool whose directory holds `path` (the file itself need not exist).
fn pool_beside(conn: &Connect, path: &str) -> Result<StoragePool> {
    let dir = std::path::Path::new(path).parent().and_then(|d| d.to_str()).unwrap_or("/");
    conn.lookup_storage_pool_by_target_path(dir)
        .doing(|| format!("finding the storage pool of the directory {dir} (images outside pools are left alone)"))
}

/// The names of the volumes beside `disk`, the pool refreshed first.
fn names_beside(conn: &Connect, disk: &str) -> Result<Vec<(String, StorageVol)>> {
    let pool = pool_beside(conn, disk)?;
    let _ = pool.refresh(0);
    let volumes = pool.list_all_volumes(0).doing(|| format!("listing the images beside {disk}"))?;
    volumes
        .into_iter()
        .map(|volume| Ok((volume.name().doing(|| "reading a volume name".to_string())?, volume)))
        .collect()
}

/// The levels of `disk`, found beside it in its pool; the disk itself may be missing (a run
/// killed while it replaced the file).
pub fn levels(hv: &Hypervisor, disk: &str) -> Result<Vec<Level>> {
    let conn = hv.raw();
    let current = match disk_state(conn, disk, "")? {
        DiskState::Missing => None,
        _ => image_at(conn, disk)?.backing,
    };
    let pending = unfinished(hv, disk)?;
    let base = file_name(disk);
    let mut found = Vec::new();
    for (name, volume) in names_beside(conn, disk)? {
        let Some(level) = level_of(base, &name) else { continue };
        let file = volume.path().doing(|| format!("reading the path of {name}"))?;
        let backing = image_at(conn, &file)?.backing;
        let pending = pending.iter().find(|u| u.file == file).map(|u| u.operation);
        found.push(Level { current: current.as_deref() == Some(file.as_str()), name: level, file, backing, pending });
    }
    found.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(found)
}

/// The operations killed runs left under way on the levels of `disk`, by their markers.
pub fn unfinished(hv: &Hypervisor, disk: &str) -> Result<Vec<Unfinished>> {
    let dir = disk.rsplit_once('/').map_or("", |(dir, _)| dir);
    let base = file_name(disk);
    let mut found = Vec::new();
    for (name, _) in names_beside(hv.raw(), disk)? {
        for operation in Pending::ALL {
            let Some(level_file) = name.strip_suffix(&format!(".{}", operation.as_str())) else { continue };
            if let Some(level) = level_of(base, level_file) {
                found.push(Unfinished { operation, level, file: format!("{dir}/{level_file}") });
            }
        }
    }
    found.sort_by(|a, b| a.file.cmp(&b.file));
    Ok(found)
}

/// `Some(None)` for `<base>.bak`, `Some(Some(level))` for `<base>.<level>.bak`.
fn level_of(base: &str, file: &str) -> Option<Option<String>> {
    let rest = file.strip_prefix(base)?.strip_suffix(".bak")?;
    match rest.strip_prefix('.') {
        None if rest.is_empty() => Some(None),
        Some(level) if !level.is_empty() => Some(Some(level.to_string())),
        _ => None,
    }
}

fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// What the disk's file is, next to a level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DiskState {
    /// No such volume: a run was killed between deleting it and making its replacement.
    Missing,
    /// An overlay directly on the level.
    OnLevel,
    /// Anything else: a whole image of its own, or an overlay on something else.
    Other,
}

fn disk_state(conn: &Connect, disk: &str, level_file: &str) -> Result<DiskState> {
    let pool = pool_beside(conn, disk)?;
    let _ = pool.refresh(0);
    match pool.lookup_storage_vol_by_name(file_name(disk)) {
        Err(e) if e.code().is(virt::error::ErrorNumber::NoStorageVolume) => Ok(DiskState::Missing),
        Err(e) => Err(e).doing(|| format!("looking up the image {disk}")),
        Ok(_) if image_at(conn, disk)?.backing.as_deref() == Some(level_file) => Ok(DiskState::OnLevel),
        Ok(_) => Ok(DiskState::Other),
    }
}

/// A marker volume: it exists from before an operation's first change to after its last.
struct Marker<'c> {
    conn: &'c Connect,
    path: String,
}

impl<'c> Marker<'c> {
    /// Announces `operation` on the level `level_file`; refused when one is already under way.
    fn create(conn: &'c Connect, level_file: &str, operation: Pending) -> Result<Marker<'c>> {
        let name = operation.marker(file_name(level_file));
        let pool = pool_beside(conn, level_file)?;
        let xml = serialise(&RawVolume {
            name: &name,
            capacity: Bytes { unit: "bytes", value: 0 },
            target: RawTarget { format: RawFormat { kind: "raw" } },
        })?;
        let volume = StorageVol::create_xml(&pool, &xml, 0).doing(|| {
            format!("announcing {} {level_file} (is an earlier run's operation on it unfinished?)", operation.as_str())
        })?;
        Ok(Marker { conn, path: volume.path().doing(|| format!("reading the path of {name}"))? })
    }

    fn of(conn: &'c Connect, unfinished: &Unfinished) -> Marker<'c> {
        Marker { conn, path: unfinished.marker_file() }
    }

    /// The operation is complete (or undone): the marker goes.
    fn done(self) -> Result<()> {
        delete_image(self.conn, &self.path)
    }
}

/// What an operation of this mode is about to do to a disk and a level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// [`save`]: the disk's file replaced, the level made or rewritten.
    Save,
    /// [`restore`]: the disk's file replaced.
    Restore,
    /// [`remove`]: the level deleted, its data pulled into the disk when the disk sits on it.
    Remove,
}

/// Refuses, before anything changes, when a snapshot lives in a file that `change` of `level`
/// would replace, rewrite or delete: a libvirt snapshot of `vm` that names the disk's file or
/// the level's, or an internal snapshot inside one of them that libvirt does not list. Such
/// a snapshot would be lost, or left pointing at a file without it. Saving or restoring also
/// refuses a disk that another image stands on (an external snapshot's overlay, say): the
/// domain's data is up there, and the image would read another disk below it.
pub fn refuse_over_snapshots(hv: &Hypervisor, vm: &Vm, disk: &str, level: Option<&str>, change: Change) -> Result<()> {
    let conn = hv.raw();
    if matches!(change, Change::Save | Change::Restore) && volume_at(conn, disk).is_ok() {
        refuse_if_based_on(conn, disk)?;
    }
    let bak = level_path(disk, level);
    let disk_touched = match change {
        Change::Save | Change::Restore => true,
        Change::Remove => volume_at(conn, disk)
            .is_ok_and(|_| image_at(conn, disk).is_ok_and(|image| image.backing.as_deref() == Some(bak.as_str()))),
    };
    let files: Vec<&str> = [Some(bak.as_str()), disk_touched.then_some(disk)].into_iter().flatten().collect();
    let mut listed: Vec<String> = Vec::new();
    let mut holding: Vec<&str> = Vec::new();
    for snapshot in vm.snapshots()? {
        for file in snapshot.disks.iter().flat_map(|d| [&d.frozen, &d.overlay]).filter_map(|f| f.as_deref()) {
            if let Some(file) = files.iter().find(|f| **f == file) {
                if !listed.contains(&snapshot.name) {
                    listed.push(snapshot.name.clone());
                }
                if !holding.contains(file) {
                    holding.push(file);
                }
            }
        }
    }
    if !listed.is_empty() {
        let message = format!(
            "{} has the libvirt snapshots {listed:?} in {}, which this would replace: delete them first",
            vm.name(),
            holding.join(" and ")
        );
        return Err(Error::SnapshotRefused { kind: SnapshotRefusal::BackingFileUnderSnapshots, message });
    }
    for file in files.into_iter().filter(|f| volume_at(conn, f).is_ok()) {
        let inside = super::qcow2::internal_snapshots_at(conn, file)?;
        if !inside.is_empty() {
            let message = format!(
                "{file} holds the internal snapshots {inside:?}, which libvirt does not list \
                 for {}: replacing the file would lose them, so it is left alone",
                vm.name()
            );
            return Err(Error::SnapshotRefused { kind: SnapshotRefusal::BackingFileOverInternalSnapshots, message });
        }
    }
    Ok(())
}

/// Saves the disk's current state as `level` (see the module docs).
pub fn save(hv: &Hypervisor, vm: &Vm, disk: &str, level: Option<&str>) -> Result<Saved> {
    let target = disk_target(vm, disk)?;
    let conn = hv.raw();
    let bak = level_path(disk, level);
    refuse_over_snapshots(hv, vm, disk, level, Change::Save)?;
    if volume_at(conn, &bak).is_err() {
        let definition = vm.xml(true)?;
        let marker = Marker::create(conn, &bak, Pending::Saving)?;
        if let Err(e) = copy_image(conn, disk, file_name(&bak)) {
            // The disk is untouched: the partial copy goes, then the marker.
            if volume_at(conn, &bak).is_err() || delete_image(conn, &bak).is_ok() {
                let _ = marker.done();
            }
            return Err(e);
        }
        // The copy is whole: only now may the disk's file go.
        delete_image(conn, disk)?;
        create_overlay(conn, &bak, file_name(disk))?;
        redefine_on_overlay(hv, &definition, &target, disk)?;
        marker.done()?;
        return Ok(Saved::Created);
    }
    let _ = pool_beside(conn, disk)?.refresh(0);
    let backing = image_at(conn, disk)?.backing;
    if backing.as_deref() != Some(bak.as_str()) {
        return Err(Error::Refused(format!(
            "{disk} is based on {}, not on {bak}: restore that level first, or save another level",
            backing.as_deref().unwrap_or("nothing")
        )));
    }
    let others: Vec<String> = dependants(conn, &bak)?.into_iter().filter(|d| d != disk).collect();
    if !others.is_empty() {
        return Err(Error::Refused(format!(
            "{bak} is also the base of {}: committing into it would change them",
            others.join(", ")
        )));
    }
    let marker = Marker::create(conn, &bak, Pending::Committing)?;
    // A commit that stops half-way leaves the level half old, half new (the overlay on it
    // still reads the new state whole): the marker stays, and the next run finishes it.
    commit_into(hv, vm, &target, disk, &bak).map_err(|e| {
        Error::Refused(format!("{e}; {bak} is left partly committed: the next run finishes the commit first"))
    })?;
    replace_by_overlay(hv, vm, &target, disk, &bak)?;
    marker.done()?;
    Ok(Saved::Committed)
}

/// Deletes the disk's file (if there is one) and makes it an empty overlay on `level_file`,
/// the domain's disk `target` pointed at it again.
fn replace_by_overlay(hv: &Hypervisor, vm: &Vm, target: &str, disk: &str, level_file: &str) -> Result<()> {
    let conn = hv.raw();
    if disk_state(conn, disk, level_file)? != DiskState::Missing {
        delete_image(conn, disk)?;
    }
    create_overlay(conn, level_file, file_name(disk))?;
    redefine_on_overlay(hv, &vm.xml(true)?, target, disk)
}

/// True when `disk` is an overlay sitting directly on `level` and holding nothing: saving
/// that level again would change nothing.
pub fn is_saved(hv: &Hypervisor, disk: &str, level: Option<&str>) -> Result<bool> {
    let conn = hv.raw();
    if disk_state(conn, disk, &level_path(disk, level))? != DiskState::OnLevel {
        return Ok(false);
    }
    is_empty_overlay(conn, disk)
}

/// Drops the disk's overlay and puts a fresh empty one on `level`.
pub fn restore(hv: &Hypervisor, vm: &Vm, disk: &str, level: Option<&str>) -> Result<()> {
    let target = disk_target(vm, disk)?;
    let conn = hv.raw();
    let bak = level_path(disk, level);
    volume_at(conn, &bak).map_err(|_| Error::NotFound { kind: "backing file", name: bak.clone() })?;
    if let Some(pending) = unfinished(hv, disk)?.into_iter().find(|u| u.file == bak) {
        return Err(Error::Refused(format!(
            "{bak} is not whole: {} it was left unfinished by a killed run (the next changing run finishes it)",
            pending.operation.as_str()
        )));
    }
    refuse_over_snapshots(hv, vm, disk, level, Change::Restore)?;
    let marker = Marker::create(conn, &bak, Pending::Restoring)?;
    replace_by_overlay(hv, vm, &target, disk, &bak)?;
    marker.done()
}

/// Removes `level`: its data pulled up into the disk when the disk's overlay sits on it (the
/// level is only read, the disk holds its data whole at every instant), then deleted once
/// nothing is based on it; refused when another image is. Returns false when there was no
/// such level.
pub fn remove(hv: &Hypervisor, vm: &Vm, disk: &str, level: Option<&str>) -> Result<bool> {
    let conn = hv.raw();
    let bak = level_path(disk, level);
    if volume_at(conn, &bak).is_err() {
        return Ok(false);
    }
    refuse_over_snapshots(hv, vm, disk, level, Change::Remove)?;
    let based_on = dependants(conn, &bak)?;
    match based_on.as_slice() {
        [] => {}
        [only] if only == disk => {
            let target = disk_target(vm, disk)?;
            pull_into(hv, vm, &target, disk, &bak)?;
            let still: Vec<String> = dependants(conn, &bak)?;
            if !still.is_empty() {
                return Err(Error::Refused(format!("{bak} is still the base of {}: it is kept", still.join(", "))));
            }
        }
        others => {
            return Err(Error::Refused(format!(
                "{bak} is the base of {}: remove or restore those levels first",
                others.join(", ")
            )))
        }
    }
    delete_image(conn, &bak)?;
    // With the level gone, nothing is left under way on it.
    for operation in Pending::ALL {
        let marker = operation.marker(&bak);
        if volume_at(conn, &marker).is_ok() {
            delete_image(conn, &marker)?;
        }
    }
    Ok(true)
}

/// Finishes or undoes every operation a killed run left under way on the levels of `disk`
/// (see the module docs); the domain must be off. Returns what it did, one sentence each.
///
/// - saving: the disk's file missing means the copy was whole (the file goes only then): the
///   overlay is made again; the disk on the level means only the marker was left; otherwise
///   the copy may be partial and the disk is whole and untouched: the copy is deleted.
/// - committing: the commit is finished (the overlay on the level holds the state whole),
///   or, when it had finished, the new overlay is made.
/// - restoring: a missing disk gets its empty overlay on the level.
pub fn repair(hv: &Hypervisor, vm: &Vm, disk: &str) -> Result<Vec<String>> {
    let conn = hv.raw();
    let mut done = Vec::new();
    for pending in unfinished(hv, disk)? {
        if vm.power_state()? != PowerState::ShutOff {
            return Err(Error::Refused(format!("{} must be shut off for the backing-file mode", vm.name())));
        }
        let file = pending.file.as_str();
        let level = pending.level_name();
        // The pivot of a commit points the definition at the level until the run puts it back.
        let (target, on) = target_of(vm, &[disk, file])?;
        let state = disk_state(conn, disk, file)?;
        let what = match (pending.operation, state) {
            (Pending::Committing, _) if on == file => {
                // The commit completed (it pivoted): the old overlay holds nothing the level lacks.
                replace_by_overlay(hv, vm, &target, disk, file)?;
                format!("finished committing into {level}")
            }
            (_, DiskState::Missing) if volume_at(conn, file).is_ok() => {
                create_overlay(conn, file, file_name(disk))?;
                redefine_on_overlay(hv, &vm.xml(true)?, &target, disk)?;
                format!("finished {} {level}: {disk} is an overlay on it again", pending.operation.as_str())
            }
            (_, DiskState::Missing) => {
                return Err(Error::Refused(format!(
                    "{disk} and {file} are both missing ({} {level} was left unfinished): nothing to repair from",
                    pending.operation.as_str()
                )))
            }
            (Pending::Saving | Pending::Restoring, DiskState::OnLevel) => {
                redefine_on_overlay(hv, &vm.xml(true)?, &target, disk)?;
                format!("finished {} {level}", pending.operation.as_str())
            }
            (Pending::Restoring, DiskState::Other) => format!("restoring {level} had not started: nothing changed"),
            (Pending::Saving, DiskState::Other) => {
                // The disk was never touched: the copy, partial or not, is the one to drop.
                if volume_at(conn, file).is_ok() {
                    refuse_if_based_on(conn, file)?;
                    delete_image(conn, file)?;
                }
                format!("undid saving {level}: its copy removed, {disk} as it was")
            }
            (Pending::Committing, DiskState::OnLevel) => {
                if !is_empty_overlay(conn, disk)? {
                    commit_into(hv, vm, &target, disk, file)?;
                }
                replace_by_overlay(hv, vm, &target, disk, file)?;
                format!("finished committing into {level}")
            }
            (Pending::Committing, DiskState::Other) if volume_at(conn, file).is_err() => {
                format!("committing into {level} was left unfinished, but the level is gone: nothing to finish")
            }
            (Pending::Committing, DiskState::Other) => {
                return Err(Error::Refused(format!(
                    "{file} was left partly committed and {disk} no longer sits on it, so the commit cannot \
                     be finished: remove that level"
                )))
            }
        };
        Marker::of(conn, &pending).done()?;
        done.push(what);
    }
    Ok(done)
}

/// The target of the domain's disk whose image is `disk`; the domain must be off.
fn disk_target(vm: &Vm, disk: &str) -> Result<String> {
    if vm.power_state()? != PowerState::ShutOff {
        return Err(Error::Refused(format!("{} must be shut off for the backing-file mode", vm.name())));
    }
    target_of(vm, &[disk]).map(|(target, _)| target)
}

/// The target of the first disk of the domain whose image is one of `files`, with that image.
fn target_of(vm: &Vm, files: &[&str]) -> Result<(String, String)> {
    vm.facts()?
        .disks
        .into_iter()
        .find_map(|d| d.file.filter(|f| files.contains(&f.as_str())).map(|f| (d.target, f)))
        .ok_or_else(|| Error::Refused(format!("{} has no disk with the image {}", vm.name(), files[0])))
}

/// Refuses to replace `disk` when another image is based on it.
fn refuse_if_based_on(conn: &Connect, disk: &str) -> Result<()> {
    let based_on = dependants(conn, disk)?;
    if based_on.is_empty() {
        Ok(())
    } else {
        Err(Error::Refused(format!("{disk} is the base of {}: it cannot be replaced", based_on.join(", "))))
    }
}

/// Keeps the definition, with the disk declared qcow2 (the overlay is, whatever the image was).
fn redefine_on_overlay(hv: &Hypervisor, definition: &str, target: &str, disk: &str) -> Result<()> {
    let files = std::collections::HashMap::from([(target.to_string(), disk.to_string())]);
    hv.define_vm(&domain_disks::repoint_disks(definition, &files)?).map(drop)
}

/// Runs `job` on the domain started paused (its QEMU runs no guest code), then forces it off
/// and puts the definition back as it was, whatever the job did. The start is recorded on
/// the definition first, so a run killed meanwhile leaves a domain the next run stops
/// rather than takes for one its user runs.
fn while_paused(hv: &Hypervisor, vm: &Vm, doing: &str, job: impl FnOnce() -> Result<()>) -> Result<()> {
    let definition = vm.xml(true)?;
    marker::set(vm, Mark::Merging)?;
    let started = vm
        .raw()
        .create_with_flags(virt::sys::VIR_DOMAIN_START_PAUSED)
        .doing(|| format!("starting {} paused to {doing}", vm.name()));
    let worked = started.and_then(|()| job());
    let stopped = match vm.power_state() {
        Ok(PowerState::ShutOff) => Ok(()),
        _ => vm.destroy(),
    };
    // A pivot points the definition at the image merged into; the disk keeps its file name.
    let redefined = hv.define_vm(&definition).map(drop).and_then(|()| marker::clear(vm, Mark::Merging));
    worked?;
    stopped?;
    redefined
}

/// Commits the overlay `disk` into `base` with QEMU started paused.
fn commit_into(hv: &Hypervisor, vm: &Vm, target: &str, disk: &str, base: &str) -> Result<()> {
    while_paused(hv, vm, &format!("commit {disk} into {base}"), || {
        blockjob::commit_active_into(vm.raw(), target, base, MERGE_TIMEOUT)
    })
}

/// Pulls the data of `level` (which `disk` sits on) up into `disk`, which then sits on what
/// the level sat on; the level is only read.
fn pull_into(hv: &Hypervisor, vm: &Vm, target: &str, disk: &str, level: &str) -> Result<()> {
    let below = image_at(hv.raw(), level)?.backing;
    while_paused(hv, vm, &format!("pull {level} into {disk}"), || {
        blockjob::pull_into_top(vm.raw(), target, below.as_deref(), MERGE_TIMEOUT)
    })?;
    // The pool keeps what it read of an image until it is refreshed.
    if disk_state(hv.raw(), disk, level)? == DiskState::OnLevel {
        return Err(Error::Refused(format!("{disk} still sits on {level} after the pull: the level is kept")));
    }
    Ok(())
}

#[derive(Serialize)]
#[serde(rename = "volume")]
struct RawVolume<'a> {
    name: &'a str,
    capacity: Bytes,
    target: RawTarget,
}

#[derive(Serialize)]
struct Bytes {
    #[serde(rename = "@unit")]
    unit: &'static str,
    #[serde(rename = "$text")]
    value: u64,
}

#[derive(Serialize)]
struct RawTarget {
    format: RawFormat,
}

#[derive(Serialize)]
struct RawFormat {
    #[serde(rename = "@type")]
    kind: &'static str,
}

/// Copies the image file `from` byte for byte into a new volume `name` in the same pool
/// (a qcow2 file keeps its backing-file reference), through libvirt streams. Fails unless
/// every byte arrived.
fn copy_image(conn: &Connect, from: &str, name: &str) -> Result<String> {
    let doing = || format!("copying {from} to {name}");
    let source = volume_at(conn, from)?;
    let size = source.info_flags(virt::sys::VIR_STORAGE_VOL_GET_PHYSICAL).doing(doing)?.allocation;
    let pool = source.lookup_storage_pool().doing(doing)?;
    let xml = serialise(&RawVolume {
        name,
        capacity: Bytes { unit: "bytes", value: size },
        target: RawTarget { format: RawFormat { kind: "raw" } },
    })?;
    let copy = StorageVol::create_xml(&pool, &xml, 0).doing(doing)?;
    let download = Stream::new(conn, 0).doing(doing)?;
    let upload = Stream::new(conn, 0).doing(doing)?;
    source.download(&download, 0, size, 0).doing(doing)?;
    copy.upload(&upload, 0, size, 0).doing(doing)?;
    let mut buffer = vec![0u8; 1 << 20];
    let mut copied = 0u64;
    loop {
        let read = download.recv(&mut buffer).doing(doing)?;
        if read <= 0 {
            break;
        }
        let mut sent = 0usize;
        while sent < read as usize {
            match upload.send(&buffer[sent..read as usize]).doing(doing)? {
                n if n <= 0 => return Err(Error::Refused(format!("{}: the upload stream closed early", doing()))),
                n => sent += n as usize,
            }
        }
        copied += read as u64;
    }
    download.finish().doing(doing)?;
    upload.finish().doing(doing)?;
    if copied != size {
        return Err(Error::Refused(format!("{}: {copied} of {size} bytes arrived", doing())));
    }
    // The pool learns the copy's real format (qcow2, with its backing file) on refresh.
    let _ = pool.refresh(0);
    copy.path().doing(doing)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn level_files_follow_the_role_and_add_names() {
        assert_eq!(level_path("/vm/subnode-0.qcow2", None), "/vm/subnode-0.qcow2.bak");
        assert_eq!(level_path("/vm/subnode-0.qcow2", Some("base")), "/vm/subnode-0.qcow2.base.bak");
        assert_eq!(level_of("subnode-0.qcow2", "subnode-0.qcow2.bak"), Some(None));
        assert_eq!(level_of("subnode-0.qcow2", "subnode-0.qcow2.base.bak"), Some(Some("base".to_string())));
        assert_eq!(level_of("subnode-0.qcow2", "subnode-0.qcow2..bak"), None);
        assert_eq!(level_of("subnode-0.qcow2", "subnode-1.qcow2.bak"), None);
        assert_eq!(level_of("subnode-0.qcow2", "subnode-0.qcow2"), None);
    }
}
