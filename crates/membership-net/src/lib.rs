//! The async driver of Rampart's membership: real sockets and a real clock around the sans-IO [`Swim`].
//!
//! One task owns the state machine and sleeps until its next deadline. Two transports:
//! - **UDP** ([`Membership::start`]): datagrams on the member's port, and TCP on the same port number for the
//!   fallback probe (one length-prefixed packet in, one reply out).
//! - **HTTP** ([`Membership::start_http`]), for networks that block UDP: every packet is a
//!   `POST /v1/membership/heartbeat` to the member's HTTP address, the reply (an ack) comes back in the
//!   response, and [`http::router`] serves the endpoint inside the node's HTTP server.
//!
//! Everything the machine emits is sent at once; membership events are published on a broadcast channel and a
//! snapshot of the member list is kept for readers.
//!
//! **Authentication**, when started with a [`PacketKey`] (the UDP transport: its datagrams, TCP probes and HTTP
//! fallback; [`Membership::start_http`] takes none): every packet leaves with a tag (HMAC-SHA256 of its bytes
//! under the key, truncated to 16 bytes) and one without the right tag is dropped before it is decoded, on each of
//! those paths. Packets carry no nonce: a recorded packet can be replayed, which gossip's incarnation numbers
//! make stale once the member it describes moved on.
//!
//! Invariants: only the driver task touches the [`Swim`]; a send error never stops the loop (the peer may be
//! down, which is what the protocol is for); every buffer and queue is bounded.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rampart_membership::wire::MAX_PACKET;
use rampart_membership::{Channel, Config, Event, MemberInfo, Meta, Swim, Transmit};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;

pub mod http;

/// How long a TCP probe may take end to end.
pub(crate) const STREAM_TIMEOUT: Duration = Duration::from_secs(1);
/// Bound on packets queued from stream transports into the driver.
const STREAM_QUEUE: usize = 256;
/// How stale the readers' snapshot of members (their phi, mostly) may get when nothing changes.
const SNAPSHOT_EVERY: Duration = Duration::from_millis(100);
/// Bound on membership events buffered for slow subscribers (older ones are dropped for them).
const EVENT_QUEUE: usize = 1024;

/// The bytes of a packet's tag.
pub const TAG_LEN: usize = 16;

/// A secret every member shares: packets are tagged with it, and untagged or mistagged ones are dropped.
#[derive(Clone)]
pub struct PacketKey(Arc<[u8]>);

impl std::fmt::Debug for PacketKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PacketKey(<redacted>)")
    }
}

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

impl PacketKey {
    pub fn new(secret: &[u8]) -> PacketKey {
        PacketKey(secret.into())
    }

    fn mac(&self, bytes: &[u8]) -> HmacSha256 {
        use hmac::Mac as _;
        // HMAC takes a key of any length.
        let mut mac = HmacSha256::new_from_slice(&self.0).unwrap_or_else(|_| unreachable!("HMAC takes any key"));
        mac.update(bytes);
        mac
    }

    /// The packet with its tag appended.
    pub fn seal(&self, mut bytes: Vec<u8>) -> Vec<u8> {
        use hmac::Mac as _;
        let tag = self.mac(&bytes).finalize().into_bytes();
        bytes.extend_from_slice(&tag[..TAG_LEN]);
        bytes
    }

    /// The packet without its tag, if the tag is right (compared in constant time).
    pub fn open<'a>(&self, sealed: &'a [u8]) -> Option<&'a [u8]> {
        use hmac::Mac as _;
        let (bytes, tag) = sealed.split_at_checked(sealed.len().checked_sub(TAG_LEN)?)?;
        self.mac(bytes).verify_truncated_left(tag).ok().map(|()| bytes)
    }
}

/// A member's packet tags: its key, if any, and the count of packets dropped for want of the right tag (shared by
/// the driver and the handle that serves the HTTP endpoint).
#[derive(Clone, Debug, Default)]
struct Tags {
    key: Option<PacketKey>,
    dropped: Arc<AtomicU64>,
}

