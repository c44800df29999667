//! ListObjects: a bucket's manifests are spread over every PG, so the gateway
//! asks every member for a page and merges them.
//!
//! Each member returns its first `page_size` keys after the token. A key's
//! newest manifest sits on a write quorum of members, so as long as fewer than
//! a write quorum failed to answer, some answer carries it. Keys past the
//! smallest "last key" of a truncated answer are left for the next page,
//! since a truncated member may hold keys before them.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::future::join_all;
use potluck_proto::v1 as pb;
use tonic::Status;

use crate::gateway::{info_of, manifests::write_quorum, resolve_pool};
use crate::node::Node;
use crate::validate;

const DEFAULT_PAGE: u32 = 1000;
const MAX_PAGE: u32 = 10_000;

pub async fn list_objects(
    node: &Arc<Node>,
    req: pb::ListObjectsRequest,
) -> Result<pb::ListObjectsResponse, Status> {
    validate::bucket(&req.bucket)?;
    validate::prefix(&req.prefix)?;
    let view = node.cluster.view();
    let pool = resolve_pool(&view, &req.pool)?;
    let page = match req.page_size {
        0 => DEFAULT_PAGE,
        n => n.min(MAX_PAGE),
    };
    let start_after = validate::page_token(&req.page_token)?;
    let ask = pb::ListManifestsRequest {
        epoch: view.epoch(),
        pool: pool.name.clone(),
        bucket: req.bucket.clone(),
        prefix: req.prefix.clone(),
        start_after,
        limit: page,
        ..Default::default()
    };
    let members: Vec<String> = view
        .members()
        .filter(|m| m.state != pb::MemberState::Out as i32)
        .map(|m| m.id.clone())
        .collect();
    let calls = members
        .iter()
        .map(|member| node.list_manifests(&view, member, ask.clone()));
    let results = join_all(calls).await;
    let failed: Vec<String> = results
        .iter()
        .filter_map(|r| r.as_ref().err().map(|e| e.to_string()))
        .collect();
    let width = (pool.k + pool.m) as usize;
    if failed.len() >= write_quorum(width) {
        return Err(Status::unavailable(format!(
            "listing needs answers from all but {} members; {} failed: {}",
            write_quorum(width) - 1,
            failed.len(),
            failed.join("; ")
        )));
    }

    let mut cutoff: Option<String> = None;
    let mut newest: BTreeMap<String, pb::Manifest> = BTreeMap::new();
    for resp in results.into_iter().flatten() {
        if resp.truncated {
            if let Some(last) = resp.manifests.last() {
                if cutoff.as_ref().is_none_or(|c| &last.key < c) {
                    cutoff = Some(last.key.clone());
                }
            }
        }
        for m in resp.manifests {
            match newest.get(&m.key) {
                Some(have) if (have.version, &have.object_id) >= (m.version, &m.object_id) => {}
                _ => {
                    newest.insert(m.key.clone(), m);
                }
            }
        }
    }
    let mut objects = Vec::new();
    let mut last_seen: Option<String> = None;
    let mut more = cutoff.is_some();
    for (key, m) in newest {
        if cutoff.as_ref().is_some_and(|c| &key > c) {
            break;
        }
        if objects.len() == page as usize {
            more = true;
            break;
        }
        if !m.tombstone {
            objects.push(info_of(&m));
        }
        last_seen = Some(key);
    }
    let next_page_token = match (more, last_seen) {
        (true, Some(k)) => hex::encode(k.as_bytes()),
        _ => String::new(),
    };
    Ok(pb::ListObjectsResponse {
        objects,
        next_page_token,
    })
}
