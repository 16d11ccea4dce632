//! `hypervisors` + `placement`: each VM without its own `uri` is given one of the hypervisors
//! before anything is applied (see `virtfarm_libvirt::placement`). A VM that cannot be placed
//! fails on its own; the others go ahead.

use ansible_module::{ArgumentErrors, Params};
use anyhow::Result;
use serde_json::{Map, Value};
use virtfarm_libvirt::placement::{place, survey, Demand, Strategy};
use virtfarm_libvirt::Connections;

use crate::apply::Outcome;
use crate::definition::{DomainSource, Request, State};

/// The module options this file reads, for the argument spec.
pub fn options() -> [ansible_module::Opt; 2] {
    use ansible_module::{Opt, Type};
    [
        Opt::list("hypervisors").elements(Type::Str),
        Opt::str("placement").choices(Strategy::NAMES).default("round_robin"),
    ]
}

/// The placement rules, checked with the other arguments: each broken one is added to
/// `errors`. The VMs of `request`, if they could be read, must each have a `uri` when pinned.
pub fn check(params: &Params, request: Option<&Request>, errors: &mut ArgumentErrors) {
    if !params.is_set("hypervisors") {
        return;
    }
    if errors.check(params.list_of_str("hypervisors")).is_some_and(|uris| uris.is_empty()) {
        errors.push("hypervisors: give at least one libvirt URI");
    }
    if params.is_set("uri") {
        errors.push("uri: cannot be combined with hypervisors (give uri in a vms item to pin that VM)");
    }
    let pinned = errors.check(params.str("placement")).and_then(Strategy::parse) == Some(Strategy::Pinned);
    if let (true, Some(request)) = (pinned, request) {
        if let Some(index) = pinned_uris(params, request.vms.len()).iter().position(Option::is_none) {
            errors.push(format!("vms[{index}].uri: required with placement: pinned"));
        }
    }
}

/// Sets `uri` on every VM of `request` that did not give one and removes the VMs that cannot
/// be placed, returned as failed outcomes with their position in `vms`, in ascending order.
/// Nothing happens without `hypervisors`; they are opened in `connections`, where the VMs are
/// then applied. The arguments have passed [`check`].
pub fn assign(params: &Params, request: &mut Request, connections: &mut Connections) -> Result<Vec<(usize, Outcome)>> {
    let uris: Vec<String> = params.list_of_str("hypervisors")?.into_iter().map(str::to_string).collect();
    if uris.is_empty() {
        return Ok(Vec::new());
    }
    let strategy = Strategy::parse(params.str("placement")?).unwrap_or(Strategy::RoundRobin);
    let pinned = pinned_uris(params, request.vms.len());
    let demands: Vec<Demand> =
        request.vms.iter().zip(pinned).map(|(vm, pinned)| demand(vm, request.state, pinned)).collect();
    connections.open(uris.iter().map(String::as_str));
    let placed = place(&demands, &survey(connections, &uris), strategy);
    let mut refused = Vec::new();
    let mut kept = Vec::new();
    for (index, (mut vm, placed)) in std::mem::take(&mut request.vms).into_iter().zip(placed).enumerate() {
        match placed {
            Ok(placed) => {
                vm.uri = placed.uri;
                kept.push(vm);
            }
            Err(e) => refused.push((index, Outcome::refused(&vm.name, e.to_string()))),
        }
    }
    request.vms = kept;
    Ok(refused)
}

/// The `uri` each `vms` item gave itself, by position (items are parsed in order).
fn pinned_uris(params: &Params, count: usize) -> Vec<Option<String>> {
    let items = params.get("vms").and_then(Value::as_array);
    (0..count).map(|i| items.and_then(|items| items.get(i)).and_then(Value::as_object).and_then(item_uri)).collect()
}

fn item_uri(item: &Map<String, Value>) -> Option<String> {
    item.get("uri").and_then(Value::as_str).map(str::to_string)
}

/// What the VM needs; a VM to remove needs nothing but to be found.
fn demand(vm: &crate::definition::VmDefinition, state: State, pinned: Option<String>) -> Demand {
    let spec = match &vm.domain {
        DomainSource::Generated(spec) if state != State::Absent => Some(spec),
        _ => None,
    };
    Demand {
        name: vm.name.clone(),
        memory_mib: spec.map_or(0, |s| s.memory_mib),
        arch: spec.map(|s| s.arch.clone()),
        domain_type: if state == State::Absent { None } else { vm.domain_type.clone() },
        pinned,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn conflicting_or_missing_uris_are_refused_before_any_connection() {
        let cases = [
            (
                json!({"hypervisors": ["test:///default"], "uri": "test:///default", "name": "a", "image": "b"}),
                "uri: cannot be combined",
            ),
            (
                json!({"hypervisors": ["test:///default"], "placement": "pinned", "vms": [{"name": "a", "uri": "test:///default"}, {"name": "b"}], "image": "b"}),
                "vms[1].uri: required with placement: pinned",
            ),
            (json!({"hypervisors": [], "name": "a", "image": "b"}), "hypervisors: give at least one"),
            (
                json!({"hypervisors": [], "name": "a", "image": "b", "vcpus": "many"}),
                "argument 'vcpus' is of type <class 'str'> and we were unable to convert to int: \"'many'\" \
                 cannot be converted to an int; hypervisors: give at least one",
            ),
            (
                json!({"hypervisors": ["test:///default"], "placement": "anywhere", "name": "a", "image": "b"}),
                "placement",
            ),
        ];
        for (args, says) in cases {
            let reply =
                ansible_module::execute_parsed(&crate::definition::spec(), args, crate::parse, crate::provision);
            assert_eq!(reply["failed"], true, "{reply}");
            assert!(reply["msg"].as_str().unwrap_or_default().contains(says), "{says}: {reply}");
        }
    }
}
