//! Bringing one VM to its wanted state on its hypervisor, then waiting for all of them.
//!
//! Every VM is handled on its own thread, on one connection per hypervisor; check mode walks the same
//! path with every change turned into a report of what would change.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::{json, Value};
use virtfarm_libvirt::disk_use::DiskUse;
use virtfarm_libvirt::domain_facts::DomainFacts;
use virtfarm_libvirt::domain_xml::{reconcile_identity, DiskDevice, DomainSpec, Firmware, InstanceMetadata, Tpm};
use virtfarm_libvirt::import::ImageFile;
use virtfarm_libvirt::lock::{DomainLock, LockPolicy};
use virtfarm_libvirt::naming::fingerprint;
use virtfarm_libvirt::power::{stop, StopOutcome, StopPolicy};
use virtfarm_libvirt::snapshot::backing_file;
use virtfarm_libvirt::wait::{wait_all, LeaseBaseline, Readiness, Signal};
use virtfarm_libvirt::{Connections, Error, Hypervisor, PowerState, Vm};

use crate::definition::{DomainSource, Request, State, VmDefinition};

/// What happened to one VM.
#[derive(Default)]
pub struct Outcome {
    /// Domain name.
    pub name: String,
    /// Its libvirt URI.
    pub uri: String,
    /// Something changed (or would, in check mode).
    pub changed: bool,
    /// What changed, in words.
    pub actions: Vec<String>,
    /// Things the user should know.
    pub warnings: Vec<String>,
    /// Domain UUID, once defined.
    pub uuid: Option<String>,
    /// Power state at the end (`absent` when gone).
    pub state: String,
    /// NIC MACs.
    pub macs: Vec<String>,
    /// Disk image paths.
    pub disks: Vec<String>,
    /// Address, from a reservation or the wait.
    pub ip: Option<String>,
    /// Before and after definitions, when the definition changed.
    pub diff: Option<(String, String)>,
    /// Set when the VM was started now and should be waited for from this lease baseline.
    baseline: Option<LeaseBaseline>,
    /// Why it failed, if it did.
    pub error: Option<String>,
}

impl Outcome {
    fn new(vm: &VmDefinition) -> Self {
        Outcome { name: vm.name.clone(), uri: vm.uri.clone(), ..Default::default() }
    }

    /// A VM that failed before it reached a hypervisor (it could not be placed).
    pub fn refused(name: &str, error: String) -> Self {
        Outcome { name: name.to_string(), error: Some(error), ..Default::default() }
    }

    fn did(&mut self, action: String) {
        self.changed = true;
        self.actions.push(action);
    }

    /// The per-VM result Ansible gets.
    pub fn to_json(&self) -> Value {
        let mut result = json!({
            "name": self.name, "uri": self.uri, "changed": self.changed, "actions": self.actions,
            "uuid": self.uuid, "state": self.state, "macs": self.macs, "mac": self.macs.first(),
            "disks": self.disks, "ip": self.ip, "ansible_host": self.ip,
        });
        if let Some(error) = &self.error {
            result["failed"] = json!(true);
            result["msg"] = json!(error);
        }
        result
    }
}

/// Applies every VM in parallel, one thread each on its hypervisor's shared connection, then
/// waits for the ones that should be ready. A hypervisor that cannot be reached fails its VMs
/// only.
pub fn apply_all(request: &Request, check: bool, connections: &mut Connections) -> Vec<Outcome> {
    connections.open(request.vms.iter().map(|vm| vm.uri.as_str()));
    let connections = &*connections;
    let mut outcomes: Vec<Outcome> = std::thread::scope(|scope| {
        let handles: Vec<_> = request
            .vms
            .iter()
            .map(|vm| {
                scope.spawn(move || {
                    // What was done before a failure is reported with it: `changed` stays true.
                    let mut outcome = Outcome::new(vm);
                    let result = apply_one(vm, request, check, connections, &mut outcome);
                    (outcome, result)
                })
            })
            .collect();
        handles
            .into_iter()
            .zip(&request.vms)
            .map(|(handle, vm)| {
                let mut outcome = Outcome::new(vm);
                match handle.join() {
                    Ok((done, Ok(()))) => outcome = done,
                    Ok((done, Err(e))) => {
                        outcome = done;
                        outcome.error = Some(format!("{}: {e:#}", vm.name));
                    }
                    Err(panic) => {
                        let why = ansible_module::panic_text(panic.as_ref());
                        outcome.error =
                            Some(format!("{}: provisioning failed unexpectedly: {why} (this is a bug)", vm.name))
                    }
                }
                outcome
            })
            .collect()
    });
    if let (Some(signal), false, State::Running) = (request.wait, check, request.state) {
        wait_for_all(&mut outcomes, signal, request.wait_timeout, connections);
    }
    outcomes
}

