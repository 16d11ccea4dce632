//! The validated request: what the user asked for, in domain terms, every value checked.

use std::time::Duration;

use serde_json::{Map, Value};

use virtfarm_libvirt::snapshot::orchestrate::{Domain, Mode, Request, State};
use virtfarm_libvirt::snapshot::Requested;
use virtfarm_libvirt::validate::{self, ZeroSeconds};
use virtfarm_libvirt::wait::Signal;

/// One validated call of the module: the library's request, and the option its domains came
/// from (`name`, `names` or `placement`), for error messages.
#[derive(Clone, Debug)]
pub struct Call {
    /// What to do.
    pub request: Request,
    /// The option that named the domains.
    pub domains_option: &'static str,
}

/// A rejected value, with the option it belongs to.
#[derive(Debug, PartialEq, Eq)]
pub struct BadOption {
    /// The option's name as the user writes it.
    pub option: &'static str,
    /// What is wrong with it.
    pub problem: String,
}

impl std::fmt::Display for BadOption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.option, self.problem)
    }
}

fn bad(option: &'static str, problem: impl Into<String>) -> BadOption {
    BadOption { option, problem: problem.into() }
}

/// Reads a `state` choice.
pub fn parse_state(value: &str) -> Result<State, BadOption> {
    match value {
        "present" => Ok(State::Present),
        "absent" => Ok(State::Absent),
        "reverted" => Ok(State::Reverted),
        "list" => Ok(State::List),
        other => Err(bad("state", format!("'{other}' is not one of present, absent, reverted, list"))),
    }
}

/// Reads a `type` choice.
pub fn parse_type(value: &str) -> Result<Requested, BadOption> {
    match value {
        "auto" => Ok(Requested::Auto),
        "internal" => Ok(Requested::Internal),
        "external" => Ok(Requested::External),
        other => Err(bad("type", format!("'{other}' is not one of auto, internal, external"))),
    }
}

/// Reads an `after_revert.wait` choice.
pub fn parse_wait(value: &str) -> Result<Option<Signal>, BadOption> {
    validate::wait(value).map_err(|e| bad("after_revert.wait", e.to_string()))
}

/// Checks the domain list: at least one, no empty or repeated names, a URI for each.
pub fn check_domains(option: &'static str, domains: &[Domain]) -> Result<(), BadOption> {
    if domains.is_empty() {
        return Err(bad(option, "names at least one domain"));
    }
    for (index, Domain { name, uri }) in domains.iter().enumerate() {
        // libvirt refuses these only after a round trip, with a message that names no option.
        validate::domain_name(name).map_err(|e| bad(option, e.to_string()))?;
        if domains[..index].iter().any(|d| d.name == *name) {
            return Err(bad(option, format!("names domain '{name}' twice")));
        }
        if uri.trim().is_empty() {
            return Err(bad(option, format!("gives domain '{name}' no libvirt URI")));
        }
    }
    Ok(())
}

/// Reads `placement: {domain: uri}` (what kvm_provision returns as `placement`), in its order.
pub fn placed_domains(placement: &Map<String, Value>) -> Result<Vec<Domain>, BadOption> {
    placement
        .iter()
        .map(|(name, uri)| match uri {
            Value::String(uri) => Ok(Domain { name: name.clone(), uri: uri.clone() }),
            other => Err(bad("placement", format!("the URI of domain '{name}' must be a string, got {other}"))),
        })
        .collect()
}

/// The backing-file mode works on the image directory of one host.
pub fn check_one_host(mode: &Mode, domains: &[Domain]) -> Result<(), BadOption> {
    match (mode, domains) {
        (Mode::BackingFile { .. }, [first, rest @ ..]) if rest.iter().any(|d| d.uri != first.uri) => {
            Err(bad("placement", "spans several URIs; mode backing_file works on the domains of one URI"))
        }
        _ => Ok(()),
    }
}

