//! Scans and LXD listings → the JSON Ansible reads from a script inventory: groups,
//! `_meta.hostvars`, and the warnings in `all.vars.libvirt_inventory_warnings`. What a
//! domain's metadata (or an instance's `user.*` keys) may set, and how text from a source is
//! marked, is decided in [`crate::trust`].

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use serde_json::{json, Map, Value};
use virtfarm_libvirt::domain_xml::InstanceMetadata;
use virtfarm_libvirt::scan::{Scan, ScannedDomain};

use crate::lxd::{Instance, Listing};
use crate::trust::{self, Verdict};

/// How groups and connection variables are named, and which URIs are trusted.
#[derive(Clone, Debug, Default)]
pub struct RenderOptions {
    /// Put in front of every group name.
    pub prefix: String,
    /// Emit `ansible_connection: community.libvirt.libvirt_qemu` for hosts only the guest agent reaches.
    pub agent_connection: bool,
    /// URIs whose domains' metadata may set any variable, templates included (see [`crate::trust`]).
    pub trusted_uris: Vec<String>,
}

/// The inventory document, and what it left out, for stderr (the document itself may be
/// cached): one warning per domain or instance naming the variables left out of its metadata,
/// and one per host whose name another source's host has taken.
#[derive(Debug)]
pub struct Rendered {
    pub document: Value,
    pub left_out: Vec<String>,
}

/// The connection plugin that talks to a guest through its agent, by domain name.
const AGENT_CONNECTION: &str = "community.libvirt.libvirt_qemu";
/// The connection plugin that runs commands in an LXD instance through the `lxc` client.
const LXD_CONNECTION: &str = "community.general.lxd";
/// The `user.*` key whose comma-separated value lists an LXD instance's groups.
const LXD_GROUPS_KEY: &str = "ansible.groups";

/// Names that are not groups of ours: Ansible's implicit groups and the document's `_meta`.
const RESERVED: [&str; 3] = ["all", "ungrouped", "_meta"];

/// Builds the inventory of `scans` (URI, scan) and then of `listings`, in order; a host name
/// already taken by an earlier source gets the source appended, and a warning.
pub fn inventory(
    scans: &[(String, Scan)],
    listings: &[Listing],
    warnings: &[String],
    options: &RenderOptions,
) -> Rendered {
    let mut hosts = Hosts::default();
    for (uri, scan) in scans {
        let source = Source { uri, trusted: options.trusted_uris.contains(uri) };
        for domain in &scan.domains {
            if let Some(warning) = domain.metadata.as_ref().and_then(|meta| {
                let keys: Vec<&str> = meta.vars.iter().map(|(k, _)| k.as_str()).collect();
                left_out_warning(&source, &format!("domain {:?}", domain.name), &keys)
            }) {
                hosts.left_out.push(warning);
            }
            hosts.add(&source, &domain.name, group_names(uri, domain), host_vars(&source, domain, options), options);
        }
    }
    for listing in listings {
        let uri = &listing.server.source;
        let source = Source { uri, trusted: options.trusted_uris.contains(uri) };
        for instance in &listing.instances {
            let what = format!("LXD instance {:?}", instance.name);
            let keys: Vec<&str> = instance.user_config().map(|(k, _)| k).collect();
            if let Some(warning) = left_out_warning(&source, &what, &keys) {
                hosts.left_out.push(warning);
            }
            let vars = lxd_host_vars(&source, listing, instance);
            hosts.add(&source, &instance.name, lxd_group_names(uri, instance), vars, options);
        }
    }
    let Hosts { groups, hostvars, left_out, clashes } = hosts;
    let mut document = Map::new();
    document.insert("_meta".into(), json!({ "hostvars": hostvars }));
    // Messages may quote what a hypervisor holds (names, XML): never templates.
    let warnings: Vec<Value> = warnings.iter().chain(&clashes).map(|w| trust::untrusted(w)).collect();
    document.insert("all".into(), json!({ "vars": { "libvirt_inventory_warnings": warnings } }));
    for (group, hosts) in groups {
        document.insert(group, json!({ "hosts": hosts }));
    }
    Rendered { document: Value::Object(document), left_out: left_out.into_iter().chain(clashes).collect() }
}

