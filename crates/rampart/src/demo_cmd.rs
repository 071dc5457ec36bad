//! `rampart demo`: a flash sale on a temporary local 3-node cluster, with the hot partition's leader killed
//! (SIGKILL) mid-sale and restarted, then every promise checked against what the buyers were told.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use rampart_client::{Client, Error, Item, NewOrder, NewProduct, Placed, Retry};
use serde_json::json;

use crate::local::LocalCluster;

const HOT: &str = "hot-console";
const NORMAL: [&str; 4] = ["tee", "mug", "cap", "sticker"];
const NORMAL_STOCK: u64 = 100_000;

/// Starts 3 nodes (child processes, data in a temporary directory), creates a hot SKU limited to one per
/// customer and a few normal SKUs (carts of two of them usually span partitions: sagas), lets --buyers concurrent buyers place, pay and cancel orders for --users
/// customers (each order retried with its idempotency key; some sent twice at once, like a double click),
/// kills the hot partition's leader with SIGKILL once a quarter of the customers are served, restarts it two
/// seconds later, then checks: every acknowledged order is read back, stock adds up, nothing oversold, no
/// duplicate order, and reports the longest time the hot SKU went without an answer. Exit status 0 only if
/// every check holds.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Units of the hot SKU.
    #[arg(long, default_value_t = 1_000)]
    hot_stock: u64,
    /// Customers, each ordering the hot SKU once and one normal SKU once.
    #[arg(long, default_value_t = 10_000)]
    users: usize,
    /// Concurrent buyers.
    #[arg(long, default_value_t = 200)]
    buyers: usize,
    /// Seed of the buyers' choices (pay, cancel, double click, which SKU).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Partitions of the temporary cluster.
    #[arg(long, default_value_t = 64)]
    partitions: u32,
    /// Keep the data directory and node logs (printed at the end).
    #[arg(long)]
    keep: bool,
    /// The verdict as one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

/// A splitmix64 step: the buyers' choices are a pure function of the seed.
fn next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// What a buyer was told about one order request.
#[derive(Clone, Debug)]
enum Told {
    Placed {
        order_id: String,
    },
    Rejected(String),
    /// No final answer (every attempt failed or timed out): resolved after the sale by asking again.
    Unknown(String),
}

#[derive(Debug)]
struct Attempt {
    user: String,
    key: String,
    items: Vec<Item>,
    told: Told,
    /// What the buyer then did, and was told succeeded.
    paid: bool,
    cancelled: bool,
}

#[derive(Default, Debug)]
struct Sale {
    attempts: Mutex<Vec<Attempt>>,
    /// When the hot SKU's requests got a final answer (placed or refused), relative to the sale's start.
    hot_answers: Mutex<Vec<Duration>>,
    users_done: AtomicUsize,
    placed: AtomicU64,
    refused: AtomicU64,
    unknown: AtomicU64,
    /// Double clicks that came back with two different orders.
    split_clicks: AtomicU64,
}

fn told(result: &Result<Placed, Error>) -> Told {
    match result {
        Ok(p) => Told::Placed { order_id: p.order.order_id.clone() },
        Err(Error::Api { code, .. }) => Told::Rejected(code.clone()),
        Err(e) => Told::Unknown(e.to_string()),
    }
}

