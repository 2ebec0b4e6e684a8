//! A minimal firehose and HTTP client for the simulator tests: what the relay's Subscriber and
//! resolver will do, without their policies. Every wait is bounded.

use std::pin::Pin;
use std::time::Duration;

use awc::error::WsProtocolError;
use awc::ws;
use bytes::Bytes;
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use rookery::atproto::did_doc::{Identity, parse_did_document};
use rookery::atproto::frame::MAX_FRAME_BYTES;

/// How long a test waits for any one message.
pub const WAIT: Duration = Duration::from_secs(10);

pub fn http_client() -> awc::Client {
    rookery::sim::install_crypto_provider();
    awc::Client::builder().timeout(WAIT).finish()
}

/// A client whose TLS connections use `tls` (its roots, its ALPN).
pub fn tls_client(tls: std::sync::Arc<rustls::ClientConfig>) -> awc::Client {
    rookery::sim::install_crypto_provider();
    awc::Client::builder()
        .connector(awc::Connector::new().rustls_0_23(tls))
        .timeout(WAIT)
        .finish()
}

/// What the next read from a firehose gave.
#[derive(Debug)]
pub enum Incoming {
    Binary(Bytes),
    Close(Option<ws::CloseReason>),
    Pong(Bytes),
    /// The connection ended without a close frame, or failed.
    Ended,
    /// Nothing arrived within the wait.
    Silent,
}

type FrameStream = Pin<Box<dyn Stream<Item = Result<ws::Frame, WsProtocolError>>>>;
type MessageSink = Pin<Box<dyn Sink<ws::Message, Error = WsProtocolError>>>;

pub struct Firehose {
    frames: FrameStream,
    sink: MessageSink,
    /// The `Server` header of the upgrade response.
    pub server_header: Option<String>,
}

/// Connects to `url` with the 5 MB frame limit a relay uses.
pub async fn connect(url: &str) -> Result<Firehose, awc::error::WsClientError> {
    connect_with(&http_client(), url).await
}

/// [`connect`] with `client`.
pub async fn connect_with(
    client: &awc::Client,
    url: &str,
) -> Result<Firehose, awc::error::WsClientError> {
    let (response, framed) = client
        .ws(url)
        .max_frame_size(MAX_FRAME_BYTES)
        .connect()
        .await?;
    let server_header = response
        .headers()
        .get("server")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let (sink, frames) = framed.split();
    Ok(Firehose {
        frames: Box::pin(frames),
        sink: Box::pin(sink),
        server_header,
    })
}

/// `<host ws url>?cursor=<cursor>`.
pub fn with_cursor(url: &str, cursor: u64) -> String {
    format!("{url}?cursor={cursor}")
}

impl Firehose {
    /// The next message, waiting at most `within`; pings are skipped.
    pub async fn next_within(&mut self, within: Duration) -> Incoming {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.frames.next()).await {
                Err(_) => return Incoming::Silent,
                Ok(None) | Ok(Some(Err(_))) => return Incoming::Ended,
                Ok(Some(Ok(ws::Frame::Binary(bytes)))) => return Incoming::Binary(bytes),
                Ok(Some(Ok(ws::Frame::Close(reason)))) => return Incoming::Close(reason),
                Ok(Some(Ok(ws::Frame::Pong(payload)))) => return Incoming::Pong(payload),
                Ok(Some(Ok(_))) => continue,
            }
        }
    }

    /// The next binary message; panics on anything else.
    pub async fn next_binary(&mut self) -> Bytes {
        match self.next_within(WAIT).await {
            Incoming::Binary(bytes) => bytes,
            other => panic!("expected a binary frame, got {other:?}"),
        }
    }

    /// `n` binary messages.
    pub async fn take(&mut self, n: usize) -> Vec<Bytes> {
        let mut frames = Vec::with_capacity(n);
        for _ in 0..n {
            frames.push(self.next_binary().await);
        }
        frames
    }

    /// Sends a websocket message (the server must ignore it).
    pub async fn send(&mut self, message: ws::Message) {
        self.sink.send(message).await.expect("send to the host");
    }
}

/// `GET <url>`: status and body.
pub async fn get(url: &str) -> (u16, Bytes) {
    let mut response = http_client().get(url).send().await.expect("HTTP request");
    let body = response.body().await.expect("HTTP body");
    (response.status().as_u16(), body)
}

/// Resolves `did` at the PLC as a relay will: `GET <plc>/<did>`, parsed by the relay's parser.
pub async fn resolve(plc_url: &str, did: &str) -> Identity {
    let (status, body) = get(&format!("{plc_url}/{did}")).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    parse_did_document(did, &body).expect("the relay's parser accepts the document")
}

pub fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_micros() as u64
}
