//! From the module's parameters to VM definitions: the native form, ansible_farm's `vm`
//! form, a full `xml`, and pool naming (`stem` + `vms: ["3", "18:bookworm"]`).
//!
//! Top-level VM keys are defaults for every item of `vms`; an item overrides them key by key.

use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::{bail, Result};
use serde_json::{json, Map, Value};
use virtfarm_libvirt::cloud_init::CloudInit;
use virtfarm_libvirt::domain_xml::{DirectKernel, DiskDevice, DomainSpec, InstanceMetadata, NicDevice, NicSource, Share};
use virtfarm_libvirt::leases::check_mac;
use virtfarm_libvirt::naming::{derived_mac, pool_node};
use virtfarm_libvirt::network::{NewNetwork, Reservation, Subnet};
use virtfarm_libvirt::storage::CloneMode;
use virtfarm_libvirt::wait::Signal;

use crate::fields::Fields;

/// The keys that describe one VM (as opposed to what to do with it).
const VM_KEYS: &[&str] = &[
    "name", "uri", "memory", "vcpus", "image", "image_pool", "pool", "disk_size", "clone", "disks", "networks",
    "cloud_init", "filesystems", "arch", "machine", "emulator", "domain_type", "cpu", "firmware", "kernel",
    "metadata", "xml", "vm",
];

/// What the module was asked to do.
pub struct Request {
    /// `present`, `running`, `stopped` or `absent`.
    pub state: State,
    /// What "ready" means after starting, if anything.
    pub wait: Option<Signal>,
    /// The bound on the wait for all VMs.
    pub wait_timeout: Duration,
    /// How long a guest may take to shut down before it is forced off.
    pub stop_timeout: Duration,
    /// With `absent`: delete the volumes this module created.
    pub remove_storage: bool,
    /// The VMs.
    pub vms: Vec<VmDefinition>,
}

/// The state a VM should end in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Defined; running or not as it was.
    Present,
    /// Defined and running.
    Running,
    /// Defined and shut off.
    Stopped,
    /// Not defined.
    Absent,
}

/// One VM, ready for the hypervisor.
pub struct VmDefinition {
    /// Domain name.
    pub name: String,
    /// libvirt URI of its hypervisor.
    pub uri: String,
    /// The domain, generated or given.
    pub domain: DomainSource,
    /// `kvm`/`qemu` as asked; the host's preference when `None`.
    pub domain_type: Option<String>,
    /// The system disk cloned from a base image, if any.
    pub root_disk: Option<RootDisk>,
    /// The pool clones and seeds go to.
    pub pool: String,
    /// First-boot configuration (a NoCloud seed), if any.
    pub cloud_init: Option<CloudInit>,
    /// Networks to ensure and reservations to make, per NIC on a libvirt network.
    pub networks: Vec<NetworkWant>,
}

/// Where the domain XML comes from.
pub enum DomainSource {
    /// Written by us from a spec; disk paths of clone and seed are added when known.
    Generated(Box<DomainSpec>),
    /// Given by the user: kept, only identity and our metadata reconciled.
    Given {
        /// The XML as given.
        xml: String,
        /// Our metadata to put in it.
        metadata: Box<InstanceMetadata>,
    },
}

/// The guest's system disk, cloned from a base image.
pub struct RootDisk {
    /// Base volume name or path.
    pub image: String,
    /// The pool to look the base volume up in; every pool when `None`.
    pub image_pool: Option<String>,
    /// Requested size in bytes (grown, never shrunk).
    pub size: Option<u64>,
    /// Linked clone or full copy.
    pub mode: CloneMode,
}

/// A libvirt network a NIC is plugged into.
pub struct NetworkWant {
    /// The network's name.
    pub name: String,
    /// How to create it when it does not exist.
    pub create: Option<NewNetwork>,
    /// A fixed address for the NIC.
    pub reservation: Option<Reservation>,
}

