//! The trading state machine: scripted scenarios with exact outcomes, then random command sequences.

use std::collections::BTreeMap;

use proptest::prelude::*;
use rampart_trading::{
    Command, HoldState, Item, LineItem, OrderId, OrderStatus, Outcome, Rejection, Row, Shard, Sku, Stamped, UserId,
};

const MIN: u64 = 60_000;

fn sku(s: &str) -> Sku {
    Sku(s.into())
}

fn user(u: &str) -> UserId {
    UserId(u.into())
}

fn at(at_ms: u64, command: Command) -> Stamped {
    Stamped { at_ms, command }
}

fn create(s: &str, stock: u64, max_per_user: Option<u32>) -> Command {
    Command::CreateProduct { sku: sku(s), name: format!("{s} name"), price_cents: 250, stock, max_per_user }
}

fn order(u: &str, key: &str, items: &[(&str, u32)], deadline: u64) -> Command {
    Command::PlaceOrder {
        user_id: user(u),
        idempotency_key: key.into(),
        items: items.iter().map(|(s, q)| Item { sku: sku(s), qty: *q }).collect(),
        pay_deadline_ms: deadline,
        remote: BTreeMap::new(),
    }
}

fn hold_state(o: Outcome) -> HoldState {
    match o {
        Outcome::Hold(h) => h.state,
        other => panic!("expected a hold, got {other:?}"),
    }
}

fn placed(o: Outcome) -> (OrderId, bool) {
    match o {
        Outcome::Order { order, replayed } => (order.id, replayed),
        other => panic!("expected an order, got {other:?}"),
    }
}

fn rejected(o: Outcome) -> (Rejection, bool) {
    match o {
        Outcome::Rejected { rejection, replayed } => (rejection, replayed),
        other => panic!("expected a rejection, got {other:?}"),
    }
}

fn stock(shard: &Shard, s: &str) -> (u64, u64, u64) {
    let p = shard.product(&sku(s)).expect("product exists");
    (p.available, p.reserved, p.sold)
}

#[test]
fn an_order_reserves_payment_sells_and_a_retry_returns_the_same_order() {
    let mut shard = Shard::new(7);
    shard.apply(&at(1, create("hot", 10, None)));
    let (id, replayed) = placed(shard.apply(&at(2, order("u1", "k1", &[("hot", 3)], 15 * MIN))));
    assert_eq!((id.to_string().as_str(), replayed), ("7-0", false));
    assert_eq!(id.partition(), 7);
    assert_eq!(stock(&shard, "hot"), (7, 3, 0));
    // The same request again: the same order, nothing more reserved.
    assert_eq!(placed(shard.apply(&at(3, order("u1", "k1", &[("hot", 3)], 15 * MIN)))), (id, true));
    assert_eq!(stock(&shard, "hot"), (7, 3, 0));
    // The same key for another request is refused and changes nothing.
    let (r, _) = rejected(shard.apply(&at(4, order("u1", "k1", &[("hot", 1)], 15 * MIN))));
    assert_eq!(r, Rejection::KeyReused { order_id: Some(id) });
    // Another user may use the same key.
    let (other, _) = placed(shard.apply(&at(4, order("u2", "k1", &[("hot", 1)], 15 * MIN))));
    assert_ne!(other, id);
    assert_eq!(placed(shard.apply(&at(5, Command::Pay { order_id: id }))), (id, false));
    assert_eq!(stock(&shard, "hot"), (6, 1, 3));
    assert_eq!(placed(shard.apply(&at(6, Command::Pay { order_id: id }))), (id, true));
    let (r, _) = rejected(shard.apply(&at(7, Command::Cancel { order_id: id })));
    assert_eq!(r, Rejection::InvalidState { order_id: id, status: OrderStatus::Paid });
}

