//! Test harness for Sluice clusters: a real etcd and real service processes
//! on loopback, cleaned up on drop.

pub mod browser;
pub mod chaos;
pub mod cluster;
pub mod copier;
pub mod copier_check;
pub mod dev;
pub mod etcd;
pub mod metrics;
pub mod read_back;
pub mod security;
pub mod small_fs;
pub mod subscription_kit;
pub mod transactions;