impl Request {
    /// Reads and checks every parameter; the first problem is returned naming its parameter.
    pub fn parse(args: Value) -> Result<Request> {
        let mut top = Fields::new("", args)?;
        let state = match top.choice("state", &["present", "running", "stopped", "absent"])?.as_deref() {
            Some("present") => State::Present,
            Some("stopped") => State::Stopped,
            Some("absent") => State::Absent,
            _ => State::Running,
        };
        let wait = match top.choice("wait", &["none", "lease", "agent", "ssh"])?.as_deref() {
            None | Some("none") => None,
            Some(signal) => Signal::parse(signal),
        };
        let wait_timeout = Duration::from_secs(top.integer("wait_timeout")?.unwrap_or(300));
        let stop_timeout = Duration::from_secs(top.integer("stop_timeout")?.unwrap_or(60));
        let remove_storage = top.boolean("remove_storage")?.unwrap_or(false);
        let stem = top.string("stem")?;
        let images = top.object("images")?.map(Fields::into_map).unwrap_or_default();
        let items = top.list("vms")?;
        let has_vms = top.has("vms") || !items.is_empty();
        let mut defaults = Map::new();
        for key in VM_KEYS {
            if let Some(value) = top.take(key) {
                defaults.insert((*key).to_string(), value);
            }
        }
        top.finish()?;
        let items: Vec<(String, Value)> = if has_vms {
            items.into_iter().enumerate().map(|(i, item)| (format!("vms[{i}]"), item)).collect()
        } else if !defaults.is_empty() {
            vec![(String::new(), Value::Object(Map::new()))]
        } else {
            bail!("name: required (or vm, xml, or a list in vms)")
        };
        if has_vms && items.is_empty() {
            bail!("vms: the list is empty");
        }
        let mut vms = Vec::with_capacity(items.len());
        for (path, item) in items {
            let item = pool_item(&path, item, stem.as_deref(), &images)?;
            let mut merged = defaults.clone();
            merged.extend(item);
            vms.push(parse_vm(&path, Value::Object(merged), state)?);
        }
        let mut names: Vec<&str> = vms.iter().map(|v| v.name.as_str()).collect();
        names.sort_unstable();
        if let Some(pair) = names.windows(2).find(|w| w[0] == w[1]) {
            bail!("vms: the name {} is given twice", pair[0]);
        }
        Ok(Request { state, wait, wait_timeout, stop_timeout, remove_storage, vms })
    }
}

/// An item of `vms`: a dictionary, or a pool spec string (`"3"`, `"18:bookworm"`) with `stem`.
fn pool_item(path: &str, item: Value, stem: Option<&str>, images: &Map<String, Value>) -> Result<Map<String, Value>> {
    let spec = match item {
        Value::Object(map) => return Ok(map),
        Value::String(s) => s,
        Value::Number(n) => n.to_string(),
        _ => bail!("{path}: expected a dictionary or a node spec such as \"3\" or \"18:bookworm\""),
    };
    let Some(stem) = stem else { bail!("{path}: a node spec such as '{spec}' needs the parameter stem") };
    let Some((name, alias)) = pool_node(stem, &spec) else {
        bail!("{path}: '{spec}' is not a node spec for stem '{stem}' (examples: 3, {stem}4, 18:bookworm)")
    };
    let mut map = Map::new();
    map.insert("name".into(), json!(name));
    if let Some(alias) = alias {
        let image = match images.get(&alias) {
            Some(Value::String(image)) => image.clone(),
            Some(_) => bail!("images.{alias}: expected a volume name or path"),
            None => alias,
        };
        map.insert("image".into(), json!(image));
    }
    Ok(map)
}

/// Checks a domain name: it also names the guest's volumes.
fn check_name(field: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !name.starts_with('.');
    if !ok {
        bail!("{field}: '{name}' is not a usable VM name (letters, digits, '-', '_', '.'; at most 64)");
    }
    Ok(())
}

