//! What one read of a domain's XML tells: identity, size, NICs, disks, the guest agent's
//! channel and our metadata. The one reader of domain XML, also for the domain a snapshot
//! document embeds; writing is [`crate::domain_xml`]'s.
//!
//! Read-only and tolerant: elements we do not use are skipped, so any libvirt's XML parses.

use serde::{Deserialize, Deserializer};

use crate::domain_xml::InstanceMetadata;
use crate::error::{Error, Result};

/// The parts of a domain definition that modules and the inventory act on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DomainFacts {
    /// The domain's name.
    pub name: String,
    /// The domain's UUID.
    pub uuid: String,
    /// `kvm` or `qemu`.
    pub domain_type: String,
    /// vCPUs.
    pub vcpus: u32,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// Network interfaces, in the order of the XML.
    pub nics: Vec<Nic>,
    /// Disks and CD-ROMs, in the order of the XML.
    pub disks: Vec<Disk>,
    /// UEFI firmware from pflash (a loader, or `firmware=efi`): internal snapshots are refused there.
    pub has_pflash: bool,
    /// The NVRAM file of pflash firmware, when the XML names it (libvirt 9.0 names the one it
    /// makes for `firmware=efi` only in a running domain's XML).
    pub nvram: Option<String>,
    /// True when the guest agent's channel is connected (only a running domain's XML says so):
    /// asking a domain whose agent is absent could block for the agent timeout.
    pub agent_connected: bool,
    /// Our metadata (namespace `urn:virtfarm:metadata:1`); empty when there is none, and for a
    /// domain read inside another document (only [`DomainFacts::parse`] reads it).
    pub metadata: InstanceMetadata,
}

/// A network interface.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Nic {
    /// MAC address, lower case.
    pub mac: String,
    /// `network`, `bridge`, `user`, ...
    pub kind: String,
    /// The libvirt network it is attached to, if any.
    pub network: Option<String>,
    /// The host bridge it is attached to, if any.
    pub bridge: Option<String>,
}

/// A disk or CD-ROM.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Disk {
    /// `disk` or `cdrom`.
    pub device: String,
    /// Target device name, e.g. `vda`.
    pub target: String,
    /// Image format from the driver element, e.g. `qcow2` or `raw`.
    pub format: Option<String>,
    /// Path of the image file, for file-backed disks.
    pub file: Option<String>,
}

#[derive(Deserialize)]
struct RawDomain {
    #[serde(rename = "@type", default)]
    kind: String,
    name: String,
    #[serde(default)]
    uuid: String,
    #[serde(default)]
    memory: Option<Sized64>,
    #[serde(default)]
    vcpu: Option<Sized64>,
    #[serde(default)]
    os: Option<RawOs>,
    #[serde(default)]
    devices: RawDevices,
}

#[derive(Deserialize)]
struct Sized64 {
    #[serde(rename = "@unit", default)]
    unit: Option<String>,
    #[serde(rename = "$text")]
    value: u64,
}

#[derive(Deserialize)]
struct RawOs {
    #[serde(rename = "@firmware", default)]
    firmware: Option<String>,
    #[serde(default)]
    loader: Option<RawLoader>,
    #[serde(default)]
    nvram: Option<RawNvram>,
}

#[derive(Deserialize)]
struct RawNvram {
    #[serde(rename = "$text", default)]
    path: Option<String>,
}

#[derive(Deserialize)]
struct RawLoader {
    #[serde(rename = "@type", default)]
    kind: Option<String>,
}

#[derive(Default, Deserialize)]
struct RawDevices {
    #[serde(rename = "interface", default)]
    interfaces: Vec<RawInterface>,
    #[serde(rename = "disk", default)]
    disks: Vec<RawDisk>,
    #[serde(rename = "channel", default)]
    channels: Vec<RawChannel>,
}

#[derive(Deserialize)]
struct RawChannel {
    #[serde(default)]
    target: Option<RawChannelTarget>,
}

#[derive(Deserialize)]
struct RawChannelTarget {
    #[serde(rename = "@name", default)]
    name: Option<String>,
    #[serde(rename = "@state", default)]
    state: Option<String>,
}

#[derive(Deserialize)]
struct RawInterface {
    #[serde(rename = "@type", default)]
    kind: String,
    #[serde(default)]
    mac: Option<RawMac>,
    #[serde(default)]
    source: Option<RawIfaceSource>,
}

#[derive(Deserialize)]
struct RawMac {
    #[serde(rename = "@address")]
    address: String,
}

