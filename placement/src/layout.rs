//! The planner's working state: who holds which slot, and how loaded everyone is.
//!
//! A slot is one (PG, position) pair, numbered `pg * width + position`. Members are indices
//! into the id-sorted candidate list, so nothing here depends on the caller's input order.

use std::collections::{BTreeSet, HashMap};

use crate::draw::mix;
use crate::BALANCE_GOAL;

pub(crate) const EMPTY: u32 = u32::MAX;

/// Shares of the `pg_count * width` slots that members would hold if placement were perfectly
/// fair: proportional to weight, except that a failure domain can hold at most one slot per PG.
/// Domains that would deserve more are capped and their surplus is spread over the rest
/// (water-filling), so the balancer never chases a share that the domain rule forbids.
pub(crate) fn targets(
    weights: &[f64],
    domain_of: &[u32],
    n_domains: usize,
    pg_count: usize,
    width: usize,
) -> Vec<f64> {
    let mut domain_weight = vec![0f64; n_domains];
    for (&w, &d) in weights.iter().zip(domain_of) {
        domain_weight[d as usize] += w;
    }
    let cap = pg_count as f64;
    let total = (pg_count * width) as f64;
    let mut capped = vec![false; n_domains];
    let mut domain_target = vec![0f64; n_domains];
    loop {
        let capped_count = capped.iter().filter(|&&c| c).count();
        let remaining = total - cap * capped_count as f64;
        let free_weight: f64 = (0..n_domains)
            .filter(|&d| !capped[d])
            .map(|d| domain_weight[d])
            .sum();
        let mut newly_capped = false;
        for d in 0..n_domains {
            if capped[d] {
                domain_target[d] = cap;
                continue;
            }
            let share = if free_weight > 0.0 {
                remaining * domain_weight[d] / free_weight
            } else {
                0.0
            };
            if share > cap {
                capped[d] = true;
                newly_capped = true;
            }
            domain_target[d] = share.min(cap);
        }
        if !newly_capped {
            break;
        }
    }
    weights
        .iter()
        .zip(domain_of)
        .map(|(&w, &d)| {
            let dw = domain_weight[d as usize];
            if dw > 0.0 {
                domain_target[d as usize] * w / dw
            } else {
                0.0
            }
        })
        .collect()
}

pub(crate) struct Layout {
    width: usize,
    domain_of: Vec<u32>,
    target: Vec<f64>,
    tie: Vec<u64>,
    load: Vec<u32>,
    slots: Vec<u32>,
    /// Slots held by each member, unordered; kept so that the balancer looks only at the
    /// donor's slots instead of scanning every PG.
    held: Vec<Vec<u32>>,
    /// Members ordered by utilisation (load / target), ties by index: the balancer's
    /// extremes are at either end. `f64::to_bits` orders non-negative floats correctly.
    order: BTreeSet<(u64, u32)>,
}

impl Layout {
    pub(crate) fn new(
        width: usize,
        pg_count: usize,
        domain_of: Vec<u32>,
        target: Vec<f64>,
        tie: Vec<u64>,
    ) -> Self {
        let n = domain_of.len();
        let order = (0..n as u32).map(|m| (0f64.to_bits(), m)).collect();
        Layout {
            width,
            domain_of,
            target,
            tie,
            load: vec![0; n],
            slots: vec![EMPTY; pg_count * width],
            held: vec![Vec::new(); n],
            order,
        }
    }

    fn util(&self, m: u32) -> f64 {
        f64::from(self.load[m as usize]) / self.target[m as usize]
    }

    fn util_if_gaining(&self, m: u32) -> f64 {
        f64::from(self.load[m as usize] + 1) / self.target[m as usize]
    }

    fn set_load(&mut self, m: u32, load: u32) {
        self.order.remove(&(self.util(m).to_bits(), m));
        self.load[m as usize] = load;
        self.order.insert((self.util(m).to_bits(), m));
    }

