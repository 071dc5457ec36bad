//! The HTTP API every node serves (the parts built so far): health, readiness, metrics, the cluster view and
//! the replicated key-value store. Errors are `{"error": {"code", "message"}}`; a write to a partition without
//! a leader answers 503 `unavailable` with `Retry-After`.

use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use openraft::type_config::async_runtime::WatchReceiver as _;
use openraft::ServerState;
use serde::Deserialize;
use serde_json::json;

use crate::node::{live_leader, Node, Read, ReadResult, RequestError};
use crate::types::{GroupId, Op};

/// The largest request body accepted.
pub const MAX_REQUEST: usize = 64 * 1024;
/// The longest key, in bytes.
pub const MAX_KEY: usize = 256;
/// The longest value, in bytes.
pub const MAX_VALUE: usize = 16 * 1024;

/// A request's JSON body, or the status and message of its refusal (code `invalid_request`): 413 past
/// [`MAX_REQUEST`], 400 naming what is wrong otherwise. Every endpoint with a body answers the same way.
pub(crate) fn json_body<T>(body: Result<Json<T>, JsonRejection>) -> Result<T, (StatusCode, String)> {
    body.map(|Json(t)| t).map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            (StatusCode::PAYLOAD_TOO_LARGE, format!("body: at most {MAX_REQUEST} bytes"))
        } else {
            (StatusCode::BAD_REQUEST, e.body_text())
        }
    })
}

/// A path's one parameter (a key, a SKU, an order or node id). One that is malformed (not UTF-8 once its
/// percent-escapes are decoded) is refused as 400 `invalid_request` in the documented shape, not axum's plain text.
pub(crate) struct PathParam(pub String);

impl<S: Send + Sync> FromRequestParts<S> for PathParam {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Path::<String>::from_request_parts(parts, state).await {
            Ok(Path(param)) => Ok(PathParam(param)),
            // A route wired without its parameter is the server's fault, not the request's.
            Err(e) if e.status().is_server_error() => Err(error(e.status(), "internal", e.body_text())),
            Err(e) => Err(error(StatusCode::BAD_REQUEST, "invalid_request", e.body_text())),
        }
    }
}

pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/cluster", get(cluster))
        .route("/v1/cluster/nodes", axum::routing::post(add_node))
        .route("/v1/cluster/nodes/{id}", axum::routing::delete(remove_node))
        .route("/v1/kv/{key}", get(kv_get).put(kv_put))
        .merge(crate::trade_api::routes())
        .route_layer(axum::middleware::from_fn_with_state(node.clone(), timed))
        // Every answer, an unknown path's and a wrong method's too, is an error in the documented shape.
        .fallback(|uri: axum::http::Uri| async move {
            error(StatusCode::NOT_FOUND, "not_found", format!("no such path: {}", uri.path()))
        })
        .method_not_allowed_fallback(|method: axum::http::Method, uri: axum::http::Uri| async move {
            error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("{method} is not served on {}", uri.path()),
            )
        })
        .layer(DefaultBodyLimit::max(MAX_REQUEST))
        .with_state(node)
}

pub(crate) fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    let body = Json(json!({"error": {"code": code, "message": message.into()}}));
    if status == StatusCode::SERVICE_UNAVAILABLE {
        (status, [(header::RETRY_AFTER, "1")], body).into_response()
    } else {
        (status, body).into_response()
    }
}

pub(crate) fn request_error(e: RequestError) -> Response {
    match e {
        RequestError::Unavailable(_) => error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e.to_string()),
        RequestError::Indeterminate(_) => error(
            StatusCode::GATEWAY_TIMEOUT,
            "unknown_outcome",
            format!("{e}: read it back to find out (repeating a put is safe: it is idempotent)"),
        ),
        RequestError::Internal(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()),
    }
}

/// The error answer for a key out of range, if it is.
fn bad_key(key: &str) -> Option<Response> {
    (key.is_empty() || key.len() > MAX_KEY || key.chars().any(char::is_control)).then(|| {
        error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!("key: 1 to {MAX_KEY} bytes without control characters"),
        )
    })
}

async fn readyz(State(node): State<Arc<Node>>) -> Response {
    let leaderless = node.leaderless();
    if leaderless.is_empty() {
        Json(json!({"status": "ready"})).into_response()
    } else {
        error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", format!("partitions without a leader: {leaderless:?}"))
    }
}

