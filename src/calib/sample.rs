//! Calibration window samplers of the official Wanda / SparseGPT code
//! (`lib/data.py` of locuslab/wanda), replayed with [`PyRandom`] so that the
//! same seed selects the same documents and offsets as the Python reference.
//!
//! Both samplers are generic over how text becomes token ids, so they do not
//! depend on a tokenizer type and can be tested with synthetic documents.

use std::collections::hash_map::{Entry, HashMap};

use anyhow::{bail, ensure, Context, Result};

use super::pyrandom::PyRandom;

/// A drawn document, remembered so a re-draw neither re-tokenizes it nor
/// perturbs the random stream (Python re-tokenizes, which draws nothing).
enum Doc {
    /// More than `seqlen` tokens: a window can be cut from it.
    Usable(Vec<i64>),
    /// At most `seqlen` tokens: Python draws another document.
    TooShort,
}

/// `get_c4`'s training sampler: `nsamples` windows of `seqlen` tokens.
///
/// Replicates, draw for draw,
/// ```text
/// random.seed(seed)
/// for _ in range(nsamples):
///     while True:
///         i = random.randint(0, len(traindata) - 1)
///         trainenc = tokenizer(traindata[i]['text'], return_tensors='pt')
///         if trainenc.input_ids.shape[1] > seqlen: break
///     i = random.randint(0, trainenc.input_ids.shape[1] - seqlen - 1)
///     inp = trainenc.input_ids[:, i:i + seqlen]
/// ```
/// `encode(doc_index)` must return that document's token ids exactly as the
/// tokenizer produces them (including the BOS token it adds). Each document is
/// encoded at most once. Where Python would loop forever because no document
/// is longer than `seqlen`, this returns an error once every document has
/// been tried.
pub fn c4_windows(
    n_docs: usize,
    mut encode: impl FnMut(usize) -> Result<Vec<i64>>,
    nsamples: usize,
    seqlen: usize,
    seed: u64,
) -> Result<Vec<Vec<i64>>> {
    ensure!(seqlen > 0, "calibration seqlen must be positive");
    ensure!(n_docs > 0, "the calibration corpus has no documents");
    let mut rng = PyRandom::new(seed);
    let mut docs: HashMap<usize, Doc> = HashMap::new();
    let mut n_too_short = 0;
    let mut longest_too_short = 0;
    let mut windows = Vec::with_capacity(nsamples);
    for _ in 0..nsamples {
        let ids = loop {
            // random.randint(0, n_docs - 1)
            let i = rng.randbelow(n_docs as u64) as usize;
            let doc = match docs.entry(i) {
                Entry::Occupied(entry) => entry.into_mut(),
                Entry::Vacant(entry) => {
                    let ids = encode(i).with_context(|| format!("encoding calibration document {i}"))?;
                    entry.insert(if ids.len() > seqlen {
                        Doc::Usable(ids)
                    } else {
                        n_too_short += 1;
                        longest_too_short = longest_too_short.max(ids.len());
                        Doc::TooShort
                    })
                }
            };
            match doc {
                Doc::Usable(ids) => break ids,
                Doc::TooShort if n_too_short == n_docs => bail!(
                    "no calibration document is longer than seqlen = {seqlen} tokens \
                     (all {n_docs} documents tried, the longest has {longest_too_short} \
                     tokens); use a smaller --seqlen"
                ),
                Doc::TooShort => {}
            }
        };
        // random.randint(0, len(ids) - seqlen - 1)
        let start = rng.randbelow((ids.len() - seqlen) as u64) as usize;
        windows.push(ids[start..start + seqlen].to_vec());
    }
    Ok(windows)
}

/// `get_wikitext2`'s training sampler: `nsamples` windows of `seqlen` tokens
/// cut from one tokenized text (the whole training split joined together).
///
/// Replicates `random.seed(seed)` and, per sample,
/// `i = random.randint(0, len(ids) - seqlen - 1); inp = ids[i:i + seqlen]`.
pub fn text_windows(ids: &[i64], nsamples: usize, seqlen: usize, seed: u64) -> Result<Vec<Vec<i64>>> {
    ensure!(seqlen > 0, "calibration seqlen must be positive");
    ensure!(
        ids.len() > seqlen,
        "the calibration text has {} tokens, but needs more than seqlen = {seqlen}; \
         use a smaller --seqlen",
        ids.len()
    );
    let mut rng = PyRandom::new(seed);
    let n_starts = (ids.len() - seqlen) as u64;
    Ok((0..nsamples)
        .map(|_| {
            let start = rng.randbelow(n_starts) as usize;
            ids[start..start + seqlen].to_vec()
        })
        .collect())
}

