//! UTC timestamps in RFC 3339, without a calendar dependency.
//!
//! Manifests, roots and the state carry times as RFC 3339 strings. Evergreen only needs
//! whole seconds, UTC arithmetic and fixed offsets (maintenance windows name their own
//! `utc_offset`), so a small civil-date conversion is all it takes.

use crate::error::{Error, ErrorKind, Result};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::sync::Arc;

/// A clock: the system's ([`Timestamp::now`]) or one a host put in its place
/// ([`crate::UpdaterBuilder::clock`]), shared by the updater and its fetcher.
pub(crate) type Clock = Arc<dyn Fn() -> Timestamp + Send + Sync>;

/// The system's clock, as a [`Clock`].
pub(crate) fn system_clock() -> Clock {
    Arc::new(Timestamp::now)
}

/// Seconds since 1970-01-01T00:00:00Z, between 0000-01-01T00:00:00Z and
/// 9999-12-31T23:59:59Z: every timestamp prints as an RFC 3339 time that reads back, so a
/// clock set wildly wrong cannot write a `state.json` that no longer reads. A time outside
/// those years is held at the nearest end.
///
/// ```
/// use evergreen::Timestamp;
/// let t: Timestamp = "2026-11-22T10:00:00Z".parse().unwrap();
/// assert_eq!(t.to_string(), "2026-11-22T10:00:00Z");
/// assert_eq!(t.plus_secs(86_400).to_string(), "2026-11-23T10:00:00Z");
/// let offset: Timestamp = "2026-11-22T11:00:00+01:00".parse().unwrap();
/// assert_eq!(offset, t);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    /// The timestamp `secs` seconds after the Unix epoch (held within years 0–9999).
    ///
    /// ```
    /// use evergreen::Timestamp;
    /// let far = Timestamp::from_unix(i64::MAX);
    /// assert_eq!(far.to_string(), "9999-12-31T23:59:59Z");
    /// assert_eq!(far.to_string().parse::<Timestamp>().unwrap(), far);
    /// ```
    pub const fn from_unix(secs: i64) -> Timestamp {
        Timestamp(if secs < FIRST {
            FIRST
        } else if secs > LAST {
            LAST
        } else {
            secs
        })
    }

    /// Seconds since the Unix epoch.
    pub const fn unix(self) -> i64 {
        self.0
    }

    /// The system clock, now.
    pub fn now() -> Timestamp {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Timestamp::from_unix(i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
    }

    /// This time plus `secs` seconds (negative goes back), held within years 0–9999.
    pub const fn plus_secs(self, secs: i64) -> Timestamp {
        Timestamp::from_unix(self.0.saturating_add(secs))
    }

    /// This time plus `days` days.
    pub const fn plus_days(self, days: i64) -> Timestamp {
        self.plus_secs(days.saturating_mul(86_400))
    }

    /// How long after `now` this time comes; zero when it has come. For a host that
    /// sleeps until [`Updater::next_check`](crate::Updater::next_check) on a timer of its
    /// own.
    ///
    /// ```
    /// use evergreen::Timestamp;
    /// use std::time::Duration;
    /// let now: Timestamp = "2026-11-22T10:00:00Z".parse().unwrap();
    /// let due = now.plus_secs(90);
    /// assert_eq!(due.wait_from(now), Duration::from_secs(90));
    /// assert_eq!(now.wait_from(due), Duration::ZERO);
    /// // std::thread::sleep(updater.next_check()?.wait_from(Timestamp::now()));
    /// ```
    pub fn wait_from(self, now: Timestamp) -> std::time::Duration {
        std::time::Duration::from_secs(self.0.saturating_sub(now.0).max(0).unsigned_abs())
    }

    /// Day of the week, 0 = Monday … 6 = Sunday, of this time shifted by `offset_secs`.
    pub fn weekday(self, offset_secs: i64) -> u32 {
        // 1970-01-01 was a Thursday (index 3).
        (self.0.saturating_add(offset_secs).div_euclid(86_400) + 3).rem_euclid(7) as u32
    }

    /// Seconds since local midnight, for a local time `offset_secs` ahead of UTC.
    pub fn seconds_of_day(self, offset_secs: i64) -> u32 {
        self.0.saturating_add(offset_secs).rem_euclid(86_400) as u32
    }
}

