//! Recurring maintenance windows: an operator pre-approves a named provider on one machine,
//! e.g. "weekdays 06:00–08:00 Europe/Berlin". A session of that provider's technicians whose
//! whole time window lies inside one occurrence needs no further release.
//!
//! Times are wall-clock times in the window's zone, so a window stays at 06:00 local across
//! daylight-saving changes. An end at or before the start crosses midnight (22:00–02:00 runs
//! into the next day); the days name the day the window opens.

use jiff::{civil, tz::TimeZone, Timestamp};

use super::UnixSecs;

/// The days of the week a window opens on: bit 0 Monday ... bit 6 Sunday.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Days(u8);

const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

impl Days {
    pub fn bits(self) -> u8 {
        self.0
    }

    /// From stored bits; `None` for no day or unknown bits.
    pub fn from_bits(bits: u8) -> Option<Days> {
        (bits != 0 && bits < 0x80).then_some(Days(bits))
    }

    /// `mon-fri`, `sat,sun`, `mon,wed-fri`, `weekdays`, `daily`.
    pub fn parse(text: &str) -> Result<Days, String> {
        let bad = || {
            format!(
                "days {text:?}: give e.g. mon-fri, sat,sun, weekdays or daily (days: {})",
                DAY_NAMES.join(" ")
            )
        };
        let day = |d: &str| {
            DAY_NAMES.iter().position(|n| n.eq_ignore_ascii_case(d.trim())).ok_or_else(bad)
        };
        let mut bits = 0u8;
        for part in text.split(',') {
            match part.trim().to_ascii_lowercase().as_str() {
                "daily" => bits |= 0x7f,
                "weekdays" => bits |= 0x1f,
                "weekends" => bits |= 0x60,
                p => match p.split_once('-') {
                    Some((a, b)) => {
                        let (a, b) = (day(a)?, day(b)?);
                        if a > b {
                            return Err(bad());
                        }
                        for d in a..=b {
                            bits |= 1 << d;
                        }
                    }
                    None => bits |= 1 << day(p)?,
                },
            }
        }
        Days::from_bits(bits).ok_or_else(bad)
    }

    fn has(self, day: civil::Weekday) -> bool {
        self.0 & (1 << day.to_monday_zero_offset()) != 0
    }
}

impl std::fmt::Display for Days {
    /// Runs of days as ranges: `mon-fri`, `mon,wed-fri`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        let mut d = 0;
        while d < 7 {
            if self.0 & (1 << d) == 0 {
                d += 1;
                continue;
            }
            let start = d;
            while d + 1 < 7 && self.0 & (1 << (d + 1)) != 0 {
                d += 1;
            }
            parts.push(if d == start {
                DAY_NAMES[start].to_owned()
            } else {
                format!("{}-{}", DAY_NAMES[start], DAY_NAMES[d])
            });
            d += 1;
        }
        f.write_str(&parts.join(","))
    }
}

