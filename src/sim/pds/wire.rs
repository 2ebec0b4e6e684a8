//! The host's HTTP surface: the actix-web server, `subscribeRepos` sessions (replay, live,
//! pings, slow clients, dropped connections), `describeServer` and `getRepoStatus`. Nothing a
//! client sends can make these panic: bad query parameters get XRPC errors, client frames
//! are size-capped and ignored, and every send is bounded in time.
//!
//! With TLS, each accepted connection goes through actix-http's rustls acceptor first (what
//! `HttpServer` does for `bind_rustls`): the handshake runs in the connection's task, bounded
//! by the acceptor's timeout (3 s), so a client that never finishes it holds up no one. The
//! acceptor offers `h2` and `http/1.1` by ALPN, as a real PDS's TLS front end does.

use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use actix_http::HttpService;
use actix_rt::ArbiterHandle;
use actix_rt::net::TcpStream;
use actix_service::{Service, ServiceFactory, map_config};
use actix_web::body::BoxBody;
use actix_web::dev::{AppConfig, ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderValue, SERVER};
use actix_web::{HttpRequest, HttpResponse, web};
use actix_ws::{CloseCode, CloseReason, Message, MessageStream, Session};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::{broadcast, oneshot, watch};

use super::host_state::Subscription;
use super::{PdsShared, RELAY_SERVER_HEADER, USER_DOMAIN};
use crate::atproto::frame::{
    CONSUMER_TOO_SLOW, FUTURE_CURSOR, OUTDATED_CURSOR, encode_error, encode_info,
};

/// Largest frame a client may send (clients have nothing to say; this only bounds memory).
const MAX_CLIENT_FRAME_BYTES: usize = 64 * 1024;

pub(super) enum Listen {
    Listener(std::net::TcpListener),
    Port(u16),
}

/// Threads that run every host's accept loop and connections in this process (see the
/// `pds` module doc, **Runtime**).
const WORKER_THREADS: usize = 2;
/// Zero: a finished or dropped session closes its socket at once, as a dying PDS's does,
/// instead of lingering a second for the client to hang up.
const CLIENT_DISCONNECT_TIMEOUT: Duration = Duration::ZERO;
/// How long [`Serving::stop`] waits for the accept loop to close the port.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// The shared workers: one actix System per thread, each idle until a host's accept loop is
/// handed to it. Started on first use and kept for the process's life, independent of the
/// caller's System (tests make one System per test).
struct Workers {
    arbiters: Vec<ArbiterHandle>,
    next: AtomicUsize,
}

static WORKERS: OnceLock<Result<Workers, String>> = OnceLock::new();

fn workers() -> std::io::Result<&'static Workers> {
    WORKERS
        .get_or_init(start_workers)
        .as_ref()
        .map_err(|e| std::io::Error::other(e.clone()))
}

fn start_workers() -> Result<Workers, String> {
    let mut arbiters = Vec::with_capacity(WORKER_THREADS);
    for index in 0..WORKER_THREADS {
        let (handle_tx, handle_rx) = std::sync::mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name(format!("sim-pds-{index}"))
            .spawn(move || {
                actix_rt::System::new().block_on(async move {
                    let _ = handle_tx.send(actix_rt::Arbiter::current());
                    std::future::pending::<()>().await;
                });
            })
            .map_err(|e| format!("starting a simulator worker thread: {e}"))?;
        arbiters.push(
            handle_rx
                .recv()
                .map_err(|_| "a simulator worker thread died at start".to_string())?,
        );
    }
    Ok(Workers {
        arbiters,
        next: AtomicUsize::new(0),
    })
}

/// A host's running accept loop.
pub(super) struct Serving {
    stop: watch::Sender<bool>,
    closed: oneshot::Receiver<()>,
}

impl Serving {
    /// Closes the port and ends every connection of the host; returns once the listener is
    /// closed (or after [`STOP_TIMEOUT`]).
    pub(super) async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(STOP_TIMEOUT, self.closed).await;
    }
}

