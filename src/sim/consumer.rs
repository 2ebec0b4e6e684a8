//! A lean firehose consumer: one `subscribeRepos` websocket over a raw TCP stream, for the
//! benchmarks and the fleet's checker, where hundreds of consumers share a core with the relay.
//!
//! Why not awc: its client decodes every message into a fresh buffer and runs a codec per
//! frame; at hundreds of consumers × 1,000 events/s the measuring clients then cost more than
//! the relay they measure. Here the socket is read into one growing buffer and each message is
//! split off it as a `Bytes` (no copy after the kernel's). It speaks only what a firehose
//! consumer needs (RFC 6455): the upgrade, unmasked server frames (binary, text, ping, pong,
//! close, continuations), masked pongs and a masked close from the client. Every length is
//! bounded ([`MAX_MESSAGE_BYTES`], [`MAX_RESPONSE_HEAD`]); a protocol violation is an error,
//! never a panic.

use std::net::SocketAddr;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::atproto::frame::MAX_FRAME_BYTES;

/// Largest message accepted (a firehose frame is at most [`MAX_FRAME_BYTES`]).
pub const MAX_MESSAGE_BYTES: usize = MAX_FRAME_BYTES + 64 * 1024;
/// Largest upgrade response head.
pub const MAX_RESPONSE_HEAD: usize = 16 * 1024;

/// One message from the relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// An event frame (header + body, DAG-CBOR).
    Binary(Bytes),
    Text(Bytes),
    /// The relay closed: the close code, if it sent one.
    Close(Option<u16>),
}

/// Why the connection failed.
#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("upgrade refused: {0}")]
    Upgrade(String),
    #[error("websocket protocol: {0}")]
    Protocol(&'static str),
}

/// One consumer connection.
#[derive(Debug)]
pub struct LeanConsumer {
    stream: TcpStream,
    buf: BytesMut,
    /// A fragmented message being assembled (opcode, parts).
    partial: Option<(u8, BytesMut)>,
    closed: bool,
}

/// Reads at least this much per `read` call (fewer syscalls under load).
const READ_CHUNK: usize = 256 * 1024;

impl LeanConsumer {
    /// Connects to `addr` and upgrades `path` (with its query, e.g.
    /// `/xrpc/com.atproto.sync.subscribeRepos?cursor=0`), sending `user_agent`.
    pub async fn connect(
        addr: SocketAddr,
        path: &str,
        user_agent: &str,
    ) -> Result<LeanConsumer, ConsumerError> {
        let mut stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: cm9va2VyeS1jb25zdW1lcg==\r\nSec-WebSocket-Version: 13\r\n\
             User-Agent: {user_agent}\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await?;
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        let head_end = loop {
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                break i + 4;
            }
            if buf.len() > MAX_RESPONSE_HEAD {
                return Err(ConsumerError::Upgrade("response head too long".into()));
            }
            if stream.read_buf(&mut buf).await? == 0 {
                return Err(ConsumerError::Upgrade(
                    "connection closed during upgrade".into(),
                ));
            }
        };
        let head = buf.split_to(head_end);
        let line_end = find(&head, b"\r\n").unwrap_or(head.len());
        let status_line = String::from_utf8_lossy(&head[..line_end]).into_owned();
        if !status_line.starts_with("HTTP/1.1 101") {
            // Keep what the body started with: it names the XRPC error.
            let body = String::from_utf8_lossy(&buf[..buf.len().min(512)]).into_owned();
            return Err(ConsumerError::Upgrade(format!("{status_line}: {body}")));
        }
        Ok(LeanConsumer {
            stream,
            buf,
            partial: None,
            closed: false,
        })
    }

    /// The next message; pings are answered here and never returned. After a close, `None`.
    pub async fn next(&mut self) -> Result<Option<Message>, ConsumerError> {
        if self.closed {
            return Ok(None);
        }
        loop {
            while let Some((fin, opcode, payload)) = self.split_frame()? {
                match opcode {
                    0x9 => self.send(0xA, &payload).await?,
                    0xA => {}
                    0x8 => {
                        self.closed = true;
                        let code = (payload.len() >= 2)
                            .then(|| u16::from_be_bytes([payload[0], payload[1]]));
                        // Echo the close, as the protocol asks; the relay may be gone already.
                        let _ = self.send(0x8, &payload[..payload.len().min(2)]).await;
                        return Ok(Some(Message::Close(code)));
                    }
                    0x0 => {
                        let Some((_, parts)) = self.partial.as_mut() else {
                            return Err(ConsumerError::Protocol("continuation without a start"));
                        };
                        if parts.len() + payload.len() > MAX_MESSAGE_BYTES {
                            return Err(ConsumerError::Protocol("message too large"));
                        }
                        parts.extend_from_slice(&payload);
                        if fin && let Some((op, parts)) = self.partial.take() {
                            return Ok(Some(data(op, parts.freeze())));
                        }
                    }
                    0x1 | 0x2 if fin => return Ok(Some(data(opcode, payload))),
                    0x1 | 0x2 => {
                        let mut parts = BytesMut::with_capacity(payload.len() * 2);
                        parts.extend_from_slice(&payload);
                        self.partial = Some((opcode, parts));
                    }
                    _ => return Err(ConsumerError::Protocol("unknown opcode")),
                }
            }
            self.buf.reserve(READ_CHUNK);
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                self.closed = true;
                return Ok(None);
            }
        }
    }

    /// Splits one complete frame off the buffer, if it holds one.
    fn split_frame(&mut self) -> Result<Option<(bool, u8, Bytes)>, ConsumerError> {
        let b = &self.buf[..];
        if b.len() < 2 {
            return Ok(None);
        }
        let fin = b[0] & 0x80 != 0;
        if b[0] & 0x70 != 0 {
            return Err(ConsumerError::Protocol("reserved bits set"));
        }
        let opcode = b[0] & 0x0F;
        if b[1] & 0x80 != 0 {
            return Err(ConsumerError::Protocol("server frames must not be masked"));
        }
        let (len, header) = match b[1] & 0x7F {
            126 if b.len() >= 4 => (u64::from(u16::from_be_bytes([b[2], b[3]])), 4),
            127 if b.len() >= 10 => {
                let mut n = [0u8; 8];
                n.copy_from_slice(&b[2..10]);
                (u64::from_be_bytes(n), 10)
            }
            126 | 127 => return Ok(None),
            n => (u64::from(n), 2),
        };
        let len = usize::try_from(len).map_err(|_| ConsumerError::Protocol("frame too large"))?;
        if len > MAX_MESSAGE_BYTES {
            return Err(ConsumerError::Protocol("frame too large"));
        }
        if b.len() < header + len {
            self.buf.reserve(header + len - b.len());
            return Ok(None);
        }
        self.buf.advance(header);
        Ok(Some((fin, opcode, self.buf.split_to(len).freeze())))
    }

    /// Sends a masked control frame (payload at most 125 bytes).
    async fn send(&mut self, opcode: u8, payload: &[u8]) -> Result<(), ConsumerError> {
        let payload = &payload[..payload.len().min(125)];
        let mask = [0x5a, 0x13, 0xc7, 0x2e];
        let mut out = Vec::with_capacity(6 + payload.len());
        out.push(0x80 | opcode);
        out.push(0x80 | payload.len() as u8);
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.stream.write_all(&out).await?;
        Ok(())
    }

    /// Closes with 1000 and drops the connection.
    pub async fn close(mut self) {
        let _ = self.send(0x8, &1000u16.to_be_bytes()).await;
        let _ = self.stream.shutdown().await;
    }
}

