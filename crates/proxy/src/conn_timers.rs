//! The two timeouts of an agent's HTTP/1 connection, each on one timer for the connection's
//! whole life rather than a new one per request.
//!
//! **`limits.header_read_timeout`**: a request head must arrive within it, counted from when the
//! connection opened or its last response ended. A connection that keeps it waiting longer (a
//! head sent a byte at a time, or nothing at all) is closed. hyper has this setting too, and
//! sidekey used it; but hyper's costs two trips through the runtime's timer wheel per request (a
//! new timer when the wait for the next head begins, removed when the head has arrived) and one
//! more round of its connection loop, to start that timer: 1.6k instructions per request, 3.6 %
//! of the whole (benches/NOTES.md, "Two timers per request"). Here a request only tells the
//! connection's [`ConnTimers`] when it starts and when its response ends: two atomic updates and
//! a clock read. The head timer is moved only when it goes off — while requests keep coming, at
//! most once per timeout, or once per 50 ms where it also tells when an idle connection may give
//! hyper's buffers back ([`IdleTimer`], [`crate::h1`]) — to the end of the current wait, or on
//! while a request is being served.
//!
//! **`upstream.request_timeout`** ([`bound`]): the wait for the upstream's answer,
//! on a second timer moved to each request's deadline. An HTTP/1 connection has one request at
//! a time, and a later deadline is one compare-and-swap in tokio, where `tokio::time::timeout`
//! makes a timer and takes it out of the wheel again for every request (0.8k instructions).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use sidekey_body::{BoxError, ProxyBody};
use tokio::time::Sleep;

/// One HTTP/1 connection's timers: its wait for the next request head, and its request's wait
/// for the upstream.
#[derive(Clone)]
pub struct ConnTimers(Arc<Shared>);

struct Shared {
    /// Made at the first bounded request (inside the runtime, whose timer it uses).
    request_timer: Mutex<Option<Pin<Box<Sleep>>>>,
    head_timeout: Duration,
    /// The origin of `idle_since`: when the connection opened.
    opened: Instant,
    /// Requests whose responses have not ended. Zero: the connection waits for a head.
    serving: AtomicUsize,
    /// When the last response ended, in nanoseconds after `opened` (zero until then).
    idle_since: AtomicU64,
    /// Whether the stream's last read found nothing to read ([`crate::h1`]'s `Watch`).
    read_waiting: AtomicBool,
    /// Whether the stream's last write or flush could not finish (bytes still in hyper's buffer).
    write_waiting: AtomicBool,
    /// Set for good once a request body is dropped before its end: hyper may still be reading
    /// it, so the connection is never taken apart (`Shared::idle_and_flushed`).
    body_left: AtomicBool,
}

impl ConnTimers {
    /// The timers of a connection opened now, with `limits.header_read_timeout`.
    pub(crate) fn new(timeout: Duration) -> ConnTimers {
        ConnTimers(Arc::new(Shared {
            request_timer: Mutex::new(None),
            head_timeout: timeout,
            opened: Instant::now(),
            serving: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            read_waiting: AtomicBool::new(false),
            write_waiting: AtomicBool::new(false),
            body_left: AtomicBool::new(false),
        }))
    }

    /// The request with its body watched: until the body has ended, the request counts as being
    /// served (see [`ConnTimers::serving`]); a body dropped before its end leaves the connection
    /// never to be taken apart. A request without a body costs nothing more.
    pub(crate) fn track(&self, request: Request<Incoming>) -> Request<AgentIncoming> {
        request.map(|body| {
            let open = (!body.is_end_stream()).then(|| OpenBody {
                _serving: self.serving(),
                ended: false,
            });
            AgentIncoming { body, open }
        })
    }

    /// What the stream's last read and write did (from inside hyper's polls of it).
    pub(crate) fn note_read(&self, waiting: bool) {
        self.0.read_waiting.store(waiting, Ordering::Relaxed);
    }

    pub(crate) fn note_write(&self, waiting: bool) {
        self.0.write_waiting.store(waiting, Ordering::Relaxed);
    }

    /// A request head has arrived: the connection is serving until the guard is dropped, with
    /// the response's body ([`Watched`]) or before it, if the request goes away.
    pub(crate) fn serving(&self) -> Serving {
        self.0.serving.fetch_add(1, Ordering::Relaxed);
        Serving(Arc::clone(&self.0))
    }

    /// The connection's idle timer ([`IdleTimer`]): its wait for a request head, and, with
    /// `release_after`, when it has been idle long enough to be taken apart ([`crate::h1`]).
    pub(crate) fn idle_timer(&self, release_after: Option<Duration>) -> IdleTimer<'_> {
        let first = release_after.map_or(self.0.head_timeout, |r| r.min(self.0.head_timeout));
        IdleTimer {
            shared: &self.0,
            sleep: tokio::time::sleep(first),
            armed: false,
            release_after,
        }
    }
}

