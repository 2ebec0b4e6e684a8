//! Subscriber: one upstream host's `subscribeRepos` websocket, read by one actix actor.
//!
//! What it owns: the socket (awc, `ws://` or `wss://` over rustls on ring), the per-socket
//! seq check, the host's rate limiter and its connection's cursor tracker
//! (`HostCursor`). What it never does: decode a body (only `frame::peek_event`: header,
//! seq, DID), validate, write to Postgres, retry (its HostSupervisor decides what follows an
//! exit), or drop an event because the host is fast: over the rate limit, or while the
//! owning shard's queue is full, it stops reading its socket (`ctx.wait`), so the upstream
//! and TCP buffer the excess (delay, never drop).
//!
//! Lessons prevented: 1 (it dials only once its supervisor handed it a handshake permit),
//! 3 (an upgrade whose `Server` header names `atproto-relay` ends the connection with
//! `RelayDetected` before any frame is read), 4 (the `FutureCursor` error frame is reported
//! as such, so the supervisor resets the cursor), 9 (an actor on an arbiter, no thread),
//! 10 (every frame holds a byte-budget permit until it is durable or dropped; a 5 MB cap on
//! reassembled messages), 11 (frames move as owned `Bytes`; the socket is closed only here).
//!
//! The exit is reported by the exit link it owns: whatever ends the actor (a close, an
//! error, a kill, a panic), dropping the link sends the notice.
use std::time::Duration;

use tokio::time::Instant;

// ------------------------------------------------------------------------------------------
// Pure pieces (table-tested below, no actors)

/// The per-socket seq rule (PROTOCOL.md §1, §7): an upstream seq must strictly increase on
/// one connection; a frame whose seq does not is dropped (counted), never routed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SeqCheck {
    last: Option<u64>,
}

impl SeqCheck {
    /// True (and remembered) when `seq` is above every seq accepted on this socket.
    pub fn accept(&mut self, seq: u64) -> bool {
        if self.last.is_some_and(|last| seq <= last) {
            return false;
        }
        self.last = Some(seq);
        true
    }

    pub fn last(&self) -> Option<u64> {
        self.last
    }
}

/// True when a websocket upgrade's `Server` header says the upstream is a relay (lesson 3).
pub fn is_relay_server(server_header: &str) -> bool {
    server_header.to_ascii_lowercase().contains("atproto-relay")
}

/// A host's event rate limits per second, hour and day (PROTOCOL.md §7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostLimits {
    pub per_second: u64,
    pub per_hour: u64,
    pub per_day: u64,
}

impl HostLimits {
    /// indigo's formulas: 50/s + limit/1000, 2,500/h + limit, 20,000/day + 10·limit for a
    /// normal host; 5,000/s, 50M/h and 500M/day for a trusted one.
    pub fn for_host(account_limit: i64, trusted: bool) -> HostLimits {
        if trusted {
            return HostLimits {
                per_second: 5_000,
                per_hour: 50_000_000,
                per_day: 500_000_000,
            };
        }
        let limit = u64::try_from(account_limit).unwrap_or(0);
        HostLimits {
            per_second: 50 + limit / 1_000,
            per_hour: 2_500u64.saturating_add(limit),
            per_day: 20_000u64.saturating_add(limit.saturating_mul(10)),
        }
    }
}

/// True when `hostname` ends with one of the trusted domain suffixes (e.g.
/// `.host.bsky.network`): such hosts get the trusted limits.
pub fn is_trusted(hostname: &str, suffixes: &[String]) -> bool {
    suffixes
        .iter()
        .any(|s| !s.is_empty() && hostname.ends_with(s.as_str()))
}

/// One token bucket: `capacity` tokens refilled evenly over `period`, so at most
/// `capacity` events in any window of `period` plus the steady rate.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    capacity: f64,
    period: Duration,
    tokens: f64,
}

impl Bucket {
    fn new(capacity: u64, period: Duration) -> Bucket {
        let capacity = capacity.max(1) as f64;
        Bucket {
            capacity,
            period,
            tokens: capacity,
        }
    }

    fn refill(&mut self, elapsed: Duration) {
        let per_sec = self.capacity / self.period.as_secs_f64();
        self.tokens = (self.tokens + elapsed.as_secs_f64() * per_sec).min(self.capacity);
    }

    /// How long until one token is there (zero when it is).
    fn wait(&self) -> Duration {
        if self.tokens >= 1.0 {
            return Duration::ZERO;
        }
        let per_sec = self.capacity / self.period.as_secs_f64();
        Duration::from_secs_f64((1.0 - self.tokens) / per_sec)
    }
}

/// The rate limiter of one host connection: three token buckets (second, hour, day). It
/// never drops: [`RateLimiter::admit`] either takes one token from each bucket or says how
/// long to wait, and the Subscriber then stops reading its socket until then (PROTOCOL.md
/// §7: over the limit, events are delayed).
#[derive(Clone, Debug)]
pub struct RateLimiter {
    limits: HostLimits,
    buckets: [Bucket; 3],
    at: Instant,
}

impl RateLimiter {
    pub fn new(limits: HostLimits, now: Instant) -> RateLimiter {
        RateLimiter {
            limits,
            buckets: Self::buckets(limits),
            at: now,
        }
    }

