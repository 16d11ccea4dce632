//! The one error type of this crate.

/// A failed libvirt operation, said the way an operator reads it: what we were doing, then why.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// libvirt refused or failed a call; `doing` names the operation and its object.
    #[error("{doing}: {message}")]
    Libvirt {
        /// What we asked libvirt to do, e.g. "starting domain web1".
        doing: String,
        /// libvirt's own message.
        message: String,
        /// libvirt's error code (`virErrorNumber`), for callers that branch on it.
        code: i32,
    },
    /// A domain, network, pool, volume or snapshot that must exist does not.
    #[error("{kind} '{name}' not found")]
    NotFound {
        /// "domain", "network", "storage pool", ...
        kind: &'static str,
        /// The name that was looked up.
        name: String,
    },
    /// XML that libvirt gave us or that we were given could not be read or written.
    #[error("{doing}: invalid XML: {message}")]
    Xml {
        /// What the XML was for.
        doing: String,
        /// The parser's message.
        message: String,
    },
    /// The guest agent did not answer or answered with an error.
    #[error("guest agent of {domain}: {message}")]
    Agent {
        /// The domain whose agent was asked.
        domain: String,
        /// Why it failed.
        message: String,
    },
    /// A bounded wait ran out.
    #[error("{what} not reached within {seconds} s")]
    Timeout {
        /// The condition waited for, naming the domain.
        what: String,
        /// The bound that ran out.
        seconds: u64,
    },
    /// The request cannot be carried out as asked; the message says why.
    #[error("{0}")]
    Refused(String),
    /// A snapshot request that the domain's disks or snapshots refuse. The message speaks of
    /// libvirt things; `kind` says what in the request is at fault, for the caller to name it.
    #[error("{message}")]
    SnapshotRefused {
        /// What in the request is at fault.
        kind: SnapshotRefusal,
        /// What stands in the way.
        message: String,
    },
}

/// What in a snapshot request a [`Error::SnapshotRefused`] is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SnapshotRefusal {
    /// An internal snapshot, of a domain that cannot have one.
    InternalImpossible,
    /// The RAM, asked of an external snapshot, which keeps the disks only.
    MemoryNeedsInternal,
    /// The snapshot named: its name or where its data lives.
    Snapshot,
    /// The snapshot named, while other snapshots stand in the way: deleting those lets it go on.
    DeleteSnapshotsFirst,
    /// A backing-file change, over libvirt snapshots that deleting first lets it go on.
    BackingFileUnderSnapshots,
    /// A backing-file change that would lose the internal snapshots inside the file.
    BackingFileOverInternalSnapshots,
}

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Adds "what we were doing" to a `virt` error.
pub(crate) trait Doing<T> {
    /// Maps a `virt` error into [`Error::Libvirt`] naming the operation.
    fn doing(self, doing: impl FnOnce() -> String) -> Result<T>;
}

impl<T> Doing<T> for std::result::Result<T, virt::error::Error> {
    fn doing(self, doing: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::Libvirt { doing: doing(), message: e.message().to_string(), code: raw_code(&e) })
    }
}

/// The numeric `virErrorNumber`, known to this `virt` release or not.
fn raw_code(e: &virt::error::Error) -> i32 {
    use virt::enumutil::{Enum, RawEnum};
    match e.code() {
        Enum::Known(known) => known.to_raw() as i32,
        Enum::Unknown(raw) => raw as i32,
    }
}

impl Error {
    /// True when libvirt said the operation does not apply in the object's current state
    /// (for example destroying a domain that is not running).
    pub fn is_invalid_operation(&self) -> bool {
        self.has_code(virt::sys::VIR_ERR_OPERATION_INVALID)
    }

    /// True when libvirt said the object does not exist.
    pub fn is_missing(&self) -> bool {
        matches!(self, Error::NotFound { .. })
            || [
                virt::sys::VIR_ERR_NO_DOMAIN,
                virt::sys::VIR_ERR_NO_NETWORK,
                virt::sys::VIR_ERR_NO_STORAGE_POOL,
                virt::sys::VIR_ERR_NO_STORAGE_VOL,
                virt::sys::VIR_ERR_NO_DOMAIN_SNAPSHOT,
            ]
            .into_iter()
            .any(|code| self.has_code(code))
    }

    fn has_code(&self, wanted: virt::sys::virErrorNumber) -> bool {
        matches!(self, Error::Libvirt { code, .. } if *code == wanted as i32)
    }
}
