//! The transport abstraction and the file transport (offline and USB updates).

use crate::error::{Error, ErrorKind, Result};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

/// What a [`Transport`] is asked for besides the URL.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    /// Ask for the bytes from this offset to the end (`Range: bytes=n-`).
    pub range_from: Option<u64>,
    /// Ask for `304 Not Modified` when the document still has this entity tag.
    pub if_none_match: Option<String>,
    /// The longest the whole body may take, from the request on: the speed window, the
    /// read timeout and the most bytes the answer may carry (a document's cap, a blob's
    /// whole size, which a server that ignores `Range` sends) at the minimum speed, so
    /// that it never cuts off a transfer the speed rule lets through. A server can keep a single read busy
    /// without handing it a byte of data (chunked trailers that never end, a chunk's
    /// size line dripped a byte at a time), out of reach of the speed check and the
    /// cancel made between reads; metadata and blobs both have one.
    pub body_timeout: Option<std::time::Duration>,
}

/// A transport's answer: the status and headers the fetcher needs, and the body as a
/// stream (never buffered whole by the transport). A host's own transport makes one with
/// [`Response::new`] and sets the headers it has: a header the fetcher learns to read
/// later is a new field, which such a transport then leaves empty rather than failing to
/// compile.
#[non_exhaustive]
pub struct Response {
    /// The HTTP status, or its equivalent for other schemes (200, 206, 304, 416 …).
    pub status: u16,
    /// The `ETag` header, quotes included.
    pub etag: Option<String>,
    /// The `Content-Length` header: the length of *this* body, not of the whole file.
    pub content_length: Option<u64>,
    /// The `Content-Range` header of a 206, e.g. `bytes 100-199/200`.
    pub content_range: Option<String>,
    /// The `Location` header of a redirect, so that the error can name it.
    pub location: Option<String>,
    /// The URL that answered, when the transport followed redirects away from the one
    /// asked for (`None` when that one answered): bytes that fail their hash are named
    /// by where they came from, a bad mirror or CDN node, not by the URL asked for.
    pub final_url: Option<String>,
    /// The `Content-Encoding` header. Evergreen asks for no encoding and decodes none (a
    /// blob's hash is of the bytes as stored), so one here, as an object store sends for
    /// an object uploaded compressed, is named when the bytes are refused.
    pub content_encoding: Option<String>,
    /// The `Retry-After` header of a 503 or 429: seconds, or an HTTP date. A wait the
    /// fetcher can afford is kept before the next round; a longer one ends that base
    /// for this check. Either way a check that fails holds the device's next check back
    /// until then, for at most a day ([`crate::Updater::next_check`]).
    pub retry_after: Option<String>,
    /// The `Date` header: the server's clock when it answered. A `Retry-After` given as an
    /// HTTP date is on that clock, and is read against this one (no clock skew between
    /// the two); without it, against the updater's clock.
    pub date: Option<String>,
    /// The body. A read error of kind [`std::io::ErrorKind::TimedOut`] is reported as
    /// [`ErrorKind::Timeout`], any other as [`ErrorKind::Network`].
    pub body: Box<dyn Read + Send>,
}

impl std::fmt::Debug for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Response")
            .field("status", &self.status)
            .field("etag", &self.etag)
            .field("content_length", &self.content_length)
            .field("content_range", &self.content_range)
            .field("location", &self.location)
            .field("final_url", &self.final_url)
            .field("content_encoding", &self.content_encoding)
            .field("retry_after", &self.retry_after)
            .field("date", &self.date)
            .finish_non_exhaustive()
    }
}

/// Something that can GET a URL: HTTP(S), files, or whatever a host supplies (a
/// proprietary bus, a vendor SDK, memory in tests).
///
/// Non-2xx statuses are returned as a [`Response`], not as errors: the fetcher decides
/// what they mean. Errors are for failing to get any answer: [`ErrorKind::Network`],
/// [`ErrorKind::Timeout`], or [`ErrorKind::NotFound`] for a transport with no status codes
/// ([`ErrorKind::HttpStatus`] for a redirect the fetcher will not follow; any of these
/// lets the fetcher try the other bases, while [`ErrorKind::Config`] stops it).
pub trait Transport: Send + Sync {
    /// Starts a GET of `url`; the body is read by the caller.
    fn get(&self, url: &str, req: &Request) -> Result<Response>;
}