/// The hosts and groups built so far.
#[derive(Default)]
struct Hosts {
    groups: BTreeMap<String, BTreeSet<String>>,
    hostvars: Map<String, Value>,
    left_out: Vec<String>,
    clashes: Vec<String>,
}

impl Hosts {
    /// Adds the host `name` of `source`, renamed (and reported) when an earlier source has it.
    fn add(
        &mut self,
        source: &Source<'_>,
        name: &str,
        groups: Vec<String>,
        vars: Map<String, Value>,
        options: &RenderOptions,
    ) {
        let host = if self.hostvars.contains_key(name) {
            let renamed = format!("{name}_{}", slug(source.uri));
            self.clashes.push(format!(
                "{}: {name:?} is the name of a host of another source, kept as it is; this one is listed as {renamed:?}",
                source.uri
            ));
            renamed
        } else {
            name.to_string()
        };
        for group in groups.iter().map(|g| group_name(&options.prefix, g)) {
            if !RESERVED.contains(&group.as_str()) {
                self.groups.entry(group).or_default().insert(host.clone());
            }
        }
        self.hostvars.insert(host, Value::Object(vars));
    }
}

/// The URI a domain was read from, and whether the user trusts it.
struct Source<'a> {
    uri: &'a str,
    trusted: bool,
}

impl Source<'_> {
    /// A string read from this URI, as it goes into the inventory.
    fn text(&self, value: &str) -> Value {
        trust::text(value, self.trusted)
    }

    /// An address: plain when it is one (it cannot be a template), else like any text.
    fn address(&self, ip: &str) -> Value {
        if ip.parse::<IpAddr>().is_ok() {
            json!(ip)
        } else {
            self.text(ip)
        }
    }
}

/// The metadata's variables that `source` may set.
fn passed_vars<'m>(source: &Source<'_>, meta: &'m InstanceMetadata) -> impl Iterator<Item = &'m (String, String)> {
    let trusted = source.trusted;
    meta.vars.iter().filter(move |(key, _)| trust::admits(key, trusted))
}

