//! One function per row of DESIGN §12, each measuring Evergreen and its baseline in the
//! same run.

use super::fixtures::{self, Fixture, Rng};
use super::interrupt;
use super::server::{find_on_path, Proxy, Server};
use super::table::{bytes, median, secs, time_runs, Row};
use evergreen::fetch::{BlobSpec, CancelToken, FetchOptions, Fetcher};
use evergreen::manifest::{
    self, Artifact, ArtifactKind, Component, Expect, Freshness, Manifest, Release, TargetRelease,
};
use evergreen::trust::{self, KeySet, SecretKey};
use evergreen::{Check, Config, Event, NameMap, Timestamp, Updater};
use sha2::{Digest, Sha256, Sha512};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Instant;

const MIB: u64 = 1 << 20;

/// Sizes of the fixtures: the real ones, or small ones for `--quick`.
pub struct Sizes {
    pub zip: u64,
    pub blob: u64,
    pub small: u64,
    pub component: u64,
}

impl Sizes {
    pub fn new(quick: bool) -> Sizes {
        if quick {
            Sizes {
                zip: 32 * MIB,
                blob: 64 * MIB,
                small: 16 * MIB,
                component: 256 << 10,
            }
        } else {
            Sizes {
                zip: 512 * MIB,
                blob: 1024 * MIB,
                small: 128 * MIB,
                component: 4 * MIB,
            }
        }
    }
}

/// Everything the rows share.
pub struct Ctx {
    pub quick: bool,
    pub runs: usize,
    pub work: PathBuf,
    pub sizes: Sizes,
    pub fixture: Fixture,
    pub server: Server,
    /// The hashes of the published big artifacts, by channel.
    pub blobs: BTreeMap<&'static str, String>,
    pub zip_files: u64,
    /// `--disk`: a directory for the second full update, and its file system's name.
    pub disk: Option<(PathBuf, String)>,
}

pub fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// Publishes every scenario's channel.
pub fn publish_all(ctx: &mut Ctx) -> Result<(), String> {
    let src = ctx.work.join("src");
    std::fs::create_dir_all(&src).map_err(err)?;
    let zip = src.join("app.zip");
    let info = fixtures::build_zip(&zip, ctx.sizes.zip, 1).map_err(err)?;
    eprintln!(
        "zip: {} files, {} compressed, {} installed",
        info.files,
        bytes(info.size as f64),
        bytes(info.installed as f64)
    );
    ctx.zip_files = info.files;
    let sha = publish_one(ctx, "zip", "app", &zip, ArtifactKind::Zip)?;
    ctx.blobs.insert("zip", sha);
    for (channel, len, seed) in [
        ("large", ctx.sizes.blob, 2),
        ("small", ctx.sizes.small, 3),
        ("tiny", 1024, 4),
    ] {
        let path = src.join(format!("{channel}.bin"));
        fixtures::random_file(&path, len, seed).map_err(err)?;
        let sha = publish_one(ctx, channel, "data", &path, ArtifactKind::File)?;
        ctx.blobs.insert(channel, sha);
    }
    publish_ten(ctx, "1.0.0", None)?;
    std::fs::remove_dir_all(&src).map_err(err)
}

fn publish_one(
    ctx: &Ctx,
    channel: &str,
    name: &str,
    path: &Path,
    kind: ArtifactKind,
) -> Result<String, String> {
    ctx.fixture
        .publish(channel, "1.0.0", &[(name, path, kind)])
        .map_err(err)?;
    let sha = sha256_of(path)?;
    std::fs::remove_file(path).map_err(err)?;
    Ok(sha)
}

fn sha256_of(path: &Path) -> Result<String, String> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).map_err(err)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match file.read(&mut buf).map_err(err)? {
            0 => return Ok(trust::hex(&hasher.finalize())),
            n => hasher.update(&buf[..n]),
        }
    }
}

/// Ten components of `sizes.component` bytes; `changed` gets new bytes.
fn publish_ten(ctx: &Ctx, version: &str, changed: Option<usize>) -> Result<(), String> {
    let dir = ctx.work.join("ten-src");
    std::fs::create_dir_all(&dir).map_err(err)?;
    let paths: Vec<(String, PathBuf)> = (0..10)
        .map(|i| (format!("c{i}"), dir.join(format!("c{i}.bin"))))
        .collect();
    for (i, (_, path)) in paths.iter().enumerate() {
        let seed = if changed == Some(i) {
            1000 + i
        } else {
            100 + i
        };
        fixtures::random_file(path, ctx.sizes.component, seed as u64).map_err(err)?;
    }
    let components: Vec<(&str, &Path, ArtifactKind)> = paths
        .iter()
        .map(|(n, p)| (n.as_str(), p.as_path(), ArtifactKind::File))
        .collect();
    ctx.fixture
        .publish("ten", version, &components)
        .map_err(err)?;
    std::fs::remove_dir_all(&dir).map_err(err)
}

/// Time of each phase of one update.
pub struct Phases {
    pub check: f64,
    pub download: f64,
    pub install: f64,
}

/// check → plan → download → install → activate, as a host would run it.
pub fn update(config: &Path) -> Result<Phases, String> {
    let t = Instant::now();
    let updater = Updater::builder(Config::from_file(config).map_err(err)?)
        .build()
        .map_err(err)?;
    let Check::Available(offer) = updater.check().map_err(err)? else {
        return Err("expected an update, found the device up to date".into());
    };
    let plan = updater.plan(&offer).map_err(err)?;
    let check = t.elapsed().as_secs_f64();
    let t = Instant::now();
    updater
        .download(&plan, &mut |_, _| {}, &CancelToken::new())
        .map_err(err)?;
    let download = t.elapsed().as_secs_f64();
    let t = Instant::now();
    updater.install(&plan).map_err(err)?;
    updater.activate(true).map_err(err)?;
    Ok(Phases {
        check,
        download,
        install: t.elapsed().as_secs_f64(),
    })
}

