//! One partition's trading state and the rules that change it.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use crate::model::{
    Command, Hold, HoldState, Item, LineItem, Order, OrderId, OrderStatus, Outcome, Product, Refusal, Rejection, Row,
    Sku, Stamped, UserId,
};
use crate::{MAX_ITEMS, MAX_PRICE_CENTS, MAX_QTY, MAX_STOCK};

/// Why stored rows could not be turned back into a shard: they contradict each other, so they were not written
/// by this state machine (or were damaged in a way the checksums did not catch).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RestoreError {
    #[error("stored rows break an invariant: {0}")]
    Inconsistent(String),
}

/// A shard's rows at one applied command ([`Shard::rows_view`]), the same as [`Shard::rows`] gives. It encodes as
/// a sequence of rows, so it decodes as a `Vec<Row>`.
#[derive(Debug)]
pub struct RowsView {
    /// The meta row and the products.
    head: Vec<Row>,
    orders: imbl::OrdMap<OrderId, Arc<Order>>,
    refusals: imbl::OrdMap<u64, Refusal>,
    holds: imbl::OrdMap<OrderId, Hold>,
    closed_holds: imbl::OrdMap<OrderId, u64>,
}

impl RowsView {
    fn len(&self) -> usize {
        self.head.len() + self.orders.len() + self.refusals.len() + self.holds.len()
    }

    /// The rows, in [`Shard::rows`]'s order.
    pub fn rows(&self) -> impl Iterator<Item = Row> + '_ {
        let orders = self.orders.values().cloned().map(Row::Order);
        let refusals = self.refusals.iter().map(|(seq, refusal)| Row::Refusal { seq: *seq, refusal: refusal.clone() });
        let holds = self.holds.values().map(|hold| match self.closed_holds.get(&hold.order_id) {
            Some(closed_ms) => Row::ClosedHold { hold: hold.clone(), closed_ms: *closed_ms },
            None => Row::Hold(hold.clone()),
        });
        self.head.iter().cloned().chain(orders).chain(refusals).chain(holds)
    }
}

impl serde::Serialize for RowsView {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = serializer.serialize_seq(Some(self.len()))?;
        for row in self.rows() {
            seq.serialize_element(&row)?;
        }
        seq.end()
    }
}

/// The key of an index that is only looked up, never walked: ordered by a fixed hash of the key first. Every order
/// looks up two such indexes. Ordered by the key itself, a lookup compared the long shared prefixes of user ids a
/// dozen and more times (the largest cost of a replica's apply in a flash sale's profile); ordered by the hash, it
/// compares 8-byte numbers, and the key's bytes only once, on a match. A B-tree, not a hash table, which doubles
/// all at once (at a few hundred thousand orders that rehash held a partition's applies, on every replica at once,
/// for 100–250 ms), nor a hash trie, which held an entry in twice the memory (`benches/memory.rs`). Colliding
/// hashes cost a comparison of the keys, never a wrong answer, and since no walk of the index reaches an outcome,
/// nothing depends on the hash but speed.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Hashed<K> {
    hash: u64,
    key: K,
}

impl<K: Hash> Hashed<K> {
    fn new(key: K) -> Hashed<K> {
        let mut hasher = xxhash_rust::xxh3::Xxh3Default::new();
        key.hash(&mut hasher);
        Hashed { hash: hasher.finish(), key }
    }
}

/// What a remembered idempotency key names. The order or the refusal holds the key itself.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Remembered {
    Placed(OrderId),
    /// The refusal's sequence number in [`Shard::refusals`].
    Refused(u64),
}

