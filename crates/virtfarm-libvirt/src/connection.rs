//! A connection to one libvirt URI, and the domain type it should run guests with.

use virt::connect::Connect;

use crate::capabilities::HostCapabilities;
use crate::error::{Doing, Error, Result};
use crate::ssh_reuse;
use crate::vm::Vm;

/// An open connection to a libvirt daemon (`qemu:///system`, `qemu+ssh://host/system`, ...).
///
/// Closed on drop (by `virt`). Threads may share one: libvirt's client multiplexes their calls
/// over the connection and the daemon works on several of them at once (`max_client_requests`,
/// 5 by default), so one connection per hypervisor is enough; see [`Connections`].
pub struct Hypervisor {
    conn: Connect,
    uri: String,
}

/// How guests are virtualised on a host: hardware-assisted or emulated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DomainType {
    /// KVM: hardware virtualisation.
    Kvm,
    /// QEMU TCG: software emulation, for hosts without usable hardware virtualisation.
    Qemu,
}

impl DomainType {
    /// The value of `<domain type='...'>`.
    pub fn as_str(self) -> &'static str {
        match self {
            DomainType::Kvm => "kvm",
            DomainType::Qemu => "qemu",
        }
    }
}

impl Hypervisor {
    /// Connects read-write to `uri`, over a shared ssh connection where [`ssh_reuse`] allows.
    pub fn open(uri: &str) -> Result<Self> {
        // libvirt prints every error to stderr by default; ours are returned, not printed.
        virt::error::clear_error_callback();
        let conn = Connect::open(Some(&ssh_reuse::connect_uri(uri))).doing(|| format!("connecting to {uri}"))?;
        Ok(Hypervisor { conn, uri: uri.to_string() })
    }

    /// The URI this connection was opened with.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// The domain named `name`.
    pub fn vm(&self, name: &str) -> Result<Vm> {
        self.find_vm(name)?.ok_or_else(|| Error::NotFound { kind: "domain", name: name.to_string() })
    }

    /// The domain named `name`, or `None` when there is none.
    pub fn find_vm(&self, name: &str) -> Result<Option<Vm>> {
        match self.conn.lookup_domain_by_name(name) {
            Ok(domain) => Ok(Some(Vm::new(domain, name.to_string()))),
            Err(e) if e.code().is(virt::error::ErrorNumber::NoDomain) => Ok(None),
            Err(e) => Err(e).doing(|| format!("looking up domain {name}")),
        }
    }

    /// Every domain, running or not, in one call.
    pub fn all_vms(&self) -> Result<Vec<Vm>> {
        let domains = self.conn.list_all_domains(0).doing(|| format!("listing domains on {}", self.uri))?;
        domains
            .into_iter()
            .map(|domain| {
                let name = domain.name().doing(|| "reading a domain name".to_string())?;
                Ok(Vm::new(domain, name))
            })
            .collect()
    }

    /// Defines (or redefines) a persistent domain from XML.
    pub fn define_vm(&self, xml: &str) -> Result<Vm> {
        let domain = self.conn.define_domain_xml(xml).doing(|| "defining a domain".to_string())?;
        let name = domain.name().doing(|| "reading a domain name".to_string())?;
        Ok(Vm::new(domain, name))
    }

    /// The daemon's libvirt version, as `major.minor.release`.
    pub fn libvirt_version(&self) -> Result<String> {
        let v = self.conn.lib_version().doing(|| format!("reading the libvirt version of {}", self.uri))?;
        Ok(format!("{}.{}.{}", v / 1_000_000, v / 1000 % 1000, v % 1000))
    }

    /// The hypervisor's host name.
    pub fn hostname(&self) -> Result<String> {
        self.conn.hostname().doing(|| format!("reading the host name of {}", self.uri))
    }

    /// The host's capabilities.
    pub fn capabilities(&self) -> Result<HostCapabilities> {
        let xml = self.conn.capabilities().doing(|| format!("reading the capabilities of {}", self.uri))?;
        HostCapabilities::parse(&xml)
    }

    /// `kvm` where the host offers KVM on a CPU with hardware virtualisation, else `qemu`.
    ///
    /// A `/dev/kvm` alone is not enough: nested cloud machines expose a software KVM that is
    /// far slower than TCG. libvirt reports the host CPU's features in its capabilities, and a
    /// real KVM host has `vmx` or `svm` among them.
    pub fn preferred_domain_type(&self) -> Result<DomainType> {
        Ok(self.capabilities()?.preferred_domain_type())
    }

    pub(crate) fn raw(&self) -> &Connect {
        &self.conn
    }
}

/// One connection per hypervisor, opened in parallel and shared by every thread that works on
/// it: a `qemu+ssh://` connection costs an ssh session and a round trip to open, so a run over
/// many VMs on a few hypervisors opens a few.
#[derive(Default)]
pub struct Connections {
    opened: Vec<(String, Result<Hypervisor>)>,
}

impl Connections {
    /// Opens each of `uris` not opened yet, all at once; a URI that cannot be opened keeps its
    /// error, for [`Connections::get`] to report to every user of that hypervisor.
    pub fn open<'u>(&mut self, uris: impl IntoIterator<Item = &'u str>) {
        let mut missing: Vec<&str> = uris.into_iter().filter(|uri| self.find(uri).is_none()).collect();
        missing.sort_unstable();
        missing.dedup();
        let opened: Vec<(String, Result<Hypervisor>)> = std::thread::scope(|scope| {
            let handles: Vec<_> = missing.iter().map(|uri| scope.spawn(move || Hypervisor::open(uri))).collect();
            missing
                .iter()
                .zip(handles)
                .map(|(uri, handle)| {
                    let opened = handle
                        .join()
                        .unwrap_or_else(|_| Err(Error::Refused(format!("connecting to {uri} failed unexpectedly"))));
                    (uri.to_string(), opened)
                })
                .collect()
        });
        self.opened.extend(opened);
    }

    /// The connection to `uri`, or why there is none.
    pub fn get(&self, uri: &str) -> Result<&Hypervisor> {
        match self.find(uri) {
            Some(Ok(hypervisor)) => Ok(hypervisor),
            Some(Err(e)) => Err(Error::Refused(e.to_string())),
            None => Err(Error::Refused(format!("no connection to {uri} was opened"))),
        }
    }

    fn find(&self, uri: &str) -> Option<&Result<Hypervisor>> {
        self.opened.iter().find(|(opened, _)| opened == uri).map(|(_, result)| result)
    }
}
