//! A fault-injecting TCP relay to put between pgdyno and PostgreSQL.
//!
//! `FaultRelay::start(target_port)` listens on 127.0.0.1 (a port of its
//! own) and relays each connection to `127.0.0.1:<target_port>`; pgdyno's
//! upstream URL points at the relay (`relay.url(db)`). While the test runs
//! it flips the faults:
//!
//! - `cut_all(Cut::Reset | Cut::Fin)`: every relayed connection ends now,
//!   both legs, with a reset (SO_LINGER 0) or a FIN;
//! - `stall(Flow)` / `resume()`: stop forwarding in one or both directions
//!   (bytes already read are held, so TCP backpressure builds up behind);
//! - `truncate(n, how)`: the next connection to carry server-to-client bytes
//!   forwards `n` more of them, then is cut;
//! - `refuse(true)`: new connections are reset as soon as they arrive.
//!
//! It counts connections (`accepted`, `live`). Everything is torn down when
//! the `FaultRelay` drops.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use super::{APP_PASSWORD, APP_USER};

/// How a cut connection ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Cut {
    /// A TCP reset on both legs (SO_LINGER 0, then close).
    #[default]
    Reset,
    /// A FIN on both legs; whatever arrives afterwards is read and dropped,
    /// so the close stays a clean FIN.
    Fin,
}

/// Which bytes a stall holds back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// pgdyno to PostgreSQL.
    ToServer,
    /// PostgreSQL to pgdyno.
    ToClient,
    Both,
}

#[derive(Debug, Clone, Copy, Default)]
struct Controls {
    stall_to_server: bool,
    stall_to_client: bool,
    refuse: bool,
    /// Bumped by each `cut_all`; a connection accepted before the bump ends.
    cuts: u64,
    cut: Cut,
}

impl Controls {
    fn stalls(&self, flow: Flow) -> bool {
        match flow {
            Flow::ToServer => self.stall_to_server,
            Flow::ToClient => self.stall_to_client,
            Flow::Both => self.stall_to_server || self.stall_to_client,
        }
    }
}

struct Shared {
    target: u16,
    controls: watch::Sender<Controls>,
    /// Armed by `truncate`, taken by the first connection that forwards
    /// server-to-client bytes after that.
    truncate: Mutex<Option<(usize, Cut)>>,
    accepted: AtomicUsize,
    refused: AtomicUsize,
    next_id: AtomicU64,
    /// Ids of the connections being relayed right now.
    live: Mutex<BTreeSet<u64>>,
}

pub struct FaultRelay {
    port: u16,
    shared: Arc<Shared>,
    accept_task: JoinHandle<()>,
}

impl FaultRelay {
    /// A relay on 127.0.0.1 (port chosen by the system) to
    /// `127.0.0.1:target`, forwarding faithfully until told otherwise.
    pub async fn start(target: u16) -> FaultRelay {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fault relay");
        let port = listener.local_addr().expect("relay address").port();
        let shared = Arc::new(Shared {
            target,
            controls: watch::Sender::new(Controls::default()),
            truncate: Mutex::new(None),
            accepted: AtomicUsize::new(0),
            refused: AtomicUsize::new(0),
            next_id: AtomicU64::new(0),
            live: Mutex::new(BTreeSet::new()),
        });
        let accept_task = tokio::spawn(accept_loop(listener, shared.clone()));
        FaultRelay {
            port,
            shared,
            accept_task,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// An upstream URL for pgdyno: the app role on database `db`, through
    /// this relay.
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgres://{APP_USER}:{APP_PASSWORD}@127.0.0.1:{}/{db}",
            self.port()
        )
    }

