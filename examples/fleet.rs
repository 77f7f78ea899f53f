//! A fleet of devices polling one static update server through a staged rollout
//! (1 % → 5 % → 20 % → 100 %, one stage a day), to show what the server sees.
//!
//! ```text
//! cargo run --release --example fleet                  # 1,000,000 devices
//! cargo run --release --example fleet -- --devices 50000
//! cargo run --release --example fleet -- --synchronized --warmup-hours 48
//! cargo run --release --example fleet -- --synchronized --warmup-hours 48 --jitter 0  # a herd: exits 1
//! ```
//!
//! Every device polls the channel manifest with `If-None-Match` on Evergreen's own
//! schedule (`select::next_check`: 6 h ± 25 %), decides with the library's rollout rule
//! (`select::rollout_bucket`, `select::bucket_in_rollout`; every 997th device also
//! through `select::in_rollout` as a whole) and downloads the blob once when it is in.
//! The operator re-signs the manifest at each stage, so every device gets one 200 per
//! stage and 304s in between.
//!
//! A poll costs the server what `Updater::check` costs it (asserted against a served
//! repository by `a_poll_is_one_request_unchanged_and_two_when_the_manifest_changed` in
//! tests/e2e.rs): one request when the manifest is unchanged (304); two when it changed
//! (200, then the root walk's `root/<v+1>.json`, answered 404 while the root is not
//! rotated); and one more, once, for the blob. The table counts all of them.
//!
//! It prints the polls and the requests per hour and the fraction updated at the end of
//! each stage, and exits 1 when a stage's fraction is further off its percentage than the
//! fleet's size explains ([`tolerance_pp`]: 0.05 percentage points at 1 % of 1,000,000
//! devices), when the fraction ever runs ahead of the percentage in force, or when,
//! after the first two poll intervals and the warm-up, the busiest hour has more than 1.2×
//! the mean polls (a thundering herd). The herd check is on polls, not requests: a herd is devices
//! polling in step, and the polls per hour are its measure. What a poll costs depends on
//! the manifest, not on the timing: in the interval after a stage change every device's
//! one poll costs two requests instead of one, so the metadata requests per hour double
//! (for about eight hours: the interval and its jitter) while the polls stay flat. That
//! is printed (the requests' busiest hour, its ratio to the mean and its requests per
//! poll) but is not a herd; a herd shows in the polls, and its requests are the polls'
//! peak times the cost of a poll.
//!
//! Each poll's jitter is the library's own draw, `select::poll_draw` of the device id and
//! the time of the poll, as `Updater::next_check` makes it. `--seed N` (default 1) seeds
//! the devices' start times; the rollout buckets and the jitter draws come from the device
//! ids and do not change with it.
//!
//! `--jitter F` sets the polling jitter (the config's `poll.jitter`, default 0.25),
//! `--synchronized` starts every device's schedule at the same instant (devices flashed
//! together, or all due at once when the power returns after a cut longer than the
//! interval), and `--warmup-hours H` (default 12) is how long the fleet polls before the
//! rollout starts. A fleet spread evenly from the start shows no herd with any jitter,
//! even none; what the jitter does is take a fleet that started in step apart, which the
//! busiest hour of each interval, printed from the start, shows (with the default jitter
//! 6.00×, 2.00×, 1.67×, … the average, 1.05× after two days). So `scripts/test-all` runs
//! a fleet that starts in step two days before the rollout, which passes the herd check
//! with the default jitter and fails it with `--jitter 0`.

#[allow(dead_code)]
#[path = "bench/rng.rs"]
mod rng;

use evergreen::config::Poll;
use evergreen::manifest::{Release, Rollout, RolloutStage};
use evergreen::select::{bucket_in_rollout, in_rollout, next_check, poll_draw, rollout_bucket};
use evergreen::{NameMap, Timestamp};
use rng::Rng;
use semver::Version;
use std::process::ExitCode;

