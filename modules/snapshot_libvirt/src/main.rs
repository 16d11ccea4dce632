//! `virtfarm.libvirt.snapshot_libvirt`: internal and external snapshots of one domain or a
//! group: create, list, revert, delete. Documentation: `collection/plugins/modules/snapshot_libvirt.yml`.

mod backing;
mod request;
mod run;

use ansible_module::{ArgSpec, ArgumentErrors, Diff, Error, Module, Opt, Params, Response, Type};
use serde_json::{json, Value};
use virtfarm_libvirt::snapshot::CreateOptions;

use request::{AfterRevert, Domain, Request, State};

fn spec() -> ArgSpec {
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
                Opt::str("wait").choices(&["none", "agent", "lease", "ssh"]).default("none"),
                Opt::int("timeout").default(300),
            ]))
            .apply_defaults(),
    ])
    .mutually_exclusive(&["name", "names", "placement"])
    .mutually_exclusive(&["placement", "uri"])
    .required_one_of(&["name", "names", "placement"])
    .supports_check_mode()
}

/// Second stage of parsing: typed, checked, in domain terms; every bad option is reported.
fn to_request(params: &Params) -> Result<Result<Request, ArgumentErrors>, Error> {
    let uri = params.str("uri")?;
    let on_uri = |name: &str| Domain { name: name.to_string(), uri: uri.to_string() };
    let (domains, domains_option) = if let Some(name) = params.opt_str("name")? {
        (Ok(vec![on_uri(name)]), "name")
    } else if let Some(placement) = params.get("placement").and_then(Value::as_object) {
        (request::placed_domains(placement), "placement")
    } else {
        (Ok(params.list_of_str("names")?.into_iter().map(on_uri).collect()), "names")
    };
    let after = params.dict("after_revert")?;
    let mut errors = ArgumentErrors::new();
    let state = errors.check(State::parse(params.str("state")?));
    let domains = errors.check(domains.and_then(|domains| {
        request::check_domains(domains_option, &domains)?;
        Ok(domains)
    }));
    let mode = errors.check(request::parse_mode(params.str("mode")?, params.opt_str("volume_path")?));
    let snapshot = params.opt_str("snapshot")?.map(str::to_string);
    if let (Some(mode), Some(domains)) = (&mode, &domains) {
        errors.check(request::check_one_host(mode, domains));
    }
    if let (Some(state), Some(mode)) = (state, &mode) {
        errors.check(request::check_snapshot(state, mode, snapshot.as_deref()));
    }
    let requested = errors.check(request::parse_type(params.str("type")?));
    let shutdown_first = match params.bool("shutdown_first")? {
        true => errors.check(request::seconds("shutdown_timeout", params.int("shutdown_timeout")?)).map(Some),
        false => Some(None),
    };
    let wait = errors.check(request::parse_wait(after.str("wait")?));
    let wait_timeout = errors.check(request::seconds("after_revert.timeout", after.int("timeout")?));
    let request = match (state, domains, mode, requested, shutdown_first, wait, wait_timeout) {
        (Some(state), Some(domains), Some(mode), Some(requested), Some(shutdown_first), Some(wait), Some(timeout)) => {
            Request {
                domains,
                domains_option,
                mode,
                snapshot,
                state,
                create: CreateOptions {
                    requested,
                    memory: params.opt_bool("memory")?,
                    quiesce: params.bool("quiesce")?,
                },
                shutdown_first,
                after_revert: AfterRevert { sync_clock: after.bool("sync_clock")?, wait, timeout },
            }
        }
        // Each missing value added its error.
        _ => return Ok(Err(errors)),
    };
    Ok(errors.finish(request))
}

fn snapshot_libvirt(module: &Module) -> Result<Response, Error> {
    let request = match to_request(module.params())? {
        Ok(request) => request,
        Err(errors) => return Ok(errors.to_response()),
    };
    let check_mode = module.context().check_mode;
    match run::run(&request, check_mode) {
        Ok(report) => {
            let mut response = Response::new().changed(report.changed);
            for (key, value) in report.fields {
                response = response.with(key, value);
            }
            if module.context().diff {
                response = response.diff(Diff::new(report.diff.0, report.diff.1));
            }
            Ok(response)
        }
        Err(failure) => {
            let mut response = Response::fail(failure.msg).changed(failure.changed);
            for (key, value) in failure.fields {
                response = response.with(key, value);
            }
            Ok(response.with("snapshot", json!(request.snapshot)))
        }
    }
}

fn main() {
    ansible_module::run(spec(), snapshot_libvirt)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(args: serde_json::Value) -> serde_json::Value {
        ansible_module::execute(&spec(), args, snapshot_libvirt)
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
    fn the_protocol_rules_come_from_the_spec() {
        let reply = reply(json!({"name": "a", "names": ["b"], "snapshot": "s"}));
        assert!(reply["msg"].as_str().unwrap().contains("mutually exclusive"), "{reply}");
        let reply = super::tests::reply(json!({"snapshot": "s", "type": "both"}));
        assert_eq!(reply["failed"], true, "{reply}");
    }
}
