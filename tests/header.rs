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

/// A file of the repository, as text.
fn read(path: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

/// The functions `include/evergreen.h` declares: (name, return type), in header order.
fn header_functions() -> Vec<(String, String)> {
    read("include/evergreen.h")
        .lines()
        .filter(|line| line.starts_with(|c: char| c.is_ascii_lowercase()))
        .filter(|line| !line.starts_with("typedef"))
        .filter_map(|line| {
            let open = line.find('(')?;
            let start = line[..open].rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))? + 1;
            let name = &line[start..open];
            name.starts_with("evg_")
                .then(|| (name.to_string(), line[..start].trim().to_string()))
        })
        .collect()
}

/// The rows of docs/c-abi.md's function table: `| `evg_name` | `return type` | what |`,
/// as (name, return type).
fn documented_functions() -> Vec<(String, String)> {
    read("docs/c-abi.md")
        .lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let name = cells.get(1)?.strip_prefix("`evg_")?.strip_suffix('`')?;
            let returns = cells.get(2)?.strip_prefix('`')?.strip_suffix('`')?;
            Some((format!("evg_{name}"), returns.to_string()))
        })
        .collect()
}

/// docs/c-abi.md lists every function of the header with its return type, and nothing
/// else: a C host reads there which functions exist and which return no `evg_status`.
#[test]
fn docs_c_abi_lists_every_header_function_with_its_return_type() {
    let declared = header_functions();
    assert!(
        declared.len() >= 30,
        "expected the header's functions, found {declared:?}"
    );
    let documented = documented_functions();
    let mut problems = Vec::new();
    for (name, returns) in &declared {
        match documented.iter().find(|(n, _)| n == name) {
            None => problems.push(format!("{name}: not in docs/c-abi.md's function table")),
            Some((_, r)) if r != returns => problems.push(format!(
                "{name}: expected return type `{returns}` (the header's), found `{r}` in docs/c-abi.md"
            )),
            Some(_) => {}
        }
    }
    for (name, _) in &documented {
        if !declared.iter().any(|(n, _)| n == name) {
            problems.push(format!(
                "{name}: in docs/c-abi.md's function table, not in the header"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The header's status codes, `EVG_NAME = N` in `enum evg_status`: (name, number).
fn header_statuses() -> Vec<(String, i32)> {
    let header = read("include/evergreen.h");
    let start = header
        .find("typedef enum evg_status {")
        .expect("the header declares enum evg_status");
    let body = &header[start..start + header[start..].find("} evg_status;").unwrap()];
    body.lines()
        .filter_map(|line| {
            let (name, number) = line.trim().trim_end_matches(',').split_once(" = ")?;
            Some((name.to_string(), number.parse().ok()?))
        })
        .collect()
}

/// One stable name per status, the same everywhere a host reads it: the header, the
/// library (`evg_status_name`, `ErrorKind::as_str` in order of the codes), docs/c-abi.md's
/// table, the kinds of docs/design.md §10 and the Python binding's exception table. A kind
/// added in one place and not the others fails here.
#[test]
fn status_codes_and_kind_names_agree_everywhere() {
    let statuses = header_statuses();
    assert_eq!(
        statuses.first(),
        Some(&("EVG_OK".to_string(), 0)),
        "expected EVG_OK = 0 first, found {statuses:?}"
    );
    let named: Vec<(String, i32, String)> = statuses
        .iter()
        .map(|(c, n)| (c.clone(), *n, c["EVG_".len()..].to_ascii_lowercase()))
        .collect();
    let mut problems = Vec::new();

    // The library's names.
    for (c, n, name) in &named {
        // SAFETY: evg_status_name returns a static NUL-terminated string.
        let lib = unsafe { std::ffi::CStr::from_ptr(evergreen::ffi::error::evg_status_name(*n)) };
        if lib.to_str() != Ok(name.as_str()) {
            problems.push(format!(
                "{c} = {n}: expected evg_status_name {name:?}, found {lib:?}"
            ));
        }
    }
    let kinds: Vec<(i32, &str)> = evergreen::ErrorKind::ALL
        .iter()
        .zip(1..)
        .map(|(k, n)| (n, k.as_str()))
        .collect();
    for (n, kind) in &kinds {
        if !named.iter().any(|(_, m, name)| m == n && name == kind) {
            problems.push(format!("ErrorKind {kind:?} (code {n}): expected in the header, found no EVG_ status {n} of that name"));
        }
    }

    // docs/c-abi.md's table: | `EVG_NAME` | N | `name` |
    let c_abi = read("docs/c-abi.md");
    let rows: Vec<String> = c_abi
        .lines()
        .filter(|l| l.starts_with("| `EVG_"))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    for (c, n, name) in &named {
        let row = format!("| `{c}` | {n} | `{name}` |");
        if !rows.contains(&row) {
            problems.push(format!("docs/c-abi.md: expected the row {row}, found none"));
        }
    }
    if rows.len() != named.len() {
        problems.push(format!(
            "docs/c-abi.md: expected {} status rows, found {}",
            named.len(),
            rows.len()
        ));
    }

    // docs/design.md §10: the kinds, backquoted, up to "Every error says".
    let design = read("docs/design.md");
    let s10 = &design[design
        .find("## 10. Errors")
        .expect("docs/design.md has §10")..];
    let s10 = &s10[..s10.find("Every error says").expect("§10 ends its list")];
    let listed: Vec<&str> = s10
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|w| w.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
        .collect();
    let expected: Vec<&str> = named
        .iter()
        .map(|(_, _, name)| name.as_str())
        .filter(|name| *name != "ok")
        .collect();
    if listed != expected {
        problems.push(format!(
            "docs/design.md §10: expected the kinds {expected:?}, found {listed:?}"
        ));
    }

    // The Python binding's table: (N, "name"),
    let python = read("bindings/python/evergreen/_errors.py");
    let py: Vec<(i32, String)> = python
        .lines()
        .filter_map(|l| {
            let l = l.trim().strip_prefix('(')?.strip_suffix("),")?;
            let (n, name) = l.split_once(", ")?;
            Some((n.parse().ok()?, name.trim_matches('"').to_string()))
        })
        .collect();
    let want: Vec<(i32, String)> = named
        .iter()
        .filter(|(_, n, _)| *n != 0)
        .map(|(_, n, name)| (*n, name.clone()))
        .collect();
    if py != want {
        problems.push(format!(
            "bindings/python/evergreen/_errors.py KINDS: expected {want:?}, found {py:?}"
        ));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
