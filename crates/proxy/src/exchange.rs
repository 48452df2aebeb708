//! The life of one request whose target a listener has identified, read top to bottom:
//!
//! identify (the listener) → [`decide`](Policy::decide_request) → [`read_body`] →
//! [`credential`] → [`rewrite`] → [`forward`] → [`respond`] → audit.
//!
//! Policy decides; this module only carries the decision out. Every exchange ends in one of two
//! ways, both owned by [`Session`]: refused ([`Session::refuse`]: what the agent is still
//! uploading is drained, the refusal answered, the audit record written) or answered by the
//! upstream ([`Session::respond`]: the record is written when the response body ends). A
//! session dropped before either (the agent went away) still writes its record.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures_util::future::Either;
use futures_util::FutureExt as _;
use http::header::{HeaderName, HeaderValue};
use http::request::Parts;
use http::{Request, Response, Uri, Version};
use http_body::Body;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use sidekey_audit::{Outcome, RequestId};
use sidekey_body::count::{BodyMeter, Counted};
use sidekey_body::form::{self, FormGuard, OverrideCheck, Verdict};
use sidekey_body::mask::{scrub_headers, Needles, Scrubbed};
use sidekey_body::{decode, full, BoxError, ProxyBody, DRAIN_LIMIT, DRAIN_TIME};
use sidekey_config::Inject;
use sidekey_credentials::{Credential, CredentialError, CredentialValue, TaskContext};
use sidekey_grants::{Grant, GRANT_HEADER};
use sidekey_inject::sigv4::{self, AwsKeys, Payload, SigV4Error, SigningScope};
use sidekey_inject::trace::TraceContext;
use sidekey_metrics::RouteTimers;
use sidekey_policy::{
    BodyPlan, CedarInput, ErrorCode, FormScan, GrantFacts, Identified, Refusal, RequestDecision,
    RequestPath, Target, WholeBody, WholePurpose, TASK_HEADER,
};

use crate::audit::{Metered, PendingRecord};
use crate::conn_timers::ConnTimers;
use crate::error::{refusal_response, tag_request_id};
use crate::pool::{Pool, UpstreamBody};
use crate::upstream::Upstream;
use crate::websocket::{self, Admission, Streams};
use crate::{Attached, Certified, ProxyState, RouteRuntime};

/// How long the agent gets to send a body that is read whole (a small form, a body to sign).
const WHOLE_BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// What an agent's request body can be: hyper's `Incoming` from a listener, or any body a test
/// drives the exchange with.
pub trait AgentBody: Body<Data = Bytes, Error: Into<BoxError>> + Send + Unpin + 'static {}

impl<B> AgentBody for B where B: Body<Data = Bytes, Error: Into<BoxError>> + Send + Unpin + 'static {}

/// A request whose target the listener has identified.
pub struct Exchange {
    pub identified: Identified,
    pub started: Instant,
    /// The grant its intercepted tunnel's CONNECT presented (requests inside a tunnel present
    /// none of their own).
    pub tunnel_grant: Option<Arc<Grant>>,
    /// What a WebSocket it opens needs from the listener; None where none may be opened.
    pub streams: Option<Streams>,
    /// Its HTTP/1 connection's timers, whose request timer bounds the wait for the upstream.
    pub(crate) conn_timers: Option<ConnTimers>,
}

impl Exchange {
    pub fn new(identified: Identified) -> Self {
        Exchange {
            identified,
            started: Instant::now(),
            tunnel_grant: None,
            streams: None,
            conn_timers: None,
        }
    }

    /// Times its wait for the upstream on its HTTP/1 connection's request timer.
    pub(crate) fn with_conn_timers(mut self, timers: Option<ConnTimers>) -> Self {
        self.conn_timers = timers;
        self
    }

    /// Lets the request open a WebSocket that outlives it, under the listener's shutdown.
    pub fn with_streams(mut self, streams: Streams) -> Self {
        self.streams = Some(streams);
        self
    }

    /// Binds the grant of the tunnel this request came through.
    pub fn with_grant(mut self, grant: Option<Arc<Grant>>) -> Self {
        self.tunnel_grant = grant;
        self
    }
}

/// A request's grant, verified: at once when there is nothing to verify (no grants configured,
/// none presented, a tunnel's grant checked still live), else the verification, boxed (it can
/// wait on a key source, and its future would otherwise make every request's future larger,
/// with or without a grant).
pub(crate) type GrantLookup<'a> = Either<
    std::future::Ready<Result<Option<Arc<Grant>>, Refusal>>,
    Pin<Box<dyn Future<Output = Result<Option<Arc<Grant>>, Refusal>> + Send + 'a>>,
>;

/// The grant in the proxy credentials (`Proxy-Authorization`) of a forward-listener request or
/// CONNECT, verified. None when grants are not configured or none was presented (policy then
/// decides whether one was required).
pub(crate) fn grant_of_proxy_credentials<'a>(
    state: &'a ProxyState,
    headers: &'a http::HeaderMap,
) -> GrantLookup<'a> {
    let Some(grants) = &state.grants else {
        return Either::Left(std::future::ready(Ok(None)));
    };
    match sidekey_grants::presented_by_proxy_authorization(headers) {
        Ok(token) => verify(state, grants, token),
        Err(e) => Either::Left(std::future::ready(Err(e.refusal()))),
    }
}

fn verify<'a>(
    state: &'a ProxyState,
    grants: &'a sidekey_grants::Grants,
    token: Option<std::borrow::Cow<'a, str>>,
) -> GrantLookup<'a> {
    match token {
        None => Either::Left(std::future::ready(Ok(None))),
        Some(token) => Either::Right(Box::pin(async move {
            counted(state, grants.authenticate(&token).await).map(Some)
        })),
    }
}

/// A grant's verification, counted in `sidekey_grants_verified_total` (`ok` or the code).
fn counted<T>(
    state: &ProxyState,
    result: Result<T, sidekey_grants::GrantError>,
) -> Result<T, Refusal> {
    match result {
        Ok(v) => {
            state.metrics.grant_verified("ok");
            Ok(v)
        }
        Err(e) => {
            let refusal = e.refusal();
            state.metrics.grant_verified(refusal.code.as_str());
            Err(refusal)
        }
    }
}

/// The grant a request goes under: its tunnel's (checked still live), its proxy credentials
/// on the forward listener, or `x-sidekey-grant` on the route listener.
fn grant_of<'a>(
    state: &'a ProxyState,
    exchange: &'a Exchange,
    parts: &'a Parts,
) -> GrantLookup<'a> {
    let Some(grants) = &state.grants else {
        return Either::Left(std::future::ready(Ok(None)));
    };
    match &exchange.identified {
        Identified::Intercepted { .. } => {
            Either::Left(std::future::ready(match &exchange.tunnel_grant {
                Some(grant) => {
                    counted(state, grants.check_live(grant)).map(|()| Some(Arc::clone(grant)))
                }
                None => Ok(None),
            }))
        }
        Identified::Absolute(_) => grant_of_proxy_credentials(state, &parts.headers),
        Identified::Route { .. } => match sidekey_grants::presented_by_header(&parts.headers) {
            Ok(token) => verify(state, grants, token),
            Err(e) => Either::Left(std::future::ready(Err(e.refusal()))),
        },
    }
}

/// A fresh request ID: a UUIDv7 (ordered by its millisecond, then random), as 32 hex digits,
/// held inline. Built from the clock and the thread's random generator, without the `uuid`
/// crate's process-wide counter (which orders IDs within a millisecond too, at a lock per ID).
pub fn new_request_id() -> RequestId {
    let millis = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let random: [u8; 10] = rand::random();
    RequestId::of(
        uuid::Builder::from_unix_timestamp_millis(millis, &random)
            .into_uuid()
            .as_u128(),
    )
}

