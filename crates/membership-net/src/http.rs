//! The HTTP heartbeat transport, for networks where UDP is blocked.
//!
//! Every membership packet is the body of a `POST /v1/membership/heartbeat` to the member's HTTP address; the
//! answer to it (an ack to a ping) is the response body. [`router`] serves the endpoint; the node mounts it in
//! its own HTTP server.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rampart_membership::wire::{Packet, MAX_PACKET};
use rampart_membership::Channel;
use tokio::sync::mpsc;

use crate::{Membership, StreamIn, STREAM_TIMEOUT};

/// The endpoint every member serves.
pub const HEARTBEAT_PATH: &str = "/v1/membership/heartbeat";

/// The routes of the heartbeat endpoint, to merge into the node's router.
pub fn router(membership: Arc<Membership>) -> Router {
    Router::new()
        .route(HEARTBEAT_PATH, post(heartbeat))
        .layer(DefaultBodyLimit::max(MAX_PACKET + crate::TAG_LEN))
        .with_state(membership)
}

/// A distinct stand-in address per request, so the reply finds its way back to the right response.
fn request_addr() -> SocketAddr {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    SocketAddr::from(([0, 0, 0, 0], (n % 65_535 + 1) as u16))
}

async fn heartbeat(State(membership): State<Arc<Membership>>, body: Bytes) -> Response {
    let Some(packet) = membership.open(&body) else {
        let error =
            serde_json::json!({"error": {"code": "unauthorized", "message": "not tagged with this cluster's key"}});
        return (StatusCode::UNAUTHORIZED, axum::Json(error)).into_response();
    };
    if let Err(e) = Packet::decode(packet) {
        let error = serde_json::json!({"error": {"code": "invalid_request", "message": format!("not a membership packet: {e}")}});
        return (StatusCode::BAD_REQUEST, axum::Json(error)).into_response();
    }
    match membership.deliver_stream(request_addr(), body.to_vec()).await {
        Some(reply) => (StatusCode::OK, [(header::CONTENT_TYPE, "application/octet-stream")], reply).into_response(),
        None => StatusCode::NO_CONTENT.into_response(),
    }
}

/// The sending side: one pooled HTTP/1.1 client per member.
#[derive(Clone, Debug)]
pub struct Client {
    inner: hyper_util::client::legacy::Client<HttpConnector, Full<Bytes>>,
}

impl Default for Client {
    fn default() -> Self {
        Self::new()
    }
}

impl Client {
    pub fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(STREAM_TIMEOUT));
        connector.set_nodelay(true);
        Self { inner: hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build(connector) }
    }

    /// POSTs one packet to `to` and hands the reply, if any, back to the driver as coming from `to`.
    pub(crate) async fn post(self, to: SocketAddr, bytes: Vec<u8>, channel: Channel, back: mpsc::Sender<StreamIn>) {
        let exchange = async {
            let request = Request::post(format!("http://{to}{HEARTBEAT_PATH}"))
                .header(header::CONTENT_TYPE, "application/octet-stream")
                .body(Full::new(Bytes::from(bytes)))
                .map_err(|e| e.to_string())?;
            let response = self.inner.request(request).await.map_err(|e| e.to_string())?;
            if response.status() != StatusCode::OK {
                return Ok(None);
            }
            let limit = MAX_PACKET + crate::TAG_LEN;
            let body = Limited::new(response.into_body(), limit).collect().await.map_err(|e| e.to_string())?;
            Ok::<_, String>(Some(body.to_bytes().to_vec()))
        };
        match tokio::time::timeout(STREAM_TIMEOUT, exchange).await {
            Ok(Ok(Some(reply))) => {
                let _ = back.send(StreamIn { from: to, channel, bytes: reply, reply: None }).await;
            }
            Ok(Ok(None)) => {}
            Ok(Err(e)) => tracing::trace!("heartbeat to {to}: {e}"),
            Err(_) => tracing::trace!("heartbeat to {to}: timed out"),
        }
    }
}
