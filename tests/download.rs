//! Downloads and metadata over real loopback HTTP against a misbehaving server, and from
//! files (DESIGN §5.4).

mod mounts;
mod require;
mod support;

use evergreen::fetch::{
    BlobSpec, CancelToken, FetchOptions, Fetcher, Metadata, Request, Response, Transport,
};
use evergreen::trust::sha256_hex;
use evergreen::{Error, ErrorKind, Result};
use mounts::Mounted;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use support::{Fault, TestServer};
use tempfile::TempDir;

const SIZE: usize = 1024 * 1024;

/// A repository directory holding one blob of pseudo-random bytes.
struct Repo {
    dir: TempDir,
    blob: Vec<u8>,
    sha256: String,
}

impl Repo {
    fn new(size: usize) -> Repo {
        let blob = support::noise(size, 0x9e37_79b9_7f4a_7c15);
        let sha256 = sha256_hex(&blob);
        let dir = TempDir::new().unwrap();
        std::fs::create_dir_all(dir.path().join("blobs/sha256")).unwrap();
        std::fs::write(dir.path().join("blobs/sha256").join(&sha256), &blob).unwrap();
        Repo { dir, blob, sha256 }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn blob_path(&self) -> String {
        format!("blobs/sha256/{}", self.sha256)
    }

    fn spec(&self) -> BlobSpec {
        BlobSpec {
            sha256: self.sha256.clone(),
            size: self.blob.len() as u64,
            url: None,
        }
    }
}

fn options() -> FetchOptions {
    FetchOptions {
        connect_timeout: Duration::from_secs(5),
        read_timeout: Duration::from_secs(5),
        retries: 0,
        retry_backoff: Duration::from_millis(1),
        ..FetchOptions::default()
    }
}

fn fetcher(bases: &[String], options: FetchOptions) -> Fetcher {
    Fetcher::new(bases.to_vec(), options).unwrap()
}

fn download(fetcher: &Fetcher, spec: &BlobSpec, dir: &Path) -> Result<PathBuf> {
    fetcher.download(spec, dir, &mut |_, _| {}, &CancelToken::new())
}

fn part_path(dir: &Path, repo: &Repo) -> PathBuf {
    dir.join(format!("{}.part", repo.sha256))
}

/// `options()` with `retries` more rounds through the bases.
fn retrying(retries: u32) -> FetchOptions {
    FetchOptions {
        retries,
        ..options()
    }
}

/// A `.part` in `dir` holding the blob's first half, as an interrupted run leaves it.
fn keep_first_half(dir: &Path, repo: &Repo) -> PathBuf {
    let part = part_path(dir, repo);
    std::fs::write(&part, &repo.blob[..repo.blob.len() / 2]).unwrap();
    part
}

/// Downloads the blob into `dir`, which must succeed with the blob's exact bytes.
fn assert_downloads_the_blob(f: &Fetcher, repo: &Repo, dir: &Path) {
    let path = download(f, &repo.spec(), dir).unwrap();
    assert_eq!(std::fs::read(path).unwrap(), repo.blob);
}

/// The statuses the server answered for the blob, oldest first.
fn statuses(server: &TestServer, repo: &Repo) -> Vec<u16> {
    server
        .requests(&repo.blob_path())
        .iter()
        .map(|l| l.status)
        .collect()
}

/// A fetcher of `server` requiring `min_speed` bytes/s over a 500 ms window, with a 2 s
/// idle timeout, and the time within which a trickle must have been stopped.
fn slow_fetcher(server: &TestServer, min_speed: u64) -> (Fetcher, Duration) {
    let opts = FetchOptions {
        min_speed_bytes_per_s: min_speed,
        speed_window: Duration::from_millis(500),
        read_timeout: Duration::from_secs(2),
        ..options()
    };
    let bound = opts.speed_window + opts.read_timeout;
    (fetcher(&[server.url()], opts), bound)
}

fn assert_no_completed_file(dir: &Path, repo: &Repo) {
    assert!(
        !dir.join(&repo.sha256).exists(),
        "a completed file was left behind"
    );
}

#[test]
fn cut_at_half_then_resume_with_range() {
    let repo = Repo::new(SIZE);
    let server = TestServer::serve(repo.path());
    server.set_fault_times(&repo.blob_path(), Fault::DropAfter(SIZE as u64 / 2), 1);
    let downloads = TempDir::new().unwrap();
    let f = fetcher(&[server.url()], options());

    let err = download(&f, &repo.spec(), downloads.path()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Network, "{err}");
    let kept = std::fs::metadata(part_path(downloads.path(), &repo))
        .unwrap()
        .len();
    assert!(kept > 0 && kept <= SIZE as u64 / 2, "kept {kept} bytes");

    let path = download(&f, &repo.spec(), downloads.path()).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), repo.blob);
    assert!(!part_path(downloads.path(), &repo).exists());
    let log = server.requests(&repo.blob_path());
    assert_eq!(log.len(), 2);
    assert_eq!(log[0].range, None);
    assert_eq!(log[1].range, Some(format!("bytes={kept}-")));
    assert_eq!(log[1].status, 206);
    assert_eq!(
        f.stats().bytes_received,
        SIZE as u64,
        "no byte is fetched twice"
    );
}

#[test]
fn resume_within_one_call_when_retries_allow() {
    let repo = Repo::new(SIZE);
    let server = TestServer::serve(repo.path());
    server.set_fault_times(&repo.blob_path(), Fault::DropAfter(1000), 1);
    let downloads = TempDir::new().unwrap();
    let f = fetcher(&[server.url()], retrying(1));
    assert_downloads_the_blob(&f, &repo, downloads.path());
    assert!(server.requests(&repo.blob_path())[1].range.is_some());
}

#[test]
fn server_ignoring_range_restarts_from_zero_and_succeeds() {
    let repo = Repo::new(SIZE);
    let server = TestServer::serve(repo.path());
    server.set_fault(&repo.blob_path(), Fault::IgnoreRange);
    let downloads = TempDir::new().unwrap();
    keep_first_half(downloads.path(), &repo);
    let f = fetcher(&[server.url()], options());

    assert_downloads_the_blob(&f, &repo, downloads.path());
    let log = server.requests(&repo.blob_path());
    assert_eq!(log[0].range, Some(format!("bytes={}-", SIZE / 2)));
    assert_eq!(log[0].status, 200);
    assert_eq!(f.stats().bytes_received, SIZE as u64);
}

#[test]
fn wrong_content_range_is_refused_and_the_whole_blob_asked_for_instead() {
    let repo = Repo::new(SIZE);
    let server = TestServer::serve(repo.path());
    server.set_fault(&repo.blob_path(), Fault::WrongContentRange);
    let downloads = TempDir::new().unwrap();
    keep_first_half(downloads.path(), &repo);
    let f = fetcher(&[server.url()], options());

    // The 206 is not appended; the same server's 200 with the whole blob replaces the
    // kept bytes, as for a server that ignores Range.
    assert_downloads_the_blob(&f, &repo, downloads.path());
    let log = server.requests(&repo.blob_path());
    assert_eq!(log.len(), 2);
    assert_eq!(log[0].range, Some(format!("bytes={}-", SIZE / 2)));
    assert_eq!(log[0].status, 206);
    assert_eq!((log[1].range.as_deref(), log[1].status), (None, 200));
}

/// A 206 whose `Content-Length` declares more than the blob has left after the kept bytes
/// (its `Content-Range` right) is refused as `too_large` before a byte of its body is
/// taken, naming the length declared; the kept half stays as it was.
#[test]
fn a_206_declaring_more_than_the_blob_has_left_is_refused_before_its_body() {
    let repo = Repo::new(SIZE);
    let server = TestServer::serve(repo.path());
    server.set_fault(&repo.blob_path(), Fault::LongRange(4096));
    let downloads = TempDir::new().unwrap();
    let part = keep_first_half(downloads.path(), &repo);
    let f = fetcher(&[server.url()], options());

    let err = download(&f, &repo.spec(), downloads.path()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::TooLarge, "{err}");
    let declared = format!("{} bytes declared", SIZE - SIZE / 2 + 4096);
    assert!(err.message().contains(&declared), "{err}");
    assert_eq!(std::fs::read(&part).unwrap(), repo.blob[..SIZE / 2]);
    assert_eq!(statuses(&server, &repo), [206]);
}

/// A 206 with the wrong offsets must not cost the bytes kept: when the base cannot serve
/// the whole blob either, the `.part` is left as it was for the next attempt.
#[test]
fn wrong_content_range_keeps_the_partial_download() {
    let repo = Repo::new(SIZE);
    let server = TestServer::serve(repo.path());
    // Newest rule first: the Range request gets the wrong 206, the whole GET a 503.
    server.set_fault_times(&repo.blob_path(), Fault::Status(503), 1);
    server.set_fault_times(&repo.blob_path(), Fault::WrongContentRange, 1);
    let downloads = TempDir::new().unwrap();
    let part = keep_first_half(downloads.path(), &repo);
    let f = fetcher(&[server.url()], options());

    let err = download(&f, &repo.spec(), downloads.path()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::HttpStatus, "{err}");
    let expected = format!("bytes {}-{}/{SIZE}", SIZE / 2, SIZE - 1);
    let found = format!("bytes 0-{}/{SIZE}", SIZE - 1);
    assert!(err.message().contains(&expected), "{err}");
    assert!(err.message().contains(&found), "{err}");
    assert!(err.message().contains("503"), "{err}");
    let kept = std::fs::metadata(&part).unwrap().len();
    assert_eq!(kept, SIZE as u64 / 2, "the kept bytes are untouched");
    assert_no_completed_file(downloads.path(), &repo);

    // The next attempt resumes them.
    assert_downloads_the_blob(&f, &repo, downloads.path());
    assert_eq!(
        server.requests(&repo.blob_path())[2].range,
        Some(format!("bytes={}-", SIZE / 2))
    );
}

/// A server that errs for a moment after a wrong range is tried again, as for any 503.
#[test]
fn a_503_after_a_wrong_range_is_retried() {
    let repo = Repo::new(SIZE);
    let server = TestServer::serve(repo.path());
    server.set_fault_times(&repo.blob_path(), Fault::Status(503), 1);
    server.set_fault_times(&repo.blob_path(), Fault::WrongContentRange, 1);
    let downloads = TempDir::new().unwrap();
    keep_first_half(downloads.path(), &repo);
    let f = fetcher(&[server.url()], retrying(2));
    assert_downloads_the_blob(&f, &repo, downloads.path());
    assert_eq!(server.requests(&repo.blob_path()).len(), 3);
}

