//! What a snapshot run did, per domain, and why it stopped when it failed.

use super::request::State;
use crate::error::Error;
use crate::power::StopOutcome;
use crate::snapshot::backing_file::{Level, Saved, Unfinished};
use crate::snapshot::{Created, Deleted, Repaired, Reverted, SnapshotInfo, SnapshotType};
use crate::wait::Ready;

/// The snapshots (or level files) of each domain, in the order of the request.
pub type NamesPerDomain = Vec<(String, Vec<String>)>;

/// A run that went through.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// Whether anything changed (or, in check mode, would), repairs included.
    pub changed: bool,
    /// What happened to each domain.
    pub vms: Vec<VmOutcome>,
    /// What killed runs had left, repaired first.
    pub repairs: Repairs,
    /// The snapshot (or level file) names before the run.
    pub before: NamesPerDomain,
    /// The same after it; predicted in check mode.
    pub after: NamesPerDomain,
}

/// A run that failed: why, and what had changed by then (a run that fails part way has
/// changed the domains it got through).
#[derive(Debug)]
pub struct Failure {
    /// Why it stopped.
    pub error: RunError,
    /// Whether anything changed before the failure.
    pub changed: bool,
    /// The domains handled before the failure; `None` when it came before any was.
    pub vms: Option<Vec<VmOutcome>>,
    /// What killed runs had left, repaired before the failure.
    pub repairs: Repairs,
}

impl Failure {
    /// A failure after `vms` were handled (those whose action changed them count as changes).
    pub fn after(error: impl Into<RunError>, vms: Vec<VmOutcome>, changed: bool) -> Box<Failure> {
        let changed = changed || vms.iter().any(|vm| vm.action.changes());
        Box::new(Failure { error: error.into(), changed, vms: Some(vms), repairs: Repairs::default() })
    }
}

/// A failure before any domain was handled. Boxed: a failure carries the run's results.
impl<E: Into<RunError>> From<E> for Box<Failure> {
    fn from(error: E) -> Box<Failure> {
        Box::new(Failure { error: error.into(), changed: false, vms: None, repairs: Repairs::default() })
    }
}

/// What happened to one domain.
#[derive(Clone, Debug)]
pub struct VmOutcome {
    /// The domain's name.
    pub domain: String,
    /// What was done to it.
    pub action: Action,
}

/// What a run did to one domain (or, in check mode, would do).
#[derive(Clone, Debug)]
pub enum Action {
    /// Its snapshots, listed.
    Listed(Vec<SnapshotInfo>),
    /// Nothing to do: the snapshot already exists, or already does not.
    AlreadyDone,
    /// Check mode: a snapshot of this kind would be taken.
    WouldCreate(SnapshotType),
    /// Check mode: the snapshot, of this kind, would be deleted.
    WouldDelete(SnapshotType),
    /// Check mode: it would be reverted.
    WouldRevert,
    /// The snapshot was taken; `shutdown` says how the domain was stopped first, if it was.
    Created {
        /// The snapshot taken.
        created: Created,
        /// How it was shut down before, when it was running.
        shutdown: Option<StopOutcome>,
    },
    /// The snapshot was taken, but starting the shut-down domains again failed.
    CreatedNotRestarted,
    /// The group's snapshot failed; the domain is listed because it changed all the same.
    CreateFailed {
        /// The snapshot is still there: rolling it back failed too.
        kept: bool,
        /// How it was shut down for the snapshot, if it was.
        shutdown: Option<StopOutcome>,
    },
    /// The snapshot was deleted.
    Deleted(Deleted),
    /// It was reverted to the snapshot, and found ready when a wait was asked for.
    Reverted {
        /// The revert.
        reverted: Reverted,
        /// The wait for the guest afterwards.
        ready: Option<Ready>,
    },
    /// Backing-file mode: the levels of its disk, listed.
    LevelsListed {
        /// The disk image.
        disk: String,
        /// Its levels.
        levels: Vec<Level>,
    },
    /// Backing-file mode, check mode or nothing to do: whether the level file would change.
    LevelChecked {
        /// The level file.
        file: String,
        /// The level would change, or unfinished operations would be repaired.
        touched: bool,
        /// The operations killed runs left under way on its levels.
        unfinished: Vec<Unfinished>,
    },
    /// Backing-file mode: the level was saved, restored or removed (`done`), after the
    /// repairs of what killed runs left; `done` is `None` when the run failed before it.
    LevelChanged {
        /// The level file.
        file: String,
        /// The operations of killed runs finished or undone first.
        repaired: Vec<String>,
        /// What was done to the level.
        done: Option<LevelAction>,
        /// Seconds it took.
        seconds: f64,
        /// The operations left under way by a failure (the next run ends them).
        unfinished: Vec<Unfinished>,
    },
}

