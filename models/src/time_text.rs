//! The text forms of dates and timestamps that every store and the serde
//! form use: `YYYY-MM-DD`, and RFC 3339 in UTC with milliseconds
//! (`2026-03-01T09:30:00.000Z`, the fraction truncated as chrono's
//! `SecondsFormat::Millis` does).
//!
//! Written digit by digit for years 0 to 9999: chrono's general formatter
//! cost more than the rest of encoding an entity (profiled in the
//! benchmarks of issue 6). Other years, and leap seconds, go through chrono,
//! so the text is always exactly chrono's.

use std::fmt;

use chrono::{DateTime, Datelike as _, NaiveDate, SecondsFormat, Timelike as _, Utc};

/// A date or timestamp as text, on the stack.
#[derive(Clone, Copy)]
pub struct TimeText {
    buf: [u8; 40],
    len: usize,
}

impl TimeText {
    /// The text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        // Only ASCII digits and punctuation, or chrono's own text, are
        // written, so this never fails.
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or_default()
    }

    fn new() -> Self {
        TimeText {
            buf: [0; 40],
            len: 0,
        }
    }

    fn push(&mut self, b: u8) {
        if let Some(slot) = self.buf.get_mut(self.len) {
            *slot = b;
            self.len += 1;
        }
    }

    /// `value` as exactly `width` decimal digits (`value` < 10^width).
    fn digits(&mut self, value: u32, width: u32) {
        for p in (0..width).rev() {
            let d = (value / 10u32.pow(p)) % 10;
            self.push(b'0' + u8::try_from(d).unwrap_or(0));
        }
    }

    fn date(&mut self, d: &NaiveDate) {
        self.digits(d.year().unsigned_abs(), 4);
        self.push(b'-');
        self.digits(d.month(), 2);
        self.push(b'-');
        self.digits(d.day(), 2);
    }
}

impl fmt::Write for TimeText {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len + s.len();
        let slot = self.buf.get_mut(self.len..end).ok_or(fmt::Error)?;
        slot.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

impl std::ops::Deref for TimeText {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Display for TimeText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for TimeText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

/// `YYYY-MM-DD` (chrono's `%Y-%m-%d`).
#[must_use]
pub fn date_text(d: &NaiveDate) -> TimeText {
    let mut out = TimeText::new();
    if (0..=9999).contains(&d.year()) {
        out.date(d);
    } else {
        let _ = fmt::Write::write_fmt(&mut out, format_args!("{}", d.format("%Y-%m-%d")));
    }
    out
}

/// RFC 3339 in UTC with milliseconds, `Z` for the zone (chrono's
/// `to_rfc3339_opts(SecondsFormat::Millis, true)`).
#[must_use]
pub fn timestamp_text(t: &DateTime<Utc>) -> TimeText {
    let mut out = TimeText::new();
    let nanos = t.nanosecond();
    if (0..=9999).contains(&t.year()) && nanos < 1_000_000_000 {
        out.date(&t.date_naive());
        out.push(b'T');
        out.digits(t.hour(), 2);
        out.push(b':');
        out.digits(t.minute(), 2);
        out.push(b':');
        out.digits(t.second(), 2);
        out.push(b'.');
        out.digits(nanos / 1_000_000, 3);
        out.push(b'Z');
    } else {
        let _ = fmt::Write::write_str(&mut out, &t.to_rfc3339_opts(SecondsFormat::Millis, true));
    }
    out
}

/// Reads RFC 3339 text (what serde writes for a `DateTime` and what
/// [`timestamp_text`] writes) as chrono's `DateTime::parse_from_rfc3339`
/// does, in UTC. The forms serde and the stores write,
/// `YYYY-MM-DDTHH:MM:SS[.fraction]Z`, are read digit by digit; anything
/// else (an offset, a space for `T`, a leap second...) goes to chrono, so
/// the answer is always chrono's.
#[must_use]
pub fn parse_timestamp(s: &str) -> Option<DateTime<Utc>> {
    fast_timestamp(s.as_bytes()).or_else(|| {
        DateTime::parse_from_rfc3339(s)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    })
}

/// Reads `YYYY-MM-DD` as chrono's `NaiveDate::parse_from_str(s,
/// "%Y-%m-%d")` does: exactly that form digit by digit, anything else
/// through chrono.
#[must_use]
pub fn parse_date(s: &str) -> Option<NaiveDate> {
    fast_date(s.as_bytes()).or_else(|| NaiveDate::parse_from_str(s, "%Y-%m-%d").ok())
}

/// `n` ASCII digits at `b[at..]` as a number.
fn number(b: &[u8], at: usize, n: usize) -> Option<u32> {
    let digits = b.get(at..at + n)?;
    digits.iter().try_fold(0u32, |acc, d| {
        d.is_ascii_digit().then(|| acc * 10 + u32::from(d - b'0'))
    })
}

fn fast_date(b: &[u8]) -> Option<NaiveDate> {
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let year = i32::try_from(number(b, 0, 4)?).ok()?;
    NaiveDate::from_ymd_opt(year, number(b, 5, 2)?, number(b, 8, 2)?)
}

fn fast_timestamp(b: &[u8]) -> Option<DateTime<Utc>> {
    if b.len() < 20 || b[10] != b'T' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let date = fast_date(b.get(..10)?)?;
    let (hour, minute, second) = (number(b, 11, 2)?, number(b, 14, 2)?, number(b, 17, 2)?);
    // (A leap second, 60, goes to chrono.)
    if second > 59 {
        return None;
    }
    let nanos = match &b[19..] {
        [b'Z'] => 0,
        [b'.', fraction @ .., b'Z'] if (1..=9).contains(&fraction.len()) => {
            let n = number(fraction, 0, fraction.len())?;
            n * 10u32.pow(u32::try_from(9 - fraction.len()).ok()?)
        }
        _ => return None,
    };
    let time = chrono::NaiveTime::from_hms_nano_opt(hour, minute, second, nanos)?;
    Some(date.and_time(time).and_utc())
}

#[cfg(test)]
mod tests {
    use chrono::{Duration, TimeZone as _};

