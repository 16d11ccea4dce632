//! The module's options: the argument spec, and the second stage of parsing that turns
//! validated params into the library's typed request.

use std::time::Duration;

use ansible_module::{ArgSpec, ArgumentErrors, Opt, Params, Type};
use virtfarm_libvirt::snapshot::orchestrate::{
    check_domains, check_snapshot, AfterRevert, Domain, Mode, Request, RequestError,
};
use virtfarm_libvirt::snapshot::CreateOptions;
use virtfarm_libvirt::validate::{self, ZeroSeconds, WAIT_CHOICES};

use crate::request::{bad, placed_domains, Call};

/// The options, with the rules between them.
pub fn spec() -> ArgSpec {
    ArgSpec::new([
        Opt::str("name").aliases(&["domain"]),
        Opt::list("names").elements(Type::Str),
        Opt::dict("placement"),
        Opt::str("uri").default("qemu:///system"),
        Opt::str("snapshot"),
        Opt::str("mode").choices(&["snapshot", "backing_file"]).default("snapshot"),
        Opt::path("volume_path"),
        Opt::str("state").choices(&["present", "absent", "reverted", "list"]).default("present"),
        Opt::str("type").choices(&["auto", "internal", "external"]).default("auto"),
        Opt::bool("memory"),
        Opt::bool("quiesce").default(true),
        Opt::bool("shutdown_first").default(false),
        Opt::int("shutdown_timeout").default(120),
        Opt::dict("after_revert")
            .suboptions(ArgSpec::new([
                Opt::bool("sync_clock").default(true),
                // `address` is for guest_provision, whose next step checks the guest itself.
                Opt::str("wait").choices(&WAIT_CHOICES[..4]).default("none"),
                Opt::int("timeout").default(300),
            ]))
            .apply_defaults(),
    ])
    .mutually_exclusive(&["name", "names", "placement"])
    .mutually_exclusive(&["placement", "uri"])
    .required_one_of(&["name", "names", "placement"])
    .supports_check_mode()
}

/// Second stage of parsing: typed, checked, in domain terms; every bad option is reported,
/// those the spec refused by the spec alone.
pub fn to_call(params: &Params) -> Result<Call, ArgumentErrors> {
    ArgumentErrors::collect(|errors| read_call(params, errors))
}

/// The call; `None` once `errors` names what is wrong.
fn read_call(params: &Params, errors: &mut ArgumentErrors) -> Option<Call> {
    let uri = errors.check(params.str("uri"));
    let on_uri = |name: &str| uri.map(|uri| Domain { name: name.to_string(), uri: uri.to_string() });
    let after = errors.check(params.dict("after_revert"));
    let state =
        errors.check(params.str("state")).and_then(|state| errors.check(state.parse().map_err(|e| bad("state", e))));
    let name = errors.check(params.opt_str("name"));
    let placement = errors.check(params.opt_dict("placement"));
    let names = errors.check(params.list_of_str("names"));
    let (domains, domains_option) = match (name, placement, names) {
        (Some(Some(name)), _, _) => (on_uri(name).map(|domain| vec![domain]), "name"),
        (_, Some(Some(placement)), _) => {
            let placement = placement.as_value().as_object().cloned().unwrap_or_default();
            (errors.check(placed_domains(&placement)), "placement")
        }
        (Some(None), Some(None), Some(names)) => (names.into_iter().map(on_uri).collect(), "names"),
        // The spec named what is wrong with them.
        _ => (None, "name"),
    };
    let domains = domains.and_then(|domains| {
        errors.check(check_domains(&domains).map_err(|e| bad(domains_option, e))).map(|()| domains)
    });
    let mode = match (errors.check(params.str("mode")), errors.check(params.opt_str("volume_path"))) {
        (Some(mode), Some(volume_path)) => errors.check(Mode::new(mode, volume_path).map_err(|e| match e {
            RequestError::NotAChoice { .. } => bad("mode", e),
            _ => bad("volume_path", e),
        })),
        _ => None,
    };
    let snapshot = errors.check(params.opt_str("snapshot")).map(|snapshot| snapshot.map(str::to_string));
    if let (Some(mode), Some(domains)) = (&mode, &domains) {
        errors.check(mode.check_hosts(domains).map_err(|e| bad(domains_option, e)));
    }
    if let (Some(state), Some(mode), Some(snapshot)) = (state, &mode, &snapshot) {
        errors.check(check_snapshot(state, mode, snapshot.as_deref()).map_err(|e| bad("snapshot", e)));
    }
    let requested =
        errors.check(params.str("type")).and_then(|kind| errors.check(kind.parse().map_err(|e| bad("type", e))));
    let shutdown_first = match errors.check(params.bool("shutdown_first")) {
        Some(true) => errors.check(params.int_checked("shutdown_timeout", seconds)).map(Some),
        Some(false) => Some(None),
        None => None,
    };
    let wait = after
        .as_ref()
        .and_then(|after| errors.check(after.str("wait").and_then(|wait| after.checked("wait", wait, validate::wait))));
    let timeout = after.as_ref().and_then(|after| errors.check(after.int_checked("timeout", seconds)));
    let sync_clock = after.as_ref().and_then(|after| errors.check(after.bool("sync_clock")));
    let memory = errors.check(params.opt_bool("memory"));
    let quiesce = errors.check(params.bool("quiesce"));
    let request = Request {
        domains: domains?,
        mode: mode?,
        snapshot: snapshot?,
        state: state?,
        create: CreateOptions { requested: requested?, memory: memory?, quiesce: quiesce? },
        shutdown_first: shutdown_first?,
        after_revert: AfterRevert { sync_clock: sync_clock?, wait: wait?, timeout: timeout? },
    };
    Some(Call { request, domains_option })
}

