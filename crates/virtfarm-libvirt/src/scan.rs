//! One pass over a hypervisor for an inventory: every domain with its state, NICs and
//! metadata, and the address that reaches it, in as few libvirt calls as the answer allows.
//!
//! Calls per URI: one listing every domain with its state, one XML read per listed domain
//! (the MACs and the metadata live there), and for each network a running domain uses, one
//! lease lookup. Only a running domain left without a lease costs more, in this order: the
//! network's static DHCP reservations (once per network), the guest agent when its channel
//! is connected, then the host's ARP table. [`Scan::calls`] counts every call made.
//!
//! ```no_run
//! use virtfarm_libvirt::{scan, Hypervisor};
//!
//! let hypervisor = Hypervisor::open("qemu:///system")?;
//! let found = scan::scan(&hypervisor, &scan::ScanOptions::default())?;
//! for domain in &found.domains {
//!     println!("{} {:?}", domain.name, domain.address.as_ref().map(|a| &a.ip));
//! }
//! # Ok::<(), virtfarm_libvirt::Error>(())
//! ```

use std::collections::HashMap;
use std::os::raw::c_int;
use std::time::Instant;

use virt::domain::{Domain, DomainStateEnum};

use crate::agent::is_routable;
use crate::connection::Hypervisor;
use crate::domain_facts::DomainFacts;
use crate::domain_xml::InstanceMetadata;
use crate::error::{Doing, Error, Result};
use crate::leases::{current_lease, Lease};
use crate::network::reservations_in;
use crate::vm::{PowerState, Vm};

/// What to look for.
#[derive(Clone, Debug, Default)]
pub struct ScanOptions {
    /// Networks whose NIC gives a domain's address when it has several.
    pub preferred_networks: Vec<String>,
    /// Use IPv6 addresses too (IPv4 still first).
    pub ipv6: bool,
    /// Leave out domains that are not running, paused or suspended.
    pub exclude_inactive: bool,
    /// When the guest agents must have answered: each is given what is left (at most its
    /// usual bound), and once less than a second is left the remaining domains' agents are not
    /// asked, each named in a warning, so that slow agents cost their own addresses and not
    /// the whole scan. `None`: the usual bound for each.
    pub agent_deadline: Option<Instant>,
}

/// Where an address came from, best first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum IpSource {
    /// The network's DHCP lease for the NIC's MAC.
    Lease,
    /// A static `<host mac= ip=>` reservation in the network's DHCP configuration.
    Reservation,
    /// The guest agent's report of the guest's interfaces.
    Agent,
    /// The host's ARP (neighbour) table.
    Arp,
}

impl IpSource {
    /// The name used in inventory variables.
    pub fn as_str(self) -> &'static str {
        match self {
            IpSource::Lease => "lease",
            IpSource::Reservation => "reservation",
            IpSource::Agent => "agent",
            IpSource::Arp => "arp",
        }
    }
}

/// One NIC and the address found for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InterfaceAddress {
    /// MAC address, lower case.
    pub mac: String,
    /// The libvirt network it is attached to, if any.
    pub network: Option<String>,
    /// Its address, when one was found (only running domains have one).
    pub ip: Option<String>,
    /// Where `ip` came from.
    pub source: Option<IpSource>,
}

/// One domain as the inventory sees it.
#[derive(Clone, Debug)]
pub struct ScannedDomain {
    /// The domain's name.
    pub name: String,
    /// The domain's UUID.
    pub uuid: String,
    /// Power state.
    pub state: PowerState,
    /// vCPUs.
    pub vcpus: u32,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// NICs in XML order, with their addresses.
    pub interfaces: Vec<InterfaceAddress>,
    /// The NIC that reaches the domain: on a preferred network if one has an address, else the first with one.
    pub address: Option<InterfaceAddress>,
    /// Running, no address found, and its guest agent is connected: reachable through the agent only.
    pub agent_only: bool,
    /// kvm_provision's metadata, when the domain has some.
    pub metadata: Option<InstanceMetadata>,
}

/// The result of scanning one hypervisor.
#[derive(Clone, Debug, Default)]
pub struct Scan {
    /// Domains, in libvirt's order.
    pub domains: Vec<ScannedDomain>,
    /// libvirt API calls made after connecting (each one round trip on a remote URI).
    pub calls: u64,
    /// Problems that left a domain or an address out without failing the scan.
    pub warnings: Vec<String>,
}

