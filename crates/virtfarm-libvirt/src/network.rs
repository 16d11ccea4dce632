//! libvirt networks: make sure one exists and runs, and reserve addresses in its DHCP server
//! without stepping on anyone else's (another guest, another deployment running at the same time).

use std::io::Cursor;
use std::net::Ipv4Addr;

use quick_xml::Writer;
use serde::Deserialize;
use virt::network::Network;

use crate::connection::Hypervisor;
use crate::error::{Doing, Error, Result};
use crate::leases::current_lease;
use crate::wait::unix_now;

/// An IPv4 subnet, e.g. `10.77.0.0/24`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Subnet {
    /// The network address.
    pub address: Ipv4Addr,
    /// The prefix length.
    pub prefix: u8,
}

impl Subnet {
    /// Parses `a.b.c.d/n`; the host bits are cleared.
    pub fn parse(text: &str) -> Option<Subnet> {
        let (address, prefix) = text.split_once('/')?;
        let prefix: u8 = prefix.parse().ok().filter(|p| (8..=30).contains(p))?;
        let address: Ipv4Addr = address.parse().ok()?;
        Some(Subnet { address: Ipv4Addr::from(u32::from(address) & mask(prefix)), prefix })
    }

    /// True when the two subnets share an address.
    pub fn overlaps(&self, other: &Subnet) -> bool {
        let shorter = self.prefix.min(other.prefix);
        u32::from(self.address) & mask(shorter) == u32::from(other.address) & mask(shorter)
    }

    /// True when `ip` is inside.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.prefix) == u32::from(self.address)
    }

    fn host(&self, index: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.address) + index)
    }

    fn last_host(&self) -> Ipv4Addr {
        Ipv4Addr::from((u32::from(self.address) | !mask(self.prefix)) - 1)
    }
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        // A prefix over 32 in a daemon's XML must not overflow the shift.
        u32::MAX << (32 - u32::from(prefix.min(32)))
    }
}

/// A NAT network to create when it does not exist.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewNetwork {
    /// The network's name.
    pub name: String,
    /// Its subnet; the host gets the first address, DHCP hands out the rest.
    pub subnet: Subnet,
    /// The host bridge; libvirt picks `virbrN` when `None`.
    pub bridge: Option<String>,
}

/// A DHCP host reservation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reservation {
    /// The guest NIC's MAC, lower case.
    pub mac: String,
    /// The address it always gets.
    pub ip: Ipv4Addr,
    /// The hostname dnsmasq gives it.
    pub hostname: Option<String>,
}

#[derive(Deserialize, Default)]
struct RawNetwork {
    #[serde(default)]
    name: String,
    #[serde(default)]
    bridge: Option<RawBridge>,
    #[serde(default)]
    ip: Vec<RawIp>,
}

#[derive(Deserialize)]
struct RawBridge {
    #[serde(rename = "@name", default)]
    name: Option<String>,
}

#[derive(Deserialize)]
struct RawIp {
    #[serde(rename = "@address", default)]
    address: Option<String>,
    #[serde(rename = "@netmask", default)]
    netmask: Option<String>,
    #[serde(rename = "@prefix", default)]
    prefix: Option<u8>,
    #[serde(rename = "@family", default)]
    family: Option<String>,
    #[serde(default)]
    dhcp: Option<RawDhcp>,
}

#[derive(Deserialize)]
struct RawDhcp {
    #[serde(rename = "host", default)]
    hosts: Vec<RawHost>,
}

#[derive(Deserialize)]
struct RawHost {
    #[serde(rename = "@mac", default)]
    mac: Option<String>,
    #[serde(rename = "@ip", default)]
    ip: Option<String>,
    #[serde(rename = "@name", default)]
    name: Option<String>,
}

impl RawNetwork {
    fn parse(xml: &str, name: &str) -> Result<Self> {
        quick_xml::de::from_str(xml)
            .map_err(|e| Error::Xml { doing: format!("reading network {name}"), message: e.to_string() })
    }

