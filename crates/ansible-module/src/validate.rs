//! Validation of the arguments against an [`ArgSpec`], with the checks
//! ansible-core's `ArgumentSpecValidator.validate` runs, in its order. Where
//! Ansible stops at its first error, every error is collected: unknown names
//! first, then the others as they are found, level by level.
//!
//! A `null` value counts as not given: defaults apply and `required` fails.
//! A value that cannot be converted, or is not one of the choices, is dropped
//! after its error is noted. Every option an error leaves without a usable
//! value is *refused*: the later checks take it as given, so that none of them
//! says it is missing, and [`Params`] remembers the spec's message about it.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::coerce::{coerce, python_str, python_type, FALSE_WORDS, TRUE_WORDS};
use crate::error::{ArgumentErrors, Error};
use crate::params::Params;
use crate::response::Deprecation;
use crate::spec::{ArgSpec, Opt, Type};

/// The arguments as far as they are valid, with what validation had to say.
#[derive(Debug)]
pub(crate) struct Validated {
    /// Every option by its canonical name, converted, defaults filled in,
    /// `null` for those neither given nor defaulted, and for those refused.
    pub(crate) params: Map<String, Value>,
    /// The refused options by full path, each with the spec's message about it.
    pub(crate) refused: BTreeMap<String, String>,
    pub(crate) warnings: Vec<String>,
    pub(crate) deprecations: Vec<Deprecation>,
}

/// Validates `args`, the user's arguments without the `_ansible_*` keys:
/// what is valid of them, and every error.
pub(crate) fn validate(spec: &ArgSpec, args: &Map<String, Value>, module: &str) -> (Validated, ArgumentErrors) {
    validate_at(spec, args, "", module)
}

impl ArgSpec {
    /// Validates `args` found at `path` (`vms[2]`) against this spec, as
    /// the module's own arguments are: for free-form values (a `raw` list
    /// item, a `dict` merged with defaults) whose shape is known only once
    /// the module has looked at them. Errors name options by their full
    /// path (`vms[2].memory`), and are added to `errors`; `module` names the
    /// module in the message on unknown options. Warnings and deprecations are
    /// not reported.
    ///
    /// The parameters are returned all the same, as far as they are valid, for
    /// the module's own rules to read: a refused option has no value, counts
    /// as set, and its getters give the spec's message again (which `errors`
    /// does not repeat), as with [`execute_parsed`](crate::execute_parsed).
    ///
    /// ```
    /// use ansible_module::{ArgSpec, ArgumentErrors, Opt};
    /// use serde_json::json;
    ///
    /// let spec = ArgSpec::new([Opt::int("memory"), Opt::int("vcpus"), Opt::str("name").required()]);
    /// let item = json!({"memory": "lots", "vcpus": 0});
    /// let mut errors = ArgumentErrors::new();
    /// let vm = spec.validate_at(item.as_object().unwrap(), "vms[2]", "kvm_provision", &mut errors);
    /// // The module's own rule, on what the spec let through.
    /// if vm.int("vcpus").unwrap() < 1 {
    ///     errors.push(format!("{}: at least 1", vm.name_of("vcpus")));
    /// }
    /// errors.check(vm.str("name"));
    /// let messages = errors.messages();
    /// assert_eq!(messages.len(), 3);
    /// assert_eq!(messages[0], "missing required arguments: vms[2].name");
    /// assert!(messages[1].starts_with("argument 'vms[2].memory' is of type <class 'str'>"));
    /// assert_eq!(messages[2], "vms[2].vcpus: at least 1");
    /// ```
    pub fn validate_at(
        &self,
        args: &Map<String, Value>,
        path: &str,
        module: &str,
        errors: &mut ArgumentErrors,
    ) -> Params {
        let (validated, found) = validate_at(self, args, path, module);
        errors.extend(found);
        Params::new(validated.params, path.to_string(), Arc::new(validated.refused))
    }
}

