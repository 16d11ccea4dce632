//! Placement: which hypervisor each new VM goes to, given several.
//!
//! Each hypervisor is surveyed once (its capabilities, its free memory as libvirt reports it,
//! the names of its domains), all in parallel on the caller's connections. Then, VM by VM in the
//! order given:
//!
//! - a VM that already exists on a hypervisor stays there, whatever the strategy: re-runs keep
//!   the placement;
//! - a VM that exists nowhere reachable, while a hypervisor cannot be read, is not placed: the
//!   unreadable one may hold it, and placing it elsewhere could make a second copy;
//! - otherwise the candidates are the hypervisors that run the VM's architecture with its
//!   domain type and have its memory free (minus what this placement already gave out), and
//!   the [`Strategy`] picks one of them.
//!
//! ```no_run
//! use virtfarm_libvirt::placement::{place, survey, Demand, Strategy};
//! use virtfarm_libvirt::Connections;
//!
//! let uris = vec!["qemu+ssh://root@h1/system".to_string(), "qemu+ssh://root@h2/system".to_string()];
//! let mut connections = Connections::default();
//! connections.open(uris.iter().map(String::as_str));
//! let hosts = survey(&connections, &uris);
//! let web = Demand { name: "web1".into(), memory_mib: 1024, arch: Some("x86_64".into()), domain_type: None, pinned: None };
//! for placed in place(&[web], &hosts, Strategy::RoundRobin) {
//!     println!("web1 -> {:?}", placed.map(|p| p.uri));
//! }
//! ```

use std::collections::BTreeSet;

use crate::connection::{Connections, Hypervisor};
use crate::error::{Doing, Error, Result};

/// How a VM that exists nowhere yet is given a hypervisor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    /// Spread evenly: the candidate holding the fewest of the placed VMs so far, ties in list
    /// order. On a fresh run that is plain round robin; VMs that stay count too.
    RoundRobin,
    /// The candidate with the most free memory left after what this placement gave out.
    MostFreeMemory,
    /// Each VM names its hypervisor; placement only checks that it fits there.
    Pinned,
}

impl Strategy {
    /// The strategy named `round_robin`, `most_free_memory` or `pinned`.
    pub fn parse(name: &str) -> Option<Strategy> {
        match name {
            "round_robin" => Some(Strategy::RoundRobin),
            "most_free_memory" => Some(Strategy::MostFreeMemory),
            "pinned" => Some(Strategy::Pinned),
            _ => None,
        }
    }

    /// The names [`Strategy::parse`] accepts.
    pub const NAMES: &'static [&'static str] = &["round_robin", "most_free_memory", "pinned"];
}

/// What a VM needs from a hypervisor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Demand {
    /// Domain name.
    pub name: String,
    /// Guest memory.
    pub memory_mib: u64,
    /// Guest architecture (`x86_64`, `aarch64`, ...); any when `None`.
    pub arch: Option<String>,
    /// `kvm` or `qemu` as asked; `None` takes what the host prefers.
    pub domain_type: Option<String>,
    /// The URI the VM must go to (with [`Strategy::Pinned`], or when the user fixed it).
    pub pinned: Option<String>,
}

/// What one hypervisor offers, read once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Host {
    /// Its URI.
    pub uri: String,
    /// Guest architectures with the domain types each runs with (`kvm` only on real hardware
    /// virtualisation, see [`Hypervisor::preferred_domain_type`]).
    pub arches: Vec<(String, Vec<String>)>,
    /// Free memory on the host, as libvirt reports it.
    pub free_mib: u64,
    /// Names of its domains, running or not.
    pub domains: BTreeSet<String>,
}

/// A hypervisor that was surveyed, or why it could not be.
#[derive(Debug)]
pub struct Surveyed {
    /// The URI asked for.
    pub uri: String,
    /// What it offers, or the error that kept it from answering.
    pub host: Result<Host>,
}

/// Where a VM goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placed {
    /// The hypervisor's URI.
    pub uri: String,
    /// True when the VM was there already.
    pub existing: bool,
}

impl Host {
    /// Reads what `hypervisor` offers: three calls (capabilities, free memory, domain list).
    pub fn read(hypervisor: &Hypervisor) -> Result<Host> {
        let capabilities = hypervisor.capabilities()?;
        let free =
            hypervisor.raw().free_memory().doing(|| format!("reading the free memory of {}", hypervisor.uri()))?;
        let domains = hypervisor.all_vms()?.iter().map(|vm| vm.name().to_string()).collect();
        Ok(Host {
            uri: hypervisor.uri().to_string(),
            arches: capabilities.guest_arches(),
            free_mib: free >> 20,
            domains,
        })
    }