/// A method's name for the audit record: a standard method's is static (no copy per request).
pub(crate) fn method_name(method: &http::Method) -> Cow<'static, str> {
    use http::Method;
    Cow::Borrowed(match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => return Cow::Owned(method.as_str().to_string()),
    })
}

/// Runs every phase for one request whose target is known: [`prepare`] (identify to rewrite),
/// then [`start_forward`] and [`Answer::take`] (forward, respond, the rare retry after a 401).
///
/// Two futures, one after the other, rather than one: hyper holds the request's future (boxed)
/// for every request in flight, and it is the larger of the two rather than their sum. What
/// the first holds (the agent's head and body as they came, the exchange, the trace) is gone
/// while the upstream answers, and what the second holds is what the answer needs. Plain
/// functions, not `async fn`s: an `async fn` keeps a second copy of its arguments in its
/// future. Joined by [`Exchanging`], which moves each phase's future in once, where
/// `futures`' `then` and `map` would copy it again on each change of state.
pub fn handle<B: AgentBody>(
    state: Arc<ProxyState>,
    exchange: Exchange,
    request: Request<B>,
) -> impl Future<Output = Response<ProxyBody>> + Send {
    Exchanging::Preparing {
        prepare: prepare(state, exchange, request),
        forward: start_forward,
    }
}

pin_project_lite::pin_project! {
    /// An exchange's future ([`handle`]): preparing, then waiting for the upstream, then (for a
    /// refusal that drains or a retry) answering. `S` makes the forward's future (a function's,
    /// so that its type need not be named).
    #[project = ExchangingProj]
    enum Exchanging<P, S, F> {
        Preparing { #[pin] prepare: P, forward: S },
        Forwarding { #[pin] forward: F, answer: Option<Answer> },
        Answering { answered: Pin<Box<dyn Future<Output = Response<ProxyBody>> + Send>> },
        Done,
    }
}

impl<P, S, F> Future for Exchanging<P, S, F>
where
    P: Future<Output = Prepared>,
    S: FnOnce(Forwarding) -> (F, Answer) + Copy,
    F: Future<Output = Result<Response<UpstreamBody>, Refusal>>,
{
    type Output = Response<ProxyBody>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let answered = match self.as_mut().project() {
                ExchangingProj::Preparing { prepare, forward } => {
                    let start = *forward;
                    match std::task::ready!(prepare.poll(cx)) {
                        Prepared::Answered(answered) => answered,
                        Prepared::Forward(forwarding) => {
                            let (forward, answer) = start(forwarding);
                            self.set(Exchanging::Forwarding {
                                forward,
                                answer: Some(answer),
                            });
                            continue;
                        }
                    }
                }
                ExchangingProj::Forwarding { forward, answer } => {
                    let forwarded = std::task::ready!(forward.poll(cx));
                    // Taken once, as the state changes: never missing here.
                    let Some(answer) = answer.take() else {
                        self.set(Exchanging::Done);
                        return Poll::Pending;
                    };
                    answer.take(forwarded)
                }
                ExchangingProj::Answering { answered } => {
                    let response = std::task::ready!(answered.as_mut().poll(cx));
                    self.set(Exchanging::Done);
                    return Poll::Ready(response);
                }
                // Polled after its end: nothing more comes (as `futures`' `Fuse`).
                ExchangingProj::Done => return Poll::Pending,
            };
            match answered {
                Either::Right(ready) => {
                    self.set(Exchanging::Done);
                    return Poll::Ready(ready.into_inner());
                }
                Either::Left(answered) => self.set(Exchanging::Answering { answered }),
            }
        }
    }
}

/// How [`prepare`] ends: answered (refused, or a WebSocket), or ready to forward. A refusal is
/// awaited after `prepare` (a drain, rarely), not in it: each await in `prepare` would be one
/// more state of its future, with what is alive there.
#[allow(
    clippy::large_enum_variant,
    reason = "made once per request and taken apart at once by start_forward: a box would be an allocation per request"
)]
enum Prepared {
    Answered(Refused),
    Forward(Forwarding),
}

/// The upstream request, what sends it, and what its answer needs ([`start_forward`]).
struct Forwarding {
    parts: Parts,
    outgoing: Outgoing,
    sending: Sending,
    answer: Answer,
}

/// How a request goes upstream ([`forward`]): the route's pool, how long it may wait, the agent
/// connection's timers and the route's series. A retry goes the same way.
#[derive(Clone)]
struct Sending {
    pool: Arc<Pool>,
    timeout: Duration,
    conn_timers: Option<ConnTimers>,
    timers: RouteTimers,
}

/// What the upstream's answer needs: the session that writes the record, what to mask, and
/// for a credentialed request the way back from a 401.
struct Answer {
    state: Arc<ProxyState>,
    session: Session,
    needles: Option<Needles>,
    recovery: Option<Recovery>,
}

/// A credentialed request's way back when the upstream refuses its credential (401): the
/// credential is replaced, and a request that can be sent again is.
struct Recovery {
    /// The route, by its index in the state the request runs under.
    route: usize,
    used: Arc<Credential>,
    grant: Option<Arc<Grant>>,
    /// Boxed: made only for a request that can be sent again, and it is larger than the rest of
    /// what the answer needs together.
    again: Option<Box<Again>>,
}

/// What sending a request again takes: the agent's head as it came, and how the first was sent.
struct Again {
    head: RetryHead,
    identified: Identified,
    trace: TraceContext,
    sending: Sending,
}

