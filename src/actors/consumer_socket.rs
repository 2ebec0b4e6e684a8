//! A ConsumerSession's websocket: the upgrade, an outgoing queue of messages already framed
//! for the wire, and the client's messages. Not an actor: the session owns both halves (only
//! it writes to its socket), the 101 response's body drains the queue.
//!
//! Why not actix-ws: its `Session` takes one message per channel send, and its body encodes
//! (copies) every message into a fresh buffer, which actix-http then copies again into the
//! connection's write buffer. A consumer replaying the log moves gigabytes; here a batch of
//! events is one queue entry, each event a few-byte frame header plus the body `Bytes` it
//! already was (a slice of a log block or a ring frame), so the only copy before the
//! kernel's is actix-http's into its write buffer.
//!
//! [`upgrade`] answers the handshake (actix-http's checks) and returns the 101 response, the
//! outgoing half [`WsOut`] and the client's messages [`WsIn`].
//! - [`WsOut`] is one ordered queue, bounded twice: data entries hold permits of a byte budget
//!   and of [`DATA_ENTRIES`] slots until the response body hands their last piece to
//!   actix-http, so a client that stops reading holds at most the budget (waiting for room
//!   *is* the "socket stopped draining" signal); control frames (ping, pong, close, an error
//!   frame) skip the budget and use the room the slots leave in the queue. The body ends after
//!   a close frame.
//! - [`WsIn`] parses client frames with actix-http's `Parser` (masked, at most `max_frame`
//!   bytes, control payloads ≤ 125) and ends when the response body is dropped (the
//!   connection is gone), as actix-ws's stream does.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

pub use actix_http::ws::{CloseCode, CloseReason, ProtocolError};
use actix_http::ws::{OpCode, Parser};
use actix_web::body::{BodySize, BoxBody, MessageBody};
use actix_web::{HttpRequest, HttpResponse, web};
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::Stream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

/// Data entries queued and not yet handed to actix-http, at most.
pub const DATA_ENTRIES: usize = 16;
/// Queue room beyond the data entries, for control frames (one pong, one ping, the error
/// frame and the close are the most a session queues at once).
const CONTROL_ROOM: usize = 16;
/// RFC 6455 §5.5: a control frame's payload is at most 125 bytes.
const MAX_CONTROL_PAYLOAD: usize = 125;

/// The socket is closed (the body was dropped or a close was sent).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("websocket closed")]
pub struct Closed;

/// Accepts the upgrade. `budget_bytes` bounds the bytes of queued data entries;
/// `max_frame` the size of a client frame.
pub fn upgrade(
    req: &HttpRequest,
    payload: web::Payload,
    budget_bytes: usize,
    max_frame: usize,
) -> Result<(HttpResponse, WsOut, WsIn), actix_web::Error> {
    let mut response = actix_http::ws::handshake(req.head())?;
    let (tx, rx) = mpsc::channel(DATA_ENTRIES + CONTROL_ROOM);
    let (gone_tx, gone_rx) = oneshot::channel();
    let body = WsBody {
        rx,
        current: Vec::new().into_iter(),
        current_entry: None,
        ended: false,
        _gone: gone_tx,
    };
    let response: HttpResponse = response.message_body(BoxBody::new(body))?.into();
    let budget_bytes = budget_bytes.max(1);
    let out = WsOut {
        tx,
        budget: Arc::new(Semaphore::new(budget_bytes)),
        budget_bytes,
        slots: Arc::new(Semaphore::new(DATA_ENTRIES)),
    };
    let incoming = WsIn {
        payload: payload.into_inner(),
        buf: BytesMut::new(),
        max_frame,
        gone: gone_rx,
        ended: false,
    };
    Ok((response, out, incoming))
}

// ------------------------------------------------------------------------------------------
// Outgoing

/// Binary messages framed for the wire and not queued yet: per message a header and the
/// message's own bytes (no copy of them).
#[derive(Debug, Default)]
pub struct Framed {
    pieces: Vec<Bytes>,
    bytes: usize,
}

