//! A bad network link on loopback: a TCP relay between a client and a test server that
//! shapes what the server sends, as a cellular modem or a congested Wi-Fi does.
//!
//! ```ignore
//! let link = Link::start(&server.url(), Shape { rate: Some(200 << 10), ..Shape::default() });
//! link.set(|s| s.cut_after = Some(300 << 10));    // every connection cut after 300 KiB
//! // config "server": link.url()
//! assert!(link.connections().len() <= 4);
//! ```
//!
//! Only the server-to-client direction is shaped (bandwidth, cuts, stalls, a slow first
//! byte); the client's requests go through as they are, but not while the link is down.
//! What the server sends is read at once into memory, so the server never waits on the
//! link (the test server gives up on a write after 5 s). The shape can be changed while
//! connections run; each connection reads it as it goes. Dropping the link stops it:
//! every loop checks a stop flag at least every 100 ms.
#![allow(dead_code)]

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How the link treats what the server sends.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Shape {
    /// Bytes per second, per connection; `None`: as fast as loopback goes.
    pub rate: Option<u64>,
    /// Each connection is closed (both ways) once it has carried this many bytes from the
    /// server, whatever the server still had to send.
    pub cut_after: Option<u64>,
    /// Each connection goes silent, its socket open, for the duration once it has carried
    /// this many bytes from the server; then it carries on.
    pub stall_after: Option<(u64, Duration)>,
    /// The wait before the first byte of each connection's answer.
    pub first_byte_delay: Duration,
    /// The link is gone: connections are accepted, nothing goes either way until it is
    /// back.
    pub down: bool,
}

/// One connection the link carried.
#[derive(Debug, Clone)]
pub struct Carried {
    /// When the client opened it.
    pub opened: Instant,
    /// Bytes carried from the server to the client so far.
    pub bytes: u64,
}

struct Shared {
    upstream: String,
    shape: Mutex<Shape>,
    log: Mutex<Vec<(Instant, Arc<AtomicU64>)>>,
    stop: AtomicBool,
}

