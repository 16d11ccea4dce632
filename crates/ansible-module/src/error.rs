//! The crate's errors: each message is what the Ansible user reads as `msg`,
//! worded as `AnsibleModule` words it so that documentation, search results
//! and habits carry over. Nested option names are full paths:
//! `cloud_init.user`, `disks[1].size`.

use std::fmt;
use std::path::PathBuf;

use serde_json::Value;

use crate::response::Response;
use crate::spec::Type;

/// Everything that can go wrong between reading the arguments and getting
/// a typed parameter out of them.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `could not read module arguments from 'PATH': REASON`
    #[error("could not read module arguments from '{}': {source}", path.display())]
    ReadArgs {
        /// The arguments file, or `<stdin>`.
        path: PathBuf,
        /// Why reading failed.
        source: std::io::Error,
    },

    /// `no module arguments: pass the path of a JSON arguments file, or JSON on standard input`
    #[error("no module arguments: pass the path of a JSON arguments file, or JSON on standard input")]
    NoArgs,

    /// `module arguments from 'PATH' are not valid JSON: REASON`
    #[error("module arguments from '{}' are not valid JSON: {source}", path.display())]
    InvalidJson {
        /// The arguments file, or `<stdin>`.
        path: PathBuf,
        /// Where and why parsing failed.
        source: serde_json::Error,
    },

    /// `module arguments must be a JSON object, got TYPE`
    #[error("module arguments must be a JSON object, got {found}")]
    ArgsNotAnObject {
        /// The Python type name of what was found.
        found: &'static str,
    },

    /// `Unsupported parameters for (MODULE) module: NAMES. Supported parameters include: OPTIONS (ALIASES).`
    #[error(
        "Unsupported parameters for ({module}) module: {}. Supported parameters include: {}.",
        unsupported.join(", "),
        supported_with_aliases(supported, aliases)
    )]
    Unsupported {
        /// The module's name.
        module: String,
        /// The unknown names, sorted.
        unsupported: Vec<String>,
        /// The options of the spec the names were given to, sorted.
        supported: Vec<String>,
        /// Their aliases, sorted.
        aliases: Vec<String>,
    },

    /// `missing required arguments: NAMES`
    #[error("missing required arguments: {}", .0.join(", "))]
    MissingRequired(Vec<String>),

    /// `argument 'NAME' is of type TYPE and we were unable to convert to WANTED: REASON`
    #[error("argument '{name}' is of type {found} and we were unable to convert to {wanted}: {reason}")]
    Conversion {
        /// The option.
        name: String,
        /// The Python type name of the value given.
        found: &'static str,
        /// The option's type.
        wanted: Type,
        /// Why the value could not be converted.
        reason: String,
    },

    /// `Elements value for option 'NAME' is of type TYPE and we were unable to convert to WANTED: REASON`
    #[error(
        "Elements value for option '{name}' is of type {found} and we were unable to convert to {wanted}: {reason}"
    )]
    ElementConversion {
        /// The list option.
        name: String,
        /// The Python type name of the element given.
        found: &'static str,
        /// The option's element type.
        wanted: Type,
        /// Why the element could not be converted.
        reason: String,
    },

    /// `value of NAME must be one of: CHOICES, got: VALUE`
    #[error("value of {name} must be one of: {}, got: {got}", choices.join(", "))]
    NotAChoice {
        /// The option.
        name: String,
        /// The allowed values.
        choices: Vec<String>,
        /// The value given.
        got: String,
    },

    /// `value of NAME must be one or more of: CHOICES. Got no match for: VALUES`
    #[error("value of {name} must be one or more of: {}. Got no match for: {}", choices.join(", "), unmatched.join(", "))]
    NotChoices {
        /// The list option.
        name: String,
        /// The allowed values.
        choices: Vec<String>,
        /// The elements given that are not allowed.
        unmatched: Vec<String>,
    },

    /// `parameters are mutually exclusive: A|B, C|D`
    #[error("parameters are mutually exclusive: {}", .0.iter().map(|group| group.join("|")).collect::<Vec<_>>().join(", "))]
    MutuallyExclusive(Vec<Vec<String>>),

    /// `one of the following is required: NAMES`
    #[error("one of the following is required: {}", .0.join(", "))]
    RequiredOneOf(Vec<String>),

    /// `parameters are required together: NAMES`
    #[error("parameters are required together: {}", .0.join(", "))]
    RequiredTogether(Vec<String>),

    /// `NAME is VALUE but all|any of the following are missing: NAMES`
    #[error("{name} is {value} but {} of the following are missing: {}", if *any { "any" } else { "all" }, missing.join(", "))]
    RequiredIf {
        /// The option whose value triggers the rule.
        name: String,
        /// That value.
        value: String,
        /// Whether one of the requirements would have been enough.
        any: bool,
        /// The requirements not set.
        missing: Vec<String>,
    },

    /// `missing parameter(s) required by 'NAME': NAMES`
    #[error("missing parameter(s) required by '{name}': {}", missing.join(", "))]
    RequiredBy {
        /// The option that is set.
        name: String,
        /// The requirements not set.
        missing: Vec<String>,
    },

    /// What the argument spec said about an option it refused (a value it could not convert,
    /// one not among the choices, a requirement not given), from a getter of that option. The
    /// message is the spec's own, so that a module's rule that reads the option adds nothing
    /// to [`ArgumentErrors`], which keeps one of each message.
    #[error("{message}")]
    Refused {
        /// The option.
        name: String,
        /// The spec's message about it.
        message: String,
    },

    /// `NAME: REASON`: a value the spec let through and a module's own rule refused.
    #[error("{name}: {reason}")]
    Invalid {
        /// The option, by its full path.
        name: String,
        /// Why the rule refused the value.
        reason: String,
    },

    /// `parameter 'NAME' has no value` (a module bug: a getter for a
    /// required value on an option that is neither required nor defaulted)
    #[error("parameter '{0}' has no value")]
    NoValue(String),

    /// `parameter 'NAME' is not of type TYPE` (a module bug: the getter does not
    /// match the option's type in the spec)
    #[error("parameter '{name}' is not of type {expected}")]
    WrongType {
        /// The option.
        name: String,
        /// What the getter expected.
        expected: &'static str,
    },

    /// `module parameters do not fit TYPE: REASON` (a module bug: the
    /// spec lets through what the serde type refuses)
    #[error("module parameters do not fit {target}: {source}")]
    Deserialize {
        /// The Rust type deserialized into.
        target: &'static str,
        /// What serde reported.
        source: serde_json::Error,
    },
}

