//! The process around [`execute`]: reading the arguments, printing the one
//! reply, the exit code, and a panic hook that still replies in JSON.

use std::fmt::Display;
use std::io::{IsTerminal, Read, Write};
use std::panic::PanicHookInfo;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use serde_json::{json, Value};

use crate::error::{ArgumentErrors, Error};
use crate::no_log::NoLogValues;
use crate::response::Response;
use crate::runtime::{execute_parsed, failure, Module};
use crate::spec::ArgSpec;

/// Runs a module: reads the arguments from the file named by the first
/// command-line argument (or from standard input when there is none),
/// validates them against `spec`, calls `body`, prints exactly one JSON
/// object on standard output and exits, with 1 on failure.
///
/// A panic on the main thread still prints a failed result, even with
/// `panic = "abort"`; one on another thread is left to whoever joins it.
/// Nothing else may write to standard output.
pub fn run<E: Display>(spec: ArgSpec, body: impl FnOnce(&Module) -> Result<Response, E>) -> ! {
    run_parsed(spec, |_| Ok(()), |module, ()| body(module))
}

/// [`run`] for a module with rules of its own, which `parse` applies: see
/// [`execute_parsed`](crate::execute_parsed).
pub fn run_parsed<T, E: Display>(
    spec: ArgSpec,
    parse: impl FnOnce(&Module) -> Result<T, ArgumentErrors>,
    body: impl FnOnce(&Module, T) -> Result<Response, E>,
) -> ! {
    std::panic::set_hook(Box::new(report_panic));
    let reply = match read_args(std::env::args_os().nth(1).map(PathBuf::from)) {
        Ok(args) => execute_parsed(
            &spec,
            args,
            |module| {
                // The hook cannot reach the module; one run per process, so
                // the first `set` is the only one.
                let _ = PANIC_NO_LOG.set(module.no_log.clone());
                parse(module)
            },
            body,
        ),
        Err(error) => failure(&error),
    };
    emit(&reply);
    std::process::exit(exit_code(&reply));
}

/// The secrets the panic hook must scrub from a panic message.
static PANIC_NO_LOG: OnceLock<NoLogValues> = OnceLock::new();

/// Set by the first reply: Ansible must read exactly one JSON object, so a
/// panic after (or while) the reply is written must not add another.
static REPLIED: AtomicBool = AtomicBool::new(false);

fn read_args(path: Option<PathBuf>) -> Result<Value, Error> {
    let (bytes, path) = match path {
        Some(path) => match std::fs::read(&path) {
            Ok(bytes) => (bytes, path),
            Err(source) => return Err(Error::ReadArgs { path, source }),
        },
        None => {
            let mut stdin = std::io::stdin().lock();
            if stdin.is_terminal() {
                return Err(Error::NoArgs);
            }
            let mut bytes = Vec::new();
            let path = PathBuf::from("<stdin>");
            if let Err(source) = stdin.read_to_end(&mut bytes) {
                return Err(Error::ReadArgs { path, source });
            }
            (bytes, path)
        }
    };
    serde_json::from_slice(&bytes).map_err(|source| Error::InvalidJson { path, source })
}

fn emit(reply: &Value) {
    if REPLIED.swap(true, Ordering::SeqCst) {
        return;
    }
    let mut stdout = std::io::stdout().lock();
    // With standard output gone there is no one left to tell.
    let _ = writeln!(stdout, "{reply}").and_then(|()| stdout.flush());
}

fn exit_code(reply: &Value) -> i32 {
    i32::from(reply.get("failed") == Some(&Value::Bool(true)))
}

fn report_panic(info: &PanicHookInfo<'_>) {
    // A worker thread's panic unwinds to its `join`, whose caller fails that piece of work
    // alone while the other threads finish theirs and release what they hold.
    if std::thread::current().name() != Some("main") {
        return;
    }
    let message = panic_text(info.payload());
    let location =
        info.location().map(|location| format!("{}:{}:{}", location.file(), location.line(), location.column()));
    emit(&panic_reply(message, location.as_deref(), PANIC_NO_LOG.get()));
}

/// The message a panic carried (its payload, as `join` or the hook gets it).
pub fn panic_text(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

fn panic_reply(message: &str, location: Option<&str>, no_log: Option<&NoLogValues>) -> Value {
    let at = location.map(|location| format!(" at {location}")).unwrap_or_default();
    let msg = format!("module panicked: {message}{at} (this is a bug)");
    let msg = match no_log {
        Some(no_log) => no_log.scrub_text(&msg),
        None => msg,
    };
    json!({"failed": true, "msg": msg})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Opt;

    fn temp_file(name: &str, contents: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!("ansible-module-{}-{name}", std::process::id()));
        std::fs::write(&path, contents).unwrap();
        path
    }

    #[test]
    fn reads_the_args_file() {
        let path = temp_file("args.json", r#"{"name": "web01", "_ansible_check_mode": false}"#);
        assert_eq!(read_args(Some(path.clone())).unwrap(), json!({"name": "web01", "_ansible_check_mode": false}));
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn missing_args_file_is_a_failed_reply() {
        let error = read_args(Some(PathBuf::from("/nonexistent/args"))).unwrap_err();
        assert_eq!(
            failure(&error),
            json!({"failed": true, "msg": "could not read module arguments from '/nonexistent/args': \
                   No such file or directory (os error 2)"})
        );
    }

    #[test]
    fn invalid_json_is_a_failed_reply() {
        let path = temp_file("broken.json", "{\"name\": ");
        let error = read_args(Some(path.clone())).unwrap_err();
        std::fs::remove_file(&path).unwrap();
        let reply = failure(&error);
        assert_eq!(reply["failed"], true);
        assert_eq!(
            reply["msg"],
            format!(
                "module arguments from '{}' are not valid JSON: EOF while parsing a value at line 1 column 9",
                path.display()
            )
        );
    }

    #[test]
    fn exit_code_is_one_only_on_failure() {
        assert_eq!(exit_code(&json!({"failed": true, "msg": "x"})), 1);
        assert_eq!(exit_code(&json!({"changed": true})), 0);
        assert_eq!(exit_code(&json!({"skipped": true, "changed": false})), 0);
    }

    #[test]
    fn panic_reply_is_a_failed_result() {
        assert_eq!(
            panic_reply("index out of bounds", Some("src/main.rs:10:5"), None),
            json!({"failed": true, "msg": "module panicked: index out of bounds at src/main.rs:10:5 (this is a bug)"})
        );
        assert_eq!(panic_reply("boom", None, None)["msg"], "module panicked: boom (this is a bug)");
    }

    #[test]
    fn panic_reply_scrubs_secrets() {
        let mut no_log = NoLogValues::default();
        let spec = ArgSpec::new([Opt::str("password").no_log()]);
        no_log.add_from(&spec, json!({"password": "hunter22"}).as_object().unwrap());
        assert_eq!(
            panic_reply("bad password hunter22", None, Some(&no_log))["msg"],
            "module panicked: bad password ******** (this is a bug)"
        );
    }
}