/// Starts the slot on trial and marks it good, as the new version would once healthy
/// (a trial that has not started cannot be confirmed).
fn confirm(config: &Path) -> Result<(), String> {
    let updater = Updater::builder(Config::from_file(config).map_err(err)?)
        .build()
        .map_err(err)?;
    updater
        .startup()
        .and_then(|_| updater.confirm())
        .map_err(err)
}

fn run_tool(program: &str, args: &[&str]) -> Result<(), String> {
    run_command(Command::new(program).args(args), program, args)
}

fn run_command(command: &mut Command, program: &str, args: &[&str]) -> Result<(), String> {
    let status = interrupt::status(command.stdout(Stdio::null()), program)
        .map_err(|e| format!("{program}: {e}"))?;
    status
        .success()
        .then_some(())
        .ok_or_else(|| format!("{program} {args:?}: {status}"))
}

/// The variables `cargo run` sets for the program it runs (the package's manifest and
/// metadata), beside `CARGO`, which names the cargo to use and is kept.
const CARGO_RUN_VARIABLES: [&str; 8] = [
    "CARGO_MANIFEST_DIR",
    "CARGO_MANIFEST_PATH",
    "CARGO_MANIFEST_LINKS",
    "CARGO_CRATE_NAME",
    "CARGO_BIN_NAME",
    "CARGO_PRIMARY_PACKAGE",
    "CARGO_TARGET_TMPDIR",
    "OUT_DIR",
];

/// `program` (cargo, or a script that runs it) without the variables `cargo run` set
/// for this process. Build scripts watch some of them (ring's asks to be re-run when
/// `CARGO_MANIFEST_DIR` or `CARGO_PKG_NAME` changes), so a build that inherited them
/// rebuilt ring, rustls and evergreen, and the next plain `cargo run` rebuilt them back:
/// some 40 s each way on every run of the benchmark.
pub fn cargo_command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut command = Command::new(program);
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if CARGO_RUN_VARIABLES.contains(&name.as_ref()) || name.starts_with("CARGO_PKG_") {
            command.env_remove(name.as_ref());
        }
    }
    command
}

/// The full update where the other rows write, and again on `--disk` when given.
pub fn full_updates(ctx: &Ctx) -> Vec<Row> {
    let mut rows = vec![full_update(ctx, &ctx.work, None)];
    if let Some((dir, fs)) = &ctx.disk {
        rows.push(full_update(ctx, dir, Some(fs)));
    }
    rows
}

/// The full update with the device's files and the baseline's output under `place`;
/// `disk` names its file system when it is not the other rows'.
fn full_update(ctx: &Ctx, place: &Path, disk: Option<&str>) -> Row {
    let on = disk.map_or(String::new(), |fs| format!(", on {fs}"));
    let what = format!(
        "full update, {} zip of {} files (download, verify, install, synced){on}",
        bytes(ctx.sizes.zip as f64),
        ctx.zip_files
    );
    let mut row = Row::new(what, "≤ 0.5× curl + openssl + unzip");
    let dev = place.join("dev-zip");
    let mut phases = Vec::new();
    let ours = time_runs(
        ctx.runs,
        || ctx.fixture.device(&dev, &ctx.server.url(), "zip"),
        |config| {
            phases.push(update(&config)?);
            Ok(())
        },
    );
    let _ = std::fs::remove_dir_all(&dev);
    let ours = match ours {
        Ok(s) => median(&s),
        Err(e) => return Row::failed(row.what, row.target, e),
    };
    row.measured = secs(ours);
    let part = |f: fn(&Phases) -> f64| secs(median(&phases.iter().map(f).collect::<Vec<_>>()));
    let breakdown = format!(
        "check {}, download+verify {}, install+sync {}",
        part(|p| p.check),
        part(|p| p.download),
        part(|p| p.install)
    );
    match baseline_tools(ctx, place) {
        Ok((base, missing)) => {
            let ratio = ours / base;
            row.baseline = format!("{} ({ratio:.2}×)", secs(base));
            row.pass = Some(ratio <= 0.5 && missing.is_empty());
            row.note = if missing.is_empty() {
                breakdown
            } else {
                format!("{breakdown}; baseline without {}", missing.join(", "))
            };
        }
        Err(e) => row.note = format!("{breakdown}; baseline failed: {e}"),
    }
    row
}

