//! `verify`: every root, channel and blob of a repository checked as a device would,
//! and the warnings an operator needs before the next upload.

use super::*;

impl Repo {
    /// Warnings for release `version` of the channel manifest `m` (as `release` or
    /// `promote` just wrote it), one per target (or for `target` alone when given, as when
    /// it was just added to the release): the older release of
    /// the target on another channel with the highest security version, when that is
    /// above this release's. Devices move between channels and keep their security floor,
    /// so those that confirmed it are never offered this release. Not refused, unlike the
    /// order within a channel: the release may be right for the devices that stayed, and
    /// the floor it would need raises theirs for good.
    pub fn security_floor_warnings(
        &self,
        m: &Manifest,
        version: &Version,
        target: Option<&str>,
    ) -> Result<Vec<String>> {
        let trusted = self.trusted_root()?;
        let channel = m.channel.as_str();
        let release = &m.releases[listed_release(m, version)?];
        let mut others = Vec::new();
        for name in self.channel_names()? {
            if name != channel {
                others.extend(self.load_channel(&trusted, &name)?);
            }
        }
        let mut warnings = Vec::new();
        let targets = release
            .targets
            .keys()
            .filter(|t| target.is_none_or(|only| only == *t));
        for target in targets {
            let above = others
                .iter()
                .filter_map(|o| Some((o, highest_older(&o.releases, version, target)?)))
                .max_by_key(|(_, r)| r.security_version)
                .filter(|(_, r)| r.security_version > release.security_version);
            if let Some((o, r)) = above {
                warnings.push(format!(
                    "release {} of {target} on channel {} has security version {}, and {version} on channel {channel} {}: devices that confirmed {} and move to {channel} are never offered {version} (give it --security-version {} or more if they should be)",
                    r.version, o.channel, r.security_version, release.security_version, r.version, r.security_version
                ));
            }
        }
        Ok(warnings)
    }

    /// A warning when `channel`'s manifest, as signed on disk, is past three quarters of
    /// the size devices accept by default (`verify` gives the same one), naming `prune`;
    /// `None` for a smaller one.
    pub fn channel_size_warning(&self, channel: &str) -> Result<Option<String>> {
        let path = self.channel_path(channel);
        let bytes = std::fs::metadata(&path)
            .map_err(|e| Error::io("read", &path, e))?
            .len();
        Ok(size_warning(channel, bytes))
    }

    /// Checks the whole repository offline, as a client at `now` would: the root chain and
    /// the newest root's expiry, that every `root/N.json` is part of that chain, every
    /// channel manifest against the newest manifest keys, every referenced blob's size
    /// and SHA-256, and that no zip is one every device would refuse (as `release` checks
    /// before it publishes one: [`ErrorKind::UnsafeArchive`]). Past the root chain, every
    /// problem is collected: one is returned as it is, several as one error of the first
    /// one's kind that lists them all (`N problems: (1) …; (2) …`).
    pub fn verify(&self, now: Timestamp) -> Result<VerifyReport> {
        let (report, problem) = self.verify_all(now)?;
        problem.map_or(Ok(report), Err)
    }

