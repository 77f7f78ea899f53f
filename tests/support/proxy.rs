//! A loopback forward proxy for tests: HTTP `CONNECT` or SOCKS5, tunnelling to
//! 127.0.0.1 only, logging each tunnel it was asked for.
//!
//! ```ignore
//! let proxy = TunnelProxy::start(Tunnel::Connect { password: None });
//! // config "proxy": proxy.url()  ->  every request goes through it
//! assert_eq!(proxy.tunnels()[0].target, server_addr);
//! ```
//!
//! Dropping the proxy stops its acceptor; every socket has a 5 s timeout, so the relaying
//! threads end by themselves.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// The protocol the proxy speaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tunnel {
    /// HTTP `CONNECT`; with a password, a request without `Proxy-Authorization: Basic`
    /// for `user:password` is answered 407.
    Connect { password: Option<String> },
    /// SOCKS5 without authentication.
    Socks5,
    /// HTTP `CONNECT`, every request answered with this status (`403`, `502`) and no
    /// tunnel.
    Refuse(u16),
    /// HTTP `CONNECT`, the first tunnel whose answer runs past `after` bytes closed
    /// there, as a proxy that drops a long transfer does; the tunnels after it whole.
    Cut { after: u64 },
}

/// One tunnel a client asked for.
#[derive(Debug, Clone)]
pub struct Asked {
    /// The `host:port` it asked to reach.
    pub target: String,
    /// The `Proxy-Authorization` header sent (`CONNECT` only).
    pub authorization: Option<String>,
    /// Whether the tunnel was opened.
    pub opened: bool,
}

/// The running proxy.
pub struct TunnelProxy {
    port: u16,
    kind: Tunnel,
    log: Arc<Mutex<Vec<Asked>>>,
    stop: Arc<AtomicBool>,
    /// Whether a tunnel was cut ([`Tunnel::Cut`]).
    cut: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl TunnelProxy {
    /// Listens on 127.0.0.1 at a free port.
    pub fn start(kind: Tunnel) -> TunnelProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local address").port();
        listener.set_nonblocking(true).expect("non-blocking");
        let log = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let cut = Arc::new(AtomicBool::new(false));
        let acceptor = {
            let (kind, log, stop) = (kind.clone(), Arc::clone(&log), Arc::clone(&stop));
            let cut = Arc::clone(&cut);
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((client, _)) => {
                            let (kind, log) = (kind.clone(), Arc::clone(&log));
                            let cut = Arc::clone(&cut);
                            std::thread::spawn(move || serve(client, &kind, &log, &cut));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            })
        };
        TunnelProxy {
            port,
            kind,
            log,
            stop,
            cut,
            acceptor: Some(acceptor),
        }
    }

    /// The proxy URL, with `user` and the password in it for a `CONNECT` proxy that
    /// wants one.
    pub fn url(&self) -> String {
        match &self.kind {
            Tunnel::Connect { password: None } => format!("http://127.0.0.1:{}", self.port),
            Tunnel::Connect {
                password: Some(pw), ..
            } => format!("http://user:{pw}@127.0.0.1:{}", self.port),
            Tunnel::Socks5 => format!("socks5://127.0.0.1:{}", self.port),
            Tunnel::Refuse(_) | Tunnel::Cut { .. } => format!("http://127.0.0.1:{}", self.port),
        }
    }

    /// The tunnels asked for so far, oldest first.
    pub fn tunnels(&self) -> Vec<Asked> {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Whether a tunnel was cut short ([`Tunnel::Cut`]).
    pub fn was_cut(&self) -> bool {
        self.cut.load(Ordering::SeqCst)
    }
}

impl Drop for TunnelProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn serve(mut client: TcpStream, kind: &Tunnel, log: &Mutex<Vec<Asked>>, cut: &AtomicBool) {
    let _ = client.set_nonblocking(false);
    let _ = client.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = client.set_write_timeout(Some(Duration::from_secs(5)));
    let asked = match kind {
        Tunnel::Connect { password } => connect_handshake(&mut client, password.as_deref()),
        Tunnel::Cut { .. } => connect_handshake(&mut client, None),
        Tunnel::Socks5 => socks5_handshake(&mut client),
        Tunnel::Refuse(status) => refuse(&mut client, *status),
    };
    let Ok((asked, upstream)) = asked else {
        return;
    };
    log.lock().unwrap_or_else(|e| e.into_inner()).push(asked);
    let limit = match kind {
        Tunnel::Cut { after } if !cut.load(Ordering::SeqCst) => Some(*after),
        _ => None,
    };
    if let Some(upstream) = upstream {
        if relay(client, upstream, limit) {
            cut.store(true, Ordering::SeqCst);
        }
    }
}

