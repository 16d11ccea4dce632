//! The declarative argument spec: what `argument_spec=` and the rule keyword
//! arguments of Python's `AnsibleModule(...)` say, as a builder.

use std::fmt;

use serde_json::Value;

/// The type of an option, named as in Ansible's `argument_spec` (`type: ...`).
///
/// Values are converted to the type exactly as `AnsibleModule` converts them,
/// so `-a count=3` and `count: 3` in a playbook both give the integer 3.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Type {
    /// `str`: numbers and booleans are converted to their Python text form.
    Str,
    /// `int`: accepts `"3"`, `3` and integral floats such as `3.0`.
    Int,
    /// `float`: accepts numbers and numeric strings.
    Float,
    /// `bool`: accepts `yes`/`no`, `on`/`off`, `true`/`false`, `y`/`n`,
    /// `t`/`f`, `1`/`0` (any case) and the numbers 1 and 0.
    Bool,
    /// `list`: also accepts a comma-separated string or a single number.
    List,
    /// `dict`: also accepts a JSON object string or `k=v k2=v2`.
    Dict,
    /// `path`: a `str` with `$VARS` and a leading `~` expanded.
    Path,
    /// `raw`: the value as given.
    Raw,
    /// `jsonarg`: a JSON text; lists and dicts are serialized to one.
    Json,
    /// `bytes`: a human size such as `10M` or `1.5 GB`, as a number of bytes.
    Bytes,
}

impl fmt::Display for Type {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Type::Str => "str",
            Type::Int => "int",
            Type::Float => "float",
            Type::Bool => "bool",
            Type::List => "list",
            Type::Dict => "dict",
            Type::Path => "path",
            Type::Raw => "raw",
            Type::Json => "jsonarg",
            Type::Bytes => "bytes",
        })
    }
}

/// When something deprecated goes away, as Ansible's `deprecate()` takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removal {
    pub(crate) when: RemovedIn,
    pub(crate) collection_name: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RemovedIn {
    Version(String),
    Date(String),
}

impl Removal {
    /// Removed in `version` of the collection `collection_name`.
    pub fn version(version: impl Into<String>, collection_name: impl Into<String>) -> Removal {
        Removal { when: RemovedIn::Version(version.into()), collection_name: collection_name.into() }
    }

    /// Removed after `date` (`YYYY-MM-DD`) from the collection `collection_name`.
    pub fn date(date: impl Into<String>, collection_name: impl Into<String>) -> Removal {
        Removal { when: RemovedIn::Date(date.into()), collection_name: collection_name.into() }
    }
}

/// One option of an [`ArgSpec`], built like its `argument_spec` entry.
///
/// ```
/// use ansible_module::{Opt, Type};
/// use serde_json::json;
///
/// Opt::str("name").required().aliases(&["vm_name"]);
/// Opt::str("state").choices(&["present", "absent"]).default("present");
/// Opt::int("count").default(json!(1));
/// Opt::list("names").elements(Type::Str);
/// Opt::str("password").no_log();
/// Opt::dict("metadata").secret_keys(|key| key == "ansible_password");
/// ```
#[derive(Debug, Clone)]
pub struct Opt {
    pub(crate) name: String,
    pub(crate) kind: Type,
    pub(crate) required: bool,
    pub(crate) default: Option<Value>,
    pub(crate) choices: Vec<Value>,
    pub(crate) aliases: Vec<String>,
    pub(crate) deprecated_aliases: Vec<(String, Removal)>,
    pub(crate) deprecated: Option<Removal>,
    pub(crate) no_log: bool,
    pub(crate) secret_key: Option<fn(&str) -> bool>,
    pub(crate) elements: Option<Type>,
    pub(crate) suboptions: Option<ArgSpec>,
    pub(crate) apply_defaults: bool,
}

impl Opt {
    /// An option called `name` of type `kind`.
    pub fn new(name: impl Into<String>, kind: Type) -> Opt {
        Opt {
            name: name.into(),
            kind,
            required: false,
            default: None,
            choices: Vec::new(),
            aliases: Vec::new(),
            deprecated_aliases: Vec::new(),
            deprecated: None,
            no_log: false,
            secret_key: None,
            elements: None,
            suboptions: None,
            apply_defaults: false,
        }
    }

