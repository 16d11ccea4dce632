//! Validated parameters, read with typed getters or into a serde type.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::error::Error;
use crate::validate::qualified;

/// The module's parameters after validation: every option of the spec by
/// its canonical name, converted to its type, defaults filled in.
///
/// Getters return an error rather than panic when they do not match the
/// spec (a module bug), so the user still gets a failed result that says so.
/// An option that was neither given nor defaulted is unset: `opt_*` getters
/// return `None` for it and the others an error.
///
/// When the spec refused some values, a module's own rules still read the
/// others (see [`execute_parsed`](crate::execute_parsed)): a refused option
/// has no value for [`get`](Params::get), counts as set for
/// [`is_set`](Params::is_set) (so no rule says it is missing), and every typed
/// getter of it gives [`Error::Refused`], the spec's own message.
#[derive(Debug, Clone, PartialEq)]
pub struct Params {
    /// Always a JSON object.
    values: Value,
    /// Where these parameters are: empty at the top, `cloud_init` inside it.
    path: String,
    /// The options the spec refused, by full path, with its message about
    /// each; shared with the nested parameters.
    refused: Arc<BTreeMap<String, String>>,
}

impl Params {
    pub(crate) fn new(values: Map<String, Value>, path: String, refused: Arc<BTreeMap<String, String>>) -> Params {
        Params { values: Value::Object(values), path, refused }
    }