/// A duration in seconds: each of this module's bounds a wait that must happen.
fn seconds(value: i64) -> Result<Duration, validate::Invalid> {
    validate::timeout(value, ZeroSeconds::Refused)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn reply(args: serde_json::Value) -> serde_json::Value {
        ansible_module::execute_parsed(&spec(), args, |module| to_call(module.params()), crate::snapshot_libvirt)
    }

    #[test]
    fn bad_input_fails_naming_the_option_before_any_connection() {
        let cases = [
            (json!({"name": "web1", "snapshot": "a/b"}), "snapshot: "),
            (json!({"name": "web1", "snapshot": ".."}), "snapshot: "),
            (json!({"name": "web1", "snapshot": "bell\u{7}"}), "snapshot: "),
            (json!({"name": "web1"}), "snapshot: is required"),
            (json!({"name": "web1", "mode": "backing_file"}), "volume_path: "),
            (json!({"names": ["a", "a"], "snapshot": "s"}), "names: "),
            (json!({"names": [], "snapshot": "s"}), "names: names no domain"),
            (json!({"name": "web1", "snapshot": " "}), "snapshot: must not be blank"),
            (json!({"placement": {"a": "qemu:///system", "b": 1}, "snapshot": "s"}), "placement: "),
            (
                json!({"placement": {"a": "qemu:///system", "b": "qemu+ssh://h/system"}, "mode": "backing_file", "volume_path": "/i"}),
                "placement: spans several URIs",
            ),
            (
                json!({"name": "web1", "snapshot": "s", "shutdown_first": true, "shutdown_timeout": -1}),
                "shutdown_timeout: ",
            ),
        ];
        for (args, expected) in cases {
            let reply = reply(args.clone());
            assert_eq!(reply["failed"], true, "{args}: {reply}");
            assert!(reply["msg"].as_str().unwrap().starts_with(expected), "{args}: {reply}");
        }
    }

    #[test]
    fn every_bad_option_is_named_at_once() {
        let reply = reply(json!({
            "names": ["a", "a"], "mode": "backing_file", "shutdown_first": true, "shutdown_timeout": -1,
            "after_revert": {"timeout": 0},
        }));
        let errors: Vec<&str> =
            reply["argument_errors"].as_array().into_iter().flatten().filter_map(|e| e.as_str()).collect();
        let named: Vec<&str> = errors.iter().map(|e| e.split(':').next().unwrap_or_default()).collect();
        assert_eq!(named, ["names", "volume_path", "shutdown_timeout", "after_revert.timeout"], "{reply}");
        assert_eq!(reply["msg"], errors.join("; "));
    }

    #[test]
    fn the_specs_errors_and_the_modules_own_come_in_one_result() {
        let reply = reply(json!({
            "names": ["a", "a"], "snapshot": "s", "type": "both", "colour": 1, "shutdown_first": true,
            "shutdown_timeout": -1,
            "after_revert": {"wait": "forever", "timeout": 0},
        }));
        let errors: Vec<&str> =
            reply["argument_errors"].as_array().into_iter().flatten().filter_map(|e| e.as_str()).collect();
        assert_eq!(errors.len(), 6, "{reply}");
        assert!(errors[0].contains("module: colour."), "{reply}");
        assert!(errors[1].starts_with("value of type must be one of"), "{reply}");
        assert!(errors[2].starts_with("value of after_revert.wait must be one of"), "{reply}");
        let named: Vec<&str> = errors[3..].iter().map(|e| e.split(':').next().unwrap_or_default()).collect();
        assert_eq!(named, ["names", "shutdown_timeout", "after_revert.timeout"], "{reply}");
    }

    #[test]
    fn the_protocol_rules_come_from_the_spec() {
        let reply = reply(json!({"name": "a", "names": ["b"], "snapshot": "s"}));
        assert!(reply["msg"].as_str().unwrap().contains("mutually exclusive"), "{reply}");
        let reply = super::tests::reply(json!({"snapshot": "s", "type": "both"}));
        assert_eq!(reply["failed"], true, "{reply}");
    }
}
