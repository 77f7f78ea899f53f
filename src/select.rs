//! Which release to offer, and when to activate it (DESIGN §5.2, §5.3).
//!
//! Everything here is a pure function of its inputs and of a `now` the caller fixes once
//! per run: no clock, no files, no network, no randomness of its own. That keeps the rules
//! table-testable and makes one run's decisions consistent with each other.

use crate::error::{Error, ErrorKind, Result};
use crate::manifest::{Manifest, Release};
use crate::time::{parse_offset, Timestamp};
use semver::Version;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;

/// What the selection needs to know about this device.
#[derive(Debug, Clone, Copy)]
pub struct Device<'a> {
    /// Product id (part of the rollout bucket).
    pub product: &'a str,
    /// The device's compatibility target, e.g. `x86_64-linux`.
    pub target: &'a str,
    /// Stable device id (part of the rollout bucket), e.g. `/etc/machine-id`.
    pub device_id: &'a str,
    /// The installed version; `None` when nothing is installed yet.
    pub installed: Option<&'a Version>,
    /// Anti-rollback floor: nothing with a lower `security_version` is installed.
    pub security_floor: u64,
    /// Versions the user chose to skip (critical releases are offered anyway).
    pub skipped: &'a [Version],
    /// Versions that were rolled back on this device; they are never offered again.
    pub failed: &'a [Version],
}

/// Local policy from the config or the call.
#[derive(Debug, Clone, Copy, Default)]
pub struct Policy<'a> {
    /// Select exactly this version, newer or older than the installed one.
    pub pin: Option<&'a Version>,
    /// The pin is a standing one (the config's `pin_version`, asked at every check), not
    /// the request of one call. A standing pin does not bring back a version that failed
    /// on this device: it would be installed, fail its trial and roll back at every check.
    /// A call's own pin may (its caller asked for that version now).
    pub pin_is_standing: bool,
    /// Move to an older release when the channel's newest is older than the installed
    /// version (a switch to a safer channel, or a release pulled from the channel).
    pub allow_downgrade: bool,
}

/// The outcome of [`select`].
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Nothing to install.
    UpToDate,
    /// Install this release.
    Update(Choice),
}

/// The release chosen by [`select`] and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Choice {
    /// The version to install.
    pub version: Version,
    /// The version is older than the installed one.
    pub downgrade: bool,
    /// A forced update: not skippable, held only by a maintenance window. Set when the
    /// chosen release is critical, and also when a critical release newer than the
    /// installed one is passed over for it or reached through it (a stepping stone).
    pub critical: bool,
    /// A newer release exists, but its `min_version` is above the installed version; this
    /// one is the step towards it.
    pub stepping_stone: bool,
}

/// Chooses the release to offer this device now (DESIGN §5.2).
///
/// Candidates are the releases with an entry for `device.target`. A pin selects exactly its
/// release (failing with `no_such_version`, `incompatible_target` or `security_floor`).
/// Otherwise releases below the security floor, skipped (unless critical, or a stepping
/// stone a critical release needs), failed on this device or outside this device's rollout
/// are left out; the newest remaining one that the
/// installed version may move to (its `min_version` is met) and that is newer than the
/// installed version is the update. When every release of the channel is older than the
/// installed version, the device stays put unless `policy.allow_downgrade`.
///
/// Versions are ordered by semver precedence: pre-releases as the semver spec says
/// (`1.1.0-rc.9 < 1.1.0-rc.10 < 1.1.0`), and build metadata ignored, so `1.0.0+b` is
/// neither newer than an installed `1.0.0+a` nor a way back for a release that failed or
/// was skipped as `1.0.0` (a verified manifest never lists two of them: [`crate::manifest::verify`]).
///
/// ```
/// use evergreen::select::{select, Decision, Device, Policy};
/// let manifest: evergreen::manifest::Manifest = serde_json::from_str(r#"{
///   "type": "manifest", "product": "p", "channel": "stable", "sequence": 1,
///   "issued": "2026-11-01T00:00:00Z", "expires": "2026-12-01T00:00:00Z",
///   "releases": [{"version": "1.1.0", "targets": {"x86_64-linux": {"components": {}}}}]
/// }"#).unwrap();
/// let installed = semver::Version::new(1, 0, 0);
/// let device = Device { product: "p", target: "x86_64-linux", device_id: "d1",
///     installed: Some(&installed), security_floor: 0, skipped: &[], failed: &[] };
/// let now = "2026-11-22T00:00:00Z".parse().unwrap();
/// match select(&manifest, &device, &Policy::default(), now).unwrap() {
///     Decision::Update(choice) => assert_eq!(choice.version.to_string(), "1.1.0"),
///     Decision::UpToDate => unreachable!(),
/// }
/// ```
pub fn select(
    manifest: &Manifest,
    device: &Device<'_>,
    policy: &Policy<'_>,
    now: Timestamp,
) -> Result<Decision> {
    match policy.pin {
        Some(pin) if policy.pin_is_standing && listed(device.failed, pin) => Ok(Decision::UpToDate),
        Some(pin) => select_pinned(manifest, device, pin),
        None => Ok(select_newest(manifest, device, policy.allow_downgrade, now)),
    }
}

