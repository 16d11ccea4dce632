//! The firmware a hypervisor offers a guest, read from libvirt's domain capabilities, so that
//! a firmware the host lacks is refused before anything is defined, over any URI.

use quick_xml::events::Event;
use quick_xml::Reader;

use crate::connection::Hypervisor;
use crate::domain_xml::{DomainSpec, Firmware};
use crate::error::{Doing, Error, Result};

/// What the domain capabilities say about firmware.
#[derive(Debug, Default, PartialEq)]
struct Offered {
    /// Values of `<os><enum name='firmware'>`: `efi` where UEFI firmware is installed.
    kinds: Vec<String>,
    /// Values of `<os><loader>`: the pflash loaders libvirt knows (with an NVRAM template).
    loaders: Vec<String>,
}

fn offered(caps: &str) -> Result<Offered> {
    let mut reader = Reader::from_str(caps);
    let mut offered = Offered::default();
    let mut path: Vec<String> = Vec::new();
    loop {
        let event = reader
            .read_event()
            .map_err(|e| Error::Xml { doing: "reading domain capabilities".into(), message: e.to_string() })?;
        match event {
            Event::Start(start) => {
                let name = String::from_utf8_lossy(start.name().as_ref()).into_owned();
                let enum_name = start.try_get_attribute("name").ok().flatten().map(|a| a.value.into_owned());
                path.push(if enum_name.as_deref() == Some(b"firmware") { "enum-firmware".into() } else { name });
            }
            Event::End(_) => {
                path.pop();
            }
            Event::Text(text) if path.last().map(String::as_str) == Some("value") => {
                let value = text.unescape().map(|v| v.into_owned()).unwrap_or_default();
                match path.iter().rev().nth(1).map(String::as_str) {
                    Some("loader") => offered.loaders.push(value),
                    Some("enum-firmware") if path.iter().any(|p| p == "os") => offered.kinds.push(value),
                    _ => {}
                }
            }
            Event::Eof => return Ok(offered),
            _ => {}
        }
    }
}

impl Hypervisor {
    /// Refuses firmware this hypervisor cannot give `spec` (its type, arch, machine and emulator
    /// set): UEFI where none is installed, a loader libvirt does not know.
    pub fn check_firmware(&self, spec: &DomainSpec) -> Result<()> {
        if spec.firmware == Firmware::Bios {
            return Ok(());
        }
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
        let offered = offered(&caps)?;
        match &spec.firmware {
            Firmware::Loader(path) if !offered.loaders.contains(path) => Err(Error::Refused(format!(
                "{path} is not a firmware loader {} offers for {} {}; it offers: {}",
                self.uri(),
                spec.arch,
                spec.machine.as_deref().unwrap_or("machines"),
                offered.loaders.join(", ")
            ))),
            Firmware::Efi { .. } if !offered.kinds.iter().any(|k| k == "efi") => {
                Err(Error::Refused(format!("{} has no UEFI firmware installed (on Debian: ovmf)", self.uri())))
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loaders_and_firmware_kinds_are_read_from_the_os_element() {
        let caps = "<domainCapabilities><os supported='yes'><enum name='firmware'><value>efi</value></enum>\
            <loader supported='yes'><value>/usr/share/OVMF/OVMF_CODE_4M.fd</value>\
            <enum name='type'><value>rom</value><value>pflash</value></enum></loader></os>\
            <devices><disk><enum name='bus'><value>virtio</value></enum></disk></devices></domainCapabilities>";
        let read = offered(caps).unwrap();
        assert_eq!(read.kinds, ["efi"]);
        assert_eq!(read.loaders, ["/usr/share/OVMF/OVMF_CODE_4M.fd"]);
        assert_eq!(offered("<domainCapabilities/>").unwrap(), Offered::default());
    }
}
