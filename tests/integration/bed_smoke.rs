use std::time::{Duration, Instant};

use bed::Bed;
use virtfarm_libvirt::{power, wait, Hypervisor, PowerState};

/// One guest from a linked clone: a fresh DHCP lease seen through libvirt, the guest agent,
/// Python over SSH from inside the namespace, then a graceful shutdown.
#[test]
#[ignore = "needs the test bed: cargo xtask test"]
fn a_linked_clone_boots_leases_answers_and_shuts_down() {
    let bed = Bed::get();
    let name = bed.unique_name("bed");
    let started = Instant::now();
    let guest = bed.boot_vm(&name);
    let hypervisor = Hypervisor::open(&bed.uri).expect("connect");
    let vm = hypervisor.vm(&guest.name).expect("domain defined");

    let ip = guest.wait_ip(Duration::from_secs(300));
    let leased_at = started.elapsed();
    let nic = vm.facts().expect("domain XML").nics.remove(0);
    let leases = hypervisor.network_leases(&bed.network).expect("leases of the bed network");
    let lease = virtfarm_libvirt::leases::current_lease(&leases, &nic.mac, wait::unix_now()).expect("a current lease");
    assert_eq!(lease.ip, ip);
    assert!(ip.starts_with("10.77.0."), "{ip} is on the bed network");

    let agent_ready = wait::Readiness { signal: wait::Signal::Agent, timeout: Duration::from_secs(120) };
    wait::wait_ready(&hypervisor, &vm, &wait::LeaseBaseline::any(), agent_ready).expect("the guest agent answers");
    // SSH goes through `bed.ssh`, from inside the namespace: this process is outside it.
    let python = bed.ssh_until_ok(&ip, "python3 --version", Duration::from_secs(120));
    assert!(python.starts_with("Python 3."), "{python}");
    let reachable_at = started.elapsed();

    let outcome = power::stop(&vm, &power::StopPolicy { timeout: Duration::from_secs(90), ..Default::default() })
        .expect("stop the guest");
    assert!(matches!(outcome, power::StopOutcome::Graceful(_)), "shutdown was {outcome:?}");
    assert_eq!(vm.power_state().expect("state"), PowerState::ShutOff);
    eprintln!(
        "bed smoke: lease after {:.1} s, python over ssh after {:.1} s, shutdown {outcome:?}",
        leased_at.as_secs_f64(),
        reachable_at.as_secs_f64()
    );
}
