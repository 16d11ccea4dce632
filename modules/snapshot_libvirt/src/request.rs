//! The validated request: what the user asked for, in domain terms, every value checked.

use serde_json::{Map, Value};

use ansible_module::Error;
use virtfarm_libvirt::snapshot::orchestrate::{Domain, Request};

/// One validated call of the module: the library's request, and the option its domains came
/// from (`name`, `names` or `placement`), for error messages.
#[derive(Clone, Debug)]
pub struct Call {
    /// What to do.
    pub request: Request,
    /// The option that named the domains.
    pub domains_option: &'static str,
}

/// A value refused by this module's rules or the library's, naming `option`.
pub fn bad(option: &str, problem: impl ToString) -> Error {
    Error::Invalid { name: option.to_string(), reason: problem.to_string() }
}

/// Reads `placement: {domain: uri}` (what kvm_provision returns as `placement`), in its order.
pub fn placed_domains(placement: &Map<String, Value>) -> Result<Vec<Domain>, Error> {
    placement
        .iter()
        .map(|(name, uri)| match uri {
            Value::String(uri) => Ok(Domain { name: name.clone(), uri: uri.clone() }),
            other => Err(bad("placement", format!("the URI of domain '{name}' must be a string, got {other}"))),
        })
        .collect()
}
