//! Taking the same snapshot of several domains as close together as possible.
//!
//! File systems are frozen first (they must be: a paused guest cannot answer its agent),
//! then every running domain is paused, each snapshot taken, all resumed and thawed. A
//! domain whose snapshot keeps its RAM is resumed just before its own snapshot, because the
//! snapshot records the power state (libvirt pauses it during the save anyway). If one
//! domain fails, the snapshots already taken of the others are deleted again. The domains may
//! live on different hypervisors: each comes with its own connection.
//!
//! Only domains that run are paused, each recorded as paused by this run first (see
//! [`super::marker`]); only those are resumed. A domain its user paused is snapshotted as it
//! is and stays paused, and a run killed while it holds domains paused leaves the record for
//! the next run, which resumes exactly those ([`super::repair_left_by_killed_run`]).

use std::time::{Duration, Instant};

use super::marker::{self, Mark};
use super::{choose_type, delete, take, CreateOptions, SnapshotType};
use crate::connection::Hypervisor;
use crate::error::{Error, Result};
use crate::vm::{PowerState, Vm};

/// How a domain's file systems were made consistent for a disk-only snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Quiesce {
    /// Frozen through the guest agent (`guest-fsfreeze-freeze`) and thawed after.
    Fsfreeze,
    /// Freezing failed; `sync` ran through the agent instead.
    Sync,
    /// Asked for, but the agent could do neither: the snapshot is crash-consistent.
    None,
    /// Not needed: the snapshot keeps RAM, the domain is off, or quiescing was not asked for.
    NotNeeded,
}

impl Quiesce {
    /// `fsfreeze`, `sync`, `none` or `not_needed`, as in results.
    pub fn as_str(self) -> &'static str {
        match self {
            Quiesce::Fsfreeze => "fsfreeze",
            Quiesce::Sync => "sync",
            Quiesce::None => "none",
            Quiesce::NotNeeded => "not_needed",
        }
    }
}

/// One snapshot taken.
#[derive(Clone, Debug)]
pub struct Created {
    /// The domain.
    pub domain: String,
    /// Internal or external.
    pub kind: SnapshotType,
    /// True when the guest's RAM is in the snapshot.
    pub memory: bool,
    /// How the file systems were quiesced.
    pub quiesce: Quiesce,
    /// Seconds the snapshot call took for this domain.
    pub seconds: f64,
}

/// Time allowed for `sync` in a guest whose file systems could not be frozen.
const SYNC_TIMEOUT: Duration = Duration::from_secs(30);

/// A domain of a group, with the connection to the hypervisor it runs on.
#[derive(Clone, Copy)]
pub struct Member<'a> {
    /// Its hypervisor.
    pub hypervisor: &'a Hypervisor,
    /// The domain.
    pub vm: &'a Vm,
}

struct Plan<'a> {
    hypervisor: &'a Hypervisor,
    vm: &'a Vm,
    facts: crate::domain_facts::DomainFacts,
    kind: SnapshotType,
    memory: bool,
    /// Not shut off: running, or paused by its user.
    running: bool,
    /// Its power state when the run found it.
    state: PowerState,
}

