//! Names as case-insensitive file systems compare them: two zip entries, or two
//! components of one release, that such a file system takes for one name would make an
//! install stop (or mix them) after the slot was emptied.

/// A name (one path component) as file systems that ignore case compare it: each
/// character lowercased, then case-folded where Unicode's full case folding (which ext4
/// and f2fs casefolding use) differs from the lowercase: `ſ` and `s`, `µ` and `μ`, `ϐ` and
/// `β`, the final sigma `ς` and `σ`, `ß` (and so `ẞ`) and `ss`, `ﬁ` and `fi` come out the
/// same, as do the dotless `ı` and `i`, which FAT's uppercasing makes equal. Lowercasing
/// alone kept all of those apart: an install planned such an archive, and its second name
/// failed to create (`io`) after the slot had been emptied. Not folded: the characters
/// whose folding is a letter and a combining mark (`ǰ`, Greek with iota subscript) and NFC
/// against NFD spellings, which a normalising file system takes as one. A small table
/// rather than `to_uppercase`, whose table costs the C library 13 KB.
pub(crate) fn folded(component: &str) -> String {
    let mut out = String::with_capacity(component.len());
    for c in component.chars().flat_map(char::to_lowercase) {
        match c {
            'ß' => out.push_str("ss"),
            '\u{fb00}' => out.push_str("ff"),
            '\u{fb01}' => out.push_str("fi"),
            '\u{fb02}' => out.push_str("fl"),
            '\u{fb03}' => out.push_str("ffi"),
            '\u{fb04}' => out.push_str("ffl"),
            '\u{fb05}' | '\u{fb06}' => out.push_str("st"),
            _ => out.push(
                FOLDS
                    .binary_search_by_key(&c, |&(from, _)| from)
                    .map_or(c, |i| FOLDS[i].1),
            ),
        }
    }
    out
}

/// The first two of `names` that a file system ignoring case takes for one name, in the
/// order given: each a component of one release, say, and so one directory of a slot.
pub(crate) fn clash<'a>(names: impl IntoIterator<Item = &'a str>) -> Option<(&'a str, &'a str)> {
    let mut seen: Vec<(String, &str)> = Vec::new();
    for name in names {
        let name_folded = folded(name);
        if let Some((_, first)) = seen.iter().find(|(f, _)| *f == name_folded) {
            return Some((first, name));
        }
        seen.push((name_folded, name));
    }
    None
}

/// The characters whose case folding is one other character than their lowercase
/// (Unicode 14: `c.upper().lower() != c.lower()`), sorted, for [`folded`].
const FOLDS: [(char, char); 23] = [
    ('\u{b5}', '\u{3bc}'),
    ('\u{131}', 'i'),
    ('\u{17f}', 's'),
    ('\u{345}', '\u{3b9}'),
    ('\u{3c2}', '\u{3c3}'),
    ('\u{3d0}', '\u{3b2}'),
    ('\u{3d1}', '\u{3b8}'),
    ('\u{3d5}', '\u{3c6}'),
    ('\u{3d6}', '\u{3c0}'),
    ('\u{3f0}', '\u{3ba}'),
    ('\u{3f1}', '\u{3c1}'),
    ('\u{3f5}', '\u{3b5}'),
    ('\u{1c80}', '\u{432}'),
    ('\u{1c81}', '\u{434}'),
    ('\u{1c82}', '\u{43e}'),
    ('\u{1c83}', '\u{441}'),
    ('\u{1c84}', '\u{442}'),
    ('\u{1c85}', '\u{442}'),
    ('\u{1c86}', '\u{44a}'),
    ('\u{1c87}', '\u{463}'),
    ('\u{1c88}', '\u{a64b}'),
    ('\u{1e9b}', '\u{1e61}'),
    ('\u{1fbe}', '\u{3b9}'),
];

#[cfg(test)]
mod tests {
    use super::*;

    /// Every character folds as its uppercase lowercased, where that is one character
    /// (as case-insensitive file systems compare names), and `ß`, `ẞ` and the Latin
    /// ligatures fold to their letters: each row of `FOLDS` and every character outside
    /// it, checked against the standard library's own case tables.
    #[test]
    fn every_character_folds_as_its_uppercase_lowercased() {
        assert!(FOLDS.windows(2).all(|w| w[0].0 < w[1].0), "FOLDS is sorted");
        let several = [
            'ß', '\u{fb00}', '\u{fb01}', '\u{fb02}', '\u{fb03}', '\u{fb04}', '\u{fb05}', '\u{fb06}',
        ];
        let mut checked = 0;
        for c in (0..=0x10ffff).filter_map(char::from_u32) {
            let lowered: String = c.to_uppercase().flat_map(char::to_lowercase).collect();
            if lowered.chars().count() == 1 || several.contains(&c) {
                let want = lowered.replace('ß', "ss");
                assert_eq!(folded(&c.to_string()), want, "U+{:04X}", u32::from(c));
                checked += 1;
            }
        }
        assert!(checked > 1_100_000, "{checked}");
    }
}
