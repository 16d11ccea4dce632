//! The backing-file mode: the TripleO snapshot-libvirt role's `.bak` files, per domain image
//! `<volume_path>/<domain>.qcow2`, with named levels, listing and removal.

use std::time::{Duration, Instant};

use super::outcome::{Action, Failure, LevelAction, NamesPerDomain, Outcome, Repairs, RunError, VmOutcome};
use super::power_round::{restart, shut_down};
use super::request::{Request, State};
use crate::connection::Hypervisor;
use crate::error::Result;
use crate::snapshot::backing_file::{self, Change, Unfinished};
use crate::vm::{PowerState, Vm};

/// How long a guest may take to shut down when the request does not say.
const DEFAULT_SHUTDOWN: Duration = Duration::from_secs(120);

/// The images a run works on: `<volume_path>/<domain>.qcow2` each, and the level asked for.
struct Images<'a> {
    hv: &'a Hypervisor,
    volume_path: &'a str,
    level: Option<&'a str>,
}

impl Images<'_> {
    fn disk(&self, vm: &Vm) -> String {
        format!("{}/{}.qcow2", self.volume_path, vm.name())
    }

    fn level_file(&self, vm: &Vm) -> String {
        backing_file::level_path(&self.disk(vm), self.level)
    }

    /// The level files of each domain.
    fn level_names(&self, vms: &[Vm]) -> Result<NamesPerDomain> {
        let files = |vm: &Vm| Ok(backing_file::levels(self.hv, &self.disk(vm))?.into_iter().map(|l| l.file).collect());
        vms.iter().map(|vm| Ok((vm.name().to_string(), files(vm)?))).collect()
    }
}

/// Runs the backing-file mode on `vms`, all on `hv`: domains are shut down first (the files
/// of a running domain are not touched) and started again afterwards. What a killed run left
/// under way on a domain's levels is finished or undone first ([`backing_file::repair`]).
pub(super) fn run(
    hv: &Hypervisor,
    vms: &[Vm],
    volume_path: &str,
    request: &Request,
    check_mode: bool,
) -> Result<Outcome, Box<Failure>> {
    let images = Images { hv, volume_path, level: request.snapshot.as_deref() };
    let before = images.level_names(vms)?;
    if request.state == State::List {
        let listed = |vm: &Vm| {
            let levels = backing_file::levels(hv, &images.disk(vm))?;
            Ok(outcome(vm, Action::LevelsListed { disk: images.disk(vm), levels }))
        };
        return Ok(unchanged(false, vms.iter().map(listed).collect::<Result<_>>()?, before));
    }
    let has_level = |vm: &Vm| {
        let file = images.level_file(vm);
        before.iter().any(|(domain, files)| domain == vm.name() && files.contains(&file))
    };
    if request.state == State::Reverted {
        if let Some(vm) = vms.iter().find(|vm| !has_level(vm)) {
            return Err(RunError::LevelNotFound { file: images.level_file(vm), domain: vm.name().to_string() }.into());
        }
    }
    let change = change_for(request.state);
    let touched = touched(&images, vms, change, has_level)?;
    if check_mode || touched.is_empty() {
        let results = vms.iter().map(|vm| checked(vm.name(), images.level_file(vm), &touched)).collect();
        return Ok(unchanged(!touched.is_empty(), results, before));
    }
    let handles = touched.iter().map(|(name, _)| hv.vm(name)).collect::<Result<Vec<_>>>()?;
    let stopped = shut_down(&handles, request.shutdown_first.unwrap_or(DEFAULT_SHUTDOWN))?;
    let (results, failure) = change_each(&images, &handles, change);
    let restarted = restart(&handles, &stopped);
    if let Some(failure) = failure {
        let error = match restarted {
            Ok(()) => failure,
            Err(again) => RunError::NotRestarted { cause: Some(Box::new(failure)), source: again },
        };
        return Err(Failure::after(error, results, !stopped.is_empty()));
    }
    if let Err(e) = restarted {
        return Err(Failure::after(RunError::NotRestarted { cause: None, source: e }, results, true));
    }
    let after = images.level_names(vms).map_err(|e| Failure::after(e, results.clone(), true))?;
    Ok(Outcome { changed: true, vms: results, repairs: Repairs::default(), before, after })
}

/// The domains whose level `change` would touch, or that carry operations killed runs left
/// unfinished, with those operations. Refuses, before any domain is shut down, a change that
/// would replace a file holding a snapshot.
///
/// Removing changes the disk when the level exists; saving and restoring unless the overlay
/// of a shut-off domain is empty on the level already.
fn touched(
    images: &Images<'_>,
    vms: &[Vm],
    change: Change,
    has_level: impl Fn(&Vm) -> bool,
) -> Result<Vec<(String, Vec<Unfinished>)>, RunError> {
    let mut touched = Vec::new();
    for vm in vms {
        let disk = images.disk(vm);
        let unfinished = backing_file::unfinished(images.hv, &disk).map_err(|source| on(vm, source))?;
        let touches = match change {
            Change::Remove => has_level(vm),
            Change::Save | Change::Restore => !unchanged_since_level(images.hv, vm, &disk, images.level)?,
        };
        if touches {
            backing_file::refuse_over_snapshots(images.hv, vm, &disk, images.level, change)?;
        }
        if touches || !unfinished.is_empty() {
            touched.push((vm.name().to_string(), unfinished));
        }
    }
    Ok(touched)
}

