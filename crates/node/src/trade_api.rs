//! The trading endpoints: products, orders, pay and cancel, and the OpenAPI document. Every field is checked
//! here, at the boundary, before anything is proposed; a refused request changes nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use rampart_trading::{
    Command, Item, Order, OrderId, OrderStatus, Outcome, Product, Rejection, Sku, UserId, MAX_ITEMS, MAX_PRICE_CENTS,
    MAX_QTY, MAX_STOCK,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::api::{error, request_error, PathParam};
use crate::node::{Node, Read, ReadResult};
use crate::types::{GroupId, Op, OpOutcome};

/// The longest SKU, user id and idempotency key, in bytes.
pub const MAX_ID: usize = 128;
/// The longest product name, in bytes.
pub const MAX_NAME: usize = 256;

pub fn routes() -> Router<Arc<Node>> {
    Router::new()
        .route("/v1/products/{sku}", put(create_product).get(get_product))
        .route("/v1/products/{sku}/restock", post(restock))
        .route("/v1/orders", post(place_order))
        .route("/v1/orders/{id}", get(get_order))
        .route("/v1/orders/{id}/pay", post(pay))
        .route("/v1/orders/{id}/cancel", post(cancel))
        .route("/openapi.json", get(|| async { Json(openapi()) }))
}

/// A request refused at the boundary, before anything was proposed.
#[derive(Debug)]
struct Refusal {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        error(self.status, self.code, self.message)
    }
}

fn invalid(message: impl Into<String>) -> Refusal {
    Refusal { status: StatusCode::BAD_REQUEST, code: "invalid_request", message: message.into() }
}

/// An identifier: 1 to [`MAX_ID`] bytes of ASCII letters, digits and `-_.:@`.
fn check_id(field: &str, value: &str) -> Result<(), Refusal> {
    let ok = !value.is_empty()
        && value.len() <= MAX_ID
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'@'));
    if ok {
        Ok(())
    } else {
        Err(invalid(format!("{field}: 1 to {MAX_ID} ASCII letters, digits or -_.:@")))
    }
}

fn check_range(field: &str, value: u64, lo: u64, hi: u64) -> Result<(), Refusal> {
    if (lo..=hi).contains(&value) {
        Ok(())
    } else {
        Err(invalid(format!("{field}: {lo} to {hi}")))
    }
}

fn body<T>(b: Result<Json<T>, JsonRejection>) -> Result<T, Refusal> {
    crate::api::json_body(b).map_err(|(status, message)| Refusal { status, code: "invalid_request", message })
}

fn product_json(p: &Product, partition: GroupId) -> Value {
    json!({
        "sku": p.sku.0, "name": p.name, "price_cents": p.price_cents, "max_per_user": p.max_per_user, "partition": partition,
        "available": p.available, "reserved": p.reserved, "sold": p.sold,
    })
}

/// An order as the API shows it, serialized straight from the order (the hot path of a flash sale answers one
/// per request).
#[derive(Serialize)]
struct OrderView<'a> {
    order_id: OrderId,
    status: &'static str,
    items: Vec<LineView<'a>>,
    total_cents: u64,
    user_id: &'a str,
    idempotency_key: &'a str,
    placed_ms: u64,
    pay_deadline_ms: u64,
    closed_ms: Option<u64>,
    rejection: Option<String>,
}

#[derive(Serialize)]
struct LineView<'a> {
    sku: &'a str,
    qty: u32,
    price_cents: u64,
}

fn order_json(o: &Order) -> Json<OrderView<'_>> {
    Json(OrderView {
        order_id: o.id,
        status: o.status.as_str(),
        items: o.items.iter().map(|l| LineView { sku: &l.sku.0, qty: l.qty, price_cents: l.price_cents }).collect(),
        total_cents: o.total_cents,
        user_id: &o.user_id.0,
        idempotency_key: &o.idempotency_key,
        placed_ms: o.placed_ms,
        pay_deadline_ms: o.pay_deadline_ms,
        closed_ms: o.closed_ms,
        rejection: o.rejection.as_ref().map(ToString::to_string),
    })
}

