use super::rules::{offered, offered_to, rolled_out_to_everyone, Reach};
use super::verify::expires_soon;
use super::*;

/// A gzip image followed by anything is refused at the first byte after its member,
/// before the rest is read: a pipe of trailing bytes that never ends must not be
/// copied into the repository until the disk is full.
#[test]
fn an_image_is_refused_at_the_first_byte_after_its_gzip_member() {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(&[7; 10_000]).unwrap();
    let gz = e.finish().unwrap();
    let path = Path::new("rootfs.img.gz");
    for (after, found) in [(&b"junk"[..], "trailing bytes"), (&gz[..], "another gzip")] {
        let mut probe = Probe::Undecided(Vec::new());
        probe.feed(&gz, path).unwrap();
        let err = probe.feed(&after[..1], path).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(err.to_string().contains(found), "{err}");
    }
    let mut probe = Probe::Undecided(Vec::new());
    probe.feed(&gz, path).unwrap();
    assert_eq!(probe.finish(path).unwrap().unwrap().0, 10_000);
}

#[test]
fn an_expiry_soon_is_said_in_the_largest_whole_unit() {
    let now = Timestamp::from_unix(1_000_000);
    let at = |secs: i64| Timestamp::from_unix(1_000_000 + secs);
    for (left, said) in [
        (59 * 60, "under an hour"),
        (3_600, "1 hour"),
        (5 * 3_600 + 59, "5 hours"),
        (86_400, "1 day"),
        (3 * 86_400 + 7, "3 days"),
    ] {
        assert_eq!(
            expires_soon(at(left), now, 7 * 86_400).as_deref(),
            Some(said)
        );
    }
    assert_eq!(expires_soon(at(7 * 86_400), now, 7 * 86_400), None);
}

fn now() -> Timestamp {
    "2026-11-22T10:00:00Z".parse().unwrap()
}

fn setup() -> (tempfile::TempDir, Repo, SecretKey, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let key = SecretKey::generate().unwrap();
    let keys = KeySet::new(vec![key.public()], 1).unwrap();
    let repo = Repo::init(
        dir.path().join("repo"),
        "com.acme.app",
        &keys,
        &keys,
        &[&key],
        365,
        now(),
    )
    .unwrap();
    let file = dir.path().join("app.bin");
    std::fs::write(&file, b"payload").unwrap();
    (dir, repo, key, file)
}

fn publish(
    repo: &Repo,
    key: &SecretKey,
    file: &Path,
    version: &str,
    target: &str,
) -> Result<Manifest> {
    repo.release(
        "nightly",
        &version.parse().unwrap(),
        target,
        &[("app", file, ArtifactKind::File)],
        &ReleaseOptions::new(now()),
        &[key],
    )
}

/// A zip of `entries` empty files with 100-byte names: 146 bytes of central
/// directory each.
fn zip_of(path: &Path, entries: usize) {
    let mut w = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    for i in 0..entries {
        let name = format!("{i:06}-{}", "n".repeat(93));
        w.start_file(name, zip::write::SimpleFileOptions::default())
            .unwrap();
    }
    w.finish().unwrap();
}

/// A central directory larger than any device's config allows is refused by
/// `release` as every device would refuse it (and never read into memory); one only
/// larger than the default cap is warned about, naming the rule; a smaller one is not.
#[test]
fn a_central_directory_over_the_caps_is_refused_or_warned_about() {
    let (dir, repo, key, _) = setup();
    let path = dir.path().join("app.zip");
    zip_of(&path, 1);
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.windows(4).rposition(|w| w == b"PK\x05\x06").unwrap();
    let declared = crate::config::MAX_CENTRAL_DIRECTORY_BYTES + 1;
    bytes[at + 12..at + 16].copy_from_slice(&(declared as u32).to_le_bytes());
    std::fs::write(&path, &bytes).unwrap();
    let release = || {
        repo.release(
            "nightly",
            &"1.0.0".parse().unwrap(),
            "x",
            &[("app", &path, ArtifactKind::Zip)],
            &ReleaseOptions::new(now()),
            &[&key],
        )
    };
    let err = release().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::UnsafeArchive, "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("every device would refuse this archive")
            && msg.contains(&format!(
                "expected a central directory of at most 268435456 bytes, found {declared}"
            )),
        "{msg}"
    );

    // Declared just over the default 16 MiB: devices on the defaults would refuse it.
    let declared = crate::stage::ArchiveLimits::default().max_central_directory_bytes + 1;
    bytes[at + 12..at + 16].copy_from_slice(&(declared as u32).to_le_bytes());
    std::fs::write(&path, &bytes).unwrap();
    let warnings = default_limit_refusals(&[("app", &path, ArtifactKind::Zip)]).unwrap();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains(&format!(
            "expected a central directory of at most 16777216 bytes, found {declared}"
        )),
        "{warnings:?}"
    );
    // 8,000 entries, 1.17 MB of directory: published without a word.
    zip_of(&path, 8000);
    assert_eq!(
        default_limit_refusals(&[("app", &path, ArtifactKind::Zip)]).unwrap(),
        Vec::<String>::new()
    );
    release().unwrap();
}

#[test]
fn every_change_bumps_the_sequence() {
    let (_dir, repo, key, file) = setup();
    assert_eq!(
        publish(&repo, &key, &file, "1.0.0", "x").unwrap().sequence,
        1
    );
    assert_eq!(
        publish(&repo, &key, &file, "1.0.0", "y").unwrap().sequence,
        2
    );
    let v = "1.0.0".parse().unwrap();
    assert_eq!(
        repo.rollout("nightly", &v, 5.0, &Signing::new(&[&key], now()))
            .unwrap()
            .sequence,
        3
    );
    assert_eq!(
        repo.resign("nightly", &Signing::new(&[&key], now()).valid_for(Some(2)))
            .unwrap()
            .sequence,
        4
    );
    let stable = repo
        .promote(&v, "nightly", "stable", None, &Signing::new(&[&key], now()))
        .unwrap();
    assert_eq!(stable.sequence, 1);
    let report = repo.verify(now()).unwrap();
    let seqs: Vec<u64> = report.channels.iter().map(|c| c.sequence).collect();
    assert_eq!(seqs, [4, 1]);
}

/// Component names are directories of the slot, so two that differ only in case
/// would be one on a case-insensitive file system.
#[test]
fn component_names_are_distinct_ignoring_case() {
    let (_dir, repo, key, file) = setup();
    let opts = ReleaseOptions::new(now());
    let version = "1.0.0".parse().unwrap();
    for names in [["app", "app"], ["App", "app"]] {
        let components = names.map(|n| (n, file.as_path(), ArtifactKind::File));
        let err = repo
            .release("stable", &version, "x", &components, &opts, &[&key])
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config, "{err}");
        let found = format!("found {:?} and {:?}", names[0], names[1]);
        assert!(err.to_string().contains(&found), "{err}");
    }
    let components = ["app", "assets"].map(|n| (n, file.as_path(), ArtifactKind::File));
    repo.release("stable", &version, "x", &components, &opts, &[&key])
        .unwrap();
}

/// A target added to a release after its promotion is not promoted by promoting again:
/// the refusal names it and how it gets there.
#[test]
fn promoting_again_names_the_targets_added_since() {
    let (_dir, repo, key, file) = setup();
    let v: Version = "1.0.0".parse().unwrap();
    publish(&repo, &key, &file, "1.0.0", "x").unwrap();
    let signers = [&key];
    let sign = Signing::new(&signers, now());
    repo.promote(&v, "nightly", "stable", None, &sign).unwrap();
    publish(&repo, &key, &file, "1.0.0", "y").unwrap();
    let err = repo
        .promote(&v, "nightly", "stable", None, &sign)
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
    assert!(
        err.to_string().contains(
            "found 1.0.0 already there, without y which nightly lists: publish the same files there with `release --channel stable --version 1.0.0 --target …`"
        ),
        "{err}"
    );
}

/// No slot store installs an image beside other components, so no target lists one:
/// the release is refused before any blob is copied or the channel touched.
#[test]
fn an_image_beside_other_components_is_refused() {
    let (dir, repo, key, file) = setup();
    let image = dir.path().join("rootfs.img");
    std::fs::write(&image, vec![7u8; 4096]).unwrap();
    let version = "1.0.0".parse().unwrap();
    let opts = ReleaseOptions::new(now());
    for components in [
        vec![
            ("rootfs", image.as_path(), ArtifactKind::Image),
            ("cfg", file.as_path(), ArtifactKind::File),
        ],
        vec![
            ("a", image.as_path(), ArtifactKind::Image),
            ("b", image.as_path(), ArtifactKind::Image),
        ],
    ] {
        let err = repo
            .release("stable", &version, "board", &components, &opts, &[&key])
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config, "{err}");
        assert!(
            err.to_string()
                .contains("expected an image component alone"),
            "{err}"
        );
    }
    assert!(!dir.path().join("repo/channels/stable.json").exists());
    let blobs = std::fs::read_dir(dir.path().join("repo/blobs/sha256")).map_or(0, |d| d.count());
    assert_eq!(blobs, 0);
    // An image alone, and files without one, are what the slot stores take.
    let alone = [("rootfs", image.as_path(), ArtifactKind::Image)];
    repo.release("stable", &version, "board", &alone, &opts, &[&key])
        .unwrap();
    publish(&repo, &key, &file, "1.0.0", "x86_64-linux").unwrap();
}

/// An empty image is nothing a device could write into its slot: the release is
/// refused, naming the component, before its blob is kept or the channel touched,
/// whether a file or a stream held it.
#[test]
fn an_empty_image_is_refused() {
    let (dir, repo, key, _file) = setup();
    let image = dir.path().join("rootfs.img");
    std::fs::write(&image, b"").unwrap();
    let version = "1.0.0".parse().unwrap();
    let opts = ReleaseOptions::new(now());
    let empty = [("rootfs", image.as_path(), ArtifactKind::Image)];
    let err = repo
        .release("stable", &version, "board", &empty, &opts, &[&key])
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
    assert_eq!(
        err.message(),
        format!(
            "component rootfs: {}: expected an image of at least 1 byte, found 0 bytes (a device writes the image into its slot as it is: publish the image itself)",
            image.display()
        )
    );
    assert!(!dir.path().join("repo/channels/stable.json").exists());
    // Read from a stream, the image is as empty, though no file says so beforehand.
    let err = repo
        .release(
            "stable",
            &version,
            "board",
            &[("rootfs", Path::new("/dev/null"), ArtifactKind::Image)],
            &opts,
            &[&key],
        )
        .unwrap_err();
    assert_eq!(
        err.message(),
        "component rootfs: /dev/null: expected an image of at least 1 byte, found 0 bytes (a device writes the image into its slot as it is: publish the image itself)"
    );
    assert!(!dir.path().join("repo/channels/stable.json").exists());
    let blobs = std::fs::read_dir(dir.path().join("repo/blobs/sha256")).unwrap();
    assert_eq!(blobs.count(), 0, "an empty image's blob was kept");
}