/// The warning naming the variables (`keys`) of `what` (a domain's metadata or an instance's
/// `user.*` keys) that are not passed on, if any.
fn left_out_warning(source: &Source<'_>, what: &str, keys: &[&str]) -> Option<String> {
    let named = |wanted: Verdict| -> Vec<String> {
        keys.iter()
            .filter(|key| !trust::admits(key, source.trusted) && trust::verdict(key) == wanted)
            .map(|key| format!("{key:?}"))
            .collect()
    };
    let mut reasons = Vec::new();
    let untrusted = named(Verdict::NeedsTrust);
    if !untrusted.is_empty() {
        reasons.push(format!(
            "{} (connection and execution variables are taken only from a URI in trusted_uris)",
            untrusted.join(", ")
        ));
    }
    let secrets = named(Verdict::Secret);
    if !secrets.is_empty() {
        reasons.push(format!("{} (secrets are never passed on)", secrets.join(", ")));
    }
    (!reasons.is_empty()).then(|| format!("{}: {what}: variables left out: {}", source.uri, reasons.join("; ")))
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

fn host_vars(source: &Source<'_>, domain: &ScannedDomain, options: &RenderOptions) -> Map<String, Value> {
    let mut vars = Map::new();
    // The metadata's variables first, so that ours win on a clash.
    if let Some(meta) = &domain.metadata {
        vars.extend(passed_vars(source, meta).map(|(k, v)| (k.clone(), source.text(v))));
        if let Some(user) = &meta.user {
            vars.insert("ansible_user".into(), source.text(user));
        }
    }
    if let Some(address) = &domain.address {
        vars.insert("ansible_host".into(), address.ip.as_deref().map_or(Value::Null, |ip| source.address(ip)));
        vars.insert("libvirt_ip_source".into(), json!(address.source.map(|s| s.as_str())));
    } else if domain.agent_only && options.agent_connection {
        vars.insert("ansible_connection".into(), json!(AGENT_CONNECTION));
        vars.insert("ansible_host".into(), source.text(&domain.name));
        vars.insert("ansible_libvirt_uri".into(), json!(source.uri));
    }
    let interfaces: Vec<Value> = domain
        .interfaces
        .iter()
        .map(|i| {
            json!({
                // libvirt refuses a definition whose MAC is not one.
                "mac": i.mac,
                "network": i.network.as_deref().map(|n| source.text(n)),
                "ip": i.ip.as_deref().map(|ip| source.address(ip)),
                "source": i.source.map(|s| s.as_str()),
            })
        })
        .collect();
    vars.insert("libvirt_uri".into(), json!(source.uri));
    vars.insert("libvirt_hypervisor".into(), json!(hypervisor(source.uri)));
    vars.insert("libvirt_uuid".into(), json!(domain.uuid));
    vars.insert("libvirt_state".into(), json!(domain.state.as_str()));
    vars.insert("libvirt_vcpus".into(), json!(domain.vcpus));
    vars.insert("libvirt_memory_mb".into(), json!(domain.memory_mib));
    vars.insert("libvirt_interfaces".into(), Value::Array(interfaces));
    vars.insert("libvirt_metadata".into(), domain.metadata.as_ref().map_or(Value::Null, |m| metadata_json(source, m)));
    vars
}

fn metadata_json(source: &Source<'_>, meta: &InstanceMetadata) -> Value {
    let text = |value: &Option<String>| value.as_deref().map(|v| source.text(v));
    json!({
        "platform": text(&meta.platform),
        "target": text(&meta.target),
        "project": text(&meta.project),
        "user": text(&meta.user),
        "groups": meta.groups.iter().map(|g| source.text(g)).collect::<Vec<_>>(),
        "vars": passed_vars(source, meta).map(|(k, v)| (k.clone(), source.text(v))).collect::<Map<_, _>>(),
    })
}

/// The groups of one LXD instance before prefixing and sanitising: its state, type, profiles,
/// project, cluster member, server, and its `user.ansible.groups`.
fn lxd_group_names(uri: &str, instance: &Instance) -> Vec<String> {
    let mut names = vec![
        instance.state_name(),
        format!("lxd_{}", instance.kind),
        format!("project_{}", instance.project),
        format!("uri_{}", slug(uri)),
    ];
    names.extend(instance.profiles.iter().map(|p| format!("profile_{p}")));
    // `none` outside a cluster.
    if !matches!(instance.location.as_str(), "" | "none") {
        names.push(format!("location_{}", instance.location));
    }
    let listed = instance.user_config().find(|(k, _)| *k == LXD_GROUPS_KEY).map_or("", |(_, v)| v);
    names.extend(listed.split(',').map(str::trim).filter(|g| !g.is_empty()).map(String::from));
    names
}

/// An LXD instance's variables: reached with `community.general.lxd` by its name (the
/// plugin's `ansible_lxd_host`, since `ansible_host` holds the address), and what LXD says.
fn lxd_host_vars(source: &Source<'_>, listing: &Listing, instance: &Instance) -> Map<String, Value> {
    let user: Map<String, Value> = instance
        .user_config()
        .filter(|(key, _)| *key != LXD_GROUPS_KEY && trust::admits(key, source.trusted))
        .map(|(key, value)| (key.to_string(), source.text(value)))
        .collect();
    // The user's keys first, so that ours win on a clash; a key that is no variable name
    // (`user.a.b`) is only in `lxd_user`.
    let mut vars: Map<String, Value> =
        user.iter().filter(|(key, _)| is_variable_name(key)).map(|(k, v)| (k.clone(), v.clone())).collect();
    vars.insert("ansible_connection".into(), json!(LXD_CONNECTION));
    vars.insert("ansible_lxd_host".into(), source.text(&instance.name));
    if let Some(remote) = &listing.server.remote {
        vars.insert("ansible_lxd_remote".into(), json!(remote));
    }
    if instance.project != "default" {
        vars.insert("ansible_lxd_project".into(), source.text(&instance.project));
    }
    if let Some(ip) = &instance.address {
        vars.insert("ansible_host".into(), source.address(ip));
    }
    let addresses: Vec<Value> = instance
        .addresses()
        .into_iter()
        .map(|(nic, family, ip)| json!({ "interface": source.text(nic), "family": family, "address": source.address(ip) }))
        .collect();
    vars.insert("lxd_server".into(), json!(source.uri));
    vars.insert("lxd_state".into(), json!(instance.state_name()));
    vars.insert("lxd_type".into(), source.text(&instance.kind));
    vars.insert("lxd_profiles".into(), instance.profiles.iter().map(|p| source.text(p)).collect());
    vars.insert("lxd_project".into(), source.text(&instance.project));
    vars.insert("lxd_location".into(), source.text(&instance.location));
    vars.insert("lxd_addresses".into(), Value::Array(addresses));
    vars.insert("lxd_user".into(), Value::Object(user));
    vars
}

/// True for a name Ansible takes as a variable: letters, digits and `_`, not first a digit.
fn is_variable_name(name: &str) -> bool {
    !name.starts_with(|c: char| c.is_ascii_digit())
        && !name.is_empty()
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
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
        let inv = inventory(&[("qemu:///system".into(), scan)], &[], &["h2: down".into()], &RenderOptions::default())
            .document;
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
        assert_eq!(web["ansible_user"], unsafe_text("ansible"));
        assert!(web.get("ansible_python_interpreter").is_none(), "an execution variable from an untrusted URI");
        assert_eq!(web["role"], unsafe_text("front"));
        assert_eq!(web["libvirt_memory_mb"], 384);
        assert_eq!(web["libvirt_interfaces"][0]["network"], unsafe_text("vf-net"));
        assert_eq!(web["libvirt_interfaces"][0]["ip"], "10.77.0.5");
        assert_eq!(web["libvirt_metadata"]["platform"], unsafe_text("debian"));
        assert_eq!(web["libvirt_metadata"]["vars"], json!({"role": unsafe_text("front")}));
        let db = &inv["_meta"]["hostvars"]["db1"];
        assert!(db.get("ansible_host").is_none());
        assert_eq!(db["libvirt_state"], "shutoff");
        assert_eq!(inv["all"]["vars"]["libvirt_inventory_warnings"], json!([unsafe_text("h2: down")]));
    }

    #[test]
    fn prefix_name_clashes_and_agent_only_hosts() {
        let mut agent_only = domain("a1", PowerState::Running, None);
        agent_only.agent_only = true;
        let first = Scan { domains: vec![agent_only.clone()], ..Default::default() };
        let second = Scan { domains: vec![agent_only], ..Default::default() };
        let options = RenderOptions { prefix: "lv-".into(), agent_connection: true, ..Default::default() };
        let inv =
            inventory(&[("qemu:///system".into(), first), ("qemu+ssh://h2/system".into(), second)], &[], &[], &options)
                .document;
        assert_eq!(hosts(&inv, "lv_running"), ["a1", "a1_qemu_ssh_h2_system"]);
        let warnings = inv["all"]["vars"]["libvirt_inventory_warnings"].to_string();
        assert!(
            warnings.contains("qemu+ssh://h2/system: \\\"a1\\\" is the name of a host of another source"),
            "{warnings}"
        );
        let vars = &inv["_meta"]["hostvars"]["a1_qemu_ssh_h2_system"];
        assert_eq!(vars["ansible_connection"], AGENT_CONNECTION);
        assert_eq!(vars["ansible_host"], unsafe_text("a1"), "a domain name is the hypervisor's text");
        assert_eq!(vars["ansible_libvirt_uri"], "qemu+ssh://h2/system");
        let plain = inventory(
            &[(
                "qemu:///system".into(),
                Scan { domains: vec![domain("a1", PowerState::Running, None)], ..Default::default() },
            )],
            &[],
            &[],
            &RenderOptions::default(),
        )
        .document;
        assert!(plain["_meta"]["hostvars"]["a1"].get("ansible_connection").is_none());
    }

    fn unsafe_text(text: &str) -> Value {
        json!({ "__ansible_unsafe": text })
    }

    /// A shut-off domain whose metadata (written by hand, say with `virsh metadata`) tries
    /// every way of running something on the controller, and holds secrets.
    fn hostile(name: &str) -> ScannedDomain {
        let mut evil = domain(name, PowerState::ShutOff, None);
        evil.metadata = Some(InstanceMetadata {
            user: Some("{{ lookup('pipe', 'id') }}".into()),
            groups: vec!["web".into()],
            vars: [
                ("ansible_ssh_common_args", "-o ProxyCommand=\"touch /tmp/pwned-%h\""),
                ("ansible_connection", "local"),
                ("ansible_host", "192.0.2.1"),
                ("ansible_python_interpreter", "/bin/sh -c 'touch /tmp/pwned'"),
                ("ansible_become_exe", "/tmp/evil"),
                ("podman_executable", "/tmp/evil"),
                ("ansible_port", "2222"),
                ("role", "{{ lookup('pipe', 'touch /tmp/pwned') }}"),
                ("ansible_password", "s3cret"),
                ("ansible_become_password", "s3cret"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .into(),
            ..Default::default()
        });
        evil
    }

    #[test]
    fn metadata_from_an_untrusted_uri_sets_only_safe_variables_and_never_templates() {
        let scan = Scan { domains: vec![hostile("ev1")], ..Default::default() };
        let rendered = inventory(&[("qemu:///system".into(), scan)], &[], &[], &RenderOptions::default());
        let vars = rendered.document["_meta"]["hostvars"]["ev1"].as_object().expect("host vars").clone();
        for key in [
            "ansible_ssh_common_args",
            "ansible_connection",
            "ansible_host",
            "ansible_python_interpreter",
            "ansible_become_exe",
            "podman_executable",
            "ansible_password",
            "ansible_become_password",
        ] {
            assert!(!vars.contains_key(key), "{key} passed: {vars:?}");
            assert!(vars["libvirt_metadata"]["vars"].get(key).is_none(), "{key} in libvirt_metadata");
        }
        assert_eq!(vars["ansible_user"], unsafe_text("{{ lookup('pipe', 'id') }}"));
        assert_eq!(vars["ansible_port"], unsafe_text("2222"));
        assert_eq!(vars["role"], unsafe_text("{{ lookup('pipe', 'touch /tmp/pwned') }}"));
        assert_eq!(vars["libvirt_metadata"]["groups"], json!([unsafe_text("web")]));
        assert_eq!(hosts(&rendered.document, "web"), ["ev1"], "groups are safe");
        assert!(!rendered.document.to_string().contains("s3cret"));
        assert_eq!(rendered.left_out.len(), 1, "one warning for the domain: {:?}", rendered.left_out);
        let warning = &rendered.left_out[0];
        assert!(warning.starts_with("qemu:///system: domain \"ev1\": "), "{warning}");
        for key in ["ansible_ssh_common_args", "ansible_connection", "podman_executable", "ansible_password"] {
            assert!(warning.contains(&format!("\"{key}\"")), "{key} not named: {warning}");
        }
        assert!(!warning.contains("s3cret") && !warning.contains("role"), "{warning}");
    }

    #[test]
    fn a_trusted_uri_sets_any_variable_but_never_a_secret() {
        let trusted = "qemu+ssh://root@hv1/system";
        let scans = [
            (trusted.to_string(), Scan { domains: vec![hostile("ev1")], ..Default::default() }),
            ("qemu+ssh://root@hv2/system".to_string(), Scan { domains: vec![hostile("ev2")], ..Default::default() }),
        ];
        let options = RenderOptions { trusted_uris: vec![trusted.into()], ..Default::default() };
        let rendered = inventory(&scans, &[], &[], &options);
        let hostvars = &rendered.document["_meta"]["hostvars"];
        let ev1 = &hostvars["ev1"];
        assert_eq!(ev1["ansible_connection"], "local");
        assert_eq!(ev1["ansible_ssh_common_args"], "-o ProxyCommand=\"touch /tmp/pwned-%h\"");
        assert_eq!(ev1["ansible_python_interpreter"], "/bin/sh -c 'touch /tmp/pwned'");
        assert_eq!(ev1["ansible_host"], "192.0.2.1", "no address of its own: the metadata's");
        assert_eq!(ev1["ansible_user"], "{{ lookup('pipe', 'id') }}", "a trusted URI may hold templates");
        assert_eq!(ev1["libvirt_metadata"]["vars"]["ansible_connection"], "local");
        assert!(ev1.get("ansible_password").is_none() && ev1.get("ansible_become_password").is_none());
        assert!(hostvars["ev2"].get("ansible_connection").is_none(), "only the listed URI is trusted");
        assert!(!rendered.document.to_string().contains("s3cret"));
        assert_eq!(rendered.left_out.len(), 2, "{:?}", rendered.left_out);
        assert!(
            rendered.left_out[0].contains("\"ansible_password\"") && !rendered.left_out[0].contains("ProxyCommand")
        );
        assert!(!rendered.left_out[0].contains("\"ansible_connection\""), "{}", rendered.left_out[0]);
        assert!(rendered.left_out[1].starts_with("qemu+ssh://root@hv2/system: domain \"ev2\""));
    }

    #[test]
    fn a_domain_without_anything_to_leave_out_warns_of_nothing() {
        let mut web = domain("web1", PowerState::Running, Some("10.77.0.5"));
        web.metadata = Some(InstanceMetadata { user: Some("ansible".into()), ..Default::default() });
        let scan = Scan { domains: vec![web, domain("db1", PowerState::ShutOff, None)], ..Default::default() };
        assert!(inventory(&[("qemu:///system".into(), scan)], &[], &[], &RenderOptions::default()).left_out.is_empty());
    }

    #[test]
    fn hypervisor_is_the_host_of_the_uri() {
        assert_eq!(hypervisor("qemu+ssh://root@h1.example.com:2222/system?keyfile=/k"), "h1.example.com");
        assert_eq!(hypervisor("qemu+tls://[fd00::2]:16514/system"), "[fd00::2]");
        assert_eq!(hypervisor("qemu:///system"), "localhost");
        assert_eq!(hypervisor("qemu+unix:///system?socket=/run/x/libvirt-sock"), "localhost");
    }

    fn lxd_listing(source: &str, remote: Option<&str>, instances: Vec<Instance>) -> Listing {
        let server = crate::lxd::Server {
            source: source.into(),
            endpoint: crate::lxd::Endpoint::Unix("/run/lxd.socket".into()),
            remote: remote.map(Into::into),
        };
        Listing { server, instances, calls: 1 }
    }

    fn instance(name: &str, status: &str, address: Option<&str>, user: &[(&str, &str)]) -> Instance {
        Instance {
            name: name.into(),
            status: status.into(),
            kind: "container".into(),
            profiles: vec!["default".into(), "web".into()],
            project: "default".into(),
            location: "none".into(),
            expanded_config: user.iter().map(|(k, v)| (format!("user.{k}"), v.to_string())).collect(),
            address: address.map(Into::into),
            ..Default::default()
        }
    }

    #[test]
    fn lxd_instances_beside_domains_reached_through_the_lxd_connection() {
        let scan = Scan { domains: vec![domain("web1", PowerState::Running, Some("10.77.0.5"))], ..Default::default() };
        let mut db = instance(
            "db1",
            "Running",
            Some("10.81.0.7"),
            &[
                ("ansible.groups", "databases, eu"),
                ("role", "primary"),
                ("ansible_connection", "local"),
                ("ansible_password", "s3cret"),
                ("a.b", "dotted"),
            ],
        );
        db.project = "lab".into();
        db.location = "member2".into();
        let listing = lxd_listing(
            "lab=/run/lxd.socket",
            Some("lab"),
            vec![db, instance("web1", "Stopped", None, &[]), instance("c3", "Frozen", None, &[])],
        );
        let rendered = inventory(&[("qemu:///system".into(), scan)], &[listing], &[], &RenderOptions::default());
        let inv = &rendered.document;
        let db = &inv["_meta"]["hostvars"]["db1"];
        assert_eq!(db["ansible_connection"], LXD_CONNECTION);
        assert_eq!(db["ansible_lxd_host"], unsafe_text("db1"), "the plugin's instance, not the address");
        assert_eq!(db["ansible_host"], "10.81.0.7");
        assert_eq!(
            (db["ansible_lxd_remote"].clone(), db["ansible_lxd_project"].clone()),
            (json!("lab"), unsafe_text("lab"))
        );
        assert_eq!(db["role"], unsafe_text("primary"));
        assert_eq!(db["lxd_user"], json!({"role": unsafe_text("primary"), "a.b": unsafe_text("dotted")}));
        assert_eq!((db["lxd_state"].clone(), db["lxd_location"].clone()), (json!("running"), unsafe_text("member2")));
        assert!(db.get("a.b").is_none() && !inv.to_string().contains("s3cret"));
        for group in [
            "running",
            "lxd_container",
            "profile_web",
            "project_lab",
            "location_member2",
            "databases",
            "eu",
            "uri_lab_run_lxd_socket",
        ] {
            assert!(hosts(inv, group).contains(&"db1".to_string()), "{group}: {inv}");
        }
        assert_eq!(hosts(inv, "running"), ["db1", "web1"], "one state group for domains and instances");
        assert_eq!(hosts(inv, "stopped"), ["web1_lab_run_lxd_socket"]);
        assert_eq!(hosts(inv, "frozen"), ["c3"]);
        assert_eq!(inv["_meta"]["hostvars"]["web1"]["libvirt_state"], "running", "the domain keeps its name");
        assert!(inv["_meta"]["hostvars"]["c3"].get("ansible_host").is_none());
        assert!(inv["_meta"]["hostvars"]["c3"].get("ansible_lxd_remote").is_some());
        let warnings = inv["all"]["vars"]["libvirt_inventory_warnings"].to_string();
        assert!(
            warnings.contains("lab=/run/lxd.socket: \\\"web1\\\" is the name of a host of another source"),
            "{warnings}"
        );
        assert_eq!(rendered.left_out.len(), 2, "{:?}", rendered.left_out);
        assert!(rendered.left_out[0]
            .starts_with("lab=/run/lxd.socket: LXD instance \"db1\": variables left out: \"ansible_connection\""));
    }

    #[test]
    fn group_names_are_safe() {
        assert_eq!(group_name("", "web.example-1"), "web_example_1");
        assert_eq!(group_name("", "1st"), "_1st");
        assert_eq!(group_name("2", "x"), "_2x");
        assert_eq!(group_name("", "ünï"), "_n_");
    }
}
