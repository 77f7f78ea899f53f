//! The one error type of Evergreen.
//!
//! Every failure carries a stable [`ErrorKind`] whose name (`kind().as_str()`) is the
//! same in Rust, in the C ABI (`EVG_<NAME>`) and in the CLI's `error[<name>]` line, and a
//! message that says what was expected and what was found. A message is always one line
//! of text that a terminal or a log shows as it is: see [`one_line`].

use std::borrow::Cow;
use std::fmt;
use std::path::Path;
use std::time::Duration;

/// The stable category of an [`Error`]. The names never change; new kinds may be added.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The configuration (or a call's arguments) is invalid.
    Config,
    /// A local file-system operation failed.
    Io,
    /// A connection could not be made or broke.
    Network,
    /// The server did not answer within the configured timeout.
    Timeout,
    /// The server sent data slower than the configured minimum speed.
    SlowRetrieval,
    /// The server answered with an unexpected HTTP status.
    HttpStatus,
    /// The requested document or artifact does not exist on the server.
    NotFound,
    /// A signature is malformed or does not verify.
    Signature,
    /// Fewer distinct trusted keys signed than the threshold requires.
    Threshold,
    /// Signed metadata has expired.
    Expired,
    /// Signed metadata is older than what this device has already seen.
    MetadataRollback,
    /// Signed metadata is for another product, channel or document type.
    WrongMetadata,
    /// A document or artifact is larger than allowed or declared.
    TooLarge,
    /// Downloaded or installed bytes do not have the declared SHA-256.
    HashMismatch,
    /// An archive contains an entry that could escape or exhaust the slot.
    UnsafeArchive,
    /// The requested version is not in the channel.
    NoSuchVersion,
    /// The release has nothing for this device's target.
    IncompatibleTarget,
    /// The release's security version is below the device's anti-rollback floor.
    SecurityFloor,
    /// The operation is not valid in the current state (e.g. activate with nothing installed).
    InvalidState,
    /// Reading or writing the boot selector (GRUB / U-Boot environment, symlink) failed.
    Bootloader,
    /// The operation was cancelled by the host.
    Cancelled,
}

impl ErrorKind {
    /// Every kind, in the order of their stable numeric codes (1, 2, …).
    pub const ALL: [ErrorKind; 21] = [
        ErrorKind::Config,
        ErrorKind::Io,
        ErrorKind::Network,
        ErrorKind::Timeout,
        ErrorKind::SlowRetrieval,
        ErrorKind::HttpStatus,
        ErrorKind::NotFound,
        ErrorKind::Signature,
        ErrorKind::Threshold,
        ErrorKind::Expired,
        ErrorKind::MetadataRollback,
        ErrorKind::WrongMetadata,
        ErrorKind::TooLarge,
        ErrorKind::HashMismatch,
        ErrorKind::UnsafeArchive,
        ErrorKind::NoSuchVersion,
        ErrorKind::IncompatibleTarget,
        ErrorKind::SecurityFloor,
        ErrorKind::InvalidState,
        ErrorKind::Bootloader,
        ErrorKind::Cancelled,
    ];