/// A rotation of the manifest key that cannot write one of its documents writes none;
/// one that was cut off after some channels went in can be run again.
#[test]
fn a_rotation_is_written_whole_or_not_at_all() {
    let (dir, repo, key, file) = setup();
    publish(&repo, &key, &file, "1.0.0", "x").unwrap();
    repo.promote(
        &"1.0.0".parse().unwrap(),
        "nightly",
        "stable",
        None,
        &Signing::new(&[&key], now()),
    )
    .unwrap();
    let new_key = SecretKey::generate().unwrap();
    let opts = RotateOptions {
        manifest_keys: Some(vec![new_key.public()]),
        ..RotateOptions::default()
    };
    let channels = dir.path().join("repo/channels");
    let read = |c: &str| std::fs::read(channels.join(format!("{c}.json"))).unwrap();
    let before = (read("nightly"), read("stable"));
    // The temp file of the second channel cannot be created.
    let blocker = fsutil::temp_path(&channels.join("stable.json"));
    std::fs::create_dir(&blocker).unwrap();
    let err = repo.rotate(&opts, &[&key, &new_key], now()).err().unwrap();
    assert_eq!(err.kind(), ErrorKind::Io, "{err}");
    assert!(!dir.path().join("repo/root/2.json").exists());
    assert_eq!((read("nightly"), read("stable")), before);
    assert!(!fsutil::temp_path(&channels.join("nightly.json")).exists());
    std::fs::remove_dir(&blocker).unwrap();

    // Cut off after the first channel went in: running the rotation again finishes it.
    let next = repo.rotate(&opts, &[&key, &new_key], now()).unwrap();
    std::fs::remove_file(dir.path().join("repo/root/2.json")).unwrap();
    std::fs::write(channels.join("stable.json"), &before.1).unwrap();
    assert_eq!(next.root.root().version, 2);
    let names = |r: &Rotation| {
        r.channels
            .iter()
            .map(|m| m.channel.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&next), ["nightly", "stable"]);
    let again = repo.rotate(&opts, &[&key, &new_key], now()).unwrap();
    assert_eq!(again.root.root().version, 2);
    assert_eq!(names(&again), ["nightly", "stable"]);
    repo.verify(now()).unwrap();
}

/// Publishes `version` on nightly; with `min`, that `min_version` is set afterwards,
/// whether or not a release leads up to it: these fixtures are the channels a
/// publisher without the stepping-stone check, or a stone halted since, left.
fn publish_with(
    repo: &Repo,
    key: &SecretKey,
    file: &Path,
    version: &str,
    target: &str,
    min: Option<&str>,
) {
    let options = ReleaseOptions::new(now());
    let components = [("app", file, ArtifactKind::File)];
    repo.release(
        "nightly",
        &version.parse().unwrap(),
        target,
        &components,
        &options,
        &[key],
    )
    .unwrap();
    if let Some(min) = min {
        set_min_version(repo, key, "nightly", version, min, now());
    }
}

/// [`setup`] with 1.0.0 and 1.1.0 on nightly for `x`, then 2.0.0 whose `min_version`
/// 1.1.0 makes 1.1.0 the stepping stone of the devices on 1.0.0.
fn setup_with_a_stone() -> (tempfile::TempDir, Repo, SecretKey, PathBuf) {
    let (dir, repo, key, file) = setup();
    publish_with(&repo, &key, &file, "1.0.0", "x", None);
    publish_with(&repo, &key, &file, "1.1.0", "x", None);
    publish_with(&repo, &key, &file, "2.0.0", "x", Some("1.1.0"));
    (dir, repo, key, file)
}

/// Gives `version` on `channel` the `min_version` `min`, with no check.
fn set_min_version(
    repo: &Repo,
    key: &SecretKey,
    channel: &str,
    version: &str,
    min: &str,
    now: Timestamp,
) {
    let _lock = repo.lock().unwrap();
    let trusted = repo.trusted_root().unwrap();
    let change = Change {
        channel,
        create: false,
        expires_in_days: None,
        now,
    };
    repo.update_channel(&trusted, &change, &[key], |m| {
        for r in m.releases.iter_mut() {
            if r.version.to_string() == version {
                r.min_version = Some(min.parse().unwrap());
            }
        }
        Ok(Edit::Changed)
    })
    .unwrap();
}

/// A ramp scheduled ahead (stages after now, listed in any order) is halted by `rollout
/// --percent 0`: the stages still to come are dropped, so none lets devices in again when
/// its time comes. The halt used to be refused (a future stage listed last) or undone by
/// the schedule (one listed before).
#[test]
fn rollout_drops_the_stages_scheduled_after_it() {
    let (_dir, repo, key, file) = setup();
    publish(&repo, &key, &file, "1.0.0", "x").unwrap();
    let v: Version = "1.0.0".parse().unwrap();
    let stage = |at: Timestamp, percent| RolloutStage { at, percent };
    for (i, sorted) in [true, false].into_iter().enumerate() {
        let t = now().plus_days(10 * i as i64);
        let mut schedule = vec![
            stage(t, 5.0),
            stage(t.plus_days(1), 50.0),
            stage(t.plus_days(2), 100.0),
        ];
        if !sorted {
            schedule.rotate_left(1);
        }
        {
            let _lock = repo.lock().unwrap();
            let trusted = repo.trusted_root().unwrap();
            let change = Change {
                channel: "nightly",
                create: false,
                expires_in_days: None,
                now: t,
            };
            repo.update_channel(&trusted, &change, &[&key], |m| {
                m.releases[0].rollout = Some(Rollout { stages: schedule });
                Ok(Edit::Changed)
            })
            .unwrap();
        }
        let halt = t.plus_secs(60);
        let m = repo
            .rollout("nightly", &v, 0.0, &Signing::new(&[&key], halt))
            .unwrap();
        let rollout = m.releases[0].rollout.as_ref().unwrap();
        assert_eq!(
            rollout.stages,
            [stage(t, 5.0), stage(halt, 0.0)],
            "{sorted}"
        );
        assert_eq!(rollout.percent_at(t.plus_days(3)), 0.0, "{sorted}");
    }
    // A clock behind the channel's last issue is refused.
    let err = repo
        .rollout("nightly", &v, 10.0, &Signing::new(&[&key], now()))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
    assert!(
        err.message()
            .contains("expected a clock at or after the channel's last issued"),
        "{err}"
    );
}

fn versions(list: &[&str]) -> Vec<Version> {
    list.iter().map(|v| v.parse().unwrap()).collect()
}

#[test]
fn prune_keeps_the_newest_of_each_target() {
    let (_dir, repo, key, file) = setup();
    for (v, target) in [
        ("1.0.0", "x"),
        ("1.1.0", "x"),
        ("1.2.0", "y"),
        ("1.3.0", "x"),
    ] {
        publish_with(&repo, &key, &file, v, target, None);
    }
    let (m, removed) = repo
        .prune("nightly", 1, &Signing::new(&[&key], now()))
        .unwrap();
    assert_eq!(removed, versions(&["1.1.0", "1.0.0"]));
    let left: Vec<Version> = m.releases.iter().map(|r| r.version.clone()).collect();
    assert_eq!(left, versions(&["1.2.0", "1.3.0"]));
    assert_eq!(m.sequence, 5);
    // What was written is what a client accepts.
    let report = repo.verify(now()).unwrap();
    assert_eq!(report.channels[0].sequence, 5);
}

#[test]
fn prune_keeps_the_stepping_stones_kept_releases_name() {
    let (_dir, repo, key, file) = setup_with_a_stone();
    publish_with(&repo, &key, &file, "3.0.0", "x", Some("2.0.0"));
    let (m, removed) = repo
        .prune("nightly", 1, &Signing::new(&[&key], now()))
        .unwrap();
    assert_eq!(removed, versions(&["1.0.0"]));
    assert_eq!(m.releases.len(), 3);
}

#[test]
fn prune_with_nothing_to_remove_writes_nothing_and_keep_zero_is_refused() {
    let (_dir, repo, key, file) = setup();
    publish_with(&repo, &key, &file, "1.0.0", "x", None);
    let (m, removed) = repo
        .prune("nightly", 5, &Signing::new(&[&key], now()))
        .unwrap();
    assert!(removed.is_empty());
    assert_eq!(m.sequence, 1);
    let err = repo
        .prune("nightly", 0, &Signing::new(&[&key], now()))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    let err = repo
        .prune("stable", 1, &Signing::new(&[&key], now()))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert_eq!(repo.verify(now()).unwrap().channels[0].sequence, 1);
}

#[test]
fn a_manifest_devices_would_refuse_as_too_large_is_not_published() {
    let (_dir, repo, key, file) = setup();
    publish(&repo, &key, &file, "1.0.0", "x").unwrap();
    let channel = repo.path().join("channels/nightly.json");
    let before = std::fs::read(&channel).unwrap();
    let mut options = ReleaseOptions::new(now());
    // Over the devices' default cap once base64-encoded in the envelope.
    options.notes = "n".repeat(800 << 10);
    let err = repo
        .release(
            "nightly",
            &"1.1.0".parse().unwrap(),
            "x",
            &[("app", &file, ArtifactKind::File)],
            &options,
            &[&key],
        )
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::TooLarge, "{err}");
    assert_eq!(std::fs::read(&channel).unwrap(), before);
}

/// The refusal names the way out: pruning the channel, which shrinks it below the cap.
#[test]
fn a_channel_grown_past_the_device_cap_is_refused_naming_prune() {
    let (_dir, repo, key, file) = setup();
    let mut options = ReleaseOptions::new(now());
    options.notes = "n".repeat(300 << 10);
    let release = |v: &str| {
        repo.release(
            "nightly",
            &v.parse().unwrap(),
            "x",
            &[("app", &file, ArtifactKind::File)],
            &options,
            &[&key],
        )
    };
    release("1.0.0").unwrap();
    release("1.1.0").unwrap();
    let err = release("1.2.0").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::TooLarge, "{err}");
    assert!(
        err.message()
            .contains("evergreen prune REPO --channel nightly --keep N"),
        "{err}"
    );
    repo.prune("nightly", 1, &Signing::new(&[&key], now()))
        .unwrap();
    release("1.2.0").unwrap();
}

/// `verify` warns of a channel manifest past three quarters of the size devices accept by
/// default, while it still publishes, naming the cap and `prune`; a small one is not
/// warned about.
#[test]
fn verify_warns_of_a_channel_close_to_the_device_size_cap() {
    let (_dir, repo, key, file) = setup();
    publish(&repo, &key, &file, "1.0.0", "x").unwrap();
    let size_warnings = |repo: &Repo| -> Vec<String> {
        let report = repo.verify(now()).unwrap();
        report
            .warnings
            .into_iter()
            .filter(|w| w.contains("bytes"))
            .collect()
    };
    assert_eq!(size_warnings(&repo), Vec::<String>::new());
    let mut options = ReleaseOptions::new(now());
    options.notes = "n".repeat(600 << 10);
    repo.release(
        "nightly",
        &"1.1.0".parse().unwrap(),
        "x",
        &[("app", &file, ArtifactKind::File)],
        &options,
        &[&key],
    )
    .unwrap();
    let warnings = size_warnings(&repo);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].starts_with("channel nightly is "),
        "{warnings:?}"
    );
    assert!(warnings[0].contains("of the 1048576 bytes"), "{warnings:?}");
    assert!(
        warnings[0].contains("evergreen prune REPO --channel nightly"),
        "{warnings:?}"
    );
}

#[test]
fn the_same_version_and_target_twice_is_a_config_error() {
    let (_dir, repo, key, file) = setup();
    publish(&repo, &key, &file, "1.0.0", "x").unwrap();
    let err = publish(&repo, &key, &file, "1.0.0", "x").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert_eq!(repo.verify(now()).unwrap().channels[0].sequence, 1);
}

#[test]
fn another_build_of_a_listed_version_is_a_config_error() {
    let (_dir, repo, key, file) = setup();
    publish(&repo, &key, &file, "1.0.0+a", "x").unwrap();
    for target in ["x", "y"] {
        let err = publish(&repo, &key, &file, "1.0.0+b", target).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(err.to_string().contains("found 1.0.0+a already"), "{err}");
    }
    assert_eq!(repo.verify(now()).unwrap().channels[0].sequence, 1);
}

