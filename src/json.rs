//! Reading and writing the JSON documents: envelopes, roots, manifests, the state.
//!
//! Every document goes through [`from_bytes`]: its bytes are checked as UTF-8 once, in bulk
//! (JSON is UTF-8 as a whole, RFC 8259), then parsed from the `str`. That is faster than
//! serde_json's check of each string on its own (15 % of the parse of a 1,000-release
//! manifest), and with one reader type each deserializer exists once in the library, which
//! keeps firmware builds smaller.

use serde::{Deserialize, Serialize};

/// Parses `bytes` as one JSON document of type `T` (which may borrow strings from them).
/// The error is what was found, for the caller to put after its own "expected …".
/// Every document is an object: one that is not is named as such (see [`not_an_object`]).
pub(crate) fn from_bytes<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, String> {
    let text = object_text(bytes)?;
    serde_json::from_str(text).map_err(|e| found(text, &e))
}

/// What a reader of a signed document (a channel manifest, a root) adds after what
/// [`from_bytes`] `found` when it is a field or a value this build has no name for
/// (serde's `unknown field`, `unknown variant`): a newer Evergreen may have written it,
/// and devices running this one refuse the document whole (DESIGN §4.3, §4.4). Empty
/// for any other error.
pub(crate) fn newer_writer(found: &str) -> &'static str {
    if found.contains("unknown field `") || found.contains("unknown variant `") {
        concat!(
            "; Evergreen ",
            env!("CARGO_PKG_VERSION"),
            " does not know it (written by a newer Evergreen?): devices running this \
             version refuse the whole document, so publish it only where every device \
             runs an Evergreen that knows it"
        )
    } else {
        ""
    }
}

/// `bytes` as the text of a JSON object, or what they are instead. Not generic, as
/// [`found`] is not: one copy in the library, not one per document type.
fn object_text(bytes: &[u8]) -> Result<&str, String> {
    let text = std::str::from_utf8(bytes).map_err(|e| format!("bytes that are not UTF-8 ({e})"))?;
    match not_an_object(text) {
        Some(found) => Err(format!("{found}, not a JSON object (`{{`)")),
        None => Ok(text),
    }
}

/// What serde_json's error `e` in `text` says was found, with the field it is about.
fn found(text: &str, e: &serde_json::Error) -> String {
    match field_of(text, e) {
        Some(field) => format!("`{field}`: {e}"),
        None => e.to_string(),
    }
}

/// What `text` holds when it is not a JSON object (`an array (`[`)`, `no text`), `None`
/// when it is one. serde reads a struct from an array too, field by field in order, so
/// without this an array of the right values was taken for a document, and other arrays
/// or a number gave "invalid type: map, expected u64"; and an editor's byte order mark
/// reads as "expected value at line 1 column 1", naming nothing.
pub(crate) fn not_an_object(text: &str) -> Option<String> {
    // JSON's white space only: a no-break space (U+00A0) before the `{` is text the
    // parser refuses, and must be named as such.
    let text = text.trim_start_matches([' ', '\t', '\n', '\r']);
    let Some(c) = text.chars().next() else {
        return Some("no text".into());
    };
    // A literal only when the word ends there: `nullify` and `-x` are text.
    let word = |w: &str| {
        let rest = text.strip_prefix(w);
        rest.is_some_and(|r| {
            r.starts_with(|c: char| c.is_ascii_whitespace() || ",]}".contains(c)) || r.is_empty()
        })
    };
    let digits = text.strip_prefix('-').unwrap_or(text);
    let what = match c {
        '{' => return None,
        '\u{feff}' => {
            return Some("a UTF-8 byte order mark (U+FEFF); save the file without it".into())
        }
        '[' => "an array",
        '"' => return Some("a string (`\"`)".into()),
        '-' | '0'..='9' if digits.starts_with(|d: char| d.is_ascii_digit()) => "a number",
        't' | 'f' if word("true") || word("false") => "a boolean",
        'n' if word("null") => "null",
        _ => "text",
    };
    Some(format!("{what} (`{}`)", c.escape_debug()))
}

/// `value` as JSON indented as serde_json's `to_vec_pretty` indents it (two spaces a
/// level, `": "` after a key, `{}` and `[]` when empty), byte for byte. Written compact
/// and indented here rather than through serde_json's pretty formatter: each type
/// serialised pretty would otherwise carry a second copy of its serializer (3,216 bytes
/// of the file-only library when this came in).
pub(crate) fn to_vec_pretty<T: Serialize + ?Sized>(value: &T) -> serde_json::Result<Vec<u8>> {
    serde_json::to_vec(value).map(|compact| indent(&compact))
}

