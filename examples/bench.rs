//! The performance benchmark of DESIGN §12: every target, side by side with the plain
//! tools (or the bare computation) measured in the same run, medians of at least 5 runs.
//!
//! ```text
//! cargo run --release --example bench            # the real sizes (512 MiB zip, 1 GiB blob)
//! cargo run --release --example bench -- --quick # small sizes, to check that it works
//! cargo run --release --example bench -- --only "blob download"   # one step
//! cargo run --release --example bench -- --disk /var/tmp          # + the full update on a disk
//! ```
//!
//! Steps: full update, blob download, peak RSS, unchanged check, one of ten, manifest,
//! startup, cdylib.
//!
//! The fixtures live on /dev/shm when it has room (else the system temp dir), so the
//! download, the slots and the baseline's output share one file system. nginx serves them
//! on loopback when it is installed; else the in-process test server does, for both sides.
//! The table is printed in Markdown, for docs/benchmarks.md. The command exits non-zero
//! when a row could not be measured because its step failed (a missing tool or nightly
//! is a skip, not a failure), so `--quick` in the test command keeps the benchmark working.
//! Ctrl-C or SIGTERM stops nginx and the tools it runs, removes the scratch directory,
//! says so and exits 130.

#[path = "bench/fixtures.rs"]
mod fixtures;
#[path = "common/interrupt.rs"]
mod interrupt;
#[path = "bench/rng.rs"]
mod rng;
#[path = "bench/rows.rs"]
mod rows;
#[path = "bench/server.rs"]
mod server;
#[path = "bench/table.rs"]
mod table;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// One part of the benchmark: its rows.
type Step = fn(&rows::Ctx) -> Vec<table::Row>;

const USAGE: &str =
    "usage: bench [--quick] [--runs N] [--only STEP]... [--scratch DIR] [--disk DIR]\n\
    --scratch DIR: where the files go (default /dev/shm when it has room, else the temp \
    dir); on a disk the full update pays for its sync, which tmpfs makes free\n\
    --disk DIR: also run the full update with the device's files and the plain tools' \
    output under DIR (a disk), the repository staying where --scratch put it\n\
    steps: full update, blob download, peak RSS, unchanged check, one of ten, manifest, \
    startup, cdylib";

/// What the command line asks for.
struct Options {
    quick: bool,
    runs: usize,
    /// The steps to run; all when empty.
    only: Vec<String>,
    /// Where the files go, when not where [`scratch_parent`] would put them.
    scratch: Option<PathBuf>,
    /// Where the second full update writes, when asked for.
    disk: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // Hidden subcommands: the child processes of the peak-RSS row.
    let child = match args.first().map(String::as_str) {
        Some("__update") => Some(rows::child_update(Path::new(
            args.get(1).map_or("", String::as_str),
        ))),
        Some("__idle") => Some(rows::child_idle()),
        Some("__fetch") => Some(rows::child_fetch(&args[1..])),
        _ => None,
    };
    if let Some(result) = child {
        return match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        };
    }
    interrupt::install("bench");
    let result = parse(&args).and_then(run);
    interrupt::settle();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn parse(args: &[String]) -> Result<Options, String> {
    let mut options = Options {
        quick: false,
        runs: 5,
        only: Vec::new(),
        scratch: None,
        disk: None,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => options.quick = true,
            "--runs" => {
                options.runs = it
                    .next()
                    .and_then(|n| n.parse().ok())
                    .filter(|n| *n >= 1)
                    .ok_or(USAGE)?
            }
            "--only" => options.only.push(it.next().ok_or(USAGE)?.clone()),
            "--scratch" => options.scratch = Some(it.next().ok_or(USAGE)?.into()),
            "--disk" => options.disk = Some(it.next().ok_or(USAGE)?.into()),
            _ => return Err(USAGE.into()),
        }
    }
    Ok(options)
}

