//! A socket of either kind (TCP, Unix; TLS later) and a connection: the
//! socket with its read and write buffers.
//!
//! The relay's hot path works on [`Conn`]'s buffers directly; the helpers
//! here (`read_message`, `flush`) serve the login phases, where clarity
//! matters more than system calls.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

use crate::protocol::frame;

/// Read buffer size: large enough to take a pgbench batch in one read.
pub const READ_BUF: usize = 16 * 1024;

pub enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    /// Applies TCP_NODELAY (pgdyno batches its own writes).
    pub fn tcp(stream: TcpStream) -> io::Result<Stream> {
        stream.set_nodelay(true)?;
        Ok(Stream::Tcp(stream))
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
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
            wbuf: BytesMut::with_capacity(1024),
        }
    }

    /// Reads more bytes; `Ok(0)` is end of stream.
    pub async fn fill(&mut self) -> io::Result<usize> {
        if self.rbuf.capacity() - self.rbuf.len() < 1024 {
            self.rbuf.reserve(READ_BUF);
        }
        self.stream.read_buf(&mut self.rbuf).await
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

    /// Writes out and empties `wbuf`.
    pub async fn flush(&mut self) -> io::Result<()> {
        self.stream.write_all(&self.wbuf).await?;
        self.wbuf.clear();
        Ok(())
    }
}
