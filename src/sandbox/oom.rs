//! What the shim does with the guest's OOM reports, decided before any of
//! it reaches containerd, CRI-O or the log. The guest chooses the ids and
//! the rate: an id the sandbox does not know is dropped with at most one
//! warning per [`UNKNOWN_LOG_PERIOD`], a container's repeated reports within
//! [`DEDUPE_WINDOW`] are one OOM, and the forwarder asks the guest for the
//! next report only as fast as [`BURST`] and [`PERIOD`] allow, so a flood
//! waits in the guest instead of in the shim.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::ratelimit::{LogGate, TokenBucket};

/// Reports taken at once, then one per [`PERIOD`].
pub const BURST: u32 = 10;
pub const PERIOD: Duration = Duration::from_millis(500);
/// Reports of one container within this window are the same OOM.
pub const DEDUPE_WINDOW: Duration = Duration::from_secs(1);
/// At most one warning about unknown ids per period.
pub const UNKNOWN_LOG_PERIOD: Duration = Duration::from_secs(10);
/// Characters of an unknown id quoted in the warning.
pub const QUOTED_ID_MAX: usize = 64;

/// What to do with one report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A container of the sandbox: publish the event (and CRI-O's file).
    Forward,
    /// The same container reported within the window: already forwarded.
    Duplicate,
    /// Not a container of the sandbox; `Some(n)`: warn now, `n` earlier
    /// ones were dropped silently.
    Unknown(Option<u64>),
}

/// The rules above, with the caller's clock.
#[derive(Debug)]
pub struct OomFilter {
    pace: TokenBucket,
    /// Last forward per known container: bounded by the containers the
    /// sandbox has had, never by what the guest sends.
    last: HashMap<String, Instant>,
    unknown: LogGate,
}

impl OomFilter {
    pub fn new(now: Instant) -> OomFilter {
        OomFilter {
            pace: TokenBucket::new(BURST, PERIOD, now),
            last: HashMap::new(),
            unknown: LogGate::new(UNKNOWN_LOG_PERIOD),
        }
    }

    /// How long to wait before asking the guest for its next report.
    pub fn pause(&mut self, now: Instant) -> Duration {
        self.pace.wait(now)
    }

    /// Classifies one report; `known` says whether the sandbox has a
    /// container of that id.
    pub fn admit(&mut self, id: &str, known: bool, now: Instant) -> Verdict {
        let _ = self.pace.try_take(now);
        if !known {
            return Verdict::Unknown(self.unknown.allow(now));
        }
        match self.last.get(id) {
            Some(t) if now.saturating_duration_since(*t) < DEDUPE_WINDOW => Verdict::Duplicate,
            _ => {
                self.last.insert(id.to_string(), now);
                Verdict::Forward
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 14: the guest could flood OOM events, with no rate limit and
    /// no dedupe, and unknown ids logged verbatim in a loop.
    #[test]
    fn an_oom_flood_is_paced_deduplicated_and_unknown_ids_are_quiet() {
        let t0 = Instant::now();
        let mut f = OomFilter::new(t0);
        let (mut now, mut asked, mut forwarded, mut warned) = (t0, 0u32, 0u32, 0u32);
        // Ten seconds of a guest answering every GetOOMEvent at once with
        // a real container (every third) or an id it made up.
        while now < t0 + Duration::from_secs(10) {
            now += f.pause(now);
            if now >= t0 + Duration::from_secs(10) {
                break;
            }
            asked += 1;
            let known = asked % 3 == 0;
            let id = if known {
                "c1".to_string()
            } else {
                format!("x{asked}")
            };
            match f.admit(&id, known, now) {
                Verdict::Forward => forwarded += 1,
                Verdict::Duplicate => {}
                Verdict::Unknown(Some(_)) => warned += 1,
                Verdict::Unknown(None) => {}
            }
        }
        println!("10 s of flood: {asked} reports taken, {forwarded} forwarded, {warned} warnings");
        // The pace: a burst, then two a second.
        assert_eq!(asked, BURST + 20 - 1, "reports taken");
        // One OOM event per container per second at most.
        assert!(forwarded <= 10, "{forwarded} events for one container");
        assert!(forwarded >= 5, "a real OOM still gets through: {forwarded}");
        // One warning per ten seconds.
        assert_eq!(warned, 1);
    }

    #[test]
    fn repeated_ooms_of_a_container_are_forwarded_once_per_window() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut f = OomFilter::new(t0);
        assert_eq!(f.admit("a", true, t0), Verdict::Forward);
        assert_eq!(f.admit("a", true, t0 + ms(10)), Verdict::Duplicate);
        assert_eq!(f.admit("b", true, t0 + ms(20)), Verdict::Forward);
        assert_eq!(f.admit("a", true, t0 + ms(1000)), Verdict::Forward);
        assert_eq!(f.admit("a", true, t0 + ms(1001)), Verdict::Duplicate);
        assert_eq!(f.admit("zz", false, t0), Verdict::Unknown(Some(0)));
        assert_eq!(f.admit("zz", false, t0 + ms(5)), Verdict::Unknown(None));
        assert_eq!(
            f.admit("zz", false, t0 + UNKNOWN_LOG_PERIOD),
            Verdict::Unknown(Some(1))
        );
    }
}
