//! The one rule for each value a user gives to name a libvirt thing, size it or bound a wait:
//! domain names, paths on the hypervisor, URIs, snapshot names, MAC addresses, metadata keys,
//! sizes, timeouts and wait choices.
//!
//! Every module checks its options with these, so a value is accepted or refused the same
//! way everywhere. An [`Invalid`] says what is wrong with the value; the caller puts the
//! option's name in front.
//!
//! ```
//! use std::time::Duration;
//! use virtfarm_libvirt::validate::{self, ZeroSeconds};
//!
//! assert_eq!(validate::timeout(0, ZeroSeconds::NoWait), Ok(Duration::ZERO));
//! let refused = validate::timeout(0, ZeroSeconds::Refused).unwrap_err();
//! assert_eq!(format!("shutdown_timeout: {refused}"), "shutdown_timeout: must be a positive number of seconds, got 0");
//! ```

use std::time::Duration;

use crate::wait::Signal;

/// The longest snapshot name accepted: it becomes part of overlay file names.
pub const MAX_SNAPSHOT_NAME_LEN: usize = 64;

/// The `wait` choices: `none`, then each [`Signal`] by name.
pub const WAIT_CHOICES: [&str; 5] = ["none", "lease", "agent", "ssh", "address"];

/// Why a value was refused. The text is what follows the option's name.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Invalid {
    /// A negative timeout, where 0 means "do not wait".
    #[error("must be 0 or more seconds, got {0}")]
    NegativeSeconds(i64),
    /// A timeout of 0 or less (or not a number), for a wait that must happen.
    #[error("must be a positive number of seconds, got {0}")]
    NoSeconds(String),
    /// A `wait` value that is neither `none` nor a signal's name.
    #[error("'{0}' is not one of {choices}", choices = WAIT_CHOICES.join(", "))]
    UnknownWait(String),
    /// A name for a new VM outside the strict set: it also names the VM's volumes.
    #[error("{0:?} is not a usable VM name (letters, digits, '-', '_', '.'; at most 64)")]
    VmName(String),
    /// A name libvirt would refuse as a domain's, after a round trip.
    #[error("{0:?} is not a domain name (not blank, at most 255 bytes, no '/' or control characters)")]
    DomainName(String),
    /// A path on the hypervisor that is relative, climbs with `..` or is not printable.
    #[error("{0:?} is not an absolute path without '..'")]
    HostPath(String),
    /// The name of a pool, network, volume or bridge that is not one printable name.
    #[error("{0:?} is not a usable name (one printable name, no '/')")]
    ObjectName(String),
    /// A name that is not one directory of a path: it would leave the directory it names into.
    #[error("{0:?} is not a plain directory name (one path component, not '.' or '..')")]
    DirectoryName(String),
    /// Free text with control characters that XML 1.0 cannot carry.
    #[error("contains control characters")]
    ControlCharacters,
    /// A string that is not shaped like a libvirt URI.
    #[error("{0:?} is not a libvirt URI (such as qemu:///system or qemu+ssh://host/system)")]
    Uri(String),
    /// Not a size in whole binary units (the value as given, quoted if a string).
    #[error("{0} is not a size (examples: 512, 512M, 2G, 10GiB)")]
    Size(String),
    /// Not a unicast MAC address.
    #[error("{0:?} is not a MAC address of a NIC (aa:bb:cc:dd:ee:ff, unicast)")]
    Mac(String),
    /// A number of virtual CPUs that QEMU's machines do not offer.
    #[error("{0} is not a number of CPUs (1 to {MAX_VCPUS})")]
    Vcpus(i64),
    /// A metadata key that cannot be an XML attribute value in every reader's hands.
    #[error("{0:?} is not a usable key (letters, digits, '_')")]
    MetadataKey(String),
    /// A metadata key named like a secret: metadata is readable by every read-only client.
    #[error(
        "looks like a secret, and metadata is stored in the domain definition, which every read-only \
         libvirt client can read; keep it in Ansible Vault or inventory variables"
    )]
    SecretMetadataKey(String),
    /// A snapshot name that cannot become part of a file name.
    #[error("snapshot name {name:?} {problem}")]
    SnapshotName {
        /// The name given.
        name: String,
        /// What is wrong with it.
        problem: String,
    },
}

/// What a timeout of 0 seconds means for an option.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ZeroSeconds {
    /// Do not wait: look once, or force at once.
    NoWait,
    /// Refused: the option bounds something that needs time, such as a graceful shutdown.
    Refused,
}