/// Identify to rewrite: the grant, the decision (route, Cedar), the body when it is read whole,
/// the credential and client certificate, the upstream request. Ends answered (a refusal, a
/// WebSocket) or with the request to forward.
fn prepare<B: AgentBody>(
    state: Arc<ProxyState>,
    exchange: Exchange,
    request: Request<B>,
) -> impl Future<Output = Prepared> + Send {
    let (mut parts, body) = request.into_parts();
    async move {
        // Before the record starts: an HTTP/2 WebSocket's CONNECT is recorded (and decided) as the
        // GET it stands for.
        let websocket = websocket::requested(&mut parts);
        let mut session = Session::start(&state, &exchange, &parts);
        let trace = {
            let (trace_id, span_id): (u128, u64) = rand::random();
            TraceContext::continue_or_start(&parts.headers, trace_id, span_id)
        };
        session.record.set_trace(&trace, state.spans.as_ref());
        let websocket = match (websocket, &exchange.streams) {
            (Ok(None), _) => None,
            // Boxed: rare, and kept across every await of the request.
            (Ok(Some(ws)), Some(streams)) => {
                Some(Box::new((ws, streams.clone(), head_copy(&parts))))
            }
            (Ok(Some(_)), None) => {
                let refusal = Refusal::new(
                    ErrorCode::RequestInvalid,
                    "WebSockets are not served on this connection",
                );
                return Prepared::Answered(session.refuse(refusal, Some(body)));
            }
            (Err(refusal), _) => return Prepared::Answered(session.refuse(refusal, Some(body))),
        };

        // the grant
        let grant = match grant_of(&state, &exchange, &parts).await {
            Ok(grant) => grant,
            Err(refusal) => return Prepared::Answered(session.refuse(refusal, Some(body))),
        };
        session.set_grant(grant.as_deref());

        // decide
        let declared = match websocket {
            Some(_) => Some(0),
            None => body.size_hint().exact(),
        };
        let scope = grant.as_deref().map(|g| &g.scope);
        let (route, path, plan) =
            match state
                .policy
                .decide_request(&exchange.identified, &parts, declared, scope)
            {
                RequestDecision::Allow { route, path, body } => (Some(route), Some(path), body),
                RequestDecision::PassUnmatched => (None, None, BodyPlan::default()),
                RequestDecision::Deny(refusal) => {
                    return Prepared::Answered(session.refuse(refusal, Some(body)))
                }
            };
        let runtime = route.and_then(|r| state.routes.get(r));
        match runtime {
            Some(runtime) => {
                session.record.set_route(&runtime.name);
                session.record.set_decision(Outcome::Allow);
            }
            None => session.record.set_decision(Outcome::Tunnel),
        }
        // Cedar, after the route: the route allows it; do the policies?
        if let (Some(cedar), Some(runtime)) = (&state.cedar, runtime) {
            let unix_time = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let input = CedarInput::for_request(
                cedar,
                exchange.identified.target(),
                &parts,
                &runtime.name,
                runtime.action.as_deref(),
                declared,
                grant.as_deref().map(|g| GrantFacts {
                    sub: &g.sub,
                    task: &g.task_id,
                    user: g.on_behalf_of.as_deref(),
                    act: &g.act,
                }),
                unix_time,
            );
            let verdict = cedar.authorize(&input);
            if !verdict.errors.is_empty() {
                tracing::info!(request_id = %session.record.request_id(), errors = ?verdict.errors, "Cedar policies that could not be evaluated were skipped");
            }
            let allowed = verdict.allowed;
            let refusal = (!allowed).then(|| verdict.refusal());
            session.record.set_cedar(sidekey_audit::CedarDecision {
                decision: if allowed { "allow" } else { "deny" },
                policies: verdict.policies,
            });
            if let Some(refusal) = refusal {
                session.record.set_decision(Outcome::Deny);
                return Prepared::Answered(session.refuse(refusal, Some(body)));
            }
        }
        let check =
            match (route, path) {
                (Some(route), Some(path)) if plan.form != FormScan::None => Some(
                    method_field_check(&state, &exchange, path, route, grant.clone()),
                ),
                _ => None,
            };

        // body
        let body = match read_body(&plan, check.as_ref(), body).await {
            Ok(body) => body,
            Err(refusal) => return Prepared::Answered(session.refuse(refusal, None::<B>)),
        };

        // credential
        let listener = exchange.identified.listener();
        let timers = match runtime {
            Some(runtime) => runtime.timers(&state.metrics, listener),
            None => state.metrics.route_timers(listener, ""),
        };
        session.record.set_series(&timers);
        let (credential, mut waited) =
            with_wait(credential(&state, runtime, grant.as_deref())).await;
        let credential = match credential {
            Ok(credential) => credential,
            Err(refusal) => {
                if let Some(runtime) = runtime {
                    session.set_credential(runtime, None);
                }
                return Prepared::Answered(session.refuse(refusal, body.into_unread()));
            }
        };
        if let (Some(runtime), Some(credential)) = (runtime, &credential) {
            session.set_credential(runtime, Some(credential));
        }
        let (certified, also) = with_wait(client_certificate(
            &state,
            &mut session,
            runtime,
            grant.as_deref(),
        ))
        .await;
        waited += also;
        let certified = match certified {
            Ok(certified) => certified,
            Err(refusal) => return Prepared::Answered(session.refuse(refusal, body.into_unread())),
        };
        if runtime.is_some_and(|r| r.credential.is_some() || r.client_certificate.is_some()) {
            timers.credential_wait(waited.as_secs_f64());
        }

        // A credentialed GET, HEAD or OPTIONS with no body can be sent again when the upstream
        // refuses the credential (401): keep its head as the agent sent it.
        let retry_head = (credential.is_some()
            && websocket.is_none()
            && matches!(
                parts.method,
                http::Method::GET | http::Method::HEAD | http::Method::OPTIONS
            )
            && body.is_empty())
        .then(|| RetryHead::of(&parts));

        // rewrite
        let payload = match &body {
            AgentRequestBody::Whole(bytes) => Payload::Bytes(bytes),
            AgentRequestBody::Streaming(_) => Payload::Unsigned,
        };
        let inject = runtime.and_then(|r| r.inject.as_ref());
        let attached = credential.as_ref().map(|c| match runtime {
            Some(runtime) => runtime.attached.get(c, || attach(c, inject)),
            None => Arc::new(attach(c, inject)),
        });
        if let Err(refusal) = rewrite(
            &mut parts,
            exchange.identified.target(),
            &trace,
            inject,
            credential.as_deref().zip(attached.as_deref()),
            payload,
        ) {
            return Prepared::Answered(session.refuse(refusal, body.into_unread()));
        }
        if let Some(upgrade) = &websocket {
            upgrade.0.prepare_upstream(&mut parts);
        }
        let needles = attached.map(|a| a.needles.clone());

        // forward
        let allow_private = runtime.is_some_and(|r| r.allow_private);
        if let Some(upgrade) = websocket {
            let (ws, streams, request) = *upgrade;
            let identified = exchange.identified;
            // Boxed: a WebSocket is the rare case, and its upgrade (a connection of its own)
            // would otherwise make every request's future larger.
            return Prepared::Answered(Either::Left(Box::pin(async move {
                let runtime = route.and_then(|r| state.routes.get(r));
                let sent = Instant::now();
                let answered = state
                    .upstream
                    .upgrade(
                        Request::from_parts(parts, sidekey_body::empty()),
                        allow_private,
                        certified.as_ref(),
                    )
                    .await;
                timers.upstream(sent.elapsed().as_secs_f64());
                match answered {
                    Ok(response) if response.status() == http::StatusCode::SWITCHING_PROTOCOLS => {
                        if let Err(refusal) = ws.check_accepted(&response) {
                            return session.refuse(refusal, None::<B>).await;
                        }
                        let admission = Admission {
                            identified,
                            request,
                            grant,
                            route: runtime.map(|r| Arc::clone(&r.name)),
                            credential: runtime.and_then(|r| r.credential.clone()),
                            client_certificate: runtime.and_then(|r| r.client_certificate.clone()),
                        };
                        session.upgrade(&state, &streams, ws, response, needles, admission)
                    }
                    // A refusal of the upgrade (401, 403, 426…) is answered like any response.
                    Ok(response) => session.respond(response.map(UpstreamBody::unpooled), needles),
                    Err(refusal) => session.refuse(refusal, None::<B>).await,
                }
            })));
        }
        let outgoing = Outgoing::new(body, &plan, check, &mut session.record);
        let sending = Sending {
            pool: Arc::clone(state.upstream.pool(certified.as_ref(), allow_private)),
            timeout: state.upstream.request_timeout(),
            conn_timers: exchange.conn_timers,
            timers,
        };
        let recovery = match (route, credential) {
            (Some(route), Some(used)) => Some(Recovery {
                route,
                used,
                grant,
                again: retry_head.map(|head| {
                    Box::new(Again {
                        head,
                        identified: exchange.identified,
                        trace,
                        sending: sending.clone(),
                    })
                }),
            }),
            _ => None,
        };
        Prepared::Forward(Forwarding {
            parts,
            outgoing,
            sending,
            answer: Answer {
                state,
                session,
                needles,
                recovery,
            },
        })
    }
}

/// The forward's future, and what its answer needs ([`Answer::take`]).
fn start_forward(
    forwarding: Forwarding,
) -> (
    impl Future<Output = Result<Response<UpstreamBody>, Refusal>> + Send + 'static,
    Answer,
) {
    let Forwarding {
        parts,
        outgoing,
        sending,
        answer,
    } = forwarding;
    (forward(sending, parts, outgoing), answer)
}

