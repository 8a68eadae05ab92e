//! Pool names and Compute Engine resource names.
//!
//! Everything here is pure: parsing what a worker or an operator sent into a [`PoolName`], a
//! stored target, a zone URL.

use std::fmt;

/// The longest name Compute Engine accepts.
const MAX_GCE_NAME: usize = 63;

/// True for a valid Compute Engine resource name: `[a-z]([-a-z0-9]{0,61}[a-z0-9])?`.
pub fn is_gce_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_GCE_NAME
        && bytes[0].is_ascii_lowercase()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[bytes.len() - 1] != b'-'
}

/// A pool: `<image>:<machine_type>` or `<image>:<machine_type>:public`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PoolName {
    pub image: String,
    pub machine_type: String,
    pub public_ip: bool,
}

impl fmt::Display for PoolName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.image, self.machine_type)?;
        if self.public_ip {
            f.write_str(":public")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for PoolName {
    type Err = String;

    /// Parses an operator's pool name, e.g. `travis-ci-garnet-trusty-1503417006:n1-standard-2:public`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split(':').collect();
        let (image, machine_type, public_ip) = match parts.as_slice() {
            [image, machine_type] => (*image, *machine_type, false),
            [image, machine_type, "public"] => (*image, *machine_type, true),
            _ => {
                return Err(format!(
                    "pool `{}` is not `<image>:<machine_type>` or `<image>:<machine_type>:public`",
                    s.escape_debug()
                ));
            }
        };
        for (what, name) in [("image", image), ("machine type", machine_type)] {
            if !is_gce_name(name) {
                return Err(format!(
                    "pool `{}`: {what} `{}` is not a valid Compute Engine name",
                    s.escape_debug(),
                    name.escape_debug()
                ));
            }
        }
        Ok(PoolName {
            image: image.into(),
            machine_type: machine_type.into(),
            public_ip,
        })
    }
}

/// Reads a resource given as a bare name or as a (full or partial) Compute Engine URL whose
/// collection segment is `collection`, e.g.
/// `https://www.googleapis.com/compute/v1/projects/p/global/images/NAME` for `images`.
/// Returns the name, or why the value is not acceptable.
pub fn resource_name<'a>(value: &'a str, collection: &str) -> Result<&'a str, String> {
    if value.is_empty() {
        return Err("is empty".into());
    }
    if value.len() > 1024 {
        return Err(format!(
            "is {} bytes long; at most 1024 are accepted",
            value.len()
        ));
    }
    if !value.contains('/') {
        return if is_gce_name(value) {
            Ok(value)
        } else {
            Err(format!(
                "`{}` is not a valid Compute Engine name (lowercase letters, digits and `-`, at most 63)",
                value.escape_debug()
            ))
        };
    }
    let path = value
        .strip_prefix("https://")
        .and_then(|rest| rest.split_once('/'))
        .map_or(value, |(_host, path)| path);
    let segments: Vec<&str> = path.split('/').collect();
    let ok_segment = |s: &&str| {
        !s.is_empty()
            && *s != "."
            && *s != ".."
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
    };
    let name = segments.last().copied().unwrap_or_default();
    let well_formed = segments.iter().all(ok_segment)
        && segments.len() >= 4
        && segments.contains(&"projects")
        && segments[segments.len() - 2] == collection
        && is_gce_name(name);
    if well_formed {
        Ok(name)
    } else {
        Err(format!(
            "`{}` is neither a name nor a Compute Engine URL ending in `/{collection}/<name>`",
            value.escape_debug()
        ))
    }
}

/// A stored target (a decimal string; travis-ci/warmer and Lua's `tonumber` also accept `3.0`).
pub fn parse_target(value: &str) -> Option<u64> {
    let value = value.trim();
    value.parse::<u64>().ok().or_else(|| {
        let n: f64 = value.parse().ok()?;
        (n.is_finite() && n >= 0.0).then(|| n.floor() as u64)
    })
}

/// The short zone of a zone that may be a full URL (`…/zones/us-central1-c` → `us-central1-c`).
pub fn short_zone(zone: &str) -> &str {
    zone.rsplit('/').next().unwrap_or(zone)
}

/// One pool's level as the store reads it: what HireFire and the autoscaler decide on.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolLevel {
    pub pool: String,
    /// As stored (a decimal string; see [`Self::target`]).
    pub target: String,
    pub ready: u64,
    /// Unexpired boot reservations.
    pub booting: u64,
}