fn parse_vm(path: &str, item: Value, state: State) -> Result<VmDefinition> {
    let mut fields = Fields::new(path, item)?;
    if let Some(legacy) = fields.object("vm")? {
        // ansible_farm's form underneath, native keys on top.
        let mut native = legacy_to_native(legacy)?;
        native.extend(fields.into_map());
        fields = Fields::new(path, Value::Object(native))?;
    }
    let name = fields.required_string("name")?;
    check_name(&fields.name("name"), &name)?;
    let uri = fields.string("uri")?.unwrap_or_else(|| "qemu:///system".to_string());
    let pool = fields.string("pool")?.unwrap_or_else(|| "default".to_string());
    let domain_type = fields.choice("domain_type", &["kvm", "qemu"])?;
    let metadata = parse_metadata(&mut fields)?;
    if let Some(xml) = fields.string("xml")? {
        for conflicting in ["image", "cloud_init", "networks", "disks", "kernel", "memory", "vcpus"] {
            if fields.has(conflicting) {
                bail!("{}: cannot be combined with {}", fields.name("xml"), fields.name(conflicting));
            }
        }
        // The rest only describe a generated domain.
        let _ = fields.into_map();
        let domain = DomainSource::Given { xml, metadata: Box::new(metadata) };
        return Ok(VmDefinition { name, uri, domain, domain_type, root_disk: None, pool, cloud_init: None, networks: vec![] });
    }
    let memory_mib = fields.size("memory", 1 << 20)?.map(|bytes| bytes >> 20);
    if memory_mib == Some(0) {
        bail!("{}: at least 1 MiB", fields.name("memory"));
    }
    let vcpus = match fields.integer("vcpus")? {
        Some(0) => bail!("{}: at least 1", fields.name("vcpus")),
        Some(n) => u32::try_from(n).map_err(|_| anyhow::anyhow!("{}: too many", fields.name("vcpus")))?,
        None => 1,
    };
    let root_disk = parse_root_disk(&mut fields)?;
    if root_disk.is_none() && !fields.has("disks") && !fields.has("xml") && state != State::Absent {
        bail!("{}: required (a base volume name or path), unless disks or xml are given", fields.name("image"));
    }
    let disks = parse_disks(&mut fields)?;
    let (nics, networks) = parse_networks(&mut fields, &name)?;
    let cloud_init = fields.object("cloud_init")?.map(|c| parse_cloud_init(c, &name)).transpose()?;
    let filesystems = parse_filesystems(&mut fields)?;
    let kernel = fields.object("kernel")?.map(parse_kernel).transpose()?;
    let spec = DomainSpec {
        name: name.clone(),
        uuid: None,
        domain_type: String::new(),
        arch: fields.string("arch")?.unwrap_or_else(|| "x86_64".to_string()),
        machine: Some(fields.string("machine")?.unwrap_or_else(|| "q35".to_string())),
        emulator: fields.string("emulator")?,
        memory_mib: memory_mib.unwrap_or(1024),
        vcpus,
        cpu_model: fields.string("cpu")?.filter(|c| !c.is_empty()),
        firmware: fields.string("firmware")?,
        kernel,
        disks,
        nics,
        filesystems,
        console_log: Some(format!("/var/log/libvirt/qemu/{name}-console.log")),
        metadata,
    };
    fields.finish()?;
    let domain = DomainSource::Generated(Box::new(spec));
    Ok(VmDefinition { name, uri, domain, domain_type, root_disk, pool, cloud_init, networks })
}

fn parse_metadata(fields: &mut Fields) -> Result<InstanceMetadata> {
    let mut metadata = InstanceMetadata::default();
    let Some(mut given) = fields.object("metadata")? else { return Ok(metadata) };
    metadata.platform = given.string("platform")?;
    metadata.target = given.string("target")?;
    metadata.project = given.string("project")?;
    metadata.user = given.string("ansible_user")?;
    metadata.groups = given.strings("groups")?;
    let name = given.name("");
    for (key, value) in given.into_map() {
        let value = match value {
            Value::String(s) => s,
            Value::Null => continue,
            Value::Number(_) | Value::Bool(_) => value.to_string(),
            _ => bail!("{name}{key}: expected a string"),
        };
        metadata.vars.push((key, value));
    }
    Ok(metadata)
}

fn parse_root_disk(fields: &mut Fields) -> Result<Option<RootDisk>> {
    let Some(image) = fields.string("image")? else {
        for orphan in ["disk_size", "clone", "image_pool"] {
            if fields.has(orphan) {
                bail!("{}: needs image", fields.name(orphan));
            }
        }
        return Ok(None);
    };
    let mode = match fields.choice("clone", &["linked", "full"])?.as_deref() {
        Some("full") => CloneMode::Full,
        _ => CloneMode::Linked,
    };
    Ok(Some(RootDisk { image, image_pool: fields.string("image_pool")?, size: fields.size("disk_size", 1 << 30)?, mode }))
}

