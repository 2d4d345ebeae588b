//! Bad input through the CRI-O driver: every refusal carries a precise gRPC
//! code (never UNKNOWN) and a message naming the field, the shim keeps
//! serving the pod afterwards, a second pod is untouched, and sizing
//! annotations that are zero, negative or huge give a sane VM.

mod common;

use std::path::Path;
use std::time::Duration;

use common::crio::*;
use common::*;
use containerd_shim_protos::api;
use serde_json::{Value, json};
use ttrpc::Code;

const EXEC: Duration = Duration::from_secs(60);

fn running(crio: &Crio, id: &str) {
    let st = crio.state(id);
    assert_eq!(
        st.status.enum_value(),
        Ok(api::Status::RUNNING),
        "{id} is no longer running: {st:?}"
    );
}

fn rpc<T: std::fmt::Debug>(r: ttrpc::Result<T>) -> Result<T, CrioError> {
    r.map_err(CrioError::Rpc)
}

/// Adds a bind volume to a prepared spec; returns its index in `mounts`.
fn add_volume(p: &mut Prepared, source: &Path) -> usize {
    let mounts = p.spec["mounts"].as_array_mut().expect("mounts");
    mounts.push(json!({
        "destination": "/data",
        "type": "bind",
        "source": source.display().to_string(),
        "options": ["rbind", "rw"]
    }));
    mounts.len() - 1
}

#[test]
fn bad_requests_get_precise_codes_and_spare_the_pods() {
    let mut crio = Crio::new("bad");
    let other = crio.run_pod_sandbox(&PodConfig::new("bystander"));
    let other_ctr = crio.create_container(&other, "b", &["/bin/sleep", "1000"]);
    crio.start_container(&other_ctr);
    let sid = crio.run_pod_sandbox(&PodConfig::new("target"));
    let good = crio.create_container(&sid, "good", &["/bin/sleep", "1000"]);
    crio.start_container(&good);
    let qemu = qemu_pids(&sid);
    let other_qemu = qemu_pids(&other);
    let healthy = |crio: &Crio| {
        running(crio, &good);
        running(crio, &sid);
        running(crio, &other_ctr);
        assert_eq!(qemu_pids(&sid), qemu, "the target pod's QEMU changed");
        assert_eq!(
            qemu_pids(&other),
            other_qemu,
            "the other pod's QEMU changed"
        );
    };

    // Unknown container and exec ids.
    let unknown = hex_id();
    let mut state = api::StateRequest::new();
    state.id = unknown.clone();
    expect_code(
        rpc(crio.call::<_, api::StateResponse>(&good, "State", &state)),
        Code::NOT_FOUND,
    );
    let mut start = api::StartRequest::new();
    start.id = unknown.clone();
    expect_code(
        rpc(crio.call::<_, api::StartResponse>(&good, "Start", &start)),
        Code::NOT_FOUND,
    );
    let mut del = api::DeleteRequest::new();
    del.id = unknown.clone();
    expect_code(
        rpc(crio.call::<_, api::DeleteResponse>(&good, "Delete", &del)),
        Code::NOT_FOUND,
    );
    let mut wait = api::WaitRequest::new();
    wait.id = unknown.clone();
    expect_code(
        rpc(crio.call::<_, api::WaitResponse>(&good, "Wait", &wait)),
        Code::NOT_FOUND,
    );
    expect_code(rpc(crio.kill(&good, &unknown, 9, false)), Code::NOT_FOUND);
    let mut kill = api::KillRequest::new();
    kill.id = unknown.clone();
    kill.signal = 9;
    expect_code(
        rpc(crio.call::<_, api::Empty>(&good, "Kill", &kill)),
        Code::NOT_FOUND,
    );
    expect_code(rpc(crio.try_state(&good, &unknown)), Code::NOT_FOUND);
    let mut del_exec = api::DeleteRequest::new();
    del_exec.id = good.clone();
    del_exec.exec_id = unknown.clone();
    expect_code(
        rpc(crio.call::<_, api::DeleteResponse>(&good, "Delete", &del_exec)),
        Code::NOT_FOUND,
    );
    healthy(&crio);

    // The same exec id twice.
    let exec_id = hex_id();
    let first = crio
        .exec(&good, &exec_id, &["/bin/sleep", "30"])
        .expect("first Exec");
    expect_code(
        crio.exec(&good, &exec_id, &["/bin/true"]).map(|_| ()),
        Code::ALREADY_EXISTS,
    );
    let mut del_first = api::DeleteRequest::new();
    del_first.id = good.clone();
    del_first.exec_id = exec_id;
    crio.call::<_, api::DeleteResponse>(&good, "Delete", &del_first)
        .expect("Delete of a created, never started exec");
    drop(first);
    healthy(&crio);

    // A spec that is not an OCI spec.
    let mut p = crio.prepare_container(&sid, "badargs", &["/bin/true"]);
    p.spec["process"]["args"] = json!(42);
    let msg = expect_code(crio.create_prepared(p), Code::INVALID_ARGUMENT);
    assert!(
        msg.contains("process.args"),
        "message does not name the field: {msg}"
    );
    healthy(&crio);

    // containerd style: relative root with rootfs mounts, but `rootfs` in
    // the bundle is a symlink to a directory outside it.
    let outside = crio.dir.join("outside");
    std::fs::create_dir_all(&outside).expect("mkdir outside");
    let mut p = crio.prepare_container(&sid, "escape", &["/bin/true"]);
    std::os::unix::fs::symlink(&outside, p.bundle.join("rootfs")).expect("symlink rootfs");
    p.spec["root"] = json!({"path": "rootfs", "readonly": false});
    let mut m = api::Mount::new();
    m.type_ = "bind".into();
    m.source = p.rootfs.display().to_string();
    m.options = vec!["rbind".into(), "rw".into()];
    p.rootfs_mounts = vec![m];
    let msg = expect_code(crio.create_prepared(p), Code::INVALID_ARGUMENT);
    assert!(
        msg.contains("rootfs"),
        "message does not name the rootfs: {msg}"
    );
    let escaped: Vec<_> = mount_points()
        .into_iter()
        .filter(|m| m.starts_with(&outside))
        .collect();
    assert!(
        escaped.is_empty(),
        "the shim mounted outside the bundle: {escaped:?}"
    );
    healthy(&crio);

    // Volumes: a source with `..`, and a source that is a symlink.
    let vol = crio.dir.join("vol");
    std::fs::create_dir_all(&vol).expect("mkdir vol");
    let link = crio.dir.join("vol-link");
    std::os::unix::fs::symlink("/etc", &link).expect("symlink volume");
    for source in [vol.join("..").join("vol"), link] {
        let mut p = crio.prepare_container(&sid, "volume", &["/bin/true"]);
        let i = add_volume(&mut p, &source);
        let msg = expect_code(crio.create_prepared(p), Code::INVALID_ARGUMENT);
        assert!(
            msg.contains(&format!("mounts[{i}]")),
            "message for {} does not name mounts[{i}]: {msg}",
            source.display()
        );
        healthy(&crio);
    }

    assert_eq!(
        crio.exec_sync(&good, &["echo", "fine"], EXEC).stdout(),
        "fine\n"
    );
    crio.remove_pod(&sid);
    crio.assert_no_leaks(&sid);
    assert_eq!(
        crio.exec_sync(&other_ctr, &["echo", "untouched"], EXEC)
            .stdout(),
        "untouched\n"
    );
    crio.remove_pod(&other);
    crio.assert_no_leaks(&other);
}

