//! The HostSupervisor on tokio's paused clock, with an in-memory host table and a scripted
//! connector (no sockets): backoff and `offline`, no redial spin, `FutureCursor`, relays,
//! the startup ramp's handshake bound, and the admin messages.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use futures_util::future::BoxFuture;
use prometheus::Registry;
use rookery::actors::host_supervisor::{
    AddHost, Ban, ChangeLimits, Connector, DialRequest, GetSupervisorState, HostRecord, HostStore,
    HostSupervisor, HostSupervisorSettings, HostView, KillConnection, ListConnections, NewHost,
    Phase, StatusWrite, Unban,
};
use rookery::actors::obs::{ActorMetrics, InstrumentedAddr};
use rookery::actors::subscriber::HostLimits;
use rookery::actors::supervision::{HostStatus, SubscriberExit};
use rookery::actors::upstream_cursor::HostCursor;
use rookery::actors::write_behind::PendingWrites;
use rookery::store::postgres::DbError;
use tokio::time::Instant;

/// What a scripted host does when dialled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behaviour {
    /// The dial fails.
    Dead,
    /// The upgrade succeeds and the connection closes at once, with no event.
    AcceptThenDrop,
    /// The upgrade succeeds, the connection stays up this long with no event, then closes.
    IdleThenDrop(Duration),
    /// Upgrade, then the `FutureCursor` error frame.
    FutureCursor,
    /// The upgrade's `Server` header names a relay.
    Relay,
    /// Upgrade, one event, then stays up until the supervisor stops it.
    Live,
}

#[derive(Default)]
struct Script {
    behaviour: HashMap<String, Behaviour>,
    /// (hostname, when, cursor) of every dial.
    dials: Vec<(String, Instant, Option<i64>)>,
    in_flight: usize,
    max_in_flight: usize,
    /// Limits each connection saw last.
    limits: HashMap<String, HostLimits>,
    stopped_with: Vec<(String, SubscriberExit)>,
}

#[derive(Clone)]
pub struct ScriptedConnector {
    script: Arc<Mutex<Script>>,
    handshake: Duration,
}

impl ScriptedConnector {
    fn new(handshake: Duration) -> ScriptedConnector {
        ScriptedConnector {
            script: Arc::default(),
            handshake,
        }
    }
    fn set(&self, host: &str, b: Behaviour) {
        self.script
            .lock()
            .unwrap()
            .behaviour
            .insert(host.to_string(), b);
    }
    fn dials(&self, host: &str) -> Vec<(Instant, Option<i64>)> {
        self.script
            .lock()
            .unwrap()
            .dials
            .iter()
            .filter(|d| d.0 == host)
            .map(|d| (d.1, d.2))
            .collect()
    }
    fn all_dials(&self) -> Vec<(String, Instant, Option<i64>)> {
        self.script.lock().unwrap().dials.clone()
    }
    fn max_in_flight(&self) -> usize {
        self.script.lock().unwrap().max_in_flight
    }
}

impl Connector for ScriptedConnector {
    fn connect(&self, req: DialRequest) {
        let script = Arc::clone(&self.script);
        let handshake = self.handshake;
        let host = req.hostname.to_string();
        let behaviour = {
            let mut s = script.lock().unwrap();
            s.dials.push((host.clone(), Instant::now(), req.cursor));
            s.in_flight += 1;
            s.max_in_flight = s.max_in_flight.max(s.in_flight);
            s.behaviour.get(&host).copied().unwrap_or(Behaviour::Live)
        };
        actix_rt::spawn(async move {
            let DialRequest {
                mut link,
                mut stop,
                mut limits,
                ..
            } = req;
            tokio::time::sleep(handshake).await;
            script.lock().unwrap().in_flight -= 1;
            match behaviour {
                Behaviour::Dead => {}
                Behaviour::AcceptThenDrop => link.handshake_done(),
                Behaviour::IdleThenDrop(lasts) => {
                    link.handshake_done();
                    tokio::time::sleep(lasts).await;
                }
                Behaviour::FutureCursor => {
                    link.handshake_done();
                    link.set_outcome(SubscriberExit::FutureCursor);
                }
                Behaviour::Relay => {
                    link.handshake_done();
                    link.set_outcome(SubscriberExit::RelayDetected);
                }
                Behaviour::Live => {
                    link.handshake_done();
                    link.delivered();
                    loop {
                        script
                            .lock()
                            .unwrap()
                            .limits
                            .insert(host.clone(), *limits.borrow_and_update());
                        tokio::select! {
                            // The stop comes with the limits sender's drop: read it first.
                            biased;
                            exit = &mut stop => {
                                if let Ok(exit) = exit {
                                    script.lock().unwrap().stopped_with.push((host.clone(), exit));
                                    link.set_outcome(exit);
                                }
                                break;
                            }
                            changed = limits.changed() => if changed.is_err() { break },
                        }
                    }
                }
            }
        });
    }
}

