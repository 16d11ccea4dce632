//! Command line, environment and config file, merged into ready-to-use settings.
//!
//! Precedence, first wins: command-line flags, the config file, then for URIs the
//! `LIBVIRT_INVENTORY_URIS` and `LIBVIRT_DEFAULT_URI` variables, then `qemu:///system` (unless
//! LXD servers are given: then no libvirt URI but those named).
//! Which URIs are trusted (`trusted_uris`, see `trust`) only the command line and the config
//! file say: never the environment, never anything a hypervisor stores.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::Parser;
use serde::Deserialize;
use virtfarm_libvirt::scan::ScanOptions;
use virtfarm_libvirt::validate;

use crate::cache::Cache;
use crate::lxd;
use crate::render::RenderOptions;
use crate::sources::Source;

/// The config file looked for next to the executable when `--config` is not given.
const DEFAULT_CONFIG_NAME: &str = "libvirt_inventory.json";
const DEFAULT_TIMEOUT_S: f64 = 10.0;
const DEFAULT_CACHE_TTL_S: u64 = 300;
const DEFAULT_URI: &str = "qemu:///system";
/// Changes whenever what the inventory takes from metadata changes (see `trust`), so that a
/// cache written under another rule is read again.
const METADATA_RULE: u32 = 2;

/// An Ansible dynamic inventory of libvirt domains: every domain with its state, its groups
/// and the address Ansible reaches it at (DHCP lease, static reservation, guest agent, ARP).
#[derive(Parser, Debug)]
#[command(name = "libvirt_inventory", version)]
#[command(group = clap::ArgGroup::new("mode").required(true).args(["list", "host"]))]
struct Args {
    /// Print the whole inventory, with `_meta.hostvars`.
    #[arg(long)]
    list: bool,
    /// Print the variables of one host.
    #[arg(long, value_name = "NAME")]
    host: Option<String>,
    /// Indent the JSON.
    #[arg(long)]
    pretty: bool,
    /// A libvirt URI to read; repeat for several [env: LIBVIRT_INVENTORY_URIS (comma separated), then LIBVIRT_DEFAULT_URI].
    #[arg(long = "uri", value_name = "URI")]
    uris: Vec<String>,
    /// An LXD server to read, `[REMOTE=]SOCKET_PATH` or `REMOTE=https://HOST[:PORT]`: REMOTE is
    /// the name of the server for the `lxc` client on the controller (`ansible_lxd_remote`),
    /// whose certificates HTTPS uses; repeat for several.
    #[arg(long = "lxd", value_name = "SERVER")]
    lxd: Vec<String>,
    /// A libvirt network whose NIC gives `ansible_host` when a domain has several; repeatable.
    #[arg(long = "network", value_name = "NAME")]
    networks: Vec<String>,
    /// JSON config file [default: libvirt_inventory.json next to the executable, if present].
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Prefix for every group name.
    #[arg(long, value_name = "TEXT")]
    prefix: Option<String>,
    /// Leave shut-off domains out.
    #[arg(long)]
    exclude_shutoff: bool,
    /// Use IPv6 addresses when a NIC has no IPv4 one.
    #[arg(long)]
    ipv6: bool,
    /// Reach hosts that only the guest agent answers through `community.libvirt.libvirt_qemu`.
    #[arg(long)]
    agent_connection: bool,
    /// A URI (as given to --uri or --lxd) whose domains' metadata (or instances' `user.*` keys) may set connection and execution
    /// variables and templates: whoever can edit a domain there can run commands on this
    /// machine. Repeat for several.
    #[arg(long = "trusted-uri", value_name = "URI")]
    trusted_uris: Vec<String>,
    /// Seconds to wait for each URI or LXD server before reporting it as failed; guest agents
    /// answer within what is left of it [default: 10].
    #[arg(long, value_name = "SECONDS")]
    timeout: Option<f64>,
    /// Keep the inventory in this file and reuse it while it is fresh.
    #[arg(long, value_name = "FILE")]
    cache_file: Option<PathBuf>,
    /// Seconds a cached inventory stays fresh [default: 300].
    #[arg(long, value_name = "SECONDS")]
    cache_ttl: Option<u64>,
    /// Ignore the cached inventory and read libvirt (the cache is rewritten).
    #[arg(long)]
    refresh: bool,
    /// Report libvirt calls and timings on stderr.
    #[arg(long)]
    stats: bool,
}

