//! Disks through libvirt's storage API, so the same calls work on a local or a remote URI:
//! base images, linked clones (qcow2 with a backing store), uploaded files, deletion.

use std::io::{Cursor, Read};

use quick_xml::Writer;
use serde::Deserialize;
use virt::storage_pool::StoragePool;
use virt::storage_vol::StorageVol;
use virt::stream::Stream;

use crate::connection::Hypervisor;
use crate::domain_xml::text_element;
use crate::error::{Doing, Error, Result};

/// A volume that disks are cloned from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BaseImage {
    /// Path on the hypervisor.
    pub path: String,
    /// Its format (`qcow2`, `raw`): the backing format of the clones.
    pub format: String,
    /// Virtual size in bytes.
    pub capacity: u64,
}

/// How a guest's disk is made from its base image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloneMode {
    /// A qcow2 overlay whose backing store is the base: instant, shares the base's blocks.
    Linked,
    /// A full, independent copy.
    Full,
}

/// What [`Hypervisor::ensure_clone`] did, or would do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloneOutcome {
    /// Path of the guest's disk.
    pub path: String,
    /// The volume did not exist and was (or would be) created.
    pub created: bool,
}

/// What a storage volume's XML says about its image.
pub(crate) struct VolumeXml {
    /// Capacity in bytes.
    pub(crate) capacity: u64,
    /// Path of the image file.
    pub(crate) path: Option<String>,
    /// Image format, `raw` when the XML names none.
    pub(crate) format: String,
    /// Path of the backing image, for an overlay.
    pub(crate) backing: Option<String>,
    /// The file's modification time in whole seconds, when the pool reports it.
    pub(crate) modified: Option<i64>,
}

#[derive(Deserialize)]
struct RawVolume {
    #[serde(default)]
    capacity: u64,
    #[serde(default)]
    target: Option<RawVolumeTarget>,
    #[serde(rename = "backingStore", default)]
    backing: Option<RawVolumeTarget>,
}

#[derive(Deserialize)]
struct RawVolumeTarget {
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    format: Option<RawFormat>,
    #[serde(default)]
    timestamps: Option<RawTimestamps>,
}

#[derive(Deserialize)]
struct RawTimestamps {
    /// Seconds with a fraction: `1700000000.123456`.
    mtime: Option<String>,
}

#[derive(Deserialize)]
struct RawFormat {
    #[serde(rename = "@type")]
    kind: String,
}

impl VolumeXml {
    /// Reads a volume's XML; `what` names the volume in errors.
    pub(crate) fn parse(xml: &str, what: &str) -> Result<VolumeXml> {
        let raw: RawVolume = quick_xml::de::from_str(xml)
            .map_err(|e| Error::Xml { doing: format!("reading the volume {what}"), message: e.to_string() })?;
        let (path, format, timestamps) = raw.target.map_or((None, None, None), |t| (t.path, t.format, t.timestamps));
        let modified = timestamps.and_then(|t| t.mtime?.split('.').next()?.parse().ok());
        Ok(VolumeXml {
            capacity: raw.capacity,
            path,
            format: format.map_or_else(|| "raw".to_string(), |f| f.kind),
            backing: raw.backing.and_then(|b| b.path),
            modified,
        })
    }
}

impl Hypervisor {
    pub(crate) fn pool(&self, name: &str) -> Result<StoragePool> {
        match self.raw().lookup_storage_pool_by_name(name) {
            Ok(pool) => Ok(pool),
            Err(e) if e.code().is(virt::error::ErrorNumber::NoStoragePool) => {
                Err(Error::NotFound { kind: "storage pool", name: name.to_string() })
            }
            Err(e) => Err(e).doing(|| format!("looking up storage pool {name}")),
        }
    }

    pub(crate) fn volume_in(&self, pool: &StoragePool, pool_name: &str, name: &str) -> Result<Option<StorageVol>> {
        match pool.lookup_storage_vol_by_name(name) {
            Ok(volume) => Ok(Some(volume)),
            Err(e) if e.code().is(virt::error::ErrorNumber::NoStorageVolume) => Ok(None),
            Err(e) => Err(e).doing(|| format!("looking up volume {name} in pool {pool_name}")),
        }
    }

