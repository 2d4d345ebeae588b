//! QMP (`vm::qemu::qmp`): the greeting, the replies matched by id and the
//! events in between, as QEMU (or something pretending to be it) sends
//! them. Each case serves a random transcript on a Unix socket, runs the
//! capabilities handshake and one command against it, and compares the
//! outcome with a model of the protocol: lines of at most 1 MiB, blank
//! lines skipped, the first line whose `id` is the command's decides.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;

use super::{JSON_TOKENS, Rng, Tally, mutate_text, run, runtime, show};
use crate::vm::qemu::qmp::{Qmp, QmpError};

/// Longest QMP line the client reads at once (`qmp::MAX_LINE`).
const QMP_MAX_LINE: usize = 1 << 20;

/// How a QMP call ended, comparable between the client and the model.
#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    Ok(Value),
    Closed,
    Json,
    Command(String),
}

/// The client's reading of `data`, as the model sees it.
struct Model<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Model<'_> {
    fn next_message(&mut self) -> Result<Value, Outcome> {
        loop {
            if self.pos >= self.data.len() {
                return Err(Outcome::Closed);
            }
            let limit = self.data.len().min(self.pos + QMP_MAX_LINE);
            let end = self.data[self.pos..limit]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(limit, |i| self.pos + i + 1);
            let line = &self.data[self.pos..end];
            self.pos = end;
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            return serde_json::from_slice(line).map_err(|_| Outcome::Json);
        }
    }

    fn execute(&mut self, id: u64) -> Outcome {
        loop {
            let m = match self.next_message() {
                Ok(m) => m,
                Err(e) => return e,
            };
            if m.get("id").and_then(Value::as_u64) != Some(id) {
                continue;
            }
            if let Some(r) = m.get("return") {
                return Outcome::Ok(r.clone());
            }
            let desc = m.pointer("/error/desc").and_then(Value::as_str);
            return Outcome::Command(desc.unwrap_or("unknown error").to_string());
        }
    }
}

/// What the client does after the handshake.
#[derive(Debug, Clone, Copy)]
enum Op {
    Status,
    Stop,
    Quit,
}

/// The model's outcome of connect + `op` over `transcript`.
fn expected(transcript: &[u8], op: Op) -> Outcome {
    let mut m = Model {
        data: transcript,
        pos: 0,
    };
    let greeting = match m.next_message() {
        Ok(g) => g,
        Err(e) => return e,
    };
    if greeting.get("QMP").is_none() {
        return Outcome::Json;
    }
    match m.execute(1) {
        Outcome::Ok(_) => {}
        other => return other,
    }
    let got = m.execute(2);
    match (op, got) {
        (Op::Status, Outcome::Ok(r)) => Outcome::Ok(Value::String(
            r.get("status")
                .and_then(Value::as_str)
                .unwrap_or("unknown")
                .to_string(),
        )),
        (Op::Quit, Outcome::Ok(_) | Outcome::Closed) => Outcome::Ok(Value::Null),
        (_, other) => other,
    }
}

fn outcome_of(e: QmpError, command: &str) -> Outcome {
    match e {
        QmpError::Closed => Outcome::Closed,
        QmpError::Json(_) => Outcome::Json,
        QmpError::Command {
            command: c,
            message,
        } => {
            assert!(
                c == command || c == "qmp_capabilities",
                "the error names the command: {c}"
            );
            Outcome::Command(message)
        }
        other => panic!("unexpected QMP error: {other}"),
    }
}

