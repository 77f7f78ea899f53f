//! The committed C header must be what cbindgen generates from `src/ffi/` now: a stale
//! header would let C hosts compile against an ABI the library no longer has.

mod require;

use std::path::{Path, PathBuf};
use std::process::Command;

/// cbindgen from PATH, else from `~/.cargo/bin`.
fn cbindgen() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("cbindgen"))
            .find(|p| p.is_file())
    });
    on_path.or_else(|| {
        let home = std::env::var_os("HOME")?;
        let p = Path::new(&home).join(".cargo/bin/cbindgen");
        p.is_file().then_some(p)
    })
}

/// The first line where `a` and `b` differ, as a hint for the failure message.
fn first_difference(committed: &str, generated: &str) -> String {
    let (mut c, mut g) = (committed.lines(), generated.lines());
    for n in 1.. {
        match (c.next(), g.next()) {
            (None, None) => break,
            (x, y) if x != y => {
                return format!(
                    "line {n}:\n  committed: {}\n  generated: {}",
                    x.unwrap_or("<end of file>"),
                    y.unwrap_or("<end of file>")
                )
            }
            _ => {}
        }
    }
    "no line differs (line endings?)".to_string()
}

#[test]
fn the_committed_header_is_what_cbindgen_generates() {
    let Some(cbindgen) = cbindgen() else {
        require::missing(
            "cbindgen 0.29.0 (on PATH or in ~/.cargo/bin: cargo install cbindgen --version 0.29.0)",
        );
        return;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let tmp = tempfile::tempdir().unwrap();
    let generated = tmp.path().join("evergreen.h");
    let out = require::tool_output(
        Command::new(&cbindgen)
            .current_dir(root)
            .args([
                "--config",
                "cbindgen.toml",
                "--crate",
                "evergreen",
                "--quiet",
                "--output",
            ])
            .arg(&generated),
    )
    .expect("cbindgen runs");
    assert!(
        out.status.success(),
        "cbindgen failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let generated = std::fs::read_to_string(&generated).unwrap();
    let committed = std::fs::read_to_string(root.join("include/evergreen.h")).unwrap();
    assert!(
        generated == committed,
        "include/evergreen.h is stale; first difference at {}\n\
         regenerate it with: cbindgen --config cbindgen.toml --crate evergreen --output include/evergreen.h\n\
         and see everything with: diff -u include/evergreen.h <(cbindgen --config cbindgen.toml --crate evergreen)",
        first_difference(&committed, &generated)
    );
}
