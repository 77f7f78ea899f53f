//! Device commands: `check`, `update`, `status`, `boot`, `confirm`, `rollback`,
//! `reinstall`, `channel`, `activate`, `skip`. They read `--config FILE` (the library's
//! JSON config) and print JSON with `--json`.

use crate::path_text;
use clap::{Args, Subcommand};
use evergreen::config::{SelectorConfig, SlotsConfig};
use evergreen::select::HeldBack;
use evergreen::slots::dir::DirSlots;
use evergreen::slots::grub::GrubEnv;
use evergreen::slots::uboot::UBootEnv;
use evergreen::{Activation, Check, Config, Error, ErrorKind, Offer, Result, Startup, Updater};
use semver::Version;
use serde_json::json;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

/// Exit code of `check` when an update is available.
pub const EXIT_AVAILABLE: i32 = 10;

/// The option every device command takes (and no operator command: they take a REPO).
#[derive(Args, Debug)]
pub struct DeviceOpts {
    /// Device config file (the library's JSON config)
    /// [default: $EVERGREEN_CONFIG when set and not empty, else /etc/evergreen/config.json]
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// Options of `check`.
#[derive(Args, Debug)]
pub struct CheckArgs {
    #[command(flatten)]
    pub device: DeviceOpts,
    /// Check this channel instead of the device's (does not switch).
    #[arg(long, value_name = "C")]
    pub channel: Option<String>,
    /// Ask for exactly this version (newer or older; never below the security floor).
    #[arg(long, value_name = "V", value_parser = crate::parse_version)]
    pub version: Option<Version>,
    /// Check only when the device's schedule says a check is due, as `update --if-due`
    /// does; before that, print `not due: next check at T` and exit 0 without a request.
    /// For a notifier that wakes more often than the poll interval.
    #[arg(long)]
    pub if_due: bool,
}

/// Options of `update`.
#[derive(Args, Debug)]
pub struct UpdateArgs {
    #[command(flatten)]
    pub device: DeviceOpts,
    /// Switch to this channel, then update from it. The switch is saved once the
    /// channel's check succeeds: a check that fails (a channel the repository does not
    /// have, say) or is interrupted, or an update that needs `--yes` without a terminal
    /// to ask on, leaves the device on its channel.
    #[arg(long, value_name = "C")]
    pub channel: Option<String>,
    /// Install exactly this version (a downgrade is allowed because it was asked for).
    #[arg(long, value_name = "V", value_parser = crate::parse_version)]
    pub version: Option<Version>,
    /// Download and verify only; do not install (a later `update` installs from the
    /// downloads without fetching them again). Unlike the `download_only` deploy policy,
    /// which installs and waits for `evergreen activate`.
    #[arg(long)]
    pub download_only: bool,
    /// Do not ask before installing. Needed where stdin is not a terminal (a timer, a
    /// script): without it, `update` exits 2 (a usage error) once there is something to
    /// install, before downloading it.
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Check only when the device's schedule says a check is due (`next_check` in
    /// `status`: the poll interval with this device's jitter, backed off after failures);
    /// before that, print `not due: next check at T` and exit 0 without a request. For a
    /// timer that wakes more often than the poll interval: a fleet that checks on a fixed
    /// clock polls in lockstep. Judged once no other check runs: one that waited for
    /// another process's check finds the schedule that check left. Before the check is
    /// due, a release staged for a maintenance window or an `at` time is activated once
    /// its time has come, and one staged under the `immediate` policy at once (as
    /// `evergreen activate` would; one the last check withheld stays staged).
    #[arg(long)]
    pub if_due: bool,
}

/// Options of `channel`.
#[derive(Args, Debug)]
pub struct ChannelArgs {
    #[command(flatten)]
    pub device: DeviceOpts,
    /// The channel to follow: stable, preview, nightly or any channel the repository has
    /// (the next check finds out whether it exists).
    pub channel: String,
}

/// Options of `skip`.
#[derive(Args, Debug)]
pub struct SkipArgs {
    #[command(flatten)]
    pub device: DeviceOpts,
    /// The version checks should no longer offer (critical releases are still offered).
    #[arg(value_parser = crate::parse_version)]
    pub version: Version,
}

/// Options of `unskip`.
#[derive(Args, Debug)]
pub struct UnskipArgs {
    #[command(flatten)]
    pub device: DeviceOpts,
    /// The skipped version checks may offer again.
    #[arg(value_parser = crate::parse_version)]
    pub version: Version,
}

/// Options of `activate`.
#[derive(Args, Debug)]
pub struct ActivateArgs {
    #[command(flatten)]
    pub device: DeviceOpts,
    /// Ignore the maintenance window and the `at` time.
    #[arg(long)]
    pub now: bool,
}

/// Device commands (they read `--config FILE`).
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Check the channel for an update. Exit 0: up to date; 10: an update is available.
    ///
    /// Example: evergreen check --config /etc/evergreen/config.json --json
    Check(CheckArgs),
    /// Check, show the component diff, ask, then download, install into the inactive slot
    /// and activate it on trial (as the deploy policy allows).
    ///
    /// Example: evergreen update --config /etc/evergreen/config.json --yes
    Update(UpdateArgs),
    /// Show slots, versions, the trial, the channel and the last check.
    ///
    /// Example: evergreen status --config /etc/evergreen/config.json --json
    Status(DeviceOpts),
    /// The startup step, for launchers and systemd: count a trial start, roll back when
    /// the new slot used up its tries without being confirmed. With dir slots, `--json`
    /// names the slot to start now (`start`) and its directory (`start_dir`): start the app
    /// from there rather than through `current`, which an activation may move meanwhile,
    /// and from `current` when `boot` fails or names no slot (the app must start anyway).
    ///
    /// Example: ExecStart=/bin/sh -c 'd=$(evergreen boot --json | jq -r ".start_dir // empty"); exec "${d:-/opt/app/current}/app/bin/app"'
    Boot(DeviceOpts),
    /// Mark the slot on trial good (run it once the new version is healthy); raises the
    /// security floor.
    Confirm(DeviceOpts),
    /// Go back to the fallback slot now; the current one is marked bad. Refused below the
    /// security floor.
    Rollback(DeviceOpts),
    /// Install the installed version again into the other slot (repair) and activate it.
    Reinstall(DeviceOpts),
    /// Follow another channel from now on (stable, preview, nightly, …).
    ///
    /// Example: evergreen channel preview --config /etc/evergreen/config.json
    Channel(ChannelArgs),
    /// Activate a staged release (after `update` with the download_only policy, or one
    /// deferred to a maintenance window).
    Activate(ActivateArgs),
    /// Never offer this version again (critical releases are still offered). `status`
    /// lists the skipped versions.
    ///
    /// Example: evergreen skip 1.4.2 --config /etc/evergreen/config.json
    Skip(SkipArgs),
    /// Offer a skipped version again (takes back `skip`).
    ///
    /// Example: evergreen unskip 1.4.2 --config /etc/evergreen/config.json
    Unskip(UnskipArgs),
    /// Prepare the bootloader environment of image slots once, when the image is built or
    /// first flashed: the GRUB block in Evergreen's power-safe layout (A good, B not
    /// bootable; other variables kept), or a blank redundant U-Boot environment
    /// initialised. A U-Boot environment that already has a valid copy is left as it is.
    ///
    /// Example: evergreen provision --config /etc/evergreen/config.json
    Provision(DeviceOpts),
}

