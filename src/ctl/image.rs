//! The guest image on disk: the configured kernel and initrd, and the
//! manifest `kata-guest-image` writes beside the initrd, compared with the
//! running kernel.
//!
//! The builder writes `<out>/<kver>/kata.initrd` and
//! `<out>/<kver>/manifest.json` and points the stable `<out>/kata.initrd`
//! symlink into `<kver>/`, so the manifest is found next to wherever the
//! configured initrd resolves to.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::Check;

/// The builder's manifest file name. Repeated here rather than taken from
/// `kata-guest-image`, which the shim does not link: the shim only reads
/// two fields of it.
pub const MANIFEST_NAME: &str = "manifest.json";

const BUILD_HINT: &str = "build the guest image with kata-guest-image (or make image)";

/// The fields of the builder's manifest that `check` compares; the rest is
/// ignored so a newer builder's additions do not break an older `kata-ctl`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ManifestHead {
    /// Kernel release the image was built for.
    pub kernel_release: String,
    /// Kernel image the builder took the release from.
    pub kernel_path: PathBuf,
}

/// The manifest beside the file `initrd` resolves to, when it resolves.
pub fn manifest_path(initrd: &Path) -> Option<PathBuf> {
    let target = std::fs::canonicalize(initrd).ok()?;
    Some(target.parent()?.join(MANIFEST_NAME))
}

/// Reads the manifest; the error is a sentence for the report.
pub fn read_manifest(path: &Path) -> Result<ManifestHead, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("cannot parse {}: {e}", path.display()))
}

/// `ok` or `fail` for one configured image file (`what` is the check name:
/// `kernel` or `initrd`), naming the symlink's target when it is one.
pub fn file_check(what: &'static str, key: &str, path: &Path) -> Check {
    match std::fs::canonicalize(path) {
        Ok(target) if target.is_file() => {
            if target == path {
                Check::ok(what, path.display().to_string())
            } else {
                Check::ok(what, format!("{} -> {}", path.display(), target.display()))
            }
        }
        _ => Check::fail(
            what,
            format!(
                "guest {what} {} (hypervisor.qemu.{key}) does not exist",
                path.display()
            ),
            format!("{BUILD_HINT}, or point hypervisor.qemu.{key} at an existing file"),
        ),
    }
}

/// Facts about the image for [`judge`].
#[derive(Debug, Clone)]
pub struct ImageFacts {
    /// Where the manifest was looked for (`None`: the initrd did not resolve).
    pub manifest_path: Option<PathBuf>,
    pub manifest: Result<ManifestHead, String>,
    /// The configured kernel with symlinks resolved.
    pub kernel_target: Option<PathBuf>,
    /// `uname -r`.
    pub running_release: String,
    /// The running kernel's image is installed where the builder looks.
    pub running_on_disk: bool,
}

