//! Who is connected right now, for `SHOW CLIENTS` and `SHOW SERVERS`: an
//! entry per client and per backend, added when it logs in and removed when
//! it goes. The only hot-path cost is a relaxed store when a client starts
//! or stops waiting and when a backend is lent or returned.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::sync::OnceLock;

use dashmap::DashMap;

use crate::clock::{self, Micros};
use crate::shutdown::{Shutdown, Stop, StopLevel};

/// One logged-in client.
#[derive(Debug)]
pub struct ClientEntry {
    pub id: u64,
    pub user: String,
    pub database: String,
    pub addr: String,
    pub port: u16,
    pub application_name: String,
    /// TLS version and cipher, empty for plaintext.
    pub tls: String,
    pub connect_time_us: u64,
    /// When it last sent a request (µs since the epoch).
    pub request_time_us: AtomicU64,
    /// Waiting for a backend since (µs since the epoch), or 0.
    pub waiting_since_us: AtomicU64,
    /// The pgdyno-issued cancel key's process id.
    pub process_id: i32,
    /// Ends the client: KILL, or the shutdown (its drain, then its close).
    pub stop: Stop,
}

impl ClientEntry {
    /// `now`: the hot path's last clock reading (no second reading; as
    /// PgBouncer's cached time).
    pub fn start_waiting(&self, now: Micros) {
        let now = now.epoch_us();
        self.request_time_us.store(now, Relaxed);
        self.waiting_since_us.store(now, Relaxed);
    }

    /// KILL from the admin console.
    pub fn kill(&self) {
        self.stop.raise(StopLevel::Now);
    }

    pub fn stop_waiting(&self) {
        self.waiting_since_us.store(0, Relaxed);
    }

    /// Microseconds it has been waiting, if it is.
    pub fn waited_us(&self) -> Option<u64> {
        match self.waiting_since_us.load(Relaxed) {
            0 => None,
            since => Some(clock::now().epoch_us().saturating_sub(since)),
        }
    }
}

/// What [`Registry::add_client`] lists about a client that just logged in.
pub struct NewClient<'a> {
    pub user: &'a str,
    pub database: &'a str,
    pub peer: &'a str,
    pub application_name: &'a str,
    pub tls: String,
    pub process_id: i32,
}

/// One backend connection.
#[derive(Debug)]
pub struct ServerEntry {
    pub id: u64,
    pub user: String,
    pub database: String,
    pub addr: String,
    pub port: u16,
    pub connect_time_us: u64,
    pub remote_pid: i32,
    /// Its pool's generation when it was opened (see RECONNECT).
    pub generation: u64,
    /// TLS version and cipher, empty for plaintext.
    pub tls: String,
    /// Lent to a client (else idle in its pool).
    pub active: AtomicBool,
    pub request_time_us: AtomicU64,
    /// For a cancel aimed at the query it runs.
    pub key: crate::cancel::BackendKey,
}

impl ServerEntry {
    pub fn set_active(&self, active: bool, now: Micros) {
        self.active.store(active, Relaxed);
        self.request_time_us.store(now.epoch_us(), Relaxed);
    }
}

#[derive(Debug, Default)]
pub struct Registry {
    pub clients: DashMap<u64, Arc<ClientEntry>>,
    pub servers: DashMap<u64, Arc<ServerEntry>>,
    /// Wakes those waiting for backends to close (WAIT_CLOSE) whenever one
    /// leaves the list.
    pub server_gone: tokio::sync::Notify,
    next_client: AtomicU64,
    /// The task that passes the shutdown on to every client is started.
    watching: OnceLock<()>,
}

/// Removes an entry from the registry when dropped.
pub struct Listed<T: Unlist> {
    registry: Arc<Registry>,
    pub entry: Arc<T>,
}

impl Registry {
    pub fn add_client(
        self: &Arc<Self>,
        client: NewClient<'_>,
        shutdown: &Shutdown,
    ) -> Listed<ClientEntry> {
        let id = self.next_client.fetch_add(1, Relaxed);
        let (addr, port) = split_peer(client.peer);
        let now = clock::now().epoch_us();
        let process_id = client.process_id;
        let entry = Arc::new(ClientEntry {
            id,
            user: client.user.to_owned(),
            database: client.database.to_owned(),
            addr,
            port,
            application_name: client.application_name.to_owned(),
            tls: client.tls,
            connect_time_us: now,
            request_time_us: AtomicU64::new(now),
            waiting_since_us: AtomicU64::new(0),
            process_id,
            stop: Stop::default(),
        });
        self.watching.get_or_init(|| {
            tokio::spawn(pass_on_shutdown(Arc::downgrade(self), shutdown.clone()));
        });
        self.clients.insert(id, entry.clone());
        // After the insert: a shutdown that began before it is seen here,
        // one that begins after it finds the entry.
        if shutdown.close.is_cancelled() {
            entry.stop.raise(StopLevel::Now);
        } else if shutdown.drain.is_cancelled() {
            entry.stop.raise(StopLevel::WhenIdle);
        }
        Listed {
            registry: self.clone(),
            entry,
        }
    }

    pub fn add_server(self: &Arc<Self>, entry: ServerEntry) -> Listed<ServerEntry> {
        let entry = Arc::new(entry);
        self.servers.insert(entry.id, entry.clone());
        Listed {
            registry: self.clone(),
            entry,
        }
    }
}

/// Raises every listed client's stop as the shutdown proceeds: its drain,
/// then its close.
async fn pass_on_shutdown(registry: std::sync::Weak<Registry>, shutdown: Shutdown) {
    for (token, level) in [
        (&shutdown.drain, StopLevel::WhenIdle),
        (&shutdown.close, StopLevel::Now),
    ] {
        token.cancelled().await;
        let Some(registry) = registry.upgrade() else {
            return;
        };
        for client in registry.clients.iter() {
            client.stop.raise(level);
        }
    }
}

/// `"127.0.0.1:5000"` → ("127.0.0.1", 5000); a Unix socket peer → ("unix", 0).
pub fn split_peer(peer: &str) -> (String, u16) {
    match peer.rsplit_once(':') {
        Some((host, port)) => (
            host.trim_matches(['[', ']']).to_owned(),
            port.parse().unwrap_or(0),
        ),
        None => (peer.to_owned(), 0),
    }
}

/// A client entry's and a server entry's removal.
pub trait Unlist {
    fn unlist(registry: &Registry, entry: &Self);
}

impl Unlist for ClientEntry {
    fn unlist(registry: &Registry, entry: &Self) {
        registry.clients.remove(&entry.id);
    }
}

impl Unlist for ServerEntry {
    fn unlist(registry: &Registry, entry: &Self) {
        registry.servers.remove(&entry.id);
        registry.server_gone.notify_waiters();
    }
}

impl<T: Unlist> Drop for Listed<T> {
    fn drop(&mut self) {
        T::unlist(&self.registry, &self.entry);
    }
}
