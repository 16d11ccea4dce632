//! Carries out a [`Request`] against libvirt and says what happened, per domain.

use std::time::Duration;

use serde_json::{json, Map, Value};
use virtfarm_libvirt::lock::{DomainLock, LockPolicy};
use virtfarm_libvirt::power::{self, StopPolicy};
use virtfarm_libvirt::snapshot::{self, ClockSync, Member, RevertOptions, SnapshotInfo};
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

/// A domain of the request, found on its hypervisor.
struct Target<'c> {
    hv: &'c Hypervisor,
    vm: Vm,
}

/// Runs the request; a failure is the message for `msg`.
pub fn run(request: &Request, check_mode: bool) -> Result<Report, String> {
    let mut connections = Connections::default();
    let targets = connect(request, &mut connections)?;
    let changing = !check_mode && !matches!(request.state, State::List);
    let _locks = if changing { lock_all(&targets)? } else { Vec::new() };
    // Holding the locks, a frozen guest is what a killed run left: repair it before anything.
    let mut thawed = Vec::new();
    for Target { vm, .. } in targets.iter().filter(|_| changing) {
        if snapshot::thaw_if_left_frozen(vm).map_err(|e| e.to_string())? {
            thawed.push(Value::String(vm.name().to_string()));
        }
    }
    if let (Mode::BackingFile { volume_path }, Some(first)) = (&request.mode, targets.first()) {
        // One hypervisor: the request was checked for that.
        let hv = first.hv;
        let vms: Vec<Vm> = targets.into_iter().map(|t| t.vm).collect();
        return crate::backing::run(hv, &vms, volume_path, request, check_mode);
    }
    let before = snapshot_names(&targets)?;
    let (changed, results) = match (request.state, request.snapshot.as_deref()) {
        (State::List, _) | (_, None) => (false, list(&targets)?),
        (State::Present, Some(name)) => present(&targets, name, request, check_mode)?,
        (State::Absent, Some(name)) => absent(&targets, name, check_mode)?,
        (State::Reverted, Some(name)) => reverted(&targets, name, request, check_mode)?,
    };
    let after = if changed && !check_mode { snapshot_names(&targets)? } else { predicted(&before, request, changed) };
    let mut fields = Map::new();
    if let [only] = results.as_slice() {
        if let Some(snapshots) = only.get("snapshots") {
            fields.insert("snapshots".to_string(), snapshots.clone());
        }
    }
    fields.insert("vms".to_string(), Value::Array(results));
    if !thawed.is_empty() {
        fields.insert("thawed_left_frozen".to_string(), Value::Array(thawed));
    }
    Ok(Report { changed, fields, diff: (before, after) })
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
) -> Result<(bool, Vec<Value>), String> {
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
        for vm in vms() {
            let facts = vm.facts().map_err(|e| e.to_string())?;
            let running = vm.power_state().map_err(|e| e.to_string())? != PowerState::ShutOff;
            let kind = snapshot::choose_type(&facts, running && request.shutdown_first.is_none(), &request.create)
                .map_err(|e| e.to_string())?;
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
    let taken = taken.map_err(|e| e.to_string())?;
    restarted?;
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

fn absent(targets: &[Target<'_>], name: &str, check_mode: bool) -> Result<(bool, Vec<Value>), String> {
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
        let deleted = snapshot::delete(hv, vm, name).map_err(|e| e.to_string())?;
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
) -> Result<(bool, Vec<Value>), String> {
    for Target { vm, .. } in targets {
        if !has_snapshot(vm, name)? {
            return Err(format!("snapshot: '{name}' not found on domain {}", vm.name()));
        }
    }
    if check_mode {
        return Ok((
            true,
            targets.iter().map(|t| json!({ "name": t.vm.name(), "snapshot": name, "changed": true })).collect(),
        ));
    }
    let outcomes: Vec<Result<Value, String>> = std::thread::scope(|scope| {
        let handles: Vec<_> =
            targets.iter().map(|target| scope.spawn(move || revert_one(target, name, request))).collect();
        handles
            .into_iter()
            .zip(targets)
            .map(|(handle, t)| {
                handle.join().unwrap_or_else(|_| Err(format!("{}: the revert failed unexpectedly", t.vm.name())))
            })
            .collect()
    });
    let failures: Vec<&str> = outcomes.iter().filter_map(|o| o.as_ref().err()).map(String::as_str).collect();
    if !failures.is_empty() {
        return Err(failures.join("; "));
    }
    Ok((true, outcomes.into_iter().flatten().collect()))
}

/// Reverts one domain, syncs its clock and waits for it as `after_revert` says.
fn revert_one(target: &Target<'_>, name: &str, request: &Request) -> Result<Value, String> {
    let Target { hv, vm } = target;
    let options =
        RevertOptions { sync_clock: request.after_revert.sync_clock, agent_timeout: request.after_revert.timeout };
    let done = snapshot::revert(hv, vm, name, &options).map_err(|e| e.to_string())?;
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
        let ready = wait::wait_ready(hv, vm, &LeaseBaseline::any(), readiness)
            .map_err(|e| format!("after_revert.wait: {}: {e}", vm.name()))?;
        result["ip"] = json!(ready.ip);
        result["ready_seconds"] = json!(round(ready.seconds));
    }
    Ok(result)
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