/// Why `manifest` no longer offers `version`, a release this device staged from the
/// manifest's channel, to `device` at `now`; `None` while it does: listed for the device's
/// target, within its rollout, not skipped (unless critical), not below the security
/// floor and not failed here. A release halted, withdrawn or skipped after it was staged
/// must not be activated later by the deploy policy alone (DESIGN §5.3); nor one whose
/// `min_version` rose past the installed version, nor a downgrade the channel no longer
/// calls for.
///
/// ```
/// use evergreen::manifest::Manifest;
/// use evergreen::select::{withheld, Device};
/// let manifest: Manifest = serde_json::from_str(r#"{
///   "type": "manifest", "product": "com.acme.app", "channel": "stable", "sequence": 2,
///   "issued": "2026-11-22T00:00:00Z", "expires": "2026-12-22T00:00:00Z",
///   "releases": [{"version": "1.1.0",
///     "rollout": {"stages": [{"at": "2026-11-21T00:00:00Z", "percent": 0}]},
///     "targets": {"x86_64-linux": {"components": {}}}}]
/// }"#).unwrap();
/// let installed = semver::Version::new(1, 0, 0);
/// let device = Device {
///     product: "com.acme.app", target: "x86_64-linux", device_id: "dev-1",
///     installed: Some(&installed), security_floor: 0, skipped: &[], failed: &[],
/// };
/// let now = "2026-11-22T00:00:00Z".parse().unwrap();
/// let why = withheld(&manifest, &device, false, &semver::Version::new(1, 1, 0), now);
/// assert_eq!(why.as_deref(), Some("its rollout no longer includes this device (halted, or narrowed)"));
/// ```
pub fn withheld(
    manifest: &Manifest,
    device: &Device<'_>,
    allow_downgrade: bool,
    version: &Version,
    now: Timestamp,
) -> Option<String> {
    let Some(release) = manifest
        .release(version)
        .filter(|r| r.targets.contains_key(device.target))
    else {
        return Some(format!(
            "the channel no longer lists it for target {}",
            device.target
        ));
    };
    // A downgrade is offered only while the whole channel is behind the installed
    // version, and only with `allow_downgrade` ([`select`]).
    if let Some(cur) = device.installed.filter(|cur| newer(cur, version)) {
        let behind = (manifest.releases.iter())
            .filter(|r| r.targets.contains_key(device.target))
            .all(|r| newer(cur, &r.version));
        if !allow_downgrade || !behind {
            return Some(format!(
                "it is older than the installed {cur}, and the channel no longer takes the device back down"
            ));
        }
    }
    hold(release, device, now, true)
}

/// The newest release of the channel for this device's target that is newer than the
/// installed version (any, when nothing is installed) and is not offered to `device` at
/// `now`, and why: what a check that finds the device up to date says, so that "up to
/// date" with a newer release on the channel has its reason (a rollout that has not reached
/// the device, a skip, a failure here, the security floor, a `min_version` with no step
/// towards it). `None` when nothing newer is held back.
///
/// ```
/// use evergreen::manifest::Manifest;
/// use evergreen::select::{held_back, Device};
/// let manifest: Manifest = serde_json::from_str(r#"{
///   "type": "manifest", "product": "com.acme.app", "channel": "stable", "sequence": 2,
///   "issued": "2026-11-22T00:00:00Z", "expires": "2026-12-22T00:00:00Z",
///   "releases": [{"version": "1.1.0", "targets": {"x86_64-linux": {"components": {}}}}]
/// }"#).unwrap();
/// let installed = semver::Version::new(1, 0, 0);
/// let skipped = [semver::Version::new(1, 1, 0)];
/// let device = Device {
///     product: "com.acme.app", target: "x86_64-linux", device_id: "dev-1",
///     installed: Some(&installed), security_floor: 0, skipped: &skipped, failed: &[],
/// };
/// let now = "2026-11-22T00:00:00Z".parse().unwrap();
/// let held = held_back(&manifest, &device, now).unwrap();
/// assert_eq!((held.version.to_string(), held.reason.as_str()), ("1.1.0".into(), "it was skipped"));
/// ```
pub fn held_back(manifest: &Manifest, device: &Device<'_>, now: Timestamp) -> Option<HeldBack> {
    let release = (manifest.releases.iter())
        .filter(|r| r.targets.contains_key(device.target))
        .filter(|r| device.installed.is_none_or(|cur| newer(&r.version, cur)))
        .max_by(|a, b| a.version.cmp_precedence(&b.version))?;
    let reason = hold(release, device, now, false)?;
    Some(HeldBack {
        version: release.version.clone(),
        reason,
    })
}

/// A release newer than the installed one that a check does not offer, and why
/// ([`held_back`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldBack {
    /// The newest such release.
    pub version: Version,
    /// Why it is not offered, e.g. `it was skipped`.
    pub reason: String,
}

/// Why `release` may not go to `device` at `now`, by the rules of one release alone (its
/// `min_version`, a failure here, the security floor, a skip, the rollout). `staged`: the
/// device staged it from an earlier check, so what holds it now came since.
fn hold(release: &Release, device: &Device<'_>, now: Timestamp, staged: bool) -> Option<String> {
    let since = if staged { "now " } else { "" };
    if !min_version_met(release, device.installed) {
        let min = release.min_version.as_ref().map(ToString::to_string);
        return Some(format!(
            "it {since}needs {} or newer installed first (its min_version)",
            min.unwrap_or_default()
        ));
    }
    if listed(device.failed, &release.version) {
        return Some("it failed on this device".into());
    }
    if release.security_version < device.security_floor {
        return Some(format!(
            "its security version {} is below this device's floor {}",
            release.security_version, device.security_floor
        ));
    }
    if !release.critical && listed(device.skipped, &release.version) {
        return Some("it was skipped".into());
    }
    if in_rollout(release, device.product, device.device_id, now) {
        return None;
    }
    Some(if staged {
        "its rollout no longer includes this device (halted, or narrowed)".into()
    } else {
        let percent = release
            .rollout
            .as_ref()
            .map_or(100.0, |r| r.percent_at(now));
        // serde_json's shortest form: `{}` on an f64 brings in core's float formatting,
        // kilobytes of the library for this one line.
        let percent = serde_json::to_string(&percent).unwrap_or_default();
        format!(
            "its rollout has not reached this device (at {} % of devices now)",
            percent.strip_suffix(".0").unwrap_or(&percent)
        )
    })
}