/// Serves `file://` URLs and plain paths, for offline updates from a directory or a USB
/// stick.
///
/// It honours [`Request::range_from`] (answering 206 with a `Content-Range`, or 416 past
/// the end) and [`Request::if_none_match`] against an entity tag made of the file's
/// modification time and length (as nginx does). A missing file, or a directory where
/// the file should be, is [`ErrorKind::NotFound`]; any other failure to open or read it
/// is [`ErrorKind::Network`] naming the path, so the fetcher retries it and goes on to
/// the other bases as for a server that does not answer.
///
/// ```
/// use evergreen::fetch::{FileTransport, Request, Transport};
/// let dir = std::env::temp_dir().join(format!("evg-doc-{}", std::process::id()));
/// std::fs::create_dir_all(&dir).unwrap();
/// std::fs::write(dir.join("hello"), b"hello world").unwrap();
/// let url = format!("{}/hello", dir.display());
/// let req = Request { range_from: Some(6), ..Request::default() };
/// let mut res = FileTransport.get(&url, &req).unwrap();
/// assert_eq!(res.status, 206);
/// assert_eq!(res.content_range.as_deref(), Some("bytes 6-10/11"));
/// let mut body = String::new();
/// res.body.read_to_string(&mut body).unwrap();
/// assert_eq!(body, "world");
/// # std::fs::remove_dir_all(&dir).unwrap();
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct FileTransport;

/// A directory or a device opens on Unix and has a size, but is no file to serve.
fn check_is_file(path: &Path, meta: &std::fs::Metadata) -> Result<()> {
    if meta.is_file() {
        return Ok(());
    }
    Err(Error::new(
        ErrorKind::NotFound,
        format!(
            "expected a file at {}, found {}",
            path.display(),
            crate::fsutil::file_type_name(meta.file_type())
        ),
    ))
}

impl Transport for FileTransport {
    fn get(&self, url: &str, req: &Request) -> Result<Response> {
        let path = file_url_path(url).ok_or_else(|| {
            Error::config(format!(
                "expected a file:// URL of an absolute path (host empty or localhost) or a \
                 plain path, found {url}"
            ))
        })?;
        // Looked at before it is opened: opening a FIFO with no writer (on a stick, say)
        // waits for one forever.
        check_is_file(
            &path,
            &std::fs::metadata(&path).map_err(|e| open_error(&path, e))?,
        )?;
        let mut file = File::open(&path).map_err(|e| open_error(&path, e))?;
        let meta = file
            .metadata()
            .map_err(|e| base_error("reading metadata of", &path, e))?;
        check_is_file(&path, &meta)?;
        let len = meta.len();
        let mtime = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs());
        let etag = format!("\"{mtime:x}-{len:x}\"");
        if req.if_none_match.as_deref() == Some(etag.as_str()) {
            return Ok(empty(304, Some(etag)));
        }
        let Some(from) = req.range_from else {
            return Ok(Response {
                content_length: Some(len),
                ..empty_with_body(200, Some(etag), Box::new(file))
            });
        };
        if from >= len {
            // As HTTP has it: the length of what is there, so the error can name it.
            return Ok(Response {
                content_range: Some(format!("bytes */{len}")),
                ..empty(416, Some(etag))
            });
        }
        file.seek(SeekFrom::Start(from))
            .map_err(|e| base_error("seeking in", &path, e))?;
        Ok(Response {
            content_length: Some(len - from),
            content_range: Some(format!("bytes {from}-{}/{len}", len - 1)),
            ..empty_with_body(206, Some(etag), Box::new(file))
        })
    }
}

/// The local path named by a `file://` URL (`file:///abs`, `file://localhost/abs`, the
/// scheme and `localhost` in any case, `%XX` escapes decoded) or by a plain path (taken
/// as it is). `None` for a `file://` URL with another host (`file://server/x`, or
/// `file://localhostX/y`, which must not become the relative path `X/y`), a bad escape,
/// or an escaped NUL.
///
/// The config check and the manifest's `url` check use this too (through
/// [`super::is_absolute_url`]), so what they accept is exactly what this opens.
pub(crate) fn file_url_path(url: &str) -> Option<PathBuf> {
    let Some(rest) = strip_file_scheme(url) else {
        return Some(PathBuf::from(url));
    };
    let slash = rest.find('/').unwrap_or(rest.len());
    let (host, path) = rest.split_at(slash);
    if !(host.is_empty() || host.eq_ignore_ascii_case("localhost")) {
        return None;
    }
    percent_decode(path).map(bytes_to_path)
}