const PRODUCT: &str = "com.acme.gateway";
const HOUR: i64 = 3600;
const DAY: i64 = 24 * HOUR;
/// The polling interval a device has by default (the config's `poll.interval_s`, 6 h), read
/// from the library's own `config::Poll`, as the default jitter (0.25) is: the simulation
/// follows the defaults a device ships with.
fn interval_s() -> u64 {
    Poll::default().interval_s
}
/// What one response weighs, to estimate the egress: a 304 as measured by the benchmark,
/// a 404 for `root/<v+1>.json` (measured with curl against nginx 1.22: a 308-byte answer
/// to a 92-byte request), a 1-release manifest, and the artifact.
const NOT_MODIFIED_BYTES: f64 = 352.0;
const NOT_FOUND_BYTES: f64 = 400.0;
const MANIFEST_BYTES: f64 = 2048.0;
const BLOB_BYTES: f64 = 48.0 * 1048576.0;
/// How far the fraction updated may be from the rollout percentage, in standard deviations.
const TOLERANCE_SD: f64 = 5.0;
/// The most the fraction updated may be off in any case, in percentage points: what the
/// simulation promises (README).
const TOLERANCE_MAX_PP: f64 = 0.5;

/// How far the fraction updated of a fleet of `fleet` devices may be from `percent`, in
/// percentage points: [`TOLERANCE_SD`] standard deviations of the fraction of uniform
/// buckets below it (a binomial draw of the fleet's size), and one device more, but never
/// more than [`TOLERANCE_MAX_PP`]. A fixed ±0.5 points alone is too loose for a large
/// fleet: it let a 1 % canary stage reach 1.37 % of 100,000 devices (a third more than
/// asked, 12 standard deviations). A small fleet (20 % of 10,000 devices has a standard
/// deviation of 0.4 points) can fail the cap by chance.
fn tolerance_pp(percent: f64, fleet: usize) -> f64 {
    let p = (percent / 100.0).clamp(0.0, 1.0);
    let n = fleet.max(1) as f64;
    let spread = 100.0 * (TOLERANCE_SD * (p * (1.0 - p) / n).sqrt() + 1.0 / n);
    spread.min(TOLERANCE_MAX_PP)
}

/// What the server saw in one hour.
#[derive(Default, Clone, Copy)]
struct Hour {
    /// Manifest requests answered 304.
    not_modified: u64,
    /// Manifest requests answered 200.
    fetched: u64,
    /// `root/<v+1>.json` requests (the root walk after each 200), answered 404.
    roots: u64,
    /// Blob requests.
    blobs: u64,
}

impl Hour {
    /// Polls: one manifest request each.
    fn polls(&self) -> u64 {
        self.not_modified + self.fetched
    }

    /// Every request the static server sees: manifests, roots and blobs.
    fn requests(&self) -> u64 {
        self.polls() + self.roots + self.blobs
    }

    fn egress(&self) -> f64 {
        self.not_modified as f64 * NOT_MODIFIED_BYTES
            + self.fetched as f64 * MANIFEST_BYTES
            + self.roots as f64 * NOT_FOUND_BYTES
            + self.blobs as f64 * BLOB_BYTES
    }
}

/// One device, as the server sees it.
#[derive(Clone, Copy)]
struct Device {
    next: i64,
    /// The manifest sequence the device holds (its `ETag`).
    seen: u64,
    updated: bool,
    bucket: u16,
}

/// The release being rolled out and the manifest's sequence at each stage.
struct Channel {
    release: Release,
    /// (from, sequence): the operator re-signs at every stage.
    sequences: Vec<(i64, u64)>,
}

impl Channel {
    fn new(start: Timestamp, percents: &[f64]) -> Channel {
        let stages: Vec<RolloutStage> = percents
            .iter()
            .enumerate()
            .map(|(i, p)| RolloutStage {
                at: start.plus_days(i as i64),
                percent: *p,
            })
            .collect();
        let sequences = stages
            .iter()
            .enumerate()
            .map(|(i, s)| (s.at.unix(), i as u64 + 2))
            .collect();
        Channel {
            release: Release {
                version: Version::new(2, 0, 0),
                published: Some(start),
                notes: String::new(),
                min_version: None,
                critical: false,
                security_version: 0,
                rollout: Some(Rollout { stages }),
                targets: NameMap::new(),
            },
            sequences,
        }
    }

    /// The manifest's sequence at `t` (1: the manifest before the release).
    fn sequence(&self, t: i64) -> u64 {
        self.sequences
            .iter()
            .rev()
            .find(|(from, _)| *from <= t)
            .map_or(1, |(_, s)| *s)
    }