#[derive(Deserialize)]
struct RawIfaceSource {
    #[serde(rename = "@network", default)]
    network: Option<String>,
    #[serde(rename = "@bridge", default)]
    bridge: Option<String>,
}

#[derive(Deserialize)]
struct RawDisk {
    #[serde(rename = "@device", default)]
    device: String,
    #[serde(default)]
    driver: Option<RawDriver>,
    #[serde(default)]
    source: Option<RawDiskSource>,
    #[serde(default)]
    target: Option<RawTarget>,
}

#[derive(Deserialize)]
struct RawDriver {
    #[serde(rename = "@type", default)]
    format: Option<String>,
}

#[derive(Deserialize)]
struct RawDiskSource {
    #[serde(rename = "@file", default)]
    file: Option<String>,
}

#[derive(Deserialize)]
struct RawTarget {
    #[serde(rename = "@dev", default)]
    dev: String,
}

impl DomainFacts {
    /// Parses a domain XML document, our metadata included.
    pub fn parse(xml: &str) -> Result<Self> {
        let facts: DomainFacts = quick_xml::de::from_str(xml)
            .map_err(|e| Error::Xml { doing: "reading a domain definition".to_string(), message: e.to_string() })?;
        Ok(DomainFacts { metadata: InstanceMetadata::from_domain_xml(xml)?, ..facts })
    }
}

impl<'de> Deserialize<'de> for DomainFacts {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        RawDomain::deserialize(deserializer).map(DomainFacts::from)
    }
}

impl From<RawDomain> for DomainFacts {
    fn from(raw: RawDomain) -> Self {
        let memory_mib = raw.memory.map(|m| to_mib(m.value, m.unit.as_deref())).unwrap_or(0);
        DomainFacts {
            uuid: raw.uuid,
            domain_type: raw.kind,
            vcpus: raw.vcpu.map(|v| v.value as u32).unwrap_or(0),
            memory_mib,
            // libvirt 9.0 chooses `firmware='efi'`'s loader (pflash on x86) only when the domain starts.
            has_pflash: raw.os.as_ref().is_some_and(|os| {
                os.firmware.as_deref() == Some("efi")
                    || os.loader.as_ref().is_some_and(|l| l.kind.as_deref() == Some("pflash"))
            }),
            nvram: raw.os.and_then(|os| os.nvram).and_then(|n| n.path).filter(|p| !p.is_empty()),
            nics: raw
                .devices
                .interfaces
                .into_iter()
                .map(|i| Nic {
                    mac: i.mac.map(|m| m.address.to_ascii_lowercase()).unwrap_or_default(),
                    kind: i.kind,
                    network: i.source.as_ref().and_then(|s| s.network.clone()),
                    bridge: i.source.and_then(|s| s.bridge),
                })
                .collect(),
            disks: raw
                .devices
                .disks
                .into_iter()
                .map(|d| Disk {
                    device: d.device,
                    target: d.target.map(|t| t.dev).unwrap_or_default(),
                    format: d.driver.and_then(|d| d.format),
                    file: d.source.and_then(|s| s.file),
                })
                .collect(),
            agent_connected: raw.devices.channels.iter().filter_map(|c| c.target.as_ref()).any(|t| {
                t.name.as_deref() == Some("org.qemu.guest_agent.0") && t.state.as_deref() == Some("connected")
            }),
            metadata: InstanceMetadata::default(),
            name: raw.name,
        }
    }
}