async fn cluster(State(node): State<Arc<Node>>) -> Response {
    let seen = node.membership.members();
    let cluster = node.cluster();
    let members: Vec<&str> = cluster.config.members().iter().map(|m| m.id.as_str()).collect();
    let names = node.peers.nodes();
    let down = node.down();
    let nodes: Vec<_> = cluster
        .config
        .addrs
        .values()
        .map(|n| {
            let member = members.contains(&n.id.as_str());
            if n.id == node.config.id {
                return json!({"id": n.id, "addr": n.peer, "http": node.config.http.to_string(), "zone": node.config.zone, "state": if member { "alive" } else { "left" }, "phi": 0.0});
            }
            match seen.iter().find(|(m, _)| m.id == n.id) {
                Some((m, phi)) => json!({
                    "id": n.id, "addr": n.peer, "http": m.meta.http, "zone": m.meta.zone,
                    "state": if member { format!("{:?}", m.state).to_lowercase() } else { "left".into() },
                    // Phi grows without bound for a silent member; 1000 already means "certainly gone".
                    "phi": (phi.min(1000.0) * 100.0).round() / 100.0,
                }),
                // Not known to membership: never heard of since this node started (it has not joined, or has been
                // down since), or forgotten once dead or gone long enough (then in the state it was last heard in).
                // Its zone is the one the configuration gave it last.
                None => {
                    let listed = cluster.config.history.iter().rev().flatten();
                    let zone = listed.filter(|m| m.id == n.id).map(|m| m.zone.clone()).next();
                    let last = node.last_heard.lock().ok().and_then(|l| l.get(&n.id).copied());
                    let state = match last {
                        _ if !member => "left".to_owned(),
                        Some(s) => format!("{s:?}").to_lowercase(),
                        None => "suspect".to_owned(),
                    };
                    json!({"id": n.id, "addr": n.peer, "http": null, "zone": zone, "state": state, "phi": null})
                }
            }
        })
        .collect();
    let name = |id: &u64| names.get(id).map(|n| n.id.clone());
    // Partitions this node holds no replica of: their leaders as the nodes holding them see them.
    let elsewhere: Vec<GroupId> = (0..node.config.partitions).filter(|p| node.group(*p).is_none()).collect();
    let elsewhere = node.leaders_elsewhere(&elsewhere).await;
    let mut moving = 0;
    let partitions: Vec<_> = (0..node.config.partitions)
        .map(|p| {
            let m = node.metrics(p);
            let target: Vec<String> = cluster.replicas(p).iter().filter_map(name).collect();
            // The voters as this node's replica of the group sees them (unknown where it has none).
            let voters: Option<Vec<String>> =
                m.as_ref().map(|m| m.membership_config.membership().voter_ids().filter_map(|v| name(&v)).collect());
            let settled = voters.as_ref().map(|v| {
                let (mut a, mut b) = (v.clone(), target.clone());
                a.sort();
                b.sort();
                a == b
            });
            if settled == Some(false) {
                moving += 1;
            }
            json!({
                "id": p,
                "replicas": target,
                "voters": voters,
                "moving": settled.map(|s| !s),
                "leader": match &m {
                    Some(m) => live_leader(m, &down).as_ref().and_then(name),
                    None => elsewhere.get(&p).and_then(|l| name(&l.leader)),
                },
                "term": m.as_ref().map(|m| m.current_term).or(elsewhere.get(&p).map(|l| l.term)),
            })
        })
        .collect();
    let meta = node.metrics(crate::cluster::META_GROUP);
    let metadata = json!({
        "replicas": cluster.config.meta_members(),
        "voters": meta.as_ref().map(|m| m.membership_config.membership().voter_ids().filter_map(|v| name(&v)).collect())
            as Option<Vec<String>>,
        "leader": meta.as_ref().and_then(|m| live_leader(m, &down)).as_ref().and_then(name),
    });
    Json(json!({
        "nodes": nodes, "partitions": partitions, "ring_epoch": cluster.placement.epoch(),
        "config_epoch": cluster.config.epoch, "partitions_moving": moving, "metadata": metadata,
        "cluster_id": cluster.config.identity.map(|i| format!("{i:x}")),
    }))
    .into_response()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewNode {
    id: String,
    peer: String,
    http: String,
    zone: Option<String>,
    weight: Option<u32>,
}

/// `POST /v1/cluster/nodes`: adds a node (or re-announces its addresses); its replicas move to it.
async fn add_node(State(node): State<Arc<Node>>, body: Result<Json<NewNode>, JsonRejection>) -> Response {
    let b = match json_body(body) {
        Ok(b) => b,
        Err((status, message)) => return error(status, "invalid_request", message),
    };
    let ok_id = |s: &str| {
        !s.is_empty()
            && s.len() <= 64
            && s.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
    };
    if !ok_id(&b.id) {
        return error(StatusCode::BAD_REQUEST, "invalid_request", "id: 1 to 64 ASCII letters, digits, '-', '_' or '.'");
    }
    if b.peer.parse::<std::net::SocketAddr>().is_err() || b.http.parse::<std::net::SocketAddr>().is_err() {
        return error(StatusCode::BAD_REQUEST, "invalid_request", "peer, http: addresses like 127.0.0.1:7104");
    }
    let zone = b.zone.unwrap_or_else(|| "default".into());
    let weight = b.weight.unwrap_or(100);
    if !ok_id(&zone) || !(1..=100_000).contains(&weight) {
        return error(StatusCode::BAD_REQUEST, "invalid_request", "zone: like an id; weight: 1 to 100000");
    }
    let op = crate::cluster::AdminOp::Join {
        member: crate::cluster::Member { id: b.id.clone(), zone, weight },
        addr: crate::types::PeerNode { id: b.id, peer: b.peer, http: b.http },
    };
    admin_answer(node.admin(op).await)
}

/// `DELETE /v1/cluster/nodes/{id}`: decommissions a node; its replicas move to the others first.
async fn remove_node(State(node): State<Arc<Node>>, PathParam(id): PathParam) -> Response {
    admin_answer(node.admin(crate::cluster::AdminOp::Remove { id }).await)
}

fn admin_answer(r: Result<crate::cluster::ClusterConfig, crate::cluster::AdminError>) -> Response {
    use crate::cluster::AdminError;
    match r {
        Ok(c) => Json(json!({
            "config_epoch": c.epoch,
            "members": c.members().iter().map(|m| &m.id).collect::<Vec<_>>(),
        }))
        .into_response(),
        Err(AdminError::UnknownNode(id)) => error(StatusCode::NOT_FOUND, "unknown_node", format!("no node {id}")),
        Err(e @ (AdminError::TooFew(_) | AdminError::IdInUse(_))) => {
            error(StatusCode::CONFLICT, "refused", e.to_string())
        }
        Err(e @ AdminError::LastMetaVoter(_)) => error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e.to_string()),
        Err(AdminError::Invalid(m)) => error(StatusCode::BAD_REQUEST, "invalid_request", m),
        Err(AdminError::Request(e)) => request_error(e),
    }
}