    /// Puts `m` into `slot`, evicting whoever held it.
    fn assign(&mut self, slot: usize, m: u32) {
        let old = self.slots[slot];
        if old == m {
            return;
        }
        if old != EMPTY {
            let held = &mut self.held[old as usize];
            if let Some(i) = held.iter().position(|&s| s as usize == slot) {
                held.swap_remove(i);
            }
            self.set_load(old, self.load[old as usize] - 1);
        }
        self.slots[slot] = m;
        self.held[m as usize].push(slot as u32);
        self.set_load(m, self.load[m as usize] + 1);
    }

    /// Whether `m` may take `slot`: no other position of that PG holds a member of `m`'s
    /// domain (which also rules out `m` itself).
    fn eligible(&self, m: u32, slot: usize) -> bool {
        let base = slot - slot % self.width;
        let domain = self.domain_of[m as usize];
        (base..base + self.width).all(|s| {
            let other = self.slots[s];
            s == slot || other == EMPTY || self.domain_of[other as usize] != domain
        })
    }

    fn pg_contains(&self, pg: usize, m: u32) -> bool {
        self.slots[pg * self.width..(pg + 1) * self.width].contains(&m)
    }

    /// Fresh placement: every slot takes the rendezvous proposal as is.
    pub(crate) fn fill(&mut self, proposal: &[(u32, f64)]) {
        for (slot, &(m, _)) in proposal.iter().enumerate() {
            if m != EMPTY {
                self.assign(slot, m);
            }
        }
    }

    /// Copies every still-valid position of the previous placement, so that a member keeps
    /// exactly the shards it already stores. A position is invalid when its member is gone or
    /// now shares a domain with an earlier position of the PG (a member moved domains).
    ///
    /// `previous[pg % previous.len()]` is the hint for `pg`: with stripes hashed to PGs by the
    /// low bits, that is the parent PG when the PG count was doubled, so a split moves nothing.
    ///
    /// Returns which members held no position at all before: the newcomers.
    pub(crate) fn keep(
        &mut self,
        previous: &[Vec<String>],
        index: &HashMap<&str, u32>,
    ) -> Vec<bool> {
        let mut seen = vec![false; self.load.len()];
        let pg_count = self.slots.len() / self.width;
        for pg in 0..pg_count {
            let hint = &previous[pg % previous.len()];
            for (pos, id) in hint.iter().enumerate().take(self.width) {
                let Some(&m) = index.get(id.as_str()) else {
                    continue;
                };
                seen[m as usize] = true;
                let slot = pg * self.width + pos;
                if self.eligible(m, slot) {
                    self.assign(slot, m);
                }
            }
        }
        seen.into_iter().map(|s| !s).collect()
    }

    /// Fills every empty slot with the eligible member whose utilisation would be lowest
    /// afterwards. A vacancy is data that must move anyway; sending it where it most evens out
    /// the load means a departure needs no further moves to stay balanced.
    ///
    /// Returns false when some slot has no eligible member, which the caller's domain count
    /// check rules out.
    pub(crate) fn refill(&mut self) -> bool {
        let n = self.load.len() as u32;
        for slot in 0..self.slots.len() {
            if self.slots[slot] != EMPTY {
                continue;
            }
            let pg = slot / self.width;
            let mut best: Option<(f64, u64, u32)> = None;
            for m in 0..n {
                let util = self.util_if_gaining(m);
                let tie = mix(self.tie[m as usize], pg);
                if let Some((bu, bt, _)) = best {
                    if util > bu || (util == bu && tie >= bt) {
                        continue;
                    }
                }
                if self.eligible(m, slot) {
                    best = Some((util, tie, m));
                }
            }
            match best {
                Some((_, _, m)) => self.assign(slot, m),
                None => return false,
            }
        }
        true
    }

