//! stage

pub mod throttle;