impl Shared {
    /// Whether hyper, which has just returned pending, is waiting for the next request head
    /// with everything it had to write written: no request being served (its response body
    /// ended, its request body read to the end), the stream's last read found nothing, and its
    /// last write or flush finished. Read by the connection's task after polling hyper's
    /// connection, on the same thread as the notes ([`ConnTimers::note_read`]).
    fn idle_and_flushed(&self) -> bool {
        self.serving.load(Ordering::Acquire) == 0
            && self.read_waiting.load(Ordering::Relaxed)
            && !self.write_waiting.load(Ordering::Relaxed)
            && !self.body_left.load(Ordering::Relaxed)
    }
}

/// What a connection's [`IdleTimer`] tells.
pub(crate) enum IdleEvent {
    /// No request head within `limits.header_read_timeout`: the connection is to be closed.
    HeadTimeout,
    /// Idle for `release_after`, waiting for a head with everything written
    /// (`Shared::idle_and_flushed`): hyper's connection may be taken apart.
    Release,
}

pin_project_lite::pin_project! {
    /// One timer for a connection's whole life, moved only when it goes off
    /// ([`ConnTimers::idle_timer`]). Polled with the connection, so at every wake-up of its
    /// task: while a request is being served, a poll only reads the count, unless the timer has
    /// gone off or was moved since it last saw this task's waker. The timer always holds the
    /// waker, so it wakes the task at its deadline whatever order the task polls in. When it goes
    /// off during serving, it is moved on (by `release_after`, or a whole head timeout); once
    /// the count is zero, to the end of the wait or the release, whichever comes first.
    pub(crate) struct IdleTimer<'a> {
        shared: &'a Shared,
        #[pin]
        sleep: Sleep,
        // Whether the timer holds this task's waker (a tokio task's waker is the same at every
        // poll); a deadline moved, or a timer gone off, needs it again.
        armed: bool,
        release_after: Option<Duration>,
    }
}

impl IdleTimer<'_> {
    /// The next event, if one is due; `release`: whether [`IdleEvent::Release`] may be told
    /// now (not while the connection is taken apart).
    pub(crate) fn poll_event(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        release: bool,
    ) -> Poll<IdleEvent> {
        let mut this = self.project();
        let shared = *this.shared;
        loop {
            if *this.armed && shared.serving.load(Ordering::Relaxed) > 0 && !this.sleep.is_elapsed()
            {
                return Poll::Pending;
            }
            *this.armed = true;
            if this.sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            *this.armed = false;
            let now = Instant::now();
            let release_after = this.release_after.filter(|_| release);
            // Acquire: the `idle_since` stored before the count fell to zero is the one read.
            let deadline = if shared.serving.load(Ordering::Acquire) > 0 {
                let step =
                    release_after.map_or(shared.head_timeout, |r| r.min(shared.head_timeout));
                now.checked_add(step)
            } else {
                let since = Duration::from_nanos(shared.idle_since.load(Ordering::Relaxed));
                let idle = shared.opened.checked_add(since);
                let head = idle.and_then(|idle| idle.checked_add(shared.head_timeout));
                if head.is_some_and(|head| head <= now) {
                    return Poll::Ready(IdleEvent::HeadTimeout);
                }
                match (release_after, idle) {
                    (Some(after), Some(idle)) => match idle.checked_add(after) {
                        Some(due) if due <= now => {
                            if shared.idle_and_flushed() {
                                if let Some(head) = head {
                                    this.sleep.as_mut().reset(head.into());
                                }
                                return Poll::Ready(IdleEvent::Release);
                            }
                            // Not yet flushed: once more, `after` from now.
                            now.checked_add(after)
                                .map(|next| head.map_or(next, |h| h.min(next)))
                        }
                        Some(due) => Some(head.map_or(due, |h| h.min(due))),
                        None => head,
                    },
                    _ => head,
                }
            };
            let Some(deadline) = deadline else {
                // A timeout past the clock's range: never.
                return Poll::Pending;
            };
            this.sleep.as_mut().reset(deadline.into());
        }
    }

    /// The connection is served again after being taken apart: its next release is counted
    /// from now, not from the head deadline the timer was moved to.
    pub(crate) fn served_again(self: Pin<&mut Self>) {
        let mut this = self.project();
        if let Some(after) = *this.release_after {
            if let Some(next) = Instant::now().checked_add(after) {
                if next < this.sleep.deadline().into_std() {
                    this.sleep.as_mut().reset(next.into());
                    *this.armed = false;
                }
            }
        }
    }
}