/// The trading state of one partition.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Shard {
    partition: u32,
    next_seq: u64,
    /// The latest business time applied: commands stamped earlier (a new leader whose clock lags) act at this time.
    clock_ms: u64,
    products: BTreeMap<Sku, Product>,
    /// Persistent, as are the refusals and the holds: a snapshot takes them in constant time
    /// ([`Shard::rows_view`]). Each order is behind an `Arc`: an outcome and a snapshot's rows share it, and the
    /// map's nodes, copied on write while a snapshot holds them, hold pointers, not orders.
    orders: imbl::OrdMap<OrderId, Arc<Order>>,
    next_refusal: u64,
    /// The remembered refusals, by sequence number.
    refusals: imbl::OrdMap<u64, Refusal>,
    /// Other partitions' order lines held here (saga legs), by order id.
    holds: imbl::OrdMap<OrderId, Hold>,
    /// When each hold that holds nothing any more (released, a tombstone, refused) closed, by order id.
    closed_holds: imbl::OrdMap<OrderId, u64>,
    /// Closed holds that closed before this business time were forgotten; a reservation for an order placed
    /// before it is refused (its tombstone may be gone).
    holds_forgotten_before_ms: u64,
    /// Derived: what each remembered `(user, key)` names. Keyed by [`Hashed`], as is `held`: both are only looked
    /// up, never walked.
    idempotency: BTreeMap<Hashed<(UserId, String)>, Remembered>,
    /// Derived: units each user holds of each product in confirmed or paid orders.
    held: BTreeMap<Hashed<(Sku, UserId)>, u64>,
    /// Derived: confirmed orders by payment deadline.
    deadlines: BTreeSet<(u64, OrderId)>,
    /// Derived: orders whose saga has work left ([`Order::needs_driving`]), kept by [`Shard::order_changed`].
    driving: BTreeSet<OrderId>,
    /// Derived: idempotency records by the time they were made (each names its order or refusal, which holds
    /// the user and the key: no third copy of them here).
    remembered: BTreeSet<(u64, Remembered)>,
    /// Derived: closed holds by the time they closed.
    closing: BTreeSet<(u64, OrderId)>,
}

impl Shard {
    pub fn new(partition: u32) -> Shard {
        Shard { partition, ..Shard::default() }
    }

    /// Rebuilds a shard from the rows [`Shard::rows`] produced, checking every stock invariant.
    pub fn restore(partition: u32, rows: impl IntoIterator<Item = Row>) -> Result<Shard, RestoreError> {
        let mut shard = Shard::new(partition);
        for row in rows {
            match row {
                Row::Meta { next_seq, next_refusal, clock_ms } => {
                    shard.next_seq = next_seq;
                    shard.next_refusal = next_refusal;
                    shard.clock_ms = clock_ms;
                }
                Row::Product(p) => {
                    if !stock_adds_up(&p) {
                        return Err(RestoreError::Inconsistent(format!("product {}: stock does not add up", p.sku)));
                    }
                    shard.products.insert(p.sku.clone(), p);
                }
                Row::Order(o) => {
                    if !o.key_released {
                        let key = Hashed::new((o.user_id.clone(), o.idempotency_key.clone()));
                        shard.remembered.insert((o.placed_ms, Remembered::Placed(o.id)));
                        if shard.idempotency.insert(key, Remembered::Placed(o.id)).is_some() {
                            return Err(RestoreError::Inconsistent(format!(
                                "order {}: its key is remembered twice",
                                o.id
                            )));
                        }
                    }
                    shard.orders.insert(o.id, o);
                }
                Row::Hold(h) => {
                    // Written closed only by a build that did not record when a hold closed; dated below.
                    shard.insert_restored_hold(h)?;
                }
                Row::ClosedHold { hold, closed_ms } => {
                    if hold.state.holds_stock() {
                        return Err(RestoreError::Inconsistent(format!(
                            "hold {}: dated closed but still holds stock",
                            hold.order_id
                        )));
                    }
                    shard.closed_holds.insert(hold.order_id, closed_ms);
                    shard.insert_restored_hold(hold)?;
                }
                Row::HoldsForgotten { before_ms } => shard.holds_forgotten_before_ms = before_ms,
                Row::Refusal { seq, refusal } => {
                    // Each remembered refusal has a sequence number of its own, below the next one, and a key no
                    // other record has: a retry's lookup by key then always finds its refusal.
                    let key = Hashed::new((refusal.user_id.clone(), refusal.key.clone()));
                    shard.remembered.insert((refusal.at_ms, Remembered::Refused(seq)));
                    let twice = shard.idempotency.insert(key, Remembered::Refused(seq)).is_some()
                        || shard.refusals.insert(seq, refusal).is_some();
                    if twice || seq >= shard.next_refusal {
                        return Err(RestoreError::Inconsistent(format!("refusal {seq}: repeated or out of sequence")));
                    }
                }
            }
        }
        // A closed hold of the former format has no date: it counts as closed at the snapshot's business time, so
        // it is forgotten a retention after that (a replica that applied the log dates it earlier, and forgets it
        // earlier; the two differ only in answering a saga command for that order a retention after it ended).
        for h in shard.holds.values() {
            if !h.state.holds_stock() && !shard.closed_holds.contains_key(&h.order_id) {
                shard.closed_holds.insert(h.order_id, shard.clock_ms);
            }
        }
        shard.closing = shard.closed_holds.iter().map(|(id, at)| (*at, *id)).collect();
        let mut reserved: BTreeMap<Sku, u64> = BTreeMap::new();
        let mut sold: BTreeMap<Sku, u64> = BTreeMap::new();
        for o in shard.orders.values() {
            if o.status == OrderStatus::Confirmed {
                shard.deadlines.insert((o.pay_deadline_ms, o.id));
            }
            if o.needs_driving() {
                shard.driving.insert(o.id);
            }
            if !o.status.holds_stock() {
                continue;
            }
            for line in o.items.iter().filter(|l| l.remote.is_none()) {
                let units = u64::from(line.qty);
                *shard.held.entry(Hashed::new((line.sku.clone(), o.user_id.clone()))).or_default() += units;
                let to = if o.status == OrderStatus::Paid { &mut sold } else { &mut reserved };
                *to.entry(line.sku.clone()).or_default() += units;
            }
        }
        for h in shard.holds.values() {
            let to = match h.state {
                HoldState::Reserved => &mut reserved,
                HoldState::Sold => &mut sold,
                HoldState::Released | HoldState::Refused(_) => continue,
            };
            for line in &h.items {
                let units = u64::from(line.qty);
                *shard.held.entry(Hashed::new((line.sku.clone(), h.user_id.clone()))).or_default() += units;
                *to.entry(line.sku.clone()).or_default() += units;
            }
        }
        // Orders and products must agree; orders of a SKU are all in the SKU's partition.
        for p in shard.products.values() {
            let (r, s) = (reserved.remove(&p.sku).unwrap_or(0), sold.remove(&p.sku).unwrap_or(0));
            if (r, s) != (p.reserved, p.sold) {
                return Err(RestoreError::Inconsistent(format!(
                    "product {}: orders hold {r} reserved and {s} sold, the product says {} and {}",
                    p.sku, p.reserved, p.sold
                )));
            }
        }
        if let Some(sku) = reserved.keys().chain(sold.keys()).next() {
            return Err(RestoreError::Inconsistent(format!("orders hold stock of {sku}, which has no product row")));
        }
        Ok(shard)
    }