impl Error {
    /// The options this error leaves without a usable value, by full path: the one that could
    /// not be converted or is not a choice, the requirements not given, a group that must be
    /// given whole and is not.
    pub(crate) fn refused_options(&self) -> &[String] {
        match self {
            Error::Conversion { name, .. }
            | Error::ElementConversion { name, .. }
            | Error::NotAChoice { name, .. }
            | Error::NotChoices { name, .. } => std::slice::from_ref(name),
            Error::MissingRequired(names) | Error::RequiredOneOf(names) | Error::RequiredTogether(names) => names,
            Error::RequiredIf { missing, .. } | Error::RequiredBy { missing, .. } => missing,
            _ => &[],
        }
    }
}

fn supported_with_aliases(supported: &[String], aliases: &[String]) -> String {
    let options = supported.join(", ");
    if aliases.is_empty() {
        options
    } else {
        format!("{options} ({})", aliases.join(", "))
    }
}

/// Every argument error of one run, in the order found: unknown names first
/// (a typo is the likeliest cause of the rest), then the spec's other errors,
/// then the module's own rules. One round trip shows the user all of them:
/// the failed result's `msg` joins them with `; ` and `argument_errors`
/// lists them, as Ansible's `validate_argument_spec` does.
///
/// ```
/// use ansible_module::ArgumentErrors;
///
/// let mut errors = ArgumentErrors::new();
/// let port: Option<u16> = errors.check("70000".parse::<u16>().map_err(|e| format!("port: {e}")));
/// errors.push("host: required");
/// assert_eq!(port, None);
/// assert_eq!(errors.to_string(), "port: number too large to fit in target type; host: required");
/// assert!(errors.finish(()).is_err());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ArgumentErrors(Vec<String>);

impl ArgumentErrors {
    /// No errors yet.
    pub fn new() -> ArgumentErrors {
        ArgumentErrors::default()
    }

    /// Runs `read`, which adds an error for every bad value it meets and
    /// gives up with `None` only after adding one (or on a value the spec
    /// refused, which the spec's errors name): its value if no error was
    /// found, else every error.
    pub fn collect<T>(read: impl FnOnce(&mut ArgumentErrors) -> Option<T>) -> Result<T, ArgumentErrors> {
        let mut errors = ArgumentErrors::new();
        match read(&mut errors) {
            Some(value) => errors.finish(value),
            None => Err(errors),
        }
    }

    /// Adds an error; one already listed is not repeated.
    pub fn push(&mut self, error: impl fmt::Display) {
        // `{:#}` keeps the causes of an `anyhow` error.
        let message = format!("{error:#}");
        if !self.0.contains(&message) {
            self.0.push(message);
        }
    }

    /// The value of `result`, or `None` once its error is added.
    pub fn check<T, E: fmt::Display>(&mut self, result: Result<T, E>) -> Option<T> {
        result.map_err(|error| self.push(error)).ok()
    }

    /// Adds every error of `other`, after these.
    pub fn extend(&mut self, other: ArgumentErrors) {
        other.0.into_iter().for_each(|message| self.push(message));
    }

    /// Whether no error was found.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The messages, in the order found.
    pub fn messages(&self) -> &[String] {
        &self.0
    }

    /// `value` if no error was found, else the errors.
    pub fn finish<T>(self, value: T) -> Result<T, ArgumentErrors> {
        if self.is_empty() {
            Ok(value)
        } else {
            Err(self)
        }
    }

    /// The failed result that reports them: `msg` and `argument_errors`.
    pub fn to_response(&self) -> Response {
        let listed: Vec<Value> = self.0.iter().cloned().map(Value::String).collect();
        Response::fail(self.to_string()).with("argument_errors", listed)
    }
}

impl fmt::Display for ArgumentErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join("; "))
    }
}

impl std::error::Error for ArgumentErrors {}
