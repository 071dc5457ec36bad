//! The cost of applying orders to one partition's shard: the work every replica does per order.
//!
//! `place_order/hot_sku` is a flash sale: new customers ordering one unit of one SKU (with a per-user limit) into a
//! shard that already holds `N` orders. `place_order/sold_out` is the same once the stock is gone: each order
//! refused and remembered. `place_order/retry` replays an order that is remembered.
//! `rows_view/*` takes the view a snapshot is encoded from, of a sold-out partition that remembers 100,000 refused
//! orders and of one holding 100,000 saga legs of orders placed in other partitions.
//!
//! `build/*` applies 100,000 orders to a shard built from nothing, no part of it shared with a clone (as in a node).
//!
//! `cargo bench -p rampart-trading --bench apply`

mod common;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use rampart_trading::{Command, Item, OrderId, Shard, Sku, Stamped, UserId};

use common::SKU;

fn order(n: u64) -> Stamped {
    common::order(n, format!("bench-run-customer-{n}"), format!("key-{n}"))
}

/// A shard holding one hot product and `orders` orders for it.
fn shard_with(orders: u64) -> Shard {
    shard_with_stock(orders, PLENTY)
}

/// Stock that no bench sells out.
const PLENTY: u64 = 1_000_000_000;

/// A shard holding one hot product of `stock` units, after `orders` one-unit orders for it (past the stock, each
/// a remembered refusal).
fn shard_with_stock(orders: u64, stock: u64) -> Shard {
    let mut shard = common::hot_product(stock);
    for n in 0..orders {
        shard.apply(&order(n));
    }
    shard
}

fn place_order(c: &mut Criterion) {
    let mut group = c.benchmark_group("place_order");
    const BATCH: u64 = 1_000;
    group.throughput(Throughput::Elements(BATCH));
    // New customers' orders into a shard with stock, and (sold out) orders refused, each remembered for its key.
    let cases = [
        ("hot_sku/0_held", 0, PLENTY),
        ("hot_sku/100000_held", 100_000, PLENTY),
        ("sold_out/100000_refused", 101_000, 1_000),
    ];
    for (name, orders, stock) in cases {
        let base = shard_with_stock(orders, stock);
        let mut next = orders;
        group.bench_function(name, |b| {
            b.iter_batched_ref(
                || {
                    let commands: Vec<Stamped> = (next..next + BATCH).map(order).collect();
                    next += BATCH;
                    (base.clone(), commands)
                },
                |(shard, commands)| {
                    for c in commands.iter() {
                        std::hint::black_box(shard.apply(c));
                    }
                },
                BatchSize::LargeInput,
            )
        });
    }
    let mut shard = shard_with(100_000);
    let retries: Vec<Stamped> = (0..BATCH).map(|n| order(n * 97)).collect();
    group.bench_function("retry/100000_held", |b| {
        b.iter(|| {
            for c in &retries {
                std::hint::black_box(shard.apply(c));
            }
        })
    });
    group.finish();
    // The cases above clone a shard and apply to the clone: the persistent maps then copy each path they change
    // (nothing else shares them in a node). Here a shard is built from nothing, nothing shared: 100,000 orders,
    // the mean cost of one as the shard grows.
    let mut group = c.benchmark_group("build");
    group.sample_size(10);
    group.throughput(Throughput::Elements(100_000));
    group.bench_function("hot_sku/100000_orders", |b| b.iter(|| std::hint::black_box(shard_with(100_000))));
    group.bench_function("sold_out/100000_refused", |b| b.iter(|| std::hint::black_box(shard_with_stock(100_000, 0))));
    group.finish();
}

fn rows_view(c: &mut Criterion) {
    let mut group = c.benchmark_group("rows_view");
    let sold_out = shard_with_stock(101_000, 1_000);
    group.bench_function("sold_out_100000_refused", |b| b.iter(|| std::hint::black_box(sold_out.rows_view())));
    let mut legs = shard_with(0);
    for n in 0..100_000 {
        let reserve = Command::ReserveLeg {
            order_id: OrderId::new(3, n),
            user_id: UserId(format!("bench-run-customer-{n}").into()),
            items: vec![Item { sku: Sku(SKU.into()), qty: 1 }],
            placed_ms: 1_700_000_000_000,
        };
        legs.apply(&Stamped { at_ms: 1_700_000_000_000, command: reserve });
    }
    group.bench_function("100000_holds", |b| b.iter(|| std::hint::black_box(legs.rows_view())));
    group.finish();
}

criterion_group!(benches, place_order, rows_view);
criterion_main!(benches);
