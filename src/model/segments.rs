//! Attention over packed rows segment by segment instead of over the whole row.
//!
//! In a packed row (see [`super::Packing`]) a token sees only its own segment and that segment's
//! ancestors, yet dense attention under a mask scores every key of the row and throws most scores
//! away. On HellaSwag a 500-token row holds two documents, each an ~85-token context and four
//! ~37-token endings, and a token needs about 100 of the 500 keys. Here each segment attends over
//! its own keys only: a root (a context, or the beginning several contexts share) over itself,
//! causally; any other segment over its ancestors, then itself. Segments of similar lengths are
//! padded to one shape and share a batched call. Every query sees exactly the keys the row's mask shows it, so only float
//! summation order differs from dense attention.

use std::collections::BTreeMap;

use tch::{Device, Kind, Tensor};

/// Segments padded to one shape (S segments, Q queries, K keys) for one batched attention call.
pub struct SegmentGroup {
    /// (S·Q) flat token indices (row · width + column) of each segment's queries; padding repeats
    /// the segment's first token.
    queries: Tensor,
    /// (S·K) flat token indices of the keys each segment attends over, padded the same way.
    keys: Tensor,
    shape: [i64; 3],
    /// (S, Q, K) whether query i may attend to key j; a padded query sees its segment's first key,
    /// so its (discarded) output stays finite.
    visible: Tensor,
    /// `visible` as an additive mask (S, 1, Q, K) in the model's dtype; `None` when it is plain
    /// causal on the real queries (a prefix over itself), which SDPA computes without a mask and
    /// skipping the keys above the diagonal.
    mask: Option<Tensor>,
    kind: Kind,
    /// Where the real queries are in the group's (S·Q) output, and their flat token indices.
    real: Tensor,
    real_tokens: Tensor,
}

/// A padded group of segments may cost at most this much more than its segments alone.
const MAX_PADDING_WASTE: f64 = 1.2;

/// One segment: its query tokens, and the keys before them that it also sees (its ancestors').
struct Segment {
    queries: Vec<i64>,
    prefix: Vec<i64>,
}

impl Segment {
    fn keys(&self) -> usize {
        self.prefix.len() + self.queries.len()
    }
}

/// The attention groups of packed rows described by each token's `segment` and its segment's
/// `parent` in row-major order (rows of `width`), as [`super::Packing`] describes them; segment 0
/// is padding.
pub fn groups(segment: &[i64], parent: &[i64], width: usize, kind: Kind, device: Device) -> Vec<SegmentGroup> {
    let mut segments: Vec<Segment> = Vec::new();
    for row in 0..segment.len() / width.max(1) {
        let mut tokens: BTreeMap<i64, (i64, Vec<i64>)> = BTreeMap::new();
        for t in row * width..(row + 1) * width {
            if segment[t] != 0 {
                tokens
                    .entry(segment[t])
                    .or_insert((parent[t], Vec::new()))
                    .1
                    .push(t as i64);
            }
        }
        for (parent, queries) in tokens.values() {
            let mut ancestors = Vec::new();
            let mut up = *parent;
            while let Some((next, tokens_of)) = tokens.get(&up) {
                ancestors.push(tokens_of);
                up = *next;
            }
            segments.push(Segment {
                queries: queries.clone(),
                prefix: ancestors.iter().rev().flat_map(|t| t.iter().copied()).collect(),
            });
        }
    }
    // Roots (causal, no mask) and the others apart; longest keys first, so a group's first
    // segment sets its key length and later ones pad up to it.
    segments.sort_by_key(|s| (!s.prefix.is_empty(), std::cmp::Reverse(s.keys())));
    let mut groups = Vec::new();
    let mut start = 0;
    while start < segments.len() {
        let causal = segments[start].prefix.is_empty();
        let keys = segments[start].keys();
        let (mut end, mut queries) = (start + 1, segments[start].queries.len());
        let mut alone = (queries * keys) as f64;
        while let Some(next) = segments.get(end).filter(|s| s.prefix.is_empty() == causal) {
            let grown_alone = alone + (next.queries.len() * next.keys()) as f64;
            let grown_queries = queries.max(next.queries.len());
            if ((end + 1 - start) * grown_queries * keys) as f64 > MAX_PADDING_WASTE * grown_alone {
                break;
            }
            (alone, queries) = (grown_alone, grown_queries);
            end += 1;
        }
        groups.push(SegmentGroup::new(
            &segments[start..end],
            queries,
            keys,
            causal,
            kind,
            device,
        ));
        start = end;
    }
    groups
}

impl SegmentGroup {
    fn new(segments: &[Segment], q_len: usize, k_len: usize, causal: bool, kind: Kind, device: Device) -> Self {
        let s = segments.len();
        let mut queries = Vec::with_capacity(s * q_len);
        let mut keys = Vec::with_capacity(s * k_len);
        let mut visible = vec![false; s * q_len * k_len];
        let (mut real, mut real_tokens) = (Vec::new(), Vec::new());
        for (n, seg) in segments.iter().enumerate() {
            let first = seg.prefix.first().unwrap_or(&seg.queries[0]);
            let own: Vec<i64> = seg.prefix.iter().chain(&seg.queries).copied().collect();
            keys.extend(own.iter().copied().chain(std::iter::repeat(*first)).take(k_len));
            queries.extend(
                seg.queries
                    .iter()
                    .copied()
                    .chain(std::iter::repeat(seg.queries[0]))
                    .take(q_len),
            );
            for i in 0..q_len {
                let row = &mut visible[(n * q_len + i) * k_len..(n * q_len + i + 1) * k_len];
                if i < seg.queries.len() {
                    row[..seg.prefix.len() + i + 1].fill(true);
                    real.push((n * q_len + i) as i64);
                    real_tokens.push(seg.queries[i]);
                } else {
                    row[0] = true;
                }
            }
        }
        let shape = [s as i64, q_len as i64, k_len as i64];
        let on = |v: &[i64]| Tensor::from_slice(v).to_device(device);
        let visible = Tensor::from_slice(&visible).view(shape).to_device(device);
        let mask = (!causal).then(|| super::additive_mask(&visible.unsqueeze(1), kind));
        SegmentGroup {
            queries: on(&queries),
            keys: on(&keys),
            shape,
            visible,
            mask,
            kind,
            real: on(&real),
            real_tokens: on(&real_tokens),
        }
    }

