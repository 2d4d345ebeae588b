//! The configuration (`config`): TOML text of the main file and its
//! `config.d` drop-ins, mutated and random, through parsing, unknown-key
//! detection, validation and merging; and the globs of `enable_annotations`
//! and `valid_*_paths`. A refusal names the file and the key; an accepted
//! configuration renders back to TOML that parses to the same value.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use super::{Rng, Tally, mutate_text, run};
use crate::config::{Config, ConfigError, dropin, glob};

/// TOML text for `c`, written from its serde value (tables of scalars and
/// arrays, which is all a configuration has).
pub(super) fn to_toml(c: &Config) -> String {
    let v = serde_json::to_value(c).expect("a configuration is JSON");
    let mut out = String::new();
    table(&mut out, "", &v);
    out
}

fn table(out: &mut String, prefix: &str, v: &Value) {
    let Value::Object(map) = v else {
        panic!("{prefix} is not a table");
    };
    if !prefix.is_empty() && map.values().any(|v| !v.is_object()) {
        out.push_str(&format!("[{prefix}]\n"));
    }
    for (k, v) in map.iter().filter(|(_, v)| !v.is_object()) {
        out.push_str(&format!("{k} = {}\n", scalar(v)));
    }
    for (k, v) in map.iter().filter(|(_, v)| v.is_object()) {
        let name = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        table(out, &name, v);
    }
}

fn scalar(v: &Value) -> String {
    match v {
        // JSON's escapes are TOML's, but for DEL, which TOML wants escaped.
        Value::String(s) => serde_json::to_string(s)
            .expect("a string is JSON")
            .replace('\u{7f}', "\\u007F"),
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(scalar).collect();
            format!("[{}]", items.join(", "))
        }
        Value::Null => panic!("a configuration has no null"),
        other => other.to_string(),
    }
}

const TOML_TOKENS: [&str; 30] = [
    "[",
    "]",
    "[[",
    "=",
    "\"",
    "'''",
    "\n",
    "#",
    ",",
    "{",
    "}",
    ".",
    "-1",
    "0",
    "241",
    "4294967296",
    "1e400",
    "inf",
    "nan",
    "true",
    "0x10",
    "\"\\u0000\"",
    "\"a\\nb\"",
    "\"relative\"",
    "[hypervisor.qemu]\n",
    "[agent.kata]\n",
    "[runtime]\n",
    "[hypervisor]\nqemu = 1\n",
    "unknown_key = 1\n",
    "enable_annotations = [\"[\"]\n",
];

/// Small valid layers, as drop-ins or mutation seeds.
const LAYERS: [&str; 8] = [
    "[hypervisor.qemu]\ndefault_vcpus = 2\ndefault_maxvcpus = 4\n",
    "[hypervisor.qemu]\ndefault_memory = 4096\nkernel_params = \"quiet\"\n",
    "[hypervisor.qemu]\nenable_annotations = [\"default_*\", \"kernel_params\"]\nvalid_kernel_paths = [\"/opt/kata/*\"]\n",
    "[hypervisor.qemu]\nshared_fs = \"virtio-9p\"\nmsize_9p = 8192\nvsock = \"hybrid\"\n",
    "[agent.kata]\ndial_timeout = 60\nlog_level = \"debug\"\n",
    "[runtime]\nenable_debug = true\nlog_level = \"warn\"\n",
    "hypervisor.qemu.accel = \"tcg\"\nhypervisor.qemu.tcg_tb_size = 128\n",
    "[hypervisor.qemu]\ndefault_maxvcpus = 1\n",
];

fn document(rng: &mut Rng, seeds: &[String]) -> String {
    let seed = rng.pick(seeds).clone();
    let bytes = match rng.below(4) {
        0 => seed.into_bytes(),
        _ => mutate_text(rng, seed.as_bytes(), &TOML_TOKENS),
    };
    String::from_utf8_lossy(&bytes).into_owned()
}

