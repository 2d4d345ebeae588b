//! `/proc/<pid>/mountinfo` fields: the kernel writes space, tab, newline
//! and backslash as `\\ooo` octal escapes. One decoder for the agent.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

/// Decodes a field's octal escapes; anything else, an escape that is not
/// three octal digits or does not fit a byte included, stays as written.
pub fn unescape(field: &str) -> Vec<u8> {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let byte = b
            .get(i + 1..i + 4)
            .filter(|d| b[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)))
            .and_then(|d| {
                let v = d.iter().fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
                u8::try_from(v).ok()
            });
        match byte {
            Some(v) => {
                out.push(v);
                i += 4;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    out
}

/// A path field (mount point, root), decoded byte for byte.
pub fn path(field: &str) -> PathBuf {
    PathBuf::from(OsString::from_vec(unescape(field)))
}

/// A text field (file system type, source), decoded.
pub fn text(field: &str) -> String {
    String::from_utf8_lossy(&unescape(field)).into_owned()
}

/// The mount points at or below `dir` in a mountinfo text, deepest (last
/// mounted) first: the order they can be detached in.
pub fn mount_points_under(mountinfo: &str, dir: &Path) -> Vec<PathBuf> {
    let mut points: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(path)
        .filter(|p| p.starts_with(dir))
        .collect();
    points.reverse();
    points
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_under_a_directory_deepest_first() {
        let text = "30 1 0:2 / / rw - ext4 /dev/vda rw\n\
                    41 30 0:40 / /run/shared rw - virtiofs kataShared rw\n\
                    62 41 0:41 / /run/shared/c1/rootfs rw - virtiofs none rw\n\
                    63 62 0:42 / /run/shared/c1/rootfs/a\\040b rw - tmpfs t rw\n\
                    64 41 0:43 / /run/shared/c10/rootfs rw - virtiofs none rw\n";
        assert_eq!(
            mount_points_under(text, Path::new("/run/shared/c1")),
            vec![
                PathBuf::from("/run/shared/c1/rootfs/a b"),
                PathBuf::from("/run/shared/c1/rootfs"),
            ]
        );
        assert!(mount_points_under(text, Path::new("/nope")).is_empty());
    }

    #[test]
    fn escapes() {
        assert_eq!(text("a\\040b\\011c\\134d"), "a b\tc\\d");
        assert_eq!(text("trailing\\04"), "trailing\\04");
        assert_eq!(text("\\777x"), "\\777x");
        assert_eq!(text("plain"), "plain");
        assert_eq!(path("/a\\040b\\134"), PathBuf::from("/a b\\"));
        assert_eq!(path("/x\\9"), PathBuf::from("/x\\9"));
    }
}
