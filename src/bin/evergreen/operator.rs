//! Operator commands: keys, and a signed repository of static files (DESIGN §4, §9).
//! They work offline on a local directory; secret keys never leave this machine.

use crate::{now, path_text, print_json};
use clap::{Args, Subcommand};
use evergreen::manifest::{ArtifactKind, Manifest};
use evergreen::publish::{self, ReleaseOptions, Repo, RotateOptions, Signing, DEFAULT_ROOT_DAYS};
use evergreen::trust::{KeySet, PublicKey, SecretKey};
use evergreen::{Error, Result, Timestamp};
use semver::Version;
use serde_json::json;
use std::path::{Path, PathBuf};

/// The operator subcommands.
#[derive(Subcommand)]
pub(crate) enum Command {
    /// Create a signing key pair: KEYFILE (secret, mode 0600) and KEYFILE.pub.
    #[command(after_help = "Example:\n  evergreen keygen --out keys/root1\n\n\
        Prints the key id. The secret is never printed; keep KEYFILE offline.")]
    Keygen(KeygenArgs),
    /// Create a new repository with its first trust root (root/1.json).
    #[command(
        after_help = "Example:\n  evergreen init repo --product com.acme.gateway \\\n    \
        --root-key keys/root1.pub --root-threshold 1 --manifest-key keys/release.pub \\\n    \
        --sign keys/root1\n\n\
        Refused when REPO/root/1.json exists, even one another init wrote meanwhile: it is\n\
        never replaced; and when a key is given for both roles (whoever holds the key that\n\
        signs every release could then also sign a new root). Waits while another command changes the same repository (it holds\n\
        REPO/.lock)."
    )]
    Init(InitArgs),
    /// Publish a version for one target on a channel (created if missing).
    #[command(
        after_help = "Example:\n  evergreen release repo --channel nightly --version 1.2.0 \\\n    \
        --target x86_64-linux --component app=build/app.zip --component config=settings.json:file \\\n    \
        --notes \"Fixes the reconnect loop.\" --rollout 10 --sign keys/release\n\n\
        A component's kind defaults to zip for .zip files and file otherwise. Refused: an\n\
        image beside other components (image slots take one image alone), a\n\
        --min-version not below --version, and a --security-version below that of an older\n\
        release for the target on the channel, or above that of a newer one (devices that\n\
        confirmed the one could never install the other), also when adding a target, and a\n\
        --min-version that leaves devices running a release of the channel below it offered\n\
        nothing (publish, promote or ramp a stepping stone first), also the release's own\n\
        min_version when adding a target (add the target to the stone first). A warning\n\
        when the --security-version is below that of an older release for the target on\n\
        another channel: devices that confirmed it and move here are never offered this one.\n\
        Waits while another command changes the same repository (it holds REPO/.lock)."
    )]
    Release(ReleaseArgs),
    /// Copy a release (all its targets) from one channel to another.
    #[command(
        after_help = "Example:\n  evergreen promote repo --version 1.2.0 --from nightly --to stable --sign keys/release\n\n\
        The release starts at 100% on the new channel unless --rollout is given. Refused: a\n\
        release halted on --from (its rollout at 0% now, as when pulled for being broken,\n\
        or not started yet) unless --rollout is given, a build of the version already on the target channel, a\n\
        security version out of order with the releases there (per target, as for release),\n\
        and a min_version that leaves devices below it offered nothing: no release they take\n\
        leads past it (a halted one does not count; promote or ramp a stepping stone first).\n\
        A warning, as for release, for a security version below that of an older release\n\
        for one of its targets on another channel.\n\
        Waits while another command changes the same repository (it holds REPO/.lock)."
    )]
    Promote(PromoteArgs),
    /// Set the rollout percentage of a release from now on; 0 halts it.
    #[command(
        after_help = "Example:\n  evergreen rollout repo --channel stable --version 1.2.0 --percent 20 --sign keys/release\n\n\
        Stages a manifest had scheduled after now are dropped: a halt stays a halt.\n\
        Waits while another command changes the same repository (it holds REPO/.lock)."
    )]
    Rollout(RolloutArgs),
    /// Re-sign a channel unchanged with a fresh expiry (clients refuse expired manifests).
    #[command(
        after_help = "Example:\n  evergreen resign repo --channel stable --expires-in 30 --sign keys/release\n\n\
        Waits while another command changes the same repository (it holds REPO/.lock)."
    )]
    Resign(ResignArgs),
    /// Remove old releases from a channel, keeping the newest of each target.
    #[command(
        after_help = "Example:\n  evergreen prune repo --channel nightly --keep 20 --sign keys/release\n\n\
        Per target, keeps the newest releases down to the KEEP-th one rolled out to everyone\n\
        (a release ramping or halted does not count: devices outside its rollout need the\n\
        ones before it). Then, so that no device is offered less than before, it keeps the\n\
        release a device running any listed release (or one older than all) is offered when\n\
        none of those kept would be: the stepping stone below a kept release's min_version\n\
        (the newest release the device can take), and the stone before that one; no other\n\
        release stays. A device may be inside or outside each rollout short of 100%:\n\
        a ramping stone stays for the devices inside it (and a halted one that may be\n\
        ramped again), and the stone at 100% below it for those outside. Blobs stay: they\n\
        are immutable and other channels may list them (`prune-blobs` removes those no\n\
        channel lists any more). Devices verify and parse the whole\n\
        manifest on every change, and refuse one over 1 MiB: prune long-lived channels.\n\
        Waits while another command changes the same repository (it holds REPO/.lock)."
    )]
    Prune(PruneArgs),
    /// Remove the blobs no channel lists any more (left behind by prune).
    #[command(
        name = "prune-blobs",
        after_help = "Example:\n  evergreen prune-blobs repo --dry-run\n  evergreen prune-blobs repo\n\n\
        Reads every channel (expired ones too) and removes each file in blobs/sha256 that\n\
        none of them lists, printing its name and size; --dry-run only prints them. A channel\n\
        that does not verify stops it before anything is removed. Needs no key: blobs are\n\
        not signed. Devices that fetched a manifest from before a prune may still be\n\
        downloading a blob it dropped: upload the pruned manifests first, and delete the\n\
        blobs from the server (a sync with --delete) once they have been served for a day.\n\
        Waits while another command changes the same repository (it holds REPO/.lock)."
    )]
    PruneBlobs(PruneBlobsArgs),
    /// Write the next trust root, signed by the current and the new root keys.
    #[command(
        after_help = "Example:\n  evergreen rotate repo --root-key keys/root2.pub --root-threshold 1 \\\n    \
        --sign keys/root1 --sign keys/root2 --sign keys/release\n\n\
        Keys and thresholds not given stay as they are. When the manifest keys change, or the\n\
        root keys or threshold, every channel is re-signed with the manifest keys (give their\n\
        secret keys with --sign), keeping its validity unless --manifest-expires-in is\n\
        given: devices walk to a new root only when a channel changed. A key given for one\n\
        role that is in the other (given too, or as it is) is refused.\n\
        Waits while another command changes the same repository (it holds REPO/.lock)."
    )]
    Rotate(RotateArgs),
    /// Check the whole repository offline, exactly as a client would.
    #[command(after_help = "Example:\n  evergreen verify repo\n  evergreen verify repo --json")]
    Verify(VerifyArgs),
}