    fn percent(&self, t: i64) -> f64 {
        self.release
            .rollout
            .as_ref()
            .map_or(100.0, |r| r.percent_at(Timestamp::from_unix(t)))
    }
}

struct Args {
    devices: u32,
    /// The polling jitter, as the config's `poll.jitter`.
    jitter: f64,
    /// Every device's schedule starts at the same instant.
    synchronized: bool,
    /// Seeds the devices' start times (the rollout buckets and the jitter draws come from
    /// the device ids, not from it).
    seed: u64,
    /// Hours the fleet polls before the rollout starts (default 12, two intervals).
    warmup_hours: u32,
}

const USAGE: &str =
    "usage: fleet [--devices N] [--jitter F] [--synchronized] [--warmup-hours H] [--seed N]";

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        devices: 1_000_000,
        jitter: Poll::default().jitter,
        synchronized: false,
        seed: 1,
        warmup_hours: 12,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--devices" => {
                args.devices = it
                    .next()
                    .and_then(|n| n.parse().ok())
                    .filter(|n| *n >= 1)
                    .ok_or("--devices takes a positive number")?;
            }
            "--jitter" => {
                args.jitter = it
                    .next()
                    .and_then(|n| n.parse().ok())
                    .filter(|j| (0.0..1.0).contains(j))
                    .ok_or("--jitter takes a fraction from 0 up to (not including) 1")?;
            }
            "--synchronized" => args.synchronized = true,
            "--warmup-hours" => {
                args.warmup_hours = it
                    .next()
                    .and_then(|n| n.parse().ok())
                    .filter(|h| *h <= 24 * 30)
                    .ok_or("--warmup-hours takes a number of hours up to 720")?;
            }
            "--seed" => {
                args.seed = it
                    .next()
                    .and_then(|n| n.parse().ok())
                    .ok_or("--seed takes a number")?;
            }
            _ => return Err(format!("{USAGE}; found {a:?}")),
        }
    }
    Ok(args)
}

fn device_id(i: u32) -> String {
    format!("device-{i:07}")
}

/// The fleet of devices `ids` in steady state (each device's next poll somewhere in the coming interval),
/// or, `synchronized`, every device polling at `start`.
fn fleet(
    ids: &[String],
    start: i64,
    synchronized: bool,
    version: &Version,
    rng: &mut Rng,
) -> Vec<Device> {
    ids.iter()
        .map(|id| Device {
            next: if synchronized {
                start
            } else {
                start + (rng.unit() * interval_s() as f64) as i64
            },
            seen: 1,
            updated: false,
            bucket: rollout_bucket(PRODUCT, id, version) as u16,
        })
        .collect()
}

/// The simulation's results.
struct Outcome {
    hours: Vec<Hour>,
    /// Fraction updated at the end of each hour.
    updated: Vec<f64>,
    /// The number of devices.
    fleet: usize,
    /// Devices whose precomputed bucket disagreed with `in_rollout` (must be 0).
    disagreements: u64,
    /// Devices whose next poll is not after the simulated span: dropped by the
    /// simulation, which would make every figure wrong (must be 0).
    behind: usize,
}

