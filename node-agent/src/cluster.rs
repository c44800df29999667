//! The cluster map this agent routes by, and the rule for replacing it.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use potluck_proto::v1 as pb;

#[derive(Debug, thiserror::Error)]
pub enum MapError {
    #[error("cluster map epoch {offered} is older than the applied epoch {current}; push the newest map")]
    Stale { offered: u64, current: u64 },
    #[error(
        "a different cluster map with epoch {0} is already applied; epochs must never be reused"
    )]
    Conflict(u64),
    #[error("cluster map is invalid: {0}")]
    Invalid(String),
}

/// A cluster map with lookups built once per epoch, not per request.
#[derive(Debug, Default)]
pub struct MapView {
    pub map: pb::ClusterMap,
    members: HashMap<String, pb::MemberInfo>,
    pools: HashMap<String, pb::PoolMap>,
}

impl MapView {
    pub fn new(map: pb::ClusterMap) -> Result<Self, MapError> {
        let mut members = HashMap::new();
        for m in &map.members {
            if members.insert(m.id.clone(), m.clone()).is_some() {
                return Err(MapError::Invalid(format!("member {} listed twice", m.id)));
            }
        }
        let mut pools = HashMap::new();
        for p in &map.pools {
            validate_pool(p, &members)?;
            // Found by fuzzing: a second pool of one name would shadow the first in lookups
            // while code walking `map.pools` still saw both.
            if pools.insert(p.name.clone(), p.clone()).is_some() {
                return Err(MapError::Invalid(format!("pool {:?} listed twice", p.name)));
            }
        }
        Ok(Self {
            map,
            members,
            pools,
        })
    }

    pub fn epoch(&self) -> u64 {
        self.map.epoch
    }

    pub fn pool(&self, name: &str) -> Option<&pb::PoolMap> {
        self.pools.get(name)
    }

    pub fn member(&self, id: &str) -> Option<&pb::MemberInfo> {
        self.members.get(id)
    }

    pub fn members(&self) -> impl Iterator<Item = &pb::MemberInfo> {
        self.map.members.iter()
    }

    pub fn pool_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.pools.keys().cloned().collect();
        v.sort();
        v
    }
}

fn validate_pool(
    p: &pb::PoolMap,
    members: &HashMap<String, pb::MemberInfo>,
) -> Result<(), MapError> {
    let bad = |why: String| Err(MapError::Invalid(format!("pool {:?}: {why}", p.name)));
    // The name goes into every key of the pool's data behind a one-byte length.
    if p.name.is_empty() || p.name.len() > crate::keys::MAX_POOL_NAME {
        return bad(format!(
            "name must be 1-{} bytes",
            crate::keys::MAX_POOL_NAME
        ));
    }
    let width = p.k.saturating_add(p.m);
    if p.k == 0 || p.m == 0 || width > crate::keys::MAX_WIDTH {
        return bad(format!("k={} m={} is not a usable code", p.k, p.m));
    }
    if p.chunk_size == 0 || p.chunk_size > 64 << 20 {
        return bad(format!("chunk size {} out of range", p.chunk_size));
    }
    if p.write_quorum < p.k || p.write_quorum > p.k + p.m {
        return bad(format!("write quorum {} outside k..=k+m", p.write_quorum));
    }
    if !p.unplaceable_reason.is_empty() {
        return Ok(());
    }
    if p.pgs.len() != p.pg_count as usize || p.pg_count == 0 {
        return bad(format!(
            "{} acting sets for {} PGs",
            p.pgs.len(),
            p.pg_count
        ));
    }
    for (i, set) in p.pgs.iter().enumerate() {
        if set.members.len() != (p.k + p.m) as usize {
            return bad(format!(
                "PG {i} has {} members, needs k+m",
                set.members.len()
            ));
        }
        if let Some(unknown) = set.members.iter().find(|m| !members.contains_key(*m)) {
            return bad(format!("PG {i} names unknown member {unknown}"));
        }
        let distinct: std::collections::HashSet<&String> = set.members.iter().collect();
        if distinct.len() != set.members.len() {
            return bad(format!("PG {i} names a member twice"));
        }
    }
    Ok(())
}

/// Holds the applied map; readers take an `Arc` snapshot and never block writers.
pub struct Cluster {
    current: RwLock<Arc<MapView>>,
}

