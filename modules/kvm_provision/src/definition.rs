//! From the module's parameters to VM definitions: the native form, ansible_farm's `vm`
//! form, a full `xml`, and pool naming (`stem` + `vms: ["3", "18:bookworm"]`).
//!
//! Top-level VM keys are defaults for every item of `vms`; an item overrides them key by key.

use std::net::Ipv4Addr;

use ansible_module::{ArgSpec, ArgumentErrors, Opt, Params, Type};
use anyhow::{anyhow, bail, Result};
use serde_json::{json, Map, Value};
use virtfarm_libvirt::cloud_init::CloudInit;
use virtfarm_libvirt::domain_facts::DomainFacts;
use virtfarm_libvirt::domain_xml::{
    is_secret_key, DirectKernel, DiskDevice, DomainSpec, Firmware, FirmwareError, InstanceMetadata, NicDevice,
    NicSource, Share, Tpm,
};
use virtfarm_libvirt::naming::{derived_mac, pool_node};
use virtfarm_libvirt::network::{NewNetwork, Reservation, Subnet};
use virtfarm_libvirt::provision::{clashes, Clash, DomainSource, NetworkWant, Request, RootDisk, State, VmDefinition};
use virtfarm_libvirt::storage::CloneMode;
use virtfarm_libvirt::validate::{self, Invalid, ZeroSeconds, WAIT_CHOICES};

use crate::ansible_farm;

/// The request, with what the module accepted without acting on it.
pub struct Parsed {
    /// What to provision.
    pub request: Request,
    /// What the module accepts without acting on it (keys of ansible_farm's `vm`).
    pub warnings: Vec<String>,
    /// What still works but goes away (a path in `firmware`).
    pub deprecations: Vec<String>,
}

/// True for the keys whose values are secrets wherever they appear inside the free-form VM
/// descriptions (`vm`, `vms`, `metadata`): ansible_farm's `auth`, cloud-init's, and every key
/// the metadata refuses as a secret, so that a refused value is not echoed either.
fn is_secret_field(key: &str) -> bool {
    is_secret_key(key) || matches!(key, "user_data" | "ansible_ssh_private_key_file")
}

/// The module's argument spec: what to do, then the VM options, which at the top level are
/// defaults for every item of `vms`. VM options have no defaults here (an unset one must
/// stay unset so that an item can tell "not given" apart); [`parse_vm`] applies them.
pub fn spec() -> ArgSpec {
    let mut options = vec![
        Opt::str("state").choices(&["present", "running", "stopped", "absent"]).default("running"),
        // `address` is for guest_provision, whose next step checks the guest itself.
        Opt::str("wait").choices(&WAIT_CHOICES[..4]).default("none"),
        Opt::int("wait_timeout").default(300),
        Opt::int("stop_timeout").default(60),
        Opt::bool("remove_storage").default(false),
        Opt::list("vms").elements(Type::Raw).secret_keys(is_secret_field),
        Opt::str("stem"),
        Opt::dict("images"),
        Opt::dict("vm").secret_keys(is_secret_field),
    ];
    options.extend(vm_options(Opt::str("name")));
    options.extend(crate::hypervisors::options());
    ArgSpec::new(options).supports_check_mode()
}

/// The spec one VM is checked against once the defaults are merged in.
fn vm_spec() -> ArgSpec {
    ArgSpec::new(vm_options(Opt::str("name").required()))
}

/// The options that describe one VM, with `name` as given.
fn vm_options(name: Opt) -> Vec<Opt> {
    vec![
        name,
        Opt::str("uri"),
        Opt::raw("memory"),
        Opt::int("vcpus"),
        Opt::str("image"),
        Opt::str("image_upload"),
        Opt::str("image_pool"),
        Opt::str("pool"),
        Opt::raw("disk_size"),
        Opt::str("clone").choices(&["linked", "full"]),
        Opt::list("disks").elements(Type::Dict).suboptions(ArgSpec::new([
            Opt::str("path").required(),
            Opt::str("format").default("qcow2"),
            Opt::str("target").required(),
        ])),
        // Strings name a network; they are turned into dictionaries before an item is checked.
        Opt::list("networks").elements(Type::Raw).suboptions(ArgSpec::new([
            Opt::str("network"),
            Opt::str("bridge"),
            Opt::str("type").choices(&["network", "bridge", "user"]),
            Opt::str("mac"),
            Opt::str("ip"),
            Opt::str("hostname"),
            Opt::str("subnet"),
            Opt::str("bridge_name"),
        ])),
        Opt::dict("cloud_init").suboptions(ArgSpec::new([
            Opt::str("hostname"),
            Opt::str("user"),
            Opt::list("ssh_authorized_keys").elements(Type::Str),
            Opt::str("password_hash").no_log(),
            Opt::list("packages").elements(Type::Str),
            Opt::list("runcmd").elements(Type::Str),
            Opt::dict("network_config"),
            Opt::str("user_data").no_log(),
            Opt::str("meta_data"),
        ])),
        Opt::list("filesystems")
            .elements(Type::Dict)
            .suboptions(ArgSpec::new([Opt::str("source").required(), Opt::str("target").required()])),
        Opt::str("arch"),
        Opt::str("machine"),
        Opt::str("emulator"),
        Opt::str("domain_type").choices(&["kvm", "qemu"]),
        Opt::str("cpu"),
        Opt::str("firmware"),
        Opt::str("loader"),
        Opt::bool("secure_boot"),
        Opt::bool("tpm"),
        Opt::dict("kernel").suboptions(ArgSpec::new([
            Opt::str("path").required(),
            Opt::str("initrd"),
            Opt::str("cmdline"),
        ])),
        Opt::dict("metadata").secret_keys(is_secret_field),
        Opt::str("xml"),
    ]
}

