//! Packed rows for loglikelihood requests: each shared context is computed once, and requests of
//! different documents fill rows instead of padding.
//!
//! Why packed rows rather than a KV cache: a unit (one context followed by the continuations of
//! every request that shares it) and the units sharing a row only need each token's position in
//! its own sequence and which tokens it sees. Both are inputs of an ordinary forward pass
//! ([`crate::model::Packing`]), so the blocks need no cache, rotary (LLaMA, GQA) and learned
//! (OPT) positions work alike, and a streamed model runs packed rows block by block as it runs
//! any rows. Attention runs over each segment's own keys ([`crate::model::segments`]), so sharing
//! a row costs nothing in attention. Each token attends to exactly the keys it attends to in
//! lm-eval's own row (its unit's context and, after it, its own continuation), at the same
//! positions, so only float summation order can change a loglikelihood.

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

/// Units whose prefixes begin alike, laid out as one tree that holds their common beginnings once
/// (a task's fixed opening, a passage asked about twice, an activity that several HellaSwag
/// contexts describe). Its units in prefix order, and its tokens.
struct Tree {
    units: Vec<usize>,
    len: usize,
}

/// Fewest tokens a unit must share with the tree before it to join it: sharing BOS alone saves
/// one token, yet costs a segment (attended under a mask) and ties the unit to its neighbours' row.
const MIN_SHARED: usize = 2;

/// Row lengths tried, as multiples of the longest unit: longer rows leave less padding.
const ROW_LENGTHS: [f64; 5] = [1.0, 1.5, 2.0, 3.0, 4.0];

/// Packs `requests` into batches of rows. Requests with identical prefixes share one unit, and
/// units whose prefixes begin alike share those beginnings in a tree as long as a row allows.
/// Trees go either one per row (bucketing by length; trees no longer than the longest unit) or
/// first-fit, longest first, into rows of a few multiples of the longest unit's length, at most
/// `batch_tokens` (one unit at least): whichever computes the fewest tokens, padding included.
/// Attention costs the same either way, since it runs segment by segment
/// ([`crate::model::segments`]), not over the row. Rows are batched fullest first, as many as
/// `batch_tokens` allows at the batch's width (its fullest row), at least one. Requests without
/// targets are left out (they score 0).
pub fn pack(requests: &[Request], batch_tokens: usize) -> (Vec<Batch>, TokenCounts) {
    let units = share_prefixes(requests);
    let prefix = |u: usize| requests[units[u].members[0]].prefix();
    let mut in_prefix_order: Vec<usize> = (0..units.len()).collect();
    in_prefix_order.sort_by(|&a, &b| prefix(a).cmp(prefix(b)));
    let longest = units.iter().map(|u| u.len).max().unwrap_or(1);
    let computed = |batches: &[Vec<(usize, Vec<usize>)>]| -> usize { batches.iter().map(|b| b.len() * b[0].0).sum() };
    let capacities = ROW_LENGTHS.map(|m| ((m * longest as f64).ceil() as usize).min(batch_tokens.max(longest)));
    let (trees, batches) = std::iter::once(0)
        .chain(capacities)
        .map(|capacity| {
            let trees = grow_trees(requests, &units, &in_prefix_order, capacity.max(longest));
            let batches = batch_rows(fill_rows(&trees, capacity), batch_tokens);
            (trees, batches)
        })
        .min_by_key(|(_, batches)| computed(batches))
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
            let row_trees: Vec<Vec<Vec<&Unit>>> = chunk
                .iter()
                .map(|(_, members)| {
                    members
                        .iter()
                        .map(|&t| trees[t].units.iter().map(|&u| &units[u]).collect())
                        .collect()
                })
                .collect();
            layout(requests, &row_trees, width)
        })
        .collect();
    (batches, counts)
}

/// Consecutive units (in prefix order) whose prefixes begin alike form trees of at most `capacity`
/// tokens. In prefix order a unit's longest common beginning with any earlier one is the one with
/// its predecessor, so that is what joining a tree saves.
fn grow_trees(requests: &[Request], units: &[Unit], in_prefix_order: &[usize], capacity: usize) -> Vec<Tree> {
    let mut trees: Vec<Tree> = Vec::new();
    let mut previous: &[i64] = &[];
    for &u in in_prefix_order {
        let prefix = requests[units[u].members[0]].prefix();
        let shared = common_len(prefix, previous);
        match trees.last_mut() {
            Some(tree) if shared >= MIN_SHARED && tree.len + units[u].len - shared <= capacity => {
                tree.len += units[u].len - shared;
                tree.units.push(u);
            }
            _ => trees.push(Tree {
                units: vec![u],
                len: units[u].len,
            }),
        }
        previous = prefix;
    }
    trees
}