    /// The target directory of a pool (where its volumes live, for `dir` pools).
    pub fn pool_path(&self, pool_name: &str) -> Result<String> {
        #[derive(Deserialize)]
        struct RawPool {
            target: RawPoolTarget,
        }
        #[derive(Deserialize)]
        struct RawPoolTarget {
            path: String,
        }
        let xml = self.pool(pool_name)?.xml_desc(0).doing(|| format!("reading storage pool {pool_name}"))?;
        let raw: RawPool = quick_xml::de::from_str(&xml)
            .map_err(|e| Error::Xml { doing: format!("reading storage pool {pool_name}"), message: e.to_string() })?;
        Ok(raw.target.path)
    }

    /// Finds a base image: a path known to libvirt, or a volume name in `pool` (or in any pool).
    pub fn base_image(&self, image: &str, pool: Option<&str>) -> Result<BaseImage> {
        let volume = if image.starts_with('/') {
            self.raw().lookup_storage_vol_by_path(image).map_err(|_| {
                Error::Refused(format!(
                    "'{image}' is not a volume of any libvirt storage pool (define a pool over its directory)"
                ))
            })?
        } else {
            let pools = match pool {
                Some(name) => vec![(name.to_string(), self.pool(name)?)],
                None => self.all_pools()?,
            };
            let mut found = None;
            for (name, pool) in &pools {
                if let Some(volume) = self.volume_in(pool, name, image)? {
                    found = Some(volume);
                    break;
                }
            }
            found.ok_or_else(|| Error::NotFound { kind: "base image volume", name: image.to_string() })?
        };
        describe_volume(&volume, image)
    }

    fn all_pools(&self) -> Result<Vec<(String, StoragePool)>> {
        let pools = self
            .raw()
            .list_all_storage_pools(virt::sys::VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE)
            .doing(|| "listing storage pools".to_string())?;
        pools.into_iter().map(|pool| Ok((pool.name().doing(|| "reading a pool name".to_string())?, pool))).collect()
    }

    /// Makes sure `pool` holds the guest disk `name` made from `base`, at least `size` bytes when
    /// it is created now.
    ///
    /// An existing volume is kept (a guest's disk is never recreated) when it is `owned` by the
    /// domain, or is what this call would have made (a linked clone of `base`, or a standalone
    /// image for a full copy: a run killed after the copy and before the definition) and holds
    /// no internal snapshots; anything else, the base image itself first of all, is refused. With `dry_run`, nothing changes
    /// and the outcome says what would.
    #[allow(clippy::too_many_arguments)]
    pub fn ensure_clone(
        &self,
        pool_name: &str,
        name: &str,
        base: &BaseImage,
        size: Option<u64>,
        mode: CloneMode,
        owned: bool,
        dry_run: bool,
    ) -> Result<CloneOutcome> {
        let pool = self.pool(pool_name)?;
        if let Some(volume) = self.volume_in(&pool, pool_name, name)? {
            let xml = volume.xml_desc(0).doing(|| format!("reading volume {name}"))?;
            let found = VolumeXml::parse(&xml, name)?;
            let path = found.path.clone().unwrap_or_default();
            let made_here = match mode {
                CloneMode::Linked => found.backing.as_deref() == Some(base.path.as_str()),
                CloneMode::Full => found.backing.is_none(),
            };
            if path == base.path {
                return Err(Error::Refused(format!(
                    "volume {path} is the base image itself: a VM needs a disk of its own (another name or pool)"
                )));
            }
            if !owned && !made_here {
                return Err(Error::Refused(format!(
                    "volume {path} exists and is not a {} of {}: it is not this VM's disk to take over",
                    if mode == CloneMode::Linked { "linked clone" } else { "copy" },
                    base.path
                )));
            }
            if !owned {
                // A removed domain's snapshots: the new domain's snapshot of one of those names
                // would revert to the old data.
                let stale = self.internal_snapshots_in(&path)?;
                if !stale.is_empty() {
                    return Err(Error::Refused(format!(
                        "volume {path} holds the internal snapshots {stale:?} of a removed domain: it is not \
                         this VM's disk to take over (delete the volume, or use another name or pool)"
                    )));
                }
            }
            return Ok(CloneOutcome { path, created: false });
        }
        let capacity = size.unwrap_or(base.capacity).max(base.capacity);
        let path = format!("{}/{name}", self.pool_path(pool_name)?);
        if !dry_run {
            match mode {
                CloneMode::Linked => {
                    let xml = volume_xml(name, capacity, "qcow2", Some(base))?;
                    StorageVol::create_xml(&pool, &xml, 0)
                        .doing(|| format!("creating the linked clone {name} of {}", base.path))?;
                }
                CloneMode::Full => {
                    let source = self
                        .raw()
                        .lookup_storage_vol_by_path(&base.path)
                        .doing(|| format!("looking up {}", base.path))?;
                    let xml = volume_xml(name, capacity, "qcow2", None)?;
                    StorageVol::create_xml_from(&pool, &xml, &source, 0)
                        .doing(|| format!("copying {} to {name}", base.path))?;
                }
            }
        }
        Ok(CloneOutcome { path, created: true })
    }

