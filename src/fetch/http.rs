//! The HTTP(S) transport, over ureq.

use super::transport::{Request, Response, Transport};
use super::FetchOptions;
use crate::error::{Error, ErrorKind, Result};
use std::io::{self, Read};
use std::time::Duration;

/// HTTP and HTTPS (with the `tls` feature: rustls, Mozilla's roots or
/// [`FetchOptions::ca_roots`]) by ureq, with the timeouts, proxy and redirect policy of a
/// [`FetchOptions`].
///
/// The connect timeout bounds connection set-up (and the TLS handshake); the read timeout
/// bounds the wait for the response headers and *each* read of the body, so a large
/// download is never cut for being large, only for going quiet.
pub struct HttpTransport {
    agent: ureq::Agent,
}

impl std::fmt::Debug for HttpTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpTransport").finish_non_exhaustive()
    }
}

impl HttpTransport {
    /// A transport configured by `options`. Fails with [`ErrorKind::Config`] for a bad
    /// proxy URL or an unreadable or empty `ca_roots` file.
    pub fn new(options: &FetchOptions) -> Result<HttpTransport> {
        let mut config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(nonzero(options.connect_timeout))
            .timeout_recv_response(nonzero(options.read_timeout))
            .timeout_per_read(nonzero(options.read_timeout))
            .max_redirects(if options.follow_redirects { 5 } else { 0 })
            .user_agent(concat!("evergreen/", env!("CARGO_PKG_VERSION")));
        if let Some(proxy) = &options.proxy {
            let proxy = ureq::Proxy::new(proxy).map_err(|e| {
                Error::config(format!("expected a proxy URL, found {proxy:?}: {e}"))
            })?;
            config = config.proxy(Some(proxy));
        }
        if let Some(path) = &options.ca_roots {
            #[cfg(feature = "tls")]
            {
                config = config.tls_config(tls_with_roots(path)?);
            }
            #[cfg(not(feature = "tls"))]
            return Err(Error::config(format!(
                "ca_roots {} given, but this build has no TLS (feature \"tls\")",
                path.display()
            )));
        }
        Ok(HttpTransport {
            agent: ureq::Agent::new_with_config(config.build()),
        })
    }
}

/// Zero means "no limit": ureq would otherwise time out at once.
fn nonzero(d: Duration) -> Option<Duration> {
    (!d.is_zero()).then_some(d)
}

#[cfg(feature = "tls")]
fn tls_with_roots(path: &std::path::Path) -> Result<ureq::tls::TlsConfig> {
    use ureq::tls::{parse_pem, PemItem, RootCerts, TlsConfig};
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
    Ok(TlsConfig::builder()
        .root_certs(RootCerts::new_with_certs(&certs))
        .build())
}

impl Transport for HttpTransport {
    fn get(&self, url: &str, req: &Request) -> Result<Response> {
        let mut request = self.agent.get(url);
        if let Some(from) = req.range_from {
            request = request.header("Range", format!("bytes={from}-"));
        }
        if let Some(etag) = &req.if_none_match {
            request = request.header("If-None-Match", etag.as_str());
        }
        let response = request.call().map_err(|e| call_error(url, e))?;
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let (status, etag, content_range, location) = (
            response.status().as_u16(),
            header("etag"),
            header("content-range"),
            header("location"),
        );
        let content_length = header("content-length").and_then(|v| v.trim().parse().ok());
        Ok(Response {
            status,
            etag,
            content_length,
            content_range,
            location,
            body: Box::new(Body(response.into_body().into_reader())),
        })
    }
}

fn call_error(url: &str, err: ureq::Error) -> Error {
    let kind = match &err {
        ureq::Error::Timeout(_) => ErrorKind::Timeout,
        ureq::Error::Io(e) if e.kind() == io::ErrorKind::TimedOut => ErrorKind::Timeout,
        ureq::Error::BadUri(_) | ureq::Error::InvalidProxyUrl => ErrorKind::Config,
        _ => ErrorKind::Network,
    };
    let message = format!("GET {url}: expected an HTTP response, found {err}");
    Error::new(kind, message).with_source(err)
}

/// The body, with ureq's timeouts surfaced as [`io::ErrorKind::TimedOut`] so the fetcher
/// can tell a stalled server from a broken connection.
struct Body(ureq::BodyReader<'static>);

impl Read for Body {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf).map_err(|e| match ureq::Error::from(e) {
            ureq::Error::Timeout(t) => io::Error::new(io::ErrorKind::TimedOut, format!("{t}")),
            ureq::Error::Io(e) => e,
            other => io::Error::other(other),
        })
    }
}