/// A mirror that serves its "not found" page as a 200 must not wipe what the server
/// delivered: a page declaring its length is refused from its Content-Length; a page
/// sent chunked, as a proxy or captive portal may, has no length to refuse it by, so its
/// bytes are compared with the kept ones and never written over them. Either way the
/// server resumes, and the mirror alone is an `http_status` error saying why.
#[test]
fn a_200_error_page_from_a_mirror_keeps_the_partial_download() {
    let page = b"<html>Not Found</html>".to_vec();
    let chunked = format!(
        "found a body of {} bytes that differs from the {} bytes kept from an earlier \
         attempt at byte 0",
        page.len(),
        SIZE / 2
    );
    // The fault, the error it gives alone, and the bytes its page costs (a declared
    // length is refused before the body).
    let cases = [
        (
            Fault::ErrorPage(page.clone()),
            format!("found 200 with Content-Length {}", page.len()),
            0,
        ),
        (Fault::ChunkedErrorPage(page.clone()), chunked, page.len()),
    ];
    for (fault, expected, page_bytes) in cases {
        let repo = Repo::new(SIZE);
        let server = TestServer::serve(repo.path());
        let mirror = TestServer::serve(repo.path());
        server.set_fault_times(&repo.blob_path(), Fault::DropAfter(SIZE as u64 * 3 / 4), 1);
        mirror.set_fault("blobs/", fault.clone());
        let downloads = TempDir::new().unwrap();
        let f = fetcher(&[server.url(), mirror.url()], retrying(1));

        assert_downloads_the_blob(&f, &repo, downloads.path());
        let log = server.requests(&repo.blob_path());
        assert_eq!(log.len(), 2, "{fault:?}");
        assert_eq!(log[1].range, Some(format!("bytes={}-", SIZE * 3 / 4)));
        assert_eq!(statuses(&mirror, &repo), [200], "{fault:?}");
        assert_eq!(
            f.stats().bytes_received,
            (SIZE + page_bytes) as u64,
            "{fault:?}: no byte of the blob fetched twice"
        );

        let downloads = TempDir::new().unwrap();
        let part = keep_first_half(downloads.path(), &repo);
        let alone = fetcher(&[mirror.url()], retrying(2));
        let err = download(&alone, &repo.spec(), downloads.path()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::HttpStatus, "{err}");
        assert!(err.message().contains(&expected), "{err}");
        assert!(err.message().contains(&SIZE.to_string()), "{err}");
        assert_eq!(std::fs::read(&part).unwrap(), repo.blob[..SIZE / 2]);
        assert_eq!(
            statuses(&mirror, &repo),
            [200, 200],
            "{fault:?}: a base serving something else is not asked again"
        );
    }
}

/// A `.part` that is a symlink (planted by another user who may write the downloads
/// directory) is refused, never truncated and filled through: the file it points to is
/// left as it was.
#[test]
fn a_part_file_that_is_a_symlink_is_never_written_through() {
    let repo = Repo::new(SIZE);
    let server = TestServer::serve(repo.path());
    let downloads = TempDir::new().unwrap();
    let victim = downloads.path().join("victim");
    std::fs::write(&victim, vec![7u8; SIZE * 2]).unwrap();
    std::os::unix::fs::symlink(&victim, part_path(downloads.path(), &repo)).unwrap();
    let f = fetcher(&[server.url()], options());

    let err = download(&f, &repo.spec(), downloads.path()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Io, "{err}");
    assert!(err.message().contains("found a symbolic link"), "{err}");
    assert_eq!(std::fs::read(&victim).unwrap(), vec![7u8; SIZE * 2]);
}

/// A FIFO planted under a download's names (the `.part`, or the finished file) is refused
/// at once, naming what it is: opening or reading it waited for a writer for good, where
/// no cancel reached.
#[test]
fn a_fifo_under_a_downloads_name_is_refused_at_once() {
    let repo = Repo::new(SIZE);
    let server = TestServer::serve(repo.path());
    for name in [format!("{}.part", repo.sha256), repo.sha256.clone()] {
        let downloads = TempDir::new().unwrap();
        let fifo = downloads.path().join(&name);
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let (done, result) = std::sync::mpsc::channel();
        let (url, spec, dir) = (server.url(), repo.spec(), downloads.path().to_path_buf());
        std::thread::spawn(move || {
            let f = fetcher(&[url], options());
            done.send(download(&f, &spec, &dir)).unwrap()
        });
        let err = result
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("{name}: still waiting on the FIFO after 20 s"))
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Io, "{err}");
        assert!(
            err.message()
                .ends_with("expected a regular file, found a FIFO (remove it)"),
            "{err}"
        );
    }
}

/// Two downloads of one blob into one directory at once take turns. The first, from a
/// mirror whose copy is wrong in its second half, trickles in; the second waits, then
/// fetches the blob from a good server. It used to share the first one's `.part`, finish
/// and rename it, and the first then wrote its wrong bytes on into the verified file.
#[test]
fn two_downloads_of_one_blob_into_one_directory_take_turns() {
    let repo = Repo::new(SIZE);
    let good = TestServer::serve(repo.path());
    let bad_repo = TempDir::new().unwrap();
    let mut copy = repo.blob.clone();
    copy[SIZE / 2..].iter_mut().for_each(|b| *b ^= 0xff);
    std::fs::create_dir_all(bad_repo.path().join("blobs/sha256")).unwrap();
    std::fs::write(bad_repo.path().join(repo.blob_path()), &copy).unwrap();
    let bad = TestServer::serve(bad_repo.path());
    let trickle = Fault::Trickle {
        bytes: 16 * 1024,
        every: Duration::from_millis(10),
    };
    bad.set_fault(&repo.blob_path(), trickle);
    let downloads = TempDir::new().unwrap();
    let (url, spec, dir) = (bad.url(), repo.spec(), downloads.path().to_path_buf());
    let first = std::thread::spawn(move || download(&fetcher(&[url], options()), &spec, &dir));
    while bad.requests(&repo.blob_path()).is_empty() {
        std::thread::sleep(Duration::from_millis(10));
    }
    let second = download(
        &fetcher(&[good.url()], options()),
        &repo.spec(),
        downloads.path(),
    );
    let first = first.join().unwrap();
    assert_eq!(first.unwrap_err().kind(), ErrorKind::HashMismatch);
    let done = second.unwrap();
    assert_eq!(std::fs::read(&done).unwrap(), repo.blob);
}

/// A download started from a download's progress callback into the same directory would
/// wait for its own caller's turn: refused at once (`invalid_state`), the outer one done.
#[test]
fn a_download_into_the_same_directory_from_a_progress_callback_is_refused_at_once() {
    let repo = Repo::new(SIZE);
    let other = Repo::new(1000);
    let server = TestServer::serve(repo.path());
    let second = TestServer::serve(other.path());
    let downloads = TempDir::new().unwrap();
    let f = fetcher(&[server.url()], options());
    let g = fetcher(&[second.url()], options());
    let mut inner = None;
    let started = Instant::now();
    // Were it to wait, it would wait for good: a cancel after 5 s bounds the test.
    let give_up = CancelToken::new();
    let cancel = give_up.clone();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(5));
        cancel.cancel();
    });
    f.download(
        &repo.spec(),
        downloads.path(),
        &mut |_, _| {
            if inner.is_none() {
                let spec = other.spec();
                inner = Some(g.download(&spec, downloads.path(), &mut |_, _| {}, &give_up));
            }
        },
        &CancelToken::new(),
    )
    .unwrap();
    let err = inner.unwrap().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidState, "{err}");
    assert!(err.message().contains("it would wait for itself"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// A download waiting for another one's turn in its directory is cancelled promptly.
#[test]
fn a_download_waiting_for_its_turn_is_cancelled_promptly() {
    let repo = Repo::new(SIZE);
    let server = TestServer::serve(repo.path());
    let trickle = Fault::Trickle {
        bytes: 1024,
        every: Duration::from_millis(50),
    };
    server.set_fault(&repo.blob_path(), trickle);
    let downloads = TempDir::new().unwrap();
    let holding = CancelToken::new();
    let (url, spec, dir, stop) = (
        server.url(),
        repo.spec(),
        downloads.path().to_path_buf(),
        holding.clone(),
    );
    let first = std::thread::spawn(move || {
        fetcher(&[url], options()).download(&spec, &dir, &mut |_, _| {}, &stop)
    });
    while server.requests(&repo.blob_path()).is_empty() {
        std::thread::sleep(Duration::from_millis(10));
    }
    let waiting = CancelToken::new();
    let cancel = waiting.clone();
    let started = Instant::now();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        cancel.cancel();
    });
    let f = fetcher(&[server.url()], options());
    let err = f
        .download(&repo.spec(), downloads.path(), &mut |_, _| {}, &waiting)
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Cancelled, "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    holding.cancel();
    assert_eq!(
        first.join().unwrap().unwrap_err().kind(),
        ErrorKind::Cancelled
    );
}

/// A finished download whose bytes have the spec's SHA-256 but another length than its
/// size is the blob: the size is what is wrong (`wrong_metadata`), and the file stays. It
/// was deleted, and every later download of it failed.
#[test]
fn a_finished_download_whose_size_the_spec_misstates_is_kept() {
    let repo = Repo::new(1000);
    let server = TestServer::serve(repo.path());
    let downloads = TempDir::new().unwrap();
    let f = fetcher(&[server.url()], options());
    let done = download(&f, &repo.spec(), downloads.path()).unwrap();
    let spec = BlobSpec {
        size: 999,
        ..repo.spec()
    };
    let err = download(&f, &spec, downloads.path()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::WrongMetadata, "{err}");
    assert!(
        err.message().contains(&format!(
            "expected 999 bytes, found 1000 in {}, whose SHA-256 is the one expected",
            done.display()
        )),
        "{err}"
    );
    assert_eq!(std::fs::read(&done).unwrap(), repo.blob);
    assert_eq!(f.stats().requests, 1);
}

/// A 200 sent chunked that agrees with the kept bytes and then ends is, as far as anything
/// shows, the blob cut short on its way: a `network` error, retried on the same server,
/// and the kept bytes stay.
#[test]
fn a_chunked_200_that_ends_inside_the_kept_bytes_is_retried_and_keeps_them() {
    let repo = Repo::new(SIZE);
    let server = TestServer::serve(repo.path());
    let short = repo.blob[..SIZE / 4].to_vec();
    server.set_fault(&repo.blob_path(), Fault::ChunkedErrorPage(short));
    let downloads = TempDir::new().unwrap();
    let part = keep_first_half(downloads.path(), &repo);
    let f = fetcher(&[server.url()], retrying(2));

    let err = download(&f, &repo.spec(), downloads.path()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Network, "{err}");
    let expected = format!(
        "expected {SIZE} bytes, found the body ended after {}",
        SIZE / 4
    );
    assert!(err.message().contains(&expected), "{err}");
    assert_eq!(statuses(&server, &repo), [200, 200, 200], "retried");
    assert_eq!(std::fs::read(&part).unwrap(), repo.blob[..SIZE / 2]);
}

