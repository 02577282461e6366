//! Packed rows for loglikelihood requests: each shared context is computed once, and requests of
//! different documents fill rows instead of padding.
//!
//! Why packed rows rather than a KV cache: a unit (one context followed by the continuations of
//! every request that shares it) and the units sharing a row only need each token's position in
//! its own sequence and an arbitrary attention mask. Both are inputs of an ordinary forward pass
//! ([`crate::model::Packing`]), so the blocks need no cache, rotary (LLaMA, GQA) and learned
//! (OPT) positions work alike, and a streamed model runs packed rows block by block as it runs
//! any rows. Attention runs over each segment's own keys ([`crate::model::segments`]), so sharing
//! a row costs nothing in attention. Each token attends to exactly the keys it attends to in lm-eval's own row (its
//! unit's context and, after it, its own continuation), at the same positions, so only float
//! summation order can change a loglikelihood.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::model::{Packing, Rows};

/// One request as lm-eval runs it: `input` is the model's row (context + continuation without its
/// last token, left-truncated to the model's length) and `target` the scored continuation tokens,
/// predicted by the last `target.len()` logits of that row (1 ≤ `target.len()` ≤ `input.len()`).
pub struct Request {
    pub input: Vec<i64>,
    pub target: Vec<i64>,
}

impl Request {
    /// Tokens through the one whose logits predict the first target: what requests can share.
    fn prefix(&self) -> &[i64] {
        &self.input[..self.input.len() + 1 - self.target.len()]
    }

    /// The rest of the row: the continuation's tokens whose logits predict the later targets.
    fn tail(&self) -> &[i64] {
        &self.input[self.input.len() + 1 - self.target.len()..]
    }
}

/// Tokens a zero-shot evaluation computed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TokenCounts {
    /// Token positions run through the model, padding included.
    pub computed: usize,
    /// Of those, padding.
    pub padding: usize,
    /// One row per request without padding (repro before shared contexts): the sum of the
    /// requests' input lengths.
    pub unshared: usize,
    /// One row per distinct input row without padding: lm-eval's HF backend at batch size 1,
    /// which runs identical rows (one-token continuations of one context) once.
    pub distinct_rows: usize,
}

impl TokenCounts {
    pub fn add(&mut self, other: TokenCounts) {
        self.computed += other.computed;
        self.padding += other.padding;
        self.unshared += other.unshared;
        self.distinct_rows += other.distinct_rows;
    }

    pub fn padding_fraction(&self) -> f64 {
        self.padding as f64 / self.computed.max(1) as f64
    }
}

/// A batch of packed rows and, per request in it, the flat indices (row · width + column) of the
/// hidden states whose logits score its targets, in target order; the rows keep exactly those,
/// request after request.
pub struct Batch {
    pub rows: Rows,
    pub scored: Vec<(usize, Vec<i64>)>,
}

/// Requests sharing one prefix: the prefix once, then each request's tail.
struct Unit {
    members: Vec<usize>,
    len: usize,
}

/// Row lengths tried, as multiples of the longest unit: longer rows leave less padding.
const ROW_LENGTHS: [f64; 5] = [1.0, 1.5, 2.0, 3.0, 4.0];

/// Packs `requests` into batches of rows. Requests with identical prefixes share one unit. Units
/// go either one per row (bucketing by length) or first-fit, longest first, into rows of a few
/// multiples of the longest unit's length, at most `batch_tokens` (one unit at least): whichever
/// computes the fewest tokens, padding included. Attention costs the same either way, since it
/// runs segment by segment ([`crate::model::segments`]), not over the row. Rows are batched
/// fullest first, as many as `batch_tokens` allows at the batch's width (its fullest row), at
/// least one. Requests without targets are left out (they score 0).
pub fn pack(requests: &[Request], batch_tokens: usize) -> (Vec<Batch>, TokenCounts) {
    let units = share_prefixes(requests);
    let longest = units.iter().map(|u| u.len).max().unwrap_or(1);
    let mut by_length: Vec<usize> = (0..units.len()).collect();
    by_length.sort_by_key(|&u| std::cmp::Reverse(units[u].len));
    let computed = |batches: &[Vec<(usize, Vec<usize>)>]| -> usize { batches.iter().map(|b| b.len() * b[0].0).sum() };
    let capacities = ROW_LENGTHS.map(|m| ((m * longest as f64).ceil() as usize).min(batch_tokens.max(longest)));
    let batches = std::iter::once(0)
        .chain(capacities)
        .map(|capacity| batch_rows(fill_rows(&units, &by_length, capacity), batch_tokens))
        .min_by_key(|b| computed(b))
        .expect("at least one way to fill rows");
    let distinct: HashSet<&[i64]> = requests.iter().map(|r| r.input.as_slice()).collect();
    let mut counts = TokenCounts {
        unshared: requests.iter().map(|r| r.input.len()).sum(),
        distinct_rows: distinct.iter().map(|r| r.len()).sum(),
        ..TokenCounts::default()
    };
    let batches = batches
        .iter()
        .map(|chunk| {
            let width = chunk[0].0;
            counts.computed += chunk.len() * width;
            counts.padding += chunk.iter().map(|(fill, _)| width - fill).sum::<usize>();
            let row_units: Vec<Vec<&Unit>> = chunk
                .iter()
                .map(|(_, members)| members.iter().map(|&u| &units[u]).collect())
                .collect();
            layout(requests, &row_units, width)
        })
        .collect();
    (batches, counts)
}

