//! The one instrumentation wrapper every actor kind uses.
//!
//! actix exposes no queue length, so depth is counted by us: an [`InstrumentedAddr`] counts a
//! message in when it queues it, and the [`HandlerGuard`] the handler enters first counts it
//! out. The same per-instance count gives the wrapper a *hard* view of the mailbox: a `send`
//! that finds it full waits (timed) until a handler frees a slot, and a `try_send` is refused
//! (counted). There is no `do_send` here on purpose: actix's `do_send` ignores capacity
//! (ACTORS.md), so nothing on a data path can bypass the bound through this wrapper.
//!
//! Metric families are labelled only by actor kind, message and reason (bounded label sets,
//! ARCHITECTURE.md property 5): 3,000 Subscribers aggregate into one `actor="subscriber"`
//! series. Everything is registered on an explicit [`prometheus::Registry`]; there is no
//! global registry.
//!
//! Caveat kept small on purpose: a message queued through the wrapper whose actor stops
//! before handling it, or whose `send` future is dropped and which actix then discards,
//! stays counted in the depth gauge. The ingest singletons are supervised (their mailbox
//! survives restarts) and their senders await every send, so this happens only at shutdown.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use actix::dev::ToEnvelope;
use actix::prelude::*;
use prometheus::{
    HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, exponential_buckets,
};
use tokio::sync::Notify;

/// A message with a fixed, bounded metric label.
pub trait ObservedMessage: Message {
    /// The `message` label (snake case, e.g. `"append"`).
    const NAME: &'static str;
}

/// The metric families shared by every actor kind. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ActorMetrics {
    mailbox_depth: IntGaugeVec,
    handled: IntCounterVec,
    handler_seconds: HistogramVec,
    restarts: IntCounterVec,
    sends_refused: IntCounterVec,
    full_mailbox_wait_seconds: HistogramVec,
}

impl ActorMetrics {
    /// Creates the families and registers them on `registry`.
    pub fn register(registry: &Registry) -> Result<ActorMetrics, prometheus::Error> {
        let buckets = exponential_buckets(0.000_01, 4.0, 12)?; // 10 µs .. ~42 s
        let metrics = ActorMetrics {
            mailbox_depth: IntGaugeVec::new(
                Opts::new(
                    "rookery_actor_mailbox_depth",
                    "Messages queued in actor mailboxes, by actor kind",
                ),
                &["actor"],
            )?,
            handled: IntCounterVec::new(
                Opts::new(
                    "rookery_actor_messages_handled_total",
                    "Messages handled, by actor kind and message",
                ),
                &["actor", "message"],
            )?,
            handler_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "rookery_actor_handler_seconds",
                    "Time spent inside handlers, by actor kind and message",
                )
                .buckets(buckets.clone()),
                &["actor", "message"],
            )?,
            restarts: IntCounterVec::new(
                Opts::new(
                    "rookery_actor_restarts_total",
                    "Actor restarts, by actor kind and reason",
                ),
                &["actor", "reason"],
            )?,
            sends_refused: IntCounterVec::new(
                Opts::new(
                    "rookery_actor_sends_refused_total",
                    "try_send refused because the mailbox was full or closed",
                ),
                &["actor", "message", "reason"],
            )?,
            full_mailbox_wait_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "rookery_actor_full_mailbox_wait_seconds",
                    "Time a send waited for room in a full mailbox",
                )
                .buckets(buckets),
                &["actor", "message"],
            )?,
        };
        registry.register(Box::new(metrics.mailbox_depth.clone()))?;
        registry.register(Box::new(metrics.handled.clone()))?;
        registry.register(Box::new(metrics.handler_seconds.clone()))?;
        registry.register(Box::new(metrics.restarts.clone()))?;
        registry.register(Box::new(metrics.sends_refused.clone()))?;
        registry.register(Box::new(metrics.full_mailbox_wait_seconds.clone()))?;
        Ok(metrics)
    }

    /// Instrumentation for one actor instance of kind `actor` with mailbox `capacity`.
    pub fn actor(&self, actor: &'static str, capacity: usize) -> ActorObs {
        // The kind's depth series exists from its first instance on (at 0), so a scrape
        // shows every actor kind that runs, not only those that queued something.
        self.mailbox_depth.with_label_values(&[actor]);
        ActorObs {
            actor,
            capacity: capacity.max(1),
            metrics: self.clone(),
            instance: Arc::new(Instance::default()),
        }
    }

    /// Current mailbox depth of an actor kind (all instances).
    pub fn mailbox_depth(&self, actor: &str) -> i64 {
        self.mailbox_depth.with_label_values(&[actor]).get()
    }

    /// Messages handled so far.
    pub fn handled(&self, actor: &str, message: &str) -> u64 {
        self.handled.with_label_values(&[actor, message]).get()
    }

    /// Sends refused so far (all reasons).
    pub fn refused(&self, actor: &str, message: &str) -> u64 {
        ["full", "closed"]
            .iter()
            .map(|r| {
                self.sends_refused
                    .with_label_values(&[actor, message, r])
                    .get()
            })
            .sum()
    }

    /// Restarts so far for `reason`.
    pub fn restarts(&self, actor: &str, reason: &str) -> u64 {
        self.restarts.with_label_values(&[actor, reason]).get()
    }

    /// Number of sends that waited on a full mailbox.
    pub fn full_mailbox_waits(&self, actor: &str, message: &str) -> u64 {
        self.full_mailbox_wait_seconds
            .with_label_values(&[actor, message])
            .get_sample_count()
    }
}

