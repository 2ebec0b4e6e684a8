//! A firehose over a real event log in a temp dir, served on 127.0.0.1, and the clients that
//! read it: an awc websocket client (answers pings, as real consumers do) and a raw one with
//! a tiny receive buffer that can stop reading on demand.

use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use actix_web::dev::ServerHandle;
use awc::error::WsProtocolError;
use awc::ws;
use bytes::Bytes;
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use prometheus::Registry;
use rookery::actors::firehose::{Firehose, FirehoseSettings, start_firehose};
use rookery::actors::obs::ActorMetrics;
use rookery::atproto::frame::{self, Frame, IdentityEvent, MAX_FRAME_BYTES};
use rookery::http::{self, ListenerSettings};
use rookery::store::event_log::{
    AppendRecord, EventLog, EventLogConfig, EventLogReader, LogRecord, did_hash,
};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;

/// How long a test waits for any one message.
pub const WAIT: Duration = Duration::from_secs(15);

/// Small segments, so replays cross many of them.
pub fn small_segments(config: &mut EventLogConfig) {
    config.segment_max_bytes = 16 * 1024;
    config.index_interval_bytes = 1024;
}

/// An `#identity` frame for `seq` and `did`, padded with a long handle to `pad` bytes.
pub fn frame_for(seq: u64, did: &str, pad: usize) -> Bytes {
    let handle = if pad > 0 {
        format!("h{seq}.{}.example.com", "a".repeat(pad))
    } else {
        format!("h{seq}.example.com")
    };
    Bytes::from(
        frame::encode_frame(&Frame::Identity(IdentityEvent {
            seq: seq as i64,
            did: did.to_string(),
            time: "2026-01-01T00:00:00.000Z".to_string(),
            handle: Some(handle),
        }))
        .expect("encodes"),
    )
}

/// The seq inside a frame (`None` for `#info` and error frames).
pub fn seq_of(frame: &[u8]) -> Option<u64> {
    frame::peek_event(frame).expect("a valid frame").seq
}

/// `(op, t)` of a frame's header.
pub fn header_of(frame: &[u8]) -> (i64, Option<String>) {
    let header = frame::decode_header(frame).expect("a valid frame");
    (header.op, header.t.map(str::to_string))
}

/// The body of an error or info frame as `(error or name, message)`.
pub fn error_name(frame: &Bytes) -> String {
    match frame::decode_frame(frame).expect("decodes") {
        Frame::Error(e) => e.error,
        Frame::Info(i) => i.name,
        other => panic!("not an error or info frame: {other:?}"),
    }
}

/// A firehose over a log this harness appends to directly (the Persister's role: append,
/// then announce the durable head).
pub struct Harness {
    pub dir: TempDir,
    pub log: EventLog,
    head: watch::Sender<u64>,
    pub firehose: Firehose,
    pub addr: SocketAddr,
    server: ServerHandle,
    pub pad: usize,
    /// Seqs to leave out before the next append (gaps, as dropped events leave them).
    gap: u64,
}

impl Harness {
    /// Must run inside an actix system (`#[actix_rt::test]`).
    pub fn start(
        settings: FirehoseSettings,
        configure_log: impl FnOnce(&mut EventLogConfig),
    ) -> Harness {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = EventLogConfig::new(dir.path());
        configure_log(&mut config);
        let log = EventLog::open(config).expect("open log").0;
        Self::with_log(dir, log, settings)
    }

    pub fn with_log(dir: TempDir, log: EventLog, settings: FirehoseSettings) -> Harness {
        let (head, head_rx) = watch::channel(log.durable_head());
        let registry = Registry::new();
        let actor_metrics = ActorMetrics::register(&registry).expect("metrics");
        let firehose = start_firehose(log.reader(), head_rx, settings, &actor_metrics, &registry)
            .expect("start firehose");
        let (server, addrs) = serve(&firehose);
        Harness {
            dir,
            log,
            head,
            firehose,
            addr: addrs,
            server,
            pad: 0,
            gap: 0,
        }
    }

    /// Appends one batch, one event per DID, and announces the head. Returns the seqs.
    pub fn append(&mut self, dids: &[&str]) -> Vec<u64> {
        let first = self.log.next_seq() + std::mem::take(&mut self.gap);
        let batch: Vec<AppendRecord> = dids
            .iter()
            .enumerate()
            .map(|(i, did)| {
                let seq = first + i as u64;
                AppendRecord {
                    seq,
                    kind: 2,
                    did_hash: did_hash(did),
                    body: frame_for(seq, did, self.pad),
                }
            })
            .collect();
        let head = self.log.append(&batch).expect("append");
        self.head.send_replace(head);
        batch.iter().map(|r| r.seq).collect()
    }

    /// Leaves `n` seqs out before the next append.
    pub fn leave_gap(&mut self, n: u64) {
        self.gap = n;
    }

