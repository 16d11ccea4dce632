//! Active block commit with an explicit base, then pivot: the one merge the backing-file
//! mode needs. `virt` 0.5 has no bindings for block jobs; these are minimal ones.

use std::ffi::CString;
use std::time::{Duration, Instant};

use virt::domain::Domain;

use crate::error::{Doing, Error, Result};

/// Merges the active image of disk `target` down into `base` (an image of its own chain)
/// and switches the disk to `base`. The domain must be running (paused is enough).
pub(crate) fn commit_active_into(domain: &Domain, target: &str, base: &str, timeout: Duration) -> Result<()> {
    let doing = || format!("committing disk {target} into {base}");
    let disk = CString::new(target).map_err(|e| Error::Refused(format!("disk {target:?}: {e}")))?;
    let base_c = CString::new(base).map_err(|e| Error::Refused(format!("image {base:?}: {e}")))?;
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
    let deadline = Instant::now() + timeout;
    // An active commit stays in its job until pivoted; it is ready once all data is copied.
    while !job_ready(domain, &disk).doing(doing)? {
        if Instant::now() >= deadline {
            // SAFETY: as above; aborting without pivot leaves the disk on its old image.
            let _ = unsafe { virt::sys::virDomainBlockJobAbort(domain.as_ptr(), disk.as_ptr(), 0) };
            return Err(Error::Timeout { what: doing(), seconds: timeout.as_secs() });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // SAFETY: as above.
    let pivoted = unsafe {
        virt::sys::virDomainBlockJobAbort(domain.as_ptr(), disk.as_ptr(), virt::sys::VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT)
    };
    check(pivoted).doing(doing)
}

/// True once the job on `disk` has copied everything.
fn job_ready(domain: &Domain, disk: &CString) -> std::result::Result<bool, virt::error::Error> {
    let mut info = virt::sys::virDomainBlockJobInfo { type_: 0, bandwidth: 0, cur: 0, end: 0 };
    // SAFETY: `domain` is live, `disk` NUL-terminated, `info` a valid out-pointer.
    let found = unsafe { virt::sys::virDomainGetBlockJobInfo(domain.as_ptr(), disk.as_ptr(), &mut info, 0) };
    check(found)?;
    Ok(found == 1 && info.end > 0 && info.cur == info.end)
}

fn check(rc: i32) -> std::result::Result<(), virt::error::Error> {
    if rc < 0 {
        Err(virt::error::Error::last_error())
    } else {
        Ok(())
    }
}