fn seeds() -> Vec<String> {
    let mut s: Vec<String> = LAYERS.iter().map(|l| l.to_string()).collect();
    s.push(to_toml(&Config::default()));
    s.push(String::new());
    s
}

/// The checks every refusal must pass: it names `path`, and the key. The
/// kind of refusal.
fn check_refusal(e: &ConfigError, path: &Path, text: &str) -> &'static str {
    let msg = e.to_string();
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    match e {
        ConfigError::Parse { message, .. } => {
            assert!(!message.is_empty(), "{msg}");
            "parse error"
        }
        ConfigError::UnknownKey { key, .. } => {
            let last = key.rsplit('.').next().unwrap_or(key);
            assert!(!key.is_empty() && text.contains(last), "{msg} for {text:?}");
            "unknown key"
        }
        ConfigError::Invalid { key, .. } => {
            assert!(
                ["hypervisor.qemu.", "agent.kata.", "runtime."]
                    .iter()
                    .any(|p| key.starts_with(p)),
                "{msg}"
            );
            "invalid value"
        }
        ConfigError::Read { .. } => panic!("no file was read: {msg}"),
    }
}

#[test]
fn config_toml_is_parsed_validated_or_refused_by_key() {
    let name = "config_toml_is_parsed_validated_or_refused_by_key";
    let seeds = seeds();
    let path = Path::new("/etc/kata-containers/fuzz.toml");
    let mut tally = Tally::default();
    run(
        name,
        0xc0f1_6000_0000_000f,
        20_000,
        Duration::from_secs(3),
        |rng| {
            let text = document(rng, &seeds);
            match Config::from_toml(&text, path) {
                Ok(c) => {
                    tally.add("accepted");
                    let again = to_toml(&c);
                    let back = Config::from_toml(&again, path)
                        .unwrap_or_else(|e| panic!("{e}: {again}\nfrom {text:?}"));
                    assert_eq!(back, c, "not a fixed point: {text:?}");
                }
                Err(e) => tally.add(check_refusal(&e, path, &text)),
            }
        },
    );
    let all = ["accepted", "parse error", "unknown key", "invalid value"];
    tally.require(name, &all);
}

/// Every leaf (non-table value) of `t` with its dotted path; keys with a
/// dot cannot be named by a dotted path and are left out.
fn leaves(t: &toml::Table, prefix: &str, out: &mut Vec<(String, toml::Value)>) {
    for (k, v) in t {
        if k.contains('.') || k.is_empty() {
            continue;
        }
        let path = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            toml::Value::Table(sub) => leaves(sub, &path, out),
            other => out.push((path, other.clone())),
        }
    }
}

fn get<'a>(t: &'a toml::Table, path: &str) -> Option<&'a toml::Value> {
    let mut parts = path.split('.');
    let mut v = t.get(parts.next()?)?;
    for p in parts {
        v = v.as_table()?.get(p)?;
    }
    Some(v)
}

