//! One module run, from the argument JSON to the reply JSON, without any
//! I/O so that it can be tested (and so modules can test their bodies).

use std::cell::RefCell;
use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{json, Map, Value};

use crate::coerce::{coerce, python_type};
use crate::error::{ArgumentErrors, Error};
use crate::no_log::NoLogValues;
use crate::params::Params;
use crate::response::{Deprecation, Response};
use crate::spec::{ArgSpec, Removal, Type};
use crate::validate::validate;

/// How the task runs, from the `_ansible_*` keys the controller adds to the
/// arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Context {
    /// `_ansible_module_name`, or the program's name.
    pub module_name: String,
    /// `_ansible_check_mode`: report what would change, change nothing.
    pub check_mode: bool,
    /// `_ansible_diff`: the user asked for diffs.
    pub diff: bool,
    /// `_ansible_no_log`: the task is `no_log` (the controller hides the result).
    pub no_log: bool,
    /// `_ansible_verbosity`: the number of `-v`.
    pub verbosity: u32,
    /// `_ansible_tmpdir`: a directory the controller removes after the task.
    pub tmpdir: Option<PathBuf>,
}

impl Context {
    /// Takes every `_ansible_*` key out of `args`. Unknown ones, which newer
    /// controllers add, are dropped rather than rejected.
    fn take_from(args: &mut Map<String, Value>) -> Context {
        let mut internal = Map::new();
        args.retain(|key, value| match key.strip_prefix("_ansible_") {
            Some(name) => {
                internal.insert(name.to_string(), value.take());
                false
            }
            None => true,
        });
        let converted = |key: &str, wanted| internal.get(key).and_then(|value| coerce(value.clone(), wanted).ok());
        let flag = |key| converted(key, Type::Bool) == Some(Value::Bool(true));
        let text = |key| internal.get(key).and_then(Value::as_str).filter(|text| !text.is_empty());
        Context {
            module_name: text("module_name").map_or_else(program_name, str::to_string),
            check_mode: flag("check_mode"),
            diff: flag("diff"),
            no_log: flag("no_log"),
            verbosity: converted("verbosity", Type::Int)
                .and_then(|verbosity| verbosity.as_u64())
                .map_or(0, |verbosity| u32::try_from(verbosity).unwrap_or(u32::MAX)),
            tmpdir: text("tmpdir").map(PathBuf::from),
        }
    }
}

fn program_name() -> String {
    std::env::args_os()
        .next()
        .as_deref()
        .map(Path::new)
        .and_then(Path::file_stem)
        .map_or_else(|| "module".to_string(), |stem| stem.to_string_lossy().into_owned())
}

/// What a module body gets: the validated parameters, the task's context,
/// and a place for warnings and deprecations (sent with any result,
/// failures included, as with `AnsibleModule.warn`).
#[derive(Debug)]
pub struct Module {
    params: Params,
    context: Context,
    warnings: RefCell<Vec<String>>,
    deprecations: RefCell<Vec<Deprecation>>,
    pub(crate) no_log: NoLogValues,
}

impl Module {
    /// The validated parameters.
    pub fn params(&self) -> &Params {
        &self.params
    }

    /// How the task runs.
    pub fn context(&self) -> &Context {
        &self.context
    }

    /// Adds a warning, shown by the controller after the task.
    pub fn warn(&self, msg: impl Into<String>) {
        self.warnings.borrow_mut().push(msg.into());
    }

    /// Adds a deprecation notice.
    pub fn deprecate(&self, msg: impl Into<String>, removal: Removal) {
        self.deprecations.borrow_mut().push(Deprecation::new(msg.into(), removal));
    }

    fn reply(self, response: Response) -> Value {
        let mut reply = response.into_fields();
        reply.insert("invocation".to_string(), invocation(self.params.as_value().clone()));
        let warnings = self.warnings.into_inner();
        if !warnings.is_empty() {
            reply.insert("warnings".to_string(), json!(warnings));
        }
        let deprecations = self.deprecations.into_inner();
        if !deprecations.is_empty() {
            let deprecations = deprecations.iter().map(Deprecation::to_json).collect();
            reply.insert("deprecations".to_string(), Value::Array(deprecations));
        }
        sealed(reply, &self.no_log)
    }
}

