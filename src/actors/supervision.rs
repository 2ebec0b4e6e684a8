//! The restart policy of upstream hosts, as data: pure functions, table-tested, no actors.
//!
//! The HostSupervisor (next) learns of every Subscriber exit and applies [`decide`]; the
//! startup ramp spaces first dials with [`startup_delay`]. Keeping the policy pure is what
//! lets it be tested exhaustively: the failed attempt in LESSONS.md 2 (dormant state,
//! reconciliation loop, startup jitter) could only be tested in production.
//!
//! The rules (ARCHITECTURE.md "HostSupervisor", PROTOCOL.md §10):
//! - exponential backoff with jitter from 1 s to a 30 min cap ([`backoff`]);
//! - after [`OFFLINE_AFTER`] consecutive failures the host is reported `offline`, and is
//!   still retried at the cap: a non-banned host is never forgotten (lesson 2);
//! - a connection that delivered events resets the failure count and sets `active`;
//! - a host that accepts and then drops with no events counts as a failure, so a flapping
//!   host can never cause a tight redial loop (indigo redials at once); but a connection
//!   that stayed up [`STABLE_CONNECTION`] without an event is a quiet host's, not a
//!   failure: the count resets and the redial follows the shortest backoff (otherwise a
//!   quiet host whose connections end now and then backs off towards 30 minutes, and what
//!   it publishes meanwhile waits that long);
//! - upstream `FutureCursor` → `idle`, cursor reset, reconnect without a cursor after a
//!   backoff (lesson 4: no human resets cursors);
//! - a relay detected (`Server` header contains `atproto-relay`) → `banned`, unless the
//!   operator allowed it (lesson 3);
//! - an admin ban → stop, never restart; shutdown → nothing.
//!
//! Jitter is deterministic: a hash of the host's name and the attempt number, so tests are
//! exact and a restart of the relay does not re-synchronise every host's retry.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// Shortest delay before a redial.
pub const BACKOFF_MIN: Duration = Duration::from_secs(1);
/// Longest delay before a redial; failing hosts are retried at this pace forever.
pub const BACKOFF_MAX: Duration = Duration::from_secs(30 * 60);
/// Consecutive failures after which a host is reported `offline`.
pub const OFFLINE_AFTER: u32 = 15;
/// A connection that lasted this long without an event ended for a reason other than the
/// host accepting and dropping it at once: it resets the failure count.
pub const STABLE_CONNECTION: Duration = Duration::from_secs(10);
/// Default spread of first dials at startup.
pub const DEFAULT_STARTUP_SPREAD: Duration = Duration::from_secs(30);

/// A host's status, exactly the values of the `hosts.status` CHECK constraint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HostStatus {
    Active,
    Idle,
    Offline,
    Throttled,
    Banned,
}

impl HostStatus {
    pub const ALL: [HostStatus; 5] = [
        HostStatus::Active,
        HostStatus::Idle,
        HostStatus::Offline,
        HostStatus::Throttled,
        HostStatus::Banned,
    ];

    /// The database (and API) spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            HostStatus::Active => "active",
            HostStatus::Idle => "idle",
            HostStatus::Offline => "offline",
            HostStatus::Throttled => "throttled",
            HostStatus::Banned => "banned",
        }
    }
}

impl fmt::Display for HostStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown host status string.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown host status {0:?}")]
pub struct UnknownHostStatus(pub String);

impl FromStr for HostStatus {
    type Err = UnknownHostStatus;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        HostStatus::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| UnknownHostStatus(s.to_string()))
    }
}

/// Why a Subscriber stopped. Sent to the HostSupervisor by the Subscriber's exit notice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubscriberExit {
    /// DNS, TCP, TLS or the websocket upgrade failed.
    DialFailed,
    /// The connection was accepted and later ended (closed, error frame, timeout).
    Dropped { events_delivered: u64 },
    /// The connection stayed up at least [`STABLE_CONNECTION`] without an event, then ended.
    DroppedIdle,
    /// The upstream answered our cursor with the `FutureCursor` error frame.
    FutureCursor,
    /// The upstream identifies as a relay (`Server` header contains `atproto-relay`).
    RelayDetected,
    /// An operator banned the host.
    AdminBan,
    /// The relay is shutting down.
    Shutdown,
}

