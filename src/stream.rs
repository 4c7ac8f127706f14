//! A socket of any kind (TCP, Unix, TLS either way) and a connection: the
//! socket with its read and write buffers.
//!
//! The relay's hot path works on [`Conn`]'s buffers directly; the helpers
//! here (`read_message`, `flush`) serve the login phases, where clarity
//! matters more than system calls.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, Interest, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

use crate::config::TcpOptions;
use crate::protocol::frame;
use crate::spare;

/// Read buffer size: large enough to take a pgbench batch in one read.
pub const READ_BUF: usize = 16 * 1024;
/// A write buffer's first size (it grows as a batch needs).
const WRITE_BUF: usize = 1024;
/// Buffers larger than this (a big result went through) are not kept for
/// the next connection that wakes up on this thread.
const MAX_SPARE: usize = 32 * 1024;

/// TCP_NODELAY, and keepalive, TCP_USER_TIMEOUT and buffer sizes as
/// `options` say, on a client's or a backend's socket.
pub fn set_tcp_options(stream: &TcpStream, options: &TcpOptions) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let socket = socket2::SockRef::from(stream);
    socket.set_keepalive(options.keepalive)?;
    if options.keepalive {
        let mut keepalive = socket2::TcpKeepalive::new();
        if let Some(idle) = options.keepidle {
            keepalive = keepalive.with_time(idle);
        }
        if let Some(interval) = options.keepintvl {
            keepalive = keepalive.with_interval(interval);
        }
        if let Some(count) = options.keepcnt {
            keepalive = keepalive.with_retries(count);
        }
        socket.set_tcp_keepalive(&keepalive)?;
    }
    if options.user_timeout.is_some() {
        socket.set_tcp_user_timeout(options.user_timeout)?;
    }
    if let Some(bytes) = options.socket_buffer {
        socket.set_send_buffer_size(bytes)?;
        socket.set_recv_buffer_size(bytes)?;
    }
    Ok(())
}

thread_local! {
    /// Buffers of connections gone idle (see [`crate::spare`]).
    static SPARE: RefCell<Vec<spare::Pair>> = const { RefCell::new(Vec::new()) };
}

pub enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
    /// A client that asked for TLS.
    TlsServer(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// A backend over TLS.
    TlsClient(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Stream {
    /// Applies TCP_NODELAY (pgdyno batches its own writes) and `options`.
    pub fn tcp(stream: TcpStream, options: &TcpOptions) -> io::Result<Stream> {
        set_tcp_options(&stream, options)?;
        Ok(Stream::Tcp(stream))
    }

    /// Whether encrypted bytes wait inside the TLS session for a flush:
    /// a TLS stream's `poll_write` may accept bytes it could not send yet.
    pub fn unflushed(&self) -> bool {
        match self {
            Stream::TlsServer(s) => s.get_ref().1.wants_write(),
            Stream::TlsClient(s) => s.get_ref().1.wants_write(),
            Stream::Tcp(_) | Stream::Unix(_) => false,
        }
    }

    /// "TLSv1.3/TLS13_AES_256_GCM_SHA384/ECDH=X25519" (SHOW CLIENTS and
    /// SERVERS, as PgBouncer shows it), or empty without TLS.
    pub fn tls_description(&self) -> String {
        let common: &rustls::CommonState = match self {
            Stream::TlsServer(s) => s.get_ref().1,
            Stream::TlsClient(s) => s.get_ref().1,
            Stream::Tcp(_) | Stream::Unix(_) => return String::new(),
        };
        let version = match common.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
            _ => "TLS",
        };
        let suite = common
            .negotiated_cipher_suite()
            .and_then(|s| s.suite().as_str())
            .unwrap_or("unknown");
        match common.negotiated_key_exchange_group() {
            Some(group) => format!("{version}/{suite}/ECDH={:?}", group.name()),
            None => format!("{version}/{suite}"),
        }
    }

    /// Whether the socket has input waiting (or was closed), from the
    /// reactor's readiness state alone: no system call, no waker
    /// registered (`poll_read_ready` would register one, at twice the cost
    /// on every checkout), and the readiness left as it was (the closure
    /// answers `Ok`, so `try_io` does not clear it).
    pub fn readable(&self) -> bool {
        let ready = || Ok(());
        let probe = match self {
            Stream::Tcp(s) => s.try_io(Interest::READABLE, ready),
            Stream::Unix(s) => s.try_io(Interest::READABLE, ready),
            Stream::TlsServer(s) => s.get_ref().0.try_io(Interest::READABLE, ready),
            Stream::TlsClient(s) => s.get_ref().0.try_io(Interest::READABLE, ready),
        };
        probe.is_ok()
    }
}

/// Calls `$method` on whichever stream it is.
macro_rules! each {
    ($self:expr, $method:ident($($arg:expr),*)) => {
        match $self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).$method($($arg),*),
            Stream::Unix(s) => Pin::new(s).$method($($arg),*),
            Stream::TlsServer(s) => Pin::new(s.as_mut()).$method($($arg),*),
            Stream::TlsClient(s) => Pin::new(s.as_mut()).$method($($arg),*),
        }
    };
}