impl Framed {
    /// Frames each of `messages` as one binary message.
    pub fn binary<'a>(messages: impl ExactSizeIterator<Item = &'a Bytes>) -> Framed {
        let n = messages.len();
        // All headers in one allocation, sliced per message.
        let mut headers = BytesMut::with_capacity(n * MAX_HEADER);
        let mut lens = Vec::with_capacity(n);
        let mut bodies = Vec::with_capacity(n);
        for m in messages {
            lens.push(put_header(&mut headers, OpCode::Binary, m.len()));
            bodies.push(m.clone());
        }
        let mut headers = headers.freeze();
        let mut pieces = Vec::with_capacity(2 * n);
        let mut bytes = 0;
        for (len, body) in lens.into_iter().zip(bodies) {
            bytes += len + body.len();
            pieces.push(headers.split_to(len));
            if !body.is_empty() {
                pieces.push(body);
            }
        }
        Framed { pieces, bytes }
    }

    /// Wire bytes (headers included).
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

/// Longest frame header (no mask: 2 bytes + a 64-bit length).
const MAX_HEADER: usize = 10;

/// Appends an unmasked, final frame header for `len` payload bytes; returns its length.
fn put_header(out: &mut BytesMut, op: OpCode, len: usize) -> usize {
    let first = 0x80 | u8::from(op);
    if len < 126 {
        out.put_slice(&[first, len as u8]);
        2
    } else if let Ok(len) = u16::try_from(len) {
        out.put_slice(&[first, 126]);
        out.put_u16(len);
        4
    } else {
        out.put_slice(&[first, 127]);
        out.put_u64(len as u64);
        MAX_HEADER
    }
}

/// What [`WsOut::try_send`] did.
#[derive(Debug)]
pub enum TrySend {
    Sent,
    /// No room now: the messages, to send with [`WsOut::send`].
    Full(Framed),
    Closed,
}

/// One queue entry: pieces written in order, holding their permits until handed on.
struct Entry {
    pieces: Vec<Bytes>,
    /// A close frame: the body ends after it.
    close: bool,
    _permits: Option<(OwnedSemaphorePermit, OwnedSemaphorePermit)>,
}

/// The outgoing half of the socket. Cheap to clone; every clone feeds the same ordered queue.
#[derive(Clone, Debug)]
pub struct WsOut {
    tx: mpsc::Sender<Entry>,
    budget: Arc<Semaphore>,
    budget_bytes: usize,
    slots: Arc<Semaphore>,
}

impl WsOut {
    /// Bytes of data entries the queue holds at most (an entry bigger than this waits for the
    /// whole budget and then goes alone).
    pub fn budget_bytes(&self) -> usize {
        self.budget_bytes
    }

    /// Queues `framed` at once if a slot and its bytes are free; gives it back if not.
    pub fn try_send(&self, framed: Framed) -> TrySend {
        let Ok(slot) = Arc::clone(&self.slots).try_acquire_owned() else {
            return TrySend::Full(framed);
        };
        let Ok(bytes) = Arc::clone(&self.budget).try_acquire_many_owned(self.permits(&framed))
        else {
            return TrySend::Full(framed);
        };
        let bytes_len = framed.bytes;
        let entry = Entry {
            pieces: framed.pieces,
            close: false,
            _permits: Some((slot, bytes)),
        };
        match self.tx.try_send(entry) {
            Ok(()) => TrySend::Sent,
            Err(mpsc::error::TrySendError::Full(entry)) => TrySend::Full(Framed {
                pieces: entry.pieces,
                bytes: bytes_len,
            }),
            Err(mpsc::error::TrySendError::Closed(_)) => TrySend::Closed,
        }
    }

    /// Queues `framed` once a slot and its bytes are free: waits while the client does not
    /// drain. Cancel-safe (nothing is queued unless it completes).
    pub async fn send(&self, framed: Framed) -> Result<(), Closed> {
        let permits = self.permits(&framed);
        let slot = Arc::clone(&self.slots)
            .acquire_owned()
            .await
            .map_err(|_| Closed)?;
        let bytes = Arc::clone(&self.budget)
            .acquire_many_owned(permits)
            .await
            .map_err(|_| Closed)?;
        self.push(Entry {
            pieces: framed.pieces,
            close: false,
            _permits: Some((slot, bytes)),
        })
        .await
    }

    fn permits(&self, framed: &Framed) -> u32 {
        u32::try_from(framed.bytes.clamp(1, self.budget_bytes)).unwrap_or(u32::MAX)
    }

    /// Queues one binary message outside the budget (an error frame before a close).
    pub async fn binary_unbudgeted(&self, message: Bytes) -> Result<(), Closed> {
        let framed = Framed::binary(std::iter::once(&message));
        self.push(Entry {
            pieces: framed.pieces,
            close: false,
            _permits: None,
        })
        .await
    }