impl PoolLevel {
    /// The target as a number, `None` if what is stored is not one.
    pub fn target(&self) -> Option<u64> {
        parse_target(&self.target)
    }
}

/// One pool's state for `warmer status` and `/metrics`.
#[derive(Debug, Clone)]
pub struct PoolStatus {
    pub level: PoolLevel,
    /// Leases handed out and not yet swept.
    pub handed_out: u64,
    /// When the oldest warmed VM (the head of the list) was booted, Unix seconds: `None` for an
    /// empty pool, `Some(None)` when its age is unknown (travis-ci/warmer's entries).
    pub oldest_booted_at: Option<Option<u64>>,
}

/// Whether `name` matches `glob`: `*` any run of characters, `?` any one, the rest itself.
pub fn glob_matches(glob: &str, name: &str) -> bool {
    let (glob, name): (Vec<char>, Vec<char>) = (glob.chars().collect(), name.chars().collect());
    // The classic greedy match with one backtrack point per `*`: linear in practice.
    let (mut g, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        match glob.get(g) {
            Some('*') => {
                star = Some((g, n));
                g += 1;
            }
            Some(c) if *c == '?' || *c == name[n] => {
                g += 1;
                n += 1;
            }
            _ => match star {
                Some((sg, sn)) => {
                    g = sg + 1;
                    n = sn + 1;
                    star = Some((sg, sn + 1));
                }
                None => return false,
            },
        }
    }
    glob[g..].iter().all(|c| *c == '*')
}

impl PoolStatus {
    /// Its VMs that count against `WARMER_MAX_VMS`: ready, booting and handed out.
    pub fn vms(&self) -> u64 {
        self.level.ready + self.level.booting + self.handed_out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_glob_matches_runs_and_single_characters_and_nothing_else() {
        for (glob, name, expected) in [
            ("*", "a:n1", true),
            ("ubuntu-*", "ubuntu-2204:n2", true),
            ("ubuntu-*", "debian-12:n2", false),
            ("*:public", "a:n1:public", true),
            ("*:public", "a:n1", false),
            ("a?:n1", "ab:n1", true),
            ("a?:n1", "a:n1", false),
            ("*-*-*", "a-b-c", true),
            ("a:n1", "a:n1", true),
            ("a:n1", "a:n1x", false),
            ("", "", true),
            ("**a", "bba", true),
        ] {
            assert_eq!(glob_matches(glob, name), expected, "{glob} ~ {name}");
        }
    }

    #[test]
    fn gce_names_follow_the_documented_pattern() {
        for ok in [
            "a",
            "n1-standard-2",
            "travis-ci-garnet-trusty-1503417006",
            "e2-medium",
        ] {
            assert!(is_gce_name(ok), "{ok}");
        }
        let too_long = "a".repeat(64);
        for bad in [
            "",
            "A",
            "1abc",
            "abc-",
            "a_b",
            "a.b",
            "a/b",
            "..",
            "a\0b",
            too_long.as_str(),
        ] {
            assert!(!is_gce_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn urls_and_short_names_name_the_same_resource() {
        let url = "https://www.googleapis.com/compute/v1/projects/p/global/images/travis-ci-garnet-trusty-1503417006";
        assert_eq!(
            resource_name(url, "images"),
            Ok("travis-ci-garnet-trusty-1503417006")
        );
        assert_eq!(
            resource_name(
                "projects/p/zones/us-central1-c/machineTypes/n1-standard-2",
                "machineTypes"
            ),
            Ok("n1-standard-2")
        );
        assert_eq!(
            resource_name("n1-standard-2", "machineTypes"),
            Ok("n1-standard-2")
        );
        for bad in [
            "a/b",
            "../images/x",
            "projects/p/global/images/../x",
            "projects/p/global/snapshots/x",
            "https://www.googleapis.com/compute/v1/projects/p/global/images/X",
            "projects/p/global/images/",
            "im\0age",
        ] {
            assert!(resource_name(bad, "images").is_err(), "{bad:?}");
        }
    }

    #[test]
    fn pool_names_round_trip_and_reject_garbage() {
        let pool: PoolName = "img:n1-standard-2:public".parse().unwrap();
        assert!(pool.public_ip);
        assert_eq!(pool.to_string(), "img:n1-standard-2:public");
        for bad in [
            "img",
            "img:",
            "img:n1:private",
            "Img:n1",
            "img:n1:public:x",
            "_leases:x",
        ] {
            assert!(bad.parse::<PoolName>().is_err(), "{bad}");
        }
    }
}
