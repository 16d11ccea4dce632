//! The libvirt-snapshot mode: list, create (a group, all or none), delete and revert.

use super::outcome::{predicted, Action, Failure, Outcome, Repairs, RunError, VmOutcome};
use super::power_round::{restart, shut_down, ShutDown};
use super::request::{Request, State};
use super::targets::{snapshot_names, Target};
use crate::error::Result;
use crate::snapshot::{self, Member, RevertOptions, SnapshotType};
use crate::vm::{PowerState, Vm};
use crate::wait::{self, LeaseBaseline, Readiness};

/// Brings the snapshot of every target to `request.state`.
pub(super) fn run(targets: &[Target<'_>], request: &Request, check_mode: bool) -> Result<Outcome, Box<Failure>> {
    let before = snapshot_names(targets)?;
    let (changed, vms) = match (request.state, request.snapshot.as_deref()) {
        (State::List, _) | (_, None) => (false, list(targets)?),
        (State::Present, Some(name)) => present(targets, name, request, check_mode)?,
        (State::Absent, Some(name)) => absent(targets, name, check_mode)?,
        (State::Reverted, Some(name)) => reverted(targets, name, request, check_mode)?,
    };
    let after = if changed && !check_mode {
        snapshot_names(targets)?
    } else {
        predicted(&before, request.state, request.snapshot.as_deref(), changed)
    };
    Ok(Outcome { changed, vms, repairs: Repairs::default(), before, after })
}

fn outcome(vm: &Vm, action: Action) -> VmOutcome {
    VmOutcome { domain: vm.name().to_string(), action }
}

fn list(targets: &[Target<'_>]) -> Result<Vec<VmOutcome>> {
    targets.iter().map(|Target { vm, .. }| Ok(outcome(vm, Action::Listed(vm.snapshots()?)))).collect()
}

fn has_snapshot(vm: &Vm, name: &str) -> Result<bool> {
    vm.find_snapshot(name).map(|s| s.is_some())
}

fn present(
    targets: &[Target<'_>],
    name: &str,
    request: &Request,
    check_mode: bool,
) -> Result<(bool, Vec<VmOutcome>), Box<Failure>> {
    let mut results = Vec::new();
    let mut missing = Vec::new();
    for target in targets {
        if has_snapshot(&target.vm, name)? {
            results.push(outcome(&target.vm, Action::AlreadyDone));
        } else {
            missing.push(Member { hypervisor: target.hv, vm: &target.vm });
        }
    }
    if missing.is_empty() {
        return Ok((false, results));
    }
    if check_mode {
        for member in &missing {
            results.push(outcome(member.vm, Action::WouldCreate(would_create(member, name, request)?)));
        }
        return Ok((true, results));
    }
    let vms = || missing.iter().map(|m| m.vm);
    let stopped = match request.shutdown_first {
        Some(timeout) => shut_down(vms(), timeout)?,
        None => ShutDown::default(),
    };
    let taken = snapshot::create_group(&missing, name, &request.create);
    let restarted = restart(vms(), &stopped);
    let taken = match taken {
        Ok(taken) => taken,
        Err(e) => {
            // All or none: the group rolled back what it took, unless that failed too.
            for vm in vms() {
                let kept = has_snapshot(vm, name).unwrap_or(true);
                let shutdown = stopped.how(vm.name());
                if kept || shutdown.is_some() {
                    results.push(outcome(vm, Action::CreateFailed { kept, shutdown }));
                }
            }
            let error = match restarted {
                Ok(()) => RunError::Libvirt(e),
                Err(again) => RunError::NotRestarted { cause: Some(Box::new(e.into())), source: again },
            };
            return Err(Failure::after(error, results, !stopped.is_empty()));
        }
    };
    if let Err(e) = restarted {
        let done = taken.iter().map(|c| VmOutcome { domain: c.domain.clone(), action: Action::CreatedNotRestarted });
        results.extend(done);
        return Err(Failure::after(RunError::NotRestarted { cause: None, source: e }, results, true));
    }
    for created in taken {
        let shutdown = stopped.how(&created.domain);
        results.push(VmOutcome { domain: created.domain.clone(), action: Action::Created { created, shutdown } });
    }
    Ok((true, results))
}

/// The kind of snapshot `member` would get, refused as the real run would refuse it.
fn would_create(member: &Member<'_>, name: &str, request: &Request) -> Result<SnapshotType> {
    let facts = member.vm.facts()?;
    let running = member.vm.power_state()? != PowerState::ShutOff;
    let kind = snapshot::choose_type(&facts, running && request.shutdown_first.is_none(), &request.create)?;
    if kind == SnapshotType::Internal {
        snapshot::refuse_name_inside(member.hypervisor, &facts, name)?;
    }
    Ok(kind)
}

fn absent(targets: &[Target<'_>], name: &str, check_mode: bool) -> Result<(bool, Vec<VmOutcome>), Box<Failure>> {
    let mut changed = false;
    let mut results = Vec::new();
    for Target { hv, vm } in targets {
        let Some(info) = vm.find_snapshot(name)? else {
            results.push(outcome(vm, Action::AlreadyDone));
            continue;
        };
        changed = true;
        if check_mode {
            results.push(outcome(vm, Action::WouldDelete(info.kind)));
            continue;
        }
        match snapshot::delete(hv, vm, name) {
            Ok(deleted) => results.push(outcome(vm, Action::Deleted(deleted))),
            Err(e) => return Err(Failure::after(e, results, false)),
        }
    }
    Ok((changed, results))
}

/// libvirt records which snapshot is current but not whether the disks changed since, so
/// every run reverts (and reports a change).
///
/// The domains are reverted all at once, one thread each: a revert that restores RAM, the
/// agent wait before the clock sync and the wait for the guest take seconds per guest, and
/// the guests are independent. Every failure is reported, each naming its domain.
fn reverted(
    targets: &[Target<'_>],
    name: &str,
    request: &Request,
    check_mode: bool,
) -> Result<(bool, Vec<VmOutcome>), Box<Failure>> {
    for Target { vm, .. } in targets {
        if !has_snapshot(vm, name)? {
            return Err(RunError::SnapshotNotFound { snapshot: name.to_string(), domain: vm.name().to_string() }.into());
        }
    }
    if check_mode {
        return Ok((true, targets.iter().map(|t| outcome(&t.vm, Action::WouldRevert)).collect()));
    }
    let outcomes: Vec<(Option<VmOutcome>, Option<RunError>)> = std::thread::scope(|scope| {
        let handles: Vec<_> =
            targets.iter().map(|target| scope.spawn(move || revert_one(target, name, request))).collect();
        handles
            .into_iter()
            .zip(targets)
            .map(|(handle, t)| {
                let panicked = || (None, Some(RunError::RevertPanicked { domain: t.vm.name().to_string() }));
                handle.join().unwrap_or_else(|_| panicked())
            })
            .collect()
    });
    let (results, failures): (Vec<_>, Vec<_>) = outcomes.into_iter().unzip();
    let results: Vec<VmOutcome> = results.into_iter().flatten().collect();
    let failures: Vec<RunError> = failures.into_iter().flatten().collect();
    if !failures.is_empty() {
        return Err(Failure::after(RunError::Reverts(failures), results, false));
    }
    Ok((true, results))
}

/// Reverts one domain, syncs its clock and waits for it as asked: its outcome once reverted,
/// and what failed, if anything (a revert whose wait fails still changed it).
fn revert_one(target: &Target<'_>, name: &str, request: &Request) -> (Option<VmOutcome>, Option<RunError>) {
    let Target { hv, vm } = target;
    let after = &request.after_revert;
    let options = RevertOptions { sync_clock: after.sync_clock, agent_timeout: after.timeout };
    let reverted = match snapshot::revert(hv, vm, name, &options) {
        Ok(reverted) => reverted,
        Err(e) => return (None, Some(e.into())),
    };
    let (Some(signal), PowerState::Running) = (after.wait, reverted.power_state) else {
        return (Some(outcome(vm, Action::Reverted { reverted, ready: None })), None);
    };
    let readiness = Readiness { signal, timeout: after.timeout };
    // A guest resumed from a snapshot with RAM keeps the lease it held then and asks for
    // none: any current lease of its MAC is its address.
    match wait::wait_ready(hv, vm, &LeaseBaseline::any(), readiness) {
        Ok(ready) => (Some(outcome(vm, Action::Reverted { reverted, ready: Some(ready) })), None),
        Err(source) => {
            let failure = RunError::NotReady { domain: vm.name().to_string(), source };
            (Some(outcome(vm, Action::Reverted { reverted, ready: None })), Some(failure))
        }
    }
}
