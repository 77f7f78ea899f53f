//! The device configuration: `Config::from_json` (DESIGN §7.1), which the library, the C
//! ABI and the CLI all take from the host or from a file an operator wrote.
//!
//! Input: the JSON text (invalid UTF-8 is skipped: the callers only ever hold a `&str`).
//!
//! Properties: no panic, no hang, bounded memory; an accepted config validates, and its
//! serialisation parses back to the same config (what `evergreen` prints can be fed back).
#![no_main]

use evergreen::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = Config::from_json(text) else {
        return;
    };
    config.validate().expect("an accepted config validates");
    let _ = config.trust.key_set();
    let _ = config.fetch_options();
    let _ = config.archive_limits();
    let json = serde_json::to_string(&config).expect("a config serialises");
    let again = Config::from_json(&json).expect("a serialised config parses back");
    assert_eq!(config, again);
});
