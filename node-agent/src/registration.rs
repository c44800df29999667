//! Kubernetes mode: how the operator learns that this member exists and is alive.
//!
//! The agent registers itself as a cluster-scoped `StorageNode` (the operator
//! builds cluster maps from those) and keeps a `Lease` fresh (the operator
//! marks a member Down when it goes stale). The failure domain comes from the
//! Kubernetes `Node` the agent runs on, so placement follows the cluster's own
//! topology labels instead of a flag someone has to keep in sync.
//!
//! The agent only ever writes its own fields: `drain` belongs to people and
//! `status` to the operator, so the StorageNode is written by server-side
//! apply with exactly endpoint, capacity, failure domain and topology labels.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use potluck_api::node::{StorageNode, StorageNodeSpec};

use crate::metrics::Metrics;

/// Field manager of everything the agent writes; `kubectl get --show-managed-fields` tells
/// the agent's fields from the operator's and people's.
pub const FIELD_MANAGER: &str = "potluck-agent";
/// Node labels copied onto the StorageNode, so members can be selected by topology.
pub const TOPOLOGY_LABELS: [&str; 3] = [
    "kubernetes.io/hostname",
    "topology.kubernetes.io/zone",
    "topology.kubernetes.io/region",
];
pub const APP_LABEL: &str = "app.kubernetes.io/name";
pub const MEMBER_LABEL: &str = "potluck.dev/member";
/// A deleted StorageNode is recreated within about this long.
const REAPPLY_EVERY: Duration = Duration::from_secs(30);
const MAX_BACKOFF: Duration = Duration::from_secs(8);

/// Name of the Lease that says member `id` is alive.
pub fn lease_name(member_id: &str) -> String {
    format!("potluck-agent-{member_id}")
}

/// What the agent needs to register; filled from its flags.
#[derive(Clone, Debug)]
pub struct Settings {
    pub member_id: String,
    /// The Kubernetes node this agent runs on, if known.
    pub node_name: Option<String>,
    /// Where the Lease lives.
    pub namespace: String,
    /// `host:port` peers and clients dial.
    pub endpoint: String,
    pub capacity_bytes: u64,
    /// Node label whose value is the failure domain.
    pub failure_domain_key: String,
    /// Failure domain when there is no Node (or it lacks the label).
    pub fallback_failure_domain: String,
    pub lease_duration: Duration,
    /// How long start-up keeps retrying API errors before giving up.
    pub startup_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum RegistrationError {
    #[error(
        "member id {0:?} cannot name Kubernetes objects: use lowercase letters, digits, '-' and '.', \
         starting and ending with a letter or digit (the node name is a good choice)"
    )]
    BadName(String),
    #[error("lease duration must be between 1 and {max} seconds, not {secs}", max = i32::MAX)]
    BadLeaseDuration { secs: u64 },
    #[error(
        "could not {what} within {secs} s: {detail}. Check that KUBECONFIG (or the pod's service \
         account) reaches the API server, that deploy/crds.yaml is applied, and that the agent's \
         RBAC (deploy/10-rbac.yaml) allows it"
    )]
    Api {
        what: String,
        secs: u64,
        detail: String,
    },
}

/// The failure domain and labels this member registers with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub failure_domain: String,
    pub labels: BTreeMap<String, String>,
    /// Why the failure domain is not from the Node, if it is not.
    pub fallback_reason: Option<String>,
}

/// Failure domain from the Node's `key` label, else `fallback`; topology
/// labels copied where the Node has them.
pub fn identity_from_node(node: Option<&Node>, key: &str, fallback: &str) -> Identity {
    let node_labels = node.and_then(|n| n.metadata.labels.as_ref());
    let labels: BTreeMap<String, String> = TOPOLOGY_LABELS
        .iter()
        .filter_map(|l| Some((l.to_string(), node_labels?.get(*l)?.clone())))
        .collect();
    let from_node = node_labels
        .and_then(|l| l.get(key))
        .filter(|v| !v.is_empty());
    let (failure_domain, fallback_reason) = match (node, from_node) {
        (Some(_), Some(v)) => (v.clone(), None),
        (Some(n), None) => (
            fallback.to_string(),
            Some(format!(
                "node {} has no label {key}",
                n.metadata.name.as_deref().unwrap_or("?")
            )),
        ),
        (None, _) => (
            fallback.to_string(),
            Some("the Kubernetes node is unknown".to_string()),
        ),
    };
    Identity {
        failure_domain,
        labels,
        fallback_reason,
    }
}

