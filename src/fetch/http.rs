//! The HTTP(S) transport, over ureq.

use super::proxy::Via;
use super::transport::{Request, Response, Transport};
use super::FetchOptions;
use crate::error::{Error, ErrorKind, Result};
use std::io::{self, Read};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::Duration;

/// The `User-Agent` of every request: the library and its version.
const AGENT: &str = concat!("evergreen/", env!("CARGO_PKG_VERSION"));

/// HTTP and HTTPS (with the `tls` feature: rustls with ring, trusting the system's CA
/// bundle, [`FetchOptions::ca_roots`], or with the `webpki-roots` feature Mozilla's roots
/// built in) by ureq, with the timeouts, proxy and redirect policy of a [`FetchOptions`].
///
/// The connect timeout bounds the lookup of the host name, then, again, connection set-up
/// (a proxy's name included, and the TLS handshake); the read timeout
/// bounds the wait for the response headers and *each* read of the body, so a large
/// download is never cut for being large, only for going quiet.
///
/// The CA roots (`ca_roots`, else the system's bundle: see `system_roots`) are read on
/// the first request, not when the transport is made: a device that only fetches `file://`
/// or `http://` URLs needs none, and an updater is made, and its startup step, rollback and
/// confirmation run, whatever became of the file (a release that moved the `ca_roots` it
/// shipped must still be rolled back). Without usable roots, an `https://` request fails
/// with [`ErrorKind::Config`] (or [`ErrorKind::Io`] for an unreadable `ca_roots`) naming
/// the file or the paths tried.
pub struct HttpTransport {
    options: FetchOptions,
    /// The proxy `https://` requests go through, and the one `http://` requests go
    /// through (the same for the config's), unless `NO_PROXY` lists their host.
    via: [Option<Via>; 2],
    /// Read on the first request, once for both agents: the TLS configuration with its
    /// CA roots, or why there are no usable roots (only `https://` needs them).
    tls: OnceLock<Result<Tls>>,
    /// Made on the first request.
    agent: OnceLock<ureq::Agent>,
    /// The `User-Agent` sent, once [`identify`](Self::identify) named the device's
    /// product, version and target; [`AGENT`] alone before.
    user_agent: Mutex<Option<String>>,
}

impl std::fmt::Debug for HttpTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpTransport").finish_non_exhaustive()
    }
}

impl HttpTransport {
    /// A transport configured by `options`. Fails with [`ErrorKind::Config`] for a bad
    /// proxy URL; `ca_roots` is read by the first request. Without a configured proxy,
    /// the environment's (`HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`, and `NO_PROXY`: see
    /// [`PROXY_VARIABLES`](super::PROXY_VARIABLES)) is read here, once.
    pub fn new(options: &FetchOptions) -> Result<HttpTransport> {
        let via = match &options.proxy {
            Some(url) => {
                let via = Via::configured(url)?;
                [Some(via.clone()), Some(via)]
            }
            None => [Via::from_env(true), Via::from_env(false)],
        };
        Ok(HttpTransport {
            options: options.clone(),
            via,
            tls: OnceLock::new(),
            agent: OnceLock::new(),
            user_agent: Mutex::new(None),
        })
    }

    /// The agent for `url`, made on the first call.
    fn agent(&self, url: &str) -> Result<&ureq::Agent> {
        if let Err(why) = self.tls() {
            // An `https://` proxy needs the roots as much as an `https://` URL does
            // (without them ureq has no TLS provider, and panics).
            let proxy = self.via_for(url).filter(|via| via.is_https());
            if let Some(via) = proxy {
                let message = format!("GET {url} through proxy {}: {why}", via.name());
                return Err(Error::new(why.kind(), message));
            }
            if is_https(url) {
                return Err(Error::new(why.kind(), format!("GET {url}: {why}")));
            }
        }
        Ok(self.agent.get_or_init(|| self.make_agent()))
    }

    /// The TLS configuration, read on the first call.
    fn tls(&self) -> &Result<Tls> {
        self.tls.get_or_init(|| tls(&self.options))
    }

    /// An agent with the options' settings; with TLS when there are usable roots (plain
    /// `http://` works without).
    fn make_agent(&self) -> ureq::Agent {
        ureq::Agent::with_parts(
            self.agent_config(),
            ureq::unversioned::transport::DefaultConnector::default(),
            Lookup,
        )
    }

    /// The agents' configuration (a test gives it a resolver of its own).
    fn agent_config(&self) -> ureq::config::Config {
        let options = &self.options;
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            // Without it the system resolver is unbounded (getaddrinfo waits 30 s and more
            // on a device whose DNS server never answers); with it ureq looks names up on
            // a thread it stops waiting for. Its connect timeout starts after the lookup.
            .timeout_resolve(nonzero(options.connect_timeout))
            .timeout_connect(nonzero(options.connect_timeout))
            .timeout_recv_response(nonzero(options.read_timeout))
            .timeout_per_read(nonzero(options.read_timeout))
            // `get` follows redirects itself (with `follow_redirects`), hop by hop.
            .max_redirects(0)
            .user_agent(AGENT)
            // Never ureq's own reading of the environment: each request sets `via_for` its
            // URL, which is what errors name.
            .proxy(None);
        #[cfg(feature = "tls")]
        let config = match self.tls() {
            Ok(tls) => config.tls_config(tls.clone()),
            Err(_) => config,
        };
        config.build()
    }
}

