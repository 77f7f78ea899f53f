//! The release rules, pure functions of manifests: what a change may do (versions,
//! security versions, rollout percents, halts, stepping stones), which releases a prune
//! keeps, and which devices a channel would strand.

use super::*;

/// Every change is a new publication: clients refuse to go back in sequence. The new
/// manifest is valid for `expires_in_days`, or for as long as the channel was.
pub(super) fn bump(m: &mut Manifest, now: Timestamp, expires_in_days: Option<u32>) -> Result<()> {
    check_clock(m, now)?;
    reissue(m, now, expires_in_days)
}

/// Devices treat their clock as at least the newest `issued` they saw (DESIGN §5.1), so a
/// manifest issued before it would already be that much closer to expiry for them, and a
/// later change from the right clock would look issued before this one.
pub(super) fn check_clock(m: &Manifest, now: Timestamp) -> Result<()> {
    if now < m.issued {
        return Err(Error::config(format!(
            "channel {}: expected a clock at or after the channel's last issued {}, found {now}",
            m.channel, m.issued
        )));
    }
    Ok(())
}

/// [`bump`] without the clock check.
pub(super) fn reissue(
    m: &mut Manifest,
    now: Timestamp,
    expires_in_days: Option<u32>,
) -> Result<()> {
    let expires = match expires_in_days {
        Some(days) => expiry(now, days)?,
        None => now.plus_secs(validity_secs(m)),
    };
    m.sequence = m.sequence.checked_add(1).ok_or_else(|| {
        Error::config(format!(
            "channel {}: the sequence cannot grow any further",
            m.channel
        ))
    })?;
    m.issued = now;
    m.expires = expires;
    Ok(())
}

/// How long `m` was valid when it was signed: a change that names no expiry keeps the
/// period the operator chose (a weekly cron re-signing a 7-day channel must not find it
/// at 30 days after a rollout). A new channel gets [`DEFAULT_MANIFEST_DAYS`].
fn validity_secs(m: &Manifest) -> i64 {
    let max = i64::from(MAX_VALIDITY_DAYS) * 86_400;
    match m.expires.unix().saturating_sub(m.issued.unix()) {
        secs if m.sequence > 0 && secs > 0 => secs.min(max),
        _ => i64::from(DEFAULT_MANIFEST_DAYS) * 86_400,
    }
}

pub(super) fn single_stage(now: Timestamp, percent: f64) -> Rollout {
    Rollout {
        stages: vec![RolloutStage { at: now, percent }],
    }
}

pub(super) fn check_target(target: &str) -> Result<()> {
    if target.is_empty() || target.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(Error::config(format!(
            "expected a target such as x86_64-linux, found {target:?}"
        )));
    }
    Ok(())
}

/// Adding `target` to a published release takes the release as it is: options that would
/// change it are refused, since they would change it for every target.
pub(super) fn check_same_release(r: &Release, opts: &ReleaseOptions, target: &str) -> Result<()> {
    let mut differs = Vec::new();
    if !opts.notes.is_empty() && opts.notes != r.notes {
        differs.push("--notes".to_string());
    }
    if opts.critical && !r.critical {
        differs.push("--critical".to_string());
    }
    if opts.min_version.is_some() && opts.min_version != r.min_version {
        differs.push("--min-version".to_string());
    }
    if opts.security_version != 0 && opts.security_version != r.security_version {
        differs.push(format!(
            "--security-version {} (the release has {})",
            opts.security_version, r.security_version
        ));
    }
    if opts.rollout_percent.is_some() {
        differs.push("--rollout (use evergreen rollout for the whole release)".to_string());
    }
    if differs.is_empty() {
        return Ok(());
    }
    Err(Error::config(format!(
        "expected only components when adding target {target} to the published release {}, found {} that would change the release for every target",
        r.version,
        differs.join(", ")
    )))
}

pub(super) fn check_percent(percent: f64) -> Result<()> {
    if !(0.0..=100.0).contains(&percent) {
        return Err(Error::config(format!(
            "expected a rollout percent from 0 to 100, found {percent}"
        )));
    }
    Ok(())
}