/// Turns the validated parameters into the request, placement included, or names every
/// problem by its parameter. `module` names the module in messages about unknown options.
pub fn request(params: &Params, module: &str) -> Result<Parsed, ArgumentErrors> {
    ArgumentErrors::collect(|errors| {
        let parsed = read(params, module, errors);
        let placement = crate::hypervisors::placement(params, parsed.as_ref().map(|p| &p.request.vms[..]), errors);
        let mut parsed = parsed?;
        parsed.request.placement = placement?;
        Some(parsed)
    })
}

/// The request, without placement; `None` once `errors` names what is wrong. Every VM is
/// read, each as far as its own problems allow, so that one run names them all.
fn read(params: &Params, module: &str, errors: &mut ArgumentErrors) -> Option<Parsed> {
    let state = errors.check(params.str("state")).map(|state| match state {
        "present" => State::Present,
        "stopped" => State::Stopped,
        "absent" => State::Absent,
        _ => State::Running,
    });
    let wait = errors.check(params.str("wait").and_then(|wait| params.checked("wait", wait, validate::wait)));
    // 0: do not wait (`wait_timeout`), or force off at once (`stop_timeout`).
    let seconds = |name| params.int_checked(name, |value| validate::timeout(value, ZeroSeconds::NoWait));
    let wait_timeout = errors.check(seconds("wait_timeout"));
    let stop_timeout = errors.check(seconds("stop_timeout"));
    let remove_storage = errors.check(params.bool("remove_storage"));
    let stem = errors.check(params.opt_str("stem"))?;
    let no_images = Map::new();
    let images = params.get("images").and_then(Value::as_object).unwrap_or(&no_images);
    let mut defaults = Map::new();
    // Defaults the spec refused: given, and reported, so no VM is told it lacks them.
    let mut refused = Vec::new();
    for option in vm_spec().option_names().chain(["vm"]) {
        match params.get(option) {
            Some(value) => {
                defaults.insert(option.to_string(), value.clone());
            }
            None if params.is_set(option) => refused.push(option.to_string()),
            None => {}
        }
    }
    let items: Vec<(String, Value)> = match errors.check(params.opt_list("vms"))? {
        Some([]) => {
            errors.push("vms: the list is empty");
            return None;
        }
        Some(items) => items.iter().enumerate().map(|(i, item)| (format!("vms[{i}]"), item.clone())).collect(),
        None if defaults.is_empty() => {
            if refused.is_empty() {
                errors.push("name: required (or vm, xml, or a list in vms)");
            }
            return None;
        }
        None => vec![(String::new(), Value::Object(Map::new()))],
    };
    let mut vms = Vec::with_capacity(items.len());
    let mut warnings = Vec::new();
    let mut deprecations = Vec::new();
    for (path, item) in items {
        let Some(item) = errors.check(pool_item(&path, item, stem, images)) else { continue };
        let inherited: Vec<&str> = refused.iter().map(String::as_str).filter(|o| !item.contains_key(*o)).collect();
        // ansible_farm's `vm` holds the name and the rest: without it there is no VM to read.
        if inherited.contains(&"vm") {
            continue;
        }
        // The item's own `uri` pins it under placement; an inherited one does not.
        let own_uri = item.get("uri").and_then(Value::as_str).map(str::to_string);
        let mut merged = defaults.clone();
        merged.extend(item);
        // What a VM lacks is not reported when it inherits a refused value.
        let state = state.filter(|_| inherited.is_empty());
        let vm = parse_vm(&path, merged, state, module, (&mut warnings, &mut deprecations), errors);
        vms.extend(vm.map(|vm| VmDefinition { own_uri, ..vm }));
    }
    for clash in clashes(&vms) {
        let option = if matches!(clash, Clash::Name(_)) { "vms" } else { "networks" };
        errors.push(format!("{option}: {clash}"));
    }
    let request = Request {
        state: state?,
        wait: wait?,
        wait_timeout: wait_timeout?,
        stop_timeout: stop_timeout?,
        remove_storage: remove_storage?,
        placement: None,
        vms,
    };
    Some(Parsed { request, warnings, deprecations })
}