fn validate_at(spec: &ArgSpec, args: &Map<String, Value>, path: &str, module: &str) -> (Validated, ArgumentErrors) {
    let mut validator = Validator { module, ..Validator::default() };
    let params = validator.section(spec, args, path);
    let mut errors = ArgumentErrors::new();
    for error in validator.unsupported.iter().chain(&validator.errors) {
        errors.push(error);
    }
    let validated = Validated {
        params,
        refused: validator.refused,
        warnings: validator.warnings,
        deprecations: validator.deprecations,
    };
    (validated, errors)
}

#[derive(Default)]
struct Validator<'a> {
    module: &'a str,
    warnings: Vec<String>,
    deprecations: Vec<Deprecation>,
    /// Unknown names, one error per level that has them.
    unsupported: Vec<Error>,
    /// Every other error, in the order found.
    errors: Vec<Error>,
    /// The options the errors refused, by full path, with the first message about each.
    refused: BTreeMap<String, String>,
}

impl Validator<'_> {
    /// Notes `error` and the options it refuses.
    fn note(&mut self, error: Error) {
        for name in error.refused_options() {
            self.refused.entry(name.clone()).or_insert_with(|| error.to_string());
        }
        self.errors.push(error);
    }

    /// Validates one level: the module's options, or the suboptions of the
    /// dict found at `path` (`cloud_init`, `disks[0]`; empty at the top).
    fn section(&mut self, spec: &ArgSpec, given: &Map<String, Value>, path: &str) -> Map<String, Value> {
        let mut params = self.canonicalize(spec, given, path);
        if let Err(error) = check_mutually_exclusive(spec, &params, path) {
            self.note(error);
        }
        for option in &spec.options {
            if let (false, Some(default)) = (is_set(&params, &option.name), &option.default) {
                params.insert(option.name.clone(), default.clone());
            }
        }
        if let Err(error) = check_required(spec, &params, path) {
            self.note(error);
        }
        let mut found = Vec::new();
        for option in &spec.options {
            if let Some(value) = params.remove(&option.name).filter(|value| !value.is_null()) {
                if let Some(value) = convert(option, value, path, &mut found) {
                    params.insert(option.name.clone(), value);
                }
            }
        }
        found.into_iter().for_each(|error| self.note(error));
        for option in &spec.options {
            let Some(value) = params.get_mut(&option.name) else { continue };
            if let Err(error) = check_choices(option, value, path) {
                params.remove(&option.name);
                self.note(error);
            }
        }
        for error in check_requirements(spec, &params, path, &self.refused) {
            self.note(error);
        }
        for option in &spec.options {
            params.entry(option.name.clone()).or_insert(Value::Null);
        }
        for option in &spec.options {
            let name = qualified(path, &option.name);
            let Some(value) = params.get_mut(&option.name) else { continue };
            // A refused dict is not filled with the defaults of its suboptions.
            let refused_whole = value.is_null() && self.refused.contains_key(&name);
            if let (Some(subspec), false) = (&option.suboptions, refused_whole) {
                self.nested(option, subspec, value, &name);
            }
        }
        // A list refused for one bad element is dropped once the others are checked.
        for option in &spec.options {
            if self.refused.contains_key(&qualified(path, &option.name)) {
                params.insert(option.name.clone(), Value::Null);
            }
        }
        params
    }

    /// Validates the suboptions of `option`, whose converted value is `value`.
    fn nested(&mut self, option: &Opt, subspec: &ArgSpec, value: &mut Value, name: &str) {
        match value {
            Value::Object(map) => *map = self.section(subspec, map, name),
            Value::Null if option.apply_defaults => *value = Value::Object(self.section(subspec, &Map::new(), name)),
            Value::Array(items) => {
                for (index, item) in items.iter_mut().enumerate() {
                    if let Value::Object(map) = item {
                        *map = self.section(subspec, map, &format!("{name}[{index}]"));
                    }
                }
            }
            _ => {}
        }
    }

    /// Keys `given` by canonical option names, noting unknown names,
    /// deprecated aliases and options, and options given twice.
    fn canonicalize(&mut self, spec: &ArgSpec, given: &Map<String, Value>, path: &str) -> Map<String, Value> {
        let mut params = Map::new();
        let mut unsupported = Vec::new();
        for (name, value) in given {
            let Some(option) = spec.option_named(name) else {
                unsupported.push(qualified(path, name));
                continue;
            };
            let canonical = qualified(path, &option.name);
            if let Some(removal) = &option.deprecated {
                self.deprecations.push(Deprecation::new(
                    format!("Param '{canonical}' is deprecated. See the module docs for more information"),
                    removal.clone(),
                ));
            }
            if *name == option.name {
                // An alias given as well wins, as in Ansible.
                params.entry(name.clone()).or_insert_with(|| value.clone());
                continue;
            }
            if let Some((_, removal)) = option.deprecated_aliases.iter().find(|(alias, _)| alias == name) {
                self.deprecations.push(Deprecation::new(
                    format!("Alias '{name}' is deprecated. See the module docs for more information"),
                    removal.clone(),
                ));
            }
            if given.contains_key(&option.name) {
                self.warnings.push(format!("Both option {canonical} and its alias {name} are set."));
            }
            params.insert(option.name.clone(), value.clone());
        }
        if !unsupported.is_empty() {
            unsupported.sort();
            let mut supported: Vec<String> = spec.options.iter().map(|option| option.name.clone()).collect();
            let mut aliases: Vec<String> = spec.options.iter().flat_map(|option| option.aliases.clone()).collect();
            supported.sort();
            aliases.sort();
            self.unsupported.push(Error::Unsupported {
                module: self.module.to_string(),
                unsupported,
                supported,
                aliases,
            });
        }
        params
    }
}