/// Runs the fleet hour by hour for `hours` from `start`; within an hour the polls are
/// processed in the order they were scheduled (the hour is the resolution of the report),
/// and a poll that schedules the next one within the same hour (a jitter over 5/6 allows
/// a delay under an hour) is processed in that hour too.
fn simulate(
    ids: &[String],
    devices: &mut [Device],
    channel: &Channel,
    jitter: f64,
    start: i64,
    hours: usize,
) -> Outcome {
    let mut calendar: Vec<Vec<u32>> = vec![Vec::new(); hours + 1];
    let slot = |t: i64| ((t - start).max(0) / HOUR) as usize;
    for (i, d) in devices.iter().enumerate() {
        calendar[slot(d.next).min(hours)].push(i as u32);
    }
    let mut out = Outcome {
        hours: vec![Hour::default(); hours],
        updated: Vec::with_capacity(hours),
        fleet: devices.len(),
        disagreements: 0,
        behind: 0,
    };
    let mut updated = 0u64;
    for h in 0..hours {
        while !calendar[h].is_empty() {
            let due = std::mem::take(&mut calendar[h]);
            for i in due {
                let d = &mut devices[i as usize];
                let now = d.next;
                let stats = &mut out.hours[h];
                let sequence = channel.sequence(now);
                if d.seen == sequence {
                    stats.not_modified += 1;
                } else {
                    // A changed manifest: `Updater::check` walks the root chain, asking
                    // for the next root (404: no rotation here).
                    stats.fetched += 1;
                    stats.roots += 1;
                    d.seen = sequence;
                }
                // The library's rule on the bucket computed once per device (hashing it
                // on every poll would take most of the run).
                let in_now = bucket_in_rollout(d.bucket.into(), channel.percent(now));
                // Spot-check the precomputed bucket through the library's whole decision.
                if i % 997 == 0 {
                    let rule = in_rollout(
                        &channel.release,
                        PRODUCT,
                        &ids[i as usize],
                        Timestamp::from_unix(now),
                    );
                    out.disagreements += u64::from(rule != in_now);
                }
                if in_now && !d.updated {
                    d.updated = true;
                    updated += 1;
                    stats.blobs += 1;
                }
                // The draw the library's updater makes for this device and round.
                let polled = Timestamp::from_unix(now);
                let draw = poll_draw(&ids[i as usize], Some(polled), 0);
                d.next = next_check(polled, interval_s(), jitter, 0, draw, None).unix();
                calendar[slot(d.next).min(hours)].push(i);
            }
        }
        out.updated.push(updated as f64 / devices.len() as f64);
    }
    let end = start + hours as i64 * HOUR;
    out.behind = devices.iter().filter(|d| d.next < end).count();
    out
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let started = std::time::Instant::now();
    let percents = [1.0, 5.0, 20.0, 100.0];
    let rollout_start = Timestamp::from_unix(1_795_000_000 / DAY * DAY);
    // The warm-up (half a day by default) before the release, then one day per stage.
    let warmup = i64::from(args.warmup_hours) * HOUR;
    let start = rollout_start.unix() - warmup;
    let hours = (warmup + percents.len() as i64 * DAY) / HOUR;
    let channel = Channel::new(rollout_start, &percents);
    let mut rng = Rng::new(args.seed);
    let version = &channel.release.version;
    // Formatted once: each poll hashes its device's id.
    let ids: Vec<String> = (0..args.devices).map(device_id).collect();
    let mut devices = fleet(&ids, start, args.synchronized, version, &mut rng);
    let out = simulate(
        &ids,
        &mut devices,
        &channel,
        args.jitter,
        start,
        hours as usize,
    );

    println!(
        "{} devices, polling every {} h ± {:.0} %{}; rollout {percents:?} % from {rollout_start}, one stage a day; seed {}\n",
        args.devices,
        interval_s() / 3600,
        args.jitter * 100.0,
        if args.synchronized { ", all starting at once" } else { "" },
        args.seed
    );
    print_hours(&out, start);
    let failures = check_stages(&out, &channel, start);
    let failures = failures + check_never_ahead(&out, &channel, start);
    print_interval_peaks(&out, args.devices);
    // The herd check starts once the fleet has settled from its start (two intervals) and
    // no earlier than the rollout.
    let settle = (2 * interval_s() / 3600).max(u64::from(args.warmup_hours)) as usize;
    let failures = failures + check_herd(&out, start, settle);
    if !args.synchronized {
        println!(
            "(a fleet that starts spread over the interval, as this one, shows no herd at any \
             jitter, none included; what the jitter is for shows with --synchronized \
             --warmup-hours 48, and its failure with --jitter 0 added)"
        );
    }
    if out.disagreements > 0 {
        println!(
            "FAIL: {} bucket(s) disagreed with select::in_rollout",
            out.disagreements
        );
    }
    if out.behind > 0 {
        println!(
            "FAIL: {} device(s) stopped polling before the end (a simulation fault)",
            out.behind
        );
    }
    println!("\nsimulated in {:.1} s", started.elapsed().as_secs_f64());
    if failures > 0 || out.disagreements > 0 || out.behind > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn print_hours(out: &Outcome, start: i64) {
    println!(
        "| hour (UTC) | polls | requests | manifest 304 | manifest 200 | root 404 | blob | egress (est.) | updated |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (h, (s, u)) in out.hours.iter().zip(&out.updated).enumerate() {
        let t = Timestamp::from_unix(start + h as i64 * HOUR);
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {:.1} GiB | {:.2} % |",
            &t.to_string()[..16],
            s.polls(),
            s.requests(),
            s.not_modified,
            s.fetched,
            s.roots,
            s.blobs,
            s.egress() / (1u64 << 30) as f64,
            u * 100.0
        );
    }
}

