//! A maintenance window: a start time on the wall clock of a named time zone, how long it stays
//! open, and the days of the week it opens on. Rollouts use a daily one (`window=02:00-04:00`,
//! `timeZone=…`); the update policy adds the days. Each opening is the instant the start time
//! falls on that day in the zone (a start inside a DST gap moves forward by the gap, 02:30 to
//! 03:30; an ambiguous one is the earlier of the two), and lasts the window's length: the same wall-clock
//! span on an ordinary day, an hour more or less of wall clock on the day the clocks change.

use jiff::civil::{Date, Time, Weekday};
use jiff::{SignedDuration, Timestamp};

/// The days of the week a window opens on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Days(u8);

/// The days as written, Monday first.
const DAY_NAMES: [(&str, &str, Weekday); 7] = [
    ("mon", "monday", Weekday::Monday),
    ("tue", "tuesday", Weekday::Tuesday),
    ("wed", "wednesday", Weekday::Wednesday),
    ("thu", "thursday", Weekday::Thursday),
    ("fri", "friday", Weekday::Friday),
    ("sat", "saturday", Weekday::Saturday),
    ("sun", "sunday", Weekday::Sunday),
];

impl Days {
    pub const ALL: Days = Days(0x7f);

    fn bit(d: Weekday) -> u8 {
        1 << (d.to_monday_zero_offset() as u8)
    }

    pub fn has(self, d: Weekday) -> bool {
        self.0 & Days::bit(d) != 0
    }

    /// `mon`, `Monday`, … (any case); None for anything else.
    pub fn day(name: &str) -> Option<Weekday> {
        let n = name.trim().to_ascii_lowercase();
        DAY_NAMES.iter().find(|(short, long, _)| n == *short || n == *long).map(|(_, _, d)| *d)
    }

    pub fn of(days: &[Weekday]) -> Days {
        Days(days.iter().fold(0, |acc, d| acc | Days::bit(*d)))
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The short names of the days, Monday first (`mon`, `tue`, …).
    pub fn names(self) -> Vec<&'static str> {
        DAY_NAMES.iter().filter(|(_, _, d)| self.has(*d)).map(|(short, _, _)| *short).collect()
    }
}

/// A window in a named time zone; one whose end comes before its start runs over midnight, and
/// one that ends when it starts lasts a whole day.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    pub start: Time,
    pub end: Time,
    pub zone: jiff::tz::TimeZone,
    pub zone_name: String,
    pub days: Days,
}

const DAY: SignedDuration = SignedDuration::from_hours(24);

impl Window {
    /// A daily window.
    pub fn daily(start: Time, end: Time, zone: jiff::tz::TimeZone, zone_name: String) -> Window {
        Window { start, end, zone, zone_name, days: Days::ALL }
    }

    /// How long each opening lasts: from the start to the end on the wall clock, at most a day.
    pub fn length(&self) -> SignedDuration {
        let d = self.end.duration_since(self.start);
        if d <= SignedDuration::ZERO {
            d + DAY
        } else {
            d
        }
    }

    /// When the window opens on `date` (whether or not it opens that day of the week).
    fn opening_on(&self, date: Date) -> Option<Timestamp> {
        date.to_datetime(self.start).to_zoned_datetime(self.zone.clone()).ok().map(|z| z.timestamp())
    }

    fn date_of(&self, now: Timestamp) -> Date {
        now.to_zoned_datetime(self.zone.clone()).date()
    }

    /// The opening `now` falls in: when it opened and when it closes.
    pub fn current(&self, now: Timestamp) -> Option<(Timestamp, Timestamp)> {
        let today = self.date_of(now);
        [today.yesterday().ok(), Some(today)].into_iter().flatten().filter(|d| self.days.has(d.weekday())).find_map(
            |d| {
                let open = self.opening_on(d)?;
                let close = open.checked_add(self.length()).ok()?;
                (open <= now && now < close).then_some((open, close))
            },
        )
    }

    /// Whether `now` falls inside an opening of the window.
    pub fn contains(&self, now: Timestamp) -> bool {
        self.current(now).is_some()
    }

    /// The first opening after `now` (within the next eight days; None only without any day).
    pub fn next_opening(&self, now: Timestamp) -> Option<Timestamp> {
        let mut date = self.date_of(now);
        for _ in 0..9 {
            if self.days.has(date.weekday()) {
                if let Some(open) = self.opening_on(date).filter(|open| *open > now) {
                    return Some(open);
                }
            }
            date = date.tomorrow().ok()?;
        }
        None
    }