/// A pin is an explicit request: rollout, skips and past failures do not hold it back,
/// only the target and the security floor do (a standing pin's failures: see [`select`]).
fn select_pinned(manifest: &Manifest, device: &Device<'_>, pin: &Version) -> Result<Decision> {
    // By precedence, as every other comparison of versions: a pin of 1.1.0 takes the
    // channel's 1.1.0+20261120 (a channel never lists two builds of one version).
    let found = manifest
        .releases
        .iter()
        .find(|r| r.version.cmp_precedence(pin).is_eq());
    let release = found.ok_or_else(|| {
        let listed: Vec<String> = manifest
            .releases
            .iter()
            .map(|r| r.version.to_string())
            .collect();
        Error::new(
            ErrorKind::NoSuchVersion,
            format!(
                "expected version {pin} in channel {}, found only [{}]",
                manifest.channel,
                listed.join(", ")
            ),
        )
    })?;
    if !release.targets.contains_key(device.target) {
        let targets: Vec<&str> = release.targets.keys().map(String::as_str).collect();
        return Err(Error::new(
            ErrorKind::IncompatibleTarget,
            format!(
                "expected release {pin} to have an entry for target {:?}, found only [{}]",
                device.target,
                targets.join(", ")
            ),
        ));
    }
    if release.security_version < device.security_floor {
        return Err(Error::new(
            ErrorKind::SecurityFloor,
            format!(
                "expected a security version of at least {} (this device's floor), found {} in release {pin}",
                device.security_floor, release.security_version
            ),
        ));
    }
    // Another build of the installed version is that version (a redeploy is never a
    // check result, DESIGN §5.2 rule 6).
    if device
        .installed
        .is_some_and(|cur| cur.cmp_precedence(pin).is_eq())
    {
        return Ok(Decision::UpToDate);
    }
    Ok(Decision::Update(Choice {
        version: release.version.clone(),
        downgrade: device
            .installed
            .is_some_and(|cur| pin.cmp_precedence(cur).is_lt()),
        critical: release.critical,
        stepping_stone: false,
    }))
}

fn select_newest(
    manifest: &Manifest,
    device: &Device<'_>,
    allow_downgrade: bool,
    now: Timestamp,
) -> Decision {
    let candidates: Vec<&Release> = manifest
        .releases
        .iter()
        .filter(|r| r.targets.contains_key(device.target))
        .collect();
    let eligible: Vec<&Release> = candidates
        .iter()
        .copied()
        .filter(|r| offerable(r, device, now))
        .collect();
    let eligible = with_stones_to_fixes(&candidates, eligible, device, now);
    let Some(best) = eligible
        .iter()
        .copied()
        .filter(|r| min_version_met(r, device.installed))
        .max_by(|a, b| a.version.cmp_precedence(&b.version))
    else {
        return Decision::UpToDate;
    };
    // Everything eligible and newer than `best` was held back only by its min_version;
    // `best` is a stepping stone when the checks after it lead further.
    let reach = reached_from(&eligible, &best.version);
    let stepping_stone = newer(reach, &best.version);
    // A critical release passed over for a newer one, or reached through this stepping
    // stone, is still forced: the update towards its fix must not wait for a host's
    // `download_only` or `at`. One this update does not lead to is not its reason.
    let carries_critical = eligible.iter().any(|r| {
        r.critical
            && device.installed.is_none_or(|cur| newer(&r.version, cur))
            && !newer(&r.version, reach)
    });
    let choice = |downgrade| {
        Decision::Update(Choice {
            version: best.version.clone(),
            downgrade,
            critical: best.critical || carries_critical,
            stepping_stone,
        })
    };
    match device.installed {
        None => choice(false),
        Some(cur) if newer(&best.version, cur) => choice(false),
        // Only when the whole channel is behind: a release merely halted (rollout 0) or
        // skipped must not pull devices that already run it back down.
        Some(cur) if allow_downgrade && candidates.iter().all(|r| newer(cur, &r.version)) => {
            choice(true)
        }
        Some(_) => Decision::UpToDate,
    }
}

/// `eligible`, with the skipped releases older than a critical release put back when the
/// path to it needs them: a critical release cannot be skipped (DESIGN §4.3), and neither
/// can the stepping stone its `min_version` asks for, even when it was skipped as an
/// ordinary release before the fix was published. Other skips stand.
fn with_stones_to_fixes<'r>(
    candidates: &[&'r Release],
    eligible: Vec<&'r Release>,
    device: &Device<'_>,
    now: Timestamp,
) -> Vec<&'r Release> {
    let Some(cur) = device.installed else {
        return eligible;
    };
    let reach = reached_from(&eligible, cur);
    // The critical releases on offer that the skips keep out of reach, newest first: the
    // newest one the skips alone keep away decides (a newer one may be out of reach
    // anyway: a stone of its failed here, or is outside the rollout).
    let mut fixes: Vec<&Release> = eligible
        .iter()
        .copied()
        .filter(|r| r.critical && newer(&r.version, reach))
        .collect();
    fixes.sort_by(|a, b| b.version.cmp_precedence(&a.version));
    for fix in fixes {
        // What `offerable` left out for the skip alone, older than the fix.
        let stones = candidates.iter().copied().filter(|r| {
            !r.critical
                && listed(device.skipped, &r.version)
                && newer(&fix.version, &r.version)
                && offerable_if_unskipped(r, device, now)
        });
        let unskipped: Vec<&Release> = eligible.iter().copied().chain(stones).collect();
        if !newer(&fix.version, reached_from(&unskipped, cur)) {
            return unskipped;
        }
    }
    eligible
}

/// The version the checks after installing `from` end at: each takes the newest of
/// `eligible` whose min_version the version before meets, until none is newer. Each step
/// is to a newer release, so there are at most as many as releases.
fn reached_from<'r>(eligible: &[&'r Release], from: &'r Version) -> &'r Version {
    let mut at = from;
    while let Some(next) = eligible
        .iter()
        .filter(|r| newer(&r.version, at) && min_version_met(r, Some(at)))
        .max_by(|a, b| a.version.cmp_precedence(&b.version))
    {
        at = &next.version;
    }
    at
}

fn offerable(release: &Release, device: &Device<'_>, now: Timestamp) -> bool {
    (release.critical || !listed(device.skipped, &release.version))
        && offerable_if_unskipped(release, device, now)
}

