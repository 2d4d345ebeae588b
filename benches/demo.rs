//! `make demo`: the OpenShift sandboxed-containers walk-through on this
//! node. A private containerd with its CRI plugin runs the installed shim
//! (`/usr/bin/containerd-shim-kata-v2`, the installed configuration and the
//! guest image built from this node's kernel). The same image and command
//! run once as a regular pod (runc) and once as a kata pod; what each
//! container sees is printed side by side, with the host's QEMU process of
//! the kata pod. Each pod serves a greeting over TCP on the pod network
//! and fetches the other's, so the kata pod is shown to be an ordinary pod on
//! the CNI network. Everything is removed at the end; any failed step
//! exits non-zero.
//!
//! It is a bench target (`cargo bench --bench demo`) so that it shares the
//! test harness (private containerd, CRI client, local images) and, unlike
//! an example under the release profile's `panic = "abort"`, unwinds on a
//! failed step so the harness still cleans up.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Duration;

use common::containerd::Containerd;
use common::cri::{KATA, RUNC, container_config, pod_config};
use common::image::BUSYBOX_REF;

const INSTALLED_SHIM: &str = "/usr/bin/containerd-shim-kata-v2";

struct Pod {
    handler: &'static str,
    id: String,
    container: String,
}

fn main() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("demo: run as root (make demo): it starts containerd and VMs");
        std::process::exit(1);
    }
    if !std::path::Path::new(INSTALLED_SHIM).is_file() {
        eprintln!("demo: {INSTALLED_SHIM} is missing: run `make install` (make demo does)");
        std::process::exit(1);
    }
    // A failed step panics with its reason; the harness's drops still remove
    // the pods, containerd and its directories before the exit code says so.
    let ok = std::panic::catch_unwind(run).is_ok();
    if !ok {
        eprintln!("demo: FAILED (see the reason above); everything it started was removed");
        std::process::exit(1);
    }
}