/// Whether `url` has the `file` scheme (in any case).
pub(crate) fn is_file_url(url: &str) -> bool {
    strip_file_scheme(url).is_some()
}

/// What follows `file://` (in any case), or `None` for anything else.
fn strip_file_scheme(url: &str) -> Option<&str> {
    super::strip_scheme(url, "file://")
}

/// `%XX` escapes to bytes (RFC 3986); `None` for a malformed escape or a NUL, escaped
/// or not, which no path can hold.
fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == 0 {
            return None;
        }
        if bytes[i] != b'%' {
            out.push(bytes[i]);
            i += 1;
            continue;
        }
        let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
        let byte = u8::from_str_radix(hex, 16).ok()?;
        if byte == 0 || hex.starts_with(['+', '-']) {
            return None;
        }
        out.push(byte);
        i += 3;
    }
    Some(out)
}

#[cfg(unix)]
fn bytes_to_path(bytes: Vec<u8>) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    PathBuf::from(std::ffi::OsString::from_vec(bytes))
}

#[cfg(not(unix))]
fn bytes_to_path(bytes: Vec<u8>) -> PathBuf {
    PathBuf::from(String::from_utf8_lossy(&bytes).into_owned())
}

/// A file that is missing is `not_found`. Any other failure to open it (permissions, a
/// base that is not a directory, an unplugged USB stick's I/O error) is this base failing
/// to answer, like a network error: the fetcher retries it and tries the other bases.
/// `io` is kept for the download directory, which no other base can replace.
fn open_error(path: &Path, err: std::io::Error) -> Error {
    if err.kind() == std::io::ErrorKind::NotFound {
        Error::new(
            ErrorKind::NotFound,
            format!("expected a file at {}, found none", path.display()),
        )
        .with_source(err)
    } else {
        base_error("opening", path, err)
    }
}

/// A failure reading a base's file: [`ErrorKind::Network`], naming the path.
fn base_error(doing: &str, path: &Path, err: std::io::Error) -> Error {
    Error::new(
        ErrorKind::Network,
        format!(
            "{doing} {}: expected a readable file, found {err}",
            path.display()
        ),
    )
    .with_source(err)
}

impl Response {
    /// A response of `status` with `body` and no headers; set the headers the transport
    /// has on it.
    ///
    /// ```
    /// use evergreen::fetch::Response;
    /// let blob = b"hello".to_vec();
    /// let mut res = Response::new(200, Box::new(std::io::Cursor::new(blob)));
    /// res.content_length = Some(5);
    /// res.etag = Some("\"v1\"".into());
    /// assert_eq!((res.status, res.content_range), (200, None));
    /// ```
    pub fn new(status: u16, body: Box<dyn Read + Send>) -> Response {
        Response {
            status,
            etag: None,
            content_length: None,
            content_range: None,
            location: None,
            final_url: None,
            content_encoding: None,
            retry_after: None,
            date: None,
            body,
        }
    }
}

/// A response of `status` without a body, with its `etag`.
fn empty(status: u16, etag: Option<String>) -> Response {
    Response {
        content_length: Some(0),
        ..empty_with_body(status, etag, Box::new(std::io::empty()))
    }
}

fn empty_with_body(status: u16, etag: Option<String>, body: Box<dyn Read + Send>) -> Response {
    Response {
        etag,
        ..Response::new(status, body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_urls_decode_like_rfc_8089() {
        for (url, path) in [
            ("file:///srv/repo", "/srv/repo"),
            ("FILE:///srv/repo", "/srv/repo"),
            ("file://localhost/srv/repo", "/srv/repo"),
            ("file://LOCALHOST/srv/repo", "/srv/repo"),
            ("file:///mnt/USB%20DISK/r%25", "/mnt/USB DISK/r%"),
            ("/mnt/USB%20DISK", "/mnt/USB%20DISK"),
            ("relative/dir", "relative/dir"),
        ] {
            assert_eq!(file_url_path(url), Some(PathBuf::from(path)), "{url}");
        }
        for url in [
            "file://localhostX/srv",
            "file://server/share",
            "file:///srv/%2",
            "file:///srv/%zz",
            "file:///srv/%+1",
            "file:///srv/%00",
        ] {
            assert_eq!(file_url_path(url), None, "{url}");
        }
    }
}
