//! The one configuration of Evergreen (DESIGN §7.1): the same JSON for the library, the C
//! ABI (`evg_updater_new`) and the CLI (`evergreen --config FILE`).
//!
//! Parsing is strict: unknown keys are errors (a misspelt `chanel` must not silently fall
//! back to `stable`), and [`Config::validate`] checks what serde cannot. Every error is of
//! kind `config` and names the field, what was expected and what was found.
//!
//! Besides the fields of DESIGN §7.1 the config has these extensions, all optional:
//! - `poll` — `{"interval_s": 21600, "jitter": 0.25}`: how often to check (DESIGN §5.3);
//! - `archive` — `{"allow_symlinks": false, "max_installed_bytes": 17179869184,
//!   "max_entries": 100000, "max_central_directory_bytes": 16777216, "max_ratio": 250}`:
//!   caps for zip extraction (DESIGN §5.5);
//! - `follow_redirects` — `false`: whether HTTP redirects are followed at all;
//! - `ca_roots` — `null`: a PEM bundle to trust for HTTPS instead of the system's CA bundle
//!   (`SSL_CERT_FILE`, else the distribution's usual file: `fetch::SYSTEM_ROOTS`) or, with
//!   the `webpki-roots` feature, Mozilla's roots built into the library;
//! - `proxy` — `null`: an `http://`, `https://`, `socks4://` or `socks5://` proxy URL for
//!   every request; `null` takes the environment's (`HTTPS_PROXY` for `https://` URLs,
//!   `HTTP_PROXY` for `http://` ones, else `ALL_PROXY`, else the other scheme's, with
//!   `NO_PROXY`: see [`FetchOptions::proxy`](crate::fetch::FetchOptions::proxy)).

use crate::error::{Error, ErrorKind, Result};
use crate::manifest::{is_channel_name, DEFAULT_MAX_METADATA_BYTES};
use crate::select::DeployPolicy;
use crate::trust::{KeySet, PublicKey};
use semver::Version;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::io::Read as _;
use std::path::{Path, PathBuf};

/// The channel used when the config names none.
pub const DEFAULT_CHANNEL: &str = "stable";

/// Where the device id comes from when the config has none.
pub const MACHINE_ID_PATH: &str = "/etc/machine-id";

/// A config file larger than this is refused before it is parsed.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// The updater's configuration (DESIGN §7.1).
///
/// Only `product`, `server`, `target`, `trust`, `state_dir` and `slots` are required.
///
/// ```
/// use evergreen::config::{Config, SlotsConfig, TrustConfig};
/// use evergreen::select::DeployPolicy;
/// let config = Config::from_json(r#"{
///   "product": "com.acme.gateway",
///   "server": "https://updates.acme.com/gateway/",
///   "mirrors": ["https://cdn.example.net/gateway/"],
///   "channel": "stable",
///   "target": "x86_64-linux",
///   "trust": {"root": "/etc/evergreen/root.json"},
///   "state_dir": "/var/lib/evergreen",
///   "slots": {"kind": "dir", "root": "/opt/gateway"},
///   "current_version": "1.0.0",
///   "device_id": null,
///   "deploy": {"policy": "immediate"},
///   "trial": {"tries": 3},
///   "allow_downgrade": false,
///   "pin_version": null,
///   "limits": {"max_metadata_bytes": 1048576, "connect_timeout_s": 10, "read_timeout_s": 30,
///              "min_speed_bytes_per_s": 1024, "retries": 3}
/// }"#)?;
/// assert_eq!(config.channel, "stable");
/// assert_eq!(config.trust, TrustConfig::Root("/etc/evergreen/root.json".into()));
/// assert_eq!(config.slots, SlotsConfig::Dir { root: "/opt/gateway".into() });
/// assert_eq!(config.current_version, Some(semver::Version::new(1, 0, 0)));
/// assert_eq!(config.deploy, DeployPolicy::Immediate);
/// # Ok::<(), evergreen::Error>(())
/// ```
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Product id, e.g. `com.acme.gateway`; must match the signed metadata.
    pub product: String,
    /// Repository base: `http(s)://`, `file://` or a plain directory path.
    pub server: String,
    /// Further repository bases with the same layout, tried after `server`.
    #[serde(default)]
    pub mirrors: Vec<String>,
    /// The channel to follow.
    #[serde(default = "default_channel")]
    pub channel: String,
    /// This device's compatibility target, e.g. `x86_64-linux`.
    pub target: String,
    /// Where trust starts.
    pub trust: TrustConfig,
    /// Where `state.json` and downloads live.
    pub state_dir: PathBuf,
    /// The two install locations.
    pub slots: SlotsConfig,
    /// The installed version, when it did not come through Evergreen.
    #[serde(default, deserialize_with = "current_version_text")]
    pub current_version: Option<Version>,
    /// The rollout identity; `None` reads [`MACHINE_ID_PATH`] when needed (not at parse).
    #[serde(default)]
    pub device_id: Option<String>,
    /// When an installed update is activated.
    #[serde(default)]
    pub deploy: DeployPolicy,
    /// Trial boots of a newly activated slot.
    #[serde(default)]
    pub trial: Trial,
    /// Follow a channel whose newest release is older than the installed one.
    #[serde(default)]
    pub allow_downgrade: bool,
    /// Install exactly this version, newer or older.
    #[serde(default, deserialize_with = "pin_version_text")]
    pub pin_version: Option<Version>,
    /// Network and size limits.
    #[serde(default)]
    pub limits: Limits,
    /// Polling interval and jitter (extension).
    #[serde(default)]
    pub poll: Poll,
    /// Zip extraction caps (extension).
    #[serde(default)]
    pub archive: ArchiveLimits,
    /// Follow HTTP redirects (extension); off, so the configured hosts are the only ones.
    #[serde(default)]
    pub follow_redirects: bool,
    /// A PEM file of CA certificates to trust for HTTPS instead of the system's bundle (or
    /// the built-in roots of the `webpki-roots` feature) (extension).
    #[serde(default)]
    pub ca_roots: Option<PathBuf>,
    /// A proxy URL for HTTP(S) (extension).
    #[serde(default)]
    pub proxy: Option<String>,
}

/// As derived, with the passwords of `server`, `mirrors` and `proxy` shown as `***`
/// (`fetch::without_passwords`): hosts log their config (`{:?}`), and a base's
/// password is in no log.
impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Every field named: a new one fails to build until it is shown here.
        let Config {
            product,
            server,
            mirrors,
            channel,
            target,
            trust,
            state_dir,
            slots,
            current_version,
            device_id,
            deploy,
            trial,
            allow_downgrade,
            pin_version,
            limits,
            poll,
            archive,
            follow_redirects,
            ca_roots,
            proxy,
        } = self;
        let hide = |url: &str| crate::fetch::without_passwords(url);
        f.debug_struct("Config")
            .field("product", product)
            .field("server", &hide(server))
            .field(
                "mirrors",
                &mirrors.iter().map(|m| hide(m)).collect::<Vec<_>>(),
            )
            .field("channel", channel)
            .field("target", target)
            .field("trust", trust)
            .field("state_dir", state_dir)
            .field("slots", slots)
            .field("current_version", current_version)
            .field("device_id", device_id)
            .field("deploy", deploy)
            .field("trial", trial)
            .field("allow_downgrade", allow_downgrade)
            .field("pin_version", pin_version)
            .field("limits", limits)
            .field("poll", poll)
            .field("archive", archive)
            .field("follow_redirects", follow_redirects)
            .field("ca_roots", ca_roots)
            .field("proxy", &proxy.as_deref().map(hide))
            .finish()
    }
}

