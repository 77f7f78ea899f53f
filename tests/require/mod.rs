//! What a test does when a tool it needs is not installed: it is skipped on a developer's
//! machine, and fails when `EVERGREEN_REQUIRE_TOOLS` is set. CI installs every tool and
//! sets it, so a skip there cannot report coverage that never ran.

/// Says that `tool` is missing: the test is skipped, or fails under
/// `EVERGREEN_REQUIRE_TOOLS`.
pub fn missing(tool: &str) {
    assert!(
        std::env::var_os("EVERGREEN_REQUIRE_TOOLS").is_none(),
        "expected {tool} installed (EVERGREEN_REQUIRE_TOOLS is set), found none"
    );
    eprintln!("skipped: {tool} not installed");
}