impl Tags {
    /// Tags `bytes` when there is a key.
    fn seal(&self, bytes: Vec<u8>) -> Vec<u8> {
        match &self.key {
            Some(k) => k.seal(bytes),
            None => bytes,
        }
    }

    /// Checks and strips the tag when there is a key; `None` (counted) for a packet to drop.
    fn open<'a>(&self, bytes: &'a [u8]) -> Option<&'a [u8]> {
        let opened = match &self.key {
            Some(k) => k.open(bytes),
            None => Some(bytes),
        };
        if opened.is_none() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        opened
    }
}

/// Why membership could not start. Nothing is left running.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] rampart_membership::ConfigError),
    #[error("cannot bind {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
}

/// A packet from a stream transport (TCP, HTTP), with the way back for the reply.
struct StreamIn {
    from: SocketAddr,
    channel: Channel,
    bytes: Vec<u8>,
    reply: Option<oneshot::Sender<Vec<u8>>>,
}

/// How packets leave this member.
#[derive(Clone, Debug)]
enum Net {
    /// UDP datagrams; the fallback probe over TCP on the same port number.
    Udp(Arc<UdpSocket>),
    /// UDP datagrams; the fallback probe over HTTP to the same port number (where a node serves its peer RPC).
    UdpHttp(Arc<UdpSocket>, Box<http::Client>),
    /// Everything over HTTP.
    Http(Box<http::Client>),
}

enum Command {
    Leave(oneshot::Sender<()>),
}

/// What readers see without asking the driver.
#[derive(Debug, Default)]
struct Shared {
    members: Vec<(MemberInfo, f64)>,
    local: Option<MemberInfo>,
    health: u32,
}

/// A running member: its driver task and the handles to talk to it.
#[derive(Debug)]
pub struct Membership {
    addr: SocketAddr,
    events: broadcast::Sender<Event>,
    stream_tx: mpsc::Sender<StreamIn>,
    commands: mpsc::Sender<Command>,
    shared: Arc<Mutex<Shared>>,
    task: JoinHandle<()>,
    listener: Option<JoinHandle<()>>,
    tags: Tags,
}

impl Membership {
    /// Binds UDP and TCP on `addr` and starts the member `id`, joining through `seeds`.
    pub async fn start(
        config: Config,
        id: String,
        addr: SocketAddr,
        meta: Meta,
        seeds: Vec<SocketAddr>,
    ) -> Result<Self, StartError> {
        Self::start_udp(config, id, addr, meta, seeds, false, None).await
    }

    /// As [`Membership::start`], with every packet tagged with `key` and every packet without its tag dropped.
    pub async fn start_with_key(
        config: Config,
        id: String,
        addr: SocketAddr,
        meta: Meta,
        seeds: Vec<SocketAddr>,
        key: PacketKey,
    ) -> Result<Self, StartError> {
        Self::start_udp(config, id, addr, meta, seeds, false, Some(key)).await
    }

    /// Binds UDP on `addr` only and sends the fallback probe over HTTP to the same address: for a node whose
    /// peer RPC server owns the TCP port and serves [`http::router`] there. With a `key`, packets are tagged
    /// and checked as with [`Membership::start_with_key`].
    pub async fn start_udp_http_fallback(
        config: Config,
        id: String,
        addr: SocketAddr,
        meta: Meta,
        seeds: Vec<SocketAddr>,
        key: Option<PacketKey>,
    ) -> Result<Self, StartError> {
        Self::start_udp(config, id, addr, meta, seeds, true, key).await
    }

