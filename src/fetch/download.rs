//! Resumable, size-capped, hash-verified downloads of content-addressed blobs.
//!
//! The calling thread reads the network and writes the `.part` (it also runs the progress
//! callback and sees the cancel token); a second thread only hashes, so the hash, the
//! floor of a download, overlaps everything else.
//! They pass a fixed pool of five 256 KiB buffers back and forth over bounded channels,
//! so memory stays flat whatever the blob's size.
//!
//! An image for image slots is received the same way, but straight into the inactive
//! slot rather than a `.part` ([`stream`]): the slot is the partial download, and a small
//! record in the state directory says how much of it is durable, so that a later attempt
//! resumes after it. Where the bytes go ([`Dest`]) is all the two differ in.

use super::speed::SpeedMeter;
use super::{
    read_error, read_some, status_failure, too_large, CancelToken, Failure, Fetcher, Request,
    Response, Then,
};
use crate::error::{Error, ErrorKind, Result};
use crate::slots::image::{self, ImageSlots, Streamed};
use crate::slots::Slot;
use crate::trust::hex;
use sha2::{Digest, Sha256};
use std::cell::RefCell;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::time::{Duration, Instant};

/// Size of one hand-off between the threads, one write and one hash update. Measured on
/// 512 MiB from nginx on loopback: 256 KiB takes 1.36 s where 64 KiB took 1.62 s, the
/// difference being thread wake-ups.
const CHUNK: usize = 256 * 1024;
/// Chunks that may wait for the hasher; the pool holds one more for the reader.
const IN_FLIGHT: usize = 4;
/// The longest a chunk waits to fill up before it is handed on anyway.
const FILL_WAIT: Duration = Duration::from_millis(20);
/// The most a gzip image inflates into its slot between two looks at the cancel token,
/// the progress callback and the speed rule: one chunk of a well-compressing image
/// inflates to up to about 1,000 times its size (256 MiB), minutes of writing on slow
/// storage.
#[cfg(feature = "gzip-images")]
const INFLATE_SLICE: u64 = 4 << 20;

pub(super) fn download(
    fetcher: &Fetcher,
    spec: &super::BlobSpec,
    dir: &Path,
    progress: &mut dyn FnMut(u64, u64),
    cancel: &CancelToken,
) -> Result<PathBuf> {
    check_sha256(&spec.sha256)?;
    crate::fsutil::create_dir_all(dir)?;
    // Downloads into one directory take turns: two of one blob at once shared its
    // `.part`, and the one that lost the race wrote on into the file the winner had
    // verified and renamed. Waiting, then finding the blob done, is the usual end.
    let _turn = crate::fsutil::lock_dir(dir, &|| cancel.check())?;
    let done_path = dir.join(&spec.sha256);
    if is_complete(&done_path, spec)? {
        return Ok(done_path);
    }
    let target = Target::new(
        spec,
        Dest::File {
            part: dir.join(format!("{}.part", spec.sha256)),
            done: done_path.clone(),
        },
    );
    target.fetch(fetcher, progress, cancel)?;
    Ok(done_path)
}

/// Refuses (`io`), before a `.part` is opened or a request made, downloads of `specs`
/// into `dir` that its file system has no room for: the bytes still to fetch (those of
/// finished blobs and of `.part`s kept from an earlier attempt are there already) and
/// [`crate::space::RESERVE`] must fit in what a process without privileges may still
/// allocate. A release's blobs are judged together, before the first is fetched: one at a
/// time, the first would be fetched whole and the next refused. Filling the file system
/// first and failing at its last byte (see [`write_failed`]) would leave the app's logs
/// and databases there, and the state's saves, without room meanwhile. A file system
/// that reports no size is not judged ([`crate::space::free`]).
pub(super) fn check_room(dir: &Path, specs: &[super::BlobSpec]) -> Result<()> {
    let Some(free) = crate::space::free(dir) else {
        return Ok(());
    };
    let (mut rest, mut kept, mut size, mut parts) = (0u64, 0u64, 0u64, Vec::new());
    for spec in specs {
        // Not followed: `Part::open` refuses a symlink. One longer than the blob starts over.
        let len = |p: &Path| {
            fs::symlink_metadata(p)
                .ok()
                .filter(|m| m.is_file())
                .map(|m| m.len())
        };
        if len(&dir.join(&spec.sha256)) == Some(spec.size) {
            continue;
        }
        let part = dir.join(format!("{}.part", spec.sha256));
        let k = len(&part).filter(|&l| l <= spec.size).unwrap_or(0);
        rest = rest.saturating_add(spec.size - k);
        kept = kept.saturating_add(k);
        size = size.saturating_add(spec.size);
        parts.push(part);
    }
    let needed = rest.saturating_add(crate::space::RESERVE);
    if free.bytes >= needed {
        return Ok(());
    }
    let (what, of, its) = match parts.len() {
        1 => (
            parts[0].display().to_string(),
            "the download".to_owned(),
            "its",
        ),
        n => (
            format!("{} and {} more", parts[0].display(), n - 1),
            format!("the {n} downloads"),
            "their",
        ),
    };
    let kept = match kept {
        0 => String::new(),
        kept => format!(", {kept} of {its} {size} bytes kept from an earlier attempt"),
    };
    Err(Error::new(
        ErrorKind::Io,
        format!(
            "downloading {what}: expected room for {needed} bytes in {}, found {} bytes free (the {rest} bytes of {of} still to fetch{kept}, and {} kept free so the state can still be saved); nothing was written: free space and update again",
            dir.display(),
            free.bytes,
            crate::space::RESERVE,
        ),
    ))
}

/// An image slot a download writes an image into as it arrives ([`stream`]).
pub(crate) struct SlotDest<'a> {
    /// The slots.
    pub images: &'a ImageSlots,
    /// The slot to write, never the one that runs: the caller has marked it `installing`
    /// and taken it out of the boot order.
    pub slot: Slot,
    /// Where the progress record is kept ([`Streamed`]).
    pub record: &'a Path,
    /// The record as the caller read it before the download, and as the download has
    /// written it since: read once, not again at every attempt.
    pub recorded: Rc<RefCell<Option<Streamed>>>,
    /// For a gzip image: the exact size it decompresses to (its `installed_size`). Its
    /// bytes are inflated into the slot as they arrive. Its record says 0 or all of it:
    /// it resumes after a torn connection only within one download, with the inflater
    /// kept in memory ([`Target::set_aside`]).
    #[cfg_attr(not(feature = "gzip-images"), allow(dead_code))]
    pub inflate_to: Option<u64>,
}

impl SlotDest<'_> {
    /// What the record names the image `sha256` by ([`Streamed::key`]).
    fn key(&self, sha256: &str) -> String {
        Streamed::key(sha256, self.inflate_to.is_some())
    }

    /// The bytes of the image `sha256` the record says are durable in the slot.
    fn bytes_of(&self, sha256: &str) -> u64 {
        let recorded = self.recorded.borrow();
        recorded
            .as_ref()
            .map_or(0, |r| r.bytes_of(&self.key(sha256), self.slot))
    }
}

/// Bytes received into a slot between two syncs of it and records of its progress: what
/// a crash may cost to fetch again, against a sync and a small atomic write each time.
const CHECKPOINT: u64 = 8 << 20;

/// Receives the image `spec` into `into`'s slot from its first byte not yet recorded
/// durable there, hashing as it goes, resuming with `Range` as [`download`] does. Done
/// when the record says the whole image is there; the install reads it back.
pub(super) fn stream(
    fetcher: &Fetcher,
    spec: &super::BlobSpec,
    into: &SlotDest,
    progress: &mut dyn FnMut(u64, u64),
    cancel: &CancelToken,
) -> Result<()> {
    check_sha256(&spec.sha256)?;
    if spec.size > 0 && into.bytes_of(&spec.sha256) == spec.size {
        return Ok(());
    }
    Target::new(spec, Dest::Slot(into)).fetch(fetcher, progress, cancel)
}

/// The hash names a file in the download directory, so it must be exactly a hash.
fn check_sha256(sha256: &str) -> Result<()> {
    if crate::trust::is_sha256_hex(sha256) {
        Ok(())
    } else {
        Err(Error::config(format!(
            "expected a lowercase hex SHA-256 (64 characters), found {sha256:?}"
        )))
    }
}

