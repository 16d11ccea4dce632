//! Scans → the JSON Ansible reads from a script inventory: groups, `_meta.hostvars`, and
//! the warnings in `all.vars.libvirt_inventory_warnings`.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Map, Value};
use virtfarm_libvirt::domain_xml::InstanceMetadata;
use virtfarm_libvirt::scan::{Scan, ScannedDomain};

/// How groups and connection variables are named.
#[derive(Clone, Debug, Default)]
pub struct RenderOptions {
    /// Put in front of every group name.
    pub prefix: String,
    /// Emit `ansible_connection: community.libvirt.libvirt_qemu` for hosts only the guest agent reaches.
    pub agent_connection: bool,
}

/// The connection plugin that talks to a guest through its agent, by domain name.
const AGENT_CONNECTION: &str = "community.libvirt.libvirt_qemu";

/// Names that are not groups of ours: Ansible's implicit groups and the document's `_meta`.
const RESERVED: [&str; 3] = ["all", "ungrouped", "_meta"];

/// Builds the inventory of `scans` (URI, scan), in order; a host name already taken by an
/// earlier URI gets the URI appended.
pub fn inventory(scans: &[(String, Scan)], warnings: &[String], options: &RenderOptions) -> Value {
    let mut groups: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut hostvars = Map::new();
    for (uri, scan) in scans {
        for domain in &scan.domains {
            let host = if hostvars.contains_key(&domain.name) {
                format!("{}_{}", domain.name, slug(uri))
            } else {
                domain.name.clone()
            };
            for group in group_names(uri, domain).iter().map(|g| group_name(&options.prefix, g)) {
                if !RESERVED.contains(&group.as_str()) {
                    groups.entry(group).or_default().insert(host.clone());
                }
            }
            hostvars.insert(host, Value::Object(host_vars(uri, domain, options)));
        }
    }
    let mut document = Map::new();
    document.insert("_meta".into(), json!({ "hostvars": hostvars }));
    document.insert("all".into(), json!({ "vars": { "libvirt_inventory_warnings": warnings } }));
    for (group, hosts) in groups {
        document.insert(group, json!({ "hosts": hosts }));
    }
    Value::Object(document)
}

/// The groups of one domain before prefixing and sanitising: its state, networks, URI, and
/// what the metadata says.
fn group_names(uri: &str, domain: &ScannedDomain) -> Vec<String> {
    let mut names = vec![
        domain.state.as_str().to_string(),
        format!("uri_{}", slug(uri)),
        format!("hypervisor_{}", hypervisor(uri)),
    ];
    names.extend(domain.interfaces.iter().filter_map(|i| i.network.as_ref()).map(|n| format!("network_{n}")));
    if let Some(meta) = &domain.metadata {
        let labelled = [("platform", &meta.platform), ("target", &meta.target), ("project", &meta.project)];
        names.extend(labelled.into_iter().filter_map(|(label, value)| Some(format!("{label}_{}", value.as_ref()?))));
        names.extend(meta.groups.iter().cloned());
    }
    names
}

fn host_vars(uri: &str, domain: &ScannedDomain, options: &RenderOptions) -> Map<String, Value> {
    let mut vars = Map::new();
    // Free-form metadata variables (`ansible_python_interpreter` among them) first, so that ours win on a clash.
    if let Some(meta) = &domain.metadata {
        vars.extend(meta.vars.iter().map(|(k, v)| (k.clone(), json!(v))));
        if let Some(user) = &meta.user {
            vars.insert("ansible_user".into(), json!(user));
        }
    }
    if let Some(address) = &domain.address {
        vars.insert("ansible_host".into(), json!(address.ip));
        vars.insert("libvirt_ip_source".into(), json!(address.source.map(|s| s.as_str())));
    } else if domain.agent_only && options.agent_connection {
        vars.insert("ansible_connection".into(), json!(AGENT_CONNECTION));
        vars.insert("ansible_host".into(), json!(domain.name));
        vars.insert("ansible_libvirt_uri".into(), json!(uri));
    }
    let interfaces: Vec<Value> = domain
        .interfaces
        .iter()
        .map(|i| json!({ "mac": i.mac, "network": i.network, "ip": i.ip, "source": i.source.map(|s| s.as_str()) }))
        .collect();
    vars.insert("libvirt_uri".into(), json!(uri));
    vars.insert("libvirt_hypervisor".into(), json!(hypervisor(uri)));
    vars.insert("libvirt_uuid".into(), json!(domain.uuid));
    vars.insert("libvirt_state".into(), json!(domain.state.as_str()));
    vars.insert("libvirt_vcpus".into(), json!(domain.vcpus));
    vars.insert("libvirt_memory_mb".into(), json!(domain.memory_mib));
    vars.insert("libvirt_interfaces".into(), Value::Array(interfaces));
    vars.insert("libvirt_metadata".into(), domain.metadata.as_ref().map_or(Value::Null, metadata_json));
    vars
}

