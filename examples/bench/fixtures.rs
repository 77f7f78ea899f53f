//! Test data for the benchmark: a deterministic PRNG, a many-file zip, random blobs, a
//! signed repository and device configs.

use evergreen::manifest::ArtifactKind;
use evergreen::publish::{ReleaseOptions, Repo};
use evergreen::trust::{KeySet, SecretKey};
use evergreen::Timestamp;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use zip::write::SimpleFileOptions;
use zip::CompressionMethod;

pub use super::rng::Rng;

/// The product every fixture is published for.
pub const PRODUCT: &str = "com.example.bench";
/// The target every fixture is published for.
pub const TARGET: &str = "x86_64-linux";

/// What [`build_zip`] made.
pub struct ZipInfo {
    pub files: u64,
    pub installed: u64,
    pub size: u64,
}

/// A zip of at least `target` bytes made of many files of mixed sizes (256 B to 640 KiB,
/// log-uniform): 2 in 5 incompressible and stored (like images or archives), the rest
/// text, deflated.
pub fn build_zip(path: &Path, target: u64, seed: u64) -> std::io::Result<ZipInfo> {
    let mut rng = Rng::new(seed);
    let mut zip = zip::ZipWriter::new(File::create(path)?);
    let (mut files, mut installed) = (0u64, 0u64);
    let mut buf = Vec::new();
    loop {
        if files % 32 == 0 && std::fs::metadata(path)?.len() >= target {
            break;
        }
        let len = (256.0 * 2f64.powf(rng.unit() * 11.32)) as usize;
        let stored = files % 5 < 2;
        let (method, ext) = if stored {
            buf.resize(len, 0);
            rng.fill(&mut buf);
            (CompressionMethod::Stored, "bin")
        } else {
            rng.text(len, &mut buf);
            (CompressionMethod::Deflated, "txt")
        };
        let name = format!("d{}/s{}/f{files}.{ext}", files % 61, files % 7);
        let opts = SimpleFileOptions::default()
            .compression_method(method)
            .compression_level((!stored).then_some(1))
            .unix_permissions(0o644);
        zip.start_file(name, opts).map_err(std::io::Error::other)?;
        zip.write_all(&buf)?;
        files += 1;
        installed += len as u64;
    }
    zip.finish().map_err(std::io::Error::other)?;
    let size = std::fs::metadata(path)?.len();
    Ok(ZipInfo {
        files,
        installed,
        size,
    })
}

/// A file of `len` random bytes, written in 1 MiB pieces.
pub fn random_file(path: &Path, len: u64, seed: u64) -> std::io::Result<()> {
    let mut rng = Rng::new(seed);
    let mut f = File::create(path)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        rng.fill(&mut buf[..n]);
        f.write_all(&buf[..n])?;
        left -= n as u64;
    }
    Ok(())
}

/// A signed repository, one channel per scenario, readable by a server that dropped
/// privileges.
pub struct Fixture {
    pub repo: Repo,
    pub key: SecretKey,
}

impl Fixture {
    pub fn new(base: &Path) -> evergreen::Result<Fixture> {
        let key = SecretKey::generate()?;
        let keys = KeySet::new(vec![key.public()], 1)?;
        let repo = Repo::init(
            base.join("repo"),
            PRODUCT,
            &keys,
            &keys,
            &[&key],
            30,
            Timestamp::now(),
        )?;
        Ok(Fixture { repo, key })
    }

    /// Publishes `version` of the given components on `channel` and opens the files to
    /// the server.
    pub fn publish(
        &self,
        channel: &str,
        version: &str,
        components: &[(&str, &Path, ArtifactKind)],
    ) -> evergreen::Result<()> {
        let version = version
            .parse()
            .map_err(|e| evergreen::Error::config(format!("bad version {version}: {e}")))?;
        let opts = ReleaseOptions::new(Timestamp::now());
        self.repo
            .release(channel, &version, TARGET, components, &opts, &[&self.key])?;
        open_to_all(self.repo.path());
        Ok(())
    }

    /// Writes the config of a fresh device following `channel` on `server` and returns
    /// its path. Its state and slots live under `dir`, on the same file system as the
    /// downloads.
    pub fn device(&self, dir: &Path, server: &str, channel: &str) -> PathBuf {
        let _ = std::fs::remove_dir_all(dir);
        let _ = std::fs::create_dir_all(dir);
        let config = serde_json::json!({
            "product": PRODUCT,
            "server": server,
            "channel": channel,
            "target": TARGET,
            "trust": {"keys": [self.key.public().to_base64()], "threshold": 1},
            "state_dir": dir.join("state"),
            "slots": {"kind": "dir", "root": dir.join("app")},
            "device_id": "bench-device",
            "limits": {"retries": 1},
        });
        let path = dir.join("config.json");
        let _ = std::fs::write(&path, config.to_string());
        path
    }
}

/// Makes every directory 0755 and every file 0644 under `root`, for nginx's workers.
pub fn open_to_all(root: &Path) {
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755));
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(path);
            } else {
                let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644));
            }
        }
    }
}
