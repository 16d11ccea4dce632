//! The decisions of provisioning that need no hypervisor: the domain spec completed with what
//! only the hypervisor and this run know, what a definition's disks and MACs are, and which
//! power step a VM needs.

use std::collections::HashMap;

use crate::domain_facts::Disk;
use crate::domain_xml::{DiskDevice, DomainSpec, Tpm};
use crate::vm::PowerState;

use super::request::State;

/// What a [`DomainSpec`] as parsed lacks until its hypervisor is known and its disks are made.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Completion {
    /// `kvm` or `qemu`.
    pub domain_type: String,
    /// The TPM model the hypervisor offers, for a spec that asks for a TPM.
    pub tpm_model: Option<String>,
    /// The file of the root disk cloned for the domain: its first disk, `vda`.
    pub root_disk: Option<String>,
    /// The file of its cloud-init seed: its last disk, a CD-ROM.
    pub seed: Option<String>,
}

/// `spec` with everything [`Completion`] adds: the one place a spec becomes definable.
pub fn complete(spec: &DomainSpec, completion: Completion) -> DomainSpec {
    let mut spec = spec.clone();
    spec.domain_type = completion.domain_type;
    if spec.tpm.is_some() {
        spec.tpm = Some(Tpm { model: completion.tpm_model });
    }
    if let Some(path) = completion.root_disk {
        spec.disks.insert(0, DiskDevice { path, format: "qcow2".into(), target: "vda".into(), cdrom: false });
    }
    if let Some(path) = completion.seed {
        spec.disks.push(DiskDevice { path, format: "raw".into(), target: "sda".into(), cdrom: true });
    }
    spec
}

/// The disks `spec` defines, as a read of its XML would give them.
pub fn spec_disks(spec: &DomainSpec) -> Vec<Disk> {
    spec.disks
        .iter()
        .map(|disk| Disk {
            device: if disk.cdrom { "cdrom" } else { "disk" }.to_string(),
            target: disk.target.clone(),
            format: Some(disk.format.clone()),
            file: Some(disk.path.clone()),
        })
        .collect()
}

/// `disks` with each target in `tops` moved to its file there (the top of its chain).
pub fn on_tops(disks: &[Disk], tops: &HashMap<String, String>) -> Vec<Disk> {
    disks
        .iter()
        .map(|disk| match tops.get(&disk.target) {
            Some(top) => Disk { file: Some(top.clone()), ..disk.clone() },
            None => disk.clone(),
        })
        .collect()
}

/// What to do about a defined domain's power.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PowerStep {
    /// Start it.
    Start,
    /// Resume it from pause.
    Resume,
    /// Leave it running; wait for it if asked, as it may be booting still.
    KeepRunning,
    /// Shut it down.
    Stop,
    /// Leave it as it is.
    Nothing,
}

/// The step that brings a domain that is `now` to `wanted`.
pub fn power_step(wanted: State, now: PowerState) -> PowerStep {
    match (wanted, now) {
        (State::Running, PowerState::Running) => PowerStep::KeepRunning,
        (State::Running, PowerState::Paused) => PowerStep::Resume,
        (State::Running, _) => PowerStep::Start,
        (State::Stopped, PowerState::ShutOff) => PowerStep::Nothing,
        (State::Stopped, _) => PowerStep::Stop,
        (State::Present | State::Absent, _) => PowerStep::Nothing,
    }
}

/// The power state check mode reports for a domain that is `now` and should be `wanted`.
pub fn expected_power(wanted: State, now: PowerState) -> PowerState {
    match wanted {
        State::Running => PowerState::Running,
        State::Stopped => PowerState::ShutOff,
        State::Present | State::Absent => now,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain_xml::NicDevice;

    fn spec() -> DomainSpec {
        DomainSpec {
            name: "web1".into(),
            tpm: Some(Tpm::default()),
            disks: vec![DiskDevice {
                path: "/data/web1-data.img".into(),
                format: "raw".into(),
                target: "vdb".into(),
                cdrom: false,
            }],
            nics: vec![NicDevice { source: crate::domain_xml::NicSource::User, mac: "52:54:00:00:00:01".into() }],
            ..DomainSpec::default()
        }
    }

    #[test]
    fn completion_adds_the_root_disk_first_and_the_seed_last() {
        let completion = Completion {
            domain_type: "qemu".into(),
            tpm_model: Some("tpm-crb".into()),
            root_disk: Some("/pool/web1.qcow2".into()),
            seed: Some("/pool/web1-seed.iso".into()),
        };
        let done = complete(&spec(), completion);
        assert_eq!(done.domain_type, "qemu");
        assert_eq!(done.tpm, Some(Tpm { model: Some("tpm-crb".into()) }));
        let targets: Vec<(&str, &str, bool)> =
            done.disks.iter().map(|d| (d.target.as_str(), d.path.as_str(), d.cdrom)).collect();
        assert_eq!(
            targets,
            [
                ("vda", "/pool/web1.qcow2", false),
                ("vdb", "/data/web1-data.img", false),
                ("sda", "/pool/web1-seed.iso", true)
            ]
        );
        assert_eq!(done.disks[0].format, "qcow2");
        assert_eq!(done.disks[2].format, "raw");
    }

    #[test]
    fn completion_adds_no_tpm_nobody_asked_for() {
        let without = DomainSpec { tpm: None, ..spec() };
        let done = complete(&without, Completion { tpm_model: Some("tpm-crb".into()), ..Completion::default() });
        assert_eq!(done.tpm, None);
        assert_eq!(done.disks, without.disks);
    }

    #[test]
    fn disks_come_from_the_spec_as_its_xml_reads() {
        let done = complete(&spec(), Completion { seed: Some("/pool/web1-seed.iso".into()), ..Completion::default() });
        let disks = spec_disks(&done);
        let xml = done.to_xml().unwrap();
        assert_eq!(disks, crate::domain_facts::DomainFacts::parse(&xml).unwrap().disks);
        assert_eq!(disks[1].device, "cdrom");
    }

    #[test]
    fn disks_move_to_the_tops_of_their_chains() {
        let disks = spec_disks(&spec());
        let tops = HashMap::from([("vdb".to_string(), "/data/web1-vdb.snap1".to_string())]);
        assert_eq!(on_tops(&disks, &tops)[0].file.as_deref(), Some("/data/web1-vdb.snap1"));
        assert_eq!(on_tops(&disks, &HashMap::new()), disks);
    }

    #[test]
    fn power_steps_for_each_wanted_and_current_state() {
        use PowerState::*;
        let table = [
            (State::Running, Running, PowerStep::KeepRunning),
            (State::Running, Paused, PowerStep::Resume),
            (State::Running, ShutOff, PowerStep::Start),
            (State::Running, Suspended, PowerStep::Start),
            (State::Stopped, ShutOff, PowerStep::Nothing),
            (State::Stopped, Running, PowerStep::Stop),
            (State::Stopped, Paused, PowerStep::Stop),
            (State::Present, Running, PowerStep::Nothing),
            (State::Present, ShutOff, PowerStep::Nothing),
        ];
        for (wanted, now, step) in table {
            assert_eq!(power_step(wanted, now), step, "{wanted:?} from {now:?}");
        }
    }

    #[test]
    fn check_mode_reports_the_state_asked_for() {
        assert_eq!(expected_power(State::Running, PowerState::ShutOff), PowerState::Running);
        assert_eq!(expected_power(State::Stopped, PowerState::Running), PowerState::ShutOff);
        assert_eq!(expected_power(State::Present, PowerState::Paused), PowerState::Paused);
    }
}