fn apply_one(
    vm: &VmDefinition,
    request: &Request,
    check: bool,
    connections: &Connections,
    outcome: &mut Outcome,
) -> Result<()> {
    let hypervisor = connections.get(&vm.uri).with_context(|| format!("uri {}", vm.uri))?;
    let _locks = if check { Vec::new() } else { lock(hypervisor, vm, request.state)? };
    // Looked up under the lock: another run may have defined it while this one waited.
    let existing = hypervisor.find_vm(&vm.name)?;
    // What stands on what, read under the lock: every disk this run writes or deletes is checked
    // against it.
    let disks = hypervisor.disk_use()?;
    if request.state == State::Absent {
        return remove(hypervisor, existing, &disks, request.remove_storage, check, outcome);
    }
    // Before anything is created: a refusal must leave nothing behind.
    check_macs_are_free(&disks, &vm.name, &vm.macs()?)?;
    for network in &vm.networks {
        if hypervisor.ensure_network(&network.name, network.create.as_ref(), check)? {
            outcome.did(format!("network {} created or started", network.name));
        }
        if let Some(reservation) = &network.reservation {
            if hypervisor.ensure_reservation(&network.name, reservation, check)? {
                outcome.did(format!("reserved {} for {} in network {}", reservation.ip, reservation.mac, network.name));
            }
            outcome.ip = Some(reservation.ip.to_string());
        }
    }
    let old_xml = existing.as_ref().map(|vm| vm.xml(true)).transpose()?;
    let old_metadata = old_xml.as_deref().map(InstanceMetadata::from_domain_xml).transpose()?.unwrap_or_default();
    let current = old_xml.as_deref().map(DomainFacts::parse).transpose()?;
    let uuid = existing.as_ref().map(Vm::uuid).transpose()?;
    // Its disks and what they stand on: a volume in there is its own, whoever made it.
    let chains: Vec<String> = current
        .iter()
        .flat_map(|facts| facts.disks.iter().filter_map(|d| d.file.as_deref()))
        .flat_map(|file| disks.chain(file))
        .collect();
    let mut definition = definition_xml(hypervisor, vm, uuid, &old_metadata, &chains, &disks, check, outcome)?;
    // Until the domain is defined, nothing records the volumes this run made: undo them on failure.
    let undo = |definition: &Definition, error: anyhow::Error| {
        let left: Vec<String> = definition
            .created
            .iter()
            .filter_map(|path| hypervisor.delete_volume(path).err().map(|e| format!("{path} left behind: {e}")))
            .collect();
        if left.is_empty() {
            error
        } else {
            error.context(left.join("; "))
        }
    };
    definition.xml = safe_disks(hypervisor, vm, &definition, current.as_ref(), &disks, check, outcome)
        .map_err(|e| undo(&definition, e))?;
    let unchanged = existing.is_some() && old_metadata.spec_hash.as_deref() == Some(definition.hash.as_str());
    if let Some((name, path, content)) = &definition.seed {
        let existed = hypervisor.volume_exists(path)?;
        if !unchanged || !existed {
            if !check {
                hypervisor.put_volume(&vm.pool, name, content).map_err(|e| undo(&definition, e.into()))?;
                if !existed {
                    definition.created.push(path.clone());
                }
            }
            outcome.did(format!("cloud-init seed {path} written"));
        }
    }
    let vm_handle = if unchanged && old_metadata.volumes == definition.volumes {
        existing
    } else {
        let before = old_xml.unwrap_or_default();
        let defined = if check {
            None
        } else {
            Some(hypervisor.define_vm(&definition.xml).map_err(|e| undo(&definition, e.into()))?)
        };
        let after = match &defined {
            Some(vm) => vm.xml(true)?,
            None => definition.xml.clone(),
        };
        outcome.did(if before.is_empty() { "defined".to_string() } else { "definition updated".to_string() });
        if !before.is_empty() && existing.as_ref().map(Vm::power_state).transpose()? == Some(PowerState::Running) {
            outcome
                .warnings
                .push(format!("{}: the new definition applies from the next boot (it is running)", vm.name));
        }
        outcome.diff = Some((before, after));
        defined.or(existing)
    };
    let facts = DomainFacts::parse(&definition.xml)?;
    outcome.macs = facts.nics.iter().map(|n| n.mac.clone()).collect();
    outcome.disks = facts.disks.iter().filter_map(|d| d.file.clone()).collect();
    match vm_handle {
        Some(domain) => {
            outcome.uuid = Some(domain.uuid()?);
            set_power(hypervisor, &domain, request, check, outcome)?;
        }
        None => {
            // Check mode on a VM that does not exist yet.
            if request.state == State::Running {
                outcome.did("started".to_string());
            }
            outcome.state = if request.state == State::Running { "running" } else { "shutoff" }.to_string();
        }
    }
    Ok(())
}

