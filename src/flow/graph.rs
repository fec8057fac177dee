//! The step dependency graph: cycles, the longest chain, and a flow's edges.
//!
//! `deps[i]` lists the steps step `i` depends on. Everything here is
//! iterative and tolerates cycles and bad indices, since a `Flow` can also be
//! built by hand.

use std::collections::VecDeque;

use super::document::Flow;

/// Steps in an order where each comes after its dependencies. Steps on or
/// behind a cycle are left out.
pub(crate) fn topological_order(deps: &[Vec<usize>]) -> Vec<usize> {
    let n = deps.len();
    let mut waiting: Vec<usize> = vec![0; n];
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, ds) in deps.iter().enumerate() {
        for &d in ds {
            if d < n {
                waiting[i] += 1;
                dependents[d].push(i);
            }
        }
    }
    let mut ready: VecDeque<usize> = (0..n).filter(|&i| waiting[i] == 0).collect();
    let mut order = Vec::with_capacity(n);
    while let Some(i) = ready.pop_front() {
        order.push(i);
        for &j in &dependents[i] {
            waiting[j] -= 1;
            if waiting[j] == 0 {
                ready.push_back(j);
            }
        }
    }
    order
}

/// Disjoint cycles, each as the steps along it starting at its lowest index.
pub(crate) fn find_cycles(deps: &[Vec<usize>]) -> Vec<Vec<usize>> {
    let n = deps.len();
    let mut settled = vec![false; n];
    for i in topological_order(deps) {
        settled[i] = true;
    }
    let mut cycles = Vec::new();
    for start in 0..n {
        if settled[start] {
            continue;
        }
        // Breadth-first from `start` through unsettled steps, looking for a
        // way back to it; `prev` rebuilds the shortest such loop.
        let mut prev: Vec<Option<usize>> = vec![None; n];
        let mut queue = VecDeque::from([start]);
        let mut closing = None;
        'search: while let Some(i) = queue.pop_front() {
            for &d in &deps[i] {
                if d >= n || settled[d] {
                    continue;
                }
                if d == start {
                    closing = Some(i);
                    break 'search;
                }
                if prev[d].is_none() {
                    prev[d] = Some(i);
                    queue.push_back(d);
                }
            }
        }
        let Some(mut at) = closing else {
            // Only downstream of a cycle, not on one.
            continue;
        };
        let mut cycle = vec![at];
        while at != start {
            match prev[at] {
                Some(p) => {
                    cycle.push(p);
                    at = p;
                }
                None => break,
            }
        }
        cycle.reverse();
        for &s in &cycle {
            settled[s] = true;
        }
        cycles.push(cycle);
    }
    cycles
}

/// Number of steps on the longest dependency chain (cyclic steps ignored).
pub(crate) fn longest_chain(deps: &[Vec<usize>]) -> usize {
    let mut level = vec![0usize; deps.len()];
    let mut best = 0;
    for i in topological_order(deps) {
        let below = deps[i]
            .iter()
            .filter_map(|&d| level.get(d))
            .max()
            .copied()
            .unwrap_or(0);
        level[i] = below + 1;
        best = best.max(level[i]);
    }
    best
}

impl Flow {
    /// Index of the step with this id (the first one, should ids repeat).
    pub fn step_index(&self, id: &str) -> Option<usize> {
        self.steps.iter().position(|s| s.id == id)
    }

    /// Indices of the steps that step `i` depends on (explicit `depends_on`,
    /// template references and the `for_each` source), sorted, deduplicated.
    /// Empty for an out-of-range `i`.
    pub fn dependencies(&self, i: usize) -> &[usize] {
        self.deps.get(i).map(Vec::as_slice).unwrap_or_default()
    }

    /// Every step's dependencies, by step index.
    pub fn graph(&self) -> &[Vec<usize>] {
        &self.deps
    }

    /// Length of the longest dependency chain, in steps: the critical path in
    /// calls, a fan-out counting as one level. 0 for a flow without steps.
    pub fn depth(&self) -> usize {
        longest_chain(&self.deps)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_respects_dependencies() {
        let deps = vec![vec![2], vec![0], vec![]];
        assert_eq!(topological_order(&deps), vec![2, 0, 1]);
    }

    #[test]
    fn cycles_are_found_and_reported_once() {
        // 0 -> 1 -> 2 -> 0 is a cycle; 3 depends on it; 4 -> 4 is a self loop.
        let deps = vec![vec![1], vec![2], vec![0], vec![0], vec![4], vec![]];
        assert_eq!(find_cycles(&deps), vec![vec![0, 1, 2], vec![4]]);
        assert!(find_cycles(&[vec![], vec![0]]).is_empty());
    }

    #[test]
    fn longest_chain_counts_steps() {
        assert_eq!(longest_chain(&[]), 0);
        assert_eq!(longest_chain(&[vec![]]), 1);
        // 3 depends on 1 and 2, 2 on 1, 1 on 0: chain of 4.
        assert_eq!(longest_chain(&[vec![], vec![0], vec![1], vec![1, 2]]), 4);
        // Out-of-range and cyclic edges do not crash it.
        assert_eq!(longest_chain(&[vec![9], vec![2], vec![1]]), 1);
    }
}
