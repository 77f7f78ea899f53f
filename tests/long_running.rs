//! A host that links the library keeps one process, and one `Updater`, for weeks: every
//! check, download, install, activation, confirmation and rollback it makes, failed,
//! cancelled and retried ones too, must give back what it took. This suite drives one
//! updater through many rounds of them in one process over loopback HTTP and counts, from
//! one round to the next, the process's open descriptors and threads, the files under the
//! state directory and the slots, and the heap the process holds.
//!
//! One test only: every test of a binary shares its descriptors, threads and heap.

mod common;
mod require;
mod support;

use common::{make_zip, Device, Repo};
use evergreen::fetch::CancelToken;
use evergreen::{Check, ErrorKind, Offer, Updater};
use semver::Version;
use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering};
use support::{Fault, TestServer};

/// The system allocator, counting the bytes allocated and not yet freed.
struct Counting;

/// Bytes allocated and not yet freed, by every thread of the process.
static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call goes to the system allocator with the caller's arguments; the count
// is all that is added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's layout, as `GlobalAlloc::alloc` requires it.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` with `layout` (every allocation goes
        // through this allocator).
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as for `dealloc`, with the caller's new size.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_add(
                new_size as isize - layout.size() as isize,
                Ordering::Relaxed,
            );
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// What the process holds between two rounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Held {
    fds: usize,
    threads: usize,
    /// Files and directories under the state directory and the slot root.
    files: usize,
}

fn entries(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, Iterator::count)
}

/// Every entry under `dir`, directories included, not following symlinks.
fn tree_size(dir: &Path) -> usize {
    let mut n = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            n += 1;
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            }
        }
    }
    n
}

fn held(dev: &Device) -> Held {
    Held {
        fds: entries(Path::new("/proc/self/fd")),
        threads: entries(Path::new("/proc/self/task")),
        files: tree_size(&dev.state) + tree_size(&dev.root),
    }
}

/// The resident set size in KiB (`VmRSS`), for the report.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// What the process holds once the threads the server and ureq start for a request are
/// gone: a server's handler ends shortly after its client read the answer, ureq's name
/// lookup thread after the lookup. Waits (5 s at most) for `want`, or without one for the
/// same count ten times in a row, then returns what it found.
fn settled(dev: &Device, want: Option<Held>) -> Held {
    let mut last = held(dev);
    let mut same = 0;
    for _ in 0..250 {
        match want {
            Some(want) if last == want => break,
            None if same == 10 => break,
            _ => {}
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
        let now = held(dev);
        same = if now == last { same + 1 } else { 0 };
        last = now;
    }
    last
}

/// An app release of `version` of about 256 KiB: enough for a download to be cut midway.
fn app_zip(dir: &Path, version: &str) -> std::path::PathBuf {
    let path = dir.join(format!("app-{version}.zip"));
    let seed = version.bytes().fold(7u64, |h, b| h * 31 + u64::from(b));
    let noise = support::noise(256 * 1024, seed);
    make_zip(
        &path,
        &[
            ("VERSION", version.as_bytes()),
            ("run.sh", b"#!/bin/sh\necho app\n"),
            ("data.bin", &noise),
        ],
    );
    path
}

/// The offer of exactly `version` (a pin: older ones too, and one that failed here).
fn pinned(up: &Updater, version: &Version) -> Offer {
    match up.check_with(None, Some(version)).unwrap() {
        Check::Available(offer) => up.plan(&offer).unwrap(),
        other => panic!("expected {version} offered, found {other:?}"),
    }
}

fn download(up: &Updater, plan: &Offer) -> evergreen::Result<()> {
    up.download(plan, &mut |_, _| {}, &CancelToken::new())
}

/// Installs and activates a downloaded `plan`, and counts the trial's first start.
fn install_and_start(up: &Updater, plan: &Offer) {
    up.install(plan).unwrap();
    up.activate(true).unwrap();
    up.startup().unwrap();
}

/// What the progress callback that panics panics with.
const CALLBACK_PANIC: &str = "a host's progress callback";

/// Set by the updater's event callback when an operation waits for another one's lock.
static WAITING: AtomicBool = AtomicBool::new(false);

/// The repository a round is played against: its server, the blobs it serves, the two
/// releases and a copy of the channel manifest with a bad signature.
struct Served<'a> {
    server: &'a TestServer,
    blobs: &'a Path,
    versions: [&'a Version; 2],
    tampered: &'a [u8],
}

impl Served<'_> {
    /// Makes the server answer every blob with as many wrong bytes.
    fn corrupt_blobs(&self) {
        for blob in std::fs::read_dir(self.blobs).unwrap() {
            let blob = blob.unwrap();
            let len = blob.metadata().unwrap().len() as usize;
            let path = format!("blobs/sha256/{}", blob.file_name().to_str().unwrap());
            self.server
                .set_fault(&path, Fault::Replace(support::noise(len, 3)));
        }
    }
}

