//! Each pool's recent past, for people (the page `warmer web` serves at `/`): a point per minute
//! for 48 hours (`<ns>:_points:1m:<pool>`) and per 10 minutes for 15 days
//! (`<ns>:_points:10m:<pool>`), written by the active reconciler at most once a minute.
//!
//! Each key is a string of fixed-size slots, a ring: the point of minute `m` goes to slot
//! `m % slots` (`SETRANGE`), so a key never grows past its slots × [`POINT_BYTES`] and a guard
//! byte: 72,001 and 54,001 bytes per pool whatever its age; in Redis, with its allocator's size
//! classes, 139.5 KB (`MEMORY USAGE` after a simulated month: 82,056 and 57,480 bytes). Keys
//! expire 16 days after their last write. A slot
//! holds its minute, so one not written since its last lap is told from a current one. Counters
//! are stored as they stand (cumulative), so the figure between two points is their
//! difference: a point written twice in its minute, or a minute without one, loses nothing.

use std::collections::BTreeMap;

use anyhow::Context as _;

use super::Store;
use crate::metrics::TARGET_REASONS;
use crate::pool::PoolName;

/// Bytes of one point (see [`Point::encode`]).
pub const POINT_BYTES: usize = 25;

/// One resolution of the history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resolution {
    /// Minutes per point.
    pub minutes: u64,
    /// Points kept.
    pub slots: u64,
    /// In the key's name.
    pub name: &'static str,
}

/// A point per minute for 48 hours.
pub const MINUTES: Resolution = Resolution {
    minutes: 1,
    slots: 48 * 60,
    name: "1m",
};
/// A point per 10 minutes for 15 days.
pub const TEN_MINUTES: Resolution = Resolution {
    minutes: 10,
    slots: 15 * 24 * 6,
    name: "10m",
};

impl Resolution {
    /// The key's length: its slots and a guard byte.
    pub fn length(&self) -> usize {
        self.slots as usize * POINT_BYTES + 1
    }
}

/// How long a pool's points outlive their last write (seconds).
const EXPIRE_SECS: i64 = 16 * 86_400;

/// A pool at one minute.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Point {
    /// Unix minutes.
    pub minute: u32,
    pub target: u16,
    pub ready: u16,
    pub booting: u16,
    pub handed_out: u16,
    /// Checkouts handed out and found empty so far (cumulative, wrapping).
    pub hits: u32,
    pub misses: u32,
    /// Idle VM-seconds so far (cumulative, wrapping).
    pub idle_seconds: u32,
    /// Why the target was what it was: an index in [`TARGET_REASONS`].
    pub reason: u8,
}

impl Point {
    /// Little-endian: minute, target, ready, booting, handed out, hits, misses, idle seconds,
    /// reason.
    pub fn encode(&self) -> [u8; POINT_BYTES] {
        let mut out = [0u8; POINT_BYTES];
        out[0..4].copy_from_slice(&self.minute.to_le_bytes());
        out[4..6].copy_from_slice(&self.target.to_le_bytes());
        out[6..8].copy_from_slice(&self.ready.to_le_bytes());
        out[8..10].copy_from_slice(&self.booting.to_le_bytes());
        out[10..12].copy_from_slice(&self.handed_out.to_le_bytes());
        out[12..16].copy_from_slice(&self.hits.to_le_bytes());
        out[16..20].copy_from_slice(&self.misses.to_le_bytes());
        out[20..24].copy_from_slice(&self.idle_seconds.to_le_bytes());
        out[24] = self.reason;
        out
    }

    /// A slot as stored; `None` for one never written (all zero) or cut short.
    pub fn decode(slot: &[u8]) -> Option<Point> {
        let bytes: &[u8; POINT_BYTES] = slot.try_into().ok()?;
        let u16_at = |i: usize| u16::from_le_bytes([bytes[i], bytes[i + 1]]);
        let u32_at =
            |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
        let point = Point {
            minute: u32_at(0),
            target: u16_at(4),
            ready: u16_at(6),
            booting: u16_at(8),
            handed_out: u16_at(10),
            hits: u32_at(12),
            misses: u32_at(16),
            idle_seconds: u32_at(20),
            reason: bytes[24],
        };
        (point.minute != 0).then_some(point)
    }