/// A server that ignores `Range` and sends its body chunked serves the blob whatever the
/// kept bytes hold: kept bytes it confirms are continued after, and kept bytes that
/// differ are replaced once its body has shown it is longer than they are (garbage
/// shorter and longer than what is held in memory before deciding).
#[test]
fn a_chunked_200_over_kept_bytes_continues_or_replaces_them() {
    let repo = Repo::new(4 * SIZE);
    let halves = [
        repo.blob[..2 * SIZE].to_vec(),
        garbage(SIZE / 2),
        garbage(3 * SIZE),
    ];
    for kept in halves {
        let server = TestServer::serve(repo.path());
        server.set_fault(&repo.blob_path(), Fault::IgnoreRangeChunked);
        let downloads = TempDir::new().unwrap();
        std::fs::write(part_path(downloads.path(), &repo), &kept).unwrap();
        let f = fetcher(&[server.url()], options());

        let mut reported = 0;
        let path = f
            .download(
                &repo.spec(),
                downloads.path(),
                &mut |done, total| {
                    assert!(done <= total, "{done} of {total}");
                    reported = done;
                },
                &CancelToken::new(),
            )
            .unwrap();
        assert_eq!(
            std::fs::read(path).unwrap(),
            repo.blob,
            "kept {}",
            kept.len()
        );
        assert_eq!(reported, repo.blob.len() as u64);
        let log = server.requests(&repo.blob_path());
        assert_eq!(log.len(), 1, "one request, no fresh start: {log:?}");
        assert_eq!(log[0].status, 200);
        assert_eq!(f.stats().bytes_received, repo.blob.len() as u64);
    }
}

/// A body running on past the size (with no declared length, so nothing refuses it
/// first) is read up to the size and no further: the signed bytes are kept, the rest is
/// never received.
#[test]
fn a_longer_body_is_read_up_to_the_size_and_no_further() {
    let repo = Repo::new(SIZE);
    let server = TestServer::serve(repo.path());
    server.set_fault(&repo.blob_path(), Fault::AppendJunk(512 * 1024));
    let downloads = TempDir::new().unwrap();
    let part = part_path(downloads.path(), &repo);
    let f = fetcher(&[server.url()], options());

    let mut largest = 0;
    let result = f.download(
        &repo.spec(),
        downloads.path(),
        &mut |done, total| {
            assert!(done <= total);
            largest = largest.max(std::fs::metadata(&part).map_or(0, |m| m.len()));
        },
        &CancelToken::new(),
    );
    let path = result.unwrap();
    assert!(largest <= SIZE as u64, "the .part grew to {largest}");
    assert_eq!(std::fs::read(path).unwrap(), repo.blob);
    // Received: exactly the size; what follows it is never asked for.
    let received = f.stats().bytes_received;
    assert!(
        received == SIZE as u64,
        "received {received} bytes of a {SIZE}-byte blob"
    );
}

/// A chunked body whose answer also carries a `Content-Length` (a framework or proxy that
/// adds both) is framed by its chunks, as RFC 9112 §6.3 has it and as the HTTP stack reads
/// it: the stray length must not get the blob or the document refused.
#[test]
fn a_chunked_body_is_judged_by_its_chunks_not_a_content_length_beside_them() {
    let repo = Repo::new(SIZE);
    let server = TestServer::serve(repo.path());
    let downloads = TempDir::new().unwrap();
    let f = fetcher(&[server.url()], options());
    for length in [0, SIZE as u64 / 2, 2 * SIZE as u64] {
        server.set_fault(&repo.blob_path(), Fault::ChunkedWithLength(length));
        let path = download(&f, &repo.spec(), downloads.path())
            .unwrap_or_else(|e| panic!("Content-Length {length} beside chunks: {e}"));
        assert_eq!(std::fs::read(&path).unwrap(), repo.blob);
        std::fs::remove_file(path).unwrap();
    }

    let dir = metadata_repo(b"{\"sequence\": 1}");
    let server = TestServer::serve(dir.path());
    server.set_fault("channels/", Fault::ChunkedWithLength(1 << 30));
    let f = fetcher(&[server.url()], options());
    match f.metadata("channels/stable.json", None, 1 << 20) {
        Ok(Metadata::Fetched { bytes, .. }) => assert_eq!(bytes, b"{\"sequence\": 1}"),
        other => panic!("expected the document, found {other:?}"),
    }
}

#[test]
fn declared_length_above_the_size_is_refused_before_any_byte() {
    let repo = Repo::new(SIZE);
    let server = TestServer::serve(repo.path());
    let mut longer = repo.blob.clone();
    longer.extend_from_slice(b"more");
    server.set_fault(&repo.blob_path(), Fault::Replace(longer));
    let downloads = TempDir::new().unwrap();
    let f = fetcher(&[server.url()], options());

    let err = download(&f, &repo.spec(), downloads.path()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::TooLarge, "{err}");
    assert_eq!(f.stats().bytes_received, 0);
    assert_no_completed_file(downloads.path(), &repo);
}

#[test]
fn wrong_hash_is_hash_mismatch_and_leaves_nothing() {
    let repo = Repo::new(SIZE);
    let server = TestServer::serve(repo.path());
    let mut other = repo.blob.clone();
    other[SIZE - 1] ^= 1;
    server.set_fault(&repo.blob_path(), Fault::Replace(other));
    let downloads = TempDir::new().unwrap();
    let f = fetcher(&[server.url()], options());

    let err = download(&f, &repo.spec(), downloads.path()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::HashMismatch, "{err}");
    assert!(err.message().contains(&repo.sha256), "{err}");
    assert!(!part_path(downloads.path(), &repo).exists());
    assert_no_completed_file(downloads.path(), &repo);
}

