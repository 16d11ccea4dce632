//! Hostile input against every module binary, run as Ansible runs them: wrong types, huge
//! values, unknown keys, empty and missing values, unicode and control characters, XML
//! injection, shell metacharacters, path traversal, duplicate names, malformed MACs and
//! addresses, nonsense URIs, arguments that are not a JSON object, wrong nesting.
//!
//! Every case must give one JSON object with `failed: true` and a message naming the
//! parameter (every parameter, for the cases with several mistakes), never a panic; the hypervisor's domains, networks, pools, volumes and
//! snapshots must be the same afterwards. The corpus is generated from a table of
//! (module, option, kind of value): each kind has its own list of hostile values.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use bed::Bed;
use serde_json::{json, Value};

/// Every name the corpus gives an object starts with this, so that a change it caused can
/// be told apart from other tests' work on the shared bed.
const PREFIX: &str = "hx-";

/// What one case sends: JSON arguments, or raw bytes for the cases that are not JSON at all.
#[derive(Clone)]
enum Payload {
    Json(Value),
    Raw(Vec<u8>),
}

struct Case {
    module: &'static str,
    label: String,
    payload: Payload,
    /// What the message must contain: a parameter's name, one for each mistake.
    parameters: Vec<String>,
}

/// What a run gave, as the summary counts it.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Refused,
    Accepted,
    Panicked,
    NotJson,
    Unnamed,
}

/// The kinds of option a hostile value is aimed at.
#[derive(Clone, Copy)]
enum Kind {
    /// A domain name (kvm_provision is strict: ASCII letters, digits, `-_.`).
    DomainName,
    /// A name that must not be a path (snapshot names, pools, networks, volumes).
    ObjectName,
    Uri,
    /// An integer that counts something (seconds, CPUs): never negative.
    Count,
    Bool,
    Choice,
    /// An absolute path on the hypervisor.
    AbsolutePath,
    /// A size with an optional unit.
    Size,
    /// A dictionary with declared suboptions.
    Dict,
    /// A list of strings.
    StrList,
}

fn huge_string() -> Value {
    json!("A".repeat(10 << 20))
}

/// Hostile strings that no name or path may be.
fn bad_names() -> Vec<Value> {
    vec![
        json!(""),
        json!("   "),
        json!("../../etc/passwd"),
        json!("/etc/passwd"),
        json!("a/b"),
        json!(".."),
        json!("."),
        json!("nul\u{0}byte"),
        json!("bell\u{7}"),
        json!("line\nbreak"),
        json!("esc\u{1b}[31m"),
        json!("x".repeat(300)),
        huge_string(),
    ]
}

/// Strings a domain name may not be in kvm_provision, beyond [`bad_names`].
fn bad_domain_names() -> Vec<Value> {
    let mut values = bad_names();
    values.extend([
        json!("</name><devices><disk type='file'><source file='/etc/shadow'/></disk></devices><name>"),
        json!("hx-$(reboot)"),
        json!("hx-`id`"),
        json!("hx-a;rm -rf /"),
        json!("hx-a|b"),
        json!("hx-a&&b"),
        json!("hx-\u{202e}gpj.exe"),
        json!("hx-é"),
        json!("hx-😀"),
        json!("hx a"),
        json!(".hx-hidden"),
        json!(["hx-a"]),
        json!({"hx": "a"}),
    ]);
    values
}

fn values_of(kind: Kind) -> Vec<Value> {
    let huge_int: Value = serde_json::from_str("123456789012345678901234567890").expect("a JSON number");
    match kind {
        Kind::DomainName => bad_domain_names(),
        Kind::ObjectName => bad_names(),
        // An empty URI is libvirt's default connection: only kvm_provision refuses it.
        Kind::Uri => vec![
            json!("not a uri"),
            json!("qemu://"),
            json!("qemu+bogus:///system"),
            json!("qemu:///system\n--readonly"),
            json!("qemu+unix:///system?socket=/nonexistent/hx-sock"),
            json!("$(reboot)://x"),
            json!(["qemu:///system"]),
            huge_string(),
        ],
        Kind::Count => vec![
            json!("many"),
            json!("1e400"),
            huge_int,
            json!(1.5),
            json!([1]),
            json!({"a": 1}),
            json!("0x10"),
            json!(""),
            json!(-1),
            json!("-5"),
            json!(i64::MIN),
        ],
        Kind::Bool => vec![json!("maybe"), json!(2), json!([true]), json!({"a": 1}), json!("")],
        Kind::Choice => vec![
            json!("bogus"),
            json!("PRESENT-ish"),
            json!(""),
            json!(["a", "b"]),
            json!({"a": 1}),
            json!("present\u{0}"),
        ],
        Kind::AbsolutePath => vec![
            json!("relative/path"),
            json!("../../etc/shadow"),
            json!("/var/lib/../../etc/shadow"),
            json!("/tmp/nul\u{0}"),
            json!(""),
        ],
        Kind::Size => vec![
            json!("lots"),
            json!("-1"),
            json!(0),
            json!("1.5G"),
            json!("12Q"),
            huge_int,
            json!([1]),
            json!({"a": 1}),
            json!(true),
        ],
        Kind::Dict => vec![json!("not a dict"), json!([1, 2]), json!(7), json!({"no_such_suboption": 1})],
        Kind::StrList => vec![json!({"a": 1})],
    }
}

/// One module's corpus: a base that would otherwise be valid (and harmless: its objects do
/// not exist), the options with the kind of value each takes, and the module's own cases.
struct ModuleCorpus {
    module: &'static str,
    base: Value,
    options: Vec<(&'static str, Kind)>,
    special: Specials,
}

/// A module's own cases: (label, arguments, what the message must name).
#[derive(Default)]
struct Specials(Vec<(String, Value, Vec<String>)>);

impl Specials {
    fn add(&mut self, label: &str, args: Value, parameter: &str) {
        self.mistakes(label, args, &[parameter]);
    }