impl SubscriberExit {
    /// A bounded metric label (`restarts by reason`).
    pub fn reason(self) -> &'static str {
        match self {
            SubscriberExit::DialFailed => "dial_failed",
            SubscriberExit::Dropped {
                events_delivered: 0,
            } => "dropped_without_events",
            SubscriberExit::Dropped { .. } => "dropped",
            SubscriberExit::DroppedIdle => "dropped_idle",
            SubscriberExit::FutureCursor => "future_cursor",
            SubscriberExit::RelayDetected => "relay_detected",
            SubscriberExit::AdminBan => "admin_ban",
            SubscriberExit::Shutdown => "shutdown",
        }
    }
}

/// What the supervisor knows about a host when one of its Subscribers exits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostState<'a> {
    /// The hostname, the jitter seed.
    pub hostname: &'a str,
    pub status: HostStatus,
    /// Consecutive failures before this exit.
    pub failures: u32,
    /// The operator allowed this upstream although it identifies as a relay.
    pub relay_allowed: bool,
}

/// What to do after an exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// The host's status from now on.
    pub status: HostStatus,
    /// Dial again after this delay; `None` means never (banned, shutdown).
    pub redial_after: Option<Duration>,
    /// Forget the upstream cursor: the next dial has none.
    pub reset_cursor: bool,
    /// Consecutive failures from now on.
    pub failures: u32,
}

/// The delay before redial number `failures` (1 = after the first failure): `1 s · 2^(n-1)`
/// capped at 30 min, minus up to a quarter of jitter, never below 1 s. Deterministic in
/// (`seed`, `failures`).
pub fn backoff(failures: u32, seed: &str) -> Duration {
    let exponent = failures.saturating_sub(1).min(31);
    let base = BACKOFF_MIN
        .saturating_mul(1u32 << exponent)
        .min(BACKOFF_MAX);
    let quarter = base / 4;
    let jitter = quarter.mul_f64(unit_interval(seed, u64::from(failures)));
    (base - jitter).max(BACKOFF_MIN)
}

/// The delay of a host's first dial at startup: spread uniformly over `spread` by a hash of
/// the hostname, so 3,000 hosts do not handshake at once (lesson 1) and the same host gets
/// the same slot on every start.
pub fn startup_delay(hostname: &str, spread: Duration) -> Duration {
    spread.mul_f64(unit_interval(hostname, 0))
}

/// The restart policy.
pub fn decide(host: &HostState<'_>, exit: SubscriberExit) -> Decision {
    let keep = |status| Decision {
        status,
        redial_after: None,
        reset_cursor: false,
        failures: host.failures,
    };
    // A banned host stays banned whatever an old Subscriber reports.
    if host.status == HostStatus::Banned {
        return keep(HostStatus::Banned);
    }
    let failed = |status_below_offline: HostStatus| {
        let failures = host.failures.saturating_add(1);
        let status = if failures >= OFFLINE_AFTER {
            HostStatus::Offline
        } else {
            status_below_offline
        };
        Decision {
            status,
            redial_after: Some(backoff(failures, host.hostname)),
            reset_cursor: false,
            failures,
        }
    };
    // While failing, a host keeps its status (active, idle, throttled) until it is offline.
    let current = host.status;
    match exit {
        SubscriberExit::Shutdown => keep(current),
        SubscriberExit::AdminBan => keep(HostStatus::Banned),
        SubscriberExit::RelayDetected if !host.relay_allowed => keep(HostStatus::Banned),
        SubscriberExit::RelayDetected => failed(current),
        SubscriberExit::DialFailed
        | SubscriberExit::Dropped {
            events_delivered: 0,
        } => failed(current),
        SubscriberExit::Dropped { .. } => Decision {
            status: HostStatus::Active,
            redial_after: Some(backoff(1, host.hostname)),
            reset_cursor: false,
            failures: 0,
        },
        SubscriberExit::DroppedIdle => Decision {
            status: current,
            redial_after: Some(backoff(1, host.hostname)),
            reset_cursor: false,
            failures: 0,
        },
        SubscriberExit::FutureCursor => Decision {
            status: HostStatus::Idle,
            reset_cursor: true,
            ..failed(HostStatus::Idle)
        },
    }
}

