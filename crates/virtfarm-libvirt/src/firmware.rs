//! What a hypervisor offers a guest, read from libvirt's domain capabilities, so that firmware
//! or a TPM the host lacks is refused before anything is defined, over any URI.

use quick_xml::events::Event;
use quick_xml::Reader;

use crate::connection::Hypervisor;
use crate::domain_xml::{DomainSpec, Firmware};
use crate::error::{Doing, Error, Result};

/// What the domain capabilities say about firmware and TPMs, for one emulator, arch, machine
/// and domain type.
#[derive(Debug, Default, PartialEq)]
pub struct Offered {
    /// The URI it was read from, for messages.
    uri: String,
    /// Values of `<os><enum name='firmware'>`: `efi` where UEFI firmware is installed.
    kinds: Vec<String>,
    /// Values of `<os><loader>`: the pflash loaders libvirt knows (with an NVRAM template).
    loaders: Vec<String>,
    /// Values of `<tpm><enum name='model'>`: `tpm-tis`, `tpm-crb`, ...
    tpm_models: Vec<String>,
    /// Values of `<tpm><enum name='backendModel'>`: `emulator` where swtpm is installed.
    tpm_backends: Vec<String>,
    /// Values of `<tpm><enum name='backendVersion'>` (swtpm's, `1.2` and `2.0`).
    tpm_versions: Vec<String>,
}

fn offered(uri: &str, caps: &str) -> Result<Offered> {
    let mut reader = Reader::from_str(caps);
    let mut offered = Offered { uri: uri.to_string(), ..Offered::default() };
    // Element names from the root, an `<enum name='x'>` as `enum-x`.
    let mut path: Vec<String> = Vec::new();
    loop {
        let event = reader
            .read_event()
            .map_err(|e| Error::Xml { doing: "reading domain capabilities".into(), message: e.to_string() })?;
        match event {
            Event::Start(start) => {
                let name = String::from_utf8_lossy(start.name().as_ref()).into_owned();
                let enum_name = (name == "enum")
                    .then(|| start.try_get_attribute("name").ok().flatten())
                    .flatten()
                    .map(|a| String::from_utf8_lossy(&a.value).into_owned());
                path.push(enum_name.map_or(name, |e| format!("enum-{e}")));
            }
            Event::End(_) => {
                path.pop();
            }
            Event::Text(text) if path.last().map(String::as_str) == Some("value") => {
                let value = text.unescape().map(|v| v.into_owned()).unwrap_or_default();
                let parent = |n: usize| path.iter().rev().nth(n).map(String::as_str);
                let list = match (parent(1), parent(2)) {
                    (Some("loader"), _) => &mut offered.loaders,
                    (Some("enum-firmware"), Some("os")) => &mut offered.kinds,
                    (Some("enum-model"), Some("tpm")) => &mut offered.tpm_models,
                    (Some("enum-backendModel"), Some("tpm")) => &mut offered.tpm_backends,
                    (Some("enum-backendVersion"), Some("tpm")) => &mut offered.tpm_versions,
                    _ => continue,
                };
                list.push(value);
            }
            Event::Eof => return Ok(offered),
            _ => {}
        }
    }
}

impl Hypervisor {
    /// What this hypervisor offers `spec` (its type, arch, machine and emulator set).
    pub fn offered(&self, spec: &DomainSpec) -> Result<Offered> {
        let caps = self
            .raw()
            .domain_capabilities(
                spec.emulator.as_deref(),
                Some(&spec.arch),
                spec.machine.as_deref(),
                Some(&spec.domain_type),
                0,
            )
            .doing(|| format!("reading the domain capabilities of {}", self.uri()))?;
        offered(self.uri(), &caps)
    }
}

impl Offered {
    /// Refuses firmware the hypervisor cannot give `spec`: UEFI where none is installed, a
    /// loader libvirt does not know.
    pub fn check_firmware(&self, spec: &DomainSpec) -> Result<()> {
        match &spec.firmware {
            Firmware::Loader(path) if !self.loaders.contains(path) => Err(Error::Refused(format!(
                "{path} is not a firmware loader {} offers for {} {}; it offers: {}",
                self.uri,
                spec.arch,
                spec.machine.as_deref().unwrap_or("machines"),
                self.loaders.join(", ")
            ))),
            Firmware::Efi { .. } if !self.kinds.iter().any(|k| k == "efi") => {
                Err(Error::Refused(format!("{} has no UEFI firmware installed (on Debian: ovmf)", self.uri)))
            }
            _ => Ok(()),
        }
    }

