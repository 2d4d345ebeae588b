//! `io.katacontainers.config.hypervisor.*` annotations on the sandbox spec:
//! one that `enable_annotations` does not allow, a path outside its
//! `valid_*_paths`, or a malformed value refuses the pod with
//! INVALID_ARGUMENT naming the annotation, and nothing on the host changes
//! (no QEMU, no sandbox directories, no cgroups). An allowed one takes
//! effect on the QEMU command line.

mod common;

use common::crio::*;
use common::*;
use ttrpc::Code;

const H: &str = "io.katacontainers.config.hypervisor.";

#[test]
fn refused_annotations_change_nothing_on_the_host() {
    let mut crio = Crio::with_config(
        "annref",
        "enable_annotations = [\"default_vcpus\", \"kernel\"]\n\
         valid_kernel_paths = [\"/opt/kata-allowed/*.kernel\"]",
    );
    let cases = [
        (
            "not enabled",
            format!("{H}default_memory"),
            "1024",
            "not enabled by hypervisor.qemu.enable_annotations",
        ),
        (
            "path outside valid_kernel_paths",
            format!("{H}kernel"),
            "/tmp/evil.kernel",
            "does not match any glob of hypervisor.qemu.valid_kernel_paths",
        ),
        (
            "path escaping its glob",
            format!("{H}kernel"),
            "/opt/kata-allowed/../../tmp/x.kernel",
            "without `.` or `..` components",
        ),
        (
            "malformed value",
            format!("{H}default_vcpus"),
            "two",
            "is not an integer between 1 and 240",
        ),
        (
            "unsupported namespace",
            "io.katacontainers.config.agent.kernel_modules".to_string(),
            "e1000",
            "only io.katacontainers.config.hypervisor.* annotations are supported",
        ),
    ];
    for (name, key, value, want) in cases {
        let mut pod = PodConfig::new("refused");
        pod.annotations.insert(key.clone(), value.to_string());
        let (sid, created) = crio.try_create_pod_sandbox(&pod);
        let msg = expect_code(created, Code::INVALID_ARGUMENT);
        assert!(
            msg.contains(&format!("annotation {key}:")) && msg.contains(want),
            "{name}: {msg:?} should name {key} and say {want:?}"
        );
        assert!(qemu_pids(&sid).is_empty(), "{name}: a QEMU was started");
        crio.unmount_own_shm(&sid);
        crio.assert_no_leaks(&sid);
    }
}

#[test]
fn an_enabled_annotation_takes_effect() {
    let mut crio = Crio::with_config("annok", "enable_annotations = [\"default_vcpus\"]");
    let mut pod = PodConfig::new("allowed");
    pod.annotations
        .insert(format!("{H}default_vcpus"), "2".to_string());
    let sid = crio.run_pod_sandbox(&pod);
    let qemu = qemu_pids(&sid);
    assert_eq!(qemu.len(), 1, "QEMU processes {qemu:?}");
    let argv = process_argv(qemu[0]);
    // The VM grows with its containers (the default sizing): every vCPU up
    // to the ceiling is present (`-smp`), and the guest boots with
    // `maxcpus=<default_vcpus>` of them online.
    let smp = arg_after(&argv, "-smp").expect("-smp");
    let append = arg_after(&argv, "-append").expect("-append");
    assert!(
        append.split(' ').any(|p| p == "maxcpus=2"),
        "default_vcpus=2 was not applied: -smp {smp:?}, kernel command line {append:?}"
    );
    assert!(smp.parse::<u32>().is_ok_and(|n| n >= 2), "-smp {smp:?}");
    crio.remove_pod(&sid);
    crio.assert_no_leaks(&sid);
}