impl Answer {
    /// The upstream's answer goes back to the agent, or a refusal does. A 401 to a credentialed
    /// request goes to [`Recovery::recover`] (boxed: rare, and larger than the rest).
    fn take(self, forwarded: Result<Response<UpstreamBody>, Refusal>) -> Refused {
        let Answer {
            state,
            session,
            needles,
            recovery,
        } = self;
        let response = match forwarded {
            Ok(response) => response,
            Err(refusal) => return session.refuse(refusal, None::<Incoming>),
        };
        match recovery {
            Some(recovery) if response.status() == http::StatusCode::UNAUTHORIZED => Either::Left(
                Box::pin(recovery.recover(state, session, response, needles)),
            ),
            // respond
            _ => Either::Right(std::future::ready(session.respond(response, needles))),
        }
    }
}

impl Recovery {
    /// The upstream refused the credential: replaced (once, however many requests saw it
    /// refused), and a request that can be sent again is, once.
    async fn recover(
        self,
        state: Arc<ProxyState>,
        mut session: Session,
        response: Response<UpstreamBody>,
        needles: Option<Needles>,
    ) -> Response<ProxyBody> {
        let Recovery {
            route,
            used,
            grant,
            again,
        } = self;
        let Some(runtime) = state.routes.get(route) else {
            return session.respond(response, needles);
        };
        let Some(name) = runtime.credential.clone() else {
            return session.respond(response, needles);
        };
        let task = grant
            .as_deref()
            .filter(|_| state.credentials.is_per_task(&name))
            .map(task_context);
        let Some(again) = again else {
            session.record.set_rejected(&used.id.0, false);
            let credentials = Arc::clone(&state.credentials);
            tokio::spawn(async move {
                if let Err(e) = credentials
                    .replace_rejected(&name, task.as_ref(), &used)
                    .await
                {
                    tracing::info!(credential = %name, error = %e, "replacing a refused credential failed");
                }
            });
            return session.respond(response, needles);
        };
        let fresh = match state
            .credentials
            .replace_rejected(&name, task.as_ref(), &used)
            .await
        {
            Ok(Some(fresh)) => fresh,
            not_replaced => {
                if let Err(e) = not_replaced {
                    tracing::info!(credential = %name, error = %e, "replacing a refused credential failed");
                }
                session.record.set_rejected(&used.id.0, false);
                return session.respond(response, needles);
            }
        };
        drop(response);
        session.record.set_rejected(&used.id.0, true);
        session.set_credential(runtime, Some(&fresh));
        let Again {
            head,
            identified,
            trace,
            sending,
        } = *again;
        let mut parts = head.into_parts();
        let empty = Bytes::new();
        let inject = runtime.inject.as_ref();
        let attached = runtime.attached.get(&fresh, || attach(&fresh, inject));
        if let Err(refusal) = rewrite(
            &mut parts,
            identified.target(),
            &trace,
            inject,
            Some((&fresh, &attached)),
            Payload::Bytes(&empty),
        ) {
            return session.refuse(refusal, None::<Incoming>).await;
        }
        let needles = attached.needles.clone();
        let outgoing = Outgoing::new(
            AgentRequestBody::<Incoming>::Whole(empty),
            &BodyPlan::default(),
            None,
            &mut session.record,
        );
        match forward(sending, parts, outgoing).await {
            Ok(response) => session.respond(response, Some(needles)),
            Err(refusal) => session.refuse(refusal, None::<Incoming>).await,
        }
    }
}

/// A copy of a request head (method, URI, version, headers), without its extensions.
pub(crate) fn head_copy(parts: &Parts) -> Parts {
    let mut request = Request::new(());
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = parts.uri.clone();
    *request.version_mut() = parts.version;
    *request.headers_mut() = parts.headers.clone();
    request.into_parts().0
}

/// The agent's head kept for a retry after a 401: what [`head_copy`] keeps, with the headers
/// as a flat list (one allocation for every credentialed GET, where a `HeaderMap` clone makes
/// two: its index table and its entries); a map again only when a 401 comes.
struct RetryHead {
    method: http::Method,
    uri: Uri,
    version: Version,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl RetryHead {
    fn of(parts: &Parts) -> RetryHead {
        let mut headers = Vec::with_capacity(parts.headers.len());
        headers.extend(
            parts
                .headers
                .iter()
                .map(|(name, value)| (name.clone(), value.clone())),
        );
        RetryHead {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            version: parts.version,
            headers,
        }
    }

    /// The head `head_copy` would have made: a map iterates a name's values together, in the
    /// order of its entries, which appending them in that order rebuilds.
    fn into_parts(self) -> Parts {
        let mut request = Request::new(());
        *request.method_mut() = self.method;
        *request.uri_mut() = self.uri;
        *request.version_mut() = self.version;
        let headers = request.headers_mut();
        headers.reserve(self.headers.len());
        for (name, value) in self.headers {
            headers.append(name, value);
        }
        request.into_parts().0
    }
}

/// What a per-task credential is issued for: the grant's task.
fn task_context(grant: &Grant) -> TaskContext {
    TaskContext {
        grant_id: grant.jti.clone(),
        task_id: grant.task_id.clone(),
        sub: grant.sub.clone(),
        on_behalf_of: grant.on_behalf_of.clone(),
        act: grant.act.clone(),
        expires_at: grant.expires_at,
    }
}

/// The `_method` check of fields found in this request's body, owned so that a body scanned as
/// it streams can carry it.
fn method_field_check(
    state: &Arc<ProxyState>,
    exchange: &Exchange,
    path: RequestPath,
    route: usize,
    grant: Option<Arc<Grant>>,
) -> OverrideCheck {
    let state = Arc::clone(state);
    let identified = exchange.identified.clone();
    Arc::new(move |value: &str| {
        state.policy.check_method_field(
            &identified,
            &path,
            route,
            grant.as_deref().map(|g| &g.scope),
            value,
        )
    })
}

/// The agent's body after [`read_body`]: read whole, or still to stream.
enum AgentRequestBody<B> {
    Whole(Bytes),
    Streaming(B),
}

impl<B: AgentBody> AgentRequestBody<B> {
    /// Whether there is no body at all.
    fn is_empty(&self) -> bool {
        match self {
            AgentRequestBody::Whole(bytes) => bytes.is_empty(),
            AgentRequestBody::Streaming(body) => body.is_end_stream(),
        }
    }

    /// What a refusal still has to drain.
    fn into_unread(self) -> Option<B> {
        match self {
            AgentRequestBody::Whole(_) => None,
            AgentRequestBody::Streaming(body) => Some(body),
        }
    }
}

/// Reads the body whole when the plan says so (a small form checked before anything is sent,
/// or a body whose hash is signed — read before the credential is fetched, so that keys are
/// never held waiting on a slow agent), and checks its `_method` fields; otherwise leaves it to
/// stream, at once. The read is a future of its own (boxed): the request's future does not
/// carry it for the requests that stream (nearly all).
fn read_body<'a, B: AgentBody>(
    plan: &'a BodyPlan,
    check: Option<&'a OverrideCheck>,
    body: B,
) -> impl Future<Output = Result<AgentRequestBody<B>, Refusal>> + Send + 'a {
    let Some(whole) = plan.whole else {
        return Either::Right(std::future::ready(Ok(AgentRequestBody::Streaming(body))));
    };
    Either::Left(Box::pin(async move {
        let bytes = read_whole(body, whole).await?;
        if let Some(check) = check {
            let values = form::fields_of_whole(&plan.form, &bytes)
                .map_err(|e| Refusal::new(ErrorCode::RequestInvalid, e.to_string()))?;
            values.iter().try_for_each(|value| check(value))?;
        }
        Ok(AgentRequestBody::Whole(bytes))
    }))
}