/// One run at a time changes a domain, from whichever controller it runs, and one run at a
/// time gives an explicit MAC to a domain (the MACs sorted, so two runs never wait on each
/// other). The locks live where every module looks for a domain's lock, in the pool of its
/// first disk (for a new domain: the pool its clone goes to, else of its first given disk).
/// A domain with no disk in a pool has none of our volumes to guard (its definition is
/// replaced atomically), and a MAC given to it is checked without a lock.
fn lock(hypervisor: &Hypervisor, vm: &VmDefinition, state: State) -> Result<Vec<DomainLock>> {
    let files = match hypervisor.find_vm(&vm.name)? {
        Some(existing) => existing.facts()?.disks.into_iter().filter_map(|d| d.file).collect(),
        None if vm.root_disk.is_some() => vec![format!("{}/{}", hypervisor.pool_path(&vm.pool)?, root_volume(vm))],
        None => vm.disk_files()?,
    };
    let Some(pool) = hypervisor.pool_of_first_disk(&files)? else { return Ok(Vec::new()) };
    let policy = LockPolicy::default();
    let mut locks = vec![hypervisor.lock_domain(&pool, &vm.name, &policy)?];
    if state != State::Absent {
        let mut macs: Vec<String> = vm.macs()?.into_iter().filter(|mac| !mac.is_empty()).collect();
        macs.sort();
        macs.dedup();
        for mac in macs {
            locks.push(hypervisor.lock_mac(&pool, &mac, &policy).context("networks")?);
        }
    }
    Ok(locks)
}

/// The volume a VM's root disk is cloned into, in its pool.
fn root_volume(vm: &VmDefinition) -> String {
    format!("{}.qcow2", vm.name)
}

/// The XML to define, its fingerprint, the seed to upload, and the volumes we own.
struct Definition {
    xml: String,
    hash: String,
    seed: Option<(String, String, Vec<u8>)>,
    volumes: Vec<String>,
    /// Volumes this run created (not in check mode): removed again if the domain cannot be defined.
    created: Vec<String>,
    /// The size the existing root disk must have at least.
    grow_root: Option<u64>,
}