/// The host table in memory, with the statement rules of the Postgres store.
#[derive(Clone, Default)]
pub struct MemoryHosts {
    rows: Arc<Mutex<HashMap<i64, HostRecord>>>,
    pub status_statements: Arc<Mutex<u64>>,
    pub resets: Arc<Mutex<Vec<i64>>>,
}

pub fn record(id: i64, hostname: &str, status: HostStatus, cursor: i64) -> HostRecord {
    HostRecord {
        id,
        hostname: hostname.to_string(),
        status,
        cursor,
        account_count: 0,
        account_limit: 100,
        failures: 0,
        trusted: false,
        no_ssl: true,
        relay_allowed: false,
        inversion_warn_only: false,
        subscribed: cursor > 0,
    }
}

impl MemoryHosts {
    pub fn with(rows: Vec<HostRecord>) -> MemoryHosts {
        let m = MemoryHosts::default();
        m.rows
            .lock()
            .unwrap()
            .extend(rows.into_iter().map(|r| (r.id, r)));
        m
    }
    pub fn row(&self, id: i64) -> HostRecord {
        self.rows.lock().unwrap()[&id].clone()
    }
}

impl HostStore for MemoryHosts {
    fn load_hosts(&self) -> BoxFuture<'static, Result<Vec<HostRecord>, DbError>> {
        let mut v: Vec<_> = self.rows.lock().unwrap().values().cloned().collect();
        v.sort_by_key(|r| r.id);
        Box::pin(async move { Ok(v) })
    }
    fn write_statuses(&self, writes: Vec<StatusWrite>) -> BoxFuture<'static, Result<u64, DbError>> {
        let mut rows = self.rows.lock().unwrap();
        for w in &writes {
            if let Some(r) = rows.get_mut(&w.host_id) {
                if r.status != HostStatus::Banned {
                    r.status = w.status;
                }
                r.failures = w.failures;
                r.subscribed = w.subscribed;
            }
        }
        *self.status_statements.lock().unwrap() += 1;
        let n = writes.len() as u64;
        Box::pin(async move { Ok(n) })
    }
    fn reset_cursor(&self, host_id: i64) -> BoxFuture<'static, Result<(), DbError>> {
        if let Some(r) = self.rows.lock().unwrap().get_mut(&host_id) {
            r.cursor = 0;
            r.subscribed = false;
        }
        self.resets.lock().unwrap().push(host_id);
        Box::pin(async { Ok(()) })
    }
    fn add_host(&self, host: NewHost) -> BoxFuture<'static, Result<HostRecord, DbError>> {
        let mut rows = self.rows.lock().unwrap();
        let rec = match rows.values().find(|r| r.hostname == host.hostname) {
            Some(r) => r.clone(),
            None => {
                let id = rows.keys().max().copied().unwrap_or(0) + 1;
                let rec = record(id, &host.hostname, HostStatus::Active, 0);
                rows.insert(id, rec.clone());
                rec
            }
        };
        Box::pin(async move { Ok(rec) })
    }
    fn unban(&self, host_id: i64) -> BoxFuture<'static, Result<(), DbError>> {
        if let Some(r) = self.rows.lock().unwrap().get_mut(&host_id) {
            r.status = HostStatus::Active;
            r.failures = 0;
        }
        Box::pin(async { Ok(()) })
    }
    fn set_inversion_warn_only(
        &self,
        host_id: i64,
        on: bool,
    ) -> BoxFuture<'static, Result<(), DbError>> {
        if let Some(r) = self.rows.lock().unwrap().get_mut(&host_id) {
            r.inversion_warn_only = on;
        }
        Box::pin(async { Ok(()) })
    }
    fn set_account_limit(
        &self,
        host_id: i64,
        limit: i64,
    ) -> BoxFuture<'static, Result<(), DbError>> {
        if let Some(r) = self.rows.lock().unwrap().get_mut(&host_id) {
            r.account_limit = limit;
        }
        Box::pin(async { Ok(()) })
    }
}