/// One unit per distinct prefix, in order of first appearance.
fn share_prefixes(requests: &[Request]) -> Vec<Unit> {
    let mut units: Vec<Unit> = Vec::new();
    let mut by_prefix: HashMap<&[i64], usize> = HashMap::new();
    for (i, r) in requests.iter().enumerate().filter(|(_, r)| !r.target.is_empty()) {
        let u = *by_prefix.entry(r.prefix()).or_insert_with(|| {
            units.push(Unit {
                members: Vec::new(),
                len: r.prefix().len(),
            });
            units.len() - 1
        });
        units[u].members.push(i);
        units[u].len += r.tail().len();
    }
    units
}

/// First-fit decreasing: each unit (`by_length`, longest first) goes into the first row with room
/// for it (capacity 0: one unit per row). Rows as (fill, units), fullest first.
fn fill_rows(units: &[Unit], by_length: &[usize], capacity: usize) -> Vec<(usize, Vec<usize>)> {
    let mut rows: Vec<(usize, Vec<usize>)> = Vec::new();
    for &u in by_length {
        let room = match capacity {
            0 => None,
            _ => rows.iter_mut().find(|(fill, _)| fill + units[u].len <= capacity),
        };
        match room {
            Some((fill, members)) => {
                *fill += units[u].len;
                members.push(u);
            }
            None => rows.push((units[u].len, vec![u])),
        }
    }
    rows.sort_by_key(|(fill, _)| std::cmp::Reverse(*fill));
    rows
}

/// Consecutive rows (fullest first) in batches of at most `batch_tokens` at the first row's width,
/// at least one row each.
fn batch_rows(rows: Vec<(usize, Vec<usize>)>, batch_tokens: usize) -> Vec<Vec<(usize, Vec<usize>)>> {
    let mut batches: Vec<Vec<(usize, Vec<usize>)>> = Vec::new();
    for row in rows {
        match batches.last_mut() {
            Some(batch) if (batch.len() + 1) * batch[0].0 <= batch_tokens => batch.push(row),
            _ => batches.push(vec![row]),
        }
    }
    batches
}

