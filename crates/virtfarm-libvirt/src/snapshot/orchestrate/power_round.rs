//! Shutting the domains of a run down before it touches their disks, and starting them
//! again afterwards: the previous power state comes back.

use std::time::Duration;

use crate::error::Result;
use crate::power::{self, StopOutcome, StopPolicy};
use crate::vm::Vm;

/// The domains a run shut down, each with how it stopped; those that were off are not here.
#[derive(Clone, Debug, Default)]
pub(super) struct ShutDown(Vec<(String, StopOutcome)>);

impl ShutDown {
    /// How `domain` was stopped, if this run stopped it.
    pub fn how(&self, domain: &str) -> Option<StopOutcome> {
        self.0.iter().find(|(name, _)| name == domain).map(|(_, how)| *how)
    }

    /// True when the run stopped no domain.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn record(&mut self, domain: &str, outcome: StopOutcome) {
        if outcome != StopOutcome::AlreadyOff {
            self.0.push((domain.to_string(), outcome));
        }
    }
}

/// Stops the running domains, gracefully within `timeout`, then forced.
pub(super) fn shut_down<'v>(vms: impl IntoIterator<Item = &'v Vm>, timeout: Duration) -> Result<ShutDown> {
    let policy = StopPolicy { timeout, ..StopPolicy::default() };
    let mut stopped = ShutDown::default();
    for vm in vms {
        stopped.record(vm.name(), power::stop(vm, &policy)?);
    }
    Ok(stopped)
}

/// Starts again the domains that [`shut_down`] stopped.
pub(super) fn restart<'v>(vms: impl IntoIterator<Item = &'v Vm>, stopped: &ShutDown) -> Result<()> {
    for vm in vms.into_iter().filter(|vm| stopped.how(vm.name()).is_some()) {
        vm.start()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_domains_this_run_stopped_are_started_again() {
        let mut stopped = ShutDown::default();
        stopped.record("off", StopOutcome::AlreadyOff);
        assert!(stopped.is_empty());
        stopped.record("web", StopOutcome::Graceful(3.0));
        stopped.record("db", StopOutcome::Forced);
        assert_eq!(stopped.how("web"), Some(StopOutcome::Graceful(3.0)));
        assert_eq!(stopped.how("db"), Some(StopOutcome::Forced));
        assert_eq!(stopped.how("off"), None);
    }
}
