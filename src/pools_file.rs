//! Pools as code: the TOML file `warmer apply` reads and `warmer export` writes, and the diff
//! between such a file and what Redis holds. Pure — parsing, validation, the diff and the
//! rendering; the store applies a diff all or nothing (`apply.lua`) and `operator` prints it.
//!
//! ```toml
//! [pools."ubuntu-2204:n2-standard-2"]
//! target = 3                  # static: this many warmed VMs
//!
//! [pools."ubuntu-2204:n2-standard-2:public"]
//! min = 1                     # sized: the reconciler sets the target within [min, max]
//! max = 20
//! adaptive = true
//! hit = 0.99
//! schedules = ["* 7-18 * * MON-FRI@Europe/Berlin=20"]
//! ```
//!
//! A pool has either `target` (static) or `max` (a policy: `min` 0, `adaptive` false and `hit`
//! 0.99 when left out). Rollovers are not part of the file: a rollover is a move in progress that
//! ends by itself, not a state to keep; a pool taking part in one is refused until it ends.
//! `export` writes every field of every pool, sorted, so exporting what a file applied gives the
//! file back byte for byte when it was written in that form.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};

use serde::Deserialize;

use crate::policy::{DEFAULT_HIT, Policy};
use crate::pool::{PoolName, parse_target};

/// What a file asks of one pool.
#[derive(Debug, Clone, PartialEq)]
pub enum Spec {
    /// Keep this many warmed VMs.
    Static(u32),
    /// Let the reconciler size it.
    Sized(Policy),
}

/// A pool as Redis holds it, the raw values the diff compares with (and `apply.lua` checks are
/// still there): the target in `poolconfigs` and the policy's JSON in `_policies`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stored {
    pub target: Option<String>,
    pub policy: Option<String>,
}

impl Stored {
    /// What the stored values mean, or why they cannot be read.
    fn spec(&self) -> Result<Option<Spec>, String> {
        if let Some(json) = &self.policy {
            let policy = serde_json::from_str::<Policy>(json)
                .map_err(|error| format!("unreadable policy: {error}"))?;
            policy
                .validate()
                .map_err(|error| format!("invalid policy: {error}"))?;
            return Ok(Some(Spec::Sized(policy)));
        }
        match &self.target {
            None => Ok(None),
            Some(raw) => match parse_target(raw).and_then(|t| u32::try_from(t).ok()) {
                Some(target) => Ok(Some(Spec::Static(target))),
                None => Err(format!("unreadable target `{}`", raw.escape_debug())),
            },
        }
    }
}

/// One pool's change: from what Redis holds (`before`, checked again when it is applied) to
/// `after` (`None`: the pool is deleted).
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub pool: PoolName,
    pub before: Stored,
    pub after: Option<Spec>,
}

impl Change {
    /// `+` a new pool, `-` a deleted one, `~` a changed one.
    pub fn sign(&self) -> char {
        match (&self.before, &self.after) {
            (_, None) => '-',
            (Stored { target: None, .. }, _) => '+',
            _ => '~',
        }
    }

    /// What changes, in words: `target 2 -> 5`, `policy min 1 max 4 static`, `deleted`.
    pub fn describe(&self) -> String {
        let before = match self.before.spec() {
            Ok(spec) => spec.map(|s| s.to_string()),
            Err(why) => Some(why),
        };
        match (before, &self.after) {
            (_, None) => match &self.before.target {
                Some(target) => format!(
                    "deleted (target {}); its warmed VMs are recorded for deletion",
                    target.escape_debug()
                ),
                None => "deleted".into(),
            },
            (None, Some(after)) => after.to_string(),
            (Some(before), Some(after)) => format!("{before} -> {after}"),
        }
    }
}

impl fmt::Display for Spec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Spec::Static(target) => write!(f, "target {target}"),
            Spec::Sized(policy) => write!(f, "policy {policy}"),
        }
    }
}

/// The pools a file asks for.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PoolsFile {
    pub pools: BTreeMap<PoolName, Spec>,
}

