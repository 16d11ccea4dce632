//! `mode: backing_file`: the TripleO snapshot-libvirt role's `.bak` files, per domain image
//! `<volume_path>/<domain>.qcow2`, with named levels, listing and removal.

use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};
use virtfarm_libvirt::snapshot::backing_file::{self, Change, Level, Unfinished};
use virtfarm_libvirt::{Hypervisor, PowerState, Vm};

use crate::request::{Request, State};
use crate::run::{restart, round, shut_down, Failure, Report};

/// How long a guest may take to shut down when `shutdown_first` does not say.
const DEFAULT_SHUTDOWN: Duration = Duration::from_secs(120);

/// Runs the backing-file mode: domains are shut down first (the files of a running domain
/// are not touched) and started again afterwards. What a killed run left under way on a
/// domain's levels is finished or undone first ([`backing_file::repair`]).
pub fn run(
    hv: &Hypervisor,
    vms: &[Vm],
    volume_path: &str,
    request: &Request,
    check_mode: bool,
) -> Result<Report, Failure> {
    let disk = |vm: &Vm| format!("{volume_path}/{}.qcow2", vm.name());
    let level = request.snapshot.as_deref();
    let before = level_names(hv, vms, &disk)?;
    if request.state == State::List {
        let mut results = Vec::new();
        for vm in vms {
            let levels = backing_file::levels(hv, &disk(vm)).map_err(|e| e.to_string())?;
            results.push(json!({ "name": vm.name(), "changed": false, "disk": disk(vm), "levels": levels.iter().map(describe).collect::<Vec<_>>() }));
        }
        return Ok(report(false, results, before.clone(), before));
    }
    let level_file = |vm: &Vm| backing_file::level_path(&disk(vm), level);
    let has_level = |vm: &Vm| {
        before[vm.name()].as_array().is_some_and(|l| l.iter().any(|f| f.as_str() == Some(level_file(vm).as_str())))
    };
    if request.state == State::Reverted {
        if let Some(vm) = vms.iter().find(|vm| !has_level(vm)) {
            return Err(format!("snapshot: no backing file {} for domain {}", level_file(vm), vm.name()).into());
        }
    }
    // Removing changes the disk when the level exists; saving and restoring unless the
    // overlay of a shut-off domain is empty on the level already. Unfinished operations
    // of killed runs are repaired in any case.
    let mut touched: Vec<(&Vm, Vec<Unfinished>)> = Vec::new();
    for vm in vms {
        let unfinished = backing_file::unfinished(hv, &disk(vm)).map_err(|e| format!("{}: {e}", vm.name()))?;
        let (touches, change) = match request.state {
            State::Absent => (has_level(vm), Change::Remove),
            State::Reverted => (!unchanged_since_level(hv, vm, &disk(vm), level)?, Change::Restore),
            _ => (!unchanged_since_level(hv, vm, &disk(vm), level)?, Change::Save),
        };
        // Refused before any domain is shut down: a snapshot in a file this would replace.
        if touches {
            backing_file::refuse_over_snapshots(hv, vm, &disk(vm), level, change).map_err(|e| e.to_string())?;
        }
        if touches || !unfinished.is_empty() {
            touched.push((vm, unfinished));
        }
    }
    if check_mode || touched.is_empty() {
        let results = vms
            .iter()
            .map(|vm| {
                let unfinished = touched.iter().find(|(t, _)| t.name() == vm.name()).map(|(_, u)| u.as_slice());
                let mut result = json!({ "name": vm.name(), "changed": unfinished.is_some(), "file": level_file(vm) });
                if let Some(unfinished) = unfinished.filter(|u| !u.is_empty()) {
                    result["unfinished"] = json!(unfinished.iter().map(describe_unfinished).collect::<Vec<_>>());
                }
                result
            })
            .collect();
        return Ok(report(!touched.is_empty(), results, before.clone(), before));
    }
    let handles =
        touched.iter().map(|(vm, _)| hv.vm(vm.name())).collect::<Result<Vec<_>, _>>().map_err(|e| e.to_string())?;
    let stopped = shut_down(&handles, request.shutdown_first.unwrap_or(DEFAULT_SHUTDOWN))?;
    let mut results = Vec::new();
    let mut failure = None;
    for vm in &handles {
        let started = Instant::now();
        let mut result = json!({ "name": vm.name(), "changed": true, "file": level_file(vm) });
        let done = carry_out(hv, vm, &disk(vm), level, request.state, &mut result);
        result["seconds"] = json!(round(started.elapsed().as_secs_f64()));
        match done {
            Ok(()) => results.push(result),
            Err(e) => {
                // What was repaired before the failure changed the domain, and so did an
                // operation that stopped half-way (its marker says which; the next run ends it).
                let unfinished = backing_file::unfinished(hv, &disk(vm)).unwrap_or_default();
                if !unfinished.is_empty() {
                    result["unfinished"] = json!(unfinished.iter().map(describe_unfinished).collect::<Vec<_>>());
                }
                if result.get("repaired").is_some() || !unfinished.is_empty() {
                    results.push(result);
                }
                failure = Some(format!("{}: {e}", vm.name()));
                break;
            }
        }
    }
    let restarted = restart(&handles, &stopped);
    if let Some(msg) = failure {
        let msg = match restarted {
            Ok(()) => msg,
            Err(again) => format!("{msg}; starting again what was shut down: {again}"),
        };
        return Err(Failure::after(msg, results, !stopped.is_empty()));
    }
    if let Err(e) = restarted {
        return Err(Failure::after(e, results, true));
    }
    let after = level_names(hv, vms, &disk).map_err(|msg| Failure::after(msg, results.clone(), true))?;
    Ok(report(true, results, before, after))
}

