//! What the trading benches share: a shard holding one hot product, and one-unit orders for it.

use std::collections::BTreeMap;

use rampart_trading::{Command, Item, Shard, Sku, Stamped, UserId};

pub const SKU: &str = "flash-sale-hot-sku";

/// A shard holding only the hot product: `stock` units, one per customer.
pub fn hot_product(stock: u64) -> Shard {
    let mut shard = Shard::new(7);
    let create = Command::CreateProduct {
        sku: Sku(SKU.into()),
        name: "hot".into(),
        price_cents: 1999,
        stock,
        max_per_user: Some(1),
    };
    shard.apply(&Stamped { at_ms: 1_700_000_000_000, command: create });
    shard
}

/// The `n`th order of one unit of the hot product, by `user_id` under `key`.
pub fn order(n: u64, user_id: String, key: String) -> Stamped {
    Stamped {
        at_ms: 1_700_000_000_000 + n / 10,
        command: Command::PlaceOrder {
            user_id: UserId(user_id.into()),
            idempotency_key: key,
            items: vec![Item { sku: Sku(SKU.into()), qty: 1 }],
            pay_deadline_ms: 1_700_000_900_000 + n / 10,
            remote: BTreeMap::new(),
        },
    }
}
