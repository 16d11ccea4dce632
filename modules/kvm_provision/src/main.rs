//! `virtfarm.libvirt.kvm_provision`: define, create, stop and remove VMs on any libvirt URI,
//! many at once, idempotently.
//!
//! Ansible runs this binary with the path of a JSON file of arguments; it prints one JSON
//! result. Parameters are checked in [`definition`], the hypervisor work is in [`apply`].

mod apply;
mod definition;
mod fields;

use anyhow::{Context, Result};
use serde_json::{json, Map, Value};

use crate::definition::Request;

fn main() {
    // Release builds abort on panic: say so in the one JSON object Ansible reads, then stop.
    std::panic::set_hook(Box::new(|info| {
        println!("{}", json!({ "failed": true, "changed": false, "msg": format!("kvm_provision failed unexpectedly: {info}") }));
        std::process::exit(1);
    }));
    let result = run().unwrap_or_else(|e| json!({ "failed": true, "changed": false, "msg": format!("{e:#}") }));
    println!("{result}");
}

fn run() -> Result<Value> {
    let path = std::env::args().nth(1).context("no arguments file: Ansible passes its path as the first argument")?;
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading the arguments file {path}"))?;
    let args: Value = serde_json::from_str(&text).context("the arguments file is not JSON")?;
    let Value::Object(args) = args else { anyhow::bail!("the arguments file does not hold a JSON object") };
    let (internal, params): (Map<String, Value>, Map<String, Value>) = args.into_iter().partition(|(k, _)| k.starts_with("_ansible_"));
    let flag = |key: &str| internal.get(key).and_then(Value::as_bool).unwrap_or(false);
    let request = Request::parse(Value::Object(params))?;
    let outcomes = apply::apply_all(&request, flag("_ansible_check_mode"));
    Ok(report(&outcomes, flag("_ansible_diff")))
}

/// The module result: every VM, plus `failed` naming the VMs that failed and why.
fn report(outcomes: &[apply::Outcome], with_diff: bool) -> Value {
    let failures: Vec<&str> = outcomes.iter().filter_map(|o| o.error.as_deref()).collect();
    let mut result = json!({
        "changed": outcomes.iter().any(|o| o.changed),
        "vms": outcomes.iter().map(apply::Outcome::to_json).collect::<Vec<_>>(),
        "warnings": outcomes.iter().flat_map(|o| o.warnings.iter()).collect::<Vec<_>>(),
    });
    if with_diff {
        let diffs: Vec<Value> = outcomes
            .iter()
            .filter_map(|o| {
                let (before, after) = o.diff.as_ref()?;
                Some(json!({ "before_header": o.name, "after_header": o.name, "before": before, "after": after }))
            })
            .collect();
        result["diff"] = json!(diffs);
    }
    if !failures.is_empty() {
        result["failed"] = json!(true);
        result["msg"] = json!(failures.join("; "));
    }
    result
}
