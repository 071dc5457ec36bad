//! A node's settings: from flags, `RAMPART_*` environment variables and an optional TOML file, validated
//! into a [`NodeConfig`] with errors that name the setting.
//!
//! Precedence: a flag beats the environment, which beats the file, which beats the default.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use rampart_ring::{DEFAULT_WEIGHT, MAX_WEIGHT};
use serde::Deserialize;

/// Settings as they come in: every field optional, so that sources can be layered.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub id: Option<String>,
    pub http: Option<String>,
    pub peer: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub initial_cluster: Option<String>,
    pub join: Option<String>,
    pub zone: Option<String>,
    pub weight: Option<u32>,
    pub partitions: Option<u32>,
    pub replicas: Option<u32>,
    pub heartbeat_ms: Option<u64>,
    pub election_timeout_ms: Option<u64>,
    pub payment_deadline_ms: Option<u64>,
    pub idempotency_retention_ms: Option<u64>,
    pub replace_after_ms: Option<u64>,
    pub quiesce_after_ms: Option<u64>,
    pub snapshot_logs: Option<u64>,
    pub snapshot_chunk_bytes: Option<u64>,
    pub cluster_token: Option<ClusterToken>,
}

/// The secret every member presents on the peer port (Raft and internal RPC); never printed.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct ClusterToken(String);

impl ClusterToken {
    pub fn new(token: String) -> ClusterToken {
        ClusterToken(token)
    }

    /// The secret itself (the key that tags membership packets).
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// The `Authorization` header value that presents it.
    pub fn header_value(&self) -> String {
        format!("Bearer {}", self.0)
    }

    /// Whether an `Authorization` header value presents this token, compared in constant time.
    pub fn is_presented_by(&self, header: &[u8]) -> bool {
        let Some(presented) = header.strip_prefix(b"Bearer ") else { return false };
        let expected = self.0.as_bytes();
        presented.len() == expected.len() && presented.iter().zip(expected).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }
}

impl std::fmt::Debug for ClusterToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterToken(<redacted>)")
    }
}

impl RawConfig {
    /// Fills the fields `self` lacks from `lower` (a source of lower precedence).
    pub fn or(self, lower: RawConfig) -> RawConfig {
        RawConfig {
            id: self.id.or(lower.id),
            http: self.http.or(lower.http),
            peer: self.peer.or(lower.peer),
            data_dir: self.data_dir.or(lower.data_dir),
            initial_cluster: self.initial_cluster.or(lower.initial_cluster),
            join: self.join.or(lower.join),
            zone: self.zone.or(lower.zone),
            weight: self.weight.or(lower.weight),
            partitions: self.partitions.or(lower.partitions),
            replicas: self.replicas.or(lower.replicas),
            heartbeat_ms: self.heartbeat_ms.or(lower.heartbeat_ms),
            election_timeout_ms: self.election_timeout_ms.or(lower.election_timeout_ms),
            payment_deadline_ms: self.payment_deadline_ms.or(lower.payment_deadline_ms),
            idempotency_retention_ms: self.idempotency_retention_ms.or(lower.idempotency_retention_ms),
            replace_after_ms: self.replace_after_ms.or(lower.replace_after_ms),
            quiesce_after_ms: self.quiesce_after_ms.or(lower.quiesce_after_ms),
            snapshot_logs: self.snapshot_logs.or(lower.snapshot_logs),
            snapshot_chunk_bytes: self.snapshot_chunk_bytes.or(lower.snapshot_chunk_bytes),
            cluster_token: self.cluster_token.or(lower.cluster_token),
        }
    }

    /// Parses a TOML settings file.
    pub fn from_toml(text: &str) -> Result<RawConfig, ConfigError> {
        // The error's own text quotes the offending line, which may hold the cluster token: its message and line only.
        toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            ConfigError::File(match line {
                Some(line) => format!("line {line}: {}", e.message()),
                None => e.message().to_owned(),
            })
        })
    }
}

/// How a node finds its cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Bootstrap {
    /// The founding members, by id (this node among them).
    Initial(BTreeMap<String, Founder>),
    /// Join a running cluster through this member's peer address.
    Join(SocketAddr),
}

/// A founding member as `--initial-cluster` lists it: `id=host:port`, or `id=host:port@zone`, or
/// `id=host:port@zone:weight`. Every founder must place every founder alike, so a founder's zone and weight come
/// from this list, the same on every founder, not from each node's own flags.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Founder {
    pub peer: SocketAddr,
    /// `default` when the list names none.
    pub zone: String,
    pub weight: u32,
}