pub fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    if args.buyers == 0 || args.buyers > 2_000 || args.users == 0 || args.users > 1_000_000 {
        bail!("--buyers: 1 to 2000; --users: 1 to 1000000");
    }
    let temp = tempfile::Builder::new().prefix("rampart-demo-").tempdir()?;
    let dir: PathBuf = temp.path().to_owned();
    let say = |line: String| {
        if args.json {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    };
    let started = Instant::now();
    let extra = vec!["--partitions".to_owned(), args.partitions.to_string()];
    let mut cluster = LocalCluster::start(3, &dir, None, &extra)?;
    let client = Client::new(cluster.http_urls(), Retry::default())?;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(crate::local::wait_ready(&client, 3, Duration::from_secs(30))).context("starting the cluster")?;
    say(format!(
        "cluster: 3 nodes ready in {:.1} s ({})",
        started.elapsed().as_secs_f64(),
        cluster.http_urls().join(" ")
    ));

    let hot = runtime.block_on(async {
        let hot = client
            .create_product(
                HOT,
                &NewProduct {
                    name: "Flash-sale console".into(),
                    price_cents: 49_900,
                    stock: args.hot_stock,
                    max_per_user: Some(1),
                },
            )
            .await?;
        for sku in NORMAL {
            let p =
                NewProduct { name: format!("A {sku}"), price_cents: 1_500, stock: NORMAL_STOCK, max_per_user: None };
            client.create_product(sku, &p).await?;
        }
        Ok::<_, Error>(hot)
    })?;
    say(format!(
        "products: {HOT} ({} units, one per customer, partition {}) and {} normal SKUs of {NORMAL_STOCK} units",
        args.hot_stock,
        hot.partition,
        NORMAL.len()
    ));

    // The sale.
    let sale = Arc::new(Sale::default());
    let sale_start = Instant::now();
    let mut buyers = Vec::new();
    for b in 0..args.buyers {
        let (client, sale) = (client.clone(), sale.clone());
        let (users, stride, seed) = (args.users, args.buyers, args.seed);
        buyers.push(runtime.spawn(async move {
            let mut rng = seed ^ (b as u64).wrapping_mul(0xA24B_AED4_963E_E407);
            let mut u = b;
            while u < users {
                buy(&client, &sale, &mut rng, u, sale_start).await;
                sale.users_done.fetch_add(1, Ordering::Relaxed);
                u += stride;
            }
        }));
    }
    // Live progress, and the fault: kill -9 the hot partition's leader once a quarter of the customers are served.
    let mut killed: Option<(usize, Instant)> = None;
    let mut restarted: Option<Instant> = None;
    let mut last_progress = Instant::now();
    while buyers.iter().any(|b| !b.is_finished()) {
        std::thread::sleep(Duration::from_millis(50));
        let served = sale.users_done.load(Ordering::Relaxed);
        if killed.is_none() && served * 4 >= args.users {
            let leader = runtime.block_on(hot_leader(&client, hot.partition));
            if let Some(i) = leader.and_then(|id| cluster.index_of(&id)) {
                cluster.kill(i)?;
                killed = Some((i, Instant::now()));
                say(format!(
                    "  t={:>5.1}s  kill -9 {} (leader of partition {}) with {served} of {} customers served",
                    sale_start.elapsed().as_secs_f64(),
                    cluster.nodes[i].id,
                    hot.partition,
                    args.users
                ));
            }
        }
        if let (Some((i, at)), None) = (killed, restarted) {
            if at.elapsed() >= Duration::from_secs(2) {
                cluster.restart(i)?;
                restarted = Some(Instant::now());
                say(format!(
                    "  t={:>5.1}s  restarted {} on its data",
                    sale_start.elapsed().as_secs_f64(),
                    cluster.nodes[i].id
                ));
            }
        }
        if last_progress.elapsed() >= Duration::from_millis(500) {
            last_progress = Instant::now();
            say(format!(
                "  t={:>5.1}s  customers {served}/{}  orders placed {}  refused {}  no answer yet {}",
                sale_start.elapsed().as_secs_f64(),
                args.users,
                sale.placed.load(Ordering::Relaxed),
                sale.refused.load(Ordering::Relaxed),
                sale.unknown.load(Ordering::Relaxed),
            ));
        }
    }
    let sale_time = sale_start.elapsed();
    if let (Some((i, _)), None) = (killed, restarted) {
        cluster.restart(i)?;
    }
    let Some((victim, _)) = killed else {
        bail!("the sale ended before the hot partition's leader could be found and killed; try more --users");
    };
    runtime.block_on(crate::local::wait_ready(&client, 3, Duration::from_secs(30))).context("after the restart")?;
    say(format!(
        "sale over in {:.1} s; {} rejoined; checking every acknowledged order on every node...",
        sale_time.as_secs_f64(),
        cluster.nodes[victim].id
    ));
    let verdict = runtime.block_on(check(&client, &sale, args.hot_stock))?;
    let (gap_from, window) = longest_gap(&sale.hot_answers.lock().map_err(|_| anyhow::anyhow!("poisoned"))?, sale_time);
    let since_start = |at: Option<Instant>| at.map(|at| at.saturating_duration_since(sale_start));
    let (killed_at, restarted_at) = (since_start(killed.map(|(_, at)| at)), since_start(restarted));
    let report = json!({
        "orders_placed": verdict.placed,
        "orders_refused": verdict.refused,
        "refused_by_code": verdict.refused_by,
        "unresolved": verdict.unresolved,
        "answers_after_the_sale": verdict.resolved,
        "hot_sold": verdict.hot.1, "hot_reserved": verdict.hot.0, "hot_available": verdict.hot.2, "hot_stock": args.hot_stock,
        "oversold": verdict.oversold,
        "stock_mismatches": verdict.stock_mismatches,
        "acknowledged_orders_lost": verdict.lost,
        "duplicates": verdict.duplicates + sale.split_clicks.load(Ordering::Relaxed),
        "status_mismatches": verdict.status_mismatches,
        "killed": cluster.nodes[victim].id,
        "longest_unavailability_ms": window.as_millis() as u64,
        "longest_unavailability_from_s": gap_from.as_secs_f64(),
        "killed_at_s": killed_at.map(|t| t.as_secs_f64()),
        "restarted_at_s": restarted_at.map(|t| t.as_secs_f64()),
        "sale_s": sale_time.as_secs_f64(),
        "seed": args.seed,
    });
    let pass = verdict.oversold == 0
        && verdict.stock_mismatches == 0
        && verdict.lost == 0
        && verdict.duplicates == 0
        && sale.split_clicks.load(Ordering::Relaxed) == 0
        && verdict.status_mismatches == 0
        && verdict.unresolved == 0;
    if args.json {
        println!("{}", json!({"pass": pass, "report": report}));
    } else {
        println!("\nverdict:");
        println!("  orders placed (acknowledged)    {}", verdict.placed);
        println!("  orders refused                  {} {:?}", verdict.refused, verdict.refused_by);
        if verdict.unresolved > 0 {
            println!("  requests never answered         {} (e.g. {:?})", verdict.unresolved, verdict.unresolved_why);
        }
        println!(
            "  {HOT}: sold {} + reserved {} + available {} = {} of {} units",
            verdict.hot.1,
            verdict.hot.0,
            verdict.hot.2,
            verdict.hot.0 + verdict.hot.1 + verdict.hot.2,
            args.hot_stock
        );
        println!("  oversold units                  {}", verdict.oversold);
        println!("  SKUs whose stock does not match their orders  {}", verdict.stock_mismatches);
        println!("  acknowledged orders lost        {}", verdict.lost);
        println!(
            "  duplicate orders                {}",
            verdict.duplicates + sale.split_clicks.load(Ordering::Relaxed)
        );
        println!("  orders in the wrong state       {}", verdict.status_mismatches);
        let at = |t: Option<Duration>| t.map_or_else(|| "-".to_owned(), |t| format!("{:.2} s", t.as_secs_f64()));
        println!(
            "  longest wait for the hot SKU    {} ms from t={:.2} s (kill -9 of {} at t={}, restart at t={})",
            window.as_millis(),
            gap_from.as_secs_f64(),
            cluster.nodes[victim].id,
            at(killed_at),
            at(restarted_at)
        );
        println!("  {}", if pass { "PASS: every check holds" } else { "FAIL" });
    }
    cluster.stop();
    if args.keep {
        eprintln!("data and logs kept in {}", temp.keep().display());
    }
    Ok(if pass { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// The id of the node leading `partition`, from the cluster view.
async fn hot_leader(client: &Client, partition: u32) -> Option<String> {
    let view = client.cluster().await.ok()?;
    view["partitions"].as_array()?.iter().find(|p| p["id"] == partition)?["leader"].as_str().map(str::to_owned)
}

/// One customer: the hot SKU once (sometimes double-clicked), then a normal SKU; pays or cancels some.
async fn buy(client: &Client, sale: &Sale, rng: &mut u64, user: usize, start: Instant) {
    let user_id = format!("user-{user}");
    let hot = NewOrder {
        idempotency_key: format!("hot-{user}"),
        user_id: user_id.clone(),
        items: vec![Item { sku: HOT.into(), qty: 1 }],
    };
    let double_click = next(rng).is_multiple_of(5);
    let result = if double_click {
        let (a, b) = tokio::join!(client.place_order(&hot), client.place_order(&hot));
        if let (Ok(a), Ok(b)) = (&a, &b) {
            if a.order.order_id != b.order.order_id {
                sale.split_clicks.fetch_add(1, Ordering::Relaxed);
            }
        }
        if a.is_ok() {
            a
        } else {
            b
        }
    } else {
        client.place_order(&hot).await
    };
    if matches!(result, Ok(_) | Err(Error::Api { .. })) {
        if let Ok(mut answers) = sale.hot_answers.lock() {
            answers.push(start.elapsed());
        }
    }
    record(client, sale, rng, &user_id, &hot, told(&result)).await;
    // A cart of one or two normal SKUs; two usually live in different partitions (a saga).
    let first = (next(rng) % NORMAL.len() as u64) as usize;
    let mut items = vec![Item { sku: NORMAL[first].into(), qty: 1 + (next(rng) % 3) as u32 }];
    if next(rng).is_multiple_of(2) {
        items.push(Item { sku: NORMAL[(first + 1) % NORMAL.len()].into(), qty: 1 });
    }
    let normal = NewOrder { idempotency_key: format!("n-{user}"), user_id: user_id.clone(), items };
    let result = client.place_order(&normal).await;
    record(client, sale, rng, &user_id, &normal, told(&result)).await;
}

/// Counts what the buyer was told, then pays (60%) or cancels (10%) a placed order.
async fn record(client: &Client, sale: &Sale, rng: &mut u64, user: &str, order: &NewOrder, told: Told) {
    let (mut paid, mut cancelled) = (false, false);
    match &told {
        Told::Placed { order_id, .. } => {
            sale.placed.fetch_add(1, Ordering::Relaxed);
            let roll = next(rng) % 10;
            if roll < 6 {
                paid = client.pay(order_id).await.is_ok_and(|o| o.status == "paid");
            } else if roll < 7 {
                cancelled = client.cancel(order_id).await.is_ok_and(|o| o.status == "cancelled");
            }
        }
        Told::Rejected(_) => {
            sale.refused.fetch_add(1, Ordering::Relaxed);
        }
        Told::Unknown(_) => {
            sale.unknown.fetch_add(1, Ordering::Relaxed);
        }
    }
    if let Ok(mut attempts) = sale.attempts.lock() {
        attempts.push(Attempt {
            user: user.to_owned(),
            key: order.idempotency_key.clone(),
            items: order.items.clone(),
            told,
            paid,
            cancelled,
        });
    }
}

/// The longest stretch of the sale without a final answer to a hot-SKU request: when it began and how long it
/// lasted, both measured from the start of the sale.
fn longest_gap(answers: &[Duration], sale: Duration) -> (Duration, Duration) {
    let mut times = answers.to_vec();
    times.sort();
    let (mut from, mut longest) = (Duration::ZERO, Duration::ZERO);
    let mut last = Duration::ZERO;
    for t in times.into_iter().chain([sale]) {
        if t.saturating_sub(last) > longest {
            (from, longest) = (last, t - last);
        }
        last = t;
    }
    (from, longest)
}

#[derive(Debug, Default)]
struct Verdict {
    placed: u64,
    refused: u64,
    /// Requests without an answer during the sale, answered when asked again afterwards.
    resolved: u64,
    unresolved: u64,
    /// Why some requests are still without an answer (a few examples).
    unresolved_why: Vec<String>,
    refused_by: BTreeMap<String, u64>,
    lost: u64,
    duplicates: u64,
    oversold: u64,
    stock_mismatches: u64,
    status_mismatches: u64,
    /// The hot SKU's (reserved, sold, available).
    hot: (u64, u64, u64),
}

async fn check(client: &Client, sale: &Sale, hot_stock: u64) -> anyhow::Result<Verdict> {
    let mut v = Verdict::default();
    let mut attempts = std::mem::take(&mut *sale.attempts.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
    // Requests left without an answer: ask again with the same key; the answer is the one the cluster kept.
    for a in attempts.iter_mut() {
        if let Told::Unknown(_) = a.told {
            let order = NewOrder { idempotency_key: a.key.clone(), user_id: a.user.clone(), items: a.items.clone() };
            let result = client.place_order(&order).await;
            a.told = told(&result);
            match a.told {
                Told::Unknown(_) => v.unresolved += 1,
                _ => v.resolved += 1,
            }
        }
    }
    // Read every acknowledged order back (from every node in turn), 64 at a time.
    let mut held: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut ids_per_key: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    let placed: Vec<&Attempt> = attempts.iter().filter(|a| matches!(a.told, Told::Placed { .. })).collect();
    for chunk in placed.chunks(64) {
        let reads = chunk.iter().map(|a| {
            let Told::Placed { order_id, .. } = &a.told else { unreachable!("filtered") };
            client.order(order_id)
        });
        let orders = futures_util::future::join_all(reads).await;
        for (a, read) in chunk.iter().zip(orders) {
            let Told::Placed { order_id } = &a.told else { unreachable!("filtered") };
            v.placed += 1;
            ids_per_key.entry((a.user.clone(), a.key.clone())).or_default().push(order_id.clone());
            match read {
                Ok(o)
                    if o.user_id == a.user
                        && o.idempotency_key == a.key
                        && o.items.len() == a.items.len()
                        && o.items.iter().zip(&a.items).all(|(l, i)| l.sku == i.sku && l.qty == i.qty) =>
                {
                    let expected = if a.paid {
                        "paid"
                    } else if a.cancelled {
                        "cancelled"
                    } else {
                        "confirmed"
                    };
                    if o.status != expected {
                        v.status_mismatches += 1;
                    }
                    for line in &o.items {
                        let h = held.entry(line.sku.clone()).or_default();
                        match o.status.as_str() {
                            "confirmed" => h.0 += u64::from(line.qty),
                            "paid" => h.1 += u64::from(line.qty),
                            _ => {}
                        }
                    }
                }
                _ => v.lost += 1,
            }
        }
    }
    for a in &attempts {
        match &a.told {
            Told::Rejected(code) => *v.refused_by.entry(code.clone()).or_default() += 1,
            Told::Unknown(why) if v.unresolved_why.len() < 3 => v.unresolved_why.push(why.clone()),
            _ => {}
        }
    }
    v.refused = v.refused_by.values().sum();
    v.duplicates = ids_per_key.values().filter(|ids| ids.windows(2).any(|w| w[0] != w[1])).count() as u64;
    // Each SKU's stock must equal what its acknowledged orders hold: a unit more would be an order nobody was
    // told about (a duplicate), a unit less a lost one.
    for (sku, stock) in std::iter::once((HOT, hot_stock)).chain(NORMAL.iter().map(|s| (*s, NORMAL_STOCK))) {
        let p = client.product(sku).await?;
        let (reserved, sold) = held.get(sku).copied().unwrap_or((0, 0));
        if p.reserved + p.sold > stock {
            v.oversold += p.reserved + p.sold - stock;
        }
        if p.available + p.reserved + p.sold != stock || p.reserved != reserved || p.sold != sold {
            v.stock_mismatches += 1;
        }
        if sku == HOT {
            v.hot = (p.reserved, p.sold, p.available);
        }
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_gap_is_found_with_when_it_began_whatever_the_order_of_the_answers() {
        let ms = Duration::from_millis;
        // Answers at 10, 50, 300 and 320 ms of a 400 ms sale: the longest stretch without one is 50..300.
        assert_eq!(longest_gap(&[ms(300), ms(10), ms(320), ms(50)], ms(400)), (ms(50), ms(250)));
        // The stretch after the last answer counts, up to the end of the sale; so does the one before the first.
        assert_eq!(longest_gap(&[ms(10), ms(20)], ms(500)), (ms(20), ms(480)));
        assert_eq!(longest_gap(&[ms(200), ms(210)], ms(250)), (ms(0), ms(200)));
        assert_eq!(longest_gap(&[], ms(70)), (ms(0), ms(70)));
    }
}
