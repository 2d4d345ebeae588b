//! Compression: choosing the initrd codec from the kernel's own config,
//! compressing the archive, and decompressing kernel modules (`.ko.xz`,
//! `.ko.zst`, `.ko.gz`) so the guest can `finit_module` plain `.ko` files
//! without in-kernel module decompression support.

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// zstd level for the initrd. Level 9 keeps a build of the full image well
/// under a second on one core while staying within a few percent of level 19;
/// the kernel's decompression speed is the same at every level.
const ZSTD_LEVEL: i32 = 9;

/// Initrd codecs the builder can produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// zstd (`CONFIG_RD_ZSTD`), preferred: fastest for the kernel to unpack.
    Zstd,
    /// gzip (`CONFIG_RD_GZIP`), universally available fallback.
    Gzip,
}

impl std::fmt::Display for Compression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Compression::Zstd => "zstd",
            Compression::Gzip => "gzip",
        })
    }
}

/// Compression failures.
#[derive(Debug, Error)]
pub enum CompressError {
    /// The kernel config enables neither initrd codec we can write.
    #[error(
        "kernel config enables neither CONFIG_RD_ZSTD nor CONFIG_RD_GZIP; cannot produce an initrd this kernel can unpack"
    )]
    NoSupportedCodec,
    /// A module file has a suffix we do not know.
    #[error("unsupported module compression for {0}")]
    UnknownModuleSuffix(String),
    /// Decoding a compressed module failed.
    #[error("decompressing {path}: {reason}")]
    Decode {
        /// The module file.
        path: String,
        /// What the decoder said.
        reason: String,
    },
    /// Data does not start with a zstd or gzip header.
    #[error("initrd is neither zstd nor gzip compressed")]
    UnknownInitrdFormat,
    /// I/O from the codec.
    #[error("compression I/O: {0}")]
    Io(#[from] io::Error),
}

fn config_enabled(config: &str, key: &str) -> bool {
    config.lines().any(|l| {
        let l = l.trim();
        l.strip_prefix(key)
            .and_then(|rest| rest.strip_prefix('='))
            .is_some_and(|v| v == "y")
    })
}

/// Picks the initrd codec from the text of a kernel `.config`.
pub fn choose(config: &str) -> Result<Compression, CompressError> {
    if config_enabled(config, "CONFIG_RD_ZSTD") {
        Ok(Compression::Zstd)
    } else if config_enabled(config, "CONFIG_RD_GZIP") {
        Ok(Compression::Gzip)
    } else {
        Err(CompressError::NoSupportedCodec)
    }
}

/// Compresses a finished archive.
pub fn compress(codec: Compression, data: &[u8]) -> Result<Vec<u8>, CompressError> {
    match codec {
        Compression::Zstd => {
            let mut enc =
                zstd::stream::Encoder::new(Vec::with_capacity(data.len() / 3), ZSTD_LEVEL)?;
            // The content size lets the decoder size buffers; the checksum lets
            // the kernel reject a corrupted initrd instead of booting garbage.
            enc.include_contentsize(true)?;
            enc.set_pledged_src_size(Some(data.len() as u64))?;
            enc.include_checksum(true)?;
            enc.write_all(data)?;
            Ok(enc.finish()?)
        }
        Compression::Gzip => {
            let mut enc = flate2::write::GzEncoder::new(
                Vec::with_capacity(data.len() / 3),
                flate2::Compression::best(),
            );
            enc.write_all(data)?;
            Ok(enc.finish()?)
        }
    }
}

/// Detects the codec from magic bytes and decompresses an initrd.
pub fn decompress_initrd(data: &[u8]) -> Result<Vec<u8>, CompressError> {
    let mut out = Vec::new();
    if data.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        zstd::stream::Decoder::new(data)?.read_to_end(&mut out)?;
    } else if data.starts_with(&[0x1f, 0x8b]) {
        flate2::read::GzDecoder::new(data).read_to_end(&mut out)?;
    } else {
        return Err(CompressError::UnknownInitrdFormat);
    }
    Ok(out)
}

