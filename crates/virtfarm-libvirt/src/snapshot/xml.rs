//! Snapshot XML: reading what libvirt stores, writing what we ask for.
//!
//! Reading is tolerant (unknown elements are skipped); writing goes through quick-xml's
//! serialiser only, so names and paths are always escaped.

use serde::{Deserialize, Serialize};

use crate::domain_facts::DomainFacts;
use crate::error::{Error, Result};

/// Internal (inside the qcow2 images) or external (overlay files).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapshotType {
    /// Stored inside the domain's qcow2 images (and, for a running domain, its RAM too).
    Internal,
    /// Stored as the backing files of new overlays; disk-only.
    External,
}

impl SnapshotType {
    /// `internal` or `external`, as in results.
    pub fn as_str(self) -> &'static str {
        match self {
            SnapshotType::Internal => "internal",
            SnapshotType::External => "external",
        }
    }
}

/// One disk as a snapshot records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotDisk {
    /// Target device, e.g. `vda`.
    pub target: String,
    /// `internal`, `external` or `no`.
    pub snapshot: String,
    /// For an external snapshot: the overlay that took the writes after the snapshot.
    pub overlay: Option<String>,
    /// The file the domain used when the snapshot was taken: it holds the snapshot's data
    /// (external) or carries it inside (internal), so it must stay while the snapshot exists.
    pub frozen: Option<String>,
}

/// One snapshot of a domain, as listed by the module.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// The snapshot's name.
    pub name: String,
    /// Internal or external.
    pub kind: SnapshotType,
    /// Seconds since the epoch.
    pub creation_time: i64,
    /// The domain state recorded: `running`, `shutoff`, `disk-snapshot`, ...
    pub state: String,
    /// The parent snapshot, if any.
    pub parent: Option<String>,
    /// True for the domain's current snapshot (set by [`SnapshotInfo::parse`]'s caller).
    pub current: bool,
    /// True when the snapshot holds the guest's RAM.
    pub memory: bool,
    /// The disks, in the order of the XML.
    pub disks: Vec<SnapshotDisk>,
}

#[derive(Deserialize)]
struct RawSnapshot {
    name: String,
    #[serde(default)]
    state: String,
    #[serde(rename = "creationTime", default)]
    creation_time: i64,
    #[serde(default)]
    parent: Option<RawParent>,
    #[serde(default)]
    memory: Option<RawMemory>,
    #[serde(default)]
    disks: RawDisks,
    #[serde(default)]
    domain: Option<DomainFacts>,
}

#[derive(Deserialize)]
struct RawParent {
    name: String,
}

#[derive(Deserialize)]
struct RawMemory {
    #[serde(rename = "@snapshot", default)]
    snapshot: String,
}

#[derive(Default, Deserialize)]
struct RawDisks {
    #[serde(rename = "disk", default)]
    disks: Vec<RawSnapDisk>,
}

#[derive(Deserialize)]
struct RawSnapDisk {
    #[serde(rename = "@name")]
    name: String,
    #[serde(rename = "@snapshot", default)]
    snapshot: String,
    #[serde(default)]
    source: Option<RawSource>,
}

#[derive(Deserialize)]
struct RawSource {
    #[serde(rename = "@file", default)]
    file: Option<String>,
}

impl SnapshotInfo {
    /// Parses a `<domainsnapshot>` document.
    pub fn parse(xml: &str) -> Result<Self> {
        let raw: RawSnapshot = quick_xml::de::from_str(xml)
            .map_err(|e| Error::Xml { doing: "reading a snapshot definition".to_string(), message: e.to_string() })?;
        let domain_disks = raw.domain.map(|d| d.disks).unwrap_or_default();
        let frozen_file = |target: &str| domain_disks.iter().find(|d| d.target == target).and_then(|d| d.file.clone());
        let disks: Vec<SnapshotDisk> = raw
            .disks
            .disks
            .into_iter()
            .map(|d| SnapshotDisk {
                frozen: frozen_file(&d.name),
                overlay: d.source.and_then(|s| s.file),
                snapshot: d.snapshot,
                target: d.name,
            })
            .collect();
        let memory = raw.memory.map(|m| m.snapshot).unwrap_or_default();
        let external = memory == "external" || disks.iter().any(|d| d.snapshot == "external");
        Ok(SnapshotInfo {
            name: raw.name,
            kind: if external { SnapshotType::External } else { SnapshotType::Internal },
            creation_time: raw.creation_time,
            state: raw.state,
            parent: raw.parent.map(|p| p.name),
            current: false,
            memory: memory == "internal" || memory == "external",
            disks,
        })
    }

    /// The external disks of this snapshot: (target, frozen file, overlay file).
    pub fn external_disks(&self) -> impl Iterator<Item = (&str, &str, Option<&str>)> {
        self.disks
            .iter()
            .filter(|d| d.snapshot == "external")
            .filter_map(|d| Some((d.target.as_str(), d.frozen.as_deref()?, d.overlay.as_deref())))
    }
}

/// What to ask libvirt for when creating a snapshot.
#[derive(Serialize)]
#[serde(rename = "domainsnapshot")]
struct CreateRequest<'a> {
    name: &'a str,
    description: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    memory: Option<CreateMemory>,
    #[serde(skip_serializing_if = "Option::is_none")]
    disks: Option<CreateDisks<'a>>,
}

