//! Accepting clients on TCP and on a Unix socket, one task per client, and
//! stopping: stop accepting, then wait for clients to finish.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, UnixListener};
use tokio::task::JoinSet;

use crate::client;
use crate::pooler::Pooler;
use crate::stream::Stream;

/// Sockets beyond `max_client_conn` still accepted, so that cancel requests
/// and the over-limit error itself can get through; past this, connections
/// are closed at once.
const ACCEPT_HEADROOM: usize = 1000;

/// A failure that can repeat thousands of times a second (a connection
/// storm, no file descriptors left) is logged at most once a second, with
/// how many like it went unlogged since.
#[derive(Default)]
struct Throttled {
    last: Option<Instant>,
    unlogged: u64,
}

impl Throttled {
    /// `Some(unlogged since the last line)` when this one is to be logged.
    fn hit(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|last| now - last < Duration::from_secs(1))
        {
            self.unlogged += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.unlogged))
    }
}

/// Bound listening sockets, ready to serve.
pub struct Listeners {
    tcp: TcpListener,
    unix: Option<(UnixListener, std::path::PathBuf)>,
}

impl Listeners {
    pub async fn bind(pooler: &Pooler) -> std::io::Result<Listeners> {
        let config = &pooler.config();
        let tcp = bind_tcp(config.listen, config.listen_backlog)?;
        let unix = match &config.unix_socket_dir {
            None => None,
            Some(dir) => {
                let port = tcp.local_addr()?.port();
                let path = dir.join(format!(".s.PGSQL.{port}"));
                // A socket file left by a previous run that nobody listens on.
                if path.exists() && std::os::unix::net::UnixStream::connect(&path).is_err() {
                    std::fs::remove_file(&path)?;
                }
                Some((UnixListener::bind(&path)?, path))
            }
        };
        Ok(Listeners { tcp, unix })
    }

    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.tcp.local_addr()
    }

    /// Serves until the pooler's shutdown drains, then waits for clients
    /// to leave: they close themselves at their next idle moment, or at the
    /// shutdown's close.
    pub async fn serve(self, pooler: Arc<Pooler>) {
        let mut tasks = JoinSet::new();
        let limit = pooler.config().max_client_conn + ACCEPT_HEADROOM;
        let shutdown = pooler.shutdown.clone();
        let (mut refusals, mut failures) = (Throttled::default(), Throttled::default());
        loop {
            let accepted = tokio::select! {
                r = self.tcp.accept() => r.map(|(s, peer)| (Stream::tcp(s), peer.to_string())),
                r = accept_unix(&self.unix) => r.map(|s| (Ok(Stream::Unix(s)), "unix".to_owned())),
                _ = shutdown.drain.cancelled() => break,
                Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
            };
            match accepted {
                Ok((Ok(stream), peer)) => {
                    if tasks.len() >= limit {
                        if let Some(unlogged) = refusals.hit() {
                            tracing::warn!(
                                event = "connection_refused",
                                client_addr = peer,
                                unlogged,
                                "too many connections, closing at once"
                            );
                        }
                        continue;
                    }
                    tasks.spawn(client::serve(pooler.clone(), stream, peer));
                }
                Ok((Err(e), peer)) => tracing::debug!(peer, error = %e, "socket setup failed"),
                Err(e) => {
                    // EMFILE and the like: back off rather than spin.
                    if let Some(unlogged) = failures.hit() {
                        tracing::error!(error = %e, unlogged, "accept failed");
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        drop(self.tcp);
        if let Some((listener, path)) = self.unix {
            drop(listener);
            let _ = std::fs::remove_file(path);
        }
        tracing::info!(
            clients = pooler.clients.load(Ordering::Relaxed),
            "stopped accepting; closing clients as their transactions end"
        );
        let all_done = async { while tasks.join_next().await.is_some() {} };
        let closed = async {
            shutdown.close.cancelled().await;
            // Give closed clients a moment to say goodbye.
            tokio::time::sleep(Duration::from_secs(1)).await;
        };
        tokio::select! {
            _ = all_done => tracing::info!("all clients gone"),
            _ = closed => {
                tracing::warn!(remaining = tasks.len(), "closing remaining connections");
                tasks.abort_all();
            }
        }
    }
}

/// A TCP listener with room for `backlog` pending connections: a burst
/// beyond the default 128 would otherwise see SYNs dropped and clients
/// retrying a second later.
fn bind_tcp(addr: std::net::SocketAddr, backlog: usize) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog.clamp(1, i32::MAX as usize) as i32)?;
    TcpListener::from_std(socket.into())
}

async fn accept_unix(
    unix: &Option<(UnixListener, std::path::PathBuf)>,
) -> std::io::Result<tokio::net::UnixStream> {
    match unix {
        Some((l, _)) => l.accept().await.map(|(s, _)| s),
        None => std::future::pending().await,
    }
}
