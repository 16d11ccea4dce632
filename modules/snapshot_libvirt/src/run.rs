//! Carries out a [`Request`] against libvirt and says what happened, per domain.

use std::time::Duration;

use serde_json::{json, Map, Value};
use virtfarm_libvirt::lock::{DomainLock, LockPolicy};
use virtfarm_libvirt::power::{self, StopPolicy};
use virtfarm_libvirt::snapshot::{self, ClockSync, Member, RevertOptions, SnapshotInfo, SnapshotType};
use virtfarm_libvirt::wait::{self, LeaseBaseline, Readiness};
use virtfarm_libvirt::{Connections, Hypervisor, PowerState, Vm};

use crate::request::{Domain, Mode, Request, State};

/// What the module reports on success.
pub struct Report {
    /// Whether anything changed (or, in check mode, would).
    pub changed: bool,
    /// Result keys: `vms`, and `snapshots` for one domain.
    pub fields: Map<String, Value>,
    /// Snapshot names per domain, before and after.
    pub diff: (Value, Value),
}

/// What the module reports on failure: the message, and what had changed by then (a call
/// that fails part way has changed the domains it got through; Ansible reports `changed`
/// with the failure, and the per-domain results say which).
#[derive(Debug, Default)]
pub struct Failure {
    /// For `msg`.
    pub msg: String,
    /// Whether anything changed before the failure.
    pub changed: bool,
    /// Result keys: `vms` with the results of the domains done, and the repairs.
    pub fields: Map<String, Value>,
}

impl From<String> for Failure {
    fn from(msg: String) -> Failure {
        Failure { msg, ..Failure::default() }
    }
}

impl Failure {
    /// A failure after `results` (only those with `changed: true` count as changes).
    pub fn after(msg: String, results: Vec<Value>, changed: bool) -> Failure {
        let changed = changed || results.iter().any(|r| r["changed"] == true);
        let mut fields = Map::new();
        fields.insert("vms".to_string(), Value::Array(results));
        Failure { msg, changed, fields }
    }
}

/// A domain of the request, found on its hypervisor.
struct Target<'c> {
    hv: &'c Hypervisor,
    vm: Vm,
}

/// Runs the request.
pub fn run(request: &Request, check_mode: bool) -> Result<Report, Failure> {
    let mut connections = Connections::default();
    let targets = connect(request, &mut connections)?;
    let changing = !check_mode && !matches!(request.state, State::List);
    let _locks = if changing { lock_all(&targets)? } else { Vec::new() };
    // Holding the locks, what a killed run left (paused, frozen, merging) is repaired first.
    let repairs = if changing { repair(&targets) } else { Ok(Map::new()) };
    let repairs = repairs.map_err(|(msg, done)| Failure { changed: !done.is_empty(), fields: done, msg })?;
    let repaired = !repairs.is_empty();
    let with_repairs = |mut failure: Failure| {
        failure.changed |= repaired;
        failure.fields.extend(repairs.clone());
        failure
    };
    let outcome = if let (Mode::BackingFile { volume_path }, Some(first)) = (&request.mode, targets.first()) {
        // One hypervisor: the request was checked for that.
        let hv = first.hv;
        let vms: Vec<Vm> = targets.into_iter().map(|t| t.vm).collect();
        crate::backing::run(hv, &vms, volume_path, request, check_mode)
    } else {
        snapshots(&targets, request, check_mode)
    };
    let mut report = outcome.map_err(with_repairs)?;
    report.changed |= repaired;
    report.fields.extend(repairs);
    Ok(report)
}

