//! Cron expressions: five fields — minute (0-59), hour (0-23), day of month (1-31), month (1-12
//! or `jan`…), day of week (0-7 or `sun`…, 0 and 7 both Sunday) — each `*`, a number, a range
//! `a-b`, a step `*/n` or `a-b/n`, or a list of those; or `@hourly`, `@daily`, `@weekly`,
//! `@monthly`, `@yearly`. Evaluated in a time zone of the system's tz database. As in Vixie
//! cron, when both day fields are restricted a day matching either one fires. A wall-clock time
//! that a DST change skips does not fire; one it repeats fires each time.

use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};

/// A parsed schedule.
#[derive(Debug, Clone)]
pub struct Cron {
    minutes: u64,
    hours: u32,
    days: u32,
    months: u16,
    weekdays: u8,
    days_any: bool,
    weekdays_any: bool,
    tz: TimeZone,
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const WEEKDAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

/// One field as a bit set over `lo..=hi`; `(bits, was "*")`.
fn field(text: &str, lo: u32, hi: u32, names: &[&str], what: &str) -> Result<(u64, bool), String> {
    let value = |s: &str| -> Result<u32, String> {
        let lower = s.to_ascii_lowercase();
        if let Some(i) = names.iter().position(|n| *n == lower) {
            return Ok(i as u32 + lo);
        }
        s.parse::<u32>()
            .ok()
            .filter(|n| (lo..=hi).contains(n))
            .ok_or_else(|| format!("{what}: '{s}' is not from {lo} to {hi}"))
    };
    let mut bits = 0u64;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => (
                r,
                s.parse::<u32>()
                    .ok()
                    .filter(|s| *s > 0)
                    .ok_or_else(|| format!("{what}: step '{s}' is not a positive number"))?,
            ),
            None => (part, 1),
        };
        let (a, b) = if range == "*" {
            (lo, hi)
        } else if let Some((a, b)) = range.split_once('-') {
            (value(a)?, value(b)?)
        } else {
            let v = value(range)?;
            (v, if part.contains('/') { hi } else { v })
        };
        if a > b {
            return Err(format!("{what}: range '{range}' runs backwards"));
        }
        // `step_by` never steps past `b`: a step near `u32::MAX` cannot wrap back into range.
        for v in (a..=b).step_by(usize::try_from(step).unwrap_or(usize::MAX)) {
            bits |= 1 << v;
        }
    }
    Ok((bits, text == "*"))
}

/// Parses `expr` for time zone `tz` (`UTC`, `Europe/Paris` …).
pub fn parse(expr: &str, tz: &str) -> Result<Cron, String> {
    let expanded = match expr.trim() {
        "@hourly" => "0 * * * *",
        "@daily" | "@midnight" => "0 0 * * *",
        "@weekly" => "0 0 * * 0",
        "@monthly" => "0 0 1 * *",
        "@yearly" | "@annually" => "0 0 1 1 *",
        other => other,
    };
    let fields: Vec<&str> = expanded.split_whitespace().collect();
    if fields.len() != 5 {
        return Err(format!(
            "'{expr}': expected 5 fields (minute hour day-of-month month day-of-week), found {}",
            fields.len()
        ));
    }
    let tz = TimeZone::get(tz).map_err(|e| format!("time zone '{tz}': {e}"))?;
    let (minutes, _) = field(fields[0], 0, 59, &[], "minute")?;
    let (hours, _) = field(fields[1], 0, 23, &[], "hour")?;
    let (days, days_any) = field(fields[2], 1, 31, &[], "day of month")?;
    let (months, _) = field(fields[3], 1, 12, &MONTHS, "month")?;
    let (mut weekdays, weekdays_any) = field(fields[4], 0, 7, &WEEKDAYS, "day of week")?;
    if weekdays & (1 << 7) != 0 {
        weekdays |= 1;
    }
    Ok(Cron {
        minutes,
        hours: hours as u32,
        days: days as u32,
        months: months as u16,
        weekdays: (weekdays & 0x7f) as u8,
        days_any,
        weekdays_any,
        tz,
    })
}

impl Cron {
    fn day_matches(&self, day: i8, weekday: i8) -> bool {
        let dom = self.days & (1 << day) != 0;
        let dow = self.weekdays & (1 << weekday) != 0;
        match (self.days_any, self.weekdays_any) {
            (true, true) => true,
            (true, false) => dow,
            (false, true) => dom,
            (false, false) => dom || dow,
        }
    }

    /// [`Cron::next_after`] in seconds since the epoch.
    pub fn next_after_unix(&self, after: i64) -> Option<i64> {
        self.next_after(Timestamp::from_second(after).ok()?)
            .map(|t| t.as_second())
    }

