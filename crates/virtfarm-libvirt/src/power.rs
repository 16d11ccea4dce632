//! Stopping a domain the way operators do: ask nicely, ask again, then pull the plug.

use std::time::{Duration, Instant};

use crate::error::Result;
use crate::vm::{PowerState, Vm};

/// How to stop a domain.
#[derive(Clone, Copy, Debug)]
pub struct StopPolicy {
    /// How long the guest may take to shut down before it is forced off.
    pub timeout: Duration,
    /// How often the shutdown request is repeated: a guest still booting ignores ACPI.
    pub ask_every: Duration,
    /// Ask through the guest agent when it answers, ACPI otherwise.
    pub prefer_agent: bool,
}

impl Default for StopPolicy {
    fn default() -> Self {
        StopPolicy { timeout: Duration::from_secs(60), ask_every: Duration::from_secs(5), prefer_agent: true }
    }
}

/// How a domain came to be off.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum StopOutcome {
    /// It was off already.
    AlreadyOff,
    /// The guest shut itself down after this many seconds.
    Graceful(f64),
    /// The guest did not stop in time and was forced off.
    Forced,
}

impl StopOutcome {
    /// The name used in results: `already_off`, `graceful` or `forced`.
    pub fn as_str(self) -> &'static str {
        match self {
            StopOutcome::AlreadyOff => "already_off",
            StopOutcome::Graceful(_) => "graceful",
            StopOutcome::Forced => "forced",
        }
    }
}

/// Stops `vm`: graceful within `policy.timeout`, forced after it.
pub fn stop(vm: &Vm, policy: &StopPolicy) -> Result<StopOutcome> {
    if vm.power_state()? == PowerState::ShutOff {
        return Ok(StopOutcome::AlreadyOff);
    }
    let started = Instant::now();
    let mut next_request = started;
    while started.elapsed() < policy.timeout {
        match vm.power_state()? {
            PowerState::ShutOff => return Ok(StopOutcome::Graceful(started.elapsed().as_secs_f64())),
            // A paused guest cannot act on a shutdown request.
            PowerState::Paused => break,
            _ => {}
        }
        if Instant::now() >= next_request {
            let through_agent = policy.prefer_agent && vm.agent().ping();
            // The guest may be between states; the next round asks again or finds it off.
            let _ = vm.request_shutdown(through_agent);
            next_request = crate::wait::deadline(policy.ask_every);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    match vm.destroy() {
        Ok(()) => Ok(StopOutcome::Forced),
        // It went off between our last look and the destroy.
        Err(e) if e.is_invalid_operation() => Ok(StopOutcome::Graceful(started.elapsed().as_secs_f64())),
        Err(e) => Err(e),
    }
}
