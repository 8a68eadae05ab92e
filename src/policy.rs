//! A pool's sizing policy as an operator sets it (`warmer pool policy`) and as it is stored
//! (`<ns>:_policies`, one JSON object per pool): bounds, schedules, and whether demand sizes
//! the pool.
//!
//! A schedule is `CRON@TZ=MIN`: a five-field cron (day-of-week and month names allowed), an IANA
//! time zone, and the minimum it sets while the current minute, in that zone, matches the cron.
//! For example `* 7-18 * * MON-FRI@Europe/Berlin=20` keeps 20 VMs on weekdays from 07:00 to
//! 18:59, Berlin time. Parsing uses `croner` (the cron) and `jiff` (time zones, from its bundled
//! copy of the IANA database, so a machine without `/usr/share/zoneinfo` reads them the same).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The default wanted share of checkouts that find a warm VM.
pub const DEFAULT_HIT: f64 = 0.99;

/// How a pool is sized. Stored as JSON; [`Policy::validate`] holds for every stored policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    pub min: u32,
    pub max: u32,
    /// Size from demand within `[min, max]`; otherwise the target is the (scheduled) minimum.
    pub adaptive: bool,
    /// The wanted share of checkouts that find a warm VM, in (0, 1).
    pub hit: f64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub schedules: Vec<Schedule>,
}

impl Policy {
    /// Every rule a policy must keep, each broken one named.
    pub fn validate(&self) -> Result<(), String> {
        if self.min > self.max {
            return Err(format!(
                "min {} is above max {}: min must be at most max",
                self.min, self.max
            ));
        }
        if !(self.hit > 0.0 && self.hit < 1.0) {
            return Err(format!(
                "hit {} is outside (0, 1): it is the wanted share of warm checkouts, such as 0.99",
                self.hit
            ));
        }
        if let Some(schedule) = self.schedules.iter().find(|s| s.min > self.max) {
            return Err(format!(
                "schedule `{schedule}` asks for {} VMs, above max {}",
                schedule.min, self.max
            ));
        }
        Ok(())
    }

    /// This policy within the fleet cap: no bound, schedule or demand asks for more than `cap`
    /// (a policy set under a higher `WARMER_MAX_VMS`).
    pub fn capped(&self, cap: u32) -> Policy {
        let mut capped = self.clone();
        capped.max = capped.max.min(cap);
        capped.min = capped.min.min(capped.max);
        for schedule in &mut capped.schedules {
            schedule.min = schedule.min.min(capped.max);
        }
        capped
    }

    /// The minimum at `now` (Unix seconds): the policy's, raised by every active schedule.
    /// Also says whether a schedule raised it.
    pub fn min_at(&self, now: u64) -> (u32, bool) {
        let scheduled = self
            .schedules
            .iter()
            .filter(|s| s.is_active(now))
            .map(|s| s.min)
            .max()
            .unwrap_or(0);
        if scheduled > self.min {
            (scheduled, true)
        } else {
            (self.min, false)
        }
    }
}

impl fmt::Display for Policy {
    /// `min 2 max 40 adaptive hit 0.99 schedule "…"` — what `warmer pool list` shows.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "min {} max {}", self.min, self.max)?;
        if self.adaptive {
            write!(f, " adaptive hit {}", self.hit)?;
        } else {
            write!(f, " static")?;
        }
        for schedule in &self.schedules {
            write!(f, " schedule \"{schedule}\"")?;
        }
        Ok(())
    }
}

/// `CRON@TZ=MIN`: while the cron matches the current minute in the zone, the pool keeps at least
/// `MIN` VMs.
#[derive(Clone)]
pub struct Schedule {
    text: String,
    cron: croner::Cron,
    zone: jiff::tz::TimeZone,
    pub min: u32,
}

impl Schedule {
    /// Whether the minute of `now` (Unix seconds), in the schedule's zone, matches its cron.
    pub fn is_active(&self, now: u64) -> bool {
        let minute = i64::try_from(now - now % 60).unwrap_or(i64::MAX);
        let Ok(at) = jiff::Timestamp::from_second(minute) else {
            return false;
        };
        self.cron
            .is_time_matching(&at.to_zoned(self.zone.clone()))
            .unwrap_or(false)
    }
}

/// A cron's five fields and what each takes.
const CRON_FIELDS: [(&str, &str); 5] = [
    ("minute", "0-59"),
    ("hour", "0-23"),
    ("day-of-month", "1-31"),
    ("month", "1-12 or JAN-DEC"),
    ("day-of-week", "0-7 or SUN-SAT"),
];