    /// [`Repo::verify`], with the report also when it finds a problem past the root chain:
    /// the channels that verified, the temp files and the expiry warnings, which an
    /// operator fixing the problem needs to hear about too. The problem (all of them, as
    /// `verify` returns them) is the second value; an error is one in the root chain,
    /// before anything else could be checked.
    pub fn verify_all(&self, now: Timestamp) -> Result<(VerifyReport, Option<Error>)> {
        let trusted = self.trusted_root()?;
        self.check_root_files(trusted.root().version)?;
        // Each problem is collected and the checks go on: three expired channels are
        // named in one run, not one a run.
        let mut problems = Vec::new();
        let mut warnings = Vec::new();
        let root = trusted.root();
        match trusted.check_unexpired(now) {
            Err(e) => problems.push(e),
            Ok(()) => {
                let window = i64::from(ROOT_EXPIRY_WARNING_DAYS) * 86_400;
                warnings.extend(expires_soon(root.expires, now, window).map(|days| {
                format!(
                    "root version {} expires at {}, in {days}: no device accepts what it signs from then on; renew it (evergreen rotate REPO --sign ROOT_KEY)",
                    root.version, root.expires
                )
                }))
            }
        }
        let product = root.product.clone();
        let mut verified = Vec::new();
        let names = self.channel_names()?;
        warnings.extend(case_twins(&names));
        for channel in names {
            match self.verify_channel(&trusted, &channel, now) {
                Ok(c) => verified.push(c),
                Err(e) => problems.push(e),
            }
        }
        let manifests: Vec<&Manifest> = verified.iter().map(|(m, _)| &**m).collect();
        let bad = self.check_listed_blobs(&manifests, &mut problems);
        let mut channels = Vec::new();
        for (m, c) in verified {
            // A channel listing a bad blob did not verify: its problem names it.
            if bad.contains(&m.channel) {
                continue;
            }
            let channel = &m.channel;
            let window = channel_warning_secs(c.issued, c.summary.expires);
            if let Some(days) = expires_soon(c.summary.expires, now, window) {
                warnings.push(format!(
                    "channel {channel} expires at {}, in {days}: devices refuse it from then on; re-sign it (evergreen resign REPO --channel {channel} --sign KEY)",
                    c.summary.expires
                ));
            }
            warnings.extend(size_warning(channel, c.bytes));
            channels.push(c.summary);
        }
        let problem = match problems.len() {
            0 => None,
            1 => problems.pop(),
            n => {
                let all: Vec<String> = problems
                    .iter()
                    .enumerate()
                    .map(|(i, e)| format!("({}) {e}", i + 1))
                    .collect();
                Some(Error::new(
                    problems[0].kind(),
                    format!("{n} problems: {}", all.join("; ")),
                ))
            }
        };
        let report = VerifyReport {
            product,
            root_version: root.version,
            root_expires: root.expires,
            channels,
            stray_temps: self.stray_temps(),
            warnings,
        };
        Ok((report, problem))
    }

    /// Verifies `channel`'s manifest as a client at `now` would (its blobs are checked
    /// with every channel's, by [`Repo::check_listed_blobs`]).
    fn verify_channel(
        &self,
        trusted: &TrustedRoot,
        channel: &str,
        now: Timestamp,
    ) -> Result<(manifest::Verified<Manifest>, VerifiedChannel)> {
        let path = self.channel_path(channel);
        let bytes = std::fs::read(&path).map_err(|e| Error::io("read", &path, e))?;
        let m = verify_channel_at(trusted, channel, &path, &bytes, now)?;
        check_targets(&m).map_err(|e| e.context(path.display()))?;
        let c = VerifiedChannel {
            issued: m.issued,
            bytes: bytes.len() as u64,
            summary: ChannelSummary {
                channel: m.channel.clone(),
                sequence: m.sequence,
                expires: m.expires,
                versions: m.releases.iter().map(|r| r.version.clone()).collect(),
                blobs_checked: blobs_in_repo(&m)
                    .map(|(.., a)| &a.sha256)
                    .collect::<std::collections::BTreeSet<_>>()
                    .len(),
                stranded: stranded(&m, now),
            },
        };
        Ok((m, c))
    }

    /// The temp files in the directories commands write into (see
    /// [`VerifyReport::stray_temps`]).
    pub(super) fn stray_temps(&self) -> Vec<PathBuf> {
        WRITTEN_DIRS
            .iter()
            .flat_map(|dir| fsutil::temps_in(&self.root.join(dir)))
            .collect()
    }

    /// Refuses a `root/N.json` that is not part of the chain ending at `newest` (see
    /// [`stray_root`]).
    pub(super) fn check_root_files(&self, newest: u64) -> Result<()> {
        let dir = self.root.join("root");
        let entries = std::fs::read_dir(&dir).map_err(|e| Error::io("list", &dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| Error::io("list", &dir, e))?;
            let file = entry.file_name();
            let stem = file.to_str().and_then(|f| f.strip_suffix(".json"));
            if let Some(err) = stem.and_then(|stem| stray_root(stem, newest)) {
                return Err(err);
            }
        }
        Ok(())
    }

