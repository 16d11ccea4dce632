//! DHCP leases of a libvirt network, and choosing the one that belongs to a NIC.

use std::ffi::CStr;
use std::os::raw::c_char;

use crate::connection::Hypervisor;
use crate::error::{Doing, Result};

/// One DHCP lease handed out by a libvirt network's dnsmasq.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The client's MAC address, lower case.
    pub mac: String,
    /// The leased address, without prefix.
    pub ip: String,
    /// The prefix length of the network.
    pub prefix: u32,
    /// True for an IPv6 lease.
    pub ipv6: bool,
    /// The hostname the client sent, if any.
    pub hostname: Option<String>,
    /// When the lease expires, in seconds since the epoch (0: never).
    pub expiry: i64,
}

impl Hypervisor {
    /// Every lease of the network `network`, in one call.
    pub fn network_leases(&self, network: &str) -> Result<Vec<Lease>> {
        let net = self.raw().lookup_network_by_name(network).doing(|| format!("looking up network {network}"))?;
        fetch_leases(&net).doing(|| format!("reading the DHCP leases of network {network}"))
    }
}

/// `virt` 0.5 has no binding for `virNetworkGetDHCPLeases`; this is that binding.
fn fetch_leases(net: &virt::network::Network) -> std::result::Result<Vec<Lease>, virt::error::Error> {
    let mut array: *mut virt::sys::virNetworkDHCPLeasePtr = std::ptr::null_mut();
    // SAFETY: `net` is a live network handle; a null MAC asks for every lease; libvirt
    // allocates `array` and its entries, which we free below.
    let count = unsafe { virt::sys::virNetworkGetDHCPLeases(net.as_ptr(), std::ptr::null(), &mut array, 0) };
    if count < 0 {
        return Err(virt::error::Error::last_error());
    }
    let mut leases = Vec::with_capacity(count as usize);
    for index in 0..count as usize {
        // SAFETY: libvirt returned `count` valid lease pointers in `array`.
        let lease = unsafe { *array.add(index) };
        // SAFETY: each lease stays valid until freed just after reading it; strings are NUL-terminated or null.
        unsafe {
            let raw = &*lease;
            leases.push(Lease {
                mac: owned(raw.mac).unwrap_or_default().to_ascii_lowercase(),
                ip: owned(raw.ipaddr).unwrap_or_default(),
                prefix: raw.prefix,
                ipv6: raw.type_ == virt::sys::VIR_IP_ADDR_TYPE_IPV6 as i32,
                hostname: owned(raw.hostname).filter(|h| !h.is_empty()),
                expiry: raw.expirytime,
            });
            virt::sys::virNetworkDHCPLeaseFree(lease);
        }
    }
    // SAFETY: the array itself was allocated by libvirt with malloc and holds no live entries now.
    unsafe { libc_free(array.cast()) };
    Ok(leases)
}

/// Copies a C string that libvirt owns.
///
/// # Safety
/// `ptr` is null or points to a NUL-terminated string that outlives this call.
unsafe fn owned(ptr: *const c_char) -> Option<String> {
    // SAFETY: guaranteed by the caller.
    (!ptr.is_null()).then(|| unsafe { CStr::from_ptr(ptr) }.to_string_lossy().into_owned())
}

extern "C" {
    #[link_name = "free"]
    fn libc_free(ptr: *mut std::ffi::c_void);
}

/// The lease that currently belongs to `mac`: unexpired at `now`, the newest first, IPv4
/// before IPv6. dnsmasq keeps old leases for an hour, so a MAC may have several.
pub fn current_lease<'a>(leases: &'a [Lease], mac: &str, now: i64) -> Option<&'a Lease> {
    leases
        .iter()
        .filter(|l| l.mac.eq_ignore_ascii_case(mac) && (l.expiry == 0 || l.expiry > now))
        .max_by_key(|l| (!l.ipv6, l.expiry))
}

/// A lease of `mac` granted after `since`: one whose expiry moved past every expiry
/// `mac` had before. It tells a fresh DHCP exchange from a stale lease of an earlier boot.
pub fn lease_newer_than<'a>(leases: &'a [Lease], mac: &str, since: Option<i64>, now: i64) -> Option<&'a Lease> {
    current_lease(leases, mac, now).filter(|l| since.is_none_or(|old| l.expiry > old))
}

/// The newest expiry among `mac`'s leases, as a baseline for [`lease_newer_than`].
pub fn newest_expiry(leases: &[Lease], mac: &str) -> Option<i64> {
    leases.iter().filter(|l| l.mac.eq_ignore_ascii_case(mac)).map(|l| l.expiry).max()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(mac: &str, ip: &str, expiry: i64, ipv6: bool) -> Lease {
        Lease { mac: mac.into(), ip: ip.into(), prefix: 24, ipv6, hostname: None, expiry }
    }

    #[test]
    fn picks_the_newest_unexpired_ipv4_lease_of_the_mac() {
        let leases = vec![
            lease("52:54:00:00:00:01", "10.0.0.5", 1_000, false),
            lease("52:54:00:00:00:01", "10.0.0.9", 3_000, false),
            lease("52:54:00:00:00:01", "fd00::9", 4_000, true),
            lease("52:54:00:00:00:02", "10.0.0.7", 5_000, false),
            lease("52:54:00:00:00:01", "10.0.0.3", 500, false),
        ];
        assert_eq!(current_lease(&leases, "52:54:00:00:00:01", 2_000).map(|l| l.ip.as_str()), Some("10.0.0.9"));
        assert_eq!(current_lease(&leases, "52:54:00:00:00:01", 3_500).map(|l| l.ip.as_str()), Some("fd00::9"));
        assert_eq!(current_lease(&leases, "52:54:00:00:00:03", 0), None);
        assert_eq!(current_lease(&leases, "52:54:00:00:00:01", 9_000), None);
    }

    #[test]
    fn a_stale_lease_from_an_earlier_boot_is_not_a_new_one() {
        let before = vec![lease("52:54:00:00:00:01", "10.0.0.5", 1_000, false)];
        let baseline = newest_expiry(&before, "52:54:00:00:00:01");
        assert!(lease_newer_than(&before, "52:54:00:00:00:01", baseline, 10).is_none());
        let after = vec![lease("52:54:00:00:00:01", "10.0.0.5", 1_200, false)];
        assert!(lease_newer_than(&after, "52:54:00:00:00:01", baseline, 10).is_some());
        assert!(lease_newer_than(&before, "52:54:00:00:00:01", None, 10).is_some());
    }
}
