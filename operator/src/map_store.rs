//! Where the published cluster map lives between operator runs: a ConfigMap in the operator's
//! namespace, holding the map as protobuf.
//!
//! Agents refuse maps older than the one they hold and a reused epoch with different contents
//! is a conflict, so an operator that restarts and forgets its epoch would be locked out of
//! its own fleet. The map is therefore written here *before* any agent sees it, and every
//! write carries the `resourceVersion` it was computed from: two operators racing (a leader
//! change mid-reconcile) cannot both publish epoch N; the loser gets a conflict and recomputes.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::ByteString;
use kube::api::{ObjectMeta, PostParams};
use kube::Api;
use potluck_proto::v1::ClusterMap;
use prost::Message;

/// Name of the ConfigMap holding the published map.
pub const CONFIG_MAP: &str = "potluck-cluster-map";
const MAP_KEY: &str = "map.pb";
const EPOCH_KEY: &str = "epoch";
const RECOVERING_KEY: &str = "recovering.json";

/// PGs per pool whose acting set gained a member since they were last complete: the new
/// member has no shards for them until recovery copies them there. Kept with the map, in the
/// same write, so that an operator restart cannot forget that data still has to move.
pub type Recovering = BTreeMap<String, BTreeSet<u32>>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot read or write ConfigMap {CONFIG_MAP}: {0}")]
    Api(#[from] kube::Error),
    #[error(
        "ConfigMap {CONFIG_MAP} holds no readable cluster map ({0}); it is written only by the \
         operator: restore it from a backup, or delete it to start a new map history (agents \
         then refuse maps until restarted with empty data directories)"
    )]
    Corrupt(String),
    #[error(
        "ConfigMap {CONFIG_MAP} changed while this operator computed a new map (another \
         operator replica?); the map is recomputed from the stored one"
    )]
    Conflict,
}

/// A map as stored, with the `resourceVersion` a replacing write must name.
#[derive(Clone, Debug, PartialEq)]
pub struct Stored {
    pub map: ClusterMap,
    pub recovering: Recovering,
    pub resource_version: String,
}

pub struct MapStore {
    api: Api<ConfigMap>,
}

impl MapStore {
    pub fn new(api: Api<ConfigMap>) -> Self {
        Self { api }
    }

    /// The stored map, or `None` when none was ever published.
    pub async fn load(&self) -> Result<Option<Stored>, StoreError> {
        let Some(cm) = self.api.get_opt(CONFIG_MAP).await? else {
            return Ok(None);
        };
        let resource_version = cm
            .metadata
            .resource_version
            .clone()
            .ok_or_else(|| StoreError::Corrupt("no resourceVersion".into()))?;
        let bytes = cm
            .binary_data
            .as_ref()
            .and_then(|d| d.get(MAP_KEY))
            .ok_or_else(|| StoreError::Corrupt(format!("no {MAP_KEY} key")))?;
        let map = ClusterMap::decode(bytes.0.as_slice())
            .map_err(|e| StoreError::Corrupt(format!("{MAP_KEY} does not decode: {e}")))?;
        let recovering = match cm.data.as_ref().and_then(|d| d.get(RECOVERING_KEY)) {
            None => Recovering::new(),
            Some(text) => serde_json::from_str(text).map_err(|e| {
                StoreError::Corrupt(format!("{RECOVERING_KEY} does not parse: {e}"))
            })?,
        };
        Ok(Some(Stored {
            map,
            recovering,
            resource_version,
        }))
    }

