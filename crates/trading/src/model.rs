//! The values the state machine takes and gives: commands, outcomes, products, orders and stored rows.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A product's stock-keeping unit.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Sku(pub String);

/// A buyer.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct UserId(pub String);

/// An order: `{partition}-{sequence}`, unique in the cluster and routable (its partition is in its name).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct OrderId(pub String);

impl OrderId {
    pub fn new(partition: u32, seq: u64) -> OrderId {
        OrderId(format!("{partition}-{seq}"))
    }

    /// The partition that holds this order, if the id is well formed.
    pub fn partition(&self) -> Option<u32> {
        let (p, seq) = self.0.split_once('-')?;
        seq.parse::<u64>().ok()?;
        p.parse().ok()
    }
}

macro_rules! display_inner {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    )*};
}
display_inner!(Sku, UserId, OrderId);

/// A product and its stock. `added` is every unit ever added (initial stock and restocks):
/// `available + reserved + sold == added` always.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Product {
    pub sku: Sku,
    pub name: String,
    pub price_cents: u64,
    pub max_per_user: Option<u32>,
    pub available: u64,
    /// Held by confirmed, unpaid orders.
    pub reserved: u64,
    /// Held by paid orders.
    pub sold: u64,
    pub added: u64,
}

/// One line of an order request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    pub sku: Sku,
    pub qty: u32,
}

/// One line of a placed order, priced when it was placed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineItem {
    pub sku: Sku,
    pub qty: u32,
    pub price_cents: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OrderStatus {
    /// Stock reserved, payment awaited until the deadline.
    Confirmed,
    /// Reserved stock became sold. Final.
    Paid,
    /// Cancelled by the buyer; stock released. Final.
    Cancelled,
    /// Not paid by the deadline; stock released. Final.
    Expired,
}

impl OrderStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Confirmed => "confirmed",
            OrderStatus::Paid => "paid",
            OrderStatus::Cancelled => "cancelled",
            OrderStatus::Expired => "expired",
        }
    }

    /// Whether the order's units count against its buyer's per-product limit.
    pub fn holds_stock(self) -> bool {
        matches!(self, OrderStatus::Confirmed | OrderStatus::Paid)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    pub id: OrderId,
    pub user_id: UserId,
    pub idempotency_key: String,
    pub items: Vec<LineItem>,
    pub total_cents: u64,
    pub status: OrderStatus,
    pub placed_ms: u64,
    /// Unpaid after this instant, the order expires.
    pub pay_deadline_ms: u64,
    /// When it was paid, cancelled or expired.
    pub closed_ms: Option<u64>,
    /// Its idempotency key was forgotten (retention over): the same key may now name a new order.
    pub key_released: bool,
}

/// What a client asked for. Business time comes with it in [`Stamped`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Creates a product with its initial stock.
    CreateProduct { sku: Sku, name: String, price_cents: u64, stock: u64, max_per_user: Option<u32> },
    /// Adds `qty` units to a product's available stock.
    Restock { sku: Sku, qty: u64 },
    /// Reserves every item or none. A retry with the same `(user_id, idempotency_key)` returns the first outcome.
    PlaceOrder { user_id: UserId, idempotency_key: String, items: Vec<Item>, pay_deadline_ms: u64 },
    /// Reserved becomes sold. Paying a paid order is a no-op.
    Pay { order_id: OrderId },
    /// Releases the reserved stock. Cancelling a cancelled order is a no-op.
    Cancel { order_id: OrderId },
    /// Expires every unpaid order whose deadline is at or before `at_ms`, and forgets idempotency records of
    /// orders placed before `forget_before_ms`.
    Expire { forget_before_ms: u64 },
}

/// A command with the leader's clock reading when it proposed it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamped {
    pub at_ms: u64,
    pub command: Command,
}

/// Why a command changed nothing. Applied identically on every replica; a rejected order is remembered for
/// its idempotency key like a placed one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Rejection {
    AlreadyExists(Sku),
    UnknownSku(Sku),
    OutOfStock {
        sku: Sku,
        available: u64,
    },
    LimitExceeded {
        sku: Sku,
        max_per_user: u32,
    },
    UnknownOrder(OrderId),
    /// The order is in a final state that the command cannot leave (paying a cancelled order, cancelling a paid one).
    InvalidState {
        order_id: OrderId,
        status: OrderStatus,
    },
    /// The idempotency key was used before by this user for a different request.
    KeyReused {
        order_id: Option<OrderId>,
    },
    /// A field out of range; the boundary should have refused it first.
    Invalid(String),
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::AlreadyExists(s) => write!(f, "product {s} already exists"),
            Rejection::UnknownSku(s) => write!(f, "no product {s}"),
            Rejection::OutOfStock { sku, available } => write!(f, "{sku}: only {available} available"),
            Rejection::LimitExceeded { sku, max_per_user } => write!(f, "{sku}: at most {max_per_user} per user"),
            Rejection::UnknownOrder(o) => write!(f, "no order {o}"),
            Rejection::InvalidState { order_id, status } => write!(f, "order {order_id} is {}", status.as_str()),
            Rejection::KeyReused { .. } => write!(f, "idempotency key already used for a different request"),
            Rejection::Invalid(why) => f.write_str(why),
        }
    }
}

/// What applying a command gave.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Product(Product),
    /// `replayed` when the order existed already (an idempotent retry, or pay/cancel of an order already there).
    Order {
        order: Order,
        replayed: bool,
    },
    Expired {
        orders: u32,
        forgotten: u32,
    },
    /// `replayed` when this is a remembered rejection returned to a retry.
    Rejected {
        rejection: Rejection,
        replayed: bool,
    },
}

/// Where a stored row lives. Keys are laid out so that new rows sort after old ones (order ids grow within a
/// partition; refusals carry a big-endian sequence number): a batch of new rows lands on the same few pages.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum RowKey {
    Meta,
    Product(Sku),
    Order(OrderId),
    /// A refused order request kept for its idempotency key: the refusal's sequence number, big-endian.
    Refusal([u8; 8]),
}

/// A stored row. A placed order is its own idempotency record (it names its user and key); the per-user
/// holdings, the deadline index and the idempotency index are derived on restore.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Row {
    /// The sequences and the latest business time seen.
    Meta {
        next_seq: u64,
        next_refusal: u64,
        clock_ms: u64,
    },
    Product(Product),
    Order(Order),
    Refusal {
        seq: u64,
        refusal: Refusal,
    },
}

/// A refused order request, remembered so that a retry gets the same refusal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    pub user_id: UserId,
    pub key: String,
    /// The request's items, to tell a retry from a different request under the same key.
    pub items: Vec<Item>,
    pub at_ms: u64,
    pub rejection: Rejection,
}

impl Row {
    /// Where this row is stored.
    pub fn key(&self) -> RowKey {
        match self {
            Row::Meta { .. } => RowKey::Meta,
            Row::Product(p) => RowKey::Product(p.sku.clone()),
            Row::Order(o) => RowKey::Order(o.id.clone()),
            Row::Refusal { seq, .. } => RowKey::Refusal(seq.to_be_bytes()),
        }
    }
}