/// The config file: every key optional, unknown keys refused.
#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    uris: Option<Vec<String>>,
    lxd: Option<Vec<String>>,
    networks: Option<Vec<String>>,
    prefix: Option<String>,
    exclude_shutoff: Option<bool>,
    ipv6: Option<bool>,
    agent_connection: Option<bool>,
    trusted_uris: Option<Vec<String>>,
    timeout: Option<f64>,
    cache_file: Option<PathBuf>,
    cache_ttl: Option<u64>,
}

/// What Ansible asked for.
#[derive(Debug, PartialEq, Eq)]
pub enum Mode {
    /// `--list`.
    List,
    /// `--host NAME`.
    Host(String),
}

/// Everything a run needs, validated.
#[derive(Debug)]
pub struct Settings {
    pub mode: Mode,
    pub pretty: bool,
    pub stats: bool,
    pub refresh: bool,
    pub uris: Vec<String>,
    pub lxd: Vec<lxd::Server>,
    pub timeout: Duration,
    pub scan: ScanOptions,
    pub render: RenderOptions,
    pub cache: Option<Cache>,
}

impl Settings {
    /// Reads the process's arguments, environment and config file.
    pub fn from_command_line() -> anyhow::Result<Self> {
        let args = Args::parse();
        let config = match &args.config {
            Some(path) => read_config(path)?,
            None => match default_config_path().filter(|p| p.is_file()) {
                Some(path) => read_config(&path)?,
                None => ConfigFile::default(),
            },
        };
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        Settings::merge(args, config, env)
    }

    fn merge(args: Args, config: ConfigFile, env: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let lxd = if args.lxd.is_empty() { config.lxd.unwrap_or_default() } else { args.lxd };
        let lxd = lxd
            .iter()
            .map(|s| lxd::Server::parse(s))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| anyhow!("lxd: {e}"))?;
        let uris = if !args.uris.is_empty() {
            args.uris
        } else if let Some(uris) = config.uris {
            uris
        } else if let Some(list) = env("LIBVIRT_INVENTORY_URIS") {
            list.split(',').map(str::trim).filter(|u| !u.is_empty()).map(String::from).collect()
        } else if lxd.is_empty() {
            vec![env("LIBVIRT_DEFAULT_URI").unwrap_or_else(|| DEFAULT_URI.to_string())]
        } else {
            vec![]
        };
        if (uris.is_empty() && lxd.is_empty()) || uris.iter().any(|u| u.trim().is_empty()) {
            bail!("uris: give at least one libvirt URI (or LXD server), and no empty one");
        }
        let timeout = args.timeout.or(config.timeout).unwrap_or(DEFAULT_TIMEOUT_S);
        let timeout = validate::fractional_timeout(timeout).map_err(|e| anyhow!("timeout: {e}"))?;
        let cache_ttl = args.cache_ttl.or(config.cache_ttl).unwrap_or(DEFAULT_CACHE_TTL_S);
        let networks = if args.networks.is_empty() { config.networks.unwrap_or_default() } else { args.networks };
        let trusted_uris =
            if args.trusted_uris.is_empty() { config.trusted_uris.unwrap_or_default() } else { args.trusted_uris };
        Ok(Settings {
            mode: args.host.map_or(Mode::List, Mode::Host),
            pretty: args.pretty,
            stats: args.stats,
            refresh: args.refresh,
            uris,
            lxd,
            timeout,
            scan: ScanOptions {
                preferred_networks: networks,
                ipv6: args.ipv6 || config.ipv6.unwrap_or(false),
                exclude_inactive: args.exclude_shutoff || config.exclude_shutoff.unwrap_or(false),
                agent_deadline: None,
            },
            render: RenderOptions {
                prefix: args.prefix.or(config.prefix).unwrap_or_default(),
                agent_connection: args.agent_connection || config.agent_connection.unwrap_or(false),
                trusted_uris,
            },
            cache: args
                .cache_file
                .or(config.cache_file)
                .map(|path| Cache { path, ttl: Duration::from_secs(cache_ttl) }),
        })
    }

    /// What the inventory depends on: a cached one made with other settings, or by a version
    /// that passed other metadata variables on, is not reused.
    pub fn cache_key(&self) -> String {
        format!(
            "metadata_rule={METADATA_RULE} uris={:?} lxd={:?} networks={:?} ipv6={} exclude_shutoff={} prefix={:?} agent_connection={} trusted_uris={:?}",
            self.uris,
            self.lxd.iter().map(|s| &s.source).collect::<Vec<_>>(),
            self.scan.preferred_networks,
            self.scan.ipv6,
            self.scan.exclude_inactive,
            self.render.prefix,
            self.render.agent_connection,
            self.render.trusted_uris,
        )
    }

    /// Every source, libvirt URIs first.
    pub fn sources(&self) -> Vec<Source> {
        let libvirt = self.uris.iter().cloned().map(Source::Libvirt);
        libvirt.chain(self.lxd.iter().cloned().map(Source::Lxd)).collect()
    }

    /// Trusted URIs that are not read: most likely spelled otherwise in `uris` or `lxd`.
    pub fn unread_trusted_uris(&self) -> impl Iterator<Item = &String> {
        let sources = self.sources();
        self.render.trusted_uris.iter().filter(move |t| !sources.iter().any(|s| s.name() == t.as_str()))
    }
}

