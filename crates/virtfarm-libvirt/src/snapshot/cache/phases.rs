//! Which of a guest lifecycle's phase files run, and the cache revision they make.
//!
//! The files are where the lifecycle runs from (the controller, for the guest_provision role).
//! Each phase is looked up on its own, most specific directory first, so a platform can
//! override `dependencies.yaml` while sharing the generic `main.yaml`. The revision names the
//! init snapshot (see [`super::CacheNames`]): it changes when what the cached phases do does.

use std::path::PathBuf;

use serde_json::Value;

use crate::validate::{self, Invalid};

/// The phases a user may provide, in the order they run.
pub const PHASES: [&str; 4] = ["dependencies", "init", "main", "terminate"];

/// The lifecycle's steps a caller may allow, by the names ansible_farm's role gave them: the
/// phases, with the start, the cache's snapshot operations and the shutdown around them.
pub const STEPS: [&str; 10] = [
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

/// A step name that is none of [`STEPS`].
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown step {0:?}; known steps: {steps}", steps = STEPS.join(", "))]
pub struct UnknownStep(pub String);

/// Checks that each of `allowed` is one of [`STEPS`].
pub fn check_steps(allowed: &[&str]) -> Result<(), UnknownStep> {
    match allowed.iter().find(|step| !STEPS.contains(step)) {
        Some(unknown) => Err(UnknownStep(unknown.to_string())),
        None => Ok(()),
    }
}

/// The phases whose work the init snapshot keeps: their content is the cache key.
const CACHED_PHASES: [&str; 2] = ["dependencies", "init"];

/// Where to look for the phase files, and what makes the revision.
#[derive(Debug)]
pub struct PhaseQuery {
    /// The directory of the phase files.
    pub lookup_dir: PathBuf,
    /// The guest's platform: a directory under `lookup_dir`, the second most specific level.
    pub platform_name: Option<String>,
    /// The guest's target: a directory under the platform's, the most specific level.
    pub target_name: Option<String>,
    /// The phases allowed to run.
    pub allowed: Vec<String>,
    /// The revision as given, or `None` to compute it from the cached phases' files.
    pub revision: Option<String>,
    /// Extra values whose change must change the revision.
    pub revision_vars: Value,
}

/// The resolved phases and the cache key.
#[derive(Debug, PartialEq)]
pub struct PhasePlan {
    /// The directories searched, most specific first.
    pub searched: Vec<PathBuf>,
    /// For each phase in [`PHASES`] order: the file to run, or `None` (absent or not allowed).
    pub files: Vec<(&'static str, Option<PathBuf>)>,
    /// The cache revision: the user's, or a digest.
    pub revision: String,
}

/// Why a query cannot be answered.
#[derive(Debug, thiserror::Error)]
pub enum PhaseError {
    /// A platform or target name that would leave the lookup directory.
    #[error("the {level} {source}")]
    NotAPlainName {
        /// `platform` or `target`.
        level: &'static str,
        /// The rule's refusal.
        source: Invalid,
    },
    /// A phase file that exists but cannot be read.
    #[error("cannot read phase file {path}: {message}")]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// The system's reason.
        message: String,
    },
}

impl PhaseQuery {
    /// Directories to search, most specific first; a target without a platform is ignored,
    /// as the old role's path_join of the three levels was.
    fn search_dirs(&self) -> Result<Vec<PathBuf>, PhaseError> {
        let platform = plain_name("platform", self.platform_name.as_deref())?;
        let target = plain_name("target", self.target_name.as_deref())?;
        let mut dirs = Vec::with_capacity(3);
        if let Some(platform) = platform {
            let platform_dir = self.lookup_dir.join(platform);
            if let Some(target) = target {
                dirs.push(platform_dir.join(target));
            }
            dirs.push(platform_dir);
        }
        dirs.push(self.lookup_dir.clone());
        Ok(dirs)
    }

    fn allows(&self, phase: &str) -> bool {
        self.allowed.iter().any(|allowed| allowed == phase)
    }
}

/// An absent or empty name, or one directory ([`validate::directory_name`]).
fn plain_name<'a>(level: &'static str, name: Option<&'a str>) -> Result<Option<&'a str>, PhaseError> {
    let name = name.filter(|n| !n.is_empty());
    name.map(validate::directory_name).transpose().map_err(|source| PhaseError::NotAPlainName { level, source })
}

/// The first `<phase>.yaml` or `<phase>.yml` in `dirs`.
fn find_phase_file(dirs: &[PathBuf], phase: &str) -> Option<PathBuf> {
    dirs.iter()
        .flat_map(|dir| ["yaml", "yml"].map(|ext| dir.join(format!("{phase}.{ext}"))))
        .find(|candidate| candidate.is_file())
}

/// Resolves every phase and computes the revision.
pub fn plan(query: &PhaseQuery) -> Result<PhasePlan, PhaseError> {
    let searched = query.search_dirs()?;
    let found: Vec<_> = PHASES.iter().map(|&phase| (phase, find_phase_file(&searched, phase))).collect();
    // The key covers the files found, allowed or not: a run restricted by allowed_phases must
    // neither miss nor prune the cache that full runs use.
    let revision = match &query.revision {
        Some(given) => given.clone(),
        None => auto_revision(&found, &query.revision_vars)?,
    };
    let files = found.into_iter().map(|(phase, file)| (phase, file.filter(|_| query.allows(phase)))).collect();
    Ok(PhasePlan { searched, files, revision })
}

/// A digest of the cached phases' files (name and content) and of `revision_vars`.
fn auto_revision(files: &[(&'static str, Option<PathBuf>)], revision_vars: &Value) -> Result<String, PhaseError> {
    let mut digest = Fnv1a::default();
    for (phase, file) in files.iter().filter(|(phase, _)| CACHED_PHASES.contains(phase)) {
        let Some(path) = file else { continue };
        let content =
            std::fs::read(path).map_err(|e| PhaseError::Unreadable { path: path.clone(), message: e.to_string() })?;
        digest.write_framed(phase.as_bytes());
        digest.write_framed(&content);
    }
    digest.write_framed(canonical_json(revision_vars).as_bytes());
    Ok(digest.hex16())
}

/// JSON with object keys sorted, so that the order a user writes variables in does not matter.
fn canonical_json(value: &Value) -> String {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            let body: Vec<String> =
                entries.iter().map(|(k, v)| format!("{}:{}", Value::from(k.as_str()), canonical_json(v))).collect();
            format!("{{{}}}", body.join(","))
        }
        Value::Array(items) => format!("[{}]", items.iter().map(canonical_json).collect::<Vec<_>>().join(",")),
        other => other.to_string(),
    }
}

/// 128-bit FNV-1a: stable across Rust releases (unlike `DefaultHasher`), which a key kept in
/// snapshot names needs. Not cryptographic: it detects edits, it does not resist forgery. Not
/// [`crate::naming::Fingerprint`]: a different key would make every cache of a user's a stale
/// revision, which `prune` deletes.
struct Fnv1a(u128);

impl Default for Fnv1a {
    fn default() -> Self {
        Fnv1a(0x6c62272e07bb014262b821756295c58d)
    }
}

impl Fnv1a {
    const PRIME: u128 = 0x0000000001000000000000000000013B;

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 ^= u128::from(*byte);
            self.0 = self.0.wrapping_mul(Self::PRIME);
        }
    }

    /// Writes the length first, so that ("ab", "c") and ("a", "bc") differ.
    fn write_framed(&mut self, bytes: &[u8]) {
        self.write(&(bytes.len() as u64).to_le_bytes());
        self.write(bytes);
    }

    /// The top 64 bits as 16 hex digits: short enough for a snapshot name.
    fn hex16(&self) -> String {
        format!("{:016x}", (self.0 >> 64) as u64)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn allowed_steps_are_the_old_roles_names() {
        assert_eq!(check_steps(&["startup", "restore clean", "main"]), Ok(()));
        let unknown = check_steps(&["main", "mian"]).unwrap_err();
        assert_eq!(unknown, UnknownStep("mian".into()));
        assert!(unknown.to_string().starts_with("unknown step \"mian\"; known steps: startup, restore init,"));
    }
    use serde_json::json;

    fn tree(name: &str, files: &[(&str, &str)]) -> PathBuf {
        let root = std::env::temp_dir().join(format!("gp-phases-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for (path, content) in files {
            let path = root.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, content).unwrap();
        }
        root
    }

    fn query(root: &Path, allowed: &[&str]) -> PhaseQuery {
        PhaseQuery {
            lookup_dir: root.to_path_buf(),
            platform_name: Some("debian".into()),
            target_name: Some("amd64".into()),
            allowed: allowed.iter().map(|s| s.to_string()).collect(),
            revision: None,
            revision_vars: json!({}),
        }
    }

    fn file_of<'a>(plan: &'a PhasePlan, phase: &str) -> Option<&'a Path> {
        plan.files.iter().find(|(p, _)| *p == phase).and_then(|(_, f)| f.as_deref())
    }

    #[test]
    fn most_specific_file_wins_per_phase() {
        let root = tree(
            "specific",
            &[
                ("main.yaml", "generic"),
                ("init.yml", "generic"),
                ("debian/init.yaml", "platform"),
                ("debian/amd64/dependencies.yml", "target"),
                ("other/terminate.yaml", "elsewhere"),
            ],
        );
        let plan = plan(&query(&root, &PHASES)).unwrap();
        assert_eq!(file_of(&plan, "dependencies"), Some(root.join("debian/amd64/dependencies.yml").as_path()));
        assert_eq!(file_of(&plan, "init"), Some(root.join("debian/init.yaml").as_path()));
        assert_eq!(file_of(&plan, "main"), Some(root.join("main.yaml").as_path()));
        assert_eq!(file_of(&plan, "terminate"), None);
        assert_eq!(plan.searched, vec![root.join("debian/amd64"), root.join("debian"), root.clone()]);
    }

    #[test]
    fn phases_not_allowed_resolve_to_nothing() {
        let root = tree("allowed", &[("main.yaml", "m"), ("init.yaml", "i")]);
        let restricted = plan(&query(&root, &["main"])).unwrap();
        assert_eq!(file_of(&restricted, "init"), None);
        assert!(file_of(&restricted, "main").is_some());
        let full = plan(&query(&root, &PHASES)).unwrap();
        assert_eq!(restricted.revision, full.revision, "a restricted run keeps the cache key");
    }

    #[test]
    fn auto_revision_follows_cached_content_and_vars_only() {
        let root = tree("auto", &[("init.yaml", "one"), ("main.yaml", "main one")]);
        let first = plan(&query(&root, &PHASES)).unwrap().revision;
        std::fs::write(root.join("main.yaml"), "main two").unwrap();
        assert_eq!(plan(&query(&root, &PHASES)).unwrap().revision, first, "main is not cached");
        std::fs::write(root.join("init.yaml"), "two").unwrap();
        let second = plan(&query(&root, &PHASES)).unwrap().revision;
        assert_ne!(second, first);
        let mut with_vars = query(&root, &PHASES);
        with_vars.revision_vars = json!({"b": 1, "a": [1, 2]});
        let third = plan(&with_vars).unwrap().revision;
        assert_ne!(third, second);
        with_vars.revision_vars = json!({"a": [1, 2], "b": 1});
        assert_eq!(plan(&with_vars).unwrap().revision, third, "key order does not matter");
        assert_eq!(third.len(), 16);
    }

    #[test]
    fn given_revision_is_kept() {
        let root = tree("given", &[("init.yaml", "x")]);
        let mut q = query(&root, &PHASES);
        q.revision = Some("v2".into());
        assert_eq!(plan(&q).unwrap().revision, "v2");
    }

    #[test]
    fn names_that_leave_the_directory_are_refused() {
        let root = tree("plain", &[]);
        for bad in ["..", "a/b", "/etc", "."] {
            let mut q = query(&root, &PHASES);
            q.target_name = Some(bad.into());
            let err = plan(&q).unwrap_err().to_string();
            assert!(err.starts_with("the target "), "{bad}: {err}");
        }
        let mut q = query(&root, &PHASES);
        q.platform_name = None;
        assert_eq!(plan(&q).unwrap().searched, vec![root.clone()], "a target without a platform is ignored");
    }
}