    /// A restored hold, refusing a second one for the same order.
    fn insert_restored_hold(&mut self, hold: Hold) -> Result<(), RestoreError> {
        let id = hold.order_id;
        if self.holds.insert(id, hold).is_some() {
            return Err(RestoreError::Inconsistent(format!("hold {id}: stored twice")));
        }
        Ok(())
    }

    pub fn partition(&self) -> u32 {
        self.partition
    }

    pub fn product(&self, sku: &Sku) -> Option<&Product> {
        self.products.get(sku)
    }

    pub fn order(&self, id: &OrderId) -> Option<&Order> {
        self.orders.get(id).map(Arc::as_ref)
    }

    pub fn products(&self) -> impl Iterator<Item = &Product> {
        self.products.values()
    }

    pub fn orders(&self) -> impl Iterator<Item = &Order> {
        self.orders.values().map(Arc::as_ref)
    }

    /// The latest business time applied.
    pub fn clock_ms(&self) -> u64 {
        self.clock_ms
    }

    /// Whether an [`Command::Expire`] at `now_ms` forgetting records before `forget_before_ms` would change anything:
    /// the leader proposes one only then.
    pub fn has_expiry_work(&self, now_ms: u64, forget_before_ms: u64) -> bool {
        self.deadlines.first().is_some_and(|(d, _)| *d <= now_ms)
            || self.remembered.first().is_some_and(|(at, _)| *at < forget_before_ms)
            || self.closing.first().is_some_and(|(at, _)| *at < forget_before_ms)
    }

    /// Every row of the shard, for a snapshot.
    pub fn rows(&self) -> Vec<Row> {
        self.rows_view().rows().collect()
    }

    /// The shard's rows as they are now, to be read (or encoded) while the shard goes on applying. The orders,
    /// remembered refusals and holds, what grows with a partition's traffic, are shared, not copied: taking the
    /// view costs the products.
    pub fn rows_view(&self) -> RowsView {
        let mut head = vec![self.meta()];
        if self.holds_forgotten_before_ms > 0 {
            head.push(Row::HoldsForgotten { before_ms: self.holds_forgotten_before_ms });
        }
        head.extend(self.products.values().cloned().map(Row::Product));
        RowsView {
            head,
            orders: self.orders.clone(),
            refusals: self.refusals.clone(),
            holds: self.holds.clone(),
            closed_holds: self.closed_holds.clone(),
        }
    }

