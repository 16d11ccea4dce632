//! The typed outcome of a run as the module's JSON result: per-domain results under `vms`,
//! the repairs of killed runs under their keys, and each error message naming the option
//! that caused it.

use ansible_module::{Diff, Response};
use serde_json::{json, Value};
use virtfarm_libvirt::power::StopOutcome;
use virtfarm_libvirt::snapshot::backing_file::{Level, Unfinished};
use virtfarm_libvirt::snapshot::orchestrate::{Action, Failure, NamesPerDomain, Outcome, Repairs, RunError, VmOutcome};
use virtfarm_libvirt::snapshot::{ClockSync, SnapshotInfo};

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
        _ => error.to_string(),
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
                "power_state": r.power_state.as_str(), "clock": clock_word(&r.clock), "removed_files": r.removed_files,
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

fn clock_word(clock: &ClockSync) -> &'static str {
    match clock {
        ClockSync::Synced => "synced",
        ClockSync::NotNeeded => "not_needed",
        ClockSync::Failed(_) => "failed",
    }
}

/// Seconds to the millisecond: enough for timings, short in results.
fn round(seconds: f64) -> f64 {
    (seconds * 1000.0).round() / 1000.0
}