/// The zone of a node that names none.
pub(crate) const DEFAULT_ZONE: &str = "default";
/// What an identifier (a node's id, a zone) may be.
const ID_RULE: &str = "use 1 to 64 ASCII letters, digits, '-', '_' or '.'";
const WEIGHT_RULE: &str = "use 1 to 100000";

fn valid_weight(w: u32) -> bool {
    (1..=MAX_WEIGHT).contains(&w)
}

/// One `--initial-cluster` member after its `=`: `host:port[@zone[:weight]]`.
fn founder(item: &str, value: &str) -> Result<Founder, ConfigError> {
    let (peer, place) = match value.split_once('@') {
        Some((peer, place)) => (peer, Some(place)),
        None => (value, None),
    };
    let (zone, weight) = match place.map(|p| p.split_once(':').map_or((p, None), |(z, w)| (z, Some(w)))) {
        None => (DEFAULT_ZONE.to_owned(), DEFAULT_WEIGHT),
        Some((zone, weight)) => {
            if !valid_id(zone) {
                return Err(invalid("initial_cluster", format!("{item:?}: bad zone {zone:?} ({ID_RULE})")));
            }
            let weight =
                match weight {
                    None => DEFAULT_WEIGHT,
                    Some(w) => w.parse().ok().filter(|w| valid_weight(*w)).ok_or_else(|| {
                        invalid("initial_cluster", format!("{item:?}: bad weight {w:?} ({WEIGHT_RULE})"))
                    })?,
                };
            (zone.to_owned(), weight)
        }
    };
    Ok(Founder { peer: addr("initial_cluster", peer)?, zone, weight })
}

/// Validated settings of one node.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeConfig {
    pub id: String,
    /// The HTTP API.
    pub http: SocketAddr,
    /// Raft and internal RPC over TCP; membership over UDP on the same port number.
    pub peer: SocketAddr,
    pub data_dir: PathBuf,
    pub bootstrap: Bootstrap,
    pub zone: String,
    pub weight: u32,
    /// Fixed when the cluster is created.
    pub partitions: u32,
    pub replicas: u32,
    pub heartbeat: Duration,
    pub election_timeout: Duration,
    /// An unpaid order expires this long after it was placed.
    pub payment_deadline: Duration,
    /// How long an idempotency key is remembered; a retry after that places a new order.
    pub idempotency_retention: Duration,
    /// A member not heard from (dead, stopped and not back, or never heard of) for this long is decommissioned by
    /// the metadata leader, if it hears at least half the members: its replicas are rebuilt elsewhere.
    pub replace_after: Duration,
    /// A partition that has served nothing for this long quiesces: no heartbeats, no election timers (zero:
    /// never). See the `quiesce` module.
    pub quiesce_after: Duration,
    /// A partition snapshots its state after this many log entries since its last snapshot, and then purges its
    /// log up to a fifth of that behind the snapshot (a replica further behind gets the snapshot).
    pub snapshot_logs: u64,
    /// Snapshots travel to a replica in chunks of this many bytes.
    pub snapshot_chunk_bytes: usize,
    /// When set, the peer port serves Raft and internal RPC only to requests presenting it, and this node
    /// presents it on its own.
    pub cluster_token: Option<ClusterToken>,
}

/// A setting is missing or out of range. Nothing was started.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("missing setting {0} (flag --{1}, env RAMPART_{2})")]
    Missing(&'static str, &'static str, &'static str),
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("invalid settings file: {0}")]
    File(String),
}

fn invalid(field: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { field, reason: reason.into() }
}

fn addr(field: &'static str, value: &str) -> Result<SocketAddr, ConfigError> {
    value.parse().map_err(|_| invalid(field, format!("{value:?} is not an address like 127.0.0.1:7101")))
}

fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

