//! A loopback HTTP/1.1 server for tests that serves a directory and misbehaves on demand.
//!
//! ```ignore
//! let server = TestServer::serve(dir.path());
//! server.set_fault_times("blobs/", Fault::Status(503), 2); // the next two blob GETs fail
//! server.set_fault("channels/stable.json", Fault::Replace(old_manifest)); // until cleared
//! let base = server.url();                                 // "http://127.0.0.1:PORT"
//! assert!(server.requests("blobs/sha256/ab…")[1].range.is_some());
//! ```
//!
//! It supports `Range: bytes=n-` / `bytes=n-m`, `ETag` (a hash of the content) and
//! `If-None-Match`, answers every request with `Connection: close`, and logs every
//! request. Faults can be changed while it runs. Dropping the server stops it: every loop
//! checks a stop flag, and every socket has a 5 s timeout.
#![allow(dead_code)]

pub mod link;
pub mod proxy;

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// A way to misbehave, applied to requests whose path starts with a prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Send the headers (with the full `Content-Length`), then only `n` body bytes, then
    /// close the connection.
    DropAfter(u64),
    /// Answer a `Range` request with 200 and the whole content.
    IgnoreRange,
    /// As [`Fault::IgnoreRange`], the content sent chunked: no length declared up front.
    IgnoreRangeChunked,
    /// Answer a `Range` request with the requested bytes, but a 206 whose `Content-Range`
    /// claims they start at 0.
    WrongContentRange,
    /// Answer a `Range` request with the requested bytes and their `Content-Range`,
    /// followed by `n` junk bytes that `Content-Length` counts too: a 206 longer than the
    /// range it names.
    LongRange(u64),
    /// Send the body `bytes` at a time, sleeping `every` between pieces.
    Trickle {
        /// Bytes per piece.
        bytes: usize,
        /// Pause after each piece.
        every: Duration,
    },
    /// As [`Fault::Trickle`], answering a `Range` request with 200 and the whole content.
    IgnoreRangeTrickle {
        /// Bytes per piece.
        bytes: usize,
        /// Pause after each piece.
        every: Duration,
    },
    /// Send the content followed by `n` junk bytes, without `Content-Length` (the body
    /// ends when the connection closes), as an endless-data attacker would.
    AppendJunk(u64),
    /// Answer with this status and an empty body.
    Status(u16),
    /// Answer with this status, a `Retry-After` header of this value and an empty body.
    Busy(u16, String),
    /// As [`Fault::Busy`], with a `Date` header of the third value: the server's clock,
    /// which need not be the device's.
    BusyDated(u16, String, String),
    /// Serve these bytes instead of the file (which need not exist).
    Replace(Vec<u8>),
    /// Answer `302 Found` with this `Location`.
    Redirect(String),
    /// Answer 200 with these bytes whatever was asked (`Range` too), as a misconfigured
    /// mirror serving its "not found" page with status 200 does.
    ErrorPage(Vec<u8>),
    /// As [`Fault::ErrorPage`], sent chunked, as a proxy or captive portal may: nothing
    /// declares its length before it ends.
    ChunkedErrorPage(Vec<u8>),
    /// Send the content chunked, then the last chunk and trailer lines, one every 50 ms,
    /// until the client goes away or the server stops: a single read of the body never
    /// ends, since each trailer is data for the connection but none for the body.
    EndlessTrailers,
    /// Serve the file with an `ETag` of this many bytes (and honour it in `If-None-Match`),
    /// as a hostile server or mirror may, to make every later poll as large.
    LongEtag(usize),
    /// Send headers for a chunked body, then the size line of its first chunk, 640 `0`s
    /// every 50 ms, never ending it, until the client goes away or the server stops: the
    /// connection gets bytes, the body none. (ureq gives up when its 128 KiB buffer is
    /// full, about 10 s in: a client that waits for that fails a test's time bound.)
    DrippedChunkSize,
    /// Send the content chunked, with a `Content-Length` of this value as well: a
    /// framework or proxy that adds both. The chunked framing overrides the length (RFC
    /// 9112 §6.3), and is what the body is read by.
    ChunkedWithLength(u64),
    /// Serve the file gzip-compressed, with `Content-Encoding: gzip`, whatever the request
    /// asked: what S3 and other object stores send for an object uploaded compressed with
    /// that metadata (deploy tools that gzip `.json` do so).
    Gzipped,
    /// Serve the file without an `ETag`, so never a 304, as `python3 -m http.server` does
    /// (and servers behind one name whose tags differ, as nginx's do over copies with
    /// other file times).
    NoEtag,
}

