//! A client for Rampart's HTTP API.
//!
//! It spreads requests over the nodes it was given (any node serves any request) and retries what is safe to
//! retry, with bounded exponential backoff, on the next node:
//! - a `503 unavailable` (nothing was applied) and a failed connection: always;
//! - a `504 unknown_outcome`, a timeout or a connection lost mid-request (the write may have been applied):
//!   only for idempotent requests. Placing an order is idempotent by its `(user_id, idempotency_key)`; paying
//!   and cancelling are idempotent by nature; restocking is not, so its unknown outcome is returned as
//!   [`Error::Unknown`] for the caller to resolve by reading the product.
//!
//! Every other answer (success, `4xx`, `500`) is final and returned as is.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// How a request is retried.
#[derive(Clone, Debug)]
pub struct Retry {
    /// The most attempts per request (at least 1).
    pub attempts: u32,
    pub first_backoff: Duration,
    pub max_backoff: Duration,
    /// How long one attempt may take.
    pub attempt_timeout: Duration,
}

impl Default for Retry {
    fn default() -> Retry {
        Retry {
            attempts: 40,
            first_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(250),
            attempt_timeout: Duration::from_secs(5),
        }
    }
}

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The cluster answered, and the answer is final (a `4xx` or `500`): nothing to retry.
    #[error("{status} {code}: {message}")]
    Api { status: u16, code: String, message: String },
    /// Every attempt was refused before anything was applied, or failed in a way that is safe to retry.
    #[error("no node served the request after {attempts} attempts; last: {last}")]
    Exhausted { attempts: u32, last: String },
    /// A non-idempotent write may or may not have been applied.
    #[error("the write may or may not have been applied: {0}")]
    Unknown(String),
    /// The answer was not what the API documents.
    #[error("unexpected answer: {0}")]
    Decode(String),
    /// The request could not be built (a bad node address).
    #[error("bad request: {0}")]
    Request(String),
}

