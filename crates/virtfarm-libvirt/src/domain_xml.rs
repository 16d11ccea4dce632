//! Domain XML written from a typed description, with quick-xml so every user string is escaped.
//!
//! What every guest gets: virtio disks and NICs, the guest-agent channel, a serial console
//! logged to a file, a virtio RNG, ACPI (so a graceful shutdown works), and our metadata under
//! `<metadata>` in the [`METADATA_NS`] namespace, where the inventory reads it.

use std::io::Cursor;

use quick_xml::events::{BytesText, Event};
use quick_xml::name::ResolveResult;
use quick_xml::reader::NsReader;
use quick_xml::Writer;

use crate::connection::Hypervisor;
use crate::error::{Doing, Error, Result};
use crate::vm::Vm;

/// The namespace of our `<metadata>` element.
pub const METADATA_NS: &str = "urn:virtfarm:metadata:1";
/// The prefix libvirt stores our metadata element with.
pub const METADATA_PREFIX: &str = "vf";

/// A guest as kvm_provision defines it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DomainSpec {
    /// Domain name.
    pub name: String,
    /// UUID to keep (an existing domain's), or `None` to let libvirt choose.
    pub uuid: Option<String>,
    /// `kvm` or `qemu`.
    pub domain_type: String,
    /// Guest architecture, e.g. `x86_64`.
    pub arch: String,
    /// Machine type, e.g. `q35`; libvirt's default when `None`.
    pub machine: Option<String>,
    /// Emulator binary; libvirt's default when `None`.
    pub emulator: Option<String>,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// Virtual CPUs.
    pub vcpus: u32,
    /// CPU model name; `host-passthrough` on KVM and libvirt's default on TCG when `None`.
    pub cpu_model: Option<String>,
    /// The firmware the guest boots.
    pub firmware: Firmware,
    /// An emulated TPM 2.0, if any.
    pub tpm: Option<Tpm>,
    /// Direct kernel boot, when the image has no boot loader.
    pub kernel: Option<DirectKernel>,
    /// Disks and CD-ROMs, in bus order.
    pub disks: Vec<DiskDevice>,
    /// Network interfaces.
    pub nics: Vec<NicDevice>,
    /// virtio-fs shares.
    pub filesystems: Vec<Share>,
    /// File the serial console is logged to, on the hypervisor.
    pub console_log: Option<String>,
    /// What we store under `<metadata>`.
    pub metadata: InstanceMetadata,
}

/// The firmware a guest boots.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Firmware {
    /// The hypervisor's BIOS (SeaBIOS on x86).
    #[default]
    Bios,
    /// UEFI, chosen by libvirt from the host's firmware descriptors, with an NVRAM file of the
    /// guest's own made from the firmware's template.
    Efi {
        /// Pick a firmware with Secure Boot and enrolled keys.
        secure_boot: bool,
    },
    /// An explicit read-only pflash loader; libvirt makes the NVRAM as for `Efi`.
    Loader(String),
}

/// Why a firmware name, a loader and Secure Boot do not make one [`Firmware`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FirmwareError {
    /// A name that is neither `bios`, `efi` nor a path.
    #[error("must be bios or efi (a loader path is given as the loader), not {0:?}")]
    Unknown(String),
    /// A loader path that cannot be one.
    #[error(transparent)]
    Path(crate::validate::Invalid),
    /// A pflash loader with `bios`.
    #[error("a pflash loader is UEFI firmware, not bios")]
    LoaderWithBios,
    /// Secure Boot without UEFI chosen by libvirt.
    #[error("needs efi firmware (libvirt then picks one with Secure Boot)")]
    SecureBootWithoutEfi,
}

impl Firmware {
    /// The firmware `name`d (`bios`, `efi`, or the loader path it once held, which makes the
    /// bool true), with an explicit pflash `loader` and Secure Boot.
    pub fn choose(
        name: Option<&str>,
        loader: Option<&str>,
        secure_boot: bool,
    ) -> Result<(Firmware, bool), FirmwareError> {
        let path = |path| crate::validate::host_path(path).map(str::to_string).map_err(FirmwareError::Path);
        let (firmware, old_form) = match (name, loader) {
            (None | Some("bios"), None) => (Firmware::Bios, false),
            (Some("efi"), None) => (Firmware::Efi { secure_boot }, false),
            (None | Some("efi"), Some(loader)) => (Firmware::Loader(path(loader)?), false),
            (Some(loader), None) if loader.starts_with('/') => (Firmware::Loader(path(loader)?), true),
            (Some("bios"), Some(_)) => return Err(FirmwareError::LoaderWithBios),
            (Some(other), _) => return Err(FirmwareError::Unknown(other.to_string())),
        };
        if secure_boot && !matches!(firmware, Firmware::Efi { .. }) {
            return Err(FirmwareError::SecureBootWithoutEfi);
        }
        Ok((firmware, old_form))
    }
}

