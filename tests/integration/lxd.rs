use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use bed::Bed;
use serde::Deserialize;
use serde_json::Value;

use crate::inventory::{assemble_collection, group, stdout_json};

/// Containers on the bed's LXD beside its libvirt domains: a busybox one with `user.*` keys, a
/// Python one, and one never started; listed by the executable with their addresses and
/// states, then reached through the plugin with `community.general.lxd` (`ping` where there is
/// Python, `raw` in busybox, which has none); then sources that fail in each way, beside
/// those that answer; then the same server over HTTPS.
#[test]
#[ignore = "needs the test bed: cargo xtask test"]
fn lxd_containers_beside_domains_reached_through_the_lxd_connection() {
    let bed = Bed::get();
    let lxd = Lxd::get();
    let user_keys = ["-c", "user.ansible.groups=lxd_web,cache", "-c", "user.role=front"];
    let busybox = Container::new(&lxd, "launch", &lxd.busybox_image, &user_keys);
    let python = Container::new(&lxd, "launch", &lxd.python_image, &[]);
    let stopped = Container::new(&lxd, "init", &lxd.busybox_image, &[]);
    let socket = lxd.socket.to_str().expect("UTF-8 path");
    let both = ["--list", "--uri", &bed.uri, "--lxd", socket];

    // Their addresses come from LXD's dnsmasq on the bed's LXD bridge within seconds.
    let deadline = Instant::now() + Duration::from_secs(30);
    let listed = loop {
        let listed = stdout_json(&inventory_exe(bed, &both));
        let hostvars = &listed["_meta"]["hostvars"];
        if [&busybox, &python].iter().all(|c| hostvars[&c.name]["ansible_host"].is_string()) {
            break listed;
        }
        assert!(Instant::now() < deadline, "no addresses after 30 s: {listed}");
        std::thread::sleep(Duration::from_millis(500));
    };
    let hostvars = &listed["_meta"]["hostvars"];
    let bb = &hostvars[&busybox.name];
    assert_eq!(bb["ansible_connection"], "community.general.lxd");
    assert_eq!(unmarked(&bb["ansible_lxd_host"]), busybox.name.as_str());
    assert!(bb["ansible_host"].as_str().is_some_and(|ip| ip.starts_with("10.81.0.")), "{bb}");
    assert_eq!((bb["lxd_state"].as_str(), unmarked(&bb["lxd_type"])), (Some("running"), "container"));
    assert_eq!(unmarked(&bb["role"]), "front");
    assert!(group(&listed, "lxd_web").contains(&busybox.name) && group(&listed, "cache").contains(&busybox.name));
    assert!(group(&listed, "profile_default").contains(&python.name));
    let off = &hostvars[&stopped.name];
    assert_eq!(off["lxd_state"], "stopped");
    assert!(off.get("ansible_host").is_none(), "{off}");
    assert!(group(&listed, "stopped").contains(&stopped.name));
    let warnings = listed["all"]["vars"]["libvirt_inventory_warnings"].to_string();
    // Other tests' domains on the shared bed may bring warnings of their own: only ours count.
    assert!(!warnings.contains(socket), "{warnings}");

    // Ansible through the plugin, the lxc client on LXD's socket: no ssh.
    let collection = assemble_collection(&bed.binary("libvirt_inventory"));
    let config = collection.join("bed.libvirt_leases.yml");
    let plugin = format!("plugin: virtfarm.libvirt.libvirt_leases\nuris: [\"{}\"]\nlxd: [\"{socket}\"]\n", bed.uri);
    std::fs::write(&config, plugin).expect("write the plugin config");
    let ping = ansible(bed, &lxd, &collection, &config, &["-m", "ping", "--limit", &python.name]);
    assert!(ping.contains(&format!("{} | SUCCESS", python.name)) && ping.contains("pong"), "{ping}");
    let raw =
        ansible(bed, &lxd, &collection, &config, &["-m", "raw", "-a", "echo in-$(hostname)", "--limit", &busybox.name]);
    assert!(raw.contains(&format!("in-{}", busybox.name)), "{raw}");

    // A missing socket, a server that answers with an error, one that never answers: each a
    // warning naming it, the other sources listed, the output JSON.
    let dir = bed::tempdir();
    let refusing = fake_server(&dir.join("refusing.socket"), Some("HTTP/1.0 500 Internal Server Error\r\n\r\n{\"type\":\"error\",\"error_code\":500,\"error\":\"database is locked\"}"));
    let silent = fake_server(&dir.join("silent.socket"), None);
    let missing = dir.join("missing.socket");
    let bad = [missing.to_str().expect("UTF-8"), &refusing, &silent];
    let mut args = both.to_vec();
    args.extend(bad.iter().flat_map(|s| ["--lxd", *s]));
    args.extend(["--timeout", "2"]);
    let run = inventory_exe(bed, &args);
    let listed = stdout_json(&run);
    assert!(run.status.success());
    assert!(listed["_meta"]["hostvars"][&busybox.name].is_object());
    let warnings = listed["all"]["vars"]["libvirt_inventory_warnings"].to_string();
    for (source, says) in
        bad.iter().zip(["No such file", "LXD answered 500: database is locked", "no answer within 2.0 s"])
    {
        assert!(warnings.contains(&format!("{source}: ")) && warnings.contains(says), "{source}: {warnings}");
    }
    let only_bad = inventory_exe(bed, &["--list", "--lxd", bad[0]]);
    let stderr = String::from_utf8_lossy(&only_bad.stderr);
    assert!(!only_bad.status.success() && only_bad.stdout.is_empty() && stderr.contains(bad[0]), "{stderr}");

    // HTTPS, as to a remote server or a cluster member, with lxc's files for the remote: a
    // trusted client lists the containers; one the server does not trust gets its error; a
    // server whose certificate is not the one pinned is refused.
    let trusted = lxc_config(&dir.join("trusted"), &lxd.server_cert);
    let added = lxd.lxc(&["config", "trust", "add", trusted.join("client.crt").to_str().expect("UTF-8")]);
    assert!(added.status.success(), "{}", String::from_utf8_lossy(&added.stderr));
    let stranger = lxc_config(&dir.join("stranger"), &lxd.server_cert);
    let impostor = lxc_config(&dir.join("impostor"), &trusted.join("client.crt"));
    let remote = format!("bedtls=https://{}", lxd.https_address);
    let over_https = |conf: &Path| {
        let run = Command::new("ip")
            .args(["netns", "exec", &bed.netns, "timeout", "60"])
            .arg(bed.binary("libvirt_inventory"))
            .args(["--list", "--lxd", &remote, "--lxd", socket])
            .env("LXD_CONF", conf)
            .output()
            .expect("run the inventory");
        let listed = stdout_json(&run);
        (listed["_meta"]["hostvars"].clone(), listed["all"]["vars"]["libvirt_inventory_warnings"].to_string())
    };
    let (hostvars, warnings) = over_https(&trusted);
    assert_eq!(hostvars[&python.name]["ansible_lxd_remote"], "bedtls", "{warnings}");
    assert_eq!(hostvars[&python.name]["lxd_server"], remote.as_str());
    let renamed = format!("{}_var_lib_virtfarm_bed_lxd_unix_socket", python.name);
    assert!(hostvars[&renamed].is_object(), "the same container over the socket, renamed: {warnings}");
    for (conf, says) in [(&stranger, "LXD answered 403"), (&impostor, "not the certificate lxc stored")] {
        let (hostvars, warnings) = over_https(conf);
        assert!(warnings.contains(&format!("{remote}: ")) && warnings.contains(says), "{warnings}");
        assert!(hostvars[&python.name].is_object(), "the socket is still listed: {warnings}");
    }
    let _ = lxd.lxc(&["config", "trust", "remove", &fingerprint(&trusted.join("client.crt"))]);
}

