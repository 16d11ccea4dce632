//! Importing a disk image file from where this run is (the controller, for a `qemu+ssh://`
//! URI) into a storage pool through libvirt's storage streams, once.
//!
//! The file is uploaded under a temporary name (`<volume>.virtfarm-upload`), then copied by
//! libvirt into the volume itself as qcow2 (`virStorageVolCreateXMLFrom`: a raw file is
//! converted on the way), then recorded, then the temporary volume is deleted. The record
//! (`<volume>.virtfarm-import`, a small volume beside it) holds the file's length and
//! fingerprint and the volume's modification time, so a later run judges "the same image"
//! without reading the volume: an existing volume is reused when its record names the same
//! file content and the volume has not changed since. A volume with no record, or a record of
//! other content, is not this file's and is refused. A run killed before the record was written
//! leaves its temporary volume: the next run takes the volume beside it for unfinished and
//! imports again; a volume is never taken for an image before it is complete.
//!
//! The runs that import one image take turns under a lock ([`Hypervisor::lock_import`]); one
//! that finds its lock taken over (it ran so long that another judged it stale) does not copy
//! its upload, which the other run has replaced.

use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use virt::storage_vol::StorageVol;

use crate::connection::Hypervisor;
use crate::disk_use::DiskUse;
use crate::error::{Doing, Error, Result};
use crate::lock::{download, LockPolicy};
use crate::naming::Fingerprint;
use crate::snapshot::qcow2;
use crate::storage::{refresh_pool, volume_xml, BaseImage, VolumeXml};

/// What the temporary volume of an upload is called: the volume's name followed by this.
pub const UPLOAD_SUFFIX: &str = ".virtfarm-upload";
/// What the record of an import is called: the volume's name followed by this.
pub const RECORD_SUFFIX: &str = ".virtfarm-import";
/// A record is a file name and a few numbers: never more than this.
const MAX_RECORD_BYTES: usize = 4096;
/// How much of the file tells its format.
const PROBE_BYTES: usize = 512;

/// A disk image file where this run is, probed and fingerprinted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageFile {
    /// Its path.
    pub path: String,
    /// `qcow2` or `raw`.
    pub format: &'static str,
    /// Its length in bytes.
    pub length: u64,
    /// The virtual size of the disk it holds.
    pub capacity: u64,
    /// [`Fingerprint`] of its content.
    pub fingerprint: String,
}

/// What a pool remembers of an import, in the record volume beside the image.
#[derive(Debug, Deserialize, Serialize, PartialEq, Eq)]
struct Record {
    /// The file's name, for messages.
    source: String,
    length: u64,
    fingerprint: String,
    /// The volume's modification time once imported: another time means it was replaced.
    modified: Option<i64>,
}

/// What [`Hypervisor::import_image`] did, or would do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportOutcome {
    /// The imported volume, as a base image to clone.
    pub base: BaseImage,
    /// The file was (or, in a dry run, would be) uploaded now.
    pub uploaded: bool,
}

/// Archive and image formats a file may be by mistake, by their magic bytes at an offset.
const NOT_DISKS: &[(usize, &[u8], &str)] = &[
    (0, b"\x1f\x8b", "a gzip archive (unpack the disk image first)"),
    (0, b"\xfd7zXZ\x00", "an xz archive (unpack the disk image first)"),
    (0, b"BZh", "a bzip2 archive (unpack the disk image first)"),
    (0, b"\x28\xb5\x2f\xfd", "a zstd archive (unpack the disk image first)"),
    (0, b"PK\x03\x04", "a zip archive (unpack the disk image first)"),
    (257, b"ustar", "a tar archive (unpack the disk image first)"),
    (0, b"KDMV", "a VMDK image (convert it: qemu-img convert -O qcow2)"),
    (0, b"vhdxfile", "a VHDX image (convert it: qemu-img convert -O qcow2)"),
    (0, b"conectix", "a VHD image (convert it: qemu-img convert -O qcow2)"),
    (0, b"QED\x00", "a QED image (convert it: qemu-img convert -O qcow2)"),
    (64, b"\x7f\x10\xda\xbe", "a VDI image (convert it: qemu-img convert -O qcow2)"),
];