    pub fn holds(&self) -> impl Iterator<Item = &Hold> {
        self.holds.values()
    }

    /// A saga leg held here.
    pub fn hold(&self, id: &OrderId) -> Option<&Hold> {
        self.holds.get(id)
    }

    /// Orders whose saga the home partition's leader must drive: pending, or legs not matching the status.
    pub fn orders_to_drive(&self) -> Vec<Arc<Order>> {
        self.driving.iter().filter_map(|id| self.orders.get(id)).cloned().collect()
    }

    /// Every change to an order goes through here: its row is written, and the saga index follows it.
    fn order_changed(&mut self, id: OrderId) {
        if self.orders.get(&id).is_some_and(|o| o.needs_driving()) {
            self.driving.insert(id);
        } else {
            self.driving.remove(&id);
        }
    }

    fn meta(&self) -> Row {
        Row::Meta { next_seq: self.next_seq, next_refusal: self.next_refusal, clock_ms: self.clock_ms }
    }

    /// Applies one command. Deterministic: the same commands in the same order give the same outcomes and state.
    pub fn apply(&mut self, stamped: &Stamped) -> Outcome {
        if stamped.at_ms > self.clock_ms {
            self.clock_ms = stamped.at_ms;
        }
        let now = self.clock_ms;
        let outcome = match &stamped.command {
            Command::CreateProduct { sku, name, price_cents, stock, max_per_user } => {
                self.create_product(sku, name, *price_cents, *stock, *max_per_user)
            }
            Command::Restock { sku, qty } => self.restock(sku, *qty),
            Command::PlaceOrder { user_id, idempotency_key, items, pay_deadline_ms, remote } => {
                self.place_order(now, user_id, idempotency_key, items, *pay_deadline_ms, remote)
            }
            Command::Reserve { order_id, user_id, items } => self.reserve(now, None, order_id, user_id, items),
            Command::ReserveLeg { order_id, user_id, items, placed_ms } => {
                self.reserve(now, Some(*placed_ms), order_id, user_id, items)
            }
            Command::Release { order_id } => self.release(now, order_id),
            Command::Settle { order_id } => self.settle(order_id),
            Command::ResolveSaga { order_id, result } => self.resolve(now, order_id, result),
            Command::LegsSynced { order_id, status } => self.legs_synced(order_id, *status),
            Command::Pay { order_id } => self.close(now, order_id, OrderStatus::Paid),
            Command::Cancel { order_id } => self.close(now, order_id, OrderStatus::Cancelled),
            Command::Expire { forget_before_ms } => self.expire(now, *forget_before_ms),
        };
        Result::unwrap_or_else(outcome, |rejection| Outcome::Rejected { rejection, replayed: false })
    }

    fn create_product(
        &mut self,
        sku: &Sku,
        name: &str,
        price_cents: u64,
        stock: u64,
        max_per_user: Option<u32>,
    ) -> Result<Outcome, Rejection> {
        if stock > MAX_STOCK || price_cents > MAX_PRICE_CENTS || max_per_user == Some(0) {
            return Err(Rejection::Invalid(format!("product {sku}: stock, price or max_per_user out of range")));
        }
        if self.products.contains_key(sku) {
            return Err(Rejection::AlreadyExists(sku.clone()));
        }
        let product = Product {
            sku: sku.clone(),
            name: name.to_owned(),
            price_cents,
            max_per_user,
            available: stock,
            reserved: 0,
            sold: 0,
            added: stock,
        };
        self.products.insert(sku.clone(), product.clone());
        Ok(Outcome::Product(product))
    }

    fn restock(&mut self, sku: &Sku, qty: u64) -> Result<Outcome, Rejection> {
        let product = self.products.get_mut(sku).ok_or_else(|| Rejection::UnknownSku(sku.clone()))?;
        let added = product.added.checked_add(qty).filter(|a| *a <= MAX_STOCK && qty > 0);
        let Some(added) = added else {
            return Err(Rejection::Invalid(format!("restock of {sku}: 1 to {MAX_STOCK} units in all")));
        };
        product.added = added;
        product.available += qty;
        assert_stock(product);
        Ok(Outcome::Product(product.clone()))
    }

