//! `make install` and `make uninstall` against a scratch DESTDIR, on the
//! existing release build (`make install-files`, the install recipe without
//! its `cargo build`, which would wait on this test's own cargo lock): the
//! installed tree is exactly the documented list with the documented modes,
//! PREFIX moves every file and every path the files name, the node wiring
//! (CRI-O drop-in, containerd snippet, RuntimeClass) parses and names the
//! `kata` handler, containerd accepts the snippets (version 2 on the node's
//! 1.6 and on 1.7, version 3 by hand on a 2.x build), the RuntimeClass overhead
//! covers the pod measured in BENCHMARKS.md, and uninstall removes exactly
//! what install put there.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[path = "common/containerd_bin.rs"]
mod containerd_bin;
use containerd_bin::ContainerdBin;

const REPO: &str = env!("CARGO_MANIFEST_DIR");
const MAKE_TIMEOUT: Duration = Duration::from_secs(120);
const CONTAINERD_TIMEOUT: Duration = Duration::from_secs(30);

/// The release binaries `make install` copies from `target/release`.
const RELEASE_BINARIES: [&str; 4] = [
    "containerd-shim-kata-v2",
    "kata-ctl",
    "kata-guest-image",
    "kata-agent",
];

/// What `make install` puts under PREFIX (README, "Make targets"), with
/// each file's mode.
const DOCUMENTED: [(&str, u32); 10] = [
    ("bin/containerd-shim-kata-v2", 0o755),
    ("bin/kata-ctl", 0o755),
    ("bin/kata-guest-image", 0o755),
    ("libexec/kata-containers/kata-agent", 0o755),
    ("share/defaults/kata-containers/configuration.toml", 0o644),
    ("lib/systemd/system/kata-guest-image.service", 0o644),
    ("share/kata-containers/crio/50-kata", 0o644),
    ("share/kata-containers/containerd/kata.toml", 0o644),
    ("share/kata-containers/containerd/kata-v3.toml", 0o644),
    ("share/kata-containers/runtimeclass.yaml", 0o644),
];

/// Directories only we put files in; uninstall removes them once empty.
const OUR_DIRS: [&str; 5] = [
    "share/kata-containers/crio",
    "share/kata-containers/containerd",
    "share/kata-containers",
    "share/defaults/kata-containers",
    "libexec/kata-containers",
];

fn repo() -> &'static Path {
    Path::new(REPO)
}

/// Fails (never skips) without the release build that install copies.
fn require_release_build() {
    for name in RELEASE_BINARIES {
        let p = repo().join("target/release").join(name);
        assert!(
            p.is_file(),
            "{} is missing: run `make build` first (the install test installs the release build)",
            p.display()
        );
    }
}

/// Runs `cmd`, killing it after `limit`; returns (success, stdout, stderr).
fn run_bounded(cmd: &mut Command, limit: Duration, what: &str) -> (bool, String, String) {
    let scratch = tempfile::tempdir().expect("tempdir for command output");
    let out_path = scratch.path().join("stdout");
    let err_path = scratch.path().join("stderr");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(fs::File::create(&out_path).expect("create stdout file"))
        .stderr(fs::File::create(&err_path).expect("create stderr file"))
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for child") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{what} did not finish within {limit:?}\nstdout: {}\nstderr: {}",
                fs::read_to_string(&out_path).unwrap_or_default(),
                fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (
        status.success(),
        fs::read_to_string(&out_path).unwrap_or_default(),
        fs::read_to_string(&err_path).unwrap_or_default(),
    )
}

/// `make <target> DESTDIR=<dest> [PREFIX=<prefix>]` in the repository, with
/// nothing inherited from an outer make (`make test` runs this suite).
fn make(target: &str, dest: &Path, prefix: Option<&str>) -> String {
    assert!(
        Path::new("/usr/bin/make").exists(),
        "/usr/bin/make is missing: apt-get install make"
    );
    let mut cmd = Command::new("/usr/bin/make");
    cmd.current_dir(repo())
        .arg("--no-print-directory")
        .arg(target)
        .arg(format!("DESTDIR={}", dest.display()));
    if let Some(p) = prefix {
        cmd.arg(format!("PREFIX={p}"));
    }
    for var in [
        "MAKEFLAGS",
        "MFLAGS",
        "MAKELEVEL",
        "MAKEOVERRIDES",
        "PREFIX",
        "DESTDIR",
        "UNITDIR",
    ] {
        cmd.env_remove(var);
    }
    let what = format!("make {target} DESTDIR={} PREFIX={prefix:?}", dest.display());
    let (ok, stdout, stderr) = run_bounded(&mut cmd, MAKE_TIMEOUT, &what);
    assert!(ok, "{what} failed\nstdout: {stdout}\nstderr: {stderr}");
    stdout
}

