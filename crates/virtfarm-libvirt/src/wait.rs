//! Bounded waits until domains are ready: a DHCP lease, a guest agent, an SSH banner, an address.
//!
//! Many domains are waited for together, one thread each on the hypervisor's connection, so the wait
//! for N guests takes as long as the slowest, not the sum.

use std::collections::HashMap;
use std::io::Read;
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use crate::connection::Hypervisor;
use crate::domain_facts::Nic;
use crate::error::{Error, Result};
use crate::leases::{lease_newer_than, newest_expiry};
use crate::scan::{address_of, IpSource};
use crate::vm::{PowerState, Vm};

/// What "ready" means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// A fresh DHCP lease on the domain's first network NIC.
    Lease,
    /// The guest agent answers a ping.
    Agent,
    /// Port 22 of the leased address answers with an SSH banner, seen from where we run.
    Ssh,
    /// An address is known, found as the inventory finds it: lease, DHCP reservation, guest
    /// agent, ARP. For guests whose readiness is checked elsewhere (a connection, a port).
    Address,
}

/// A name that is no [`Signal`]'s.
#[derive(Debug, PartialEq, Eq)]
pub struct UnknownSignal;

impl std::str::FromStr for Signal {
    type Err = UnknownSignal;

    /// Parses `lease`, `agent`, `ssh` or `address`.
    fn from_str(value: &str) -> Result<Self, UnknownSignal> {
        match value {
            "lease" => Ok(Signal::Lease),
            "agent" => Ok(Signal::Agent),
            "ssh" => Ok(Signal::Ssh),
            "address" => Ok(Signal::Address),
            _ => Err(UnknownSignal),
        }
    }
}

/// A domain that became ready.
#[derive(Clone, Debug, PartialEq)]
pub struct Ready {
    /// Its address, when the signal needed or found one.
    pub ip: Option<String>,
    /// Where the address came from.
    pub ip_source: Option<IpSource>,
    /// Seconds from the start of the wait.
    pub seconds: f64,
}

/// The leases a domain's NICs held before it was started: a lease is fresh only if newer.
#[derive(Clone, Debug, Default)]
pub struct LeaseBaseline(HashMap<String, Option<i64>>);

impl LeaseBaseline {
    /// Records the newest lease expiry of each network NIC of `vm`.
    pub fn capture(hypervisor: &Hypervisor, vm: &Vm) -> Result<Self> {
        let mut baseline = HashMap::new();
        for nic in vm.facts()?.nics {
            if let Some(network) = nic.network {
                let leases = hypervisor.network_leases(&network)?;
                baseline.insert(nic.mac.clone(), newest_expiry(&leases, &nic.mac));
            }
        }
        Ok(LeaseBaseline(baseline))
    }

    /// A baseline that accepts any current lease (for a domain that was already running).
    pub fn any() -> Self {
        LeaseBaseline::default()
    }
}

/// How long to wait, and for what.
#[derive(Clone, Copy, Debug)]
pub struct Readiness {
    /// The signal that means ready.
    pub signal: Signal,
    /// The bound on the whole wait.
    pub timeout: Duration,
}

/// How often a wait asks again. libvirt 9.0 has no event for a DHCP lease, and nothing tells
/// when sshd starts listening, so the waits poll; a guest that became ready waits half this
/// on average to be seen (the bench's boot-to-sshd figures). Each poll is a libvirt call or
/// two and a connection that a closed port refuses at once.
const POLL: Duration = Duration::from_millis(100);

/// How long a connection attempt may take: an address that does not answer is not up yet.
const CONNECT: Duration = Duration::from_secs(2);

/// How long a port that accepted a connection gets to send its banner. sshd sends it from a
/// child it forks and re-executes for every connection, which takes seconds in a loaded
/// emulated guest (the bench saw 2 s probes fail for minutes after sshd started); a probe that
/// gives up sooner only makes it start over.
const BANNER_WAIT: Duration = Duration::from_secs(30);

/// The bounds of one probe of a port before `deadline`: [`CONNECT`] and [`BANNER_WAIT`], each
/// cut to the time left (at least 100 ms), so that a host that drops packets or a slow banner
/// cannot hold a wait past its deadline.
fn attempt_bounds(deadline: Instant) -> (Duration, Duration) {
    let left = deadline.saturating_duration_since(Instant::now());
    let bounded = |most: Duration| most.min(left).max(Duration::from_millis(100));
    (bounded(CONNECT), bounded(BANNER_WAIT))
}

/// The instant `timeout` from now; a timeout too large for the clock (a user may give any
/// number of seconds) ends in a century instead of overflowing.
pub fn deadline(timeout: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(timeout).unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600))
}