impl NodeConfig {
    pub fn from_raw(raw: RawConfig) -> Result<NodeConfig, ConfigError> {
        let id = raw.id.ok_or(ConfigError::Missing("id", "id", "ID"))?;
        if !valid_id(&id) {
            return Err(invalid("id", ID_RULE));
        }
        let http = addr("http", &raw.http.ok_or(ConfigError::Missing("http", "http", "HTTP"))?)?;
        let peer = addr("peer", &raw.peer.ok_or(ConfigError::Missing("peer", "peer", "PEER"))?)?;
        if http == peer {
            return Err(invalid("peer", "must differ from the HTTP address"));
        }
        let data_dir = raw.data_dir.ok_or(ConfigError::Missing("data_dir", "data-dir", "DATA_DIR"))?;
        let bootstrap = match (raw.initial_cluster, raw.join) {
            (Some(_), Some(_)) => return Err(invalid("join", "give either --initial-cluster or --join, not both")),
            (None, None) => {
                return Err(ConfigError::Missing("initial_cluster or join", "initial-cluster", "INITIAL_CLUSTER"))
            }
            (None, Some(j)) => Bootstrap::Join(addr("join", &j)?),
            (Some(list), None) => {
                let mut members = BTreeMap::new();
                for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                    let (name, a) = item.split_once('=').ok_or_else(|| {
                        invalid("initial_cluster", format!("{item:?} is not id=host:port[@zone[:weight]]"))
                    })?;
                    if !valid_id(name) {
                        return Err(invalid("initial_cluster", format!("bad member id {name:?}")));
                    }
                    if members.insert(name.to_owned(), founder(item, a)?).is_some() {
                        return Err(invalid("initial_cluster", format!("{name} is listed twice")));
                    }
                }
                match members.get(&id) {
                    None => return Err(invalid("initial_cluster", format!("does not list this node ({id})"))),
                    Some(f) if f.peer != peer => {
                        return Err(invalid(
                            "initial_cluster",
                            format!("lists {id} at {}, but --peer is {peer}", f.peer),
                        ))
                    }
                    Some(_) => {}
                }
                Bootstrap::Initial(members)
            }
        };
        if raw.zone.as_deref().is_some_and(|z| !valid_id(z)) {
            return Err(invalid("zone", ID_RULE));
        }
        if raw.weight.is_some_and(|w| !valid_weight(w)) {
            return Err(invalid("weight", WEIGHT_RULE));
        }
        // A founder is placed where the founding list says; its own settings may only repeat that.
        let (zone, weight) = match &bootstrap {
            Bootstrap::Initial(members) => {
                let listed = &members[&id];
                if let Some(zone) = raw.zone.filter(|z| *z != listed.zone) {
                    return Err(invalid(
                        "zone",
                        format!(
                            "{zone:?}, but --initial-cluster places {id} in {:?}: a founder's zone is given in the \
                             list ({id}=host:port@zone, the same list on every founder); drop the setting",
                            listed.zone
                        ),
                    ));
                }
                if let Some(weight) = raw.weight.filter(|w| *w != listed.weight) {
                    return Err(invalid(
                        "weight",
                        format!(
                            "{weight}, but --initial-cluster gives {id} weight {}: a founder's weight is given in the \
                             list ({id}=host:port@zone:weight); drop the setting",
                            listed.weight
                        ),
                    ));
                }
                (listed.zone.clone(), listed.weight)
            }
            Bootstrap::Join(_) => {
                (raw.zone.unwrap_or_else(|| DEFAULT_ZONE.into()), raw.weight.unwrap_or(DEFAULT_WEIGHT))
            }
        };
        let partitions = raw.partitions.unwrap_or(64);
        if !(1..=4096).contains(&partitions) {
            return Err(invalid("partitions", "use 1 to 4096"));
        }
        let replicas = raw.replicas.unwrap_or(3);
        if !(1..=7).contains(&replicas) {
            return Err(invalid("replicas", "use 1 to 7"));
        }
        let heartbeat = Duration::from_millis(raw.heartbeat_ms.unwrap_or(40));
        let election_timeout = Duration::from_millis(raw.election_timeout_ms.unwrap_or(120));
        if heartbeat.is_zero() || heartbeat > Duration::from_secs(10) {
            return Err(invalid("heartbeat_ms", "use 1 to 10000"));
        }
        if election_timeout < heartbeat * 3 || election_timeout > Duration::from_secs(60) {
            return Err(invalid("election_timeout_ms", "use at least 3 heartbeats and at most 60000"));
        }
        let payment_deadline = Duration::from_millis(raw.payment_deadline_ms.unwrap_or(15 * 60_000));
        if payment_deadline.is_zero() || payment_deadline > Duration::from_secs(30 * 86_400) {
            return Err(invalid("payment_deadline_ms", "use 1 to 2592000000 (30 days)"));
        }
        let idempotency_retention = Duration::from_millis(raw.idempotency_retention_ms.unwrap_or(86_400_000));
        if idempotency_retention < payment_deadline || idempotency_retention > Duration::from_secs(365 * 86_400) {
            return Err(invalid(
                "idempotency_retention_ms",
                "use at least the payment deadline and at most 31536000000 (a year)",
            ));
        }
        let replace_after = Duration::from_millis(raw.replace_after_ms.unwrap_or(60_000));
        if replace_after < Duration::from_secs(1) || replace_after > Duration::from_secs(86_400) {
            return Err(invalid("replace_after_ms", "use 1000 to 86400000"));
        }
        let quiesce_after = Duration::from_millis(raw.quiesce_after_ms.unwrap_or(2_000));
        if !quiesce_after.is_zero() && (quiesce_after < heartbeat * 5 || quiesce_after > Duration::from_secs(3_600)) {
            return Err(invalid("quiesce_after_ms", "use 0 (never) or 5 heartbeats to 3600000"));
        }
        let snapshot_logs = raw.snapshot_logs.unwrap_or(5_000);
        if !(10..=10_000_000).contains(&snapshot_logs) {
            return Err(invalid("snapshot_logs", "use 10 to 10000000"));
        }
        let snapshot_chunk_bytes = raw.snapshot_chunk_bytes.unwrap_or(1 << 20);
        if !(1024..=32 << 20).contains(&snapshot_chunk_bytes) {
            return Err(invalid("snapshot_chunk_bytes", "use 1024 to 33554432 (32 MiB)"));
        }
        if let Some(ClusterToken(token)) = &raw.cluster_token {
            if !(16..=256).contains(&token.len()) || !token.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(invalid("cluster_token", "use 16 to 256 visible ASCII characters (no spaces)"));
            }
        }
        Ok(NodeConfig {
            id,
            http,
            peer,
            data_dir,
            bootstrap,
            zone,
            weight,
            partitions,
            replicas,
            heartbeat,
            election_timeout,
            payment_deadline,
            idempotency_retention,
            replace_after,
            quiesce_after,
            snapshot_logs,
            snapshot_chunk_bytes: snapshot_chunk_bytes as usize,
            cluster_token: raw.cluster_token,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw() -> RawConfig {
        RawConfig {
            id: Some("n1".into()),
            http: Some("127.0.0.1:7101".into()),
            peer: Some("127.0.0.1:7201".into()),
            data_dir: Some("/tmp/n1".into()),
            initial_cluster: Some("n1=127.0.0.1:7201,n2=127.0.0.1:7202,n3=127.0.0.1:7203".into()),
            ..RawConfig::default()
        }
    }

    #[test]
    fn a_complete_config_validates_with_defaults() {
        let c = NodeConfig::from_raw(raw()).unwrap();
        assert_eq!(c.partitions, 64);
        assert_eq!(c.replicas, 3);
        assert!(matches!(&c.bootstrap, Bootstrap::Initial(m) if m.len() == 3));
    }

    /// Founders are placed by the list: zone and weight per member, the same on every founder; a node's own
    /// settings may repeat its entry, not contradict it.
    #[test]
    fn founders_take_their_zone_and_weight_from_the_founding_list() {
        let zoned = "n1=127.0.0.1:7201@eu-1a:200,n2=127.0.0.1:7202@eu-1b,n3=127.0.0.1:7203";
        let c = NodeConfig::from_raw(RawConfig { initial_cluster: Some(zoned.into()), ..raw() }).unwrap();
        assert_eq!((c.zone.as_str(), c.weight), ("eu-1a", 200));
        let Bootstrap::Initial(members) = &c.bootstrap else { panic!("founding") };
        let placed: Vec<(&str, &str, u32)> =
            members.iter().map(|(id, f)| (id.as_str(), f.zone.as_str(), f.weight)).collect();
        assert_eq!(placed, vec![("n1", "eu-1a", 200), ("n2", "eu-1b", 100), ("n3", "default", 100)]);
        assert_eq!(members["n2"].peer.to_string(), "127.0.0.1:7202");
        let same =
            RawConfig { initial_cluster: Some(zoned.into()), zone: Some("eu-1a".into()), weight: Some(200), ..raw() };
        assert_eq!(NodeConfig::from_raw(same).unwrap().zone, "eu-1a", "repeating the entry is fine");
        // A joiner brings its own.
        let joiner =
            RawConfig { initial_cluster: None, join: Some("127.0.0.1:7202".into()), zone: Some("z9".into()), ..raw() };
        assert_eq!(NodeConfig::from_raw(joiner).unwrap().zone, "z9");
        let cases = [
            (RawConfig { initial_cluster: Some(zoned.into()), zone: Some("eu-1b".into()), ..raw() }, "zone"),
            (RawConfig { initial_cluster: Some(zoned.into()), weight: Some(100), ..raw() }, "weight"),
            (RawConfig { zone: Some("z1".into()), ..raw() }, "zone"),
            (RawConfig { initial_cluster: Some("n1=127.0.0.1:7201@".into()), ..raw() }, "initial_cluster"),
            (RawConfig { initial_cluster: Some("n1=127.0.0.1:7201@a:0".into()), ..raw() }, "initial_cluster"),
            (RawConfig { initial_cluster: Some("n1=127.0.0.1:7201@a:x".into()), ..raw() }, "initial_cluster"),
            (RawConfig { initial_cluster: Some("n1=127.0.0.1:7201@a b".into()), ..raw() }, "initial_cluster"),
        ];
        for (r, field) in cases {
            let err = NodeConfig::from_raw(r).unwrap_err().to_string();
            assert!(err.contains(field), "{err} does not name {field}");
        }
    }

    #[test]
    fn layering_prefers_the_higher_source() {
        let file = RawConfig::from_toml("id = \"file\"\npartitions = 128\nzone = \"z1\"\n").unwrap();
        let flags = RawConfig { id: Some("flag".into()), ..RawConfig::default() };
        let merged = flags.or(file);
        assert_eq!(merged.id.as_deref(), Some("flag"));
        assert_eq!(merged.partitions, Some(128));
        assert!(RawConfig::from_toml("nonsense = 1").is_err(), "unknown keys are refused");
    }

    /// A file whose token line is malformed is refused without the line (and the secret) in the error.
    #[test]
    fn a_bad_settings_file_is_reported_without_its_contents() {
        let err = RawConfig::from_toml("id = \"n1\"\ncluster_token = s3cret-s3cret-s3cret\n").unwrap_err().to_string();
        assert!(err.contains("line 2"), "{err}");
        assert!(!err.contains("s3cret"), "{err}");
    }

    /// The token is taken from a file like any setting, checked in constant time, and never printed.
    #[test]
    fn a_cluster_token_is_checked_and_never_printed() {
        let file = RawConfig::from_toml(r#"cluster_token = "s3cret-s3cret-s3cret""#).unwrap();
        let c = NodeConfig::from_raw(raw().or(file)).unwrap();
        let token = c.cluster_token.clone().expect("from the file");
        assert!(token.is_presented_by(b"Bearer s3cret-s3cret-s3cret"));
        assert!(!token.is_presented_by(b"Bearer s3cret-s3cret-s3creT"));
        assert!(!token.is_presented_by(b"Bearer s3cret-s3cret-s3cret "));
        assert!(!token.is_presented_by(b""));
        assert!(!format!("{c:?}").contains("s3cret"), "the settings print the token");
    }

    #[test]
    fn errors_name_the_setting() {
        let cases: Vec<(RawConfig, &str)> = vec![
            (RawConfig { id: None, ..raw() }, "id"),
            (RawConfig { http: Some("nowhere".into()), ..raw() }, "http"),
            (RawConfig { peer: Some("127.0.0.1:7101".into()), ..raw() }, "peer"),
            (RawConfig { initial_cluster: Some("n2=127.0.0.1:7202".into()), ..raw() }, "initial_cluster"),
            (RawConfig { initial_cluster: Some("n1=127.0.0.1:9999".into()), ..raw() }, "initial_cluster"),
            (RawConfig { join: Some("127.0.0.1:7202".into()), ..raw() }, "join"),
            (RawConfig { partitions: Some(0), ..raw() }, "partitions"),
            (RawConfig { heartbeat_ms: Some(200), election_timeout_ms: Some(300), ..raw() }, "election_timeout_ms"),
            (RawConfig { payment_deadline_ms: Some(0), ..raw() }, "payment_deadline_ms"),
            (RawConfig { idempotency_retention_ms: Some(1), ..raw() }, "idempotency_retention_ms"),
            (RawConfig { quiesce_after_ms: Some(100), ..raw() }, "quiesce_after_ms"),
            (RawConfig { snapshot_logs: Some(1), ..raw() }, "snapshot_logs"),
            (RawConfig { snapshot_chunk_bytes: Some(1 << 30), ..raw() }, "snapshot_chunk_bytes"),
            (RawConfig { cluster_token: Some(ClusterToken::new("short".into())), ..raw() }, "cluster_token"),
            (
                RawConfig { cluster_token: Some(ClusterToken::new("a token with spaces".into())), ..raw() },
                "cluster_token",
            ),
        ];
        for (r, field) in cases {
            let err = NodeConfig::from_raw(r).unwrap_err().to_string();
            assert!(err.contains(field), "{err} does not name {field}");
        }
    }
}
