//! cloud-init NoCloud seeds: the cloud-config a guest gets, and the small ISO 9660 image
//! labelled `cidata` that carries it, written in Rust (no genisoimage on the hypervisor).
//!
//! The cloud-config is written as JSON, which is YAML too, so no YAML writer is needed and
//! every user string is quoted properly.
//!
//! Plain ISO 9660 (no Rock Ridge, no Joliet) is enough: Linux shows the upper-case names
//! `USER-DATA.;1` as `user-data`, which is what cloud-init looks for. Dates are left at zero
//! so the same content always gives the same bytes, and an unchanged seed can be recognised.

use serde_json::{json, Map, Value};

/// What a guest is told at first boot.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CloudInit {
    /// cloud-init runs again when this changes.
    pub instance_id: String,
    /// The guest's hostname.
    pub hostname: Option<String>,
    /// A user to create, with passwordless sudo.
    pub user: Option<String>,
    /// Keys that may log in as `user`.
    pub ssh_authorized_keys: Vec<String>,
    /// Password hash (crypt format) for `user`; the password stays locked without one.
    pub password_hash: Option<String>,
    /// Packages to install.
    pub packages: Vec<String>,
    /// Commands to run once, each through the guest's shell.
    pub runcmd: Vec<String>,
    /// Network configuration (version 1 or 2), as given.
    pub network_config: Option<Value>,
    /// user-data as given, used instead of the one built from the fields above.
    pub user_data: Option<String>,
    /// meta-data as given, used instead of the one built from the fields above.
    pub meta_data: Option<String>,
}

impl CloudInit {
    /// The `#cloud-config` user-data.
    pub fn user_data(&self) -> String {
        if let Some(raw) = &self.user_data {
            return raw.clone();
        }
        let mut config = Map::new();
        if let Some(hostname) = &self.hostname {
            config.insert("hostname".into(), json!(hostname));
            config.insert("preserve_hostname".into(), json!(false));
            // The name resolves in the guest (127.0.1.1 in /etc/hosts, as Debian's installer
            // writes it): sudo looks it up, and over DNS a name nobody serves costs seconds.
            config.insert("manage_etc_hosts".into(), json!("localhost"));
        }
        if let Some(user) = &self.user {
            let mut entry = json!({
                "name": user,
                "sudo": "ALL=(ALL) NOPASSWD:ALL",
                "shell": "/bin/bash",
                "ssh_authorized_keys": self.ssh_authorized_keys,
                "lock_passwd": self.password_hash.is_none(),
            });
            if let Some(hash) = &self.password_hash {
                entry["hashed_passwd"] = json!(hash);
            }
            config.insert("users".into(), json!(["default", entry]));
        } else if !self.ssh_authorized_keys.is_empty() {
            config.insert("ssh_authorized_keys".into(), json!(self.ssh_authorized_keys));
        }
        if !self.packages.is_empty() {
            config.insert("packages".into(), json!(self.packages));
        }
        if !self.runcmd.is_empty() {
            config.insert("runcmd".into(), json!(self.runcmd));
        }
        format!("#cloud-config\n{}\n", Value::Object(config))
    }

    /// The meta-data: instance id and hostname.
    pub fn meta_data(&self) -> String {
        if let Some(raw) = &self.meta_data {
            return raw.clone();
        }
        let mut meta = json!({ "instance-id": self.instance_id });
        if let Some(hostname) = &self.hostname {
            meta["local-hostname"] = json!(hostname);
        }
        format!("{meta}\n")
    }

    /// The seed ISO carrying user-data, meta-data and, when given, network-config.
    pub fn seed_iso(&self) -> Vec<u8> {
        let user_data = self.user_data();
        let meta_data = self.meta_data();
        let network_config = self.network_config.as_ref().map(|n| format!("{n}\n"));
        let mut files = vec![
            SeedFile { name: "user-data", content: user_data.as_bytes() },
            SeedFile { name: "meta-data", content: meta_data.as_bytes() },
        ];
        if let Some(network_config) = &network_config {
            files.push(SeedFile { name: "network-config", content: network_config.as_bytes() });
        }
        nocloud_iso(&files)
    }
}

const SECTOR: usize = 2048;
/// Sectors 0-15 are the system area; the volume descriptors start at 16.
const PRIMARY_DESCRIPTOR: usize = 16;
const TERMINATOR: usize = 17;
const L_PATH_TABLE: usize = 18;
const M_PATH_TABLE: usize = 19;
const ROOT_DIRECTORY: usize = 20;
const FIRST_FILE: usize = 21;

