//! Getting metadata and artifacts from the server and its mirrors (DESIGN §5.4).
//!
//! A [`Fetcher`] knows a list of *bases* (the server, then each mirror: `http(s)://`
//! URLs, `file://` URLs or plain directories) and picks a [`Transport`] per URL. It
//! fetches small signed documents with [`Fetcher::metadata`] (size-capped, with
//! `If-None-Match`) and artifacts with [`Fetcher::download`] (resumable, size-capped,
//! SHA-256 verified while streaming). It knows nothing of manifests or slots.
//!
//! ```
//! use evergreen::fetch::{BlobSpec, CancelToken, FetchOptions, Fetcher};
//! # let tmp = std::env::temp_dir().join(format!("evg-fetch-doc-{}", std::process::id()));
//! # std::fs::create_dir_all(tmp.join("repo/blobs/sha256")).unwrap();
//! let blob = b"firmware bytes";
//! let sha256 = evergreen::trust::sha256_hex(blob);
//! std::fs::write(tmp.join("repo/blobs/sha256").join(&sha256), blob).unwrap();
//!
//! // A plain directory works as a base, e.g. a mounted USB stick.
//! let repo = tmp.join("repo").display().to_string();
//! let fetcher = Fetcher::new(vec![repo], FetchOptions::default())?;
//! let spec = BlobSpec { sha256: sha256.clone(), size: blob.len() as u64, url: None };
//! let path = fetcher.download(&spec, &tmp.join("downloads"), &mut |_, _| {}, &CancelToken::new())?;
//! assert_eq!(std::fs::read(&path).unwrap(), blob);
//! assert!(path.ends_with(&sha256));
//! # std::fs::remove_dir_all(&tmp).unwrap();
//! # Ok::<(), evergreen::Error>(())
//! ```

mod download;
pub(crate) use download::SlotDest;
#[cfg(feature = "http")]
mod http;
#[cfg(feature = "http")]
mod proxy;
mod speed;
#[cfg(feature = "tls")]
mod tls;
mod transport;

#[cfg(feature = "http")]
pub use http::HttpTransport;
#[cfg(feature = "tls")]
pub use http::{system_roots, SYSTEM_ROOTS};
#[cfg(feature = "http")]
pub use proxy::{NO_PROXY_VARIABLES, PROXY_VARIABLES};
pub use transport::{FileTransport, Request, Response, Transport};

use crate::error::{Error, ErrorKind, Result};
use crate::time::Clock;
use speed::SpeedMeter;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Limits and network settings of a [`Fetcher`]. The defaults are DESIGN §7.1's `limits`.
#[derive(Clone, PartialEq, Eq)]
pub struct FetchOptions {
    /// Bound on looking up the host name, and then again on setting up the connection
    /// (TCP and TLS). Zero means no bound. Default 10 s.
    pub connect_timeout: Duration,
    /// Bound on waiting for the response headers and on each read of the body (an idle
    /// timeout, not a bound on the whole transfer). Zero means no bound. Default 30 s.
    pub read_timeout: Duration,
    /// The slowest average speed accepted, over [`speed_window`](Self::speed_window),
    /// for metadata and blobs alike. Zero disables the check. Default 1024 B/s.
    pub min_speed_bytes_per_s: u64,
    /// The sliding window over which the speed is averaged. It is also the grace period:
    /// nothing is checked until a transfer has run this long. So a trickling server fails
    /// within `speed_window + read_timeout` per attempt. Default 30 s.
    pub speed_window: Duration,
    /// How many more rounds through the server and the mirrors after the first one.
    /// Default 3.
    pub retries: u32,
    /// The wait before retry round `n` (from 0) is `retry_backoff * 2^n`, at most
    /// [`MAX_BACKOFF`] (60 s). Default 1 s.
    pub retry_backoff: Duration,
    /// Follow HTTP redirects (up to 5, to `http(s)://` URLs only, and never from
    /// `https://` to plain `http://`). A redirect that is not followed (all of them when
    /// off, the default) is an [`ErrorKind::HttpStatus`] error naming the `Location`, and
    /// the fetcher goes on to the next base, as it does when a redirect's target cannot
    /// be requested.
    pub follow_redirects: bool,
    /// A PEM file of root certificates to trust for HTTPS *instead of* the system's CA
    /// bundle (`system_roots`), or of Mozilla's roots built in with the `webpki-roots`
    /// feature (for a private CA). Needs the `tls` feature.
    pub ca_roots: Option<PathBuf>,
    /// An HTTP(S) or SOCKS proxy URL for every request. `None` takes the environment's,
    /// as curl reads it: for an `https://` URL the first of `HTTPS_PROXY`, `ALL_PROXY`,
    /// `HTTP_PROXY` (or their lowercase names) that is set, for an `http://` one the first
    /// of `HTTP_PROXY`, `ALL_PROXY`, `HTTPS_PROXY` (`PROXY_VARIABLES`); for every request
    /// but those to the hosts `NO_PROXY` lists (entries
    /// separated by commas or blanks: `example.com` also covers its subdomains, an address
    /// or a CIDR network (`10.0.0.0/8`) its addresses, `10.*` or `192.168.` what starts so,
    /// `*` everything). An error through a proxy names it (without its password) and where
    /// it came from.
    pub proxy: Option<String>,
}

/// As derived, with the proxy's password shown as `***` (`without_passwords`): hosts log
/// what their config makes, and a password is in no log.
impl std::fmt::Debug for FetchOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Every field named: a new one fails to build until it is shown here.
        let FetchOptions {
            connect_timeout,
            read_timeout,
            min_speed_bytes_per_s,
            speed_window,
            retries,
            retry_backoff,
            follow_redirects,
            ca_roots,
            proxy,
        } = self;
        f.debug_struct("FetchOptions")
            .field("connect_timeout", connect_timeout)
            .field("read_timeout", read_timeout)
            .field("min_speed_bytes_per_s", min_speed_bytes_per_s)
            .field("speed_window", speed_window)
            .field("retries", retries)
            .field("retry_backoff", retry_backoff)
            .field("follow_redirects", follow_redirects)
            .field("ca_roots", ca_roots)
            .field("proxy", &proxy.as_deref().map(proxy_without_password))
            .finish()
    }
}

impl Default for FetchOptions {
    fn default() -> FetchOptions {
        FetchOptions {
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(30),
            min_speed_bytes_per_s: 1024,
            speed_window: Duration::from_secs(30),
            retries: 3,
            retry_backoff: Duration::from_secs(1),
            follow_redirects: false,
            ca_roots: None,
            proxy: None,
        }
    }
}

/// A flag the host sets to stop a download between chunks; clones share the flag, so one
/// can be handed to another thread (or a C progress callback) to cancel.
///
/// ```
/// let token = evergreen::fetch::CancelToken::new();
/// let other = token.clone();
/// other.cancel();
/// assert!(token.is_cancelled());
/// ```
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    /// A token that is not cancelled.
    pub fn new() -> CancelToken {
        CancelToken::default()
    }

    /// Asks every holder of this token to stop.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Whether [`cancel`](Self::cancel) was called on this token or a clone.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    pub(crate) fn check(&self) -> Result<()> {
        if self.is_cancelled() {
            Err(Error::new(
                ErrorKind::Cancelled,
                "expected to continue, found the operation cancelled by the host",
            ))
        } else {
            Ok(())
        }
    }
}

