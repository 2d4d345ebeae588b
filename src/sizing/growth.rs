//! The VM-size rule when the VM grows with its containers
//! (`static_sandbox_resource_mgmt = false`): Kata's rule, the configured
//! defaults plus the sum of the containers' limits, bounded by the VM's
//! ceiling (`default_maxvcpus`, `default_maxmemory`). Pure: the sandbox
//! applies what this decides (`sandbox::resize`).

use std::collections::BTreeMap;

use serde_json::Value;

use crate::config::{LimitAboveMax, Qemu};
use crate::sizing::HostSize;

const MIB: u64 = 1 << 20;
/// QEMU's own limit of vCPUs on q35, which the configuration also keeps.
const QEMU_MAX_VCPUS: u32 = 240;
/// Hot-added memory comes in whole guest memory blocks (128 MiB on x86).
pub const MEMORY_BLOCK_MIB: u32 = 128;

/// The OCI field a CPU limit comes from, named in refusals.
pub const CPU_FIELD: &str = "linux.resources.cpu.quota";
/// The OCI field a memory limit comes from, named in refusals.
pub const MEMORY_FIELD: &str = "linux.resources.memory.limit";

/// The most a VM can grow to (the VM's own type: its argv reserves it).
pub use crate::vm::Ceiling;

/// The ceiling of a VM: `default_maxvcpus` (0: the host's CPUs plus
/// `default_vcpus`, so a container limited to the whole host still gets
/// the guest's headroom on top, as Kata's rule adds) and
/// `default_maxmemory` (0: the host's RAM), never below the defaults.
pub fn ceiling(q: &Qemu, host: &HostSize) -> Ceiling {
    let max_vcpus = match q.default_maxvcpus {
        0 => host
            .cpus
            .max(1)
            .saturating_add(q.default_vcpus)
            .min(QEMU_MAX_VCPUS),
        n => n,
    }
    .max(q.default_vcpus);
    let host_mib = u32::try_from(host.memory_mib).unwrap_or(u32::MAX);
    let max_memory_mib = match q.default_maxmemory {
        0 => host_mib,
        n => n,
    }
    .max(q.default_memory);
    Ceiling {
        max_vcpus,
        max_memory_mib,
    }
}

/// One container's limits as they count towards the VM's size.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// CPU limit in thousandths of a CPU (quota / period).
    pub milli_cpus: u64,
    /// Memory limit in MiB, rounded up.
    pub memory_mib: u64,
}

impl Limits {
    /// From OCI `LinuxResources` JSON (`linux.resources` of a container's
    /// spec, or an Update's resources). Zero, negative or absent values
    /// (no limit) count nothing.
    pub fn from_resources(resources: &Value) -> Limits {
        let int = |ptr: &str| resources.pointer(ptr).and_then(Value::as_i64);
        let milli_cpus = match (int("/cpu/quota"), int("/cpu/period")) {
            (Some(q), Some(p)) if q > 0 && p > 0 => {
                let (q, p) = (q.unsigned_abs(), p.unsigned_abs());
                q.saturating_mul(1000).div_ceil(p)
            }
            _ => 0,
        };
        let memory_mib = match int("/memory/limit") {
            Some(b) if b > 0 => b.unsigned_abs().div_ceil(MIB),
            _ => 0,
        };
        Limits {
            milli_cpus,
            memory_mib,
        }
    }

    /// An Update's resources over the limits held before: a dimension the
    /// update does not mention (no `cpu.quota`, no `memory.limit`) keeps its
    /// old value, as it keeps its old cgroup setting.
    pub fn updated(old: Limits, resources: &Value) -> Limits {
        let new = Limits::from_resources(resources);
        Limits {
            milli_cpus: match resources.pointer("/cpu/quota") {
                Some(_) => new.milli_cpus,
                None => old.milli_cpus,
            },
            memory_mib: match resources.pointer("/memory/limit") {
                Some(_) => new.memory_mib,
                None => old.memory_mib,
            },
        }
    }