/// Reads a `CONNECT` request and answers it; the upstream connection when it opened one.
fn connect_handshake(
    client: &mut TcpStream,
    password: Option<&str>,
) -> io::Result<(Asked, Option<TcpStream>)> {
    let head = read_head(client)?;
    let mut lines = head.split("\r\n");
    let request = lines.next().unwrap_or_default();
    let target = match request.split(' ').collect::<Vec<_>>()[..] {
        ["CONNECT", target, _] => target.to_owned(),
        _ => {
            client.write_all(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")?;
            return Err(io::Error::other("not CONNECT"));
        }
    };
    let authorization = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.eq_ignore_ascii_case("proxy-authorization"))
        .map(|(_, v)| v.trim().to_owned());
    let mut asked = Asked {
        target: target.clone(),
        authorization,
        opened: false,
    };
    if let Some(pw) = password {
        let wanted = format!(
            "Basic {}",
            evergreen::trust::encode_base64(format!("user:{pw}").as_bytes())
        );
        if asked.authorization.as_deref() != Some(wanted.as_str()) {
            client.write_all(
                b"HTTP/1.1 407 Proxy Authentication Required\r\n\
                  Proxy-Authenticate: Basic realm=\"test\"\r\nContent-Length: 0\r\n\r\n",
            )?;
            return Ok((asked, None));
        }
    }
    let upstream = loopback(&target)?;
    client.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")?;
    asked.opened = true;
    Ok((asked, Some(upstream)))
}

/// Reads a request and answers it with `status` and a short page, as a proxy whose
/// policy or upstream failed does.
fn refuse(client: &mut TcpStream, status: u16) -> io::Result<(Asked, Option<TcpStream>)> {
    let head = read_head(client)?;
    let target = head.split(' ').nth(1).unwrap_or_default().to_owned();
    let page = format!("<html><body>{status} from the proxy</body></html>");
    let answer = format!(
        "HTTP/1.1 {status} Refused\r\nContent-Type: text/html\r\nContent-Length: {}\r\n\r\n{page}",
        page.len()
    );
    client.write_all(answer.as_bytes())?;
    let asked = Asked {
        target,
        authorization: None,
        opened: false,
    };
    Ok((asked, None))
}

/// RFC 1928 without authentication, `CONNECT` to an IPv4 address or a name.
fn socks5_handshake(client: &mut TcpStream) -> io::Result<(Asked, Option<TcpStream>)> {
    let mut greeting = [0u8; 2];
    client.read_exact(&mut greeting)?;
    let mut methods = vec![0u8; greeting[1] as usize];
    client.read_exact(&mut methods)?;
    if greeting[0] != 5 || !methods.contains(&0) {
        client.write_all(&[5, 0xff])?;
        return Err(io::Error::other("no acceptable SOCKS method"));
    }
    client.write_all(&[5, 0])?;
    let mut request = [0u8; 4];
    client.read_exact(&mut request)?;
    let host = match request[3] {
        1 => {
            let mut ip = [0u8; 4];
            client.read_exact(&mut ip)?;
            Ipv4Addr::from(ip).to_string()
        }
        3 => {
            let mut len = [0u8; 1];
            client.read_exact(&mut len)?;
            let mut name = vec![0u8; len[0] as usize];
            client.read_exact(&mut name)?;
            String::from_utf8_lossy(&name).into_owned()
        }
        _ => return Err(io::Error::other("unsupported SOCKS address type")),
    };
    let mut port = [0u8; 2];
    client.read_exact(&mut port)?;
    let target = format!("{host}:{}", u16::from_be_bytes(port));
    let upstream = loopback(&target)?;
    client.write_all(&[5, 0, 0, 1, 127, 0, 0, 1, 0, 0])?;
    let asked = Asked {
        target,
        authorization: None,
        opened: true,
    };
    Ok((asked, Some(upstream)))
}

/// A connection to `target`, which must be a loopback address: tests never reach out.
fn loopback(target: &str) -> io::Result<TcpStream> {
    let addr: SocketAddr = target
        .replace("localhost", "127.0.0.1")
        .parse()
        .map_err(|_| io::Error::other(format!("not an address: {target}")))?;
    if !addr.ip().is_loopback() {
        return Err(io::Error::other(format!("not loopback: {target}")));
    }
    let upstream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    upstream.set_read_timeout(Some(Duration::from_secs(5)))?;
    upstream.set_write_timeout(Some(Duration::from_secs(5)))?;
    Ok(upstream)
}

/// Copies both ways until either side closes or stays silent for 5 s, or, with a
/// `limit`, until that many bytes of the answer went through: then both connections are
/// closed, and it returns true.
fn relay(client: TcpStream, upstream: TcpStream, limit: Option<u64>) -> bool {
    let (Ok(client2), Ok(upstream2)) = (client.try_clone(), upstream.try_clone()) else {
        return false;
    };
    let up = std::thread::spawn(move || pipe(client2, upstream2));
    let cut = match limit {
        None => {
            pipe(upstream, client);
            false
        }
        Some(limit) => {
            let (mut from, mut to) = (upstream, client);
            let copied = io::copy(&mut (&mut from).take(limit), &mut to).unwrap_or(0);
            let _ = to.shutdown(Shutdown::Both);
            let _ = from.shutdown(Shutdown::Both);
            copied == limit
        }
    };
    let _ = up.join();
    cut
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    let _ = io::copy(&mut from, &mut to);
    let _ = to.shutdown(Shutdown::Write);
}

fn read_head(stream: &mut TcpStream) -> io::Result<String> {
    let mut raw = Vec::new();
    let mut byte = [0u8; 1];
    while !raw.ends_with(b"\r\n\r\n") {
        if raw.len() > 16 * 1024 || stream.read(&mut byte)? == 0 {
            return Err(io::Error::other("bad request head"));
        }
        raw.push(byte[0]);
    }
    Ok(String::from_utf8_lossy(&raw).into_owned())
}