/// `curl -o` + `openssl dgst -sha256` + `unzip`, one after the other, writing under
/// `place`; returns the median and the tools that are not installed.
fn baseline_tools(ctx: &Ctx, place: &Path) -> Result<(f64, Vec<&'static str>), String> {
    let missing: Vec<&str> = ["curl", "openssl", "unzip"]
        .into_iter()
        .filter(|t| find_on_path(t).is_none())
        .collect();
    let out = place.join("baseline");
    let zip = out.join("app.zip");
    let x = out.join("x");
    let url = format!("{}/blobs/sha256/{}", ctx.server.url(), ctx.blobs["zip"]);
    let has = |t: &str| !missing.contains(&t);
    let samples = time_runs(
        ctx.runs,
        || {
            let _ = std::fs::remove_dir_all(&out);
            let _ = std::fs::create_dir_all(&out);
            // Without curl the zip comes from the repository directly (not timed).
            if !has("curl") {
                let blob = ctx
                    .fixture
                    .repo
                    .path()
                    .join("blobs/sha256")
                    .join(&ctx.blobs["zip"]);
                let _ = std::fs::copy(blob, &zip);
            }
        },
        |()| {
            let (zip, x) = (zip.to_str().unwrap_or(""), x.to_str().unwrap_or(""));
            if has("curl") {
                run_tool("curl", &["-s", "-f", "-o", zip, &url])?;
            }
            if has("openssl") {
                run_tool("openssl", &["dgst", "-sha256", zip])?;
            }
            if has("unzip") {
                run_tool("unzip", &["-q", zip, "-d", x])?;
            }
            Ok(())
        },
    )?;
    let _ = std::fs::remove_dir_all(&out);
    Ok((median(&samples), missing))
}

pub fn blob_download(ctx: &Ctx) -> Row {
    let size = ctx.sizes.blob;
    let mut row = Row::new(
        format!("download + verify of a {} blob", bytes(size as f64)),
        "≤ 1.1× sha2 hashing it in memory",
    );
    let dir = ctx.work.join("dl");
    let spec = BlobSpec {
        sha256: ctx.blobs["large"].clone(),
        size,
        url: None,
    };
    let fetcher = match Fetcher::new(vec![ctx.server.url()], FetchOptions::default()) {
        Ok(f) => f,
        Err(e) => return Row::failed(row.what, row.target, err(e)),
    };
    let server = ctx.server.pid().map(|pid| pid.to_string());
    let cpu = || -> Option<f64> {
        let server = server.as_deref().map_or(Some(0.0), cpu_seconds)?;
        Some(cpu_seconds("self")? + server)
    };
    // Summed over the timed downloads only, not the removal of the previous one.
    let mut cpu_used = Some(0.0);
    let ours = time_runs(
        ctx.runs,
        || {
            let _ = std::fs::remove_dir_all(&dir);
            cpu()
        },
        |before| {
            let result = fetcher
                .download(&spec, &dir, &mut |_, _| {}, &CancelToken::new())
                .map(drop)
                .map_err(err);
            cpu_used = cpu_used
                .zip(before.zip(cpu()))
                .map(|(sum, (before, after))| sum + after - before);
            result
        },
    );
    let cpu_per_run = cpu_used.map(|sum| sum / ctx.runs as f64);
    let _ = std::fs::remove_dir_all(&dir);
    let ours = match ours {
        Ok(s) => median(&s),
        Err(e) => return Row::failed(row.what, row.target, e),
    };
    let base = median(&hash_in_memory(size, ctx.runs));
    let ratio = ours / base;
    row.measured = format!("{} ({:.0} MB/s)", secs(ours), size as f64 / ours / 1e6);
    row.baseline = format!("{} ({ratio:.2}×)", secs(base));
    row.pass = Some(ratio <= 1.1);
    let mut notes = Vec::new();
    if let Some(cpu) = cpu_per_run {
        // Receiving, copying and writing cost CPU beside the hash; once they add up to more
        // than the cores can run beside it, the CPU time, not the hash, sets the floor.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        notes.push(format!(
            "CPU per download, client and server: {} (the hash is {} of it); on {cores} \
             cores no schedule finishes before {} ({:.2}× the hash)",
            secs(cpu),
            secs(base),
            secs(cpu / cores as f64),
            cpu / cores as f64 / base
        ));
    }
    if let Some(curl) = curl_to_file(ctx, &spec.sha256) {
        notes.push(format!(
            "`curl -o` of the same blob to the same file system, no hashing: {}",
            secs(curl)
        ));
    }
    row.note = notes.join("; ");
    row
}

/// The median time of `curl -o` fetching blob `sha256` into the work dir, or `None`
/// without curl.
fn curl_to_file(ctx: &Ctx, sha256: &str) -> Option<f64> {
    find_on_path("curl")?;
    let out = ctx.work.join("curl-blob");
    let url = format!("{}/blobs/sha256/{sha256}", ctx.server.url());
    let samples = time_runs(
        ctx.runs,
        || {
            let _ = std::fs::remove_file(&out);
        },
        |()| {
            run_tool(
                "curl",
                &["-s", "-f", "-o", out.to_str().unwrap_or(""), &url],
            )
        },
    );
    let _ = std::fs::remove_file(&out);
    samples.ok().map(|s| median(&s))
}

/// CPU time (user + system) that process `pid` ("self" for this one) has used so far,
/// every thread included, from /proc/<pid>/stat.
fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces: fields are counted from after its ')', where
    // field 3 (state) starts; utime and stime are fields 14 and 15.
    let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // USER_HZ, which Linux fixes at 100 for /proc on every architecture.
    Some(ticks as f64 / 100.0)
}

/// sha2 over `size` bytes already in memory (a 64 MiB buffer hashed again and again, so
/// it comes from RAM, not the cache), in 64 KiB updates as a streaming reader would.
fn hash_in_memory(size: u64, runs: usize) -> Vec<f64> {
    let mut buf = vec![0u8; (64 * MIB).min(size) as usize];
    Rng::new(9).fill(&mut buf);
    (0..runs)
        .map(|_| {
            let t = Instant::now();
            let mut hasher = Sha256::new();
            let mut left = size;
            while left > 0 {
                let n = left.min(buf.len() as u64) as usize;
                for chunk in buf[..n].chunks(64 << 10) {
                    hasher.update(chunk);
                }
                left -= n as u64;
            }
            std::hint::black_box(hasher.finalize());
            t.elapsed().as_secs_f64()
        })
        .collect()
}

