//! Integration tests against the test bed: real libvirtd, real guests, real Ansible.
//!
//! VM tests are `#[ignore]`d so that a plain `cargo test` needs no daemon;
//! `cargo xtask test` brings the bed up and runs them with `--include-ignored`.

/// ansible_farm's playbooks and inventories with only the role names changed.
mod ansible_farm;
/// The bed itself: a guest boots from a linked clone, leases, answers its agent and SSH.
mod bed_smoke;
/// The bootable image, as users bring theirs: BIOS and UEFI guests, NVRAM, cloud-init's first boot.
mod bootable;
/// The collection as installed from its tarball: docs, ad-hoc use.
mod collection;
/// The demo playbook, end to end.
mod demo;
/// Faults on the bed: daemon restarts, silent guests, killed operations, full pools, concurrent runs.
mod faults;
/// Fleets: placement, provisioning, snapshots and inventory across two hypervisors; image imports over ssh.
mod fleet;
/// guest_provision and the roles: the cached lifecycle through ansible-playbook.
mod guest_provision;
/// Hostile input against every module binary: failed JSON naming the parameter, nothing changed.
mod hostile;
/// Every module and every state, twice: the second run changes nothing.
mod idempotency;
/// libvirt_inventory: the executable and the inventory plugin.
mod inventory;
/// kvm_provision: define, start, change, stop and remove VMs.
mod kvm_provision;
/// LXD containers in the inventory beside libvirt domains, reached through community.general.lxd.
mod lxd;
/// The collection's Molecule scenario.
mod molecule;
/// The shipped binaries on older systems: glibc and libvirt symbol versions, a Debian 11 root.
mod portable;
/// The thin roles with the variables of the roles they replace.
mod roles;
/// A seeded random walk over disks, snapshots, levels and killed runs; invariants checked after every step.
mod sequence;
/// snapshot_libvirt: internal and external snapshots, groups, the backing-file mode.
mod snapshot_libvirt;
/// The ssh connection that tasks against one `qemu+ssh://` hypervisor share, counted on its sshd.
mod ssh_reuse;
