//! The domain XML writer: whatever strings the user gives (`<`, `&`, quotes, unicode), the
//! definition we write reads back, with quick-xml, with every one of them intact (but a
//! metadata var named like a secret, which is never read back).
//!
//! Strings are limited to what an XML document can carry at all (no control characters),
//! and are neither empty nor padded with spaces: quick-xml's deserializer trims text, and
//! an empty element reads as absent, which libvirt's names and paths never are.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use virtfarm_libvirt::domain_facts::DomainFacts;
use virtfarm_libvirt::domain_xml::{
    is_secret_key, reconcile_identity, DirectKernel, DiskDevice, DomainSpec, InstanceMetadata, NicDevice, NicSource,
};

/// A user string an XML document can hold.
#[derive(Debug)]
struct Text(String);

impl<'a> Arbitrary<'a> for Text {
    fn arbitrary(u: &mut arbitrary::Unstructured<'a>) -> arbitrary::Result<Self> {
        let raw = String::arbitrary(u)?;
        let text: String = raw.chars().filter(|c| !c.is_control()).collect();
        let text = text.trim();
        Ok(Text(if text.is_empty() { "x".to_string() } else { text.to_string() }))
    }
}

impl Text {
    fn get(&self) -> String {
        self.0.clone()
    }
}

#[derive(Arbitrary, Debug)]
struct Input {
    name: Text,
    domain_type: Text,
    arch: Text,
    machine: Option<Text>,
    memory_mib: u64,
    vcpus: u32,
    cmdline: Option<Text>,
    disks: Vec<(Text, Text, Text, bool)>,
    nics: Vec<(u8, Text, Text)>,
    platform: Option<Text>,
    project: Option<Text>,
    groups: Vec<Text>,
    volumes: Vec<Text>,
    vars: Vec<(Text, Text)>,
}

fn spec(input: &Input) -> DomainSpec {
    let nic = |(kind, source, mac): &(u8, Text, Text)| NicDevice {
        source: match kind % 3 {
            0 => NicSource::Network(source.get()),
            1 => NicSource::Bridge(source.get()),
            _ => NicSource::User,
        },
        mac: mac.get(),
    };
    DomainSpec {
        name: input.name.get(),
        domain_type: input.domain_type.get(),
        arch: input.arch.get(),
        machine: input.machine.as_ref().map(Text::get),
        memory_mib: input.memory_mib,
        vcpus: input.vcpus,
        kernel: input.cmdline.as_ref().map(|c| DirectKernel { kernel: "/k".into(), initrd: None, cmdline: Some(c.get()) }),
        disks: input
            .disks
            .iter()
            .map(|(path, format, target, cdrom)| DiskDevice { path: path.get(), format: format.get(), target: target.get(), cdrom: *cdrom })
            .collect(),
        nics: input.nics.iter().map(nic).collect(),
        metadata: InstanceMetadata {
            platform: input.platform.as_ref().map(Text::get),
            project: input.project.as_ref().map(Text::get),
            groups: input.groups.iter().map(Text::get).collect(),
            volumes: input.volumes.iter().map(Text::get).collect(),
            vars: input.vars.iter().map(|(k, v)| (k.get(), v.get())).collect(),
            ..Default::default()
        },
        ..Default::default()
    }
}

fuzz_target!(|input: Input| {
    let spec = spec(&input);
    let xml = spec.to_xml().expect("any spec can be written");
    let facts = DomainFacts::parse(&xml).unwrap_or_else(|e| panic!("{e}: {xml}"));
    assert_eq!(facts.name, spec.name, "{xml}");
    assert_eq!(facts.domain_type, spec.domain_type, "{xml}");
    assert_eq!(facts.vcpus, spec.vcpus, "{xml}");
    let macs: Vec<String> = spec.nics.iter().map(|n| n.mac.to_ascii_lowercase()).collect();
    assert_eq!(facts.nics.iter().map(|n| n.mac.clone()).collect::<Vec<_>>(), macs, "{xml}");
    let files: Vec<Option<String>> = spec.disks.iter().map(|d| Some(d.path.clone())).collect();
    assert_eq!(facts.disks.iter().map(|d| d.file.clone()).collect::<Vec<_>>(), files, "{xml}");
    // A var named like a secret is never read back: the module refuses such keys, and the
    // reader drops any written into the namespace by other means.
    let mut readable = spec.metadata.clone();
    readable.vars.retain(|(key, _)| !is_secret_key(key));
    assert_eq!(facts.metadata, readable, "our metadata reads back: {xml}");
    // The same strings survive the rewrite of a given XML.
    let rewritten = reconcile_identity(&xml, &spec.name, Some("0b6a1d3e-2f6b-4c1e-9d0a-1a2b3c4d5e6f"), &spec.metadata)
        .expect("our own XML can be rewritten");
    let facts = DomainFacts::parse(&rewritten).expect("rewritten XML reads back");
    assert_eq!(facts.metadata, readable, "metadata reads back: {rewritten}");
    assert_eq!(facts.name, spec.name, "{rewritten}");
});
