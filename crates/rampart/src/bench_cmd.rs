//! `rampart bench`: a bounded load generator against a running cluster.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use axum::body::Bytes;
use axum::http::{header, Request, StatusCode};
use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum Workload {
    /// Durable replicated key-value writes (`PUT /v1/kv/{key}`).
    Kv,
    /// Orders of one hot SKU (one unit each, a new customer and idempotency key per order): one partition takes
    /// every write.
    FlashSale,
    /// Orders spread over --skus SKUs (one unit each).
    Uniform,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::Kv => "kv",
            Workload::FlashSale => "flash-sale",
            Workload::Uniform => "uniform",
        }
    }
}

/// Runs --clients concurrent clients for --duration-s seconds (and at most --max-ops requests), each sending
/// its next request as soon as the last is answered, spread over the --addr nodes. Prints a live progress
/// line, then throughput, latency percentiles (of acknowledged requests), errors and the longest time without
/// any acknowledged request.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Node addresses, comma-separated (http://127.0.0.1:7101 or 127.0.0.1:7101).
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:7101")]
    addr: Vec<String>,
    /// What to send.
    #[arg(long, value_enum, default_value_t = Workload::Kv)]
    workload: Workload,
    /// Concurrent clients (1 to 1024).
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Seconds to run (1 to 3600).
    #[arg(long, default_value_t = 10)]
    duration_s: u64,
    /// Upper bound on requests sent.
    #[arg(long, default_value_t = 10_000_000)]
    max_ops: u64,
    /// Distinct keys written (1 for a single hot key).
    #[arg(long, default_value_t = 100_000)]
    keys: u64,
    /// SKUs of the uniform workload (created first, with enough stock never to run out).
    #[arg(long, default_value_t = 1_000)]
    skus: u64,
    /// Key prefix (kv), SKU and customer prefix (trading workloads; a fresh one per run by default).
    #[arg(long, default_value = "bench")]
    prefix: String,
    /// Value size in bytes (1 to 16384).
    #[arg(long, default_value_t = 256)]
    value_bytes: usize,
    /// Where each request goes: `leader` sends it to the node that leads its key's partition (learnt from
    /// `/v1/cluster` every 500 ms, as a smart client would), `any` to the client's node in turn (which forwards).
    #[arg(long, value_enum, default_value_t = Route::Leader)]
    route: Route,
    /// One JSON object instead of text (its `run` is the prefix of the SKUs and customers this run created).
    #[arg(long)]
    json: bool,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum Route {
    Leader,
    Any,
}

/// Each partition's leader's HTTP address, as last seen in the cluster view.
#[derive(Debug, Default)]
struct Leaders {
    partitions: u32,
    http: Vec<Option<String>>,
}

impl Leaders {
    async fn fetch(client: &rampart_client::Client) -> Option<Leaders> {
        let view = client.cluster().await.ok()?;
        let http: BTreeMap<&str, &str> =
            view["nodes"].as_array()?.iter().filter_map(|n| Some((n["id"].as_str()?, n["http"].as_str()?))).collect();
        let partitions = view["partitions"].as_array()?;
        let leaders =
            partitions.iter().map(|p| p["leader"].as_str().and_then(|l| http.get(l)).map(|h| h.to_string())).collect();
        Some(Leaders { partitions: partitions.len() as u32, http: leaders })
    }

    fn partition(&self, key: &str) -> Option<usize> {
        (self.partitions > 0)
            .then(|| rampart_ring::hash::reduce(rampart_ring::hash::key_hash(key.as_bytes()), self.partitions) as usize)
    }

    /// The leader's address for `key`, if known.
    fn target(&self, key: &str) -> Option<&str> {
        self.http.get(self.partition(key)?)?.as_deref()
    }

    /// Forgets `key`'s leader after a failed request: until the next view, its requests go to the client's own
    /// node, which forwards them to whichever node leads now.
    fn forget(&mut self, key: &str) {
        if let Some(slot) = self.partition(key).and_then(|p| self.http.get_mut(p)) {
            *slot = None;
        }
    }
}

struct Shared {
    ok: AtomicU64,
    errors: AtomicU64,
    issued: AtomicU64,
    hist: Mutex<Histogram<u64>>,
    last_ok: Mutex<Instant>,
    /// The longest time without an acknowledged request, and when it ended.
    max_gap: Mutex<(Duration, Instant)>,
}

/// One client's keep-alive HTTP/1.1 connection to one node. The client's own task drives it while a request is
/// out, so a request and its answer cross no other task (a pooled client hands each one to a connection task and
/// back): the load generator shares the machine with the cluster it measures and should cost it little.
struct Connection {
    addr: String,
    sender: http1::SendRequest<Full<Bytes>>,
    driver: std::pin::Pin<Box<http1::Connection<TokioIo<tokio::net::TcpStream>, Full<Bytes>>>>,
}