#[derive(Debug, Default)]
struct Instance {
    depth: AtomicUsize,
    room: Notify,
}

/// Instrumentation of one actor instance: held by the actor (to enter guards, count restarts)
/// and by every [`InstrumentedAddr`] pointing at it.
#[derive(Clone, Debug)]
pub struct ActorObs {
    actor: &'static str,
    capacity: usize,
    metrics: ActorMetrics,
    instance: Arc<Instance>,
}

impl ActorObs {
    /// The actor kind label.
    pub fn actor(&self) -> &'static str {
        self.actor
    }

    /// Messages queued for this instance through its wrapped addresses.
    pub fn depth(&self) -> usize {
        self.instance.depth.load(Ordering::Acquire)
    }

    /// Entered first by every handler: counts the message out of the mailbox and times the
    /// handler until the guard drops.
    pub fn enter(&self, message: &'static str) -> HandlerGuard {
        self.count_back_out();
        self.instance.room.notify_waiters();
        HandlerGuard {
            obs: self.clone(),
            message,
            started: Instant::now(),
        }
    }

    /// Counts a restart (called from `Supervised::restarting`).
    pub fn restarted(&self, reason: &'static str) {
        self.metrics
            .restarts
            .with_label_values(&[self.actor, reason])
            .inc();
    }

    fn count_in(&self) {
        self.instance.depth.fetch_add(1, Ordering::AcqRel);
        self.metrics
            .mailbox_depth
            .with_label_values(&[self.actor])
            .inc();
    }

    /// Saturating, and the gauge follows the instance count: a message that reached the
    /// actor around the wrapper (it should not) can not drive either below zero.
    fn count_back_out(&self) {
        let taken = self
            .instance
            .depth
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| d.checked_sub(1));
        if taken.is_ok() {
            self.metrics
                .mailbox_depth
                .with_label_values(&[self.actor])
                .dec();
        }
    }

    fn is_full(&self) -> bool {
        self.depth() >= self.capacity
    }

    fn refused(&self, message: &'static str, reason: &'static str) {
        self.metrics
            .sends_refused
            .with_label_values(&[self.actor, message, reason])
            .inc();
    }

    /// Waits until this instance's mailbox has room; times the wait when there was none.
    async fn room(&self, message: &'static str) {
        if !self.is_full() {
            return;
        }
        let started = Instant::now();
        loop {
            let notified = self.instance.room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if !self.is_full() {
                break;
            }
            notified.await;
        }
        self.metrics
            .full_mailbox_wait_seconds
            .with_label_values(&[self.actor, message])
            .observe(started.elapsed().as_secs_f64());
    }
}

/// Times a handler and counts it handled when dropped.
#[must_use = "the guard measures the handler until it is dropped"]
pub struct HandlerGuard {
    obs: ActorObs,
    message: &'static str,
    started: Instant,
}

impl Drop for HandlerGuard {
    fn drop(&mut self) {
        let labels = [self.obs.actor, self.message];
        self.obs.metrics.handled.with_label_values(&labels).inc();
        self.obs
            .metrics
            .handler_seconds
            .with_label_values(&labels)
            .observe(self.started.elapsed().as_secs_f64());
    }
}

/// Sampling for a log line that can repeat without bound (a slow-consumer storm, a flood of
/// refused admin requests, every query while Postgres is down): one line per event is the
/// rule, but a thousand identical lines hide the one that matters. Logs the 1st, 2nd, 4th,
/// 8th ... occurrence and then every 1,024th; the caller puts the count (`seen`) in the line,
/// so nothing is hidden, only summarised. The metrics count every occurrence.
///
/// `const`-constructible, so a call site can keep its own in a `static`.
#[derive(Debug, Default)]
pub struct LogSample(std::sync::atomic::AtomicU64);

impl LogSample {
    pub const fn new() -> LogSample {
        LogSample(std::sync::atomic::AtomicU64::new(0))
    }

