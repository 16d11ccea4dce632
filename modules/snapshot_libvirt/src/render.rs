//! The typed outcome of a run as the module's JSON result: per-domain results under `vms`,
//! the repairs of killed runs under their keys, and each error message naming the option
//! that caused it.

use ansible_module::{Diff, Response};
use serde_json::{json, Value};
use virtfarm_libvirt::error::SnapshotRefusal;
use virtfarm_libvirt::power::StopOutcome;
use virtfarm_libvirt::snapshot::backing_file::{Level, Unfinished};
use virtfarm_libvirt::snapshot::orchestrate::{Action, Failure, NamesPerDomain, Outcome, Repairs, RunError, VmOutcome};
use virtfarm_libvirt::snapshot::{ClockSync, SnapshotInfo};
use virtfarm_libvirt::Error;

use crate::request::Call;

/// The result of a run that went through; the diff when Ansible asked for one.
pub fn success(call: &Call, outcome: Outcome, diff: bool) -> Response {
    let snapshot = call.request.snapshot.as_deref();
    let mut response = Response::new().changed(outcome.changed);
    if let [VmOutcome { action: Action::Listed(snapshots), .. }] = outcome.vms.as_slice() {
        response = response.with("snapshots", snapshots.iter().map(describe).collect::<Vec<_>>());
    }
    response = response.with("vms", outcome.vms.iter().map(|vm| vm_result(vm, snapshot)).collect::<Vec<_>>());
    response = with_repairs(response, &outcome.repairs);
    if diff {
        response = response.diff(Diff::new(names(&outcome.before), names(&outcome.after)));
    }
    response
}

/// The result of a failed run: the message, and what had changed by then.
pub fn failure(call: &Call, failure: Failure) -> Response {
    let snapshot = call.request.snapshot.as_deref();
    let mut response = Response::fail(message(&failure.error, call)).changed(failure.changed);
    if let Some(vms) = &failure.vms {
        response = response.with("vms", vms.iter().map(|vm| vm_result(vm, snapshot)).collect::<Vec<_>>());
    }
    with_repairs(response, &failure.repairs).with("snapshot", json!(snapshot))
}

/// The error's message, prefixed with the option behind it where one is.
fn message(error: &RunError, call: &Call) -> String {
    match error {
        RunError::Connecting { .. } if call.domains_option == "placement" => format!("placement: {error}"),
        RunError::Connecting { .. } => format!("uri: {error}"),
        RunError::DomainNotFound { .. } => format!("{}: {error}", call.domains_option),
        RunError::SnapshotNotFound { .. } | RunError::LevelNotFound { .. } => format!("snapshot: {error}"),
        RunError::NotReady { .. } => format!("after_revert.wait: {error}"),
        RunError::Reverts(errors) => errors.iter().map(|e| message(e, call)).collect::<Vec<_>>().join("; "),
        RunError::Libvirt(source) => in_option_words(source),
        RunError::OnDomain { domain, source } => format!("{domain}: {}", in_option_words(source)),
        _ => error.to_string(),
    }
}

/// A library error with the option behind it in front, and the options that would get past
/// it after, where it says.
fn in_option_words(error: &Error) -> String {
    let Error::SnapshotRefused { kind, message } = error else { return error.to_string() };
    match kind {
        SnapshotRefusal::InternalImpossible => format!("type: {message}"),
        SnapshotRefusal::MemoryNeedsInternal => format!("memory: {message}"),
        SnapshotRefusal::DeleteSnapshotsFirst => format!("snapshot: {message} (state: absent)"),
        SnapshotRefusal::BackingFileUnderSnapshots => format!(
            "mode: backing_file: {message} (mode: snapshot, state: absent), or keep to mode snapshot for this domain"
        ),
        SnapshotRefusal::BackingFileOverInternalSnapshots => format!("mode: backing_file: {message}"),
        _ => format!("snapshot: {message}"),
    }
}