/// Module file suffixes, longest first, and whether each is compressed.
const MODULE_SUFFIXES: [&str; 4] = [".ko.xz", ".ko.zst", ".ko.gz", ".ko"];

/// Strips the compression suffix: `a/b.ko.xz` -> `a/b.ko`.
pub fn plain_module_path(path: &str) -> Option<String> {
    MODULE_SUFFIXES
        .iter()
        .find_map(|s| path.strip_suffix(s))
        .map(|stem| format!("{stem}.ko"))
}

/// Decompresses a module according to its file name.
pub fn decompress_module(path: &str, data: &[u8]) -> Result<Vec<u8>, CompressError> {
    let decode_err = |e: &dyn std::fmt::Display| CompressError::Decode {
        path: path.to_string(),
        reason: e.to_string(),
    };
    let mut out = Vec::with_capacity(data.len() * 3);
    if path.ends_with(".ko.xz") {
        lzma_rs::xz_decompress(&mut io::BufReader::new(data), &mut out)
            .map_err(|e| decode_err(&e))?;
    } else if path.ends_with(".ko.zst") {
        zstd::stream::Decoder::new(data)
            .and_then(|mut d| d.read_to_end(&mut out))
            .map_err(|e| decode_err(&e))?;
    } else if path.ends_with(".ko.gz") {
        flate2::read::GzDecoder::new(data)
            .read_to_end(&mut out)
            .map_err(|e| decode_err(&e))?;
    } else if path.ends_with(".ko") {
        out.extend_from_slice(data);
    } else {
        return Err(CompressError::UnknownModuleSuffix(path.to_string()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefers_zstd_then_gzip() {
        let both = "# comment\nCONFIG_RD_GZIP=y\nCONFIG_RD_ZSTD=y\n";
        assert_eq!(choose(both).expect("codec"), Compression::Zstd);
        let gz = "CONFIG_RD_GZIP=y\n# CONFIG_RD_ZSTD is not set\n";
        assert_eq!(choose(gz).expect("codec"), Compression::Gzip);
        // Modules (=m) cannot unpack the initramfs; look-alike keys do not count.
        let none = "CONFIG_RD_ZSTD=m\nCONFIG_RD_GZIPX=y\nCONFIG_RD_XZ=y\n";
        assert!(matches!(choose(none), Err(CompressError::NoSupportedCodec)));
    }

    #[test]
    fn compress_round_trips_both_codecs() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        for codec in [Compression::Zstd, Compression::Gzip] {
            let c = compress(codec, &data).expect("compress");
            assert!(c.len() < data.len() / 4, "{codec} did not compress");
            assert_eq!(decompress_initrd(&c).expect("decompress"), data);
        }
        assert!(decompress_initrd(b"plain").is_err());
    }

    #[test]
    fn module_paths_and_codecs() {
        assert_eq!(
            plain_module_path("kernel/a/b.ko.xz").as_deref(),
            Some("kernel/a/b.ko")
        );
        assert_eq!(
            plain_module_path("kernel/a/b.ko.zst").as_deref(),
            Some("kernel/a/b.ko")
        );
        assert_eq!(
            plain_module_path("kernel/a/b.ko").as_deref(),
            Some("kernel/a/b.ko")
        );
        assert_eq!(plain_module_path("kernel/a/b.o"), None);

        let payload = b"\x7fELF module body".repeat(50);
        let zst = zstd::encode_all(&payload[..], 3).expect("zstd");
        assert_eq!(decompress_module("m.ko.zst", &zst).expect("zst"), payload);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&payload).expect("gz write");
        let gz = gz.finish().expect("gz finish");
        assert_eq!(decompress_module("m.ko.gz", &gz).expect("gz"), payload);
        let mut xz = Vec::new();
        lzma_rs::xz_compress(&mut &payload[..], &mut xz).expect("xz");
        assert_eq!(decompress_module("m.ko.xz", &xz).expect("xz"), payload);
        assert_eq!(decompress_module("m.ko", &payload).expect("plain"), payload);
        assert!(decompress_module("m.ko.xz", b"garbage").is_err());
        assert!(decompress_module("m.bin", b"x").is_err());
    }
}
