//! What provisioning did to one VM, or why it could not.

use std::any::Any;
use std::fmt;

use crate::error::Error;
use crate::power::StopOutcome;
use crate::vm::PowerState;
use crate::wait::LeaseBaseline;

/// What happened to one VM.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Domain name.
    pub name: String,
    /// Its libvirt URI; empty when it could not be placed.
    pub uri: String,
    /// What changed (or would, in check mode), in order.
    pub actions: Vec<Action>,
    /// Things the user should know.
    pub warnings: Vec<Warning>,
    /// Domain UUID, once defined.
    pub uuid: Option<String>,
    /// The state it ended in; `None` when it failed before that was known.
    pub state: Option<EndState>,
    /// NIC MACs, in the order of the definition.
    pub macs: Vec<String>,
    /// Disk image files, in the order of the definition.
    pub disks: Vec<String>,
    /// Address, from a reservation or the wait.
    pub ip: Option<String>,
    /// The definition before and after, when it changed.
    pub diff: Option<(String, String)>,
    /// Set when the VM should be waited for, from this lease baseline.
    pub(crate) baseline: Option<LeaseBaseline>,
    /// Why it failed, if it did; what was done before is still reported.
    pub failure: Option<Failure>,
}

impl Outcome {
    pub(crate) fn new(name: &str, uri: &str) -> Self {
        Outcome { name: name.to_string(), uri: uri.to_string(), ..Default::default() }
    }

    /// True when something changed (or would, in check mode).
    pub fn changed(&self) -> bool {
        !self.actions.is_empty()
    }

    pub(crate) fn did(&mut self, action: Action) {
        self.actions.push(action);
    }
}

/// The state a VM ended in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndState {
    /// Not defined.
    Absent,
    /// Defined, in this power state.
    Defined(PowerState),
}

impl EndState {
    /// `absent`, or the power state's name.
    pub fn as_str(self) -> &'static str {
        match self {
            EndState::Absent => "absent",
            EndState::Defined(power) => power.as_str(),
        }
    }
}

/// One change made to a VM or for it.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// A local image file was imported as a base volume.
    ImageImported {
        /// The base volume's file.
        image: String,
        /// The local file.
        from: String,
    },
    /// The root disk was cloned from its base image.
    DiskCloned {
        /// The clone's file.
        path: String,
        /// The base image's file.
        base: String,
    },
    /// A network was created or started.
    NetworkReady(String),
    /// A DHCP reservation was made.
    Reserved {
        /// The address.
        ip: String,
        /// The NIC's MAC.
        mac: String,
        /// The network.
        network: String,
    },
    /// The existing root disk was grown to the size asked for.
    DiskGrown(String),
    /// The cloud-init seed was written to this file.
    SeedWritten(String),
    /// The domain was defined.
    Defined,
    /// The domain's definition was replaced.
    DefinitionUpdated,
    /// The domain was started (or resumed).
    Started,
    /// The domain was stopped; how, unless in check mode.
    Stopped(Option<StopOutcome>),
    /// The domain was destroyed before it was undefined.
    ForcedOff,
    /// The domain was undefined.
    Undefined,
    /// A DHCP reservation of the removed domain was removed.
    ReservationRemoved {
        /// The NIC's MAC.
        mac: String,
        /// The network.
        network: String,
    },
    /// A volume made for the removed domain was deleted.
    VolumeDeleted(String),
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::ImageImported { image, from } => write!(f, "image {image} imported from {from}"),
            Action::DiskCloned { path, base } => write!(f, "disk {path} cloned from {base}"),
            Action::NetworkReady(name) => write!(f, "network {name} created or started"),
            Action::Reserved { ip, mac, network } => write!(f, "reserved {ip} for {mac} in network {network}"),
            Action::DiskGrown(path) => write!(f, "disk {path} grown"),
            Action::SeedWritten(path) => write!(f, "cloud-init seed {path} written"),
            Action::Defined => f.write_str("defined"),
            Action::DefinitionUpdated => f.write_str("definition updated"),
            Action::Started => f.write_str("started"),
            Action::Stopped(None) => f.write_str("stopped"),
            Action::Stopped(Some(how)) => write!(f, "stopped ({})", how.as_str()),
            Action::ForcedOff => f.write_str("forced off"),
            Action::Undefined => f.write_str("undefined"),
            Action::ReservationRemoved { mac, network } => {
                write!(f, "reservation of {mac} removed from network {network}")
            }
            Action::VolumeDeleted(path) => write!(f, "volume {path} deleted"),
        }
    }
}

/// Something the user should know about a VM that did not stop the run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Warning {
    /// The definition of this running domain changed: it applies from its next boot.
    NextBoot(String),
    /// A volume made for a removed domain was kept: these files stand on it.
    VolumeKept {
        /// The volume's file.
        path: String,
        /// The files that stand on it.
        dependants: Vec<String>,
    },
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Warning::NextBoot(name) => {
                write!(f, "{name}: the new definition applies from the next boot (it is running)")
            }
            Warning::VolumeKept { path, dependants } => {
                write!(f, "volume {path} kept: {} stand on it", dependants.join(", "))
            }
        }
    }
}

