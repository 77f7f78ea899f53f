//! Shared fixtures for the integration tests: a signed repository made with the real
//! `evergreen` CLI, zips built in the test, and device configs.
#![allow(dead_code)]

pub mod zips;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The CLI binary under test.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_evergreen"))
}

/// Runs the CLI with `args`, returning its output (never panics on a non-zero exit).
pub fn run(args: &[&str]) -> Output {
    run_env(args, &[])
}

/// The longest a CLI run in a test may take: one stuck (on a lock, say) fails the test
/// instead of hanging it.
pub const CLI_LIMIT: std::time::Duration = std::time::Duration::from_secs(300);

/// Runs the CLI with extra environment variables, for at most [`CLI_LIMIT`].
pub fn run_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(bin());
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    output_within(&mut cmd, CLI_LIMIT)
}

/// `cmd`'s output, as `Command::output` gives it, once it exits within `limit`.
pub fn output_within(cmd: &mut Command, limit: std::time::Duration) -> Output {
    crate::require::output_within(cmd, limit).expect("the command starts")
}

/// A CLI run whose stderr is read line by line while it runs: a test can wait for what it
/// says (that it waits for a lock, say), act, then let it finish.
pub struct Watched {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    reader: std::thread::JoinHandle<()>,
}

impl Watched {
    /// Starts `cmd` (the CLI, with its arguments).
    pub fn start(cmd: &mut Command) -> Watched {
        use std::io::BufRead;
        use std::process::Stdio;
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the CLI starts");
        let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
        let (send, lines) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        Watched {
            child,
            lines,
            reader,
        }
    }

    /// The first stderr line (from here on) that contains `needle`; panics, killing the
    /// run, when none comes within a minute or stderr ends first.
    pub fn wait_for_line(&mut self, needle: &str) -> String {
        let mut before = Vec::new();
        loop {
            match self.lines.recv_timeout(std::time::Duration::from_secs(60)) {
                Ok(line) if line.contains(needle) => return line,
                Ok(line) => before.push(line),
                Err(e) => {
                    let _ = self.child.kill();
                    panic!("expected a stderr line with {needle:?}, found {before:?} ({e})");
                }
            }
        }
    }

    /// Ends the run (SIGKILL) and waits for it: a run that would wait for ever.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = self.reader.join();
    }

    /// Waits (at most [`CLI_LIMIT`]) for the run to end: its output, with the stderr
    /// lines not yet taken by [`Watched::wait_for_line`].
    pub fn finish(self) -> Output {
        let mut out = crate::require::finish_within(self.child, CLI_LIMIT);
        self.reader.join().unwrap();
        let rest: Vec<String> = self.lines.try_iter().collect();
        out.stderr = rest.join("\n").into_bytes();
        out
    }
}

/// Runs the CLI and panics with its stderr unless it exits 0.
pub fn ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "evergreen {args:?} failed ({:?}):\n{}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The stderr of a run as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts that `out` is a run that aborted at crash point `k` (`EVERGREEN_CRASH_AT=k`),
/// as a power cut there would stop it, and not one that failed, or stopped, elsewhere:
/// that point would never be tested.
pub fn assert_crashed_at(out: &Output, k: usize) {
    use std::os::unix::process::ExitStatusExt;
    let err = stderr(out);
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGABRT),
        "expected an abort (SIGABRT) at crash point {k}, found {:?}: {err}",
        out.status
    );
    assert!(
        err.contains(&format!("crash point {k} (")),
        "expected the abort at crash point {k}, found: {err}"
    );
}

/// Builds a zip (deflated) holding `files` (path → content); paths ending in `.sh` are
/// executable.
pub fn make_zip(path: &Path, files: &[(&str, &[u8])]) {
    let f = std::fs::File::create(path).unwrap();
    let mut z = zip::ZipWriter::new(f);
    for (name, body) in files {
        let mode = if name.ends_with(".sh") { 0o755 } else { 0o644 };
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .unix_permissions(mode);
        z.start_file(*name, opts).unwrap();
        z.write_all(body).unwrap();
    }
    z.finish().unwrap();
}

/// A signed repository on disk, with its keys, published through the CLI.
pub struct Repo {
    /// Keeps the temp dir alive.
    pub dir: tempfile::TempDir,
    /// The repository root (what the server serves).
    pub root: PathBuf,
    /// Root key file (secret).
    pub root_key: PathBuf,
    /// Manifest key file (secret).
    pub manifest_key: PathBuf,
    /// Product id.
    pub product: String,
}

impl Repo {
    /// Keys + `evergreen init` for `product`.
    pub fn new(product: &str) -> Repo {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("repo");
        let keys = dir.path().join("keys");
        std::fs::create_dir_all(&keys).unwrap();
        let root_key = keys.join("root.key");
        let manifest_key = keys.join("manifest.key");
        ok(&["keygen", "--out", root_key.to_str().unwrap()]);
        ok(&["keygen", "--out", manifest_key.to_str().unwrap()]);
        ok(&[
            "init",
            root.to_str().unwrap(),
            "--product",
            product,
            "--root-key",
            &format!("{}.pub", root_key.display()),
            "--root-threshold",
            "1",
            "--manifest-key",
            &format!("{}.pub", manifest_key.display()),
            "--sign",
            root_key.to_str().unwrap(),
        ]);
        Repo {
            dir,
            root,
            root_key,
            manifest_key,
            product: product.to_string(),
        }
    }

