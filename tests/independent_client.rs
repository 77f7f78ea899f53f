//! A second client, written in Python from docs/design.md alone (`independent_client.py`),
//! against repositories the `evergreen` publisher writes, served over HTTP on 127.0.0.1:
//! it verifies the root chain (across a rotation), the channel manifests and the blobs,
//! and selects a release for each of a set of devices (rollout buckets on either side of
//! each rollout's edge, a fractional percentage, build metadata, a `min_version`, another
//! target), and every decision must be `evergreen check`'s. The format a vendor's own
//! client or mirror checker is written against cannot drift from the code unnoticed.

mod require;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

#[test]
fn a_client_written_from_the_design_document_decides_as_evergreen_does() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/independent_client.py");
    let out = match require::output_within(
        Command::new("python3")
            .arg(&script)
            .arg(env!("CARGO_BIN_EXE_evergreen")),
        Duration::from_secs(600),
    ) {
        Ok(out) => out,
        Err(_) => return require::missing("python3"),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "expected the documented client to agree with evergreen check, found {}:\n{stdout}{stderr}",
        out.status
    );
    assert!(
        stdout.contains(" 0 disagreement(s)"),
        "expected the comparison's summary, found:\n{stdout}{stderr}"
    );
}