/// A target built under other build metadata (`1.0.0+b`, from its own CI job) is added to
/// the listed `1.0.0+a` under that name: the refusal says so, rather than only sending the
/// operator to a higher version, and naming it as listed adds the target.
#[test]
fn a_target_under_another_build_is_told_to_name_the_listed_one() {
    let (_dir, repo, key, file) = setup();
    publish(&repo, &key, &file, "1.0.0+a", "x").unwrap();
    let err = publish(&repo, &key, &file, "1.0.0+b", "y").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(
        err.to_string()
            .contains("to add target y to it, give --version 1.0.0+a"),
        "{err}"
    );
    let m = publish(&repo, &key, &file, "1.0.0+a", "y").unwrap();
    assert!(m.releases[0].targets.contains_key("y"));
}

#[test]
fn a_signer_outside_the_manifest_role_changes_nothing() {
    let (_dir, repo, _key, file) = setup();
    let stranger = SecretKey::generate().unwrap();
    let err = publish(&repo, &stranger, &file, "1.0.0", "x").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Threshold);
    assert!(repo.verify(now()).unwrap().channels.is_empty());
    let blobs = std::fs::read_dir(repo.path().join("blobs/sha256"))
        .unwrap()
        .count();
    assert_eq!(blobs, 0);
}

#[test]
fn rollout_of_an_unknown_version_is_no_such_version() {
    let (_dir, repo, key, file) = setup();
    publish(&repo, &key, &file, "1.0.0", "x").unwrap();
    let err = repo
        .rollout(
            "nightly",
            &"2.0.0".parse().unwrap(),
            5.0,
            &Signing::new(&[&key], now()),
        )
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NoSuchVersion);
}

/// Where the blob of the first release's `app` for target `x` lies.
fn app_blob(repo: &Repo, m: &Manifest) -> PathBuf {
    let app = &m.releases[0].targets["x"].components["app"];
    repo.path().join(app.artifact.blob_path())
}

#[test]
fn a_tampered_blob_fails_verify_with_hash_mismatch() {
    let (_dir, repo, key, file) = setup();
    let m = publish(&repo, &key, &file, "1.0.0", "x").unwrap();
    let blob = app_blob(&repo, &m);
    std::fs::write(&blob, b"PAYLOAD").unwrap();
    assert_eq!(
        repo.verify(now()).unwrap_err().kind(),
        ErrorKind::HashMismatch
    );
}

/// A damaged blob (disk, a hand edit) is what devices refuse; publishing the same file
/// again puts the right bytes back instead of failing on it.
#[test]
fn publishing_a_file_again_repairs_its_damaged_blob() {
    let (_dir, repo, key, file) = setup();
    let m = publish(&repo, &key, &file, "1.0.0", "x").unwrap();
    let blob = app_blob(&repo, &m);
    std::fs::write(&blob, b"PAYLOAD").unwrap();
    publish(&repo, &key, &file, "1.1.0", "x").unwrap();
    assert_eq!(std::fs::read(&blob).unwrap(), b"payload");
    // Both releases list the one blob: checked once.
    assert_eq!(repo.verify(now()).unwrap().channels[0].blobs_checked, 1);
    assert!(repo.stray_temps().is_empty());
}

/// Releases from several threads at once (each open of the lock file is its own
/// lock, so threads exclude each other as processes do): every one lands.
#[test]
fn concurrent_releases_all_land() {
    let (_dir, repo, key, file) = setup();
    let (rounds, threads) = (3, 4);
    for round in 0..rounds {
        let barrier = std::sync::Barrier::new(threads);
        std::thread::scope(|s| {
            for t in 0..threads {
                let (repo, key, file, barrier) = (&repo, &key, &file, &barrier);
                s.spawn(move || {
                    barrier.wait();
                    publish(repo, key, file, &format!("{round}.{t}.0"), "x").unwrap();
                });
            }
        });
    }
    let report = repo.verify(now()).unwrap();
    assert_eq!(report.channels[0].versions.len(), rounds * threads);
    assert_eq!(report.channels[0].sequence, (rounds * threads) as u64);
}

/// A release cancelled in the middle of copying a component removes its partial
/// copy and signs nothing: a cancel is how the CLI's Ctrl-C ends it before it is
/// killed, which would leave the copy behind.
#[test]
fn a_cancelled_copy_leaves_no_temp_file_and_publishes_nothing() {
    let (dir, repo, key, _) = setup();
    let big = dir.path().join("big.img");
    // Several chunks, so the copy is cut off after the first.
    std::fs::write(&big, vec![7u8; 300 * 1024]).unwrap();
    let cancel = CancelToken::new();
    cancel.cancel();
    let err = repo
        .with_cancel(cancel)
        .release(
            "nightly",
            &"1.0.0".parse().unwrap(),
            "x",
            &[("rootfs", big.as_path(), ArtifactKind::Image)],
            &ReleaseOptions::new(now()),
            &[&key],
        )
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Cancelled, "{err}");
    assert!(err.to_string().starts_with("component rootfs"), "{err}");
    let blobs: Vec<_> = std::fs::read_dir(dir.path().join("repo/blobs/sha256"))
        .unwrap()
        .collect();
    assert!(blobs.is_empty(), "{blobs:?}");
    assert!(!dir.path().join("repo/channels/nightly.json").exists());
}

/// Every writer holds the lock, so the temp files found under it are those of runs
/// killed or crashed before; no rerun would remove them otherwise (its temp names
/// carry its own pid), and `verify` reports them meanwhile.
#[test]
fn temp_files_of_earlier_runs_are_reported_by_verify_and_removed_under_the_lock() {
    let (dir, repo, key, file) = setup();
    publish(&repo, &key, &file, "1.0.0", "x").unwrap();
    let repo_dir = dir.path().join("repo");
    let stale = [
        repo_dir.join("blobs/sha256/incoming.tmp-4000001"),
        repo_dir.join("channels/nightly.json.tmp-4000002"),
        repo_dir.join("root/2.json.tmp-4000003"),
    ];
    for path in &stale {
        std::fs::write(path, b"cut off").unwrap();
    }
    let mut reported = repo.verify(now()).unwrap().stray_temps;
    reported.sort();
    let mut expected = stale.to_vec();
    expected.sort();
    assert_eq!(reported, expected);
    publish(&repo, &key, &file, "1.1.0", "x").unwrap();
    for path in &stale {
        assert!(!path.exists(), "{} is left", path.display());
    }
    assert!(repo.verify(now()).unwrap().stray_temps.is_empty());
}

/// Two `init`s at once both pass the early check; the second to write must not
/// replace the root the first one told its operator to pin.
#[test]
fn the_first_root_is_never_written_over_one_that_appeared_after_the_check() {
    let (dir, repo, _, _) = setup();
    let first = dir.path().join("repo/root/1.json");
    let pinned = std::fs::read(&first).unwrap();
    let other = SecretKey::generate().unwrap();
    let err = repo.write_first_root(other.public().to_base64().as_bytes());
    let err = err.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
    assert!(err.to_string().contains("root/1.json"), "{err}");
    assert_eq!(std::fs::read(&first).unwrap(), pinned);
    assert!(repo.verify(now()).unwrap().stray_temps.is_empty());
}

/// What `select` offers a device running `installed` on target `x`.
fn offer(m: &Manifest, installed: &str) -> Option<Version> {
    offer_at(m, "device-1", installed, now())
}

fn nightly(repo: &Repo) -> Manifest {
    let trusted = repo.trusted_root().unwrap();
    repo.load_channel(&trusted, "nightly").unwrap().unwrap()
}

/// A stepping stone is found by precedence, as devices find it: another build of the
/// `min_version`, or the oldest release above it when it is not listed itself.
#[test]
fn prune_keeps_the_stepping_stone_a_device_below_min_version_is_offered() {
    for (releases, stone) in [
        (
            [
                ("1.0.0", None),
                ("1.1.0+b7", None),
                ("2.0.0", Some("1.1.0")),
            ],
            "1.1.0+b7",
        ),
        (
            [("1.0.0", None), ("1.6.0", None), ("2.0.0", Some("1.5.0"))],
            "1.6.0",
        ),
    ] {
        let (_dir, repo, key, file) = setup();
        for (v, min) in releases {
            publish_with(&repo, &key, &file, v, "x", min);
        }
        let stone: Version = stone.parse().unwrap();
        assert_eq!(offer(&nightly(&repo), "1.0.0"), Some(stone.clone()));
        let (m, removed) = repo
            .prune("nightly", 1, &Signing::new(&[&key], now()))
            .unwrap();
        assert_eq!(removed, versions(&["1.0.0"]));
        assert_eq!(offer(&m, "1.0.0"), Some(stone.clone()));
        assert_eq!(
            offer(&m, stone.to_string().as_str()),
            Some(versions(&["2.0.0"])[0].clone())
        );
    }
}

/// Devices outside a ramping or halted release's rollout still take the release
/// before it: only releases rolled out to everyone count towards `keep`.
#[test]
fn prune_counts_only_releases_rolled_out_to_everyone() {
    let (_dir, repo, key, file) = setup();
    publish_with(&repo, &key, &file, "1.0.0", "x", None);
    let mut ramping = ReleaseOptions::new(now());
    ramping.rollout_percent = Some(20.0);
    let components = [("app", file.as_path(), ArtifactKind::File)];
    let v11: Version = "1.1.0".parse().unwrap();
    repo.release("nightly", &v11, "x", &components, &ramping, &[&key])
        .unwrap();
    publish_with(&repo, &key, &file, "1.2.0", "x", None);
    let v12 = "1.2.0".parse().unwrap();
    repo.rollout("nightly", &v12, 0.0, &Signing::new(&[&key], now()))
        .unwrap();
    let (m, removed) = repo
        .prune("nightly", 1, &Signing::new(&[&key], now()))
        .unwrap();
    assert!(removed.is_empty(), "{removed:?}");
    assert_eq!(m.releases.len(), 3);
    // At 100% the ramp counts: 1.0.0 goes, the halted 1.2.0 stays above it.
    let later = now().plus_secs(60);
    repo.rollout("nightly", &v11, 100.0, &Signing::new(&[&key], later))
        .unwrap();
    let (m, removed) = repo
        .prune("nightly", 1, &Signing::new(&[&key], later))
        .unwrap();
    assert_eq!(removed, versions(&["1.0.0"]));
    assert_eq!(m.releases.len(), 2);
}

/// Publishes `v` on `channel` for `target` with `security` and, when given, a rollout
/// at `percent`.
fn publish_on(
    repo: &Repo,
    key: &SecretKey,
    file: &Path,
    channel: &str,
    (v, target): (&str, &str),
    (security, percent): (u64, Option<f64>),
) -> Result<Manifest> {
    let mut options = ReleaseOptions::new(now());
    options.security_version = security;
    options.rollout_percent = percent;
    let components = [("app", file, ArtifactKind::File)];
    let version = v.parse().unwrap();
    repo.release(channel, &version, target, &components, &options, &[key])
}