    async fn start_udp(
        config: Config,
        id: String,
        addr: SocketAddr,
        meta: Meta,
        seeds: Vec<SocketAddr>,
        http_fallback: bool,
        key: Option<PacketKey>,
    ) -> Result<Self, StartError> {
        // A tagged datagram must still fit in one UDP payload.
        let config = match key {
            Some(_) => Config { max_datagram: config.max_datagram.min(MAX_PACKET - TAG_LEN), ..config },
            None => config,
        };
        config.validate()?;
        let udp = Arc::new(UdpSocket::bind(addr).await.map_err(|source| StartError::Bind { addr, source })?);
        let (stream_tx, stream_rx) = mpsc::channel(STREAM_QUEUE);
        let (net, listener) = if http_fallback {
            (Net::UdpHttp(udp, Box::default()), None)
        } else {
            let tcp = TcpListener::bind(addr).await.map_err(|source| StartError::Bind { addr, source })?;
            (Net::Udp(udp), Some(tokio::spawn(accept_loop(tcp, stream_tx.clone()))))
        };
        Ok(Self::launch(config, id, addr, meta, seeds, net, stream_tx, stream_rx, listener, key))
    }

    /// Starts the member `id` on the HTTP transport: `http_addr` is where this node serves [`http::router`]
    /// (the caller mounts it), and `seeds` are other members' HTTP addresses. Binds nothing itself.
    pub fn start_http(
        config: Config,
        id: String,
        http_addr: SocketAddr,
        meta: Meta,
        seeds: Vec<SocketAddr>,
    ) -> Result<Self, StartError> {
        // Every HTTP exchange is already a reliable stream: there is nothing to fall back to.
        let config = Config { tcp_fallback: false, ..config };
        config.validate()?;
        let (stream_tx, stream_rx) = mpsc::channel(STREAM_QUEUE);
        let net = Net::Http(Box::default());
        Ok(Self::launch(config, id, http_addr, meta, seeds, net, stream_tx, stream_rx, None, None))
    }

    #[allow(clippy::too_many_arguments)]
    fn launch(
        config: Config,
        id: String,
        addr: SocketAddr,
        meta: Meta,
        seeds: Vec<SocketAddr>,
        net: Net,
        stream_tx: mpsc::Sender<StreamIn>,
        stream_rx: mpsc::Receiver<StreamIn>,
        listener: Option<JoinHandle<()>>,
        key: Option<PacketKey>,
    ) -> Self {
        let origin = Instant::now();
        let swim = Swim::new(config, id, addr, meta, seeds, Duration::ZERO);
        let (events, _) = broadcast::channel(EVENT_QUEUE);
        let (commands, command_rx) = mpsc::channel(8);
        let shared = Arc::new(Mutex::new(Shared::default()));
        let driver = Driver {
            swim,
            net,
            origin,
            events: events.clone(),
            shared: shared.clone(),
            stream_tx: stream_tx.clone(),
            replies: Vec::new(),
            snapshot_at: None,
            tags: Tags { key, dropped: Arc::default() },
        };
        let tags = driver.tags.clone();
        let task = tokio::spawn(driver.run(stream_rx, command_rx));
        Self { addr, events, stream_tx, commands, shared, task, listener, tags }
    }

    /// A packet's bytes without its tag, if this member has a key and the tag is right, or if it has none (a
    /// packet refused is counted).
    pub fn open<'a>(&self, bytes: &'a [u8]) -> Option<&'a [u8]> {
        self.tags.open(bytes)
    }

    /// Packets dropped so far for want of this cluster's tag, on any transport.
    pub fn untagged_dropped(&self) -> u64 {
        self.tags.dropped.load(Ordering::Relaxed)
    }

    /// The address this member listens on (UDP and TCP).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A stream of membership events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// The other members as last seen, each with its phi (how overdue it is; 0 when just heard from).
    pub fn members(&self) -> Vec<(MemberInfo, f64)> {
        self.shared.lock().map(|s| s.members.clone()).unwrap_or_default()
    }

    /// This member as others see it.
    pub fn local(&self) -> Option<MemberInfo> {
        self.shared.lock().ok().and_then(|s| s.local.clone())
    }

    /// Lifeguard's local health multiplier (0 is healthy).
    pub fn health(&self) -> u32 {
        self.shared.lock().map(|s| s.health).unwrap_or_default()
    }

    /// Hands in a packet that arrived over another stream transport (the HTTP heartbeat endpoint) and waits
    /// for the reply, if the packet calls for one. `None`: no reply, or the member is shutting down.
    pub async fn deliver_stream(&self, from: SocketAddr, bytes: Vec<u8>) -> Option<Vec<u8>> {
        let (tx, rx) = oneshot::channel();
        self.stream_tx.send(StreamIn { from, channel: Channel::Datagram, bytes, reply: Some(tx) }).await.ok()?;
        tokio::time::timeout(STREAM_TIMEOUT, rx).await.ok()?.ok()
    }

    /// Leaves the cluster gracefully: every member is told, then the driver stops.
    pub async fn leave(&self) {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Leave(tx)).await.is_ok() {
            let _ = tokio::time::timeout(STREAM_TIMEOUT, rx).await;
        }
    }

    /// Stops at once without telling anyone, as a crash would. (Dropping the handle does the same.)
    pub fn kill(&self) {
        self.task.abort();
        if let Some(l) = &self.listener {
            l.abort();
        }
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.kill();
    }
}

