//! Bringing one VM to its state on its hypervisor: locks, MAC check, networks, disks, seed,
//! the definition (undone when it cannot be made), power. Check mode walks the same path with
//! every change turned into a report of what would change.

use crate::disk_use::DiskUse;
use crate::domain_facts::{Disk, DomainFacts};
use crate::domain_xml::{reconcile_identity, DomainSpec, Firmware, InstanceMetadata};
use crate::import::ImageFile;
use crate::lock::{DomainLock, LockPolicy};
use crate::naming::fingerprint;
use crate::power::{stop, StopOutcome, StopPolicy};
use crate::snapshot::backing_file;
use crate::snapshot::domain_disks::repoint_disks;
use crate::wait::LeaseBaseline;
use crate::{Error, Hypervisor, PowerState, Vm};

use super::outcome::{Action, EndState, Failure, Outcome, Part, Warning};
use super::plan::{complete, expected_power, on_tops, power_step, spec_disks, Completion, PowerStep};
use super::request::{DomainSource, Request, State, VmDefinition};

/// Brings `vm` to the state of `request` on `hypervisor`, recording in `outcome` what it did.
pub(super) fn apply_one(
    hypervisor: &Hypervisor,
    vm: &VmDefinition,
    request: &Request,
    check: bool,
    outcome: &mut Outcome,
) -> Result<(), Failure> {
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
    if let Some((domain, mac)) = disks.mac_user(&vm.macs(), &vm.name) {
        return Err(Failure::MacTaken { mac: mac.to_string(), domain: domain.to_string() });
    }
    for network in &vm.networks {
        if hypervisor.ensure_network(&network.name, network.create.as_ref(), check)? {
            outcome.did(Action::NetworkReady(network.name.clone()));
        }
        if let Some(reservation) = &network.reservation {
            if hypervisor.ensure_reservation(&network.name, reservation, check)? {
                outcome.did(Action::Reserved {
                    ip: reservation.ip.to_string(),
                    mac: reservation.mac.clone(),
                    network: network.name.clone(),
                });
            }
            outcome.ip = Some(reservation.ip.to_string());
        }
    }
    let current = Current::read(existing.as_ref(), &disks)?;
    let mut definition = define_what(hypervisor, vm, &current, &disks, check, outcome)?;
    // Until the domain is defined, nothing records the volumes this run made: undo them on failure.
    let undo = |definition: &Definition, failure: Failure| {
        let left_behind: Vec<String> = definition
            .created
            .iter()
            .filter_map(|path| hypervisor.delete_volume(path).err().map(|e| format!("{path} left behind: {e}")))
            .collect();
        if left_behind.is_empty() {
            failure
        } else {
            Failure::LeftBehind { left_behind, failure: Box::new(failure) }
        }
    };
    keep_current_tops(&mut definition, current.facts.as_ref(), &disks).map_err(|e| undo(&definition, e.into()))?;
    check_disks(hypervisor, vm, &definition, &disks).map_err(|e| undo(&definition, e))?;
    grow_root(hypervisor, &definition, check, outcome).map_err(|e| undo(&definition, e))?;
    let unchanged = existing.is_some() && current.spec_hash() == Some(definition.hash.as_str());
    if let Some(seed) = &definition.seed {
        let existed = hypervisor.volume_exists(&seed.path)?;
        if !unchanged || !existed {
            if !check {
                hypervisor.put_volume(&vm.pool, &seed.name, &seed.content).map_err(|e| undo(&definition, e.into()))?;
                if !existed {
                    definition.created.push(seed.path.clone());
                }
            }
            outcome.did(Action::SeedWritten(seed.path.clone()));
        }
    }
    let domain = if unchanged && current.volumes() == definition.volumes {
        existing
    } else {
        let before = current.xml.unwrap_or_default();
        let defined = if check {
            None
        } else {
            Some(hypervisor.define_vm(&definition.xml).map_err(|e| undo(&definition, e.into()))?)
        };
        let after = match &defined {
            Some(vm) => vm.xml(true)?,
            None => definition.xml.clone(),
        };
        outcome.did(if before.is_empty() { Action::Defined } else { Action::DefinitionUpdated });
        if !before.is_empty() && existing.as_ref().map(Vm::power_state).transpose()? == Some(PowerState::Running) {
            outcome.warnings.push(Warning::NextBoot(vm.name.clone()));
        }
        outcome.diff = Some((before, after));
        defined.or(existing)
    };
    outcome.macs = definition.macs;
    outcome.disks = definition.disks.into_iter().filter_map(|d| d.file).collect();
    match domain {
        Some(domain) => {
            outcome.uuid = Some(domain.uuid()?);
            set_power(hypervisor, &domain, request, check, outcome)?;
        }
        None => {
            // Check mode on a VM that does not exist yet.
            if request.state == State::Running {
                outcome.did(Action::Started);
            }
            let power = if request.state == State::Running { PowerState::Running } else { PowerState::ShutOff };
            outcome.state = Some(EndState::Defined(power));
        }
    }
    Ok(())
}