#[allow(clippy::too_many_arguments)]
fn definition_xml(
    hypervisor: &Hypervisor,
    vm: &VmDefinition,
    uuid: Option<String>,
    old: &InstanceMetadata,
    chains: &[String],
    disks: &DiskUse,
    check: bool,
    outcome: &mut Outcome,
) -> Result<Definition> {
    let mut volumes = old.volumes.clone();
    let mut created = Vec::new();
    let mut own = |path: &str| {
        if !volumes.iter().any(|v| v == path) {
            volumes.push(path.to_string());
        }
    };
    match &vm.domain {
        DomainSource::Given { xml, metadata } => {
            let hash = fingerprint(&[vm.name.as_bytes(), xml.as_bytes()]);
            let metadata =
                InstanceMetadata { spec_hash: Some(hash.clone()), volumes: volumes.clone(), ..(**metadata).clone() };
            let xml = reconcile_identity(xml, &vm.name, uuid.as_deref(), &metadata).context("xml")?;
            Ok(Definition { xml, hash, seed: None, volumes, created: Vec::new(), grow_root: None })
        }
        DomainSource::Generated(spec) => {
            let mut spec: DomainSpec = (**spec).clone();
            spec.domain_type = match &vm.domain_type {
                Some(kind) => kind.clone(),
                None => hypervisor.preferred_domain_type()?.as_str().to_string(),
            };
            if spec.firmware != Firmware::Bios || spec.tpm.is_some() {
                let offered = hypervisor.offered(&spec)?;
                let firmware_option = if matches!(spec.firmware, Firmware::Loader(_)) { "loader" } else { "firmware" };
                offered.check_firmware(&spec).context(firmware_option)?;
                if spec.tpm.is_some() {
                    spec.tpm = Some(Tpm { model: offered.tpm_model(&spec).context("tpm")? });
                }
            }
            // A disk made now has its size; one that existed may have to grow.
            let mut grow_root = None;
            if let Some(root) = &vm.root_disk {
                let base = match &root.upload {
                    Some(file) => {
                        let file = ImageFile::open(file).context("image_upload")?;
                        let pool = root.image_pool.as_deref().unwrap_or(&vm.pool);
                        let imported =
                            hypervisor.import_image(pool, &root.image, &file, disks, check).context("image_upload")?;
                        if imported.uploaded {
                            outcome.did(format!("image {} imported from {}", imported.base.path, file.path));
                        }
                        imported.base
                    }
                    None => hypervisor.base_image(&root.image, root.image_pool.as_deref()).context("image")?,
                };
                let owned_path = format!("{}/{}", hypervisor.pool_path(&vm.pool)?, root_volume(vm));
                let clone = hypervisor
                    .ensure_clone(
                        &vm.pool,
                        &root_volume(vm),
                        &base,
                        root.size,
                        root.mode,
                        old.volumes.contains(&owned_path) || chains.contains(&owned_path),
                        check,
                    )
                    .context("name")?;
                if clone.created {
                    outcome.did(format!("disk {} cloned from {}", clone.path, base.path));
                    own(&clone.path);
                    if !check {
                        created.push(clone.path.clone());
                    }
                }
                if !clone.created {
                    grow_root = root.size;
                }
                spec.disks.insert(
                    0,
                    DiskDevice { path: clone.path, format: "qcow2".into(), target: "vda".into(), cdrom: false },
                );
            }
            let mut seed = None;
            let mut iso = Vec::new();
            if let Some(init) = &vm.cloud_init {
                iso = init.seed_iso();
                let name = format!("{}-seed.iso", vm.name);
                let path = format!("{}/{name}", hypervisor.pool_path(&vm.pool)?);
                own(&path);
                spec.disks.push(DiskDevice {
                    path: path.clone(),
                    format: "raw".into(),
                    target: "sda".into(),
                    cdrom: true,
                });
                seed = Some((name, path, iso.clone()));
            }
            // The fingerprint covers what the user asked for, not what libvirt or we add later.
            let hash = fingerprint(&[spec.to_xml()?.as_bytes(), &iso]);
            spec.uuid = uuid;
            spec.metadata.spec_hash = Some(hash.clone());
            spec.metadata.volumes = volumes.clone();
            Ok(Definition { xml: spec.to_xml()?, hash, seed, volumes, created, grow_root })
        }
    }
}

