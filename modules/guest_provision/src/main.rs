//! `virtfarm.libvirt.guest_provision`: the steps of the cached VM lifecycle that the
//! `guest_provision` role runs between the user's phase files.
//!
//! Each `state` is one step: `phases` (controller side: which phase files, which cache
//! revision), `started`, `reachable`, `cache_prepared`, `cache_saved` and `stopped`.

mod cache;
mod phases;
mod steps;

use std::path::Path;
use std::time::Duration;

use ansible_module::{ArgSpec, ArgumentErrors, Module, Opt, Params, Response, Type};
use anyhow::{anyhow, bail, Context as _, Result};
use serde_json::json;
use virtfarm_libvirt::lock::{DomainLock, LockPolicy};
use virtfarm_libvirt::validate::{self, ZeroSeconds, WAIT_CHOICES};
use virtfarm_libvirt::wait::Signal;
use virtfarm_libvirt::{Hypervisor, Vm};

use cache::{CacheNames, ALLOWED_PHASES};
use phases::PhaseQuery;

const STATES: [&str; 6] = ["phases", "started", "reachable", "cache_prepared", "cache_saved", "stopped"];

fn spec() -> ArgSpec {
    ArgSpec::new([
        Opt::str("state").required().choices(&STATES),
        Opt::str("name").aliases(&["vm_name"]),
        Opt::str("uri").default("qemu:///system"),
        Opt::path("lookup_dir").aliases(&["phases_lookup_dir_path"]),
        Opt::path("relative_to"),
        Opt::str("platform_name"),
        Opt::str("target_name"),
        Opt::list("allowed_phases").elements(Type::Str).default(json!(ALLOWED_PHASES)),
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

fn main() {
    ansible_module::run_parsed(spec(), parse, |module, step| run(module, step).map_err(|e| format!("{e:#}")))
}

fn parse(module: &Module) -> Result<Step, ArgumentErrors> {
    ArgumentErrors::collect(|errors| Step::read(module.params(), errors))
}

/// One step, its parameters checked before anything is touched.
enum Step {
    Phases(PhaseQuery),
    Reachable { host: String, port: u16, banner: String, timeout: Duration },
    Started { wait: Option<Signal>, timeout: Duration },
    CachePrepared { names: CacheNames, allowed: Vec<String>, prune: bool },
    CacheSaved { names: CacheNames, quiesce: bool },
    Stopped { retry_count: u32, retry_delay: Duration },
}

impl Step {
    /// The step; `None` once `errors` names what is wrong. Every value is read before
    /// any is given up on, so that each bad one is named.
    fn read(params: &Params, errors: &mut ArgumentErrors) -> Option<Self> {
        Some(match errors.check(params.str("state"))? {
            "phases" => Step::Phases(errors.check(phase_query(params))?),
            "reachable" => {
                let port = errors.check(bounded::<u16>(params, "port", "between 0 and 65535"));
                let host = errors.check(params.str("host"));
                let banner = errors.check(params.opt_str("banner"));
                let timeout = errors.check(seconds(params, "timeout"));
                let port = port?;
                let banner = banner?.unwrap_or(if port == 22 { "SSH-" } else { "" }).to_string();
                Step::Reachable { host: host?.to_string(), port, banner, timeout: timeout? }
            }
            "started" => {
                let wait =
                    errors.check(params.str("wait")).and_then(|wait| errors.check(rule("wait", validate::wait(wait))));
                let timeout = errors.check(seconds(params, "timeout"));
                Step::Started { wait: wait?, timeout: timeout? }
            }
            "cache_prepared" => {
                let names = cache_names(params, errors);
                let allowed = errors.check(allowed_phases(params));
                let prune = errors.check(params.bool("prune"));
                let allowed = allowed?.into_iter().map(str::to_string).collect();
                Step::CachePrepared { names: names?, allowed, prune: prune? }
            }
            "cache_saved" => {
                let names = cache_names(params, errors);
                let quiesce = errors.check(params.bool("quiesce"));
                Step::CacheSaved { names: names?, quiesce: quiesce? }
            }
            "stopped" => {
                let retry_count = errors.check(bounded::<u32>(params, "retry_count", "0 or more"));
                let retry_delay = errors.check(seconds(params, "retry_delay"));
                Step::Stopped { retry_count: retry_count?, retry_delay: retry_delay? }
            }
            other => {
                errors.push(format!("state: unknown step {other}"));
                return None;
            }
        })
    }
}

fn run(module: &Module, step: Step) -> Result<Response> {
    let params = module.params();
    let check_mode = module.context().check_mode;
    // The domain, locked against other runs (kvm_provision, snapshot_libvirt, a second
    // lifecycle of the same VM) for as long as this step changes it; check mode takes no lock.
    let on_domain = || -> Result<(Hypervisor, Vm, Option<DomainLock>)> {
        let hypervisor = Hypervisor::open(params.str("uri")?).context("uri")?;
        let vm = hypervisor.vm(params.str("name")?).context("name")?;
        let lock = if check_mode { None } else { hypervisor.lock_vm(&vm, &LockPolicy::default())? };
        Ok((hypervisor, vm, lock))
    };
    match step {
        Step::Phases(query) => phases(&query),
        Step::Reachable { host, port, banner, timeout } => steps::reachable(&host, port, &banner, timeout),
        Step::Started { wait, timeout } => {
            let (hv, vm, _lock) = on_domain()?;
            steps::started(&hv, &vm, wait, timeout, check_mode)
        }
        Step::CachePrepared { names, allowed, prune } => {
            let (hv, vm, _lock) = on_domain()?;
            let allowed: Vec<&str> = allowed.iter().map(String::as_str).collect();
            steps::cache_prepared(&hv, &vm, &names, &allowed, prune, check_mode)
        }
        Step::CacheSaved { names, quiesce } => {
            let (hv, vm, _lock) = on_domain()?;
            steps::cache_saved(&hv, &vm, &names, quiesce, check_mode)
        }
        Step::Stopped { retry_count, retry_delay } => {
            let (_, vm, _lock) = on_domain()?;
            steps::stopped(&vm, retry_count, retry_delay, check_mode)
        }
    }
}

fn phase_query(params: &Params) -> Result<PhaseQuery> {
    let lookup_dir = Path::new(params.str("lookup_dir")?);
    let lookup_dir = match params.opt_str("relative_to")? {
        Some(base) if lookup_dir.is_relative() => Path::new(base).join(lookup_dir),
        _ => lookup_dir.to_path_buf(),
    };
    Ok(PhaseQuery {
        lookup_dir,
        platform_name: params.opt_str("platform_name")?.map(str::to_string),
        target_name: params.opt_str("target_name")?.map(str::to_string),
        allowed: allowed_phases(params)?.into_iter().map(str::to_string).collect(),
        revision: params.str("revision")?.to_string(),
        revision_vars: params.get("revision_vars").cloned().unwrap_or(json!({})),
    })
}

/// The `phases` step: nothing changes, the plan is returned for the role to follow.
fn phases(query: &PhaseQuery) -> Result<Response> {
    let plan = phases::plan(query)?;
    let files: serde_json::Map<String, serde_json::Value> =
        plan.files.iter().map(|(phase, file)| (phase.to_string(), json!(file.as_deref().map(display)))).collect();
    let allows = |step: &str| query.allowed.iter().any(|a| a == step);
    Ok(Response::new()
        .changed(false)
        .with("files", files)
        .with("searched", plan.searched.iter().map(|d| display(d)).collect::<Vec<_>>())
        .with("revision", plan.revision)
        .with("startup", allows("startup"))
        .with("shutdown", allows("shutdown")))
}

fn display(path: &Path) -> String {
    path.display().to_string()
}

/// `allowed_phases`, each checked against the old role's step names.
fn allowed_phases(params: &Params) -> Result<Vec<&str>> {
    let allowed = params.list_of_str("allowed_phases")?;
    if let Some(unknown) = allowed.iter().find(|a| !ALLOWED_PHASES.contains(a)) {
        bail!("allowed_phases: unknown step {unknown:?}; known steps: {}", ALLOWED_PHASES.join(", "));
    }
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
    errors.check(validate::snapshot_name(&names.clean).map_err(|e| anyhow!("project_id: {e}")))?;
    revision?;
    // The init snapshot's name adds the revision to a project that is fine on its own.
    errors.check(validate::snapshot_name(&names.init).map_err(|e| anyhow!("project_id or revision: {e}")))?;
    Some(names)
}

/// A timeout; 0 means look once.
fn seconds(params: &Params, name: &str) -> Result<Duration> {
    rule(name, validate::timeout(params.int(name)?, ZeroSeconds::NoWait))
}

/// A value checked by its rule in [`validate`], the error naming `name` in this module's words.
fn rule<T>(name: &str, checked: Result<T, validate::Invalid>) -> Result<T> {
    checked.map_err(|e| anyhow!("{name} {e}"))
}

/// An `int` option whose values must fit `T`, which `range` says in words.
fn bounded<T: TryFrom<i64>>(params: &Params, name: &str, range: &str) -> Result<T> {
    let value = params.int(name)?;
    T::try_from(value).map_err(|_| anyhow!("{name} must be {range}, got {value}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn reply(args: Value) -> Value {
        ansible_module::execute_parsed(&spec(), args, parse, |module, step| {
            run(module, step).map_err(|e| format!("{e:#}"))
        })
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
            json!(["port must be between 0 and 65535, got 70000", "timeout must be 0 or more seconds, got -1"]),
            "{reply}"
        );
        let msg = failure(json!({"state": "cache_prepared", "name": "vm", "project_id": "p", "revision": "auto",
                                 "allowed_phases": ["main", "restore everything"]}));
        assert!(msg.contains("revision: ") && msg.contains("allowed_phases: "), "{msg}");
    }

    #[test]
    fn the_specs_errors_and_the_steps_own_come_in_one_result() {
        let reply = reply(json!({"state": "reachable", "host": "localhost", "port": 70000, "wait": "forever"}));
        assert_eq!(
            reply["argument_errors"],
            json!([
                "value of wait must be one of: none, lease, agent, ssh, address, got: forever",
                "port must be between 0 and 65535, got 70000",
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
