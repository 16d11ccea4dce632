//! Reading every source at once, each in its own thread, each bounded by the timeout: libvirt
//! URIs and LXD servers alike.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use virtfarm_libvirt::scan::{scan, Scan, ScanOptions};
use virtfarm_libvirt::Hypervisor;

use crate::lxd;

/// A place the inventory reads hosts from.
#[derive(Clone, Debug)]
pub enum Source {
    Libvirt(String),
    Lxd(lxd::Server),
}

impl Source {
    /// The source as the user wrote it: what warnings name.
    pub fn name(&self) -> &str {
        match self {
            Source::Libvirt(uri) => uri,
            Source::Lxd(server) => &server.source,
        }
    }
}

/// What a source listed.
pub enum Found {
    Libvirt(Scan),
    Lxd(lxd::Listing),
}

/// What one source gave.
pub struct SourceReport {
    pub source: Source,
    /// The listing, or why there is none.
    pub outcome: Result<Found, String>,
    pub elapsed: Duration,
}

/// Reads each source in parallel (a libvirt URI on its own connection); a source that has not
/// answered by `timeout` is reported as failed and its thread left behind (the process exits
/// soon). Reports come back in the order of `sources`.
pub fn read_all(sources: &[Source], options: &ScanOptions, timeout: Duration) -> Vec<SourceReport> {
    let started = Instant::now();
    // The guest agents answer in what is left of the timeout, less a margin for the rest of
    // the scan: a slow agent costs its guest's address, not every host of its URI.
    let margin = (timeout / 5).min(Duration::from_secs(1));
    let options = ScanOptions { agent_deadline: Some(started + timeout.saturating_sub(margin)), ..options.clone() };
    let (sender, receiver) = mpsc::channel();
    for (index, source) in sources.iter().enumerate() {
        let (sender, source, options) = (sender.clone(), source.clone(), options.clone());
        std::thread::spawn(move || {
            let outcome = match source {
                Source::Libvirt(uri) => Hypervisor::open(&uri)
                    .and_then(|hypervisor| scan(&hypervisor, &options))
                    .map(Found::Libvirt)
                    .map_err(|e| e.to_string()),
                Source::Lxd(server) => lxd::list(&server, &options, timeout).map(Found::Lxd).map_err(|e| e.to_string()),
            };
            // The receiver is gone only when the deadline passed: nothing left to tell.
            let _ = sender.send((index, outcome, started.elapsed()));
        });
    }
    drop(sender);
    let mut outcomes: Vec<Option<(Result<Found, String>, Duration)>> = sources.iter().map(|_| None).collect();
    let deadline = started + timeout;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match receiver.recv_timeout(left) {
            Ok((index, outcome, elapsed)) => outcomes[index] = Some((outcome, elapsed)),
            Err(_) => break,
        }
    }
    sources
        .iter()
        .zip(outcomes)
        .map(|(source, outcome)| {
            let (outcome, elapsed) = outcome.unwrap_or_else(|| (Err(no_answer(timeout)), timeout));
            SourceReport { source: source.clone(), outcome, elapsed }
        })
        .collect()
}

/// What a source that did not answer in time is reported with, whichever bound noticed first.
pub fn no_answer(timeout: Duration) -> String {
    format!("no answer within {:.1} s (timeout)", timeout.as_secs_f64())
}