impl Connection {
    async fn open(addr: &str) -> Option<Connection> {
        let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        stream.set_nodelay(true).ok()?;
        let (sender, driver) = http1::handshake(TokioIo::new(stream)).await.ok()?;
        Some(Connection { addr: addr.to_owned(), sender, driver: Box::pin(driver) })
    }

    /// Sends `request` and reads the whole answer; `None` when the connection failed (it is then dropped).
    async fn exchange(&mut self, request: Request<Full<Bytes>>) -> Option<StatusCode> {
        let Connection { sender, driver, .. } = self;
        let exchange = async {
            sender.ready().await.ok()?;
            let response = sender.send_request(request).await.ok()?;
            let status = response.status();
            response.into_body().collect().await.ok()?;
            Some(status)
        };
        tokio::select! {
            status = exchange => status,
            // The connection ended (closed by the node, or broken) before the answer was read.
            _ = driver.as_mut() => None,
        }
    }
}

/// Sends `request` to `addr` over the client's connection to it (opened on first use, and again after a failure).
async fn send(connections: &mut Vec<Connection>, addr: &str, request: Request<Full<Bytes>>) -> Option<StatusCode> {
    let at = match connections.iter().position(|c| c.addr == addr) {
        Some(at) => at,
        None => {
            connections.push(Connection::open(addr).await?);
            connections.len() - 1
        }
    };
    let status = connections[at].exchange(request).await;
    if status.is_none() {
        connections.swap_remove(at);
    }
    status
}