/// `name` as found at `path`: `cloud_init.user`, or `user` at the top.
pub(crate) fn qualified(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_string()
    } else {
        format!("{path}.{name}")
    }
}

fn qualified_all(path: &str, names: &[String]) -> Vec<String> {
    names.iter().map(|name| qualified(path, name)).collect()
}

/// Given, or defaulted, and not `null`.
fn is_set(params: &Map<String, Value>, name: &str) -> bool {
    params.get(name).is_some_and(|value| !value.is_null())
}

/// `value` converted to the option's type, or `None`, noting in `errors`
/// why. An element that cannot be converted is noted and kept as given, so
/// that the other elements keep their index and are still checked.
fn convert(option: &Opt, value: Value, path: &str, errors: &mut Vec<Error>) -> Option<Value> {
    let name = qualified(path, &option.name);
    let found = python_type(&value);
    let value = coerce(value, option.kind)
        .map_err(|reason| errors.push(Error::Conversion { name: name.clone(), found, wanted: option.kind, reason }))
        .ok()?;
    // A list with suboptions is a list of dicts even if `elements` is unsaid.
    let elements = option.elements.or_else(|| option.suboptions.as_ref().map(|_| Type::Dict));
    match (value, elements) {
        (Value::Array(items), Some(wanted)) => Some(Value::Array(
            items
                .into_iter()
                .map(|item| {
                    let found = python_type(&item);
                    coerce(item.clone(), wanted).unwrap_or_else(|reason| {
                        errors.push(Error::ElementConversion { name: name.clone(), found, wanted, reason });
                        item
                    })
                })
                .collect(),
        )),
        (value, _) => Some(value),
    }
}

/// Equality as Python sees it for JSON values: `1 == 1.0`.
fn same(left: &Value, right: &Value) -> bool {
    match (left, right) {
        (Value::Number(left), Value::Number(right)) => left.as_f64() == right.as_f64(),
        _ => left == right,
    }
}

fn check_choices(option: &Opt, value: &mut Value, path: &str) -> Result<(), Error> {
    if option.choices.is_empty() || value.is_null() {
        return Ok(());
    }
    let allowed = |value: &Value| option.choices.iter().any(|choice| same(choice, value));
    let choices = || option.choices.iter().map(python_str).collect();
    if let Value::Array(items) = value {
        let unmatched: Vec<String> = items.iter().filter(|item| !allowed(item)).map(python_str).collect();
        if unmatched.is_empty() {
            return Ok(());
        }
        return Err(Error::NotChoices { name: qualified(path, &option.name), choices: choices(), unmatched });
    }
    if allowed(value) {
        return Ok(());
    }
    match unambiguous_bool_choice(&option.choices, value) {
        Some(choice) => {
            *value = choice;
            Ok(())
        }
        None => {
            Err(Error::NotAChoice { name: qualified(path, &option.name), choices: choices(), got: python_str(value) })
        }
    }
}

