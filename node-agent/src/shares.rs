//! ShareService: creates, lists and revokes share grants for callers holding a bucket's key.
//!
//! The agent signs the token itself (it has the key's secret hash from the map, as every
//! agent that verifies tokens does), so a client needs no crypto beyond TLS to make a link,
//! and records the grant as a `Share` resource in its own namespace, which is how grants are
//! listed and revoked: the operator publishes revoked, unexpired grant ids in the map.
//! Without Kubernetes (an agent started without --kubernetes) there is nowhere to record a
//! grant, so none is made: a link that could never be revoked is not offered.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use kube::api::{Patch, PatchParams, PostParams};
use kube::Api;
use pb::share_service_server::ShareService;
use potluck_api::share::NAME_PREFIX;
use potluck_api::{Share, ShareSpec};
use potluck_format::share::Grant;
use potluck_proto::v1 as pb;
use rand::RngCore;
use tonic::{Request, Response, Status};

use crate::auth::{now_unix, Authenticator};
use crate::node::Node;
use crate::validate;

/// Longest lifetime of a grant: a link is meant to be handed out, not to be a credential.
pub const MAX_EXPIRES_SECS: u64 = 366 * 86_400;

/// Where grants are recorded and links point; set once at start-up.
#[derive(Default)]
pub struct Sharing {
    /// Share resources in the agent's namespace; unset without Kubernetes.
    api: OnceLock<Api<Share>>,
    /// `http(s)://host:port` of this agent's HTTP endpoint as clients reach it.
    public_url: OnceLock<String>,
}

impl Sharing {
    pub fn set_kubernetes(&self, client: kube::Client, namespace: &str) {
        let _ = self.api.set(Api::namespaced(client, namespace));
    }

    pub fn set_public_url(&self, url: String) {
        let _ = self.public_url.set(url.trim_end_matches('/').to_owned());
    }

    fn api(&self) -> Result<&Api<Share>, Status> {
        self.api.get().ok_or_else(|| {
            Status::failed_precondition(
                "this agent runs without Kubernetes and cannot record share grants (they are \
                 Share resources, so that they can be listed and revoked); ask an agent started \
                 with --kubernetes",
            )
        })
    }
}

pub struct ShareServer {
    node: Arc<Node>,
    auth: Authenticator,
}

impl ShareServer {
    pub fn new(node: Arc<Node>) -> Self {
        Self {
            node,
            auth: Authenticator::new(),
        }
    }

    fn observe<T>(&self, method: &str, started: Instant, r: &Result<T, Status>) {
        self.node
            .metrics
            .observe_result("ShareService", method, started, r);
    }
}

fn kube_status(what: &str, e: kube::Error) -> Status {
    match e {
        kube::Error::Api(s) if s.code == 404 => Status::not_found(format!(
            "{what}: no such share grant (it may have expired and been collected); `potluck \
             share ls BUCKET` lists the grants"
        )),
        e => Status::unavailable(format!(
            "{what}: the Kubernetes API did not answer ({e}); try again"
        )),
    }
}

fn info_of(s: &ShareSpec) -> pb::ShareInfo {
    pb::ShareInfo {
        id: s.id.clone(),
        bucket: s.bucket.clone(),
        path: s.path.clone(),
        prefix: s.prefix,
        expires_unix: u64::try_from(s.expires_unix).unwrap_or(0),
        revoked: s.revoked,
        token: String::new(),
        url: String::new(),
    }
}

fn parse_id(id: &str) -> Result<String, Status> {
    let id = id.trim().to_ascii_lowercase();
    match hex::decode(&id) {
        Ok(b) if b.len() == 16 => Ok(id),
        _ => Err(Status::invalid_argument(format!(
            "share id {id:?} is not 32 hex digits; `potluck share ls BUCKET` prints the ids"
        ))),
    }
}

