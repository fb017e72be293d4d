//! Helpers shared by the telemetry tests.

pub mod otlp;
pub mod traced;