/// The versions [`Repo::prune`] keeps: per target, the newest down to the `keep`-th
/// rolled out to everyone at `now`; then whatever else a device needs so that none is
/// offered less than before. A device may run any listed release (or one older than all
/// of them), and be inside or outside each rollout short of 100 %: if [`select::select`]
/// offers it a release now, it must still be offered one from what is kept.
///
/// Which rollouts reach a device is its own mix, and any may be halted, or a halted one
/// ramped again, later. Two questions cover every mix: a device outside all of them must
/// still be offered a release at 100 % when it is offered one now (kept: the one it is
/// offered, unless another kept one is), and a device offered none of those is offered a
/// rollout's release only from inside that rollout, so each such release it could take
/// stays. What a device in every ramp is offered stays too. That keeps each stepping
/// stone devices below a `min_version` take, and only those.
pub(super) fn releases_to_keep(m: &Manifest, keep: usize, now: Timestamp) -> BTreeSet<Version> {
    let releases = &m.releases;
    let targets: BTreeSet<&str> = releases
        .iter()
        .flat_map(|r| r.targets.keys().map(String::as_str))
        .collect();
    let mut kept = BTreeSet::new();
    for &target in &targets {
        let mut carrying: Vec<&Release> = releases
            .iter()
            .filter(|r| r.targets.contains_key(target))
            .collect();
        carrying.sort_by(|a, b| b.version.cmp_precedence(&a.version));
        let mut full = 0;
        for r in carrying {
            if full == keep {
                break;
            }
            kept.insert(r.version.clone());
            full += usize::from(rolled_out_to_everyone(r, now));
        }
    }
    // A device outside every rollout short of 100 % (or in one halted later); and, as
    // before, one in every rollout that reaches devices now (a ramp reaches everyone in
    // time), and one in every rollout that has or will have a stage above 0 % (a halted or
    // scheduled one may be ramped): what devices inside a ramp take stays too.
    let mut outside = m.clone();
    outside.releases.retain(|r| rolled_out_to_everyone(r, now));
    let later = reached(m, now, true);
    let views = [outside, reached(m, now, false), later];
    // A device in one of those rollouts alone.
    let inside_one: Vec<Manifest> = views[2]
        .releases
        .iter()
        .zip(releases)
        .filter(|(may, r)| may.rollout.is_none() && !rolled_out_to_everyone(r, now))
        .map(|(may, _)| {
            let mut view = views[0].clone();
            view.releases.push(may.clone());
            view
        })
        .collect();
    let running: Vec<Vec<(Version, u64)>> = targets
        .iter()
        .map(|target| devices(releases, target))
        .collect();
    // What each device is offered before the prune, per view: it does not change between
    // rounds, so it is asked once.
    let mut before: Vec<(usize, &str, &(Version, u64), Version)> = Vec::new();
    for (i, view) in views.iter().enumerate() {
        for (&target, running) in targets.iter().zip(&running) {
            for device in running {
                match offered(view, target, device, now) {
                    Some(v) => before.push((i, target, device, v)),
                    // Offered nothing at 100 %: a release short of it is the only way on,
                    // and only for devices in its rollout, which no other release serves.
                    None if i == 0 => kept.extend(
                        inside_one
                            .iter()
                            .filter_map(|one| offered(one, target, device, now)),
                    ),
                    None => {}
                }
            }
        }
    }
    // Each round adds the releases devices lost; an added release never takes an offer
    // away, so few rounds are needed.
    loop {
        let kept_views: Vec<Manifest> = views
            .iter()
            .map(|all| {
                let mut from_kept = all.clone();
                from_kept.releases.retain(|r| kept.contains(&r.version));
                from_kept
            })
            .collect();
        let missing: Vec<Version> = before
            .iter()
            .filter(|(i, target, device, _)| {
                offered(&kept_views[*i], target, device, now).is_none()
            })
            .map(|(.., v)| v.clone())
            .collect();
        let before_len = kept.len();
        kept.extend(missing);
        if kept.len() == before_len {
            return kept;
        }
    }
}

