//! The transaction coordinator (ADR 0016 §2): the pure decisions of one
//! transactional id ([`state`]), the transaction-log record that makes
//! them durable ([`log_record`]), the IO edge that appends them and
//! replays them on takeover ([`coordinator`]), the fields of what joins a
//! transaction besides records, checked ([`context`]), marker delivery
//! ([`markers`]), the coordinator RPCs ([`rpc`]) and the partition side's
//! verification through it ([`verifier`]).

pub mod context;
pub mod coordinator;
pub mod log_record;
pub mod markers;
pub mod rpc;
pub mod state;
pub mod verifier;

pub use coordinator::TxnCoordinator;