    /// A case with several mistakes: the one failed result must name every one.
    fn mistakes(&mut self, label: &str, args: Value, named: &[&str]) {
        self.0.push((label.to_string(), args, named.iter().map(|name| name.to_string()).collect()));
    }
}

fn with(base: &Value, key: &str, value: Value) -> Value {
    let mut args = base.clone();
    args[key] = value;
    args
}

fn kvm_provision(bed: &Bed) -> ModuleCorpus {
    let base = json!({ "name": "hx-kp", "uri": bed.uri, "image": "hx-no-such.qcow2", "pool": bed.disks_pool, "state": "present" });
    let nic = |extra: Value| {
        let mut nic = json!({ "network": "hx-no-such-net" });
        for (k, v) in extra.as_object().expect("an object") {
            nic[k] = v.clone();
        }
        with(&base, "networks", json!([nic]))
    };
    let mut special = Specials::default();
    for mac in [
        "zz:zz:zz:zz:zz:zz",
        "52:54:00:00:00",
        "52:54:00:00:00:00:01",
        "52-54-00-00-00-01",
        "01:00:5e:00:00:01",
        "",
        "52:54:00:00:00:0g",
        "52:54:00:00:00:01\n",
    ] {
        special.add(&format!("mac {mac:?}"), nic(json!({ "mac": mac })), "networks[0].mac");
    }
    for ip in ["10.1", "999.1.1.1", "10.77.0.1/24", "::1", "", "10.77.0.1; reboot", "0x0a.0.0.1"] {
        special.add(&format!("ip {ip:?}"), nic(json!({ "ip": ip })), "networks[0].ip");
    }
    for subnet in ["10.88.0.0", "10.88.0.0/33", "nonsense", "10.88.0.0/24/1"] {
        special.add(&format!("subnet {subnet:?}"), nic(json!({ "subnet": subnet })), "networks[0].subnet");
    }
    for name in bad_names() {
        special.add("network name", nic(json!({ "network": name })), "networks[0].network");
        special.add("bridge name", with(&base, "networks", json!([{ "bridge": name }])), "networks[0].bridge");
    }
    special.add("hostname injection", nic(json!({ "hostname": "</host><host mac='x'/>" })), "networks[0].hostname");
    special.add("network and bridge", nic(json!({ "bridge": "br0" })), "networks[0]");
    special.add("network type unknown", nic(json!({ "type": "tap" })), "networks[0].type");
    special.add("network unknown key", nic(json!({ "colour": "red" })), "networks[0].colour");
    special.add("network item a number", with(&base, "networks", json!([5])), "networks");
    special.add("networks a dict", with(&base, "networks", json!({ "network": "x" })), "networks");
    for (label, disks, parameter) in [
        ("relative disk", json!([{ "path": "disk.qcow2", "target": "vdb" }]), "disks[0].path"),
        ("disk traversal", json!([{ "path": "/var/lib/../../etc/shadow", "target": "vdb" }]), "disks[0].path"),
        ("disk without path", json!([{ "target": "vdb" }]), "disks[0].path"),
        ("disk target traversal", json!([{ "path": "/a.qcow2", "target": "../vdb" }]), "disks[0].target"),
        ("disk item a string", json!(["/a.qcow2"]), "disks"),
        ("disk unknown key", json!([{ "path": "/a.qcow2", "target": "vdb", "cache": "none" }]), "disks[0].cache"),
    ] {
        special.add(label, with(&base, "disks", disks), parameter);
    }
    for (label, cloud_init, parameter) in [
        ("cloud_init unknown key", json!({ "usr": "x" }), "cloud_init.usr"),
        ("cloud_init hostname path", json!({ "hostname": "../x" }), "cloud_init.hostname"),
        ("cloud_init hostname injection", json!({ "hostname": "a\nruncmd: [reboot]" }), "cloud_init.hostname"),
        ("cloud_init packages a dict", json!({ "packages": { "a": 1 } }), "cloud_init.packages"),
        ("cloud_init network_config text", json!({ "network_config": "version 2" }), "cloud_init.network_config"),
        ("cloud_init user control", json!({ "user": "ops\u{0}" }), "cloud_init.user"),
    ] {
        special.add(label, with(&base, "cloud_init", cloud_init), parameter);
    }
    for (label, shares, parameter) in [
        ("share relative", json!([{ "source": "share", "target": "t" }]), "filesystems[0].source"),
        ("share without target", json!([{ "source": "/srv" }]), "filesystems[0].target"),
        ("share tag path", json!([{ "source": "/srv", "target": "a/b" }]), "filesystems[0].target"),
    ] {
        special.add(label, with(&base, "filesystems", shares), parameter);
    }
    for (label, kernel, parameter) in [
        ("kernel relative", json!({ "path": "vmlinuz" }), "kernel.path"),
        ("kernel without path", json!({ "cmdline": "x" }), "kernel.path"),
        ("initrd traversal", json!({ "path": "/boot/vmlinuz", "initrd": "/boot/../../etc/shadow" }), "kernel.initrd"),
    ] {
        special.add(label, with(&base, "kernel", kernel), parameter);
    }
    for (label, metadata) in [
        ("metadata key injection", json!({ "</metadata><devices/>": "x" })),
        ("metadata key with space", json!({ "a b": "x" })),
        ("metadata key empty", json!({ "": "x" })),
        ("metadata groups a dict", json!({ "groups": { "a": 1 } })),
        ("metadata value a list", json!({ "project": ["a"] })),
        ("metadata control", json!({ "project": "a\u{1}" })),
        ("metadata a string", json!("project")),
    ] {
        special.add(label, with(&base, "metadata", metadata), "metadata");
    }
    let xml = "<domain type='qemu'><name>x</name><memory unit='MiB'>64</memory><os><type>hvm</type></os></domain>";
    special.add("empty uri", with(&base, "uri", json!("")), "uri");
    special.add("xml with memory", with(&with(&base, "xml", json!(xml)), "memory", json!(64)), "xml");
    special.add("xml control", with(&base, "xml", json!("<domain>\u{0}</domain>")), "xml");
    for (label, vm, parameter) in [
        ("vm without metadata", json!({ "ram": 64 }), "vm.metadata"),
        ("vm name injection", json!({ "metadata": { "name": "</name><devices/>" } }), "name"),
        ("vm metadata a string", json!({ "metadata": "x" }), "vm.metadata"),
        ("vm disks a dict", json!({ "metadata": { "name": "hx-vm" }, "disks": { "src": "a" } }), "vm.disks"),
        (
            "vm disk without src",
            json!({ "metadata": { "name": "hx-vm" }, "disks": [{ "type": "qcow2" }] }),
            "vm.disks[0].src",
        ),
        (
            "vm net type",
            json!({ "metadata": { "name": "hx-vm" }, "net": { "type": "tap", "source": "x" } }),
            "vm.net.type",
        ),
        (
            "vm net mac",
            json!({ "metadata": { "name": "hx-vm", "libvirt_pool_dir": "/hx/" }, "disks": [{ "src": "a.qcow2" }], "net": { "source": "vfnet", "mac": "nope" } }),
            "vm.net.mac",
        ),
        ("vm a list", json!([1]), "vm"),
        ("vm unknown key", json!({ "metadata": { "name": "hx-vm" }, "colour": "red" }), "vm.colour"),
        ("vm metadata unknown key", json!({ "metadata": { "name": "hx-vm", "owner": "x" } }), "vm.metadata.owner"),
        (
            "vm net type vde",
            json!({ "metadata": { "name": "hx-vm" }, "net": { "type": "vde", "source": "/tmp/switch" } }),
            "vm.net.type",
        ),
        ("vm without metadata.name", json!({ "metadata": { "hostname": "hx-vm" } }), "vm.metadata.name"),
        (
            "vm kernel unknown key",
            json!({ "metadata": { "name": "hx-vm" }, "kernel": { "src": "k", "initramfs": "i" } }),
            "vm.kernel.initramfs",
        ),
    ] {
        special.add(label, json!({ "vm": vm, "uri": bed.uri, "state": "present" }), parameter);
    }
    let no_name = json!({ "uri": bed.uri, "pool": bed.disks_pool, "state": "present" });
    for (label, vms, parameter) in [
        ("vms empty", json!([]), "vms"),
        ("vms duplicate names", json!([{ "name": "hx-dup", "image": "b" }, { "name": "hx-dup", "image": "b" }]), "vms"),
        ("vms node spec without stem", json!(["3"]), "stem"),
        ("vms null item", json!([null]), "vms[0]"),
        ("vms list item", json!([[1]]), "vms[0]"),
        ("vms item without image", json!([{ "name": "hx-a" }]), "vms[0].image"),
        ("vms item unknown key", json!([{ "name": "hx-a", "image": "b", "colour": 1 }]), "vms[0].colour"),
        ("vms item without name", json!([{ "image": "b" }]), "vms[0].name"),
        ("vms item bad memory", json!([{ "name": "hx-a", "image": "b", "memory": "lots" }]), "vms[0].memory"),
        (
            "vms item bad mac",
            json!([{ "name": "hx-a", "image": "b", "networks": [{ "network": "n", "mac": "x" }] }]),
            "vms[0].networks[0].mac",
        ),
        ("vms a dict", json!({ "name": "hx-a" }), "vms"),
    ] {
        special.add(label, with(&no_name, "vms", vms), parameter);
    }
    special.add(
        "stem traversal",
        json!({ "stem": "../hx", "vms": ["1"], "image": "b", "state": "present", "uri": bed.uri }),
        "vms[0]",
    );
    special.add(
        "node spec garbage",
        json!({ "stem": "hx-n", "vms": ["x;y"], "image": "b", "state": "present", "uri": bed.uri }),
        "vms[0]",
    );
    special.add(
        "image alias not a string",
        json!({ "stem": "hx-n", "vms": ["1:deb"], "images": { "deb": 5 }, "state": "present", "uri": bed.uri }),
        "images.deb",
    );
    special.add("nothing at all", json!({}), "name");
    special.add("only state", json!({ "state": "present" }), "name");
    special.add("disk_size without image", json!({ "name": "hx-a", "disk_size": "1G", "disks": [{ "path": "/a.qcow2", "target": "vdb" }], "uri": bed.uri }), "disk_size");
    special.add("image volume not found", base.clone(), "image");
    special.add(
        "pool not found",
        with(&with(&base, "pool", json!("hx-no-such-pool")), "image", json!(bed.base_volume)),
        "pool",
    );
    special.add(
        "one MAC for two VMs of one call",
        with(&base, "vms", json!([{ "name": "hx-m1", "networks": [{ "network": bed.network, "mac": "52:54:00:7e:00:01" }] },
                                  { "name": "hx-m2", "networks": [{ "network": bed.network, "mac": "52:54:00:7e:00:01" }] }])),
        "networks",
    );
    special.add(
        "a secret in metadata",
        with(&base, "metadata", json!({ "ansible_become_password": "hx" })),
        "metadata.ansible_become_password",
    );
    let base_stem = bed.base_volume.trim_end_matches(".qcow2");
    special.add(
        "a VM named like its base volume, in its pool",
        json!({ "name": base_stem, "uri": bed.uri, "image": bed.base_volume, "image_pool": bed.images_pool,
                "pool": bed.images_pool, "state": "present" }),
        "name",
    );
    special.add("vcpus zero", with(&base, "vcpus", json!(0)), "vcpus");
    special.add("firmware not one of the choices", with(&base, "firmware", json!("uefi")), "firmware");
    special.add("a loader that does not exist", with(&base, "loader", json!("/nonexistent/OVMF_CODE.fd")), "loader");
    special.add("secure_boot without UEFI", with(&base, "secure_boot", json!(true)), "secure_boot");
    special.add(
        "an image file that does not exist",
        with(&base, "image_upload", json!("/nonexistent/hx.qcow2")),
        "image_upload",
    );
    special.add(
        "an image file that is no disk image",
        with(&base, "image_upload", json!("/etc/hostname")),
        "image_upload",
    );
    special.add("tpm with a given definition", with(&with(&base, "xml", json!(xml)), "tpm", json!(true)), "tpm");
    let mut no_image = base.clone();
    no_image.as_object_mut().map(|args| args.remove("image"));
    special.mistakes(
        "no image and a bad MAC",
        with(&no_image, "networks", json!([{ "network": "hx-no-such-net", "mac": "zz:zz:zz" }])),
        &["image: required", "networks[0].mac"],
    );
    special.mistakes(
        "unknown key, bad state, bad wait_timeout",
        with(&with(&with(&base, "colour", json!(1)), "state", json!("bogus")), "wait_timeout", json!("soon")),
        &["module: colour.", "value of state must be one of", "argument 'wait_timeout'"],
    );
    special.mistakes(
        "two VMs, three mistakes",
        with(
            &no_name,
            "vms",
            json!([{ "name": "hx a", "image": "b", "vcpus": 0 },
                   { "name": "hx-b", "image": "b", "networks": [{ "network": "n", "ip": "10.1" }] }]),
        ),
        &["vms[0].name", "vms[0].vcpus", "vms[1].networks[0].ip"],
    );
    special.mistakes(
        "mistakes in three suboptions",
        with(
            &with(&with(&base, "cloud_init", json!({ "usr": "x" })), "disks", json!([{ "target": "vdb" }])),
            "filesystems",
            json!([{ "source": "/srv" }]),
        ),
        &["cloud_init.usr", "disks[0].path", "filesystems[0].target"],
    );
    special.mistakes(
        "a spec mistake and a rule mistake",
        with(&with(&base, "clone", json!("deep")), "networks", json!([{ "network": "hx-no-such-net", "mac": "zz" }])),
        &["value of clone must be one of", "networks[0].mac"],
    );
    special.mistakes(
        "a spec mistake and two placement rules broken",
        with(&with(&base, "hypervisors", json!([])), "vcpus", json!("many")),
        &["argument 'vcpus'", "hypervisors: give at least one", "uri: cannot be combined with hypervisors"],
    );
    special.mistakes(
        "a bad state, a bad memory",
        with(&with(&base, "state", json!("bogus")), "memory", json!("lots")),
        &["value of state must be one of", "memory: "],
    );
    special.mistakes(
        "a spec mistake and a rule mistake in one VM of vms",
        with(
            &no_name,
            "vms",
            json!([{ "name": "hx-a", "image": "b", "vcpus": "x", "networks": [{ "network": "n", "ip": "10.1" }] }]),
        ),
        &["argument 'vms[0].vcpus'", "vms[0].networks[0].ip"],
    );
    special.mistakes(
        "mistakes all over one vm",
        json!({ "uri": bed.uri, "state": "present", "vm": {
            "colour": 1, "metadata": { "owner": "x", "auth": { "token": 1 } },
            "disks": [{ "size": 1 }], "net": { "type": "vde" } } }),
        &[
            "vm.colour",
            "vm.metadata.owner",
            "vm.metadata.name",
            "vm.metadata.auth.token",
            "vm.disks[0].size",
            "vm.disks[0].src",
            "vm.net.type",
        ],
    );
    special.mistakes(
        "three mistakes in two disks",
        with(
            &base,
            "disks",
            json!([{ "path": "hx.qcow2", "target": "../x" }, { "path": "/hx/ok.qcow2", "target": "a/b" }]),
        ),
        &["disks[0].path", "disks[0].target", "disks[1].target"],
    );
    special.mistakes(
        "three mistakes in two shares",
        with(&base, "filesystems", json!([{ "source": "rel", "target": "a/b" }, { "source": "/srv" }])),
        &["filesystems[0].source", "filesystems[0].target", "filesystems[1].target"],
    );
    special.mistakes(
        "three bad metadata keys",
        with(&base, "metadata", json!({ "a b": 1, "ansible_password": "hx-secret", "project": ["p"] })),
        &["\"a b\" is not a usable key", "metadata.ansible_password", "metadata.project"],
    );
    special.add("vcpus beyond u32", with(&base, "vcpus", json!(1u64 << 40)), "vcpus");
    special.add("memory zero MiB", with(&base, "memory", json!("512K")), "memory");
    ModuleCorpus {
        module: "kvm_provision",
        base,
        options: vec![
            ("name", Kind::DomainName),
            ("uri", Kind::Uri),
            ("state", Kind::Choice),
            ("wait", Kind::Choice),
            ("clone", Kind::Choice),
            ("domain_type", Kind::Choice),
            ("wait_timeout", Kind::Count),
            ("stop_timeout", Kind::Count),
            ("vcpus", Kind::Count),
            ("remove_storage", Kind::Bool),
            ("memory", Kind::Size),
            ("disk_size", Kind::Size),
            ("image", Kind::ObjectName),
            ("image_pool", Kind::ObjectName),
            ("pool", Kind::ObjectName),
            ("emulator", Kind::AbsolutePath),
            ("firmware", Kind::AbsolutePath),
            ("loader", Kind::AbsolutePath),
            ("secure_boot", Kind::Bool),
            ("tpm", Kind::Bool),
            ("image_upload", Kind::AbsolutePath),
            ("cloud_init", Kind::Dict),
            ("kernel", Kind::Dict),
        ],
        special,
    }
}

fn snapshot_libvirt(bed: &Bed) -> ModuleCorpus {
    let base = json!({ "name": "hx-none", "uri": bed.uri, "snapshot": "hx-snap", "state": "present" });
    let mut special = Specials::default();
    let without_name = json!({ "uri": bed.uri, "snapshot": "hx-snap" });
    special.add("no domain", without_name.clone(), "name");
    special.add("name and names", with(&base, "names", json!(["hx-a"])), "name");
    special.add("names empty", with(&without_name, "names", json!([])), "names");
    special.add("names duplicate", with(&without_name, "names", json!(["hx-a", "hx-a"])), "names");
    special.add("names with empty", with(&without_name, "names", json!(["hx-a", ""])), "names");
    special.add("names a dict", with(&without_name, "names", json!({ "a": 1 })), "names");
    special.add("no snapshot", json!({ "name": "hx-none", "uri": bed.uri }), "snapshot");
    special.add("backing file without volume_path", with(&base, "mode", json!("backing_file")), "volume_path");
    for path in ["images", "../../etc", "", "/var/lib/../../etc"] {
        special.add(
            &format!("volume_path {path:?}"),
            with(&with(&base, "mode", json!("backing_file")), "volume_path", json!(path)),
            "volume_path",
        );
    }
    for (label, after) in [
        ("after_revert wait", json!({ "wait": "forever" })),
        ("after_revert timeout", json!({ "timeout": "soon" })),
        ("after_revert negative timeout", json!({ "timeout": -3 })),
        ("after_revert unknown", json!({ "colour": 1 })),
        ("after_revert a string", json!("sync")),
        ("after_revert a list", json!([1])),
    ] {
        special.add(label, with(&with(&base, "state", json!("reverted")), "after_revert", after), "after_revert");
    }
    for timeout in [json!(-1), json!(0), json!("x"), json!(1.5)] {
        special.add(
            "shutdown_timeout",
            with(&with(&base, "shutdown_first", json!(true)), "shutdown_timeout", timeout),
            "shutdown_timeout",
        );
    }
    special.add("domain not found", base.clone(), "name");
    special.add("domain not found for revert", with(&base, "state", json!("reverted")), "name");
    special.mistakes(
        "unknown key and bad type",
        with(&with(&base, "colour", json!(1)), "type", json!("both")),
        &["module: colour.", "value of type must be one of"],
    );
    special.mistakes(
        "names twice, no volume_path, negative timeout",
        json!({ "uri": bed.uri, "names": ["hx-a", "hx-a"], "mode": "backing_file",
                "shutdown_first": true, "shutdown_timeout": -1 }),
        &["names: ", "volume_path: ", "shutdown_timeout: "],
    );
    special.mistakes(
        "mistakes inside after_revert and beside it",
        with(&with(&base, "state", json!("gone")), "after_revert", json!({ "wait": "forever", "colour": 1 })),
        &["after_revert.colour", "value of after_revert.wait must be one of", "value of state must be one of"],
    );
    special.mistakes(
        "a spec mistake and a rule mistake",
        with(&with(&with(&base, "type", json!("both")), "shutdown_first", json!(true)), "shutdown_timeout", json!(-1)),
        &["value of type must be one of", "shutdown_timeout: "],
    );
    special.mistakes(
        "a bad state and names twice",
        json!({ "uri": bed.uri, "names": ["hx-a", "hx-a"], "snapshot": "hx-snap", "state": "gone" }),
        &["value of state must be one of", "names: "],
    );
    ModuleCorpus {
        module: "snapshot_libvirt",
        base,
        options: vec![
            ("name", Kind::ObjectName),
            ("snapshot", Kind::ObjectName),
            ("uri", Kind::Uri),
            ("state", Kind::Choice),
            ("type", Kind::Choice),
            ("mode", Kind::Choice),
            ("memory", Kind::Bool),
            ("quiesce", Kind::Bool),
            ("shutdown_first", Kind::Bool),
            ("names", Kind::StrList),
        ],
        special,
    }
}

fn guest_provision(bed: &Bed) -> ModuleCorpus {
    let base = json!({ "state": "started", "name": "hx-none", "uri": bed.uri, "wait": "none", "timeout": 5 });
    let mut special = Specials::default();
    special.add("no state", json!({ "name": "hx-none" }), "state");
    special.add("started without name", json!({ "state": "started" }), "name");
    special.add("stopped without name", json!({ "state": "stopped" }), "name");
    special.add("phases without lookup_dir", json!({ "state": "phases" }), "lookup_dir");
    special.add("reachable without host", json!({ "state": "reachable" }), "host");
    for (option, dir) in [("platform_name", ".."), ("target_name", "a/b"), ("platform_name", "/etc")] {
        let args = json!({ "state": "phases", "lookup_dir": "/tmp", "platform_name": "p", option: dir });
        special.add("phase directory", args, option);
    }
    special.add(
        "cache_prepared without project",
        json!({ "state": "cache_prepared", "name": "hx-none" }),
        "project_id",
    );
    for port in [json!(70000), json!(-1), json!("ssh"), json!(1.5)] {
        special.add("port", json!({ "state": "reachable", "host": "hx-nowhere.invalid", "port": port }), "port");
    }
    for count in [json!(-1), json!("x"), json!(1u64 << 40)] {
        special.add(
            "retry_count",
            json!({ "state": "stopped", "name": "hx-none", "retry_count": count }),
            "retry_count",
        );
    }
    for delay in [json!(-1), json!("x")] {
        special.add(
            "retry_delay",
            json!({ "state": "stopped", "name": "hx-none", "retry_delay": delay }),
            "retry_delay",
        );
    }
    special.add(
        "allowed_phases a dict",
        json!({ "state": "phases", "lookup_dir": "/nonexistent/hx", "allowed_phases": { "a": 1 } }),
        "allowed_phases",
    );
    special.add("domain not found", base.clone(), "name");
    special.mistakes(
        "unknown key and no state",
        json!({ "zz_no_such_option": 1, "name": "hx-none" }),
        &["zz_no_such_option", "missing required arguments: state"],
    );
    special.mistakes(
        "unknown key, bad wait, bad timeout",
        with(&with(&with(&base, "zz", json!(1)), "wait", json!("forever")), "timeout", json!("soon")),
        &["module: zz.", "value of wait must be one of", "argument 'timeout'"],
    );
    special.mistakes(
        "bad port and bad timeout",
        json!({ "state": "reachable", "host": "hx-nowhere.invalid", "port": 70000, "timeout": -1 }),
        &["port: must be", "timeout: must be"],
    );
    special.mistakes(
        "a spec mistake and a rule mistake",
        json!({ "state": "reachable", "host": "hx-nowhere.invalid", "port": 70000, "wait": "forever" }),
        &["value of wait must be one of", "port: must be"],
    );
    special.mistakes(
        "a bad quiesce, a revision of auto, a bad project",
        json!({ "state": "cache_saved", "name": "hx-none", "uri": bed.uri, "project_id": "hx/a", "revision": "auto",
                "quiesce": "maybe" }),
        &["argument 'quiesce'", "revision: ", "project_id: "],
    );
    special.add(
        "domain not found on stop",
        json!({ "state": "stopped", "name": "hx-none", "uri": bed.uri, "retry_count": 0 }),
        "name",
    );
    ModuleCorpus {
        module: "guest_provision",
        base,
        options: vec![
            ("state", Kind::Choice),
            ("wait", Kind::Choice),
            ("uri", Kind::Uri),
            ("timeout", Kind::Count),
            ("prune", Kind::Bool),
            ("quiesce", Kind::Bool),
        ],
        special,
    }
}

fn libvirt_ping(bed: &Bed) -> ModuleCorpus {
    // Its options take any text and it has no rules of its own: the mistakes it can be given
    // are unknown names.
    let mut special = Specials::default();
    special.mistakes("two unknown keys", json!({ "uri": bed.uri, "colour": 1, "size": 2 }), &["colour", "size"]);
    special.mistakes(
        "three unknown keys",
        json!({ "uri": bed.uri, "dta": "x", "colour": 1, "size": 2 }),
        &["dta", "colour", "size"],
    );
    ModuleCorpus { module: "libvirt_ping", base: json!({ "uri": bed.uri }), options: vec![("uri", Kind::Uri)], special }
}

/// Cases every module gets: unknown keys, arguments that are not an object or not JSON.
fn protocol_cases(module: &'static str, base: &Value) -> Vec<Case> {
    let mut cases = vec![];
    for key in ["colour", "NAME", "name ", "__proto__", "../etc/passwd", "ñame", "$(reboot)", "a\u{0}b", ""] {
        let args = with(base, key, json!(1));
        cases.push(Case {
            module,
            label: format!("unknown key {key:?}"),
            payload: Payload::Json(args),
            parameters: vec![key.to_string()],
        });
    }
    let not_objects: [(&str, &[u8]); 9] = [
        ("a list", b"[1, 2]"),
        ("a string", b"\"name=x\""),
        ("a number", b"42"),
        ("null", b"null"),
        ("truncated JSON", b"{\"name\": "),
        ("empty file", b""),
        ("binary garbage", b"\xff\xfe\x00\x01garbage"),
        ("wrapped args not an object", b"{\"ANSIBLE_MODULE_ARGS\": \"name=x\"}"),
        ("a YAML document", b"name: x\nstate: present\n"),
    ];
    for (label, bytes) in not_objects {
        cases.push(Case {
            module,
            label: label.to_string(),
            payload: Payload::Raw(bytes.to_vec()),
            parameters: vec!["module arguments".into()],
        });
    }
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    cases.push(Case {
        module,
        label: "nested 100000 deep".into(),
        payload: Payload::Raw(deep.into_bytes()),
        parameters: vec!["module arguments".into()],
    });
    cases
}

fn corpus(bed: &Bed) -> Vec<Case> {
    let mut cases = vec![];
    for module in [kvm_provision(bed), snapshot_libvirt(bed), guest_provision(bed), libvirt_ping(bed)] {
        for (option, kind) in &module.options {
            for value in values_of(*kind) {
                let label = format!("{option} = {}", short(&value));
                let payload = Payload::Json(with(&module.base, option, value));
                cases.push(Case { module: module.module, label, payload, parameters: vec![option.to_string()] });
            }
        }
        for (label, args, parameters) in module.special.0 {
            cases.push(Case { module: module.module, label, payload: Payload::Json(args), parameters });
        }
        cases.extend(protocol_cases(module.module, &module.base));
    }
    cases
}

fn short(value: &Value) -> String {
    let text = value.to_string();
    match text.char_indices().nth(48) {
        Some((cut, _)) => format!("{}... ({} bytes)", &text[..cut], text.len()),
        None => text,
    }
}

/// Runs one case as Ansible would and judges the reply.
fn judge(bed: &Bed, case: &Case) -> (Verdict, String) {
    let dir = bed::tempdir();
    let args_file = dir.join("args");
    let bytes = match &case.payload {
        Payload::Json(args) => args.to_string().into_bytes(),
        Payload::Raw(bytes) => bytes.clone(),
    };
    std::fs::write(&args_file, bytes).expect("write the args file");
    let binary = bed.binary(case.module);
    let output = bed.in_netns("timeout", &["120", path_str(&binary), path_str(&args_file)]);
    let _ = std::fs::remove_dir_all(&dir);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let code = output.status.code();
    if matches!(code, Some(101 | 134) | None) {
        return (Verdict::Panicked, format!("exit {code:?}: {stdout}"));
    }
    let Ok(reply) = serde_json::from_str::<Value>(stdout.trim()) else {
        return (Verdict::NotJson, format!("stdout: {stdout} stderr: {}", String::from_utf8_lossy(&output.stderr)));
    };
    let msg = reply["msg"].as_str().unwrap_or_default();
    let detail = short_text(msg);
    if msg.contains("panicked") {
        return (Verdict::Panicked, detail);
    }
    if reply["failed"] != json!(true) || !reply.is_object() {
        return (Verdict::Accepted, short_text(&reply.to_string()));
    }
    if case.parameters.iter().any(|parameter| !msg.contains(parameter.as_str())) {
        return (Verdict::Unnamed, detail);
    }
    (Verdict::Refused, detail)
}

fn short_text(text: &str) -> String {
    match text.char_indices().nth(300) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_string(),
    }
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

/// Every domain, network, pool, volume and snapshot of the bed's hypervisor, as
/// `kind name` lines.
fn hypervisor_objects(bed: &Bed) -> BTreeSet<String> {
    let virsh = |args: &[&str]| -> Vec<String> {
        let output = Command::new("virsh").arg("-c").arg(&bed.uri).args(args).output().expect("run virsh");
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()
    };
    let mut objects = BTreeSet::new();
    for domain in virsh(&["list", "--all", "--name"]) {
        for snapshot in virsh(&["snapshot-list", &domain, "--name"]) {
            objects.insert(format!("snapshot {domain}/{snapshot}"));
        }
        objects.insert(format!("domain {domain}"));
    }
    for network in virsh(&["net-list", "--all", "--name"]) {
        objects.insert(format!("network {network}"));
    }
    for pool in virsh(&["pool-list", "--all", "--name"]) {
        for line in virsh(&["vol-list", &pool]).iter().skip(2) {
            let volume = line.split_whitespace().next().unwrap_or_default();
            objects.insert(format!("volume {pool}/{volume}"));
        }
        objects.insert(format!("pool {pool}"));
    }
    objects
}

/// A change the corpus may have caused: an object named by a case. Other tests share the
/// bed and change it meanwhile; their objects carry their own prefixes.
fn from_the_corpus(object: &str) -> bool {
    let name = object.split_once(' ').map_or(object, |(_, name)| name);
    let name = name.rsplit('/').next().unwrap_or(name);
    name.starts_with(PREFIX) || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c))
}