/// Records how long each request took, under its route template.
async fn timed(
    State(node): State<Arc<Node>>,
    route: axum::extract::MatchedPath,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let method = request.method().clone();
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    node.latency.record(method.as_str(), route.as_str(), started.elapsed());
    response
}

async fn metrics(State(node): State<Arc<Node>>) -> Response {
    let mut out = String::new();
    let _ = writeln!(out, "# TYPE rampart_raft_term gauge");
    let _ = writeln!(out, "# TYPE rampart_raft_last_log_index gauge");
    let _ = writeln!(out, "# TYPE rampart_raft_committed_index gauge");
    let _ = writeln!(out, "# TYPE rampart_raft_last_applied_index gauge");
    let _ = writeln!(out, "# TYPE rampart_raft_is_leader gauge");
    let _ = writeln!(out, "# TYPE rampart_raft_leader_changes_total counter");
    let _ = writeln!(out, "# TYPE rampart_raft_snapshot_index gauge");
    let _ = writeln!(out, "# TYPE rampart_raft_purged_index gauge");
    let _ = writeln!(out, "# TYPE rampart_raft_quiesced gauge");
    let leader_changes = node.leader_changes();
    for (g, raft, quiet) in &node.hosted_quiet() {
        let m = raft.metrics().borrow_watched().clone();
        let _ = writeln!(out, "rampart_raft_term{{partition=\"{g}\"}} {}", m.current_term);
        let _ = writeln!(out, "rampart_raft_last_log_index{{partition=\"{g}\"}} {}", m.last_log_index.unwrap_or(0));
        let _ = writeln!(
            out,
            "rampart_raft_last_applied_index{{partition=\"{g}\"}} {}",
            m.last_applied.map_or(0, |l| l.index)
        );
        let _ =
            writeln!(out, "rampart_raft_is_leader{{partition=\"{g}\"}} {}", u8::from(m.state == ServerState::Leader));
        let _ = writeln!(
            out,
            "rampart_raft_committed_index{{partition=\"{g}\"}} {}",
            m.local_committed.map_or(0, |l| l.index)
        );
        let snapshot = m.snapshot.map_or(0, |l| l.index);
        let _ = writeln!(out, "rampart_raft_snapshot_index{{partition=\"{g}\"}} {snapshot}");
        let _ = writeln!(out, "rampart_raft_purged_index{{partition=\"{g}\"}} {}", m.purged.map_or(0, |l| l.index));
        let _ = writeln!(out, "rampart_raft_quiesced{{partition=\"{g}\"}} {}", u8::from(quiet.is_quiesced()));
        let changes = leader_changes.get(g).copied().unwrap_or(0);
        let _ = writeln!(out, "rampart_raft_leader_changes_total{{partition=\"{g}\"}} {changes}");
    }
    node.latency.render(&mut out);
    use std::sync::atomic::Ordering::Relaxed;
    let stats = &node.store.stats;
    let (snapshot_chunks, snapshots) = node.snapshots_in.lock().map(|a| (a.chunks, a.completed)).unwrap_or_default();
    let counters = [
        ("rampart_store_commits_total", "storage transactions committed", stats.commits.load(Relaxed)),
        (
            "rampart_store_durable_commits_total",
            "of which fsync'd (checkpoints included)",
            stats.durable_commits.load(Relaxed),
        ),
        (
            "rampart_store_wal_records_total",
            "batches of appends written as a write-ahead record",
            stats.wal_records.load(Relaxed),
        ),
        ("rampart_store_writes_total", "writes those transactions carried", stats.writes.load(Relaxed)),
        ("rampart_proposed_entries_total", "Raft entries proposed by this node", node.proposed.entries.load(Relaxed)),
        ("rampart_proposed_ops_total", "client operations those entries carried", node.proposed.ops.load(Relaxed)),
        (
            "rampart_proposed_gathered_entries_total",
            "of those entries, the ones that waited for the callers the entry before answered",
            node.proposed.gathered.load(Relaxed),
        ),
        (
            "rampart_proposed_gather_missed_total",
            "of those, the ones whose wait ran out first",
            node.proposed.gather_missed.load(Relaxed),
        ),
        ("rampart_snapshot_chunks_received_total", "snapshot chunks taken in from leaders", snapshot_chunks),
        ("rampart_snapshots_received_total", "snapshots received whole from leaders", snapshots),
        ("rampart_peer_requests_refused_total", "peer RPC refused: no cluster token", node.peer_refused.load(Relaxed)),
        (
            "rampart_raft_appends_received_total",
            "Raft appends from leaders handed to groups",
            node.appends_in.load(Relaxed),
        ),
        (
            "rampart_raft_empty_appends_received_total",
            "of which carried no entries (heartbeats, commit notices)",
            node.empty_appends_in.load(Relaxed),
        ),
        (
            "rampart_membership_packets_dropped_total",
            "membership packets dropped: not tagged with the cluster's key",
            node.membership.untagged_dropped(),
        ),
    ];
    for (name, help, value) in counters {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}");
    }
    let histograms = [
        (
            "rampart_store_durable_commit_duration_seconds",
            "durable storage commits (checkpoints included), from the transaction's start to its fsync's end",
            &stats.durable_commit_seconds,
        ),
        (
            "rampart_store_wal_record_duration_seconds",
            "write-ahead records, from the batch's start to its fsync's end",
            &stats.wal_record_seconds,
        ),
    ];
    for (name, help, histogram) in histograms {
        if let Ok(h) = histogram.lock() {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
            h.render(&mut out, name, "");
        }
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PutBody {
    value: String,
    fence: Option<serde_json::Value>,
}

async fn kv_put(
    State(node): State<Arc<Node>>,
    PathParam(key): PathParam,
    body: Result<Json<PutBody>, JsonRejection>,
) -> Response {
    if let Some(r) = bad_key(&key) {
        return r;
    }
    let body = match json_body(body) {
        Ok(b) => b,
        Err((status, message)) => return error(status, "invalid_request", message),
    };
    if body.value.len() > MAX_VALUE {
        return error(StatusCode::BAD_REQUEST, "invalid_request", format!("value: at most {MAX_VALUE} bytes"));
    }
    if body.fence.is_some() {
        return error(StatusCode::BAD_REQUEST, "invalid_request", "fence: fenced writes arrive with the lock service");
    }
    let group = node.partition_of(&key);
    match node.propose(group, Op::Put { key: key.clone(), value: body.value }).await {
        Ok(_) => Json(json!({"key": key, "partition": group})).into_response(),
        Err(e) => request_error(e),
    }
}

async fn kv_get(State(node): State<Arc<Node>>, PathParam(key): PathParam) -> Response {
    if let Some(r) = bad_key(&key) {
        return r;
    }
    let group = node.partition_of(&key);
    match node.query(group, Read::Kv(key.clone())).await {
        Ok(ReadResult::Kv(Some(value))) => Json(json!({"key": key, "value": value})).into_response(),
        Ok(_) => error(StatusCode::NOT_FOUND, "not_found", format!("no value for key {key:?}")),
        Err(e) => request_error(e),
    }
}
