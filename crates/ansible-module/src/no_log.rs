//! Secrets: the values of `no_log` options. The controller does not scrub
//! them from a module's result, so the module must, as `AnsibleModule`'s
//! `remove_values` does: a value equal to a secret becomes
//! `VALUE_SPECIFIED_IN_NO_LOG_PARAMETER`, and a secret inside a longer
//! string becomes `********`.

use serde_json::{Map, Value};

use crate::spec::ArgSpec;

/// What replaces a value that is a secret.
pub(crate) const MASK: &str = "VALUE_SPECIFIED_IN_NO_LOG_PARAMETER";

/// Shorter secrets are only masked where they are the whole value: cutting
/// every "1" or "ab" out of every message would garble the result.
const MIN_SCRUBBED_LEN: usize = 3;

/// The secret strings of one module run, longest first so that a secret
/// containing another is replaced whole.
#[derive(Debug, Clone, Default)]
pub(crate) struct NoLogValues(Vec<String>);

impl NoLogValues {
    /// Adds the values of the `no_log` options of `spec` found in `args`,
    /// under their names or aliases, suboptions included.
    pub(crate) fn add_from(&mut self, spec: &ArgSpec, args: &Map<String, Value>) {
        for option in &spec.options {
            for value in option.names().filter_map(|name| args.get(name)) {
                if option.no_log {
                    self.add(value);
                }
                if let Some(is_secret) = option.secret_key {
                    self.add_keyed(value, is_secret);
                }
                let Some(subspec) = &option.suboptions else {
                    continue;
                };
                match value {
                    Value::Object(map) => self.add_from(subspec, map),
                    Value::Array(items) => {
                        items.iter().filter_map(Value::as_object).for_each(|map| self.add_from(subspec, map))
                    }
                    _ => {}
                }
            }
        }
    }