    /// A `str` option.
    pub fn str(name: impl Into<String>) -> Opt {
        Opt::new(name, Type::Str)
    }

    /// An `int` option.
    pub fn int(name: impl Into<String>) -> Opt {
        Opt::new(name, Type::Int)
    }

    /// A `float` option.
    pub fn float(name: impl Into<String>) -> Opt {
        Opt::new(name, Type::Float)
    }

    /// A `bool` option.
    pub fn bool(name: impl Into<String>) -> Opt {
        Opt::new(name, Type::Bool)
    }

    /// A `list` option; see [`Opt::elements`].
    pub fn list(name: impl Into<String>) -> Opt {
        Opt::new(name, Type::List)
    }

    /// A `dict` option; see [`Opt::suboptions`].
    pub fn dict(name: impl Into<String>) -> Opt {
        Opt::new(name, Type::Dict)
    }

    /// A `path` option.
    pub fn path(name: impl Into<String>) -> Opt {
        Opt::new(name, Type::Path)
    }

    /// A `raw` option.
    pub fn raw(name: impl Into<String>) -> Opt {
        Opt::new(name, Type::Raw)
    }

    /// The option must be given.
    pub fn required(mut self) -> Opt {
        self.required = true;
        self
    }

    /// The value used when the option is not given; it is converted to the
    /// option's type like a given value.
    pub fn default(mut self, value: impl Into<Value>) -> Opt {
        self.default = Some(value.into());
        self
    }

    /// The only values allowed, compared after type conversion. For a list,
    /// every element must be one of them.
    pub fn choices<V: Into<Value> + Clone>(mut self, choices: &[V]) -> Opt {
        self.choices = choices.iter().cloned().map(Into::into).collect();
        self
    }

    /// Other names the option may be given as.
    pub fn aliases(mut self, aliases: &[&str]) -> Opt {
        self.aliases.extend(aliases.iter().map(|alias| alias.to_string()));
        self
    }

    /// An alias that still works but is reported as deprecated when used.
    pub fn deprecated_alias(mut self, alias: &str, removal: Removal) -> Opt {
        self.aliases.push(alias.to_string());
        self.deprecated_aliases.push((alias.to_string(), removal));
        self
    }

    /// The whole option is deprecated: using it reports a deprecation.
    pub fn deprecated(mut self, removal: Removal) -> Opt {
        self.deprecated = Some(removal);
        self
    }

    /// The value is a secret: it is masked in `invocation` and scrubbed from
    /// every string of the result.
    pub fn no_log(mut self) -> Opt {
        self.no_log = true;
        self
    }

    /// Which keys hold secrets wherever they appear inside this option's
    /// value, at any depth: for free-form `dict`, `list` and `raw` options
    /// whose shape is not declared with suboptions. The values of keys
    /// `is_secret` accepts are treated as the values of `no_log` options.
    ///
    /// ```
    /// use ansible_module::Opt;
    ///
    /// Opt::dict("vm").secret_keys(|key| matches!(key, "password" | "user_data"));
    /// ```
    pub fn secret_keys(mut self, is_secret: fn(&str) -> bool) -> Opt {
        self.secret_key = Some(is_secret);
        self
    }

    /// The type every element of a `list` option is converted to.
    pub fn elements(mut self, kind: Type) -> Opt {
        self.elements = Some(kind);
        self
    }

    /// The spec of a `dict` option, or of every element of a `list` of
    /// `dict`s, validated like the top level (rules included).
    pub fn suboptions(mut self, spec: ArgSpec) -> Opt {
        self.suboptions = Some(spec);
        self
    }

    /// Validate the suboptions even when the option is not given, so their
    /// defaults are filled in (Ansible's `apply_defaults: true`).
    pub fn apply_defaults(mut self) -> Opt {
        self.apply_defaults = true;
        self
    }

    /// Every name the option can be given as: its own, then its aliases.
    pub(crate) fn names(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.name.as_str()).chain(self.aliases.iter().map(String::as_str))
    }
}