/// The `image` verdict: which kernel the image was built for, against the
/// running one. A mismatch is only a warning (the guest runs its own
/// kernel), but the operator expects `uname -r` in a pod to match the node.
pub fn judge(f: &ImageFacts) -> Check {
    let m = match &f.manifest {
        Ok(m) => m,
        Err(why) => {
            let where_ = f
                .manifest_path
                .as_ref()
                .map_or("no manifest".to_string(), |p| p.display().to_string());
            return Check::warn(
                "image",
                format!("cannot tell which kernel the image was built for ({where_}: {why})"),
                format!("rebuild it: {BUILD_HINT}"),
            );
        }
    };
    if let Some(k) = f.kernel_target.as_ref().filter(|k| **k != m.kernel_path) {
        return Check::warn(
            "image",
            format!(
                "the configured kernel {} is not the kernel the initrd was built from ({}, {}); \
                 the guest may fail to load the initrd's modules",
                k.display(),
                m.kernel_path.display(),
                m.kernel_release
            ),
            format!(
                "point hypervisor.qemu.kernel at the builder's kata.kernel link, or {BUILD_HINT}"
            ),
        );
    }
    let (built, running) = (&m.kernel_release, &f.running_release);
    if built == running {
        return Check::ok("image", format!("built for {built}, the running kernel"));
    }
    if f.running_on_disk {
        Check::warn(
            "image",
            format!(
                "built for {built} but the host runs {running}, whose kernel is installed: \
                 the image is stale and pods run {built}"
            ),
            "rerun kata-guest-image to build from the running kernel (or make image)",
        )
    } else {
        Check::warn(
            "image",
            format!(
                "built for {built} but the host runs {running}, which has no kernel image on disk \
                 (no /lib/modules/{running}/vmlinuz or /boot/vmlinuz-{running}), \
                 so pods run {built}"
            ),
            format!(
                "install the linux-image package for {running} \
                 (Debian: apt-get install linux-image-{running}) and rerun kata-guest-image"
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ctl::Status;

    fn facts(built: &str, running: &str, on_disk: bool) -> ImageFacts {
        ImageFacts {
            manifest_path: Some("/img/6.12/manifest.json".into()),
            manifest: Ok(ManifestHead {
                kernel_release: built.into(),
                kernel_path: format!("/boot/vmlinuz-{built}").into(),
            }),
            kernel_target: Some(format!("/boot/vmlinuz-{built}").into()),
            running_release: running.into(),
            running_on_disk: on_disk,
        }
    }

    #[test]
    fn same_release_is_ok() {
        let c = judge(&facts("6.12.95+deb12-amd64", "6.12.95+deb12-amd64", true));
        assert_eq!(c.status, Status::Ok);
        assert!(c.message.contains("6.12.95+deb12-amd64"), "{c:?}");
    }

    #[test]
    fn mismatch_names_both_releases_and_the_package() {
        let c = judge(&facts("6.12.95+deb12-amd64", "6.18.44-fc", false));
        assert_eq!(c.status, Status::Warn);
        assert!(c.message.contains("built for 6.12.95+deb12-amd64"), "{c:?}");
        assert!(c.message.contains("host runs 6.18.44-fc"), "{c:?}");
        assert!(c.message.contains("no kernel image on disk"), "{c:?}");
        let fix = c.fix.expect("fix");
        assert!(fix.contains("linux-image-6.18.44-fc"), "{fix}");
        assert!(fix.contains("kata-guest-image"), "{fix}");
    }

    #[test]
    fn mismatch_with_the_running_kernel_installed_says_rebuild() {
        let c = judge(&facts("6.12.1", "6.12.2", true));
        assert_eq!(c.status, Status::Warn);
        assert!(c.message.contains("stale"), "{c:?}");
        assert!(c.fix.expect("fix").starts_with("rerun kata-guest-image"));
    }

    #[test]
    fn kernel_from_another_build_is_named() {
        let mut f = facts("6.12.1", "6.12.1", true);
        f.kernel_target = Some("/boot/vmlinuz-6.1.0".into());
        let c = judge(&f);
        assert_eq!(c.status, Status::Warn);
        assert!(c.message.contains("/boot/vmlinuz-6.1.0"), "{c:?}");
    }

    #[test]
    fn unreadable_manifest_warns() {
        let mut f = facts("x", "x", true);
        f.manifest = Err("cannot read /img/6.12/manifest.json: gone".into());
        let c = judge(&f);
        assert_eq!(c.status, Status::Warn);
        assert!(c.message.contains("gone"), "{c:?}");
    }

    #[test]
    fn manifest_is_found_through_the_stable_symlink() {
        let dir = tempfile::tempdir().expect("tempdir");
        let kdir = dir.path().join("6.12.95+deb12-amd64");
        std::fs::create_dir(&kdir).expect("mkdir");
        std::fs::write(kdir.join("kata.initrd"), b"x").expect("initrd");
        std::fs::write(
            kdir.join(MANIFEST_NAME),
            r#"{"format_version": 1, "kernel_release": "6.12.95+deb12-amd64",
                "kernel_path": "/boot/vmlinuz-6.12.95+deb12-amd64", "modules": []}"#,
        )
        .expect("manifest");
        let link = dir.path().join("kata.initrd");
        std::os::unix::fs::symlink("6.12.95+deb12-amd64/kata.initrd", &link).expect("link");

        let path = manifest_path(&link).expect("resolves");
        let m = read_manifest(&path).expect("parses");
        assert_eq!(m.kernel_release, "6.12.95+deb12-amd64");
        assert_eq!(file_check("initrd", "initrd", &link).status, Status::Ok);

        let missing = dir.path().join("none.initrd");
        assert_eq!(manifest_path(&missing), None);
        let c = file_check("initrd", "initrd", &missing);
        assert_eq!(c.status, Status::Fail);
        assert!(c.message.contains(&missing.display().to_string()), "{c:?}");
        assert!(c.fix.expect("fix").contains("kata-guest-image"));
    }
}
