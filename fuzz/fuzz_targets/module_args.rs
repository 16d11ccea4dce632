//! The argument validator (`ansible_module::execute`) on any JSON, against argument specs
//! of every shape the modules declare: typed options with defaults, choices, aliases,
//! `no_log`, list elements, suboptions, and the `mutually_exclusive`/`required_*` rules.
//!
//! Invariants: no panic; the reply is one JSON object; a failed reply says why; and an
//! option the validator accepted reads back through the getter of its declared type.
#![no_main]

use ansible_module::{ArgSpec, Opt, Params, Response, Type};
use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use virtfarm_fuzz::{word, Json};

/// Option names are the first few words, so that rules, aliases and arguments meet.
fn name(i: u8) -> &'static str {
    word(i % 6)
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Kind {
    Str,
    Int,
    Float,
    Bool,
    List,
    Dict,
    Path,
    Raw,
    Json,
    Bytes,
}

impl Kind {
    fn to_type(self) -> Type {
        match self {
            Kind::Str => Type::Str,
            Kind::Int => Type::Int,
            Kind::Float => Type::Float,
            Kind::Bool => Type::Bool,
            Kind::List => Type::List,
            Kind::Dict => Type::Dict,
            Kind::Path => Type::Path,
            Kind::Raw => Type::Raw,
            Kind::Json => Type::Json,
            Kind::Bytes => Type::Bytes,
        }
    }
}

#[derive(Arbitrary, Debug)]
struct OptShape {
    name: u8,
    kind: Kind,
    required: bool,
    default: Option<Json>,
    choices: Vec<Json>,
    alias: Option<u8>,
    no_log: bool,
    elements: Option<Kind>,
    suboptions: Option<Vec<OptShape>>,
    apply_defaults: bool,
}

#[derive(Arbitrary, Debug)]
enum Rule {
    MutuallyExclusive(u8, u8),
    RequiredOneOf(u8, u8),
    RequiredTogether(u8, u8),
    RequiredBy(u8, u8),
    RequiredIf(u8, Json, u8, bool),
}

#[derive(Arbitrary, Debug)]
struct Input {
    options: Vec<OptShape>,
    rules: Vec<Rule>,
    check_mode_supported: bool,
    args: Json,
}

fn build_opt(shape: &OptShape, depth: u8) -> Opt {
    let mut opt = Opt::new(name(shape.name), shape.kind.to_type());
    if shape.required {
        opt = opt.required();
    }
    if let Some(default) = &shape.default {
        opt = opt.default(default.value());
    }
    if !shape.choices.is_empty() {
        opt = opt.choices(&shape.choices.iter().map(Json::value).collect::<Vec<_>>());
    }
    if let Some(alias) = shape.alias {
        opt = opt.aliases(&[name(alias)]);
    }
    if shape.no_log {
        opt = opt.no_log();
    }
    // Specs as a module may declare them: elements on lists, suboptions on dicts and lists of dicts.
    let elements = shape.elements.filter(|_| matches!(shape.kind, Kind::List));
    if let Some(elements) = elements {
        opt = opt.elements(elements.to_type());
    }
    let nested = matches!((shape.kind, elements), (Kind::Dict, _) | (Kind::List, Some(Kind::Dict)));
    if let (Some(sub), true) = (&shape.suboptions, nested && depth < 2) {
        opt = opt.suboptions(build_spec(sub, &[], depth + 1));
        if shape.apply_defaults {
            opt = opt.apply_defaults();
        }
    }
    opt
}

fn build_spec(options: &[OptShape], rules: &[Rule], depth: u8) -> ArgSpec {
    let mut spec = ArgSpec::new(options.iter().map(|o| build_opt(o, depth)));
    for rule in rules {
        spec = match rule {
            Rule::MutuallyExclusive(a, b) => spec.mutually_exclusive(&[name(*a), name(*b)]),
            Rule::RequiredOneOf(a, b) => spec.required_one_of(&[name(*a), name(*b)]),
            Rule::RequiredTogether(a, b) => spec.required_together(&[name(*a), name(*b)]),
            Rule::RequiredBy(a, b) => spec.required_by(name(*a), &[name(*b)]),
            Rule::RequiredIf(a, value, b, false) => spec.required_if(name(*a), value.value(), &[name(*b)]),
            Rule::RequiredIf(a, value, b, true) => spec.required_if_any(name(*a), value.value(), &[name(*b)]),
        };
    }
    spec
}

/// Reads an accepted option back the way a module body would.
fn read_back(params: &Params, option: &str, kind: Kind) -> Result<(), ansible_module::Error> {
    match kind {
        Kind::Str | Kind::Path => params.opt_str(option).map(drop),
        Kind::Int => params.opt_int(option).map(drop),
        Kind::Float => params.opt_float(option).map(drop),
        Kind::Bool => params.opt_bool(option).map(drop),
        Kind::Dict => params.opt_dict(option).map(drop),
        Kind::List | Kind::Raw | Kind::Json | Kind::Bytes => Ok(()),
    }
}

fuzz_target!(|input: Input| {
    let mut spec = build_spec(&input.options, &input.rules, 0);
    if input.check_mode_supported {
        spec = spec.supports_check_mode();
    }
    // The last declaration of a name is the one the spec keeps.
    let mut declared: Vec<(&str, Kind)> = Vec::new();
    for shape in &input.options {
        declared.retain(|(n, _)| *n != name(shape.name));
        declared.push((name(shape.name), shape.kind));
    }
    let reply = ansible_module::execute(&spec, input.args.value(), |module| -> Result<Response, String> {
        for (option, kind) in &declared {
            if let Err(e) = read_back(module.params(), option, *kind) {
                panic!("{option} was accepted as {kind:?} but reads back as an error: {e}");
            }
        }
        Ok(Response::new())
    });
    let Value::Object(reply) = reply else { panic!("the reply is not a JSON object: {reply}") };
    if reply.get("failed") == Some(&Value::Bool(true)) {
        let msg = reply.get("msg").and_then(Value::as_str).unwrap_or_default();
        assert!(!msg.is_empty(), "a failed reply without a message: {reply:?}");
    }
});
