//! One existing VM started and waited for, or stopped, as a step of its own (the cached
//! lifecycle runs these between the user's work, where [`provision`](super::provision)
//! brings a whole request to a state).

use crate::connection::Hypervisor;
use crate::error::Error;
use crate::power::{self, StopOutcome, StopPolicy};
use crate::vm::{PowerState, Vm};
use crate::wait::{wait_ready, LeaseBaseline, Readiness, Ready};

use super::plan::power_step;
use super::{power_on, State};

/// What [`start`] found and did.
#[derive(Debug)]
pub struct Started {
    /// The power state before.
    pub before: PowerState,
    /// The readiness reached; `None` when none was asked for, or in check mode.
    pub ready: Option<Ready>,
}

/// Why [`start`] failed.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Reading, starting or resuming the domain failed.
    #[error(transparent)]
    Libvirt(#[from] Error),
    /// It runs, but did not give the signal in time; the source says what was missing.
    #[error("{domain} did not become reachable")]
    NotReady {
        /// The domain.
        domain: String,
        /// What the wait said.
        source: Error,
    },
}

/// Starts or resumes `vm` unless it runs, then waits for `readiness` (if any); in check
/// mode, changes nothing and waits for nothing.
pub fn start(hv: &Hypervisor, vm: &Vm, readiness: Option<Readiness>, check: bool) -> Result<Started, StartError> {
    let before = vm.power_state()?;
    if check {
        return Ok(Started { before, ready: None });
    }
    // A lease from before this start says nothing about the guest being up again.
    let baseline = if before == PowerState::ShutOff { LeaseBaseline::capture(hv, vm)? } else { LeaseBaseline::any() };
    power_on(vm, power_step(State::Running, before))?;
    let ready = readiness
        .map(|readiness| wait_ready(hv, vm, &baseline, readiness))
        .transpose()
        .map_err(|source| StartError::NotReady { domain: vm.name().to_string(), source })?;
    Ok(Started { before, ready })
}

/// What [`stop`] found and did.
#[derive(Debug)]
pub struct Stopped {
    /// The power state before.
    pub before: PowerState,
    /// How it stopped; `None` when it was off already, or in check mode.
    pub how: Option<StopOutcome>,
}

/// Stops `vm` as `policy` says unless it is off; in check mode, changes nothing.
pub fn stop(vm: &Vm, policy: &StopPolicy, check: bool) -> Result<Stopped, Error> {
    let before = vm.power_state()?;
    if check || before == PowerState::ShutOff {
        return Ok(Stopped { before, how: None });
    }
    Ok(Stopped { before, how: Some(power::stop(vm, policy)?) })
}
