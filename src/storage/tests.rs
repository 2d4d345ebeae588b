//! Real mounts (the tests run as root); every test's mounts live in a temp
//! dir that is unmounted on drop, so a failing test leaves nothing behind.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use nix::mount::MsFlags;

use super::*;
use crate::mounts::{is_mount_point, mounts_under, parse_mountinfo, unmount_under};

/// A temp dir whose mounts are detached even when the test fails.
struct Scratch(tempfile::TempDir);

impl Scratch {
    fn new() -> Scratch {
        Scratch(tempfile::tempdir().expect("tempdir"))
    }
    fn in_run() -> Scratch {
        Scratch(tempfile::tempdir_in("/run").expect("tempdir in /run"))
    }
    fn path(&self) -> &Path {
        self.0.path()
    }
    fn dir(&self, rel: &str) -> PathBuf {
        let p = self.path().join(rel);
        std::fs::create_dir_all(&p).expect("mkdir");
        p
    }
    fn file(&self, rel: &str, content: &str) -> PathBuf {
        let p = self.path().join(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(&p, content).expect("write");
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = unmount_under(self.path());
    }
}

/// A process killed and reaped on drop.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn tmpfs(at: &Path) {
    nix::mount::mount(
        Some("tmpfs"),
        at,
        Some("tmpfs"),
        MsFlags::empty(),
        Some("size=1m"),
    )
    .expect("mount tmpfs");
}

fn bind_mount(source: &Path) -> Mount {
    Mount {
        type_: "bind".into(),
        source: source.display().to_string(),
        options: vec!["rbind".into(), "rw".into()],
        ..Default::default()
    }
}

fn spec(root: &str, mounts: Value) -> Value {
    json!({
        "ociVersion": "1.0.2",
        "process": {"args": ["/bin/sh"], "cwd": "/"},
        "root": {"path": root},
        "mounts": mounts,
    })
}

fn guest_json(p: &PreparedContainer) -> Value {
    serde_json::from_slice(&p.guest_spec_json).expect("guest spec json")
}

fn errno(r: std::io::Result<()>) -> Option<i32> {
    r.err().and_then(|e| e.raw_os_error())
}

fn field_of(e: &StorageError) -> String {
    match e {
        StorageError::Spec(OciError::InvalidArgument { field, .. }) => field.clone(),
        other => panic!("not an invalid argument: {other}"),
    }
}