/// Arguments of `keygen`.
#[derive(Args)]
pub(crate) struct KeygenArgs {
    /// Where to write the secret key; the public key goes to KEYFILE.pub.
    #[arg(long, value_name = "KEYFILE")]
    out: PathBuf,
}

/// Arguments shared by commands that sign.
#[derive(Args)]
pub(crate) struct SignArgs {
    /// A secret key file to sign with (repeat for several keys).
    #[arg(long = "sign", value_name = "KEYFILE", required = true)]
    sign: Vec<PathBuf>,
}

/// Arguments of `init`.
#[derive(Args)]
pub(crate) struct InitArgs {
    /// The repository directory to create.
    repo: PathBuf,
    /// Product id, e.g. com.acme.gateway.
    #[arg(long)]
    product: String,
    /// A public key (.pub) of the root role (repeat).
    #[arg(long = "root-key", value_name = "K.pub", required = true)]
    root_key: Vec<PathBuf>,
    /// How many root keys must sign a new root.
    #[arg(long)]
    root_threshold: usize,
    /// A public key (.pub) of the manifest role (repeat).
    #[arg(long = "manifest-key", value_name = "K.pub", required = true)]
    manifest_key: Vec<PathBuf>,
    /// How many manifest keys must sign a channel manifest.
    #[arg(long, default_value_t = 1)]
    manifest_threshold: usize,
    /// Days until the root expires.
    #[arg(long = "expires-in", value_name = "DAYS", default_value_t = DEFAULT_ROOT_DAYS)]
    expires_in: u32,
    #[command(flatten)]
    sign: SignArgs,
}

/// Arguments of `release`.
#[derive(Args)]
pub(crate) struct ReleaseArgs {
    /// The repository directory.
    repo: PathBuf,
    /// Channel to publish on.
    #[arg(long)]
    channel: String,
    /// Semver version of the release.
    #[arg(long, value_parser = crate::parse_version)]
    version: Version,
    /// Target (compatibility string) the components are for.
    #[arg(long)]
    target: String,
    /// NAME=PATH[:zip|file|image|image-raw] (repeat for each component). A gzip image is
    /// published compressed and devices decompress it into the slot; `image-raw` publishes
    /// it as it is (a kernel or FIT image the bootloader reads compressed).
    // Bytes, as every path argument: a PATH need not be UTF-8.
    #[arg(long = "component", value_name = "NAME=PATH[:KIND]", required = true)]
    component: Vec<std::ffi::OsString>,
    /// Release notes.
    #[arg(long, default_value = "")]
    notes: String,
    /// Start a staged rollout at this percentage (default: everyone).
    #[arg(long, value_name = "PERCENT")]
    rollout: Option<f64>,
    /// A forced update: devices cannot skip or defer it beyond the maintenance window.
    #[arg(long)]
    critical: bool,
    /// Devices below this version take a stepping-stone release first.
    #[arg(long, value_name = "V", value_parser = crate::parse_version)]
    min_version: Option<Version>,
    /// Anti-rollback counter of this release.
    #[arg(long, value_name = "N", default_value_t = 0)]
    security_version: u64,
    /// Days until the channel manifest expires (default: the channel's current validity;
    /// 30 for a new channel).
    #[arg(long = "expires-in", value_name = "DAYS")]
    expires_in: Option<u32>,
    #[command(flatten)]
    sign: SignArgs,
}

/// Arguments of `promote`.
#[derive(Args)]
pub(crate) struct PromoteArgs {
    /// The repository directory.
    repo: PathBuf,
    /// The version to promote.
    #[arg(long, value_parser = crate::parse_version)]
    version: Version,
    /// Channel it is on.
    #[arg(long)]
    from: String,
    /// Channel to add it to.
    #[arg(long)]
    to: String,
    /// Start a staged rollout on the new channel at this percentage (default: everyone;
    /// needed to promote a release at 0% on --from, halted or not started yet).
    #[arg(long, value_name = "PERCENT")]
    rollout: Option<f64>,
    /// Days until the target channel's manifest expires (default: its current validity;
    /// 30 for a new channel).
    #[arg(long = "expires-in", value_name = "DAYS")]
    expires_in: Option<u32>,
    #[command(flatten)]
    sign: SignArgs,
}