/// A number in `[0, 1)` from (`seed`, `n`): FNV-1a then a splitmix64 finaliser. Written out
/// (not `DefaultHasher`) so the value is the same on every build and platform.
fn unit_interval(seed: &str, n: u64) -> f64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in seed.bytes().chain(n.to_le_bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    (h >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    fn host(status: HostStatus, failures: u32) -> HostState<'static> {
        HostState {
            hostname: "pds.example.com",
            status,
            failures,
            relay_allowed: false,
        }
    }

    #[test]
    fn host_status_round_trips_the_schema_spelling() {
        let check = include_str!("../../schema/0001_init.sql");
        for status in HostStatus::ALL {
            assert_eq!(status.as_str().parse(), Ok(status));
            assert!(
                check.contains(&format!("'{status}'")),
                "{status} not in schema"
            );
        }
        assert!("dormant".parse::<HostStatus>().is_err());
    }

    #[test]
    fn backoff_doubles_from_one_second_to_the_cap_with_bounded_jitter() {
        // (failures, base): the delay is in (3/4 base, base], never below 1 s.
        let table: [(u32, u64); 14] = [
            (0, 1),
            (1, 1),
            (2, 2),
            (3, 4),
            (4, 8),
            (5, 16),
            (8, 128),
            (11, 1024),
            (12, 1800),
            (15, 1800),
            (16, 1800),
            (100, 1800),
            (1_000, 1800),
            (u32::MAX, 1800),
        ];
        for (failures, base) in table {
            for seed in ["a.example", "b.example", "pds.example.com"] {
                let d = backoff(failures, seed);
                assert!(d <= S(base), "{failures} {seed}: {d:?} > {base}s");
                assert!(d >= S(1), "{failures}: {d:?}");
                assert!(
                    d * 4 >= S(base) * 3,
                    "{failures}: {d:?} below 3/4 of {base}s"
                );
            }
        }
        assert_eq!(backoff(1, "x"), S(1));
    }

    #[test]
    fn jitter_is_deterministic_and_differs_between_hosts() {
        assert_eq!(backoff(9, "a.example"), backoff(9, "a.example"));
        assert_ne!(backoff(9, "a.example"), backoff(9, "b.example"));
        assert_ne!(backoff(20, "a.example"), backoff(21, "a.example"));
        let a = startup_delay("a.example", DEFAULT_STARTUP_SPREAD);
        assert_eq!(a, startup_delay("a.example", DEFAULT_STARTUP_SPREAD));
    }

    #[test]
    fn startup_delays_spread_over_the_window() {
        let spread = DEFAULT_STARTUP_SPREAD;
        let mut per_second = [0u32; 30];
        for i in 0..3_000 {
            let d = startup_delay(&format!("pds{i}.example.net"), spread);
            assert!(d < spread);
            per_second[d.as_secs() as usize] += 1;
        }
        // 100 per second on average; no second holds more than twice that.
        assert!(
            per_second.iter().all(|&n| (30..=200).contains(&n)),
            "{per_second:?}"
        );
        assert_eq!(startup_delay("x", Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn decisions_table() {
        use HostStatus::*;
        use SubscriberExit::*;
        let b = |n| Some(backoff(n, "pds.example.com"));
        // (status, failures, exit) → (status, redial_after, reset_cursor, failures)
        let table: Vec<(HostStatus, u32, SubscriberExit, Decision)> = vec![
            (Active, 0, DialFailed, d(Active, b(1), false, 1)),
            (Active, 3, DialFailed, d(Active, b(4), false, 4)),
            (Active, 13, DialFailed, d(Active, b(14), false, 14)),
            (Active, 14, DialFailed, d(Offline, b(15), false, 15)),
            // offline is still retried, at the cap, forever
            (Offline, 15, DialFailed, d(Offline, b(16), false, 16)),
            (
                Offline,
                500,
                DialFailed,
                d(Offline, Some(backoff(501, "pds.example.com")), false, 501),
            ),
            // accepted then dropped with nothing: a failure, never a tight loop
            (
                Active,
                0,
                Dropped {
                    events_delivered: 0,
                },
                d(Active, b(1), false, 1),
            ),
            (
                Active,
                14,
                Dropped {
                    events_delivered: 0,
                },
                d(Offline, b(15), false, 15),
            ),
            // delivered events: reset and active
            (
                Active,
                7,
                Dropped {
                    events_delivered: 1,
                },
                d(Active, b(1), false, 0),
            ),
            (
                Offline,
                40,
                Dropped {
                    events_delivered: 9,
                },
                d(Active, b(1), false, 0),
            ),
            (
                Idle,
                1,
                Dropped {
                    events_delivered: 3,
                },
                d(Active, b(1), false, 0),
            ),
            // a quiet host's connection that lasted: no failure, the shortest backoff
            (Active, 9, DroppedIdle, d(Active, b(1), false, 0)),
            (Idle, 3, DroppedIdle, d(Idle, b(1), false, 0)),
            // FutureCursor: idle, cursor reset, redial without it after a backoff
            (Active, 0, FutureCursor, d(Idle, b(1), true, 1)),
            (Active, 20, FutureCursor, d(Idle, b(21), true, 21)),
            // relays are banned unless allowed
            (Active, 0, RelayDetected, d(Banned, None, false, 0)),
            // admin ban: stop and never restart; a banned host stays banned
            (Active, 2, AdminBan, d(Banned, None, false, 2)),
            (
                Banned,
                2,
                Dropped {
                    events_delivered: 5,
                },
                d(Banned, None, false, 2),
            ),
            (Banned, 2, DialFailed, d(Banned, None, false, 2)),
            // shutdown: nothing changes, nothing is scheduled
            (Active, 4, Shutdown, d(Active, None, false, 4)),
            (Idle, 0, Shutdown, d(Idle, None, false, 0)),
            // a throttled host keeps its status while failing below the limit
            (Throttled, 0, DialFailed, d(Throttled, b(1), false, 1)),
        ];
        for (status, failures, exit, want) in table {
            let got = decide(&host(status, failures), exit);
            assert_eq!(got, want, "{status} failures={failures} {exit:?}");
        }
    }

    #[test]
    fn an_allowed_relay_is_retried_like_any_failure() {
        let mut h = host(HostStatus::Active, 0);
        h.relay_allowed = true;
        let got = decide(&h, SubscriberExit::RelayDetected);
        assert_eq!(got.status, HostStatus::Active);
        assert_eq!(got.failures, 1);
        assert!(got.redial_after.is_some());
    }

    #[test]
    fn every_non_banned_outcome_except_shutdown_schedules_a_redial() {
        // Lesson 2: supervision never forgets a host that is not banned.
        let exits = [
            SubscriberExit::DialFailed,
            SubscriberExit::Dropped {
                events_delivered: 0,
            },
            SubscriberExit::Dropped {
                events_delivered: 1,
            },
            SubscriberExit::DroppedIdle,
            SubscriberExit::FutureCursor,
        ];
        for status in [
            HostStatus::Active,
            HostStatus::Idle,
            HostStatus::Offline,
            HostStatus::Throttled,
        ] {
            for failures in [0, 1, 14, 15, 16, 10_000, u32::MAX] {
                for exit in exits {
                    let got = decide(&host(status, failures), exit);
                    let delay = got.redial_after.expect("redial scheduled");
                    assert!((BACKOFF_MIN..=BACKOFF_MAX).contains(&delay), "{delay:?}");
                    assert_ne!(got.status, HostStatus::Banned);
                }
            }
        }
    }

    #[test]
    fn exit_reasons_are_distinct_labels() {
        let reasons = [
            SubscriberExit::DialFailed.reason(),
            SubscriberExit::Dropped {
                events_delivered: 0,
            }
            .reason(),
            SubscriberExit::Dropped {
                events_delivered: 2,
            }
            .reason(),
            SubscriberExit::DroppedIdle.reason(),
            SubscriberExit::FutureCursor.reason(),
            SubscriberExit::RelayDetected.reason(),
            SubscriberExit::AdminBan.reason(),
            SubscriberExit::Shutdown.reason(),
        ];
        let unique: std::collections::HashSet<_> = reasons.iter().collect();
        assert_eq!(unique.len(), reasons.len());
    }

    fn d(
        status: HostStatus,
        redial_after: Option<Duration>,
        reset_cursor: bool,
        failures: u32,
    ) -> Decision {
        Decision {
            status,
            redial_after,
            reset_cursor,
            failures,
        }
    }
}