/// The definition's XML with every disk kept on the top of its current chain (a redefinition
/// after an external snapshot keeps the overlay), once every disk it writes is checked: none
/// may be a file that another volume stands on or another domain uses. Grows the root disk last.
fn safe_disks(
    hypervisor: &Hypervisor,
    vm: &VmDefinition,
    definition: &Definition,
    current: Option<&DomainFacts>,
    disks: &DiskUse,
    check: bool,
    outcome: &mut Outcome,
) -> Result<String> {
    let xml = match current {
        Some(current) => disks.keep_current_tops(&definition.xml, current)?,
        None => definition.xml.clone(),
    };
    let facts = DomainFacts::parse(&xml)?;
    for disk in &facts.disks {
        let Some(file) = &disk.file else { continue };
        let option = match (&vm.domain, &vm.root_disk) {
            (DomainSource::Given { .. }, _) => "xml",
            (_, Some(_)) if disk.target == "vda" => "name",
            (_, _) if disk.device == "cdrom" => "cloud_init",
            _ => "disks",
        };
        disks
            .check_writable(file, &vm.name)
            .with_context(|| format!("{option}: {file} cannot be a disk of {}", vm.name))?;
        // Attached as they are, so they must be there; a file outside every pool cannot be
        // looked up through the API and is left to libvirt.
        if option == "disks"
            && !hypervisor.volume_exists(file)?
            && hypervisor.pool_of_first_disk(std::slice::from_ref(file))?.is_some()
        {
            anyhow::bail!("{option}: {file} does not exist (a disk given by path is attached as it is)");
        }
    }
    if let (Some(size), Some(root)) = (definition.grow_root, facts.disks.iter().find(|d| d.target == "vda")) {
        let file = root.file.as_deref().unwrap_or_default();
        if hypervisor.grow_volume(file, size, check).context("disk_size")? {
            outcome.did(format!("disk {file} grown"));
        }
    }
    Ok(xml)
}

/// Refuses a MAC that another domain already has: two NICs with one MAC break DHCP for both.
fn check_macs_are_free(disks: &DiskUse, name: &str, wanted: &[String]) -> Result<()> {
    match disks.mac_user(wanted, name) {
        Some((other, mac)) => anyhow::bail!("networks: MAC {mac} is already used by domain {other}"),
        None => Ok(()),
    }
}

fn set_power(hypervisor: &Hypervisor, vm: &Vm, request: &Request, check: bool, outcome: &mut Outcome) -> Result<()> {
    let now = vm.power_state()?;
    match request.state {
        State::Running if now != PowerState::Running => {
            if !check {
                outcome.baseline = Some(LeaseBaseline::capture(hypervisor, vm)?);
                match now {
                    PowerState::Paused => vm.resume()?,
                    _ => vm.start()?,
                }
            }
            outcome.did("started".to_string());
        }
        State::Running => outcome.baseline = Some(LeaseBaseline::any()),
        State::Stopped if now != PowerState::ShutOff => {
            if check {
                outcome.did("stopped".to_string());
            } else {
                let policy = StopPolicy { timeout: request.stop_timeout, ..StopPolicy::default() };
                let how = stop(vm, &policy)?;
                if how != StopOutcome::AlreadyOff {
                    outcome.did(format!("stopped ({})", how.as_str()));
                }
            }
        }
        _ => {}
    }
    outcome.state = if check { expected_state(request.state, now) } else { vm.power_state()?.as_str().to_string() };
    Ok(())
}

fn expected_state(state: State, now: PowerState) -> String {
    match state {
        State::Running => "running".into(),
        State::Stopped => "shutoff".into(),
        _ => now.as_str().into(),
    }
}

