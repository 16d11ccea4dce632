//! What a caller asks for: the VMs, the state they should end in, and where new ones go.

use std::time::Duration;

use crate::cloud_init::CloudInit;
use crate::domain_facts::DomainFacts;
use crate::domain_xml::{DomainSpec, InstanceMetadata};
use crate::network::{NewNetwork, Reservation};
use crate::placement::Strategy;
use crate::storage::CloneMode;
use crate::wait::Signal;

/// What to do with a set of VMs.
#[derive(Debug)]
pub struct Request {
    /// The state every VM should end in.
    pub state: State,
    /// What "ready" means after starting, if anything.
    pub wait: Option<Signal>,
    /// The bound on the wait for all VMs.
    pub wait_timeout: Duration,
    /// How long a guest may take to shut down before it is forced off.
    pub stop_timeout: Duration,
    /// With [`State::Absent`]: delete the volumes made for the VMs.
    pub remove_storage: bool,
    /// Where VMs go when there is a choice; `None` keeps each VM on its `uri`.
    pub placement: Option<Placement>,
    /// The VMs.
    pub vms: Vec<VmDefinition>,
}

/// The state a VM should end in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Defined; running or not as it was.
    Present,
    /// Defined and running.
    Running,
    /// Defined and shut off.
    Stopped,
    /// Not defined.
    Absent,
}

/// Hypervisors to choose from, and how (see [`crate::placement`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    /// Their URIs, never empty.
    pub hypervisors: Vec<String>,
    /// How a VM that exists nowhere yet is given one.
    pub strategy: Strategy,
}

/// One VM, ready for the hypervisor.
#[derive(Debug)]
pub struct VmDefinition {
    /// Domain name.
    pub name: String,
    /// libvirt URI of its hypervisor (replaced by the one placement chooses).
    pub uri: String,
    /// The URI the VM was given for itself: with a [`Placement`], it is pinned there.
    pub own_uri: Option<String>,
    /// The domain, generated or given.
    pub domain: DomainSource,
    /// `kvm`/`qemu` as asked; the host's preference when `None`.
    pub domain_type: Option<String>,
    /// The system disk cloned from a base image, if any.
    pub root_disk: Option<RootDisk>,
    /// The pool clones and seeds go to.
    pub pool: String,
    /// First-boot configuration (a NoCloud seed), if any.
    pub cloud_init: Option<CloudInit>,
    /// Networks to ensure and reservations to make, per NIC on a libvirt network.
    pub networks: Vec<NetworkWant>,
}

/// Two things of one request that cannot both be: a domain defined twice, a MAC on two NICs.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Clash {
    /// Two VMs of one name.
    #[error("the name {0} is given twice")]
    Name(String),
    /// One MAC given to two NICs: of two VMs, or of one.
    #[error("MAC {mac} is given to both {first} and {second}")]
    Mac {
        /// The MAC.
        mac: String,
        /// The VM that has it first.
        first: String,
        /// The VM given it again.
        second: String,
    },
}

/// Every clash between `vms`, names first.
pub fn clashes(vms: &[VmDefinition]) -> Vec<Clash> {
    let mut names: Vec<&str> = vms.iter().map(|v| v.name.as_str()).collect();
    names.sort_unstable();
    let mut found: Vec<Clash> =
        names.windows(2).filter(|pair| pair[0] == pair[1]).map(|pair| Clash::Name(pair[0].to_string())).collect();
    let mut macs: Vec<(String, &str)> = Vec::new();
    for vm in vms {
        for mac in vm.macs().into_iter().filter(|mac| !mac.is_empty()) {
            match macs.iter().find(|(seen, _)| *seen == mac) {
                Some((_, first)) => found.push(Clash::Mac { mac, first: first.to_string(), second: vm.name.clone() }),
                None => macs.push((mac, &vm.name)),
            }
        }
    }
    found
}