/// The StorageNode as the agent applies it: its own fields and nothing else.
pub fn storage_node(settings: &Settings, identity: &Identity) -> StorageNode {
    let mut node = StorageNode::new(
        &settings.member_id,
        StorageNodeSpec {
            endpoint: settings.endpoint.clone(),
            capacity_bytes: i64::try_from(settings.capacity_bytes).unwrap_or(i64::MAX),
            failure_domain: identity.failure_domain.clone(),
            // Left out when serialised: a person's drain is never overwritten.
            drain: false,
            // Likewise a person's revocation.
            revoke_certificate: false,
        },
    );
    if !identity.labels.is_empty() {
        node.metadata.labels = Some(identity.labels.clone());
    }
    node
}

pub fn micro_time(t: SystemTime) -> MicroTime {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    // Microseconds are all a MicroTime keeps.
    let ts = Timestamp::new(d.as_secs() as i64, (d.subsec_micros() * 1000) as i32)
        .unwrap_or(Timestamp::UNIX_EPOCH);
    MicroTime(ts)
}

/// A new Lease held by this member, acquired and renewed at `now`.
pub fn new_lease(settings: &Settings, now: SystemTime) -> Lease {
    let id = &settings.member_id;
    Lease {
        metadata: ObjectMeta {
            name: Some(lease_name(id)),
            namespace: Some(settings.namespace.clone()),
            labels: Some(BTreeMap::from([
                (APP_LABEL.to_string(), FIELD_MANAGER.to_string()),
                (MEMBER_LABEL.to_string(), id.clone()),
            ])),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(id.clone()),
            lease_duration_seconds: Some(lease_seconds(settings.lease_duration)),
            acquire_time: Some(micro_time(now)),
            renew_time: Some(micro_time(now)),
            lease_transitions: Some(0),
            ..LeaseSpec::default()
        }),
    }
}

/// Marks `lease` renewed by this member at `now`. If someone else held it,
/// this member takes it over (a new acquire time, one more transition).
pub fn renew_lease(lease: &mut Lease, settings: &Settings, now: SystemTime) {
    let id = &settings.member_id;
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    if spec.holder_identity.as_deref() != Some(id.as_str()) {
        spec.holder_identity = Some(id.clone());
        spec.acquire_time = Some(micro_time(now));
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
    }
    spec.lease_duration_seconds = Some(lease_seconds(settings.lease_duration));
    spec.renew_time = Some(micro_time(now));
    let labels = lease.metadata.labels.get_or_insert_with(BTreeMap::new);
    labels.insert(APP_LABEL.to_string(), FIELD_MANAGER.to_string());
    labels.insert(MEMBER_LABEL.to_string(), id.clone());
    // The server keeps the managed fields of an update that leaves them out.
    lease.metadata.managed_fields = None;
}

fn lease_seconds(d: Duration) -> i32 {
    i32::try_from(d.as_secs()).unwrap_or(i32::MAX)
}

/// Renewing three times per lease duration lets two renewals in a row fail
/// (an API server hiccup) before the operator may consider the member gone.
pub fn renew_interval(lease_duration: Duration) -> Duration {
    (lease_duration / 3).max(Duration::from_millis(200))
}

/// Whether `name` is a DNS-1123 subdomain, as Kubernetes object names must be.
pub fn valid_object_name(name: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    (1..=253).contains(&name.len())
        && name.split('.').all(|part| {
            let b = part.as_bytes();
            !b.is_empty()
                && alnum(b[0])
                && alnum(b[b.len() - 1])
                && b.iter().all(|&c| alnum(c) || c == b'-')
        })
}

impl Settings {
    pub fn check(&self) -> Result<(), RegistrationError> {
        // The Lease name adds a prefix; both must be valid object names.
        if !valid_object_name(&self.member_id) || !valid_object_name(&lease_name(&self.member_id)) {
            return Err(RegistrationError::BadName(self.member_id.clone()));
        }
        let secs = self.lease_duration.as_secs();
        if secs == 0 || secs > i32::MAX as u64 {
            return Err(RegistrationError::BadLeaseDuration { secs });
        }
        Ok(())
    }
}

