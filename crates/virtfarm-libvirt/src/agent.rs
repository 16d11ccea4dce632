//! The QEMU guest agent: liveness, file-system freeze, sync, clock, addresses.

use std::time::Duration;

use serde_json::{json, Value};
use virt::domain::Domain;

use crate::error::{Error, Result};

/// The guest agent of one running domain.
pub struct GuestAgent<'a> {
    domain: &'a Domain,
    name: &'a str,
}

/// An address the guest agent reports on one of the guest's interfaces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestAddress {
    /// The guest's name for the interface, e.g. `eth0`.
    pub interface: String,
    /// The interface's MAC address, lower case, when the guest reports one.
    pub mac: Option<String>,
    /// The address.
    pub ip: String,
    /// True for IPv6.
    pub ipv6: bool,
}

/// Seconds a single agent command may take before libvirt gives up on it.
pub(crate) const COMMAND_TIMEOUT_S: i32 = 10;

impl<'a> GuestAgent<'a> {
    pub(crate) fn new(domain: &'a Domain, name: &'a str) -> Self {
        GuestAgent { domain, name }
    }

    /// Sends one command and returns its `return` member.
    fn command(&self, execute: &str, arguments: Option<Value>, timeout_s: i32) -> Result<Value> {
        let mut request = json!({ "execute": execute });
        if let Some(arguments) = arguments {
            request["arguments"] = arguments;
        }
        let reply = self
            .domain
            .qemu_agent_command(&request.to_string(), timeout_s, 0)
            .map_err(|e| self.error(format!("{execute}: {}", e.message())))?;
        let reply: Value =
            serde_json::from_str(&reply).map_err(|e| self.error(format!("{execute}: unreadable reply: {e}")))?;
        Ok(reply.get("return").cloned().unwrap_or(Value::Null))
    }

    fn error(&self, message: String) -> Error {
        Error::Agent { domain: self.name.to_string(), message }
    }

    /// True when the agent answers a ping now.
    pub fn ping(&self) -> bool {
        self.command("guest-ping", None, 2).is_ok()
    }

    /// Freezes the guest's file systems; returns how many were frozen.
    pub fn freeze(&self) -> Result<u64> {
        Ok(self.command("guest-fsfreeze-freeze", None, COMMAND_TIMEOUT_S)?.as_u64().unwrap_or(0))
    }

    /// True when the guest reports its file systems frozen; asks for at most 2 s.
    pub fn is_frozen(&self) -> Result<bool> {
        Ok(self.command("guest-fsfreeze-status", None, 2)?.as_str() == Some("frozen"))
    }

    /// Thaws file systems frozen by [`GuestAgent::freeze`].
    pub fn thaw(&self) -> Result<()> {
        self.command("guest-fsfreeze-thaw", None, COMMAND_TIMEOUT_S).map(drop)
    }

    /// Runs `sync` in the guest and waits for it, up to `timeout`.
    pub fn sync(&self, timeout: Duration) -> Result<()> {
        let started =
            self.command("guest-exec", Some(json!({ "path": "sync", "capture-output": false })), COMMAND_TIMEOUT_S)?;
        let pid =
            started.get("pid").and_then(Value::as_i64).ok_or_else(|| self.error("guest-exec gave no pid".into()))?;
        let deadline = crate::wait::deadline(timeout);
        loop {
            let status = self.command("guest-exec-status", Some(json!({ "pid": pid })), COMMAND_TIMEOUT_S)?;
            if status.get("exited").and_then(Value::as_bool) == Some(true) {
                return match status.get("exitcode").and_then(Value::as_i64) {
                    Some(0) | None => Ok(()),
                    Some(code) => Err(self.error(format!("sync exited with {code}"))),
                };
            }
            if std::time::Instant::now() >= deadline {
                return Err(Error::Timeout { what: format!("sync in {}", self.name), seconds: timeout.as_secs() });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Sets the guest clock from the host's (after a revert the guest's clock is stale).
    pub fn sync_clock(&self) -> Result<()> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(|e| self.error(format!("host clock before 1970: {e}")))?;
        self.command("guest-set-time", Some(json!({ "time": now.as_nanos() as u64 })), COMMAND_TIMEOUT_S).map(drop)
    }

    /// The guest's addresses, loopback and link-local left out.
    pub fn addresses(&self) -> Result<Vec<GuestAddress>> {
        self.addresses_within(COMMAND_TIMEOUT_S)
    }

    /// [`addresses`](Self::addresses), the guest given `seconds` (at least 1) to answer.
    pub fn addresses_within(&self, seconds: i32) -> Result<Vec<GuestAddress>> {
        let interfaces = self.command("guest-network-get-interfaces", None, seconds.max(1))?;
        Ok(parse_interfaces(&interfaces))
    }
}

/// Reads the reply of `guest-network-get-interfaces`.
fn parse_interfaces(reply: &Value) -> Vec<GuestAddress> {
    let mut found = Vec::new();
    for iface in reply.as_array().into_iter().flatten() {
        let name = iface.get("name").and_then(Value::as_str).unwrap_or_default();
        let mac = iface.get("hardware-address").and_then(Value::as_str).map(str::to_ascii_lowercase);
        for addr in iface.get("ip-addresses").and_then(Value::as_array).into_iter().flatten() {
            let ip = addr.get("ip-address").and_then(Value::as_str).unwrap_or_default();
            let ipv6 = addr.get("ip-address-type").and_then(Value::as_str) == Some("ipv6");
            if is_routable(ip) {
                found.push(GuestAddress { interface: name.to_string(), mac: mac.clone(), ip: ip.to_string(), ipv6 });
            }
        }
    }
    found
}

/// False for loopback, link-local, unspecified and unparsable addresses.
pub fn is_routable(ip: &str) -> bool {
    match ip.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(v4)) => !(v4.is_loopback() || v4.is_link_local() || v4.is_unspecified()),
        Ok(std::net::IpAddr::V6(v6)) => {
            !(v6.is_loopback() || v6.is_unspecified() || (v6.segments()[0] & 0xffc0) == 0xfe80)
        }
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_addresses_skip_loopback_and_link_local() {
        let reply = json!([
            {"name": "lo", "hardware-address": "00:00:00:00:00:00",
             "ip-addresses": [{"ip-address": "127.0.0.1", "ip-address-type": "ipv4", "prefix": 8}]},
            {"name": "eth0", "hardware-address": "52:54:00:AA:BB:CC",
             "ip-addresses": [
                {"ip-address": "10.77.0.12", "ip-address-type": "ipv4", "prefix": 24},
                {"ip-address": "fe80::5054:ff:feaa:bbcc", "ip-address-type": "ipv6", "prefix": 64}]}
        ]);
        let found = parse_interfaces(&reply);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].ip, "10.77.0.12");
        assert_eq!(found[0].mac.as_deref(), Some("52:54:00:aa:bb:cc"));
        assert!(parse_interfaces(&json!({"not": "a list"})).is_empty());
    }
}
