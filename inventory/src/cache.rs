//! The optional cache file: a rendered inventory, reused while it is younger than its TTL
//! and was made with the same settings. Only its owner may read or write it: the file is
//! written with mode 0600 (a missing directory is made 0700), whatever the umask, and a file
//! that others may read or write is not used.

use std::fs::{DirBuilder, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use serde_json::{json, Value};

/// Mode of the cache file.
const FILE_MODE: u32 = 0o600;
/// Mode of the directories made for it.
const DIR_MODE: u32 = 0o700;

/// Where the cache lives and how long it stays fresh.
#[derive(Clone, Debug)]
pub struct Cache {
    pub path: PathBuf,
    pub ttl: Duration,
}

impl Cache {
    /// The cached inventory, when the file is fresh, private and was written for `key`;
    /// anything else counts as no cache.
    pub fn load(&self, key: &str) -> Option<Value> {
        let metadata = std::fs::metadata(&self.path).ok()?;
        // Written by an older version, or by someone else: rewritten by the next scan.
        if metadata.permissions().mode() & 0o077 != 0 {
            return None;
        }
        let age = metadata.modified().ok()?.elapsed().unwrap_or(Duration::MAX);
        if age >= self.ttl {
            return None;
        }
        let mut cached: Value = serde_json::from_slice(&std::fs::read(&self.path).ok()?).ok()?;
        (cached["key"] == key).then(|| cached["inventory"].take())
    }

    /// Writes the inventory for `key`, atomically (a reader never sees half a file) and
    /// privately: a new file of mode 0600 renamed over the old one.
    pub fn store(&self, key: &str, inventory: &Value) -> std::io::Result<()> {
        let written = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let text = serde_json::to_vec(&json!({ "key": key, "written": written, "inventory": inventory }))?;
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
            DirBuilder::new().recursive(true).mode(DIR_MODE).create(dir)?;
        }
        let partial = self.path.with_extension(format!("partial-{}", std::process::id()));
        // Left by a killed run of a process with the same id: never reuse its mode.
        match std::fs::remove_file(&partial) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let result =
            OpenOptions::new().write(true).create_new(true).mode(FILE_MODE).open(&partial).and_then(|mut file| {
                // The umask can only take bits away; this makes the mode exact.
                file.set_permissions(std::fs::Permissions::from_mode(FILE_MODE))?;
                file.write_all(&text)?;
                file.sync_all()
            });
        match result.and_then(|()| std::fs::rename(&partial, &self.path)) {
            Ok(()) => Ok(()),
            Err(e) => {
                let _ = std::fs::remove_file(&partial);
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_matching_cache_is_reused_and_the_rest_is_not() {
        let dir = std::env::temp_dir().join(format!("libvirt_inventory-cache-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cache = Cache { path: dir.join("inv.json"), ttl: Duration::from_secs(60) };
        assert_eq!(cache.load("k"), None);
        cache.store("k", &json!({"running": {"hosts": ["a"]}})).unwrap();
        assert_eq!(cache.load("k"), Some(json!({"running": {"hosts": ["a"]}})));
        assert_eq!(cache.load("other settings"), None);
        assert_eq!(Cache { ttl: Duration::ZERO, ..cache.clone() }.load("k"), None);
        std::fs::write(&cache.path, "not json").unwrap();
        assert_eq!(cache.load("k"), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn mode(path: &std::path::Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn the_cache_is_private_whatever_was_there_before() {
        let root = std::env::temp_dir().join(format!("libvirt_inventory-private-{}", std::process::id()));
        let cache = Cache { path: root.join("made/for/it/inv.json"), ttl: Duration::from_secs(60) };
        cache.store("k", &json!({"a": 1})).unwrap();
        assert_eq!(mode(&cache.path), 0o600);
        for dir in ["made", "made/for", "made/for/it"] {
            assert_eq!(mode(&root.join(dir)), 0o700, "{dir}");
        }
        // A file others could read (an older version's, or anyone's) is neither used nor kept.
        std::fs::set_permissions(&cache.path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(cache.load("k"), None);
        cache.store("k", &json!({"a": 2})).unwrap();
        assert_eq!(mode(&cache.path), 0o600);
        assert_eq!(cache.load("k"), Some(json!({"a": 2})));
        // A partial file left behind by a killed run with the same process id.
        let partial = cache.path.with_extension(format!("partial-{}", std::process::id()));
        std::fs::write(&partial, "stale").unwrap();
        std::fs::set_permissions(&partial, std::fs::Permissions::from_mode(0o666)).unwrap();
        cache.store("k", &json!({"a": 3})).unwrap();
        assert_eq!((mode(&cache.path), cache.load("k")), (0o600, Some(json!({"a": 3}))));
        assert!(!partial.exists());
        let names: Vec<_> =
            std::fs::read_dir(root.join("made/for/it")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["inv.json"]);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
