//! CPU and memory resources as CRI clients send them, checked and put in
//! the shape libcgroups writes correctly.
//!
//! kubelet, through CRI-O or containerd, sends `quota: 0, period: 0` for a
//! container without a CPU limit (most pods) and `shares: 2` for one
//! without a request. runc reads 0 as "unset"; libcgroups would write
//! `max 0` to `cpu.max`, which the kernel refuses. Both Create and Update
//! go through [`normalize`], so the two agree.

use oci_spec::runtime::{LinuxCpu, LinuxMemory, LinuxResources};

use crate::error::{AgentError, Result};

/// cgroup v2's bounds on `cpu.max`'s period (µs), as the kernel checks them.
const PERIOD_MIN: u64 = 1_000;
const PERIOD_MAX: u64 = 1_000_000;
/// The smallest quota the kernel takes (µs).
const QUOTA_MIN: i64 = 1_000;
/// cgroup v1 `cpu.shares` bounds, which runtimes map onto `cpu.weight`.
const SHARES_MIN: u64 = 2;
const SHARES_MAX: u64 = 262_144;

fn invalid(field: &'static str, reason: String) -> AgentError {
    AgentError::InvalidArgument { field, reason }
}

/// Checks `r` and rewrites the "unset" spellings (0) to absent values;
/// -1 stays "unlimited". `field` names where `r` came from in the request.
pub fn normalize(r: &mut LinuxResources, field: &'static str) -> Result<()> {
    if let Some(cpu) = r.cpu().clone() {
        r.set_cpu(Some(normalize_cpu(cpu, field)?));
    }
    if let Some(mem) = *r.memory() {
        r.set_memory(Some(normalize_memory(mem, field)?));
    }
    Ok(())
}

fn normalize_cpu(mut cpu: LinuxCpu, field: &'static str) -> Result<LinuxCpu> {
    match cpu.period() {
        Some(0) => {
            cpu.set_period(None);
        }
        Some(p) if !(PERIOD_MIN..=PERIOD_MAX).contains(&p) => {
            return Err(invalid(
                field,
                format!("cpu.period {p} is outside {PERIOD_MIN}..={PERIOD_MAX} µs"),
            ));
        }
        _ => {}
    }
    match cpu.quota() {
        Some(0) => {
            cpu.set_quota(None);
        }
        Some(q) if q < -1 => {
            return Err(invalid(
                field,
                format!("cpu.quota {q} is negative (-1 means unlimited)"),
            ));
        }
        Some(q) if q > 0 && q < QUOTA_MIN => {
            return Err(invalid(
                field,
                format!("cpu.quota {q} is below the kernel's minimum of {QUOTA_MIN} µs"),
            ));
        }
        _ => {}
    }
    // CRI-O writes empty cpuset strings for "no cpuset": leave the
    // cgroup's inherited one alone.
    if cpu.cpus().as_deref() == Some("") {
        cpu.set_cpus(None);
    }
    if cpu.mems().as_deref() == Some("") {
        cpu.set_mems(None);
    }
    match cpu.shares() {
        Some(0) => {
            cpu.set_shares(None);
        }
        Some(s) if !(SHARES_MIN..=SHARES_MAX).contains(&s) => {
            return Err(invalid(
                field,
                format!("cpu.shares {s} is outside {SHARES_MIN}..={SHARES_MAX}"),
            ));
        }
        _ => {}
    }
    Ok(cpu)
}