fn data(opcode: u8, payload: Bytes) -> Message {
    if opcode == 0x1 {
        Message::Text(payload)
    } else {
        Message::Binary(payload)
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
        match payload.len() {
            n if n < 126 => out.push(n as u8),
            n if n <= u16::MAX as usize => {
                out.push(126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(payload);
        out
    }

    /// A server that answers the upgrade, writes `script` in small pieces, then reads what
    /// the client sends until it closes.
    async fn serve(script: Vec<u8>) -> (SocketAddr, tokio::task::JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            let mut req = vec![0u8; 4096];
            let n = s.read(&mut req).await.expect("request");
            assert!(String::from_utf8_lossy(&req[..n]).contains("Upgrade: websocket"));
            s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
                .await
                .expect("head");
            for piece in script.chunks(7) {
                s.write_all(piece).await.expect("write");
            }
            let mut got = Vec::new();
            let _ =
                tokio::time::timeout(std::time::Duration::from_secs(5), s.read_to_end(&mut got))
                    .await;
            got
        });
        (addr, task)
    }

    #[tokio::test]
    async fn messages_of_every_length_fragments_pings_and_close() {
        let big = vec![7u8; 70_000];
        let mid = vec![5u8; 300];
        let mut script = frame(true, 0x2, b"small");
        script.extend(frame(true, 0x9, b"hi"));
        script.extend(frame(true, 0x2, &mid));
        script.extend(frame(true, 0x2, &big));
        script.extend(frame(false, 0x2, b"frag"));
        script.extend(frame(false, 0x0, b"men"));
        script.extend(frame(true, 0x0, b"ted"));
        script.extend(frame(true, 0x8, &1001u16.to_be_bytes()));
        let (addr, server) = serve(script).await;
        let mut c = LeanConsumer::connect(addr, "/xrpc/x", "test")
            .await
            .expect("connect");
        let mut got = Vec::new();
        while let Some(m) = c.next().await.expect("next") {
            got.push(m);
        }
        assert_eq!(
            got,
            vec![
                Message::Binary(Bytes::from_static(b"small")),
                Message::Binary(Bytes::from(mid)),
                Message::Binary(Bytes::from(big)),
                Message::Binary(Bytes::from_static(b"fragmented")),
                Message::Close(Some(1001)),
            ]
        );
        drop(c);
        let sent = server.await.expect("server");
        // A masked pong with the ping's payload, then the echoed close.
        assert_eq!(sent[0], 0x8A);
        assert_eq!(sent[1], 0x80 | 2);
        let mask = &sent[2..6];
        let payload: Vec<u8> = sent[6..8]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ mask[i % 4])
            .collect();
        assert_eq!(payload, b"hi");
        assert_eq!(sent[8], 0x88);
    }

    #[tokio::test]
    async fn a_refused_upgrade_names_the_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            let mut req = vec![0u8; 4096];
            let _ = s.read(&mut req).await;
            let _ = s
                .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 27\r\n\r\n{\"error\":\"InvalidRequest\"}")
                .await;
        });
        let err = LeanConsumer::connect(addr, "/x", "t")
            .await
            .expect_err("refused");
        assert!(
            err.to_string().contains("400") && err.to_string().contains("InvalidRequest"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn garbage_after_the_upgrade_is_an_error_or_a_message_never_a_panic() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..200 {
            let len = (next() % 64) as usize;
            let script: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            let (addr, _server) = serve(script).await;
            let mut c = LeanConsumer::connect(addr, "/x", "t")
                .await
                .expect("connect");
            // Bounded: at most as many messages as bytes, then an error or the end.
            for _ in 0..=64 {
                match tokio::time::timeout(std::time::Duration::from_millis(200), c.next()).await {
                    Ok(Ok(Some(_))) => continue,
                    _ => break,
                }
            }
        }
    }
}
