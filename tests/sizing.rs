//! The pod VM grows and shrinks with its containers' limits
//! (`static_sandbox_resource_mgmt = false`, the shipped default), through
//! CRI-O's driver and containerd's CRI: a 2-CPU, 3-GiB container in a
//! default pod (1 vCPU, 2 GiB) sees 3 vCPUs and more than 3 GiB;
//! UpdateContainerResources grows the VM past its boot size and shrinks it;
//! a limit above the ceiling is refused when so configured; a growth that
//! QEMU or the guest refuses leaves the pod at its old size with a clear
//! error.

mod common;

use std::time::Duration;

use common::containerd::Containerd;
use common::cri::{KATA, container_config, pod_config};
use common::crio::*;
use common::image::BUSYBOX_REF;
use common::*;
use k8s_cri::v1::{LinuxContainerConfig, LinuxContainerResources};
use serde_json::{Value, json};

const EXEC: Duration = Duration::from_secs(120);
const GIB: i64 = 1 << 30;
/// `MemTotal` of a container must be above this for a 3 GiB limit.
const THREE_GIB_KIB: u64 = 3 * 1024 * 1024;

fn limits(cpus: i64, memory: i64) -> Value {
    json!({
        "cpu": {"quota": cpus * 100_000, "period": 100_000, "shares": 1024},
        "memory": {"limit": memory, "swap": memory},
    })
}

/// `nproc`, `MemTotal` (KiB), `cpu.max` and `memory.max` seen in a
/// container, from one exec.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    nproc: u32,
    mem_total_kib: u64,
    cpu_max: String,
    memory_max: String,
}

const PROBE: &str = "nproc; grep MemTotal /proc/meminfo; \
     cat /sys/fs/cgroup/cpu.max 2>/dev/null || echo none; \
     cat /sys/fs/cgroup/memory.max 2>/dev/null || echo none";

fn parse_seen(out: &str) -> Seen {
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines.len() >= 4, "probe output {out:?}");
    Seen {
        nproc: lines[0].trim().parse().expect("nproc"),
        mem_total_kib: lines[1]
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .expect("MemTotal"),
        cpu_max: lines[2].trim().to_string(),
        memory_max: lines[3].trim().to_string(),
    }
}

fn crio_seen(crio: &Crio, id: &str) -> Seen {
    let r = crio.exec_sync(id, &["/bin/sh", "-c", PROBE], EXEC);
    assert_eq!(r.exit_code, 0, "probe: {} {}", r.stdout(), r.stderr());
    parse_seen(&r.stdout())
}

fn crio_container(crio: &mut Crio, sid: &str, name: &str, res: Option<Value>) -> String {
    let mut p = crio.prepare_container(sid, name, &["/bin/sleep", "1000"]);
    if let Some(r) = res {
        p.spec["linux"]["resources"]["cpu"] = r["cpu"].clone();
        p.spec["linux"]["resources"]["memory"] = r["memory"].clone();
    }
    let id = crio
        .create_prepared(p)
        .unwrap_or_else(|e| panic!("CreateContainer {name}: {e:?}"));
    crio.start_container(&id);
    id
}