/// Disks attached as they are (ansible_farm's `vm.disks`, or `disks` in the native form).
fn parse_disks(fields: &mut Fields) -> Result<Vec<DiskDevice>> {
    let name = fields.name("disks");
    let mut disks = Vec::new();
    for (i, item) in fields.list("disks")?.into_iter().enumerate() {
        let mut disk = Fields::new(&format!("{name}[{i}]"), item)?;
        let path = disk.required_string("path")?;
        if !path.starts_with('/') {
            bail!("{}: '{path}' is not an absolute path", disk.name("path"));
        }
        let format = disk.string("format")?.unwrap_or_else(|| "qcow2".to_string());
        let target = disk.required_string("target")?;
        disk.finish()?;
        disks.push(DiskDevice { path, format, target, cdrom: false });
    }
    Ok(disks)
}

fn parse_networks(fields: &mut Fields, vm_name: &str) -> Result<(Vec<NicDevice>, Vec<NetworkWant>)> {
    let list_name = fields.name("networks");
    let mut nics = Vec::new();
    let mut wants = Vec::new();
    for (i, item) in fields.list("networks")?.into_iter().enumerate() {
        let item = match item {
            Value::String(network) => json!({ "network": network }),
            other => other,
        };
        let mut nic = Fields::new(&format!("{list_name}[{i}]"), item)?;
        let mac = match nic.string("mac")? {
            Some(mac) => {
                check_mac(&mac).map_err(|e| anyhow::anyhow!("{}: {e}", nic.name("mac")))?;
                mac.to_ascii_lowercase()
            }
            None => derived_mac(vm_name, i),
        };
        let kind = nic.choice("type", &["network", "bridge", "user"])?;
        let source = match (kind.as_deref(), nic.string("network")?, nic.string("bridge")?) {
            (Some("user"), None, None) => NicSource::User,
            (None | Some("network"), Some(network), None) => NicSource::Network(network),
            (None | Some("bridge"), None, Some(bridge)) => NicSource::Bridge(bridge),
            _ => bail!("{}: give exactly one of network, bridge, or type: user", nic.name("")),
        };
        let ip = nic
            .string("ip")?
            .map(|ip| ip.parse::<Ipv4Addr>().map_err(|_| anyhow::anyhow!("{}: '{ip}' is not an IPv4 address", nic.name("ip"))))
            .transpose()?;
        let hostname = nic.string("hostname")?;
        let subnet = nic
            .string("subnet")?
            .map(|s| Subnet::parse(&s).ok_or_else(|| anyhow::anyhow!("{}: '{s}' is not a subnet such as 10.88.0.0/24", nic.name("subnet"))))
            .transpose()?;
        let bridge_name = nic.string("bridge_name")?;
        if let NicSource::Network(network) = &source {
            let create = subnet.map(|subnet| NewNetwork { name: network.clone(), subnet, bridge: bridge_name });
            let reservation = ip.map(|ip| Reservation { mac: mac.clone(), ip, hostname: hostname.or(Some(vm_name.to_string())) });
            wants.push(NetworkWant { name: network.clone(), create, reservation });
        } else if ip.is_some() || subnet.is_some() {
            bail!("{}: ip and subnet need a libvirt network (network: NAME)", nic.name(""));
        }
        nic.finish()?;
        nics.push(NicDevice { source, mac });
    }
    Ok((nics, wants))
}

fn parse_cloud_init(mut given: Fields, vm_name: &str) -> Result<CloudInit> {
    let hostname = given.string("hostname")?.or_else(|| Some(vm_name.to_string()));
    let network_config = given.take("network_config");
    if let Some(config) = &network_config {
        if !config.is_object() {
            bail!("{}: expected a dictionary (network config version 1 or 2)", given.name("network_config"));
        }
    }
    let init = CloudInit {
        instance_id: vm_name.to_string(),
        hostname,
        user: given.string("user")?,
        ssh_authorized_keys: given.strings("ssh_authorized_keys")?,
        password_hash: given.string("password_hash")?,
        packages: given.strings("packages")?,
        runcmd: given.strings("runcmd")?,
        network_config,
        user_data: given.string("user_data")?,
        meta_data: given.string("meta_data")?,
    };
    given.finish()?;
    Ok(init)
}

fn parse_filesystems(fields: &mut Fields) -> Result<Vec<Share>> {
    let name = fields.name("filesystems");
    let mut shares = Vec::new();
    for (i, item) in fields.list("filesystems")?.into_iter().enumerate() {
        let mut share = Fields::new(&format!("{name}[{i}]"), item)?;
        let source = share.required_string("source")?;
        let tag = share.required_string("target")?;
        share.finish()?;
        shares.push(Share { source, tag });
    }
    Ok(shares)
}

