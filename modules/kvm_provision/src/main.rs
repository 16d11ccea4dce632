//! `virtfarm.libvirt.kvm_provision`: define, create, stop and remove VMs on any libvirt URI,
//! many at once, idempotently.
//!
//! The protocol (arguments, check mode, secrets, the one JSON reply, panics) is
//! `ansible_module`'s. Parameters become the library's typed request in [`definition`]
//! (placement in [`hypervisors`]); `virtfarm_libvirt::provision` does the work; [`report`]
//! turns its outcomes into the reply.

mod ansible_farm;
mod definition;
mod hypervisors;
mod report;

use ansible_module::{ArgumentErrors, Module, Removal, Response};
use virtfarm_libvirt::provision;

use crate::definition::Parsed;

fn main() {
    virtfarm_libvirt::ssh_reuse::enable();
    ansible_module::run_parsed(definition::spec(), parse, run)
}

fn parse(module: &Module) -> Result<Parsed, ArgumentErrors> {
    definition::request(module.params(), &module.context().module_name)
}

fn run(module: &Module, parsed: Parsed) -> Result<Response, std::convert::Infallible> {
    let context = module.context();
    for warning in parsed.warnings {
        module.warn(warning);
    }
    for deprecation in parsed.deprecations {
        module.deprecate(deprecation, Removal::version("1.0.0", "virtfarm.libvirt"));
    }
    let mut connections = virtfarm_libvirt::Connections::default();
    let outcomes = provision::provision(parsed.request, context.check_mode, &mut connections);
    for warning in outcomes.iter().flat_map(|o| &o.warnings) {
        module.warn(warning.to_string());
    }
    Ok(report::response(&outcomes, context.diff))
}
