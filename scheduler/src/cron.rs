//! Cron expressions as Vixie cron and cronie read them (`man 5 crontab`): five fields —
//! minute (0-59), hour (0-23), day of month (1-31), month (1-12 or `jan`…), day of week (0-7 or
//! `sun`…, 0 and 7 both Sunday; `5-0` is Friday to Sunday) — each `*`, a number, a range `a-b`,
//! a step `*/n` or `a-b/n` (not `a/n`, which cron refuses), or a list of those; or `@hourly`,
//! `@daily`, `@midnight`, `@weekly`,
//! `@monthly`, `@yearly`, `@annually`. Evaluated in a time zone of the system's tz database.
//!
//! What cron makes of them, kept exactly:
//! - The day rule: when the day-of-month field or the day-of-week field starts with `*` (`*`,
//!   `*/2`), a day must match both; when both are restricted, a day matching either fires
//!   (`0 0 1 * mon` is the 1st and every Monday).
//! - Daylight saving: a job is *wildcard* when its minute or hour field starts with `*`. When the
//!   clock jumps forward, a fixed-time job whose time was skipped fires at the first minute after
//!   the jump, a wildcard one does not; when the clock goes back, a fixed-time job does not fire
//!   again in the repeated hour, a wildcard one does. Both only for a change of less than 3
//!   hours: after a longer one nothing is caught up and everything fires again. (Where cron runs a job once for each
//!   skipped time it names, `0,30 2 * * *`, all at that same minute, one task starts.)
//!
//! An expression that can never fire (`0 0 31 2 *`, `0 0 30 2 *`) is refused.

use jiff::civil::DateTime;
use jiff::tz::{AmbiguousOffset, TimeZone};
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
    /// Minute or hour field starts with `*` (cron's `MIN_STAR | HR_STAR`): fires in a repeated
    /// hour, not for a skipped one.
    wildcard: bool,
    tz: TimeZone,
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const MONTH_NAMES: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
/// The most days each month has (February: 29, in leap years).
const MONTH_DAYS: [u32; 12] = [31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
const WEEKDAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];
/// How far [`Cron::next_after`] looks: a day-of-month that must also be a weekday (`0 0 29 2
/// */7`, a Sunday the 29th of February) can be 40 years apart.
const SEARCH_YEARS: i64 = 50;
/// Cron catches up skipped fixed-time jobs, and keeps them from running twice in a repeated
/// hour, only for a jump shorter than this, in minutes (DST is one hour; cronie's `3 *
/// MINUTE_COUNT`).
const MAX_CATCH_UP_MINUTES: i64 = 3 * 60;

/// One field as a bit set over `lo..=hi`; `(bits, starts with "*")`.
fn field(text: &str, lo: u32, hi: u32, names: &[&str], what: &str) -> Result<(u64, bool), String> {
    let value = |s: &str| -> Result<u32, String> {
        let lower = s.to_ascii_lowercase();
        if let Some(i) = names.iter().position(|n| *n == lower) {
            return Ok(i as u32 + lo);
        }
        if ["?", "l", "w"].contains(&lower.as_str()) || lower.contains('#') {
            return Err(format!(
                "{what}: '{s}' is Quartz or EventBridge syntax, not cron's (use * or a number)"
            ));
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
            match (value(a)?, value(b)?) {
                // cronie reads a day-of-week range ending at 0 as ending at Sunday, 7 (`5-0`).
                (a, 0) if hi == 7 => (a, 7),
                ab => ab,
            }
        } else if part.contains('/') {
            return Err(format!(
                "{what}: '{part}': a step needs a range, as cron reads it ({range}-{hi}/{step} \
                 or */{step})"
            ));
        } else {
            let v = value(range)?;
            (v, v)
        };
        if a > b {
            return Err(format!("{what}: range '{range}' runs backwards"));
        }
        // `step_by` never steps past `b`: a step near `u32::MAX` cannot wrap back into range.
        for v in (a..=b).step_by(usize::try_from(step).unwrap_or(usize::MAX)) {
            bits |= 1 << v;
        }
    }
    Ok((bits, text.starts_with('*')))
}

