//! Which slot is running, read from the kernel command line.
//!
//! Bootloader scripts pass the slot they picked to the kernel (RAUC's convention is
//! `rauc.slot=A`); that is the only reliable answer to "what is running now", because the
//! environment already describes the *next* boot.

use super::Slot;
use crate::error::{Error, ErrorKind, Result};
use std::path::{Path, PathBuf};

/// The slot named by `key=<slot>` on the kernel command line in `path`.
///
/// The line is split as the kernel splits it (`next_arg` in the kernel's `lib/cmdline.c`):
/// whitespace separates parameters except inside double quotes, a quote around the value
/// (`key="B"`) or the whole parameter (`"key=B"`) is not part of the value, and a bare `--`
/// ends the kernel's parameters (what follows is init's, and is not read). The key matches
/// whole, byte for byte (not with the `-`/`_` equivalence the kernel gives its own
/// parameter names). The file is read as bytes: only the value found has to be text.
///
/// `Ok(None)` when the key is absent or names something other than `A`/`B` in either case
/// (RAUC's rescue slot `R`, for instance). When the key appears more than once the last one
/// counts, as it does for the kernel's own parameters. An unreadable file is an `io` error.
///
/// ```
/// # fn main() -> evergreen::Result<()> {
/// use evergreen::slots::{cmdline::booted_from_cmdline, Slot};
/// let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("cmdline");
/// std::fs::write(&path, "console=ttyS0 root=/dev/sda3 rauc.slot=B quiet\n").unwrap();
/// assert_eq!(booted_from_cmdline(&path, "rauc.slot")?, Some(Slot::B));
/// assert_eq!(booted_from_cmdline(&path, "other.key")?, None);
/// std::fs::write(&path, "rauc.slot=\"A\" dyndbg=\"file x.c rauc.slot=B\" -- rauc.slot=B\n").unwrap();
/// assert_eq!(booted_from_cmdline(&path, "rauc.slot")?, Some(Slot::A));
/// # Ok(()) }
/// ```
pub fn booted_from_cmdline(path: &Path, key: &str) -> Result<Option<Slot>> {
    let line = std::fs::read(path).map_err(|e| {
        Error::new(
            ErrorKind::Io,
            format!(
                "expected to read the kernel command line (for `{key}`, the running slot) from {}, found an error: {e}",
                path.display()
            ),
        )
        .with_source(e)
    })?;
    Ok(last_value(&line, key.as_bytes())
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(Slot::parse))
}

/// The value of the last `key=value` parameter before a bare `--`; a bare `key` (no `=`)
/// is passed over.
fn last_value<'a>(line: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    let mut found = None;
    for (param, value) in Params(line) {
        match value {
            None if param == b"--" => break,
            Some(v) if param == key => found = Some(v),
            _ => {}
        }
    }
    found
}

/// The kernel's `isspace()`: ASCII whitespace and, from its Latin-1 table, 0xa0.
fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r' | 0xa0)
}

/// The parameters of a command line as `(name, value)`, split as the kernel's `next_arg`
/// splits them; `value` is `None` for a parameter without `=`.
struct Params<'a>(&'a [u8]);

impl<'a> Iterator for Params<'a> {
    type Item = (&'a [u8], Option<&'a [u8]>);

    fn next(&mut self) -> Option<Self::Item> {
        let start = self.0.iter().position(|&b| !is_space(b))?;
        let mut args = &self.0[start..];
        // A leading quote opens a quote and is not part of the parameter.
        let quoted = args.first() == Some(&b'"');
        if quoted {
            args = &args[1..];
        }
        let mut in_quote = quoted;
        // The first `=`; one at the very start does not count (`equals == 0` in C).
        let mut equals = None;
        let mut end = args.len();
        for (i, &b) in args.iter().enumerate() {
            if is_space(b) && !in_quote {
                end = i;
                break;
            }
            if equals.is_none() && b == b'=' && i > 0 {
                equals = Some(i);
            }
            if b == b'"' {
                in_quote = !in_quote;
            }
        }
        self.0 = &args[end..];
        let word = &args[..end];
        let strip_last = |s: &'a [u8]| s.strip_suffix(b"\"").unwrap_or(s);
        Some(match equals {
            None => (if quoted { strip_last(word) } else { word }, None),
            Some(eq) => {
                let (param, mut value) = (&word[..eq], &word[eq + 1..]);
                // A quote opening the value, or the parameter, drops the word's last quote.
                let value_quoted = value.first() == Some(&b'"');
                if value_quoted {
                    value = &value[1..];
                }
                if value_quoted || quoted {
                    value = strip_last(value);
                }
                (param, Some(value))
            }
        })
    }
}