/// A `required_if` rule.
#[derive(Debug, Clone)]
pub(crate) struct RequiredIf {
    pub(crate) name: String,
    pub(crate) value: Value,
    pub(crate) requirements: Vec<String>,
    /// Any one of the requirements is enough, rather than all of them.
    pub(crate) any: bool,
}

/// An argument spec: the options of a module (or of a `dict` option) and
/// the rules between them.
///
/// ```
/// use ansible_module::{ArgSpec, Opt};
///
/// let spec = ArgSpec::new([
///     Opt::str("name").required(),
///     Opt::str("state").choices(&["present", "absent"]).default("present"),
///     Opt::path("image"),
///     Opt::str("url"),
/// ])
/// .mutually_exclusive(&["image", "url"])
/// .required_if_any("state", "present", &["image", "url"])
/// .supports_check_mode();
/// ```
#[derive(Debug, Clone, Default)]
pub struct ArgSpec {
    pub(crate) options: Vec<Opt>,
    pub(crate) mutually_exclusive: Vec<Vec<String>>,
    pub(crate) required_one_of: Vec<Vec<String>>,
    pub(crate) required_together: Vec<Vec<String>>,
    pub(crate) required_if: Vec<RequiredIf>,
    pub(crate) required_by: Vec<(String, Vec<String>)>,
    pub(crate) supports_check_mode: bool,
}

fn owned(names: &[&str]) -> Vec<String> {
    names.iter().map(|name| name.to_string()).collect()
}

impl ArgSpec {
    /// A spec with these options and no rules. As in Python's `argument_spec`, a dict, a name
    /// declared twice is its last declaration, in the place of the first.
    pub fn new(options: impl IntoIterator<Item = Opt>) -> ArgSpec {
        let mut kept: Vec<Opt> = Vec::new();
        for option in options {
            match kept.iter_mut().find(|known| known.name == option.name) {
                Some(known) => *known = option,
                None => kept.push(option),
            }
        }
        ArgSpec { options: kept, ..ArgSpec::default() }
    }

    /// At most one of `names` may be given (defaults do not count).
    pub fn mutually_exclusive(mut self, names: &[&str]) -> ArgSpec {
        self.mutually_exclusive.push(owned(names));
        self
    }

    /// At least one of `names` must be set.
    pub fn required_one_of(mut self, names: &[&str]) -> ArgSpec {
        self.required_one_of.push(owned(names));
        self
    }

    /// If any of `names` is set, all of them must be.
    pub fn required_together(mut self, names: &[&str]) -> ArgSpec {
        self.required_together.push(owned(names));
        self
    }

    /// When option `name` equals `value`, all of `requirements` must be set.
    pub fn required_if(self, name: &str, value: impl Into<Value>, requirements: &[&str]) -> ArgSpec {
        self.push_required_if(name, value.into(), requirements, false)
    }

    /// When option `name` equals `value`, at least one of `requirements`
    /// must be set.
    pub fn required_if_any(self, name: &str, value: impl Into<Value>, requirements: &[&str]) -> ArgSpec {
        self.push_required_if(name, value.into(), requirements, true)
    }

    fn push_required_if(mut self, name: &str, value: Value, requirements: &[&str], any: bool) -> ArgSpec {
        self.required_if.push(RequiredIf { name: name.to_string(), value, requirements: owned(requirements), any });
        self
    }

    /// When option `name` is set, all of `requirements` must be set too.
    pub fn required_by(mut self, name: &str, requirements: &[&str]) -> ArgSpec {
        self.required_by.push((name.to_string(), owned(requirements)));
        self
    }

    /// The module honours check mode. Without this, a task run with
    /// `--check` is skipped, as Ansible does. Meaningless for suboptions.
    pub fn supports_check_mode(mut self) -> ArgSpec {
        self.supports_check_mode = true;
        self
    }

    /// The canonical names of the options, in the order declared.
    pub fn option_names(&self) -> impl Iterator<Item = &str> {
        self.options.iter().map(|option| option.name.as_str())
    }

    /// The option given as `name`, which may be one of its aliases.
    pub(crate) fn option_named(&self, name: &str) -> Option<&Opt> {
        self.options.iter().find(|option| option.names().any(|known| known == name))
    }
}
