//! The configuration's parsing, validation, drop-in and search-order tests.

use super::*;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::from_toml(text, Path::new("test.toml"))
}

#[test]
fn empty_file_gives_defaults() {
    let c = parse("").expect("empty config is valid");
    assert_eq!(c, Config::default());
    assert_eq!(c.hypervisor.qemu.default_vcpus, 1);
    assert_eq!(c.hypervisor.qemu.default_maxvcpus, 0);
    assert_eq!(c.hypervisor.qemu.tcg_tb_size, 64);
    assert_eq!(c.hypervisor.qemu.shared_fs, SharedFs::VirtioFs);
    assert_eq!(c.agent.kata.dial_timeout(), Duration::from_secs(30));
}

#[test]
fn shipped_configuration_parses() {
    let text = include_str!("../../configs/configuration.toml");
    let c = parse(text).expect("configs/configuration.toml must load");
    assert_eq!(c.hypervisor.qemu.accel, Accel::Auto);
    assert_eq!(c.hypervisor.qemu.vsock, VsockMode::Auto);
    assert_eq!(
        c.hypervisor.qemu,
        Qemu::default(),
        "shipped file shows the defaults"
    );
}

#[test]
fn values_are_read() {
    let c = parse(
        r#"
        [hypervisor.qemu]
        path = ["/opt/qemu"]
        accel = "tcg"
        vsock = "hybrid"
        shared_fs = "virtio-9p"
        default_vcpus = 2
        default_maxvcpus = 4
        default_memory = 512
        tcg_tb_size = 0
        kernel_params = "quiet"
        [agent.kata]
        dial_timeout = 5
        log_level = "debug"
        debug_console_enabled = true
        [runtime]
        enable_debug = true
        "#,
    )
    .expect("valid");
    let q = &c.hypervisor.qemu;
    assert_eq!(q.path, vec![PathBuf::from("/opt/qemu")]);
    assert_eq!(q.accel, Accel::Tcg);
    assert_eq!(q.vsock, VsockMode::Hybrid);
    assert_eq!(q.shared_fs, SharedFs::Virtio9p);
    assert_eq!((q.default_vcpus, q.default_memory), (2, 512));
    assert_eq!(q.default_maxvcpus, 4);
    assert_eq!(q.tcg_tb_size, 0);
    assert_eq!(c.agent.kata.log_level, LogLevel::Debug);
    assert!(c.agent.kata.debug_console_enabled);
    assert!(!Agent::default().debug_console_enabled);
    assert!(c.runtime.enable_debug);
}

#[test]
fn unknown_keys_are_named_with_their_path() {
    let cases = [
        (
            "[hypervisor.qemu]\ndefault_vcpu = 1\n",
            "hypervisor.qemu.default_vcpu",
        ),
        ("[agent.kata]\ndial = 1\n", "agent.kata.dial"),
        ("[runtime]\nfoo = true\n", "runtime.foo"),
        (
            "[hypervisor.firecracker]\npath = []\n",
            "hypervisor.firecracker",
        ),
        ("top = 1\n", "top"),
    ];
    for (text, want) in cases {
        match parse(text) {
            Err(ConfigError::UnknownKey { key, .. }) => assert_eq!(key, want, "{text}"),
            other => panic!("{text}: expected unknown key {want}, got {other:?}"),
        }
    }
}