pub fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    if !(1..=1024).contains(&args.clients) || !(1..=3600).contains(&args.duration_s) {
        bail!("--clients: use 1 to 1024; --duration-s: use 1 to 3600");
    }
    if !(1..=16_384).contains(&args.value_bytes) || args.keys == 0 || args.addr.is_empty() {
        bail!("--value-bytes: use 1 to 16384; --keys: at least 1; --addr: at least one node");
    }
    let addrs: Vec<String> =
        args.addr.iter().map(|a| a.trim().trim_start_matches("http://").trim_end_matches('/').to_owned()).collect();
    if !(1..=100_000).contains(&args.skus) {
        bail!("--skus: use 1 to 100000");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    // The trading workloads sell from products created now, under a prefix of this run's own.
    let run = format!(
        "{}-{:x}",
        args.prefix,
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis())
    );
    let skus: Vec<String> = match args.workload {
        Workload::Kv => Vec::new(),
        Workload::FlashSale => vec![format!("{run}-hot")],
        Workload::Uniform => (0..args.skus).map(|i| format!("{run}-{i}")).collect(),
    };
    if !skus.is_empty() {
        let client = rampart_client::Client::new(&addrs, rampart_client::Retry::default())?;
        runtime.block_on(async {
            let product = rampart_client::NewProduct {
                name: "bench".into(),
                price_cents: 100,
                stock: rampart_trading::MAX_STOCK,
                max_per_user: None,
            };
            for chunk in skus.chunks(64) {
                let created = futures_util::future::join_all(chunk.iter().map(|s| client.create_product(s, &product)));
                for r in created.await {
                    r.context("creating the products")?;
                }
            }
            Ok::<_, anyhow::Error>(())
        })?;
    }
    let skus = Arc::new(skus);
    let leaders = Arc::new(std::sync::RwLock::new(Leaders::default()));
    let refresher = (args.route == Route::Leader).then(|| {
        let leaders = leaders.clone();
        let client = rampart_client::Client::new(&addrs, rampart_client::Retry { attempts: 1, ..Default::default() });
        runtime.spawn(async move {
            let Ok(client) = client else { return };
            loop {
                if let Some(l) = Leaders::fetch(&client).await {
                    if let Ok(mut w) = leaders.write() {
                        *w = l;
                    }
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    });
    if refresher.is_some() {
        // The first view, before the clock starts.
        runtime.block_on(async {
            for _ in 0..50 {
                if leaders.read().is_ok_and(|l| l.partitions > 0) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
    }
    let shared = Arc::new(Shared {
        ok: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        issued: AtomicU64::new(0),
        hist: Mutex::new(Histogram::new_with_bounds(1, 60_000_000, 3).context("histogram")?),
        last_ok: Mutex::new(Instant::now()),
        max_gap: Mutex::new((Duration::ZERO, Instant::now())),
    });
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.duration_s);
    runtime.block_on(async {
        let value = "x".repeat(args.value_bytes);
        let body = Bytes::from(format!(r#"{{"value":"{value}"}}"#));
        let mut tasks = Vec::new();
        for c in 0..args.clients {
            let (body, shared, skus) = (body.clone(), shared.clone(), skus.clone());
            let leaders = leaders.clone();
            let home = addrs[c % addrs.len()].clone();
            let (keys, prefix, max_ops, workload, run) =
                (args.keys, args.prefix.clone(), args.max_ops, args.workload, run.clone());
            tasks.push(tokio::spawn(async move {
                let mut seq = c as u64;
                let mut n = 0u64;
                let mut connections = Vec::new();
                while Instant::now() < deadline && shared.issued.fetch_add(1, Ordering::Relaxed) < max_ops {
                    n += 1;
                    let target = |key: &str| {
                        leaders.read().ok().and_then(|l| l.target(key).map(str::to_owned)).unwrap_or(home.clone())
                    };
                    let (addr, routed_by, request) = if workload == Workload::Kv {
                        let key = format!("{prefix}-{}", seq % keys);
                        seq += 7919 * (c as u64 + 1);
                        let request = Request::put(format!("/v1/kv/{key}"))
                            .header(header::CONTENT_TYPE, "application/json")
                            .body(Full::new(body.clone()));
                        (target(&key), key, request)
                    } else {
                        let sku = &skus[(n.wrapping_mul(7919).wrapping_add(c as u64) % skus.len() as u64) as usize];
                        let order = format!(
                            r#"{{"idempotency_key":"k{n}","user_id":"{run}-c{c}-{n}","items":[{{"sku":"{sku}","qty":1}}]}}"#
                        );
                        let request = Request::post("/v1/orders")
                            .header(header::CONTENT_TYPE, "application/json")
                            .body(Full::new(Bytes::from(order)));
                        (target(sku), sku.clone(), request)
                    };
                    let t0 = Instant::now();
                    let ok = match request {
                        Ok(mut r) => {
                            if let Ok(host) = header::HeaderValue::from_str(&addr) {
                                r.headers_mut().insert(header::HOST, host);
                            }
                            let answer =
                                tokio::time::timeout(Duration::from_secs(10), send(&mut connections, &addr, r)).await;
                            if answer.is_err() {
                                // Timed out mid-exchange: the connection's state is unknown, so it goes.
                                connections.retain(|c| c.addr != addr);
                            }
                            matches!(answer, Ok(Some(StatusCode::OK | StatusCode::CREATED)))
                        }
                        Err(_) => false,
                    };
                    if ok {
                        let now = Instant::now();
                        shared.ok.fetch_add(1, Ordering::Relaxed);
                        if let Ok(mut h) = shared.hist.lock() {
                            let _ = h.record((now - t0).as_micros().max(1) as u64);
                        }
                        if let (Ok(mut last), Ok(mut gap)) = (shared.last_ok.lock(), shared.max_gap.lock()) {
                            if now - *last > gap.0 {
                                *gap = (now - *last, now);
                            }
                            *last = now;
                        }
                    } else {
                        shared.errors.fetch_add(1, Ordering::Relaxed);
                        if let Ok(mut l) = leaders.write() {
                            l.forget(&routed_by);
                        }
                        // Back off a little so a leaderless partition is not hammered.
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            }));
        }
        let progress = {
            let shared = shared.clone();
            tokio::spawn(async move {
                let mut last = 0;
                loop {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    let ok = shared.ok.load(Ordering::Relaxed);
                    eprint!(
                        "\r{:>4.0}s  {ok:>9} ok  {:>6} errors  {:>7} /s   ",
                        started.elapsed().as_secs_f64(),
                        shared.errors.load(Ordering::Relaxed),
                        ok - last
                    );
                    last = ok;
                }
            })
        };
        for t in tasks {
            let _ = t.await;
        }
        progress.abort();
        if let Some(r) = &refresher {
            r.abort();
        }
        eprintln!();
    });
    let elapsed = started.elapsed().as_secs_f64();
    let ok = shared.ok.load(Ordering::Relaxed);
    let errors = shared.errors.load(Ordering::Relaxed);
    let hist = shared.hist.lock().map(|h| h.clone()).map_err(|_| anyhow::anyhow!("histogram poisoned"))?;
    let q = |p: f64| hist.value_at_quantile(p) as f64 / 1000.0;
    let (gap, gap_ended) = shared.max_gap.lock().map(|g| *g).map_err(|_| anyhow::anyhow!("gap poisoned"))?;
    let gap_at = gap_ended.saturating_duration_since(started).as_secs_f64();
    let gap = gap.as_secs_f64() * 1000.0;
    let out = if args.json {
        format!(
            "{}\n",
            serde_json::json!({
                "workload": args.workload.name(), "clients": args.clients, "duration_s": elapsed, "ok": ok,
                "throughput_per_s": ok as f64 / elapsed, "p50_ms": q(0.5), "p99_ms": q(0.99), "p999_ms": q(0.999),
                "max_ms": hist.max() as f64 / 1000.0, "errors": errors, "longest_gap_ms": gap,
                "longest_gap_ended_s": gap_at, "run": run,
            })
        )
    } else {
        format!(
            "{}  clients={}  {ok} ok in {elapsed:.1} s = {:.0}/s  p50 {:.2} ms  p99 {:.2} ms  p999 {:.2} ms  max {:.2} ms  errors {errors}  longest gap {gap:.0} ms (ended at {gap_at:.1} s)\n",
            args.workload.name(),
            args.clients,
            ok as f64 / elapsed,
            q(0.5),
            q(0.99),
            q(0.999),
            hist.max() as f64 / 1000.0
        )
    };
    crate::output::print(&out)?;
    Ok(ExitCode::SUCCESS)
}