#[test]
#[ignore = "needs the test bed: cargo xtask test"]
fn every_module_refuses_hostile_input_naming_the_parameter() {
    let bed = Bed::get();
    let cases = corpus(bed);
    let before = hypervisor_objects(bed);
    let started = Instant::now();
    let verdicts: Vec<(Verdict, String)> = std::thread::scope(|scope| {
        let workers: Vec<_> = cases
            .chunks(cases.len().div_ceil(4))
            .map(|chunk| scope.spawn(move || chunk.iter().map(|case| judge(bed, case)).collect::<Vec<_>>()))
            .collect();
        workers.into_iter().flat_map(|worker| worker.join().expect("a corpus worker")).collect()
    });
    let elapsed = started.elapsed();
    let after = hypervisor_objects(bed);
    let changed: Vec<&String> = before.symmetric_difference(&after).filter(|object| from_the_corpus(object)).collect();
    let others = before.symmetric_difference(&after).count() - changed.len();

    let mut bad = vec![];
    println!("\nhostile corpus: {} cases in {:.1} s", cases.len(), elapsed.as_secs_f64());
    println!(
        "{:<18} {:>6} {:>8} {:>8} {:>9} {:>9} {:>9}",
        "module", "cases", "refused", "panics", "non-JSON", "unnamed", "accepted"
    );
    for module in ["kvm_provision", "snapshot_libvirt", "guest_provision", "libvirt_ping"] {
        let of_module: Vec<_> = cases.iter().zip(&verdicts).filter(|(case, _)| case.module == module).collect();
        let count = |wanted: Verdict| of_module.iter().filter(|(_, (verdict, _))| *verdict == wanted).count();
        println!(
            "{module:<18} {:>6} {:>8} {:>8} {:>9} {:>9} {:>9}",
            of_module.len(),
            count(Verdict::Refused),
            count(Verdict::Panicked),
            count(Verdict::NotJson),
            count(Verdict::Unnamed),
            count(Verdict::Accepted)
        );
        for (case, (verdict, detail)) in of_module {
            if *verdict != Verdict::Refused {
                let expected = case.parameters.join("', '");
                bad.push(format!("{module} [{}] expected '{expected}' — {verdict:?}: {detail}", case.label));
            }
        }
    }
    println!("changes on the hypervisor from the corpus: {} (other tests' changes meanwhile: {others})", changed.len());
    for line in &bad {
        println!("  {line}");
    }
    assert!(cases.len() >= 300, "the corpus has {} cases", cases.len());
    assert!(bad.is_empty(), "{} cases were not refused naming their parameter", bad.len());
    assert!(changed.is_empty(), "the corpus changed the hypervisor: {changed:?}");
}

