//! LXD servers as a source: their instances, read through LXD's REST API on its unix socket,
//! or over HTTPS (`tls`) for a remote server or a cluster member.
//!
//! One request per server, `GET /1.0/instances?recursion=2&all-projects=true`, returns every
//! instance of every project with its state and addresses; on a cluster member it includes
//! the other members' instances and names each one's `location`.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use virtfarm_libvirt::scan::ScanOptions;

mod tls;

/// The port LXD listens on for HTTPS unless told otherwise.
const HTTPS_PORT: u16 = 8443;

/// The one request a listing takes.
const INSTANCES: &str = "/1.0/instances?recursion=2&all-projects=true";

/// Why a server could not be listed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server (its socket, or `host:port`) could not be reached or read.
    #[error("cannot reach {0}: {1}")]
    Socket(String, std::io::Error),
    /// The server did not answer within the timeout.
    #[error("{}", crate::sources::no_answer(*.0))]
    NoAnswer(Duration),
    /// The server answered with an error.
    #[error("LXD answered {code}: {message}")]
    Server { code: u16, message: String },
    /// The answer was not LXD's JSON.
    #[error("not an LXD answer: {0}")]
    Answer(String),
    /// No TLS session: lxc's files for the remote, or the handshake.
    #[error("TLS: {0}")]
    Tls(String),
}

/// An LXD server as the user named it: `[REMOTE=]PATH`, `[REMOTE=]unix://PATH` or
/// `REMOTE=https://HOST[:PORT]`, where REMOTE is the name the `lxc` client knows the server by
/// (`ansible_lxd_remote`); over HTTPS the inventory uses lxc's certificates for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Server {
    /// As written: what warnings, `lxd_server`, its group and `trusted_uris` use.
    pub source: String,
    pub endpoint: Endpoint,
    pub remote: Option<String>,
}

/// Where a server answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Unix(PathBuf),
    /// `host:port`, and the lxc remote whose certificates authenticate both ends.
    Https {
        authority: String,
        remote: String,
    },
}

impl Server {
    /// Parses one `--lxd` value.
    pub fn parse(source: &str) -> Result<Server, String> {
        let (remote, address) = match source.split_once('=') {
            Some((remote, address)) if !remote.is_empty() && !remote.contains('/') => (Some(remote), address),
            _ => (None, source),
        };
        let endpoint = if let Some(rest) = address.strip_prefix("https://") {
            let Some(remote) = remote else {
                return Err(format!("{source}: name the lxc remote (REMOTE=https://...): its certificates are used"));
            };
            let authority = rest.trim_end_matches('/');
            // `[fd00::1]` ends in `:1]`, which is no port.
            let has_port = authority.rsplit_once(':').is_some_and(|(_, port)| port.parse::<u16>().is_ok());
            let authority = if has_port { authority.to_string() } else { format!("{authority}:{HTTPS_PORT}") };
            Endpoint::Https { authority, remote: remote.to_string() }
        } else {
            let path = address.strip_prefix("unix://").unwrap_or(address);
            if !path.starts_with('/') {
                return Err(format!("{source}: give the absolute path of the server's unix socket"));
            }
            Endpoint::Unix(path.into())
        };
        Ok(Server { source: source.to_string(), endpoint, remote: remote.map(String::from) })
    }
}

/// What one server listed, and the API requests it took.
#[derive(Debug)]
pub struct Listing {
    pub server: Server,
    pub instances: Vec<Instance>,
    pub calls: u64,
}

/// One instance, as LXD describes it (only what the inventory uses).
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Instance {
    pub name: String,
    /// `Running`, `Stopped`, `Frozen`, ...
    pub status: String,
    /// `container` or `virtual-machine`.
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub profiles: Vec<String>,
    #[serde(default = "default_project")]
    pub project: String,
    /// The cluster member it runs on; `none` outside a cluster.
    #[serde(default)]
    pub location: String,
    /// The instance's configuration with its profiles' applied: where `user.*` keys are.
    #[serde(default)]
    pub expanded_config: BTreeMap<String, String>,
    #[serde(default)]
    pub state: Option<State>,
    /// The address Ansible reaches it at, chosen by [`list`].
    #[serde(skip)]
    pub address: Option<String>,
}

fn default_project() -> String {
    "default".into()
}