    /// A scratch directory inside the fixture.
    pub fn scratch(&self, name: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    /// `evergreen rollout`: `version` of `channel` goes to `percent` of devices from now on
    /// (0 halts it), signed with the manifest key.
    pub fn rollout(&self, channel: &str, version: &str, percent: &str) {
        ok(&[
            "rollout",
            self.root.to_str().unwrap(),
            "--channel",
            channel,
            "--version",
            version,
            "--percent",
            percent,
            "--sign",
            self.manifest_key.to_str().unwrap(),
        ]);
    }

    /// Publishes `version` to `channel` for x86_64-linux with one file component,
    /// `config`: a settings file that names the version (so each release's blob differs),
    /// plus extra CLI flags.
    pub fn release_settings(&self, channel: &str, version: &str, extra: &[&str]) -> String {
        let file = self.scratch("src").join(format!("settings-{version}.json"));
        std::fs::write(&file, format!("{{\"version\": \"{version}\"}}")).unwrap();
        self.release(
            channel,
            version,
            "x86_64-linux",
            &[("config", &file)],
            extra,
        )
    }

    /// Publishes `version` to `channel` for `target` with `components` (name → path,
    /// kind from the extension), plus extra CLI flags.
    pub fn release(
        &self,
        channel: &str,
        version: &str,
        target: &str,
        components: &[(&str, &Path)],
        extra: &[&str],
    ) -> String {
        let mut args: Vec<String> = vec![
            "release".into(),
            self.root.display().to_string(),
            "--channel".into(),
            channel.into(),
            "--version".into(),
            version.into(),
            "--target".into(),
            target.into(),
        ];
        for (name, path) in components {
            args.push("--component".into());
            args.push(format!("{name}={}", path.display()));
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        args.push("--sign".into());
        args.push(self.manifest_key.display().to_string());
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        ok(&refs)
    }

    /// Changes `channel`'s manifest as no `evergreen` command would write it (another
    /// publisher's tool, a hand edit) and signs it with the manifest key, with the next
    /// sequence: what devices must still refuse safely.
    pub fn edit_channel(
        &self,
        channel: &str,
        edit: impl FnOnce(&mut evergreen::manifest::Manifest),
    ) {
        use evergreen::trust;
        let path = self.root.join(format!("channels/{channel}.json"));
        let secret = std::fs::read_to_string(&self.manifest_key).unwrap();
        let key = trust::SecretKey::from_base64(&secret).unwrap();
        let keys = trust::KeySet::new(vec![key.public()], 1).unwrap();
        let envelope = std::fs::read(&path).unwrap();
        let payload = trust::open(&envelope, trust::MANIFEST_TYPE, &keys, 1 << 20).unwrap();
        let mut manifest: evergreen::manifest::Manifest = serde_json::from_slice(&payload).unwrap();
        edit(&mut manifest);
        manifest.sequence += 1;
        let sealed = trust::seal(trust::MANIFEST_TYPE, &manifest.to_bytes(), &[&key]);
        std::fs::write(&path, sealed).unwrap();
    }

    /// The pinned root a device ships with: a copy of `root/1.json`.
    pub fn root_file(&self) -> PathBuf {
        self.root.join("root/1.json")
    }

    /// Writes a device config (dir slots) for `server`, with `extra`'s keys over the
    /// defaults, and returns its paths.
    pub fn device(&self, name: &str, server: &str, extra: serde_json::Value) -> Device {
        let base = self.scratch(name);
        let mut cfg = serde_json::json!({
            "product": self.product,
            "server": server,
            "channel": "stable",
            "target": "x86_64-linux",
            "trust": {"root": self.root_file()},
            "state_dir": base.join("state"),
            "slots": {"kind": "dir", "root": base.join("app")},
            "device_id": format!("device-{name}"),
            "limits": {"retries": 1},
        });
        if let (Some(c), Some(e)) = (cfg.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                c.insert(k.clone(), v.clone());
            }
        }
        let config = base.join("config.json");
        std::fs::write(&config, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
        // The paths the config gives, `extra`'s where it moves them (image slots have no root).
        let path =
            |v: &serde_json::Value, default: PathBuf| v.as_str().map_or(default, PathBuf::from);
        Device {
            config,
            root: path(&cfg["slots"]["root"], base.join("app")),
            state: path(&cfg["state_dir"], base.join("state")),
        }
    }
}

/// A device's paths.
pub struct Device {
    /// Its config file.
    pub config: PathBuf,
    /// Its slot root (`slots/a`, `slots/b`, `current`).
    pub root: PathBuf,
    /// Its state dir.
    pub state: PathBuf,
}

impl Device {
    /// `evergreen <cmd> --config <cfg> [args]`.
    pub fn run(&self, cmd: &str, args: &[&str]) -> Output {
        self.run_env(cmd, args, &[])
    }

    /// [`run`](Self::run) with extra environment variables.
    pub fn run_env(&self, cmd: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut all = vec![cmd, "--config", self.config.to_str().unwrap()];
        all.extend_from_slice(args);
        run_env(&all, env)
    }

    /// Runs `cmd` expecting it to fail (exit 1); returns its stderr.
    pub fn fails(&self, cmd: &str, args: &[&str]) -> String {
        let out = self.run(cmd, args);
        let err = stderr(&out);
        assert_eq!(
            out.status.code(),
            Some(1),
            "evergreen {cmd} {args:?}: {err}"
        );
        err
    }

    /// Like `run`, but panics unless it exits with `code`.
    pub fn expect(&self, cmd: &str, args: &[&str], code: i32) -> String {
        let out = self.run(cmd, args);
        assert_eq!(
            out.status.code(),
            Some(code),
            "evergreen {cmd} {args:?}:\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `evergreen <cmd> --json [args]` with the device's clock reading `when`
    /// (`EVERGREEN_NOW`), which must exit with `code`: its JSON.
    pub fn json_at(&self, when: &str, cmd: &str, args: &[&str], code: i32) -> serde_json::Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.run_env(cmd, &all, &[("EVERGREEN_NOW", when)]);
        assert_eq!(
            out.status.code(),
            Some(code),
            "evergreen {cmd} {args:?} at {when}: {}",
            stderr(&out)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// `status --json` parsed.
    pub fn status(&self) -> serde_json::Value {
        serde_json::from_str(&self.expect("status", &["--json"], 0)).unwrap()
    }

    /// Rewrites the device's config file with `edit` applied to its JSON.
    pub fn edit_config(&self, edit: impl FnOnce(&mut serde_json::Value)) {
        let mut cfg: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&self.config).unwrap()).unwrap();
        edit(&mut cfg);
        std::fs::write(&self.config, cfg.to_string()).unwrap();
    }

    /// The state file as the updater last saved it.
    pub fn state_file(&self) -> serde_json::Value {
        let path = self.state.join("state.json");
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    /// The SHA-256 of the artifact `component` of `slot` (`"a"` or `"b"`) was installed
    /// from, as the state records it.
    pub fn installed_sha256(&self, slot: &str, component: &str) -> String {
        let state = self.state_file();
        let sha = state[slot]["components"][component]["sha256"].as_str();
        sha.unwrap_or_else(|| panic!("no {component} in slot {slot}: {state}"))
            .to_string()
    }

    /// The names in the downloads directory, sorted (none when it does not exist).
    pub fn downloads(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.state.join("downloads"))
            .map(|d| {
                d.map(|e| e.unwrap().file_name().into_string().unwrap())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }
}

/// Every file under `dir` (relative path → (mode, sha256)), for byte-identity checks.
pub fn tree_digest(dir: &Path) -> BTreeMap<String, (u32, String)> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(dir).unwrap().display().to_string();
            if meta.is_dir() {
                stack.push(p);
            } else if meta.file_type().is_symlink() {
                out.insert(
                    rel,
                    (0, std::fs::read_link(&p).unwrap().display().to_string()),
                );
            } else {
                let bytes = std::fs::read(&p).unwrap();
                out.insert(
                    rel,
                    (
                        meta.permissions().mode() & 0o7777,
                        evergreen::trust::sha256_hex(&bytes),
                    ),
                );
            }
        }
    }
    out
}

/// Replaces `to` with a copy of the tree `from` (files and directories), to put a state
/// directory or a repository back as it was between runs.
pub fn copy_dir(from: &Path, to: &Path) {
    let _ = std::fs::remove_dir_all(to);
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

/// `status` or `state.json` without what a refused check changes by design: `next_check`
/// (random by design, the jitter, and it backs off after a failed check), the failures
/// counted (`check_failures`, `last_failure`) and the history's `check_failed` entry,
/// which says why the check failed.
pub fn without_check_schedule(status: &mut serde_json::Value) {
    let s = status.as_object_mut().unwrap();
    for key in ["next_check", "check_failures", "last_failure"] {
        s.remove(key);
    }
    if let Some(history) = s
        .get_mut("history")
        .and_then(serde_json::Value::as_array_mut)
    {
        history.retain(|h| h["event"] != "check_failed");
    }
}

/// `state` (a `state.json` or a `status --json`) without the history entries a refused
/// download or install leaves (`download_failed`, `install_failed`): the record of the
/// refusal, which `status` shows, not a change to what the device runs or trusts.
pub fn without_failures(state: &mut serde_json::Value) {
    if let Some(history) = state
        .get_mut("history")
        .and_then(serde_json::Value::as_array_mut)
    {
        history.retain(|h| {
            !matches!(
                h["event"].as_str(),
                Some("download_failed" | "install_failed")
            )
        });
    }
}