/// A version field, refused in the words the CLI uses for a version argument rather than
/// semver's alone ("unexpected end of input while parsing minor version number" for `1.0`).
/// The message names the field itself, as `trust`'s does: serde_json reports an error of
/// the object's last key past its closing brace, where [`Config::from_json`] can no longer
/// tell which field it was.
fn semver_text<'de, D: serde::Deserializer<'de>>(
    d: D,
    field: &str,
) -> std::result::Result<Option<Version>, D::Error> {
    let Some(text) = Option::<String>::deserialize(d)? else {
        return Ok(None);
    };
    Version::parse(&text).map(Some).map_err(|e| {
        serde::de::Error::custom(format!(
            "`{field}`: expected a semver version like 1.2.3, found {text:?} ({e})"
        ))
    })
}

fn current_version_text<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<Version>, D::Error> {
    semver_text(d, "current_version")
}

fn pin_version_text<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<Version>, D::Error> {
    semver_text(d, "pin_version")
}

fn default_channel() -> String {
    DEFAULT_CHANNEL.to_string()
}

/// Where trust starts: a pinned root that can rotate, or fixed keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawTrust", into = "RawTrust")]
pub enum TrustConfig {
    /// `{"root": PATH}`: the initial root envelope, e.g. a copy of the repo's `root/1.json`,
    /// for `product`. The device keeps the newest root of its chain in
    /// `<state_dir>/root.json`; a configured root replaces it when newer. One no newer
    /// whose root keys the device never trusted is of another chain: refused (`config`)
    /// until it is copied over `root.json`, which moves the device to its chain (DESIGN
    /// §13, decision 29).
    Root(PathBuf),
    /// `{"keys": [...], "threshold": N}`: base64 ed25519 public keys that sign manifests
    /// directly, an implicit root that never rotates.
    Keys {
        /// Base64 public keys.
        keys: Vec<String>,
        /// How many distinct keys must sign.
        threshold: usize,
    },
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "an object with `root`, or with `keys` and `threshold`")]
struct RawTrust {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    root: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    keys: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    threshold: Option<usize>,
}

impl TryFrom<RawTrust> for TrustConfig {
    type Error = Error;
    fn try_from(raw: RawTrust) -> Result<TrustConfig> {
        match raw {
            RawTrust {
                root: Some(root),
                keys: None,
                threshold: None,
            } => Ok(TrustConfig::Root(root)),
            RawTrust {
                root: None,
                keys: Some(keys),
                threshold: Some(threshold),
            } => Ok(TrustConfig::Keys { keys, threshold }),
            RawTrust {
                root,
                keys,
                threshold,
            } => {
                let found: Vec<&str> = [
                    root.is_some().then_some("root"),
                    keys.is_some().then_some("keys"),
                    threshold.is_some().then_some("threshold"),
                ]
                .into_iter()
                .flatten()
                .collect();
                Err(Error::config(format!(
                    "`trust`: expected {{\"root\": PATH}} or {{\"keys\": [...], \"threshold\": N}}, found the keys [{}]",
                    found.join(", ")
                )))
            }
        }
    }
}

impl From<TrustConfig> for RawTrust {
    fn from(t: TrustConfig) -> RawTrust {
        match t {
            TrustConfig::Root(root) => RawTrust {
                root: Some(root),
                keys: None,
                threshold: None,
            },
            TrustConfig::Keys { keys, threshold } => RawTrust {
                root: None,
                keys: Some(keys),
                threshold: Some(threshold),
            },
        }
    }
}