/// A pool's table as written, before it is checked.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpec {
    target: Option<u32>,
    min: Option<u32>,
    max: Option<u32>,
    adaptive: Option<bool>,
    hit: Option<f64>,
    schedules: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    pools: BTreeMap<String, toml::Spanned<RawSpec>>,
}

impl PoolsFile {
    /// Parses and checks a file's `text`; every error names `path`, the line and the column,
    /// and what is wrong. `max_vms` is the fleet cap no target or `max` may exceed.
    pub fn parse(path: &str, text: &str, max_vms: u32) -> Result<PoolsFile, String> {
        let raw: RawFile = toml::from_str(text).map_err(|error| {
            let at = error
                .span()
                .map(|span| location(text, span.start))
                .unwrap_or_default();
            format!("{path}{at}: {}", error.message().trim_end())
        })?;
        let mut pools = BTreeMap::new();
        for (name, spanned) in raw.pools {
            let at = location(text, spanned.span().start);
            let fail = |why: String| format!("{path}{at}: pool `{}`: {why}", name.escape_debug());
            let pool: PoolName = name.parse().map_err(|error: String| fail(error))?;
            let spec = spanned.into_inner().check(max_vms).map_err(fail)?;
            pools.insert(pool, spec);
        }
        Ok(PoolsFile { pools })
    }

    /// The changes that make `current` (pool → what Redis holds) what this file asks: pools of
    /// the file that differ, and with `prune` the pools of `current` the file leaves out.
    pub fn diff(&self, current: &BTreeMap<PoolName, Stored>, prune: bool) -> Vec<Change> {
        let mut changes = Vec::new();
        for (pool, spec) in &self.pools {
            let before = current.get(pool).cloned().unwrap_or_default();
            if before.spec().ok().flatten().as_ref() != Some(spec) {
                changes.push(Change {
                    pool: pool.clone(),
                    before,
                    after: Some(spec.clone()),
                });
            }
        }
        if prune {
            for (pool, stored) in current {
                // A pool whose values cannot be read is not in an export: pruning it would make
                // exporting and applying with --prune delete it.
                let readable = stored.spec().is_ok();
                if !self.pools.contains_key(pool) && stored.target.is_some() && readable {
                    changes.push(Change {
                        pool: pool.clone(),
                        before: stored.clone(),
                        after: None,
                    });
                }
            }
        }
        changes.sort_by(|a, b| a.pool.cmp(&b.pool));
        changes
    }
}

impl RawSpec {
    fn check(self, max_vms: u32) -> Result<Spec, String> {
        let policy_field = [
            self.min.map(|_| "min"),
            self.adaptive.map(|_| "adaptive"),
            self.hit.map(|_| "hit"),
            self.schedules.as_ref().map(|_| "schedules"),
        ]
        .into_iter()
        .flatten()
        .next();
        let over_cap = |what: &str, n: u32| {
            format!(
                "{what} {n} is above WARMER_MAX_VMS ({max_vms}), the most VMs this deployment may have"
            )
        };
        match (self.target, self.max) {
            (Some(_), Some(_)) => Err(
                "has both `target` and `max`: a pool is static (`target`) or sized by a policy (`max`, with `min`, `adaptive`, `hit`, `schedules`), not both".into(),
            ),
            (None, None) => Err(match policy_field {
                Some(field) => format!("has `{field}` but no `max`: a policy needs its `max`"),
                None => "has neither `target` (a static pool) nor `max` (a sized pool)".into(),
            }),
            (Some(target), None) => match policy_field {
                Some(field) => Err(format!(
                    "has `target` and `{field}`: `{field}` belongs to a policy, which needs `max` instead of `target`"
                )),
                None if target > max_vms => Err(over_cap("target", target)),
                None => Ok(Spec::Static(target)),
            },
            (None, Some(max)) => {
                let schedules = self
                    .schedules
                    .unwrap_or_default()
                    .iter()
                    .map(|s| s.parse())
                    .collect::<Result<_, String>>()?;
                let policy = Policy {
                    min: self.min.unwrap_or(0),
                    max,
                    adaptive: self.adaptive.unwrap_or(false),
                    hit: self.hit.unwrap_or(DEFAULT_HIT),
                    schedules,
                };
                policy.validate()?;
                if max > max_vms {
                    return Err(over_cap("max", max));
                }
                Ok(Spec::Sized(policy))
            }
        }
    }
}

