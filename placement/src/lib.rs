//! Placement: decides which member holds each shard position of every placement group (PG).
//!
//! It is the one place that turns membership into acting sets, and it is kept pure (no I/O,
//! no clock, no randomness beyond hashing its inputs) so that the same inputs always give the
//! same map, and so that balance and data movement can be measured in plain unit tests.
//!
//! The method, and why (measured in `notes/placement.md`):
//!
//! 1. Weighted rendezvous hashing (straw2's rule) proposes, for every PG, the `width` best
//!    members in distinct failure domains. On its own it moves close to the minimum of data
//!    when membership changes, but leaves loads 30–40 % above their fair share.
//! 2. With a previous placement, every member that is still present keeps its positions;
//!    vacated positions go to the least utilised eligible member, and a newcomer takes only
//!    positions where rendezvous ranks it in the acting set, up to its fair share.
//! 3. A balancer moves single positions from over- to under-loaded members until all are
//!    within a few percent of their fair share. It starts from the previous result rather
//!    than re-deriving weights, so balance costs only the positions it actually moves.

use std::collections::{BTreeMap, HashMap};

mod draw;
mod layout;
#[cfg(test)]
mod tests;

use draw::{key_at_least, Draws};
use layout::{Layout, EMPTY};

/// Upper bound on `Rule::pg_count`: beyond it the planner's memory and time grow with no
/// benefit to balance for any realistic fleet.
pub const MAX_PG_COUNT: u32 = 1 << 20;

/// Upper bound on `Rule::width`, far above any useful `k + m`; it keeps slot numbers
/// (`pg * width + position`) within 32 bits at the largest PG count.
pub const MAX_WIDTH: usize = 256;

/// A balanced plan leaves every member within this fraction of its fair share when slots allow.
pub const BALANCE_GOAL: f64 = 0.02;

/// With a previous placement, the balancer stays idle until some member is this far from its
/// fair share, so that small drift after a membership change costs no extra data movement.
pub const BALANCE_TRIGGER: f64 = 0.05;

/// A member that may hold shard positions.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Member {
    pub id: String,
    /// Relative share of positions (typically capacity in bytes). Zero means "give it no
    /// positions": a draining member keeps serving what it has, but nothing is placed on it.
    pub weight: u64,
    /// Members sharing a domain never hold two positions of one PG, so that losing a whole
    /// domain costs each stripe at most one shard.
    pub domain: String,
}

/// The shape of a pool's placement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rule {
    /// Positions per PG (`k + m`): position `i` holds shard `i` of every stripe in the PG.
    pub width: usize,
    /// A power of two so that stripes map to PGs by their hash's low bits, and doubling the
    /// count splits each PG into two that start on their parent's members.
    pub pg_count: u32,
}

/// `acting_sets[pg][position]` = member id; each inner Vec has exactly `width` distinct members
/// in distinct failure domains.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Placement {
    pub acting_sets: Vec<Vec<String>>,
}

/// Why no placement can be computed. Messages are written for the person who can fix the
/// input, so each says what to change.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    #[error(
        "no member has capacity to offer; add members with non-zero capacity before placing data"
    )]
    NoMembers,
    #[error(
        "pg_count {0} is not a power of two between 1 and {max}; use a power of two, about 100 shard positions per member (for example 1024 or 4096)",
        max = MAX_PG_COUNT
    )]
    InvalidPgCount(u32),
    #[error("k+m is 0; a pool needs at least one shard position per placement group")]
    ZeroWidth,
    #[error(
        "k+m is {0}, above the planner's limit of {max} positions per placement group; lower k+m",
        max = MAX_WIDTH
    )]
    WidthTooLarge(usize),
    #[error(
        "pool needs {needed} members in distinct failure domains but only {available} domains have members; add members in new failure domains or lower k+m"
    )]
    NotEnoughDomains { needed: usize, available: usize },
    #[error("member id {0:?} is listed more than once; give every member a unique id")]
    DuplicateMember(String),
    #[error("a member has an empty id; give every member a non-empty unique id")]
    EmptyMemberId,
}

/// The candidates of one plan, in id order so that input order never matters.
struct Candidates<'a> {
    members: Vec<&'a Member>,
    domain_of: Vec<u32>,
    n_domains: usize,
}

