//! A guest that misbehaves on purpose, for the host's tests only (issue 14).
//!
//! This module exists only in a build with the `hostile` cargo feature,
//! which `make test` builds into its own target directory for its own test
//! image; the installed agent and the node's image never have it, so no
//! annotation or kernel parameter can switch it on there. In that build,
//! `agent.hostile=<mode>` on the kernel command line picks the misbehaviour.

use std::io::Write;
use std::sync::OnceLock;

/// The kernel-command-line key (honoured only in a `hostile` build).
pub const KEY: &str = "agent.hostile";

/// What this guest does wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Writes to the console without end and without a newline.
    ConsoleFlood,
    /// Answers every GetOOMEvent at once, with ids the sandbox never had.
    OomStorm,
    /// Answers every stream read with twice the bytes asked for.
    BigReplies,
    /// Writes as much as it can into the share's root.
    ShareFlood,
    /// Sends 4 KiB of garbage on every connection, where ttrpc frames
    /// belong.
    Garbage,
    /// Sends replies to calls the shim never made (stream ids it never
    /// used) on every connection, then serves it normally.
    StrayReplies,
}

static MODE: OnceLock<Mode> = OnceLock::new();

/// Reads the mode from the kernel command line; call once at boot.
pub fn init(cmdline: &str) {
    let mode =
        cmdline
            .split_whitespace()
            .find_map(|p| match p.strip_prefix(KEY)?.strip_prefix('=')? {
                "console-flood" => Some(Mode::ConsoleFlood),
                "oom-storm" => Some(Mode::OomStorm),
                "big-replies" => Some(Mode::BigReplies),
                "share-flood" => Some(Mode::ShareFlood),
                "garbage" => Some(Mode::Garbage),
                "stray-replies" => Some(Mode::StrayReplies),
                _ => None,
            });
    if let Some(m) = mode {
        let _ = MODE.set(m);
        eprintln!("kata-agent: HOSTILE TEST BUILD, misbehaving on purpose: {m:?}");
    }
}

/// Whether this guest misbehaves as `m`.
pub fn is(m: Mode) -> bool {
    MODE.get() == Some(&m)
}

/// Starts the misbehaviours that run on their own, once the agent serves.
pub fn start(share: &std::path::Path) {
    if is(Mode::ConsoleFlood) {
        std::thread::spawn(|| {
            let chunk = vec![b'A'; 64 << 10];
            let mut out = std::io::stdout().lock();
            loop {
                if out.write_all(&chunk).is_err() {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
            }
        });
    }
    if is(Mode::ShareFlood) {
        let share = share.to_path_buf();
        std::thread::spawn(move || {
            let chunk = vec![0u8; 1 << 20];
            let mut written = 0u64;
            let mut errors = Vec::new();
            for i in 0..1024 {
                let path = share.join(format!("flood-{i}"));
                match std::fs::File::create(&path).and_then(|mut f| f.write_all(&chunk)) {
                    Ok(()) => written += chunk.len() as u64,
                    Err(e) => {
                        errors.push(e.to_string());
                        if errors.len() > 3 {
                            break;
                        }
                    }
                }
            }
            println!("kata-agent: hostile share flood wrote {written} bytes; errors: {errors:?}");
        });
    }
}

/// Writes what [`Mode::Garbage`] or [`Mode::StrayReplies`] put on a new,
/// authenticated connection before ttrpc serves it.
pub async fn corrupt_connection<S: tokio::io::AsyncWrite + Unpin>(sock: &mut S) {
    use tokio::io::AsyncWriteExt;
    if is(Mode::Garbage) {
        // xorshift: fixed, so a failure reproduces.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let junk: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let _ = sock.write_all(&junk).await;
    }
    if is(Mode::StrayReplies) {
        // ttrpc frames: length (0: an empty Response), stream id (odd ids
        // far above any the shim has used), type 2 (response), flags 0.
        for id in [0x7fff_fff1u32, 0x7fff_fff3, 0x7fff_fff5] {
            let mut frame = vec![0u8, 0, 0, 0];
            frame.extend_from_slice(&id.to_be_bytes());
            frame.extend_from_slice(&[2, 0]);
            let _ = sock.write_all(&frame).await;
        }
    }
}

/// An OOM report for a container that never existed, with a long id.
pub fn unknown_oom_id() -> String {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("no-such-container-{n}-{}\n\u{1b}[2J", "x".repeat(4000))
}
