//! Names and identities derived from names: pool-style node names (`vnode03`), stable MACs,
//! snapshot overlays' and NVRAM copies' file names, and the fingerprint that tells an unchanged definition from
//! a changed one.

/// A node name from a pool spec: `3`, `vnode4` or `18:bookworm` with stem `vnode` give
/// `vnode03`, `vnode04` and `vnode18` (numbers padded to two digits), and the image alias
/// after the colon, if any. `None` when the spec is neither a number nor stem + number.
pub fn pool_node(stem: &str, spec: &str) -> Option<(String, Option<String>)> {
    let (node, alias) = match spec.split_once(':') {
        Some((node, alias)) if !alias.is_empty() => (node, Some(alias.to_string())),
        Some(_) => return None,
        None => (spec, None),
    };
    let digits = node.strip_prefix(stem).unwrap_or(node);
    if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let number: u32 = digits.parse().ok()?;
    Some((format!("{stem}{number:02}"), alias))
}

/// How the file names of the overlays that external snapshots (and their reverts) put on
/// `domain`'s disk `target` begin: `<domain>-<target>.`.
pub fn snapshot_overlay_prefix(domain: &str, target: &str) -> String {
    format!("{domain}-{target}.")
}

/// The file name of the copy of NVRAM file `nvram_file` that external snapshot `snapshot`
/// keeps beside it. The `.snapshot` ending keeps copies apart from libvirt's `<name>_VARS.fd`.
pub fn nvram_copy_name(nvram_file: &str, snapshot: &str) -> String {
    format!("{nvram_file}.{snapshot}.snapshot")
}

/// FNV-1a, 64 bits: a stable fingerprint (not a security boundary).
pub fn fingerprint(parts: &[&[u8]]) -> String {
    let mut hash = Fingerprint::default();
    for part in parts {
        hash.write(part);
        hash.write(&[0xff]);
    }
    hash.hex()
}

/// [`fingerprint`] fed in pieces, for what is too large to hold at once (an image file).
#[derive(Clone, Copy, Debug)]
pub struct Fingerprint(u64);

impl Default for Fingerprint {
    fn default() -> Self {
        Fingerprint(0xcbf2_9ce4_8422_2325)
    }
}

impl Fingerprint {
    /// Adds `bytes`.
    pub fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 ^= u64::from(*byte);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }

    /// The fingerprint so far, as 16 hex digits.
    pub fn hex(&self) -> String {
        format!("{:016x}", self.0)
    }
}

/// The MAC of NIC number `index` of domain `name`: in QEMU's `52:54:00` range, the same on
/// every run, so DHCP reservations and leases follow the guest across redefinitions.
pub fn derived_mac(name: &str, index: usize) -> String {
    let hash = fingerprint(&[name.as_bytes(), index.to_string().as_bytes()]);
    format!("52:54:00:{}:{}:{}", &hash[0..2], &hash[2..4], &hash[4..6])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_specs_normalise_like_the_vnode_tool() {
        assert_eq!(pool_node("vnode", "3"), Some(("vnode03".into(), None)));
        assert_eq!(pool_node("vnode", "vnode4"), Some(("vnode04".into(), None)));
        assert_eq!(pool_node("vnode", "18:bookworm"), Some(("vnode18".into(), Some("bookworm".into()))));
        assert_eq!(pool_node("vnode", "vnode123"), Some(("vnode123".into(), None)));
        for bad in ["", "x3", "vnode", "3:", "-1", "vnode3a"] {
            assert_eq!(pool_node("vnode", bad), None, "{bad}");
        }
    }

    #[test]
    fn macs_are_stable_and_distinct() {
        assert_eq!(derived_mac("web1", 0), derived_mac("web1", 0));
        assert_ne!(derived_mac("web1", 0), derived_mac("web1", 1));
        assert_ne!(derived_mac("web1", 0), derived_mac("web2", 0));
        assert!(crate::validate::mac(&derived_mac("web1", 0)).is_ok());
    }

    #[test]
    fn nvram_copies_never_take_the_name_of_an_nvram_file() {
        let copy = nvram_copy_name("web1_VARS.fd", "before_VARS.fd");
        assert_eq!(copy, "web1_VARS.fd.before_VARS.fd.snapshot");
        assert!(!copy.ends_with("_VARS.fd"));
    }

    #[test]
    fn fingerprint_separates_parts() {
        assert_ne!(fingerprint(&[b"ab", b"c"]), fingerprint(&[b"a", b"bc"]));
    }
}
