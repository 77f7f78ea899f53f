//! ETag and Range against a real nginx on loopback (DESIGN §11). Skipped, with a message,
//! where nginx is not installed (failed under `EVERGREEN_REQUIRE_TOOLS`, as in CI).

mod require;

use evergreen::fetch::{BlobSpec, CancelToken, FetchOptions, Fetcher, Metadata};
use evergreen::trust::sha256_hex;
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tempfile::TempDir;

/// What an HTTPS nginx serves with: its certificate chain and key, and further
/// directives (`ssl_protocols …; ssl_ciphers …;`).
struct Tls<'a> {
    cert: &'a Path,
    key: &'a Path,
    directives: &'a str,
}

/// A running nginx, killed when dropped (also when a test panics).
struct Nginx {
    child: Child,
    port: u16,
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
    fn serve(root: &Path) -> Option<Nginx> {
        Nginx::serve_with(root, None)
    }

    /// Like [`serve`](Self::serve), over HTTPS with the certificate chain and key of `tls`
    /// and its further `ssl_*` directives; each request's protocol and cipher go to
    /// `tls.log`.
    fn serve_with(root: &Path, tls: Option<Tls>) -> Option<Nginx> {
        let binary = find_on_path("nginx")?;
        let prefix = TempDir::new().unwrap();
        let port = free_port();
        let p = prefix.path().display();
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
        // One process (no master), so killing the child stops everything; every path
        // inside the temp dir so nothing on the machine is touched.
        let conf = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {p}/nginx.pid;\n\
             error_log {p}/error.log;\nevents {{ worker_connections 64; }}\n\
             http {{\n  access_log {p}/access.log;\n  client_body_temp_path {p}/body;\n\
             proxy_temp_path {p}/proxy;\n  fastcgi_temp_path {p}/fastcgi;\n\
             uwsgi_temp_path {p}/uwsgi;\n  scgi_temp_path {p}/scgi;\n\
             log_format tls '$ssl_protocol $ssl_cipher $status';\n\
             server {{ listen {listen} root {root}; }}\n}}\n",
            root = root.display()
        );
        let conf_path = prefix.path().join("nginx.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let child = Command::new(binary)
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
        nginx.wait_until_listening();
        Some(nginx)
    }

