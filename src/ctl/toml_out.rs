//! TOML text for `kata-ctl env`, written from the serde JSON value of the
//! report.
//!
//! The workspace builds the `toml` crate for parsing only; its serializer
//! (the `display` feature) would pull `toml_edit`'s writer in for one
//! debugging verb. The report is plain data (tables, scalars, arrays of
//! scalars), so a small writer covers it, and a round-trip test through
//! the shim's own parser keeps it honest.

use serde_json::{Map, Value};

/// Renders a JSON object as a TOML document: scalars first, then one
/// `[a.b]` section per nested table, keys in the value's (sorted) order.
/// TOML has no null, so an unset value becomes a `# key: none` comment
/// that still shows it was looked at.
pub fn render(value: &Value) -> Result<String, String> {
    let Value::Object(root) = value else {
        return Err("the top level is not a table".into());
    };
    let mut out = String::new();
    table(&mut out, &mut Vec::new(), root)?;
    Ok(out)
}

fn table(out: &mut String, path: &mut Vec<String>, map: &Map<String, Value>) -> Result<(), String> {
    let has_own = map.values().any(|v| !v.is_object()) || map.is_empty();
    if !path.is_empty() && has_own {
        if !out.is_empty() {
            out.push('\n');
        }
        let header: Vec<String> = path.iter().map(|k| key(k)).collect();
        out.push_str(&format!("[{}]\n", header.join(".")));
    }
    for (k, v) in map {
        match v {
            Value::Object(_) => {}
            Value::Null => out.push_str(&format!("# {k}: none\n")),
            _ => out.push_str(&format!("{} = {}\n", key(k), inline(v)?)),
        }
    }
    for (k, v) in map {
        if let Value::Object(sub) = v {
            path.push(k.clone());
            table(out, path, sub)?;
            path.pop();
        }
    }
    Ok(())
}

fn key(k: &str) -> String {
    let bare = !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if bare { k.to_string() } else { string(k) }
}

fn inline(v: &Value) -> Result<String, String> {
    Ok(match v {
        Value::Null => return Err("null inside an array or inline table".into()),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => string(s),
        Value::Array(items) => {
            let items: Result<Vec<String>, String> = items.iter().map(inline).collect();
            format!("[{}]", items?.join(", "))
        }
        Value::Object(map) => {
            let mut parts = Vec::new();
            for (k, v) in map.iter().filter(|(_, v)| !v.is_null()) {
                parts.push(format!("{} = {}", key(k), inline(v)?));
            }
            format!("{{ {} }}", parts.join(", "))
        }
    })
}

/// A TOML basic string: quotes, backslashes and control characters
/// (DEL included, which JSON leaves raw but TOML forbids) escaped.
fn string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Config;

    #[test]
    fn configuration_round_trips_through_the_shims_parser() {
        let mut c = Config::default();
        // kernel_params may not hold a quote: a free-form list may.
        c.hypervisor.qemu.virtio_fs_extra_args =
            vec!["quote\" back\\slash tab\t del\u{7f} é".into()];
        c.hypervisor.qemu.default_vcpus = 2;
        let text = render(&serde_json::to_value(&c).expect("json")).expect("toml");
        assert!(text.starts_with("[agent.kata]\n"), "{text}");
        assert!(text.contains("\n[hypervisor.qemu]\n"), "{text}");
        let back = Config::from_toml(&text, Path::new("env.toml")).expect("parses back");
        assert_eq!(back, c);
    }

    #[test]
    fn nested_sections_nulls_and_keys() {
        let v = serde_json::json!({
            "file": null,
            "n": 1,
            "resolved": {"qemu": "/usr/bin/qemu", "virtiofsd": null, "odd key": [1, 2]},
            "config": {"runtime": {"enable_debug": false}},
            "empty": {},
        });
        let text = render(&v).expect("toml");
        assert_eq!(
            text,
            "# file: none\nn = 1\n\n[config.runtime]\nenable_debug = false\n\n[empty]\n\n\
             [resolved]\n\"odd key\" = [1, 2]\nqemu = \"/usr/bin/qemu\"\n# virtiofsd: none\n"
        );
        let parsed: toml::Table = toml::from_str(&text).expect("valid TOML");
        assert_eq!(parsed["resolved"]["qemu"].as_str(), Some("/usr/bin/qemu"));
        assert!(render(&serde_json::json!([1])).is_err());
    }
}