/// Secrets given to kvm_provision in every place it takes one; none may appear anywhere.
const SECRETS: [&str; 5] = [
    "$6$hxsalt$hx-secret-password-hash",
    "#cloud-config\nchpasswd: {list: 'ops:hx-secret-user-data'}",
    "hx-secret-farm-password",
    "hx-secret-become-password",
    "hx-secret-inventory-password",
];

/// A VM definition carrying [`SECRETS`]: cloud-init's and ansible_farm's `auth`. (A secret in
/// `metadata` is refused: see the end of [`secrets_never_reach_any_output`].)
fn secret_vm(bed: &Bed, name: &str) -> Value {
    json!({
        "uri": bed.uri, "pool": bed.disks_pool, "image": bed.base_volume, "image_pool": bed.images_pool,
        "memory": 256, "networks": [bed.network], "state": "present",
        "vms": [{
            "vm": { "metadata": { "name": name, "auth": { "user": "ops", "password": SECRETS[2], "become_password": SECRETS[3] } } },
            "cloud_init": { "user": "ops", "password_hash": SECRETS[0], "user_data": SECRETS[1] },
        }],
    })
}

/// Removes the VM and the volumes made for it however the test ends.
struct Removed(Value);

impl Drop for Removed {
    fn drop(&mut self) {
        let mut args = self.0.clone();
        args["state"] = json!("absent");
        args["remove_storage"] = json!(true);
        Bed::get().run_module("kvm_provision", args);
    }
}

