//! Image chains through libvirt's storage API: overlays, backing files, who depends on whom.
//!
//! Everything goes through storage pools so that it works on remote URIs too; an image
//! outside every pool is refused rather than touched behind libvirt's back.

use std::collections::HashSet;

use serde::Serialize;
use virt::connect::Connect;
use virt::storage_pool::StoragePool;
use virt::storage_vol::StorageVol;

use super::xml::serialise;
use crate::error::{Doing, Result};
use crate::storage::VolumeXml;

/// The volume holding `path`, refreshing its pool once: files that QEMU created for a
/// snapshot are in no pool's list until the pool is refreshed.
pub(crate) fn volume_at(conn: &Connect, path: &str) -> Result<StorageVol> {
    if let Ok(volume) = conn.lookup_storage_vol_by_path(path) {
        return Ok(volume);
    }
    let dir = std::path::Path::new(path).parent().and_then(|d| d.to_str()).unwrap_or("/");
    if let Ok(pool) = conn.lookup_storage_pool_by_target_path(dir) {
        let _ = pool.refresh(0);
    }
    conn.lookup_storage_vol_by_path(path)
        .doing(|| format!("finding the image {path} in a storage pool (images outside pools are left alone)"))
}

/// Reads the image at `path`.
pub(crate) fn image_at(conn: &Connect, path: &str) -> Result<VolumeXml> {
    let xml = volume_at(conn, path)?.xml_desc(0).doing(|| format!("reading the volume {path}"))?;
    VolumeXml::parse(&xml, path)
}

#[derive(Serialize)]
#[serde(rename = "volume")]
struct NewVolume<'a> {
    name: &'a str,
    capacity: Capacity,
    target: NewTarget,
    #[serde(rename = "backingStore")]
    backing: NewBacking<'a>,
}

#[derive(Serialize)]
struct Capacity {
    #[serde(rename = "@unit")]
    unit: &'static str,
    #[serde(rename = "$text")]
    bytes: u64,
}

#[derive(Serialize)]
struct NewTarget {
    format: Format,
}

#[derive(Serialize)]
struct NewBacking<'a> {
    path: &'a str,
    format: Format,
}

#[derive(Serialize)]
struct Format {
    #[serde(rename = "@type")]
    kind: String,
}

/// Creates an empty qcow2 overlay called `name` on top of `backing`, in the backing file's
/// pool; returns its path. The backing file is only read from then on.
pub(crate) fn create_overlay(conn: &Connect, backing: &str, name: &str) -> Result<String> {
    let base = volume_at(conn, backing)?;
    let image = VolumeXml::parse(&base.xml_desc(0).doing(|| format!("reading the volume {backing}"))?, backing)?;
    let pool = base.lookup_storage_pool().doing(|| format!("finding the pool of {backing}"))?;
    let xml = serialise(&NewVolume {
        name,
        capacity: Capacity { unit: "bytes", bytes: image.capacity },
        target: NewTarget { format: Format { kind: "qcow2".to_string() } },
        backing: NewBacking { path: backing, format: Format { kind: image.format } },
    })?;
    let volume =
        StorageVol::create_xml(&pool, &xml, 0).doing(|| format!("creating the overlay {name} on {backing}"))?;
    volume.path().doing(|| format!("reading the path of {name}"))
}

/// Deletes the image at `path` from its pool.
pub(crate) fn delete_image(conn: &Connect, path: &str) -> Result<()> {
    volume_at(conn, path)?.delete(0).doing(|| format!("deleting the image {path}"))
}

/// Every image, in any active pool, whose backing file is `path`.
pub(crate) fn dependants(conn: &Connect, path: &str) -> Result<Vec<String>> {
    let pools = conn
        .list_all_storage_pools(virt::sys::VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE)
        .doing(|| "listing storage pools".to_string())?;
    let mut found = Vec::new();
    for pool in pools {
        for volume in pool_volumes(&pool)? {
            let Ok(xml) = volume.xml_desc(0) else { continue };
            if VolumeXml::parse(&xml, "in a pool")?.backing.as_deref() == Some(path) {
                found.push(volume.path().doing(|| "reading a volume path".to_string())?);
            }
        }
    }
    Ok(found)
}

fn pool_volumes(pool: &StoragePool) -> Result<Vec<StorageVol>> {
    let name = pool.name().unwrap_or_default();
    let _ = pool.refresh(0);
    pool.list_all_volumes(0).doing(|| format!("listing the volumes of pool {name}"))
}

/// Deletes `top` and then its backing files, downwards, as long as each is neither in
/// `keep` nor the backing file of another image; returns the deleted paths.
pub(crate) fn prune_dangling(conn: &Connect, top: &str, keep: &HashSet<String>) -> Result<Vec<String>> {
    let mut deleted = Vec::new();
    let mut next = Some(top.to_string());
    while let Some(path) = next {
        // A file already gone (pruned by an earlier revert) ends the walk.
        if keep.contains(&path) || volume_at(conn, &path).is_err() || !dependants(conn, &path)?.is_empty() {
            break;
        }
        next = image_at(conn, &path)?.backing;
        delete_image(conn, &path)?;
        deleted.push(path);
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_volume_and_writes_an_overlay_request() {
        let xml = r#"<volume type='file'><name>web1.qcow2</name><key>/p/web1.qcow2</key>
          <capacity unit='bytes'>4294967296</capacity><allocation unit='bytes'>200704</allocation>
          <target><path>/p/web1.qcow2</path><format type='qcow2'/></target>
          <backingStore><path>/images/base.qcow2</path><format type='qcow2'/></backingStore></volume>"#;
        let image = VolumeXml::parse(xml, "test").unwrap();
        assert_eq!((image.capacity, image.format.as_str()), (4_294_967_296, "qcow2"));
        assert_eq!(image.backing.as_deref(), Some("/images/base.qcow2"));
        let request = serialise(&NewVolume {
            name: "web1-vda.s1.qcow2",
            capacity: Capacity { unit: "bytes", bytes: 1024 },
            target: NewTarget { format: Format { kind: "qcow2".into() } },
            backing: NewBacking { path: "/p/a&b", format: Format { kind: "raw".into() } },
        })
        .unwrap();
        assert_eq!(
            request,
            r#"<volume><name>web1-vda.s1.qcow2</name><capacity unit="bytes">1024</capacity><target><format type="qcow2"/></target><backingStore><path>/p/a&amp;b</path><format type="raw"/></backingStore></volume>"#
        );
    }
}
