//! The static server of the benchmark: nginx on loopback when installed, else the
//! in-process test server; and a byte-counting TCP proxy for what goes over the wire.

#[path = "../../tests/support/mod.rs"]
mod support;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A server for `root`, stopped when dropped.
pub enum Server {
    Nginx { child: Child, port: u16 },
    InProcess(support::TestServer),
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Server::Nginx { child, .. } = self {
            let _ = child.kill();
            let _ = child.wait();
            crate::interrupt::forget(child.id());
        }
    }
}

impl Server {
    /// nginx when it is on PATH, else the in-process server (which reads each file whole
    /// into memory, so it is slower than nginx for big blobs).
    pub fn start(root: &Path, scratch: &Path) -> Server {
        match find_on_path("nginx") {
            Some(nginx) => match start_nginx(&nginx, root, scratch) {
                Ok(server) => return server,
                Err(e) => eprintln!("nginx did not start ({e}); using the in-process server"),
            },
            None => eprintln!("nginx is not on PATH; using the in-process server"),
        }
        Server::InProcess(support::TestServer::serve(root))
    }

    pub fn url(&self) -> String {
        match self {
            Server::Nginx { port, .. } => format!("http://127.0.0.1:{port}"),
            Server::InProcess(s) => s.url(),
        }
    }

    /// The server's process id when it runs in a process of its own (nginx).
    pub fn pid(&self) -> Option<u32> {
        match self {
            Server::Nginx { child, .. } => Some(child.id()),
            Server::InProcess(_) => None,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Server::Nginx { .. } => "nginx",
            Server::InProcess(_) => "in-process test server",
        }
    }
}

pub fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn start_nginx(binary: &Path, root: &Path, scratch: &Path) -> std::io::Result<Server> {
    let prefix = scratch.join("nginx");
    std::fs::create_dir_all(&prefix)?;
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let p = prefix.display();
    // One process and every path in the scratch dir, as tests/nginx.rs does; sendfile as
    // a production server would have it.
    let conf = format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\npid {p}/nginx.pid;\n\
         error_log {p}/error.log;\nevents {{ worker_connections 64; }}\n\
         http {{\n  access_log off;\n  sendfile on;\n  client_body_temp_path {p}/body;\n\
         proxy_temp_path {p}/proxy;\n  fastcgi_temp_path {p}/fastcgi;\n\
         uwsgi_temp_path {p}/uwsgi;\n  scgi_temp_path {p}/scgi;\n\
         server {{ listen 127.0.0.1:{port}; root {root}; }}\n}}\n",
        root = root.display()
    );
    let conf_path = prefix.join("nginx.conf");
    std::fs::write(&conf_path, conf)?;
    let mut child = Command::new(binary)
        .arg("-p")
        .arg(&prefix)
        .arg("-c")
        .arg(&conf_path)
        .arg("-e")
        .arg(prefix.join("error.log"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    crate::interrupt::stop_on_interrupt(child.id(), "nginx");
    for _ in 0..200 {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(Server::Nginx { child, port });
        }
        if let Ok(Some(status)) = child.try_wait() {
            crate::interrupt::forget(child.id());
            let log = std::fs::read_to_string(prefix.join("error.log")).unwrap_or_default();
            return Err(std::io::Error::other(format!(
                "exited with {status}: {log}"
            )));
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    let _ = child.kill();
    let _ = child.wait();
    crate::interrupt::forget(child.id());
    Err(std::io::Error::other("not listening after 5 s"))
}

/// Bytes and connections through a [`Proxy`].
#[derive(Default)]
pub struct Wire {
    pub up: AtomicU64,
    pub down: AtomicU64,
    pub connections: AtomicU64,
}

impl Wire {
    /// (connections, bytes sent by the client, bytes sent by the server).
    pub fn snapshot(&self) -> (u64, u64, u64) {
        (
            self.connections.load(Ordering::SeqCst),
            self.up.load(Ordering::SeqCst),
            self.down.load(Ordering::SeqCst),
        )
    }
}

/// A loopback TCP proxy in front of `upstream` that counts the bytes each way (HTTP
/// requests and responses, headers included; TCP/IP framing excluded). Its threads live
/// as long as the benchmark process.
pub struct Proxy {
    pub port: u16,
    pub wire: Arc<Wire>,
}

impl Proxy {
    pub fn start(upstream: &str) -> std::io::Result<Proxy> {
        let target = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let wire = Arc::new(Wire::default());
        let counters = Arc::clone(&wire);
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(&target) else {
                    continue;
                };
                counters.connections.fetch_add(1, Ordering::SeqCst);
                pipe(&client, &server, &counters, true);
                pipe(&server, &client, &counters, false);
            }
        });
        Ok(Proxy { port, wire })
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

fn pipe(from: &TcpStream, to: &TcpStream, wire: &Arc<Wire>, up: bool) {
    let (Ok(mut from), Ok(mut to)) = (from.try_clone(), to.try_clone()) else {
        return;
    };
    let wire = Arc::clone(wire);
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 << 10];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 {
                break;
            }
            // Counted before it is passed on, so the total is complete once the client
            // has its answer.
            let counter = if up { &wire.up } else { &wire.down };
            counter.fetch_add(n as u64, Ordering::SeqCst);
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}