/// The longest `ETag` kept for the next poll; a longer one is dropped (the next poll
/// then asks without `If-None-Match`). Real ones are quoted hashes: S3's multipart tags
/// are about 40 bytes, nginx's about 20.
pub const MAX_ETAG_BYTES: usize = 256;

/// The result of [`Fetcher::metadata`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Metadata {
    /// The server answered 304: the document still has the entity tag we sent.
    NotModified,
    /// The document, with its entity tag for the next poll.
    Fetched {
        /// The document's bytes, at most `max_bytes`.
        bytes: Vec<u8>,
        /// The `ETag` to send next time (none when it was longer than
        /// [`MAX_ETAG_BYTES`]).
        etag: Option<String>,
    },
}

/// What to download: a content-addressed blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobSpec {
    /// Lowercase hex SHA-256 of the blob; also its file name.
    pub sha256: String,
    /// The exact size in bytes; nothing more is ever read.
    pub size: u64,
    /// An absolute URL that replaces `<base>/blobs/sha256/<sha256>` on every base.
    pub url: Option<String>,
}

/// Counters of what a [`Fetcher`] did, for benchmarks and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FetchStats {
    /// Requests started (one per transport `get`).
    pub requests: u64,
    /// Body bytes received, over all requests.
    pub bytes_received: u64,
}

/// Fetches metadata and artifacts from a server and its mirrors, with retries, limits and
/// verification. See the [module documentation](self).
pub struct Fetcher {
    bases: Vec<String>,
    options: FetchOptions,
    custom: Option<Box<dyn Transport>>,
    #[cfg(feature = "http")]
    http: Option<HttpTransport>,
    requests: AtomicU64,
    bytes_received: AtomicU64,
    /// What an HTTP-date `Retry-After` is read against when the answer has no `Date`.
    clock: Clock,
    /// Stops every request's retries, whatever the caller's own token says: the updater
    /// cancels it when the C host frees it during a call (`Updater::halted`), and a
    /// check or a download waiting between two attempts ends there.
    pub(crate) halted: Option<CancelToken>,
}

impl std::fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let bases: Vec<String> = self.bases.iter().map(|b| without_passwords(b)).collect();
        f.debug_struct("Fetcher")
            .field("bases", &bases)
            .field("options", &self.options)
            .field("custom_transport", &self.custom.is_some())
            .finish_non_exhaustive()
    }
}

impl Fetcher {
    /// A fetcher over `bases` (the server first, then the mirrors), choosing HTTP(S) or
    /// files per URL. Fails with [`ErrorKind::Config`] when `bases` is empty, a base is
    /// `http(s)://` in a build without the `http` feature, or the options are unusable.
    pub fn new(bases: Vec<String>, options: FetchOptions) -> Result<Fetcher> {
        check_bases(&bases)?;
        #[cfg(not(feature = "http"))]
        if let Some(base) = bases.iter().find(|b| is_http(b)) {
            return Err(Error::config(format!(
                "expected a file:// URL or a directory, found {} (this build has no HTTP)",
                without_passwords(base)
            )));
        }
        Ok(Fetcher {
            #[cfg(feature = "http")]
            http: Some(HttpTransport::new(&options)?),
            bases,
            options,
            custom: None,
            requests: AtomicU64::new(0),
            bytes_received: AtomicU64::new(0),
            clock: crate::time::system_clock(),
            halted: None,
        })
    }

    /// A fetcher that sends every request, whatever its scheme, through the host's
    /// `transport`. Retries, limits and verification are the same as with [`Fetcher::new`].
    pub fn with_transport(
        bases: Vec<String>,
        options: FetchOptions,
        transport: Box<dyn Transport>,
    ) -> Fetcher {
        Fetcher {
            #[cfg(feature = "http")]
            http: None,
            bases,
            options,
            custom: Some(transport),
            requests: AtomicU64::new(0),
            bytes_received: AtomicU64::new(0),
            clock: crate::time::system_clock(),
            halted: None,
        }
    }

    /// The same fetcher reading the time from `clock` (the updater's) instead of the
    /// system's.
    pub(crate) fn with_clock(self, clock: Clock) -> Fetcher {
        Fetcher { clock, ..self }
    }

    /// Fetches a small signed document (root, manifest) at `<base>/<path>`.
    ///
    /// With `etag`, sends `If-None-Match` and returns [`Metadata::NotModified`] on 304.
    /// Never reads more than `max_bytes` ([`ErrorKind::TooLarge`]). A body slower than
    /// [`FetchOptions::min_speed_bytes_per_s`] is [`ErrorKind::SlowRetrieval`]. A 404 from
    /// the server, or from every base, is [`ErrorKind::NotFound`] (a mirror's 404 alone is
    /// not), and so is a 403, which object stores answer for a missing object; 5xx,
    /// network errors, timeouts and slow bodies are retried as for downloads. A 304 to a
    /// request without `etag` is [`ErrorKind::HttpStatus`].
    pub fn metadata(&self, path: &str, etag: Option<&str>, max_bytes: u64) -> Result<Metadata> {
        self.metadata_checked(path, etag, max_bytes, &mut |_| Ok(()))
    }

    /// [`Fetcher::metadata`], taking a document only when `check` accepts its bytes: a
    /// base whose copy it refuses is passed over like one that answered 404 (its error is
    /// the result only when no other base serves a copy that passes), so one mirror with
    /// a CDN's error page served as 200 does not fail every request that reaches it.
    pub fn metadata_checked(
        &self,
        path: &str,
        etag: Option<&str>,
        max_bytes: u64,
        check: &mut dyn FnMut(&[u8]) -> Result<()>,
    ) -> Result<Metadata> {
        self.fetch_metadata(path, etag, max_bytes, check)
            .map_err(redacted)
    }

    fn fetch_metadata(
        &self,
        path: &str,
        etag: Option<&str>,
        max_bytes: u64,
        check: &mut dyn FnMut(&[u8]) -> Result<()>,
    ) -> Result<Metadata> {
        let urls = self.urls(path)?;
        let request = Request {
            range_from: None,
            if_none_match: etag.map(str::to_owned),
            body_timeout: self.body_timeout(max_bytes),
        };
        // The server's 404 is the answer for metadata even when a mirror is down: the
        // root walk ends at the first missing version, and a mirror that cannot be reached
        // must not fail every check that walks it. A mirror's 404 is not: mirrors lag, and
        // a stale one must not end the walk before a rotation the server has.
        self.with_retries_or_absent(&urls, None, true, |asked| {
            let response = self.get(asked, &request)?;
            let source = answered_by(asked, &response);
            let url = source.as_deref().unwrap_or(asked);
            match response.status {
                304 if request.if_none_match.is_some() => Ok(Metadata::NotModified),
                // "Not modified" compared with nothing: not an answer to this request.
                304 => Err(Error::new(
                    ErrorKind::HttpStatus,
                    format!(
                        "GET {url}: expected 200 to a request without If-None-Match (nothing cached), found 304 Not Modified"
                    ),
                )
                .into()),
                200 => {
                    // An entity tag is sent back with every later poll and kept in the
                    // state: one of kilobytes (any server or mirror may send it, none
                    // needs it) would make each unchanged check as large, and the state.
                    let etag = response.etag.clone().filter(|e| e.len() <= MAX_ETAG_BYTES);
                    // Bytes stored compressed (an object uploaded with that metadata) read
                    // as the document in a browser, which decodes them; Evergreen does
                    // not, and says why the copy it got is none.
                    let encoding = response.content_encoding.clone();
                    let bytes = self.read_capped(url, response, max_bytes)?;
                    check(&bytes).map_err(|e| Failure {
                        error: undecoded(cut_short(e, &bytes, &encoding), encoding)
                            .context(format!("{} {url}", fetch_verb(url))),
                        then: Then::Refused,
                        wait: Duration::ZERO,
                    })?;
                    Ok(Metadata::Fetched { etag, bytes })
                }
                // S3 and CloudFront answer a missing object of a private bucket with 403:
                // the root walk must end there as at a 404, or no device could check until
                // the next root is published. (An attacker gains nothing: a 404 is as easy.)
                403 => Err(Error::new(
                    ErrorKind::NotFound,
                    format!("GET {url}: expected 200, found 403 Forbidden (taken as absent)"),
                )
                .into()),
                _ => Err(status_failure(url, &response, &self.clock)),
            }
        })
    }