fn run() {
    println!("== starting a private containerd (CRI: runc default, RuntimeClass handler `kata`)");
    let c = Containerd::start_cri("demo", true);
    let cri = c.cri();
    let mut pods = Vec::new();
    for handler in [RUNC, KATA] {
        // busybox's `nc -ll -e` serves every connection; its static wget
        // crashes in glibc's resolver, so nc is the client too.
        let script = format!(
            "nc -ll -p 8080 -e echo hello from the {handler} pod & \
             echo ready; while :; do sleep 1; done"
        );
        let cmd = ["/bin/sh", "-c", script.as_str()];
        let name = format!("demo-{handler}");
        println!("== crictl runp ({name}, handler {handler}); create; serve a greeting on :8080");
        let config = pod_config(&name, &c.pod_log_dir(&name));
        let started = std::time::Instant::now();
        let id = cri
            .run_pod(&config, handler)
            .unwrap_or_else(|e| panic!("RunPodSandbox {name}: {e}\n{}", c.log_tail()));
        let container = cri
            .create_container(&id, container_config("app", BUSYBOX_REF, &cmd), &config)
            .unwrap_or_else(|e| panic!("CreateContainer in {name}: {e}"));
        cri.start_container(&container)
            .unwrap_or_else(|e| panic!("StartContainer in {name}: {e}"));
        println!(
            "   pod {id} running after {:.1} s",
            started.elapsed().as_secs_f64()
        );
        pods.push(Pod {
            handler,
            id,
            container,
        });
    }

    let ask = |pod: &Pod, cmd: &[&str]| -> String {
        let r = cri
            .exec_sync(&pod.container, cmd, 60)
            .unwrap_or_else(|e| panic!("crictl exec {} {cmd:?}: {e}", pod.handler));
        assert_eq!(r.exit_code, 0, "crictl exec {} {cmd:?}", pod.handler);
        String::from_utf8_lossy(&r.stdout).trim().to_string()
    };
    let rows: [(&str, &[&str]); 5] = [
        ("uname -r", &["uname", "-r"]),
        ("nproc", &["nproc"]),
        ("/proc/uptime", &["cat", "/proc/uptime"]),
        (
            "eth0",
            &["sh", "-c", "ip -4 -o addr show eth0 | awk '{print $4}'"],
        ),
        ("/proc/cmdline", &["cat", "/proc/cmdline"]),
    ];
    let answers: Vec<Vec<String>> = rows
        .iter()
        .map(|(_, cmd)| pods.iter().map(|p| ask(p, cmd)).collect())
        .collect();
    println!();
    let (what, runc, kata) = ("crictl exec", "regular pod (runc)", "kata pod");
    println!("{what:<14} | {runc:<40} | {kata}");
    println!("{:-<14}-+-{:-<40}-+-{:-<40}", "", "", "");
    for ((label, _), a) in rows.iter().zip(&answers) {
        if *label == "/proc/cmdline" {
            continue;
        }
        println!("{label:<14} | {:<40} | {}", a[0], a[1]);
    }
    let pod_ips: Vec<String> = pods
        .iter()
        .map(|p| {
            cri.pod_status(&p.id)
                .unwrap_or_else(|e| panic!("PodSandboxStatus {}: {e}", p.handler))
                .network
                .map(|n| n.ip)
                .unwrap_or_default()
        })
        .collect();
    println!(
        "{:<14} | {:<40} | {}",
        "pod IP (CRI)", pod_ips[0], pod_ips[1]
    );
    for (i, p) in pods.iter().enumerate() {
        assert!(
            answers[3][i].starts_with(&format!("{}/", pod_ips[i])),
            "the {} pod's eth0 ({}) has the IP CRI reports ({})",
            p.handler,
            answers[3][i],
            pod_ips[i]
        );
    }
    let fetched: Vec<String> = pods
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let other = &pod_ips[1 - i];
            let fetch = format!("nc -w 20 {other} 8080 </dev/null");
            ask(p, &["sh", "-c", &fetch])
        })
        .collect();
    println!(
        "{:<14} | {:<40} | {}",
        "nc the other", fetched[0], fetched[1]
    );
    assert_eq!(
        fetched[0], "hello from the kata pod",
        "runc pod fetching from the kata pod"
    );
    assert_eq!(
        fetched[1], "hello from the runc pod",
        "kata pod fetching from the runc pod"
    );
    let cmdlines = &answers[4];
    println!("/proc/cmdline:");
    println!("  runc: {}", cmdlines[0]);
    println!("  kata: {}", cmdlines[1]);

    let kata = &pods[1];
    let qemu = common::qemu_pids(&kata.id);
    assert_eq!(qemu.len(), 1, "one QEMU for the kata pod, found {qemu:?}");
    let argv = common::process_argv(qemu[0]);
    let name = common::arg_after(&argv, "-name").unwrap_or_default();
    println!();
    println!("== ps: the kata pod's VM on the host");
    println!("{} {}", qemu[0], argv.join(" "));
    assert_eq!(
        name,
        format!("sandbox-{}", kata.id),
        "QEMU's -name matches the pod's sandbox id"
    );
    println!(
        "   -name {name} matches the pod's sandbox id; -uuid {}",
        common::arg_after(&argv, "-uuid").unwrap_or("?")
    );
    assert!(
        common::qemu_pids(&pods[0].id).is_empty(),
        "the runc pod has no VM"
    );

    let host_kernel = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let guest_kernel = &answers[0][1];
    println!();
    if &host_kernel != guest_kernel {
        println!("note: the kata pod runs kernel {guest_kernel}, the host runs {host_kernel}: the");
        println!("      running kernel's image is not on disk on this machine, so the guest image");
        println!(
            "      was built from the newest installed kernel with modules (kata-guest-image's"
        );
        println!(
            "      warning above says so). On a node whose running kernel is installed, they match."
        );
    } else {
        println!(
            "the kata pod runs the host's own kernel release, from an image built on this node"
        );
    }

    println!();
    println!("== crictl stopp; crictl rmp (both pods)");
    for p in &pods {
        cri.stop_pod(&p.id)
            .unwrap_or_else(|e| panic!("StopPodSandbox {}: {e}", p.handler));
        cri.remove_pod(&p.id)
            .unwrap_or_else(|e| panic!("RemovePodSandbox {}: {e}", p.handler));
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !common::qemu_pids(&kata.id).is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    common::assert_no_leaks(&kata.id);
    drop(cri);
    drop(c);
    println!("demo: OK, both pods are removed and nothing of the kata sandbox is left behind");
}