/// An instance's runtime state: its NICs, by name inside the instance.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct State {
    #[serde(default)]
    pub network: Option<BTreeMap<String, Nic>>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct Nic {
    #[serde(default)]
    pub addresses: Vec<Address>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct Address {
    /// `inet` or `inet6`.
    pub family: String,
    pub address: String,
    /// `global`, `link` or `local`.
    pub scope: String,
}

impl Instance {
    /// The state in lower case, as a group name: `running`, `stopped`, `frozen`. It goes out
    /// unmarked, so a status that is not one word (the server's text, which a template could
    /// hide in) is `unknown`.
    pub fn state_name(&self) -> String {
        if !self.status.is_empty() && self.status.chars().all(|c| c.is_ascii_alphabetic()) {
            self.status.to_ascii_lowercase()
        } else {
            "unknown".to_string()
        }
    }

    /// Every global IPv4 and IPv6 address, by interface: (interface, family, address). The
    /// family goes out unmarked: only LXD's two are kept.
    pub fn addresses(&self) -> Vec<(&str, &str, &str)> {
        let nics = self.state.as_ref().and_then(|s| s.network.as_ref());
        nics.into_iter()
            .flatten()
            .flat_map(|(nic, n)| n.addresses.iter().map(move |a| (nic.as_str(), a)))
            .filter(|(_, a)| a.scope == "global" && matches!(a.family.as_str(), "inet" | "inet6"))
            .map(|(nic, a)| (nic, a.family.as_str(), a.address.as_str()))
            .collect()
    }

    /// The first global IPv4 address, else (when `ipv6`) IPv6.
    fn reachable_address(&self, ipv6: bool) -> Option<String> {
        let addresses = self.addresses();
        let of = |family: &str| addresses.iter().find(|(_, f, _)| *f == family).map(|(_, _, a)| a.to_string());
        of("inet").or_else(|| of("inet6").filter(|_| ipv6))
    }

    /// The `user.*` keys without their prefix.
    pub fn user_config(&self) -> impl Iterator<Item = (&str, &str)> {
        self.expanded_config.iter().filter_map(|(k, v)| Some((k.strip_prefix("user.")?, v.as_str())))
    }
}

/// Lists the instances of `server` with the options libvirt scans take: stopped ones left out
/// with `exclude_inactive`, IPv6 addresses with `ipv6`. Reads and writes on the socket give up
/// after `timeout`.
pub fn list(server: &Server, options: &ScanOptions, timeout: Duration) -> Result<Listing, Error> {
    let body = get(server, INSTANCES, timeout)?;
    let mut instances: Vec<Instance> = serde_json::from_value(body).map_err(|e| Error::Answer(e.to_string()))?;
    instances.retain(|i| !(options.exclude_inactive && i.state_name() == "stopped"));
    for instance in &mut instances {
        instance.address = instance.reachable_address(options.ipv6);
    }
    Ok(Listing { server: server.clone(), instances, calls: 1 })
}

/// One GET over HTTP/1.0, so that the answer is the rest of the stream (no chunks); returns
/// the `metadata` of LXD's sync answer.
fn get(server: &Server, path: &str, timeout: Duration) -> Result<serde_json::Value, Error> {
    let request = format!("GET {path} HTTP/1.0\r\nHost: lxd\r\n\r\n");
    let answer = match &server.endpoint {
        Endpoint::Unix(socket) => {
            let socket_error = io_error(socket.display().to_string(), timeout);
            let stream = UnixStream::connect(socket).map_err(&socket_error)?;
            stream.set_read_timeout(Some(timeout)).map_err(&socket_error)?;
            stream.set_write_timeout(Some(timeout)).map_err(&socket_error)?;
            exchange(stream, &request).map_err(socket_error)?
        }
        Endpoint::Https { authority, remote } => {
            let stream = tls::connect(authority, remote, timeout)?;
            let socket_error = io_error(authority.clone(), timeout);
            stream.sock.set_read_timeout(Some(timeout)).map_err(&socket_error)?;
            stream.sock.set_write_timeout(Some(timeout)).map_err(&socket_error)?;
            exchange(stream, &request).map_err(|e| match e.get_ref() {
                // A refused handshake surfaces as an I/O error wrapping rustls's.
                Some(inner) if inner.is::<rustls::Error>() => Error::Tls(inner.to_string()),
                _ => socket_error(e),
            })?
        }
    };
    parse_answer(&answer)
}

/// An I/O error at `place` (a socket, `host:port`): a read or connection that ran out of
/// `timeout` is [`Error::NoAnswer`], in the words of a source that missed the deadline.
fn io_error(place: String, timeout: Duration) -> impl Fn(std::io::Error) -> Error {
    move |e| match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => Error::NoAnswer(timeout),
        _ => Error::Socket(place.clone(), e),
    }
}

/// Sends `request` and reads the answer to the end of the stream. A TLS peer that closes
/// without a close_notify has still sent the whole HTTP/1.0 answer.
fn exchange(mut stream: impl Read + Write, request: &str) -> std::io::Result<Vec<u8>> {
    stream.write_all(request.as_bytes())?;
    let mut answer = Vec::new();
    match stream.read_to_end(&mut answer) {
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !answer.is_empty() => Ok(answer),
        other => other.map(|_| answer),
    }
}

