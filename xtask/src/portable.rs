//! Release binaries that start on any x86_64 Linux with glibc 2.28 or newer and a libvirt client
//! library, whatever the build machine's own glibc.
//!
//! cargo-zigbuild links with zig, which carries the glibc of each release as link stubs: the
//! target `x86_64-unknown-linux-gnu.2.28` gets no symbol version above 2.28. libvirt is linked
//! the same way, against stubs of `libvirt.so.0` and `libvirt-qemu.so.0` generated here from the
//! public, versioned symbols the machine's libraries export: the build machine's libraries
//! themselves need a newer glibc, which a 2.28 link cannot take in, and the binaries only need
//! the symbols' names and versions, which libvirt never changes once released.
//! Both tools are pinned and installed by xtask under the cache directory.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::{setup, sh};

/// The oldest glibc the shipped binaries start on (RHEL 8 and its rebuilds).
pub const GLIBC_FLOOR: &str = "2.28";
/// The target whose glibc suffix tells cargo-zigbuild the floor.
pub const TARGET: &str = "x86_64-unknown-linux-gnu";
const CARGO_ZIGBUILD_VERSION: &str = "0.24.1";
const ZIGLANG_VERSION: &str = "0.17.1";

/// The libvirt client libraries the binaries link: pkg-config name, soname, symbol version prefix.
const LIBVIRT_LIBRARIES: &[(&str, &str, &str)] =
    &[("libvirt", "libvirt.so.0", "LIBVIRT_"), ("libvirt-qemu", "libvirt-qemu.so.0", "LIBVIRT_QEMU_")];

/// Builds `bins` in release mode for the glibc floor; returns the directory that holds them.
pub fn build(root: &Path, bins: &[&str]) -> Result<PathBuf> {
    let zigbuild = tools()?;
    let stubs = libvirt_stubs(&root.join("target/libvirt-stub"))?;
    let target = format!("{TARGET}.{GLIBC_FLOOR}");
    let mut args = vec!["zigbuild", "--release", "--target", &target];
    for bin in bins {
        args.extend(["--bin", bin]);
    }
    let status = std::process::Command::new(&zigbuild.cargo_zigbuild)
        .args(&args)
        .current_dir(root)
        // Only the stubs' .pc files: the machine's own would put its libvirt.so on the link line.
        .env("PKG_CONFIG_LIBDIR", &stubs)
        .env("CARGO_ZIGBUILD_ZIG_PATH", &zigbuild.zig)
        .status()
        .context("cannot run cargo-zigbuild")?;
    if !status.success() {
        bail!("cargo zigbuild failed ({status})");
    }
    Ok(root.join("target").join(TARGET).join("release"))
}

struct Tools {
    cargo_zigbuild: PathBuf,
    zig: PathBuf,
}

/// cargo-zigbuild and zig, both as wheels from PyPI (cargo-zigbuild's carries its built binary:
/// minutes of compiling saved on every fresh machine), in a venv of the cache keyed on their versions.
fn tools() -> Result<Tools> {
    let dir = setup::cache_dir().join(format!("tools/zigbuild-{CARGO_ZIGBUILD_VERSION}-zig-{ZIGLANG_VERSION}"));
    let tools = Tools { cargo_zigbuild: dir.join("bin/cargo-zigbuild"), zig: dir.join("bin/python-zig") };
    if tools.cargo_zigbuild.exists() && tools.zig.exists() {
        return Ok(tools);
    }
    let dir_str = dir.to_str().context("non-UTF-8 cache directory")?;
    sh::run("python3", &["-m", "venv", dir_str])?;
    let pip = dir.join("bin/pip");
    let wheels = [format!("cargo-zigbuild=={CARGO_ZIGBUILD_VERSION}"), format!("ziglang=={ZIGLANG_VERSION}")];
    sh::run(
        pip.to_str().context("non-UTF-8 cache directory")?,
        &["install", "-q", "--only-binary=:all:", &wheels[0], &wheels[1]],
    )?;
    // cargo-zigbuild takes a command for zig; the wheel's zig runs as `python -m ziglang`.
    let python = dir.join("bin/python3");
    std::fs::write(&tools.zig, format!("#!/bin/sh\nexec {} -m ziglang \"$@\"\n", python.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&tools.zig, std::fs::Permissions::from_mode(0o755))?;
    Ok(tools)
}

/// Writes link stubs of the libvirt client libraries, with a .pc file each, into `dir`;
/// returns the directory for PKG_CONFIG_LIBDIR.
fn libvirt_stubs(dir: &Path) -> Result<PathBuf> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    for (package, soname, prefix) in LIBVIRT_LIBRARIES {
        let libdir = sh::output("pkg-config", &["--variable=libdir", package])
            .with_context(|| format!("{package} not found by pkg-config: install libvirt-dev"))?;
        let version = sh::output("pkg-config", &["--modversion", package])?;
        let real = Path::new(libdir.trim()).join(soname);
        let dynamic = sh::output("objdump", &["-T", real.to_str().context("non-UTF-8 path")?])?;
        let symbols = exported(&dynamic, prefix);
        if symbols.is_empty() {
            bail!("{} exports no symbol of version {prefix}*", real.display());
        }
        let (source, script) = stub_source(&symbols);
        let c = dir.join(format!("{package}.c"));
        let map = dir.join(format!("{package}.map"));
        std::fs::write(&c, source)?;
        std::fs::write(&map, script)?;
        let out = dir.join(soname);
        sh::run(
            "cc",
            &[
                "-shared",
                "-nostdlib",
                "-fPIC",
                &format!("-Wl,-soname,{soname}"),
                &format!("-Wl,--version-script,{}", map.display()),
                "-o",
                out.to_str().context("non-UTF-8 path")?,
                c.to_str().context("non-UTF-8 path")?,
            ],
        )?;
        let link_name = soname.trim_end_matches(".0");
        std::os::unix::fs::symlink(soname, dir.join(link_name))?;
        let lib = link_name.trim_start_matches("lib").trim_end_matches(".so");
        std::fs::write(
            dir.join(format!("{package}.pc")),
            format!(
                "Name: {package}\nDescription: link stub of {soname}\nVersion: {}\nLibs: -L{} -l{lib}\nCflags:\n",
                version.trim(),
                dir.display()
            ),
        )?;
    }
    Ok(dir.to_path_buf())
}

