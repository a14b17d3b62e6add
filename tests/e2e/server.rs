//! An HTTP server inside the test process that serves deterministic files
//! and injects faults on request: statuses (with Retry-After) a number of
//! times, bodies cut after N bytes, stalls, throttling, ignored Range,
//! redirects, required headers; and faults of the whole host (`host.rs`):
//! a rate limit, a capacity, an outage. It logs every request and tracks
//! how many were in flight at once. Each server runs its own runtime on a
//! thread, so tests stay plain `#[test]` functions that run the built
//! binary.
//!
//! A handler that panics only drops its connection, which `fetch` retries,
//! so the test could pass: the server records the panic and fails the test
//! when it is dropped.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame};
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::service::service_fn;
use hyper::{HeaderMap, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::time::Sleep;

// The path spelled out: rustfmt looks for a plain `mod host;` beside this file.
#[path = "server/host.rs"]
pub mod host;
#[path = "server/refresh.rs"]
pub mod refresh;
#[path = "server/tls.rs"]
pub mod tls;

/// Deterministic pseudo-random content: same seed, same bytes.
pub fn content(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// One file the server serves, and what it does wrong.
#[derive(Debug, Clone, Default)]
pub struct Route {
    pub body: Bytes,
    pub etag: Option<String>,
    pub last_modified: Option<String>,
    /// Answer these statuses first, one per request: (status, Retry-After).
    pub statuses: VecDeque<(u16, Option<String>)>,
    /// Cut the body of successive responses after this many bytes of it.
    pub cuts: VecDeque<usize>,
    pub ignore_range: bool,
    /// Wait this long before answering.
    pub delay: Duration,
    /// Stall successive responses this long after this many bytes of the body.
    pub stalls: VecDeque<(usize, Duration)>,
    /// Send the body in chunks of this size with this pause between them.
    pub throttle: Option<(usize, Duration)>,
    /// Answer with a 302 to this URL.
    pub redirect: Option<String>,
    /// Answer 403 unless this header has this value.
    pub require: Option<(String, String)>,
    /// Claim this Content-Length instead of the real one.
    pub content_length: Option<u64>,
    /// No Content-Length: chunked transfer encoding.
    pub chunked: bool,
    pub headers: Vec<(String, String)>,
    /// After one response, serve this route instead (the file changed).
    pub then: Option<Box<Route>>,
    /// Answer conditional requests (`refresh.rs`); otherwise ignore them.
    pub conditional: bool,
}

impl Route {
    pub fn new(body: impl Into<Bytes>) -> Route {
        let body = body.into();
        let etag = format!("\"{:x}-{}\"", body.len(), body.iter().take(64).map(|&b| b as u64).sum::<u64>());
        Route { body, etag: Some(etag), ..Route::default() }
    }
}

/// What the server saw of one request.
#[derive(Debug, Clone)]
pub struct Logged {
    pub path: String,
    /// HTTP/1.1, or HTTP/2 on a TLS server that offers it.
    pub version: hyper::Version,
    pub headers: HeaderMap,
    pub status: u16,
    /// The body was to be cut after this many bytes.
    pub cut: Option<usize>,
    /// The body was to stall.
    pub stalled: bool,
    /// When the response started.
    pub at: std::time::Instant,
    /// Body bytes sent so far in this response.
    pub sent: Arc<AtomicUsize>,
    /// What each response logged before this one had sent of its body when
    /// this one started: (path, bytes), in the order they were logged. It
    /// tells what was done when a request came, whatever the clock.
    pub earlier_sent: Vec<(String, usize)>,
    /// Requests in flight when this one came, itself included.
    pub in_flight: usize,
}

impl Logged {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Body bytes sent in this response.
    pub fn sent(&self) -> usize {
        self.sent.load(Ordering::SeqCst)
    }

    /// The `Range` asked for: first byte and last, if any.
    pub fn range(&self) -> Option<(u64, Option<u64>)> {
        parse_range(self.header("range")?)
    }
}

#[derive(Debug, Default)]
struct Shared {
    routes: Mutex<HashMap<String, Route>>,
    log: Mutex<Vec<Logged>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    body_bytes: AtomicUsize,
    /// When each body frame was sent, and its length.
    sent_at: Mutex<Vec<(std::time::Instant, usize)>>,
    /// Connections accepted, TLS handshakes included.
    connections: AtomicUsize,
    /// Random faults for every route: (percent cut, percent 503, rng state).
    chaos: Mutex<Option<(u32, u32, u64)>>,
    /// What each handler or body that panicked said.
    panics: Mutex<Vec<String>>,
    host: Mutex<host::HostFaults>,
    /// Requests let through [`Server::capacity`] and not done yet, and
    /// the most at once.
    at_work: AtomicUsize,
    max_at_work: AtomicUsize,
    /// Told when an outage is due ([`Server::outage`]).
    outage_begins: tokio::sync::Notify,
    /// Each outage: began, ended, connections dropped.
    outages: Mutex<Vec<(std::time::Instant, Option<std::time::Instant>, usize)>>,
}

impl Shared {
    fn record_panic(&self, error: tokio::task::JoinError) {
        let Ok(panic) = error.try_into_panic() else { return };
        let message = match (panic.downcast_ref::<&str>(), panic.downcast_ref::<String>()) {
            (Some(text), _) => (*text).to_owned(),
            (_, Some(text)) => text.clone(),
            _ => "a panic without a message".to_owned(),
        };
        self.panics.lock().unwrap_or_else(PoisonError::into_inner).push(message);
    }
}

#[derive(Debug)]
pub struct Server {
    pub addr: SocketAddr,
    scheme: &'static str,
    shared: Arc<Shared>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Server {
    pub fn start() -> Server {
        Server::start_on("127.0.0.1".parse().unwrap())
    }

    pub fn start_on(ip: IpAddr) -> Server {
        Server::start_with(ip, None, None)
    }

    /// A server whose sockets send from a buffer of about `bytes` (the
    /// kernel doubles it), not one that grows to megabytes: what it has
    /// sent is then close to what the client has read.
    pub fn start_with_send_buffer(bytes: u32) -> Server {
        Server::start_with("127.0.0.1".parse().unwrap(), None, Some(bytes))
    }

    /// An HTTPS server with the self-signed certificate in `tls/`.
    pub fn start_tls() -> Server {
        Server::start_tls_with("cert.pem", "key.pem")
    }

    /// An HTTPS server with this certificate and key of `tls/`.
    pub fn start_tls_with(cert: &str, key: &str) -> Server {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/tls");
        let certs = vec![CertificateDer::from_pem_file(format!("{dir}/{cert}")).unwrap()];
        let key = PrivateKeyDer::from_pem_file(format!("{dir}/{key}")).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let mut server = Server::start_with("127.0.0.1".parse().unwrap(), Some(acceptor), None);
        server.scheme = "https";
        server
    }

    fn start_with(ip: IpAddr, tls: Option<tokio_rustls::TlsAcceptor>, send_buffer: Option<u32>) -> Server {
        let shared = Arc::new(Shared::default());
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let state = shared.clone();
        std::thread::spawn(move || {
            let rt =
                tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            rt.block_on(async move {
                let socket = match ip {
                    IpAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
                    IpAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
                }
                .unwrap();
                socket.set_reuseaddr(true).unwrap();
                // Accepted sockets inherit it.
                if let Some(bytes) = send_buffer {
                    socket.set_send_buffer_size(bytes).unwrap();
                }
                socket.bind((ip, 0).into()).unwrap();
                let mut listener = socket.listen(1024).unwrap();
                let addr = listener.local_addr().unwrap();
                addr_tx.send(addr).unwrap();
                let accept = async {
                    // Connections open, to drop in an outage.
                    let mut open: Vec<tokio::task::AbortHandle> = Vec::new();
                    loop {
                        let stream = tokio::select! {
                            accepted = listener.accept() => match accepted {
                                Ok((stream, _)) => stream,
                                Err(_) => continue,
                            },
                            () = state.outage_begins.notified() => {
                                listener = host::outage(&state, listener, &mut open).await;
                                continue;
                            }
                        };
                        state.connections.fetch_add(1, Ordering::SeqCst);
                        let tls = tls.clone();
                        let serving = state.clone();
                        let connection = tokio::spawn(async move {
                            match tls {
                                None => serve(serving, stream).await,
                                Some(tls) => {
                                    if let Ok(stream) = tls.accept(stream).await {
                                        if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
                                            tls::serve_h2(serving, stream).await;
                                        } else {
                                            serve(serving, stream).await;
                                        }
                                    }
                                }
                            }
                        });
                        open.retain(|c| !c.is_finished());
                        open.push(connection.abort_handle());
                        // A body that panics ends the connection's task.
                        let state = state.clone();
                        tokio::spawn(async move {
                            if let Err(error) = connection.await {
                                state.record_panic(error);
                            }
                        });
                    }
                };
                tokio::select! {
                    () = accept => {}
                    _ = stop_rx => {}
                }
            });
            // Dropping the runtime ends connections still stalled.
            rt.shutdown_background();
        });
        let addr = addr_rx.recv_timeout(Duration::from_secs(10)).expect("server did not start");
        Server { addr, scheme: "http", shared, _stop: stop_tx }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}://{}{path}", self.scheme, self.addr)
    }

    /// Serve `route` at `path` (replacing what was there).
    pub fn route(&self, path: &str, route: Route) {
        self.shared.routes.lock().unwrap().insert(path.to_owned(), route);
    }

    /// Serve deterministic bytes at `path`; returns them.
    pub fn file(&self, path: &str, seed: u64, len: usize) -> Vec<u8> {
        let body = content(seed, len);
        self.route(path, Route::new(body.clone()));
        body
    }

    /// From now on, cut `cut_pct`% of bodies at a random point and answer
    /// 503 to `status_pct`% of requests, drawn from `seed`.
    pub fn chaos(&self, cut_pct: u32, status_pct: u32, seed: u64) {
        *self.shared.chaos.lock().unwrap() = Some((cut_pct, status_pct, seed | 1));
    }

    pub fn log(&self) -> Vec<Logged> {
        self.shared.log.lock().unwrap().clone()
    }

    pub fn requests_to(&self, path: &str) -> Vec<Logged> {
        self.log().into_iter().filter(|l| l.path == path).collect()
    }

    pub fn max_in_flight(&self) -> usize {
        self.shared.max_in_flight.load(Ordering::SeqCst)
    }

    /// Connections accepted, whether or not a request came on them.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// When each body frame of every response was handed to the
    /// connection, and its length, in order.
    pub fn sent_at(&self) -> Vec<(std::time::Instant, usize)> {
        self.shared.sent_at.lock().unwrap().clone()
    }

    /// Body bytes the server has sent, over all requests.
    pub fn body_bytes(&self) -> usize {
        self.shared.body_bytes.load(Ordering::SeqCst)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let panics = self.shared.panics.lock().unwrap_or_else(PoisonError::into_inner);
        if !panics.is_empty() && !std::thread::panicking() {
            panic!("the test server's handlers panicked: {panics:?}");
        }
    }
}

async fn serve<S>(state: Arc<Shared>, stream: S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = recorded(state);
    let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
}

/// The service of every connection: each request handled on a task of its
/// own, so that a panic is recorded before the connection drops and
/// `fetch` tries again.
fn recorded(
    state: Arc<Shared>,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<BoxBody>,
    Error = std::io::Error,
    Future = impl Future<Output = Result<Response<BoxBody>, std::io::Error>> + Send,
> + Clone {
    service_fn(move |req| {
        let state = state.clone();
        let handler = tokio::spawn(handle(state.clone(), req));
        async move {
            handler.await.map_err(|error| {
                state.record_panic(error);
                std::io::Error::other("the handler panicked")
            })
        }
    })
}

type BoxBody = Pin<Box<dyn Body<Data = Bytes, Error = std::io::Error> + Send>>;

async fn handle(state: Arc<Shared>, req: Request<Incoming>) -> Response<BoxBody> {
    let mut guard = InFlight::enter(&state);
    let in_flight = guard.entered_with;
    let path = req.uri().path().to_owned();
    let host_status = state.host.lock().unwrap().verdict(&state, &mut guard);
    let route = if host_status.is_some() {
        None
    } else {
        let mut routes = state.routes.lock().unwrap();
        match routes.get_mut(&path) {
            None => None,
            Some(route) => {
                let mut status = route.statuses.pop_front();
                // Body faults apply to responses that have a body to fault.
                let mut cut = if status.is_none() { route.cuts.pop_front() } else { None };
                let stall = if status.is_none() { route.stalls.pop_front() } else { None };
                if let Some((cut_pct, status_pct, rng)) = state.chaos.lock().unwrap().as_mut() {
                    let mut roll = || {
                        *rng ^= *rng << 13;
                        *rng ^= *rng >> 7;
                        *rng ^= *rng << 17;
                        *rng
                    };
                    if roll() % 100 < u64::from(*status_pct) {
                        status = Some((503, None));
                    } else if roll() % 100 < u64::from(*cut_pct) {
                        cut = Some((roll() % route.body.len().max(1) as u64) as usize);
                    }
                }
                let served = route.clone();
                if let Some(next) = route.then.take() {
                    *route = *next;
                }
                Some((served, status, cut, stall))
            }
        }
    };
    let (mut logged_cut, mut stalled) = (None, false);
    let sent = Arc::new(AtomicUsize::new(0));
    let (response, status) = match (route, host_status) {
        (_, Some(status)) => {
            let no_route = Route::default();
            let faults = Faults { status: Some(status), cut: None, stall: None };
            respond(&state, &no_route, req.headers(), faults, guard, sent.clone())
        }
        (None, None) => plain(StatusCode::NOT_FOUND, "not found"),
        (Some((route, status, cut, stall)), None) => {
            logged_cut = cut;
            stalled = stall.is_some();
            if !route.delay.is_zero() {
                tokio::time::sleep(route.delay).await;
            }
            respond(&state, &route, req.headers(), Faults { status, cut, stall }, guard, sent.clone())
        }
    };
    let mut log = state.log.lock().unwrap();
    let earlier_sent = log.iter().map(|l| (l.path.clone(), l.sent())).collect();
    log.push(Logged {
        path,
        version: req.version(),
        headers: req.headers().clone(),
        status,
        cut: logged_cut,
        stalled,
        at: std::time::Instant::now(),
        sent,
        earlier_sent,
        in_flight,
    });
    drop(log);
    response
}

fn plain(status: StatusCode, text: &'static str) -> (Response<BoxBody>, u16) {
    let body = FaultBody::new(Bytes::from_static(text.as_bytes()), None);
    let mut response = Response::new(Box::pin(body) as BoxBody);
    *response.status_mut() = status;
    (response, status.as_u16())
}

/// The faults drawn for one request.
struct Faults {
    status: Option<(u16, Option<String>)>,
    cut: Option<usize>,
    stall: Option<(usize, Duration)>,
}

fn respond(
    state: &Arc<Shared>,
    route: &Route,
    headers: &HeaderMap,
    faults: Faults,
    guard: InFlight,
    sent: Arc<AtomicUsize>,
) -> (Response<BoxBody>, u16) {
    if let Some((code, retry_after)) = faults.status {
        let (mut response, code) = plain(StatusCode::from_u16(code).unwrap(), "injected status");
        if let Some(value) = retry_after {
            response.headers_mut().insert("retry-after", HeaderValue::from_str(&value).unwrap());
        }
        return (response, code);
    }
    if let Some((name, value)) = &route.require
        && headers.get(name.as_str()).and_then(|v| v.to_str().ok()) != Some(value.as_str())
    {
        return plain(StatusCode::FORBIDDEN, "missing required header");
    }
    if let Some(response) = refresh::not_modified(route, headers) {
        return (response, 304);
    }
    if let Some(location) = &route.redirect {
        let (mut response, _) = plain(StatusCode::FOUND, "moved");
        response.headers_mut().insert("location", HeaderValue::from_str(location).unwrap());
        return (response, 302);
    }

    let len = route.body.len() as u64;
    let mut start = 0u64;
    let mut status = StatusCode::OK;
    let range = headers.get("range").and_then(|v| v.to_str().ok()).and_then(parse_range);
    let if_range_ok = match headers.get("if-range").and_then(|v| v.to_str().ok()) {
        None => true,
        Some(v) => Some(v) == route.etag.as_deref() || Some(v) == route.last_modified.as_deref(),
    };
    let mut end = len;
    if let Some((from, to)) = range.filter(|_| !route.ignore_range && if_range_ok) {
        if from >= len {
            let (mut response, _) = plain(StatusCode::RANGE_NOT_SATISFIABLE, "");
            response
                .headers_mut()
                .insert("content-range", HeaderValue::from_str(&format!("bytes */{len}")).unwrap());
            return (response, 416);
        }
        start = from;
        end = to.map_or(len, |to| (to + 1).min(len));
        status = StatusCode::PARTIAL_CONTENT;
    }
    let body_bytes = route.body.slice(start as usize..end as usize);
    let mut body = FaultBody::new(body_bytes, Some((state.clone(), guard)));
    body.sent = sent;
    body.cut_at = faults.cut;
    body.stall = faults.stall;
    if let Some((chunk, pause)) = route.throttle {
        body.chunk = chunk;
        body.pause = pause;
    }
    let mut response = Response::new(Box::pin(body) as BoxBody);
    *response.status_mut() = status;
    let h = response.headers_mut();
    h.insert("accept-ranges", HeaderValue::from_static("bytes"));
    if let Some(etag) = &route.etag {
        h.insert("etag", HeaderValue::from_str(etag).unwrap());
    }
    if let Some(lm) = &route.last_modified {
        h.insert("last-modified", HeaderValue::from_str(lm).unwrap());
    }
    if !route.chunked {
        let claimed = route.content_length.unwrap_or(len) - start - (len - end);
        h.insert("content-length", HeaderValue::from(claimed));
    }
    if status == StatusCode::PARTIAL_CONTENT {
        h.insert(
            "content-range",
            HeaderValue::from_str(&format!("bytes {start}-{}/{len}", end - 1)).unwrap(),
        );
    }
    for (name, value) in &route.headers {
        h.insert(
            hyper::header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    (response, status.as_u16())
}

/// `bytes=N-` or `bytes=N-M`: the first byte and the last, if given.
pub fn parse_range(value: &str) -> Option<(u64, Option<u64>)> {
    let (from, to) = value.strip_prefix("bytes=")?.split_once('-')?;
    let to = match to.trim() {
        "" => None,
        to => Some(to.parse().ok()?),
    };
    Some((from.trim().parse().ok()?, to))
}

/// Counts a request as in flight until its response body is done, and as
/// at work too once a capacity let it through.
#[derive(Debug)]
struct InFlight {
    state: Arc<Shared>,
    /// Requests in flight when it came, itself included.
    entered_with: usize,
    at_work: bool,
}

impl InFlight {
    fn enter(state: &Arc<Shared>) -> InFlight {
        let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        state.max_in_flight.fetch_max(now, Ordering::SeqCst);
        InFlight { state: state.clone(), entered_with: now, at_work: false }
    }

    fn work(&mut self) {
        let now = self.state.at_work.fetch_add(1, Ordering::SeqCst) + 1;
        self.state.max_at_work.fetch_max(now, Ordering::SeqCst);
        self.at_work = true;
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.state.in_flight.fetch_sub(1, Ordering::SeqCst);
        if self.at_work {
            self.state.at_work.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// A body that can be cut, stalled or throttled.
struct FaultBody {
    data: Bytes,
    pos: usize,
    chunk: usize,
    pause: Duration,
    cut_at: Option<usize>,
    cut_flushed: bool,
    stall: Option<(usize, Duration)>,
    sleep: Option<Pin<Box<Sleep>>>,
    counted: Option<(Arc<Shared>, InFlight)>,
    /// This response's share of [`Shared::body_bytes`].
    sent: Arc<AtomicUsize>,
}

impl FaultBody {
    fn new(data: Bytes, counted: Option<(Arc<Shared>, InFlight)>) -> FaultBody {
        FaultBody {
            data,
            pos: 0,
            chunk: 64 * 1024,
            pause: Duration::ZERO,
            cut_at: None,
            cut_flushed: false,
            stall: None,
            sleep: None,
            counted,
            sent: Arc::default(),
        }
    }
}

impl Body for FaultBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let this = &mut *self;
        if let Some(sleep) = &mut this.sleep {
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            this.sleep = None;
        }
        if this.cut_at == Some(this.pos) {
            if !this.cut_flushed && this.pos > 0 {
                // Let hyper flush what was sent before the connection drops;
                // otherwise the client may never see the headers.
                this.cut_flushed = true;
                this.sleep = Some(Box::pin(tokio::time::sleep(Duration::from_millis(20))));
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            this.counted = None;
            return Poll::Ready(Some(Err(std::io::Error::other("injected cut"))));
        }
        if let Some((at, wait)) = this.stall
            && at == this.pos
        {
            this.stall = None;
            this.sleep = Some(Box::pin(tokio::time::sleep(wait)));
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        if this.pos >= this.data.len() {
            this.counted = None;
            return Poll::Ready(None);
        }
        let mut end = (this.pos + this.chunk).min(this.data.len());
        if let Some(cut) = this.cut_at.filter(|&c| c > this.pos) {
            end = end.min(cut);
        }
        if let Some((at, _)) = this.stall.filter(|&(at, _)| at > this.pos) {
            end = end.min(at);
        }
        let frame = this.data.slice(this.pos..end);
        if let Some((state, _)) = &this.counted {
            state.body_bytes.fetch_add(frame.len(), Ordering::SeqCst);
            state.sent_at.lock().unwrap().push((std::time::Instant::now(), frame.len()));
            this.sent.fetch_add(frame.len(), Ordering::SeqCst);
        }
        this.pos = end;
        if !this.pause.is_zero() && this.pos < this.data.len() {
            this.sleep = Some(Box::pin(tokio::time::sleep(this.pause)));
        }
        Poll::Ready(Some(Ok(Frame::data(frame))))
    }
}