    /// Downloads a blob into `dir` and returns the path of the complete, verified file
    /// `<dir>/<sha256>`.
    ///
    /// The bytes go to `<dir>/<sha256>.part`, hashed on a separate thread while they
    /// arrive; on a hash match the file is fsynced and renamed. A verified `<sha256>`
    /// already in `dir` is returned without any request; a `.part` is resumed with
    /// `Range`, and fetched again from byte 0 (once per attempt) if the result then fails
    /// its hash. `progress(done, total)` is called between chunks and `cancel` checked
    /// there: cancelling keeps the `.part` for a later call. Errors: see DESIGN §5.4 and
    /// §10 (`not_found`, `http_status`, `network`, `timeout`, `slow_retrieval`,
    /// `too_large`, `hash_mismatch`, `cancelled`, `io`, `config` for a malformed hash).
    pub fn download(
        &self,
        spec: &BlobSpec,
        dir: &Path,
        progress: &mut dyn FnMut(u64, u64),
        cancel: &CancelToken,
    ) -> Result<PathBuf> {
        download::download(self, spec, dir, progress, cancel).map_err(redacted)
    }

    /// Refuses (`io`) downloads of `specs` into `dir` that its file system has no room
    /// for, together, before any of them is fetched: see [`download::check_room`].
    pub(crate) fn check_room(&self, specs: &[BlobSpec], dir: &Path) -> Result<()> {
        download::check_room(dir, specs)
    }

    /// Receives the image `spec` straight into an image slot, as [`Fetcher::download`]
    /// receives a blob into a file: see [`download::stream`].
    pub(crate) fn stream(
        &self,
        spec: &BlobSpec,
        into: &download::SlotDest,
        progress: &mut dyn FnMut(u64, u64),
        cancel: &CancelToken,
    ) -> Result<()> {
        download::stream(self, spec, into, progress, cancel).map_err(redacted)
    }

    /// What this fetcher has done so far.
    pub fn stats(&self) -> FetchStats {
        FetchStats {
            requests: self.requests.load(Ordering::Relaxed),
            bytes_received: self.bytes_received.load(Ordering::Relaxed),
        }
    }

    /// Names the device in the `User-Agent` of the HTTP(S) requests from now on: its
    /// product, the version it runs and its target (see `HttpTransport::identify`). A
    /// host's own transport and `file://` have no such header.
    pub(crate) fn identify(&self, product: &str, version: Option<&str>, target: &str) {
        #[cfg(feature = "http")]
        if let Some(http) = &self.http {
            http.identify(product, version, target);
        }
        #[cfg(not(feature = "http"))]
        let _ = (product, version, target);
    }

    fn urls(&self, path: &str) -> Result<Vec<String>> {
        check_bases(&self.bases)?;
        Ok(self.bases.iter().map(|b| join(b, path)).collect())
    }

    fn transport(&self, url: &str) -> Result<&dyn Transport> {
        if let Some(custom) = &self.custom {
            return Ok(custom.as_ref());
        }
        if !is_http(url) {
            return Ok(&FileTransport);
        }
        #[cfg(feature = "http")]
        if let Some(http) = &self.http {
            return Ok(http);
        }
        Err(Error::config(format!(
            "expected a file:// URL or a path, found {url} (this build has no HTTP)"
        )))
    }

    fn get(&self, url: &str, request: &Request) -> Result<Response> {
        let transport = self.transport(url)?;
        self.requests.fetch_add(1, Ordering::Relaxed);
        transport.get(url, request)
    }