/// An lxc configuration directory (`LXD_CONF`) with a new client certificate, and `pinned` as
/// the server certificate of the remote `bedtls`.
fn lxc_config(dir: &Path, pinned: &Path) -> PathBuf {
    std::fs::create_dir_all(dir.join("servercerts")).expect("mkdir");
    let (key, crt) = (dir.join("client.key"), dir.join("client.crt"));
    let made = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
        .args(["-subj", "/CN=virtfarm-test", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&crt)
        .output()
        .expect("run openssl");
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    std::fs::copy(pinned, dir.join("servercerts/bedtls.crt")).expect("copy the server certificate");
    dir.to_path_buf()
}

/// A certificate's SHA-256 fingerprint, as `lxc config trust` names it.
fn fingerprint(crt: &Path) -> String {
    let out = Command::new("openssl").args(["x509", "-noout", "-fingerprint", "-sha256", "-in"]).arg(crt).output();
    let text = String::from_utf8_lossy(&out.expect("run openssl").stdout).to_string();
    text.rsplit('=').next().unwrap_or_default().trim().replace(':', "").to_ascii_lowercase()
}

/// What `lxd.json` says about the bed's LXD daemon.
#[derive(Debug, Deserialize)]
struct Lxd {
    /// Its state directory: `LXD_DIR` for the `lxc` client.
    dir: PathBuf,
    /// Its REST API.
    socket: PathBuf,
    /// The same over HTTPS, on its bridge's address (inside the namespace), and its certificate.
    https_address: String,
    server_cert: PathBuf,
    /// Image aliases: a busybox-static root, and a root with python3.
    busybox_image: String,
    python_image: String,
}

impl Lxd {
    fn get() -> Lxd {
        let path = "/run/virtfarm-bed/lxd.json";
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("the bed's LXD is not up ({path}: {e}); run `cargo xtask lxd up`"));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn lxc(&self, args: &[&str]) -> Output {
        Command::new("timeout").arg("60").arg("lxc").args(args).env("LXD_DIR", &self.dir).output().expect("run lxc")
    }
}

/// A container on the bed's LXD, deleted on drop; `how` is `launch` (running) or `init` (never started).
struct Container<'l> {
    lxd: &'l Lxd,
    name: String,
}