impl VmDefinition {
    /// The MACs the VM's NICs will have (empty where libvirt picks one).
    pub fn macs(&self) -> Vec<String> {
        match &self.domain {
            DomainSource::Generated(spec) => spec.nics.iter().map(|n| n.mac.clone()).collect(),
            DomainSource::Given { facts, .. } => facts.nics.iter().map(|n| n.mac.clone()).collect(),
        }
    }

    /// The image files given for its disks (the clone of its root disk is not among them: it
    /// is made later).
    pub fn disk_files(&self) -> Vec<String> {
        match &self.domain {
            DomainSource::Generated(spec) => spec.disks.iter().map(|d| d.path.clone()).collect(),
            DomainSource::Given { facts, .. } => facts.disks.iter().filter_map(|d| d.file.clone()).collect(),
        }
    }

    /// The volume its root disk is cloned into, in its pool.
    pub fn root_volume(&self) -> String {
        format!("{}.qcow2", self.name)
    }

    /// The volume its cloud-init seed is written to, in its pool.
    pub fn seed_volume(&self) -> String {
        format!("{}-seed.iso", self.name)
    }
}

/// Where the domain XML comes from.
#[derive(Debug)]
pub enum DomainSource {
    /// Written from a spec; the root disk, the seed, the domain type and the TPM model are
    /// added by [`super::plan::complete`] once the hypervisor is known.
    Generated(Box<DomainSpec>),
    /// Given whole: kept, only identity and our metadata reconciled.
    Given {
        /// The XML as given.
        xml: String,
        /// What it says, read once when it was given.
        facts: Box<DomainFacts>,
        /// Our metadata to put in it.
        metadata: Box<InstanceMetadata>,
    },
}

/// The guest's system disk, cloned from a base image.
#[derive(Debug)]
pub struct RootDisk {
    /// Base volume name or path.
    pub image: String,
    /// A local file, imported as the volume `image` first.
    pub upload: Option<String>,
    /// The pool to look the base volume up in (every pool when `None`), or to import it into
    /// (the VM's pool when `None`).
    pub image_pool: Option<String>,
    /// Requested size in bytes (grown, never shrunk).
    pub size: Option<u64>,
    /// Linked clone or full copy.
    pub mode: CloneMode,
}

/// A libvirt network a NIC is plugged into.
#[derive(Debug)]
pub struct NetworkWant {
    /// The network's name.
    pub name: String,
    /// How to create it when it does not exist.
    pub create: Option<NewNetwork>,
    /// A fixed address for the NIC.
    pub reservation: Option<Reservation>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A VM given as XML with a NIC per MAC.
    fn vm(name: &str, macs: &[&str]) -> VmDefinition {
        let nics: String =
            macs.iter().map(|mac| format!("<interface type='network'><mac address='{mac}'/></interface>")).collect();
        let xml = format!("<domain type='qemu'><name>{name}</name><devices>{nics}</devices></domain>");
        let facts = DomainFacts::parse(&xml).expect("the test XML parses");
        VmDefinition {
            name: name.to_string(),
            uri: "qemu:///system".to_string(),
            own_uri: None,
            domain: DomainSource::Given { xml, facts: Box::new(facts), metadata: Box::default() },
            domain_type: None,
            root_disk: None,
            pool: "default".to_string(),
            cloud_init: None,
            networks: vec![],
        }
    }

    #[test]
    fn names_given_twice_and_macs_on_two_nics_clash() {
        let (a, b) = ("52:54:00:00:00:0a", "52:54:00:00:00:0b");
        assert_eq!(clashes(&[vm("web1", &[a]), vm("web2", &[b])]), []);
        let twice = clashes(&[vm("web1", &[a]), vm("db1", &[b, b]), vm("web1", &[a])]);
        assert_eq!(
            twice,
            [
                Clash::Name("web1".into()),
                Clash::Mac { mac: b.into(), first: "db1".into(), second: "db1".into() },
                Clash::Mac { mac: a.into(), first: "web1".into(), second: "web1".into() },
            ]
        );
        assert_eq!(twice[2].to_string(), format!("MAC {a} is given to both web1 and web1"));
        assert_eq!(twice[0].to_string(), "the name web1 is given twice");
    }
}
