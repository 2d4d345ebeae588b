//! Kernel module selection: which modules the guest needs, and resolving
//! them through `modules.dep` / `modules.builtin` into a load order with
//! every dependency before its dependents.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

use thiserror::Error;

/// Modules the guest cannot work without.
///
/// vsock carries the agent's ttrpc; `virtio_console` gives `hvc0` for logs;
/// virtio-fs and 9p are the two shared-filesystem choices; overlay builds
/// container rootfs; `virtio_net` and `virtio_blk` carry pod networking and
/// block volumes.
pub const REQUIRED: &[&str] = &[
    "vmw_vsock_virtio_transport",
    "virtio_console",
    "virtiofs",
    "9p",
    "9pnet_virtio",
    "overlay",
    "virtio_net",
    "virtio_blk",
];

/// Packed when the kernel has them, skipped silently when it does not.
///
/// `virtio_rng` seeds the guest CRNG from the host so early `getrandom`
/// never stalls. `bridge` lets a container given CAP_NET_ADMIN make a
/// bridge (`brctl addbr`, as critest's capability and privileged specs
/// do, and as CNI-in-a-pod setups need); the guest has no modprobe, so a
/// module that is not packed can never be loaded on demand. It loads in
/// the agent's background pass, off the boot path. `virtio_scsi`/`sd_mod` are deliberately absent: the shim
/// attaches block volumes with virtio-blk, and `scsi_mod` would add ~1 MiB
/// and a slow module load to every boot for a path nobody uses.
pub const OPTIONAL: &[&str] = &["virtio_rng", "bridge"];

/// Resolution failures.
#[derive(Debug, Error)]
pub enum ModuleError {
    /// A required module is neither built in nor a file in `modules.dep`.
    #[error("kernel {release} lacks required module {name}: it is neither in modules.builtin nor in modules.dep (under {}); reinstall the kernel's package or use a kernel that has it (e.g. `{}`)", .dir.display(), crate::kernel::INSTALL_HINT)]
    Missing {
        /// Kernel release.
        release: String,
        /// Module name.
        name: String,
        /// The modules directory searched.
        dir: PathBuf,
    },
    /// `modules.dep` names a dependency that has no entry of its own.
    #[error("modules.dep lists {dep} (needed by {by}) but has no entry for it")]
    DanglingDep {
        /// The missing dependency path.
        dep: String,
        /// The module that needs it.
        by: String,
    },
    /// Reading an index failed.
    #[error("reading {}: {source}", .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// Canonical module name of a path: basename without `.ko[.*]`, `-` as `_`
/// (the kernel treats them as equal; `virtio-rng.ko` is module `virtio_rng`).
pub fn module_name(path: &str) -> String {
    let base = path.rsplit('/').next().unwrap_or(path);
    let stem = base.find(".ko").map_or(base, |i| &base[..i]);
    stem.replace('-', "_")
}

/// The parsed `modules.dep` + `modules.builtin` of one kernel.
#[derive(Debug, Default)]
pub struct ModuleDb {
    /// Relative path -> relative paths it depends on.
    deps: HashMap<String, Vec<String>>,
    /// Module name -> relative path.
    by_name: HashMap<String, String>,
    /// Names of built-in modules.
    builtin: HashSet<String>,
}

/// The result of resolving a module list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolution {
    /// Relative paths (as in `modules.dep`), dependencies first.
    pub files: Vec<String>,
    /// Requested modules that are built into the kernel.
    pub builtin: Vec<String>,
    /// Optional modules this kernel does not have.
    pub absent_optional: Vec<String>,
}

impl ModuleDb {
    /// Parses index texts (separate from I/O so tests can feed strings).
    pub fn parse(modules_dep: &str, modules_builtin: &str) -> Self {
        let mut db = ModuleDb::default();
        for line in modules_dep.lines() {
            let Some((path, deps)) = line.split_once(':') else {
                continue;
            };
            let path = path.trim().to_string();
            if path.is_empty() {
                continue;
            }
            let deps = deps.split_whitespace().map(str::to_string).collect();
            db.by_name.insert(module_name(&path), path.clone());
            db.deps.insert(path, deps);
        }
        db.builtin = modules_builtin
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(module_name)
            .collect();
        db
    }

    /// Loads `modules.dep` and (if present) `modules.builtin` from a kernel's
    /// module directory.
    pub fn load(dir: &Path) -> Result<Self, ModuleError> {
        let read = |name: &str, optional: bool| -> Result<String, ModuleError> {
            let path = dir.join(name);
            match fs::read_to_string(&path) {
                Ok(s) => Ok(s),
                Err(e) if optional && e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
                Err(source) => Err(ModuleError::Io { path, source }),
            }
        };
        Ok(Self::parse(
            &read("modules.dep", false)?,
            &read("modules.builtin", true)?,
        ))
    }

    /// Resolves required and optional modules into a dependency-ordered list.
    pub fn resolve(
        &self,
        release: &str,
        dir: &Path,
        required: &[&str],
        optional: &[&str],
    ) -> Result<Resolution, ModuleError> {
        let mut res = Resolution {
            files: Vec::new(),
            builtin: Vec::new(),
            absent_optional: Vec::new(),
        };
        // Done = emitted; on_stack guards against cycles in a corrupt index,
        // which would otherwise recurse forever.
        let mut done = HashSet::new();
        let mut on_stack = HashSet::new();
        let wanted = required
            .iter()
            .map(|n| (n, true))
            .chain(optional.iter().map(|n| (n, false)));
        for (name, is_required) in wanted {
            let canon = module_name(name);
            if self.builtin.contains(&canon) {
                res.builtin.push(canon);
                continue;
            }
            match self.by_name.get(&canon) {
                Some(path) => self.visit(path, &mut done, &mut on_stack, &mut res.files)?,
                None if is_required => {
                    return Err(ModuleError::Missing {
                        release: release.to_string(),
                        name: canon,
                        dir: dir.to_path_buf(),
                    });
                }
                None => res.absent_optional.push(canon),
            }
        }
        Ok(res)
    }