/// [`offerable`] but for the user's skips.
fn offerable_if_unskipped(release: &Release, device: &Device<'_>, now: Timestamp) -> bool {
    release.security_version >= device.security_floor
        && !listed(device.failed, &release.version)
        && in_rollout(release, device.product, device.device_id, now)
}

fn min_version_met(release: &Release, installed: Option<&Version>) -> bool {
    match (&release.min_version, installed) {
        (Some(min), Some(cur)) => !newer(min, cur),
        _ => true,
    }
}

/// `a` is newer than `b` by semver precedence (build metadata does not count).
fn newer(a: &Version, b: &Version) -> bool {
    a.cmp_precedence(b).is_gt()
}

/// `version` is in `list` by precedence: a failure or skip of `1.0.0+a` holds `1.0.0+b` too.
fn listed(list: &[Version], version: &Version) -> bool {
    list.iter().any(|v| v.cmp_precedence(version).is_eq())
}

/// The device's rollout bucket for `version`, in `0..10000` (DESIGN §5.2): the first 8
/// bytes (big-endian) of SHA-256(`"evergreen-rollout\0" + product + "\0" + device_id +
/// "\0" + version`), modulo 10000.
///
/// The bucket depends on the version, so the devices that go first differ from release
/// to release; for one release it never changes, so a device stays in as a rollout grows.
///
/// ```
/// let v = semver::Version::new(1, 4, 2);
/// let b = evergreen::select::rollout_bucket("com.acme.gateway", "device-1", &v);
/// assert!(b < 10_000);
/// assert_eq!(b, evergreen::select::rollout_bucket("com.acme.gateway", "device-1", &v));
/// ```
pub fn rollout_bucket(product: &str, device_id: &str, version: &Version) -> u64 {
    let version = version.to_string();
    let parts: [&[u8]; 6] = [
        b"evergreen-rollout\0",
        product.as_bytes(),
        b"\0",
        device_id.as_bytes(),
        b"\0",
        version.as_bytes(),
    ];
    leading_u64(&parts) % 10_000
}

/// The first 8 bytes of the SHA-256 of `parts` one after the other, big-endian: a
/// uniform `u64` from a hash of its inputs.
fn leading_u64(parts: &[&[u8]]) -> u64 {
    let mut hash = Sha256::new();
    for part in parts {
        crate::trust::hash_in(&mut hash, part);
    }
    let digest = crate::trust::hash_out(hash);
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// True when the device is in `release`'s rollout at `now`: its bucket is below the
/// percentage in force × 100. A release without a rollout is for everyone.
pub fn in_rollout(release: &Release, product: &str, device_id: &str, now: Timestamp) -> bool {
    let percent = release
        .rollout
        .as_ref()
        .map_or(100.0, |r| r.percent_at(now));
    // The same answers as the bucket rule, without the bucket's SHA-256: most releases
    // have no rollout or a finished one, and a publisher's checks of a channel run a
    // selection per listed release, each of which asks this of every release.
    if percent >= 100.0 {
        return true;
    }
    if percent <= 0.0 {
        return false;
    }
    bucket_in_rollout(
        rollout_bucket(product, device_id, &release.version),
        percent,
    )
}

/// The rollout rule on a [`rollout_bucket`] already computed: in when `bucket` is below
/// `percent` × 100 (so 0 % lets nobody in, 100 % everyone, and a device stays in as the
/// percentage grows).
///
/// ```
/// use evergreen::select::bucket_in_rollout;
/// assert!(bucket_in_rollout(499, 5.0) && !bucket_in_rollout(500, 5.0));
/// assert!(!bucket_in_rollout(0, 0.0) && bucket_in_rollout(9_999, 100.0));
/// ```
pub fn bucket_in_rollout(bucket: u64, percent: f64) -> bool {
    // `percent * 100.0` rounds: 0.07 × 100 is 7.000000000000001, which would let bucket 7
    // in. `bucket / 100` rounds the same way as the decimal the operator wrote, so equal
    // values compare equal and the rule is exact for every percentage with two decimals.
    (bucket as f64) / 100.0 < percent
}

/// A day of the week, written `mon` … `sun` in the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Weekday {
    /// Monday.
    Mon,
    /// Tuesday.
    Tue,
    /// Wednesday.
    Wed,
    /// Thursday.
    Thu,
    /// Friday.
    Fri,
    /// Saturday.
    Sat,
    /// Sunday.
    Sun,
}

impl Weekday {
    /// Every day, Monday first.
    pub const ALL: [Weekday; 7] = [
        Weekday::Mon,
        Weekday::Tue,
        Weekday::Wed,
        Weekday::Thu,
        Weekday::Fri,
        Weekday::Sat,
        Weekday::Sun,
    ];

    /// The day with index `i % 7`, 0 = Monday (as [`Timestamp::weekday`] counts).
    pub fn from_index(i: u32) -> Weekday {
        Weekday::ALL[(i % 7) as usize]
    }

    /// `"mon"` … `"sun"`.
    pub fn as_str(self) -> &'static str {
        ["mon", "tue", "wed", "thu", "fri", "sat", "sun"][self as usize]
    }
}

/// A local time of day, `HH:MM` from `00:00` to `23:59`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TimeOfDay {
    minutes: u16,
}

impl TimeOfDay {
    /// `hour:minute`, or `None` outside 00:00–23:59.
    pub fn new(hour: u8, minute: u8) -> Option<TimeOfDay> {
        (hour < 24 && minute < 60).then(|| TimeOfDay {
            minutes: u16::from(hour) * 60 + u16::from(minute),
        })
    }

    /// Seconds after local midnight.
    pub fn seconds(self) -> u32 {
        u32::from(self.minutes) * 60
    }
}

