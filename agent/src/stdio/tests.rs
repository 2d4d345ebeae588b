//! Real-process tests of pipe and pty stdio (run on the host).

use std::os::fd::OwnedFd;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::*;

const T: Duration = Duration::from_secs(20);

/// Spawns `sh -c script` on the child ends, drops every parent copy of them
/// (the `Command` keeps its `Stdio`s until dropped) and calls
/// `child_started`.
/// Installs the ends the way the lifecycle does: `/dev/null` for a missing
/// stdin, a dup of stdout for a missing stderr.
fn spawn(script: &str, child: ChildStdio, io: &ProcessIo) -> Child {
    let proc = {
        let stdin = child.stdin.map_or_else(Stdio::null, Stdio::from);
        let stderr = match child.stderr {
            Some(fd) => fd,
            None => child.stdout.try_clone().expect("dup stdout"),
        };
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", script])
            .stdin(stdin)
            .stdout(Stdio::from(child.stdout))
            .stderr(Stdio::from(stderr));
        cmd.spawn().expect("spawn sh")
    };
    io.child_started();
    proc
}

/// Collects a child in the background. Another test's reaper (same process)
/// may have collected it already, so the result is ignored.
fn reap(mut child: Child) {
    std::thread::spawn(move || {
        let _ = child.wait();
    });
}

/// Reads a stream until EOF.
async fn read_all(io: &ProcessIo, stderr: bool) -> Vec<u8> {
    let mut all = Vec::new();
    loop {
        let chunk = tokio::time::timeout(T, async {
            if stderr {
                io.read_stderr(4096).await
            } else {
                io.read_stdout(4096).await
            }
        })
        .await
        .expect("read timed out")
        .expect("read");
        if chunk.is_empty() {
            return all;
        }
        all.extend_from_slice(&chunk);
    }
}

fn pipes(open_stdin: bool) -> (ChildStdio, ProcessIo) {
    create(StdioConfig {
        terminal: false,
        open_stdin,
    })
    .expect("create pipes")
}

#[tokio::test]
async fn pipes_carry_stdout_and_stderr_separately() {
    let (child, io) = pipes(false);
    let proc = spawn("echo out; echo err >&2; exit 3", child, &io);
    assert_eq!(read_all(&io, false).await, b"out\n");
    assert_eq!(read_all(&io, true).await, b"err\n");
    // EOF stays EOF.
    assert!(io.read_stdout(10).await.expect("read").is_empty());
    assert!(io.wait_output_drained_timeout(T).await);
    reap(proc);
}

#[tokio::test]
async fn stdin_round_trip_and_close() {
    let (child, io) = pipes(true);
    let proc = spawn("cat", child, &io);
    assert_eq!(io.write_stdin(b"hello\n").await.expect("write"), 6);
    let got = tokio::time::timeout(T, io.read_stdout(100))
        .await
        .expect("timely")
        .expect("read");
    assert_eq!(got, b"hello\n");
    io.close_stdin().await;
    // Idempotent.
    io.close_stdin().await;
    // cat exits on EOF, which closes stdout.
    assert!(read_all(&io, false).await.is_empty());
    let err = io
        .write_stdin(b"late")
        .await
        .expect_err("write after close");
    assert_eq!(err.code(), ttrpc::Code::FAILED_PRECONDITION, "{err}");
    reap(proc);
}

