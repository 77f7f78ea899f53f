//! ETag and Range against a real nginx on loopback (DESIGN §11). Skipped, with a message,
//! where nginx is not installed (failed under `EVERGREEN_REQUIRE_TOOLS`, as in CI).

mod nginxd;
mod require;

use evergreen::fetch::{BlobSpec, CancelToken, FetchOptions, Fetcher, Metadata};
use evergreen::trust::sha256_hex;
use nginxd::Nginx;
#[cfg(feature = "tls")]
use nginxd::{find_on_path, Tls};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
#[cfg(feature = "tls")]
use std::process::Command;
use tempfile::TempDir;

impl Nginx {
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

/// A test CA (`ca.pem`) and a server certificate for `san` (`IP:127.0.0.1`) that it
/// signed (`server.pem`, `server.key`), made with the openssl tool with `key` keys
/// (`P-256` or `RSA`), or `None` without it.
#[cfg(feature = "tls")]
fn test_pki(dir: &Path, key: &str, san: &str) -> Option<()> {
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
        &[
            "-subj",
            &format!("/CN={}", san.split_once(':').map_or(san, |(_, name)| name)),
        ],
    ]
    .concat());
    std::fs::write(
        dir.join("server.ext"),
        format!("subjectAltName={san}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"),
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

/// nginx over HTTPS on 127.0.0.1, serving `channels/stable.json` (`body`) with a
/// certificate for `san` from a test CA (`key`: `P-256` or `RSA`) and the further
/// `directives`; `None` without nginx or openssl.
#[cfg(feature = "tls")]
struct Https {
    nginx: Nginx,
    _root: TempDir,
    pki: TempDir,
}

#[cfg(feature = "tls")]
impl Https {
    fn serve(key: &str, directives: &str, body: &[u8]) -> Option<Https> {
        Https::serve_for("IP:127.0.0.1", key, directives, body)
    }

    fn serve_for(san: &str, key: &str, directives: &str, body: &[u8]) -> Option<Https> {
        let root = public_dir();
        write_public(root.path(), "channels/stable.json", body);
        let pki = public_dir();
        test_pki(pki.path(), key, san)?;
        let (cert, key) = (pki.path().join("server.pem"), pki.path().join("server.key"));
        let tls = Tls {
            cert: &cert,
            key: &key,
            directives,
        };
        let nginx = Nginx::serve_with(root.path(), Some(tls), "")?;
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

/// Trusting a CA is not trusting every name it signed for: a certificate from the test
/// CA for another server (here 127.0.0.2, or a DNS name), presented by the server at
/// 127.0.0.1, fails the handshake (`network`, naming the name), and nothing is requested.
#[test]
#[cfg(feature = "tls")]
fn https_refuses_a_certificate_the_trusted_ca_signed_for_another_name() {
    for san in ["IP:127.0.0.2", "DNS:updates.example.com"] {
        let body = b"{\"sequence\": 9}";
        let Some(https) = Https::serve_for(san, "P-256", "ssl_protocols TLSv1.2 TLSv1.3;", body)
        else {
            return;
        };
        let err = https.fetch(true).unwrap_err();
        assert_eq!(err.kind(), evergreen::ErrorKind::Network, "{san}: {err}");
        assert!(
            err.to_string()
                .contains(r#"certificate not valid for name "127.0.0.1""#),
            "{san}: {err}"
        );
        assert_eq!(https.nginx.tls_log_after(0), Vec::<String>::new(), "{san}");
    }
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

/// An `https://` URL of a plain HTTP server (the port of an `http://` one, the scheme
/// mistyped) is named as such: nginx answers the TLS handshake with a plain `400`, which
/// the TLS library calls "received corrupt message of type InvalidContentType", words
/// that do not tell a user what to change.
#[cfg(feature = "tls")]
#[test]
fn an_https_url_of_a_plain_http_server_is_named_as_such() {
    let root = public_dir();
    write_public(root.path(), "channels/stable.json", b"{}");
    // nginx closes straight after its `400`; were a part of the handshake still unread,
    // the kernel would answer with a reset, which can reach the client before the `400`
    // is read and discard it. Lingering, nginx reads on until the client closes.
    let Some(nginx) = Nginx::serve_with(root.path(), None, "lingering_close always;") else {
        return;
    };
    let url = nginx.url().replacen("http://", "https://", 1);
    let fetcher = Fetcher::new(vec![url.clone()], options()).unwrap();
    let err = fetcher
        .metadata("channels/stable.json", None, 1 << 20)
        .unwrap_err();
    // nginx's own account, should another answer arrive.
    let log = || nginx.log("error.log") + &nginx.log("access.log");
    assert_eq!(
        err.kind(),
        evergreen::ErrorKind::Network,
        "{err}\n{}",
        log()
    );
    assert_eq!(
        err.to_string(),
        format!("GET {url}/channels/stable.json: expected an HTTP response, found an answer that is no TLS (received corrupt message of type InvalidContentType): is the server http://, not https://?"),
        "{}",
        log()
    );
}

/// HTTPS through an HTTP `CONNECT` proxy: the certificate verified is the origin's,
/// through the tunnel, by its name in the URL; an origin the roots do not vouch for is
/// refused through the proxy as it is directly.
#[test]
#[cfg(feature = "tls")]
fn https_through_a_connect_proxy_verifies_the_origin() {
    #[path = "support/proxy.rs"]
    #[allow(dead_code)]
    mod tunnel;
    let body = b"{\"sequence\": 9}";
    let Some(https) = Https::serve("P-256", "ssl_protocols TLSv1.2 TLSv1.3;", body) else {
        return;
    };
    let proxy = tunnel::TunnelProxy::start(tunnel::Tunnel::Connect { password: None });
    let fetch = |trusting: bool| {
        let options = FetchOptions {
            ca_roots: trusting.then(|| https.pki.path().join("ca.pem")),
            proxy: Some(proxy.url()),
            ..options()
        };
        let fetcher = Fetcher::new(vec![https.nginx.url()], options).unwrap();
        fetcher.metadata("channels/stable.json", None, 1 << 20)
    };
    let fetched = fetch(true).unwrap();
    assert!(
        matches!(&fetched, Metadata::Fetched { bytes, .. } if bytes == body),
        "{fetched:?}"
    );
    let err = fetch(false).unwrap_err().to_string();
    assert!(
        err.contains("invalid peer certificate: UnknownIssuer, through proxy http://127.0.0.1:"),
        "{err}"
    );
    let tunnels = proxy.tunnels();
    assert_eq!(tunnels.len(), 2, "{tunnels:?}");
    let origin = https.nginx.url().replace("https://", "");
    assert!(
        tunnels.iter().all(|t| t.target == origin && t.opened),
        "{tunnels:?}"
    );
}