/// Binds the host's port (on the caller's thread, so a bind error is the caller's) and
/// hands its accept loop to one of the shared workers, round robin.
pub(super) fn serve(shared: &Arc<PdsShared>, listen: Listen) -> std::io::Result<Serving> {
    let listener = match listen {
        Listen::Listener(listener) => listener,
        Listen::Port(port) => std::net::TcpListener::bind(("127.0.0.1", port))?,
    };
    listener.set_nonblocking(true)?;
    let workers = workers()?;
    let index = workers.next.fetch_add(1, Ordering::Relaxed) % workers.arbiters.len();
    let (stop_tx, stop_rx) = watch::channel(false);
    let (closed_tx, closed_rx) = oneshot::channel();
    let shared = shared.clone();
    let spawned = workers.arbiters[index].spawn_fn(move || {
        actix_rt::spawn(accept_loop(listener, shared, stop_rx, closed_tx));
    });
    if !spawned {
        return Err(std::io::Error::other("the simulator worker thread is gone"));
    }
    Ok(Serving {
        stop: stop_tx,
        closed: closed_rx,
    })
}

/// The host's routes.
fn host_app(
    shared: Arc<PdsShared>,
) -> actix_web::App<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<BoxBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    actix_web::App::new()
        .app_data(web::Data::from(shared))
        .route(
            "/xrpc/com.atproto.sync.subscribeRepos",
            web::get().to(subscribe_repos),
        )
        .route(
            "/xrpc/com.atproto.server.describeServer",
            web::get().to(describe_server),
        )
        .route(
            "/xrpc/com.atproto.sync.getRepoStatus",
            web::get().to(get_repo_status),
        )
        .default_service(web::to(crate::http::not_found))
}

/// Serves the host's app on its connections, over TLS when the host has a certificate.
async fn accept_loop(
    listener: std::net::TcpListener,
    shared: Arc<PdsShared>,
    stop: watch::Receiver<bool>,
    closed: oneshot::Sender<()>,
) {
    let tls = shared.config.tls.as_ref().map(|tls| tls.server_config());
    let app = map_config(host_app(shared), |_| AppConfig::default());
    // The builder's stream type differs (TCP or TLS), hence one builder per arm.
    match tls {
        None => {
            let http = HttpService::build()
                .client_disconnect_timeout(CLIENT_DISCONNECT_TIMEOUT)
                .finish(app)
                .tcp();
            serve_connections(listener, http, stop, closed).await
        }
        Some(config) => {
            let https = HttpService::build()
                .client_disconnect_timeout(CLIENT_DISCONNECT_TIMEOUT)
                .finish(app)
                .rustls_0_23(config);
            serve_connections(listener, https, stop, closed).await
        }
    }
}

/// Accepts the host's connections and serves each with `factory`'s service until the host
/// stops; then drops the listener (the port refuses connections) and every connection of
/// this loop.
async fn serve_connections<F>(
    listener: std::net::TcpListener,
    factory: F,
    mut stop: watch::Receiver<bool>,
    closed: oneshot::Sender<()>,
) where
    F: ServiceFactory<TcpStream, Config = (), Response = ()>,
    F::Service: 'static,
{
    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
        return;
    };
    let Ok(service) = factory.new_service(()).await else {
        return;
    };
    let service = Rc::new(service);
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let service = service.clone();
                    let mut stop = stop.clone();
                    actix_rt::spawn(async move {
                        tokio::select! {
                            _ = service.call(stream) => {}
                            _ = stop.changed() => {}
                        }
                    });
                }
                // Out of file descriptors and the like: back off instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
        }
    }
    drop(listener);
    let _ = closed.send(());
}

fn xrpc_error(status: actix_web::http::StatusCode, error: &str, message: &str) -> HttpResponse {
    HttpResponse::build(status).json(serde_json::json!({ "error": error, "message": message }))
}

/// The value of query parameter `name`, if present.
fn query_param(req: &HttpRequest, name: &str) -> Option<String> {
    url::form_urlencoded::parse(req.query_string().as_bytes())
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.into_owned())
}