/// The stone kept is the one `select` offers a device below `min_version`: the newest
/// release from it up that is rolled out to everyone, not an older halted one.
#[test]
fn prune_keeps_the_stone_devices_take_not_a_halted_one() {
    type Case<'a> = ([(&'a str, Option<f64>); 3], &'a str, &'a str, Vec<&'a str>);
    let cases: [Case; 3] = [
        (
            [("1.0.0", None), ("1.1.0", Some(0.0)), ("1.2.0", None)],
            "1.1.0",
            "1.2.0",
            vec!["1.1.0", "1.0.0"],
        ),
        (
            [("1.0.0", None), ("1.6.0", Some(0.0)), ("1.7.0", None)],
            "1.5.0",
            "1.7.0",
            vec!["1.6.0", "1.0.0"],
        ),
        // A halted release below the newest full one is offered to no device: it goes.
        (
            [("1.0.0", None), ("1.1.0", None), ("1.2.0", Some(0.0))],
            "1.1.0",
            "1.1.0",
            vec!["1.2.0", "1.0.0"],
        ),
    ];
    for (releases, min, stone, gone) in cases {
        let (_dir, repo, key, file) = setup();
        for (v, percent) in releases {
            publish_on(&repo, &key, &file, "nightly", (v, "x"), (0, percent)).unwrap();
        }
        publish_with(&repo, &key, &file, "2.0.0", "x", Some(min));
        let stone: Version = stone.parse().unwrap();
        assert_eq!(offer(&nightly(&repo), "1.0.0"), Some(stone.clone()));
        let (m, removed) = repo
            .prune("nightly", 1, &Signing::new(&[&key], now()))
            .unwrap();
        assert_eq!(removed, versions(&gone), "min {min}");
        assert_eq!(offer(&m, "1.0.0"), Some(stone.clone()), "min {min}");
        assert_eq!(
            offer(&m, &stone.to_string()),
            Some(versions(&["2.0.0"])[0].clone())
        );
    }
}

/// Prune keeps what devices are offered, and only that: a stone with a `min_version` of
/// its own above the device is no stone, and releases sharing one `min_version` do not
/// pull each other in.
#[test]
fn prune_keeps_only_what_a_device_is_offered() {
    let (_dir, repo, key, file) = setup();
    for (v, min) in [("1.0.0", None), ("1.1.0", None), ("1.3.0", Some("1.2.0"))] {
        publish_with(&repo, &key, &file, v, "x", min);
    }
    publish_with(&repo, &key, &file, "2.0.0", "x", Some("1.1.0"));
    assert_eq!(
        offer(&nightly(&repo), "1.0.0"),
        Some(versions(&["1.1.0"])[0].clone())
    );
    let (m, _) = repo
        .prune("nightly", 1, &Signing::new(&[&key], now()))
        .unwrap();
    assert_eq!(offer(&m, "1.0.0"), Some(versions(&["1.1.0"])[0].clone()));

    let (_dir, repo, key, file) = setup();
    publish_with(&repo, &key, &file, "1.0.0", "x", None);
    publish_with(&repo, &key, &file, "2.0.0", "x", None);
    for v in ["2.1.0", "2.2.0", "2.3.0", "2.4.0"] {
        publish_with(&repo, &key, &file, v, "x", Some("2.0.0"));
    }
    let (m, _) = repo
        .prune("nightly", 1, &Signing::new(&[&key], now()))
        .unwrap();
    let kept: Vec<String> = m.releases.iter().map(|r| r.version.to_string()).collect();
    assert_eq!(kept, ["2.0.0", "2.4.0"]);
}

/// A stone halted for now may be ramped up again, and devices already on it need the
/// release after it: two prunes in a row keep both. A `min_version` naming no listed
/// release (pruned before) still keeps what its devices take.
#[test]
fn prune_keeps_a_halted_stone_and_what_devices_at_a_min_version_take() {
    let (_dir, repo, key, file) = setup();
    publish_with(&repo, &key, &file, "1.0.0", "x", None);
    publish_on(
        &repo,
        &key,
        &file,
        "nightly",
        ("1.5.0", "x"),
        (0, Some(30.0)),
    )
    .unwrap();
    publish_with(&repo, &key, &file, "2.0.0", "x", Some("1.5.0"));
    publish_with(&repo, &key, &file, "3.0.0", "x", Some("2.0.0"));
    let halted: Version = "1.5.0".parse().unwrap();
    repo.rollout("nightly", &halted, 0.0, &Signing::new(&[&key], now()))
        .unwrap();
    for _ in 0..2 {
        repo.prune("nightly", 1, &Signing::new(&[&key], now()))
            .unwrap();
    }
    let m = nightly(&repo);
    assert!(m.release(&halted).is_some());
    assert_eq!(offer(&m, "1.5.0"), Some(versions(&["2.0.0"])[0].clone()));

    let (_dir, repo, key, file) = setup();
    publish_with(&repo, &key, &file, "1.0.0", "x", None);
    publish_with(&repo, &key, &file, "2.0.0", "x", Some("1.5.0"));
    publish_with(&repo, &key, &file, "3.0.0", "x", Some("2.0.0"));
    repo.prune("nightly", 1, &Signing::new(&[&key], now()))
        .unwrap();
    assert_eq!(
        offer(&nightly(&repo), "1.5.0"),
        Some(versions(&["2.0.0"])[0].clone())
    );
}

/// What `select` offers the device `id` running `installed` on target `x` at `at`.
fn offer_at(m: &Manifest, id: &str, installed: &str, at: Timestamp) -> Option<Version> {
    offered_to(m, "x", id, &(installed.parse().unwrap(), 0), at)
}

/// Devices outside a ramp still take the stone at 100 % below a `min_version`: prune
/// keeps it (it removed it, though a ramp at 10 % left 90 % of them offered nothing),
/// and a halt of the ramp later leaves them on their way.
#[test]
fn prune_keeps_the_stone_devices_outside_a_ramp_take() {
    let (_dir, repo, key, file) = setup_with_a_stone();
    publish_on(
        &repo,
        &key,
        &file,
        "nightly",
        ("2.1.0", "x"),
        (0, Some(10.0)),
    )
    .unwrap();
    let ids: Vec<String> = (1..=40).map(|i| format!("p{i}")).collect();
    let m = nightly(&repo);
    let before: Vec<Option<Version>> = ids
        .iter()
        .map(|id| offer_at(&m, id, "1.0.0", now()))
        .collect();
    let stone = Some(versions(&["1.1.0"])[0].clone());
    let ramp = Some(versions(&["2.1.0"])[0].clone());
    assert!(
        before.contains(&stone) && before.contains(&ramp),
        "{before:?}"
    );

    let (m, removed) = repo
        .prune("nightly", 1, &Signing::new(&[&key], now()))
        .unwrap();
    assert_eq!(removed, versions(&["1.0.0"]));
    for (id, offered) in ids.iter().zip(&before) {
        assert_eq!(&offer_at(&m, id, "1.0.0", now()), offered, "{id}");
    }
    let later = now().plus_secs(60);
    let v21 = versions(&["2.1.0"])[0].clone();
    let m = repo
        .rollout("nightly", &v21, 0.0, &Signing::new(&[&key], later))
        .unwrap();
    for id in &ids {
        assert_eq!(offer_at(&m, id, "1.0.0", later), stone, "{id}");
    }
    assert!(stranded(&m, later).is_empty());
}

/// A xorshift generator: the property tests' random channels, the same on every run.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15))
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// The property tests' clock: when their manifests are issued, and when they are judged.
fn property_clock() -> (Timestamp, Timestamp) {
    let t0 = now();
    (t0, t0.plus_secs(7200))
}

fn stage_after(t0: Timestamp, secs: i64, percent: f64) -> RolloutStage {
    RolloutStage {
        at: t0.plus_secs(secs),
        percent,
    }
}

/// Channel `c` of product `p` with no release yet, issued at `t0`.
fn empty_manifest(t0: Timestamp) -> Manifest {
    Manifest {
        doc_type: "manifest".into(),
        product: "p".into(),
        channel: "c".into(),
        sequence: 1,
        issued: t0,
        expires: t0.plus_secs(86_400 * 30),
        releases: Vec::new(),
    }
}

/// The releases of a random two-target channel, drawn one after the other.
struct Draw {
    rng: Rng,
    /// The highest security version drawn so far for each target.
    floors: std::collections::BTreeMap<&'static str, u64>,
}

impl Draw {
    fn new(seed: u64) -> Draw {
        Draw {
            rng: Rng::new(seed),
            floors: std::collections::BTreeMap::from([("x", 0), ("y", 0)]),
        }
    }

    /// Release 1.`i`.0 (see [`random_release`]).
    fn release(
        &mut self,
        i: u64,
        rollouts: &[Option<Vec<RolloutStage>>],
        min_version: impl FnOnce(&mut Rng) -> Option<Version>,
    ) -> Release {
        random_release(&mut self.rng, i, &mut self.floors, rollouts, min_version)
    }
}

/// Release 1.`i`.0 for `x`, `y` or both: its security version at least its targets'
/// newest (`floors`, raised to it), one more one time in three; the `min_version` that
/// `min_version` draws; one of `rollouts` one time in three.
fn random_release(
    rng: &mut Rng,
    i: u64,
    floors: &mut std::collections::BTreeMap<&'static str, u64>,
    rollouts: &[Option<Vec<RolloutStage>>],
    min_version: impl FnOnce(&mut Rng) -> Option<Version>,
) -> Release {
    let targets: &[&'static str] = match rng.below(4) {
        0 => &["y"],
        1 => &["x", "y"],
        _ => &["x"],
    };
    let mut security = targets.iter().map(|t| floors[t]).max().unwrap_or(0);
    security += rng.below(3) / 2;
    for t in targets {
        floors.insert(t, security);
    }
    let min_version = min_version(rng);
    let rollout = match rng.below(3) {
        0 => rollouts[rng.below(rollouts.len() as u64) as usize].clone(),
        _ => None,
    };
    Release {
        version: Version::new(1, i, 0),
        published: None,
        notes: String::new(),
        min_version,
        critical: false,
        security_version: security,
        rollout: rollout.map(|stages| Rollout { stages }),
        targets: targets
            .iter()
            .map(|t| {
                (
                    *t,
                    TargetRelease {
                        components: NameMap::default(),
                    },
                )
            })
            .collect(),
    }
}

/// A `min_version` one time in two for release 1.`i`.0: a release listed before it, or
/// one between two (1.k.5), below it.
fn below_one_in_two(i: u64) -> impl FnOnce(&mut Rng) -> Option<Version> {
    move |rng| {
        match rng.below(2) {
            0 if i > 0 => Some(Version::new(1, rng.below(i + 1), 5 * rng.below(2))),
            _ => None,
        }
        .filter(|min| *min < Version::new(1, i, 0))
    }
}

/// The versions a device may run beside `n` releases 1.k.0: below all, each, and one
/// between each and the next (1.k.5).
fn versions_around(n: u64) -> Vec<Version> {
    let mut versions = vec![Version::new(0, 0, 0)];
    for k in 0..n {
        versions.push(Version::new(1, k, 0));
        versions.push(Version::new(1, k, 5));
    }
    versions
}

/// The highest floor a device of `target` on `v` may have: up to the next listed
/// release's (one pruned between the two may have had it).
fn top_floor(m: &Manifest, target: &str, v: &Version) -> u64 {
    m.releases
        .iter()
        .filter(|r| r.targets.contains_key(target) && r.version > *v)
        .map(|r| r.security_version)
        .min()
        .unwrap_or(0)
}

/// `m`'s releases for a failure's message: version, targets, `min_version`, security
/// version and the rollout at `at`.
fn summary(m: &Manifest, at: Timestamp) -> Vec<String> {
    m.releases
        .iter()
        .map(|r| {
            let targets: Vec<&str> = r.targets.keys().map(String::as_str).collect();
            let min = r.min_version.as_ref().map(ToString::to_string);
            let rollout = r.rollout.as_ref().map(|ro| ro.percent_at(at));
            format!(
                "{} {targets:?} min {min:?} security {} rollout {rollout:?}",
                r.version, r.security_version
            )
        })
        .collect()
}