/// Arguments of `rollout`.
#[derive(Args)]
pub(crate) struct RolloutArgs {
    /// The repository directory.
    repo: PathBuf,
    /// The channel.
    #[arg(long)]
    channel: String,
    /// The release to ramp.
    #[arg(long, value_parser = crate::parse_version)]
    version: Version,
    /// Percentage of devices, 0–100, from now on.
    #[arg(long)]
    percent: f64,
    /// Days until the channel manifest expires (default: the channel's current validity).
    #[arg(long = "expires-in", value_name = "DAYS")]
    expires_in: Option<u32>,
    #[command(flatten)]
    sign: SignArgs,
}

/// Arguments of `prune`.
#[derive(Args)]
pub(crate) struct PruneArgs {
    /// The repository directory.
    repo: PathBuf,
    /// The channel.
    #[arg(long)]
    channel: String,
    /// How many releases rolled out to everyone to keep per target (newer ones stay too).
    #[arg(long, value_name = "N")]
    keep: usize,
    /// Days until the channel manifest expires (default: the channel's current validity).
    #[arg(long = "expires-in", value_name = "DAYS")]
    expires_in: Option<u32>,
    #[command(flatten)]
    sign: SignArgs,
}

/// Arguments of `prune-blobs`.
#[derive(Args)]
pub(crate) struct PruneBlobsArgs {
    /// The repository directory.
    repo: PathBuf,
    /// Only name the blobs no channel lists; remove none.
    #[arg(long = "dry-run")]
    dry_run: bool,
}

/// Arguments of `resign`.
#[derive(Args)]
pub(crate) struct ResignArgs {
    /// The repository directory.
    repo: PathBuf,
    /// The channel.
    #[arg(long)]
    channel: String,
    /// Days until the manifest expires (default: the channel's current validity).
    #[arg(long = "expires-in", value_name = "DAYS")]
    expires_in: Option<u32>,
    #[command(flatten)]
    sign: SignArgs,
}

/// Arguments of `rotate`.
#[derive(Args)]
pub(crate) struct RotateArgs {
    /// The repository directory.
    repo: PathBuf,
    /// New root public key (repeat); default: keep the current ones.
    #[arg(long = "root-key", value_name = "K.pub")]
    root_key: Vec<PathBuf>,
    /// New root threshold; default: keep the current one.
    #[arg(long)]
    root_threshold: Option<usize>,
    /// New manifest public key (repeat); default: keep the current ones.
    #[arg(long = "manifest-key", value_name = "K.pub")]
    manifest_key: Vec<PathBuf>,
    /// New manifest threshold; default: keep the current one.
    #[arg(long)]
    manifest_threshold: Option<usize>,
    /// Days until the new root expires.
    #[arg(long = "expires-in", value_name = "DAYS", default_value_t = DEFAULT_ROOT_DAYS)]
    expires_in: u32,
    /// Days until the re-signed channel manifests expire, when the manifest keys change
    /// (default: each channel's current validity).
    #[arg(long = "manifest-expires-in", value_name = "DAYS")]
    manifest_expires_in: Option<u32>,
    #[command(flatten)]
    sign: SignArgs,
}

/// Arguments of `verify`.
#[derive(Args)]
pub(crate) struct VerifyArgs {
    /// The repository directory.
    repo: PathBuf,
}

/// Runs one operator command.
pub(crate) fn run(cmd: Command, json: bool) -> Result<()> {
    // Keys are written 0600 whatever the umask; what the other commands write is served.
    if !matches!(cmd, Command::Keygen(_)) {
        let_servers_read();
    }
    match cmd {
        Command::Keygen(a) => keygen(&a, json),
        Command::Init(a) => init(&a, json),
        Command::Release(a) => release(&a, json),
        Command::Promote(a) => {
            let (repo, signers) = (open(&a.repo)?, secret_keys(&a.sign)?);
            let signers = refs(&signers);
            let sign = Signing::new(&signers, now()?).valid_for(a.expires_in);
            let m = repo.promote(&a.version, &a.from, &a.to, a.rollout, &sign)?;
            let mut warnings: Vec<String> = pre_release_on_stable(&a.version, &a.to)
                .into_iter()
                .collect();
            warnings.extend(published(
                repo.security_floor_warnings(&m, &a.version, None),
            ));
            warnings.extend(published(size_warning(&repo, &a.to)));
            if json {
                let mut out = channel_json(&m, sign.now);
                out["warnings"] = json!(warnings);
                return print_json(&out);
            }
            for w in &warnings {
                crate::say("warning", w);
            }
            print_channel(
                &m,
                &format!("promoted {} from {} to", a.version, a.from),
                sign.now,
                false,
            )
        }
        Command::Rollout(a) => {
            let (repo, signers) = (open(&a.repo)?, secret_keys(&a.sign)?);
            let v = &a.version;
            let signers = refs(&signers);
            let sign = Signing::new(&signers, now()?).valid_for(a.expires_in);
            let m = repo.rollout(&a.channel, v, a.percent, &sign)?;
            let what = format!("rollout of {v} at {}% on", a.percent);
            print_channel(&m, &what, sign.now, json)
        }
        Command::Resign(a) => {
            let (repo, signers) = (open(&a.repo)?, secret_keys(&a.sign)?);
            let signers = refs(&signers);
            let sign = Signing::new(&signers, now()?).valid_for(a.expires_in);
            let m = repo.resign(&a.channel, &sign)?;
            print_channel(&m, "re-signed", sign.now, json)
        }
        Command::Prune(a) => prune(&a, json),
        Command::PruneBlobs(a) => prune_blobs(&a, json),
        Command::Rotate(a) => rotate(&a, json),
        Command::Verify(a) => verify(&a, json),
    }
}