    /// The value of an option, `None` if unset or refused.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.values.get(name).filter(|value| !value.is_null())
    }

    /// Whether an option was given or defaulted (or refused: given, and
    /// already reported).
    pub fn is_set(&self, name: &str) -> bool {
        self.get(name).is_some() || self.refused.contains_key(&self.name_of(name))
    }

    /// A `str` or `path` option.
    pub fn str(&self, name: &str) -> Result<&str, Error> {
        self.required(name, self.opt_str(name)?)
    }

    /// A `str` or `path` option that may be unset.
    pub fn opt_str(&self, name: &str) -> Result<Option<&str>, Error> {
        self.typed(name, "str", Value::as_str)
    }

    /// An `int` or `bytes` option.
    pub fn int(&self, name: &str) -> Result<i64, Error> {
        self.required(name, self.opt_int(name)?)
    }

    /// An `int` or `bytes` option that may be unset.
    pub fn opt_int(&self, name: &str) -> Result<Option<i64>, Error> {
        self.typed(name, "int", Value::as_i64)
    }

    /// A `float` option.
    pub fn float(&self, name: &str) -> Result<f64, Error> {
        self.required(name, self.opt_float(name)?)
    }

    /// A `float` option that may be unset.
    pub fn opt_float(&self, name: &str) -> Result<Option<f64>, Error> {
        self.typed(name, "float", Value::as_f64)
    }

    /// A `bool` option.
    pub fn bool(&self, name: &str) -> Result<bool, Error> {
        self.required(name, self.opt_bool(name)?)
    }

    /// A `bool` option that may be unset.
    pub fn opt_bool(&self, name: &str) -> Result<Option<bool>, Error> {
        self.typed(name, "bool", Value::as_bool)
    }

    /// A `list` option, its elements as they are; see also [`Params::dicts`].
    pub fn opt_list(&self, name: &str) -> Result<Option<&[Value]>, Error> {
        self.typed(name, "list", |value| value.as_array().map(Vec::as_slice))
    }

    /// A `list` option with `str` elements; empty if unset.
    pub fn list_of_str(&self, name: &str) -> Result<Vec<&str>, Error> {
        Ok(self.typed(name, "list of str", str_items)?.unwrap_or_default())
    }

    /// A `dict` option, whose own getters name its options `NAME.OPTION`.
    pub fn dict(&self, name: &str) -> Result<Params, Error> {
        self.required(name, self.opt_dict(name)?)
    }

    /// A `dict` option that may be unset.
    pub fn opt_dict(&self, name: &str) -> Result<Option<Params>, Error> {
        let section = |value: &Value| {
            let map = value.as_object()?.clone();
            Some(Params::new(map, qualified(&self.path, name), self.refused.clone()))
        };
        self.typed(name, "dict", section)
    }

    /// A `list` option of `dict`s (with suboptions), each with getters that
    /// name its options `NAME[INDEX].OPTION`; empty if unset.
    pub fn dicts(&self, name: &str) -> Result<Vec<Params>, Error> {
        let path = qualified(&self.path, name);
        let sections = |value: &Value| {
            let items = value.as_array()?.iter().enumerate();
            items
                .map(|(index, item)| {
                    let map = item.as_object()?.clone();
                    Some(Params::new(map, format!("{path}[{index}]"), self.refused.clone()))
                })
                .collect()
        };
        Ok(self.typed(name, "list of dict", sections)?.unwrap_or_default())
    }

    /// The full name of option `name` of these parameters, for messages:
    /// `name` at the top, `vms[2].cloud_init.user` in nested ones.
    pub fn name_of(&self, name: &str) -> String {
        qualified(&self.path, name)
    }

    /// `value`, option `name`'s, through the module's own `rule`; a refusal is
    /// [`Error::Invalid`], naming the option by its full path.
    pub fn checked<T, U, E: std::fmt::Display>(
        &self,
        name: &str,
        value: T,
        rule: impl FnOnce(T) -> Result<U, E>,
    ) -> Result<U, Error> {
        rule(value).map_err(|reason| Error::Invalid { name: self.name_of(name), reason: reason.to_string() })
    }

    /// A `str` option that may be unset, through the module's own `rule` when set.
    pub fn opt_str_checked<'a, U, E: std::fmt::Display>(
        &'a self,
        name: &str,
        rule: impl FnOnce(&'a str) -> Result<U, E>,
    ) -> Result<Option<U>, Error> {
        self.opt_str(name)?.map(|value| self.checked(name, value, rule)).transpose()
    }

    /// An `int` option through the module's own `rule`.
    pub fn int_checked<U, E: std::fmt::Display>(
        &self,
        name: &str,
        rule: impl FnOnce(i64) -> Result<U, E>,
    ) -> Result<U, Error> {
        self.checked(name, self.int(name)?, rule)
    }

    /// All parameters as a serde type, for modules that parse in two steps:
    /// the spec checks what the user wrote, the type carries the meaning.
    /// Unset options are `null`, which suits `Option` fields.
    pub fn deserialize<'de, T: Deserialize<'de>>(&'de self) -> Result<T, Error> {
        T::deserialize(&self.values).map_err(|source| Error::Deserialize { target: std::any::type_name::<T>(), source })
    }

    /// All parameters as a JSON object, unset options `null`.
    pub fn as_value(&self) -> &Value {
        &self.values
    }

    fn typed<'a, T>(
        &'a self,
        name: &str,
        expected: &'static str,
        read: impl FnOnce(&'a Value) -> Option<T>,
    ) -> Result<Option<T>, Error> {
        if let Some(message) = self.refused.get(&self.name_of(name)) {
            return Err(Error::Refused { name: self.name_of(name), message: message.clone() });
        }
        match self.get(name) {
            None => Ok(None),
            Some(value) => {
                read(value).map(Some).ok_or_else(|| Error::WrongType { name: qualified(&self.path, name), expected })
            }
        }
    }

    fn required<T>(&self, name: &str, value: Option<T>) -> Result<T, Error> {
        value.ok_or_else(|| Error::NoValue(qualified(&self.path, name)))
    }
}

