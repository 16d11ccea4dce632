//! `virtfarm.libvirt.libvirt_ping`: proves that a virtfarm binary runs on the target and,
//! given `uri`, that libvirt answers there. `data=crash` panics on purpose, to show that even
//! a panic reaches Ansible as a failed JSON result.

use ansible_module::{ArgSpec, Module, Opt, Response};
use anyhow::Context;
use serde_json::json;
use virtfarm_libvirt::Hypervisor;

fn spec() -> ArgSpec {
    ArgSpec::new([Opt::str("data").default("pong"), Opt::str("uri")]).supports_check_mode()
}

fn ping(module: &Module) -> anyhow::Result<Response> {
    let data = module.params().str("data")?;
    if data == "crash" {
        panic!("data=crash asks the module to panic");
    }
    let mut response = Response::new().changed(false).with("ping", data);
    if let Some(uri) = module.params().opt_str("uri")? {
        let hypervisor = Hypervisor::open(uri).context("uri")?;
        let libvirt = json!({
            "version": hypervisor.libvirt_version()?,
            "hostname": hypervisor.hostname()?,
            "domain_type": hypervisor.preferred_domain_type()?.as_str(),
        });
        response = response.with("libvirt", libvirt);
    }
    Ok(response)
}

fn main() {
    virtfarm_libvirt::ssh_reuse::enable();
    ansible_module::run(spec(), ping)
}
