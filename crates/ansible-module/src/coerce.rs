//! Type conversions, one per [`Type`], mirroring ansible-core's
//! `module_utils/common/validation.py` `check_type_*` functions, including
//! the reasons they give when a value cannot be converted.

use serde_json::{Map, Number, Value};

use crate::spec::Type;

/// Converts `value` to `wanted`, or says why it cannot be.
pub(crate) fn coerce(value: Value, wanted: Type) -> Result<Value, String> {
    match wanted {
        Type::Raw => Ok(value),
        Type::Str => Ok(Value::String(into_text(value))),
        Type::Path => Ok(Value::String(expand_path(&into_text(value)))),
        Type::Int => to_int(&value).map(Value::from),
        Type::Float => to_float(&value),
        Type::Bool => to_bool(&value).map(Value::Bool),
        Type::List => to_list(value).map(Value::Array),
        Type::Dict => to_dict(value).map(Value::Object),
        Type::Json => to_json_text(value).map(Value::String),
        Type::Bytes => to_bytes(&value).map(Value::from),
    }
}

/// The Python type Ansible names in its messages, e.g. `<class 'str'>`.
pub(crate) fn python_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "<class 'NoneType'>",
        Value::Bool(_) => "<class 'bool'>",
        Value::Number(number) if number.is_f64() => "<class 'float'>",
        Value::Number(_) => "<class 'int'>",
        Value::String(_) => "<class 'str'>",
        Value::Array(_) => "<class 'list'>",
        Value::Object(_) => "<class 'dict'>",
    }
}