    /// Keeps only keys fewer than `window` positions before their query (Mistral's sliding
    /// window); `positions` (B, L) are the tokens' positions in their own sequences.
    pub fn limit_span(&mut self, positions: &Tensor, window: i64) {
        let [s, q, k] = self.shape;
        let positions = positions.flatten(0, -1);
        let query_pos = positions.index_select(0, &self.queries).view([s, q, 1]);
        let key_pos = positions.index_select(0, &self.keys).view([s, 1, k]);
        let visible = self.visible.logical_and(&(query_pos - key_pos).lt(window));
        // A padded query may have lost its only key; it sees its segment's first key again.
        let first_key = Tensor::arange(k, (Kind::Int64, visible.device())).eq(0).view([1, 1, k]);
        let blind = visible.any_dim(2, true).logical_not();
        self.visible = visible.logical_or(&blind.logical_and(&first_key));
        self.mask = Some(super::additive_mask(&self.visible.unsqueeze(1), self.kind));
    }
}

/// Attention (B, heads, L, head_dim) of packed rows, one batched call per group; tokens no
/// segment holds (padding) get zeros.
pub fn attend(groups: &[SegmentGroup], q: &Tensor, k: &Tensor, v: &Tensor) -> Tensor {
    let (b, heads, l, d) = q.size4().expect("queries are (B, heads, L, head_dim)");
    let flat = |t: &Tensor| t.transpose(1, 2).reshape([b * l, t.size()[1], d]);
    let (q, k, v) = (flat(q), flat(k), flat(v));
    let mut out = Tensor::zeros([b * l, heads, d], (q.kind(), q.device()));
    for g in groups {
        let [s, nq, nk] = g.shape;
        let gather =
            |t: &Tensor, index: &Tensor, n: i64| t.index_select(0, index).view([s, n, t.size()[1], d]).transpose(1, 2);
        let y = Tensor::scaled_dot_product_attention(
            &gather(&q, &g.queries, nq),
            &gather(&k, &g.keys, nk),
            &gather(&v, &g.keys, nk),
            g.mask.as_ref(),
            0.0,
            g.mask.is_none(),
            None,
            false,
        );
        let y = y.transpose(1, 2).reshape([s * nq, heads, d]).index_select(0, &g.real);
        let _ = out.index_copy_(0, &g.real_tokens, &y);
    }
    out.view([b, l, heads, d]).transpose(1, 2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{additive_mask, Packing};

    /// Segment attention equals dense attention under the rows' mask on every real token
    /// (Mistral's sliding window included), and gives padding zeros.
    #[test]
    fn segments_attend_as_the_dense_mask_does() {
        let _g = tch::no_grad_guard();
        tch::manual_seed(0);
        // Row 0: a root of 3 tokens with children of 2 and 3, then 2 of padding. Row 1: a root of
        // 2, its child of 2, and that child's children of 1 and 2, then 3 of padding.
        let segment = [[1, 1, 1, 2, 2, 3, 3, 3, 0, 0], [1, 1, 2, 2, 3, 4, 4, 0, 0, 0]];
        let parent = [[0, 0, 0, 1, 1, 1, 1, 1, 0, 0], [0, 0, 1, 1, 2, 2, 2, 0, 0, 0]];
        let positions = [[0, 1, 2, 3, 4, 3, 4, 5, 0, 0], [0, 1, 2, 3, 4, 4, 5, 0, 0, 0]];
        let grid = |v: [[i64; 10]; 2]| Tensor::from_slice(&v.concat()).view([2, 10]);
        let packing = Packing {
            positions: grid(positions),
            segment: grid(segment),
            parent: grid(parent),
        };
        let (b, heads, l, d) = (2, 3, 10, 4);
        let q = Tensor::randn([b, heads, l, d], (Kind::Float, Device::Cpu));
        let k = Tensor::randn([b, heads, l, d], (Kind::Float, Device::Cpu));
        let v = Tensor::randn([b, heads, l, d], (Kind::Float, Device::Cpu));
        let real = grid(segment).ne(0).view([b, 1, l, 1]);
        for window in [None, Some(2)] {
            let mut visible = packing.visible(Device::Cpu);
            let mut groups = packing.segments(Kind::Float, Device::Cpu);
            if let Some(w) = window {
                let pos = &packing.positions;
                visible = visible.logical_and(&(pos.unsqueeze(2) - pos.unsqueeze(1)).lt(w));
                groups.iter_mut().for_each(|g| g.limit_span(pos, w));
            }
            let mask = additive_mask(&visible.unsqueeze(1), Kind::Float);
            let dense = Tensor::scaled_dot_product_attention(&q, &k, &v, Some(&mask), 0.0, false, None, false);
            let got = attend(&groups, &q, &k, &v);
            let diff = (&got - dense.masked_fill(&real.logical_not(), 0.0))
                .abs()
                .max()
                .double_value(&[]);
            assert!(diff < 1e-6, "window {window:?}: max difference {diff}");
            assert_eq!(
                got.masked_select(&real.logical_not())
                    .abs()
                    .sum(Kind::Float)
                    .double_value(&[]),
                0.0
            );
        }
    }
}