/// Whether a verified blob is already there; a damaged one is deleted. One whose bytes
/// have the spec's SHA-256 but another length than the spec's size is the blob, and the
/// size is what is wrong (a hand-made manifest): kept, and `wrong_metadata`.
fn is_complete(path: &Path, spec: &super::BlobSpec) -> Result<bool> {
    if fs::symlink_metadata(path).is_err() {
        return Ok(false);
    }
    let mut file = crate::fsutil::open_regular(OpenOptions::new().read(true), path, "opening")?;
    let (hasher, len) = hash_to_end(&mut file).map_err(|e| Error::io("hashing", path, e))?;
    drop(file);
    let blob = hex(&crate::trust::hash_out(hasher)) == spec.sha256;
    match (blob, len == spec.size) {
        (true, true) => Ok(true),
        (true, false) => Err(Error::new(
            ErrorKind::WrongMetadata,
            format!(
                "blob {}: expected {} bytes, found {len} in {}, whose SHA-256 is the one expected: the size given for it is wrong (the file is kept)",
                spec.sha256,
                spec.size,
                path.display()
            ),
        )),
        (false, _) => {
            fs::remove_file(path).map_err(|e| Error::io("removing corrupt", path, e))?;
            Ok(false)
        }
    }
}

fn hash_to_end(file: &mut dyn Read) -> io::Result<(Sha256, u64)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0; CHUNK];
    let mut len = 0;
    loop {
        match file.read(&mut buf) {
            Ok(0) => return Ok((hasher, len)),
            Ok(n) => {
                crate::trust::hash_in(&mut hasher, &buf[..n]);
                len += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

struct Target<'a> {
    spec: &'a super::BlobSpec,
    dest: Dest<'a>,
    /// A gzip image's inflater, with the hash and the count of the compressed bytes it
    /// took, as the last attempt stopped: the next attempt of this download resumes with
    /// them. Kept in memory only, as the inflater's state cannot be saved.
    #[cfg(feature = "gzip-images")]
    set_aside: RefCell<Option<SetAside>>,
    /// The hash and the length of the bytes the last attempt of this download left in the
    /// `.part` (or recorded in a raw image's slot): the next attempt resumes after them
    /// without reading them again, which over a link that cuts every connection would read
    /// the whole partial download at every retry.
    held: RefCell<Option<(Sha256, u64)>>,
}

/// Where a gzip image's download stopped, for [`Target::set_aside`].
#[cfg(feature = "gzip-images")]
struct SetAside {
    hasher: Sha256,
    len: u64,
    inflating: Box<Inflating>,
}

/// Where a download's bytes go: all a blob and a streamed image differ in, as [`Part`]
/// opens, truncates, checkpoints and finishes them.
enum Dest<'a> {
    /// A `.part` in the download directory, renamed to `done` once its hash matched.
    File { part: PathBuf, done: PathBuf },
    /// An image slot ([`stream`]): the partial download itself, with a record of how much
    /// of it is durable.
    Slot(&'a SlotDest<'a>),
}

impl Dest<'_> {
    /// The `.part`, or the slot.
    fn path(&self) -> &Path {
        match self {
            Dest::File { part, .. } => part,
            Dest::Slot(into) => into.images.path(into.slot),
        }
    }
}