#[derive(Serialize)]
struct CreateMemory {
    #[serde(rename = "@snapshot")]
    snapshot: &'static str,
}

#[derive(Serialize)]
struct CreateDisks<'a> {
    disk: Vec<CreateDisk<'a>>,
}

#[derive(Serialize)]
struct CreateDisk<'a> {
    #[serde(rename = "@name")]
    name: &'a str,
    #[serde(rename = "@snapshot")]
    snapshot: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    driver: Option<CreateDriver>,
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<CreateSource<'a>>,
}

#[derive(Serialize)]
struct CreateDriver {
    #[serde(rename = "@type")]
    format: &'static str,
}

#[derive(Serialize)]
struct CreateSource<'a> {
    #[serde(rename = "@file")]
    file: &'a str,
}

/// A disk of an external snapshot request: its target and the overlay to create, or
/// `None` to leave the disk out (CD-ROMs, read-only disks).
pub(crate) type ExternalDisk<'a> = (&'a str, Option<&'a str>);

const DESCRIPTION: &str = "taken by virtfarm.libvirt.snapshot_libvirt";

/// XML for an internal snapshot; without `memory` libvirt is told to leave RAM out (and
/// says itself whether it can, with its reason).
pub(crate) fn internal_request(name: &str, memory: bool) -> Result<String> {
    let memory = (!memory).then_some(CreateMemory { snapshot: "no" });
    serialise(&CreateRequest { name, description: DESCRIPTION, memory, disks: None })
}

/// XML for an external disk-only snapshot with the overlay files named explicitly.
pub(crate) fn external_request(name: &str, disks: &[ExternalDisk<'_>]) -> Result<String> {
    let disk = disks
        .iter()
        .map(|(target, overlay)| CreateDisk {
            name: target,
            snapshot: if overlay.is_some() { "external" } else { "no" },
            driver: overlay.map(|_| CreateDriver { format: "qcow2" }),
            source: overlay.map(|file| CreateSource { file }),
        })
        .collect();
    let memory = Some(CreateMemory { snapshot: "no" });
    serialise(&CreateRequest { name, description: DESCRIPTION, memory, disks: Some(CreateDisks { disk }) })
}

pub(crate) fn serialise(value: &impl Serialize) -> Result<String> {
    quick_xml::se::to_string(value)
        .map_err(|e| Error::Xml { doing: "writing XML for libvirt".to_string(), message: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXTERNAL: &str = r#"<domainsnapshot>
  <name>s2</name>
  <state>disk-snapshot</state>
  <parent><name>s1</name></parent>
  <creationTime>1700000123</creationTime>
  <memory snapshot='no'/>
  <disks>
    <disk name='vda' snapshot='external' type='file'>
      <driver type='qcow2'/>
      <source file='/pool/web1-vda.s2.qcow2'/>
    </disk>
    <disk name='sda' snapshot='no'/>
  </disks>
  <domain type='qemu'>
    <name>web1</name>
    <devices>
      <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='/pool/web1-vda.s1.qcow2'/><target dev='vda' bus='virtio'/></disk>
      <disk type='file' device='cdrom'><source file='/pool/seed.iso'/><target dev='sda' bus='sata'/></disk>
    </devices>
  </domain>
</domainsnapshot>"#;

    const INTERNAL: &str = r#"<domainsnapshot><name>clean</name><state>running</state><creationTime>1700000000</creationTime>
  <memory snapshot='internal'/><disks><disk name='vda' snapshot='internal'/></disks>
  <domain type='qemu'><name>web1</name><devices/></domain></domainsnapshot>"#;

    #[test]
    fn reads_an_external_snapshot_with_its_frozen_and_overlay_files() {
        let info = SnapshotInfo::parse(EXTERNAL).unwrap();
        assert_eq!(info.name, "s2");
        assert_eq!(info.kind, SnapshotType::External);
        assert_eq!(info.parent.as_deref(), Some("s1"));
        assert_eq!(info.creation_time, 1_700_000_123);
        assert!(!info.memory);
        let external: Vec<_> = info.external_disks().collect();
        assert_eq!(external, vec![("vda", "/pool/web1-vda.s1.qcow2", Some("/pool/web1-vda.s2.qcow2"))]);
    }

    #[test]
    fn reads_an_internal_snapshot_with_memory() {
        let info = SnapshotInfo::parse(INTERNAL).unwrap();
        assert_eq!((info.kind, info.memory, info.state.as_str()), (SnapshotType::Internal, true, "running"));
        assert_eq!(info.external_disks().count(), 0);
        assert!(SnapshotInfo::parse("<domainsnapshot>").is_err());
    }

    #[test]
    fn requests_escape_what_they_carry() {
        let xml = external_request("a<b&'c", &[("vda", Some("/p/x&y.qcow2")), ("sda", None)]).unwrap();
        assert!(xml.contains("<name>a&lt;b&amp;'c</name>"), "{xml}");
        assert!(
            xml.contains(
                r#"<disk name="vda" snapshot="external"><driver type="qcow2"/><source file="/p/x&amp;y.qcow2"/></disk>"#
            ),
            "{xml}"
        );
        assert!(xml.contains(r#"<disk name="sda" snapshot="no"/>"#), "{xml}");
        assert!(internal_request("clean", true).unwrap().starts_with("<domainsnapshot><name>clean</name>"));
    }
}