/// A timeout given in whole seconds.
pub fn timeout(seconds: i64, zero: ZeroSeconds) -> Result<Duration, Invalid> {
    match (u64::try_from(seconds), zero) {
        (Ok(0), ZeroSeconds::Refused) | (Err(_), ZeroSeconds::Refused) => Err(Invalid::NoSeconds(seconds.to_string())),
        (Ok(seconds), _) => Ok(Duration::from_secs(seconds)),
        (Err(_), ZeroSeconds::NoWait) => Err(Invalid::NegativeSeconds(seconds)),
    }
}

/// A timeout in seconds that may have a fraction (`2.5`): finite and above 0.
pub fn fractional_timeout(seconds: f64) -> Result<Duration, Invalid> {
    let timeout = Duration::try_from_secs_f64(seconds).ok().filter(|timeout| !timeout.is_zero());
    timeout.ok_or_else(|| Invalid::NoSeconds(seconds.to_string()))
}

/// A `wait` choice: `none` or the [`Signal`] that means ready.
pub fn wait(value: &str) -> Result<Option<Signal>, Invalid> {
    match value {
        "none" => Ok(None),
        signal => signal.parse().map(Some).map_err(|_| Invalid::UnknownWait(value.to_string())),
    }
}

/// The name of a VM to be defined: ASCII letters, digits, `-_.`, not hidden, at most 64,
/// since its volumes and seed are named after it.
pub fn vm_name(name: &str) -> Result<&str, Invalid> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !name.starts_with('.');
    ok.then_some(name).ok_or_else(|| Invalid::VmName(name.to_string()))
}

/// The name of an existing domain: what libvirt itself accepts.
pub fn domain_name(name: &str) -> Result<&str, Invalid> {
    let ok = !name.trim().is_empty() && name.len() <= 255 && !name.contains('/') && !name.chars().any(char::is_control);
    ok.then_some(name).ok_or_else(|| Invalid::DomainName(name.to_string()))
}

/// The name of a libvirt object other than a domain (pool, network, volume, bridge): one
/// name, never a path, printable.
pub fn object_name(name: &str) -> Result<&str, Invalid> {
    let ok = domain_name(name).is_ok() && !matches!(name, "." | "..");
    ok.then_some(name).ok_or_else(|| Invalid::ObjectName(name.to_string()))
}

/// Free text that ends up in the domain XML or a cloud-init seed: no control characters
/// other than tab and line ends (XML 1.0 cannot carry them).
pub fn xml_text(text: &str) -> Result<&str, Invalid> {
    let ok = !text.chars().any(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r'));
    ok.then_some(text).ok_or(Invalid::ControlCharacters)
}

/// A file or directory on the hypervisor: absolute, no `..`, printable.
pub fn host_path(path: &str) -> Result<&str, Invalid> {
    let ok = path.starts_with('/') && !path.split('/').any(|part| part == "..") && !path.chars().any(char::is_control);
    ok.then_some(path).ok_or_else(|| Invalid::HostPath(path.to_string()))
}

/// One directory below another: a single path component, not `.` or `..`.
pub fn directory_name(name: &str) -> Result<&str, Invalid> {
    let ok = !name.is_empty() && !name.contains('/') && name != "." && name != "..";
    ok.then_some(name).ok_or_else(|| Invalid::DirectoryName(name.to_string()))
}

/// A libvirt URI's shape (`driver[+transport]://[host]/path`); whether it answers is for the
/// connection to say.
pub fn uri(uri: &str) -> Result<&str, Invalid> {
    let scheme = uri.split_once("://").map(|(scheme, _)| scheme);
    let ok = scheme.is_some_and(|s| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '+'))
        && !uri.chars().any(|c| c.is_control() || c.is_whitespace());
    ok.then_some(uri).ok_or_else(|| Invalid::Uri(uri.to_string()))
}

/// A size in bytes: whole binary units (`512M`, `2G`, `2GiB`, `10gb`, `4096B`, `1T`), or a bare
/// number of `default_unit`s, as virt-install reads memory and disk sizes; never 0. Unlike
/// Ansible's `bytes` type, no fractions: libvirt takes whole units.
pub fn size(text: &str, default_unit: u64) -> Result<u64, Invalid> {
    let invalid = || Invalid::Size(format!("{text:?}"));
    let trimmed = text.trim();
    let split = trimmed.find(|c: char| !c.is_ascii_digit()).unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let number: u64 = number.parse().map_err(|_| invalid())?;
    let unit = unit.trim().to_ascii_uppercase();
    let multiplier = match unit.trim_end_matches("IB").trim_end_matches('B') {
        "" if unit.is_empty() => default_unit,
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        "T" => 1 << 40,
        _ => return Err(invalid()),
    };
    number.checked_mul(multiplier).filter(|bytes| *bytes > 0).ok_or_else(invalid)
}

