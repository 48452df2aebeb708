//! An agent's HTTP/1 connection: hyper's server, the connection's timers ([`ConnTimers`]),
//! and hyper's buffers given back while the connection waits for its next request.
//!
//! hyper's HTTP/1 server holds two 8 KiB buffers for as long as a connection is open, idle or
//! not (its read buffer, reserved at the first read; its write buffer, made with the
//! connection), and has no setting for either. Like nginx, which frees a keep-alive
//! connection's buffers until its next request arrives, sidekey takes an idle connection apart
//! (`into_parts`) once hyper is waiting for the next request head with everything written: the
//! connection keeps only its socket, any bytes of a head begun, and its service, and is made
//! again when the socket has something to read. hyper cannot say when it is idle, so the
//! connection's [`ConnTimers`] tell: no request being served (its response body ended, its
//! request body read to the end: [`ConnTimers::track`]), and the socket's last read found
//! nothing while its last write finished ([`Watch`]). A connection whose stream cannot wait
//! for readability without reading ([`IdleWait`], an intercepted tunnel's TLS) is never taken
//! apart ([`serve_whole`]).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Incoming};
use hyper::server::conn::http1::{Builder, UpgradeableConnection};
use hyper::service::HttpService;
use hyper_util::rt::TokioIo;
use sidekey_metrics::IdleGuard;
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};
use tokio_util::sync::CancellationToken;

use crate::conn_timers::{ConnTimers, IdleEvent, IdleTimer};
use crate::AgentStream;

/// A stream an HTTP/1 connection is served on.
pub trait IdleWait: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Whether the stream can wait for something to read without reading it
    /// ([`IdleWait::poll_read_ready`]); connections on one that cannot are never taken apart.
    const CAN_WAIT: bool;

    /// Ready when the stream has something to read, or is closed, without reading it.
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>>;

    /// Counts the connection in its listener's `sidekey_agent_connections_idle`, if it is
    /// counted there, until the guard drops.
    fn idle(&self) -> Option<IdleGuard> {
        None
    }
}

impl IdleWait for AgentStream {
    const CAN_WAIT: bool = true;

    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.inner.poll_read_ready(cx)
    }

    fn idle(&self) -> Option<IdleGuard> {
        Some(self.open.idle())
    }
}

/// The in-process harness's pipes.
impl IdleWait for DuplexStream {
    const CAN_WAIT: bool = false;