/// Repairs what killed runs left on `disk`'s levels, then does what `state` asks unless the
/// repair already made it so; `result` gets `repaired` and `action`.
fn carry_out(
    hv: &Hypervisor,
    vm: &Vm,
    disk: &str,
    level: Option<&str>,
    state: State,
    result: &mut Value,
) -> Result<(), virtfarm_libvirt::Error> {
    let repaired = backing_file::repair(hv, vm, disk)?;
    if !repaired.is_empty() {
        result["repaired"] = json!(repaired);
    }
    let action = match state {
        State::Present | State::Reverted if !repaired.is_empty() && backing_file::is_saved(hv, disk, level)? => {
            "repaired"
        }
        State::Present => backing_file::save(hv, vm, disk, level)?.as_str(),
        State::Reverted => backing_file::restore(hv, vm, disk, level).map(|()| "restored")?,
        _ if backing_file::remove(hv, vm, disk, level)? => "removed",
        _ => "repaired",
    };
    result["action"] = json!(action);
    Ok(())
}

/// True when saving or restoring `level` would change nothing: the domain is off (a running
/// guest may be writing), writes into `disk` itself (not into an overlay on it), and that
/// disk sits on the level, empty.
fn unchanged_since_level(hv: &Hypervisor, vm: &Vm, disk: &str, level: Option<&str>) -> Result<bool, String> {
    let off = vm.power_state().map_err(|e| e.to_string())? == PowerState::ShutOff;
    let writes_disk = vm.facts().map_err(|e| e.to_string())?.disks.iter().any(|d| d.file.as_deref() == Some(disk));
    Ok(off && writes_disk && backing_file::is_saved(hv, disk, level).map_err(|e| e.to_string())?)
}

fn report(changed: bool, results: Vec<Value>, before: Value, after: Value) -> Report {
    let mut fields = Map::new();
    fields.insert("vms".to_string(), Value::Array(results));
    Report { changed, fields, diff: (before, after) }
}

/// `{domain: [level files]}`.
fn level_names(hv: &Hypervisor, vms: &[Vm], disk: &impl Fn(&Vm) -> String) -> Result<Value, String> {
    let mut names = Map::new();
    for vm in vms {
        let levels = backing_file::levels(hv, &disk(vm)).map_err(|e| e.to_string())?;
        names.insert(vm.name().to_string(), levels.into_iter().map(|l| Value::String(l.file)).collect());
    }
    Ok(Value::Object(names))
}

fn describe(level: &Level) -> Value {
    json!({
        "name": level.name, "file": level.file, "backing": level.backing, "current": level.current,
        "unfinished": level.pending.map(|p| p.as_str()),
    })
}

fn describe_unfinished(unfinished: &Unfinished) -> Value {
    json!({ "level": unfinished.level, "file": unfinished.file, "operation": unfinished.operation.as_str() })
}
