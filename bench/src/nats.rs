//! NATS messages per confirmed order (`--nats-monitor`): each nats-server's `/varz` message and
//! byte counters before and after the load, the difference summed over the servers.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, header};
use http_body_util::{BodyExt as _, Full};

use crate::client::connect;

/// One server's counters at one moment (they count since the server started).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Varz {
    /// `server_name`, else `server_id`: which server answered at that URL.
    pub server: String,
    pub in_msgs: u64,
    pub out_msgs: u64,
    pub in_bytes: u64,
    pub out_bytes: u64,
}

impl Varz {
    pub fn parse(body: &[u8]) -> anyhow::Result<Self> {
        let json: serde_json::Value = serde_json::from_slice(body)?;
        let count = |field: &str| {
            json[field]
                .as_u64()
                .ok_or_else(|| anyhow::anyhow!("/varz has no {field}"))
        };
        let server = json["server_name"]
            .as_str()
            .filter(|name| !name.is_empty())
            .or_else(|| json["server_id"].as_str())
            .unwrap_or("?")
            .to_owned();
        Ok(Self {
            server,
            in_msgs: count("in_msgs")?,
            out_msgs: count("out_msgs")?,
            in_bytes: count("in_bytes")?,
            out_bytes: count("out_bytes")?,
        })
    }
}

/// `GET <url>/varz`, bounded: an unreachable monitor must not hold the run up.
pub async fn read_varz(url: &str) -> anyhow::Result<Varz> {
    let base = url.trim_end_matches('/');
    let authority = base
        .strip_prefix("http://")
        .filter(|rest| !rest.is_empty() && !rest.contains('/'))
        .ok_or_else(|| anyhow::anyhow!("not an http://host:port URL"))?;
    let fetch = async {
        let mut sender = connect(authority).await?;
        sender.ready().await?;
        let request = Request::get("/varz")
            .header(header::HOST, authority)
            .body(Full::<Bytes>::default())?;
        let response = sender.send_request(request).await?;
        anyhow::ensure!(response.status() == 200, "/varz: {}", response.status());
        let body = response.into_body().collect().await?.to_bytes();
        Varz::parse(&body)
    };
    tokio::time::timeout(Duration::from_secs(2), fetch)
        .await
        .map_err(|_| anyhow::anyhow!("no answer in 2 s"))?
}

/// Every URL's `/varz`, in the order given, each answer or why there is none.
pub async fn read_all(urls: &[String]) -> Vec<anyhow::Result<Varz>> {
    let mut all = Vec::with_capacity(urls.len());
    for url in urls {
        all.push(read_varz(url).await);
    }
    all
}

/// One server's traffic over the load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTraffic {
    pub url: String,
    pub server: String,
    pub in_msgs: u64,
    pub out_msgs: u64,
    pub in_bytes: u64,
    pub out_bytes: u64,
}

/// The servers' traffic over the load, and the monitors that could not be counted.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NatsTraffic {
    pub counted: Vec<ServerTraffic>,
    /// URL and why it is not counted.
    pub not_counted: Vec<(String, String)>,
}

impl NatsTraffic {
    /// Pairs each URL's reading before the load with the one after. A server counts only with
    /// both, from the same server, its counters not gone back (a restart in between resets them).
    pub fn between(
        urls: &[String],
        before: Vec<anyhow::Result<Varz>>,
        after: Vec<anyhow::Result<Varz>>,
    ) -> Self {
        let mut traffic = Self::default();
        for ((url, before), after) in urls.iter().zip(before).zip(after) {
            let (before, after) = match (before, after) {
                (Ok(before), Ok(after)) => (before, after),
                (Err(error), _) => {
                    traffic
                        .not_counted
                        .push((url.clone(), format!("before the load: {error:#}")));
                    continue;
                }
                (_, Err(error)) => {
                    traffic
                        .not_counted
                        .push((url.clone(), format!("after the load: {error:#}")));
                    continue;
                }
            };
            let went_back = after.in_msgs < before.in_msgs
                || after.out_msgs < before.out_msgs
                || after.in_bytes < before.in_bytes
                || after.out_bytes < before.out_bytes;
            if before.server != after.server || went_back {
                traffic.not_counted.push((
                    url.clone(),
                    "another server or a restart during the load (counters reset)".to_owned(),
                ));
                continue;
            }
            traffic.counted.push(ServerTraffic {
                url: url.clone(),
                server: after.server,
                in_msgs: after.in_msgs - before.in_msgs,
                out_msgs: after.out_msgs - before.out_msgs,
                in_bytes: after.in_bytes - before.in_bytes,
                out_bytes: after.out_bytes - before.out_bytes,
            });
        }
        traffic
    }