/// ureq's own name lookup, bounded by the resolve timeout as ureq bounds it (on a thread
/// that is no longer waited for once the timeout passes), except when the OS gives no
/// thread (a process at its thread limit: a pids cgroup, systemd's `TasksMax`,
/// `RLIMIT_NPROC`): ureq's spawn would panic, and the name is looked up on the calling
/// thread instead, unbounded (an address such as `192.0.2.7` needs no lookup). A thread
/// that ends at once asks the OS first: a lookup thread of our own (its code beside
/// ureq's) took 5–11 KB of the HTTPS library, more than it has. Another thread taking
/// the last one between the two would still panic ureq's spawn.
#[derive(Debug)]
struct Lookup;

impl ureq::unversioned::resolver::Resolver for Lookup {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        config: &ureq::config::Config,
        timeout: ureq::unversioned::transport::NextTimeout,
    ) -> std::result::Result<ureq::unversioned::resolver::ResolvedSocketAddrs, ureq::Error> {
        use ureq::unversioned::{resolver::DefaultResolver, transport::NextTimeout};
        let given = std::thread::Builder::new().spawn(|| ()).is_ok();
        let timeout = if given {
            timeout
        } else {
            NextTimeout::default()
        };
        // Without a timeout, ureq's resolver looks up on the thread it is called on.
        DefaultResolver::default().resolve(uri, config, timeout)
    }
}

/// What the agents' TLS is made of: rustls's configuration, or nothing in a build without
/// TLS.
#[cfg(feature = "tls")]
type Tls = ureq::tls::TlsConfig;
#[cfg(not(feature = "tls"))]
type Tls = ();

/// The TLS configuration for `options`'s roots (see [`roots`]).
#[cfg(feature = "tls")]
fn tls(options: &FetchOptions) -> Result<Tls> {
    roots(options).map(tls_config)
}

/// Without TLS, only the check that no `ca_roots` was asked for.
#[cfg(not(feature = "tls"))]
fn tls(options: &FetchOptions) -> Result<Tls> {
    roots(options)
}

/// The roots `options` trusts for HTTPS: `ca_roots`, else the built-in roots (feature
/// `webpki-roots`), else the system's bundle.
#[cfg(feature = "tls")]
fn roots(options: &FetchOptions) -> Result<ureq::tls::RootCerts> {
    use ureq::tls::RootCerts;
    match &options.ca_roots {
        Some(path) => Ok(RootCerts::new_with_certs(&pem_roots(path)?)),
        #[cfg(feature = "webpki-roots")]
        None => Ok(RootCerts::WebPki),
        #[cfg(not(feature = "webpki-roots"))]
        None => Ok(RootCerts::new_with_certs(&system_roots()?)),
    }
}

/// Without TLS there are no roots; `ca_roots` names a feature this build lacks.
#[cfg(not(feature = "tls"))]
fn roots(options: &FetchOptions) -> Result<()> {
    match &options.ca_roots {
        Some(path) => Err(Error::config(format!(
            "ca_roots {} given, but this build has no TLS (feature \"tls\")",
            path.display()
        ))),
        None => Ok(()),
    }
}

/// Zero means "no limit": ureq would otherwise time out at once.
fn nonzero(d: Duration) -> Option<Duration> {
    (!d.is_zero()).then_some(bounded(d))
}

/// The longest timeout handed to ureq: a hundred years, longer than any device runs.
/// ureq adds each timeout to `Instant::now()` unchecked, which panics for a duration
/// near `u64::MAX` seconds; the config refuses such values, but [`FetchOptions`] is
/// public.
const LONGEST_TIMEOUT: Duration = Duration::from_secs(100 * 365 * 86_400);

/// `d`, at most [`LONGEST_TIMEOUT`].
fn bounded(d: Duration) -> Duration {
    d.min(LONGEST_TIMEOUT)
}

fn is_https(url: &str) -> bool {
    super::strip_scheme(url, "https://").is_some()
}

/// The CA bundles of the common Linux distributions, in the order they are tried: Debian,
/// Ubuntu, Alpine (`ca-certificates`); Fedora, RHEL; openSUSE; Alpine, Arch, BSDs.
#[cfg(feature = "tls")]
pub const SYSTEM_ROOTS: [&str; 4] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// The system's CA certificates: the PEM file `SSL_CERT_FILE` names if it is set (and not
/// empty), else the first of [`SYSTEM_ROOTS`] that exists.
///
/// Fails with [`ErrorKind::Config`] naming every path tried when none exists, or when the
/// file holds no certificate or invalid PEM, and with [`ErrorKind::Io`] when it cannot be
/// read.
#[cfg(feature = "tls")]
pub fn system_roots() -> Result<Vec<ureq::tls::Certificate<'static>>> {
    system_roots_with(std::env::var_os("SSL_CERT_FILE"))
}

