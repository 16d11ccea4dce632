//! What a qcow2 image holds, read from its header through libvirt's storage streams (so it
//! works on remote URIs and no `qemu-img` runs): the internal snapshots inside it, whether
//! libvirt lists them or not, and whether it maps any cluster at all.
//!
//! The fields of the header that versions 2 and 3 share are read (all big-endian): `version`
//! at 4, `backing_file_offset` at 8, `size` at 24, `crypt_method` at 32, `l1_size` at 36,
//! `l1_table_offset` at 40, `nb_snapshots` at 60, `snapshots_offset` at 64; and version 3's
//! `incompatible_features` at 72.
//! A snapshot table entry is 40 fixed bytes (its `id_str_size` at 12, `name_size` at 14 and
//! `extra_data_size` at 36), then the extra data, the id and the name, padded to 8 bytes.

use std::time::{Duration, Instant};

use virt::connect::Connect;
use virt::error::ErrorNumber;
use virt::storage_vol::StorageVol;
use virt::stream::Stream;

use super::chain::volume_at;
use crate::connection::Hypervisor;
use crate::error::{Doing, Error, Result};
use crate::wait;

const MAGIC: u64 = 0x5146_49fb;
const HEADER_BYTES: u64 = 80;
/// The longest L1 table read to tell whether an image is empty; a larger one is taken for
/// not empty.
const MAX_L1_BYTES: u64 = 32 << 20;
/// The largest snapshot table read; QEMU itself refuses tables above 64 MiB, and real ones
/// take a few hundred bytes per snapshot.
const MAX_TABLE_BYTES: u64 = 8 << 20;
/// How long a volume that libvirtd is still creating is waited for.
const BUILD_WAIT: Duration = Duration::from_secs(300);

/// The header fields this module and image imports need.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Header {
    /// Where the backing file's name is; 0 for an image that stands alone.
    pub(crate) backing_offset: u64,
    /// Virtual size in bytes.
    pub(crate) size: u64,
    /// 0 unless the image is encrypted.
    pub(crate) crypt_method: u64,
    /// Version 3's incompatible feature bits (bit 2: the data lives in an external file); 0 for version 2.
    pub(crate) incompatible: u64,
    l1_entries: u64,
    l1_offset: u64,
    snapshots: u64,
    snapshots_offset: u64,
}

fn be(bytes: &[u8], at: usize, len: usize) -> Option<u64> {
    bytes.get(at..at + len).map(|b| b.iter().fold(0u64, |n, byte| n << 8 | u64::from(*byte)))
}

/// The header, or `None` when the bytes are not a qcow2 header (a raw image, say).
pub(crate) fn parse_header(bytes: &[u8]) -> Option<Header> {
    if be(bytes, 0, 4)? != MAGIC {
        return None;
    }
    let version = be(bytes, 4, 4)?;
    Some(Header {
        backing_offset: be(bytes, 8, 8)?,
        size: be(bytes, 24, 8)?,
        crypt_method: be(bytes, 32, 4)?,
        incompatible: if version >= 3 { be(bytes, 72, 8).unwrap_or(0) } else { 0 },
        l1_entries: be(bytes, 36, 4)?,
        l1_offset: be(bytes, 40, 8)?,
        snapshots: be(bytes, 60, 4)?,
        snapshots_offset: be(bytes, 64, 8)?,
    })
}

/// The names in a snapshot table of `count` entries; `None` when `table` ends before them.
fn parse_names(table: &[u8], count: u64) -> Option<Vec<String>> {
    let mut names = Vec::new();
    let mut at = 0usize;
    for _ in 0..count {
        let id_len = be(table, at + 12, 2)? as usize;
        let name_len = be(table, at + 14, 2)? as usize;
        let extra_len = be(table, at + 36, 4)? as usize;
        let name_at = at + 40 + extra_len + id_len;
        let name = table.get(name_at..name_at + name_len)?;
        names.push(String::from_utf8_lossy(name).into_owned());
        at = (name_at + name_len).div_ceil(8) * 8;
    }
    Some(names)
}

