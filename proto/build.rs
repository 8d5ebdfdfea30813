//! Generates the gRPC code from `proto/sluice/v1/sluice.proto`.
//!
//! Needs `protoc`. If it is missing the build stops with a message saying
//! how to install it, rather than prost's generic error.

use std::path::Path;
use std::process::Command;

fn main() {
    let protoc = std::env::var("PROTOC").unwrap_or_else(|_| "protoc".to_string());
    if Command::new(&protoc).arg("--version").output().is_err() {
        panic!(
            "protoc (the Protocol Buffers compiler) was not found as `{protoc}`. \
             Install it (Debian/Ubuntu: `apt-get install protobuf-compiler`) or set PROTOC to its path."
        );
    }
    let proto = Path::new("proto/sluice/v1/sluice.proto");
    println!("cargo:rerun-if-changed={}", proto.display());
    if let Err(error) = tonic_prost_build::configure()
        // Record batches and other payloads stay zero-copy `bytes::Bytes`.
        .bytes(".")
        .compile_protos(&[proto], &[Path::new("proto")])
    {
        panic!("failed to compile {}: {error}", proto.display());
    }
}