/// The format and virtual size of a file of `length` bytes that begins with `head`, or why it
/// is not a disk image this module imports.
fn probe(head: &[u8], length: u64) -> std::result::Result<(&'static str, u64), String> {
    if let Some(header) = qcow2::parse_header(head) {
        return match header {
            h if h.backing_offset != 0 => {
                Err("is a qcow2 overlay: it needs its backing file (flatten it: qemu-img convert -O qcow2)".into())
            }
            h if h.crypt_method != 0 => Err("is an encrypted qcow2 image".into()),
            h if h.incompatible & 4 != 0 => Err("is a qcow2 image whose data lives in another file".into()),
            h => Ok(("qcow2", h.size)),
        };
    }
    if let Some((_, _, what)) = NOT_DISKS.iter().find(|(at, magic, _)| head.get(*at..at + magic.len()) == Some(*magic))
    {
        return Err(format!("is {what}"));
    }
    if length == 0 || length % 512 != 0 {
        return Err(format!(
            "is not a disk image: neither qcow2 nor raw (a raw image is a whole number of 512-byte sectors; it has {length} bytes)"
        ));
    }
    Ok(("raw", length))
}

impl ImageFile {
    /// Probes the file at `path` and reads it once for its fingerprint.
    pub fn open(path: &str) -> Result<ImageFile> {
        let refused = |why: String| Error::Refused(format!("{path} {why}"));
        let mut file = File::open(path).map_err(|e| refused(format!("cannot be read here: {e}")))?;
        let metadata = file.metadata().map_err(|e| refused(format!("cannot be read here: {e}")))?;
        if !metadata.is_file() {
            return Err(refused("is not a file".into()));
        }
        let mut head = Vec::with_capacity(PROBE_BYTES);
        (&mut file)
            .take(PROBE_BYTES as u64)
            .read_to_end(&mut head)
            .map_err(|e| refused(format!("cannot be read: {e}")))?;
        let (format, capacity) = probe(&head, metadata.len()).map_err(refused)?;
        let mut fingerprint = Fingerprint::default();
        fingerprint.write(&head);
        let mut buffer = vec![0u8; 1 << 20];
        let mut length = head.len() as u64;
        loop {
            match file.read(&mut buffer) {
                Ok(0) => break,
                Ok(read) => {
                    fingerprint.write(&buffer[..read]);
                    length += read as u64;
                }
                Err(e) => return Err(refused(format!("cannot be read: {e}"))),
            }
        }
        Ok(ImageFile { path: path.to_string(), format, length, capacity, fingerprint: fingerprint.hex() })
    }

    fn file_name(&self) -> String {
        Path::new(&self.path).file_name().map_or_else(|| self.path.clone(), |n| n.to_string_lossy().into_owned())
    }

    fn record(&self, modified: Option<i64>) -> Record {
        Record { source: self.file_name(), length: self.length, fingerprint: self.fingerprint.clone(), modified }
    }
}

