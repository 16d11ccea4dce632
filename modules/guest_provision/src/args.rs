//! The module's options: the argument spec, and the second stage of parsing that turns
//! validated params into one typed [`Step`].

use std::path::Path;
use std::time::Duration;

use ansible_module::{ArgSpec, ArgumentErrors, Opt, Params, Type};
use anyhow::{anyhow, Result};
use serde_json::json;
use virtfarm_libvirt::power::StopPolicy;
use virtfarm_libvirt::snapshot::cache::phases::{self, PhaseQuery};
use virtfarm_libvirt::snapshot::cache::{CacheNames, CacheSteps};
use virtfarm_libvirt::validate::{self, ZeroSeconds, WAIT_CHOICES};
use virtfarm_libvirt::wait::Readiness;

const STATES: [&str; 6] = ["phases", "started", "reachable", "cache_prepared", "cache_saved", "stopped"];

/// The options, with the rules between them.
pub fn spec() -> ArgSpec {
    ArgSpec::new([
        Opt::str("state").required().choices(&STATES),
        Opt::str("name").aliases(&["vm_name"]),
        Opt::str("uri").default("qemu:///system"),
        Opt::path("lookup_dir").aliases(&["phases_lookup_dir_path"]),
        Opt::path("relative_to"),
        Opt::str("platform_name"),
        Opt::str("target_name"),
        Opt::list("allowed_phases").elements(Type::Str).default(json!(phases::STEPS)),
        Opt::str("project_id"),
        Opt::str("revision").default("auto").aliases(&["project_revision", "revision_id"]),
        Opt::raw("revision_vars").default(json!({})),
        Opt::bool("prune").default(true),
        Opt::bool("quiesce").default(true),
        Opt::str("wait").choices(&WAIT_CHOICES).default("lease"),
        Opt::int("timeout").default(120).aliases(&["connection_timeout"]),
        Opt::str("host"),
        Opt::int("port").default(22),
        Opt::str("banner"),
        Opt::int("retry_count").default(10),
        Opt::int("retry_delay").default(5),
    ])
    .required_if("state", "phases", &["lookup_dir"])
    .required_if("state", "reachable", &["host"])
    .required_if("state", "started", &["name"])
    .required_if("state", "cache_prepared", &["name", "project_id"])
    .required_if("state", "cache_saved", &["name", "project_id"])
    .required_if("state", "stopped", &["name"])
    .supports_check_mode()
}

/// One step, its parameters checked before anything is touched.
pub enum Step {
    Phases(PhaseQuery),
    Reachable {
        host: String,
        port: u16,
        banner: String,
        timeout: Duration,
    },
    /// Started, then ready as asked (`None`: not waited for).
    Started(Option<Readiness>),
    CachePrepared {
        names: CacheNames,
        allowed: CacheSteps,
        prune: bool,
    },
    CacheSaved {
        names: CacheNames,
        quiesce: bool,
    },
    Stopped(StopPolicy),
}

/// Second stage of parsing: every bad parameter is reported, those the spec refused by the
/// spec alone.
pub fn to_step(params: &Params) -> Result<Step, ArgumentErrors> {
    ArgumentErrors::collect(|errors| read_step(params, errors))
}

/// The step; `None` once `errors` names what is wrong. Every value is read before any is
/// given up on, so that each bad one is named.
fn read_step(params: &Params, errors: &mut ArgumentErrors) -> Option<Step> {
    Some(match errors.check(params.str("state"))? {
        "phases" => Step::Phases(phase_query(params, errors)?),
        "reachable" => {
            let port = errors.check(params.int_checked("port", |port| within::<u16>(port, "between 0 and 65535")));
            let host = errors.check(params.str("host"));
            let banner = errors.check(params.opt_str("banner"));
            let timeout = errors.check(seconds(params, "timeout"));
            let port = port?;
            let banner = banner?.unwrap_or(if port == 22 { "SSH-" } else { "" }).to_string();
            Step::Reachable { host: host?.to_string(), port, banner, timeout: timeout? }
        }
        "started" => {
            let wait = errors.check(params.str("wait").and_then(|wait| params.checked("wait", wait, validate::wait)));
            let timeout = errors.check(seconds(params, "timeout"));
            let (wait, timeout) = (wait?, timeout?);
            Step::Started(wait.map(|signal| Readiness { signal, timeout }))
        }
        "cache_prepared" => {
            let names = cache_names(params, errors);
            let allowed = errors.check(allowed_phases(params));
            let prune = errors.check(params.bool("prune"));
            Step::CachePrepared { names: names?, allowed: CacheSteps::allowed_by(&allowed?), prune: prune? }
        }
        "cache_saved" => {
            let names = cache_names(params, errors);
            let quiesce = errors.check(params.bool("quiesce"));
            Step::CacheSaved { names: names?, quiesce: quiesce? }
        }
        "stopped" => {
            let retry_count =
                errors.check(params.int_checked("retry_count", |count| within::<u32>(count, "0 or more")));
            let retry_delay = errors.check(seconds(params, "retry_delay"));
            let (retry_count, retry_delay) = (retry_count?, retry_delay?);
            // Asked every `retry_delay`, forced after `retry_count` requests.
            let timeout = retry_delay.saturating_mul(retry_count.max(1));
            Step::Stopped(StopPolicy { timeout, ask_every: retry_delay, prefer_agent: true })
        }
        other => {
            errors.push(format!("state: unknown step {other}"));
            return None;
        }
    })
}