    use super::*;

    /// A walk over years 1 to 9999 in uneven steps (every field moves),
    /// with sub-second parts that truncate: about 90,000 instants.
    fn walk() -> impl Iterator<Item = DateTime<Utc>> {
        let start = Utc
            .with_ymd_and_hms(1, 1, 1, 0, 0, 0)
            .single()
            .expect("valid");
        let end = Utc
            .with_ymd_and_hms(9999, 12, 31, 23, 59, 59)
            .single()
            .expect("valid");
        (1_i64..)
            .scan(start, |t, n| {
                let now = *t;
                *t += Duration::seconds(3_155_693 + (n % 97) * 7_919)
                    + Duration::nanoseconds((n % 1_009) * 999_983);
                Some(now)
            })
            .take_while(move |t| *t < end)
    }

    #[test]
    fn texts_are_exactly_chronos() {
        let mut n = 0;
        for t in walk() {
            let want = t.to_rfc3339_opts(SecondsFormat::Millis, true);
            assert_eq!(timestamp_text(&t).as_str(), want);
            let d = t.date_naive();
            assert_eq!(date_text(&d).as_str(), d.format("%Y-%m-%d").to_string());
            n += 1;
        }
        assert!(n > 50_000, "{n} steps");
    }

    fn chronos_timestamp(s: &str) -> Option<DateTime<Utc>> {
        DateTime::parse_from_rfc3339(s)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }

    #[test]
    fn reading_is_exactly_chronos() {
        let mut n = 0;
        for t in walk() {
            // Every form serde writes (no fraction, 3, 6, 9 digits) and ours.
            for form in [
                SecondsFormat::Secs,
                SecondsFormat::Millis,
                SecondsFormat::Micros,
                SecondsFormat::Nanos,
                SecondsFormat::AutoSi,
            ] {
                let text = t.to_rfc3339_opts(form, true);
                assert_eq!(parse_timestamp(&text), chronos_timestamp(&text), "{text}");
                assert!(fast_timestamp(text.as_bytes()).is_some(), "{text}");
            }
            let d = t.date_naive().format("%Y-%m-%d").to_string();
            assert_eq!(
                parse_date(&d),
                NaiveDate::parse_from_str(&d, "%Y-%m-%d").ok()
            );
            n += 1;
        }
        assert!(n > 50_000, "{n} steps");
    }

    #[test]
    fn malformed_text_is_what_chrono_says() {
        for text in [
            "",
            "2026-03-01",
            "2026-03-01T09:30:00",
            "2026-03-01T09:30:00z",
            "2026-03-01t09:30:00Z",
            "2026-03-01 09:30:00Z",
            "2026-03-01T09:30:00+02:00",
            "2026-03-01T09:30:00.Z",
            "2026-03-01T09:30:00.1234567891Z",
            "2026-03-01T09:30:60Z",
            "2016-12-31T23:59:60.5Z",
            "2026-13-01T09:30:00Z",
            "2026-02-29T09:30:00Z",
            "2024-02-29T09:30:00Z",
            "2026-04-31T09:30:00Z",
            "2026-03-01T24:00:00Z",
            "2026-03-01T09:60:00Z",
            "2026-03-01T9:30:00Z",
            "+2026-03-01T09:30:00Z",
            "2026-03-01T09:30:00.12a4Z",
            "2026-03-01T09:30:00Z ",
            "２０２６-03-01T09:30:00Z",
            "0000-01-01T00:00:00Z",
            "' OR 1=1 --",
        ] {
            assert_eq!(parse_timestamp(text), chronos_timestamp(text), "{text:?}");
        }
        for text in [
            "",
            "2026-3-1",
            "2026-03-1",
            "2026-02-30",
            "2026-13-01",
            "0000-01-01",
            "-001-01-01",
            "2026/03/01",
            "2026-03-01T",
            "20260301",
            "2026-03-01 ",
        ] {
            assert_eq!(
                parse_date(text),
                NaiveDate::parse_from_str(text, "%Y-%m-%d").ok(),
                "{text:?}"
            );
        }
    }

    #[test]
    fn years_outside_four_digits_and_leap_seconds_are_chronos_text() {
        let ts = [
            Utc.with_ymd_and_hms(0, 1, 1, 0, 0, 0).single(),
            Utc.with_ymd_and_hms(-1, 12, 31, 23, 59, 59).single(),
            Utc.with_ymd_and_hms(10_000, 1, 1, 0, 0, 0).single(),
            Utc.with_ymd_and_hms(262_000, 6, 30, 12, 0, 0).single(),
            DateTime::from_timestamp(1_483_228_799, 1_999_000_000),
            Some(DateTime::<Utc>::MIN_UTC),
            Some(DateTime::<Utc>::MAX_UTC),
        ];
        for t in ts.into_iter().map(|t| t.expect("valid")) {
            let want = t.to_rfc3339_opts(SecondsFormat::Millis, true);
            assert_eq!(timestamp_text(&t).as_str(), want);
            let d = t.date_naive();
            assert_eq!(date_text(&d).as_str(), d.format("%Y-%m-%d").to_string());
        }
    }
}