    /// Counts one occurrence; `Some(seen)` when this one is to be logged.
    pub fn hit(&self) -> Option<u64> {
        let seen = self.0.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        (seen.is_power_of_two() || seen.is_multiple_of(1024)).then_some(seen)
    }
}

/// Why a `try_send` did not queue its message (the message comes back).
#[derive(Debug)]
pub enum TrySendError<M> {
    Full(M),
    Closed(M),
}

/// An actor address that counts queued messages. Only `send` and `try_send`.
pub struct InstrumentedAddr<A: Actor> {
    addr: Addr<A>,
    obs: ActorObs,
}

impl<A: Actor> Clone for InstrumentedAddr<A> {
    fn clone(&self) -> Self {
        InstrumentedAddr {
            addr: self.addr.clone(),
            obs: self.obs.clone(),
        }
    }
}

impl<A: Actor> std::fmt::Debug for InstrumentedAddr<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstrumentedAddr")
            .field("actor", &self.obs.actor)
            .field("depth", &self.obs.depth())
            .finish()
    }
}

impl<A: Actor> InstrumentedAddr<A> {
    /// Wraps `addr`; `obs` must be the instrumentation the actor itself enters guards with.
    pub fn new(addr: Addr<A>, obs: ActorObs) -> Self {
        InstrumentedAddr { addr, obs }
    }

    /// The instrumentation shared with the actor.
    pub fn obs(&self) -> &ActorObs {
        &self.obs
    }

    /// True while the actor is alive.
    pub fn connected(&self) -> bool {
        self.addr.connected()
    }

    /// Sends and waits for the answer. When the mailbox is full this first waits for room
    /// (timed), so one sender never has more than one message parked (ordered paths await
    /// each send, ACTORS.md).
    pub async fn send<M>(&self, msg: M) -> Result<M::Result, MailboxError>
    where
        M: ObservedMessage + Send + 'static,
        M::Result: Send,
        A: Handler<M>,
        A::Context: ToEnvelope<A, M>,
    {
        self.obs.room(M::NAME).await;
        self.obs.count_in();
        let result = self.addr.send(msg).await;
        if matches!(result, Err(MailboxError::Closed)) {
            // Never queued, or queued in a mailbox that is gone: either way not handled.
            self.obs.count_back_out();
        }
        result
    }

