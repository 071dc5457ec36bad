//! What a partition's trading state holds per order: the bytes the heap holds after 200,000 orders, counted by an
//! instrumented allocator (requested sizes; the allocator's own rounding comes on top). `placed` is a flash sale
//! with stock for every order (each order kept, with its idempotency record and the units its customer holds);
//! `refused` is the same sale sold out (each request's refusal remembered for its key). Every replica holds this.
//!
//! `cargo bench -p rampart-trading --bench memory`

mod common;

use std::alloc::System;

use rampart_trading::Stamped;
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const ORDERS: u64 = 200_000;

/// Order `n` as `rampart bench --workload flash-sale` makes it: a user id of the run, the client and the count.
fn order(n: u64) -> Stamped {
    common::order(n, format!("1764270000-c{}-{n}", n % 64), format!("k{n}"))
}

/// Heap bytes the shard holds per order after `ORDERS` orders for a product of `stock` units.
fn per_order(stock: u64) -> f64 {
    let mut shard = common::hot_product(stock);
    let region = Region::new(GLOBAL);
    for n in 0..ORDERS {
        shard.apply(&order(n));
    }
    let change = region.change();
    let held = change.bytes_allocated as f64 - change.bytes_deallocated as f64 + change.bytes_reallocated as f64;
    std::hint::black_box(&shard);
    held / ORDERS as f64
}

fn main() {
    // `cargo test --benches` runs this too: one pass is all it needs.
    println!("memory/placed   {:>7.0} bytes per order", per_order(10 * ORDERS));
    println!("memory/refused  {:>7.0} bytes per order", per_order(0));
}
