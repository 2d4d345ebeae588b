use std::process::{Child, Command};

use nix::mount::{MntFlags, MsFlags};

use super::*;
use crate::persist::ContainerRecord;

/// A sandbox id unique to one test of this process, and everything the
/// test creates for it, undone on drop even when an assertion failed.
struct Fixture {
    sid: String,
    dir: tempfile::TempDir,
    mounts: Vec<PathBuf>,
    children: Vec<Child>,
}

impl Fixture {
    fn new(test: &str) -> Fixture {
        Fixture {
            sid: format!("kata-delete-test-{test}-{}", std::process::id()),
            dir: tempfile::tempdir().expect("tempdir"),
            mounts: Vec::new(),
            children: Vec::new(),
        }
    }

    /// A bundle with `config.json` holding `annotations` and a tmpfs on
    /// its `rootfs`.
    fn bundle(&mut self, name: &str, annotations: &str) -> PathBuf {
        let bundle = self.dir.path().join(name);
        std::fs::create_dir_all(bundle.join("rootfs")).expect("mkdir bundle");
        std::fs::write(
            bundle.join("config.json"),
            format!(r#"{{"ociVersion":"1.0.2","annotations":{annotations}}}"#),
        )
        .expect("config.json");
        self.tmpfs(&bundle.join("rootfs"));
        bundle
    }

    fn tmpfs(&mut self, at: &Path) {
        std::fs::create_dir_all(at).expect("mkdir mount point");
        nix::mount::mount(
            Some("tmpfs"),
            at,
            Some("tmpfs"),
            MsFlags::empty(),
            None::<&str>,
        )
        .expect("mount tmpfs");
        self.mounts.push(at.to_path_buf());
    }

    fn sleeper(&mut self) -> ProcessRecord {
        let child = Command::new("sleep")
            .arg("60")
            .spawn()
            .expect("spawn sleep");
        let rec = ProcessRecord::capture("qemu", child.id()).expect("capture sleep");
        self.children.push(child);
        rec
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for m in self.mounts.iter().rev() {
            let _ = nix::mount::umount2(m, MntFlags::MNT_DETACH);
        }
        let paths = SandboxPaths::new(&self.sid);
        let _ = crate::mounts::unmount_under(&paths.share_dir);
        let _ = std::fs::remove_dir_all(&paths.share_dir);
        let _ = std::fs::remove_dir_all(&paths.state_dir);
        persist::remove(&self.sid);
    }
}

#[test]
fn plans() {
    use Plan::*;
    let table = [
        // id, sandbox, shim alive, listed
        (("sb", "sb", false, false), Teardown),
        (("sb", "sb", false, true), Teardown),
        (("c1", "sb", false, true), Teardown),
        (("sb", "sb", true, true), StopShimThenTeardown),
        (("sb", "sb", true, false), StopShimThenTeardown),
        (("c1", "sb", true, true), LeaveToShim),
        (("c1", "sb", true, false), ContainerRootfs),
    ];
    for ((id, sid, alive, listed), want) in table {
        assert_eq!(
            plan(id, sid, alive, listed),
            want,
            "{id} {sid} {alive} {listed}"
        );
    }
}

#[test]
fn response_is_a_bare_delete_response() {
    let before = Timestamp::now().seconds;
    let bytes = response();
    let resp = DeleteResponse::parse_from_bytes(&bytes).expect("decode");
    assert_eq!(resp.pid, 0);
    assert_eq!(resp.exit_status, 137);
    let at = resp.exited_at.seconds;
    assert!(
        at >= before && at <= before + 5,
        "exited_at {at}, now {before}"
    );
}

#[test]
fn a_recycled_pid_is_never_killed() {
    let mut fx = Fixture::new("recycled");
    let rec = fx.sleeper();
    let stale = ProcessRecord {
        start_time: rec.start_time + 1,
        ..rec.clone()
    };
    kill_verified(&stale);
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        rec.is_alive(),
        "a record with another start time was signalled"
    );
    kill_verified(&rec);
    assert!(
        wait_gone(&[rec], Duration::from_secs(2)),
        "the recorded process survived"
    );
    // Our own process is not a sandbox shim whatever its pid file says.
    std::fs::create_dir_all(crate::layout::shim_dir(&fx.sid)).expect("mkdir");
    std::fs::write(
        crate::layout::shim_dir(&fx.sid).join(SHIM_PID_FILE),
        std::process::id().to_string(),
    )
    .expect("pid file");
    assert!(shim_from_pid_file(&fx.sid).is_none());
}