impl Command {
    /// The command's own options.
    fn opts(&self) -> &DeviceOpts {
        match self {
            Command::Check(a) => &a.device,
            Command::Update(a) => &a.device,
            Command::Channel(a) => &a.device,
            Command::Activate(a) => &a.device,
            Command::Skip(a) => &a.device,
            Command::Unskip(a) => &a.device,
            Command::Status(o)
            | Command::Boot(o)
            | Command::Confirm(o)
            | Command::Rollback(o)
            | Command::Reinstall(o)
            | Command::Provision(o) => o,
        }
    }
}

/// Runs a device command; returns the exit code. `before` is a `--config` given before
/// the command (`evergreen --config F status`); one after it wins.
pub fn run(cmd: Command, before: Option<PathBuf>, json: bool) -> Result<i32> {
    let config = &crate::config_path(cmd.opts().config.clone().or(before));
    match cmd {
        Command::Check(a) => check(config, json, &a),
        Command::Update(a) => update(config, json, &a),
        Command::Status(_) => status(config, json),
        Command::Boot(_) => boot(config, json),
        Command::Confirm(_) => confirm(config, json),
        Command::Rollback(_) => rollback(config, json),
        Command::Reinstall(_) => reinstall(config, json),
        Command::Channel(a) => channel(config, json, &a),
        Command::Activate(a) => activate(config, json, &a),
        Command::Skip(a) => skip(config, json, &a),
        Command::Unskip(a) => unskip(config, json, &a),
        Command::Provision(_) => provision(config, json),
    }
}

