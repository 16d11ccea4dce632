//! libvirt work for virtfarm: everything that talks to a libvirt daemon lives here.
//!
//! The module binaries and the inventory never call `virt` themselves: they open a
//! [`Hypervisor`], get [`Vm`]s from it and ask for what they need in domain terms.
//!
//! ```no_run
//! use std::time::Duration;
//! use virtfarm_libvirt::{Hypervisor, wait};
//!
//! let hypervisor = Hypervisor::open("qemu:///system")?;
//! let vm = hypervisor.vm("web1")?;
//! let baseline = wait::LeaseBaseline::capture(&hypervisor, &vm)?;
//! vm.start()?;
//! let readiness = wait::Readiness { signal: wait::Signal::Ssh, timeout: Duration::from_secs(300) };
//! let ready = wait::wait_ready(&hypervisor, &vm, &baseline, readiness)?;
//! println!("web1 is reachable at {:?}", ready.ip);
//! # Ok::<(), virtfarm_libvirt::Error>(())
//! ```
#![deny(missing_docs)]

pub mod agent;
pub mod capabilities;
pub mod cloud_init;
pub mod connection;
pub mod disk_use;
pub mod domain_facts;
pub mod domain_xml;
pub mod error;
pub mod firmware;
pub mod import;
pub mod leases;
pub mod lock;
pub mod naming;
pub mod network;
pub mod placement;
pub mod power;
pub mod provision;
pub mod scan;
pub mod snapshot;
pub mod ssh_reuse;
pub mod storage;
pub mod validate;
pub mod vm;
pub mod wait;

pub use connection::{Connections, DomainType, Hypervisor};
pub use error::{Error, Result};
pub use vm::{PowerState, Vm};
