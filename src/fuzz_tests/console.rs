//! Console lines (`vm::child`): the guest controls every byte QEMU's
//! console prints. `read_line_capped` must keep at most `max` bytes of a
//! line whatever the input (no newline, invalid UTF-8, NUL, CR) and however
//! the reads are chunked, and `pump` must log only non-empty, trimmed,
//! bounded lines and see the agent's ready marker in any line that carries
//! it within the cap.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use kata_agent_protocol::guest::READY_MARKER;
use tokio::io::{AsyncRead, BufReader, ReadBuf};
use tokio::sync::watch;

use super::{Rng, Tally, run, runtime, show};
use crate::vm::child::{LineKind, pump, read_line_capped};

/// The cap `pump` applies (`vm::child::MAX_LINE`); the pump test checks
/// that a longer line is cut at exactly this length.
const CONSOLE_MAX_LINE: usize = 4096;

/// A reader that hands out its data in the given chunk sizes and, when
/// `fail_at` is set, fails every read from that offset on.
struct Chunked {
    data: Vec<u8>,
    pos: usize,
    sizes: Vec<usize>,
    next: usize,
    fail_at: Option<usize>,
}

impl AsyncRead for Chunked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let end = this.fail_at.unwrap_or(this.data.len()).min(this.data.len());
        if this.pos >= end && this.fail_at.is_some() {
            return Poll::Ready(Err(io::Error::other("injected read error")));
        }
        let size = this.sizes[this.next % this.sizes.len()].max(1);
        this.next += 1;
        let n = size.min(end - this.pos).min(buf.remaining());
        buf.put_slice(&this.data[this.pos..this.pos + n]);
        this.pos += n;
        Poll::Ready(Ok(()))
    }
}

fn chunked(rng: &mut Rng, data: Vec<u8>, fail_at: Option<usize>) -> Chunked {
    let sizes = (0..1 + rng.below(6))
        .map(|_| *rng.pick(&[1, 2, 3, 5, 16, 100, 4095, 4097, 65536]))
        .collect();
    Chunked {
        data,
        pos: 0,
        sizes,
        next: 0,
        fail_at,
    }
}

/// What the guest prints: kernel and agent lines, the ready marker, long
/// lines without end, invalid UTF-8, control bytes, noise.
fn console_input(rng: &mut Rng) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..rng.below(40) {
        match rng.below(10) {
            0 => out.extend_from_slice(b"[    0.123456] Linux version 6.8.0\r\n"),
            1 => {
                // The marker, maybe inside a longer line.
                out.extend(rng.bytes(8).iter().filter(|&&b| b != b'\n'));
                out.extend_from_slice(READY_MARKER.as_bytes());
                out.extend_from_slice(b"\n");
            }
            2 => {
                // A line past the cap, with the marker beyond it sometimes.
                let n = CONSOLE_MAX_LINE - 8 + rng.below(40);
                out.extend(std::iter::repeat_n(b'x', n));
                if rng.one_in(2) {
                    out.extend_from_slice(READY_MARKER.as_bytes());
                }
                if rng.one_in(2) {
                    out.push(b'\n');
                }
            }
            3 => out.extend_from_slice(&[0xff, 0xfe, 0xc3, b'\n', 0xed, 0xa0, 0x80, 0xe2, 0x82]),
            4 => out.extend_from_slice(b" \t\r\n\n\r\n"),
            5 => out.extend_from_slice(b"\0\0\x1b[31mred\x1b[0m\n"),
            6 => {
                // Multi-byte characters straddling the cap.
                let n = CONSOLE_MAX_LINE / 3 + rng.below(4);
                for _ in 0..n {
                    out.extend_from_slice("\u{20ac}".as_bytes());
                }
                out.push(b'\n');
            }
            _ => out.extend(rng.bytes(64)),
        }
    }
    if rng.one_in(20) {
        // One long line without end: 64 KiB.
        out.extend(std::iter::repeat_n(b'y', 64 << 10));
    }
    out
}

/// The lines `read_line_capped` must return for `input`: each up to and
/// including its newline (or the end), cut to `max` bytes.
fn model_lines(input: &[u8], max: usize) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < input.len() {
        let end = input[pos..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(input.len(), |i| pos + i + 1);
        let line = &input[pos..end];
        out.push(line[..line.len().min(max)].to_vec());
        pos = end;
    }
    out
}

