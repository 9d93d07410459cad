//! `[metrics] listen = "127.0.0.1:9464"`: the metrics over HTTP (`GET /metrics`, the
//! OpenMetrics text format Prometheus scrapes), and `GET /healthz` (200 while the audit log
//! can be written, else 503). Plain HTTP: bind it to loopback or a management network;
//! nothing secret is in it.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;

use crate::guard::Guard;
use crate::util::metrics::{metrics, TokenLabels};

#[derive(Debug, Clone, Deserialize)]
// Unknown keys are reported, all at once, by the config parser (serde_ignored).
pub struct MetricsConfig {
    /// `host:port` of the metrics endpoint.
    pub listen: SocketAddr,
}

/// Binds now (a port in use fails the start), then serves until `stop`.
pub async fn serve(
    cfg: &MetricsConfig,
    guard: Guard,
    stop: impl Future<Output = ()>,
) -> Result<impl Future<Output = ()>, String> {
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| format!("[metrics] cannot listen on {}: {e}", cfg.listen))?;
    tracing::info!("metrics on http://{}/metrics", cfg.listen);
    Ok(async move {
        tokio::pin!(stop);
        loop {
            let conn = tokio::select! {
                c = listener.accept() => c,
                () = &mut stop => return,
            };
            let Ok((stream, _)) = conn else { continue };
            let guard = guard.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| answer(req, guard.clone()));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}

async fn answer(req: Request<Incoming>, guard: Guard) -> Result<Response<Full<Bytes>>, Infallible> {
    let reply = |status: StatusCode, kind: &'static str, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        if let Ok(v) = hyper::header::HeaderValue::from_str(kind) {
            r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
        }
        Ok(r)
    };
    if req.method() != Method::GET {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        );
    }
    match req.uri().path() {
        "/metrics" => {
            token_states(&guard).await;
            reply(
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                metrics().encode(),
            )
        }
        "/healthz" => match guard.audit().state().error {
            None => reply(StatusCode::OK, "text/plain", "ok\n".into()),
            Some(e) => reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("audit log: {e}\n"),
            ),
        },
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

/// The tokens' state now (a trip to each token's thread, as `dct status` makes).
async fn token_states(guard: &Guard) {
    let m = metrics();
    for t in guard.keys().tokens() {
        let labels = TokenLabels {
            token: t.label.clone(),
        };
        let info = t.run(|b| Ok(b.info())).await.ok();
        let present = info.as_ref().is_some_and(|i| i.present);
        let unlocked = info.as_ref().is_some_and(|i| i.unlocked);
        m.token_present
            .get_or_create(&labels)
            .set(i64::from(present));
        m.token_unlocked
            .get_or_create(&labels)
            .set(i64::from(unlocked));
        match info.and_then(|i| i.pin.tries_left) {
            Some(n) => {
                m.token_pin_tries_left
                    .get_or_create(&labels)
                    .set(i64::from(n));
            }
            None => {
                m.token_pin_tries_left.remove(&labels);
            }
        }
    }
}
