//! Create options (`config::options::decode`, what `Sandbox::create` runs
//! on `CreateTaskRequest.options`): the hand-written protobuf reader of
//! `runtimeoptions.v1.Options`. Random messages with unknown fields of
//! every wire type must round-trip, mutations must decode or be refused
//! without panicking, and nothing decoded may be larger than the input.

use std::time::Duration;

use super::{Rng, Tally, mutate_bytes, run, show};
use crate::config::options::{RUNTIME_OPTIONS, RuntimeOptions, decode, is_runtime_options};

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn key(out: &mut Vec<u8>, field: u64, wire: u64) {
    varint(out, field << 3 | wire);
}

fn len_delimited(out: &mut Vec<u8>, field: u64, data: &[u8]) {
    key(out, field, 2);
    varint(out, data.len() as u64);
    out.extend_from_slice(data);
}

/// A random valid encoding and the options it must decode to (the last
/// occurrence of a field wins, as in protobuf).
fn encoding(rng: &mut Rng) -> (Vec<u8>, RuntimeOptions) {
    let mut out = Vec::new();
    let mut want = RuntimeOptions::default();
    let texts = [
        "/etc/kata/alt.toml",
        "",
        "relative.toml",
        "\u{e9}\u{20ac}",
        "a\u{0}b",
    ];
    for _ in 0..rng.below(7) {
        match rng.below(7) {
            0 => {
                let t = rng.pick(&texts).to_string();
                len_delimited(&mut out, 1, t.as_bytes());
                want.type_url = t;
            }
            1 | 2 => {
                let t = rng.pick(&texts).to_string();
                len_delimited(&mut out, 2, t.as_bytes());
                want.config_path = t;
            }
            3 => {
                let b = rng.bytes(20);
                len_delimited(&mut out, 3, &b);
                want.config_body = b;
            }
            4 => {
                // Unknown varint or length-delimited fields a newer
                // containerd might add.
                let field = 4 + rng.below(1 << 20) as u64;
                if rng.one_in(2) {
                    key(&mut out, field, 0);
                    varint(&mut out, rng.edgy_u64());
                } else {
                    let b = rng.bytes(10);
                    len_delimited(&mut out, field, &b);
                }
            }
            5 => {
                key(&mut out, 4 + rng.below(100) as u64, 1);
                let b = rng.next().to_le_bytes();
                out.extend_from_slice(&b);
            }
            _ => {
                key(&mut out, 4 + rng.below(100) as u64, 5);
                let b = (rng.next() as u32).to_le_bytes();
                out.extend_from_slice(&b);
            }
        }
    }
    (out, want)
}

#[test]
fn create_options_decode_round_trips_and_refuses_garbage() {
    let urls = [
        RUNTIME_OPTIONS,
        "type.googleapis.com/runtimeoptions.v1.Options",
        "containerd.runc.v1.Options",
        "",
        "runtimeoptions.v1.Options/",
        "x/y/runtimeoptions.v1.Options",
    ];
    let name = "create_options_decode_round_trips_and_refuses_garbage";
    let mut tally = Tally::default();
    run(
        name,
        0x0971_0000_0000_0015,
        20_000,
        Duration::from_secs(1),
        |rng| {
            let url = *rng.pick(&urls);
            let (valid, want) = encoding(rng);
            let ours = is_runtime_options(url);
            assert_eq!(
                ours,
                url.rsplit('/').next() == Some(RUNTIME_OPTIONS),
                "{url}"
            );
            match decode(url, &valid) {
                Ok(Some(got)) => {
                    tally.add(if got.config_path.is_empty() {
                        "no path"
                    } else {
                        "path"
                    });
                    assert!(ours, "{url}");
                    assert_eq!(got, want, "{}", show(&valid));
                    assert_eq!(got.config_path().is_some(), !want.config_path.is_empty());
                }
                Ok(None) => {
                    tally.add("other type");
                    assert!(!ours || (url.is_empty() && valid.is_empty()), "{url}");
                }
                Err(e) => panic!("valid encoding {} refused: {e}", show(&valid)),
            }
            let input = match rng.below(3) {
                0 => rng.bytes(24),
                _ => mutate_bytes(rng, &valid),
            };
            match decode(RUNTIME_OPTIONS, &input) {
                Ok(Some(o)) => {
                    tally.add("mutation decoded");
                    let decoded = o.type_url.len() + o.config_path.len() + o.config_body.len();
                    assert!(
                        decoded <= input.len(),
                        "{decoded} bytes from {}",
                        show(&input)
                    );
                }
                Ok(None) => panic!("options of our own type ignored: {}", show(&input)),
                Err(e) => {
                    tally.add("mutation refused");
                    assert!(!e.is_empty() && e.len() < 100, "{e}");
                    // Refusal is a property of the bytes, not of the run.
                    assert_eq!(decode(RUNTIME_OPTIONS, &input), Err(e));
                }
            }
            // Another type's options are never looked at.
            assert_eq!(decode("containerd.runc.v1.Options", &input), Ok(None));
        },
    );
    let all = [
        "path",
        "no path",
        "other type",
        "mutation decoded",
        "mutation refused",
    ];
    tally.require(name, &all);
}