    /// Grows the volume at `path` to `size` bytes when it is smaller (volumes only ever grow);
    /// true when it was (or, with `dry_run`, would be) grown.
    pub fn grow_volume(&self, path: &str, size: u64, dry_run: bool) -> Result<bool> {
        let volume = self.raw().lookup_storage_vol_by_path(path).doing(|| format!("looking up volume {path}"))?;
        let capacity = volume.info().doing(|| format!("reading volume {path}"))?.capacity;
        if size <= capacity {
            return Ok(false);
        }
        if !dry_run {
            volume.resize(size, 0).doing(|| format!("growing volume {path} to {size} bytes"))?;
        }
        Ok(true)
    }

    /// Stores `content` as the raw volume `name` in `pool`, replacing an older one; returns its path.
    pub fn put_volume(&self, pool_name: &str, name: &str, content: &[u8]) -> Result<String> {
        let pool = self.pool(pool_name)?;
        if let Some(old) = self.volume_in(&pool, pool_name, name)? {
            old.delete(0).doing(|| format!("deleting the old volume {name}"))?;
        }
        let xml = volume_xml(name, content.len() as u64, "raw", None)?;
        let volume = StorageVol::create_xml(&pool, &xml, 0).doing(|| format!("creating volume {name}"))?;
        self.upload(&volume, name, content, content.len() as u64)?;
        volume.path().doing(|| format!("reading the path of volume {name}"))
    }

    /// Writes the `length` bytes `content` holds into the new raw volume `volume` (named `name`
    /// in messages); fewer is an error.
    pub(crate) fn upload(&self, volume: &StorageVol, name: &str, mut content: impl Read, length: u64) -> Result<()> {
        let stream = Stream::new(self.raw(), 0).doing(|| format!("opening a stream for volume {name}"))?;
        volume.upload(&stream, 0, length, 0).doing(|| format!("starting the upload of {name}"))?;
        let mut buffer = vec![0u8; 1 << 20];
        let mut left = length;
        while left > 0 {
            let want = left.min(buffer.len() as u64) as usize;
            let sent = match content.read(&mut buffer[..want]) {
                Ok(0) => Err(format!("its source ended {left} bytes early")),
                Ok(read) => send_all(&stream, &buffer[..read]).map(|()| read),
                Err(e) => Err(format!("reading its source: {e}")),
            };
            match sent {
                Ok(read) => left -= read as u64,
                Err(why) => {
                    let _ = stream.abort();
                    return Err(Error::Refused(format!("uploading {name}: {why}")));
                }
            }
        }
        stream.finish().doing(|| format!("finishing the upload of {name}"))
    }

    /// Deletes the volume at `path`; true when it existed.
    pub fn delete_volume(&self, path: &str) -> Result<bool> {
        match self.raw().lookup_storage_vol_by_path(path) {
            Ok(volume) => {
                volume.delete(0).doing(|| format!("deleting volume {path}"))?;
                Ok(true)
            }
            Err(e) if e.code().is(virt::error::ErrorNumber::NoStorageVolume) => Ok(false),
            Err(e) => Err(e).doing(|| format!("looking up volume {path}")),
        }
    }

    /// True when `path` is a volume of a storage pool.
    pub fn volume_exists(&self, path: &str) -> Result<bool> {
        match self.raw().lookup_storage_vol_by_path(path) {
            Ok(_) => Ok(true),
            Err(e) if e.code().is(virt::error::ErrorNumber::NoStorageVolume) => Ok(false),
            Err(e) => Err(e).doing(|| format!("looking up volume {path}")),
        }
    }
}