fn metadata_json(meta: &InstanceMetadata) -> Value {
    json!({
        "platform": meta.platform,
        "target": meta.target,
        "project": meta.project,
        "user": meta.user,
        "groups": meta.groups,
        "vars": meta.vars.iter().cloned().collect::<BTreeMap<_, _>>(),
    })
}

/// A group name Ansible accepts: `[^A-Za-z0-9_]` becomes `_`, and a leading digit gets a `_`.
pub fn group_name(prefix: &str, name: &str) -> String {
    let safe: String = format!("{prefix}{name}")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' })
        .collect();
    if safe.starts_with(|c: char| c.is_ascii_digit()) || safe.is_empty() {
        format!("_{safe}")
    } else {
        safe
    }
}

/// The host a URI reaches, without user and port: `qemu+ssh://root@h1:22/system` → `h1`;
/// `localhost` for a local URI. URIs of one host share its `hypervisor_` group.
fn hypervisor(uri: &str) -> String {
    let authority = uri.split_once("://").map_or("", |(_, rest)| rest.split(['/', '?']).next().unwrap_or(""));
    let host = authority.rsplit('@').next().unwrap_or("");
    let host = if host.starts_with('[') {
        host.split_inclusive(']').next().unwrap_or(host)
    } else {
        host.split(':').next().unwrap_or(host)
    };
    if host.is_empty() {
        "localhost".to_string()
    } else {
        host.to_string()
    }
}