#[test]
fn an_order_is_all_or_nothing_and_a_rejection_is_remembered() {
    let mut shard = Shard::new(0);
    shard.apply(&at(1, create("a", 5, None)));
    shard.apply(&at(1, create("b", 1, None)));
    let (r, replayed) = rejected(shard.apply(&at(2, order("u", "k", &[("a", 2), ("b", 2)], MIN))));
    assert_eq!((r, replayed), (Rejection::OutOfStock { sku: sku("b"), available: 1 }, false));
    assert_eq!(stock(&shard, "a"), (5, 0, 0), "nothing reserved when one line fails");
    // A restock does not change the remembered answer for the same key: the retry is the same request.
    shard.apply(&at(3, Command::Restock { sku: sku("b"), qty: 10 }));
    let (r, replayed) = rejected(shard.apply(&at(4, order("u", "k", &[("a", 2), ("b", 2)], MIN))));
    assert_eq!((r, replayed), (Rejection::OutOfStock { sku: sku("b"), available: 1 }, true));
    let (r, _) = rejected(shard.apply(&at(5, order("u", "k2", &[("zz", 1)], MIN))));
    assert_eq!(r, Rejection::UnknownSku(sku("zz")));
    let (r, _) = rejected(shard.apply(&at(5, order("u", "k3", &[("a", 1), ("a", 1)], MIN))));
    assert!(matches!(r, Rejection::Invalid(_)), "{r:?}");
    let (r, _) = rejected(shard.apply(&at(5, create("a", 1, None))));
    assert_eq!(r, Rejection::AlreadyExists(sku("a")));
}

#[test]
fn one_per_customer_holds_until_the_order_is_released() {
    let mut shard = Shard::new(0);
    shard.apply(&at(1, create("hot", 100, Some(1))));
    let (first, _) = placed(shard.apply(&at(2, order("u", "k1", &[("hot", 1)], MIN))));
    let (r, _) = rejected(shard.apply(&at(3, order("u", "k2", &[("hot", 1)], MIN))));
    assert_eq!(r, Rejection::LimitExceeded { sku: sku("hot"), max_per_user: 1 });
    placed(shard.apply(&at(3, Command::Cancel { order_id: first })));
    let (_, replayed) = placed(shard.apply(&at(4, order("u", "k3", &[("hot", 1)], MIN))));
    assert!(!replayed);
    assert_eq!(stock(&shard, "hot"), (99, 1, 0));
}

#[test]
fn unpaid_orders_expire_at_their_deadline_and_records_are_forgotten_after_retention() {
    let mut shard = Shard::new(0);
    shard.apply(&at(0, create("a", 10, Some(2))));
    let (early, _) = placed(shard.apply(&at(1_000, order("u", "k1", &[("a", 2)], 5_000))));
    let (late, _) = placed(shard.apply(&at(2_000, order("v", "k1", &[("a", 2)], 9_000))));
    assert!(!shard.has_expiry_work(4_999, 0));
    assert!(shard.has_expiry_work(5_000, 0));
    let out = shard.apply(&at(5_000, Command::Expire { forget_before_ms: 0 }));
    assert_eq!(out, Outcome::Expired { orders: 1, forgotten: 0 });
    assert_eq!(shard.order(&early).map(|o| o.status), Some(OrderStatus::Expired));
    assert_eq!(stock(&shard, "a"), (8, 2, 0));
    // Paying after the deadline, before any expiry command: the order expires then and there.
    let (r, _) = rejected(shard.apply(&at(9_000, Command::Pay { order_id: late })));
    assert_eq!(r, Rejection::InvalidState { order_id: late, status: OrderStatus::Expired });
    assert_eq!(stock(&shard, "a"), (10, 0, 0));
    // The user's limit is free again.
    placed(shard.apply(&at(9_001, order("u", "k2", &[("a", 2)], 20_000))));
    // Records written before 2_000 are forgotten: the key may then name a new order.
    let out = shard.apply(&at(9_002, Command::Expire { forget_before_ms: 2_000 }));
    assert_eq!(out, Outcome::Expired { orders: 0, forgotten: 1 });
    shard.apply(&at(9_003, Command::Cancel { order_id: OrderId::new(0, 2) }));
    let (again, replayed) = placed(shard.apply(&at(9_004, order("u", "k1", &[("a", 2)], 20_000))));
    assert_eq!((again.to_string().as_str(), replayed), ("0-3", false));
}