// Howard Hinnant's days-from-civil algorithm, proleptic Gregorian calendar.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Parses a `+HH:MM` / `-HH:MM` / `Z` offset into seconds east of UTC.
pub(crate) fn parse_offset(s: &str) -> Option<i64> {
    if s == "Z" || s == "z" {
        return Some(0);
    }
    let b = s.as_bytes();
    if b.len() != 6 || b[3] != b':' {
        return None;
    }
    let sign = match b[0] {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let h = digits(&s[1..3])?;
    let m = digits(&s[4..6])?;
    if h > 23 || m > 59 {
        return None;
    }
    Some(sign * (h as i64 * 3600 + m as i64 * 60))
}

fn digits(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn parse_rfc3339(s: &str) -> Option<Timestamp> {
    let b = s.as_bytes();
    // ASCII up to the seconds, so every slice below falls on a character boundary.
    if b.len() < 20 || !b[..19].is_ascii() {
        return None;
    }
    if b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let date = (
        digits(&s[0..4])? as i64,
        digits(&s[5..7])?,
        digits(&s[8..10])?,
    );
    let sec = digits(&s[17..19])?;
    let secs = civil_secs(date, (digits(&s[11..13])?, digits(&s[14..16])?, sec))?;
    let mut rest = &s[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let n = frac.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 {
            return None;
        }
        rest = &frac[n..];
    }
    let offset = parse_offset(rest)?;
    // An offset can carry a time across year 0 or 9999; such a time would print as a
    // year that does not parse back (state.json and re-signed manifests must round-trip).
    let t = secs - offset;
    // A leap second is inserted at the end of a UTC day only (RFC 3339 §5.7), and reads
    // as its 59th second.
    if sec == 60 && t.rem_euclid(86_400) != 86_399 {
        return None;
    }
    (FIRST..=LAST).contains(&t).then_some(Timestamp(t))
}

/// Parses an HTTP date in any of the three forms a recipient must accept (RFC 9110
/// §5.6.7), as `Retry-After` and `Date` carry it: IMF-fixdate (`Sun, 06 Nov 1994 08:49:37
/// GMT`), and the obsolete RFC 850 (`Sunday, 06-Nov-94 08:49:37 GMT`) and asctime (`Sun
/// Nov  6 08:49:37 1994`) forms. An RFC 850 year of two digits more than 50 years after
/// `now` is the most recent past year with those digits, as the RFC says.
pub(crate) fn parse_http_date(s: &str, now: Timestamp) -> Option<Timestamp> {
    if !s.is_ascii() {
        return None;
    }
    let b = s.as_bytes();
    let (date, time) = match b.len() {
        // Sun, 06 Nov 1994 08:49:37 GMT
        29 if &s[3..5] == ", " && b[7] == b' ' && b[11] == b' ' && b[16] == b' ' => {
            let date = (digits(&s[12..16])?, month(&s[8..11])?, digits(&s[5..7])?);
            (date, clock_then(&s[17..], " GMT")?)
        }
        // Nov  6 08:49:37 1994, after `Sun `
        24 if b[3] == b' ' && b[7] == b' ' && b[10] == b' ' && b[19] == b' ' => {
            // The day is space-padded (` 6`), or two digits.
            let day = digits(&s[8 + usize::from(b[8] == b' ')..10])?;
            let date = (digits(&s[20..24])?, month(&s[4..7])?, day);
            (date, clock_then(&s[11..20], " ")?)
        }
        // 06-Nov-94 08:49:37 GMT, after `Sunday, `
        _ => {
            let (_, rest) = s.split_once(", ")?;
            let r = rest.as_bytes();
            if r.len() != 22 || r[2] != b'-' || r[6] != b'-' || r[9] != b' ' {
                return None;
            }
            let (month, day) = (month(&rest[3..6])?, digits(&rest[0..2])?);
            let time = clock_then(&rest[10..], " GMT")?;
            // RFC 9110: a time more than 50 years ahead is the past year with those digits.
            let year = two_digit_year(digits(&rest[7..9])?, now);
            let ahead = civil_secs((i64::from(year), month, day), time)?;
            let limit = now.0.saturating_add(50 * 31_556_952);
            (
                (
                    year.saturating_sub(100 * u32::from(ahead > limit)),
                    month,
                    day,
                ),
                time,
            )
        }
    };
    let t = civil_secs((i64::from(date.0), date.1, date.2), time)?;
    // As in RFC 3339: a leap second ends a UTC day, nowhere else.
    (time.2 != 60 || t.rem_euclid(86_400) == 86_399).then_some(Timestamp(t))
}

/// The month of its English abbreviation (`Jan` is 1).
fn month(s: &str) -> Option<u32> {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    MONTHS.iter().position(|m| *m == s).map(|i| i as u32 + 1)
}

/// `HH:MM:SS` then exactly `end`.
fn clock_then(s: &str, end: &str) -> Option<(u32, u32, u32)> {
    let b = s.as_bytes();
    if b.len() != 8 + end.len() || b[2] != b':' || b[5] != b':' || &s[8..] != end {
        return None;
    }
    Some((digits(&s[0..2])?, digits(&s[3..5])?, digits(&s[6..8])?))
}

/// The year in the century of `now` that ends in the two digits `yy`.
fn two_digit_year(yy: u32, now: Timestamp) -> u32 {
    let this = civil_from_days(now.0.div_euclid(86_400)).0 as u32;
    this - this % 100 + yy
}

/// Seconds since the epoch of a UTC date and time read from text, `None` when they name
/// no such moment. A leap second (`:60`) reads as second 59.
fn civil_secs((year, month, day): (i64, u32, u32), (h, mi, sec): (u32, u32, u32)) -> Option<i64> {
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return None;
    }
    if h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    Some(
        days_from_civil(year, month, day) * 86_400
            + i64::from(h) * 3600
            + i64::from(mi) * 60
            + i64::from(sec.min(59)),
    )
}

/// 0000-01-01T00:00:00Z and 9999-12-31T23:59:59Z: the times with a four-digit year.
const FIRST: i64 = -62_167_219_200;
const LAST: i64 = 253_402_300_799;

/// The same second as a [`SystemTime`](std::time::SystemTime).
///
/// ```
/// use evergreen::Timestamp;
/// use std::time::{Duration, SystemTime, UNIX_EPOCH};
/// let t = Timestamp::from_unix(1_800_000_000);
/// assert_eq!(SystemTime::from(t), UNIX_EPOCH + Duration::from_secs(1_800_000_000));
/// assert_eq!(Timestamp::from(SystemTime::from(t)), t);
/// ```
impl From<Timestamp> for std::time::SystemTime {
    fn from(t: Timestamp) -> std::time::SystemTime {
        let epoch = std::time::UNIX_EPOCH;
        let secs = std::time::Duration::from_secs(t.0.unsigned_abs());
        match t.0 >= 0 {
            true => epoch + secs,
            false => epoch - secs,
        }
    }
}

/// The whole second of a [`SystemTime`](std::time::SystemTime) (rounded down), held
/// within years 0–9999.
impl From<std::time::SystemTime> for Timestamp {
    fn from(t: std::time::SystemTime) -> Timestamp {
        let secs = match t.duration_since(std::time::UNIX_EPOCH) {
            Ok(after) => i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
            Err(before) => {
                let d = before.duration();
                let whole = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
                // Rounded down: 0.5 s before the epoch is second -1.
                whole.saturating_neg() - i64::from(d.subsec_nanos() > 0)
            }
        };
        Timestamp::from_unix(secs)
    }
}

impl std::str::FromStr for Timestamp {
    type Err = Error;
    fn from_str(s: &str) -> Result<Timestamp> {
        parse_rfc3339(s).ok_or_else(|| {
            Error::new(
                ErrorKind::Config,
                format!("expected an RFC 3339 time like 2026-11-22T10:00:00Z, found {s:?}"),
            )
        })
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let days = self.0.div_euclid(86_400);
        let secs = self.0.rem_euclid(86_400);
        let (y, m, d) = civil_from_days(days);
        write!(
            f,
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
            secs / 3600,
            secs / 60 % 60,
            secs % 60
        )
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Timestamp, D::Error> {
        // A visitor rather than a `String` or `Cow`: serde's `Cow<str>` always allocates,
        // and a 1,000-release manifest holds a thousand times.
        d.deserialize_str(TimestampVisitor)
    }
}

struct TimestampVisitor;

impl serde::de::Visitor<'_> for TimestampVisitor {
    type Value = Timestamp;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an RFC 3339 time like 2026-11-22T10:00:00Z")
    }

    fn visit_str<E: serde::de::Error>(self, s: &str) -> std::result::Result<Timestamp, E> {
        parse_rfc3339(s).ok_or_else(|| {
            E::custom(format!(
                "expected an RFC 3339 time like 2026-11-22T10:00:00Z, found {s:?}"
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_before_the_epoch_convert_to_and_from_system_time() {
        use std::time::{Duration, SystemTime, UNIX_EPOCH};
        let half_before = UNIX_EPOCH - Duration::from_millis(500);
        assert_eq!(Timestamp::from(half_before), Timestamp::from_unix(-1));
        let before = Timestamp::from_unix(-86_400);
        assert_eq!(
            SystemTime::from(before),
            UNIX_EPOCH - Duration::from_secs(86_400)
        );
        assert_eq!(Timestamp::from(SystemTime::from(before)), before);
        let first = Timestamp::from_unix(i64::MIN);
        assert_eq!(Timestamp::from(SystemTime::from(first)), first);
    }

    #[test]
    fn http_dates_in_all_three_forms() {
        let now: Timestamp = "2026-12-03T18:00:00Z".parse().unwrap();
        let t = |s: &str| parse_http_date(s, now).map(|t| t.to_string());
        for (text, time) in [
            ("Sun, 06 Nov 1994 08:49:37 GMT", "1994-11-06T08:49:37Z"),
            ("Thu, 03 Dec 2026 23:59:60 GMT", "2026-12-03T23:59:59Z"),
            ("Sunday, 06-Nov-94 08:49:37 GMT", "1994-11-06T08:49:37Z"),
            ("Wednesday, 09-Dec-26 08:49:37 GMT", "2026-12-09T08:49:37Z"),
            // 50 years (of 365.2425 days) after 2026-12-03T18:00:00Z is 2076-12-02T21:00:00Z:
            // up to then this century, after it the last.
            ("Wednesday, 02-Dec-76 21:00:00 GMT", "2076-12-02T21:00:00Z"),
            ("Wednesday, 02-Dec-76 21:00:01 GMT", "1976-12-02T21:00:01Z"),
            ("Friday, 31-Dec-76 23:59:59 GMT", "1976-12-31T23:59:59Z"),
            ("Saturday, 01-Jan-77 00:00:00 GMT", "1977-01-01T00:00:00Z"),
            ("Sun Nov  6 08:49:37 1994", "1994-11-06T08:49:37Z"),
            ("Thu Dec 03 18:00:01 2026", "2026-12-03T18:00:01Z"),
        ] {
            assert_eq!(t(text).as_deref(), Some(time), "{text:?}");
        }
        for bad in [
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "Sun, 31 Nov 1994 08:49:37 GMT",
            "Sun, 06 Now 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 24:49:37 GMT",
            "Sun, 06 Nov 1994 08:49:37 GMT ",
            "Sun, 06 Nov 1994 08:49:60 GMT", // a leap second, but not at the day's end
            "Sun, 0é Nov 1994 08:49:37 GMT",
            "Sunday, 06-Nov-1994 08:49:37 GMT",
            "Sunday, 06-Nov-94 08:49:37 UTC",
            "Sunday, 06 Nov 94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 94",
            "Sun Nov 6 08:49:37 1994",
            "Sun Nov  6 08:49:37 1994 ",
            "Sun Nov  6 8:49:37  1994",
            "Sun Feb 30 08:49:37 1994",
            "120",
            "",
        ] {
            assert_eq!(t(bad), None, "{bad:?}");
        }
    }

    /// A host clock set past year 9999 (or before year 0) must not write a time that
    /// `state.json` cannot read back.
    #[test]
    fn times_past_the_four_digit_years_are_held_at_the_ends_and_round_trip() {
        let now = Timestamp::now();
        for t in [
            Timestamp::from_unix(i64::MAX),
            Timestamp::from_unix(i64::MIN),
            Timestamp::from_unix(LAST + 1),
            now.plus_secs(i64::MAX),
            now.plus_days(-4_000_000),
            Timestamp::from_unix(LAST).plus_secs(1),
        ] {
            let text = t.to_string();
            assert_eq!(text.parse::<Timestamp>().unwrap(), t, "{text}");
            let json = serde_json::to_string(&t).unwrap();
            assert_eq!(serde_json::from_str::<Timestamp>(&json).unwrap(), t);
        }
        assert_eq!(Timestamp::from_unix(LAST + 1).unix(), LAST);
        assert_eq!(
            Timestamp::from_unix(i64::MIN).to_string(),
            "0000-01-01T00:00:00Z"
        );
    }

    #[test]
    fn round_trips_across_eras() {
        for secs in [-86_400 * 366, 0, 951_782_400, 1_709_164_800, 4_102_444_800] {
            let t = Timestamp(secs);
            assert_eq!(t.to_string().parse::<Timestamp>().unwrap(), t);
        }
        assert_eq!(
            "2024-02-29T00:00:00Z".parse::<Timestamp>().unwrap().unix(),
            1_709_164_800
        );
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "2026-11-22",
            "2026-13-01T00:00:00Z",
            "2026-02-30T00:00:00Z",
            "2026-11-22T10:00:00",
            "2026-11-22T25:00:00Z",
            // offsets beyond 23:59
            "2026-11-22T10:00:00+24:00",
            "2026-11-22T10:00:00-24:00",
            "2026-11-22T10:00:00+01:60",
            "2026-11-22T10:00:00+1:00",
            "2026-11-22T10:00:00.Z",
            // a multi-byte character where the seconds end (a slice off a char boundary)
            "2026-11-22T10:00:0\u{e9}Z",
            // offsets that carry the time outside the four-digit years
            "9999-12-31T23:00:00-01:00",
            "0000-01-01T00:00:00+01:00",
            // a leap second anywhere but at the end of a UTC day
            "2026-11-22T10:05:60Z",
            "2016-12-31T23:59:60+01:00",
        ] {
            assert!(bad.parse::<Timestamp>().is_err(), "{bad}");
        }
        assert!("2026-11-22T10:00:00.123Z".parse::<Timestamp>().is_ok());
        for edge in ["0000-01-01T00:00:00Z", "9999-12-31T23:59:59Z"] {
            let t: Timestamp = edge.parse().unwrap();
            assert_eq!(t.to_string(), edge);
        }
        // the widest offsets there are, each way
        for (at, utc) in [
            ("2026-11-22T23:59:00+23:59", "2026-11-22T00:00:00Z"),
            ("2026-11-22T00:00:00-23:59", "2026-11-22T23:59:00Z"),
        ] {
            let t: Timestamp = at.parse().unwrap();
            assert_eq!(t.to_string(), utc, "{at}");
        }
        for leap in ["2016-12-31T23:59:60Z", "2016-12-31T15:59:60-08:00"] {
            let t: Timestamp = leap.parse().unwrap();
            assert_eq!(t.to_string(), "2016-12-31T23:59:59Z", "{leap}");
        }
    }

    #[test]
    fn reads_from_json_with_or_without_escapes_and_names_what_it_found() {
        let t: Timestamp = serde_json::from_str(r#""2026-11-22T10:00:00Z""#).unwrap();
        assert_eq!(t.to_string(), "2026-11-22T10:00:00Z");
        let escaped: Timestamp = serde_json::from_str(r#""2026-11-22\u005410:00:00Z""#).unwrap();
        assert_eq!(escaped, t);
        let from_reader: Timestamp =
            serde_json::from_reader(&br#""2026-11-22T10:00:00Z""#[..]).unwrap();
        assert_eq!(from_reader, t);
        let err = serde_json::from_str::<Timestamp>(r#""yesterday""#).unwrap_err();
        assert!(err.to_string().contains(r#"found "yesterday""#), "{err}");
        let err = serde_json::from_str::<Timestamp>("1764000000").unwrap_err();
        assert!(
            err.to_string().contains("expected an RFC 3339 time"),
            "{err}"
        );
    }

    #[test]
    fn weekday_and_time_of_day() {
        let t: Timestamp = "2026-11-23T01:30:00Z".parse().unwrap(); // a Monday
        assert_eq!(t.weekday(0), 0);
        assert_eq!(t.weekday(-2 * 3600), 6); // still Sunday at UTC-2
        assert_eq!(t.seconds_of_day(3600), 2 * 3600 + 1800);
        // A host clock at the ends of the range saturates instead of overflowing.
        for t in [Timestamp(i64::MAX), Timestamp(i64::MIN)] {
            assert!(t.weekday(14 * 3600) < 7 && t.weekday(-14 * 3600) < 7);
            assert!(t.seconds_of_day(14 * 3600) < 86_400);
        }
    }
}