/// The child's side of the RSS row: one update, then its own peak RSS on stdout.
pub fn child_update(config: &Path) -> Result<(), String> {
    update(config)?;
    println!("VmHWM {}", peak_rss_kib()?);
    Ok(())
}

/// One `Fetcher::download` of `<base>/blobs/sha256/<sha256>` into `dir`, on its own, for
/// profiling the hot path (`perf record bench __fetch …`).
pub fn child_fetch(args: &[String]) -> Result<(), String> {
    let [base, sha256, size, dir] = args else {
        return Err("usage: bench __fetch BASE SHA256 SIZE DIR".into());
    };
    let spec = BlobSpec {
        sha256: sha256.clone(),
        size: size.parse().map_err(err)?,
        url: None,
    };
    let fetcher = Fetcher::new(vec![base.clone()], FetchOptions::default()).map_err(err)?;
    let t = Instant::now();
    fetcher
        .download(&spec, Path::new(dir), &mut |_, _| {}, &CancelToken::new())
        .map_err(err)?;
    println!("{}", secs(t.elapsed().as_secs_f64()));
    Ok(())
}

/// The idle child: the process's footprint before any work.
pub fn child_idle() -> Result<(), String> {
    println!("VmHWM {}", peak_rss_kib()?);
    Ok(())
}

fn peak_rss_kib() -> Result<u64, String> {
    let status = std::fs::read_to_string("/proc/self/status").map_err(err)?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| "no VmHWM in /proc/self/status".to_string())
}

/// Peak RSS (bytes) of the bench binary re-run with `args`.
fn child_rss(args: &[&str]) -> Result<f64, String> {
    let exe = std::env::current_exe().map_err(err)?;
    let out =
        interrupt::output(Command::new(exe).args(args), "the benchmark's child").map_err(err)?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "child {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|kib| kib * 1024.0)
        .ok_or_else(|| format!("child {args:?} printed no VmHWM: {stdout}"))
}

/// The peak RSS (bytes) of every run of a full update from `channel`, each in a child.
fn rss_of_updates(ctx: &Ctx, channel: &str) -> Result<Vec<f64>, String> {
    let dev = ctx.work.join(format!("dev-rss-{channel}"));
    let mut samples = Vec::new();
    for _ in 0..ctx.runs {
        let config = ctx.fixture.device(&dev, &ctx.server.url(), channel);
        samples.push(child_rss(&["__update", config.to_str().unwrap_or("")])?);
    }
    let _ = std::fs::remove_dir_all(&dev);
    Ok(samples)
}

/// The largest of `samples` (`NaN` for none, which fails every comparison).
fn worst(samples: &[f64]) -> f64 {
    samples.iter().copied().reduce(f64::max).unwrap_or(f64::NAN)
}

/// Whether the peak RSS targets hold. A device runs every update, not a typical one, so
/// the worst run decides, not the median: every run of every update (the zip's
/// extraction too) within `limit`, and the worst runs of the small and the large
/// artifact within 1 MiB of each other (memory that does not grow with the artifact).
fn rss_passes(small: &[f64], large: &[f64], zip: &[f64], limit: f64) -> bool {
    let (small, large, zip) = (worst(small), worst(large), worst(zip));
    small <= limit && large <= limit && zip <= limit && (large - small).abs() <= MIB as f64
}

pub fn peak_rss(ctx: &Ctx) -> Row {
    let (s, l) = (ctx.sizes.small as f64, ctx.sizes.blob as f64);
    let mut row = Row::new(
        format!(
            "peak RSS of a full update (child process), {} / {} artifact",
            bytes(s),
            bytes(l)
        ),
        "≤ 16 MiB, within 1 MiB of each other (worst run)",
    );
    let measured = (|| -> Result<_, String> {
        let small = rss_of_updates(ctx, "small")?;
        let large = rss_of_updates(ctx, "large")?;
        let zip = rss_of_updates(ctx, "zip")?;
        let idle = median(
            &(0..ctx.runs)
                .map(|_| child_rss(&["__idle"]))
                .collect::<Result<Vec<_>, _>>()?,
        );
        Ok((small, large, zip, idle))
    })();
    match measured {
        Ok((small, large, zip, idle)) => {
            row.measured = format!(
                "worst {} / {} (medians {} / {})",
                bytes(worst(&small)),
                bytes(worst(&large)),
                bytes(median(&small)),
                bytes(median(&large))
            );
            row.baseline = format!("{} (idle process)", bytes(idle));
            row.pass = Some(rss_passes(&small, &large, &zip, 16.0 * MIB as f64));
            row.note = format!(
                "the {} zip of {} files: worst {} (median {})",
                bytes(ctx.sizes.zip as f64),
                ctx.zip_files,
                bytes(worst(&zip)),
                bytes(median(&zip))
            );
        }
        Err(e) => row.fail(e),
    }
    row
}

/// For each check, whether it was answered 304.
type NotModifiedLog = Arc<Mutex<Vec<bool>>>;

/// Builds an updater for `config` that records whether each check was answered 304.
fn watched(config: &Path, server: &str) -> Result<(Updater, NotModifiedLog), String> {
    let mut cfg = Config::from_file(config).map_err(err)?;
    cfg.server = server.to_string();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    let updater = Updater::builder(cfg)
        .on_event(move |e| {
            if let Event::Checked { not_modified, .. } = e {
                if let Ok(mut v) = log.lock() {
                    v.push(*not_modified);
                }
            }
        })
        .build()
        .map_err(err)?;
    Ok((updater, seen))
}