/// The most virtual CPUs a domain may be given (QEMU's q35 machines top out at 4096).
const MAX_VCPUS: u32 = 4096;

/// A number of virtual CPUs: 1 to [`MAX_VCPUS`].
pub fn vcpus(count: i64) -> Result<u32, Invalid> {
    u32::try_from(count).ok().filter(|n| (1..=MAX_VCPUS).contains(n)).ok_or(Invalid::Vcpus(count))
}

/// A NIC's MAC address: `aa:bb:cc:dd:ee:ff`, unicast; lower case.
pub fn mac(mac: &str) -> Result<String, Invalid> {
    let octets: Vec<&str> = mac.split(':').collect();
    let well_formed =
        octets.len() == 6 && octets.iter().all(|o| o.len() == 2 && o.chars().all(|c| c.is_ascii_hexdigit()));
    let unicast = well_formed && u8::from_str_radix(octets[0], 16).is_ok_and(|first| first & 1 == 0);
    unicast.then(|| mac.to_ascii_lowercase()).ok_or_else(|| Invalid::Mac(mac.to_string()))
}

/// A key of the metadata kept in the domain definition: letters, digits and `_`, and not
/// named like a secret ([`crate::domain_xml::is_secret_key`]).
pub fn metadata_key(key: &str) -> Result<&str, Invalid> {
    if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(Invalid::MetadataKey(key.to_string()));
    }
    if crate::domain_xml::is_secret_key(key) {
        return Err(Invalid::SecretMetadataKey(key.to_string()));
    }
    Ok(key)
}

