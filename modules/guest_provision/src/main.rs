//! `virtfarm.libvirt.guest_provision`: the steps of the cached VM lifecycle that the
//! `guest_provision` role runs between the user's phase files, one per `state`.
//!
//! Each step's work is the library's (`snapshot::cache::phases` on the controller, where the
//! phase files are; `provision::lifecycle`, `wait`, `snapshot::cache`). This binary reads the
//! options (`args`) and renders each typed outcome as JSON (`render`).

mod args;
mod render;

use ansible_module::{Module, Response};
use anyhow::{Context as _, Result};
use virtfarm_libvirt::lock::{DomainLock, LockPolicy};
use virtfarm_libvirt::provision::lifecycle;
use virtfarm_libvirt::snapshot::cache;
use virtfarm_libvirt::{wait, Hypervisor, Vm};

use args::Step;

fn guest_provision(module: &Module, step: Step) -> Result<Response> {
    let params = module.params();
    let check = module.context().check_mode;
    // The domain, locked against other runs (kvm_provision, snapshot_libvirt, a second
    // lifecycle of the same VM) for as long as this step changes it; check mode takes no lock.
    let on_domain = || -> Result<(Hypervisor, Vm, Option<DomainLock>)> {
        let hypervisor = Hypervisor::open(params.str("uri")?).context("uri")?;
        let vm = hypervisor.vm(params.str("name")?).context("name")?;
        let lock = if check { None } else { hypervisor.lock_vm(&vm, &LockPolicy::default())? };
        Ok((hypervisor, vm, lock))
    };
    Ok(match step {
        Step::Phases(query) => render::phases(&query, cache::phases::plan(&query).context("lookup_dir")?),
        Step::Reachable { host, port, banner, timeout } => {
            render::reachable(wait::until_answers(&host, port, &banner, timeout).context("timeout")?)
        }
        Step::Started(readiness) => {
            let (hv, vm, _lock) = on_domain()?;
            render::started(lifecycle::start(&hv, &vm, readiness, check).map_err(render::start_failure)?)
        }
        Step::CachePrepared { names, allowed, prune } => {
            let (hv, vm, _lock) = on_domain()?;
            render::cache_prepared(&names, cache::prepare(&hv, &vm, &names, allowed, prune, check)?)
        }
        Step::CacheSaved { names, quiesce } => {
            let (hv, vm, _lock) = on_domain()?;
            render::cache_saved(&names, cache::save(&hv, &vm, &names, quiesce, check)?)
        }
        Step::Stopped(policy) => {
            let (_, vm, _lock) = on_domain()?;
            render::stopped(lifecycle::stop(&vm, &policy, check)?)
        }
    })
}

fn main() {
    virtfarm_libvirt::ssh_reuse::enable();
    ansible_module::run_parsed(
        args::spec(),
        |module| args::to_step(module.params()),
        |module, step| guest_provision(module, step).map_err(|e| format!("{e:#}")),
    )
}