fn common_len(a: &[i64], b: &[i64]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
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

/// First-fit decreasing: each tree, longest first, goes into the first row with room for it
/// (capacity 0: one tree per row). Rows as (fill, trees), fullest first.
fn fill_rows(trees: &[Tree], capacity: usize) -> Vec<(usize, Vec<usize>)> {
    let mut by_length: Vec<usize> = (0..trees.len()).collect();
    by_length.sort_by_key(|&t| std::cmp::Reverse(trees[t].len));
    let mut rows: Vec<(usize, Vec<usize>)> = Vec::new();
    for t in by_length {
        let room = match capacity {
            0 => None,
            _ => rows.iter_mut().find(|(fill, _)| fill + trees[t].len <= capacity),
        };
        match room {
            Some((fill, members)) => {
                *fill += trees[t].len;
                members.push(t);
            }
            None => rows.push((trees[t].len, vec![t])),
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

/// Lays out rows of trees, padded to `width`: per token its id, its position in its own sequence,
/// its segment and that segment's parent (see [`Packing`]; padding is segment 0, which sees only
/// padding and so stays finite).
fn layout(requests: &[Request], rows: &[Vec<Vec<&Unit>>], width: usize) -> Batch {
    let n = rows.len() * width;
    let mut rows_out = Layout {
        requests,
        ids: vec![0; n],
        positions: vec![0; n],
        segment: vec![0; n],
        parent: vec![0; n],
        at: 0,
        next_segment: 0,
        scored: Vec::new(),
    };
    for (r, trees) in rows.iter().enumerate() {
        (rows_out.at, rows_out.next_segment) = (r * width, 1);
        for tree in trees {
            rows_out.place_units(tree, 0, 0);
        }
    }
    let grid = |v: &[i64]| Tensor::from_slice(v).view([rows.len() as i64, width as i64]);
    let keep: Vec<i64> = rows_out.scored.iter().flat_map(|(_, at)| at.iter().copied()).collect();
    Batch {
        rows: Rows {
            ids: grid(&rows_out.ids),
            packing: Some(Packing {
                positions: grid(&rows_out.positions),
                segment: grid(&rows_out.segment),
                parent: grid(&rows_out.parent),
            }),
            keep: Some(Tensor::from_slice(&keep)),
        },
        scored: rows_out.scored,
    }
}

/// The token layout being written, row by row.
struct Layout<'a> {
    requests: &'a [Request],
    ids: Vec<i64>,
    positions: Vec<i64>,
    segment: Vec<i64>,
    parent: Vec<i64>,
    /// Where the next token goes, and the next segment's number in this row.
    at: usize,
    next_segment: i64,
    scored: Vec<(usize, Vec<i64>)>,
}

impl Layout<'_> {
    /// Places `tokens` as a new segment under `parent`, the first at `first_position`; its number.
    fn place(&mut self, tokens: &[i64], first_position: usize, parent: i64) -> i64 {
        let segment = self.next_segment;
        self.next_segment += 1;
        for (k, &t) in tokens.iter().enumerate() {
            self.ids[self.at + k] = t;
            self.positions[self.at + k] = (first_position + k) as i64;
            self.segment[self.at + k] = segment;
            self.parent[self.at + k] = parent;
        }
        self.at += tokens.len();
        segment
    }

    /// Places the prefixes of `units` (in prefix order, agreeing on their first `depth` tokens)
    /// under segment `parent` as a trie: each run of tokens that several prefixes share once, then
    /// where a prefix ends its unit's tails, one segment each.
    fn place_units(&mut self, units: &[&Unit], depth: usize, parent: i64) {
        let prefix = |u: &Unit| self.requests[u.members[0]].prefix();
        let mut i = 0;
        while i < units.len() {
            let first = prefix(units[i]);
            let group_len = units[i..]
                .iter()
                .take_while(|u| prefix(u)[depth] == first[depth])
                .count();
            let group = &units[i..i + group_len];
            let end = group
                .iter()
                .map(|u| depth + common_len(&prefix(u)[depth..], &first[depth..]))
                .min()
                .expect("a group holds its first unit");
            let segment = self.place(&first[depth..end], depth, parent);
            // Prefixes are distinct and in order, so only the first can end here.
            let rest = if first.len() == end {
                let prefix_last = self.at as i64 - 1;
                for &m in &group[0].members {
                    let tail = self.requests[m].tail();
                    if !tail.is_empty() {
                        self.place(tail, end, segment);
                    }
                    let tail_end = self.at as i64;
                    let tail_start = tail_end - tail.len() as i64;
                    self.scored
                        .push((m, std::iter::once(prefix_last).chain(tail_start..tail_end).collect()));
                }
                &group[1..]
            } else {
                group
            };
            self.place_units(rest, end, segment);
            i += group_len;
        }
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

    /// Two choices after one context share it; a third request whose context begins with the same
    /// two tokens shares them in the same tree; positions continue each segment's parent; each
    /// continuation sees its context and itself only.
    #[test]
    fn shared_context_is_laid_out_once_with_its_own_positions_and_mask() {
        let requests = [
            request(&[1, 10, 11, 20, 21], &[20, 21, 22]),
            request(&[1, 10, 11, 30], &[30, 31]),
            request(&[1, 10, 40], &[41]),
        ];
        let (batches, counts) = pack(&requests, 100);
        assert_eq!(batches.len(), 1);
        let b = &batches[0];
        assert_eq!(b.rows.ids.size(), [1, 7]);
        let flat = |t: &Tensor| Vec::<i64>::try_from(t.flatten(0, -1)).unwrap();
        assert_eq!(flat(&b.rows.ids), [1, 10, 11, 20, 21, 30, 40]);
        let p = b.rows.packing.as_ref().unwrap();
        assert_eq!(flat(&p.positions), [0, 1, 2, 3, 4, 3, 2]);
        assert_eq!(flat(&p.segment), [1, 1, 2, 3, 3, 4, 5]);
        assert_eq!(flat(&p.parent), [0, 0, 1, 2, 2, 2, 1]);
        let visible = p.visible(tch::Device::Cpu);
        let vis = |q: i64, k: i64| visible.int64_value(&[0, q, k]) == 1;
        assert!(
            vis(5, 2) && vis(5, 1) && vis(5, 5) && !vis(5, 3) && !vis(5, 4),
            "30 sees the context, not 20 21"
        );
        assert!(vis(4, 3) && vis(4, 0) && !vis(3, 4), "causal within a segment");
        assert!(vis(6, 1) && !vis(6, 2) && !vis(6, 5), "40 sees the shared [1 10] only");
        let scored: HashMap<usize, Vec<i64>> = b.scored.iter().cloned().collect();
        assert_eq!(scored[&0], [2, 3, 4]);
        assert_eq!(scored[&1], [2, 5]);
        assert_eq!(scored[&2], [6]);
        assert_eq!(flat(b.rows.keep.as_ref().unwrap()), [2, 3, 4, 2, 5, 6]);
        assert_eq!(
            counts,
            TokenCounts {
                computed: 7,
                padding: 0,
                unshared: 12,
                distinct_rows: 12
            }
        );
    }

    /// Contexts that begin alike share their beginnings in a trie, nested as deep as they agree,
    /// and each scored position is the one lm-eval's row scores.
    #[test]
    fn contexts_that_begin_alike_share_a_trie() {
        let requests = [
            request(&[1, 5, 6, 7], &[7]),
            request(&[1, 5, 6, 8, 9], &[9]),
            request(&[1, 5, 2], &[3]),
            request(&[1, 5, 6], &[4, 4]),
        ];
        let (batches, counts) = pack(&requests, 100);
        let b = &batches[0];
        let flat = |t: &Tensor| Vec::<i64>::try_from(t.flatten(0, -1)).unwrap();
        // Prefixes in order: [1 5] (the last request's, its tail [6] after it), [1 5 2], then
        // [1 5 6 7] and [1 5 6 8 9], which share [6] below [1 5]. Tails are not shared.
        assert_eq!(flat(&b.rows.ids), [1, 5, 6, 2, 6, 7, 8, 9]);
        let p = b.rows.packing.as_ref().unwrap();
        assert_eq!(flat(&p.positions), [0, 1, 2, 2, 2, 3, 3, 4]);
        assert_eq!(flat(&p.segment), [1, 1, 2, 3, 4, 5, 6, 6]);
        assert_eq!(flat(&p.parent), [0, 0, 1, 1, 1, 4, 4, 4]);
        let scored: HashMap<usize, Vec<i64>> = b.scored.iter().cloned().collect();
        assert_eq!(scored[&0], [5]);
        assert_eq!(scored[&1], [7]);
        assert_eq!(scored[&2], [3]);
        assert_eq!(scored[&3], [1, 2]);
        assert_eq!((counts.computed, counts.padding), (8, 0));
        // Every token sees exactly its own sequence.
        let visible = p.visible(tch::Device::Cpu);
        let seen = |q: i64| {
            (0..8)
                .filter(|&k| visible.int64_value(&[0, q, k]) == 1)
                .collect::<Vec<i64>>()
        };
        assert_eq!(seen(7), [0, 1, 4, 6, 7]);
        assert_eq!(seen(5), [0, 1, 4, 5]);
        assert_eq!(seen(3), [0, 1, 3]);
        assert_eq!(seen(2), [0, 1, 2]);
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