    /// Queues without waiting; refuses (and counts) when the mailbox is full or closed.
    pub fn try_send<M>(&self, msg: M) -> Result<(), TrySendError<M>>
    where
        M: ObservedMessage + Send + 'static,
        M::Result: Send,
        A: Handler<M>,
        A::Context: ToEnvelope<A, M>,
    {
        if self.obs.is_full() {
            self.obs.refused(M::NAME, "full");
            return Err(TrySendError::Full(msg));
        }
        self.obs.count_in();
        match self.addr.try_send(msg) {
            Ok(()) => Ok(()),
            Err(SendError::Full(msg)) => {
                self.obs.count_back_out();
                self.obs.refused(M::NAME, "full");
                Err(TrySendError::Full(msg))
            }
            Err(SendError::Closed(msg)) => {
                self.obs.count_back_out();
                self.obs.refused(M::NAME, "closed");
                Err(TrySendError::Closed(msg))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_sample_logs_powers_of_two_then_every_1024th() {
        let sample = LogSample::new();
        let logged: Vec<u64> = (0..5000).filter_map(|_| sample.hit()).collect();
        assert_eq!(
            logged,
            [
                1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 3072, 4096
            ]
        );
    }

    const CAPACITY: usize = 2;

    /// Handles `Work` only after `Release` opened its gate, so messages pile up.
    struct Gated {
        obs: ActorObs,
        gate: Option<tokio::sync::oneshot::Receiver<()>>,
    }

    impl Actor for Gated {
        type Context = Context<Self>;
        fn started(&mut self, ctx: &mut Context<Self>) {
            ctx.set_mailbox_capacity(CAPACITY);
            if let Some(gate) = self.gate.take() {
                // Block the mailbox until the test opens the gate.
                ctx.wait(
                    async move {
                        let _ = gate.await;
                    }
                    .into_actor(self),
                );
            }
        }
    }

    #[derive(Debug, Message)]
    #[rtype(result = "u32")]
    struct Work(u32);
    impl ObservedMessage for Work {
        const NAME: &'static str = "work";
    }

    impl Handler<Work> for Gated {
        type Result = u32;
        fn handle(&mut self, msg: Work, _: &mut Context<Self>) -> u32 {
            let _guard = self.obs.enter(Work::NAME);
            msg.0 * 2
        }
    }

    fn setup() -> (
        ActorMetrics,
        InstrumentedAddr<Gated>,
        tokio::sync::oneshot::Sender<()>,
    ) {
        let registry = Registry::new();
        let metrics = ActorMetrics::register(&registry).expect("register");
        let obs = metrics.actor("gated", CAPACITY);
        let (open, gate) = tokio::sync::oneshot::channel();
        let actor_obs = obs.clone();
        let addr = Gated::create(move |_| Gated {
            obs: actor_obs,
            gate: Some(gate),
        });
        (metrics, InstrumentedAddr::new(addr, obs), open)
    }

    #[actix_rt::test]
    async fn depth_rises_on_queue_and_falls_after_handling() {
        let (metrics, addr, open) = setup();
        let a = addr.clone();
        let first = actix_rt::spawn(async move { a.send(Work(1)).await });
        let b = addr.clone();
        let second = actix_rt::spawn(async move { b.send(Work(2)).await });
        for _ in 0..100 {
            if addr.obs().depth() == 2 {
                break;
            }
            actix_rt::task::yield_now().await;
        }
        assert_eq!(addr.obs().depth(), 2);
        assert_eq!(metrics.mailbox_depth("gated"), 2);
        open.send(()).expect("open gate");
        assert_eq!(first.await.expect("join").expect("send"), 2);
        assert_eq!(second.await.expect("join").expect("send"), 4);
        assert_eq!(addr.obs().depth(), 0);
        assert_eq!(metrics.mailbox_depth("gated"), 0);
        assert_eq!(metrics.handled("gated", "work"), 2);
    }

    #[actix_rt::test]
    async fn try_send_on_a_full_mailbox_is_refused_and_counted() {
        let (metrics, addr, open) = setup();
        assert!(addr.try_send(Work(1)).is_ok());
        assert!(addr.try_send(Work(2)).is_ok());
        match addr.try_send(Work(3)) {
            Err(TrySendError::Full(Work(3))) => {}
            other => panic!("expected Full, got {other:?}"),
        }
        assert_eq!(metrics.refused("gated", "work"), 1);
        assert_eq!(metrics.mailbox_depth("gated"), 2);

        // A send on the full mailbox waits for room, and the wait is recorded.
        let a = addr.clone();
        let waiting = actix_rt::spawn(async move { a.send(Work(4)).await });
        actix_rt::task::yield_now().await;
        open.send(()).expect("open gate");
        assert_eq!(waiting.await.expect("join").expect("send"), 8);
        assert_eq!(metrics.full_mailbox_waits("gated", "work"), 1);
        assert_eq!(metrics.handled("gated", "work"), 3);
        assert_eq!(metrics.mailbox_depth("gated"), 0);
    }

    /// Stops itself on `Crash`; the Supervisor restarts it with the same struct.
    struct Crashy {
        obs: ActorObs,
        handled: u32,
    }
    impl Actor for Crashy {
        type Context = Context<Self>;
    }
    impl Supervised for Crashy {
        fn restarting(&mut self, _: &mut Context<Self>) {
            self.obs.restarted("stopped");
        }
    }
    #[derive(Debug, Message)]
    #[rtype(result = "u32")]
    struct Crash;
    impl ObservedMessage for Crash {
        const NAME: &'static str = "crash";
    }
    impl Handler<Crash> for Crashy {
        type Result = u32;
        fn handle(&mut self, _: Crash, ctx: &mut Context<Self>) -> u32 {
            let _guard = self.obs.enter(Crash::NAME);
            self.handled += 1;
            ctx.stop();
            self.handled
        }
    }

    #[actix_rt::test]
    async fn supervised_restarts_are_counted_and_keep_the_address_and_state() {
        let registry = Registry::new();
        let metrics = ActorMetrics::register(&registry).expect("register");
        let obs = metrics.actor("crashy", 4);
        let actor_obs = obs.clone();
        let addr = InstrumentedAddr::new(
            Supervisor::start(move |_| Crashy {
                obs: actor_obs,
                handled: 0,
            }),
            obs,
        );
        for expected in 1..=3 {
            assert_eq!(addr.send(Crash).await.expect("restarted"), expected);
        }
        // The third stop's restart happens after its answer; give it a turn.
        for _ in 0..10 {
            actix_rt::task::yield_now().await;
        }
        assert_eq!(metrics.restarts("crashy", "stopped"), 3);
        assert_eq!(metrics.handled("crashy", "crash"), 3);
        assert_eq!(metrics.mailbox_depth("crashy"), 0);
    }

    #[test]
    fn registering_twice_on_one_registry_fails_and_on_two_works() {
        let registry = Registry::new();
        assert!(ActorMetrics::register(&registry).is_ok());
        assert!(ActorMetrics::register(&registry).is_err());
        assert!(ActorMetrics::register(&Registry::new()).is_ok());
    }
}