/// Parses `expr` for time zone `tz` (`UTC`, `Europe/Paris` …); refuses one that can never fire.
pub fn parse(expr: &str, tz: &str) -> Result<Cron, String> {
    let expanded = match expr.trim() {
        "@hourly" => "0 * * * *",
        "@daily" | "@midnight" => "0 0 * * *",
        "@weekly" => "0 0 * * 0",
        "@monthly" => "0 0 1 * *",
        "@yearly" | "@annually" => "0 0 1 1 *",
        "@reboot" => {
            return Err(format!(
                "'{expr}': a schedule needs a time; to run a task whenever its node starts, \
                 use a DAEMON service"
            ))
        }
        other if other.starts_with('@') => {
            return Err(format!(
                "'{expr}': unknown macro (@hourly, @daily, @midnight, @weekly, @monthly, \
                 @yearly, @annually)"
            ))
        }
        other => other,
    };
    let fields: Vec<&str> = expanded.split_whitespace().collect();
    if fields.len() != 5 {
        let hint = if fields.len() == 6 {
            " (EventBridge's cron() has a sixth field, the year: drop it, and write * for ?)"
        } else {
            ""
        };
        return Err(format!(
            "'{expr}': expected 5 fields (minute hour day-of-month month day-of-week), found \
             {}{hint}",
            fields.len()
        ));
    }
    let tz = TimeZone::get(tz).map_err(|e| format!("time zone '{tz}': {e}"))?;
    let (minutes, minutes_any) = field(fields[0], 0, 59, &[], "minute")?;
    let (hours, hours_any) = field(fields[1], 0, 23, &[], "hour")?;
    let (days, days_any) = field(fields[2], 1, 31, &[], "day of month")?;
    let (months, _) = field(fields[3], 1, 12, &MONTHS, "month")?;
    let (mut weekdays, weekdays_any) = field(fields[4], 0, 7, &WEEKDAYS, "day of week")?;
    if weekdays & (1 << 7) != 0 {
        weekdays |= 1;
    }
    let cron = Cron {
        minutes,
        hours: hours as u32,
        days: days as u32,
        months: months as u16,
        weekdays: (weekdays & 0x7f) as u8,
        days_any,
        weekdays_any,
        wildcard: minutes_any || hours_any,
        tz,
    };
    cron.check_fires(expr)?;
    Ok(cron)
}

impl Cron {
    /// Under the both-fields rule a day must be one of the days of month in one of the months
    /// (every date falls on every weekday in some year, the 29th of February too); when both day
    /// fields are restricted, every weekday comes in every month.
    fn check_fires(&self, expr: &str) -> Result<(), String> {
        if !self.days_any && !self.weekdays_any {
            return Ok(());
        }
        let named: Vec<usize> = (1..=12).filter(|m| self.months & (1 << m) != 0).collect();
        let fits = |m: &usize| {
            let in_month = (1u64 << (MONTH_DAYS[m - 1] + 1)) - 2;
            u64::from(self.days) & in_month != 0
        };
        if named.iter().any(fits) {
            return Ok(());
        }
        let days: Vec<String> = (1..=31)
            .filter(|d| self.days & (1 << d) != 0)
            .map(|d| d.to_string())
            .collect();
        let months: Vec<&str> = named.iter().map(|m| MONTH_NAMES[m - 1]).collect();
        Err(format!(
            "'{expr}' never fires: {} {} no day {}",
            months.join(" or "),
            if months.len() == 1 { "has" } else { "have" },
            days.join(" or ")
        ))
    }

    /// Whether the wall-clock minute `local` matches every field.
    fn matches(&self, local: DateTime) -> bool {
        self.months & (1 << local.month()) != 0
            && self.day_matches(local.day(), local.weekday().to_sunday_zero_offset())
            && self.hours & (1 << local.hour()) != 0
            && self.minutes & (1 << local.minute()) != 0
    }

    fn day_matches(&self, day: i8, weekday: i8) -> bool {
        let dom = self.days & (1 << day) != 0;
        let dow = self.weekdays & (1 << weekday) != 0;
        if self.days_any || self.weekdays_any {
            dom && dow
        } else {
            dom || dow
        }
    }