impl std::str::FromStr for TimeOfDay {
    type Err = Error;
    fn from_str(s: &str) -> Result<TimeOfDay> {
        let b = s.as_bytes();
        let two = |i: usize| {
            let (hi, lo) = (b[i], b[i + 1]);
            (hi.is_ascii_digit() && lo.is_ascii_digit()).then(|| (hi - b'0') * 10 + (lo - b'0'))
        };
        let parsed = if b.len() == 5 && b[2] == b':' {
            two(0).zip(two(3)).and_then(|(h, m)| TimeOfDay::new(h, m))
        } else {
            None
        };
        parsed.ok_or_else(|| {
            Error::config(format!(
                "expected a time of day HH:MM from 00:00 to 23:59, found {s:?}"
            ))
        })
    }
}

impl TryFrom<String> for TimeOfDay {
    type Error = Error;
    fn try_from(s: String) -> Result<TimeOfDay> {
        s.parse()
    }
}

impl From<TimeOfDay> for String {
    fn from(t: TimeOfDay) -> String {
        t.to_string()
    }
}

impl fmt::Display for TimeOfDay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02}:{:02}", self.minutes / 60, self.minutes % 60)
    }
}

/// A fixed offset from UTC, `+HH:MM`, `-HH:MM` or `Z`. Windows use a fixed offset, not a
/// time zone: a device that observes daylight saving time sees its window move by an hour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct UtcOffset {
    seconds: i32,
}

impl UtcOffset {
    /// Seconds east of UTC.
    pub fn seconds(self) -> i64 {
        i64::from(self.seconds)
    }
}

impl std::str::FromStr for UtcOffset {
    type Err = Error;
    fn from_str(s: &str) -> Result<UtcOffset> {
        parse_offset(s)
            .and_then(|secs| i32::try_from(secs).ok())
            .map(|seconds| UtcOffset { seconds })
            .ok_or_else(|| {
                Error::config(format!(
                    "expected a UTC offset like +01:00, -05:30 or Z, found {s:?}"
                ))
            })
    }
}

impl TryFrom<String> for UtcOffset {
    type Error = Error;
    fn try_from(s: String) -> Result<UtcOffset> {
        s.parse()
    }
}

impl From<UtcOffset> for String {
    fn from(o: UtcOffset) -> String {
        o.to_string()
    }
}

impl fmt::Display for UtcOffset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.seconds < 0 { '-' } else { '+' };
        let abs = self.seconds.unsigned_abs();
        write!(f, "{sign}{:02}:{:02}", abs / 3600, abs / 60 % 60)
    }
}

/// A weekly maintenance window: on each of `days`, from `start` to `end` local time at a
/// fixed `utc_offset`. When `end` is not after `start` the window crosses midnight, and the
/// part after midnight belongs to the day the window started (so `22:00`–`00:00` runs until
/// midnight).
///
/// ```
/// use evergreen::select::{TimeOfDay, UtcOffset, Weekday, Window};
/// let w = Window::new(
///     vec![Weekday::Fri],
///     TimeOfDay::new(23, 0).unwrap(),
///     TimeOfDay::new(1, 0).unwrap(),
///     "+00:00".parse().unwrap(),
/// ).unwrap();
/// assert!(w.contains("2026-11-28T00:30:00Z".parse().unwrap())); // early Saturday
/// assert!(!w.contains("2026-11-27T00:30:00Z".parse().unwrap())); // early Friday
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawWindow", into = "RawWindow")]
pub struct Window {
    days: Vec<Weekday>,
    start: TimeOfDay,
    end: TimeOfDay,
    utc_offset: UtcOffset,
}

/// The config form of a [`Window`]; `days` defaults to every day, `utc_offset` to UTC.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "an object with `start` and `end`")]
struct RawWindow {
    #[serde(default = "every_day")]
    days: Vec<Weekday>,
    start: TimeOfDay,
    end: TimeOfDay,
    #[serde(default)]
    utc_offset: UtcOffset,
}

fn every_day() -> Vec<Weekday> {
    Weekday::ALL.to_vec()
}

impl TryFrom<RawWindow> for Window {
    type Error = Error;
    fn try_from(raw: RawWindow) -> Result<Window> {
        Window::new(raw.days, raw.start, raw.end, raw.utc_offset)
    }
}

impl From<Window> for RawWindow {
    fn from(w: Window) -> RawWindow {
        RawWindow {
            days: w.days,
            start: w.start,
            end: w.end,
            utc_offset: w.utc_offset,
        }
    }
}

impl Window {
    /// A window on at least one day, with `start` ≠ `end` (`config` error otherwise).
    pub fn new(
        mut days: Vec<Weekday>,
        start: TimeOfDay,
        end: TimeOfDay,
        utc_offset: UtcOffset,
    ) -> Result<Window> {
        days.sort_unstable();
        days.dedup();
        if days.is_empty() {
            return Err(Error::config(
                "deploy.window.days: expected at least one day (mon … sun), found []",
            ));
        }
        if start == end {
            return Err(Error::config(format!(
                "deploy.window: expected end to differ from start, found both {start}"
            )));
        }
        Ok(Window {
            days,
            start,
            end,
            utc_offset,
        })
    }

    /// The days the window opens on, Monday first.
    pub fn days(&self) -> &[Weekday] {
        &self.days
    }

    /// Local opening time.
    pub fn start(&self) -> TimeOfDay {
        self.start
    }

    /// Local closing time (the window is open before it, not at it).
    pub fn end(&self) -> TimeOfDay {
        self.end
    }

    /// The fixed offset of the local times.
    pub fn utc_offset(&self) -> UtcOffset {
        self.utc_offset
    }

    fn opens_on(&self, weekday: u32) -> bool {
        self.days.contains(&Weekday::from_index(weekday))
    }

    /// True when the window is open at `t`.
    pub fn contains(&self, t: Timestamp) -> bool {
        let offset = self.utc_offset.seconds();
        let (day, time) = (t.weekday(offset), t.seconds_of_day(offset));
        let (start, end) = (self.start.seconds(), self.end.seconds());
        if start < end {
            self.opens_on(day) && (start..end).contains(&time)
        } else {
            (self.opens_on(day) && time >= start) || (self.opens_on(day + 6) && time < end)
        }
    }