#[tonic::async_trait]
impl ShareService for ShareServer {
    async fn create_share(
        &self,
        req: Request<pb::CreateShareRequest>,
    ) -> Result<Response<pb::ShareInfo>, Status> {
        let t = Instant::now();
        let r = async {
            let view = self.node.cluster.view();
            let caller = self.auth.authenticate(&view, req.metadata())?;
            let req = req.into_inner();
            validate::bucket(&req.bucket)?;
            if req.prefix {
                validate::prefix(&req.path)?;
            } else {
                validate::key(&req.path)?;
            }
            let (key_id, secret_hash) = caller.signing_key(&req.bucket)?;
            if req.expires_in_secs == 0 || req.expires_in_secs > MAX_EXPIRES_SECS {
                return Err(Status::invalid_argument(format!(
                    "a share link expires 1 s to {MAX_EXPIRES_SECS} s (366 days) after it is \
                     made; asked for {} s",
                    req.expires_in_secs
                )));
            }
            let api = self.node.sharing.api()?;
            let mut id = [0u8; 16];
            rand::rng().fill_bytes(&mut id);
            let grant = Grant {
                id,
                bucket: req.bucket.clone(),
                access_key_id: key_id.clone(),
                path: req.path.clone(),
                prefix: req.prefix,
                expires_unix: now_unix() + req.expires_in_secs,
            };
            let token = grant
                .sign(&secret_hash)
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
            let spec = ShareSpec {
                id: grant.id_hex(),
                bucket: grant.bucket.clone(),
                path: grant.path.clone(),
                prefix: grant.prefix,
                expires_unix: i64::try_from(grant.expires_unix).unwrap_or(i64::MAX),
                access_key_id: key_id,
                revoked: false,
            };
            let share = Share::new(&format!("{NAME_PREFIX}{}", spec.id), spec.clone());
            api.create(&PostParams::default(), &share)
                .await
                .map_err(|e| kube_status("recording the share grant", e))?;
            tracing::info!(share = %spec.id, bucket = %spec.bucket, prefix = spec.prefix, expires = spec.expires_unix, "share grant created");
            let mut info = info_of(&spec);
            if let Some(base) = self.node.sharing.public_url.get() {
                info.url = format!("{base}/s/{token}");
            }
            info.token = token;
            Ok(info)
        }
        .await;
        self.observe("CreateShare", t, &r);
        r.map(Response::new)
    }

    async fn list_shares(
        &self,
        req: Request<pb::ListSharesRequest>,
    ) -> Result<Response<pb::ListSharesResponse>, Status> {
        let t = Instant::now();
        let r = async {
            let view = self.node.cluster.view();
            let caller = self.auth.authenticate(&view, req.metadata())?;
            let req = req.into_inner();
            validate::bucket(&req.bucket)?;
            caller.signing_key(&req.bucket)?;
            let api = self.node.sharing.api()?;
            let list = api
                .list(&Default::default())
                .await
                .map_err(|e| kube_status("listing share grants", e))?;
            let mut shares: Vec<pb::ShareInfo> = list
                .items
                .iter()
                .filter(|s| s.spec.bucket == req.bucket)
                .map(|s| info_of(&s.spec))
                .collect();
            shares.sort_by(|a, b| a.expires_unix.cmp(&b.expires_unix).then(a.id.cmp(&b.id)));
            Ok(pb::ListSharesResponse { shares })
        }
        .await;
        self.observe("ListShares", t, &r);
        r.map(Response::new)
    }

    async fn revoke_share(
        &self,
        req: Request<pb::RevokeShareRequest>,
    ) -> Result<Response<pb::ShareInfo>, Status> {
        let t = Instant::now();
        let r = async {
            let view = self.node.cluster.view();
            let caller = self.auth.authenticate(&view, req.metadata())?;
            let id = parse_id(&req.get_ref().id)?;
            let api = self.node.sharing.api()?;
            let name = format!("{NAME_PREFIX}{id}");
            let share = api
                .get(&name)
                .await
                .map_err(|e| kube_status("revoking the share grant", e))?;
            // Only the bucket's key may revoke its links.
            caller.signing_key(&share.spec.bucket)?;
            let patch = serde_json::json!({ "spec": { "revoked": true } });
            let share = api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(|e| kube_status("revoking the share grant", e))?;
            tracing::info!(share = %id, bucket = %share.spec.bucket, "share grant revoked");
            Ok(info_of(&share.spec))
        }
        .await;
        self.observe("RevokeShare", t, &r);
        r.map(Response::new)
    }
}
