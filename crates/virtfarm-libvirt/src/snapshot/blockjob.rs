//! The block jobs of the backing-file mode: an active commit with an explicit base, then
//! pivot; and a pull of a level's data up into the disk. `virt` 0.5 has no bindings for
//! block jobs; these are minimal ones.
//!
//! A job can vanish under a wait: aborted from outside (`virsh blockjob --abort`), failed in
//! QEMU, or finished by someone else's pivot. The wait notices at its next poll and says what
//! became of the disk, rather than waiting out its bound with the domain held.

use std::ffi::CString;
use std::time::{Duration, Instant};

use virt::domain::Domain;

use crate::domain_facts::DomainFacts;
use crate::error::{Doing, Error, Result};

/// How often a job is polled.
const POLL: Duration = Duration::from_millis(100);

/// What a poll of a disk's block job found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Job {
    /// Copying.
    Busy,
    /// All data copied; an active commit waits for its pivot.
    Ready,
    /// No job on the disk any more.
    Gone,
}

/// How a wait for a job ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Waited {
    Ready,
    Gone,
    TimedOut,
}

/// Polls `probe` every `poll` until the job is ready (when `until_ready`) or gone, or
/// `timeout` has passed; any timeout is fine, however large.
fn wait_for(
    mut probe: impl FnMut() -> Result<Job>,
    until_ready: bool,
    timeout: Duration,
    poll: Duration,
) -> Result<Waited> {
    let deadline = crate::wait::deadline(timeout);
    loop {
        match probe()? {
            Job::Gone => return Ok(Waited::Gone),
            Job::Ready if until_ready => return Ok(Waited::Ready),
            _ => {}
        }
        if Instant::now() >= deadline {
            return Ok(Waited::TimedOut);
        }
        std::thread::sleep(poll.min(deadline.saturating_duration_since(Instant::now())));
    }
}

/// After an active commit's job vanished: done when the disk now runs on `base` (someone
/// pivoted), an error saying so otherwise.
fn after_vanished_commit(active: Option<&str>, base: &str, doing: &str) -> Result<()> {
    if active == Some(base) {
        return Ok(());
    }
    Err(Error::Refused(format!(
        "{doing}: its block job ended before it was complete (aborted or failed outside this run); \
         the disk still uses {} and has lost nothing",
        active.unwrap_or("its image")
    )))
}

/// Merges the active image of disk `target` down into `base` (an image of its own chain)
/// and switches the disk to `base`. The domain must be running (paused is enough).
pub(crate) fn commit_active_into(domain: &Domain, target: &str, base: &str, timeout: Duration) -> Result<()> {
    let doing = || format!("committing disk {target} into {base}");
    let disk = c_string(target)?;
    let base_c = c_string(base)?;
    // SAFETY: `domain` is a live handle; both strings are NUL-terminated and outlive the call;
    // a null `top` means the active image.
    let started = unsafe {
        virt::sys::virDomainBlockCommit(
            domain.as_ptr(),
            disk.as_ptr(),
            base_c.as_ptr(),
            std::ptr::null(),
            0,
            virt::sys::VIR_DOMAIN_BLOCK_COMMIT_ACTIVE,
        )
    };
    check(started).doing(doing)?;
    // An active commit stays in its job until pivoted; it is ready once all data is copied.
    match wait_for(|| job(domain, &disk).doing(doing), true, timeout, POLL)? {
        Waited::Ready => {}
        Waited::Gone => return after_vanished_commit(active_image(domain, target)?.as_deref(), base, &doing()),
        Waited::TimedOut => {
            // SAFETY: as above; aborting without pivot leaves the disk on its old image.
            let _ = unsafe { virt::sys::virDomainBlockJobAbort(domain.as_ptr(), disk.as_ptr(), 0) };
            return Err(Error::Timeout { what: doing(), seconds: timeout.as_secs() });
        }
    }
    // SAFETY: as above.
    let pivoted = unsafe {
        virt::sys::virDomainBlockJobAbort(domain.as_ptr(), disk.as_ptr(), virt::sys::VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT)
    };
    check(pivoted).doing(doing)
}

/// Copies into the active image of disk `target` the data of its backing chain down to
/// (not including) `base`, or of the whole chain without one; the disk then sits on `base`.
/// The caller checks the image's backing file afterwards: a job that vanished may not have
/// completed.
pub(crate) fn pull_into_top(domain: &Domain, target: &str, base: Option<&str>, timeout: Duration) -> Result<()> {
    let doing = || format!("pulling the data below disk {target} into it");
    let disk = c_string(target)?;
    let base_c = base.map(c_string).transpose()?;
    // SAFETY: `domain` is a live handle; the strings are NUL-terminated and outlive the call;
    // a null `base` pulls the whole chain.
    let started = unsafe {
        virt::sys::virDomainBlockRebase(
            domain.as_ptr(),
            disk.as_ptr(),
            base_c.as_ref().map_or(std::ptr::null(), |b| b.as_ptr()),
            0,
            0,
        )
    };
    check(started).doing(doing)?;
    // A pull ends by itself: its job is gone once it completed (or failed).
    match wait_for(|| job(domain, &disk).doing(doing), false, timeout, POLL)? {
        Waited::TimedOut => {
            // SAFETY: as above; an aborted pull leaves the chain as it was.
            let _ = unsafe { virt::sys::virDomainBlockJobAbort(domain.as_ptr(), disk.as_ptr(), 0) };
            Err(Error::Timeout { what: doing(), seconds: timeout.as_secs() })
        }
        _ => Ok(()),
    }
}

