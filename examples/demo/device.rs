//! The device's side: one `Updater` over dir slots in the temp dir, a simulated clock, and
//! an "app" whose start runs the startup step and a health check, confirming when healthy.

use super::narrate::{ensure, expect_eq, Console, Failure, Outcome};
use super::world::{SimClock, PRODUCT, TARGET};
use evergreen::fetch::CancelToken;
use evergreen::stage::ComponentOp;
use evergreen::{Activation, Check, Config, Offer, Startup, Status, Updater};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The device's fixed rollout identity (normally `/etc/machine-id`).
pub const DEVICE_ID: &str = "gateway-0007";

/// What one start of the app did.
#[derive(Debug, PartialEq, Eq)]
pub enum AppRun {
    /// Not on trial: it just ran.
    Ran,
    /// On trial and healthy: it confirmed itself.
    Confirmed,
    /// On trial and unhealthy: it exited without confirming.
    Unhealthy,
    /// The startup step rolled back; the restart runs the previous version.
    RolledBack,
}

/// Where a device lives and what it is wired to: everything its config is made from.
struct Setup {
    dir: PathBuf,
    device_id: String,
    server: String,
    pinned_root: PathBuf,
    clock: SimClock,
    console: Arc<Console>,
}

impl Setup {
    /// The device's config JSON, as a host would ship it, with `deploy` as its policy.
    fn config(&self, deploy: Value) -> Value {
        json!({
            "product": PRODUCT,
            "server": self.server,
            "channel": "stable",
            "target": TARGET,
            "trust": {"root": self.pinned_root},
            "state_dir": self.dir.join("state"),
            "slots": {"kind": "dir", "root": self.app_root()},
            "device_id": self.device_id,
            "deploy": deploy,
            "trial": {"tries": 3},
            "limits": {"retries": 1, "retry_backoff_ms": 10},
        })
    }

    fn app_root(&self) -> PathBuf {
        self.dir.join("app")
    }

    /// An updater over this config, reporting events to the console and reading the
    /// simulated clock.
    fn updater(&self, deploy: Value) -> Outcome<Updater> {
        let config = self.config(deploy);
        self.console.say(format!(
            "device config: deploy {}, trial tries {}, device_id {}",
            config["deploy"], config["trial"]["tries"], self.device_id
        ));
        let console = Arc::clone(&self.console);
        let clock = self.clock.clone();
        Ok(Updater::builder(Config::from_json(&config.to_string())?)
            .on_event(move |e| console.event(e))
            .clock(move || clock.now())
            .build()?)
    }
}

/// One device: the updater the host application embeds, and its setup.
pub struct Device {
    /// The updater, as the host application embeds it.
    pub updater: Updater,
    setup: Setup,
}

impl Device {
    /// A device `device_id` under `dir` that ships with the repository's first root and
    /// follows stable.
    pub fn new(
        device_id: &str,
        dir: &Path,
        server: &str,
        repo_root: &Path,
        clock: SimClock,
        console: Arc<Console>,
    ) -> Outcome<Device> {
        std::fs::create_dir_all(dir)?;
        let pinned_root = dir.join("root.json");
        std::fs::copy(repo_root.join("root/1.json"), &pinned_root)?;
        let setup = Setup {
            dir: dir.to_path_buf(),
            device_id: device_id.to_string(),
            server: server.to_string(),
            pinned_root,
            clock,
            console,
        };
        let updater = setup.updater(json!({"policy": "immediate"}))?;
        Ok(Device { updater, setup })
    }

    /// Rebuilds the updater with a new deploy policy, as a host does after its config
    /// changed; the state on disk carries over.
    pub fn reconfigure(&mut self, deploy: Value) -> Outcome {
        self.updater = self.setup.updater(deploy)?;
        Ok(())
    }

    /// The device's rollout identity (`device_id` in its config).
    pub fn id(&self) -> &str {
        &self.setup.device_id
    }

    /// The device's status (slots, versions, trial).
    pub fn status(&self) -> Outcome<Status> {
        Ok(self.updater.status()?)
    }

    /// The version in the primary slot.
    pub fn running(&self) -> Outcome<Option<String>> {
        let s = self.status()?;
        Ok(s.slots[&s.primary]
            .version
            .as_ref()
            .map(ToString::to_string))
    }

    /// Checks the device's channel and expects an offer of exactly `version`.
    pub fn expect_offer(&self, version: &str) -> Outcome<Offer> {
        self.expect_offer_on(None, version)
    }

    /// Checks `channel` (the device's own with `None`) through the server, without moving
    /// the device to it, and expects an offer of exactly `version`.
    pub fn expect_offer_on(&self, channel: Option<&str>, version: &str) -> Outcome<Offer> {
        match self.updater.check_with(channel, None)? {
            Check::Available(offer) => {
                expect_eq("offered version", offer.version.to_string(), version.into())?;
                Ok(offer)
            }
            Check::UpToDate { .. } => Err(Failure(format!(
                "check: expected an offer of {version}, found up to date"
            ))),
        }
    }

    /// Checks the device's channel and expects nothing to do.
    pub fn expect_up_to_date(&self) -> Outcome {
        match self.updater.check()? {
            Check::UpToDate { .. } => Ok(()),
            Check::Available(offer) => Err(Failure(format!(
                "check: expected up to date, found an offer of {}",
                offer.version
            ))),
        }
    }

