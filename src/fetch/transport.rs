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
}

/// A transport's answer: the status and headers the fetcher needs, and the body as a
/// stream (never buffered whole by the transport).
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
            .finish_non_exhaustive()
    }
}

/// Something that can GET a URL: HTTP(S), files, or whatever a host supplies (a
/// proprietary bus, a vendor SDK, memory in tests).
///
/// Non-2xx statuses are returned as a [`Response`], not as errors: the fetcher decides
/// what they mean. Errors are for failing to get any answer: [`ErrorKind::Network`],
/// [`ErrorKind::Timeout`], or [`ErrorKind::NotFound`] for a transport with no status codes.
pub trait Transport: Send + Sync {
    /// Starts a GET of `url`; the body is read by the caller.
    fn get(&self, url: &str, req: &Request) -> Result<Response>;
}

/// Serves `file://` URLs and plain paths, for offline updates from a directory or a USB
/// stick.
///
/// It honours [`Request::range_from`] (answering 206 with a `Content-Range`, or 416 past
/// the end) and [`Request::if_none_match`] against an entity tag made of the file's
/// modification time and length (as nginx does). A missing file is
/// [`ErrorKind::NotFound`].
///
/// ```
/// use evergreen::fetch::{FileTransport, Request, Transport};
/// let dir = std::env::temp_dir().join(format!("evg-doc-{}", std::process::id()));
/// std::fs::create_dir_all(&dir).unwrap();
/// std::fs::write(dir.join("hello"), b"hello world").unwrap();
/// let url = format!("{}/hello", dir.display());
/// let req = Request { range_from: Some(6), if_none_match: None };
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

impl Transport for FileTransport {
    fn get(&self, url: &str, req: &Request) -> Result<Response> {
        let path = file_url_path(url);
        let mut file = File::open(&path).map_err(|e| open_error(&path, e))?;
        let meta = file
            .metadata()
            .map_err(|e| Error::io("reading metadata of", &path, e))?;
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
            return Ok(empty(416, Some(etag)));
        }
        file.seek(SeekFrom::Start(from))
            .map_err(|e| Error::io("seeking in", &path, e))?;
        Ok(Response {
            content_length: Some(len - from),
            content_range: Some(format!("bytes {from}-{}/{len}", len - 1)),
            ..empty_with_body(206, Some(etag), Box::new(file))
        })
    }
}

/// The local path named by a `file://` URL (`file:///abs`, `file://localhost/abs`) or a
/// plain path.
pub(crate) fn file_url_path(url: &str) -> PathBuf {
    match url.strip_prefix("file://") {
        Some(rest) => PathBuf::from(rest.strip_prefix("localhost").unwrap_or(rest)),
        None => PathBuf::from(url),
    }
}

fn open_error(path: &Path, err: std::io::Error) -> Error {
    if err.kind() == std::io::ErrorKind::NotFound {
        Error::new(
            ErrorKind::NotFound,
            format!("expected a file at {}, found none", path.display()),
        )
        .with_source(err)
    } else {
        Error::io("opening", path, err)
    }
}

fn empty(status: u16, etag: Option<String>) -> Response {
    Response {
        content_length: Some(0),
        ..empty_with_body(status, etag, Box::new(std::io::empty()))
    }
}

fn empty_with_body(status: u16, etag: Option<String>, body: Box<dyn Read + Send>) -> Response {
    Response {
        status,
        etag,
        content_length: None,
        content_range: None,
        location: None,
        body,
    }
}