/// Lets a static server read what this command writes into the repository. It runs as
/// another user (nginx, Apache httpd, lighttpd and busybox httpd drop to one), so a
/// private umask (`umask 077`, as CI jobs set for secret keys) that made the files 0600
/// and the directories 0700 had it answer 403 or 404 for each, which devices take as
/// absent. Read and search for all are kept; who may write is still the umask's.
fn let_servers_read() {
    // SAFETY: umask only swaps the process's file mode mask, and no thread creates
    // files yet.
    unsafe {
        let umask = libc::umask(0o022);
        libc::umask(umask & 0o022);
    }
}

fn prune_blobs(a: &PruneBlobsArgs, json: bool) -> Result<()> {
    let repo = open(&a.repo)?;
    let unlisted = repo.prune_blobs(a.dry_run)?;
    let bytes: u64 = unlisted.iter().map(|(_, size)| size).sum();
    if json {
        let blobs: Vec<_> = unlisted
            .iter()
            .map(|(name, size)| json!({"sha256": name, "size": size}))
            .collect();
        return print_json(&json!({
            "dry_run": a.dry_run,
            "blobs": blobs,
            "bytes": bytes,
        }));
    }
    let verb = if a.dry_run { "would remove" } else { "removed" };
    for (name, size) in &unlisted {
        out!("{verb} blobs/sha256/{name} ({size} bytes)");
    }
    out!(
        "{verb} {} blob(s) no channel lists, {bytes} bytes",
        unlisted.len()
    );
    Ok(())
}

fn prune(a: &PruneArgs, json: bool) -> Result<()> {
    let (repo, signers) = (open(&a.repo)?, secret_keys(&a.sign)?);
    let signers = refs(&signers);
    let sign = Signing::new(&signers, now()?).valid_for(a.expires_in);
    let (m, removed) = repo.prune(&a.channel, a.keep, &sign)?;
    let removed: Vec<String> = removed.iter().map(Version::to_string).collect();
    if json {
        return print_json(&json!({
            "channel": m.channel,
            "sequence": m.sequence,
            "expires": m.expires,
            "removed": removed,
            "releases": m.releases.len(),
            "stranded": publish::stranded(&m, sign.now),
        }));
    }
    if removed.is_empty() {
        out!(
            "nothing to prune on {} ({}; sequence {} unchanged)",
            m.channel,
            releases(m.releases.len()),
            m.sequence
        );
        return Ok(());
    }
    print_channel(
        &m,
        &format!(
            "removed {} ({} left) from",
            removed.join(", "),
            releases(m.releases.len())
        ),
        sign.now,
        false,
    )
}

/// `1 release`, `2 releases`.
fn releases(n: usize) -> String {
    format!("{n} release{}", if n == 1 { "" } else { "s" })
}

fn keygen(a: &KeygenArgs, json: bool) -> Result<()> {
    let public = publish::write_keypair(&a.out)?;
    let public_path = publish::public_key_path(&a.out);
    if json {
        return print_json(&json!({
            "keyid": public.keyid(),
            "secret_key_file": path_text(&a.out),
            "public_key_file": path_text(&public_path),
        }));
    }
    out!("keyid {}", public.keyid());
    out!(
        "wrote {} (secret, keep offline) and {}",
        a.out.display(),
        public_path.display()
    );
    Ok(())
}

fn init(a: &InitArgs, json: bool) -> Result<()> {
    let root_keys = KeySet::new(public_keys(&a.root_key)?, a.root_threshold)
        .map_err(|e| e.context("--root-threshold"))?;
    let manifest_keys = KeySet::new(public_keys(&a.manifest_key)?, a.manifest_threshold)
        .map_err(|e| e.context("--manifest-threshold"))?;
    separate_roles(root_keys.keys(), manifest_keys.keys())?;
    let signers = secret_keys(&a.sign)?;
    let repo = Repo::init(
        &a.repo,
        &a.product,
        &root_keys,
        &manifest_keys,
        &refs(&signers),
        a.expires_in,
        now()?,
    )?;
    let root = repo.trusted_root()?;
    if json {
        return print_json(&json!({
            "repo": path_text(&a.repo),
            "product": a.product,
            "root_version": 1,
            "expires": root.root().expires,
        }));
    }
    out!(
        "created {} for {} (root version 1, expires {})",
        a.repo.display(),
        a.product,
        root.root().expires
    );
    out!(
        "ship {} to devices as their pinned root",
        a.repo.join("root/1.json").display()
    );
    Ok(())
}