/// Reads a whole body of at most `whole.limit` bytes within [`WHOLE_BODY_TIMEOUT`].
async fn read_whole<B: AgentBody>(body: B, whole: WholeBody) -> Result<Bytes, Refusal> {
    let limit = usize::try_from(whole.limit).unwrap_or(usize::MAX);
    let read = http_body_util::Limited::new(body, limit).collect();
    let needs = match whole.purpose {
        WholePurpose::FormCheck => "the form body",
        WholePurpose::Signature => "a SigV4 signature",
    };
    match tokio::time::timeout(WHOLE_BODY_TIMEOUT, read).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(match whole.purpose {
            WholePurpose::FormCheck => Refusal::new(
                ErrorCode::BodyTooLarge,
                format!(
                    "the form body is longer than the {} bytes it declared",
                    whole.limit
                ),
            ),
            WholePurpose::Signature => Refusal::new(
                ErrorCode::RequestInvalid,
                format!(
                    "the body is larger than {} MiB: a SigV4 signature over it cannot be \
                         made (S3 streams bodies of any size)",
                    whole.limit >> 20
                ),
            ),
        }),
        Ok(Err(_)) => Err(Refusal::new(
            ErrorCode::RequestInvalid,
            "the request body ended abnormally",
        )),
        Err(_) => Err(Refusal::new(
            ErrorCode::RequestInvalid,
            format!(
                "the body did not arrive within {WHOLE_BODY_TIMEOUT:?}: {needs} needs all of it"
            ),
        )),
    }
}

/// `future`'s output and how long the request waited for it: counted from its first poll that
/// did not finish it, so that a credential the store has at hand (nearly every request) costs
/// no reading of the clock and counts as no wait.
fn with_wait<F: Future>(future: F) -> Waited<F> {
    Waited {
        future,
        since: None,
    }
}

pin_project_lite::pin_project! {
    /// A future and the time it made its caller wait ([`with_wait`]).
    struct Waited<F> {
        #[pin]
        future: F,
        since: Option<Instant>,
    }
}

impl<F: Future> Future for Waited<F> {
    type Output = (F::Output, Duration);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match this.future.poll(cx) {
            Poll::Ready(output) => {
                Poll::Ready((output, this.since.map_or(Duration::ZERO, |s| s.elapsed())))
            }
            Poll::Pending => {
                this.since.get_or_insert_with(Instant::now);
                Poll::Pending
            }
        }
    }
}

/// The route's credential, from the store (a lookup on a hit; the issuer only on a miss): the
/// pod's, or for a `per_task` credential the one of this request's grant — a request without a
/// grant gets none (`grant_required`), and no grant ever gets another's.
fn credential<'a>(
    state: &'a ProxyState,
    route: Option<&RouteRuntime>,
    grant: Option<&Grant>,
) -> impl Future<Output = Result<Option<Arc<Credential>>, Refusal>> + Send + 'a {
    match route.and_then(|r| r.credential.as_ref()) {
        Some(name) => Either::Left(fetch(state, name, grant).map(|fetched| fetched.map(Some))),
        None => Either::Right(std::future::ready(Ok(None))),
    }
}

/// The route's client certificate (`client_certificate`), fetched like a credential, and the
/// upstream clients that present it; recorded with its serial.
fn client_certificate<'a>(
    state: &'a ProxyState,
    session: &'a mut Session,
    route: Option<&'a RouteRuntime>,
    grant: Option<&Grant>,
) -> impl Future<Output = Result<Option<Certified>, Refusal>> + Send + 'a {
    let Some((route, name)) = route.and_then(|r| Some((r, r.client_certificate.as_ref()?))) else {
        return Either::Right(std::future::ready(Ok(None)));
    };
    Either::Left(fetch(state, name, grant).map(move |fetched| {
        session
            .record
            .set_client_certificate(name, fetched.as_ref().ok().map(|c| c.id.as_str()));
        let certificate = fetched?;
        route
            .certified
            .get(&certificate, |c| {
                state.upstream.certified(c, route.allow_private)
            })
            .map(Some)
            .ok_or_else(|| {
                Refusal::new(
                    ErrorCode::CredentialUnavailable,
                    format!("credential `{name}` is not a client certificate"),
                )
            })
    }))
}

/// The credential `name`, from the store: the pod's, or for a `per_task` credential the one
/// of this request's grant. Ready at once when the store holds it (a future the size of a
/// result); only a fetch from the issuer is a future of its own.
fn fetch<'a>(
    state: &'a ProxyState,
    name: &Arc<str>,
    grant: Option<&Grant>,
) -> impl Future<Output = Result<Arc<Credential>, Refusal>> + Send + 'a {
    state
        .credentials
        .get_scoped(name, || grant.map(task_context))
        .map(|fetched| {
            fetched.map_err(|e| match e {
                CredentialError::TaskRequired(_) => {
                    Refusal::new(ErrorCode::GrantRequired, e.to_string())
                }
                e => Refusal::new(ErrorCode::CredentialUnavailable, e.to_string()),
            })
        })
}

