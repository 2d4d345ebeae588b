//! Where the pod's host cgroup lies: the hierarchies mounted on this host
//! (from `/proc/self/mountinfo`), `linux.cgroupsPath` in its cgroupfs and
//! systemd forms, and membership as `/proc/<pid>/cgroup` reports it. Pure,
//! so every layout is table-tested without touching the host.

use std::path::{Component, Path, PathBuf};

use super::{CGROUP_ROOT, CgroupError};

/// Longest cgroup directory name the kernel accepts (NAME_MAX).
const NAME_MAX: usize = 255;

/// cgroup v1 (one hierarchy per controller set) or the v2 unified tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    V1,
    V2,
}

/// One mounted hierarchy, from `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Hierarchy {
    pub(super) mountpoint: PathBuf,
    /// The cgroup the mountpoint shows (the mount's root field).
    pub(super) root: PathBuf,
    /// Super options: v1 controllers and `name=`, plus flags like `rw`.
    pub(super) options: Vec<String>,
    pub(super) kind: Kind,
}

impl Hierarchy {
    pub(super) fn has(&self, option: &str) -> bool {
        self.options.iter().any(|o| o == option)
    }

    /// This hierarchy's path in a `/proc/<pid>/cgroup` text.
    pub(super) fn path_in<'a>(&self, proc_cgroup: &'a str) -> Option<&'a str> {
        proc_cgroup.lines().find_map(|line| {
            let mut f = line.splitn(3, ':');
            let (id, controllers, path) = (f.next()?, f.next()?, f.next()?);
            let matches = match self.kind {
                Kind::V2 => id == "0" && controllers.is_empty(),
                Kind::V1 => !controllers.is_empty() && controllers.split(',').all(|c| self.has(c)),
            };
            matches.then_some(path)
        })
    }
}

/// `linux.cgroupsPath` split into validated directory names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Target {
    /// From each hierarchy's root.
    Absolute(Vec<String>),
    /// From the shim's own cgroup in each hierarchy (runc's rule).
    Relative(Vec<String>),
}

pub(super) fn parse_cgroups_path(path: &str) -> Result<Target, CgroupError> {
    let invalid = |reason: &str| CgroupError::InvalidPath {
        path: path.to_string(),
        reason: reason.to_string(),
    };
    if path.contains(['\0', '\n']) {
        return Err(invalid("contains a NUL or newline"));
    }
    if !path.starts_with('/') && path.contains(':') {
        return systemd_path(path)
            .map(Target::Absolute)
            .map_err(|reason| invalid(&reason));
    }
    let parts: Vec<String> = path
        .split('/')
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect();
    if let Some(bad) = parts.iter().find(|p| *p == "." || *p == "..") {
        return Err(invalid(&format!("has a {bad:?} component")));
    }
    if parts.iter().any(|p| p.len() > NAME_MAX) {
        return Err(invalid("has a component longer than 255 bytes"));
    }
    if parts.is_empty() {
        return Err(invalid("names the cgroup root"));
    }
    Ok(if path.starts_with('/') {
        Target::Absolute(parts)
    } else {
        Target::Relative(parts)
    })
}

/// `<slice>:<prefix>:<name>` -> the directories systemd would create: the
/// slice expanded (`a-b.slice` -> `a.slice/a-b.slice`) and the unit
/// `<prefix>-<name>.scope` (or `<name>` itself when it is a slice).
fn systemd_path(path: &str) -> Result<Vec<String>, String> {
    let fields: Vec<&str> = path.split(':').collect();
    let [slice, prefix, name] = fields[..] else {
        return Err("systemd form must be <slice>:<prefix>:<name>".into());
    };
    let slice = if slice.is_empty() {
        "system.slice"
    } else {
        slice
    };
    let mut parts = expand_slice(slice)?;
    let unit = if name.ends_with(".slice") {
        name.to_string()
    } else if prefix.is_empty() {
        format!("{name}.scope")
    } else {
        format!("{prefix}-{name}.scope")
    };
    if name.is_empty() || name.contains('/') || prefix.contains('/') || unit.len() > NAME_MAX {
        return Err(format!("invalid systemd unit name {unit:?}"));
    }
    parts.push(unit);
    Ok(parts)
}

