//! What a module answers: the result keys of `exit_json`/`fail_json`.

use serde_json::{json, Map, Value};

use crate::spec::{Removal, RemovedIn};

/// A module's result, built like the keyword arguments of Python's
/// `module.exit_json(...)` or `module.fail_json(...)`.
///
/// `invocation`, `warnings` and `deprecations` are added when it is sent.
///
/// ```
/// use ansible_module::{Diff, Response};
///
/// let created = Response::new()
///     .changed(true)
///     .with("domain", "web01")
///     .diff(Diff::new("", "<domain>web01</domain>").headers("(absent)", "web01.xml"));
/// let failed = Response::fail("libvirt is not running").with("rc", 1);
/// assert!(failed.is_failed() && !created.is_failed());
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    fields: Map<String, Value>,
    diffs: Vec<Diff>,
}

impl Default for Response {
    fn default() -> Response {
        Response::new()
    }
}

impl Response {
    /// A successful result that changed nothing.
    pub fn new() -> Response {
        Response { fields: Map::from_iter([("changed".to_string(), Value::Bool(false))]), diffs: Vec::new() }
    }

    /// A failed result with this message.
    pub fn fail(msg: impl Into<String>) -> Response {
        Response {
            fields: Map::from_iter([
                ("failed".to_string(), Value::Bool(true)),
                ("msg".to_string(), Value::String(msg.into())),
            ]),
            diffs: Vec::new(),
        }
    }

    /// Sets `changed`.
    pub fn changed(self, changed: bool) -> Response {
        self.with("changed", changed)
    }

    /// Sets `msg`.
    pub fn msg(self, msg: impl Into<String>) -> Response {
        self.with("msg", msg.into())
    }

    /// Sets any other key; for a serde type use `serde_json::to_value`.
    pub fn with(mut self, key: impl Into<String>, value: impl Into<Value>) -> Response {
        self.fields.insert(key.into(), value.into());
        self
    }

    /// Adds a diff, shown with `--diff`. Several diffs are sent as a list.
    pub fn diff(mut self, diff: Diff) -> Response {
        self.diffs.push(diff);
        self
    }

    /// Whether this is a failure.
    pub fn is_failed(&self) -> bool {
        self.fields.get("failed") == Some(&Value::Bool(true))
    }

    pub(crate) fn into_fields(self) -> Map<String, Value> {
        let mut fields = self.fields;
        let mut diffs: Vec<Value> = self.diffs.into_iter().map(Diff::into_json).collect();
        match diffs.len() {
            0 => {}
            1 => {
                fields.insert("diff".to_string(), diffs.remove(0));
            }
            _ => {
                fields.insert("diff".to_string(), Value::Array(diffs));
            }
        }
        fields
    }
}

/// A before/after pair for `--diff`: texts, or structures the controller
/// renders as YAML/JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct Diff {
    before: Value,
    after: Value,
    headers: Option<(String, String)>,
}

impl Diff {
    /// The state before and after the task.
    pub fn new(before: impl Into<Value>, after: impl Into<Value>) -> Diff {
        Diff { before: before.into(), after: after.into(), headers: None }
    }

    /// Names for the two sides, such as file names.
    pub fn headers(mut self, before: impl Into<String>, after: impl Into<String>) -> Diff {
        self.headers = Some((before.into(), after.into()));
        self
    }

    fn into_json(self) -> Value {
        let mut diff = json!({"before": self.before, "after": self.after});
        if let Some((before, after)) = self.headers {
            diff["before_header"] = Value::String(before);
            diff["after_header"] = Value::String(after);
        }
        diff
    }
}

/// One entry of `deprecations`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Deprecation {
    msg: String,
    removal: Removal,
}

impl Deprecation {
    pub(crate) fn new(msg: String, removal: Removal) -> Deprecation {
        Deprecation { msg, removal }
    }

    pub(crate) fn to_json(&self) -> Value {
        let (key, when) = match &self.removal.when {
            RemovedIn::Version(version) => ("version", version),
            RemovedIn::Date(date) => ("date", date),
        };
        json!({"msg": self.msg, key: when, "collection_name": self.removal.collection_name})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_is_unchanged_and_fail_is_failed() {
        assert_eq!(Value::Object(Response::new().into_fields()), json!({"changed": false}));
        assert_eq!(
            Value::Object(Response::fail("boom").with("rc", 2).into_fields()),
            json!({"failed": true, "msg": "boom", "rc": 2})
        );
    }

    #[test]
    fn builder_sets_keys() {
        let response = Response::new().changed(true).msg("done").with("domain", json!({"name": "web"}));
        assert_eq!(
            Value::Object(response.into_fields()),
            json!({"changed": true, "msg": "done", "domain": {"name": "web"}})
        );
    }

    #[test]
    fn one_diff_is_an_object_several_are_a_list() {
        let one = Response::new().diff(Diff::new("a\n", "b\n").headers("old", "new"));
        assert_eq!(
            one.into_fields()["diff"],
            json!({"before": "a\n", "after": "b\n", "before_header": "old", "after_header": "new"})
        );
        let two = Response::new()
            .diff(Diff::new(json!({"state": "shutoff"}), json!({"state": "running"})))
            .diff(Diff::new("", "x"));
        assert_eq!(
            two.into_fields()["diff"],
            json!([{"before": {"state": "shutoff"}, "after": {"state": "running"}}, {"before": "", "after": "x"}])
        );
    }
}