    /// From a whole OCI spec (its `linux.resources`).
    pub fn from_spec(spec: &Value) -> Limits {
        spec.pointer("/linux/resources")
            .map(Limits::from_resources)
            .unwrap_or_default()
    }

    fn add(self, o: Limits) -> Limits {
        Limits {
            milli_cpus: self.milli_cpus.saturating_add(o.milli_cpus),
            memory_mib: self.memory_mib.saturating_add(o.memory_mib),
        }
    }
}

/// A size the VM should have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub vcpus: u32,
    pub memory_mib: u32,
    /// One line per value that had to be capped.
    pub warnings: Vec<String>,
}

/// A limit that takes the VM past its ceiling, under `limit_above_max =
/// "refuse"`.
#[derive(Debug, thiserror::Error)]
#[error(
    "{field}: the pod's containers would need {wanted} {unit}, above the VM's maximum of {max} ({key})"
)]
pub struct AboveMax {
    pub field: &'static str,
    pub wanted: u64,
    pub max: u64,
    pub unit: &'static str,
    pub key: &'static str,
}

/// The VM size for the containers' limits: defaults plus the sum, vCPUs
/// rounded up from the summed thousandths.
pub fn target(
    q: &Qemu,
    ceiling: Ceiling,
    limits: &BTreeMap<String, Limits>,
    policy: LimitAboveMax,
) -> Result<Target, AboveMax> {
    let sum = limits.values().fold(Limits::default(), |a, &b| a.add(b));
    let mut warnings = Vec::new();
    let wanted_vcpus = u64::from(q.default_vcpus).saturating_add(sum.milli_cpus.div_ceil(1000));
    let wanted_mib = u64::from(q.default_memory).saturating_add(sum.memory_mib);
    let mut judge = |wanted: u64, max: u32, field, unit, key| -> Result<u32, AboveMax> {
        if wanted <= u64::from(max) {
            return Ok(u32::try_from(wanted).expect("not above a u32"));
        }
        match policy {
            LimitAboveMax::Refuse => Err(AboveMax {
                field,
                wanted,
                max: u64::from(max),
                unit,
                key,
            }),
            LimitAboveMax::Cap => {
                warnings.push(format!(
                    "{field}: the pod's containers would need {wanted} {unit}; the VM is capped \
                     at {max} ({key})"
                ));
                Ok(max)
            }
        }
    };
    let vcpus = judge(
        wanted_vcpus,
        ceiling.max_vcpus,
        CPU_FIELD,
        "vCPUs",
        "hypervisor.qemu.default_maxvcpus",
    )?;
    let memory_mib = judge(
        wanted_mib,
        ceiling.max_memory_mib,
        MEMORY_FIELD,
        "MiB",
        "hypervisor.qemu.default_maxmemory",
    )?;
    Ok(Target {
        vcpus,
        memory_mib,
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn qemu(maxvcpus: u32, maxmemory: u32) -> Qemu {
        Qemu {
            default_vcpus: 1,
            default_memory: 2048,
            default_maxvcpus: maxvcpus,
            default_maxmemory: maxmemory,
            ..Qemu::default()
        }
    }

    const HOST: HostSize = HostSize {
        cpus: 2,
        memory_mib: 24_000,
    };

    fn lim(pairs: &[(&str, Value)]) -> BTreeMap<String, Limits> {
        pairs
            .iter()
            .map(|(id, r)| (id.to_string(), Limits::from_resources(r)))
            .collect()
    }

    #[test]
    fn ceiling_defaults_to_host_plus_headroom() {
        assert_eq!(
            ceiling(&qemu(0, 0), &HOST),
            Ceiling {
                max_vcpus: 3,
                max_memory_mib: 24_000
            }
        );
        assert_eq!(
            ceiling(&qemu(8, 4096), &HOST),
            Ceiling {
                max_vcpus: 8,
                max_memory_mib: 4096
            }
        );
        let big = HostSize {
            cpus: 400,
            memory_mib: u64::MAX,
        };
        let c = ceiling(&qemu(0, 0), &big);
        assert_eq!((c.max_vcpus, c.max_memory_mib), (240, u32::MAX));
    }

    #[test]
    fn kata_rule_default_plus_sum_of_limits() {
        let gib3 = 3i64 << 30;
        let cases: &[(&str, BTreeMap<String, Limits>, u32, u32)] = &[
            ("no containers", lim(&[]), 1, 2048),
            (
                "2 CPUs 3 GiB",
                lim(&[(
                    "a",
                    json!({"cpu": {"quota": 200000, "period": 100000}, "memory": {"limit": gib3}}),
                )]),
                3,
                2048 + 3072,
            ),
            (
                "halves add up before rounding",
                lim(&[
                    ("a", json!({"cpu": {"quota": 50000, "period": 100000}})),
                    ("b", json!({"cpu": {"quota": 50000, "period": 100000}})),
                ]),
                2,
                2048,
            ),
            (
                "a partial CPU rounds up, a partial MiB too",
                lim(&[(
                    "a",
                    json!({"cpu": {"quota": 10000, "period": 100000}, "memory": {"limit": 1}}),
                )]),
                2,
                2049,
            ),
            (
                "unlimited counts nothing",
                lim(&[(
                    "a",
                    json!({"cpu": {"quota": -1, "period": 100000}, "memory": {"limit": -1}}),
                )]),
                1,
                2048,
            ),
        ];
        for (name, l, vcpus, mib) in cases {
            let t = target(
                &qemu(0, 0),
                ceiling(&qemu(0, 0), &HOST),
                l,
                LimitAboveMax::Refuse,
            )
            .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!((t.vcpus, t.memory_mib), (*vcpus, *mib), "{name}");
            assert!(t.warnings.is_empty(), "{name}");
        }
    }

    #[test]
    fn above_the_ceiling_is_refused_or_capped() {
        let l = lim(&[(
            "a",
            json!({"cpu": {"quota": 400000, "period": 100000}, "memory": {"limit": 8i64 << 30}}),
        )]);
        let q = qemu(0, 4096);
        let e = target(&q, ceiling(&q, &HOST), &l, LimitAboveMax::Refuse).expect_err("refused");
        assert_eq!(e.field, CPU_FIELD);
        assert!(e.to_string().contains("5 vCPUs"), "{e}");
        let l_mem = lim(&[("a", json!({"memory": {"limit": 8i64 << 30}}))]);
        let e = target(&q, ceiling(&q, &HOST), &l_mem, LimitAboveMax::Refuse).expect_err("mem");
        assert_eq!(e.field, MEMORY_FIELD);
        let t = target(&q, ceiling(&q, &HOST), &l, LimitAboveMax::Cap).expect("capped");
        assert_eq!((t.vcpus, t.memory_mib), (3, 4096));
        assert_eq!(t.warnings.len(), 2, "{:?}", t.warnings);
        assert!(t.warnings[0].contains(CPU_FIELD));
    }

    #[test]
    fn limits_come_from_the_spec() {
        let spec = json!({"linux": {"resources": {"cpu": {"quota": 150000, "period": 100000}}}});
        assert_eq!(
            Limits::from_spec(&spec),
            Limits {
                milli_cpus: 1500,
                memory_mib: 0
            }
        );
        assert_eq!(Limits::from_spec(&json!({})), Limits::default());
        let old = Limits {
            milli_cpus: 2000,
            memory_mib: 1024,
        };
        assert_eq!(
            Limits::updated(old, &json!({"cpu": {"quota": 100000, "period": 100000}})),
            Limits {
                milli_cpus: 1000,
                memory_mib: 1024
            }
        );
        assert_eq!(
            Limits::updated(old, &json!({"memory": {"limit": -1}})),
            Limits {
                milli_cpus: 2000,
                memory_mib: 0
            }
        );
        let huge = json!({"cpu": {"quota": i64::MAX, "period": 1}, "memory": {"limit": i64::MAX}});
        let l = Limits::from_resources(&huge);
        assert_eq!(l.milli_cpus, u64::MAX);
        assert!(l.memory_mib > 0);
    }
}
