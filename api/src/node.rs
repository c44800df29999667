//! `StorageNode`: one member machine's agent, as it registers itself, and its membership
//! phase as the operator decides it.
//!
//! The object's name is the member id used in cluster maps (the Kubernetes node name when the
//! agent runs as a DaemonSet). The agent writes `endpoint`, `capacityBytes` and
//! `failureDomain`; a person writes `drain`. With server-side apply the agent should send only
//! its own fields, which is why an unset `drain` (false) is left out when serialising.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::core::{Message, Rule};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `host:port`, the host a DNS name, an IPv4 address or a bracketed IPv6 address.
pub const ENDPOINT_PATTERN: &str =
    r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?):[0-9]{1,5}$";

/// A member machine offering disk space to the fleet, registered by its agent.
// kube's `printcolumn(name = .., type_ = ..)` lists look to clippy like repeated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "potluck.dev",
    version = "v1alpha1",
    kind = "StorageNode",
    plural = "storagenodes",
    shortname = "snode",
    category = "potluck",
    status = "StorageNodeStatus",
    derive = "PartialEq",
    doc = "A member machine offering disk space to the fleet, registered by its node agent.",
    printcolumn(
        name = "Phase",
        type_ = "string",
        json_path = ".status.phase",
        description = "Joining, Up, Down, Out, Draining or Drained"
    ),
    printcolumn(
        name = "Endpoint",
        type_ = "string",
        json_path = ".spec.endpoint",
        description = "host:port of the agent's gRPC server"
    ),
    printcolumn(
        name = "Domain",
        type_ = "string",
        json_path = ".spec.failureDomain",
        description = "Failure domain"
    ),
    printcolumn(
        name = "Used",
        type_ = "integer",
        json_path = ".status.usedBytes",
        description = "Bytes of shards stored"
    ),
    printcolumn(
        name = "Capacity",
        type_ = "integer",
        json_path = ".spec.capacityBytes",
        description = "Bytes offered"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    printcolumn(
        name = "Drain",
        type_ = "boolean",
        json_path = ".spec.drain",
        priority = 1,
        description = "Asked to move its data off"
    ),
    printcolumn(
        name = "Shards",
        type_ = "integer",
        json_path = ".status.shardCount",
        priority = 1,
        description = "Shards stored"
    ),
    printcolumn(
        name = "Last Seen",
        type_ = "date",
        json_path = ".status.lastSeen",
        priority = 1,
        description = "Last Lease renewal seen by the operator"
    ),
    printcolumn(
        name = "Version",
        type_ = "string",
        json_path = ".status.agentVersion",
        priority = 1,
        description = "Agent version"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct StorageNodeSpec {
    /// `host:port` of the agent's gRPC server, as peers and clients reach it, such as
    /// 10.0.0.5:7000 or [fd00::5]:7000.
    #[schemars(length(min = 3, max = 261))]
    #[x_kube(validation = endpoint_rule())]
    pub endpoint: String,

    /// Bytes this member offers to the fleet; its share of placement is proportional to it.
    #[schemars(range(min = 0))]
    pub capacity_bytes: i64,

    /// The member's failure domain: the value of its Kubernetes node's label named by the
    /// pool's failureDomainKey (the node name by default).
    #[schemars(length(min = 1, max = 253))]
    pub failure_domain: String,

    /// Set to true to move this member's data to other members before taking it away; the
    /// phase goes Draining, then Drained. Set back to false to take data again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    #[schemars(extend("default" = false))]
    pub drain: bool,

    /// Set to true to revoke this member's certificate: the operator lists its serial in the
    /// cluster map (every agent then refuses it), marks the member Out and signs nothing more
    /// for it. Set back to false and restart the agent to let it ask for a new certificate.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    #[schemars(extend("default" = false))]
    pub revoke_certificate: bool,
}

/// A member's certificate, asked for by its agent and signed by the operator. The key never
/// leaves the member: the agent publishes a CSR, the operator answers with a certificate.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MemberCertificate {
    /// The agent's certificate signing request (PEM). Only its public key is used: names
    /// and usages are the operator's decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub csr: Option<String>,

    /// BLAKE3 (hex) of the CSR the certificate below answers; the agent waits for its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed_csr: Option<String>,

    /// The member's certificate (PEM), signed by the cluster CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,

    /// The cluster CA's certificate (PEM): what the member trusts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_certificate: Option<String>,

    /// Serial of the certificate (hex), as revocations name it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,

    /// When the certificate stops being valid; the agent asks again after 2/3 of its life.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<Time>,

    /// Serials (hex) of this member's certificates revoked through `spec.revokeCertificate`;
    /// the operator lists them in every cluster map.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub revoked_serials: Vec<String>,
}

/// What the operator (phase) and the agent (usage, version, conditions) report of a member.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StorageNodeStatus {
    /// Membership phase, decided by the operator from the Lease and `drain`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<NodePhase>,

    /// Bytes of shards stored on this member.
    #[serde(default)]
    pub used_bytes: i64,

    /// Shards stored on this member.
    #[serde(default)]
    pub shard_count: i64,

    /// When the operator last saw the member's Lease renewed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<Time>,

    /// Version of the agent that registered this member.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_version: Option<String>,

    /// `Ready` (the agent serves its shards), `Progressing` (recovery or drain under way).
    #[serde(default)]
    #[x_kube(merge_strategy = kube::core::ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,

    /// `metadata.generation` of the spec this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// The member's TLS certificate: the agent's request and the operator's answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<MemberCertificate>,
}