pub fn settings(spread: Duration, handshakes: usize) -> HostSupervisorSettings {
    HostSupervisorSettings {
        max_concurrent_handshakes: handshakes,
        startup_spread: spread,
        ..HostSupervisorSettings::default()
    }
}

pub fn start_supervisor(
    store: &MemoryHosts,
    connector: Arc<dyn Connector>,
    settings: HostSupervisorSettings,
    pending: Option<PendingWrites>,
) -> InstrumentedAddr<HostSupervisor> {
    let metrics = ActorMetrics::register(&Registry::new()).expect("metrics");
    let obs = metrics.actor(HostSupervisor::NAME, HostSupervisor::MAILBOX);
    let mut sup = HostSupervisor::new(obs.clone(), Arc::new(store.clone()), connector, settings);
    if let Some(p) = pending {
        sup = sup.with_cursors(p, None);
    }
    InstrumentedAddr::new(sup.start(), obs)
}

pub async fn view(sup: &InstrumentedAddr<HostSupervisor>, host: &str) -> HostView {
    sup.send(ListConnections)
        .await
        .expect("alive")
        .into_iter()
        .find(|h| h.hostname == host)
        .expect("host listed")
}

async fn sleep(secs: u64) {
    tokio::time::sleep(Duration::from_secs(secs)).await;
}

const S: fn(u64) -> Duration = Duration::from_secs;

#[actix_rt::test]
async fn a_dead_host_backs_off_goes_offline_and_still_comes_back() {
    tokio::time::pause();
    let store = MemoryHosts::with(vec![record(1, "dead.example", HostStatus::Active, 40)]);
    let conn = ScriptedConnector::new(Duration::from_millis(100));
    conn.set("dead.example", Behaviour::Dead);
    let sup = start_supervisor(&store, Arc::new(conn.clone()), settings(S(30), 64), None);

    // Long enough for 15 failures: 1+2+...+1024 s, then the 30 min cap.
    sleep(3 * 3600).await;
    let dials = conn.dials("dead.example");
    assert!(dials.len() >= 16, "{}", dials.len());
    let gaps: Vec<Duration> = dials.windows(2).map(|w| w[1].0 - w[0].0).collect();
    for w in gaps.windows(2).take(10) {
        assert!(w[1] > w[0], "delays grow: {gaps:?}");
    }
    assert!(gaps.iter().all(|g| *g <= S(30 * 60) + S(1)), "{gaps:?}");
    assert!(gaps.last().unwrap() >= &S(22 * 60), "at the cap: {gaps:?}");
    assert!(
        dials.iter().all(|d| d.1 == Some(40)),
        "dialled with the stored cursor"
    );
    let v = view(&sup, "dead.example").await;
    assert_eq!(v.status, HostStatus::Offline);
    assert!(v.failures >= 15);
    assert_eq!(
        store.row(1).status,
        HostStatus::Offline,
        "written in a batch"
    );

    // It comes back: still retried at the cap, then active with no failures.
    conn.set("dead.example", Behaviour::Live);
    sleep(31 * 60).await;
    let v = view(&sup, "dead.example").await;
    assert_eq!(
        (v.status, v.failures, v.live),
        (HostStatus::Active, 0, true)
    );
    sleep(2).await;
    assert_eq!(store.row(1).status, HostStatus::Active);
    assert_eq!(store.row(1).failures, 0);
    let statements = *store.status_statements.lock().unwrap();
    assert!(statements < 30, "batched, not per event: {statements}");
}

#[actix_rt::test]
async fn accept_then_drop_never_spins() {
    tokio::time::pause();
    let store = MemoryHosts::with(vec![record(1, "flappy.example", HostStatus::Active, 0)]);
    let conn = ScriptedConnector::new(Duration::from_millis(10));
    conn.set("flappy.example", Behaviour::AcceptThenDrop);
    let _sup = start_supervisor(&store, Arc::new(conn.clone()), settings(S(30), 64), None);
    sleep(3600).await;
    let n = conn.dials("flappy.example").len();
    // 1+2+4+...+1024 s (11 redials) then 1,800 s: at most 14 dials in an hour.
    assert!((10..=14).contains(&n), "{n} dials in an hour");
}

