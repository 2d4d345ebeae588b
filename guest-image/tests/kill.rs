//! Crash safety: SIGKILL a `--force` build at varying moments and check the
//! previously installed image stays complete and reachable, that the next run
//! recovers (cleaning temp files), and that concurrent builders serialize.

mod common;

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::Duration;

use common::*;
use kata_guest_image::manifest;

fn assert_usable(out: &Path, old_sum: &str) {
    let initrd = out.join("kata.initrd");
    let kernel = out.join("kata.kernel");
    assert!(kernel.is_file(), "kata.kernel does not resolve");
    assert!(initrd.is_file(), "kata.initrd does not resolve");
    let entries = parse_initrd(&initrd).unwrap_or_else(|e| panic!("initrd not parseable: {e}"));
    let sum = sha256(&initrd);
    // Same inputs give a byte-identical image, so old == new here; anything
    // else must at least be complete.
    if sum != old_sum {
        assert!(find(&entries, "/init").is_some(), "new image lacks /init");
    }
}

fn temps_in(out: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for dir in [out.to_path_buf()].into_iter().chain(
        fs::read_dir(out)
            .expect("ls")
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_dir()),
    ) {
        for e in fs::read_dir(&dir).expect("ls").flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(".tmp-") {
                found.push(format!("{}/{name}", dir.display()));
            }
        }
    }
    found
}

#[test]
fn sigkill_mid_build_leaves_previous_image_usable() {
    require_kernel();
    let tmp = tempfile::tempdir().expect("tmp");
    let out = tmp.path().join("out");
    let agent = standin_agent(tmp.path());
    build(&out, &agent, &[]);
    let old_sum = sha256(&out.join("kata.initrd"));

    // Time one forced build so kills can also be aimed at its final phase,
    // where the temp file is written and renamed into place.
    let t0 = std::time::Instant::now();
    build(&out, &agent, &["--force"]);
    let full_ms = t0.elapsed().as_millis() as u64;
    let mut delays = vec![0u64, 5, 20, 50, 100, 200];
    delays.extend((0..12).map(|i| full_ms * (70 + i * 3) / 100));
    println!("forced build takes {full_ms} ms; kill delays {delays:?}");

    let mut saw_temp = 0;
    for delay_ms in delays {
        let mut child = Command::new(BIN)
            .args(["--force", "--output-dir"])
            .arg(&out)
            .arg("--agent")
            .arg(&agent)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn build");
        sleep(Duration::from_millis(delay_ms));
        child.kill().expect("SIGKILL");
        let status = child.wait().expect("reap");
        println!("killed after {delay_ms} ms: {status}");
        saw_temp += usize::from(!temps_in(&out).is_empty());
        assert_usable(&out, &old_sum);
        let m = manifest::read(
            &out.join(fs::read_link(out.join("kata.initrd")).expect("link"))
                .with_file_name("manifest.json"),
        )
        .expect("manifest parses after kill");
        assert!(m.is_some(), "manifest vanished");

        let o = build(&out, &agent, &[]);
        let s = stdout(&o);
        assert!(s.contains("up to date") || s.contains("built"), "{s}");
        assert_usable(&out, &old_sum);
        assert!(
            temps_in(&out).is_empty(),
            "temps left: {:?}",
            temps_in(&out)
        );
    }
    println!("kills that landed while temp files existed: {saw_temp}");
}

/// Kills a forced build the moment a temp file named `.tmp-<stem>...`
/// appears, i.e. mid-install. Returns whether the kill landed there.
fn kill_on_temp(out: &Path, agent: &Path, stem: &str) -> bool {
    let mut child = Command::new(BIN)
        .args(["--force", "--output-dir"])
        .arg(out)
        .arg("--agent")
        .arg(agent)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn build");
    let needle = format!("/.tmp-{stem}");
    let hit = loop {
        if temps_in(out).iter().any(|t| t.contains(&needle)) {
            child.kill().expect("SIGKILL");
            break true;
        }
        if child.try_wait().expect("poll child").is_some() {
            break false;
        }
    };
    child.wait().expect("reap");
    hit
}

#[test]
fn sigkill_during_install_keeps_old_image() {
    require_kernel();
    let tmp = tempfile::tempdir().expect("tmp");
    let out = tmp.path().join("out");
    let agent = standin_agent(tmp.path());
    build(&out, &agent, &[]);
    let old_sum = sha256(&out.join("kata.initrd"));
    let mut hits = 0;
    for round in 0..6 {
        let stem = if round % 2 == 0 {
            "kata.initrd"
        } else {
            "manifest.json"
        };
        let hit = kill_on_temp(&out, &agent, stem);
        println!("round {round}: kill while .tmp-{stem} existed: {hit}");
        hits += usize::from(hit);
        assert_usable(&out, &old_sum);
        build(&out, &agent, &[]);
        assert_usable(&out, &old_sum);
        assert!(
            temps_in(&out).is_empty(),
            "temps left: {:?}",
            temps_in(&out)
        );
    }
    assert!(
        hits > 0,
        "no kill landed mid-install; the test did not exercise anything"
    );
}

#[test]
fn concurrent_builders_serialize_on_the_lock() {
    require_kernel();
    let tmp = tempfile::tempdir().expect("tmp");
    let out = tmp.path().join("out");
    let agent = standin_agent(tmp.path());
    let spawn = || {
        Command::new(BIN)
            .args(["--force", "--output-dir"])
            .arg(&out)
            .arg("--agent")
            .arg(&agent)
            .output()
    };
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(spawn);
        let b = s.spawn(spawn);
        (a.join().expect("thread a"), b.join().expect("thread b"))
    });
    for o in [a.expect("run a"), b.expect("run b")] {
        assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
        assert!(stdout(&o).contains("built"), "{}", stdout(&o));
    }
    parse_initrd(&out.join("kata.initrd")).expect("image parses");
    assert!(temps_in(&out).is_empty());
}
