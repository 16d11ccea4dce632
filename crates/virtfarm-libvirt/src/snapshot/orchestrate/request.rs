//! What a caller asks of a snapshot run, in libvirt terms.

use std::time::Duration;

use crate::snapshot::{CreateOptions, Requested};
use crate::validate::{self, Invalid};
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

/// Why a request is refused before any domain is touched. Each check looks at one part, so
/// that a caller can name the option behind it and report every problem of a call at once.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// A name that is none of a choice's values.
    #[error("'{value}' is not one of {choices}")]
    NotAChoice {
        /// What was given.
        value: String,
        /// The values there are.
        choices: &'static str,
    },
    /// An empty group.
    #[error("names no domain")]
    NoDomains,
    /// A name libvirt would refuse.
    #[error(transparent)]
    DomainName(Invalid),
    /// A domain given twice: it would be snapshotted twice.
    #[error("names domain '{0}' twice")]
    DomainTwice(String),
    /// A domain without a hypervisor.
    #[error("gives domain '{0}' no libvirt URI")]
    NoUri(String),
    /// Backing files of domains on several hypervisors: they live in one host's directory.
    #[error("spans several URIs; the backing-file mode works on the domains of one URI")]
    SeveralHosts,
    /// The backing-file mode without its directory, or with an unusable one.
    #[error("{}", .0.as_ref().map_or("is required for the backing-file mode".to_string(), Invalid::to_string))]
    Directory(Option<Invalid>),
    /// No snapshot name where one is needed.
    #[error("is required unless listing, or in the backing-file mode")]
    NoSnapshot,
    /// A snapshot name of blanks.
    #[error("must not be blank")]
    BlankSnapshot,
    /// A snapshot name that is not safe as a file name and in XML.
    #[error(transparent)]
    SnapshotName(Invalid),
}

/// Reads a choice by its value's name, as callers spell it.
fn choice<T: Copy>(value: &str, values: &[(&str, T)], choices: &'static str) -> Result<T, RequestError> {
    let found = values.iter().find(|(name, _)| *name == value).map(|(_, choice)| *choice);
    found.ok_or_else(|| RequestError::NotAChoice { value: value.to_string(), choices })
}

impl std::str::FromStr for State {
    type Err = RequestError;

    /// `present`, `absent`, `reverted` or `list`.
    fn from_str(value: &str) -> Result<Self, RequestError> {
        let values = [
            ("present", State::Present),
            ("absent", State::Absent),
            ("reverted", State::Reverted),
            ("list", State::List),
        ];
        choice(value, &values, "present, absent, reverted, list")
    }
}

impl std::str::FromStr for Requested {
    type Err = RequestError;

    /// `auto`, `internal` or `external`.
    fn from_str(value: &str) -> Result<Self, RequestError> {
        let values = [("auto", Requested::Auto), ("internal", Requested::Internal), ("external", Requested::External)];
        choice(value, &values, "auto, internal, external")
    }
}

impl Mode {
    /// `snapshot`, or `backing_file` with the directory of the domains' images.
    pub fn new(mode: &str, volume_path: Option<&str>) -> Result<Mode, RequestError> {
        match (choice(mode, &[("snapshot", false), ("backing_file", true)], "snapshot, backing_file")?, volume_path) {
            (false, _) => Ok(Mode::Snapshot),
            (true, None) => Err(RequestError::Directory(None)),
            (true, Some(dir)) => match validate::host_path(dir) {
                Ok(dir) => Ok(Mode::BackingFile { volume_path: dir.trim_end_matches('/').to_string() }),
                Err(e) => Err(RequestError::Directory(Some(e))),
            },
        }
    }

    /// The backing-file mode works on the image directory of one host.
    pub fn check_hosts(&self, domains: &[Domain]) -> Result<(), RequestError> {
        match (self, domains) {
            (Mode::BackingFile { .. }, [first, rest @ ..]) if rest.iter().any(|d| d.uri != first.uri) => {
                Err(RequestError::SeveralHosts)
            }
            _ => Ok(()),
        }
    }
}

