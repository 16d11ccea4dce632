//! The domains of a run, found on their hypervisors and locked.

use super::outcome::{NamesPerDomain, RunError};
use super::request::{Domain, Request};
use crate::connection::{Connections, Hypervisor};
use crate::error::Result;
use crate::lock::{DomainLock, LockPolicy};
use crate::vm::Vm;

/// A domain of the run, found on its hypervisor.
pub(super) struct Target<'c> {
    pub hv: &'c Hypervisor,
    pub vm: Vm,
}

/// Opens each hypervisor once (all at once) and finds every domain, failing on the first
/// unknown one.
pub(super) fn connect<'c>(request: &Request, connections: &'c mut Connections) -> Result<Vec<Target<'c>>, RunError> {
    connections.open(request.domains.iter().map(|d| d.uri.as_str()));
    let connections = &*connections;
    request
        .domains
        .iter()
        .map(|Domain { name, uri }| {
            let hv = connections.get(uri).map_err(|source| RunError::Connecting { uri: uri.clone(), source })?;
            match hv.find_vm(name)? {
                Some(vm) => Ok(Target { hv, vm }),
                None => Err(RunError::DomainNotFound { name: name.clone(), uri: uri.clone() }),
            }
        })
        .collect()
}

/// Locks every domain before any is changed: a concurrent run on one of them fails here,
/// naming its holder. The locks are released when they are dropped.
pub(super) fn lock_all(targets: &[Target<'_>]) -> Result<Vec<DomainLock>> {
    targets.iter().filter_map(|t| t.hv.lock_vm(&t.vm, &LockPolicy::default()).transpose()).collect()
}

/// The snapshot names of each domain.
pub(super) fn snapshot_names(targets: &[Target<'_>]) -> Result<NamesPerDomain> {
    targets
        .iter()
        .map(|Target { vm, .. }| Ok((vm.name().to_string(), vm.snapshots()?.into_iter().map(|s| s.name).collect())))
        .collect()
}