impl AsyncRead for Stream {
    #[inline]
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        each!(self, poll_read(cx, buf))
    }
}

impl AsyncWrite for Stream {
    #[inline]
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        each!(self, poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self, poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self, poll_shutdown(cx))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        each!(self, poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }
}

/// A socket with its buffers.
pub struct Conn {
    pub stream: Stream,
    pub rbuf: BytesMut,
    pub wbuf: BytesMut,
    /// Part of a message went out that will never be finished (the backend
    /// failed mid-DataRow): nothing more may be written, only a close.
    pub mid_message: bool,
    /// The last read found nothing and registered its task's waker with
    /// the reactor (a `Pending` that tokio's cooperative budget forced
    /// registers none and does not count). See [`Conn::waits_for_input`].
    read_waits: bool,
}

/// A message read whole during login: tag and body.
pub struct Message {
    pub tag: u8,
    pub body: BytesMut,
}

impl Conn {
    pub fn new(stream: Stream) -> Conn {
        Conn {
            stream,
            rbuf: BytesMut::with_capacity(READ_BUF),
            wbuf: BytesMut::with_capacity(WRITE_BUF),
            mid_message: false,
            read_waits: false,
        }
    }

    /// Reads more bytes; `Ok(0)` is end of stream. A connection that gave
    /// its buffers back (see `release_buffers`) takes warm ones first.
    pub async fn fill(&mut self) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_fill(cx)).await
    }

    /// [`Conn::fill`] as a poll function.
    pub fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.rbuf.capacity() == 0 || self.wbuf.capacity() == 0 {
            self.take_buffers();
        }
        if self.rbuf.capacity() - self.rbuf.len() < 1024 {
            self.rbuf.reserve(READ_BUF);
        }
        self.poll_read(cx)
    }

    /// Reads what has come into `rbuf`'s spare room; `Ok(0)` is end of
    /// stream.
    pub fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let polled = tokio_util::io::poll_read_buf(Pin::new(&mut self.stream), cx, &mut self.rbuf);
        self.read_waits = polled.is_pending() && tokio::task::coop::has_budget_remaining();
        polled
    }

    /// Whether a read now would find nothing and only register again the
    /// waker its last read left with the reactor: that read found nothing
    /// and the socket has shown no input since (a waker stays registered
    /// until input comes). Only for a connection one task polls for its
    /// whole life, a client's (a backend's last read may have registered
    /// another client's task), and not over TLS, whose reads may wait on a
    /// write.
    pub fn waits_for_input(&self) -> bool {
        self.read_waits
            && matches!(self.stream, Stream::Tcp(_) | Stream::Unix(_))
            && !self.stream.readable()
    }

    /// Gives an empty buffer (one given back, or one a message's split
    /// left without room) a warm one of the thread's spares, or a new one.
    fn take_buffers(&mut self) {
        let (rbuf, wbuf) = spare::take(&SPARE).unwrap_or_else(|| {
            (
                BytesMut::with_capacity(READ_BUF),
                BytesMut::with_capacity(WRITE_BUF),
            )
        });
        if self.rbuf.capacity() == 0 {
            self.rbuf = rbuf;
        }
        if self.wbuf.capacity() == 0 {
            self.wbuf = wbuf;
        }
    }

    /// Reads one whole tagged message of at most `max_len` bytes.
    /// End of stream before it: `UnexpectedEof`.
    ///
    /// # Cancel safety
    /// Cancel safe: bytes read stay in `rbuf`.
    pub async fn read_message(&mut self, max_len: usize) -> io::Result<Message> {
        loop {
            if let Some((tag, len)) = frame::header(&self.rbuf) {
                if len < 4 || len as usize > max_len {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "invalid message length {len} for message type {:?}",
                            tag as char
                        ),
                    ));
                }
                let total = 1 + len as usize;
                if self.rbuf.len() >= total {
                    let mut msg = self.rbuf.split_to(total);
                    msg.advance(5);
                    return Ok(Message { tag, body: msg });
                }
                self.rbuf.reserve(total - self.rbuf.len());
            }
            if self.fill().await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    /// Writes out and empties `wbuf` (and pushes TLS records out).
    pub async fn flush(&mut self) -> io::Result<()> {
        self.stream.write_all(&self.wbuf).await?;
        self.wbuf.clear();
        self.stream.flush().await
    }

    /// Gives back both buffers while the connection is idle (as
    /// PgBouncer's idle connections hold no buffer): `fill` takes a pair
    /// again when input comes. Only with nothing buffered.
    pub fn release_buffers(&mut self) {
        debug_assert!(self.rbuf.is_empty() && self.wbuf.is_empty());
        let pair = (
            std::mem::take(&mut self.rbuf),
            std::mem::take(&mut self.wbuf),
        );
        spare::put(&SPARE, pair, MAX_SPARE);
    }

    /// Whether anything written is not on the wire yet.
    pub fn pending_output(&self) -> bool {
        !self.wbuf.is_empty() || self.stream.unflushed()
    }

    /// Writes what it can of `wbuf` without waiting, then pushes out TLS
    /// records: for the relay's poll loop. `Ready(Ok(n))` with the bytes of
    /// `wbuf` taken (0 when only a TLS flush progressed); `Ready(Ok(0))`
    /// from a zero-length write on a non-empty `wbuf` means the peer is gone
    /// and is reported as `WriteZero`.
    pub fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let mut sent = 0;
        if !self.wbuf.is_empty() {
            match Pin::new(&mut self.stream).poll_write(cx, &self.wbuf) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    self.wbuf.advance(n);
                    sent = n;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        if self.stream.unflushed() {
            let before = sent;
            match Pin::new(&mut self.stream).poll_flush(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                // Bytes accepted but records still queued: progress all the same.
                Poll::Pending if before > 0 => {}
                Poll::Pending => return Poll::Pending,
            }
            if before == 0 {
                return Poll::Ready(Ok(0));
            }
        }
        Poll::Ready(Ok(sent))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use std::time::Duration;
    use tokio::net::TcpListener;

    async fn pair() -> (TcpStream, Conn) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (peer, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let conn = Conn::new(Stream::tcp(accepted.unwrap().0, &TcpOptions::default()).unwrap());
        (peer.unwrap(), conn)
    }

    /// Each option reaches the socket, and keepalive off leaves it off.
    #[tokio::test]
    async fn tcp_options_reach_the_socket() {
        let (peer, _conn) = pair().await;
        let options = TcpOptions {
            keepalive: true,
            keepidle: Some(Duration::from_secs(40)),
            keepintvl: Some(Duration::from_secs(7)),
            keepcnt: Some(3),
            user_timeout: Some(Duration::from_millis(2500)),
            socket_buffer: Some(100_000),
        };
        set_tcp_options(&peer, &options).unwrap();
        let s = socket2::SockRef::from(&peer);
        assert!(s.tcp_nodelay().unwrap() && s.keepalive().unwrap());
        assert_eq!(s.tcp_keepalive_time().unwrap(), Duration::from_secs(40));
        assert_eq!(s.tcp_keepalive_interval().unwrap(), Duration::from_secs(7));
        assert_eq!(s.tcp_keepalive_retries().unwrap(), 3);
        assert_eq!(
            s.tcp_user_timeout().unwrap(),
            Some(Duration::from_millis(2500))
        );
        // Linux doubles what it is given (below net.core.[rw]mem_max).
        assert_eq!(s.send_buffer_size().unwrap(), 200_000);
        assert_eq!(s.recv_buffer_size().unwrap(), 200_000);
        let off = TcpOptions {
            keepalive: false,
            ..options
        };
        set_tcp_options(&peer, &off).unwrap();
        assert!(!s.keepalive().unwrap());
    }

    /// Polls a read once, in the calling task.
    async fn read_once(conn: &mut Conn) -> Poll<io::Result<usize>> {
        poll_fn(|cx| Poll::Ready(conn.poll_fill(cx))).await
    }

    #[tokio::test]
    async fn a_read_that_found_nothing_waits_until_input_comes() {
        let (mut peer, mut conn) = pair().await;
        assert!(!conn.waits_for_input(), "nothing read yet");
        assert!(read_once(&mut conn).await.is_pending());
        assert!(conn.waits_for_input());

        peer.write_all(b"Q").await.unwrap();
        // The reactor marks the socket readable once it runs.
        for _ in 0..500 {
            if !conn.waits_for_input() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        assert!(!conn.waits_for_input(), "input came");
        assert!(matches!(read_once(&mut conn).await, Poll::Ready(Ok(1))));
        assert!(!conn.waits_for_input(), "the last read found input");
    }

    #[tokio::test]
    async fn a_read_the_budget_stopped_registered_nothing_and_does_not_wait() {
        let (_peer, mut conn) = pair().await;
        assert!(read_once(&mut conn).await.is_pending());
        assert!(conn.waits_for_input());
        let polled = poll_fn(|cx| {
            // Spend the task's whole budget, as a long wake-up would.
            let mut spent = 0;
            while let Poll::Ready(restore) = tokio::task::coop::poll_proceed(cx) {
                restore.made_progress();
                spent += 1;
                assert!(spent < 10_000, "the task has a budget");
            }
            Poll::Ready(conn.poll_fill(cx))
        })
        .await;
        assert!(polled.is_pending());
        assert!(
            !conn.waits_for_input(),
            "a Pending forced by the budget left no waker with the reactor"
        );
    }

    #[tokio::test]
    async fn readable_leaves_the_readiness_as_it_was() {
        let (mut peer, mut conn) = pair().await;
        // tokio takes a new socket for readable until a read finds nothing.
        assert!(read_once(&mut conn).await.is_pending());
        assert!(!conn.stream.readable());
        peer.write_all(b"Q").await.unwrap();
        for _ in 0..500 {
            if conn.stream.readable() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        assert!(conn.stream.readable());
        assert!(conn.stream.readable(), "asking twice: still readable");
        assert!(matches!(read_once(&mut conn).await, Poll::Ready(Ok(1))));
    }
}