/// `future` with `timeout` from `now` to finish (`None` if it did not): timed by the
/// connection's request timer when there are `timers` (for one request at a time, as an HTTP/1
/// connection has them: the timer follows the deadline of whichever bounded future polled it
/// last), else by a timer of its own (an HTTP/2 stream). The future is made after the clock is read (`make`), so that
/// it is built where it stays, not moved (a copy of several hundred bytes).
#[inline]
pub(crate) fn bound<F: Future>(
    timers: Option<ConnTimers>,
    timeout: Duration,
    now: Instant,
    make: impl FnOnce() -> F,
) -> Bounded<F> {
    let now = tokio::time::Instant::from_std(now);
    // A timeout past the clock's range never ends: tokio's own far future.
    let deadline = now
        .checked_add(timeout)
        .unwrap_or_else(|| now + Duration::from_secs(86400 * 365 * 30));
    Bounded {
        future: make(),
        own: None,
        shared: timers,
        deadline,
    }
}

pin_project_lite::pin_project! {
    /// A future with a deadline ([`bound`]).
    pub(crate) struct Bounded<F> {
        #[pin]
        future: F,
        // Without a connection's timer: made at the first wait. Boxed: HTTP/2's requests have
        // one, and every request's future would otherwise carry its room.
        own: Option<Pin<Box<Sleep>>>,
        shared: Option<ConnTimers>,
        deadline: tokio::time::Instant,
    }
}

impl<F: Future> Future for Bounded<F> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<F::Output>> {
        let this = self.project();
        if let Poll::Ready(output) = this.future.poll(cx) {
            return Poll::Ready(Some(output));
        }
        let deadline = *this.deadline;
        let Some(shared) = this.shared else {
            let sleep = this
                .own
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
            return sleep.as_mut().poll(cx).map(|()| None);
        };
        // Never held across an await, and nothing under it panics.
        let mut timer = shared
            .0
            .request_timer
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let sleep = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if sleep.deadline() != deadline {
            sleep.as_mut().reset(deadline);
        }
        sleep.as_mut().poll(cx).map(|()| None)
    }
}

/// A request being served (see [`ConnTimers::serving`]).
pub(crate) struct Serving(Arc<Shared>);

impl Drop for Serving {
    fn drop(&mut self) {
        let shared = &*self.0;
        let since = u64::try_from(shared.opened.elapsed().as_nanos()).unwrap_or(u64::MAX);
        shared.idle_since.store(since, Ordering::Relaxed);
        shared.serving.fetch_sub(1, Ordering::Release);
    }
}

/// An agent's request body on an HTTP/1 connection: hyper's, watched for its end
/// ([`ConnTimers::track`]).
pub struct AgentIncoming {
    body: Incoming,
    open: Option<OpenBody>,
}

/// A request body not yet read to its end.
struct OpenBody {
    _serving: Serving,
    ended: bool,
}

impl Drop for OpenBody {
    fn drop(&mut self) {
        if !self.ended {
            self._serving.0.body_left.store(true, Ordering::Relaxed);
        }
    }
}

impl AgentIncoming {
    /// hyper's body, no longer watched (a CONNECT's, whose connection is upgraded or closed).
    pub(crate) fn into_inner(self) -> Incoming {
        self.body
    }
}

impl Body for AgentIncoming {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let frame = Pin::new(&mut self.body).poll_frame(cx);
        if self.open.is_some() {
            let ended = match &frame {
                Poll::Ready(None) => true,
                Poll::Ready(Some(Ok(_))) => self.body.is_end_stream(),
                // An error: hyper closes the connection.
                Poll::Ready(Some(Err(_))) | Poll::Pending => false,
            };
            if ended {
                if let Some(open) = &mut self.open {
                    open.ended = true;
                }
                self.open = None;
            }
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A response body that ends its request's [`Serving`] when it ends or is dropped.
pub struct Watched {
    body: ProxyBody,
    _serving: Option<Serving>,
}

/// What an HTTP/1 listener's service maps its response with: the response, holding the
/// request's `Serving` (none on an HTTP/2 connection, which has no head to wait for). A function
/// returning the closure, whose signature it declares: a closure written where the response
/// future is built is inferred for one lifetime of the body's boxed error, and the connection
/// futures spawned for intercepted tunnels need it for any.
pub(crate) fn watched(
    serving: Option<Serving>,
) -> impl FnOnce(Response<ProxyBody>) -> Result<Response<Watched>, Infallible> + Send {
    move |response| {
        Ok(response.map(|body| Watched {
            body,
            _serving: serving,
        }))
    }
}

impl Body for Watched {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let frame = Pin::new(&mut self.body).poll_frame(cx);
        if let Poll::Ready(None) = frame {
            // Ended: the wait for the next head starts now, not when hyper drops the body.
            self._serving = None;
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