fn parse_kernel(mut kernel: Fields) -> Result<DirectKernel> {
    let direct = DirectKernel { kernel: kernel.required_string("path")?, initrd: kernel.string("initrd")?, cmdline: kernel.string("cmdline")? };
    kernel.finish()?;
    Ok(direct)
}

/// ansible_farm's `vm` (a target merged with a platform) as native keys. Keys it does not
/// describe a domain with (sources, template, passwords, ...) are left alone.
fn legacy_to_native(mut vm: Fields) -> Result<Map<String, Value>> {
    let mut native = Map::new();
    let mut meta = vm.object("metadata")?.ok_or_else(|| anyhow::anyhow!("{}: required", vm.name("metadata")))?;
    native.insert("name".into(), json!(meta.required_string("name")?));
    let pool_dir = meta.string("libvirt_pool_dir")?.unwrap_or_default();
    let mut metadata = Map::new();
    for (from, to) in [("platform_name", "platform"), ("target_name", "target"), ("hostname", "hostname"), ("connection", "ansible_connection")] {
        if let Some(value) = meta.string(from)? {
            metadata.insert(to.into(), json!(value));
        }
    }
    if let Some(mut auth) = meta.object("auth")? {
        if let Some(user) = auth.string("user")? {
            metadata.insert("ansible_user".into(), json!(user));
        }
    }
    native.insert("metadata".into(), Value::Object(metadata));
    for (from, to) in [("ram", "memory"), ("vcpus", "vcpus"), ("arch", "arch"), ("machine", "machine"), ("emulator", "emulator"), ("virt_domain", "domain_type"), ("cpu", "cpu"), ("firmware", "firmware")] {
        if let Some(value) = vm.take(from) {
            native.insert(to.into(), value);
        }
    }
    if let Some(mut kernel) = vm.object("kernel")? {
        let src = kernel.required_string("src")?;
        let mut direct = json!({ "path": format!("{pool_dir}{src}") });
        if let Some(params) = kernel.string("params")? {
            direct["cmdline"] = json!(params);
        }
        native.insert("kernel".into(), direct);
    }
    let disks_name = vm.name("disks");
    let mut disks = Vec::new();
    for (i, item) in vm.list("disks")?.into_iter().enumerate() {
        let mut disk = Fields::new(&format!("{disks_name}[{i}]"), item)?;
        let src = disk.required_string("src")?;
        disks.push(json!({
            "path": format!("{pool_dir}{src}"),
            "format": disk.string("type")?.unwrap_or_else(|| "qcow2".into()),
            "target": disk.string("devname")?.unwrap_or_else(|| format!("vd{}", char::from(b'a' + (i as u8 % 26)))),
        }));
    }
    if !disks.is_empty() {
        native.insert("disks".into(), json!(disks));
    }
    if let Some(mut net) = vm.object("net")? {
        let kind = net.string("type")?.unwrap_or_else(|| "network".into());
        let mut nic = match kind.as_str() {
            "user" => json!({ "type": "user" }),
            "bridge" => json!({ "bridge": net.required_string("source")? }),
            "network" => json!({ "network": net.required_string("source")? }),
            other => bail!("{}: '{other}' is not supported (network, bridge or user)", net.name("type")),
        };
        for key in ["mac", "ip"] {
            if let Some(value) = net.string(key)? {
                nic[key] = json!(value);
            }
        }
        native.insert("networks".into(), json!([nic]));
    }
    Ok(native)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generated(vm: &VmDefinition) -> &DomainSpec {
        match &vm.domain {
            DomainSource::Generated(spec) => spec,
            DomainSource::Given { .. } => panic!("expected a generated domain"),
        }
    }

    #[test]
    fn pool_naming_with_defaults_and_image_aliases() {
        let request = Request::parse(json!({
            "stem": "vnode", "image": "base.qcow2", "images": {"bookworm": "bookworm.qcow2"},
            "memory": "512M", "networks": ["vfnet"],
            "vms": ["3", "vnode4", "18:bookworm", {"name": "db1", "memory": 2048}],
        }))
        .unwrap();
        let names: Vec<_> = request.vms.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["vnode03", "vnode04", "vnode18", "db1"]);
        assert_eq!(request.vms[2].root_disk.as_ref().unwrap().image, "bookworm.qcow2");
        assert_eq!(request.vms[0].root_disk.as_ref().unwrap().image, "base.qcow2");
        assert_eq!(generated(&request.vms[0]).memory_mib, 512);
        assert_eq!(generated(&request.vms[3]).memory_mib, 2048);
        assert_eq!(request.state, State::Running);
        let macs: Vec<_> = request.vms.iter().map(|v| generated(v).nics[0].mac.clone()).collect();
        assert_eq!(macs[0], derived_mac("vnode03", 0));
        assert_ne!(macs[0], macs[1]);
    }

    #[test]
    fn ansible_farm_vm_definitions_are_accepted_as_they_are() {
        let request = Request::parse(json!({"state": "present", "vm": {
            "metadata": {"name": "debian12-amd64", "hostname": "deb", "connection": "ssh", "libvirt_pool_dir": "/pool/",
                         "platform_name": "debian_12", "target_name": "amd64", "template": "default.xml.j2",
                         "auth": {"user": "user", "password": "secret", "become_user": "root"},
                         "sources": [{"before_provision": []}]},
            "arch": "x86_64", "emulator": "/usr/bin/qemu-system-x86_64", "virt_domain": "qemu", "cpu": "", "machine": "q35",
            "vcpus": 2, "ram": 768, "disks": [{"type": "qcow2", "devname": "vda", "src": "debian12.qcow2"}],
            "kernel": {"src": "vmlinuz", "params": "root=/dev/vda"},
            "net": {"type": "network", "source": "vfnet", "mac": "52:54:00:12:34:56", "ip": "10.77.0.77", "mask": "255.255.255.0"}
        }}))
        .unwrap();
        let vm = &request.vms[0];
        let spec = generated(vm);
        assert_eq!(vm.name, "debian12-amd64");
        assert_eq!(vm.domain_type.as_deref(), Some("qemu"));
        assert_eq!((spec.memory_mib, spec.vcpus, spec.cpu_model.clone()), (768, 2, None));
        assert_eq!(spec.disks[0].path, "/pool/debian12.qcow2");
        assert_eq!(spec.kernel.as_ref().unwrap().kernel, "/pool/vmlinuz");
        assert_eq!(spec.nics[0].mac, "52:54:00:12:34:56");
        assert_eq!(spec.metadata.platform.as_deref(), Some("debian_12"));
        assert_eq!(spec.metadata.user.as_deref(), Some("user"));
        assert_eq!(vm.networks[0].reservation.as_ref().unwrap().ip.to_string(), "10.77.0.77");
        assert!(!format!("{:?}", spec).contains("secret"));
    }

    #[test]
    fn bad_arguments_name_their_parameter() {
        let cases = [
            (json!({"name": "a", "image": "b", "memory": "lots"}), "memory:"),
            (json!({"name": "a b", "image": "b"}), "name:"),
            (json!({"name": "a"}), "image:"),
            (json!({"name": "a", "image": "b", "state": "on"}), "state:"),
            (json!({"name": "a", "image": "b", "wait": "forever"}), "wait:"),
            (json!({"name": "a", "image": "b", "networks": [{"network": "n", "mac": "zz"}]}), "networks[0].mac:"),
            (json!({"name": "a", "image": "b", "networks": [{"network": "n", "ip": "10.1"}]}), "networks[0].ip:"),
            (json!({"name": "a", "image": "b", "networks": [{"network": "n", "bridge": "b"}]}), "networks[0]"),
            (json!({"name": "a", "image": "b", "cloud_init": {"usr": "x"}}), "cloud_init.usr"),
            (json!({"name": "a", "image": "b", "colour": "red"}), "colour"),
            (json!({"vms": ["3"]}), "stem"),
            (json!({"stem": "vnode", "vms": ["x"], "image": "b"}), "vms[0]"),
            (json!({"vms": [{"name": "a", "image": "b"}, {"name": "a", "image": "b"}]}), "vms:"),
            (json!({"name": "a", "xml": "<domain/>", "memory": 3}), "xml:"),
            (json!({"vm": {"ram": 3}}), "vm.metadata"),
            (json!({"name": "a", "disk_size": "3G", "disks": []}), "disk_size"),
        ];
        for (args, expected) in cases {
            let err = Request::parse(args.clone()).err().unwrap_or_else(|| panic!("accepted {args}")).to_string();
            assert!(err.contains(expected), "{args} gave '{err}', expected it to name {expected}");
        }
    }
}