impl<'a> Candidates<'a> {
    /// Validates `members` and keeps those with weight.
    fn new(members: &'a [Member]) -> Result<Self, PlacementError> {
        let mut sorted: Vec<&Member> = members.iter().collect();
        if sorted.iter().any(|m| m.id.is_empty()) {
            return Err(PlacementError::EmptyMemberId);
        }
        sorted.sort_by(|a, b| a.id.cmp(&b.id));
        if let Some(pair) = sorted.windows(2).find(|p| p[0].id == p[1].id) {
            return Err(PlacementError::DuplicateMember(pair[0].id.clone()));
        }
        sorted.retain(|m| m.weight > 0);
        let mut domains: BTreeMap<&str, u32> = BTreeMap::new();
        for m in &sorted {
            domains.insert(m.domain.as_str(), 0);
        }
        for (i, v) in domains.values_mut().enumerate() {
            *v = i as u32;
        }
        let domain_of = sorted
            .iter()
            .map(|m| domains.get(m.domain.as_str()).copied().unwrap_or(0))
            .collect();
        Ok(Candidates {
            n_domains: domains.len(),
            members: sorted,
            domain_of,
        })
    }

    fn weights(&self) -> Vec<f64> {
        self.members.iter().map(|m| m.weight as f64).collect()
    }
}

fn check_rule(rule: &Rule) -> Result<(), PlacementError> {
    if !rule.pg_count.is_power_of_two() || rule.pg_count > MAX_PG_COUNT {
        return Err(PlacementError::InvalidPgCount(rule.pg_count));
    }
    if rule.width == 0 {
        return Err(PlacementError::ZeroWidth);
    }
    if rule.width > MAX_WIDTH {
        return Err(PlacementError::WidthTooLarge(rule.width));
    }
    Ok(())
}

/// Computes the acting sets of every PG.
///
/// With `previous`, members keep the positions they hold there (see the crate docs), so the
/// result differs from it only where membership or balance requires. Planning again from a
/// result with the same members returns that result unchanged.
pub fn plan(
    rule: &Rule,
    members: &[Member],
    previous: Option<&Placement>,
) -> Result<Placement, PlacementError> {
    check_rule(rule)?;
    let candidates = Candidates::new(members)?;
    if candidates.members.is_empty() {
        return Err(PlacementError::NoMembers);
    }
    let not_enough = PlacementError::NotEnoughDomains {
        needed: rule.width,
        available: candidates.n_domains,
    };
    if candidates.n_domains < rule.width {
        return Err(not_enough);
    }
    let width = rule.width;
    let pg_count = rule.pg_count as usize;
    let target = layout::targets(
        &candidates.weights(),
        &candidates.domain_of,
        candidates.n_domains,
        pg_count,
        width,
    );
    let tie = candidates
        .members
        .iter()
        .map(|m| draw::tie_seed(&m.id))
        .collect();
    let mut layout = Layout::new(width, pg_count, candidates.domain_of.clone(), target, tie);
    let max_moves = pg_count * width;
    match previous.filter(|p| !p.acting_sets.is_empty()) {
        None => {
            layout.fill(&propose(&candidates, pg_count, width));
            // Nothing is stored yet, so balancing costs nothing: go straight to the goal.
            layout.balance(BALANCE_GOAL, BALANCE_GOAL, max_moves);
        }
        Some(prev) => {
            let index: HashMap<&str, u32> = candidates
                .members
                .iter()
                .enumerate()
                .map(|(i, m)| (m.id.as_str(), i as u32))
                .collect();
            let newcomer = layout.keep(&prev.acting_sets, &index);
            if !layout.refill() {
                return Err(not_enough);
            }
            if newcomer.iter().any(|&n| n) {
                layout.claim(&propose(&candidates, pg_count, width), &newcomer);
                layout.top_up(&newcomer);
            }
            layout.balance(BALANCE_TRIGGER, BALANCE_GOAL, max_moves);
        }
    }
    let slots = layout.into_slots();
    let mut acting_sets = Vec::with_capacity(pg_count);
    for set in slots.chunks_exact(width) {
        let mut ids = Vec::with_capacity(width);
        for &m in set {
            match candidates.members.get(m as usize) {
                Some(member) if m != EMPTY => ids.push(member.id.clone()),
                _ => return Err(not_enough),
            }
        }
        acting_sets.push(ids);
    }
    Ok(Placement { acting_sets })
}

