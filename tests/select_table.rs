//! The selection and deploy rules of DESIGN §5.2–5.3, one table row per rule.

use evergreen::manifest::{Manifest, Release, Rollout, RolloutStage, TargetRelease};
use evergreen::select::{
    bucket_in_rollout, deploy, deploy_on_clock, first_check, held_back, in_rollout, next_check,
    poll_draw, retry_not_before, rollout_bucket, select, withheld, Choice, Decision, Deploy,
    DeployPolicy, Device, Policy, MAX_RETRY_AFTER_S,
};
use evergreen::{ErrorKind, NameMap, Timestamp};
use semver::Version;
use std::time::Duration;

const TARGET: &str = "x86_64-linux";
const NOW: &str = "2026-11-22T10:00:00Z";

fn ts(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn v(s: &str) -> Version {
    s.parse().unwrap()
}

fn rel(version: &str) -> Release {
    Release {
        version: v(version),
        published: None,
        notes: String::new(),
        min_version: None,
        critical: false,
        security_version: 0,
        rollout: None,
        targets: NameMap::from([(TARGET, no_components())]),
    }
}

fn no_components() -> TargetRelease {
    TargetRelease {
        components: NameMap::new(),
    }
}

/// Small modifiers so each table row reads like the rule it tests.
trait ReleaseExt {
    fn critical(self) -> Self;
    fn security(self, n: u64) -> Self;
    fn min(self, version: &str) -> Self;
    fn stages(self, stages: &[(&str, f64)]) -> Self;
    fn only_for(self, target: &str) -> Self;
}

impl ReleaseExt for Release {
    fn critical(mut self) -> Self {
        self.critical = true;
        self
    }
    fn security(mut self, n: u64) -> Self {
        self.security_version = n;
        self
    }
    fn min(mut self, version: &str) -> Self {
        self.min_version = Some(v(version));
        self
    }
    fn stages(mut self, stages: &[(&str, f64)]) -> Self {
        self.rollout = Some(Rollout {
            stages: stages
                .iter()
                .map(|&(at, percent)| RolloutStage {
                    at: ts(at),
                    percent,
                })
                .collect(),
        });
        self
    }
    fn only_for(mut self, target: &str) -> Self {
        self.targets = NameMap::from([(target, no_components())]);
        self
    }
}

fn versions(list: &[&str]) -> Vec<Version> {
    list.iter().map(|s| v(s)).collect()
}

/// Device `device-1` of product `p` on [`TARGET`].
fn device_1<'a>(
    installed: Option<&'a Version>,
    floor: u64,
    skipped: &'a [Version],
    failed: &'a [Version],
) -> Device<'a> {
    Device {
        product: "p",
        target: TARGET,
        device_id: "device-1",
        installed,
        security_floor: floor,
        skipped,
        failed,
    }
}

fn manifest(channel: &str, releases: Vec<Release>) -> Manifest {
    Manifest {
        doc_type: "manifest".into(),
        product: "p".into(),
        channel: channel.into(),
        sequence: 1,
        issued: ts("2026-11-01T00:00:00Z"),
        expires: ts("2026-12-31T00:00:00Z"),
        releases,
    }
}

struct Row {
    name: &'static str,
    channel: &'static str,
    releases: Vec<Release>,
    installed: Option<&'static str>,
    floor: u64,
    skipped: &'static [&'static str],
    failed: &'static [&'static str],
    pin: Option<&'static str>,
    pin_is_standing: bool,
    allow_downgrade: bool,
    expect: Result<Decision, ErrorKind>,
}

fn row() -> Row {
    Row {
        name: "",
        channel: "stable",
        releases: vec![],
        installed: Some("1.0.0"),
        floor: 0,
        skipped: &[],
        failed: &[],
        pin: None,
        pin_is_standing: false,
        allow_downgrade: false,
        expect: Ok(Decision::UpToDate),
    }
}

fn update(version: &str) -> Choice {
    Choice {
        version: v(version),
        downgrade: false,
        critical: false,
        stepping_stone: false,
    }
}

fn ok(c: Choice) -> Result<Decision, ErrorKind> {
    Ok(Decision::Update(c))
}

fn run(r: &Row) -> Result<Decision, ErrorKind> {
    let installed = r.installed.map(v);
    let skipped: Vec<Version> = r.skipped.iter().map(|s| v(s)).collect();
    let failed: Vec<Version> = r.failed.iter().map(|s| v(s)).collect();
    let pin = r.pin.map(v);
    let device = Device {
        product: "p",
        target: TARGET,
        device_id: "device-1",
        installed: installed.as_ref(),
        security_floor: r.floor,
        skipped: &skipped,
        failed: &failed,
    };
    let policy = Policy {
        pin: pin.as_ref(),
        pin_is_standing: r.pin_is_standing,
        allow_downgrade: r.allow_downgrade,
    };
    select(
        &manifest(r.channel, r.releases.clone()),
        &device,
        &policy,
        ts(NOW),
    )
    .map_err(|e| e.kind())
}