/// The group: at least one domain, no bad or repeated names, a URI for each.
pub fn check_domains(domains: &[Domain]) -> Result<(), RequestError> {
    if domains.is_empty() {
        return Err(RequestError::NoDomains);
    }
    for (index, Domain { name, uri }) in domains.iter().enumerate() {
        // libvirt refuses these only after a round trip, with a message that names no domain.
        validate::domain_name(name).map_err(RequestError::DomainName)?;
        if domains[..index].iter().any(|d| d.name == *name) {
            return Err(RequestError::DomainTwice(name.clone()));
        }
        if uri.trim().is_empty() {
            return Err(RequestError::NoUri(name.clone()));
        }
    }
    Ok(())
}

/// The snapshot name against the state and mode: required except for [`State::List`] and
/// the backing-file mode (whose default level has no name), and safe.
pub fn check_snapshot(state: State, mode: &Mode, snapshot: Option<&str>) -> Result<(), RequestError> {
    let optional = state == State::List || *mode != Mode::Snapshot;
    match snapshot {
        None if !optional => Err(RequestError::NoSnapshot),
        None => Ok(()),
        Some(name) if name.trim().is_empty() => Err(RequestError::BlankSnapshot),
        Some(name) => validate::snapshot_name(name).map(drop).map_err(RequestError::SnapshotName),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on(uri: &str, name: &str) -> Domain {
        Domain { name: name.to_string(), uri: uri.to_string() }
    }

    #[test]
    fn choices_read_by_name_and_refused_with_the_list() {
        assert_eq!("list".parse::<State>(), Ok(State::List));
        assert_eq!("external".parse::<Requested>(), Ok(Requested::External));
        let refused = "both".parse::<Requested>().unwrap_err().to_string();
        assert_eq!(refused, "'both' is not one of auto, internal, external");
        assert_eq!(Mode::new("snapshot", Some("/ignored")), Ok(Mode::Snapshot));
        assert_eq!(
            Mode::new("backing_file", Some("/var/lib/images/")),
            Ok(Mode::BackingFile { volume_path: "/var/lib/images".into() })
        );
        assert_eq!(Mode::new("backing_file", None), Err(RequestError::Directory(None)));
        assert!(matches!(Mode::new("backing_file", Some("images")), Err(RequestError::Directory(Some(_)))));
        assert!(matches!(Mode::new("copy", None), Err(RequestError::NotAChoice { .. })));
    }

    #[test]
    fn a_group_names_each_domain_once_on_a_hypervisor() {
        let uri = "qemu:///system";
        assert_eq!(check_domains(&[]), Err(RequestError::NoDomains));
        assert_eq!(check_domains(&[on(uri, "a"), on(uri, "a")]), Err(RequestError::DomainTwice("a".into())));
        assert_eq!(check_domains(&[on(" ", "a")]), Err(RequestError::NoUri("a".into())));
        assert!(matches!(check_domains(&[on(uri, "a/b")]), Err(RequestError::DomainName(_))));
        assert_eq!(check_domains(&[on(uri, "a"), on("qemu+ssh://h/system", "b")]), Ok(()));
        let backing = Mode::BackingFile { volume_path: "/i".into() };
        assert_eq!(
            backing.check_hosts(&[on(uri, "a"), on("qemu+ssh://h/system", "b")]),
            Err(RequestError::SeveralHosts)
        );
        assert_eq!(Mode::Snapshot.check_hosts(&[on(uri, "a"), on("qemu+ssh://h/system", "b")]), Ok(()));
    }

    #[test]
    fn a_snapshot_name_is_needed_unless_listing_or_on_backing_files() {
        let backing = Mode::BackingFile { volume_path: "/i".into() };
        assert_eq!(check_snapshot(State::Present, &Mode::Snapshot, None), Err(RequestError::NoSnapshot));
        assert_eq!(check_snapshot(State::List, &Mode::Snapshot, None), Ok(()));
        assert_eq!(check_snapshot(State::Reverted, &backing, None), Ok(()));
        assert_eq!(check_snapshot(State::Present, &Mode::Snapshot, Some("  ")), Err(RequestError::BlankSnapshot));
        assert!(matches!(
            check_snapshot(State::Present, &Mode::Snapshot, Some("a/b")),
            Err(RequestError::SnapshotName(_))
        ));
    }
}