#[tokio::test]
async fn stdin_not_opened_is_dev_null_and_refuses_writes() {
    let (child, io) = pipes(false);
    let proc = spawn("cat; echo done", child, &io);
    assert_eq!(read_all(&io, false).await, b"done\n");
    let err = io.write_stdin(b"x").await.expect_err("no stdin");
    assert_eq!(err.code(), ttrpc::Code::FAILED_PRECONDITION, "{err}");
    reap(proc);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_stdin_releases_a_blocked_writer() {
    let (child, io) = pipes(true);
    // Never reads stdin: a big write fills the pipe and waits.
    let proc = spawn("sleep 30", child, &io);
    let io = Arc::new(io);
    let writer = {
        let io = Arc::clone(&io);
        tokio::spawn(async move { io.write_stdin(&vec![b'x'; 4 << 20]).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!writer.is_finished(), "the writer waits on the full pipe");
    tokio::time::timeout(T, io.close_stdin())
        .await
        .expect("close does not wait for the writer");
    let n = tokio::time::timeout(T, writer)
        .await
        .expect("writer released")
        .expect("join")
        .expect("partial write reported");
    assert!(n > 0 && n < 4 << 20, "{n}");
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(proc.id()).expect("pid")),
        nix::sys::signal::Signal::SIGKILL,
    );
    reap(proc);
}

#[tokio::test]
async fn zero_length_read_is_invalid_and_huge_read_is_capped() {
    let (child, io) = pipes(false);
    match io.read_stdout(0).await {
        Err(AgentError::InvalidArgument { field, .. }) => assert_eq!(field, "len"),
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
    let proc = spawn("head -c 3000000 /dev/zero", child, &io);
    // Wait until the buffer is full, then one read returns at most 1 MiB.
    tokio::time::timeout(T, async {
        while io.buffered().0 < STREAM_BUFFER_CAP {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("buffer fills");
    let got = io.read_stdout(usize::MAX).await.expect("read");
    assert_eq!(got.len(), MAX_READ);
    assert_eq!(read_all(&io, false).await.len(), 3_000_000 - MAX_READ);
    reap(proc);
}

/// xorshift64*: a reproducible pseudo-random byte pattern.
fn pattern(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn back_pressure_keeps_every_byte_and_bounds_the_buffer() {
    const LEN: usize = 8 << 20;
    let data = pattern(LEN);
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("pattern");
    std::fs::write(&file, &data).expect("write pattern");

    let (child, io) = pipes(false);
    let mut proc = spawn(&format!("cat '{}'", file.display()), child, &io);

    // Nobody reads: the buffer fills to exactly its cap and stops there,
    // and the writer is blocked rather than losing data.
    tokio::time::timeout(T, async {
        while io.buffered().0 < STREAM_BUFFER_CAP {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("buffer fills");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(io.buffered().0, STREAM_BUFFER_CAP);
    assert!(
        proc.try_wait().expect("try_wait").is_none(),
        "cat is blocked"
    );

    // Slow reader: small, varying chunks with pauses.
    let mut got = Vec::with_capacity(LEN);
    let mut reads = 0usize;
    loop {
        let max = 1000 + (reads * 7919) % 60_000;
        let chunk = tokio::time::timeout(T, io.read_stdout(max))
            .await
            .expect("read timed out")
            .expect("read");
        if chunk.is_empty() {
            break;
        }
        assert!(chunk.len() <= max);
        got.extend_from_slice(&chunk);
        reads += 1;
        if reads % 16 == 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        assert!(io.buffered().0 <= STREAM_BUFFER_CAP);
    }
    assert_eq!(got.len(), LEN);
    assert!(got == data, "output differs from what was written");
    assert!(io.buffered_peak().0 <= STREAM_BUFFER_CAP);
    assert_eq!(io.buffered_peak().1, 0);
    reap(proc);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reads_are_serialized_and_lose_nothing() {
    let (child, io) = pipes(false);
    let io = Arc::new(io);
    let proc = spawn("seq 1 100000", child, &io);
    let mut readers = Vec::new();
    for _ in 0..4 {
        let io = Arc::clone(&io);
        readers.push(tokio::spawn(async move {
            let mut n = 0usize;
            loop {
                let chunk = io.read_stdout(777).await.expect("read");
                if chunk.is_empty() {
                    return n;
                }
                n += chunk.len();
            }
        }));
    }
    let mut total = 0;
    for r in readers {
        total += tokio::time::timeout(T, r)
            .await
            .expect("timely")
            .expect("join");
    }
    let expected: usize = (1..=100_000).map(|i: usize| i.to_string().len() + 1).sum();
    assert_eq!(total, expected);
    reap(proc);
}

#[tokio::test]
async fn tty_resize_and_output() {
    let (child, io) = create(StdioConfig {
        terminal: true,
        open_stdin: true,
    })
    .expect("create pty");
    io.resize(40, 100).expect("resize");
    let proc = spawn("stty size", child, &io);
    let out = String::from_utf8(read_all(&io, false).await).expect("utf8");
    assert!(out.contains("40 100"), "{out:?}");
    // stderr goes to the terminal too: EOF at once.
    assert!(io.read_stderr(10).await.expect("read").is_empty());
    assert!(io.wait_output_drained_timeout(T).await);
    reap(proc);
}

#[tokio::test]
async fn tty_stdin_and_close_as_eof() {
    let (child, io) = create(StdioConfig {
        terminal: true,
        open_stdin: true,
    })
    .expect("create pty");
    let proc = spawn(
        "stty -echo; read line; echo \"got $line\"; cat; echo end",
        child,
        &io,
    );
    // Let `stty -echo` run before typing.
    tokio::time::sleep(Duration::from_millis(300)).await;
    io.write_stdin(b"abc\n").await.expect("write");
    io.close_stdin().await;
    let out = String::from_utf8(read_all(&io, false).await).expect("utf8");
    assert!(out.contains("got abc"), "{out:?}");
    assert!(out.contains("end"), "cat saw EOF: {out:?}");
    let err = io.write_stdin(b"x").await.expect_err("closed");
    assert_eq!(err.code(), ttrpc::Code::FAILED_PRECONDITION, "{err}");
    reap(proc);
}

#[tokio::test]
async fn resize_without_terminal_is_a_failed_precondition() {
    let (_child, io) = pipes(false);
    let err = io.resize(40, 100).expect_err("no tty");
    assert_eq!(err.code(), ttrpc::Code::FAILED_PRECONDITION, "{err}");
}

#[tokio::test]
async fn from_pty_master_reads_output() {
    let pty = nix::pty::openpty(None, None).expect("openpty");
    let io = ProcessIo::from_pty_master(pty.master, false).expect("wrap master");
    let slave: OwnedFd = pty.slave;
    let child = ChildStdio {
        stdin: Some(slave.try_clone().expect("dup")),
        stdout: slave,
        stderr: None,
    };
    let proc = spawn("echo hi", child, &io);
    let out = read_all(&io, false).await;
    assert_eq!(out, b"hi\r\n");
    reap(proc);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drained_only_after_the_last_byte_is_read() {
    let (child, io) = pipes(false);
    let io = Arc::new(io);
    let proc = spawn("printf abc; printf e >&2", child, &io);
    let waiter = {
        let io = Arc::clone(&io);
        tokio::spawn(async move { io.wait_output_drained().await })
    };
    // Both streams reach EOF on the agent side with bytes still buffered.
    tokio::time::timeout(T, async {
        while io.buffered() != (3, 1) || !lock(&io.stdout.state).eof || !lock(&io.stderr.state).eof
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("output buffered");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiter.is_finished());
    assert_eq!(io.read_stdout(2).await.expect("read"), b"ab");
    assert_eq!(io.read_stderr(10).await.expect("read"), b"e");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiter.is_finished(), "one byte of stdout is still unread");
    assert_eq!(io.read_stdout(10).await.expect("read"), b"c");
    tokio::time::timeout(T, waiter)
        .await
        .expect("drained after the last byte")
        .expect("join");
    reap(proc);
}

#[tokio::test]
async fn drain_timeout_when_a_grandchild_keeps_the_pipe_open() {
    let (child, io) = pipes(false);
    // The background sleep inherits stdout; its pid is the only output.
    let proc = spawn("sleep 30 & echo $!", child, &io);
    let line = tokio::time::timeout(T, io.read_stdout(100))
        .await
        .expect("timely")
        .expect("read");
    let pid: i32 = String::from_utf8(line)
        .expect("utf8")
        .trim()
        .parse()
        .expect("pid");
    assert!(
        !io.wait_output_drained_timeout(Duration::from_millis(300))
            .await
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the grandchild");
    assert!(io.wait_output_drained_timeout(T).await);
    reap(proc);
}

#[tokio::test]
async fn output_is_not_eof_before_child_started() {
    let (child, io) = pipes(false);
    // The caller dropped its ends early; the retained copies hold the pipe.
    drop(child);
    assert!(
        !io.wait_output_drained_timeout(Duration::from_millis(200))
            .await
    );
    io.child_started();
    assert!(io.wait_output_drained_timeout(T).await);
}

#[test]
fn take_moves_a_chunk_that_fits_joins_small_ones_and_splits_a_big_one() {
    let mut st = OutputState::default();
    let first = vec![1u8; 10];
    let first_ptr = first.as_ptr();
    for c in [first, vec![2; 5], vec![3; 20]] {
        st.len += c.len();
        st.chunks.push_back(c);
    }
    // The first chunk alone: moved, not copied.
    let a = st.take(10);
    assert_eq!(a, vec![1; 10]);
    assert_eq!(a.as_ptr(), first_ptr, "the chunk was copied");
    // The rest of a request is filled from the next chunks, the last split.
    let b = st.take(13);
    assert_eq!(b, [vec![2; 5], vec![3; 8]].concat());
    assert_eq!(st.len, 12);
    let c = st.take(100);
    assert_eq!(c, vec![3; 12]);
    assert_eq!(st.len, 0);
    assert!(st.chunks.is_empty());
}
