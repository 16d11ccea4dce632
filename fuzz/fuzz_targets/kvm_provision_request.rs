//! kvm_provision's two parsing stages (its argument spec, then `definition::request`, compiled
//! from the module's own source files, through `ansible_module::execute_parsed`, so also on
//! what the spec let through of arguments it refused) on any JSON, then the XML of every VM it
//! accepts.
//!
//! Invariants: no panic; the reply is one JSON object and a refusal says why; every
//! generated definition is written and reads back with the same name, NICs and disks.
#![no_main]

// The module's files that parse, as its `main.rs` names them.
#[allow(dead_code)]
#[path = "../../modules/kvm_provision/src/ansible_farm.rs"]
mod ansible_farm;
#[allow(dead_code)]
#[path = "../../modules/kvm_provision/src/definition.rs"]
mod definition;
#[allow(dead_code)]
#[path = "../../modules/kvm_provision/src/hypervisors.rs"]
mod hypervisors;

use ansible_module::Response;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use virtfarm_fuzz::Json;
use virtfarm_libvirt::domain_facts::DomainFacts;

use virtfarm_libvirt::provision::{DomainSource, Request};

fuzz_target!(|args: Json| {
    let reply = ansible_module::execute_parsed(
        &definition::spec(),
        args.value(),
        |module| definition::request(module.params(), "kvm_provision"),
        |_, parsed| {
            check_definitions(&parsed.request);
            anyhow::Ok(Response::new())
        },
    );
    let Value::Object(reply) = reply else { panic!("the reply is not a JSON object: {reply}") };
    if reply.get("failed") == Some(&Value::Bool(true)) {
        assert!(reply.get("msg").and_then(Value::as_str).is_some_and(|m| !m.is_empty()), "a refusal without a message: {reply:?}");
    }
});

fn check_definitions(request: &Request) {
    for vm in &request.vms {
        if let Some(init) = &vm.cloud_init {
            init.seed_iso();
        }
        let DomainSource::Generated(spec) = &vm.domain else { continue };
        let xml = spec.to_xml().expect("an accepted VM has a writable definition");
        let facts = DomainFacts::parse(&xml).unwrap_or_else(|e| panic!("{e}: {xml}"));
        assert_eq!(facts.name, spec.name, "{xml}");
        assert_eq!(facts.nics.len(), spec.nics.len(), "{xml}");
        assert_eq!(facts.disks.len(), spec.disks.len(), "{xml}");
    }
}
