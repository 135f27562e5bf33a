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

#[cfg(test)]
mod tests {
    use chrono::{Duration, TimeZone as _};

    use super::*;

    #[test]
    fn texts_are_exactly_chronos() {
        let mut t = Utc
            .with_ymd_and_hms(1, 1, 1, 0, 0, 0)
            .single()
            .expect("valid");
        let end = Utc
            .with_ymd_and_hms(9999, 12, 31, 23, 59, 59)
            .single()
            .expect("valid");
        // A walk over the whole range in uneven steps (every field moves),
        // with sub-second parts that truncate.
        let mut n: i64 = 0;
        while t < end {
            let want = t.to_rfc3339_opts(SecondsFormat::Millis, true);
            assert_eq!(timestamp_text(&t).as_str(), want);
            let d = t.date_naive();
            assert_eq!(date_text(&d).as_str(), d.format("%Y-%m-%d").to_string());
            n += 1;
            t += Duration::seconds(3_155_693 + (n % 97) * 7_919)
                + Duration::nanoseconds((n % 1_009) * 999_983);
        }
        assert!(n > 50_000, "{n} steps");
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