/// Rendezvous proposal for every PG: `width` (member, key) pairs per PG, best first, members in
/// distinct domains: walk the members from the best key and skip domains already taken.
///
/// One streaming pass per PG does that walk without sorting: it keeps the best `width`
/// entries seen so far, one per domain, and most members are dismissed by a single comparison
/// with the worst of them. A domain whose entry is pushed out never needs it back, since a
/// later member of that domain only gets in by beating the (by then better) worst entry.
fn propose(candidates: &Candidates<'_>, pg_count: usize, width: usize) -> Vec<(u32, f64)> {
    let mut draws = Draws::new(candidates.members.iter().map(|m| m.id.as_str()));
    let weights = candidates.weights();
    let domain_of = &candidates.domain_of;
    let mut proposal = Vec::with_capacity(pg_count * width);
    // (key, member, domain), best first. Members arrive in index order, so placing a new
    // entry after equal keys breaks ties by index.
    let mut top: Vec<(f64, u32, u32)> = Vec::with_capacity(width + 1);
    draws.for_each_pg(pg_count, |_, raw| {
        top.clear();
        let mut worst = f64::INFINITY;
        for (i, (&raw, &weight)) in raw.iter().zip(&weights).enumerate() {
            let u = draw::unit(raw);
            if key_at_least(u, weight, worst) {
                continue;
            }
            let key = draw::rendezvous_key(u, weight);
            if key >= worst {
                continue;
            }
            let domain = domain_of[i];
            if let Some(j) = top.iter().position(|e| e.2 == domain) {
                if key >= top[j].0 {
                    continue;
                }
                top.remove(j);
            } else if top.len() == width {
                top.pop();
            }
            let at = top.partition_point(|e| e.0 <= key);
            top.insert(at, (key, i as u32, domain));
            if top.len() == width {
                worst = top[width - 1].0;
            }
        }
        proposal.extend(top.iter().map(|&(key, m, _)| (m, key)));
        // Only reachable if domains < width, which `plan` rejects first.
        proposal.resize(proposal.len() + width - top.len(), (EMPTY, f64::INFINITY));
    });
    proposal
}

/// Positions held per member: every listed member appears (zero when it holds nothing), and
/// so does any id found in the placement but not among `members`.
pub fn loads(placement: &Placement, members: &[Member]) -> HashMap<String, usize> {
    let mut out: HashMap<String, usize> = members.iter().map(|m| (m.id.clone(), 0)).collect();
    for id in placement.acting_sets.iter().flatten() {
        *out.entry(id.clone()).or_insert(0) += 1;
    }
    out
}

/// Positions whose member differs between `old` and `new`, compared PG by PG and position by
/// position; each is one shard per stripe of that PG that recovery must rebuild elsewhere.
/// Positions present only in `new` count as moved, positions only in `old` do not.
pub fn moved_positions(old: &Placement, new: &Placement) -> usize {
    new.acting_sets
        .iter()
        .enumerate()
        .map(|(pg, set)| {
            let before = old.acting_sets.get(pg);
            set.iter()
                .enumerate()
                .filter(|&(pos, id)| before.and_then(|b| b.get(pos)) != Some(id))
                .count()
        })
        .sum()
}

/// How evenly a placement spreads load, relative to each member's fair share.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spread {
    /// Highest load / fair share. The fair share is proportional to weight, except where a
    /// failure domain would deserve more than one position per PG; the loads add up to the
    /// shares, so this is also the max/mean ratio of weighted load.
    pub max_over_mean: f64,
    /// Lowest load / fair share.
    pub min_over_mean: f64,
}

/// Balance of `placement` over the members with weight; `None` when there are none or the
/// placement is empty.
pub fn spread(placement: &Placement, members: &[Member]) -> Option<Spread> {
    let pg_count = placement.acting_sets.len();
    let width = placement.acting_sets.iter().map(Vec::len).max()?;
    let candidates = Candidates::new(members).ok()?;
    if candidates.members.is_empty() || width == 0 {
        return None;
    }
    let target = layout::targets(
        &candidates.weights(),
        &candidates.domain_of,
        candidates.n_domains,
        pg_count,
        width,
    );
    let counts = loads(placement, members);
    let mut max = f64::MIN;
    let mut min = f64::MAX;
    for (m, t) in candidates.members.iter().zip(target) {
        let util = counts.get(&m.id).copied().unwrap_or(0) as f64 / t;
        max = max.max(util);
        min = min.min(util);
    }
    Some(Spread {
        max_over_mean: max,
        min_over_mean: min,
    })
}