/// One line of a transcript.
fn line(rng: &mut Rng) -> Vec<u8> {
    let ids: [Value; 12] = [
        json!(1),
        json!(2),
        json!(2),
        json!(1),
        json!(3),
        json!("1"),
        json!("2"),
        json!(1.0),
        json!(2.5),
        json!(-1),
        json!(0),
        json!(u64::MAX),
    ];
    let id = rng.pick(&ids).clone();
    let v = match rng.below(12) {
        0 => json!({"QMP": {"version": {"qemu": {"major": 8}}, "capabilities": []}}),
        1 => json!({"event": "RTC_CHANGE", "data": {"offset": 0}, "timestamp": {"seconds": 1}}),
        2 | 3 => json!({"return": {}, "id": id}),
        4 => json!({"return": {"status": "running", "running": true}, "id": id}),
        5 => json!({"return": {"status": 5}, "id": id}),
        6 => json!({"error": {"class": "GenericError", "desc": "nope"}, "id": id}),
        7 => json!({"error": {"desc": 7}, "id": id}),
        8 => json!({"id": id}),
        9 => json!({"return": null, "id": id}),
        10 => json!([{"return": {}, "id": id}]),
        _ => json!({"event": "STOP", "id": id}),
    };
    let text = v.to_string().into_bytes();
    match rng.below(10) {
        0 => mutate_text(rng, &text, &JSON_TOKENS),
        1 => b" \t\r".to_vec(),
        2 => rng.bytes(24).into_iter().filter(|&b| b != b'\n').collect(),
        3 => [text.clone(), text].concat(),
        _ => text,
    }
}

/// A transcript: usually a greeting first, then events and replies.
fn transcript(rng: &mut Rng) -> Vec<u8> {
    let mut out = Vec::new();
    if !rng.one_in(8) {
        out.extend_from_slice(br#"{"QMP": {"version": {}, "capabilities": []}}"#);
        out.push(b'\n');
    }
    if !rng.one_in(4) {
        out.extend_from_slice(br#"{"event": "NIC_RX_FILTER_CHANGED"}"#);
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(br#"{"return": {}, "id": 1}"#);
        out.push(b'\n');
    }
    for _ in 0..rng.below(8) {
        out.extend(line(rng));
        out.extend_from_slice(if rng.one_in(4) { b"\r\n" } else { b"\n" });
    }
    if rng.one_in(400) {
        // A line longer than the client reads at once.
        out.extend_from_slice(br#"{"return": ""#);
        out.extend(std::iter::repeat_n(b'a', QMP_MAX_LINE + rng.below(64)));
        out.extend_from_slice(b"\", \"id\": 2}\n");
    }
    if rng.one_in(3) {
        out.pop(); // no final newline
    }
    out
}

#[test]
fn qmp_replies_and_events_follow_the_protocol() {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("qmp.sock");
    let listener = rt
        .block_on(async { UnixListener::bind(&path) })
        .expect("bind");
    let name = "qmp_replies_and_events_follow_the_protocol";
    let mut tally = Tally::default();
    run(
        name,
        0x0a3b_0000_0000_0006,
        20_000,
        Duration::from_secs(3),
        |rng| {
            let data = transcript(rng);
            let op = *rng.pick(&[Op::Status, Op::Stop, Op::Quit]);
            let want = expected(&data, op);
            let server = async {
                let (s, _) = listener.accept().await.expect("accept");
                let (mut r, mut w) = s.into_split();
                // All of it at once, then keep reading until the client
                // hangs up, so that its writes never fail.
                let _ = w.write_all(&data).await;
                let _ = w.shutdown().await;
                let mut sink = Vec::new();
                let _ = r.read_to_end(&mut sink).await;
            };
            let client = async {
                let mut q = match Qmp::connect(&path, Duration::from_secs(2)).await {
                    Ok(q) => q,
                    Err(e) => return outcome_of(e, "qmp_capabilities"),
                };
                match op {
                    Op::Status => match q.status().await {
                        Ok(s) => Outcome::Ok(Value::String(s)),
                        Err(e) => outcome_of(e, "query-status"),
                    },
                    Op::Stop => match q.execute("stop", Some(json!({"x": 1}))).await {
                        Ok(v) => Outcome::Ok(v),
                        Err(e) => outcome_of(e, "stop"),
                    },
                    Op::Quit => match q.quit().await {
                        Ok(()) => Outcome::Ok(Value::Null),
                        Err(e) => outcome_of(e, "quit"),
                    },
                }
            };
            let got = rt.block_on(async {
                let (_, got) = tokio::join!(server, client);
                got
            });
            assert_eq!(got, want, "{op:?} over {}", show(&data));
            tally.add(match got {
                Outcome::Ok(_) => "ok",
                Outcome::Closed => "closed",
                Outcome::Json => "malformed",
                Outcome::Command(_) => "command error",
            });
        },
    );
    tally.require(name, &["ok", "closed", "malformed", "command error"]);
}