/// A snapshot name: not empty, not longer than [`MAX_SNAPSHOT_NAME_LEN`], no `/`, no `..`,
/// no control characters, not starting with `-` or `.` (it ends up in file names and logs).
pub fn snapshot_name(name: &str) -> Result<&str, Invalid> {
    let problem = if name.is_empty() {
        "must not be empty".to_string()
    } else if name.chars().count() > MAX_SNAPSHOT_NAME_LEN {
        format!("is longer than {MAX_SNAPSHOT_NAME_LEN} characters")
    } else if name.contains('/') {
        "must not contain '/'".to_string()
    } else if name.contains("..") {
        "must not contain '..'".to_string()
    } else if name.chars().any(char::is_control) {
        "must not contain control characters".to_string()
    } else if name.starts_with('-') || name.starts_with('.') {
        "must not start with '-' or '.'".to_string()
    } else {
        return Ok(name);
    };
    Err(Invalid::SnapshotName { name: name.to_string(), problem })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vcpus_are_one_to_the_most_qemu_offers() {
        assert_eq!((vcpus(1), vcpus(4096)), (Ok(1), Ok(4096)));
        for bad in [0, -1, 4097, i64::MAX] {
            assert_eq!(vcpus(bad), Err(Invalid::Vcpus(bad)), "{bad}");
        }
        assert_eq!(Invalid::Vcpus(0).to_string(), "0 is not a number of CPUs (1 to 4096)");
    }

    #[test]
    fn sizes_are_whole_binary_units_or_a_bare_number_of_the_default_unit() {
        assert_eq!(size("512", 1 << 20), Ok(512 << 20));
        assert_eq!(size("2G", 1), Ok(2 << 30));
        assert_eq!(size("2GiB", 1), Ok(2 << 30));
        assert_eq!(size("10gb", 1), Ok(10 << 30));
        assert_eq!(size("4096B", 1 << 20), Ok(4096));
        for bad in ["", "G", "2X", "-1", "0", "1.5G", "99999999999999999999"] {
            assert_eq!(size(bad, 1), Err(Invalid::Size(format!("{bad:?}"))), "{bad}");
        }
    }

    #[test]
    fn macs_are_unicast_and_lower_case() {
        assert_eq!(mac("52:54:00:ab:CD:ef"), Ok("52:54:00:ab:cd:ef".to_string()));
        assert!(mac(&crate::naming::derived_mac("web1", 0)).is_ok());
        for bad in ["", "zz:zz:zz", "52:54:00:ab:cd", "52-54-00-ab-cd-ef", "01:00:5e:00:00:01", "52:54:00:ab:cd:ef:00"]
        {
            assert_eq!(mac(bad), Err(Invalid::Mac(bad.to_string())), "{bad}");
        }
    }

    #[test]
    fn a_directory_name_never_leaves_its_parent() {
        assert_eq!(directory_name("debian_12"), Ok("debian_12"));
        for bad in ["", ".", "..", "a/b", "/etc", "../x"] {
            assert_eq!(directory_name(bad), Err(Invalid::DirectoryName(bad.into())), "{bad}");
        }
    }

    #[test]
    fn metadata_keys_are_plain_and_never_secrets() {
        assert_eq!(metadata_key("platform"), Ok("platform"));
        assert_eq!(metadata_key("a-b"), Err(Invalid::MetadataKey("a-b".into())));
        assert_eq!(metadata_key("db_password"), Err(Invalid::SecretMetadataKey("db_password".into())));
    }

    #[test]
    fn zero_seconds_is_no_wait_or_refused_as_the_option_says() {
        assert_eq!(timeout(0, ZeroSeconds::NoWait), Ok(Duration::ZERO));
        assert_eq!(timeout(5, ZeroSeconds::Refused), Ok(Duration::from_secs(5)));
        assert_eq!(timeout(0, ZeroSeconds::Refused), Err(Invalid::NoSeconds("0".into())));
        assert_eq!(timeout(-1, ZeroSeconds::Refused), Err(Invalid::NoSeconds("-1".into())));
        assert_eq!(timeout(-1, ZeroSeconds::NoWait).unwrap_err().to_string(), "must be 0 or more seconds, got -1");
    }

    #[test]
    fn fractional_timeouts_are_finite_and_above_zero() {
        assert_eq!(fractional_timeout(2.5), Ok(Duration::from_millis(2500)));
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY, 1e300, 1e-12] {
            assert_eq!(fractional_timeout(bad), Err(Invalid::NoSeconds(bad.to_string())), "{bad}");
        }
    }

    #[test]
    fn every_wait_choice_parses_and_nothing_else() {
        let parsed: Vec<_> = WAIT_CHOICES.iter().map(|choice| wait(choice).unwrap()).collect();
        assert_eq!(parsed, [None, Some(Signal::Lease), Some(Signal::Agent), Some(Signal::Ssh), Some(Signal::Address)]);
        assert_eq!(
            wait("forever").unwrap_err().to_string(),
            "'forever' is not one of none, lease, agent, ssh, address"
        );
    }

    #[test]
    fn vm_names_are_strict_and_domain_names_are_libvirts() {
        for good in ["web1", "a-b_c.d"] {
            assert!(vm_name(good).is_ok() && domain_name(good).is_ok(), "{good}");
        }
        for only_libvirts in ["hx a", "hx-é", "$(reboot)"] {
            assert!(vm_name(only_libvirts).is_err() && domain_name(only_libvirts).is_ok(), "{only_libvirts}");
        }
        let long = "x".repeat(256);
        for bad in ["", "  ", "a/b", "nul\u{0}", long.as_str()] {
            assert!(vm_name(bad).is_err() && domain_name(bad).is_err(), "{bad:?}");
        }
        assert!(vm_name(".hidden").is_err());
    }

    #[test]
    fn object_names_are_one_name_and_texts_carry_no_control_characters() {
        for good in ["default", "vf br0", "images.d"] {
            assert_eq!(object_name(good), Ok(good));
        }
        for bad in ["", ".", "..", "../etc", "a/b", "tab\t"] {
            assert_eq!(object_name(bad), Err(Invalid::ObjectName(bad.to_string())), "{bad:?}");
        }
        assert_eq!(xml_text("two\nlines\tand a tab\r\n"), Ok("two\nlines\tand a tab\r\n"));
        assert_eq!(xml_text("bell\u{7}").unwrap_err().to_string(), "contains control characters");
    }

    #[test]
    fn host_paths_are_absolute_without_climbing() {
        assert_eq!(host_path("/var/lib/libvirt/images"), Ok("/var/lib/libvirt/images"));
        for bad in ["relative/path", "", "/var/lib/../../etc", "/tmp/nul\u{0}"] {
            assert_eq!(host_path(bad), Err(Invalid::HostPath(bad.to_string())));
        }
    }

    #[test]
    fn uris_need_a_scheme_and_no_spaces() {
        for good in ["qemu:///system", "qemu+ssh://root@h2/system", "test:///default"] {
            assert!(uri(good).is_ok(), "{good}");
        }
        for bad in ["", "not a uri", "://x", "$(reboot)://x", "qemu:///system\n--readonly"] {
            assert!(uri(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn snapshot_names_that_cannot_become_file_names_are_refused() {
        for good in ["clean", "before-upgrade_2", "v1.2", "état"] {
            assert!(snapshot_name(good).is_ok(), "{good}");
        }
        let long = "x".repeat(MAX_SNAPSHOT_NAME_LEN + 1);
        for bad in ["", "a/b", "..", "a..b", "tab\there", "nl\n", "-flag", ".hidden", long.as_str()] {
            assert!(snapshot_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(snapshot_name("a/b").unwrap_err().to_string(), "snapshot name \"a/b\" must not contain '/'");
    }
}
