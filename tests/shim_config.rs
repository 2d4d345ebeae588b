//! The configuration file a pod's Create options name (CRI-O's
//! `runtime_config_path`, containerd's `ConfigPath`: both
//! `Any(runtimeoptions.v1.Options)`) is the one its VM boots with, its
//! `config.d` drop-ins included; a bad one refuses the pod with
//! INVALID_ARGUMENT naming `options.config_path` and leaves nothing behind.

mod common;

use common::crio::*;
use common::*;
use protobuf::well_known_types::any::Any;
use ttrpc::Code;

/// `runtimeoptions.v1.Options{config_path}` encoded as CRI-O sends it.
fn options(config_path: &str) -> Any {
    let mut value = vec![0x12];
    let mut n = config_path.len();
    loop {
        let b = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            value.push(b);
            break;
        }
        value.push(b | 0x80);
    }
    value.extend_from_slice(config_path.as_bytes());
    let mut any = Any::new();
    any.type_url = "runtimeoptions.v1.Options".into();
    any.value = value;
    any
}

#[test]
fn options_config_path_selects_the_sandbox_configuration() {
    let mut crio = Crio::new("cfgopt");
    let alt_dir = crio.dir.join("alt");
    std::fs::create_dir_all(alt_dir.join("config.d")).expect("mkdir alt/config.d");
    let alt = write_config(&alt_dir, "kernel_params = \"kata_test_marker=options\"", "");
    std::fs::write(
        alt_dir.join("config.d/50-memory.toml"),
        "[hypervisor.qemu]\ndefault_memory = 640\n",
    )
    .expect("write drop-in");
    crio.create_options = Some(options(&alt.display().to_string()));

    let sid = crio.run_pod_sandbox(&PodConfig::new("alt"));
    let qemu = qemu_pids(&sid);
    assert_eq!(qemu.len(), 1, "QEMU processes {qemu:?}");
    let argv = process_argv(qemu[0]);
    let append = arg_after(&argv, "-append").expect("-append");
    assert!(
        append.contains("kata_test_marker=options"),
        "the options' file was not used: -append {append:?}"
    );
    let mem = arg_after(&argv, "-m").expect("-m");
    assert!(
        mem.starts_with("640"),
        "the options' file's drop-in was not merged: -m {mem:?}"
    );
    // The app containers' Creates carry the same options; they are served
    // by the sandbox's VM as it is.
    let app = crio.create_container(&sid, "app", &["/bin/sleep", "1000"]);
    crio.start_container(&app);
    assert_eq!(qemu_pids(&sid), qemu, "an app Create changed the VM");
    crio.remove_pod(&sid);
    crio.assert_no_leaks(&sid);
}

#[test]
fn bad_options_config_path_is_refused_and_changes_nothing() {
    let mut crio = Crio::new("cfgbad");
    let invalid = crio.dir.join("invalid/configuration.toml");
    std::fs::create_dir_all(invalid.parent().expect("parent")).expect("mkdir");
    std::fs::write(&invalid, "[hypervisor.qemu]\ndefault_vcpu = 1\n").expect("write");
    let bad_drop_in = crio.dir.join("baddrop/configuration.toml");
    std::fs::create_dir_all(bad_drop_in.with_file_name("config.d")).expect("mkdir");
    std::fs::write(&bad_drop_in, "").expect("write");
    std::fs::write(
        bad_drop_in.with_file_name("config.d/10-x.toml"),
        "[agent.kata]\ndial = 3\n",
    )
    .expect("write");
    let missing = crio.dir.join("missing.toml");
    let cases = [
        (
            "relative/configuration.toml".to_string(),
            "not an absolute path",
        ),
        (missing.display().to_string(), "cannot read"),
        (
            invalid.display().to_string(),
            "hypervisor.qemu.default_vcpu",
        ),
        (bad_drop_in.display().to_string(), "10-x.toml"),
    ];
    for (path, want) in cases {
        crio.create_options = Some(options(&path));
        let (sid, created) = crio.try_create_pod_sandbox(&PodConfig::new("bad"));
        let msg = expect_code(created, Code::INVALID_ARGUMENT);
        assert!(
            msg.contains("options.config_path") && msg.contains(want),
            "{path}: {msg:?} should name options.config_path and {want:?}"
        );
        assert!(qemu_pids(&sid).is_empty(), "{path}: a QEMU was started");
        crio.unmount_own_shm(&sid);
        crio.assert_no_leaks(&sid);
    }
}
