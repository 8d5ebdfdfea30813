//! The transaction coordinator (ADR 0016 §2): the pure decisions of one
//! transactional id ([`state`]) and the transaction-log record that makes
//! them durable ([`log_record`]).

pub mod log_record;
pub mod state;