    /// Checks each blob `manifests` name in the repository once, however many channels
    /// and releases list it (a blob is hashed whole, so twice is twice the reading). A bad
    /// one is one problem, naming where each channel that lists it lists it first; those
    /// channels are returned, and after a cancel also every channel listing a blob not
    /// hashed.
    fn check_listed_blobs(
        &self,
        manifests: &[&Manifest],
        problems: &mut Vec<Error>,
    ) -> HashSet<String> {
        // Per blob, in the order first listed: each channel with its first reference.
        let mut blobs: Vec<(&Artifact, Vec<(&str, String)>)> = Vec::new();
        let mut index: HashMap<BlobKey, usize> = HashMap::new();
        for m in manifests {
            for (r, target, name, a) in blobs_in_repo(m) {
                let key = (
                    a.sha256.clone(),
                    a.size,
                    a.kind,
                    a.compression,
                    a.installed_size,
                    a.installed_sha256.clone(),
                );
                let i = *index.entry(key).or_insert_with(|| {
                    blobs.push((a, Vec::new()));
                    blobs.len() - 1
                });
                let listed = &mut blobs[i].1;
                if listed.iter().all(|(c, _)| *c != m.channel) {
                    let at = format!(
                        "channel {} release {} target {target} component {name}",
                        m.channel, r.version
                    );
                    listed.push((&m.channel, at));
                }
            }
        }
        let mut bad = HashSet::new();
        let mut blobs = blobs.into_iter();
        for (artifact, listed) in blobs.by_ref() {
            let Err(e) = self.check_blob(artifact) else {
                continue;
            };
            let cancelled = e.kind() == ErrorKind::Cancelled;
            let at: Vec<&str> = listed.iter().map(|(_, at)| at.as_str()).collect();
            problems.push(e.context(at.join(", ")));
            bad.extend(listed.into_iter().map(|(c, _)| c.to_owned()));
            if cancelled {
                break;
            }
        }
        // After a cancel, the channels listing a blob not hashed were not verified either.
        bad.extend(
            blobs
                .flat_map(|(_, listed)| listed)
                .map(|(c, _)| c.to_owned()),
        );
        bad
    }

    /// Checks the blob `artifact` names: there, of its size and SHA-256, and, for a zip,
    /// one some device would install.
    pub(super) fn check_blob(&self, artifact: &Artifact) -> Result<()> {
        let path = self.root.join(artifact.blob_path());
        if !path.is_file() {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!("expected blob {}, found none", path.display()),
            ));
        }
        // A compressed image is inflated as it is hashed: a device compares its slot
        // with what the manifest says it decompresses to.
        let mut probe = match artifact.compression {
            Some(_) => Probe::gzip(),
            None => Probe::Raw,
        };
        let mut file = File::open(&path).map_err(|e| Error::io("open", &path, e))?;
        // Judged only once the hash matched: a damaged blob is `hash_mismatch`, which a
        // release of the same file repairs, whatever its bytes inflate to.
        let mut bad = None;
        let (size, sha256) = self.hash_file(&mut file, &path, |chunk| {
            if bad.is_none() {
                bad = probe.feed(chunk, &path).err();
            }
            Ok(())
        })?;
        if size != artifact.size || sha256 != artifact.sha256 {
            return Err(Error::new(
                ErrorKind::HashMismatch,
                format!(
                    "blob {}: expected {} bytes with sha256 {}, found {size} bytes with sha256 {sha256}",
                    path.display(),
                    artifact.size,
                    artifact.sha256
                ),
            ));
        }
        if let Some(e) = bad {
            return Err(e);
        }
        if let Some((len, sha)) = probe.finish(&path)? {
            let (size, sha256) = artifact.slot_bytes();
            if (len, sha.as_str()) != (size, sha256) {
                return Err(Error::new(
                    ErrorKind::HashMismatch,
                    format!(
                        "blob {}: expected it to decompress to {size} bytes with sha256 {sha256}, found {len} bytes with sha256 {sha}",
                        path.display()
                    ),
                ));
            }
        }
        // A zip put in by hand, or by a build that skipped `release`'s check, is refused
        // here as every device would refuse it, not first by the fleet.
        match artifact.kind {
            ArtifactKind::Zip => check_zip_for_every_device(&path, &path, artifact.installed_size),
            _ => check_image_not_empty(artifact, &path),
        }
    }

    /// `e` with the interrupted-rotate hint when a channel is signed only by keys
    /// `trusted` does not list for manifests: a rotate that stopped after re-signing it.
    /// `first` is looked at first, then every other channel: a rotate cut off part-way
    /// leaves the channel being changed (or one not made yet) as it was, another
    /// re-signed. A channel that cannot be read, or by no valid name, is passed over.
    pub(super) fn with_rotate_hint(&self, trusted: &TrustedRoot, first: &str, e: Error) -> Error {
        let others = self.channel_names().unwrap_or_default();
        let names =
            std::iter::once(first.to_owned()).chain(others.into_iter().filter(|n| n != first));
        for name in names {
            let bytes = manifest::check_channel_name(&name)
                .ok()
                .and_then(|()| std::fs::read(self.channel_path(&name)).ok());
            if bytes.is_some_and(|b| signed_by_unlisted(trusted, &b)) {
                return rotate_hint(trusted, &format!("channels/{name}.json"), e);
            }
        }
        e
    }
}