fn default_config_path() -> Option<PathBuf> {
    Some(std::env::current_exe().ok()?.parent()?.join(DEFAULT_CONFIG_NAME))
}

fn read_config(path: &Path) -> anyhow::Result<ConfigFile> {
    let text = std::fs::read_to_string(path).with_context(|| format!("config file {}", path.display()))?;
    parse_config(&text).with_context(|| format!("config file {}", path.display()))
}

fn parse_config(text: &str) -> anyhow::Result<ConfigFile> {
    Ok(serde_json::from_str(text)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(argv: &[&str]) -> Args {
        Args::try_parse_from(std::iter::once("libvirt_inventory").chain(argv.iter().copied())).expect("valid arguments")
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn command_line_beats_config_beats_environment() {
        let config = parse_config(r#"{"uris": ["qemu+ssh://h1/system"], "prefix": "lv_", "timeout": 2.5}"#).unwrap();
        let env = |name: &str| (name == "LIBVIRT_INVENTORY_URIS").then(|| "qemu:///a, qemu:///b".to_string());
        let s = Settings::merge(args(&["--list", "--prefix", "x_"]), config, env).unwrap();
        assert_eq!(s.uris, ["qemu+ssh://h1/system"]);
        assert_eq!(s.render.prefix, "x_");
        assert_eq!(s.timeout, Duration::from_millis(2500));
        let s = Settings::merge(args(&["--list"]), ConfigFile::default(), env).unwrap();
        assert_eq!(s.uris, ["qemu:///a", "qemu:///b"]);
        let s =
            Settings::merge(args(&["--host", "web1", "--uri", "test:///default"]), ConfigFile::default(), env).unwrap();
        assert_eq!((s.mode, s.uris), (Mode::Host("web1".into()), vec!["test:///default".to_string()]));
        let s = Settings::merge(args(&["--list"]), ConfigFile::default(), no_env).unwrap();
        assert_eq!(s.uris, [DEFAULT_URI]);
        assert_eq!(s.timeout, Duration::from_secs(10));
        assert!(s.cache.is_none());
    }

    #[test]
    fn bad_input_names_what_is_wrong() {
        let unknown = parse_config(r#"{"uri": "qemu:///system"}"#).unwrap_err().to_string();
        assert!(unknown.contains("unknown field `uri`"), "{unknown}");
        let wrong_type = parse_config(r#"{"timeout": "soon"}"#).unwrap_err().to_string();
        assert!(wrong_type.contains("invalid type"), "{wrong_type}");
        let zero = Settings::merge(args(&["--list", "--timeout", "0"]), ConfigFile::default(), no_env).unwrap_err();
        assert!(zero.to_string().starts_with("timeout:"), "{zero}");
        let empty = Settings::merge(args(&["--list"]), parse_config(r#"{"uris": []}"#).unwrap(), no_env).unwrap_err();
        assert!(empty.to_string().starts_with("uris:"), "{empty}");
        assert!(Args::try_parse_from(["libvirt_inventory"]).is_err(), "--list or --host is required");
        assert!(Args::try_parse_from(["libvirt_inventory", "--list", "--host", "a"]).is_err());
    }

    #[test]
    fn lxd_servers_replace_the_default_uri_and_are_sources() {
        let s = Settings::merge(args(&["--list", "--lxd", "/run/lxd.socket"]), ConfigFile::default(), no_env).unwrap();
        assert!(s.uris.is_empty(), "no qemu:///system unless asked for");
        assert_eq!(s.sources().iter().map(Source::name).collect::<Vec<_>>(), ["/run/lxd.socket"]);
        let config = parse_config(r#"{"uris": ["qemu:///system"], "lxd": ["lab=/run/lxd.socket"]}"#).unwrap();
        let s = Settings::merge(args(&["--list", "--trusted-uri", "lab=/run/lxd.socket"]), config, no_env).unwrap();
        assert_eq!(s.sources().iter().map(Source::name).collect::<Vec<_>>(), ["qemu:///system", "lab=/run/lxd.socket"]);
        assert_eq!(s.unread_trusted_uris().count(), 0);
        let plain =
            Settings::merge(args(&["--list", "--uri", "qemu:///system"]), ConfigFile::default(), no_env).unwrap();
        assert_ne!(s.cache_key(), plain.cache_key());
        let relative = Settings::merge(args(&["--list", "--lxd", "lxd.socket"]), ConfigFile::default(), no_env);
        assert!(relative.unwrap_err().to_string().starts_with("lxd: "));
    }

    #[test]
    fn the_cache_key_changes_with_what_the_output_depends_on() {
        let a = Settings::merge(args(&["--list"]), ConfigFile::default(), no_env).unwrap();
        let b = Settings::merge(args(&["--list", "--prefix", "p_"]), ConfigFile::default(), no_env).unwrap();
        let c = Settings::merge(args(&["--host", "x", "--pretty"]), ConfigFile::default(), no_env).unwrap();
        let d =
            Settings::merge(args(&["--list", "--trusted-uri", DEFAULT_URI]), ConfigFile::default(), no_env).unwrap();
        assert_ne!(a.cache_key(), b.cache_key());
        assert_eq!(a.cache_key(), c.cache_key());
        assert_ne!(a.cache_key(), d.cache_key());
    }

    #[test]
    fn no_uri_is_trusted_unless_the_command_line_or_config_file_says_so() {
        let s = Settings::merge(args(&["--list"]), ConfigFile::default(), no_env).unwrap();
        assert!(s.render.trusted_uris.is_empty());
        let config =
            parse_config(r#"{"uris": ["qemu:///system", "qemu+ssh://h2/system"], "trusted_uris": ["qemu:///system"]}"#)
                .unwrap();
        let s = Settings::merge(args(&["--list"]), config, no_env).unwrap();
        assert_eq!(s.render.trusted_uris, ["qemu:///system"]);
        assert_eq!(s.unread_trusted_uris().count(), 0);
        let s = Settings::merge(
            args(&["--list", "--uri", "qemu:///system", "--trusted-uri", "qemu+ssh://h3/system"]),
            parse_config(r#"{"trusted_uris": ["qemu:///system"]}"#).unwrap(),
            no_env,
        )
        .unwrap();
        assert_eq!(s.render.trusted_uris, ["qemu+ssh://h3/system"], "the command line wins");
        assert_eq!(s.unread_trusted_uris().collect::<Vec<_>>(), ["qemu+ssh://h3/system"]);
        // The environment says where to look, never what to trust.
        let env = |name: &str| (name == "LIBVIRT_INVENTORY_URIS").then(|| "qemu:///a".to_string());
        assert!(Settings::merge(args(&["--list"]), ConfigFile::default(), env).unwrap().render.trusted_uris.is_empty());
        assert!(parse_config(r#"{"trusted_uris": true}"#).unwrap_err().to_string().contains("invalid type"));
    }
}
