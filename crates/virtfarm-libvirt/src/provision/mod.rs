//! Provisioning: many VMs brought to a state at once, each on its own thread on its
//! hypervisor's shared connection, then waited for.
//!
//! A [`Request`] holds typed [`VmDefinition`]s and, optionally, a [`Placement`] that gives VMs
//! without a hypervisor of their own one of several. [`provision`] places them, applies each
//! (locks, MAC check, networks, disks, seed, definition, power; see `apply`), waits for the
//! ones that should be ready, and returns one [`Outcome`] per VM in request order. A VM that
//! fails does so on its own; the others go ahead.

mod apply;
pub mod lifecycle;
mod outcome;
pub mod plan;
mod request;

use std::collections::BTreeMap;
use std::time::Duration;

use crate::placement::{place, survey, Demand};
use crate::wait::{wait_all, LeaseBaseline, Readiness, Signal};
use crate::{Connections, Error};

pub use apply::power_on;
pub use outcome::{Action, EndState, Failure, Outcome, Part, Warning};
pub use request::{clashes, Clash, DomainSource, NetworkWant, Placement, Request, RootDisk, State, VmDefinition};

/// Brings every VM of `request` to its state (in check mode, reports what would change),
/// opening the hypervisors it needs in `connections`. One outcome per VM, in request order.
pub fn provision(mut request: Request, check: bool, connections: &mut Connections) -> Vec<Outcome> {
    let unplaced = assign(&mut request, connections);
    let mut outcomes = apply_all(&request, check, connections);
    // Back in request order: the others were applied in order without them.
    for (index, outcome) in unplaced {
        outcomes.insert(index, outcome);
    }
    outcomes
}

/// Gives every VM of `request` its hypervisor when there is a [`Placement`], and takes out the
/// VMs that cannot be placed, returned as failed outcomes with their index, in ascending order.
fn assign(request: &mut Request, connections: &mut Connections) -> Vec<(usize, Outcome)> {
    let Some(placement) = &request.placement else { return Vec::new() };
    let demands: Vec<Demand> = request.vms.iter().map(|vm| demand(vm, request.state)).collect();
    connections.open(placement.hypervisors.iter().map(String::as_str));
    let placed = place(&demands, &survey(connections, &placement.hypervisors), placement.strategy);
    let mut refused = Vec::new();
    let mut kept = Vec::new();
    for (index, (mut vm, placed)) in std::mem::take(&mut request.vms).into_iter().zip(placed).enumerate() {
        match placed {
            Ok(placed) => {
                vm.uri = placed.uri;
                kept.push(vm);
            }
            Err(e) => {
                let mut outcome = Outcome::new(&vm.name, "");
                outcome.failure = Some(Failure::Unplaced(e));
                refused.push((index, outcome));
            }
        }
    }
    request.vms = kept;
    refused
}

/// What the VM needs from a hypervisor; a VM to remove needs nothing but to be found.
fn demand(vm: &VmDefinition, state: State) -> Demand {
    let spec = match &vm.domain {
        DomainSource::Generated(spec) if state != State::Absent => Some(spec),
        _ => None,
    };
    Demand {
        name: vm.name.clone(),
        memory_mib: spec.map_or(0, |s| s.memory_mib),
        arch: spec.map(|s| s.arch.clone()),
        domain_type: if state == State::Absent { None } else { vm.domain_type.clone() },
        pinned: vm.own_uri.clone(),
    }
}