fn invocation(module_args: Value) -> Value {
    json!({ "module_args": module_args })
}

fn sealed(reply: Map<String, Value>, no_log: &NoLogValues) -> Value {
    let mut reply = Value::Object(reply);
    no_log.scrub(&mut reply);
    reply
}

/// The failed reply for an error met before the arguments could be read.
pub(crate) fn failure(error: &Error) -> Value {
    Value::Object(Response::fail(error.to_string()).into_fields())
}

/// Runs one module invocation on `args` (the JSON Ansible sends, flat or
/// wrapped in `ANSIBLE_MODULE_ARGS`) and returns the reply to print.
///
/// Validation failures (every one found, as [`ArgumentErrors`] reports
/// them), check mode on a module that does not support it,
/// and errors from `body` (shown with `{:#}`, so an `anyhow` chain is kept)
/// all become replies; `no_log` values never appear in the reply.
pub fn execute<E: Display>(spec: &ArgSpec, args: Value, body: impl FnOnce(&Module) -> Result<Response, E>) -> Value {
    execute_parsed(spec, args, |_| Ok(()), |module, ()| body(module))
}

/// [`execute`] for a module with rules of its own: `parse`, the module's
/// second stage, turns the parameters into what `body` acts on, or names
/// every problem its rules find.
///
/// `parse` runs even when the spec refused some values, on the others: a
/// refused option has no value, counts as set, and its getters give the
/// spec's message again, which the reply does not repeat. So one failed
/// result names the spec's errors and then the rules' (a rule cannot say
/// that a refused value is missing), and `body` runs only when there are none.
///
/// ```
/// use ansible_module::{ArgSpec, ArgumentErrors, Opt, Response};
/// use serde_json::json;
///
/// let spec = ArgSpec::new([Opt::str("state").choices(&["running", "shutoff"]), Opt::int("vcpus")]);
/// let reply = ansible_module::execute_parsed(
///     &spec,
///     json!({"state": "on", "vcpus": 0}),
///     |module| {
///         ArgumentErrors::collect(|errors| {
///             let state = errors.check(module.params().opt_str("state"));
///             let vcpus = errors.check(module.params().int("vcpus"))?;
///             if vcpus < 1 {
///                 errors.push("vcpus: at least 1");
///             }
///             Some((state?.map(str::to_string), vcpus))
///         })
///     },
///     |_, (_state, vcpus)| Ok::<_, String>(Response::new().with("vcpus", vcpus)),
/// );
/// let spec_error = "value of state must be one of: running, shutoff, got: on";
/// assert_eq!(reply["argument_errors"], json!([spec_error, "vcpus: at least 1"]));
/// ```
///
/// What `parse` returns may not borrow from the module: it owns its values.
pub fn execute_parsed<T, E: Display>(
    spec: &ArgSpec,
    args: Value,
    parse: impl FnOnce(&Module) -> Result<T, ArgumentErrors>,
    body: impl FnOnce(&Module, T) -> Result<Response, E>,
) -> Value {
    let (args, context) = match split_internal(args) {
        Ok(split) => split,
        Err(error) => return failure(&error),
    };
    let mut no_log = NoLogValues::default();
    no_log.add_from(spec, &args);
    let (validated, mut errors) = validate(spec, &args, &context.module_name);
    // Conversion can make new text from a secret (an expanded path).
    no_log.add_from(spec, &validated.params);
    let module = Module {
        params: Params::new(validated.params, String::new(), Arc::new(validated.refused)),
        context,
        warnings: RefCell::new(validated.warnings),
        deprecations: RefCell::new(validated.deprecations),
        no_log,
    };
    let spec_refused = !errors.is_empty();
    let parsed = parse(&module).map_err(|own| errors.extend(own)).ok();
    if spec_refused {
        // What the user gave, since the parameters lack what was refused.
        let mut reply = errors.to_response().into_fields();
        reply.insert("invocation".to_string(), invocation(Value::Object(args)));
        return sealed(reply, &module.no_log);
    }
    let Some(parsed) = parsed.filter(|_| errors.is_empty()) else {
        return module.reply(errors.to_response());
    };
    let response = if module.context.check_mode && !spec.supports_check_mode {
        let msg = format!("remote module ({}) does not support check mode", module.context.module_name);
        Response::new().with("skipped", true).msg(msg)
    } else {
        body(&module, parsed).unwrap_or_else(|error| Response::fail(format!("{error:#}")))
    };
    module.reply(response)
}