#[test]
fn console_lines_are_capped_however_they_arrive() {
    let name = "console_lines_are_capped_however_they_arrive";
    let rt = runtime();
    let mut tally = Tally::default();
    run(
        name,
        0xc025_01e0_0000_0004,
        10_000,
        Duration::from_secs(2),
        |rng| {
            let input = console_input(rng);
            let fail_at = rng.one_in(5).then(|| rng.below(input.len() + 1));
            let max = *rng.pick(&[0, 1, 2, 7, 64, 4095, CONSOLE_MAX_LINE]);
            let capacity = *rng.pick(&[1, 2, 3, 7, 64, 8192]);
            let seen = input[..fail_at.unwrap_or(input.len())].to_vec();
            let want = model_lines(&seen, max);
            tally.add(if fail_at.is_some() {
                "read error"
            } else {
                "end of stream"
            });
            if seen.split(|&b| b == b'\n').any(|l| l.len() >= max) {
                tally.add("cut");
            }
            let mut r = BufReader::with_capacity(capacity, chunked(rng, input.clone(), fail_at));
            let got = rt.block_on(async {
                let mut got = Vec::new();
                let mut buf = Vec::new();
                while read_line_capped(&mut r, &mut buf, max).await {
                    assert!(buf.len() <= max, "line of {} bytes over {max}", buf.len());
                    assert!(
                        buf.capacity() <= 2 * max + 64,
                        "buffer grew to {} for a cap of {max}",
                        buf.capacity()
                    );
                    got.push(std::mem::take(&mut buf));
                    assert!(got.len() <= seen.len(), "more lines than bytes");
                }
                got
            });
            assert_eq!(
                got.len(),
                want.len(),
                "max {max} capacity {capacity} input {}",
                show(&input)
            );
            for (g, w) in got.iter().zip(&want) {
                assert_eq!(g, w, "max {max} capacity {capacity} input {}", show(&input));
            }
        },
    );
    tally.require(name, &["read error", "end of stream", "cut"]);
}

#[test]
fn console_pump_logs_bounded_lines_and_sees_the_marker() {
    let name = "console_pump_logs_bounded_lines_and_sees_the_marker";
    let rt = runtime();
    let mut tally = Tally::default();
    run(
        name,
        0xc025_01e0_0000_0005,
        10_000,
        Duration::from_secs(2),
        |rng| {
            let input = console_input(rng);
            let fail_at = rng.one_in(5).then(|| rng.below(input.len() + 1));
            let seen = &input[..fail_at.unwrap_or(input.len())];
            // The model: capped lines, decoded lossily, trimmed, non-empty.
            let mut kept = Vec::new();
            let mut ready_expected = false;
            for line in model_lines(seen, CONSOLE_MAX_LINE) {
                let text = String::from_utf8_lossy(&line);
                let text = text.trim_end();
                if text.is_empty() {
                    continue;
                }
                ready_expected |= text.contains(READY_MARKER);
                kept.push(text.to_string());
            }
            let tail = Arc::new(Mutex::new(VecDeque::new()));
            let (tx, rx) = watch::channel(false);
            let stream = chunked(rng, input.clone(), fail_at);
            rt.block_on(pump(
                stream,
                "console",
                "fuzz".into(),
                LineKind::GuestConsole,
                tail.clone(),
                Some(tx),
            ));
            let tail = tail.lock().expect("tail lock").clone();
            assert_eq!(
                *rx.borrow(),
                ready_expected,
                "ready marker: {}",
                show(&input)
            );
            tally.add(if ready_expected { "ready" } else { "not ready" });
            if kept.len() > 8 {
                tally.add("tail full");
            }
            assert!(tail.len() <= 8, "tail keeps {} lines", tail.len());
            // Fewer than 200 lines: none is rate-limited away.
            let want: Vec<&String> = kept.iter().skip(kept.len().saturating_sub(8)).collect();
            assert_eq!(tail.iter().collect::<Vec<_>>(), want, "{}", show(&input));
            for line in &tail {
                assert!(!line.is_empty() && line.trim_end() == line, "{line:?}");
                assert!(
                    line.chars().count() <= CONSOLE_MAX_LINE,
                    "{} chars",
                    line.len()
                );
                // Lossy decoding may triple invalid bytes, no more.
                assert!(line.len() <= 3 * CONSOLE_MAX_LINE, "{} bytes", line.len());
            }
        },
    );
    tally.require(name, &["ready", "not ready", "tail full"]);
}

#[test]
fn console_pump_cuts_a_long_line_at_the_cap() {
    let rt = runtime();
    let tail = Arc::new(Mutex::new(VecDeque::new()));
    let mut input = vec![b'z'; 3 * CONSOLE_MAX_LINE];
    input.extend_from_slice(b"\nnext\n");
    rt.block_on(pump(
        &input[..],
        "console",
        "fuzz".into(),
        LineKind::Diagnostic,
        tail.clone(),
        None,
    ));
    let tail = tail.lock().expect("tail lock").clone();
    assert_eq!(tail.len(), 2);
    assert_eq!(
        tail[0].len(),
        CONSOLE_MAX_LINE,
        "the cap is vm::child::MAX_LINE"
    );
    assert_eq!(tail[1], "next");
}