/// The devices of `target` a prune must not strand, as (running version, security floor):
/// one on each listed release, one at each listed `min_version` (a release pruned before,
/// or listed on another channel), with the floor of the newest release of `target` listed
/// not above it (another target's security versions are not this device's floor), and one
/// older than all of them.
fn devices(releases: &[Release], target: &str) -> Vec<(Version, u64)> {
    let floor_at = |v: &Version| {
        releases
            .iter()
            .filter(|r| r.targets.contains_key(target))
            .filter(|r| r.version.cmp_precedence(v).is_le())
            .max_by(|a, b| a.version.cmp_precedence(&b.version))
            .map_or(0, |r| r.security_version)
    };
    let listed = releases
        .iter()
        .map(|r| (r.version.clone(), r.security_version));
    let mins = releases
        .iter()
        .filter_map(|r| r.min_version.clone())
        .map(|v| {
            let floor = floor_at(&v);
            (v, floor)
        });
    std::iter::once((Version::new(0, 0, 0), 0))
        .chain(listed)
        .chain(mins)
        .collect()
}

/// The release is offered to every device at `now` (no rollout, or one at 100%).
pub(super) fn rolled_out_to_everyone(r: &Release, now: Timestamp) -> bool {
    r.rollout
        .as_ref()
        .is_none_or(|ro| ro.percent_at(now) >= 100.0)
}

/// The channel as a device in every rollout that has started sees it: a ramp reaches
/// everyone in time, a halt (0 %) no one. With `later`, a rollout with any stage above
/// 0 % (past or scheduled) reaches everyone: a halted release may be ramped up again.
fn reached(m: &Manifest, now: Timestamp, later: bool) -> Manifest {
    let mut all = m.clone();
    for r in &mut all.releases {
        let reaches = r.rollout.as_ref().is_some_and(|ro| {
            ro.percent_at(now) > 0.0 || (later && ro.stages.iter().any(|s| s.percent > 0.0))
        });
        if reaches {
            r.rollout = None;
        }
    }
    all
}

/// What [`select::select`] offers a device of `target` running `(version, security
/// version)` on `channel` (as [`reached`] gives it), with no skip or failure. Its id is
/// empty: in the views of a channel asked here every rollout is lifted, at 100 % or at
/// 0 %, so no id decides (see [`offered_to`] for one).
pub(super) fn offered(
    channel: &Manifest,
    target: &str,
    device: &(Version, u64),
    now: Timestamp,
) -> Option<Version> {
    offered_to(channel, target, "", device, now)
}

/// [`offered`] to the device `device_id`, which decides where a rollout short of 100 %
/// reaches.
pub(super) fn offered_to(
    channel: &Manifest,
    target: &str,
    device_id: &str,
    (version, security): &(Version, u64),
    now: Timestamp,
) -> Option<Version> {
    let device = select::Device {
        product: &channel.product,
        target,
        device_id,
        installed: Some(version),
        security_floor: *security,
        skipped: &[],
        failed: &[],
    };
    match select::select(channel, &device, &select::Policy::default(), now) {
        Ok(select::Decision::Update(choice)) => Some(choice.version),
        _ => None,
    }
}

/// Devices compare versions by precedence: two builds of one version are the same.
pub(super) fn same_version(a: &Version, b: &Version) -> bool {
    a.cmp_precedence(b).is_eq()
}

/// The index of `version` in `m`, found by precedence. Another build of it is an error
/// naming the listed one, not a match: the operator may mean a build that is not there.
pub(super) fn listed_release(m: &Manifest, version: &Version) -> Result<usize> {
    let i = m
        .releases
        .iter()
        .position(|r| same_version(&r.version, version))
        .ok_or_else(|| no_such_version(version, &m.channel))?;
    let listed = &m.releases[i].version;
    if listed != version {
        return Err(Error::new(
            ErrorKind::NoSuchVersion,
            format!(
                "expected version {version} on channel {}, found {listed}, another build of it (name it as listed)",
                m.channel
            ),
        ));
    }
    Ok(i)
}