/// An emulated TPM 2.0 backed by swtpm; libvirt keeps its state per domain UUID, across
/// redefinitions, until the domain is undefined.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Tpm {
    /// The frontend model (`tpm-crb`); libvirt's default for the machine when `None`.
    pub model: Option<String>,
}

/// Kernel, initrd and command line for direct kernel boot.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DirectKernel {
    /// Kernel image path on the hypervisor.
    pub kernel: String,
    /// Initrd path on the hypervisor.
    pub initrd: Option<String>,
    /// Kernel command line.
    pub cmdline: Option<String>,
}

/// A file-backed disk or CD-ROM.
#[derive(Clone, Debug, PartialEq)]
pub struct DiskDevice {
    /// Image path on the hypervisor.
    pub path: String,
    /// `qcow2`, `raw`, ...
    pub format: String,
    /// Guest device name: `vda`, `sda`, ...
    pub target: String,
    /// A read-only CD-ROM (on virtio-scsi) rather than a virtio disk.
    pub cdrom: bool,
}

/// Where a NIC is plugged.
#[derive(Clone, Debug, PartialEq)]
pub enum NicSource {
    /// A libvirt network, by name.
    Network(String),
    /// A host bridge, by name.
    Bridge(String),
    /// User-mode networking (no host setup, no inbound traffic).
    User,
}

/// A virtio network interface.
#[derive(Clone, Debug, PartialEq)]
pub struct NicDevice {
    /// Where it is plugged.
    pub source: NicSource,
    /// MAC address, lower case.
    pub mac: String,
}

/// A host directory shared with the guest through virtio-fs.
#[derive(Clone, Debug, PartialEq)]
pub struct Share {
    /// Directory on the hypervisor.
    pub source: String,
    /// Mount tag the guest mounts it by.
    pub tag: String,
}

/// Our metadata: what the inventory groups by, and what this module needs on later runs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InstanceMetadata {
    /// Fingerprint of the whole definition: equal means nothing to change.
    pub spec_hash: Option<String>,
    /// ansible_farm's platform_name.
    pub platform: Option<String>,
    /// ansible_farm's target_name.
    pub target: Option<String>,
    /// The user Ansible logs in as.
    pub user: Option<String>,
    /// The project or deployment the guest belongs to.
    pub project: Option<String>,
    /// Inventory groups.
    pub groups: Vec<String>,
    /// Volumes this module created for the guest (paths): the only ones `remove_storage` deletes.
    pub volumes: Vec<String>,
    /// Free key/values.
    pub vars: Vec<(String, String)>,
}

pub(crate) type XmlWriter = Writer<Cursor<Vec<u8>>>;

fn xml_error(doing: &str) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| Error::Xml { doing: doing.to_string(), message: e.to_string() }
}

impl DomainSpec {
    /// The domain XML.
    pub fn to_xml(&self) -> Result<String> {
        let mut writer = Writer::new_with_indent(Cursor::new(Vec::new()), b' ', 2);
        writer
            .create_element("domain")
            .with_attribute(("type", self.domain_type.as_str()))
            .write_inner_content(|w| self.write_body(w))
            .map_err(xml_error("writing the domain XML"))?;
        String::from_utf8(writer.into_inner().into_inner())
            .map_err(|e| Error::Xml { doing: "writing the domain XML".to_string(), message: e.to_string() })
    }

    fn write_body(&self, w: &mut XmlWriter) -> std::io::Result<()> {
        text_element(w, "name", &self.name)?;
        if let Some(uuid) = &self.uuid {
            text_element(w, "uuid", uuid)?;
        }
        w.create_element("metadata").write_inner_content(|w| self.metadata.write(w))?;
        w.create_element("memory")
            .with_attribute(("unit", "MiB"))
            .write_text_content(text(&self.memory_mib.to_string()))?;
        text_element(w, "vcpu", &self.vcpus.to_string())?;
        self.write_os(w)?;
        w.create_element("features").write_inner_content(|w| {
            w.create_element("acpi").write_empty()?;
            w.create_element("apic").write_empty()?;
            if self.firmware == (Firmware::Efi { secure_boot: true }) {
                // Secure Boot firmware keeps its variables safe from the guest in SMM.
                w.create_element("smm").with_attribute(("state", "on")).write_empty()?;
            }
            if self.domain_type == "qemu" {
                // Halves qemu's memory under TCG (the default cache is 1 GiB).
                w.create_element("tcg").write_inner_content(|w| {
                    w.create_element("tb-cache").with_attribute(("unit", "MiB")).write_text_content(text("128"))?;
                    Ok(())
                })?;
            }
            Ok(())
        })?;
        self.write_cpu(w)?;
        if !self.filesystems.is_empty() {
            // virtio-fs needs guest memory the daemon can share.
            w.create_element("memoryBacking").write_inner_content(|w| {
                w.create_element("source").with_attribute(("type", "memfd")).write_empty()?;
                w.create_element("access").with_attribute(("mode", "shared")).write_empty()?;
                Ok(())
            })?;
        }
        w.create_element("clock").with_attribute(("offset", "utc")).write_empty()?;
        w.create_element("on_poweroff").write_text_content(text("destroy"))?;
        w.create_element("on_reboot").write_text_content(text("restart"))?;
        w.create_element("on_crash").write_text_content(text("destroy"))?;
        w.create_element("devices").write_inner_content(|w| self.write_devices(w))?;
        Ok(())
    }

