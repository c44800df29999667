//! `potluck status`: the fleet on one screen, for people without a dashboard.
//!
//! Everything comes from the agents themselves (the newest cluster map any given endpoint
//! holds, then every member's `GetStatus`), so it works with or without Kubernetes. Pool
//! health is judged by the operator's own rules ([`potluck_operator::pool_status`]), so the
//! word printed here is the word `kubectl get storagepools` shows.

use std::collections::HashMap;
use std::time::Duration;

use futures::stream::{self, StreamExt};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use potluck_api::condition::{self, DEGRADED, READY};
use potluck_api::{PoolHealth, StoragePoolStatus};
use potluck_operator::pool_status::{pool_status, AgentReport, PoolInputs};
use potluck_proto::v1::agent_control_client::AgentControlClient;
use potluck_proto::v1::{
    AgentStatus, ClusterMap, GetClusterMapRequest, GetStatusRequest, MemberState,
};

use crate::client::{normalize_endpoint, ClientError};
use crate::human::format_size;

/// Members asked at once: enough for a quick screen, few enough not to flood a large fleet.
const CONCURRENCY: usize = 16;

/// What the agents said.
#[derive(Debug)]
pub struct FleetStatus {
    pub map: ClusterMap,
    /// Each member's answer, or why there was none.
    pub members: HashMap<String, Result<AgentStatus, String>>,
    /// Bytes rebuilt per second across the fleet, measured over a short window when
    /// something was being healed.
    pub heal_rate: Option<f64>,
}

/// How long the rebuilt-bytes counters are watched to estimate the healing rate.
const RATE_WINDOW: Duration = Duration::from_secs(2);

/// Bytes the PG leaders found missing and still have to rebuild.
pub fn bytes_to_heal(status: &FleetStatus) -> u64 {
    status
        .members
        .values()
        .filter_map(|r| r.as_ref().ok())
        .flat_map(|s| s.pgs.iter())
        .filter(|p| !p.clean)
        .map(|p| p.missing_bytes)
        .sum()
}

fn recovered_total(members: &HashMap<String, Result<AgentStatus, String>>) -> u64 {
    members
        .values()
        .filter_map(|r| r.as_ref().ok())
        .map(|s| s.recovered_bytes)
        .sum()
}

/// Asks every endpoint for its map, keeps the newest, then asks every member in it for its
/// status (each call bounded by `timeout`).
pub async fn fetch(
    endpoints: &[String],
    timeout: Duration,
    tls: Option<&potluck_tls::Material>,
) -> Result<FleetStatus, ClientError> {
    let uris = endpoints
        .iter()
        .map(|e| normalize_endpoint(e))
        .collect::<Result<Vec<_>, _>>()?;
    let maps = futures::future::join_all(uris.iter().map(|uri| async move {
        let r = async {
            let mut c = connect(uri, timeout, tls).await?;
            c.get_cluster_map(GetClusterMapRequest {})
                .await
                .map(|r| r.into_inner())
                .map_err(|s| s.message().to_string())
        }
        .await;
        (uri.clone(), r)
    }))
    .await;
    let mut failures = Vec::new();
    let mut newest: Option<ClusterMap> = None;
    for (uri, r) in maps {
        match r {
            Ok(m) if newest.as_ref().is_none_or(|n| n.epoch < m.epoch) => newest = Some(m),
            Ok(_) => {}
            Err(e) => failures.push(format!("{uri}: {e}")),
        }
    }
    let Some(map) = newest else {
        return Err(ClientError::Unreachable {
            details: failures.join("; "),
        });
    };
    let targets: Vec<(String, String)> = map
        .members
        .iter()
        .map(|m| (m.id.clone(), format!("http://{}", m.endpoint)))
        .collect();
    let first = ask_members(&targets, timeout, tls).await;
    let mut status = FleetStatus {
        map,
        members: first,
        heal_rate: None,
    };
    if bytes_to_heal(&status) > 0 {
        // Something is being rebuilt: watch the counters for a moment to give a rate and ETA.
        let before = recovered_total(&status.members);
        let started = std::time::Instant::now();
        tokio::time::sleep(RATE_WINDOW).await;
        let second = ask_members(&targets, timeout, tls).await;
        let secs = started.elapsed().as_secs_f64();
        let after = recovered_total(&second);
        status.heal_rate = Some(after.saturating_sub(before) as f64 / secs.max(0.001));
        status.members = second;
    }
    Ok(status)
}