    /// `02:00-04:00 Europe/Berlin`, with the days when not every day (`… on sat, sun`).
    pub fn describe(&self) -> String {
        let fmt = |t: Time| t.strftime(if t.second() == 0 { "%H:%M" } else { "%H:%M:%S" }).to_string();
        let mut text = format!("{}-{} {}", fmt(self.start), fmt(self.end), self.zone_name);
        if self.days != Days::ALL {
            text.push_str(&format!(" on {}", self.days.names().join(", ")));
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    fn window(start: &str, end: &str, zone: &str, days: Days) -> Window {
        let t = |s: &str| Time::strptime("%H:%M", s).unwrap();
        Window {
            start: t(start),
            end: t(end),
            zone: jiff::tz::TimeZone::get(zone).unwrap(),
            zone_name: zone.into(),
            days,
        }
    }

    #[test]
    fn a_window_over_midnight_belongs_to_the_day_it_opens() {
        // Fridays 22:00 to 02:00 UTC: Saturday 01:00 is inside, Friday 01:00 is not.
        let w = window("22:00", "02:00", "UTC", Days::of(&[Weekday::Friday]));
        assert!(w.contains(at("2026-03-06T23:00:00Z")), "Friday 23:00");
        assert!(w.contains(at("2026-03-07T01:59:59Z")), "Saturday 01:59");
        assert!(!w.contains(at("2026-03-07T02:00:00Z")), "closes at 02:00");
        assert!(!w.contains(at("2026-03-06T01:00:00Z")), "Friday 01:00 belongs to Thursday's opening");
        assert_eq!(w.next_opening(at("2026-03-07T03:00:00Z")), Some(at("2026-03-13T22:00:00Z")));
        assert_eq!(w.describe(), "22:00-02:00 UTC on fri");
    }

    #[test]
    fn openings_follow_the_wall_clock_across_dst() {
        // Europe/Berlin springs forward on 2026-03-29 at 02:00 (to 03:00) and falls back on
        // 2026-10-25 at 03:00 (to 02:00).
        let w = window("02:30", "03:30", "Europe/Berlin", Days::ALL);
        // The day before: 02:30 CET is 01:30 UTC.
        assert_eq!(
            w.current(at("2026-03-28T01:45:00Z")),
            Some((at("2026-03-28T01:30:00Z"), at("2026-03-28T02:30:00Z")))
        );
        // 02:30 does not exist on the 29th: the window opens at 03:30 CEST (01:30 UTC), for an hour.
        assert_eq!(w.next_opening(at("2026-03-28T23:00:00Z")), Some(at("2026-03-29T01:30:00Z")));
        assert!(w.contains(at("2026-03-29T02:29:00Z")));
        assert!(!w.contains(at("2026-03-29T01:00:00Z")) && !w.contains(at("2026-03-29T02:30:00Z")));
        // The day after: 02:30 CEST is 00:30 UTC.
        assert_eq!(w.next_opening(at("2026-03-29T03:00:00Z")), Some(at("2026-03-30T00:30:00Z")));
        // 02:30 happens twice on October 25th: the window opens at the first (00:30 UTC).
        assert_eq!(w.next_opening(at("2026-10-24T12:00:00Z")), Some(at("2026-10-25T00:30:00Z")));
        assert!(w.contains(at("2026-10-25T01:29:00Z")) && !w.contains(at("2026-10-25T01:30:00Z")));
    }

    #[test]
    fn a_window_that_ends_when_it_starts_lasts_a_day() {
        let w = window("00:00", "00:00", "UTC", Days::of(&[Weekday::Saturday, Weekday::Sunday]));
        assert_eq!(w.length(), DAY);
        assert!(w.contains(at("2026-03-07T00:00:00Z")) && w.contains(at("2026-03-08T23:59:59Z")));
        assert!(!w.contains(at("2026-03-09T00:00:00Z")) && !w.contains(at("2026-03-06T23:59:59Z")));
        assert_eq!(w.next_opening(at("2026-03-09T00:00:00Z")), Some(at("2026-03-14T00:00:00Z")));
    }

    #[test]
    fn days_by_name() {
        assert_eq!(Days::day("Mon"), Some(Weekday::Monday));
        assert_eq!(Days::day("sunday"), Some(Weekday::Sunday));
        assert_eq!(Days::day("funday"), None);
        assert_eq!(Days::of(&[Weekday::Sunday, Weekday::Monday]).names(), ["mon", "sun"]);
        assert!(Days::of(&[]).is_empty());
    }
}