/// An HTTP answer from LXD → its `metadata`, or the error it reports.
fn parse_answer(answer: &[u8]) -> Result<serde_json::Value, Error> {
    let text = String::from_utf8_lossy(answer);
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| Error::Answer("no HTTP header".into()))?;
    let status: u16 = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    #[derive(Deserialize)]
    struct Envelope {
        #[serde(default)]
        error: String,
        #[serde(default)]
        error_code: u16,
        #[serde(default)]
        metadata: serde_json::Value,
    }
    let envelope: Envelope = serde_json::from_str(body)
        .map_err(|e| Error::Answer(format!("HTTP {status}: {e}: {}", body.chars().take(200).collect::<String>())))?;
    if status != 200 || envelope.error_code != 0 {
        let code = if envelope.error_code != 0 { envelope.error_code } else { status };
        return Err(Error::Server { code, message: envelope.error });
    }
    Ok(envelope.metadata)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_that_never_answers_is_reported_as_the_deadline_reports_it() {
        let dir = std::env::temp_dir().join(format!("vf-lxd-silent-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("silent.socket");
        let _ = std::fs::remove_file(&socket);
        // Accepted by the kernel's backlog and never read: the request is sent, no answer comes.
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let server = Server::parse(socket.to_str().unwrap()).unwrap();
        let error = get(&server, "/1.0", Duration::from_millis(200)).unwrap_err();
        assert_eq!(error.to_string(), "no answer within 0.2 s (timeout)");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn sources_name_a_socket_and_maybe_a_remote() {
        let plain = Server::parse("/var/lib/lxd/unix.socket").unwrap();
        assert_eq!((plain.endpoint, plain.remote), (Endpoint::Unix("/var/lib/lxd/unix.socket".into()), None));
        let named = Server::parse("lab=unix:///run/lxd.socket").unwrap();
        assert_eq!((named.endpoint, named.remote.as_deref()), (Endpoint::Unix("/run/lxd.socket".into()), Some("lab")));
        assert_eq!(named.source, "lab=unix:///run/lxd.socket");
        assert!(Server::parse("lxd.socket").unwrap_err().contains("absolute path"));
        let https = |authority: &str| Endpoint::Https { authority: authority.into(), remote: "m1".into() };
        assert_eq!(Server::parse("m1=https://h1:9443").unwrap().endpoint, https("h1:9443"));
        assert_eq!(Server::parse("m1=https://h1/").unwrap().endpoint, https("h1:8443"));
        assert_eq!(Server::parse("m1=https://[fd00::1]").unwrap().endpoint, https("[fd00::1]:8443"));
        assert!(Server::parse("https://h1:8443").unwrap_err().contains("name the lxc remote"));
    }

    #[test]
    fn answers_give_instances_or_the_servers_error() {
        let ok = b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{\"type\":\"sync\",\"status_code\":200,\
                   \"error_code\":0,\"error\":\"\",\"metadata\":[{\"name\":\"c1\",\"status\":\"Running\",\
                   \"type\":\"container\",\"location\":\"none\",\"expanded_config\":{\"user.role\":\"db\",\
                   \"volatile.uuid\":\"x\"},\"state\":{\"network\":{\"eth0\":{\"addresses\":[\
                   {\"family\":\"inet6\",\"address\":\"fd00::5\",\"scope\":\"global\"},\
                   {\"family\":\"inet\",\"address\":\"10.81.0.5\",\"scope\":\"global\"}]},\
                   \"lo\":{\"addresses\":[{\"family\":\"inet\",\"address\":\"127.0.0.1\",\"scope\":\"local\"}]}}}}]}";
        let instances: Vec<Instance> = serde_json::from_value(parse_answer(ok).unwrap()).unwrap();
        let c1 = &instances[0];
        assert_eq!((c1.project.as_str(), c1.state_name().as_str()), ("default", "running"));
        assert_eq!(c1.reachable_address(false).as_deref(), Some("10.81.0.5"));
        assert_eq!(c1.addresses().len(), 2, "no loopback");
        assert_eq!(c1.user_config().collect::<Vec<_>>(), [("role", "db")]);
        let templated = Instance { status: "{{ lookup('pipe', 'id') }}".into(), ..Default::default() };
        assert_eq!(templated.state_name(), "unknown");
        let stopped = Instance { status: "Stopped".into(), ..Default::default() };
        assert_eq!((stopped.reachable_address(true), stopped.state_name().as_str()), (None, "stopped"));
        let v6_only = Nic {
            addresses: vec![Address { family: "inet6".into(), address: "fd00::6".into(), scope: "global".into() }],
        };
        let v6 =
            Instance { state: Some(State { network: Some([("eth0".into(), v6_only)].into()) }), ..Default::default() };
        assert_eq!((v6.reachable_address(false), v6.reachable_address(true).as_deref()), (None, Some("fd00::6")));

        let refused =
            b"HTTP/1.0 403 Forbidden\r\n\r\n{\"type\":\"error\",\"error_code\":403,\"error\":\"not authorized\"}";
        let e = parse_answer(refused).unwrap_err().to_string();
        assert_eq!(e, "LXD answered 403: not authorized");
        assert!(parse_answer(b"HTTP/1.0 200 OK\r\n\r\n<html>")
            .unwrap_err()
            .to_string()
            .starts_with("not an LXD answer"));
        assert!(parse_answer(b"garbage").is_err());
    }
}