/// Every regular file under `root`; anything else that is not a directory
/// (a symlink, a FIFO) fails the test.
fn regular_files(root: &Path) -> BTreeSet<PathBuf> {
    let mut found = BTreeSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display())) {
            let path = entry.expect("directory entry").path();
            let kind = fs::symlink_metadata(&path)
                .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
                .file_type();
            if kind.is_dir() {
                stack.push(path);
            } else if kind.is_file() {
                found.insert(path);
            } else {
                panic!("{} is neither a file nor a directory", path.display());
            }
        }
    }
    found
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn parse_toml(path: &Path) -> toml::Value {
    toml::from_str::<toml::Value>(&read(path))
        .unwrap_or_else(|e| panic!("{} is not TOML: {e}", path.display()))
}

/// The value at a dotted key path whose parts are given one by one (a part
/// may itself contain dots, as containerd's plugin names do).
fn at<'a>(v: &'a toml::Value, parts: &[&str], what: &str) -> &'a toml::Value {
    parts.iter().fold(v, |v, part| {
        v.get(part)
            .unwrap_or_else(|| panic!("{what}: no key {part:?} on the path {parts:?}"))
    })
}

/// The containerd snippets: (file under configs/containerd, config version).
const SNIPPETS: [(&str, i64); 2] = [("kata.toml", 2), ("kata-v3.toml", 3)];

/// The plugin holding the CRI runtimes in a containerd config of `version`:
/// containerd 2.x (version 3) split the CRI plugin and moved them.
fn cri_runtime_plugin(version: i64) -> &'static str {
    if version >= 3 {
        "io.containerd.cri.v1.runtime"
    } else {
        "io.containerd.grpc.v1.cri"
    }
}

/// The containerd CRI runtime table named `kata` in a parsed config of
/// `version`.
fn containerd_kata<'a>(v: &'a toml::Value, version: i64, what: &str) -> &'a toml::Value {
    at(
        v,
        &[
            "plugins",
            cri_runtime_plugin(version),
            "containerd",
            "runtimes",
            "kata",
        ],
        what,
    )
}

/// The CRI-O drop-in: the `kata` handler with the four keys OpenShift
/// sets, runtime_path naming the installed shim.
fn check_crio_drop_in(path: &Path, shim: &str) {
    let what = path.display().to_string();
    let v = parse_toml(path);
    let kata = at(&v, &["crio", "runtime", "runtimes", "kata"], &what);
    let table = kata.as_table().expect("kata is a table");
    let keys: BTreeSet<&str> = table.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        BTreeSet::from([
            "privileged_without_host_devices",
            "runtime_path",
            "runtime_root",
            "runtime_type",
        ]),
        "{what}: keys of [crio.runtime.runtimes.kata]"
    );
    assert_eq!(table["runtime_path"].as_str(), Some(shim), "{what}");
    assert_eq!(table["runtime_type"].as_str(), Some("vm"), "{what}");
    assert_eq!(table["runtime_root"].as_str(), Some("/run/vc"), "{what}");
    assert_eq!(
        table["privileged_without_host_devices"].as_bool(),
        Some(true),
        "{what}"
    );
    // CRI-O accepts a "vm" runtime only under a containerd-shim-<name> name.
    let base = Path::new(shim)
        .file_name()
        .and_then(|n| n.to_str())
        .expect("runtime_path has a file name");
    assert!(
        base.strip_prefix("containerd-shim-").is_some_and(|rest| {
            !rest.is_empty()
                && rest
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '+')
        }),
        "{what}: CRI-O refuses runtime_path {shim} for runtime_type vm"
    );
    // The table is the whole file: nothing else of CRI-O's is changed.
    let top: Vec<&String> = v.as_table().expect("top table").keys().collect();
    assert_eq!(top, ["crio"], "{what}: top-level keys");
}