/// Sends all of `bytes` down `stream`.
fn send_all(stream: &Stream, mut bytes: &[u8]) -> std::result::Result<(), String> {
    while !bytes.is_empty() {
        match stream.send(bytes) {
            Ok(n) if n > 0 => bytes = &bytes[n as usize..],
            Ok(_) => return Err("the stream closed early".to_string()),
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(())
}

fn describe_volume(volume: &StorageVol, asked: &str) -> Result<BaseImage> {
    let xml = volume.xml_desc(0).doing(|| format!("reading volume {asked}"))?;
    let described = VolumeXml::parse(&xml, asked)?;
    let path = described
        .path
        .ok_or_else(|| Error::Xml { doing: format!("reading volume {asked}"), message: "no target path".into() })?;
    Ok(BaseImage { path, format: described.format, capacity: described.capacity })
}

/// How long a pool refresh waits for other clients' volume builds in that pool to end.
const POOL_BUSY_WAIT: std::time::Duration = std::time::Duration::from_secs(300);

/// Refreshes `pool` (named `name` in messages), waiting (bounded) while libvirt refuses because
/// another client is building a volume in it: parallel provisioning does that all the time.
pub(crate) fn refresh_pool(pool: &StoragePool, name: &str) -> Result<()> {
    let until = crate::wait::deadline(POOL_BUSY_WAIT);
    loop {
        match pool.refresh(0) {
            Err(e) if e.message().contains("asynchronous jobs running") && std::time::Instant::now() < until => {
                std::thread::sleep(std::time::Duration::from_millis(250));
            }
            done => return done.doing(|| format!("refreshing storage pool {name}")),
        }
    }
}

/// A volume definition; with `backing`, a qcow2 overlay on it.
pub(crate) fn volume_xml(name: &str, capacity: u64, format: &str, backing: Option<&BaseImage>) -> Result<String> {
    let mut writer = Writer::new(Cursor::new(Vec::new()));
    writer
        .create_element("volume")
        .write_inner_content(|w| {
            text_element(w, "name", name)?;
            w.create_element("capacity")
                .with_attribute(("unit", "bytes"))
                .write_text_content(quick_xml::events::BytesText::new(&capacity.to_string()))?;
            w.create_element("target").write_inner_content(|w| {
                w.create_element("format").with_attribute(("type", format)).write_empty()?;
                Ok(())
            })?;
            if let Some(base) = backing {
                w.create_element("backingStore").write_inner_content(|w| {
                    text_element(w, "path", &base.path)?;
                    w.create_element("format").with_attribute(("type", base.format.as_str())).write_empty()?;
                    Ok(())
                })?;
            }
            Ok(())
        })
        .map_err(|e| Error::Xml {
            doing: format!("writing the definition of volume {name}"),
            message: e.to_string(),
        })?;
    String::from_utf8(writer.into_inner().into_inner())
        .map_err(|e| Error::Xml { doing: format!("writing the definition of volume {name}"), message: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linked_clone_definition_names_its_backing_store() {
        let base = BaseImage { path: "/images/base&1.qcow2".into(), format: "qcow2".into(), capacity: 4 << 30 };
        let xml = volume_xml("web1.qcow2", 8 << 30, "qcow2", Some(&base)).unwrap();
        assert!(
            xml.contains("<backingStore><path>/images/base&amp;1.qcow2</path><format type=\"qcow2\"/></backingStore>"),
            "{xml}"
        );
        assert!(xml.contains("<capacity unit=\"bytes\">8589934592</capacity>"), "{xml}");
    }

    #[test]
    fn volume_description_reads_path_and_format() {
        let described = VolumeXml::parse(
            "<volume type='file'><name>b</name><capacity unit='bytes'>5</capacity><target><path>/i/b.qcow2</path><format type='qcow2'/></target></volume>",
            "b",
        )
        .unwrap();
        assert_eq!(described.path.as_deref(), Some("/i/b.qcow2"));
        assert_eq!((described.format.as_str(), described.capacity, described.backing), ("qcow2", 5, None));
        assert_eq!(described.modified, None);
        let timed = "<volume><target><path>/p</path><timestamps><atime>1.5</atime><mtime>1700000000.123456</mtime></timestamps></target></volume>";
        assert_eq!(VolumeXml::parse(timed, "p").unwrap().modified, Some(1_700_000_000));
    }
}
