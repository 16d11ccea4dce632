//! The pure decision: which snapshot to restore or take, and which to prune, from the
//! snapshot names alone.
//!
//! Names are namespaced per project so that projects sharing an image never touch each
//! other's snapshots: `<project>.clean` and `<project>.<revision>.init`.

/// The snapshot names of one project at one revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheNames {
    project: String,
    /// The VM as it was before any phase ran.
    pub clean: String,
    /// The VM after the dependencies and init phases of this revision.
    pub init: String,
}

impl CacheNames {
    /// The names for `project` at `revision`.
    pub fn new(project: &str, revision: &str) -> Self {
        CacheNames {
            project: project.to_string(),
            clean: format!("{project}.clean"),
            init: format!("{project}.{revision}.init"),
        }
    }

    /// True for an init snapshot of this project at another revision. Revisions with a dot
    /// are never taken for stale: `a.b.1.init` may be project `a.b`'s, not project `a`'s.
    fn is_stale_init(&self, name: &str) -> bool {
        name != self.init
            && name
                .strip_prefix(&self.project)
                .and_then(|rest| rest.strip_prefix('.'))
                .and_then(|rest| rest.strip_suffix(".init"))
                .is_some_and(|revision| !revision.is_empty() && !revision.contains('.'))
    }
}

/// The snapshot operations the caller allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheSteps {
    /// Revert to this revision's init snapshot.
    pub restore_init: bool,
    /// Take this revision's init snapshot after init has run.
    pub create_init: bool,
    /// Revert to the project's clean snapshot.
    pub restore_clean: bool,
    /// Take the project's clean snapshot on its first run.
    pub create_clean: bool,
}

impl CacheSteps {
    /// Every operation allowed.
    pub const ALL: CacheSteps =
        CacheSteps { restore_init: true, create_init: true, restore_clean: true, create_clean: true };

    /// The operations among the lifecycle steps `allowed` (see [`super::phases::STEPS`]).
    pub fn allowed_by(allowed: &[&str]) -> CacheSteps {
        let allows = |step: &str| allowed.contains(&step);
        CacheSteps {
            restore_init: allows("restore init"),
            create_init: allows("create init"),
            restore_clean: allows("restore clean"),
            create_clean: allows("create clean"),
        }
    }
}

/// What to do with the snapshots before the phases run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheAction {
    /// Revert to this revision's init snapshot: dependencies and init are skipped.
    RestoreInit,
    /// Revert to the project's clean snapshot, then run dependencies and init.
    RestoreClean,
    /// First run of the project on this VM: keep the clean state for later runs.
    CreateClean,
    /// Nothing allowed or nothing to do.
    Nothing,
}

impl CacheAction {
    /// The name used in results.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheAction::RestoreInit => "restore init",
            CacheAction::RestoreClean => "restore clean",
            CacheAction::CreateClean => "create clean",
            CacheAction::Nothing => "none",
        }
    }
}

/// The decision for one VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachePlan {
    /// The snapshot operation.
    pub action: CacheAction,
    /// Dependencies and init must run: the init snapshot was not restored.
    pub run_init: bool,
    /// After init, take the init snapshot (allowed, and not there already).
    pub save_init: bool,
    /// Init snapshots of other revisions of this project, to delete.
    pub prune: Vec<String>,
}

impl CachePlan {
    /// True when carrying out the plan changes the VM's snapshots.
    pub fn changes(&self) -> bool {
        self.action != CacheAction::Nothing || !self.prune.is_empty()
    }

    /// The snapshot names that carrying out the plan leaves, predicted from `before` (for
    /// check mode, which carries out nothing).
    pub fn predicted(&self, before: &[String], names: &CacheNames) -> Vec<String> {
        let mut after: Vec<String> = before.iter().filter(|n| !self.prune.contains(n)).cloned().collect();
        if self.action == CacheAction::CreateClean {
            after.push(names.clean.clone());
        }
        after
    }
}

