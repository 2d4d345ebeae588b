//! The shim binary's one-shot actions as containerd and CRI-O run them:
//! `--version`, `-info`, `features` and `delete` answer promptly with
//! exactly what their callers parse.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use containerd_shim_protos::api::DeleteResponse;
use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::types::introspection::RuntimeInfo;

fn shim() -> Command {
    let mut c = Command::new(bin("containerd-shim-kata-v2"));
    c.stdin(Stdio::null());
    c
}

#[test]
fn version_info_and_features_answer_at_once() {
    for flag in ["-v", "-version", "--version"] {
        let out = shim().arg(flag).output().expect("run");
        assert!(out.status.success(), "{flag}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.starts_with("containerd-shim-kata-v2 "),
            "{flag}: {text}"
        );
    }
    let out = shim().arg("-info").output().expect("run -info");
    assert!(out.status.success());
    let info = RuntimeInfo::parse_from_bytes(&out.stdout).expect("a bare RuntimeInfo");
    assert_eq!(info.name, "io.containerd.kata.v2");
    assert!(!info.version.version.is_empty());

    let began = Instant::now();
    let out = shim().arg("features").output().expect("run features");
    assert!(
        began.elapsed() < Duration::from_secs(1),
        "features took {:?}",
        began.elapsed()
    );
    // CRI-O reads it as the OCI features document: versions, and `rro`
    // among the mount options turns on recursive read-only mounts.
    assert!(out.status.success(), "features: {out:?}");
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("features JSON");
    assert_eq!(doc["ociVersionMin"], "1.0.0", "{doc}");
    assert!(doc["ociVersionMax"].is_string(), "{doc}");
    assert!(
        doc["mountOptions"]
            .as_array()
            .is_some_and(|o| o.iter().any(|v| v == "rro")),
        "{doc}"
    );
}

#[test]
fn delete_prints_a_bare_response_fast_and_is_idempotent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let id = format!("t-bin-{}", hex_id());
    for _ in 0..2 {
        let began = Instant::now();
        let out = shim()
            .args(["-namespace", "k8s.io", "-address", "", "-id", &id])
            .arg("-bundle")
            .arg(dir.path())
            .arg("delete")
            .current_dir(dir.path())
            .output()
            .expect("run delete");
        let took = began.elapsed();
        assert!(took < Duration::from_secs(3), "delete took {took:?}");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let resp = DeleteResponse::parse_from_bytes(&out.stdout).expect("a bare DeleteResponse");
        assert_eq!(resp.exit_status, 137);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs() as i64;
        assert!(
            (now - resp.exited_at.seconds).abs() < 10,
            "exited_at is not now"
        );
    }
    assert_no_leaks(&id);
}
