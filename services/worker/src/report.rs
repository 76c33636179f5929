//! `finalprice-worker status`: the state of the order path as operators need it — each NATS
//! server, the queue and its replicas, the consumer's backlog, the dead letters, and which
//! fronts and workers are alive.

use std::fmt::Write as _;
use std::time::Duration;

use async_nats::jetstream;
use chrono::Utc;
use finalprice_shared::config::NatsConfig;
use finalprice_shared::messages::Presence;
use finalprice_shared::{nats, presence};

/// How long `status` listens for fronts and workers answering its ping.
const PING_WINDOW: Duration = Duration::from_millis(500);

/// How long one NATS server may take to answer `status` before it is shown as not answering:
/// a hung server (stopped, swapping) still accepts TCP connections, so only an answer counts.
const SERVER_ANSWER_WITHIN: Duration = Duration::from_millis(1500);

/// The numbers `status` prints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Each server `NATS_URL` lists, as it answered.
    pub servers: Vec<ServerState>,
    /// The order stream's RAFT group; `None` on a single server.
    pub stream_group: Option<Group>,
    /// Orders in `ORDERS`: waiting for a worker or being committed.
    pub queued: u64,
    pub queued_bytes: u64,
    pub max_queued: i64,
    /// `None`: no worker has created the consumer yet.
    pub consumer: Option<ConsumerState>,
    pub dead_letters: u64,
    pub alive: Vec<Presence>,
}

/// One server of `NATS_URL`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerState {
    /// As `NATS_URL` gives it, without a password.
    pub url: String,
    /// The `server_name` it answered with; `None`: it did not answer.
    pub name: Option<String>,
}

/// A replicated stream's or consumer's RAFT group: who leads, and how each other replica is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// `None`: no leader at the moment (an election is under way, or quorum is lost).
    pub leader: Option<String>,
    pub replicas: Vec<Replica>,
}

/// A follower of a [`Group`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replica {
    pub name: String,
    /// Caught up with the leader.
    pub current: bool,
    /// The group considers it gone.
    pub offline: bool,
    /// Operations it is behind the leader.
    pub lag: u64,
    /// Since the leader last heard from it.
    pub seen_ago: Duration,
}

impl Group {
    fn from_info(info: Option<&jetstream::stream::ClusterInfo>) -> Option<Self> {
        // A single server names itself leader of a group with no replicas; so does an R1
        // stream in a cluster. Neither has replicas to show.
        let info = info.filter(|info| !info.replicas.is_empty())?;
        Some(Self {
            leader: info.leader.clone(),
            replicas: info
                .replicas
                .iter()
                .map(|peer| Replica {
                    name: peer.name.clone(),
                    current: peer.current,
                    offline: peer.offline,
                    lag: peer.lag.unwrap_or(0),
                    seen_ago: peer.active,
                })
                .collect(),
        })
    }

    fn render(&self) -> String {
        let mut out = match &self.leader {
            Some(leader) => format!("leader {leader}"),
            None => "NO LEADER (an election is under way, or quorum is lost)".to_owned(),
        };
        for replica in &self.replicas {
            let state = if replica.offline {
                "OFFLINE".to_owned()
            } else if replica.current {
                "current".to_owned()
            } else {
                format!(
                    "LAGGING by {} operation(s), seen {:.1}s ago",
                    replica.lag,
                    replica.seen_ago.as_secs_f64()
                )
            };
            let _ = write!(out, "; {} {state}", replica.name);
        }
        out
    }
}

/// The shared consumer's backlog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerState {
    /// The consumer's RAFT group; `None` on a single server.
    pub group: Option<Group>,
    /// Not yet delivered to any worker (the lag).
    pub pending: u64,
    /// Delivered, not yet acked.
    pub ack_pending: usize,
    /// Delivered more than once and not yet acked.
    pub redelivered: usize,
    /// Pull requests waiting: idle workers.
    pub waiting: usize,
}

/// Asks each server of `NATS_URL` on its own connection for its name.
async fn servers(config: &NatsConfig) -> Vec<ServerState> {
    let looks = config.servers().into_iter().map(|server| async move {
        let answered = tokio::time::timeout(SERVER_ANSWER_WITHIN, async {
            let client = nats::connect_to_one(config, server).await.ok()?;
            // The INFO of the connect may be an earlier one's; a flush is this server's answer.
            client.flush().await.ok()?;
            Some(client.server_info().server_name)
        })
        .await;
        ServerState {
            url: finalprice_shared::config::redact_url_password(server),
            name: answered.ok().flatten(),
        }
    });
    futures_util::future::join_all(looks).await
}

/// Reads the report from NATS.
pub async fn read(config: &NatsConfig) -> anyhow::Result<Report> {
    let servers = servers(config).await;
    let client = nats::connect(config, "finalprice-status").await?;
    let js = nats::jetstream(client.clone(), config);
    let orders = nats::orders_stream_config(config)?;
    let dlq = nats::dead_letter_stream_config(config)?;
    // get_stream fetches the stream's info: one round trip per stream, read from the cache.
    let stream = js.get_stream(&orders.name).await?;
    let info = stream.cached_info().clone();
    let consumer = match stream
        .get_consumer::<jetstream::consumer::pull::Config>("workers")
        .await
    {
        Ok(mut consumer) => {
            let info = consumer.info().await?;
            Some(ConsumerState {
                group: Group::from_info(info.cluster.as_ref()),
                pending: info.num_pending,
                ack_pending: info.num_ack_pending,
                redelivered: info.num_redelivered,
                waiting: info.num_waiting,
            })
        }
        Err(_) => None,
    };
    let dead_letters = match js.get_stream(&dlq.name).await {
        Ok(dlq) => dlq.cached_info().state.messages,
        Err(_) => 0,
    };
    let alive = presence::collect(&client, PING_WINDOW)
        .await
        .map_err(|error| anyhow::anyhow!(error))?;
    Ok(Report {
        servers,
        stream_group: Group::from_info(info.cluster.as_ref()),
        queued: info.state.messages,
        queued_bytes: info.state.bytes,
        max_queued: info.config.max_messages,
        consumer,
        dead_letters,
        alive,
    })
}

