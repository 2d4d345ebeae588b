//! In-process tests of the ttrpc services: the server is started on a temp
//! Unix socket exactly as `--listen` does, and called through the generated
//! clients.

use std::time::Duration;

use kata_agent_protocol::agent::{DestroySandboxRequest, GuestDetailsRequest};
use kata_agent_protocol::agent_ttrpc::AgentServiceClient;
use kata_agent_protocol::health::{CheckRequest, health_check_response::ServingStatus};
use kata_agent_protocol::health_ttrpc::HealthClient;
use kata_agent_protocol::{AGENT_VERSION, PROTOCOL_VERSION};

use super::*;

const TIMEOUT_NS: i64 = 10_000_000_000;

fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(TIMEOUT_NS)
}

/// The kernel release per uname(2). Not `uname -r`: a child process could be
/// collected by the reaper test running concurrently in this test binary.
fn uname_r() -> String {
    // SAFETY: utsname is a struct of char arrays; all-zero bytes are valid.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `uts` is a live, writable utsname for the call's duration.
    let rc = unsafe { libc::uname(&mut uts) };
    assert_eq!(rc, 0, "uname failed");
    // SAFETY: the kernel NUL-terminates `release` within the array.
    let release = unsafe { std::ffi::CStr::from_ptr(uts.release.as_ptr()) };
    release.to_string_lossy().into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_over_unix_socket() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("agent.sock");
    let addr = format!("unix://{}", sock.display());
    let mut running = start(&addr, GuestPaths::default(), DestroyAction::Exit)
        .await
        .expect("start server");

    let client = ttrpc::r#async::Client::connect(&addr)
        .await
        .expect("connect to agent");
    let health = HealthClient::new(client.clone());
    let svc = AgentServiceClient::new(client);

    let mut req = CheckRequest::new();
    req.service = "test".into();
    let resp = health.check(ctx(), &req).await.expect("Health.Check");
    assert_eq!(resp.status.enum_value(), Ok(ServingStatus::SERVING));

    let v = health.version(ctx(), &req).await.expect("Health.Version");
    assert_eq!(v.agent_version, AGENT_VERSION);
    assert_eq!(v.grpc_version, PROTOCOL_VERSION.to_string());

    let d = svc
        .get_guest_details(ctx(), &GuestDetailsRequest::new())
        .await
        .expect("GetGuestDetails");
    assert_eq!(d.agent_version, AGENT_VERSION);
    assert_eq!(d.protocol_version, PROTOCOL_VERSION);
    assert_eq!(d.kernel_release, uname_r());
    assert!(d.online_cpus >= 1, "online_cpus = {}", d.online_cpus);
    assert!(d.uptime_seconds > 0.0);
    assert!(d.mem_total_kib > 0);
    assert!(d.mem_available_kib > 0 && d.mem_available_kib <= d.mem_total_kib);
    let cmdline = std::fs::read_to_string("/proc/cmdline").expect("read /proc/cmdline");
    assert_eq!(d.kernel_cmdline, cmdline.trim());
    // The host has no sandbox share.
    assert_eq!(d.shared_fs.fstype, "");
    assert_eq!(d.shared_fs.mount_point, "");
    assert!(!d.shared_fs.probe_found);

    // A valid probe name without a share: answered, not found.
    let mut req = GuestDetailsRequest::new();
    req.shared_fs_probe = "probe.txt".into();
    let d = svc
        .get_guest_details(ctx(), &req)
        .await
        .expect("GetGuestDetails with probe");
    assert!(!d.shared_fs.probe_found);

    for bad in ["../etc/passwd", "a/b", "..", ".", "x\0y"] {
        let mut req = GuestDetailsRequest::new();
        req.shared_fs_probe = bad.into();
        match svc.get_guest_details(ctx(), &req).await {
            Err(ttrpc::Error::RpcStatus(st)) => {
                assert_eq!(st.code(), ttrpc::Code::INVALID_ARGUMENT, "{bad:?}");
                assert!(st.message().contains("shared_fs_probe"), "{}", st.message());
            }
            other => panic!("{bad:?}: expected INVALID_ARGUMENT, got {other:?}"),
        }
    }

    // DestroySandbox replies OK and signals the owner of the server.
    svc.destroy_sandbox(ctx(), &DestroySandboxRequest::new())
        .await
        .expect("DestroySandbox");
    tokio::time::timeout(Duration::from_secs(5), running.wait_destroy())
        .await
        .expect("destroy signalled");
    running.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn binding_a_bad_address_fails() {
    let err = start("bogus://x", GuestPaths::default(), DestroyAction::Exit)
        .await
        .err()
        .expect("bad scheme must fail");
    assert!(matches!(err, AgentError::Server(_)), "{err:?}");
}
