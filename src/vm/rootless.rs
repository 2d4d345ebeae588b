//! Unprivileged host identities for a VM's processes (Kata's `rootless`).
//!
//! With `[hypervisor.qemu] rootless = true`, QEMU and vhost-device-vsock run
//! as a uid and gid of their own, claimed per sandbox from the configured
//! range: no capabilities, no supplementary groups but /dev/kvm's, and no
//! way to gain privileges again. virtiofsd keeps root inside its own
//! sandbox (namespaces, seccomp, its reduced capability set): it serves the
//! image's files with their owners, which no unprivileged process can do.
//!
//! One uid per sandbox, not one for all: processes of one uid may ptrace
//! and signal each other and read each other's `/proc/<pid>/mem`, so a
//! shared uid would open every pod's guest memory to one broken-out QEMU.
//!
//! Claims are symlinks `<uid>` → `<sandbox id>` in [`CLAIMS`], made and
//! removed under an exclusive lock on [`RUN_ROOT`], so no two sandboxes
//! hold one uid. A claim whose sandbox has no state directory any more is
//! stale and is taken over; a uid that a live process runs as is never
//! handed out, whatever the claims say.

use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use crate::layout::RUN_ROOT;

/// The claims directory; a dot name, which no sandbox id can have.
pub const CLAIMS: &str = "/run/kata/.vmm-users";

/// Errors of claiming an identity or checking what it may read.
#[derive(Debug, thiserror::Error)]
pub enum RootlessError {
    #[error(
        "rootless: no free uid from {first} to {last} (hypervisor.qemu.rootless_first_uid and \
         rootless_uids): each is claimed by a sandbox or used by a running process"
    )]
    Exhausted { first: u32, last: u32 },
    #[error("rootless: cannot claim a uid in {dir}")]
    Claim {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "rootless: the VM's unprivileged user cannot use {path} ({why}); make it and the \
         directories above it usable by others, or set hypervisor.qemu.rootless = false"
    )]
    Unreadable { path: PathBuf, why: String },
    #[error(
        "rootless: the share would be 9p (no virtiofsd found), which an unprivileged QEMU \
         cannot serve; install virtiofsd or set hypervisor.qemu.rootless = false"
    )]
    NinePShare,
}

/// The identity one sandbox's VM processes run as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmmUser {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups: /dev/kvm's group under KVM, else none.
    pub groups: Vec<u32>,
}

impl VmmUser {
    /// Claims a free uid of `first..first + count` for `sandbox_id`, whose
    /// state directory must already exist (it is what keeps the claim
    /// from looking stale).
    pub fn claim(
        sandbox_id: &str,
        first: u32,
        count: u32,
        kvm_group: Option<u32>,
    ) -> Result<VmmUser, RootlessError> {
        let uid = Claims::node().claim(sandbox_id, first, count, &uids_in_use())?;
        Ok(VmmUser {
            uid,
            gid: uid,
            groups: kvm_group.into_iter().collect(),
        })
    }

    /// Makes `cmd` drop to this identity just before exec, after the
    /// pre-exec steps registered before this one (joining the cgroup and
    /// the network namespace need root).
    pub fn apply(&self, cmd: &mut tokio::process::Command) {
        let (uid, gid) = (self.uid, self.gid);
        let groups: Vec<libc::gid_t> = self.groups.clone();
        // SAFETY: the closure runs in the forked child before exec and only
        // makes the async-signal-safe calls setgroups(2), setresgid(2),
        // setresuid(2) and prctl(2) on values captured before the fork.
        unsafe {
            cmd.pre_exec(move || {
                let ok = |r: libc::c_int| {
                    if r == -1 {
                        Err(io::Error::last_os_error())
                    } else {
                        Ok(())
                    }
                };
                ok(libc::setgroups(groups.len(), groups.as_ptr()))?;
                ok(libc::setresgid(gid, gid, gid))?;
                ok(libc::setresuid(uid, uid, uid))?;
                ok(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))
            });
        }
    }
}