/// [`system_roots`] with `ssl_cert_file` for the environment's `SSL_CERT_FILE`.
#[cfg(feature = "tls")]
fn system_roots_with(
    ssl_cert_file: Option<std::ffi::OsString>,
) -> Result<Vec<ureq::tls::Certificate<'static>>> {
    match ssl_cert_file.filter(|v| !v.is_empty()) {
        Some(file) => roots_from(&[std::path::Path::new(&file)], "SSL_CERT_FILE"),
        None => {
            let paths = SYSTEM_ROOTS.map(std::path::Path::new);
            roots_from(&paths, "the system's CA bundle")
        }
    }
}

/// The certificates of the first of `paths` that exists; `what` names the list in errors.
#[cfg(feature = "tls")]
fn roots_from(
    paths: &[&std::path::Path],
    what: &str,
) -> Result<Vec<ureq::tls::Certificate<'static>>> {
    match paths.iter().find(|p| p.exists()) {
        Some(path) => pem_roots(path),
        None => {
            let tried: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
            Err(Error::config(format!(
                "expected CA certificates for https:// in {what} ({}), found no such file; \
                 install the CA bundle, set SSL_CERT_FILE or `ca_roots`, or build with the \
                 \"webpki-roots\" feature",
                tried.join(", ")
            )))
        }
    }
}

/// Every certificate of the PEM file at `path`.
#[cfg(feature = "tls")]
fn pem_roots(path: &std::path::Path) -> Result<Vec<ureq::tls::Certificate<'static>>> {
    use ureq::tls::{parse_pem, PemItem};
    let pem = std::fs::read(path).map_err(|e| Error::io("reading CA roots", path, e))?;
    let mut certs = Vec::new();
    for item in parse_pem(&pem) {
        match item {
            Ok(PemItem::Certificate(c)) => certs.push(c),
            Ok(_) => {}
            Err(e) => {
                return Err(Error::config(format!(
                    "expected PEM certificates in {}, found invalid PEM: {e}",
                    path.display()
                )))
            }
        }
    }
    if certs.is_empty() {
        return Err(Error::config(format!(
            "expected at least one PEM certificate in {}, found none",
            path.display()
        )));
    }
    Ok(certs)
}

/// rustls with `roots` and the crypto provider of [`super::tls`] — what ureq's own
/// `rustls` feature does, but that feature would also bundle Mozilla's roots.
#[cfg(feature = "tls")]
fn tls_config(roots: ureq::tls::RootCerts) -> ureq::tls::TlsConfig {
    ureq::tls::TlsConfig::builder()
        .root_certs(roots)
        .unversioned_rustls_crypto_provider(super::tls::provider())
        .build()
}

/// The most redirects followed for one request (with `follow_redirects`).
const MAX_REDIRECTS: usize = 5;

impl Transport for HttpTransport {
    /// Follows redirects itself rather than leaving them to ureq, so that every hop's
    /// `Location` is known: a failure after a redirect names it and is the redirect's
    /// fault (`http_status`, next base), not the configuration's; an `https://` URL is
    /// never left for a plain one; and too many hops name the last target.
    fn get(&self, url: &str, req: &Request) -> Result<Response> {
        let mut response = self
            .get_once(url, req)
            .map_err(|e| self.call_error(url, None, e))?;
        if !self.options.follow_redirects {
            return Ok(response);
        }
        let (mut current, mut hops) = (url.to_owned(), 0);
        while let Some(next) = redirect_target(&current, &response)? {
            if hops == MAX_REDIRECTS {
                return Err(Error::new(
                    ErrorKind::HttpStatus,
                    format!(
                        "GET {url}: expected at most {MAX_REDIRECTS} redirects, found more (the \
                         last from {current} to {next})"
                    ),
                ));
            }
            hops += 1;
            drop(response);
            response = self
                .get_once(&next, req)
                .map_err(|e| self.call_error(url, Some(&next), e))?;
            current = next;
        }
        if hops > 0 {
            response.final_url = Some(current);
        }
        Ok(response)
    }
}

impl HttpTransport {
    /// From now on, each request's `User-Agent` names the device's `product`, the
    /// `version` it runs (`-` for none) and its `target`, after the library's version:
    /// `evergreen/0.1.0 (com.acme.gateway 1.2.0; x86_64-linux)`, so that a static
    /// server's access log tells which versions the fleet runs (docs/fleet.md, "What the
    /// access log tells"). Nothing that tells one device from another. A character that
    /// is not printable ASCII, or would end a field (`(`, `)`, `;`, blanks), is sent as `_`.
    pub(crate) fn identify(&self, product: &str, version: Option<&str>, target: &str) {
        let field = |s: &str| -> String {
            s.chars()
                .map(|c| match c {
                    '(' | ')' | ';' | '\\' | '"' => '_',
                    c if c.is_ascii_graphic() => c,
                    _ => '_',
                })
                .collect()
        };
        let version = field(version.unwrap_or("-"));
        let agent = format!("{AGENT} ({} {version}; {})", field(product), field(target));
        *self
            .user_agent
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(agent);
    }

    /// The proxy a request for `url` goes through, if any.
    fn via_for(&self, url: &str) -> Option<&Via> {
        self.via[usize::from(!is_https(url))]
            .as_ref()
            .filter(|via| via.serves(url))
    }