impl Hypervisor {
    /// Makes sure `pool_name` holds `file` as the qcow2 volume `name`, uploading it when no
    /// import of the same content is there (see the module docs); refuses a volume of that
    /// name that holds something else. `disks` is the hypervisor's survey, read under the
    /// caller's lock: an unfinished import that something stands on is never deleted. With
    /// `dry_run`, nothing changes and the outcome says what would.
    pub fn import_image(
        &self,
        pool_name: &str,
        name: &str,
        file: &ImageFile,
        disks: &DiskUse,
        dry_run: bool,
    ) -> Result<ImportOutcome> {
        let pool = self.pool(pool_name)?;
        let path = format!("{}/{name}", self.pool_path(pool_name)?);
        let base = BaseImage { path: path.clone(), format: "qcow2".into(), capacity: file.capacity };
        // The second of two runs (or VMs of one run) waits for the first's upload, then finds it.
        let policy = LockPolicy { wait: Duration::from_secs(3600), ..LockPolicy::default() };
        let lock = if dry_run { None } else { Some(self.lock_import(pool_name, name, &policy)?) };
        let temp_name = format!("{name}{UPLOAD_SUFFIX}");
        let record_name = format!("{name}{RECORD_SUFFIX}");
        let temp = self.volume_in(&pool, pool_name, &temp_name)?;
        let record_volume = self.volume_in(&pool, pool_name, &record_name)?;
        let record = record_volume.as_ref().and_then(|v| self.read_record(v, &record_name));
        if let Some(existing) = self.volume_in(&pool, pool_name, name)? {
            let xml = existing.xml_desc(0).doing(|| format!("reading volume {path}"))?;
            let found = VolumeXml::parse(&xml, name)?;
            let same = record.as_ref().filter(|r| (r.length, &r.fingerprint) == (file.length, &file.fingerprint));
            match same {
                Some(r) if r.modified.is_none() || r.modified == found.modified => {
                    if let (Some(temp), false) = (temp, dry_run) {
                        // A run killed after its record, before its tidying up.
                        temp.delete(0).doing(|| format!("deleting the leftover upload {temp_name}"))?;
                    }
                    return Ok(ImportOutcome { base: BaseImage { capacity: found.capacity, ..base }, uploaded: false });
                }
                Some(_) => {
                    return Err(Error::Refused(format!(
                        "volume {path} was imported from this file's content but has changed since: it is no longer that image \
                         (delete it to import the file again, or name another volume with image)"
                    )))
                }
                None if temp.is_none() || record.is_some() => {
                    let holds = match &record {
                        Some(other) => format!("was imported from another file ({}, {} bytes)", other.source, other.length),
                        None => "exists and was not imported from this file".to_string(),
                    };
                    return Err(Error::Refused(format!(
                        "volume {path} {holds}: name another volume with image, or give image alone to use that one"
                    )));
                }
                None => {
                    // A run killed between the copy and its record: the volume may be incomplete.
                    let standing = disks.dependants(&path);
                    if !standing.is_empty() {
                        return Err(Error::Refused(format!(
                            "volume {path} is an unfinished import, yet {} stand on it: delete them and it by hand",
                            standing.join(", ")
                        )));
                    }
                    if !dry_run {
                        existing.delete(0).doing(|| format!("deleting the unfinished import {path}"))?;
                    }
                }
            }
        }
        if dry_run {
            return Ok(ImportOutcome { base, uploaded: true });
        }
        for leftover in [temp, record_volume].into_iter().flatten() {
            leftover.delete(0).doing(|| format!("deleting what an earlier import of {name} left"))?;
        }
        let temp = self.upload_file(&pool, pool_name, &temp_name, file)?;
        // A run that took the lock over from this one (too slow, judged stale) replaced the upload
        // of that name with its own, unfinished: it must not be copied.
        let still_held = lock.as_ref().is_none_or(|lock| lock.is_held());
        let copied = if still_held {
            self.copy_into(&pool, name, &temp, file)
        } else {
            Err(Error::Refused(format!("another run took over the import of {name}: this one gives up")))
        };
        let imported = copied.and_then(|volume| {
            let xml = volume.xml_desc(0).doing(|| format!("reading volume {path}"))?;
            let modified = VolumeXml::parse(&xml, name)?.modified;
            let text = serde_json::to_string(&file.record(modified))
                .map_err(|e| Error::Refused(format!("writing the record of {name}: {e}")))?;
            self.put_volume(pool_name, &record_name, text.as_bytes()).inspect_err(|_| {
                // Without its record the volume would be taken for someone else's.
                let _ = volume.delete(0);
            })
        });
        let tidied =
            if still_held { temp.delete(0).doing(|| format!("deleting the upload {temp_name}")) } else { Ok(()) };
        imported?;
        tidied?;
        Ok(ImportOutcome { base, uploaded: true })
    }