    fn write_os(&self, w: &mut XmlWriter) -> std::io::Result<()> {
        let mut os = w.create_element("os");
        if matches!(self.firmware, Firmware::Efi { .. }) {
            os = os.with_attribute(("firmware", "efi"));
        }
        os.write_inner_content(|w| {
            let mut os_type = w.create_element("type").with_attribute(("arch", self.arch.as_str()));
            if let Some(machine) = &self.machine {
                os_type = os_type.with_attribute(("machine", machine.as_str()));
            }
            os_type.write_text_content(text("hvm"))?;
            match &self.firmware {
                Firmware::Bios => {}
                Firmware::Efi { secure_boot } => {
                    // Said either way: left open, libvirt would pick the host's first descriptor,
                    // on Debian a Secure Boot one that refuses unsigned boot loaders.
                    let enabled = if *secure_boot { "yes" } else { "no" };
                    w.create_element("firmware").write_inner_content(|w| {
                        for name in ["secure-boot", "enrolled-keys"] {
                            w.create_element("feature")
                                .with_attribute(("enabled", enabled))
                                .with_attribute(("name", name))
                                .write_empty()?;
                        }
                        Ok(())
                    })?;
                }
                Firmware::Loader(loader) => {
                    w.create_element("loader")
                        .with_attribute(("readonly", "yes"))
                        .with_attribute(("type", "pflash"))
                        .write_text_content(text(loader))?;
                }
            }
            if let Some(kernel) = &self.kernel {
                text_element(w, "kernel", &kernel.kernel)?;
                optional_text_element(w, "initrd", kernel.initrd.as_deref())?;
                optional_text_element(w, "cmdline", kernel.cmdline.as_deref())?;
            }
            w.create_element("boot").with_attribute(("dev", "hd")).write_empty()?;
            Ok(())
        })?;
        Ok(())
    }

    fn write_cpu(&self, w: &mut XmlWriter) -> std::io::Result<()> {
        match (&self.cpu_model, self.domain_type.as_str()) {
            (Some(model), _) => {
                w.create_element("cpu")
                    .with_attribute(("mode", "custom"))
                    .with_attribute(("match", "exact"))
                    .write_inner_content(|w| text_element(w, "model", model))?;
            }
            (None, "kvm") => {
                w.create_element("cpu").with_attribute(("mode", "host-passthrough")).write_empty()?;
            }
            (None, _) => {}
        }
        Ok(())
    }