/// Bytes that are not the blob's, as a torn write or another program might leave.
fn garbage(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

#[test]
fn corrupt_part_from_an_earlier_run_is_fetched_again_within_one_call() {
    let repo = Repo::new(SIZE);
    for kept in [SIZE / 2, SIZE] {
        let server = TestServer::serve(repo.path());
        let downloads = TempDir::new().unwrap();
        std::fs::write(part_path(downloads.path(), &repo), garbage(kept)).unwrap();
        // No retries: the fresh start is part of the one attempt on this server.
        let f = fetcher(&[server.url()], options());

        let path = download(&f, &repo.spec(), downloads.path()).unwrap();
        assert_eq!(std::fs::read(path).unwrap(), repo.blob, "kept {kept}");
        assert!(!part_path(downloads.path(), &repo).exists());
        let ranges: Vec<Option<String>> = server
            .requests(&repo.blob_path())
            .into_iter()
            .map(|l| l.range)
            .collect();
        let expected = if kept < SIZE {
            vec![Some(format!("bytes={kept}-")), None]
        } else {
            vec![None]
        };
        assert_eq!(ranges, expected, "kept {kept}");
    }
}

/// A `.part` longer than the blob (a copy made by hand, a file system's junk after a
/// crash) cannot be the start of it: it is emptied and the blob fetched whole, once, with
/// no `Range`, even when its first bytes are the blob's.
#[test]
fn a_part_longer_than_the_blob_is_started_over() {
    let repo = Repo::new(SIZE);
    let server = TestServer::serve(repo.path());
    let downloads = TempDir::new().unwrap();
    let mut longer = repo.blob.clone();
    longer.extend_from_slice(b"junk after the blob");
    std::fs::write(part_path(downloads.path(), &repo), &longer).unwrap();
    let f = fetcher(&[server.url()], options());
    assert_downloads_the_blob(&f, &repo, downloads.path());
    let ranges: Vec<Option<String>> = (server.requests(&repo.blob_path()).into_iter())
        .map(|l| l.range)
        .collect();
    assert_eq!(ranges, [None]);
    assert_eq!(f.stats().bytes_received, SIZE as u64);
}

/// The error of a fresh start that fails too says what the kept bytes were, in words that
/// tell a resume (half kept, the rest fetched) from a part already whole (nothing fetched):
/// neither reads as the server's fault alone.
#[test]
fn server_sending_wrong_bytes_after_a_corrupt_part_is_still_hash_mismatch() {
    let repo = Repo::new(SIZE);
    let mut other = repo.blob.clone();
    other[0] ^= 1;
    let half = SIZE / 2;
    for (kept, note, asked) in [
        (
            half,
            format!("the download resumed after {half} bytes kept from an earlier attempt did not match; fetched again from the start: "),
            "one resume, one fresh start, then the server is given up",
        ),
        (
            SIZE,
            format!("the partial download kept from an earlier attempt ({SIZE} bytes, none fetched now) did not match; fetched again from the start: "),
            "nothing left to resume: one fresh start",
        ),
    ] {
        let server = TestServer::serve(repo.path());
        server.set_fault(&repo.blob_path(), Fault::Replace(other.clone()));
        let downloads = TempDir::new().unwrap();
        std::fs::write(part_path(downloads.path(), &repo), garbage(kept)).unwrap();
        let f = fetcher(&[server.url()], retrying(2));

        let err = download(&f, &repo.spec(), downloads.path()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::HashMismatch, "{err}");
        assert!(err.message().contains(&repo.sha256), "{err}");
        assert!(err.message().starts_with(&note), "{err}");
        let requests = server.requests(&repo.blob_path()).len();
        assert_eq!(requests, if kept < SIZE { 2 } else { 1 }, "{asked}");
        assert!(!part_path(downloads.path(), &repo).exists());
        assert_no_completed_file(downloads.path(), &repo);
    }
}

/// A 200 that replaced every kept byte (it differed from the first) and then fails its
/// hash is the server's fault alone: not fetched again from the start, and not blamed on
/// the kept bytes.
#[test]
fn a_mismatch_after_a_200_replaced_the_kept_bytes_is_not_fetched_again() {
    let repo = Repo::new(SIZE);
    let server = TestServer::serve(repo.path());
    let mut other = repo.blob.clone();
    *other.last_mut().unwrap() ^= 1;
    server.set_fault(&repo.blob_path(), Fault::ErrorPage(other));
    let downloads = TempDir::new().unwrap();
    let mut kept = repo.blob[..SIZE / 2].to_vec();
    kept[0] ^= 1;
    std::fs::write(part_path(downloads.path(), &repo), kept).unwrap();
    let f = fetcher(&[server.url()], options());

    let err = download(&f, &repo.spec(), downloads.path()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::HashMismatch, "{err}");
    assert!(!err.message().contains("kept from an earlier"), "{err}");
    assert_eq!(statuses(&server, &repo), [200]);
    assert!(!part_path(downloads.path(), &repo).exists());
}

#[test]
fn trickling_server_fails_with_slow_retrieval_within_the_bound() {
    let (bytes, every) = (64, Duration::from_millis(20));
    // A fresh download; and one over kept bytes that differ from what a server ignoring
    // `Range` sends, which are held in memory before they may replace the kept ones.
    let cases = [
        (Fault::Trickle { bytes, every }, None),
        (
            Fault::IgnoreRangeTrickle { bytes, every },
            Some(garbage(SIZE / 2)),
        ),
    ];
    for (fault, kept) in cases {
        let repo = Repo::new(SIZE);
        let server = TestServer::serve(repo.path());
        server.set_fault(&repo.blob_path(), fault.clone());
        let downloads = TempDir::new().unwrap();
        let part = part_path(downloads.path(), &repo);
        if let Some(kept) = &kept {
            std::fs::write(&part, kept).unwrap();
        }
        let (f, bound) = slow_fetcher(&server, 64 * 1024);

        let started = Instant::now();
        let err = download(&f, &repo.spec(), downloads.path()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::SlowRetrieval, "{fault:?}: {err}");
        // Generous: proves the download stops by itself, not how fast.
        assert!(
            started.elapsed() < bound * 4,
            "{fault:?}: took {:?}",
            started.elapsed()
        );
        assert_no_completed_file(downloads.path(), &repo);
        if let Some(kept) = kept {
            assert_eq!(std::fs::read(&part).unwrap(), kept, "the kept bytes stay");
        }
    }
}

/// TUF "slow retrieval" on metadata: a manifest trickling in far below the minimum speed
/// ends the fetch with `slow_retrieval`, as a blob would, not after the whole document.
#[test]
fn trickling_manifest_fails_with_slow_retrieval_within_the_bound() {
    let dir = metadata_repo(&[b' '; 1024]);
    let server = TestServer::serve(dir.path());
    server.set_fault(
        "channels/stable.json",
        Fault::Trickle {
            bytes: 4,
            every: Duration::from_millis(100),
        },
    );
    let (f, bound) = slow_fetcher(&server, 1024);

    let started = Instant::now();
    let Err(err) = f.metadata("channels/stable.json", None, 1 << 20) else {
        panic!(
            "expected slow_retrieval, found the document after {:?}",
            started.elapsed()
        );
    };
    assert_eq!(err.kind(), ErrorKind::SlowRetrieval, "{err}");
    // Generous: proves the fetch stops by itself, not how fast.
    assert!(
        started.elapsed() < bound * 4,
        "took {:?}",
        started.elapsed()
    );
    let url = format!("{}/channels/stable.json", server.url());
    for wanted in [url.as_str(), "expected at least 1024 bytes/s", "found "] {
        assert!(err.message().contains(wanted), "{wanted:?} in {err}");
    }
}

#[test]
fn silent_server_times_out() {
    let repo = Repo::new(1000);
    // Accepted by the kernel's backlog, never answered.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let downloads = TempDir::new().unwrap();
    let f = fetcher(
        &[base],
        FetchOptions {
            read_timeout: Duration::from_millis(300),
            ..options()
        },
    );
    let err = download(&f, &repo.spec(), downloads.path()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
}

#[test]
fn refused_connection_is_a_network_error() {
    let repo = Repo::new(1000);
    let refusing = support::RefusingPort::bind();
    let port = refusing.port;
    let downloads = TempDir::new().unwrap();
    let f = fetcher(&[format!("http://127.0.0.1:{port}")], options());
    let err = download(&f, &repo.spec(), downloads.path()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Network, "{err}");
}

#[test]
fn five_xx_twice_then_success() {
    let repo = Repo::new(SIZE);
    let server = TestServer::serve(repo.path());
    server.set_fault_times(&repo.blob_path(), Fault::Status(503), 2);
    let downloads = TempDir::new().unwrap();
    let f = fetcher(&[server.url()], retrying(2));

    assert_downloads_the_blob(&f, &repo, downloads.path());
    assert_eq!(statuses(&server, &repo), [503, 503, 200]);
}

#[test]
fn five_xx_beyond_the_retries_is_http_status() {
    let repo = Repo::new(1000);
    let server = TestServer::serve(repo.path());
    server.set_fault("blobs/", Fault::Status(500));
    let downloads = TempDir::new().unwrap();
    let f = fetcher(&[server.url()], retrying(2));

    let err = download(&f, &repo.spec(), downloads.path()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::HttpStatus, "{err}");
    assert!(err.message().contains("500"), "{err}");
    assert_eq!(server.requests(&repo.blob_path()).len(), 3);
}

/// 408, 425 and 429 say "not now", as a 5xx does: the base is retried after the backoff.
#[test]
fn busy_and_timeout_statuses_are_retried() {
    for status in [408, 425, 429] {
        let repo = Repo::new(1000);
        let server = TestServer::serve(repo.path());
        server.set_fault_times(&repo.blob_path(), Fault::Status(status), 1);
        let downloads = TempDir::new().unwrap();
        let f = fetcher(&[server.url()], retrying(1));
        let path = download(&f, &repo.spec(), downloads.path())
            .unwrap_or_else(|e| panic!("{status}: {e}"));
        assert_eq!(std::fs::read(path).unwrap(), repo.blob);
        assert_eq!(statuses(&server, &repo), [status, 200]);
    }
}

/// A busy server's `Retry-After` is kept when it is longer than the backoff (1 ms here).
#[test]
fn a_retry_after_is_waited_for_before_the_next_round() {
    let repo = Repo::new(SIZE);
    let server = TestServer::serve(repo.path());
    server.set_fault_times(&repo.blob_path(), Fault::Busy(503, "1".into()), 1);
    let downloads = TempDir::new().unwrap();
    let f = fetcher(&[server.url()], retrying(1));

    let started = Instant::now();
    assert_downloads_the_blob(&f, &repo, downloads.path());
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "asked again after {:?}",
        started.elapsed()
    );
    assert_eq!(statuses(&server, &repo), [503, 200]);
}

/// A base asking for more than a check ever waits between rounds (a minute) is not asked
/// again in this check; the error says what it asked for.
#[test]
fn a_retry_after_longer_than_a_check_waits_ends_that_base() {
    let repo = Repo::new(SIZE);
    let server = TestServer::serve(repo.path());
    let mirror = TestServer::serve(repo.path());
    server.set_fault("blobs/", Fault::Busy(429, "3600".into()));
    mirror.set_fault_times("blobs/", Fault::Status(503), 1);
    let downloads = TempDir::new().unwrap();

    // The mirror, busy once without asking for a wait, serves in the next round.
    let f = fetcher(&[server.url(), mirror.url()], retrying(3));
    assert_downloads_the_blob(&f, &repo, downloads.path());
    assert_eq!(statuses(&server, &repo), [429]);
    assert_eq!(statuses(&mirror, &repo), [503, 200]);

    let downloads = TempDir::new().unwrap();
    let err = download(
        &fetcher(&[server.url()], retrying(3)),
        &repo.spec(),
        downloads.path(),
    )
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::HttpStatus, "{err}");
    assert!(err.message().contains("429 (Retry-After: 3600)"), "{err}");
    assert!(
        err.message().contains("not asked again in this check"),
        "{err}"
    );
    assert_eq!(statuses(&server, &repo), [429, 429]);
}

#[test]
fn mirror_serves_when_the_server_fails_or_lacks_the_blob() {
    let repo = Repo::new(SIZE);
    let empty = TempDir::new().unwrap();
    let broken = TestServer::serve(repo.path());
    broken.set_fault("", Fault::Status(500));
    let lacking = TestServer::serve(empty.path());
    let mirror = TestServer::serve(repo.path());
    let downloads = TempDir::new().unwrap();
    let f = fetcher(&[broken.url(), lacking.url(), mirror.url()], options());

    assert_downloads_the_blob(&f, &repo, downloads.path());
    for server in [&broken, &lacking, &mirror] {
        assert_eq!(server.requests(&repo.blob_path()).len(), 1);
    }
}