/// Locks the domain, and each MAC it asks for, against other runs (each run here waits on
/// the other). The locks live where every module looks for a domain's lock, in the pool of its
/// first disk (for a new domain: the pool its clone goes to, else of its first given disk).
/// A domain with no disk in a pool has none of our volumes to guard (its definition is
/// replaced atomically), and a MAC given to it is checked without a lock.
fn lock(hypervisor: &Hypervisor, vm: &VmDefinition, state: State) -> Result<Vec<DomainLock>, Failure> {
    let files = match hypervisor.find_vm(&vm.name)? {
        Some(existing) => existing.facts()?.disks.into_iter().filter_map(|d| d.file).collect(),
        None if vm.root_disk.is_some() => vec![format!("{}/{}", hypervisor.pool_path(&vm.pool)?, vm.root_volume())],
        None => vm.disk_files(),
    };
    let Some(pool) = hypervisor.pool_of_first_disk(&files)? else { return Ok(Vec::new()) };
    let policy = LockPolicy::default();
    let mut locks = vec![hypervisor.lock_domain(&pool, &vm.name, &policy)?];
    if state != State::Absent {
        let mut macs: Vec<String> = vm.macs().into_iter().filter(|mac| !mac.is_empty()).collect();
        macs.sort();
        macs.dedup();
        for mac in macs {
            locks.push(hypervisor.lock_mac(&pool, &mac, &policy).map_err(Failure::at(Part::Networks))?);
        }
    }
    Ok(locks)
}

/// The domain as it is defined now, read once.
struct Current {
    /// Its inactive XML.
    xml: Option<String>,
    /// What that XML says.
    facts: Option<DomainFacts>,
    /// Its UUID.
    uuid: Option<String>,
    /// Its disks and what they stand on: a volume in there is its own, whoever made it.
    chains: Vec<String>,
}

impl Current {
    /// The fingerprint of the definition it was made from, from our metadata.
    fn spec_hash(&self) -> Option<&str> {
        self.facts.as_ref().and_then(|f| f.metadata.spec_hash.as_deref())
    }

    /// The volumes made for it, from our metadata.
    fn volumes(&self) -> &[String] {
        self.facts.as_ref().map_or(&[], |f| &f.metadata.volumes)
    }

    fn read(existing: Option<&Vm>, disks: &DiskUse) -> Result<Current, Error> {
        let xml = existing.map(|vm| vm.xml(true)).transpose()?;
        let facts = xml.as_deref().map(DomainFacts::parse).transpose()?;
        let uuid = existing.map(Vm::uuid).transpose()?;
        let chains = facts
            .iter()
            .flat_map(|facts| facts.disks.iter().filter_map(|d| d.file.as_deref()))
            .flat_map(|file| disks.chain(file))
            .collect();
        Ok(Current { xml, facts, uuid, chains })
    }
}