    fn poll_read_ready(&self, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// How a connection ended.
pub(crate) enum Ended {
    /// hyper's connection finished: closed by the agent or after its last response, upgraded,
    /// or failed.
    Closed(Result<(), hyper::Error>),
    /// No request head within `limits.header_read_timeout`.
    HeadTimeout,
    /// sidekey is shutting down: a request being served was finished first.
    Shutdown,
}

/// Serves `io` with `service` until the connection ends (see the module's notes).
pub(crate) async fn serve<IO, S, B>(
    builder: &Builder,
    io: IO,
    service: S,
    timers: &ConnTimers,
    shutdown: &CancellationToken,
) -> Ended
where
    IO: IdleWait,
    S: HttpService<Incoming, ResBody = B> + Unpin,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let timer = timers.idle_timer(IO::CAN_WAIT.then_some(RELEASE_AFTER));
    let cancelled = shutdown.cancelled();
    tokio::pin!(timer, cancelled);
    let mut parts = (
        TokioIo::new(Watch {
            io,
            begun: Bytes::new(),
            timers: timers.clone(),
        }),
        service,
    );
    loop {
        // Boxed: a connection taken apart then holds a pointer, not hyper's state.
        let mut connection = Box::new(builder.serve_connection(parts.0, parts.1).with_upgrades());
        let released = drive(
            Pin::new(&mut *connection),
            timer.as_mut(),
            cancelled.as_mut(),
            true,
        );
        if let Some(ended) = released.await {
            return ended;
        }
        // Not upgraded: an upgraded connection's future has finished.
        let Some(taken) = connection.into_parts() else {
            return Ended::Closed(Ok(()));
        };
        let (mut io, service) = (taken.io, taken.service);
        // A head begun but not finished is read again by the next connection: copied, since
        // hyper's bytes, empty or not, share its read buffer and would keep it.
        io.inner_mut().begun = if taken.read_buf.is_empty() {
            Bytes::new()
        } else {
            Bytes::copy_from_slice(&taken.read_buf)
        };
        drop(taken.read_buf);
        let waiting = io.inner().io.idle();
        // Borrowed mutably, moved in: a shared borrow held across the wait would need the
        // stream to be `Sync`.
        let (stream, mut waiting_timer, mut waiting_cancelled) =
            (&mut io, timer.as_mut(), cancelled.as_mut());
        let step = std::future::poll_fn(move |cx| {
            // Readable, closed, or failed: hyper's connection finds out which.
            if stream.inner().io.poll_read_ready(cx).is_ready() {
                return Poll::Ready(Step::Release);
            }
            poll_ends(
                waiting_timer.as_mut(),
                waiting_cancelled.as_mut(),
                cx,
                false,
            )
        })
        .await;
        drop(waiting);
        match step {
            // Idle: nothing is lost by closing it now.
            Step::HeadTimeout => return Ended::HeadTimeout,
            Step::Shutdown => return Ended::Shutdown,
            // Readable (nothing else is told while it waits): made again.
            Step::Release | Step::Closed(_) => {
                timer.as_mut().served_again();
                parts = (io, service);
            }
        }
    }
}

/// How long a connection waits for its next request before hyper's buffers are given back:
/// long enough that a connection in steady use (a request every few milliseconds) keeps
/// them, short enough that a burst of connections left idle gives them back before the next
/// burst is made.
const RELEASE_AFTER: Duration = Duration::from_millis(50);

/// Serves `io` with `service` until the connection ends, never taking it apart: for a stream
/// that cannot wait for something to read without reading it (an intercepted tunnel's TLS, which
/// is rustls's). A function of its own, with hyper's connection in the task: [`serve`]'s future
/// has room for a stream taken out of its connection, which for a TLS stream is rustls's whole
/// state again (4.4 KB more per idle intercepted connection, measured).
pub(crate) async fn serve_whole<IO, S, B>(
    builder: &Builder,
    io: IO,
    service: S,
    timers: &ConnTimers,
    shutdown: &CancellationToken,
) -> Ended
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: HttpService<Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let timer = timers.idle_timer(None);
    let cancelled = shutdown.cancelled();
    let connection = builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(timer, cancelled, connection);
    loop {
        // `None` (may be taken apart) is never told without a `release_after`.
        if let Some(ended) = drive(
            connection.as_mut(),
            timer.as_mut(),
            cancelled.as_mut(),
            false,
        )
        .await
        {
            return ended;
        }
    }
}

/// Polls `connection` with its timer and sidekey's shutdown until it ends (`Some`), or, with
/// `release`, until it may be taken apart (`None`). At shutdown, a request being served is
/// finished first (hyper's graceful shutdown).
async fn drive<I, S, B, C>(
    mut connection: Pin<&mut UpgradeableConnection<I, S>>,
    mut timer: Pin<&mut IdleTimer<'_>>,
    mut cancelled: Pin<&mut C>,
    release: bool,
) -> Option<Ended>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: HttpService<Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    C: Future<Output = ()>,
{
    let step = std::future::poll_fn(|cx| {
        if let Poll::Ready(result) = connection.as_mut().poll(cx) {
            return Poll::Ready(Step::Closed(result));
        }
        poll_ends(timer.as_mut(), cancelled.as_mut(), cx, release)
    })
    .await;
    match step {
        Step::Closed(result) => Some(Ended::Closed(result)),
        Step::HeadTimeout => Some(Ended::HeadTimeout),
        Step::Shutdown => {
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
            Some(Ended::Shutdown)
        }
        Step::Release => None,
    }
}

enum Step {
    Closed(Result<(), hyper::Error>),
    HeadTimeout,
    Shutdown,
    /// Idle long enough to be taken apart (serving), or readable again (taken apart).
    Release,
}

fn poll_ends<C>(
    timer: Pin<&mut IdleTimer<'_>>,
    cancelled: Pin<&mut C>,
    cx: &mut Context<'_>,
    release: bool,
) -> Poll<Step>
where
    C: Future<Output = ()>,
{
    if let Poll::Ready(event) = timer.poll_event(cx, release) {
        return Poll::Ready(match event {
            IdleEvent::HeadTimeout => Step::HeadTimeout,
            IdleEvent::Release => Step::Release,
        });
    }
    if cancelled.poll(cx).is_ready() {
        return Poll::Ready(Step::Shutdown);
    }
    Poll::Pending
}