#[test]
fn missing_on_every_base_is_not_found_without_retrying_them() {
    let repo = Repo::new(1000);
    let (a, b) = (TempDir::new().unwrap(), TempDir::new().unwrap());
    let (server, mirror) = (TestServer::serve(a.path()), TestServer::serve(b.path()));
    let downloads = TempDir::new().unwrap();
    let f = fetcher(&[server.url(), mirror.url()], retrying(3));

    let err = download(&f, &repo.spec(), downloads.path()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert_eq!(server.requests(&repo.blob_path()).len(), 1);
    assert_eq!(mirror.requests(&repo.blob_path()).len(), 1);
}

#[test]
fn cancel_keeps_the_part_and_a_later_call_resumes_it() {
    let repo = Repo::new(SIZE);
    let server = TestServer::serve(repo.path());
    let downloads = TempDir::new().unwrap();
    let f = fetcher(&[server.url()], options());
    let cancel = CancelToken::new();

    let result = f.download(
        &repo.spec(),
        downloads.path(),
        &mut |done, _| {
            if done >= SIZE as u64 / 4 {
                cancel.cancel();
            }
        },
        &cancel,
    );
    assert_eq!(result.unwrap_err().kind(), ErrorKind::Cancelled);
    let kept = std::fs::metadata(part_path(downloads.path(), &repo))
        .unwrap()
        .len();
    assert!(kept >= SIZE as u64 / 4 && kept < SIZE as u64, "kept {kept}");
    assert_no_completed_file(downloads.path(), &repo);

    assert_downloads_the_blob(&f, &repo, downloads.path());
    let log = server.requests(&repo.blob_path());
    assert_eq!(log.last().unwrap().range, Some(format!("bytes={kept}-")));
}

#[test]
fn a_verified_file_already_there_needs_no_request_and_a_corrupt_one_is_replaced() {
    let repo = Repo::new(1000);
    let server = TestServer::serve(repo.path());
    let downloads = TempDir::new().unwrap();
    let f = fetcher(&[server.url()], options());
    let done = downloads.path().join(&repo.sha256);

    std::fs::write(&done, &repo.blob).unwrap();
    assert_eq!(download(&f, &repo.spec(), downloads.path()).unwrap(), done);
    assert_eq!(f.stats().requests, 0);

    std::fs::write(&done, b"corrupt").unwrap();
    download(&f, &repo.spec(), downloads.path()).unwrap();
    assert_eq!(std::fs::read(&done).unwrap(), repo.blob);
    assert_eq!(f.stats().requests, 1);
}

#[test]
fn absolute_url_overrides_the_bases() {
    let repo = Repo::new(1000);
    let server = TestServer::serve(repo.path());
    let downloads = TempDir::new().unwrap();
    let f = fetcher(&["http://127.0.0.1:9/nothing-here".to_owned()], options());
    let spec = BlobSpec {
        url: Some(format!("{}/{}", server.url(), repo.blob_path())),
        ..repo.spec()
    };
    download(&f, &spec, downloads.path()).unwrap();
    assert_eq!(server.requests(&repo.blob_path()).len(), 1);
}

#[test]
fn file_transport_serves_plain_paths_and_file_urls_and_resumes() {
    let repo = Repo::new(SIZE);
    let plain = repo.path().display().to_string();
    let file_url = format!("file://{plain}");
    for base in [plain, file_url] {
        let downloads = TempDir::new().unwrap();
        keep_first_half(downloads.path(), &repo);
        let f = fetcher(std::slice::from_ref(&base), options());
        let path = download(&f, &repo.spec(), downloads.path()).unwrap();
        assert_eq!(std::fs::read(path).unwrap(), repo.blob, "{base}");
        assert_eq!(f.stats().bytes_received, SIZE as u64 / 2, "{base} resumed");
    }
}

#[test]
fn file_transport_missing_blob_is_not_found() {
    let repo = Repo::new(1000);
    let empty = TempDir::new().unwrap();
    let downloads = TempDir::new().unwrap();
    let f = fetcher(&[format!("file://{}", empty.path().display())], options());
    let err = download(&f, &repo.spec(), downloads.path()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
}

/// A FIFO where a document should be (on a stick, say) is refused by its type before it
/// is opened: opening one with no writer would wait for a writer forever.
#[test]
fn file_transport_refuses_a_fifo_without_waiting_for_a_writer() {
    let dir = TempDir::new().unwrap();
    std::fs::create_dir_all(dir.path().join("channels")).unwrap();
    let fifo = dir.path().join("channels/stable.json");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let f = fetcher(&[dir.path().display().to_string()], options());
    let err = f.metadata("channels/stable.json", None, 4096).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
}

/// `err` is the `io` error of a local copy of 400 bytes of a 1,000-byte blob, naming both
/// sizes and no HTTP request.
fn assert_short_copy(err: &evergreen::Error) {
    assert_eq!(err.kind(), ErrorKind::Io, "{err}");
    let message = err.to_string();
    assert!(
        message.contains("expected the whole blob (1000 bytes), found a file of 400 bytes"),
        "{message}"
    );
    assert!(!message.contains("GET"), "{message}");
}

/// A local blob file of another size than the signed one (a copy to a USB stick cut short)
/// is an `io` error that says so; no GET or HTTP status was involved.
#[test]
fn file_transport_short_blob_is_an_io_error_naming_both_sizes_and_the_next_base_is_tried() {
    let repo = Repo::new(1000);
    std::fs::write(repo.path().join(repo.blob_path()), &repo.blob[..400]).unwrap();
    let downloads = TempDir::new().unwrap();
    let f = fetcher(&[repo.path().display().to_string()], options());
    let err = download(&f, &repo.spec(), downloads.path()).unwrap_err();
    assert_short_copy(&err);

    // A short copy ends its base only: the mirror after it serves the blob.
    let whole = Repo::new(1000);
    let server = TestServer::serve(whole.path());
    let f = fetcher(
        &[repo.path().display().to_string(), server.url()],
        options(),
    );
    let path = download(&f, &whole.spec(), downloads.path()).unwrap();
    assert_eq!(std::fs::read(path).unwrap(), whole.blob);
}

/// A copy cut short at or before the bytes a `.part` already holds cannot serve the rest
/// (the range is refused): a local file is the same `io` error naming both sizes as when it
/// is read whole, and an HTTP base's 416 says what was asked and what the copy has. Each
/// ends its base only, and the `.part` stays for the next.
#[test]
fn a_copy_shorter_than_the_part_is_named_with_both_sizes() {
    let repo = Repo::new(1000);
    std::fs::write(repo.path().join(repo.blob_path()), &repo.blob[..400]).unwrap();
    let downloads = TempDir::new().unwrap();
    let part = keep_first_half(downloads.path(), &repo);
    let f = fetcher(&[repo.path().display().to_string()], options());
    let err = download(&f, &repo.spec(), downloads.path()).unwrap_err();
    assert_short_copy(&err);
    assert_eq!(std::fs::read(&part).unwrap(), repo.blob[..500]);

    let server = TestServer::serve(repo.path());
    let err = download(
        &fetcher(&[server.url()], options()),
        &repo.spec(),
        downloads.path(),
    )
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::HttpStatus, "{err}");
    assert!(
        err.to_string().contains(
            "expected 206 with bytes 500-999 of the 1000-byte blob, found 416 Range Not Satisfiable (the copy there has 400 bytes)"
        ),
        "{err}"
    );
    assert_eq!(std::fs::read(&part).unwrap(), repo.blob[..500]);
}

/// A `file://` URL is read as RFC 8089 has it: the scheme in any case, `%XX` decoded,
/// and only an empty host or `localhost`; anything else must not become a relative path.
#[test]
fn file_urls_in_any_case_and_percent_encoded_are_opened() {
    let repo = Repo::new(1000);
    let downloads = TempDir::new().unwrap();
    let upper = format!("FILE://{}", repo.path().display());
    let host = format!("file://LocalHost{}", repo.path().display());
    for base in [upper, host] {
        let f = fetcher(std::slice::from_ref(&base), options());
        let path =
            download(&f, &repo.spec(), downloads.path()).unwrap_or_else(|e| panic!("{base}: {e}"));
        assert_eq!(std::fs::read(&path).unwrap(), repo.blob);
        std::fs::remove_file(path).unwrap();
    }

    let stick = TempDir::new().unwrap();
    let root = stick.path().join("USB DISK");
    std::fs::create_dir_all(root.join("blobs/sha256")).unwrap();
    std::fs::write(root.join(repo.blob_path()), &repo.blob).unwrap();
    let base = format!("file://{}/USB%20DISK", stick.path().display());
    let path = download(&fetcher(&[base], options()), &repo.spec(), downloads.path()).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), repo.blob);
    std::fs::remove_file(path).unwrap();

    // `localhostX` is another host, not `localhost` and the relative path `X/…`.
    let cwd = std::env::current_dir().unwrap();
    let relative = TempDir::new_in(&cwd).unwrap();
    std::fs::create_dir_all(relative.path().join("blobs/sha256")).unwrap();
    std::fs::write(relative.path().join(repo.blob_path()), &repo.blob).unwrap();
    let name = relative.path().file_name().unwrap().to_str().unwrap();
    let base = format!("file://localhost{name}");
    let err = download(
        &fetcher(std::slice::from_ref(&base), options()),
        &repo.spec(),
        downloads.path(),
    )
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
    assert!(err.message().contains(&base), "{err}");
}

/// Only the download directory's failures are `io`; a local base that cannot be read (a
/// file where the directory should be, no permission, a failing stick) is retried and
/// the other bases are tried, as for a server that does not answer.
#[test]
fn an_unreadable_local_base_goes_on_to_the_next_base() {
    let repo = Repo::new(1000);
    std::fs::create_dir_all(repo.path().join("channels")).unwrap();
    std::fs::write(repo.path().join("channels/stable.json"), b"{}").unwrap();
    let server = TestServer::serve(repo.path());
    let junk = TempDir::new().unwrap();
    let not_a_dir = junk.path().join("usb");
    std::fs::write(&not_a_dir, b"x").unwrap();
    let local = not_a_dir.display().to_string();
    let downloads = TempDir::new().unwrap();
    let f = fetcher(&[local.clone(), server.url()], options());

    assert_downloads_the_blob(&f, &repo, downloads.path());
    let got = f.metadata("channels/stable.json", None, 1 << 20).unwrap();
    assert!(matches!(got, Metadata::Fetched { bytes, .. } if bytes == b"{}"));

    let alone = fetcher(std::slice::from_ref(&local), options());
    let err = alone
        .metadata("channels/stable.json", None, 1 << 20)
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Network, "{err}");
    assert!(err.message().contains(&local), "{err}");
}

#[test]
fn a_directory_where_the_blob_should_be_is_not_found() {
    let repo = Repo::new(1000);
    let base = TempDir::new().unwrap();
    std::fs::create_dir_all(base.path().join(repo.blob_path())).unwrap();
    let downloads = TempDir::new().unwrap();
    let f = fetcher(&[base.path().display().to_string()], retrying(2));
    let err = download(&f, &repo.spec(), downloads.path()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
}

/// A stalled body is a timeout that says how long it waited.
#[test]
fn a_stalled_body_names_the_read_timeout() {
    use std::io::{Read, Write};
    let repo = Repo::new(1000);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let head = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n".to_vec();
    let first = repo.blob[..10].to_vec();
    let server = std::thread::spawn(move || {
        let mut socket = accept_within(&listener, Duration::from_secs(10));
        socket
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut buf = [0u8; 4096];
        let _ = socket.read(&mut buf);
        socket.write_all(&head).unwrap();
        socket.write_all(&first).unwrap();
        // Silent until the client gives up and closes (or 10 s pass: the test then fails
        // on the client's side, never hangs).
        let _ = socket.read(&mut buf);
    });
    let downloads = TempDir::new().unwrap();
    let f = fetcher(
        &[base],
        FetchOptions {
            read_timeout: Duration::from_secs(1),
            ..options()
        },
    );
    let err = download(&f, &repo.spec(), downloads.path()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert!(
        err.message().contains("no data for 1 s (read timeout)"),
        "{err}"
    );
    drop(f);
    server.join().unwrap();
}

/// The first connection to `listener`, waited for at most `limit`.
fn accept_within(listener: &std::net::TcpListener, limit: Duration) -> std::net::TcpStream {
    listener.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + limit;
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false).unwrap();
                return stream;
            }
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => panic!("expected a connection within {limit:?}, found none: {e}"),
        }
    }
}

fn metadata_repo(doc: &[u8]) -> TempDir {
    let dir = TempDir::new().unwrap();
    std::fs::create_dir_all(dir.path().join("channels")).unwrap();
    std::fs::write(dir.path().join("channels/stable.json"), doc).unwrap();
    dir
}