/// `:<line>:<column>` (both from 1) of byte `offset` in `text`.
fn location(text: &str, offset: usize) -> String {
    let end = (0..=offset.min(text.len()))
        .rev()
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(0);
    let before = &text[..end];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    format!(":{line}:{column}")
}

/// The pools of `current` as a file `apply` takes back unchanged; a pool whose stored values
/// cannot be read is written as a comment saying why, so that applying the export leaves it be.
pub fn export(current: &BTreeMap<PoolName, Stored>) -> String {
    let mut out = String::from(
        "# warmer's pools, as `warmer export` wrote them; change them with `warmer apply -f FILE`.\n\
         # A pool has `target` (static) or a policy: `max`, `min`, `adaptive`, `hit`, `schedules`.\n",
    );
    for (pool, stored) in current {
        let spec = match stored.spec() {
            Ok(Some(spec)) => spec,
            Ok(None) => continue,
            Err(why) => {
                let _ = write!(
                    out,
                    "\n# {} is left out: {why}; `warmer pool set` or `pool delete` replaces it\n",
                    quoted(&pool.to_string())
                );
                continue;
            }
        };
        let _ = writeln!(out, "\n[pools.{}]", quoted(&pool.to_string()));
        match spec {
            Spec::Static(target) => {
                let _ = writeln!(out, "target = {target}");
            }
            Spec::Sized(policy) => {
                let _ = writeln!(out, "min = {}\nmax = {}", policy.min, policy.max);
                let _ = writeln!(
                    out,
                    "adaptive = {}\nhit = {:?}",
                    policy.adaptive, policy.hit
                );
                if !policy.schedules.is_empty() {
                    let schedules: Vec<String> = policy
                        .schedules
                        .iter()
                        .map(|s| quoted(&s.to_string()))
                        .collect();
                    let _ = writeln!(out, "schedules = [{}]", schedules.join(", "));
                }
            }
        }
    }
    out
}

