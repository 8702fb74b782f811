//! A TCP connection the fake servers can cut: it fails (and so the server
//! drops it) once its kill switch is cancelled. The fake Forgejo cuts every
//! connection when it stops; the fake GitHub also cuts single connections
//! (a lost answer).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// What runs when a connection is dropped.
type OnDrop = Box<dyn FnOnce() + Send + Sync>;

/// A connection that fails once `kill` is cancelled.
pub struct KillableStream {
    io: TcpStream,
    dead: Pin<Box<WaitForCancellationFutureOwned>>,
    /// The error text its reads and writes give once cut.
    why: &'static str,
    on_drop: Option<OnDrop>,
}

impl KillableStream {
    /// `io` until `kill` is cancelled; then every read and write fails
    /// with `why`.
    pub fn new(io: TcpStream, kill: CancellationToken, why: &'static str) -> Self {
        KillableStream {
            io,
            dead: Box::pin(kill.cancelled_owned()),
            why,
            on_drop: None,
        }
    }

    /// Runs `f` when the connection is dropped.
    pub fn on_drop(mut self, f: impl FnOnce() + Send + Sync + 'static) -> Self {
        self.on_drop = Some(Box::new(f));
        self
    }

    fn is_dead(&mut self, cx: &mut Context<'_>) -> bool {
        self.dead.as_mut().poll(cx).is_ready()
    }

    fn cut(&self) -> io::Error {
        io::Error::new(io::ErrorKind::ConnectionReset, self.why)
    }
}

impl Drop for KillableStream {
    fn drop(&mut self) {
        if let Some(f) = self.on_drop.take() {
            f();
        }
    }
}

impl AsyncRead for KillableStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.is_dead(cx) {
            return Poll::Ready(Err(this.cut()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for KillableStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.is_dead(cx) {
            return Poll::Ready(Err(this.cut()));
        }
        Pin::new(&mut this.io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.is_dead(cx) {
            return Poll::Ready(Err(this.cut()));
        }
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