/// Waits until `vm` gives `readiness.signal`, or fails naming the domain and the missing signal.
pub fn wait_ready(hypervisor: &Hypervisor, vm: &Vm, baseline: &LeaseBaseline, readiness: Readiness) -> Result<Ready> {
    let started = Instant::now();
    let deadline = deadline(readiness.timeout);
    let name = vm.name();
    let network_nic = vm.facts()?.nics.into_iter().find(|n| n.network.is_some());
    let mut address: Option<(String, IpSource)> = None;
    let mut missing = describe_missing(readiness.signal, network_nic.is_some());
    loop {
        match vm.power_state()? {
            PowerState::Running => {}
            other => return Err(Error::Refused(format!("{name} is {} while waiting for {missing}", other.as_str()))),
        }
        if address.is_none() {
            address = find_address(hypervisor, vm, network_nic.as_ref(), baseline, readiness.signal)?;
        }
        let ready = match readiness.signal {
            Signal::Lease | Signal::Address => address.is_some(),
            Signal::Agent => vm.agent().ping(),
            Signal::Ssh => match &address {
                Some((ip, _)) => {
                    missing = format!("an SSH banner on {ip}:22");
                    let (connect, banner_wait) = attempt_bounds(deadline);
                    ssh_banner(ip, connect, banner_wait)
                }
                None => false,
            },
        };
        if ready {
            if let (Some((ip, source @ (IpSource::Agent | IpSource::Arp))), Some(nic)) = (&mut address, &network_nic) {
                if lease_gives(hypervisor, vm, nic, baseline, ip, deadline)? {
                    *source = IpSource::Lease;
                }
            }
            let (ip, ip_source) = address.map_or((None, None), |(ip, source)| (Some(ip), Some(source)));
            return Ok(Ready { ip, ip_source, seconds: started.elapsed().as_secs_f64() });
        }
        if Instant::now() >= deadline {
            return Err(Error::Timeout { what: format!("{name}: {missing}"), seconds: readiness.timeout.as_secs() });
        }
        std::thread::sleep(POLL.min(deadline.saturating_duration_since(Instant::now())));
    }
}

/// How long an address seen by the guest agent or in the ARP table may wait for libvirt to
/// record the lease that gave it. dnsmasq answers the guest first and has a helper rewrite
/// libvirt's lease file after, so on a loaded host the guest uses the address before the
/// lease is readable: more than 2 s later on a test bed whose guests were busy writing their
/// disks. The wait is paid in full only by a guest with a static address on a libvirt network.
const LEASE_GRACE: Duration = Duration::from_secs(10);

/// True when the lease of `nic`, readable within [`LEASE_GRACE`] (and before `deadline`), gives
/// `ip`: the lease, the NIC's own record, then names the address's source.
fn lease_gives(
    hypervisor: &Hypervisor,
    vm: &Vm,
    nic: &Nic,
    baseline: &LeaseBaseline,
    ip: &str,
    deadline: Instant,
) -> Result<bool> {
    let grace_ends = deadline.min(Instant::now() + LEASE_GRACE);
    loop {
        let lease = find_address(hypervisor, vm, Some(nic), baseline, Signal::Lease)?;
        if lease.is_some_and(|(leased, _)| leased == ip) {
            return Ok(true);
        }
        if Instant::now() >= grace_ends {
            return Ok(false);
        }
        std::thread::sleep(POLL);
    }
}

fn describe_missing(signal: Signal, has_network_nic: bool) -> String {
    match (signal, has_network_nic) {
        (Signal::Lease, true) => "a DHCP lease".to_string(),
        (Signal::Lease, false) => "a DHCP lease (no NIC on a libvirt network: use wait=agent)".to_string(),
        (Signal::Agent, _) => "an answer from the guest agent".to_string(),
        (Signal::Ssh, _) => "an address for SSH (no lease, no agent address)".to_string(),
        (Signal::Address, _) => "an address (no lease, reservation, agent address or ARP entry)".to_string(),
    }
}

/// The lease address of the NIC, else (for SSH) the agent's first routable address; for
/// [`Signal::Address`], the inventory's lookup.
fn find_address(
    hypervisor: &Hypervisor,
    vm: &Vm,
    nic: Option<&Nic>,
    baseline: &LeaseBaseline,
    signal: Signal,
) -> Result<Option<(String, IpSource)>> {
    if signal == Signal::Address {
        return address_of(hypervisor, vm);
    }
    if let Some(nic) = nic {
        let network = nic.network.as_deref().unwrap_or_default();
        let leases = hypervisor.network_leases(network)?;
        let since = baseline.0.get(&nic.mac).copied().flatten();
        if let Some(lease) = lease_newer_than(&leases, &nic.mac, since, unix_now()) {
            return Ok(Some((lease.ip.clone(), IpSource::Lease)));
        }
    }
    if signal == Signal::Ssh {
        if let Ok(addresses) = vm.agent().addresses() {
            let first = addresses.into_iter().min_by_key(|a| a.ipv6);
            return Ok(first.map(|a| (a.ip, IpSource::Agent)));
        }
    }
    Ok(None)
}