    fn write_devices(&self, w: &mut XmlWriter) -> std::io::Result<()> {
        optional_text_element(w, "emulator", self.emulator.as_deref())?;
        for disk in &self.disks {
            write_disk(w, disk)?;
        }
        if self.disks.iter().any(|d| d.cdrom) {
            // virtio-scsi rather than SATA: cloud kernels (Debian's among them) have no AHCI driver.
            w.create_element("controller")
                .with_attribute(("type", "scsi"))
                .with_attribute(("model", "virtio-scsi"))
                .write_empty()?;
        }
        for fs in &self.filesystems {
            w.create_element("filesystem")
                .with_attribute(("type", "mount"))
                .with_attribute(("accessmode", "passthrough"))
                .write_inner_content(|w| {
                    w.create_element("driver").with_attribute(("type", "virtiofs")).write_empty()?;
                    w.create_element("source").with_attribute(("dir", fs.source.as_str())).write_empty()?;
                    w.create_element("target").with_attribute(("dir", fs.tag.as_str())).write_empty()?;
                    Ok(())
                })?;
        }
        for nic in &self.nics {
            write_nic(w, nic)?;
        }
        w.create_element("serial").with_attribute(("type", "pty")).write_inner_content(|w| {
            if let Some(log) = &self.console_log {
                w.create_element("log")
                    .with_attribute(("file", log.as_str()))
                    .with_attribute(("append", "on"))
                    .write_empty()?;
            }
            w.create_element("target").with_attribute(("port", "0")).write_empty()?;
            Ok(())
        })?;
        w.create_element("console").with_attribute(("type", "pty")).write_inner_content(|w| {
            w.create_element("target")
                .with_attribute(("type", "serial"))
                .with_attribute(("port", "0"))
                .write_empty()?;
            Ok(())
        })?;
        w.create_element("channel").with_attribute(("type", "unix")).write_inner_content(|w| {
            w.create_element("target")
                .with_attribute(("type", "virtio"))
                .with_attribute(("name", "org.qemu.guest_agent.0"))
                .write_empty()?;
            Ok(())
        })?;
        w.create_element("rng").with_attribute(("model", "virtio")).write_inner_content(|w| {
            w.create_element("backend").with_attribute(("model", "random")).write_text_content(text("/dev/urandom"))?;
            Ok(())
        })?;
        if let Some(tpm) = &self.tpm {
            let mut element = w.create_element("tpm");
            if let Some(model) = &tpm.model {
                element = element.with_attribute(("model", model.as_str()));
            }
            element.write_inner_content(|w| {
                // Said: libvirt 9.0 defaults to TPM 1.2 for tpm-tis.
                w.create_element("backend")
                    .with_attribute(("type", "emulator"))
                    .with_attribute(("version", "2.0"))
                    .write_empty()?;
                Ok(())
            })?;
        }
        Ok(())
    }
}

fn write_disk(w: &mut XmlWriter, disk: &DiskDevice) -> std::io::Result<()> {
    let device = if disk.cdrom { "cdrom" } else { "disk" };
    w.create_element("disk").with_attribute(("type", "file")).with_attribute(("device", device)).write_inner_content(
        |w| {
            w.create_element("driver")
                .with_attribute(("name", "qemu"))
                .with_attribute(("type", disk.format.as_str()))
                .write_empty()?;
            w.create_element("source").with_attribute(("file", disk.path.as_str())).write_empty()?;
            let bus = if disk.cdrom { "scsi" } else { "virtio" };
            w.create_element("target")
                .with_attribute(("dev", disk.target.as_str()))
                .with_attribute(("bus", bus))
                .write_empty()?;
            if disk.cdrom {
                w.create_element("readonly").write_empty()?;
            }
            Ok(())
        },
    )?;
    Ok(())
}

fn write_nic(w: &mut XmlWriter, nic: &NicDevice) -> std::io::Result<()> {
    let (kind, source) = match &nic.source {
        NicSource::Network(name) => ("network", Some(("network", name.as_str()))),
        NicSource::Bridge(name) => ("bridge", Some(("bridge", name.as_str()))),
        NicSource::User => ("user", None),
    };
    w.create_element("interface").with_attribute(("type", kind)).write_inner_content(|w| {
        w.create_element("mac").with_attribute(("address", nic.mac.as_str())).write_empty()?;
        if let Some(attribute) = source {
            w.create_element("source").with_attribute(attribute).write_empty()?;
        }
        w.create_element("model").with_attribute(("type", "virtio")).write_empty()?;
        Ok(())
    })?;
    Ok(())
}

fn text(value: &str) -> BytesText<'_> {
    BytesText::new(value)
}

pub(crate) fn text_element(w: &mut XmlWriter, name: &str, value: &str) -> std::io::Result<()> {
    w.create_element(name).write_text_content(text(value))?;
    Ok(())
}

pub(crate) fn optional_text_element(w: &mut XmlWriter, name: &str, value: Option<&str>) -> std::io::Result<()> {
    match value {
        Some(value) => text_element(w, name, value),
        None => Ok(()),
    }
}

impl InstanceMetadata {
    /// Sets `key` as callers name it: `platform`, `target`, `project` and `ansible_user` to the
    /// last of `values`, `groups` to all of them, any other key as a var. Refuses a key that
    /// cannot be an attribute value, or that names a secret (the XML is readable by anyone who
    /// may list domains).
    pub fn set(&mut self, key: &str, mut values: Vec<String>) -> std::result::Result<(), crate::validate::Invalid> {
        crate::validate::metadata_key(key)?;
        let single = values.pop();
        match key {
            "platform" => self.platform = single,
            "target" => self.target = single,
            "project" => self.project = single,
            "ansible_user" => self.user = single,
            "groups" => self.groups = values.into_iter().chain(single).collect(),
            _ => self.vars.push((key.to_string(), single.unwrap_or_default())),
        }
        Ok(())
    }