/// An entity tag of kilobytes is not kept: sent back with every later poll (and saved in
/// the state), it would make each unchanged check that large. The next poll asks without
/// one; a tag of a normal size is kept.
#[test]
fn a_long_etag_is_not_kept_for_the_next_poll() {
    let dir = metadata_repo(b"{\"sequence\": 1}");
    let server = TestServer::serve(dir.path());
    let f = fetcher(&[server.url()], options());
    server.set_fault("channels/", Fault::LongEtag(60 * 1024));
    let Metadata::Fetched { etag, .. } = f.metadata("channels/stable.json", None, 1 << 20).unwrap()
    else {
        panic!("expected the document");
    };
    assert_eq!(etag, None);
    server.set_fault(
        "channels/",
        Fault::LongEtag(evergreen::fetch::MAX_ETAG_BYTES),
    );
    let Metadata::Fetched { etag, .. } = f.metadata("channels/stable.json", None, 1 << 20).unwrap()
    else {
        panic!("expected the document");
    };
    assert_eq!(
        etag.map(|e| e.len()),
        Some(evergreen::fetch::MAX_ETAG_BYTES)
    );
}

#[test]
fn metadata_with_the_returned_etag_is_not_modified() {
    let dir = metadata_repo(b"{\"sequence\": 1}");
    let server = TestServer::serve(dir.path());
    let f = fetcher(&[server.url()], options());

    let Metadata::Fetched { bytes, etag } =
        f.metadata("channels/stable.json", None, 1 << 20).unwrap()
    else {
        panic!("expected the document");
    };
    assert_eq!(bytes, b"{\"sequence\": 1}");
    let etag = etag.expect("an ETag");
    let again = f
        .metadata("channels/stable.json", Some(&etag), 1 << 20)
        .unwrap();
    assert_eq!(again, Metadata::NotModified);
    let log = server.requests("channels/stable.json");
    assert_eq!(log[1].if_none_match.as_deref(), Some(etag.as_str()));
    assert_eq!(log[1].status, 304);

    std::fs::write(
        dir.path().join("channels/stable.json"),
        b"{\"sequence\": 2}",
    )
    .unwrap();
    let changed = f
        .metadata("channels/stable.json", Some(&etag), 1 << 20)
        .unwrap();
    assert!(matches!(changed, Metadata::Fetched { bytes, .. } if bytes == b"{\"sequence\": 2}"));
}

#[test]
fn metadata_larger_than_the_cap_is_too_large() {
    let doc = vec![b'x'; 4096];
    let dir = metadata_repo(&doc);
    let server = TestServer::serve(dir.path());
    let f = fetcher(&[server.url()], options());

    let err = f.metadata("channels/stable.json", None, 4095).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::TooLarge, "declared: {err}");

    server.set_fault("channels/", Fault::AppendJunk(1 << 20));
    let err = f.metadata("channels/stable.json", None, 8192).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::TooLarge, "undeclared: {err}");
    assert!(f.stats().bytes_received <= 8193);
}

/// Trailers that never end keep one read of a chunked body busy for good, where neither
/// the read timeout (data keeps coming) nor the speed check (it runs between reads) can
/// reach it. A blob stops at its size and never reads them; metadata, read to its end,
/// has a deadline for the whole body: the speed window plus its cap at the minimum speed.
#[test]
fn endless_chunked_trailers_end_a_metadata_read_on_time_and_never_touch_a_blob() {
    let repo = Repo::new(SIZE);
    let doc = b"{\"sequence\": 1}".to_vec();
    std::fs::create_dir_all(repo.path().join("channels")).unwrap();
    std::fs::write(repo.path().join("channels/stable.json"), &doc).unwrap();
    let server = TestServer::serve(repo.path());
    server.set_fault("channels/", Fault::EndlessTrailers);
    server.set_fault(&repo.blob_path(), Fault::EndlessTrailers);
    let f = fetcher(
        &[server.url()],
        FetchOptions {
            min_speed_bytes_per_s: 4096,
            speed_window: Duration::from_secs(1),
            read_timeout: Duration::from_secs(1),
            ..options()
        },
    );
    let started = std::time::Instant::now();
    let err = f.metadata("channels/stable.json", None, 4096).unwrap_err();
    // 1 s window + 1 s read timeout + 4096 B at 4096 B/s = 3 s, one try (retries: 0).
    assert_body_deadline_of_3_s(started, Duration::from_secs(20), &err);

    let downloads = TempDir::new().unwrap();
    let path = download(&f, &repo.spec(), downloads.path()).unwrap();
    assert_eq!(std::fs::read(path).unwrap(), repo.blob);
}

/// A resume answered with the whole blob (a server that ignores `Range`), at a speed the
/// speed rule allows, finishes: the body's deadline is the whole blob's, not the bytes
/// the `.part` still missed.
#[test]
fn a_resume_answered_with_the_whole_blob_at_an_allowed_speed_finishes() {
    let repo = Repo::new(SIZE);
    let server = TestServer::serve(repo.path());
    server.set_fault(
        &repo.blob_path(),
        Fault::IgnoreRangeTrickle {
            bytes: 32 << 10,
            every: Duration::from_millis(100),
        },
    );
    let downloads = TempDir::new().unwrap();
    std::fs::write(
        part_path(downloads.path(), &repo),
        &repo.blob[..SIZE / 16 * 15],
    )
    .unwrap();
    let f = fetcher(
        &[server.url()],
        FetchOptions {
            min_speed_bytes_per_s: 100 << 10,
            speed_window: Duration::from_secs(1),
            read_timeout: Duration::from_secs(1),
            ..retrying(2)
        },
    );
    assert_downloads_the_blob(&f, &repo, downloads.path());
    assert_eq!(statuses(&server, &repo), [200], "one request");
}

/// A base URL may carry credentials (sent as Basic auth); no error names the password:
/// errors go on to events, logs and the CLI's stderr.
#[test]
fn errors_never_show_the_password_of_a_base_url() {
    let repo = Repo::new(SIZE);
    let server = TestServer::serve(repo.path());
    server.set_fault("", Fault::Status(503));
    let base = server.url().replacen("http://", "http://alice:s3cret@", 1);
    let f = fetcher(&[base], options());
    let downloads = TempDir::new().unwrap();
    let errors = [
        f.metadata("channels/stable.json", None, 4096).unwrap_err(),
        download(&f, &repo.spec(), downloads.path()).unwrap_err(),
    ];
    for err in errors {
        assert_eq!(err.kind(), ErrorKind::HttpStatus, "{err}");
        assert!(
            err.message().contains("http://alice:***@127.0.0.1:"),
            "{err}"
        );
        assert!(!err.to_string().contains("s3cret"), "{err}");
    }
}

/// A chunk's size line dripped a byte at a time keeps one read of a blob's body busy
/// without a byte of data, out of reach of the speed check and the cancel made between
/// reads: the body's deadline (speed window + read timeout + the blob at the minimum
/// speed) ends it, as `timeout`.
#[test]
fn a_dripped_chunk_size_line_ends_a_blob_download_on_time() {
    let repo = Repo::new(SIZE);
    let server = TestServer::serve(repo.path());
    server.set_fault(&repo.blob_path(), Fault::DrippedChunkSize);
    let f = fetcher(
        &[server.url()],
        FetchOptions {
            min_speed_bytes_per_s: SIZE as u64,
            speed_window: Duration::from_secs(1),
            read_timeout: Duration::from_secs(1),
            ..options()
        },
    );
    let downloads = TempDir::new().unwrap();
    let started = Instant::now();
    let err = download(&f, &repo.spec(), downloads.path()).unwrap_err();
    // 1 s window + 1 s read timeout + the blob at its size per second = 3 s, one try.
    assert_body_deadline_of_3_s(started, Duration::from_secs(8), &err);
}

/// `err` is the body deadline of 3 s, met within `limit` of `started`.
fn assert_body_deadline_of_3_s(started: Instant, limit: Duration, err: &Error) {
    assert!(started.elapsed() < limit, "took {:?}", started.elapsed());
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert!(
        err.message().contains("no end of the body within 3 s"),
        "{err}"
    );
}