/// Where a member is in its life in the fleet.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NodePhase {
    /// Registered, not yet in a map.
    Joining,
    /// Lease fresh: takes writes and serves reads.
    Up,
    /// Lease stale for longer than the pool's downAfter: skipped for new writes, but its
    /// positions are kept, expecting it back.
    Down,
    /// Down for longer than outAfter: out of the map, its shards rebuilt on other members.
    Out,
    /// `drain` is set: still serving, while its positions move to other members.
    Draining,
    /// `drain` is set and no position is left on it: it may be removed.
    Drained,
}

impl NodePhase {
    /// Whether the member belongs in the cluster map (listed, and reachable by peers).
    pub fn in_map(self) -> bool {
        matches!(self, Self::Up | Self::Down | Self::Draining)
    }
}

fn endpoint_rule() -> Rule {
    Rule::new(format!(
        "self.matches('{}')",
        ENDPOINT_PATTERN.replace('\\', "\\\\")
    ))
    .message(Message::Message(
        "endpoint must be host:port of the agent's gRPC server, such as 10.0.0.5:7000, \
             node-1.example:7000 or [fd00::5]:7000"
            .into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn spec() -> StorageNodeSpec {
        StorageNodeSpec {
            endpoint: "10.0.0.5:7000".into(),
            capacity_bytes: 1 << 40,
            failure_domain: "rack-1".into(),
            drain: false,
            revoke_certificate: false,
        }
    }

    #[test]
    fn agent_applies_leave_drain_to_its_owner() {
        let value = serde_json::to_value(spec()).unwrap();
        assert_eq!(
            value,
            serde_json::json!({
                "endpoint": "10.0.0.5:7000",
                "capacityBytes": 1u64 << 40,
                "failureDomain": "rack-1"
            })
        );
        let drained = StorageNodeSpec {
            drain: true,
            ..spec()
        };
        assert_eq!(serde_json::to_value(drained).unwrap()["drain"], true);
    }

    #[test]
    fn status_round_trips_with_phase_names_as_kubectl_shows_them() {
        let status = StorageNodeStatus {
            phase: Some(NodePhase::Draining),
            used_bytes: 10,
            shard_count: 2,
            last_seen: Some(Time(Timestamp::from_second(1_700_000_000).unwrap())),
            agent_version: Some("0.1.0".into()),
            conditions: vec![],
            observed_generation: Some(3),
            tls: None,
        };
        let value = serde_json::to_value(&status).unwrap();
        assert_eq!(value["phase"], "Draining");
        assert_eq!(value["lastSeen"], "2023-11-14T22:13:20Z");
        assert_eq!(value["usedBytes"], 10);
        let back: StorageNodeStatus = serde_json::from_value(value).unwrap();
        assert_eq!(back, status);

        // A status the operator has not written yet reads as all defaults.
        let empty: StorageNodeStatus = serde_json::from_str("{}").unwrap();
        assert_eq!(empty, StorageNodeStatus::default());
    }

    #[test]
    fn only_live_phases_are_in_the_map() {
        use NodePhase::*;
        let in_map: Vec<NodePhase> = [Joining, Up, Down, Out, Draining, Drained]
            .into_iter()
            .filter(|p| p.in_map())
            .collect();
        assert_eq!(in_map, [Up, Down, Draining]);
    }
}