/// Downloads `plan` while another thread's download of it waits for its turn and is
/// cancelled there.
fn download_while_another_waits(up: &Updater, plan: &Offer) {
    let (turn_taken, taken) = std::sync::mpsc::channel();
    let cancel = CancelToken::new();
    std::thread::scope(|s| {
        let its_cancel = cancel.clone();
        let waiting = s.spawn(move || {
            taken.recv().unwrap();
            up.download(plan, &mut |_, _| {}, &its_cancel)
        });
        let mut first = Some(turn_taken);
        let mut progress = |_, _| {
            if let Some(taken) = first.take() {
                taken.send(()).unwrap();
                // Until the other waits for the work lock this download holds (60 s at
                // most: the other's cancel then ends its call all the same).
                for _ in 0..6000 {
                    if WAITING.swap(false, Ordering::SeqCst) {
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                cancel.cancel();
            }
        };
        up.download(plan, &mut progress, &CancelToken::new())
            .unwrap();
        let err = waiting.join().unwrap().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Cancelled, "{err}");
    });
}

/// One round of what a host does over days: unchanged checks, checks that fail (a 503
/// from the server, then a refused connection to the mirror; a manifest with a bad
/// signature), downloads cut midway, refused for their hash, cancelled (one while it
/// waits for another's turn) and stopped by a progress callback that panics, each retried
/// until it passes, two updates confirmed and one rolled back. It ends on the version it
/// started on.
fn round(up: &Updater, served: &Served) {
    let Served {
        server,
        versions: [here, there],
        ..
    } = *served;
    let kind = |r: evergreen::Result<Check>| r.unwrap_err().kind();

    // Unchanged checks: the manifest answered 304.
    for _ in 0..2 {
        up.check().unwrap();
    }
    let statuses = server.requests("channels/stable.json");
    assert_eq!(statuses.last().map(|l| l.status), Some(304));
    up.status().unwrap();
    up.next_check().unwrap();

    // Failed checks. The server's 503, then the mirror out of reach: the check says
    // the last.
    server.set_fault("channels/", Fault::Status(503));
    assert_eq!(kind(up.check()), ErrorKind::Network);
    server.clear_faults();
    server.set_fault("channels/", Fault::Replace(served.tampered.to_vec()));
    assert_eq!(kind(up.check()), ErrorKind::Signature);
    server.clear_faults();

    // There: a download cut midway (by the server, then the mirror out of reach),
    // resumed while another download waits and is cancelled.
    let plan = pinned(up, there);
    server.set_fault("blobs/", Fault::DropAfter(100 * 1024));
    assert_eq!(download(up, &plan).unwrap_err().kind(), ErrorKind::Network);
    server.clear_faults();
    download_while_another_waits(up, &plan);
    install_and_start(up, &plan);
    up.confirm().unwrap();

    // Back here, rolled back: wrong bytes (then the mirror out of reach), a cancel, a
    // progress callback that panics.
    let plan = pinned(up, here);
    served.corrupt_blobs();
    assert_eq!(download(up, &plan).unwrap_err().kind(), ErrorKind::Network);
    server.clear_faults();
    let cancel = CancelToken::new();
    let err = up.download(&plan, &mut |_, _| cancel.cancel(), &cancel);
    assert_eq!(err.unwrap_err().kind(), ErrorKind::Cancelled);
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let panics = &mut |_, _| std::panic::panic_any(CALLBACK_PANIC);
        up.download(&plan, panics, &CancelToken::new())
    }));
    assert!(panicked.is_err());
    download(up, &plan).unwrap();
    install_and_start(up, &plan);
    up.rollback().unwrap();
    // The app restarts into the slot rolled back to.
    up.startup().unwrap();

    // Back here for good, while another thread reads the status.
    let plan = pinned(up, here);
    std::thread::scope(|s| {
        s.spawn(|| up.status().unwrap());
        download(up, &plan).unwrap();
    });
    install_and_start(up, &plan);
    up.confirm().unwrap();
}

