//! The client's retry rules against a scripted server: what is retried, with the same body, and what is not.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::post;
use axum::Router;
use rampart_client::{Client, Error, Item, NewOrder, Retry};

/// Answers each request with the next scripted status (the last one repeats) and records the bodies.
#[derive(Clone, Default)]
struct Script {
    statuses: Arc<Vec<u16>>,
    calls: Arc<AtomicUsize>,
    bodies: Arc<Mutex<Vec<Bytes>>>,
}

const ORDER: &str = r#"{"order_id":"3-0","status":"confirmed","items":[{"sku":"tee","qty":1,"price_cents":100}],"total_cents":100,"user_id":"u","idempotency_key":"k","placed_ms":1,"pay_deadline_ms":2,"closed_ms":null}"#;
const PRODUCT: &str = r#"{"sku":"tee","name":"t","price_cents":100,"max_per_user":null,"available":1,"reserved":0,"sold":0,"partition":3}"#;

async fn answer(State(s): State<Script>, body: Bytes) -> impl IntoResponse {
    let n = s.calls.fetch_add(1, Ordering::SeqCst);
    s.bodies.lock().unwrap().push(body);
    let status = s.statuses[n.min(s.statuses.len() - 1)];
    let body = match status {
        201 | 200 => ORDER.to_owned(),
        409 => r#"{"error":{"code":"out_of_stock","message":"tee: only 0 available"}}"#.to_owned(),
        503 => r#"{"error":{"code":"unavailable","message":"no leader"}}"#.to_owned(),
        _ => r#"{"error":{"code":"unknown_outcome","message":"maybe"}}"#.to_owned(),
    };
    (StatusCode::from_u16(status).unwrap(), [("content-type", "application/json")], body)
}

async fn restock_answer(State(s): State<Script>) -> impl IntoResponse {
    s.calls.fetch_add(1, Ordering::SeqCst);
    let status = s.statuses[0];
    let body = if status == 200 { PRODUCT } else { r#"{"error":{"code":"unknown_outcome","message":"maybe"}}"# };
    (StatusCode::from_u16(status).unwrap(), [("content-type", "application/json")], body)
}

async fn serve(statuses: Vec<u16>) -> (SocketAddr, Script) {
    let script = Script { statuses: Arc::new(statuses), ..Script::default() };
    let app = Router::new()
        .route("/v1/orders", post(answer))
        .route("/v1/products/tee/restock", post(restock_answer))
        .with_state(script.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, script)
}

fn fast() -> Retry {
    Retry {
        attempts: 5,
        first_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(5),
        attempt_timeout: Duration::from_secs(2),
    }
}

fn order() -> NewOrder {
    NewOrder { idempotency_key: "k".into(), user_id: "u".into(), items: vec![Item { sku: "tee".into(), qty: 1 }] }
}

#[tokio::test]
async fn unavailable_and_unknown_outcomes_of_an_order_are_retried_with_the_same_key() {
    let (addr, script) = serve(vec![503, 504, 201]).await;
    let client = Client::new([addr.to_string()], fast()).unwrap();
    let placed = client.place_order(&order()).await.unwrap();
    assert!(placed.created);
    assert_eq!(placed.order.order_id, "3-0");
    assert_eq!(script.calls.load(Ordering::SeqCst), 3);
    let bodies = script.bodies.lock().unwrap();
    assert!(bodies.windows(2).all(|w| w[0] == w[1]), "every attempt carries the same idempotency key and body");
}

#[tokio::test]
async fn a_final_answer_is_not_retried() {
    let (addr, script) = serve(vec![409]).await;
    let client = Client::new([addr.to_string()], fast()).unwrap();
    let err = client.place_order(&order()).await.unwrap_err();
    assert_eq!(err.code(), Some("out_of_stock"));
    assert_eq!(script.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_restock_with_an_unknown_outcome_is_never_sent_twice() {
    let (addr, script) = serve(vec![504]).await;
    let client = Client::new([addr.to_string()], fast()).unwrap();
    assert!(matches!(client.restock("tee", 5).await, Err(Error::Unknown(_))));
    assert_eq!(script.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_node_that_refuses_connections_is_skipped_and_attempts_are_bounded() {
    // A port with nothing listening, then a live node.
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let (addr, _) = serve(vec![201]).await;
    let client = Client::new([dead.to_string(), addr.to_string()], fast()).unwrap();
    for _ in 0..4 {
        client.place_order(&order()).await.unwrap();
    }
    let (busy, script) = serve(vec![503]).await;
    let client = Client::new([busy.to_string()], fast()).unwrap();
    assert!(matches!(client.place_order(&order()).await, Err(Error::Exhausted { attempts: 5, .. })));
    assert_eq!(script.calls.load(Ordering::SeqCst), 5);
}
