//! A real nginx serving a directory on a loopback port, for the tests that need a
//! production static server (DESIGN §11). `serve` returns `None`, with the message
//! `require::missing` prints, where nginx is not installed (a failure under
//! `EVERGREEN_REQUIRE_TOOLS`, as in CI). A test file using it also declares `mod require;`.

#![allow(dead_code)]

use crate::require;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tempfile::TempDir;

/// What an HTTPS nginx serves with: its certificate chain and key, and further
/// directives (`ssl_protocols …; ssl_ciphers …;`).
pub struct Tls<'a> {
    /// The certificate chain (PEM).
    pub cert: &'a Path,
    /// Its key (PEM).
    pub key: &'a Path,
    /// Further `ssl_*` directives.
    pub directives: &'a str,
}

/// A running nginx, killed when dropped (also when a test panics).
pub struct Nginx {
    child: Child,
    /// The loopback port it listens on.
    pub port: u16,
    prefix: TempDir,
    scheme: &'static str,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Nginx {
    /// Starts nginx serving `root` on a free loopback port, or `None` if it is not
    /// installed.
    pub fn serve(root: &Path) -> Option<Nginx> {
        Nginx::serve_with(root, None, "")
    }

    /// Like [`serve`](Self::serve), over HTTPS when `tls` is given (each request's protocol
    /// and cipher then go to `tls.log`), with `locations` (`location … { … }` blocks, or
    /// any directive of the server context) inside the server block.
    pub fn serve_with(root: &Path, tls: Option<Tls>, locations: &str) -> Option<Nginx> {
        let binary = find_on_path("nginx")?;
        // The port is free when asked for and may be taken before nginx binds it (another
        // test's server, an outgoing connection's local port): nginx then exits, and
        // another port is tried.
        for _ in 0..5 {
            let prefix = TempDir::new().unwrap();
            let conf_path = prefix.path().join("nginx.conf");
            let port = free_port();
            let scheme = write_conf(
                &conf_path,
                prefix.path(),
                port,
                root,
                tls.as_ref(),
                locations,
            );
            let child = Command::new(&binary)
                .arg("-p")
                .arg(prefix.path())
                .arg("-c")
                .arg(&conf_path)
                .arg("-e")
                .arg(prefix.path().join("error.log"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let mut nginx = Nginx {
                child,
                port,
                prefix,
                scheme,
            };
            if nginx.wait_until_listening() {
                return Some(nginx);
            }
        }
        panic!("nginx found no free loopback port in 5 tries");
    }

    /// Whether nginx listens on its port: once it wrote its pid file, which it does only
    /// after binding every port (a connection alone may reach another process that holds
    /// the port meanwhile). `false` when it exited because the port was taken.
    fn wait_until_listening(&mut self) -> bool {
        let pid_file = self.prefix.path().join("nginx.pid");
        for _ in 0..400 {
            let written = std::fs::read_to_string(&pid_file)
                .is_ok_and(|pid| pid.trim() == self.child.id().to_string());
            if written && TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return true;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                let log = self.log("error.log");
                assert!(
                    log.contains("Address already in use"),
                    "nginx exited with {status}: {log}"
                );
                return false;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!(
            "nginx is not listening after 10 s: {}",
            self.log("error.log")
        );
    }

    /// `http://127.0.0.1:<port>` (or `https://`).
    pub fn url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme, self.port)
    }

    /// The log file `name` (`access.log`, `error.log`, `tls.log`) as it is now.
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.prefix.path().join(name)).unwrap_or_default()
    }
}

/// `name` found on `PATH`, or `None` after `require::missing` said so.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    let found = std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file());
    if found.is_none() {
        require::missing(name);
    }
    found
}

/// Writes nginx's config for `port` into `conf_path`, everything inside `prefix` so
/// nothing on the machine is touched; the scheme it serves.
fn write_conf(
    conf_path: &Path,
    prefix: &Path,
    port: u16,
    root: &Path,
    tls: Option<&Tls>,
    locations: &str,
) -> &'static str {
    let p = prefix.display();
    let (scheme, listen) = match tls {
        Some(tls) => (
            "https",
            format!(
                "127.0.0.1:{port} ssl; ssl_certificate {}; ssl_certificate_key {}; {} \
                 access_log {p}/access.log; access_log {p}/tls.log tls;",
                tls.cert.display(),
                tls.key.display(),
                tls.directives
            ),
        ),
        None => ("http", format!("127.0.0.1:{port};")),
    };
    // One process (no master), so killing the child stops everything.
    let conf = format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\npid {p}/nginx.pid;\n\
         error_log {p}/error.log;\nevents {{ worker_connections 64; }}\n\
         http {{\n  access_log {p}/access.log;\n  client_body_temp_path {p}/body;\n\
         proxy_temp_path {p}/proxy;\n  fastcgi_temp_path {p}/fastcgi;\n\
         uwsgi_temp_path {p}/uwsgi;\n  scgi_temp_path {p}/scgi;\n\
         log_format tls '$ssl_protocol $ssl_cipher $status';\n\
         server {{ listen {listen} root {root};\n{locations} }}\n}}\n",
        root = root.display()
    );
    std::fs::write(conf_path, conf).unwrap();
    scheme
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
