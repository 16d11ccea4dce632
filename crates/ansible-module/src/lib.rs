//! Ansible's module protocol for binary modules.
//!
//! Ansible runs a binary module with one argument: the path of a JSON file
//! holding the task's arguments and the controller's `_ansible_*` keys. It
//! reads back exactly one JSON object from standard output; anything else
//! there breaks the task. This crate does for a Rust module what Python's
//! `AnsibleModule` does for a Python one:
//!
//! - validates the arguments against a declarative [`ArgSpec`] of [`Opt`]s:
//!   type conversions, defaults, choices, aliases, suboptions and the
//!   `mutually_exclusive`/`required_*` rules, failing with the messages
//!   `AnsibleModule` gives, all of them at once ([`ArgumentErrors`]);
//! - hands the body the validated [`Params`] and the task's [`Context`]
//!   (check mode, diff, verbosity...) through a [`Module`]; a module with
//!   rules of its own has them read the parameters first, even those of a
//!   call the spec refused, so that one failed result names the spec's
//!   errors and the rules' ([`run_parsed`]);
//! - skips the task in check mode unless the spec
//!   [supports it](ArgSpec::supports_check_mode);
//! - replies with the body's [`Response`], adding `invocation`, warnings and
//!   deprecations, masking the values of `no_log` options everywhere;
//! - turns errors, and panics, into failed results.
//!
//! # Example
//!
//! A module's `main` declares its options and its logic, and [`run`] does
//! the rest:
//!
//! ```no_run
//! use ansible_module::{ArgSpec, Error, Module, Opt, Response};
//!
//! fn spec() -> ArgSpec {
//!     ArgSpec::new([
//!         Opt::str("name").required(),
//!         Opt::str("state").choices(&["running", "shutoff"]).default("running"),
//!     ])
//!     .supports_check_mode()
//! }
//!
//! fn ensure_state(module: &Module) -> Result<Response, Error> {
//!     let name = module.params().str("name")?;
//!     let state = module.params().str("state")?;
//!     // ... compare with the domain's state, change it unless in check mode ...
//!     Ok(Response::new().changed(false).msg(format!("{name} is {state}")))
//! }
//!
//! fn main() {
//!     ansible_module::run(spec(), ensure_state)
//! }
//! ```
//!
//! [`execute`] is the same run on JSON values, without the process around
//! it, which is how a module tests what Ansible will see:
//!
//! ```
//! # use ansible_module::{ArgSpec, Error, Module, Opt, Response};
//! # fn spec() -> ArgSpec { ArgSpec::new([Opt::str("name").required()]) }
//! # fn ensure_state(module: &Module) -> Result<Response, Error> {
//! #     Ok(Response::new().msg(format!("{} is running", module.params().str("name")?)))
//! # }
//! use serde_json::json;
//!
//! let reply = ansible_module::execute(&spec(), json!({"name": "web01"}), ensure_state);
//! assert_eq!(reply["msg"], "web01 is running");
//!
//! // Every argument error at once, unknown names first: a typo explains the rest.
//! let args = json!({"nmae": "web01", "_ansible_module_name": "web"});
//! let reply = ansible_module::execute(&spec(), args, ensure_state);
//! assert_eq!(
//!     reply["msg"],
//!     "Unsupported parameters for (web) module: nmae. Supported parameters include: name.; \
//!      missing required arguments: name"
//! );
//! assert_eq!(reply["argument_errors"][1], "missing required arguments: name");
//! assert_eq!(reply["failed"], true);
//! ```

#![deny(missing_docs)]

mod coerce;
mod entry;
mod error;
mod no_log;
mod params;
mod response;
mod runtime;
mod spec;
mod validate;

pub use entry::{panic_text, run, run_parsed};
pub use error::{ArgumentErrors, Error};
pub use params::Params;
pub use response::{Diff, Response};
pub use runtime::{execute, execute_parsed, Context, Module};
pub use spec::{ArgSpec, Opt, Removal, Type};