    /// Adds the values found under keys `is_secret` accepts inside `value`, at any depth.
    fn add_keyed(&mut self, value: &Value, is_secret: fn(&str) -> bool) {
        match value {
            Value::Object(map) => {
                for (key, item) in map {
                    if is_secret(key) {
                        self.add(item);
                    } else {
                        self.add_keyed(item, is_secret);
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|item| self.add_keyed(item, is_secret)),
            _ => {}
        }
    }

    /// Adds every scalar in `value`. Booleans and nulls are not secrets:
    /// masking them would hide every `changed: true`.
    fn add(&mut self, value: &Value) {
        let secret = match value {
            Value::String(text) if !text.is_empty() => text.clone(),
            Value::Number(number) => number.to_string(),
            Value::Array(items) => return items.iter().for_each(|item| self.add(item)),
            Value::Object(map) => return map.values().for_each(|item| self.add(item)),
            _ => return,
        };
        for form in escaped_forms(secret) {
            if !self.0.contains(&form) {
                self.0.push(form);
            }
        }
        self.0.sort_by_key(|secret| std::cmp::Reverse(secret.len()));
    }

    /// Masks the secrets in every string and number of `value`; keys stay.
    pub(crate) fn scrub(&self, value: &mut Value) {
        match value {
            Value::String(text) => *text = self.scrub_text(text),
            Value::Number(number) => {
                let text = number.to_string();
                if self.scrub_text(&text) != text {
                    *value = Value::String(MASK.to_string());
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|item| self.scrub(item)),
            Value::Object(map) => map.values_mut().for_each(|item| self.scrub(item)),
            Value::Null | Value::Bool(_) => {}
        }
    }

    /// `text` with its secrets masked.
    pub(crate) fn scrub_text(&self, text: &str) -> String {
        if self.0.iter().any(|secret| secret == text) {
            return MASK.to_string();
        }
        self.0
            .iter()
            .filter(|secret| secret.len() >= MIN_SCRUBBED_LEN)
            .fold(text.to_string(), |text, secret| text.replace(secret.as_str(), "********"))
    }
}

/// A secret as written, and as it reads once quoted inside JSON text or
/// XML (a domain definition in a diff, a serialized value in a message).
fn escaped_forms(secret: String) -> Vec<String> {
    let json = serde_json::to_string(&secret).unwrap_or_default();
    let json = json.trim_matches('"').to_string();
    let xml = secret
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;");
    let mut forms = vec![secret];
    for form in [json, xml] {
        if !forms.contains(&form) {
            forms.push(form);
        }
    }
    forms
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{Opt, Type};
    use serde_json::json;

    fn secrets(spec: &ArgSpec, args: Value) -> NoLogValues {
        let mut values = NoLogValues::default();
        values.add_from(spec, args.as_object().unwrap());
        values
    }

    fn spec() -> ArgSpec {
        ArgSpec::new([
            Opt::str("name"),
            Opt::str("password").no_log().aliases(&["pass"]),
            Opt::int("pin").no_log(),
            Opt::bool("secret_flag").no_log(),
            Opt::dict("cloud_init").suboptions(ArgSpec::new([Opt::str("user"), Opt::raw("keys").no_log()])),
            Opt::list("users").elements(Type::Dict).suboptions(ArgSpec::new([Opt::str("token").no_log()])),
        ])
    }

    #[test]
    fn collects_secrets_from_aliases_and_suboptions() {
        let values = secrets(
            &spec(),
            json!({
                "name": "web", "pass": "hunter22", "pin": 1234, "secret_flag": true,
                "cloud_init": {"user": "ops", "keys": ["ssh-ed25519 AAA", {"k": "inner-secret"}]},
                "users": [{"token": "tok-1"}, "not a dict"],
            }),
        );
        let mut collected = values.0.clone();
        collected.sort();
        assert_eq!(collected, ["1234", "hunter22", "inner-secret", "ssh-ed25519 AAA", "tok-1"]);
    }

    #[test]
    fn collects_secret_keys_inside_free_form_values() {
        let spec = ArgSpec::new([
            Opt::dict("vm").secret_keys(|key| matches!(key, "password" | "user_data")),
            Opt::list("vms").secret_keys(|key| key == "password_hash"),
            Opt::raw("notes"),
        ]);
        let values = secrets(
            &spec,
            json!({
                "vm": {"metadata": {"name": "web", "auth": {"user": "ops", "password": "farm-pass"}},
                       "user_data": "#cloud-config\nchpasswd: x"},
                "vms": ["3", {"cloud_init": {"password_hash": "$6$salt$hash"}}, {"password": "not-a-key-here"}],
                "notes": {"password": "raw-without-secret-keys"},
            }),
        );
        let mut collected = values.0.clone();
        collected.sort();
        assert_eq!(
            collected,
            ["#cloud-config\nchpasswd: x", "#cloud-config\\nchpasswd: x", "$6$salt$hash", "farm-pass"]
        );
    }

    #[test]
    fn masks_whole_values_and_scrubs_substrings() {
        let values = secrets(&spec(), json!({"password": "hunter22", "pin": 1234}));
        let mut result = json!({
            "changed": true,
            "msg": "login with hunter22 failed",
            "invocation": {"module_args": {"password": "hunter22", "pin": 1234, "name": "web"}},
            "warnings": ["pin 1234 rejected"],
            "hunter22": 51234,
        });
        values.scrub(&mut result);
        assert_eq!(
            result,
            json!({
                "changed": true,
                "msg": "login with ******** failed",
                "invocation": {"module_args": {"password": MASK, "pin": MASK, "name": "web"}},
                "warnings": ["pin ******** rejected"],
                "hunter22": MASK,
            })
        );
    }

    #[test]
    fn secrets_are_scrubbed_in_their_json_and_xml_escaped_forms() {
        let values = secrets(&spec(), json!({"password": "a\"b<c>\nd"}));
        let mut reply =
            json!({"msg": format!("sent {}", json!({"p": "a\"b<c>\nd"})), "xml": "<p>a&quot;b&lt;c&gt;\nd</p>"});
        values.scrub(&mut reply);
        assert_eq!(reply, json!({"msg": "sent {\"p\":\"********\"}", "xml": "<p>********</p>"}));
    }

    #[test]
    fn short_secrets_are_masked_only_as_whole_values() {
        let values = secrets(&spec(), json!({"password": "ab"}));
        assert_eq!(values.scrub_text("ab"), MASK);
        assert_eq!(values.scrub_text("tab stop"), "tab stop");
    }

    #[test]
    fn longer_secret_wins_over_the_one_it_contains() {
        let values = secrets(&spec(), json!({"password": "abcdef", "pin": 1234, "cloud_init": {"keys": "abc"}}));
        assert_eq!(values.scrub_text("x abcdef y abc"), "x ******** y ********");
    }
}
