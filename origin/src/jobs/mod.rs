//! Background jobs of the origin.

pub mod sweeper;