impl FromStr for Schedule {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let shape = || {
            format!(
                "schedule `{text}` is not `CRON@TZ=MIN`, such as `* 7-18 * * MON-FRI@Europe/Berlin=20`"
            )
        };
        let (rest, min) = text.rsplit_once('=').ok_or_else(shape)?;
        let (cron, zone) = rest.rsplit_once('@').ok_or_else(shape)?;
        let min: u32 = min
            .trim()
            .parse()
            .map_err(|_| format!("schedule `{text}`: `{min}` is not a number of VMs"))?;
        let zone_name = zone.trim();
        let zone = jiff::tz::TimeZone::get(zone_name).map_err(|_| {
            format!(
                "schedule `{text}`: unknown time zone `{zone_name}` (an IANA name such as `Europe/Berlin`, `America/New_York` or `UTC`)"
            )
        })?;
        let fields = cron.split_whitespace().count();
        if fields != 5 {
            return Err(format!(
                "schedule `{text}`: the cron `{}` has {fields} fields, not five (minute hour day-of-month month day-of-week)",
                cron.trim()
            ));
        }
        let parse = |cron: &str| {
            croner::parser::CronParser::builder()
                .seconds(croner::parser::Seconds::Disallowed)
                .year(croner::parser::Year::Disallowed)
                .build()
                .parse(cron)
        };
        let cron = parse(cron.trim()).map_err(|error| {
            // Which field: each tried alone, the others `*`.
            let given: Vec<&str> = cron.split_whitespace().collect();
            let culprit = CRON_FIELDS.iter().enumerate().find(|(i, _)| {
                let alone: Vec<&str> = (0..5).map(|j| if j == *i { given[j] } else { "*" }).collect();
                parse(&alone.join(" ")).is_err()
            });
            match culprit {
                Some((i, (field, range))) => format!(
                    "schedule `{text}`: bad cron `{}`: its {field} field `{}` is not valid ({range}): {error}",
                    cron.trim(),
                    given[i]
                ),
                None => format!("schedule `{text}`: bad cron `{}`: {error}", cron.trim()),
            }
        })?;
        Ok(Schedule {
            text: text.trim().to_string(),
            cron,
            zone,
            min,
        })
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Schedule({:?})", self.text)
    }
}

impl PartialEq for Schedule {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl Serialize for Schedule {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Schedule {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-11-30 08:30:00 UTC, a Monday: 09:30 in Berlin, 03:30 in New York.
    const MONDAY_0830_UTC: u64 = 1_796_027_400;

    fn policy(min: u32, max: u32, schedules: &[&str]) -> Policy {
        Policy {
            min,
            max,
            adaptive: false,
            hit: DEFAULT_HIT,
            schedules: schedules.iter().map(|s| s.parse().unwrap()).collect(),
        }
    }

    #[test]
    fn a_schedule_is_active_in_its_own_time_zone() {
        let berlin: Schedule = "* 9-17 * * MON-FRI@Europe/Berlin=10".parse().unwrap();
        let new_york: Schedule = "* 9-17 * * mon-fri@America/New_York=10".parse().unwrap();
        assert!(berlin.is_active(MONDAY_0830_UTC));
        assert!(!new_york.is_active(MONDAY_0830_UTC));
        assert!(new_york.is_active(MONDAY_0830_UTC + 6 * 3600));
        // Seconds within the minute do not matter; Saturday is outside MON-FRI.
        assert!(berlin.is_active(MONDAY_0830_UTC + 59));
        assert!(!berlin.is_active(MONDAY_0830_UTC + 5 * 86_400));
    }

    #[test]
    fn the_minimum_is_raised_by_the_highest_active_schedule() {
        let p = policy(
            2,
            40,
            &["* 9-17 * * MON-FRI@Europe/Berlin=10", "* * * * *@UTC=5"],
        );
        assert_eq!(p.min_at(MONDAY_0830_UTC), (10, true));
        assert_eq!(p.min_at(MONDAY_0830_UTC + 5 * 86_400), (5, true));
        assert_eq!(policy(7, 40, &["* * * * *@UTC=5"]).min_at(0), (7, false));
    }

    #[test]
    fn bad_policies_are_refused_with_what_is_wrong() {
        let error = |text: &str| text.parse::<Schedule>().unwrap_err();
        assert!(error("* * * * *=3").contains("CRON@TZ=MIN"));
        assert!(error("* * * * *@Mars/Olympus=3").contains("unknown time zone `Mars/Olympus`"));
        assert!(error("* * * *@UTC=3").contains("4 fields, not five"));
        assert!(error("0 * * * * *@UTC=3").contains("6 fields"));
        assert!(error("* 25 * * *@UTC=3").contains("its hour field `25` is not valid (0-23)"));
        assert!(error("* * * * XYZ@UTC=3").contains("its day-of-week field `XYZ`"));
        assert!(error("61 * * * *@UTC=3").contains("its minute field `61`"));
        assert!(error("* * 0 * *@UTC=3").contains("its day-of-month field `0`"));
        assert!(error("* * * 13 *@UTC=3").contains("its month field `13`"));
        assert!(error("* * * * *@UTC=lots").contains("`lots` is not a number"));
        assert!(
            policy(5, 3, &[])
                .validate()
                .unwrap_err()
                .contains("min 5 is above max 3")
        );
        let hit = Policy {
            hit: 1.0,
            ..policy(0, 3, &[])
        };
        assert!(hit.validate().unwrap_err().contains("outside (0, 1)"));
        let high = policy(0, 3, &["* * * * *@UTC=9"]);
        assert!(high.validate().unwrap_err().contains("above max 3"));
        assert_eq!(policy(0, 3, &["* * * * *@UTC=3"]).validate(), Ok(()));
    }

    #[test]
    fn a_policy_round_trips_through_its_stored_json() {
        let p = Policy {
            adaptive: true,
            ..policy(1, 9, &["30 6 * * SUN@Asia/Tokyo=4"])
        };
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(
            json,
            r#"{"min":1,"max":9,"adaptive":true,"hit":0.99,"schedules":["30 6 * * SUN@Asia/Tokyo=4"]}"#
        );
        assert_eq!(serde_json::from_str::<Policy>(&json).unwrap(), p);
        assert!(
            serde_json::from_str::<Policy>(
                r#"{"min":1,"max":9,"adaptive":true,"hit":0.5,"schedules":["bad"]}"#
            )
            .is_err()
        );
    }
}
