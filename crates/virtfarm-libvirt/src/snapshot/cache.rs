//! A per-project snapshot cache of one VM: before a run, restore what a previous run kept
//! (or keep the clean state on the first run) and prune the inits of other revisions; after
//! the init work, keep it as this revision's init snapshot. [`plan`] decides from the names
//! alone; this module carries the decision out.

pub mod phases;
pub mod plan;

use std::time::Instant;

pub use plan::{decide, CacheAction, CacheNames, CachePlan, CacheSteps};

use super::{create_group, delete, revert, CreateOptions, Created, Member, RevertOptions, Reverted};
use crate::connection::Hypervisor;
use crate::error::{Error, Result};
use crate::vm::Vm;

/// What [`prepare`] did, or in check mode would do.
#[derive(Debug)]
pub struct Prepared {
    /// The decision.
    pub plan: CachePlan,
    /// The snapshot restored or taken; `None` in check mode or when the plan takes none.
    pub step: Option<CacheStep>,
    /// The snapshot names before.
    pub before: Vec<String>,
    /// The snapshot names after (predicted, in check mode).
    pub after: Vec<String>,
    /// Seconds the snapshot work took.
    pub seconds: f64,
}

/// One snapshot restored or taken.
#[derive(Debug)]
pub enum CacheStep {
    /// The VM was reverted to `snapshot`.
    Restored {
        /// The snapshot's name.
        snapshot: String,
        /// How the revert went.
        reverted: Reverted,
    },
    /// `snapshot` was taken.
    Taken {
        /// The snapshot's name.
        snapshot: String,
        /// How it was taken.
        created: Created,
    },
}

/// Restores or takes the cache snapshot as [`decide`] says from `vm`'s snapshots, then prunes
/// (when `prune`); in check mode, changes nothing.
pub fn prepare(
    hv: &Hypervisor,
    vm: &Vm,
    names: &CacheNames,
    allowed: CacheSteps,
    prune: bool,
    check: bool,
) -> Result<Prepared> {
    let before = snapshot_names(vm)?;
    let plan = decide(&before, names, allowed, prune);
    let started = Instant::now();
    if check {
        let after = plan.predicted(&before, names);
        return Ok(Prepared { plan, step: None, before, after, seconds: started.elapsed().as_secs_f64() });
    }
    let restore = |snapshot: &str| -> Result<CacheStep> {
        let reverted = revert(hv, vm, snapshot, &RevertOptions::default())?;
        Ok(CacheStep::Restored { snapshot: snapshot.to_string(), reverted })
    };
    let step = match plan.action {
        CacheAction::RestoreInit => Some(restore(&names.init)?),
        CacheAction::RestoreClean => Some(restore(&names.clean)?),
        CacheAction::CreateClean => {
            Some(CacheStep::Taken { snapshot: names.clean.clone(), created: take(hv, vm, &names.clean, true)? })
        }
        CacheAction::Nothing => None,
    };
    for stale in &plan.prune {
        delete(hv, vm, stale)?;
    }
    let after = snapshot_names(vm)?;
    Ok(Prepared { plan, step, before, after, seconds: started.elapsed().as_secs_f64() })
}

/// What [`save`] did, or in check mode would do.
#[derive(Debug)]
pub enum Saved {
    /// The init snapshot of this revision was there already.
    Existing,
    /// Check mode: it would be taken.
    WouldTake,
    /// It was taken.
    Taken {
        /// How.
        created: Created,
        /// The snapshot names before.
        before: Vec<String>,
        /// The snapshot names after.
        after: Vec<String>,
    },
}

/// Takes the init snapshot of this revision unless it exists; in check mode, changes nothing.
pub fn save(hv: &Hypervisor, vm: &Vm, names: &CacheNames, quiesce: bool, check: bool) -> Result<Saved> {
    let before = snapshot_names(vm)?;
    if before.contains(&names.init) {
        return Ok(Saved::Existing);
    }
    if check {
        return Ok(Saved::WouldTake);
    }
    let created = take(hv, vm, &names.init, quiesce)?;
    Ok(Saved::Taken { created, before, after: snapshot_names(vm)? })
}

fn snapshot_names(vm: &Vm) -> Result<Vec<String>> {
    Ok(vm.snapshots()?.into_iter().map(|s| s.name).collect())
}

/// Takes snapshot `name` of `vm` alone, of the kind its disks allow.
fn take(hv: &Hypervisor, vm: &Vm, name: &str, quiesce: bool) -> Result<Created> {
    let options = CreateOptions { quiesce, ..CreateOptions::default() };
    let mut created = create_group(&[Member { hypervisor: hv, vm }], name, &options)?;
    created.pop().ok_or_else(|| Error::Refused(format!("taking snapshot {name} of {} gave no result", vm.name())))
}