fn release(a: &ReleaseArgs, json: bool) -> Result<()> {
    let repo = showing_progress(open(&a.repo)?, json);
    let signers = secret_keys(&a.sign)?;
    let parsed = a
        .component
        .iter()
        .map(|c| parse_component(c))
        .collect::<Result<Vec<_>>>()?;
    let components: Vec<(&str, &Path, ArtifactKind)> = parsed
        .iter()
        .map(|(n, p, k, _)| (n.as_str(), p.as_path(), *k))
        .collect();
    let raw_images: Vec<String> = parsed.iter().filter(|c| c.3).map(|c| c.0.clone()).collect();
    let opts = ReleaseOptions {
        notes: a.notes.clone(),
        rollout_percent: a.rollout,
        critical: a.critical,
        min_version: a.min_version.clone(),
        security_version: a.security_version,
        expires_in_days: a.expires_in,
        now: now()?,
        raw_images,
    };
    let v = &a.version;
    // An `image-raw` component is published as it is by the operator's choice: no warning
    // that it is compressed data.
    let sniffed: Vec<_> = components
        .iter()
        .filter(|c| !opts.raw_images.iter().any(|raw| raw == c.0))
        .copied()
        .collect();
    let compressed = compressed_images(&sniffed)?;
    let executables = executable_files(&components);
    let m = repo.release(
        &a.channel,
        v,
        &a.target,
        &components,
        &opts,
        &refs(&signers),
    )?;
    // The zips as published, read back from the repository, never the operator's path
    // again: a component given as a pipe (a FIFO, `/dev/stdin`) was read whole by the
    // release, and opened again it would wait for a writer for good, or read nothing,
    // after the release is out. Said of the file the operator gave.
    let released = m.release(v).and_then(|r| r.targets.get(&a.target));
    let mut refusals = Vec::new();
    for &(name, given, _) in components.iter().filter(|c| c.2 == ArtifactKind::Zip) {
        if let Some(c) = released.and_then(|t| t.components.get(name)) {
            let blob = repo.path().join(c.artifact.blob_path());
            refusals.extend(publish::default_limit_refusal(name, &blob, given)?);
        }
    }
    let mut later_warnings = compressed;
    later_warnings.extend(executables);
    later_warnings.extend(pre_release_on_stable(v, &a.channel));
    let gzip = gzip_published(&m, v, &a.target, &components);
    later_warnings.extend(image_dropped(&m, v, &a.target, &components));
    later_warnings.extend(new_target(&m, v, &a.target));
    later_warnings.extend(published(repo.security_floor_warnings(
        &m,
        v,
        Some(&a.target),
    )));
    later_warnings.extend(published(size_warning(&repo, &a.channel)));
    if json {
        let warnings: Vec<&String> = refusals
            .iter()
            .chain(&later_warnings)
            .chain(&gzip)
            .collect();
        return print_json(&json!({
            "channel": m.channel,
            "sequence": m.sequence,
            "expires": m.expires,
            "release": m.release(v),
            "stranded": publish::stranded(&m, opts.now),
            "warnings": warnings,
        }));
    }
    for r in &refusals {
        let r = crate::one_line(r);
        err!(
            "warning: {r}; only devices whose config allows more (`archive` in the device config) can install this release"
        );
    }
    for c in &later_warnings {
        crate::say("warning", c);
    }
    for n in &gzip {
        crate::say("note", n);
    }
    let what = format!("released {v} ({}) on", a.target);
    print_channel(&m, &what, opts.now, false)?;
    let target = m
        .release(v)
        .and_then(|r| r.targets.get(&a.target))
        .into_iter()
        .flat_map(|t| &t.components);
    for (name, c) in target {
        let a = &c.artifact;
        out!(
            "  {name:<12} {:<5} {:>12} bytes  sha256 {}…",
            a.kind.as_str(),
            a.size,
            &a.sha256[..12]
        );
        if a.compression.is_some() {
            let (size, sha256) = a.slot_bytes();
            out!(
                "  {:<12} gzip  {size:>12} bytes  sha256 {}… once decompressed into the slot",
                "",
                &sha256[..12]
            );
        }
    }
    Ok(())
}

fn rotate(a: &RotateArgs, json: bool) -> Result<()> {
    let repo = open(&a.repo)?;
    let signers = secret_keys(&a.sign)?;
    let (root_keys, manifest_keys) = (optional_keys(&a.root_key)?, optional_keys(&a.manifest_key)?);
    // Only keys given now are checked: renewing a root whose roles already share a key
    // (made by the library, or before this check) still works.
    if root_keys.is_some() || manifest_keys.is_some() {
        let current = repo.trusted_root()?;
        let current_root = current.root().role_keys("root")?;
        let roots = root_keys.as_deref().unwrap_or(current_root.keys());
        let manifests = manifest_keys
            .as_deref()
            .unwrap_or(current.manifest_keys().keys());
        separate_roles(roots, manifests)?;
    }
    let opts = RotateOptions {
        root_keys,
        root_threshold: a.root_threshold,
        manifest_keys,
        manifest_threshold: a.manifest_threshold,
        expires_in_days: Some(a.expires_in),
        manifest_expires_in_days: a.manifest_expires_in,
    };
    let now = now()?;
    let rotation = repo.rotate(&opts, &refs(&signers), now)?;
    let (root, doc) = (&rotation.root, rotation.root.root());
    if json {
        let channels: Vec<_> = rotation
            .channels
            .iter()
            .map(|m| channel_json(m, now))
            .collect();
        return print_json(&json!({
            "root_version": doc.version,
            "expires": doc.expires,
            "channels": channels,
        }));
    }
    out!(
        "wrote root/{}.json (expires {}): root threshold {}, manifest threshold {}",
        doc.version,
        doc.expires,
        doc.roles.get("root").map_or(0, |r| r.threshold),
        root.manifest_keys().threshold()
    );
    for m in &rotation.channels {
        print_channel(m, "re-signed", now, false)?;
    }
    Ok(())
}