/// Turns the agent's request into the upstream request: absolute URI for the target, no
/// hop-by-hop or sidekey headers, the trace continued (`traceparent`), the agent's copy of the
/// injected header removed, the credential attached.
fn rewrite(
    parts: &mut Parts,
    target: &Target,
    trace: &TraceContext,
    inject: Option<&Inject>,
    credential: Option<(&Credential, &Attached)>,
    payload: Payload<'_>,
) -> Result<(), Refusal> {
    if !is_upstream_form(&parts.uri, target) {
        let path_and_query = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        parts.uri = upstream_uri(target, path_and_query)?;
    }
    // Upstream, the agent's protocol: HTTP/2 when the upstream offers it (ALPN) for an HTTP/2
    // request, HTTP/1.1 for any other (see `pool`).
    if parts.version != Version::HTTP_2 {
        parts.version = Version::HTTP_11;
    }
    sidekey_inject::strip_hop_by_hop_and(&mut parts.headers, &AGENT_ONLY);
    // Before any signature: SigV4 may sign it.
    trace.apply(&mut parts.headers);
    parts.extensions.clear();
    if credential.is_some() {
        // A compressed body could carry the credential past the mask (see `respond`): ask for
        // none. An upstream that compresses anyway is decoded before the mask.
        parts.headers.insert(
            http::header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
    }
    let Some(inject) = inject else {
        return Ok(());
    };
    let Some((credential, attached)) = credential else {
        return sidekey_inject::strip_injected(&mut parts.headers, &mut parts.uri, inject)
            .map_err(|e| Refusal::new(ErrorCode::RequestInvalid, e.to_string()));
    };
    match (inject, &credential.value) {
        (
            Inject::SigV4 { service, region },
            CredentialValue::Aws {
                access_key_id,
                secret_access_key,
                session_token,
            },
        ) => {
            let keys = AwsKeys {
                access_key_id,
                secret_access_key,
                session_token: Some(session_token),
            };
            let scope = SigningScope {
                service,
                region,
                time: SystemTime::now(),
            };
            let uri = parts.uri.clone();
            let authority = uri.authority().map_or("", |a| a.as_str());
            sigv4::sign(
                &parts.method,
                authority,
                &uri,
                &mut parts.headers,
                payload,
                &keys,
                &scope,
            )
            .map_err(|e| {
                let code = match e {
                    SigV4Error::InvalidKeys | SigV4Error::InvalidScope => {
                        ErrorCode::CredentialUnavailable
                    }
                    _ => ErrorCode::RequestInvalid,
                };
                Refusal::new(code, format!("cannot sign the request: {e}"))
            })
        }
        (_, CredentialValue::Token(secret)) => match &attached.header {
            // The header computed once for this credential; `insert` replaces every value the
            // agent sent under its name.
            Some((name, value)) => {
                parts.headers.insert(name.clone(), value.clone());
                Ok(())
            }
            None => sidekey_inject::inject(&mut parts.headers, &mut parts.uri, inject, secret)
                .map_err(|e| Refusal::new(ErrorCode::CredentialUnavailable, e.to_string())),
        },
        (_, CredentialValue::Aws { .. }) => Err(Refusal::new(
            ErrorCode::CredentialUnavailable,
            "AWS keys can only sign requests (inject: sigv4)",
        )),
        (_, CredentialValue::Certificate(_)) => Err(Refusal::new(
            ErrorCode::CredentialUnavailable,
            "a client certificate is presented in the TLS handshake (client_certificate)",
        )),
    }
}

/// `scheme://authority/path?query` for `target`, written in one allocation and parsed. The
/// authority as the upstream sees it (Host / :authority): no default port, so that a signature
/// over it matches what is sent.
fn upstream_uri(target: &Target, path_and_query: &str) -> Result<Uri, Refusal> {
    let mut uri = String::with_capacity(
        target.scheme.as_str().len() + 3 + target.host.uri_host_len() + 6 + path_and_query.len(),
    );
    uri.push_str(target.scheme.as_str());
    uri.push_str("://");
    target.host.push_uri_host(&mut uri);
    if target.port != target.scheme.default_port() {
        // Into the capacity reserved above: writing to a String cannot fail.
        let _ = write!(uri, ":{}", target.port);
    }
    uri.push_str(path_and_query);
    Uri::try_from(uri).map_err(|_| {
        Refusal::new(
            ErrorCode::RequestInvalid,
            "request target cannot be forwarded",
        )
    })
}

/// What the agent may send that never goes upstream: the authority is the target's (`Host` is
/// written from the URI), and a task or grant header is for sidekey alone.
const AGENT_ONLY: [HeaderName; 3] = [http::header::HOST, TASK_HEADER, GRANT_HEADER];

/// Whether `uri` is already what `rewrite` would make of it for `target`:
/// `scheme://host[:port]/path?query` with the target's scheme, its canonical host, and its port
/// written only when it is not the scheme's default. Then the agent's absolute-form URI goes
/// as it is, without being written and parsed again (the usual case on the forward listener).
fn is_upstream_form(uri: &Uri, target: &Target) -> bool {
    let (Some(scheme), Some(authority), Some(_)) =
        (uri.scheme_str(), uri.authority(), uri.path_and_query())
    else {
        return false;
    };
    scheme == target.scheme.as_str() && target.is_written_as(authority.as_str())
}

/// What `credential` comes to as `inject` attaches it: the header (for header and Basic
/// injection), and every spelling of it that must not come back to the agent.
fn attach(credential: &Credential, inject: Option<&Inject>) -> Attached {
    let header = match (inject, &credential.value) {
        (Some(how), CredentialValue::Token(secret)) => {
            sidekey_inject::header_of(how, secret).ok().flatten()
        }
        _ => None,
    };
    let sent = header.as_ref().map(|(_, value)| value.as_bytes());
    let needles = Needles::for_credential(&credential.secrets(), sent);
    Attached { header, needles }
}

/// The body that goes upstream, and what tells afterwards why a forward failed.
struct Outgoing {
    body: ProxyBody,
    /// A streaming body's meter; none for a body read whole or absent, which cannot break off.
    meter: Option<Arc<BodyMeter>>,
    /// Where a streaming body scanned for `_method` fields puts the refusal a field caused.
    verdict: Option<Verdict>,
    max: Option<u64>,
}

impl Outgoing {
    /// A body read whole goes as it is (its bytes counted in `record`); one that streams is
    /// counted, cut off past the route's `max_request_body`, and scanned for `_method` fields
    /// when the plan says so. A request without a body (ended with its head) sends none: no
    /// allocation for the body or its meter.
    fn new<B: AgentBody>(
        body: AgentRequestBody<B>,
        plan: &BodyPlan,
        check: Option<OverrideCheck>,
        record: &mut PendingRecord,
    ) -> Outgoing {
        // Only a body scanned for `_method` fields can be given a verdict: no allocation for
        // the others (nearly every request).
        let mut verdict = None;
        let mut meter = None;
        let body = match body {
            AgentRequestBody::Whole(bytes) => {
                record.add_bytes_in(bytes.len() as u64);
                full(bytes)
            }
            AgentRequestBody::Streaming(body) if body.is_end_stream() => sidekey_body::empty(),
            AgentRequestBody::Streaming(body) => {
                let counted = Counted::new(body, Arc::clone(meter.insert(record.meter())));
                // Counted inside the limit, so that the count shows the body went past it.
                let limited = match plan.max {
                    Some(max) => http_body_util::Limited::new(
                        counted,
                        usize::try_from(max).unwrap_or(usize::MAX),
                    )
                    .boxed_unsync(),
                    None => counted.boxed_unsync(),
                };
                match (form::scanner_for(&plan.form), check) {
                    (Some(scanner), Some(check)) => {
                        let given = Verdict::default();
                        verdict = Some(Arc::clone(&given));
                        FormGuard::new(limited, scanner, check, given).boxed_unsync()
                    }
                    _ => limited,
                }
            }
        };
        Outgoing {
            body,
            meter,
            verdict,
            max: plan.max,
        }
    }
}

/// Sends the request upstream. A failure is the agent's when its body caused it: a `_method`
/// field the route does not allow cut it off (the upstream got an incomplete request, which it
/// does not act on), it grew past `max_request_body`, or it broke HTTP framing mid-stream.
/// The connection's request timer bounds the wait; the route's upstream histogram takes the
/// time from the send to the response head or the failure.
fn forward(
    sending: Sending,
    parts: Parts,
    outgoing: Outgoing,
) -> impl Future<Output = Result<Response<UpstreamBody>, Refusal>> + Send + 'static {
    let Sending {
        pool,
        timeout,
        conn_timers,
        timers: route_timers,
    } = sending;
    let Outgoing {
        body,
        meter,
        verdict,
        max,
    } = outgoing;
    // One reading of the clock for the phase's timer, the request's deadline and the pool's
    // idle check.
    let started = Instant::now();
    let sent = Upstream::send(
        pool,
        timeout,
        Request::from_parts(parts, body),
        conn_timers,
        started,
    );
    sent.map(move |sent| {
        route_timers.upstream(started.elapsed().as_secs_f64());
        if let Some(refusal) = verdict.as_ref().and_then(|v| v.get()) {
            return Err(refusal.clone());
        }
        sent.map_err(|refusal| {
            let meter = meter.as_deref();
            if max.is_some_and(|max| meter.is_some_and(|m| m.bytes() > max)) {
                Refusal::new(
                    ErrorCode::BodyTooLarge,
                    "the body grew larger than this route's max_request_body",
                )
            } else if meter.is_some_and(BodyMeter::failed) {
                Refusal::new(
                    ErrorCode::RequestInvalid,
                    "the request body broke off before its end (the agent closed it, reset the \
                     stream, or broke HTTP framing)",
                )
            } else {
                refusal
            }
        })
    })
}

/// A refusal's answer: ready, or once the agent's unread body has been drained.
pub(crate) type Refused = Either<
    Pin<Box<dyn Future<Output = Response<ProxyBody>> + Send>>,
    std::future::Ready<Response<ProxyBody>>,
