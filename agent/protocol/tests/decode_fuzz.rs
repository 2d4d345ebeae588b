//! Bounded randomized fuzzing of request decoding: every request message the
//! agent accepts is decoded from mutated valid encodings and from random
//! bytes. Decoding may fail, but must never panic or hang; the guest's
//! agent must survive whatever a (possibly compromised) peer sends.

use std::time::{Duration, Instant};

use kata_agent_protocol::{agent, health};
use protobuf::Message;

/// xorshift64*: deterministic, so a failure reproduces from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut b = seed.to_vec();
    for _ in 0..=rng.below(4) {
        match rng.below(5) {
            0 if !b.is_empty() => {
                let i = rng.below(b.len());
                b[i] ^= 1 << rng.below(8);
            }
            1 if !b.is_empty() => b.truncate(rng.below(b.len())),
            2 => {
                let i = rng.below(b.len() + 1);
                b.insert(i, rng.next() as u8);
            }
            3 if !b.is_empty() => {
                let i = rng.below(b.len());
                b[i] = [0x00, 0x7f, 0x80, 0xff][rng.below(4)];
            }
            _ => b.extend((0..rng.below(16)).map(|_| rng.next() as u8)),
        }
    }
    b
}

/// Valid encodings of each request type, as mutation seeds.
fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mut s = Vec::new();
    let mut c = agent::CreateContainerRequest::new();
    c.container_id = "c1".into();
    c.oci_spec_json = br#"{"ociVersion":"1.0.2","process":{"args":["sh"]}}"#.to_vec();
    let mut st = agent::Storage::new();
    st.driver = "virtio-fs".into();
    st.mount_point = "/run/x".into();
    st.options = vec!["nodev".into()];
    c.storages.push(st.clone());
    s.push((
        "CreateContainerRequest",
        c.write_to_bytes().expect("encode"),
    ));
    let mut sb = agent::CreateSandboxRequest::new();
    sb.hostname = "h".into();
    sb.storages.push(st);
    sb.sandbox_pidns = true;
    s.push(("CreateSandboxRequest", sb.write_to_bytes().expect("encode")));
    let mut e = agent::ExecProcessRequest::new();
    e.container_id = "c1".into();
    e.exec_id = "e1".into();
    e.process_json = br#"{"args":["true"],"cwd":"/"}"#.to_vec();
    s.push(("ExecProcessRequest", e.write_to_bytes().expect("encode")));
    let mut w = agent::WriteStreamRequest::new();
    w.data = vec![1, 2, 3];
    s.push(("WriteStreamRequest", w.write_to_bytes().expect("encode")));
    let mut r = agent::ReadStreamRequest::new();
    r.len = 4096;
    s.push(("ReadStreamRequest", r.write_to_bytes().expect("encode")));
    let mut sig = agent::SignalProcessRequest::new();
    sig.signal = 9;
    sig.all = true;
    s.push((
        "SignalProcessRequest",
        sig.write_to_bytes().expect("encode"),
    ));
    let mut t = agent::TtyWinResizeRequest::new();
    t.row = 40;
    t.column = 100;
    s.push(("TtyWinResizeRequest", t.write_to_bytes().expect("encode")));
    let mut g = agent::GuestDetailsRequest::new();
    g.shared_fs_probe = "probe".into();
    s.push(("GuestDetailsRequest", g.write_to_bytes().expect("encode")));
    let mut h = health::CheckRequest::new();
    h.service = "x".into();
    s.push(("CheckRequest", h.write_to_bytes().expect("encode")));
    s
}

fn decode(kind: &str, b: &[u8]) {
    // Results are ignored on purpose: only panics and hangs are failures.
    let _ = match kind {
        "CreateContainerRequest" => agent::CreateContainerRequest::parse_from_bytes(b).map(|_| ()),
        "CreateSandboxRequest" => agent::CreateSandboxRequest::parse_from_bytes(b).map(|_| ()),
        "ExecProcessRequest" => agent::ExecProcessRequest::parse_from_bytes(b).map(|_| ()),
        "WriteStreamRequest" => agent::WriteStreamRequest::parse_from_bytes(b).map(|_| ()),
        "ReadStreamRequest" => agent::ReadStreamRequest::parse_from_bytes(b).map(|_| ()),
        "SignalProcessRequest" => agent::SignalProcessRequest::parse_from_bytes(b).map(|_| ()),
        "TtyWinResizeRequest" => agent::TtyWinResizeRequest::parse_from_bytes(b).map(|_| ()),
        "GuestDetailsRequest" => agent::GuestDetailsRequest::parse_from_bytes(b).map(|_| ()),
        "CheckRequest" => health::CheckRequest::parse_from_bytes(b).map(|_| ()),
        other => panic!("no decoder for {other}"),
    };
}

#[test]
fn request_decoding_survives_mutations_and_noise() {
    let budget = Duration::from_secs(3);
    let began = Instant::now();
    let seeds = seeds();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut runs = 0u64;
    while began.elapsed() < budget && runs < 2_000_000 {
        for (kind, seed) in &seeds {
            let input = if rng.below(4) == 0 {
                (0..rng.below(256)).map(|_| rng.next() as u8).collect()
            } else {
                mutate(&mut rng, seed)
            };
            decode(kind, &input);
            runs += 1;
        }
    }
    // The bound is on time, but the run must have done real work.
    assert!(runs > 10_000, "only {runs} inputs decoded in {budget:?}");
    println!("decoded {runs} inputs in {:?}", began.elapsed());
}

#[test]
fn round_trip_of_every_seed() {
    for (kind, seed) in seeds() {
        decode(kind, &seed);
        assert!(!seed.is_empty(), "{kind} encodes to something");
    }
}