/// One request the server received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logged {
    /// The path without the leading `/`.
    pub path: String,
    /// The `Range` header.
    pub range: Option<String>,
    /// The `If-None-Match` header.
    pub if_none_match: Option<String>,
    /// The status answered.
    pub status: u16,
}

struct Rule {
    prefix: String,
    fault: Fault,
    /// `None`: until cleared.
    times: Option<u32>,
}

struct Shared {
    root: PathBuf,
    rules: Mutex<Vec<Rule>>,
    log: Mutex<Vec<Logged>>,
    stop: AtomicBool,
}

/// The running server; dropping it stops it and joins its threads.
pub struct TestServer {
    port: u16,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl TestServer {
    /// Serves `root` on `127.0.0.1` at a free port.
    pub fn serve(root: &Path) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local address").port();
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let shared = Arc::new(Shared {
            root: root.to_owned(),
            rules: Mutex::new(Vec::new()),
            log: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        });
        let for_acceptor = Arc::clone(&shared);
        let acceptor = std::thread::spawn(move || accept_loop(listener, for_acceptor));
        TestServer {
            port,
            shared,
            acceptor: Some(acceptor),
        }
    }

    /// `http://127.0.0.1:PORT`, to be used as a base.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Applies `fault` to every request under `path_prefix` until [`clear_faults`].
    pub fn set_fault(&self, path_prefix: &str, fault: Fault) {
        self.add_rule(path_prefix, fault, None);
    }

    /// Applies `fault` to the next `times` requests under `path_prefix`.
    pub fn set_fault_times(&self, path_prefix: &str, fault: Fault, times: u32) {
        self.add_rule(path_prefix, fault, Some(times));
    }

    /// Removes every fault: from now on the directory is served faithfully.
    pub fn clear_faults(&self) {
        lock(&self.shared.rules).clear();
    }

    /// The requests received for exactly `path` (leading `/` optional), oldest first.
    pub fn requests(&self, path: &str) -> Vec<Logged> {
        let path = path.trim_start_matches('/');
        lock(&self.shared.log)
            .iter()
            .filter(|l| l.path == path)
            .cloned()
            .collect()
    }

    /// Every request received, whatever its path, oldest first.
    pub fn log(&self) -> Vec<Logged> {
        lock(&self.shared.log).clone()
    }

    /// Forgets the requests received so far (a test counting the memory its process holds
    /// must not count the log's).
    pub fn clear_log(&self) {
        *lock(&self.shared.log) = Vec::new();
    }

    /// The newest rule is consulted first, so a second fault for the same path replaces
    /// the first (until the newer one is used up, when it has a count).
    fn add_rule(&self, prefix: &str, fault: Fault, times: Option<u32>) {
        lock(&self.shared.rules).insert(
            0,
            Rule {
                prefix: prefix.trim_start_matches('/').to_owned(),
                fault,
                times,
            },
        );
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

/// `len` pseudo-random bytes (xorshift from `seed`): content no compressor shrinks and no
/// two seeds share, for blobs and archives of a given size.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A poisoned lock only means another test thread panicked; the data is still usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut handlers: Vec<JoinHandle<()>> = Vec::new();
    while !shared.stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                let shared = Arc::clone(&shared);
                handlers.retain(|h| !h.is_finished());
                handlers.push(std::thread::spawn(move || {
                    let _ = handle(stream, &shared);
                }));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
    for h in handlers {
        let _ = h.join();
    }
}

struct Head {
    path: String,
    range: Option<String>,
    if_none_match: Option<String>,
}

fn handle(mut stream: TcpStream, shared: &Shared) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let head = read_head(&mut stream)?;
    let fault = take_fault(shared, &head.path);
    let reply = reply(shared, &head, fault.as_ref());
    lock(&shared.log).push(Logged {
        path: head.path.clone(),
        range: head.range.clone(),
        if_none_match: head.if_none_match.clone(),
        status: reply.status,
    });
    send(&mut stream, &reply, fault.as_ref(), &shared.stop)
}

fn read_head(stream: &mut TcpStream) -> io::Result<Head> {
    const MAX_HEAD: usize = 16 * 1024;
    let mut raw = Vec::new();
    let mut byte = [0u8; 1];
    while !raw.ends_with(b"\r\n\r\n") {
        if raw.len() >= MAX_HEAD || stream.read(&mut byte)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "bad request head",
            ));
        }
        raw.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&raw);
    let mut lines = text.split("\r\n");
    let target = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .unwrap_or("/");
    let mut head = Head {
        path: target.trim_start_matches('/').to_owned(),
        range: None,
        if_none_match: None,
    };
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            let value = Some(value.trim().to_owned());
            match name.trim().to_ascii_lowercase().as_str() {
                "range" => head.range = value,
                "if-none-match" => head.if_none_match = value,
                _ => {}
            }
        }
    }
    Ok(head)
}