fn expand_slice(slice: &str) -> Result<Vec<String>, String> {
    let bad = || format!("invalid systemd slice {slice:?}");
    let stem = slice.strip_suffix(".slice").ok_or_else(bad)?;
    if stem.is_empty() || slice.contains('/') || slice.len() > NAME_MAX {
        return Err(bad());
    }
    if stem == "-" {
        return Ok(Vec::new());
    }
    let mut parts = Vec::new();
    let mut prefix = String::new();
    for word in stem.split('-') {
        if word.is_empty() {
            return Err(bad());
        }
        parts.push(format!("{prefix}{word}.slice"));
        prefix.push_str(word);
        prefix.push('-');
    }
    Ok(parts)
}

/// Cgroup mounts under [`CGROUP_ROOT`], one per hierarchy (bind mounts of
/// the same hierarchy share a device number and are dropped).
pub(super) fn parse_mountinfo(text: &str) -> Vec<Hierarchy> {
    let mut seen = Vec::new();
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let left: Vec<&str> = left.split(' ').collect();
        let right: Vec<&str> = right.split(' ').collect();
        let ([_, _, dev, root, mountpoint, ..], [fstype, _, superopts, ..]) =
            (&left[..], &right[..])
        else {
            continue;
        };
        let kind = match *fstype {
            "cgroup" => Kind::V1,
            "cgroup2" => Kind::V2,
            _ => continue,
        };
        let mountpoint = crate::mounts::path_field(mountpoint.as_bytes());
        if !mountpoint.starts_with(CGROUP_ROOT) || seen.contains(dev) {
            continue;
        }
        seen.push(*dev);
        out.push(Hierarchy {
            mountpoint,
            root: crate::mounts::path_field(root.as_bytes()),
            options: superopts.split(',').map(str::to_string).collect(),
            kind,
        });
    }
    out
}

/// The unified layout uses only the cgroup2 tree at [`CGROUP_ROOT`]; the
/// v1 (and hybrid) layout uses every hierarchy, named ones included.
pub(super) fn select_hierarchies(all: Vec<Hierarchy>, unified: bool) -> Vec<Hierarchy> {
    if !unified {
        return all;
    }
    let root = all
        .into_iter()
        .find(|h| h.kind == Kind::V2 && h.mountpoint == Path::new(CGROUP_ROOT));
    vec![root.unwrap_or_else(|| Hierarchy {
        mountpoint: CGROUP_ROOT.into(),
        root: "/".into(),
        options: Vec::new(),
        kind: Kind::V2,
    })]
}

pub(super) fn leaf_dirs(
    target: &Target,
    hierarchies: &[Hierarchy],
    own_cgroup: &str,
) -> Result<Vec<PathBuf>, CgroupError> {
    if hierarchies.is_empty() {
        return Err(CgroupError::NoHierarchy);
    }
    hierarchies
        .iter()
        .map(|h| {
            let mut dir = h.mountpoint.clone();
            let parts = match target {
                Target::Absolute(parts) => parts,
                Target::Relative(parts) => {
                    let own = h
                        .path_in(own_cgroup)
                        .ok_or_else(|| CgroupError::OwnCgroup {
                            mountpoint: h.mountpoint.clone(),
                        })?;
                    let own = Path::new(own);
                    // The mount shows `root`; the own cgroup lies below it.
                    let below = own.strip_prefix(&h.root).unwrap_or(own);
                    dir.extend(
                        below
                            .components()
                            .filter(|c| matches!(c, Component::Normal(_))),
                    );
                    parts
                }
            };
            dir.extend(parts);
            Ok(dir)
        })
        .collect()
}