impl<'a> Target<'a> {
    fn new(spec: &'a super::BlobSpec, dest: Dest<'a>) -> Target<'a> {
        Target {
            spec,
            dest,
            #[cfg(feature = "gzip-images")]
            set_aside: RefCell::new(None),
            held: RefCell::new(None),
        }
    }

    /// Fetches the blob from the first base that serves it, with the fetcher's retries.
    fn fetch(
        &self,
        fetcher: &Fetcher,
        progress: &mut dyn FnMut(u64, u64),
        cancel: &CancelToken,
    ) -> Result<()> {
        let spec = self.spec;
        let urls = match &spec.url {
            Some(url) => vec![url.clone()],
            None => fetcher.urls(&format!("blobs/sha256/{}", spec.sha256))?,
        };
        fetcher.with_retries(&urls, cancel, |url| {
            self.attempt(fetcher, url, progress, cancel)
        })
    }

    /// For a slot: the bytes of the image its record says are durable there, at most
    /// the image's size.
    fn recorded(&self) -> u64 {
        match &self.dest {
            Dest::Slot(into) => into.bytes_of(&self.spec.sha256).min(self.spec.size),
            Dest::File { .. } => 0,
        }
    }

    /// One try against one URL: resume or start the `.part`, stream, verify, rename.
    ///
    /// Bytes kept in the `.part` from an earlier attempt are only as good as the disk and
    /// whatever else wrote there (a torn write, another program): when the whole does not
    /// match, the URL gets one fresh start before the mismatch counts against it, since
    /// the retry loop gives up on a URL for a mismatch.
    fn attempt(
        &self,
        fetcher: &Fetcher,
        url: &str,
        progress: &mut dyn FnMut(u64, u64),
        cancel: &CancelToken,
    ) -> Result<(), Failure> {
        self.check_room()?;
        let mut stream = Stream {
            fetcher,
            url,
            redirected_to: None,
            encoding: None,
            total: self.spec.size,
            kept: 0,
            refused: false,
            progress,
            cancel,
        };
        // The length the bytes reached, 0 when they stopped before the end.
        let mut len = 0;
        let finished = self
            .fetch_rest(&mut stream, Part::open(self)?)
            .and_then(|part| {
                len = part.len;
                part.finish(stream.source())
            });
        let finished = finished.map_err(|f| Failure {
            error: super::undecoded(f.error, stream.encoding.take()),
            ..f
        });
        match finished {
            // Kept bytes under a wrong hash, or under a gzip image's bytes that do not
            // inflate into it (the inflater refused them before the end). A failure that
            // stops every base (the signed blob itself does not inflate into its image)
            // is no fault of the kept bytes.
            Err(f)
                if stream.kept > 0
                    && (stream.refused || f.error.kind() == ErrorKind::HashMismatch)
                    && f.then != Then::Stop =>
            {
                // Refused before the end (the bytes did not inflate, or a 200 differed from
                // the bytes taken): that refusal says more than a note on the kept bytes.
                let note = match len {
                    0 => format!("{}; fetched again from the start", f.error.message()),
                    len => kept_note(stream.kept, len),
                };
                self.start_over(&mut stream).map_err(|f| f.context(note))
            }
            result => result,
        }
    }

    /// Refuses (`io`), before the `.part` is opened or a request made, a download its file
    /// system has no room for ([`check_room`]). A slot has its size already.
    fn check_room(&self) -> Result<()> {
        match &self.dest {
            Dest::File { part, .. } => check_room(
                part.parent().unwrap_or(Path::new(".")),
                std::slice::from_ref(self.spec),
            ),
            Dest::Slot(_) => Ok(()),
        }
    }

    /// The same URL again from byte 0; a mismatch now is the server's.
    fn start_over(&self, stream: &mut Stream<'_, '_>) -> Result<(), Failure> {
        let mut part = Part::open(self)?;
        // `finish` removed the file (or the slot's record), but only as best it could.
        part.restart()?;
        self.fetch_rest(stream, part)?.finish(stream.source())
    }

    /// Receives whatever the `.part` still lacks, resuming with `Range` where it can.
    fn fetch_rest<'t>(
        &self,
        stream: &mut Stream<'_, '_>,
        mut part: Part<'t>,
    ) -> Result<Part<'t>, Failure> {
        stream.kept = part.kept;
        if part.len >= self.spec.size {
            return Ok(part);
        }
        let response = match self.answer_for(stream, &part) {
            Ok(response) => response,
            Err(failure) => {
                part.keep_received();
                return Err(failure);
            }
        };
        let mut body = response.body;
        if response.status == 200 && part.len > 0 {
            if part.writing.resumes() {
                stream.replay_kept(&mut *body, &mut part)?;
            } else {
                part = stream.skip_taken(&mut *body, part)?;
            }
        }
        // A 200 may have replaced kept bytes, or started the part again.
        stream.kept = part.kept;
        Ok(stream.pump(body, part)?)
    }

    /// Asks for the bytes after `part`'s and vets the answer: a response whose body
    /// continues the part (206) or is the whole blob (200).
    fn answer_for(&self, stream: &mut Stream<'_, '_>, part: &Part) -> Result<Response, Failure> {
        let mut response = self.request(stream, (part.len > 0).then_some(part.len))?;
        stream.answered(&mut response);
        let response = match self.check_range(stream.source(), &response, part) {
            Ok(()) => response,
            Err(wrong_range) => {
                drop(response);
                self.whole_after_wrong_range(stream, wrong_range)?
            }
        };
        self.accept(stream, &response, part)?;
        Ok(response)
    }

    fn request(&self, stream: &Stream<'_, '_>, range_from: Option<u64>) -> Result<Response> {
        // For the whole blob, a resume too: a server that ignores `Range` answers with all
        // of it, compared with the kept bytes from byte 0.
        // The body's deadline is the slow-retrieval bound on the bytes on the wire (DESIGN
        // §5.4), a gzip image's too: sized from what it inflates to, a server dripping a
        // well-compressed image would hold the download (and its cancel, which a body
        // read does not see) a thousand times longer. Writing the slot counts towards it,
        // as for a raw image: `min_speed_bytes_per_s` must stay below what the slot takes
        // in per compressed byte (docs/firmware.md).
        let request = Request {
            range_from,
            body_timeout: stream.fetcher.body_timeout(self.spec.size),
            ..Request::default()
        };
        stream.fetcher.get(stream.url, &request)
    }

    /// A 206 must continue exactly where the `.part` ends; anything else passes here.
    fn check_range(&self, url: &str, response: &Response, part: &Part) -> Result<()> {
        if response.status != 206 {
            return Ok(());
        }
        check_content_range(url, response, part.len, self.spec.size)
    }

    /// After a 206 with the wrong offsets, nothing this base sends is appended and the
    /// kept bytes stay; it is asked once for the whole blob, which may replace them only
    /// as any 200 may (see [`Target::accept`]). Without this, one base that mangles
    /// ranges would fail every attempt for as long as the `.part` exists.
    fn whole_after_wrong_range(
        &self,
        stream: &mut Stream<'_, '_>,
        wrong_range: Error,
    ) -> Result<Response, Failure> {
        // That request's own failure decides what comes next (a 503 or a timeout is
        // retried, a 404 ends this base), the wrong range named first.
        let failure = match self.request(stream, None) {
            Ok(mut response) => {
                stream.answered(&mut response);
                if response.status == 200 {
                    return Ok(response);
                }
                status_failure(stream.source(), &response, &stream.fetcher.clock)
            }
            Err(e) => Failure::from(e),
        };
        Err(failure.context(format!("{wrong_range}; then without Range")))
    }

    /// Decides from the status what the body continues, or refuses it. Refusing never
    /// touches the `.part`: a mirror answering with an error page must not cost the
    /// bytes another base delivered. A 200 is the whole blob from byte 0; over kept bytes
    /// it is compared with them first ([`Stream::replay_kept`]), since a body without a
    /// declared length cannot be judged before it arrives.
    fn accept(&self, stream: &Stream, response: &Response, part: &Part) -> Result<(), Failure> {
        let url = stream.source();
        let remaining = match response.status {
            200 => return self.check_whole_length(url, response),
            // `check_range` has vetted the offsets.
            206 => self.spec.size - part.len,
            416 => return Err(self.range_refused(url, response, part.len)),
            _ => return Err(status_failure(url, response, &stream.fetcher.clock)),
        };
        match response.content_length.filter(|len| *len > remaining) {
            Some(len) => Err(too_large(url, remaining, &format!("{len} bytes declared")).into()),
            None => Ok(()),
        }
    }

    /// A local blob file (a directory or USB stick as the server) of another size than the
    /// blob, `found` (a copy cut short): `io`, ending this base only, for the next base (a
    /// mirror) may hold the whole blob.
    fn local_copy_of_another_size(&self, url: &str, found: &str) -> Failure {
        Failure::next_base(Error::new(
            ErrorKind::Io,
            format!(
                "reading {url}: expected the whole blob ({} bytes), found a file of {found}",
                self.spec.size
            ),
        ))
    }

    /// A 416 to the request for the rest of the blob after the `kept` bytes of the `.part`:
    /// this base's copy ends there or before (a copy cut short), so it ends this base
    /// only. A local file is `io` naming both sizes, as a short one read whole is.
    fn range_refused(&self, url: &str, response: &Response, kept: u64) -> Failure {
        let size = self.spec.size;
        // `bytes */<length>`, as RFC 9110 has a 416 say what there is.
        let there = response
            .content_range
            .as_deref()
            .and_then(|r| r.trim().strip_prefix("bytes */"))
            .and_then(|len| len.parse::<u64>().ok());
        let copy = there.map_or_else(
            || format!("no byte past the {kept} already downloaded"),
            |len| format!("{len} bytes"),
        );
        if !super::is_http(url) {
            return self.local_copy_of_another_size(url, &copy);
        }
        Failure::next_base(Error::new(
            ErrorKind::HttpStatus,
            format!(
                "GET {url}: expected 206 with bytes {kept}-{} of the {size}-byte blob, found 416 Range Not Satisfiable (the copy there has {copy})",
                size - 1
            ),
        ))
    }

    /// A 200 declaring a length other than the blob's is not the blob: larger is
    /// `too_large`, smaller (an error page served as 200) `http_status`, and a local file
    /// (a directory or USB stick as the server) of another size `io`, a copy cut short.
    /// Each ends this base only: the next base (a mirror) may hold the whole blob.
    fn check_whole_length(&self, url: &str, response: &Response) -> Result<(), Failure> {
        let size = self.spec.size;
        match response.content_length {
            Some(len) if len > size => {
                Err(too_large(url, size, &format!("{len} bytes declared")).into())
            }
            Some(len) if len != size && !super::is_http(url) => {
                Err(self.local_copy_of_another_size(url, &format!("{len} bytes")))
            }
            Some(len) if len < size => Err(Error::new(
                ErrorKind::HttpStatus,
                format!(
                    "GET {url}: expected 200 with the whole blob ({size} bytes), found 200 \
                     with Content-Length {len}"
                ),
            )
            .into()),
            _ => Ok(()),
        }
    }
}

/// Only a 206 continuing exactly where the `.part` ends, with the expected total, may be
/// appended to it.
fn check_content_range(url: &str, response: &Response, from: u64, size: u64) -> Result<()> {
    let expected = format!("bytes {from}-{}/{size}", size.saturating_sub(1));
    let found = response.content_range.as_deref().map(str::trim);
    if found == Some(expected.as_str()) {
        return Ok(());
    }
    Err(Error::new(
        ErrorKind::HttpStatus,
        format!(
            "GET {url}: expected 206 with Content-Range {expected:?}, found {}",
            found.map_or("no Content-Range".to_owned(), |f| format!(
                "{:?}",
                super::header_text(f)
            ))
        ),
    ))
}

/// Why a download was started over: what the earlier bytes were, so the error that may
/// follow does not read as the server's alone.
fn kept_note(kept: u64, len: u64) -> String {
    if kept == len {
        format!(
            "the partial download kept from an earlier attempt ({kept} bytes, none fetched \
             now) did not match; fetched again from the start"
        )
    } else {
        format!(
            "the download resumed after {kept} bytes kept from an earlier attempt did not \
             match; fetched again from the start"
        )
    }
}

/// The `.part` file (or the image slot), its length and the hash of its bytes so far.
struct Part<'t> {
    /// The download it belongs to, for its blob and where it goes.
    to: &'t Target<'t>,
    file: File,
    hasher: Sha256,
    len: u64,
    /// How many of the `len` bytes were already in the file when it was opened, rather
    /// than received since.
    kept: u64,
    /// Whether an image slot is a block device ([`image::write_failed`]); false otherwise.
    block: bool,
    /// How the received bytes reach the file.
    writing: Writing,
}

/// How received bytes reach the file: the operations that differ are its methods.
enum Writing {
    /// As they arrive: the file holds the blob, and a slot resumes after its record.
    AsIs,
    /// A gzip image inflated into its slot as it arrives. Its record says 0 or all of it:
    /// only a later attempt of the same download resumes it, with the inflater it sets
    /// aside ([`Target::set_aside`]).
    #[cfg(feature = "gzip-images")]
    Inflating(Box<Inflating>),
}

/// A gzip image being inflated into its slot.
#[cfg(feature = "gzip-images")]
struct Inflating {
    inflater: crate::gzip::Inflater,
    /// Bytes written into the slot, where the next output goes.
    written: u64,
    /// The image's `installed_size`: never written past.
    limit: u64,
}

impl Writing {
    fn new(dest: &Dest) -> Writing {
        match dest {
            #[cfg(feature = "gzip-images")]
            Dest::Slot(SlotDest {
                inflate_to: Some(limit),
                ..
            }) => Writing::Inflating(Box::new(Inflating {
                inflater: crate::gzip::Inflater::new(),
                written: 0,
                limit: *limit,
            })),
            // Without the feature the updater's check refused a compressed image.
            _ => Writing::AsIs,
        }
    }