/// Domain XML reads in flight at once. A connection multiplexes calls and the daemon works
/// on a few of them at a time, so enough readers keep it busy instead of waiting on round
/// trips (1000 reads on a 2-core host: 140 ms with one reader, 80 with 4, 40-70 with 16);
/// they parse what they read in parallel too.
const XML_READERS: usize = 16;

/// Scans `hypervisor` once (see the module documentation for the calls made).
pub fn scan(hypervisor: &Hypervisor, options: &ScanOptions) -> Result<Scan> {
    let mut pass = Pass::new(hypervisor, options);
    let listed = domains_with_state(hypervisor)?;
    pass.scan.calls += 1;
    let wanted: Vec<(Vm, PowerState)> =
        listed.into_iter().filter(|(_, state)| !(options.exclude_inactive && *state == PowerState::ShutOff)).collect();
    let definitions = read_in_parallel(&wanted);
    pass.scan.calls += wanted.len() as u64;
    for ((vm, state), definition) in wanted.iter().zip(definitions) {
        match definition.map(|definition| pass.domain(vm, *state, definition)) {
            Ok(domain) => pass.scan.domains.push(domain),
            // Undefined between the listing and the read: it is simply gone.
            Err(e) if e.is_missing() => {}
            Err(e) => pass.scan.warnings.push(e.to_string()),
        }
    }
    Ok(pass.scan)
}

/// The address that reaches one domain and where it came from, looked up as [`scan`] does
/// (lease, DHCP reservation, guest agent, ARP); `None` while it is not running or has none.
pub fn address_of(hypervisor: &Hypervisor, vm: &Vm) -> Result<Option<(String, IpSource)>> {
    let options = ScanOptions::default();
    let mut pass = Pass::new(hypervisor, &options);
    let domain = pass.domain(vm, vm.power_state()?, Definition::read(vm)?);
    Ok(domain.address.and_then(|address| Some((address.ip?, address.source?))))
}

/// The state of one scan, with the per-network answers fetched so far.
struct Pass<'a> {
    hypervisor: &'a Hypervisor,
    options: &'a ScanOptions,
    now: i64,
    leases: HashMap<String, Vec<Lease>>,
    reservations: HashMap<String, HashMap<String, String>>,
    arp_unreadable: bool,
    scan: Scan,
}

/// A domain's live XML, read and parsed.
struct Definition {
    facts: DomainFacts,
    metadata: Option<InstanceMetadata>,
}

impl Definition {
    fn read(vm: &Vm) -> Result<Definition> {
        let facts = DomainFacts::parse(&vm.xml(false)?)?;
        let metadata = Some(facts.metadata.clone()).filter(|m| *m != InstanceMetadata::default());
        Ok(Definition { facts, metadata })
    }
}

impl<'a> Pass<'a> {
    fn new(hypervisor: &'a Hypervisor, options: &'a ScanOptions) -> Self {
        Pass {
            hypervisor,
            options,
            now: crate::wait::unix_now(),
            leases: HashMap::new(),
            reservations: HashMap::new(),
            arp_unreadable: false,
            scan: Scan::default(),
        }
    }

    fn domain(&mut self, vm: &Vm, state: PowerState, definition: Definition) -> ScannedDomain {
        let Definition { facts, metadata } = definition;
        let mut interfaces: Vec<InterfaceAddress> = facts
            .nics
            .iter()
            .map(|nic| InterfaceAddress { mac: nic.mac.clone(), network: nic.network.clone(), ip: None, source: None })
            .collect();
        let mut agent_only = false;
        let preferred = &self.options.preferred_networks;
        if state == PowerState::Running {
            self.fill_from_leases(&mut interfaces);
            if still_unreachable(&interfaces, preferred) {
                self.fill_from_reservations(&mut interfaces);
            }
            let agent_connected = still_unreachable(&interfaces, preferred) && facts.agent_connected;
            if agent_connected {
                self.fill_from_agent(vm, &mut interfaces);
            }
            if still_unreachable(&interfaces, preferred) && !self.arp_unreadable {
                self.fill_from_arp(vm, &mut interfaces);
            }
            agent_only = agent_connected && still_unreachable(&interfaces, preferred);
        }
        ScannedDomain {
            address: best(&interfaces, preferred).cloned(),
            name: facts.name,
            uuid: facts.uuid,
            state,
            vcpus: facts.vcpus,
            memory_mib: facts.memory_mib,
            interfaces,
            agent_only,
            metadata,
        }
    }