/// One file of the seed: its name as cloud-init reads it (`user-data`) and its content.
pub struct SeedFile<'a> {
    /// Lower-case name: letters, digits, `-` and `_`.
    pub name: &'a str,
    /// The bytes of the file.
    pub content: &'a [u8],
}

/// Builds the ISO image holding `files`, with the volume label cloud-init's NoCloud expects.
pub fn nocloud_iso(files: &[SeedFile<'_>]) -> Vec<u8> {
    let mut files: Vec<(String, &[u8])> =
        files.iter().map(|f| (format!("{}.;1", f.name.to_ascii_uppercase()), f.content)).collect();
    // ISO 9660 wants directory records sorted by identifier.
    files.sort_by(|a, b| a.0.cmp(&b.0));
    let mut extents = Vec::with_capacity(files.len());
    let mut next = FIRST_FILE;
    for (_, content) in &files {
        extents.push(next);
        next += sectors_for(content.len()).max(1);
    }
    let total_sectors = next;
    let mut image = vec![0u8; total_sectors * SECTOR];

    let mut root = Vec::with_capacity(SECTOR);
    root.extend(directory_record(ROOT_DIRECTORY, SECTOR, true, &[0]));
    root.extend(directory_record(ROOT_DIRECTORY, SECTOR, true, &[1]));
    for ((identifier, content), extent) in files.iter().zip(&extents) {
        root.extend(directory_record(*extent, content.len(), false, identifier.as_bytes()));
        put(&mut image, *extent * SECTOR, content);
    }
    put(&mut image, ROOT_DIRECTORY * SECTOR, &root);
    put(&mut image, PRIMARY_DESCRIPTOR * SECTOR, &primary_descriptor(total_sectors));
    put(&mut image, TERMINATOR * SECTOR, &[255, b'C', b'D', b'0', b'0', b'1', 1]);
    put(&mut image, L_PATH_TABLE * SECTOR, &path_table_root(false));
    put(&mut image, M_PATH_TABLE * SECTOR, &path_table_root(true));
    image
}

fn sectors_for(bytes: usize) -> usize {
    bytes.div_ceil(SECTOR)
}

fn put(image: &mut [u8], at: usize, bytes: &[u8]) {
    image[at..at + bytes.len()].copy_from_slice(bytes);
}

fn both_u32(value: usize) -> [u8; 8] {
    let v = value as u32;
    let mut out = [0u8; 8];
    out[..4].copy_from_slice(&v.to_le_bytes());
    out[4..].copy_from_slice(&v.to_be_bytes());
    out
}

fn both_u16(value: u16) -> [u8; 4] {
    let mut out = [0u8; 4];
    out[..2].copy_from_slice(&value.to_le_bytes());
    out[2..].copy_from_slice(&value.to_be_bytes());
    out
}

fn directory_record(extent: usize, length: usize, directory: bool, identifier: &[u8]) -> Vec<u8> {
    let padding = usize::from(identifier.len() % 2 == 0);
    let size = 33 + identifier.len() + padding;
    let mut record = vec![0u8; size];
    record[0] = size as u8;
    record[2..10].copy_from_slice(&both_u32(extent));
    record[10..18].copy_from_slice(&both_u32(length));
    // Bytes 18-24, the recording date, stay zero: reproducible output.
    record[25] = if directory { 2 } else { 0 };
    record[28..32].copy_from_slice(&both_u16(1));
    record[32] = identifier.len() as u8;
    record[33..33 + identifier.len()].copy_from_slice(identifier);
    record
}

fn path_table_root(big_endian: bool) -> [u8; 10] {
    let mut entry = [0u8; 10];
    entry[0] = 1;
    let extent = ROOT_DIRECTORY as u32;
    let (extent, parent) = if big_endian {
        (extent.to_be_bytes(), 1u16.to_be_bytes())
    } else {
        (extent.to_le_bytes(), 1u16.to_le_bytes())
    };
    entry[2..6].copy_from_slice(&extent);
    entry[6..8].copy_from_slice(&parent);
    entry
}

fn padded<const N: usize>(text: &str) -> [u8; N] {
    let mut out = [b' '; N];
    out[..text.len()].copy_from_slice(text.as_bytes());
    out
}

fn primary_descriptor(total_sectors: usize) -> Vec<u8> {
    let mut pvd = vec![0u8; SECTOR];
    pvd[0] = 1;
    pvd[1..6].copy_from_slice(b"CD001");
    pvd[6] = 1;
    pvd[8..40].copy_from_slice(&padded::<32>(""));
    // cloud-init finds the seed by this label (it accepts `cidata` and `CIDATA`).
    pvd[40..72].copy_from_slice(&padded::<32>("cidata"));
    pvd[80..88].copy_from_slice(&both_u32(total_sectors));
    pvd[120..124].copy_from_slice(&both_u16(1));
    pvd[124..128].copy_from_slice(&both_u16(1));
    pvd[128..132].copy_from_slice(&both_u16(SECTOR as u16));
    pvd[132..140].copy_from_slice(&both_u32(10));
    pvd[140..144].copy_from_slice(&(L_PATH_TABLE as u32).to_le_bytes());
    pvd[148..152].copy_from_slice(&(M_PATH_TABLE as u32).to_be_bytes());
    pvd[156..190].copy_from_slice(&directory_record(ROOT_DIRECTORY, SECTOR, true, &[0]));
    pvd[190..813].fill(b' ');
    // Four "unset" dates: sixteen ASCII zeros and a zero time-zone byte each.
    for start in [813, 830, 847, 864] {
        pvd[start..start + 16].fill(b'0');
    }
    pvd[881] = 1;
    pvd
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed() -> Vec<u8> {
        nocloud_iso(&[
            SeedFile { name: "user-data", content: b"#cloud-config\n{}\n" },
            SeedFile { name: "meta-data", content: b"instance-id: web1\n" },
        ])
    }

    #[test]
    fn layout_is_iso9660_with_the_cidata_label() {
        let iso = seed();
        assert_eq!(iso.len(), 23 * SECTOR);
        assert_eq!(&iso[16 * SECTOR + 1..16 * SECTOR + 6], b"CD001");
        assert_eq!(&iso[16 * SECTOR + 40..16 * SECTOR + 46], b"cidata");
        assert_eq!(iso[17 * SECTOR], 255);
        let root = &iso[ROOT_DIRECTORY * SECTOR..(ROOT_DIRECTORY + 1) * SECTOR];
        let meta_at = root.windows(12).position(|w| w == b"META-DATA.;1").expect("meta-data entry");
        let user_at = root.windows(12).position(|w| w == b"USER-DATA.;1").expect("user-data entry");
        assert!(meta_at < user_at, "records sorted by name");
        assert_eq!(&iso[21 * SECTOR..21 * SECTOR + 18], b"instance-id: web1\n");
    }

    #[test]
    fn cloud_config_is_json_with_the_header_and_escapes_everything() {
        let init = CloudInit {
            instance_id: "web1".into(),
            hostname: Some("web1".into()),
            user: Some("ansible".into()),
            ssh_authorized_keys: vec!["ssh-ed25519 AAAA x@y".into()],
            runcmd: vec!["echo \"a: b\" > /tmp/x".into()],
            ..Default::default()
        };
        let user_data = init.user_data();
        let (header, body) = user_data.split_once('\n').unwrap();
        assert_eq!(header, "#cloud-config");
        let body: Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["users"][1]["name"], "ansible");
        assert_eq!(body["users"][1]["lock_passwd"], true);
        assert_eq!(body["runcmd"][0], "echo \"a: b\" > /tmp/x");
        assert_eq!(body["manage_etc_hosts"], "localhost", "the hostname resolves in the guest");
        assert!(init.meta_data().contains("\"local-hostname\":\"web1\""));
        let raw = CloudInit { user_data: Some("#!/bin/sh\ntrue\n".into()), ..init };
        assert_eq!(raw.user_data(), "#!/bin/sh\ntrue\n");
    }

    #[test]
    fn same_content_same_bytes() {
        assert_eq!(seed(), seed());
    }

    /// Cross-checks the image with xorriso where it is installed.
    #[test]
    fn xorriso_reads_it_when_present() {
        let path = std::env::temp_dir().join(format!("virtfarm-seed-{}.iso", std::process::id()));
        std::fs::write(&path, seed()).unwrap();
        let listing = std::process::Command::new("xorriso").arg("-indev").arg(&path).args(["-ls", "/"]).output();
        std::fs::remove_file(&path).ok();
        if let Ok(out) = listing {
            let listing = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
            assert!(listing.contains("user-data") && listing.contains("meta-data"), "{listing}");
        }
    }
}
