//! The reply: the library's typed outcomes as the JSON Ansible gets, failures worded in
//! the module's options.

use ansible_module::Response;
use serde_json::{json, Value};
use virtfarm_libvirt::provision::{Failure, Outcome, Part};

/// The module result: every VM, plus `failed` naming the VMs that failed and why.
pub fn response(outcomes: &[Outcome], with_diff: bool) -> Response {
    let failures: Vec<String> =
        outcomes.iter().filter_map(|o| o.failure.as_ref().map(|failure| message(&o.name, failure))).collect();
    let mut response = if failures.is_empty() { Response::new() } else { Response::fail(failures.join("; ")) };
    response = response
        .changed(outcomes.iter().any(Outcome::changed))
        .with("vms", outcomes.iter().map(vm_result).collect::<Vec<_>>())
        .with("placement", outcomes.iter().map(|o| (o.name.clone(), json!(o.uri))).collect::<serde_json::Map<_, _>>());
    if with_diff {
        // One entry per VM even when there is one, so that `diff[0]` always names a VM.
        let diffs: Vec<_> = outcomes
            .iter()
            .filter_map(|o| {
                let (before, after) = o.diff.as_ref()?;
                Some(json!({ "before_header": o.name, "after_header": o.name, "before": before, "after": after }))
            })
            .collect();
        response = response.with("diff", diffs);
    }
    response
}

/// The per-VM result.
fn vm_result(outcome: &Outcome) -> Value {
    let actions: Vec<String> = outcome.actions.iter().map(ToString::to_string).collect();
    let mut result = json!({
        "name": outcome.name, "uri": outcome.uri, "changed": outcome.changed(), "actions": actions,
        "uuid": outcome.uuid, "state": outcome.state.map_or("", |state| state.as_str()), "macs": outcome.macs,
        "mac": outcome.macs.first(), "disks": outcome.disks, "ip": outcome.ip, "ansible_host": outcome.ip,
    });
    if let Some(failure) = &outcome.failure {
        result["failed"] = json!(true);
        result["msg"] = json!(message(&outcome.name, failure));
    }
    result
}

/// Why the VM `name` failed, naming the option that caused it.
fn message(name: &str, failure: &Failure) -> String {
    match failure {
        Failure::Unplaced(error) => error.to_string(),
        Failure::NotReady(error) => format!("{name} did not become ready: {error}"),
        Failure::Panicked(payload) => {
            let why = ansible_module::panic_text(payload.as_ref());
            format!("{name}: provisioning failed unexpectedly: {why} (this is a bug)")
        }
        other => format!("{name}: {}", cause(other)),
    }
}

/// A failure while applying, worded as the module's options name its parts.
fn cause(failure: &Failure) -> String {
    match failure {
        Failure::Unreachable { uri, error } => format!("uri {uri}: {error}"),
        Failure::At { part, error } => format!("{}: {error}", option(*part)),
        Failure::DiskInUse { part, file, domain, error } => {
            format!("{}: {file} cannot be a disk of {domain}: {error}", option(*part))
        }
        Failure::DiskMissing { .. } => format!("{}: {failure}", option(Part::Disks)),
        Failure::MacTaken { .. } => format!("{}: {failure}", option(Part::Networks)),
        Failure::LeftBehind { left_behind, failure } => format!("{}: {}", left_behind.join("; "), cause(failure)),
        other => other.to_string(),
    }
}

/// The option that gives `part`.
fn option(part: Part) -> &'static str {
    match part {
        Part::Xml => "xml",
        Part::Firmware => "firmware",
        Part::Loader => "loader",
        Part::Tpm => "tpm",
        Part::ImageUpload => "image_upload",
        Part::Image => "image",
        Part::RootDisk => "name",
        Part::RootSize => "disk_size",
        Part::Networks => "networks",
        Part::Seed => "cloud_init",
        Part::Disks => "disks",
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use virtfarm_libvirt::provision::{Failure, Part};
    use virtfarm_libvirt::Error;

    use super::message;
    use crate::{definition, parse, run};

    #[test]
    fn failures_name_the_option_behind_them() {
        let refused = || Error::Refused("no".into());
        let cases = [
            (Failure::Unplaced(refused()), "no"),
            (
                Failure::Unreachable { uri: "qemu+ssh://hv/system".into(), error: refused() },
                "web1: uri qemu+ssh://hv/system: no",
            ),
            (Failure::At { part: Part::ImageUpload, error: refused() }, "web1: image_upload: no"),
            (Failure::At { part: Part::RootSize, error: refused() }, "web1: disk_size: no"),
            (
                Failure::DiskInUse {
                    part: Part::RootDisk,
                    file: "/p/web1.qcow2".into(),
                    domain: "web1".into(),
                    error: refused(),
                },
                "web1: name: /p/web1.qcow2 cannot be a disk of web1: no",
            ),
            (
                Failure::DiskMissing { file: "/p/data.img".into() },
                "web1: disks: /p/data.img does not exist (a disk given by path is attached as it is)",
            ),
            (
                Failure::MacTaken { mac: "52:54:00:00:00:01".into(), domain: "db1".into() },
                "web1: networks: MAC 52:54:00:00:00:01 is already used by domain db1",
            ),
            (
                Failure::LeftBehind {
                    left_behind: vec!["/p/web1.qcow2 left behind: busy".into()],
                    failure: Box::new(Failure::At { part: Part::Seed, error: refused() }),
                },
                "web1: /p/web1.qcow2 left behind: busy: cloud_init: no",
            ),
            (Failure::Libvirt(refused()), "web1: no"),
            (Failure::NotReady(refused()), "web1 did not become ready: no"),
            (Failure::Panicked(Box::new("boom")), "web1: provisioning failed unexpectedly: boom (this is a bug)"),
        ];
        for (failure, says) in cases {
            assert_eq!(message("web1", &failure), says);
        }
    }

    #[test]
    fn secrets_never_reach_the_reply() {
        let secrets = [
            "$6$salt$secret-hash",
            "#cloud-config\nchpasswd: {list: secret}",
            "farm-secret",
            "meta-secret",
            "db-tok-1",
        ];
        let args = json!({
            "vm": {"metadata": {"name": "legacy", "auth": {"user": "ops", "password": secrets[2]}}},
            "metadata": {"ansible_password": secrets[3], "db_token": secrets[4]},
            "vms": [{"name": "bad name", "image": "base", "cloud_init": {"password_hash": secrets[0], "user_data": secrets[1]}}],
            "_ansible_verbosity": 4, "_ansible_diff": true,
        });
        let reply = ansible_module::execute_parsed(&definition::spec(), args, parse, run);
        assert_eq!(reply["failed"], true, "{reply}");
        assert!(reply["msg"].as_str().unwrap_or_default().contains("vms[0].name"), "{reply}");
        let text = reply.to_string();
        for secret in secrets {
            assert!(!text.contains(secret) && !text.contains(&json!(secret).to_string()), "{secret} leaked: {text}");
        }
    }
}
