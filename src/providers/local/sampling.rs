//! Choosing the next token from the logits: greedy at temperature 0, else nucleus
//! (top-p) sampling from a seeded generator, after the repeat penalty.

use rand::distributions::{Distribution, WeightedIndex};
use rand::rngs::StdRng;
use rand::SeedableRng;

pub struct Sampler {
    rng: StdRng,
    /// `None`: greedy.
    nucleus: Option<(f64, f64)>,
}

impl Sampler {
    /// Greedy when `temperature <= 0`, else top-`p` at `temperature`, seeded.
    pub fn new(seed: u64, temperature: f64, top_p: f64) -> Self {
        Self {
            rng: StdRng::seed_from_u64(seed),
            nucleus: (temperature > 0.0).then_some((temperature, top_p)),
        }
    }

    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        let Some((temperature, top_p)) = self.nucleus else {
            return argmax(logits);
        };
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut probs: Vec<(u32, f64)> = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (i as u32, (((l - max) as f64) / temperature).exp()))
            .collect();
        let total: f64 = probs.iter().map(|p| p.1).sum();
        probs.sort_unstable_by(|a, b| b.1.total_cmp(&a.1));
        // The smallest set of most likely tokens whose mass reaches p.
        let mut mass = 0.0;
        let mut keep = 0;
        for (_, p) in &probs {
            keep += 1;
            mass += p / total;
            if mass >= top_p {
                break;
            }
        }
        probs.truncate(keep.max(1));
        match WeightedIndex::new(probs.iter().map(|p| p.1)) {
            Ok(dist) => probs[dist.sample(&mut self.rng)].0,
            // Only if every weight were zero or not finite.
            Err(_) => argmax(logits),
        }
    }
}

fn argmax(logits: &[f32]) -> u32 {
    let mut best = (0, f32::NEG_INFINITY);
    for (i, &l) in logits.iter().enumerate() {
        if l > best.1 {
            best = (i, l);
        }
    }
    best.0 as u32
}

/// Make the `recent` tokens less likely: positive logits divided by `penalty`,
/// negative ones multiplied (the CTRL paper's rule, as llama.cpp and candle do).
pub fn penalise_repeats(logits: &mut [f32], penalty: f32, recent: &[u32]) {
    let mut seen = std::collections::HashSet::new();
    for &t in recent {
        if !seen.insert(t) {
            continue;
        }
        if let Some(l) = logits.get_mut(t as usize) {
            *l = if *l >= 0.0 {
                *l / penalty
            } else {
                *l * penalty
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_largest() {
        assert_eq!(Sampler::new(1, 0.0, 0.9).sample(&[0.1, 3.0, -2.0]), 1);
    }

    #[test]
    fn a_narrow_nucleus_is_greedy_and_a_seed_repeats() {
        let logits = [0.0, 10.0, 0.0, 9.0];
        assert_eq!(Sampler::new(7, 1.0, 0.01).sample(&logits), 1);
        let draw = |seed| {
            let mut s = Sampler::new(seed, 1.0, 0.99);
            (0..20).map(|_| s.sample(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(draw(3), draw(3));
        assert!(draw(3).iter().all(|t| *t == 1 || *t == 3));
    }

    #[test]
    fn repeats_are_penalised_once_each() {
        let mut l = [2.0, -2.0, 1.0];
        penalise_repeats(&mut l, 2.0, &[0, 1, 0]);
        assert_eq!(l, [1.0, -4.0, 1.0]);
    }
}
