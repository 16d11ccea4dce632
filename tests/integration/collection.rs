use std::collections::BTreeSet;

use bed::Bed;
use serde_json::{json, Value};

/// The modules the collection ships.
const MODULES: &[&str] = &["kvm_provision", "snapshot_libvirt", "guest_provision", "libvirt_ping"];

/// Arguments that pass each module's required and conditional checks: like AnsibleModule,
/// a module names unknown options only when nothing else is wrong.
fn valid_args(module: &str) -> Value {
    match module {
        "snapshot_libvirt" => json!({ "name": "x", "state": "list" }),
        "guest_provision" => json!({ "state": "phases", "lookup_dir": "/nonexistent" }),
        // Its own rules run beside the spec's errors too: without a VM they would add theirs.
        "kvm_provision" => json!({ "name": "x", "image": "base" }),
        _ => json!({}),
    }
}

/// Every module of the installed collection renders with ansible-doc, and its documented
/// options are exactly the options the binary accepts (the binary names them when it rejects
/// an unknown one, with Ansible's wording).
#[test]
#[ignore = "needs the test bed: cargo xtask test"]
fn every_module_is_documented_with_exactly_the_options_it_accepts() {
    let bed = Bed::get();
    for module in MODULES {
        let fqcn = format!("virtfarm.libvirt.{module}");
        let doc = bed.ansible("ansible-doc", &["-t", "module", "--json", &fqcn]);
        assert!(doc.success, "ansible-doc {fqcn}: {}", doc.stderr);
        let doc = doc.json();
        let documented: BTreeSet<String> =
            doc[&fqcn]["doc"]["options"].as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default();
        assert!(!doc[&fqcn]["examples"].as_str().unwrap_or("").is_empty(), "{fqcn} has examples");
        assert!(doc[&fqcn]["return"].is_object(), "{fqcn} documents its return values");

        let installed = bed.collections_path.join("ansible_collections/virtfarm/libvirt/plugins/modules").join(module);
        let mut probe = valid_args(module);
        probe["no_such_option_"] = json!(1);
        let result = bed.run_program(&installed, probe);
        assert_eq!(result["failed"], true, "{module}: {result}");
        let msg = result["msg"].as_str().unwrap_or_default();
        let expected_head =
            format!("Unsupported parameters for ({module}) module: no_such_option_. Supported parameters include: ");
        let supported = msg.strip_prefix(&expected_head).unwrap_or_else(|| panic!("{module}: {msg}"));
        // Ansible's form: the options, then every alias in one parenthesised group.
        let supported = supported.trim_end_matches('.');
        let options = match supported.rfind(" (") {
            Some(at) if supported.ends_with(')') => &supported[..at],
            _ => supported,
        };
        let accepted: BTreeSet<String> = options.split(", ").map(str::to_string).collect();
        assert_eq!(documented, accepted, "{module}: documented options vs accepted options");
    }
}

/// Ad-hoc use with string arguments, as `ansible -m ... -a k=v` sends them; a panic still
/// gives Ansible a failed JSON result.
#[test]
#[ignore = "needs the test bed: cargo xtask test"]
fn ad_hoc_ping_coerces_strings_and_reports_panics_as_failures() {
    let bed = Bed::get();
    let adhoc = |args: &str| -> Value {
        let run = bed.ansible(
            "ansible",
            &["localhost", "-c", "local", "-i", "localhost,", "-m", "virtfarm.libvirt.libvirt_ping", "-a", args],
        );
        let doc = run.json();
        doc["plays"][0]["tasks"][0]["hosts"]["localhost"].clone()
    };
    let pong = adhoc("data=hello");
    assert_eq!(pong["ping"], "hello", "{pong}");
    assert_eq!(pong["changed"], false);

    let with_libvirt = adhoc(&format!("uri={}", bed.uri));
    assert_eq!(
        with_libvirt["libvirt"]["domain_type"].as_str().map(|t| t == "kvm" || t == "qemu"),
        Some(true),
        "{with_libvirt}"
    );

    let crash = adhoc("data=crash");
    assert_eq!(crash["failed"], true, "{crash}");
    assert!(crash["msg"].as_str().unwrap_or_default().contains("panicked"), "{crash}");

    let unknown = adhoc("data=x colour=blue");
    assert_eq!(unknown["failed"], true);
    assert!(unknown["msg"].as_str().unwrap_or_default().contains("colour"), "{unknown}");
}