/// The `phases` step's query; `None` once `errors` names every bad value.
fn phase_query(params: &Params, errors: &mut ArgumentErrors) -> Option<PhaseQuery> {
    let lookup_dir = errors.check(params.str("lookup_dir")).map(Path::new);
    let relative_to = errors.check(params.opt_str("relative_to"));
    let platform_name = errors.check(directory(params, "platform_name"));
    let target_name = errors.check(directory(params, "target_name"));
    let allowed = errors.check(allowed_phases(params));
    let revision = errors.check(params.str("revision"));
    let lookup_dir = match (lookup_dir?, relative_to?) {
        (dir, Some(base)) if dir.is_relative() => Path::new(base).join(dir),
        (dir, _) => dir.to_path_buf(),
    };
    Some(PhaseQuery {
        lookup_dir,
        platform_name: platform_name?,
        target_name: target_name?,
        allowed: allowed?.into_iter().map(str::to_string).collect(),
        revision: Some(revision?).filter(|r| *r != "auto").map(str::to_string),
        revision_vars: params.get("revision_vars").cloned().unwrap_or(json!({})),
    })
}

/// A directory below `lookup_dir` (a platform's, a target's); empty is none.
fn directory(params: &Params, name: &str) -> Result<Option<String>, ansible_module::Error> {
    let given = params.opt_str(name)?.filter(|dir| !dir.is_empty());
    given.map(|dir| params.checked(name, dir, validate::directory_name).map(str::to_string)).transpose()
}

/// `allowed_phases`, each one of the old role's step names.
fn allowed_phases(params: &Params) -> Result<Vec<&str>> {
    let allowed = params.list_of_str("allowed_phases")?;
    phases::check_steps(&allowed).map_err(|e| anyhow!("allowed_phases: {e}"))?;
    Ok(allowed)
}

/// The project's snapshot names, each a valid snapshot name; `None` once `errors` names
/// every parameter at fault.
fn cache_names(params: &Params, errors: &mut ArgumentErrors) -> Option<CacheNames> {
    let project = errors.check(params.str("project_id"));
    let revision = errors.check(params.str("revision")).filter(|revision| {
        let auto = *revision == "auto";
        if auto {
            errors.push("revision: give the revision returned by state=phases, not 'auto'");
        }
        !auto
    });
    let names = CacheNames::new(project?, revision.unwrap_or_default());
    errors.check(params.checked("project_id", names.clean.as_str(), validate::snapshot_name))?;
    revision?;
    // The init snapshot's name adds the revision to a project that is fine on its own.
    errors.check(validate::snapshot_name(&names.init).map_err(|e| anyhow!("project_id or revision: {e}")))?;
    Some(names)
}

/// A timeout; 0 means look once.
fn seconds(params: &Params, name: &str) -> Result<Duration, ansible_module::Error> {
    params.int_checked(name, |value| validate::timeout(value, ZeroSeconds::NoWait))
}

