//! Who stands on which image: the survey behind the rule that no domain ever writes into a
//! file that another volume uses as its backing file or that another domain uses as a disk.
//!
//! A domain's current disk chain (its definition, then each volume's backing store) is the
//! truth: after an external snapshot a disk's top is the snapshot's overlay, and the image the
//! domain was first given is a read-only backing file that must never be written again.

use std::collections::HashMap;

use crate::connection::Hypervisor;
use crate::domain_facts::{Disk, DomainFacts};
use crate::error::{Doing, Error, Result};
use crate::naming::snapshot_overlay_prefix;
use crate::snapshot::domain_disks::repoint_disks;
use crate::storage::VolumeXml;

/// How deep a backing chain is followed before it is taken as broken (a loop, or a hand-made
/// chain no tool would build).
const MAX_CHAIN: usize = 64;

/// One read of a hypervisor: every pool volume's backing file and every domain's disks and MACs.
#[derive(Debug, Default)]
pub struct DiskUse {
    /// Volume path → the path of its backing file.
    backing: HashMap<String, String>,
    /// Image path → the volumes whose backing file it is.
    dependants: HashMap<String, Vec<String>>,
    /// Image path → the domains that have it as a writable disk (its top, not its chain).
    users: HashMap<String, Vec<String>>,
    /// Domain name → the MACs of its NICs.
    macs: Vec<(String, Vec<String>)>,
}

impl Hypervisor {
    /// Reads every active pool (refreshed, so that overlays QEMU created appear) and every
    /// domain's definition once.
    pub fn disk_use(&self) -> Result<DiskUse> {
        let mut survey = DiskUse::default();
        let pools = self
            .raw()
            .list_all_storage_pools(virt::sys::VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE)
            .doing(|| "listing storage pools".to_string())?;
        for pool in pools {
            // A pool that vanished or cannot be refreshed still lists what it had.
            let _ = pool.refresh(0);
            let Ok(volumes) = pool.list_all_volumes(0) else { continue };
            for volume in volumes {
                // A volume deleted between the listing and the read has nothing standing on it.
                let Ok(xml) = volume.xml_desc(0) else { continue };
                let image = VolumeXml::parse(&xml, "in a pool")?;
                if let (Some(path), Some(backing)) = (image.path, image.backing) {
                    survey.add_backing(path, backing);
                }
            }
        }
        for vm in self.all_vms()? {
            // A domain undefined during the survey uses nothing any more.
            let Ok(facts) = vm.facts() else { continue };
            survey.add_domain(&facts);
        }
        Ok(survey)
    }
}

impl DiskUse {
    fn add_backing(&mut self, path: String, backing: String) {
        self.dependants.entry(backing.clone()).or_default().push(path.clone());
        self.backing.insert(path, backing);
    }

    fn add_domain(&mut self, facts: &DomainFacts) {
        for file in facts.disks.iter().filter(|d| d.device == "disk").filter_map(|d| d.file.clone()) {
            self.users.entry(file).or_default().push(facts.name.clone());
        }
        self.macs.push((facts.name.clone(), facts.nics.iter().map(|n| n.mac.clone()).collect()));
    }

    /// The volumes whose backing file is `path`.
    pub fn dependants(&self, path: &str) -> &[String] {
        self.dependants.get(path).map_or(&[], Vec::as_slice)
    }

    /// `path` and its backing files, top first.
    pub fn chain(&self, path: &str) -> Vec<String> {
        let mut chain = vec![path.to_string()];
        while let Some(next) = chain.last().and_then(|last| self.backing.get(last)) {
            if chain.len() >= MAX_CHAIN || chain.contains(next) {
                break;
            }
            chain.push(next.clone());
        }
        chain
    }

    /// Domains other than `domain` that have `path` as a disk.
    pub fn other_users<'a>(&'a self, path: &str, domain: &'a str) -> impl Iterator<Item = &'a str> {
        self.users.get(path).into_iter().flatten().map(String::as_str).filter(move |user| *user != domain)
    }