/// Requests, wire bytes and whether the answer was 304, for one check through `proxy`.
fn one_check(config: &Path, proxy: &Proxy) -> Result<(u64, u64, bool, bool), String> {
    let (updater, seen) = watched(config, &proxy.url())?;
    let (_, up0, down0) = proxy.wire.snapshot();
    let available = matches!(updater.check().map_err(err)?, Check::Available(_));
    let requests = updater.fetch_stats().requests;
    drop(updater);
    let (_, up1, down1) = proxy.wire.snapshot();
    let not_modified = seen.lock().map(|v| *v == [true]).unwrap_or(false);
    Ok((requests, up1 - up0 + down1 - down0, not_modified, available))
}

pub fn unchanged_check(ctx: &Ctx) -> Row {
    let mut row = Row::new(
        "a check when nothing changed",
        "1 request, answered 304, < 1 KiB",
    );
    let measured = (|| -> Result<_, String> {
        let proxy = Proxy::start(&ctx.server.url()).map_err(err)?;
        let dev = ctx.work.join("dev-tiny");
        let config = ctx.fixture.device(&dev, &proxy.url(), "tiny");
        let first = one_check(&config, &proxy)?;
        update(&config)?;
        confirm(&config)?;
        let checks = (0..ctx.runs)
            .map(|_| one_check(&config, &proxy))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((first, checks))
    })();
    let (first, checks) = match measured {
        Ok(m) => m,
        Err(e) => return Row::failed(row.what, row.target, e),
    };
    let wire = median(&checks.iter().map(|c| c.1 as f64).collect::<Vec<_>>());
    let requests = median(&checks.iter().map(|c| c.0 as f64).collect::<Vec<_>>());
    // The target holds for every check, not for most: the worst run decides.
    let most_wire = checks.iter().map(|c| c.1).max().unwrap_or(0) as f64;
    let most_requests = checks.iter().map(|c| c.0).max().unwrap_or(0);
    let all_304 = checks.iter().all(|c| c.2 && !c.3);
    row.measured = format!(
        "{requests} request, {}, {}",
        if all_304 { "304" } else { "not 304" },
        bytes(wire)
    );
    row.baseline = format!(
        "first check: {} request, {}",
        first.0,
        bytes(first.1 as f64)
    );
    row.pass = Some(most_requests == 1 && all_304 && most_wire < 1024.0);
    row.note = "bytes counted by a TCP proxy: request and response, headers included".into();
    row
}

pub fn one_of_ten(ctx: &Ctx) -> Row {
    let mut row = Row::new(
        "one of ten components changed: bytes downloaded",
        "only the changed component's artifact",
    );
    let measured = (|| -> Result<Vec<f64>, String> {
        let devices: Vec<PathBuf> = (0..ctx.runs)
            .map(|i| {
                let dev = ctx.work.join(format!("dev-ten-{i}"));
                let config = ctx.fixture.device(&dev, &ctx.server.url(), "ten");
                update(&config)?;
                confirm(&config)?;
                Ok(config)
            })
            .collect::<Result<_, String>>()?;
        publish_ten(ctx, "1.1.0", Some(7))?;
        let mut downloaded = Vec::new();
        for config in &devices {
            let updater = Updater::builder(Config::from_file(config).map_err(err)?)
                .build()
                .map_err(err)?;
            let Check::Available(offer) = updater.check().map_err(err)? else {
                return Err("expected 1.1.0 to be offered".into());
            };
            let plan = updater.plan(&offer).map_err(err)?;
            let before = updater.fetch_stats().bytes_received;
            updater
                .download(&plan, &mut |_, _| {}, &CancelToken::new())
                .map_err(err)?;
            downloaded.push((updater.fetch_stats().bytes_received - before) as f64);
            updater.install(&plan).map_err(err)?;
        }
        for i in 0..ctx.runs {
            let _ = std::fs::remove_dir_all(ctx.work.join(format!("dev-ten-{i}")));
        }
        Ok(downloaded)
    })();
    match measured {
        Ok(d) => {
            let got = median(&d);
            let changed = ctx.sizes.component as f64;
            // Every device, not most, must download that artifact alone.
            row.measured = bytes(got);
            row.baseline = format!(
                "changed component {}; whole release {}",
                bytes(changed),
                bytes(changed * 10.0)
            );
            row.pass = Some(d.iter().all(|&one| one == changed));
        }
        Err(e) => row.fail(e),
    }
    row
}

/// A realistic manifest: `n` releases of one zip component each (it must stay under the
/// default 1 MiB cap on metadata).
fn big_manifest(n: u64, now: Timestamp) -> Manifest {
    let mut rng = Rng::new(5);
    let mut hash = || {
        let mut raw = [0u8; 32];
        rng.fill(&mut raw);
        trust::hex(&raw)
    };
    let releases = (0..n)
        .map(|i| {
            let version = semver::Version::new(1 + i / 100, i % 100, 0);
            let mut artifact = |kind, size: u64| Artifact {
                kind,
                sha256: hash(),
                size,
                installed_size: Some(size * 3),
                compression: None,
                installed_sha256: None,
                name: None,
                url: None,
            };
            let components = NameMap::from([(
                "app",
                Component {
                    version: version.to_string(),
                    artifact: artifact(ArtifactKind::Zip, 48 << 20),
                },
            )]);
            Release {
                published: Some(now.plus_days(i as i64 - n as i64)),
                notes: format!("Release {version}: fixes and improvements."),
                min_version: None,
                critical: false,
                security_version: i / 50,
                rollout: None,
                targets: NameMap::from([(fixtures::TARGET, TargetRelease { components })]),
                version,
            }
        })
        .collect();
    Manifest {
        doc_type: "manifest".into(),
        product: fixtures::PRODUCT.into(),
        channel: "stable".into(),
        sequence: 1,
        issued: now,
        expires: now.plus_days(30),
        releases,
    }
}

