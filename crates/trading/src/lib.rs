//! Rampart's trading state machine: products, stock, orders, payments and idempotency records of one partition.
//!
//! It is pure and deterministic: no clock, no IO, no randomness, no wire format. Every replica of a partition
//! applies the same [`Stamped`] commands in the same order and reaches the same state and the same outcomes. The
//! leader stamps business time (`at_ms`, the payment deadline, the retention cut-off) into the command; a replica
//! never reads a clock. A snapshot holds the shard as typed rows ([`Shard::rows`]); [`Shard::restore`] rebuilds the
//! shard from them, checking every invariant.
//!
//! **Invariants**, asserted after every command that touches a product (kept in release: this is stock):
//! - `available + reserved + sold == added` for every product (`added` is the initial stock plus every restock),
//!   and none of them is negative (they are unsigned, and every subtraction is checked);
//! - units a user holds in confirmed or paid orders never exceed the product's `max_per_user`;
//! - an order's status only moves `confirmed → paid | cancelled | expired`; `paid`, `cancelled`, `expired` are final;
//! - a `(user, idempotency key)` pair names at most one outcome until its record's retention ends.
//!
//! Business outcomes (out of stock, limit exceeded, unknown order) are values ([`Rejection`]), not errors: they
//! are applied, and remembered for idempotent retries, the same on every replica.

mod model;
mod shard;

pub use model::{
    Command, Hold, HoldState, Item, LineItem, Order, OrderId, OrderStatus, Outcome, Product, Refusal, Rejection, Row,
    Sku, Stamped, UserId,
};
pub use shard::{RestoreError, RowsView, Shard};

/// The most line items one order may hold.
pub const MAX_ITEMS: usize = 32;
/// The most units of one SKU one line item may ask for.
pub const MAX_QTY: u32 = 1_000_000;
/// The most stock a product may hold (and the most one restock may add).
pub const MAX_STOCK: u64 = 1_000_000_000_000;
/// The highest price, in cents.
pub const MAX_PRICE_CENTS: u64 = 1_000_000_000_000;