    fn subnets(&self) -> Vec<Subnet> {
        self.ip
            .iter()
            .filter(|ip| ip.family.as_deref().unwrap_or("ipv4") == "ipv4")
            .filter_map(|ip| {
                let address: Ipv4Addr = ip.address.as_deref()?.parse().ok()?;
                let prefix = match (&ip.prefix, &ip.netmask) {
                    (Some(p), _) => *p,
                    (None, Some(m)) => u32::from(m.parse::<Ipv4Addr>().ok()?).count_ones() as u8,
                    (None, None) => 24,
                };
                Some(Subnet { address: Ipv4Addr::from(u32::from(address) & mask(prefix)), prefix })
            })
            .collect()
    }

    fn hosts(&self) -> impl Iterator<Item = &RawHost> {
        self.ip.iter().filter_map(|ip| ip.dhcp.as_ref()).flat_map(|d| d.hosts.iter())
    }
}

/// The static DHCP reservations of a network definition, as (MAC in lower case, IP).
pub fn reservations_in(network_xml: &str) -> Result<Vec<(String, String)>> {
    let network = RawNetwork::parse(network_xml, "from its XML")?;
    Ok(network.hosts().filter_map(|h| Some((h.mac.as_deref()?.to_ascii_lowercase(), h.ip.clone()?))).collect())
}

impl Hypervisor {
    fn find_network(&self, name: &str) -> Result<Option<Network>> {
        match self.raw().lookup_network_by_name(name) {
            Ok(network) => Ok(Some(network)),
            Err(e) if e.code().is(virt::error::ErrorNumber::NoNetwork) => Ok(None),
            Err(e) => Err(e).doing(|| format!("looking up network {name}")),
        }
    }

    /// Makes sure the network `name` exists and is active; creates it from `new` when given.
    /// Returns true when something changed (or would, with `dry_run`).
    pub fn ensure_network(&self, name: &str, new: Option<&NewNetwork>, dry_run: bool) -> Result<bool> {
        if let Some(network) = self.find_network(name)? {
            if network.is_active().doing(|| format!("reading the state of network {name}"))? {
                return Ok(false);
            }
            if !dry_run {
                network.create().doing(|| format!("starting network {name}"))?;
            }
            return Ok(true);
        }
        let Some(new) = new else {
            return Err(Error::NotFound { kind: "network", name: name.to_string() });
        };
        self.check_new_network_is_free(new)?;
        if !dry_run {
            let network =
                self.raw().define_network_xml(&network_xml(new)?).doing(|| format!("defining network {name}"))?;
            network.create().doing(|| format!("starting network {name}"))?;
            network.set_autostart(true).doing(|| format!("marking network {name} autostart"))?;
        }
        Ok(true)
    }

    /// Refuses a new network whose subnet or bridge another network already uses.
    fn check_new_network_is_free(&self, new: &NewNetwork) -> Result<()> {
        let networks = self.raw().list_all_networks(0).doing(|| "listing networks".to_string())?;
        for network in networks {
            let xml = network.xml_desc(0).doing(|| "reading a network".to_string())?;
            let other = RawNetwork::parse(&xml, "?")?;
            if let Some(subnet) = other.subnets().into_iter().find(|s| s.overlaps(&new.subnet)) {
                return Err(Error::Refused(format!(
                    "network {}: subnet {}/{} overlaps {}/{} of existing network {}",
                    new.name, new.subnet.address, new.subnet.prefix, subnet.address, subnet.prefix, other.name
                )));
            }
            let other_bridge = other.bridge.as_ref().and_then(|b| b.name.as_deref());
            if new.bridge.is_some() && new.bridge.as_deref() == other_bridge {
                return Err(Error::Refused(format!(
                    "network {}: bridge {} is already used by network {}",
                    new.name,
                    other_bridge.unwrap_or_default(),
                    other.name
                )));
            }
        }
        Ok(())
    }