    /// Its reason's name.
    pub fn reason(&self) -> &'static str {
        TARGET_REASONS
            .get(usize::from(self.reason))
            .copied()
            .unwrap_or("invalid")
    }

    /// The index of `reason` in [`TARGET_REASONS`].
    pub fn reason_index(reason: &str) -> u8 {
        TARGET_REASONS
            .iter()
            .position(|r| *r == reason)
            .and_then(|i| u8::try_from(i).ok())
            .unwrap_or(2)
    }
}

impl Store {
    /// Writes each pool's point of its minute into both resolutions, 500 pools a round trip.
    pub async fn record_points(&self, points: &[(PoolName, Point)]) -> anyhow::Result<()> {
        for batch in points.chunks(500) {
            let mut pipe = redis::pipe();
            for (pool, point) in batch {
                for resolution in [MINUTES, TEN_MINUTES] {
                    let key = self.names.points(resolution.name, pool);
                    let mut at = *point;
                    let minute = u64::from(point.minute);
                    at.minute = u32::try_from(minute - minute % resolution.minutes).unwrap_or(0);
                    let slot = minute / resolution.minutes % resolution.slots;
                    let offset = (slot as usize * POINT_BYTES) as isize;
                    // The guard byte after the last slot first: a new key is made at its whole
                    // length at once, so Redis allocates it exactly, never grown by doubling.
                    pipe.setrange(&key, resolution.length() as isize - 1, [0u8].to_vec())
                        .ignore();
                    pipe.setrange(&key, offset, at.encode().to_vec()).ignore();
                    pipe.expire(&key, EXPIRE_SECS).ignore();
                }
            }
            let pipe = &pipe;
            self.call(|mut conn| async move { pipe.query_async::<()>(&mut conn).await })
                .await
                .context("recording the pools' points")?;
        }
        Ok(())
    }

    /// `pool`'s points of `resolution` from `since` (Unix minutes) on, oldest first: a slot
    /// written before its last lap is left out.
    pub async fn points(
        &self,
        pool: &PoolName,
        resolution: Resolution,
        since: u64,
    ) -> anyhow::Result<Vec<Point>> {
        Ok(self
            .points_of(std::slice::from_ref(pool), resolution, since)
            .await?
            .remove(pool)
            .unwrap_or_default())
    }

    /// [`Store::points`] of several pools, in one round trip.
    pub async fn points_of(
        &self,
        pools: &[PoolName],
        resolution: Resolution,
        since: u64,
    ) -> anyhow::Result<BTreeMap<PoolName, Vec<Point>>> {
        if pools.is_empty() {
            return Ok(BTreeMap::new());
        }
        let mut pipe = redis::pipe();
        for pool in pools {
            pipe.get(self.names.points(resolution.name, pool));
        }
        let pipe = &pipe;
        let raw: Vec<Option<Vec<u8>>> = self
            .call(|mut conn| async move { pipe.query_async(&mut conn).await })
            .await
            .context("reading the pools' points")?;
        let oldest = since.saturating_sub(since % resolution.minutes);
        Ok(pools
            .iter()
            .cloned()
            .zip(raw)
            .map(|(pool, bytes)| {
                let mut points: Vec<Point> = bytes
                    .unwrap_or_default()
                    .chunks_exact(POINT_BYTES)
                    .filter_map(Point::decode)
                    .filter(|p| u64::from(p.minute) >= oldest)
                    .collect();
                points.sort_by_key(|p| p.minute);
                (pool, points)
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_point_is_read_back_as_written_and_an_empty_slot_is_none() {
        let point = Point {
            minute: 29_000_000,
            target: 20,
            ready: 17,
            booting: 3,
            handed_out: 65_535,
            hits: u32::MAX,
            misses: 7,
            idle_seconds: 123_456,
            reason: Point::reason_index("demand"),
        };
        assert_eq!(Point::decode(&point.encode()), Some(point));
        assert_eq!(point.reason(), "demand");
        assert_eq!(Point::decode(&[0; POINT_BYTES]), None);
        assert_eq!(Point::decode(&[1; 3]), None);
        assert_eq!(
            (MINUTES.slots as usize + TEN_MINUTES.slots as usize) * POINT_BYTES,
            126_000
        );
    }
}