/// Refuses to promote `r` at 100 % when its rollout on `from` stands at 0 % at `now`, as
/// devices there see it ([`Rollout::percent_at`]): halted (a release is pulled that way
/// when it turns out broken, or released at 0 %), or not started yet (its first stage is
/// still to come), which would reach everyone on `to` before anyone on `from`.
pub(super) fn check_not_halted(r: &Release, from: &str, now: Timestamp) -> Result<()> {
    let Some(rollout) = r.rollout.as_ref().filter(|ro| ro.percent_at(now) <= 0.0) else {
        return Ok(());
    };
    let mut past: Vec<&RolloutStage> = rollout.stages.iter().filter(|s| s.at <= now).collect();
    past.sort_by_key(|s| s.at);
    // Since the first of the 0 % stages in force: a second halt is no news.
    let found = match past.iter().rev().take_while(|s| s.percent <= 0.0).last() {
        Some(since) => format!("halted there (0% since {})", since.at),
        None => match rollout.stages.iter().map(|s| s.at).min() {
            Some(first) => format!("not started there yet (0% until its first stage at {first})"),
            None => "at 0% there (a rollout with no stage)".to_owned(),
        },
    };
    Err(Error::config(format!(
        "expected a release rolled out on channel {from} to promote, found {} {found}; ramp it there first, or give --rollout PERCENT to promote it anyway",
        r.version
    )))
}

/// A device below `min_version` cannot take the release, and one at or above the
/// release's version does not need it: a `min_version` not below it makes a release no
/// device could ever update to.
pub(super) fn check_min_version(version: &Version, min: &Version) -> Result<()> {
    if min.cmp_precedence(version).is_lt() {
        return Ok(());
    }
    Err(Error::config(format!(
        "expected a min_version below the release's version {version}, found {min} (no device could update to it)"
    )))
}

/// A device's security floor rises to the security version of each release it confirms,
/// and nothing below the floor is installed. So for each target, a release's security
/// version may be neither below that of an older release (devices that confirmed the
/// older could never install it) nor above that of a newer one (devices that confirm it
/// could never install the newer). Releases without `target` reach other devices.
pub(super) fn check_security_order(
    m: &Manifest,
    version: &Version,
    security_version: u64,
    target: &str,
) -> Result<()> {
    let older = highest_older(&m.releases, version, target);
    if let Some(r) = older.filter(|r| r.security_version > security_version) {
        return Err(Error::config(format!(
            "expected a security version of at least {} for {version} on {target} (that of the older release {} on channel {}: devices that confirmed it could never install {version}), found {security_version}",
            r.security_version, r.version, m.channel
        )));
    }
    let newer = m
        .releases
        .iter()
        .filter(|r| r.targets.contains_key(target))
        .filter(|r| r.version.cmp_precedence(version).is_gt())
        .min_by_key(|r| r.security_version);
    if let Some(r) = newer.filter(|r| r.security_version < security_version) {
        return Err(Error::config(format!(
            "expected a security version of at most {} for {version} on {target} (that of the newer release {} on channel {}: devices that confirmed {version} could never install it), found {security_version}",
            r.security_version, r.version, m.channel
        )));
    }
    Ok(())
}

/// Of `releases`, the one of `target` older than `version` with the highest security
/// version: the floor that devices which confirmed one of them bring to `version`.
pub(super) fn highest_older<'r>(
    releases: &'r [Release],
    version: &Version,
    target: &str,
) -> Option<&'r Release> {
    releases
        .iter()
        .filter(|r| r.targets.contains_key(target))
        .filter(|r| r.version.cmp_precedence(version).is_lt())
        .max_by_key(|r| r.security_version)
}

/// A promoted release with a `min_version` must not strand the devices of the target
/// channel below it. Adding a release whose `min_version` a device does not meet never
/// changes what `select` offers that device, so what counts is whether a device running a
/// release listed there below `min_version` (for one of the release's targets) is offered
/// *something*, a step towards the release, now that a newer release exists that it can't
/// take. A device already stranded by another release's `min_version` before is not this
/// promotion's doing.
pub(super) fn check_stepping_stone(m: &Manifest, release: &Release, now: Timestamp) -> Result<()> {
    let Some(min) = &release.min_version else {
        return Ok(());
    };
    let before = Reach::new(m, now);
    let mut promoted = release.clone();
    // Its rollout will grow: devices outside it now are the ones it strands later.
    promoted.rollout = None;
    let mut with = m.clone();
    with.releases.push(promoted);
    let after = Reach::new(&with, now);
    for target in release.targets.keys() {
        let below = m
            .releases
            .iter()
            .filter(|r| r.targets.contains_key(target))
            .filter(|r| r.version.cmp_precedence(min).is_lt());
        for running in below {
            let device = (&running.version, running.security_version);
            if after.strands(target, device) && !before.strands(target, device) {
                return Err(Error::config(format!(
                    "expected a stepping stone on channel {} for {target} devices running {} (below {min}, the min_version of {}): a release from {min} up to {} rolled out to them, found none, so they would be offered nothing; promote or ramp one first",
                    m.channel, running.version, release.version, release.version
                )));
            }
        }
    }
    Ok(())
}

