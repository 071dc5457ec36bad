//! The trading API of DESIGN.md section 3 against a real `rampart serve` (one node, one replica): answers and
//! error codes, bad input refused with nothing changed, idempotent retries, pay and cancel, and expiry of an
//! unpaid order at its (short) payment deadline.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const HTTP: u16 = 27801;
const PEER: u16 = 27802;

fn http(method: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
    let addr = SocketAddr::from(([127, 0, 0, 1], HTTP));
    let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).expect("node answers");
    conn.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(request.as_bytes()).expect("send");
    let mut answer = String::new();
    conn.read_to_string(&mut answer).expect("read");
    let status = answer.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("status line");
    let body = answer.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, serde_json::from_str(body).unwrap_or(serde_json::Value::Null))
}

fn code(v: &serde_json::Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}

/// The node process, and its data directory (removed when the test ends).
struct Node(Child, #[allow(dead_code)] tempfile::TempDir);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start() -> Node {
    let dir = tempfile::tempdir().expect("temp dir");
    let child = Command::new(env!("CARGO_BIN_EXE_rampart"))
        .args(["serve", "--id", "n1", "--http", &format!("127.0.0.1:{HTTP}"), "--peer", &format!("127.0.0.1:{PEER}")])
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--initial-cluster", &format!("n1=127.0.0.1:{PEER}"), "--partitions", "8", "--replicas", "1"])
        .args(["--payment-deadline-ms", "1500", "--idempotency-retention-ms", "600000"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("rampart serve starts");
    let node = Node(child, dir);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let addr = SocketAddr::from(([127, 0, 0, 1], HTTP));
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() && http("GET", "/readyz", "").0 == 200
        {
            return node;
        }
        assert!(Instant::now() < deadline, "the node did not become ready");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn stock(sku: &str) -> (u64, u64, u64) {
    let (status, p) = http("GET", &format!("/v1/products/{sku}"), "");
    assert_eq!(status, 200, "{p}");
    (p["available"].as_u64().unwrap(), p["reserved"].as_u64().unwrap(), p["sold"].as_u64().unwrap())
}

#[test]
fn the_trading_api_keeps_its_contract() {
    let _node = start();
    let (s, p) = http("PUT", "/v1/products/hot", r#"{"name":"Hot","price_cents":1999,"stock":3,"max_per_user":1}"#);
    assert_eq!((s, p["available"].as_u64()), (201, Some(3)), "{p}");
    let (s, p) = http("PUT", "/v1/products/hot", r#"{"name":"Hot","price_cents":1,"stock":9}"#);
    assert_eq!((s, code(&p)), (409, "already_exists"));
    assert_eq!(http("PUT", "/v1/products/mug", r#"{"name":"Mug","price_cents":500,"stock":10}"#).0, 201);

    // Bad input: 400 naming the field, and nothing changes.
    let bad = [
        ("PUT", "/v1/products/x", r#"{"name":"","price_cents":1,"stock":1}"#, "name"),
        ("PUT", "/v1/products/x", r#"{"name":"X","price_cents":-1,"stock":1}"#, "price_cents"),
        ("PUT", "/v1/products/x", r#"{"name":"X","price_cents":1,"stock":1,"colour":"red"}"#, "colour"),
        ("PUT", "/v1/products/x%20y", r#"{"name":"X","price_cents":1,"stock":1}"#, "sku"),
        // A path parameter that is not UTF-8 once decoded: refused in the documented shape too.
        ("PUT", "/v1/products/%FF", r#"{"name":"X","price_cents":1,"stock":1}"#, "UTF-8"),
        ("POST", "/v1/orders/%C3%28/pay", "{}", "UTF-8"),
        ("POST", "/v1/products/hot/restock", r#"{"qty":0}"#, "qty"),
        ("POST", "/v1/orders", r#"{"idempotency_key":"k","user_id":"u","items":[]}"#, "items"),
        ("POST", "/v1/orders", r#"{"idempotency_key":"k","user_id":"u","items":[{"sku":"hot","qty":0}]}"#, "qty"),
        (
            "POST",
            "/v1/orders",
            r#"{"idempotency_key":"","user_id":"u","items":[{"sku":"hot","qty":1}]}"#,
            "idempotency_key",
        ),
        (
            "POST",
            "/v1/orders",
            r#"{"idempotency_key":"k","user_id":"u","items":[{"sku":"hot","qty":1},{"sku":"hot","qty":1}]}"#,
            "appears twice",
        ),
        ("POST", "/v1/orders", r#"{"idempotency_key":"k","items":[{"sku":"hot","qty":1}]}"#, "user_id"),
        ("POST", "/v1/orders", "not json", "JSON"),
    ];
    for (method, path, body, field) in bad {
        let (s, v) = http(method, path, body);
        assert_eq!((s, code(&v)), (400, "invalid_request"), "{method} {path} {body}: {v}");
        assert!(v["error"]["message"].as_str().unwrap_or("").contains(field), "{body}: {v} does not name {field}");
    }
    let huge = format!(r#"{{"name":"{}","price_cents":1,"stock":1}}"#, "x".repeat(100_000));
    assert_eq!(http("PUT", "/v1/products/big", &huge).0, 413, "body over the limit");
    assert_eq!(http("GET", "/v1/products/x", "").0, 404);
    assert_eq!(stock("hot"), (3, 0, 0));

    // An order, its retry, a different request under the same key, the limit of one per customer.
    let order = r#"{"idempotency_key":"k1","user_id":"alice","items":[{"sku":"hot","qty":1}]}"#;
    let (s, first) = http("POST", "/v1/orders", order);
    assert_eq!(
        (s, first["status"].as_str(), first["total_cents"].as_u64()),
        (201, Some("confirmed"), Some(1999)),
        "{first}"
    );
    let id = first["order_id"].as_str().unwrap().to_owned();
    let (s, again) = http("POST", "/v1/orders", order);
    assert_eq!((s, again["order_id"].as_str()), (200, Some(id.as_str())));
    // The same key for a different request in the same partition (the key's scope: see ARCHITECTURE.md).
    let (s, v) =
        http("POST", "/v1/orders", r#"{"idempotency_key":"k1","user_id":"alice","items":[{"sku":"hot","qty":2}]}"#);
    assert_eq!((s, code(&v)), (409, "idempotency_key_reused"));
    let (s, v) =
        http("POST", "/v1/orders", r#"{"idempotency_key":"k2","user_id":"alice","items":[{"sku":"hot","qty":1}]}"#);
    assert_eq!((s, code(&v)), (409, "limit_exceeded"));
    let (s, v) =
        http("POST", "/v1/orders", r#"{"idempotency_key":"k3","user_id":"bob","items":[{"sku":"hot","qty":5}]}"#);
    assert_eq!((s, code(&v)), (409, "out_of_stock"));
    let (s, v) =
        http("POST", "/v1/orders", r#"{"idempotency_key":"k4","user_id":"bob","items":[{"sku":"nope","qty":1}]}"#);
    assert_eq!((s, code(&v)), (404, "unknown_sku"));
    assert_eq!(stock("hot"), (2, 1, 0), "refused orders reserved nothing");

    // Pay (twice: the same answer), then cancel is refused; GET shows it paid.
    let (s, v) = http("POST", &format!("/v1/orders/{id}/pay"), "{}");
    assert_eq!((s, v["status"].as_str()), (200, Some("paid")));
    assert_eq!(http("POST", &format!("/v1/orders/{id}/pay"), "{}").0, 200);
    let (s, v) = http("POST", &format!("/v1/orders/{id}/cancel"), "{}");
    assert_eq!((s, code(&v)), (409, "invalid_state"));
    assert_eq!(http("GET", &format!("/v1/orders/{id}"), "").1["status"], "paid");
    assert_eq!(stock("hot"), (2, 0, 1));
    assert_eq!(code(&http("GET", "/v1/orders/7-99999", "").1), "unknown_order");
    assert_eq!(code(&http("GET", "/v1/orders/not-an-id", "").1), "unknown_order");

    // Cancel releases the stock; an unpaid order expires at its deadline (1.5 s here) and releases it too.
    let (_, c) =
        http("POST", "/v1/orders", r#"{"idempotency_key":"c","user_id":"carol","items":[{"sku":"mug","qty":4}]}"#);
    let cid = c["order_id"].as_str().unwrap().to_owned();
    assert_eq!(stock("mug"), (6, 4, 0));
    assert_eq!(http("POST", &format!("/v1/orders/{cid}/cancel"), "{}").1["status"], "cancelled");
    assert_eq!(stock("mug"), (10, 0, 0));
    let (_, d) =
        http("POST", "/v1/orders", r#"{"idempotency_key":"d","user_id":"dave","items":[{"sku":"mug","qty":2}]}"#);
    let did = d["order_id"].as_str().unwrap().to_owned();
    assert_eq!(stock("mug"), (8, 2, 0));
    let deadline = Instant::now() + Duration::from_secs(10);
    while http("GET", &format!("/v1/orders/{did}"), "").1["status"] != "expired" {
        assert!(Instant::now() < deadline, "the unpaid order did not expire");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(stock("mug"), (10, 0, 0), "expiry released the stock");
    let (s, v) = http("POST", &format!("/v1/orders/{did}/pay"), "{}");
    assert_eq!((s, code(&v)), (409, "invalid_state"), "an expired order cannot be paid");
    let (s, v) = http("POST", "/v1/products/mug/restock", r#"{"qty":5}"#);
    assert_eq!((s, v["available"].as_u64()), (200, Some(15)));

    // An order whose SKUs live in different partitions: reserved on both or neither (a saga).
    let (_, a) = http("PUT", "/v1/products/cart-a", r#"{"name":"A","price_cents":100,"stock":5}"#);
    let b = (0..50)
        .map(|i| format!("cart-b{i}"))
        .find(|sku| {
            let (_, p) = http("PUT", &format!("/v1/products/{sku}"), r#"{"name":"B","price_cents":1000,"stock":2}"#);
            p["partition"] != a["partition"]
        })
        .expect("a SKU in another partition");
    let cart = format!(
        r#"{{"idempotency_key":"cart1","user_id":"erin","items":[{{"sku":"cart-a","qty":1}},{{"sku":"{b}","qty":2}}]}}"#
    );
    let (s, o) = http("POST", "/v1/orders", &cart);
    assert_eq!((s, o["status"].as_str(), o["total_cents"].as_u64()), (201, Some("confirmed"), Some(2100)), "{o}");
    assert_eq!((stock("cart-a"), stock(&b)), ((4, 1, 0), (0, 2, 0)));
    let (s, again) = http("POST", "/v1/orders", &cart);
    assert_eq!((s, &again["order_id"]), (200, &o["order_id"]), "a retry returns the same saga order");
    let oid = o["order_id"].as_str().unwrap().to_owned();
    assert_eq!(http("POST", &format!("/v1/orders/{oid}/pay"), "{}").1["status"], "paid");
    assert_eq!((stock("cart-a"), stock(&b)), ((4, 0, 1), (0, 0, 2)), "both partitions sold");
    // The other partition is out of stock: the whole order is refused and the first line released.
    let short = format!(
        r#"{{"idempotency_key":"cart2","user_id":"erin","items":[{{"sku":"cart-a","qty":1}},{{"sku":"{b}","qty":1}}]}}"#
    );
    let (s, v) = http("POST", "/v1/orders", &short);
    assert_eq!((s, code(&v)), (409, "out_of_stock"), "{v}");
    assert_eq!(stock("cart-a"), (4, 0, 1), "nothing stays reserved by a refused saga");
    assert_eq!(code(&http("POST", "/v1/orders", &short).1), "out_of_stock", "the retry gets the same refusal");

    let (s, doc) = http("GET", "/openapi.json", "");
    assert_eq!(s, 200);
    assert!(doc["paths"]["/v1/orders"]["post"].is_object(), "the OpenAPI document lists the order endpoint");
    for (path, method) in [("/v1/orders", "post"), ("/v1/products/{sku}", "put"), ("/v1/kv/{key}", "put")] {
        assert!(doc["paths"][path][method]["responses"]["413"].is_object(), "{method} {path} documents the body limit");
    }
}