    /// The stable snake_case name, e.g. `"hash_mismatch"`.
    ///
    /// ```
    /// assert_eq!(evergreen::ErrorKind::SlowRetrieval.as_str(), "slow_retrieval");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Config => "config",
            ErrorKind::Io => "io",
            ErrorKind::Network => "network",
            ErrorKind::Timeout => "timeout",
            ErrorKind::SlowRetrieval => "slow_retrieval",
            ErrorKind::HttpStatus => "http_status",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Signature => "signature",
            ErrorKind::Threshold => "threshold",
            ErrorKind::Expired => "expired",
            ErrorKind::MetadataRollback => "metadata_rollback",
            ErrorKind::WrongMetadata => "wrong_metadata",
            ErrorKind::TooLarge => "too_large",
            ErrorKind::HashMismatch => "hash_mismatch",
            ErrorKind::UnsafeArchive => "unsafe_archive",
            ErrorKind::NoSuchVersion => "no_such_version",
            ErrorKind::IncompatibleTarget => "incompatible_target",
            ErrorKind::SecurityFloor => "security_floor",
            ErrorKind::InvalidState => "invalid_state",
            ErrorKind::Bootloader => "bootloader",
            ErrorKind::Cancelled => "cancelled",
        }
    }

    /// The stable numeric code used by the C ABI (`evg_status`): 1-based, never reused.
    ///
    /// ```
    /// assert_eq!(evergreen::ErrorKind::Config.code(), 1);
    /// ```
    pub fn code(self) -> i32 {
        ErrorKind::ALL
            .iter()
            .position(|k| *k == self)
            .map_or(0, |i| i as i32 + 1)
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An Evergreen error: a stable [`ErrorKind`] plus a message naming what was expected and
/// what was found.
///
/// The message is one line without control characters ([`one_line`]): it may quote
/// words from outside (a server's, a publisher's, a file's), and hosts print it to
/// terminals and logs as it is.
///
/// ```
/// use evergreen::{Error, ErrorKind};
/// let e = Error::new(ErrorKind::HashMismatch, "blob abc: expected sha256 00.., found 11..");
/// assert_eq!(e.kind(), ErrorKind::HashMismatch);
/// assert_eq!(e.to_string(), "blob abc: expected sha256 00.., found 11..");
/// ```
pub struct Error(Box<Inner>);

/// What an [`Error`] holds, behind one pointer: a `Result` of any type then carries eight
/// bytes for its error, not 64, in every function that returns one. The copies and stack
/// moves of the whole error took 75 KB of the smallest library (1,076,376 → 1,001,880
/// bytes). An error allocates its message anyway; one allocation more is nothing.
struct Inner {
    kind: ErrorKind,
    message: String,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
    /// How long a server asked not to be asked again (`Retry-After`), from when the error
    /// was made: a failed check records it for the poll schedule (DESIGN §5.3).
    retry_after: Option<Duration>,
}

/// As the `Error` was shown before its fields were boxed; `retry_after` only when set.
impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.0.kind)
            .field("message", &self.0.message)
            .field("source", &self.0.source);
        if let Some(wait) = &self.0.retry_after {
            d.field("retry_after", &Some(wait));
        }
        d.finish()
    }
}

impl Error {
    /// A new error of `kind` with `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Error {
        Error(Box::new(Inner {
            kind,
            message: shown(message.into()),
            source: None,
            retry_after: None,
        }))
    }

    /// Attaches the underlying cause, for `source()` (which leaves it out when the
    /// message quotes it already).
    pub fn with_source(
        mut self,
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Error {
        self.0.source = Some(source.into());
        self
    }

    /// An [`ErrorKind::Io`] error for an operation on `path`.
    pub fn io(what: &str, path: &Path, err: std::io::Error) -> Error {
        Error::new(ErrorKind::Io, format!("{what} {}: {err}", path.display())).with_source(err)
    }

    /// An [`ErrorKind::Config`] error.
    pub fn config(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Config, message)
    }

    /// An [`ErrorKind::InvalidState`] error.
    pub fn invalid_state(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::InvalidState, message)
    }

    /// The stable kind of this error.
    pub fn kind(&self) -> ErrorKind {
        self.0.kind
    }

    /// The message alone (what was expected and what was found).
    pub fn message(&self) -> &str {
        &self.0.message
    }

    /// The same error, saying that a server asked to be left alone for `wait` from now.
    pub(crate) fn with_retry_after(mut self, wait: Duration) -> Error {
        self.0.retry_after = Some(wait);
        self
    }

    /// How long from when this error was made a server asked not to be asked again
    /// (`Retry-After`, however long); `None` when no server asked.
    pub(crate) fn retry_after(&self) -> Option<Duration> {
        self.0.retry_after
    }

    /// The file-system error this one reports ([`Error::io`]), if it was one.
    pub(crate) fn io_source(&self) -> Option<&std::io::Error> {
        self.0.source.as_deref()?.downcast_ref()
    }

    /// The same error with `context: ` put in front of its message.
    pub fn context(mut self, context: impl fmt::Display) -> Error {
        self.0.message = shown(format!("{context}: {}", self.0.message));
        self
    }

    /// The same error with its message rewritten by `f` (kind, source and wait kept).
    pub(crate) fn map_message(mut self, f: impl FnOnce(&str) -> String) -> Error {
        self.0.message = shown(f(&self.0.message));
        self
    }

    /// The same error with ` (hint)` after its message: what the user may have got wrong.
    pub(crate) fn hint(mut self, hint: impl fmt::Display) -> Error {
        self.0.message = shown(format!("{} ({hint})", self.0.message));
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.message)
    }
}

/// `source()` is the cause attached ([`Error::with_source`]) unless the message already
/// quotes it, as most do (the CLI and the C ABI show the message alone): a report that
/// prints every cause after the message (`anyhow`'s `{:#}`) would say it twice.
impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        let cause = self.0.source.as_deref()?;
        (!self.0.message.contains(cause.to_string().as_str()))
            .then_some(cause as &(dyn std::error::Error + 'static))
    }
}