/// The report, and its warnings, also when there is a problem: an operator fixing one
/// must still hear that a channel or the root expires soon. Then the problem is the
/// command's error (exit 1).
fn verify(a: &VerifyArgs, json: bool) -> Result<()> {
    let (report, problem) = showing_progress(open(&a.repo)?, json).verify_all(now()?)?;
    if json {
        // The report of a failed verify lists only what verified: `ok` and `problem` say
        // it failed to a script that reads stdout alone.
        let mut value = serde_json::to_value(&report)
            .map_err(|e| Error::config(format!("expected a printable report, found: {e}")))?;
        value["ok"] = problem.is_none().into();
        value["problem"] = problem.as_ref().map_or(
            serde_json::Value::Null,
            |e| serde_json::json!({"kind": e.kind().as_str(), "message": e.message()}),
        );
        print_json(&value)?;
        return problem.map_or(Ok(()), Err);
    }
    for tmp in &report.stray_temps {
        err!(
            "warning: {} is a temp file, left by an interrupted command (the next change removes it) or one still running; do not upload it",
            crate::one_line(&tmp.display().to_string())
        );
    }
    for w in &report.warnings {
        crate::say("warning", w);
    }
    if let Some(problem) = problem {
        for c in &report.channels {
            warn_stranded(&c.channel, &c.stranded);
        }
        return Err(problem);
    }
    out!(
        "ok: {} root version {} (expires {})",
        report.product,
        report.root_version,
        report.root_expires
    );
    for c in &report.channels {
        out!(
            "  {:<10} sequence {:<4} expires {}  versions [{}]  {} blob(s) checked",
            c.channel,
            c.sequence,
            c.expires,
            in_short(&c.versions),
            c.blobs_checked
        );
        warn_stranded(&c.channel, &c.stranded);
    }
    Ok(())
}

/// `versions` for one line: all of up to eight, else the first three and the last three
/// with the count between (a year of daily releases made a line of thousands of
/// characters; `--json` lists every one).
fn in_short(versions: &[Version]) -> String {
    let shown = |vs: &[Version]| vs.iter().map(Version::to_string).collect::<Vec<_>>();
    match versions.len() {
        0..=8 => shown(versions).join(", "),
        n => format!(
            "{}, … {} more …, {}",
            shown(&versions[..3]).join(", "),
            n - 6,
            shown(&versions[n - 3..]).join(", ")
        ),
    }
}

/// The channel a command changed, and the devices it now strands (see
/// [`publish::stranded`]): a warning each on stderr, or `stranded` in the JSON.
fn print_channel(m: &Manifest, what: &str, now: Timestamp, json: bool) -> Result<()> {
    if json {
        return print_json(&channel_json(m, now));
    }
    let stranded = publish::stranded(m, now);
    out!(
        "{what} {} (sequence {}, expires {})",
        m.channel,
        m.sequence,
        m.expires
    );
    warn_stranded(&m.channel, &stranded);
    Ok(())
}

/// A changed channel in JSON: `channel`, `sequence`, `expires` and `stranded`.
fn channel_json(m: &Manifest, now: Timestamp) -> serde_json::Value {
    json!({
        "channel": m.channel,
        "sequence": m.sequence,
        "expires": m.expires,
        "stranded": publish::stranded(m, now),
    })
}

fn warn_stranded(channel: &str, stranded: &[publish::Stranded]) {
    for s in stranded {
        let running = match &s.devices {
            publish::StrandedDevices::Running(v) => v.to_string(),
            publish::StrandedDevices::Below(v) => format!("anything below {v}"),
        };
        err!(
            "warning: channel {channel} offers nothing to {} devices running {running}: a newer release's min_version holds them back and no stepping stone's rollout reaches them; promote or ramp one",
            s.target
        );
    }
}

/// The repository at `path`, its copies and hashes stopped by Ctrl-C or SIGTERM before the
/// grace runs out ([`crate::interrupt`]): a kill in the middle of one would leave its temp
/// file behind until the next change.
fn open(path: &Path) -> Result<Repo> {
    Ok(Repo::open(path)?
        .with_cancel(crate::interrupt::token())
        .with_wait_notice(|lock| {
            err!(
                "evergreen: waiting for another command changing this repository to finish (lock {})",
                lock.display()
            )
        }))
}

/// `repo` showing how far its commands have read the large files they copy in or hash (a
/// release's components, `verify`'s blobs): hashing 4 GiB takes seconds, or minutes on a
/// network share, and silence meanwhile looks like a hang. On a terminal a bar; off one
/// (a CI log) a line when such a file starts (a pipe, whose length is unknown: none) and
/// one at most every ten seconds after; nothing with `--json`, whose stderr is the error
/// line alone.
fn showing_progress(repo: Repo, json: bool) -> Repo {
    if json {
        return repo;
    }
    let shown = std::sync::Mutex::new(FileShown::default());
    repo.with_progress(move |path, done, len| {
        if let Ok(mut shown) = shown.lock() {
            shown.at(path, done, len);
        }
    })
}

/// What `showing_progress` has shown of the file being read.
#[derive(Default)]
struct FileShown {
    bar: Option<indicatif::ProgressBar>,
    /// Off a terminal: when the last line about the file was said, `None` for a file too
    /// small to speak of.
    said_at: Option<std::time::Instant>,
}

impl FileShown {
    /// Files smaller than this are read in well under a second: nothing is shown.
    const LARGE: u64 = 64 << 20;
    const EVERY: std::time::Duration = std::time::Duration::from_secs(10);

    fn at(&mut self, path: &Path, done: u64, len: Option<u64>) {
        if done == 0 {
            self.start(path, len);
        } else if Some(done) == len {
            // Read whole: what the command says next must not sit under a bar.
            self.finish();
        } else if let Some(bar) = &self.bar {
            bar.set_position(done);
        } else if self.said_at.is_some_and(|at| at.elapsed() >= Self::EVERY) {
            let of = len.map_or(String::new(), |len| format!(" of {len}"));
            err!("evergreen: hashing {}: {done}{of} bytes", shown_path(path));
            self.said_at = Some(std::time::Instant::now());
        }
    }

    fn start(&mut self, path: &Path, len: Option<u64>) {
        self.finish();
        if len.is_some_and(|len| len < Self::LARGE) {
            return;
        }
        if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            // A pipe of unknown length is spoken of only once it has taken a while.
            if let Some(len) = len {
                err!("evergreen: hashing {} ({len} bytes)", shown_path(path));
            }
            self.said_at = Some(std::time::Instant::now());
            return;
        }
        let bar = match len {
            Some(len) => indicatif::ProgressBar::new(len),
            None => indicatif::ProgressBar::new_spinner(),
        };
        let template = "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}";
        bar.set_style(
            indicatif::ProgressStyle::with_template(template)
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        let name = path.file_name().map_or(path.as_os_str(), |n| n);
        bar.set_message(format!(
            "hashing {}",
            crate::one_line(&name.to_string_lossy())
        ));
        self.bar = Some(bar);
    }