/// Indents `compact`, JSON with no white space outside its strings.
fn indent(compact: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(compact.len() + compact.len() / 2);
    let mut depth = 0;
    let new_line = |out: &mut Vec<u8>, depth: usize| {
        out.push(b'\n');
        out.resize(out.len() + 2 * depth, b' ');
    };
    let mut bytes = compact.iter().copied().peekable();
    while let Some(b) = bytes.next() {
        if matches!(b, b'}' | b']') {
            depth -= 1;
            new_line(&mut out, depth);
        }
        out.push(b);
        match b {
            b'"' => {
                // The rest of the string as it is, escapes included.
                while let Some(c) = bytes.next() {
                    out.push(c);
                    match c {
                        b'\\' => out.extend(bytes.next()),
                        b'"' => break,
                        _ => {}
                    }
                }
            }
            b'{' | b'[' => {
                let close = if b == b'{' { b'}' } else { b']' };
                if let Some(c) = bytes.next_if_eq(&close) {
                    out.push(c);
                } else {
                    depth += 1;
                    new_line(&mut out, depth);
                }
            }
            b',' => new_line(&mut out, depth),
            b':' => out.push(b' '),
            _ => {}
        }
    }
    out
}

/// `x` as JSON writes it (`20`, `12.5`, `null` for NaN), for messages. serde_json's own
/// float formatting is in the library anyway; `core`'s would add 4 KB to it.
pub(crate) fn number(x: f64) -> String {
    serde_json::Value::from(x).to_string()
}

/// The field (`trial.tries`, `releases[3].version`) serde_json's error `e` in `text` is
/// about, when it is about one: a value of the wrong type or out of range, a missing or
/// unknown field. A syntax error is about no field; its position says where it is.
pub(crate) fn field_of(text: &str, e: &serde_json::Error) -> Option<String> {
    if e.is_syntax() || e.is_eof() {
        return None;
    }
    Some(path_at(text, e.line(), e.column())).filter(|p| !p.is_empty())
}

/// The path (`limits.retries`, `releases[3].version`) of the value being read at `line`
/// and `column` (1-based, in bytes, as serde_json reports them), for errors that serde
/// reports by position only. Only the text before that position is scanned.
fn path_at(text: &str, line: usize, column: usize) -> String {
    let line_start: usize = text
        .split_inclusive('\n')
        .take(line.saturating_sub(1))
        .map(str::len)
        .sum();
    let end = (line_start + column).min(text.len());
    let mut frames: Vec<Frame> = Vec::new();
    let mut bytes = text.as_bytes()[..end].iter().copied().peekable();
    while let Some(b) = bytes.next() {
        match b {
            b'"' => {
                let s = read_string(&mut bytes);
                if let Some(Frame::Key(key, expecting @ true)) = frames.last_mut() {
                    *key = s;
                    *expecting = false;
                }
            }
            b'{' => frames.push(Frame::Key(String::new(), true)),
            b'[' => frames.push(Frame::Index(0)),
            b'}' | b']' => {
                frames.pop();
            }
            b',' => match frames.last_mut() {
                Some(Frame::Key(_, expecting)) => *expecting = true,
                Some(Frame::Index(i)) => *i += 1,
                None => {}
            },
            _ => {}
        }
    }
    let mut path = String::new();
    for frame in &frames {
        match frame {
            Frame::Key(key, false) if path.is_empty() => path.push_str(key),
            Frame::Key(key, false) => {
                path.push('.');
                path.push_str(key);
            }
            Frame::Key(_, true) => break,
            Frame::Index(i) => path.push_str(&format!("[{i}]")),
        }
    }
    path
}

/// Where [`path_at`] is inside a container: an object's key (and whether the next string
/// is a key), or an array's index.
enum Frame {
    Key(String, bool),
    Index(usize),
}