/// `text`, which may hold words from outside Evergreen (a server's, a publisher's, a
/// file's), as part of one line for a terminal or a log: each control character (a
/// newline, CR, ESC, BEL, backspace, NUL, DEL, the C1 controls) is shown escaped as Rust
/// writes it (`\n`, `\u{1b}`), and so is each line or paragraph separator and
/// bidirectional override (`\u{202e}`), so that the text can neither start a line that
/// reads as another (`error[…]`) nor drive the terminal. Every [`Error`]'s message is
/// made so; text without such characters comes back borrowed, unchanged.
///
/// ```
/// use evergreen::error::one_line;
/// assert_eq!(one_line("1.0.0\n\u{1b}[2Jerror[ok]"), r"1.0.0\n\u{1b}[2Jerror[ok]");
/// assert_eq!(one_line("naïve: C:\\tmp"), "naïve: C:\\tmp");
/// ```
pub fn one_line(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut shown = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            c if c.is_control() => shown.extend(c.escape_debug()),
            c if needs_escape(c) => shown.extend(c.escape_unicode()),
            c => shown.push(c),
        }
    }
    Cow::Owned(shown)
}

/// Whether [`one_line`] shows `c` escaped.
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `message` as an [`Error`] keeps it: as [`one_line`] shows it, the same `String` when
/// nothing in it needs escaping.
fn shown(message: String) -> String {
    match one_line(&message) {
        Cow::Borrowed(_) => message,
        Cow::Owned(escaped) => escaped,
    }
}

/// Shorthand for `Result<T, evergreen::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `Result` in the library carries an `Error`: one pointer, so that the `Ok`
    /// side decides the size (see [`Inner`]).
    #[test]
    fn an_error_is_one_pointer() {
        assert_eq!(std::mem::size_of::<Error>(), std::mem::size_of::<usize>());
        assert_eq!(
            std::mem::size_of::<Result<()>>(),
            std::mem::size_of::<usize>()
        );
    }

    /// `{:?}` shows an `Error` as it did before its fields were boxed (what `unwrap` and
    /// `expect` print, and hosts log): named `Error`, not the private type behind it.
    #[test]
    fn an_error_debugs_as_an_error() {
        let e = Error::new(ErrorKind::Io, "disk on fire");
        assert_eq!(
            format!("{e:?}"),
            r#"Error { kind: Io, message: "disk on fire", source: None }"#
        );
        let e = e.with_retry_after(Duration::from_secs(5));
        assert_eq!(
            format!("{e:?}"),
            r#"Error { kind: Io, message: "disk on fire", source: None, retry_after: Some(5s) }"#
        );
    }

    /// Whatever makes or extends a message (`new`, `io`, `context`, `hint`,
    /// `map_message`), what it quotes from outside ends on one line with its controls,
    /// separators and overrides escaped; a message without them is kept as it is.
    #[test]
    fn every_message_is_one_line_without_controls() {
        let outside = "a\nb\r\u{1b}[2K\u{7}\0\u{7f}\u{9b}\u{2028}\u{202e}\u{2066}\t";
        let escaped = r"a\nb\r\u{1b}[2K\u{7}\0\u{7f}\u{9b}\u{2028}\u{202e}\u{2066}\t";
        let made = [
            Error::new(ErrorKind::Io, outside),
            Error::io(
                "open",
                Path::new(outside),
                std::io::ErrorKind::NotFound.into(),
            ),
            Error::new(ErrorKind::Io, "x").context(outside),
            Error::new(ErrorKind::Io, "x").hint(outside),
            Error::new(ErrorKind::Io, "x").map_message(|m| format!("{m} {outside}")),
        ];
        for e in made {
            assert!(!e.message().contains(char::is_control), "{e:?}");
            assert!(e.message().contains(escaped), "{e:?}");
            assert_eq!(e.to_string(), e.message());
        }
        let plain = "naïve path C:\\x, quoted \"ok\" \u{1F600}";
        assert_eq!(Error::config(plain).message(), plain);
        assert!(matches!(one_line(plain), Cow::Borrowed(_)));
    }

    #[test]
    fn names_and_codes_are_stable() {
        let names: Vec<&str> = ErrorKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "config",
                "io",
                "network",
                "timeout",
                "slow_retrieval",
                "http_status",
                "not_found",
                "signature",
                "threshold",
                "expired",
                "metadata_rollback",
                "wrong_metadata",
                "too_large",
                "hash_mismatch",
                "unsafe_archive",
                "no_such_version",
                "incompatible_target",
                "security_floor",
                "invalid_state",
                "bootloader",
                "cancelled"
            ]
        );
        for (i, k) in ErrorKind::ALL.iter().enumerate() {
            assert_eq!(k.code(), i as i32 + 1);
        }
    }
}