fn selection_rows() -> Vec<Row> {
    vec![
        Row {
            name: "up to date",
            installed: Some("1.1.0"),
            releases: vec![rel("1.0.0"), rel("1.1.0")],
            ..row()
        },
        Row {
            name: "newer available",
            releases: vec![rel("1.0.0"), rel("1.1.0")],
            expect: ok(update("1.1.0")),
            ..row()
        },
        Row {
            name: "nothing installed takes the newest",
            installed: None,
            releases: vec![rel("1.1.0"), rel("1.2.0").min("1.1.0"), rel("1.0.0")],
            expect: ok(update("1.2.0")),
            ..row()
        },
        Row {
            name: "nothing for this target is not offered",
            releases: vec![rel("2.0.0").only_for("acme-board-rev2")],
            ..row()
        },
        Row {
            name: "channel switch to a riskier channel takes its newest",
            channel: "nightly",
            installed: Some("1.4.0"),
            releases: vec![rel("1.4.0"), rel("1.5.0-nightly.3")],
            expect: ok(update("1.5.0-nightly.3")),
            ..row()
        },
        Row {
            name: "channel switch to a safer, older channel stays put",
            installed: Some("1.5.0-nightly.3"),
            releases: vec![rel("1.3.0"), rel("1.4.0")],
            ..row()
        },
        Row {
            name: "channel switch to a safer, older channel with allow_downgrade",
            installed: Some("1.5.0-nightly.3"),
            releases: vec![rel("1.3.0"), rel("1.4.0")],
            allow_downgrade: true,
            expect: ok(Choice {
                downgrade: true,
                ..update("1.4.0")
            }),
            ..row()
        },
        Row {
            name: "allow_downgrade does not undo a halted rollout",
            installed: Some("1.2.0"),
            releases: vec![rel("1.1.0"), rel("1.2.0").stages(&[(NOW, 0.0)])],
            allow_downgrade: true,
            ..row()
        },
        Row {
            name: "pin newer",
            releases: vec![rel("1.1.0"), rel("1.2.0"), rel("1.3.0")],
            pin: Some("1.2.0"),
            expect: ok(update("1.2.0")),
            ..row()
        },
        Row {
            name: "pin older is a downgrade",
            installed: Some("1.3.0"),
            releases: vec![rel("1.1.0"), rel("1.3.0")],
            pin: Some("1.1.0"),
            expect: ok(Choice {
                downgrade: true,
                ..update("1.1.0")
            }),
            ..row()
        },
        Row {
            name: "pin equal to installed is up to date",
            installed: Some("1.1.0"),
            releases: vec![rel("1.1.0"), rel("1.2.0")],
            pin: Some("1.1.0"),
            ..row()
        },
        Row {
            name: "pin ignores rollout, skips and failures",
            releases: vec![rel("1.2.0").stages(&[(NOW, 0.0)])],
            skipped: &["1.2.0"],
            failed: &["1.2.0"],
            pin: Some("1.2.0"),
            expect: ok(update("1.2.0")),
            ..row()
        },
        Row {
            name: "a standing pin does not bring back a version that failed here",
            releases: vec![rel("1.0.0"), rel("1.2.0")],
            failed: &["1.2.0"],
            pin: Some("1.2.0"),
            pin_is_standing: true,
            ..row()
        },
        Row {
            name: "a standing pin ignores rollout and skips",
            releases: vec![rel("1.2.0").stages(&[(NOW, 0.0)])],
            skipped: &["1.2.0"],
            failed: &["1.1.0"],
            pin: Some("1.2.0"),
            pin_is_standing: true,
            expect: ok(update("1.2.0")),
            ..row()
        },
        Row {
            name: "pin below the security floor",
            installed: Some("1.3.0"),
            floor: 3,
            releases: vec![rel("1.1.0").security(2), rel("1.3.0").security(3)],
            pin: Some("1.1.0"),
            expect: Err(ErrorKind::SecurityFloor),
            ..row()
        },
        Row {
            name: "pin unknown",
            releases: vec![rel("1.1.0")],
            pin: Some("9.9.9"),
            expect: Err(ErrorKind::NoSuchVersion),
            ..row()
        },
        Row {
            name: "pin matches a build of its version by precedence",
            releases: vec![rel("1.1.0+20261120"), rel("1.2.0")],
            pin: Some("1.1.0"),
            expect: ok(update("1.1.0+20261120")),
            ..row()
        },
        Row {
            name: "pin for another target",
            releases: vec![rel("1.1.0").only_for("acme-board-rev2")],
            pin: Some("1.1.0"),
            expect: Err(ErrorKind::IncompatibleTarget),
            ..row()
        },
        Row {
            name: "skipped is skipped",
            releases: vec![rel("1.1.0"), rel("1.2.0")],
            skipped: &["1.2.0"],
            expect: ok(update("1.1.0")),
            ..row()
        },
        Row {
            name: "skipped critical is not skipped",
            releases: vec![rel("1.1.0").critical()],
            skipped: &["1.1.0"],
            expect: ok(Choice {
                critical: true,
                ..update("1.1.0")
            }),
            ..row()
        },
        Row {
            name: "a skipped stepping stone to a critical release is offered, critical",
            releases: vec![rel("1.5.0"), rel("2.0.0").min("1.5.0").critical()],
            skipped: &["1.5.0"],
            expect: ok(Choice {
                critical: true,
                stepping_stone: true,
                ..update("1.5.0")
            }),
            ..row()
        },
        Row {
            name: "a skipped stepping stone to an ordinary release stays skipped",
            releases: vec![rel("1.5.0"), rel("2.0.0").min("1.5.0")],
            skipped: &["1.5.0"],
            expect: Ok(Decision::UpToDate),
            ..row()
        },
        Row {
            name: "only the skips on the way to a critical release are undone",
            releases: vec![
                rel("1.5.0"),
                rel("2.0.0").min("1.5.0").critical(),
                rel("2.1.0"),
            ],
            skipped: &["1.5.0", "2.1.0"],
            expect: ok(Choice {
                critical: true,
                stepping_stone: true,
                ..update("1.5.0")
            }),
            ..row()
        },
        Row {
            name: "a skipped stone stays skipped when the critical release is out of reach anyway",
            releases: vec![
                rel("1.5.0"),
                rel("1.6.0"),
                rel("3.0.0").min("2.0.0").critical(),
            ],
            skipped: &["1.6.0"],
            expect: ok(update("1.5.0")),
            ..row()
        },
        Row {
            name: "an older critical release the skips keep away counts when a newer one is out of reach",
            releases: vec![
                rel("1.5.0"),
                rel("2.0.0").min("1.5.0").critical(),
                rel("2.5.0"),
                rel("3.0.0").min("2.5.0").critical(),
            ],
            skipped: &["1.5.0"],
            failed: &["2.5.0"],
            expect: ok(Choice {
                critical: true,
                stepping_stone: true,
                ..update("1.5.0")
            }),
            ..row()
        },
        Row {
            name: "a critical release passed over for a newer one makes that one critical",
            releases: vec![rel("1.1.0").critical(), rel("1.2.0")],
            expect: ok(Choice {
                critical: true,
                ..update("1.2.0")
            }),
            ..row()
        },
        Row {
            name: "a critical release already installed does not",
            installed: Some("1.1.0"),
            releases: vec![rel("1.1.0").critical(), rel("1.2.0")],
            expect: ok(update("1.2.0")),
            ..row()
        },
        Row {
            name: "a stepping stone towards a critical release is critical",
            releases: vec![
                rel("1.5.0").min("1.0.0"),
                rel("2.0.0").min("1.5.0").critical(),
            ],
            expect: ok(Choice {
                stepping_stone: true,
                critical: true,
                ..update("1.5.0")
            }),
            ..row()
        },
        Row {
            name: "a critical release this update does not lead to does not",
            releases: vec![rel("1.1.0"), rel("3.0.0").min("2.0.0").critical()],
            expect: ok(update("1.1.0")),
            ..row()
        },
        Row {
            name: "a stepping stone two steps from a critical release is critical",
            releases: vec![
                rel("1.5.0"),
                rel("2.0.0").min("1.5.0"),
                rel("3.0.0").min("2.0.0").critical(),
            ],
            expect: ok(Choice {
                stepping_stone: true,
                critical: true,
                ..update("1.5.0")
            }),
            ..row()
        },
        Row {
            name: "a critical release that failed here does not",
            releases: vec![rel("1.1.0").critical(), rel("1.2.0")],
            failed: &["1.1.0"],
            expect: ok(update("1.2.0")),
            ..row()
        },
        Row {
            name: "failed is never offered, even critical",
            releases: vec![rel("1.1.0").critical()],
            failed: &["1.1.0"],
            ..row()
        },
        Row {
            name: "failed, then re-published as a newer version",
            releases: vec![rel("1.1.0"), rel("1.1.1")],
            failed: &["1.1.0"],
            expect: ok(update("1.1.1")),
            ..row()
        },
        Row {
            name: "below the floor is skipped",
            floor: 5,
            releases: vec![rel("1.1.0").security(5), rel("1.2.0").security(4)],
            expect: ok(update("1.1.0")),
            ..row()
        },
        Row {
            name: "min_version gives a stepping stone",
            releases: vec![rel("1.5.0").min("1.0.0"), rel("2.0.0").min("1.5.0")],
            expect: ok(Choice {
                stepping_stone: true,
                ..update("1.5.0")
            }),
            ..row()
        },
        Row {
            name: "after the stepping stone the target release",
            installed: Some("1.5.0"),
            releases: vec![rel("1.5.0").min("1.0.0"), rel("2.0.0").min("1.5.0")],
            expect: ok(update("2.0.0")),
            ..row()
        },
        Row {
            name: "no stepping stone reachable",
            installed: Some("0.9.0"),
            releases: vec![rel("2.0.0").min("1.5.0")],
            ..row()
        },
        Row {
            name: "pre-releases order numerically",
            installed: Some("1.1.0-rc.2"),
            releases: vec![rel("1.0.0"), rel("1.1.0-rc.9"), rel("1.1.0-rc.10")],
            expect: ok(update("1.1.0-rc.10")),
            ..row()
        },
        Row {
            name: "a release is newer than its pre-releases",
            installed: Some("1.1.0-rc.10"),
            releases: vec![rel("1.1.0-rc.10"), rel("1.1.0")],
            expect: ok(update("1.1.0")),
            ..row()
        },
        Row {
            name: "a pre-release is older than its release",
            installed: Some("1.1.0"),
            releases: vec![rel("1.1.0-rc.10")],
            ..row()
        },
        Row {
            name: "rollout at 0%",
            releases: vec![rel("1.1.0").stages(&[("2026-11-20T00:00:00Z", 0.0)])],
            ..row()
        },
        Row {
            name: "rollout at 100%",
            releases: vec![rel("1.1.0").stages(&[
                ("2026-11-20T00:00:00Z", 1.0),
                ("2026-11-21T00:00:00Z", 100.0),
            ])],
            expect: ok(update("1.1.0")),
            ..row()
        },
        Row {
            name: "a pin of another build of the installed version is no redeploy",
            installed: Some("1.0.0"),
            releases: vec![rel("1.0.0+a")],
            pin: Some("1.0.0+a"),
            ..row()
        },
        Row {
            name: "another build of the installed version is not newer",
            installed: Some("1.0.0+a"),
            releases: vec![rel("1.0.0+b")],
            ..row()
        },
        Row {
            name: "another build of the installed version is not a downgrade",
            installed: Some("1.0.0+b"),
            releases: vec![rel("1.0.0+a")],
            allow_downgrade: true,
            ..row()
        },
        Row {
            name: "a failed release re-published with other build metadata stays failed",
            installed: Some("0.9.0"),
            failed: &["1.0.0+build.1"],
            releases: vec![rel("0.9.0"), rel("1.0.0+build.2")],
            ..row()
        },
        Row {
            name: "a skipped release re-published with build metadata stays skipped",
            skipped: &["1.1.0"],
            releases: vec![rel("1.1.0+x")],
            ..row()
        },
        Row {
            name: "a newer release is newer whatever its build metadata",
            installed: Some("1.0.0+zzz"),
            releases: vec![rel("1.0.1+aaa")],
            expect: ok(update("1.0.1+aaa")),
            ..row()
        },
        Row {
            name: "min_version is met by another build of it",
            installed: Some("1.0.0+a"),
            releases: vec![rel("1.1.0").min("1.0.0+b")],
            expect: ok(update("1.1.0")),
            ..row()
        },
        Row {
            name: "a rollout stage whose at is now is in force",
            releases: vec![rel("1.1.0").stages(&[("2026-11-20T00:00:00Z", 0.0), (NOW, 100.0)])],
            expect: ok(update("1.1.0")),
            ..row()
        },
        Row {
            name: "a pin of a critical release is critical",
            releases: vec![rel("1.1.0").critical(), rel("1.2.0")],
            pin: Some("1.1.0"),
            expect: ok(Choice {
                critical: true,
                ..update("1.1.0")
            }),
            ..row()
        },
        Row {
            name: "a critical release outside this device's rollout does not",
            releases: vec![rel("1.1.0").critical().stages(&[(NOW, 0.0)]), rel("1.2.0")],
            expect: ok(update("1.2.0")),
            ..row()
        },
        Row {
            name: "rollout before its first stage",
            releases: vec![rel("1.1.0").stages(&[("2026-11-23T00:00:00Z", 100.0)])],
            ..row()
        },
    ]
}