fn remove(
    hypervisor: &Hypervisor,
    existing: Option<Vm>,
    disks: &DiskUse,
    remove_storage: bool,
    check: bool,
    outcome: &mut Outcome,
) -> Result<()> {
    outcome.state = "absent".to_string();
    let Some(vm) = existing else { return Ok(()) };
    let xml = vm.xml(true)?;
    let facts = DomainFacts::parse(&xml)?;
    let metadata = InstanceMetadata::from_domain_xml(&xml)?;
    outcome.uuid = Some(vm.uuid()?);
    outcome.macs = facts.nics.iter().map(|n| n.mac.clone()).collect();
    outcome.disks = facts.disks.iter().filter_map(|d| d.file.clone()).collect();
    outcome.diff = Some((xml, String::new()));
    if vm.power_state()? != PowerState::ShutOff {
        if !check {
            vm.destroy()?;
        }
        outcome.did("forced off".to_string());
    }
    if !check {
        hypervisor.undefine_vm(&vm)?;
    }
    outcome.did("undefined".to_string());
    for nic in &facts.nics {
        if let Some(network) = &nic.network {
            if !check && hypervisor.remove_reservation(network, &nic.mac)? {
                outcome.actions.push(format!("reservation of {} removed from network {network}", nic.mac));
            }
        }
    }
    if remove_storage {
        remove_volumes(hypervisor, &facts, &metadata.volumes, disks, check, outcome)?;
    }
    Ok(())
}

/// Deletes the volumes made for the domain (its clone and seed, the levels the backing-file
/// mode saved of them and its markers) and the snapshot overlays on top of them, tops first; a shared base
/// image is never among them, and a volume that something else still stands on is kept.
fn remove_volumes(
    hypervisor: &Hypervisor,
    facts: &DomainFacts,
    owned: &[String],
    disks: &DiskUse,
    check: bool,
    outcome: &mut Outcome,
) -> Result<()> {
    let mut made_for_it = owned.to_vec();
    for volume in owned {
        // Its levels go too, and the markers a killed run left on them.
        if hypervisor.volume_exists(volume)? {
            made_for_it.extend(backing_file::levels(hypervisor, volume)?.into_iter().map(|level| level.file));
            made_for_it.extend(backing_file::unfinished(hypervisor, volume)?.iter().map(|u| u.marker_file()));
        }
    }
    let mut gone: Vec<String> = Vec::new();
    for path in disks.removal_order(facts, &made_for_it) {
        let standing: Vec<&str> =
            disks.dependants(&path).iter().filter(|d| !gone.contains(d)).map(String::as_str).collect();
        if !standing.is_empty() {
            outcome.warnings.push(format!("volume {path} kept: {} stand on it", standing.join(", ")));
            continue;
        }
        let existed = if check { hypervisor.volume_exists(&path)? } else { hypervisor.delete_volume(&path)? };
        if existed {
            outcome.did(format!("volume {path} deleted"));
            gone.push(path);
        }
    }
    Ok(())
}

/// Waits for every started or running VM at once (one thread each, on its hypervisor's connection).
fn wait_for_all(outcomes: &mut [Outcome], signal: Signal, timeout: Duration, connections: &Connections) {
    let mut by_uri: BTreeMap<String, Vec<(String, LeaseBaseline)>> = BTreeMap::new();
    for outcome in outcomes.iter_mut().filter(|o| o.error.is_none()) {
        if let Some(baseline) = outcome.baseline.take() {
            by_uri.entry(outcome.uri.clone()).or_default().push((outcome.name.clone(), baseline));
        }
    }
    let readiness = Readiness { signal, timeout };
    let results: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = by_uri
            .into_iter()
            .map(|(uri, domains)| {
                scope.spawn(move || match connections.get(&uri) {
                    Ok(hypervisor) => wait_all(hypervisor, domains, readiness),
                    Err(e) => domains.into_iter().map(|(name, _)| (name, Err(Error::Refused(e.to_string())))).collect(),
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap_or_default()).collect()
    });
    for (name, result) in results {
        let Some(outcome) = outcomes.iter_mut().find(|o| o.name == name) else { continue };
        match result {
            Ok(ready) => outcome.ip = ready.ip.or(outcome.ip.take()),
            Err(e) => outcome.error = Some(format!("{name} did not become ready: {e}")),
        }
    }
}