/// The libvirt-snapshot mode.
fn snapshots(targets: &[Target<'_>], request: &Request, check_mode: bool) -> Result<Report, Failure> {
    let before = snapshot_names(targets)?;
    let (changed, results) = match (request.state, request.snapshot.as_deref()) {
        (State::List, _) | (_, None) => (false, list(targets)?),
        (State::Present, Some(name)) => present(targets, name, request, check_mode)?,
        (State::Absent, Some(name)) => absent(targets, name, check_mode)?,
        (State::Reverted, Some(name)) => reverted(targets, name, request, check_mode)?,
    };
    let after = if changed && !check_mode { snapshot_names(targets)? } else { predicted(&before, request, changed) };
    let mut fields = Map::new();
    if let [only] = results.as_slice() {
        if let Some(snapshots) = only.get("snapshots") {
            fields.insert("snapshots".to_string(), snapshots.clone());
        }
    }
    fields.insert("vms".to_string(), Value::Array(results));
    Ok(Report { changed, fields, diff: (before, after) })
}

/// Repairs what killed runs left on the domains; the result keys name the domains repaired
/// (`resumed_left_paused`, `thawed_left_frozen`, `stopped_left_merging`) and the overlays of
/// killed external reverts that were removed unused (`removed_left_overlays`). On failure,
/// the message and the keys of what was repaired before it.
fn repair(targets: &[Target<'_>]) -> Result<Map<String, Value>, (String, Map<String, Value>)> {
    let mut lists: [(&str, Vec<Value>); 4] = [
        ("resumed_left_paused", Vec::new()),
        ("thawed_left_frozen", Vec::new()),
        ("stopped_left_merging", Vec::new()),
        ("removed_left_overlays", Vec::new()),
    ];
    let keys = |lists: [(&str, Vec<Value>); 4]| -> Map<String, Value> {
        lists.into_iter().filter(|(_, l)| !l.is_empty()).map(|(k, l)| (k.to_string(), Value::Array(l))).collect()
    };
    for Target { hv, vm } in targets {
        let done = match snapshot::repair_left_by_killed_run(vm) {
            Ok(done) => done,
            Err(e) => return Err((format!("{}: repairing what a killed run left: {e}", vm.name()), keys(lists))),
        };
        for (index, did) in [done.resumed, done.thawed, done.stopped_merge].into_iter().enumerate() {
            if did {
                lists[index].1.push(Value::String(vm.name().to_string()));
            }
        }
        match snapshot::remove_unused_revert_overlays(hv, vm) {
            Ok(removed) => lists[3].1.extend(removed.into_iter().map(Value::String)),
            Err(e) => {
                let msg = format!("{}: removing the overlays a killed revert left: {e}", vm.name());
                return Err((msg, keys(lists)));
            }
        }
    }
    Ok(keys(lists))
}

/// Opens each hypervisor once (all at once) and finds every domain, failing on the first
/// unknown one.
fn connect<'c>(request: &Request, connections: &'c mut Connections) -> Result<Vec<Target<'c>>, String> {
    connections.open(request.domains.iter().map(|d| d.uri.as_str()));
    let connections = &*connections;
    let uri_option = if request.domains_option == "placement" { "placement" } else { "uri" };
    request
        .domains
        .iter()
        .map(|Domain { name, uri }| {
            let hv = connections.get(uri).map_err(|e| format!("{uri_option}: {e}"))?;
            match hv.find_vm(name) {
                Ok(Some(vm)) => Ok(Target { hv, vm }),
                Ok(None) => Err(format!("{}: domain '{name}' not found on {uri}", request.domains_option)),
                Err(e) => Err(e.to_string()),
            }
        })
        .collect()
}

/// Locks every domain before any is changed: a concurrent run on one of them fails here,
/// naming its holder. The locks are released when the run ends.
fn lock_all(targets: &[Target<'_>]) -> Result<Vec<DomainLock>, String> {
    targets
        .iter()
        .filter_map(|t| t.hv.lock_vm(&t.vm, &LockPolicy::default()).transpose())
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())
}