/// The image the running domain's disk `target` uses now.
fn active_image(domain: &Domain, target: &str) -> Result<Option<String>> {
    let xml = domain.xml_desc(0).doing(|| format!("reading the live XML to see disk {target}"))?;
    Ok(DomainFacts::parse(&xml)?.disks.into_iter().find(|d| d.target == target).and_then(|d| d.file))
}

/// The state of the job on `disk`.
fn job(domain: &Domain, disk: &CString) -> std::result::Result<Job, virt::error::Error> {
    let mut info = virt::sys::virDomainBlockJobInfo { type_: 0, bandwidth: 0, cur: 0, end: 0 };
    // SAFETY: `domain` is live, `disk` NUL-terminated, `info` a valid out-pointer.
    let found = unsafe { virt::sys::virDomainGetBlockJobInfo(domain.as_ptr(), disk.as_ptr(), &mut info, 0) };
    check(found)?;
    Ok(match found {
        0 => Job::Gone,
        // libvirt reports cur == end only once QEMU says the job is ready.
        _ if info.end > 0 && info.cur == info.end => Job::Ready,
        _ => Job::Busy,
    })
}

fn c_string(text: &str) -> Result<CString> {
    CString::new(text).map_err(|e| Error::Refused(format!("{text:?}: {e}")))
}

fn check(rc: i32) -> std::result::Result<(), virt::error::Error> {
    if rc < 0 {
        Err(virt::error::Error::last_error())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A probe that answers `answers` in turn, then the last one forever; counts its calls.
    fn scripted(answers: &[Job]) -> (impl FnMut() -> Result<Job> + '_, std::rc::Rc<std::cell::Cell<usize>>) {
        let calls = std::rc::Rc::new(std::cell::Cell::new(0));
        let counter = calls.clone();
        let probe = move || {
            let n = counter.get();
            counter.set(n + 1);
            Ok(answers[n.min(answers.len() - 1)])
        };
        (probe, calls)
    }

    #[test]
    fn a_vanished_block_job_ends_the_wait_at_the_next_poll() {
        let (probe, calls) = scripted(&[Job::Busy, Job::Busy, Job::Gone]);
        let started = Instant::now();
        let waited = wait_for(probe, true, Duration::from_secs(1800), Duration::from_millis(5)).unwrap();
        assert_eq!((waited, calls.get()), (Waited::Gone, 3));
        assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
    }

    #[test]
    fn a_commit_waits_for_ready_a_pull_for_the_end() {
        let (probe, _) = scripted(&[Job::Busy, Job::Ready]);
        assert_eq!(wait_for(probe, true, Duration::from_secs(5), Duration::ZERO).unwrap(), Waited::Ready);
        let (probe, calls) = scripted(&[Job::Busy, Job::Ready, Job::Ready, Job::Gone]);
        assert_eq!(wait_for(probe, false, Duration::from_secs(5), Duration::ZERO).unwrap(), Waited::Gone);
        assert_eq!(calls.get(), 4);
        let (probe, _) = scripted(&[Job::Busy]);
        assert_eq!(
            wait_for(probe, true, Duration::from_millis(30), Duration::from_millis(5)).unwrap(),
            Waited::TimedOut
        );
    }

    #[test]
    fn the_largest_timeout_does_not_overflow_the_deadline() {
        let (probe, _) = scripted(&[Job::Busy, Job::Gone]);
        assert_eq!(wait_for(probe, true, Duration::MAX, Duration::ZERO).unwrap(), Waited::Gone);
        let (probe, _) = scripted(&[Job::Ready]);
        let secs = Duration::from_secs(i64::MAX as u64);
        assert_eq!(wait_for(probe, true, secs, Duration::ZERO).unwrap(), Waited::Ready);
    }

    #[test]
    fn a_vanished_commit_is_done_only_if_the_disk_moved_to_its_base() {
        assert!(after_vanished_commit(Some("/p/d.qcow2.bak"), "/p/d.qcow2.bak", "committing").is_ok());
        let err = after_vanished_commit(Some("/p/d.qcow2"), "/p/d.qcow2.bak", "committing disk vda").unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("committing disk vda: its block job ended") && text.contains("/p/d.qcow2"), "{text}");
        assert!(after_vanished_commit(None, "/p/b", "committing").is_err());
    }
}