/// Decides from the VM's existing snapshot names, the allowed steps and whether to prune.
pub fn decide(existing: &[String], names: &CacheNames, allowed: CacheSteps, prune: bool) -> CachePlan {
    let has = |name: &str| existing.iter().any(|e| e == name);
    let action = if has(&names.init) && allowed.restore_init {
        CacheAction::RestoreInit
    } else if has(&names.clean) && allowed.restore_clean {
        CacheAction::RestoreClean
    } else if !has(&names.clean) && allowed.create_clean {
        CacheAction::CreateClean
    } else {
        CacheAction::Nothing
    };
    let run_init = action != CacheAction::RestoreInit;
    CachePlan {
        action,
        run_init,
        save_init: run_init && allowed.create_init && !has(&names.init),
        prune: if prune { existing.iter().filter(|e| names.is_stale_init(e)).cloned().collect() } else { Vec::new() },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_snapshot_step_is_allowed_by_its_old_name() {
        assert_eq!(CacheSteps::allowed_by(&super::super::phases::STEPS), CacheSteps::ALL);
        let none = CacheSteps { restore_init: false, create_init: false, restore_clean: false, create_clean: false };
        assert_eq!(CacheSteps::allowed_by(&["startup", "dependencies", "init", "main", "terminate", "shutdown"]), none);
        assert_eq!(CacheSteps::allowed_by(&["restore init"]), CacheSteps { restore_init: true, ..none });
        assert_eq!(CacheSteps::allowed_by(&["create init"]), CacheSteps { create_init: true, ..none });
        assert_eq!(CacheSteps::allowed_by(&["restore clean"]), CacheSteps { restore_clean: true, ..none });
        assert_eq!(CacheSteps::allowed_by(&["create clean"]), CacheSteps { create_clean: true, ..none });
    }

    const NONE: CacheSteps =
        CacheSteps { restore_init: false, create_init: false, restore_clean: false, create_clean: false };

    fn existing(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn first_run_creates_clean_and_asks_for_init() {
        let names = CacheNames::new("web", "r1");
        let plan = decide(&[], &names, CacheSteps::ALL, true);
        assert_eq!(
            plan,
            CachePlan { action: CacheAction::CreateClean, run_init: true, save_init: true, prune: vec![] }
        );
    }

    #[test]
    fn cached_run_restores_init_and_skips_init() {
        let names = CacheNames::new("web", "r1");
        let plan = decide(&existing(&["web.clean", "web.r1.init"]), &names, CacheSteps::ALL, true);
        assert_eq!(plan.action, CacheAction::RestoreInit);
        assert!(!plan.run_init && !plan.save_init);
    }

    #[test]
    fn new_revision_restores_clean_and_prunes_only_own_stale_inits() {
        let names = CacheNames::new("web", "r2");
        let snapshots = existing(&[
            "web.clean",
            "web.r1.init",
            "web.x.r0.init",
            "webapp.r1.init",
            "other.r1.init",
            "web.r2.init.bak",
        ]);
        let plan = decide(&snapshots, &names, CacheSteps::ALL, true);
        assert_eq!(plan.action, CacheAction::RestoreClean);
        assert!(plan.run_init && plan.save_init);
        assert_eq!(plan.prune, vec!["web.r1.init".to_string()]);
        assert!(decide(&snapshots, &names, CacheSteps::ALL, false).prune.is_empty());
    }

    #[test]
    fn allowed_steps_restrict_each_step() {
        let names = CacheNames::new("web", "r1");
        let both = existing(&["web.clean", "web.r1.init"]);
        let plan = decide(&both, &names, CacheSteps { restore_init: false, ..CacheSteps::ALL }, true);
        assert_eq!(plan.action, CacheAction::RestoreClean);
        assert!(plan.run_init);
        assert!(!plan.save_init, "the init snapshot exists already");

        let plan = decide(&[], &names, CacheSteps { create_init: true, ..NONE }, true);
        assert_eq!(plan.action, CacheAction::Nothing);
        assert!(plan.save_init);

        let plan = decide(&existing(&["web.clean"]), &names, CacheSteps { create_clean: true, ..NONE }, true);
        assert_eq!(plan.action, CacheAction::Nothing, "clean exists, restoring it is not allowed");
        assert!(!plan.save_init);
    }

    #[test]
    fn predicted_names_drop_the_pruned_and_add_a_new_clean() {
        let names = CacheNames::new("web", "r2");
        let first = decide(&existing(&["other.clean"]), &names, CacheSteps::ALL, true);
        assert!(first.changes());
        assert_eq!(first.predicted(&existing(&["other.clean"]), &names), existing(&["other.clean", "web.clean"]));

        let before = existing(&["web.clean", "web.r1.init"]);
        let new_revision = decide(&before, &names, CacheSteps::ALL, true);
        assert_eq!(new_revision.predicted(&before, &names), existing(&["web.clean"]), "restoring adds no name");

        let untouched = decide(&before, &names, NONE, false);
        assert!(!untouched.changes());
        assert_eq!(untouched.predicted(&before, &names), before);
    }
}
