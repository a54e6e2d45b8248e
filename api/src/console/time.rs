//! The little clock arithmetic the pages need (how long a review has waited, how much of its
//! window is left), over the store's RFC 3339 UTC timestamps, without a date library.

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, in milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// `2025-11-23T18:17:05.042Z` (what the store writes; fraction optional, `Z` or `+00:00`) in
/// milliseconds since the Unix epoch; `None` for anything else.
pub(crate) fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    let s = s.trim();
    let s = s.strip_suffix('Z').or_else(|| s.strip_suffix("+00:00"))?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.splitn(3, '-').map(str::parse::<i64>);
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.splitn(3, ':').map(str::parse::<i64>);
    let (h, min, sec) = (t.next()?.ok()?, t.next()?.ok()?, t.next()?.ok()?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || h > 23 || min > 59 || sec > 60 {
        return None;
    }
    let millis: i64 = format!("{frac:0<3}").get(..3)?.parse().ok()?;
    let days = days_from_civil(y, m, day);
    Some(((days * 86_400 + h * 3600 + min * 60 + sec) * 1000) + millis)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// A duration in words a person reads at a glance: `45 s`, `12 min`, `3 h 5 min`, `2 d 4 h`.
pub(crate) fn human_ms(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min", s / 60),
        3600..86_400 => format!("{} h {} min", s / 3600, s / 60 % 60),
        _ => format!("{} d {} h", s / 86_400, s / 3600 % 24),
    }
}

/// GPU milliseconds as seconds (`1.25 s`).
pub(crate) fn gpu(ms: u64) -> String {
    format!("{:.2} s", ms as f64 / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_timestamps_parse_to_epoch_milliseconds() {
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:00.000Z"), Some(0));
        assert_eq!(
            parse_rfc3339_ms("2025-11-23T18:17:05.042Z"),
            Some(1_763_921_825_042)
        );
        assert_eq!(
            parse_rfc3339_ms("2024-02-29T00:00:01+00:00"),
            Some(1_709_164_801_000)
        );
        assert_eq!(parse_rfc3339_ms("yesterday"), None);
        assert_eq!(parse_rfc3339_ms("2025-13-01T00:00:00Z"), None);
    }

    #[test]
    fn durations_read_in_the_largest_useful_units() {
        assert_eq!(human_ms(-5), "0 s");
        assert_eq!(human_ms(45_000), "45 s");
        assert_eq!(human_ms(12 * 60_000 + 5), "12 min");
        assert_eq!(human_ms(3 * 3_600_000 + 5 * 60_000), "3 h 5 min");
        assert_eq!(human_ms(2 * 86_400_000 + 4 * 3_600_000), "2 d 4 h");
        assert_eq!(gpu(1250), "1.25 s");
    }
}