/// `ansible-test sanity` on the collection as installed from its tarball, with only the
/// validate-modules skips that binary modules need (tests/sanity/ignore-2.19.txt).
#[test]
#[ignore = "needs the test bed: cargo xtask test"]
fn ansible_test_sanity_passes() {
    let bed = Bed::get();
    let installed = bed.collections_path.join("ansible_collections/virtfarm/libvirt");
    let ignores =
        std::fs::read_to_string(installed.join("tests/sanity/ignore-2.19.txt")).expect("the ignore file ships");
    assert!(ignores.lines().all(|l| l.ends_with(" validate-modules!skip")), "only binary-module skips: {ignores}");
    // ansible-test lists a collection's files with git when it lies in a work tree: the
    // installed one does (under target/, ignored), and so it would test nothing. A copy outside.
    let scratch = bed::tempdir();
    let copy = scratch.join("ansible_collections/virtfarm/libvirt");
    bed::copy_tree(&installed, &copy);
    let output = std::process::Command::new(bed.venv.join("bin/ansible-test"))
        .args(["sanity", "--python", "3.11", "--requirements", "--color", "no"])
        .current_dir(&copy)
        .output()
        .expect("run ansible-test");
    let _ = std::fs::remove_dir_all(&scratch);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let errors: Vec<&str> = stdout.lines().chain(stderr.lines()).filter(|l| l.starts_with("ERROR")).collect();
    assert!(output.status.success(), "ansible-test sanity failed:\n{}\n{stderr}", errors.join("\n"));
    let said = format!("{stdout}{stderr}");
    assert!(!said.contains("All targets skipped"), "ansible-test found nothing to test:\n{said}");
    for test in ["validate-modules", "changelog", "yamllint", "pylint"] {
        assert!(said.contains(&format!("Running sanity test \"{test}\"")), "{test} did not run:\n{said}");
    }
}

/// `ansible-lint` with the production profile on the collection as installed from its tarball:
/// its own .ansible-lint, and .ansible-lint-ignore naming only the variables kept for the roles
/// these replace and the sanity skips of the binary modules.
#[test]
#[ignore = "needs the test bed: cargo xtask test"]
fn ansible_lint_production_profile_passes() {
    let bed = Bed::get();
    let installed = bed.collections_path.join("ansible_collections/virtfarm/libvirt");
    let output = std::process::Command::new(bed.venv.join("bin/ansible-lint"))
        .args(["--offline", "--nocolor", "--profile", "production", "-f", "pep8"])
        .current_dir(&installed)
        .env("ANSIBLE_COLLECTIONS_PATH", &bed.collections_path)
        .env("PATH", format!("{}:{}", bed.venv.join("bin").display(), std::env::var("PATH").unwrap_or_default()))
        .output()
        .expect("run ansible-lint from the venv (tests/requirements.txt)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "ansible-lint failed:\n{stdout}\n{stderr}");
}

/// The EXAMPLES of every module are tasks Ansible accepts: each module's examples, as the
/// task list of a play, pass `ansible-playbook --syntax-check` against the installed collection.
#[test]
#[ignore = "needs the test bed: cargo xtask test"]
fn every_modules_examples_are_valid_tasks() {
    let bed = Bed::get();
    let dir = bed::tempdir();
    for module in MODULES {
        let fqcn = format!("virtfarm.libvirt.{module}");
        let doc = bed.ansible("ansible-doc", &["-t", "module", "--json", &fqcn]).json();
        let examples = doc[&fqcn]["examples"].as_str().unwrap_or_default();
        assert!(examples.contains(&fqcn), "{fqcn}: the examples use the module by its FQCN");
        let indented: String = examples.lines().map(|l| format!("    {l}\n")).collect();
        let playbook = dir.join(format!("{module}.yml"));
        std::fs::write(&playbook, format!("- hosts: localhost\n  gather_facts: false\n  tasks:\n{indented}"))
            .expect("write");
        let check =
            bed.ansible("ansible-playbook", &["--syntax-check", "-i", "localhost,", playbook.to_str().expect("UTF-8")]);
        assert!(check.success, "{fqcn} examples:\n{}\n{}", check.stdout, check.stderr);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every role of the installed collection renders with ansible-doc, its argument spec has every
/// variable of its defaults, and its README names every option of the spec.
#[test]
#[ignore = "needs the test bed: cargo xtask test"]
fn every_role_documents_every_variable() {
    let bed = Bed::get();
    let roles = bed.collections_path.join("ansible_collections/virtfarm/libvirt/roles");
    for role in ["guest_provision", "kvm_provision", "snapshot_libvirt"] {
        let fqcn = format!("virtfarm.libvirt.{role}");
        let doc = bed.ansible("ansible-doc", &["-t", "role", "--json", &fqcn]);
        assert!(doc.success, "ansible-doc -t role {fqcn}: {}", doc.stderr);
        let doc = doc.json();
        let options: BTreeSet<String> = doc[&fqcn]["entry_points"]["main"]["options"]
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default();
        let defaults = std::fs::read_to_string(roles.join(role).join("defaults/main.yml")).expect("defaults");
        // Top-level keys: the variables a role's defaults set.
        let variables = defaults.lines().filter_map(|line| line.split_once(':')).map(|(key, _)| key);
        for variable in
            variables.filter(|key| !key.is_empty() && key.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
        {
            assert!(
                options.contains(variable),
                "{role}: {variable} is in defaults/main.yml but not in the argument spec"
            );
        }
        let readme = std::fs::read_to_string(roles.join(role).join("README.md")).expect("the role's README");
        for option in &options {
            assert!(readme.contains(&format!("`{option}`")), "{role}: README.md does not list {option}");
        }
    }
}