pub fn manifest_verify(ctx: &Ctx) -> Row {
    let mut row = Row::new("verify + parse a 1,000-release manifest", "≤ 1 ms");
    let now = Timestamp::now();
    let manifest = big_manifest(1000, now);
    let payload = manifest.to_bytes();
    let key = match SecretKey::generate() {
        Ok(k) => k,
        Err(e) => return Row::failed(row.what, row.target, err(e)),
    };
    let envelope = trust::seal(trust::MANIFEST_TYPE, &payload, &[&key]);
    let keys = match KeySet::new(vec![key.public()], 1) {
        Ok(k) => k,
        Err(e) => return Row::failed(row.what, row.target, err(e)),
    };
    let expect = Expect {
        product: fixtures::PRODUCT,
        channel: "stable",
        now,
        max_bytes: manifest::DEFAULT_MAX_METADATA_BYTES,
    };
    // Milliseconds each, and the allocator's page faults make single runs noisy: many runs.
    let runs = ctx.runs.max(101);
    let ours = time_runs(
        runs,
        || (),
        |()| {
            manifest::verify(&envelope, &keys, &expect, &Freshness::default())
                .map(drop)
                .map_err(err)
        },
    );
    // The fastest run too: on a shared machine the median follows the host's memory system.
    let (ours, fastest) = match ours {
        Ok(s) => (median(&s), s.iter().copied().fold(f64::INFINITY, f64::min)),
        Err(e) => return Row::failed(row.what, row.target, e),
    };
    let parse = time_runs(
        runs,
        || (),
        |()| {
            // As the library reads it: UTF-8 checked once, then parsed from the str.
            let text = std::str::from_utf8(&payload).map_err(err)?;
            serde_json::from_str::<Manifest>(text)
                .map(drop)
                .map_err(err)
        },
    )
    .map(|s| median(&s))
    .unwrap_or(f64::NAN);
    let open = time_runs(
        runs,
        || (),
        |()| {
            trust::open(&envelope, trust::MANIFEST_TYPE, &keys, expect.max_bytes)
                .map(drop)
                .map_err(err)
        },
    )
    .map(|s| median(&s))
    .unwrap_or(f64::NAN);
    // ed25519 hashes the whole signed message with SHA-512, and DSSE signs the whole
    // payload: this hash alone is a floor no parser can go under.
    let sha512 = time_runs(
        runs,
        || (),
        |()| {
            std::hint::black_box(Sha512::digest(&payload));
            Ok(())
        },
    )
    .map(|s| median(&s))
    .unwrap_or(f64::NAN);
    row.measured = secs(ours);
    row.baseline = format!("{} (serde_json parse alone)", secs(parse));
    row.pass = Some(ours <= 1e-3);
    row.note = format!(
        "fastest of {runs} runs {}; envelope {}, payload {}; of which base64 + ed25519 {}, \
         and SHA-512 of the payload alone {}",
        secs(fastest),
        bytes(envelope.len() as f64),
        bytes(payload.len() as f64),
        secs(open),
        secs(sha512)
    );
    row
}

/// The `evergreen` binary of this build, built from the sources as they are now: `cargo
/// run --example bench` builds the examples, not the CLI, and a binary left from an
/// earlier build would be measured in place of this one (cargo does nothing when it is up
/// to date).
fn evergreen_bin() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(err)?;
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("evergreen"))
        .ok_or("no directory for the evergreen binary")?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // With this example in the same build: the dev-dependencies it brings change the
    // features of ctrlc's dependencies, so the CLI built alone would rebuild the library
    // beside it, and the next `cargo run --example bench` would rebuild it back.
    let args = [
        "build",
        "--release",
        "--bin",
        "evergreen",
        "--example",
        "bench",
        "--manifest-path",
        concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"),
    ];
    run_command(cargo_command(&cargo).args(args), &cargo, &args)?;
    Ok(bin)
}

pub fn startup(ctx: &Ctx) -> Vec<Row> {
    let mut in_process = Row::new("startup step, in process (build + `startup()`)", "≤ 5 ms");
    let mut process = Row::new("startup step, `evergreen boot` as a process", "≤ 5 ms");
    let dev = ctx.work.join("dev-startup");
    let config = ctx.fixture.device(&dev, &ctx.server.url(), "tiny");
    let setup = update(&config).and_then(|_| confirm(&config));
    if let Err(e) = setup {
        return vec![
            Row::failed(in_process.what, in_process.target, e.clone()),
            Row::failed(process.what, process.target, e),
        ];
    }
    let runs = ctx.runs.max(21);
    let state = dev.join("state/state.json");
    let ours = time_runs(
        runs,
        || (),
        |()| {
            let updater = Updater::builder(Config::from_file(&config).map_err(err)?)
                .build()
                .map_err(err)?;
            updater.startup().map(drop).map_err(err)
        },
    );
    let base = time_runs(
        runs,
        || (),
        |()| {
            let text = std::fs::read(&state).map_err(err)?;
            serde_json::from_slice::<serde_json::Value>(&text)
                .map(drop)
                .map_err(err)
        },
    );
    fill_time_row(
        &mut in_process,
        ours,
        base,
        "read + parse state.json alone",
        5e-3,
    );
    let cfg = config.to_str().unwrap_or("");
    let ours = evergreen_bin().and_then(|bin| {
        let bin = bin.to_str().unwrap_or("").to_string();
        time_runs(runs, || (), |()| run_tool(&bin, &["boot", "--config", cfg]))
    });
    let base = time_runs(runs, || (), |()| run_tool("true", &[]));
    fill_time_row(&mut process, ours, base, "`true` as a process", 5e-3);
    let _ = std::fs::remove_dir_all(&dev);
    vec![in_process, process]
}