    /// Appends `n` events of one DID in batches of `batch`.
    pub fn append_n(&mut self, n: usize, batch: usize, did: &str) -> Vec<u64> {
        let mut seqs = Vec::with_capacity(n);
        while seqs.len() < n {
            let k = batch.min(n - seqs.len());
            seqs.extend(self.append(&vec![did; k]));
        }
        seqs
    }

    pub fn reader(&self) -> EventLogReader {
        self.log.reader()
    }

    pub fn url(&self, query: &str) -> String {
        let path = "/xrpc/com.atproto.sync.subscribeRepos";
        if query.is_empty() {
            format!("ws://{}{path}", self.addr)
        } else {
            format!("ws://{}{path}?{query}", self.addr)
        }
    }

    pub fn http_url(&self, query: &str) -> String {
        self.url(query).replacen("ws://", "http://", 1)
    }

    /// Waits until the Broadcaster published `seq`.
    pub async fn published(&self, seq: u64) {
        let ok = eventually(WAIT, || async { self.firehose.head() >= seq }).await;
        assert!(ok, "head {} never reached {seq}", self.firehose.head());
    }

    pub async fn stop(self) {
        self.firehose.shutdown(Duration::from_secs(5)).await;
        self.server.stop(false).await;
    }
}

/// Serves the firehose's routes on an ephemeral loopback port (two workers).
pub fn serve(firehose: &Firehose) -> (ServerHandle, SocketAddr) {
    let (server, addrs) = http::start_public(
        "127.0.0.1:0".parse().expect("addr"),
        ListenerSettings::new(2, Duration::from_secs(1)),
        rookery::http::subscribe_repos::routes(firehose),
    )
    .expect("bind");
    let handle = server.handle();
    actix_rt::spawn(server);
    (handle, addrs[0])
}

/// Every record after `cursor` the log holds now.
pub fn log_seqs(reader: &EventLogReader, cursor: u64) -> Vec<u64> {
    read_all(reader, cursor).iter().map(|r| r.seq).collect()
}

pub fn read_all(reader: &EventLogReader, cursor: u64) -> Vec<LogRecord> {
    // `0` means the whole retained window, as for consumers.
    let mut replay = if cursor == 0 {
        reader.read_from_oldest()
    } else {
        reader.read_after(cursor).expect("replay")
    };
    let mut all = Vec::new();
    for _ in 0..1_000_000 {
        let batch = replay.next_batch(1024, 1 << 20).expect("read");
        if batch.is_empty() {
            return all;
        }
        all.extend(batch);
    }
    panic!("replay did not terminate");
}

pub use crate::common::wait::eventually;

// ------------------------------------------------------------------------------------------
// awc client

/// What the next read gave.
#[derive(Debug)]
pub enum Incoming {
    Binary(Bytes),
    Close(Option<ws::CloseReason>),
    /// The connection ended without a close frame, or failed.
    Ended,
    /// Nothing arrived within the wait.
    Silent,
}

type FrameStream = Pin<Box<dyn Stream<Item = Result<ws::Frame, WsProtocolError>>>>;
type MessageSink = Pin<Box<dyn Sink<ws::Message, Error = WsProtocolError>>>;

/// A consumer on awc that answers pings.
pub struct Consumer {
    frames: FrameStream,
    sink: MessageSink,
}

pub fn http_client() -> awc::Client {
    rookery::sim::install_crypto_provider();
    awc::Client::builder().timeout(WAIT).finish()
}

pub async fn connect(url: &str) -> Consumer {
    try_connect(url).await.expect("websocket upgrade")
}

pub async fn try_connect(url: &str) -> Result<Consumer, awc::error::WsClientError> {
    let (_, framed) = http_client()
        .ws(url)
        .max_frame_size(MAX_FRAME_BYTES)
        .header("User-Agent", "firehose-test/1")
        .connect()
        .await?;
    let (sink, frames) = framed.split();
    Ok(Consumer {
        frames: Box::pin(frames),
        sink: Box::pin(sink),
    })
}