/// True when `ip:22` accepts a connection within `connect` and sends an `SSH-` banner within
/// `banner_wait`.
pub fn ssh_banner(ip: &str, connect: Duration, banner_wait: Duration) -> bool {
    ip.parse::<std::net::IpAddr>().is_ok() && answers(ip, 22, b"SSH-", connect, banner_wait)
}

/// True when some address of `host` accepts a connection on `port` within `connect` and sends
/// `banner` first (any banner, when it is empty) within `banner_wait`.
pub fn answers(host: &str, port: u16, banner: &[u8], connect: Duration, banner_wait: Duration) -> bool {
    let Ok(addresses) = (host, port).to_socket_addrs() else { return false };
    addresses.into_iter().any(|address| {
        let Ok(mut stream) = TcpStream::connect_timeout(&address, connect) else { return false };
        let mut received = vec![0u8; banner.len()];
        banner.is_empty()
            || (stream.set_read_timeout(Some(banner_wait)).is_ok()
                && stream.read_exact(&mut received).is_ok()
                && received == banner)
    })
}

/// `host:port` did not answer (with the banner asked for) in time.
#[derive(Debug, thiserror::Error)]
#[error("{host}:{port} did not answer{} within {} s", with_banner(.banner), .timeout.as_secs())]
pub struct NoAnswer {
    /// The host asked.
    pub host: String,
    /// The port asked.
    pub port: u16,
    /// The banner waited for; empty for any.
    pub banner: String,
    /// The bound that ran out.
    pub timeout: Duration,
}

fn with_banner(banner: &str) -> String {
    if banner.is_empty() {
        String::new()
    } else {
        format!(" with banner {banner:?}")
    }
}

/// Waits until `host:port` [`answers`] with `banner` within `timeout`, asking again every
/// `POLL`; the seconds it took.
pub fn until_answers(host: &str, port: u16, banner: &str, timeout: Duration) -> Result<f64, NoAnswer> {
    let started = Instant::now();
    let deadline = deadline(timeout);
    loop {
        let (connect, banner_wait) = attempt_bounds(deadline);
        if answers(host, port, banner.as_bytes(), connect, banner_wait) {
            return Ok(started.elapsed().as_secs_f64());
        }
        if Instant::now() >= deadline {
            return Err(NoAnswer { host: host.to_string(), port, banner: banner.to_string(), timeout });
        }
        std::thread::sleep(POLL.min(deadline.saturating_duration_since(Instant::now())));
    }
}

/// Seconds since the epoch.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// Waits for many domains of one hypervisor at once, one thread each on the shared
/// connection; results in input order.
pub fn wait_all(
    hypervisor: &Hypervisor,
    domains: Vec<(String, LeaseBaseline)>,
    readiness: Readiness,
) -> Vec<(String, Result<Ready>)> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = domains
            .into_iter()
            .map(|(name, baseline)| {
                let wanted = name.clone();
                let handle = scope.spawn(move || {
                    let vm = hypervisor.vm(&wanted)?;
                    wait_ready(hypervisor, &vm, &baseline, readiness)
                });
                (name, handle)
            })
            .collect();
        handles
            .into_iter()
            .map(|(name, handle)| {
                let result = handle
                    .join()
                    .unwrap_or_else(|_| Err(Error::Refused(format!("{name}: the wait failed unexpectedly"))));
                (name, result)
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timeout_of_any_size_gives_a_deadline() {
        assert!(deadline(Duration::from_secs(u64::MAX)) > Instant::now());
        assert!(deadline(Duration::from_secs(i64::MAX as u64)) > Instant::now());
    }

    #[test]
    fn a_port_answers_only_with_the_banner_asked_for() {
        use std::io::Write;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            for stream in listener.incoming().take(3) {
                let _ = stream.unwrap().write_all(b"SSH-2.0-test\r\n");
            }
        });
        let timeout = Duration::from_secs(5);
        assert!(answers("localhost", port, b"SSH-", timeout, timeout));
        assert!(answers("127.0.0.1", port, b"", timeout, timeout));
        assert!(!answers("127.0.0.1", port, b"HTTP", timeout, timeout));
        server.join().unwrap();
        assert!(!ssh_banner("not-an-address", timeout, timeout), "a lease gives an address, never a name");
    }

    #[test]
    fn until_answers_gives_up_naming_host_port_and_banner() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert!(until_answers("127.0.0.1", port, "", Duration::from_secs(5)).is_ok());
        drop(listener);
        let no_answer = until_answers("127.0.0.1", port, "SSH-", Duration::ZERO).unwrap_err();
        assert_eq!(no_answer.to_string(), format!("127.0.0.1:{port} did not answer with banner \"SSH-\" within 0 s"));
    }
}