    fn write(&self, w: &mut XmlWriter) -> std::io::Result<()> {
        let ns = format!("xmlns:{METADATA_PREFIX}");
        w.create_element(qualified("instance")).with_attribute((ns.as_str(), METADATA_NS)).write_inner_content(
            |w| {
                let singles = [
                    ("spec", &self.spec_hash),
                    ("platform", &self.platform),
                    ("target", &self.target),
                    ("user", &self.user),
                    ("project", &self.project),
                ];
                for (name, value) in singles {
                    optional_text_element(w, &qualified(name), value.as_deref())?;
                }
                for group in &self.groups {
                    text_element(w, &qualified("group"), group)?;
                }
                for volume in &self.volumes {
                    text_element(w, &qualified("volume"), volume)?;
                }
                for (key, value) in &self.vars {
                    w.create_element(qualified("var"))
                        .with_attribute(("name", key.as_str()))
                        .write_text_content(text(value))?;
                }
                Ok(())
            },
        )?;
        Ok(())
    }

    /// Our metadata inside a domain XML document; empty when the domain has none. Read by
    /// [`crate::domain_facts::DomainFacts::parse`]: namespaces are beyond its serde model.
    pub(crate) fn from_domain_xml(xml: &str) -> Result<Self> {
        // Most domains of a large hypervisor were not made by us: skip the parse.
        if !xml.contains(METADATA_NS) {
            return Ok(InstanceMetadata::default());
        }
        let mut reader = NsReader::from_str(xml);
        let mut metadata = InstanceMetadata::default();
        let mut current: Option<(String, Option<String>)> = None;
        let bad = |e: quick_xml::Error| Error::Xml {
            doing: "reading our domain metadata".to_string(),
            message: e.to_string(),
        };
        loop {
            let (namespace, event) = reader.read_resolved_event().map_err(bad)?;
            let ours = matches!(namespace, ResolveResult::Bound(ns) if ns.as_ref() == METADATA_NS.as_bytes());
            match event {
                Event::Start(start) if ours => {
                    let name = String::from_utf8_lossy(start.local_name().as_ref()).into_owned();
                    let key = start
                        .try_get_attribute("name")
                        .ok()
                        .flatten()
                        .and_then(|a| a.unescape_value().ok().map(|v| v.into_owned()));
                    current = Some((name, key));
                }
                Event::Text(value) => {
                    if let Some((name, key)) = current.take() {
                        let value = value.unescape().map_err(bad)?.into_owned();
                        metadata.absorb(&name, key, value);
                    }
                }
                Event::End(_) => current = None,
                Event::Eof => return Ok(metadata),
                _ => {}
            }
        }
    }

    fn absorb(&mut self, name: &str, key: Option<String>, value: String) {
        // A secret written into our namespace by hand (`virsh metadata`) is never passed on.
        if name == "var" && key.as_deref().is_some_and(is_secret_key) {
            return;
        }
        match name {
            "spec" => self.spec_hash = Some(value),
            "platform" => self.platform = Some(value),
            "target" => self.target = Some(value),
            "user" => self.user = Some(value),
            "project" => self.project = Some(value),
            "group" => self.groups.push(value),
            "volume" => self.volumes.push(value),
            "var" => self.vars.push((key.unwrap_or_default(), value)),
            _ => {}
        }
    }
}

/// True when a metadata key names a secret (a password, passphrase, token, ...): such values
/// are never stored in a domain definition, which libvirt's read-only clients can read.
pub fn is_secret_key(key: &str) -> bool {
    const SECRET_WORDS: &[&str] =
        &["pass", "passwd", "password", "passphrase", "secret", "token", "credential", "credentials", "apikey"];
    let words: Vec<String> = key.split(['_', '-', '.']).map(str::to_ascii_lowercase).collect();
    words.iter().any(|w| SECRET_WORDS.contains(&w.as_str()))
        || words.windows(2).any(|pair| matches!((pair[0].as_str(), pair[1].as_str()), ("private" | "api", "key")))
            && words.last().is_some_and(|last| last != "file")
}

fn qualified(name: &str) -> String {
    format!("{METADATA_PREFIX}:{name}")
}

/// True when the element's own prefix (or default namespace) is bound to [`METADATA_NS`].
fn declares_our_namespace(element: &quick_xml::events::BytesStart<'_>) -> bool {
    let prefix = element.name().prefix().map(|p| p.as_ref().to_vec());
    element.attributes().flatten().any(|a| {
        let key = a.key.as_ref();
        let binds_own_prefix = match &prefix {
            Some(prefix) => key.strip_prefix(b"xmlns:") == Some(prefix.as_slice()),
            None => key == b"xmlns",
        };
        binds_own_prefix && a.value.as_ref() == METADATA_NS.as_bytes()
    })
}