    /// Lets newcomers take positions in the PGs where rendezvous hashing ranks them in the
    /// acting set, strongest draws first, until each reaches its fair share.
    ///
    /// This is where joining costs data movement, so the newcomer only enters PGs it would win
    /// in a stateless plan, and never beyond its share. Within such a PG it evicts the member of
    /// its own domain if there is one (the domain rule leaves no choice), else the most
    /// utilised member. Either way the evicted member must hold more than its own share: a
    /// newcomer in a populated domain wins mostly where its domain is already present, and
    /// evicting its domain-mates every time would leave them short, to be refilled by the
    /// balancer with more moves. Wins it cannot take are made up by `top_up`.
    pub(crate) fn claim(&mut self, proposal: &[(u32, f64)], newcomer: &[bool]) {
        let w = self.width;
        let mut offers: Vec<(f64, usize, u32)> = Vec::new();
        for (slot, &(m, key)) in proposal.iter().enumerate() {
            let pg = slot / w;
            if m != EMPTY && newcomer[m as usize] && !self.pg_contains(pg, m) {
                offers.push((key, pg, m));
            }
        }
        offers.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
        for (_, pg, n) in offers {
            if f64::from(self.load[n as usize]) >= self.target[n as usize] {
                continue;
            }
            let base = pg * w;
            let domain = self.domain_of[n as usize];
            let same_domain =
                (base..base + w).find(|&s| self.domain_of[self.slots[s] as usize] == domain);
            let victim = match same_domain {
                Some(s) => Some(s).filter(|&s| !newcomer[self.slots[s] as usize]),
                None => {
                    let mut best: Option<(f64, usize)> = None;
                    for s in base..base + w {
                        let held_by = self.slots[s];
                        if newcomer[held_by as usize] {
                            continue;
                        }
                        let util = self.util(held_by);
                        if best.is_none_or(|(bu, _)| util > bu) {
                            best = Some((util, s));
                        }
                    }
                    best.map(|(_, s)| s)
                }
            };
            if let Some(slot) = victim.filter(|&s| self.can_spare(self.slots[s])) {
                self.assign(slot, n);
            }
        }
    }

    /// Whether `m` still holds at least its share, rounded down, after giving up one slot.
    fn can_spare(&self, m: u32) -> bool {
        let load = self.load[m as usize];
        load > 0 && f64::from(load - 1) >= self.target[m as usize].floor()
    }

    /// Newcomers whose rendezvous wins fall short of their share take the rest, one position
    /// at a time, from the most utilised members. Rendezvous gives heavy members less than
    /// their weight's share, so a heavy newcomer would otherwise sit below its share until
    /// drift elsewhere triggered the balancer; these moves are part of what joining costs
    /// anyway, not extra.
    pub(crate) fn top_up(&mut self, newcomer: &[bool]) {
        for (n, _) in newcomer.iter().enumerate().filter(|(_, &is_new)| is_new) {
            let n = n as u32;
            while f64::from(self.load[n as usize]) < self.target[n as usize]
                && self.gain(n, BALANCE_GOAL)
            {}
        }
    }

    /// Whether `m` holds more than `band` above its fair share. A load of the share rounded up
    /// never counts: with few slots per member, one position can be more than `band`, and
    /// chasing an unreachable fraction would only move data back and forth.
    fn over(&self, m: u32, band: f64, load: u32) -> bool {
        let t = self.target[m as usize];
        f64::from(load) > (t * (1.0 + band)).max(t.ceil())
    }

    /// Mirror of `over`: below the share by more than `band` and below it rounded down.
    fn under(&self, m: u32, band: f64, load: u32) -> bool {
        let t = self.target[m as usize];
        f64::from(load) < (t * (1.0 - band)).min(t.floor())
    }

    fn outside(&self, m: u32, band: f64) -> bool {
        let load = self.load[m as usize];
        self.over(m, band, load) || self.under(m, band, load)
    }