    /// The TPM model for `spec`'s emulated TPM 2.0: `tpm-crb` for a UEFI q35 x86_64 guest
    /// where offered (the interface TPM 2.0 was made for, and what UEFI firmware expects),
    /// else `None`, libvirt's default for the machine (`tpm-tis` on x86). Refused where
    /// libvirt offers no swtpm-backed TPM 2.0.
    pub fn tpm_model(&self, spec: &DomainSpec) -> Result<Option<String>> {
        if !self.tpm_backends.iter().any(|b| b == "emulator") {
            return Err(Error::Refused(format!(
                "{} offers no emulated TPM for {} {} (on Debian: install swtpm and swtpm-tools, then restart libvirtd)",
                self.uri,
                spec.arch,
                spec.machine.as_deref().unwrap_or("machines")
            )));
        }
        if !self.tpm_versions.is_empty() && !self.tpm_versions.iter().any(|v| v == "2.0") {
            return Err(Error::Refused(format!("{}'s swtpm offers no TPM 2.0", self.uri)));
        }
        let q35 = spec.machine.as_deref().is_some_and(|m| m == "q35" || m.starts_with("pc-q35-"));
        let uefi = spec.firmware != Firmware::Bios;
        let crb = self.tpm_models.iter().any(|m| m == "tpm-crb");
        Ok((spec.arch == "x86_64" && q35 && uefi && crb).then(|| "tpm-crb".to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The parts of a Debian 12 host's domain capabilities that matter here.
    const CAPS: &str = "<domainCapabilities><os supported='yes'><enum name='firmware'><value>efi</value></enum>\
        <loader supported='yes'><value>/usr/share/OVMF/OVMF_CODE_4M.fd</value>\
        <enum name='type'><value>rom</value><value>pflash</value></enum></loader></os>\
        <devices><disk><enum name='bus'><value>virtio</value></enum></disk>\
        <rng supported='yes'><enum name='model'><value>virtio</value></enum></rng>\
        <tpm supported='yes'><enum name='model'><value>tpm-tis</value><value>tpm-crb</value></enum>\
        <enum name='backendModel'><value>passthrough</value><value>emulator</value><value>external</value></enum>\
        <enum name='backendVersion'><value>1.2</value><value>2.0</value></enum></tpm></devices></domainCapabilities>";

    #[test]
    fn loaders_firmware_kinds_and_tpms_are_read_from_their_elements() {
        let read = offered("qemu:///system", CAPS).unwrap();
        assert_eq!(read.kinds, ["efi"]);
        assert_eq!(read.loaders, ["/usr/share/OVMF/OVMF_CODE_4M.fd"]);
        assert_eq!(read.tpm_models, ["tpm-tis", "tpm-crb"], "the rng's models are not a TPM's");
        assert_eq!(read.tpm_backends, ["passthrough", "emulator", "external"]);
        assert_eq!(read.tpm_versions, ["1.2", "2.0"]);
        assert_eq!(offered("", "<domainCapabilities/>").unwrap(), Offered::default());
    }

    #[test]
    fn a_tpm_is_crb_for_uefi_on_q35_libvirts_default_otherwise_and_refused_without_swtpm() {
        let read = offered("qemu:///system", CAPS).unwrap();
        let spec = |firmware, machine: &str| DomainSpec {
            arch: "x86_64".into(),
            machine: Some(machine.into()),
            firmware,
            ..DomainSpec::default()
        };
        let efi = Firmware::Efi { secure_boot: false };
        assert_eq!(read.tpm_model(&spec(efi.clone(), "q35")).unwrap().as_deref(), Some("tpm-crb"));
        assert_eq!(read.tpm_model(&spec(efi.clone(), "pc-q35-7.2")).unwrap().as_deref(), Some("tpm-crb"));
        assert_eq!(read.tpm_model(&spec(Firmware::Bios, "q35")).unwrap(), None);
        assert_eq!(read.tpm_model(&spec(efi.clone(), "pc")).unwrap(), None);
        // Without swtpm, libvirt 9.0 lists the TPM models but not the emulator backend.
        let no_swtpm = CAPS.replace("<value>emulator</value>", "").replace("<value>2.0</value>", "");
        let err = offered("qemu:///system", &no_swtpm).unwrap().tpm_model(&spec(efi.clone(), "q35")).unwrap_err();
        assert!(err.to_string().contains("swtpm"), "{err}");
        let none = offered(
            "qemu:///system",
            "<domainCapabilities><devices><tpm supported='no'/></devices></domainCapabilities>",
        );
        assert!(none.unwrap().tpm_model(&spec(efi, "q35")).is_err());
        let only_old = CAPS.replace("<value>2.0</value>", "");
        assert!(offered("u", &only_old).unwrap().tpm_model(&spec(Firmware::Bios, "q35")).is_err(), "TPM 1.2 only");
    }
}