    /// The first domain other than `domain` whose NIC has one of `macs`, with that MAC.
    pub fn mac_user<'a>(&'a self, macs: &'a [String], domain: &str) -> Option<(&'a str, &'a str)> {
        self.macs.iter().filter(|(name, _)| name != domain).find_map(|(name, theirs)| {
            theirs.iter().find(|mac| !mac.is_empty() && macs.contains(mac)).map(|mac| (name.as_str(), mac.as_str()))
        })
    }

    /// Refuses `path` as a writable disk of `domain` when another domain writes to it too or a
    /// volume stands on it: writing would corrupt that volume or that domain's data.
    pub fn check_writable(&self, path: &str, domain: &str) -> Result<()> {
        if let Some(other) = self.other_users(path, domain).next() {
            return Err(Error::Refused(format!("volume {path} is a disk of domain {other}")));
        }
        match self.dependants(path) {
            [] => Ok(()),
            stand_on => Err(Error::Refused(format!(
                "volume {path} is the backing file of {}: it is only ever read",
                stand_on.join(", ")
            ))),
        }
    }

    /// `xml`, a new definition of the domain defined now as `current`, with every disk kept on
    /// the top of its current chain (see [`DiskUse::current_tops`]).
    pub fn keep_current_tops(&self, xml: &str, current: &DomainFacts) -> Result<String> {
        let tops = self.current_tops(&DomainFacts::parse(xml)?, current);
        if tops.is_empty() {
            return Ok(xml.to_string());
        }
        repoint_disks(xml, &tops)
    }

    /// For each disk target of `current` (the domain's definition now) whose chain holds the
    /// file `wanted` gives that target, the file to keep: the chain's top. A new definition
    /// then keeps writing where the domain writes now, never into a snapshot's frozen image.
    pub fn current_tops(&self, wanted: &DomainFacts, current: &DomainFacts) -> HashMap<String, String> {
        let mut keep = HashMap::new();
        for disk in wanted.disks.iter().filter(|d| d.device == "disk") {
            let Some(file) = &disk.file else { continue };
            let now = current.disks.iter().find(|d| d.target == disk.target && d.device == "disk");
            let Some(top) = now.and_then(|d| d.file.as_ref()) else { continue };
            if top != file && self.chain(top).contains(file) {
                keep.insert(disk.target.clone(), top.clone());
            }
        }
        keep
    }

    /// The files to delete when `domain` goes and `owned` are the volumes made for it: each
    /// disk's chain from its top down to the first owned volume (the overlays that snapshots put
    /// on it), the owned volumes, and the domain's snapshot overlays that left its chains (a
    /// revert's, a killed run's: named `<domain>-<target>.`, used by no other domain) standing
    /// on any of those; ordered so that a file comes before the file it stands on.
    pub fn removal_order(&self, domain: &DomainFacts, owned: &[String]) -> Vec<String> {
        let disks: Vec<&Disk> = domain.disks.iter().filter(|d| d.device == "disk").collect();
        let mut order: Vec<String> = Vec::new();
        for disk in disks.iter().filter_map(|d| d.file.as_deref()) {
            let chain = self.chain(disk);
            if let Some(bottom) = chain.iter().position(|file| owned.contains(file)) {
                order.extend(chain[..=bottom].iter().filter(|f| !order.contains(f)).cloned().collect::<Vec<_>>());
            }
        }
        for volume in owned {
            if !order.contains(volume) {
                order.push(volume.clone());
            }
        }
        let prefixes: Vec<String> = disks.iter().map(|d| snapshot_overlay_prefix(&domain.name, &d.target)).collect();
        let own_overlay = |file: &str| {
            let name = file.rsplit('/').next().unwrap_or(file);
            prefixes.iter().any(|prefix| name.starts_with(prefix.as_str()))
                && self.other_users(file, &domain.name).next().is_none()
        };
        // Each file is looked at once, so this ends however the backing files point.
        let mut next = 0;
        while let Some(file) = order.get(next).cloned() {
            for overlay in self.dependants(&file) {
                if own_overlay(overlay) && !order.contains(overlay) {
                    order.push(overlay.clone());
                }
            }
            next += 1;
        }
        // Tops first: a file goes only after everything listed that stands on it.
        let mut sorted = Vec::with_capacity(order.len());
        while !order.is_empty() {
            let (free, held): (Vec<String>, Vec<String>) =
                order.iter().cloned().partition(|f| !self.dependants(f).iter().any(|d| order.contains(d)));
            if free.is_empty() {
                // A backing loop: no order is right, the caller's checks keep what others need.
                sorted.extend(held);
                break;
            }
            sorted.extend(free);
            order = held;
        }
        sorted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(name: &str, disks: &[(&str, &str)]) -> DomainFacts {
        DomainFacts {
            name: name.into(),
            disks: disks
                .iter()
                .map(|(target, file)| Disk {
                    device: "disk".into(),
                    target: (*target).into(),
                    format: Some("qcow2".into()),
                    file: Some((*file).into()),
                })
                .collect(),
            ..DomainFacts::default()
        }
    }

    /// base ← t1 ← t1-vda.s1 (t1's external snapshot), base ← t2; t1 runs on its overlay.
    fn survey() -> DiskUse {
        let mut survey = DiskUse::default();
        survey.add_backing("/p/t1.qcow2".into(), "/i/base.qcow2".into());
        survey.add_backing("/p/t2.qcow2".into(), "/i/base.qcow2".into());
        survey.add_backing("/p/t1-vda.s1.qcow2".into(), "/p/t1.qcow2".into());
        survey.add_domain(&facts("t1", &[("vda", "/p/t1-vda.s1.qcow2")]));
        survey.add_domain(&facts("t2", &[("vda", "/p/t2.qcow2")]));
        survey
    }

    #[test]
    fn a_redefinition_keeps_the_overlay_a_snapshot_put_on_top() {
        let survey = survey();
        let wanted = facts("t1", &[("vda", "/p/t1.qcow2"), ("vdb", "/p/data.qcow2")]);
        let current = facts("t1", &[("vda", "/p/t1-vda.s1.qcow2"), ("vdb", "/p/other.qcow2")]);
        let tops = survey.current_tops(&wanted, &current);
        assert_eq!(tops, HashMap::from([("vda".to_string(), "/p/t1-vda.s1.qcow2".to_string())]));
    }

    #[test]
    fn nothing_writes_into_a_file_something_stands_on() {
        let survey = survey();
        assert!(survey.check_writable("/i/base.qcow2", "base").is_err(), "the base of two clones");
        assert!(survey.check_writable("/p/t1.qcow2", "t1").is_err(), "the frozen image under t1's snapshot");
        assert!(survey.check_writable("/p/t2.qcow2", "x").is_err(), "t2's disk");
        assert!(survey.check_writable("/p/t2.qcow2", "t2").is_ok());
        assert!(survey.check_writable("/p/t1-vda.s1.qcow2", "t1").is_ok());
    }

    #[test]
    fn removal_goes_from_the_top_down_to_the_volumes_made_for_the_domain() {
        let survey = survey();
        let t1 = facts("t1", &[("vda", "/p/t1-vda.s1.qcow2")]);
        let order = survey.removal_order(&t1, &["/p/t1.qcow2".into(), "/p/t1-seed.iso".into()]);
        let top = order.iter().position(|f| f == "/p/t1-vda.s1.qcow2").unwrap();
        let disk = order.iter().position(|f| f == "/p/t1.qcow2").unwrap();
        assert!(top < disk, "{order:?}");
        assert!(order.contains(&"/p/t1-seed.iso".to_string()));
        assert!(!order.contains(&"/i/base.qcow2".to_string()));
    }

    #[test]
    fn removal_takes_the_domains_stray_overlays_and_nothing_else() {
        let mut survey = survey();
        // A killed revert's fresh overlay on the snapshot's file, and one on that.
        survey.add_backing("/p/t1-vda.s1-r17.qcow2".into(), "/p/t1.qcow2".into());
        survey.add_backing("/p/t1-vda.s2.qcow2".into(), "/p/t1-vda.s1-r17.qcow2".into());
        // Files on t1's disk that are not its overlays: another domain's disk, a leftover disk
        // of a removed domain `t1-x`, an overlay named like t1's that another domain writes.
        survey.add_backing("/p/t1x-vda.a.qcow2".into(), "/p/t1.qcow2".into());
        survey.add_backing("/p/t1-x.qcow2".into(), "/p/t1.qcow2".into());
        survey.add_backing("/p/t1-vda.golden.qcow2".into(), "/p/t1.qcow2".into());
        survey.add_domain(&facts("golden", &[("vda", "/p/t1-vda.golden.qcow2")]));
        let t1 = facts("t1", &[("vda", "/p/t1-vda.s1.qcow2")]);
        let order = survey.removal_order(&t1, &["/p/t1.qcow2".into()]);
        let at = |file: &str| order.iter().position(|f| f == file);
        assert!(at("/p/t1-vda.s2.qcow2") < at("/p/t1-vda.s1-r17.qcow2"), "{order:?}");
        assert!(at("/p/t1-vda.s1-r17.qcow2") < at("/p/t1.qcow2"), "{order:?}");
        for kept in ["/p/t1x-vda.a.qcow2", "/p/t1-x.qcow2", "/p/t1-vda.golden.qcow2"] {
            assert_eq!(at(kept), None, "{kept}: {order:?}");
        }
    }

    #[test]
    fn a_backing_loop_ends_the_chain() {
        let mut survey = DiskUse::default();
        survey.add_backing("/a".into(), "/b".into());
        survey.add_backing("/b".into(), "/a".into());
        assert_eq!(survey.chain("/a"), vec!["/a".to_string(), "/b".to_string()]);
    }

    #[test]
    fn a_mac_of_another_domain_is_found() {
        let mut survey = DiskUse::default();
        survey.macs.push(("a".into(), vec!["52:54:00:00:00:01".into()]));
        let wanted = vec!["52:54:00:00:00:01".to_string()];
        assert_eq!(survey.mac_user(&wanted, "a"), None);
        assert_eq!(survey.mac_user(&wanted, "b"), Some(("a", "52:54:00:00:00:01")));
    }
}