    fn place_order(
        &mut self,
        now: u64,
        user_id: &UserId,
        key: &str,
        items: &[Item],
        pay_deadline_ms: u64,
        remote: &BTreeMap<Sku, u32>,
    ) -> Result<Outcome, Rejection> {
        let record_key = Hashed::new((user_id.clone(), key.to_owned()));
        match self.idempotency.get(&record_key) {
            Some(Remembered::Placed(id)) => {
                let order = &self.orders[id];
                let same = order.items.len() == items.len()
                    && order.items.iter().zip(items).all(|(l, i)| l.sku == i.sku && l.qty == i.qty);
                if !same {
                    return Err(Rejection::KeyReused { order_id: Some(*id) });
                }
                return Ok(Outcome::Order { order: order.clone(), replayed: true });
            }
            Some(Remembered::Refused(seq)) => {
                let refusal = &self.refusals[seq];
                if refusal.items != items {
                    return Err(Rejection::KeyReused { order_id: None });
                }
                return Ok(Outcome::Rejected { rejection: refusal.rejection.clone(), replayed: true });
            }
            None => {}
        }
        validate_items(items)?;
        // Check every line before changing anything: all or nothing.
        let mut lines = Vec::with_capacity(items.len());
        let mut total_cents: u64 = 0;
        let mut refusal = None;
        let partition = self.partition;
        let remote_of = |sku: &Sku| remote.get(sku).copied().filter(|p| *p != partition);
        for item in items {
            if let Some(p) = remote_of(&item.sku) {
                // Checked and priced by its own partition (a saga leg).
                lines.push(LineItem { sku: item.sku.clone(), qty: item.qty, price_cents: 0, remote: Some(p) });
                continue;
            }
            let line = match self.check_line(user_id, item) {
                Ok(line) => line,
                Err(r) => {
                    refusal = Some(r);
                    break;
                }
            };
            let Some(t) = line.price_cents.checked_mul(u64::from(line.qty)).and_then(|l| total_cents.checked_add(l))
            else {
                return Err(Rejection::Invalid("the order's total overflows".into()));
            };
            total_cents = t;
            lines.push(line);
        }
        let answer = match refusal {
            Some(rejection) => Err(rejection),
            None => {
                let id = OrderId::new(self.partition, self.next_seq);
                self.next_seq += 1;
                let saga = lines.iter().any(|l| l.remote.is_some());
                let local: Vec<LineItem> = lines.iter().filter(|l| l.remote.is_none()).cloned().collect();
                self.reserve_lines(user_id, &local);
                let order = Order {
                    id,
                    user_id: user_id.clone(),
                    idempotency_key: key.to_owned(),
                    items: lines,
                    total_cents,
                    status: if saga { OrderStatus::Pending } else { OrderStatus::Confirmed },
                    placed_ms: now,
                    pay_deadline_ms,
                    closed_ms: None,
                    key_released: false,
                    rejection: None,
                    legs_synced: !saga,
                };
                if !saga {
                    self.deadlines.insert((pay_deadline_ms, id));
                }
                self.orders.insert(id, Arc::new(order));
                self.order_changed(id);
                Ok(id)
            }
        };
        match answer {
            Ok(id) => {
                self.remembered.insert((now, Remembered::Placed(id)));
                self.idempotency.insert(record_key, Remembered::Placed(id));
                Ok(Outcome::Order { order: self.orders[&id].clone(), replayed: false })
            }
            Err(rejection) => {
                let seq = self.next_refusal;
                self.next_refusal += 1;
                let refusal = Refusal {
                    user_id: user_id.clone(),
                    key: key.to_owned(),
                    items: items.to_vec(),
                    at_ms: now,
                    rejection: rejection.clone(),
                };
                self.refusals.insert(seq, refusal);
                self.remembered.insert((now, Remembered::Refused(seq)));
                self.idempotency.insert(record_key, Remembered::Refused(seq));
                Err(rejection)
            }
        }
    }

    /// Moves a confirmed order to `to` (paid or cancelled). An order past its deadline expires first.
    fn close(&mut self, now: u64, id: &OrderId, to: OrderStatus) -> Result<Outcome, Rejection> {
        let order = self.orders.get(id).ok_or(Rejection::UnknownOrder(*id))?;
        if order.status == OrderStatus::Confirmed && order.pay_deadline_ms <= now {
            self.finish(id, OrderStatus::Expired, now);
        }
        let order = &self.orders[id];
        match order.status {
            s if s == to => Ok(Outcome::Order { order: order.clone(), replayed: true }),
            OrderStatus::Confirmed => {
                self.finish(id, to, now);
                Ok(Outcome::Order { order: self.orders[id].clone(), replayed: false })
            }
            status => Err(Rejection::InvalidState { order_id: *id, status }),
        }
    }

