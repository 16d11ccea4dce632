//! The crate's error: each message is what the Ansible user reads as `msg`,
//! worded as `AnsibleModule` words it so that documentation, search results
//! and habits carry over. Nested option names are dotted: `cloud_init.user`.

use std::path::PathBuf;

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

fn supported_with_aliases(supported: &[String], aliases: &[String]) -> String {
    let options = supported.join(", ");
    if aliases.is_empty() {
        options
    } else {
        format!("{options} ({})", aliases.join(", "))
    }
}