/// Whichever rollouts reach a device (a device in some, outside others, or all of them
/// halted or ramped to 100 % later), one offered a release before a prune is offered
/// one after it. Channels drawn from fixed seeds: releases with and without rollouts
/// (ramping, halted, scheduled, never started), `min_version`s on listed releases and
/// on pruned ones, rising security versions, two targets.
#[test]
fn prune_leaves_no_device_offered_nothing_in_any_mix_of_rollouts() {
    let (t0, at) = property_clock();
    let stage = |secs: i64, percent: f64| stage_after(t0, secs, percent);
    let rollouts: [Option<Vec<RolloutStage>>; 8] = [
        None,
        Some(vec![stage(0, 100.0)]),
        Some(vec![stage(0, 10.0)]),
        Some(vec![stage(0, 10.0), stage(3600, 50.0)]),
        Some(vec![stage(0, 0.0)]),
        Some(vec![stage(0, 30.0), stage(3600, 0.0)]),
        Some(vec![stage(0, 0.0), stage(86_400, 50.0)]),
        Some(vec![stage(0, 10.0), stage(3600, 100.0)]),
    ];
    let base = empty_manifest(t0);
    let mut checked = 0;
    for seed in 1..=300u64 {
        let mut rng = Rng::new(seed);
        let mut m = base.clone();
        let mut security = 0;
        for i in 0..3 + rng.below(7) {
            security += u64::from(rng.below(4) == 0);
            let min_version = match rng.below(3) {
                0 if i > 0 => Some(Version::new(1, rng.below(i), 5 * rng.below(2))),
                _ => None,
            };
            let targets: &[&str] = match rng.below(6) {
                0 => &["y"],
                1 => &["x", "y"],
                _ => &["x"],
            };
            let rollout = rng.below(3) == 0;
            let rollout = rollouts[if rollout { rng.below(8) } else { 0 } as usize]
                .clone()
                .map(|stages| Rollout { stages });
            m.releases.push(Release {
                version: Version::new(1, i, 0),
                published: None,
                notes: String::new(),
                min_version,
                critical: false,
                security_version: security,
                rollout,
                targets: targets
                    .iter()
                    .map(|t| {
                        let components = NameMap::default();
                        (*t, TargetRelease { components })
                    })
                    .collect(),
            });
        }
        for keep in 1..=2 {
            let kept = releases_to_keep(&m, keep, at);
            let mut pruned = m.clone();
            pruned.releases.retain(|r| kept.contains(&r.version));
            // A device's mix: each release short of 100 % that may reach someone (or
            // that stays, and so may be ramped) is in it or not; the rest reach no one.
            let open: Vec<Version> = m
                .releases
                .iter()
                .filter(|r| !rolled_out_to_everyone(r, at))
                .filter(|r| {
                    kept.contains(&r.version)
                        || r.rollout
                            .as_ref()
                            .unwrap()
                            .stages
                            .iter()
                            .any(|s| s.percent > 0.0)
                })
                .map(|r| r.version.clone())
                .collect();
            let mix = |channel: &Manifest, inside: u64| {
                let mut seen = channel.clone();
                for r in seen
                    .releases
                    .iter_mut()
                    .filter(|r| !rolled_out_to_everyone(r, at))
                {
                    let i = open.iter().position(|v| *v == r.version);
                    if i.is_some_and(|i| inside & (1 << i) != 0) {
                        r.rollout = None;
                    } else {
                        r.rollout = Some(Rollout {
                            stages: vec![stage(0, 0.0)],
                        });
                    }
                }
                seen
            };
            let mut running: Vec<(Version, u64)> = m
                .releases
                .iter()
                .map(|r| (r.version.clone(), r.security_version))
                .collect();
            for r in &m.releases {
                let Some(min) = &r.min_version else { continue };
                let below = m.releases.iter().filter(|o| o.version <= *min);
                let floor = below.map(|o| o.security_version).max().unwrap_or(0);
                running.push((min.clone(), floor));
            }
            running.push((Version::new(0, 0, 0), 0));
            for inside in 0..1u64 << open.len().min(6) {
                let (before, after) = (mix(&m, inside), mix(&pruned, inside));
                for target in ["x", "y"] {
                    for device in &running {
                        let was = offered(&before, target, device, at);
                        let is = offered(&after, target, device, at);
                        assert!(
                            was.is_none() || is.is_some(),
                            "seed {seed}, keep {keep}: a {target} device on {} (floor {}) in the rollouts of {:?} was offered {was:?}, nothing after keeping {kept:?} of {:#?}",
                            device.0,
                            device.1,
                            open.iter().enumerate().filter(|(i, _)| inside & (1 << i) != 0).map(|(_, v)| v.to_string()).collect::<Vec<_>>(),
                            m.releases.iter().map(|r| (r.version.to_string(), r.min_version.as_ref().map(ToString::to_string), r.security_version, r.rollout.as_ref().map(|ro| ro.percent_at(at)))).collect::<Vec<_>>(),
                        );
                        checked += usize::from(was.is_some());
                    }
                }
            }
        }
    }
    assert!(checked > 1000, "{checked} offers checked");
}

/// Devices of one target never see another target's releases, and a device that
/// confirms a release never installs a newer one with a lower security version: the
/// order is checked per target, both ways, also when a target is added.
#[test]
fn security_versions_are_ordered_per_target_both_ways() {
    let (_dir, repo, key, file) = setup();
    let on = |v: &str, target: &str, security: u64| {
        publish_on(&repo, &key, &file, "nightly", (v, target), (security, None))
    };
    on("1.0.0", "arm", 2).unwrap();
    // Another target: no device of x ever confirmed 1.0.0.
    on("1.1.0", "x", 0).unwrap();
    // Older than 1.1.0 with more: devices confirming 0.9.0 could never take 1.1.0.
    let err = on("0.9.0", "x", 5).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
    let message = err.to_string();
    for part in ["at most 0", "found 5", "0.9.0 on x", "newer release 1.1.0"] {
        assert!(message.contains(part), "{part}: {err}");
    }
    // Adding x to 1.0.0 (security 2, above the newer 1.1.0's 0): refused the same way.
    let err = on("1.0.0", "x", 0).unwrap_err();
    let message = err.to_string();
    for part in ["at most 0", "found 2", "1.0.0 on x", "newer release 1.1.0"] {
        assert!(message.contains(part), "{part}: {err}");
    }
    // Adding arm to 1.1.0 (security 0, after 1.0.0's 2 on arm): refused too.
    let err = on("1.1.0", "arm", 0).unwrap_err();
    let message = err.to_string();
    for part in [
        "at least 2",
        "found 0",
        "1.1.0 on arm",
        "older release 1.0.0",
    ] {
        assert!(message.contains(part), "{part}: {err}");
    }
    assert_eq!(nightly(&repo).sequence, 2);
}

/// Promote checks the security order per target and both ways too.
#[test]
fn promote_orders_security_versions_per_target_both_ways() {
    let (_dir, repo, key, file) = setup();
    let v = |s: &str| -> Version { s.parse().unwrap() };
    let lab = |ver: &str, target: &str, security: u64| {
        publish_on(&repo, &key, &file, "lab", (ver, target), (security, None)).unwrap();
    };
    lab("1.0.0", "arm", 2);
    lab("1.1.0", "x", 0);
    publish_on(&repo, &key, &file, "old", ("0.9.0", "x"), (5, None)).unwrap();
    let promote = |ver: &str, from: &str| {
        repo.promote(&v(ver), from, "stable", None, &Signing::new(&[&key], now()))
    };
    promote("1.0.0", "lab").unwrap();
    promote("1.1.0", "lab").unwrap();
    let err = promote("0.9.0", "old").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
    let message = err.to_string();
    for part in ["at most 0", "found 5", "newer release 1.1.0", "stable"] {
        assert!(message.contains(part), "{part}: {err}");
    }
}

/// What `select` offers a device of `x` running 1.0.0 is what counts: a newer release
/// without a `min_version` already takes it past the promoted one's `min_version`.
#[test]
fn promote_needs_no_stone_where_devices_are_offered_a_way_on() {
    let (_dir, repo, key, file) = setup();
    let v = |s: &str| -> Version { s.parse().unwrap() };
    for ver in ["1.0.0", "3.0.0"] {
        publish_with(&repo, &key, &file, ver, "x", None);
    }
    publish_with(&repo, &key, &file, "2.0.0", "x", Some("1.5.0"));
    let promote = |ver: &str| {
        repo.promote(
            &v(ver),
            "nightly",
            "stable",
            None,
            &Signing::new(&[&key], now()),
        )
    };
    promote("1.0.0").unwrap();
    promote("3.0.0").unwrap();
    let m = promote("2.0.0").unwrap();
    assert_eq!(offer(&m, "1.0.0"), Some(v("3.0.0")));
}

/// `release` checks stepping stones as `promote` does: a `min_version` no listed
/// release leads up to is refused, and accepted once one does.
#[test]
fn release_refuses_a_min_version_that_strands_devices() {
    let (_dir, repo, key, file) = setup();
    publish_with(&repo, &key, &file, "1.0.0", "x", None);
    let mut options = ReleaseOptions::new(now());
    options.min_version = Some("1.5.0".parse().unwrap());
    let components = [("app", file.as_path(), ArtifactKind::File)];
    let v2: Version = "2.0.0".parse().unwrap();
    let err = repo
        .release("nightly", &v2, "x", &components, &options, &[&key])
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
    assert!(
        err.to_string()
            .contains("expected a stepping stone on channel nightly for x devices running 1.0.0"),
        "{err}"
    );
    assert!(nightly(&repo).release(&v2).is_none());
    publish_with(&repo, &key, &file, "1.5.0", "x", None);
    repo.release("nightly", &v2, "x", &components, &options, &[&key])
        .unwrap();
    assert_eq!(
        offer(&nightly(&repo), "1.0.0"),
        Some("1.5.0".parse().unwrap())
    );
}

/// Adding a target to a release with a `min_version` is checked as publishing it for
/// that target would be: its devices below `min_version` need a stone there too.
#[test]
fn adding_a_target_refuses_a_min_version_that_strands_its_devices() {
    let (_dir, repo, key, file) = setup();
    publish_with(&repo, &key, &file, "1.0.0", "x", None);
    publish_with(&repo, &key, &file, "1.0.0", "y", None);
    publish_with(&repo, &key, &file, "1.5.0", "x", None);
    let mut options = ReleaseOptions::new(now());
    options.min_version = Some("1.5.0".parse().unwrap());
    let components = [("app", file.as_path(), ArtifactKind::File)];
    let v2: Version = "2.0.0".parse().unwrap();
    repo.release("nightly", &v2, "x", &components, &options, &[&key])
        .unwrap();
    let options = ReleaseOptions::new(now());
    let err = repo
        .release("nightly", &v2, "y", &components, &options, &[&key])
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
    assert!(
        err.to_string()
            .contains("expected a stepping stone on channel nightly for y devices running 1.0.0"),
        "{err}"
    );
    let m = nightly(&repo);
    assert!(!m.release(&v2).unwrap().targets.contains_key("y"));
    assert!(stranded(&m, now()).is_empty());
    // With the stone there for y as well, the target goes in.
    publish_with(&repo, &key, &file, "1.5.0", "y", None);
    repo.release("nightly", &v2, "y", &components, &options, &[&key])
        .unwrap();
    assert!(stranded(&nightly(&repo), now()).is_empty());
}