#[test]
fn invalid_values_name_the_key() {
    let cases = [
        (
            "[hypervisor.qemu]\ndefault_vcpus = 0\n",
            "hypervisor.qemu.default_vcpus",
        ),
        (
            "[hypervisor.qemu]\ndefault_vcpus = 2\ndefault_maxvcpus = 1\n",
            "hypervisor.qemu.default_maxvcpus",
        ),
        (
            "[hypervisor.qemu]\ndefault_maxvcpus = 241\n",
            "hypervisor.qemu.default_maxvcpus",
        ),
        (
            "[hypervisor.qemu]\ndefault_memory = 64\n",
            "hypervisor.qemu.default_memory",
        ),
        ("[hypervisor.qemu]\npath = []\n", "hypervisor.qemu.path"),
        (
            "[hypervisor.qemu]\ntcg_tb_size = 4096\n",
            "hypervisor.qemu.tcg_tb_size",
        ),
        (
            "[hypervisor.qemu]\nmachine_type = \"virt\"\n",
            "hypervisor.qemu.machine_type",
        ),
        (
            "[hypervisor.qemu]\nkernel = \"rel/vmlinuz\"\n",
            "hypervisor.qemu.kernel",
        ),
        (
            "[hypervisor.qemu]\nvirtio_fs_cache = \"fast\"\n",
            "hypervisor.qemu.virtio_fs_cache",
        ),
        (
            "[agent.kata]\ndial_timeout = 0\n",
            "agent.kata.dial_timeout",
        ),
        (
            "[hypervisor.qemu]\nkernel_params = \"quiet agent.debug_console\"\n",
            "hypervisor.qemu.kernel_params",
        ),
        (
            "[hypervisor.qemu]\nseccompsandbox = \"on,spawn=deny -device x\"\n",
            "hypervisor.qemu.seccompsandbox",
        ),
        (
            "[hypervisor.qemu]\nseccompsandbox = \"yes\"\n",
            "hypervisor.qemu.seccompsandbox",
        ),
        // `--` and a quote would hide the shim's own agent keys behind them.
        (
            "[hypervisor.qemu]\nkernel_params = \"quiet --\"\n",
            "hypervisor.qemu.kernel_params",
        ),
        (
            "[hypervisor.qemu]\nkernel_params = 'quiet x=\"y'\n",
            "hypervisor.qemu.kernel_params",
        ),
    ];
    for (text, want) in cases {
        match parse(text) {
            Err(ConfigError::Invalid { key, .. }) => assert_eq!(key, want, "{text}"),
            other => panic!("{text}: expected invalid {want}, got {other:?}"),
        }
    }
}

#[test]
fn bad_enum_and_type_values_are_parse_errors_naming_the_key() {
    for (text, key) in [
        ("[hypervisor.qemu]\naccel = \"hvf\"\n", "accel"),
        ("[hypervisor.qemu]\nshared_fs = \"nfs\"\n", "shared_fs"),
        (
            "[hypervisor.qemu]\ndefault_vcpus = \"two\"\n",
            "default_vcpus",
        ),
        ("[hypervisor.qemu]\ntcg_tb_size = -1\n", "tcg_tb_size"),
        (
            "[agent.kata]\ndebug_console_enabled = \"yes\"\n",
            "debug_console_enabled",
        ),
    ] {
        match parse(text) {
            Err(e @ ConfigError::Parse { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains(key), "{msg} should name {key}");
            }
            other => panic!("{text}: expected a parse error, got {other:?}"),
        }
    }
}

#[test]
fn search_order_and_override() {
    let dir = tempfile::tempdir().expect("tempdir");
    let etc = dir.path().join("etc.toml");
    let share = dir.path().join("share.toml");
    std::fs::write(&share, "[hypervisor.qemu]\ndefault_vcpus = 3\n").expect("write");
    let search = [etc.clone(), share.clone()];

    let l = Config::load_from(None, &search).expect("share only");
    assert_eq!(l.source.as_deref(), Some(share.as_path()));
    assert_eq!(l.config.hypervisor.qemu.default_vcpus, 3);

    std::fs::write(&etc, "[hypervisor.qemu]\ndefault_vcpus = 2\n").expect("write");
    let l = Config::load_from(None, &search).expect("etc wins");
    assert_eq!(l.source.as_deref(), Some(etc.as_path()));
    assert_eq!(l.config.hypervisor.qemu.default_vcpus, 2);

    let other = dir.path().join("other.toml");
    std::fs::write(&other, "[hypervisor.qemu]\ndefault_vcpus = 4\n").expect("write");
    let l = Config::load_from(Some(other.clone()), &search).expect("override wins");
    assert_eq!(l.config.hypervisor.qemu.default_vcpus, 4);

    let missing = dir.path().join("missing.toml");
    assert!(matches!(
        Config::load_from(Some(missing), &search),
        Err(ConfigError::Read { .. })
    ));

    let none = Config::load_from(None, &[dir.path().join("nope.toml")]).expect("defaults");
    assert!(none.source.is_none());
    assert_eq!(none.config, Config::default());
}

