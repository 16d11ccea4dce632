//! `virtfarm.libvirt.kvm_provision`: define, create, stop and remove VMs on any libvirt URI,
//! many at once, idempotently.
//!
//! The protocol (arguments, check mode, secrets, the one JSON reply, panics) is
//! `ansible_module`'s. Parameters become VM definitions in [`definition`], the hypervisor
//! work is in [`apply`].

mod apply;
mod definition;
mod fields;
mod placing;

use ansible_module::{ArgumentErrors, Module, Removal, Response};
use serde_json::json;

use crate::definition::Request;

fn main() {
    ansible_module::run_parsed(definition::spec(), parse, provision)
}

fn parse(module: &Module) -> Result<Request, ArgumentErrors> {
    let params = module.params();
    let mut errors = ArgumentErrors::new();
    let request = Request::from_params(params, &module.context().module_name).map_err(|e| errors.extend(e)).ok();
    placing::check(params, request.as_ref(), &mut errors);
    match request {
        Some(request) => errors.finish(request),
        None => Err(errors),
    }
}

fn provision(module: &Module, mut request: Request) -> anyhow::Result<Response> {
    let context = module.context();
    for warning in &request.warnings {
        module.warn(warning.clone());
    }
    for deprecation in &request.deprecations {
        module.deprecate(deprecation.clone(), Removal::version("1.0.0", "virtfarm.libvirt"));
    }
    let mut connections = virtfarm_libvirt::Connections::default();
    let unplaced = placing::assign(module.params(), &mut request, &mut connections)?;
    let mut outcomes = apply::apply_all(&request, context.check_mode, &mut connections);
    // Back in input order: the others were applied in order without them.
    for (index, outcome) in unplaced {
        outcomes.insert(index, outcome);
    }
    for warning in outcomes.iter().flat_map(|o| &o.warnings) {
        module.warn(warning.clone());
    }
    Ok(report(&outcomes, context.diff))
}

/// The module result: every VM, plus `failed` naming the VMs that failed and why.
fn report(outcomes: &[apply::Outcome], with_diff: bool) -> Response {
    let failures: Vec<&str> = outcomes.iter().filter_map(|o| o.error.as_deref()).collect();
    let mut response = if failures.is_empty() { Response::new() } else { Response::fail(failures.join("; ")) };
    response = response
        .changed(outcomes.iter().any(|o| o.changed))
        .with("vms", outcomes.iter().map(apply::Outcome::to_json).collect::<Vec<_>>())
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

#[cfg(test)]
mod tests {
    use super::*;

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
        let reply = ansible_module::execute_parsed(&definition::spec(), args, parse, provision);
        assert_eq!(reply["failed"], true, "{reply}");
        assert!(reply["msg"].as_str().unwrap_or_default().contains("vms[0].name"), "{reply}");
        let text = reply.to_string();
        for secret in secrets {
            assert!(!text.contains(secret) && !text.contains(&json!(secret).to_string()), "{secret} leaked: {text}");
        }
    }
}