/// Devices running a version older than every listed release (one pruned, say) are
/// named too, once per target, up to the lowest `min_version` a release that reaches
/// them asks for; a release they can take from anywhere leaves none.
#[test]
fn stranded_names_the_devices_below_every_listed_release() {
    let (_dir, repo, key, file) = setup();
    for target in ["x", "y"] {
        publish_with(&repo, &key, &file, "1.5.0", target, Some("1.0.0"));
        publish_with(&repo, &key, &file, "2.0.0", target, Some("1.5.0"));
    }
    let below = |target: &str, v: &str| Stranded {
        target: target.into(),
        devices: StrandedDevices::Below(v.parse().unwrap()),
    };
    let m = nightly(&repo);
    assert_eq!(offer(&m, "0.9.0"), None);
    assert_eq!(offer(&m, "1.2.0"), Some(versions(&["1.5.0"])[0].clone()));
    assert_eq!(
        stranded(&m, now()),
        [below("x", "1.0.0"), below("y", "1.0.0")]
    );
    assert_eq!(
        serde_json::to_value(&stranded(&m, now())[0]).unwrap(),
        serde_json::json!({"target": "x", "below": "1.0.0"})
    );
    // With the stone halted, devices below it are all left: 1.2.0 as 0.9.0.
    let signers = [&key];
    let stone_at = |percent| {
        let sign = Signing::new(&signers, now());
        let m = repo.rollout("nightly", &versions(&["1.5.0"])[0], percent, &sign);
        stranded(&m.unwrap(), now())
    };
    assert_eq!(stone_at(0.0), [below("x", "1.5.0"), below("y", "1.5.0")]);
    // Ramping again, it reaches them in time: those below its min_version are left.
    assert_eq!(stone_at(5.0), [below("x", "1.0.0"), below("y", "1.0.0")]);
    // A release with no min_version reaches every device below it.
    publish_with(&repo, &key, &file, "1.0.0", "x", None);
    assert_eq!(stranded(&nightly(&repo), now()), [below("y", "1.0.0")]);
}

/// Devices running an unlisted version between two listed releases (one pruned between
/// them) get no entry of their own, as `stranded` says why: whatever floor the security
/// order lets them have, they are offered something whenever the devices of the listed
/// release below them are, and when those are stranded, the `running` entry stands for
/// them up to the lowest `min_version` of the releases that reach them.
#[test]
fn devices_between_two_listed_releases_are_stranded_only_with_those_below_them() {
    // `(version, security version, min_version, halted)` of each listed release of x.
    let channel = |releases: &[(&str, u64, Option<&str>, bool)]| -> Manifest {
        let releases: Vec<serde_json::Value> = releases
            .iter()
            .map(|&(version, security, min, halted)| {
                let mut r = serde_json::json!({"version": version,
                    "security_version": security,
                    "targets": {"x": {"components": {}}}});
                if let Some(min) = min {
                    r["min_version"] = min.into();
                }
                if halted {
                    r["rollout"] = serde_json::json!({"stages": [{"at": now(), "percent": 0.0}]});
                }
                r
            })
            .collect();
        serde_json::from_value(serde_json::json!({"type": "manifest",
            "product": "com.acme.app", "channel": "nightly", "sequence": 1,
            "issued": now(), "expires": now().plus_secs(86_400),
            "releases": releases}))
        .unwrap()
    };
    let running = |v: &str| Stranded {
        target: "x".into(),
        devices: StrandedDevices::Running(v.parse().unwrap()),
    };
    // Whether devices of x on `version` with the security `floor` are stranded.
    let strands = |m: &Manifest, version: &str, floor: u64| {
        Reach::new(m, now()).strands("x", (&version.parse().unwrap(), floor))
    };

    // 1.2.0 (security version 1 or 2, as the order allowed it between 1.1.0 and 1.3.0)
    // was pruned. 2.0.0's min_version is above 1.2.0, but 1.3.0 reaches 1.2.0's devices
    // as it reaches 1.1.0's: no release newer than 1.2.0 is not newer than 1.1.0.
    let m = channel(&[
        ("1.1.0", 1, None, false),
        ("1.3.0", 2, None, false),
        ("2.0.0", 2, Some("1.3.0"), false),
    ]);
    assert!(stranded(&m, now()).is_empty());
    for floor in 0..=2 {
        assert!(!strands(&m, "1.2.0", floor), "floor {floor}");
    }

    // Every release that reaches 1.2.0's devices has a min_version above 1.2.0: it is
    // above 1.1.0 too, so 1.1.0's devices are named, and 1.2.0's with them.
    let m = channel(&[
        ("1.1.0", 1, None, false),
        ("1.3.0", 2, Some("1.2.5"), false),
    ]);
    assert_eq!(stranded(&m, now()), [running("1.1.0")]);
    for floor in 0..=2 {
        assert!(strands(&m, "1.2.0", floor), "floor {floor}");
        assert!(!strands(&m, "1.2.5", floor), "floor {floor}");
    }

    // The stone 1.3.0 halted: the devices on 1.1.0 and on 1.3.0 are named, and each
    // gap above them is stranded up to 1.5.0, the lowest min_version of what reaches it
    // (1.3.0 caps the first); from there on 2.0.0 is offered.
    let m = channel(&[
        ("1.1.0", 1, None, false),
        ("1.3.0", 2, None, true),
        ("2.0.0", 2, Some("1.5.0"), false),
    ]);
    assert_eq!(stranded(&m, now()), [running("1.1.0"), running("1.3.0")]);
    for floor in 0..=2 {
        assert!(strands(&m, "1.2.0", floor), "floor {floor}");
        assert!(strands(&m, "1.4.0", floor), "floor {floor}");
        assert!(!strands(&m, "1.5.0", floor), "floor {floor}");
        assert!(!strands(&m, "1.7.0", floor), "floor {floor}");
    }
}

/// A release at 0 % on `from` now, as devices there see it, is not promoted to everyone
/// on `to`: halted, or with its only stage still to come (published with a clock ahead,
/// or by hand), each said as such; `--rollout` promotes it anyway.
#[test]
fn promote_refuses_a_release_at_zero_now_whether_halted_or_not_started() {
    let (_dir, repo, key, file) = setup();
    let later = now().plus_secs(3_600);
    let mut options = ReleaseOptions::new(later);
    options.rollout_percent = Some(50.0);
    let components = [("app", file.as_path(), ArtifactKind::File)];
    let v2: Version = "2.0.0".parse().unwrap();
    repo.release("nightly", &v2, "x", &components, &options, &[&key])
        .unwrap();
    let ro = nightly(&repo).releases[0].rollout.clone().unwrap();
    assert_eq!(ro.percent_at(now()), 0.0);
    let signers = [&key];
    let promote = |percent, at| {
        repo.promote(
            &v2,
            "nightly",
            "stable",
            percent,
            &Signing::new(&signers, at),
        )
    };
    let err = promote(None, now()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
    assert_eq!(
        err.message(),
        format!("expected a release rolled out on channel nightly to promote, found 2.0.0 not started there yet (0% until its first stage at {later}); ramp it there first, or give --rollout PERCENT to promote it anyway")
    );
    // Halted since then: said as a halt, from the halt on.
    let halt = later.plus_secs(60);
    repo.rollout("nightly", &v2, 0.0, &Signing::new(&signers, halt))
        .unwrap();
    let err = promote(None, halt.plus_secs(1)).unwrap_err();
    assert!(
        err.message()
            .contains(&format!("found 2.0.0 halted there (0% since {halt})")),
        "{err}"
    );
    promote(Some(10.0), now()).unwrap();
}

/// A halted release is no stone (devices are not offered it); a device already held
/// back by another release's `min_version` is not this promotion's doing.
#[test]
fn promote_counts_a_halted_stone_as_none_and_blames_only_new_strandings() {
    let (_dir, repo, key, file) = setup();
    let v = |s: &str| -> Version { s.parse().unwrap() };
    for ver in ["1.0.0", "1.2.0"] {
        publish_with(&repo, &key, &file, ver, "x", None);
    }
    publish_with(&repo, &key, &file, "2.0.0", "x", Some("1.1.0"));
    let to_stable = |ver: &str, to: &str, percent| {
        repo.promote(
            &v(ver),
            "nightly",
            to,
            percent,
            &Signing::new(&[&key], now()),
        )
    };
    to_stable("1.0.0", "stable", None).unwrap();
    to_stable("1.2.0", "stable", Some(0.0)).unwrap();
    let err = to_stable("2.0.0", "stable", None).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
    assert!(err.to_string().contains("devices running 1.0.0"), "{err}");
    // Ramping, it is a stone for the devices in its rollout and, in time, all.
    let later = now().plus_secs(60);
    repo.rollout("stable", &v("1.2.0"), 10.0, &Signing::new(&[&key], later))
        .unwrap();
    repo.promote(
        &v("2.0.0"),
        "nightly",
        "stable",
        None,
        &Signing::new(&[&key], later),
    )
    .unwrap();

    // 3.0.0 (min 1.5.0, published there directly) already strands 1.0.0 on beta:
    // promoting 2.5.0 (min 1.5.0) leaves those devices no worse off.
    let options = ReleaseOptions::new(later);
    let components = [("app", file.as_path(), ArtifactKind::File)];
    repo.release("beta", &v("1.0.0"), "x", &components, &options, &[&key])
        .unwrap();
    repo.release("beta", &v("3.0.0"), "x", &components, &options, &[&key])
        .unwrap();
    set_min_version(&repo, &key, "beta", "3.0.0", "1.5.0", later);
    publish_with(&repo, &key, &file, "2.5.0", "x", Some("1.5.0"));
    repo.promote(
        &v("2.5.0"),
        "nightly",
        "beta",
        None,
        &Signing::new(&[&key], later),
    )
    .unwrap();
}

fn publish_secure(
    repo: &Repo,
    key: &SecretKey,
    file: &Path,
    v: &str,
    security: u64,
) -> Result<Manifest> {
    let mut options = ReleaseOptions::new(now());
    options.security_version = security;
    let components = [("app", file, ArtifactKind::File)];
    repo.release(
        "nightly",
        &v.parse().unwrap(),
        "x",
        &components,
        &options,
        &[key],
    )
}

#[test]
fn a_release_below_an_older_releases_security_version_is_refused() {
    let (dir, repo, key, file) = setup();
    publish_secure(&repo, &key, &file, "1.0.0", 3).unwrap();
    let other = dir.path().join("other.bin");
    std::fs::write(&other, b"other").unwrap();
    let err = publish_secure(&repo, &key, &other, "1.1.0", 2).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
    let message = err.to_string();
    assert!(
        message.contains("1.0.0") && message.contains("1.1.0"),
        "{err}"
    );
    assert!(
        message.contains("at least 3") && message.contains("found 2"),
        "{err}"
    );
    // Refused before anything was written: no blob, no new sequence.
    let blobs = std::fs::read_dir(repo.path().join("blobs/sha256"))
        .unwrap()
        .count();
    assert_eq!(blobs, 1);
    assert_eq!(nightly(&repo).sequence, 1);
    publish_secure(&repo, &key, &other, "1.1.0", 3).unwrap();
}

#[test]
fn a_min_version_not_below_the_version_is_refused() {
    let (_dir, repo, key, file) = setup();
    publish_with(&repo, &key, &file, "1.0.0", "x", None);
    for min in ["1.3.0", "1.2.0", "1.2.0+b1"] {
        let mut options = ReleaseOptions::new(now());
        options.min_version = Some(min.parse().unwrap());
        let components = [("app", file.as_path(), ArtifactKind::File)];
        let v = "1.2.0".parse().unwrap();
        let err = repo
            .release("nightly", &v, "x", &components, &options, &[&key])
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config, "{min}: {err}");
        assert!(err.to_string().contains(&format!("found {min}")), "{err}");
    }
    assert_eq!(nightly(&repo).sequence, 1);
}