fn run(options: Options) -> Result<(), String> {
    let Options {
        quick,
        runs,
        only,
        scratch,
        disk,
    } = options;
    let steps: [(&str, Step); 8] = [
        ("full update", rows::full_updates),
        ("blob download", |c| vec![rows::blob_download(c)]),
        ("peak RSS", |c| vec![rows::peak_rss(c)]),
        ("unchanged check", |c| vec![rows::unchanged_check(c)]),
        ("one of ten", |c| vec![rows::one_of_ten(c)]),
        ("manifest", |c| vec![rows::manifest_verify(c)]),
        ("startup", rows::startup),
        ("cdylib", rows::cdylib),
    ];
    if let Some(unknown) = only.iter().find(|o| !steps.iter().any(|(n, _)| n == o)) {
        return Err(format!("no step {unknown:?}\n{USAGE}"));
    }
    let sizes = rows::Sizes::new(quick);
    // The zip and the blob, their copies in the repo, a download, an extracted slot and the
    // baseline's output at the same time.
    let needed = 3 * sizes.zip + 2 * sizes.blob + 2 * sizes.small + 4 * sizes.zip;
    let (parent, fs_name) = match scratch {
        Some(dir) => {
            let name = fs_type(&dir);
            (dir, name)
        }
        None => scratch_parent(needed),
    };
    let work = scratch_dir(&parent)?;
    let disk = match disk {
        Some(dir) => Some(scratch_dir(&dir)?),
        None => None,
    };
    let fixture = fixtures::Fixture::new(work.path()).map_err(rows::err)?;
    let server = server::Server::start(fixture.repo.path(), work.path());
    let mut ctx = rows::Ctx {
        quick,
        runs,
        work: work.path().to_owned(),
        sizes,
        fixture,
        server,
        blobs: BTreeMap::new(),
        zip_files: 0,
        disk: disk
            .as_ref()
            .map(|d| (d.path().to_owned(), fs_type(d.path()))),
    };
    eprintln!(
        "publishing the fixtures in {} ({fs_name})",
        parent.display()
    );
    rows::publish_all(&mut ctx)?;
    // Other work on the machine slows both sides, but threads more than single processes.
    let load_before = load_average();
    let mut table = Vec::new();
    for (name, step) in steps {
        if !only.is_empty() && !only.iter().any(|o| o == name) {
            continue;
        }
        eprintln!("measuring: {name}");
        table.extend(step(&ctx));
        // A step that failed because an interrupt stopped nginx prints no row.
        interrupt::settle();
    }
    println!(
        "\nEvergreen benchmark{}: medians of {runs} runs; server: {}; files on {} ({fs_name}); \
         load average before {load_before}, after {}\n",
        if quick { " (--quick sizes)" } else { "" },
        ctx.server.name(),
        parent.display(),
        load_average()
    );
    table::print(&table);
    match table.iter().filter(|r| r.failed).count() {
        0 => Ok(()),
        n => Err(format!("{n} row(s) could not be measured (see the table)")),
    }
}

/// The 1-minute load average, as /proc/loadavg gives it.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "unknown".into())
}

/// A new directory of the benchmark's under `parent`, removed when dropped or on an
/// interrupt; 0755, so the nginx worker (another user) can read the repository in it.
fn scratch_dir(parent: &Path) -> Result<tempfile::TempDir, String> {
    let dir = tempfile::Builder::new()
        .prefix("evergreen-bench-")
        .tempdir_in(parent)
        .map_err(|e| format!("creating a directory in {}: {e}", parent.display()))?;
    interrupt::remove_on_interrupt(dir.path());
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
        .map_err(rows::err)?;
    Ok(dir)
}

/// /dev/shm when it has `needed` bytes free, else the system temp dir; with its file
/// system's name.
fn scratch_parent(needed: u64) -> (PathBuf, String) {
    let shm = Path::new("/dev/shm");
    if free_bytes(shm).is_some_and(|free| free >= needed) {
        return (shm.to_owned(), fs_type(shm));
    }
    let tmp = std::env::temp_dir();
    let name = fs_type(&tmp);
    (tmp, name)
}

/// Free bytes of the file system holding `path`, from `df` (no libc in this crate).
fn free_bytes(path: &Path) -> Option<u64> {
    let out = std::process::Command::new("df")
        .args(["-B1", "--output=avail"])
        .arg(path)
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)?
        .trim()
        .parse()
        .ok()
}

/// The type of the file system holding `path`: `findmnt`'s name for it (`stat -f` calls
/// ext4 "ext2/ext3", as the three share a magic number), else `stat`'s.
fn fs_type(path: &Path) -> String {
    let ask = |program: &str, args: &[&str]| {
        std::process::Command::new(program)
            .args(args)
            .arg(path)
            .output()
            .ok()
            .filter(|o| o.status.success())
            // A path under stacked mounts gets a line for each; the last is the one seen.
            .and_then(|o| {
                Some(
                    String::from_utf8_lossy(&o.stdout)
                        .lines()
                        .last()?
                        .trim()
                        .to_string(),
                )
            })
            .filter(|s| !s.is_empty())
    };
    ask("findmnt", &["-n", "-o", "FSTYPE", "--target"])
        .or_else(|| ask("stat", &["-f", "-c", "%T"]))
        .unwrap_or_else(|| "unknown file system".into())
}