/// Lays out rows of units, padded to `width`: per token its id, its position in its own sequence,
/// its unit in the row (0 for padding, which so sees only padding and stays finite) and its branch
/// (0 for the shared prefix, k for the k-th request's tail).
fn layout(requests: &[Request], rows: &[Vec<&Unit>], width: usize) -> Batch {
    let n = rows.len() * width;
    let (mut ids, mut positions, mut unit_of, mut branch_of) =
        (vec![0i64; n], vec![0i64; n], vec![0i64; n], vec![0i64; n]);
    let mut scored: Vec<(usize, Vec<i64>)> = Vec::new();
    for (r, units) in rows.iter().enumerate() {
        let mut at = r * width;
        let mut place = |tokens: &[i64], first_position: usize, unit: usize, branch: usize| {
            for (k, &t) in tokens.iter().enumerate() {
                ids[at + k] = t;
                positions[at + k] = (first_position + k) as i64;
                unit_of[at + k] = unit as i64;
                branch_of[at + k] = branch as i64;
            }
            at += tokens.len();
            at
        };
        for (k, unit) in units.iter().enumerate() {
            let prefix = requests[unit.members[0]].prefix();
            let prefix_last = place(prefix, 0, k + 1, 0) as i64 - 1;
            for (b, &m) in unit.members.iter().enumerate() {
                let tail = requests[m].tail();
                let end = place(tail, prefix.len(), k + 1, b + 1) as i64;
                let start = end - tail.len() as i64;
                scored.push((m, std::iter::once(prefix_last).chain(start..end).collect()));
            }
        }
    }
    let grid = |v: &[i64]| Tensor::from_slice(v).view([rows.len() as i64, width as i64]);
    let keep: Vec<i64> = scored.iter().flat_map(|(_, at)| at.iter().copied()).collect();
    Batch {
        rows: Rows {
            ids: grid(&ids),
            packing: Some(Packing {
                positions: grid(&positions),
                unit: grid(&unit_of),
                branch: grid(&branch_of),
            }),
            keep: Some(Tensor::from_slice(&keep)),
        },
        scored,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(input: &[i64], target: &[i64]) -> Request {
        Request {
            input: input.to_vec(),
            target: target.to_vec(),
        }
    }

    /// Two choices after one context share it; a third request with another context is its own
    /// unit in the same row; positions restart after the context; each continuation sees the
    /// context and itself only, and no unit sees another.
    #[test]
    fn shared_context_is_laid_out_once_with_its_own_positions_and_mask() {
        let requests = [
            request(&[1, 10, 11, 20, 21], &[20, 21, 22]),
            request(&[1, 10, 11, 30], &[30, 31]),
            request(&[1, 40], &[41]),
        ];
        let (batches, counts) = pack(&requests, 100);
        assert_eq!(batches.len(), 1);
        let b = &batches[0];
        assert_eq!(b.rows.ids.size(), [1, 8]);
        let ids = Vec::<i64>::try_from(b.rows.ids.flatten(0, -1)).unwrap();
        assert_eq!(ids, [1, 10, 11, 20, 21, 30, 1, 40]);
        let p = b.rows.packing.as_ref().unwrap();
        let pos = Vec::<i64>::try_from(p.positions.flatten(0, -1)).unwrap();
        assert_eq!(pos, [0, 1, 2, 3, 4, 3, 0, 1]);
        let visible = p.visible(tch::Device::Cpu);
        let vis = |q: i64, k: i64| visible.int64_value(&[0, q, k]) == 1;
        assert!(
            vis(5, 2) && vis(5, 5) && !vis(5, 3) && !vis(5, 4),
            "30 sees the context, not 20 21"
        );
        assert!(vis(4, 3) && vis(4, 0) && !vis(3, 4), "causal within a branch");
        assert!(vis(7, 6) && !vis(7, 5) && !vis(6, 2), "units do not see each other");
        let scored: HashMap<usize, Vec<i64>> = b.scored.iter().cloned().collect();
        assert_eq!(scored[&0], [2, 3, 4]);
        assert_eq!(scored[&1], [2, 5]);
        assert_eq!(scored[&2], [7]);
        assert_eq!(
            counts,
            TokenCounts {
                computed: 8,
                padding: 0,
                unshared: 11,
                distinct_rows: 11
            }
        );
    }

    fn one_token_requests(lengths: &[usize]) -> Vec<Request> {
        lengths
            .iter()
            .enumerate()
            .map(|(i, &len)| request(&vec![i as i64 + 1; len], &[7]))
            .collect()
    }

    /// Units of different documents fill rows first-fit, longest first; batches hold
    /// `batch_tokens / row length` rows.
    #[test]
    fn units_fill_rows_first_fit_and_batches_by_tokens() {
        let (batches, counts) = pack(&one_token_requests(&[4, 3, 2, 1, 1, 1]), 8);
        // Rows of 4: [4], [3, 1], [2, 1, 1]; two rows per batch.
        let shapes: Vec<Vec<i64>> = batches.iter().map(|b| b.rows.ids.size()).collect();
        assert_eq!(shapes, [vec![2, 4], vec![1, 4]]);
        assert_eq!((counts.computed, counts.padding), (12, 0));
        let (batches, counts) = pack(&one_token_requests(&[4, 3, 3]), 8);
        assert_eq!((counts.unshared, counts.distinct_rows), (10, 10));
        // Rows of 6, [3, 3] and [4], leave no padding; two of them would exceed 8 tokens.
        let shapes: Vec<Vec<i64>> = batches.iter().map(|b| b.rows.ids.size()).collect();
        assert_eq!(shapes, [vec![1, 6], vec![1, 4]]);
        assert_eq!((counts.computed, counts.padding), (10, 0));
    }

    /// Rows grow to whatever leaves the least padding, up to `batch_tokens` (or the longest unit).
    #[test]
    fn rows_leave_the_least_padding_within_the_batch_tokens() {
        let requests = one_token_requests(&[3, 3, 2]);
        let widths = |batch_tokens| {
            let (batches, counts) = pack(&requests, batch_tokens);
            let widths: Vec<i64> = batches.iter().map(|b| b.rows.ids.size()[1]).collect();
            (widths, counts.computed, counts.padding)
        };
        // One row per unit would pad the 2 to 3; rows of 5 hold [3, 2] and [3], a batch each.
        assert_eq!(widths(9), (vec![5, 3], 8, 0));
        // With room for both in one batch, one row of 8 holds all three.
        assert_eq!(widths(100), (vec![8], 8, 0));
        // Rows no longer than the batch: one unit per row, one row per batch.
        assert_eq!(widths(4), (vec![3, 3, 2], 8, 0));
        let (batches, _) = pack(&one_token_requests(&[8, 2, 2, 2, 2]), 4);
        assert!(batches.iter().all(|b| b.rows.ids.size()[1] <= 8));
        assert_eq!(batches[0].rows.ids.size(), [1, 8]);
    }
}