    /// Whether a slot's bytes are recorded as they arrive, for a later attempt to
    /// resume after them.
    fn resumes(&self) -> bool {
        matches!(self, Writing::AsIs)
    }

    /// The bytes the file ends up holding, of a blob of `size` bytes.
    fn file_size(&self, size: u64) -> u64 {
        match self {
            Writing::AsIs => size,
            #[cfg(feature = "gzip-images")]
            Writing::Inflating(i) => i.limit,
        }
    }

    /// Writes from the front of `input`, received from `source` ([`Stream::source`]) after
    /// the first `len` of the blob `to`, into `file`, moving it past the bytes used: true
    /// once they are all written, false after a slice of them (call again, with what is
    /// left, even none).
    #[cfg_attr(not(feature = "gzip-images"), allow(unused_variables))]
    fn put(
        &mut self,
        file: &mut File,
        to: &Target,
        source: &str,
        len: u64,
        input: &mut &[u8],
    ) -> Result<bool, Stop> {
        match self {
            Writing::AsIs => {
                file.write_all(input).map_err(|e| Stop::Write(e, len))?;
                *input = &[];
                Ok(true)
            }
            #[cfg(feature = "gzip-images")]
            Writing::Inflating(i) => i.put(file, to, source, len, input),
        }
    }

    /// Whether time spent in [`Writing::put`] is kept out of the speed rule. Inflating,
    /// it writes up to 1,000 bytes a received byte: slow storage would otherwise pass for
    /// a slow server, and the image, fetched from its first byte at every download, might
    /// never complete. The rule still measures the network while it is read, and the
    /// time left out is bounded by writing the image's installed_size once.
    fn paces_apart(&self) -> bool {
        !self.resumes()
    }

    /// Once the signed bytes all arrived: whether they were written whole.
    #[cfg_attr(not(feature = "gzip-images"), allow(unused_variables))]
    fn check_end(&self, to: &Target) -> Result<()> {
        match self {
            Writing::AsIs => Ok(()),
            #[cfg(feature = "gzip-images")]
            Writing::Inflating(i) => i.check_end(to),
        }
    }
}

#[cfg(feature = "gzip-images")]
impl Inflating {
    /// Inflates `input` into `file`, at most [`INFLATE_SLICE`] bytes at a call, stopped
    /// (`too_large`) before writing past the image's `installed_size`; data that does not
    /// inflate is `hash_mismatch`, as bytes other than the signed ones are.
    fn put(
        &mut self,
        file: &mut File,
        to: &Target,
        source: &str,
        len: u64,
        input: &mut &[u8],
    ) -> Result<bool, Stop> {
        let fail = |kind, problem: &str| Stop::Data(not_the_blob(source, to, kind, problem));
        let (start, slice_end) = (input.len(), self.written + INFLATE_SLICE);
        loop {
            if self.written >= slice_end {
                return Ok(false);
            }
            let out = self
                .inflater
                .inflate(input)
                .map_err(|p| fail(ErrorKind::HashMismatch, &p))?;
            if out.is_empty() {
                return Ok(true);
            }
            if self.written + out.len() as u64 > self.limit {
                let problem = format!(
                    "expected it to decompress to {} bytes (its installed_size), found more than that within the first {} of its {} compressed bytes; stopped before writing past them",
                    self.limit,
                    len + (start - input.len()) as u64,
                    to.spec.size
                );
                return Err(fail(ErrorKind::TooLarge, &problem));
            }
            // The offset is the inflated image's, as the slot's size is.
            file.write_all(out)
                .map_err(|e| Stop::Write(e, self.written))?;
            self.written += out.len() as u64;
        }
    }

    /// Whether the member ended whole, at exactly the image's `installed_size` (a
    /// hand-made manifest may say otherwise).
    fn check_end(&self, to: &Target) -> Result<()> {
        let problem = match self.inflater.finish() {
            Ok(len) if len == self.limit => return Ok(()),
            Ok(len) => format!(
                "expected it to decompress to {} bytes (its installed_size), found {len}",
                self.limit
            ),
            Err(problem) => problem,
        };
        Err(inflate_failed(to, ErrorKind::HashMismatch, &problem))
    }
}

