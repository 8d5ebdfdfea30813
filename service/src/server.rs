//! The gRPC server every Sluice service runs: HTTP/2 windows and frame size
//! from [`sluice_proto::limits`], a trace span per request continuing the
//! caller's trace, and Nagle off on accepted connections.

use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;

/// A server builder with Sluice's HTTP/2 limits and request tracing; add
/// the services (each with its message size limits) and serve it on
/// [`incoming`].
pub fn grpc_server() -> Server {
    Server::builder()
        .initial_stream_window_size(sluice_proto::limits::HTTP2_STREAM_WINDOW_BYTES)
        .initial_connection_window_size(sluice_proto::limits::HTTP2_CONNECTION_WINDOW_BYTES)
        .max_frame_size(sluice_proto::limits::HTTP2_MAX_FRAME_BYTES)
        .trace_fn(sluice_telemetry::grpc_server_span)
}

/// The connections accepted on `listener`, with Nagle off: pipelined small
/// responses must not wait for delayed ACKs.
pub fn incoming(listener: tokio::net::TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true))
}
