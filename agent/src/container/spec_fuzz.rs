//! Bounded randomized fuzzing of the JSON half of request decoding: the OCI
//! spec of CreateContainer, the process of ExecProcess, and the spec
//! rewrite that follows. Mutated valid documents and structure-aware
//! garbage may be refused, but never panic the agent.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::spec::{PodContext, parse_process, parse_spec, rewrite};

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

const SPEC: &str = r#"{"ociVersion":"1.0.2","process":{"terminal":false,"user":{"uid":0,"gid":0,"additionalGids":[1]},
"args":["/bin/sh","-c","true"],"env":["PATH=/bin"],"cwd":"/","capabilities":{"bounding":["CAP_KILL"]},
"rlimits":[{"type":"RLIMIT_NOFILE","hard":1024,"soft":1024}],"noNewPrivileges":true,"oomScoreAdj":5},
"root":{"path":"/run/kata-containers/shared/containers/c/rootfs","readonly":true},"hostname":"h",
"mounts":[{"destination":"/proc","type":"proc","source":"proc"},{"destination":"/data","type":"bind","source":"/run/x","options":["rbind","ro"]}],
"linux":{"namespaces":[{"type":"pid"},{"type":"mount"},{"type":"network","path":"/proc/1/ns/net"}],
"resources":{"memory":{"limit":1048576},"pids":{"limit":10}},"sysctl":{"kernel.shmmax":"1"},
"maskedPaths":["/proc/kcore"],"readonlyPaths":["/proc/sys"],"cgroupsPath":"/a/b",
"devices":[{"type":"c","path":"/dev/x","major":1,"minor":3}],
"seccomp":{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir"],"action":"SCMP_ACT_ERRNO"}]}}}"#;

/// Tokens that make mutations structure-aware: JSON punctuation, hostile
/// strings and numbers at type boundaries.
const TOKENS: [&str; 16] = [
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
    "18446744073709551616",
    "1e309",
    "\"../../..\"",
    "\"/proc\"",
    "\"\\u0000\"",
    "\"\\ud800\"",
];

fn mutate(rng: &mut Rng, doc: &[u8]) -> Vec<u8> {
    let mut b = doc.to_vec();
    for _ in 0..=rng.below(3) {
        let i = rng.below(b.len() + 1);
        match rng.below(4) {
            0 => {
                let t = TOKENS[rng.below(TOKENS.len())];
                b.splice(i..i, t.bytes());
            }
            1 if i < b.len() => {
                let end = (i + rng.below(24)).min(b.len());
                b.drain(i..end);
            }
            2 if i < b.len() => b[i] = rng.next() as u8,
            _ => b.truncate(i),
        }
    }
    b
}

#[test]
fn spec_and_process_decoding_survive_mutations() {
    let budget = Duration::from_secs(3);
    let began = Instant::now();
    let roots = [PathBuf::from("/nonexistent-share")];
    let mut rng = Rng(0x5eed_1234_abcd_ef01);
    let (mut runs, mut parsed) = (0u64, 0u64);
    while began.elapsed() < budget && runs < 200_000 {
        let input = mutate(&mut rng, SPEC.as_bytes());
        runs += 1;
        if let Ok(mut spec) = parse_spec(&input) {
            parsed += 1;
            let ctx = PodContext {
                sandbox_id: "s",
                container_id: "c",
                allowed_roots: &roots,
                joins: Vec::new(),
            };
            // Refusal is fine; the rewrite must not panic on odd specs.
            let _ = rewrite(&mut spec, &ctx);
        }
        if let Some(p) = serde_json::from_slice::<serde_json::Value>(&input)
            .ok()
            .and_then(|v| v.get("process").cloned())
        {
            let bytes = serde_json::to_vec(&p).expect("re-encode a JSON value");
            let _ = parse_process(&mutate(&mut rng, &bytes));
        }
    }
    assert!(runs > 1_000, "only {runs} inputs in {budget:?}");
    assert!(
        parsed > 0,
        "no mutated spec parsed: the seed or mutations are off"
    );
    println!(
        "{runs} inputs, {parsed} parsed as specs, in {:?}",
        began.elapsed()
    );
}
