//! The values the state machine takes and gives: commands, outcomes, products, orders and stored rows.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// A product's stock-keeping unit. Shared (`Arc<str>`): the product, each order line and each buyer's holding
/// name it, and a copy is a reference count.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Sku(pub Arc<str>);

/// A buyer. Shared (`Arc<str>`): an order, its idempotency record and the buyer's holdings name it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct UserId(pub Arc<str>);

/// An order: `{partition}-{sequence}`, unique in the cluster and routable (its partition is in its name). Held as
/// the two numbers (every replica keeps every order of its partitions, and this id in five of its indexes), and
/// written and read as that string, in decimal without leading zeros: the only spelling of an id, so that two
/// strings name the same order only if they are equal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OrderId {
    partition: u32,
    seq: u64,
}

impl OrderId {
    pub fn new(partition: u32, seq: u64) -> OrderId {
        OrderId { partition, seq }
    }

    /// The partition that holds this order.
    pub fn partition(&self) -> u32 {
        self.partition
    }

    /// Reads an id written by [`OrderId`]'s `Display`; any other spelling (a sign, a leading zero, spaces, a
    /// number out of range) is not an order id.
    pub fn parse(s: &str) -> Option<OrderId> {
        fn number<T: std::str::FromStr>(digits: &str) -> Option<T> {
            let canonical = digits.bytes().all(|b| b.is_ascii_digit()) && (digits == "0" || !digits.starts_with('0'));
            if canonical {
                digits.parse().ok()
            } else {
                None
            }
        }
        let (partition, seq) = s.split_once('-')?;
        Some(OrderId { partition: number(partition)?, seq: number(seq)? })
    }
}

impl fmt::Display for OrderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.partition, self.seq)
    }
}

impl Serialize for OrderId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for OrderId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<OrderId, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = OrderId;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an order id, {partition}-{sequence}")
            }

            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<OrderId, E> {
                OrderId::parse(s).ok_or_else(|| E::invalid_value(serde::de::Unexpected::Str(s), &self))
            }
        }
        deserializer.deserialize_str(Visitor)
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
display_inner!(Sku, UserId);

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

/// One line of a placed order, priced when it was reserved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineItem {
    pub sku: Sku,
    pub qty: u32,
    pub price_cents: u64,
    /// The partition holding this line's stock, when it is not the order's own (a saga leg).
    pub remote: Option<u32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OrderStatus {
    /// An order spanning partitions whose other partitions' reservations are under way (a saga): its local
    /// lines are reserved; it becomes confirmed or aborted.
    Pending,
    /// Stock reserved, payment awaited until the deadline.
    Confirmed,
    /// Reserved stock became sold. Final.
    Paid,
    /// Cancelled by the buyer; stock released. Final.
    Cancelled,
    /// Not paid by the deadline; stock released. Final.
    Expired,
    /// A saga refused by another partition (out of stock there, for instance): nothing is held. Final.
    Aborted,
}

impl OrderStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Pending => "pending",
            OrderStatus::Confirmed => "confirmed",
            OrderStatus::Paid => "paid",
            OrderStatus::Cancelled => "cancelled",
            OrderStatus::Expired => "expired",
            OrderStatus::Aborted => "aborted",
        }
    }

    /// Whether the order's units count against its buyer's per-product limit.
    pub fn holds_stock(self) -> bool {
        matches!(self, OrderStatus::Pending | OrderStatus::Confirmed | OrderStatus::Paid)
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
    /// Why a saga was aborted.
    pub rejection: Option<Rejection>,
    /// For an order with remote lines: whether every other partition's hold matches the status (reserved for
    /// confirmed, sold for paid, released for cancelled, expired or aborted). The saga driver works until it is.
    pub legs_synced: bool,
}

impl Order {
    /// The partitions holding this order's remote lines, each once, in order.
    pub fn leg_partitions(&self) -> Vec<u32> {
        let mut parts: Vec<u32> = self.items.iter().filter_map(|l| l.remote).collect();
        parts.sort_unstable();
        parts.dedup();
        parts
    }

    /// Whether the saga driver has work on this order.
    pub fn needs_driving(&self) -> bool {
        self.items.iter().any(|l| l.remote.is_some()) && (self.status == OrderStatus::Pending || !self.legs_synced)
    }
}

/// Another partition's order lines held here (a saga leg), by the order's id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    pub order_id: OrderId,
    pub user_id: UserId,
    pub items: Vec<LineItem>,
    pub state: HoldState,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HoldState {
    Reserved,
    Sold,
    /// Released, or a release that arrived before any reservation (a tombstone: a late reservation is refused).
    Released,
    /// The reservation was refused; a retry gets the same refusal.
    Refused(Rejection),
}

impl HoldState {
    /// Whether the leg holds units (reserved or sold). One that does not is over, and is forgotten after the
    /// retention.
    pub fn holds_stock(&self) -> bool {
        matches!(self, HoldState::Reserved | HoldState::Sold)
    }
}