fn fill_time_row(
    row: &mut Row,
    ours: Result<Vec<f64>, String>,
    base: Result<Vec<f64>, String>,
    base_name: &str,
    target: f64,
) {
    match ours {
        Ok(s) => {
            let m = median(&s);
            row.measured = secs(m);
            row.pass = Some(m <= target);
        }
        Err(e) => row.fail(e),
    }
    if let Ok(b) = base {
        row.baseline = format!("{} ({base_name})", secs(median(&b)));
    }
}

/// Sizes of the stripped `dist` cdylib, with default features and without, built by
/// `scripts/build-lib` as docs/c-abi.md says to build the library you ship.
pub fn cdylib(ctx: &Ctx) -> Vec<Row> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let variants = [
        ("default features (HTTPS)", "target", 2.5, vec![]),
        (
            "`--no-default-features` (file transport only)",
            "target/nodefault",
            1.0,
            vec!["--no-default-features"],
        ),
    ];
    let libcurl = find_libcurl();
    let mut rows: Vec<Row> = variants
        .into_iter()
        .map(|(name, target_dir, limit_mib, extra)| {
            dist_cdylib(
                ctx.quick,
                &root,
                name,
                target_dir,
                limit_mib,
                &extra,
                libcurl.as_ref(),
            )
        })
        .collect();
    rows.push(small_cdylib(ctx, &root, libcurl.as_ref(), false));
    rows.push(small_cdylib(ctx, &root, libcurl.as_ref(), true));
    rows
}

/// The row of one `scripts/build-lib` variant: the library under `root/target_dir/dist/`,
/// built first unless `quick`.
fn dist_cdylib(
    quick: bool,
    root: &Path,
    name: &str,
    target_dir: &str,
    limit_mib: f64,
    extra: &[&str],
    libcurl: Option<&(String, u64)>,
) -> Row {
    let mut row = Row::new(
        format!("stripped `dist` cdylib, {name}"),
        format!("≤ {limit_mib} MiB"),
    );
    if quick {
        // A library left in the target directory may be of any commit and any features:
        // `scripts/build-lib --no-default-features` writes the file-only one to the same
        // `target/dist/`, which would be measured here as the HTTPS one.
        return Row::skipped(row.what, row.target, "not built with --quick".into());
    }
    let lib = root.join(target_dir).join("dist/libevergreen.so");
    // The C library alone (`cargo rustc --crate-type cdylib`: next to the rlib,
    // LTO must keep every public Rust function, about 0.6 MB more), without the
    // build machine's paths.
    let built = interrupt::status(
        cargo_command(root.join("scripts/build-lib"))
            .args(extra)
            .env("CARGO_TARGET_DIR", root.join(target_dir))
            .stdout(Stdio::null()),
        "scripts/build-lib",
    );
    match built {
        Ok(s) if s.success() => {}
        Ok(s) => {
            row.fail(format!("scripts/build-lib: {s}"));
            return row;
        }
        Err(e) => {
            row.fail(format!("scripts/build-lib: {e}"));
            return row;
        }
    }
    match std::fs::metadata(&lib) {
        Ok(m) => {
            let size = m.len() as f64;
            row.measured = format!("{} ({} bytes)", bytes(size), m.len());
            if exports_c_abi(&lib) {
                row.pass = Some(size <= limit_mib * MIB as f64);
            } else {
                row.note = "exports no `evg_` function (the C ABI is not merged), so \
                            LTO drops most of the library: not meaningful yet"
                    .into();
            }
        }
        Err(e) => row.fail(format!("{}: {e}", lib.display())),
    }
    if let Some((path, size)) = libcurl {
        row.baseline = format!("{} ({path})", bytes(*size as f64));
    }
    row
}

/// The file-only library with the standard library rebuilt without its backtrace
/// symboliser (`scripts/build-small-lib`), as firmware ships it: with nightly, or with the
/// stable compiler and `RUSTC_BOOTSTRAP=1` (`stable`); each with its rust-src.
fn small_cdylib(ctx: &Ctx, root: &Path, libcurl: Option<&(String, u64)>, stable: bool) -> Row {
    let (what, flag, dir) = match stable {
        false => (
            "stripped `dist` cdylib, file transport only, std rebuilt without backtraces \
             (`scripts/build-small-lib --no-default-features`, nightly)",
            None,
            "target/small",
        ),
        true => (
            "the same with the stable compiler (`scripts/build-small-lib --stable \
             --no-default-features`: `RUSTC_BOOTSTRAP=1`)",
            Some("--stable"),
            "target/small-stable",
        ),
    };
    let mut row = Row::new(what, "≤ 1 MiB");
    let script = root.join("scripts/build-small-lib");
    let target = root.join(dir);
    if ctx.quick {
        // Other builds (examples/c/run.sh's, with fault injection) share target/small.
        return Row::skipped(row.what, row.target, "not built with --quick".into());
    }
    let out = interrupt::output(
        cargo_command(&script)
            .args(flag)
            .arg("--no-default-features")
            .env("EVG_SMALL_TARGET_DIR", &target),
        "scripts/build-small-lib",
    );
    let lib = match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout)
            .lines()
            .last()
            .map(|l| root.join(l.trim())),
        // Exit 3: no nightly or rust-src here, a missing tool. Anything else (a compile
        // error) is a failure of the step.
        Ok(o) if o.status.code() == Some(3) => {
            let why = String::from_utf8_lossy(&o.stderr).trim().to_string();
            return Row::skipped(row.what, row.target, format!("skipped: {why}"));
        }
        Ok(o) => {
            let why = String::from_utf8_lossy(&o.stderr).trim().to_string();
            return Row::failed(row.what, row.target, format!("build-small-lib: {why}"));
        }
        Err(e) => return Row::failed(row.what, row.target, err(e)),
    };
    let Some(size) = lib.and_then(|l| std::fs::metadata(l).ok()).map(|m| m.len()) else {
        return Row::failed(row.what, row.target, "the build left no library".into());
    };
    row.measured = format!("{} ({size} bytes)", bytes(size as f64));
    row.pass = Some(size as f64 <= MIB as f64);
    if let Some((path, curl)) = libcurl {
        row.baseline = format!("{} ({path})", bytes(*curl as f64));
    }
    row
}