    fn count_received(&self, n: usize) {
        self.bytes_received.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// The whole body of at most `max_bytes` (a document's cap, a blob's bytes still
    /// missing) arrives within the speed window and the read timeout plus its size at the
    /// minimum speed, or the speed rule fails it anyway; none when the rule is off.
    /// Saturating: the options are public, and a sum past `Duration::MAX` means "no
    /// deadline worth keeping" rather than a panic.
    pub(crate) fn body_timeout(&self, max_bytes: u64) -> Option<Duration> {
        let o = &self.options;
        let at_min_speed = max_bytes.checked_div(o.min_speed_bytes_per_s)?;
        Some(
            o.speed_window
                .saturating_add(o.read_timeout)
                .saturating_add(Duration::from_secs(at_min_speed)),
        )
    }

    fn read_capped(&self, url: &str, response: Response, max_bytes: u64) -> Result<Vec<u8>> {
        if let Some(len) = response.content_length.filter(|len| *len > max_bytes) {
            return Err(too_large(url, max_bytes, &format!("{len} bytes declared")));
        }
        // One byte past the cap tells "exactly the cap" from "more" without reading on.
        let mut body = response.body.take(max_bytes.saturating_add(1));
        let mut meter = SpeedMeter::new(&self.options, Instant::now());
        let mut bytes = Vec::new();
        let mut buf = [0u8; 8 * 1024];
        loop {
            let n = read_some(&mut body, &mut buf)
                .map_err(|e| read_error(url, bytes.len() as u64, e))?;
            if n == 0 {
                break;
            }
            self.count_received(n);
            bytes.extend_from_slice(&buf[..n]);
            meter.check(Instant::now(), bytes.len() as u64, url)?;
        }
        if bytes.len() as u64 > max_bytes {
            return Err(too_large(url, max_bytes, "more"));
        }
        Ok(bytes)
    }

    /// Runs `attempt` on each URL in turn, for `1 + retries` rounds with exponential
    /// backoff between rounds, dropping a URL for good once it failed in a way a retry
    /// cannot fix (404, wrong hash, too large, other 4xx).
    fn with_retries<T>(
        &self,
        urls: &[String],
        cancel: &CancelToken,
        attempt: impl FnMut(&str) -> Result<T, Failure>,
    ) -> Result<T> {
        self.with_retries_or_absent(urls, Some(cancel), false, attempt)
    }

    /// [`Fetcher::with_retries`]; with `server_404_is_absent`, a 404 from the server (the
    /// first base) ends in `not_found` after the round it came in, whatever the mirrors
    /// failed with.
    fn with_retries_or_absent<T>(
        &self,
        urls: &[String],
        cancel: Option<&CancelToken>,
        server_404_is_absent: bool,
        mut attempt: impl FnMut(&str) -> Result<T, Failure>,
    ) -> Result<T> {
        let mut live = vec![true; urls.len()];
        let mut only_not_found = true;
        let mut absent_on_server = false;
        let mut last_absent = None;
        // The last failure other than a 404 is the answer, unless every base (or, for
        // metadata, the server) said 404: a mirror's 404 after it must not turn it into
        // `not_found`, which would end the root walk at a stale mirror while the server,
        // failing, has the next root.
        let mut last_present = None;
        let mut first_refused = None;
        // The longest wait (`Retry-After`) asked for in the round before by a base that
        // stays in the call.
        let mut asked = Duration::ZERO;
        // The answer whose `Retry-After` ends last, when it came and what it asked: the
        // error carries what is left of it, for the caller's own schedule beyond this call.
        let mut stay_away: Option<(Instant, Duration)> = None;
        let left = |(at, wait): (Instant, Duration)| wait.saturating_sub(at.elapsed());
        let ended = |error: Error, stay_away: Option<(Instant, Duration)>| {
            let wait = stay_away.map(left).filter(|w| !w.is_zero());
            match wait {
                Some(wait) => error.with_retry_after(wait),
                None => error,
            }
        };
        for round in 0..=self.options.retries {
            if round > 0 {
                let waited = self.back_off(round - 1, std::mem::take(&mut asked), cancel);
                waited.map_err(|e| ended(e, stay_away))?;
            }
            for (url, live) in urls.iter().zip(live.iter_mut()).filter(|(_, l)| **l) {
                self.stopped(cancel).map_err(|e| ended(e, stay_away))?;
                let failure = match attempt(url) {
                    Ok(value) => return Ok(value),
                    Err(failure) => failure,
                };
                if stay_away.is_none_or(|s| left(s) < failure.wait) {
                    stay_away = Some((Instant::now(), failure.wait));
                }
                match failure.then {
                    Then::Stop => return Err(ended(failure.error, stay_away)),
                    Then::NextBase | Then::Refused => *live = false,
                    Then::Retry => asked = asked.max(failure.wait),
                }
                if failure.error.kind() != ErrorKind::NotFound {
                    only_not_found = false;
                    match failure.then {
                        Then::Refused => first_refused = first_refused.or(Some(failure.error)),
                        _ => last_present = Some(failure.error),
                    }
                    continue;
                }
                if server_404_is_absent && Some(url) == urls.first() {
                    absent_on_server = true;
                }
                last_absent = Some(failure.error);
            }
            // A round in which the server said 404 and no mirror served the file is the
            // answer.
            if !live.contains(&true) || absent_on_server {
                break;
            }
        }
        // A 404 from where a redirect led names that server, which the list of bases
        // does not: the summary keeps it.
        let redirected_404 = last_absent
            .as_ref()
            .filter(|e| e.message().contains(REDIRECTED_FROM))
            .map(|e| format!(" (the last: {})", e.message()));
        let present = first_refused.or(last_present);
        let error = match (present.or(last_absent), absent_on_server) {
            (Some(_), _) if only_not_found => Error::new(
                ErrorKind::NotFound,
                format!(
                    "expected the file on one of {}, found it on none{}{}",
                    urls.join(", "),
                    redirected_404.unwrap_or_default(),
                    self.missing_directories()
                ),
            ),
            (Some(other), true) => Error::new(
                ErrorKind::NotFound,
                format!(
                    "expected the file on the server {}, found 404 there (and {other})",
                    urls[0]
                ),
            ),
            (Some(error), _) => error,
            (None, _) => Error::config("expected at least one URL to fetch, found none"),
        };
        Err(ended(error, stay_away))
    }

    /// `; the directory D is missing (a medium not mounted?)` for each base that is a
    /// local directory (`file://` or an absolute path) and does not exist, else nothing:
    /// a USB stick not mounted is told from one that lacks the file.
    fn missing_directories(&self) -> String {
        let local = |b: &&String| b.starts_with('/') || transport::is_file_url(b);
        let missing: Vec<String> = (self.bases.iter().filter(local))
            .filter_map(|b| transport::file_url_path(b))
            .filter(|dir| !dir.exists())
            .map(|dir| {
                format!(
                    "; the directory {} is missing (a medium not mounted?)",
                    dir.components().as_path().display()
                )
            })
            .collect();
        missing.concat()
    }

    /// Sleeps [`backoff`], or longer when a base asked for it, in short steps, so a
    /// cancel (or the halt) is seen promptly.
    fn back_off(&self, n: u32, asked: Duration, cancel: Option<&CancelToken>) -> Result<()> {
        const STEP: Duration = Duration::from_millis(50);
        let mut left = backoff(self.options.retry_backoff, n).max(asked);
        while !left.is_zero() {
            self.stopped(cancel)?;
            let step = left.min(STEP);
            std::thread::sleep(step);
            left -= step;
        }
        Ok(())
    }

    /// `cancelled` once `cancel` or [`Fetcher::halted`] is cancelled.
    fn stopped(&self, cancel: Option<&CancelToken>) -> Result<()> {
        for token in [cancel, self.halted.as_ref()].into_iter().flatten() {
            token.check()?;
        }
        Ok(())
    }
}

/// How a message names the server a followed redirect led to: `<that URL> (redirected
/// from <the URL asked for>)`.
const REDIRECTED_FROM: &str = " (redirected from ";

/// The name of the server that sent `response` to a request for `asked`, when a followed
/// redirect led elsewhere ([`REDIRECTED_FROM`]): errors about the answer name the mirror
/// or CDN node that gave it, not the origin that only redirected.
pub(crate) fn answered_by(asked: &str, response: &Response) -> Option<String> {
    let to = response.final_url.as_deref()?;
    Some(format!("{}{REDIRECTED_FROM}{asked})", header_text(to)))
}

/// The most bytes of a server's header value (a `Location`, a `Content-Range`, a
/// `Retry-After`, a `Content-Encoding`) a message shows: the server picks its length, up to the 64 KiB of
/// headers ureq reads, and a message is one line of a log and of the state's history.
const MAX_HEADER_SHOWN: usize = 256;

/// `value`, from a server's header, as a message shows it: whole up to
/// [`MAX_HEADER_SHOWN`] bytes, else its start and how many bytes it had.
pub(crate) fn header_text(value: &str) -> std::borrow::Cow<'_, str> {
    let mut end = MAX_HEADER_SHOWN;
    if value.len() <= end {
        return value.into();
    }
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes in all)", &value[..end], value.len()).into()
}

/// The longest wait between two retry rounds. Without a cap, `retries: 10` and the
/// default 1 s would wait 8.5 minutes before the last round (17 in all), the download
/// and the check that runs it stalled meanwhile; a minute is long enough for a server
/// to come back from a restart, and the poll interval's own backoff spaces the checks.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// The wait before retry round `n` (from 0): `base * 2^n`, at most [`MAX_BACKOFF`].
fn backoff(base: Duration, n: u32) -> Duration {
    base.saturating_mul(1 << n.min(16)).min(MAX_BACKOFF)
}