>;

/// One request's audit record and ID, from identification to its end. Every way an exchange
/// ends goes through [`Session::refuse`] or [`Session::respond`], which write the record exactly
/// once; a session dropped before either (the agent went away while sidekey waited on an
/// issuer or the upstream) writes its record when dropped, as `client_aborted`.
pub(crate) struct Session {
    record: PendingRecord,
    /// The agent asked `Expect: 100-continue`: it sends no body before it is told to.
    expects_continue: bool,
}

impl Session {
    /// Starts the record of an identified request.
    fn start(state: &ProxyState, exchange: &Exchange, parts: &Parts) -> Session {
        let path_and_query = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let mut record = PendingRecord::new(
            state.audit.clone(),
            new_request_id(),
            exchange.identified.listener(),
            method_name(&parts.method),
            exchange.identified.target(),
            path_and_query,
            exchange.started,
        );
        // The agent's own task label, unless grants are required (then the task is the
        // grant's, and the label is refused).
        if !state.policy.grants_required() {
            record.set_task_id(task_id(parts));
        }
        Session {
            record,
            expects_continue: expects_continue(&parts.headers),
        }
    }

    /// Starts the record of a request refused before its target could be identified (a
    /// malformed authority, a wrong use of a listener): the target is recorded as the agent
    /// wrote it, truncated.
    pub(crate) fn unidentified(
        state: &ProxyState,
        listener: &'static str,
        method: &http::Method,
        headers: &http::HeaderMap,
        raw_target: &str,
    ) -> Session {
        let request_id = new_request_id();
        let shown: String = raw_target.chars().take(255).collect();
        let record = PendingRecord::with_target_text(
            state.audit.clone(),
            request_id,
            listener,
            method_name(method),
            ("", shown.into(), 0),
            "",
            Instant::now(),
        );
        Session {
            record,
            expects_continue: expects_continue(headers),
        }
    }

    /// Starts the record of a CONNECT whose target is known but which is refused (leaf mint
    /// budget spent, a blind tunnel's upstream unreachable...).
    pub(crate) fn connect(state: &ProxyState, target: &Target, started: Instant) -> Session {
        let record = PendingRecord::connect(state.audit.clone(), target, started);
        Session {
            record,
            expects_continue: false,
        }
    }

    /// The grant the request goes under: its task and chain are recorded (the self-asserted
    /// `x-sidekey-task` is ignored when a grant is present).
    pub(crate) fn set_grant(&mut self, grant: Option<&Grant>) {
        if grant.is_some() {
            self.record.set_grant(grant);
        }
    }

    fn set_credential(&mut self, route: &RouteRuntime, credential: Option<&Arc<Credential>>) {
        if let Some(name) = &route.credential {
            self.record
                .set_credential(name, route.issuer.as_ref(), credential.map(|c| &c.id.0));
        }
    }

    /// Ends the exchange with a refusal: drains what the agent is still uploading (see
    /// [`drain`]), writes the audit record, and answers `{"error": code, …}`.
    pub(crate) fn refuse<B: AgentBody>(mut self, refusal: Refusal, unread: Option<B>) -> Refused {
        // The record says why before draining: if the agent goes away meanwhile, it still does.
        let response = self.answer(&refusal);
        match unread.filter(|body| !self.expects_continue && !body.is_end_stream()) {
            // Boxed: a body to drain is the rare case, and the request future stays small.
            Some(body) => Either::Left(Box::pin(async move {
                drain(body).await;
                self.record.finish();
                response
            })),
            None => {
                self.record.finish();
                Either::Right(std::future::ready(response))
            }
        }
    }

    /// The answer to `refusal`, noted in the record (which is not written yet).
    fn answer(&mut self, refusal: &Refusal) -> Response<ProxyBody> {
        tracing::debug!(request_id = %self.record.request_id(), code = refusal.code.as_str(), message = %refusal.message, "request refused");
        let response = refusal_response(refusal, self.record.request_id());
        let len = response.body().size_hint().exact().unwrap_or(0);
        self.record.set_refused(refusal.code, len);
        response
    }

    /// Ends the exchange with the upstream's response on its way back: hop-by-hop headers
    /// dropped, any header echoing the injected credential replaced and every echo of it in the
    /// body masked, the body streamed through a meter that writes the audit record when it
    /// ends. A credentialed response the upstream compressed (although sidekey asked for
    /// identity) is decoded first, so that the mask sees what the agent would see; one coded in
    /// a way sidekey cannot decode is refused (`upstream_encoding`) and its body never passed on.
    fn respond(
        mut self,
        response: Response<UpstreamBody>,
        needles: Option<Needles>,
    ) -> Response<ProxyBody> {
        let (mut parts, body) = response.into_parts();
        let mut codings = Vec::new();
        if needles.is_some() && !body.is_end_stream() {
            // Transfer codings are read before the hop-by-hop headers go.
            match decode::applied_codings(&parts.headers) {
                Ok(list) => codings = list,
                Err(e) => {
                    let response =
                        self.answer(&Refusal::new(ErrorCode::UpstreamEncoding, e.to_string()));
                    self.record.finish();
                    return response;
                }
            }
        }
        sidekey_inject::strip_hop_by_hop(&mut parts.headers);
        if let Some(needles) = &needles {
            // What the agent gets is decoded (or had nothing to decode): no coding to undo,
            // and a length that no longer holds.
            if !codings.is_empty()
                || sidekey_inject::has(&parts.headers, &http::header::CONTENT_ENCODING)
            {
                parts.headers.remove(http::header::CONTENT_ENCODING);
                parts.headers.remove(http::header::CONTENT_LENGTH);
            }
            scrub_headers(&mut parts.headers, needles);
        }
        tag_request_id(&mut parts.headers, self.record.request_id());
        self.record.set_status(parts.status.as_u16());
        let record = self.record;
        let body = match needles {
            Some(needles) if !codings.is_empty() => Metered::new(
                Scrubbed::new(decode::decoded(body, &codings), needles),
                record,
            )
            .boxed_unsync(),
            Some(needles) if !needles.is_empty() => {
                Metered::new(Scrubbed::new(body, needles), record).boxed_unsync()
            }
            _ => Metered::new(body, record).boxed_unsync(),
        };
        Response::from_parts(parts, body)
    }
}

impl Session {
    /// Ends the upgrade request of a WebSocket the upstream accepted: the agent is answered
    /// (`101`, or `200` over HTTP/2) and the connection runs on its own task, which writes the
    /// record when it closes.
    fn upgrade(
        mut self,
        state: &ProxyState,
        streams: &Streams,
        ws: websocket::Requested,
        mut response: Response<Incoming>,
        needles: Option<Needles>,
        admission: Admission,
    ) -> Response<ProxyBody> {
        let mut answer = ws.agent_response(&response, needles.as_ref());
        tag_request_id(answer.headers_mut(), self.record.request_id());
        self.record.set_status(answer.status().as_u16());
        let upstream = hyper::upgrade::on(&mut response);
        websocket::spawn(
            state,
            streams,
            websocket::Connection {
                agent: ws.into_upgrade(),
                upstream,
                needles,
                record: self.record,
                admission,
            },
        );
        answer
    }
}