#[test]
fn a_lagging_leader_clock_cannot_move_business_time_back() {
    let mut shard = Shard::new(0);
    shard.apply(&at(0, create("a", 1, None)));
    let (id, _) = placed(shard.apply(&at(10_000, order("u", "k", &[("a", 1)], 12_000))));
    shard.apply(&at(13_000, Command::Expire { forget_before_ms: 0 }));
    // A new leader whose clock reads 11_000 cannot pay an order that already expired at 13_000.
    let (r, _) = rejected(shard.apply(&at(11_000, Command::Pay { order_id: id })));
    assert_eq!(r, Rejection::InvalidState { order_id: id, status: OrderStatus::Expired });
    assert_eq!(shard.clock_ms(), 13_000);
}

#[test]
fn restore_refuses_rows_that_do_not_add_up() {
    let mut shard = Shard::new(0);
    shard.apply(&at(0, create("a", 5, None)));
    placed(shard.apply(&at(1, order("u", "k", &[("a", 2)], MIN))));
    let mut rows = shard.rows();
    for row in &mut rows {
        if let Row::Product(p) = row {
            p.reserved = 1;
            p.available = 4;
        }
    }
    assert!(Shard::restore(0, rows).is_err());
    assert_eq!(Shard::restore(0, shard.rows()), Ok(shard.clone()));

    // Two refused orders: their remembered refusals, repeated or renumbered, are refused too.
    shard.apply(&at(2, order("v", "k1", &[("a", 9)], MIN)));
    shard.apply(&at(3, order("w", "k2", &[("a", 9)], MIN)));
    let rows = shard.rows();
    let refusals: Vec<Row> = rows.iter().filter(|r| matches!(r, Row::Refusal { .. })).cloned().collect();
    assert_eq!(refusals.len(), 2, "{rows:?}");
    let renumbered = |change: &dyn Fn(u64) -> u64| {
        rows.iter()
            .cloned()
            .map(|r| match r {
                Row::Refusal { seq, refusal } => Row::Refusal { seq: change(seq), refusal },
                other => other,
            })
            .collect::<Vec<Row>>()
    };
    assert!(Shard::restore(0, renumbered(&|_| 0)).is_err(), "two refusals under one number");
    assert!(Shard::restore(0, renumbered(&|s| s + 100)).is_err(), "a refusal past the next number");
    let mut repeated = rows.clone();
    repeated.push(refusals[0].clone());
    assert!(Shard::restore(0, repeated).is_err(), "one refusal twice");
    assert_eq!(Shard::restore(0, rows), Ok(shard.clone()));
}