/// A host the relay completed a handshake with is owed what it publishes from then on: with
/// no cursor yet (no event of its own became durable), it is redialled from cursor 0, its
/// outbox, and so after a restart too. A host never reached is still dialled live only.
#[actix_rt::test]
async fn a_subscribed_host_without_a_cursor_resumes_from_its_outbox() {
    tokio::time::pause();
    let store = MemoryHosts::with(vec![
        record(1, "quiet.example", HostStatus::Active, 0),
        record(2, "dead.example", HostStatus::Active, 0),
    ]);
    let conn = ScriptedConnector::new(Duration::from_millis(10));
    conn.set("quiet.example", Behaviour::AcceptThenDrop);
    conn.set("dead.example", Behaviour::Dead);
    let sup = start_supervisor(&store, Arc::new(conn.clone()), settings(S(0), 64), None);
    sleep(10).await;
    let cursors = |host: &str| conn.dials(host).iter().map(|d| d.1).collect::<Vec<_>>();
    let quiet = cursors("quiet.example");
    assert!(quiet.len() >= 2, "{quiet:?}");
    assert_eq!(quiet[0], None, "a host never reached is dialled live only");
    assert!(
        quiet[1..].iter().all(|c| *c == Some(0)),
        "after a handshake, from the outbox: {quiet:?}"
    );
    let dead = cursors("dead.example");
    assert!(
        dead.len() >= 2 && dead.iter().all(Option::is_none),
        "{dead:?}"
    );
    assert!(store.row(1).subscribed, "the handshake was stored");
    assert!(!store.row(2).subscribed);

    // A restart (a new supervisor on the same table): the subscription is remembered.
    sup.send(rookery::actors::host_supervisor::StopSupervisor)
        .await
        .expect("stop");
    let conn = ScriptedConnector::new(Duration::from_millis(10));
    conn.set("dead.example", Behaviour::Dead);
    let sup = start_supervisor(&store, Arc::new(conn.clone()), settings(S(0), 64), None);
    sleep(1).await;
    let cursors = |host: &str| conn.dials(host).iter().map(|d| d.1).collect::<Vec<_>>();
    assert_eq!(cursors("quiet.example"), vec![Some(0)]);
    assert_eq!(cursors("dead.example"), vec![None]);
    assert!(view(&sup, "quiet.example").await.live);
}

/// A quiet host whose connections last (15 s here) and then end is not failing: no failure
/// is counted, it stays active, and it is redialled after the shortest backoff every time
/// instead of backing off towards 30 minutes.
#[actix_rt::test]
async fn a_quiet_host_whose_connections_end_is_redialled_promptly() {
    tokio::time::pause();
    let store = MemoryHosts::with(vec![record(1, "quiet.example", HostStatus::Active, 5)]);
    let conn = ScriptedConnector::new(Duration::from_millis(10));
    conn.set("quiet.example", Behaviour::IdleThenDrop(S(15)));
    let sup = start_supervisor(&store, Arc::new(conn.clone()), settings(S(0), 64), None);
    sleep(600).await;
    let dials = conn.dials("quiet.example");
    // One dial per 15 s connection plus at most 1 s of backoff.
    assert!((36..=41).contains(&dials.len()), "{} dials", dials.len());
    let gaps = dials.windows(2).map(|w| w[1].0 - w[0].0);
    assert!(gaps.clone().all(|g| g <= S(17)), "{:?}", gaps.max());
    let v = view(&sup, "quiet.example").await;
    assert_eq!((v.status, v.failures), (HostStatus::Active, 0));
}