#[test]
fn dropin_merge_is_idempotent_and_later_layers_win() {
    let name = "dropin_merge_is_idempotent_and_later_layers_win";
    let seeds = seeds();
    let mut tally = Tally::default();
    run(
        name,
        0xc0f1_6000_0000_0010,
        20_000,
        Duration::from_secs(2),
        |rng| {
            let (Ok(base), Ok(over)) = (
                document(rng, &seeds).parse::<toml::Table>(),
                document(rng, &seeds).parse::<toml::Table>(),
            ) else {
                tally.add("not TOML");
                return;
            };
            tally.add("merged");
            // Compared as text: TOML has `nan`, which equals nothing.
            let same = |a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| {
                format!("{a:?}") == format!("{b:?}")
            };
            let mut once = base.clone();
            dropin::merge(&mut once, over.clone());
            let mut twice = once.clone();
            dropin::merge(&mut twice, over.clone());
            assert!(same(&once, &twice), "merge is not idempotent");
            let mut empty = base.clone();
            dropin::merge(&mut empty, toml::Table::new());
            assert!(same(&empty, &base));
            let mut over_leaves = Vec::new();
            leaves(&over, "", &mut over_leaves);
            for (path, v) in &over_leaves {
                assert!(
                    same(&get(&once, path), &Some(v)),
                    "{path} not taken from the drop-in"
                );
                assert!(
                    dropin::sets(&once, path) && dropin::sets(&over, path),
                    "{path}"
                );
            }
            let mut base_leaves = Vec::new();
            leaves(&base, "", &mut base_leaves);
            for (path, v) in &base_leaves {
                let replaced = get(&over, path).is_some()
                    || over_leaves
                        .iter()
                        .any(|(p, _)| path.starts_with(&format!("{p}.")));
                if !replaced {
                    assert!(
                        same(&get(&once, path), &Some(v)),
                        "{path} lost in the merge"
                    );
                }
            }
            // `sets` takes any dotted text.
            let key = String::from_utf8_lossy(&rng.bytes(12)).replace('\u{fffd}', ".");
            let _ = dropin::sets(&once, &key);
            assert!(!dropin::sets(&once, ""));
        },
    );
    tally.require(name, &["merged", "not TOML"]);
}

#[test]
fn config_files_with_dropins_load_or_blame_a_file() {
    let name = "config_files_with_dropins_load_or_blame_a_file";
    let seeds = seeds();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut tally = Tally::default();
    run(
        name,
        0xc0f1_6000_0000_0011,
        1_000,
        Duration::from_secs(3),
        |rng| {
            let case = dir.path().join(format!("{:016x}", rng.next()));
            let dropins = case.join("config.d");
            std::fs::create_dir_all(&dropins).expect("mkdir");
            let main = case.join("configuration.toml");
            std::fs::write(&main, document(rng, &seeds)).expect("write main");
            let mut files = vec![main.clone()];
            for i in 0..rng.below(4) {
                let name = dropins.join(format!("{i:02}-{}.toml", rng.below(100)));
                let text = if rng.one_in(3) {
                    document(rng, &seeds)
                } else {
                    rng.pick(&LAYERS).to_string()
                };
                std::fs::write(&name, text).expect("write drop-in");
                files.push(name);
            }
            // Not drop-ins: another extension, a directory named *.toml.
            std::fs::write(dropins.join("zz.toml.bak"), "garbage = [").expect("write");
            std::fs::create_dir_all(dropins.join("dir.toml")).expect("mkdir");
            match Config::load_file(&main) {
                Ok(loaded) => {
                    tally.add(if loaded.drop_ins.is_empty() {
                        "loaded"
                    } else {
                        "loaded with drop-ins"
                    });
                    let mut want: Vec<_> = files[1..].to_vec();
                    want.sort();
                    assert_eq!(loaded.drop_ins, want);
                    let again = to_toml(&loaded.config);
                    let back = Config::from_toml(&again, &main).expect("renders back");
                    assert_eq!(back, loaded.config);
                }
                Err(e) => {
                    let blamed = match &e {
                        ConfigError::Parse { path, .. }
                        | ConfigError::UnknownKey { path, .. }
                        | ConfigError::Invalid { path, .. } => path.clone(),
                        ConfigError::Read { path, .. } => panic!("read {}: {e}", path.display()),
                    };
                    assert!(files.contains(&blamed), "{e} blames {}", blamed.display());
                    tally.add(if blamed == main {
                        "main blamed"
                    } else {
                        "drop-in blamed"
                    });
                    if let ConfigError::Invalid { key, .. } = &e {
                        // Blamed on the last drop-in that sets the key, else
                        // on the main file (every layer parsed to get here).
                        let sets = |f: &PathBuf| {
                            let text = std::fs::read_to_string(f).expect("read back");
                            let t: toml::Table = text.parse().expect("a layer parses");
                            dropin::sets(&t, key)
                        };
                        let mut layers = files[1..].to_vec();
                        layers.sort();
                        let want = layers.iter().rev().find(|f| sets(f)).unwrap_or(&main);
                        assert_eq!(&blamed, want, "{e}");
                    }
                }
            }
            std::fs::remove_dir_all(&case).expect("clean up");
        },
    );
    let all = [
        "loaded",
        "loaded with drop-ins",
        "main blamed",
        "drop-in blamed",
    ];
    tally.require(name, &all);
}