impl TrustConfig {
    /// The manifest keys of simple mode (`None` for a root file, which the updater reads).
    pub fn key_set(&self) -> Result<Option<KeySet>> {
        let TrustConfig::Keys { keys, threshold } = self else {
            return Ok(None);
        };
        let keys = keys
            .iter()
            .enumerate()
            .map(|(i, k)| {
                PublicKey::from_base64(k).map_err(|e| {
                    Error::config(format!("config field `trust.keys[{i}]`: {}", e.message()))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        KeySet::new(keys, *threshold)
            .map(Some)
            .map_err(|e| Error::config(format!("config field `trust.threshold`: {}", e.message())))
    }
}

/// The two install locations (DESIGN §6).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", try_from = "SlotsFields")]
pub enum SlotsConfig {
    /// `{"kind": "dir", "root": PATH}`: `<root>/slots/{a,b}` and the `<root>/current` link.
    Dir {
        /// The application's directory.
        root: PathBuf,
    },
    /// `{"kind": "image", "a": PATH, "b": PATH, "selector": {...}}`: two block devices or
    /// files, and the bootloader that picks one.
    Image {
        /// Slot `a`'s device or file.
        a: PathBuf,
        /// Slot `b`'s device or file.
        b: PathBuf,
        /// The boot selector.
        selector: SelectorConfig,
        /// Where to read the booted slot when the selector cannot tell.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        booted_from: Option<BootedFrom>,
    },
}

/// The bootloader of image slots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", try_from = "SelectorFields")]
pub enum SelectorConfig {
    /// `{"kind": "grub", "env": PATH}`: the GRUB environment block.
    Grub {
        /// e.g. `/boot/grub/grubenv`.
        env: PathBuf,
    },
    /// `{"kind": "uboot", "config": PATH}`: the U-Boot environment as `fw_env.config` locates it.
    Uboot {
        /// e.g. `/etc/fw_env.config`.
        config: PathBuf,
    },
    /// `{"kind": "custom"}`: the host supplies the selector (a trait object or C callbacks).
    Custom {},
}

pub use crate::slots::cmdline::BootedFrom;

// The tagged enums above are read through flat structs of every kind's fields: serde reads
// an internally tagged enum by buffering the object first, and that machinery was 20 KB of
// a firmware build (the file-only library must stay under 1 MiB, DESIGN §12).

/// Every field any kind of `slots` has.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "an object with `kind` (\"dir\" or \"image\") and its fields")]
struct SlotsFields {
    kind: String,
    root: Option<PathBuf>,
    a: Option<PathBuf>,
    b: Option<PathBuf>,
    selector: Option<SelectorConfig>,
    booted_from: Option<BootedFrom>,
}

impl TryFrom<SlotsFields> for SlotsConfig {
    type Error = String;

    /// Each kind takes its fields; one that is left belongs to another kind.
    fn try_from(mut f: SlotsFields) -> std::result::Result<SlotsConfig, String> {
        let what = format!("slots of kind {:?}", f.kind);
        let slots = match f.kind.as_str() {
            "dir" => SlotsConfig::Dir {
                root: required(&what, "root", f.root.take())?,
            },
            "image" => SlotsConfig::Image {
                a: required(&what, "a", f.a.take())?,
                b: required(&what, "b", f.b.take())?,
                selector: required(&what, "selector", f.selector.take())?,
                booted_from: f.booted_from.take(),
            },
            other => {
                return Err(format!(
                    "slots: expected kind \"dir\" or \"image\", found {other:?}"
                ))
            }
        };
        no_field_left(
            &what,
            &[
                ("root", f.root.is_some()),
                ("a", f.a.is_some()),
                ("b", f.b.is_some()),
                ("selector", f.selector.is_some()),
                ("booted_from", f.booted_from.is_some()),
            ],
        )?;
        Ok(slots)
    }
}

/// Every field any kind of `selector` has.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "an object with `kind` (\"grub\", \"uboot\" or \"custom\") and its fields")]
struct SelectorFields {
    kind: String,
    env: Option<PathBuf>,
    config: Option<PathBuf>,
}

impl TryFrom<SelectorFields> for SelectorConfig {
    type Error = String;

    /// Each kind takes its fields; one that is left belongs to another kind.
    fn try_from(mut f: SelectorFields) -> std::result::Result<SelectorConfig, String> {
        let what = format!("selector of kind {:?}", f.kind);
        let selector = match f.kind.as_str() {
            "grub" => SelectorConfig::Grub {
                env: required(&what, "env", f.env.take())?,
            },
            "uboot" => SelectorConfig::Uboot {
                config: required(&what, "config", f.config.take())?,
            },
            "custom" => SelectorConfig::Custom {},
            other => {
                return Err(format!(
                    "selector: expected kind \"grub\", \"uboot\" or \"custom\", found {other:?}"
                ))
            }
        };
        let left = [("env", f.env.is_some()), ("config", f.config.is_some())];
        no_field_left(&what, &left)?;
        Ok(selector)
    }
}

/// `value` of the field `name` that `what` needs.
fn required<T>(what: &str, name: &str, value: Option<T>) -> std::result::Result<T, String> {
    value.ok_or_else(|| format!("{what}: expected the field `{name}`, found none"))
}

/// Refuses the first field still present (`fields`: name, present) once `what`'s kind has
/// taken its own: it belongs to another kind.
fn no_field_left(what: &str, fields: &[(&str, bool)]) -> std::result::Result<(), String> {
    match fields.iter().find(|(_, present)| *present) {
        Some((name, _)) => Err(format!(
            "{what}: expected no field `{name}` (it belongs to another kind), found one"
        )),
        None => Ok(()),
    }
}

/// Trial boots of a newly activated slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[serde(expecting = "an object such as {\"tries\": 3}")]
pub struct Trial {
    /// Unconfirmed starts before Evergreen rolls back (default 3).
    pub tries: u32,
}

impl Default for Trial {
    fn default() -> Trial {
        Trial { tries: 3 }
    }
}

/// Network and size limits (DESIGN §5.1, §5.4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[serde(expecting = "an object of limits")]
pub struct Limits {
    /// Cap on root and manifest documents, 1 to 1 GiB (default 1 MiB).
    pub max_metadata_bytes: u64,
    /// Connect timeout in seconds, 1 to 86400 (default 10): bounds the host name's lookup,
    /// then the connection's set-up.
    pub connect_timeout_s: u64,
    /// Idle-read timeout in seconds, 1 to 86400 (default 30).
    pub read_timeout_s: u64,
    /// Minimum average download speed; 0 turns the check off (default 1024).
    pub min_speed_bytes_per_s: u64,
    /// Retries per download, moving through the server and mirrors (default 3).
    pub retries: u32,
    /// Wait before the first retry in milliseconds, doubling each round, 0 to 60000
    /// (default 1000; each wait is at most [`crate::fetch::MAX_BACKOFF`] anyway). An
    /// extension of DESIGN §7.1.
    pub retry_backoff_ms: u64,
    /// Window, in seconds, over which the minimum speed is averaged; also the grace
    /// period before it is checked, 1 to 86400 (default 30). An extension of DESIGN §7.1.
    pub speed_window_s: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_metadata_bytes: DEFAULT_MAX_METADATA_BYTES,
            connect_timeout_s: 10,
            read_timeout_s: 30,
            min_speed_bytes_per_s: 1024,
            retries: 3,
            retry_backoff_ms: 1000,
            speed_window_s: 30,
        }
    }
}

/// How often to check (DESIGN §5.3; see [`crate::select::next_check`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[serde(expecting = "an object of poll settings")]
pub struct Poll {
    /// Seconds between checks (default 21600, six hours).
    pub interval_s: u64,
    /// Spread of each interval as a fraction in `[0, 1)` (default 0.25).
    pub jitter: f64,
}

impl Default for Poll {
    fn default() -> Poll {
        Poll {
            interval_s: 21_600,
            jitter: 0.25,
        }
    }
}

/// Caps for zip extraction (DESIGN §5.5), on top of each artifact's `installed_size`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[serde(expecting = "an object of archive limits")]
pub struct ArchiveLimits {
    /// Allow symlink entries that point inside their component (default false).
    pub allow_symlinks: bool,
    /// Bytes one archive may inflate to (default 16 GiB).
    pub max_installed_bytes: u64,
    /// Entries one archive may hold (default 100,000).
    pub max_entries: u64,
    /// Bytes of central directory one archive may have (default 16 MiB, at most
    /// [`MAX_CENTRAL_DIRECTORY_BYTES`]): the zip reader holds it in memory, and an install
    /// peaks at three to six times its size.
    pub max_central_directory_bytes: u64,
    /// Inflated / compressed size, per entry and for the whole archive (default 250;
    /// deflate's own limit is ~1032). Outputs up to 64 KiB are exempt.
    pub max_ratio: u64,
}

/// The most `archive.max_central_directory_bytes` may be (256 MiB): the zip reader holds
/// a central directory in memory three to five times over, so no device reads a larger
/// one, and a publisher refuses an archive with one as every device would.
pub const MAX_CENTRAL_DIRECTORY_BYTES: u64 = 256 << 20;

/// The defaults of [`crate::stage::ArchiveLimits`]: one set of numbers.
impl Default for ArchiveLimits {
    fn default() -> ArchiveLimits {
        let d = crate::stage::ArchiveLimits::default();
        ArchiveLimits {
            allow_symlinks: d.allow_symlinks,
            max_installed_bytes: d.max_installed_bytes,
            max_entries: d.max_entries,
            max_central_directory_bytes: d.max_central_directory_bytes,
            max_ratio: d.max_ratio,
        }
    }
}

impl Config {
    /// The fetch settings these limits and network options make.
    pub fn fetch_options(&self) -> crate::fetch::FetchOptions {
        use std::time::Duration;
        crate::fetch::FetchOptions {
            connect_timeout: Duration::from_secs(self.limits.connect_timeout_s),
            read_timeout: Duration::from_secs(self.limits.read_timeout_s),
            min_speed_bytes_per_s: self.limits.min_speed_bytes_per_s,
            speed_window: Duration::from_secs(self.limits.speed_window_s),
            retries: self.limits.retries,
            retry_backoff: Duration::from_millis(self.limits.retry_backoff_ms),
            follow_redirects: self.follow_redirects,
            ca_roots: self.ca_roots.clone(),
            proxy: self.proxy.clone(),
        }
    }

    /// The archive limits staging applies.
    pub fn archive_limits(&self) -> crate::stage::ArchiveLimits {
        crate::stage::ArchiveLimits {
            max_installed_bytes: self.archive.max_installed_bytes,
            max_entries: self.archive.max_entries,
            max_central_directory_bytes: self.archive.max_central_directory_bytes,
            max_ratio: self.archive.max_ratio,
            allow_symlinks: self.archive.allow_symlinks,
        }
    }

    /// Parses and validates a JSON config.
    pub fn from_json(json: &str) -> Result<Config> {
        if let Some(found) = crate::json::not_an_object(json) {
            return Err(Error::config(format!(
                "config: expected a JSON object (`{{`), found {found}"
            )));
        }
        let config: Config = serde_json::from_str(json).map_err(|e| {
            let what = match crate::json::field_of(json, &e) {
                // A message that names its field itself (`trust`'s, a version's) once.
                Some(field) => {
                    let text = e.to_string();
                    let own = format!("`{field}`: ");
                    let rest = text.strip_prefix(&own).unwrap_or(&text);
                    format!("config field `{field}`: {rest}")
                }
                None => format!("config: {e}"),
            };
            Error::config(what).with_source(e)
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Reads, parses and validates a JSON config file (at most [`MAX_CONFIG_BYTES`]).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Config> {
        let path = path.as_ref();
        let file = std::fs::File::open(path).map_err(|e| Error::io("open config", path, e))?;
        // A directory (`--config /etc/evergreen`, the file name left off) is a config that
        // names the wrong thing, not a failing file system.
        if file.metadata().is_ok_and(|m| m.is_dir()) {
            return Err(Error::config(format!(
                "config {}: expected a JSON file, found a directory",
                path.display()
            )));
        }
        let mut bytes = Vec::new();
        file.take(MAX_CONFIG_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| Error::io("read config", path, e))?;
        if bytes.len() as u64 > MAX_CONFIG_BYTES {
            return Err(Error::config(format!(
                "config {}: expected at most {MAX_CONFIG_BYTES} bytes, found more",
                path.display()
            )));
        }
        // Read whole, then judged: bytes that are not UTF-8 are the config's fault, not
        // the file system's (`io`).
        let text = String::from_utf8(bytes).map_err(|e| {
            let at = e.utf8_error().valid_up_to();
            Error::config(format!(
                "config {}: expected JSON text in UTF-8, found byte 0x{:02x} at offset {at}",
                path.display(),
                e.as_bytes()[at]
            ))
        })?;
        Config::from_json(&text).map_err(|e| e.context(path.display()))
    }

    /// Checks what the types cannot; every error names the field.
    pub fn validate(&self) -> Result<()> {
        ensure(
            is_word(&self.product),
            "product",
            NON_EMPTY_WORD,
            &self.product,
        )?;
        ensure(
            is_word(&self.target),
            "target",
            NON_EMPTY_WORD,
            &self.target,
        )?;
        ensure(
            is_channel_name(&self.channel),
            "channel",
            "a channel name of ASCII letters, digits, '.', '_' and '-'",
            &self.channel,
        )?;
        check_location("server", &self.server)?;
        for (i, mirror) in self.mirrors.iter().enumerate() {
            check_location(&format!("mirrors[{i}]"), mirror)?;
        }
        self.check_trust()?;
        check_path("state_dir", &self.state_dir)?;
        self.slots.validate()?;
        self.check_state_dir_outside_slots()?;
        if let Some(id) = &self.device_id {
            ensure(is_word(id), "device_id", NON_EMPTY_WORD, id)?;
        }
        ensure(
            self.trial.tries >= 1,
            "trial.tries",
            "at least 1",
            self.trial.tries,
        )?;
        // U-Boot's `setexpr` counts `BOOT_X_LEFT` down in hexadecimal, and RAUC's boot
        // script compares it with `test ${BOOT_A_LEFT} -gt 0`, in decimal: they agree up
        // to 9 only. Ten tries written as `a` read as none, every slot would look spent,
        // and the script would reset both to 3.
        let uboot = matches!(
            self.slots,
            SlotsConfig::Image {
                selector: SelectorConfig::Uboot { .. },
                ..
            }
        );
        ensure(
            !uboot || self.trial.tries <= 9,
            "trial.tries",
            "1 to 9 with the U-Boot selector (its counters are hexadecimal to `setexpr` and decimal to RAUC's `test -gt`, which agree up to 9)",
            self.trial.tries,
        )?;
        self.limits.validate()?;
        self.poll.validate()?;
        self.archive.validate()?;
        if let Some(ca) = &self.ca_roots {
            check_path("ca_roots", ca)?;
        }
        if let Some(proxy) = &self.proxy {
            check_proxy(proxy)?;
        }
        Ok(())
    }

    /// The state must outlive every install: inside a slot it would be replaced with the
    /// slot (or read through `current` from the other slot after a switch), and with it the
    /// trial, the security floor and the sequences seen.
    fn check_state_dir_outside_slots(&self) -> Result<()> {
        let SlotsConfig::Dir { root } = &self.slots else {
            return Ok(());
        };
        let state = lexically_normal(&self.state_dir);
        let root = lexically_normal(root);
        let inside = ["slots", "current"]
            .iter()
            .any(|name| state.starts_with(root.join(name)));
        ensure(
            !inside,
            "state_dir",
            "a directory outside the slots (not under slots.root's `slots` or `current`)",
            &self.state_dir,
        )
    }

    fn check_trust(&self) -> Result<()> {
        match &self.trust {
            TrustConfig::Root(root) => check_path("trust.root", root),
            TrustConfig::Keys { .. } => self.trust.key_set().map(drop),
        }
    }
}

/// Reads a machine id file such as `/etc/machine-id` (trimmed). An empty file or systemd's
/// `uninitialized` placeholder is an error, since every such device would share one bucket.
pub fn read_machine_id(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io("read device id", path, e))?;
    usable_machine_id(&text).ok_or_else(|| {
        Error::config(format!(
            "config field `device_id` is null and {}: expected a machine id, found {:?}; set device_id in the config",
            path.display(),
            text.trim()
        ))
    })
}

/// The machine id in `text` (trimmed), unless it is empty or `uninitialized`, as
/// [`read_machine_id`] takes it.
pub(crate) fn usable_machine_id(text: &str) -> Option<String> {
    let id = text.trim();
    (!id.is_empty() && id != "uninitialized").then(|| id.to_string())
}

impl SlotsConfig {
    fn validate(&self) -> Result<()> {
        match self {
            SlotsConfig::Dir { root } => check_path("slots.root", root),
            SlotsConfig::Image {
                a,
                b,
                selector,
                booted_from,
            } => {
                check_path("slots.a", a)?;
                check_path("slots.b", b)?;
                ensure(a != b, "slots.b", "a different device than slots.a", b)?;
                selector.validate()?;
                // A custom selector is the host's code, which knows the booted slot itself:
                // `booted_from` would be silently ignored. Shown as the config writes it.
                if let (Some(b), SelectorConfig::Custom {}) = (booted_from, selector) {
                    return Err(refused(
                        "slots.booted_from",
                        "no booted_from with a custom selector (the host's selector reports the booted slot)",
                        &format_args!(r#"{{"cmdline": {:?}, "key": {:?}}}"#, b.cmdline, b.key),
                    ));
                }
                booted_from.as_ref().map_or(Ok(()), validate_booted_from)
            }
        }
    }
}

impl SelectorConfig {
    fn validate(&self) -> Result<()> {
        match self {
            SelectorConfig::Grub { env } => check_path("slots.selector.env", env),
            SelectorConfig::Uboot { config } => check_path("slots.selector.config", config),
            SelectorConfig::Custom {} => Ok(()),
        }
    }
}

fn validate_booted_from(b: &BootedFrom) -> Result<()> {
    check_path("slots.booted_from.cmdline", &b.cmdline)?;
    ensure(
        is_word(&b.key) && !b.key.contains(['=', '"']),
        "slots.booted_from.key",
        "a kernel parameter name (no spaces, `=` or quotes)",
        &b.key,
    )
}

impl Limits {
    /// Every bound is finite: a timeout of `u64::MAX` seconds overflows the deadline
    /// arithmetic (ours and the HTTP stack's) on the first request, so a value past
    /// any sensible setting is refused here rather than panicking in every check.
    fn validate(&self) -> Result<()> {
        ensure_in(
            "limits.max_metadata_bytes",
            self.max_metadata_bytes,
            1..=MAX_METADATA_BYTES_LIMIT,
            "1 to 1073741824 (1 GiB; each document is read whole into memory)",
        )?;
        ensure_in(
            "limits.connect_timeout_s",
            self.connect_timeout_s,
            1..=MAX_LIMIT_S,
            SECONDS_UP_TO_A_DAY,
        )?;
        ensure_in(
            "limits.read_timeout_s",
            self.read_timeout_s,
            1..=MAX_LIMIT_S,
            SECONDS_UP_TO_A_DAY,
        )?;
        ensure_in(
            "limits.retry_backoff_ms",
            self.retry_backoff_ms,
            0..=MAX_BACKOFF_MS,
            "0 to 60000 (each wait between retry rounds is at most a minute)",
        )?;
        // 0 would turn the slow-retrieval defence off; `min_speed_bytes_per_s: 0` is the
        // one way to do that.
        ensure_in(
            "limits.speed_window_s",
            self.speed_window_s,
            1..=MAX_LIMIT_S,
            SECONDS_UP_TO_A_DAY,
        )
    }
}

/// The longest connect timeout, read timeout and speed window: a day. Longer than any
/// server or network worth waiting for; a device that waits longer waits forever.
const MAX_LIMIT_S: u64 = 86_400;

const SECONDS_UP_TO_A_DAY: &str = "1 to 86400 (a day)";

/// The largest `limits.max_metadata_bytes`: 1 GiB, a thousand times the default; the
/// body deadline of a document this size at 1 byte/s still fits every clock.
const MAX_METADATA_BYTES_LIMIT: u64 = 1 << 30;

/// The largest `limits.retry_backoff_ms`: a longer first wait would be cut to
/// [`crate::fetch::MAX_BACKOFF`] without a word.
const MAX_BACKOFF_MS: u64 = crate::fetch::MAX_BACKOFF.as_millis() as u64;

/// [`ensure`] that `value` of `field` lies in `range`, `expected` in words.
fn ensure_in(
    field: &str,
    value: u64,
    range: std::ops::RangeInclusive<u64>,
    expected: &str,
) -> Result<()> {
    ensure(range.contains(&value), field, expected, value)
}

impl Poll {
    fn validate(&self) -> Result<()> {
        ensure(
            (1..=MAX_POLL_INTERVAL_S).contains(&self.interval_s),
            "poll.interval_s",
            "1 to 31536000 (a year)",
            self.interval_s,
        )?;
        ensure(
            (0.0..1.0).contains(&self.jitter),
            "poll.jitter",
            "a fraction in [0, 1)",
            crate::json::number(self.jitter),
        )
    }
}

impl ArchiveLimits {
    fn validate(&self) -> Result<()> {
        let fields = [
            ("archive.max_installed_bytes", self.max_installed_bytes),
            ("archive.max_entries", self.max_entries),
            ("archive.max_ratio", self.max_ratio),
        ];
        for (field, value) in fields {
            ensure(value >= 1, field, "at least 1", value)?;
        }
        let directory = self.max_central_directory_bytes;
        ensure(
            (1..=MAX_CENTRAL_DIRECTORY_BYTES).contains(&directory),
            "archive.max_central_directory_bytes",
            "1 to 268435456 (256 MiB)",
            directory,
        )
    }
}

const NON_EMPTY_WORD: &str = "a non-empty string without spaces or control characters";

fn is_word(s: &str) -> bool {
    !s.is_empty() && !s.chars().any(|c| c.is_whitespace() || c.is_control())
}

fn ensure(ok: bool, field: &str, expected: &str, found: impl fmt::Debug) -> Result<()> {
    match ok {
        true => Ok(()),
        false => Err(refused(field, expected, &found)),
    }
}

/// The error of [`ensure`]; `&dyn`, so that one copy formats the message for every type
/// of field (a generic made seven, in a library linked into firmware).
fn refused(field: &str, expected: &str, found: &dyn fmt::Debug) -> Error {
    Error::new(
        ErrorKind::Config,
        format!("config field `{field}`: expected {expected}, found {found:?}"),
    )
}

/// The longest polling interval: a year (with backoff and jitter, the next check stays
/// within the times `status` can print and read back).
const MAX_POLL_INTERVAL_S: u64 = 365 * 86_400;

/// Paths must be absolute: a relative one would resolve against the working directory of
/// each process, so a service (started in `/`) and a shell would keep two states.
fn check_path(field: &str, path: &Path) -> Result<()> {
    ensure(path.is_absolute(), field, "an absolute path", path)?;
    no_nul(field, path.as_os_str().as_encoded_bytes(), path)
}

/// No path the system calls take holds a NUL: one in the config would fail only later,
/// as `io` on the first write or `network` (retried) on the first fetch, or never.
fn no_nul(field: &str, bytes: &[u8], found: impl fmt::Debug) -> Result<()> {
    ensure(!bytes.contains(&0), field, "no NUL byte", found)
}

/// `path` with `.` and `..` resolved by name (no file system access; `path` is absolute).
fn lexically_normal(path: &Path) -> std::path::PathBuf {
    use std::path::Component;
    let mut out = std::path::PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// `server` and `mirrors`: a well-formed http(s):// URL with a host (one the HTTP stack
/// would refuse on every request fails here, not as a retried `network` error), a
/// file:// URL of an absolute path (host empty or `localhost`), or a plain path. A URL is checked by the rule the
/// fetcher opens it with, so nothing accepted here reaches it as a relative path.
fn check_location(field: &str, s: &str) -> Result<()> {
    const EXPECTED: &str = "an http://, https:// or file:// URL (of an absolute path, \
                            host empty or localhost; no query or fragment, since the \
                            repository's paths are appended) or an absolute directory path";
    no_nul(field, s.as_bytes(), s)?;
    let ok = match s.split_once("://") {
        Some((scheme, _)) => match scheme.to_ascii_lowercase().as_str() {
            "http" | "https" | "file" => {
                crate::fetch::is_absolute_url(s) && !crate::fetch::has_query_or_fragment(s)
            }
            _ => false,
        },
        // Absolute, as every path of the config (a relative one follows the working
        // directory of each process).
        None => Path::new(s).is_absolute(),
    };
    ensure(ok, field, EXPECTED, crate::fetch::without_passwords(s))
}

fn check_proxy(proxy: &str) -> Result<()> {
    let ok = proxy.split_once("://").is_some_and(|(scheme, rest)| {
        matches!(
            scheme.to_ascii_lowercase().as_str(),
            "http" | "https" | "socks4" | "socks4a" | "socks5"
        ) && !rest.is_empty()
    });
    let found = crate::fetch::proxy_without_password(proxy);
    ensure(
        ok,
        "proxy",
        "an http://, https://, socks4:// or socks5:// URL",
        found,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn minimal() -> Value {
        json!({
            "product": "com.acme.gateway",
            "server": "https://updates.acme.com/gateway/",
            "target": "x86_64-linux",
            "trust": {"root": "/etc/evergreen/root.json"},
            "state_dir": "/var/lib/evergreen",
            "slots": {"kind": "dir", "root": "/opt/gateway"}
        })
    }

    fn parse(v: &Value) -> Result<Config> {
        Config::from_json(&v.to_string())
    }

    /// Only an object is a config: serde would read an array of the fields' values in
    /// order, and a byte order mark was "expected value at line 1 column 1".
    #[test]
    fn a_config_is_an_object_and_a_byte_order_mark_is_named() {
        let text = minimal().to_string();
        assert!(Config::from_json(&format!(" \n{text}")).is_ok());
        let fields: Vec<Value> = minimal().as_object().unwrap().values().cloned().collect();
        for (json, found) in [
            (
                format!("\u{feff}{text}"),
                "a UTF-8 byte order mark (U+FEFF); save the file without it",
            ),
            (Value::from(fields).to_string(), "an array (`[`)"),
            ("  ".into(), "no text"),
        ] {
            let err = Config::from_json(&json).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Config);
            assert_eq!(
                err.message(),
                format!("config: expected a JSON object (`{{`), found {found}")
            );
        }
    }

    /// A field of the wrong JSON type says what the field takes in the config's words, not
    /// the name of a Rust type ("expected struct RawTrust"); a semver field says what a
    /// version looks like.
    #[test]
    fn a_field_of_the_wrong_type_says_what_it_takes() {
        let image = json!({"kind": "image", "a": "/dev/x", "b": "/dev/y",
            "selector": {"kind": "grub", "env": "/e"}});
        let window = json!({"policy": "window", "window": {"start": "01:00", "end": "02:00"}});
        for (path, value, expected) in [
            ("trust", json!("/r"), "`trust`: invalid type: string \"/r\", expected an object with `root`, or with `keys` and `threshold`"),
            ("slots", json!("dir"), "`slots`: invalid type: string \"dir\", expected an object with `kind` (\"dir\" or \"image\") and its fields"),
            ("deploy", json!("immediate"), "`deploy`: invalid type: string \"immediate\", expected an object with `policy`"),
            ("trial", json!(3), "`trial`: invalid type: integer `3`, expected an object such as {\"tries\": 3}"),
            ("limits", json!("x"), "`limits`: invalid type: string \"x\", expected an object of limits"),
            ("poll", json!(true), "`poll`: invalid type: boolean `true`, expected an object of poll settings"),
            ("archive", json!(1), "`archive`: invalid type: integer `1`, expected an object of archive limits"),
            ("current_version", json!("1.0"), "`current_version`: expected a semver version like 1.2.3, found \"1.0\" (unexpected end of input while parsing minor version number)"),
            ("pin_version", json!("v1.0.0"), "`pin_version`: expected a semver version like 1.2.3, found \"v1.0.0\""),
        ] {
            let err = parse(&with(path, Some(value))).unwrap_err();
            assert!(err.message().contains(expected), "{path}: {err}");
        }
        let mut v = minimal();
        v["slots"] = image.clone();
        v["slots"]["selector"] = json!("grub");
        let err = parse(&v).unwrap_err();
        assert!(err.message().contains("`slots.selector`: invalid type: string \"grub\", expected an object with `kind` (\"grub\", \"uboot\" or \"custom\") and its fields"), "{err}");
        v["slots"] = image;
        v["slots"]["booted_from"] = json!("rauc.slot");
        let err = parse(&v).unwrap_err();
        assert!(err.message().contains("`slots.booted_from`: invalid type: string \"rauc.slot\", expected an object with `cmdline` and `key`"), "{err}");
        let mut v = minimal();
        v["deploy"] = window;
        v["deploy"]["window"] = json!("nightly");
        let err = parse(&v).unwrap_err();
        assert!(err.message().contains("`deploy.window`: invalid type: string \"nightly\", expected an object with `start` and `end`"), "{err}");
        v["deploy"] = json!({"policy": "immediate", "at": "2026-01-01T00:00:00Z"});
        let err = parse(&v).unwrap_err();
        assert!(
            err.message()
                .contains("expected no \"at\" with policy \"immediate\", found one"),
            "{err}"
        );
    }

    /// With U-Boot, `trial.tries` is at most 9: above, RAUC's boot script reads the
    /// counter `setexpr` writes as no tries left. Other selectors take more.
    #[test]
    fn uboot_takes_at_most_nine_tries() {
        let uboot = json!({"kind": "image", "a": "/dev/x", "b": "/dev/y",
            "selector": {"kind": "uboot", "config": "/etc/fw_env.config"}});
        let mut v = with("slots", Some(uboot));
        v["trial"] = json!({"tries": 9});
        assert_eq!(parse(&v).unwrap().trial.tries, 9);
        v["trial"] = json!({"tries": 10});
        let err = parse(&v).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(
            err.message()
                .contains("`trial.tries`: expected 1 to 9 with the U-Boot selector"),
            "{err}"
        );
        assert!(err.message().ends_with("found 10"), "{err}");
        let mut v = minimal();
        v["trial"] = json!({"tries": 10});
        assert_eq!(parse(&v).unwrap().trial.tries, 10);
    }

    /// `booted_from` beside a custom selector is refused showing what the config holds,
    /// as JSON: the error is read by people editing that JSON (the CLI's `error[config]`
    /// line, `evg_last_error_message`), not a Rust `Some(BootedFrom { .. })`.
    #[test]
    fn booted_from_with_a_custom_selector_is_shown_as_the_config_writes_it() {
        let slots = json!({"kind": "image", "a": "/dev/x", "b": "/dev/y",
            "selector": {"kind": "custom"},
            "booted_from": {"cmdline": "/proc/cmdline", "key": "rauc.slot"}});
        let err = parse(&with("slots", Some(slots))).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(
            err.message()
                .ends_with(r#"found {"cmdline": "/proc/cmdline", "key": "rauc.slot"}"#),
            "{err}"
        );
    }

    /// A config file that is not UTF-8 was read: it is the config's fault (`config`,
    /// naming the byte and where), not the file system's (`io`).
    #[test]
    fn a_config_file_that_is_not_utf8_is_config() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.json");
        std::fs::write(&path, b"{\"product\": \"caf\xe9\"}").unwrap();
        let err = Config::from_file(&path).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config, "{err}");
        assert!(
            err.message()
                .ends_with("bad.json: expected JSON text in UTF-8, found byte 0xe9 at offset 16"),
            "{err}"
        );
    }

    /// `minimal()` with `value` at the slash-separated `path` (objects made on the way),
    /// or with the key removed when `value` is `None`.
    fn with(path: &str, value: Option<Value>) -> Value {
        let mut root = minimal();
        let mut parts: Vec<&str> = path.split('/').collect();
        let last = parts.pop().unwrap_or_default();
        let mut node = &mut root;
        for p in parts {
            node = node
                .as_object_mut()
                .expect("test paths go through objects")
                .entry(p)
                .or_insert_with(|| json!({}));
        }
        let obj = node.as_object_mut().expect("test paths end in an object");
        match value {
            Some(v) => obj.insert(last.to_string(), v),
            None => obj.remove(last),
        };
        root
    }

    fn key() -> String {
        crate::trust::SecretKey::from_seed(&[7; 32])
            .public()
            .to_base64()
    }

    /// The cap on an archive's central directory is read into the limits staging applies,
    /// up to the most any device may set, which a publisher checks against.
    #[test]
    fn archive_max_central_directory_bytes_is_read_up_to_its_ceiling() {
        let c = parse(&with(
            "archive/max_central_directory_bytes",
            Some(json!(MAX_CENTRAL_DIRECTORY_BYTES)),
        ))
        .unwrap();
        assert_eq!(
            c.archive_limits().max_central_directory_bytes,
            MAX_CENTRAL_DIRECTORY_BYTES
        );
        let c = parse(&with(
            "archive/max_central_directory_bytes",
            Some(json!(4096)),
        ))
        .unwrap();
        assert_eq!(c.archive_limits().max_central_directory_bytes, 4096);
        assert_eq!(
            parse(&minimal())
                .unwrap()
                .archive_limits()
                .max_central_directory_bytes,
            crate::stage::ArchiveLimits::default().max_central_directory_bytes
        );
    }

    #[test]
    fn minimal_config_gets_the_defaults() {
        let c = parse(&minimal()).unwrap();
        assert_eq!(c.channel, "stable");
        assert!(c.mirrors.is_empty());
        assert_eq!(c.current_version, None);
        assert_eq!(c.device_id, None);
        assert_eq!(c.deploy, DeployPolicy::Immediate);
        assert_eq!(c.trial.tries, 3);
        assert!(!c.allow_downgrade);
        assert_eq!(c.pin_version, None);
        assert_eq!(
            c.limits,
            Limits {
                max_metadata_bytes: 1 << 20,
                connect_timeout_s: 10,
                read_timeout_s: 30,
                min_speed_bytes_per_s: 1024,
                retries: 3,
                retry_backoff_ms: 1000,
                speed_window_s: 30,
            }
        );
        assert_eq!(
            c.poll,
            Poll {
                interval_s: 21_600,
                jitter: 0.25
            }
        );
        assert!(!c.archive.allow_symlinks);
        assert_eq!(c.archive.max_central_directory_bytes, 16 << 20);
        assert!(!c.follow_redirects);
        assert_eq!((c.ca_roots, c.proxy), (None, None));
    }

    /// The caps themselves are accepted, and with all of them at once (and the slowest
    /// speed) every deadline the fetcher computes from them still fits.
    #[test]
    fn limits_at_their_caps_are_accepted() {
        let mut v = minimal();
        v["limits"] = json!({"max_metadata_bytes": 1u64 << 30, "connect_timeout_s": 86_400,
            "read_timeout_s": 86_400, "speed_window_s": 86_400, "retry_backoff_ms": 60_000,
            "min_speed_bytes_per_s": 1});
        let c = parse(&v).unwrap();
        let fetcher = crate::fetch::Fetcher::new(vec!["/srv".into()], c.fetch_options()).unwrap();
        let longest = fetcher.body_timeout(c.limits.max_metadata_bytes);
        assert_eq!(longest.map(|d| d.as_secs()), Some((1 << 30) + 2 * 86_400));
        v["limits"]["retry_backoff_ms"] = json!(0);
        assert!(parse(&v).is_ok());
    }

    #[test]
    fn partial_sections_keep_their_other_defaults() {
        let c = parse(&with("limits/retries", Some(json!(7)))).unwrap();
        assert_eq!(c.limits.retries, 7);
        assert_eq!(c.limits.read_timeout_s, 30);
    }

    #[test]
    fn firmware_slots_and_simple_trust_parse() {
        let mut v = with(
            "slots",
            Some(
                json!({"kind": "image", "a": "/dev/mmcblk0p2", "b": "/dev/mmcblk0p3",
                "selector": {"kind": "uboot", "config": "/etc/fw_env.config"},
                "booted_from": {"cmdline": "/proc/cmdline", "key": "rauc.slot"}}),
            ),
        );
        v["trust"] = json!({"keys": [key()], "threshold": 1});
        v["deploy"] = json!({"policy": "at", "at": "2026-12-01T02:00:00Z"});
        let c = parse(&v).unwrap();
        assert!(matches!(
            c.slots,
            SlotsConfig::Image {
                selector: SelectorConfig::Uboot { .. },
                booted_from: Some(_),
                ..
            }
        ));
        assert_eq!(c.trust.key_set().unwrap().unwrap().threshold(), 1);
        v["slots"]["selector"] = json!({"kind": "grub", "env": "/boot/grub/grubenv"});
        assert!(parse(&v).is_ok(), "{}", v["slots"]);
        v["slots"]["selector"] = json!({"kind": "custom"});
        v["slots"].as_object_mut().unwrap().remove("booted_from");
        assert!(parse(&v).is_ok(), "{}", v["slots"]);
    }

    /// The fuzz target's seeds must be valid configs, or it stops at the parse and never
    /// reaches the round trip it checks.
    #[test]
    fn the_fuzz_seeds_are_valid_configs() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/config_json");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            if let Err(e) = Config::from_json(&text) {
                panic!("{}: {e}", path.display());
            }
            seen += 1;
        }
        assert!(seen >= 4, "{seen} seeds in {}", dir.display());
    }

    #[test]
    fn a_config_round_trips_through_json() {
        let mut v = minimal();
        v["trust"] = json!({"keys": [key()], "threshold": 1});
        v["deploy"] = json!({"policy": "window",
            "window": {"days": ["sat"], "start": "02:00", "end": "04:00", "utc_offset": "+01:00"}});
        v["pin_version"] = json!("1.2.3-rc.1");
        let c = parse(&v).unwrap();
        let again = Config::from_json(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(again, c);
    }

    #[test]
    fn each_bad_value_is_a_config_error_naming_the_field() {
        let rows: Vec<(&str, Option<Value>, &str)> = vec![
            ("product", None, "`product`"),
            ("product", Some(json!("")), "`product`"),
            ("target", Some(json!("x86 linux")), "`target`"),
            ("chanel", Some(json!("beta")), "`chanel`"),
            ("channel", Some(json!("../stable")), "`channel`"),
            ("server", Some(json!("ftp://updates.acme.com/")), "`server`"),
            ("server", Some(json!("https:///gateway")), "`server`"),
            ("server", Some(json!("")), "`server`"),
            ("server", Some(json!("repo")), "`server`"),
            ("server", Some(json!("http://exa mple/repo/")), "`server`"),
            (
                "server",
                Some(json!("https://updates.acme.com/repo/?token=abc")),
                "`server`: expected an http://, https:// or file:// URL",
            ),
            (
                "mirrors",
                Some(json!(["https://cdn.acme.com/repo#x"])),
                "`mirrors[0]`: expected an http://, https:// or file:// URL",
            ),
            (
                "server",
                Some(json!("/srv/re\u{0}po")),
                "`server`: expected no NUL byte",
            ),
            (
                "server",
                Some(json!("file:///srv/re\u{0}po")),
                "`server`: expected no NUL byte",
            ),
            (
                "mirrors",
                Some(json!(["/srv/a", "/srv/\u{0}b"])),
                "`mirrors[1]`: expected no NUL byte",
            ),
            (
                "state_dir",
                Some(json!("/var/lib/st\u{0}ate")),
                "`state_dir`: expected no NUL byte",
            ),
            (
                "slots",
                Some(json!({"kind": "dir", "root": "/opt/a\u{0}pp"})),
                "`slots.root`: expected no NUL byte",
            ),
            (
                "slots",
                Some(json!({"kind": "image", "a": "/dev/x\u{0}", "b": "/dev/y",
                "selector": {"kind": "custom"}})),
                "`slots.a`: expected no NUL byte",
            ),
            (
                "slots",
                Some(json!({"kind": "image", "a": "/dev/x", "b": "/dev/y",
                "selector": {"kind": "grub", "env": "/boot/grub\u{0}env"}})),
                "`slots.selector.env`: expected no NUL byte",
            ),
            (
                "trust",
                Some(json!({"root": "/etc/root\u{0}.json"})),
                "`trust.root`: expected no NUL byte",
            ),
            (
                "ca_roots",
                Some(json!("/etc/ca\u{0}.pem")),
                "`ca_roots`: expected no NUL byte",
            ),
            ("server", Some(json!("https://[::1/repo/")), "`server`"),
            ("server", Some(json!("https://h:65536/repo/")), "`server`"),
            (
                "mirrors",
                Some(json!(["https://a/", "http://b/re po/"])),
                "`mirrors[1]`",
            ),
            ("mirrors", Some(json!(["./repo"])), "`mirrors[0]`"),
            (
                "mirrors",
                Some(json!(["https://a/", "gopher://b/"])),
                "`mirrors[1]`",
            ),
            ("trust", Some(json!({})), "`trust`: expected"),
            (
                "trust",
                Some(json!({"root": "/r.json", "threshold": 1})),
                "`trust`",
            ),
            ("trust", Some(json!({"root": ""})), "`trust.root`"),
            (
                "trust",
                Some(json!({"keys": [], "threshold": 1})),
                "`trust.threshold`",
            ),
            (
                "trust",
                Some(json!({"keys": [key()], "threshold": 0})),
                "`trust.threshold`",
            ),
            (
                "trust",
                Some(json!({"keys": [key(), key()], "threshold": 2})),
                "`trust.threshold`",
            ),
            (
                "trust",
                Some(json!({"keys": ["bm90IGEga2V5"], "threshold": 1})),
                "`trust.keys[0]`",
            ),
            ("state_dir", Some(json!("")), "`state_dir`"),
            ("slots", Some(json!({"kind": "floppy"})), "floppy"),
            (
                "slots",
                Some(json!({"kind": "dir"})),
                "expected the field `root`",
            ),
            (
                "slots",
                Some(json!({"kind": "dir", "root": "/x", "a": "/dev/x"})),
                "expected no field `a`",
            ),
            ("slots", Some(json!({"root": "/x"})), "`kind`"),
            (
                "slots",
                Some(json!({"kind": "image", "a": "/dev/x", "b": "/dev/y"})),
                "expected the field `selector`",
            ),
            (
                "slots",
                Some(json!({"kind": "image", "a": "/dev/x", "b": "/dev/y",
                "selector": {"kind": "lilo"}})),
                "found \"lilo\"",
            ),
            (
                "slots",
                Some(json!({"kind": "dir", "root": ""})),
                "`slots.root`",
            ),
            (
                "slots",
                Some(json!({"kind": "dir", "root": "/x", "rooot": "/y"})),
                "rooot",
            ),
            (
                "slots",
                Some(json!({"kind": "image", "a": "/dev/x", "b": "/dev/x",
                "selector": {"kind": "custom"}})),
                "`slots.b`",
            ),
            (
                "slots",
                Some(json!({"kind": "image", "a": "/dev/x", "b": "/dev/y",
                "selector": {"kind": "grub"}})),
                "`env`",
            ),
            (
                "slots",
                Some(json!({"kind": "image", "a": "/dev/x", "b": "/dev/y",
                "selector": {"kind": "custom", "env": "/e"}})),
                "env",
            ),
            (
                "slots",
                Some(json!({"kind": "image", "a": "/dev/x", "b": "/dev/y",
                "selector": {"kind": "grub", "env": "/e"}, "booted_from": {"key": ""}})),
                "`slots.booted_from.key`",
            ),
            ("device_id", Some(json!("")), "`device_id`"),
            ("current_version", Some(json!("1.0")), "`current_version`"),
            (
                "trial/tries",
                Some(json!(-1)),
                "`trial.tries`: invalid value: integer `-1`",
            ),
            (
                "limits/retries",
                Some(json!("3")),
                "`limits.retries`: invalid type",
            ),
            ("poll/interval_s", Some(json!(1.5)), "`poll.interval_s`"),
            (
                "poll/interval_s",
                Some(json!(31_536_001)),
                "`poll.interval_s`",
            ),
            ("allow_downgrade", Some(json!("yes")), "`allow_downgrade`"),
            ("channel", Some(json!("my lab")), "`channel`"),
            ("channel", Some(json!("lab#1")), "`channel`"),
            (
                "state_dir",
                Some(json!("state")),
                "`state_dir`: expected an absolute path",
            ),
            (
                "state_dir",
                Some(json!("/opt/gateway/slots/b/evergreen")),
                "`state_dir`",
            ),
            (
                "state_dir",
                Some(json!("/opt/gateway/x/../current/evergreen")),
                "`state_dir`",
            ),
            (
                "slots",
                Some(json!({"kind": "dir", "root": "app"})),
                "`slots.root`",
            ),
            ("trust", Some(json!({"root": "root.json"})), "`trust.root`"),
            (
                "limits/speed_window_s",
                Some(json!(0)),
                "`limits.speed_window_s`",
            ),
            (
                "slots",
                Some(json!({"kind": "image", "a": "/dev/x", "b": "/dev/y",
                "selector": {"kind": "custom"},
                "booted_from": {"cmdline": "/proc/cmdline", "key": "rauc.slot"}})),
                "`slots.booted_from`: expected no booted_from with a custom selector",
            ),
            (
                "slots",
                Some(json!({"kind": "image", "a": "/dev/x", "b": "/dev/y",
                "selector": {"kind": "grub", "env": "/boot/grub/grubenv"},
                "booted_from": {"cmdline": "/proc/cmdline", "key": "rauc.slot="}})),
                "`slots.booted_from.key`",
            ),
            ("deploy", Some(json!({"policy": "weekly"})), "weekly"),
            ("deploy", Some(json!({"policy": "window"})), "deploy"),
            (
                "deploy",
                Some(json!({"policy": "window",
                "window": {"start": "25:00", "end": "01:00"}})),
                "HH:MM",
            ),
            ("trial/tries", Some(json!(0)), "`trial.tries`"),
            (
                "limits/max_metadata_bytes",
                Some(json!(0)),
                "`limits.max_metadata_bytes`",
            ),
            (
                "limits/connect_timeout_s",
                Some(json!(0)),
                "`limits.connect_timeout_s`",
            ),
            (
                "limits/read_timeout_s",
                Some(json!(0)),
                "`limits.read_timeout_s`",
            ),
            ("limits/retry", Some(json!(3)), "`retry`"),
            (
                "limits/read_timeout_s",
                Some(json!(u64::MAX)),
                "`limits.read_timeout_s`: expected 1 to 86400",
            ),
            (
                "limits/connect_timeout_s",
                Some(json!(86_401)),
                "`limits.connect_timeout_s`: expected 1 to 86400",
            ),
            (
                "limits/speed_window_s",
                Some(json!(u64::MAX)),
                "`limits.speed_window_s`: expected 1 to 86400",
            ),
            (
                "limits/max_metadata_bytes",
                Some(json!(u64::MAX)),
                "`limits.max_metadata_bytes`: expected 1 to 1073741824",
            ),
            (
                "limits/retry_backoff_ms",
                Some(json!(u64::MAX)),
                "`limits.retry_backoff_ms`: expected 0 to 60000",
            ),
            ("poll/interval_s", Some(json!(0)), "`poll.interval_s`"),
            ("poll/jitter", Some(json!(1.0)), "`poll.jitter`"),
            ("poll/jitter", Some(json!(-0.1)), "`poll.jitter`"),
            ("archive/max_ratio", Some(json!(0)), "`archive.max_ratio`"),
            (
                "archive/max_entries",
                Some(json!(0)),
                "`archive.max_entries`",
            ),
            (
                "archive/max_central_directory_bytes",
                Some(json!(0)),
                "`archive.max_central_directory_bytes`: expected 1 to 268435456",
            ),
            (
                "archive/max_central_directory_bytes",
                Some(json!(MAX_CENTRAL_DIRECTORY_BYTES + 1)),
                "`archive.max_central_directory_bytes`: expected 1 to 268435456",
            ),
            ("ca_roots", Some(json!("")), "`ca_roots`"),
            ("proxy", Some(json!("proxy.example:3128")), "`proxy`"),
        ];
        let mut failures = Vec::new();
        for (path, value, names) in rows {
            match parse(&with(path, value.clone())) {
                Err(e) if e.kind() == ErrorKind::Config && e.to_string().contains(names) => {}
                other => failures.push(format!(
                    "{path} = {value:?}: expected a config error naming {names}, got {other:?}"
                )),
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn from_file_reads_and_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.json");
        std::fs::write(&good, minimal().to_string()).unwrap();
        assert_eq!(
            Config::from_file(&good).unwrap().product,
            "com.acme.gateway"
        );

        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, with("trial/tries", Some(json!(0))).to_string()).unwrap();
        let e = Config::from_file(&bad).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config);
        assert!(e.to_string().contains("bad.json"), "{e}");

        let huge = dir.path().join("huge.json");
        std::fs::write(&huge, vec![b' '; (MAX_CONFIG_BYTES + 1) as usize]).unwrap();
        assert_eq!(
            Config::from_file(&huge).unwrap_err().kind(),
            ErrorKind::Config
        );

        let missing = dir.path().join("missing.json");
        assert_eq!(
            Config::from_file(&missing).unwrap_err().kind(),
            ErrorKind::Io
        );
    }

    #[test]
    fn a_machine_id_file_is_read_trimmed_and_refused_when_empty_or_uninitialized() {
        let dir = tempfile::tempdir().unwrap();
        let id = dir.path().join("machine-id");
        std::fs::write(&id, "0123456789abcdef\n").unwrap();
        assert_eq!(read_machine_id(&id).unwrap(), "0123456789abcdef");
        std::fs::write(&id, "uninitialized\n").unwrap();
        assert_eq!(read_machine_id(&id).unwrap_err().kind(), ErrorKind::Config);
        let absent = dir.path().join("absent");
        assert_eq!(read_machine_id(&absent).unwrap_err().kind(), ErrorKind::Io);
    }

    /// A host logs its config as Rust code does (`{:?}`, `tracing`'s `?config`, a
    /// `#[derive(Debug)]` struct that holds it, [`Updater::config`](crate::Updater::config)):
    /// the Basic-auth passwords of `server`, `mirrors` and `proxy` must not be in it, as
    /// they are in no error, event or log (README, "Config reference").
    #[test]
    fn a_configs_debug_shows_no_password() {
        let mut v = minimal();
        v["server"] = json!("https://fleet:s3rver-pw@updates.acme.com/gateway/");
        v["mirrors"] = json!(["https://fleet:m1rror-pw@mirror.acme.com/gateway/"]);
        v["proxy"] = json!("http://ops:pr0xy-pw@proxy.acme.com:3128");
        let config = parse(&v).unwrap();
        for shown in [format!("{config:?}"), format!("{config:#?}")] {
            for secret in ["s3rver-pw", "m1rror-pw", "pr0xy-pw"] {
                assert!(
                    !shown.contains(secret),
                    "expected no password in the config's Debug, found {secret:?} in {shown}"
                );
            }
            // Everything else is still there to read.
            for part in [
                "https://fleet:***@updates.acme.com/gateway/",
                "https://fleet:***@mirror.acme.com/gateway/",
                "http://ops:***@proxy.acme.com:3128",
                "com.acme.gateway",
                "/var/lib/evergreen",
            ] {
                assert!(shown.contains(part), "expected {part:?} in {shown}");
            }
        }
    }
}
