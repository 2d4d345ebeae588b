//! Bounded, randomized, seeded fuzzing of every host-side parser of guest
//! or client input, in the pattern of the agent's `decode_fuzz` and
//! `spec_fuzz`: valid seeds are mutated (bit flips, truncation, insertion,
//! structure-aware tokens) or replaced by noise, each parser runs a fixed
//! number of cases under a wall-clock cap, and every case checks the
//! parser's invariants on top of "no panic, no hang".
//!
//! Every case has its own xorshift64* state derived from the test's fixed
//! seed and the case's index, so a failure reproduces on its own: the panic
//! guard prints the test, the index and the case seed, and
//! `KATA_FUZZ_CASE=<index>` reruns only that case.
//!
//! Areas: agent replies (`agent_replies`), console lines (`console`), QMP
//! (`qmp`), the hybrid-vsock handshake (`vsock`), the OCI spec (`oci`),
//! annotations and their overrides (`annotations`), Create options
//! (`options`), pod network discovery (`network`) and the configuration
//! (`config`).

mod agent_replies;
mod annotations;
mod config;
mod console;
mod network;
mod oci;
mod options;
mod qmp;
mod vsock;

use std::time::{Duration, Instant};

/// xorshift64*: deterministic, so a failure reproduces from its seed.
struct Rng(u64);

