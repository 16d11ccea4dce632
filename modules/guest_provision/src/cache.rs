//! The init cache: which snapshot to restore or create, decided from the snapshot names alone.
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

/// The lifecycle steps a user may allow, in the old role's names.
pub const ALLOWED_PHASES: [&str; 10] = [
    "startup",
    "restore init",
    "create init",
    "restore clean",
    "create clean",
    "dependencies",
    "init",
    "main",
    "terminate",
    "shutdown",
];

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

/// Decides from the VM's existing snapshot names, the allowed steps and the prune option.
pub fn decide(existing: &[String], names: &CacheNames, allowed: &[&str], prune: bool) -> CachePlan {
    let has = |name: &str| existing.iter().any(|e| e == name);
    let allows = |step: &str| allowed.contains(&step);
    let action = if has(&names.init) && allows("restore init") {
        CacheAction::RestoreInit
    } else if has(&names.clean) && allows("restore clean") {
        CacheAction::RestoreClean
    } else if !has(&names.clean) && allows("create clean") {
        CacheAction::CreateClean
    } else {
        CacheAction::Nothing
    };
    let run_init = action != CacheAction::RestoreInit;
    CachePlan {
        action,
        run_init,
        save_init: run_init && allows("create init") && !has(&names.init),
        prune: if prune { existing.iter().filter(|e| names.is_stale_init(e)).cloned().collect() } else { Vec::new() },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn existing(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn first_run_creates_clean_and_asks_for_init() {
        let names = CacheNames::new("web", "r1");
        let plan = decide(&[], &names, &ALLOWED_PHASES, true);
        assert_eq!(
            plan,
            CachePlan { action: CacheAction::CreateClean, run_init: true, save_init: true, prune: vec![] }
        );
    }

    #[test]
    fn cached_run_restores_init_and_skips_init() {
        let names = CacheNames::new("web", "r1");
        let plan = decide(&existing(&["web.clean", "web.r1.init"]), &names, &ALLOWED_PHASES, true);
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
        let plan = decide(&snapshots, &names, &ALLOWED_PHASES, true);
        assert_eq!(plan.action, CacheAction::RestoreClean);
        assert!(plan.run_init && plan.save_init);
        assert_eq!(plan.prune, vec!["web.r1.init".to_string()]);
        assert!(decide(&snapshots, &names, &ALLOWED_PHASES, false).prune.is_empty());
    }

    #[test]
    fn allowed_phases_restrict_each_step() {
        let names = CacheNames::new("web", "r1");
        let both = existing(&["web.clean", "web.r1.init"]);
        let no_restore_init: Vec<&str> = ALLOWED_PHASES.iter().copied().filter(|p| *p != "restore init").collect();
        let plan = decide(&both, &names, &no_restore_init, true);
        assert_eq!(plan.action, CacheAction::RestoreClean);
        assert!(plan.run_init);
        assert!(!plan.save_init, "the init snapshot exists already");

        let plan = decide(&[], &names, &["main", "create init"], true);
        assert_eq!(plan.action, CacheAction::Nothing);
        assert!(plan.save_init);

        let plan = decide(&existing(&["web.clean"]), &names, &["create clean"], true);
        assert_eq!(plan.action, CacheAction::Nothing, "clean exists, restoring it is not allowed");
        assert!(!plan.save_init);
    }
}