/// At the end of each stage, the fraction updated is within the tolerance of its percentage.
fn check_stages(out: &Outcome, channel: &Channel, start: i64) -> u32 {
    println!("\n| stage | from | updated at its end | expected | result |");
    println!("|---|---|---:|---:|---|");
    let mut failures = 0;
    let stages = channel
        .release
        .rollout
        .as_ref()
        .map_or(&[][..], |r| &r.stages);
    for (i, stage) in stages.iter().enumerate() {
        let end = stage.at.unix() + DAY;
        let hour = ((end - start) / HOUR) as usize;
        let Some(fraction) = out.updated.get(hour.saturating_sub(1)) else {
            // A stage the run does not reach the end of is not checked: that is a failure,
            // not a pass.
            println!(
                "| {} | {} | not simulated | {} % | FAIL |",
                i + 1,
                stage.at,
                stage.percent
            );
            failures += 1;
            continue;
        };
        let off = (fraction * 100.0 - stage.percent).abs();
        let tolerance = tolerance_pp(stage.percent, out.fleet);
        let ok = off <= tolerance;
        failures += u32::from(!ok);
        println!(
            "| {} | {} | {:.3} % | {} % | {} |",
            i + 1,
            stage.at,
            fraction * 100.0,
            stage.percent,
            if ok {
                "ok".to_string()
            } else {
                format!("FAIL: {off:.3} pp off (over {tolerance:.3})")
            }
        );
    }
    failures
}

/// The fraction updated never runs ahead of the percentage in force.
fn check_never_ahead(out: &Outcome, channel: &Channel, start: i64) -> u32 {
    let mut failures = 0;
    for (h, fraction) in out.updated.iter().enumerate() {
        let end_of_hour = start + (h as i64 + 1) * HOUR - 1;
        let percent = channel.percent(end_of_hour);
        if fraction * 100.0 > percent + tolerance_pp(percent, out.fleet) {
            println!(
                "FAIL: hour {h}: {:.3} % updated with {percent} % in force",
                fraction * 100.0
            );
            failures += 1;
        }
    }
    failures
}

/// The busiest hour of polls in each poll interval from the start, over the fleet's
/// average rate (devices / interval an hour): how a fleet that started in step (1 when it
/// is spread evenly) comes apart, interval by interval.
fn print_interval_peaks(out: &Outcome, devices: u32) {
    let per = (interval_s() / 3600).max(1) as usize;
    let average = f64::from(devices) / per as f64;
    let peaks: Vec<String> = out
        .hours
        .chunks(per)
        .map(|c| {
            let peak = c.iter().map(Hour::polls).max().unwrap_or(0);
            format!("{:.2}", peak as f64 / average)
        })
        .collect();
    println!(
        "\nbusiest hour of polls in each {per} h interval, × the average {average:.0} an hour: {}",
        peaks.join(" ")
    );
}

/// The busiest hour's polls may be at most this many times the mean once the fleet has
/// settled: a fleet polling in lockstep would show a peak many times the mean.
const HERD_BOUND: f64 = 1.2;

