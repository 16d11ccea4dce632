//! ansible_farm's `vm` (a target merged with a platform), read with its own argument spec and
//! turned into native keys: the keys its kvm_provision template reads, plus `kernel.initrd`.
//! The keys its role acts on and this module does not are accepted, each with a warning.

use ansible_module::{ArgSpec, ArgumentErrors, Opt, Params, Type};
use serde_json::{json, Map, Value};
use virtfarm_libvirt::validate;

/// The keys of ansible_farm's `vm.metadata` that its kvm_provision role acts on and this module
/// does not, with why: accepted so that its definitions work unchanged, each named in a warning.
const NOT_RUN: [(&str, &str); 5] = [
    ("sources", "nothing is downloaded or converted; put the images in the pool first"),
    ("callbacks", "the source callbacks are not run"),
    ("template", "the XML template is not rendered; render it yourself and pass xml"),
    ("cleanup_tmp", "nothing is downloaded, so nothing is cleaned up"),
    ("tmp_dir", "nothing is downloaded"),
];

/// The keys of ansible_farm's `vm` that are native options under another name: their values
/// are checked by the native option's rules.
const DOMAIN_KEYS: [(&str, &str); 8] = [
    ("virt_domain", "domain_type"),
    ("arch", "arch"),
    ("machine", "machine"),
    ("emulator", "emulator"),
    ("cpu", "cpu"),
    ("ram", "memory"),
    ("vcpus", "vcpus"),
    // ansible_farm's firmware is a pflash path.
    ("firmware", "loader"),
];

/// With `type: user`, `source` (hostfwd=...) and `ip` (127.0.0.1) describe a port forward.
const NO_FORWARDS: &str = "libvirt's user network has no port forwarding; reach the guest through its agent";

/// ansible_farm's `vm` format.
fn spec() -> ArgSpec {
    let not_run = || NOT_RUN.iter().map(|(key, _)| Opt::raw(*key));
    let auth = ArgSpec::new([
        Opt::str("user"),
        Opt::str("password").no_log(),
        Opt::str("become_user"),
        Opt::str("become_password").no_log(),
        Opt::str("become_method"),
    ]);
    let metadata = ["hostname", "platform_name", "target_name", "arch_name", "libvirt_pool_dir", "connection"];
    let metadata = metadata.map(Opt::str).into_iter().chain(not_run());
    let metadata = [Opt::str("name").required(), Opt::dict("auth").suboptions(auth)].into_iter().chain(metadata);
    let mut options = vec![
        Opt::dict("metadata").required().suboptions(ArgSpec::new(metadata)),
        Opt::dict("kernel").suboptions(ArgSpec::new([
            Opt::str("src").required(),
            Opt::str("initrd"),
            Opt::str("params"),
        ])),
        Opt::list("disks").elements(Type::Dict).suboptions(ArgSpec::new([
            Opt::str("src").required(),
            Opt::str("type").default("qcow2"),
            Opt::str("devname"),
        ])),
        // mask is accepted: a reservation takes the network's own netmask.
        Opt::dict("net").suboptions(ArgSpec::new(
            ["source", "mac", "ip", "mask"]
                .map(Opt::str)
                .into_iter()
                .chain([Opt::str("type").choices(&["network", "bridge", "user"]).default("network")]),
        )),
    ];
    options.extend(DOMAIN_KEYS.iter().map(|(key, _)| Opt::raw(*key)));
    // Some definitions have cleanup_tmp beside metadata rather than in it.
    options.push(Opt::raw("cleanup_tmp"));
    ArgSpec::new(options)
}