impl Consumer {
    /// The next message within `within`; pings are answered and skipped.
    pub async fn next_within(&mut self, within: Duration) -> Incoming {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.frames.next()).await {
                Err(_) => return Incoming::Silent,
                Ok(None) | Ok(Some(Err(_))) => return Incoming::Ended,
                Ok(Some(Ok(ws::Frame::Binary(bytes)))) => return Incoming::Binary(bytes),
                Ok(Some(Ok(ws::Frame::Close(reason)))) => return Incoming::Close(reason),
                Ok(Some(Ok(ws::Frame::Ping(payload)))) => {
                    let _ = self.sink.send(ws::Message::Pong(payload)).await;
                }
                Ok(Some(Ok(_))) => continue,
            }
        }
    }

    pub async fn next_binary(&mut self) -> Bytes {
        match self.next_within(WAIT).await {
            Incoming::Binary(bytes) => bytes,
            other => panic!("expected a binary frame, got {other:?}"),
        }
    }

    /// Reads event frames until `last` arrives; returns their seqs. Panics on a seq that
    /// does not increase (a duplicate or reorder) or on anything but an event frame.
    pub async fn seqs_through(&mut self, last: u64) -> Vec<u64> {
        let mut seqs: Vec<u64> = Vec::new();
        while seqs.last().is_none_or(|s| *s < last) {
            let frame = self.next_binary().await;
            let seq =
                seq_of(&frame).unwrap_or_else(|| panic!("not an event: {:?}", header_of(&frame)));
            if let Some(prev) = seqs.last() {
                assert!(seq > *prev, "seq {seq} after {prev}");
            }
            seqs.push(seq);
        }
        seqs
    }

    /// Expects nothing for `within`.
    pub async fn assert_silent(&mut self, within: Duration) {
        match self.next_within(within).await {
            Incoming::Silent => {}
            other => panic!("expected silence, got {other:?}"),
        }
    }

    pub async fn send(&mut self, message: ws::Message) {
        self.sink.send(message).await.expect("send");
    }
}

/// `GET`/`POST` status of a plain HTTP request.
pub async fn http_status(method: awc::http::Method, url: &str) -> (u16, serde_json::Value) {
    let mut response = http_client()
        .request(method, url)
        .send()
        .await
        .expect("HTTP request");
    let body = response.body().await.expect("body");
    let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    (response.status().as_u16(), json)
}

/// The status of a websocket upgrade that the server refuses.
pub async fn refused_upgrade(url: &str) -> (u16, serde_json::Value) {
    match try_connect(url).await {
        Ok(_) => panic!("upgrade to {url} was accepted"),
        Err(awc::error::WsClientError::InvalidResponseStatus(status)) => {
            (status.as_u16(), serde_json::Value::Null)
        }
        Err(e) => panic!("unexpected upgrade error {e}"),
    }
}

// ------------------------------------------------------------------------------------------
// Raw client

/// A websocket client on a socket with a tiny receive buffer: it reads only when asked, so
/// a test can make it stop draining, and it never answers pings by itself.
pub struct RawConsumer {
    stream: TcpStream,
    buf: Vec<u8>,
}

/// One message as read by [`RawConsumer`].
#[derive(Debug, PartialEq, Eq)]
pub enum RawMessage {
    Binary(Vec<u8>),
    Ping,
    Close(Option<u16>),
    Other(u8),
    Ended,
}

impl RawConsumer {
    pub async fn connect(addr: SocketAddr, query: &str) -> RawConsumer {
        let socket = TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(4096).expect("rcvbuf");
        let mut stream = socket.connect(addr).await.expect("connect");
        let path = if query.is_empty() {
            "/xrpc/com.atproto.sync.subscribeRepos".to_string()
        } else {
            format!("/xrpc/com.atproto.sync.subscribeRepos?{query}")
        };
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream
            .write_all(request.as_bytes())
            .await
            .expect("handshake");
        let mut raw = RawConsumer {
            stream,
            buf: Vec::new(),
        };
        let head_end = loop {
            if let Some(i) = raw.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            assert!(raw.fill().await, "connection ended during the handshake");
        };
        let head = String::from_utf8_lossy(&raw.buf[..head_end]).into_owned();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        raw.buf.drain(..head_end);
        raw
    }

    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        match tokio::time::timeout(WAIT, self.stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            _ => false,
        }
    }

    /// The next whole message (server frames are unmasked and, here, never fragmented).
    pub async fn next(&mut self) -> RawMessage {
        loop {
            if let Some((msg, used)) = parse_frame(&self.buf) {
                self.buf.drain(..used);
                return msg;
            }
            if !self.fill().await {
                return RawMessage::Ended;
            }
        }
    }

    /// Writes raw bytes to the socket (frames the client builds itself).
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes).await;
    }

    pub async fn pong(&mut self) {
        // Client frames are masked (zero mask: the payload is unchanged).
        let _ = self.stream.write_all(&[0x8a, 0x80, 0, 0, 0, 0]).await;
    }
}

fn parse_frame(buf: &[u8]) -> Option<(RawMessage, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let opcode = buf[0] & 0x0f;
    let (len, mut at) = match buf[1] & 0x7f {
        126 => (u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?]) as usize, 4),
        127 => {
            let b: [u8; 8] = buf.get(2..10)?.try_into().ok()?;
            (u64::from_be_bytes(b) as usize, 10)
        }
        n => (n as usize, 2),
    };
    if buf[1] & 0x80 != 0 {
        at += 4;
    }
    let payload = buf.get(at..at + len)?;
    let msg = match opcode {
        0x2 => RawMessage::Binary(payload.to_vec()),
        0x9 => RawMessage::Ping,
        0x8 => RawMessage::Close(
            (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]])),
        ),
        other => RawMessage::Other(other),
    };
    Some((msg, at + len))
}