/// Applies every VM in parallel, then waits for the ones that should be ready. A hypervisor
/// that cannot be reached fails its VMs only.
fn apply_all(request: &Request, check: bool, connections: &mut Connections) -> Vec<Outcome> {
    connections.open(request.vms.iter().map(|vm| vm.uri.as_str()));
    let connections = &*connections;
    let mut outcomes: Vec<Outcome> = std::thread::scope(|scope| {
        let handles: Vec<_> = request
            .vms
            .iter()
            .map(|vm| {
                scope.spawn(move || {
                    // What was done before a failure is reported with it.
                    let mut outcome = Outcome::new(&vm.name, &vm.uri);
                    let applied = match connections.get(&vm.uri) {
                        Ok(hypervisor) => apply::apply_one(hypervisor, vm, request, check, &mut outcome),
                        Err(error) => Err(Failure::Unreachable { uri: vm.uri.clone(), error }),
                    };
                    outcome.failure = applied.err();
                    outcome
                })
            })
            .collect();
        handles
            .into_iter()
            .zip(&request.vms)
            .map(|(handle, vm)| {
                handle.join().unwrap_or_else(|panic| {
                    let mut outcome = Outcome::new(&vm.name, &vm.uri);
                    outcome.failure = Some(Failure::Panicked(panic));
                    outcome
                })
            })
            .collect()
    });
    if let (Some(signal), false, State::Running) = (request.wait, check, request.state) {
        wait_for_all(&mut outcomes, signal, request.wait_timeout, connections);
    }
    outcomes
}

/// Waits for every started or running VM at once (one thread each, on its hypervisor's connection).
fn wait_for_all(outcomes: &mut [Outcome], signal: Signal, timeout: Duration, connections: &Connections) {
    let mut by_uri: BTreeMap<String, Vec<(String, LeaseBaseline)>> = BTreeMap::new();
    for outcome in outcomes.iter_mut().filter(|o| o.failure.is_none()) {
        if let Some(baseline) = outcome.baseline.take() {
            by_uri.entry(outcome.uri.clone()).or_default().push((outcome.name.clone(), baseline));
        }
    }
    let readiness = Readiness { signal, timeout };
    let results: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = by_uri
            .into_iter()
            .map(|(uri, domains)| {
                scope.spawn(move || match connections.get(&uri) {
                    Ok(hypervisor) => wait_all(hypervisor, domains, readiness),
                    Err(e) => domains.into_iter().map(|(name, _)| (name, Err(Error::Refused(e.to_string())))).collect(),
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap_or_default()).collect()
    });
    for (name, result) in results {
        let Some(outcome) = outcomes.iter_mut().find(|o| o.name == name) else { continue };
        match result {
            Ok(ready) => outcome.ip = ready.ip.or(outcome.ip.take()),
            Err(e) => outcome.failure = Some(Failure::NotReady(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain_xml::DomainSpec;

    fn vm(domain: DomainSource, own_uri: Option<&str>) -> VmDefinition {
        VmDefinition {
            name: "web1".into(),
            uri: "qemu:///system".into(),
            own_uri: own_uri.map(str::to_string),
            domain,
            domain_type: Some("kvm".into()),
            root_disk: None,
            pool: "default".into(),
            cloud_init: None,
            networks: Vec::new(),
        }
    }

    fn generated() -> DomainSource {
        DomainSource::Generated(Box::new(DomainSpec {
            memory_mib: 2048,
            arch: "aarch64".into(),
            ..DomainSpec::default()
        }))
    }

    #[test]
    fn a_vm_demands_its_memory_arch_and_type_unless_it_goes() {
        let running = demand(&vm(generated(), Some("qemu+ssh://hv2/system")), State::Running);
        assert_eq!((running.memory_mib, running.arch.as_deref()), (2048, Some("aarch64")));
        assert_eq!(running.domain_type.as_deref(), Some("kvm"));
        assert_eq!(running.pinned.as_deref(), Some("qemu+ssh://hv2/system"));
        let absent = demand(&vm(generated(), None), State::Absent);
        assert_eq!((absent.memory_mib, absent.arch, absent.domain_type, absent.pinned), (0, None, None, None));
        let given = DomainSource::Given { xml: String::new(), facts: Box::default(), metadata: Box::default() };
        let given = demand(&vm(given, None), State::Running);
        assert_eq!((given.memory_mib, given.arch), (0, None), "a given XML is not read for placement");
    }
}