    pub async fn ping(&self, payload: &[u8]) -> Result<(), Closed> {
        self.control(OpCode::Ping, payload).await
    }

    pub async fn pong(&self, payload: &[u8]) -> Result<(), Closed> {
        self.control(OpCode::Pong, payload).await
    }

    /// Queues a close frame; the connection's body ends after it.
    pub async fn close(&self, reason: Option<CloseReason>) -> Result<(), Closed> {
        let mut payload = Vec::new();
        if let Some(reason) = reason {
            payload.extend_from_slice(&u16::from(reason.code).to_be_bytes());
            if let Some(description) = reason.description {
                let mut end = description.len().min(MAX_CONTROL_PAYLOAD - 2);
                while !description.is_char_boundary(end) {
                    end -= 1;
                }
                payload.extend_from_slice(&description.as_bytes()[..end]);
            }
        }
        let mut frame = BytesMut::with_capacity(MAX_HEADER + payload.len());
        Parser::write_message(&mut frame, &payload, OpCode::Close, true, false);
        self.push(Entry {
            pieces: vec![frame.freeze()],
            close: true,
            _permits: None,
        })
        .await
    }

    async fn control(&self, op: OpCode, payload: &[u8]) -> Result<(), Closed> {
        let payload = &payload[..payload.len().min(MAX_CONTROL_PAYLOAD)];
        let mut frame = BytesMut::with_capacity(MAX_HEADER + payload.len());
        Parser::write_message(&mut frame, payload, op, true, false);
        self.push(Entry {
            pieces: vec![frame.freeze()],
            close: false,
            _permits: None,
        })
        .await
    }

    async fn push(&self, entry: Entry) -> Result<(), Closed> {
        self.tx.send(entry).await.map_err(|_| Closed)
    }
}

/// The 101 response's body: the queue's pieces, in order, until a close frame.
struct WsBody {
    rx: mpsc::Receiver<Entry>,
    current: std::vec::IntoIter<Bytes>,
    /// The entry being written (its permits), once its pieces moved to `current`.
    current_entry: Option<Entry>,
    ended: bool,
    /// Dropped with the body: tells [`WsIn`] the connection is gone.
    _gone: oneshot::Sender<()>,
}

impl MessageBody for WsBody {
    type Error = Infallible;