/// `GET /xrpc/com.atproto.sync.subscribeRepos[?cursor=N]`.
async fn subscribe_repos(
    req: HttpRequest,
    body: web::Payload,
    host: web::Data<PdsShared>,
) -> Result<HttpResponse, actix_web::Error> {
    let cursor = match query_param(&req, "cursor").map(|c| c.parse::<u64>()) {
        None => None,
        Some(Ok(cursor)) => Some(cursor),
        Some(Err(_)) => {
            return Ok(xrpc_error(
                actix_web::http::StatusCode::BAD_REQUEST,
                "InvalidRequest",
                "cursor must be a non-negative integer",
            ));
        }
    };
    let (mut response, session, stream) = actix_ws::handle(&req, body)?;
    if host.relay_header.load(Ordering::Relaxed) {
        response
            .headers_mut()
            .insert(SERVER, HeaderValue::from_static(RELAY_SERVER_HEADER));
    }
    let subscription = host.state().subscribe(cursor);
    if host.accept_then_drop.load(Ordering::Relaxed) {
        // The upgrade is answered, the session dropped: the connection ends before a frame.
        return Ok(response);
    }
    actix_rt::spawn(run_session(
        session,
        stream,
        subscription,
        host.clone().into_inner(),
    ));
    Ok(response)
}

/// What a session sends next.
enum Outgoing {
    Frame(Bytes),
    /// The connection fell further behind than the live ring holds.
    TooSlow,
    /// The host dropped its connections.
    Dropped,
}

/// The backlog first, then live frames. Cancel-safe: popping the backlog completes at once
/// and `broadcast::Receiver::recv` loses nothing when cancelled.
async fn next_outgoing(
    backlog: &mut VecDeque<Bytes>,
    live: &mut broadcast::Receiver<Bytes>,
) -> Outgoing {
    // A dropped connection must end even in the middle of a long replay.
    if live.is_closed() {
        return Outgoing::Dropped;
    }
    if let Some(frame) = backlog.pop_front() {
        return Outgoing::Frame(frame);
    }
    match live.recv().await {
        Ok(frame) => Outgoing::Frame(frame),
        Err(broadcast::error::RecvError::Lagged(_)) => Outgoing::TooSlow,
        Err(broadcast::error::RecvError::Closed) => Outgoing::Dropped,
    }
}

/// Sends an error frame and closes with 1008 and the error name, as the reference PDS does.
async fn close_with_error(mut session: Session, error: &str, message: &str, timeout: Duration) {
    let Ok(frame) = encode_error(error, Some(message)) else {
        return;
    };
    if !matches!(
        tokio::time::timeout(timeout, session.binary(frame)).await,
        Ok(Ok(()))
    ) {
        return;
    }
    let reason = CloseReason {
        code: CloseCode::Policy,
        description: Some(error.to_string()),
    };
    let _ = tokio::time::timeout(timeout, session.close(Some(reason))).await;
}