    /// Whether it fires at the whole minute `t`; `transition` says the zone's offset changes
    /// exactly at `t`.
    fn fires_at(&self, t: Timestamp, transition: bool) -> bool {
        let local = self.tz.to_datetime(t);
        if self.matches(local) {
            // A fixed time the clock shows again (DST ends) fired the first time; after a
            // jump back of 3 hours or more cron runs everything again.
            let repeated = matches!(
                self.tz.to_ambiguous_timestamp(local).offset(),
                AmbiguousOffset::Fold { before, after }
                    if after == self.tz.to_offset(t)
                        && i64::from(before.seconds() - after.seconds()) < MAX_CATCH_UP_MINUTES * 60
            );
            if self.wildcard || !repeated {
                return true;
            }
        }
        if self.wildcard || !transition {
            return false;
        }
        // A fixed time the clock skipped (DST starts) fires at the first minute after the jump.
        let Ok(before) = t.checked_sub(1.minute()) else {
            return false;
        };
        let before = self.tz.to_datetime(before);
        let Ok(jump) = before.until(local) else {
            return false;
        };
        let skipped = (i64::from(jump.get_days()) * 24 + i64::from(jump.get_hours())) * 60
            + jump.get_minutes()
            - 1;
        // After a jump of 3 hours or more cron catches nothing up.
        if skipped + 1 >= MAX_CATCH_UP_MINUTES {
            return false;
        }
        (1..=skipped)
            .filter_map(|m| before.checked_add(m.minutes()).ok())
            .any(|dt| self.matches(dt))
    }

    /// [`Cron::next_after`] in seconds since the epoch.
    pub fn next_after_unix(&self, after: i64) -> Option<i64> {
        self.next_after(Timestamp::from_second(after).ok()?)
            .map(|t| t.as_second())
    }