    /// Plans, downloads (with a progress bar), installs and tries to activate `offer`.
    pub fn update(&self, offer: &Offer) -> Outcome<Activation> {
        let plan = self.updater.plan(offer)?;
        self.show_diff(&plan);
        self.download(&plan)?;
        let slot = self.updater.install(&plan)?;
        self.setup.console.say(format!(
            "installed {} into the inactive slot {slot}",
            plan.version
        ));
        Ok(self.updater.activate(false)?)
    }

    /// Prints the component diff shown before approval.
    fn show_diff(&self, plan: &Offer) {
        let from = plan
            .current
            .as_ref()
            .map_or("nothing".into(), |v| v.to_string());
        self.setup.console.say(format!(
            "update {from} → {} from {}:",
            plan.version, plan.channel
        ));
        for c in &plan.components {
            let versions = match (&c.from, &c.to) {
                (Some(a), Some(b)) if a != b => format!("{a} → {b}"),
                (_, Some(v)) | (Some(v), None) => v.clone(),
                (None, None) => String::new(),
            };
            let note = match c.op {
                ComponentOp::Unchanged if c.artifact.is_none() => "from the kept download",
                ComponentOp::Removed => "left out of the new slot",
                _ => "downloaded",
            };
            self.setup.console.say(format!(
                "  {:<10} {:<9} {versions:<16} {note}",
                c.name,
                c.op.as_str()
            ));
        }
    }

    fn download(&self, plan: &Offer) -> Outcome {
        let before = self.updater.fetch_stats().bytes_received;
        let bar = self.setup.console.start_bar(plan.download_size());
        let mut positions = Vec::new();
        let result = self.updater.download(
            plan,
            &mut |done, _total| {
                bar.set_position(done);
                positions.push(done);
            },
            &CancelToken::new(),
        );
        self.setup.console.finish_bar();
        result?;
        expect_bar_moves(plan, &positions)?;
        let got = self.updater.fetch_stats().bytes_received - before;
        self.setup.console.say(format!(
            "downloaded {} bytes for {} bytes of changed artifacts (verified SHA-256)",
            got,
            plan.download_size()
        ));
        // Dir slots keep each download: an unchanged component is installed from it, so
        // what crosses the wire is the added and modified components' artifacts, no more.
        let again: Vec<&str> = plan
            .components
            .iter()
            .filter(|c| c.op == ComponentOp::Unchanged && c.artifact.is_some())
            .map(|c| c.name.as_str())
            .collect();
        expect_eq(
            "unchanged components downloaded again",
            again.as_slice(),
            &[][..],
        )?;
        let changed: u64 = plan
            .components
            .iter()
            .filter(|c| matches!(c.op, ComponentOp::Added | ComponentOp::Modified))
            .filter_map(|c| c.artifact.as_ref().map(|a| a.size))
            .sum();
        expect_eq("bytes downloaded", got, changed)
    }

    /// Starts the app once: the startup step first, then its health check, which confirms
    /// the release when it passes while on trial.
    pub fn start_app(&self) -> Outcome<AppRun> {
        match self.updater.startup()? {
            Startup::Normal => {
                self.setup
                    .console
                    .say(format!("app {} runs", self.app_file("VERSION")?));
                Ok(AppRun::Ran)
            }
            Startup::Trial { .. } if self.app_file("health")? == "ok" => {
                self.updater.confirm()?;
                Ok(AppRun::Confirmed)
            }
            Startup::Trial { .. } => {
                self.setup.console.say(format!(
                    "app {} fails its health check and exits without confirming",
                    self.app_file("VERSION")?
                ));
                Ok(AppRun::Unhealthy)
            }
            Startup::RolledBack { .. } => Ok(AppRun::RolledBack),
        }
    }

    /// The primary slot, through the `current` link the launcher follows.
    pub fn current(&self) -> PathBuf {
        self.setup.app_root().join("current")
    }

    /// The version the app in the primary slot says it is: what a start runs.
    pub fn app_version(&self) -> Outcome<String> {
        self.app_file("VERSION")
    }

    /// A file of the app component in the primary slot.
    fn app_file(&self, name: &str) -> Outcome<String> {
        let path = self.current().join("app").join(name);
        Ok(std::fs::read_to_string(path)?.trim().to_string())
    }
}

/// Checks the positions the download reported to its progress bar: they never go back,
/// end at the total, and at least one falls inside an artifact (every release's app is
/// larger than one chunk), so the bar moves while a download runs, not only from one
/// artifact to the next.
fn expect_bar_moves(plan: &Offer, positions: &[u64]) -> Outcome {
    let total = plan.download_size();
    let ends: Vec<u64> = plan
        .downloads()
        .map(|(_, a)| a.size)
        .scan(0, |end, size| {
            *end += size;
            Some(*end)
        })
        .collect();
    ensure(positions.windows(2).all(|w| w[0] <= w[1]), || {
        format!("progress: expected positions that never go back, found {positions:?}")
    })?;
    expect_eq(
        "progress at the end",
        positions.last().copied(),
        Some(total),
    )?;
    ensure(
        positions
            .iter()
            .any(|p| *p > 0 && *p < total && !ends.contains(p)),
        || {
            format!(
                "progress: expected a position inside an artifact (the bar moving while it \
                 downloads), found only {positions:?} for artifacts ending at {ends:?}"
            )
        },
    )
}