    fn size(&self) -> BodySize {
        BodySize::Stream
    }

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Infallible>>> {
        let this = self.get_mut();
        loop {
            if let Some(piece) = this.current.next() {
                if this.current.len() == 0
                    && let Some(entry) = this.current_entry.take()
                {
                    // The last piece goes to actix-http now: the entry's room is free.
                    this.ended = entry.close;
                }
                return Poll::Ready(Some(Ok(piece)));
            }
            if let Some(entry) = this.current_entry.take() {
                // An entry without pieces.
                this.ended = entry.close;
            }
            if this.ended {
                return Poll::Ready(None);
            }
            match this.rx.poll_recv(cx) {
                Poll::Ready(Some(mut entry)) => {
                    this.current = std::mem::take(&mut entry.pieces).into_iter();
                    this.current_entry = Some(entry);
                }
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

// ------------------------------------------------------------------------------------------
// Incoming

/// What a client sent, as far as a server that ignores client data cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientMessage {
    Ping(Bytes),
    Close,
    /// Data, pongs, continuations: read and dropped.
    Other,
}

/// The client's messages. Ends with the connection, or after a protocol error.
pub struct WsIn {
    payload: actix_http::Payload,
    buf: BytesMut,
    max_frame: usize,
    gone: oneshot::Receiver<()>,
    ended: bool,
}

impl Stream for WsIn {
    type Item = Result<ClientMessage, ProtocolError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if this.ended {
                return Poll::Ready(None);
            }
            // Frames already read first; more is read only when they are used up, so the
            // buffer holds at most one frame and one read. A frame declared bigger than the
            // limit is refused from its header (the parser would buffer all of it first).
            if declared_len(&this.buf).is_some_and(|len| len > this.max_frame as u64) {
                this.ended = true;
                return Poll::Ready(Some(Err(ProtocolError::Overflow)));
            }
            match Parser::parse(&mut this.buf, true, this.max_frame) {
                Err(e) => {
                    this.ended = true;
                    return Poll::Ready(Some(Err(e)));
                }
                Ok(Some((_, op, data))) => {
                    let message = match op {
                        OpCode::Ping => {
                            ClientMessage::Ping(data.map(BytesMut::freeze).unwrap_or_default())
                        }
                        OpCode::Close => ClientMessage::Close,
                        OpCode::Bad => {
                            this.ended = true;
                            return Poll::Ready(Some(Err(ProtocolError::BadOpCode)));
                        }
                        _ => ClientMessage::Other,
                    };
                    return Poll::Ready(Some(Ok(message)));
                }
                Ok(None) => {}
            }
            if Pin::new(&mut this.gone).poll(cx).is_ready() {
                this.ended = true;
                continue;
            }
            match Pin::new(&mut this.payload).poll_next(cx) {
                Poll::Ready(Some(Ok(chunk))) => this.buf.extend_from_slice(&chunk),
                Poll::Ready(Some(Err(e))) => {
                    this.ended = true;
                    return Poll::Ready(Some(Err(ProtocolError::Io(std::io::Error::other(e)))));
                }
                Poll::Ready(None) => this.ended = true,
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// The payload length a frame header declares, once the buffer holds enough of it.
fn declared_len(buf: &[u8]) -> Option<u64> {
    match *buf.get(1)? & 0x7F {
        126 => Some(u64::from(u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?]))),
        127 => {
            let bytes: [u8; 8] = buf.get(2..10)?.try_into().ok()?;
            Some(u64::from_be_bytes(bytes))
        }
        n => Some(u64::from(n)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_use_the_shortest_length_encoding() {
        for (len, header_len, second) in [
            (0usize, 2usize, 0u8),
            (125, 2, 125),
            (126, 4, 126),
            (65_535, 4, 126),
            (65_536, 10, 127),
        ] {
            let mut out = BytesMut::new();
            assert_eq!(put_header(&mut out, OpCode::Binary, len), header_len);
            assert_eq!(out.len(), header_len);
            assert_eq!(out[0], 0x82, "final binary frame");
            assert_eq!(out[1], second);
            // actix-http's parser (client side: unmasked frames) reads the same length back.
            let payload = vec![7u8; len];
            out.extend_from_slice(&payload);
            let (fin, op, data) = Parser::parse(&mut out, false, 1 << 20)
                .expect("valid")
                .expect("complete");
            assert!(fin);
            assert_eq!(op, OpCode::Binary);
            assert_eq!(data.map_or(0, |d| d.len()), len);
        }
    }

    #[test]
    fn a_client_frame_over_the_limit_is_known_from_its_header() {
        assert_eq!(declared_len(&[0x82]), None);
        assert_eq!(declared_len(&[0x82, 0x80 | 5]), Some(5));
        assert_eq!(declared_len(&[0x82, 0x80 | 126, 0x01]), None);
        assert_eq!(declared_len(&[0x82, 0x80 | 126, 0x01, 0x00]), Some(256));
        let mut huge = vec![0x82, 0x80 | 127];
        huge.extend_from_slice(&(1u64 << 40).to_be_bytes());
        assert_eq!(declared_len(&huge), Some(1 << 40));
        assert_eq!(declared_len(&huge[..9]), None);
    }

    #[test]
    fn a_batch_is_its_messages_framed_in_order_without_copying_them() {
        let messages = [
            Bytes::from_static(b"first"),
            Bytes::new(),
            Bytes::from(vec![1u8; 300]),
        ];
        let framed = Framed::binary(messages.iter());
        assert_eq!(framed.bytes(), (2 + 5) + 2 + (4 + 300));
        // The message pieces are the messages' own memory.
        assert_eq!(framed.pieces[1].as_ptr(), messages[0].as_ptr());
        assert_eq!(framed.pieces[4].as_ptr(), messages[2].as_ptr());
        let mut wire = BytesMut::new();
        for piece in &framed.pieces {
            wire.extend_from_slice(piece);
        }
        for expected in &messages {
            let (_, op, data) = Parser::parse(&mut wire, false, 1 << 20)
                .expect("valid")
                .expect("complete");
            assert_eq!(op, OpCode::Binary);
            assert_eq!(data.map(BytesMut::freeze).unwrap_or_default(), *expected);
        }
        assert!(wire.is_empty());
    }
}