#[test]
fn a_saga_reserves_here_and_there_and_handles_the_tcc_anomalies() {
    // Home partition 0 holds "a"; partition 1 holds "b" (a second shard stands for it).
    let mut home = Shard::new(0);
    let mut other = Shard::new(1);
    home.apply(&at(0, create("a", 5, None)));
    other.apply(&at(0, create("b", 1, Some(1))));
    let place = |key: &str| Command::PlaceOrder {
        user_id: user("u"),
        idempotency_key: key.into(),
        items: vec![Item { sku: sku("a"), qty: 2 }, Item { sku: sku("b"), qty: 1 }],
        pay_deadline_ms: MIN,
        remote: [(sku("b"), 1)].into_iter().collect(),
    };
    let Outcome::Order { order, .. } = home.apply(&at(1, place("k1"))) else { panic!("placed") };
    assert_eq!(order.status, OrderStatus::Pending);
    assert_eq!(order.leg_partitions(), vec![1]);
    assert_eq!(stock(&home, "a"), (3, 2, 0), "local lines reserved while pending");
    let leg =
        || Command::Reserve { order_id: order.id, user_id: user("u"), items: vec![Item { sku: sku("b"), qty: 1 }] };
    // A duplicate reservation is the same reservation.
    assert_eq!(hold_state(other.apply(&at(2, leg()))), HoldState::Reserved);
    assert_eq!(hold_state(other.apply(&at(2, leg()))), HoldState::Reserved);
    assert_eq!(stock(&other, "b"), (0, 1, 0));
    let Some(hold) = other.hold(&order.id).cloned() else { panic!("held") };
    let resolved = home.apply(&at(3, Command::ResolveSaga { order_id: order.id, result: Ok(hold.items) }));
    let Outcome::Order { order: confirmed, .. } = resolved else { panic!("resolved") };
    assert_eq!((confirmed.status, confirmed.total_cents), (OrderStatus::Confirmed, 2 * 250 + 250));
    // Paying sells the local lines and leaves the leg to be settled.
    let Outcome::Order { order: paid, .. } = home.apply(&at(4, Command::Pay { order_id: order.id })) else {
        panic!("paid")
    };
    assert!(paid.needs_driving());
    assert_eq!(hold_state(other.apply(&at(5, Command::Settle { order_id: order.id }))), HoldState::Sold);
    home.apply(&at(6, Command::LegsSynced { order_id: order.id, status: OrderStatus::Paid }));
    assert!(!home.order(&order.id).unwrap().needs_driving());
    assert_eq!((stock(&home, "a"), stock(&other, "b")), ((3, 0, 2), (0, 0, 1)));
    // A second saga: the other partition refuses (out of stock), the home aborts and releases its lines.
    let Outcome::Order { order: second, .. } = home.apply(&at(7, place("k2"))) else { panic!("placed") };
    let refused = other.apply(&at(
        8,
        Command::Reserve { order_id: second.id, user_id: user("u"), items: vec![Item { sku: sku("b"), qty: 1 }] },
    ));
    let HoldState::Refused(why) = hold_state(refused) else { panic!("refused") };
    home.apply(&at(9, Command::ResolveSaga { order_id: second.id, result: Err(why.clone()) }));
    assert_eq!(home.order(&second.id).map(|o| o.status), Some(OrderStatus::Aborted));
    assert_eq!(stock(&home, "a"), (3, 0, 2), "the aborted saga's local lines were released");
    // A retry of the aborted request gets the aborted order back, not a new one.
    let Outcome::Order { order: again, replayed } = home.apply(&at(10, place("k2"))) else { panic!("replayed") };
    assert_eq!((again.id, again.status, replayed), (second.id, OrderStatus::Aborted, true));
    // A release that arrives before its reservation leaves a tombstone: the late reservation is refused.
    let ghost = OrderId::new(0, 99);
    assert_eq!(hold_state(other.apply(&at(11, Command::Release { order_id: ghost }))), HoldState::Released);
    other.apply(&at(11, Command::Restock { sku: sku("b"), qty: 5 }));
    let late = other.apply(&at(
        12,
        Command::Reserve { order_id: ghost, user_id: user("v"), items: vec![Item { sku: sku("b"), qty: 1 }] },
    ));
    assert_eq!(hold_state(late), HoldState::Released);
    assert_eq!(stock(&other, "b"), (5, 0, 1), "nothing reserved by the late reservation");
    // Settling a released leg is refused; releasing a sold one too.
    assert!(matches!(other.apply(&at(13, Command::Settle { order_id: ghost })), Outcome::Rejected { .. }));
    assert!(matches!(other.apply(&at(13, Command::Release { order_id: order.id })), Outcome::Rejected { .. }));
}