impl<'t> Part<'t> {
    /// Opens the destination of `to`, positioned after the bytes kept from an earlier
    /// attempt, which are hashed again.
    ///
    /// A `.part` is opened (or created) never through a symlink
    /// ([`crate::fsutil::no_follow`]): the download would truncate and fill the file it
    /// points to. A slot is opened as an install would open it (refused while something
    /// else uses it), and only the bytes its record says are durable count; with none,
    /// the record is first made to name this image at 0 bytes: one of another image left
    /// there must not be believed once this one's bytes start to overwrite it.
    fn open(to: &'t Target<'t>) -> Result<Part<'t>> {
        #[cfg(feature = "gzip-images")]
        if let (Dest::Slot(into), Some(set_aside)) = (&to.dest, to.set_aside.take()) {
            return Part::resume_inflating(to, into, set_aside);
        }
        let (size, path) = (to.spec.size, to.dest.path());
        let writing = Writing::new(&to.dest);
        let (mut file, block, recorded) = match &to.dest {
            Dest::File { .. } => {
                let mut options = crate::fsutil::create_options();
                let options = options.read(true).truncate(false);
                let file = crate::fsutil::open_regular(options, path, "opening")?;
                // Root's `.part` in another user's state directory is that user's, whose
                // own update resumes it.
                crate::fsutil::give_to_dir_owner(&file, path);
                (file, false, u64::MAX)
            }
            Dest::Slot(into) => {
                let (file, block) = into.images.open_to_write(
                    into.slot,
                    writing.file_size(size),
                    &to.spec.sha256,
                )?;
                let recorded = match writing.resumes() {
                    true => to.recorded(),
                    false => 0,
                };
                (file, block, recorded)
            }
        };
        // What the last attempt held counts while the file still ends there (a slot: its
        // record still says so).
        let held = to.held.take().filter(|(_, len)| match &to.dest {
            Dest::File { .. } => file.metadata().is_ok_and(|m| m.len() == *len),
            Dest::Slot(_) => *len == recorded,
        });
        let (hasher, len) = match held {
            Some((hasher, len)) => file.seek(SeekFrom::Start(len)).map(|_| (hasher, len)),
            None => hash_to_end(&mut (&mut file).take(recorded)),
        }
        .map_err(|e| Error::io("hashing", path, e))?;
        let mut part = Part {
            to,
            file,
            hasher,
            len,
            kept: len,
            block,
            writing,
        };
        match &to.dest {
            Dest::File { .. } if len > size => part.restart()?,
            Dest::Slot(into) if recorded == 0 => part.record(into, 0)?,
            _ => {}
        }
        Ok(part)
    }

    /// Opens the slot of a gzip image whose last attempt of this download stopped as
    /// `set_aside` says, positioned where its inflater's next output goes.
    #[cfg(feature = "gzip-images")]
    fn resume_inflating(
        to: &'t Target<'t>,
        into: &SlotDest,
        set_aside: SetAside,
    ) -> Result<Part<'t>> {
        let SetAside {
            hasher,
            len,
            inflating,
        } = set_aside;
        let path = to.dest.path();
        let (mut file, block) =
            into.images
                .open_to_write(into.slot, inflating.limit, &to.spec.sha256)?;
        file.seek(SeekFrom::Start(inflating.written))
            .map_err(|e| Error::io("seeking", path, e))?;
        Ok(Part {
            to,
            file,
            hasher,
            len,
            kept: len,
            block,
            writing: Writing::Inflating(inflating),
        })
    }

    fn path(&self) -> &'t Path {
        self.to.dest.path()
    }

    fn restart(&mut self) -> Result<()> {
        self.truncate(0)?;
        self.hasher = Sha256::new();
        self.kept = 0;
        self.writing = Writing::new(&self.to.dest);
        Ok(())
    }

    /// Drops the bytes from `at` on, to write there next. A slot keeps its length; its
    /// record comes down to `at` first, so it never vouches for bytes being replaced.
    fn truncate(&mut self, at: u64) -> Result<()> {
        let shrink = match &self.to.dest {
            Dest::File { .. } => self.file.set_len(at),
            Dest::Slot(into) => {
                if self.to.recorded() > at {
                    self.record(into, at)?;
                }
                Ok(())
            }
        };
        shrink
            .and_then(|()| self.file.seek(SeekFrom::Start(at)).map(drop))
            .map_err(|e| Error::io("truncating", self.path(), e))?;
        self.len = at;
        Ok(())
    }

    /// Makes the first `bytes` of the slot `into` durable (the slot synced first, when
    /// they are more than recorded) and records that they are.
    fn record(&self, into: &SlotDest, bytes: u64) -> Result<()> {
        crate::fsutil::crash_point("sync streamed image")?;
        // Only a record that vouches for more bytes needs them durable first. One that
        // vouches for fewer (before bytes are written over) needs only its own write: a
        // sync then would cost time, and a slot whose sync fails would fail it.
        if bytes > self.to.recorded() {
            crate::fsutil::sync_file_data(&self.file)
                .map_err(|e| Error::io("syncing", self.path(), e))?;
        }
        let record = Streamed {
            sha256: into.key(&self.to.spec.sha256),
            slot: into.slot,
            bytes,
        };
        record.write(into.record)?;
        into.recorded.replace(Some(record));
        Ok(())
    }

    /// After `n` more bytes were written: a slot's progress is recorded every
    /// [`CHECKPOINT`] bytes. A record of the whole image is [`Part::finish`]'s alone, once
    /// the hash matched, never a checkpoint's.
    fn written(&mut self, n: usize) -> Result<()> {
        self.len += n as u64;
        let Dest::Slot(into) = &self.to.dest else {
            return Ok(());
        };
        crate::fsutil::crash_point("image bytes written")?;
        if self.writing.resumes()
            && self.len < self.to.spec.size
            && self.len - self.to.recorded() >= checkpoint()
        {
            self.record(into, self.len)?;
        }
        Ok(())
    }

    /// Keeps what a download received before it stopped (the network, a cancel), for
    /// the next attempt to resume after it: the hash of the bytes so far in memory
    /// ([`Target::held`]), and a raw image's bytes in its record, best effort, as the
    /// stop's own error is the one to report (a record not made costs a fetch, not the
    /// image); a gzip image's inflater in memory, for the next attempt of this download
    /// only.
    fn keep_received(self) {
        if self.len == 0 || self.len >= self.to.spec.size {
            return;
        }
        let Dest::Slot(into) = &self.to.dest else {
            self.to.held.replace(Some((self.hasher, self.len)));
            return;
        };
        match self.writing {
            Writing::AsIs => {
                if self.len > self.to.recorded() {
                    let _ = self.record(into, self.len);
                }
                self.to.held.replace(Some((self.hasher, self.len)));
            }
            #[cfg(feature = "gzip-images")]
            Writing::Inflating(inflating) => {
                self.to.set_aside.replace(Some(SetAside {
                    hasher: self.hasher,
                    len: self.len,
                    inflating,
                }));
            }
        }
    }

    /// The error of a failed write at byte `at` of the part, of a blob of `total` bytes.
    fn write_failed(&mut self, at: u64, e: io::Error, total: u64) -> Error {
        let Dest::Slot(into) = &self.to.dest else {
            return write_failed(self.path(), at, e, total);
        };
        // A gzip image's offsets are those of the image it decompresses to.
        let total = self.writing.file_size(total);
        // A plain file whose disk filled up is emptied (see `image::write_failed`): its
        // record must then vouch for none of it.
        let emptied = !self.block && crate::fsutil::is_disk_full(&e);
        let path = self.path();
        let failed = image::write_failed(&self.file, self.block, "writing", path, total, at, e);
        if emptied {
            let _ = self.record(into, 0);
        }
        failed
    }

    /// Verifies the hash, then makes the file durable under its final name; a wrong
    /// file is deleted. A slot is synced and recorded whole instead; a wrong one's record
    /// goes back to 0. `source` names where the bytes came from ([`Stream::source`]).
    fn finish(mut self, source: &str) -> Result<(), Failure> {
        let sha256 = &self.to.spec.sha256;
        let found = hex(&crate::trust::hash_out(std::mem::take(&mut self.hasher)));
        if found == *sha256 {
            return match self.writing.check_end(self.to) {
                Ok(()) => Ok(self.keep()?),
                // The signed blob itself: every base serves the same bytes.
                Err(e) => Err(Failure::stop(self.discard_for(e))),
            };
        }
        let mismatch = Error::new(
            ErrorKind::HashMismatch,
            format!(
                "{source}: expected sha256 {sha256}, found {found} ({} bytes)",
                self.len
            ),
        );
        Err(self.discard_for(mismatch).into())
    }

    /// [`Part::discard`] for `failed`, which says too if the record could not be reset:
    /// the next download must not then take the slot's bytes for the image.
    fn discard_for(self, failed: Error) -> Error {
        match self.discard() {
            Ok(()) => failed,
            Err(r) => failed.map_message(|m| {
                format!("{m}; and recording that the slot holds none of it failed: {r}")
            }),
        }
    }

    /// Keeps the verified blob: the `.part` durable under its final name, or the slot's
    /// record of all of it.
    fn keep(self) -> Result<()> {
        let path = self.path();
        match &self.to.dest {
            Dest::File { done, .. } => {
                crate::fsutil::sync_file(&self.file).map_err(|e| Error::io("syncing", path, e))?;
                drop(self.file);
                fs::rename(path, done).map_err(|e| Error::io("renaming", path, e))?;
                crate::fsutil::sync_parent(done)
            }
            Dest::Slot(into) => self.record(into, self.len),
        }
    }

    /// Drops bytes that failed their hash: the `.part` is removed (as best it can be),
    /// the slot's record brought back to 0.
    fn discard(self) -> Result<()> {
        match &self.to.dest {
            Dest::File { part, .. } => {
                drop(self.file);
                let _ = fs::remove_file(part);
                Ok(())
            }
            Dest::Slot(into) => self.record(into, 0),
        }
    }
}

/// One response body being received into a [`Part`].
struct Stream<'a, 'p> {
    fetcher: &'a Fetcher,
    /// The URL asked for, and asked again on a resume or a fresh start.
    url: &'a str,
    /// Where the transport's redirects led for the last response, if anywhere else, as
    /// errors about its body name it ([`Stream::source`]).
    redirected_to: Option<String>,
    /// The `Content-Encoding` of the last 200 or 206, which errors about the blob's
    /// bytes name.
    encoding: Option<String>,
    total: u64,
    /// The bytes kept from an earlier attempt under the body being received: a mismatch
    /// then is not the server's alone ([`Target::attempt`]).
    kept: u64,
    /// Whether the body's bytes were refused as they arrived ([`Stop::Data`]).
    refused: bool,
    progress: &'p mut dyn FnMut(u64, u64),
    cancel: &'a CancelToken,
}

/// Why receiving stopped before the end of the blob.
enum Stop {
    /// The network, the cancel token or the speed rule stopped it.
    Read(Error),
    /// Writing the `.part` failed, after the given number of bytes of it.
    Write(io::Error, u64),
    /// Recording a slot's progress failed. Not recorded again on the way out as after a
    /// read stop: a failed sync is reported once, and one repeated may succeed with the
    /// bytes lost, which the record would then vouch for.
    Record(Error),
    /// A gzip image's data does not inflate into its slot as declared; its record
    /// says none of it is there already.
    #[cfg_attr(not(feature = "gzip-images"), allow(dead_code))]
    Data(Error),
}

impl Stream<'_, '_> {
    /// `cancelled` once the host's token or the updater's halt ([`Updater::halt`],
    /// `evg_updater_halt`) says stop: looked at between chunks, so a halt ends a download
    /// that is receiving, not only one about to start an attempt.
    ///
    /// [`Updater::halt`]: crate::Updater::halt
    fn stopped(&self) -> Result<()> {
        self.fetcher.stopped(Some(self.cancel))
    }

    /// Notes where `response` came from, for [`Stream::source`]: every error about it,
    /// its status and headers as its body, names the server that sent it.
    fn answered(&mut self, response: &mut Response) {
        self.redirected_to = super::answered_by(self.url, response);
        if matches!(response.status, 200 | 206) {
            self.encoding = response.content_encoding.take();
        }
    }

    /// The URL the last response came from, and the one asked for if a redirect led
    /// elsewhere: a user chasing bad bytes, a cut or a crawl needs the mirror that
    /// served them.
    fn source(&self) -> &str {
        self.redirected_to.as_deref().unwrap_or(self.url)
    }

    /// The fetch as messages name it: `GET` and the URL, or `read` and a file's.
    fn asked(&self) -> String {
        format!("{} {}", super::fetch_verb(self.source()), self.source())
    }