/// Unwraps `ANSIBLE_MODULE_ARGS` if present and separates the user's
/// arguments from the controller's `_ansible_*` keys.
fn split_internal(args: Value) -> Result<(Map<String, Value>, Context), Error> {
    let mut args = match args {
        Value::Object(mut outer) => match outer.remove("ANSIBLE_MODULE_ARGS") {
            Some(Value::Object(inner)) => inner,
            Some(other) => return Err(Error::ArgsNotAnObject { found: python_type(&other) }),
            None => outer,
        },
        other => return Err(Error::ArgsNotAnObject { found: python_type(&other) }),
    };
    let context = Context::take_from(&mut args);
    Ok((args, context))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::no_log::MASK;
    use crate::spec::Opt;

    fn spec() -> ArgSpec {
        ArgSpec::new([
            Opt::str("name").required().aliases(&["vm_name"]),
            Opt::int("memory").default(1024),
            Opt::str("password").no_log(),
        ])
    }

    fn args(extra: Value) -> Value {
        let mut args = json!({"_ansible_module_name": "virtfarm.kvm.kvm_provision", "name": "web01"});
        if let (Some(args), Value::Object(extra)) = (args.as_object_mut(), extra) {
            args.extend(extra);
        }
        args
    }

    /// A body that reports what it was given.
    fn echo(module: &Module) -> Result<Response, Error> {
        let params = module.params();
        Ok(Response::new()
            .changed(true)
            .with("name", params.str("name")?)
            .with("memory", params.int("memory")?)
            .with("check_mode", module.context().check_mode))
    }

    #[test]
    fn success_reply_has_result_and_invocation() {
        assert_eq!(
            execute(&spec(), args(json!({"memory": "2048"})), echo),
            json!({
                "changed": true,
                "name": "web01",
                "memory": 2048,
                "check_mode": false,
                "invocation": {"module_args": {"name": "web01", "memory": 2048, "password": null}},
            })
        );
    }

    #[test]
    fn wrapped_module_args_are_accepted() {
        let wrapped = json!({"ANSIBLE_MODULE_ARGS": args(json!({}))});
        assert_eq!(execute(&spec(), wrapped, echo)["name"], "web01");
        assert_eq!(
            execute(&spec(), json!({"ANSIBLE_MODULE_ARGS": "name=x"}), echo),
            json!({"failed": true, "msg": "module arguments must be a JSON object, got <class 'str'>"})
        );
    }

    #[test]
    fn arguments_must_be_an_object() {
        assert_eq!(
            execute(&spec(), json!(["name"]), echo),
            json!({"failed": true, "msg": "module arguments must be a JSON object, got <class 'list'>"})
        );
    }

    #[test]
    fn internal_keys_fill_the_context_and_unknown_ones_are_ignored() {
        let internal = json!({
            "_ansible_check_mode": false, "_ansible_diff": true, "_ansible_no_log": "yes",
            "_ansible_verbosity": 3, "_ansible_tmpdir": "/tmp/ansible-tmp-1", "_ansible_debug": false,
            "_ansible_version": "2.18.1", "_ansible_remote_tmp": "~/.ansible/tmp",
            "_ansible_selinux_special_fs": ["nfs"], "_ansible_tracebacks_for": [],
            "_ansible_some_future_key": {"x": 1},
        });
        let reply = execute(&spec(), args(internal), |module: &Module| {
            Ok::<_, Error>(Response::new().with("context", format!("{:?}", module.context())))
        });
        assert_eq!(
            reply["context"],
            "Context { module_name: \"virtfarm.kvm.kvm_provision\", check_mode: false, diff: true, \
             no_log: true, verbosity: 3, tmpdir: Some(\"/tmp/ansible-tmp-1\") }"
        );
        assert!(reply.get("failed").is_none());
    }

    #[test]
    fn unknown_user_keys_are_rejected() {
        let reply = execute(&spec(), args(json!({"memroy": 1})), echo);
        assert_eq!(
            reply["msg"],
            "Unsupported parameters for (virtfarm.kvm.kvm_provision) module: memroy. \
             Supported parameters include: memory, name, password (vm_name)."
        );
        assert_eq!(reply["failed"], true);
        assert_eq!(reply["invocation"]["module_args"], json!({"name": "web01", "memroy": 1}));
    }

    #[test]
    fn check_mode_skips_modules_that_do_not_support_it() {
        let reply =
            execute(&spec(), args(json!({"_ansible_check_mode": true})), |_: &Module| -> Result<Response, Error> {
                panic!("the body must not run in check mode")
            });
        assert_eq!(reply["skipped"], true);
        assert_eq!(reply["changed"], false);
        assert_eq!(reply["msg"], "remote module (virtfarm.kvm.kvm_provision) does not support check mode");

        let supported = spec().supports_check_mode();
        let reply = execute(&supported, args(json!({"_ansible_check_mode": true})), echo);
        assert_eq!(reply["check_mode"], true);
        assert!(reply.get("skipped").is_none());
    }

    #[test]
    fn validation_fails_even_in_check_mode() {
        let reply = execute(&spec(), json!({"_ansible_check_mode": true}), echo);
        assert_eq!(reply["msg"], "missing required arguments: name");
    }

    #[test]
    fn body_errors_become_failures_with_warnings_kept() {
        let reply = execute(&spec(), args(json!({})), |module: &Module| -> Result<Response, String> {
            module.warn("libvirt is old");
            module.deprecate("memory in KiB", Removal::version("3.0.0", "virtfarm.kvm"));
            Err("cannot connect to qemu:///system".to_string())
        });
        assert_eq!(
            reply,
            json!({
                "failed": true,
                "msg": "cannot connect to qemu:///system",
                "warnings": ["libvirt is old"],
                "deprecations": [{"msg": "memory in KiB", "version": "3.0.0", "collection_name": "virtfarm.kvm"}],
                "invocation": {"module_args": {"name": "web01", "memory": 1024, "password": null}},
            })
        );
    }

    #[test]
    fn failures_can_carry_extra_keys() {
        let reply = execute(&spec(), args(json!({})), |_: &Module| {
            Ok::<_, Error>(Response::fail("virsh failed").with("rc", 1).with("stderr", "denied"))
        });
        assert_eq!((&reply["failed"], &reply["rc"], &reply["stderr"]), (&json!(true), &json!(1), &json!("denied")));
    }

    #[test]
    fn validation_warnings_reach_the_reply() {
        let reply = execute(&spec(), args(json!({"vm_name": "other"})), echo);
        assert_eq!(reply["warnings"], json!(["Both option name and its alias vm_name are set."]));
        assert_eq!(reply["name"], "other");
    }

    #[test]
    fn no_log_values_never_reach_the_reply() {
        let reply = execute(&spec(), args(json!({"password": "s3cr3t!"})), |module: &Module| {
            let password = module.params().str("password")?;
            module.warn(format!("password {password} is weak"));
            Ok::<_, Error>(
                Response::new()
                    .msg(format!("logged in with {password}"))
                    .with("echo", password)
                    .with("nested", json!({"list": [format!("<{password}>")]})),
            )
        });
        assert_eq!(reply["invocation"]["module_args"]["password"], MASK);
        assert_eq!(reply["msg"], "logged in with ********");
        assert_eq!(reply["warnings"], json!(["password ******** is weak"]));
        assert_eq!(reply["echo"], MASK);
        assert_eq!(reply["nested"], json!({"list": ["<********>"]}));
        assert!(!reply.to_string().contains("s3cr3t!"));
    }

    #[test]
    fn every_validation_error_is_reported_listed_and_masked() {
        let args = json!({
            "_ansible_module_name": "virtfarm.kvm.kvm_provision",
            "memroy": 1, "memory": "s3cr3t!x", "password": "s3cr3t!x",
        });
        let reply = execute(&spec(), args, echo);
        let errors = [
            "Unsupported parameters for (virtfarm.kvm.kvm_provision) module: memroy. \
             Supported parameters include: memory, name, password (vm_name).",
            "missing required arguments: name",
            "argument 'memory' is of type <class 'str'> and we were unable to convert to int: \
             \"'********'\" cannot be converted to an int",
        ];
        assert_eq!(reply["failed"], true);
        assert_eq!(reply["argument_errors"], json!(errors));
        assert_eq!(reply["msg"], errors.join("; "));
        assert!(!reply.to_string().contains("s3cr3t!x"), "{reply}");
    }

    #[test]
    fn no_log_values_are_scrubbed_from_validation_failures() {
        let spec = ArgSpec::new([Opt::str("token").no_log().choices(&["a", "b"])]);
        let reply = execute(&spec, json!({"token": "hunter2"}), echo);
        assert_eq!(reply["msg"], "value of token must be one of: a, b, got: ********");
        assert_eq!(reply["invocation"]["module_args"]["token"], MASK);
    }

    #[test]
    fn secret_keys_in_free_form_values_are_masked_everywhere() {
        let spec = ArgSpec::new([
            Opt::str("name"),
            Opt::list("vms").secret_keys(|key| matches!(key, "password_hash" | "user_data")),
        ]);
        let args = json!({"name": "web01", "vms": [
            {"name": "a", "cloud_init": {"password_hash": "$6$rounds$abcdef", "user_data": "#cloud-config\nusers: []"}},
        ]});
        let reply = execute(&spec, args.clone(), |module: &Module| {
            let vms = module.params().get("vms").cloned().unwrap_or_default();
            module.warn(format!("saw {vms}"));
            Ok::<_, Error>(Response::fail(format!("bad hash {}", vms[0]["cloud_init"]["password_hash"])))
        });
        let sent = &reply["invocation"]["module_args"]["vms"][0]["cloud_init"];
        assert_eq!(sent["password_hash"], MASK);
        assert_eq!(sent["user_data"], MASK);
        let text = reply.to_string();
        assert!(!text.contains("$6$rounds$abcdef") && !text.contains("users: []"), "{text}");

        let unknown = execute(&spec, with_unknown(args), echo);
        assert!(!unknown.to_string().contains("$6$rounds$abcdef"), "{unknown}");
    }

    /// A module's own rules over [`own_spec`]: what they would find, were the values valid.
    fn own_rules(module: &Module) -> Result<Vec<String>, ArgumentErrors> {
        ArgumentErrors::collect(|errors| {
            let params = module.params();
            let name = errors.check(params.str("name"));
            if name.is_some_and(|name| name.contains(' ')) {
                errors.push("name: no spaces");
            }
            let state = errors.check(params.opt_str("state"));
            if !params.is_set("image") && !params.is_set("disks") {
                errors.push("image: required unless disks are given");
            }
            let mut paths = Vec::new();
            for disk in errors.check(params.dicts("disks")).unwrap_or_default() {
                if errors.check(disk.str("path")).is_some_and(|path| !path.starts_with('/')) {
                    errors.push(format!("{}: not absolute", disk.name_of("path")));
                }
                if errors.check(disk.int("size")).is_some_and(|size| size < 1) {
                    errors.push(format!("{}: at least 1", disk.name_of("size")));
                }
                paths.extend(disk.opt_str("path").ok().flatten().map(str::to_string));
            }
            name?;
            state?;
            Some(paths)
        })
    }

    fn own_spec() -> ArgSpec {
        ArgSpec::new([
            Opt::str("name").required(),
            Opt::str("state").choices(&["running", "shutoff"]),
            Opt::str("image"),
            Opt::list("disks").suboptions(ArgSpec::new([Opt::str("path").required(), Opt::int("size").default(1)])),
        ])
    }

    fn own_reply(args: Value) -> Value {
        execute_parsed(&own_spec(), args, own_rules, |_, paths| Ok::<_, Error>(Response::new().with("paths", paths)))
    }

    #[test]
    fn spec_errors_and_own_rule_errors_come_in_one_reply() {
        let args = json!({"name": "a b", "state": "on", "disks": [{"path": "disk.qcow2", "size": "big"}]});
        let reply = own_reply(args.clone());
        assert_eq!(
            reply["argument_errors"],
            json!([
                "value of state must be one of: running, shutoff, got: on",
                "argument 'disks[0].size' is of type <class 'str'> and we were unable to convert to int: \
                 \"'big'\" cannot be converted to an int",
                "name: no spaces",
                "disks[0].path: not absolute",
            ]),
            "{reply}"
        );
        assert_eq!(reply["failed"], true);
        assert_eq!(reply["invocation"]["module_args"], args, "what was given, refused values included");
    }

    #[test]
    fn own_rules_say_nothing_more_of_what_the_spec_refused() {
        // Neither that name or disks[0].path have no value, nor that image is missing: the
        // refused disks count as given.
        let reply = own_reply(json!({"disks": "x", "state": "on"}));
        assert_eq!(
            reply["argument_errors"],
            json!([
                "missing required arguments: name",
                "Elements value for option 'disks' is of type <class 'str'> and we were unable to convert to dict: \
                 dictionary requested, could not parse JSON or key=value",
                "value of state must be one of: running, shutoff, got: on",
            ]),
            "{reply}"
        );
        let reply = own_reply(json!({"name": "a", "disks": [{"size": 0}, {"path": "/b", "size": 0}]}));
        assert_eq!(
            reply["argument_errors"],
            json!([
                "missing required arguments: disks[0].path",
                "disks[0].size: at least 1",
                "disks[1].size: at least 1"
            ]),
            "{reply}"
        );
    }

    #[test]
    fn own_rule_errors_alone_fail_with_the_validated_parameters_and_valid_ones_reach_the_body() {
        let reply = own_reply(json!({"name": "a b", "image": "base"}));
        assert_eq!(reply["argument_errors"], json!(["name: no spaces"]));
        assert_eq!(reply["invocation"]["module_args"]["state"], Value::Null);
        let reply = own_reply(json!({"name": "a", "disks": [{"path": "/a"}, {"path": "/b", "size": "2"}]}));
        assert_eq!(reply["paths"], json!(["/a", "/b"]), "{reply}");
        assert!(reply.get("failed").is_none(), "{reply}");
    }

    #[test]
    fn refused_options_count_as_set_and_their_getters_repeat_the_spec() {
        let mut errors = ArgumentErrors::new();
        let params = own_spec().validate_at(
            json!({"state": "on", "disks": [{"size": "big"}]}).as_object().unwrap(),
            "vms[1]",
            "test",
            &mut errors,
        );
        assert_eq!(errors.messages().len(), 4, "{errors}");
        assert!(params.is_set("state") && params.get("state").is_none());
        assert!(params.is_set("name") && !params.is_set("image"));
        assert_eq!(params.opt_str("state").unwrap_err().to_string(), errors.messages()[1]);
        let disk = &params.dicts("disks").unwrap()[0];
        assert_eq!(disk.str("path").unwrap_err().to_string(), "missing required arguments: vms[1].disks[0].path");
        assert!(disk.get("size").is_none() && disk.is_set("size"));
        for refused in [params.str("name").unwrap_err(), disk.int("size").unwrap_err()] {
            errors.push(refused);
        }
        assert_eq!(errors.messages().len(), 4, "nothing repeated: {errors}");
    }

    fn with_unknown(mut args: Value) -> Value {
        args["colour"] = json!("blue");
        args
    }
}