/// `{domain: [snapshot names]}`.
fn snapshot_names(targets: &[Target<'_>]) -> Result<Value, String> {
    let mut names = Map::new();
    for Target { vm, .. } in targets {
        let list = vm.snapshots().map_err(|e| e.to_string())?;
        names.insert(vm.name().to_string(), list.into_iter().map(|s| Value::String(s.name)).collect());
    }
    Ok(Value::Object(names))
}

/// The snapshot list check mode expects afterwards.
fn predicted(before: &Value, request: &Request, changed: bool) -> Value {
    let (Some(name), true) = (request.snapshot.as_deref(), changed) else { return before.clone() };
    let mut after = before.clone();
    for list in after.as_object_mut().into_iter().flat_map(|m| m.values_mut()).filter_map(Value::as_array_mut) {
        let has = list.iter().any(|n| n == name);
        match request.state {
            State::Present if !has => list.push(json!(name)),
            State::Absent => list.retain(|n| n != name),
            _ => {}
        }
    }
    after
}

fn list(targets: &[Target<'_>]) -> Result<Vec<Value>, String> {
    targets
        .iter()
        .map(|Target { vm, .. }| {
            let snapshots = vm.snapshots().map_err(|e| e.to_string())?;
            Ok(json!({ "name": vm.name(), "changed": false, "snapshots": snapshots.iter().map(describe).collect::<Vec<_>>() }))
        })
        .collect()
}

/// One snapshot as `state: list` returns it.
pub fn describe(info: &SnapshotInfo) -> Value {
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

fn has_snapshot(vm: &Vm, name: &str) -> Result<bool, String> {
    vm.find_snapshot(name).map(|s| s.is_some()).map_err(|e| e.to_string())
}

fn present(
    targets: &[Target<'_>],
    name: &str,
    request: &Request,
    check_mode: bool,
) -> Result<(bool, Vec<Value>), Failure> {
    let mut results = Vec::new();
    let mut missing = Vec::new();
    for target in targets {
        if has_snapshot(&target.vm, name)? {
            results.push(json!({ "name": target.vm.name(), "snapshot": name, "changed": false }));
        } else {
            missing.push(Member { hypervisor: target.hv, vm: &target.vm });
        }
    }
    if missing.is_empty() {
        return Ok((false, results));
    }
    let vms = || missing.iter().map(|m| m.vm);
    if check_mode {
        for Member { hypervisor: hv, vm } in &missing {
            let facts = vm.facts().map_err(|e| e.to_string())?;
            let running = vm.power_state().map_err(|e| e.to_string())? != PowerState::ShutOff;
            let kind = snapshot::choose_type(&facts, running && request.shutdown_first.is_none(), &request.create)
                .map_err(|e| e.to_string())?;
            if kind == SnapshotType::Internal {
                snapshot::refuse_name_inside(hv, &facts, name).map_err(|e| e.to_string())?;
            }
            results.push(json!({ "name": vm.name(), "snapshot": name, "changed": true, "type": kind.as_str() }));
        }
        return Ok((true, results));
    }
    let stopped = match request.shutdown_first {
        Some(timeout) => shut_down(vms(), timeout)?,
        None => Vec::new(),
    };
    let taken = snapshot::create_group(&missing, name, &request.create);
    let restarted = restart(vms(), &stopped);
    let taken = match taken {
        Ok(taken) => taken,
        Err(e) => {
            // All or none: the group rolled back what it took, unless that failed too.
            for vm in vms() {
                let kept = has_snapshot(vm, name).unwrap_or(true);
                let shutdown = stopped.iter().find(|(n, _)| n == vm.name()).map(|(_, how)| *how);
                if kept || shutdown.is_some() {
                    results.push(json!({ "name": vm.name(), "snapshot": name, "changed": true, "kept_after_failure": kept, "shutdown": shutdown }));
                }
            }
            let msg = match restarted {
                Ok(()) => e.to_string(),
                Err(again) => format!("{e}; starting again what was shut down: {again}"),
            };
            return Err(Failure::after(msg, results, !stopped.is_empty()));
        }
    };
    if let Err(e) = restarted {
        let done = taken.iter().map(|c| json!({ "name": c.domain, "snapshot": name, "changed": true })).collect();
        return Err(Failure::after(e, [results, done].concat(), true));
    }
    for created in taken {
        results.push(json!({
            "name": created.domain,
            "snapshot": name,
            "changed": true,
            "type": created.kind.as_str(),
            "memory": created.memory,
            "quiesce": created.quiesce.as_str(),
            "seconds": round(created.seconds),
            "shutdown": stopped.iter().find(|(n, _)| *n == created.domain).map(|(_, how)| *how),
        }));
    }
    Ok((true, results))
}

/// Stops the running domains; returns (domain, how it stopped) for those that were running.
pub fn shut_down<'v>(
    vms: impl IntoIterator<Item = &'v Vm>,
    timeout: Duration,
) -> Result<Vec<(String, &'static str)>, String> {
    let policy = StopPolicy { timeout, ..StopPolicy::default() };
    let mut stopped = Vec::new();
    for vm in vms {
        let outcome = power::stop(vm, &policy).map_err(|e| e.to_string())?;
        if outcome != power::StopOutcome::AlreadyOff {
            stopped.push((vm.name().to_string(), outcome.as_str()));
        }
    }
    Ok(stopped)
}

/// Starts again the domains that [`shut_down`] stopped: the previous power state comes back.
pub fn restart<'v>(vms: impl IntoIterator<Item = &'v Vm>, stopped: &[(String, &'static str)]) -> Result<(), String> {
    for vm in vms.into_iter().filter(|vm| stopped.iter().any(|(n, _)| n == vm.name())) {
        vm.start().map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn absent(targets: &[Target<'_>], name: &str, check_mode: bool) -> Result<(bool, Vec<Value>), Failure> {
    let mut changed = false;
    let mut results = Vec::new();
    for Target { hv, vm } in targets {
        let Some(info) = vm.find_snapshot(name).map_err(|e| e.to_string())? else {
            results.push(json!({ "name": vm.name(), "snapshot": name, "changed": false }));
            continue;
        };
        changed = true;
        if check_mode {
            results.push(json!({ "name": vm.name(), "snapshot": name, "changed": true, "type": info.kind.as_str() }));
            continue;
        }
        let deleted = match snapshot::delete(hv, vm, name) {
            Ok(deleted) => deleted,
            Err(e) => return Err(Failure::after(e.to_string(), results, false)),
        };
        results.push(json!({
            "name": vm.name(), "snapshot": name, "changed": true, "type": deleted.kind.as_str(),
            "method": deleted.method, "seconds": round(deleted.seconds), "removed_files": deleted.removed_files,
        }));
    }
    Ok((changed, results))
}

/// libvirt records which snapshot is current but not whether the disks changed since, so
/// every run reverts (and reports a change).
///
/// The domains are reverted all at once, one thread each: a revert that restores RAM, the
/// agent wait before the clock sync and `after_revert.wait` take seconds per guest, and the
/// guests are independent. Every failure is reported, each naming its domain.
fn reverted(
    targets: &[Target<'_>],
    name: &str,
    request: &Request,
    check_mode: bool,
) -> Result<(bool, Vec<Value>), Failure> {
    for Target { vm, .. } in targets {
        if !has_snapshot(vm, name)? {
            return Err(format!("snapshot: '{name}' not found on domain {}", vm.name()).into());
        }
    }
    if check_mode {
        return Ok((
            true,
            targets.iter().map(|t| json!({ "name": t.vm.name(), "snapshot": name, "changed": true })).collect(),
        ));
    }
    let outcomes: Vec<(Option<Value>, Option<String>)> = std::thread::scope(|scope| {
        let handles: Vec<_> =
            targets.iter().map(|target| scope.spawn(move || revert_one(target, name, request))).collect();
        handles
            .into_iter()
            .zip(targets)
            .map(|(handle, t)| {
                handle
                    .join()
                    .unwrap_or_else(|_| (None, Some(format!("{}: the revert failed unexpectedly", t.vm.name()))))
            })
            .collect()
    });
    let (results, failures): (Vec<_>, Vec<_>) = outcomes.into_iter().unzip();
    let results: Vec<Value> = results.into_iter().flatten().collect();
    let failures: Vec<String> = failures.into_iter().flatten().collect();
    if !failures.is_empty() {
        return Err(Failure::after(failures.join("; "), results, false));
    }
    Ok((true, results))
}

/// Reverts one domain, syncs its clock and waits for it as `after_revert` says: its result
/// once reverted, and what failed, if anything (a revert whose wait fails still changed it).
fn revert_one(target: &Target<'_>, name: &str, request: &Request) -> (Option<Value>, Option<String>) {
    let Target { hv, vm } = target;
    let options =
        RevertOptions { sync_clock: request.after_revert.sync_clock, agent_timeout: request.after_revert.timeout };
    let done = match snapshot::revert(hv, vm, name, &options) {
        Ok(done) => done,
        Err(e) => return (None, Some(e.to_string())),
    };
    let mut result = json!({
        "name": vm.name(), "snapshot": name, "changed": true, "type": done.kind.as_str(),
        "seconds": round(done.seconds), "power_state": done.power_state.as_str(),
        "clock": clock_word(&done.clock), "removed_files": done.removed_files,
    });
    if let ClockSync::Failed(why) = &done.clock {
        result["clock_error"] = json!(why);
    }
    if let (Some(signal), PowerState::Running) = (request.after_revert.wait, done.power_state) {
        let readiness = Readiness { signal, timeout: request.after_revert.timeout };
        // A guest resumed from a snapshot with RAM keeps the lease it held then and asks
        // for none: any current lease of its MAC is its address.
        match wait::wait_ready(hv, vm, &LeaseBaseline::any(), readiness) {
            Ok(ready) => {
                result["ip"] = json!(ready.ip);
                result["ready_seconds"] = json!(round(ready.seconds));
            }
            Err(e) => return (Some(result), Some(format!("after_revert.wait: {}: {e}", vm.name()))),
        }
    }
    (Some(result), None)
}

fn clock_word(clock: &ClockSync) -> &'static str {
    match clock {
        ClockSync::Synced => "synced",
        ClockSync::NotNeeded => "not_needed",
        ClockSync::Failed(_) => "failed",
    }
}

/// Seconds to the millisecond: enough for timings, short in results.
pub fn round(seconds: f64) -> f64 {
    (seconds * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::{AfterRevert, Mode};

    fn request(state: State) -> Request {
        Request {
            domains: ["a", "b"].map(|name| Domain { name: name.into(), uri: "test:///default".into() }).into(),
            domains_option: "names",
            mode: Mode::Snapshot,
            snapshot: Some("s2".into()),
            state,
            create: Default::default(),
            shutdown_first: None,
            after_revert: AfterRevert { sync_clock: true, wait: None, timeout: Duration::from_secs(1) },
        }
    }

    #[test]
    fn check_mode_predicts_the_snapshot_lists() {
        let before = json!({"a": ["s1"], "b": ["s1", "s2"]});
        assert_eq!(predicted(&before, &request(State::Present), true), json!({"a": ["s1", "s2"], "b": ["s1", "s2"]}));
        assert_eq!(predicted(&before, &request(State::Absent), true), json!({"a": ["s1"], "b": ["s1"]}));
        assert_eq!(predicted(&before, &request(State::Reverted), true), before);
        assert_eq!(predicted(&before, &request(State::Present), false), before);
    }
}