/// Reads `mode` and `volume_path` together: the backing-file mode needs the directory.
pub fn parse_mode(mode: &str, volume_path: Option<&str>) -> Result<Mode, BadOption> {
    match (mode, volume_path) {
        ("snapshot", _) => Ok(Mode::Snapshot),
        ("backing_file", Some(dir)) => match validate::host_path(dir) {
            Ok(dir) => Ok(Mode::BackingFile { volume_path: dir.trim_end_matches('/').to_string() }),
            Err(e) => Err(bad("volume_path", e.to_string())),
        },
        ("backing_file", None) => Err(bad("volume_path", "is required when mode is backing_file")),
        (other, _) => Err(bad("mode", format!("'{other}' is not one of snapshot, backing_file"))),
    }
}

/// Checks the snapshot name against the state and mode: required except for `list` and
/// the backing-file mode (whose default level has no name), and safe.
pub fn check_snapshot(state: State, mode: &Mode, snapshot: Option<&str>) -> Result<(), BadOption> {
    let optional = state == State::List || *mode != Mode::Snapshot;
    match snapshot {
        None if !optional => Err(bad("snapshot", "is required unless state is list or mode is backing_file")),
        None => Ok(()),
        Some(name) if name.trim().is_empty() => Err(bad("snapshot", "must not be blank")),
        Some(name) => validate::snapshot_name(name).map(drop).map_err(|e| bad("snapshot", e.to_string())),
    }
}

/// Checks a duration in seconds: each of this module's bounds a wait that must happen.
pub fn seconds(option: &'static str, value: i64) -> Result<Duration, BadOption> {
    validate::timeout(value, ZeroSeconds::Refused).map_err(|e| bad(option, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rejection_names_its_option() {
        let snapshots = Mode::Snapshot;
        assert_eq!(check_snapshot(State::Present, &snapshots, None).unwrap_err().option, "snapshot");
        assert!(check_snapshot(State::List, &snapshots, None).is_ok());
        let backing = parse_mode("backing_file", Some("/opt/vm_images/")).unwrap();
        assert_eq!(backing, Mode::BackingFile { volume_path: "/opt/vm_images".into() });
        assert!(check_snapshot(State::Present, &backing, None).is_ok());
        assert_eq!(parse_mode("backing_file", None).unwrap_err().option, "volume_path");
        assert_eq!(parse_mode("backing_file", Some("images")).unwrap_err().option, "volume_path");
        for bad_name in ["a/b", "..", "", "x\u{7}"] {
            let err = check_snapshot(State::Present, &backing, Some(bad_name)).unwrap_err();
            assert!(err.to_string().starts_with("snapshot: "), "{err}");
        }
        let on = |name: &str, uri: &str| Domain { name: name.into(), uri: uri.into() };
        assert_eq!(check_domains("names", &[]).unwrap_err().option, "names");
        let twice = [on("a", "qemu:///system"), on("a", "qemu+ssh://h2/system")];
        assert!(check_domains("placement", &twice).unwrap_err().problem.contains("twice"));
        assert!(check_domains("placement", &[on("a", " ")]).unwrap_err().problem.contains("no libvirt URI"));
        let spread = [on("a", "qemu:///system"), on("b", "qemu+ssh://h2/system")];
        assert!(check_domains("placement", &spread).is_ok());
        assert!(check_one_host(&Mode::Snapshot, &spread).is_ok());
        assert_eq!(check_one_host(&backing, &spread).unwrap_err().option, "placement");
        assert_eq!(parse_state("gone").unwrap_err().option, "state");
        assert_eq!(parse_type("both").unwrap_err().option, "type");
        assert_eq!(parse_wait("ping").unwrap_err().option, "after_revert.wait");
        assert_eq!(seconds("shutdown_timeout", 0).unwrap_err().option, "shutdown_timeout");
        assert_eq!(seconds("shutdown_timeout", 5).unwrap(), Duration::from_secs(5));
    }
}
