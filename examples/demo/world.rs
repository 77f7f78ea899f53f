//! The operator's side of the story: a simulated clock, keys, a signed repository made
//! with the library's publish code, and the release artifacts (small zips and files).

use super::narrate::Outcome;
use evergreen::manifest::ArtifactKind;
use evergreen::publish::{ReleaseOptions, Repo, Signing};
use evergreen::trust::{KeySet, SecretKey};
use evergreen::Timestamp;
use semver::Version;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

/// The product every document names.
pub const PRODUCT: &str = "com.acme.gateway";
/// The device's compatibility target.
pub const TARGET: &str = "x86_64-linux";
/// When the story starts: a Monday morning, UTC.
const START: &str = "2026-11-23T10:00:00Z";

/// A clock both sides read, moved forward by the story instead of by waiting, so rollout
/// stages and maintenance windows happen in a second.
#[derive(Clone)]
pub struct SimClock(Arc<AtomicI64>);

impl SimClock {
    /// The clock at the start of the story.
    pub fn new() -> SimClock {
        let start: Timestamp = START.parse().unwrap_or(Timestamp::from_unix(0));
        SimClock(Arc::new(AtomicI64::new(start.unix())))
    }

    /// The simulated now.
    pub fn now(&self) -> Timestamp {
        Timestamp::from_unix(self.0.load(Ordering::SeqCst))
    }

    /// Moves the clock to `t` (never backwards: only the story's future happens).
    pub fn set(&self, t: Timestamp) {
        self.0.fetch_max(t.unix(), Ordering::SeqCst);
    }

    /// Moves the clock forward by `hours`.
    pub fn advance_hours(&self, hours: i64) {
        self.set(self.now().plus_secs(hours * 3600));
    }
}

/// One component of a release: its name, the file it is built from, and how it installs.
pub type Part = (&'static str, PathBuf, ArtifactKind);

/// The release engineer: one key for the root and the manifests (a real product would
/// keep the root key offline), and the repository.
pub struct Publisher {
    key: SecretKey,
    repo: Repo,
    src: PathBuf,
    clock: SimClock,
}

impl Publisher {
    /// Generates a key and initialises a repository under `dir`.
    pub fn init(dir: &Path, clock: SimClock) -> Outcome<Publisher> {
        let key = SecretKey::generate()?;
        let keys = KeySet::new(vec![key.public()], 1)?;
        let repo = Repo::init(
            dir.join("repo"),
            PRODUCT,
            &keys,
            &keys,
            &[&key],
            365,
            clock.now(),
        )?;
        let src = dir.join("build");
        std::fs::create_dir_all(&src)?;
        Ok(Publisher {
            key,
            repo,
            src,
            clock,
        })
    }

    /// The repository: what the HTTP server serves.
    pub fn repo(&self) -> &Repo {
        &self.repo
    }

    /// The public key's id (what devices trust).
    pub fn keyid(&self) -> String {
        self.key.public().keyid()
    }

    /// Publishes `version` with `parts` on `channel`, for every device at once.
    pub fn release(
        &self,
        channel: &str,
        version: &Version,
        parts: &[Part],
        notes: &str,
    ) -> Outcome<u64> {
        let components: Vec<(&str, &Path, ArtifactKind)> = parts
            .iter()
            .map(|(name, path, kind)| (*name, path.as_path(), *kind))
            .collect();
        let mut opts = ReleaseOptions::new(self.clock.now());
        opts.notes = notes.to_string();
        let m = self
            .repo
            .release(channel, version, TARGET, &components, &opts, &[&self.key])?;
        Ok(m.sequence)
    }

    /// Copies `version` from one channel to the next, at `percent` of devices if given.
    pub fn promote(
        &self,
        version: &Version,
        from: &str,
        to: &str,
        percent: Option<f64>,
    ) -> Outcome<u64> {
        let m = self.repo.promote(
            version,
            from,
            to,
            percent,
            &Signing::new(&[&self.key], self.clock.now()),
        )?;
        Ok(m.sequence)
    }

    /// Ramps (or halts, with 0) the rollout of `version` on `channel`.
    pub fn rollout(&self, channel: &str, version: &Version, percent: f64) -> Outcome<u64> {
        let m = self.repo.rollout(
            channel,
            version,
            percent,
            &Signing::new(&[&self.key], self.clock.now()),
        )?;
        Ok(m.sequence)
    }

    /// The app: a zip with a program, its version, and the health its self-check reports.
    /// Larger than the library's 256 KiB chunk, so the progress bar moves during its
    /// download (which the demo checks).
    pub fn app(&self, version: &str, healthy: bool) -> Outcome<Part> {
        let health: &[u8] = if healthy { b"ok" } else { b"fail" };
        let program = noise(version, 640 * 1024);
        let path = self.src.join(format!("app-{version}.zip"));
        write_zip(
            &path,
            &[
                ("VERSION", version.as_bytes()),
                ("health", health),
                ("bin/gateway", &program),
            ],
        )?;
        Ok(("app", path, ArtifactKind::Zip))
    }

    /// Web assets that do not change between the releases of this story.
    pub fn assets(&self) -> Outcome<Part> {
        let path = self.src.join("assets.zip");
        let logo = noise("logo", 64 * 1024);
        write_zip(
            &path,
            &[
                ("index.html", b"<h1>Gateway</h1>".as_slice()),
                ("logo.bin", &logo),
            ],
        )?;
        Ok(("assets", path, ArtifactKind::Zip))
    }

    /// A single-file component called `name` holding `text`.
    pub fn file(&self, name: &'static str, file: &str, text: &str) -> Outcome<Part> {
        let dir = self.src.join(name);
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(file);
        std::fs::write(&path, text)?;
        Ok((name, path, ArtifactKind::File))
    }
}

/// Deterministic incompressible bytes, so artifacts have a real size on the wire.
fn noise(seed: &str, len: usize) -> Vec<u8> {
    let seed = seed.bytes().fold(0x9e37_79b9_7f4a_7c15u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    crate::support::noise(len, seed)
}

fn write_zip(path: &Path, files: &[(&str, &[u8])]) -> Outcome {
    let mut zip = zip::ZipWriter::new(std::fs::File::create(path)?);
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .unix_permissions(0o644);
    for (name, body) in files {
        zip.start_file(*name, opts).map_err(zip_error)?;
        zip.write_all(body)?;
    }
    zip.finish().map_err(zip_error)?;
    Ok(())
}

fn zip_error(e: zip::result::ZipError) -> super::narrate::Failure {
    super::narrate::Failure(format!("building a demo zip failed: {e}"))
}