    /// Moves single positions from the most to the least utilised members until every
    /// member is within `goal` of its fair share, or no move can improve on the worst one.
    ///
    /// Nothing moves unless some member is beyond `trigger`: each move is data copied across
    /// the network, so small drift after a membership change is tolerated, and once something
    /// is worth fixing it is fixed with margin (`goal` < `trigger`) so that the next small
    /// change does not trigger again. Every move strictly lowers the higher of the two
    /// utilisations involved and pushes neither member outside `goal`, so the loop cannot
    /// cycle; it ends where no member outside `goal` has a move left, so planning again from
    /// its own output moves nothing.
    pub(crate) fn balance(&mut self, trigger: f64, goal: f64, max_moves: usize) -> usize {
        let n = self.load.len() as u32;
        if !(0..n).any(|m| self.outside(m, trigger)) {
            return 0;
        }
        let mut moves = 0;
        let mut stuck = vec![false; n as usize];
        loop {
            let moves_before_pass = moves;
            stuck.fill(false);
            loop {
                if moves >= max_moves {
                    return moves;
                }
                let hi = self
                    .order
                    .iter()
                    .rev()
                    .map(|k| k.1)
                    .find(|&m| !stuck[m as usize] && self.over(m, goal, self.load[m as usize]));
                let lo =
                    self.order.iter().map(|k| k.1).find(|&m| {
                        !stuck[m as usize] && self.under(m, goal, self.load[m as usize])
                    });
                let (member, shed) = match (hi, lo) {
                    (None, None) => break,
                    (Some(h), None) => (h, true),
                    (None, Some(l)) => (l, false),
                    (Some(h), Some(l)) => {
                        if self.util(h) - 1.0 >= 1.0 - self.util(l) {
                            (h, true)
                        } else {
                            (l, false)
                        }
                    }
                };
                let moved = if shed {
                    self.shed(member, goal)
                } else {
                    self.gain(member, goal)
                };
                if moved {
                    moves += 1;
                } else {
                    stuck[member as usize] = true;
                }
            }
            if moves == moves_before_pass {
                return moves;
            }
        }
    }

    /// Gives one of `donor`'s slots to the least utilised member that can take it and stays
    /// below the donor's current utilisation.
    fn shed(&mut self, donor: u32, goal: f64) -> bool {
        let donor_util = self.util(donor);
        let mut choice = None;
        for &(_, r) in &self.order {
            if self.util(r) >= donor_util {
                break;
            }
            let load = self.load[r as usize];
            if r == donor || self.util_if_gaining(r) >= donor_util || self.over(r, goal, load + 1) {
                continue;
            }
            if let Some(slot) = self.movable_slot(donor, r) {
                choice = Some((slot, r));
                break;
            }
        }
        match choice {
            Some((slot, r)) => {
                self.assign(slot, r);
                true
            }
            None => false,
        }
    }

    /// Takes one slot for `taker` from the most utilised member that can spare one.
    fn gain(&mut self, taker: u32, goal: f64) -> bool {
        let after = self.util_if_gaining(taker);
        let mut choice = None;
        for &(_, d) in self.order.iter().rev() {
            if self.util(d) <= after {
                break;
            }
            let load = self.load[d as usize];
            if d == taker || self.under(d, goal, load - 1) {
                continue;
            }
            if let Some(slot) = self.movable_slot(d, taker) {
                choice = Some(slot);
                break;
            }
        }
        match choice {
            Some(slot) => {
                self.assign(slot, taker);
                true
            }
            None => false,
        }
    }

    /// One of `donor`'s slots that `taker` may hold. Among several, the choice is scrambled
    /// per taker so that balancing moves do not pile up in the low-numbered PGs.
    fn movable_slot(&self, donor: u32, taker: u32) -> Option<usize> {
        let seed = self.tie[taker as usize];
        self.held[donor as usize]
            .iter()
            .map(|&s| s as usize)
            .filter(|&s| self.eligible(taker, s))
            .min_by_key(|&s| (mix(seed, s / self.width), s))
    }

    /// Member index per slot; EMPTY never remains after a successful plan.
    pub(crate) fn into_slots(self) -> Vec<u32> {
        self.slots
    }
}
