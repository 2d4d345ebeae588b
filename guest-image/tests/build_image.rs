//! End-to-end builds against the installed Debian kernel: image contents,
//! manifest, symlinks, size and time budgets, up-to-date detection, `--force`,
//! `--check`, raw-boot, floor, and CLI error messages.

mod common;

use std::fs;
use std::path::Path;

use common::*;
use kata_agent_protocol::guest;
use kata_guest_image::{cpio, manifest};

fn summary_figures(line: &str) -> (f64, f64) {
    // "... (1.33 MiB, 13 modules, zstd) in 0.81s"
    let mib = line
        .split('(')
        .nth(1)
        .and_then(|s| s.split(" MiB").next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no size in summary: {line}"));
    let secs = line
        .rsplit(" in ")
        .next()
        .and_then(|s| s.trim().strip_suffix('s'))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no time in summary: {line}"));
    (mib, secs)
}

#[test]
fn builds_a_complete_image_from_the_node_kernel() {
    let release = require_kernel();
    let tmp = tempfile::tempdir().expect("tmp");
    let out = tmp.path().join("out");
    let agent = standin_agent(tmp.path());
    let o = build(&out, &agent, &[]);
    let line = stdout(&o);
    assert!(line.contains(&format!("built {release} initrd")), "{line}");
    let (mib, secs) = summary_figures(line.trim());
    println!("initrd size: {mib:.2} MiB, build time: {secs:.2} s ({release})");
    assert!(mib < 30.0, "initrd too large: {mib} MiB");
    assert!(secs < 15.0, "build too slow: {secs} s");

    // Symlinks.
    assert_eq!(
        fs::read_link(out.join("kata.initrd")).expect("initrd link"),
        Path::new(&release).join("kata.initrd")
    );
    let kernel_target = fs::read_link(out.join("kata.kernel")).expect("kernel link");
    assert!(
        kernel_target.is_absolute() && kernel_target.is_file(),
        "{kernel_target:?}"
    );

    // Manifest.
    let m = manifest::read(&out.join(&release).join("manifest.json"))
        .expect("read manifest")
        .expect("manifest exists");
    assert_eq!(m.kernel_release, release);
    assert_eq!(m.kernel_path, kernel_target);
    assert_eq!(m.kernel_sha256, sha256(&kernel_target));
    assert_eq!(m.agent_sha256, sha256(&agent));
    assert_eq!(m.agent_version, "unknown");
    assert_eq!(m.inputs_hash, manifest::inputs_hash(&m));
    let info = m.initrd.as_ref().expect("initrd info");
    let initrd = out.join("kata.initrd");
    assert_eq!(info.sha256, sha256(&initrd));
    assert_eq!(info.size, fs::metadata(&initrd).expect("stat").len());
    assert!(
        m.libs.iter().any(|l| l.guest_path.ends_with("/libc.so.6")),
        "{:?}",
        m.libs
    );
    for name in [
        "vsock",
        "vmw_vsock_virtio_transport",
        "9pnet_virtio",
        "overlay",
        "virtio_blk",
    ] {
        assert!(
            m.modules.iter().any(|e| e.name == name),
            "manifest lacks {name}"
        );
    }

    // The initrd itself.
    let entries = parse_initrd(&initrd).expect("parse initrd");
    let init = find(&entries, "/init").expect("/init");
    assert_eq!(init.mode, 0o755);
    assert_eq!(
        file_data(&entries, "/init"),
        fs::read(&agent).expect("agent").as_slice()
    );
    for d in ["/proc", "/sys", "/dev", "/run", "/tmp", "/etc", "/etc/kata"] {
        assert!(
            matches!(find(&entries, d).map(|e| &e.kind), Some(cpio::Kind::Dir)),
            "{d}"
        );
    }
    for lib in &m.libs {
        assert!(
            find(&entries, &lib.guest_path).is_some(),
            "lib {} not packed",
            lib.guest_path
        );
    }
    let load = String::from_utf8(file_data(&entries, guest::MODULES_LOAD_LIST).to_vec())
        .expect("utf8 load list");
    let lines: Vec<&str> = load.lines().collect();
    assert_eq!(lines.len(), m.modules.len());
    for l in &lines {
        assert!(
            l.starts_with(&format!("/lib/modules/{release}/")) && l.ends_with(".ko"),
            "{l}"
        );
        assert_eq!(
            &file_data(&entries, l)[..4],
            b"\x7fELF",
            "{l} not a plain ELF module"
        );
    }
    let pos = |n: &str| {
        lines
            .iter()
            .position(|l| l.ends_with(&format!("/{n}.ko")))
            .unwrap_or_else(|| panic!("{n} not in load list:\n{load}"))
    };
    assert!(pos("vsock") < pos("vmw_vsock_virtio_transport_common"));
    assert!(pos("vmw_vsock_virtio_transport_common") < pos("vmw_vsock_virtio_transport"));
    assert!(pos("9pnet") < pos("9pnet_virtio"));
    let embedded: manifest::Manifest =
        serde_json::from_slice(file_data(&entries, guest::IMAGE_MANIFEST)).expect("embedded");
    assert_eq!(embedded.inputs_hash, m.inputs_hash);
    assert!(embedded.initrd.is_none());
}

#[test]
fn second_run_is_up_to_date_and_force_or_changes_rebuild() {
    let release = require_kernel();
    let tmp = tempfile::tempdir().expect("tmp");
    let out = tmp.path().join("out");
    let agent = standin_agent(tmp.path());
    build(&out, &agent, &[]);
    let initrd = out.join(&release).join("kata.initrd");
    let mtime = fs::metadata(&initrd)
        .expect("stat")
        .modified()
        .expect("mtime");
    let sum = sha256(&initrd);

    let o = build(&out, &agent, &[]);
    let expected = format!(
        "kata-guest-image: {release} up to date ({})",
        initrd.display()
    );
    assert_eq!(stdout(&o).trim(), expected);
    assert_eq!(
        fs::metadata(&initrd)
            .expect("stat")
            .modified()
            .expect("mtime"),
        mtime
    );
    let out_s = out.to_str().expect("utf8");
    let agent_s = agent.to_str().expect("utf8");
    let check = run(&["--check", "--output-dir", out_s, "--agent", agent_s]);
    assert_eq!(check.status.code(), Some(0), "{}", stderr(&check));

    let o = build(&out, &agent, &["--force"]);
    assert!(stdout(&o).contains("built"), "{}", stdout(&o));
    assert_ne!(
        fs::metadata(&initrd)
            .expect("stat")
            .modified()
            .expect("mtime"),
        mtime
    );
    // Same inputs give a byte-identical image.
    assert_eq!(sha256(&initrd), sum);

    // The `build` subcommand spelling works too.
    let o = run(&["build", "--output-dir", out_s, "--agent", agent_s]);
    assert!(stdout(&o).contains("up to date"), "{}", stdout(&o));

    // A changed agent is noticed by --check (exit 1) and rebuilt by a run.
    let mut bytes = fs::read(&agent).expect("agent");
    bytes.extend_from_slice(b"trailing junk");
    fs::write(&agent, bytes).expect("modify agent");
    let check = run(&["--check", "--output-dir", out_s, "--agent", agent_s]);
    assert_eq!(
        check.status.code(),
        Some(1),
        "{}{}",
        stdout(&check),
        stderr(&check)
    );
    assert!(
        stdout(&check).contains("needs a rebuild"),
        "{}",
        stdout(&check)
    );
    let o = build(&out, &agent, &[]);
    assert!(stdout(&o).contains("built"), "{}", stdout(&o));
    assert_ne!(sha256(&initrd), sum);

    // A damaged initrd is rebuilt rather than trusted.
    fs::write(&initrd, b"garbage").expect("damage");
    let check = run(&["--check", "--output-dir", out_s, "--agent", agent_s]);
    assert_eq!(check.status.code(), Some(1));
    build(&out, &agent, &[]);
    parse_initrd(&initrd).expect("repaired image parses");
}

#[test]
fn raw_boot_image_powers_off() {
    require_kernel();
    let tmp = tempfile::tempdir().expect("tmp");
    let file = tmp.path().join("sub/raw.initrd");
    let o = run(&["raw-boot", "--output", file.to_str().expect("utf8")]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("raw-boot initrd"), "{}", stdout(&o));
    let entries = parse_initrd(&file).expect("parse raw-boot initrd");
    let init = String::from_utf8(file_data(&entries, "/init").to_vec()).expect("utf8");
    assert!(
        init.starts_with("#!/bin/busybox sh\n") && init.contains("poweroff -f"),
        "{init}"
    );
    assert_eq!(find(&entries, "/init").expect("/init").mode, 0o755);
    assert_eq!(find(&entries, "/bin/busybox").expect("busybox").mode, 0o755);
    assert!(file_data(&entries, "/bin/busybox").starts_with(b"\x7fELF"));

    let o = run(&[
        "raw-boot",
        "--output",
        file.to_str().expect("utf8"),
        "--busybox",
        "/nonexistent/busybox",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("apt-get install busybox-static"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn floor_image_has_the_pod_modules_busybox_and_the_program() {
    let release = require_kernel();
    let tmp = tempfile::tempdir().expect("tmp");
    let program = standin_agent(tmp.path());
    let file = tmp.path().join("sub/floor.initrd");
    let file_s = file.to_str().expect("utf8");
    let program_s = program.to_str().expect("utf8");
    let o = run(&["floor", "--init-program", program_s, "--output", file_s]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("floor initrd"), "{}", stdout(&o));
    let entries = parse_initrd(&file).expect("parse floor initrd");
    let init = String::from_utf8(file_data(&entries, "/init").to_vec()).expect("utf8");
    assert_eq!(init, kata_guest_image::floor::init_script());
    assert_eq!(
        file_data(&entries, kata_guest_image::floor::PROGRAM_GUEST),
        fs::read(&program).expect("read program")
    );
    // The stand-in program is dynamic: its libraries come along.
    assert!(find(&entries, "/lib/x86_64-linux-gnu/libc.so.6").is_some());
    let list =
        String::from_utf8(file_data(&entries, guest::MODULES_LOAD_LIST).to_vec()).expect("utf8");
    for name in ["vsock.ko", "vmw_vsock_virtio_transport.ko", "virtio_net.ko"] {
        assert!(
            list.lines().any(|l| l.ends_with(&format!("/{name}"))),
            "{name} not in {list}"
        );
    }
    for path in list.lines() {
        assert!(
            path.starts_with(&format!("/lib/modules/{release}/")),
            "{path}"
        );
        assert!(
            find(&entries, path).is_some(),
            "{path} listed but not packed"
        );
    }

    let o = run(&[
        "floor",
        "--init-program",
        "/nonexistent/kata-floor",
        "--output",
        file_s,
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("-p kata-floor"), "{}", stderr(&o));
}

#[test]
fn failures_are_one_clear_line() {
    let tmp = tempfile::tempdir().expect("tmp");
    let agent = standin_agent(tmp.path());
    let empty = tmp.path().join("empty");
    fs::create_dir(&empty).expect("mkdir");
    let o = run(&[
        "--output-dir",
        tmp.path().join("out").to_str().expect("utf8"),
        "--agent",
        agent.to_str().expect("utf8"),
        "--modules-dir",
        empty.to_str().expect("utf8"),
        "--boot-dir",
        empty.to_str().expect("utf8"),
    ]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("no usable kernel")
            && err.contains("apt-get install -t bookworm-backports linux-image-amd64"),
        "{err}"
    );

    require_kernel();
    let o = run(&[
        "--output-dir",
        tmp.path().join("out").to_str().expect("utf8"),
        "--agent",
        "/nonexistent/kata-agent",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("agent binary /nonexistent/kata-agent not found"),
        "{}",
        stderr(&o)
    );
}
