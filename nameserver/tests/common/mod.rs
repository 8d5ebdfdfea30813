//! Shared helpers for the nameserver's integration tests.
//!
//! The etcd harness is the workspace's own (`tests/src/etcd.rs`), included
//! by path rather than through the `sluice-tests` crate so these tests do
//! not depend on the client SDK that crate also pulls in.

#![allow(dead_code)]

#[path = "../../../tests/src/etcd.rs"]
pub mod etcd;
