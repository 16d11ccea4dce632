//! What a hypervisor offers a guest, read from libvirt's domain capabilities, so that firmware
//! or a TPM the host lacks is refused before anything is defined, over any URI.

use crate::capabilities::DomainCapabilities;
use crate::connection::Hypervisor;
use crate::domain_xml::{DomainSpec, Firmware};
use crate::error::{Doing, Error, Result};

/// What a hypervisor offers for one emulator, arch, machine and domain type.
#[derive(Debug)]
pub struct Offered {
    /// The URI it was read from, for messages.
    uri: String,
    /// Its domain capabilities.
    capabilities: DomainCapabilities,
}

fn offered(uri: &str, caps: &str) -> Result<Offered> {
    Ok(Offered { uri: uri.to_string(), capabilities: DomainCapabilities::parse(caps)? })
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
            Firmware::Loader(path) if !self.capabilities.loaders.contains(path) => Err(Error::Refused(format!(
                "{path} is not a firmware loader {} offers for {} {}; it offers: {}",
                self.uri,
                spec.arch,
                spec.machine.as_deref().unwrap_or("machines"),
                self.capabilities.loaders.join(", ")
            ))),
            Firmware::Efi { .. } if !self.capabilities.firmware_kinds.iter().any(|k| k == "efi") => {
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
        if !self.capabilities.tpm_backends.iter().any(|b| b == "emulator") {
            return Err(Error::Refused(format!(
                "{} offers no emulated TPM for {} {} (on Debian: install swtpm and swtpm-tools, then restart libvirtd)",
                self.uri,
                spec.arch,
                spec.machine.as_deref().unwrap_or("machines")
            )));
        }
        if !self.capabilities.tpm_versions.is_empty() && !self.capabilities.tpm_versions.iter().any(|v| v == "2.0") {
            return Err(Error::Refused(format!("{}'s swtpm offers no TPM 2.0", self.uri)));
        }
        let q35 = spec.machine.as_deref().is_some_and(|m| m == "q35" || m.starts_with("pc-q35-"));
        let uefi = spec.firmware != Firmware::Bios;
        let crb = self.capabilities.tpm_models.iter().any(|m| m == "tpm-crb");
        Ok((spec.arch == "x86_64" && q35 && uefi && crb).then(|| "tpm-crb".to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `virsh domcapabilities --virttype qemu --machine q35` of the test bed (ovmf, swtpm).
    const CAPS: &str = include_str!("../testdata/domcapabilities.xml");

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