#[cfg(test)]
mod tests {
    //! Expected draws come from the same algorithms run in CPython 3.11.7:
    //! ```text
    //! python3 -c '
    //! import random
    //! def doc(i): return [i * 1000 + p for p in range((i * 37) % 900)]
    //! def c4(n_docs, nsamples, seqlen, seed):
    //!     random.seed(seed); out = []
    //!     for _ in range(nsamples):
    //!         while True:
    //!             i = random.randint(0, n_docs - 1)
    //!             ids = doc(i)
    //!             if len(ids) > seqlen: break
    //!         s = random.randint(0, len(ids) - seqlen - 1)
    //!         out.append((i, s))
    //!     return out
    //! def text(n, nsamples, seqlen, seed):
    //!     random.seed(seed)
    //!     return [random.randint(0, n - seqlen - 1) for _ in range(nsamples)]
    //! for seed in [0, 1]:
    //!     print(seed, c4(50, 8, 500, seed), text(5000, 8, 128, seed))'
    //! ```
    use std::collections::HashMap;

    use anyhow::anyhow;

    use super::{c4_windows, text_windows};

    /// Synthetic document `i`: `(i * 37) % 900` tokens, token `p` = `i * 1000 + p`.
    fn doc(i: usize) -> Vec<i64> {
        (0..(i * 37) % 900).map(|p| (i * 1000 + p) as i64).collect()
    }

    /// `(seed, [(doc index, window start)])` for 50 docs, 8 samples, seqlen 500.
    const C4_EXPECTED: [(u64, [(usize, usize); 8]); 2] = [
        (
            0,
            [
                (24, 215),
                (16, 65),
                (19, 122),
                (22, 298),
                (18, 35),
                (48, 48),
                (39, 16),
                (45, 75),
            ],
        ),
        (
            1,
            [
                (48, 32),
                (16, 15),
                (48, 230),
                (41, 48),
                (24, 221),
                (38, 0),
                (44, 114),
                (17, 58),
            ],
        ),
    ];

    /// `(seed, window starts)` for a 5000-token text, 8 samples, seqlen 128.
    const TEXT_EXPECTED: [(u64, [usize; 8]); 2] = [
        (0, [3155, 3445, 331, 2121, 4188, 3980, 3317, 2484]),
        (1, [1100, 4662, 516, 2089, 965, 4058, 3682, 3868]),
    ];

    #[test]
    fn c4_windows_match_cpython_and_encode_each_doc_once() {
        for (seed, expected) in C4_EXPECTED {
            let mut calls: HashMap<usize, usize> = HashMap::new();
            let windows = c4_windows(
                50,
                |i| {
                    *calls.entry(i).or_default() += 1;
                    Ok(doc(i))
                },
                8,
                500,
                seed,
            )
            .unwrap();
            let want: Vec<Vec<i64>> = expected.iter().map(|&(d, s)| doc(d)[s..s + 500].to_vec()).collect();
            assert_eq!(windows, want, "seed {seed}");
            assert!(calls.values().all(|&n| n == 1), "seed {seed}: {calls:?}");
        }
    }

    #[test]
    fn c4_windows_errors_when_no_doc_is_long_enough() {
        let mut calls: HashMap<usize, usize> = HashMap::new();
        let err = c4_windows(
            10,
            |i| {
                *calls.entry(i).or_default() += 1;
                Ok(doc(i))
            },
            4,
            900,
            0,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("no calibration document is longer than seqlen = 900"),
            "{err}"
        );
        assert!(err.contains("--seqlen"), "{err}");
        // Every document was tried, each encoded once; the longest is doc 9 (333 tokens).
        assert_eq!(calls.len(), 10);
        assert!(calls.values().all(|&n| n == 1));
        assert!(err.contains("the longest has 333 tokens"), "{err}");
    }

    #[test]
    fn c4_windows_rejects_bad_inputs_and_propagates_encode_errors() {
        assert!(c4_windows(0, |i| Ok(doc(i)), 4, 16, 0).is_err());
        assert!(c4_windows(50, |i| Ok(doc(i)), 4, 0, 0).is_err());
        let err = c4_windows(50, |_| Err(anyhow!("tokenizer broke")), 4, 16, 0).unwrap_err();
        assert!(format!("{err:#}").contains("tokenizer broke"), "{err:#}");
    }

    #[test]
    fn text_windows_match_cpython() {
        let ids: Vec<i64> = (0..5000).map(|p| p * 3 + 1).collect();
        for (seed, starts) in TEXT_EXPECTED {
            let windows = text_windows(&ids, 8, 128, seed).unwrap();
            let want: Vec<Vec<i64>> = starts.iter().map(|&s| ids[s..s + 128].to_vec()).collect();
            assert_eq!(windows, want, "seed {seed}");
        }
    }

    #[test]
    fn text_windows_need_more_than_seqlen_tokens() {
        let ids: Vec<i64> = (0..129).collect();
        let err = text_windows(&ids[..128], 2, 128, 0).unwrap_err().to_string();
        assert!(err.contains("128 tokens") && err.contains("--seqlen"), "{err}");
        assert!(text_windows(&ids, 2, 0, 0).is_err());
        // One token more than seqlen leaves a single possible window.
        assert_eq!(text_windows(&ids, 2, 128, 0).unwrap(), vec![ids[..128].to_vec(); 2]);
    }
}