/// Takes snapshot `name` of every member; all or none.
pub fn create_group(members: &[Member<'_>], name: &str, options: &CreateOptions) -> Result<Vec<Created>> {
    let plans = members.iter().map(|member| plan(*member, name, options)).collect::<Result<Vec<_>>>()?;
    let quiesced: Vec<Quiesce> = plans.iter().map(|p| quiesce(p, options.quiesce)).collect();
    let mut paused: Vec<&Vm> = if plans.len() > 1 {
        plans.iter().filter(|p| p.state == PowerState::Running).map(|p| p.vm).filter(|vm| pause(vm)).collect()
    } else {
        Vec::new()
    };
    let mut created = Vec::new();
    let mut failure = None;
    for (plan, quiesce) in plans.iter().zip(&quiesced) {
        // A snapshot with RAM records the power state: taken paused, it would revert paused.
        // libvirt pauses the guest itself while it saves the RAM.
        if plan.memory && paused.iter().any(|vm| vm.name() == plan.vm.name()) {
            if let Err(e) = plan.vm.resume() {
                failure = Some(e);
                break;
            }
            paused.retain(|vm| vm.name() != plan.vm.name());
            // Resumed: nothing left for a later run to undo (a mark left here is cleared there).
            let _ = marker::clear(plan.vm, Mark::Paused);
        }
        let started = Instant::now();
        match take(plan.hypervisor, plan.vm, &plan.facts, name, plan.kind, plan.memory) {
            Ok(()) => created.push(Created {
                domain: plan.vm.name().to_string(),
                kind: plan.kind,
                memory: plan.memory,
                quiesce: *quiesce,
                seconds: started.elapsed().as_secs_f64(),
            }),
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    let mut problems: Vec<String> = Vec::new();
    for vm in paused {
        if matches!(vm.power_state(), Ok(PowerState::Paused)) {
            if let Err(e) = vm.resume() {
                problems.push(e.to_string());
                // Still paused: the mark stays, for the next run to resume it.
                continue;
            }
        }
        if let Err(e) = marker::clear(vm, Mark::Paused) {
            problems.push(e.to_string());
        }
    }
    for (plan, _) in plans.iter().zip(&quiesced).filter(|(_, q)| **q == Quiesce::Fsfreeze) {
        if let Err(e) = plan.vm.agent().thaw() {
            problems.push(e.to_string());
        }
    }
    if let Some(error) = failure {
        let rolled_back = roll_back(&plans, name, &created);
        problems.insert(0, error.to_string());
        problems.push(rolled_back);
        return Err(Error::Refused(problems.join("; ")));
    }
    if !problems.is_empty() {
        return Err(Error::Refused(format!("snapshot {name} taken, but: {}", problems.join("; "))));
    }
    Ok(created)
}

fn plan<'a>(member: Member<'a>, name: &str, options: &CreateOptions) -> Result<Plan<'a>> {
    let Member { hypervisor, vm } = member;
    let state = vm.power_state()?;
    let running = state != PowerState::ShutOff;
    let facts = vm.facts()?;
    let kind = choose_type(&facts, running, options)?;
    if kind == SnapshotType::Internal {
        super::refuse_name_inside(hypervisor, &facts, name)?;
    }
    let memory = kind == SnapshotType::Internal && options.memory.unwrap_or(running);
    Ok(Plan { hypervisor, vm, facts, kind, memory, running, state })
}

/// Pauses a running member, recording first that this run did; false (not paused) when it
/// cannot be recorded or paused: it is then snapshotted running, a little apart from the rest.
fn pause(vm: &Vm) -> bool {
    if marker::set(vm, Mark::Paused).is_err() {
        return false;
    }
    if vm.suspend().is_ok() {
        return true;
    }
    let _ = marker::clear(vm, Mark::Paused);
    false
}

/// Freezes (or syncs) the guest's file systems when a disk-only snapshot of a running guest is planned.
fn quiesce(plan: &Plan<'_>, asked: bool) -> Quiesce {
    if !asked || !plan.running || plan.memory {
        return Quiesce::NotNeeded;
    }
    // A guest its user paused cannot answer its agent: its disks are consistent as they are
    // (crash-consistent), with no freeze to wait out.
    if plan.state != PowerState::Running {
        return Quiesce::None;
    }
    let agent = plan.vm.agent();
    // A run killed between freeze and thaw may have left the guest frozen.
    let _ = super::thaw_if_left_frozen(plan.vm);
    if agent.freeze().is_ok() {
        Quiesce::Fsfreeze
    } else if agent.sync(SYNC_TIMEOUT).is_ok() {
        Quiesce::Sync
    } else {
        Quiesce::None
    }
}

/// Deletes the snapshots already taken; says what happened, for the error message.
fn roll_back(plans: &[Plan<'_>], name: &str, created: &[Created]) -> String {
    if created.is_empty() {
        return "no snapshot was taken".to_string();
    }
    let mut outcome = Vec::new();
    for done in created {
        let result = plans.iter().find(|p| p.vm.name() == done.domain).map(|p| delete(p.hypervisor, p.vm, name));
        outcome.push(match result {
            Some(Ok(_)) => format!("rolled back on {}", done.domain),
            Some(Err(e)) => format!("rolling back on {} failed: {e}", done.domain),
            None => format!("rolling back on {} failed: domain not found", done.domain),
        });
    }
    outcome.join(", ")
}