/// Builds the updater from the config file, with `EVERGREEN_NOW` as the clock if set.
pub fn updater(config: &Path, json: bool) -> Result<Updater> {
    let cfg = Config::from_file(config)?;
    // The library's own error tells a program how to supply the selector; this command
    // supplies none.
    if let SlotsConfig::Image {
        selector: SelectorConfig::Custom {},
        ..
    } = &cfg.slots
    {
        return Err(Error::config(format!(
            "{}: config field `slots.selector`: expected a grub or uboot selector, which the evergreen command drives, found a custom one, which only the program that supplies it can drive",
            config.display()
        )));
    }
    let mut builder = Updater::builder(cfg);
    if std::env::var_os("EVERGREEN_NOW").is_some() {
        let now = crate::now()?;
        builder = builder.clock(move || now);
    }
    builder = builder.on_event(move |e| match e {
        // A wait is said on stderr in JSON mode too: stdout stays the one JSON document.
        evergreen::Event::Waiting { path, .. } => {
            let note = crate::holder::note(path);
            crate::say("evergreen", &format!("{e}{note}"))
        }
        evergreen::Event::NoReleaseForTarget { .. } if !json => crate::say("note", &e.to_string()),
        _ if json => {}
        // A failure is reported once, as the `error[<kind>]` line.
        // Said on stdout after the "up to date" line, with what to do about a skip.
        evergreen::Event::HeldBack { .. }
        | evergreen::Event::Downloading { .. }
        | evergreen::Event::Installing { .. }
        | evergreen::Event::Checked { .. }
        | evergreen::Event::Failed { .. } => {}
        other => crate::say("evergreen", &other.to_string()),
    });
    builder.build()
}

fn print_json(v: &serde_json::Value) {
    out!("{v}");
}

/// Prints `offer` in text; `staged` is the slot that already holds it, when one does
/// (nothing is downloaded then).
fn print_offer(offer: &Offer, staged: Option<evergreen::slots::Slot>) {
    out!(
        "update available: {} -> {} on {}{}{}",
        offer
            .current
            .as_ref()
            .map_or("(none)".to_string(), ToString::to_string),
        offer.version,
        offer.channel,
        if offer.critical { " [critical]" } else { "" },
        if offer.downgrade { " [downgrade]" } else { "" },
    );
    // The publisher's words: each of their lines on one of ours, indented under the
    // first, with no control character let through to the terminal.
    for (i, line) in offer.notes.lines().enumerate() {
        let label = if i == 0 { "notes:" } else { "" };
        out!("  {label:6} {}", crate::one_line(line));
    }
    for c in &offer.components {
        let op = serde_json::to_value(c.op).ok();
        let op = op.as_ref().and_then(|v| v.as_str()).unwrap_or("?");
        out!(
            "  {op:<10} {:<16} {} -> {}",
            c.name,
            c.from.as_deref().unwrap_or("-"),
            c.to.as_deref().unwrap_or("-")
        );
    }
    match staged {
        Some(slot) => out!("  already installed in slot {slot}: nothing to download"),
        None => out!("  download: {} bytes", offer.download_size()),
    }
}

/// `evergreen check`: exit 0 when up to date, 10 when an update is available.
pub fn check(config: &Path, json: bool, args: &CheckArgs) -> Result<i32> {
    let up = updater(config, json)?;
    let channel = args.channel.as_deref();
    let Some(check) = check_if(&up, args.if_due, channel, args.version.as_ref())? else {
        say_not_due(&up, json)?;
        return Ok(0);
    };
    match check {
        // `target_released`: an "up to date" that is for good (a misspelt `target`) reads
        // apart from one with nothing newer yet.
        Check::UpToDate {
            target_released,
            held_back,
            ..
        } => {
            say_up_to_date(&up, channel, target_released, held_back.as_ref(), json)?;
            Ok(0)
        }
        Check::Available(offer) => {
            if json {
                let mut v = offer.to_json();
                // An offer is of a release for this target, and holds nothing back: the
                // newest it may take is the one offered.
                v["target_released"] = json!(true);
                v["held_back"] = serde_json::Value::Null;
                print_json(&v);
            } else {
                print_offer(&offer, up.staged_slot(&offer)?);
            }
            Ok(EXIT_AVAILABLE)
        }
    }
}

/// The check of `channel` for `version`; with `if_due`, `None` when the device's schedule
/// says it is not due (judged once no other check runs).
fn check_if(
    up: &Updater,
    if_due: bool,
    channel: Option<&str>,
    version: Option<&Version>,
) -> Result<Option<Check>> {
    match if_due {
        true => up.check_if_due(channel, version),
        false => up.check_with(channel, version).map(Some),
    }
}

/// Says that the check is not due (`--if-due`), and when it will be.
fn say_not_due(up: &Updater, json: bool) -> Result<()> {
    let next = up.next_check()?;
    if json {
        print_json(&json!({"status": "not_due", "next_check": next}));
    } else {
        out!("not due: next check at {next}");
    }
    Ok(())
}