/// Makes `change` on each domain in turn, stopping at the first failure: the outcomes, and
/// that failure.
fn change_each(images: &Images<'_>, vms: &[Vm], change: Change) -> (Vec<VmOutcome>, Option<RunError>) {
    let mut results = Vec::new();
    for vm in vms {
        let started = Instant::now();
        let mut repaired = Vec::new();
        let done = carry_out(images, vm, change, &mut repaired);
        let seconds = started.elapsed().as_secs_f64();
        let changed = |repaired, done, unfinished| {
            outcome(vm, Action::LevelChanged { file: images.level_file(vm), repaired, done, seconds, unfinished })
        };
        match done {
            Ok(done) => results.push(changed(repaired, Some(done), Vec::new())),
            Err(e) => {
                // What was repaired before the failure changed the domain, and so did an
                // operation that stopped half-way (its marker says which; the next run ends it).
                let unfinished = backing_file::unfinished(images.hv, &images.disk(vm)).unwrap_or_default();
                if !repaired.is_empty() || !unfinished.is_empty() {
                    results.push(changed(repaired, None, unfinished));
                }
                return (results, Some(on(vm, e)));
            }
        }
    }
    (results, None)
}

/// What reaching `state` does to a level.
fn change_for(state: State) -> Change {
    match state {
        State::Absent => Change::Remove,
        State::Reverted => Change::Restore,
        State::Present | State::List => Change::Save,
    }
}

fn outcome(vm: &Vm, action: Action) -> VmOutcome {
    VmOutcome { domain: vm.name().to_string(), action }
}

fn on(vm: &Vm, source: crate::Error) -> RunError {
    RunError::OnDomain { domain: vm.name().to_string(), source }
}

/// A run that changes no file: the names stay as they were.
fn unchanged(changed: bool, vms: Vec<VmOutcome>, before: NamesPerDomain) -> Outcome {
    Outcome { changed, vms, repairs: Repairs::default(), after: before.clone(), before }
}

/// A domain's outcome without carrying anything out: touched when it is among `touched`.
fn checked(domain: &str, file: String, touched: &[(String, Vec<Unfinished>)]) -> VmOutcome {
    let unfinished = touched.iter().find(|(name, _)| name == domain).map(|(_, u)| u.clone());
    let action =
        Action::LevelChecked { file, touched: unfinished.is_some(), unfinished: unfinished.unwrap_or_default() };
    VmOutcome { domain: domain.to_string(), action }
}

/// Repairs what killed runs left on the levels of `vm`'s disk (into `repaired`), then makes
/// `change` unless the repair already made it so.
fn carry_out(images: &Images<'_>, vm: &Vm, change: Change, repaired: &mut Vec<String>) -> Result<LevelAction> {
    let (hv, disk, level) = (images.hv, &images.disk(vm), images.level);
    *repaired = backing_file::repair(hv, vm, disk)?;
    Ok(match change {
        Change::Save | Change::Restore if !repaired.is_empty() && backing_file::is_saved(hv, disk, level)? => {
            LevelAction::Repaired
        }
        Change::Save => LevelAction::Saved(backing_file::save(hv, vm, disk, level)?),
        Change::Restore => backing_file::restore(hv, vm, disk, level).map(|()| LevelAction::Restored)?,
        Change::Remove if backing_file::remove(hv, vm, disk, level)? => LevelAction::Removed,
        Change::Remove => LevelAction::Repaired,
    })
}

/// True when saving or restoring `level` would change nothing: the domain is off (a running
/// guest may be writing), writes into `disk` itself (not into an overlay on it), and that
/// disk sits on the level, empty.
fn unchanged_since_level(hv: &Hypervisor, vm: &Vm, disk: &str, level: Option<&str>) -> Result<bool> {
    let off = vm.power_state()? == PowerState::ShutOff;
    let writes_disk = vm.facts()?.disks.iter().any(|d| d.file.as_deref() == Some(disk));
    Ok(off && writes_disk && backing_file::is_saved(hv, disk, level)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::backing_file::Pending;

    #[test]
    fn each_state_makes_its_change() {
        assert_eq!(change_for(State::Present), Change::Save);
        assert_eq!(change_for(State::Reverted), Change::Restore);
        assert_eq!(change_for(State::Absent), Change::Remove);
    }

    #[test]
    fn only_touched_domains_count_as_changed() {
        let left = Unfinished { operation: Pending::Saving, level: None, file: "/i/a.qcow2.bak".into() };
        let touched = [("a".to_string(), vec![left.clone()]), ("b".to_string(), Vec::new())];
        let action = |domain| checked(domain, format!("/i/{domain}.qcow2.bak"), &touched).action;
        assert!(matches!(action("a"), Action::LevelChecked { touched: true, unfinished, .. } if unfinished == [left]));
        assert!(matches!(action("b"), Action::LevelChecked { touched: true, unfinished, .. } if unfinished.is_empty()));
        assert!(matches!(action("c"), Action::LevelChecked { touched: false, .. }));
    }
}