impl Rng {
    /// A generator whose state is never zero (xorshift's fixed point).
    fn new(seed: u64) -> Rng {
        Rng(splitmix64(seed) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n` (0 for `n == 0`).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    /// True once in `n` draws.
    fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    fn bytes(&mut self, max: usize) -> Vec<u8> {
        (0..self.below(max + 1))
            .map(|_| self.next() as u8)
            .collect()
    }

    /// A number biased to type boundaries.
    fn edgy_u64(&mut self) -> u64 {
        match self.below(6) {
            0 => 0,
            1 => u64::MAX - self.below(3) as u64,
            2 => u64::from(u32::MAX) + self.below(3) as u64 - 1,
            3 => i64::MAX as u64 + self.below(3) as u64 - 1,
            4 => self.below(300) as u64,
            _ => self.next(),
        }
    }
}

/// splitmix64: spreads nearby seeds (seed ^ index) over the state space.
fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Byte-level mutation of a valid encoding: bit flips, truncation,
/// insertion, boundary bytes, random tails and duplicated runs.
fn mutate_bytes(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut b = seed.to_vec();
    for _ in 0..=rng.below(4) {
        match rng.below(6) {
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
                b[i] = *rng.pick(&[0x00, 0x0a, 0x7f, 0x80, 0xff]);
            }
            4 if !b.is_empty() => {
                // Duplicate a run: repeated fields, stuttered tokens.
                let i = rng.below(b.len());
                let end = (i + 1 + rng.below(16)).min(b.len());
                let run = b[i..end].to_vec();
                b.splice(i..i, run);
            }
            _ => {
                let tail = rng.bytes(16);
                b.extend(tail);
            }
        }
    }
    b
}

/// Text-level mutation: splices in `tokens` (punctuation, hostile values),
/// deletes runs, replaces bytes, truncates.
fn mutate_text(rng: &mut Rng, doc: &[u8], tokens: &[&str]) -> Vec<u8> {
    let mut b = doc.to_vec();
    for _ in 0..=rng.below(3) {
        let i = rng.below(b.len() + 1);
        match rng.below(5) {
            0 | 1 => {
                let t = rng.pick(tokens);
                b.splice(i..i, t.bytes());
            }
            2 if i < b.len() => {
                let end = (i + rng.below(24)).min(b.len());
                b.drain(i..end);
            }
            3 if i < b.len() => b[i] = rng.next() as u8,
            _ => b.truncate(i),
        }
    }
    b
}

/// JSON tokens that make mutations structure-aware: punctuation, type
/// confusion, numbers at type boundaries and hostile strings.
const JSON_TOKENS: [&str; 22] = [
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    "\"",
    "null",
    "true",
    "-1",
    "0",
    "18446744073709551616",
    "-9223372036854775809",
    "1e309",
    "1.5",
    "\"../../..\"",
    "\"/proc\"",
    "\"\\u0000\"",
    "\"\\ud800\"",
    "\"bind\"",
    "[\"rbind\",\"ro\"]",
    "{\"type\":\"network\"}",
];

/// Cases run when `KATA_FUZZ_CASE` is unset: 0..`iterations`; when set,
/// only that case.
fn case_range(iterations: u64) -> std::ops::Range<u64> {
    match std::env::var("KATA_FUZZ_CASE")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        Some(i) => i..i + 1,
        None => 0..iterations,
    }
}

/// Prints which case was running when a parser or an invariant panicked.
struct CaseGuard<'a> {
    name: &'a str,
    index: u64,
    seed: u64,
}

impl Drop for CaseGuard<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "fuzz {}: CRASH in case {} (case seed {:#018x}); rerun it alone with \
                 KATA_FUZZ_CASE={}",
                self.name, self.index, self.seed, self.index
            );
        }
    }
}

/// Fewest cases a run must complete before its wall-clock cap, so a slow
/// machine cannot make a test pass without work.
const MIN_CASES: u64 = 200;

/// Runs `case` for up to `iterations` cases or until `cap` has passed,
/// each with its own [`Rng`] from `seed` and its index; prints and returns
/// the number of cases run. A crash is a panic, which fails the test, so a
/// finished run reports 0 crashes.
fn run(
    name: &str,
    seed: u64,
    iterations: u64,
    cap: Duration,
    mut case: impl FnMut(&mut Rng),
) -> u64 {
    let began = Instant::now();
    let mut done = 0u64;
    let range = case_range(iterations);
    let wanted = range.end - range.start;
    for index in range {
        if began.elapsed() >= cap {
            break;
        }
        let case_seed = seed ^ index.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let _guard = CaseGuard {
            name,
            index,
            seed: case_seed,
        };
        case(&mut Rng::new(case_seed));
        done += 1;
    }
    assert!(
        done >= wanted.min(MIN_CASES),
        "fuzz {name}: only {done} cases within {cap:?}"
    );
    println!(
        "fuzz {name}: {done} iterations, 0 crashes ({:.2?})",
        began.elapsed()
    );
    done
}

/// How often each kind of outcome occurred: a generator that never
/// reaches an outcome tests nothing about it, so a full run requires each.
#[derive(Debug, Default)]
struct Tally(std::collections::BTreeMap<&'static str, u64>);

impl Tally {
    fn add(&mut self, outcome: &'static str) {
        *self.0.entry(outcome).or_default() += 1;
    }

    /// Prints the tally and, unless one case is replayed, requires every
    /// outcome of `wanted`.
    fn require(&self, name: &str, wanted: &[&str]) {
        println!("fuzz {name}: outcomes {:?}", self.0);
        if std::env::var_os("KATA_FUZZ_CASE").is_some() {
            return;
        }
        for w in wanted {
            assert!(
                self.0.get(w).is_some_and(|n| *n > 0),
                "fuzz {name}: no case reached `{w}` ({:?})",
                self.0
            );
        }
    }
}

/// A short, printable excerpt of an input for assertion messages.
fn show(input: &[u8]) -> String {
    let cut = &input[..input.len().min(160)];
    let more = if input.len() > cut.len() {
        format!("... ({} bytes)", input.len())
    } else {
        String::new()
    };
    format!("{:?}{more}", String::from_utf8_lossy(cut))
}

/// A current-thread runtime for the async parsers.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime")
}

#[test]
fn rng_and_mutators_are_deterministic() {
    let mut a = Rng::new(7);
    let mut b = Rng::new(7);
    let seed = b"{\"a\":[1,2,3]}";
    for _ in 0..100 {
        assert_eq!(mutate_bytes(&mut a, seed), mutate_bytes(&mut b, seed));
        assert_eq!(
            mutate_text(&mut a, seed, &JSON_TOKENS),
            mutate_text(&mut b, seed, &JSON_TOKENS)
        );
    }
    assert_ne!(Rng::new(0).next(), 0, "a zero seed still moves");
}