/// Up to `length` bytes of the image file at `offset`.
pub(crate) fn read_bytes(conn: &Connect, volume: &StorageVol, path: &str, offset: u64, length: u64) -> Result<Vec<u8>> {
    let doing = || format!("reading the qcow2 metadata of {path}");
    let stream = Stream::new(conn, 0).doing(doing)?;
    // libvirtd goes on creating a volume for a client killed meanwhile (a killed run of ours):
    // it cannot be read until that ends, which takes as long as writing the image.
    let until = wait::deadline(BUILD_WAIT);
    loop {
        match volume.download(&stream, offset, length, 0) {
            Err(e)
                if e.code().is(ErrorNumber::OperationInvalid)
                    && e.message().contains("being allocated")
                    && Instant::now() < until =>
            {
                std::thread::sleep(Duration::from_millis(250));
            }
            started => break started.map(drop).doing(doing)?,
        }
    }
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

fn header_of(conn: &Connect, volume: &StorageVol, path: &str) -> Result<Option<Header>> {
    Ok(parse_header(&read_bytes(conn, volume, path, 0, HEADER_BYTES)?))
}

/// The names of the internal snapshots inside the image at `path` (in a storage pool), in the
/// image's order; empty for an image that is not qcow2. Names may repeat: qcow2 allows it.
pub(crate) fn internal_snapshots_at(conn: &Connect, path: &str) -> Result<Vec<String>> {
    let volume = volume_at(conn, path)?;
    let Some(header) = header_of(conn, &volume, path)? else { return Ok(Vec::new()) };
    if header.snapshots == 0 {
        return Ok(Vec::new());
    }
    let mut length = (header.snapshots * 256).clamp(4096, MAX_TABLE_BYTES);
    loop {
        let table = read_bytes(conn, &volume, path, header.snapshots_offset, length)?;
        if let Some(names) = parse_names(&table, header.snapshots) {
            return Ok(names);
        }
        if length >= MAX_TABLE_BYTES || (table.len() as u64) < length {
            return Err(Error::Refused(format!(
                "the snapshot table of {path} ({} snapshots) could not be read whole",
                header.snapshots
            )));
        }
        length = (length * 4).min(MAX_TABLE_BYTES);
    }
}

impl Hypervisor {
    /// The names of the internal snapshots inside the qcow2 image at `path` (a volume of one
    /// of this hypervisor's pools), whether libvirt lists them or not; empty for other formats.
    pub fn internal_snapshots_in(&self, path: &str) -> Result<Vec<String>> {
        internal_snapshots_at(self.raw(), path)
    }
}

/// True when the qcow2 image at `path` maps no cluster (its L1 table is all zeros) and has no
/// internal snapshot, so every read falls through to its backing file.
pub(crate) fn is_empty_overlay(conn: &Connect, path: &str) -> Result<bool> {
    let volume = volume_at(conn, path)?;
    let Some(header) = header_of(conn, &volume, path)? else { return Ok(false) };
    let l1_bytes = header.l1_entries * 8;
    if header.snapshots != 0 || l1_bytes > MAX_L1_BYTES {
        return Ok(false);
    }
    let l1 = read_bytes(conn, &volume, path, header.l1_offset, l1_bytes)?;
    Ok(l1.len() as u64 == l1_bytes && l1.iter().all(|byte| *byte == 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One snapshot table entry as QEMU writes it: 40 fixed bytes, extra data, id, name, padding.
    fn entry(id: &str, name: &str, extra: usize) -> Vec<u8> {
        let mut bytes = vec![0u8; 40];
        bytes[12..14].copy_from_slice(&(id.len() as u16).to_be_bytes());
        bytes[14..16].copy_from_slice(&(name.len() as u16).to_be_bytes());
        bytes[36..40].copy_from_slice(&(extra as u32).to_be_bytes());
        bytes.extend(std::iter::repeat_n(0xee, extra));
        bytes.extend_from_slice(id.as_bytes());
        bytes.extend_from_slice(name.as_bytes());
        bytes.resize(bytes.len().div_ceil(8) * 8, 0);
        bytes
    }

    #[test]
    fn reads_the_names_of_a_snapshot_table() {
        let table = [entry("1", "i1", 24), entry("2", "sq.clean", 16), entry("3", "i1", 0)].concat();
        assert_eq!(parse_names(&table, 3).unwrap(), ["i1", "sq.clean", "i1"]);
        assert_eq!(parse_names(&table, 0).unwrap(), Vec::<String>::new());
        assert_eq!(parse_names(&table[..table.len() - 8], 3), None, "a cut table asks for more");
    }

    #[test]
    fn reads_the_header_fields_and_tells_other_formats_apart() {
        let mut header = vec![0u8; 72];
        header[0..4].copy_from_slice(&0x5146_49fbu32.to_be_bytes());
        header[36..40].copy_from_slice(&8u32.to_be_bytes());
        header[40..48].copy_from_slice(&0x3_0000u64.to_be_bytes());
        header[60..64].copy_from_slice(&2u32.to_be_bytes());
        header[64..72].copy_from_slice(&0x5_0000u64.to_be_bytes());
        header[24..32].copy_from_slice(&(8u64 << 20).to_be_bytes());
        let parsed = parse_header(&header).unwrap();
        let fields = Header {
            l1_entries: 8,
            l1_offset: 0x3_0000,
            snapshots: 2,
            snapshots_offset: 0x5_0000,
            ..Header::default()
        };
        assert_eq!(parsed, Header { size: 8 << 20, ..fields });
        header[4..8].copy_from_slice(&3u32.to_be_bytes());
        header[8..16].copy_from_slice(&0x200u64.to_be_bytes());
        header.extend_from_slice(&4u64.to_be_bytes());
        let v3 = parse_header(&header).unwrap();
        assert_eq!((v3.backing_offset, v3.incompatible), (0x200, 4), "a backing file and an external data file");
        assert_eq!(parse_header(&[0u8; 72]), None, "raw");
        assert_eq!(parse_header(&header[..60]), None, "short");
    }
}