/// Releases whatever uid `sandbox_id` holds; called once its processes are
/// gone. Idempotent, and quiet when it holds none.
pub fn release(sandbox_id: &str) {
    if let Err(e) = Claims::node().release(sandbox_id) {
        tracing::warn!(sandbox_id, error = %e, "cannot release the sandbox's rootless uid");
    }
}

/// The group that owns /dev/kvm, which a rootless QEMU needs under KVM.
pub fn kvm_group() -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/dev/kvm").ok().map(|m| m.gid())
}

/// What an unprivileged process must be able to do with a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Execute,
}

/// Checks that a process with no privileges and no group of the file's can
/// read or execute `path`: every directory on the way searchable by others
/// and the file readable (executable) by others. QEMU would otherwise fail
/// at boot with a bare "could not load kernel", a helper with EACCES.
pub fn check_usable_by_others(path: &Path, access: Access) -> Result<(), RootlessError> {
    use std::os::unix::fs::PermissionsExt;
    let unreadable = |why: String| RootlessError::Unreadable {
        path: path.to_path_buf(),
        why,
    };
    let real = std::fs::canonicalize(path).map_err(|e| unreadable(e.to_string()))?;
    let mode = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.permissions().mode())
            .map_err(|e| unreadable(format!("{}: {e}", p.display())))
    };
    // QEMU opens the path as configured, so the directories on the way to
    // a symlink count as much as those on the way to its target.
    let given = std::path::absolute(path).map_err(|e| unreadable(e.to_string()))?;
    let dirs = given.ancestors().skip(1).chain(real.ancestors().skip(1));
    for dir in dirs {
        if mode(dir)? & 0o001 == 0 {
            return Err(unreadable(format!(
                "directory {} is not searchable by others",
                dir.display()
            )));
        }
    }
    let (bit, what) = match access {
        Access::Read => (0o004, "readable"),
        Access::Execute => (0o001, "executable"),
    };
    if mode(&real)? & bit == 0 {
        return Err(unreadable(format!(
            "{} is not {what} by others",
            real.display()
        )));
    }
    Ok(())
}

/// The uids any process on the host runs as (real, effective, saved or
/// filesystem).
fn uids_in_use() -> HashSet<u32> {
    let mut uids = HashSet::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return uids;
    };
    for entry in procs.flatten() {
        if !entry
            .file_name()
            .as_encoded_bytes()
            .iter()
            .all(u8::is_ascii_digit)
        {
            continue;
        }
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else {
            continue;
        };
        if let Some(line) = status.lines().find_map(|l| l.strip_prefix("Uid:")) {
            uids.extend(
                line.split_whitespace()
                    .filter_map(|u| u.parse::<u32>().ok()),
            );
        }
    }
    uids
}

/// The claims directory and the directory whose sandboxes keep claims
/// alive; separate from [`CLAIMS`] so that tests can use their own.
struct Claims {
    dir: PathBuf,
    run_root: PathBuf,
}

impl Claims {
    fn node() -> Claims {
        Claims {
            dir: PathBuf::from(CLAIMS),
            run_root: PathBuf::from(RUN_ROOT),
        }
    }

    fn error(&self, source: io::Error) -> RootlessError {
        RootlessError::Claim {
            dir: self.dir.clone(),
            source,
        }
    }

    /// An exclusive lock on the run root, held while claims change: the
    /// claims directory itself is removed when empty.
    fn lock(&self) -> Result<Flock<std::fs::File>, RootlessError> {
        std::fs::create_dir_all(&self.run_root).map_err(|e| self.error(e))?;
        let f = std::fs::File::open(&self.run_root).map_err(|e| self.error(e))?;
        Flock::lock(f, FlockArg::LockExclusive).map_err(|(_, e)| self.error(e.into()))
    }