/// Records a request head the HTTP layer could not parse. hyper answers those itself — a bare
/// `400`, `414` or `431` with no body, or nothing for an HTTP/2 preface on an HTTP/1 connection —
/// and closes the connection, so no exchange ever starts; the audit trail still gets one record
/// (`request_invalid`, `"error": "unparsed_request"`), with the target when the connection had
/// one (inside an intercepted tunnel). Other connection errors are not requests and leave none.
/// Returns whether it wrote a record.
pub(crate) fn record_unparsed(
    state: &ProxyState,
    listener: &'static str,
    target: Option<&Target>,
    error: &hyper::Error,
) -> bool {
    if !error.is_parse() {
        return false;
    }
    let status = if error.is_parse_version_h2() {
        None
    } else if error.is_parse_too_large() {
        // hyper tells a long URI from a large head only by its message.
        Some(if error.to_string().contains("URI") {
            414
        } else {
            431
        })
    } else {
        Some(400)
    };
    let request_id = new_request_id();
    let mut record = match target {
        Some(target) => PendingRecord::new(
            state.audit.clone(),
            request_id,
            listener,
            Cow::Borrowed(""),
            target,
            "",
            Instant::now(),
        ),
        None => PendingRecord::with_target_text(
            state.audit.clone(),
            request_id,
            listener,
            Cow::Borrowed(""),
            ("", "".into(), 0),
            "",
            Instant::now(),
        ),
    };
    record.set_refused(ErrorCode::RequestInvalid, 0);
    record.set_status_opt(status);
    record.finish_streamed(0, Some("unparsed_request"));
    true
}

/// Reads and discards the body of a request being refused, up to [`DRAIN_LIMIT`] bytes and
/// [`DRAIN_TIME`], so that a client still uploading gets to read the refusal: an HTTP/2 stream
/// answered before its body ends is reset (RST_STREAM), and some clients (curl 7.88) then
/// report the reset instead of the response; an HTTP/1.1 connection stays usable. A longer or
/// slower body is abandoned (the stream or connection is reset, as before).
async fn drain<B: AgentBody>(mut body: B) {
    if body.is_end_stream() {
        return;
    }
    let read = async {
        let mut seen = 0u64;
        while let Some(Ok(frame)) = body.frame().await {
            if let Some(data) = frame.data_ref() {
                seen += data.len() as u64;
                if seen > DRAIN_LIMIT {
                    break;
                }
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIME, read).await;
}

/// Whether the agent sent `Expect` (`100-continue`): it sends no body before it is told to.
fn expects_continue(headers: &http::HeaderMap) -> bool {
    sidekey_inject::has(headers, &http::header::EXPECT)
}

/// The agent's task ID: visible ASCII, at most 128 bytes; anything else is ignored.
fn task_id(parts: &Parts) -> Option<String> {
    let value = sidekey_inject::first(&parts.headers, &TASK_HEADER)?
        .to_str()
        .ok()?;
    (value.len() <= 128 && !value.is_empty() && value.bytes().all(|b| b.is_ascii_graphic()))
        .then(|| value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_wait_is_counted_only_when_there_was_one() {
        let (output, wait) = with_wait(std::future::ready(7)).await;
        assert_eq!((output, wait), (7, Duration::ZERO));
        // Pending first: counted from that first poll, so at least the sleep.
        let (output, wait) = with_wait(async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            8
        })
        .await;
        assert_eq!(output, 8);
        assert!(wait >= Duration::from_millis(20), "{wait:?}");
    }

    #[test]
    fn request_ids_are_uuid_v7_of_this_millisecond_and_differ() {
        let before = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_millis();
        let ids: Vec<RequestId> = (0..1000).map(|_| new_request_id()).collect();
        let after = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_millis();
        let mut seen = std::collections::HashSet::new();
        for id in &ids {
            let uuid = uuid::Uuid::parse_str(id.as_str()).unwrap();
            assert_eq!(uuid.get_version(), Some(uuid::Version::SortRand), "{id}");
            assert_eq!(uuid.get_variant(), uuid::Variant::RFC4122, "{id}");
            let (secs, nanos) = uuid.get_timestamp().unwrap().to_unix();
            let millis = u128::from(secs) * 1000 + u128::from(nanos / 1_000_000);
            assert!((before..=after).contains(&millis), "{id}: {millis}");
            assert!(seen.insert(*id.as_bytes()), "{id} twice");
        }
    }

    #[test]
    fn an_agents_uri_goes_as_it_is_only_when_it_is_what_rewrite_writes() {
        use sidekey_policy::{CanonicalHost, Scheme};
        let targets: Vec<Target> = [
            (Scheme::Http, "api.example.test", 80),
            (Scheme::Http, "api.example.test", 8080),
            (Scheme::Https, "api.example.test", 443),
            (Scheme::Https, "api.example.test", 8443),
            (Scheme::Http, "127.0.0.1", 80),
            (Scheme::Http, "::1", 8080),
        ]
        .into_iter()
        .map(|(scheme, host, port)| Target {
            scheme,
            host: CanonicalHost::parse(host).unwrap(),
            port,
        })
        .collect();
        let schemes = ["http", "https", "HTTP", "Https"];
        let hosts = [
            "api.example.test",
            "API.example.test",
            "api.example.test.",
            "user@api.example.test",
            "api.example.testx",
            "127.0.0.1",
            "[::1]",
        ];
        let ports = [
            "", ":80", ":443", ":8080", ":8443", ":08080", ":+8080", ":0", ":", ":65536",
        ];
        let paths = ["/", "/a/b?c=d&e", "/%2e%2e/x"];
        let (mut same, mut checked) = (0, 0);
        for scheme in schemes {
            for host in hosts {
                for port in ports {
                    for path in paths {
                        let Ok(uri) = format!("{scheme}://{host}{port}{path}").parse::<Uri>()
                        else {
                            continue;
                        };
                        for target in &targets {
                            checked += 1;
                            if is_upstream_form(&uri, target) {
                                same += 1;
                                let written = upstream_uri(target, path).unwrap();
                                assert_eq!(written.to_string(), uri.to_string(), "{target}");
                            }
                        }
                    }
                }
            }
        }
        // The usual case takes the shortcut: lower-case scheme and host, the port only when it
        // is not the default.
        assert!(same >= 4 * paths.len(), "{same} of {checked}");
        assert!(is_upstream_form(
            &"http://api.example.test:8080/x".parse().unwrap(),
            &targets[1]
        ));
        // An origin-form URI (intercepted, reverse-proxy routes) is always written.
        assert!(!is_upstream_form(&"/x".parse().unwrap(), &targets[0]));
    }

    #[test]
    fn a_retry_head_is_the_head_copy_of_the_agents_head() {
        let mut request = Request::get("http://api.example.test/x?y=1")
            .version(Version::HTTP_10)
            .body(())
            .unwrap();
        let headers = request.headers_mut();
        for (name, value) in [
            ("accept", "a/1"),
            ("x-one", "1"),
            ("accept", "a/2"),
            ("authorization", "Bearer agent"),
            ("x-two", "2"),
            ("x-one", "3"),
        ] {
            headers.append(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        let mut sensitive = HeaderValue::from_static("s");
        sensitive.set_sensitive(true);
        headers.append(HeaderName::from_static("cookie"), sensitive);
        request.extensions_mut().insert(7u8);
        let parts = request.into_parts().0;
        let (copied, rebuilt) = (head_copy(&parts), RetryHead::of(&parts).into_parts());
        assert_eq!(rebuilt.method, copied.method);
        assert_eq!(rebuilt.uri, copied.uri);
        assert_eq!(rebuilt.version, copied.version);
        let pairs = |p: &Parts| {
            p.headers
                .iter()
                .map(|(n, v)| (n.clone(), v.clone(), v.is_sensitive()))
                .collect::<Vec<_>>()
        };
        assert_eq!(pairs(&rebuilt), pairs(&copied));
        assert_eq!(pairs(&rebuilt).len(), 7);
        assert!(rebuilt.extensions.get::<u8>().is_none());
    }
}
