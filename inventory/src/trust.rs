//! How far the inventory trusts what a hypervisor says: the one rule for the host variables
//! taken from a domain's metadata, and for the text read from libvirt.
//!
//! Anyone who can change a domain definition (`virsh edit`, `virsh metadata`, a
//! kvm_provision task, a read-write libvirt client) writes our metadata namespace. Passed on
//! as they are, its variables run commands on the Ansible controller: `ansible_connection:
//! local` runs a play meant for the VM on the controller, `ansible_ssh_common_args` with a
//! ProxyCommand or an `*_executable` runs a program there, and since ansible-core takes a
//! script inventory's host variables as templates, a `{{ lookup('pipe', ...) }}` in any value,
//! `ansible_user` included, runs when Ansible reads it. So, for a URI the user has not listed
//! in `trusted_uris` (the inventory's own configuration, never the hypervisor's):
//!
//! - only the variables [`verdict`] calls [`Verdict::Safe`] are passed on;
//! - every string read from the hypervisor goes out as `{"__ansible_unsafe": text}`, which
//!   Ansible shows and uses as it is but never templates ([`text`]).
//!
//! A trusted URI passes every variable as written, the way an inventory file would. Secrets
//! ([`is_secret_key`]) are never passed on, trusted or not: inventory output and cache files
//! are not a place for them.

use serde_json::{json, Value};
use virtfarm_libvirt::domain_xml::is_secret_key;

/// The `ansible_` variables any source may set: who to log in as, and on which port.
pub const SAFE_ANSIBLE_VARS: [&str; 2] = ["ansible_user", "ansible_port"];

/// What the inventory does with one variable of a domain's metadata.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Passed on from any URI: [`SAFE_ANSIBLE_VARS`] and the user's own variables.
    Safe,
    /// A connection or execution variable (any other `ansible_` one, or an `*_executable`):
    /// passed on only from a trusted URI.
    NeedsTrust,
    /// Names a secret: never passed on.
    Secret,
}

/// The verdict on the metadata variable `key`.
pub fn verdict(key: &str) -> Verdict {
    let lower = key.to_ascii_lowercase();
    if is_secret_key(key) {
        Verdict::Secret
    } else if SAFE_ANSIBLE_VARS.contains(&key) {
        Verdict::Safe
    } else if lower.starts_with("ansible_") || lower.ends_with("_executable") {
        Verdict::NeedsTrust
    } else {
        Verdict::Safe
    }
}

/// True when the variable `key` is passed on from a URI that is (or is not) `trusted`.
pub fn admits(key: &str, trusted: bool) -> bool {
    match verdict(key) {
        Verdict::Safe => true,
        Verdict::NeedsTrust => trusted,
        Verdict::Secret => false,
    }
}

/// A string read from a hypervisor, as it goes into the inventory: plain from a trusted URI,
/// marked as never to be templated otherwise.
pub fn text(value: &str, trusted: bool) -> Value {
    if trusted {
        json!(value)
    } else {
        untrusted(value)
    }
}

/// `value` marked with the script inventory convention Ansible reads as "not a template".
pub fn untrusted(value: &str) -> Value {
    json!({ "__ansible_unsafe": value })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_variables_pass_from_any_uri() {
        for key in ["ansible_user", "ansible_port", "role", "http_proxy_host", "groups_extra", "passenger"] {
            assert_eq!(verdict(key), Verdict::Safe, "{key}");
            assert!(admits(key, false) && admits(key, true), "{key}");
        }
    }

    #[test]
    fn connection_and_execution_variables_need_trust() {
        for key in [
            "ansible_connection",
            "ansible_host",
            "ansible_ssh_common_args",
            "ansible_ssh_extra_args",
            "ansible_scp_extra_args",
            "ansible_ssh_executable",
            "ansible_shell_executable",
            "ansible_python_interpreter",
            "ansible_perl_interpreter",
            "ansible_become",
            "ansible_become_method",
            "ansible_become_user",
            "ansible_become_exe",
            "ansible_become_flags",
            "ansible_ssh_private_key_file",
            "ansible_libvirt_uri",
            "ansible_facts",
            "Ansible_Connection",
            "podman_executable",
            "ansible_ssh_user",
            "ANSIBLE_USER",
        ] {
            assert_eq!(verdict(key), Verdict::NeedsTrust, "{key}");
            assert!(!admits(key, false), "{key} passes from an untrusted URI");
            assert!(admits(key, true), "{key} is refused from a trusted URI");
        }
    }

    #[test]
    fn secrets_never_pass() {
        for key in
            ["ansible_password", "ansible_become_password", "ansible_ssh_pass", "ansible_become_pass", "db_token"]
        {
            assert_eq!(verdict(key), Verdict::Secret, "{key}");
            assert!(!admits(key, false) && !admits(key, true), "{key}");
        }
    }

    #[test]
    fn untrusted_text_is_never_a_template() {
        assert_eq!(text("{{ lookup('pipe', 'id') }}", true), json!("{{ lookup('pipe', 'id') }}"));
        assert_eq!(text("{{ x }}", false), json!({"__ansible_unsafe": "{{ x }}"}));
        assert_eq!(untrusted("w"), json!({"__ansible_unsafe": "w"}));
    }
}