    /// One request, no redirect followed (ureq's `max_redirects` is 0).
    fn get_once(&self, url: &str, req: &Request) -> Result<Response, CallError> {
        let mut request = self.agent(url).map_err(CallError::Ours)?.get(url);
        // A deadline for the whole body: a read that gets bytes but no data (the size
        // line of a chunk dripped a byte at a time) returns to no speed check or cancel.
        if let Some(limit) = req.body_timeout {
            request = request
                .config()
                .timeout_recv_body(Some(bounded(limit)))
                .build();
        }
        // The proxy for this URL's scheme, none for a host `NO_PROXY` lists.
        if let Some(via) = self.via_for(url) {
            request = request.config().proxy(Some(via.proxy.clone())).build();
        }
        if let Some(from) = req.range_from {
            request = request.header("Range", format!("bytes={from}-"));
        }
        if let Some(etag) = &req.if_none_match {
            request = request.header("If-None-Match", etag.as_str());
        }
        let agent = self
            .user_agent
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(agent) = agent.as_deref() {
            request = request.header("User-Agent", agent);
        }
        drop(agent);
        let response = request.call().map_err(CallError::Ureq)?;
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let (status, etag, content_range, location, retry_after, date, content_encoding) = (
            response.status().as_u16(),
            header("etag"),
            header("content-range"),
            header("location"),
            header("retry-after"),
            header("date"),
            header("content-encoding"),
        );
        // A chunked body is framed by its chunks, a `Content-Length` beside them ignored
        // (RFC 9112 §6.3), and ureq reads it so: judged by that length, the blob the
        // chunks deliver whole was refused as a short error page, a document as too large.
        let chunked = response.version() != ureq::http::Version::HTTP_10
            && response
                .headers()
                .get_all("transfer-encoding")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .any(|coding| coding.trim().eq_ignore_ascii_case("chunked"));
        let content_length = header("content-length")
            .filter(|_| !chunked)
            .and_then(|v| v.trim().parse().ok());
        let body = Body {
            reader: response.into_body().into_reader(),
            read_timeout: self.options.read_timeout,
            body_timeout: req.body_timeout,
        };
        Ok(Response {
            status,
            etag,
            content_length,
            content_range,
            location,
            final_url: None,
            content_encoding,
            retry_after,
            date,
            body: Box::new(body),
        })
    }

    /// A failure of the request for `url` itself (`redirected_to` `None`) or for a
    /// redirect's target. A URL ureq cannot use is the configuration's fault when
    /// Evergreen built it (`config`, which stops), the redirecting server's when it came
    /// from a `Location` (`http_status`, so the fetcher goes on to the other bases) — as
    /// is an https:// target on a device without CA certificates.
    fn call_error(&self, url: &str, redirected_to: Option<&str>, err: CallError) -> Error {
        let err = match (err, redirected_to) {
            (CallError::Ours(e), None) => return e,
            (CallError::Ours(e), Some(location)) => {
                return Error::new(
                    ErrorKind::HttpStatus,
                    format!(
                        "GET {url} redirected to {}: {}",
                        super::header_text(location),
                        e.message()
                    ),
                )
                .with_source(e)
            }
            (CallError::Ureq(e), _) => e,
        };
        // ureq's `Http` is the `http` crate refusing the URL (`http:///x`, a space in it:
        // "invalid uri character") or a header Evergreen built. Either is the same on
        // every try: not `network`, which the fetcher retries with backoff.
        let kind = match (&err, redirected_to) {
            (
                ureq::Error::BadUri(_) | ureq::Error::Http(_) | ureq::Error::InvalidProxyUrl,
                None,
            ) => ErrorKind::Config,
            (ureq::Error::BadUri(_) | ureq::Error::Http(_), Some(_)) => ErrorKind::HttpStatus,
            _ => transfer_kind(&err),
        };
        let mut found = describe(&err, &self.options);
        if let Some(via) = self.via_for(redirected_to.unwrap_or(url)) {
            found = format!("{found}, through proxy {}", via.name());
        }
        let message = match redirected_to {
            None => format!("GET {url}: expected an HTTP response, found {found}"),
            Some(location) => format!(
                "GET {url}: expected an HTTP response from the redirect to {}, found {found}",
                super::header_text(location)
            ),
        };
        // The system's error itself: ureq's `io: ` in front of it names ureq's variant.
        match err {
            ureq::Error::Io(e) => Error::new(kind, message).with_source(e),
            other => Error::new(kind, message).with_source(other),
        }
    }
}

/// Why [`HttpTransport::get_once`] failed: before ureq was asked (already an [`Error`]),
/// or in ureq.
enum CallError {
    Ours(Error),
    Ureq(ureq::Error),
}

/// The kind of a failure to get an answer: a timeout; an answer that is no valid HTTP (a
/// negative or doubled `Content-Length`, too many headers), which is the server's fault
/// and the same on every try, so `http_status` and the next base; else the network.
/// A proxy refusing the tunnel with a 4xx (its policy, its credentials) answered, as a
/// server's 4xx does: `http_status`, not retried; its 5xx (the origin unreachable from
/// it) is the network's, retried. (ureq follows no redirect here, so its redirect errors
/// do not occur.)
fn transfer_kind(err: &ureq::Error) -> ErrorKind {
    match err {
        ureq::Error::Timeout(_) => ErrorKind::Timeout,
        ureq::Error::Io(e) if e.kind() == io::ErrorKind::TimedOut => ErrorKind::Timeout,
        ureq::Error::Protocol(_) | ureq::Error::LargeResponseHeader(..) => ErrorKind::HttpStatus,
        // ureq's words: "proxy server responded 407/407".
        ureq::Error::ConnectProxyFailed(why) if why.contains(" responded 4") => {
            ErrorKind::HttpStatus
        }
        _ => ErrorKind::Network,
    }
}

