//! Pool sizing: the sizer's pure decision ([`plan`]) and `warmer simulate` ([`simulate`]),
//! which replays traces through it to compare policies before an operator sets one.

pub mod plan;
pub mod simulate;