/// The part of a VM's definition a failure comes from, so that a caller can name its own
/// option for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// The given domain XML.
    Xml,
    /// The firmware asked for.
    Firmware,
    /// The firmware loader given by path.
    Loader,
    /// The TPM.
    Tpm,
    /// The local image file to import.
    ImageUpload,
    /// The base image of the root disk.
    Image,
    /// The root disk, named after the domain.
    RootDisk,
    /// The root disk's size.
    RootSize,
    /// The NICs and their networks.
    Networks,
    /// The cloud-init seed.
    Seed,
    /// The disks given by path.
    Disks,
}

impl fmt::Display for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Part::Xml => "domain XML",
            Part::Firmware => "firmware",
            Part::Loader => "firmware loader",
            Part::Tpm => "TPM",
            Part::ImageUpload => "image file",
            Part::Image => "base image",
            Part::RootDisk => "root disk",
            Part::RootSize => "root disk size",
            Part::Networks => "networks",
            Part::Seed => "cloud-init seed",
            Part::Disks => "disks",
        })
    }
}

/// Why a VM could not be brought to its state.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// No hypervisor could take it.
    #[error("{0}")]
    Unplaced(Error),
    /// Its hypervisor could not be reached.
    #[error("hypervisor {uri}: {error}")]
    Unreachable {
        /// The hypervisor's URI.
        uri: String,
        /// Why.
        error: Error,
    },
    /// Working on `part` of its definition failed.
    #[error("{part}: {error}")]
    At {
        /// What failed.
        part: Part,
        /// Why.
        error: Error,
    },
    /// A file it would write is another domain's or something stands on it.
    #[error("{file} cannot be a disk of {domain}: {error}")]
    DiskInUse {
        /// Where the file comes from.
        part: Part,
        /// The file.
        file: String,
        /// The domain it was meant for.
        domain: String,
        /// Why not.
        error: Error,
    },
    /// A disk given by path is in a pool but does not exist.
    #[error("{file} does not exist (a disk given by path is attached as it is)")]
    DiskMissing {
        /// The file.
        file: String,
    },
    /// One of its MACs is another domain's.
    #[error("MAC {mac} is already used by domain {domain}")]
    MacTaken {
        /// The MAC.
        mac: String,
        /// The domain that has it.
        domain: String,
    },
    /// libvirt failed.
    #[error(transparent)]
    Libvirt(#[from] Error),
    /// Volumes made for it could not be deleted again after `failure`.
    #[error("{}: {failure}", left_behind.join("; "))]
    LeftBehind {
        /// Each volume left behind, with why.
        left_behind: Vec<String>,
        /// The failure that made the run undo them.
        failure: Box<Failure>,
    },
    /// It was started but did not become ready.
    #[error("did not become ready: {0}")]
    NotReady(Error),
    /// Its thread panicked, with this payload.
    #[error("provisioning failed unexpectedly (this is a bug)")]
    Panicked(Box<dyn Any + Send>),
}

impl Failure {
    /// Adds `part` to a libvirt error.
    pub(crate) fn at(part: Part) -> impl FnOnce(Error) -> Failure {
        move |error| Failure::At { part, error }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_and_warnings_read_as_the_results_report_them() {
        let cases = [
            (
                Action::DiskCloned { path: "/p/a.qcow2".into(), base: "/p/base.qcow2".into() },
                "disk /p/a.qcow2 cloned from /p/base.qcow2",
            ),
            (
                Action::Reserved { ip: "10.0.0.5".into(), mac: "52:54:00:00:00:01".into(), network: "n".into() },
                "reserved 10.0.0.5 for 52:54:00:00:00:01 in network n",
            ),
            (Action::Stopped(None), "stopped"),
            (Action::Stopped(Some(StopOutcome::Forced)), "stopped (forced)"),
            (
                Action::ReservationRemoved { mac: "52:54:00:00:00:01".into(), network: "n".into() },
                "reservation of 52:54:00:00:00:01 removed from network n",
            ),
        ];
        for (action, text) in cases {
            assert_eq!(action.to_string(), text);
        }
        let kept = Warning::VolumeKept { path: "/p/a.qcow2".into(), dependants: vec!["/p/b".into(), "/p/c".into()] };
        assert_eq!(kept.to_string(), "volume /p/a.qcow2 kept: /p/b, /p/c stand on it");
    }

    #[test]
    fn an_outcome_changed_when_it_did_something() {
        let mut outcome = Outcome::new("web1", "qemu:///system");
        assert!(!outcome.changed());
        outcome.did(Action::Undefined);
        assert!(outcome.changed());
        assert_eq!(EndState::Defined(PowerState::ShutOff).as_str(), "shutoff");
        assert_eq!(EndState::Absent.as_str(), "absent");
    }
}