impl<'l> Container<'l> {
    fn new(lxd: &'l Lxd, how: &str, image: &str, options: &[&str]) -> Container<'l> {
        let name = Bed::get().unique_name("lx");
        let mut args = vec![how, image, &name];
        args.extend_from_slice(options);
        let out = lxd.lxc(&args);
        assert!(out.status.success(), "lxc {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        Container { lxd, name }
    }
}

impl Drop for Container<'_> {
    fn drop(&mut self) {
        let _ = self.lxd.lxc(&["delete", "--force", &self.name]);
    }
}

fn inventory_exe(bed: &Bed, args: &[&str]) -> Output {
    Command::new("timeout")
        .arg("60")
        .arg(bed.binary("libvirt_inventory"))
        .args(args)
        .output()
        .expect("run the inventory")
}

/// `ansible all -o` with the plugin's config: one line per host.
fn ansible(bed: &Bed, lxd: &Lxd, collection: &Path, config: &Path, args: &[&str]) -> String {
    let out = Command::new("timeout")
        .arg("120")
        .arg(bed.venv.join("bin/ansible"))
        .args(["all", "-o", "-i"])
        .arg(config)
        .args(args)
        .env("ANSIBLE_COLLECTIONS_PATH", collection)
        .env("LXD_DIR", &lxd.dir)
        .env("ANSIBLE_NOCOLOR", "1")
        .output()
        .expect("run ansible");
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// A unix socket that answers each request with `answer`, or never answers; its path.
fn fake_server(path: &Path, answer: Option<&'static str>) -> String {
    let listener = UnixListener::bind(path).expect("bind a unix socket");
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for mut stream in listener.incoming().flatten() {
            let mut request = [0u8; 1024];
            let _ = stream.read(&mut request);
            match answer {
                Some(text) => drop(stream.write_all(text.as_bytes())),
                None => held.push(stream),
            }
        }
    });
    path.to_str().expect("UTF-8 path").to_string()
}

/// Text from LXD comes marked as never to be templated.
fn unmarked(value: &Value) -> &str {
    value.get("__ansible_unsafe").unwrap_or(value).as_str().unwrap_or_default()
}