    /// Moves a confirmed order to a final state and its reserved stock to sold (paid) or back to available.
    fn finish(&mut self, id: &OrderId, to: OrderStatus, now: u64) {
        let order = self.orders.get_mut(id).map(Arc::make_mut).expect("caller checked");
        assert_eq!(order.status, OrderStatus::Confirmed, "order {id}: only a confirmed order can be closed");
        order.status = to;
        order.closed_ms = Some(now);
        self.deadlines.remove(&(order.pay_deadline_ms, *id));
        if order.items.iter().any(|l| l.remote.is_some()) {
            order.legs_synced = false;
        }
        let user = order.user_id.clone();
        let local: Vec<LineItem> = order.items.iter().filter(|l| l.remote.is_none()).cloned().collect();
        if to == OrderStatus::Paid {
            self.sell_lines(&local);
        } else {
            self.release_lines(&user, &local);
        }
        self.order_changed(*id);
    }

    /// The line `item` would be, priced, if `user` may reserve it now; else why not.
    fn check_line(&self, user: &UserId, item: &Item) -> Result<LineItem, Rejection> {
        let p = self.products.get(&item.sku).ok_or_else(|| Rejection::UnknownSku(item.sku.clone()))?;
        let qty = u64::from(item.qty);
        if p.available < qty {
            return Err(Rejection::OutOfStock { sku: item.sku.clone(), available: p.available });
        }
        if let Some(max) = p.max_per_user {
            let held = self.held.get(&Hashed::new((item.sku.clone(), user.clone()))).copied().unwrap_or(0);
            if held + qty > u64::from(max) {
                return Err(Rejection::LimitExceeded { sku: item.sku.clone(), max_per_user: max });
            }
        }
        Ok(LineItem { sku: p.sku.clone(), qty: item.qty, price_cents: p.price_cents, remote: None })
    }

    /// Available → reserved for lines [`Shard::check_line`] accepted, counted against `user`'s limits.
    fn reserve_lines(&mut self, user: &UserId, lines: &[LineItem]) {
        for line in lines {
            let qty = u64::from(line.qty);
            let p = self.products.get_mut(&line.sku).expect("checked before");
            p.available = p.available.checked_sub(qty).expect("checked before");
            p.reserved += qty;
            assert_stock(p);
            let held = self.held.entry(Hashed::new((line.sku.clone(), user.clone()))).or_default();
            *held += qty;
            if let Some(max) = p.max_per_user {
                assert!(*held <= u64::from(max), "{}: user {user} holds {held} > {max}", line.sku);
            }
        }
    }

    /// Reserved → available, no longer counted against `user`'s limits.
    fn release_lines(&mut self, user: &UserId, lines: &[LineItem]) {
        for line in lines {
            let qty = u64::from(line.qty);
            let p = self.products.get_mut(&line.sku).expect("held lines' products exist");
            p.reserved = p.reserved.checked_sub(qty).expect("reserved stock covers every held line");
            p.available += qty;
            assert_stock(p);
            let key = Hashed::new((line.sku.clone(), user.clone()));
            let held = self.held.get_mut(&key).expect("a reserved line's units are held");
            *held = held.checked_sub(qty).expect("held units cover every reserved line");
            if *held == 0 {
                self.held.remove(&key);
            }
        }
    }

    /// Reserved → sold (still counted against the buyer's limits).
    fn sell_lines(&mut self, lines: &[LineItem]) {
        for line in lines {
            let qty = u64::from(line.qty);
            let p = self.products.get_mut(&line.sku).expect("held lines' products exist");
            p.reserved = p.reserved.checked_sub(qty).expect("reserved stock covers every held line");
            p.sold += qty;
            assert_stock(p);
        }
    }

    fn legs_synced(&mut self, id: &OrderId, status: OrderStatus) -> Result<Outcome, Rejection> {
        let order = self.orders.get_mut(id).map(Arc::make_mut).ok_or(Rejection::UnknownOrder(*id))?;
        // Only for the status the driver synced to: a pay or cancel applied meanwhile needs another round.
        if order.status == status && !order.legs_synced {
            order.legs_synced = true;
            self.order_changed(*id);
        }
        Ok(Outcome::Order { order: self.orders[id].clone(), replayed: false })
    }