/// The busiest hour against the average one, from hour `settle` on: after the first two
/// intervals (the fleet settling into its schedule from its start) and the warm-up. A herd is devices polling in step, so the
/// check is on the polls: a peak over [`HERD_BOUND`] × the mean fails. The requests are
/// the polls times what a poll costs (1 unchanged, 2 changed, 1 more for a blob), which
/// the manifest decides, not the timing; their busiest hour is printed beside it.
fn check_herd(out: &Outcome, start: i64, settle: usize) -> u32 {
    let settled = &out.hours[settle..];
    // The mean and the peak of `count` over the settled hours, and the peak hour (its index
    // among them, and its counts).
    let busiest = |count: fn(&Hour) -> u64| {
        let mean = settled.iter().map(count).sum::<u64>() as f64 / settled.len() as f64;
        let (at, peak) = settled
            .iter()
            .enumerate()
            .max_by_key(|(_, h)| count(h))
            .map_or((0, Hour::default()), |(i, h)| (i, *h));
        (mean, count(&peak) as f64, at, peak)
    };
    let hour = |at: usize| {
        let t = Timestamp::from_unix(start + (settle + at) as i64 * HOUR).to_string();
        t[..16].to_string()
    };
    let (mean, peak, at, _) = busiest(Hour::polls);
    println!(
        "\npolls per hour (one manifest request each): mean {mean:.0}, peak {peak:.0} ({:.2}× the mean, {:.1} per second, from {})",
        peak / mean,
        peak / 3600.0,
        hour(at)
    );
    let metadata = |h: &Hour| h.polls() + h.roots;
    for (what, count) in [
        (
            "requests per hour (manifest, root and blob)",
            Hour::requests as fn(&Hour) -> u64,
        ),
        ("metadata requests per hour (manifest and root)", metadata),
    ] {
        let (r_mean, r_peak, r_at, h) = busiest(count);
        println!(
            "{what}: mean {r_mean:.0}, peak {r_peak:.0} ({:.2}× the mean, {:.1} per second, from {}; {:.2} per poll that hour)",
            r_peak / r_mean,
            r_peak / 3600.0,
            hour(r_at),
            r_peak / h.polls() as f64,
        );
    }
    let blob_peak = out.hours.iter().map(|h| h.blobs).max().unwrap_or(0);
    let egress_peak = out.hours.iter().map(Hour::egress).fold(0.0, f64::max);
    println!(
        "blob downloads: peak {blob_peak} in one hour ({:.1} per second); peak egress {:.1} GiB/h",
        blob_peak as f64 / 3600.0,
        egress_peak / (1u64 << 30) as f64
    );
    if peak > HERD_BOUND * mean {
        println!(
            "FAIL: the busiest hour has over {HERD_BOUND}× the mean polls (a thundering herd)"
        );
        return 1;
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The outcome of a fleet of `devices` whose fraction updated is the percentage in
    /// force at the end of every hour, but `stage_one` (a fraction) during the first stage.
    fn outcome(
        channel: &Channel,
        start: i64,
        hours: usize,
        devices: usize,
        stage_one: f64,
    ) -> Outcome {
        let first = channel.sequences[0].0;
        let updated = (0..hours)
            .map(|h| {
                let end = start + (h as i64 + 1) * HOUR - 1;
                match channel.percent(end) {
                    p if p == 1.0 && end >= first => stage_one,
                    p => p / 100.0,
                }
            })
            .collect();
        Outcome {
            hours: vec![Hour::default(); hours],
            updated,
            fleet: devices,
            disagreements: 0,
            behind: 0,
        }
    }

    /// A canary stage that lets in over a third more devices than its 1 % (1.37 % of
    /// 100,000 devices: a bucket rule off by 45 buckets) is a wrong fraction: its
    /// standard deviation at that size is 0.03 percentage points, and the check passed it.
    #[test]
    fn a_canary_stage_a_third_over_its_percentage_fails_the_check() {
        let rollout_start = Timestamp::from_unix(1_795_000_000 / DAY * DAY);
        let channel = Channel::new(rollout_start, &[1.0, 5.0, 20.0, 100.0]);
        let start = rollout_start.unix() - 12 * HOUR;
        let hours = (12 * HOUR + 4 * DAY) / HOUR;
        let right = outcome(&channel, start, hours as usize, 100_000, 0.01);
        assert_eq!(check_stages(&right, &channel, start), 0);
        assert_eq!(check_never_ahead(&right, &channel, start), 0);
        let wrong = outcome(&channel, start, hours as usize, 100_000, 0.01367);
        assert!(
            check_stages(&wrong, &channel, start) > 0,
            "1.367 % updated at the end of the 1 % stage of 100,000 devices passed the check"
        );
        assert!(check_never_ahead(&wrong, &channel, start) > 0);
    }
}
