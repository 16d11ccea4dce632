//! A handle on one domain: power state, start and stop, its XML, its guest agent.

use virt::domain::{Domain, DomainState};
use virt::enumutil::Enum;

use crate::agent::GuestAgent;
use crate::domain_facts::DomainFacts;
use crate::error::{Doing, Error, Result};

/// One libvirt domain, by name.
pub struct Vm {
    domain: Domain,
    name: String,
}

/// The power state of a domain, as users name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PowerState {
    /// Running (or blocked on I/O, which is running too).
    Running,
    /// Paused by libvirt or by a snapshot in progress.
    Paused,
    /// Shutting down: the guest has been asked to stop.
    ShuttingDown,
    /// Shut off, crashed or never started.
    ShutOff,
    /// Suspended to RAM by the guest.
    Suspended,
}

impl PowerState {
    /// Maps libvirt's state of the domain `name`.
    pub(crate) fn from_libvirt(state: virt::domain::DomainStateEnum, name: &str) -> Result<Self> {
        // `virt` maps a failed call to an unknown state rather than an error.
        match state {
            Enum::Known(DomainState::Running | DomainState::Blocked) => Ok(PowerState::Running),
            Enum::Known(DomainState::Paused) => Ok(PowerState::Paused),
            Enum::Known(DomainState::Shutdown) => Ok(PowerState::ShuttingDown),
            Enum::Known(DomainState::Shutoff | DomainState::Crashed | DomainState::NoState) => Ok(PowerState::ShutOff),
            Enum::Known(DomainState::PMSuspended) => Ok(PowerState::Suspended),
            Enum::Unknown(raw) => Err(Error::Refused(format!("domain {name} is in an unknown state ({raw})"))),
        }
    }

    /// The lower-case name used in results and inventory groups.
    pub fn as_str(self) -> &'static str {
        match self {
            PowerState::Running => "running",
            PowerState::Paused => "paused",
            PowerState::ShuttingDown => "shutdown",
            PowerState::ShutOff => "shutoff",
            PowerState::Suspended => "pmsuspended",
        }
    }
}

impl Vm {
    pub(crate) fn new(domain: Domain, name: String) -> Self {
        Vm { domain, name }
    }

    /// The domain's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The domain's UUID.
    pub fn uuid(&self) -> Result<String> {
        self.domain.uuid_string().doing(|| format!("reading the UUID of {}", self.name))
    }

    /// The current power state.
    pub fn power_state(&self) -> Result<PowerState> {
        let (state, _) = self.domain.state().doing(|| format!("reading the state of {}", self.name))?;
        PowerState::from_libvirt(state, &self.name)
    }

    /// Starts the domain.
    pub fn start(&self) -> Result<()> {
        self.domain.create().doing(|| format!("starting domain {}", self.name))
    }

    /// Pulls the plug: stops the domain at once.
    pub fn destroy(&self) -> Result<()> {
        self.domain.destroy().doing(|| format!("forcing domain {} off", self.name))
    }

    /// Pauses the vCPUs.
    pub fn suspend(&self) -> Result<()> {
        self.domain.suspend().doing(|| format!("pausing domain {}", self.name))
    }

    /// Resumes paused vCPUs.
    pub fn resume(&self) -> Result<()> {
        self.domain.resume().doing(|| format!("resuming domain {}", self.name))
    }

    /// Asks the guest to shut down, through ACPI or through its agent.
    pub fn request_shutdown(&self, through_agent: bool) -> Result<()> {
        let flags = if through_agent {
            virt::sys::VIR_DOMAIN_SHUTDOWN_GUEST_AGENT
        } else {
            virt::sys::VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN
        };
        self.domain.shutdown_flags(flags).doing(|| format!("asking domain {} to shut down", self.name))
    }

    /// The domain XML: live for a running domain unless `inactive`, which gives the definition.
    pub fn xml(&self, inactive: bool) -> Result<String> {
        let flags = if inactive { virt::sys::VIR_DOMAIN_XML_INACTIVE } else { 0 };
        self.domain.xml_desc(flags).doing(|| format!("reading the XML of {}", self.name))
    }

    /// What the domain XML says about interfaces, disks and our metadata, in one read.
    pub fn facts(&self) -> Result<DomainFacts> {
        DomainFacts::parse(&self.xml(false)?)
    }

    /// The guest agent of this domain.
    pub fn agent(&self) -> GuestAgent<'_> {
        GuestAgent::new(&self.domain, &self.name)
    }

    pub(crate) fn raw(&self) -> &Domain {
        &self.domain
    }
}
