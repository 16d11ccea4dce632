//! The lifecycle steps that touch the hypervisor or the network, one function per `state`.

use std::time::{Duration, Instant};

use ansible_module::{Diff, Response};
use anyhow::{Context as _, Result};
use serde_json::json;
use virtfarm_libvirt::power::{self, StopPolicy};
use virtfarm_libvirt::provision::plan::power_step;
use virtfarm_libvirt::provision::{self, State};
use virtfarm_libvirt::snapshot::{self, CreateOptions, RevertOptions};
use virtfarm_libvirt::wait::{self, LeaseBaseline, Readiness, Signal};
use virtfarm_libvirt::{Hypervisor, PowerState, Vm};

use crate::cache::{self, CacheAction, CacheNames};

/// Starts the VM unless it runs, then waits for `signal` (if any) within `timeout`.
pub fn started(
    hv: &Hypervisor,
    vm: &Vm,
    signal: Option<Signal>,
    timeout: Duration,
    check_mode: bool,
) -> Result<Response> {
    let before = vm.power_state()?;
    let changed = before != PowerState::Running;
    if check_mode {
        return Ok(Response::new().changed(changed).with("state_before", before.as_str()));
    }
    // A lease from before this start says nothing about the guest being up again.
    let baseline = if before == PowerState::ShutOff { LeaseBaseline::capture(hv, vm)? } else { LeaseBaseline::any() };
    provision::power_on(vm, power_step(State::Running, before))?;
    let mut response = Response::new().changed(changed).with("state_before", before.as_str());
    if let Some(signal) = signal {
        let ready = wait::wait_ready(hv, vm, &baseline, Readiness { signal, timeout })
            .with_context(|| format!("timeout (connection_timeout): {} did not become reachable", vm.name()))?;
        response = response
            .with("ansible_host", json!(ready.ip))
            .with("ip_source", json!(ready.ip_source.map(|s| s.as_str())))
            .with("seconds", ready.seconds);
    }
    Ok(response)
}

/// Waits until `host:port` accepts connections (and sends `banner`, when given) within `timeout`.
pub fn reachable(host: &str, port: u16, banner: &str, timeout: Duration) -> Result<Response> {
    let started = Instant::now();
    let deadline = wait::deadline(timeout);
    loop {
        let attempt = Duration::from_secs(2)
            .min(deadline.saturating_duration_since(Instant::now()))
            .max(Duration::from_millis(100));
        if wait::answers(host, port, banner.as_bytes(), attempt) {
            return Ok(Response::new().with("seconds", started.elapsed().as_secs_f64()));
        }
        if Instant::now() >= deadline {
            let what = if banner.is_empty() { String::new() } else { format!(" with banner {banner:?}") };
            anyhow::bail!("timeout: {host}:{port} did not answer{what} within {} s", timeout.as_secs());
        }
        std::thread::sleep(Duration::from_millis(500).min(deadline.saturating_duration_since(Instant::now())));
    }
}

/// Restores or creates the cache snapshots as [`cache::decide`] says, then prunes.
pub fn cache_prepared(
    hv: &Hypervisor,
    vm: &Vm,
    names: &CacheNames,
    allowed: &[&str],
    prune: bool,
    check_mode: bool,
) -> Result<Response> {
    let before = snapshot_names(vm)?;
    let plan = cache::decide(&before, names, allowed, prune);
    let started = Instant::now();
    let mut response = Response::new()
        .changed(plan.action != CacheAction::Nothing || !plan.prune.is_empty())
        .with("action", plan.action.as_str())
        .with("init_restored", plan.action == CacheAction::RestoreInit)
        .with("run_init", plan.run_init)
        .with("save_init", plan.save_init)
        .with("snapshots", json!({ "clean": names.clean, "init": names.init }))
        .with("pruned", json!(plan.prune));
    if !check_mode {
        match plan.action {
            CacheAction::RestoreInit => response = with_revert(response, hv, vm, &names.init)?,
            CacheAction::RestoreClean => response = with_revert(response, hv, vm, &names.clean)?,
            CacheAction::CreateClean => response = with_create(response, hv, vm, &names.clean, true)?,
            CacheAction::Nothing => {}
        }
        for stale in &plan.prune {
            snapshot::delete(hv, vm, stale)?;
        }
    }
    let after = if check_mode { predicted(&before, plan.action, names, &plan.prune) } else { snapshot_names(vm)? };
    Ok(response.with("seconds", started.elapsed().as_secs_f64()).diff(Diff::new(json!(before), json!(after))))
}