impl Action {
    /// Whether the domain changed (or, in check mode, would).
    pub fn changes(&self) -> bool {
        match self {
            Action::Listed(_) | Action::AlreadyDone | Action::LevelsListed { .. } => false,
            Action::LevelChecked { touched, .. } => *touched,
            _ => true,
        }
    }
}

/// What the backing-file mode did to a level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LevelAction {
    /// Saved: created or committed.
    Saved(Saved),
    /// The disk now sits, empty, on the level.
    Restored,
    /// The level's file is gone.
    Removed,
    /// The repair of a killed run's operation already made it as asked.
    Repaired,
}

impl LevelAction {
    /// `created`, `committed`, `restored`, `removed` or `repaired`.
    pub fn as_str(self) -> &'static str {
        match self {
            LevelAction::Saved(saved) => saved.as_str(),
            LevelAction::Restored => "restored",
            LevelAction::Removed => "removed",
            LevelAction::Repaired => "repaired",
        }
    }
}

/// What killed runs had left on the domains, repaired, each list naming the domains (the
/// overlay files for `removed_left_overlays`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Repairs {
    /// Paused by a group snapshot: resumed.
    pub resumed_left_paused: Vec<String>,
    /// File systems left frozen: thawed.
    pub thawed_left_frozen: Vec<String>,
    /// Started paused by a merge: forced off again.
    pub stopped_left_merging: Vec<String>,
    /// Overlays of killed external reverts that nothing used: removed.
    pub removed_left_overlays: Vec<String>,
}

impl Repairs {
    /// True when nothing was repaired.
    pub fn is_empty(&self) -> bool {
        self.resumed_left_paused.is_empty()
            && self.thawed_left_frozen.is_empty()
            && self.stopped_left_merging.is_empty()
            && self.removed_left_overlays.is_empty()
    }

    /// Records what [`crate::snapshot::repair_left_by_killed_run`] did to `domain`.
    pub(super) fn record(&mut self, domain: &str, repaired: Repaired) {
        let lists = [
            (repaired.resumed, &mut self.resumed_left_paused),
            (repaired.thawed, &mut self.thawed_left_frozen),
            (repaired.stopped_merge, &mut self.stopped_left_merging),
        ];
        for (_, list) in lists.into_iter().filter(|(did, _)| *did) {
            list.push(domain.to_string());
        }
    }
}

/// Why a snapshot run stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// The hypervisor at `uri` could not be reached.
    #[error("{source}")]
    Connecting {
        /// Its URI.
        uri: String,
        /// Why.
        source: Error,
    },
    /// A domain of the run does not exist on its hypervisor.
    #[error("domain '{name}' not found on {uri}")]
    DomainNotFound {
        /// The domain.
        name: String,
        /// Its hypervisor's URI.
        uri: String,
    },
    /// Repairing what a killed run left on a domain failed.
    #[error("{domain}: repairing what a killed run left: {source}")]
    Repairing {
        /// The domain.
        domain: String,
        /// Why.
        source: Error,
    },
    /// Removing the overlays a killed revert left failed.
    #[error("{domain}: removing the overlays a killed revert left: {source}")]
    RemovingOverlays {
        /// The domain.
        domain: String,
        /// Why.
        source: Error,
    },
    /// A domain lacks the snapshot to revert to.
    #[error("'{snapshot}' not found on domain {domain}")]
    SnapshotNotFound {
        /// The snapshot.
        snapshot: String,
        /// The domain.
        domain: String,
    },
    /// A domain lacks the level file to restore.
    #[error("no backing file {file} for domain {domain}")]
    LevelNotFound {
        /// The level file.
        file: String,
        /// The domain.
        domain: String,
    },
    /// A reverted guest did not become ready in time.
    #[error("{domain}: {source}")]
    NotReady {
        /// The domain.
        domain: String,
        /// Why.
        source: Error,
    },
    /// The thread reverting a domain panicked.
    #[error("{domain}: the revert failed unexpectedly")]
    RevertPanicked {
        /// The domain.
        domain: String,
    },
    /// Several domains failed their reverts.
    #[error("{}", join(.0))]
    Reverts(Vec<RunError>),
    /// Work on one domain's files failed.
    #[error("{domain}: {source}")]
    OnDomain {
        /// The domain.
        domain: String,
        /// Why.
        source: Error,
    },
    /// Starting again the domains shut down for the run failed, after `cause` if something
    /// failed before.
    #[error("{}", not_restarted(.cause.as_deref(), .source))]
    NotRestarted {
        /// What failed before, if anything.
        cause: Option<Box<RunError>>,
        /// Why starting failed.
        source: Error,
    },
    /// A libvirt operation failed.
    #[error(transparent)]
    Libvirt(#[from] Error),
}