pub(super) fn member_of(hierarchies: &[Hierarchy], proc_cgroup: &str, dir: &Path) -> bool {
    let Some(h) = hierarchies
        .iter()
        .filter(|h| dir.starts_with(&h.mountpoint))
        .max_by_key(|h| h.mountpoint.components().count())
    else {
        return false;
    };
    let rel = dir
        .strip_prefix(&h.mountpoint)
        .expect("filtered on this prefix");
    let want = h.root.join(rel);
    h.path_in(proc_cgroup)
        .is_some_and(|p| Path::new(p) == want.as_path())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host_cgroup::HostCgroup;

    /// This host's layout: v1 controllers, a named hierarchy and the hybrid
    /// unified tree, plus mounts that must be ignored.
    const V1_MOUNTINFO: &str = "\
22 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
50 22 0:32 / /mnt/memory rw,relatime - cgroup cgroup rw,memory
51 31 0:32 / /sys/fs/cgroup/memory\\040again rw,relatime - cgroup cgroup rw,memory
52 31 0:40 /kubepods /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
";

    const V2_MOUNTINFO: &str = "\
22 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw
30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";

    const PROC_CGROUP_V1: &str = "\
9:name=systemd:/user.slice
4:memory:/shim/parent
3:cpuset:/
2:cpu,cpuacct:/shim/parent
1:pids:/kubepods/shim
0::/shim
";

    fn v1() -> Vec<Hierarchy> {
        select_hierarchies(parse_mountinfo(V1_MOUNTINFO), false)
    }

    fn mountpoints(hs: &[Hierarchy]) -> Vec<&str> {
        hs.iter()
            .map(|h| h.mountpoint.to_str().expect("utf-8"))
            .collect()
    }

    #[test]
    fn every_cgroup_mount_under_the_root_is_a_hierarchy() {
        let hs = v1();
        assert_eq!(
            mountpoints(&hs),
            [
                "/sys/fs/cgroup/cpu,cpuacct",
                "/sys/fs/cgroup/cpuset",
                "/sys/fs/cgroup/memory",
                "/sys/fs/cgroup/systemd",
                "/sys/fs/cgroup/unified",
                "/sys/fs/cgroup/pids",
            ]
        );
        assert_eq!(hs[4].kind, Kind::V2);
        assert!(hs[3].has("name=systemd"));
        assert_eq!(hs[5].root, Path::new("/kubepods"));

        let v2 = select_hierarchies(parse_mountinfo(V2_MOUNTINFO), true);
        assert_eq!(mountpoints(&v2), ["/sys/fs/cgroup"]);
        assert_eq!(v2[0].kind, Kind::V2);
        let missing = select_hierarchies(Vec::new(), true);
        assert_eq!(mountpoints(&missing), ["/sys/fs/cgroup"]);
    }

    fn resolve(path: &str, hs: &[Hierarchy], own: &str) -> Result<Vec<PathBuf>, CgroupError> {
        leaf_dirs(&parse_cgroups_path(path)?, hs, own)
    }

    #[test]
    fn cgroupfs_paths_resolve_in_every_hierarchy() {
        let dirs = resolve("/kubepods/burstable/pod1/abc/", &v1(), "").expect("valid");
        let want: Vec<PathBuf> = mountpoints(&v1())
            .iter()
            .map(|m| Path::new(m).join("kubepods/burstable/pod1/abc"))
            .collect();
        assert_eq!(dirs, want);

        let v2 = select_hierarchies(parse_mountinfo(V2_MOUNTINFO), true);
        let dirs = resolve("/kubepods//pod1/abc", &v2, "").expect("valid");
        assert_eq!(dirs, [PathBuf::from("/sys/fs/cgroup/kubepods/pod1/abc")]);

        // Relative paths hang below the shim's own cgroup, seen through the
        // mount's root.
        let dirs = resolve("pod1/abc", &v1(), PROC_CGROUP_V1).expect("valid");
        let got: Vec<&str> = dirs.iter().map(|d| d.to_str().expect("utf-8")).collect();
        assert_eq!(
            got,
            [
                "/sys/fs/cgroup/cpu,cpuacct/shim/parent/pod1/abc",
                "/sys/fs/cgroup/cpuset/pod1/abc",
                "/sys/fs/cgroup/memory/shim/parent/pod1/abc",
                "/sys/fs/cgroup/systemd/user.slice/pod1/abc",
                "/sys/fs/cgroup/unified/shim/pod1/abc",
                "/sys/fs/cgroup/pids/shim/pod1/abc",
            ]
        );
        let err = resolve("pod1", &v1(), "0::/\n").expect_err("no v1 entries");
        assert_eq!(err.code(), ttrpc::Code::FAILED_PRECONDITION);
        let err = resolve("/a", &[], "").expect_err("no hierarchy");
        assert_eq!(err.code(), ttrpc::Code::FAILED_PRECONDITION);
    }

    #[test]
    fn systemd_paths_expand_like_runc() {
        let cases = [
            (
                "kubepods-burstable-pod123.slice:cri-containerd:abc",
                "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod123.slice/\
                 cri-containerd-abc.scope",
            ),
            ("kubepods.slice:crio:abc", "kubepods.slice/crio-abc.scope"),
            ("system.slice:docker:abc", "system.slice/docker-abc.scope"),
            (":docker:abc", "system.slice/docker-abc.scope"),
            ("-.slice:docker:abc", "docker-abc.scope"),
            ("machine.slice::abc", "machine.slice/abc.scope"),
            ("a-b.slice:x:a-b-c.slice", "a.slice/a-b.slice/a-b-c.slice"),
        ];
        for (path, want) in cases {
            match parse_cgroups_path(path) {
                Ok(Target::Absolute(parts)) => assert_eq!(parts.join("/"), want, "{path}"),
                other => panic!("{path}: {other:?}"),
            }
        }
    }

    #[test]
    fn invalid_paths_are_refused_naming_the_field() {
        let long = format!("/kubepods/{}", "x".repeat(256));
        let cases = [
            "/kubepods/../etc",
            "../kubepods",
            "/kubepods/./x",
            "/",
            "///",
            "/kubepods/a\nb",
            "/kubepods/a\0b",
            &long,
            "kubepods.slice:abc",
            "kubepods.slice:a:b:c",
            "kubepods:crio:abc",
            ".slice:crio:abc",
            "kubepods--x.slice:crio:abc",
            "-kubepods.slice:crio:abc",
            "kube/pods.slice:crio:abc",
            "kubepods.slice:crio:",
            "kubepods.slice:crio:a/b",
            "kubepods.slice:cr/io:ab",
        ];
        for path in cases {
            let err = parse_cgroups_path(path).expect_err(path);
            assert_eq!(err.code(), ttrpc::Code::INVALID_ARGUMENT, "{path}");
            assert!(err.to_string().contains("linux.cgroupsPath"), "{err}");
        }
        assert!(
            HostCgroup::for_sandbox("", "sb")
                .expect("empty is fine")
                .is_none()
        );
    }

    #[test]
    fn membership_is_read_from_proc_cgroup() {
        let hs = v1();
        let yes = [
            "/sys/fs/cgroup/memory/shim/parent",
            "/sys/fs/cgroup/cpu,cpuacct/shim/parent/",
            "/sys/fs/cgroup/cpuset",
            "/sys/fs/cgroup/systemd/user.slice",
            "/sys/fs/cgroup/unified/shim",
            // The pids mount shows /kubepods, so its root dir is /kubepods.
            "/sys/fs/cgroup/pids/shim",
        ];
        for dir in yes {
            assert!(member_of(&hs, PROC_CGROUP_V1, Path::new(dir)), "{dir}");
        }
        let no = [
            "/sys/fs/cgroup/memory/shim",
            "/sys/fs/cgroup/memory/shim/parent/child",
            "/sys/fs/cgroup/unified",
            "/sys/fs/cgroup/pids/kubepods/shim",
            "/sys/fs/cgroup/blkio",
            "/tmp",
        ];
        for dir in no {
            assert!(!member_of(&hs, PROC_CGROUP_V1, Path::new(dir)), "{dir}");
        }
    }
}
