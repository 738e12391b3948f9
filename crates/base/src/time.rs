//! Instants as FHIR writes them (`2026-11-29T07:00:00.000Z`), without a calendar library.

use std::time::{SystemTime, UNIX_EPOCH};

/// The instant as `2026-11-29T07:00:00.000Z` (FHIR `instant`).
pub fn iso8601(t: SystemTime) -> String {
    let mut out = String::with_capacity(24);
    write_iso8601(t, &mut out);
    out
}

/// Now, as [`iso8601`] writes it.
pub fn now_iso() -> String {
    iso8601(SystemTime::now())
}

/// Appends the instant as [`iso8601`] writes it. Years past 9999 are written with their digits.
fn write_iso8601(t: SystemTime, out: &mut String) {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil_from_days(days as i64);
    if !(0..=9999).contains(&y) {
        use std::fmt::Write;
        let _ = write!(out, "{y:04}");
    } else {
        digits(out, y as u32, 4);
    }
    let fields = [(m, 2, '-'), (day, 2, 'T'), ((rem / 3600) as u32, 2, ':'), ((rem % 3600 / 60) as u32, 2, ':')];
    out.push('-');
    for (n, width, after) in fields {
        digits(out, n, width);
        out.push(after);
    }
    digits(out, (rem % 60) as u32, 2);
    out.push('.');
    digits(out, d.subsec_millis(), 3);
    out.push('Z');
}

/// `n` in `width` decimal digits, zero-padded (`n` has at most `width` digits).
fn digits(out: &mut String, n: u32, width: u32) {
    for place in (0..width).rev() {
        out.push(char::from(b'0' + (n / 10u32.pow(place) % 10) as u8));
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn instants_are_fhir_shaped() {
        assert_eq!(iso8601(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_795_935_600_123);
        assert_eq!(iso8601(t), "2026-11-29T07:00:00.123Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(iso8601(leap), "2000-02-29T00:00:00.000Z");
        let late = UNIX_EPOCH + Duration::from_millis(253_402_300_799_999); // the last FHIR instant
        assert_eq!(iso8601(late), "9999-12-31T23:59:59.999Z");
        let past = UNIX_EPOCH + Duration::from_secs(253_402_300_800); // a year of five digits
        assert_eq!(iso8601(past), "10000-01-01T00:00:00.000Z");
    }

    /// The digits written one by one say what `format!` says, over instants spread across every
    /// year FHIR allows and a few past it.
    #[test]
    fn digits_match_a_plain_format() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..100_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let ms = x % 260_000_000_000_000;
            let (secs, rem) = (ms / 1000, ms % 1000);
            let (y, m, d) = civil_from_days((secs / 86_400) as i64);
            let s = secs % 86_400;
            let plain = format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{rem:03}Z", s / 3600, s % 3600 / 60, s % 60);
            assert_eq!(iso8601(UNIX_EPOCH + Duration::from_millis(ms)), plain);
        }
    }
}