/// The rest of a string whose opening quote was read; escapes are kept as written, which
/// is enough to name a key.
fn read_string(bytes: &mut impl Iterator<Item = u8>) -> String {
    let mut raw = Vec::new();
    while let Some(b) = bytes.next() {
        match b {
            b'"' => break,
            b'\\' => {
                raw.push(b);
                raw.extend(bytes.next());
            }
            _ => raw.push(b),
        }
    }
    String::from_utf8_lossy(&raw).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// The indenting gives serde_json's own pretty output, byte for byte: documents
    /// written before read the same, and diff the same.
    #[test]
    fn indents_as_serde_json_does() {
        let values = [
            serde_json::json!({}),
            serde_json::json!([]),
            serde_json::json!({"a": {}, "b": [], "c": [{}], "d": [[]]}),
            serde_json::json!({"k": 1, "l": [1, -2.5, true, null, "s"], "m": {"n": {"o": []}}}),
            serde_json::json!({"s": "x,{[\"\\:}]\n\u{e9}\u{1}", "a\"b": "\\"}),
            serde_json::json!([{"a": 1}, {"b": [2, {"c": "}"}]}]),
            serde_json::json!("text"),
            serde_json::json!(12),
        ];
        for value in values {
            let expected = serde_json::to_vec_pretty(&value).unwrap();
            let found = to_vec_pretty(&value).unwrap();
            assert_eq!(
                String::from_utf8(found).unwrap(),
                String::from_utf8(expected).unwrap()
            );
        }
        let state = crate::state::State::initial("stable", Some(semver::Version::new(1, 0, 0)));
        let expected = serde_json::to_vec_pretty(&state).unwrap();
        assert_eq!(to_vec_pretty(&state).unwrap(), expected);
    }

    #[test]
    fn parses_utf8_and_names_what_is_wrong() {
        let ok: BTreeMap<String, String> = from_bytes("{\"k\":\"caf\u{e9}\"}".as_bytes()).unwrap();
        assert_eq!(ok["k"], "caf\u{e9}");
        let err = from_bytes::<BTreeMap<String, String>>(b"{\"k\":\"caf\xe9\"}").unwrap_err();
        assert!(err.starts_with("bytes that are not UTF-8"), "{err}");
        let err = from_bytes::<BTreeMap<String, String>>(b"{\"k\":1}").unwrap_err();
        assert!(err.starts_with("`k`: invalid type: integer `1`"), "{err}");
    }

    /// Every document is an object, and one that is not says what it is: a struct would
    /// read an array field by field.
    #[test]
    fn a_document_that_is_not_an_object_is_named() {
        #[derive(Deserialize, Debug)]
        struct Doc {
            _n: u64,
        }
        assert_eq!(from_bytes::<Doc>(b" {\"_n\": 1}").unwrap()._n, 1);
        for (text, found) in [
            (&b"[1]"[..], "an array (`[`)"),
            (b"-1", "a number (`-`)"),
            (b"\"x\"", "a string (`\"`)"),
            (b"null", "null (`n`)"),
            (b"nope", "text (`n`)"),
            (b"nullify", "text (`n`)"),
            (b"trueish", "text (`t`)"),
            (b"-x", "text (`-`)"),
            (b"true\n", "a boolean (`t`)"),
            (b"false", "a boolean (`f`)"),
            (b" \n", "no text"),
            (" \u{a0}{}".as_bytes(), r"text (`\u{a0}`)"),
            ("\u{2003}{}".as_bytes(), r"text (`\u{2003}`)"),
            (
                "\u{feff}{}".as_bytes(),
                "a UTF-8 byte order mark (U+FEFF); save the file without it",
            ),
        ] {
            let err = from_bytes::<Doc>(text).unwrap_err();
            assert_eq!(err, format!("{found}, not a JSON object (`{{`)"));
        }
    }

    #[test]
    fn names_the_field_an_error_is_about() {
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct Doc {
            a: Inner,
            list: Vec<Inner>,
        }
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct Inner {
            n: u32,
            #[serde(default)]
            s: String,
        }
        let cases = [
            (r#"{"a": {"n": -1}, "list": []}"#, "`a.n`: invalid value: integer `-1`"),
            (
                "{\"a\": {\"s\": \"x,{[\\\"\", \"n\": 1},\n \"list\": [{\"n\": 1}, {\"n\": \"2\"}]}",
                "`list[1].n`: invalid type: string \"2\"",
            ),
            (r#"{"a": {"n": 1}, "list": [{"s": "x"}]}"#, "`list[0]`: missing field `n`"),
            // A syntax error is about no field: serde's position says it all.
            (r#"{"a": {"n": 1,}}"#, "trailing comma at line 1"),
        ];
        for (text, expected) in cases {
            let err = from_bytes::<Doc>(text.as_bytes()).unwrap_err();
            assert!(err.starts_with(expected), "{text}: {err}");
        }
    }
}