/// Takes the init snapshot of this revision unless it exists.
pub fn cache_saved(hv: &Hypervisor, vm: &Vm, names: &CacheNames, quiesce: bool, check_mode: bool) -> Result<Response> {
    let before = snapshot_names(vm)?;
    let exists = before.contains(&names.init);
    let response = Response::new().changed(!exists).with("snapshot", names.init.as_str());
    if exists || check_mode {
        return Ok(response);
    }
    let response = with_create(response, hv, vm, &names.init, quiesce)?;
    Ok(response.diff(Diff::new(json!(before), json!(snapshot_names(vm)?))))
}

/// Stops the VM: asked every `retry_delay`, forced after `retry_count` requests.
pub fn stopped(vm: &Vm, retry_count: u32, retry_delay: Duration, check_mode: bool) -> Result<Response> {
    let before = vm.power_state()?;
    if check_mode || before == PowerState::ShutOff {
        return Ok(Response::new().changed(before != PowerState::ShutOff).with("state_before", before.as_str()));
    }
    let policy = StopPolicy {
        timeout: retry_delay.saturating_mul(retry_count.max(1)),
        ask_every: retry_delay,
        prefer_agent: true,
    };
    let outcome = power::stop(vm, &policy)?;
    let seconds = match outcome {
        power::StopOutcome::Graceful(seconds) => json!(seconds),
        _ => json!(null),
    };
    Ok(Response::new()
        .changed(true)
        .with("state_before", before.as_str())
        .with("stop", outcome.as_str())
        .with("seconds", seconds))
}

fn snapshot_names(vm: &Vm) -> Result<Vec<String>> {
    Ok(vm.snapshots()?.into_iter().map(|s| s.name).collect())
}

fn with_revert(response: Response, hv: &Hypervisor, vm: &Vm, name: &str) -> Result<Response> {
    let reverted = snapshot::revert(hv, vm, name, &RevertOptions::default())?;
    let clock = match reverted.clock {
        snapshot::ClockSync::Synced => "synced".to_string(),
        snapshot::ClockSync::NotNeeded => "not_needed".to_string(),
        snapshot::ClockSync::Failed(why) => format!("failed: {why}"),
    };
    Ok(response
        .with("restored", name)
        .with("snapshot_seconds", reverted.seconds)
        .with("clock", clock)
        .with("state", reverted.power_state.as_str()))
}

fn with_create(response: Response, hv: &Hypervisor, vm: &Vm, name: &str, quiesce: bool) -> Result<Response> {
    let options = CreateOptions { quiesce, ..CreateOptions::default() };
    let created = snapshot::create_group(&[snapshot::Member { hypervisor: hv, vm }], name, &options)?;
    let Some(created) = created.first() else {
        anyhow::bail!("taking snapshot {name} of {} gave no result", vm.name())
    };
    Ok(response
        .with("created", name)
        .with("snapshot_type", created.kind.as_str())
        .with("quiesce", created.quiesce.as_str())
        .with("snapshot_seconds", created.seconds))
}

/// The snapshot names that `action` and pruning would leave, for check mode's diff.
fn predicted(before: &[String], action: CacheAction, names: &CacheNames, prune: &[String]) -> Vec<String> {
    let mut after: Vec<String> = before.iter().filter(|n| !prune.contains(n)).cloned().collect();
    if action == CacheAction::CreateClean {
        after.push(names.clean.clone());
    }
    after
}