/// What the retry loop does after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Then {
    /// Try the next base now and this one again next round (5xx, network, timeouts).
    Retry,
    /// This base cannot serve it; go on with the others.
    NextBase,
    /// This base served a copy the caller refused (a document that does not verify): go
    /// on with the others, and if none serves one that passes, the first such refusal is
    /// the answer, ahead of any base that could not answer at all (a copy that was there
    /// says more than a mirror that was down).
    Refused,
    /// Give up at once (cancelled, local I/O, configuration).
    Stop,
}

/// `e` about bytes that came with `Content-Encoding: <coding>`, saying so: Evergreen asks
/// for no encoding and decodes none, and bytes stored compressed (an object uploaded with
/// that metadata) read as the file in a browser, which decodes them, so the error alone
/// would send the operator to a file that looks fine.
fn undecoded(e: Error, coding: Option<String>) -> Error {
    match coding {
        Some(coding) => e.hint(format_args!(
            "sent with Content-Encoding: {}, which Evergreen does not decode",
            header_text(&coding)
        )),
        None => e,
    }
}

/// `e` about a document `bytes` that ends before its JSON does (nothing after the last
/// white space, or no closing `}`), sent with no `coding`, saying so: a file uploaded in
/// place (scp, `cp` into a docroot, `rsync --inplace`) is served as far as it is written,
/// and a check then must name a copy under way, which the next check reads whole, not
/// only the parser's "EOF".
fn cut_short(e: Error, bytes: &[u8], coding: &Option<String>) -> Error {
    let end = bytes.iter().rposition(|b| !b" \t\r\n".contains(b));
    if coding.is_some() || end.is_some_and(|i| bytes[i] == b'}') {
        return e;
    }
    e.hint(format_args!(
        "the copy served ({} bytes) ends before its JSON does: a file cut short, or one read while an upload (scp, cp, rsync --inplace) was still writing it; the next check reads it again",
        bytes.len()
    ))
}

struct Failure {
    error: Error,
    then: Then,
    /// The least wait before this base is asked again, as it said (`Retry-After`),
    /// however long: waited for before the next round when the base stays in the call,
    /// and carried by the call's error either way ([`Error::retry_after`]).
    wait: Duration,
}

impl Failure {
    fn retry(error: Error) -> Failure {
        Failure {
            error,
            then: Then::Retry,
            wait: Duration::ZERO,
        }
    }

    /// A failure no base can mend, whatever its kind: the call ends with it.
    fn stop(error: Error) -> Failure {
        Failure {
            error,
            then: Then::Stop,
            wait: Duration::ZERO,
        }
    }

    /// A failure of this base alone, whatever its kind: the next base is tried.
    fn next_base(error: Error) -> Failure {
        Failure {
            error,
            then: Then::NextBase,
            wait: Duration::ZERO,
        }
    }

    /// The same failure, its message prefixed by `context`.
    fn context(self, context: impl std::fmt::Display) -> Failure {
        Failure {
            error: self.error.context(context),
            ..self
        }
    }
}

impl From<Error> for Failure {
    fn from(error: Error) -> Failure {
        let then = match error.kind() {
            ErrorKind::Network | ErrorKind::Timeout | ErrorKind::SlowRetrieval => Then::Retry,
            ErrorKind::NotFound
            | ErrorKind::HttpStatus
            | ErrorKind::TooLarge
            | ErrorKind::HashMismatch => Then::NextBase,
            _ => Then::Stop,
        };
        Failure {
            error,
            then,
            wait: Duration::ZERO,
        }
    }
}

/// The failure for a status the caller did not ask for; `clock` is the fetcher's.
fn status_failure(url: &str, response: &Response, clock: &Clock) -> Failure {
    let status = response.status;
    if status == 404 {
        return Error::new(
            ErrorKind::NotFound,
            format!("GET {url}: expected 200, found 404 Not Found"),
        )
        .into();
    }
    let mut message = format!("GET {url}: expected 200, found HTTP status {status}");
    if let Some(location) = &response.location {
        message.push_str(&format!(
            " redirecting to {} (redirects are not followed)",
            header_text(location)
        ));
    }
    if !is_transient(status) {
        return Error::new(ErrorKind::HttpStatus, message).into();
    }
    let asked = response.retry_after.as_deref().and_then(|value| {
        let wait = retry_after(value, response.date.as_deref(), clock())?;
        message.push_str(&format!(" (Retry-After: {})", header_text(value)));
        Some(wait)
    });
    match asked {
        Some(wait) if wait > MAX_BACKOFF => {
            message.push_str(&format!(
                "; not asked again in this check, which waits at most {} s",
                MAX_BACKOFF.as_secs()
            ));
            Failure {
                wait,
                ..Error::new(ErrorKind::HttpStatus, message).into()
            }
        }
        wait => Failure {
            wait: wait.unwrap_or_default(),
            ..Failure::retry(Error::new(ErrorKind::HttpStatus, message))
        },
    }
}

/// Statuses that say "not now" rather than "not here": 5xx, 408 Request Timeout, 425 Too
/// Early and 429 Too Many Requests. The base is tried again next round, after the
/// backoff or the wait its `Retry-After` asks for, whichever is longer; a base asking
/// for more than [`MAX_BACKOFF`] is not asked again in this check. Any other 4xx drops
/// the base.
fn is_transient(status: u16) -> bool {
    status >= 500 || matches!(status, 408 | 425 | 429)
}

/// `1 s`, `1.5 s` or `300 ms`, for messages; tenths rounded, in integers (float
/// formatting would add 5 KB to the library).
fn duration_words(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms} ms");
    }
    match (ms + 50) / 100 {
        tenths if tenths % 10 == 0 => format!("{} s", tenths / 10),
        tenths => format!("{}.{} s", tenths / 10, tenths % 10),
    }
}

/// The wait a `Retry-After` value asks for: delay-seconds or an HTTP date (RFC 9110
/// §10.2.3). A value that is neither is ignored, as the RFC lets a client do. A date is on
/// the server's clock, so it is counted from the answer's `date` (its `Date` header, the
/// same clock), or, without one, from `now` (the updater's clock): read against another
/// clock, hours off the server's, it would hold the device back hours too long, or not at
/// all.
fn retry_after(value: &str, date: Option<&str>, now: crate::Timestamp) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // Digits beyond u64 are a wait longer than any check waits.
        return Some(Duration::from_secs(value.parse().unwrap_or(u64::MAX)));
    }
    let at = crate::time::parse_http_date(value, now)?;
    let since = date
        .and_then(|d| crate::time::parse_http_date(d.trim(), now))
        .unwrap_or(now);
    Some(Duration::from_secs(
        u64::try_from(at.unix().saturating_sub(since.unix())).unwrap_or(0),
    ))
}

fn too_large(url: &str, max: u64, found: &str) -> Error {
    Error::new(
        ErrorKind::TooLarge,
        format!(
            "{} {url}: expected at most {max} bytes, found {found}",
            fetch_verb(url)
        ),
    )
}

/// One read, repeated when a signal interrupted it.
fn read_some(body: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match body.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            other => return other,
        }
    }
}

/// A body read error: a stall is a timeout, anything else a broken connection.
fn read_error(url: &str, done: u64, err: std::io::Error) -> Error {
    let kind = match err.kind() {
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => ErrorKind::Timeout,
        _ => ErrorKind::Network,
    };
    let message = format!(
        "{} {url}: expected more of the body after {done} bytes, found {err}",
        fetch_verb(url)
    );
    Error::new(kind, message).with_source(err)
}