#[actix_rt::test]
async fn future_cursor_idles_resets_the_cursor_and_reconnects_without_one() {
    tokio::time::pause();
    let store = MemoryHosts::with(vec![record(7, "reset.example", HostStatus::Active, 500)]);
    let conn = ScriptedConnector::new(Duration::from_millis(10));
    conn.set("reset.example", Behaviour::FutureCursor);
    let pending = PendingWrites::default();
    // A mark of the old connection still in flight when the reset happens.
    let old = HostCursor::new(7, 500, pending.clone());
    let late = old.begin(501);
    let sup = start_supervisor(
        &store,
        Arc::new(conn.clone()),
        settings(S(0), 64),
        Some(pending.clone()),
    );
    sleep(1).await;
    let v = view(&sup, "reset.example").await;
    assert_eq!(v.status, HostStatus::Idle);
    assert_eq!(v.cursor, 0);
    assert_eq!(*store.resets.lock().unwrap(), vec![7], "reset stored");
    conn.set("reset.example", Behaviour::Live);
    late.complete();
    assert!(
        pending.is_empty(),
        "the old connection cannot undo the reset"
    );
    sleep(5).await;
    let dials = conn.dials("reset.example");
    assert_eq!(dials.len(), 2);
    assert_eq!(dials[0].1, Some(500));
    assert_eq!(dials[1].1, None, "reconnected without a cursor");
    let v = view(&sup, "reset.example").await;
    assert_eq!((v.status, v.live), (HostStatus::Active, true));
    let state = sup.send(GetSupervisorState).await.unwrap();
    assert_eq!(state.cursor_resets, 1);
}

#[actix_rt::test]
async fn a_relay_is_banned_and_never_redialled() {
    tokio::time::pause();
    let store = MemoryHosts::with(vec![
        record(1, "relay.example", HostStatus::Active, 0),
        record(2, "banned.example", HostStatus::Banned, 0),
        record(3, "idle.example", HostStatus::Idle, 9),
    ]);
    let conn = ScriptedConnector::new(Duration::from_millis(10));
    conn.set("relay.example", Behaviour::Relay);
    let sup = start_supervisor(&store, Arc::new(conn.clone()), settings(S(5), 64), None);
    sleep(3600).await;
    assert_eq!(conn.dials("relay.example").len(), 1);
    assert!(
        conn.dials("banned.example").is_empty(),
        "banned: never dialled"
    );
    // Idle (a `FutureCursor` whose redial a restart cut short): dialled at start, as it
    // would have been redialled had the relay not restarted.
    let idle = conn.dials("idle.example");
    assert_eq!(idle.len(), 1, "{idle:?}");
    assert_eq!(idle[0].1, Some(9));
    assert_eq!(view(&sup, "idle.example").await.status, HostStatus::Active);
    assert_eq!(view(&sup, "relay.example").await.status, HostStatus::Banned);
    assert_eq!(store.row(1).status, HostStatus::Banned);
    assert_eq!(sup.send(GetSupervisorState).await.unwrap().relays_banned, 1);
    // A requestCrawl for the banned relay is refused; for the idle host it dials now.
    let crawl = |h: &str| {
        AddHost(NewHost {
            hostname: h.to_string(),
            no_ssl: true,
            admin_added: false,
            ssrf_exempt: false,
            account_limit: None,
        })
    };
    assert!(sup.send(crawl("relay.example")).await.unwrap().is_err());
    sleep(1).await;
    assert_eq!(conn.dials("relay.example").len(), 1);
}

#[actix_rt::test]
async fn the_ramp_never_exceeds_the_handshake_limit() {
    tokio::time::pause();
    let hosts: Vec<HostRecord> = (1..=200)
        .map(|i| record(i, &format!("pds{i}.example"), HostStatus::Active, i))
        .collect();
    let store = MemoryHosts::with(hosts);
    // Slow handshakes (5 s) and 16 permits: the limit binds.
    let conn = ScriptedConnector::new(S(5));
    let started = Instant::now();
    let sup = start_supervisor(&store, Arc::new(conn.clone()), settings(S(30), 16), None);
    sleep(120).await;
    assert_eq!(conn.all_dials().len(), 200, "every host dialled once");
    assert_eq!(
        conn.max_in_flight(),
        16,
        "the limit was reached and never exceeded"
    );
    let state = sup.send(GetSupervisorState).await.unwrap();
    assert_eq!((state.connected, state.handshakes_in_flight), (200, 0));

    // Fast handshakes and the default limit: all first dials fall inside the spread.
    let store = MemoryHosts::with(
        (1..=200)
            .map(|i| record(i, &format!("pds{i}.example"), HostStatus::Active, 0))
            .collect(),
    );
    let conn = ScriptedConnector::new(Duration::from_millis(100));
    let started2 = Instant::now();
    let _sup = start_supervisor(&store, Arc::new(conn.clone()), settings(S(30), 64), None);
    sleep(60).await;
    let dials = conn.all_dials();
    assert_eq!(dials.len(), 200);
    assert!(
        dials.iter().all(|d| d.1 - started2 < S(30)),
        "within the spread"
    );
    let first = dials.iter().map(|d| d.1 - started2).min().unwrap();
    let last = dials.iter().map(|d| d.1 - started2).max().unwrap();
    assert!(last - first > S(20), "spread out: {first:?}..{last:?}");
    assert!(started <= started2);
}