fn with_repairs(mut response: Response, repairs: &Repairs) -> Response {
    let lists = [
        ("resumed_left_paused", &repairs.resumed_left_paused),
        ("thawed_left_frozen", &repairs.thawed_left_frozen),
        ("stopped_left_merging", &repairs.stopped_left_merging),
        ("removed_left_overlays", &repairs.removed_left_overlays),
    ];
    for (key, list) in lists.into_iter().filter(|(_, list)| !list.is_empty()) {
        response = response.with(key, json!(list));
    }
    response
}

/// `{domain: [names]}`.
fn names(per_domain: &NamesPerDomain) -> Value {
    Value::Object(per_domain.iter().map(|(domain, names)| (domain.clone(), json!(names))).collect())
}

/// One domain's entry of `vms`.
fn vm_result(vm: &VmOutcome, snapshot: Option<&str>) -> Value {
    let stop_word = |shutdown: &Option<StopOutcome>| shutdown.map(|how| how.as_str());
    let mut result = match &vm.action {
        Action::Listed(snapshots) => json!({ "snapshots": snapshots.iter().map(describe).collect::<Vec<_>>() }),
        Action::AlreadyDone | Action::WouldRevert | Action::CreatedNotRestarted => json!({ "snapshot": snapshot }),
        Action::WouldCreate(kind) | Action::WouldDelete(kind) => json!({ "snapshot": snapshot, "type": kind.as_str() }),
        Action::Created { created: c, shutdown } => json!({
            "snapshot": snapshot, "type": c.kind.as_str(), "memory": c.memory, "quiesce": c.quiesce.as_str(),
            "seconds": round(c.seconds), "shutdown": stop_word(shutdown),
        }),
        Action::CreateFailed { kept, shutdown } => {
            json!({ "snapshot": snapshot, "kept_after_failure": kept, "shutdown": stop_word(shutdown) })
        }
        Action::Deleted(d) => json!({
            "snapshot": snapshot, "type": d.kind.as_str(), "method": d.method, "seconds": round(d.seconds),
            "removed_files": d.removed_files,
        }),
        Action::Reverted { reverted: r, ready } => {
            let mut result = json!({
                "snapshot": snapshot, "type": r.kind.as_str(), "seconds": round(r.seconds),
                "power_state": r.power_state.as_str(), "clock": r.clock.as_str(), "removed_files": r.removed_files,
            });
            if let ClockSync::Failed(why) = &r.clock {
                result["clock_error"] = json!(why);
            }
            if let Some(ready) = ready {
                result["ip"] = json!(ready.ip);
                result["ready_seconds"] = json!(round(ready.seconds));
            }
            result
        }
        Action::LevelsListed { disk, levels } => {
            json!({ "disk": disk, "levels": levels.iter().map(describe_level).collect::<Vec<_>>() })
        }
        Action::LevelChecked { file, .. } => json!({ "file": file }),
        Action::LevelChanged { file, repaired, done, seconds, .. } => {
            let mut result = json!({ "file": file, "seconds": round(*seconds) });
            if !repaired.is_empty() {
                result["repaired"] = json!(repaired);
            }
            if let Some(done) = done {
                result["action"] = json!(done.as_str());
            }
            result
        }
    };
    result["name"] = json!(vm.domain);
    result["changed"] = json!(vm.action.changes());
    if let Action::LevelChecked { unfinished, .. } | Action::LevelChanged { unfinished, .. } = &vm.action {
        if !unfinished.is_empty() {
            result["unfinished"] = unfinished.iter().map(describe_unfinished).collect();
        }
    }
    result
}

/// One snapshot as `state: list` returns it.
fn describe(info: &SnapshotInfo) -> Value {
    json!({
        "name": info.name,
        "type": info.kind.as_str(),
        "creation_time": info.creation_time,
        "state": info.state,
        "parent": info.parent,
        "current": info.current,
        "memory": info.memory,
        "disks": info.disks.iter().map(|d| json!({"target": d.target, "snapshot": d.snapshot, "file": d.frozen, "overlay": d.overlay})).collect::<Vec<_>>(),
    })
}

fn describe_level(level: &Level) -> Value {
    json!({
        "name": level.name, "file": level.file, "backing": level.backing, "current": level.current,
        "unfinished": level.pending.map(|p| p.as_str()),
    })
}

fn describe_unfinished(unfinished: &Unfinished) -> Value {
    json!({ "level": unfinished.level, "file": unfinished.file, "operation": unfinished.operation.as_str() })
}

