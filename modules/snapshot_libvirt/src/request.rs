//! The validated request: what the user asked for, in domain terms, every value checked.

use serde_json::{Map, Value};

use ansible_module::Error;
use virtfarm_libvirt::snapshot::orchestrate::{Domain, Mode, Request, State};
use virtfarm_libvirt::snapshot::Requested;
use virtfarm_libvirt::validate;

/// One validated call of the module: the library's request, and the option its domains came
/// from (`name`, `names` or `placement`), for error messages.
#[derive(Clone, Debug)]
pub struct Call {
    /// What to do.
    pub request: Request,
    /// The option that named the domains.
    pub domains_option: &'static str,
}

/// A value this module's own rules refused, naming `option`.
fn bad(option: &str, problem: impl Into<String>) -> Error {
    Error::Invalid { name: option.to_string(), reason: problem.into() }
}

/// Reads a `state` choice.
pub fn parse_state(value: &str) -> Result<State, Error> {
    match value {
        "present" => Ok(State::Present),
        "absent" => Ok(State::Absent),
        "reverted" => Ok(State::Reverted),
        "list" => Ok(State::List),
        other => Err(bad("state", format!("'{other}' is not one of present, absent, reverted, list"))),
    }
}

/// Reads a `type` choice.
pub fn parse_type(value: &str) -> Result<Requested, Error> {
    match value {
        "auto" => Ok(Requested::Auto),
        "internal" => Ok(Requested::Internal),
        "external" => Ok(Requested::External),
        other => Err(bad("type", format!("'{other}' is not one of auto, internal, external"))),
    }
}

/// Checks the domain list: at least one, no empty or repeated names, a URI for each.
pub fn check_domains(option: &str, domains: &[Domain]) -> Result<(), Error> {
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
pub fn placed_domains(placement: &Map<String, Value>) -> Result<Vec<Domain>, Error> {
    placement
        .iter()
        .map(|(name, uri)| match uri {
            Value::String(uri) => Ok(Domain { name: name.clone(), uri: uri.clone() }),
            other => Err(bad("placement", format!("the URI of domain '{name}' must be a string, got {other}"))),
        })
        .collect()
}

/// The backing-file mode works on the image directory of one host.
pub fn check_one_host(mode: &Mode, domains: &[Domain]) -> Result<(), Error> {
    match (mode, domains) {
        (Mode::BackingFile { .. }, [first, rest @ ..]) if rest.iter().any(|d| d.uri != first.uri) => {
            Err(bad("placement", "spans several URIs; mode backing_file works on the domains of one URI"))
        }
        _ => Ok(()),
    }
}

/// Reads `mode` and `volume_path` together: the backing-file mode needs the directory.
pub fn parse_mode(mode: &str, volume_path: Option<&str>) -> Result<Mode, Error> {
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
pub fn check_snapshot(state: State, mode: &Mode, snapshot: Option<&str>) -> Result<(), Error> {
    let optional = state == State::List || *mode != Mode::Snapshot;
    match snapshot {
        None if !optional => Err(bad("snapshot", "is required unless state is list or mode is backing_file")),
        None => Ok(()),
        Some(name) if name.trim().is_empty() => Err(bad("snapshot", "must not be blank")),
        Some(name) => validate::snapshot_name(name).map(drop).map_err(|e| bad("snapshot", e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rejection_names_its_option() {
        let snapshots = Mode::Snapshot;
        assert_eq!(
            check_snapshot(State::Present, &snapshots, None).unwrap_err().to_string().split(": ").next(),
            Some("snapshot")
        );
        assert!(check_snapshot(State::List, &snapshots, None).is_ok());
        let backing = parse_mode("backing_file", Some("/opt/vm_images/")).unwrap();
        assert_eq!(backing, Mode::BackingFile { volume_path: "/opt/vm_images".into() });
        assert!(check_snapshot(State::Present, &backing, None).is_ok());
        assert_eq!(parse_mode("backing_file", None).unwrap_err().to_string().split(": ").next(), Some("volume_path"));
        assert_eq!(
            parse_mode("backing_file", Some("images")).unwrap_err().to_string().split(": ").next(),
            Some("volume_path")
        );
        for bad_name in ["a/b", "..", "", "x\u{7}"] {
            let err = check_snapshot(State::Present, &backing, Some(bad_name)).unwrap_err();
            assert!(err.to_string().starts_with("snapshot: "), "{err}");
        }
        let on = |name: &str, uri: &str| Domain { name: name.into(), uri: uri.into() };
        assert_eq!(check_domains("names", &[]).unwrap_err().to_string().split(": ").next(), Some("names"));
        let twice = [on("a", "qemu:///system"), on("a", "qemu+ssh://h2/system")];
        assert!(check_domains("placement", &twice).unwrap_err().to_string().contains("twice"));
        assert!(check_domains("placement", &[on("a", " ")]).unwrap_err().to_string().contains("no libvirt URI"));
        let spread = [on("a", "qemu:///system"), on("b", "qemu+ssh://h2/system")];
        assert!(check_domains("placement", &spread).is_ok());
        assert!(check_one_host(&Mode::Snapshot, &spread).is_ok());
        assert_eq!(check_one_host(&backing, &spread).unwrap_err().to_string().split(": ").next(), Some("placement"));
        assert_eq!(parse_state("gone").unwrap_err().to_string().split(": ").next(), Some("state"));
        assert_eq!(parse_type("both").unwrap_err().to_string().split(": ").next(), Some("type"));
    }
}