/// Sets the name and UUID of a domain XML the user wrote, and puts our metadata in it;
/// everything else is kept as given.
pub fn reconcile_identity(xml: &str, name: &str, uuid: Option<&str>, metadata: &InstanceMetadata) -> Result<String> {
    let bad = |message: String| Error::Xml { doing: "reading the given domain XML".to_string(), message };
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut writer = Writer::new(Cursor::new(Vec::new()));
    let mut depth = 0usize;
    let mut skip_until_depth: Option<usize> = None;
    let mut saw_metadata = false;
    let mut in_metadata = false;
    let mut saw_domain = false;
    loop {
        let event = reader.read_event().map_err(|e| bad(e.to_string()))?;
        let io = xml_error("rewriting the given domain XML");
        match &event {
            Event::Eof => break,
            Event::Start(start) => {
                depth += 1;
                if skip_until_depth.is_some() {
                    continue;
                }
                if depth == 1 {
                    saw_domain = start.name().as_ref() == b"domain";
                }
                let local = start.name().as_ref().to_vec();
                if depth == 2 && (local == b"name" || local == b"uuid") {
                    // Replaced below, at the top of <domain>.
                    skip_until_depth = Some(depth);
                    continue;
                }
                if depth == 3 && in_metadata && declares_our_namespace(start) {
                    // Our metadata of an earlier definition (a dumped XML given back): replaced.
                    skip_until_depth = Some(depth);
                    continue;
                }
                writer.write_event(event.clone()).map_err(io)?;
                if depth == 1 {
                    text_element(&mut writer, "name", name).map_err(xml_error("rewriting the given domain XML"))?;
                    if let Some(uuid) = uuid {
                        text_element(&mut writer, "uuid", uuid).map_err(xml_error("rewriting the given domain XML"))?;
                    }
                }
                if depth == 2 && local == b"metadata" {
                    saw_metadata = true;
                    in_metadata = true;
                    metadata.write(&mut writer).map_err(xml_error("rewriting the given domain XML"))?;
                }
            }
            Event::End(end) => {
                if skip_until_depth == Some(depth) {
                    skip_until_depth = None;
                    depth -= 1;
                    continue;
                }
                depth = depth.saturating_sub(1);
                if skip_until_depth.is_some() {
                    continue;
                }
                in_metadata &= depth != 1;
                if depth == 0 && end.name().as_ref() == b"domain" && !saw_metadata {
                    writer
                        .create_element("metadata")
                        .write_inner_content(|w| metadata.write(w))
                        .map_err(xml_error("rewriting the given domain XML"))?;
                }
                writer.write_event(event.clone()).map_err(io)?;
            }
            Event::Empty(empty) if depth == 1 && matches!(empty.name().as_ref(), b"name" | b"uuid") => {}
            Event::Empty(empty) if depth == 2 && in_metadata && declares_our_namespace(empty) => {}
            _ if skip_until_depth.is_some() => {}
            _ => writer.write_event(event.clone()).map_err(io)?,
        }
    }
    if !saw_domain {
        return Err(bad("the root element must be <domain>".to_string()));
    }
    if depth != 0 {
        return Err(bad("unclosed elements".to_string()));
    }
    String::from_utf8(writer.into_inner().into_inner()).map_err(|e| bad(e.to_string()))
}

