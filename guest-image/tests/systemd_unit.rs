//! The shipped systemd unit: its key directives, `systemd-analyze verify` on
//! a copy whose ExecStart points at the built binary, and running that
//! ExecStart command for real.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;

use common::*;

const UNIT_NAME: &str = "kata-guest-image.service";

fn unit_text() -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../configs")
        .join(UNIT_NAME);
    fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

fn directive<'a>(text: &'a str, key: &str) -> Vec<&'a str> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix(key)?.strip_prefix('='))
        .collect()
}

#[test]
fn unit_declares_the_expected_ordering() {
    let text = unit_text();
    assert_eq!(directive(&text, "Type"), ["oneshot"]);
    assert_eq!(directive(&text, "RemainAfterExit"), ["yes"]);
    assert_eq!(directive(&text, "ExecStart"), ["/usr/bin/kata-guest-image"]);
    let before = directive(&text, "Before").join(" ");
    for unit in ["kubelet.service", "crio.service", "containerd.service"] {
        assert!(
            before.split_whitespace().any(|u| u == unit),
            "Before= lacks {unit}"
        );
    }
    assert!(
        directive(&text, "After")
            .join(" ")
            .contains("local-fs.target")
    );
    assert!(
        directive(&text, "WantedBy")
            .join(" ")
            .contains("multi-user.target")
    );
}

#[test]
fn unit_verifies_and_its_exec_start_builds_an_image() {
    require_kernel();
    let tmp = tempfile::tempdir().expect("tmp");
    let text = unit_text();
    let exec = directive(&text, "ExecStart");
    assert_eq!(exec.len(), 1, "exactly one ExecStart");
    let mut words = exec[0].split_whitespace();
    let installed = words.next().expect("ExecStart binary");
    let rest: Vec<&str> = words.collect();
    let rewritten = text.replace(
        &format!("ExecStart={installed}"),
        &format!("ExecStart={BIN}"),
    );
    let unit_path = tmp.path().join(UNIT_NAME);
    fs::write(&unit_path, &rewritten).expect("write unit copy");

    let v = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit_path)
        .output()
        .expect("systemd-analyze is installed (apt-get install systemd)");
    let verr = stderr(&v);
    assert!(v.status.success(), "systemd-analyze verify failed:\n{verr}");
    assert!(
        !verr.contains(UNIT_NAME),
        "verify complained about the unit:\n{verr}"
    );

    let out = tmp.path().join("out");
    let agent = standin_agent(tmp.path());
    let o = Command::new(BIN)
        .args(&rest)
        .arg("--output-dir")
        .arg(&out)
        .arg("--agent")
        .arg(&agent)
        .output()
        .expect("run ExecStart");
    assert!(
        o.status.success(),
        "ExecStart failed:\n{}{}",
        stdout(&o),
        stderr(&o)
    );
    assert!(stdout(&o).contains("built"), "{}", stdout(&o));
    parse_initrd(&out.join("kata.initrd")).expect("image from ExecStart parses");
}