    fn visit(
        &self,
        path: &str,
        done: &mut HashSet<String>,
        on_stack: &mut HashSet<String>,
        out: &mut Vec<String>,
    ) -> Result<(), ModuleError> {
        if done.contains(path) || !on_stack.insert(path.to_string()) {
            return Ok(());
        }
        for dep in self.deps.get(path).map(Vec::as_slice).unwrap_or_default() {
            if !self.deps.contains_key(dep) {
                return Err(ModuleError::DanglingDep {
                    dep: dep.clone(),
                    by: path.to_string(),
                });
            }
            self.visit(dep, done, on_stack, out)?;
        }
        on_stack.remove(path);
        done.insert(path.to_string());
        out.push(path.to_string());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/net/vmw_vsock/vmw_vsock_virtio_transport.ko.xz: kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko.xz kernel/net/vmw_vsock/vsock.ko.xz
kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko.xz: kernel/net/vmw_vsock/vsock.ko.xz
kernel/net/vmw_vsock/vsock.ko.xz:
kernel/fs/9p/9p.ko.xz: kernel/net/9p/9pnet.ko.xz kernel/fs/netfs/netfs.ko.xz
kernel/net/9p/9pnet_virtio.ko.xz: kernel/net/9p/9pnet.ko.xz kernel/fs/netfs/netfs.ko.xz
kernel/net/9p/9pnet.ko.xz: kernel/fs/netfs/netfs.ko.xz
kernel/fs/netfs/netfs.ko.xz:
kernel/drivers/char/hw_random/virtio-rng.ko.xz:
kernel/fs/overlayfs/overlay.ko.xz:
";
    const BUILTIN: &str = "kernel/fs/fuse/virtiofs.ko\nkernel/drivers/char/virtio_console.ko\n";

    fn pos(files: &[String], name: &str) -> usize {
        files
            .iter()
            .position(|f| module_name(f) == name)
            .expect(name)
    }

    #[test]
    fn dependencies_come_first_and_builtins_need_no_file() {
        let db = ModuleDb::parse(DEP, BUILTIN);
        let req = [
            "vmw_vsock_virtio_transport",
            "virtio_console",
            "virtiofs",
            "9p",
            "9pnet_virtio",
        ];
        let r = db
            .resolve(
                "6.12",
                Path::new("/x"),
                &req,
                &["virtio_rng", "virtio_scsi"],
            )
            .expect("ok");
        assert_eq!(r.builtin, ["virtio_console", "virtiofs"]);
        assert_eq!(r.absent_optional, ["virtio_scsi"]);
        let f = &r.files;
        assert!(pos(f, "vsock") < pos(f, "vmw_vsock_virtio_transport_common"));
        assert!(pos(f, "vmw_vsock_virtio_transport_common") < pos(f, "vmw_vsock_virtio_transport"));
        assert!(pos(f, "netfs") < pos(f, "9pnet"));
        assert!(pos(f, "9pnet") < pos(f, "9p"));
        assert!(pos(f, "9pnet") < pos(f, "9pnet_virtio"));
        assert!(f.iter().any(|p| p.ends_with("virtio-rng.ko.xz")));
        // Shared deps appear once.
        let unique: HashSet<_> = f.iter().collect();
        assert_eq!(unique.len(), f.len());
        assert_eq!(f.len(), 8);
    }

    #[test]
    fn missing_required_module_is_named() {
        let db = ModuleDb::parse(DEP, BUILTIN);
        let err = db
            .resolve(
                "6.12",
                Path::new("/lib/modules/6.12"),
                &["overlay", "virtio_blk"],
                &[],
            )
            .expect_err("missing");
        let msg = err.to_string();
        assert!(msg.contains("virtio_blk") && msg.contains("6.12"), "{msg}");
        assert!(msg.contains("apt-get install"), "the fix is named: {msg}");
    }

    #[test]
    fn cycles_terminate() {
        let dep = "a.ko: b.ko\nb.ko: c.ko\nc.ko: a.ko\n";
        let db = ModuleDb::parse(dep, "");
        let r = db
            .resolve("x", Path::new("/x"), &["a"], &[])
            .expect("resolves");
        assert_eq!(r.files.len(), 3);
        assert_eq!(r.files.last().map(String::as_str), Some("a.ko"));
    }

    #[test]
    fn dangling_dependency_is_an_error() {
        let db = ModuleDb::parse("a.ko: gone.ko\n", "");
        assert!(matches!(
            db.resolve("x", Path::new("/x"), &["a"], &[]),
            Err(ModuleError::DanglingDep { .. })
        ));
    }

    #[test]
    fn names_are_canonical() {
        assert_eq!(
            module_name("kernel/drivers/char/hw_random/virtio-rng.ko.xz"),
            "virtio_rng"
        );
        assert_eq!(module_name("kernel/fs/9p/9p.ko.zst"), "9p");
        assert_eq!(module_name("overlay.ko"), "overlay");
    }
}
