//! What a caller asks of a snapshot run, in libvirt terms.

use std::time::Duration;

use crate::snapshot::CreateOptions;
use crate::wait::Signal;

/// What should be true afterwards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// The snapshot exists on every domain.
    Present,
    /// The snapshot exists on no domain.
    Absent,
    /// Every domain has just been reverted to the snapshot.
    Reverted,
    /// Nothing changes; the snapshots are listed.
    List,
}

/// What to do after a revert.
#[derive(Clone, Debug)]
pub struct AfterRevert {
    /// Set the guest clock from the host's through the agent.
    pub sync_clock: bool,
    /// Wait until the guest answers this way, if set.
    pub wait: Option<Signal>,
    /// The bound of that wait (and of the agent wait before the clock sync).
    pub timeout: Duration,
}

/// Which kind of snapshot a run manages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// libvirt snapshots, internal or external.
    Snapshot,
    /// The TripleO role's `.bak` backing files, in this directory (`<domain>.qcow2` each).
    BackingFile {
        /// The directory holding the domains' images.
        volume_path: String,
    },
}

/// A domain of a run, and the hypervisor it runs on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Domain {
    /// Its name.
    pub name: String,
    /// The libvirt URI of its hypervisor.
    pub uri: String,
}

/// One snapshot run over a group of domains.
#[derive(Clone, Debug)]
pub struct Request {
    /// The domains, in the order given; they may live on several hypervisors (one only in
    /// the backing-file mode).
    pub domains: Vec<Domain>,
    /// libvirt snapshots or backing files.
    pub mode: Mode,
    /// The snapshot name; `None` only with [`State::List`] or for the backing-file mode's
    /// default level.
    pub snapshot: Option<String>,
    /// The wanted state.
    pub state: State,
    /// How to create.
    pub create: CreateOptions,
    /// Shut running domains down before the snapshot (graceful within this bound, then forced).
    pub shutdown_first: Option<Duration>,
    /// What to do after a revert.
    pub after_revert: AfterRevert,
}