/// `vm`, found at `path`, as native keys; every problem is added to `errors`, each accepted key
/// not acted on to `warnings`.
pub fn to_native(
    vm: &Value,
    path: &str,
    module: &str,
    warnings: &mut Vec<String>,
    errors: &mut ArgumentErrors,
) -> Map<String, Value> {
    let Value::Object(given) = vm else {
        errors.push(format!("{path}: expected a dictionary"));
        return Map::new();
    };
    let vm = spec().validate_at(given, path, module, errors);
    let mut native = Map::new();
    let mut warn = |params: &Params, warned: &[(&str, &str)]| {
        for (key, why) in warned.iter().filter(|(key, _)| params.is_set(key)) {
            warnings.push(format!("{}: accepted but not run: {why}", params.name_of(key)));
        }
    };
    // cleanup_tmp, which some definitions have beside metadata rather than in it.
    warn(&vm, &NOT_RUN);
    let pool_dir = match errors.check(vm.dict("metadata")) {
        Some(meta) => {
            warn(&meta, &NOT_RUN);
            metadata(&meta, &mut native, errors)
        }
        None => String::new(),
    };
    for (from, to) in DOMAIN_KEYS {
        if let Some(value) = vm.get(from) {
            native.insert(to.into(), value.clone());
        }
    }
    if let Some(Some(kernel)) = errors.check(vm.opt_dict("kernel")) {
        let mut text = |key| errors.check(kernel.opt_str(key)).flatten();
        let mut direct = json!({ "path": format!("{pool_dir}{}", text("src").unwrap_or_default()) });
        if let Some(initrd) = text("initrd") {
            direct["initrd"] = json!(format!("{pool_dir}{initrd}"));
        }
        if let Some(params) = text("params") {
            direct["cmdline"] = json!(params);
        }
        native.insert("kernel".into(), direct);
    }
    let disks = errors.check(vm.dicts("disks")).unwrap_or_default();
    let disks: Vec<_> = disks
        .iter()
        .enumerate()
        .filter_map(|(i, disk)| {
            let default_target = || format!("vd{}", char::from(b'a' + (i % 26) as u8));
            Some(json!({
                "path": format!("{pool_dir}{}", errors.check(disk.str("src"))?),
                "format": errors.check(disk.str("type"))?,
                "target": errors.check(disk.opt_str("devname"))?.map_or_else(default_target, str::to_string),
            }))
        })
        .collect();
    if !disks.is_empty() {
        native.insert("disks".into(), json!(disks));
    }
    if let Some(Some(net)) = errors.check(vm.opt_dict("net")) {
        if let Some(nic) = nic(&net, &mut warn, errors) {
            native.insert("networks".into(), json!([nic]));
        }
    }
    native
}

/// ansible_farm's `vm.metadata` into `native` (name, URI, our metadata); its pool directory.
fn metadata(meta: &Params, native: &mut Map<String, Value>, errors: &mut ArgumentErrors) -> String {
    if let Some(name) = errors.check(meta.str("name").and_then(|name| meta.checked("name", name, validate::vm_name))) {
        native.insert("name".into(), json!(name));
    }
    let mut text = |key: &str| errors.check(meta.opt_str(key)).flatten().map(str::to_string);
    // The libvirt URI of the VM, as ansible_farm's roles pass it to libvirt.
    if let Some(uri) = text("connection") {
        native.insert("uri".into(), json!(uri));
    }
    let pool_dir = text("libvirt_pool_dir").unwrap_or_default();
    // arch_name is a target definition's name for itself.
    let (target, arch_name) = (text("target_name"), text("arch_name"));
    let mut metadata = Map::new();
    for (key, value) in
        [("platform", text("platform_name")), ("target", target.or(arch_name)), ("hostname", text("hostname"))]
    {
        if let Some(value) = value {
            metadata.insert(key.into(), json!(value));
        }
    }
    // The secrets stay with Ansible (the role passes them to add_host), never in the domain.
    if let Some(Some(auth)) = errors.check(meta.opt_dict("auth")) {
        if let Some(Some(user)) = errors.check(auth.opt_str("user")) {
            metadata.insert("ansible_user".into(), json!(user));
        }
    }
    native.insert("metadata".into(), Value::Object(metadata));
    pool_dir
}

/// ansible_farm's `vm.net` as one item of `networks`.
fn nic(net: &Params, warn: &mut impl FnMut(&Params, &[(&str, &str)]), errors: &mut ArgumentErrors) -> Option<Value> {
    let mac = errors.check(net.opt_str_checked("mac", validate::mac));
    let ip = errors.check(net.opt_str("ip"));
    let kind = errors.check(net.str("type"))?;
    let mut nic = match kind {
        "user" => {
            warn(net, &[("source", NO_FORWARDS), ("ip", NO_FORWARDS)]);
            return Some(json!({ "type": "user", "mac": mac? }));
        }
        _ => match errors.check(net.opt_str("source")) {
            Some(Some(source)) => json!({ kind: source }),
            Some(None) => {
                errors.push(format!("missing required arguments: {}", net.name_of("source")));
                return None;
            }
            None => return None,
        },
    };
    if let Some(mac) = mac? {
        nic["mac"] = json!(mac);
    }
    // `dhcp` asks for no fixed address.
    if let Some(ip) = ip?.filter(|ip| *ip != "dhcp") {
        nic["ip"] = json!(ip);
    }
    Some(nic)
}