/// An answer that is no valid HTTP (here a negative `Content-Length`) is the server's
/// fault and the same on every try: `http_status`, and that base is not asked again in
/// the later rounds, where a network error would be retried.
#[test]
fn a_malformed_response_is_http_status_and_not_retried() {
    use std::io::{Read as _, Write as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let served = std::thread::spawn(move || {
        listener.set_nonblocking(true).unwrap();
        let mut answered = 0;
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            match listener.accept() {
                Ok((mut stream, _)) => {
                    stream.set_nonblocking(false).unwrap();
                    let mut request = [0u8; 1024];
                    let _ = stream.read(&mut request);
                    let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n{}");
                    answered += 1;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        answered
    });
    let f = fetcher(
        &[base],
        FetchOptions {
            retries: 2,
            ..options()
        },
    );
    let err = f.metadata("channels/stable.json", None, 4096).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::HttpStatus, "{err}");
    assert_eq!(
        served.join().unwrap(),
        1,
        "the malformed base was asked again"
    );
}

#[test]
fn metadata_missing_everywhere_is_not_found() {
    let dir = metadata_repo(b"{}");
    let server = TestServer::serve(dir.path());
    let f = fetcher(&[server.url(), dir.path().display().to_string()], options());
    let err = f.metadata("root/2.json", None, 1 << 20).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
}

#[test]
fn metadata_served_by_a_replacement_body_is_returned_as_is() {
    let dir = metadata_repo(b"new");
    let server = TestServer::serve(dir.path());
    server.set_fault("channels/stable.json", Fault::Replace(b"old".to_vec()));
    let f = fetcher(&[server.url()], options());
    let got = f.metadata("channels/stable.json", None, 1 << 20).unwrap();
    assert!(matches!(got, Metadata::Fetched { bytes, .. } if bytes == b"old"));
}

#[test]
fn redirect_is_an_http_status_error_naming_the_location_unless_followed() {
    let repo = Repo::new(1000);
    let server = TestServer::serve(repo.path());
    let mirror = TestServer::serve(repo.path());
    let location = format!("{}/{}", mirror.url(), repo.blob_path());
    server.set_fault("blobs/", Fault::Redirect(location.clone()));
    let downloads = TempDir::new().unwrap();

    let f = fetcher(&[server.url()], options());
    let err = download(&f, &repo.spec(), downloads.path()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::HttpStatus, "{err}");
    assert!(
        err.message().contains("302") && err.message().contains(&location),
        "{err}"
    );
    assert!(mirror.requests(&repo.blob_path()).is_empty());

    let follows = FetchOptions {
        follow_redirects: true,
        ..options()
    };
    download(
        &fetcher(&[server.url()], follows),
        &repo.spec(),
        downloads.path(),
    )
    .unwrap();
    assert_eq!(mirror.requests(&repo.blob_path()).len(), 1);
}

/// A fetcher that follows redirects, of a server that redirects every request under
/// `path`'s first directory to a mirror of the same files misbehaving with `fault`; the
/// servers, and how an error must name where the answer came from.
fn behind_a_redirect(
    root: &Path,
    path: &str,
    fault: Fault,
) -> (TestServer, TestServer, Fetcher, String) {
    let server = TestServer::serve(root);
    let mirror = TestServer::serve(root);
    let asked = format!("{}/{path}", server.url());
    let served = format!("{}/{path}", mirror.url());
    let under = format!("{}/", path.split('/').next().unwrap());
    server.set_fault(&under, Fault::Redirect(served.clone()));
    mirror.set_fault(&under, fault);
    let follows = FetchOptions {
        follow_redirects: true,
        ..options()
    };
    let fetcher = fetcher(&[server.url()], follows);
    (
        server,
        mirror,
        fetcher,
        format!("{served} (redirected from {asked})"),
    )
}

/// Whatever goes wrong with the answer a redirect led to (bytes that fail their hash, a
/// body cut short, an error status, a 404, an error page served as 200) names the URL
/// that sent it and the one asked for: the mirror or CDN node to look at, not the origin
/// that only redirected.
#[test]
fn what_goes_wrong_after_a_redirect_names_the_url_that_answered() {
    for (fault, kind) in [
        (Fault::Replace(garbage(1000)), ErrorKind::HashMismatch),
        (Fault::DropAfter(500), ErrorKind::Network),
        (Fault::Status(500), ErrorKind::HttpStatus),
        (Fault::Status(404), ErrorKind::NotFound),
        (
            Fault::ErrorPage(b"<h1>not found</h1>".to_vec()),
            ErrorKind::HttpStatus,
        ),
    ] {
        let repo = Repo::new(1000);
        let (_server, _mirror, fetcher, shown) =
            behind_a_redirect(repo.path(), &repo.blob_path(), fault.clone());
        let downloads = TempDir::new().unwrap();

        let err = download(&fetcher, &repo.spec(), downloads.path()).unwrap_err();
        assert_eq!(err.kind(), kind, "{fault:?}: {err}");
        assert!(err.message().contains(&shown), "{fault:?}: {err}");
        assert_no_completed_file(downloads.path(), &repo);
    }
}

/// A root or a manifest behind a redirect names the server that answered too, when that
/// answer is an error status or a body cut short.
#[test]
fn metadata_after_a_redirect_names_the_url_that_answered() {
    for (fault, kind) in [
        (Fault::Status(500), ErrorKind::HttpStatus),
        (Fault::DropAfter(10), ErrorKind::Network),
    ] {
        let dir = metadata_repo(&[b' '; 1024]);
        let (_server, _mirror, fetcher, shown) =
            behind_a_redirect(dir.path(), "channels/stable.json", fault.clone());
        let err = fetcher
            .metadata("channels/stable.json", None, 1 << 20)
            .unwrap_err();
        assert_eq!(err.kind(), kind, "{fault:?}: {err}");
        assert!(err.message().contains(&shown), "{fault:?}: {err}");
    }
}

/// A redirect to something that cannot be requested is the redirecting server's fault,
/// not the configuration's: the next base is tried, and the error names the Location.
#[test]
fn a_redirect_that_cannot_be_followed_goes_on_to_the_next_base() {
    let repo = Repo::new(1000);
    let server = TestServer::serve(repo.path());
    let mirror = TestServer::serve(repo.path());
    let follows = FetchOptions {
        follow_redirects: true,
        ..options()
    };
    for location in ["ftp://127.0.0.1/x", "file:///etc/passwd", "http:///nohost"] {
        server.clear_faults();
        server.set_fault("blobs/", Fault::Redirect(location.into()));
        let downloads = TempDir::new().unwrap();
        let err = download(
            &fetcher(&[server.url()], follows.clone()),
            &repo.spec(),
            downloads.path(),
        )
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::HttpStatus, "{location}: {err}");
        assert!(err.message().contains(location), "{err}");

        let before = mirror.requests(&repo.blob_path()).len();
        let f = fetcher(&[server.url(), mirror.url()], follows.clone());
        download(&f, &repo.spec(), downloads.path()).unwrap_or_else(|e| panic!("{location}: {e}"));
        assert_eq!(mirror.requests(&repo.blob_path()).len(), before + 1);
    }
}

/// A redirect loop is the server's: `http_status` naming the last Location, without
/// retry rounds.
#[test]
fn too_many_redirects_is_http_status_without_retries() {
    let repo = Repo::new(1000);
    let server = TestServer::serve(repo.path());
    let location = format!("{}/{}", server.url(), repo.blob_path());
    server.set_fault("blobs/", Fault::Redirect(location.clone()));
    let downloads = TempDir::new().unwrap();
    let f = fetcher(
        &[server.url()],
        FetchOptions {
            follow_redirects: true,
            retries: 2,
            ..options()
        },
    );
    let err = download(&f, &repo.spec(), downloads.path()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::HttpStatus, "{err}");
    assert!(err.message().contains(&location), "{err}");
    assert_eq!(
        server.requests(&repo.blob_path()).len(),
        6,
        "1 + 5 redirects"
    );
}

/// A host transport serving one blob from memory, as a vendor SDK or a bus might.
struct Memory {
    blob: Vec<u8>,
}

impl Transport for Memory {
    fn get(&self, url: &str, req: &Request) -> evergreen::Result<Response> {
        assert!(url.starts_with("vendor://"), "{url}");
        let from = req.range_from.unwrap_or(0) as usize;
        let body = std::io::Cursor::new(self.blob.clone());
        let mut res = Response::new(200, Box::new(body));
        res.content_length = Some((self.blob.len() - from) as u64);
        Ok(res)
    }
}

#[test]
fn a_host_transport_gets_the_same_verification() {
    let repo = Repo::new(SIZE);
    let downloads = TempDir::new().unwrap();
    let good = Memory {
        blob: repo.blob.clone(),
    };
    let f = Fetcher::with_transport(vec!["vendor://box".into()], options(), Box::new(good));
    assert_downloads_the_blob(&f, &repo, downloads.path());

    let other = TempDir::new().unwrap();
    let bad = Memory {
        blob: vec![0; SIZE],
    };
    let f = Fetcher::with_transport(vec!["vendor://box".into()], options(), Box::new(bad));
    let err = download(&f, &repo.spec(), other.path()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::HashMismatch, "{err}");
}

/// The root walk asks for `root/<v+1>.json` and ends at a 404. A mirror that is down must
/// not turn the server's 404 into a failed check (after every retry round).
#[test]
fn metadata_missing_on_the_server_is_not_found_even_when_a_mirror_is_down() {
    let empty = TempDir::new().unwrap();
    let (server, mirror) = (
        TestServer::serve(empty.path()),
        TestServer::serve(empty.path()),
    );
    mirror.set_fault("", Fault::Status(503));
    let f = fetcher(&[server.url(), mirror.url()], retrying(3));
    let err = f.metadata("root/2.json", None, 1 << 20).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert!(err.message().contains("found 404 there"), "{err}");
    assert_eq!(mirror.requests("root/2.json").len(), 1, "no retry rounds");
}

/// But a mirror's 404 is not the answer: mirrors lag, and a stale one must not end the
/// walk before a rotation that the server, failing for a moment, has. Nor is a 304 to a
/// request that sent no `If-None-Match`.
#[test]
fn a_mirrors_404_or_unasked_304_does_not_answer_for_a_failing_server() {
    let repo = TempDir::new().unwrap();
    std::fs::create_dir_all(repo.path().join("root")).unwrap();
    std::fs::write(repo.path().join("root/2.json"), b"{}").unwrap();
    let stale = TempDir::new().unwrap();
    let server = TestServer::serve(repo.path());
    let (lagging, unasked) = (
        TestServer::serve(stale.path()),
        TestServer::serve(stale.path()),
    );
    unasked.set_fault("", Fault::Status(304));
    server.set_fault_times("root/", Fault::Status(503), 1);
    let f = fetcher(&[server.url(), lagging.url(), unasked.url()], retrying(2));
    // Round one: 503, 404, 304; round two: the server answers.
    match f.metadata("root/2.json", None, 1 << 20).unwrap() {
        Metadata::Fetched { bytes, .. } => assert_eq!(bytes, b"{}"),
        Metadata::NotModified => panic!("a 304 nobody asked for was taken as an answer"),
    }
    assert_eq!(server.requests("root/2.json").len(), 2);
}

/// `metadata_checked` passes over a copy its check refuses: the server's 404 is then the
/// answer, and a base that serves only such a copy gives the check's error, naming it.
#[test]
fn metadata_a_check_refuses_is_passed_over_for_the_next_base() {
    let (repo, empty) = (TempDir::new().unwrap(), TempDir::new().unwrap());
    std::fs::create_dir_all(repo.path().join("root")).unwrap();
    std::fs::write(repo.path().join("root/2.json"), b"good").unwrap();
    let mut refuse_bad = |bytes: &[u8]| {
        if bytes == b"good" {
            Ok(())
        } else {
            Err(evergreen::Error::new(ErrorKind::Signature, "not signed"))
        }
    };
    let (server, soft, mirror) = (
        TestServer::serve(empty.path()),
        TestServer::serve(empty.path()),
        TestServer::serve(repo.path()),
    );
    soft.set_fault("", Fault::ErrorPage(b"<html>".to_vec()));
    let f = fetcher(&[server.url(), soft.url()], retrying(2));
    let err = f
        .metadata_checked("root/2.json", None, 1 << 20, &mut refuse_bad)
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");

    // With a mirror after it that has a copy which passes, that copy is the answer.
    let f = fetcher(&[soft.url(), mirror.url()], retrying(0));
    match f
        .metadata_checked("root/2.json", None, 1 << 20, &mut refuse_bad)
        .unwrap()
    {
        Metadata::Fetched { bytes, .. } => assert_eq!(bytes, b"good"),
        Metadata::NotModified => panic!("no ETag was sent"),
    }

    // Alone, the refused copy's error is the result, with the URL that served it.
    let f = fetcher(&[soft.url()], retrying(0));
    let err = f
        .metadata_checked("root/2.json", None, 1 << 20, &mut refuse_bad)
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Signature, "{err}");
    assert!(err.message().contains(&soft.url()), "{err}");
}

/// The error of a download that found its file system full: `io`, naming the room needed.
fn assert_disk_full(err: evergreen::Error) {
    assert_eq!(err.kind(), ErrorKind::Io, "{err}");
    assert!(
        err.message().contains(&format!(
            "expected room for the {SIZE} bytes of the download, found the file system full after"
        )),
        "{err}"
    );
}

/// What every free-space check leaves free on top of what it writes (1 MiB, as the README
/// and docs/design.md say).
const RESERVE: u64 = 1 << 20;