    /// Adds `reservation` to the DHCP hosts of `network` unless it is there already.
    ///
    /// Refuses, naming the holder, when the address or the MAC is reserved for something else,
    /// or when the address is currently leased to another MAC. libvirt itself refuses a
    /// duplicate added by a concurrent run, so two deployments cannot both win.
    pub fn ensure_reservation(&self, network_name: &str, reservation: &Reservation, dry_run: bool) -> Result<bool> {
        let network = self
            .find_network(network_name)?
            .ok_or_else(|| Error::NotFound { kind: "network", name: network_name.to_string() })?;
        let xml = network
            .xml_desc(virt::sys::VIR_NETWORK_XML_INACTIVE)
            .doing(|| format!("reading network {network_name}"))?;
        let raw = RawNetwork::parse(&xml, network_name)?;
        let ip = reservation.ip.to_string();
        if !raw.subnets().iter().any(|s| s.contains(reservation.ip)) {
            return Err(Error::Refused(format!("ip {ip} is outside every subnet of network {network_name}")));
        }
        for host in raw.hosts() {
            let same_mac = host.mac.as_deref().is_some_and(|m| m.eq_ignore_ascii_case(&reservation.mac));
            let same_ip = host.ip.as_deref() == Some(ip.as_str());
            match (same_mac, same_ip) {
                (true, true) => return Ok(false),
                (false, true) => {
                    return Err(Error::Refused(format!(
                        "ip {ip} is already reserved in network {network_name} for MAC {} ({})",
                        host.mac.as_deref().unwrap_or("?"),
                        host.name.as_deref().unwrap_or("no name")
                    )))
                }
                (true, false) => {
                    return Err(Error::Refused(format!(
                        "MAC {} already has the reservation {} in network {network_name}",
                        reservation.mac,
                        host.ip.as_deref().unwrap_or("?")
                    )))
                }
                (false, false) => {}
            }
        }
        if network.is_active().doing(|| format!("reading the state of network {network_name}"))? {
            let leases = self.network_leases(network_name)?;
            let now = unix_now();
            let taken = leases.iter().find(|l| {
                l.ip == ip
                    && !l.mac.eq_ignore_ascii_case(&reservation.mac)
                    && current_lease(&leases, &l.mac, now) == Some(*l)
            });
            if let Some(lease) = taken {
                return Err(Error::Refused(format!(
                    "ip {ip} is currently leased in network {network_name} to MAC {} ({})",
                    lease.mac,
                    lease.hostname.as_deref().unwrap_or("no hostname")
                )));
            }
        }
        if dry_run {
            return Ok(true);
        }
        let mut flags = virt::sys::VIR_NETWORK_UPDATE_AFFECT_CONFIG;
        if network.is_active().doing(|| format!("reading the state of network {network_name}"))? {
            flags |= virt::sys::VIR_NETWORK_UPDATE_AFFECT_LIVE;
        }
        network
            .update(
                virt::sys::VIR_NETWORK_UPDATE_COMMAND_ADD_LAST,
                virt::sys::VIR_NETWORK_SECTION_IP_DHCP_HOST,
                -1,
                &host_xml(reservation)?,
                flags,
            )
            .doing(|| format!("reserving {ip} for {} in network {network_name}", reservation.mac))?;
        Ok(true)
    }

    /// Removes the DHCP reservation of `mac` from `network`, if it has one; true when removed.
    pub fn remove_reservation(&self, network_name: &str, mac: &str) -> Result<bool> {
        let Some(network) = self.find_network(network_name)? else { return Ok(false) };
        let xml = network
            .xml_desc(virt::sys::VIR_NETWORK_XML_INACTIVE)
            .doing(|| format!("reading network {network_name}"))?;
        let raw = RawNetwork::parse(&xml, network_name)?;
        let Some(host) = raw.hosts().find(|h| h.mac.as_deref().is_some_and(|m| m.eq_ignore_ascii_case(mac))) else {
            return Ok(false);
        };
        let reservation = Reservation {
            mac: mac.to_string(),
            ip: host.ip.as_deref().and_then(|ip| ip.parse().ok()).unwrap_or(Ipv4Addr::UNSPECIFIED),
            hostname: host.name.clone(),
        };
        let mut flags = virt::sys::VIR_NETWORK_UPDATE_AFFECT_CONFIG;
        if network.is_active().doing(|| format!("reading the state of network {network_name}"))? {
            flags |= virt::sys::VIR_NETWORK_UPDATE_AFFECT_LIVE;
        }
        network
            .update(
                virt::sys::VIR_NETWORK_UPDATE_COMMAND_DELETE,
                virt::sys::VIR_NETWORK_SECTION_IP_DHCP_HOST,
                -1,
                &host_xml(&reservation)?,
                flags,
            )
            .doing(|| format!("removing the reservation of {mac} from network {network_name}"))?;
        Ok(true)
    }
}