/// The XML to define, its fingerprint, the seed to upload, the volumes we own, and the disks and
/// MACs it defines.
struct Definition {
    xml: String,
    hash: String,
    seed: Option<Seed>,
    volumes: Vec<String>,
    /// Volumes this run created (not in check mode): removed again if the domain cannot be defined.
    created: Vec<String>,
    /// The size the existing root disk must have at least.
    grow_root: Option<u64>,
    /// Where the files of its disks come from, for messages.
    disk_part: fn(&Disk) -> Part,
    disks: Vec<Disk>,
    macs: Vec<String>,
}

/// The cloud-init seed volume to write.
struct Seed {
    name: String,
    path: String,
    content: Vec<u8>,
}

fn define_what(
    hypervisor: &Hypervisor,
    vm: &VmDefinition,
    current: &Current,
    disks: &DiskUse,
    check: bool,
    outcome: &mut Outcome,
) -> Result<Definition, Failure> {
    let mut volumes = current.volumes().to_vec();
    let own = |volumes: &mut Vec<String>, path: &str| {
        if !volumes.iter().any(|v| v == path) {
            volumes.push(path.to_string());
        }
    };
    let spec = match &vm.domain {
        DomainSource::Given { xml, facts, metadata } => {
            let hash = fingerprint(&[vm.name.as_bytes(), xml.as_bytes()]);
            let metadata =
                InstanceMetadata { spec_hash: Some(hash.clone()), volumes: volumes.clone(), ..(**metadata).clone() };
            let xml = reconcile_identity(xml, &vm.name, current.uuid.as_deref(), &metadata)
                .map_err(Failure::at(Part::Xml))?;
            return Ok(Definition {
                xml,
                hash,
                seed: None,
                volumes,
                created: Vec::new(),
                grow_root: None,
                disk_part: |_| Part::Xml,
                disks: facts.disks.clone(),
                macs: facts.nics.iter().map(|nic| nic.mac.clone()).collect(),
            });
        }
        DomainSource::Generated(spec) => spec,
    };
    let domain_type = match &vm.domain_type {
        Some(kind) => kind.clone(),
        None => hypervisor.preferred_domain_type()?.as_str().to_string(),
    };
    let tpm_model =
        offered_tpm_model(hypervisor, &DomainSpec { domain_type: domain_type.clone(), ..(**spec).clone() })?;
    let mut created = Vec::new();
    let mut grow_root = None;
    let mut root_disk = None;
    if let Some(root) = &vm.root_disk {
        let base = match &root.upload {
            Some(file) => {
                let file = ImageFile::open(file).map_err(Failure::at(Part::ImageUpload))?;
                let pool = root.image_pool.as_deref().unwrap_or(&vm.pool);
                let imported = hypervisor
                    .import_image(pool, &root.image, &file, disks, check)
                    .map_err(Failure::at(Part::ImageUpload))?;
                if imported.uploaded {
                    outcome.did(Action::ImageImported { image: imported.base.path.clone(), from: file.path.clone() });
                }
                imported.base
            }
            None => hypervisor.base_image(&root.image, root.image_pool.as_deref()).map_err(Failure::at(Part::Image))?,
        };
        let owned_path = format!("{}/{}", hypervisor.pool_path(&vm.pool)?, vm.root_volume());
        let owned = current.volumes().contains(&owned_path) || current.chains.contains(&owned_path);
        let clone = hypervisor
            .ensure_clone(&vm.pool, &vm.root_volume(), &base, root.size, root.mode, owned, check)
            .map_err(Failure::at(Part::RootDisk))?;
        // A disk made now has its size; one that existed may have to grow.
        if clone.created {
            outcome.did(Action::DiskCloned { path: clone.path.clone(), base: base.path.clone() });
            own(&mut volumes, &clone.path);
            if !check {
                created.push(clone.path.clone());
            }
        } else {
            grow_root = root.size;
        }
        root_disk = Some(clone.path);
    }
    let mut seed = None;
    if let Some(init) = &vm.cloud_init {
        let name = vm.seed_volume();
        let path = format!("{}/{name}", hypervisor.pool_path(&vm.pool)?);
        own(&mut volumes, &path);
        seed = Some(Seed { name, path, content: init.seed_iso() });
    }
    let completion =
        Completion { domain_type, tpm_model, root_disk, seed: seed.as_ref().map(|seed| seed.path.clone()) };
    let mut spec = complete(spec, completion);
    // The fingerprint covers what the user asked for, not the identity and metadata added below.
    let iso = seed.as_ref().map_or(&[][..], |seed| &seed.content);
    let hash = fingerprint(&[spec.to_xml()?.as_bytes(), iso]);
    spec.uuid = current.uuid.clone();
    spec.metadata.spec_hash = Some(hash.clone());
    spec.metadata.volumes = volumes.clone();
    let has_root = vm.root_disk.is_some();
    Ok(Definition {
        xml: spec.to_xml()?,
        hash,
        seed,
        volumes,
        created,
        grow_root,
        disk_part: if has_root { generated_part_with_root } else { generated_part },
        disks: spec_disks(&spec),
        macs: spec.nics.iter().map(|nic| nic.mac.clone()).collect(),
    })
}

