//! What a run did to a domain that a later run must undo if this one is killed: a domain it
//! paused for a group snapshot, or one it started paused (QEMU without guest code) to merge
//! images. Kept in the domain's own metadata, in a namespace of its own ([`NS`]), so it holds
//! on remote URIs and the inventory, which reads only `urn:virtfarm:metadata:1`, ignores it.
//!
//! A pause is recorded on the live domain only, before the pause: it goes when the domain
//! stops, and a run killed between recording and pausing leaves a mark on a running domain,
//! which the repair just clears. A merge is recorded on the definition before the start, so
//! the QEMU it starts carries it from its first instant.

use virt::sys::{VIR_DOMAIN_AFFECT_CONFIG, VIR_DOMAIN_AFFECT_LIVE, VIR_DOMAIN_METADATA_ELEMENT};

use crate::error::{Doing, Result};
use crate::vm::Vm;

/// The namespace of the mark.
pub(crate) const NS: &str = "urn:virtfarm:run:1";
/// The prefix libvirt stores the mark's element with.
const KEY: &str = "vfrun";

/// What a run did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mark {
    /// Paused the running domain for a group snapshot.
    Paused,
    /// Started the shut-off domain paused to merge images.
    Merging,
}

impl Mark {
    fn element(self) -> &'static str {
        match self {
            Mark::Paused => "<paused/>",
            Mark::Merging => "<merging/>",
        }
    }

    fn flags(self) -> u32 {
        match self {
            Mark::Paused => VIR_DOMAIN_AFFECT_LIVE,
            Mark::Merging => VIR_DOMAIN_AFFECT_CONFIG,
        }
    }

    /// Reads the element libvirt gives back.
    fn parse(xml: &str) -> Option<Mark> {
        let name = xml.trim_start().strip_prefix('<')?;
        let name = name.split(|c: char| c.is_whitespace() || c == '/' || c == '>').next()?;
        match name.rsplit(':').next()? {
            "paused" => Some(Mark::Paused),
            "merging" => Some(Mark::Merging),
            _ => None,
        }
    }
}

/// Records `mark` on `vm` (the live domain for a pause, the definition for a merge).
pub(crate) fn set(vm: &Vm, mark: Mark) -> Result<()> {
    vm.raw()
        .set_metadata(VIR_DOMAIN_METADATA_ELEMENT as i32, Some(mark.element()), Some(KEY), Some(NS), mark.flags())
        .doing(|| format!("recording on {} what this run does to it", vm.name()))
}

/// Removes the mark of kind `mark`; nothing to remove is fine.
pub(crate) fn clear(vm: &Vm, mark: Mark) -> Result<()> {
    match vm.raw().set_metadata(VIR_DOMAIN_METADATA_ELEMENT as i32, None, Some(KEY), Some(NS), mark.flags()) {
        Err(e) if e.code().is(virt::error::ErrorNumber::NoDomainMetadata) => Ok(()),
        other => other.doing(|| format!("clearing the record of a run on {}", vm.name())),
    }
}

/// The mark of the live domain (`live`) or of its definition; `None` when there is none.
pub(crate) fn get(vm: &Vm, live: bool) -> Result<Option<Mark>> {
    // A transient domain has no definition to read.
    if !live && !vm.raw().is_persistent().unwrap_or(true) {
        return Ok(None);
    }
    let flags = if live { VIR_DOMAIN_AFFECT_LIVE } else { VIR_DOMAIN_AFFECT_CONFIG };
    match vm.raw().metadata(VIR_DOMAIN_METADATA_ELEMENT as i32, Some(NS), flags) {
        Ok(xml) => Ok(Mark::parse(&xml)),
        Err(e) if e.code().is(virt::error::ErrorNumber::NoDomainMetadata) => Ok(None),
        Err(e) => Err(e).doing(|| format!("reading the record of a run on {}", vm.name())),
    }
}

/// True when `vm` is paused because a client asked for it (as a group snapshot does), not
/// by libvirt itself, e.g. while it saves the RAM of a snapshot.
pub(crate) fn paused_by_request(vm: &Vm) -> Result<bool> {
    use virt::domain::{DomainPausedReason, DomainStateReason};
    use virt::enumutil::Enum;
    let (_, reason) = vm.raw().state().doing(|| format!("reading the state of {}", vm.name()))?;
    Ok(matches!(reason, Enum::Known(DomainStateReason::Paused(Enum::Known(DomainPausedReason::User)))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_read_back_whatever_prefix_libvirt_gives_them() {
        for mark in [Mark::Paused, Mark::Merging] {
            assert_eq!(Mark::parse(mark.element()), Some(mark));
        }
        assert_eq!(Mark::parse("<vfrun:paused xmlns:vfrun=\"urn:virtfarm:run:1\"/>"), Some(Mark::Paused));
        assert_eq!(Mark::parse(" <merging></merging>"), Some(Mark::Merging));
        assert_eq!(Mark::parse("<resumed/>"), None);
        assert_eq!(Mark::parse(""), None);
    }
}