/// A containerd snippet: config `version` and the `kata` runtime with the
/// shim's runtime type.
fn check_containerd_snippet(path: &Path, version: i64) {
    let what = path.display().to_string();
    let v = parse_toml(path);
    assert_eq!(
        v.get("version").and_then(toml::Value::as_integer),
        Some(version),
        "{what}: config version"
    );
    let kata = containerd_kata(&v, version, &what);
    assert_kata_runtime(kata, &what);
    let annotations: Vec<&str> = kata
        .get("pod_annotations")
        .and_then(toml::Value::as_array)
        .unwrap_or_else(|| panic!("{what}: no pod_annotations array"))
        .iter()
        .map(|a| a.as_str().expect("annotation pattern is a string"))
        .collect();
    assert_eq!(annotations, ["io.katacontainers.*"], "{what}");
    // ConfigPath is documented but left commented: the shim does not read
    // Create options yet.
    assert!(kata.get("options").is_none(), "{what}: options set");
    let plugins: Vec<&String> = at(&v, &["plugins"], &what)
        .as_table()
        .expect("plugins table")
        .keys()
        .collect();
    assert_eq!(plugins, [cri_runtime_plugin(version)], "{what}: plugins");
}

/// A YAML document of nested mappings and scalars (all a RuntimeClass
/// needs), flattened to dotted key paths; anything else fails.
fn parse_yaml_mappings(text: &str, what: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    // (indent, key) of the mappings that enclose the current line.
    let mut parents: Vec<(usize, String)> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let n = n + 1;
        assert!(!line.contains('\t'), "{what}:{n}: tab in YAML");
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed == "---" {
            continue;
        }
        let indent = line.len() - trimmed.len();
        while parents.last().is_some_and(|(i, _)| *i >= indent) {
            parents.pop();
        }
        let (key, value) = trimmed
            .split_once(':')
            .unwrap_or_else(|| panic!("{what}:{n}: not a `key: value` line: {line}"));
        let key = key.trim().trim_matches('"');
        assert!(
            !key.is_empty() && !key.starts_with('-'),
            "{what}:{n}: unexpected line: {line}"
        );
        let path = parents
            .iter()
            .map(|(_, k)| k.as_str())
            .chain([key])
            .collect::<Vec<_>>()
            .join(".");
        let value = value.trim();
        if value.is_empty() {
            parents.push((indent, key.to_string()));
        } else {
            let value = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(value);
            let dup = out.insert(path.clone(), value.to_string());
            assert!(dup.is_none(), "{what}:{n}: {path} given twice");
        }
    }
    out
}

/// The RuntimeClass: handler and name `kata`, the overhead, the node
/// selector; returns podFixed memory in MiB.
fn check_runtimeclass(path: &Path) -> f64 {
    let what = path.display().to_string();
    let doc = parse_yaml_mappings(&read(path), &what);
    let keys: Vec<&str> = doc.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "apiVersion",
            "handler",
            "kind",
            "metadata.name",
            "overhead.podFixed.cpu",
            "overhead.podFixed.memory",
            "scheduling.nodeSelector.katacontainers.io/kata-runtime",
        ],
        "{what}: keys"
    );
    assert_eq!(doc["apiVersion"], "node.k8s.io/v1", "{what}");
    assert_eq!(doc["kind"], "RuntimeClass", "{what}");
    assert_eq!(doc["metadata.name"], "kata", "{what}");
    assert_eq!(doc["handler"], "kata", "{what}");
    assert_eq!(
        doc["scheduling.nodeSelector.katacontainers.io/kata-runtime"], "true",
        "{what}"
    );
    let cpu = &doc["overhead.podFixed.cpu"];
    let millis: u32 = cpu
        .strip_suffix('m')
        .and_then(|m| m.parse().ok())
        .unwrap_or_else(|| panic!("{what}: cpu {cpu:?} is not <n>m"));
    assert!((1..1000).contains(&millis), "{what}: cpu {cpu}");
    let memory = &doc["overhead.podFixed.memory"];
    memory
        .strip_suffix("Mi")
        .and_then(|m| m.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("{what}: memory {memory:?} is not <n>Mi"))
}