    /// Reserves a saga leg here, all or nothing. A reservation for an order placed (`placed_ms`) before the closed
    /// holds forgotten finds the tombstone it may have had: it reserves nothing and records nothing.
    fn reserve(
        &mut self,
        now: u64,
        placed_ms: Option<u64>,
        id: &OrderId,
        user_id: &UserId,
        items: &[Item],
    ) -> Result<Outcome, Rejection> {
        if let Some(h) = self.holds.get(id) {
            return Ok(Outcome::Hold(h.clone()));
        }
        if placed_ms.is_some_and(|p| p < self.holds_forgotten_before_ms) {
            let gone = Hold { order_id: *id, user_id: user_id.clone(), items: Vec::new(), state: HoldState::Released };
            return Ok(Outcome::Hold(gone));
        }
        validate_items(items)?;
        let checked: Result<Vec<LineItem>, Rejection> = items.iter().map(|i| self.check_line(user_id, i)).collect();
        let (lines, state) = match checked {
            Ok(lines) => {
                self.reserve_lines(user_id, &lines);
                (lines, HoldState::Reserved)
            }
            Err(r) => (Vec::new(), HoldState::Refused(r)),
        };
        let hold = Hold { order_id: *id, user_id: user_id.clone(), items: lines, state };
        self.holds.insert(*id, hold.clone());
        if !hold.state.holds_stock() {
            self.hold_closed(id, now);
        }
        Ok(Outcome::Hold(hold))
    }

    /// Dates a hold that no longer holds anything, so that it is forgotten after the retention.
    fn hold_closed(&mut self, id: &OrderId, now: u64) {
        if self.closed_holds.insert(*id, now).is_none() {
            self.closing.insert((now, *id));
        }
    }

    /// Releases a saga leg here; a release before any reservation leaves a tombstone that refuses it later.
    fn release(&mut self, now: u64, id: &OrderId) -> Result<Outcome, Rejection> {
        let Some(hold) = self.holds.get_mut(id) else {
            let tombstone =
                Hold { order_id: *id, user_id: UserId("".into()), items: Vec::new(), state: HoldState::Released };
            self.holds.insert(*id, tombstone.clone());
            self.hold_closed(id, now);
            return Ok(Outcome::Hold(tombstone));
        };
        match hold.state {
            HoldState::Reserved => {
                hold.state = HoldState::Released;
                let (user, lines, answer) = (hold.user_id.clone(), hold.items.clone(), hold.clone());
                self.release_lines(&user, &lines);
                self.hold_closed(id, now);
                Ok(Outcome::Hold(answer))
            }
            HoldState::Sold => Err(Rejection::InvalidState { order_id: *id, status: OrderStatus::Paid }),
            HoldState::Released | HoldState::Refused(_) => Ok(Outcome::Hold(hold.clone())),
        }
    }

    /// A saga leg's reserved lines become sold.
    fn settle(&mut self, id: &OrderId) -> Result<Outcome, Rejection> {
        let hold = self.holds.get_mut(id).ok_or(Rejection::UnknownOrder(*id))?;
        match hold.state {
            HoldState::Reserved => {
                hold.state = HoldState::Sold;
                let (lines, answer) = (hold.items.clone(), hold.clone());
                self.sell_lines(&lines);
                Ok(Outcome::Hold(answer))
            }
            HoldState::Sold => Ok(Outcome::Hold(hold.clone())),
            HoldState::Released | HoldState::Refused(_) => {
                Err(Rejection::InvalidState { order_id: *id, status: OrderStatus::Cancelled })
            }
        }
    }