/// `text` as a TOML basic string.
fn quoted(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAP: u32 = 200;

    fn pool(name: &str) -> PoolName {
        name.parse().expect("a pool name")
    }

    fn stored(target: &str, policy: Option<&Policy>) -> Stored {
        Stored {
            target: Some(target.into()),
            policy: policy.map(|p| serde_json::to_string(p).expect("a policy serializes")),
        }
    }

    fn sized(min: u32, max: u32) -> Policy {
        Policy {
            min,
            max,
            adaptive: true,
            hit: 0.99,
            schedules: vec![
                "* 7-18 * * MON-FRI@Europe/Berlin=5"
                    .parse()
                    .expect("a schedule"),
            ],
        }
    }

    #[test]
    fn an_export_parses_back_to_the_same_pools_and_exports_byte_for_byte_the_same() {
        let current = BTreeMap::from([
            (pool("a:n1"), stored("3", None)),
            (pool("b:n1:public"), stored("2", Some(&sized(1, 20)))),
            (
                pool("c:n1"),
                stored(
                    "0",
                    Some(&Policy {
                        hit: 0.995,
                        adaptive: false,
                        ..sized(0, 8)
                    }),
                ),
            ),
        ]);
        let text = export(&current);
        let file = PoolsFile::parse("x.toml", &text, CAP).expect("an export parses");
        assert_eq!(file.diff(&current, true), [], "{text}");
        let applied: BTreeMap<PoolName, Stored> = file
            .pools
            .iter()
            .map(|(p, spec)| {
                let stored = match spec {
                    Spec::Static(t) => stored(&t.to_string(), None),
                    Spec::Sized(policy) => stored("9", Some(policy)),
                };
                (p.clone(), stored)
            })
            .collect();
        assert_eq!(export(&applied), text);
    }

    #[test]
    fn the_diff_names_new_changed_and_pruned_pools_and_leaves_the_rest_alone() {
        let current = BTreeMap::from([
            (pool("same:n1"), stored("3", None)),
            (pool("grow:n1"), stored("2", None)),
            (pool("sized:n1"), stored("4", Some(&sized(1, 8)))),
            (pool("gone:n1"), stored("1", None)),
        ]);
        let text = r#"
            [pools."same:n1"]
            target = 3
            [pools."grow:n1"]
            target = 5
            [pools."sized:n1"]
            target = 4
            [pools."new:n1"]
            max = 3
        "#;
        let file = PoolsFile::parse("p.toml", text, CAP).expect("valid");
        let lines = |prune| -> Vec<String> {
            file.diff(&current, prune)
                .iter()
                .map(|c| format!("{} {}: {}", c.sign(), c.pool, c.describe()))
                .collect()
        };
        assert_eq!(
            lines(false),
            [
                "~ grow:n1: target 2 -> target 5",
                "+ new:n1: policy min 0 max 3 static",
                "~ sized:n1: policy min 1 max 8 adaptive hit 0.99 schedule \"* 7-18 * * MON-FRI@Europe/Berlin=5\" -> target 4",
            ]
        );
        assert_eq!(
            lines(true)[0],
            "- gone:n1: deleted (target 1); its warmed VMs are recorded for deletion"
        );
    }

    #[test]
    fn a_bad_file_is_refused_with_its_line_column_and_what_is_wrong() {
        let cases = [
            ("[pools.\"a:n1\"]\ntarget = -1\n", "p.toml:2:10"),
            (
                "[pools.\"a:n1\"]\ntarget = 1\ncolour = 2\n",
                "unknown field `colour`",
            ),
            (
                "\n[pools.\"a:n1\"]\ntarget = 1\nmax = 2\n",
                "p.toml:2:1: pool `a:n1`: has both",
            ),
            ("[pools.\"a:n1\"]\nmin = 1\n", "has `min` but no `max`"),
            (
                "[pools.\"a:n1\"]\ntarget = 2\nhit = 0.9\n",
                "`hit` belongs to a policy",
            ),
            (
                "[pools.\"a:n1\"]\nmax = 2\nmin = 3\n",
                "min 3 is above max 2",
            ),
            (
                "[pools.\"a:n1\"]\ntarget = 201\n",
                "above WARMER_MAX_VMS (200)",
            ),
            (
                "[pools.\"a:n1\"]\nmax = 201\n",
                "max 201 is above WARMER_MAX_VMS",
            ),
            ("[pools.\"Bad Name\"]\ntarget = 1\n", "pool `Bad Name`:"),
            ("[pools.\"a:n1\"]\n", "has neither `target`"),
            (
                "[pools.\"a:n1\"]\nmax = 3\nschedules = [\"* 25 * * *@UTC=1\"]\n",
                "its hour field `25`",
            ),
            ("[pools.\"a:n1\"\ntarget = 1\n", "p.toml:1:"),
        ];
        for (text, expected) in cases {
            let error = PoolsFile::parse("p.toml", text, CAP).expect_err(text);
            assert!(error.contains(expected), "{text:?}: {error}");
        }
    }

    #[test]
    fn a_pool_whose_stored_values_cannot_be_read_is_exported_as_a_comment_and_replaced_by_a_file() {
        let current = BTreeMap::from([(pool("odd:n1"), stored("lots", None))]);
        let text = export(&current);
        assert!(
            text.contains("# \"odd:n1\" is left out: unreadable target `lots`"),
            "{text}"
        );
        let exported = PoolsFile::parse("p.toml", &text, CAP).expect("an export parses");
        assert_eq!(exported.diff(&current, true), [], "pruning would delete it");
        let file =
            PoolsFile::parse("p.toml", "[pools.\"odd:n1\"]\ntarget = 2\n", CAP).expect("valid");
        assert_eq!(
            file.diff(&current, false)[0].describe(),
            "unreadable target `lots` -> target 2"
        );
    }
}