/// Seconds to the millisecond: enough for timings, short in results.
fn round(seconds: f64) -> f64 {
    (seconds * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use virtfarm_libvirt::snapshot::backing_file::Pending;
    use virtfarm_libvirt::snapshot::orchestrate::{AfterRevert, Domain, LevelAction, Mode, Request, State};

    use super::*;

    fn call(domains_option: &'static str) -> Call {
        let request = Request {
            domains: vec![Domain { name: "a".into(), uri: "qemu:///system".into() }],
            mode: Mode::Snapshot,
            snapshot: Some("s1".into()),
            state: State::Reverted,
            create: Default::default(),
            shutdown_first: None,
            after_revert: AfterRevert { sync_clock: true, wait: None, timeout: Duration::from_secs(1) },
        };
        Call { request, domains_option }
    }

    #[test]
    fn messages_name_the_option_behind_the_error() {
        let refused = || Error::Refused("connecting to qemu:///system: no".into());
        let connecting = RunError::Connecting { uri: "qemu:///system".into(), source: refused() };
        assert_eq!(message(&connecting, &call("names")), "uri: connecting to qemu:///system: no");
        assert_eq!(message(&connecting, &call("placement")), "placement: connecting to qemu:///system: no");
        let missing = RunError::DomainNotFound { name: "x".into(), uri: "qemu:///system".into() };
        assert_eq!(message(&missing, &call("names")), "names: domain 'x' not found on qemu:///system");
        let reverts = RunError::Reverts(vec![
            RunError::SnapshotNotFound { snapshot: "s1".into(), domain: "a".into() },
            RunError::NotReady { domain: "b".into(), source: Error::Timeout { what: "ssh".into(), seconds: 1 } },
        ]);
        assert_eq!(
            message(&reverts, &call("names")),
            "snapshot: 's1' not found on domain a; after_revert.wait: b: ssh not reached within 1 s"
        );
    }

    #[test]
    fn a_level_change_lists_only_what_happened() {
        let left = Unfinished { operation: Pending::Committing, level: None, file: "/i/a.qcow2.bak".into() };
        let failed = Action::LevelChanged {
            file: "/i/a.qcow2.bak".into(),
            repaired: Vec::new(),
            done: None,
            seconds: 0.12345,
            unfinished: vec![left],
        };
        let result = vm_result(&VmOutcome { domain: "a".into(), action: failed }, None);
        assert_eq!(
            result,
            json!({"name": "a", "changed": true, "file": "/i/a.qcow2.bak", "seconds": 0.123,
                   "unfinished": [{"level": null, "file": "/i/a.qcow2.bak", "operation": "committing"}]})
        );
        let done = Action::LevelChanged {
            file: "/i/a.qcow2.bak".into(),
            repaired: vec!["saving".into()],
            done: Some(LevelAction::Repaired),
            seconds: 1.0,
            unfinished: Vec::new(),
        };
        let result = vm_result(&VmOutcome { domain: "a".into(), action: done }, None);
        assert_eq!(result["action"], "repaired");
        assert_eq!(result["repaired"], json!(["saving"]));
        assert!(result.get("unfinished").is_none());
    }

    #[test]
    fn a_snapshot_refusal_names_the_option_at_fault() {
        let refused = |kind, message: &str| Error::SnapshotRefused { kind, message: message.into() };
        let memory = refused(SnapshotRefusal::MemoryNeedsInternal, "external snapshots are disk-only");
        assert_eq!(in_option_words(&memory), "memory: external snapshots are disk-only");
        let in_the_way = refused(SnapshotRefusal::DeleteSnapshotsFirst, "s1 of a lives in x: delete those first");
        assert_eq!(in_option_words(&in_the_way), "snapshot: s1 of a lives in x: delete those first (state: absent)");
        let on_domain = RunError::OnDomain {
            domain: "a".into(),
            source: refused(SnapshotRefusal::BackingFileOverInternalSnapshots, "x holds s1"),
        };
        assert_eq!(message(&on_domain, &call("name")), "a: mode: backing_file: x holds s1");
    }
}