    /// Why this host cannot take `vm` with `free_mib` left, or `None` when it can.
    fn refusal(&self, vm: &Demand, free_mib: u64) -> Option<String> {
        let runs = self.arches.iter().any(|(arch, types)| {
            vm.arch.as_deref().is_none_or(|wanted| wanted == arch)
                && !types.is_empty()
                && vm.domain_type.as_deref().is_none_or(|wanted| types.iter().any(|offered| offered == wanted))
        });
        if !runs {
            let arch = vm.arch.as_deref().unwrap_or("any architecture");
            let kind = vm.domain_type.as_deref().map(|t| format!(" with domain type {t}")).unwrap_or_default();
            return Some(format!("{} does not run {arch}{kind}", self.uri));
        }
        if vm.memory_mib > free_mib {
            return Some(format!("{} has {free_mib} MiB free, {} needs {} MiB", self.uri, vm.name, vm.memory_mib));
        }
        None
    }
}

/// Surveys every URI in parallel, one thread each on its connection in `connections` (opened
/// by the caller); results in `uris` order.
pub fn survey(connections: &Connections, uris: &[String]) -> Vec<Surveyed> {
    std::thread::scope(|scope| {
        let handles: Vec<_> =
            uris.iter().map(|uri| scope.spawn(move || connections.get(uri).and_then(Host::read))).collect();
        uris.iter()
            .zip(handles)
            .map(|(uri, handle)| Surveyed {
                uri: uri.clone(),
                host: handle
                    .join()
                    .unwrap_or_else(|_| Err(Error::Refused(format!("surveying {uri} failed unexpectedly")))),
            })
            .collect()
    })
}

/// Places every VM (see the module docs); one result per VM, in order.
pub fn place(vms: &[Demand], surveyed: &[Surveyed], strategy: Strategy) -> Vec<Result<Placed>> {
    let hosts: Vec<&Host> = surveyed.iter().filter_map(|s| s.host.as_ref().ok()).collect();
    let unreadable: Vec<&str> = surveyed.iter().filter(|s| s.host.is_err()).map(|s| s.uri.as_str()).collect();
    let mut free: Vec<u64> = hosts.iter().map(|h| h.free_mib).collect();
    let mut count = vec![0usize; hosts.len()];
    // Existing VMs first: they stay, and they count when spreading the new ones.
    let existing: Vec<Result<Option<usize>>> = vms.iter().map(|vm| where_it_is(vm, &hosts)).collect();
    for index in existing.iter().flatten().flatten() {
        count[*index] += 1;
    }
    vms.iter()
        .zip(existing)
        .map(|(vm, found)| {
            if let Some(index) = found? {
                return Ok(Placed { uri: hosts[index].uri.clone(), existing: true });
            }
            if !unreadable.is_empty() {
                return Err(Error::Refused(format!(
                    "{}: not placed, {} cannot be read and may hold it (placing it elsewhere could make a second copy)",
                    vm.name,
                    unreadable.join(", ")
                )));
            }
            let index = choose(vm, &hosts, &free, &count, strategy)?;
            free[index] -= vm.memory_mib;
            count[index] += 1;
            Ok(Placed { uri: hosts[index].uri.clone(), existing: false })
        })
        .collect()
}

/// The host that already has `vm`, if one does; refused when several do, or when it is not
/// where it is pinned.
fn where_it_is(vm: &Demand, hosts: &[&Host]) -> Result<Option<usize>> {
    let holders: Vec<usize> = (0..hosts.len()).filter(|&i| hosts[i].domains.contains(&vm.name)).collect();
    let uris = || holders.iter().map(|&i| hosts[i].uri.as_str()).collect::<Vec<_>>().join(", ");
    match holders.as_slice() {
        [] => Ok(None),
        [one] => match &vm.pinned {
            Some(pinned) if *pinned != hosts[*one].uri => Err(Error::Refused(format!(
                "{}: exists on {} but is pinned to {pinned}; VMs are not moved",
                vm.name,
                uris()
            ))),
            _ => Ok(Some(*one)),
        },
        _ => Err(Error::Refused(format!("{}: exists on several hypervisors ({})", vm.name, uris()))),
    }
}