/// The text Python's `str()` gives for a scalar (`True`, `3`, `None`);
/// lists and dicts become JSON rather than Python reprs.
pub(crate) fn python_str(value: &Value) -> String {
    match value {
        Value::Null => "None".to_string(),
        Value::Bool(true) => "True".to_string(),
        Value::Bool(false) => "False".to_string(),
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

fn into_text(value: Value) -> String {
    match value {
        Value::String(text) => text,
        other => python_str(&other),
    }
}

/// The strings `AnsibleModule` reads as booleans, once lowercased.
pub(crate) const TRUE_WORDS: [&str; 6] = ["y", "yes", "on", "1", "true", "t"];
pub(crate) const FALSE_WORDS: [&str; 6] = ["n", "no", "off", "0", "false", "f"];

fn to_bool(value: &Value) -> Result<bool, String> {
    let word = match value {
        Value::Bool(flag) => return Ok(*flag),
        Value::String(text) => text.trim().to_lowercase(),
        Value::Number(number) => match number.as_f64() {
            Some(1.0) => return Ok(true),
            Some(0.0) => return Ok(false),
            _ => number.to_string(),
        },
        _ => return Err(format!("{} cannot be converted to a bool", python_type(value))),
    };
    if TRUE_WORDS.contains(&word.as_str()) {
        Ok(true)
    } else if FALSE_WORDS.contains(&word.as_str()) {
        Ok(false)
    } else {
        Err(format!(
            "The value '{}' is not a valid boolean.  Valid booleans include: \
             'y', 'yes', 'on', '1', 'true', 't', 1, 1.0, True, \
             'n', 'no', 'off', '0', 'false', 'f', 0, 0.0, False",
            python_str(value)
        ))
    }
}

fn to_int(value: &Value) -> Result<i64, String> {
    let cannot = || {
        let repr = match value {
            Value::String(text) => format!("'{text}'"),
            other => python_str(other),
        };
        format!("\"{repr}\" cannot be converted to an int")
    };
    let out_of_range = || format!("{} is out of range for a 64-bit integer", python_str(value));
    let integral = |float: f64| {
        // 2^63 is exact as an f64; every integral float in [-2^63, 2^63)
        // fits an i64, so the cast below cannot saturate.
        const LIMIT: f64 = 9_223_372_036_854_775_808.0;
        if !float.is_finite() || float.fract() != 0.0 {
            Err(cannot())
        } else if (-LIMIT..LIMIT).contains(&float) {
            Ok(float as i64)
        } else {
            Err(out_of_range())
        }
    };
    match value {
        // Python's bool is an int, so Ansible lets it through as 1 or 0.
        Value::Bool(flag) => Ok(i64::from(*flag)),
        Value::Number(number) => match (number.as_i64(), number.as_f64()) {
            (Some(int), _) => Ok(int),
            (None, Some(float)) => integral(float),
            (None, None) => Err(out_of_range()),
        },
        Value::String(text) => {
            let text = text.trim();
            match text.parse::<i64>() {
                Ok(int) => Ok(int),
                Err(error) if is_overflow(&error) => Err(out_of_range()),
                // Like Python's `Decimal`, "3.0" and "1e3" are integers too.
                Err(_) => text.parse::<f64>().map_err(|_| cannot()).and_then(integral),
            }
        }
        _ => Err(cannot()),
    }
}

fn is_overflow(error: &std::num::ParseIntError) -> bool {
    use std::num::IntErrorKind::{NegOverflow, PosOverflow};
    matches!(error.kind(), PosOverflow | NegOverflow)
}

fn to_float(value: &Value) -> Result<Value, String> {
    let float = match value {
        Value::Number(number) => number.as_f64(),
        Value::Bool(flag) => Some(f64::from(u8::from(*flag))),
        Value::String(text) => text.trim().parse::<f64>().ok(),
        _ => None,
    };
    // JSON has no NaN or infinity: `from_f64` refuses them.
    float
        .and_then(Number::from_f64)
        .map(Value::Number)
        .ok_or_else(|| format!("{} cannot be converted to a float", python_type(value)))
}

fn to_list(value: Value) -> Result<Vec<Value>, String> {
    match value {
        Value::Array(items) => Ok(items),
        Value::String(text) => Ok(text.split(',').map(|item| Value::String(item.to_string())).collect()),
        Value::Number(_) | Value::Bool(_) => Ok(vec![Value::String(python_str(&value))]),
        other => Err(format!("{} cannot be converted to a list", python_type(&other))),
    }
}

fn to_dict(value: Value) -> Result<Map<String, Value>, String> {
    match value {
        Value::Object(map) => Ok(map),
        Value::String(text) if text.starts_with('{') => match serde_json::from_str(&text) {
            Ok(Value::Object(map)) => Ok(map),
            _ => Err("unable to evaluate string as dictionary".to_string()),
        },
        Value::String(text) if text.contains('=') => parse_key_values(&text),
        Value::String(_) => Err("dictionary requested, could not parse JSON or key=value".to_string()),
        other => Err(format!("{} cannot be converted to a dict", python_type(&other))),
    }
}

/// Parses `k1=v1 k2='v 2',k3=v3`: fields split on unquoted spaces and
/// commas, quotes group, a backslash escapes the next character.
fn parse_key_values(text: &str) -> Result<Map<String, Value>, String> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut quote = None;
    let mut escaped = false;
    for c in text.trim().chars() {
        if escaped {
            field.push(c);
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if quote.is_none() && (c == '\'' || c == '"') {
            quote = Some(c);
        } else if quote == Some(c) {
            quote = None;
        } else if quote.is_none() && (c == ',' || c == ' ') {
            if !field.is_empty() {
                fields.push(std::mem::take(&mut field));
            }
        } else {
            field.push(c);
        }
    }
    if !field.is_empty() {
        fields.push(field);
    }
    fields
        .iter()
        .map(|field| {
            field
                .split_once('=')
                .map(|(key, value)| (key.to_string(), Value::String(value.to_string())))
                .ok_or_else(|| "unable to evaluate string in the \"key=value\" format as dictionary".to_string())
        })
        .collect()
}

fn to_json_text(value: Value) -> Result<String, String> {
    match value {
        Value::String(text) => Ok(text.trim().to_string()),
        Value::Array(_) | Value::Object(_) => Ok(value.to_string()),
        other => Err(format!("{} cannot be converted to a json string", python_type(&other))),
    }
}

fn to_bytes(value: &Value) -> Result<i64, String> {
    human_to_bytes(&python_str(value))
        .ok_or_else(|| format!("{} cannot be converted to a Byte value", python_type(value)))
}

/// `10`, `10M`, `10 MB`, `1.5G`, `2 kbytes`: a number of bytes in powers of
/// 1024, as ansible-core's `human_to_bytes` reads it.
fn human_to_bytes(text: &str) -> Option<i64> {
    let text = text.trim_end();
    let unit_start = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, unit) = text.split_at(unit_start);
    if number.is_empty() || number.ends_with('.') || number.matches('.').count() > 1 {
        return None;
    }
    let number: f64 = number.parse().ok()?;
    let unit = unit.trim_start();
    if !unit.chars().all(|c| c.is_ascii_alphabetic()) {
        return None;
    }
    let power = match unit.chars().next() {
        None => 0,
        Some(prefix) => "BKMGTPEZY".find(prefix.to_ascii_uppercase())?,
    };
    // Past the prefix only a `B` ("MB") or a spelled-out "byte" may follow.
    if unit.len() > 1 && !unit[1..].starts_with('B') && !unit.to_lowercase().contains("byte") {
        return None;
    }
    let bytes = (number * 1024_f64.powi(i32::try_from(power).ok()?)).round_ties_even();
    // Below 2^63, so the cast is exact enough and cannot saturate.
    (bytes < 9_223_372_036_854_775_808.0).then_some(bytes as i64)
}

/// Python's `os.path.expanduser(os.path.expandvars(path))`, except that
/// `~user` is left alone.
fn expand_path(path: &str) -> String {
    let expanded = expand_vars(path);
    match (expanded.strip_prefix('~'), std::env::var("HOME")) {
        (Some(rest), Ok(home)) if rest.is_empty() || rest.starts_with('/') => {
            let joined = format!("{}{rest}", home.trim_end_matches('/'));
            if joined.is_empty() {
                "/".to_string()
            } else {
                joined
            }
        }
        _ => expanded,
    }
}

/// Replaces `$NAME` and `${NAME}` by the environment variable's value;
/// unknown variables stay as written.
fn expand_vars(text: &str) -> String {
    let is_name_char = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut expanded = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(dollar) = rest.find('$') {
        expanded.push_str(&rest[..dollar]);
        let after = &rest[dollar + 1..];
        let (name, len) = match after.strip_prefix('{') {
            Some(braced) => match braced.find('}') {
                Some(end) => (&braced[..end], end + 2),
                None => ("", 0),
            },
            None => {
                let end = after.find(|c| !is_name_char(c)).unwrap_or(after.len());
                (&after[..end], end)
            }
        };
        let value = Some(name)
            .filter(|name| !name.is_empty() && name.chars().all(is_name_char))
            .and_then(|name| std::env::var(name).ok());
        match value {
            Some(value) => {
                expanded.push_str(&value);
                rest = &after[len..];
            }
            None => {
                expanded.push('$');
                rest = after;
            }
        }
    }
    expanded.push_str(rest);
    expanded
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ok(value: Value, wanted: Type) -> Value {
        match coerce(value.clone(), wanted) {
            Ok(converted) => converted,
            Err(reason) => panic!("{value} as {wanted}: {reason}"),
        }
    }

    fn err(value: Value, wanted: Type) -> String {
        match coerce(value.clone(), wanted) {
            Ok(converted) => panic!("{value} as {wanted} gave {converted}"),
            Err(reason) => reason,
        }
    }

    #[test]
    fn bools() {
        let truthy = [
            json!(true),
            json!("yes"),
            json!("Yes"),
            json!("on"),
            json!("1"),
            json!("true"),
            json!("TRUE"),
            json!("y"),
            json!("t"),
            json!(1),
            json!(1.0),
            json!(" yes "),
        ];
        let falsy = [
            json!(false),
            json!("no"),
            json!("NO"),
            json!("off"),
            json!("0"),
            json!("false"),
            json!("n"),
            json!("f"),
            json!(0),
            json!(0.0),
        ];
        for value in truthy {
            assert_eq!(ok(value, Type::Bool), json!(true));
        }
        for value in falsy {
            assert_eq!(ok(value, Type::Bool), json!(false));
        }
        assert!(err(json!("maybe"), Type::Bool)
            .starts_with("The value 'maybe' is not a valid boolean.  Valid booleans include: 'y'"));
        assert!(err(json!(2), Type::Bool).starts_with("The value '2' is not"));
        assert_eq!(err(json!([]), Type::Bool), "<class 'list'> cannot be converted to a bool");
    }

    #[test]
    fn ints() {
        let table = [
            (json!(3), 3),
            (json!("3"), 3),
            (json!(" -7 "), -7),
            (json!("+4"), 4),
            (json!(3.0), 3),
            (json!("3.0"), 3),
            (json!("1e3"), 1000),
            (json!(true), 1),
            (json!(i64::MIN), i64::MIN),
        ];
        for (value, expected) in table {
            assert_eq!(ok(value, Type::Int), json!(expected));
        }
        assert_eq!(err(json!("3.5"), Type::Int), "\"'3.5'\" cannot be converted to an int");
        assert_eq!(err(json!(3.5), Type::Int), "\"3.5\" cannot be converted to an int");
        assert_eq!(err(json!("three"), Type::Int), "\"'three'\" cannot be converted to an int");
        assert_eq!(err(json!("nan"), Type::Int), "\"'nan'\" cannot be converted to an int");
        assert_eq!(err(json!([1]), Type::Int), "\"[1]\" cannot be converted to an int");
    }

    #[test]
    fn huge_ints_are_out_of_range_not_wrapped() {
        let huge: Value = serde_json::from_str("99999999999999999999").unwrap();
        assert_eq!(err(huge, Type::Int), "1e+20 is out of range for a 64-bit integer");
        assert_eq!(err(json!(u64::MAX), Type::Int), "18446744073709551615 is out of range for a 64-bit integer");
        assert_eq!(
            err(json!("-99999999999999999999"), Type::Int),
            "-99999999999999999999 is out of range for a 64-bit integer"
        );
        assert_eq!(err(json!("1e30"), Type::Int), "1e30 is out of range for a 64-bit integer");
    }

    #[test]
    fn floats() {
        for (value, expected) in [(json!(1.5), 1.5), (json!(2), 2.0), (json!("2.5"), 2.5), (json!(true), 1.0)] {
            assert_eq!(ok(value, Type::Float), json!(expected));
        }
        assert_eq!(err(json!("x"), Type::Float), "<class 'str'> cannot be converted to a float");
        assert_eq!(err(json!("inf"), Type::Float), "<class 'str'> cannot be converted to a float");
        assert_eq!(err(json!({}), Type::Float), "<class 'dict'> cannot be converted to a float");
    }

    #[test]
    fn strs_convert_scalars_like_python() {
        let table = [
            (json!("a"), "a"),
            (json!(3), "3"),
            (json!(2.5), "2.5"),
            (json!(true), "True"),
            (json!(false), "False"),
            (json!([1, "a"]), "[1,\"a\"]"),
        ];
        for (value, expected) in table {
            assert_eq!(ok(value, Type::Str), json!(expected));
        }
    }

    #[test]
    fn lists() {
        let table = [
            (json!(["a", 1]), json!(["a", 1])),
            (json!("a,b"), json!(["a", "b"])),
            (json!("a, b"), json!(["a", " b"])),
            (json!("single"), json!(["single"])),
            (json!(""), json!([""])),
            (json!(3), json!(["3"])),
            (json!(true), json!(["True"])),
        ];
        for (value, expected) in table {
            assert_eq!(ok(value, Type::List), expected);
        }
        assert_eq!(err(json!({"a": 1}), Type::List), "<class 'dict'> cannot be converted to a list");
    }

    #[test]
    fn dicts() {
        let table = [
            (json!({"a": 1}), json!({"a": 1})),
            (json!(r#"{"a": 1}"#), json!({"a": 1})),
            (json!("k=v k2=v2"), json!({"k": "v", "k2": "v2"})),
            (json!("k=v,k2=v2"), json!({"k": "v", "k2": "v2"})),
            (json!(r#"k='a b' k2="c,d" k3=x\ y e=f=g"#), json!({"k": "a b", "k2": "c,d", "k3": "x y", "e": "f=g"})),
        ];
        for (value, expected) in table {
            assert_eq!(ok(value, Type::Dict), expected);
        }
        assert_eq!(err(json!("{oops"), Type::Dict), "unable to evaluate string as dictionary");
        assert_eq!(err(json!("plain"), Type::Dict), "dictionary requested, could not parse JSON or key=value");
        assert_eq!(
            err(json!("k=v lonely"), Type::Dict),
            "unable to evaluate string in the \"key=value\" format as dictionary"
        );
        assert_eq!(err(json!(1), Type::Dict), "<class 'int'> cannot be converted to a dict");
    }

    #[test]
    fn json_text() {
        assert_eq!(ok(json!(" [1] "), Type::Json), json!("[1]"));
        assert_eq!(ok(json!({"a": [1]}), Type::Json), json!(r#"{"a":[1]}"#));
        assert_eq!(err(json!(1), Type::Json), "<class 'int'> cannot be converted to a json string");
    }

    #[test]
    fn bytes() {
        let table = [
            (json!(10), 10),
            (json!("10"), 10),
            (json!("1K"), 1024),
            (json!("1KB"), 1024),
            (json!("2 MB"), 2 * 1024 * 1024),
            (json!("1.5G"), 3 * 512 * 1024 * 1024),
            (json!("3 kbytes"), 3072),
        ];
        for (value, expected) in table {
            assert_eq!(ok(value, Type::Bytes), json!(expected));
        }
        for bad in [json!("10Q"), json!("M"), json!("-1K"), json!("1Mb"), json!("1.K"), json!("1YB"), json!(true)] {
            assert!(err(bad, Type::Bytes).ends_with("cannot be converted to a Byte value"));
        }
    }

    #[test]
    fn paths_expand_home_and_variables() {
        let home = std::env::var("HOME").unwrap_or_default();
        if !home.is_empty() {
            assert_eq!(ok(json!("~/vm.qcow2"), Type::Path), json!(format!("{}/vm.qcow2", home.trim_end_matches('/'))));
            assert_eq!(ok(json!("${HOME}/x"), Type::Path), json!(format!("{home}/x")));
        }
        let unchanged = ["~other/x", "/a/$VIRTFARM_SURELY_UNSET/b", "$", "${", "a$"];
        for path in unchanged {
            assert_eq!(ok(json!(path), Type::Path), json!(path));
        }
    }

    #[test]
    fn raw_keeps_the_value() {
        assert_eq!(ok(json!({"a": [1, null]}), Type::Raw), json!({"a": [1, null]}));
    }
}
