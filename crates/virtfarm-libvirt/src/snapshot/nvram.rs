//! A UEFI guest's NVRAM (its firmware's variables: boot entries, Secure Boot keys) goes back
//! with its disks: an external snapshot keeps a copy of the file beside it
//! ([`crate::naming::nvram_copy_name`]), a revert writes the copy back, deleting the snapshot
//! or undefining the domain deletes the copy. A domain that had no NVRAM file when the snapshot
//! was taken (never started) gets no copy, and its revert leaves the file as it is.
//!
//! Through the storage API, so that it works over any URI. libvirt's NVRAM directory belongs
//! to no storage pool unless the host's administrator made one: then a transient pool is
//! started over it (it goes when libvirtd restarts, and is started again when needed).

use serde::Serialize;
use virt::storage_pool::StoragePool;
use virt::storage_vol::StorageVol;

use super::qcow2::read_bytes;
use crate::connection::Hypervisor;
use crate::domain_facts::DomainFacts;
use crate::error::{Doing, Error, Result};
use crate::naming::nvram_copy_name;
use crate::storage::{refresh_pool, volume_xml};
use crate::vm::Vm;

/// libvirt's NVRAM directory for qemu:///system domains, where it makes `<name>_VARS.fd`.
/// libvirt 9.0 names that file in the domain XML only while the domain runs.
const SYSTEM_NVRAM_DIR: &str = "/var/lib/libvirt/qemu/nvram";

/// The transient pool started over an NVRAM directory that no pool covers.
const POOL_NAME: &str = "virtfarm-nvram";

/// The NVRAM file of a domain with pflash firmware: its directory's pool and its file name.
pub(crate) struct Nvram {
    pool: StoragePool,
    dir: String,
    file: String,
}

impl Nvram {
    /// The NVRAM of `vm`; `None` when it has no pflash firmware, or when its file cannot be
    /// known (a session URI's domain while it is off).
    pub(crate) fn of(hv: &Hypervisor, vm: &Vm) -> Result<Option<Nvram>> {
        let live = DomainFacts::parse(&vm.xml(false)?)?;
        if !live.has_pflash {
            return Ok(None);
        }
        let (path, named) = match live.nvram.or(vm.facts()?.nvram) {
            Some(path) => (path, true),
            None if hv.uri().ends_with("/system") => (format!("{SYSTEM_NVRAM_DIR}/{}_VARS.fd", vm.name()), false),
            None => return Ok(None),
        };
        let Some((dir, file)) = path.rsplit_once('/') else { return Ok(None) };
        let dir = if dir.is_empty() { "/" } else { dir };
        let pool = match pool_over(hv, dir) {
            Ok(pool) => pool,
            // No pool can be started over a directory libvirt has not made yet: no NVRAM file
            // exists, as the domain's XML names none.
            Err(_) if !named => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(Some(Nvram { pool, dir: dir.to_string(), file: file.to_string() }))
    }

    fn volume(&self, name: &str) -> Result<Option<StorageVol>> {
        match self.pool.lookup_storage_vol_by_name(name) {
            Ok(volume) => Ok(Some(volume)),
            Err(e) if e.code().is(virt::error::ErrorNumber::NoStorageVolume) => Ok(None),
            Err(e) => Err(e).doing(|| format!("looking up {name} in {}", self.dir)),
        }
    }

    /// Copies the NVRAM file for snapshot `snapshot`, replacing a copy a killed run left;
    /// false when there is no file yet (the domain never started).
    pub(crate) fn save(&self, snapshot: &str) -> Result<bool> {
        let Some(nvram) = self.volume(&self.file)? else { return Ok(false) };
        let copy = nvram_copy_name(&self.file, snapshot);
        if let Some(stale) = self.volume(&copy)? {
            stale.delete(0).doing(|| format!("deleting {copy}, left by a killed run"))?;
        }
        let size = nvram.info().doing(|| format!("reading {}", self.file))?.capacity;
        let xml = volume_xml(&copy, size, "raw", None)?;
        StorageVol::create_xml_from(&self.pool, &xml, &nvram, 0)
            .doing(|| format!("copying {} to {copy} in {}", self.file, self.dir))?;
        Ok(true)
    }

    /// Writes snapshot `snapshot`'s copy back into the NVRAM file (the domain must be off);
    /// false when the snapshot has no copy.
    pub(crate) fn restore(&self, hv: &Hypervisor, snapshot: &str) -> Result<bool> {
        let copy_name = nvram_copy_name(&self.file, snapshot);
        let Some(copy) = self.volume(&copy_name)? else { return Ok(false) };
        let size = copy.info().doing(|| format!("reading {copy_name}"))?.capacity;
        let content = read_bytes(hv.raw(), &copy, &copy_name, 0, size)?;
        if content.len() as u64 != size {
            return Err(Error::Refused(format!("{copy_name} could not be read whole; {} is left as it is", self.file)));
        }
        match self.volume(&self.file)? {
            Some(nvram) => hv.upload(&nvram, &self.file, content.as_slice(), size),
            None => StorageVol::create_xml_from(&self.pool, &volume_xml(&self.file, size, "raw", None)?, &copy, 0)
                .map(drop)
                .doing(|| format!("making {} from {copy_name}", self.file)),
        }?;
        Ok(true)
    }

    /// Deletes snapshot `snapshot`'s copy, if there is one.
    pub(crate) fn forget(&self, snapshot: &str) -> Result<()> {
        let copy = nvram_copy_name(&self.file, snapshot);
        match self.volume(&copy)? {
            Some(volume) => volume.delete(0).doing(|| format!("deleting {copy}")),
            None => Ok(()),
        }
    }

    /// Deletes the copies of every snapshot, for a domain being undefined.
    pub(crate) fn forget_all(&self) -> Result<()> {
        let prefix = format!("{}.", self.file);
        for volume in self.pool.list_all_volumes(0).doing(|| format!("listing {}", self.dir))? {
            let name = volume.name().doing(|| format!("listing {}", self.dir))?;
            if name.starts_with(&prefix) && name.ends_with(".snapshot") {
                volume.delete(0).doing(|| format!("deleting {name}"))?;
            }
        }
        Ok(())
    }
}

#[derive(Serialize)]
#[serde(rename = "pool")]
struct NewPool<'a> {
    #[serde(rename = "@type")]
    kind: &'static str,
    name: &'static str,
    target: NewPoolTarget<'a>,
}

#[derive(Serialize)]
struct NewPoolTarget<'a> {
    path: &'a str,
}

/// The pool over `dir`, refreshed: the one that covers it, or the transient one started here.
fn pool_over(hv: &Hypervisor, dir: &str) -> Result<StoragePool> {
    let conn = hv.raw();
    let pool = match conn.lookup_storage_pool_by_target_path(dir) {
        Ok(pool) => pool,
        Err(_) => {
            let xml = quick_xml::se::to_string(&NewPool {
                kind: "dir",
                name: POOL_NAME,
                target: NewPoolTarget { path: dir },
            })
            .map_err(|e| Error::Xml { doing: format!("describing a pool over {dir}"), message: e.to_string() })?;
            match conn.create_storage_pool_xml(&xml, 0) {
                Ok(pool) => pool,
                // Another run started it meanwhile; or a pool of that name covers another directory.
                Err(e) => conn
                    .lookup_storage_pool_by_target_path(dir)
                    .map_err(|_| e)
                    .doing(|| format!("starting the storage pool {POOL_NAME} over the NVRAM directory {dir}"))?,
            }
        }
    };
    refresh_pool(&pool, dir)?;
    Ok(pool)
}
