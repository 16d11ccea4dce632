//! Reading every URI at once, each in its own thread, each bounded by the timeout.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use virtfarm_libvirt::scan::{scan, Scan, ScanOptions};
use virtfarm_libvirt::Hypervisor;

/// What one URI gave.
pub struct SourceReport {
    pub uri: String,
    /// The scan, or why there is none.
    pub outcome: Result<Scan, String>,
    pub elapsed: Duration,
}

/// Scans each URI on its own connection in parallel; a URI that has not answered by
/// `timeout` is reported as failed and its thread left behind (the process exits soon).
/// Reports come back in the order of `uris`.
pub fn scan_all(uris: &[String], options: &ScanOptions, timeout: Duration) -> Vec<SourceReport> {
    let started = Instant::now();
    let (sender, receiver) = mpsc::channel();
    for (index, uri) in uris.iter().enumerate() {
        let (sender, uri, options) = (sender.clone(), uri.clone(), options.clone());
        std::thread::spawn(move || {
            let outcome =
                Hypervisor::open(&uri).and_then(|hypervisor| scan(&hypervisor, &options)).map_err(|e| e.to_string());
            // The receiver is gone only when the deadline passed: nothing left to tell.
            let _ = sender.send((index, outcome, started.elapsed()));
        });
    }
    drop(sender);
    let mut outcomes: Vec<Option<(Result<Scan, String>, Duration)>> = uris.iter().map(|_| None).collect();
    let deadline = started + timeout;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match receiver.recv_timeout(left) {
            Ok((index, outcome, elapsed)) => outcomes[index] = Some((outcome, elapsed)),
            Err(_) => break,
        }
    }
    uris.iter()
        .zip(outcomes)
        .map(|(uri, outcome)| {
            let (outcome, elapsed) = outcome.unwrap_or_else(|| {
                (Err(format!("no answer within {:.1} s (timeout)", timeout.as_secs_f64())), timeout)
            });
            SourceReport { uri: uri.clone(), outcome, elapsed }
        })
        .collect()
}