/// A channel [`Repo::verify`] found sound, with when it was issued.
struct VerifiedChannel {
    issued: Timestamp,
    /// The signed manifest's length, as devices download it.
    bytes: u64,
    summary: ChannelSummary,
}

/// Past this length a channel manifest is warned about: three quarters of the
/// [`DEFAULT_MAX_METADATA_BYTES`] devices accept by default.
const SIZE_WARNING_BYTES: u64 = DEFAULT_MAX_METADATA_BYTES / 4 * 3;

/// A warning when the manifest of `channel`, `bytes` long as signed, is past
/// [`SIZE_WARNING_BYTES`]: commands refuse to sign it past the cap (`too_large`), and the
/// fix, `prune`, is best run before that day.
pub(super) fn size_warning(channel: &str, bytes: u64) -> Option<String> {
    (bytes > SIZE_WARNING_BYTES).then(|| {
        format!(
            "channel {channel} is {bytes} bytes as signed, {}% of the {DEFAULT_MAX_METADATA_BYTES} bytes devices accept by default: once past that, no command can publish to it; remove old releases ({})",
            bytes * 100 / DEFAULT_MAX_METADATA_BYTES,
            prune_command(channel)
        )
    })
}

/// The command that makes `channel`'s manifest smaller, for the size warning and the
/// refusal past the cap.
pub(super) fn prune_command(channel: &str) -> String {
    format!("evergreen prune REPO --channel {channel} --keep N --sign KEY")
}

/// How soon a document still valid at `now` expires, in words, when that is less than
/// `window_secs` away.
pub(super) fn expires_soon(expires: Timestamp, now: Timestamp, window_secs: i64) -> Option<String> {
    let left = expires.unix().saturating_sub(now.unix());
    if left >= window_secs {
        return None;
    }
    Some(match (left / 86_400, left / 3_600) {
        (0, 0) => "under an hour".to_string(),
        (0, 1) => "1 hour".to_string(),
        (0, hours) => format!("{hours} hours"),
        (1, _) => "1 day".to_string(),
        (days, _) => format!("{days} days"),
    })
}

/// How long before a channel manifest issued at `issued` expires at `expires` `verify`
/// warns: [`EXPIRY_WARNING_DAYS`], or half its validity when that is shorter (a channel
/// valid for 7 days and re-signed every 3 is in time).
fn channel_warning_secs(issued: Timestamp, expires: Timestamp) -> i64 {
    let half = expires.unix().saturating_sub(issued.unix()) / 2;
    (i64::from(EXPIRY_WARNING_DAYS) * 86_400).min(half.max(0))
}

/// Devices walk `root/N.json` up from their pinned root and stop at the first missing
/// version: a document past a gap, or under a name they never ask for (`0.json`,
/// `02.json`), is never reached, though it looks in force to whoever reads the directory.
/// The error for `root/<stem>.json` when it is such a document and the chain ends at
/// `newest`; `None` for a chain member or a name that is no version at all.
fn stray_root(stem: &str, newest: u64) -> Option<Error> {
    if stem.is_empty() || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let canonical = stem.parse::<u64>().ok().filter(|n| n.to_string() == stem);
    match canonical {
        Some(n) if (1..=newest).contains(&n) => None,
        Some(n) if n > newest => Some(Error::new(
            ErrorKind::NotFound,
            format!(
                "expected root/{}.json before root/{stem}.json (devices walk the roots in order and stop at the first missing one, so they never reach it), found none",
                newest + 1
            ),
        )),
        _ => Some(Error::config(format!(
            "expected root documents named 1.json to {newest}.json, found root/{stem}.json, which devices never ask for"
        ))),
    }
}