/// A registered member; [`Registration::keep_lease`] keeps it alive.
pub struct Registration {
    client: Client,
    settings: Settings,
    identity: Identity,
    metrics: Arc<Metrics>,
    /// The Lease as last written, so a renewal is one update, not a read and an update.
    lease: Option<Lease>,
}

impl Registration {
    /// Looks up the Node, applies the StorageNode and writes the Lease once.
    /// API errors are retried (with backoff) for `startup_timeout`; a missing
    /// Node is not an error, only a warning and a fallback failure domain.
    pub async fn register(
        client: Client,
        settings: Settings,
        metrics: Arc<Metrics>,
    ) -> Result<Self, RegistrationError> {
        let identity = Self::apply_only(&client, &settings).await?;
        let mut reg = Self {
            client,
            settings,
            identity,
            metrics,
            lease: None,
        };
        // The Lease loop retries on its own; start-up does not wait for it.
        reg.renew_and_count().await;
        Ok(reg)
    }

    /// [`Registration::register`] without the Lease: makes the StorageNode exist, which a
    /// member that must get its certificate (`--tls-bootstrap`) needs before it can serve,
    /// and so before it vouches for itself with a Lease.
    pub async fn apply_only(
        client: &Client,
        settings: &Settings,
    ) -> Result<Identity, RegistrationError> {
        settings.check()?;
        let deadline = tokio::time::Instant::now() + settings.startup_timeout;
        let node = match &settings.node_name {
            Some(name) => {
                let nodes: Api<Node> = Api::all(client.clone());
                retry(settings, deadline, &format!("read Node {name}"), || {
                    nodes.get_opt(name)
                })
                .await?
            }
            None => None,
        };
        let identity = identity_from_node(
            node.as_ref(),
            &settings.failure_domain_key,
            &settings.fallback_failure_domain,
        );
        if let Some(why) = &identity.fallback_reason {
            tracing::warn!(
                node = settings.node_name.as_deref().unwrap_or(""),
                failure_domain = %identity.failure_domain,
                "failure domain not taken from the Kubernetes node ({why}); using the --failure-domain flag or the member id"
            );
        }
        let what = format!("apply StorageNode {}", settings.member_id);
        retry(settings, deadline, &what, || {
            apply_storage_node(client, settings, &identity)
        })
        .await?;
        tracing::info!(
            member = %settings.member_id,
            endpoint = %settings.endpoint,
            failure_domain = %identity.failure_domain,
            "registered as a StorageNode"
        );
        Ok(identity)
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    async fn apply_storage_node(&self) -> Result<StorageNode, kube::Error> {
        apply_storage_node(&self.client, &self.settings, &self.identity).await
    }

    /// One Lease write: an update of the Lease last seen; if it changed or
    /// vanished meanwhile, read it again (or create it) and try once more.
    async fn renew(&mut self) -> Result<(), kube::Error> {
        let api: Api<Lease> = Api::namespaced(self.client.clone(), &self.settings.namespace);
        let name = lease_name(&self.settings.member_id);
        let pp = PostParams {
            field_manager: Some(FIELD_MANAGER.to_string()),
            ..PostParams::default()
        };
        for attempt in 0..2 {
            let current = match self.lease.take() {
                Some(l) => Some(l),
                None => api.get_opt(&name).await?,
            };
            let now = SystemTime::now();
            let written = match current {
                None => api.create(&pp, &new_lease(&self.settings, now)).await,
                Some(mut lease) => {
                    renew_lease(&mut lease, &self.settings, now);
                    api.replace(&name, &pp, &lease).await
                }
            };
            match written {
                Ok(lease) => {
                    self.lease = Some(lease);
                    return Ok(());
                }
                Err(kube::Error::Api(s))
                    if attempt == 0
                        && (s.is_conflict() || s.is_not_found() || s.is_already_exists()) =>
                {
                    continue
                }
                Err(e) => return Err(e),
            }
        }
        // Only reached when the retry itself hit a race again.
        Err(kube::Error::Api(Box::new(
            kube::core::Status::failure(
                &format!("Lease {name} changed under every attempt"),
                "Conflict",
            )
            .with_code(409),
        )))
    }

    async fn renew_and_count(&mut self) -> bool {
        match self.renew().await {
            Ok(()) => {
                self.metrics.lease_renewals.with_label_values(&["ok"]).inc();
                true
            }
            Err(e) => {
                self.metrics
                    .lease_renewals
                    .with_label_values(&["error"])
                    .inc();
                tracing::warn!(
                    lease = %lease_name(&self.settings.member_id),
                    namespace = %self.settings.namespace,
                    "renewing the Lease failed, retrying at the next tick: {}",
                    describe(&e)
                );
                false
            }
        }
    }

    /// Renews the Lease every third of its duration, and re-applies the
    /// StorageNode now and then so a deleted one comes back. Runs until
    /// dropped (abort the task on shutdown); API errors never end it.
    pub async fn keep_lease(mut self) {
        let interval = renew_interval(self.settings.lease_duration);
        let reapply_every = (REAPPLY_EVERY.as_millis() / interval.as_millis().max(1)).max(1);
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is immediate; start-up has just renewed.
        ticker.tick().await;
        let mut ticks: u128 = 0;
        loop {
            ticker.tick().await;
            ticks += 1;
            self.renew_and_count().await;
            if ticks.is_multiple_of(reapply_every) {
                if let Err(e) = self.apply_storage_node().await {
                    tracing::warn!(
                        member = %self.settings.member_id,
                        "re-applying the StorageNode failed, retrying later: {}",
                        describe(&e)
                    );
                }
            }
        }
    }
}

async fn apply_storage_node(
    client: &Client,
    settings: &Settings,
    identity: &Identity,
) -> Result<StorageNode, kube::Error> {
    let api: Api<StorageNode> = Api::all(client.clone());
    let node = storage_node(settings, identity);
    api.patch(
        &settings.member_id,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&node),
    )
    .await
}