/// Says that nothing is to be installed from `channel` (the device's own when `None`): in JSON with every key of an
/// offer's (`Offer::to_json`), so a script reads the same keys from `check` and `update`
/// whether or not there is one (nothing to install, nothing forced, nothing to download).
fn say_up_to_date(
    up: &Updater,
    channel: Option<&str>,
    target_released: bool,
    held_back: Option<&HeldBack>,
    json: bool,
) -> Result<()> {
    // As an offer's `current`: what Evergreen installed, else what the config says was
    // installed by other means.
    let st = up.state()?;
    let current = (st.installed_version())
        .or(up.config().current_version.as_ref())
        .cloned();
    let channel = channel.unwrap_or(&st.channel);
    if json {
        print_json(&json!({"status": "up_to_date",
            "current": current.as_ref().map(ToString::to_string),
            "version": null, "channel": channel, "critical": false,
            "downgrade": false, "notes": "", "security_version": null,
            "download_bytes": 0, "components": [],
            "target_released": target_released,
            "held_back": held_json(held_back)}));
        return Ok(());
    }
    out!(
        "up to date: {} on {channel}",
        current.map_or("(nothing installed)".to_string(), |v| v.to_string())
    );
    say_held_back(up, held_back)?;
    say_withheld(up)
}

/// Refuses to go on without `--yes` when there is no terminal to ask on: a usage error
/// (exit 2), since the call lacks a flag it needs there. Called before anything is
/// downloaded, installed or switched.
fn terminal_to_ask() {
    if !std::io::stdin().is_terminal() {
        crate::usage_error(
            "update",
            "expected --yes to install without a terminal to ask on (stdin is not a terminal), found no --yes",
        );
    }
}