/// libvirt's memory units, as MiB.
fn to_mib(value: u64, unit: Option<&str>) -> u64 {
    match unit.unwrap_or("KiB") {
        "b" | "bytes" => value / (1024 * 1024),
        "KB" => value * 1000 / (1024 * 1024),
        "k" | "KiB" => value / 1024,
        "MB" => value * 1000 * 1000 / (1024 * 1024),
        "G" | "GiB" => value * 1024,
        "GB" => value * 1000 * 1000 * 1000 / (1024 * 1024),
        _ => value,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIVE_XML: &str = r#"<domain type='qemu' id='3'>
  <name>web1</name>
  <uuid>6a1c5f0e-2c6d-4bb1-9f59-7a4e0f3c8d21</uuid>
  <metadata>
    <vf:instance xmlns:vf="urn:virtfarm:metadata:1"><vf:platform>debian</vf:platform></vf:instance>
  </metadata>
  <memory unit='KiB'>393216</memory>
  <vcpu placement='static'>2</vcpu>
  <os><type arch='x86_64' machine='pc-q35-7.2'>hvm</type><kernel>/k</kernel></os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/pool/web1.qcow2' index='2'/>
      <backingStore type='file' index='3'><format type='qcow2'/><source file='/base.qcow2'/></backingStore>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='cdrom'><driver name='qemu' type='raw'/><source file='/pool/web1-seed.iso'/><target dev='sda' bus='sata'/><readonly/></disk>
    <interface type='network'>
      <mac address='52:54:00:AB:cd:01'/>
      <source network='vfnet' portid='x' bridge='vfbr0'/>
      <model type='virtio'/>
    </interface>
    <interface type='bridge'><mac address='52:54:00:00:00:02'/><source bridge='br0'/></interface>
    <channel type='unix'>
      <source mode='bind' path='/run/libvirt/qemu/channel/3-web1/org.qemu.guest_agent.0'/>
      <target type='virtio' name='org.qemu.guest_agent.0' state='connected'/>
      <alias name='channel0'/>
      <address type='virtio-serial' controller='0' bus='0' port='1'/>
    </channel>
  </devices>
</domain>"#;

    #[test]
    fn parses_what_modules_and_the_inventory_need() {
        let facts = DomainFacts::parse(LIVE_XML).expect("valid XML");
        assert_eq!(facts.name, "web1");
        assert_eq!(facts.domain_type, "qemu");
        assert_eq!((facts.vcpus, facts.memory_mib), (2, 384));
        assert_eq!(facts.nics.len(), 2);
        assert_eq!(facts.nics[0].mac, "52:54:00:ab:cd:01");
        assert_eq!(facts.nics[0].network.as_deref(), Some("vfnet"));
        assert_eq!(facts.nics[1].bridge.as_deref(), Some("br0"));
        assert_eq!(facts.disks[0].file.as_deref(), Some("/pool/web1.qcow2"));
        assert_eq!(facts.disks[1].device, "cdrom");
        assert_eq!(facts.metadata.platform.as_deref(), Some("debian"));
        assert!(facts.agent_connected);
        let agent_away = LIVE_XML.replace("state='connected'", "state='disconnected'");
        assert!(!DomainFacts::parse(&agent_away).expect("valid XML").agent_connected);
        assert!(!DomainFacts::parse("<domain><name>a</name><devices/></domain>").expect("valid XML").agent_connected);
        assert!(!facts.has_pflash);
        assert_eq!(facts.nvram, None);
        let efi = LIVE_XML.replace("<os>", "<os firmware='efi'>");
        assert!(DomainFacts::parse(&efi).expect("valid XML").has_pflash);
        let started = LIVE_XML.replace(
            "<os>",
            "<os><loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE_4M.fd</loader>\
             <nvram template='/usr/share/OVMF/OVMF_VARS_4M.fd'>/var/lib/libvirt/qemu/nvram/vm_VARS.fd</nvram>",
        );
        let facts = DomainFacts::parse(&started).expect("valid XML");
        assert!(facts.has_pflash);
        assert_eq!(facts.nvram.as_deref(), Some("/var/lib/libvirt/qemu/nvram/vm_VARS.fd"));
    }

    /// `virsh dumpxml` of a domain libvirt 9.0 defined (off: no NVRAM path, no channel state).
    const DEFINED_XML: &str = include_str!("../testdata/domain-efi-tpm.xml");

    #[test]
    fn parses_a_definition_as_libvirt_returns_it() {
        let facts = DomainFacts::parse(DEFINED_XML).expect("valid XML");
        assert_eq!((facts.name.as_str(), facts.domain_type.as_str()), ("wtxml-sample", "qemu"));
        assert_eq!(facts.uuid, "1d6b9af9-bd3f-4580-92f4-f875b6ab1e01");
        assert_eq!((facts.vcpus, facts.memory_mib), (2, 384));
        assert!(facts.has_pflash && facts.nvram.is_none() && !facts.agent_connected);
        let disks: Vec<_> = facts.disks.iter().map(|d| (d.device.as_str(), d.target.as_str())).collect();
        assert_eq!(disks, [("disk", "vda"), ("cdrom", "sda")]);
        assert_eq!(facts.disks[0].file.as_deref(), Some("/var/lib/libvirt/images/wtxml-sample.qcow2"));
        assert_eq!(facts.disks[0].format.as_deref(), Some("qcow2"));
        assert_eq!(facts.nics.len(), 1);
        assert_eq!((facts.nics[0].kind.as_str(), facts.nics[0].network.as_deref()), ("network", Some("default")));
        assert_eq!(facts.metadata.groups, ["web"]);
        assert_eq!(facts.metadata.vars, [("role".to_string(), "front".to_string())]);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(DomainFacts::parse("<domain><name>x</name").is_err());
        assert!(DomainFacts::parse("").is_err());
    }
}
