//! The byte stream under one accepted connection: plain TCP, or TLS over
//! TCP once its handshake is done (see `tls.rs`). Every call is passed on
//! as it is, vectored writes included, so hyper writes its frames as it
//! would to plain TCP.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::CertificateDer;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

pub enum ServerIo {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl ServerIo {
    pub fn tcp_info(&self) -> TcpConnectInfo {
        match self {
            ServerIo::Plain(stream) => stream.connect_info(),
            ServerIo::Tls(stream) => stream.get_ref().0.connect_info(),
        }
    }

    /// The certificate chain the client presented (mutual TLS), its own
    /// certificate first.
    pub fn peer_certificates(&self) -> Option<Arc<[CertificateDer<'static>]>> {
        match self {
            ServerIo::Plain(_) => None,
            ServerIo::Tls(stream) => stream
                .get_ref()
                .1
                .peer_certificates()
                .map(|chain| chain.iter().map(|c| c.clone().into_owned()).collect()),
        }
    }
}

impl AsyncRead for ServerIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerIo::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            ServerIo::Tls(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ServerIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ServerIo::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            ServerIo::Tls(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ServerIo::Plain(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
            ServerIo::Tls(stream) => Pin::new(stream.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            ServerIo::Plain(stream) => stream.is_write_vectored(),
            ServerIo::Tls(stream) => stream.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerIo::Plain(stream) => Pin::new(stream).poll_flush(cx),
            ServerIo::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerIo::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
            ServerIo::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(cx),
        }
    }
}