/// What went wrong, in words; a timeout names the configured bound that ran out.
fn describe(err: &ureq::Error, options: &FetchOptions) -> String {
    match err {
        ureq::Error::Timeout(ureq::Timeout::Resolve) => format!(
            "no address for the host name within {} (connect timeout)",
            super::duration_words(options.connect_timeout)
        ),
        ureq::Error::Timeout(ureq::Timeout::Connect) => format!(
            "no connection within {} (connect timeout)",
            super::duration_words(options.connect_timeout)
        ),
        ureq::Error::Timeout(ureq::Timeout::RecvResponse | ureq::Timeout::PerRead) => format!(
            "no response within {} (read timeout)",
            super::duration_words(options.read_timeout)
        ),
        ureq::Error::Timeout(other) => format!("a timeout ({other})"),
        #[cfg(feature = "tls")]
        other if refused_handshake(other) && super::tls::ours_in_use() => format!(
            "{} (the server refused the handshake: it accepts none of the TLS versions, cipher suites and key exchanges offered, TLS 1.3 and 1.2 with AES-GCM over X25519, P-256 or P-384, or it wants a client certificate, which Evergreen never sends; docs/design.md §13 13)",
            system_words(other)
        ),
        #[cfg(feature = "tls")]
        other if tls_error(other).is_some_and(|e| {
            *e == rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType)
        }) =>
        {
            format!(
                "an answer that is no TLS ({}): is the server http://, not https://?",
                system_words(other)
            )
        }
        other => system_words(other),
    }
}

/// `err` as its cause says it: an I/O error (a refused connection, a TLS failure under
/// it) without ureq's `io: ` in front, which names ureq's variant, not what went wrong.
fn system_words(err: &ureq::Error) -> String {
    match err {
        ureq::Error::Io(e) => e.to_string(),
        other => other.to_string(),
    }
}

/// The TLS library's error that `err` is or carries, if any.
#[cfg(feature = "tls")]
fn tls_error(err: &ureq::Error) -> Option<&rustls::Error> {
    match err {
        ureq::Error::Rustls(e) => Some(e),
        ureq::Error::Io(e) => e.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()),
        _ => None,
    }
}

/// Whether the server ended the TLS handshake with an alert that says it would not go on
/// with what was offered: no protocol version or cipher suite in common with ours
/// (src/fetch/tls.rs offers AES-GCM only), or, as some servers say it, no client
/// certificate.
#[cfg(feature = "tls")]
fn refused_handshake(err: &ureq::Error) -> bool {
    use rustls::AlertDescription as Alert;
    matches!(
        tls_error(err),
        Some(rustls::Error::AlertReceived(
            Alert::HandshakeFailure | Alert::ProtocolVersion | Alert::InsufficientSecurity
        ))
    )
}

/// The absolute URL a redirect response points to, `None` if `response` is no
/// redirect, or `http_status` for one that must not be followed: no `Location`, a
/// scheme other than http(s), or a step down from `https://` to plain `http://` (which
/// would hand the request, and what the server answers, to anyone on the path).
fn redirect_target(current: &str, response: &Response) -> Result<Option<String>> {
    let status = response.status;
    if !matches!(status, 301 | 302 | 303 | 307 | 308) {
        return Ok(None);
    }
    let refuse = |expected: &str, found: &str| {
        Err(Error::new(
            ErrorKind::HttpStatus,
            format!("GET {current}: expected {expected}, found {status} {found}"),
        ))
    };
    let Some(location) = response.location.as_deref() else {
        return refuse("a Location with the redirect", "without one");
    };
    let target = resolve(current, location.trim());
    let location = super::header_text(location);
    if !super::is_http(&target) {
        return refuse(
            "a redirect to an http:// or https:// URL",
            &format!("to {location}"),
        );
    }
    if is_https(current) && !is_https(&target) {
        return refuse(
            "a redirect from https:// to another https:// URL",
            &format!("to {location} (plain HTTP is not followed from HTTPS)"),
        );
    }
    Ok(Some(target))
}

/// `location` resolved against `base` (RFC 3986 §5.2, without removing `.` and `..`
/// segments, which the server resolves): absolute, `//host/…`, `/path` or `path`.
fn resolve(base: &str, location: &str) -> String {
    if has_scheme(location) {
        return location.to_owned();
    }
    let (scheme, rest) = base.split_once("://").unwrap_or(("http", base));
    if let Some(authority_and_path) = location.strip_prefix("//") {
        return format!("{scheme}://{authority_and_path}");
    }
    let rest = &rest[..rest.find('#').unwrap_or(rest.len())];
    let (authority, path) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
    if location.starts_with('/') {
        return format!("{scheme}://{authority}{location}");
    }
    let path = &path[..path.find('?').unwrap_or(path.len())];
    if location.starts_with('?') || location.is_empty() {
        return format!("{scheme}://{authority}{path}{location}");
    }
    let dir = &path[..path.rfind('/').map_or(0, |i| i + 1)];
    let dir = if dir.is_empty() { "/" } else { dir };
    format!("{scheme}://{authority}{dir}{location}")
}