impl Error {
    /// The API's error code (`out_of_stock`, `unknown_order`, ...), for a final answer.
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Api { code, .. } => Some(code),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewProduct {
    pub name: String,
    pub price_cents: u64,
    pub stock: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_per_user: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Product {
    pub sku: String,
    pub name: String,
    pub price_cents: u64,
    pub max_per_user: Option<u32>,
    pub available: u64,
    pub reserved: u64,
    pub sold: u64,
    /// The partition that holds the product (and its orders).
    pub partition: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    pub sku: String,
    pub qty: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewOrder {
    pub idempotency_key: String,
    pub user_id: String,
    pub items: Vec<Item>,
}

/// A node to add to the cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewNode {
    pub id: String,
    /// Its Raft and internal RPC address (TCP; membership over UDP on the same port).
    pub peer: String,
    /// Its HTTP API address.
    pub http: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct LineItem {
    pub sku: String,
    pub qty: u32,
    pub price_cents: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Order {
    pub order_id: String,
    pub status: String,
    pub items: Vec<LineItem>,
    pub total_cents: u64,
    pub user_id: String,
    pub idempotency_key: String,
    pub placed_ms: u64,
    pub pay_deadline_ms: u64,
    pub closed_ms: Option<u64>,
}

/// A placed order, and whether this call created it (`false`: an earlier attempt with the same key did).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placed {
    pub order: Order,
    pub created: bool,
}

#[derive(Debug, Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Debug, Deserialize)]
struct ErrorDetail {
    code: String,
    message: String,
}

/// Whether a request may be sent again after an answer that leaves its outcome unknown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Idempotent {
    Yes,
    No,
}

/// A client of one cluster. Cheap to clone; clones share connections.
#[derive(Clone, Debug)]
pub struct Client {
    nodes: std::sync::Arc<Vec<String>>,
    next: std::sync::Arc<AtomicUsize>,
    http: hyper_util::client::legacy::Client<HttpConnector, Full<Bytes>>,
    retry: Retry,
}

impl Client {
    /// A client of the nodes at `addrs` (`127.0.0.1:7101` or `http://127.0.0.1:7101`).
    pub fn new(addrs: impl IntoIterator<Item = impl AsRef<str>>, retry: Retry) -> Result<Client, Error> {
        let nodes: Vec<String> = addrs
            .into_iter()
            .map(|a| {
                let a = a.as_ref().trim().trim_end_matches('/');
                if a.starts_with("http://") {
                    a.to_owned()
                } else {
                    format!("http://{a}")
                }
            })
            .collect();
        if nodes.is_empty() || retry.attempts == 0 {
            return Err(Error::Request("give at least one node and one attempt".into()));
        }
        for n in &nodes {
            n.parse::<http::Uri>().map_err(|e| Error::Request(format!("{n}: {e}")))?;
        }
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(retry.attempt_timeout));
        let http = hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build(connector);
        Ok(Client { nodes: std::sync::Arc::new(nodes), next: Default::default(), http, retry })
    }

    pub fn nodes(&self) -> &[String] {
        &self.nodes
    }

    /// Sends one request, retrying as the module doc says, and returns the final status and body.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
        idempotent: Idempotent,
    ) -> Result<(StatusCode, Bytes), Error> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut backoff = self.retry.first_backoff;
        let mut last = String::new();
        for attempt in 0..self.retry.attempts {
            if attempt > 0 {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(self.retry.max_backoff);
            }
            let node = &self.nodes[(start + attempt as usize) % self.nodes.len()];
            let request = Request::builder()
                .method(method.clone())
                .uri(format!("{node}{path}"))
                .header(header::CONTENT_TYPE, "application/json")
                .body(Full::new(body.clone().unwrap_or_default()))
                .map_err(|e| Error::Request(e.to_string()))?;
            let answer = tokio::time::timeout(self.retry.attempt_timeout, async {
                let response = self.http.request(request).await?;
                let status = response.status();
                let bytes = response.into_body().collect().await?.to_bytes();
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>((status, bytes))
            })
            .await;
            let unknown = match answer {
                Ok(Ok((StatusCode::SERVICE_UNAVAILABLE, bytes))) => {
                    last = format!("{node}: 503 {}", String::from_utf8_lossy(&bytes));
                    false
                }
                Ok(Ok((StatusCode::GATEWAY_TIMEOUT, bytes))) => {
                    last = format!("{node}: 504 {}", String::from_utf8_lossy(&bytes));
                    true
                }
                Ok(Ok(final_answer)) => return Ok(final_answer),
                Ok(Err(e)) => {
                    let connect = e.downcast_ref::<hyper_util::client::legacy::Error>().is_some_and(|e| e.is_connect());
                    last = format!("{node}: {e}");
                    !connect
                }
                Err(_) => {
                    last = format!("{node}: no answer within {:?}", self.retry.attempt_timeout);
                    true
                }
            };
            if unknown && idempotent == Idempotent::No && method != Method::GET {
                return Err(Error::Unknown(last));
            }
        }
        Err(Error::Exhausted { attempts: self.retry.attempts, last })
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
        idempotent: Idempotent,
    ) -> Result<(StatusCode, T), Error> {
        let body = match body {
            Some(b) => Some(Bytes::from(serde_json::to_vec(b).map_err(|e| Error::Request(e.to_string()))?)),
            None => None,
        };
        let (status, bytes) = self.send(method, path, body, idempotent).await?;
        if !status.is_success() {
            return Err(match serde_json::from_slice::<ErrorBody>(&bytes) {
                Ok(e) => Error::Api { status: status.as_u16(), code: e.error.code, message: e.error.message },
                Err(_) => Error::Decode(format!("{status}: {}", String::from_utf8_lossy(&bytes))),
            });
        }
        let value = serde_json::from_slice(&bytes).map_err(|e| Error::Decode(format!("{e}")))?;
        Ok((status, value))
    }

    /// Creates a product. A retry after an unknown outcome may answer `already_exists` for its own success.
    pub async fn create_product(&self, sku: &str, product: &NewProduct) -> Result<Product, Error> {
        let path = format!("/v1/products/{sku}");
        self.call(Method::PUT, &path, Some(product), Idempotent::Yes).await.map(|(_, p)| p)
    }

    pub async fn product(&self, sku: &str) -> Result<Product, Error> {
        self.call(Method::GET, &format!("/v1/products/{sku}"), None::<&()>, Idempotent::Yes).await.map(|(_, p)| p)
    }

    /// Adds stock. Not idempotent: an unknown outcome is returned as [`Error::Unknown`], never retried.
    pub async fn restock(&self, sku: &str, qty: u64) -> Result<Product, Error> {
        let body = serde_json::json!({ "qty": qty });
        let path = format!("/v1/products/{sku}/restock");
        self.call(Method::POST, &path, Some(&body), Idempotent::No).await.map(|(_, p)| p)
    }

    /// Places an order; retried with the same idempotency key until the cluster answers.
    pub async fn place_order(&self, order: &NewOrder) -> Result<Placed, Error> {
        let (status, order) = self.call(Method::POST, "/v1/orders", Some(order), Idempotent::Yes).await?;
        Ok(Placed { order, created: status == StatusCode::CREATED })
    }

    pub async fn order(&self, id: &str) -> Result<Order, Error> {
        self.call(Method::GET, &format!("/v1/orders/{id}"), None::<&()>, Idempotent::Yes).await.map(|(_, o)| o)
    }

    pub async fn pay(&self, id: &str) -> Result<Order, Error> {
        let path = format!("/v1/orders/{id}/pay");
        self.call(Method::POST, &path, Some(&serde_json::json!({})), Idempotent::Yes).await.map(|(_, o)| o)
    }

    pub async fn cancel(&self, id: &str) -> Result<Order, Error> {
        let path = format!("/v1/orders/{id}/cancel");
        self.call(Method::POST, &path, Some(&serde_json::json!({})), Idempotent::Yes).await.map(|(_, o)| o)
    }

    /// Adds a node to the cluster (`POST /v1/cluster/nodes`); the node itself is started with `--join`.
    pub async fn add_node(&self, node: &NewNode) -> Result<serde_json::Value, Error> {
        self.call(Method::POST, "/v1/cluster/nodes", Some(node), Idempotent::Yes).await.map(|(_, v)| v)
    }

    /// Decommissions a node (`DELETE /v1/cluster/nodes/{id}`): its replicas move to the others.
    pub async fn remove_node(&self, id: &str) -> Result<serde_json::Value, Error> {
        self.call(Method::DELETE, &format!("/v1/cluster/nodes/{id}"), None::<&()>, Idempotent::Yes)
            .await
            .map(|(_, v)| v)
    }

    /// The cluster view of `GET /v1/cluster`, as JSON.
    pub async fn cluster(&self) -> Result<serde_json::Value, Error> {
        self.call(Method::GET, "/v1/cluster", None::<&()>, Idempotent::Yes).await.map(|(_, v)| v)
    }

    /// A single attempt at one node's readiness (`GET /readyz`): whether it is up and every partition it
    /// replicates has a leader.
    pub async fn ready(&self, node: usize) -> bool {
        let Some(base) = self.nodes.get(node) else { return false };
        let Ok(request) = Request::get(format!("{base}/readyz")).body(Full::new(Bytes::new())) else { return false };
        matches!(
            tokio::time::timeout(Duration::from_secs(1), self.http.request(request)).await,
            Ok(Ok(r)) if r.status() == StatusCode::OK
        )
    }
}
