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
use kube::runtime::finalizer::{finalizer, Event as Finalize};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use potluck_api::Bucket;

use crate::bucket_purge;
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
    let Some(namespace) = bucket.namespace() else {
        return Ok(Action::await_change());
    };
    let api = Api::<Bucket>::namespaced(ctx.client.clone(), &namespace);
    finalizer(&api, bucket_purge::FINALIZER, bucket, |event| async {
        match event {
            Finalize::Apply(bucket) => apply(bucket, &ctx).await,
            Finalize::Cleanup(bucket) => cleanup(bucket, &ctx).await,
        }
    })
    .await
    .map_err(|e| match e {
        kube::runtime::finalizer::Error::ApplyFailed(e)
        | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
        other => Error::Finalizer(other.to_string()),
    })
}

/// A deleted Bucket: empties it (see `bucket_purge`), then lets it go.
async fn cleanup(bucket: Arc<Bucket>, ctx: &Context) -> Result<Action, Error> {
    let Some(uid) = bucket.metadata.uid.clone() else {
        return Ok(Action::await_change());
    };
    let forget = || {
        ctx.purge_keys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&uid);
        ctx.bucket_keys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&uid);
    };
    let key = ctx
        .purge_keys
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .entry(uid.clone())
        .or_insert_with(buckets::generate_credentials)
        .clone();
    let material = buckets::KeyMaterial {
        id: key.0.clone(),
        secret_blake3: buckets::hash_secret(&key.1),
    };
    ctx.bucket_keys
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(uid.clone(), Ok(material.clone()));
    // A full pass, for the verdict: only a Bucket that holds its name may empty it. One
    // refused (a second claimant, a missing pool) owns no objects, and must not delete the
    // ones of the Bucket that does.
    let mut snap = ctx.sync_fleet(None).await?;
    let access = buckets::access_of(&bucket, &material);
    match (snap.buckets.remove(&uid), snap.map) {
        (Some(Verdict::Granted { .. }), Some(map)) if map.buckets.contains(&access) => {
            match bucket_purge::purge_page(&ctx.agents, &map, &access.name, &access.pool, &key)
                .await
            {
                Ok(0) => {
                    tracing::info!(bucket = %access.name, "deleted bucket is empty; releasing it");
                    forget();
                    Ok(Action::await_change())
                }
                Ok(n) => {
                    tracing::info!(bucket = %access.name, deleted = n, "emptying deleted bucket");
                    Err(Error::Purging(format!(
                        "{} deleted {n} objects, more may remain",
                        access.name
                    )))
                }
                Err(e) => Err(Error::Purging(e.to_string())),
            }
        }
        (Some(Verdict::Granted { .. }), _) => Err(Error::Purging(
            "waiting for the map that grants the purge key to be stored".into(),
        )),
        // Never held the name (or its pool is gone, objects and all): nothing of its own.
        _ => {
            forget();
            Ok(Action::await_change())
        }
    }
}

async fn apply(bucket: Arc<Bucket>, ctx: &Context) -> Result<Action, Error> {
    let Some(uid) = bucket.metadata.uid.clone() else {
        return Ok(Action::await_change());
    };
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
    if let Error::Purging(why) = error {
        tracing::debug!(bucket = %bucket.name_any(), "{why}");
        return Action::requeue(bucket_purge::NEXT_PASS);
    }
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