    fn wait_until_listening(&mut self) {
        for _ in 0..200 {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("nginx exited with {status}: {}", self.log("error.log"));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!(
            "nginx is not listening after 5 s: {}",
            self.log("error.log")
        );
    }

    fn url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme, self.port)
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.prefix.path().join(name)).unwrap_or_default()
    }

    /// `tls.log`'s lines (protocol, cipher, status) once there are `n`, waiting at most two
    /// seconds as [`statuses_after`](Self::statuses_after) does.
    #[cfg(feature = "tls")]
    fn tls_log_after(&self, n: usize) -> Vec<String> {
        for _ in 0..200 {
            if self.log("tls.log").lines().count() >= n {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        self.log("tls.log").lines().map(String::from).collect()
    }

    /// The status of each request in the access log (combined format), oldest first.
    fn statuses(&self) -> Vec<u16> {
        self.log("access.log")
            .lines()
            .filter_map(|l| l.split('"').nth(2)?.split_whitespace().next()?.parse().ok())
            .collect()
    }

    /// The logged statuses once there are `n` of them: nginx writes a request's log line
    /// after the response has gone out, so the client can be faster than the log. Waits
    /// at most two seconds, then returns what is there.
    fn statuses_after(&self, n: usize) -> Vec<u16> {
        for _ in 0..200 {
            let statuses = self.statuses();
            if statuses.len() >= n {
                return statuses;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        self.statuses()
    }
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    let found = std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file());
    if found.is_none() {
        require::missing(name);
    }
    found
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A served directory that nginx's workers can read even when it drops privileges.
fn public_dir() -> TempDir {
    let dir = TempDir::new().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

fn write_public(dir: &Path, rel: &str, bytes: &[u8]) {
    let path = dir.join(rel);
    let mut parent = path.parent();
    std::fs::create_dir_all(parent.unwrap()).unwrap();
    while let Some(p) = parent.filter(|p| *p != dir) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
        parent = p.parent();
    }
    std::fs::write(&path, bytes).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
}

fn options() -> FetchOptions {
    FetchOptions {
        retries: 0,
        ..FetchOptions::default()
    }
}

#[test]
fn second_metadata_fetch_with_the_etag_is_one_request_answered_304() {
    let root = public_dir();
    write_public(root.path(), "channels/stable.json", b"{\"sequence\": 7}");
    let Some(nginx) = Nginx::serve(root.path()) else {
        return;
    };
    let fetcher = Fetcher::new(vec![nginx.url()], options()).unwrap();

    let first = fetcher
        .metadata("channels/stable.json", None, 1 << 20)
        .unwrap();
    let Metadata::Fetched { bytes, etag } = first else {
        panic!("expected the document, found {first:?}");
    };
    assert_eq!(bytes, b"{\"sequence\": 7}");
    let etag = etag.expect("nginx sends an ETag");

    let before = fetcher.stats().requests;
    let second = fetcher
        .metadata("channels/stable.json", Some(&etag), 1 << 20)
        .unwrap();
    assert_eq!(second, Metadata::NotModified);
    assert_eq!(fetcher.stats().requests - before, 1);
    assert_eq!(nginx.statuses_after(2), [200, 304]);
}

#[test]
fn range_resume_against_nginx() {
    let blob: Vec<u8> = (0..3 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let sha256 = sha256_hex(&blob);
    let root = public_dir();
    write_public(root.path(), &format!("blobs/sha256/{sha256}"), &blob);
    let Some(nginx) = Nginx::serve(root.path()) else {
        return;
    };
    let downloads = TempDir::new().unwrap();
    let half = blob.len() / 2;
    std::fs::write(
        downloads.path().join(format!("{sha256}.part")),
        &blob[..half],
    )
    .unwrap();
    let fetcher = Fetcher::new(vec![nginx.url()], options()).unwrap();

    let spec = BlobSpec {
        sha256: sha256.clone(),
        size: blob.len() as u64,
        url: None,
    };
    let path = fetcher
        .download(&spec, downloads.path(), &mut |_, _| {}, &CancelToken::new())
        .unwrap();
    assert_eq!(std::fs::read(path).unwrap(), blob);
    assert_eq!(fetcher.stats().bytes_received, (blob.len() - half) as u64);
    assert_eq!(nginx.statuses_after(1), [206]);
}

/// A test CA (`ca.pem`) and a server certificate for 127.0.0.1 that it signed
/// (`server.pem`, `server.key`), made with the openssl tool with `key` keys (`P-256` or
/// `RSA`), or `None` without it.
#[cfg(feature = "tls")]
fn test_pki(dir: &Path, key: &str) -> Option<()> {
    let openssl = find_on_path("openssl")?;
    let run = |args: &[&str]| {
        let out = require::tool_output(Command::new(&openssl).args(args).current_dir(dir)).unwrap();
        assert!(out.status.success(), "openssl {args:?}: {out:?}");
    };
    let ec = match key {
        "RSA" => [
            "-newkey",
            "rsa",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-nodes",
        ],
        _ => [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ],
    };
    run(&[
        &["req", "-x509"][..],
        &ec,
        &["-keyout", "ca.key", "-out", "ca.pem"],
        &["-days", "2", "-subj", "/CN=evergreen test CA"],
        &["-addext", "basicConstraints=critical,CA:TRUE"],
        &["-addext", "keyUsage=critical,keyCertSign"],
    ]
    .concat());
    run(&[
        &["req"][..],
        &ec,
        &["-keyout", "server.key", "-out", "server.csr"],
        &["-subj", "/CN=127.0.0.1"],
    ]
    .concat());
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "server.ext",
        "-out",
        "server.pem",
    ]);
    for file in ["server.pem", "server.key"] {
        std::fs::set_permissions(dir.join(file), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    Some(())
}

/// nginx over HTTPS, serving `channels/stable.json` (`body`) with a certificate from a
/// test CA (`key`: `P-256` or `RSA`) and the further `directives`; `None` without nginx
/// or openssl.
#[cfg(feature = "tls")]
struct Https {
    nginx: Nginx,
    _root: TempDir,
    pki: TempDir,
}

#[cfg(feature = "tls")]
impl Https {
    fn serve(key: &str, directives: &str, body: &[u8]) -> Option<Https> {
        let root = public_dir();
        write_public(root.path(), "channels/stable.json", body);
        let pki = public_dir();
        test_pki(pki.path(), key)?;
        let (cert, key) = (pki.path().join("server.pem"), pki.path().join("server.key"));
        let tls = Tls {
            cert: &cert,
            key: &key,
            directives,
        };
        let nginx = Nginx::serve_with(root.path(), Some(tls))?;
        assert!(nginx.url().starts_with("https://"));
        Some(Https {
            nginx,
            _root: root,
            pki,
        })
    }

    /// Checks that the document, fetched trusting the test CA, is `body`, and that
    /// nginx logged the request as `tls_log` (protocol, cipher, status).
    fn fetches(&self, body: &[u8], tls_log: &str) {
        let fetched = self.fetch(true).unwrap();
        assert!(
            matches!(&fetched, Metadata::Fetched { bytes, .. } if bytes == body),
            "{fetched:?}"
        );
        assert_eq!(self.nginx.tls_log_after(1), [tls_log]);
    }

    /// Fetches the document, trusting the test CA (`ca_roots`) when `trusting`, else the
    /// system's (or the built-in) roots.
    fn fetch(&self, trusting: bool) -> evergreen::Result<Metadata> {
        let options = FetchOptions {
            ca_roots: trusting.then(|| self.pki.path().join("ca.pem")),
            ..options()
        };
        let fetcher = Fetcher::new(vec![self.nginx.url()], options).unwrap();
        fetcher.metadata("channels/stable.json", None, 1 << 20)
    }
}

/// TLS 1.3 with an ECDSA (P-256) chain: fetched with the test CA as `ca_roots`, and the
/// handshake settles on AES-GCM; refused without them.
#[test]
#[cfg(feature = "tls")]
fn https_with_ca_roots_and_not_without_them() {
    // nginx before 1.23.4 offers TLS 1.2 at most unless told.
    let body = b"{\"sequence\": 7}";
    let Some(https) = Https::serve("P-256", "ssl_protocols TLSv1.2 TLSv1.3;", body) else {
        return;
    };
    https.fetches(body, "TLSv1.3 TLS_AES_256_GCM_SHA384 200");

    // The system's (or the built-in) roots do not know the test CA.
    let err = https.fetch(false).unwrap_err();
    assert!(
        err.to_string().contains("UnknownIssuer") || err.kind() == evergreen::ErrorKind::Config,
        "{err}"
    );
}

/// TLS 1.2 with an RSA certificate, as older servers and object stores serve: the
/// handshake verifies the RSA chain and settles on ECDHE with AES-GCM.
#[test]
#[cfg(feature = "tls")]
fn https_tls12_with_an_rsa_certificate() {
    let body = b"{\"sequence\": 8}";
    let Some(https) = Https::serve("RSA", "ssl_protocols TLSv1.2;", body) else {
        return;
    };
    https.fetches(body, "TLSv1.2 ECDHE-RSA-AES256-GCM-SHA384 200");
}

/// The library offers AES-GCM suites only (src/fetch/tls.rs): a server that accepts
/// nothing but ChaCha20-Poly1305 fails the handshake, with an error that says so, and
/// nothing is requested.
#[test]
#[cfg(feature = "tls")]
fn https_refuses_a_server_that_offers_only_chacha20() {
    for chacha_only in [
        "ssl_protocols TLSv1.2; ssl_ciphers ECDHE-ECDSA-CHACHA20-POLY1305;",
        "ssl_protocols TLSv1.3; ssl_conf_command Ciphersuites TLS_CHACHA20_POLY1305_SHA256;",
    ] {
        let Some(https) = Https::serve("P-256", chacha_only, b"{}") else {
            return;
        };
        let err = https.fetch(true).unwrap_err();
        assert!(
            err.to_string().contains("HandshakeFailure (the server refused the handshake: it accepts none of the TLS versions, cipher suites and key exchanges offered, TLS 1.3 and 1.2 with AES-GCM over X25519, P-256 or P-384, or it wants a client certificate"),
            "{chacha_only}: {err}"
        );
        assert_eq!(https.nginx.statuses(), Vec::<u16>::new(), "{chacha_only}");
    }
}