    /// The first firing strictly after `after`, within five years.
    pub fn next_after(&self, after: Timestamp) -> Option<Timestamp> {
        // Whole minutes, from the one after `after`.
        let secs = after.as_second().div_euclid(60) * 60 + 60;
        let mut t = Timestamp::from_second(secs).ok()?;
        let end = after.checked_add((5 * 366 * 24).hours()).ok()?;
        while t <= end {
            let local = self.tz.to_datetime(t);
            let (month, day, hour, minute) =
                (local.month(), local.day(), local.hour(), local.minute());
            let weekday = local.weekday().to_sunday_zero_offset();
            let skip = if self.months & (1 << month) == 0 || !self.day_matches(day, weekday) {
                // To the next local midnight (at least an hour, whatever DST does).
                (i64::from(24 - hour) * 60 - i64::from(minute)).max(60)
            } else if self.hours & (1 << hour) == 0 {
                60 - i64::from(minute)
            } else if self.minutes & (1 << minute) == 0 {
                1
            } else {
                return Some(t);
            };
            t = t.checked_add(skip.minutes()).ok()?;
            // Jumps land on whole minutes of the zone's offset; keep them whole in UTC too.
            t = Timestamp::from_second(t.as_second().div_euclid(60) * 60).ok()?;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    fn next(expr: &str, tz: &str, after: &str) -> String {
        parse(expr, tz)
            .expect("parse")
            .next_after(at(after))
            .expect("fires")
            .to_string()
    }

    #[test]
    fn fields_ranges_steps_lists_and_names() {
        let cases = [
            ("* * * * *", "2026-11-26T09:30:10Z", "2026-11-26T09:31:00Z"),
            ("0 2 * * *", "2026-11-26T09:30:00Z", "2026-11-27T02:00:00Z"),
            (
                "*/15 * * * *",
                "2026-11-26T09:31:00Z",
                "2026-11-26T09:45:00Z",
            ),
            (
                "5-10/5 1,3 * * *",
                "2026-11-26T01:06:00Z",
                "2026-11-26T01:10:00Z",
            ),
            (
                "0 0 1 jan *",
                "2026-11-26T00:00:00Z",
                "2027-01-01T00:00:00Z",
            ),
            (
                "30 8 * * mon-fri",
                "2026-11-27T09:00:00Z",
                "2026-11-30T08:30:00Z",
            ),
            ("0 12 * * 7", "2026-11-26T00:00:00Z", "2026-11-29T12:00:00Z"),
            // both day fields: either matches (the 1st, or a Friday)
            (
                "0 0 1 * fri",
                "2026-11-26T00:00:00Z",
                "2026-11-27T00:00:00Z",
            ),
            ("0 0 29 2 *", "2026-03-01T00:00:00Z", "2028-02-29T00:00:00Z"),
            ("@hourly", "2026-11-26T09:00:00Z", "2026-11-26T10:00:00Z"),
            ("@weekly", "2026-11-26T09:00:00Z", "2026-11-29T00:00:00Z"),
        ];
        for (expr, after, want) in cases {
            assert_eq!(next(expr, "UTC", after), want, "{expr}");
        }
    }

    #[test]
    fn time_zones_and_daylight_saving() {
        // 02:00 in Paris is 01:00 UTC in winter
        assert_eq!(
            next("0 2 * * *", "Europe/Paris", "2026-11-26T09:00:00Z"),
            "2026-11-27T01:00:00Z"
        );
        // 02:30 does not exist on 2026-03-29 in Paris: the next one is a day later, in summer
        assert_eq!(
            next("30 2 * * *", "Europe/Paris", "2026-03-28T02:00:00Z"),
            "2026-03-30T00:30:00Z"
        );
        // 02:30 happens twice on 2026-10-25: it fires each time
        let c = parse("30 2 * * *", "Europe/Paris").expect("parse");
        let first = c.next_after(at("2026-10-24T23:00:00Z")).expect("first");
        let second = c.next_after(first).expect("second");
        assert_eq!(
            (first.to_string(), second.to_string()),
            ("2026-10-25T00:30:00Z".into(), "2026-10-25T01:30:00Z".into())
        );
    }

    #[test]
    fn bad_expressions_say_which_field() {
        for (expr, tz, want) in [
            ("* * * *", "UTC", "expected 5 fields"),
            ("60 * * * *", "UTC", "minute: '60' is not from 0 to 59"),
            ("* 5-2 * * *", "UTC", "hour: range '5-2' runs backwards"),
            ("*/0 * * * *", "UTC", "step '0'"),
            ("* * * smarch *", "UTC", "month: 'smarch'"),
            ("* * * * *", "Mars/Olympus", "time zone 'Mars/Olympus'"),
        ] {
            let e = parse(expr, tz).expect_err(expr);
            assert!(e.contains(want), "{expr}: {e}");
        }
        // A step larger than the field neither wraps nor overflows: only the start fires.
        for expr in ["1-59/4294967295 * * * *", "2/4294967290 * * * *"] {
            let c = parse(expr, "UTC").expect(expr);
            let minute = expr[..expr.find(['-', '/']).unwrap_or(1)].to_string();
            assert_eq!(
                next(expr, "UTC", "2026-11-26T09:00:00Z"),
                format!("2026-11-26T09:{minute:0>2}:00Z"),
                "{expr}"
            );
            assert_eq!(c.minutes.count_ones(), 1, "{expr}");
        }
        // never fires: the 31st of February
        assert!(parse("0 0 31 2 *", "UTC")
            .expect("parse")
            .next_after(at("2026-01-01T00:00:00Z"))
            .is_none());
    }
}