/// Saga legs that hold nothing (released, tombstones, refused) are forgotten a retention after they closed, so a
/// partition does not keep every finished saga's legs for ever; sold legs stay, as paid orders do.
#[test]
fn closed_saga_legs_are_forgotten_after_retention_and_stay_refused() {
    let mut other = Shard::new(1);
    other.apply(&at(0, create("b", 2, Some(1))));
    let id = |i| OrderId::new(0, i);
    // Each order placed at its home at time i.
    let reserve = |i, u: &str| Command::ReserveLeg {
        order_id: id(i),
        user_id: user(u),
        items: vec![Item { sku: sku("b"), qty: 1 }],
        placed_ms: i,
    };
    // Order 1's leg is sold; order 2's reserved then released; order 3's released before it was reserved (a
    // tombstone); order 4's refused (u already holds its one unit).
    assert_eq!(hold_state(other.apply(&at(10, reserve(1, "u")))), HoldState::Reserved);
    assert_eq!(hold_state(other.apply(&at(11, Command::Settle { order_id: id(1) }))), HoldState::Sold);
    assert_eq!(hold_state(other.apply(&at(20, reserve(2, "v")))), HoldState::Reserved);
    assert_eq!(hold_state(other.apply(&at(21, Command::Release { order_id: id(2) }))), HoldState::Released);
    assert_eq!(hold_state(other.apply(&at(30, Command::Release { order_id: id(3) }))), HoldState::Released);
    let refused = hold_state(other.apply(&at(40, reserve(4, "u"))));
    assert!(matches!(refused, HoldState::Refused(Rejection::LimitExceeded { .. })), "{refused:?}");
    assert_eq!(stock(&other, "b"), (1, 0, 1));

    // Nothing closed before 21: no work, and an expiry forgets nothing.
    assert!(!other.has_expiry_work(50, 21));
    assert_eq!(
        other.apply(&at(50, Command::Expire { forget_before_ms: 21 })),
        Outcome::Expired { orders: 0, forgotten: 0 }
    );
    assert!(other.has_expiry_work(50, 22));
    // Closed before 31: order 2's released leg and order 3's tombstone go; the refused one (40) and the sold one
    // stay.
    assert_eq!(
        other.apply(&at(51, Command::Expire { forget_before_ms: 31 })),
        Outcome::Expired { orders: 0, forgotten: 2 }
    );
    let held: Vec<(String, HoldState)> = other.holds().map(|h| (h.order_id.to_string(), h.state.clone())).collect();
    assert_eq!(held.len(), 2, "{held:?}");
    assert!(other.hold(&id(1)).is_some_and(|h| h.state == HoldState::Sold));
    assert!(other.hold(&id(4)).is_some());
    assert_eq!(stock(&other, "b"), (1, 0, 1), "forgetting changes no stock");
    assert_eq!(Shard::restore(1, other.rows()), Ok(other.clone()), "the forgetting survives a snapshot");

    // A late reservation of order 3 (placed before the cut-off) reserves nothing and records nothing, as its
    // tombstone would have, however late it arrives; an order placed after the cut-off reserves as any other.
    other.apply(&at(52, Command::Restock { sku: sku("b"), qty: 1 }));
    let before = other.clone();
    let late = other.apply(&at(52, reserve(3, "w")));
    assert_eq!(hold_state(late), HoldState::Released);
    assert_eq!(other, before, "a reservation of an order placed before the cut-off changed the state");
    assert_eq!(hold_state(other.apply(&at(61, reserve(31, "w")))), HoldState::Reserved);
    // The sold leg is never forgotten: u's one unit still counts against the limit.
    other.apply(&at(1_000, Command::Expire { forget_before_ms: 1_000 }));
    assert!(other.hold(&id(1)).is_some_and(|h| h.state == HoldState::Sold));
    assert!(other.hold(&id(4)).is_none(), "the refusal was forgotten");
    let again = hold_state(other.apply(&at(1_001, reserve(1_000, "u"))));
    assert!(matches!(again, HoldState::Refused(Rejection::LimitExceeded { .. })), "{again:?}");
}

/// Snapshots of the former format carry closed legs without the time they closed: they count as closed at the
/// snapshot's business time. Rows that contradict each other are refused.
#[test]
fn closed_legs_without_a_date_count_from_the_snapshot_and_bad_leg_rows_are_refused() {
    let mut other = Shard::new(1);
    other.apply(&at(0, create("b", 2, None)));
    other.apply(&at(5, Command::Release { order_id: OrderId::new(0, 1) }));
    other.apply(&at(
        6,
        Command::Reserve {
            order_id: OrderId::new(0, 2),
            user_id: user("u"),
            items: vec![Item { sku: sku("b"), qty: 1 }],
        },
    ));
    other.apply(&at(100, Command::Restock { sku: sku("b"), qty: 1 }));
    let rows = other.rows();
    assert!(rows.iter().any(|r| matches!(r, Row::ClosedHold { closed_ms: 5, .. })), "{rows:?}");
    let former: Vec<Row> = rows
        .iter()
        .cloned()
        .map(|r| match r {
            Row::ClosedHold { hold, .. } => Row::Hold(hold),
            other => other,
        })
        .collect();
    let mut restored = Shard::restore(1, former).expect("the former format restores");
    assert!(restored.rows().iter().any(|r| matches!(r, Row::ClosedHold { closed_ms: 100, .. })));
    assert!(!restored.has_expiry_work(200, 100));
    restored.apply(&at(200, Command::Expire { forget_before_ms: 101 }));
    assert!(restored.hold(&OrderId::new(0, 1)).is_none());
    assert!(restored.hold(&OrderId::new(0, 2)).is_some(), "the reserved leg stays");

    let open_dated: Vec<Row> = rows
        .iter()
        .cloned()
        .map(|r| match r {
            Row::Hold(hold) => Row::ClosedHold { hold, closed_ms: 6 },
            other => other,
        })
        .collect();
    assert!(Shard::restore(1, open_dated).is_err(), "a reserved leg dated closed");
    let mut twice = rows.clone();
    twice.extend(rows.iter().filter(|r| matches!(r, Row::ClosedHold { .. })).cloned());
    assert!(Shard::restore(1, twice).is_err(), "one leg stored twice");
    assert_eq!(Shard::restore(1, rows), Ok(other));
}

