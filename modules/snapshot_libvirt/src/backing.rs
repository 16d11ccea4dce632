//! `mode: backing_file`: the TripleO snapshot-libvirt role's `.bak` files, per domain image
//! `<volume_path>/<domain>.qcow2`, with named levels, listing and removal.

use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};
use virtfarm_libvirt::snapshot::backing_file::{self, Level};
use virtfarm_libvirt::{Hypervisor, PowerState, Vm};

use crate::request::{Request, State};
use crate::run::{restart, round, shut_down, Report};

/// How long a guest may take to shut down when `shutdown_first` does not say.
const DEFAULT_SHUTDOWN: Duration = Duration::from_secs(120);

/// Runs the backing-file mode: domains are shut down first (the files of a running domain
/// are not touched) and started again afterwards.
pub fn run(
    hv: &Hypervisor,
    vms: &[Vm],
    volume_path: &str,
    request: &Request,
    check_mode: bool,
) -> Result<Report, String> {
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
            return Err(format!("snapshot: no backing file {} for domain {}", level_file(vm), vm.name()));
        }
    }
    // Removing changes the disk when the level exists; saving and restoring unless the
    // overlay of a shut-off domain is empty on the level already.
    let mut touched: Vec<&Vm> = Vec::new();
    for vm in vms {
        let touches = match request.state {
            State::Absent => has_level(vm),
            _ => !unchanged_since_level(hv, vm, &disk(vm), level)?,
        };
        if touches {
            touched.push(vm);
        }
    }
    if check_mode || touched.is_empty() {
        let results = vms.iter().map(|vm| json!({ "name": vm.name(), "changed": touched.iter().any(|t| t.name() == vm.name()), "file": level_file(vm) })).collect();
        return Ok(report(!touched.is_empty(), results, before.clone(), before));
    }
    let handles =
        touched.iter().map(|vm| hv.vm(vm.name())).collect::<Result<Vec<_>, _>>().map_err(|e| e.to_string())?;
    let stopped = shut_down(&handles, request.shutdown_first.unwrap_or(DEFAULT_SHUTDOWN))?;
    let mut results = Vec::new();
    let mut failure = None;
    for vm in &handles {
        let started = Instant::now();
        let done = match request.state {
            State::Present => backing_file::save(hv, vm, &disk(vm), level).map(|saved| saved.as_str()),
            State::Reverted => backing_file::restore(hv, vm, &disk(vm), level).map(|()| "restored"),
            _ => backing_file::remove(hv, vm, &disk(vm), level).map(|_| "removed"),
        };
        match done {
            Ok(action) => results.push(json!({ "name": vm.name(), "changed": true, "file": level_file(vm), "action": action, "seconds": round(started.elapsed().as_secs_f64()) })),
            Err(e) => {
                failure = Some(format!("{}: {e}", vm.name()));
                break;
            }
        }
    }
    let restarted = restart(&handles, &stopped);
    if let Some(msg) = failure {
        return Err(msg);
    }
    restarted?;
    let after = level_names(hv, vms, &disk)?;
    Ok(report(true, results, before, after))
}

/// True when saving or restoring `level` would change nothing: the domain is off (a running
/// guest may be writing) and its overlay sits on the level, empty.
fn unchanged_since_level(hv: &Hypervisor, vm: &Vm, disk: &str, level: Option<&str>) -> Result<bool, String> {
    let off = vm.power_state().map_err(|e| e.to_string())? == PowerState::ShutOff;
    Ok(off && backing_file::is_saved(hv, disk, level).map_err(|e| e.to_string())?)
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
    json!({ "name": level.name, "file": level.file, "backing": level.backing, "current": level.current })
}