    /// Connections accepted so far (refused ones included).
    pub fn accepted(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Connections reset at once because `refuse` was on.
    pub fn refused(&self) -> usize {
        self.shared.refused.load(Ordering::SeqCst)
    }

    /// Connections being relayed right now.
    pub fn live(&self) -> usize {
        self.shared.live.lock().unwrap().len()
    }

    /// Ends every connection relayed now, both legs, as `how` says, and
    /// returns once they are all closed (5 s at most). Later connections
    /// are not affected.
    pub async fn cut_all(&self, how: Cut) {
        let before = {
            let _live = self.shared.live.lock().unwrap();
            self.shared.controls.send_modify(|c| {
                c.cuts += 1;
                c.cut = how;
            });
            self.shared.next_id.load(Ordering::SeqCst)
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while self
            .shared
            .live
            .lock()
            .unwrap()
            .range(..before)
            .next()
            .is_some()
        {
            assert!(
                Instant::now() < deadline,
                "relayed connections still open 5 s after cut_all"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Stops forwarding in `flow` (and keeps any stall already on).
    pub fn stall(&self, flow: Flow) {
        self.shared.controls.send_modify(|c| match flow {
            Flow::ToServer => c.stall_to_server = true,
            Flow::ToClient => c.stall_to_client = true,
            Flow::Both => {
                c.stall_to_server = true;
                c.stall_to_client = true;
            }
        });
    }

    /// Forwards both ways again, held bytes first.
    pub fn resume(&self) {
        self.shared.controls.send_modify(|c| {
            c.stall_to_server = false;
            c.stall_to_client = false;
        });
    }

    /// The next connection to carry server-to-client bytes (the current
    /// one, if a result is on its way) forwards `bytes` more of them, then
    /// is cut as `how` says. Armed until some connection takes it.
    pub fn truncate(&self, bytes: usize, how: Cut) {
        *self.shared.truncate.lock().unwrap() = Some((bytes, how));
    }

    /// Whether an armed `truncate` is still waiting for a connection.
    pub fn truncate_armed(&self) -> bool {
        self.shared.truncate.lock().unwrap().is_some()
    }

    /// While on, new connections are reset as soon as they are accepted.
    pub fn refuse(&self, on: bool) {
        self.shared.controls.send_modify(|c| c.refuse = on);
    }
}

impl Drop for FaultRelay {
    fn drop(&mut self) {
        // The accept task owns the connection tasks: aborting it drops them.
        self.accept_task.abort();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((client, _)) = accepted else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                shared.accepted.fetch_add(1, Ordering::SeqCst);
                // Under the live lock, as in `cut_all`: a connection is
                // either cut by a cut order or counted after it, never both.
                let (id, controls) = {
                    let mut live = shared.live.lock().unwrap();
                    let controls = *shared.controls.borrow();
                    if controls.refuse {
                        (None, controls)
                    } else {
                        let id = shared.next_id.fetch_add(1, Ordering::SeqCst);
                        live.insert(id);
                        (Some(id), controls)
                    }
                };
                let Some(id) = id else {
                    shared.refused.fetch_add(1, Ordering::SeqCst);
                    reset(&client);
                    continue;
                };
                connections.spawn(relay_one(client, id, controls.cuts, shared.clone()));
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Why one relayed connection ended.
enum End {
    /// One side closed or failed: close the other with a FIN.
    Closed,
    Cut(Cut),
}

/// Relays one connection until a side closes or a fault ends it.
async fn relay_one(mut client: TcpStream, id: u64, cuts_at_accept: u64, shared: Arc<Shared>) {
    let live = Live(&shared, id);
    let Ok(mut server) = TcpStream::connect(("127.0.0.1", shared.target)).await else {
        reset(&client);
        return;
    };
    let _ = server.set_nodelay(true);
    let _ = client.set_nodelay(true);
    let mut cut_order = shared.controls.subscribe();
    let end = {
        let (mut cr, mut cw) = client.split();
        let (mut sr, mut sw) = server.split();
        let to_server = pump(&mut cr, &mut sw, Flow::ToServer, &shared);
        let to_client = pump(&mut sr, &mut cw, Flow::ToClient, &shared);
        tokio::select! {
            end = to_server => end,
            end = to_client => end,
            cut = cut_ordered(&mut cut_order, cuts_at_accept) => End::Cut(cut),
        }
    };
    match end {
        End::Cut(Cut::Reset) => {
            reset(&client);
            reset(&server);
            drop((client, server));
            drop(live);
        }
        End::Closed | End::Cut(Cut::Fin) => {
            let _ = client.shutdown().await;
            let _ = server.shutdown().await;
            drop(live);
            // Reading on until the peers close keeps the close a FIN (a
            // close with unread bytes would be a reset).
            let drain = async {
                let mut sink = vec![0; 16 * 1024];
                let a = async { while matches!(client.read(&mut sink).await, Ok(n) if n > 0) {} };
                let mut sink2 = vec![0; 16 * 1024];
                let b = async { while matches!(server.read(&mut sink2).await, Ok(n) if n > 0) {} };
                tokio::join!(a, b);
            };
            let _ = tokio::time::timeout(Duration::from_secs(5), drain).await;
        }
    }
}

/// Removes a connection from the live set however its task ends.
struct Live<'a>(&'a Shared, u64);

impl Drop for Live<'_> {
    fn drop(&mut self) {
        self.0.live.lock().unwrap().remove(&self.1);
    }
}

/// Forwards `from` to `to` while `flow` is not stalled, honouring an armed
/// truncation on the server-to-client side.
async fn pump<R, W>(from: &mut R, to: &mut W, flow: Flow, shared: &Shared) -> End
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut controls = shared.controls.subscribe();
    let mut buf = vec![0u8; 16 * 1024];
    let mut budget: Option<(usize, Cut)> = None;
    loop {
        flowing(&mut controls, flow).await;
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return End::Closed,
            Ok(n) => n,
        };
        // A stall that began while we waited holds what was just read.
        flowing(&mut controls, flow).await;
        if flow == Flow::ToClient && budget.is_none() {
            budget = shared.truncate.lock().unwrap().take();
        }
        let n = budget.map_or(n, |(left, _)| n.min(left));
        if to.write_all(&buf[..n]).await.is_err() {
            return End::Closed;
        }
        if let Some((left, how)) = &mut budget {
            *left -= n;
            if *left == 0 {
                let _ = to.flush().await;
                return End::Cut(*how);
            }
        }
    }
}

/// Returns once `flow` is not stalled.
async fn flowing(controls: &mut watch::Receiver<Controls>, flow: Flow) {
    // The borrow guard is dropped at once: never held across an await.
    let _ = controls.wait_for(|c| !c.stalls(flow)).await;
}

/// Returns how to cut, once a cut was ordered after `cuts_at_accept`.
async fn cut_ordered(controls: &mut watch::Receiver<Controls>, cuts_at_accept: u64) -> Cut {
    let ordered = controls
        .wait_for(|c| c.cuts > cuts_at_accept)
        .await
        .map(|c| c.cut);
    match ordered {
        Ok(cut) => cut,
        // The relay is gone; the task is about to be dropped anyway.
        Err(_) => std::future::pending().await,
    }
}

/// Makes the coming close of `stream` a reset.
fn reset(stream: &TcpStream) {
    let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
}