    fn claim(
        &self,
        sandbox_id: &str,
        first: u32,
        count: u32,
        busy: &HashSet<u32>,
    ) -> Result<u32, RootlessError> {
        use std::os::unix::fs::DirBuilderExt;
        let _lock = self.lock()?;
        match std::fs::DirBuilder::new().mode(0o700).create(&self.dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(self.error(e)),
        }
        // Start where the id hashes to, so that restarts of one sandbox
        // and neighbours do not all probe from the first uid.
        let start = sandbox_id
            .bytes()
            .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)))
            % count;
        for i in 0..count {
            let uid = first + (start + i) % count;
            if busy.contains(&uid) {
                continue;
            }
            let link = self.dir.join(uid.to_string());
            match std::os::unix::fs::symlink(sandbox_id, &link) {
                Ok(()) => return Ok(uid),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    if self.is_stale(&link) {
                        std::fs::remove_file(&link).map_err(|e| self.error(e))?;
                        std::os::unix::fs::symlink(sandbox_id, &link).map_err(|e| self.error(e))?;
                        return Ok(uid);
                    }
                }
                Err(e) => return Err(self.error(e)),
            }
        }
        Err(RootlessError::Exhausted {
            first,
            last: first + (count - 1),
        })
    }

    /// A claim is stale when its sandbox's state directory is gone: the
    /// directory is made before the claim and removed after its processes.
    fn is_stale(&self, link: &Path) -> bool {
        match std::fs::read_link(link) {
            Ok(owner) => match owner.to_str() {
                Some(id) if crate::ids::validate(id).is_ok() => !self.run_root.join(id).exists(),
                _ => true,
            },
            Err(_) => false,
        }
    }

    fn release(&self, sandbox_id: &str) -> Result<(), RootlessError> {
        if !self.dir.exists() {
            return Ok(());
        }
        let _lock = self.lock()?;
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(self.error(e)),
        };
        for entry in entries.flatten() {
            let ours = std::fs::read_link(entry.path()).is_ok_and(|o| o == Path::new(sandbox_id));
            if ours {
                match std::fs::remove_file(entry.path()) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(self.error(e)),
                }
            }
        }
        // Gone with the last claim, so that an idle node's /run/kata is
        // empty; a claimer recreates it under the same lock.
        match std::fs::remove_dir(&self.dir) {
            Ok(()) => Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ENOTEMPTY) | Some(libc::EEXIST) | Some(libc::ENOENT)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(self.error(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Node {
        _tmp: tempfile::TempDir,
        claims: Claims,
    }

    fn node() -> Node {
        let tmp = tempfile::tempdir().expect("tempdir");
        let claims = Claims {
            dir: tmp.path().join("run/.vmm-users"),
            run_root: tmp.path().join("run"),
        };
        Node { _tmp: tmp, claims }
    }

    impl Node {
        /// A sandbox that is alive: its state directory exists.
        fn live(&self, id: &str) {
            std::fs::create_dir_all(self.claims.run_root.join(id)).expect("state dir");
        }

        fn gone(&self, id: &str) {
            std::fs::remove_dir(self.claims.run_root.join(id)).expect("remove state dir");
        }

        fn claim(&self, id: &str, count: u32, busy: &[u32]) -> Result<u32, RootlessError> {
            self.claims
                .claim(id, 100_000, count, &busy.iter().copied().collect())
        }
    }

    #[test]
    fn live_sandboxes_get_distinct_uids_within_the_range() {
        let n = node();
        let mut seen = HashSet::new();
        for i in 0..8 {
            let id = format!("sb{i}");
            n.live(&id);
            let uid = n.claim(&id, 8, &[]).expect("claim");
            assert!((100_000..100_008).contains(&uid), "{uid} out of range");
            assert!(seen.insert(uid), "{uid} handed out twice");
        }
        n.live("ninth");
        match n.claim("ninth", 8, &[]) {
            Err(RootlessError::Exhausted { first, last }) => {
                assert_eq!((first, last), (100_000, 100_007))
            }
            other => panic!("expected exhaustion, got {other:?}"),
        }
    }

    #[test]
    fn a_uid_a_process_runs_as_is_never_handed_out() {
        let n = node();
        n.live("a");
        let busy: Vec<u32> = (100_000..100_004).filter(|u| *u != 100_002).collect();
        assert_eq!(n.claim("a", 4, &busy).expect("claim"), 100_002);
        n.live("b");
        assert!(matches!(
            n.claim("b", 4, &busy),
            Err(RootlessError::Exhausted { .. })
        ));
    }

    #[test]
    fn a_stale_claim_is_taken_over_and_a_live_one_is_not() {
        let n = node();
        n.live("old");
        let uid = n.claim("old", 1, &[]).expect("claim");
        n.live("new");
        assert!(
            matches!(n.claim("new", 1, &[]), Err(RootlessError::Exhausted { .. })),
            "a live sandbox keeps its uid"
        );
        // The old sandbox went away without releasing (a killed shim whose
        // directories were cleaned by `delete`).
        n.gone("old");
        assert_eq!(n.claim("new", 1, &[]).expect("take over"), uid);
        let owner = std::fs::read_link(n.claims.dir.join(uid.to_string())).expect("link");
        assert_eq!(owner, Path::new("new"));
    }

    #[test]
    fn release_takes_only_the_sandboxs_own_claim_and_the_empty_directory() {
        let n = node();
        for id in ["a", "b"] {
            n.live(id);
            n.claim(id, 16, &[]).expect("claim");
        }
        n.claims.release("a").expect("release a");
        let left: Vec<_> = std::fs::read_dir(&n.claims.dir)
            .expect("dir")
            .flatten()
            .map(|e| std::fs::read_link(e.path()).expect("link"))
            .collect();
        assert_eq!(left, vec![PathBuf::from("b")]);
        n.claims.release("a").expect("idempotent");
        n.claims.release("b").expect("release b");
        assert!(!n.claims.dir.exists(), "the empty claims directory goes");
        assert!(n.claims.run_root.exists(), "the run root stays");
        n.claims.release("b").expect("nothing to release");
    }

    #[test]
    fn files_others_cannot_use_are_named() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("images");
        std::fs::create_dir(&dir).expect("dir");
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        let file = dir.join("kata.kernel");
        std::fs::write(&file, b"kernel").expect("write");
        let set = |p: &Path, m: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).expect("chmod")
        };
        set(&dir, 0o755);
        set(&file, 0o644);
        let check = check_usable_by_others;
        check(&file, Access::Read).expect("world-readable");
        let e = check(&file, Access::Execute)
            .expect_err("no program")
            .to_string();
        assert!(e.contains("not executable by others"), "{e}");
        set(&file, 0o600);
        let e = check(&file, Access::Read).expect_err("0600").to_string();
        assert!(
            e.contains("not readable by others") && e.contains("kata.kernel"),
            "{e}"
        );
        set(&file, 0o755);
        check(&file, Access::Execute).expect("a program others may run");
        set(&dir, 0o750);
        let e = check(&file, Access::Read)
            .expect_err("0750 dir")
            .to_string();
        assert!(e.contains("is not searchable by others"), "{e}");
        set(&dir, 0o755);
        // A public file reached through a symlink in a private directory.
        let private = tmp.path().join("private");
        std::fs::create_dir(&private).expect("dir");
        set(&private, 0o700);
        let link = private.join("kata.kernel");
        std::os::unix::fs::symlink(&file, &link).expect("symlink");
        let e = check(&link, Access::Read)
            .expect_err("link in a 0700 dir")
            .to_string();
        assert!(e.contains("private is not searchable by others"), "{e}");
        let e = check(&dir.join("missing"), Access::Read).expect_err("missing");
        assert!(matches!(e, RootlessError::Unreadable { .. }));
    }
}