    fn fill_from_leases(&mut self, interfaces: &mut [InterfaceAddress]) {
        let now = self.now;
        for interface in interfaces.iter_mut() {
            let Some(network) = interface.network.clone() else { continue };
            let leases = self.leases_of(&network);
            if let Some(lease) = current_lease(leases, &interface.mac, now) {
                interface.ip = Some(lease.ip.clone());
                interface.source = Some(IpSource::Lease);
            }
        }
    }

    fn leases_of(&mut self, network: &str) -> &[Lease] {
        if !self.leases.contains_key(network) {
            // One lookup and one lease read.
            self.scan.calls += 2;
            let leases = match self.hypervisor.network_leases(network) {
                Ok(leases) => leases.into_iter().filter(|l| self.options.ipv6 || !l.ipv6).collect(),
                Err(e) => {
                    self.scan.warnings.push(e.to_string());
                    Vec::new()
                }
            };
            self.leases.insert(network.to_string(), leases);
        }
        self.leases.get(network).map(Vec::as_slice).unwrap_or_default()
    }

    fn fill_from_reservations(&mut self, interfaces: &mut [InterfaceAddress]) {
        for interface in interfaces.iter_mut().filter(|i| i.ip.is_none()) {
            let Some(network) = interface.network.clone() else { continue };
            if !self.reservations.contains_key(&network) {
                // One lookup and one XML read.
                self.scan.calls += 2;
                let found = self.read_reservations(&network).unwrap_or_else(|e| {
                    self.scan.warnings.push(e.to_string());
                    HashMap::new()
                });
                self.reservations.insert(network.clone(), found);
            }
            if let Some(ip) = self.reservations.get(&network).and_then(|r| r.get(&interface.mac)) {
                interface.ip = Some(ip.clone());
                interface.source = Some(IpSource::Reservation);
            }
        }
    }

    fn read_reservations(&self, network: &str) -> Result<HashMap<String, String>> {
        let xml = self
            .hypervisor
            .raw()
            .lookup_network_by_name(network)
            .and_then(|net| net.xml_desc(0))
            .doing(|| format!("reading the definition of network {network}"))?;
        Ok(reservations_in(&xml)?.into_iter().collect())
    }

    fn fill_from_agent(&mut self, vm: &Vm, interfaces: &mut [InterfaceAddress]) {
        let Some(seconds) = agent_seconds(self.options.agent_deadline, Instant::now()) else {
            let why = "no time was left before the timeout to ask its guest agent";
            self.scan.warnings.push(format!("{}: {why}", vm.name()));
            return;
        };
        self.scan.calls += 1;
        match vm.agent().addresses_within(seconds) {
            Ok(found) => {
                let seen = found.into_iter().filter_map(|a| Some((a.mac?, a.ip, a.ipv6)));
                fill_by_mac(interfaces, &seen.collect::<Vec<_>>(), IpSource::Agent, self.options.ipv6);
            }
            Err(e) => self.scan.warnings.push(e.to_string()),
        }
    }

    fn fill_from_arp(&mut self, vm: &Vm, interfaces: &mut [InterfaceAddress]) {
        self.scan.calls += 1;
        let source = virt::sys::VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_ARP;
        match vm.raw().interface_addresses(source, 0).doing(|| format!("reading the ARP entries of {}", vm.name())) {
            Ok(found) => {
                let seen = found.into_iter().flat_map(|iface| {
                    let mac = iface.hwaddr.unwrap_or_default().to_ascii_lowercase();
                    iface
                        .addrs
                        .into_iter()
                        .map(move |a| (mac.clone(), a.addr, a.typed == virt::sys::VIR_IP_ADDR_TYPE_IPV6 as i64))
                });
                fill_by_mac(interfaces, &seen.collect::<Vec<_>>(), IpSource::Arp, self.options.ipv6);
            }
            Err(e) => {
                // The table is the host's: when it cannot be read for one domain it cannot for any.
                self.arp_unreadable = true;
                self.scan.warnings.push(e.to_string());
            }
        }
    }
}

fn is_preferred(interface: &InterfaceAddress, preferred: &[String]) -> bool {
    interface.network.as_ref().is_some_and(|n| preferred.contains(n))
}