fn take_fault(shared: &Shared, path: &str) -> Option<Fault> {
    let mut rules = lock(&shared.rules);
    let i = rules.iter().position(|r| path.starts_with(&r.prefix))?;
    let fault = rules[i].fault.clone();
    if let Some(times) = &mut rules[i].times {
        *times -= 1;
        if *times == 0 {
            rules.remove(i);
        }
    }
    Some(fault)
}

struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
}

fn reply(shared: &Shared, head: &Head, fault: Option<&Fault>) -> Reply {
    let content = match fault {
        Some(Fault::Status(code)) => return plain(*code),
        Some(Fault::Busy(code, retry_after)) => {
            return Reply {
                headers: vec![("Retry-After", retry_after.clone())],
                ..plain(*code)
            }
        }
        Some(Fault::BusyDated(code, retry_after, date)) => {
            return Reply {
                headers: vec![("Retry-After", retry_after.clone()), ("Date", date.clone())],
                ..plain(*code)
            }
        }
        Some(Fault::Redirect(location)) => {
            return Reply {
                headers: vec![("Location", location.clone())],
                ..plain(302)
            }
        }
        Some(Fault::Replace(bytes)) => Some(bytes.clone()),
        Some(Fault::Gzipped) => {
            let Some(content) = read_file(&shared.root, &head.path) else {
                return plain(404);
            };
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            gz.write_all(&content).expect("gzip in memory");
            return Reply {
                status: 200,
                headers: vec![("Content-Encoding", "gzip".to_owned())],
                body: gz.finish().expect("gzip in memory"),
            };
        }
        Some(Fault::ErrorPage(page) | Fault::ChunkedErrorPage(page)) => {
            return Reply {
                status: 200,
                headers: vec![("Content-Type", "text/html".to_owned())],
                body: page.clone(),
            }
        }
        _ => read_file(&shared.root, &head.path),
    };
    let Some(content) = content else {
        return plain(404);
    };
    let etag = match fault {
        Some(Fault::LongEtag(n)) => format!("\"{}\"", "e".repeat(n.saturating_sub(2))),
        _ => format!("\"{}\"", &evergreen::trust::sha256_hex(&content)[..16]),
    };
    let etag = match fault {
        Some(Fault::NoEtag) => None,
        _ => Some(etag),
    };
    if etag.is_some() && head.if_none_match == etag {
        return Reply {
            headers: etag.into_iter().map(|e| ("ETag", e)).collect(),
            ..plain(304)
        };
    }
    let len = content.len() as u64;
    let range = head.range.as_deref().and_then(|r| parse_range(r, len));
    let ignored = matches!(
        fault,
        Some(Fault::IgnoreRange | Fault::IgnoreRangeChunked | Fault::IgnoreRangeTrickle { .. })
    );
    let range = range.filter(|_| !ignored);
    let Some((from, to)) = range else {
        return Reply {
            status: 200,
            headers: etag.into_iter().map(|e| ("ETag", e)).collect(),
            body: content,
        };
    };
    if from >= len {
        return Reply {
            headers: vec![("Content-Range", format!("bytes */{len}"))],
            ..plain(416)
        };
    }
    let claimed_from = if fault == Some(&Fault::WrongContentRange) {
        0
    } else {
        from
    };
    Reply {
        status: 206,
        headers: etag
            .into_iter()
            .map(|e| ("ETag", e))
            .chain([("Content-Range", format!("bytes {claimed_from}-{to}/{len}"))])
            .collect(),
        body: {
            let mut body = content[from as usize..=to as usize].to_vec();
            if let Some(Fault::LongRange(n)) = fault {
                body.resize(body.len() + *n as usize, b'J');
            }
            body
        },
    }
}

fn plain(status: u16) -> Reply {
    Reply {
        status,
        headers: Vec::new(),
        body: Vec::new(),
    }
}

/// The file under `root`, refusing paths that could leave it.
fn read_file(root: &Path, path: &str) -> Option<Vec<u8>> {
    if path.split('/').any(|c| c == ".." || c.is_empty()) {
        return None;
    }
    std::fs::read(root.join(path))
        .ok()
        .filter(|_| root.join(path).is_file())
}

/// `bytes=n-` or `bytes=n-m` as an inclusive range clipped to the content.
fn parse_range(value: &str, len: u64) -> Option<(u64, u64)> {
    let (from, to) = value.strip_prefix("bytes=")?.split_once('-')?;
    let from: u64 = from.trim().parse().ok()?;
    let last = len.saturating_sub(1);
    let to = match to.trim() {
        "" => last,
        to => to.parse::<u64>().ok()?.min(last),
    };
    Some((from, to))
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        302 => "Found",
        304 => "Not Modified",
        404 => "Not Found",
        408 => "Request Timeout",
        425 => "Too Early",
        429 => "Too Many Requests",
        416 => "Range Not Satisfiable",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Whatever",
    }
}