fn join(errors: &[RunError]) -> String {
    errors.iter().map(RunError::to_string).collect::<Vec<_>>().join("; ")
}

fn not_restarted(cause: Option<&RunError>, restart: &Error) -> String {
    match cause {
        Some(cause) => format!("{cause}; starting again what was shut down: {restart}"),
        None => restart.to_string(),
    }
}

/// The names a check-mode run expects afterwards: `name` added by [`State::Present`],
/// removed by [`State::Absent`], when the run would change anything.
pub(super) fn predicted(before: &NamesPerDomain, state: State, name: Option<&str>, changed: bool) -> NamesPerDomain {
    let (Some(name), true) = (name, changed) else { return before.clone() };
    let mut after = before.clone();
    for (_, list) in &mut after {
        let has = list.iter().any(|n| n == name);
        match state {
            State::Present if !has => list.push(name.to_string()),
            State::Absent => list.retain(|n| n != name),
            _ => {}
        }
    }
    after
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(lists: &[(&str, &[&str])]) -> NamesPerDomain {
        lists.iter().map(|(d, l)| (d.to_string(), l.iter().map(|n| n.to_string()).collect())).collect()
    }

    #[test]
    fn check_mode_predicts_the_snapshot_lists() {
        let before = names(&[("a", &["s1"]), ("b", &["s1", "s2"])]);
        let both = names(&[("a", &["s1", "s2"]), ("b", &["s1", "s2"])]);
        assert_eq!(predicted(&before, State::Present, Some("s2"), true), both);
        assert_eq!(predicted(&before, State::Absent, Some("s2"), true), names(&[("a", &["s1"]), ("b", &["s1"])]));
        assert_eq!(predicted(&before, State::Reverted, Some("s2"), true), before);
        assert_eq!(predicted(&before, State::Present, Some("s2"), false), before);
    }

    #[test]
    fn a_failure_counts_the_domains_it_changed() {
        let vm = |action| VmOutcome { domain: "a".into(), action };
        assert!(!Failure::after(Error::Refused("x".into()), vec![vm(Action::AlreadyDone)], false).changed);
        assert!(Failure::after(Error::Refused("x".into()), vec![vm(Action::AlreadyDone)], true).changed);
        let kept = Action::CreateFailed { kept: true, shutdown: None };
        assert!(Failure::after(Error::Refused("x".into()), vec![vm(kept)], false).changed);
        let untouched = Action::LevelChecked { file: "f".into(), touched: false, unfinished: Vec::new() };
        assert!(!Failure::after(Error::Refused("x".into()), vec![vm(untouched)], false).changed);
        let early = Box::<Failure>::from(Error::Refused("x".into()));
        assert!(early.vms.is_none() && !early.changed);
    }

    #[test]
    fn repairs_go_to_the_list_of_what_was_done() {
        let mut repairs = Repairs::default();
        assert!(repairs.is_empty());
        repairs.record("a", Repaired { resumed: true, thawed: true, stopped_merge: false });
        repairs.record("b", Repaired { stopped_merge: true, ..Repaired::default() });
        repairs.record("c", Repaired::default());
        assert_eq!(repairs.resumed_left_paused, ["a"]);
        assert_eq!(repairs.thawed_left_frozen, ["a"]);
        assert_eq!(repairs.stopped_left_merging, ["b"]);
        assert!(repairs.removed_left_overlays.is_empty() && !repairs.is_empty());
    }

    #[test]
    fn a_failed_restart_follows_what_failed_before() {
        let restart = || Error::Refused("domain is gone".into());
        let alone = RunError::NotRestarted { cause: None, source: restart() };
        assert_eq!(alone.to_string(), "domain is gone");
        let cause = Box::new(RunError::OnDomain { domain: "a".into(), source: Error::Refused("full".into()) });
        let after = RunError::NotRestarted { cause: Some(cause), source: restart() };
        assert_eq!(after.to_string(), "a: full; starting again what was shut down: domain is gone");
        let both = RunError::Reverts(vec![
            RunError::RevertPanicked { domain: "a".into() },
            RunError::RevertPanicked { domain: "b".into() },
        ]);
        assert_eq!(both.to_string(), "a: the revert failed unexpectedly; b: the revert failed unexpectedly");
    }
}