/// The strategy's pick among the hosts that can take `vm`.
fn choose(vm: &Demand, hosts: &[&Host], free: &[u64], count: &[usize], strategy: Strategy) -> Result<usize> {
    let mut refusals = Vec::new();
    let mut candidates = Vec::new();
    for (index, host) in hosts.iter().enumerate() {
        if vm.pinned.as_ref().is_some_and(|p| *p != host.uri) {
            continue;
        }
        match host.refusal(vm, free[index]) {
            Some(why) => refusals.push(why),
            None => candidates.push(index),
        }
    }
    let pick = match strategy {
        Strategy::MostFreeMemory => candidates.iter().copied().max_by_key(|&i| (free[i], std::cmp::Reverse(i))),
        Strategy::RoundRobin | Strategy::Pinned => candidates.iter().copied().min_by_key(|&i| (count[i], i)),
    };
    pick.ok_or_else(|| {
        Error::Refused(match (&vm.pinned, refusals.is_empty()) {
            (Some(uri), true) => format!("{}: pinned to {uri}, which is not among the hypervisors", vm.name),
            (None, true) => format!("{}: no hypervisor could be read", vm.name),
            _ => format!("{}: no hypervisor can take it ({})", vm.name, refusals.join("; ")),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(uri: &str, free_mib: u64, domains: &[&str]) -> Surveyed {
        let arches = vec![("x86_64".to_string(), vec!["qemu".to_string()])];
        let domains = domains.iter().map(|d| d.to_string()).collect();
        Surveyed { uri: uri.into(), host: Ok(Host { uri: uri.into(), arches, free_mib, domains }) }
    }

    fn vm(name: &str, memory_mib: u64) -> Demand {
        Demand { name: name.into(), memory_mib, arch: Some("x86_64".into()), domain_type: None, pinned: None }
    }

    fn uris(results: Vec<Result<Placed>>) -> Vec<String> {
        results.into_iter().map(|r| r.map_or_else(|e| format!("error: {e}"), |p| p.uri)).collect()
    }

    #[test]
    fn round_robin_spreads_and_existing_vms_stay_and_count() {
        let hosts = [host("h1", 8192, &[]), host("h2", 8192, &[])];
        let four: Vec<Demand> = ["a", "b", "c", "d"].iter().map(|n| vm(n, 512)).collect();
        assert_eq!(uris(place(&four, &hosts, Strategy::RoundRobin)), ["h1", "h2", "h1", "h2"]);
        // A re-run finds them where they are, whatever the order; a new one evens the count.
        let hosts = [host("h1", 8192, &["a", "c"]), host("h2", 8192, &["b", "d", "x"])];
        let again: Vec<Demand> = ["d", "e", "c", "b", "a"].iter().map(|n| vm(n, 512)).collect();
        let placed = place(&again, &hosts, Strategy::RoundRobin);
        assert!(
            matches!(&placed[0], Ok(Placed { existing: true, .. }))
                && matches!(&placed[1], Ok(Placed { existing: false, .. }))
        );
        assert_eq!(uris(placed), ["h2", "h1", "h1", "h2", "h1"]);
    }

    #[test]
    fn most_free_memory_counts_what_it_gave_out() {
        let hosts = [host("h1", 3000, &[]), host("h2", 2000, &[])];
        let vms: Vec<Demand> = ["a", "b", "c"].iter().map(|n| vm(n, 1024)).collect();
        // h1 3000 -> 1976 after a; then h2 (2000) beats h1; then h1 (1976) beats h2 (976).
        assert_eq!(uris(place(&vms, &hosts, Strategy::MostFreeMemory)), ["h1", "h2", "h1"]);
    }

    #[test]
    fn refusals_name_the_vm_and_the_reason() {
        let hosts = [host("h1", 1000, &["old"]), host("h2", 1000, &["old"])];
        let mut arm = vm("arm", 100);
        arm.arch = Some("aarch64".into());
        let mut kvm = vm("fast", 100);
        kvm.domain_type = Some("kvm".into());
        let mut pinned = vm("p", 100);
        pinned.pinned = Some("h9".into());
        let placed = uris(place(&[vm("big", 4096), arm, kvm, pinned, vm("old", 1)], &hosts, Strategy::RoundRobin));
        assert!(
            placed[0].contains("big: no hypervisor can take it (h1 has 1000 MiB free, big needs 4096 MiB"),
            "{}",
            placed[0]
        );
        assert!(placed[1].contains("h1 does not run aarch64"), "{}", placed[1]);
        assert!(placed[2].contains("h2 does not run x86_64 with domain type kvm"), "{}", placed[2]);
        assert!(placed[3].contains("p: pinned to h9, which is not among the hypervisors"), "{}", placed[3]);
        assert!(placed[4].contains("old: exists on several hypervisors (h1, h2)"), "{}", placed[4]);
    }

    #[test]
    fn pinned_goes_where_told_and_an_unreadable_host_blocks_only_new_vms() {
        let mut a = vm("a", 100);
        a.pinned = Some("h2".into());
        let down = Surveyed { uri: "h3".into(), host: Err(Error::Refused("connection refused".into())) };
        let hosts = [host("h1", 1000, &["b"]), host("h2", 1000, &[]), down];
        let placed = uris(place(&[a.clone(), vm("b", 100)], &hosts[..2], Strategy::Pinned));
        assert_eq!(placed, ["h2", "h1"]);
        let placed = uris(place(&[a, vm("b", 100)], &hosts, Strategy::Pinned));
        assert!(placed[0].contains("a: not placed, h3 cannot be read and may hold it"), "{}", placed[0]);
        assert_eq!(placed[1], "h1");
    }
}
