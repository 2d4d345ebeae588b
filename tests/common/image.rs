//! The local images the shim tests run: a busybox image (a root filesystem
//! made from the host's static busybox) and a pause image for CRI pod
//! sandboxes (the same root filesystem, whose entrypoint sleeps until
//! SIGTERM/SIGINT), each packed as an OCI image-layout archive (one
//! uncompressed layer) and imported into a private containerd with `ctr
//! images import`. There is no registry here, so nothing is pulled.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde_json::json;
use sha2::{Digest, Sha256};

use super::containerd::Containerd;
use super::pod::write_busybox_rootfs;
use super::run_ok;

/// The name the image is imported under.
pub const BUSYBOX_REF: &str = "localhost/kata-test/busybox:latest";
/// The CRI plugin's sandbox image.
pub const PAUSE_REF: &str = "localhost/kata-test/pause:3.9";
/// What the pause image runs: a PID 1 that waits for SIGTERM or SIGINT
/// and then exits 0, as the real pause does (a shell as PID 1 of its pid
/// namespace only acts on signals it traps).
const PAUSE_CMD: &[&str] = &[
    "/bin/sh",
    "-c",
    "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait $!; done",
];

const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const CONFIG_TYPE: &str = "application/vnd.oci.image.config.v1+json";
const LAYER_TYPE: &str = "application/vnd.oci.image.layer.v1.tar";

/// A busybox root filesystem with the files runtimes bind-mount over
/// (`/etc/hostname`, `/etc/hosts`, `/etc/resolv.conf`), so no mount target
/// has to be created in the image.
pub fn busybox_rootfs(root: &Path) {
    write_busybox_rootfs(root);
    for f in ["etc/hostname", "etc/hosts", "etc/resolv.conf"] {
        std::fs::write(root.join(f), "").expect("write rootfs /etc file");
    }
    std::fs::create_dir_all(root.join("var/run")).expect("mkdir rootfs /var/run");
}

/// The OCI archive of the busybox image, built once per test process under
/// the target's tmp dir (built privately, then renamed into place, so test
/// processes running at the same time never see half an archive).
pub fn busybox_archive() -> &'static Path {
    static ARCHIVE: OnceLock<PathBuf> = OnceLock::new();
    ARCHIVE.get_or_init(|| build_archive("busybox", BUSYBOX_REF, &["sh"]))
}

/// The OCI archive of the pause image, built like [`busybox_archive`].
pub fn pause_archive() -> &'static Path {
    static ARCHIVE: OnceLock<PathBuf> = OnceLock::new();
    ARCHIVE.get_or_init(|| build_archive("pause", PAUSE_REF, PAUSE_CMD))
}

fn build_archive(name: &str, reference: &str, cmd: &[&str]) -> PathBuf {
    let tmp = super::tmp_dir();
    let work = tmp.join(format!("{name}-image-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    let rootfs = work.join("rootfs");
    busybox_rootfs(&rootfs);
    let staged = work.join("oci.tar");
    write_oci_archive(&rootfs, reference, cmd, &work.join("layout"), &staged);
    let archive = tmp.join(format!("{name}-oci.tar"));
    std::fs::rename(&staged, &archive).expect("move the image archive into place");
    let _ = std::fs::remove_dir_all(&work);
    archive
}

/// Imports the busybox image into `containerd` (idempotent) and returns
/// its reference.
pub fn import_busybox(containerd: &Containerd) -> &'static str {
    import(containerd, busybox_archive(), BUSYBOX_REF)
}

/// Imports the pause image into `containerd` and returns its reference.
pub fn import_pause(containerd: &Containerd) -> &'static str {
    import(containerd, pause_archive(), PAUSE_REF)
}

fn import(containerd: &Containerd, archive: &Path, reference: &'static str) -> &'static str {
    containerd.ctr_ok(&["images", "import", &archive.to_string_lossy()]);
    let names = containerd.ctr_ok(&["images", "ls", "-q"]);
    assert!(
        names.lines().any(|l| l == reference),
        "{reference} is not listed after import:\n{names}"
    );
    reference
}

/// Packs `rootfs` as an OCI image layout named `reference`, whose default
/// command is `cmd`, into the tar archive `out`, using `layout` as the
/// scratch layout directory.
pub fn write_oci_archive(rootfs: &Path, reference: &str, cmd: &[&str], layout: &Path, out: &Path) {
    let blobs = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).expect("mkdir blobs");

    // Fixed owner, order and times: the layer digest depends only on the
    // rootfs contents.
    let layer_tar = layout.join("layer.tar");
    run_ok(
        Command::new("tar")
            .args([
                "--sort=name",
                "--owner=0",
                "--group=0",
                "--numeric-owner",
                "--mtime=@0",
                "-C",
            ])
            .arg(rootfs)
            .arg("-cf")
            .arg(&layer_tar)
            .arg("."),
    );
    let layer = std::fs::read(&layer_tar).expect("read layer");
    let _ = std::fs::remove_file(&layer_tar);
    let layer_digest = put_blob(&blobs, &layer);

    let config = serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": cmd,
            "WorkingDir": "/"
        },
        "rootfs": {"type": "layers", "diff_ids": [&layer_digest]},
        "history": [{"created_by": "kata-test: busybox-static with applet links"}]
    }))
    .expect("config json");
    let config_digest = put_blob(&blobs, &config);

    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": {"mediaType": CONFIG_TYPE, "digest": &config_digest, "size": config.len()},
        "layers": [{"mediaType": LAYER_TYPE, "digest": &layer_digest, "size": layer.len()}]
    }))
    .expect("manifest json");
    let manifest_digest = put_blob(&blobs, &manifest);

    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": MANIFEST_TYPE,
            "digest": manifest_digest,
            "size": manifest.len(),
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {
                "org.opencontainers.image.ref.name": reference,
                "io.containerd.image.name": reference
            }
        }]
    });
    std::fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&index).expect("index json"),
    )
    .expect("write index.json");
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .expect("write oci-layout");

    run_ok(
        Command::new("tar")
            .arg("-C")
            .arg(layout)
            .arg("-cf")
            .arg(out)
            .args(["oci-layout", "index.json", "blobs"]),
    );
}

/// Stores `data` as a blob and returns its `sha256:<hex>` digest.
fn put_blob(blobs: &Path, data: &[u8]) -> String {
    let hex = format!("{:x}", Sha256::digest(data));
    std::fs::write(blobs.join(&hex), data).expect("write blob");
    format!("sha256:{hex}")
}