fn confirm_install(offer: &Offer) -> Result<bool> {
    terminal_to_ask();
    crate::write_err(format_args!("install {}? [y/N] ", offer.version));
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin()
        .read_line(&mut answer)
        .map_err(|e| Error::new(ErrorKind::Io, format!("reading the answer: {e}")))?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

/// Downloads with a progress bar on a terminal, plain milestone lines on stderr otherwise
/// (none with `--json`: stderr is then the error line alone).
pub fn download(up: &Updater, offer: &Offer, json: bool) -> Result<()> {
    let total = offer.download_size();
    let bar = (!json && std::io::stderr().is_terminal()).then(|| {
        // Drawn from the first progress call on (below), once it knows where it starts.
        let hidden = indicatif::ProgressDrawTarget::hidden();
        let bar = indicatif::ProgressBar::with_draw_target(Some(total), hidden);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_message(format!("downloading {}", offer.version));
        bar
    });
    // Off a terminal (a journal, a log file) a bar would be noise, and silence for the
    // minutes a large download takes looks like a hang.
    let mut plain = (!json && bar.is_none() && total > 0).then(|| Milestones::new(offer));
    let cancel = crate::interrupt::token();
    let mut first = true;
    let result = up.download(
        offer,
        &mut |done, _| {
            if let Some(b) = &bar {
                b.set_position(done);
                // The first call counts the bytes kept from an earlier run (a resumed
                // `.part`, components already downloaded), which did not come at this
                // run's speed: the speed and the ETA start from there, and the bar is
                // drawn from then on (before, it showed several MiB/s and "eta 0s" for
                // minutes of a resume over a slow link).
                if std::mem::take(&mut first) {
                    b.tick();
                    b.reset_eta();
                    b.set_draw_target(indicatif::ProgressDrawTarget::stderr());
                    b.tick();
                }
            }
            if let Some(m) = &mut plain {
                m.at(done);
            }
        },
        &cancel,
    );
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    if let (Ok(()), Some(m)) = (&result, plain.filter(|m| m.started)) {
        err!(
            "evergreen: downloaded {}: {} bytes",
            m.offer.version,
            m.total
        );
    }
    result
}

/// A download's progress as a few plain stderr lines: what is to be downloaded, then one
/// at each quarter, and between them one at most every [`Milestones::EVERY`] while bytes
/// come in (a quarter of a large download on a slow link is many minutes).
struct Milestones<'a> {
    offer: &'a Offer,
    /// Whether the first line is said. It waits for the first progress call: a download
    /// refused before its first byte (a slot directory that cannot hold symbolic links,
    /// a full store) or waiting for another one's turn has not started.
    started: bool,
    /// Each component's name and the bytes downloaded when it is complete, in the order
    /// the download fetches them.
    ends: Vec<(&'a str, u64)>,
    total: u64,
    /// The last quarter said.
    quarter: u64,
    /// When the last line was said, and at how many bytes.
    said_at: std::time::Instant,
    said_bytes: u64,
}

impl<'a> Milestones<'a> {
    const EVERY: std::time::Duration = std::time::Duration::from_secs(10);

    fn new(offer: &'a Offer) -> Milestones<'a> {
        let (mut ends, mut end) = (Vec::new(), 0u64);
        for (c, a) in offer.downloads() {
            end = end.saturating_add(a.size);
            ends.push((c.name.as_str(), end));
        }
        Milestones {
            offer,
            started: false,
            ends,
            total: offer.download_size(),
            quarter: 0,
            said_at: std::time::Instant::now(),
            said_bytes: 0,
        }
    }

    /// Says what is to be downloaded.
    fn start(&mut self) {
        self.started = true;
        let sizes: Vec<String> = (self.offer.downloads())
            .map(|(c, a)| format!("{} {} bytes", c.name, a.size))
            .collect();
        err!(
            "evergreen: downloading {}: {} bytes ({})",
            self.offer.version,
            self.total,
            sizes.join(", ")
        );
        self.said_at = std::time::Instant::now();
    }

    /// `done` bytes of all are downloaded.
    fn at(&mut self, done: u64) {
        if !self.started {
            self.start();
        }
        let quarter = (u128::from(done) * 4 / u128::from(self.total.max(1))) as u64;
        let due = self.said_at.elapsed() >= Self::EVERY && done > self.said_bytes;
        // The done line follows the download's end; a quarter the last one jumped over
        // (a resumed download, a component kept from before) goes unsaid.
        if done >= self.total || !(quarter > self.quarter || due) {
            return;
        }
        // The bytes' own share, not the quarter passed: a resumed download's first line
        // may be well past it.
        let percent = (u128::from(done) * 100 / u128::from(self.total)) as u64;
        self.quarter = quarter;
        (self.said_at, self.said_bytes) = (std::time::Instant::now(), done);
        let now = (self.ends.iter())
            .find(|(_, end)| done <= *end)
            .map_or("", |(name, _)| name);
        err!(
            "evergreen: downloading {}: {percent}% ({done}/{} bytes, {now})",
            self.offer.version,
            self.total
        );
    }
}

/// Checks for `update`; with `--channel`, checks that channel and switches to it once its
/// check succeeded. A misspelt channel would fail every later check, and a switch saved
/// before the check would stay if the check never ended (Ctrl-C, a power cut). An update
/// that could not be asked for (no `--yes`, no terminal) fails before the switch: the
/// device keeps its channel.
/// With `--if-due`, `None` when the check is not due (judged once no other check runs).
fn check_on(up: &Updater, args: &UpdateArgs) -> Result<Option<Check>> {
    let (channel, version) = (args.channel.as_deref(), args.version.as_ref());
    let Some(check) = check_if(up, args.if_due, channel, version)? else {
        return Ok(None);
    };
    crate::interrupt::stop_here("what follows the check")?;
    if let Some(channel) = &args.channel {
        if matches!(check, Check::Available(_)) && !args.yes && !args.download_only {
            terminal_to_ask();
        }
        up.set_channel(channel)?;
    }
    Ok(Some(check))
}

/// `evergreen update`: check, show the diff, ask, download, install, activate.
pub fn update(config: &Path, json: bool, args: &UpdateArgs) -> Result<i32> {
    let up = updater(config, json)?;
    let Some(check) = check_on(&up, args)? else {
        // Before the check is due, a release staged for a window or an `at` time goes
        // ahead once its time has come (`Updater::activate_if_due`): the timer running
        // `update --if-due` is all many devices run, and a daily check may never fall in
        // the window. Not for a download only, nor a look at another channel or version.
        let plain = !args.download_only && args.channel.is_none() && args.version.is_none();
        if plain {
            if let Some(done @ Activation::Activated { .. }) = up.activate_if_due()? {
                print_activation(done, None, json);
                return Ok(0);
            }
        }
        say_not_due(&up, json)?;
        return Ok(0);
    };
    let offer = match check {
        Check::UpToDate {
            target_released,
            held_back,
            ..
        } => {
            let channel = args.channel.as_deref();
            say_up_to_date(&up, channel, target_released, held_back.as_ref(), json)?;
            return Ok(0);
        }
        Check::Available(offer) => offer,
    };
    let staged = match args.download_only {
        true => None,
        false => up.staged_slot(&offer)?,
    };
    if !json {
        print_offer(&offer, staged);
    }
    if !args.yes && !args.download_only && !confirm_install(&offer)? {
        if json {
            print_json(&json!({"status": "declined", "version": offer.version.to_string()}));
        } else {
            out!("not installed");
        }
        if let Some(channel) = &args.channel {
            // On stderr under --json: stdout is the one line of JSON.
            let line = format!("the device follows channel {channel} from now on (`evergreen channel` switches back)");
            match json {
                true => err!("{line}"),
                false => out!("{line}"),
            }
        }
        return Ok(0);
    }
    let plan = match staged {
        Some(_) => offer,
        None => {
            let plan = up.plan(&offer)?;
            if !args.download_only {
                // A trial ends, and a download alone may fetch the release meanwhile; what
                // else is refused (the store, the floor) is refused for a download too.
                up.check_install(&plan).map_err(|e| match e.kind() {
                    ErrorKind::InvalidState => {
                        let text = format!("{}; nothing was downloaded (`evergreen update --download-only` fetches it for later)", e.message());
                        Error::new(e.kind(), text)
                    }
                    _ => e,
                })?;
            }
            download(&up, &plan, json)?;
            plan
        }
    };
    let report = |status: &str, extra: serde_json::Value| {
        if json {
            let mut v = json!({"status": status, "version": plan.version.to_string()});
            if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
                o.extend(e.clone());
            }
            print_json(&v);
        } else {
            out!("{status}: {}", plan.version);
        }
    };
    if args.download_only {
        report("downloaded", json!({}));
        return Ok(0);
    }
    let slot = match staged {
        Some(slot) => {
            if !json {
                out!("{} is already installed in slot {slot}", plan.version);
            }
            slot
        }
        None => {
            crate::interrupt::stop_here(&format!("installing {}", plan.version))?;
            up.install(&plan)?
        }
    };
    if plan.deploy == evergreen::select::Deploy::Manual {
        report("staged", json!({"slot": slot}));
        if !json {
            out!("the deploy policy is download_only: run `evergreen activate` to switch");
        }
        return Ok(0);
    }
    crate::interrupt::stop_here(&format!(
        "activating {} (it stays installed in slot {slot} for the next update)",
        plan.version
    ))?;
    let act = up.activate(false)?;
    if !json {
        say_activation(&act, Some(&plan.version));
        return Ok(0);
    }
    match act {
        Activation::Activated { slot, .. } => report("activated", json!({"slot": slot})),
        Activation::Deferred { until, reason } => {
            report("deferred", json!({"until": until, "reason": reason}))
        }
    }
    Ok(0)
}

/// The `held_back` of an "up to date" in `--json`: `{"version", "reason"}`, or null.
fn held_json(held: Option<&HeldBack>) -> serde_json::Value {
    held.map_or(
        serde_json::Value::Null,
        |h| json!({"version": h.version.to_string(), "reason": h.reason}),
    )
}

/// After an "up to date" in text: the newer release the channel has and does not offer
/// this device, with why, so that "up to date" beside a newer release is not a puzzle.
fn say_held_back(up: &Updater, held: Option<&HeldBack>) -> Result<()> {
    let Some(h) = held else { return Ok(()) };
    out!(
        "note: {} is on the channel and not offered to this device: {}",
        h.version,
        h.reason
    );
    let skipped = up.status()?.skipped;
    if skipped.iter().any(|v| v.cmp_precedence(&h.version).is_eq()) {
        out!("  `evergreen unskip {}` offers it again", h.version);
    }
    Ok(())
}

/// After an "up to date" in text: a release staged and withheld (its rollout halted since,
/// say) is said, so that nothing waits in silence.
fn say_withheld(up: &Updater) -> Result<()> {
    for (slot, v) in &up.status()?.slots {
        if let (Some(why), Some(version)) = (&v.withheld, &v.version) {
            out!("note: {version}, staged in slot {slot}, is withheld: the newest check no longer offers it ({why})");
        }
    }
    Ok(())
}

/// Says in text what came of an activation, for `update` and `activate` alike: the
/// version, then what happens next (restart and confirm, or when the switch may go
/// ahead). `staged` is the version a deferred activation holds back.
fn say_activation(act: &Activation, staged: Option<&Version>) {
    match act {
        Activation::Activated { slot, version } => {
            out!("activated: {version}");
            out!(
                "restart into slot {slot} (the startup step, `evergreen boot` or your launcher, runs first), then run `evergreen confirm` once healthy"
            );
        }
        Activation::Deferred { until, reason } => {
            match staged {
                Some(version) => out!("deferred: {version}"),
                None => out!("deferred"),
            }
            match until {
                Some(t) => out!("  until {t}: {reason}; `evergreen activate` switches then, `evergreen activate --now` at once"),
                // Withheld: no time comes by itself, only a check that offers it again.
                None => out!("  {reason}; `evergreen update` checks again, `evergreen activate --now` switches at once"),
            }
        }
    }
}

/// `evergreen status`.
pub fn status(config: &Path, json: bool) -> Result<i32> {
    let up = updater(config, json)?;
    let s = up.status()?;
    if json {
        print_json(&serde_json::to_value(&s).unwrap_or_default());
        return Ok(0);
    }
    out!(
        "channel {}  primary {}  booted {}  security floor {}",
        s.channel,
        s.primary,
        s.booted.map_or("-".to_string(), |b| b.to_string()),
        s.security_floor
    );
    for (slot, v) in &s.slots {
        let mark = if *slot == s.primary { "*" } else { " " };
        out!(
            "{mark} slot {slot}: {:<10} {}",
            v.status,
            v.version
                .as_ref()
                .map_or("-".to_string(), ToString::to_string)
        );
        if let Some(why) = &v.withheld {
            out!("  withheld: the newest check no longer offers it ({why})");
        }
        match v.deferred.as_ref().map(|d| (d.until, &d.reason)) {
            Some((Some(until), why)) => out!("  deferred until {until}: {why}"),
            Some((None, why)) => out!("  deferred: {why} (`evergreen activate`)"),
            None => {}
        }
    }
    if let Some(t) = &s.trial {
        out!("trial: slot {} with {} start(s) left", t.slot, t.tries_left);
    }
    if !s.skipped.is_empty() {
        let list: Vec<String> = s.skipped.iter().map(ToString::to_string).collect();
        out!(
            "skipped: {} (`evergreen unskip VERSION` offers one again)",
            list.join(", ")
        );
    }
    out!(
        "last check: {}  next check due: {}",
        s.last_check.map_or("never".to_string(), |t| t.to_string()),
        s.next_check
    );
    if let Some(at) = s.last_failure.filter(|_| s.check_failures > 0) {
        out!(
            "{} failed check(s) in a row, the last at {at}: {}",
            s.check_failures,
            crate::one_line(
                s.history
                    .iter()
                    .rfind(|h| h.event == "check_failed")
                    .map_or("(its error is no longer in the history)", |h| h
                        .detail
                        .split_once(": ")
                        .map_or(h.detail.as_str(), |(_, error)| error))
            )
        );
    }
    // The newest few of the history (`--json` has all of it): what happened last, and
    // why (a rollback's reason, an activation that failed).
    let recent = s.history.len().saturating_sub(RECENT_EVENTS);
    match recent {
        0 if !s.history.is_empty() => out!("recent events (oldest first):"),
        0 => {}
        _ => out!(
            "recent events (the newest {RECENT_EVENTS} of {}, oldest first; `--json` has all):",
            s.history.len()
        ),
    }
    for h in s.history.iter().skip(recent) {
        out!("  {}  {}: {}", h.at, h.event, crate::one_line(&h.detail));
    }
    Ok(0)
}

/// How many of the newest history entries the text `status` shows.
const RECENT_EVENTS: usize = 8;

/// `evergreen boot`: the startup step.
pub fn boot(config: &Path, json: bool) -> Result<i32> {
    let up = updater(config, json)?;
    let launch = up.startup_for_launcher()?;
    let mut v = match &launch.startup {
        Startup::Normal => json!({"status": "normal"}),
        Startup::Trial { slot, tries_left } => {
            json!({"status": "trial", "slot": slot, "tries_left": tries_left})
        }
        Startup::RolledBack { from, to, reason } => {
            json!({"status": "rolled_back", "from": from, "to": to, "reason": reason})
        }
    };
    // With dir slots what runs next is started by whoever ran `boot`: this slot, the one
    // the step counted, by its own path (`current` may move under an activation at any
    // moment). Image slots were started by the bootloader already.
    if let SlotsConfig::Dir { root } = &up.config().slots {
        v["start"] = json!(launch.slot);
        let dir = launch
            .slot
            .map(|slot| path_text(&DirSlots::new(root).slot_dir(slot)));
        v["start_dir"] = json!(dir);
    }
    if json {
        print_json(&v);
    } else if let Startup::Trial { slot, tries_left } = launch.startup {
        out!("slot {slot} on trial: {tries_left} start(s) left; run `evergreen confirm` once healthy");
    }
    Ok(0)
}

/// `evergreen confirm`.
pub fn confirm(config: &Path, json: bool) -> Result<i32> {
    let up = updater(config, json)?;
    up.confirm()?;
    let s = up.status()?;
    if json {
        print_json(
            &json!({"status": "good", "slot": s.primary, "security_floor": s.security_floor}),
        );
    } else {
        out!("slot {} is good", s.primary);
    }
    Ok(0)
}

/// `evergreen rollback`.
pub fn rollback(config: &Path, json: bool) -> Result<i32> {
    let up = updater(config, json)?;
    let slot = up.rollback()?;
    if json {
        // `from`/`to` as `boot` reports an automatic rollback.
        print_json(
            &json!({"status": "rolled_back", "slot": slot, "from": slot.other(), "to": slot}),
        );
    } else {
        out!("slot {slot} is primary again; restart into it");
    }
    Ok(0)
}

/// `evergreen reinstall`: installs the installed version again into the other slot.
pub fn reinstall(config: &Path, json: bool) -> Result<i32> {
    let up = updater(config, json)?;
    let offer = up.reinstall_offer()?;
    download(&up, &offer, json)?;
    crate::interrupt::stop_here(&format!("installing {} again", offer.version))?;
    let slot = up.install(&offer)?;
    crate::interrupt::stop_here(&format!(
        "activating {} (it stays installed in slot {slot})",
        offer.version
    ))?;
    let act = up.activate(true)?;
    if json {
        let slot = match act {
            Activation::Activated { slot, .. } => Some(slot),
            Activation::Deferred { .. } => None,
        };
        print_json(
            &json!({"status": "activated", "version": offer.version.to_string(), "slot": slot}),
        );
    } else {
        out!(
            "{} reinstalled; restart, then `evergreen confirm`",
            offer.version
        );
    }
    Ok(0)
}

/// `evergreen channel C`.
pub fn channel(config: &Path, json: bool, args: &ChannelArgs) -> Result<i32> {
    let up = updater(config, json)?;
    up.set_channel(&args.channel)?;
    if json {
        print_json(&json!({"channel": args.channel}));
    } else {
        out!(
            "following channel {}; run `evergreen check` or `evergreen update`",
            args.channel
        );
    }
    Ok(0)
}

/// `evergreen activate`.
pub fn activate(config: &Path, json: bool, args: &ActivateArgs) -> Result<i32> {
    let up = updater(config, json)?;
    let act = up.activate(args.now)?;
    // The release held back is the one in the slot that was to become primary.
    let staged = match act {
        Activation::Deferred { .. } => {
            let s = up.status()?;
            s.slots.get(&s.fallback).and_then(|v| v.version.clone())
        }
        Activation::Activated { .. } => None,
    };
    print_activation(act, staged.as_ref(), json);
    Ok(0)
}

/// What `activate` prints of `act` (and `update --if-due` of an activation it made):
/// the text of [`say_activation`], or its JSON; `staged` is the version a deferral held
/// back.
fn print_activation(act: Activation, staged: Option<&Version>, json: bool) {
    if !json {
        return say_activation(&act, staged);
    }
    print_json(&match act {
        Activation::Activated { slot, version } => {
            json!({"status": "activated", "slot": slot, "version": version.to_string()})
        }
        Activation::Deferred { until, reason } => {
            let version = staged.map(|v| v.to_string());
            json!({"status": "deferred", "version": version, "until": until, "reason": reason})
        }
    });
}

/// `evergreen provision`: the one whole-block write of a bootloader environment, made
/// before the device runs, so every later write is one of the small power-safe ones.
pub fn provision(config: &Path, json: bool) -> Result<i32> {
    let cfg = Config::from_file(config)?;
    let SlotsConfig::Image { selector, .. } = &cfg.slots else {
        return Err(Error::config(
            "expected image slots with a grub or uboot selector to provision, found directory slots (nothing to prepare)",
        ));
    };
    let (kind, path) = match selector {
        SelectorConfig::Grub { env } => {
            GrubEnv::init(env)?;
            ("grub", env)
        }
        SelectorConfig::Uboot { config } => {
            UBootEnv::open(config)?
                .with_max_tries(cfg.trial.tries)
                .init()?;
            ("uboot", config)
        }
        SelectorConfig::Custom {} => {
            return Err(Error::config(
                "expected a grub or uboot selector to provision, found a custom one (the host prepares its own)",
            ))
        }
    };
    if json {
        print_json(&json!({"status": "provisioned", "selector": kind, "path": path_text(path)}));
    } else {
        out!("{kind} environment ready: {}", path.display());
    }
    Ok(0)
}

/// `evergreen skip V`.
pub fn skip(config: &Path, json: bool, args: &SkipArgs) -> Result<i32> {
    let up = updater(config, json)?;
    up.skip(&args.version)?;
    if json {
        print_json(&json!({"skipped": args.version.to_string()}));
    } else {
        out!(
            "{} will not be offered again (unless critical)",
            args.version
        );
    }
    Ok(0)
}

/// `evergreen unskip V`.
pub fn unskip(config: &Path, json: bool, args: &UnskipArgs) -> Result<i32> {
    let up = updater(config, json)?;
    let was_skipped = up.unskip(&args.version)?;
    if json {
        print_json(&json!({"unskipped": args.version.to_string(), "was_skipped": was_skipped}));
    } else if was_skipped {
        out!("{} may be offered again", args.version);
    } else {
        out!("{} was not skipped: nothing changed", args.version);
    }
    Ok(0)
}