/// An API error in one line: kube's own rendering repeats the whole status.
pub fn describe(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) if !s.message.is_empty() => {
            format!("{} ({}, HTTP {})", s.message, s.reason, s.code)
        }
        other => other.to_string(),
    }
}

/// Runs `call` until it succeeds or `deadline` passes, backing off between
/// attempts. Requests the API server refuses as malformed are not retried.
async fn retry<T, F, Fut>(
    settings: &Settings,
    deadline: tokio::time::Instant,
    what: &str,
    mut call: F,
) -> Result<T, RegistrationError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, kube::Error>>,
{
    let mut pause = Duration::from_millis(250);
    loop {
        let err = match call().await {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        let hopeless = matches!(&err, kube::Error::Api(s) if s.is_invalid() || s.code == 400);
        let now = tokio::time::Instant::now();
        if hopeless || now + pause > deadline {
            return Err(RegistrationError::Api {
                what: what.to_string(),
                secs: settings.startup_timeout.as_secs(),
                detail: describe(&err),
            });
        }
        tracing::warn!(
            "could not {what}, retrying in {pause:?}: {}",
            describe(&err)
        );
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(MAX_BACKOFF);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            member_id: "node-a".into(),
            node_name: Some("node-a".into()),
            namespace: "potluck-system".into(),
            endpoint: "10.0.0.5:7000".into(),
            capacity_bytes: 1 << 30,
            failure_domain_key: "topology.kubernetes.io/zone".into(),
            fallback_failure_domain: "node-a".into(),
            lease_duration: Duration::from_secs(15),
            startup_timeout: Duration::from_secs(60),
        }
    }

    fn node(labels: &[(&str, &str)]) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some("node-a".into()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..ObjectMeta::default()
            },
            ..Node::default()
        }
    }

    #[test]
    fn failure_domain_and_labels_come_from_the_node() {
        let n = node(&[
            ("kubernetes.io/hostname", "node-a"),
            ("topology.kubernetes.io/zone", "zone-a"),
            ("unrelated", "x"),
        ]);
        let id = identity_from_node(Some(&n), "topology.kubernetes.io/zone", "fallback");
        assert_eq!(id.failure_domain, "zone-a");
        assert_eq!(id.fallback_reason, None);
        assert_eq!(
            id.labels,
            BTreeMap::from([
                ("kubernetes.io/hostname".into(), "node-a".into()),
                ("topology.kubernetes.io/zone".into(), "zone-a".into()),
            ]),
            "only topology labels are copied"
        );
    }

    #[test]
    fn failure_domain_falls_back_without_node_or_label() {
        let n = node(&[("kubernetes.io/hostname", "node-a")]);
        let id = identity_from_node(Some(&n), "topology.kubernetes.io/zone", "fallback");
        assert_eq!(id.failure_domain, "fallback");
        assert!(id.fallback_reason.unwrap().contains("no label"));
        assert_eq!(id.labels.len(), 1);

        let id = identity_from_node(None, "kubernetes.io/hostname", "fallback");
        assert_eq!(id.failure_domain, "fallback");
        assert!(id.labels.is_empty() && id.fallback_reason.is_some());
    }

    #[test]
    fn storage_node_leaves_drain_and_status_out() {
        let s = settings();
        let id = identity_from_node(
            Some(&node(&[("topology.kubernetes.io/zone", "zone-a")])),
            &s.failure_domain_key,
            "x",
        );
        let json = serde_json::to_value(storage_node(&s, &id)).unwrap();
        assert_eq!(json["metadata"]["name"], "node-a");
        assert_eq!(
            json["metadata"]["labels"]["topology.kubernetes.io/zone"],
            "zone-a"
        );
        assert_eq!(
            json["spec"],
            serde_json::json!({
                "endpoint": "10.0.0.5:7000",
                "capacityBytes": 1 << 30,
                "failureDomain": "zone-a",
            })
        );
        assert!(json.get("status").is_none(), "{json}");
    }

    #[test]
    fn lease_is_held_by_the_member_and_renewed() {
        let s = settings();
        let t0 = UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456);
        let mut lease = new_lease(&s, t0);
        assert_eq!(lease.metadata.name.as_deref(), Some("potluck-agent-node-a"));
        assert_eq!(lease.metadata.namespace.as_deref(), Some("potluck-system"));
        let labels = lease.metadata.labels.clone().unwrap();
        assert_eq!(labels[APP_LABEL], "potluck-agent");
        assert_eq!(labels[MEMBER_LABEL], "node-a");
        let spec = lease.spec.clone().unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some("node-a"));
        assert_eq!(spec.lease_duration_seconds, Some(15));
        assert_eq!(spec.acquire_time, spec.renew_time);
        let json = serde_json::to_value(&lease).unwrap();
        assert_eq!(json["spec"]["renewTime"], "2023-11-14T22:13:20.123456Z");

        let t1 = t0 + Duration::from_secs(5);
        renew_lease(&mut lease, &s, t1);
        let spec = lease.spec.clone().unwrap();
        assert_eq!(spec.renew_time, Some(micro_time(t1)));
        assert_eq!(
            spec.acquire_time,
            Some(micro_time(t0)),
            "still the same holder"
        );
        assert_eq!(spec.lease_transitions, Some(0));

        lease.spec.as_mut().unwrap().holder_identity = Some("someone-else".into());
        renew_lease(&mut lease, &s, t1);
        let spec = lease.spec.unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some("node-a"));
        assert_eq!(spec.acquire_time, Some(micro_time(t1)));
        assert_eq!(spec.lease_transitions, Some(1));
    }

    #[test]
    fn renewal_every_third_of_the_lease() {
        assert_eq!(
            renew_interval(Duration::from_secs(15)),
            Duration::from_secs(5)
        );
        assert_eq!(
            renew_interval(Duration::from_secs(3)),
            Duration::from_secs(1)
        );
        assert!(renew_interval(Duration::from_secs(1)) >= Duration::from_millis(200));
    }

    #[test]
    fn api_errors_read_in_one_line() {
        let e = kube::Error::Api(Box::new(
            kube::core::Status::failure("leases is forbidden", "Forbidden").with_code(403),
        ));
        assert_eq!(describe(&e), "leases is forbidden (Forbidden, HTTP 403)");
    }

    #[test]
    fn names_must_suit_kubernetes() {
        assert!(valid_object_name("node-a"));
        assert!(valid_object_name("ip-10-0-0-5.eu-west-1.compute.internal"));
        for bad in ["", "Node-A", "node_a", "-node", "node-", "a..b"] {
            assert!(!valid_object_name(bad), "{bad:?}");
        }
        let mut s = settings();
        s.member_id = "agent_0".into();
        assert!(matches!(s.check(), Err(RegistrationError::BadName(_))));
        let mut s = settings();
        s.lease_duration = Duration::ZERO;
        assert!(matches!(
            s.check(),
            Err(RegistrationError::BadLeaseDuration { .. })
        ));
        assert!(settings().check().is_ok());
    }
}