async fn ask_members(
    targets: &[(String, String)],
    timeout: Duration,
    tls: Option<&potluck_tls::Material>,
) -> HashMap<String, Result<AgentStatus, String>> {
    stream::iter(targets.iter().cloned())
        .map(|(id, uri)| async move {
            let r = async {
                let mut c = connect(&uri, timeout, tls).await?;
                c.get_status(GetStatusRequest {})
                    .await
                    .map(|r| r.into_inner())
                    .map_err(|s| s.message().to_string())
            }
            .await;
            (id, r)
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await
}

async fn connect(
    uri: &str,
    timeout: Duration,
    tls: Option<&potluck_tls::Material>,
) -> Result<AgentControlClient<tonic::transport::Channel>, String> {
    let mut endpoint = match (tls, uri.strip_prefix("http://")) {
        (Some(_), Some(rest)) => tonic::transport::Endpoint::from_shared(format!("https://{rest}")),
        _ => tonic::transport::Endpoint::from_shared(uri.to_string()),
    }
    .map_err(|e| e.to_string())?;
    if let Some(m) = tls {
        endpoint = endpoint
            .tls_config(potluck_tls::client_config(m, potluck_tls::AGENT_NAME))
            .map_err(|e| e.to_string())?;
    }
    let channel = endpoint
        .connect_timeout(timeout)
        .timeout(timeout)
        .connect()
        .await
        .map_err(|e| format!("unreachable ({e})"))?;
    Ok(AgentControlClient::new(channel).max_decoding_message_size(64 << 20))
}

/// The worst pool health in the fleet, for the exit code.
pub fn worst_health(status: &FleetStatus) -> PoolHealth {
    let mut worst = PoolHealth::Healthy;
    for pool in &status.map.pools {
        let h = pool_view(status, &pool.name)
            .health
            .unwrap_or(PoolHealth::Pending);
        worst = match (worst, h) {
            (PoolHealth::Unavailable, _) | (_, PoolHealth::Unavailable) => PoolHealth::Unavailable,
            (PoolHealth::Pending, _) | (_, PoolHealth::Pending) => PoolHealth::Pending,
            (PoolHealth::Degraded, _) | (_, PoolHealth::Degraded) => PoolHealth::Degraded,
            _ => PoolHealth::Healthy,
        };
    }
    worst
}

fn reports(status: &FleetStatus) -> HashMap<String, AgentReport> {
    status
        .members
        .iter()
        .filter_map(|(id, r)| {
            let s = r.as_ref().ok()?;
            Some((
                id.clone(),
                AgentReport {
                    epoch: s.epoch,
                    stored_bytes: s.stored_bytes,
                    shard_count: s.shard_count,
                    version: s.version.clone(),
                    clean_pgs: vec![],
                    missing: vec![],
                    recovered_bytes: 0,
                },
            ))
        })
        .collect()
}

fn pool_view(status: &FleetStatus, name: &str) -> StoragePoolStatus {
    let reports = reports(status);
    pool_status(
        &StoragePoolStatus::default(),
        &PoolInputs {
            name,
            generation: None,
            spec: Ok(()),
            map: Some(&status.map),
            // Which moved positions still wait for their shards only the operator knows.
            recovering: None,
            stuck: &[],
            heal_rate: 0,
            reports: &reports,
            now: Time(Timestamp::now()),
        },
    )
}

fn state_word(state: i32) -> &'static str {
    match MemberState::try_from(state) {
        Ok(MemberState::Up) => "Up",
        Ok(MemberState::Down) => "Down",
        Ok(MemberState::Out) => "Out",
        Ok(MemberState::Draining) => "Draining",
        _ => "?",
    }
}

/// The screen.
pub fn render(status: &FleetStatus) -> String {
    let map = &status.map;
    let up = map
        .members
        .iter()
        .filter(|m| m.state == MemberState::Up as i32)
        .count();
    let unreachable = status.members.values().filter(|r| r.is_err()).count();
    let mut out = format!(
        "Fleet: map epoch {}, {} members ({} up{}), {} pool{}\n\n",
        map.epoch,
        map.members.len(),
        up,
        if unreachable > 0 {
            format!(", {unreachable} not answering")
        } else {
            String::new()
        },
        map.pools.len(),
        if map.pools.len() == 1 { "" } else { "s" }
    );

    let mut rows = vec![[
        "MEMBER", "STATE", "ENDPOINT", "DOMAIN", "USED", "CAPACITY", "SHARDS", "EPOCH", "VERSION",
    ]
    .map(String::from)
    .to_vec()];
    let mut used_total = 0u64;
    let mut capacity_total = 0u64;
    for m in &map.members {
        let mut row = vec![
            m.id.clone(),
            state_word(m.state).to_string(),
            m.endpoint.clone(),
            m.failure_domain.clone(),
        ];
        capacity_total += m.capacity_bytes;
        match status.members.get(&m.id) {
            Some(Ok(s)) => {
                used_total += s.stored_bytes;
                row.extend([
                    format_size(s.stored_bytes),
                    format_size(m.capacity_bytes),
                    s.shard_count.to_string(),
                    if s.epoch < map.epoch {
                        format!("{} (behind)", s.epoch)
                    } else {
                        s.epoch.to_string()
                    },
                    s.version.clone(),
                ]);
            }
            Some(Err(e)) => row.extend([
                "-".into(),
                format_size(m.capacity_bytes),
                "-".into(),
                "-".into(),
                format!("not answering: {e}"),
            ]),
            None => row.extend(["-", "-", "-", "-", "-"].map(String::from)),
        }
        rows.push(row);
    }
    out.push_str(&table(&rows));
    out.push_str(&format!(
        "\nStored {} of {} offered ({}), parity included\n\n",
        format_size(used_total),
        format_size(capacity_total),
        percent(used_total, capacity_total)
    ));

    let mut rows = vec![[
        "POOL", "K+M", "PGS", "CLEAN", "DEGRADED", "QUORUM", "HEALTH",
    ]
    .map(String::from)
    .to_vec()];
    let mut notes = Vec::new();
    for pool in &map.pools {
        let view = pool_view(status, &pool.name);
        let health = view
            .health
            .map_or("Pending".to_string(), |h| format!("{h:?}"));
        rows.push(vec![
            pool.name.clone(),
            format!("{}+{}", pool.k, pool.m),
            pool.pg_count.to_string(),
            view.pgs_clean.to_string(),
            view.pgs_degraded.to_string(),
            pool.write_quorum.to_string(),
            health,
        ]);
        for type_ in [READY, DEGRADED] {
            if let Some(c) = condition::find_condition(&view.conditions, type_) {
                let bad = (type_ == READY) != (c.status == "True");
                if bad {
                    notes.push(format!("{}: {}", pool.name, c.message));
                }
            }
        }
    }
    out.push_str(&table(&rows));
    let to_heal = bytes_to_heal(status);
    let healing_pgs = status
        .members
        .values()
        .filter_map(|r| r.as_ref().ok())
        .flat_map(|s| s.pgs.iter())
        .filter(|p| !p.clean)
        .count();
    if healing_pgs > 0 {
        let eta = match status.heal_rate {
            Some(rate) if rate >= 1.0 => format!(
                ", {}/s, about {} s to go",
                format_size(rate as u64),
                (to_heal as f64 / rate).ceil() as u64
            ),
            Some(_) => ", no progress in the last 2 s".to_string(),
            None => String::new(),
        };
        out.push_str(&format!(
            "\nHealing: {healing_pgs} PGs not whole, {} to rebuild{eta}\n",
            format_size(to_heal)
        ));
    }
    if !notes.is_empty() {
        out.push('\n');
        for n in notes {
            out.push_str(&format!("! {n}\n"));
        }
    }
    out
}

fn percent(part: u64, whole: u64) -> String {
    if whole == 0 {
        return "-".into();
    }
    format!("{:.1}%", part as f64 * 100.0 / whole as f64)
}

fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .map(|r| r.get(c).map_or(0, |s| s.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, s)| format!("{s:<w$}", w = widths[i]))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use potluck_proto::v1::{ActingSet, MemberInfo, PoolMap};

    fn fleet(down: &[&str], silent: &[&str]) -> FleetStatus {
        let ids = ["a", "b", "c", "d"];
        let map = ClusterMap {
            epoch: 4,
            members: ids
                .iter()
                .map(|id| MemberInfo {
                    id: (*id).into(),
                    endpoint: format!("{id}:7100"),
                    failure_domain: format!("rack-{id}"),
                    capacity_bytes: 1 << 30,
                    state: if down.contains(id) {
                        MemberState::Down as i32
                    } else {
                        MemberState::Up as i32
                    },
                })
                .collect(),
            pools: vec![PoolMap {
                name: "media".into(),
                k: 2,
                m: 1,
                chunk_size: 4096,
                pg_count: 2,
                write_quorum: 3,
                pgs: vec![
                    ActingSet {
                        members: vec!["a".into(), "b".into(), "c".into()],
                    },
                    ActingSet {
                        members: vec!["b".into(), "c".into(), "d".into()],
                    },
                ],
                unplaceable_reason: String::new(),
            }],
            created_unix_ms: 0,
            ..Default::default()
        };
        let members = ids
            .iter()
            .map(|id| {
                let r = if silent.contains(id) {
                    Err("unreachable (connection refused)".to_string())
                } else {
                    Ok(AgentStatus {
                        member_id: (*id).into(),
                        epoch: 4,
                        shard_count: 10,
                        stored_bytes: 1 << 20,
                        capacity_bytes: 1 << 30,
                        manifest_count: 1,
                        version: "0.1.0".into(),
                        uptime_seconds: 5,
                        pgs: vec![],
                        recovered_bytes: 0,
                    })
                };
                ((*id).to_string(), r)
            })
            .collect();
        FleetStatus {
            map,
            members,
            heal_rate: None,
        }
    }

    #[test]
    fn a_healthy_fleet_reads_healthy() {
        let s = fleet(&[], &[]);
        let text = render(&s);
        assert!(
            text.starts_with("Fleet: map epoch 4, 4 members (4 up), 1 pool\n"),
            "{text}"
        );
        assert!(
            text.contains("media  2+1  2    2      0         3       Healthy"),
            "{text}"
        );
        assert!(
            text.contains("Stored 4 MiB of 4 GiB offered (0.1%)"),
            "{text}"
        );
        assert!(!text.contains('!'), "{text}");
        assert_eq!(worst_health(&s), PoolHealth::Healthy);
    }

    #[test]
    fn healing_shows_what_is_left_and_when_it_ends() {
        let mut s = fleet(&[], &[]);
        if let Some(Ok(a)) = s.members.get_mut("a") {
            a.pgs = vec![potluck_proto::v1::PgReport {
                pool: "media".into(),
                pg: 1,
                epoch: 4,
                clean: false,
                missing_shards: 3,
                missing_bytes: 3 << 20,
                unrecoverable_stripes: 0,
            }];
        }
        s.heal_rate = Some(1024.0 * 1024.0);
        let text = render(&s);
        assert!(
            text.contains("Healing: 1 PGs not whole, 3 MiB to rebuild, 1 MiB/s, about 3 s to go"),
            "{text}"
        );
        s.heal_rate = Some(0.0);
        assert!(render(&s).contains("no progress in the last 2 s"));
    }

    #[test]
    fn a_down_member_shows_and_says_what_it_costs() {
        let s = fleet(&["d"], &["d"]);
        let text = render(&s);
        assert!(text.contains("(3 up, 1 not answering)"), "{text}");
        let row = text.lines().find(|l| l.starts_with("d ")).expect("row d");
        assert!(
            row.contains("Down") && row.contains("not answering"),
            "{row}"
        );
        // PG 1 (b, c, d) has 2 of its quorum of 3 up: writes to it fail.
        assert!(text.contains("Unavailable"), "{text}");
        assert!(
            text.contains("! media: 1 of 2 PGs have fewer than 3 members up"),
            "{text}"
        );
        assert_eq!(worst_health(&s), PoolHealth::Unavailable);
    }
}