    /// Receives the rest of the blob into the `.part`, hashing on another thread; returns
    /// the `.part` grown by what arrived.
    ///
    /// This thread receives and writes, the other only hashes. The hash is the one job
    /// that must never wait: with the server on the same two cores (a loopback benchmark,
    /// a local mirror), 1 GiB from nginx took 1.50–1.73 s when the hashing thread also
    /// wrote the file, and 1.10–1.19 s when it only hashed (`bench __fetch`, six
    /// interleaved rounds; sha2 hashes the GiB in memory in about 1.0 s on that machine).
    /// Receiving and writing on one thread still overlap on slow storage: while a write
    /// waits, the kernel goes on filling the socket's receive buffer (megabytes, with TCP's
    /// autotuning), as the writer's queue of chunks let it before.
    fn pump<'t>(&mut self, mut body: Box<dyn Read + Send>, mut part: Part<'t>) -> Result<Part<'t>> {
        let hasher = std::mem::take(&mut part.hasher);
        let (full_tx, full_rx) = sync_channel::<(Vec<u8>, usize)>(IN_FLIGHT);
        let (free_tx, free_rx) = sync_channel::<Vec<u8>>(IN_FLIGHT + 1);
        for _ in 0..=IN_FLIGHT {
            // Cannot fail: the channel has room for the whole pool.
            let _ = free_tx.send(vec![0; CHUNK]);
        }
        let kept = hasher.clone();
        let (received, hashed) = std::thread::scope(|scope| {
            let hashing = std::thread::Builder::new()
                .spawn_scoped(scope, move || hash_chunks(hasher, full_rx, free_tx));
            let Ok(hashing) = hashing else {
                return (Err(Stop::Read(no_thread())), Ok(kept));
            };
            let received = self.receive(&mut *body, &mut part, &full_tx, &free_rx);
            drop(full_tx);
            (received, hashing.join())
        });
        let Ok(hasher) = hashed else {
            return Err(Error::new(
                ErrorKind::Io,
                format!(
                    "hashing {}: the hashing thread panicked",
                    part.path().display()
                ),
            ));
        };
        part.hasher = hasher;
        match received {
            Ok(()) => Ok(part),
            Err(Stop::Read(e)) => {
                part.keep_received();
                Err(e)
            }
            // The file is closed on the way out, which frees what its removal gave back.
            Err(Stop::Write(e, at)) => Err(part.write_failed(at, e, self.total)),
            Err(Stop::Data(e)) => {
                self.refused = true;
                Err(e)
            }
            Err(Stop::Record(e)) => Err(e),
        }
    }

    /// The receiving side: reads a chunk, appends it to `file`, hands it to the hashing
    /// thread, and counts it in `done`. Never asks for more than the declared size, and
    /// stops there. Whatever a server sends past it is never read: probing for it could
    /// wait forever (a chunked body's trailers that never end keep one read busy, out of
    /// reach of the cancel and the speed check), and the hash judges the bytes that count.
    /// Stops early (with `Ok`) if the hashing thread is gone; its panic is reported instead.
    fn receive(
        &mut self,
        body: &mut dyn Read,
        part: &mut Part,
        full: &SyncSender<(Vec<u8>, usize)>,
        free: &Receiver<Vec<u8>>,
    ) -> Result<(), Stop> {
        let start = part.len;
        let mut meter = SpeedMeter::new(&self.fetcher.options, Instant::now());
        // Time spent writing that the speed rule leaves out ([`Writing::paces_apart`]).
        let mut writing_time = Duration::ZERO;
        while part.len < self.total {
            self.stopped().map_err(Stop::Read)?;
            let Ok(mut buf) = free.recv() else {
                return Ok(());
            };
            let want = (self.total - part.len).min(CHUNK as u64) as usize;
            let (n, failed) = fill(body, &mut buf[..want]);
            // Bytes that arrived before an error are kept: a resume continues after them.
            self.fetcher.count_received(n);
            if n > 0 {
                let mut input = &buf[..n];
                let put = self.put_chunk(part, &mut input, &mut meter, &mut writing_time, start);
                let used = n - input.len();
                // The bytes used go to the hash thread before a checkpoint may sync the
                // slot, so the hash runs during the sync rather than after it; and before
                // a stop mid-chunk returns, so a gzip image set aside there resumes with
                // the hash of exactly the bytes it inflated.
                let sent = full.send((buf, used)).is_ok();
                let last = put?;
                if !sent {
                    return Ok(());
                }
                part.written(last).map_err(Stop::Record)?;
                (self.progress)(part.len, self.total);
            }
            if let Some(e) = failed {
                return Err(Stop::Read(read_error(self.source(), part.len, e)));
            }
            if n == 0 {
                return Err(Stop::Read(self.ended_early(part.len)));
            }
            self.check_speed(&mut meter, writing_time, part.len - start)?;
        }
        Ok(())
    }

    /// Puts the received chunk `input` into `part` one slice at a time (a gzip chunk
    /// inflates to far more than it is), looking at the host's cancel and the speed rule
    /// between slices. Counts every slice but the last, whose length it returns for the
    /// caller to count once the chunk is with the hash thread; `input` is left after the
    /// bytes used, even when it stops.
    fn put_chunk(
        &mut self,
        part: &mut Part,
        input: &mut &[u8],
        meter: &mut SpeedMeter,
        writing_time: &mut Duration,
        start: u64,
    ) -> Result<usize, Stop> {
        loop {
            let before = (input.len(), Instant::now());
            let all = part
                .writing
                .put(&mut part.file, part.to, self.source(), part.len, input)?;
            if part.writing.paces_apart() {
                *writing_time += before.1.elapsed();
            }
            let used = before.0 - input.len();
            if all {
                return Ok(used);
            }
            part.written(used).map_err(Stop::Record)?;
            (self.progress)(part.len, self.total);
            self.stopped().map_err(Stop::Read)?;
            self.check_speed(meter, *writing_time, part.len - start)?;
        }
    }

    /// The speed rule, on a clock that stopped for the `left_out` time spent writing.
    fn check_speed(
        &self,
        meter: &mut SpeedMeter,
        left_out: Duration,
        bytes: u64,
    ) -> Result<(), Stop> {
        let now = Instant::now();
        let now = now.checked_sub(left_out).unwrap_or(now);
        meter.check(now, bytes, self.source()).map_err(Stop::Read)
    }
}

/// The error of a failed write at byte `at` of the `.part` at `path`, of a blob of `total`
/// bytes; the caller closes the file.
fn write_failed(path: &Path, at: u64, e: io::Error, total: u64) -> Error {
    if e.raw_os_error() == Some(libc::EFBIG) {
        // Past what one file may hold there (FAT: 4 GiB - 1, or a file size limit): a
        // resume would meet the same wall at every update, with the part kept meanwhile.
        let _ = fs::remove_file(path);
        return Error::new(
            ErrorKind::Io,
            format!(
                "writing {}: expected to write a file of {total} bytes, found it refused after {at} bytes ({e}: past the file system's largest file, 4 GiB - 1 on FAT, or this process's file size limit, ulimit -f); the partial download was removed: put the state directory on another file system, or raise the limit",
                path.display(),
            ),
        );
    }
    if !crate::fsutil::is_disk_full(&e) {
        return Error::io("writing", path, e);
    }
    // A `.part` that filled its file system can only grow once space is freed, and
    // until then it takes the room the state needs: every later check and startup
    // step would fail to save. It goes; the next update starts over.
    let _ = fs::remove_file(path);
    Error::new(
        ErrorKind::Io,
        format!(
            "writing {}: expected room for the {total} bytes of the download, found the file system full after {at} bytes ({e}); the partial download was removed so the state can still be saved: free space and update again",
            path.display(),
        ),
    )
}

/// A gzip image whose bytes, served by `source`, do not inflate into the image
/// (`problem`): `hash_mismatch` or `too_large`. The publisher inflated the signed blob
/// whole to learn its installed_size, so these are not its bytes: the error names the
/// server or mirror that sent them, as a raw image's wrong sha256 does.
#[cfg(feature = "gzip-images")]
fn not_the_blob(source: &str, to: &Target, kind: ErrorKind, problem: &str) -> Error {
    let (sha256, path) = (&to.spec.sha256, to.dest.path().display());
    Error::new(
        kind,
        format!(
            "{source}: expected the signed blob sha256 {sha256} (a gzip image), found bytes that are not it: {problem} (inflating into {path})"
        ),
    )
}

