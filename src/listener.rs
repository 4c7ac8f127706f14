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
        let tcp = bind_tcp(config.listen, config.listen_backlog, config.so_reuseport)?;
        let unix = match &config.unix_socket_dir {
            None => None,
            Some(dir) => {
                let port = tcp.local_addr()?.port();
                let path = dir.join(format!(".s.PGSQL.{port}"));
                let group = match &config.unix_socket_group {
                    None => None,
                    Some(name) => Some(group_id(name).ok_or_else(|| {
                        std::io::Error::new(
                            std::io::ErrorKind::NotFound,
                            format!("unix_socket_group: no group {name:?} in /etc/group"),
                        )
                    })?),
                };
                let listener = bind_unix(&path, config.unix_socket_mode, group)?;
                Some((listener, path))
            }
        };
        Ok(Listeners { tcp, unix })
    }

    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.tcp.local_addr()
    }

    /// Serves until the pooler's shutdown begins, then waits for clients
    /// to leave: on their own, at their next idle moment when the shutdown
    /// drains, or at its close.
    pub async fn serve(self, pooler: Arc<Pooler>) {
        let mut tasks = JoinSet::new();
        let shutdown = pooler.shutdown.clone();
        let (mut refusals, mut failures) = (Throttled::default(), Throttled::default());
        loop {
            let accepted = tokio::select! {
                r = self.tcp.accept() => r.map(|(s, peer)| {
                    (Stream::tcp(s, &pooler.config().tcp), peer.to_string())
                }),
                r = accept_unix(&self.unix) => r.map(|s| (Ok(Stream::Unix(s)), "unix".to_owned())),
                _ = shutdown.begun.cancelled() => break,
                Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
            };
            match accepted {
                Ok((Ok(stream), peer)) => {
                    // Read at each accept: RELOAD may change it.
                    if tasks.len() >= pooler.config().max_client_conn + ACCEPT_HEADROOM {
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
        let clients = pooler.clients.load(Ordering::Relaxed);
        if shutdown.drain.is_cancelled() {
            tracing::info!(
                clients,
                "stopped accepting; closing clients as their transactions end"
            );
        } else {
            tracing::info!(
                clients,
                "stopped accepting; serving the clients connected until they leave"
            );
        }
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
/// retrying a second later. `reuse_port`: other processes may listen on
/// the same port (`so_reuseport`).
fn bind_tcp(
    addr: std::net::SocketAddr,
    backlog: usize,
    reuse_port: bool,
) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(reuse_port)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog.clamp(1, i32::MAX as usize) as i32)?;
    TcpListener::from_std(socket.into())
}

/// The id of group `name` (a name in /etc/group, or a number).
fn group_id(name: &str) -> Option<u32> {
    if let Ok(id) = name.parse() {
        return Some(id);
    }
    let groups = std::fs::read_to_string("/etc/group").ok()?;
    groups.lines().find_map(|line| {
        let mut fields = line.split(':');
        (fields.next()? == name).then_some(())?;
        fields.nth(1)?.parse().ok()
    })
}

/// A Unix socket at `path` with permissions `mode` and group `group`. It
/// is bound under a second name, given its mode and group, then renamed
/// into place, so no client can reach it before it has them. A file left
/// at `path` by an earlier run that nobody listens on is removed; a live
/// one means the address is in use.
fn bind_unix(
    path: &std::path::Path,
    mode: u32,
    group: Option<u32>,
) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("{} is in use", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    let mut staging = path.as_os_str().to_owned();
    staging.push(".new");
    let staging = std::path::PathBuf::from(staging);
    let _ = std::fs::remove_file(&staging);
    let listener = UnixListener::bind(&staging)?;
    std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(mode))?;
    if let Some(gid) = group {
        std::os::unix::fs::chown(&staging, None, Some(gid))
            .map_err(|e| std::io::Error::new(e.kind(), format!("unix_socket_group {gid}: {e}")))?;
    }
    std::fs::rename(&staging, path)?;
    Ok(listener)
}

async fn accept_unix(
    unix: &Option<(UnixListener, std::path::PathBuf)>,
) -> std::io::Result<tokio::net::UnixStream> {
    match unix {
        Some((l, _)) => l.accept().await.map(|(s, _)| s),
        None => std::future::pending().await,
    }
}