    /// Clears the bar of the last file, whose lines must not stay under the command's.
    fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        self.said_at = None;
    }
}

impl Drop for FileShown {
    fn drop(&mut self) {
        self.finish();
    }
}

/// `path` for a line of stderr, its control characters escaped.
fn shown_path(path: &Path) -> String {
    crate::one_line(&path.to_string_lossy()).into_owned()
}

/// `NAME=PATH[:zip|file|image|image-raw]`; without a kind, `.zip` files are zips and
/// others files. `image-raw` is an `image` published as it is even if it is gzip data
/// (the last field). The PATH is bytes, as any path argument's (not UTF-8, say); NAME and
/// KIND are text.
fn parse_component(spec: &std::ffi::OsStr) -> Result<(String, PathBuf, ArtifactKind, bool)> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = spec.as_bytes();
    let (name, rest) = bytes
        .iter()
        .position(|&b| b == b'=')
        .map(|at| (&bytes[..at], &bytes[at + 1..]))
        .ok_or_else(|| {
            Error::config(format!(
                "--component: expected NAME=PATH[:zip|file|image|image-raw], found {spec:?}"
            ))
        })?;
    let name = std::str::from_utf8(name).map_err(|_| {
        Error::config(format!(
            "--component: expected a NAME in UTF-8 before '=', found {:?}",
            std::ffi::OsStr::from_bytes(name)
        ))
    })?;
    // The kind after the last ':', when it is text.
    let last = rest.iter().rposition(|&b| b == b':').and_then(|at| {
        let kind = std::str::from_utf8(&rest[at + 1..]).ok()?;
        Some((&rest[..at], kind))
    });
    let explicit = last.and_then(|(path, kind)| {
        let kind = match kind {
            "zip" => (ArtifactKind::Zip, false),
            "file" => (ArtifactKind::File, false),
            "image" => (ArtifactKind::Image, false),
            "image-raw" => (ArtifactKind::Image, true),
            _ => return None,
        };
        Some((path, kind))
    });
    let rest_path = Path::new(std::ffi::OsStr::from_bytes(rest));
    // `app=build/app.bin:tar`: a kind we do not know, not a file named `app.bin:tar`.
    if let (None, Some((_, kind))) = (&explicit, last) {
        let word = !kind.is_empty() && kind.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
        if word && !rest_path.exists() {
            return Err(Error::config(format!(
                "--component {name}: expected a kind of zip, file, image or image-raw after ':', found {kind:?}"
            )));
        }
    }
    let (path, kind) = explicit.unwrap_or_else(|| {
        let zip = rest.to_ascii_lowercase().ends_with(b".zip");
        (
            rest,
            if zip {
                (ArtifactKind::Zip, false)
            } else {
                (ArtifactKind::File, false)
            },
        )
    });
    Ok((
        name.to_string(),
        PathBuf::from(std::ffi::OsStr::from_bytes(path)),
        kind.0,
        kind.1,
    ))
}

/// A note for each image component of the release just published compressed because
/// it is gzip data: one used to be published as it was, and a bootloader that reads a
/// compressed kernel or FIT image from its slot would now find it decompressed.
fn gzip_published(
    m: &Manifest,
    version: &Version,
    target: &str,
    components: &[(&str, &Path, ArtifactKind)],
) -> Vec<String> {
    let Some(published) = m.release(version).and_then(|r| r.targets.get(target)) else {
        return Vec::new();
    };
    components
        .iter()
        .filter(|(name, _, _)| {
            published
                .components
                .get(name)
                .is_some_and(|c| c.artifact.compression.is_some())
        })
        .map(|(name, path, _)| {
            format!(
                "component {name} ({}) is gzip data: published compressed, devices decompress it into the slot; give it as `{name}={}:image-raw` to publish it as it is (a kernel or FIT image the bootloader reads compressed)",
                path.display(),
                path.display()
            )
        })
        .collect()
}

/// The warnings of a check made once the channel is written: one that fails (another
/// channel that does not verify) is itself a warning, since the release is out and a
/// command that failed now would be run again and refused as already done.
fn published(warnings: Result<Vec<String>>) -> Vec<String> {
    warnings.unwrap_or_else(|e| {
        vec![format!(
            "published, but the other channels' security versions were not checked: {e}"
        )]
    })
}

/// [`Repo::channel_size_warning`] of `channel`, as a list for [`published`].
fn size_warning(repo: &Repo, channel: &str) -> Result<Vec<String>> {
    Ok(repo.channel_size_warning(channel)?.into_iter().collect())
}

/// A warning when a pre-release goes onto `stable`: devices there take it as any release
/// newer than theirs (SemVer orders `1.2.0-rc.1` above 1.1.0), so a release candidate
/// promoted one channel too far reaches the whole fleet, and nothing else would say so.
fn pre_release_on_stable(version: &Version, channel: &str) -> Option<String> {
    (channel == "stable" && !version.pre.is_empty()).then(|| {
        format!(
            "{version} is a pre-release, and devices on stable install it as they would a release; pre-releases belong on preview or nightly"
        )
    })
}