/// Whether `s` starts with a URI scheme and `:` (RFC 3986 §3.1).
fn has_scheme(s: &str) -> bool {
    let Some((scheme, _)) = s.split_once(':') else {
        return false;
    };
    let mut chars = scheme.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

/// The body, with ureq's timeouts surfaced as [`io::ErrorKind::TimedOut`] so the fetcher
/// can tell a stalled server from a broken connection, saying how long it was silent.
struct Body {
    reader: ureq::BodyReader<'static>,
    read_timeout: Duration,
    body_timeout: Option<Duration>,
}

impl Read for Body {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.reader
            .read(buf)
            .map_err(|e| match (ureq::Error::from(e), self.body_timeout) {
                (ureq::Error::Timeout(ureq::Timeout::RecvBody), Some(limit)) => io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "no end of the body within {} (its size at the minimum speed, plus the speed window and the read timeout)",
                        super::duration_words(limit)
                    ),
                ),
                (ureq::Error::Timeout(_), _) => io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "no data for {} (read timeout)",
                        super::duration_words(self.read_timeout)
                    ),
                ),
                (ureq::Error::Io(e), _) => e,
                (other, _) => io::Error::other(other),
            })
    }
}

#[cfg(test)]
mod redirect_tests {
    use super::*;

    fn redirect(status: u16, location: Option<&str>) -> Response {
        Response {
            content_length: Some(0),
            location: location.map(str::to_owned),
            ..Response::new(status, Box::new(io::empty()))
        }
    }

    #[test]
    fn locations_resolve_against_the_current_url() {
        let base = "https://h:8/repo/blobs/sha256/ab?x=1";
        for (location, expected) in [
            ("https://m/b", "https://m/b"),
            ("//m/b", "https://m/b"),
            ("/other/b", "https://h:8/other/b"),
            ("cd", "https://h:8/repo/blobs/sha256/cd"),
            ("?y=2", "https://h:8/repo/blobs/sha256/ab?y=2"),
        ] {
            assert_eq!(resolve(base, location), expected, "{location}");
        }
        assert_eq!(resolve("http://h", "b"), "http://h/b");
    }

    /// A redirect's target that cannot be requested for a reason of ours (an https://
    /// target on a device without CA certificates) fails the redirect, not the config.
    #[test]
    fn a_target_refused_before_the_request_is_the_redirects_fault() {
        let transport = HttpTransport::new(&FetchOptions::default()).unwrap();
        let ours = CallError::Ours(Error::config("no CA certificates"));
        let e = transport.call_error("http://h/x", Some("https://m/x"), ours);
        assert_eq!(e.kind(), ErrorKind::HttpStatus);
        assert!(
            e.message()
                .contains("redirected to https://m/x: no CA certificates"),
            "{e}"
        );
    }

    #[test]
    fn https_is_never_left_for_plain_http() {
        let from = "https://h/blobs/x";
        for location in [
            "http://h/blobs/x",
            "HTTP://mirror/x",
            "ftp://h/x",
            "file:///x",
        ] {
            let err = redirect_target(from, &redirect(302, Some(location))).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::HttpStatus, "{location}");
            assert!(err.message().contains(location), "{err}");
        }
        let to = redirect_target(from, &redirect(301, Some("HTTPS://m/x"))).unwrap();
        assert_eq!(to.as_deref(), Some("HTTPS://m/x"));
        // From plain HTTP, either is followed.
        let to = redirect_target("http://h/x", &redirect(307, Some("https://m/x"))).unwrap();
        assert_eq!(to.as_deref(), Some("https://m/x"));
        let err = redirect_target(from, &redirect(302, None)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::HttpStatus);
        // 304 and 300 are no redirects to follow.
        assert!(redirect_target(from, &redirect(304, None))
            .unwrap()
            .is_none());
    }

    /// ureq adds each timeout to the current instant unchecked; ones near
    /// `Duration::MAX` (the options are public) panicked with "overflow when adding
    /// duration to instant" before the request was sent.
    #[test]
    fn huge_timeouts_are_an_error_not_a_panic() {
        let options = FetchOptions {
            connect_timeout: Duration::MAX,
            read_timeout: Duration::MAX,
            ..FetchOptions::default()
        };
        let transport = HttpTransport::new(&options).unwrap();
        for body_timeout in [None, Some(Duration::MAX)] {
            let request = Request {
                body_timeout,
                ..Request::default()
            };
            // Nothing listens on port 9: refused, after the deadlines were set up.
            let err = transport.get("http://127.0.0.1:9/x", &request).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Network, "{err}");
        }
    }

    /// A URL of ours the `http` crate refuses (here past `is_http_url`, as a
    /// `FetchOptions` user could pass one) was `network`, and retried after each backoff.
    #[test]
    fn a_url_of_ours_that_http_refuses_is_a_config_error() {
        let transport = HttpTransport::new(&FetchOptions::default()).unwrap();
        for url in ["http://exa mple/x", "http://[::1/x"] {
            let err = transport.get(url, &Request::default()).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Config, "{url}: {err}");
        }
    }
}