/// `e` with no password of a URL in its message ([`without_passwords`]).
fn redacted(e: Error) -> Error {
    match e.message().contains('@') {
        true => e.map_message(without_passwords),
        false => e,
    }
}

/// A proxy URL with its password shown as `***`, written with its scheme or without
/// (`ops:pw@proxy:3128`, as `HTTPS_PROXY` often is and ureq takes it).
pub(crate) fn proxy_without_password(proxy: &str) -> String {
    match proxy.contains("://") {
        true => without_passwords(proxy),
        false => without_passwords(&format!("://{proxy}"))[3..].to_owned(),
    }
}

/// `text` with the password of every URL's userinfo (`https://user:secret@host/…`)
/// replaced by `***`. A base may carry credentials, which the HTTP stack sends as Basic
/// auth; errors go on to events, logs and the CLI's stderr.
pub(crate) fn without_passwords(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (head, tail) = rest.split_at(at + 3);
        out.push_str(head);
        // Where the authority ends: userinfo may hold any sub-delimiter (`,`, `'`, `)`),
        // never these unencoded (a quote is Debug's around the whole URL).
        let mut end = tail
            .find(|c: char| "/?#\"".contains(c) || c.is_whitespace())
            .unwrap_or(tail.len());
        // A password with a `/` in it (`ops:s3/cret@host`), which URL parsers take as it
        // stands: the userinfo then runs past the first `/` to an `@`. Taken as one
        // whenever a `:` comes before that `/`, a port and a path with an `@`
        // (`host:80/a@b`) too: in a message, hiding too much is the safe side.
        if !tail[..end].contains('@') && tail[..end].contains(':') {
            let span = tail
                .find(|c: char| c == '"' || c.is_whitespace())
                .unwrap_or(tail.len());
            if let Some(at) = tail[..span].rfind('@') {
                end = span.min(tail[at..].find(['/', '?', '#']).map_or(span, |i| at + i));
            }
        }
        let authority = &tail[..end];
        let userinfo = authority.rsplit_once('@');
        match userinfo.and_then(|(user, host)| Some((user.split_once(':')?.0, host))) {
            Some((name, host)) => {
                out.push_str(name);
                out.push_str(":***@");
                out.push_str(host);
            }
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

fn check_bases(bases: &[String]) -> Result<()> {
    if bases.is_empty() {
        return Err(Error::config(
            "expected at least one server or mirror base, found none",
        ));
    }
    if let Some(base) = bases.iter().find(|b| has_query_or_fragment(b)) {
        let base = without_passwords(base);
        return Err(Error::config(format!(
            "expected a base URL without a query or fragment (the repository's paths are appended to it), found {base:?}"
        )));
    }
    Ok(())
}

/// Whether the URL `base` has a query (`?token=…`) or a fragment (`#…`): the paths
/// appended to a base would land inside them, and every request would ask for the base
/// itself. (A plain directory path may hold either character.)
pub(crate) fn has_query_or_fragment(base: &str) -> bool {
    base.contains("://") && base.contains(['?', '#'])
}

/// How a message names the fetch of `url`: `read` for a file (a `file://` URL or a plain
/// path, a USB stick's say), of which no HTTP request is made; `GET` for anything else.
pub(crate) fn fetch_verb(url: &str) -> &'static str {
    match transport::is_file_url(url) || !url.contains("://") {
        true => "read",
        false => "GET",
    }
}

fn is_http(url: &str) -> bool {
    strip_scheme(url, "http://").is_some() || strip_scheme(url, "https://").is_some()
}

/// `url` after `scheme` (`"https://"`), matched in any case as URL schemes are; `None`
/// when it does not start with it.
pub(crate) fn strip_scheme<'a>(url: &'a str, scheme: &str) -> Option<&'a str> {
    let head = url.get(..scheme.len())?;
    head.eq_ignore_ascii_case(scheme)
        .then(|| &url[scheme.len()..])
}

/// Whether `url` names the same thing wherever the device runs: an `http(s)://` URL with
/// a host ([`is_http_url`]), or a `file://` URL of an absolute path. Anything else would
/// reach [`FileTransport`] as a path relative to the process's working directory, or the
/// HTTP stack as a URL it refuses on every try.
pub(crate) fn is_absolute_url(url: &str) -> bool {
    if is_http(url) {
        return is_http_url(url);
    }
    transport::is_file_url(url) && transport::file_url_path(url).is_some_and(|p| p.is_absolute())
}

/// Whether `url` is an `http://` or `https://` URL that the HTTP stack takes as it is
/// (RFC 3986): optional userinfo, a host of letters, digits, `-`, `.`, `_` and `~` or a
/// bracketed IPv6 address, an optional port 1–65535, then only RFC 3986 characters and
/// `%XX` escapes: no spaces, control characters or anything else the `http` crate would
/// refuse on each request. A few lines here instead of a URL crate in every build; what
/// it accepts is a subset of what that crate parses.
pub(crate) fn is_http_url(url: &str) -> bool {
    let Some(rest) = strip_scheme(url, "http://").or_else(|| strip_scheme(url, "https://")) else {
        return false;
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let path_byte = |b: u8| is_unreserved(b) || is_sub_delim(b) || b":@/?#".contains(&b);
    is_authority(authority) && is_escaped(tail, path_byte)
}

/// `[userinfo@]host[:port]` of an http(s) URL (see [`is_http_url`]).
fn is_authority(authority: &str) -> bool {
    let host_port = match authority.rsplit_once('@') {
        Some((userinfo, host_port)) => {
            let userinfo_byte = |b: u8| is_unreserved(b) || is_sub_delim(b) || b == b':';
            if !is_escaped(userinfo, userinfo_byte) {
                return false;
            }
            host_port
        }
        None => authority,
    };
    let (host_ok, port) = match host_port.strip_prefix('[') {
        // An IPv6 literal: exactly one closing bracket, then the end or a port.
        Some(bracketed) => {
            let Some((address, after)) = bracketed.split_once(']') else {
                return false;
            };
            let port = match after {
                "" => None,
                _ => match after.strip_prefix(':') {
                    Some(port) => Some(port),
                    None => return false,
                },
            };
            // Its characters only (hex digits, `:`, and `.` of an embedded IPv4 address):
            // the HTTP stack parses it on each request, and refuses a malformed one as
            // `config`, like every URL of ours it cannot use.
            let ipv6_byte = |b: u8| b.is_ascii_hexdigit() || b == b':' || b == b'.';
            (
                address.contains(':') && address.bytes().all(ipv6_byte),
                port,
            )
        }
        None => {
            let (host, port) = match host_port.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (host_port, None),
            };
            (!host.is_empty() && host.bytes().all(is_unreserved), port)
        }
    };
    // Digits only (`parse` would take a sign), and a port a connection can be made to.
    let port_ok = port.is_none_or(|p| {
        p.bytes().all(|b| b.is_ascii_digit()) && p.parse::<u16>().is_ok_and(|n| n != 0)
    });
    host_ok && port_ok
}

/// RFC 3986's unreserved characters: letters, digits, `-`, `.`, `_`, `~`.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// RFC 3986's sub-delimiters.
fn is_sub_delim(b: u8) -> bool {
    b"!$&'()*+,;=".contains(&b)
}

