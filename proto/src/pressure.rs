//! Backlog pressure as produce answers carry it (ADR 0012): how close a
//! partition's backlog (what its slowest subscription has not acknowledged)
//! is to the topic's quota. The broker writes it into every
//! [`ProduceResponse`] with [`Pressure::write_to`]; the SDK reads it back
//! with [`Pressure::of`].

use crate::v1::{PressureLevel, ProduceResponse};

/// A partition's backlog pressure as of one produce answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pressure {
    pub level: PressureLevel,
    /// Messages its slowest subscription has not acknowledged.
    pub backlog_messages: u64,
    /// Their estimated size.
    pub backlog_bytes: u64,
    /// Time that subscription needs to work through them at its current
    /// rate; None when unknown (no progress).
    pub estimated_drain_ms: Option<u64>,
}

impl Default for Pressure {
    fn default() -> Self {
        Self {
            level: PressureLevel::Ok,
            backlog_messages: 0,
            backlog_bytes: 0,
            estimated_drain_ms: Some(0),
        }
    }
}

impl Pressure {
    /// The pressure a produce answer reports (an unknown level reads as OK).
    pub fn of(response: &ProduceResponse) -> Self {
        Self {
            level: PressureLevel::try_from(response.pressure).unwrap_or(PressureLevel::Ok),
            backlog_messages: response.backlog_messages,
            backlog_bytes: response.backlog_bytes,
            estimated_drain_ms: u64::try_from(response.estimated_drain_ms).ok(),
        }
    }

    /// Sets the pressure fields of a produce answer.
    pub fn write_to(&self, response: &mut ProduceResponse) {
        response.pressure = self.level as i32;
        response.backlog_messages = self.backlog_messages;
        response.backlog_bytes = self.backlog_bytes;
        response.estimated_drain_ms = signed_drain_ms(self.estimated_drain_ms);
    }
}

/// A drain estimate as the wire carries it: -1 when unknown.
pub fn signed_drain_ms(estimate: Option<u64>) -> i64 {
    estimate.map_or(-1, |ms| i64::try_from(ms).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_a_produce_answer() {
        for pressure in [
            Pressure::default(),
            Pressure {
                level: PressureLevel::Limit,
                backlog_messages: 7,
                backlog_bytes: 700,
                estimated_drain_ms: None,
            },
            Pressure {
                level: PressureLevel::Warn,
                backlog_messages: 1,
                backlog_bytes: 2,
                estimated_drain_ms: Some(3),
            },
        ] {
            let mut response = ProduceResponse::default();
            pressure.write_to(&mut response);
            assert_eq!(Pressure::of(&response), pressure);
        }
    }

    #[test]
    fn answers_without_pressure_fields_read_as_ok() {
        assert_eq!(signed_drain_ms(None), -1);
        assert_eq!(signed_drain_ms(Some(u64::MAX)), i64::MAX);
        let response = ProduceResponse {
            pressure: 99,
            estimated_drain_ms: -1,
            ..ProduceResponse::default()
        };
        let pressure = Pressure::of(&response);
        assert_eq!(pressure.level, PressureLevel::Ok);
        assert_eq!(pressure.estimated_drain_ms, None);
    }
}
