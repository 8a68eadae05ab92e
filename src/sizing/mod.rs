//! Pool sizing: the sizer's pure decisions ([`plan`]), the sizer step the active reconciler runs
//! ([`sizer`]), and `warmer simulate` ([`simulate`], with its HTML [`report`]), which replays traces through the same
//! decisions to compare policies before an operator sets one. Policies themselves, as operators
//! set and the store keeps them, are [`crate::policy`].

pub mod plan;
pub mod report;
pub mod simulate;
pub mod sizer;
