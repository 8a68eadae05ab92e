//! How many dynos a consumer process type should run: a pure decision, from its
//! backlog (`load.rs`), the dynos it runs now, and how long nothing has been waiting.
//!
//! - A backlog adds one dyno per `per_dyno` of it (what one more dyno takes on at once), rounded
//!   up, at once.
//! - Nothing waiting for [`SCALE_DOWN_AFTER`] checks in a row removes one dyno;
//!   the count then starts again, so capacity goes down one step at a time and a burst that
//!   comes back soon finds it still there.
//! - Always between the type's minimum and maximum. `checkout` never goes below 1 (a request
//!   would wait for the next check and a dyno's start); `refill` may go to 0, and work arriving
//!   (a pool short of its target) brings one back at the next check.

/// Consecutive quiet checks before one dyno is removed.
pub const SCALE_DOWN_AFTER: u32 = 5;

/// The dynos `current` should become.
///
/// `quiet_checks` counts the consecutive checks, this one included, that found nothing waiting.
pub fn desired(
    current: u32,
    waiting: u32,
    quiet_checks: u32,
    per_dyno: u32,
    (min, max): (u32, u32),
) -> u32 {
    let wanted = if waiting > 0 {
        current.saturating_add(waiting.div_ceil(per_dyno.max(1)))
    } else if quiet_checks >= SCALE_DOWN_AFTER {
        current.saturating_sub(1)
    } else {
        current
    };
    wanted.clamp(min, max.max(min))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backlog_adds_a_dyno_per_dynos_worth_of_it_up_to_the_maximum() {
        assert_eq!(desired(1, 1, 0, 64, (1, 4)), 2);
        assert_eq!(desired(1, 64, 0, 64, (1, 4)), 2);
        assert_eq!(desired(1, 65, 0, 64, (1, 4)), 3);
        assert_eq!(desired(2, 1_000, 0, 64, (1, 4)), 4);
        assert_eq!(desired(4, 10, 0, 64, (1, 4)), 4);
    }

    #[test]
    fn quiet_queues_lose_one_dyno_after_enough_quiet_checks_never_the_last() {
        assert_eq!(desired(3, 0, SCALE_DOWN_AFTER - 1, 64, (1, 4)), 3);
        assert_eq!(desired(3, 0, SCALE_DOWN_AFTER, 64, (1, 4)), 2);
        assert_eq!(desired(1, 0, SCALE_DOWN_AFTER, 64, (1, 4)), 1);
    }

    #[test]
    fn counts_outside_the_bounds_are_brought_back_within_them() {
        assert_eq!(
            desired(0, 0, 0, 64, (1, 4)),
            1,
            "a consumer type stopped by hand"
        );
        assert_eq!(desired(9, 0, 0, 64, (1, 4)), 4, "above the maximum");
        assert_eq!(desired(1, 5, 0, 0, (1, 0)), 1, "degenerate settings");
    }

    #[test]
    fn a_type_with_a_minimum_of_zero_scales_to_zero_and_back() {
        assert_eq!(desired(1, 0, SCALE_DOWN_AFTER, 8, (0, 4)), 0);
        assert_eq!(desired(0, 0, SCALE_DOWN_AFTER, 8, (0, 4)), 0);
        assert_eq!(desired(0, 1, 0, 8, (0, 4)), 1, "work brings one back");
        assert_eq!(desired(0, 20, 0, 8, (0, 4)), 3);
        assert_eq!(desired(0, 0, 0, 8, (2, 4)), 2, "a minimum above 1");
    }
}