#[cfg(all(test, feature = "tls"))]
mod tests {
    use super::*;
    use std::path::Path;

    /// A self-signed P-256 certificate (CN "evergreen test root").
    const CERT: &str = "-----BEGIN CERTIFICATE-----
MIIBkjCCATmgAwIBAgIUQ3NNScf4dNdy4Kk5TE9nevqFn+8wCgYIKoZIzj0EAwIw
HjEcMBoGA1UEAwwTZXZlcmdyZWVuIHRlc3Qgcm9vdDAgFw0yNjExMjMxNzAyMDNa
GA8yMTI2MTAzMDE3MDIwM1owHjEcMBoGA1UEAwwTZXZlcmdyZWVuIHRlc3Qgcm9v
dDBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABLprlvu89JuwLxfM4TUC/9kGuBUN
yxFNLKEvunhlG9tj/nh1AjNK9jPVqiWL6Q+qSBrFZuvIP+S+ed6icxjUcdqjUzBR
MB0GA1UdDgQWBBRND9PPMjbQaLW1ks+YK515b/GdETAfBgNVHSMEGDAWgBRND9PP
MjbQaLW1ks+YK515b/GdETAPBgNVHRMBAf8EBTADAQH/MAoGCCqGSM49BAMCA0cA
MEQCIADfjsJ07Ub9OFs1lBisMYw18lTr4+jleffG4fMO9QaGAiAV3/unPgoYz+sl
rTPbyMtuh6A0S6makkfrf53PSPtBBA==
-----END CERTIFICATE-----
";

    fn der(pem: &str) -> Vec<u8> {
        use base64::Engine;
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        base64::engine::general_purpose::STANDARD
            .decode(body)
            .unwrap()
    }

    #[test]
    fn a_bundle_loads_every_certificate_of_the_first_file_that_exists() {
        let dir = tempfile::tempdir().unwrap();
        let bundle = dir.path().join("bundle.pem");
        std::fs::write(&bundle, format!("# a comment\n{CERT}\n{CERT}")).unwrap();
        let missing = dir.path().join("missing.pem");
        let certs = roots_from(&[&missing, &bundle], "the test bundle").unwrap();
        assert_eq!(certs.len(), 2);
        assert_eq!(certs[0].der(), der(CERT));
        // SSL_CERT_FILE names the file to use.
        let certs = system_roots_with(Some(bundle.clone().into_os_string())).unwrap();
        assert_eq!(certs.len(), 2);
    }

    #[test]
    fn no_bundle_is_a_config_error_naming_every_path_tried() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.pem"), dir.path().join("b.pem"));
        let err = roots_from(&[&a, &b], "the test bundle").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
        let message = err.to_string();
        for path in [&a, &b] {
            assert!(message.contains(&path.display().to_string()), "{message}");
        }
        let err = system_roots_with(Some(a.clone().into_os_string())).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(err.to_string().contains("SSL_CERT_FILE"), "{err}");
        assert!(err.to_string().contains(&a.display().to_string()), "{err}");
        // The list tried without SSL_CERT_FILE is the distributions' usual places.
        assert_eq!(SYSTEM_ROOTS[0], "/etc/ssl/certs/ca-certificates.crt");
    }

    #[test]
    fn a_bundle_without_certificates_is_a_config_error() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let err = roots_from(&[&empty], "the test bundle").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(err.to_string().contains("found none"), "{err}");
        let bad = dir.path().join("bad.pem");
        std::fs::write(
            &bad,
            "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let err = pem_roots(&bad).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(err.to_string().contains("invalid PEM"), "{err}");
        let err = pem_roots(Path::new("/nonexistent/evergreen/roots.pem")).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Io);
    }

    #[test]
    fn https_without_roots_is_a_config_error_and_http_still_works() {
        let transport = HttpTransport::new(&FetchOptions::default()).unwrap();
        // As if the system had no bundle (set before the first request reads it).
        let _ = transport
            .tls
            .set(Err(Error::config("no CA bundle".to_string())));
        let request = Request::default();
        let err = transport
            .get("HTTPS://127.0.0.1:9/x", &request)
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(err.to_string().contains("no CA bundle"), "{err}");
        // A plain http:// request gets as far as the network (nothing listens on port 9).
        let err = transport.get("http://127.0.0.1:9/x", &request).unwrap_err();
        assert_ne!(err.kind(), ErrorKind::Config, "{err}");
    }

    /// An updater must be made (and its startup step, rollback and confirmation run) when
    /// the `ca_roots` file is gone: a release that moved the file it shipped must still be
    /// rolled back. The file is read by the first request, and only https:// needs it.
    #[test]
    fn ca_roots_are_read_by_the_first_request_and_only_https_needs_them() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let options = FetchOptions {
            ca_roots: Some(missing.clone()),
            ..FetchOptions::default()
        };
        let transport = HttpTransport::new(&options).unwrap();
        let request = Request::default();
        let err = transport
            .get("https://127.0.0.1:9/x", &request)
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Io);
        assert!(
            err.to_string().contains(&missing.display().to_string()),
            "{err}"
        );
        let err = transport.get("http://127.0.0.1:9/x", &request).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Network, "{err}");

        std::fs::write(dir.path().join("roots.pem"), CERT).unwrap();
        let options = FetchOptions {
            ca_roots: Some(dir.path().join("roots.pem")),
            ..FetchOptions::default()
        };
        let transport = HttpTransport::new(&options).unwrap();
        let err = transport
            .get("https://127.0.0.1:9/x", &request)
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Network, "{err}");

        // Read once per transport: the metadata agent, made later, reuses what was read.
        std::fs::remove_file(dir.path().join("roots.pem")).unwrap();
        let metadata = Request {
            body_timeout: Some(std::time::Duration::from_secs(5)),
            ..Request::default()
        };
        let err = transport
            .get("https://127.0.0.1:9/x", &metadata)
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Network, "{err}");
    }
}

