//! The systemd units the docs give, copied as they stand, are units `systemctl enable`
//! sets up to start: a unit without an `[Install]` section is accepted by `enable` with
//! exit code 0 and a hint, and then never starts at boot.

mod require;

use std::path::Path;
use std::process::Command;

/// The ```ini blocks of `doc` whose first line is a comment naming a unit file
/// (`# evergreen-boot.service`, `# /etc/systemd/system/evergreen-update.timer (…)`), as
/// (unit name, text).
fn units(doc: &str) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(doc)).unwrap();
    let mut found = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if line.trim() != "```ini" {
            continue;
        }
        let block: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
        let Some(first) = block.first().and_then(|l| l.strip_prefix("# ")) else {
            continue;
        };
        let path = first.split_whitespace().next().unwrap_or_default();
        let name = path.rsplit('/').next().unwrap_or_default();
        if name.ends_with(".service") || name.ends_with(".timer") {
            found.push((name.to_string(), block.join("\n") + "\n"));
        }
    }
    found
}

#[test]
fn the_documented_units_are_enabled_by_systemctl_enable() {
    if !require::tool_succeeds(Command::new("systemctl").arg("--version")) {
        return require::missing("systemctl");
    }
    let mut all = Vec::new();
    for doc in ["README.md", "docs/firmware.md", "docs/operators.md"] {
        all.extend(units(doc).into_iter().map(|(n, t)| (doc, n, t)));
    }
    let names: Vec<&str> = all.iter().map(|(_, n, _)| n.as_str()).collect();
    for expected in ["evergreen-boot.service", "evergreen-update.timer"] {
        assert!(
            names.contains(&expected),
            "expected the docs to give {expected}, found units {names:?}"
        );
    }
    let mut problems = Vec::new();
    for (doc, name, text) in &all {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("etc/systemd/system");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), text).unwrap();
        let out = require::tool_output(
            Command::new("systemctl")
                .arg(format!("--root={}", root.path().display()))
                .args(["enable", name]),
        )
        .unwrap();
        let wanted = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".wants"))
            .any(|e| e.path().join(name).symlink_metadata().is_ok());
        if !out.status.success() || !wanted {
            problems.push(format!(
                "{doc}: {name}: expected `systemctl enable` to link it into a target's .wants, found exit {:?} and no link: {}",
                out.status.code(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