struct Driver {
    swim: Swim,
    net: Net,
    origin: Instant,
    events: broadcast::Sender<Event>,
    shared: Arc<Mutex<Shared>>,
    stream_tx: mpsc::Sender<StreamIn>,
    /// Inbound stream packets still waiting for their reply, by the sender's address.
    replies: Vec<(SocketAddr, oneshot::Sender<Vec<u8>>)>,
    /// When the readers' snapshot was last rebuilt.
    snapshot_at: Option<Duration>,
    tags: Tags,
}

impl Driver {
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    async fn run(mut self, mut stream_rx: mpsc::Receiver<StreamIn>, mut commands: mpsc::Receiver<Command>) {
        let mut buf = vec![0u8; MAX_PACKET];
        loop {
            let deadline = self.swim.poll_timeout();
            let sleep = tokio::time::sleep_until((self.origin + deadline).into());
            let udp = match &self.net {
                Net::Udp(u) | Net::UdpHttp(u, _) => Some(u.clone()),
                Net::Http(_) => None,
            };
            let recv = async {
                match &udp {
                    Some(u) => u.recv_from(&mut buf).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                r = recv => match r {
                    Ok((n, from)) => match self.tags.open(&buf[..n]) {
                        Some(bytes) => {
                            let now = self.now();
                            self.swim.handle_packet(now, from, Channel::Datagram, bytes);
                        }
                        None => tracing::debug!("dropped a datagram from {from} without this cluster's tag"),
                    },
                    // ICMP port-unreachable from a dead peer surfaces here on Linux: not our problem.
                    Err(e) => tracing::trace!("udp receive: {e}"),
                },
                Some(s) = stream_rx.recv() => match self.tags.open(&s.bytes) {
                    Some(bytes) => {
                        if let Some(reply) = s.reply {
                            self.replies.push((s.from, reply));
                        }
                        let now = self.now();
                        self.swim.handle_packet(now, s.from, s.channel, bytes);
                    }
                    None => tracing::debug!("dropped a stream packet from {} without this cluster's tag", s.from),
                },
                () = sleep => {
                    let now = self.now();
                    self.swim.handle_tick(now);
                }
                Some(cmd) = commands.recv() => match cmd {
                    Command::Leave(done) => {
                        let now = self.now();
                        self.swim.leave(now);
                        self.flush().await;
                        let _ = done.send(());
                        return;
                    }
                },
            }
            self.flush().await;
        }
    }

    /// Sends everything the state machine produced and publishes its events.
    async fn flush(&mut self) {
        while let Some(t) = self.swim.poll_transmit() {
            self.transmit(t).await;
        }
        // Replies not produced by this step will not come: let their waiters go.
        self.replies.clear();
        let mut changed = false;
        while let Some(e) = self.swim.poll_event() {
            changed = true;
            // No subscriber is not an error.
            let _ = self.events.send(e);
        }
        // The snapshot is rebuilt when membership changed, and otherwise at most every SNAPSHOT_EVERY (for
        // fresh phi values): not on every packet, which would copy the member list at packet rate.
        let now = self.now();
        if !changed && self.snapshot_at.is_some_and(|t| now.saturating_sub(t) < SNAPSHOT_EVERY) {
            return;
        }
        self.snapshot_at = Some(now);
        if let Ok(mut s) = self.shared.lock() {
            s.local = Some(self.swim.local().clone());
            s.members = self.swim.members().map(|m| (m.clone(), self.swim.phi(&m.id, now).unwrap_or(0.0))).collect();
            s.health = self.swim.health();
        }
    }

    async fn transmit(&mut self, mut t: Transmit) {
        t.bytes = self.tags.seal(std::mem::take(&mut t.bytes));
        // The answer to a packet that came over a stream (TCP or HTTP) goes back on that exchange.
        if let Some(i) = self.replies.iter().position(|(from, _)| *from == t.to) {
            let (_, tx) = self.replies.swap_remove(i);
            let _ = tx.send(t.bytes);
            return;
        }
        match (&self.net, t.channel) {
            (Net::Udp(udp) | Net::UdpHttp(udp, _), Channel::Datagram) => {
                if let Err(e) = udp.send_to(&t.bytes, t.to).await {
                    tracing::trace!("udp send to {}: {e}", t.to);
                }
            }
            (Net::Udp(_), Channel::Stream) => {
                tokio::spawn(stream_probe(t.to, t.bytes, self.stream_tx.clone()));
            }
            (Net::UdpHttp(_, client) | Net::Http(client), channel) => {
                tokio::spawn(client.as_ref().clone().post(t.to, t.bytes, channel, self.stream_tx.clone()));
            }
        }
    }
}

/// Sends one packet over TCP and feeds the reply, if any, back to the driver as coming from `to`.
async fn stream_probe(to: SocketAddr, bytes: Vec<u8>, back: mpsc::Sender<StreamIn>) {
    let exchange = async {
        let mut conn = TcpStream::connect(to).await?;
        write_frame(&mut conn, &bytes).await?;
        read_frame(&mut conn).await
    };
    match tokio::time::timeout(STREAM_TIMEOUT, exchange).await {
        Ok(Ok(reply)) => {
            let _ = back.send(StreamIn { from: to, channel: Channel::Stream, bytes: reply, reply: None }).await;
        }
        Ok(Err(e)) => tracing::trace!("tcp probe to {to}: {e}"),
        Err(_) => tracing::trace!("tcp probe to {to}: timed out"),
    }
}

async fn accept_loop(listener: TcpListener, to_driver: mpsc::Sender<StreamIn>) {
    loop {
        let (conn, from) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors, say: back off instead of spinning.
                tracing::warn!("tcp accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let to_driver = to_driver.clone();
        tokio::spawn(async move {
            let serve = async {
                let mut conn = conn;
                let bytes = read_frame(&mut conn).await?;
                let (tx, rx) = oneshot::channel();
                if to_driver.send(StreamIn { from, channel: Channel::Stream, bytes, reply: Some(tx) }).await.is_err() {
                    return Ok(());
                }
                if let Ok(reply) = rx.await {
                    write_frame(&mut conn, &reply).await?;
                }
                Ok::<_, std::io::Error>(())
            };
            let _ = tokio::time::timeout(STREAM_TIMEOUT, serve).await;
        });
    }
}

async fn write_frame(conn: &mut TcpStream, bytes: &[u8]) -> std::io::Result<()> {
    conn.write_all(&(bytes.len() as u32).to_be_bytes()).await?;
    conn.write_all(bytes).await?;
    conn.flush().await
}

async fn read_frame(conn: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    conn.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_PACKET + TAG_LEN {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "frame too large"));
    }
    let mut bytes = vec![0u8; len];
    conn.read_exact(&mut bytes).await?;
    Ok(bytes)
}