fn rejection(r: &Rejection) -> Response {
    let (status, code) = match r {
        Rejection::AlreadyExists(_) => (StatusCode::CONFLICT, "already_exists"),
        Rejection::UnknownSku(_) => (StatusCode::NOT_FOUND, "unknown_sku"),
        Rejection::OutOfStock { .. } => (StatusCode::CONFLICT, "out_of_stock"),
        Rejection::LimitExceeded { .. } => (StatusCode::CONFLICT, "limit_exceeded"),
        Rejection::UnknownOrder(_) => (StatusCode::NOT_FOUND, "unknown_order"),
        Rejection::InvalidState { .. } => (StatusCode::CONFLICT, "invalid_state"),
        Rejection::KeyReused { .. } => (StatusCode::CONFLICT, "idempotency_key_reused"),
        Rejection::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
    };
    error(status, code, r.to_string())
}

/// Proposes a trading command and turns its outcome into the answer; `created` is the status of a first success.
///
/// An order with lines in other partitions is driven first: a pending one until it is confirmed or aborted (the
/// answer waits for it), a closed one until its legs follow (best effort: the home leader finishes it otherwise).
async fn trade(node: &Node, group: GroupId, command: Command, created: StatusCode) -> Response {
    match node.propose(group, Op::Trade(command)).await {
        Ok(OpOutcome::Trade(Outcome::Product(p))) => (created, Json(product_json(&p, group))).into_response(),
        Ok(OpOutcome::Trade(Outcome::Order { order, replayed })) => {
            let order = match order.status {
                OrderStatus::Pending => match node.drive_saga(order).await {
                    Ok(o) => o,
                    Err(e) => return request_error(e),
                },
                _ if order.needs_driving() => node.drive_saga(order.clone()).await.unwrap_or(order),
                _ => order,
            };
            if let (OrderStatus::Aborted, Some(r)) = (&order.status, &order.rejection) {
                return rejection(r);
            }
            let status = if replayed { StatusCode::OK } else { created };
            (status, order_json(&order)).into_response()
        }
        Ok(OpOutcome::Trade(Outcome::Rejected { rejection: r, .. })) => rejection(&r),
        Ok(other) => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("unexpected outcome {other:?}")),
        Err(e) => request_error(e),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewProduct {
    name: String,
    price_cents: u64,
    stock: u64,
    max_per_user: Option<u32>,
}

async fn create_product(
    State(node): State<Arc<Node>>,
    PathParam(sku): PathParam,
    b: Result<Json<NewProduct>, JsonRejection>,
) -> Response {
    let checked = (|| -> Result<_, Refusal> {
        check_id("sku", &sku)?;
        let b = body(b)?;
        if b.name.is_empty() || b.name.len() > MAX_NAME || b.name.chars().any(char::is_control) {
            return Err(invalid(format!("name: 1 to {MAX_NAME} bytes without control characters")));
        }
        check_range("price_cents", b.price_cents, 0, MAX_PRICE_CENTS)?;
        check_range("stock", b.stock, 0, MAX_STOCK)?;
        if let Some(m) = b.max_per_user {
            check_range("max_per_user", m.into(), 1, MAX_QTY.into())?;
        }
        Ok(b)
    })();
    let b = match checked {
        Ok(b) => b,
        Err(r) => return r.into_response(),
    };
    let group = node.partition_of(&sku);
    let command = Command::CreateProduct {
        sku: Sku(sku.into()),
        name: b.name,
        price_cents: b.price_cents,
        stock: b.stock,
        max_per_user: b.max_per_user,
    };
    trade(&node, group, command, StatusCode::CREATED).await
}

async fn get_product(State(node): State<Arc<Node>>, PathParam(sku): PathParam) -> Response {
    if let Err(r) = check_id("sku", &sku) {
        return r.into_response();
    }
    let group = node.partition_of(&sku);
    match node.query(group, Read::Product(Sku(sku.as_str().into()))).await {
        Ok(ReadResult::Product(Some(p))) => Json(product_json(&p, group)).into_response(),
        Ok(_) => error(StatusCode::NOT_FOUND, "unknown_sku", format!("no product {sku}")),
        Err(e) => request_error(e),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RestockBody {
    qty: u64,
}

async fn restock(
    State(node): State<Arc<Node>>,
    PathParam(sku): PathParam,
    b: Result<Json<RestockBody>, JsonRejection>,
) -> Response {
    let checked = (|| -> Result<_, Refusal> {
        check_id("sku", &sku)?;
        let b = body(b)?;
        check_range("qty", b.qty, 1, MAX_STOCK)?;
        Ok(b)
    })();
    let b = match checked {
        Ok(b) => b,
        Err(r) => return r.into_response(),
    };
    let group = node.partition_of(&sku);
    trade(&node, group, Command::Restock { sku: Sku(sku.into()), qty: b.qty }, StatusCode::OK).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewOrder {
    idempotency_key: String,
    user_id: String,
    items: Vec<NewItem>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewItem {
    sku: String,
    qty: u32,
}

async fn place_order(State(node): State<Arc<Node>>, b: Result<Json<NewOrder>, JsonRejection>) -> Response {
    let checked = (|| -> Result<_, Refusal> {
        let b = body(b)?;
        check_id("idempotency_key", &b.idempotency_key)?;
        check_id("user_id", &b.user_id)?;
        if b.items.is_empty() || b.items.len() > MAX_ITEMS {
            return Err(invalid(format!("items: 1 to {MAX_ITEMS} lines")));
        }
        let mut seen = BTreeSet::new();
        for (i, item) in b.items.iter().enumerate() {
            check_id(&format!("items[{i}].sku"), &item.sku)?;
            check_range(&format!("items[{i}].qty"), item.qty.into(), 1, MAX_QTY.into())?;
            if !seen.insert(item.sku.as_str()) {
                return Err(invalid(format!("items[{i}].sku: {} appears twice", item.sku)));
            }
        }
        Ok(b)
    })();
    let b = match checked {
        Ok(b) => b,
        Err(r) => return r.into_response(),
    };
    // An order lives in its first SKU's partition; lines of SKUs in other partitions are reserved there (a saga).
    let group = node.partition_of(&b.items[0].sku);
    let remote: BTreeMap<Sku, u32> = b
        .items
        .iter()
        .map(|i| (Sku(i.sku.as_str().into()), node.partition_of(&i.sku)))
        .filter(|(_, p)| *p != group)
        .collect();
    let command = Command::PlaceOrder {
        user_id: UserId(b.user_id.into()),
        idempotency_key: b.idempotency_key,
        items: b.items.into_iter().map(|i| Item { sku: Sku(i.sku.into()), qty: i.qty }).collect(),
        // Stamped by the partition's leader when it proposes the order.
        pay_deadline_ms: 0,
        remote,
    };
    trade(&node, group, command, StatusCode::CREATED).await
}

/// The partition of an order id, or the 404 answer for an id no partition can hold.
fn order_group(node: &Node, id: &str) -> Result<(GroupId, OrderId), Refusal> {
    match OrderId::parse(id) {
        Some(order) if order.partition() < node.config.partitions => Ok((order.partition(), order)),
        _ => Err(Refusal {
            status: StatusCode::NOT_FOUND,
            code: "unknown_order",
            message: format!("no order {}", id.chars().take(MAX_ID).collect::<String>()),
        }),
    }
}

async fn get_order(State(node): State<Arc<Node>>, PathParam(id): PathParam) -> Response {
    let (group, id) = match order_group(&node, &id) {
        Ok(x) => x,
        Err(r) => return r.into_response(),
    };
    match node.query(group, Read::Order(id)).await {
        Ok(ReadResult::Order(Some(o))) => order_json(&o).into_response(),
        Ok(_) => error(StatusCode::NOT_FOUND, "unknown_order", format!("no order {id}")),
        Err(e) => request_error(e),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Empty {}

async fn pay(
    State(node): State<Arc<Node>>,
    PathParam(id): PathParam,
    b: Result<Json<Empty>, JsonRejection>,
) -> Response {
    close(&node, &id, b, |order_id| Command::Pay { order_id }).await
}

async fn cancel(
    State(node): State<Arc<Node>>,
    PathParam(id): PathParam,
    b: Result<Json<Empty>, JsonRejection>,
) -> Response {
    close(&node, &id, b, |order_id| Command::Cancel { order_id }).await
}

async fn close(
    node: &Node,
    id: &str,
    b: Result<Json<Empty>, JsonRejection>,
    command: fn(OrderId) -> Command,
) -> Response {
    let (group, id) = match order_group(node, id) {
        Ok(x) => x,
        Err(r) => return r.into_response(),
    };
    if let Err(r) = body(b) {
        return r.into_response();
    }
    // Paying or cancelling twice is a no-op that returns the order: 200 either way. An order with lines in
    // other partitions then has its legs settled or released (finished in the background if this fails).
    trade(node, group, command(id), StatusCode::OK).await
}

/// The OpenAPI 3.1 description of the HTTP API.
pub fn openapi() -> Value {
    let err = |d: &str| json!({"description": d, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
    let ok = |d: &str, schema: &str| json!({"description": d, "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}});
    let id_param = |name: &str| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string", "maxLength": MAX_ID}});
    let unavailable =
        err("the partition has no leader (Retry-After given); retrying with the same idempotency key is safe");
    let unknown = err("the partition's leader stopped answering: the write may or may not have been applied");
    let too_large = err(&format!("invalid_request: a body over {} bytes", crate::api::MAX_REQUEST));
    json!({
        "openapi": "3.1.0",
        "info": {"title": "Rampart", "version": env!("CARGO_PKG_VERSION"),
                 "description": "A highly available trading core: products, stock, orders and payments."},
        "paths": {
            "/v1/products/{sku}": {
                "parameters": [id_param("sku")],
                "put": {"summary": "Create a product with its initial stock",
                        "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/NewProduct"}}}},
                        "responses": {"201": ok("created", "Product"), "409": err("already_exists"), "400": err("invalid_request"), "413": too_large, "503": unavailable, "504": unknown}},
                "get": {"summary": "A product and its stock",
                        "responses": {"200": ok("the product", "Product"), "404": err("unknown_sku"), "503": unavailable}}
            },
            "/v1/products/{sku}/restock": {
                "parameters": [id_param("sku")],
                "post": {"summary": "Add available stock",
                         "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "required": ["qty"], "properties": {"qty": {"type": "integer", "minimum": 1, "maximum": MAX_STOCK}}}}}},
                         "responses": {"200": ok("the new figures", "Product"), "404": err("unknown_sku"), "400": err("invalid_request"), "413": too_large, "503": unavailable, "504": unknown}}
            },
            "/v1/orders": {
                "post": {"summary": "Place an order: every line reserved, or none",
                         "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/NewOrder"}}}},
                         "responses": {"201": ok("placed and confirmed", "Order"), "200": ok("a retry: the original order", "Order"),
                                       "409": err("out_of_stock, limit_exceeded or idempotency_key_reused"), "404": err("unknown_sku"),
                                       "400": err("invalid_request"), "413": too_large, "503": unavailable, "504": unknown}}
            },
            "/v1/orders/{id}": {
                "parameters": [id_param("id")],
                "get": {"summary": "An order", "responses": {"200": ok("the order", "Order"), "404": err("unknown_order"), "503": unavailable}}
            },
            "/v1/orders/{id}/pay": {
                "parameters": [id_param("id")],
                "post": {"summary": "Pay a confirmed order: reserved stock becomes sold (idempotent)",
                         "responses": {"200": ok("the order", "Order"), "404": err("unknown_order"), "409": err("invalid_state"), "503": unavailable, "504": unknown}}
            },
            "/v1/orders/{id}/cancel": {
                "parameters": [id_param("id")],
                "post": {"summary": "Cancel a confirmed order and release its stock (idempotent)",
                         "responses": {"200": ok("the order", "Order"), "404": err("unknown_order"), "409": err("invalid_state"), "503": unavailable, "504": unknown}}
            },
            "/v1/kv/{key}": {
                "parameters": [{"name": "key", "in": "path", "required": true, "schema": {"type": "string", "maxLength": crate::api::MAX_KEY}}],
                "put": {"summary": "Write a value", "responses": {"200": {"description": "written"}, "400": err("invalid_request"), "413": too_large, "503": unavailable, "504": unknown}},
                "get": {"summary": "Read a value (linearizable)", "responses": {"200": {"description": "{key, value}"}, "404": err("not_found"), "503": unavailable}}
            },
            "/v1/cluster": {"get": {"summary": "Nodes, partitions, leaders and the ring epoch", "responses": {"200": {"description": "the cluster view"}}}},
            "/healthz": {"get": {"summary": "Liveness", "responses": {"200": {"description": "alive"}}}},
            "/readyz": {"get": {"summary": "Readiness: every local partition has a leader", "responses": {"200": {"description": "ready"}, "503": unavailable}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "text exposition format"}}}}
        },
        "components": {"schemas": {
            "Error": {"type": "object", "properties": {"error": {"type": "object", "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}}},
            "NewProduct": {"type": "object", "required": ["name", "price_cents", "stock"], "additionalProperties": false, "properties": {
                "name": {"type": "string", "minLength": 1, "maxLength": MAX_NAME},
                "price_cents": {"type": "integer", "minimum": 0, "maximum": MAX_PRICE_CENTS},
                "stock": {"type": "integer", "minimum": 0, "maximum": MAX_STOCK},
                "max_per_user": {"type": "integer", "minimum": 1, "maximum": MAX_QTY}}},
            "Product": {"type": "object", "properties": {
                "sku": {"type": "string"}, "name": {"type": "string"}, "price_cents": {"type": "integer"},
                "max_per_user": {"type": ["integer", "null"]}, "available": {"type": "integer"},
                "partition": {"type": "integer", "description": "the partition that holds it"},
                "reserved": {"type": "integer"}, "sold": {"type": "integer"}}},
            "NewOrder": {"type": "object", "required": ["idempotency_key", "user_id", "items"], "additionalProperties": false, "properties": {
                "idempotency_key": {"type": "string", "minLength": 1, "maxLength": MAX_ID},
                "user_id": {"type": "string", "minLength": 1, "maxLength": MAX_ID},
                "items": {"type": "array", "minItems": 1, "maxItems": MAX_ITEMS, "items": {"type": "object", "required": ["sku", "qty"], "properties": {
                    "sku": {"type": "string", "minLength": 1, "maxLength": MAX_ID},
                    "qty": {"type": "integer", "minimum": 1, "maximum": MAX_QTY}}}}}},
            "Order": {"type": "object", "properties": {
                "order_id": {"type": "string"}, "status": {"enum": ["pending", "confirmed", "paid", "cancelled", "expired", "aborted"]},
                "items": {"type": "array"}, "total_cents": {"type": "integer"}, "user_id": {"type": "string"},
                "idempotency_key": {"type": "string"}, "placed_ms": {"type": "integer"},
                "pay_deadline_ms": {"type": "integer"}, "closed_ms": {"type": ["integer", "null"]}}}
        }}
    })
}