#[test]
fn promote_refuses_what_devices_on_the_target_channel_could_never_install() {
    let (_dir, repo, key, _file) = setup_with_a_stone();
    let v = |s: &str| -> Version { s.parse().unwrap() };
    let promote = |version: &str| {
        repo.promote(
            &v(version),
            "nightly",
            "stable",
            None,
            &Signing::new(&[&key], now()),
        )
    };
    promote("1.0.0").unwrap();
    // stable lists 1.0.0 but nothing from 1.1.0 up: its devices could not reach 2.0.0.
    let err = promote("2.0.0").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
    assert!(err.to_string().contains("stepping stone"), "{err}");
    promote("1.1.0").unwrap();
    promote("2.0.0").unwrap();

    // A security version below that of an older release on the target channel.
    let (_dir, repo, key, file) = setup();
    publish_secure(&repo, &key, &file, "1.0.0", 0).unwrap();
    repo.release(
        "lab",
        &v("1.5.0"),
        "x",
        &[("app", &file, ArtifactKind::File)],
        &{
            let mut o = ReleaseOptions::new(now());
            o.security_version = 4;
            o
        },
        &[&key],
    )
    .unwrap();
    repo.promote(
        &v("1.5.0"),
        "lab",
        "stable",
        None,
        &Signing::new(&[&key], now()),
    )
    .unwrap();
    let err = repo
        .promote(
            &v("1.0.0"),
            "nightly",
            "stable",
            None,
            &Signing::new(&[&key], now()),
        )
        .err();
    // 1.0.0 is older than 1.5.0: below it is fine. A newer one with less is not.
    assert!(err.is_none(), "{err:?}");
    publish_secure(&repo, &key, &file, "1.6.0", 1).unwrap();
    let err = repo
        .promote(
            &v("1.6.0"),
            "nightly",
            "stable",
            None,
            &Signing::new(&[&key], now()),
        )
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
    assert!(err.to_string().contains("1.5.0"), "{err}");
}

/// Devices compare by precedence: `1.0.0` finds `1.0.0+b7`, and the error names it.
#[test]
fn rollout_and_promote_name_another_build_of_the_version() {
    let (_dir, repo, key, file) = setup();
    publish(&repo, &key, &file, "1.0.0+b7", "x").unwrap();
    let plain: Version = "1.0.0".parse().unwrap();
    let err = repo
        .rollout("nightly", &plain, 5.0, &Signing::new(&[&key], now()))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NoSuchVersion, "{err}");
    assert!(err.to_string().contains("found 1.0.0+b7"), "{err}");
    let err = repo
        .promote(
            &plain,
            "nightly",
            "stable",
            None,
            &Signing::new(&[&key], now()),
        )
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NoSuchVersion, "{err}");
    assert!(err.to_string().contains("found 1.0.0+b7"), "{err}");

    // Another build already on the target channel is a config error naming it.
    let b7: Version = "1.0.0+b7".parse().unwrap();
    repo.promote(
        &b7,
        "nightly",
        "stable",
        None,
        &Signing::new(&[&key], now()),
    )
    .unwrap();
    let b8: Version = "1.0.0+b8".parse().unwrap();
    let components = [("app", file.as_path(), ArtifactKind::File)];
    repo.release(
        "lab",
        &b8,
        "x",
        &components,
        &ReleaseOptions::new(now()),
        &[&key],
    )
    .unwrap();
    let err = repo
        .promote(&b8, "lab", "stable", None, &Signing::new(&[&key], now()))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
    assert!(err.to_string().contains("found 1.0.0+b7 already"), "{err}");
}

fn validity(m: &Manifest) -> i64 {
    m.expires.unix() - m.issued.unix()
}

/// A change that names no expiry keeps the validity the channel has.
#[test]
fn changes_without_an_expiry_keep_the_channels_validity() {
    let (_dir, repo, key, file) = setup();
    let week = 7 * 86_400;
    let v: Version = "1.0.0".parse().unwrap();
    publish(&repo, &key, &file, "1.0.0", "x").unwrap();
    publish(&repo, &key, &file, "1.1.0", "x").unwrap();
    let m = repo
        .resign("nightly", &Signing::new(&[&key], now()).valid_for(Some(7)))
        .unwrap();
    assert_eq!(validity(&m), week);
    let m = repo
        .rollout("nightly", &v, 50.0, &Signing::new(&[&key], now()))
        .unwrap();
    assert_eq!(validity(&m), week);
    let m = repo
        .resign("nightly", &Signing::new(&[&key], now()))
        .unwrap();
    assert_eq!(validity(&m), week);
    let m = publish(&repo, &key, &file, "1.2.0", "x").unwrap();
    assert_eq!(validity(&m), week);
    let (m, _) = repo
        .prune("nightly", 1, &Signing::new(&[&key], now()))
        .unwrap();
    assert_eq!(validity(&m), week);
    let new_key = SecretKey::generate().unwrap();
    let opts = RotateOptions {
        manifest_keys: Some(vec![new_key.public()]),
        ..RotateOptions::default()
    };
    repo.rotate(&opts, &[&key, &new_key], now()).unwrap();
    assert_eq!(validity(&nightly(&repo)), week);
    // A new channel gets the default; an expiry given is used.
    let v12: Version = "1.2.0".parse().unwrap();
    let m = repo
        .promote(
            &v12,
            "nightly",
            "stable",
            None,
            &Signing::new(&[&new_key], now()),
        )
        .unwrap();
    assert_eq!(validity(&m), i64::from(DEFAULT_MANIFEST_DAYS) * 86_400);
    let m = repo
        .rollout(
            "stable",
            &v12,
            60.0,
            &Signing::new(&[&new_key], now()).valid_for(Some(3)),
        )
        .unwrap();
    assert_eq!(validity(&m), 3 * 86_400);
    publish(&repo, &new_key, &file, "1.3.0", "x").unwrap();
    let v13: Version = "1.3.0".parse().unwrap();
    let m = repo
        .promote(
            &v13,
            "nightly",
            "stable",
            None,
            &Signing::new(&[&new_key], now()).valid_for(Some(2)),
        )
        .unwrap();
    assert_eq!(validity(&m), 2 * 86_400);
    let (m, removed) = repo
        .prune(
            "stable",
            1,
            &Signing::new(&[&new_key], now()).valid_for(Some(5)),
        )
        .unwrap();
    assert_eq!(removed, [v12]);
    assert_eq!(validity(&m), 5 * 86_400);
}

/// Devices hold their clock at the newest `issued` they saw: a manifest issued before
/// the channel's last one is refused before it is signed.
#[test]
fn a_clock_behind_the_channels_last_issued_is_refused() {
    let (_dir, repo, key, file) = setup();
    publish(&repo, &key, &file, "1.0.0", "x").unwrap();
    let earlier = now().plus_secs(-3600);
    let v: Version = "1.0.0".parse().unwrap();
    let err = repo
        .rollout("nightly", &v, 5.0, &Signing::new(&[&key], earlier))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
    assert!(
        err.to_string().contains(&format!(
            "expected a clock at or after the channel's last issued {}, found {earlier}",
            now()
        )),
        "{err}"
    );
    let err = repo
        .resign("nightly", &Signing::new(&[&key], earlier))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
    assert_eq!(nightly(&repo).sequence, 1);
}