/// What a client asked for. Business time comes with it in [`Stamped`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Creates a product with its initial stock.
    CreateProduct { sku: Sku, name: String, price_cents: u64, stock: u64, max_per_user: Option<u32> },
    /// Adds `qty` units to a product's available stock.
    Restock { sku: Sku, qty: u64 },
    /// Reserves every item or none. A retry with the same `(user_id, idempotency_key)` returns the first outcome.
    /// Items whose SKU lives in another partition are named in `remote` (SKU → partition): only the local lines
    /// are reserved here, and the order is `Pending` until [`Command::ResolveSaga`].
    PlaceOrder {
        user_id: UserId,
        idempotency_key: String,
        items: Vec<Item>,
        pay_deadline_ms: u64,
        remote: std::collections::BTreeMap<Sku, u32>,
    },
    /// A saga leg, as builds before [`Command::ReserveLeg`] wrote it (still applied for their log entries): the
    /// same, without the order's placement time, so never refused for its age.
    Reserve { order_id: OrderId, user_id: UserId, items: Vec<Item> },
    /// A saga leg: releases the order's lines held here (a no-op if released; a tombstone if never reserved).
    Release { order_id: OrderId },
    /// A saga leg: the order's reserved lines here become sold.
    Settle { order_id: OrderId },
    /// Ends a pending saga on its home partition: confirmed with the legs' priced lines, or aborted.
    ResolveSaga { order_id: OrderId, result: Result<Vec<LineItem>, Rejection> },
    /// Records that every leg of the order matches `status`.
    LegsSynced { order_id: OrderId, status: OrderStatus },
    /// Reserved becomes sold. Paying a paid order is a no-op.
    Pay { order_id: OrderId },
    /// Releases the reserved stock. Cancelling a cancelled order is a no-op.
    Cancel { order_id: OrderId },
    /// Expires every unpaid order whose deadline is at or before `at_ms`, forgets idempotency records of
    /// orders placed before `forget_before_ms`, and forgets saga legs here that were released or refused before
    /// it.
    Expire { forget_before_ms: u64 },
    /// A saga leg: reserves another partition's order lines here, all or nothing. Idempotent by order id; refused
    /// (answered as released, reserving and recording nothing) if the order's lines were released here first, or
    /// if the order was placed (`placed_ms`, its home's business time) before the cut-off of the closed legs
    /// forgotten here, whose tombstones may be gone: a reservation that late comes from a driver that missed the
    /// saga's end.
    ReserveLeg { order_id: OrderId, user_id: UserId, items: Vec<Item>, placed_ms: u64 },
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
    /// The order as the shard holds it (shared, not copied: every replica makes this outcome, and only the
    /// leader's is read); `replayed` when the order existed already (an idempotent retry, or pay/cancel of an
    /// order already there).
    Order {
        order: Arc<Order>,
        replayed: bool,
    },
    Expired {
        orders: u32,
        /// Idempotency records and closed saga legs forgotten.
        forgotten: u32,
    },
    /// A saga leg's state here, after the command.
    Hold(Hold),
    /// `replayed` when this is a remembered rejection returned to a retry.
    Rejected {
        rejection: Rejection,
        replayed: bool,
    },
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
    /// Shared with the shard: a snapshot's rows copy no order.
    Order(Arc<Order>),
    Refusal {
        seq: u64,
        refusal: Refusal,
    },
    Hold(Hold),
    /// A saga leg that holds nothing any more (released, a tombstone, or refused), with the business time it
    /// closed: forgotten once that is older than the idempotency retention. (A sold leg is kept, as a paid order
    /// is: its units still count against the buyer's limit.)
    ClosedHold {
        hold: Hold,
        closed_ms: u64,
    },
    /// Closed saga legs were forgotten up to this business time: a reservation for an order placed before it is
    /// refused, as its tombstone would have refused it.
    HoldsForgotten {
        before_ms: u64,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_order_id_is_written_and_read_in_one_spelling_only() {
        let id = OrderId::new(55, 12_345);
        assert_eq!((id.to_string().as_str(), id.partition()), ("55-12345", 55));
        assert_eq!(OrderId::parse("55-12345"), Some(id));
        assert_eq!(OrderId::parse("0-0"), Some(OrderId::new(0, 0)));
        let max = format!("{}-{}", u32::MAX, u64::MAX);
        assert_eq!(OrderId::parse(&max), Some(OrderId::new(u32::MAX, u64::MAX)));
        for bad in [
            "",
            "-",
            "55",
            "55-",
            "-1",
            "055-1",
            "55-01",
            "+5-1",
            "5-+1",
            "5 -1",
            "5-1 ",
            "5-1-2",
            "x-1",
            "4294967296-1",
        ] {
            assert_eq!(OrderId::parse(bad), None, "{bad:?} was read as an order id");
        }
        // Stored and sent as the string: data written when the id was a string reads back, and a stored id in
        // another spelling is an error, not another order.
        let bytes = postcard::to_allocvec(&id).unwrap();
        assert_eq!(bytes, postcard::to_allocvec("55-12345").unwrap());
        assert_eq!(postcard::from_bytes::<OrderId>(&bytes).unwrap(), id);
        assert!(postcard::from_bytes::<OrderId>(&postcard::to_allocvec("55-012345").unwrap()).is_err());
    }
}