/// A host's process that runs the updater round after round holds as many descriptors
/// and threads after the last round as after the first, as many files in the state
/// directory and the slots, and at most 4 KiB more heap: nothing a call takes, failed,
/// cancelled or panicked out of, stays behind.
#[test]
fn a_long_running_host_holds_no_more_after_many_rounds() {
    const WARM_UP: usize = 3;
    const ROUNDS: usize = 40;
    let repo = Repo::new("com.acme.longrun");
    let src = repo.scratch("src");
    let versions = [Version::new(1, 0, 0), Version::new(2, 0, 0)];
    for v in &versions {
        let zip = app_zip(&src, &v.to_string());
        repo.release(
            "stable",
            &v.to_string(),
            "x86_64-linux",
            &[("app", &zip)],
            &[],
        );
    }
    let manifest = std::fs::read(repo.root.join("channels/stable.json")).unwrap();
    let mut tampered = manifest.clone();
    let at = tampered.len() / 2;
    tampered[at] ^= 1;
    let server = TestServer::serve(&repo.root);
    // A mirror that refuses every connection: each failed request tries it too.
    let refusing = support::RefusingPort::bind();
    let refused = refusing.port;
    let dev = repo.device(
        "dev",
        &server.url(),
        serde_json::json!({
            "mirrors": [format!("http://127.0.0.1:{refused}")],
            "limits": {"retries": 1, "retry_backoff_ms": 1},
        }),
    );
    let config = evergreen::Config::from_file(&dev.config).unwrap();
    let up = Updater::builder(config)
        .on_event(|e| {
            if let evergreen::Event::Waiting { .. } = e {
                WAITING.store(true, Ordering::SeqCst);
            }
        })
        .build()
        .unwrap();
    // The first release, installed and confirmed.
    let plan = pinned(&up, &versions[0]);
    download(&up, &plan).unwrap();
    install_and_start(&up, &plan);
    up.confirm().unwrap();
    // The callback's panic, each round, in silence; any other panic as always.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if info.payload().downcast_ref::<&str>() != Some(&CALLBACK_PANIC) {
            default_hook(info);
        }
    }));

    let served = Served {
        server: &server,
        blobs: &repo.root.join("blobs/sha256"),
        versions: [&versions[0], &versions[1]],
        tampered: &tampered,
    };
    for _ in 0..WARM_UP {
        round(&up, &served);
    }
    server.clear_log();
    let start = settled(&dev, None);
    let (heap_start, rss_start) = (LIVE.load(Ordering::SeqCst), rss_kib());
    for _ in 0..ROUNDS {
        round(&up, &served);
    }
    server.clear_log();
    let end = settled(&dev, Some(start));
    let (heap_end, rss_end) = (LIVE.load(Ordering::SeqCst), rss_kib());
    let _ = std::panic::take_hook();
    eprintln!(
        "after {WARM_UP} rounds: {start:?}, heap {heap_start} B, VmRSS {rss_start} KiB; \
         after {ROUNDS} more: {end:?}, heap {heap_end} B, VmRSS {rss_end} KiB"
    );
    assert_eq!(end, start, "held after {ROUNDS} more rounds");
    let grown = heap_end - heap_start;
    assert!(
        grown < 4 * 1024,
        "expected the heap to stay within 4 KiB over {ROUNDS} rounds, found it {grown} B larger"
    );
}
