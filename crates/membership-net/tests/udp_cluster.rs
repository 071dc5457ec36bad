//! Real sockets: members on 127.0.0.x over UDP (and TCP), one killed, the rest must see it dead quickly.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rampart_membership::{Config, Event, Meta, Profile, State};
use rampart_membership_net::{Membership, PacketKey};

fn addr(i: u8, port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, i], port))
}

async fn cluster(n: u8, port: u16) -> Vec<Membership> {
    let mut members = Vec::new();
    for i in 1..=n {
        let cfg = Config { seed: u64::from(i), ..Config::profile(Profile::Lan) };
        let seeds = if i == 1 { vec![] } else { vec![addr(1, port)] };
        let meta = Meta { http: Some(format!("127.0.0.{i}:7100")), zone: "z1".into(), weight: 100 };
        members.push(Membership::start(cfg, format!("n{i}"), addr(i, port), meta, seeds).await.expect("member starts"));
    }
    // Everyone sees everyone alive.
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if members.iter().all(|m| m.members().iter().filter(|(x, _)| x.state == State::Alive).count() == n as usize - 1)
        {
            return members;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the cluster did not form in 10 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_member_is_declared_dead_by_everyone_within_the_lan_bound() {
    let mut members = cluster(5, 17_946).await;
    let mut subs: Vec<_> = members[..4].iter().map(Membership::subscribe).collect();
    let victim = members.pop().expect("five members");
    let killed_at = Instant::now();
    victim.kill();
    let mut seen = Vec::new();
    for sub in &mut subs {
        let wait = async {
            loop {
                match sub.recv().await {
                    Ok(Event::Dead(m)) if m.id == "n5" => return Instant::now(),
                    Ok(_) => {}
                    Err(e) => panic!("event stream broke: {e}"),
                }
            }
        };
        let at = tokio::time::timeout(Duration::from_secs(5), wait).await.expect("declared dead within 5 s");
        seen.push(at - killed_at);
    }
    let worst = seen.iter().max().copied().unwrap_or_default();
    eprintln!("detection per member: {seen:?}");
    assert!(worst <= Duration::from_secs(2), "cluster-wide detection took {worst:?}: {seen:?}");
    // Nobody else was accused meanwhile.
    for m in &members {
        assert!(m.members().iter().all(|(x, _)| x.id == "n5" || x.state == State::Alive), "{:?}", m.members());
    }
    for m in members {
        m.leave().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_leaves_is_seen_as_left_and_metadata_travels() {
    let mut members = cluster(3, 18_946).await;
    let view = members[0].members();
    let n2 = view.iter().find(|(m, _)| m.id == "n2").expect("n2 known");
    assert_eq!(n2.0.meta.http.as_deref(), Some("127.0.0.2:7100"));
    assert!(n2.1 < 8.0, "phi of a healthy member is low: {}", n2.1);
    let mut sub = members[0].subscribe();
    let leaver = members.pop().expect("three members");
    leaver.leave().await;
    let left = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            if let Ok(Event::Left(m)) = sub.recv().await {
                return m;
            }
        }
    })
    .await
    .expect("the leave is seen within 2 s");
    assert_eq!(left.id, "n3");
    for m in members {
        m.leave().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_packet_is_answered_on_the_same_path() {
    use rampart_membership::wire::{Msg, Packet};
    let members = cluster(2, 19_946).await;
    let ping = Packet { from: "http-client".into(), msg: Msg::Ping { seq: 77 }, updates: vec![] }.encode();
    let reply = members[0].deliver_stream(addr(9, 1), ping).await.expect("a reply");
    let reply = Packet::decode(&reply).expect("a valid packet");
    assert_eq!(reply.msg, Msg::Ack { seq: 77 });
    assert_eq!(reply.from, "n1");
    // Garbage gets no reply and changes nothing.
    assert!(members[0].deliver_stream(addr(9, 1), b"junk".to_vec()).await.is_none());
    for m in members {
        m.leave().await;
    }
}

#[tokio::test]
async fn a_bad_config_or_a_taken_port_is_refused() {
    let bad = Config { probe_interval: Duration::ZERO, ..Config::profile(Profile::Lan) };
    assert!(Membership::start(bad, "x".into(), addr(1, 20_946), Meta::default(), vec![]).await.is_err());
    let first = Membership::start(Config::profile(Profile::Lan), "a".into(), addr(1, 20_947), Meta::default(), vec![])
        .await
        .expect("starts");
    let second =
        Membership::start(Config::profile(Profile::Lan), "b".into(), addr(1, 20_947), Meta::default(), vec![]).await;
    assert!(second.is_err());
    first.kill();
}

/// The HTTP transport: no UDP at all, every packet a POST to the member's HTTP address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_http_a_killed_member_is_declared_dead_too() {
    use std::sync::Arc;

    let port = 21_946;
    let mut members = Vec::new();
    let mut servers = Vec::new();
    for i in 1..=3u8 {
        let cfg = Config { seed: u64::from(i), ..Config::profile(Profile::Lan) };
        let seeds = if i == 1 { vec![] } else { vec![addr(1, port)] };
        let m = Arc::new(
            Membership::start_http(cfg, format!("h{i}"), addr(i, port), Meta::default(), seeds).expect("starts"),
        );
        let listener = tokio::net::TcpListener::bind(addr(i, port)).await.expect("bind");
        let app = rampart_membership_net::http::router(m.clone());
        servers.push(tokio::spawn(async move { axum::serve(listener, app).await }));
        members.push(m);
    }
    let formed = Instant::now() + Duration::from_secs(10);
    while !members.iter().all(|m| m.members().iter().filter(|(x, _)| x.state == State::Alive).count() == 2) {
        assert!(Instant::now() < formed, "the HTTP cluster did not form");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut sub = members[0].subscribe();
    let killed_at = Instant::now();
    members[2].kill();
    servers[2].abort();
    let seen = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Ok(Event::Dead(m)) = sub.recv().await {
                return (m.id, Instant::now());
            }
        }
    })
    .await
    .expect("declared dead over HTTP");
    assert_eq!(seen.0, "h3");
    assert!(seen.1 - killed_at <= Duration::from_secs(2), "{:?}", seen.1 - killed_at);
    // A body that is not a membership packet is refused with the API's error shape.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(addr(1, port)).await.expect("connect");
    conn.write_all(
        b"POST /v1/membership/heartbeat HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nConnection: close\r\n\r\nnope",
    )
    .await
    .expect("write");
    let mut answer = String::new();
    conn.read_to_string(&mut answer).await.expect("read");
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains(r#""code":"invalid_request""#), "{answer}");
    for s in servers {
        s.abort();
    }
}

/// With a key, members that share it find each other; a member with another key, or none, is never let in,
/// though it is seeded with them: its packets are dropped unread, and so are theirs on its side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_members_sharing_the_key_see_each_other() {
    let port = 22_946;
    let start = |i: u8, key: Option<&[u8]>| {
        let cfg = Config { seed: u64::from(i), ..Config::profile(Profile::Lan) };
        let seeds = if i == 1 { vec![] } else { vec![addr(1, port)] };
        let key = key.map(PacketKey::new);
        async move {
            match key {
                Some(k) => {
                    Membership::start_with_key(cfg, format!("k{i}"), addr(i, port), Meta::default(), seeds, k).await
                }
                None => Membership::start(cfg, format!("k{i}"), addr(i, port), Meta::default(), seeds).await,
            }
            .expect("member starts")
        }
    };
    let insiders = vec![
        start(1, Some(b"one secret")).await,
        start(2, Some(b"one secret")).await,
        start(3, Some(b"one secret")).await,
    ];
    let outsiders = vec![start(4, Some(b"another secret")).await, start(5, None).await];
    let alive = |m: &Membership| {
        let mut ids: Vec<String> =
            m.members().into_iter().filter(|(x, _)| x.state == State::Alive).map(|(x, _)| x.id).collect();
        ids.sort();
        ids
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while insiders.iter().any(|m| alive(m).len() < 2) {
        assert!(Instant::now() < deadline, "the members with the key did not find each other");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Time for the outsiders' joins and probes to have arrived many times over.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for m in &insiders {
        let seen = alive(m);
        assert!(seen.iter().all(|id| ["k1", "k2", "k3"].contains(&id.as_str())), "an outsider got in: {seen:?}");
        assert_eq!(seen.len(), 2, "{seen:?}");
    }
    for m in &outsiders {
        assert!(alive(m).is_empty(), "an outsider sees members: {:?}", alive(m));
    }
    assert!(insiders[0].untagged_dropped() > 0, "the seed counted the outsiders' packets it dropped");
    let key = PacketKey::new(b"one secret");
    let sealed = key.seal(b"packet".to_vec());
    assert_eq!(key.open(&sealed), Some(&b"packet"[..]));
    assert_eq!(PacketKey::new(b"other").open(&sealed), None);
    assert_eq!(key.open(&sealed[1..]), None);
    assert_eq!(key.open(b"short"), None);
    for m in insiders.into_iter().chain(outsiders) {
        m.kill();
    }
}