/// The NIC that reaches the domain (see [`ScannedDomain::address`]).
fn best<'i>(interfaces: &'i [InterfaceAddress], preferred: &[String]) -> Option<&'i InterfaceAddress> {
    let with_ip = || interfaces.iter().filter(|i| i.ip.is_some());
    with_ip().find(|i| is_preferred(i, preferred)).or_else(|| with_ip().next())
}

/// True while no NIC that should give the address has one: a NIC on a preferred network
/// when the domain has such NICs, any NIC otherwise.
fn still_unreachable(interfaces: &[InterfaceAddress], preferred: &[String]) -> bool {
    let on_preferred = interfaces.iter().any(|i| is_preferred(i, preferred));
    !interfaces.iter().filter(|i| !on_preferred || is_preferred(i, preferred)).any(|i| i.ip.is_some())
}

/// Gives each NIC still without an address the first usable `(mac, ip, ipv6)` seen for its
/// MAC, IPv4 before IPv6 (IPv6 only when `ipv6`).
fn fill_by_mac(interfaces: &mut [InterfaceAddress], seen: &[(String, String, bool)], source: IpSource, ipv6: bool) {
    for interface in interfaces.iter_mut().filter(|i| i.ip.is_none()) {
        let usable = seen
            .iter()
            .filter(|(mac, ip, v6)| mac.eq_ignore_ascii_case(&interface.mac) && is_routable(ip) && (ipv6 || !v6))
            .min_by_key(|(_, _, v6)| *v6);
        if let Some((_, ip, _)) = usable {
            interface.ip = Some(ip.clone());
            interface.source = Some(source);
        }
    }
}

/// Every domain with its power state in one call: `virConnectGetAllDomainStats` asked for the
/// state group only, which `virt` 0.5 does not bind.
fn domains_with_state(hypervisor: &Hypervisor) -> Result<Vec<(Vm, PowerState)>> {
    let doing = || format!("listing domains on {}", hypervisor.uri());
    let mut records: *mut virt::sys::virDomainStatsRecordPtr = std::ptr::null_mut();
    // SAFETY: the connection is open for the lifetime of `hypervisor`; libvirt allocates
    // `records`, a NULL-terminated array we free below with its own free function.
    let count = unsafe {
        virt::sys::virConnectGetAllDomainStats(
            hypervisor.raw().as_ptr(),
            virt::sys::VIR_DOMAIN_STATS_STATE,
            &mut records,
            0,
        )
    };
    if count < 0 {
        return Err(virt::error::Error::last_error()).doing(doing);
    }
    let mut listed = Vec::with_capacity(count as usize);
    for index in 0..count as usize {
        // SAFETY: libvirt returned `count` valid records in `records`.
        let record = unsafe { &**records.add(index) };
        let mut raw_state: c_int = -1;
        // SAFETY: `params`/`nparams` describe the record's typed parameters; the name is a
        // NUL-terminated constant. A missing parameter leaves `raw_state` at -1.
        unsafe {
            virt::sys::virTypedParamsGetInt(
                record.params,
                record.nparams,
                virt::sys::VIR_DOMAIN_STATS_STATE_STATE.as_ptr(),
                &mut raw_state,
            )
        };
        // SAFETY: `record.dom` is a live domain; the extra reference is ours to keep after
        // the record list, which drops its own, is freed.
        let domain = unsafe {
            virt::sys::virDomainRef(record.dom);
            Domain::from_ptr(record.dom)
        };
        listed.push((domain, raw_state));
    }
    // SAFETY: `records` came from virConnectGetAllDomainStats and is freed once.
    unsafe { virt::sys::virDomainStatsRecordListFree(records) };
    listed
        .into_iter()
        .map(|(domain, raw_state)| {
            let name = domain.name().doing(|| "reading a domain name".to_string())?;
            let state =
                PowerState::from_libvirt(DomainStateEnum::from_raw(raw_state as virt::sys::virDomainState), &name)?;
            Ok((Vm::new(domain, name), state))
        })
        .collect()
}

/// The live definition of each domain, in order, read and parsed by [`XML_READERS`] threads
/// on the one connection.
fn read_in_parallel(vms: &[(Vm, PowerState)]) -> Vec<Result<Definition>> {
    let chunk = vms.len().div_ceil(XML_READERS).max(1);
    std::thread::scope(|scope| {
        let readers: Vec<_> = vms
            .chunks(chunk)
            .map(|part| scope.spawn(move || part.iter().map(|(vm, _)| Definition::read(vm)).collect::<Vec<_>>()))
            .collect();
        readers
            .into_iter()
            .flat_map(|reader| {
                reader.join().unwrap_or_else(|_| vec![Err(Error::Refused("a domain XML reader crashed".into()))])
            })
            .collect()
    })
}

