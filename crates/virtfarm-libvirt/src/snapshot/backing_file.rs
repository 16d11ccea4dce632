//! The backing-file mode of the TripleO `snapshot-libvirt` role, with named levels.
//!
//! A level is a read-only image `<disk>.bak` (the default level) or `<disk>.<level>.bak`;
//! the domain runs on an empty overlay `<disk>` on top of one of them. Saving a level that
//! does not exist moves the disk's data into it (a byte copy through libvirt streams, so it
//! works on remote URIs, then the old file is replaced by an empty overlay); saving one the
//! overlay sits on commits the overlay into it. Restoring drops the overlay and makes a fresh
//! one on the level. Removing a level merges it back into the disk, or deletes it when nothing
//! is based on it. Everything works on shut-off domains only, as the role did.

use std::time::Duration;

use serde::Serialize;
use virt::connect::Connect;
use virt::storage_vol::StorageVol;
use virt::stream::Stream;

use super::chain::{create_overlay, delete_image, dependants, image_at, volume_at};
use super::xml::serialise;
use super::{blockjob, domain_disks};
use crate::connection::Hypervisor;
use crate::error::{Doing, Error, Result};
use crate::vm::{PowerState, Vm};

/// The longest a commit may take.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(1800);

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

/// The levels of `disk`, found beside it in its pool.
pub fn levels(hv: &Hypervisor, disk: &str) -> Result<Vec<Level>> {
    let conn = hv.raw();
    let current = image_at(conn, disk)?.backing;
    let pool = volume_at(conn, disk)?.lookup_storage_pool().doing(|| format!("finding the pool of {disk}"))?;
    let _ = pool.refresh(0);
    let base = file_name(disk);
    let mut found = Vec::new();
    for volume in pool.list_all_volumes(0).doing(|| format!("listing the images beside {disk}"))? {
        let name = volume.name().doing(|| "reading a volume name".to_string())?;
        let Some(level) = level_of(base, &name) else { continue };
        let file = volume.path().doing(|| format!("reading the path of {name}"))?;
        let backing = image_at(conn, &file)?.backing;
        found.push(Level { current: current.as_deref() == Some(file.as_str()), name: level, file, backing });
    }
    found.sort_by(|a, b| a.name.cmp(&b.name));
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

/// Saves the disk's current state as `level` (see the module docs).
pub fn save(hv: &Hypervisor, vm: &Vm, disk: &str, level: Option<&str>) -> Result<Saved> {
    let target = disk_target(vm, disk)?;
    let conn = hv.raw();
    let bak = level_path(disk, level);
    refuse_if_based_on(conn, disk)?;
    if volume_at(conn, &bak).is_err() {
        let definition = vm.xml(true)?;
        copy_image(conn, disk, file_name(&bak))?;
        delete_image(conn, disk)?;
        create_overlay(conn, &bak, file_name(disk))?;
        redefine_on_overlay(hv, &definition, &target, disk)?;
        return Ok(Saved::Created);
    }
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
    commit_into(hv, vm, &target, disk, &bak)?;
    delete_image(conn, disk)?;
    create_overlay(conn, &bak, file_name(disk))?;
    Ok(Saved::Committed)
}

/// True when `disk` is an overlay sitting directly on `level` and holding nothing: saving
/// that level again would change nothing.
pub fn is_saved(hv: &Hypervisor, disk: &str, level: Option<&str>) -> Result<bool> {
    let conn = hv.raw();
    if image_at(conn, disk)?.backing.as_deref() != Some(level_path(disk, level).as_str()) {
        return Ok(false);
    }
    overlay_is_empty(conn, disk)
}

/// The longest L1 table read to tell whether an overlay is empty; a larger one is taken for
/// not empty (the save then commits, as it would have anyway).
const MAX_L1_BYTES: u64 = 32 << 20;

/// True when the qcow2 image at `path` maps no cluster (its L1 table is all zeros) and has no
/// internal snapshot, so every read falls through to its backing file. Read through libvirt
/// streams, so it works on remote URIs.
fn overlay_is_empty(conn: &Connect, path: &str) -> Result<bool> {
    let volume = volume_at(conn, path)?;
    let header = read_bytes(conn, &volume, path, 0, 72)?;
    let field = |at: usize, len: usize| {
        header.get(at..at + len).map(|b| b.iter().fold(0u64, |n, byte| n << 8 | u64::from(*byte)))
    };
    let (Some(magic), Some(l1_entries), Some(l1_offset), Some(snapshots)) =
        (field(0, 4), field(36, 4), field(40, 8), field(60, 4))
    else {
        return Ok(false);
    };
    let l1_bytes = l1_entries * 8;
    if magic != 0x5146_49fb || snapshots != 0 || l1_bytes > MAX_L1_BYTES {
        return Ok(false);
    }
    let l1 = read_bytes(conn, &volume, path, l1_offset, l1_bytes)?;
    Ok(l1.len() as u64 == l1_bytes && l1.iter().all(|byte| *byte == 0))
}

/// Up to `length` bytes of the image file at `offset`.
fn read_bytes(conn: &Connect, volume: &StorageVol, path: &str, offset: u64, length: u64) -> Result<Vec<u8>> {
    let doing = || format!("reading the qcow2 header of {path}");
    let stream = Stream::new(conn, 0).doing(doing)?;
    volume.download(&stream, offset, length, 0).doing(doing)?;
    let mut bytes = Vec::new();
    let mut buffer = vec![0u8; 64 << 10];
    loop {
        let read = stream.recv(&mut buffer).doing(doing)?;
        if read <= 0 {
            break;
        }
        bytes.extend_from_slice(&buffer[..read as usize]);
    }
    stream.finish().doing(doing)?;
    Ok(bytes)
}

/// Drops the disk's overlay and puts a fresh empty one on `level`.
pub fn restore(hv: &Hypervisor, vm: &Vm, disk: &str, level: Option<&str>) -> Result<()> {
    let target = disk_target(vm, disk)?;
    let conn = hv.raw();
    let bak = level_path(disk, level);
    volume_at(conn, &bak).map_err(|_| Error::NotFound { kind: "backing file", name: bak.clone() })?;
    refuse_if_based_on(conn, disk)?;
    let definition = vm.xml(true)?;
    delete_image(conn, disk)?;
    create_overlay(conn, &bak, file_name(disk))?;
    redefine_on_overlay(hv, &definition, &target, disk)
}

/// Removes `level`: merged back into the disk when the disk's overlay is on it, deleted when
/// nothing is based on it, refused otherwise. Returns false when there was no such level.
pub fn remove(hv: &Hypervisor, vm: &Vm, disk: &str, level: Option<&str>) -> Result<bool> {
    let conn = hv.raw();
    let bak = level_path(disk, level);
    if volume_at(conn, &bak).is_err() {
        return Ok(false);
    }
    let based_on = dependants(conn, &bak)?;
    match based_on.as_slice() {
        [] => delete_image(conn, &bak)?,
        [only] if only == disk => {
            let target = disk_target(vm, disk)?;
            commit_into(hv, vm, &target, disk, &bak)?;
            delete_image(conn, disk)?;
            copy_image(conn, &bak, file_name(disk))?;
            delete_image(conn, &bak)?;
        }
        others => {
            return Err(Error::Refused(format!(
                "{bak} is the base of {}: remove or restore those levels first",
                others.join(", ")
            )))
        }
    }
    Ok(true)
}

/// The target of the domain's disk whose image is `disk`; the domain must be off.
fn disk_target(vm: &Vm, disk: &str) -> Result<String> {
    if vm.power_state()? != PowerState::ShutOff {
        return Err(Error::Refused(format!("{} must be shut off for the backing-file mode", vm.name())));
    }
    vm.facts()?
        .disks
        .into_iter()
        .find(|d| d.file.as_deref() == Some(disk))
        .map(|d| d.target)
        .ok_or_else(|| Error::Refused(format!("{} has no disk with the image {disk}", vm.name())))
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

/// Commits the overlay `disk` into `base` with QEMU started paused (no guest code runs),
/// then puts the definition back as it was.
fn commit_into(hv: &Hypervisor, vm: &Vm, target: &str, disk: &str, base: &str) -> Result<()> {
    let definition = vm.xml(true)?;
    vm.raw()
        .create_with_flags(virt::sys::VIR_DOMAIN_START_PAUSED)
        .doing(|| format!("starting {} paused to merge {disk}", vm.name()))?;
    let merged = blockjob::commit_active_into(vm.raw(), target, base, COMMIT_TIMEOUT);
    let stopped = vm.destroy();
    merged?;
    stopped?;
    // The pivot points the definition at the base; the disk keeps its file name.
    hv.define_vm(&definition).map(drop)
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
/// (a qcow2 file keeps its backing-file reference), through libvirt streams.
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
    loop {
        let read = download.recv(&mut buffer).doing(doing)?;
        if read <= 0 {
            break;
        }
        let mut sent = 0usize;
        while sent < read as usize {
            sent += upload.send(&buffer[sent..read as usize]).doing(doing)? as usize;
        }
    }
    download.finish().doing(doing)?;
    upload.finish().doing(doing)?;
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