#[test]
fn annotation_lists_are_read_and_checked() {
    let c = parse(
        "[hypervisor.qemu]\nenable_annotations = [\"default_vcpus\", \"kernel_*\"]\nvalid_kernel_paths = [\"/opt/kata/*.kernel\"]\n",
    )
    .expect("valid");
    assert_eq!(
        c.hypervisor.qemu.enable_annotations,
        ["default_vcpus", "kernel_*"]
    );
    for (text, key) in [
        (
            "enable_annotations = [\"\"]",
            "hypervisor.qemu.enable_annotations",
        ),
        (
            "enable_annotations = [\"kernel_[\"]",
            "hypervisor.qemu.enable_annotations",
        ),
        (
            "valid_hypervisor_paths = [\"qemu-*\"]",
            "hypervisor.qemu.valid_hypervisor_paths",
        ),
        (
            "valid_initrd_paths = [\"/x/[a\"]",
            "hypervisor.qemu.valid_initrd_paths",
        ),
    ] {
        match parse(&format!("[hypervisor.qemu]\n{text}\n")) {
            Err(ConfigError::Invalid { key: k, .. }) => assert_eq!(k, key, "{text}"),
            other => panic!("{text}: expected invalid {key}, got {other:?}"),
        }
    }
}

#[test]
fn seccompsandbox_defaults_on_and_can_be_turned_off() {
    let c = parse("").expect("defaults");
    assert_eq!(c.hypervisor.qemu.seccompsandbox, DEFAULT_SECCOMP_SANDBOX);
    let off = parse("[hypervisor.qemu]\nseccompsandbox = \"\"\n").expect("empty is off");
    assert!(off.hypervisor.qemu.seccompsandbox.is_empty());
    let kata = parse("[hypervisor.qemu]\nseccompsandbox = \"on,obsolete=deny,spawn=deny,resourcecontrol=deny\"\n")
        .expect("Kata's default");
    assert!(kata.hypervisor.qemu.seccompsandbox.starts_with("on,"));
}

#[test]
fn rootless_is_off_by_default_and_its_range_and_share_are_checked() {
    let c = parse("").expect("defaults");
    assert!(!c.hypervisor.qemu.rootless);
    assert_eq!(
        c.hypervisor.qemu.rootless_first_uid,
        DEFAULT_ROOTLESS_FIRST_UID
    );
    let on = parse("[hypervisor.qemu]\nrootless = true\n").expect("rootless with virtio-fs");
    assert!(on.hypervisor.qemu.rootless);
    parse("[hypervisor.qemu]\nrootless = true\nshared_fs = \"none\"\n").expect("without a share");
    for (text, key, says) in [
        (
            "[hypervisor.qemu]\nrootless = true\nshared_fs = \"virtio-9p\"\n",
            "hypervisor.qemu.rootless",
            "9p is served by QEMU itself",
        ),
        (
            "[hypervisor.qemu]\nrootless_first_uid = 0\n",
            "hypervisor.qemu.rootless_first_uid",
            "at least 65536",
        ),
        (
            "[hypervisor.qemu]\nrootless_uids = 0\n",
            "hypervisor.qemu.rootless_uids",
            "at least one uid",
        ),
        (
            "[hypervisor.qemu]\nrootless_first_uid = 2147483000\nrootless_uids = 1000\n",
            "hypervisor.qemu.rootless_uids",
            "2147483648",
        ),
    ] {
        match parse(text) {
            Err(ConfigError::Invalid {
                key: k, problem, ..
            }) => {
                assert_eq!(k, key, "{text}");
                assert!(problem.contains(says), "{text}: {problem}");
            }
            other => panic!("{text}: expected invalid {key}, got {other:?}"),
        }
    }
}
