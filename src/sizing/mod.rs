//! Pool sizing: policies ([`policy`]), the sizer's pure decisions ([`plan`]), the sizer step the
//! active reconciler runs ([`sizer`]), and `warmer simulate` ([`simulate`]), which replays
//! traces through the same decisions to compare policies before an operator sets one.

pub mod plan;
pub mod policy;
pub mod simulate;
pub mod sizer;
