//! The shim's agent client against a fake agent on a Unix socket: the
//! first-contact checks accept our protocol version and refuse any other
//! with a clear error. This is a seam test; the VM tests use the real agent.

use std::sync::Arc;

use async_trait::async_trait;
use kata_agent_protocol::{PROTOCOL_VERSION, agent, agent_ttrpc, health, health_ttrpc};
use kata_shim::agent_client::{AgentClient, AgentError};
use ttrpc::r#async::{Server, TtrpcContext};

struct FakeAgent {
    protocol_version: u32,
}

#[async_trait]
impl health_ttrpc::Health for FakeAgent {
    async fn check(
        &self,
        _ctx: &TtrpcContext,
        _req: health::CheckRequest,
    ) -> ttrpc::Result<health::HealthCheckResponse> {
        let mut r = health::HealthCheckResponse::new();
        r.status = health::health_check_response::ServingStatus::SERVING.into();
        Ok(r)
    }
}

#[async_trait]
impl agent_ttrpc::AgentService for FakeAgent {
    async fn get_guest_details(
        &self,
        _ctx: &TtrpcContext,
        _req: agent::GuestDetailsRequest,
    ) -> ttrpc::Result<agent::GuestDetailsResponse> {
        let mut r = agent::GuestDetailsResponse::new();
        r.protocol_version = self.protocol_version;
        r.agent_version = "fake".into();
        Ok(r)
    }

    /// A hostile guest: twice what was asked for.
    async fn read_stdout(
        &self,
        _ctx: &TtrpcContext,
        req: agent::ReadStreamRequest,
    ) -> ttrpc::Result<agent::ReadStreamResponse> {
        let mut r = agent::ReadStreamResponse::new();
        r.data = vec![b'x'; 2 * req.len as usize];
        Ok(r)
    }
}

async fn client_for(protocol_version: u32) -> (tempfile::TempDir, Server, AgentClient) {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("agent.sock");
    let fake = Arc::new(FakeAgent { protocol_version });
    let mut services = health_ttrpc::create_health(fake.clone());
    services.extend(agent_ttrpc::create_agent_service(fake));
    let mut server = Server::new()
        .bind(&format!("unix://{}", sock.display()))
        .expect("bind")
        .register_service(services);
    server.start().await.expect("start");
    let stream = tokio::net::UnixStream::connect(&sock)
        .await
        .expect("connect");
    let client = AgentClient::from_socket(stream.into());
    (dir, server, client)
}

#[tokio::test]
async fn matching_protocol_version_is_accepted() {
    let (_d, mut server, client) = client_for(PROTOCOL_VERSION).await;
    client
        .check_health(std::time::Duration::from_secs(5))
        .await
        .expect("healthy");
    let d = client.handshake().await.expect("same version accepted");
    assert_eq!(d.agent_version, "fake");
    server.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn protocol_version_mismatch_is_rejected_clearly() {
    let (_d, mut server, client) = client_for(PROTOCOL_VERSION + 998).await;
    let e = client.handshake().await.expect_err("other version refused");
    assert!(
        matches!(e, AgentError::VersionMismatch { agent, shim } if agent == PROTOCOL_VERSION + 998 && shim == PROTOCOL_VERSION),
        "{e:?}"
    );
    let msg = e.to_string();
    assert!(
        msg.contains(&format!("protocol version {}", PROTOCOL_VERSION + 998)),
        "{msg}"
    );
    assert!(msg.contains("rebuild the guest image"), "{msg}");
    server.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn unimplemented_rpc_is_reported_as_an_rpc_error() {
    let (_d, mut server, client) = client_for(PROTOCOL_VERSION).await;
    let e = client
        .destroy_sandbox()
        .await
        .expect_err("fake does not implement it");
    match e {
        AgentError::Rpc {
            call,
            source: ttrpc::Error::RpcStatus(s),
        } => {
            assert_eq!(call, "DestroySandbox");
            assert_eq!(s.code(), ttrpc::Code::UNIMPLEMENTED);
        }
        other => panic!("unexpected {other:?}"),
    }
    server.shutdown().await.expect("shutdown");
}

/// Issue 14: a 32 KiB read was answered with whatever fit under ttrpc's
/// 4 MiB cap, and the shim took it.
#[tokio::test]
async fn a_reply_larger_than_the_read_is_a_protocol_error() {
    let (_d, mut server, client) = client_for(PROTOCOL_VERSION).await;
    let e = client
        .read_stdout("c1", "", 32 << 10)
        .await
        .expect_err("64 KiB for a 32 KiB read");
    assert!(
        matches!(
            e,
            AgentError::Protocol {
                call: "ReadStdout",
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(e.code(), ttrpc::Code::DATA_LOSS);
    assert!(
        e.to_string()
            .contains("65536 bytes in reply to a read of 32768"),
        "{e}"
    );
    server.shutdown().await.expect("shutdown");
}