/// Whether the library carries the C ABI's symbols at all.
fn exports_c_abi(lib: &Path) -> bool {
    std::fs::read(lib).is_ok_and(|b| b.windows(15).any(|w| w == b"evg_updater_new"))
}

/// The system's libcurl, an HTTPS client library, as a size reference.
fn find_libcurl() -> Option<(String, u64)> {
    ["/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib"]
        .iter()
        .map(|d| Path::new(d).join("libcurl.so.4"))
        .find_map(|p| {
            let real = std::fs::canonicalize(&p).ok()?;
            let size = std::fs::metadata(&real).ok()?.len();
            Some((real.file_name()?.to_string_lossy().into_owned(), size))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: f64 = MIB as f64;

    #[test]
    fn one_heavy_run_in_five_misses_the_rss_target() {
        let typical = [7.0 * M; 5];
        let one_heavy = [7.0 * M, 7.0 * M, 47.0 * M, 7.0 * M, 7.0 * M];
        assert!(rss_passes(&typical, &typical, &typical, 16.0 * M));
        assert!(!rss_passes(&typical, &one_heavy, &typical, 16.0 * M));
        assert!(!rss_passes(&one_heavy, &typical, &typical, 16.0 * M));
        assert!(!rss_passes(&typical, &typical, &one_heavy, 16.0 * M));
    }

    #[test]
    fn the_worst_runs_must_be_within_one_mib_of_each_other() {
        let small = [7.0 * M; 5];
        // The median of the large artifact's runs is the same as the small one's; one run
        // grew by 2 MiB, still under 16 MiB.
        let large = [7.0 * M, 7.0 * M, 7.0 * M, 9.0 * M, 7.0 * M];
        assert!(!rss_passes(&small, &large, &small, 16.0 * M));
        let close = [7.0 * M, 7.5 * M, 7.0 * M, 7.9 * M, 7.0 * M];
        assert!(rss_passes(&small, &close, &small, 16.0 * M));
    }

    #[test]
    fn cargo_builds_do_not_inherit_what_cargo_run_set() {
        // `cargo test` sets them for this process as `cargo run` does for the benchmark.
        assert!(std::env::var_os("CARGO_MANIFEST_DIR").is_some());
        assert!(std::env::var_os("CARGO_PKG_NAME").is_some());
        let command = cargo_command("cargo");
        let removed: Vec<String> = command
            .get_envs()
            .filter(|(_, value)| value.is_none())
            .map(|(name, _)| name.to_string_lossy().into_owned())
            .collect();
        for name in [
            "CARGO_MANIFEST_DIR",
            "CARGO_PKG_NAME",
            "CARGO_PKG_VERSION_MAJOR",
        ] {
            assert!(
                removed.iter().any(|r| r == name),
                "{name} is passed on: {removed:?}"
            );
        }
        assert!(!removed.iter().any(|r| r == "CARGO"), "CARGO is removed");
    }

    /// `scripts/build-lib` writes both variants to `target/dist/` unless told otherwise, so
    /// after `scripts/build-lib --no-default-features` (docs/c-abi.md) that file is the
    /// file-only library: a `--quick` run, which builds nothing, must not measure it as
    /// the HTTPS one (it printed "default features (HTTPS) | 1.32 MiB | pass"), nor any
    /// library it did not build, of whatever commit and features.
    #[test]
    fn a_quick_run_does_not_measure_a_library_it_did_not_build() {
        let root = std::env::temp_dir().join(format!("bench-quick-{}", std::process::id()));
        let dist = root.join("target/dist");
        std::fs::create_dir_all(&dist).unwrap();
        std::fs::write(dist.join("libevergreen.so"), b"...evg_updater_new...").unwrap();
        let row = dist_cdylib(
            true,
            &root,
            "default features (HTTPS)",
            "target",
            2.5,
            &[],
            None,
        );
        std::fs::remove_dir_all(&root).unwrap();
        assert_eq!(row.measured, "—", "measured: {}", row.measured);
        assert_eq!(row.pass, None);
        assert!(!row.failed);
        assert!(row.note.contains("--quick"), "{}", row.note);
    }

    #[test]
    fn no_runs_do_not_pass() {
        assert!(!rss_passes(&[], &[7.0 * M], &[7.0 * M], 16.0 * M));
    }
}
