//! Reads of the values the argument spec leaves free-form: sizes (`memory`, `disk_size`) as
//! numbers or strings, and ansible_farm's `vm` dictionary, whose keys are checked against the
//! ones that format defines. Errors name the parameter by its full path
//! (`vms[1].vm.metadata.name`).

use ansible_module::ArgumentErrors;
use anyhow::{anyhow, bail, Result};
use serde_json::{Map, Value};
use virtfarm_libvirt::validate;

/// A size: an integer in `default_unit`, or a string with a unit ([`validate::size`]); in
/// bytes. `name` is the parameter's full name, for the error.
pub fn size(name: &str, value: &Value, default_unit: u64) -> Result<u64> {
    let parsed = match value {
        Value::Number(n) => n.as_u64().and_then(|n| n.checked_mul(default_unit)).filter(|n| *n > 0),
        Value::String(s) => validate::size(s, default_unit).ok(),
        _ => None,
    };
    parsed.ok_or_else(|| anyhow!("{name}: {}", validate::Invalid::Size(brief(value))))
}

/// `value` for a message: short, on one line.
fn brief(value: &Value) -> String {
    let text = value.to_string();
    match text.char_indices().nth(40) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text,
    }
}

/// A dictionary of ansible_farm's format: values read by key, types checked on read.
pub struct Loose<'a> {
    path: String,
    map: &'a Map<String, Value>,
}

impl<'a> Loose<'a> {
    /// `value` must be a dictionary; `path` names it in errors.
    pub fn new(path: String, value: &'a Value) -> Result<Self> {
        match value {
            Value::Object(map) => Ok(Loose { path, map }),
            _ => bail!("{path}: expected a dictionary"),
        }
    }

    /// The full name of `key`.
    pub fn name(&self, key: &str) -> String {
        format!("{}.{key}", self.path)
    }

    /// The value of `key`, null counting as absent.
    pub fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|value| !value.is_null())
    }

    /// A text value; numbers are taken as their text.
    pub fn text(&self, key: &str) -> Result<Option<String>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(Value::Number(n)) => Ok(Some(n.to_string())),
            Some(_) => bail!("{}: expected a string", self.name(key)),
        }
    }

    /// A text value that must be given and not be blank.
    pub fn required_text(&self, key: &str) -> Result<String> {
        match self.text(key)? {
            Some(text) if !text.trim().is_empty() => Ok(text),
            _ => bail!("{}: required", self.name(key)),
        }
    }

    /// A nested dictionary.
    pub fn dict(&self, key: &str) -> Result<Option<Loose<'a>>> {
        self.get(key).map(|value| Loose::new(self.name(key), value)).transpose()
    }

    /// Refuses every key that is neither `honoured` nor `warned`, each named in `errors`; for
    /// each `warned` key given, adds a warning that names it and says why nothing is done with it.
    pub fn check_keys(
        &self,
        honoured: &[&str],
        warned: &[(&str, &str)],
        warnings: &mut Vec<String>,
        errors: &mut ArgumentErrors,
    ) {
        for key in self.map.keys() {
            if let Some((_, why)) = warned.iter().find(|(name, _)| name == key) {
                warnings.push(format!("{}: accepted but not run: {why}", self.name(key)));
            } else if !honoured.contains(&key.as_str()) {
                errors.push(format!("{}: unknown key (known here: {})", self.name(key), honoured.join(", ")));
            }
        }
    }

    /// A list of dictionaries, each named `KEY[INDEX]`; every item that is not one is named
    /// in `errors` and left out.
    pub fn dicts(&self, key: &str, errors: &mut ArgumentErrors) -> Vec<Loose<'a>> {
        match self.get(key) {
            None => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .filter_map(|(i, item)| errors.check(Loose::new(format!("{}[{i}]", self.name(key)), item)))
                .collect(),
            Some(_) => {
                errors.push(format!("{}: expected a list", self.name(key)));
                Vec::new()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sizes() {
        assert_eq!(size("memory", &json!(2), 1 << 20).unwrap(), 2 << 20);
        let err = size("vms[2].memory", &json!([1]), 1).unwrap_err().to_string();
        assert_eq!(err, "vms[2].memory: [1] is not a size (examples: 512, 512M, 2G, 10GiB)");
        let err = size("memory", &json!("x".repeat(1000)), 1).unwrap_err().to_string();
        assert!(err.len() < 120, "{err}");
    }

    #[test]
    fn loose_keys_are_honoured_warned_or_refused() {
        let check = |value: Value, warnings: &mut Vec<String>| {
            let mut errors = ArgumentErrors::new();
            let loose = Loose::new("vm.disks[0]".into(), &value).unwrap();
            loose.check_keys(&["src"], &[("sources", "no download")], warnings, &mut errors);
            errors.messages().to_vec()
        };
        let mut warnings = Vec::new();
        assert!(check(json!({"src": "a", "sources": []}), &mut warnings).is_empty());
        assert_eq!(warnings, ["vm.disks[0].sources: accepted but not run: no download"]);
        assert_eq!(
            check(json!({"src": "a", "colour": "red", "size": 1}), &mut warnings),
            ["vm.disks[0].colour: unknown key (known here: src)", "vm.disks[0].size: unknown key (known here: src)"]
        );
    }

    #[test]
    fn loose_reads_name_the_parameter() {
        let value = json!({"metadata": {"name": 3, "auth": "x"}, "disks": [{"src": "a"}, 7], "template": {}});
        let vm = Loose::new("vm".into(), &value).unwrap();
        let meta = vm.dict("metadata").unwrap().unwrap();
        assert_eq!(meta.required_text("name").unwrap(), "3");
        assert_eq!(meta.dict("auth").err().unwrap().to_string(), "vm.metadata.auth: expected a dictionary");
        let mut errors = ArgumentErrors::new();
        let disks = vm.dicts("disks", &mut errors);
        assert_eq!(disks.len(), 1);
        assert_eq!(errors.messages(), ["vm.disks[1]: expected a dictionary"]);
        assert_eq!(meta.required_text("hostname").unwrap_err().to_string(), "vm.metadata.hostname: required");
    }
}