/// A symbol a library defines: name, version node, and for data its size in bytes.
#[derive(Debug, PartialEq)]
struct Symbol {
    name: String,
    version: String,
    data_size: Option<u64>,
}

/// The functions and data that `objdump -T` shows defined with a version `<prefix><digit>…`: the
/// library's public API (libvirt's private symbols are `LIBVIRT_PRIVATE_*`).
fn exported(objdump: &str, prefix: &str) -> Vec<Symbol> {
    objdump
        .lines()
        .filter_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            let [.., kind, section, size, version, name] = words.as_slice() else { return None };
            let public = version.strip_prefix(prefix)?.starts_with(|c: char| c.is_ascii_digit());
            if !public || section.starts_with('*') {
                return None;
            }
            let data_size = match *kind {
                "DF" => None,
                "DO" => Some(u64::from_str_radix(size, 16).ok()?),
                _ => return None,
            };
            Some(Symbol { name: name.to_string(), version: version.to_string(), data_size })
        })
        .collect()
}

/// C source defining every symbol (empty functions, zeroed data of the same size) and the
/// version script that gives each its version node.
fn stub_source(symbols: &[Symbol]) -> (String, String) {
    let mut source = String::new();
    let mut nodes: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
    for symbol in symbols {
        match symbol.data_size {
            None => writeln!(source, "void {}(void) {{}}", symbol.name),
            Some(size) => writeln!(source, "char {}[{}];", symbol.name, size.max(1)),
        }
        .expect("writing to a String");
        nodes.entry(&symbol.version).or_default().push(&symbol.name);
    }
    let mut script = String::new();
    for (version, names) in nodes {
        writeln!(script, "{version} {{ global: {}; }};", names.join("; ")).expect("writing to a String");
    }
    (source, script)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_functions_and_data_become_stubs_with_their_versions() {
        let objdump = "\
0000000000000000      DF *UND*\t0000000000000000 (GLIBC_2.34) __libc_start_main
00000000000f2680 g    DF .text\t0000000000000143  LIBVIRT_PRIVATE_9.0.0 virLogParseFilters
0000000000051230 g    DF .text\t0000000000000121  LIBVIRT_0.0.3 virConnectOpen
00000000004967e0 g    DO .data\t0000000000000008  LIBVIRT_0.4.0 virConnectAuthPtrDefault
0000000000000000 g    DO *ABS*\t0000000000000000  LIBVIRT_0.4.0 LIBVIRT_0.4.0
0000000000061230 g    DF .text\t0000000000000121  LIBVIRT_QEMU_0.8.3 virDomainQemuMonitorCommand
";
        let symbols = exported(objdump, "LIBVIRT_");
        let names: Vec<_> = symbols.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["virConnectOpen", "virConnectAuthPtrDefault"]);
        let (source, script) = stub_source(&symbols);
        assert_eq!(source, "void virConnectOpen(void) {}\nchar virConnectAuthPtrDefault[8];\n");
        assert_eq!(
            script,
            "LIBVIRT_0.0.3 { global: virConnectOpen; };\nLIBVIRT_0.4.0 { global: virConnectAuthPtrDefault; };\n"
        );
    }
}