fn write_xml(
    doing: &str,
    body: impl FnOnce(&mut crate::domain_xml::XmlWriter) -> std::io::Result<()>,
) -> Result<String> {
    let mut writer = Writer::new(Cursor::new(Vec::new()));
    body(&mut writer).map_err(|e| Error::Xml { doing: doing.to_string(), message: e.to_string() })?;
    String::from_utf8(writer.into_inner().into_inner())
        .map_err(|e| Error::Xml { doing: doing.to_string(), message: e.to_string() })
}

fn host_xml(reservation: &Reservation) -> Result<String> {
    write_xml("writing a DHCP host entry", |w| {
        let ip = reservation.ip.to_string();
        let mut host = w
            .create_element("host")
            .with_attribute(("mac", reservation.mac.as_str()))
            .with_attribute(("ip", ip.as_str()));
        if let Some(name) = &reservation.hostname {
            host = host.with_attribute(("name", name.as_str()));
        }
        host.write_empty()?;
        Ok(())
    })
}

fn network_xml(new: &NewNetwork) -> Result<String> {
    let gateway = new.subnet.host(1).to_string();
    let prefix = new.subnet.prefix.to_string();
    let first = new.subnet.host(if new.subnet.prefix <= 24 { 10 } else { 2 }).to_string();
    let last = new.subnet.last_host().to_string();
    write_xml("writing a network definition", |w| {
        w.create_element("network").write_inner_content(|w| {
            crate::domain_xml::text_element(w, "name", &new.name)?;
            w.create_element("forward").with_attribute(("mode", "nat")).write_empty()?;
            if let Some(bridge) = &new.bridge {
                w.create_element("bridge")
                    .with_attribute(("name", bridge.as_str()))
                    .with_attribute(("stp", "on"))
                    .write_empty()?;
            }
            w.create_element("ip")
                .with_attribute(("address", gateway.as_str()))
                .with_attribute(("prefix", prefix.as_str()))
                .write_inner_content(|w| {
                    w.create_element("dhcp").write_inner_content(|w| {
                        w.create_element("range")
                            .with_attribute(("start", first.as_str()))
                            .with_attribute(("end", last.as_str()))
                            .write_empty()?;
                        Ok(())
                    })?;
                    Ok(())
                })?;
            Ok(())
        })?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_overlap_and_contain() {
        let a = Subnet::parse("10.77.0.0/24").unwrap();
        assert!(a.overlaps(&Subnet::parse("10.77.0.128/25").unwrap()));
        assert!(a.overlaps(&Subnet::parse("10.0.0.0/8").unwrap()));
        assert!(!a.overlaps(&Subnet::parse("10.78.0.0/24").unwrap()));
        assert!(a.contains("10.77.0.99".parse().unwrap()));
        assert_eq!(Subnet::parse("10.77.0.5/24").unwrap().address, Ipv4Addr::new(10, 77, 0, 0));
        for bad in ["10.77.0.0", "10.77.0.0/33", "x/24", "10.77.0.0/4"] {
            assert!(Subnet::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn reads_subnets_and_reservations_of_a_network() {
        let raw = RawNetwork::parse(
            "<network><name>n</name><bridge name='vfbr0'/><ip address='10.77.0.1' netmask='255.255.255.0'><dhcp><range start='10.77.0.10' end='10.77.0.250'/><host mac='52:54:00:00:00:01' name='a' ip='10.77.0.5'/></dhcp></ip><ip family='ipv6' address='fd00::1' prefix='64'/></network>",
            "n",
        )
        .unwrap();
        assert_eq!(raw.subnets(), vec![Subnet::parse("10.77.0.0/24").unwrap()]);
        assert_eq!(raw.hosts().count(), 1);
    }

    #[test]
    fn new_network_definition() {
        let new = NewNetwork {
            name: "t&n".into(),
            subnet: Subnet::parse("10.88.0.0/24").unwrap(),
            bridge: Some("vfbr9".into()),
        };
        let xml = network_xml(&new).unwrap();
        assert!(xml.contains("<name>t&amp;n</name>"));
        assert!(xml.contains("address=\"10.88.0.1\" prefix=\"24\""));
        assert!(xml.contains("start=\"10.88.0.10\" end=\"10.88.0.254\""), "{xml}");
    }
}