#[test]
fn crio_a_container_limit_grows_the_vm_and_updates_grow_and_shrink_it() {
    let mut crio = Crio::new("sizing");
    let sid = crio.run_pod_sandbox(&PodConfig::new("sizing"));

    // Without limits the VM keeps its boot size.
    let plain = crio_container(&mut crio, &sid, "plain", None);
    let boot = crio_seen(&crio, &plain);
    assert_eq!(boot.nproc, 1, "{boot:?}");
    assert!(boot.mem_total_kib < 2 * 1024 * 1024, "{boot:?}");

    // Kata's rule: 1 default + 2 = 3 vCPUs, 2 GiB + 3 GiB of memory.
    let big = crio_container(&mut crio, &sid, "big", Some(limits(2, 3 * GIB)));
    let seen = crio_seen(&crio, &big);
    eprintln!("2-CPU 3-GiB container sees {seen:?}");
    assert_eq!(seen.nproc, 3, "{seen:?}");
    assert!(seen.mem_total_kib > THREE_GIB_KIB, "{seen:?}");
    assert_eq!(seen.cpu_max, "200000 100000", "{seen:?}");
    assert_eq!(seen.memory_max, (3 * GIB).to_string(), "{seen:?}");

    // Shrink: 1 CPU and 1 GiB. The vCPU goes; the 3 GiB DIMM cannot go
    // without taking the VM below the 1 GiB still asked for, so it stays.
    crio.update(&big, &limits(1, GIB)).expect("Update down");
    let down = crio_seen(&crio, &big);
    eprintln!("after the shrink to 1 CPU, 1 GiB: {down:?}");
    assert_eq!(down.nproc, 2, "{down:?}");
    assert_eq!(down.cpu_max, "100000 100000", "{down:?}");
    assert_eq!(down.memory_max, GIB.to_string(), "{down:?}");
    assert!(
        crio.shim_logs().contains("keeps more memory"),
        "shrink not reported"
    );

    // No memory limit at all: the DIMM is given back.
    crio.update(
        &big,
        &json!({"cpu": {"quota": 100_000, "period": 100_000}, "memory": {"limit": -1, "swap": -1}}),
    )
    .expect("Update without memory limit");
    let back = crio_seen(&crio, &big);
    eprintln!("after dropping the memory limit: {back:?}");
    assert!(
        back.mem_total_kib < 2 * 1024 * 1024,
        "the DIMM was not given back: {back:?}"
    );

    // Grow past the boot size by Update alone: the plain container gets
    // 1 CPU and 1 GiB on top of big's 1 CPU.
    crio.update(&plain, &limits(1, GIB)).expect("Update up");
    let up = crio_seen(&crio, &plain);
    eprintln!("after growing the plain container to 1 CPU, 1 GiB: {up:?}");
    assert_eq!(up.nproc, 3, "{up:?}");
    assert!(up.mem_total_kib > 2_621_440, "{up:?}");
    assert_eq!(up.memory_max, GIB.to_string(), "{up:?}");

    crio.stop_pod(&sid, Duration::from_secs(2));
    crio.remove_pod(&sid);
    crio.assert_no_leaks(&sid);
}

#[test]
fn crio_a_limit_above_the_ceiling_is_refused_naming_the_field() {
    let mut crio = Crio::with_configs(
        "sizing-refuse",
        "default_maxvcpus = 2\ndefault_maxmemory = 3072",
        "\n[runtime]\nlimit_above_max = \"refuse\"\n",
    );
    let sid = crio.run_pod_sandbox(&PodConfig::new("refuse"));
    let mut p = crio.prepare_container(&sid, "huge", &["/bin/sleep", "1000"]);
    p.spec["linux"]["resources"]["cpu"] = json!({"quota": 400_000, "period": 100_000});
    let e = crio
        .create_prepared(p)
        .expect_err("4 CPUs above a 2-vCPU VM");
    assert_eq!(e.code(), Some(ttrpc::Code::INVALID_ARGUMENT), "{e:?}");
    assert!(
        format!("{e:?}").contains("linux.resources.cpu.quota"),
        "{e:?}"
    );

    let ok = crio_container(&mut crio, &sid, "ok", None);
    let e = crio
        .update(&ok, &json!({"memory": {"limit": 2 * GIB}}))
        .expect_err("2 GiB above a 3 GiB VM of 2 GiB");
    assert_eq!(rpc_code(&e), Some(ttrpc::Code::INVALID_ARGUMENT), "{e:?}");
    assert!(
        format!("{e:?}").contains("linux.resources.memory.limit"),
        "{e:?}"
    );
    let seen = crio_seen(&crio, &ok);
    assert_eq!(seen.nproc, 1, "{seen:?}");
    assert_eq!(seen.memory_max, "max", "refused update applied: {seen:?}");

    crio.stop_pod(&sid, Duration::from_secs(2));
    crio.remove_pod(&sid);
    crio.assert_no_leaks(&sid);
}

