//! The configuration file a container manager names in the Create request's
//! `options`: CRI-O's `runtime_config_path` and containerd's runtime option
//! `ConfigPath` both arrive as `Any(runtimeoptions.v1.Options)` (containerd
//! `api/types/runtimeoptions/v1/api.proto`: `type_url = 1`, `config_path =
//! 2`, `config_body = 3`). containerd-shim-protos has no generated type for
//! it, so the three fields are decoded here by hand.
//!
//! Any other options type (for example runc's `containerd.runc.v1.Options`)
//! carries no configuration path and is ignored, as Kata ignores it.

use std::path::PathBuf;

/// The message name; the `Any` type URL is this, with or without a
/// `type.googleapis.com/` style prefix (containerd's `typeurl` sends the
/// bare name, other encoders the prefixed one).
pub const RUNTIME_OPTIONS: &str = "runtimeoptions.v1.Options";

/// The decoded `runtimeoptions.v1.Options`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuntimeOptions {
    pub type_url: String,
    pub config_path: String,
    pub config_body: Vec<u8>,
}

impl RuntimeOptions {
    /// The configuration file named, if any.
    pub fn config_path(&self) -> Option<PathBuf> {
        (!self.config_path.is_empty()).then(|| PathBuf::from(&self.config_path))
    }
}

/// Whether `type_url` names `runtimeoptions.v1.Options`.
pub fn is_runtime_options(type_url: &str) -> bool {
    type_url.rsplit('/').next() == Some(RUNTIME_OPTIONS)
}

/// Decodes the options of a Create request. `Ok(None)`: no options, or
/// options of another type.
pub fn decode(type_url: &str, value: &[u8]) -> Result<Option<RuntimeOptions>, String> {
    if type_url.is_empty() && value.is_empty() {
        return Ok(None);
    }
    if !is_runtime_options(type_url) {
        return Ok(None);
    }
    let mut out = RuntimeOptions::default();
    let mut r = Reader { buf: value, pos: 0 };
    while r.pos < r.buf.len() {
        let key = r.varint()?;
        let (field, wire) = (key >> 3, key & 7);
        match (field, wire) {
            (1, 2) => out.type_url = r.string("type_url")?,
            (2, 2) => out.config_path = r.string("config_path")?,
            (3, 2) => out.config_body = r.bytes()?.to_vec(),
            (0, _) => return Err("field number 0".into()),
            (_, 0) => {
                r.varint()?;
            }
            (_, 1) => r.skip(8)?,
            (_, 2) => {
                r.bytes()?;
            }
            (_, 5) => r.skip(4)?,
            (_, w) => return Err(format!("field {field} has unsupported wire type {w}")),
        }
    }
    Ok(Some(out))
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self.buf.get(self.pos).ok_or("truncated varint")?;
            self.pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("varint longer than 10 bytes".into())
    }

    fn skip(&mut self, n: usize) -> Result<(), String> {
        if self.buf.len() - self.pos < n {
            return Err("truncated field".into());
        }
        self.pos += n;
        Ok(())
    }

    fn bytes(&mut self) -> Result<&'a [u8], String> {
        let len = usize::try_from(self.varint()?).map_err(|_| "length overflows")?;
        let start = self.pos;
        self.skip(len)?;
        Ok(&self.buf[start..start + len])
    }

    fn string(&mut self, name: &str) -> Result<String, String> {
        let b = self.bytes()?;
        String::from_utf8(b.to_vec()).map_err(|_| format!("{name} is not UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `runtimeoptions.v1.Options{config_path: "/etc/kata/alt.toml"}` as Go's
    /// protobuf marshals it (field 2, wire type 2).
    const PATH_ONLY: &[u8] = b"\x12\x12/etc/kata/alt.toml";

    /// All three fields, plus an unknown varint field 9 a newer containerd
    /// might add.
    const ALL_FIELDS: &[u8] = b"\x0a\x04toml\x12\x0b/x/kata.tml\x1a\x03a=1\x48\x96\x01";

    #[test]
    fn decodes_both_type_urls() {
        for url in [
            "runtimeoptions.v1.Options",
            "type.googleapis.com/runtimeoptions.v1.Options",
        ] {
            let o = decode(url, PATH_ONLY)
                .expect("decodes")
                .expect("is options");
            assert_eq!(
                o.config_path(),
                Some(PathBuf::from("/etc/kata/alt.toml")),
                "{url}"
            );
        }
        let o = decode(RUNTIME_OPTIONS, ALL_FIELDS)
            .expect("decodes")
            .expect("is options");
        assert_eq!(
            o,
            RuntimeOptions {
                type_url: "toml".into(),
                config_path: "/x/kata.tml".into(),
                config_body: b"a=1".to_vec(),
            }
        );
    }

    #[test]
    fn other_or_no_options_are_ignored() {
        assert_eq!(decode("", b""), Ok(None));
        // runc's options: `containerd.runc.v1.Options{binary_name: "runc"}`.
        assert_eq!(
            decode("containerd.runc.v1.Options", b"\x32\x04runc"),
            Ok(None)
        );
        let empty = decode(RUNTIME_OPTIONS, b"").expect("ok").expect("options");
        assert_eq!(empty.config_path(), None);
    }

    #[test]
    fn malformed_bytes_are_errors() {
        for bad in [
            &b"\x12\x20/short"[..],
            b"\x12",
            b"\x12\x02\xff\xfe",
            b"\x13",
            b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",
        ] {
            assert!(decode(RUNTIME_OPTIONS, bad).is_err(), "{bad:?}");
        }
    }
}