fn str_items(value: &Value) -> Option<Vec<&str>> {
    value.as_array()?.iter().map(Value::as_str).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn params(values: Value) -> Params {
        Params::new(values.as_object().unwrap().clone(), String::new(), Arc::default())
    }

    fn sample() -> Params {
        params(json!({
            "name": "web01",
            "memory": 2048,
            "ratio": 0.5,
            "autostart": true,
            "tags": ["a", "b"],
            "ports": [1, 2],
            "note": null,
            "cloud_init": {"user": "ops", "shell": null},
        }))
    }

    #[test]
    fn a_modules_own_rule_names_the_option_by_its_full_path() {
        let p = sample();
        let short = |text: &str| if text.len() <= 4 { Ok(text.len()) } else { Err(format!("{text:?} is too long")) };
        assert_eq!(p.opt_str_checked("note", short).unwrap(), None);
        let cloud_init = p.dict("cloud_init").unwrap();
        assert_eq!(cloud_init.opt_str_checked("user", short).unwrap(), Some(3));
        assert_eq!(p.opt_str_checked("name", short).unwrap_err().to_string(), "name: \"web01\" is too long");
        let even = |n: i64| if n % 2 == 0 { Ok(n / 2) } else { Err("must be even") };
        assert_eq!(p.int_checked("memory", even).unwrap(), 1024);
        let err = cloud_init.checked("shell", 3, even).unwrap_err();
        assert_eq!(err.to_string(), "cloud_init.shell: must be even");
        assert!(p.int_checked("name", even).is_err(), "the getter's own error comes first");
    }

    #[test]
    fn typed_getters() {
        let p = sample();
        assert_eq!(p.str("name").unwrap(), "web01");
        assert_eq!(p.int("memory").unwrap(), 2048);
        assert_eq!(p.float("ratio").unwrap(), 0.5);
        assert_eq!(p.float("memory").unwrap(), 2048.0);
        assert!(p.bool("autostart").unwrap());
        assert_eq!(p.list_of_str("tags").unwrap(), ["a", "b"]);
        assert_eq!(p.dict("cloud_init").unwrap().str("user").unwrap(), "ops");
    }

    #[test]
    fn lists_of_dicts_name_their_items() {
        let p = params(json!({"disks": [{"path": "/a"}, {"path": 3}], "tags": ["a"]}));
        let disks = p.dicts("disks").unwrap();
        assert_eq!(disks[0].str("path").unwrap(), "/a");
        assert_eq!(disks[1].name_of("path"), "disks[1].path");
        assert_eq!(disks[1].str("path").unwrap_err().to_string(), "parameter 'disks[1].path' is not of type str");
        assert!(p.dicts("none").unwrap().is_empty());
        assert_eq!(p.dicts("tags").unwrap_err().to_string(), "parameter 'tags' is not of type list of dict");
    }

    #[test]
    fn unset_options() {
        let p = sample();
        assert_eq!(p.opt_str("note").unwrap(), None);
        assert!(!p.is_set("note") && p.is_set("name"));
        assert_eq!(p.opt_int("nothing").unwrap(), None);
        assert_eq!(p.opt_bool("note").unwrap(), None);
        assert_eq!(p.opt_float("note").unwrap(), None);
        assert!(p.opt_dict("note").unwrap().is_none());
        assert!(p.list_of_str("note").unwrap().is_empty());
        assert_eq!(p.str("note").unwrap_err().to_string(), "parameter 'note' has no value");
        assert_eq!(
            p.dict("cloud_init").unwrap().str("shell").unwrap_err().to_string(),
            "parameter 'cloud_init.shell' has no value"
        );
    }

    #[test]
    fn getters_that_do_not_match_the_spec_fail_with_the_name() {
        let p = sample();
        assert_eq!(p.int("name").unwrap_err().to_string(), "parameter 'name' is not of type int");
        assert_eq!(p.str("memory").unwrap_err().to_string(), "parameter 'memory' is not of type str");
        assert_eq!(p.list_of_str("ports").unwrap_err().to_string(), "parameter 'ports' is not of type list of str");
        assert_eq!(p.dict("tags").unwrap_err().to_string(), "parameter 'tags' is not of type dict");
    }

    #[test]
    fn deserialize_into_a_serde_type() {
        #[derive(Debug, Deserialize, PartialEq)]
        struct CloudInit<'a> {
            user: &'a str,
            shell: Option<String>,
        }
        #[derive(Debug, Deserialize, PartialEq)]
        struct Args<'a> {
            name: String,
            memory: u32,
            note: Option<String>,
            #[serde(borrow)]
            cloud_init: CloudInit<'a>,
        }
        let p = sample();
        let args: Args = p.deserialize().unwrap();
        assert_eq!(
            args,
            Args { name: "web01".into(), memory: 2048, note: None, cloud_init: CloudInit { user: "ops", shell: None } }
        );

        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct Wrong {
            name: u32,
        }
        let error = p.deserialize::<Wrong>().unwrap_err().to_string();
        assert!(error.starts_with("module parameters do not fit "), "{error}");
        assert!(error.contains("Wrong: invalid type: string \"web01\", expected u32"), "{error}");
    }
}