/// A warning when no other release on the channel carries `target` while others carry
/// other targets: a misspelt `--target` (`x86_64-linux-gnu` for `x86_64-linux`) reaches
/// no device, a critical fix included, and nothing else would say so.
fn new_target(m: &Manifest, version: &Version, target: &str) -> Option<String> {
    let others = m
        .releases
        .iter()
        .filter(|r| r.version.cmp_precedence(version).is_ne());
    let mut targets: Vec<&str> = Vec::new();
    for r in others {
        if r.targets.get(target).is_some() {
            return None;
        }
        targets.extend(r.targets.iter().map(|(t, _)| t.as_str()));
    }
    targets.sort_unstable();
    targets.dedup();
    (!targets.is_empty()).then(|| {
        format!(
            "{version} is the only release on channel {} for target {target}; its other releases are for {}: is the target misspelt?",
            m.channel,
            targets.join(", ")
        )
    })
}

/// A warning when the target's newest other release on the channel is an image and this
/// one has none (`:image` left off): devices with image slots are offered it, and every
/// update they try fails with `config` ("expected exactly one image component").
fn image_dropped(
    m: &Manifest,
    version: &Version,
    target: &str,
    components: &[(&str, &Path, ArtifactKind)],
) -> Option<String> {
    if components.iter().any(|c| c.2 == ArtifactKind::Image) {
        return None;
    }
    let earlier = m
        .releases
        .iter()
        .filter(|r| r.version.cmp_precedence(version).is_ne())
        .filter_map(|r| Some((r, r.targets.get(target)?)))
        .max_by(|(a, _), (b, _)| a.version.cmp_precedence(&b.version))?;
    let (name, _) = earlier
        .1
        .components
        .iter()
        .find(|(_, c)| c.artifact.kind == ArtifactKind::Image)?;
    Some(format!(
        "release {} of {target} on channel {} carries an image (component {name}) and {version} none: devices with image slots will be offered {version} and refuse to install it; was `:image` left off?",
        earlier.0.version, m.channel
    ))
}

/// A warning for each `file` component that is an executable regular file: devices place
/// a file component with mode 0644 (the manifest records no mode), so it would arrive
/// without its executable bit. A zip keeps that bit for each of its entries.
fn executable_files(components: &[(&str, &Path, ArtifactKind)]) -> Vec<String> {
    use std::os::unix::fs::PermissionsExt;
    components
        .iter()
        .filter(|c| c.2 == ArtifactKind::File)
        .filter(|c| {
            c.1.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .map(|(name, path, _)| {
            format!(
                "component {name} ({}) is executable, and devices place a `file` component with mode 0644: it arrives without its executable bit; publish it in a zip, whose entries keep that bit",
                path.display()
            )
        })
        .collect()
}

/// A warning for each image component that starts as compressed data in a format devices
/// do not decompress: a device writes such an image into its slot byte for byte, and a
/// compressed root file system activates, fails to mount and costs a failed trial. Not
/// refused: a bootloader may read a compressed kernel or FIT image from its slot as it
/// is. Gzip is not among them: the library publishes a gzip image compressed, and devices
/// decompress it into the slot.
fn compressed_images(components: &[(&str, &Path, ArtifactKind)]) -> Result<Vec<String>> {
    const MAGIC: [(&[u8], &str); 4] = [
        (b"\xfd7zXZ\x00", "xz"),
        (b"\x28\xb5\x2f\xfd", "zstd"),
        (b"BZh", "bzip2"),
        (b"\x04\x22\x4d\x18", "lz4"),
    ];
    let mut warnings = Vec::new();
    // Only a regular file can be read here and again by the release: the bytes read from
    // a pipe (`/dev/stdin`, `<(…)`) would be missing from the image published.
    let files = components
        .iter()
        .filter(|c| c.2 == ArtifactKind::Image && c.1.metadata().is_ok_and(|m| m.is_file()));
    for (name, path, _) in files {
        let mut head = Vec::with_capacity(6);
        std::fs::File::open(path)
            .and_then(|f| std::io::Read::read_to_end(&mut std::io::Read::take(f, 6), &mut head))
            .map_err(|e| Error::io("read image", path, e))?;
        if let Some((_, format)) = MAGIC.iter().find(|(magic, _)| head.starts_with(magic)) {
            warnings.push(format!(
                "component {name} ({}) is {format}-compressed data: devices write an image into its slot as it is, nothing decompresses it; publish the uncompressed image (or one compressed with gzip, which devices decompress), unless the bootloader reads this one compressed",
                path.display()
            ));
        }
    }
    Ok(warnings)
}

fn public_keys(paths: &[PathBuf]) -> Result<Vec<PublicKey>> {
    paths.iter().map(|p| publish::read_public_key(p)).collect()
}

/// Refuses a key in both roles: whoever holds the key that signs every release could then
/// also sign a new root, which keeping the roles apart is for (SECURITY.md).
fn separate_roles(root: &[PublicKey], manifest: &[PublicKey]) -> Result<()> {
    match manifest.iter().find(|k| root.contains(k)) {
        Some(k) => Err(Error::config(format!(
            "expected manifest keys apart from the root keys (a manifest key's holder could otherwise sign a new root), found key {} in both roles",
            k.keyid()
        ))),
        None => Ok(()),
    }
}

fn optional_keys(paths: &[PathBuf]) -> Result<Option<Vec<PublicKey>>> {
    if paths.is_empty() {
        return Ok(None);
    }
    public_keys(paths).map(Some)
}

/// The `--sign` keys, each read once; a warning on stderr for a key file others may read.
fn secret_keys(args: &SignArgs) -> Result<Vec<SecretKey>> {
    args.sign
        .iter()
        .map(|p| {
            let key = publish::read_secret_key(p)?;
            if let Some(w) = publish::secret_key_exposure(p) {
                crate::say("warning", &w);
            }
            Ok(key)
        })
        .collect()
}

fn refs(keys: &[SecretKey]) -> Vec<&SecretKey> {
    keys.iter().collect()
}