/// The leading number of a QEMU size argument (`2048M`, `size=2048M,...`,
/// `2,maxcpus=4`), with memory suffixes turned into MiB.
fn leading_number(arg: &str, mib: bool) -> u64 {
    let first = arg.split(',').next().expect("value");
    let first = first.strip_prefix("size=").unwrap_or(first);
    let digits: String = first.chars().take_while(char::is_ascii_digit).collect();
    let n: u64 = digits.parse().unwrap_or_else(|e| panic!("{arg:?}: {e}"));
    match (mib, &first[digits.len()..]) {
        (false, _) | (true, "M" | "m" | "") => n,
        (true, "G" | "g") => n * 1024,
        (true, other) => panic!("unexpected size suffix {other:?} in {arg:?}"),
    }
}

fn host_mib() -> u64 {
    let info = std::fs::read_to_string("/proc/meminfo").expect("meminfo");
    let kib: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("MemTotal");
    kib / 1024
}

#[test]
fn sizing_annotations_zero_negative_and_huge() {
    let defaults = kata_shim::config::Config::default().hypervisor.qemu;
    let (def_cpus, def_mib) = (
        u64::from(defaults.default_vcpus),
        u64::from(defaults.default_memory),
    );
    let host_cpus = std::thread::available_parallelism()
        .expect("cpu count")
        .get() as u64;
    // The pod annotations size the VM only under static sizing.
    let mut crio = Crio::with_configs(
        "sizing",
        "",
        "\n[runtime]\nstatic_sandbox_resource_mgmt = true\n",
    );
    let cases: [(&str, Value); 3] = [
        (
            "zero",
            json!({"cpu_period": 100000, "cpu_quota": 0, "memory_limit_in_bytes": 0}),
        ),
        (
            "negative",
            json!({"cpu_period": -1, "cpu_quota": -100000, "memory_limit_in_bytes": -1}),
        ),
        (
            "huge",
            json!({"cpu_period": 100000, "cpu_quota": i64::MAX / 2, "memory_limit_in_bytes": i64::MAX}),
        ),
    ];
    for (name, resources) in cases {
        let mut pod = PodConfig::new(name);
        pod.resources = Some(resources);
        let sid = crio.run_pod_sandbox(&pod);
        let qemu = qemu_pids(&sid);
        assert_eq!(qemu.len(), 1, "{name}: QEMU processes {qemu:?}");
        let argv = process_argv(qemu[0]);
        let smp = leading_number(arg_after(&argv, "-smp").expect("-smp"), false);
        let mem = leading_number(arg_after(&argv, "-m").expect("-m"), true);
        if name == "huge" {
            assert_eq!(
                smp,
                host_cpus + def_cpus,
                "huge quota: vCPUs clamped to the ceiling (the host's plus default_vcpus)"
            );
            assert!(
                (def_mib..=host_mib()).contains(&mem),
                "huge limit: {mem} MiB is not within [{def_mib}, host {}]",
                host_mib()
            );
        } else {
            assert_eq!(
                (smp, mem),
                (def_cpus, def_mib),
                "{name} sizing must be ignored"
            );
        }
        crio.remove_pod(&sid);
        crio.assert_no_leaks(&sid);
    }
}