/// One `subscribeRepos` connection: replay, then live; answers pings, ignores everything
/// else the client sends, and ends when the client goes, the host drops it, or a send stalls.
async fn run_session(
    mut session: Session,
    stream: MessageStream,
    subscription: Subscription,
    host: Arc<PdsShared>,
) {
    let send_timeout = host.config.send_timeout;
    let (outdated, backlog, mut live) = match subscription {
        Subscription::FutureCursor => {
            close_with_error(
                session,
                FUTURE_CURSOR,
                "cursor is ahead of the stream",
                send_timeout,
            )
            .await;
            return;
        }
        Subscription::Stream {
            outdated,
            backlog,
            live,
        } => (outdated, backlog, live),
    };
    let mut backlog = VecDeque::from(backlog);
    if outdated
        && let Ok(info) = encode_info(OUTDATED_CURSOR, Some("cursor is older than the outbox"))
    {
        backlog.push_front(Bytes::from(info));
    }
    let mut stream = stream.max_frame_size(MAX_CLIENT_FRAME_BYTES);
    loop {
        let outgoing = tokio::select! {
            incoming = stream.next() => match incoming {
                Some(Ok(Message::Ping(payload))) => {
                    match tokio::time::timeout(send_timeout, session.pong(&payload)).await {
                        Ok(Ok(())) => continue,
                        _ => return,
                    }
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                // A server ignores what the client sends (PROTOCOL.md §1).
                Some(Ok(_)) => continue,
            },
            outgoing = next_outgoing(&mut backlog, &mut live) => outgoing,
        };
        match outgoing {
            Outgoing::Frame(frame) => {
                let delay = host.frame_delay_micros.load(Ordering::Relaxed);
                if delay > 0 {
                    tokio::time::sleep(Duration::from_micros(delay)).await;
                }
                if !matches!(
                    tokio::time::timeout(send_timeout, session.binary(frame)).await,
                    Ok(Ok(()))
                ) {
                    return;
                }
            }
            Outgoing::TooSlow => {
                close_with_error(
                    session,
                    CONSUMER_TOO_SLOW,
                    "consumer fell too far behind",
                    send_timeout,
                )
                .await;
                return;
            }
            // Returning drops the session: the connection ends without a close frame, as
            // when a PDS process dies.
            Outgoing::Dropped => return,
        }
    }
}

/// `GET /xrpc/com.atproto.server.describeServer` (with the relay `Server` header while the
/// host plays a relay).
async fn describe_server(host: web::Data<PdsShared>) -> HttpResponse {
    let mut response = HttpResponse::Ok();
    if host.relay_header.load(Ordering::Relaxed) {
        response.insert_header((SERVER, RELAY_SERVER_HEADER));
    }
    response.json(serde_json::json!({
        "did": format!("did:web:localhost%3A{}", host.port),
        "availableUserDomains": [USER_DOMAIN],
    }))
}

/// `GET /xrpc/com.atproto.sync.getRepoStatus?did=`.
async fn get_repo_status(req: HttpRequest, host: web::Data<PdsShared>) -> HttpResponse {
    let Some(did) = query_param(&req, "did") else {
        return xrpc_error(
            actix_web::http::StatusCode::BAD_REQUEST,
            "InvalidRequest",
            "did is required",
        );
    };
    let state = host.state();
    let Some(account) = state.accounts.get(&did) else {
        return xrpc_error(
            actix_web::http::StatusCode::NOT_FOUND,
            "RepoNotFound",
            "no repo for this DID",
        );
    };
    let mut body = serde_json::json!({ "did": did, "active": account.active });
    if let Some(status) = account.status {
        body["status"] = status.as_str().into();
    }
    if let Some(repo_state) = account.repo.as_ref().and_then(|repo| repo.state) {
        body["rev"] = repo_state.rev.to_string().into();
    }
    HttpResponse::Ok().json(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::SimPdsConfig;
    use crate::sim::pds::host_state::HostState;

    fn live_receiver(state: &HostState) -> broadcast::Receiver<Bytes> {
        match state.subscribe(None) {
            Subscription::Stream { live, .. } => live,
            Subscription::FutureCursor => unreachable!("no cursor is never in the future"),
        }
    }

    fn frame(seq: u64) -> Bytes {
        Bytes::from(seq.to_be_bytes().to_vec())
    }

    #[actix_rt::test]
    async fn a_lagging_session_is_too_slow_and_a_replaced_channel_drops_it() {
        let config = SimPdsConfig {
            live_buffer_events: 2,
            ..SimPdsConfig::default()
        };
        let mut state = HostState::new(&config);
        let mut backlog = VecDeque::from([frame(1)]);
        let mut live = live_receiver(&state);
        for seq in 2..=5 {
            state.publish(seq, frame(seq), &config);
        }
        assert!(matches!(
            next_outgoing(&mut backlog, &mut live).await,
            Outgoing::Frame(f) if f == frame(1)
        ));
        assert!(matches!(
            next_outgoing(&mut backlog, &mut live).await,
            Outgoing::TooSlow
        ));

        let mut backlog = VecDeque::from([frame(1)]);
        let mut live = live_receiver(&state);
        state.replace_live_channel(&config);
        assert!(matches!(
            next_outgoing(&mut backlog, &mut live).await,
            Outgoing::Dropped
        ));
    }
}