#[actix_rt::test]
async fn ban_unban_kill_limits_and_list() {
    tokio::time::pause();
    let store = MemoryHosts::with(vec![
        record(1, "a.example", HostStatus::Active, 3),
        record(2, "b.example", HostStatus::Active, 0),
    ]);
    let conn = ScriptedConnector::new(Duration::from_millis(10));
    let sup = start_supervisor(&store, Arc::new(conn.clone()), settings(S(0), 64), None);
    sleep(1).await;
    let list = sup.send(ListConnections).await.unwrap();
    assert_eq!(
        list.iter()
            .map(|h| (h.hostname.as_str(), h.phase, h.live))
            .collect::<Vec<_>>(),
        vec![
            ("a.example", Phase::Connected, true),
            ("b.example", Phase::Connected, true)
        ]
    );

    // Kill: the connection ends and is redialled after the minimal backoff.
    let epoch = view(&sup, "a.example").await.epoch;
    assert!(
        sup.send(KillConnection {
            hostname: "a.example".into()
        })
        .await
        .unwrap()
    );
    sleep(2).await;
    let v = view(&sup, "a.example").await;
    assert_eq!(
        (v.phase, v.dials, v.status),
        (Phase::Connected, 2, HostStatus::Active)
    );
    assert!(v.epoch > epoch);
    assert!(
        !sup.send(KillConnection {
            hostname: "nope.example".into()
        })
        .await
        .unwrap()
    );

    // Limits change live.
    assert!(
        sup.send(ChangeLimits {
            hostname: "b.example".into(),
            account_limit: 10_000
        })
        .await
        .unwrap()
    );
    sleep(1).await;
    let seen = conn.script.lock().unwrap().limits["b.example"];
    assert_eq!(seen, HostLimits::for_host(10_000, false));
    assert_eq!(store.row(2).account_limit, 10_000);

    // Ban: stopped with AdminBan, its exit is stale, never redialled.
    assert!(
        sup.send(Ban {
            hostname: "b.example".into()
        })
        .await
        .unwrap()
    );
    sleep(3600).await;
    let v = view(&sup, "b.example").await;
    assert_eq!(
        (v.status, v.phase, v.dials),
        (HostStatus::Banned, Phase::Stopped, 1)
    );
    assert!(
        conn.script
            .lock()
            .unwrap()
            .stopped_with
            .contains(&("b.example".to_string(), SubscriberExit::AdminBan))
    );
    assert_eq!(store.row(2).status, HostStatus::Banned);
    let state = sup.send(GetSupervisorState).await.unwrap();
    assert!(
        state.stale_exits >= 2,
        "kill and ban exits ignored: {state:?}"
    );

    // Unban: active and dialled at once.
    assert!(
        sup.send(Unban {
            hostname: "b.example".into()
        })
        .await
        .unwrap()
    );
    assert!(
        !sup.send(Unban {
            hostname: "a.example".into()
        })
        .await
        .unwrap(),
        "not banned"
    );
    sleep(1).await;
    let v = view(&sup, "b.example").await;
    assert_eq!(
        (v.status, v.phase, v.dials),
        (HostStatus::Active, Phase::Connected, 2)
    );
    sleep(2).await;
    assert_eq!(store.row(2).status, HostStatus::Active);

    // A new host through AddHost is stored and dialled.
    let added = sup
        .send(AddHost(NewHost {
            hostname: "c.example".into(),
            no_ssl: true,
            admin_added: true,
            ssrf_exempt: true,
            account_limit: None,
        }))
        .await
        .unwrap()
        .expect("added");
    assert_eq!(added.id, 3);
    sleep(1).await;
    assert_eq!(view(&sup, "c.example").await.phase, Phase::Connected);
}