/// `pattern` with every character escaped: matches exactly `text`.
fn escaped(text: &str) -> String {
    text.chars().flat_map(|c| ['\\', c]).collect()
}

#[test]
fn globs_check_and_match_consistently() {
    let alphabet = [
        'a', 'b', '/', '*', '?', '[', ']', '!', '^', '-', '\\', '.', '\u{e9}',
    ];
    let name = "globs_check_and_match_consistently";
    let mut tally = Tally::default();
    run(
        name,
        0xc0f1_6000_0000_0012,
        20_000,
        Duration::from_secs(2),
        |rng| {
            let word = |rng: &mut Rng, n: usize| -> String {
                (0..rng.below(n)).map(|_| *rng.pick(&alphabet)).collect()
            };
            let pattern = word(rng, 12);
            let text = word(rng, 16);
            let valid = glob::check(&pattern);
            let m = glob::matches(&pattern, &text);
            tally.add(match (&valid, m) {
                (Err(_), _) => "invalid pattern",
                (Ok(()), true) => "match",
                (Ok(()), false) => "no match",
            });
            if let Err(why) = &valid {
                assert!(!m, "invalid {pattern:?} ({why}) matched {text:?}");
                assert!(why.contains(&format!("{pattern:?}")), "{why}");
            }
            // Idempotent, and every text matches itself escaped.
            assert_eq!(m, glob::matches(&pattern, &text));
            assert!(glob::check(&escaped(&text)).is_ok());
            assert!(glob::matches(&escaped(&text), &text), "{text:?}");
            // A literal pattern matches exactly itself.
            if !pattern.contains(['*', '?', '[', '\\']) {
                assert_eq!(m, pattern == text, "{pattern:?} {text:?}");
            }
            // `*` is any run without a separator.
            assert_eq!(glob::matches("*", &text), !text.contains('/'), "{text:?}");
        },
    );
    tally.require(name, &["invalid pattern", "match", "no match"]);
}

/// `glob::matches` used to recurse once per character a `*` consumes, so
/// its depth grew with the text: on a 2 MiB stack (a tokio worker's) a text
/// of about 22,000 characters overflowed it. `overrides::apply` matches
/// every `io.katacontainers.config.hypervisor.<name>` annotation's name
/// against `enable_annotations`, so with a glob such as `*` enabled, one
/// annotation key of that length aborted the shim during Create. It is
/// iterative now: random texts of up to 256 Ki characters against
/// `*`-globs, each on a thread with a tokio worker's 2 MiB stack (an
/// overflow would abort the test binary, a loud failure).
#[test]
fn globs_match_long_texts_without_deep_recursion() {
    run(
        "globs_match_long_texts_without_deep_recursion",
        0xc0f1_6000_0000_0016,
        200,
        Duration::from_secs(10),
        |rng| {
            let text = "n".repeat(1 + rng.below(256 << 10));
            let pattern = rng.pick(&["*", "n*", "*n", "[n]*", "?*", "**"]).to_string();
            // An overflow aborts before any guard can speak: say it first.
            eprintln!("glob case: {pattern:?} against {} characters", text.len());
            let matched = std::thread::Builder::new()
                .stack_size(2 << 20)
                .spawn(move || glob::matches(&pattern, &text))
                .expect("spawn")
                .join()
                .expect("no panic");
            assert!(matched);
        },
    );
}