/// Seconds the next guest agent may take to answer: its usual bound, cut to what is left
/// before `deadline`; `None` once less than a second is left.
fn agent_seconds(deadline: Option<Instant>, now: Instant) -> Option<i32> {
    let Some(deadline) = deadline else { return Some(crate::agent::COMMAND_TIMEOUT_S) };
    let left = deadline.checked_duration_since(now)?.as_secs();
    (left >= 1).then(|| i32::try_from(left).unwrap_or(i32::MAX).min(crate::agent::COMMAND_TIMEOUT_S))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nic(mac: &str, network: &str, ip: Option<&str>) -> InterfaceAddress {
        InterfaceAddress { mac: mac.into(), network: Some(network.into()), ip: ip.map(Into::into), source: None }
    }

    #[test]
    fn a_guest_agent_gets_what_is_left_of_the_timeout() {
        let now = Instant::now();
        let in_secs = |s: u64| Some(now + std::time::Duration::from_secs(s));
        assert_eq!(agent_seconds(None, now), Some(10), "no deadline: the usual bound");
        assert_eq!(agent_seconds(in_secs(60), now), Some(10), "never more than the usual bound");
        assert_eq!(agent_seconds(in_secs(3), now), Some(3));
        assert_eq!(agent_seconds(Some(now + std::time::Duration::from_millis(900)), now), None);
        assert_eq!(agent_seconds(Some(now), now + std::time::Duration::from_secs(1)), None, "past");
    }

    #[test]
    fn prefers_the_named_network_then_the_first_nic_with_an_address() {
        let nics = [nic("a", "mgmt", None), nic("b", "lan", Some("10.0.0.2")), nic("c", "data", Some("10.1.0.2"))];
        let ip = |preferred: &[&str]| {
            let preferred: Vec<String> = preferred.iter().map(|s| s.to_string()).collect();
            best(&nics, &preferred).and_then(|i| i.ip.clone())
        };
        assert_eq!(ip(&[]).as_deref(), Some("10.0.0.2"));
        assert_eq!(ip(&["data"]).as_deref(), Some("10.1.0.2"));
        assert_eq!(ip(&["mgmt"]).as_deref(), Some("10.0.0.2"));
        assert!(!still_unreachable(&nics, &[]));
        assert!(still_unreachable(&nics, &["mgmt".to_string()]));
    }

    #[test]
    fn agent_and_arp_answers_fill_nics_by_mac_ipv4_first() {
        let mut nics = [nic("52:54:00:00:00:01", "lan", None), nic("52:54:00:00:00:02", "lan", Some("10.0.0.9"))];
        let seen = [
            ("52:54:00:00:00:01".to_string(), "fd00::7".to_string(), true),
            ("52:54:00:00:00:01".to_string(), "127.0.0.1".to_string(), false),
            ("52:54:00:00:00:01".to_string(), "10.0.0.7".to_string(), false),
            ("52:54:00:00:00:02".to_string(), "10.0.0.8".to_string(), false),
        ];
        fill_by_mac(&mut nics, &seen, IpSource::Agent, false);
        assert_eq!((nics[0].ip.as_deref(), nics[0].source), (Some("10.0.0.7"), Some(IpSource::Agent)));
        assert_eq!(nics[1].ip.as_deref(), Some("10.0.0.9"), "an address already found stays");
        let mut v6_only = [nic("52:54:00:00:00:01", "lan", None)];
        fill_by_mac(&mut v6_only, &seen[..1], IpSource::Arp, false);
        assert_eq!(v6_only[0].ip, None);
        fill_by_mac(&mut v6_only, &seen[..1], IpSource::Arp, true);
        assert_eq!(v6_only[0].ip.as_deref(), Some("fd00::7"));
    }

    #[test]
    fn reservations_are_keyed_by_lower_case_mac() {
        let xml = "<network><name>n</name><ip address='10.77.0.1' prefix='24'><dhcp><host mac='52:54:00:AA:00:01' ip='10.77.0.5'/><host name='no-mac' ip='10.77.0.6'/></dhcp></ip></network>";
        assert_eq!(reservations_in(xml).unwrap(), [("52:54:00:aa:00:01".to_string(), "10.77.0.5".to_string())]);
    }
}