    /// The record in `volume`, if it holds one.
    fn read_record(&self, volume: &StorageVol, name: &str) -> Option<Record> {
        let text = download(self.raw(), volume, name, MAX_RECORD_BYTES).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Uploads `file` into the new raw volume `name` and has the pool look at what it holds.
    fn upload_file(
        &self,
        pool: &virt::storage_pool::StoragePool,
        pool_name: &str,
        name: &str,
        file: &ImageFile,
    ) -> Result<StorageVol> {
        let xml = volume_xml(name, file.length, "raw", None)?;
        let volume = StorageVol::create_xml(pool, &xml, 0).doing(|| format!("creating volume {name}"))?;
        let source = File::open(&file.path).map_err(|e| Error::Refused(format!("{}: {e}", file.path)));
        let uploaded = source.and_then(|source| self.upload(&volume, name, source, file.length)).and_then(|()| {
            // libvirt probes the format of what was uploaded when the pool is refreshed: it must
            // be what the file was taken for here, or the copy would read it as something else.
            refresh_pool(pool, pool_name)?;
            let volume = self
                .volume_in(pool, pool_name, name)?
                .ok_or_else(|| Error::NotFound { kind: "uploaded volume", name: name.to_string() })?;
            let xml = volume.xml_desc(0).doing(|| format!("reading volume {name}"))?;
            let seen = VolumeXml::parse(&xml, name)?;
            if seen.format != file.format {
                return Err(Error::Refused(format!(
                    "libvirt reads the uploaded {} as {}, not {}",
                    file.path, seen.format, file.format
                )));
            }
            Ok(volume)
        });
        uploaded.inspect_err(|_| {
            let _ = volume.delete(0);
        })
    }

    /// Copies the uploaded `temp` into the new qcow2 volume `name` (converting a raw one).
    fn copy_into(
        &self,
        pool: &virt::storage_pool::StoragePool,
        name: &str,
        temp: &StorageVol,
        file: &ImageFile,
    ) -> Result<StorageVol> {
        let xml = volume_xml(name, file.capacity, "qcow2", None)?;
        StorageVol::create_xml_from(pool, &xml, temp, 0)
            .doing(|| format!("copying the upload of {} into {name}", file.path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qcow2_and_raw_are_told_from_archives_overlays_and_other_files() {
        let mut qcow2 = vec![0u8; 512];
        qcow2[0..4].copy_from_slice(b"QFI\xfb");
        qcow2[4..8].copy_from_slice(&3u32.to_be_bytes());
        qcow2[24..32].copy_from_slice(&(8u64 << 20).to_be_bytes());
        assert_eq!(probe(&qcow2, 393_216), Ok(("qcow2", 8 << 20)));
        let mut overlay = qcow2.clone();
        overlay[8..16].copy_from_slice(&0x200u64.to_be_bytes());
        assert!(probe(&overlay, 393_216).unwrap_err().contains("overlay"));
        let mut external = qcow2.clone();
        external[72..80].copy_from_slice(&4u64.to_be_bytes());
        assert!(probe(&external, 393_216).unwrap_err().contains("another file"));
        assert_eq!(probe(&[0u8; 512], 4 << 20), Ok(("raw", 4 << 20)));
        assert!(probe(b"\xfd7zXZ\x00rest", 4 << 20).unwrap_err().contains("xz archive"));
        assert!(probe(b"KDMV", 4 << 20).unwrap_err().contains("VMDK"));
        assert!(probe(b"#cloud-config\n", 14).unwrap_err().contains("not a disk image"));
        assert!(probe(b"", 0).is_err(), "empty");
    }

    #[test]
    fn a_record_reads_back() {
        let file = ImageFile {
            path: "/images/debian 12.qcow2".into(),
            format: "qcow2",
            length: 5,
            capacity: 8 << 20,
            fingerprint: "00ff".into(),
        };
        let text = serde_json::to_string(&file.record(Some(1_700_000_000))).unwrap();
        let read: Record = serde_json::from_str(&text).unwrap();
        assert_eq!((read.source.as_str(), read.length, read.modified), ("debian 12.qcow2", 5, Some(1_700_000_000)));
    }
}
