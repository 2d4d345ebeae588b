//! The management socket against kata-monitor's exact requests, bad
//! requests and slow clients, with a fixed source.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use super::*;

struct Fixed;

#[async_trait]
impl Source for Fixed {
    async fn metrics(&self) -> String {
        "# HELP kata_shim_up 1 while the shim serves.\n# TYPE kata_shim_up gauge\nkata_shim_up 1\n"
            .to_string()
    }
    fn agent_url(&self) -> Option<String> {
        Some("hvsock:///run/kata/x/kata.hvsock:1024".to_string())
    }
}

/// kata-monitor's request, byte for byte as Go 1.23's `http.Client.Get`
/// with `DisableKeepAlives` writes it (`shimclient.DoGet`).
fn go_get(path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: shim\r\nUser-Agent: Go-http-client/1.1\r\n\
         Accept-Encoding: gzip\r\nConnection: close\r\n\r\n"
    )
}

fn ask(sock: &Path, request: &[u8]) -> String {
    let mut s = UnixStream::connect(sock).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(request).expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    out
}

/// Serves [`Fixed`] in a temporary directory; the endpoint, the socket.
async fn serving() -> (tempfile::TempDir, Endpoint, PathBuf) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("sbs").join("sb1");
    let ep = serve_in(dir.clone(), "sb1", Arc::new(Fixed)).expect("serve");
    (tmp, ep, dir.join(crate::layout::MGMT_SOCKET))
}

/// Runs a blocking client off the runtime's workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kata_monitors_requests_are_answered() {
    let (_tmp, ep, sock) = serving().await;
    let mode = std::fs::metadata(&sock)
        .expect("socket")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let dir_mode = std::fs::metadata(sock.parent().expect("dir"))
        .expect("dir")
        .permissions()
        .mode();
    assert_eq!(dir_mode & 0o777, 0o700);

    let s = sock.clone();
    let metrics = blocking(move || ask(&s, go_get("/metrics").as_bytes())).await;
    let (head, body) = metrics.split_once("\r\n\r\n").expect("head");
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(
        head.contains("Content-Type: text/plain; version=0.0.4; charset=utf-8"),
        "{head}"
    );
    assert!(
        head.contains(&format!("Content-Length: {}", body.len())),
        "{head}"
    );
    assert!(head.contains("Connection: close"), "{head}");
    assert!(body.ends_with("kata_shim_up 1\n"), "{body}");

    let s = sock.clone();
    let url = blocking(move || ask(&s, go_get("/agent-url").as_bytes())).await;
    assert!(
        url.ends_with("\r\n\r\nhvsock:///run/kata/x/kata.hvsock:1024"),
        "{url}"
    );

    let s = sock.clone();
    let query = blocking(move || ask(&s, go_get("/metrics?x=1").as_bytes())).await;
    assert!(query.starts_with("HTTP/1.1 200 OK"), "{query}");

    ep.remove();
    assert!(!sock.exists() && !sock.parent().expect("dir").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_their_status() {
    let (_tmp, _ep, sock) = serving().await;
    for (request, status) in [
        (go_get("/nope"), "404 Not Found"),
        (go_get("/"), "404 Not Found"),
        (go_get("/metrics/../etc"), "404 Not Found"),
        (
            "POST /metrics HTTP/1.1\r\nHost: shim\r\nContent-Length: 0\r\n\r\n".to_string(),
            "405 Method Not Allowed",
        ),
        (
            "PUT /agent-url HTTP/1.1\r\n\r\n".to_string(),
            "405 Method Not Allowed",
        ),
        ("hello\r\n\r\n".to_string(), "400 Bad Request"),
        ("GET /metrics SPDY/3\r\n\r\n".to_string(), "400 Bad Request"),
        ("\u{0}\u{ff}\r\n\r\n".to_string(), "400 Bad Request"),
    ] {
        let s = sock.clone();
        let answer = blocking(move || ask(&s, request.as_bytes())).await;
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}\r\n")),
            "{answer}"
        );
    }
    // A head that never ends is cut at MAX_REQUEST.
    let s = sock.clone();
    let long = format!(
        "GET /metrics HTTP/1.1\r\nX: {}\r\n",
        "a".repeat(2 * MAX_REQUEST)
    );
    let answer = blocking(move || ask(&s, long.as_bytes())).await;
    assert!(answer.starts_with("HTTP/1.1 400 Bad Request"), "{answer}");
    // HEAD gets the head only.
    let s = sock.clone();
    let head = blocking(move || ask(&s, b"HEAD /metrics HTTP/1.1\r\n\r\n")).await;
    assert!(
        head.starts_with("HTTP/1.1 200 OK") && head.ends_with("\r\n\r\n"),
        "{head}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_do_not_hold_up_a_scrape() {
    let (_tmp, _ep, sock) = serving().await;
    // Clients that connect and say nothing, or send half a request and
    // never read: each holds only its own connection.
    let mut idle = Vec::new();
    for i in 0..MAX_CLIENTS - 1 {
        let mut s = UnixStream::connect(&sock).expect("connect");
        if i % 2 == 0 {
            s.write_all(b"GET /metr").expect("write");
        }
        idle.push(s);
    }
    let s = sock.clone();
    let began = Instant::now();
    let answer = blocking(move || ask(&s, go_get("/metrics").as_bytes())).await;
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    // kata-monitor's own deadline for the whole scrape.
    assert!(
        began.elapsed() < Duration::from_secs(3),
        "{:?}",
        began.elapsed()
    );
    // The idle ones are closed once their time is up.
    let mut first = idle.remove(0);
    first
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut rest = Vec::new();
    let n = blocking(move || first.read_to_end(&mut rest).map(|_| rest.len())).await;
    assert!(n.is_ok(), "{n:?}");
}

#[test]
fn request_lines_are_parsed_strictly() {
    assert_eq!(
        parse_request(b"GET /metrics?sandbox=x HTTP/1.1\r\n"),
        Some(Request {
            method: "GET".into(),
            path: "/metrics".into()
        })
    );
    assert_eq!(
        parse_request(b"GET http://shim/agent-url HTTP/1.0\n").map(|r| r.path),
        Some("/agent-url".into())
    );
    assert_eq!(parse_request(b"GET /metrics\r\n"), None);
    assert_eq!(parse_request(b"GET  /metrics HTTP/1.1\r\n"), None);
    assert_eq!(parse_request(b"no newline"), None);
}

#[test]
fn agent_urls_take_kata_form() {
    assert_eq!(
        agent_url(&crate::vm::AgentAddr::Hybrid(PathBuf::from(
            "/run/kata/a/kata.hvsock"
        ))),
        "hvsock:///run/kata/a/kata.hvsock:1024"
    );
    assert_eq!(agent_url(&crate::vm::AgentAddr::Vhost(7)), "vsock://7:1024");
}
