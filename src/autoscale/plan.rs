//! How many dynos a consumer process type should run: a pure decision, from its
//! backlog (`load.rs`), the dynos it runs now, and how long nothing has been waiting.
//!
//! - A backlog adds one dyno per `per_dyno` of it (what one more dyno takes on at once), rounded
//!   up, at once.
//! - Nothing waiting for [`SCALE_DOWN_AFTER`] checks in a row removes one dyno;
//!   the count then starts again, so capacity goes down one step at a time and a burst that
//!   comes back soon finds it still there.
//! - Always between [`MIN_DYNOS`] and the maximum: a consumer type never scales to zero (a
//!   checkout would wait for the next check and a dyno boot).

/// Fewest dynos of a consumer type.
pub const MIN_DYNOS: u32 = 1;
/// Consecutive quiet checks before one dyno is removed.
pub const SCALE_DOWN_AFTER: u32 = 5;

/// The dynos `current` should become.
///
/// `quiet_checks` counts the consecutive checks, this one included, that found nothing waiting.
pub fn desired(current: u32, waiting: u32, quiet_checks: u32, per_dyno: u32, max: u32) -> u32 {
    let wanted = if waiting > 0 {
        current.saturating_add(waiting.div_ceil(per_dyno.max(1)))
    } else if quiet_checks >= SCALE_DOWN_AFTER {
        current.saturating_sub(1)
    } else {
        current
    };
    wanted.clamp(MIN_DYNOS, max.max(MIN_DYNOS))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backlog_adds_a_dyno_per_dynos_worth_of_it_up_to_the_maximum() {
        assert_eq!(desired(1, 1, 0, 64, 4), 2);
        assert_eq!(desired(1, 64, 0, 64, 4), 2);
        assert_eq!(desired(1, 65, 0, 64, 4), 3);
        assert_eq!(desired(2, 1_000, 0, 64, 4), 4);
        assert_eq!(desired(4, 10, 0, 64, 4), 4);
    }

    #[test]
    fn quiet_queues_lose_one_dyno_after_enough_quiet_checks_never_the_last() {
        assert_eq!(desired(3, 0, SCALE_DOWN_AFTER - 1, 64, 4), 3);
        assert_eq!(desired(3, 0, SCALE_DOWN_AFTER, 64, 4), 2);
        assert_eq!(desired(1, 0, SCALE_DOWN_AFTER, 64, 4), 1);
    }

    #[test]
    fn counts_outside_the_bounds_are_brought_back_within_them() {
        assert_eq!(
            desired(0, 0, 0, 64, 4),
            1,
            "a consumer type stopped by hand"
        );
        assert_eq!(desired(9, 0, 0, 64, 4), 4, "above the maximum");
        assert_eq!(desired(1, 5, 0, 0, 0), 1, "degenerate settings");
    }
}
