//! Each step's typed outcome as the module's JSON result.

use std::path::Path;

use ansible_module::{Diff, Response};
use serde_json::{json, Map, Value};
use virtfarm_libvirt::power::StopOutcome;
use virtfarm_libvirt::provision::lifecycle::{StartError, Started, Stopped};
use virtfarm_libvirt::snapshot::cache::phases::{PhasePlan, PhaseQuery};
use virtfarm_libvirt::snapshot::cache::{CacheAction, CacheNames, CacheStep, Prepared, Saved};
use virtfarm_libvirt::snapshot::{ClockSync, Created};
use virtfarm_libvirt::PowerState;

/// The `phases` step: nothing changes, the plan is returned for the role to follow.
pub fn phases(query: &PhaseQuery, plan: PhasePlan) -> Response {
    let files: Map<String, Value> =
        plan.files.iter().map(|(phase, file)| (phase.to_string(), json!(file.as_deref().map(display)))).collect();
    let allows = |step: &str| query.allowed.iter().any(|a| a == step);
    Response::new()
        .changed(false)
        .with("files", files)
        .with("searched", plan.searched.iter().map(|d| display(d)).collect::<Vec<_>>())
        .with("revision", plan.revision)
        .with("startup", allows("startup"))
        .with("shutdown", allows("shutdown"))
}

fn display(path: &Path) -> String {
    path.display().to_string()
}

/// The `reachable` step: how long the answer took.
pub fn reachable(seconds: f64) -> Response {
    Response::new().with("seconds", seconds)
}

/// The `started` step, with where the guest was found when it was waited for.
pub fn started(started: Started) -> Response {
    let response =
        Response::new().changed(started.before != PowerState::Running).with("state_before", started.before.as_str());
    let Some(ready) = started.ready else { return response };
    response
        .with("ansible_host", json!(ready.ip))
        .with("ip_source", json!(ready.ip_source.map(|s| s.as_str())))
        .with("seconds", ready.seconds)
}

/// A failed `started` step; a guest that did not become ready is the `timeout`'s to answer for.
pub fn start_failure(error: StartError) -> anyhow::Error {
    let not_ready = matches!(error, StartError::NotReady { .. });
    let error = anyhow::Error::new(error);
    if not_ready {
        error.context("timeout (connection_timeout)")
    } else {
        error
    }
}

/// The `cache_prepared` step: the decision, the snapshot restored or taken, the names pruned.
pub fn cache_prepared(names: &CacheNames, prepared: Prepared) -> Response {
    let plan = &prepared.plan;
    let mut response = Response::new()
        .changed(plan.changes())
        .with("action", plan.action.as_str())
        .with("init_restored", plan.action == CacheAction::RestoreInit)
        .with("run_init", plan.run_init)
        .with("save_init", plan.save_init)
        .with("snapshots", json!({ "clean": names.clean, "init": names.init }))
        .with("pruned", json!(plan.prune));
    match prepared.step {
        Some(CacheStep::Restored { snapshot, reverted }) => {
            let clock = match &reverted.clock {
                ClockSync::Failed(why) => format!("failed: {why}"),
                clock => clock.as_str().to_string(),
            };
            response = response
                .with("restored", snapshot)
                .with("snapshot_seconds", reverted.seconds)
                .with("clock", clock)
                .with("state", reverted.power_state.as_str());
        }
        Some(CacheStep::Taken { snapshot, created }) => response = with_created(response, &snapshot, &created),
        None => {}
    }
    response.with("seconds", prepared.seconds).diff(Diff::new(json!(prepared.before), json!(prepared.after)))
}

/// The `cache_saved` step.
pub fn cache_saved(names: &CacheNames, saved: Saved) -> Response {
    let response = Response::new().changed(!matches!(saved, Saved::Existing)).with("snapshot", names.init.as_str());
    match saved {
        Saved::Existing | Saved::WouldTake => response,
        Saved::Taken { created, before, after } => {
            with_created(response, &names.init, &created).diff(Diff::new(json!(before), json!(after)))
        }
    }
}

fn with_created(response: Response, snapshot: &str, created: &Created) -> Response {
    response
        .with("created", snapshot)
        .with("snapshot_type", created.kind.as_str())
        .with("quiesce", created.quiesce.as_str())
        .with("snapshot_seconds", created.seconds)
}

/// The `stopped` step: how the guest stopped, when it was stopped.
pub fn stopped(stopped: Stopped) -> Response {
    let response =
        Response::new().changed(stopped.before != PowerState::ShutOff).with("state_before", stopped.before.as_str());
    let Some(how) = stopped.how else { return response };
    let seconds = match how {
        StopOutcome::Graceful(seconds) => json!(seconds),
        _ => json!(null),
    };
    response.with("stop", how.as_str()).with("seconds", seconds)
}
