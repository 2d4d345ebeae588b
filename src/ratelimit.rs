//! Rate limits for what the guest can make the shim do: forward an event,
//! write a log line. A token bucket, driven by the caller's clock so the
//! rules are tested without sleeping.

use std::time::{Duration, Instant};

/// A token bucket: `burst` tokens, one more every `period`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    burst: u32,
    period: Duration,
    tokens: u32,
    /// When the last token was credited.
    refilled: Instant,
}

impl TokenBucket {
    pub fn new(burst: u32, period: Duration, now: Instant) -> TokenBucket {
        TokenBucket {
            burst: burst.max(1),
            period: period.max(Duration::from_millis(1)),
            tokens: burst.max(1),
            refilled: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.refilled);
        let earned = elapsed.as_nanos() / self.period.as_nanos();
        if earned == 0 {
            return;
        }
        let earned = u32::try_from(earned).unwrap_or(u32::MAX);
        self.tokens = self.tokens.saturating_add(earned).min(self.burst);
        self.refilled = if self.tokens == self.burst {
            now
        } else {
            self.refilled + self.period * earned
        };
    }

    /// Takes a token if there is one.
    pub fn try_take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }

    /// How long until a token is there (zero if one is).
    pub fn wait(&mut self, now: Instant) -> Duration {
        self.refill(now);
        if self.tokens > 0 {
            Duration::ZERO
        } else {
            (self.refilled + self.period).saturating_duration_since(now)
        }
    }
}

/// A log line allowed once per period, counting what it held back: the
/// first occurrence is logged, then at most one per period, each with the
/// number suppressed since the last.
#[derive(Debug, Clone)]
pub struct LogGate {
    period: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl LogGate {
    pub fn new(period: Duration) -> LogGate {
        LogGate {
            period,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(suppressed since the last line)` when a line may be written.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(t) if now.saturating_duration_since(t) < self.period => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

/// `text` as it may appear in a log line when a guest chose it: at most
/// `max` characters, with control characters escaped.
pub fn quote_guest(text: &str, max: usize) -> String {
    let mut out: String = text
        .chars()
        .take(max)
        .flat_map(char::escape_debug)
        .collect();
    if text.chars().nth(max).is_some() {
        out.push_str("...");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_a_burst_then_one_per_period() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut b = TokenBucket::new(3, ms(100), t0);
        assert!((0..3).all(|_| b.try_take(t0)));
        assert!(!b.try_take(t0));
        assert_eq!(b.wait(t0), ms(100));
        assert_eq!(b.wait(t0 + ms(40)), ms(60));
        assert!(!b.try_take(t0 + ms(99)));
        assert!(b.try_take(t0 + ms(100)));
        assert!(!b.try_take(t0 + ms(150)));
        assert!(b.try_take(t0 + ms(200)));
        // A long quiet spell refills the burst, never more.
        let later = t0 + Duration::from_secs(60);
        assert!((0..3).all(|_| b.try_take(later)));
        assert!(!b.try_take(later));
        // A flood at any rate gets at most burst + elapsed/period tokens.
        let mut f = TokenBucket::new(10, ms(250), t0);
        let taken = (0..1_000_000u64)
            .filter(|i| f.try_take(t0 + Duration::from_micros(*i * 10)))
            .count();
        // 0.25 s, 0.5 s, ... 9.75 s: 39 tokens after the burst.
        assert_eq!(taken, 10 + 39, "10 s of flood");
    }

    #[test]
    fn log_gate_counts_what_it_suppressed() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut g = LogGate::new(s(10));
        assert_eq!(g.allow(t0), Some(0));
        assert_eq!(g.allow(t0 + s(1)), None);
        assert_eq!(g.allow(t0 + s(9)), None);
        assert_eq!(g.allow(t0 + s(10)), Some(2));
        assert_eq!(g.allow(t0 + s(30)), Some(0));
    }

    #[test]
    fn guest_text_is_bounded_and_escaped() {
        assert_eq!(quote_guest("abc", 8), "abc");
        assert_eq!(quote_guest("a\nb\u{1b}[2J", 64), "a\\nb\\u{1b}[2J");
        let long = "x".repeat(100_000);
        assert_eq!(quote_guest(&long, 64), format!("{}...", "x".repeat(64)));
    }
}
