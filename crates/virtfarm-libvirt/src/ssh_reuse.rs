//! One ssh connection per remote hypervisor, shared by the module runs that follow each other.
//!
//! libvirt's ssh transport (`qemu+ssh://`) starts `ssh` for every connection it opens, and a
//! module run opens one: a key exchange and an authentication per task, most of its cost.
//! OpenSSH can share one connection between clients (`ControlMaster`) and keep it open for a
//! while after the last one leaves (`ControlPersist`). libvirt's own transports offer no such
//! thing (`+libssh` and `+libssh2` also connect once per open), but its `command=` URI
//! parameter names the program it runs instead of `ssh`.
//!
//! A binary that calls [`enable`] first thing in `main` serves as that program: its
//! connections name `/proc/self/exe`, and when libvirt runs it so, it becomes `ssh` with the
//! sharing options put before libvirt's own arguments. Nothing else about ssh changes: the
//! user's `~/.ssh/config`, keys, known_hosts and jump hosts apply as they would to `ssh`. A URI
//! that names its own `command=` is left alone, which is also how sharing is turned off
//! (`command=ssh`).
//!
//! The control sockets live beside Ansible's own, in `~/.ansible/cp` (made private), one per
//! user, host and port (`%C`). Forks that start together are safe: one becomes the master and ssh lets the
//! others connect on their own. The master exits [`PERSIST`] after its last client.

use std::borrow::Cow;
use std::ffi::OsString;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How long the shared connection outlives its last client: longer than the gap between the
/// tasks of a play, short enough that nothing lingers long after it.
pub const PERSIST: Duration = Duration::from_secs(30);

/// The program a connection names as its ssh command; libvirt starts it from a fork of this
/// process, so it is this binary, and it is never started under this name otherwise.
const SELF_AS_SSH: &str = "/proc/self/exe";

/// The control sockets' directory, under the home directory: Ansible's, whose socket names
/// (10 hex digits) never meet ssh's `%C` (40).
const CONTROL_DIR: &str = ".ansible/cp";

/// ssh names its master's socket `<ControlPath>.<16 random characters>` before renaming it,
/// and a socket path holds at most 107 bytes; `%C` is 40 hex digits.
const MAX_CONTROL_DIR_LEN: usize = 107 - 17 - 1 - 40;

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Lets this binary's `qemu+ssh://` connections share one ssh connection per host; when libvirt
/// runs this binary as their ssh command, runs ssh instead and never returns.
///
/// Call it first thing in `main` of a binary that opens connections.
pub fn enable() {
    let mut args = std::env::args_os();
    if args.next().is_some_and(|zero| zero == SELF_AS_SSH) {
        let home = std::env::var_os("HOME").map(PathBuf::from);
        let error = std::process::Command::new("ssh").args(control_options(home.as_deref())).args(args).exec();
        // libvirt shows what its ssh command printed when the connection fails.
        eprintln!("cannot run ssh: {error}");
        std::process::exit(255);
    }
    ENABLED.store(true, Ordering::Relaxed);
}

/// The URI to open for `uri`: with this binary as its ssh command when [`enable`] was called
/// and the URI uses libvirt's ssh transport without a `command=` of its own.
pub fn connect_uri(uri: &str) -> Cow<'_, str> {
    if ENABLED.load(Ordering::Relaxed) && runs_ssh(uri) {
        Cow::Owned(with_param(uri, &format!("command={SELF_AS_SSH}")))
    } else {
        Cow::Borrowed(uri)
    }
}

/// True when libvirt would run the `ssh` program for `uri`: the `ssh` transport, no `command=`.
fn runs_ssh(uri: &str) -> bool {
    let Some((scheme, rest)) = uri.split_once("://") else { return false };
    let ssh = scheme.split_once('+').is_some_and(|(_, transport)| transport.eq_ignore_ascii_case("ssh"));
    let query = rest.split('#').next().unwrap_or_default().split_once('?').map_or("", |(_, query)| query);
    // libvirt separates parameters with `&` or `;` and compares their names case-insensitively.
    let names = query.split(['&', ';']).map(|param| param.split('=').next().unwrap_or_default());
    ssh && !names.into_iter().any(|name| name.eq_ignore_ascii_case("command"))
}

/// `uri` with `param` added to its query, before any fragment.
fn with_param(uri: &str, param: &str) -> String {
    let (body, fragment) = uri.split_once('#').map_or((uri, None), |(body, fragment)| (body, Some(fragment)));
    let separator = if body.contains('?') { '&' } else { '?' };
    let mut out = format!("{body}{separator}{param}");
    if let Some(fragment) = fragment {
        out = format!("{out}#{fragment}");
    }
    out
}

/// The options that make ssh share its connection, or none when there is no private directory
/// for the sockets (then every connection is its own, as without this module).
fn control_options(home: Option<&Path>) -> Vec<OsString> {
    let Some(dir) = home.map(|home| home.join(CONTROL_DIR)) else { return Vec::new() };
    if dir.as_os_str().len() > MAX_CONTROL_DIR_LEN
        || std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir).is_err()
    {
        return Vec::new();
    }
    let mut path = dir.into_os_string();
    path.push("/%C");
    let mut control_path = OsString::from("ControlPath=");
    control_path.push(path);
    ["ControlMaster=auto".into(), control_path, format!("ControlPersist={}", PERSIST.as_secs()).into()]
        .into_iter()
        .flat_map(|option| [OsString::from("-o"), option])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_ssh_transport_without_a_command_runs_ssh() {
        for yes in [
            "qemu+ssh://root@hv1/system",
            "qemu+ssh://hv1:2222/system?keyfile=/k&no_verify=1",
            "QEMU+SSH://hv1/system?commandline=x",
            "xen+ssh://hv1/",
        ] {
            assert!(runs_ssh(yes), "{yes}");
        }
        for no in [
            "qemu:///system",
            "qemu+libssh2://hv1/system",
            "qemu+tcp://hv1/system",
            "qemu+ssh://hv1/system?command=/usr/bin/ssh",
            "qemu+ssh://hv1/system?keyfile=/k;Command=ssh",
            "not a uri",
        ] {
            assert!(!runs_ssh(no), "{no}");
        }
    }

    #[test]
    fn the_command_joins_the_query_before_a_fragment() {
        assert_eq!(with_param("qemu+ssh://hv1/system", "command=x"), "qemu+ssh://hv1/system?command=x");
        assert_eq!(with_param("qemu+ssh://hv1/system?a=1", "command=x"), "qemu+ssh://hv1/system?a=1&command=x");
        assert_eq!(with_param("qemu+ssh://hv1/system#f", "command=x"), "qemu+ssh://hv1/system?command=x#f");
    }

    #[test]
    fn uris_are_left_alone_until_enabled() {
        assert_eq!(connect_uri("qemu+ssh://hv1/system"), "qemu+ssh://hv1/system");
    }

    #[test]
    fn sockets_go_to_a_private_directory_that_fits_a_socket_path() {
        let home = std::env::temp_dir().join(format!("vf-ssh-{}", std::process::id()));
        let options = control_options(Some(&home));
        let expected = format!("ControlPath={}/.ansible/cp/%C", home.display());
        assert_eq!(options[3], OsString::from(expected));
        assert_eq!(options[5], OsString::from("ControlPersist=30"));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(home.join(CONTROL_DIR)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        let _ = std::fs::remove_dir_all(&home);

        assert!(control_options(None).is_empty());
        assert!(control_options(Some(Path::new(&format!("/{}", "h".repeat(40))))).is_empty(), "too long");
    }
}