/// An item of `vms`: a dictionary, a pool spec string (`"3"`, `"18:bookworm"`) with `stem`, or a VM name.
fn pool_item(path: &str, item: Value, stem: Option<&str>, images: &Map<String, Value>) -> Result<Map<String, Value>> {
    let spec = match item {
        Value::Object(map) => return Ok(map),
        Value::String(s) => s,
        Value::Number(n) => n.to_string(),
        _ => bail!("{path}: expected a dictionary or a node spec such as \"3\" or \"18:bookworm\""),
    };
    let Some(stem) = stem else {
        // Without a stem, a string is the VM's name, unless it can only be a node spec.
        if pool_node("", &spec).is_none() {
            return Ok(Map::from_iter([("name".to_string(), json!(spec))]));
        }
        bail!(
            "{path}: the node spec {spec:?} needs the parameter stem (for a VM of that name, write {{name: {spec:?}}})"
        )
    };
    let Some((name, alias)) = pool_node(stem, &spec) else {
        bail!("{path}: {spec:?} is not a node spec for stem {stem:?} (examples: 3, {stem}4, 18:bookworm)")
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

/// Checks every string of an item, free text that ends up in the domain XML or the seed,
/// beside what the other checks look at.
fn check_texts(path: &str, value: &Value) -> Result<()> {
    let check_text = |name: &str, text: &str| validate::xml_text(text).map(drop).map_err(|e| anyhow!("{name}: {e}"));
    match value {
        Value::String(text) => check_text(path, text),
        Value::Array(items) => {
            items.iter().enumerate().try_for_each(|(i, item)| check_texts(&format!("{path}[{i}]"), item))
        }
        Value::Object(map) => map.iter().try_for_each(|(key, item)| {
            let name = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
            check_text(&name, key)?;
            check_texts(&name, item)
        }),
        _ => Ok(()),
    }
}

/// One VM, read as far as its problems allow: each is added to `errors`, naming its
/// parameter; `None` if there was any. Without a `state` (the spec refused it or a value the
/// VM inherits), what the VM lacks is not reported.
fn parse_vm(
    path: &str,
    mut merged: Map<String, Value>,
    state: Option<State>,
    module: &str,
    (warnings, deprecations): (&mut Vec<String>, &mut Vec<String>),
    errors: &mut ArgumentErrors,
) -> Option<VmDefinition> {
    if let Some(legacy) = merged.remove("vm") {
        // ansible_farm's form underneath, native keys on top.
        let vm_path = if path.is_empty() { "vm".to_string() } else { format!("{path}.vm") };
        let mut native =
            ArgumentErrors::collect(|found| Some(ansible_farm::to_native(&legacy, &vm_path, module, warnings, found)))
                .map_err(|found| errors.extend(found))
                .ok()?;
        native.extend(merged);
        merged = native;
    }
    if let Some(Value::Array(networks)) = merged.get_mut("networks") {
        for network in networks.iter_mut().filter(|n| n.is_string()) {
            *network = json!({ "network": network.take() });
        }
    }
    let fields = vm_spec().validate_at(&merged, path, module, errors);
    errors.check(check_texts(path, fields.as_value()));
    let text = |errors: &mut ArgumentErrors, option: &str, default: &str| {
        errors.check(fields.opt_str(option)).map(|value| value.unwrap_or(default).to_string())
    };
    let name = errors.check(fields.str("name"))?.to_string();
    errors.check(fields.checked("name", name.as_str(), validate::vm_name));
    let uri = text(errors, "uri", "qemu:///system")?;
    errors.check(fields.checked("uri", uri.as_str(), validate::uri));
    let pool = text(errors, "pool", "default")?;
    errors.check(fields.checked("pool", pool.as_str(), validate::object_name));
    let domain_type = errors.check(fields.opt_str("domain_type")).map(|kind| kind.map(str::to_string));
    let metadata = parse_metadata(&fields, errors);
    if let Some(xml) = errors.check(fields.opt_str("xml"))? {
        for conflicting in
            ["image", "image_upload", "cloud_init", "networks", "disks", "kernel", "memory", "vcpus", "tpm"]
        {
            if fields.is_set(conflicting) {
                errors.push(format!(
                    "{}: cannot be combined with {}",
                    fields.name_of("xml"),
                    fields.name_of(conflicting)
                ));
            }
        }
        let facts = errors.check(DomainFacts::parse(xml).map_err(|e| anyhow!("xml: {e}")));
        let domain =
            DomainSource::Given { xml: xml.to_string(), facts: Box::new(facts?), metadata: Box::new(metadata?) };
        return Some(VmDefinition {
            name,
            uri,
            own_uri: None,
            domain,
            domain_type: domain_type?,
            root_disk: None,
            pool,
            cloud_init: None,
            networks: vec![],
        });
    }
    let memory_mib = errors.check(parse_memory(&fields));
    let vcpus = errors.check(parse_vcpus(&fields));
    let root_disk = errors.check(parse_root_disk(&fields));
    if matches!(root_disk, Some(None)) && !fields.is_set("disks") && state.is_some_and(|s| s != State::Absent) {
        errors.push(format!(
            "{}: required (a base volume name or path), unless disks or xml are given",
            fields.name_of("image")
        ));
    }
    let disks = parse_disks(&fields, errors);
    let nics = parse_networks(&fields, &name, errors);
    let cloud_init = errors.check(
        fields
            .opt_dict("cloud_init")
            .map_err(anyhow::Error::from)
            .and_then(|c| c.map(|c| parse_cloud_init(&c, &name)).transpose()),
    );
    let filesystems = parse_filesystems(&fields, errors);
    let kernel = errors.check(
        fields.opt_dict("kernel").map_err(anyhow::Error::from).and_then(|k| k.map(|k| parse_kernel(&k)).transpose()),
    );
    let emulator = errors.check(owned(fields.opt_str_checked("emulator", validate::host_path)));
    let firmware = errors.check(parse_firmware(&fields, deprecations));
    // The model is the hypervisor's to offer: chosen when the domain capabilities are read.
    let tpm = errors.check(fields.opt_bool("tpm")).map(|tpm| (tpm == Some(true)).then(Tpm::default));
    let arch = text(errors, "arch", "x86_64");
    let machine = text(errors, "machine", "q35");
    let cpu_model = errors.check(fields.opt_str("cpu")).map(|cpu| cpu.filter(|c| !c.is_empty()).map(str::to_string));
    let (nics, networks) = nics?;
    let spec = DomainSpec {
        name: name.clone(),
        uuid: None,
        domain_type: String::new(),
        arch: arch?,
        machine: Some(machine?),
        emulator: emulator?,
        memory_mib: memory_mib?,
        vcpus: vcpus?,
        cpu_model: cpu_model?,
        firmware: firmware?,
        tpm: tpm?,
        kernel: kernel?,
        disks: disks?,
        nics,
        filesystems: filesystems?,
        console_log: Some(format!("/var/log/libvirt/qemu/{name}-console.log")),
        metadata: metadata?,
    };
    let domain = DomainSource::Generated(Box::new(spec));
    Some(VmDefinition {
        name,
        uri,
        own_uri: None,
        domain,
        domain_type: domain_type?,
        root_disk: root_disk?,
        pool,
        cloud_init: cloud_init?,
        networks,
    })
}

/// `firmware`, `loader` and `secure_boot` as one firmware; a path in `firmware` is the `loader`
/// it used to be, with a deprecation.
fn parse_firmware(fields: &Params, deprecations: &mut Vec<String>) -> Result<Firmware, ansible_module::Error> {
    let loader = fields.opt_str("loader")?;
    let secure_boot = fields.opt_bool("secure_boot")?.unwrap_or(false);
    let (firmware, old_form) = Firmware::choose(fields.opt_str("firmware")?, loader, secure_boot).map_err(|e| {
        let option = match e {
            FirmwareError::Path(_) | FirmwareError::LoaderWithBios if loader.is_some() => "loader",
            FirmwareError::SecureBootWithoutEfi => "secure_boot",
            _ => "firmware",
        };
        ansible_module::Error::Invalid { name: fields.name_of(option), reason: e.to_string() }
    })?;
    if old_form {
        deprecations
            .push(format!("{}: a loader path here is deprecated; give it as loader", fields.name_of("firmware")));
    }
    Ok(firmware)
}

/// A size: an integer in `default_unit`, or a string with a unit ([`validate::size`]); in
/// bytes. `name` is the parameter's full name, for the error.
fn size(name: &str, value: &Value, default_unit: u64) -> Result<u64> {
    let parsed = match value {
        Value::Number(n) => n.as_u64().and_then(|n| n.checked_mul(default_unit)).filter(|n| *n > 0),
        Value::String(s) => validate::size(s, default_unit).ok(),
        _ => None,
    };
    parsed.ok_or_else(|| anyhow!("{name}: {}", validate::Invalid::Size(brief(value))))
}

/// `value` for a message: short, on one line.
fn brief(value: &Value) -> String {
    let text = value.to_string();
    match text.char_indices().nth(40) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text,
    }
}

/// `memory` in MiB: 1024 unless given.
fn parse_memory(fields: &Params) -> Result<u64> {
    let memory_mib = match fields.get("memory") {
        Some(memory) => size(&fields.name_of("memory"), memory, 1 << 20)? >> 20,
        None => 1024,
    };
    if memory_mib == 0 {
        bail!("{}: at least 1 MiB", fields.name_of("memory"));
    }
    Ok(memory_mib)
}

/// `vcpus`: 1 unless given.
fn parse_vcpus(fields: &Params) -> Result<u32, ansible_module::Error> {
    Ok(fields.opt_int("vcpus")?.map(|n| fields.checked("vcpus", n, validate::vcpus)).transpose()?.unwrap_or(1))
}

/// `metadata`; every bad key is added to `errors`.
fn parse_metadata(fields: &Params, errors: &mut ArgumentErrors) -> Option<InstanceMetadata> {
    let mut metadata = InstanceMetadata::default();
    let Some(given) = fields.get("metadata").and_then(Value::as_object) else { return Some(metadata) };
    let name = fields.name_of("metadata");
    let mut complete = true;
    for (key, value) in given.iter().filter(|(_, value)| !value.is_null()) {
        complete &= errors.check(metadata_entry(&mut metadata, &name, key, value)).is_some();
    }
    complete.then_some(metadata)
}

/// One key of `metadata` (found at `name`) into `metadata`.
fn metadata_entry(metadata: &mut InstanceMetadata, name: &str, key: &str, value: &Value) -> Result<()> {
    let text = |value: &Value| match value {
        Value::String(s) => Ok(s.clone()),
        Value::Number(_) | Value::Bool(_) => Ok(value.to_string()),
        _ => Err(anyhow!("{name}.{key}: expected a string")),
    };
    let values = match (key, value) {
        ("groups", Value::Array(items)) => items.iter().map(text).collect::<Result<_>>()?,
        _ => vec![text(value)?],
    };
    metadata.set(key, values).map_err(|e| match e {
        Invalid::SecretMetadataKey(_) => anyhow!("{name}.{key}: {e}"),
        _ => anyhow!("{name}: {e}"),
    })
}

fn parse_root_disk(fields: &Params) -> Result<Option<RootDisk>> {
    let upload = fields.opt_str_checked("image_upload", validate::host_path)?;
    // An imported volume is named after its file unless image names it.
    let file_name = upload.and_then(|file| file.rsplit('/').next()).filter(|name| !name.is_empty());
    let Some(image) = fields.opt_str("image")?.or(file_name) else {
        for orphan in ["disk_size", "clone", "image_pool"] {
            if fields.is_set(orphan) {
                bail!("{}: needs image", fields.name_of(orphan));
            }
        }
        return Ok(None);
    };
    if upload.is_some() && image.starts_with('/') {
        bail!("{}: with image_upload, image names the volume to import into, not a path", fields.name_of("image"));
    }
    let rule = if image.starts_with('/') { validate::host_path } else { validate::object_name };
    fields.checked("image", image, rule)?;
    let image_pool = owned(fields.opt_str_checked("image_pool", validate::object_name))?;
    let mode = match fields.opt_str("clone")? {
        Some("full") => CloneMode::Full,
        _ => CloneMode::Linked,
    };
    let size = fields.get("disk_size").map(|s| size(&fields.name_of("disk_size"), s, 1 << 30)).transpose()?;
    Ok(Some(RootDisk { image: image.to_string(), upload: upload.map(str::to_string), image_pool, size, mode }))
}

/// A checked text option, owned.
fn owned(text: Result<Option<&str>, ansible_module::Error>) -> Result<Option<String>, ansible_module::Error> {
    text.map(|text| text.map(str::to_string))
}

/// Disks attached as they are (ansible_farm's `vm.disks`, or `disks` in the native form);
/// every bad value of every disk is added to `errors`.
fn parse_disks(fields: &Params, errors: &mut ArgumentErrors) -> Option<Vec<DiskDevice>> {
    let mut disks = Some(Vec::new());
    for disk in errors.check(fields.dicts("disks"))? {
        let path = errors.check(owned(disk.opt_str_checked("path", validate::host_path)));
        let target = errors.check(owned(disk.opt_str_checked("target", validate::object_name)));
        let format = errors.check(disk.str("format"));
        let device = match (path, target, format) {
            (Some(Some(path)), Some(Some(target)), Some(format)) => {
                Some(DiskDevice { path, format: format.to_string(), target, cdrom: false })
            }
            _ => None,
        };
        disks = disks.zip(device).map(|(mut disks, device)| {
            disks.push(device);
            disks
        });
    }
    disks
}

/// The NICs and the networks they need; every bad value of every NIC is added to `errors`.
fn parse_networks(
    fields: &Params,
    vm_name: &str,
    errors: &mut ArgumentErrors,
) -> Option<(Vec<NicDevice>, Vec<NetworkWant>)> {
    let mut nics = Vec::new();
    let mut wants = Vec::new();
    let mut complete = true;
    for (i, nic) in errors.check(fields.dicts("networks"))?.into_iter().enumerate() {
        match parse_nic(&fields.name_of(&format!("networks[{i}]")), &nic, i, vm_name, errors) {
            Some((device, want)) => {
                nics.push(device);
                wants.extend(want);
            }
            None => complete = false,
        }
    }
    complete.then_some((nics, wants))
}

/// NIC number `index`, found at `path`, and the network it needs, if any.
fn parse_nic(
    path: &str,
    nic: &Params,
    index: usize,
    vm_name: &str,
    errors: &mut ArgumentErrors,
) -> Option<(NicDevice, Option<NetworkWant>)> {
    let mac = errors.check(nic_mac(nic, index, vm_name));
    let network = errors.check(owned(nic.opt_str_checked("network", validate::object_name)));
    let bridge = errors.check(owned(nic.opt_str_checked("bridge", validate::object_name)));
    let kind = errors.check(nic.opt_str("type"));
    let source = match (kind, network, bridge) {
        (Some(kind), Some(network), Some(bridge)) => match (kind, network, bridge) {
            (Some("user"), None, None) => Some(NicSource::User),
            (None | Some("network"), Some(network), None) => Some(NicSource::Network(network)),
            (None | Some("bridge"), None, Some(bridge)) => Some(NicSource::Bridge(bridge)),
            _ => {
                errors.push(format!("{path}: give exactly one of network, bridge, or type: user"));
                None
            }
        },
        _ => None,
    };
    let ip = errors.check(nic.opt_str("ip").map_err(anyhow::Error::from).and_then(|ip| {
        ip.map(|ip| ip.parse::<Ipv4Addr>().map_err(|_| anyhow!("{}: {ip:?} is not an IPv4 address", nic.name_of("ip"))))
            .transpose()
    }));
    let hostname = errors.check(owned(nic.opt_str_checked("hostname", validate::object_name)));
    let subnet = errors.check(nic.opt_str("subnet").map_err(anyhow::Error::from).and_then(|subnet| {
        subnet
            .map(|s| {
                Subnet::parse(s)
                    .ok_or_else(|| anyhow!("{}: {s:?} is not a subnet such as 10.88.0.0/24", nic.name_of("subnet")))
            })
            .transpose()
    }));
    let bridge_name = errors.check(owned(nic.opt_str_checked("bridge_name", validate::object_name)));
    let (source, mac, ip, hostname, subnet, bridge_name) = (source?, mac?, ip?, hostname?, subnet?, bridge_name?);
    let want = match &source {
        NicSource::Network(network) => {
            let create = subnet.map(|subnet| NewNetwork { name: network.clone(), subnet, bridge: bridge_name });
            let reservation =
                ip.map(|ip| Reservation { mac: mac.clone(), ip, hostname: hostname.or(Some(vm_name.to_string())) });
            Some(NetworkWant { name: network.clone(), create, reservation })
        }
        _ if ip.is_some() || subnet.is_some() => {
            errors.push(format!("{path}: ip and subnet need a libvirt network (network: NAME)"));
            return None;
        }
        _ => None,
    };
    Some((NicDevice { source, mac }, want))
}

/// The NIC's MAC as given (a unicast address), or one derived from the VM's name.
fn nic_mac(nic: &Params, index: usize, vm_name: &str) -> Result<String> {
    let Some(mac) = nic.opt_str("mac")? else { return Ok(derived_mac(vm_name, index)) };
    validate::mac(mac).map_err(|e| anyhow!("{}: {e}", nic.name_of("mac")))
}

fn parse_cloud_init(given: &Params, vm_name: &str) -> Result<CloudInit> {
    let text = |key: &str| -> Result<Option<String>> { Ok(given.opt_str(key)?.map(str::to_string)) };
    let texts =
        |key: &str| -> Result<Vec<String>> { Ok(given.list_of_str(key)?.into_iter().map(str::to_string).collect()) };
    let hostname = text("hostname")?.unwrap_or_else(|| vm_name.to_string());
    given.checked("hostname", hostname.as_str(), validate::object_name)?;
    Ok(CloudInit {
        instance_id: vm_name.to_string(),
        hostname: Some(hostname),
        user: text("user")?,
        ssh_authorized_keys: texts("ssh_authorized_keys")?,
        password_hash: text("password_hash")?,
        packages: texts("packages")?,
        runcmd: texts("runcmd")?,
        network_config: given.get("network_config").cloned(),
        user_data: text("user_data")?,
        meta_data: text("meta_data")?,
    })
}

/// `filesystems`; every bad value of every share is added to `errors`.
fn parse_filesystems(fields: &Params, errors: &mut ArgumentErrors) -> Option<Vec<Share>> {
    let mut shares = Some(Vec::new());
    for share in errors.check(fields.dicts("filesystems"))? {
        let source = errors.check(owned(share.opt_str_checked("source", validate::host_path)));
        let tag = errors.check(owned(share.opt_str_checked("target", validate::object_name)));
        let share = match (source, tag) {
            (Some(Some(source)), Some(Some(tag))) => Some(Share { source, tag }),
            _ => None,
        };
        shares = shares.zip(share).map(|(mut shares, share)| {
            shares.push(share);
            shares
        });
    }
    shares
}

fn parse_kernel(kernel: &Params) -> Result<DirectKernel> {
    let path = |option: &str| owned(kernel.opt_str_checked(option, validate::host_path));
    Ok(DirectKernel {
        kernel: path("path")?.unwrap_or_default(),
        initrd: path("initrd")?,
        cmdline: kernel.opt_str("cmdline")?.map(str::to_string),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The module's two stages, as `ansible_module::run_parsed` drives them.
    fn parse_with_notes(args: Value) -> Result<Parsed> {
        let mut errors = ArgumentErrors::new();
        let params = spec().validate_at(args.as_object().expect("an object"), "", "kvm_provision", &mut errors);
        let parsed = request(&params, "kvm_provision").map_err(|own| errors.extend(own)).ok();
        Ok(errors.finish(parsed)?.expect("a request when nothing is wrong"))
    }

    fn parse(args: Value) -> Result<Request> {
        Ok(parse_with_notes(args)?.request)
    }

    fn generated(vm: &VmDefinition) -> &DomainSpec {
        match &vm.domain {
            DomainSource::Generated(spec) => spec,
            DomainSource::Given { .. } => panic!("expected a generated domain"),
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(size("memory", &json!(2), 1 << 20).unwrap(), 2 << 20);
        let err = size("vms[2].memory", &json!([1]), 1).unwrap_err().to_string();
        assert_eq!(err, "vms[2].memory: [1] is not a size (examples: 512, 512M, 2G, 10GiB)");
        let err = size("memory", &json!("x".repeat(1000)), 1).unwrap_err().to_string();
        assert!(err.len() < 120, "{err}");
    }

    #[test]
    fn pool_naming_with_defaults_and_image_aliases() {
        let request = parse(json!({
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
    fn names_in_vms_without_a_stem() {
        let request = parse(json!({"image": "base.qcow2", "vms": ["web1", "db1", {"name": "cache1"}]})).unwrap();
        let names: Vec<_> = request.vms.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["web1", "db1", "cache1"]);
    }

    #[test]
    fn ansible_farm_vm_definitions_are_accepted_as_they_are() {
        let parsed = parse_with_notes(json!({"state": "present", "vm": {
            "metadata": {"name": "debian12-amd64", "hostname": "deb", "connection": "qemu+ssh://hv1/system", "libvirt_pool_dir": "/pool/",
                         "platform_name": "debian_12", "target_name": "amd64", "template": "default.xml.j2",
                         "auth": {"user": "user", "password": "secret", "become_user": "root"},
                         "sources": [{"before_provision": []}]},
            "arch": "x86_64", "emulator": "/usr/bin/qemu-system-x86_64", "virt_domain": "qemu", "cpu": "", "machine": "q35",
            "vcpus": 2, "ram": 768, "disks": [{"type": "qcow2", "devname": "vda", "src": "debian12.qcow2"}],
            "kernel": {"src": "vmlinuz", "initrd": "initrd.img", "params": "root=/dev/vda"},
            "net": {"type": "network", "source": "vfnet", "mac": "52:54:00:12:34:56", "ip": "10.77.0.77", "mask": "255.255.255.0"}
        }}))
        .unwrap();
        let vm = &parsed.request.vms[0];
        let spec = generated(vm);
        assert_eq!(vm.name, "debian12-amd64");
        assert_eq!(vm.domain_type.as_deref(), Some("qemu"));
        assert_eq!((spec.memory_mib, spec.vcpus, spec.cpu_model.clone()), (768, 2, None));
        assert_eq!(spec.disks[0].path, "/pool/debian12.qcow2");
        assert_eq!(spec.kernel.as_ref().unwrap().kernel, "/pool/vmlinuz");
        assert_eq!(spec.kernel.as_ref().unwrap().initrd.as_deref(), Some("/pool/initrd.img"));
        assert_eq!(vm.uri, "qemu+ssh://hv1/system", "metadata.connection is the VM's libvirt URI");
        assert!(spec.metadata.vars.iter().all(|(key, _)| key != "ansible_connection"));
        let warned: Vec<_> = parsed.warnings.iter().map(|w| w.split(':').next().unwrap()).collect();
        assert_eq!(warned, ["vm.metadata.sources", "vm.metadata.template"]);
        assert_eq!(spec.nics[0].mac, "52:54:00:12:34:56");
        assert_eq!(spec.metadata.platform.as_deref(), Some("debian_12"));
        assert_eq!(spec.metadata.user.as_deref(), Some("user"));
        assert_eq!(vm.networks[0].reservation.as_ref().unwrap().ip.to_string(), "10.77.0.77");
        assert!(!format!("{:?}", spec).contains("secret"));
    }

    #[test]
    fn every_problem_of_every_vm_is_named_at_once() {
        let refused = |args: Value| parse(args).expect_err("refused");
        let err = refused(json!({"name": "vm1", "networks": [{"network": "default", "mac": "zz:zz:zz"}]})).to_string();
        assert!(err.starts_with("image: required") && err.contains("; networks[0].mac: "), "{err}");
        let err = refused(json!({"vms": [
            {"name": "a", "image": "b", "memory": "lots", "networks": [{"network": "n", "mac": "zz", "ip": "10.1"}]},
            {"name": "b b", "image": "b", "vcpus": 0},
            {"image": "b", "colour": 1},
            {"name": "c", "image": "b"},
            {"name": "c", "image": "b"},
        ]}));
        let errors = err.downcast_ref::<ArgumentErrors>().expect("argument errors");
        let named: Vec<&str> = errors.messages().iter().map(|e| e.split(": ").next().unwrap_or_default()).collect();
        assert_eq!(
            named,
            [
                "vms[0].memory",
                "vms[0].networks[0].mac",
                "vms[0].networks[0].ip",
                "vms[1].name",
                "vms[1].vcpus",
                "Unsupported parameters for (kvm_provision) module",
                "missing required arguments",
                "vms",
            ],
            "{err}"
        );
        assert!(errors.messages()[5].contains("vms[2].colour") && errors.messages()[6].ends_with("vms[2].name"));
    }

    /// The parameter each error names: what comes before its first `: `, or for the spec's
    /// messages the whole message.
    fn named(args: Value) -> Vec<String> {
        let err = parse(args).expect_err("refused");
        let errors = err.downcast_ref::<ArgumentErrors>().expect("argument errors");
        errors.messages().iter().map(|e| e.split(": ").next().unwrap_or_default().to_string()).collect()
    }

    #[test]
    fn the_specs_errors_and_the_modules_own_are_named_together() {
        let top = named(json!({"name": "a b", "image": "b", "vcpus": "many", "clone": "deep", "state": "on",
                               "networks": [{"network": "n", "mac": "zz"}]}));
        let expected = [
            "argument 'vcpus' is of type",
            "value of state must be one of",
            "value of clone must be",
            "name",
            "networks[0].mac",
        ];
        assert!(top.len() == expected.len() && top.iter().zip(expected).all(|(e, x)| e.starts_with(x)), "{top:?}");
        let items = named(json!({"vms": [
            {"name": "a", "image": "b", "vcpus": "x", "memory": "lots"},
            {"name": "c", "image": "b", "disks": [{"target": "vdb"}], "domain_type": "xen", "vcpus": 0},
        ]}));
        assert_eq!(items.len(), 5, "{items:?}");
        assert!(items[0].starts_with("argument 'vms[0].vcpus'") && items[1] == "vms[0].memory", "{items:?}");
        assert!(
            items[2].starts_with("value of vms[1].domain_type") && items[3] == "missing required arguments",
            "{items:?}"
        );
        assert_eq!(items[4], "vms[1].vcpus", "{items:?}");
    }

    #[test]
    fn what_the_spec_refused_is_not_reported_missing() {
        // Disks given, refused: no VM is told it needs an image or disks.
        for args in [
            json!({"name": "a", "disks": "x"}),
            json!({"vms": [{"name": "a", "disks": ["x"]}]}),
            json!({"vms": [{"name": "a"}, {"name": "b", "image": "c", "disks": []}], "disks": 5}),
            json!({"name": "a", "state": "gone"}),
        ] {
            let err = parse(args.clone()).expect_err("refused").to_string();
            assert!(!err.contains("image: required") && !err.contains("has no value"), "{args}: {err}");
        }
        assert_eq!(named(json!({"vm": [1], "uri": "qemu:///system"})).len(), 1);
    }

    #[test]
    fn every_mistake_inside_one_value_is_named() {
        let cases = [
            (
                json!({"name": "a", "disks": [{"path": "rel.qcow2", "target": "../x"}, {"path": "/ok", "target": "a/b"}]}),
                vec!["disks[0].path", "disks[0].target", "disks[1].target"],
            ),
            (
                json!({"name": "a", "image": "b", "filesystems": [{"source": "rel", "target": "a/b"}, {"source": "/srv"}]}),
                vec!["missing required arguments", "filesystems[0].source", "filesystems[0].target"],
            ),
            (
                json!({"name": "a", "image": "b", "metadata": {"a b": 1, "ansible_password": "x", "project": ["p"]}}),
                vec!["metadata", "metadata.ansible_password", "metadata.project"],
            ),
        ];
        for (args, expected) in cases {
            assert_eq!(named(args.clone()), expected, "{args}");
        }
        // ansible_farm's `vm` has an argument spec of its own: its errors are in AnsibleModule's
        // words, the unknown keys first, each naming its key by its full path.
        let vm = json!({"vm": {"colour": 1, "metadata": {"owner": "x", "auth": {"token": 1}},
                               "disks": [{"size": 1}, 7], "net": {"type": "vde", "mac": [1]}, "kernel": {"initramfs": "i"}}});
        let err = parse(vm).expect_err("refused");
        let messages = err.downcast_ref::<ArgumentErrors>().expect("argument errors").messages().to_vec();
        let expected = [
            ["vm.colour"].as_slice(),
            &["vm.metadata.owner"],
            &["vm.metadata.auth.token"],
            &["vm.kernel.initramfs"],
            &["vm.disks[0].size"],
            &["'vm.disks'", "<class 'int'>"],
            &["vm.metadata.name"],
            &["vm.kernel.src"],
            &["vm.disks[0].src"],
            &["vm.net.type", "vde"],
            &["vm.net.mac", "[1]"],
        ];
        assert_eq!(messages.len(), expected.len(), "{messages:#?}");
        for (message, names) in messages.iter().zip(expected) {
            assert!(names.iter().all(|name| message.contains(name)), "{message} names {names:?}");
        }
    }

    #[test]
    fn firmware_is_bios_efi_or_a_loader_and_a_path_in_firmware_is_a_deprecated_loader() {
        let firmware = |extra: Value| {
            let mut args = json!({"name": "a", "image": "b"});
            args.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            let parsed = parse_with_notes(args)?;
            Ok::<_, anyhow::Error>((generated(&parsed.request.vms[0]).firmware.clone(), parsed.deprecations))
        };
        assert_eq!(firmware(json!({})).unwrap(), (Firmware::Bios, vec![]));
        assert_eq!(firmware(json!({"firmware": "efi"})).unwrap().0, Firmware::Efi { secure_boot: false });
        let secure = json!({"firmware": "efi", "secure_boot": true});
        assert_eq!(firmware(secure).unwrap().0, Firmware::Efi { secure_boot: true });
        let code = "/usr/share/OVMF/OVMF_CODE_4M.fd";
        assert_eq!(firmware(json!({"loader": code})).unwrap(), (Firmware::Loader(code.into()), vec![]));
        let (old_form, deprecations) = firmware(json!({"firmware": code})).unwrap();
        assert_eq!(old_form, Firmware::Loader(code.into()));
        assert!(deprecations[0].starts_with("firmware:"), "{deprecations:?}");
        let tpm = parse(json!({"name": "a", "image": "b", "firmware": "efi", "tpm": true})).unwrap();
        assert_eq!(generated(&tpm.vms[0]).tpm, Some(Tpm::default()), "its model is the hypervisor's to offer");
        assert_eq!(generated(&parse(json!({"name": "a", "image": "b", "tpm": false})).unwrap().vms[0]).tpm, None);
        let farm =
            parse_with_notes(json!({"vm": {"metadata": {"name": "a"}, "firmware": code}, "image": "b"})).unwrap();
        assert_eq!(generated(&farm.request.vms[0]).firmware, Firmware::Loader(code.into()));
        assert!(farm.deprecations.is_empty(), "ansible_farm's vm.firmware is its loader");
        for (extra, named) in [
            (json!({"firmware": "uefi"}), "firmware:"),
            (json!({"secure_boot": true}), "secure_boot:"),
            (json!({"loader": code, "secure_boot": true}), "secure_boot:"),
            (json!({"loader": "OVMF_CODE.fd"}), "loader:"),
            (json!({"firmware": "bios", "loader": code}), "loader:"),
        ] {
            let err = firmware(extra.clone()).expect_err("refused").to_string();
            assert!(err.contains(named), "{extra} gave '{err}', expected it to name {named}");
        }
    }

    #[test]
    fn an_uploaded_image_is_named_by_image_or_by_its_file() {
        let root = |args: Value| {
            let request = parse(args).unwrap();
            let root = request.vms[0].root_disk.as_ref().expect("a root disk");
            (root.image.clone(), root.upload.clone())
        };
        let file = "/srv/images/debian-12.qcow2";
        assert_eq!(root(json!({"name": "a", "image_upload": file})), ("debian-12.qcow2".into(), Some(file.into())));
        assert_eq!(root(json!({"name": "a", "image_upload": file, "image": "d12"})), ("d12".into(), Some(file.into())));
        assert_eq!(root(json!({"name": "a", "image": "d12"})), ("d12".into(), None));
    }

    #[test]
    fn bad_arguments_name_their_parameter() {
        let cases = [
            (json!({"name": "a", "image": "b", "memory": "lots"}), "memory"),
            (json!({"name": "a b", "image": "b"}), "name"),
            (json!({"name": "a"}), "image"),
            (json!({"name": "a", "image": "b", "state": "on"}), "state"),
            (json!({"name": "a", "image": "b", "wait": "forever"}), "wait"),
            (json!({"name": "a", "image": "b", "networks": [{"network": "n", "mac": "zz"}]}), "networks[0].mac"),
            (json!({"name": "a", "image": "b", "networks": [{"network": "n", "ip": "10.1"}]}), "networks[0].ip"),
            (json!({"name": "a", "image": "b", "networks": [{"network": "n", "bridge": "b"}]}), "networks[0]"),
            (json!({"name": "a", "image": "b", "cloud_init": {"usr": "x"}}), "cloud_init.usr"),
            (json!({"name": "a", "image": "b", "colour": "red"}), "colour"),
            (json!({"vms": ["3"]}), "stem"),
            (json!({"vms": ["a b"], "image": "b"}), "vms[0].name"),
            (json!({"stem": "vnode", "vms": ["x"], "image": "b"}), "vms[0]"),
            (json!({"vms": [{"name": "a", "image": "b"}, {"name": "a", "image": "b"}]}), "vms"),
            (json!({"name": "a", "xml": "<domain/>", "memory": 3}), "xml"),
            (json!({"name": "a", "xml": "<domain/>", "tpm": true}), "tpm"),
            (json!({"name": "a", "image_upload": "images/d.qcow2"}), "image_upload"),
            (json!({"name": "a", "image_upload": "/images/d.qcow2", "image": "/var/lib/d.qcow2"}), "image"),
            (json!({"name": "a", "image_upload": "/images/"}), "image"),
            (json!({"name": "a", "image": "b", "tpm": "maybe"}), "tpm"),
            (json!({"vm": {"ram": 3}}), "vm.metadata"),
            (json!({"vm": {"metadata": {"name": "a"}, "colour": "red"}}), "vm.colour"),
            (json!({"vm": {"metadata": {"name": "a", "auth": {"token": "x"}}}}), "vm.metadata.auth.token"),
            (json!({"vm": {"metadata": {"name": "a"}, "net": {"type": "vde", "source": "/tmp/sw"}}}), "vm.net.type"),
            (json!({"vm": {"metadata": {"hostname": "a"}}}), "vm.metadata.name"),
            (
                json!({"vms": [{"vm": {"metadata": {"name": "a"}, "kernel": {"src": "k", "initramfs": "i"}}}]}),
                "vms[0].vm.kernel.initramfs",
            ),
            (json!({"name": "a", "disk_size": "3G", "disks": []}), "disk_size"),
        ];
        for (args, expected) in cases {
            let err = parse(args.clone()).err().unwrap_or_else(|| panic!("accepted {args}")).to_string();
            assert!(err.contains(expected), "{args} gave '{err}', expected it to name {expected}");
        }
    }
}