/// The running link; dropping it stops it.
pub struct Link {
    port: u16,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

/// A poisoned lock only means another test thread panicked; the data is still usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

const POLL: Duration = Duration::from_millis(100);

impl Link {
    /// Listens on 127.0.0.1 at a free port and relays to `upstream`
    /// (`http://127.0.0.1:PORT`, a test server's URL).
    pub fn start(upstream: &str, shape: Shape) -> Link {
        let upstream = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local address").port();
        listener.set_nonblocking(true).expect("non-blocking");
        let shared = Arc::new(Shared {
            upstream,
            shape: Mutex::new(shape),
            log: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        });
        let acceptor = {
            let shared = Arc::clone(&shared);
            std::thread::spawn(move || {
                let mut handlers: Vec<JoinHandle<()>> = Vec::new();
                while !shared.stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((client, _)) => {
                            let count = Arc::new(AtomicU64::new(0));
                            lock(&shared.log).push((Instant::now(), Arc::clone(&count)));
                            let shared = Arc::clone(&shared);
                            handlers.retain(|h| !h.is_finished());
                            handlers
                                .push(std::thread::spawn(move || carry(client, &shared, &count)));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
                for h in handlers {
                    let _ = h.join();
                }
            })
        };
        Link {
            port,
            shared,
            acceptor: Some(acceptor),
        }
    }

    /// `http://127.0.0.1:PORT`, to be used as a base.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Changes the shape; connections already open follow it from their next piece.
    pub fn set(&self, change: impl FnOnce(&mut Shape)) {
        change(&mut lock(&self.shared.shape));
    }

    /// The connections carried so far, oldest first.
    pub fn connections(&self) -> Vec<Carried> {
        lock(&self.shared.log)
            .iter()
            .map(|(opened, bytes)| Carried {
                opened: *opened,
                bytes: bytes.load(Ordering::SeqCst),
            })
            .collect()
    }

    /// Bytes carried from the server over all connections.
    pub fn bytes(&self) -> u64 {
        self.connections().iter().map(|c| c.bytes).sum()
    }

    /// Forgets the connections carried so far.
    pub fn clear_log(&self) {
        lock(&self.shared.log).clear();
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

impl Shared {
    fn shape(&self) -> Shape {
        lock(&self.shape).clone()
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Sleeps `d` in steps, false when the link stops meanwhile.
    fn sleep(&self, d: Duration) -> bool {
        let end = Instant::now() + d;
        while Instant::now() < end {
            if self.stopped() {
                return false;
            }
            std::thread::sleep((end - Instant::now()).min(POLL));
        }
        !self.stopped()
    }

    /// Waits while the link is down; false when it stops meanwhile.
    fn wait_up(&self) -> bool {
        while self.shape().down {
            if !self.sleep(POLL) {
                return false;
            }
        }
        !self.stopped()
    }
}

fn carry(client: TcpStream, shared: &Shared, count: &AtomicU64) {
    let _ = client.set_nonblocking(false);
    if !shared.wait_up() {
        return;
    }
    let Ok(upstream) = TcpStream::connect(&shared.upstream) else {
        return;
    };
    for s in [&client, &upstream] {
        let _ = s.set_read_timeout(Some(POLL));
        let _ = s.set_write_timeout(Some(Duration::from_secs(5)));
    }
    let (Ok(client_in), Ok(upstream_out), Ok(upstream_in)) = (
        client.try_clone(),
        upstream.try_clone(),
        upstream.try_clone(),
    ) else {
        return;
    };
    let done = Arc::new(AtomicBool::new(false));
    std::thread::scope(|scope| {
        let done_up = Arc::clone(&done);
        scope.spawn(move || requests(client_in, upstream_out, shared, &done_up));
        let (tx, rx) = channel::<Vec<u8>>();
        let done_read = Arc::clone(&done);
        scope.spawn(move || {
            let mut upstream_in = upstream_in;
            let mut buf = vec![0u8; 16 * 1024];
            while !shared.stopped() && !done_read.load(Ordering::SeqCst) {
                match upstream_in.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        if tx.send(buf[..n].to_vec()).is_err() {
                            break;
                        }
                    }
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                    Err(_) => break,
                }
            }
        });
        answers(&client, rx, shared, count);
        done.store(true, Ordering::SeqCst);
        let _ = client.shutdown(Shutdown::Both);
        let _ = upstream.shutdown(Shutdown::Both);
    });
}

/// Client to server, unshaped but for the link being down.
fn requests(mut from: TcpStream, mut to: TcpStream, shared: &Shared, done: &AtomicBool) {
    let mut buf = vec![0u8; 16 * 1024];
    while !shared.stopped() && !done.load(Ordering::SeqCst) {
        match from.read(&mut buf) {
            Ok(0) => {
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => {
                if !shared.wait_up() || to.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
}

/// Server to client, shaped. Returns when the server is done, the connection is cut, the
/// client is gone or the link stops.
fn answers(mut client: &TcpStream, rx: Receiver<Vec<u8>>, shared: &Shared, count: &AtomicU64) {
    let mut first = true;
    let mut stalled = false;
    loop {
        let data = match rx.recv_timeout(POLL) {
            Ok(data) => data,
            Err(RecvTimeoutError::Timeout) if !shared.stopped() => continue,
            Err(_) => return,
        };
        let mut rest = &data[..];
        while !rest.is_empty() {
            if !shared.wait_up() {
                return;
            }
            let shape = shared.shape();
            if first {
                first = false;
                if !shared.sleep(shape.first_byte_delay) {
                    return;
                }
            }
            let sent = count.load(Ordering::SeqCst);
            if shape.cut_after.is_some_and(|cut| sent >= cut) {
                return;
            }
            if let Some((at, pause)) = shape.stall_after {
                if sent >= at && !stalled {
                    stalled = true;
                    if !shared.sleep(pause) {
                        return;
                    }
                }
            }
            // A piece is what the rate allows in 20 ms, at most up to the next cut or
            // stall.
            let mut piece = shape.rate.map_or(rest.len(), |r| (r / 50).max(1) as usize);
            piece = piece.min(rest.len());
            for limit in [
                shape.cut_after,
                shape.stall_after.filter(|_| !stalled).map(|(at, _)| at),
            ]
            .into_iter()
            .flatten()
            {
                if limit > sent {
                    piece = piece.min((limit - sent) as usize);
                }
            }
            if client.write_all(&rest[..piece]).is_err() {
                return;
            }
            count.fetch_add(piece as u64, Ordering::SeqCst);
            rest = &rest[piece..];
            if let Some(rate) = shape.rate {
                let pause = Duration::from_nanos(piece as u64 * 1_000_000_000 / rate.max(1));
                if !shared.sleep(pause) {
                    return;
                }
            }
        }
    }
}