/// A small world: few SKUs, users and keys, so that orders collide, run out and retry.
fn command() -> impl Strategy<Value = Command> {
    let s = || (0..3u8).prop_map(|i| sku(&format!("s{i}")));
    let u = || (0..3u8).prop_map(|i| user(&format!("u{i}")));
    let id = || (0..12u64).prop_map(|i| OrderId::new(0, i));
    prop_oneof![
        (s(), 0..20u64, proptest::option::of(1..3u32)).prop_map(|(sku, stock, max_per_user)| {
            Command::CreateProduct { sku, name: "n".into(), price_cents: 100, stock, max_per_user }
        }),
        (s(), 0..5u64).prop_map(|(sku, qty)| Command::Restock { sku, qty }),
        (u(), 0..4u8, proptest::collection::vec((s(), 0..4u32), 0..3), 0..200u64).prop_map(
            |(user_id, key, items, deadline)| Command::PlaceOrder {
                user_id,
                idempotency_key: format!("k{key}"),
                items: items.into_iter().map(|(sku, qty)| Item { sku, qty }).collect(),
                pay_deadline_ms: deadline,
                // s2 lives in partition 1 for orders placed here: those become sagas.
                remote: [(sku("s2"), 1)].into_iter().collect(),
            }
        ),
        // Legs of partition 1's orders held here, in any order, repeated, late or early (also as earlier builds
        // wrote them, without the order's placement time).
        (0..6u64, u(), proptest::collection::vec((s(), 0..4u32), 0..3), proptest::option::of(0..200u64)).prop_map(
            |(i, user_id, items, placed_ms)| {
                let (order_id, items) =
                    (OrderId::new(1, i), items.into_iter().map(|(sku, qty)| Item { sku, qty }).collect());
                match placed_ms {
                    Some(placed_ms) => Command::ReserveLeg { order_id, user_id, items, placed_ms },
                    None => Command::Reserve { order_id, user_id, items },
                }
            }
        ),
        (0..6u64).prop_map(|i| Command::Release { order_id: OrderId::new(1, i) }),
        (0..6u64).prop_map(|i| Command::Settle { order_id: OrderId::new(1, i) }),
        (id(), proptest::option::of(0..4u32), 0..3u64).prop_map(|(order_id, qty, price)| Command::ResolveSaga {
            order_id,
            result: match qty {
                Some(qty) => Ok(vec![LineItem { sku: sku("s2"), qty, price_cents: price, remote: None }]),
                None => Err(Rejection::OutOfStock { sku: sku("s2"), available: 0 }),
            },
        }),
        (id(), prop_oneof![Just(OrderStatus::Paid), Just(OrderStatus::Cancelled), Just(OrderStatus::Aborted)])
            .prop_map(|(order_id, status)| Command::LegsSynced { order_id, status }),
        id().prop_map(|order_id| Command::Pay { order_id }),
        id().prop_map(|order_id| Command::Cancel { order_id }),
        (0..200u64).prop_map(|forget_before_ms| Command::Expire { forget_before_ms }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Stock always adds up (also asserted inside every apply), limits hold, replicas agree, the rows a
    /// snapshot holds restore the exact state at every step, and a view taken before a step still gives the rows
    /// from before it (the persistent maps it shares are never changed in place).
    #[test]
    fn random_commands_keep_every_invariant(
        commands in proptest::collection::vec((0..20u64, command()), 1..80),
    ) {
        let mut a = Shard::new(0);
        let mut b = Shard::new(0);
        let mut time = 0;
        for (step, command) in commands {
            time += step;
            let stamped = Stamped { at_ms: time, command };
            let (before, view) = (a.rows(), a.rows_view());
            let out = a.apply(&stamped);
            prop_assert_eq!(&out, &b.apply(&stamped), "replicas disagree");
            prop_assert_eq!(view.rows().collect::<Vec<_>>(), before, "a view changed after it was taken");
            let restored = Shard::restore(0, a.rows());
            prop_assert_eq!(restored.as_ref(), Ok(&a), "restore from the snapshot rows differs");
            for p in a.products() {
                prop_assert_eq!(p.available + p.reserved + p.sold, p.added);
                if let Some(max) = p.max_per_user {
                    for u in 0..3 {
                        let user = format!("u{u}");
                        let in_orders: u64 = a
                            .orders()
                            .filter(|o| *o.user_id.0 == *user && o.status.holds_stock())
                            .flat_map(|o| o.items.iter().filter(|l| l.sku == p.sku && l.remote.is_none()))
                            .map(|l| u64::from(l.qty))
                            .sum();
                        let in_holds: u64 = a
                            .holds()
                            .filter(|h| *h.user_id.0 == *user && matches!(h.state, HoldState::Reserved | HoldState::Sold))
                            .flat_map(|h| h.items.iter().filter(|l| l.sku == p.sku))
                            .map(|l| u64::from(l.qty))
                            .sum();
                        let held = in_orders + in_holds;
                        prop_assert!(held <= u64::from(max), "user u{} holds {} of {}", u, held, p.sku);
                    }
                }
            }
            // A retry of any placed order's request returns that order and changes nothing.
            if let Outcome::Order { order, replayed: false } = &out {
                if order.status.holds_stock() && order.placed_ms == time {
                    let before = a.clone();
                    let retry = Command::PlaceOrder {
                        user_id: order.user_id.clone(),
                        idempotency_key: order.idempotency_key.clone(),
                        items: order.items.iter().map(|l| Item { sku: l.sku.clone(), qty: l.qty }).collect(),
                        pay_deadline_ms: order.pay_deadline_ms,
                        remote: [(sku("s2"), 1)].into_iter().collect(),
                    };
                    let mut probe = a.clone();
                    match probe.apply(&Stamped { at_ms: time, command: retry }) {
                        Outcome::Order { order: again, replayed } => {
                            prop_assert!(replayed);
                            prop_assert_eq!(&again.id, &order.id);
                        }
                        other => prop_assert!(false, "retry gave {:?}", other),
                    }
                    prop_assert_eq!(probe, before, "a retry changed the state");
                }
            }
        }
    }
}

/// Regression: a saga whose legs' prices overflow the total stayed pending forever, holding its stock.
#[test]
fn a_saga_whose_total_overflows_is_aborted_and_releases_its_stock() {
    let mut home = Shard::new(0);
    home.apply(&at(0, create("a", 5, None)));
    let items: Vec<Item> = std::iter::once(Item { sku: sku("a"), qty: 1 })
        .chain((0..20).map(|i| Item { sku: sku(&format!("r{i}")), qty: 1_000_000 }))
        .collect();
    let remote = (0..20).map(|i| (sku(&format!("r{i}")), 1)).collect();
    let place =
        Command::PlaceOrder { user_id: user("u"), idempotency_key: "k".into(), items, pay_deadline_ms: MIN, remote };
    let Outcome::Order { order, .. } = home.apply(&at(1, place)) else { panic!("placed") };
    assert_eq!(stock(&home, "a"), (4, 1, 0));
    let priced: Vec<LineItem> = (0..20)
        .map(|i| LineItem { sku: sku(&format!("r{i}")), qty: 1_000_000, price_cents: 1_000_000_000_000, remote: None })
        .collect();
    home.apply(&at(2, Command::ResolveSaga { order_id: order.id, result: Ok(priced) }));
    let after = home.order(&order.id).expect("order");
    assert_eq!(after.status, OrderStatus::Aborted);
    assert!(after.needs_driving(), "its legs must still be released");
    assert_eq!(stock(&home, "a"), (5, 0, 0));
}
