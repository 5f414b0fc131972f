//! The metrics endpoint: `GET /metrics` (and `HEAD`) over HTTP/1.1, served by hyper, the
//! most used Rust HTTP implementation, rather than a parser of our own. Anything else is
//! 404 (405 for another method on `/metrics`); a scrape whose counters cannot be read is
//! 503 with the reason, never a page of zeros.
//!
//! The endpoint faces whatever can reach its address, so it is bounded: the request head
//! (request line and headers) is at most [`Limits::max_request`] bytes (431 otherwise),
//! a client that sends no complete head within [`Limits::request_timeout`] is dropped,
//! at most [`Limits::max_connections`] connections are served at once (more are closed
//! at once: a scraper needs one), and no connection lives longer than
//! [`Limits::connection_timeout`] (a client that never reads its response). One request
//! per connection, no keep-alive: scrapes are seconds apart.

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header,
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, sync::Semaphore};

use crate::{datapath::paths::PathArgs, observe::metrics};

/// The path served.
const METRICS_PATH: &str = "/metrics";
/// Content type of the plain-text error bodies.
const TEXT: &str = "text/plain; charset=utf-8";

/// What one client may cost the agent.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest request head (request line and headers), in bytes. hyper's minimum is 8 KiB.
    pub max_request: usize,
    /// A client that sends no complete request head within this time is dropped.
    pub request_timeout: Duration,
    /// Connections served at once; more are closed at once.
    pub max_connections: usize,
    /// Longest life of one connection, response included.
    pub connection_timeout: Duration,
}

impl Limits {
    /// The endpoint's limits.
    pub const DEFAULT: Self = Self {
        max_request: 8 * 1024,
        request_timeout: Duration::from_secs(5),
        max_connections: 16,
        connection_timeout: Duration::from_secs(30),
    };
}

/// Serves `/metrics` on `listen` until the task is dropped. Fails only if the address
/// cannot be bound; errors of single connections are logged at debug level.
pub async fn serve(listen: SocketAddr, paths: PathArgs) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen).await.with_context(|| {
        format!("listening for metrics on \"{listen}\" (is another process using the port?)")
    })?;
    log::info!("serving metrics on http://{listen}/metrics");
    serve_on(listener, paths, Limits::DEFAULT).await;
    Ok(())
}

/// Serves `/metrics` on a bound listener with the given limits, forever.
pub async fn serve_on(listener: TcpListener, paths: PathArgs, limits: Limits) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let paths = Arc::new(paths);
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.request_timeout)
        .max_header_size(limits.max_request)
        .max_buf_size(limits.max_request)
        .keep_alive(false);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // E.g. EMFILE: back off instead of spinning.
                log::warn!("accepting a metrics connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            log::debug!("metrics: too many connections, closing the one from {peer}");
            continue;
        };
        let paths = paths.clone();
        let service = service_fn(move |req| respond(req, paths.clone()));
        let connection = http.serve_connection(TokioIo::new(stream), service);
        tokio::spawn(async move {
            match tokio::time::timeout(limits.connection_timeout, connection).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => log::debug!("metrics request from {peer}: {e}"),
                Err(_) => log::debug!("metrics request from {peer}: connection timed out"),
            }
            drop(permit);
        });
    }
}

/// The response to one request.
async fn respond(
    req: Request<Incoming>,
    paths: Arc<PathArgs>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.uri().path() != METRICS_PATH {
        return Ok(text(StatusCode::NOT_FOUND, "Not Found\n".into()));
    }
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        let mut r = text(
            StatusCode::METHOD_NOT_ALLOWED,
            "Method Not Allowed\n".into(),
        );
        r.headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return Ok(r);
    }
    // Reading the pinned maps is blocking syscalls: off the runtime's threads. hyper
    // leaves the body out of a HEAD response itself (Content-Length stays).
    let scrape = tokio::task::spawn_blocking(move || metrics::gather(&paths)).await;
    Ok(match scrape {
        Ok(Ok(body)) => with_type(StatusCode::OK, metrics::CONTENT_TYPE, body),
        Ok(Err(e)) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("reading the counters: {e:#}\n"),
        ),
        Err(e) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("reading the counters failed: {e}\n"),
        ),
    })
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    with_type(status, TEXT, body)
}

fn with_type(
    status: StatusCode,
    content_type: &'static str,
    body: String,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    r
}

#[cfg(test)]
mod tests {
    //! The real server on a real loopback socket, driven by a raw client so every byte
    //! of the exchange is what a scraper would see.

    use tokio::{
        io::{AsyncReadExt as _, AsyncWriteExt as _},
        net::TcpStream,
        task::JoinHandle,
    };

    use super::*;

    /// A server on 127.0.0.1 with no agent state behind it (scrapes are 503).
    struct Server {
        addr: SocketAddr,
        task: JoinHandle<()>,
    }

    impl Server {
        async fn start(limits: Limits) -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("binding");
            let addr = listener.local_addr().expect("address");
            let dir = std::env::temp_dir().join(format!("portcullis-http-{}", addr.port()));
            let paths = PathArgs {
                pin_dir: Some(dir.join("pins")),
                state_dir: dir.join("state"),
            };
            let task = tokio::spawn(serve_on(listener, paths, limits));
            Self { addr, task }
        }