#[cfg(test)]
mod resolve_tests {
    use super::*;
    use std::time::Instant;
    use ureq::unversioned::resolver::{ResolvedSocketAddrs, Resolver};
    use ureq::unversioned::transport::{DefaultConnector, NextTimeout};

    /// ureq's `DefaultResolver` with a system resolver that hangs (a device whose DNS
    /// server never answers): the lookup is bounded exactly as `DefaultResolver` bounds
    /// it, by a thread and the resolve timeout ureq passes, and blocks without one.
    #[derive(Debug)]
    struct HangingDns {
        hang: Duration,
    }

    impl Resolver for HangingDns {
        fn resolve(
            &self,
            _uri: &ureq::http::Uri,
            _config: &ureq::config::Config,
            timeout: NextTimeout,
        ) -> std::result::Result<ResolvedSocketAddrs, ureq::Error> {
            let hang = self.hang;
            let getaddrinfo = move || std::thread::sleep(hang);
            if timeout.after.is_not_happening() {
                getaddrinfo();
                return Err(ureq::Error::HostNotFound);
            }
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                getaddrinfo();
                let _ = tx.send(());
            });
            match rx.recv_timeout(*timeout.after) {
                Ok(()) => Err(ureq::Error::HostNotFound),
                Err(_) => Err(ureq::Error::Timeout(timeout.reason)),
            }
        }
    }

    #[test]
    fn a_name_the_resolver_never_answers_times_out_within_the_connect_timeout() {
        let options = FetchOptions {
            connect_timeout: Duration::from_secs(1),
            ..FetchOptions::default()
        };
        let transport = HttpTransport::new(&options).unwrap();
        let hang = Duration::from_secs(5);
        let agent = ureq::Agent::with_parts(
            transport.agent_config(),
            DefaultConnector::default(),
            HangingDns { hang },
        );
        assert!(transport.agent.set(agent).is_ok());

        let started = Instant::now();
        let err = transport
            .get("http://updates.example:8080/x", &Request::default())
            .unwrap_err();
        let took = started.elapsed();
        assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
        assert!(took < Duration::from_secs(3), "took {took:?}: {err}");
        assert!(
            err.message().contains("within 1 s (connect timeout)"),
            "{err}"
        );
    }
}

#[cfg(test)]
mod agent_tests {
    use super::*;
    use std::io::Write;
    use std::net::TcpListener;

    /// The `User-Agent` line of one request to `transport`, answered 404 by a loopback
    /// server.
    fn user_agent_sent(transport: &HttpTransport) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!(
            "http://{}/channels/stable.json",
            listener.local_addr().unwrap()
        );
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            conn.set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && conn.read(&mut byte).unwrap() == 1 {
                head.push(byte[0]);
            }
            conn.write_all(
                b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            )
            .unwrap();
            String::from_utf8_lossy(&head).into_owned()
        });
        let response = transport.get(&url, &Request::default()).unwrap();
        assert_eq!(response.status, 404);
        let head = server.join().unwrap();
        let lines: Vec<&str> = head
            .lines()
            .filter(|l| l.to_ascii_lowercase().starts_with("user-agent:"))
            .collect();
        assert_eq!(lines.len(), 1, "{head}");
        lines[0]["user-agent:".len()..].trim().to_string()
    }

    /// The library alone until the device is named; then its product, version and
    /// target, each one field of the log one-liner (docs/fleet.md) whatever the config
    /// holds: what would end a field, or is no printable ASCII, is sent as `_`.
    #[test]
    fn the_user_agent_names_the_device_in_fields_a_log_can_split() {
        let transport = HttpTransport::new(&FetchOptions::default()).unwrap();
        assert_eq!(user_agent_sent(&transport), AGENT);
        transport.identify("com.acme.gateway", Some("1.2.0-rc.1+b.5"), "x86_64-linux");
        assert_eq!(
            user_agent_sent(&transport),
            format!("{AGENT} (com.acme.gateway 1.2.0-rc.1+b.5; x86_64-linux)")
        );
        transport.identify("acme(\"gw\")", None, "börd;2\\");
        assert_eq!(
            user_agent_sent(&transport),
            format!("{AGENT} (acme__gw__ -; b_rd_2_)")
        );
    }
}