fn send(
    stream: &mut TcpStream,
    reply: &Reply,
    fault: Option<&Fault>,
    stop: &AtomicBool,
) -> io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nConnection: close\r\n",
        reply.status,
        reason(reply.status)
    );
    for (name, value) in &reply.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    let junk = match fault {
        Some(Fault::AppendJunk(n)) => *n as usize,
        _ => 0,
    };
    let chunked = matches!(
        fault,
        Some(
            Fault::EndlessTrailers
                | Fault::DrippedChunkSize
                | Fault::IgnoreRangeChunked
                | Fault::ChunkedErrorPage(_)
                | Fault::ChunkedWithLength(_)
        )
    );
    if let Some(Fault::ChunkedWithLength(n)) = fault {
        head.push_str(&format!("Content-Length: {n}\r\n"));
    }
    if chunked {
        head.push_str("Transfer-Encoding: chunked\r\n");
    } else if junk == 0 {
        head.push_str(&format!("Content-Length: {}\r\n", reply.body.len()));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    let mut body = reply.body.clone();
    body.resize(body.len() + junk, b'J');
    match fault {
        Some(Fault::DropAfter(n)) => {
            let n = (*n as usize).min(body.len());
            stream.write_all(&body[..n])?;
            stream.flush()?;
            stream.shutdown(Shutdown::Both)
        }
        Some(Fault::DrippedChunkSize) => {
            while !stop.load(Ordering::SeqCst) {
                stream.write_all(&[b'0'; 640])?;
                stream.flush()?;
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            stream.shutdown(Shutdown::Both)
        }
        Some(Fault::EndlessTrailers) => {
            write!(stream, "{:x}\r\n", body.len())?;
            stream.write_all(&body)?;
            stream.write_all(b"\r\n0\r\n")?;
            while !stop.load(Ordering::SeqCst) {
                stream.write_all(b"X-More: y\r\n")?;
                stream.flush()?;
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            stream.shutdown(Shutdown::Both)
        }
        Some(
            Fault::IgnoreRangeChunked | Fault::ChunkedErrorPage(_) | Fault::ChunkedWithLength(_),
        ) => {
            for piece in body.chunks(64 * 1024) {
                write!(stream, "{:x}\r\n", piece.len())?;
                stream.write_all(piece)?;
                stream.write_all(b"\r\n")?;
            }
            stream.write_all(b"0\r\n\r\n")?;
            stream.shutdown(Shutdown::Write)
        }
        Some(Fault::Trickle { bytes, every } | Fault::IgnoreRangeTrickle { bytes, every }) => {
            for piece in body.chunks((*bytes).max(1)) {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                stream.write_all(piece)?;
                std::thread::sleep(*every);
            }
            stream.shutdown(Shutdown::Write)
        }
        _ => {
            stream.write_all(&body)?;
            stream.shutdown(Shutdown::Write)
        }
    }
}

/// A loopback port that refuses every connection for as long as this lives: a socket is
/// bound to it and never listens, so nothing else can take it. A port found free and let
/// go could be bound by another test's server before the connection, which then reached
/// that server instead of being refused.
pub struct RefusingPort {
    _socket: std::os::fd::OwnedFd,
    /// The port.
    pub port: u16,
}

impl RefusingPort {
    /// Binds a new one on 127.0.0.1.
    pub fn bind() -> RefusingPort {
        use std::os::fd::FromRawFd;
        // SAFETY: plain socket calls on a descriptor owned by the `OwnedFd` made of it at
        // once; the address structures are zeroed, then filled, and sized as the calls
        // expect.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
            assert!(fd >= 0, "socket: {}", io::Error::last_os_error());
            let socket = std::os::fd::OwnedFd::from_raw_fd(fd);
            libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
            let mut addr: libc::sockaddr_in = std::mem::zeroed();
            addr.sin_family = libc::AF_INET as libc::sa_family_t;
            addr.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
            let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            let at = &mut addr as *mut libc::sockaddr_in as *mut libc::sockaddr;
            assert_eq!(
                libc::bind(fd, at, len),
                0,
                "bind: {}",
                io::Error::last_os_error()
            );
            assert_eq!(libc::getsockname(fd, at, &mut len), 0);
            RefusingPort {
                _socket: socket,
                port: u16::from_be(addr.sin_port),
            }
        }
    }
}