    fn buckets(l: HostLimits) -> [Bucket; 3] {
        [
            Bucket::new(l.per_second, Duration::from_secs(1)),
            Bucket::new(l.per_hour, Duration::from_secs(3_600)),
            Bucket::new(l.per_day, Duration::from_secs(86_400)),
        ]
    }

    pub fn limits(&self) -> HostLimits {
        self.limits
    }

    /// New limits (an operator changed the account limit): full buckets at the new sizes,
    /// minus what was already spent.
    pub fn set_limits(&mut self, limits: HostLimits, now: Instant) {
        if limits == self.limits {
            return;
        }
        self.advance(now);
        let mut fresh = Self::buckets(limits);
        for (new, old) in fresh.iter_mut().zip(&self.buckets) {
            new.tokens = (new.capacity - (old.capacity - old.tokens)).max(0.0);
        }
        self.buckets = fresh;
        self.limits = limits;
    }

    fn advance(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at);
        for b in &mut self.buckets {
            b.refill(elapsed);
        }
        self.at = self.at.max(now);
    }

    /// Takes one event's tokens at `now`. `Ok` means go now; `Err(t)` means the tokens are
    /// reserved and the event may go at `t` (later events queue behind it): never a drop.
    pub fn admit(&mut self, now: Instant) -> Result<(), Instant> {
        self.advance(now);
        let wait = self
            .buckets
            .iter()
            .map(Bucket::wait)
            .max()
            .unwrap_or_default();
        for b in &mut self.buckets {
            b.tokens -= 1.0;
        }
        if wait > Duration::ZERO {
            return Err(now + wait);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seqs_must_strictly_increase_on_a_socket() {
        // (seq, accepted)
        let table = [
            (5, true),
            (5, false),
            (4, false),
            (6, true),
            (100, true),
            (1, false),
            (101, true),
        ];
        let mut check = SeqCheck::default();
        for (seq, want) in table {
            assert_eq!(check.accept(seq), want, "seq {seq}");
        }
        assert_eq!(check.last(), Some(101));
    }

    #[test]
    fn relay_server_headers() {
        let table = [
            ("rookery-sim (atproto-relay)", true),
            ("atproto-relay/0.1", true),
            ("Indigo ATPROTO-RELAY", true),
            ("nginx", false),
            ("atproto-pds", false),
            ("", false),
        ];
        for (header, want) in table {
            assert_eq!(is_relay_server(header), want, "{header:?}");
        }
    }

    #[test]
    fn limits_follow_the_account_limit_and_trust() {
        let table = [
            (100, false, (50, 2_600, 21_000)),
            (0, false, (50, 2_500, 20_000)),
            (10_000, false, (60, 12_500, 120_000)),
            (-5, false, (50, 2_500, 20_000)),
            (100, true, (5_000, 50_000_000, 500_000_000)),
        ];
        for (limit, trusted, (s, h, d)) in table {
            let got = HostLimits::for_host(limit, trusted);
            assert_eq!(
                (got.per_second, got.per_hour, got.per_day),
                (s, h, d),
                "{limit} {trusted}"
            );
        }
        let suffixes = vec![".host.bsky.network".to_string()];
        assert!(is_trusted("morel.us-east.host.bsky.network", &suffixes));
        assert!(!is_trusted("evil-host.bsky.network.example", &suffixes));
        assert!(!is_trusted("x.example", &[String::new()]));
    }

    #[test]
    fn the_limiter_delays_never_drops() {
        let t0 = Instant::now();
        let limits = HostLimits {
            per_second: 10,
            per_hour: 25,
            per_day: 1_000,
        };
        let mut l = RateLimiter::new(limits, t0);
        for _ in 0..10 {
            assert_eq!(l.admit(t0), Ok(()));
        }
        // The 11th event in the same instant waits ~0.1 s for a per-second token, the
        // 12th ~0.2 s: reserved, queued, never dropped.
        let until = l.admit(t0).expect_err("over the per-second limit");
        let wait = until - t0;
        assert!(
            wait > Duration::from_millis(90) && wait <= Duration::from_millis(101),
            "{wait:?}"
        );
        let second = l.admit(t0).expect_err("queued behind");
        assert!(
            second - t0 > Duration::from_millis(190),
            "{:?}",
            second - t0
        );
        // The hour bucket (25) runs out after 25 events however they are spread.
        let mut now = t0;
        for _ in 12..25 {
            now += Duration::from_secs(1);
            assert_eq!(l.admit(now), Ok(()));
        }
        now += Duration::from_secs(1);
        let until = l.admit(now).expect_err("hourly limit");
        // One hour-token comes every 3600/25 = 144 s.
        assert!(until - now > Duration::from_secs(100), "{:?}", until - now);
        assert!(until - now <= Duration::from_secs(144), "{:?}", until - now);
    }

    #[test]
    fn raising_limits_keeps_what_was_spent() {
        let t0 = Instant::now();
        let small = HostLimits {
            per_second: 2,
            per_hour: 100,
            per_day: 100,
        };
        let mut l = RateLimiter::new(small, t0);
        assert_eq!(l.admit(t0), Ok(()));
        assert_eq!(l.admit(t0), Ok(()));
        l.set_limits(
            HostLimits {
                per_second: 5,
                ..small
            },
            t0,
        );
        for _ in 0..3 {
            assert_eq!(l.admit(t0), Ok(()));
        }
        assert!(l.admit(t0).is_err(), "2 spent + 3 = the new 5");
        assert_eq!(l.limits().per_second, 5);
    }
}