/// A gzip image whose signed blob does not inflate into exactly the image its manifest
/// describes (`problem`): `hash_mismatch`, a hand-made manifest's or blob's fault.
#[cfg(feature = "gzip-images")]
fn inflate_failed(to: &Target, kind: ErrorKind, problem: &str) -> Error {
    let (sha256, path) = (&to.spec.sha256, to.dest.path().display());
    Error::new(kind, format!("gzip image {sha256} into {path}: {problem}"))
}

/// [`CHECKPOINT`]; with the `fault-injection` feature (tests only),
/// `EVERGREEN_STREAM_CHECKPOINT=<bytes>` sets it, so that a crash test records progress
/// within a small image.
fn checkpoint() -> u64 {
    #[cfg(feature = "fault-injection")]
    if let Some(bytes) = std::env::var("EVERGREEN_STREAM_CHECKPOINT")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return bytes;
    }
    CHECKPOINT
}

/// The most bytes of a 200 that differ from a kept `.part` held in memory before they
/// replace it. An error page or a captive portal's login page answering a resume with 200
/// is shorter than this, and must not cost the bytes kept; a real blob is longer and
/// goes on.
const HOLD: usize = 4 * CHUNK;

impl Stream<'_, '_> {
    /// A 200 answering a resume starts again from byte 0: its bytes are compared with the
    /// kept ones instead of written over them. Where they agree nothing is written, and a
    /// body that covers the kept bytes simply continues after them. From the first byte
    /// that differs the body is held in memory, and it replaces the kept bytes only once
    /// it has run past them or past [`HOLD`]; a body that ends before (an error page)
    /// fails this base with the `.part` as it was.
    fn replay_kept(&mut self, body: &mut dyn Read, part: &mut Part) -> Result<()> {
        use std::os::unix::fs::FileExt;
        let path = part.path();
        let mut meter = SpeedMeter::new(&self.fetcher.options, Instant::now());
        let mut hasher = Sha256::new();
        let (mut theirs, mut ours) = (vec![0; CHUNK], vec![0; CHUNK]);
        let mut matched = 0;
        while matched < part.len {
            let want = (part.len - matched).min(CHUNK as u64) as usize;
            let n = self.receive_some(body, &mut theirs[..want], matched)?;
            if n == 0 {
                return Err(self.ended_early(matched));
            }
            // The part's own descriptor, read at its offset: the slot may be a block
            // device or reached through a symlink, which `open_regular` refuses.
            part.file
                .read_exact_at(&mut ours[..n], matched)
                .map_err(|e| Error::io("reading", path, e))?;
            if let Some(i) = theirs[..n].iter().zip(&ours[..n]).position(|(a, b)| a != b) {
                crate::trust::hash_in(&mut hasher, &theirs[..i]);
                let held = theirs[i..n].to_vec();
                let at = matched + i as u64;
                let held = (hasher, at, held);
                return self.replace_kept(body, part, held, &mut theirs, &mut meter);
            }
            crate::trust::hash_in(&mut hasher, &theirs[..n]);
            matched += n as u64;
            meter.check(Instant::now(), matched, self.source())?;
        }
        // The kept bytes were the body's first bytes: `part` already holds and hashes them.
        Ok(())
    }

    /// A 200 answering the resume of a gzip image: its first `part.len` bytes must be
    /// those the kept inflater took (compared by their hash; the slot holds what they
    /// inflated to, not them), and the image goes on after them. A body that ends before
    /// them (an error page) fails the attempt and leaves the inflater for the next. One
    /// that differs over them says the taken bytes or this server's are wrong, and which
    /// cannot be told: `hash_mismatch` over kept bytes, which [`Target::attempt`] answers
    /// with one fetch from byte 0 there and then.
    fn skip_taken<'t>(&mut self, body: &mut dyn Read, part: Part<'t>) -> Result<Part<'t>, Failure> {
        let taken = match self.hash_first(body, part.len) {
            Ok(taken) => taken,
            Err(e) => {
                part.keep_received();
                return Err(e.into());
            }
        };
        if taken == crate::trust::hash_out(part.hasher.clone()) {
            return Ok(part);
        }
        Err(Error::new(
            ErrorKind::HashMismatch,
            format!(
                "{}: expected 200 with the whole blob ({} bytes), whose first {} bytes \
                 were taken from an earlier attempt, found other bytes there",
                self.asked(),
                self.total,
                part.len
            ),
        )
        .into())
    }

    /// The SHA-256 of the body's first `len` bytes, received as [`Stream::replay_kept`]
    /// receives them.
    fn hash_first(
        &mut self,
        body: &mut dyn Read,
        len: u64,
    ) -> Result<sha2::digest::Output<Sha256>> {
        let mut meter = SpeedMeter::new(&self.fetcher.options, Instant::now());
        let mut hasher = Sha256::new();
        let mut buf = vec![0; CHUNK];
        let mut done = 0;
        while done < len {
            let want = (len - done).min(CHUNK as u64) as usize;
            let n = self.receive_some(body, &mut buf[..want], done)?;
            if n == 0 {
                return Err(self.ended_early(done));
            }
            crate::trust::hash_in(&mut hasher, &buf[..n]);
            done += n as u64;
            meter.check(Instant::now(), done, self.source())?;
        }
        Ok(crate::trust::hash_out(hasher))
    }

    /// Holds the body from `at`, where it first differs from the kept bytes (`hasher`
    /// has hashed the body before it), until it proves longer than what it would
    /// replace, then writes it over them from there, reading through `buf`. The speed
    /// rule goes on meanwhile.
    fn replace_kept(
        &mut self,
        body: &mut dyn Read,
        part: &mut Part,
        (mut hasher, at, mut held): (Sha256, u64, Vec<u8>),
        buf: &mut [u8],
        meter: &mut SpeedMeter,
    ) -> Result<()> {
        while at + (held.len() as u64) <= part.len && held.len() < HOLD {
            let done = at + held.len() as u64;
            let want = (self.total - done).min(buf.len() as u64) as usize;
            let n = self.receive_some(body, &mut buf[..want], done)?;
            if n == 0 {
                return Err(Error::new(
                    ErrorKind::HttpStatus,
                    format!(
                        "{}: expected 200 with the whole blob ({} bytes), found a body of \
                         {done} bytes that differs from the {} bytes kept from an earlier \
                         attempt at byte {at}; the kept bytes stay",
                        self.asked(),
                        self.total,
                        part.len
                    ),
                ));
            }
            held.extend_from_slice(&buf[..n]);
            meter.check(Instant::now(), done + n as u64, self.source())?;
        }
        part.truncate(at)?;
        part.file
            .write_all(&held)
            .map_err(|e| part.write_failed(at, e, self.total))?;
        crate::trust::hash_in(&mut hasher, &held);
        part.hasher = hasher;
        part.kept = part.kept.min(at);
        part.written(held.len())?;
        Ok(())
    }

    /// Reads up to `buf.len()` bytes of the body (which ends, as a blob, at `done` +
    /// `buf.len()` at the latest), counting and reporting them like [`Stream::receive`].
    fn receive_some(&mut self, body: &mut dyn Read, buf: &mut [u8], done: u64) -> Result<usize> {
        self.stopped()?;
        let (n, failed) = fill(body, buf);
        self.fetcher.count_received(n);
        (self.progress)(done + n as u64, self.total);
        match failed {
            Some(e) => Err(read_error(self.source(), done + n as u64, e)),
            None => Ok(n),
        }
    }

    fn ended_early(&self, done: u64) -> Error {
        Error::new(
            ErrorKind::Network,
            format!(
                "{}: expected {} bytes, found the body ended after {done}",
                self.asked(),
                self.total
            ),
        )
    }
}

/// Reads into `buf` until it is full, the body ends or [`FILL_WAIT`] has passed. The
/// HTTP body hands out a few KiB per read, and passing each piece to the hashing thread
/// on its own costs a thread wake-up per piece (measured: 4× slower than the hash); the
/// time bound keeps progress, cancellation and the speed check prompt on a slow server.
/// Returns the bytes read and the error that stopped the reading after them, if any.
fn fill(body: &mut dyn Read, buf: &mut [u8]) -> (usize, Option<io::Error>) {
    let started = Instant::now();
    let mut n = 0;
    while n < buf.len() {
        match read_some(body, &mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) => return (n, Some(e)),
        }
        if started.elapsed() >= FILL_WAIT {
            break;
        }
    }
    (n, None)
}