/// YAML reads an unquoted `yes` as a boolean, which `str` then makes
/// `"True"`; when exactly one spelling of that truth is among the choices,
/// it is the one the user wrote.
fn unambiguous_bool_choice(choices: &[Value], value: &Value) -> Option<Value> {
    let spellings = match value.as_str()? {
        "True" => TRUE_WORDS,
        "False" => FALSE_WORDS,
        _ => return None,
    };
    let mut matching =
        choices.iter().filter(|choice| choice.as_str().is_some_and(|choice| spellings.contains(&choice)));
    match (matching.next(), matching.next()) {
        (Some(only), None) => Some(only.clone()),
        _ => None,
    }
}

fn check_mutually_exclusive(spec: &ArgSpec, params: &Map<String, Value>, path: &str) -> Result<(), Error> {
    let violated: Vec<Vec<String>> = spec
        .mutually_exclusive
        .iter()
        .filter(|group| group.iter().filter(|name| is_set(params, name)).count() > 1)
        .map(|group| qualified_all(path, group))
        .collect();
    if violated.is_empty() {
        Ok(())
    } else {
        Err(Error::MutuallyExclusive(violated))
    }
}

fn check_required(spec: &ArgSpec, params: &Map<String, Value>, path: &str) -> Result<(), Error> {
    let mut missing: Vec<String> = spec
        .options
        .iter()
        .filter(|option| option.required && !is_set(params, &option.name))
        .map(|option| qualified(path, &option.name))
        .collect();
    missing.sort();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Error::MissingRequired(missing))
    }
}