    /// The first firing strictly after `after`, within fifty years.
    pub fn next_after(&self, after: Timestamp) -> Option<Timestamp> {
        let whole = |t: Timestamp| Timestamp::from_second(t.as_second().div_euclid(60) * 60).ok();
        // Whole minutes, from the one after `after`.
        let mut t = Timestamp::from_second(after.as_second().div_euclid(60) * 60 + 60).ok()?;
        let end = after.checked_add((SEARCH_YEARS * 366 * 24).hours()).ok()?;
        // The zone's next offset change (rounded up to a whole minute): no skip jumps over it.
        let next_transition = |t: Timestamp| {
            let from = t.checked_sub(1.second()).ok()?;
            let at = self.tz.following(from).next()?.timestamp();
            Timestamp::from_second((at.as_second() + 59).div_euclid(60) * 60).ok()
        };
        let mut transition = next_transition(t);
        while t <= end {
            if transition.is_some_and(|tr| tr < t) {
                transition = next_transition(t);
            }
            if self.fires_at(t, transition == Some(t)) {
                return Some(t);
            }
            let local = self.tz.to_datetime(t);
            let (hour, minute) = (local.hour(), local.minute());
            let skip = if self.months & (1 << local.month()) == 0
                || !self.day_matches(local.day(), local.weekday().to_sunday_zero_offset())
            {
                // To the next local midnight (at least an hour, whatever DST does).
                (i64::from(24 - hour) * 60 - i64::from(minute)).max(60)
            } else if self.hours & (1 << hour) == 0 {
                60 - i64::from(minute)
            } else {
                1
            };
            // Jumps land on whole minutes of the zone's offset; keep them whole in UTC too.
            let mut next = whole(t.checked_add(skip.minutes()).ok()?)?;
            if let Some(tr) = transition.filter(|tr| *tr > t && *tr < next) {
                next = tr;
            }
            t = next;
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

    /// The reference: what cronie (Vixie cron as Linux ships it) does, read from its source
    /// (`entry.c` `load_entry`/`get_range`, `cron.c` `find_jobs` and the time-jump cases of
    /// `main`) — `(expression, zone, after, next firing)`. 2026-11-26 is a Thursday.
    const REFERENCE: &[(&str, &str, &str, &str)] = &[
        (
            "* * * * *",
            "UTC",
            "2026-11-26T09:30:10Z",
            "2026-11-26T09:31:00Z",
        ),
        (
            "0 2 * * *",
            "UTC",
            "2026-11-26T09:30:00Z",
            "2026-11-27T02:00:00Z",
        ),
        (
            "*/15 * * * *",
            "UTC",
            "2026-11-26T09:31:00Z",
            "2026-11-26T09:45:00Z",
        ),
        (
            "5-10/5 1,3 * * *",
            "UTC",
            "2026-11-26T01:06:00Z",
            "2026-11-26T01:10:00Z",
        ),
        (
            "0 0 1 jan *",
            "UTC",
            "2026-11-26T00:00:00Z",
            "2027-01-01T00:00:00Z",
        ),
        (
            "30 8 * * mon-fri",
            "UTC",
            "2026-11-27T09:00:00Z",
            "2026-11-30T08:30:00Z",
        ),
        (
            "0 12 * * 7",
            "UTC",
            "2026-11-26T00:00:00Z",
            "2026-11-29T12:00:00Z",
        ),
        (
            "0 0 31 * *",
            "UTC",
            "2026-11-26T00:00:00Z",
            "2026-12-31T00:00:00Z",
        ),
        (
            "0 0 29 2 *",
            "UTC",
            "2026-03-01T00:00:00Z",
            "2028-02-29T00:00:00Z",
        ),
        (
            "@hourly",
            "UTC",
            "2026-11-26T09:00:00Z",
            "2026-11-26T10:00:00Z",
        ),
        (
            "@daily",
            "UTC",
            "2026-11-26T09:00:00Z",
            "2026-11-27T00:00:00Z",
        ),
        (
            "@weekly",
            "UTC",
            "2026-11-26T09:00:00Z",
            "2026-11-29T00:00:00Z",
        ),
        (
            "@monthly",
            "UTC",
            "2026-11-26T09:00:00Z",
            "2026-12-01T00:00:00Z",
        ),
        (
            "@yearly",
            "UTC",
            "2026-11-26T09:00:00Z",
            "2027-01-01T00:00:00Z",
        ),
        // Both day fields restricted: either one (the 1st, or a Friday).
        (
            "0 0 1 * fri",
            "UTC",
            "2026-11-26T00:00:00Z",
            "2026-11-27T00:00:00Z",
        ),
        (
            "0 12 13 * 5",
            "UTC",
            "2026-11-26T00:00:00Z",
            "2026-11-27T12:00:00Z",
        ),
        // The 1st to 7th or a Sunday: the 1st of December (a Tuesday) comes first.
        (
            "0 0 1-7 * sun",
            "UTC",
            "2026-11-30T01:00:00Z",
            "2026-12-01T00:00:00Z",
        ),
        // A day field starting with `*` is not restricted: both must match (an odd day that
        // is a Monday; a Sunday the 13th).
        (
            "0 0 */2 * mon",
            "UTC",
            "2026-11-26T00:00:00Z",
            "2026-12-07T00:00:00Z",
        ),
        (
            "0 0 13 * */7",
            "UTC",
            "2026-11-26T00:00:00Z",
            "2026-12-13T00:00:00Z",
        ),
        (
            "0 0 * * */2",
            "UTC",
            "2026-11-26T09:00:00Z",
            "2026-11-28T00:00:00Z",
        ),
        // Mondays of February: the 31st never comes, Mondays do.
        (
            "0 0 31 2 mon",
            "UTC",
            "2026-11-26T00:00:00Z",
            "2027-02-01T00:00:00Z",
        ),
        // A Sunday the 29th of February: more than five years away.
        (
            "0 0 29 2 */7",
            "UTC",
            "2026-11-26T00:00:00Z",
            "2032-02-29T00:00:00Z",
        ),
        // Friday to Sunday, as cronie reads `5-0`.
        (
            "0 0 * * 5-0",
            "UTC",
            "2026-11-28T00:00:00Z",
            "2026-11-29T00:00:00Z",
        ),
        // Time zones: 02:00 in Paris is 01:00 UTC in winter.
        (
            "0 2 * * *",
            "Europe/Paris",
            "2026-11-26T09:00:00Z",
            "2026-11-27T01:00:00Z",
        ),
        // Paris skips 02:00-02:59 on 2026-03-29 (01:00 UTC): a fixed time in the gap fires at
        // the first minute after it (03:00 CEST) ...
        (
            "30 2 * * *",
            "Europe/Paris",
            "2026-03-28T02:00:00Z",
            "2026-03-29T01:00:00Z",
        ),
        (
            "0,30 2 * * *",
            "Europe/Paris",
            "2026-03-28T02:00:00Z",
            "2026-03-29T01:00:00Z",
        ),
        (
            "0,30 2 * * *",
            "Europe/Paris",
            "2026-03-29T01:00:00Z",
            "2026-03-30T00:00:00Z",
        ),
        // ... a wildcard one does not (02:30 never comes; 03:30 CEST does).
        (
            "30 * * * *",
            "Europe/Paris",
            "2026-03-29T00:30:00Z",
            "2026-03-29T01:30:00Z",
        ),
        (
            "*/20 2 * * *",
            "Europe/Paris",
            "2026-03-28T02:00:00Z",
            "2026-03-30T00:00:00Z",
        ),
        // Paris shows 02:00-02:59 twice on 2026-10-25: a fixed time fires the first time only,
        // a wildcard one both times.
        (
            "30 2 * * *",
            "Europe/Paris",
            "2026-10-24T23:00:00Z",
            "2026-10-25T00:30:00Z",
        ),
        (
            "30 2 * * *",
            "Europe/Paris",
            "2026-10-25T00:30:00Z",
            "2026-10-26T01:30:00Z",
        ),
        (
            "30 * * * *",
            "Europe/Paris",
            "2026-10-25T00:30:00Z",
            "2026-10-25T01:30:00Z",
        ),
        (
            "*/30 2 * * *",
            "Europe/Paris",
            "2026-10-25T00:30:00Z",
            "2026-10-25T01:00:00Z",
        ),
        // Samoa skipped 2011-12-30 whole (10:00 UTC): a jump that long catches nothing up.
        (
            "0 1 30 12 *",
            "Pacific/Apia",
            "2011-12-29T00:00:00Z",
            "2012-12-29T11:00:00Z",
        ),
        // New York skips 02:00-02:59 on 2026-03-08 (07:00 UTC).
        (
            "30 2 * * *",
            "America/New_York",
            "2026-03-07T12:00:00Z",
            "2026-03-08T07:00:00Z",
        ),
        (
            "30 2 * * *",
            "America/New_York",
            "2026-03-08T07:00:00Z",
            "2026-03-09T06:30:00Z",
        ),
    ];

    #[test]
    fn next_firings_match_the_cronie_reference() {
        let mut wrong = Vec::new();
        for (expr, tz, after, want) in REFERENCE {
            let got = next(expr, tz, after);
            if got != *want {
                wrong.push(format!("{expr} ({tz}) after {after}: {got}, cron: {want}"));
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    #[test]
    fn expressions_that_never_fire_are_refused() {
        for (expr, want) in [
            (
                "0 0 31 2 *",
                "'0 0 31 2 *' never fires: February has no day 31",
            ),
            (
                "0 0 30 2 *",
                "'0 0 30 2 *' never fires: February has no day 30",
            ),
            ("0 0 30,31 feb *", "February has no day 30 or 31"),
            (
                "0 0 31 4,6,9,11 *",
                "April or June or September or November have no day 31",
            ),
            ("0 0 31 2 */2", "February has no day 31"),
        ] {
            let e = parse(expr, "UTC").expect_err(expr);
            assert!(e.contains(want), "{expr}: {e}");
        }
        // Either day field fires when both are restricted; a month with the day fires.
        for expr in ["0 0 31 2 mon", "0 0 31 2,3 *", "0 0 29 2 *"] {
            parse(expr, "UTC").expect(expr);
        }
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
        // cron refuses a step without a range, and names EventBridge's syntax for what it is.
        for (expr, want) in [
            ("5/15 * * * *", "minute: '5/15': a step needs a range"),
            ("0 12 * * ? *", "expected 5 fields"),
            (
                "0 12 ? * mon",
                "day of month: '?' is Quartz or EventBridge syntax",
            ),
            ("0 12 L * *", "'L' is Quartz or EventBridge syntax"),
            ("@reboot", "a schedule needs a time"),
            ("@fortnightly", "unknown macro"),
            ("0 0 * * 5-1", "day of week: range '5-1' runs backwards"),
            ("0 5-0 * * *", "hour: range '5-0' runs backwards"),
        ] {
            let e = parse(expr, "UTC").expect_err(expr);
            assert!(e.contains(want), "{expr}: {e}");
        }
        // A step larger than the field neither wraps nor overflows: only the start fires.
        for expr in ["1-59/4294967295 * * * *", "2-59/4294967290 * * * *"] {
            let c = parse(expr, "UTC").expect(expr);
            let minute = expr[..expr.find('-').unwrap_or(1)].to_string();
            assert_eq!(
                next(expr, "UTC", "2026-11-26T09:00:00Z"),
                format!("2026-11-26T09:{minute:0>2}:00Z"),
                "{expr}"
            );
            assert_eq!(c.minutes.count_ones(), 1, "{expr}");
        }
    }
}
