//! What a hypervisor can run, from libvirt's two capabilities documents: the host's
//! (`virsh capabilities`: its CPU and the guest architectures and domain types it offers) and
//! the domain capabilities of one emulator, arch, machine and domain type (`virsh
//! domcapabilities`: firmware and TPMs). Each document is read here and nowhere else.
//!
//! Read-only and tolerant: elements we do not use are skipped, so any libvirt's XML parses.

use serde::Deserialize;

use crate::connection::DomainType;
use crate::error::{Error, Result};

/// The host capabilities, as far as domain type and placement need them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostCapabilities {
    /// Feature names of the host CPU, e.g. `vmx`, `hypervisor`.
    cpu_features: Vec<String>,
    /// Each guest architecture with its domain types, in the order of the XML; an arch libvirt
    /// lists once per OS type appears once per listing.
    guests: Vec<(String, Vec<String>)>,
}

#[derive(Deserialize)]
struct RawCapabilities {
    #[serde(default)]
    host: RawHost,
    #[serde(rename = "guest", default)]
    guests: Vec<RawGuest>,
}

#[derive(Default, Deserialize)]
struct RawHost {
    #[serde(default)]
    cpu: RawHostCpu,
}

#[derive(Default, Deserialize)]
struct RawHostCpu {
    #[serde(rename = "feature", default)]
    features: Vec<RawNamed>,
}

#[derive(Deserialize)]
struct RawNamed {
    #[serde(rename = "@name")]
    name: String,
}

#[derive(Deserialize)]
struct RawGuest {
    arch: RawGuestArch,
}

#[derive(Deserialize)]
struct RawGuestArch {
    #[serde(rename = "@name")]
    name: String,
    #[serde(rename = "domain", default)]
    domains: Vec<RawGuestDomain>,
}

#[derive(Deserialize)]
struct RawGuestDomain {
    #[serde(rename = "@type")]
    kind: String,
}

impl HostCapabilities {
    /// Parses a `<capabilities>` document.
    pub fn parse(xml: &str) -> Result<Self> {
        let raw: RawCapabilities = quick_xml::de::from_str(xml)
            .map_err(|e| Error::Xml { doing: "reading host capabilities".into(), message: e.to_string() })?;
        Ok(HostCapabilities {
            cpu_features: raw.host.cpu.features.into_iter().map(|f| f.name).collect(),
            guests: raw
                .guests
                .into_iter()
                .map(|g| (g.arch.name, g.arch.domains.into_iter().map(|d| d.kind).collect()))
                .collect(),
        })
    }

    /// `kvm` where the host offers KVM on a CPU with hardware virtualisation (`vmx` or `svm`),
    /// else `qemu`: nested cloud machines expose a software KVM that is far slower than TCG.
    pub fn preferred_domain_type(&self) -> DomainType {
        let offers_kvm = self.guests.iter().any(|(_, types)| types.iter().any(|t| t == "kvm"));
        let hardware = self.cpu_features.iter().any(|f| f == "vmx" || f == "svm");
        if offers_kvm && hardware {
            DomainType::Kvm
        } else {
            DomainType::Qemu
        }
    }

    /// Guest architectures, each once, with their domain types; `kvm` only where it is the
    /// [preferred](Self::preferred_domain_type) type.
    pub fn guest_arches(&self) -> Vec<(String, Vec<String>)> {
        let real_kvm = self.preferred_domain_type() == DomainType::Kvm;
        let mut arches: Vec<(String, Vec<String>)> = Vec::new();
        for (arch, types) in &self.guests {
            let types = types.iter().filter(|k| *k != "kvm" || real_kvm).cloned();
            match arches.iter_mut().find(|(name, _)| name == arch) {
                Some((_, known)) => known.extend(types.filter(|t| !known.contains(t)).collect::<Vec<_>>()),
                None => arches.push((arch.clone(), types.collect())),
            }
        }
        arches
    }
}

/// The domain capabilities, as far as firmware and TPM checks need them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DomainCapabilities {
    /// Values of `<os><enum name='firmware'>`: `efi` where UEFI firmware is installed.
    pub firmware_kinds: Vec<String>,
    /// Values of `<os><loader>`: the pflash loaders libvirt knows (with an NVRAM template).
    pub loaders: Vec<String>,
    /// Values of `<tpm><enum name='model'>`: `tpm-tis`, `tpm-crb`, ...
    pub tpm_models: Vec<String>,
    /// Values of `<tpm><enum name='backendModel'>`: `emulator` where swtpm is installed.
    pub tpm_backends: Vec<String>,
    /// Values of `<tpm><enum name='backendVersion'>` (swtpm's, `1.2` and `2.0`).
    pub tpm_versions: Vec<String>,
}

#[derive(Deserialize)]
struct RawDomainCapabilities {
    #[serde(default)]
    os: RawOs,
    #[serde(default)]
    devices: RawDevices,
}

#[derive(Default, Deserialize)]
struct RawOs {
    #[serde(rename = "enum", default)]
    enums: Vec<RawEnum>,
    #[serde(default)]
    loader: RawLoader,
}

#[derive(Default, Deserialize)]
struct RawLoader {
    #[serde(rename = "value", default)]
    values: Vec<String>,
}

#[derive(Default, Deserialize)]
struct RawDevices {
    #[serde(default)]
    tpm: RawTpm,
}

#[derive(Default, Deserialize)]
struct RawTpm {
    #[serde(rename = "enum", default)]
    enums: Vec<RawEnum>,
}