impl Report {
    /// Fronts and workers that answered.
    pub fn count(&self, service: &str) -> usize {
        self.alive.iter().filter(|p| p.service == service).count()
    }

    /// The report as text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if self.servers.len() > 1 || self.stream_group.is_some() {
            let answering = self.servers.iter().filter(|s| s.name.is_some()).count();
            let _ = writeln!(
                out,
                "nats servers:        {answering} of {} answering",
                self.servers.len()
            );
            for server in &self.servers {
                let state = match &server.name {
                    Some(name) => format!("up ({name})"),
                    None => "NOT ANSWERING".to_owned(),
                };
                let _ = writeln!(out, "  {:<40} {state}", server.url);
            }
        }
        if let Some(group) = &self.stream_group {
            let _ = writeln!(out, "stream replicas:     {}", group.render());
        }
        let _ = writeln!(
            out,
            "queue ORDERS:        {} orders ({} bytes), limit {}",
            self.queued, self.queued_bytes, self.max_queued
        );
        match &self.consumer {
            Some(c) => {
                let _ = writeln!(
                    out,
                    "consumer workers:    pending {} (lag), ack pending {}, redelivered {}, idle pulls {}",
                    c.pending, c.ack_pending, c.redelivered, c.waiting
                );
                if let Some(group) = &c.group {
                    let _ = writeln!(out, "consumer replicas:   {}", group.render());
                }
            }
            None => {
                let _ = writeln!(out, "consumer workers:    none yet (no worker has started)");
            }
        }
        let _ = writeln!(out, "dead letters:        {} (just dlq)", self.dead_letters);
        let _ = writeln!(
            out,
            "alive:               {} front(s), {} worker(s)",
            self.count("finalprice-front"),
            self.count("finalprice-worker")
        );
        for presence in &self.alive {
            let up = (Utc::now() - presence.started_at).num_seconds().max(0);
            let _ = writeln!(
                out,
                "  {:<18} {}  v{}  up {}s",
                presence.service, presence.instance, presence.version, up
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replica(name: &str, current: bool, offline: bool, lag: u64) -> Replica {
        Replica {
            name: name.to_owned(),
            current,
            offline,
            lag,
            seen_ago: Duration::from_millis(2500),
        }
    }

    #[test]
    fn a_cluster_report_names_each_server_leader_and_replica_state() {
        let report = Report {
            servers: vec![
                ServerState {
                    url: "nats://a:4222".to_owned(),
                    name: Some("n1".to_owned()),
                },
                ServerState {
                    url: "nats://b:4222".to_owned(),
                    name: None,
                },
            ],
            stream_group: Some(Group {
                leader: Some("n1".to_owned()),
                replicas: vec![
                    replica("n2", false, false, 12),
                    replica("n3", false, true, 0),
                ],
            }),
            queued: 3,
            queued_bytes: 600,
            max_queued: 1_000_000,
            consumer: Some(ConsumerState {
                group: Some(Group {
                    leader: None,
                    replicas: vec![replica("n2", true, false, 0)],
                }),
                pending: 1,
                ack_pending: 2,
                redelivered: 0,
                waiting: 0,
            }),
            dead_letters: 0,
            alive: Vec::new(),
        };
        let text = report.render();
        assert!(text.contains("1 of 2 answering"), "{text}");
        assert!(text.contains("nats://a:4222"), "{text}");
        assert!(text.contains("up (n1)"), "{text}");
        assert!(text.contains("NOT ANSWERING"), "{text}");
        assert!(
            text.contains("leader n1; n2 LAGGING by 12 operation(s), seen 2.5s ago; n3 OFFLINE"),
            "{text}"
        );
        assert!(text.contains("consumer replicas:   NO LEADER"), "{text}");
        assert!(text.contains("; n2 current"), "{text}");
    }

    #[test]
    fn a_stream_without_replicas_has_no_group() {
        let single = jetstream::stream::ClusterInfo {
            leader: Some("solo".to_owned()),
            ..Default::default()
        };
        assert_eq!(Group::from_info(Some(&single)), None);
        assert_eq!(Group::from_info(None), None);
    }

    #[test]
    fn a_single_server_report_has_no_cluster_lines() {
        let report = Report {
            servers: vec![ServerState {
                url: "nats://a:4222".to_owned(),
                name: Some("solo".to_owned()),
            }],
            stream_group: None,
            queued: 0,
            queued_bytes: 0,
            max_queued: 10,
            consumer: None,
            dead_letters: 0,
            alive: Vec::new(),
        };
        let text = report.render();
        assert!(!text.contains("nats servers"), "{text}");
        assert!(!text.contains("replicas"), "{text}");
    }
}
