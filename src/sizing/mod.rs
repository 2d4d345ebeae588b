//! VM sizing: the pod VM's vCPUs and memory from the configured defaults
//! plus the pod's limits, as the container manager announces them in the
//! sandbox spec's annotations.
//!
//! containerd sets `io.kubernetes.cri.sandbox-cpu-quota`/`-cpu-period`/
//! `-memory` (decimal strings); CRI-O sets one JSON object of CRI
//! `LinuxContainerResources` (`pod-linux-resources.crio.io`, before 1.35
//! `io.kubernetes.cri-o.PodLinuxResources`). The defaults stay as headroom
//! for the guest kernel and agent, so the limits are added on top of them,
//! as Kata does. Everything here is pure apart from [`HostSize::probe`].
//! This is the boot-time sizing (`static_sandbox_resource_mgmt = true`);
//! [`growth`] holds the rule by which the VM grows with its containers.

pub mod growth;

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::config::Qemu;

/// containerd's CFS quota of the pod, in microseconds per period.
pub const CRI_CPU_QUOTA: &str = "io.kubernetes.cri.sandbox-cpu-quota";
/// containerd's CFS period of the pod, in microseconds.
pub const CRI_CPU_PERIOD: &str = "io.kubernetes.cri.sandbox-cpu-period";
/// containerd's memory limit of the pod, in bytes.
pub const CRI_MEMORY: &str = "io.kubernetes.cri.sandbox-memory";
/// CRI-O (1.35 and later): the pod's resources as JSON.
pub const CRIO_POD_RESOURCES: &str = "pod-linux-resources.crio.io";
/// CRI-O before 1.35: the same JSON under its older key.
pub const CRIO_POD_RESOURCES_V1: &str = "io.kubernetes.cri-o.PodLinuxResources";

const MIB: u64 = 1 << 20;

/// Longest annotation value quoted back in an error.
const QUOTED_MAX: usize = 64;

/// The size a pod VM boots with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmSize {
    pub vcpus: u32,
    pub memory_mib: u32,
}

/// What the host can give one VM at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostSize {
    /// Online CPUs.
    pub cpus: u32,
    /// `MemTotal`, in MiB.
    pub memory_mib: u64,
}

impl HostSize {
    /// Online CPUs and `MemTotal`. A value that cannot be read does not
    /// bound the VM (one CPU, unlimited memory) rather than failing the pod.
    pub fn probe() -> HostSize {
        // SAFETY: sysconf only reads a system value; no memory is passed.
        let online = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
        let cpus = u32::try_from(online)
            .ok()
            .filter(|&n| n > 0)
            .unwrap_or_else(|| {
                tracing::warn!("cannot count online CPUs, assuming 1");
                1
            });
        let memory_mib = match std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|text| mem_total_mib(&text))
        {
            Some(m) => m,
            None => {
                tracing::warn!("cannot read MemTotal from /proc/meminfo, not bounding VM memory");
                u64::MAX
            }
        };
        HostSize { cpus, memory_mib }
    }
}

/// `MemTotal:  16318480 kB` -> MiB.
fn mem_total_mib(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let mut fields = line.split_whitespace().skip(1);
    let value: u64 = fields.next()?.parse().ok()?;
    match fields.next() {
        Some("kB") => Some(value / 1024),
        None => Some(value / MIB),
        Some(_) => None,
    }
}