/// The OS gave no thread to hash a download on: a process at its thread limit (a pids
/// cgroup, systemd's `TasksMax`, `RLIMIT_NPROC`; DESIGN decision 40). Nothing of this
/// attempt was received, and the next one asks again. Hashing on the receiving thread
/// instead took 4 KB of the smallest library, which it does not have.
fn no_thread() -> Error {
    Error::new(
        ErrorKind::Io,
        "expected a thread to hash the download on, found the system refusing one (this process is at its thread limit); try again once it runs fewer threads",
    )
}

/// The hashing thread: hashes each chunk and hands the buffer back.
fn hash_chunks(
    mut hasher: Sha256,
    full: Receiver<(Vec<u8>, usize)>,
    free: SyncSender<Vec<u8>>,
) -> Sha256 {
    for (buf, n) in full.iter() {
        crate::trust::hash_in(&mut hasher, &buf[..n]);
        // The receiver may have stopped; the buffer is then simply freed.
        let _ = free.send(buf);
    }
    hasher
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Slot b of `images` as a download's destination, with no record read yet;
    /// `inflate_to` for a gzip image.
    fn dest_in_slot_b<'a>(
        images: &'a ImageSlots,
        record: &'a Path,
        inflate_to: Option<u64>,
    ) -> SlotDest<'a> {
        SlotDest {
            images,
            slot: Slot::B,
            record,
            recorded: Rc::new(RefCell::new(None)),
            inflate_to,
        }
    }

    /// An image the record says is whole in its slot is not fetched again: a second
    /// download of it (the install after `update --download-only`, an update run again)
    /// asks nothing, reports no progress and leaves the slot's bytes as they are, with
    /// the blob gone from the server meanwhile.
    #[test]
    fn an_image_recorded_whole_in_its_slot_is_not_fetched_again() {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("repo");
        let blobs = repo.join("blobs/sha256");
        fs::create_dir_all(&blobs).unwrap();
        let image: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let sha256 = hex(&Sha256::digest(&image));
        fs::write(blobs.join(&sha256), &image).unwrap();
        let slot_b = dir.path().join("b");
        let images = ImageSlots::new(dir.path().join("a"), &slot_b);
        let record = dir.path().join("image-stream");
        let into = dest_in_slot_b(&images, &record, None);
        let spec = super::super::BlobSpec {
            sha256: sha256.clone(),
            size: image.len() as u64,
            url: None,
        };
        let fetcher = Fetcher::new(vec![repo.display().to_string()], Default::default()).unwrap();
        // Streams the image into slot b: the progress calls it made.
        let streamed = || {
            let mut calls = 0;
            let cancel = CancelToken::new();
            stream(&fetcher, &spec, &into, &mut |_, _| calls += 1, &cancel).unwrap();
            assert_eq!(fs::read(&slot_b).unwrap()[..image.len()], image[..]);
            calls
        };
        assert!(streamed() > 0);

        let asked = fetcher.stats().requests;
        fs::remove_file(blobs.join(&sha256)).unwrap();
        assert_eq!(streamed(), 0);
        assert_eq!(fetcher.stats().requests, asked);
    }

    /// Bringing the record down (a server's 200 that differs from the kept bytes) only
    /// writes the record: the slot is not synced first, so one whose sync fails (here
    /// `/dev/null`, which refuses `fdatasync`) does not fail it.
    #[cfg(target_os = "linux")]
    #[test]
    fn lowering_the_record_does_not_sync_the_slot() {
        let dir = tempfile::tempdir().unwrap();
        let record = dir.path().join("image-stream");
        let sha256 = "a".repeat(64);
        let images = ImageSlots::new(dir.path().join("a"), "/dev/null");
        let recorded = Streamed {
            sha256: sha256.clone(),
            slot: Slot::B,
            bytes: 300,
        };
        let into = SlotDest {
            images: &images,
            slot: Slot::B,
            record: &record,
            recorded: Rc::new(RefCell::new(Some(recorded))),
            inflate_to: None,
        };
        let spec = super::super::BlobSpec {
            sha256: sha256.clone(),
            size: 1000,
            url: None,
        };
        let to = Target::new(&spec, Dest::Slot(&into));
        let mut part = Part {
            to: &to,
            file: File::options().write(true).open("/dev/null").unwrap(),
            hasher: Sha256::new(),
            len: 300,
            kept: 300,
            block: false,
            writing: Writing::AsIs,
        };
        part.truncate(100).unwrap();
        let found = Streamed::read(&record).unwrap();
        assert_eq!(found.bytes_of(&sha256, Slot::B), 100);
        // Raising it still needs the slot durable first.
        part.len = 200;
        let err = part.record(&into, 200).unwrap_err();
        assert!(err.to_string().contains("syncing /dev/null"), "{err}");
        assert_eq!(Streamed::read(&record).unwrap().bytes, 100);
    }

    /// A stop between two slices of one received chunk (a cancel from the progress
    /// callback) sets a gzip image aside with the hash of exactly the compressed bytes its
    /// inflater took, and the next attempt, given the rest, completes the image: a hash
    /// short of those bytes would fail it.
    #[cfg(feature = "gzip-images")]
    #[test]
    fn a_gzip_image_stopped_mid_chunk_resumes_with_the_hash_of_the_bytes_it_took() {
        use flate2::{write::GzEncoder, Compression};
        let dir = tempfile::tempdir().unwrap();
        // Runs of one byte inflate some 1,000-fold: the whole blob is one chunk of many
        // slices. A byte per MiB, none 0 (what a slot sized up front reads as), so that
        // output written at the wrong offset shows.
        let image_len = 16 * INFLATE_SLICE;
        let image: Vec<u8> = (0..image_len as usize)
            .map(|i| 1 + (i >> 20) as u8)
            .collect();
        let mut gz = GzEncoder::new(Vec::new(), Compression::default());
        gz.write_all(&image).unwrap();
        let gz = gz.finish().unwrap();
        assert!(gz.len() < CHUNK, "{}", gz.len());
        let images = ImageSlots::new(dir.path().join("a"), dir.path().join("b"));
        let record = dir.path().join("image-stream");
        let into = dest_in_slot_b(&images, &record, Some(image_len));
        let spec = super::super::BlobSpec {
            sha256: hex(&Sha256::digest(&gz)),
            size: gz.len() as u64,
            url: None,
        };
        let to = Target::new(&spec, Dest::Slot(&into));
        let fetcher = Fetcher::new(vec!["/nowhere".into()], Default::default()).unwrap();
        // Pumps the blob from byte `from`, cancelled at the `stop_at`th progress call.
        let pump = |from: usize, stop_at: usize, calls: &mut Vec<u64>| {
            let cancel = CancelToken::new();
            let mut progress = |done, _| {
                calls.push(done);
                if calls.len() == stop_at {
                    cancel.cancel();
                }
            };
            let mut stream = Stream {
                fetcher: &fetcher,
                url: "/nowhere/blob",
                redirected_to: None,
                encoding: None,
                total: spec.size,
                kept: 0,
                refused: false,
                progress: &mut progress,
                cancel: &cancel,
            };
            let body = Box::new(io::Cursor::new(gz[from..].to_vec()));
            stream.pump(body, Part::open(&to).unwrap())
        };
        let mut calls = Vec::new();
        let Err(stopped) = pump(0, 2, &mut calls) else {
            panic!("expected the cancel to stop it");
        };
        assert_eq!(stopped.kind(), ErrorKind::Cancelled, "{stopped}");
        let set_aside = to.set_aside.take().expect("the inflater set aside");
        let took = set_aside.len as usize;
        assert!(took > 0 && took < gz.len(), "{took} of {}", gz.len());
        assert!(calls.len() == 2 && calls[0] < calls[1], "{calls:?}");
        assert_eq!(calls[1], took as u64, "stopped after two slices");
        assert_eq!(set_aside.inflating.written, 2 * INFLATE_SLICE);
        let hashed = set_aside.hasher.clone().finalize();
        assert_eq!(hex(&hashed), hex(&Sha256::digest(&gz[..took])));

        to.set_aside.replace(Some(set_aside));
        let part = pump(took, 0, &mut Vec::new()).unwrap();
        assert_eq!(part.len, spec.size);
        if let Err(f) = part.finish("/nowhere/blob") {
            panic!("{}", f.error);
        }
        let slot = fs::read(dir.path().join("b")).unwrap();
        assert!(slot == image, "the slot holds the image");
    }

    #[test]
    fn hash_must_be_lowercase_hex() {
        assert!(check_sha256(&"a".repeat(64)).is_ok());
        for bad in ["../etc/passwd", &"A".repeat(64), &"a".repeat(63)] {
            assert_eq!(check_sha256(bad).unwrap_err().kind(), ErrorKind::Config);
        }
    }
}