impl Cluster {
    pub fn new(initial: Option<pb::ClusterMap>) -> Result<Self, MapError> {
        let view = match initial {
            Some(m) => MapView::new(m)?,
            None => MapView::default(),
        };
        Ok(Self {
            current: RwLock::new(Arc::new(view)),
        })
    }

    pub fn view(&self) -> Arc<MapView> {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    pub fn epoch(&self) -> u64 {
        self.view().epoch()
    }

    /// Replaces the map if `map` is newer. Returns the view that is now current
    /// and whether it changed. `persist` runs before the new map becomes
    /// visible, so a crash never leaves us routing by a map we did not keep.
    pub fn apply(
        &self,
        map: pb::ClusterMap,
        persist: impl FnOnce(&pb::ClusterMap) -> Result<(), MapError>,
    ) -> Result<(Arc<MapView>, bool), MapError> {
        let mut guard = match self.current.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let current = guard.epoch();
        if map.epoch < current {
            return Err(MapError::Stale {
                offered: map.epoch,
                current,
            });
        }
        if map.epoch == current && current != 0 {
            if map == guard.map {
                return Ok((guard.clone(), false));
            }
            return Err(MapError::Conflict(current));
        }
        if map.epoch == 0 {
            return Err(MapError::Invalid("epoch 0 is reserved for 'no map'".into()));
        }
        let view = Arc::new(MapView::new(map)?);
        persist(&view.map)?;
        *guard = view.clone();
        Ok((view, true))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(epoch: u64) -> pb::ClusterMap {
        let members: Vec<pb::MemberInfo> = (0..3)
            .map(|i| pb::MemberInfo {
                id: format!("m{i}"),
                endpoint: format!("127.0.0.1:{}", 7000 + i),
                state: pb::MemberState::Up as i32,
                ..Default::default()
            })
            .collect();
        pb::ClusterMap {
            epoch,
            pools: vec![pb::PoolMap {
                name: "default".into(),
                k: 2,
                m: 1,
                chunk_size: 1024,
                pg_count: 2,
                write_quorum: 3,
                pgs: vec![
                    pb::ActingSet {
                        members: vec!["m0".into(), "m1".into(), "m2".into()]
                    };
                    2
                ],
                unplaceable_reason: String::new(),
            }],
            members,
            created_unix_ms: 0,
            ..Default::default()
        }
    }

    #[test]
    fn older_maps_are_refused_and_epochs_never_reused() {
        let c = Cluster::new(None).unwrap();
        assert_eq!(c.epoch(), 0);
        assert!(c.apply(map(2), |_| Ok(())).unwrap().1);
        assert!(matches!(
            c.apply(map(1), |_| Ok(())),
            Err(MapError::Stale {
                offered: 1,
                current: 2
            })
        ));
        assert!(!c.apply(map(2), |_| Ok(())).unwrap().1);
        let mut other = map(2);
        other.created_unix_ms = 5;
        assert!(matches!(
            c.apply(other, |_| Ok(())),
            Err(MapError::Conflict(2))
        ));
        assert!(c.apply(map(3), |_| Ok(())).unwrap().1);
        assert_eq!(c.view().pool("default").unwrap().k, 2);
    }

    #[test]
    fn inconsistent_maps_are_refused() {
        let c = Cluster::new(None).unwrap();
        let mut m = map(1);
        m.pools[0].pgs[1].members[0] = "ghost".into();
        assert!(matches!(c.apply(m, |_| Ok(())), Err(MapError::Invalid(_))));
        let mut m = map(1);
        m.pools[0].pgs[0].members[1] = "m0".into();
        assert!(matches!(c.apply(m, |_| Ok(())), Err(MapError::Invalid(_))));
        let mut m = map(1);
        m.pools[0].pgs.pop();
        assert!(matches!(c.apply(m, |_| Ok(())), Err(MapError::Invalid(_))));
        // Regressions from fuzz/ (cluster_map): a pool listed twice, an unaddressable name.
        let mut m = map(1);
        m.pools.push(m.pools[0].clone());
        assert!(matches!(c.apply(m, |_| Ok(())), Err(MapError::Invalid(_))));
        let mut m = map(1);
        m.pools[0].name = "p".repeat(64);
        assert!(matches!(c.apply(m, |_| Ok(())), Err(MapError::Invalid(_))));
        assert_eq!(c.epoch(), 0);
    }
}