#[test]
fn share_binds_reach_a_slave_namespace_read_only_and_leave_it() {
    let s = Scratch::new();
    let share = s.dir("share");
    prepare_share(&share).expect("prepare");
    prepare_share(&share).expect("prepare again");
    assert_eq!(
        mounts_under(&share).expect("mounts").len(),
        1,
        "one tmpfs root"
    );

    // Started after prepare_share, like virtiofsd.
    let child = Command::new("unshare")
        .args(["--mount", "--propagation", "slave", "sleep", "30"])
        .spawn()
        .expect("spawn unshare");
    let pid = child.id();
    let child = Reaped(child);
    let own_ns = std::fs::read_link("/proc/self/ns/mnt").expect("own ns");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_link(format!("/proc/{pid}/ns/mnt"))
        .ok()
        .as_ref()
        == Some(&own_ns)
    {
        assert!(
            Instant::now() < deadline,
            "unshare did not enter its namespace"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let seen = || {
        let text = std::fs::read(format!("/proc/{pid}/mountinfo")).expect("child mountinfo");
        parse_mountinfo(&text).expect("parse")
    };

    let bundle = s.dir("bundle");
    s.file("bundle/rootfs/bin/sh", "");
    let hostname = s.file("bundle/hostname", "pod\n");
    let cfg = spec(
        "rootfs",
        json!([{"destination": "/etc/hostname", "type": "bind",
                "source": hostname, "options": ["rbind", "ro"]}]),
    );
    let mut p = prepare_container(&share, "sb", "c1", &bundle, cfg, &[]).expect("prepare");

    let vol = share.join("c1/volumes/0-hostname");
    let in_child = seen();
    let m = in_child
        .iter()
        .find(|m| m.mount_point == vol)
        .expect("volume propagated");
    assert!(
        m.is_read_only(),
        "read-only in the slave namespace too: {m:?}"
    );
    assert!(
        in_child
            .iter()
            .any(|m| m.mount_point == share.join("c1/rootfs"))
    );

    p.mounts.release_share();
    assert!(
        !seen()
            .iter()
            .any(|m| m.mount_point.starts_with(share.join("c1"))),
        "the unmount propagated"
    );
    release_share(&share);
    release_share(&share);
    assert!(mounts_under(&share).expect("mounts").is_empty());
    drop(child);
}

/// Issue 14: the share was a plain directory on the node's `/run`,
/// writable at its root by the guest, and the non-recursive cleanup left
/// what the guest wrote there after the pod.
#[test]
fn share_root_is_a_bounded_read_only_tmpfs_that_takes_the_guests_files_with_it() {
    let s = Scratch::in_run();
    let share = s.dir("share");
    prepare_share(&share).expect("prepare");
    let infos = crate::mounts::read_mountinfo().expect("mountinfo");
    let m = infos
        .iter()
        .rev()
        .find(|m| m.mount_point == share)
        .expect("root mount");
    assert_eq!(m.fstype, "tmpfs", "{m:?}");
    for flag in ["ro", "nosuid", "nodev", "noexec"] {
        assert!(
            m.options.split(',').any(|o| o == flag),
            "{flag} missing: {m:?}"
        );
    }
    // The guest (virtiofsd or QEMU, root on the host) cannot create
    // anything at the root.
    assert_eq!(
        errno(std::fs::write(share.join("guest-file"), "x")),
        Some(libc::EROFS)
    );
    assert_eq!(
        errno(std::fs::create_dir(share.join("guest-dir"))),
        Some(libc::EROFS)
    );

    // The shim's own entries are made in a window; the container's rootfs
    // bind beneath is writable as its spec says.
    let bundle = s.dir("bundle");
    s.dir("bundle/rootfs");
    let mut p = prepare_container(&share, "sb", "c1", &bundle, spec("rootfs", json!([])), &[])
        .expect("prepare");
    std::fs::write(share.join("c1/rootfs/written"), "by the container").expect("rootfs writable");
    // Binds carry nosuid and nodev on the host side: a setuid program or a
    // device node the guest makes in its rootfs is inert on the node.
    let infos = crate::mounts::read_mountinfo().expect("mountinfo");
    let bind = infos
        .iter()
        .rev()
        .find(|m| m.mount_point == share.join("c1/rootfs"))
        .expect("rootfs bind");
    for flag in ["nosuid", "nodev"] {
        assert!(
            bind.options.split(',').any(|o| o == flag),
            "{flag} missing: {bind:?}"
        );
    }
    nix::sys::stat::mknod(
        &share.join("c1/rootfs/null"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o666),
        nix::sys::stat::makedev(1, 3),
    )
    .expect("mknod, as a guest's root can");
    assert_eq!(
        errno(std::fs::File::open(share.join("c1/rootfs/null")).map(drop)),
        Some(libc::EACCES),
        "a device node made in the share does not open the host's device"
    );
    std::fs::remove_file(share.join("c1/rootfs/null")).expect("rm");
    assert_eq!(
        errno(std::fs::write(share.join("x"), "x")),
        Some(libc::EROFS),
        "read-only again"
    );

    // What a guest could race in during a window is bounded, whatever the
    // node's /run is.
    let filled = with_writable_share(&share, || {
        let mut f = std::fs::File::create(share.join("flood")).expect("create");
        let chunk = vec![0u8; 64 << 10];
        let mut written = 0u64;
        let err = loop {
            match std::io::Write::write(&mut f, &chunk) {
                Ok(n) => written += n as u64,
                Err(e) => break e,
            }
            assert!(
                written <= 2 * ROOT_BYTES,
                "no bound: {written} bytes written"
            );
        };
        (written, err.raw_os_error())
    })
    .expect("window");
    println!(
        "the guest's flood of the share root stopped at {} bytes",
        filled.0
    );
    assert_eq!(filled.1, Some(libc::ENOSPC));
    assert!(filled.0 <= ROOT_BYTES, "{} > {ROOT_BYTES}", filled.0);

    p.mounts.release_share();
    release_share(&share);
    assert!(mounts_under(&share).expect("mounts").is_empty());
    let left: Vec<_> = std::fs::read_dir(&share).expect("share").collect();
    assert!(
        left.is_empty(),
        "the guest's files went with the tmpfs: {left:?}"
    );
    assert_eq!(
        std::fs::read_to_string(bundle.join("rootfs/written")).expect("the container's write"),
        "by the container",
        "the container's rootfs is its own, not the share's"
    );
}

/// A share the shim did not mount (an older shim's plain directory) is
/// never remounted: a remount of the filesystem under it would change the
/// node's `/run` or root disk.
#[test]
fn a_share_that_is_not_the_shims_tmpfs_is_never_remounted() {
    let s = Scratch::in_run();
    let share = s.dir("plain-share");
    let before = crate::mounts::read_mountinfo().expect("mountinfo");
    let ran = with_writable_share(&share, || std::fs::write(share.join("f"), "x").is_ok())
        .expect("no remount");
    assert!(ran);
    let after = crate::mounts::read_mountinfo().expect("mountinfo");
    let opts = |v: &[crate::mounts::MountInfo]| -> Vec<String> {
        v.iter()
            .map(|m| format!("{} {}", m.mount_point.display(), m.options))
            .collect()
    };
    assert_eq!(opts(&before), opts(&after), "no mount changed");
}

#[test]
fn containerd_rootfs_is_mounted_in_the_bundle_and_shared() {
    let s = Scratch::new();
    let share = s.dir("share");
    let bundle = s.dir("bundle");
    s.dir("bundle/rootfs");
    let layer = s.dir("layer");
    s.file("layer/hello", "from the layer");
    let mut ro = bind_mount(&layer);
    ro.options = vec!["rbind".into(), "ro".into()];

    let mut p = prepare_container(
        &share,
        "sb",
        "c1",
        &bundle,
        spec("rootfs", json!([])),
        &[ro],
    )
    .expect("prepare");
    assert!(p.mounts.rootfs_mounted());
    assert!(is_mount_point(&bundle.join("rootfs")));
    let in_share = share.join("c1/rootfs/hello");
    assert_eq!(
        std::fs::read_to_string(&in_share).expect("read"),
        "from the layer"
    );
    assert_eq!(
        errno(std::fs::write(share.join("c1/rootfs/new"), "x")),
        Some(libc::EROFS),
        "a read-only rootfs mount stays read-only in the share"
    );
    assert_eq!(
        guest_json(&p)["root"]["path"],
        json!(oci::guest_rootfs_path("c1"))
    );

    for _ in 0..2 {
        p.mounts.release_share();
        assert!(mounts_under(&share).expect("mounts").is_empty());
        assert!(!share.join("c1").exists(), "share entry removed");
        assert!(
            is_mount_point(&bundle.join("rootfs")),
            "bundle rootfs kept until delete"
        );
    }
    for _ in 0..2 {
        p.mounts.release_bundle_rootfs();
        assert!(mounts_under(&bundle).expect("mounts").is_empty());
        assert!(!p.mounts.rootfs_mounted());
    }
    assert!(layer.join("hello").exists(), "the layer is untouched");
}

#[test]
fn crio_rootfs_can_be_unmounted_after_release() {
    let s = Scratch::new();
    let share = s.dir("share");
    prepare_share(&share).expect("prepare share");
    let bundle = s.dir("bundle");
    let merged = s.dir("storage/merged");
    tmpfs(&merged);
    std::fs::write(merged.join("pause"), "binary").expect("write");
    let cfg = spec(&merged.display().to_string(), json!([]));

    let mut p = prepare_container(&share, "sb", "c1", &bundle, cfg, &[]).expect("prepare");
    assert!(!p.mounts.rootfs_mounted());
    assert_eq!(
        std::fs::read_to_string(share.join("c1/rootfs/pause")).expect("read"),
        "binary"
    );
    p.mounts.release_share();
    // What CRI-O does right after Wait returns: a plain unmount.
    nix::mount::umount(&merged).expect("no EBUSY after release");
    assert!(!is_mount_point(&merged));
    release_share(&share);
}

#[test]
fn volumes_are_shared_rewritten_or_dropped() {
    let s = Scratch::new();
    let run = Scratch::in_run();
    let share = s.dir("share");
    let bundle = s.dir("bundle");
    s.dir("bundle/rootfs");
    let hostname = s.file("bundle/hostname", "pod\n");
    let data = run.dir("data");
    let var_run_data = Path::new("/var/run").join(data.strip_prefix("/run").expect("in /run"));
    let cfg = spec(
        "rootfs",
        json!([
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/etc/hostname", "type": "bind", "source": hostname, "options": ["rbind", "ro"]},
            {"destination": "/dev/shm", "type": "bind", "source": bundle.join("shm"), "options": ["rbind", "rw"]},
            {"destination": "/host-sys", "type": "bind", "source": "/proc/sys", "options": ["rbind", "ro"]},
            {"destination": "/data", "type": "bind", "source": var_run_data, "options": ["rbind", "rw"]},
        ]),
    );
    let mut p = prepare_container(&share, "sb", "c1", &bundle, cfg, &[]).expect("prepare");
    let g = guest_json(&p);
    let mounts = g["mounts"].as_array().expect("mounts");
    assert_eq!(mounts.len(), 4, "the /proc/sys bind is dropped: {mounts:?}");
    assert_eq!(mounts[0]["source"], json!("proc"));
    assert_eq!(
        mounts[1]["source"],
        json!(oci::guest_volume_path("c1", "1-hostname"))
    );
    assert_eq!(
        mounts[2]["source"],
        json!(kata_agent_protocol::guest::SANDBOX_SHM)
    );
    assert_eq!(mounts[3]["destination"], json!("/data"));
    assert_eq!(
        mounts[3]["source"],
        json!(oci::guest_volume_path("c1", &oci::volume_name(4, &data)))
    );

    let vols = share.join("c1/volumes");
    assert_eq!(
        std::fs::read_to_string(vols.join("1-hostname")).expect("read"),
        "pod\n"
    );
    assert_eq!(
        errno(std::fs::write(vols.join("1-hostname"), "evil")),
        Some(libc::EROFS)
    );
    assert_eq!(std::fs::read_to_string(&hostname).expect("read"), "pod\n");
    let data_name = oci::volume_name(4, &data);
    std::fs::write(vols.join(&data_name).join("f"), "w").expect("rw volume is writable");
    assert_eq!(std::fs::read_to_string(data.join("f")).expect("read"), "w");
    assert!(!vols.join("3-sys").exists());
    p.mounts.release_share();
    assert!(mounts_under(&share).expect("mounts").is_empty());
    assert!(!share.join("c1").exists());
}

#[test]
fn bad_volume_sources_are_refused_before_anything_is_mounted() {
    let s = Scratch::new();
    let share = s.dir("share");
    let bundle = s.dir("bundle");
    s.dir("bundle/rootfs");
    let real = s.dir("real");
    s.file("real/secret", "x");
    let link = s.path().join("link");
    std::os::unix::fs::symlink(&real, &link).expect("symlink");
    let layer = s.dir("layer");
    let cases = [
        (format!("{}/../etc", real.display()), "`..`"),
        (
            format!("{}/secret", link.display()),
            "passes through a symlink",
        ),
        (link.display().to_string(), "passes through a symlink"),
        (format!("{}/missing", real.display()), "does not exist"),
        (format!("{}/secret/x", real.display()), "non-directory"),
    ];
    for (source, reason) in cases {
        let cfg = spec(
            "rootfs",
            json!([
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/v", "type": "bind", "source": source, "options": ["rbind"]},
            ]),
        );
        let e = prepare_container(&share, "sb", "c1", &bundle, cfg, &[bind_mount(&layer)])
            .expect_err(&source);
        assert_eq!(e.code(), Code::INVALID_ARGUMENT, "{e}");
        assert_eq!(field_of(&e), "mounts[1].source", "{e}");
        assert!(e.to_string().contains(reason), "{source}: {e}");
        assert!(
            mounts_under(s.path()).expect("mounts").is_empty(),
            "{source}"
        );
        assert!(!share.join("c1").exists());
    }
}

#[test]
fn rootfs_symlink_out_of_the_bundle_is_refused() {
    let s = Scratch::new();
    let share = s.dir("share");
    let bundle = s.dir("bundle");
    let outside = s.dir("outside");
    std::os::unix::fs::symlink(&outside, bundle.join("rootfs")).expect("symlink");
    let layer = s.dir("layer");
    for root in ["rootfs", "./rootfs", "../outside"] {
        let e = prepare_container(
            &share,
            "sb",
            "c1",
            &bundle,
            spec(root, json!([])),
            &[bind_mount(&layer)],
        )
        .expect_err(root);
        assert_eq!(e.code(), Code::INVALID_ARGUMENT);
        assert_eq!(field_of(&e), "root.path", "{e}");
        assert!(
            !is_mount_point(&outside),
            "nothing mounted through the symlink"
        );
        assert!(mounts_under(s.path()).expect("mounts").is_empty());
    }
}

#[test]
fn a_failure_midway_leaves_no_mount() {
    let s = Scratch::new();
    let share = s.dir("share");
    let bundle = s.dir("bundle");
    s.dir("bundle/rootfs");
    let layer = s.dir("layer");
    let v0 = s.dir("vols/a");
    let v1 = s.dir("vols/b");
    // The guest made a file where the directory volume 1 goes.
    s.file("share/c1/volumes/1-b", "");
    let cfg = spec(
        "rootfs",
        json!([
            {"destination": "/a", "type": "bind", "source": v0, "options": ["rbind"]},
            {"destination": "/b", "type": "bind", "source": v1, "options": ["rbind"]},
        ]),
    );
    let e = prepare_container(&share, "sb", "c1", &bundle, cfg, &[bind_mount(&layer)])
        .expect_err("volume target is a file");
    assert_eq!(e.code(), Code::INTERNAL, "{e}");
    assert!(e.to_string().contains("1-b"), "{e}");
    assert!(mounts_under(s.path()).expect("mounts").is_empty());
    assert!(!share.join("c1").exists());
}

#[test]
fn planted_symlink_in_the_share_is_not_followed() {
    let s = Scratch::new();
    let share = s.dir("share");
    let bundle = s.dir("bundle");
    s.dir("bundle/rootfs");
    let victim = s.dir("victim");
    s.dir("share/c1");
    std::os::unix::fs::symlink(&victim, share.join("c1/rootfs")).expect("symlink");
    let e = prepare_container(&share, "sb", "c1", &bundle, spec("rootfs", json!([])), &[])
        .expect_err("planted symlink");
    assert_eq!(e.code(), Code::INTERNAL, "{e}");
    assert!(!is_mount_point(&victim));
    assert!(victim.exists(), "the symlink target is not removed");
    assert!(mounts_under(s.path()).expect("mounts").is_empty());

    std::os::unix::fs::symlink(&victim, share.join("c2")).expect("symlink");
    prepare_container(&share, "sb", "c2", &bundle, spec("rootfs", json!([])), &[])
        .expect_err("planted container dir symlink");
    assert!(!is_mount_point(&victim));
}

#[test]
fn preconditions() {
    let s = Scratch::new();
    let share = s.dir("share");
    let bundle = s.dir("bundle");
    s.dir("bundle/rootfs");

    let e = prepare_container(
        &share,
        "sb",
        "../x",
        &bundle,
        spec("rootfs", json!([])),
        &[],
    )
    .expect_err("bad id");
    assert_eq!(field_of(&e), "id");
    let e = prepare_container(&share, "sb", "c1", &bundle, json!({"root": {}}), &[])
        .expect_err("no root.path");
    assert_eq!(field_of(&e), "root.path");
    let e = prepare_container(
        &share,
        "sb",
        "c1",
        &bundle,
        spec("/nonexistent/x", json!([])),
        &[],
    )
    .expect_err("missing absolute root");
    assert_eq!(field_of(&e), "root.path");
    let e = prepare_container(
        &s.path().join("gone"),
        "sb",
        "c1",
        &bundle,
        spec("rootfs", json!([])),
        &[],
    )
    .expect_err("no share");
    assert_eq!(e.code(), Code::FAILED_PRECONDITION, "{e}");

    let mut first = prepare_container(&share, "sb", "c1", &bundle, spec("rootfs", json!([])), &[])
        .expect("first");
    let e = prepare_container(&share, "sb", "c1", &bundle, spec("rootfs", json!([])), &[])
        .expect_err("twice");
    assert_eq!(e.code(), Code::ALREADY_EXISTS, "{e}");
    assert!(
        is_mount_point(&share.join("c1/rootfs")),
        "the first is untouched"
    );
    first.mounts.release_share();

    let mut restored = ContainerMounts::restore(&share, "sb", "c1", &bundle, true);
    assert!(restored.rootfs_mounted());
    restored.release_share();
    restored.release_bundle_rootfs();
    assert!(!restored.rootfs_mounted());
}