/// Where a bootloader selector looks up the running slot: a command-line file and a key.
///
/// The default is RAUC's convention, `/proc/cmdline` with `rauc.slot`. In the config it is
/// `"booted_from": {"cmdline": PATH, "key": "rauc.slot"}`, each field optional.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
#[serde(expecting = "an object with `cmdline` and `key`")]
pub struct BootedFrom {
    /// The file holding the kernel command line, normally `/proc/cmdline`.
    pub cmdline: PathBuf,
    /// The parameter naming the slot, normally `rauc.slot`.
    pub key: String,
}

impl Default for BootedFrom {
    fn default() -> Self {
        BootedFrom {
            cmdline: PathBuf::from("/proc/cmdline"),
            key: "rauc.slot".to_string(),
        }
    }
}

impl BootedFrom {
    /// Reads the running slot (see [`booted_from_cmdline`]).
    pub fn read(&self) -> Result<Option<Slot>> {
        booted_from_cmdline(&self.cmdline, &self.key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmdline(text: &[u8]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cmdline");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    use Slot::{A, B};

    /// (command line, key, slot read).
    const CASES: &[(&[u8], &str, Option<Slot>)] = &[
        // What the parser did before and keeps doing.
        (
            b"console=ttyS0 root=/dev/sda3 rauc.slot=B quiet\n",
            "rauc.slot",
            Some(B),
        ),
        (b"rauc.slot=A", "rauc.slot", Some(A)),
        (b"rauc.slot=a\n", "rauc.slot", Some(A)),
        (b"rauc.slot=b\n", "rauc.slot", Some(B)),
        (b"  rauc.slot=A \t quiet  \n", "rauc.slot", Some(A)),
        (b"quiet\tsplash\trauc.slot=B", "rauc.slot", Some(B)),
        (b"slot=a other=b", "slot", Some(A)),
        (b"", "rauc.slot", None),
        (b"\n", "rauc.slot", None),
        (b"console=ttyS0 quiet\n", "rauc.slot", None),
        (b"rauc.slot=B\n", "other.key", None),
        // The last occurrence counts, whatever it says.
        (b"rauc.slot=a x=1 rauc.slot=b\n", "rauc.slot", Some(B)),
        (b"rauc.slot=B rauc.slot=A\n", "rauc.slot", Some(A)),
        (b"rauc.slot=B rauc.slot=R\n", "rauc.slot", None),
        (b"rauc.slot=A rauc.slot=\n", "rauc.slot", None),
        // A bare key has no value and is passed over.
        (b"rauc.slot=A rauc.slot\n", "rauc.slot", Some(A)),
        (b"rauc.slot\n", "rauc.slot", None),
        // Only a and b, in either case, name a slot; RAUC's rescue slot is neither.
        (b"rauc.slot=R\n", "rauc.slot", None),
        (b"rauc.slot=r\n", "rauc.slot", None),
        (b"rauc.slot=\n", "rauc.slot", None),
        (b"rauc.slot=AB\n", "rauc.slot", None),
        (b"rauc.slot=slotB\n", "rauc.slot", None),
        (b"rauc.slot==B\n", "rauc.slot", None),
        // The key matches whole, never as a prefix or suffix of another.
        (b"rauc.slot=R myrauc.slot=A\n", "rauc.slot", None),
        (b"myrauc.slot=A\n", "rauc.slot", None),
        (b"rauc.slot=B myrauc.slot=A\n", "rauc.slot", Some(B)),
        (b"myrauc.slot=A rauc.slot=B\n", "rauc.slot", Some(B)),
        (
            b"rauc.slot=B rauc.slotx=A rauc.slot.x=A\n",
            "rauc.slot",
            Some(B),
        ),
        (b"RAUC.SLOT=A\n", "rauc.slot", None),
        // Quotes around the value, or the whole parameter, are not part of the value.
        (b"rauc.slot=\"B\"\n", "rauc.slot", Some(B)),
        (b"rauc.slot=\"b\" quiet\n", "rauc.slot", Some(B)),
        (b"\"rauc.slot=B\"\n", "rauc.slot", Some(B)),
        (b"quiet \"rauc.slot=A\" splash\n", "rauc.slot", Some(A)),
        (b"rauc.slot=\"A\" rauc.slot=\"B\"", "rauc.slot", Some(B)),
        (b"rauc.slot=\"A B\"\n", "rauc.slot", None),
        (b"rauc.slot=\"\"\n", "rauc.slot", None),
        // A stray quote stays in the value, as the kernel leaves it.
        (b"rauc.slot=B\"\n", "rauc.slot", None),
        // Spaces inside quotes do not separate parameters.
        (
            b"rauc.slot=B dyndbg=\"file x.c rauc.slot=A\"\n",
            "rauc.slot",
            Some(B),
        ),
        (
            b"rauc.slot=B dyndbg=\"file x.c rauc.slot=A\" quiet\n",
            "rauc.slot",
            Some(B),
        ),
        (
            b"rauc.slot=B foo=\"x rauc.slot=A y\"\n",
            "rauc.slot",
            Some(B),
        ),
        (
            b"rauc.slot=B \"foo=x rauc.slot=A y\"\n",
            "rauc.slot",
            Some(B),
        ),
        (b"\"dyndbg=file x.c\" rauc.slot=A\n", "rauc.slot", Some(A)),
        (b"foo=\"x y\" rauc.slot=A\n", "rauc.slot", Some(A)),
        // An unclosed quote runs to the end of the line.
        (b"rauc.slot=B foo=\"x rauc.slot=A\n", "rauc.slot", Some(B)),
        // A bare `--` ends the kernel's parameters: what follows is init's.
        (b"rauc.slot=B -- rauc.slot=A\n", "rauc.slot", Some(B)),
        (b"rauc.slot=B -- single\n", "rauc.slot", Some(B)),
        (b"quiet -- rauc.slot=A\n", "rauc.slot", None),
        (b"-- rauc.slot=A\n", "rauc.slot", None),
        (b"rauc.slot=B --\n", "rauc.slot", Some(B)),
        // Only a bare `--`: one with a value, or a longer word, is a parameter.
        (b"rauc.slot=B --x rauc.slot=A\n", "rauc.slot", Some(A)),
        (b"rauc.slot=B --=1 rauc.slot=A\n", "rauc.slot", Some(A)),
        (b"rauc.slot=B x=-- rauc.slot=A\n", "rauc.slot", Some(A)),
        (
            b"rauc.slot=B foo=\"a -- b\" rauc.slot=A\n",
            "rauc.slot",
            Some(A),
        ),
        // Bytes that are not UTF-8 elsewhere on the line do not matter.
        (b"root=LABEL=caf\xe9 rauc.slot=B\n", "rauc.slot", Some(B)),
        (b"rauc.slot=A x=\xff\xfe\n", "rauc.slot", Some(A)),
        (b"\xc3\x28=1 rauc.slot=b\n", "rauc.slot", Some(B)),
        // The kernel's isspace() counts 0xa0 (Latin-1 no-break space) as a space.
        (b"x=1\xa0rauc.slot=B\n", "rauc.slot", Some(B)),
        // A value that is not UTF-8 names no slot.
        (b"rauc.slot=\xe9\n", "rauc.slot", None),
        (b"rauc.slot=A rauc.slot=B\xff\n", "rauc.slot", None),
    ];

    #[test]
    fn reads_the_slot_as_the_kernel_splits_the_line() {
        let mut wrong = Vec::new();
        for (text, key, want) in CASES {
            let (_d, p) = cmdline(text);
            let got = booted_from_cmdline(&p, key);
            let ok = matches!(&got, Ok(g) if g == want);
            if !ok {
                wrong.push(format!(
                    "{:?} key {key:?}: expected {want:?}, found {got:?}",
                    String::from_utf8_lossy(text)
                ));
            }
        }
        assert!(
            wrong.is_empty(),
            "{} case(s) wrong:\n{}",
            wrong.len(),
            wrong.join("\n")
        );
    }

    #[test]
    fn booted_from_reads_its_file_and_key() {
        let (_d, p) = cmdline(b"root=/dev/sda3 \"boot.slot=a\" rauc.slot=B\n");
        let from = BootedFrom {
            cmdline: p,
            key: "boot.slot".to_string(),
        };
        assert_eq!(from.read().unwrap(), Some(Slot::A));
    }

    #[test]
    fn missing_file_is_io() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nope");
        let err = booted_from_cmdline(&path, "rauc.slot").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Io);
        let msg = err.message();
        assert!(msg.contains("expected"), "{msg}");
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains("rauc.slot"), "{msg}");
        assert!(msg.contains("found"), "{msg}");
    }

    #[test]
    fn unreadable_file_is_io() {
        let dir = tempfile::tempdir().unwrap();
        let err = booted_from_cmdline(dir.path(), "rauc.slot").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Io);
    }
}