/// The secrets found in `text`, as written or as JSON escapes them.
fn leaked(text: &str) -> Vec<&'static str> {
    SECRETS
        .into_iter()
        .filter(|secret| text.contains(secret) || text.contains(json!(secret).to_string().trim_matches('"')))
        .collect()
}

/// Secrets never leave kvm_provision: not in results, invocation, warnings, diff or
/// messages, at any verbosity, in check mode, on success and on failure, nor through
/// ansible-playbook -vvvv; the seed that holds them is a 0600 volume, removed with the VM.
#[test]
#[ignore = "needs the test bed: cargo xtask test"]
fn secrets_never_reach_any_output() {
    let bed = Bed::get();
    let name = bed.unique_name("sec");
    let args = secret_vm(bed, &name);
    let _cleanup = Removed(args.clone());
    let mut outputs = vec![];
    for verbosity in 0..=4 {
        for (check, diff) in [(true, true), (false, true), (false, false)] {
            let mut run = args.clone();
            run["_ansible_verbosity"] = json!(verbosity);
            run["_ansible_check_mode"] = json!(check);
            run["_ansible_diff"] = json!(diff);
            let reply = bed.run_module("kvm_provision", run);
            assert_ne!(reply["failed"], true, "{reply}");
            outputs.push(reply.to_string());
        }
    }
    let seed = bed.disks_dir.join(format!("{name}-seed.iso"));
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&seed).expect("the seed volume").permissions());
    assert_eq!(mode & 0o777, 0o600, "{} is {mode:o}", seed.display());
    let seed_bytes = std::fs::read(&seed).expect("read the seed");
    let in_seed = |secret: &str| seed_bytes.windows(secret.len()).any(|window| window == secret.as_bytes());
    assert!(in_seed(SECRETS[1]), "masking must not reach the guest: the seed carries the real user data");
    assert!(
        outputs[0].contains("VALUE_SPECIFIED_IN_NO_LOG_PARAMETER"),
        "invocation is masked, not dropped: {}",
        outputs[0]
    );

    // A read-only libvirt client sees the definition: no secret may be in it.
    let readonly = std::process::Command::new("virsh")
        .args(["-r", "-c", &bed.uri, "dumpxml", &name])
        .output()
        .expect("virsh -r dumpxml");
    let definition = String::from_utf8_lossy(&readonly.stdout).into_owned();
    assert!(definition.contains(&name), "virsh -r dumpxml {name}: {}", String::from_utf8_lossy(&readonly.stderr));
    assert!(leaked(&definition).is_empty(), "secrets in the stored definition: {:?}", leaked(&definition));

    let mut failing = args.clone();
    failing["vms"][0]["memory"] = json!(SECRETS[2]);
    outputs.push(bed.run_module("kvm_provision", failing).to_string());
    // metadata is stored in the domain XML: a secret there is refused, naming the key.
    let mut stored = args.clone();
    stored["metadata"] = json!({ "ansible_password": SECRETS[4] });
    let refused = bed.run_module("kvm_provision", stored);
    assert_eq!(refused["failed"], true, "{refused}");
    assert!(refused["msg"].as_str().unwrap_or_default().contains("metadata.ansible_password"), "{refused}");
    outputs.push(refused.to_string());

    let dir = bed::tempdir();
    let playbook = dir.join("secrets.yml");
    let task = |state: &str| {
        let mut module_args = args.clone();
        module_args["state"] = json!(state);
        module_args["remove_storage"] = json!(state == "absent");
        json!({ "name": format!("kvm_provision {state}"), "virtfarm.libvirt.kvm_provision": module_args })
    };
    let play = json!([{ "hosts": "localhost", "connection": "local", "gather_facts": false,
        "tasks": [task("present"), task("absent")] }]);
    std::fs::write(&playbook, play.to_string()).expect("write the playbook");
    let run = bed.ansible("ansible-playbook", &["-i", "localhost,", "-vvvv", "--diff", path_str(&playbook)]);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(run.success, "ansible-playbook failed:\n{}\n{}", run.stdout, run.stderr);
    outputs.push(run.stdout);
    outputs.push(run.stderr);
    assert!(!seed.exists(), "the seed is removed with the VM");

    let leaks: Vec<_> = outputs.iter().flat_map(|output| leaked(output)).collect();
    println!(
        "\nsecrets: {} outputs searched (verbosity 0-4, check, diff, failure, ansible-playbook -vvvv), leaks: {}",
        outputs.len(),
        leaks.len()
    );
    assert!(leaks.is_empty(), "leaked: {leaks:?}");
}

/// Timeouts near i64::MAX are valid values: accepted, and never overflow the clock where a
/// wait begins (a deadline, a retry delay times the retry count).
#[test]
#[ignore = "needs the test bed: cargo xtask test"]
fn timeouts_near_i64_max_never_overflow() {
    let bed = Bed::get();
    let vm = bed.define_vm(&bed.unique_name("tmo"));
    let max = i64::MAX;
    // dnsmasq answers on the bed's gateway, port 53, at once: the wait starts and ends.
    let reachable = json!({ "state": "reachable", "host": bed.gateway, "port": 53, "banner": "", "timeout": max });
    let stopped =
        json!({ "state": "stopped", "uri": bed.uri, "name": vm.name, "retry_count": u32::MAX, "retry_delay": max });
    let provisioned = json!({ "uri": bed.uri, "name": vm.name, "xml": bed.domain_xml(&vm.name, "qemu", &vm.disk),
                              "state": "stopped", "wait_timeout": max, "stop_timeout": max });
    for (module, args) in [("guest_provision", reachable), ("guest_provision", stopped), ("kvm_provision", provisioned)]
    {
        let result = bed.run_module(module, args.clone());
        assert!(result.get("failed").is_none(), "{module} {args}: {result}");
    }
}