/// Whether every byte of `s` is `allowed` or starts a `%XX` escape of two hex digits.
fn is_escaped(s: &str, allowed: impl Fn(u8) -> bool) -> bool {
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3);
            if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                return false;
            }
            i += 3;
        } else if allowed(bytes[i]) {
            i += 1;
        } else {
            return false;
        }
    }
    true
}

/// `base` + `/` + `path`, with exactly one slash between them.
fn join(base: &str, path: &str) -> String {
    format!(
        "{}/{}",
        base.trim_end_matches('/'),
        path.trim_start_matches('/')
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The options a host's config makes ([`crate::Config::fetch_options`]) are logged as
    /// the config is: a proxy's password must not be in their `Debug`.
    #[test]
    fn fetch_options_debug_shows_no_proxy_password() {
        let options = FetchOptions {
            proxy: Some("http://ops:pr0xy-pw@proxy.acme.com:3128".into()),
            ..FetchOptions::default()
        };
        // Written without its scheme, as `HTTPS_PROXY` often is and ureq takes it.
        let schemeless = FetchOptions {
            proxy: Some("ops:pr0xy-pw@proxy.acme.com:3128".into()),
            ..FetchOptions::default()
        };
        let shown = format!("{schemeless:?}");
        assert!(
            !shown.contains("pr0xy-pw") && shown.contains("\"ops:***@proxy.acme.com:3128\""),
            "expected the scheme-less proxy without its password, found {shown}"
        );
        for shown in [format!("{options:?}"), format!("{options:#?}")] {
            assert!(
                !shown.contains("pr0xy-pw"),
                "expected no password in the options' Debug, found it in {shown}"
            );
            assert!(
                shown.contains("http://ops:***@proxy.acme.com:3128"),
                "{shown}"
            );
            assert!(shown.contains("retries: 3"), "{shown}");
        }
    }

    /// A USB stick not mounted, or a repository path misspelt: the file is missing
    /// because its base directory is, which the error says, beside the file it wanted.
    #[test]
    fn a_missing_base_directory_is_named_as_missing() {
        let dir = tempfile::tempdir().unwrap();
        let present = dir.path().join("repo");
        std::fs::create_dir(&present).unwrap();
        let absent = dir.path().join("usb/repo");
        let options = FetchOptions {
            retries: 0,
            ..FetchOptions::default()
        };
        let bases = vec![
            format!("file://{}/", absent.display()),
            present.display().to_string(),
        ];
        let fetcher = Fetcher::new(bases, options).unwrap();
        let err = fetcher
            .metadata("channels/stable.json", None, 1 << 20)
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
        assert!(
            err.message().ends_with(&format!(
                "found it on none; the directory {} is missing (a medium not mounted?)",
                absent.display()
            )),
            "{err}"
        );
    }

    #[test]
    fn join_puts_one_slash() {
        assert_eq!(join("http://h/r/", "/blobs/x"), "http://h/r/blobs/x");
        assert_eq!(
            join("/mnt/usb", "channels/stable.json"),
            "/mnt/usb/channels/stable.json"
        );
    }

    #[test]
    fn no_bases_is_a_config_error() {
        let err = Fetcher::new(vec![], FetchOptions::default()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
    }

    /// The repository's paths are appended to a base: one with a query or fragment would
    /// have every request ask for the base itself. A directory may hold either character.
    #[test]
    fn a_base_url_with_a_query_or_fragment_is_a_config_error() {
        for base in [
            "https://h/repo/?token=abc",
            "http://h/repo#mirror",
            "file:///srv/r?x",
        ] {
            let err = Fetcher::new(vec![base.into()], FetchOptions::default()).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Config, "{base}");
            assert!(
                err.message().contains("without a query or fragment"),
                "{err}"
            );
        }
        Fetcher::new(vec!["/srv/repo#1?".into()], FetchOptions::default()).unwrap();
    }

    #[test]
    fn passwords_of_urls_are_never_shown() {
        let rows = [
            (
                "GET http://alice:s3cret@127.0.0.1:8/repo/x: expected 200",
                "GET http://alice:***@127.0.0.1:8/repo/x: expected 200",
            ),
            (
                "found \"socks5://u:p%40w@proxy:1080\", then https://bob@h/ and http://h/a@b",
                "found \"socks5://u:***@proxy:1080\", then https://bob@h/ and http://h/a@b",
            ),
            (
                "GET http://al,ice:se,c'r)e(t@h:1/x and http://a:b@h",
                "GET http://al,ice:***@h:1/x and http://a:***@h",
            ),
            ("no url: a@b:c", "no url: a@b:c"),
            (
                "proxy http://ops:s3/cret@host:3128/ and http://ops:a/b/c@h",
                "proxy http://ops:***@host:3128/ and http://ops:***@h",
            ),
            ("https://a:b@", "https://a:***@"),
        ];
        for (text, shown) in rows {
            assert_eq!(without_passwords(text), shown);
        }
        let fetcher = Fetcher::new(
            vec!["http://alice:s3cret@127.0.0.1:8/repo/".into()],
            FetchOptions::default(),
        );
        match fetcher {
            Ok(fetcher) => assert!(!format!("{fetcher:?}").contains("s3cret")),
            // A build without HTTP refuses the URL, naming it without its password.
            Err(e) if !cfg!(feature = "http") => {
                assert!(
                    e.message().contains("http://alice:***@127.0.0.1:8/repo/"),
                    "{e}"
                )
            }
            Err(e) => panic!("{e}"),
        }
        let options = FetchOptions {
            proxy: Some("http://p:hunter2@proxy:3128".into()),
            ..FetchOptions::default()
        };
        let fetcher = Fetcher::new(vec!["/srv/repo".into()], options).unwrap();
        assert!(!format!("{fetcher:?}").contains("hunter2"));
        let err = Fetcher::new(
            vec!["https://a:s3cret@h/r/?t=1".into()],
            FetchOptions::default(),
        )
        .unwrap_err();
        assert!(!err.message().contains("s3cret"), "{err}");
    }

    #[test]
    fn only_urls_naming_the_same_thing_everywhere_are_absolute() {
        for url in [
            "https://h/b",
            "HTTP://h/b",
            "file:///srv/b",
            "file://localhost/srv/b",
            "FILE:///srv/b",
            "File://LocalHost/srv/b",
            "file:///mnt/USB%20DISK",
        ] {
            assert!(is_absolute_url(url), "{url}");
        }
        for url in [
            "blobs/sha256/ab",
            "/srv/b",
            "file://blobs/ab",
            "file://localhostX/srv/b",
            "file://server/srv/b",
            "file:///srv/%zz",
            "file:///srv/%00x",
            "file:///srv/\u{0}x",
            "https:///b",
            "http://",
            "ftp://h/b",
            "vendor://box/b",
        ] {
            assert!(!is_absolute_url(url), "{url}");
        }
    }

    /// What the HTTP stack would refuse on each request (ureq's "invalid uri
    /// character", reported as `network` and retried) is refused up front.
    #[test]
    fn only_well_formed_http_urls_are_absolute() {
        let good = [
            "http://h",
            "https://cdn.example.com:8443/a/b?x=1&y=%2F#f",
            "http://127.0.0.1:9/x",
            "http://[::1]/x",
            "http://[2001:db8::1]:8080",
            "http://user:pa%20ss@h.example/x",
            "https://h/a;b=c/(d)*,e!$'+~_-.:@",
        ];
        for url in good {
            assert!(is_http_url(url), "{url}");
            #[cfg(feature = "http")]
            assert!(ureq::http::Uri::try_from(url).is_ok(), "{url}");
        }
        for url in [
            "http://exa mple/repo/",
            "http://[::1/x",
            "http://::1]/x",
            "http://[::1]x/",
            "http://[not-v6]/x",
            "http://h:99999/x",
            "http://h:0/x",
            "http://h:/x",
            "http://h:+80/x",
            "http://h:8a/x",
            "http://:80/x",
            "http://@/x",
            "http://a@b@h/x",
            "http://h\u{0}st/x",
            "http://h/a b",
            "http://h/a\tb",
            "http://h/a\u{0}b",
            "http://h/%zz",
            "http://h/%4",
            "http://h/<x>",
            "http://h/\u{e9}",
            "http://h\u{e9}/x",
            "http://h/a\"b",
            "http://h/{x}",
        ] {
            assert!(!is_http_url(url), "{url:?}");
            assert!(!is_absolute_url(url), "{url:?}");
        }
    }

    /// The options are public: bounds near `Duration::MAX` saturate instead of
    /// overflowing ("overflow when adding durations") on every metadata fetch.
    #[test]
    fn the_metadata_deadline_saturates() {
        let options = FetchOptions {
            read_timeout: Duration::MAX,
            speed_window: Duration::MAX,
            min_speed_bytes_per_s: 1,
            ..FetchOptions::default()
        };
        let fetcher = Fetcher::new(vec!["/srv".into()], options).unwrap();
        assert_eq!(fetcher.body_timeout(u64::MAX), Some(Duration::MAX));
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let second = Duration::from_secs(1);
        assert_eq!(backoff(second, 0), second);
        assert_eq!(backoff(second, 3), Duration::from_secs(8));
        assert_eq!(backoff(second, 6), MAX_BACKOFF);
        assert_eq!(backoff(second, 40), MAX_BACKOFF);
        assert_eq!(backoff(Duration::from_secs(600), 0), MAX_BACKOFF);
        assert_eq!(backoff(Duration::ZERO, 9), Duration::ZERO);
    }

    #[test]
    fn durations_read_as_words() {
        for (ms, words) in [
            (1000, "1 s"),
            (1500, "1.5 s"),
            (1549, "1.5 s"),
            (1550, "1.6 s"),
            (2999, "3 s"),
            (300, "300 ms"),
        ] {
            assert_eq!(duration_words(Duration::from_millis(ms)), words, "{ms} ms");
        }
    }

    #[test]
    fn retry_after_in_seconds_or_as_an_http_date() {
        let now: crate::Timestamp = "2026-12-03T10:00:00Z".parse().unwrap();
        let secs = |n| Some(Duration::from_secs(n));
        for (value, expected) in [
            ("120", secs(120)),
            (" 0 ", secs(0)),
            ("99999999999999999999999", secs(u64::MAX)),
            ("Thu, 03 Dec 2026 10:01:30 GMT", secs(90)),
            ("Thu, 03 Dec 2026 09:00:00 GMT", secs(0)),
            ("-5", None),
            ("1.5", None),
            ("", None),
            ("soon", None),
        ] {
            assert_eq!(retry_after(value, None, now), expected, "{value:?}");
        }
        // A date is read against the server's own `Date`, whatever the device's clock
        // says; a `Date` that is no HTTP date leaves the device's clock.
        let (at, hours_ahead) = ("Thu, 03 Dec 2026 16:01:30 GMT", now.plus_secs(5 * 3600));
        for (date, expected) in [
            (Some("Thu, 03 Dec 2026 16:00:00 GMT"), secs(90)),
            (Some(" Thu, 03 Dec 2026 16:00:00 GMT "), secs(90)),
            (Some("Thu, 03 Dec 2026 17:00:00 GMT"), secs(0)),
            (Some("yesterday"), secs(3690)),
            (None, secs(3690)),
        ] {
            assert_eq!(retry_after(at, date, hours_ahead), expected, "{date:?}");
        }
        assert_eq!(retry_after("120", Some("garbage"), now), secs(120));
    }

    /// Answers every URL with the status and `Retry-After` its base is given.
    struct Busy(Vec<(&'static str, u16, Option<String>)>);

    impl Transport for Busy {
        fn get(&self, url: &str, _req: &Request) -> Result<Response> {
            let (_, status, retry_after) = self
                .0
                .iter()
                .find(|(base, _, _)| url.starts_with(base))
                .expect("a base");
            Ok(Response {
                content_length: Some(0),
                retry_after: retry_after.clone(),
                ..Response::new(*status, Box::new(io::empty()))
            })
        }
    }

    fn busy_fetcher(answers: Vec<(&'static str, u16, Option<String>)>) -> Fetcher {
        let bases = answers.iter().map(|(b, _, _)| b.to_string()).collect();
        let options = FetchOptions {
            retries: 2,
            retry_backoff: Duration::from_millis(1),
            ..FetchOptions::default()
        };
        Fetcher::with_transport(bases, options, Box::new(Busy(answers)))
    }

    /// A wait too long for the call to make is not lost with it: the call's error carries
    /// what is left of the longest one asked for (here as an HTTP date two hours ahead),
    /// whichever base's failure the error reports, for the poll schedule to honour.
    #[test]
    fn the_error_carries_the_longest_retry_after_asked_for() {
        // IMF-fixdate of now + 2 h; the weekday is not read.
        let at = crate::Timestamp::now().plus_secs(7200).to_string();
        let month = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ][at[5..7].parse::<usize>().unwrap() - 1];
        let date = format!(
            "Mon, {} {month} {} {} GMT",
            &at[8..10],
            &at[..4],
            &at[11..19]
        );
        let f = busy_fetcher(vec![
            ("http://server/", 503, Some(date)),
            ("http://mirror/", 429, Some("600".into())),
            ("http://other/", 500, None),
        ]);
        let err = f.metadata("channels/stable.json", None, 1024).unwrap_err();
        assert!(err.message().contains("http://other/"), "{err}");
        let wait = err.retry_after().expect("a Retry-After").as_secs();
        assert!((7190..=7200).contains(&wait), "{wait} s");

        // No base asked for a wait (or for one already over): nothing is carried.
        let f = busy_fetcher(vec![
            (
                "http://server/",
                503,
                Some("Thu, 01 Jan 2015 00:00:00 GMT".into()),
            ),
            ("http://other/", 502, None),
        ]);
        let err = f.metadata("channels/stable.json", None, 1024).unwrap_err();
        assert_eq!(err.retry_after(), None, "{err}");
    }

    #[test]
    fn busy_and_timed_out_statuses_are_retried_other_4xx_are_not() {
        for status in [408, 425, 429, 500, 503] {
            assert!(is_transient(status), "{status}");
        }
        for status in [400, 403, 410, 416, 451] {
            assert!(!is_transient(status), "{status}");
        }
    }

    #[test]
    fn scheme_is_case_insensitive() {
        assert!(is_http("HTTPS://x"));
        assert!(!is_http("file:///x"));
        assert!(!is_http("/srv/http://"));
    }
}