    /// Ends a pending saga: confirmed with the legs' priced lines, or aborted (its local lines released).
    fn resolve(
        &mut self,
        now: u64,
        id: &OrderId,
        result: &Result<Vec<LineItem>, Rejection>,
    ) -> Result<Outcome, Rejection> {
        let order = self.orders.get(id).ok_or(Rejection::UnknownOrder(*id))?;
        if order.status != OrderStatus::Pending {
            return Ok(Outcome::Order { order: order.clone(), replayed: true });
        }
        // Price every remote line before changing anything: a leg without its priced line, or a total that does
        // not fit, aborts the saga (its stock released) instead of leaving it pending.
        let priced_lines = match result {
            Ok(priced) => {
                let mut prices = Vec::new();
                let mut total = Some(order.total_cents);
                for (i, line) in order.items.iter().enumerate().filter(|(_, l)| l.remote.is_some()) {
                    let price = priced.iter().find(|p| p.sku == line.sku && p.qty == line.qty).map(|p| p.price_cents);
                    total = match price {
                        Some(price) => {
                            prices.push((i, price));
                            price.checked_mul(u64::from(line.qty)).and_then(|l| total?.checked_add(l))
                        }
                        None => None,
                    };
                    if total.is_none() {
                        break;
                    }
                }
                total
                    .map(|t| (prices, t))
                    .ok_or_else(|| Rejection::Invalid(format!("saga {id}: legs not priced, or the total overflows")))
            }
            Err(rejection) => Err(rejection.clone()),
        };
        let order = self.orders.get_mut(id).map(Arc::make_mut).expect("looked up above");
        match priced_lines {
            Ok((prices, total)) => {
                for (i, price) in prices {
                    order.items[i].price_cents = price;
                }
                order.total_cents = total;
                order.status = OrderStatus::Confirmed;
                order.legs_synced = true;
                self.deadlines.insert((order.pay_deadline_ms, *id));
            }
            Err(rejection) => {
                order.status = OrderStatus::Aborted;
                order.rejection = Some(rejection);
                order.closed_ms = Some(now);
                order.legs_synced = false;
                let user = order.user_id.clone();
                let local: Vec<LineItem> = order.items.iter().filter(|l| l.remote.is_none()).cloned().collect();
                self.release_lines(&user, &local);
            }
        }
        self.order_changed(*id);
        Ok(Outcome::Order { order: self.orders[id].clone(), replayed: false })
    }

    fn expire(&mut self, now: u64, forget_before_ms: u64) -> Result<Outcome, Rejection> {
        let mut orders = 0;
        while let Some((deadline, id)) = self.deadlines.first().cloned() {
            if deadline > now {
                break;
            }
            self.finish(&id, OrderStatus::Expired, now);
            orders += 1;
        }
        let mut forgotten = 0;
        while self.remembered.first().is_some_and(|(at, _)| *at < forget_before_ms) {
            let Some((_, record)) = self.remembered.pop_first() else { break };
            match record {
                Remembered::Placed(id) => {
                    if let Some(order) = self.orders.get_mut(&id).map(Arc::make_mut) {
                        self.idempotency.remove(&Hashed::new((order.user_id.clone(), order.idempotency_key.clone())));
                        order.key_released = true;
                        self.order_changed(id);
                    }
                }
                Remembered::Refused(seq) => {
                    if let Some(refusal) = self.refusals.remove(&seq) {
                        self.idempotency.remove(&Hashed::new((refusal.user_id, refusal.key)));
                    }
                }
            }
            forgotten += 1;
        }
        while let Some((at, id)) = self.closing.first().cloned() {
            if at >= forget_before_ms {
                break;
            }
            self.closing.pop_first();
            self.closed_holds.remove(&id);
            self.holds.remove(&id);
            forgotten += 1;
        }
        self.holds_forgotten_before_ms = self.holds_forgotten_before_ms.max(forget_before_ms);
        Ok(Outcome::Expired { orders, forgotten })
    }
}

fn validate_items(items: &[Item]) -> Result<(), Rejection> {
    if items.is_empty() || items.len() > MAX_ITEMS {
        return Err(Rejection::Invalid(format!("items: 1 to {MAX_ITEMS} lines")));
    }
    let mut seen = BTreeSet::new();
    for item in items {
        if item.qty == 0 || item.qty > MAX_QTY {
            return Err(Rejection::Invalid(format!("qty of {}: 1 to {MAX_QTY}", item.sku)));
        }
        if !seen.insert(&item.sku) {
            return Err(Rejection::Invalid(format!("items: {} appears twice", item.sku)));
        }
    }
    Ok(())
}

fn stock_adds_up(p: &Product) -> bool {
    p.available.checked_add(p.reserved).and_then(|s| s.checked_add(p.sold)) == Some(p.added)
}

/// P2: every unit added is available, reserved or sold, exactly once. A failure is a bug in this module.
fn assert_stock(p: &Product) {
    assert!(
        stock_adds_up(p),
        "stock invariant broken for {}: available {} + reserved {} + sold {} != added {}",
        p.sku,
        p.available,
        p.reserved,
        p.sold,
        p.added
    );
}
