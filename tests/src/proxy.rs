//! A TCP fault proxy for the fault tests: it sits between a client and a
//! live store on the loopback interface and, on command, adds latency,
//! blackholes (accepts and forwards nothing, never answers), drops the
//! store's answers while forwarding requests, or resets every connection. Traffic goes only to the given upstream address on this
//! machine. It also counts round trips (for tests that an operation takes
//! one).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// What the proxy does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward as is.
    Pass,
    /// Forward each chunk after a delay.
    Latency(Duration),
    /// Accept connections, forward nothing, answer nothing.
    Blackhole,
    /// Forward requests to the store, drop its answers: the store applies
    /// what it is sent and the client never hears of it (a lost answer).
    DropReplies,
}

#[derive(Debug)]
struct Shared {
    fault: Fault,
    connections: Vec<JoinHandle<()>>,
}

/// Round trips seen: a reply chunk after request bytes, per connection.
#[derive(Debug, Default)]
struct Trips {
    count: AtomicU64,
    /// Request chunks written to the store.
    forwarded: AtomicU64,
}

/// A running proxy; dropped, it stops.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Mutex<Shared>>,
    trips: Arc<Trips>,
    accept: JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.reset();
    }
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards to `upstream`, which
    /// must be a loopback address.
    ///
    /// # Panics
    /// When `upstream` is not on loopback, or no port is free.
    pub async fn start(upstream: SocketAddr) -> Self {
        assert!(
            upstream.ip().is_loopback(),
            "the fault proxy forwards only to this machine"
        );
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let addr = listener.local_addr().expect("local addr");
        let shared = Arc::new(Mutex::new(Shared {
            fault: Fault::Pass,
            connections: Vec::new(),
        }));
        let accept_shared = Arc::clone(&shared);
        let trips = Arc::new(Trips::default());
        let accept_trips = Arc::clone(&trips);
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let _ = client.set_nodelay(true);
                let conn_shared = Arc::clone(&accept_shared);
                let trips = Arc::clone(&accept_trips);
                let task = tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let _ = server.set_nodelay(true);
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    // Whether the client sent bytes not yet answered.
                    let asked = Arc::new(AtomicBool::new(false));
                    let up = pump(
                        cr,
                        sw,
                        Arc::clone(&conn_shared),
                        Side::Request(Arc::clone(&asked), Arc::clone(&trips)),
                    );
                    let down = pump(sr, cw, conn_shared, Side::Reply(asked, trips));
                    let _ = tokio::join!(up, down);
                });
                let mut s = accept_shared
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                s.connections.retain(|t| !t.is_finished());
                s.connections.push(task);
            }
        });
        FaultProxy {
            addr,
            shared,
            trips,
            accept,
        }
    }

    /// Round trips since the last [`FaultProxy::reset_round_trips`]: on each
    /// connection, a reply that follows request bytes counts once, however
    /// many chunks either side took (a pipeline is one round trip).
    #[must_use]
    pub fn round_trips(&self) -> u64 {
        self.trips.count.load(Ordering::SeqCst)
    }

    /// Request chunks the proxy has written to the store so far (what a
    /// test waits on to know a request reached the store, whatever the
    /// clock says).
    #[must_use]
    pub fn forwarded(&self) -> u64 {
        self.trips.forwarded.load(Ordering::SeqCst)
    }

    /// Starts counting round trips from zero.
    pub fn reset_round_trips(&self) {
        self.trips.count.store(0, Ordering::SeqCst);
    }

    /// The address clients connect to.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sets the fault for all traffic from now on.
    pub fn set(&self, fault: Fault) {
        self.shared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .fault = fault;
    }

    /// Cuts every open connection (clients see a reset or EOF).
    pub fn reset(&self) {
        let mut s = self
            .shared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for t in s.connections.drain(..) {
            t.abort();
        }
    }
}

/// Which way a pump carries bytes, for counting round trips.
enum Side {
    Request(Arc<AtomicBool>, Arc<Trips>),
    Reply(Arc<AtomicBool>, Arc<Trips>),
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    shared: Arc<Mutex<Shared>>,
    side: Side,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let fault = shared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .fault;
        match fault {
            Fault::Pass => {}
            Fault::Latency(d) => tokio::time::sleep(d).await,
            // Swallow: the peer waits forever (until the connection is cut).
            Fault::Blackhole => continue,
            Fault::DropReplies => {
                if matches!(side, Side::Reply(..)) {
                    continue;
                }
            }
        }
        match &side {
            Side::Request(asked, _) => asked.store(true, Ordering::SeqCst),
            Side::Reply(asked, trips) => {
                if asked.swap(false, Ordering::SeqCst) {
                    trips.count.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
        if let Side::Request(_, trips) = &side {
            trips.forwarded.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// A fault proxy in front of the server at `url` (its port, or
/// `default_port`), and `url` pointed at the proxy (on 127.0.0.1).
///
/// # Panics
/// When `url` does not parse or names no socket address.
pub async fn through_proxy(url: &str, default_port: u16) -> (std::sync::Arc<FaultProxy>, url::Url) {
    let u = url::Url::parse(url).expect("url");
    let host = match u.host_str() {
        Some("localhost") | None => "127.0.0.1".to_owned(),
        Some(h) => h.to_owned(),
    };
    let upstream = format!("{host}:{}", u.port().unwrap_or(default_port))
        .parse()
        .expect("a socket address");
    let proxy = std::sync::Arc::new(FaultProxy::start(upstream).await);
    let mut through = u;
    through.set_host(Some("127.0.0.1")).expect("host");
    through.set_port(Some(proxy.addr().port())).expect("port");
    (proxy, through)
}