impl Hypervisor {
    /// Removes the definition of `vm`, with its snapshot metadata, managed save, NVRAM (and the
    /// snapshots' copies of it) and TPM state; its disks stay. A running domain becomes transient
    /// and goes when it stops.
    pub fn undefine_vm(&self, vm: &Vm) -> Result<()> {
        let nvram = crate::snapshot::Nvram::of(self, vm)?;
        let flags = virt::sys::VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
            | virt::sys::VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
            | virt::sys::VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA
            | virt::sys::VIR_DOMAIN_UNDEFINE_NVRAM
            // Said, though removal is libvirt's default: a TPM with persistent_state='yes' (a
            // definition given as xml) is removed too.
            | virt::sys::VIR_DOMAIN_UNDEFINE_TPM;
        vm.raw().undefine_flags(flags).doing(|| format!("undefining domain {}", vm.name()))?;
        nvram.map_or(Ok(()), |nvram| nvram.forget_all())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::Invalid;

    #[test]
    fn metadata_keys_as_callers_name_them() {
        let mut metadata = InstanceMetadata::default();
        let one = |value: &str| vec![value.to_string()];
        metadata.set("platform", one("debian")).unwrap();
        metadata.set("ansible_user", one("tester")).unwrap();
        metadata.set("groups", vec!["web".into(), "eu".into()]).unwrap();
        metadata.set("rack", one("r7")).unwrap();
        assert_eq!((metadata.platform.as_deref(), metadata.user.as_deref()), (Some("debian"), Some("tester")));
        assert_eq!(
            (metadata.groups, metadata.vars),
            (vec!["web".to_string(), "eu".into()], vec![("rack".into(), "r7".into())])
        );
        let mut refused = InstanceMetadata::default();
        assert_eq!(refused.set("db_password", one("x")), Err(Invalid::SecretMetadataKey("db_password".into())));
        assert_eq!(refused.set("a-b", one("x")), Err(Invalid::MetadataKey("a-b".into())));
        assert_eq!(refused, InstanceMetadata::default());
    }

    #[test]
    fn firmware_is_bios_efi_or_a_loader() {
        let code = "/usr/share/OVMF/OVMF_CODE_4M.fd";
        assert_eq!(Firmware::choose(None, None, false), Ok((Firmware::Bios, false)));
        assert_eq!(Firmware::choose(Some("efi"), None, true), Ok((Firmware::Efi { secure_boot: true }, false)));
        assert_eq!(Firmware::choose(None, Some(code), false), Ok((Firmware::Loader(code.into()), false)));
        assert_eq!(Firmware::choose(Some(code), None, false), Ok((Firmware::Loader(code.into()), true)));
        assert_eq!(Firmware::choose(Some("bios"), Some(code), false), Err(FirmwareError::LoaderWithBios));
        assert_eq!(Firmware::choose(Some("uefi"), None, false), Err(FirmwareError::Unknown("uefi".into())));
        assert_eq!(Firmware::choose(None, Some(code), true), Err(FirmwareError::SecureBootWithoutEfi));
        assert!(matches!(Firmware::choose(None, Some("OVMF.fd"), false), Err(FirmwareError::Path(_))));
    }

    #[test]
    fn secret_keys_are_told_from_ordinary_ones() {
        for key in [
            "ansible_password",
            "ansible_ssh_pass",
            "ansible_become_pass",
            "db-Password",
            "api_token",
            "vault_secret",
            "ssh_private_key",
            "smtp_passphrase",
        ] {
            assert!(is_secret_key(key), "{key}");
        }
        for key in ["ansible_user", "ansible_port", "ansible_ssh_private_key_file", "bypass_proxy", "passenger", "role"]
        {
            assert!(!is_secret_key(key), "{key}");
        }
    }

    #[test]
    fn a_secret_written_into_our_namespace_by_hand_is_not_read() {
        let xml = format!(
            "<domain><name>a</name><metadata><vf:instance xmlns:vf='{METADATA_NS}'><vf:var name='ansible_password'>s3cret</vf:var><vf:var name='role'>web</vf:var></vf:instance></metadata></domain>"
        );
        let metadata = InstanceMetadata::from_domain_xml(&xml).unwrap();
        assert_eq!(metadata.vars, vec![("role".to_string(), "web".to_string())]);
    }

    fn spec() -> DomainSpec {
        DomainSpec {
            name: "web<1>".to_string(),
            domain_type: "qemu".to_string(),
            arch: "x86_64".to_string(),
            memory_mib: 384,
            vcpus: 1,
            kernel: Some(DirectKernel {
                kernel: "/k".to_string(),
                initrd: Some("/i".to_string()),
                cmdline: Some("root=/dev/vda console=ttyS0 a=\"b&c\"".to_string()),
            }),
            disks: vec![DiskDevice {
                path: "/p/web1.qcow2".into(),
                format: "qcow2".into(),
                target: "vda".into(),
                cdrom: false,
            }],
            nics: vec![NicDevice { source: NicSource::Network("vfnet".into()), mac: "52:54:00:01:02:03".into() }],
            console_log: Some("/var/log/web1.log".into()),
            metadata: InstanceMetadata {
                spec_hash: Some("abc".into()),
                platform: Some("debian & co".into()),
                groups: vec!["web".into(), "db".into()],
                volumes: vec!["/p/web1.qcow2".into()],
                vars: vec![("ansible_user".into(), "ansible".into())],
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn user_strings_are_escaped_and_the_xml_reads_back() {
        let xml = spec().to_xml().unwrap();
        assert!(xml.contains("<name>web&lt;1&gt;</name>"), "{xml}");
        assert!(xml.contains("b&amp;c"), "{xml}");
        let facts = crate::domain_facts::DomainFacts::parse(&xml).unwrap();
        assert_eq!(facts.name, "web<1>");
        assert_eq!((facts.memory_mib, facts.vcpus), (384, 1));
        assert_eq!(facts.nics[0].network.as_deref(), Some("vfnet"));
        assert!(xml.contains("org.qemu.guest_agent.0") && xml.contains("<tb-cache unit=\"MiB\">128</tb-cache>"));
    }

    #[test]
    fn efi_firmware_is_chosen_by_libvirt_with_secure_boot_said_either_way() {
        let mut efi = spec();
        efi.firmware = Firmware::Efi { secure_boot: false };
        let xml = efi.to_xml().unwrap();
        assert!(xml.contains("<os firmware=\"efi\">"), "{xml}");
        assert!(xml.contains("<feature enabled=\"no\" name=\"secure-boot\"/>"), "{xml}");
        assert!(!xml.contains("<smm") && !xml.contains("<loader"), "{xml}");
        efi.firmware = Firmware::Efi { secure_boot: true };
        let xml = efi.to_xml().unwrap();
        assert!(
            xml.contains("<feature enabled=\"yes\" name=\"enrolled-keys\"/>") && xml.contains("<smm state=\"on\"/>")
        );
        efi.tpm = Some(Tpm { model: Some("tpm-crb".into()) });
        let xml = efi.to_xml().unwrap();
        assert!(xml.contains("<tpm model=\"tpm-crb\">\n      <backend type=\"emulator\" version=\"2.0\"/>"), "{xml}");
        efi.tpm = Some(Tpm::default());
        assert!(efi.to_xml().unwrap().contains("<tpm>"));
        efi.tpm = None;
        efi.firmware = Firmware::Loader("/fw/<code>.fd".into());
        let xml = efi.to_xml().unwrap();
        assert!(xml.contains("<os>") && xml.contains("type=\"pflash\">/fw/&lt;code&gt;.fd</loader>"), "{xml}");
    }

    #[test]
    fn metadata_round_trips() {
        let spec = spec();
        let read = InstanceMetadata::from_domain_xml(&spec.to_xml().unwrap()).unwrap();
        assert_eq!(read, spec.metadata);
    }

    #[test]
    fn metadata_is_found_under_another_prefix() {
        let xml = r#"<domain><name>x</name><metadata><other:instance xmlns:other="urn:virtfarm:metadata:1"><other:spec>h1</other:spec></other:instance><x:spec xmlns:x="urn:else">no</x:spec></metadata></domain>"#;
        assert_eq!(InstanceMetadata::from_domain_xml(xml).unwrap().spec_hash.as_deref(), Some("h1"));
    }

    #[test]
    fn given_xml_keeps_everything_but_identity() {
        let given = r#"<domain type="kvm"><name>old</name><uuid>u-old</uuid><memory unit="MiB">512</memory><devices><emulator>/e</emulator></devices></domain>"#;
        let metadata = InstanceMetadata { spec_hash: Some("h".into()), ..Default::default() };
        let out = reconcile_identity(given, "new&", Some("u-new"), &metadata).unwrap();
        let facts = crate::domain_facts::DomainFacts::parse(&out).unwrap();
        assert_eq!((facts.name.as_str(), facts.uuid.as_str(), facts.memory_mib), ("new&", "u-new", 512));
        assert_eq!(InstanceMetadata::from_domain_xml(&out).unwrap().spec_hash.as_deref(), Some("h"));
        assert!(!out.contains("old"));
        assert!(reconcile_identity("<vm/>", "x", None, &metadata).is_err());
        assert!(reconcile_identity("<domain><name>x</name>", "x", None, &metadata).is_err());
    }

    #[test]
    fn given_xml_with_our_old_metadata_gets_the_new_one_only() {
        // A definition dumped from a VM we made, given back: found by fuzzing (groups doubled).
        let old = InstanceMetadata { spec_hash: Some("old".into()), groups: vec!["web".into()], ..Default::default() };
        let dumped =
            reconcile_identity("<domain><metadata><other xmlns='urn:x'/></metadata></domain>", "a", None, &old)
                .unwrap();
        let new = InstanceMetadata { spec_hash: Some("new".into()), groups: vec!["db".into()], ..Default::default() };
        let out = reconcile_identity(&dumped, "a", None, &new).unwrap();
        assert_eq!(InstanceMetadata::from_domain_xml(&out).unwrap(), new, "{out}");
        assert!(out.contains("<other xmlns='urn:x'/>"), "{out}");
        let empty = "<domain><metadata><vf:instance xmlns:vf='urn:virtfarm:metadata:1'/></metadata></domain>";
        assert_eq!(
            InstanceMetadata::from_domain_xml(&reconcile_identity(empty, "a", None, &new).unwrap()).unwrap(),
            new
        );
    }
}