/// Minutes after midnight, from `HH:MM` (00:00 to 24:00).
pub fn parse_time(text: &str) -> Result<u16, String> {
    let bad = || format!("time {text:?}: give HH:MM, 00:00 to 24:00");
    let (h, m) = text.trim().split_once(':').ok_or_else(bad)?;
    let (h, m): (u16, u16) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if m >= 60 || h > 24 || (h == 24 && m != 0) || text.trim().len() != 5 {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

pub fn format_time(minutes: u16) -> String {
    format!("{:02}:{:02}", minutes / 60, minutes % 60)
}

/// Checks an IANA time zone name (`Europe/Berlin`, `UTC`).
pub fn check_zone(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 {
        return Err(format!("time zone {name:?}: give an IANA name such as Europe/Berlin"));
    }
    TimeZone::get(name)
        .map(|_| ())
        .map_err(|_| format!("unknown time zone {name:?}: give an IANA name such as Europe/Berlin"))
}

/// A machine's recurring window for one provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    pub id: i64,
    pub machine_id: i64,
    pub machine: String,
    /// The provider organization whose technicians it pre-approves.
    pub provider: String,
    pub days: Days,
    /// Opens at, minutes after local midnight.
    pub start: u16,
    /// Closes at, minutes after local midnight (at or before `start`: the next day).
    pub end: u16,
    /// IANA time zone name.
    pub zone: String,
    pub created_by: String,
    pub created_at: UnixSecs,
}

impl Window {
    /// `mon-fri 06:00-08:00 Europe/Berlin`.
    pub fn describe(&self) -> String {
        format!("{} {}-{} {}", self.days, format_time(self.start), format_time(self.end), self.zone)
    }

    /// Whether `[from, until)` lies inside one occurrence of the window.
    pub fn covers(&self, from: UnixSecs, until: UnixSecs) -> bool {
        self.occurrence_around(from).is_some_and(|(open, close)| open <= from && until <= close)
    }

    /// The occurrence (open, close) that contains `at`, if any.
    pub fn occurrence_around(&self, at: UnixSecs) -> Option<(UnixSecs, UnixSecs)> {
        let tz = TimeZone::get(&self.zone).ok()?;
        let day = Timestamp::from_second(at).ok()?.to_zoned(tz.clone()).date();
        // An occurrence that contains `at` opened today or (crossing midnight) yesterday.
        [day.yesterday().ok()?, day].into_iter().rev().find_map(|d| {
            let (open, close) = self.occurrence_on(d, &tz)?;
            (open <= at && at < close).then_some((open, close))
        })
    }

    /// The occurrence open at `now` or the next to open (within eight days).
    pub fn next_occurrence(&self, now: UnixSecs) -> Option<(UnixSecs, UnixSecs)> {
        let tz = TimeZone::get(&self.zone).ok()?;
        let mut day =
            Timestamp::from_second(now).ok()?.to_zoned(tz.clone()).date().yesterday().ok()?;
        for _ in 0..9 {
            if let Some((open, close)) = self.occurrence_on(day, &tz) {
                if close > now {
                    return Some((open, close));
                }
            }
            day = day.tomorrow().ok()?;
        }
        None
    }

    /// The occurrence that opens on `day`, if the window opens that weekday.
    fn occurrence_on(&self, day: civil::Date, tz: &TimeZone) -> Option<(UnixSecs, UnixSecs)> {
        if !self.days.has(day.weekday()) {
            return None;
        }
        let at = |d: civil::Date, minutes: u16| -> Option<UnixSecs> {
            let (d, minutes) =
                if minutes == 24 * 60 { (d.tomorrow().ok()?, 0) } else { (d, minutes) };
            let dt = d.at((minutes / 60) as i8, (minutes % 60) as i8, 0, 0);
            // A wall time skipped or repeated by a daylight-saving change resolves as the
            // usual ("compatible") way: later in a gap, earlier in a fold.
            Some(tz.to_ambiguous_zoned(dt).compatible().ok()?.timestamp().as_second())
        };
        let open = at(day, self.start)?;
        let close_day = if self.end <= self.start { day.tomorrow().ok()? } else { day };
        let close = at(close_day, self.end)?;
        (open < close).then_some((open, close))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(days: &str, start: &str, end: &str, zone: &str) -> Window {
        Window {
            id: 1,
            machine_id: 1,
            machine: "m1".into(),
            provider: "builder".into(),
            days: Days::parse(days).unwrap(),
            start: parse_time(start).unwrap(),
            end: parse_time(end).unwrap(),
            zone: zone.into(),
            created_by: "op".into(),
            created_at: 0,
        }
    }

    fn unix(text: &str) -> UnixSecs {
        text.parse::<Timestamp>().unwrap().as_second()
    }

    #[test]
    fn days_parse_and_print() {
        assert_eq!(Days::parse("mon-fri").unwrap().to_string(), "mon-fri");
        assert_eq!(Days::parse("weekdays").unwrap(), Days::parse("Mon-Fri").unwrap());
        assert_eq!(Days::parse("mon,wed-fri,sun").unwrap().to_string(), "mon,wed-fri,sun");
        assert_eq!(Days::parse("daily").unwrap().to_string(), "mon-sun");
        for bad in ["", "fri-mon", "monday", "mon;tue", "x-y", ","] {
            assert!(Days::parse(bad).is_err(), "{bad:?}");
        }
        assert!(Days::from_bits(0).is_none());
        assert!(Days::from_bits(0x80).is_none());
    }

    #[test]
    fn times_parse() {
        assert_eq!(parse_time("06:00"), Ok(360));
        assert_eq!(parse_time("24:00"), Ok(1440));
        for bad in ["6:00", "06:60", "25:00", "24:01", "0600", "-1:00", "06:00:00", "aa:bb"] {
            assert!(parse_time(bad).is_err(), "{bad:?}");
        }
        assert_eq!(format_time(1439), "23:59");
    }

    #[test]
    fn zones_are_checked() {
        assert!(check_zone("Europe/Berlin").is_ok());
        assert!(check_zone("UTC").is_ok());
        assert!(check_zone("Mars/Olympus").is_err());
        assert!(check_zone("").is_err());
    }

    #[test]
    fn weekday_mornings_in_berlin() {
        let w = window("mon-fri", "06:00", "08:00", "Europe/Berlin");
        assert_eq!(w.describe(), "mon-fri 06:00-08:00 Europe/Berlin");
        // Wednesday 2 December 2026, winter time (UTC+1): 06:00 local is 05:00Z.
        assert!(w.covers(unix("2026-12-02T05:00:00Z"), unix("2026-12-02T07:00:00Z")));
        assert!(w.covers(unix("2026-12-02T05:30:00Z"), unix("2026-12-02T06:00:00Z")));
        assert!(!w.covers(unix("2026-12-02T04:59:00Z"), unix("2026-12-02T06:00:00Z")));
        assert!(!w.covers(unix("2026-12-02T05:00:00Z"), unix("2026-12-02T07:00:01Z")));
        // Saturday: closed.
        assert!(!w.covers(unix("2026-12-05T05:00:00Z"), unix("2026-12-05T06:00:00Z")));
        // Summer time (UTC+2): still 06:00 local, now 04:00Z.
        assert!(w.covers(unix("2026-07-01T04:00:00Z"), unix("2026-07-01T06:00:00Z")));
        assert!(!w.covers(unix("2026-07-01T05:00:00Z"), unix("2026-07-01T06:30:00Z")));
        // Two days' occurrences never join into one.
        assert!(!w.covers(unix("2026-12-02T05:00:00Z"), unix("2026-12-03T07:00:00Z")));
    }

    #[test]
    fn the_next_occurrence() {
        let w = window("mon-fri", "06:00", "08:00", "Europe/Berlin");
        // Saturday 5 December 2026 noon: next is Monday 7th, 06:00 local = 05:00Z.
        let (open, close) = w.next_occurrence(unix("2026-12-05T12:00:00Z")).unwrap();
        assert_eq!((open, close), (unix("2026-12-07T05:00:00Z"), unix("2026-12-07T07:00:00Z")));
        // Inside one: that one.
        let (open, _) = w.next_occurrence(unix("2026-12-07T06:00:00Z")).unwrap();
        assert_eq!(open, unix("2026-12-07T05:00:00Z"));
    }

    #[test]
    fn a_window_across_midnight_belongs_to_the_day_it_opens() {
        let w = window("fri", "22:00", "02:00", "UTC");
        // Friday 4 December 2026 22:00 to Saturday 02:00.
        assert!(w.covers(unix("2026-12-04T22:00:00Z"), unix("2026-12-05T02:00:00Z")));
        assert!(w.covers(unix("2026-12-05T01:00:00Z"), unix("2026-12-05T01:30:00Z")));
        // Saturday night is not Friday night.
        assert!(!w.covers(unix("2026-12-05T22:30:00Z"), unix("2026-12-05T23:00:00Z")));
        // Thursday after midnight: Thursday does not open.
        assert!(!w.covers(unix("2026-12-04T01:00:00Z"), unix("2026-12-04T01:30:00Z")));
    }

    #[test]
    fn a_whole_day_and_the_spring_gap() {
        let w = window("sun", "00:00", "24:00", "Europe/Berlin");
        // Sunday 29 March 2026: clocks go 02:00 -> 03:00; the day is 23 hours long.
        let (open, close) = w.occurrence_around(unix("2026-03-29T12:00:00Z")).unwrap();
        assert_eq!(close - open, 23 * 3600);
        // A window whose opening falls into the gap opens when the clock jumps: 02:30 is 03:30.
        let w = window("sun", "02:30", "04:00", "Europe/Berlin");
        let (open, _) = w.occurrence_around(unix("2026-03-29T01:30:00Z")).unwrap();
        assert_eq!(open, unix("2026-03-29T01:30:00Z"));
    }
}
