//! Typed reads from a JSON object of parameters, with errors that name the parameter by its
//! full path (`vms[1].cloud_init.user`), and a final check that nothing unknown was passed.
//!
//! Values are coerced the way AnsibleModule does: `-a key=3` passes "3", playbooks pass 3.

use anyhow::{anyhow, bail, Result};
use serde_json::{Map, Value};

/// The parameters of one object, consumed as they are read.
pub struct Fields {
    path: String,
    map: Map<String, Value>,
}

impl Fields {
    /// `value` must be an object; `path` names it in errors (empty at the top level).
    pub fn new(path: &str, value: Value) -> Result<Self> {
        match value {
            Value::Object(map) => Ok(Fields { path: path.to_string(), map }),
            other => bail!("{path}: expected a dictionary, got {}", kind(&other)),
        }
    }

    /// The full name of `key`, for messages.
    pub fn name(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    /// True when `key` was given (and not null).
    pub fn has(&self, key: &str) -> bool {
        self.map.get(key).is_some_and(|v| !v.is_null())
    }

    /// Takes `key` as it is; null counts as absent.
    pub fn take(&mut self, key: &str) -> Option<Value> {
        self.map.remove(key).filter(|v| !v.is_null())
    }

    /// A string; numbers and booleans are accepted as their text.
    pub fn string(&mut self, key: &str) -> Result<Option<String>> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v @ (Value::Number(_) | Value::Bool(_))) => Ok(Some(v.to_string())),
            Some(other) => bail!("{}: expected a string, got {}", self.name(key), kind(&other)),
        }
    }

    /// A non-empty string that must be given.
    pub fn required_string(&mut self, key: &str) -> Result<String> {
        match self.string(key)? {
            Some(s) if !s.trim().is_empty() => Ok(s),
            _ => bail!("{}: required", self.name(key)),
        }
    }

    /// One of `choices`.
    pub fn choice(&mut self, key: &str, choices: &[&str]) -> Result<Option<String>> {
        match self.string(key)? {
            Some(value) if !choices.contains(&value.as_str()) => {
                bail!("{}: '{value}' is not one of {}", self.name(key), choices.join(", "))
            }
            other => Ok(other),
        }
    }

    /// A non-negative integer; "3" is accepted.
    pub fn integer(&mut self, key: &str) -> Result<Option<u64>> {
        let name = self.name(key);
        match self.take(key) {
            None => Ok(None),
            Some(Value::Number(n)) => n.as_u64().map(Some).ok_or_else(|| anyhow!("{name}: expected a non-negative integer, got {n}")),
            Some(Value::String(s)) => {
                s.trim().parse().map(Some).map_err(|_| anyhow!("{name}: expected a non-negative integer, got '{s}'"))
            }
            Some(other) => bail!("{name}: expected an integer, got {}", kind(&other)),
        }
    }

    /// A size: an integer in `default_unit`, or a string with a unit (`512M`, `2G`, `10GiB`); in bytes.
    pub fn size(&mut self, key: &str, default_unit: u64) -> Result<Option<u64>> {
        let name = self.name(key);
        match self.take(key) {
            None => Ok(None),
            Some(Value::Number(n)) => n
                .as_u64()
                .and_then(|n| n.checked_mul(default_unit))
                .map(Some)
                .ok_or_else(|| anyhow!("{name}: expected a positive size, got {n}")),
            Some(Value::String(s)) => parse_size(&s, default_unit).map(Some).ok_or_else(|| {
                anyhow!("{name}: '{s}' is not a size (examples: 512, 512M, 2G, 10GiB)")
            }),
            Some(other) => bail!("{name}: expected a size, got {}", kind(&other)),
        }
    }

    /// A boolean; "yes"/"no"/"true"/"false" are accepted as Ansible does.
    pub fn boolean(&mut self, key: &str) -> Result<Option<bool>> {
        let name = self.name(key);
        match self.take(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(b)),
            Some(Value::String(s)) => match s.to_ascii_lowercase().as_str() {
                "yes" | "true" | "on" | "1" | "y" => Ok(Some(true)),
                "no" | "false" | "off" | "0" | "n" => Ok(Some(false)),
                _ => bail!("{name}: '{s}' is not a boolean"),
            },
            Some(other) => bail!("{name}: expected a boolean, got {}", kind(&other)),
        }
    }

    /// A list; a single string counts as a one-item list, like AnsibleModule does.
    pub fn list(&mut self, key: &str) -> Result<Vec<Value>> {
        match self.take(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => Ok(items),
            Some(s @ Value::String(_)) => Ok(vec![s]),
            Some(other) => bail!("{}: expected a list, got {}", self.name(key), kind(&other)),
        }
    }

    /// A list of strings.
    pub fn strings(&mut self, key: &str) -> Result<Vec<String>> {
        let name = self.name(key);
        self.list(key)?
            .into_iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::String(s) => Ok(s),
                v @ Value::Number(_) => Ok(v.to_string()),
                other => bail!("{name}[{i}]: expected a string, got {}", kind(&other)),
            })
            .collect()
    }

    /// A nested dictionary.
    pub fn object(&mut self, key: &str) -> Result<Option<Fields>> {
        let name = self.name(key);
        self.take(key).map(|value| Fields::new(&name, value)).transpose()
    }

    /// Fails naming every parameter that was not read.
    pub fn finish(self) -> Result<()> {
        if self.map.is_empty() {
            return Ok(());
        }
        let unknown: Vec<String> = self.map.keys().map(|k| self.name(k)).collect();
        bail!("unsupported parameter(s): {}", unknown.join(", "))
    }

    /// The keys still unread.
    pub fn into_map(self) -> Map<String, Value> {
        self.map
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a dictionary",
    }
}

/// `512` (in `default_unit`), `512M`, `2G`, `2GiB`, `1T`, `4096B`; binary units.
fn parse_size(text: &str, default_unit: u64) -> Option<u64> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    let multiplier = match unit.trim().to_ascii_uppercase().trim_end_matches("IB").trim_end_matches('B') {
        "" if unit.trim().is_empty() => default_unit,
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        "T" => 1 << 40,
        _ => return None,
    };
    number.checked_mul(multiplier).filter(|n| *n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512", 1 << 20), Some(512 << 20));
        assert_eq!(parse_size("2G", 1), Some(2 << 30));
        assert_eq!(parse_size("2GiB", 1), Some(2 << 30));
        assert_eq!(parse_size("10gb", 1), Some(10 << 30));
        assert_eq!(parse_size("4096B", 1 << 20), Some(4096));
        for bad in ["", "G", "2X", "-1", "0", "1.5G"] {
            assert_eq!(parse_size(bad, 1), None, "{bad}");
        }
    }

    #[test]
    fn errors_name_the_parameter() {
        let mut fields = Fields::new("vms[2]", json!({"memory": "lots", "vcpus": "2", "x": 1})).unwrap();
        let err = fields.size("memory", 1 << 20).unwrap_err().to_string();
        assert!(err.starts_with("vms[2].memory:"), "{err}");
        assert_eq!(fields.integer("vcpus").unwrap(), Some(2));
        let err = fields.finish().unwrap_err().to_string();
        assert_eq!(err, "unsupported parameter(s): vms[2].x");
        let mut top = Fields::new("", json!({"state": "gone"})).unwrap();
        let err = top.choice("state", &["present", "absent"]).unwrap_err().to_string();
        assert_eq!(err, "state: 'gone' is not one of present, absent");
    }
}