/// A channel signed with a clock far ahead pulls every device's clock up to it; a
/// rotation that revokes the manifest key undoes that on devices (they drop what they
/// saw under it), so it may re-sign at the right clock. One that only adds a key may not.
#[test]
fn a_rotation_that_revokes_the_manifest_key_may_go_back_to_the_right_clock() {
    let (_dir, repo, key, file) = setup();
    publish(&repo, &key, &file, "1.0.0", "x").unwrap();
    let ahead = now().plus_secs(200 * 86_400);
    repo.resign("nightly", &Signing::new(&[&key], ahead))
        .unwrap();
    let (added, replacement) = (
        SecretKey::generate().unwrap(),
        SecretKey::generate().unwrap(),
    );
    let add = RotateOptions {
        manifest_keys: Some(vec![key.public(), added.public()]),
        ..RotateOptions::default()
    };
    let err = repo.rotate(&add, &[&key, &added], now()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
    assert!(
        err.to_string().contains(&format!(
            "expected a clock at or after the channel's last issued {ahead}"
        )),
        "{err}"
    );
    let replace = RotateOptions {
        manifest_keys: Some(vec![replacement.public()]),
        ..RotateOptions::default()
    };
    repo.rotate(&replace, &[&key, &replacement], now()).unwrap();
    let m = nightly(&repo);
    assert_eq!((m.issued, m.sequence), (now(), 3));
    repo.verify(now()).unwrap();
}

/// Devices stop walking at the first missing root: one past a gap is never reached.
#[test]
fn verify_refuses_a_root_document_outside_the_chain() {
    let (_dir, repo, key, _file) = setup();
    let renew = RotateOptions::default();
    repo.rotate(&renew, &[&key], now()).unwrap();
    let roots = repo.path().join("root");
    std::fs::rename(roots.join("2.json"), roots.join("3.json")).unwrap();
    let err = repo.verify(now()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert!(
        err.to_string().contains("root/2.json before root/3.json"),
        "{err}"
    );
    // Rotating now would put a root ahead of the stray one in the chain.
    let err = repo.rotate(&renew, &[&key], now()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert!(!roots.join("2.json").exists());
    std::fs::rename(roots.join("3.json"), roots.join("01.json")).unwrap();
    let err = repo.verify(now()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
    assert!(err.to_string().contains("root/01.json"), "{err}");
    std::fs::remove_file(roots.join("01.json")).unwrap();
    repo.verify(now()).unwrap();
}

#[test]
fn a_secret_key_file_is_not_accepted_as_a_public_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k");
    let public = write_keypair(&path).unwrap();
    assert_eq!(read_public_key(&public_key_path(&path)).unwrap(), public);
    assert_eq!(read_secret_key(&path).unwrap().public(), public);
    assert_eq!(
        read_public_key(&path).unwrap_err().kind(),
        ErrorKind::Config
    );
    assert_eq!(write_keypair(&path).unwrap_err().kind(), ErrorKind::Config);
}

/// A `verify` cancelled part-way through the blobs reports no channel as verified whose
/// blobs it never hashed: the report's channel list is what an operator reads as checked.
#[test]
fn a_cancelled_verify_reports_no_channel_whose_blobs_went_unhashed() {
    let (dir, repo, key, file) = setup();
    publish(&repo, &key, &file, "1.0.0", "x").unwrap();
    let other = dir.path().join("other.bin");
    std::fs::write(&other, b"another payload").unwrap();
    repo.release(
        "stable",
        &"2.0.0".parse().unwrap(),
        "x",
        &[("app", other.as_path(), ArtifactKind::File)],
        &ReleaseOptions::new(now()),
        &[&key],
    )
    .unwrap();
    let cancel = CancelToken::new();
    cancel.cancel();
    let (report, problem) = repo.with_cancel(cancel).verify_all(now()).unwrap();
    assert_eq!(problem.unwrap().kind(), ErrorKind::Cancelled);
    let listed: Vec<&str> = report.channels.iter().map(|c| c.channel.as_str()).collect();
    assert!(
        listed.is_empty(),
        "channels reported as verified: {listed:?}"
    );
}

/// A device at a `min_version` brings the floor of its own target, not another's: an
/// x-only release with a high security version must not make prune forget the stone a
/// y device there takes. Every release below is one `release` accepts as it is.
#[test]
fn prune_keeps_the_stone_a_device_at_a_min_version_takes_with_its_targets_floor() {
    let (_dir, repo, key, file) = setup();
    let release = |v: &str, target: &str, security: u64, min: Option<&str>| {
        let mut options = ReleaseOptions::new(now());
        options.security_version = security;
        options.min_version = min.map(|m| m.parse().unwrap());
        let components = [("app", file.as_path(), ArtifactKind::File)];
        repo.release(
            "nightly",
            &v.parse().unwrap(),
            target,
            &components,
            &options,
            &[&key],
        )
        .unwrap()
    };
    release("1.0.0", "x", 0, None);
    // A security fix for x alone.
    release("1.1.0", "x", 5, None);
    // y devices come from 1.1.0 (another channel's, or one pruned here) with floor 0.
    release("1.2.0", "y", 0, Some("1.1.0"));
    release("1.3.0", "y", 0, Some("1.2.0"));
    let m = release("1.4.0", "y", 0, Some("1.3.0"));
    let y_device = ("1.1.0".parse().unwrap(), 0);
    let was = offered(&m, "y", &y_device, now());
    assert_eq!(was, Some("1.2.0".parse().unwrap()));

    let (m, removed) = repo
        .prune("nightly", 1, &Signing::new(&[&key], now()))
        .unwrap();
    assert_eq!(
        offered(&m, "y", &y_device, now()),
        was,
        "a y device on 1.1.0 (floor 0) was offered {was:?} before the prune, which removed {removed:?}"
    );
}

/// Property: a device of any target, on any version (listed, at a `min_version`, between
/// two listed releases or below all of them), with any floor its target's releases up to
/// its version allow, and any id (rollouts as they stand), offered a release before a
/// prune is offered one after it.
#[test]
fn prune_leaves_no_real_device_offered_nothing() {
    let (t0, at) = property_clock();
    let stage = |secs: i64, percent: f64| stage_after(t0, secs, percent);
    let rollouts: [Option<Vec<RolloutStage>>; 6] = [
        None,
        Some(vec![stage(0, 100.0)]),
        Some(vec![stage(0, 10.0)]),
        Some(vec![stage(0, 50.0)]),
        Some(vec![stage(0, 0.0)]),
        Some(vec![stage(0, 30.0), stage(3600, 0.0)]),
    ];
    let ids: Vec<String> = (0..16).map(|i| format!("dev-{i}")).collect();
    for seed in 1..=400u64 {
        let mut draw = Draw::new(seed);
        let mut m = empty_manifest(t0);
        for i in 0..3 + draw.rng.below(6) {
            let release = draw.release(i, &rollouts, |rng| match rng.below(3) {
                0 if i > 0 => Some(Version::new(1, rng.below(i), 5 * rng.below(2))),
                _ => None,
            });
            m.releases.push(release);
        }
        let n = m.releases.len() as u64;
        for keep in 1..=2 {
            let kept = releases_to_keep(&m, keep, at);
            let mut pruned = m.clone();
            pruned.releases.retain(|r| kept.contains(&r.version));
            for target in ["x", "y"] {
                let versions = versions_around(n);
                for v in &versions {
                    // The highest floor a device of `target` on `v` may have: up to the
                    // next listed release's (one pruned between the two may have had it).
                    let top = top_floor(&m, target, v);
                    for floor in 0..=top {
                        for id in &ids {
                            let device = (v.clone(), floor);
                            let was = offered_to(&m, target, id, &device, at);
                            let is = offered_to(&pruned, target, id, &device, at);
                            assert!(
                                was.is_none() || is.is_some(),
                                "seed {seed}, keep {keep}: {target} device {id} on {v} (floor {floor}) was offered {was:?}, nothing after keeping {kept:?} of {:?}",
                                summary(&m, at),
                            );
                        }
                    }
                }
            }
        }
    }
}

/// Property: every device `select` strands (offered nothing only because of a
/// `min_version`, in every rollout that has started) is named by `stranded`.
#[test]
fn stranded_names_every_device_select_strands() {
    let (t0, at) = property_clock();
    let stage = |secs: i64, percent: f64| stage_after(t0, secs, percent);
    let rollouts: [Option<Vec<RolloutStage>>; 5] = [
        None,
        Some(vec![stage(0, 10.0)]),
        Some(vec![stage(0, 0.0)]),
        Some(vec![stage(0, 30.0), stage(3600, 0.0)]),
        Some(vec![stage(0, 0.0), stage(86_400, 50.0)]),
    ];
    let mut strandings = 0;
    for seed in 1..=600u64 {
        let mut draw = Draw::new(seed);
        let mut m = empty_manifest(t0);
        for i in 0..2 + draw.rng.below(6) {
            let release = draw.release(i, &rollouts, below_one_in_two(i));
            m.releases.push(release);
        }
        let n = m.releases.len() as u64;
        let named = stranded(&m, at);
        let reach = Reach::new(&m, at);
        for target in ["x", "y"] {
            let versions = versions_around(n);
            for v in &versions {
                let listed_below = m
                    .releases
                    .iter()
                    .filter(|r| r.targets.contains_key(target) && r.version <= *v);
                // Up to the security version of the next listed release (one pruned
                // between the two may have had it).
                let top = top_floor(&m, target, v);
                let under = listed_below.map(|r| r.version.clone()).max();
                for floor in 0..=top {
                    if !reach.strands(target, (v, floor)) {
                        continue;
                    }
                    strandings += 1;
                    let covered = named.iter().any(|s| {
                        s.target == target
                            && match &s.devices {
                                StrandedDevices::Running(l) => Some(l) == under.as_ref(),
                                StrandedDevices::Below(b) => v < b,
                            }
                    });
                    assert!(
                        covered,
                        "seed {seed}: {target} device on {v} (floor {floor}) is stranded, stranded() says {named:?} of {:?}",
                        summary(&m, at),
                    );
                }
            }
        }
    }
    assert!(strandings > 100, "{strandings} strandings checked");
}

/// Property: a release `check_stepping_stone` lets onto a channel strands no device of
/// its targets on a listed release (or between two) that the channel did not strand
/// before, whatever its floor up to the next listed release's.
#[test]
fn an_accepted_min_version_strands_no_device_of_a_listed_release() {
    let (t0, at) = property_clock();
    let stage = |secs: i64, percent: f64| stage_after(t0, secs, percent);
    let rollouts: [Option<Vec<RolloutStage>>; 4] = [
        None,
        Some(vec![stage(0, 10.0)]),
        Some(vec![stage(0, 0.0)]),
        Some(vec![stage(0, 0.0), stage(86_400, 50.0)]),
    ];
    let mut accepted = 0;
    for seed in 1..=1500u64 {
        let mut draw = Draw::new(seed);
        let mut m = empty_manifest(t0);
        let count = 2 + draw.rng.below(5);
        let mut new = None;
        for i in 0..=count {
            let release = draw.release(i, &rollouts, below_one_in_two(i));
            // The last one is published, newer than the others, or in between.
            if i == count {
                new = Some(release);
            } else {
                m.releases.push(release);
            }
        }
        let mut new = new.unwrap();
        if new.min_version.is_none() {
            continue;
        }
        new.rollout = None;
        if check_stepping_stone(&m, &new, at).is_err() {
            continue;
        }
        accepted += 1;
        let mut with = m.clone();
        with.releases.push(new.clone());
        let (before, after) = (Reach::new(&m, at), Reach::new(&with, at));
        for target in new.targets.keys() {
            let listed: Vec<&Release> = m
                .releases
                .iter()
                .filter(|r| r.targets.contains_key(target))
                .collect();
            for l in &listed {
                for v in [l.version.clone(), Version::new(1, l.version.minor, 5)] {
                    let top = listed
                        .iter()
                        .filter(|r| r.version > v)
                        .map(|r| r.security_version)
                        .min()
                        .unwrap_or(l.security_version);
                    for floor in 0..=top {
                        assert!(
                            !after.strands(target, (&v, floor))
                                || before.strands(target, (&v, floor)),
                            "seed {seed}: {target} device on {v} (floor {floor}) stranded by {:?}",
                            (
                                new.version.to_string(),
                                new.min_version.as_ref().map(ToString::to_string),
                                new.security_version
                            )
                        );
                    }
                }
            }
        }
    }
    assert!(accepted > 100, "{accepted}");
}

/// A channel rewritten is given a later modification time, in whole seconds, than the
/// copy it replaces: nginx and busybox httpd tag a file by that time in seconds and its
/// size, so two resigns within one second (the same size), copied with their times
/// (`rsync -a`, `cp -p`), would keep one tag, and a device holding the first would be
/// answered `304` for the second. The old copy is put in the future here so the test
/// does not hang on the clock's second.
#[test]
fn a_channel_rewritten_gets_a_later_second_than_the_copy_it_replaces() {
    let (_dir, repo, key, file) = setup();
    publish(&repo, &key, &file, "1.0.0", "x").unwrap();
    let path = repo.channel_path("nightly");
    let secs = || {
        let t = std::fs::metadata(&path).unwrap().modified().unwrap();
        t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
    };
    let ahead = std::time::SystemTime::now() + std::time::Duration::from_secs(3600);
    std::fs::File::open(&path)
        .unwrap()
        .set_modified(ahead)
        .unwrap();
    let before = secs();
    let resign = || {
        repo.resign("nightly", &Signing::new(&[&key], now()))
            .unwrap()
    };
    resign();
    assert_eq!(
        secs(),
        before + 1,
        "expected the second after the old copy's"
    );
    resign();
    assert_eq!(
        secs(),
        before + 2,
        "expected the second after the old copy's"
    );
}

/// A release tells the progress function how far it read its component, chunk by chunk
/// from 0 to the file's length, and `verify` how far it hashed the blob.
#[test]
fn commands_tell_how_far_they_read_each_file() {
    use std::sync::{Arc, Mutex};
    let (dir, repo, key, _) = setup();
    let big = dir.path().join("big.bin");
    std::fs::write(&big, vec![5u8; 200_000]).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    let repo = repo.with_progress(move |path, done, len| {
        log.lock().unwrap().push((path.to_path_buf(), done, len));
    });
    publish(&repo, &key, &big, "1.0.0", "x86_64-linux").unwrap();
    let calls: Vec<(u64, Option<u64>)> = seen
        .lock()
        .unwrap()
        .drain(..)
        .filter(|(p, ..)| *p == big)
        .map(|(_, done, len)| (done, len))
        .collect();
    let len = Some(200_000);
    assert_eq!(
        calls,
        [
            (0, len),
            (65_536, len),
            (131_072, len),
            (196_608, len),
            (200_000, len)
        ]
    );

    let (_, problem) = repo.verify_all(now()).unwrap();
    assert!(problem.is_none(), "{problem:?}");
    let blobs = repo.path().join("blobs/sha256");
    let calls = seen.lock().unwrap();
    let of_blob: Vec<u64> = (calls.iter())
        .filter(|(p, _, l)| p.starts_with(&blobs) && *l == len)
        .map(|(_, done, _)| *done)
        .collect();
    assert_eq!(of_blob.first(), Some(&0));
    assert_eq!(of_blob.last(), Some(&200_000));
    assert!(of_blob.windows(2).all(|w| w[0] < w[1]), "{of_blob:?}");
}