#[test]
fn dead_sandbox_teardown_is_complete_and_idempotent() {
    let mut fx = Fixture::new("dead");
    let sid = fx.sid.clone();
    let sandbox_bundle = fx.bundle("sandbox", "{}");
    let c1_bundle = fx.bundle(
        "c1",
        &format!(
            r#"{{"io.kubernetes.cri.container-type":"container","io.kubernetes.cri.sandbox-id":"{sid}"}}"#
        ),
    );
    let paths = SandboxPaths::new(&sid);
    fx.tmpfs(&paths.share_dir.join("c1/rootfs"));
    std::fs::create_dir_all(paths.share_dir.join("c1/volumes/0-data")).expect("volume dir");
    std::fs::create_dir_all(&paths.state_dir).expect("state dir");
    std::fs::write(paths.state_dir.join("qmp.sock"), "").expect("state file");

    let qemu = fx.sleeper();
    let mut state = SandboxRecord::new(&sid);
    state.processes.push(qemu.clone());
    state.containers.insert(
        "c1".into(),
        ContainerRecord {
            bundle: c1_bundle.clone(),
            rootfs_mounted: true,
        },
    );
    state.save().expect("save state");

    let t = Instant::now();
    cleanup(&sid, Some(&sandbox_bundle));
    assert!(
        t.elapsed() < Duration::from_secs(4),
        "took {:?}",
        t.elapsed()
    );

    assert!(!qemu.is_alive(), "recorded process still alive");
    let status = fx.children[0].try_wait().expect("try_wait");
    assert!(status.is_some(), "recorded process was not killed");
    for rootfs in [sandbox_bundle.join("rootfs"), c1_bundle.join("rootfs")] {
        assert!(
            !mounts::is_mount_point(&rootfs),
            "{} still mounted",
            rootfs.display()
        );
    }
    assert!(!paths.share_dir.exists(), "share dir left behind");
    assert!(!paths.state_dir.exists(), "state dir left behind");
    assert!(
        !crate::layout::shim_dir(&sid).exists(),
        "shim dir left behind"
    );

    // Again, through the command's entry point: nothing left, same answer.
    let flags = Flags {
        id: sid.clone(),
        bundle: sandbox_bundle.display().to_string(),
        ..Flags::default()
    };
    let t = Instant::now();
    let resp = DeleteResponse::parse_from_bytes(&run(&flags)).expect("decode");
    assert_eq!(resp.exit_status, DELETED_EXIT_STATUS);
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "idempotent run took {:?}",
        t.elapsed()
    );
}

#[test]
fn without_state_only_what_the_id_names_is_cleaned() {
    let mut fx = Fixture::new("nostate");
    let sid = fx.sid.clone();
    let bundle = fx.bundle("sandbox", "{}");
    let paths = SandboxPaths::new(&sid);
    fx.tmpfs(&paths.share_dir.join("c1"));
    std::fs::create_dir_all(&paths.state_dir).expect("state dir");

    cleanup(&sid, Some(&bundle));
    assert!(!mounts::is_mount_point(&bundle.join("rootfs")));
    assert!(!paths.share_dir.exists(), "share dir left behind");
    assert!(!paths.state_dir.exists(), "state dir left behind");
    // A bundle that is already gone is fine too.
    cleanup(&sid, Some(&fx.dir.path().join("missing")));
    cleanup(&sid, None);
}

#[test]
fn a_live_shim_keeps_what_it_tracks() {
    let mut fx = Fixture::new("live");
    let sid = fx.sid.clone();
    let ann = format!(
        r#"{{"io.kubernetes.cri-o.ContainerType":"container","io.kubernetes.cri-o.SandboxID":"{sid}"}}"#
    );
    let tracked = fx.bundle("c1", &ann);
    let untracked = fx.bundle("c2", &ann);
    let qemu = fx.sleeper();
    let mut state = SandboxRecord::new(&sid);
    // This test process plays the live shim: never delete `sid` itself here.
    state.shim = ProcessRecord::capture("shim", std::process::id());
    state.processes.push(qemu.clone());
    state.containers.insert(
        "c1".into(),
        ContainerRecord {
            bundle: tracked.clone(),
            rootfs_mounted: true,
        },
    );
    state.save().expect("save state");

    cleanup("c1", Some(&tracked));
    assert!(
        mounts::is_mount_point(&tracked.join("rootfs")),
        "the shim's mount was taken"
    );
    cleanup("c2", Some(&untracked));
    assert!(
        !mounts::is_mount_point(&untracked.join("rootfs")),
        "stale rootfs left mounted"
    );
    assert!(qemu.is_alive(), "a live sandbox's process was killed");
    assert!(crate::layout::shim_dir(&sid).join("state.json").exists());
}