/// For a spec with firmware other than BIOS or a TPM: checks the hypervisor offers it, and
/// returns the TPM model it offers.
fn offered_tpm_model(hypervisor: &Hypervisor, spec: &DomainSpec) -> Result<Option<String>, Failure> {
    if spec.firmware == Firmware::Bios && spec.tpm.is_none() {
        return Ok(None);
    }
    let offered = hypervisor.offered(spec)?;
    let firmware = if matches!(spec.firmware, Firmware::Loader(_)) { Part::Loader } else { Part::Firmware };
    offered.check_firmware(spec).map_err(Failure::at(firmware))?;
    match spec.tpm {
        Some(_) => offered.tpm_model(spec).map_err(Failure::at(Part::Tpm)),
        None => Ok(None),
    }
}

fn generated_part_with_root(disk: &Disk) -> Part {
    if disk.target == "vda" {
        Part::RootDisk
    } else {
        generated_part(disk)
    }
}

fn generated_part(disk: &Disk) -> Part {
    if disk.device == "cdrom" {
        Part::Seed
    } else {
        Part::Disks
    }
}

/// Keeps every disk on the top of its current chain: a redefinition after an external
/// snapshot keeps the overlay.
fn keep_current_tops(definition: &mut Definition, current: Option<&DomainFacts>, disks: &DiskUse) -> Result<(), Error> {
    let Some(current) = current else { return Ok(()) };
    let wanted = DomainFacts { disks: definition.disks.clone(), ..DomainFacts::default() };
    let tops = disks.current_tops(&wanted, current);
    if !tops.is_empty() {
        definition.xml = repoint_disks(&definition.xml, &tops)?;
        definition.disks = on_tops(&definition.disks, &tops);
    }
    Ok(())
}

/// Checks every disk the definition writes: none may be a file that another volume stands on
/// or another domain uses.
fn check_disks(
    hypervisor: &Hypervisor,
    vm: &VmDefinition,
    definition: &Definition,
    disks: &DiskUse,
) -> Result<(), Failure> {
    for disk in &definition.disks {
        let Some(file) = &disk.file else { continue };
        let part = (definition.disk_part)(disk);
        disks.check_writable(file, &vm.name).map_err(|error| Failure::DiskInUse {
            part,
            file: file.clone(),
            domain: vm.name.clone(),
            error,
        })?;
        // Attached as they are, so they must be there; a file outside every pool cannot be
        // looked up through the API and is left to libvirt.
        if part == Part::Disks
            && !hypervisor.volume_exists(file)?
            && hypervisor.pool_of_first_disk(std::slice::from_ref(file))?.is_some()
        {
            return Err(Failure::DiskMissing { file: file.clone() });
        }
    }
    Ok(())
}

/// Grows an existing root disk to the size asked for.
fn grow_root(
    hypervisor: &Hypervisor,
    definition: &Definition,
    check: bool,
    outcome: &mut Outcome,
) -> Result<(), Failure> {
    let root = definition.disks.iter().find(|d| d.target == "vda");
    if let (Some(size), Some(root)) = (definition.grow_root, root) {
        let file = root.file.as_deref().unwrap_or_default();
        if hypervisor.grow_volume(file, size, check).map_err(Failure::at(Part::RootSize))? {
            outcome.did(Action::DiskGrown(file.to_string()));
        }
    }
    Ok(())
}