/// `<enum name='...'><value>...</value>...</enum>`.
#[derive(Deserialize)]
struct RawEnum {
    #[serde(rename = "@name")]
    name: String,
    #[serde(rename = "value", default)]
    values: Vec<String>,
}

/// The values of the enum named `name`, empty when there is none.
fn values_of(enums: &[RawEnum], name: &str) -> Vec<String> {
    enums.iter().filter(|e| e.name == name).flat_map(|e| e.values.iter().cloned()).collect()
}

impl DomainCapabilities {
    /// Parses a `<domainCapabilities>` document.
    pub fn parse(xml: &str) -> Result<Self> {
        let raw: RawDomainCapabilities = quick_xml::de::from_str(xml)
            .map_err(|e| Error::Xml { doing: "reading domain capabilities".into(), message: e.to_string() })?;
        Ok(DomainCapabilities {
            firmware_kinds: values_of(&raw.os.enums, "firmware"),
            loaders: raw.os.loader.values,
            tpm_models: values_of(&raw.devices.tpm.enums, "model"),
            tpm_backends: values_of(&raw.devices.tpm.enums, "backendModel"),
            tpm_versions: values_of(&raw.devices.tpm.enums, "backendVersion"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `virsh capabilities` of the test bed: Debian 12, libvirt 9.0, nested (no `vmx`/`svm`).
    const HOST_CAPS: &str = include_str!("../testdata/capabilities.xml");
    /// `virsh domcapabilities --virttype qemu --machine q35` on the same host (ovmf, swtpm).
    const DOMAIN_CAPS: &str = include_str!("../testdata/domcapabilities.xml");

    #[test]
    fn a_libvirt_host_gives_its_arches_and_domain_type() {
        let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let nested = HostCapabilities::parse(HOST_CAPS).unwrap();
        assert_eq!(nested.preferred_domain_type(), DomainType::Qemu);
        let qemu_only = [("i686".to_string(), strings(&["qemu"])), ("x86_64".to_string(), strings(&["qemu"]))];
        assert_eq!(nested.guest_arches(), qemu_only);
        let hardware = HostCapabilities::parse(&HOST_CAPS.replace("name='hypervisor'", "name='vmx'")).unwrap();
        assert_eq!(hardware.preferred_domain_type(), DomainType::Kvm);
        assert_eq!(hardware.guest_arches()[1], ("x86_64".to_string(), strings(&["qemu", "kvm"])));
    }

    const HOST_HEAD: &str = "<capabilities><host><uuid>x</uuid><cpu><arch>x86_64</arch>";

    #[test]
    fn kvm_needs_both_the_domain_type_and_hardware_virtualisation() {
        let domain_type = |xml: String| HostCapabilities::parse(&xml).unwrap().preferred_domain_type();
        let kvm_host = format!("{HOST_HEAD}<feature name='vmx'/></cpu></host><guest><arch name='x86_64'><domain type='qemu'/><domain type='kvm'/></arch></guest></capabilities>");
        assert_eq!(domain_type(kvm_host), DomainType::Kvm);
        let nested_soft_kvm = format!("{HOST_HEAD}<feature name='hypervisor'/></cpu></host><guest><arch name='x86_64'><domain type='qemu'/><domain type='kvm'/></arch></guest></capabilities>");
        assert_eq!(domain_type(nested_soft_kvm), DomainType::Qemu);
        let no_kvm = format!("{HOST_HEAD}<feature name='svm'/></cpu></host><guest><arch name='x86_64'><domain type='qemu'/></arch></guest></capabilities>");
        assert_eq!(domain_type(no_kvm), DomainType::Qemu);
    }

    #[test]
    fn an_arch_listed_twice_is_merged() {
        let caps = "<capabilities><host><cpu><arch>x86_64</arch><feature name='hypervisor'/></cpu></host>\
            <guest><os_type>hvm</os_type><arch name='x86_64'><wordsize>64</wordsize><domain type='qemu'/><domain type='kvm'/></arch></guest>\
            <guest><os_type>xen</os_type><arch name='x86_64'><domain type='xen'/></arch></guest>\
            <guest><os_type>hvm</os_type><arch name='i686'><domain type='qemu'/></arch></guest></capabilities>";
        let arches = HostCapabilities::parse(caps).unwrap().guest_arches();
        let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            arches,
            [("x86_64".to_string(), strings(&["qemu", "xen"])), ("i686".to_string(), strings(&["qemu"]))]
        );
        assert!(HostCapabilities::parse("<capabilities>").is_err());
    }

    #[test]
    fn loaders_firmware_kinds_and_tpms_are_read_from_their_elements() {
        let read = DomainCapabilities::parse(DOMAIN_CAPS).unwrap();
        assert_eq!(read.firmware_kinds, ["efi"]);
        assert_eq!(
            read.loaders,
            [
                "/usr/share/OVMF/OVMF_CODE_4M.ms.fd",
                "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd",
                "/usr/share/OVMF/OVMF_CODE_4M.fd"
            ]
        );
        assert_eq!(read.tpm_models, ["tpm-tis", "tpm-crb"], "the rng's models are not a TPM's");
        assert_eq!(read.tpm_backends, ["passthrough", "emulator", "external"]);
        assert_eq!(read.tpm_versions, ["1.2", "2.0"]);
        assert_eq!(DomainCapabilities::parse("<domainCapabilities/>").unwrap(), DomainCapabilities::default());
        let no_tpm = "<domainCapabilities><devices><tpm supported='no'/></devices></domainCapabilities>";
        assert_eq!(DomainCapabilities::parse(no_tpm).unwrap(), DomainCapabilities::default());
    }
}