    /// Writes `map`, replacing the version `previous` names (or creating the ConfigMap when
    /// there is none). Fails with [`StoreError::Conflict`] if someone wrote in between.
    pub async fn save(
        &self,
        map: &ClusterMap,
        recovering: &Recovering,
        previous: Option<&str>,
    ) -> Result<Stored, StoreError> {
        let recovering_json = serde_json::to_string(recovering)
            .map_err(|e| StoreError::Corrupt(format!("cannot write {RECOVERING_KEY}: {e}")))?;
        let cm = ConfigMap {
            metadata: ObjectMeta {
                name: Some(CONFIG_MAP.into()),
                resource_version: previous.map(str::to_owned),
                labels: Some(BTreeMap::from([(
                    "app.kubernetes.io/part-of".to_owned(),
                    "potluck".to_owned(),
                )])),
                ..Default::default()
            },
            // The epoch in plain text, for people reading it with kubectl.
            data: Some(BTreeMap::from([
                (EPOCH_KEY.to_owned(), map.epoch.to_string()),
                (RECOVERING_KEY.to_owned(), recovering_json),
            ])),
            binary_data: Some(BTreeMap::from([(
                MAP_KEY.to_owned(),
                ByteString(map.encode_to_vec()),
            )])),
            ..Default::default()
        };
        let pp = PostParams {
            field_manager: Some("potluck-operator".into()),
            ..Default::default()
        };
        let written = match previous {
            None => self.api.create(&pp, &cm).await,
            Some(_) => self.api.replace(CONFIG_MAP, &pp, &cm).await,
        };
        let written = written.map_err(|e| match e {
            kube::Error::Api(ref s) if s.code == 409 => StoreError::Conflict,
            other => StoreError::Api(other),
        })?;
        let resource_version = written.metadata.resource_version.ok_or_else(|| {
            StoreError::Corrupt("the API server returned no resourceVersion".into())
        })?;
        Ok(Stored {
            map: map.clone(),
            recovering: recovering.clone(),
            resource_version,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Request, Response};
    use kube::client::Body;
    use kube::Client;
    use potluck_proto::v1::MemberInfo;

    type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

    fn store() -> (MapStore, Handle) {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(service, "potluck-system");
        (
            MapStore::new(Api::namespaced(client, "potluck-system")),
            handle,
        )
    }

    fn sample(epoch: u64) -> ClusterMap {
        ClusterMap {
            epoch,
            members: vec![MemberInfo {
                id: "a".into(),
                endpoint: "a:7100".into(),
                failure_domain: "a".into(),
                capacity_bytes: 1,
                state: 1,
            }],
            pools: vec![],
            created_unix_ms: 5,
            ..Default::default()
        }
    }

    fn pending() -> Recovering {
        Recovering::from([("media".to_owned(), BTreeSet::from([5, 3]))])
    }

    fn json(status: u16, body: serde_json::Value) -> Response<Body> {
        Response::builder()
            .status(status)
            .body(Body::from(serde_json::to_vec(&body).unwrap()))
            .unwrap()
    }

    async fn body_json(req: Request<Body>) -> serde_json::Value {
        let bytes = req.into_body().collect_bytes().await.unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    fn not_found() -> Response<Body> {
        json(
            404,
            serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                "reason": "NotFound", "code": 404, "message": "not found"}),
        )
    }

    #[tokio::test]
    async fn first_publish_creates_then_replaces_with_the_resource_version() {
        let (store, mut handle) = store();
        let server = tokio::spawn(async move {
            let (req, send) = handle.next_request().await.expect("GET");
            assert_eq!(req.method(), "GET");
            assert!(req
                .uri()
                .path()
                .ends_with("/configmaps/potluck-cluster-map"));
            send.send_response(not_found());

            let (req, send) = handle.next_request().await.expect("POST");
            assert_eq!(req.method(), "POST");
            let body = body_json(req).await;
            assert_eq!(body["data"]["epoch"], "1");
            let mut created = body.clone();
            created["metadata"]["resourceVersion"] = "100".into();
            send.send_response(json(201, created));

            let (req, send) = handle.next_request().await.expect("PUT");
            assert_eq!(req.method(), "PUT");
            let body = body_json(req).await;
            // The replace names the version it was computed from: that is the lock.
            assert_eq!(body["metadata"]["resourceVersion"], "100");
            assert_eq!(body["data"]["epoch"], "2");
            assert_eq!(body["data"]["recovering.json"], r#"{"media":[3,5]}"#);
            let mut replaced = body.clone();
            replaced["metadata"]["resourceVersion"] = "101".into();
            send.send_response(json(200, replaced));
        });
        assert_eq!(store.load().await.unwrap(), None);
        let first = store
            .save(&sample(1), &Recovering::new(), None)
            .await
            .unwrap();
        assert_eq!(first.resource_version, "100");
        let second = store
            .save(&sample(2), &pending(), Some("100"))
            .await
            .unwrap();
        assert_eq!(second.resource_version, "101");
        assert_eq!(second.recovering, pending());
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_concurrent_write_is_a_conflict_not_an_overwrite() {
        let (store, mut handle) = store();
        let server = tokio::spawn(async move {
            let (_req, send) = handle.next_request().await.expect("PUT");
            send.send_response(json(
                409,
                serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                    "reason": "Conflict", "code": 409,
                    "message": "the object has been modified"}),
            ));
        });
        let err = store
            .save(&sample(3), &Recovering::new(), Some("7"))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Conflict), "{err}");
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_stored_map_round_trips_and_garbage_is_reported() {
        let (store, mut handle) = store();
        let map = sample(9);
        let encoded = map.encode_to_vec();
        let server = tokio::spawn(async move {
            let (_req, send) = handle.next_request().await.expect("GET");
            let cm = ConfigMap {
                metadata: ObjectMeta {
                    name: Some(CONFIG_MAP.into()),
                    resource_version: Some("42".into()),
                    ..Default::default()
                },
                binary_data: Some(BTreeMap::from([(MAP_KEY.to_owned(), ByteString(encoded))])),
                ..Default::default()
            };
            send.send_response(json(200, serde_json::to_value(&cm).unwrap()));
            let (_req, send) = handle.next_request().await.expect("GET");
            let cm = ConfigMap {
                metadata: ObjectMeta {
                    name: Some(CONFIG_MAP.into()),
                    resource_version: Some("43".into()),
                    ..Default::default()
                },
                binary_data: Some(BTreeMap::from([(
                    MAP_KEY.to_owned(),
                    ByteString(vec![0xff, 0xff, 0xff]),
                )])),
                ..Default::default()
            };
            send.send_response(json(200, serde_json::to_value(&cm).unwrap()));
        });
        let loaded = store.load().await.unwrap().unwrap();
        assert_eq!(loaded.map, map);
        assert_eq!(loaded.resource_version, "42");
        let err = store.load().await.unwrap_err();
        assert!(matches!(err, StoreError::Corrupt(_)), "{err}");
        assert!(err.to_string().contains("restore it from a backup"));
        server.await.unwrap();
    }
}