fn normalize_memory(mut mem: LinuxMemory, field: &'static str) -> Result<LinuxMemory> {
    for (name, v) in [
        ("memory.limit", mem.limit()),
        ("memory.swap", mem.swap()),
        ("memory.reservation", mem.reservation()),
    ] {
        if let Some(v) = v
            && v < -1
        {
            return Err(invalid(
                field,
                format!("{name} {v} is negative (-1 means unlimited)"),
            ));
        }
    }
    if mem.limit() == Some(0) {
        mem.set_limit(None);
    }
    if mem.swap() == Some(0) {
        mem.set_swap(None);
    }
    if mem.reservation() == Some(0) {
        mem.set_reservation(None);
    }
    // `swap` is memory plus swap (cgroup v1's memsw), as in runc.
    if let (Some(limit), Some(swap)) = (mem.limit(), mem.swap())
        && limit > 0
        && swap > 0
        && swap < limit
    {
        return Err(invalid(
            field,
            format!(
                "memory.swap {swap} is below memory.limit {limit} (swap counts memory plus swap)"
            ),
        ));
    }
    if mem.swap().is_some_and(|s| s > 0) && mem.limit().is_none() {
        return Err(invalid(
            field,
            "memory.swap is set without memory.limit".to_string(),
        ));
    }
    Ok(mem)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn res(v: serde_json::Value) -> LinuxResources {
        serde_json::from_value(v).expect("resources")
    }

    #[test]
    fn kubelet_shapes_are_normalized() {
        // No CPU limit: what kubelet sends for most containers.
        let mut r =
            res(json!({"cpu": {"shares": 2, "quota": 0, "period": 0, "cpus": "", "mems": ""}}));
        normalize(&mut r, "oci_spec_json").expect("no limit");
        let cpu = r.cpu().as_ref().expect("cpu");
        assert_eq!(
            (cpu.shares(), cpu.quota(), cpu.period()),
            (Some(2), None, None)
        );
        assert_eq!((cpu.cpus(), cpu.mems()), (&None, &None));

        // No CPU limit but a memory limit, swap equal to memory.
        let mut r = res(json!({"cpu": {"shares": 102, "quota": 0, "period": 100000},
            "memory": {"limit": 268435456, "swap": 268435456}}));
        normalize(&mut r, "oci_spec_json").expect("memory limit");
        let cpu = r.cpu().as_ref().expect("cpu");
        assert_eq!((cpu.quota(), cpu.period()), (None, Some(100_000)));
        let mem = r.memory().as_ref().expect("memory");
        assert_eq!(
            (mem.limit(), mem.swap()),
            (Some(268_435_456), Some(268_435_456))
        );

        // A limit, and -1 as unlimited.
        let mut r = res(json!({"cpu": {"quota": 50000, "period": 100000}}));
        normalize(&mut r, "resources_json").expect("limit");
        assert_eq!(r.cpu().as_ref().and_then(|c| c.quota()), Some(50_000));
        let mut r = res(json!({"cpu": {"quota": -1, "period": 100000},
            "memory": {"limit": -1, "swap": -1}}));
        normalize(&mut r, "resources_json").expect("unlimited");
        assert_eq!(r.memory().as_ref().and_then(|m| m.limit()), Some(-1));
        assert_eq!(r.cpu().as_ref().and_then(|c| c.quota()), Some(-1));

        // Zero memory means unset.
        let mut r = res(json!({"memory": {"limit": 0, "swap": 0}}));
        normalize(&mut r, "oci_spec_json").expect("zero memory");
        let mem = r.memory().as_ref().expect("memory");
        assert_eq!((mem.limit(), mem.swap()), (None, None));
    }

    #[test]
    fn forbidden_values_name_the_field() {
        for (v, what) in [
            (json!({"cpu": {"quota": -5, "period": 100000}}), "cpu.quota"),
            (json!({"cpu": {"quota": 10, "period": 100000}}), "cpu.quota"),
            (json!({"cpu": {"quota": 50000, "period": 10}}), "cpu.period"),
            (json!({"cpu": {"period": 2_000_000}}), "cpu.period"),
            (json!({"cpu": {"shares": 1}}), "cpu.shares"),
            (json!({"memory": {"limit": -2}}), "memory.limit"),
            (
                json!({"memory": {"limit": 1048576, "swap": -7}}),
                "memory.swap",
            ),
            (
                json!({"memory": {"limit": 2097152, "swap": 1048576}}),
                "memory.swap",
            ),
            (json!({"memory": {"swap": 1048576}}), "memory.swap"),
        ] {
            let mut r = res(v.clone());
            let e = normalize(&mut r, "resources_json").expect_err(what);
            assert_eq!(e.code(), ttrpc::Code::INVALID_ARGUMENT, "{v}");
            let msg = e.to_string();
            assert!(
                msg.contains(what) && msg.contains("resources_json"),
                "{v}: {msg}"
            );
        }
    }
}