/// Serves a repository directory as `file://` does, but once `fill_after` bytes of a body
/// have been read, fills the file system at `full` to its last byte, as another writer
/// (a runaway log) would while the download runs: the free-space check before it found
/// room. With `ignore_range`, a resume is answered with the whole blob (200).
struct FilledMeanwhile {
    full: PathBuf,
    fill_after: u64,
    ignore_range: bool,
}

impl Transport for FilledMeanwhile {
    fn get(&self, url: &str, req: &Request) -> Result<Response> {
        let req = Request {
            range_from: req.range_from.filter(|_| !self.ignore_range),
            ..req.clone()
        };
        let mut response = evergreen::fetch::FileTransport.get(url, &req)?;
        response.body = Box::new(FillingBody {
            body: response.body,
            full: Some(self.full.clone()),
            left: self.fill_after,
        });
        Ok(response)
    }
}

struct FillingBody {
    body: Box<dyn std::io::Read + Send>,
    full: Option<PathBuf>,
    left: u64,
}

impl std::io::Read for FillingBody {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            if let Some(dir) = self.full.take() {
                mounts::fill(&dir);
            }
        }
        let max = match self.full {
            Some(_) => buf.len().min(self.left as usize),
            None => buf.len(),
        };
        let n = self.body.read(&mut buf[..max])?;
        self.left -= (n as u64).min(self.left);
        Ok(n)
    }
}

/// The free bytes of the file system at `path`, as `df` says for a user without privileges.
fn free_bytes(path: &Path) -> u64 {
    // glibc's own `statvfs` fails on a 32-bit target for counts past 32 bits.
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    use libc::statvfs;
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    use libc::statvfs64 as statvfs;
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let mut st: statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { statvfs(c.as_ptr(), &mut st) }, 0);
    st.f_bavail as u64 * st.f_frsize as u64
}

/// A download its file system has no room for is refused before a byte of it is written or
/// asked for: `io`, naming the room needed (the blob and the reserve) and the room found.
/// Filling the file system to its last byte first, as it did, took the room of everything
/// else on it (the app's logs, a database) until the failure.
#[test]
fn a_download_the_file_system_has_no_room_for_is_refused_before_a_byte_is_written() {
    let repo = Repo::new(SIZE);
    let dir = TempDir::new().unwrap();
    let small = dir.path().join("small");
    let Some(_fs) = Mounted::tmpfs(&small, 512) else {
        return;
    };
    let (err, free) = refused_for_room(&repo, &small);
    let downloads = small.join("downloads");
    let expected = format!(
        "downloading {}: expected room for {} bytes in {}, found {free} bytes free (the {SIZE} bytes of the download still to fetch, and {RESERVE} kept free so the state can still be saved); nothing was written: free space and update again",
        part_path(&downloads, &repo).display(),
        SIZE as u64 + RESERVE,
        downloads.display(),
    );
    assert_eq!(err.message(), expected);
}

/// Downloads `repo`'s blob into `small/downloads`, which must be refused for room (`io`)
/// before the blob is asked for, a `.part` made or a byte of the file system taken.
/// Returns the error and the bytes that were free.
fn refused_for_room(repo: &Repo, small: &Path) -> (evergreen::Error, u64) {
    let downloads = small.join("downloads");
    std::fs::create_dir(&downloads).unwrap();
    let free = free_bytes(small);
    let server = TestServer::serve(repo.path());
    let f = fetcher(&[server.url()], options());
    let err = download(&f, &repo.spec(), &downloads).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Io, "{err}");
    assert!(
        server.requests(&repo.blob_path()).is_empty(),
        "the blob was asked for"
    );
    assert!(!part_path(&downloads, repo).exists(), "a .part was created");
    assert_eq!(free_bytes(small), free);
    (err, free)
}

/// The same on a file system one of whose counts does not fit in 32 bits: here a tmpfs
/// with room for more than 2^32 inodes; a disk of more than 2^32 blocks, or a network
/// share whose server reports such counts, is another. A 32-bit build that asks with a
/// 32-bit `statvfs` gets `EOVERFLOW` there, took the file system for one that reports no
/// size, and filled it to its last byte.
#[test]
fn a_download_is_refused_for_room_on_a_file_system_whose_counts_need_64_bits() {
    let repo = Repo::new(SIZE);
    let dir = TempDir::new().unwrap();
    let small = dir.path().join("small");
    let tmpfs_options = "size=512k,nr_inodes=5000000000";
    let args = ["-t", "tmpfs", "-o", tmpfs_options, "tmpfs"].map(std::ffi::OsStr::new);
    let needs = "mount with permission to mount a tmpfs of 5,000,000,000 inodes (root)";
    let Some(_fs) = Mounted::new(&args, &small, needs) else {
        return;
    };
    let (err, free) = refused_for_room(&repo, &small);
    assert!(
        err.message().contains(&format!(
            "expected room for {} bytes in {}, found {free} bytes free",
            SIZE as u64 + RESERVE,
            small.join("downloads").display(),
        )),
        "{err}"
    );
}

/// A `.part` kept from an earlier attempt is room already taken: a resume needs room only
/// for the bytes it lacks. Here the whole blob and the reserve would not fit beside the
/// kept half, and the rest does; a refusal names the kept bytes.
#[test]
fn a_resumed_download_needs_room_only_for_the_bytes_it_lacks() {
    let repo = Repo::new(SIZE);
    let dir = TempDir::new().unwrap();
    let small = dir.path().join("small");
    // 2.25 MiB: 1.75 MiB free beside the kept half, for its other half and the reserve.
    let Some(_fs) = Mounted::tmpfs(&small, 2304) else {
        return;
    };
    let downloads = small.join("downloads");
    std::fs::create_dir(&downloads).unwrap();
    keep_first_half(&downloads, &repo);
    let free = free_bytes(&small);
    assert!(
        free < SIZE as u64 + RESERVE && free >= SIZE as u64 / 2 + RESERVE,
        "{free}"
    );
    let server = TestServer::serve(repo.path());
    let f = fetcher(&[server.url()], options());
    assert_downloads_the_blob(&f, &repo, &downloads);
    assert_eq!(statuses(&server, &repo), [206]);

    // With a little less room, refused naming what is kept.
    std::fs::remove_file(downloads.join(&repo.sha256)).unwrap();
    keep_first_half(&downloads, &repo);
    std::fs::write(small.join("log"), vec![b'x'; 512 << 10]).unwrap();
    let err = download(&f, &repo.spec(), &downloads).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Io, "{err}");
    let rest = SIZE / 2;
    assert!(
        err.message().contains(&format!(
            "expected room for {} bytes in {}, found {} bytes free (the {rest} bytes of the download still to fetch, {rest} of its {SIZE} bytes kept from an earlier attempt, and {RESERVE} kept free",
            rest as u64 + RESERVE,
            downloads.display(),
            free_bytes(&small),
        )),
        "{err}"
    );
    assert_eq!(
        statuses(&server, &repo),
        [206],
        "the blob was asked for again"
    );
    assert_eq!(
        std::fs::metadata(part_path(&downloads, &repo))
            .unwrap()
            .len(),
        rest as u64,
        "the kept bytes were touched"
    );
}

/// A download that fills its file system all the same (another writer took the room after
/// the check) fails naming the room it needed, and removes its `.part`: kept, it would hold
/// the space the state needs, and every later check and startup step would fail to save it
/// until someone deleted the file by hand.
#[test]
fn a_download_that_fills_the_disk_says_so_and_leaves_the_room_it_took() {
    let repo = Repo::new(SIZE);
    let dir = TempDir::new().unwrap();
    let small = dir.path().join("small");
    // Room for the blob and the reserve, which the check asks for.
    let Some(_fs) = Mounted::tmpfs(&small, 3 * 1024) else {
        return;
    };
    let downloads = small.join("downloads");
    std::fs::create_dir(&downloads).unwrap();
    let filled = FilledMeanwhile {
        full: small.clone(),
        fill_after: 256 << 10,
        ignore_range: false,
    };
    let base = repo.path().display().to_string();
    let f = Fetcher::with_transport(vec![base], options(), Box::new(filled));
    assert_disk_full(download(&f, &repo.spec(), &downloads).unwrap_err());
    assert!(!part_path(&downloads, &repo).exists(), "the .part was kept");
    assert_no_completed_file(&downloads, &repo);
    // The room the download took is there again: the state of a device could be saved.
    std::fs::write(downloads.join("state.json"), vec![b'x'; 200 * 1024]).unwrap();
}

/// The same when the file system fills as a 200 replaces kept bytes that differ: the body
/// held in memory is longer than the kept bytes it replaces, and writing it over them can
/// find no room. The `.part` goes as it does when a plain write fills the disk.
#[test]
fn replacing_kept_bytes_on_a_full_disk_says_so_and_leaves_the_room_it_took() {
    let repo = Repo::new(SIZE);
    let dir = TempDir::new().unwrap();
    let small = dir.path().join("small");
    let Some(_fs) = Mounted::tmpfs(&small, 3 * 1024) else {
        return;
    };
    let downloads = small.join("downloads");
    std::fs::create_dir(&downloads).unwrap();
    let part = part_path(&downloads, &repo);
    std::fs::write(&part, vec![0u8; 64 * 1024]).unwrap();
    let filled = FilledMeanwhile {
        full: small.clone(),
        fill_after: 0,
        ignore_range: true,
    };
    let base = repo.path().display().to_string();
    let f = Fetcher::with_transport(vec![base], options(), Box::new(filled));
    assert_disk_full(download(&f, &repo.spec(), &downloads).unwrap_err());
    assert!(!part.exists(), "the .part was kept");
    assert_no_completed_file(&downloads, &repo);
}

/// Nor is a mirror's 404 the answer when the server fails in a way no retry round asks
/// it again: with no retries configured (5xx), or with a status that drops it (401). The
/// walk takes a `not_found` as the end of the root chain, so a stale (or hostile) mirror
/// would hide a rotation the server has, the revocation of a stolen key with it.
#[test]
fn a_mirrors_404_does_not_answer_for_a_server_that_failed_in_the_last_round() {
    let repo = TempDir::new().unwrap();
    std::fs::create_dir_all(repo.path().join("root")).unwrap();
    std::fs::write(repo.path().join("root/2.json"), b"{}").unwrap();
    let stale = TempDir::new().unwrap();
    for (status, retries) in [(503, 0), (401, 2)] {
        let (server, lagging) = (
            TestServer::serve(repo.path()),
            TestServer::serve(stale.path()),
        );
        server.set_fault("root/", Fault::Status(status));
        let f = fetcher(&[server.url(), lagging.url()], retrying(retries));
        let err = f.metadata("root/2.json", None, 1 << 20).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::HttpStatus, "{status}: {err}");
        assert!(
            err.message()
                .contains(&format!("found HTTP status {status}")),
            "{err}"
        );
    }
}
