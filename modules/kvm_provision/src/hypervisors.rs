//! `hypervisors` + `placement`: read with the VMs into the request's typed
//! [`Placement`], so that each VM without a `uri` of its own is given one of the hypervisors
//! (see `virtfarm_libvirt::placement`).

use ansible_module::{ArgumentErrors, Params};
use virtfarm_libvirt::placement::Strategy;
use virtfarm_libvirt::provision::{Placement, VmDefinition};

/// The module options this file reads, for the argument spec.
pub fn options() -> [ansible_module::Opt; 2] {
    use ansible_module::{Opt, Type};
    [
        Opt::list("hypervisors").elements(Type::Str),
        Opt::str("placement").choices(Strategy::NAMES).default("round_robin"),
    ]
}

/// The placement asked for: `Some(None)` without `hypervisors`, `None` once `errors` names
/// every rule broken. `vms`, if they could be read, must each have a `uri` when pinned.
pub fn placement(
    params: &Params,
    vms: Option<&[VmDefinition]>,
    errors: &mut ArgumentErrors,
) -> Option<Option<Placement>> {
    if !params.is_set("hypervisors") {
        return Some(None);
    }
    let hypervisors: Option<Vec<String>> =
        errors.check(params.list_of_str("hypervisors")).map(|uris| uris.into_iter().map(str::to_string).collect());
    if hypervisors.as_ref().is_some_and(Vec::is_empty) {
        errors.push("hypervisors: give at least one libvirt URI");
    }
    if params.is_set("uri") {
        errors.push("uri: cannot be combined with hypervisors (give uri in a vms item to pin that VM)");
    }
    let strategy = errors.check(params.str("placement")).and_then(Strategy::parse);
    if let (Some(Strategy::Pinned), Some(vms)) = (strategy, vms) {
        if let Some(index) = vms.iter().position(|vm| vm.own_uri.is_none()) {
            errors.push(format!("vms[{index}].uri: required with placement: pinned"));
        }
    }
    Some(Some(Placement { hypervisors: hypervisors?, strategy: strategy? }))
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
            let reply = ansible_module::execute_parsed(&crate::definition::spec(), args, crate::parse, crate::run);
            assert_eq!(reply["failed"], true, "{reply}");
            assert!(reply["msg"].as_str().unwrap_or_default().contains(says), "{says}: {reply}");
        }
    }
}
