//! What the fuzz targets share: JSON values built by the fuzzer, with object keys drawn
//! mostly from the words our modules know, so that inputs get past "unknown key" checks.

use arbitrary::Arbitrary;
use serde_json::{Map, Number, Value};

/// Option and key names of our modules, and `_ansible_*` keys Ansible adds.
pub const WORDS: &[&str] = &[
    "name", "names", "state", "uri", "timeout", "after", "vms", "vm", "stem", "images", "memory", "ram", "vcpus",
    "image", "image_pool", "pool", "disk_size", "clone", "disks", "networks", "network", "bridge", "mac", "ip",
    "subnet", "cloud_init", "user_data", "meta_data", "network_config", "packages", "runcmd", "ssh_authorized_keys",
    "password", "password_hash", "hostname", "filesystems", "source", "target", "arch", "machine", "emulator",
    "domain_type", "cpu", "firmware", "kernel", "initrd", "cmdline", "metadata", "platform", "project", "groups",
    "user", "xml", "path", "format", "type", "wait", "wait_timeout", "stop_timeout", "remove_storage", "lease",
    "running", "present", "absent", "stopped", "linked", "full", "qemu", "kvm", "vfnet", "_ansible_check_mode",
    "_ansible_diff", "_ansible_no_log", "_ansible_module_name", "ANSIBLE_MODULE_ARGS",
];

/// The word at index `i`, wrapping.
pub fn word(i: u8) -> &'static str {
    WORDS[usize::from(i) % WORDS.len()]
}

/// An object key: usually one of [`WORDS`].
#[derive(Arbitrary, Debug)]
pub enum Key {
    /// One of [`WORDS`].
    Word(u8),
    /// Anything.
    Other(String),
}

impl Key {
    /// The key's text.
    pub fn text(&self) -> String {
        match self {
            Key::Word(i) => word(*i).to_string(),
            Key::Other(s) => s.clone(),
        }
    }
}

/// A JSON value; strings are often one of [`WORDS`] too (choices, names).
#[derive(Arbitrary, Debug)]
pub enum Json {
    /// `null`.
    Null,
    /// `true`/`false`.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A float (`null` when not finite, as JSON has no NaN).
    Float(f64),
    /// One of [`WORDS`], as a string.
    Word(u8),
    /// Any string.
    Str(String),
    /// An array.
    List(Vec<Json>),
    /// An object.
    Object(Vec<(Key, Json)>),
}

impl Json {
    /// The `serde_json` value.
    pub fn value(&self) -> Value {
        match self {
            Json::Null => Value::Null,
            Json::Bool(b) => Value::Bool(*b),
            Json::Int(i) => Value::from(*i),
            Json::Float(f) => Number::from_f64(*f).map_or(Value::Null, Value::Number),
            Json::Word(i) => Value::String(word(*i).to_string()),
            Json::Str(s) => Value::String(s.clone()),
            Json::List(items) => Value::Array(items.iter().map(Json::value).collect()),
            Json::Object(entries) => Value::Object(entries.iter().map(|(k, v)| (k.text(), v.value())).collect::<Map<_, _>>()),
        }
    }
}