#[test]
fn crio_a_growth_qemu_or_the_guest_refuses_leaves_the_pod_at_its_old_size() {
    // One DIMM slot: the second memory growth has nowhere to go. The guest
    // kernel is told it has one CPU: it cannot bring a second one up.
    let mut crio = Crio::with_config(
        "sizing-refused",
        "memory_slots = 1\nkernel_params = \"nr_cpus=1\"",
    );
    let sid = crio.run_pod_sandbox(&PodConfig::new("refused"));
    let first = crio_container(
        &mut crio,
        &sid,
        "first",
        Some(json!({"cpu": {}, "memory": {"limit": GIB}})),
    );
    let before = crio_seen(&crio, &first);
    assert!(before.mem_total_kib > 2_621_440, "{before:?}");

    let mut p = crio.prepare_container(&sid, "no-slot", &["/bin/sleep", "1000"]);
    p.with_memory_limit(GIB);
    let e = crio.create_prepared(p).expect_err("no DIMM slot left");
    eprintln!("no slot: {e:?}");
    assert_eq!(e.code(), Some(ttrpc::Code::FAILED_PRECONDITION), "{e:?}");
    let msg = format!("{e:?}");
    assert!(
        msg.contains("QEMU refused") && msg.contains("keeps 1 vCPUs"),
        "{msg}"
    );

    let mut p = crio.prepare_container(&sid, "no-cpu", &["/bin/sleep", "1000"]);
    p.spec["linux"]["resources"]["cpu"] = json!({"quota": 200_000, "period": 100_000});
    let e = crio.create_prepared(p).expect_err("the guest has one CPU");
    eprintln!("no CPU: {e:?}");
    assert_eq!(e.code(), Some(ttrpc::Code::FAILED_PRECONDITION), "{e:?}");
    assert!(format!("{e:?}").contains("vCPUs"), "{e:?}");

    // The pod runs on at its old size.
    let after = crio_seen(&crio, &first);
    assert_eq!(after.nproc, before.nproc, "{after:?}");
    assert_eq!(after.mem_total_kib, before.mem_total_kib, "{after:?}");

    crio.stop_pod(&sid, Duration::from_secs(2));
    crio.remove_pod(&sid);
    crio.assert_no_leaks(&sid);
}

#[test]
fn containerd_a_container_limit_grows_the_vm_and_updates_grow_and_shrink_it() {
    require_vm_host();
    let c = Containerd::start_cri("sizing", false);
    let cri = c.cri();
    let config = pod_config("sizing", &c.pod_log_dir("sizing"));
    let pod = cri
        .run_pod(&config, KATA)
        .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", c.log_tail()));
    let res = |cpus: i64, memory: i64| LinuxContainerResources {
        cpu_period: 100_000,
        cpu_quota: cpus * 100_000,
        cpu_shares: 1024,
        memory_limit_in_bytes: memory,
        ..Default::default()
    };
    let mut big = container_config("big", BUSYBOX_REF, &["/bin/sleep", "1000"]);
    big.linux = Some(LinuxContainerConfig {
        resources: Some(res(2, 3 * GIB)),
        ..Default::default()
    });
    let id = cri
        .create_container(&pod, big, &config)
        .unwrap_or_else(|e| panic!("CreateContainer: {e}\n{}", c.log_tail()));
    cri.start_container(&id).expect("StartContainer");
    let probe = |what: &str| {
        let r = cri
            .exec_sync(&id, &["/bin/sh", "-c", PROBE], 120)
            .expect("ExecSync");
        let seen = parse_seen(&String::from_utf8_lossy(&r.stdout));
        eprintln!("{what}: {seen:?}");
        seen
    };
    let seen = probe("2-CPU 3-GiB container");
    assert_eq!(seen.nproc, 3, "{seen:?}");
    assert!(seen.mem_total_kib > THREE_GIB_KIB, "{seen:?}");

    cri.update_resources(&id, res(1, GIB))
        .expect("UpdateContainerResources down");
    let down = probe("after the shrink to 1 CPU, 1 GiB");
    assert_eq!(down.nproc, 2, "{down:?}");
    assert_eq!(down.memory_max, GIB.to_string(), "{down:?}");

    cri.update_resources(&id, res(2, 4 * GIB))
        .expect("UpdateContainerResources up");
    let up = probe("after the growth to 2 CPUs, 4 GiB");
    assert_eq!(up.nproc, 3, "{up:?}");
    assert!(up.mem_total_kib > 4 * 1024 * 1024, "{up:?}");
    assert_eq!(up.memory_max, (4 * GIB).to_string(), "{up:?}");

    cri.stop_pod(&pod).expect("StopPodSandbox");
    cri.remove_pod(&pod).expect("RemovePodSandbox");
    assert_no_leaks(&pod);
}