/// `required_together`, `required_one_of`, `required_if`, `required_by`, in
/// Ansible's order, every rule broken. A `refused` option counts as given: an
/// error has said what is wrong with it already.
fn check_requirements(
    spec: &ArgSpec,
    params: &Map<String, Value>,
    path: &str,
    refused: &BTreeMap<String, String>,
) -> Vec<Error> {
    let is_set = |name: &String| is_set(params, name) || refused.contains_key(&qualified(path, name));
    let unset = |names: &[String]| -> Vec<String> {
        let unset = names.iter().filter(|name| !is_set(name)).cloned().collect::<Vec<_>>();
        qualified_all(path, &unset)
    };
    let mut errors = Vec::new();
    for group in &spec.required_together {
        let missing = unset(group);
        if !missing.is_empty() && missing.len() < group.len() {
            errors.push(Error::RequiredTogether(qualified_all(path, group)));
        }
    }
    for group in &spec.required_one_of {
        if unset(group).len() == group.len() {
            errors.push(Error::RequiredOneOf(qualified_all(path, group)));
        }
    }
    for rule in &spec.required_if {
        if !params.get(&rule.name).is_some_and(|value| same(value, &rule.value)) {
            continue;
        }
        let missing = unset(&rule.requirements);
        if !missing.is_empty() && (!rule.any || missing.len() == rule.requirements.len()) {
            errors.push(Error::RequiredIf {
                name: qualified(path, &rule.name),
                value: python_str(&rule.value),
                any: rule.any,
                missing,
            });
        }
    }
    for (name, requirements) in &spec.required_by {
        let missing = unset(requirements);
        if is_set(name) && !missing.is_empty() {
            errors.push(Error::RequiredBy { name: qualified(path, name), missing });
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Removal;
    use serde_json::json;

    fn run(spec: &ArgSpec, args: Value) -> Result<Validated, ArgumentErrors> {
        let Value::Object(args) = args else { panic!("test args must be an object") };
        let (validated, errors) = validate(spec, &args, "virtfarm.kvm.test");
        errors.finish(validated)
    }

    fn params(spec: &ArgSpec, args: Value) -> Value {
        match run(spec, args) {
            Ok(validated) => Value::Object(validated.params),
            Err(error) => panic!("unexpected error: {error}"),
        }
    }

    fn message(spec: &ArgSpec, args: Value) -> String {
        match run(spec, args) {
            Ok(validated) => panic!("unexpectedly valid: {:?}", validated.params),
            Err(error) => error.to_string(),
        }
    }

    #[test]
    fn defaults_fill_in_and_unset_options_are_null() {
        let spec = ArgSpec::new([
            Opt::int("count").default(json!("2")),
            Opt::str("state").default("present"),
            Opt::str("note"),
        ]);
        assert_eq!(params(&spec, json!({})), json!({"count": 2, "state": "present", "note": null}));
        assert_eq!(params(&spec, json!({"count": null})), json!({"count": 2, "state": "present", "note": null}));
    }

    #[test]
    fn a_name_declared_twice_is_its_last_declaration() {
        // Found by the module_args fuzz target: the first declaration's defaults used to be
        // applied beside the second's type.
        let spec = ArgSpec::new([
            Opt::dict("name").suboptions(ArgSpec::new([])).apply_defaults(),
            Opt::str("note"),
            Opt::bool("name").default(true),
        ]);
        assert_eq!(params(&spec, json!({})), json!({"name": true, "note": null}));
        assert_eq!(spec.option_names().collect::<Vec<_>>(), ["name", "note"]);
    }

    #[test]
    fn values_are_converted_to_their_type() {
        let spec = ArgSpec::new([Opt::int("count"), Opt::bool("force"), Opt::list("tags").elements(Type::Int)]);
        assert_eq!(
            params(&spec, json!({"count": "3", "force": "yes", "tags": "1,2"})),
            json!({"count": 3, "force": true, "tags": [1, 2]})
        );
    }

    #[test]
    fn conversion_errors_name_the_option() {
        let spec = ArgSpec::new([Opt::int("count"), Opt::list("tags").elements(Type::Int)]);
        assert_eq!(
            message(&spec, json!({"count": "many"})),
            "argument 'count' is of type <class 'str'> and we were unable to convert to int: \
             \"'many'\" cannot be converted to an int"
        );
        assert_eq!(
            message(&spec, json!({"tags": [1, "x"]})),
            "Elements value for option 'tags' is of type <class 'str'> and we were unable to convert to int: \
             \"'x'\" cannot be converted to an int"
        );
    }

    #[test]
    fn huge_int_fails_clearly() {
        let spec = ArgSpec::new([Opt::int("count")]);
        let args: Value = serde_json::from_str(r#"{"count": 123456789012345678901234567890}"#).unwrap();
        assert_eq!(
            message(&spec, args),
            "argument 'count' is of type <class 'float'> and we were unable to convert to int: \
             1.2345678901234568e+29 is out of range for a 64-bit integer"
        );
    }

    #[test]
    fn required_options() {
        let spec = ArgSpec::new([Opt::str("name").required(), Opt::str("image").required(), Opt::str("x")]);
        assert_eq!(message(&spec, json!({"x": "1"})), "missing required arguments: image, name");
        assert_eq!(message(&spec, json!({"name": "a", "image": null})), "missing required arguments: image");
    }

    #[test]
    fn unknown_options_use_ansibles_wording() {
        let spec = ArgSpec::new([
            Opt::str("name").aliases(&["vm_name"]),
            Opt::str("state"),
            Opt::int("count").aliases(&["cnt"]),
        ]);
        assert_eq!(
            message(&spec, json!({"zeta": 1, "alpha": 2, "name": "a"})),
            "Unsupported parameters for (virtfarm.kvm.test) module: alpha, zeta. \
             Supported parameters include: count, name, state (cnt, vm_name)."
        );
        let no_aliases = ArgSpec::new([Opt::str("name")]);
        assert_eq!(
            message(&no_aliases, json!({"nmae": "a"})),
            "Unsupported parameters for (virtfarm.kvm.test) module: nmae. Supported parameters include: name."
        );
    }

    #[test]
    fn unknown_options_are_reported_before_other_errors() {
        let spec = ArgSpec::new([Opt::str("name").required()]);
        assert_eq!(
            message(&spec, json!({"nmae": "a"})),
            "Unsupported parameters for (virtfarm.kvm.test) module: nmae. Supported parameters include: name.; \
             missing required arguments: name"
        );
    }

    fn messages(spec: &ArgSpec, args: Value) -> Vec<String> {
        match run(spec, args) {
            Ok(validated) => panic!("unexpectedly valid: {:?}", validated.params),
            Err(errors) => errors.messages().to_vec(),
        }
    }

    #[test]
    fn every_error_at_the_top_level_is_reported_unknown_names_first() {
        let spec = ArgSpec::new([
            Opt::str("name").required(),
            Opt::str("state").choices(&["present", "absent"]),
            Opt::int("count"),
            Opt::bool("force"),
            Opt::str("image"),
            Opt::str("url"),
            Opt::str("user"),
            Opt::str("password"),
            Opt::list("tags").elements(Type::Int),
        ])
        .mutually_exclusive(&["image", "url"])
        .required_together(&["user", "password"])
        .required_if("state", "absent", &["count"]);
        assert_eq!(
            messages(
                &spec,
                json!({"colour": 1, "state": "absent", "count": "many", "force": "maybe", "image": "i",
                       "url": "u", "user": "u", "tags": [1, "x", "y"], "nmae": "a"})
            ),
            [
                "Unsupported parameters for (virtfarm.kvm.test) module: colour, nmae. \
                 Supported parameters include: count, force, image, name, password, state, tags, url, user.",
                "parameters are mutually exclusive: image|url",
                "missing required arguments: name",
                "argument 'count' is of type <class 'str'> and we were unable to convert to int: \
                 \"'many'\" cannot be converted to an int",
                "argument 'force' is of type <class 'str'> and we were unable to convert to bool: \
                 The value 'maybe' is not a valid boolean.  Valid booleans include: \
                 'y', 'yes', 'on', '1', 'true', 't', 1, 1.0, True, 'n', 'no', 'off', '0', 'false', 'f', 0, 0.0, False",
                "Elements value for option 'tags' is of type <class 'str'> and we were unable to convert to int: \
                 \"'x'\" cannot be converted to an int",
                "Elements value for option 'tags' is of type <class 'str'> and we were unable to convert to int: \
                 \"'y'\" cannot be converted to an int",
                "parameters are required together: user, password",
                // count was given: its conversion error says what is wrong, not that
                // state=absent misses it.
            ]
        );
    }

    #[test]
    fn every_error_inside_lists_of_dicts_is_reported_with_its_path() {
        let spec = cloud_init_spec();
        assert_eq!(
            messages(
                &spec,
                json!({
                    "name": "vm",
                    "colour": "red",
                    "cloud_init": {"password": "p", "hash": "h", "shell": "sh", "ssh_keys": {"a": 1}},
                    "disks": [{"size": "1G"}, {"bus": "ide", "cache": "none"}, {"size": "lots", "bus": 3}, "big"],
                })
            ),
            [
                "Unsupported parameters for (virtfarm.kvm.test) module: colour. \
                 Supported parameters include: cloud_init, disks, name.",
                "Unsupported parameters for (virtfarm.kvm.test) module: cloud_init.shell. \
                 Supported parameters include: hash, password, ssh_keys, user.",
                "Unsupported parameters for (virtfarm.kvm.test) module: disks[1].cache. \
                 Supported parameters include: bus, size.",
                "Elements value for option 'disks' is of type <class 'str'> and we were unable to convert to dict: \
                 dictionary requested, could not parse JSON or key=value",
                "parameters are mutually exclusive: cloud_init.password|cloud_init.hash",
                "missing required arguments: cloud_init.user",
                "argument 'cloud_init.ssh_keys' is of type <class 'dict'> and we were unable to convert to list: \
                 <class 'dict'> cannot be converted to a list",
                // The string among the disks is refused; the dicts beside it are checked all the same.
                "missing required arguments: disks[1].size",
                "argument 'disks[2].size' is of type <class 'str'> and we were unable to convert to bytes: \
                 <class 'str'> cannot be converted to a Byte value",
            ]
        );
    }

    #[test]
    fn aliases_resolve_to_the_canonical_name() {
        let spec = ArgSpec::new([Opt::str("name").aliases(&["vm_name", "domain"])]);
        assert_eq!(params(&spec, json!({"vm_name": "web"})), json!({"name": "web"}));

        let validated = run(&spec, json!({"name": "a", "domain": "b"})).unwrap();
        assert_eq!(validated.params, *json!({"name": "b"}).as_object().unwrap());
        assert_eq!(validated.warnings, ["Both option name and its alias domain are set."]);
    }

    #[test]
    fn deprecated_aliases_and_options_are_reported() {
        let spec = ArgSpec::new([
            Opt::str("name").deprecated_alias("vm", Removal::version("2.0.0", "virtfarm.kvm")),
            Opt::bool("legacy").deprecated(Removal::date("2026-12-31", "virtfarm.kvm")),
        ]);
        let validated = run(&spec, json!({"vm": "a", "legacy": true})).unwrap();
        let messages: Vec<Value> = validated.deprecations.iter().map(Deprecation::to_json).collect();
        assert_eq!(
            messages,
            [
                json!({"msg": "Param 'legacy' is deprecated. See the module docs for more information",
                       "date": "2026-12-31", "collection_name": "virtfarm.kvm"}),
                json!({"msg": "Alias 'vm' is deprecated. See the module docs for more information",
                       "version": "2.0.0", "collection_name": "virtfarm.kvm"}),
            ]
        );
        assert!(run(&spec, json!({"name": "a"})).unwrap().deprecations.is_empty());
    }

    #[test]
    fn choices_are_compared_after_conversion() {
        let spec = ArgSpec::new([
            Opt::str("state").choices(&["present", "absent"]),
            Opt::int("level").choices(&[1, 2, 3]),
            Opt::float("ratio").choices(&[0.5, 1.0]),
            Opt::list("features").choices(&["acpi", "apic"]),
        ]);
        assert_eq!(
            params(&spec, json!({"state": "absent", "level": "2", "ratio": 1, "features": "acpi,apic"})),
            json!({"state": "absent", "level": 2, "ratio": 1.0, "features": ["acpi", "apic"]})
        );
        assert_eq!(message(&spec, json!({"state": "foo"})), "value of state must be one of: present, absent, got: foo");
        assert_eq!(message(&spec, json!({"level": "7"})), "value of level must be one of: 1, 2, 3, got: 7");
        assert_eq!(
            message(&spec, json!({"features": ["acpi", "pae", "hap"]})),
            "value of features must be one or more of: acpi, apic. Got no match for: pae, hap"
        );
    }

    #[test]
    fn yaml_booleans_match_their_spelling_among_choices() {
        let spec = ArgSpec::new([Opt::str("autostart").choices(&["yes", "no", "later"])]);
        assert_eq!(params(&spec, json!({"autostart": true})), json!({"autostart": "yes"}));
        assert_eq!(params(&spec, json!({"autostart": false})), json!({"autostart": "no"}));
        let ambiguous = ArgSpec::new([Opt::str("mode").choices(&["on", "yes"])]);
        assert_eq!(message(&ambiguous, json!({"mode": true})), "value of mode must be one of: on, yes, got: True");
    }

    #[test]
    fn mutually_exclusive_ignores_defaults() {
        let spec =
            ArgSpec::new([Opt::str("image").default("base.qcow2"), Opt::str("url"), Opt::str("a"), Opt::str("b")])
                .mutually_exclusive(&["image", "url"])
                .mutually_exclusive(&["a", "b"]);
        assert_eq!(params(&spec, json!({"url": "http://x"}))["image"], json!("base.qcow2"));
        assert_eq!(
            message(&spec, json!({"image": "i", "url": "u", "a": "1", "b": "2"})),
            "parameters are mutually exclusive: image|url, a|b"
        );
    }

    #[test]
    fn required_one_of() {
        let spec = ArgSpec::new([Opt::str("image"), Opt::str("url")]).required_one_of(&["image", "url"]);
        assert_eq!(message(&spec, json!({})), "one of the following is required: image, url");
        params(&spec, json!({"url": "u"}));
    }

    #[test]
    fn required_together() {
        let spec =
            ArgSpec::new([Opt::str("user"), Opt::str("password").no_log()]).required_together(&["user", "password"]);
        assert_eq!(message(&spec, json!({"user": "u"})), "parameters are required together: user, password");
        params(&spec, json!({}));
        params(&spec, json!({"user": "u", "password": "p"}));
    }

    #[test]
    fn required_if_all_and_any() {
        let spec =
            ArgSpec::new([Opt::str("state").default("present"), Opt::str("image"), Opt::str("url"), Opt::int("count")])
                .required_if("state", "present", &["image", "url"])
                .required_if_any("count", 2, &["image", "url"]);
        assert_eq!(message(&spec, json!({"image": "i"})), "state is present but all of the following are missing: url");
        params(&spec, json!({"state": "absent", "count": 1}));
        assert_eq!(
            message(&spec, json!({"state": "absent", "count": "2"})),
            "count is 2 but any of the following are missing: image, url"
        );
        params(&spec, json!({"state": "absent", "count": 2, "url": "u"}));
    }

    #[test]
    fn required_by() {
        let spec = ArgSpec::new([Opt::str("bridge"), Opt::str("mac"), Opt::str("model")])
            .required_by("bridge", &["mac", "model"]);
        assert_eq!(
            message(&spec, json!({"bridge": "br0", "model": "virtio"})),
            "missing parameter(s) required by 'bridge': mac"
        );
        params(&spec, json!({"mac": "52:54:00:00:00:01"}));
    }

    fn cloud_init_spec() -> ArgSpec {
        ArgSpec::new([
            Opt::str("name").required(),
            Opt::dict("cloud_init").suboptions(
                ArgSpec::new([
                    Opt::str("user").required(),
                    Opt::str("password").no_log(),
                    Opt::list("ssh_keys").elements(Type::Str).default(json!([])),
                    Opt::str("hash"),
                ])
                .mutually_exclusive(&["password", "hash"]),
            ),
            Opt::list("disks").suboptions(ArgSpec::new([
                Opt::new("size", Type::Bytes).required(),
                Opt::str("bus").default("virtio"),
            ])),
        ])
    }

    #[test]
    fn suboptions_are_validated_recursively() {
        let spec = cloud_init_spec();
        assert_eq!(
            params(
                &spec,
                json!({"name": "vm", "cloud_init": "user=ops", "disks": [{"size": "1G"}, {"size": 10, "bus": "sata"}]})
            ),
            json!({
                "name": "vm",
                "cloud_init": {"user": "ops", "password": null, "ssh_keys": [], "hash": null},
                "disks": [{"size": 1073741824, "bus": "virtio"}, {"size": 10, "bus": "sata"}],
            })
        );
        assert_eq!(params(&spec, json!({"name": "vm"}))["cloud_init"], Value::Null);
    }

    #[test]
    fn suboption_errors_use_dotted_names() {
        let spec = cloud_init_spec();
        assert_eq!(
            message(&spec, json!({"name": "vm", "cloud_init": {"password": "x"}})),
            "missing required arguments: cloud_init.user"
        );
        assert_eq!(
            message(&spec, json!({"name": "vm", "cloud_init": {"user": "u", "password": "p", "hash": "h"}})),
            "parameters are mutually exclusive: cloud_init.password|cloud_init.hash"
        );
        assert_eq!(
            message(&spec, json!({"name": "vm", "disks": [{"size": "1G"}, {"bus": "ide"}]})),
            "missing required arguments: disks[1].size"
        );
        assert_eq!(
            message(&spec, json!({"name": "vm", "disks": ["big"]})),
            "Elements value for option 'disks' is of type <class 'str'> and we were unable to convert to dict: \
             dictionary requested, could not parse JSON or key=value"
        );
        assert_eq!(
            message(&spec, json!({"name": "vm", "cloud_init": {"user": "u", "shell": "sh"}})),
            "Unsupported parameters for (virtfarm.kvm.test) module: cloud_init.shell. \
             Supported parameters include: hash, password, ssh_keys, user."
        );
    }

    #[test]
    fn apply_defaults_validates_an_absent_dict() {
        let spec = ArgSpec::new([Opt::dict("console")
            .suboptions(ArgSpec::new([Opt::str("type").default("pty")]))
            .apply_defaults()]);
        assert_eq!(params(&spec, json!({})), json!({"console": {"type": "pty"}}));
    }
}