/// A sizing annotation that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum SizingError {
    #[error("annotation {key} is not an integer: {value:?}")]
    NotAnInteger { key: &'static str, value: String },
    #[error("annotation {key} is not valid pod resources JSON")]
    BadJson {
        key: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

impl SizingError {
    /// The annotation is the caller's input, so every failure is theirs.
    pub fn code(&self) -> ttrpc::Code {
        ttrpc::Code::INVALID_ARGUMENT
    }
}

/// The pod limits after parsing, before they are judged.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct PodLimits {
    cpu_quota: Option<i64>,
    cpu_period: Option<i64>,
    memory_bytes: Option<i64>,
    source: &'static str,
}

/// CRI `LinuxContainerResources` as CRI-O serialises it (snake_case, fields
/// omitted when zero, the whole value `null` when the pod sets nothing).
#[derive(Debug, Default, Deserialize)]
struct CrioResources {
    #[serde(default)]
    cpu_period: Option<i64>,
    #[serde(default)]
    cpu_quota: Option<i64>,
    #[serde(default)]
    memory_limit_in_bytes: Option<i64>,
}

/// The VM size for a sandbox spec's annotations, and human-readable
/// warnings for every value that had to be clamped.
///
/// vCPUs are `default_vcpus + ceil(quota / period)` (only when both are
/// positive), memory is `default_memory + bytes / MiB`, both bounded by
/// the VM's ceiling ([`crate::sizing::growth::ceiling`]). This is the boot-time
/// sizing of `static_sandbox_resource_mgmt = true`.
pub fn vm_size(
    annotations: &BTreeMap<String, String>,
    qemu: &Qemu,
    host: &HostSize,
) -> Result<(VmSize, Vec<String>), SizingError> {
    let limits = pod_limits(annotations)?;
    let mut warnings = Vec::new();

    let extra_vcpus = match (limits.cpu_quota, limits.cpu_period) {
        (Some(quota), Some(period)) if quota > 0 && period > 0 => {
            let (q, p) = (quota.unsigned_abs(), period.unsigned_abs());
            q / p + u64::from(q % p != 0)
        }
        _ => 0,
    };
    let wanted_vcpus = u64::from(qemu.default_vcpus).saturating_add(extra_vcpus);
    let ceiling = crate::sizing::growth::ceiling(qemu, host);
    let max_vcpus = ceiling.max_vcpus;
    let vcpus = if wanted_vcpus > u64::from(max_vcpus) {
        warnings.push(format!(
            "{wanted_vcpus} vCPUs wanted ({} default + {extra_vcpus} from {}), clamped to {max_vcpus} \
             (default_maxvcpus {}, host has {} CPUs)",
            qemu.default_vcpus, limits.source, qemu.default_maxvcpus, host.cpus
        ));
        max_vcpus
    } else {
        u32::try_from(wanted_vcpus).expect("not above max_vcpus, a u32")
    };

    let extra_mib = match limits.memory_bytes {
        Some(bytes) if bytes > 0 => bytes.unsigned_abs() / MIB,
        _ => 0,
    };
    let wanted_mib = u64::from(qemu.default_memory).saturating_add(extra_mib);
    let max_mib = u64::from(ceiling.max_memory_mib);
    let memory_mib = if wanted_mib > max_mib {
        warnings.push(format!(
            "{wanted_mib} MiB of memory wanted ({} default + {extra_mib} from {}), clamped to \
             {max_mib} MiB (default_maxmemory, else host memory)",
            qemu.default_memory, limits.source
        ));
        max_mib
    } else {
        wanted_mib
    };
    let memory_mib = u32::try_from(memory_mib).expect("not above u32::MAX");

    Ok((VmSize { vcpus, memory_mib }, warnings))
}

/// Reads whichever manager's annotations are present: containerd's keys
/// first, then CRI-O's current key, then its older one. Only the source
/// chosen is parsed, so a stale key of another manager cannot fail a pod.
fn pod_limits(annotations: &BTreeMap<String, String>) -> Result<PodLimits, SizingError> {
    let has_cri = [CRI_CPU_QUOTA, CRI_CPU_PERIOD, CRI_MEMORY]
        .iter()
        .any(|k| annotations.contains_key(*k));
    if has_cri {
        let int = |key: &'static str| -> Result<Option<i64>, SizingError> {
            annotations
                .get(key)
                .map(|v| {
                    v.trim()
                        .parse::<i64>()
                        .map_err(|_| SizingError::NotAnInteger {
                            key,
                            value: quoted(v),
                        })
                })
                .transpose()
        };
        return Ok(PodLimits {
            cpu_quota: int(CRI_CPU_QUOTA)?,
            cpu_period: int(CRI_CPU_PERIOD)?,
            memory_bytes: int(CRI_MEMORY)?,
            source: "io.kubernetes.cri.sandbox-*",
        });
    }
    for key in [CRIO_POD_RESOURCES, CRIO_POD_RESOURCES_V1] {
        let Some(value) = annotations.get(key) else {
            continue;
        };
        let parsed: Option<CrioResources> =
            serde_json::from_str(value).map_err(|source| SizingError::BadJson { key, source })?;
        let r = parsed.unwrap_or_default();
        return Ok(PodLimits {
            cpu_quota: r.cpu_quota,
            cpu_period: r.cpu_period,
            memory_bytes: r.memory_limit_in_bytes,
            source: key,
        });
    }
    Ok(PodLimits::default())
}

