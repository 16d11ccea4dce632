//! `virtfarm.libvirt.snapshot_libvirt`: internal and external snapshots of one domain or a
//! group: create, list, revert, delete. Documentation: `collection/plugins/modules/snapshot_libvirt.yml`.
//!
//! The work is `virtfarm_libvirt::snapshot::orchestrate`'s; this binary reads the options
//! (`args`, `request`) and renders the typed outcome as JSON (`render`).

mod args;
mod render;
mod request;

use ansible_module::{Error, Module, Response};
use virtfarm_libvirt::snapshot::orchestrate;

use request::Call;

fn snapshot_libvirt(module: &Module, call: Call) -> Result<Response, Error> {
    let context = module.context();
    Ok(match orchestrate::run(&call.request, context.check_mode) {
        Ok(outcome) => render::success(&call, outcome, context.diff),
        Err(failure) => render::failure(&call, *failure),
    })
}

fn main() {
    virtfarm_libvirt::ssh_reuse::enable();
    ansible_module::run_parsed(args::spec(), |module| args::to_call(module.params()), snapshot_libvirt)
}
