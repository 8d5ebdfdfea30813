//! Chaos tests with a history checker (Jepsen-style): a workload of unique
//! writes and a consumer group runs while a seeded schedule of faults
//! (kill -9, SIGSTOP beyond the lease, network cuts, restarts) hits the
//! cluster; after healing, every partition is drained from offset 0 and the
//! checker counts lost, duplicated, reordered and inconsistent data.
//!
//! `history` logs operations, `checker` is the pure checker, `faults` the
//! schedule, the backend interface and the nemesis, `process` the process
//! backend, `compose` the Docker Compose backend,
//! `workload` the SDK side, `runner` ties them together for the
//! process-level test and the `sluice-chaos` binary. With
//! `ChaosOptions::transactions` (the binary's `--transactional`, and the
//! CI run) transactional producers and a read-committed reader run on their
//! own topic as well (`txn_workload`, recorded in `txn_history`) and
//! `txn_checker` looks for aborted and uncommitted reads and lost,
//! duplicated or partial committed transactions.

pub mod checker;
pub mod compose;
pub mod faults;
pub mod history;
pub mod process;
pub mod runner;
pub mod txn_checker;
pub mod txn_history;
pub mod txn_workload;
pub mod workload;