/// `value` if it fits `T`, whose `range` this says in words.
fn within<T: TryFrom<i64>>(value: i64, range: &str) -> Result<T, String> {
    T::try_from(value).map_err(|_| format!("must be {range}, got {value}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn reply(args: Value) -> Value {
        ansible_module::execute_parsed(
            &spec(),
            args,
            |module| to_step(module.params()),
            |module, step| crate::guest_provision(module, step).map_err(|e| format!("{e:#}")),
        )
    }

    fn failure(args: Value) -> String {
        let reply = reply(args);
        assert_eq!(reply["failed"], true, "{reply}");
        reply["msg"].as_str().unwrap().to_string()
    }

    #[test]
    fn bad_arguments_fail_naming_the_parameter_before_touching_libvirt() {
        let unreachable = "qemu+unix:///system?socket=/nonexistent";
        let cases = [
            (
                json!({"state": "cache_prepared", "name": "vm", "uri": unreachable, "project_id": "p", "revision": "auto"}),
                "revision",
            ),
            (
                json!({"state": "cache_saved", "name": "vm", "uri": unreachable, "project_id": "a/b", "revision": "r1"}),
                "project_id",
            ),
            (
                json!({"state": "cache_prepared", "name": "vm", "uri": unreachable, "project_id": "p", "revision": "r",
                    "allowed_phases": ["main", "restore everything"]}),
                "allowed_phases",
            ),
            (json!({"state": "stopped", "name": "vm", "uri": unreachable, "retry_delay": -1}), "retry_delay"),
            (json!({"state": "reachable", "host": "localhost", "port": 70000}), "port"),
            (
                json!({"state": "phases", "lookup_dir": "/nonexistent", "target_name": "..", "platform_name": "p"}),
                "target_name",
            ),
            (json!({"state": "started"}), "name"),
            (json!({"state": "started", "name": "vm", "uri": unreachable}), "uri"),
        ];
        for (args, parameter) in cases {
            let msg = failure(args.clone());
            assert!(msg.contains(parameter), "{args}: {msg}");
        }
    }

    #[test]
    fn every_bad_parameter_of_a_step_is_named_at_once() {
        let reply = reply(json!({"state": "reachable", "host": "localhost", "port": 70000, "timeout": -1}));
        assert_eq!(
            reply["argument_errors"],
            json!(["port: must be between 0 and 65535, got 70000", "timeout: must be 0 or more seconds, got -1"]),
            "{reply}"
        );
        let msg = failure(json!({"state": "cache_prepared", "name": "vm", "project_id": "p", "revision": "auto",
                                 "allowed_phases": ["main", "restore everything"]}));
        assert!(msg.contains("revision: ") && msg.contains("allowed_phases: "), "{msg}");
        let msg = failure(json!({"state": "phases", "lookup_dir": "/srv/phases", "platform_name": "..",
                                 "target_name": "a/b"}));
        assert!(msg.starts_with("platform_name: \"..\" is not a plain directory name"), "{msg}");
        assert!(msg.contains("; target_name: \"a/b\" is not"), "{msg}");
    }

    #[test]
    fn the_specs_errors_and_the_steps_own_come_in_one_result() {
        let reply = reply(json!({"state": "reachable", "host": "localhost", "port": 70000, "wait": "forever"}));
        assert_eq!(
            reply["argument_errors"],
            json!([
                "value of wait must be one of: none, lease, agent, ssh, address, got: forever",
                "port: must be between 0 and 65535, got 70000",
            ]),
            "{reply}"
        );
        let reply =
            super::tests::reply(json!({"state": "cache_saved", "name": "vm", "project_id": "a/b", "revision": "auto",
                                 "quiesce": "maybe"}));
        let errors = reply["argument_errors"].as_array().cloned().unwrap_or_default();
        let named: Vec<&str> = errors.iter().filter_map(|e| e.as_str()?.split([':', ' ']).next()).collect();
        assert_eq!(named, ["argument", "revision", "project_id"], "{reply}");
        assert!(errors[0].as_str().unwrap_or_default().starts_with("argument 'quiesce'"), "{reply}");
    }

    #[test]
    fn phases_step_returns_files_revision_and_switches() {
        let root = std::env::temp_dir().join(format!("gp-main-{}", std::process::id()));
        std::fs::create_dir_all(root.join("provision_phases/debian")).unwrap();
        std::fs::write(root.join("provision_phases/init.yaml"), "- debug: msg=init\n").unwrap();
        std::fs::write(root.join("provision_phases/debian/main.yml"), "- debug: msg=main\n").unwrap();
        let reply = reply(json!({
            "state": "phases", "lookup_dir": "provision_phases", "relative_to": root, "platform_name": "debian",
            "allowed_phases": ["init", "main", "shutdown"], "_ansible_check_mode": true,
        }));
        assert_eq!(reply["changed"], false, "{reply}");
        assert_eq!(reply["files"]["init"], json!(root.join("provision_phases/init.yaml")));
        assert_eq!(reply["files"]["main"], json!(root.join("provision_phases/debian/main.yml")));
        assert_eq!(reply["files"]["dependencies"], Value::Null);
        assert_eq!((reply["startup"].clone(), reply["shutdown"].clone()), (json!(false), json!(true)));
        assert_eq!(reply["revision"].as_str().unwrap().len(), 16);
    }

    #[test]
    fn reachable_times_out_naming_host_and_port() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let msg = failure(json!({"state": "reachable", "host": "127.0.0.1", "port": port, "timeout": 1}));
        assert!(msg.contains(&format!("127.0.0.1:{port}")), "{msg}");
    }
}