    pub fn in_msgs(&self) -> u64 {
        self.counted.iter().map(|s| s.in_msgs).sum()
    }

    pub fn out_msgs(&self) -> u64 {
        self.counted.iter().map(|s| s.out_msgs).sum()
    }

    pub fn bytes(&self) -> u64 {
        self.counted.iter().map(|s| s.in_bytes + s.out_bytes).sum()
    }

    /// With more than one server, `/varz` counts each message once more for every route it
    /// crosses (the cluster's replication): the sum includes that.
    pub fn includes_routes(&self) -> bool {
        self.counted.len() > 1
    }

    /// (in + out messages, in, out, in + out bytes) per confirmed order; `None` when nothing
    /// was counted or confirmed.
    pub fn per_order(&self, confirmed: u64) -> Option<PerOrder> {
        if self.counted.is_empty() || confirmed == 0 {
            return None;
        }
        let per = |n: u64| n as f64 / confirmed as f64;
        Some(PerOrder {
            messages: per(self.in_msgs() + self.out_msgs()),
            in_msgs: per(self.in_msgs()),
            out_msgs: per(self.out_msgs()),
            bytes: per(self.bytes()),
        })
    }
}

/// The traffic over the load divided by the confirmed orders.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PerOrder {
    pub messages: f64,
    pub in_msgs: f64,
    pub out_msgs: f64,
    pub bytes: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varz(server: &str, in_msgs: u64, out_msgs: u64, in_bytes: u64, out_bytes: u64) -> Varz {
        Varz {
            server: server.to_owned(),
            in_msgs,
            out_msgs,
            in_bytes,
            out_bytes,
        }
    }

    #[test]
    fn varz_is_read_from_the_monitors_json() {
        let body = br#"{"server_id":"NABC","server_name":"n1","version":"2.15.1",
            "in_msgs":1200,"out_msgs":3400,"in_bytes":560000,"out_bytes":780000,"connections":3}"#;
        assert_eq!(
            Varz::parse(body).expect("parsed"),
            varz("n1", 1200, 3400, 560_000, 780_000)
        );
        let unnamed = br#"{"server_id":"NABC","server_name":"","in_msgs":1,"out_msgs":2,"in_bytes":3,"out_bytes":4}"#;
        assert_eq!(Varz::parse(unnamed).expect("parsed").server, "NABC");
        assert!(Varz::parse(br#"{"server_id":"NABC"}"#).is_err());
        assert!(Varz::parse(b"<html>").is_err());
    }

    #[test]
    fn the_traffic_is_summed_over_the_servers_that_answered_both_times() {
        let urls: Vec<String> = [
            "http://a:8222",
            "http://b:8223",
            "http://c:8224",
            "http://d:8225",
        ]
        .map(String::from)
        .into();
        let before = vec![
            Ok(varz("n1", 100, 200, 10_000, 20_000)),
            Ok(varz("n2", 50, 60, 5_000, 6_000)),
            Err(anyhow::anyhow!("connection refused")),
            Ok(varz("n4", 900, 900, 900, 900)),
        ];
        let after = vec![
            Ok(varz("n1", 3_100, 8_200, 310_000, 820_000)),
            Ok(varz("n2", 2_050, 2_060, 205_000, 206_000)),
            Ok(varz("n3", 1, 1, 1, 1)),
            // Restarted: its counters began again.
            Ok(varz("n4", 10, 10, 10, 10)),
        ];
        let traffic = NatsTraffic::between(&urls, before, after);
        assert_eq!(
            traffic
                .counted
                .iter()
                .map(|s| s.server.as_str())
                .collect::<Vec<_>>(),
            ["n1", "n2"]
        );
        assert_eq!(
            traffic
                .not_counted
                .iter()
                .map(|(url, _)| url.as_str())
                .collect::<Vec<_>>(),
            ["http://c:8224", "http://d:8225"]
        );
        assert_eq!((traffic.in_msgs(), traffic.out_msgs()), (5_000, 10_000));
        assert_eq!(traffic.bytes(), 500_000 + 1_000_000);
        assert!(traffic.includes_routes());
        let per = traffic.per_order(1_000).expect("counted and confirmed");
        assert_eq!(
            (per.messages, per.in_msgs, per.out_msgs, per.bytes),
            (15.0, 5.0, 10.0, 1_500.0)
        );
        assert_eq!(traffic.per_order(0), None);
        assert_eq!(NatsTraffic::default().per_order(1_000), None);
    }
}
