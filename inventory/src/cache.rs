//! The optional cache file: a rendered inventory, reused while it is younger than its TTL
//! and was made with the same settings.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use serde_json::{json, Value};

/// Where the cache lives and how long it stays fresh.
#[derive(Clone, Debug)]
pub struct Cache {
    pub path: PathBuf,
    pub ttl: Duration,
}

impl Cache {
    /// The cached inventory, when the file is fresh and was written for `key`; anything
    /// unreadable counts as no cache.
    pub fn load(&self, key: &str) -> Option<Value> {
        let age = std::fs::metadata(&self.path).ok()?.modified().ok()?.elapsed().unwrap_or(Duration::MAX);
        if age >= self.ttl {
            return None;
        }
        let mut cached: Value = serde_json::from_slice(&std::fs::read(&self.path).ok()?).ok()?;
        (cached["key"] == key).then(|| cached["inventory"].take())
    }

    /// Writes the inventory for `key`, atomically: a reader never sees half a file.
    pub fn store(&self, key: &str, inventory: &Value) -> std::io::Result<()> {
        let written = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let text = serde_json::to_vec(&json!({ "key": key, "written": written, "inventory": inventory }))?;
        let partial = self.path.with_extension(format!("partial-{}", std::process::id()));
        std::fs::write(&partial, text)?;
        std::fs::rename(&partial, &self.path)
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
}