/// A URI as a short identifier: `qemu+ssh://root@h1/system` → `qemu_ssh_root_h1_system`.
fn slug(uri: &str) -> String {
    let words: Vec<&str> = uri.split(|c: char| !c.is_ascii_alphanumeric()).filter(|w| !w.is_empty()).collect();
    words.join("_")
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtfarm_libvirt::scan::{InterfaceAddress, IpSource};
    use virtfarm_libvirt::PowerState;

    fn domain(name: &str, state: PowerState, ip: Option<&str>) -> ScannedDomain {
        let nic = InterfaceAddress {
            mac: "52:54:00:00:00:01".into(),
            network: Some("vf-net".into()),
            ip: ip.map(Into::into),
            source: ip.map(|_| IpSource::Lease),
        };
        ScannedDomain {
            name: name.into(),
            uuid: format!("uuid-{name}"),
            state,
            vcpus: 1,
            memory_mib: 384,
            address: nic.ip.is_some().then(|| nic.clone()),
            interfaces: vec![nic],
            agent_only: false,
            metadata: None,
        }
    }

    fn hosts(inventory: &Value, group: &str) -> Vec<String> {
        serde_json::from_value(inventory[group]["hosts"].clone()).unwrap_or_default()
    }

    #[test]
    fn groups_hostvars_and_warnings() {
        let mut web = domain("web1", PowerState::Running, Some("10.77.0.5"));
        web.metadata = Some(InstanceMetadata {
            platform: Some("debian".into()),
            target: Some("bookworm".into()),
            user: Some("ansible".into()),
            groups: vec!["web-servers".into(), "9lives".into(), "all".into()],
            vars: [("ansible_host", "1.2.3.4"), ("role", "front"), ("ansible_python_interpreter", "/usr/bin/python3")]
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .into(),
            ..Default::default()
        });
        let scan = Scan { domains: vec![web, domain("db1", PowerState::ShutOff, None)], ..Default::default() };
        let inv = inventory(&[("qemu:///system".into(), scan)], &["h2: down".into()], &RenderOptions::default());
        assert_eq!(hosts(&inv, "running"), ["web1"]);
        assert_eq!(hosts(&inv, "shutoff"), ["db1"]);
        assert_eq!(hosts(&inv, "network_vf_net"), ["db1", "web1"]);
        assert_eq!(hosts(&inv, "uri_qemu_system"), ["db1", "web1"]);
        assert_eq!(hosts(&inv, "platform_debian"), ["web1"]);
        assert_eq!(hosts(&inv, "target_bookworm"), ["web1"]);
        assert_eq!(hosts(&inv, "web_servers"), ["web1"]);
        assert_eq!(hosts(&inv, "_9lives"), ["web1"]);
        let web = &inv["_meta"]["hostvars"]["web1"];
        assert_eq!(web["ansible_host"], "10.77.0.5", "metadata cannot override the address");
        assert_eq!(web["libvirt_ip_source"], "lease");
        assert_eq!(web["ansible_user"], "ansible");
        assert_eq!(web["ansible_python_interpreter"], "/usr/bin/python3");
        assert_eq!(web["role"], "front");
        assert_eq!(web["libvirt_memory_mb"], 384);
        assert_eq!(web["libvirt_interfaces"][0]["network"], "vf-net");
        assert_eq!(web["libvirt_metadata"]["platform"], "debian");
        assert_eq!(web["libvirt_metadata"]["vars"]["role"], "front");
        let db = &inv["_meta"]["hostvars"]["db1"];
        assert!(db.get("ansible_host").is_none());
        assert_eq!(db["libvirt_state"], "shutoff");
        assert_eq!(inv["all"]["vars"]["libvirt_inventory_warnings"], json!(["h2: down"]));
    }

    #[test]
    fn prefix_name_clashes_and_agent_only_hosts() {
        let mut agent_only = domain("a1", PowerState::Running, None);
        agent_only.agent_only = true;
        let first = Scan { domains: vec![agent_only.clone()], ..Default::default() };
        let second = Scan { domains: vec![agent_only], ..Default::default() };
        let options = RenderOptions { prefix: "lv-".into(), agent_connection: true };
        let inv =
            inventory(&[("qemu:///system".into(), first), ("qemu+ssh://h2/system".into(), second)], &[], &options);
        assert_eq!(hosts(&inv, "lv_running"), ["a1", "a1_qemu_ssh_h2_system"]);
        let vars = &inv["_meta"]["hostvars"]["a1_qemu_ssh_h2_system"];
        assert_eq!(vars["ansible_connection"], AGENT_CONNECTION);
        assert_eq!(vars["ansible_host"], "a1");
        assert_eq!(vars["ansible_libvirt_uri"], "qemu+ssh://h2/system");
        let plain = inventory(
            &[(
                "qemu:///system".into(),
                Scan { domains: vec![domain("a1", PowerState::Running, None)], ..Default::default() },
            )],
            &[],
            &RenderOptions::default(),
        );
        assert!(plain["_meta"]["hostvars"]["a1"].get("ansible_connection").is_none());
    }

    #[test]
    fn hypervisor_is_the_host_of_the_uri() {
        assert_eq!(hypervisor("qemu+ssh://root@h1.example.com:2222/system?keyfile=/k"), "h1.example.com");
        assert_eq!(hypervisor("qemu+tls://[fd00::2]:16514/system"), "[fd00::2]");
        assert_eq!(hypervisor("qemu:///system"), "localhost");
        assert_eq!(hypervisor("qemu+unix:///system?socket=/run/x/libvirt-sock"), "localhost");
    }

    #[test]
    fn group_names_are_safe() {
        assert_eq!(group_name("", "web.example-1"), "web_example_1");
        assert_eq!(group_name("", "1st"), "_1st");
        assert_eq!(group_name("2", "x"), "_2x");
        assert_eq!(group_name("", "ünï"), "_n_");
    }
}