/// The manifest of `channel` in `bytes` (read from `path`), verified as a client at `now`
/// would with `trusted`'s manifest keys; its errors name the file, and an interrupted
/// rotate when that is what they come from.
pub(super) fn verify_channel_at(
    trusted: &TrustedRoot,
    channel: &str,
    path: &Path,
    bytes: &[u8],
    now: Timestamp,
) -> Result<manifest::Verified<Manifest>> {
    let expect = Expect {
        product: &trusted.root().product,
        channel,
        now,
        max_bytes: DEFAULT_MAX_METADATA_BYTES,
    };
    manifest::verify(
        bytes,
        trusted.manifest_keys(),
        &expect,
        &Freshness::default(),
    )
    .map_err(|e| interrupted_rotate(trusted, bytes, e).context(path.display()))
}

/// `e`, a channel's `envelope` refused under `trusted`, with a hint when every signature
/// on it is by a key the root does not list for manifests: what a `rotate` that changes
/// the manifest keys leaves when it is cut off after re-signing the channels and before
/// writing the new root (renamed into place last). Running it again finishes it.
fn interrupted_rotate(trusted: &TrustedRoot, envelope: &[u8], e: Error) -> Error {
    if e.kind() != ErrorKind::Signature || !signed_by_unlisted(trusted, envelope) {
        return e;
    }
    rotate_hint(trusted, "it", e)
}

/// Whether every signature on `envelope` is by a key `trusted` does not list for
/// manifests, as on a channel a rotate re-signed before its root was written.
fn signed_by_unlisted(trusted: &TrustedRoot, envelope: &[u8]) -> bool {
    let known: Vec<String> = trusted
        .manifest_keys()
        .keys()
        .iter()
        .map(PublicKey::keyid)
        .collect();
    trust::parse_envelope(envelope).is_ok_and(|env| {
        !env.signatures.is_empty() && env.signatures.iter().all(|s| !known.contains(&s.keyid))
    })
}

/// `e` with the interrupted-rotate hint, `what` naming the document signed only by keys
/// `trusted` does not list for manifests ([`signed_by_unlisted`]), of whatever kind `e`
/// is: signing with the new manifest key (`resign --sign NEW`) is a `threshold` error
/// under the old root before the channel is even read.
fn rotate_hint(trusted: &TrustedRoot, what: &str, e: Error) -> Error {
    let message = format!(
        "{}; {what} is signed only by keys root version {} does not list for manifests: an interrupted rotate? run the same rotate command again",
        e.message(),
        trusted.root().version
    );
    Error::new(e.kind(), message)
}

/// Refuses a target of `m` that no device installs, as `release` refuses to publish one:
/// image and other components mixed (no slot store takes them), or two components a
/// file system ignoring case takes for one directory (dir slots refuse them before the
/// download). A manifest made or edited by another tool is caught here, not by the fleet.
fn check_targets(m: &Manifest) -> Result<()> {
    for r in &m.releases {
        for (target, t) in &r.targets {
            let problem = match manifest::SlotsFor::of(t.components.values().map(|c| c.artifact.kind)) {
                manifest::SlotsFor::Neither => Some(
                    "expected one image component alone, or no image, found an image among other components (no slot store installs it)"
                        .to_string(),
                ),
                _ => crate::fold::clash(t.components.keys().map(String::as_str)).map(|(a, b)| {
                    format!("expected each component once, also ignoring case, found {a:?} and {b:?} (one directory where case is ignored; dir slots refuse it)")
                }),
            };
            if let Some(problem) = problem {
                return Err(Error::new(
                    ErrorKind::WrongMetadata,
                    format!(
                        "channel {} release {} target {target}: {problem}",
                        m.channel, r.version
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// A warning for each two of `names` (the repository's channels, sorted) that differ only
/// in case: one file on a file system that ignores case, so a copy of the repository there
/// (a USB stick's FAT or exFAT) keeps one of them, and `verify` of the copy cannot tell.
fn case_twins(names: &[String]) -> Vec<String> {
    let mut warnings = Vec::new();
    for (i, a) in names.iter().enumerate() {
        for b in names[i + 1..].iter().filter(|b| b.eq_ignore_ascii_case(a)) {
            warnings.push(format!(
                "channels {a} and {b} differ only in case: a copy of the repository on a file system that ignores case (a USB stick's FAT or exFAT, macOS, Windows) keeps one of them; move the devices of one to the other"
            ));
        }
    }
    warnings
}