/// The largest of the median/min/max cells of the BENCHMARKS.md row whose
/// label starts with `label`, in MiB.
fn benchmark_mib(text: &str, label: &str) -> f64 {
    let row = text
        .lines()
        .find(|l| l.starts_with(&format!("| {label}")))
        .unwrap_or_else(|| {
            panic!("BENCHMARKS.md has no row \"{label}...\" (has `make bench` changed its rows?)")
        });
    row.split('|')
        .skip(2)
        .take(3)
        .map(|cell| {
            cell.trim()
                .strip_suffix(" MiB")
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or_else(|| panic!("BENCHMARKS.md: {cell:?} is not <n> MiB in: {row}"))
        })
        .fold(0.0, f64::max)
}

/// Installs into a fresh DESTDIR, checks the tree and every file, then
/// uninstalls around a file that is not ours.
fn install_and_check(prefix: Option<&str>) {
    require_release_build();
    let dest = tempfile::Builder::new()
        .prefix("install-tree-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("scratch DESTDIR");
    let root = dest.path();
    let prefix_dir = prefix.unwrap_or("/usr");
    let under = |rel: &str| -> PathBuf { root.join(prefix_dir.trim_start_matches('/')).join(rel) };
    let expected: Vec<PathBuf> = DOCUMENTED.iter().map(|(rel, _)| under(rel)).collect();

    let stdout = make("install-files", root, prefix);
    let printed: Vec<PathBuf> = stdout
        .lines()
        .skip_while(|l| *l != "installed:")
        .skip(1)
        .map(|l| PathBuf::from(l.trim()))
        .collect();
    assert_eq!(
        printed, expected,
        "the list `make install` prints is not the documented one\n{stdout}"
    );
    let tree = regular_files(root);
    let want: BTreeSet<PathBuf> = expected.iter().cloned().collect();
    assert_eq!(
        tree,
        want,
        "the installed tree is not the documented list (extra: {:?}, missing: {:?})",
        tree.difference(&want).collect::<Vec<_>>(),
        want.difference(&tree).collect::<Vec<_>>()
    );
    for (rel, mode) in DOCUMENTED {
        let p = under(rel);
        let got = fs::metadata(&p).expect("stat").permissions().mode() & 0o7777;
        assert_eq!(got, mode, "mode of {}: {got:o}, want {mode:o}", p.display());
    }

    // The binaries and the configuration are the build's and the repo's.
    for (rel, src) in [
        (
            "bin/containerd-shim-kata-v2",
            "target/release/containerd-shim-kata-v2",
        ),
        ("bin/kata-ctl", "target/release/kata-ctl"),
        ("bin/kata-guest-image", "target/release/kata-guest-image"),
        (
            "libexec/kata-containers/kata-agent",
            "target/release/kata-agent",
        ),
        (
            "share/defaults/kata-containers/configuration.toml",
            "configs/configuration.toml",
        ),
        (
            "share/kata-containers/runtimeclass.yaml",
            "configs/runtimeclass.yaml",
        ),
    ] {
        assert!(
            fs::read(under(rel)).expect("read installed")
                == fs::read(repo().join(src)).expect("read source"),
            "{} differs from {src}",
            under(rel).display()
        );
    }
    // Every path the installed files name follows PREFIX.
    let bin = format!("{prefix_dir}/bin");
    let unit = read(&under("lib/systemd/system/kata-guest-image.service"));
    let exec: Vec<&str> = unit
        .lines()
        .filter(|l| l.starts_with("ExecStart="))
        .collect();
    assert_eq!(
        exec,
        [format!(
            "ExecStart={bin}/kata-guest-image --agent {prefix_dir}/libexec/kata-containers/kata-agent"
        )],
        "the unit's ExecStart"
    );
    check_crio_drop_in(
        &under("share/kata-containers/crio/50-kata"),
        &format!("{bin}/containerd-shim-kata-v2"),
    );
    for (name, version) in SNIPPETS {
        let snippet = under(&format!("share/kata-containers/containerd/{name}"));
        check_containerd_snippet(&snippet, version);
        assert!(
            read(&snippet).contains(&format!(
                "# runtime_path = \"{bin}/containerd-shim-kata-v2\""
            )),
            "the containerd snippet {name}'s runtime_path hint does not follow PREFIX"
        );
    }
    check_runtimeclass(&under("share/kata-containers/runtimeclass.yaml"));

    // Uninstall removes exactly our files, and our directories once empty;
    // what is not ours stays, with the directory that holds it.
    let foreign = [
        under("bin/not-ours"),
        under("share/kata-containers/not-ours"),
    ];
    for f in &foreign {
        fs::write(f, "not ours").expect("write a foreign file");
    }
    make("uninstall", root, prefix);
    assert_eq!(
        regular_files(root),
        foreign.iter().cloned().collect::<BTreeSet<_>>(),
        "uninstall did not remove exactly the installed files"
    );
    for dir in OUR_DIRS {
        let exists = under(dir).exists();
        assert_eq!(
            exists,
            dir == "share/kata-containers",
            "after uninstall, {} exists: {exists}",
            under(dir).display()
        );
    }
    for f in &foreign {
        fs::remove_file(f).expect("remove the foreign file");
    }
    make("uninstall", root, prefix);
    assert!(regular_files(root).is_empty(), "files left after uninstall");
    for dir in OUR_DIRS {
        assert!(
            !under(dir).exists(),
            "{} left after uninstall",
            under(dir).display()
        );
    }
}

#[test]
fn install_puts_exactly_the_documented_files_and_uninstall_removes_them() {
    install_and_check(None);
}

#[test]
fn install_honours_prefix_in_paths_and_file_contents() {
    install_and_check(Some("/opt/kata"));
}

#[test]
fn node_wiring_sources_name_the_kata_handler() {
    check_crio_drop_in(
        &repo().join("configs/crio/50-kata"),
        "/usr/bin/containerd-shim-kata-v2",
    );
    for (name, version) in SNIPPETS {
        check_containerd_snippet(&repo().join("configs/containerd").join(name), version);
    }
    check_runtimeclass(&repo().join("configs/runtimeclass.yaml"));
    // The unit the guide points at is the one install ships.
    let unit = read(&repo().join("configs/kata-guest-image.service"));
    assert!(
        unit.contains("ExecStart=/usr/bin/kata-guest-image\n"),
        "configs/kata-guest-image.service: install's sed expects ExecStart=/usr/bin/kata-guest-image"
    );
}

#[test]
fn runtimeclass_overhead_covers_the_measured_idle_pod() {
    let memory = check_runtimeclass(&repo().join("configs/runtimeclass.yaml"));
    let bench = read(&repo().join("BENCHMARKS.md"));
    let guest = benchmark_mib(&bench, "idle kata pod: guest memory");
    let qemu = benchmark_mib(&bench, "idle kata pod: QEMU private memory");
    let ours = benchmark_mib(&bench, "idle kata pod: our processes");
    let measured = guest + qemu + ours;
    assert!(
        memory >= measured,
        "configs/runtimeclass.yaml: overhead.podFixed.memory {memory}Mi is below the idle pod of BENCHMARKS.md \
         ({guest} guest + {qemu} QEMU + {ours} ours = {measured:.1} MiB): raise it and update its comment"
    );
    let yaml = read(&repo().join("configs/runtimeclass.yaml"));
    assert!(
        yaml.contains("make bench") && yaml.contains("smaps"),
        "configs/runtimeclass.yaml must say how its overhead was measured"
    );
}

/// Runs `<bin>/containerd --config <config> config dump` and returns the
/// dump.
fn containerd_dump(bin: &ContainerdBin, config: &Path) -> toml::Value {
    let what = format!(
        "containerd {} ({}) --config {} config dump",
        bin.label,
        bin.containerd().display(),
        config.display()
    );
    let (ok, stdout, stderr) = run_bounded(
        Command::new(bin.containerd())
            .arg("--config")
            .arg(config)
            .args(["config", "dump"]),
        CONTAINERD_TIMEOUT,
        &what,
    );
    assert!(
        ok,
        "{what} refused the configuration:\n{stderr}\n{}",
        read(config)
    );
    toml::from_str::<toml::Value>(&stdout)
        .unwrap_or_else(|e| panic!("{what}: the dump is not TOML: {e}\n{stdout}"))
}

/// The `kata` runtime table names the shim's runtime type and keeps the
/// host's devices out of privileged containers.
fn assert_kata_runtime(kata: &toml::Value, what: &str) {
    assert_eq!(
        kata.get("runtime_type").and_then(toml::Value::as_str),
        Some("io.containerd.kata.v2"),
        "{what}"
    );
    assert_eq!(
        kata.get("privileged_without_host_devices")
            .and_then(toml::Value::as_bool),
        Some(true),
        "{what}"
    );
}

/// The dump of a containerd whose configuration is at `version` has the
/// kata runtime with its options, and the default runtime untouched.
fn assert_dump_has_kata(dump: &toml::Value, version: i64, how: &str) {
    let what = format!("containerd config dump ({how})");
    assert_eq!(
        dump.get("version").and_then(toml::Value::as_integer),
        Some(version),
        "{what}: the dump's config version"
    );
    let kata = containerd_kata(dump, version, &what);
    assert_kata_runtime(kata, &what);
    assert_eq!(
        kata.get("pod_annotations")
            .and_then(toml::Value::as_array)
            .map(|a| a.iter().filter_map(toml::Value::as_str).collect::<Vec<_>>()),
        Some(vec!["io.katacontainers.*"]),
        "{what}"
    );
    assert_eq!(
        at(
            dump,
            &[
                "plugins",
                cri_runtime_plugin(version),
                "containerd",
                "default_runtime_name"
            ],
            &what
        )
        .as_str(),
        Some("runc"),
        "{what}"
    );
}

/// `make install-files` into a scratch DESTDIR, then the installed snippet
/// `name` (config `version`) imported into a node config and pasted into
/// one, each dumped by `bin`'s containerd; the dump is at `dump_version`
/// (a 2.x containerd migrates a version 2 configuration to 3).
fn containerd_accepts(bin: &ContainerdBin, name: &str, version: i64, dump_version: i64) {
    require_release_build();
    let dest = tempfile::Builder::new()
        .prefix("install-tree-containerd-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("scratch DESTDIR");
    make("install-files", dest.path(), None);
    let snippet = dest
        .path()
        .join("usr/share/kata-containers/containerd")
        .join(name);
    let base = |extra: &str| {
        format!(
            "version = {version}\n{extra}root = \"{d}/root\"\nstate = \"{d}/state\"\n\n[grpc]\n  address = \"{d}/containerd.sock\"\n",
            d = dest.path().display()
        )
    };

    // As the guide says: `imports` in the node's config.toml.
    let imported = dest.path().join("config-imports.toml");
    fs::write(
        &imported,
        base(&format!("imports = [\"{}\"]\n", snippet.display())),
    )
    .expect("write config");
    let how = format!("{name} imported, containerd {}", bin.label);
    assert_dump_has_kata(&containerd_dump(bin, &imported), dump_version, &how);

    // Or pasted, without its `version` line.
    let pasted = dest.path().join("config-pasted.toml");
    let table: String = read(&snippet)
        .lines()
        .filter(|l| !l.starts_with("version"))
        .map(|l| format!("{l}\n"))
        .collect();
    fs::write(&pasted, format!("{}\n{table}", base(""))).expect("write config");
    let how = format!("{name} pasted, containerd {}", bin.label);
    assert_dump_has_kata(&containerd_dump(bin, &pasted), dump_version, &how);

    make("uninstall", dest.path(), None);
}

#[test]
fn containerd_accepts_the_installed_snippet() {
    containerd_accepts(&ContainerdBin::system(), "kata.toml", 2, 2);
}

/// The same version 2 snippet on Debian 13's containerd 1.7 (`make deps`
/// unpacks it beside the node's 1.6).
#[test]
fn containerd_1_7_accepts_the_installed_snippet() {
    containerd_accepts(&ContainerdBin::v1_7(), "kata.toml", 2, 2);
}

/// containerd 2.x (by hand: CI has no 2.x build) reads the version 3
/// snippet, and migrates the version 2 one, as a whole version 2
/// configuration, to the same runtime table.
#[test]
#[ignore = "by hand: needs KATA_TEST_CONTAINERD2_DIR naming a containerd 2.x build"]
fn containerd_2x_accepts_the_installed_snippets() {
    let bin = ContainerdBin::v2_from_env();
    containerd_accepts(&bin, "kata-v3.toml", 3, 3);
    containerd_accepts(&bin, "kata.toml", 2, 3);
}
