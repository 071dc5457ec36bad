//! The cost of applying orders to one partition's shard: the work every replica does per order.
//!
//! `place_order/hot_sku` is a flash sale: new customers ordering one unit of one SKU (with a per-user limit) into a
//! shard that already holds `N` orders. `place_order/retry` replays an order that is remembered.
//!
//! `cargo bench -p rampart-trading --bench apply`

use std::collections::BTreeMap;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use rampart_trading::{Command, Item, Shard, Sku, Stamped, UserId};

const SKU: &str = "flash-sale-hot-sku";

fn order(n: u64) -> Stamped {
    Stamped {
        at_ms: 1_700_000_000_000 + n / 10,
        command: Command::PlaceOrder {
            user_id: UserId(format!("bench-run-customer-{n}")),
            idempotency_key: format!("key-{n}"),
            items: vec![Item { sku: Sku(SKU.into()), qty: 1 }],
            pay_deadline_ms: 1_700_000_900_000 + n / 10,
            remote: BTreeMap::new(),
        },
    }
}

/// A shard holding one hot product and `orders` orders for it.
fn shard_with(orders: u64) -> Shard {
    let mut shard = Shard::new(7);
    let create = Command::CreateProduct {
        sku: Sku(SKU.into()),
        name: "hot".into(),
        price_cents: 1999,
        stock: 1_000_000_000,
        max_per_user: Some(1),
    };
    shard.apply(&Stamped { at_ms: 1_700_000_000_000, command: create });
    for n in 0..orders {
        shard.apply(&order(n));
    }
    shard
}

fn place_order(c: &mut Criterion) {
    let mut group = c.benchmark_group("place_order");
    const BATCH: u64 = 1_000;
    group.throughput(Throughput::Elements(BATCH));
    for held in [0, 100_000] {
        let base = shard_with(held);
        let mut next = held;
        group.bench_function(format!("hot_sku/{held}_held"), |b| {
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
}

criterion_group!(benches, place_order);
criterion_main!(benches);