/// The devices `m`'s channel strands at `now`: for each target, the listed releases whose
/// devices [`select::select`] offers nothing though it would offer them a newer release
/// if no `min_version` held them back (a device in every rollout that has started, as
/// `promote` and `release` count it), then the devices running a version older than every
/// listed release that are stranded the same way ([`StrandedDevices::Below`], one entry
/// per target: they all see the same channel up to the lowest `min_version` met, so a
/// security floor of 0 stands for them all). Those two refuse to strand devices of listed
/// releases; a halt (`rollout` to 0 %) of the only stepping stone is how a broken stone is
/// stopped, so it goes through, and this names the devices left waiting for another
/// stone, as it names those a `prune` left below every release it kept.
///
/// Devices running an unlisted version between two listed releases of a target (one
/// pruned between them) need no entry of their own. The releases newer than theirs are
/// those newer than the listed one below them, L; a floor up to the security version of
/// the listed one above them (the most the security order let a release between the two
/// carry) leaves none of those out, since each newer one has at least that security
/// version; and a `min_version` that L meets, they meet. So they are offered something
/// whenever L's devices are, and when L's are stranded, the `Running(L)` entry stands for
/// them, up to the lowest `min_version` of the releases that reach them (from there on
/// they are offered something). A device whose floor is above the next listed release's
/// security version (it confirmed a release pruned before that one was published, so the
/// order check never compared the two, or one from another channel) cannot install that
/// release at all, and may be stranded where L's devices are not: its floor is not in the
/// manifest, as that of devices below every listed release is not (0 stands for them).
///
/// ```
/// # use evergreen::manifest::ArtifactKind;
/// # use evergreen::publish::{stranded, ReleaseOptions, Repo, Signing};
/// # use evergreen::trust::{KeySet, SecretKey};
/// # let dir = tempfile::tempdir().unwrap();
/// # let key = SecretKey::generate().unwrap();
/// # let keys = KeySet::new(vec![key.public()], 1).unwrap();
/// # let now: evergreen::Timestamp = "2026-11-22T10:00:00Z".parse().unwrap();
/// # let repo = Repo::init(dir.path().join("repo"), "com.acme.app", &keys, &keys, &[&key], 365, now).unwrap();
/// # let app = dir.path().join("app.bin");
/// # std::fs::write(&app, b"the program").unwrap();
/// # let files = [("app", app.as_path(), ArtifactKind::File)];
/// let mut options = ReleaseOptions::new(now);
/// for version in ["1.0.0", "1.5.0"] {
///     repo.release("stable", &version.parse().unwrap(), "x", &files, &options, &[&key]).unwrap();
/// }
/// options.min_version = Some("1.5.0".parse().unwrap());
/// repo.release("stable", &"2.0.0".parse().unwrap(), "x", &files, &options, &[&key]).unwrap();
///
/// // 1.5.0 turns out broken: halting it leaves devices on 1.0.0 offered nothing.
/// let m = repo.rollout("stable", &"1.5.0".parse().unwrap(), 0.0, &Signing::new(&[&key], now)).unwrap();
/// let left = stranded(&m, now);
/// let running = evergreen::publish::StrandedDevices::Running("1.0.0".parse().unwrap());
/// assert_eq!((left[0].target.as_str(), &left[0].devices), ("x", &running));
/// ```
pub fn stranded(m: &Manifest, now: Timestamp) -> Vec<Stranded> {
    // Only a `min_version` strands a device; without one the answer needs no selection
    // (which is per listed release over the whole channel: quadratic in its length).
    if m.releases.iter().all(|r| r.min_version.is_none()) {
        return Vec::new();
    }
    let reach = Reach::new(m, now);
    let mut found = Vec::new();
    for running in &m.releases {
        for target in running.targets.keys() {
            if reach.strands(target, (&running.version, running.security_version)) {
                found.push(Stranded {
                    target: target.clone(),
                    devices: StrandedDevices::Running(running.version.clone()),
                });
            }
        }
    }
    // One more selection per target, for a device below every listed release.
    let mut targets: Vec<&String> = m.releases.iter().flat_map(|r| r.targets.keys()).collect();
    targets.sort();
    targets.dedup();
    for target in targets {
        if let Some(below) = reach.strands_below_all(target) {
            found.push(Stranded {
                target: target.clone(),
                devices: StrandedDevices::Below(below),
            });
        }
    }
    found
}