/// The stream under hyper: notes whether its last read found nothing and its last write
/// finished ([`ConnTimers::note_read`]), and gives hyper first the bytes of a head begun before
/// the connection was taken apart.
struct Watch<IO> {
    io: IO,
    begun: Bytes,
    timers: ConnTimers,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Watch<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.begun.is_empty() {
            let n = self.begun.len().min(buf.remaining());
            let chunk = self.begun.split_to(n);
            buf.put_slice(&chunk);
            self.timers.note_read(false);
            return Poll::Ready(Ok(()));
        }
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        self.timers.note_read(polled.is_pending());
        polled
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Watch<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        self.timers.note_write(polled.is_pending());
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.timers.note_write(polled.is_pending());
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let polled = Pin::new(&mut self.io).poll_flush(cx);
        self.timers.note_write(polled.is_pending());
        polled
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use std::task::Waker;

    use futures_util::future;
    use http::Response;
    use hyper::service::service_fn;
    use sidekey_metrics::{ConnectionGuard, Metrics};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::conn_timers::watched;

    /// The server's end of a pipe whose writes the test holds back: a socket whose agent has
    /// stopped reading, at exactly the moment the test chooses (a real socket's buffers are
    /// sized by the kernel).
    struct HeldBack {
        pipe: DuplexStream,
        writes: Arc<Gate>,
        open: ConnectionGuard,
    }

    #[derive(Default)]
    struct Gate {
        open: AtomicBool,
        waiting: Mutex<Option<Waker>>,
    }

    impl Gate {
        fn open(&self) {
            self.open.store(true, Ordering::SeqCst);
            if let Some(waker) = self.waiting.lock().unwrap().take() {
                waker.wake();
            }
        }
    }

    impl AsyncRead for HeldBack {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.pipe).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for HeldBack {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            if !self.writes.open.load(Ordering::SeqCst) {
                *self.writes.waiting.lock().unwrap() = Some(cx.waker().clone());
                return Poll::Pending;
            }
            Pin::new(&mut self.pipe).poll_write(cx, buf)
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.pipe).poll_flush(cx)
        }

        fn poll_shutdown(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.pipe).poll_shutdown(cx)
        }
    }

    impl IdleWait for HeldBack {
        const CAN_WAIT: bool = true;

        /// Never readable again: the test sends one request.
        fn poll_read_ready(&self, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Pending
        }

        fn idle(&self) -> Option<IdleGuard> {
            Some(self.open.idle())
        }
    }

    fn idle_count(metrics: &Metrics) -> bool {
        String::from_utf8(metrics.render())
            .unwrap()
            .contains(r#"sidekey_agent_connections_idle{listener="test"} 1"#)
    }

    #[tokio::test]
    async fn a_response_still_being_written_is_not_taken_apart_with_the_connection() {
        const SIZE: usize = 1 << 20;
        let metrics = Metrics::new();
        let (mut agent, pipe) = tokio::io::duplex(64 * 1024);
        let writes = Arc::new(Gate::default());
        let io = HeldBack {
            pipe,
            writes: Arc::clone(&writes),
            open: metrics.agent_connection("test"),
        };
        let timers = ConnTimers::new(Duration::from_secs(30));
        let service = {
            let timers = timers.clone();
            service_fn(move |_request| {
                // The whole body at once: it has ended as soon as hyper has it in its buffer.
                let response = Response::new(sidekey_body::full(vec![b'x'; SIZE]));
                future::ready(watched(Some(timers.serving()))(response))
            })
        };
        let shutdown = CancellationToken::new();
        let served = tokio::spawn({
            let (timers, shutdown) = (timers.clone(), shutdown.clone());
            async move {
                serve(&Builder::new(), io, service, &timers, &shutdown).await;
            }
        });
        agent
            .write_all(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
            .await
            .unwrap();
        // The response is in hyper's write buffer, the agent reads nothing, and the connection
        // is otherwise idle for far longer than RELEASE_AFTER.
        tokio::time::sleep(RELEASE_AFTER * 6).await;
        assert!(
            !idle_count(&metrics),
            "taken apart with a response unwritten"
        );
        writes.open();
        let mut response = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        let head_end = |r: &[u8]| r.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4);
        while head_end(&response).is_none_or(|end| response.len() < end + SIZE) {
            let n = agent.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed after {} bytes", response.len());
            response.extend_from_slice(&buf[..n]);
        }
        assert!(response.starts_with(b"HTTP/1.1 200 OK\r\n"));
        assert_eq!(
            head_end(&response).map(|end| response.len() - end),
            Some(SIZE)
        );
        // Written: now it waits for a head with nothing to write, and is taken apart.
        tokio::time::sleep(RELEASE_AFTER * 6).await;
        assert!(
            idle_count(&metrics),
            "idle and written, but not taken apart"
        );
        shutdown.cancel();
        served.await.unwrap();
    }
}