fn quoted(value: &str) -> String {
    match value.char_indices().nth(QUOTED_MAX) {
        Some((cut, _)) => format!("{}...", &value[..cut]),
        None => value.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::qemu::cmdline::{Accel, QemuSpec, ShareDevice};

    const HOST: HostSize = HostSize {
        cpus: 8,
        memory_mib: 16_384,
    };

    fn ann(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn qemu(vcpus: u32, maxvcpus: u32, memory: u32) -> Qemu {
        Qemu {
            default_vcpus: vcpus,
            default_maxvcpus: maxvcpus,
            default_memory: memory,
            ..Qemu::default()
        }
    }

    /// The `-smp` and `-m` values QEMU gets for a size.
    fn smp_and_m(size: VmSize) -> (String, String) {
        let spec = QemuSpec {
            sandbox_id: "s".into(),
            uuid: "00000000-0000-0000-0000-000000000000".into(),
            machine_type: "q35".into(),
            accel: Accel::Tcg,
            vcpus: size.vcpus,
            max_vcpus: size.vcpus,
            memory_slots: 0,
            max_memory_mib: 0,
            memory_mib: size.memory_mib,
            kernel: "/k".into(),
            initrd: "/i".into(),
            kernel_cmdline: String::new(),
            qmp_socket: "/q".into(),
            seccomp_sandbox: String::new(),
            vsock: None,
            share: ShareDevice::None,
            tcg_tb_size_mib: 0,
        };
        let args = spec.to_args();
        let after = |flag: &str| {
            let i = args
                .iter()
                .position(|a| a == flag)
                .unwrap_or_else(|| panic!("{flag} missing from {args:?}"));
            args[i + 1].clone()
        };
        (after("-smp"), after("-m"))
    }

    #[test]
    fn sizes_from_annotations_reach_the_qemu_argv() {
        /// (name, annotations, default_maxvcpus, -smp, -m, warnings)
        type Row<'a> = (
            &'a str,
            &'a [(&'a str, &'a str)],
            u32,
            &'a str,
            &'a str,
            usize,
        );
        let gib = "1073741824";
        let cases: &[Row] = &[
            ("no annotations", &[], 0, "1", "2048M", 0),
            (
                "containerd 2 cpus 1 GiB",
                &[
                    (CRI_CPU_QUOTA, "200000"),
                    (CRI_CPU_PERIOD, "100000"),
                    (CRI_MEMORY, gib),
                ],
                0,
                "3",
                "3072M",
                0,
            ),
            (
                "containerd quota rounds up",
                &[(CRI_CPU_QUOTA, "150000"), (CRI_CPU_PERIOD, "100000")],
                0,
                "3",
                "2048M",
                0,
            ),
            (
                "containerd memory only, partial MiB dropped",
                &[(CRI_MEMORY, "536870913")],
                0,
                "1",
                "2560M",
                0,
            ),
            (
                "containerd quota without period",
                &[(CRI_CPU_QUOTA, "200000")],
                0,
                "1",
                "2048M",
                0,
            ),
            (
                "containerd zero and negative ignored",
                &[
                    (CRI_CPU_QUOTA, "-1"),
                    (CRI_CPU_PERIOD, "100000"),
                    (CRI_MEMORY, "0"),
                ],
                0,
                "1",
                "2048M",
                0,
            ),
            (
                "containerd zero period ignored",
                &[(CRI_CPU_QUOTA, "100000"), (CRI_CPU_PERIOD, "0")],
                0,
                "1",
                "2048M",
                0,
            ),
            (
                "crio current key",
                &[(
                    CRIO_POD_RESOURCES,
                    r#"{"cpu_period":100000,"cpu_quota":200000,"memory_limit_in_bytes":536870912}"#,
                )],
                0,
                "3",
                "2560M",
                0,
            ),
            (
                "crio pre-1.35 key",
                &[(
                    CRIO_POD_RESOURCES_V1,
                    r#"{"cpu_period":100000,"cpu_quota":100000,"memory_limit_in_bytes":1073741824,"cpu_shares":1024,"oom_score_adj":0}"#,
                )],
                0,
                "2",
                "3072M",
                0,
            ),
            (
                "crio current key preferred over the old one",
                &[
                    (
                        CRIO_POD_RESOURCES,
                        r#"{"cpu_period":100000,"cpu_quota":300000}"#,
                    ),
                    (
                        CRIO_POD_RESOURCES_V1,
                        r#"{"cpu_period":100000,"cpu_quota":100000}"#,
                    ),
                ],
                0,
                "4",
                "2048M",
                0,
            ),
            (
                "crio null",
                &[(CRIO_POD_RESOURCES_V1, "null")],
                0,
                "1",
                "2048M",
                0,
            ),
            (
                "crio null fields",
                &[(
                    CRIO_POD_RESOURCES,
                    r#"{"cpu_period":null,"cpu_quota":null,"memory_limit_in_bytes":null}"#,
                )],
                0,
                "1",
                "2048M",
                0,
            ),
            (
                "crio negative ignored",
                &[(
                    CRIO_POD_RESOURCES,
                    r#"{"cpu_period":100000,"cpu_quota":-1,"memory_limit_in_bytes":-5}"#,
                )],
                0,
                "1",
                "2048M",
                0,
            ),
            (
                "above default_maxvcpus clamps",
                &[(CRI_CPU_QUOTA, "400000"), (CRI_CPU_PERIOD, "100000")],
                2,
                "2",
                "2048M",
                1,
            ),
            (
                "an explicit default_maxvcpus above the host is honoured",
                &[(CRI_CPU_QUOTA, "2000000"), (CRI_CPU_PERIOD, "100000")],
                64,
                "21",
                "2048M",
                0,
            ),
            (
                "default_maxvcpus 0 is the host plus default_vcpus",
                &[(CRI_CPU_QUOTA, "2000000"), (CRI_CPU_PERIOD, "100000")],
                0,
                "9",
                "2048M",
                1,
            ),
            (
                "huge values clamp to the host",
                &[
                    (CRI_CPU_QUOTA, "1000000000000000000"),
                    (CRI_CPU_PERIOD, "1"),
                    (CRI_MEMORY, "9223372036854775807"),
                ],
                0,
                "9",
                "16384M",
                2,
            ),
            (
                "huge crio values clamp to the host",
                &[(
                    CRIO_POD_RESOURCES,
                    r#"{"cpu_period":1,"cpu_quota":9223372036854775807,"memory_limit_in_bytes":9223372036854775807}"#,
                )],
                0,
                "9",
                "16384M",
                2,
            ),
        ];
        for (name, pairs, maxvcpus, smp, m, nwarn) in cases {
            let (size, warnings) = vm_size(&ann(pairs), &qemu(1, *maxvcpus, 2048), &HOST)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            let (got_smp, got_m) = smp_and_m(size);
            assert_eq!((got_smp.as_str(), got_m.as_str()), (*smp, *m), "{name}");
            assert_eq!(warnings.len(), *nwarn, "{name}: {warnings:?}");
        }
    }

    #[test]
    fn clamping_warnings_say_what_was_asked_and_why() {
        let a = ann(&[
            (CRI_CPU_QUOTA, "400000"),
            (CRI_CPU_PERIOD, "100000"),
            (CRI_MEMORY, "34359738368"),
        ]);
        let (size, warnings) = vm_size(&a, &qemu(1, 3, 2048), &HOST).expect("valid");
        assert_eq!(
            size,
            VmSize {
                vcpus: 3,
                memory_mib: 16_384
            }
        );
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(
            warnings[0].starts_with("5 vCPUs wanted") && warnings[0].contains("clamped to 3"),
            "{}",
            warnings[0]
        );
        assert!(
            warnings[1].starts_with("34816 MiB of memory wanted")
                && warnings[1].contains("clamped to 16384 MiB"),
            "{}",
            warnings[1]
        );
    }

    #[test]
    fn defaults_are_honoured_above_the_host() {
        // The defaults are the operator's own figures; the ceiling never
        // goes below them.
        let small = HostSize {
            cpus: 2,
            memory_mib: 1024,
        };
        let (size, warnings) = vm_size(&ann(&[]), &qemu(4, 0, 2048), &small).expect("valid");
        assert_eq!(
            size,
            VmSize {
                vcpus: 4,
                memory_mib: 2048
            }
        );
        assert!(warnings.is_empty(), "{warnings:?}");
    }

    #[test]
    fn unreadable_host_size_does_not_break_sizing() {
        let unknown = HostSize {
            cpus: 0,
            memory_mib: u64::MAX,
        };
        let a = ann(&[(CRI_MEMORY, "9223372036854775807")]);
        let (size, warnings) = vm_size(&a, &qemu(1, 0, 2048), &unknown).expect("valid");
        assert_eq!(size.vcpus, 1);
        assert_eq!(size.memory_mib, u32::MAX);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
    }

    #[test]
    fn malformed_values_name_the_annotation() {
        let long = "9".repeat(200);
        let cases: &[(&str, &str, &str)] = &[
            (CRI_CPU_QUOTA, "2.5", CRI_CPU_QUOTA),
            (CRI_CPU_PERIOD, "", CRI_CPU_PERIOD),
            (CRI_MEMORY, "1Gi", CRI_MEMORY),
            (CRI_MEMORY, &long, CRI_MEMORY),
            (CRIO_POD_RESOURCES, "{", CRIO_POD_RESOURCES),
            (
                CRIO_POD_RESOURCES_V1,
                r#"{"cpu_quota":"200000"}"#,
                CRIO_POD_RESOURCES_V1,
            ),
            (
                CRIO_POD_RESOURCES,
                r#"{"cpu_quota":1e18}"#,
                CRIO_POD_RESOURCES,
            ),
        ];
        for (key, value, named) in cases {
            let err = vm_size(&ann(&[(key, value)]), &qemu(1, 0, 2048), &HOST)
                .expect_err(&format!("{key}={value} must be refused"));
            assert_eq!(err.code(), ttrpc::Code::INVALID_ARGUMENT);
            let msg = err.to_string();
            assert!(msg.contains(named), "{msg} should name {named}");
            assert!(msg.len() < 200, "value quoted in full: {msg}");
        }
    }

    #[test]
    fn a_malformed_preferred_crio_key_is_not_skipped() {
        let a = ann(&[
            (CRIO_POD_RESOURCES, "not json"),
            (CRIO_POD_RESOURCES_V1, r#"{"cpu_quota":100000}"#),
        ]);
        let err = vm_size(&a, &qemu(1, 0, 2048), &HOST).expect_err("must fail");
        assert!(err.to_string().contains(CRIO_POD_RESOURCES), "{err}");
    }

    #[test]
    fn containerd_keys_win_over_crio_json() {
        let a = ann(&[(CRI_MEMORY, "1073741824"), (CRIO_POD_RESOURCES, "not json")]);
        let (size, _) = vm_size(&a, &qemu(1, 0, 2048), &HOST).expect("crio key not parsed");
        assert_eq!(size.memory_mib, 3072);
    }

    #[test]
    fn meminfo_is_read_in_mib() {
        let text = "MemTotal:       16318480 kB\nMemFree:         1000 kB\n";
        assert_eq!(mem_total_mib(text), Some(15936));
        assert_eq!(mem_total_mib("MemFree: 1 kB\n"), None);
        assert_eq!(mem_total_mib("MemTotal: x kB\n"), None);
        let host = HostSize::probe();
        assert!(host.cpus >= 1);
        assert!(host.memory_mib > 0);
    }
}
