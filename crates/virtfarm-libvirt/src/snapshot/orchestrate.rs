//! A whole snapshot run over a group of domains, typed from request to outcome: the domains
//! found and locked, what killed runs left repaired, then the libvirt snapshots
//! ([`snapshot_rounds`]) or the backing-file levels ([`level_rounds`]) brought to the wanted
//! state, with the domains shut down and started again around it where asked.
//!
//! ```no_run
//! use std::time::Duration;
//! use virtfarm_libvirt::snapshot::orchestrate::{self, AfterRevert, Domain, Mode, Request, State};
//!
//! let request = Request {
//!     domains: vec![Domain { name: "web1".into(), uri: "qemu:///system".into() }],
//!     mode: Mode::Snapshot,
//!     snapshot: Some("before-upgrade".into()),
//!     state: State::Present,
//!     create: Default::default(),
//!     shutdown_first: None,
//!     after_revert: AfterRevert { sync_clock: true, wait: None, timeout: Duration::from_secs(300) },
//! };
//! let outcome = orchestrate::run(&request, false).map_err(|failure| failure.error)?;
//! println!("changed: {}", outcome.changed);
//! # Ok::<(), orchestrate::RunError>(())
//! ```

mod level_rounds;
mod outcome;
mod power_round;
mod request;
mod snapshot_rounds;
mod targets;

pub use outcome::{Action, Failure, LevelAction, NamesPerDomain, Outcome, Repairs, RunError, VmOutcome};
pub use request::{check_domains, check_snapshot, AfterRevert, Domain, Mode, Request, RequestError, State};

use crate::connection::Connections;
use crate::vm::Vm;
use targets::{connect, lock_all, Target};

/// Carries out `request`; in check mode (and for [`State::List`]) nothing changes.
pub fn run(request: &Request, check_mode: bool) -> Result<Outcome, Box<Failure>> {
    let mut connections = Connections::default();
    let targets = connect(request, &mut connections)?;
    let changing = !check_mode && request.state != State::List;
    let _locks = if changing { lock_all(&targets)? } else { Vec::new() };
    // Holding the locks, what a killed run left (paused, frozen, merging) is repaired first.
    let repairs = if changing { repair(&targets)? } else { Repairs::default() };
    let outcome = if let (Mode::BackingFile { volume_path }, Some(first)) = (&request.mode, targets.first()) {
        // One hypervisor: the caller checked that.
        let hv = first.hv;
        let vms: Vec<Vm> = targets.into_iter().map(|t| t.vm).collect();
        level_rounds::run(hv, &vms, volume_path, request, check_mode)
    } else {
        snapshot_rounds::run(&targets, request, check_mode)
    };
    let repaired = !repairs.is_empty();
    match outcome {
        Ok(outcome) => Ok(Outcome { changed: outcome.changed || repaired, repairs, ..outcome }),
        Err(failure) => Err(Box::new(Failure { changed: failure.changed || repaired, repairs, ..*failure })),
    }
}

/// Repairs what killed runs left on the domains. On failure, what was repaired before it.
fn repair(targets: &[Target<'_>]) -> Result<Repairs, Box<Failure>> {
    let mut repairs = Repairs::default();
    for Target { hv, vm } in targets {
        let domain = || vm.name().to_string();
        let failed = |error: RunError, repairs: Repairs| {
            Box::new(Failure { error, changed: !repairs.is_empty(), vms: None, repairs })
        };
        match crate::snapshot::repair_left_by_killed_run(vm) {
            Ok(done) => repairs.record(vm.name(), done),
            Err(source) => return Err(failed(RunError::Repairing { domain: domain(), source }, repairs)),
        }
        match crate::snapshot::remove_unused_revert_overlays(hv, vm) {
            Ok(removed) => repairs.removed_left_overlays.extend(removed),
            Err(source) => return Err(failed(RunError::RemovingOverlays { domain: domain(), source }, repairs)),
        }
    }
    Ok(repairs)
}