        /// Sends `request` and reads until the server closes. A reset counts as the
        /// server closing (it may reset a connection whose request it did not read).
        async fn exchange(&self, request: &[u8]) -> String {
            let mut s = TcpStream::connect(self.addr).await.expect("connecting");
            let _ = s.write_all(request).await;
            read_to_close(&mut s).await
        }
    }

    impl Drop for Server {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    /// Everything the server sends until it closes; panics if it never does.
    async fn read_to_close(s: &mut TcpStream) -> String {
        let mut out = Vec::new();
        // A guard against a hanging test, not a timing assertion.
        let read = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut out));
        let _ = read.await.expect("the server never closed the connection");
        String::from_utf8_lossy(&out).into_owned()
    }

    fn get(path: &str) -> Vec<u8> {
        format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes()
    }

    #[tokio::test]
    async fn routes_and_unreadable_counters() {
        let server = Server::start(Limits::DEFAULT).await;
        let r = server.exchange(&get("/")).await;
        assert!(r.starts_with("HTTP/1.1 404 Not Found\r\n"), "{r}");
        assert!(
            r.contains("connection: close\r\n"),
            "one request per connection: {r}"
        );

        // No agent state: the scrape fails loudly rather than serving zeros.
        for path in ["/metrics", "/metrics?x=1"] {
            let r = server.exchange(&get(path)).await;
            assert!(
                r.starts_with("HTTP/1.1 503 Service Unavailable\r\n") && r.contains("state.json"),
                "{path}: {r}"
            );
        }

        let r = server
            .exchange(b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
            .await;
        assert!(r.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"), "{r}");
        assert!(r.contains("allow: GET, HEAD\r\n"), "{r}");

        let get = server.exchange(&get("/metrics")).await;
        let head = server
            .exchange(b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .await;
        let (get_head, get_body) = get.split_once("\r\n\r\n").expect("a response head");
        let length = format!("content-length: {}\r\n", get_body.len());
        assert!(
            head.starts_with("HTTP/1.1 503 ") && head.ends_with("\r\n\r\n"),
            "HEAD has the status and no body: {head:?}"
        );
        assert!(
            get_head.contains(&length) && head.contains(&length),
            "HEAD announces the GET body's length: {head:?}"
        );
    }

    #[tokio::test]
    async fn oversized_request_head_is_refused() {
        let server = Server::start(Limits::DEFAULT).await;
        let big = format!(
            "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n",
            "a".repeat(Limits::DEFAULT.max_request)
        );
        let r = server.exchange(big.as_bytes()).await;
        // 431, or a reset when the server closed with the rest of the head unread.
        assert!(
            r.is_empty() || r.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
            "an oversized head must not be served: {r}"
        );
        // Just under the limit is served.
        let fits = format!(
            "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n",
            "a".repeat(Limits::DEFAULT.max_request - 100)
        );
        let r = server.exchange(fits.as_bytes()).await;
        assert!(r.starts_with("HTTP/1.1 503 "), "{r}");
    }

    #[tokio::test]
    async fn silent_clients_are_dropped_after_the_timeout() {
        let limits = Limits {
            request_timeout: Duration::from_millis(200),
            ..Limits::DEFAULT
        };
        let server = Server::start(limits).await;
        for partial in [&b""[..], b"GET /metrics HTTP/1.1\r\nHost: x\r\n"] {
            let mut s = TcpStream::connect(server.addr).await.expect("connecting");
            s.write_all(partial).await.expect("sending");
            let r = read_to_close(&mut s).await;
            assert!(
                !r.contains(" 200 ") && !r.contains(" 503 "),
                "an incomplete request must not be served: {r}"
            );
        }
        let r = server.exchange(&get("/metrics")).await;
        assert!(r.starts_with("HTTP/1.1 503 "), "still serving: {r}");
    }

    #[tokio::test]
    async fn connections_over_the_limit_are_closed() {
        let limits = Limits {
            request_timeout: Duration::from_secs(600),
            connection_timeout: Duration::from_secs(600),
            ..Limits::DEFAULT
        };
        let server = Server::start(limits).await;
        // Each holds a slot: a request head that never completes.
        let mut idle = Vec::new();
        for _ in 0..limits.max_connections {
            let mut s = TcpStream::connect(server.addr).await.expect("connecting");
            s.write_all(b"GET /metrics HTTP/1.1\r\n")
                .await
                .expect("sending");
            idle.push(s);
        }
        // The server accepts in order, so this one finds every slot taken.
        let r = server.exchange(&get("/metrics")).await;
        assert_eq!(r, "", "connection over the limit must be closed unanswered");

        // A slot frees when its client leaves; the server then answers again.
        drop(idle.pop());
        let mut answered = String::new();
        for _ in 0..200 {
            answered = server.exchange(&get("/metrics")).await;
            if !answered.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(answered.starts_with("HTTP/1.1 503 "), "{answered}");
    }
}
