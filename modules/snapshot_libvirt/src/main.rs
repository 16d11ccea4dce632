//! `virtfarm.libvirt.snapshot_libvirt`: internal and external snapshots of one domain or a
//! group: create, list, revert, delete. Documentation: `collection/plugins/modules/snapshot_libvirt.yml`.

mod backing;
mod request;
mod run;

use ansible_module::{ArgSpec, Diff, Error, Module, Opt, Params, Response, Type};
use serde_json::{json, Value};
use virtfarm_libvirt::snapshot::CreateOptions;

use request::{AfterRevert, BadOption, Domain, Request, State};

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

/// Second stage of parsing: typed, checked, in domain terms.
fn to_request(params: &Params) -> Result<Result<Request, BadOption>, Error> {
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
    let state = State::parse(params.str("state")?);
    let requested = request::parse_type(params.str("type")?);
    let wait = request::parse_wait(after.str("wait")?);
    let shutdown_timeout = request::seconds("shutdown_timeout", params.int("shutdown_timeout")?);
    let wait_timeout = request::seconds("after_revert.timeout", after.int("timeout")?);
    let snapshot = params.opt_str("snapshot")?.map(str::to_string);
    let shutdown_first = params.bool("shutdown_first")?;
    let memory = params.opt_bool("memory")?;
    let quiesce = params.bool("quiesce")?;
    let sync_clock = after.bool("sync_clock")?;
    let mode = request::parse_mode(params.str("mode")?, params.opt_str("volume_path")?);
    let build = move || -> Result<Request, BadOption> {
        let state = state?;
        let domains = domains?;
        request::check_domains(domains_option, &domains)?;
        let mode = mode?;
        request::check_one_host(&mode, &domains)?;
        request::check_snapshot(state, &mode, snapshot.as_deref())?;
        Ok(Request {
            domains,
            domains_option,
            mode,
            snapshot,
            state,
            create: CreateOptions { requested: requested?, memory, quiesce },
            shutdown_first: if shutdown_first { Some(shutdown_timeout?) } else { None },
            after_revert: AfterRevert { sync_clock, wait: wait?, timeout: wait_timeout? },
        })
    };
    Ok(build())
}

fn snapshot_libvirt(module: &Module) -> Result<Response, Error> {
    let request = match to_request(module.params())? {
        Ok(request) => request,
        Err(bad) => return Ok(Response::fail(bad.to_string())),
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
    fn the_protocol_rules_come_from_the_spec() {
        let reply = reply(json!({"name": "a", "names": ["b"], "snapshot": "s"}));
        assert!(reply["msg"].as_str().unwrap().contains("mutually exclusive"), "{reply}");
        let reply = super::tests::reply(json!({"snapshot": "s", "type": "both"}));
        assert_eq!(reply["failed"], true, "{reply}");
    }
}