fn set_power(
    hypervisor: &Hypervisor,
    vm: &Vm,
    request: &Request,
    check: bool,
    outcome: &mut Outcome,
) -> Result<(), Error> {
    let now = vm.power_state()?;
    match power_step(request.state, now) {
        step @ (PowerStep::Start | PowerStep::Resume) => {
            if !check {
                outcome.baseline = Some(LeaseBaseline::capture(hypervisor, vm)?);
                power_on(vm, step)?;
            }
            outcome.did(Action::Started);
        }
        PowerStep::KeepRunning => outcome.baseline = Some(LeaseBaseline::any()),
        PowerStep::Stop if check => outcome.did(Action::Stopped(None)),
        PowerStep::Stop => {
            let policy = StopPolicy { timeout: request.stop_timeout, ..StopPolicy::default() };
            let how = stop(vm, &policy)?;
            if how != StopOutcome::AlreadyOff {
                outcome.did(Action::Stopped(Some(how)));
            }
        }
        PowerStep::Nothing => {}
    }
    let power = if check { expected_power(request.state, now) } else { vm.power_state()? };
    outcome.state = Some(EndState::Defined(power));
    Ok(())
}

/// Starts or resumes `vm`, as `step` says; any other step does nothing.
pub fn power_on(vm: &Vm, step: PowerStep) -> Result<(), Error> {
    match step {
        PowerStep::Start => vm.start(),
        PowerStep::Resume => vm.resume(),
        _ => Ok(()),
    }
}

fn remove(
    hypervisor: &Hypervisor,
    existing: Option<Vm>,
    disks: &DiskUse,
    remove_storage: bool,
    check: bool,
    outcome: &mut Outcome,
) -> Result<(), Failure> {
    outcome.state = Some(EndState::Absent);
    let Some(vm) = existing else { return Ok(()) };
    let xml = vm.xml(true)?;
    let facts = DomainFacts::parse(&xml)?;
    outcome.uuid = Some(vm.uuid()?);
    outcome.macs = facts.nics.iter().map(|n| n.mac.clone()).collect();
    outcome.disks = facts.disks.iter().filter_map(|d| d.file.clone()).collect();
    outcome.diff = Some((xml, String::new()));
    if vm.power_state()? != PowerState::ShutOff {
        if !check {
            vm.destroy()?;
        }
        outcome.did(Action::ForcedOff);
    }
    if !check {
        hypervisor.undefine_vm(&vm)?;
    }
    outcome.did(Action::Undefined);
    for nic in &facts.nics {
        if let Some(network) = &nic.network {
            if !check && hypervisor.remove_reservation(network, &nic.mac)? {
                outcome.did(Action::ReservationRemoved { mac: nic.mac.clone(), network: network.clone() });
            }
        }
    }
    if remove_storage {
        remove_volumes(hypervisor, &facts, &facts.metadata.volumes, disks, check, outcome)?;
    }
    Ok(())
}

/// Deletes the volumes made for the domain (its clone and seed, the levels the backing-file
/// mode saved of them and its markers) and the snapshot overlays on top of them, tops first; a
/// shared base image is never among them, and a volume that something else still stands on is
/// kept.
fn remove_volumes(
    hypervisor: &Hypervisor,
    facts: &DomainFacts,
    owned: &[String],
    disks: &DiskUse,
    check: bool,
    outcome: &mut Outcome,
) -> Result<(), Error> {
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
        let standing: Vec<String> = disks.dependants(&path).iter().filter(|d| !gone.contains(d)).cloned().collect();
        if !standing.is_empty() {
            outcome.warnings.push(Warning::VolumeKept { path, dependants: standing });
            continue;
        }
        let existed = if check { hypervisor.volume_exists(&path)? } else { hypervisor.delete_volume(&path)? };
        if existed {
            outcome.did(Action::VolumeDeleted(path.clone()));
            gone.push(path);
        }
    }
    Ok(())
}
