//! The readers of XML that comes back from a daemon (or, for `xml:`, from the user): domain
//! facts with our metadata, the rewrite of a given domain XML, network reservations (what the
//! inventory scan reads), and the small address parsers.
//!
//! Invariant: no panic, whatever the text; a rewritten domain keeps the name and metadata it
//! was given.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use virtfarm_libvirt::domain_facts::DomainFacts;
use virtfarm_libvirt::domain_xml::{reconcile_identity, InstanceMetadata};
use virtfarm_libvirt::network::{reservations_in, Subnet};
use virtfarm_libvirt::validate;

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    xml: &'a str,
    name: &'a str,
    project: Option<&'a str>,
}

fuzz_target!(|input: Input<'_>| {
    let xml = input.xml;
    let _ = DomainFacts::parse(xml);
    let _ = reservations_in(xml);
    let _ = validate::mac(xml);
    let _ = Subnet::parse(xml);
    let metadata = InstanceMetadata { project: input.project.map(str::to_string), ..Default::default() };
    if let Ok(rewritten) = reconcile_identity(xml, input.name, None, &metadata) {
        if let Ok(facts) = DomainFacts::parse(&rewritten) {
            assert_eq!(facts.name.trim(), input.name.trim(), "{rewritten}");
        }
    }
});
