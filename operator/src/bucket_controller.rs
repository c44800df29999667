//! The Bucket controller: makes sure each Bucket has its credentials Secret, hands the key to
//! the fleet pass (which publishes it in the next map) and reports the outcome in the Bucket's
//! status.
//!
//! Secrets are read by name with `get`, never listed or watched: the operator's role then
//! grants no way to enumerate the cluster's Secrets. A changed Secret (a rotated key) is
//! therefore noticed on the periodic requeue rather than at once.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::api::ListParams;
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use potluck_api::Bucket;

use crate::buckets::{self, Verdict};
use crate::controller::{Context, Error};

/// How often a Bucket's Secret is read again, so that a key an admin rotates takes effect.
const REREAD_SECRET: Duration = Duration::from_secs(60);

/// Every Bucket; none when the Bucket CRD is not installed (a cluster upgraded without
/// `deploy/crds.yaml`), so that pools keep working there.
pub async fn list_buckets(client: &Client) -> Result<Vec<Bucket>, kube::Error> {
    match Api::<Bucket>::all(client.clone())
        .list(&ListParams::default())
        .await
    {
        Ok(list) => Ok(list.items),
        Err(kube::Error::Api(s)) if s.code == 404 => {
            tracing::debug!("the Bucket CRD is not installed; publishing no buckets");
            Ok(Vec::new())
        }
        Err(e) => Err(e),
    }
}

async fn reconcile(bucket: Arc<Bucket>, ctx: Arc<Context>) -> Result<Action, Error> {
    let Some(uid) = bucket.metadata.uid.clone() else {
        return Ok(Action::await_change());
    };
    if bucket.metadata.deletion_timestamp.is_some() {
        // Going away: the next fleet pass lists it no more, and its Secret goes with it.
        return Ok(Action::await_change());
    }
    let material = buckets::ensure_secret(&ctx.client, &bucket).await?;
    if let Some(certs) = ctx.certificates.get() {
        crate::client_certificates::ensure(&ctx.client, &bucket, certs.ca(), certs.validity())
            .await?;
    }
    let key_id = material.as_ref().ok().map(|m| m.id.clone());
    let granted = material
        .as_ref()
        .ok()
        .map(|m| buckets::access_of(&bucket, m));
    ctx.bucket_keys
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(uid.clone(), material);
    // A fleet pass per reconcile would cost every agent a status call per Bucket each minute
    // (and per Bucket at start-up): skip it when the stored map already grants this very key.
    let stored = ctx.stored_map().await;
    let (verdict, map) = match (&granted, stored) {
        (Some(access), Some(map)) if map.buckets.contains(access) => (
            Some(Verdict::Granted {
                name: access.name.clone(),
                key_id: key_id.clone().unwrap_or_default(),
            }),
            Some(map),
        ),
        _ => {
            let mut snap = ctx.sync_fleet(None).await?;
            (snap.buckets.remove(&uid), snap.map)
        }
    };
    let before = bucket.status.clone().unwrap_or_default();
    let after = buckets::bucket_status(
        &bucket,
        verdict.as_ref(),
        map.as_ref(),
        key_id.as_deref(),
        buckets::now(),
    );
    let namespace = bucket.namespace().unwrap_or_default();
    buckets::write_status(
        &Api::namespaced(ctx.client.clone(), &namespace),
        &bucket.name_any(),
        &before,
        &after,
    )
    .await?;
    Ok(match &verdict {
        // Not published yet (the map could not be stored this pass): try again soon.
        Some(Verdict::Granted { .. }) if after.map_epoch == 0 => {
            Action::requeue(Duration::from_secs(2))
        }
        _ => Action::requeue(REREAD_SECRET),
    })
}

fn error_policy(bucket: Arc<Bucket>, error: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(
        bucket = %bucket.name_any(),
        namespace = %bucket.namespace().unwrap_or_default(),
        "bucket reconcile failed, retrying in 5s: {error}"
    );
    Action::requeue(Duration::from_secs(5))
}

/// Runs until the watch stream ends.
pub async fn run(ctx: Arc<Context>, concurrency: u16) {
    Controller::new(
        Api::<Bucket>::all(ctx.client.clone()),
        watcher::Config::default(),
    )
    .with_config(controller::Config::default().concurrency(concurrency))
    .run(reconcile, error_policy, ctx)
    .for_each(|r| async move {
        if let Err(e) = r {
            tracing::debug!("bucket reconcile: {e}");
        }
    })
    .await;
}