/// What [`select::select`] offers the devices of a channel, as a device in every rollout
/// that has started sees it (a ramp reaches everyone in time, a halt no one), with and
/// without the channel's `min_version`s.
pub(super) struct Reach {
    now: Timestamp,
    with_mins: Manifest,
    without_mins: Manifest,
}

impl Reach {
    pub(super) fn new(m: &Manifest, now: Timestamp) -> Reach {
        let with_mins = reached(m, now, false);
        let mut without_mins = with_mins.clone();
        for r in &mut without_mins.releases {
            r.min_version = None;
        }
        Reach {
            now,
            with_mins,
            without_mins,
        }
    }

    /// A device of `target` running `(version, security version)` is offered nothing only
    /// because of a `min_version` it does not meet.
    pub(super) fn strands(&self, target: &str, (version, security): (&Version, u64)) -> bool {
        let device = (version.clone(), security);
        offered(&self.with_mins, target, &device, self.now).is_none()
            && offered(&self.without_mins, target, &device, self.now).is_some()
    }

    /// The version below which the devices of `target` running no listed release are
    /// stranded, when any are. Below the oldest listed release a device meets the
    /// `min_version`s up to its own and nothing else changes: so the lowest version of
    /// all stands for every one of them, and when it is stranded, those up to the lowest
    /// `min_version` of a release that reaches them (or the oldest listed release) are.
    fn strands_below_all(&self, target: &str) -> Option<Version> {
        let lowest = Version {
            pre: semver::Prerelease::new("0").ok()?,
            ..Version::new(0, 0, 0)
        };
        let releases = || {
            self.with_mins
                .releases
                .iter()
                .filter(|r| r.targets.contains_key(target))
        };
        let oldest = releases()
            .map(|r| &r.version)
            .min_by(|a, b| a.cmp_precedence(b))?;
        if oldest.cmp_precedence(&lowest).is_le() || !self.strands(target, (&lowest, 0)) {
            return None;
        }
        // Those that reach every device here: `reached` lifted every rollout that has started.
        let mins = releases()
            .filter(|r| rolled_out_to_everyone(r, self.now))
            .filter_map(|r| r.min_version.as_ref());
        std::iter::once(oldest)
            .chain(mins)
            .min_by(|a, b| a.cmp_precedence(b))
            .cloned()
    }
}

/// The version of `name` in the newest release of `m` for `target` that installs it from
/// `artifact` the same way a device's diff calls unchanged: the same sha256, kind and file
/// name. A file renamed with the same bytes is a new version of its component.
pub(super) fn unchanged_version(
    m: &Manifest,
    target: &str,
    name: &str,
    artifact: &Artifact,
) -> Option<String> {
    m.releases
        .iter()
        .filter_map(|r| Some((&r.version, r.targets.get(target)?.components.get(name)?)))
        .filter(|(_, c)| {
            let a = &c.artifact;
            // The same blob published compressed and then as it is lands differently.
            (&a.sha256, a.kind, &a.name, &a.compression)
                == (
                    &artifact.sha256,
                    artifact.kind,
                    &artifact.name,
                    &artifact.compression,
                )
        })
        .max_by(|a, b| a.0.cmp(b.0))
        .map(|(_, c)| c.version.clone())
}
