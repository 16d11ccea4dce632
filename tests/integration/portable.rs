use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use bed::{tempdir, Bed, TestVm};
use serde_json::{json, Value};

/// Every binary the collection ships, by its path in the collection.
const SHIPPED: &[&str] = &[
    "plugins/modules/kvm_provision",
    "plugins/modules/snapshot_libvirt",
    "plugins/modules/guest_provision",
    "plugins/modules/libvirt_ping",
    "libexec/libvirt_inventory",
];

fn shipped(bed: &Bed) -> impl Iterator<Item = PathBuf> + '_ {
    SHIPPED.iter().map(|path| bed.collections_path.join("ansible_collections/virtfarm/libvirt").join(path))
}

/// The symbol versions `<prefix>x.y.z` a binary needs, as `objdump -T` lists them.
fn needed_versions(binary: &Path, prefix: &str) -> Vec<Vec<u32>> {
    let output = Command::new("objdump").arg("-T").arg(binary).output().expect("run objdump (binutils)");
    assert!(output.status.success(), "objdump -T {}: {}", binary.display(), String::from_utf8_lossy(&output.stderr));
    let mut versions: Vec<Vec<u32>> = String::from_utf8_lossy(&output.stdout)
        .split(|c: char| c.is_whitespace() || c == '(' || c == ')')
        .filter_map(|word| word.strip_prefix(prefix))
        .filter_map(|version| version.split('.').map(|n| n.parse().ok()).collect())
        .collect();
    versions.sort();
    versions.dedup();
    versions
}

/// Every shipped binary starts with glibc 2.28 (RHEL 8) and libvirt 4.1, as the module docs
/// say: no symbol it needs has a newer version.
#[test]
#[ignore = "needs the test bed: cargo xtask test"]
fn shipped_binaries_need_no_glibc_above_2_28_nor_libvirt_above_4_1() {
    let bed = Bed::get();
    for binary in shipped(bed) {
        let glibc = needed_versions(&binary, "GLIBC_");
        assert!(!glibc.is_empty(), "{} needs no glibc symbol: not a glibc binary?", binary.display());
        assert!(glibc.last() <= Some(&vec![2, 28]), "{} needs GLIBC_{:?}", binary.display(), glibc.last());
        let libvirt = needed_versions(&binary, "LIBVIRT_");
        assert!(!libvirt.is_empty(), "{} needs no libvirt symbol", binary.display());
        assert!(libvirt.last() <= Some(&vec![4, 1, 0]), "{} needs LIBVIRT_{:?}", binary.display(), libvirt.last());
    }
}

/// Runs `program` with `args` in the bullseye root, with the bed's libvirt socket directory, the
/// installed collection (at /opt/collection) and a fresh /tmp bound into it. The binds live in
/// a mount namespace of this run only: the cached root is never changed.
fn in_bullseye(bed: &Bed, tmp: &Path, program: &str, args: &[&str]) -> Output {
    assert!(
        bed.bullseye_root.join("usr/bin/python3").exists(),
        "bed.json names no bullseye root ({}): bring the bed up with this version (cargo xtask bed up)",
        bed.bullseye_root.display()
    );
    let script = r#"set -e; root=$1 collection=$2 tmp=$3; shift 3
mount --bind /run/libvirt "$root/run/libvirt"
mount --bind -o ro "$collection" "$root/opt/collection"
mount --bind "$tmp" "$root/tmp"
exec chroot "$root" "$@""#;
    let collection = bed.collections_path.join("ansible_collections/virtfarm/libvirt");
    Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", script, "sh"])
        .args([&bed.bullseye_root, &collection, tmp])
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run unshare")
}

/// Runs a shipped module in the bullseye root as Ansible would; returns its one JSON result.
fn module_in_bullseye(bed: &Bed, module: &str, args: Value) -> Value {
    let tmp = tempdir();
    std::fs::write(tmp.join("args"), args.to_string()).expect("write the args file");
    let output = in_bullseye(bed, &tmp, &format!("/opt/collection/plugins/modules/{module}"), &["/tmp/args"]);
    let _ = std::fs::remove_dir_all(&tmp);
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "{module} in bullseye printed no JSON ({e}):\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

/// Debian 11 (glibc 2.31, libvirt 7.0): the shipped binaries start and talk to the bed's daemon.
#[test]
#[ignore = "needs the test bed: cargo xtask test"]
fn shipped_binaries_run_on_debian_bullseye() {
    let bed = Bed::get();
    let name = bed.unique_name("bullseye");
    let _vm: TestVm = bed.define_vm(&name);

    let ping = module_in_bullseye(bed, "libvirt_ping", json!({"uri": bed.uri}));
    assert_eq!(ping["failed"], Value::Null, "libvirt_ping: {ping}");
    let listed = module_in_bullseye(bed, "snapshot_libvirt", json!({"uri": bed.uri, "name": name, "state": "list"}));
    assert_eq!(listed["failed"], Value::Null, "snapshot_libvirt state=list: {listed}");

    let tmp = tempdir();
    let inventory = in_bullseye(bed, &tmp, "/opt/collection/libexec/libvirt_inventory", &["--list"]);
    let _ = std::fs::remove_dir_all(&tmp);
    let inventory: Value = serde_json::from_slice(&inventory.stdout).unwrap_or_else(|e| {
        panic!("libvirt_inventory --list in bullseye: {e}: {}", String::from_utf8_lossy(&inventory.stderr))
    });
    assert!(inventory["_meta"]["hostvars"].get(&name).is_some(), "{name} is not listed: {inventory}");
}