#[test]
fn selection_table() {
    let mut failures = Vec::new();
    for r in selection_rows() {
        let got = run(&r);
        if got != r.expect {
            failures.push(format!(
                "{}: expected {:?}, got {:?}",
                r.name, r.expect, got
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn selection_errors_name_expected_and_found() {
    let m = manifest("stable", vec![rel("1.1.0")]);
    let pin = v("9.9.9");
    let device = Device {
        product: "p",
        target: TARGET,
        device_id: "d",
        installed: None,
        security_floor: 0,
        skipped: &[],
        failed: &[],
    };
    let policy = Policy {
        pin: Some(&pin),
        ..Policy::default()
    };
    let e = select(&m, &device, &policy, ts(NOW)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NoSuchVersion);
    assert!(e.to_string().contains("9.9.9") && e.to_string().contains("1.1.0"));
}

/// A row of [`withheld_table`]: its name, the releases listed, the device's floor, skips
/// and failures, and what `withheld` says of a staged 1.1.0.
type WithheldRow = (
    &'static str,
    Vec<Release>,
    u64,
    &'static [&'static str],
    &'static [&'static str],
    Option<&'static str>,
);

/// What a check says of a staged 1.1.0 (DESIGN §5.3): offered as long as the manifest
/// lists it for the target within this device's rollout, unskipped (or critical), at or
/// above the floor and not failed here; else why not.
#[test]
fn withheld_table() {
    let rows: Vec<WithheldRow> = vec![
        ("listed, no rollout", vec![rel("1.1.0")], 0, &[], &[], None),
        (
            "listed with build metadata",
            vec![rel("1.1.0+b2")],
            0,
            &[],
            &[],
            None,
        ),
        (
            "a newer release beside it",
            vec![rel("1.1.0"), rel("1.2.0")],
            0,
            &[],
            &[],
            None,
        ),
        (
            "halted",
            vec![rel("1.1.0").stages(&[("2026-11-01T00:00:00Z", 0.0)])],
            0,
            &[],
            &[],
            Some("its rollout no longer includes this device (halted, or narrowed)"),
        ),
        (
            "ramping, not yet here",
            vec![rel("1.1.0").stages(&[
                ("2026-11-01T00:00:00Z", 100.0),
                ("2026-11-20T00:00:00Z", 0.0),
                ("2026-11-30T00:00:00Z", 100.0),
            ])],
            0,
            &[],
            &[],
            Some("its rollout no longer includes this device (halted, or narrowed)"),
        ),
        (
            "withdrawn",
            vec![rel("1.2.0")],
            0,
            &[],
            &[],
            Some("the channel no longer lists it for target x86_64-linux"),
        ),
        (
            "listed for another target only",
            vec![rel("1.1.0").only_for("aarch64-linux")],
            0,
            &[],
            &[],
            Some("the channel no longer lists it for target x86_64-linux"),
        ),
        (
            "skipped",
            vec![rel("1.1.0")],
            0,
            &["1.1.0"],
            &[],
            Some("it was skipped"),
        ),
        (
            "skipped but critical",
            vec![rel("1.1.0").critical()],
            0,
            &["1.1.0"],
            &[],
            None,
        ),
        (
            "below a floor raised since",
            vec![rel("1.1.0").security(1)],
            2,
            &[],
            &[],
            Some("its security version 1 is below this device's floor 2"),
        ),
        (
            "min_version raised past the installed 1.0.0",
            vec![rel("1.0.5"), rel("1.1.0").min("1.0.5")],
            0,
            &[],
            &[],
            Some("it now needs 1.0.5 or newer installed first (its min_version)"),
        ),
        (
            "failed here",
            vec![rel("1.1.0")],
            0,
            &[],
            &["1.1.0"],
            Some("it failed on this device"),
        ),
    ];
    for (name, releases, floor, skipped, failed, expect) in rows {
        let (skipped, failed, installed) = (versions(skipped), versions(failed), v("1.0.0"));
        let device = device_1(Some(&installed), floor, &skipped, &failed);
        let found = withheld(
            &manifest("stable", releases),
            &device,
            false,
            &v("1.1.0"),
            ts(NOW),
        );
        assert_eq!(found.as_deref(), expect, "{name}");
    }
}

/// What an "up to date" says of the newest release newer than the installed 1.0.0 that is
/// not offered: why, in the words of the rule that holds it; nothing when nothing newer is
/// held back.
#[test]
fn held_back_table() {
    let rows: Vec<WithheldRow> = vec![
        ("nothing newer", vec![rel("1.0.0")], 0, &[], &[], None),
        (
            "newer, for another target only",
            vec![rel("1.1.0").only_for("aarch64-linux")],
            0,
            &[],
            &[],
            None,
        ),
        (
            "halted",
            vec![rel("1.1.0").stages(&[("2026-11-01T00:00:00Z", 0.0)])],
            0,
            &[],
            &[],
            Some("its rollout has not reached this device (at 0 % of devices now)"),
        ),
        (
            "ramping past 0.5 %, not here yet",
            vec![rel("1.1.0").stages(&[("2026-11-01T00:00:00Z", 0.5)])],
            0,
            &[],
            &[],
            Some("its rollout has not reached this device (at 0.5 % of devices now)"),
        ),
        (
            "skipped",
            vec![rel("1.1.0")],
            0,
            &["1.1.0"],
            &[],
            Some("it was skipped"),
        ),
        (
            "below the floor",
            vec![rel("1.1.0").security(1)],
            2,
            &[],
            &[],
            Some("its security version 1 is below this device's floor 2"),
        ),
        (
            "no step towards its min_version",
            vec![rel("1.1.0").min("1.0.5")],
            0,
            &[],
            &[],
            Some("it needs 1.0.5 or newer installed first (its min_version)"),
        ),
        (
            "failed here",
            vec![rel("1.1.0")],
            0,
            &[],
            &["1.1.0"],
            Some("it failed on this device"),
        ),
        (
            "the newest held is the one named",
            vec![rel("1.1.0"), rel("1.2.0")],
            0,
            &["1.1.0", "1.2.0"],
            &[],
            Some("it was skipped"),
        ),
    ];
    for (name, releases, floor, skipped, failed, expect) in rows {
        let (skipped, failed, installed) = (versions(skipped), versions(failed), v("1.0.0"));
        let device = device_1(Some(&installed), floor, &skipped, &failed);
        let m = manifest("stable", releases);
        let found = held_back(&m, &device, ts(NOW));
        assert_eq!(found.as_ref().map(|h| h.reason.as_str()), expect, "{name}");
        if let Some(h) = found {
            let newest = m.releases.iter().map(|r| &r.version).max().unwrap();
            assert_eq!(&h.version, newest, "{name}");
        }
    }
}

/// Every row of the selection table that ends up to date without a pin names a held-back
/// release exactly when the channel lists one for the target newer than the installed
/// version: an "up to date" beside a newer release always has its reason.
#[test]
fn an_up_to_date_beside_a_newer_release_has_its_reason() {
    let mut seen = (0, 0);
    for r in selection_rows() {
        if r.pin.is_some() || run(&r) != Ok(Decision::UpToDate) {
            continue;
        }
        let installed = r.installed.map(v);
        let (skipped, failed) = (versions(r.skipped), versions(r.failed));
        let device = device_1(installed.as_ref(), r.floor, &skipped, &failed);
        let newer_listed = r.releases.iter().any(|rel| {
            rel.targets.contains_key(TARGET)
                && installed
                    .as_ref()
                    .is_none_or(|cur| rel.version.cmp_precedence(cur).is_gt())
        });
        let m = manifest(r.channel, r.releases.clone());
        let found = held_back(&m, &device, ts(NOW));
        assert_eq!(found.is_some(), newer_listed, "{}: {found:?}", r.name);
        if newer_listed {
            seen.0 += 1;
        } else {
            seen.1 += 1;
        }
    }
    // The table has rows of both kinds, so neither half of the rule goes untested.
    assert!(seen.0 >= 3 && seen.1 >= 3, "{seen:?}");
}

/// A staged downgrade (1.0.0 below an installed 1.1.0) is offered only while the whole
/// channel is behind the installed version, and only with `allow_downgrade`: a newer
/// release listed again, even halted, takes the reason for it away.
#[test]
fn a_staged_downgrade_is_withheld_once_the_channel_is_not_behind() {
    let installed = v("1.1.0");
    let device = Device {
        product: "p",
        target: TARGET,
        device_id: "device-1",
        installed: Some(&installed),
        security_floor: 0,
        skipped: &[],
        failed: &[],
    };
    let halted = rel("1.1.1").stages(&[("2026-11-01T00:00:00Z", 0.0)]);
    for (releases, allow_downgrade, expect) in [
        (vec![rel("1.0.0")], true, None),
        (vec![rel("1.0.0")], false, Some(())),
        (vec![rel("1.0.0"), halted], true, Some(())),
    ] {
        let m = manifest("stable", releases);
        let found = withheld(&m, &device, allow_downgrade, &v("1.0.0"), ts(NOW));
        assert_eq!(found.as_ref().map(drop), expect, "{found:?}");
        if let Some(why) = found {
            assert_eq!(why, "it is older than the installed 1.1.0, and the channel no longer takes the device back down");
        }
    }
}

#[test]
fn bucket_is_the_documented_hash() {
    // Pinned with Python's hashlib, an implementation independent of ours.
    assert_eq!(
        rollout_bucket("com.acme.gateway", "device-1", &v("1.4.2")),
        5520
    );
    assert_eq!(rollout_bucket("p", "d", &v("0.1.0-rc.1")), 4029);
}

/// A device's poll draw is SHA-256 over "evergreen-poll\0", its id, "\0", then 1 and the
/// time the schedule counts from (i64, big-endian) or 0 alone, then the failure count (u32,
/// big-endian); the first 8 bytes, big-endian. It must not move when the library does: a
/// fleet updated to a new build would otherwise all poll anew.
#[test]
fn poll_draw_is_the_documented_hash() {
    // Pinned with Python's hashlib, an implementation independent of ours.
    let since = Timestamp::from_unix(1_700_000_000);
    assert_eq!(
        poll_draw("device-1", Some(since), 0),
        17_663_923_209_398_268_672
    );
    assert_eq!(poll_draw("device-1", None, 3), 11_547_527_294_768_924_422);
}

fn device_ids(n: usize) -> impl Iterator<Item = String> {
    (0..n).map(|i| format!("device-{i:06}"))
}

#[test]
fn rollout_set_only_grows_as_percent_grows() {
    let percents = [0.0, 0.5, 1.0, 5.0, 20.0, 33.3, 50.0, 99.0, 99.99, 100.0];
    let releases: Vec<Release> = percents
        .iter()
        .map(|&p| rel("1.4.2").stages(&[(NOW, p)]))
        .collect();
    let mut sizes = vec![0usize; percents.len()];
    for id in device_ids(10_000) {
        let mut was_in = false;
        for (i, r) in releases.iter().enumerate() {
            let is_in = in_rollout(r, "p", &id, ts(NOW));
            assert!(
                is_in || !was_in,
                "{id} left the rollout at {}%",
                percents[i]
            );
            was_in = is_in;
            sizes[i] += usize::from(is_in);
        }
    }
    assert_eq!(sizes[0], 0);
    assert_eq!(sizes[percents.len() - 1], 10_000);
}

/// DESIGN §5.2: in when `b < percent × 100`, exactly, for the percentages operators write.
/// `0.07 * 100.0` is 7.000000000000001 in floating point, which let bucket 7 in.
#[test]
fn rollout_threshold_is_exact_for_every_two_decimal_percent() {
    let mut wrong = Vec::new();
    for hundredths in 0..=10_000u64 {
        let written = format!("{}.{:02}", hundredths / 100, hundredths % 100);
        let percent: f64 = serde_json::from_str(&written).unwrap();
        // The last bucket in and the first one out (the rule is monotonic in the bucket).
        let last_in = hundredths == 0 || bucket_in_rollout(hundredths - 1, percent);
        let first_out = hundredths == 10_000 || !bucket_in_rollout(hundredths, percent);
        if !(last_in && first_out) {
            wrong.push(format!("{written} %"));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} wrong: {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );
}

#[test]
fn twenty_percent_rollout_reaches_twenty_percent_of_devices() {
    let r = rel("1.4.2").stages(&[("2026-11-21T00:00:00Z", 20.0)]);
    let n = 100_000;
    let hits = device_ids(n)
        .filter(|id| in_rollout(&r, "com.acme.gateway", id, ts(NOW)))
        .count();
    let fraction = hits as f64 / n as f64;
    assert!((0.19..=0.21).contains(&fraction), "measured {fraction}");
}

fn policy(json: &str) -> DeployPolicy {
    serde_json::from_str(json).unwrap()
}

const WEEKLY_MON: &str = r#"{"policy": "window", "window":
    {"days": ["mon"], "start": "02:00", "end": "04:00", "utc_offset": "+01:00"}}"#;
const FRIDAY_NIGHT: &str = r#"{"policy": "window", "window":
    {"days": ["fri"], "start": "23:00", "end": "01:00", "utc_offset": "+00:00"}}"#;

/// Monday 23:00 to 01:00 at UTC-5: Tuesday 04:00 to 06:00 UTC.
const MONDAY_NIGHT_WEST: &str = r#"{"policy": "window", "window":
    {"days": ["mon"], "start": "23:00", "end": "01:00", "utc_offset": "-05:00"}}"#;

/// What a deploy row expects; `Wait` carries the RFC 3339 time it waits until.
#[derive(Debug)]
enum Want {
    Now,
    Wait(&'static str),
    Manual,
}

#[test]
fn deploy_table() {
    // 2026-11-23 is a Monday; 2026-11-27 a Friday.
    let rows: &[(&str, &str, bool, &str, Want)] = &[
        (
            "immediate",
            r#"{"policy": "immediate"}"#,
            false,
            NOW,
            Want::Now,
        ),
        (
            "at in the future",
            r#"{"policy": "at", "at": "2026-11-25T00:00:00Z"}"#,
            false,
            NOW,
            Want::Wait("2026-11-25T00:00:00Z"),
        ),
        (
            "at in the past",
            r#"{"policy": "at", "at": "2026-11-20T00:00:00Z"}"#,
            false,
            NOW,
            Want::Now,
        ),
        (
            "critical ignores at",
            r#"{"policy": "at", "at": "2026-11-25T00:00:00Z"}"#,
            true,
            NOW,
            Want::Now,
        ),
        (
            "download only",
            r#"{"policy": "download_only"}"#,
            false,
            NOW,
            Want::Manual,
        ),
        (
            "critical in download only",
            r#"{"policy": "download_only"}"#,
            true,
            NOW,
            Want::Now,
        ),
        (
            "inside the window",
            WEEKLY_MON,
            false,
            "2026-11-23T01:30:00Z",
            Want::Now,
        ),
        (
            "before the window",
            WEEKLY_MON,
            false,
            "2026-11-23T00:30:00Z",
            Want::Wait("2026-11-23T01:00:00Z"),
        ),
        (
            "at the window's end",
            WEEKLY_MON,
            false,
            "2026-11-23T03:00:00Z",
            Want::Wait("2026-11-30T01:00:00Z"),
        ),
        (
            "outside the window on another day",
            WEEKLY_MON,
            false,
            NOW,
            Want::Wait("2026-11-23T01:00:00Z"),
        ),
        (
            "critical waits for the window",
            WEEKLY_MON,
            true,
            NOW,
            Want::Wait("2026-11-23T01:00:00Z"),
        ),
        (
            "critical inside the window",
            WEEKLY_MON,
            true,
            "2026-11-23T02:59:59Z",
            Want::Now,
        ),
        (
            "at exactly its time",
            r#"{"policy": "at", "at": "2026-11-22T10:00:00Z"}"#,
            false,
            NOW,
            Want::Now,
        ),
        (
            "at the window's start",
            WEEKLY_MON,
            false,
            "2026-11-23T01:00:00Z",
            Want::Now,
        ),
        (
            "a second before the window's start",
            WEEKLY_MON,
            false,
            "2026-11-23T00:59:59Z",
            Want::Wait("2026-11-23T01:00:00Z"),
        ),
        (
            "west of UTC, crossing local midnight: the next UTC day",
            MONDAY_NIGHT_WEST,
            false,
            "2026-11-24T05:30:00Z",
            Want::Now,
        ),
        (
            "west of UTC, crossing local midnight: closed at its end",
            MONDAY_NIGHT_WEST,
            false,
            "2026-11-24T06:00:00Z",
            Want::Wait("2026-12-01T04:00:00Z"),
        ),
        (
            "west of UTC: Monday in UTC, Sunday evening locally",
            MONDAY_NIGHT_WEST,
            false,
            "2026-11-23T03:00:00Z",
            Want::Wait("2026-11-24T04:00:00Z"),
        ),
        (
            "crossing midnight, before midnight",
            FRIDAY_NIGHT,
            false,
            "2026-11-27T23:30:00Z",
            Want::Now,
        ),
        (
            "crossing midnight, at its opening second",
            FRIDAY_NIGHT,
            false,
            "2026-11-27T23:00:00Z",
            Want::Now,
        ),
        (
            "crossing midnight, the second before it opens",
            FRIDAY_NIGHT,
            false,
            "2026-11-27T22:59:59Z",
            Want::Wait("2026-11-27T23:00:00Z"),
        ),
        (
            "crossing midnight, after midnight",
            FRIDAY_NIGHT,
            false,
            "2026-11-28T00:30:00Z",
            Want::Now,
        ),
        (
            "crossing midnight, after it closed",
            FRIDAY_NIGHT,
            false,
            "2026-11-28T01:00:00Z",
            Want::Wait("2026-12-04T23:00:00Z"),
        ),
        (
            "crossing midnight, early on the window's own day",
            FRIDAY_NIGHT,
            false,
            "2026-11-27T00:30:00Z",
            Want::Wait("2026-11-27T23:00:00Z"),
        ),
        (
            "crossing midnight, the late evening before",
            FRIDAY_NIGHT,
            false,
            "2026-11-26T23:30:00Z",
            Want::Wait("2026-11-27T23:00:00Z"),
        ),
    ];
    let mut failures = Vec::new();
    for (name, json, critical, now, expect) in rows {
        let got = deploy(&policy(json), *critical, ts(now));
        let matches = match (&got, expect) {
            (Deploy::Now, Want::Now) | (Deploy::Manual, Want::Manual) => true,
            (Deploy::Wait { until, reason }, Want::Wait(t)) => {
                *until == ts(t) && !reason.is_empty()
            }
            _ => false,
        };
        if !matches {
            failures.push(format!("{name}: expected {expect:?}, got {got:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// On the host's clock with the newest `issued` seen: a window is judged on the host's
/// clock (a publisher's a little ahead is no reason to wait), and not at all while that
/// clock is known wrong; an `at` time on the clock pulled up to `issued`.
#[test]
fn the_window_is_judged_on_the_host_clock_and_waits_while_it_is_wrong() {
    let at = r#"{"policy": "at", "at": "2026-11-27T12:00:00Z"}"#;
    // Issued inside Friday night's window, Friday 23:30.
    let issued = Some(ts("2026-11-27T23:30:00Z"));
    let rows: &[(&str, &str, bool, &str, Option<&str>)] = &[
        (
            "inside, clock right",
            FRIDAY_NIGHT,
            false,
            "2026-11-27T23:40:00Z",
            None,
        ),
        (
            "inside, clock 10 min behind the publisher's",
            FRIDAY_NIGHT,
            false,
            "2026-11-27T23:20:00Z",
            None,
        ),
        (
            "outside on the host's clock, though issued inside",
            FRIDAY_NIGHT,
            false,
            "2026-11-28T02:00:00Z",
            Some("2026-12-04T23:00:00Z"),
        ),
        (
            "clock lost power",
            FRIDAY_NIGHT,
            false,
            "1970-01-01T00:00:00Z",
            Some("2026-12-04T23:00:00Z"),
        ),
        (
            "clock lost power, critical",
            FRIDAY_NIGHT,
            true,
            "1970-01-01T00:00:00Z",
            Some("2026-12-04T23:00:00Z"),
        ),
        (
            "clock exactly an hour behind the publisher's: judged",
            FRIDAY_NIGHT,
            false,
            "2026-11-27T22:30:00Z",
            Some("2026-11-27T23:00:00Z"),
        ),
        (
            "clock more than an hour behind: not judged",
            FRIDAY_NIGHT,
            false,
            "2026-11-27T22:29:59Z",
            Some("2026-12-04T23:00:00Z"),
        ),
        (
            "clock a day behind",
            FRIDAY_NIGHT,
            false,
            "2026-11-26T23:30:00Z",
            Some("2026-12-04T23:00:00Z"),
        ),
        (
            "an at time passed by issued, clock lost power",
            at,
            false,
            "1970-01-01T00:00:00Z",
            None,
        ),
    ];
    for (name, json, critical, clock, want) in rows {
        let got = deploy_on_clock(&policy(json), *critical, ts(clock), issued);
        match (&got, want) {
            (Deploy::Now, None) => {}
            (Deploy::Wait { until, .. }, Some(t)) if *until == ts(t) => {}
            _ => panic!("{name}: expected {want:?}, got {got:?}"),
        }
    }
    let Deploy::Wait { reason, .. } = deploy_on_clock(
        &policy(FRIDAY_NIGHT),
        false,
        ts("1970-01-01T00:00:00Z"),
        issued,
    ) else {
        unreachable!()
    };
    assert!(reason.contains("judged once the clock is set"), "{reason}");
}

/// A clock known wrong waits for the window's first opening strictly after the newest
/// `issued` (`Window::next_start`), also when `issued` falls on an opening second: the
/// wait names a time still ahead, never the moment the device already counts as now.
#[test]
fn a_wrong_clock_waits_for_an_opening_strictly_after_the_newest_issued() {
    // Friday 23:00 UTC, the opening second of FRIDAY_NIGHT.
    let issued = ts("2026-11-27T23:00:00Z");
    let lost_power = ts("1970-01-01T00:00:00Z");
    for critical in [false, true] {
        let got = deploy_on_clock(&policy(FRIDAY_NIGHT), critical, lost_power, Some(issued));
        let Deploy::Wait { until, .. } = got else {
            panic!("critical {critical}: expected a wait, got {got:?}");
        };
        assert_eq!(until, ts("2026-12-04T23:00:00Z"), "critical {critical}");
    }
}

#[test]
fn deploy_policy_round_trips_through_json() {
    for json in [
        r#"{"policy":"immediate"}"#,
        r#"{"policy":"download_only"}"#,
        r#"{"policy":"at","at":"2026-11-25T00:00:00Z"}"#,
        r#"{"policy":"window","window":{"days":["mon","sat"],"start":"23:00","end":"01:30","utc_offset":"-05:30"}}"#,
    ] {
        let p = policy(json);
        assert_eq!(serde_json::to_string(&p).unwrap(), json);
    }
}

#[test]
fn deploy_policy_refuses_malformed_objects() {
    for bad in [
        r#"{"policy": "weekly"}"#,
        r#"{"policy": "window"}"#,
        r#"{"policy": "at"}"#,
        r#"{"policy": "immediate", "at": "2026-11-25T00:00:00Z"}"#,
        r#"{"policy": "window", "window": {"days": ["mon"], "start": "2:00", "end": "04:00"}}"#,
        r#"{"policy": "window", "window": {"days": ["mon"], "start": "24:00", "end": "04:00"}}"#,
        r#"{"policy": "window", "window": {"days": ["mo"], "start": "02:00", "end": "04:00"}}"#,
        r#"{"policy": "window", "window": {"days": [], "start": "02:00", "end": "04:00"}}"#,
        r#"{"policy": "window", "window": {"start": "02:00", "end": "02:00"}}"#,
        r#"{"policy": "window", "window": {"start": "02:00", "end": "04:00", "utc_offset": "+1"}}"#,
        r#"{"policy": "window", "window": {"start": "02:00", "end": "04:00", "tz": "UTC"}}"#,
    ] {
        assert!(
            serde_json::from_str::<DeployPolicy>(bad).is_err(),
            "accepted {bad}"
        );
    }
}

/// A small deterministic generator so the sampled `random` values cover the whole range.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[test]
fn next_check_jitters_within_a_quarter_and_backs_off_to_four_times() {
    let last = ts(NOW);
    let interval: u64 = 21_600;
    let mut seed = 7;
    for (failures, factor) in [
        (0, 1),
        (1, 2),
        (2, 4),
        (3, 4),
        (10, 4),
        (64, 4),
        (u32::MAX, 4),
    ] {
        let base = (interval * factor) as f64;
        let (mut lo, mut hi) = (f64::MAX, f64::MIN);
        let randoms = (0..2_000).map(|_| splitmix(&mut seed)).chain([0, u64::MAX]);
        for random in randoms {
            let delay = (next_check(last, interval, 0.25, failures, random, None).unix()
                - last.unix()) as f64;
            assert!(
                (base * 0.75 - 1.0..=base * 1.25 + 1.0).contains(&delay),
                "failures {failures}: delay {delay} outside {base} ± 25%"
            );
            lo = lo.min(delay);
            hi = hi.max(delay);
        }
        // the spread is real, not a constant offset
        assert!(
            hi - lo > base * 0.45,
            "failures {failures}: spread {lo}..{hi}"
        );
    }
}

/// A device's poll draw spreads a fleet's checks evenly over the jitter, whatever its
/// rollout bucket (the devices a rollout reaches first do not also poll first), and moves
/// with every round of the schedule.
#[test]
fn poll_draws_spread_a_fleet_evenly_and_apart_from_its_rollout_buckets() {
    let (interval, last) = (21_600u64, ts(NOW));
    let version = Version::new(1, 2, 0);
    let mut all = [0u32; 10];
    let mut early = [0u32; 10];
    let mut moved = 0;
    for i in 0..20_000 {
        let id = format!("device-{i}");
        let draw = poll_draw(&id, Some(last), 0);
        let delay = next_check(last, interval, 0.25, 0, draw, None).unix() - last.unix();
        // tenths of the ± 25% window, 4.5 h to 7.5 h
        let tenth = ((delay - 16_200) * 10 / 10_800).clamp(0, 9) as usize;
        all[tenth] += 1;
        if rollout_bucket("com.acme.gateway", &id, &version) < 2_000 {
            early[tenth] += 1;
        }
        moved += usize::from(poll_draw(&id, Some(last.plus_secs(1)), 0) != draw);
    }
    let early_total: u32 = early.iter().sum();
    assert!(
        (3_700..4_300).contains(&early_total),
        "{early_total} in the 20% bucket"
    );
    for tenth in 0..10 {
        assert!(
            (1_800..2_200).contains(&all[tenth]),
            "tenth {tenth}: {all:?}"
        );
        let share = early[tenth] as f64 / early_total as f64;
        assert!((0.08..0.12).contains(&share), "tenth {tenth}: {early:?}");
    }
    assert_eq!(moved, 20_000);
}

#[test]
fn next_check_tolerates_nonsense_jitter() {
    let last = ts(NOW);
    for jitter in [f64::NAN, f64::INFINITY, -1.0] {
        assert_eq!(
            next_check(last, 100, jitter, 0, u64::MAX, None).unix() - last.unix(),
            100
        );
    }
    let far = next_check(last, u64::MAX, 0.25, u32::MAX, u64::MAX, None);
    assert!(far > last);
}

/// A server's `Retry-After` holds the next check back to the time it asked for, never
/// brings it forward, and holds nothing back once that time is behind the schedule.
#[test]
fn next_check_waits_for_a_retry_after_and_only_then() {
    let last = ts(NOW);
    let at = |secs: i64| Some(last.plus_secs(secs));
    // interval 3600, no jitter: due at +3600 without failures, +7200 after one
    for (failures, not_before, due) in [
        (0, None, 3600),
        (1, None, 7200),
        // asked for longer than the schedule: then, and not before
        (1, at(10_800), 10_800),
        (0, at(86_400), 86_400),
        // asked for less, or for a time already past: the schedule stands
        (1, at(60), 7200),
        (1, at(7200), 7200),
        (0, at(-3600), 3600),
    ] {
        assert_eq!(
            next_check(last, 3600, 0.0, failures, 1 << 63, not_before).unix() - last.unix(),
            due,
            "failures {failures}, not before {not_before:?}"
        );
    }
    // A fleet told to come back at T (an HTTP date is the same for every device) comes
    // back from T on, spread over a quarter of the interval after it, never before it.
    let mut seed = 11;
    let (mut lo, mut hi) = (i64::MAX, i64::MIN);
    let randoms = (0..2_000).map(|_| splitmix(&mut seed)).chain([0, u64::MAX]);
    for random in randoms {
        let next = next_check(last, 3600, 0.25, 1, random, at(36_000));
        let after = next.unix() - last.plus_secs(36_000).unix();
        assert!(
            (0..=900).contains(&after),
            "random {random}: {after} s after"
        );
        (lo, hi) = (lo.min(after), hi.max(after));
    }
    assert!(hi - lo > 800, "spread {lo}..{hi}");
}

/// A device that never checked is due at once, but not before the time a server asked
/// for (a check of another channel failed with `Retry-After`); after that time, a fleet is
/// spread over a quarter of the interval, as after a failed check of its own.
#[test]
fn a_first_check_waits_for_a_retry_after_spread_by_the_jitter() {
    let now = ts(NOW);
    let at = |secs: i64| Some(now.plus_secs(secs));
    // interval 3600
    for (jitter, random, not_before, due) in [
        (0.25, 1 << 63, None, 0),
        (0.25, u64::MAX, None, 0),
        (0.25, 0, at(-60), 0),
        (0.25, u64::MAX, at(0), 0),
        (0.0, u64::MAX, at(3600), 3600),
        (0.25, 0, at(3600), 3600),
        (0.25, 1 << 63, at(3600), 3600 + 450),
        (0.25, u64::MAX, at(3600), 3600 + 900),
        (f64::NAN, u64::MAX, at(3600), 3600),
        (5.0, 1 << 63, at(86_400), 86_400 + 1798),
    ] {
        assert_eq!(
            first_check(now, 3600, jitter, random, not_before).unix() - now.unix(),
            due,
            "jitter {jitter}, random {random}, not before {not_before:?}"
        );
    }
    let mut seed = 13;
    let (mut lo, mut hi) = (i64::MAX, i64::MIN);
    for random in (0..2_000).map(|_| splitmix(&mut seed)) {
        let after = first_check(now, 3600, 0.25, random, at(3600)).unix() - now.unix() - 3600;
        assert!(
            (0..=900).contains(&after),
            "random {random}: {after} s after"
        );
        (lo, hi) = (lo.min(after), hi.max(after));
    }
    assert!(hi - lo > 800, "spread {lo}..{hi}");
}

/// What a server may ask for: seconds rounded up, at most a day, nothing for no wait.
#[test]
fn a_retry_after_is_capped_at_a_day() {
    let failed = ts(NOW);
    assert_eq!(MAX_RETRY_AFTER_S, 86_400);
    for (wait, expected) in [
        (Duration::from_secs(3600), Some(3600)),
        (Duration::from_millis(1500), Some(2)),
        (Duration::from_millis(1), Some(1)),
        (Duration::from_secs(86_400), Some(86_400)),
        (Duration::from_secs(86_401), Some(86_400)),
        (Duration::from_secs(u64::MAX), Some(86_400)),
        (Duration::MAX, Some(86_400)),
        (Duration::ZERO, None),
    ] {
        assert_eq!(
            retry_not_before(failed, wait).map(|t| t.unix() - failed.unix()),
            expected,
            "{wait:?}"
        );
    }
}