    /// The first opening strictly after `t`.
    pub fn next_start(&self, t: Timestamp) -> Timestamp {
        let offset = self.utc_offset.seconds();
        let day = t.weekday(offset);
        let midnight = t.plus_secs(-i64::from(t.seconds_of_day(offset)));
        let start_on = |k: u32| {
            midnight
                .plus_days(i64::from(k))
                .plus_secs(i64::from(self.start.seconds()))
        };
        // `days` is never empty, so one of the next eight local days has a start after `t`.
        (0..=7)
            .find(|&k| self.opens_on(day + k) && start_on(k) > t)
            .map_or_else(|| t.plus_days(7), start_on)
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let days: Vec<&str> = self.days.iter().map(|d| d.as_str()).collect();
        write!(
            f,
            "{} {}–{} UTC{}",
            days.join(","),
            self.start,
            self.end,
            self.utc_offset
        )
    }
}

/// When a downloaded update is activated (DESIGN §5.3); the config's `deploy` object.
///
/// ```
/// use evergreen::select::DeployPolicy;
/// let p: DeployPolicy = serde_json::from_str(r#"{"policy": "window", "window":
///     {"days": ["sat", "sun"], "start": "02:00", "end": "04:00", "utc_offset": "+01:00"}}"#).unwrap();
/// assert!(matches!(p, DeployPolicy::Window(_)));
/// assert_eq!(serde_json::to_string(&DeployPolicy::DownloadOnly).unwrap(),
///            r#"{"policy":"download_only"}"#);
/// ```
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(try_from = "RawDeploy", into = "RawDeploy")]
pub enum DeployPolicy {
    /// Activate as soon as the update is installed.
    #[default]
    Immediate,
    /// Activate only inside the maintenance window.
    Window(Window),
    /// Activate at or after this time.
    At(Timestamp),
    /// Stage, never activate by itself: the host calls activate.
    DownloadOnly,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum PolicyName {
    Immediate,
    Window,
    At,
    DownloadOnly,
}

impl PolicyName {
    /// The name as the config spells it.
    fn as_str(self) -> &'static str {
        match self {
            PolicyName::Immediate => "immediate",
            PolicyName::Window => "window",
            PolicyName::At => "at",
            PolicyName::DownloadOnly => "download_only",
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "an object with `policy`")]
struct RawDeploy {
    policy: PolicyName,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    window: Option<Window>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    at: Option<Timestamp>,
}

impl TryFrom<RawDeploy> for DeployPolicy {
    type Error = Error;
    fn try_from(raw: RawDeploy) -> Result<DeployPolicy> {
        let policy = match (raw.policy, raw.window, raw.at) {
            (PolicyName::Immediate, None, None) => DeployPolicy::Immediate,
            (PolicyName::DownloadOnly, None, None) => DeployPolicy::DownloadOnly,
            (PolicyName::Window, Some(w), None) => DeployPolicy::Window(w),
            (PolicyName::At, None, Some(at)) => DeployPolicy::At(at),
            (PolicyName::Window, None, _) => return Err(missing("window", "window")),
            (PolicyName::At, _, None) => return Err(missing("at", "at")),
            (name, window, _) => {
                let extra = if window.is_some() { "window" } else { "at" };
                return Err(Error::config(format!(
                    "deploy: expected no \"{extra}\" with policy \"{}\", found one",
                    name.as_str()
                )));
            }
        };
        Ok(policy)
    }
}

fn missing(policy: &str, field: &str) -> Error {
    Error::config(format!(
        "deploy: expected policy \"{policy}\" to come with a \"{field}\" field, found none"
    ))
}

impl From<DeployPolicy> for RawDeploy {
    fn from(p: DeployPolicy) -> RawDeploy {
        let (policy, window, at) = match p {
            DeployPolicy::Immediate => (PolicyName::Immediate, None, None),
            DeployPolicy::Window(w) => (PolicyName::Window, Some(w), None),
            DeployPolicy::At(at) => (PolicyName::At, None, Some(at)),
            DeployPolicy::DownloadOnly => (PolicyName::DownloadOnly, None, None),
        };
        RawDeploy { policy, window, at }
    }
}

/// What to do with an installed update now.
#[derive(Debug, Clone, PartialEq)]
pub enum Deploy {
    /// Activate now.
    Now,
    /// Not yet: activate at `until`.
    Wait {
        /// The next window start or the `at` time.
        until: Timestamp,
        /// Why, for logs and status output.
        reason: String,
    },
    /// Never by itself: the host calls activate (`download_only`).
    Manual,
}

/// Applies the deploy policy at `now` (DESIGN §5.3). A `critical` release ignores `at` and
/// `download_only` but still waits for the maintenance window.
///
/// ```
/// use evergreen::select::{deploy, Deploy, DeployPolicy};
/// let now = "2026-11-22T10:00:00Z".parse().unwrap();
/// assert_eq!(deploy(&DeployPolicy::DownloadOnly, false, now), Deploy::Manual);
/// assert_eq!(deploy(&DeployPolicy::DownloadOnly, true, now), Deploy::Now);
/// ```
pub fn deploy(policy: &DeployPolicy, critical: bool, now: Timestamp) -> Deploy {
    match policy {
        DeployPolicy::Immediate => Deploy::Now,
        DeployPolicy::DownloadOnly if critical => Deploy::Now,
        DeployPolicy::DownloadOnly => Deploy::Manual,
        DeployPolicy::At(at) if critical || *at <= now => Deploy::Now,
        DeployPolicy::At(at) => Deploy::Wait {
            until: *at,
            reason: format!("the deploy policy activates at {at}"),
        },
        DeployPolicy::Window(w) if w.contains(now) => Deploy::Now,
        DeployPolicy::Window(w) => Deploy::Wait {
            until: w.next_start(now),
            reason: format!("outside the maintenance window ({w})"),
        },
    }
}

/// How far the host's clock may read behind the newest manifest's `issued` and still judge
/// a maintenance window: a publisher's clock may run a little ahead of the device's.
pub const WINDOW_CLOCK_SKEW_S: i64 = 3600;

/// The deploy policy on the host's `clock`, with `newest_issued` the newest `issued` this
/// device has verified (DESIGN §5.1 rule 4). An `at` time is judged, as rollouts are, on
/// the clock pulled up to `newest_issued`: time only moves forward, so that lower bound is
/// a safe answer. A maintenance window repeats, and a lower bound on the time says nothing
/// of the time of day: it is judged on the host's clock, and while that clock reads more
/// than [`WINDOW_CLOCK_SKEW_S`] before `newest_issued` (it lost power, or is not set yet)
/// the answer is to wait, even for a critical release, rather than restart a device at an
/// hour the window was set to keep free.
///
/// ```
/// use evergreen::select::{deploy_on_clock, Deploy, DeployPolicy, TimeOfDay, Weekday, Window};
/// let (start, end) = (TimeOfDay::new(2, 0).unwrap(), TimeOfDay::new(4, 0).unwrap());
/// let window = Window::new(vec![Weekday::Sat], start, end, "+00:00".parse().unwrap()).unwrap();
/// let policy = DeployPolicy::Window(window);
/// let issued = Some("2026-11-21T02:30:00Z".parse().unwrap()); // a Saturday
/// let saturday = "2026-11-21T03:00:00Z".parse().unwrap();
/// assert_eq!(deploy_on_clock(&policy, false, saturday, issued), Deploy::Now);
/// let lost_power = "1970-01-01T00:00:00Z".parse().unwrap();
/// assert!(matches!(deploy_on_clock(&policy, true, lost_power, issued), Deploy::Wait { .. }));
/// ```
pub fn deploy_on_clock(
    policy: &DeployPolicy,
    critical: bool,
    clock: Timestamp,
    newest_issued: Option<Timestamp>,
) -> Deploy {
    let now = crate::manifest::effective_now(clock, newest_issued);
    let DeployPolicy::Window(window) = policy else {
        return deploy(policy, critical, now);
    };
    match newest_issued {
        Some(issued) if clock < issued.plus_secs(-WINDOW_CLOCK_SKEW_S) => Deploy::Wait {
            until: window.next_start(now),
            reason: format!(
                "the clock reads {clock}, more than an hour before the newest manifest was issued ({issued}): the maintenance window ({window}) is judged once the clock is set"
            ),
        },
        _ => deploy(policy, critical, clock),
    }
}

/// The longest backoff, as a multiple of the polling interval (DESIGN §5.3).
pub const MAX_BACKOFF_FACTOR: u64 = 4;

/// The longest a server's `Retry-After` holds back a device's next check (DESIGN §5.3):
/// a day. The header is not signed and one answer sets it, so without a cap a single
/// answer from a misconfigured CDN, a captive portal or proxy, or anyone on the path of
/// plain HTTP could keep the device from checking, and from a security fix, for months
/// after the server is healthy again. A day is also where the default schedule's failure
/// backoff ends (4 × 6 h): a server that keeps failing holds a device back that long
/// anyway.
pub const MAX_RETRY_AFTER_S: u64 = 86_400;

/// The time a server that answered a failed check with a `Retry-After` of `wait` (from
/// `failed_at`) asked not to be checked again before: at most [`MAX_RETRY_AFTER_S`] after
/// `failed_at`, whole seconds rounded up. `None` when it asked for no wait (`0`, or a date
/// already past), which holds nothing back.
///
/// ```
/// use evergreen::select::retry_not_before;
/// use std::time::Duration;
/// let t = evergreen::Timestamp::from_unix(0);
/// assert_eq!(retry_not_before(t, Duration::from_secs(3600)).unwrap().unix(), 3600);
/// assert_eq!(retry_not_before(t, Duration::from_secs(1 << 40)).unwrap().unix(), 86_400);
/// assert_eq!(retry_not_before(t, Duration::ZERO), None);
/// ```
pub fn retry_not_before(failed_at: Timestamp, wait: std::time::Duration) -> Option<Timestamp> {
    let secs = wait
        .as_secs()
        .saturating_add(u64::from(wait.subsec_nanos() > 0));
    let secs = secs.min(MAX_RETRY_AFTER_S);
    (secs > 0).then(|| failed_at.plus_secs(secs as i64))
}

/// When to check next (DESIGN §5.3), at least a second after `last`: `interval_s` after
/// it, doubled for each consecutive failure up to [`MAX_BACKOFF_FACTOR`]× the interval,
/// then spread by ±`jitter` (a fraction, e.g. 0.25) so a fleet does not poll in
/// lockstep; and never
/// before `not_before`, the time a server asked for with `Retry-After`
/// ([`retry_not_before`]). When that time is later than the schedule, the check is at
/// that time plus up to `jitter` × the interval (not backed off); a `not_before` no later
/// than the schedule changes nothing.
///
/// `random` is a uniformly distributed `u64` from the caller ([`poll_draw`] for a device),
/// which keeps this function pure.
/// A `jitter` outside `[0, 1)` is clamped into it.
///
/// ```
/// use evergreen::select::next_check;
/// use evergreen::Timestamp;
/// let last = Timestamp::from_unix(0);
/// // the middle of the random range means no jitter at all
/// assert_eq!(next_check(last, 3600, 0.25, 0, 1 << 63, None).unix(), 3600);
/// assert_eq!(next_check(last, 3600, 0.25, 9, 1 << 63, None).unix(), 4 * 3600);
/// // a server that asked for three hours is not asked again before then
/// let asked = Some(Timestamp::from_unix(10_800));
/// assert_eq!(next_check(last, 3600, 0.0, 1, 1 << 63, asked).unix(), 10_800);
/// // and a fleet it asked is spread over a quarter of the interval after it
/// assert_eq!(next_check(last, 3600, 0.25, 1, 1 << 63, asked).unix(), 10_800 + 450);
/// // never sooner than a second: the lowest draw of a 1 s interval with a 0.99 jitter
/// assert_eq!(next_check(last, 1, 0.99, 0, 0, None).unix(), 1);
/// ```
pub fn next_check(
    last: Timestamp,
    interval_s: u64,
    jitter: f64,
    consecutive_failures: u32,
    random: u64,
    not_before: Option<Timestamp>,
) -> Timestamp {
    let factor = 1u64
        .checked_shl(consecutive_failures)
        .map_or(MAX_BACKOFF_FACTOR, |f| f.min(MAX_BACKOFF_FACTOR));
    let base = interval_s.saturating_mul(factor) as f64;
    let (jitter, unit) = (clamp_jitter(jitter), unit(random));
    let delay = base * (1.0 + jitter * (2.0 * unit - 1.0));
    // At least a second: a tiny interval with a wide jitter would round to no wait at all,
    // and a host polling `next_check` would check in a tight loop.
    let due = last.plus_secs((delay.round() as i64).max(1));
    not_before_spread(due, not_before, interval_s, jitter, unit)
}

/// When a device that never checked should check first (DESIGN §5.3): at once (`now`), but
/// never before `not_before`, the time a server asked for with `Retry-After` when it failed
/// a check (of another channel: the device's own failed checks have a schedule of their
/// own, [`next_check`]). When that time is later than `now`, the check is at that time plus
/// up to `jitter` × `interval_s`, as [`next_check`] spreads it: a fleet the server told to
/// come back in an hour does not come back in the same second.
///
/// `random` is a uniformly distributed `u64` from the caller ([`poll_draw`] for a device),
/// which keeps this function pure.
///
/// ```
/// use evergreen::select::first_check;
/// use evergreen::Timestamp;
/// let now = Timestamp::from_unix(0);
/// assert_eq!(first_check(now, 3600, 0.25, 1 << 63, None).unix(), 0);
/// let asked = Some(Timestamp::from_unix(3600));
/// assert_eq!(first_check(now, 3600, 0.0, 1 << 63, asked).unix(), 3600);
/// assert_eq!(first_check(now, 3600, 0.25, 1 << 63, asked).unix(), 3600 + 450);
/// ```
pub fn first_check(
    now: Timestamp,
    interval_s: u64,
    jitter: f64,
    random: u64,
    not_before: Option<Timestamp>,
) -> Timestamp {
    let (jitter, unit) = (clamp_jitter(jitter), unit(random));
    not_before_spread(now, not_before, interval_s, jitter, unit)
}

/// `due`, or, when `not_before` is later, that time plus up to `jitter` × `interval_s`
/// (by `unit`, in `[0, 1)`).
fn not_before_spread(
    due: Timestamp,
    not_before: Option<Timestamp>,
    interval_s: u64,
    jitter: f64,
    unit: f64,
) -> Timestamp {
    match not_before {
        // A server that answers a busy fleet with a date gives every device the same time:
        // they are spread after it as the schedule spreads them over the interval.
        Some(t) if t > due => t.plus_secs((interval_s as f64 * jitter * unit).round() as i64),
        _ => due,
    }
}

/// The `random` input of [`next_check`] and [`first_check`] for one device and one round of
/// the schedule: uniform over a fleet (a hash of the device id), but the same for every call
/// until the schedule moves on (`since`, the time it counts from, and the count of failed
/// checks). A host that asks every minute whether the check is due then hears one time,
/// where a fresh draw per call would check at the earliest of many draws, the jitter's low
/// end; and scheduling needs no system randomness, which blocks early in boot on kernels
/// whose pool is not yet seeded.
///
/// Independent of [`rollout_bucket`] (another domain in the hash), so the devices a rollout
/// reaches first do not also poll first.
///
/// ```
/// use evergreen::select::poll_draw;
/// use evergreen::Timestamp;
/// let since = Some(Timestamp::from_unix(1_700_000_000));
/// assert_eq!(poll_draw("device-1", since, 0), poll_draw("device-1", since, 0));
/// assert_ne!(poll_draw("device-1", since, 0), poll_draw("device-2", since, 0));
/// assert_ne!(poll_draw("device-1", since, 0), poll_draw("device-1", since, 1));
/// ```
pub fn poll_draw(device_id: &str, since: Option<Timestamp>, failures: u32) -> u64 {
    let since = since.map(|t| t.unix().to_be_bytes());
    let (mark, at): (&[u8], &[u8]) = match &since {
        Some(t) => (&[1], t),
        None => (&[0], &[]),
    };
    let parts = [
        b"evergreen-poll\0",
        device_id.as_bytes(),
        b"\0",
        mark,
        at,
        &failures.to_be_bytes(),
    ];
    leading_u64(&parts)
}

/// A `jitter` fraction clamped into `[0, 1)`; 0 for one that is no number.
fn clamp_jitter(jitter: f64) -> f64 {
    if jitter.is_finite() {
        jitter.clamp(0.0, 0.999)
    } else {
        0.0
    }
}

/// A uniform fraction in `[0, 1)` from `random`: 53 random bits, exactly representable as
/// an f64.
fn unit(random: u64) -> f64 {
    (random >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// §5.2's worked example, pinned in the library's own tests so that a run on a
    /// big-endian CPU (s390x under Miri, docs/design.md decision 34) checks it: the
    /// digest's first 8 bytes are read big-endian whatever the CPU's byte order, so every
    /// device computes the bucket the publisher's tools and other clients do.
    #[test]
    fn the_rollout_bucket_is_the_documented_one_on_every_byte_order() {
        let v = Version::new(1, 4, 2);
        let parts: [&[u8]; 6] = [
            b"evergreen-rollout\0",
            b"com.acme.gateway",
            b"\0",
            b"device-1",
            b"\0",
            b"1.4.2",
        ];
        assert_eq!(leading_u64(&parts), 15_935_804_439_112_595_520);
        assert_eq!(rollout_bucket("com.acme.gateway", "device-1", &v), 5520);
        assert_eq!(rollout_bucket("com.acme.gateway", "device-24084", &v), 7);
    }
}
