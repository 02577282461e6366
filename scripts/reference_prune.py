#!/usr/bin/env python3
"""Reference pruner (PyTorch + transformers) that behaves like the official Wanda code
(locuslab/wanda: main.py, lib/prune.py, lib/prune_opt.py, lib/data.py, lib/eval.py,
lib/layerwrapper.py, lib/sparsegpt.py, lib/ablate.py), adapted to transformers 5 and float32 on CPU.

It writes a golden JSON that the Rust port must reproduce (see tests/goldens/prune/README.md).
This is an independent re-implementation; comments mark every place where the official code has a
behaviour that is easy to get wrong.

Example:
  .venv/bin/python scripts/reference_prune.py --model ../shared/fixtures/models/llama-tiny \
      --method wanda --sparsity 0.5 --pattern unstructured --nsamples 16 --seqlen 128 --seed 0 \
      --calib ../shared/fixtures/datasets/c4-format-sample/en/c4-train.00000-of-01024.json.gz \
      --out /tmp/wanda.json --eval-windows 16
"""

import argparse
import gzip
import hashlib
import json
import math
import os
import random
import sys
import time

import numpy as np
import torch
import torch.nn as nn

DEFAULT_WIKITEXT = ("../shared/fixtures/datasets/Salesforce/wikitext/wikitext-2-raw-v1/"
                    "test-00000-of-00001.parquet")
METHODS = ["magnitude", "wanda", "sparsegpt",
           "ablate_mag_seq", "ablate_wanda_seq", "ablate_mag_iter", "ablate_wanda_iter"]
SCHEMA_VERSION = 1


# ----------------------------------------------------------------------------------------------
# small helpers
# ----------------------------------------------------------------------------------------------

def sha256_bytes(b):
    return hashlib.sha256(b).hexdigest()


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def f32(x):
    """A float32 scalar/tensor element as a Python float (exact value of the float32)."""
    return float(np.float32(x))


def dumps_compact(obj, indent=0):
    """JSON with dicts indented one key per line and lists of scalars (or of lists of scalars) on
    one line, to keep the goldens small but diffable."""
    pad = " " * indent
    if isinstance(obj, dict):
        if not obj:
            return "{}"
        items = [f'{pad} {json.dumps(k)}: {dumps_compact(v, indent + 1)}' for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(obj, list) and any(isinstance(v, dict) for v in obj):
        items = [f"{pad} {dumps_compact(v, indent + 1)}" for v in obj]
        return "[\n" + ",\n".join(items) + "\n" + pad + "]"
    return json.dumps(obj)


def linear_modules(block):
    """All nn.Linear modules of a decoder block, exact-type match, in named_children DFS order
    (the same order as the official find_layers)."""
    found = {}

    def walk(mod, prefix):
        if type(mod) is nn.Linear:
            found[prefix] = mod
            return
        for child_name, child in mod.named_children():
            walk(child, f"{prefix}.{child_name}" if prefix else child_name)

    walk(block, "")
    return found


def decoder_blocks(model):
    """(blocks, hub-name prefix, family). LLaMA: model.model.layers; OPT: model.model.decoder.layers."""
    inner = model.model
    if hasattr(inner, "decoder"):
        return inner.decoder.layers, "model.decoder.layers", "opt"
    return inner.layers, "model.layers", "llama"


def block_output(out):
    # transformers 5 decoder layers return a Tensor; transformers 4 returned a tuple.
    # The official code does layer(...)[0] which with a tuple picks the hidden states.
    return out[0] if isinstance(out, (tuple, list)) else out


# ----------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------

class Tok:
    def __init__(self, model_dir):
        from tokenizers import Tokenizer
        self.tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))

    def encode(self, text):
        # tokenizer.json (llama-2 legacy layout) prepends BOS like the slow LlamaTokenizer.
        return self.tok.encode(text).ids


def load_calib_docs(path):
    texts = []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line:
                texts.append(json.loads(line)["text"])
    return texts


def sample_c4_windows(docs, tok, nsamples, seed, seqlen):
    """lib/data.py get_c4: global Python `random`, seeded once; per sample draw documents with
    randint(0, len-1) until the tokenized length (with BOS) is strictly > seqlen, then
    start = randint(0, len - seqlen - 1); window = ids[start:start+seqlen]."""
    random.seed(seed)
    cache = {}
    windows, ids, draws = [], [], []
    for _ in range(nsamples):
        sample_draws = []
        while True:
            d = random.randint(0, len(docs) - 1)
            sample_draws.append(d)
            if d not in cache:
                cache[d] = tok.encode(docs[d])
            enc = cache[d]
            if len(enc) > seqlen:
                break
        s = random.randint(0, len(enc) - seqlen - 1)
        windows.append([d, s])
        ids.append(enc[s:s + seqlen])
        draws.append(sample_draws)
    return windows, torch.tensor(ids, dtype=torch.int64), draws


# ----------------------------------------------------------------------------------------------
# calibration capture (prepare_calibration_input, adapted to transformers 5)
# ----------------------------------------------------------------------------------------------

class _Stop(Exception):
    pass


def capture_block0_inputs(model, blocks, ids):
    """Run the model on each calibration window (batch 1, one at a time like the official code)
    and record what the first decoder block receives: hidden states and keyword arguments.
    transformers 5 passes to a LLaMA block: attention_mask (the causal mask built by
    create_causal_mask: with eager attention a float (1,1,L,L) additive mask, 0 / finfo.min),
    position_ids (1,L) = arange(L), and position_embeddings = (cos, sin) each (1,L,head_dim)
    from the model's rotary embedding; to an OPT block: attention_mask and position_ids
    (the learned positions are already added to the captured hidden states).
    All windows start at position 0 and have the same length, so the kwargs of the last window
    (the official code keeps the last ones) are valid for all of them."""
    n, L = ids.shape
    inps = torch.zeros((n, L, model.config.hidden_size), dtype=torch.float32)
    state = {"i": 0, "kwargs": None}
    first = blocks[0]

    class Catcher(nn.Module):
        def __init__(self, module):
            super().__init__()
            self.module = module
            # some transformers code reads attributes of the layer (e.g. attention_type)
            for attr in ("attention_type", "layer_idx"):
                if hasattr(module, attr):
                    setattr(self, attr, getattr(module, attr))

        def forward(self, hidden, *args, **kwargs):
            inps[state["i"]] = hidden[0]
            state["i"] += 1
            state["kwargs"] = kwargs
            raise _Stop

    blocks[0] = Catcher(first)
    try:
        for j in range(n):
            try:
                model(ids[j:j + 1], use_cache=False)
            except _Stop:
                pass
    finally:
        blocks[0] = first
    kw = {}
    for k, v in state["kwargs"].items():
        if k in ("cache", "past_key_values", "past_key_value", "use_cache", "cache_position"):
            continue
        kw[k] = v
    kw["use_cache"] = False
    return inps, kw


def describe_block_kwargs(kw):
    out = {}
    for k, v in kw.items():
        if isinstance(v, torch.Tensor):
            out[k] = {"shape": list(v.shape), "dtype": str(v.dtype).replace("torch.", "")}
        elif isinstance(v, (tuple, list)) and all(isinstance(t, torch.Tensor) for t in v):
            out[k] = [{"shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", "")} for t in v]
        else:
            out[k] = repr(v)
    return out


# ----------------------------------------------------------------------------------------------
# statistics accumulators
# ----------------------------------------------------------------------------------------------

def _as_cols_by_tokens(inp):
    """(batch, seq, cols) -> (cols, batch*seq); returns (matrix, batch). The `batch` (not the
    number of tokens) is what the official wrappers count as `tmp` samples."""
    if inp.dim() == 2:
        inp = inp.unsqueeze(0)
    b = inp.shape[0]
    if inp.dim() == 3:
        inp = inp.reshape(-1, inp.shape[-1])
    return inp.t(), b


class RowNormStats:
    """lib/layerwrapper.py WrappedGPT: running mean over samples of the per-sample squared L2
    norm of every input column, float32:
        scaler_row *= n/(n+b); n += b; scaler_row += ||x_c||_2^2 / n"""

    def __init__(self, layer):
        self.layer = layer
        self.columns = layer.weight.shape[1]
        self.scaler_row = torch.zeros(self.columns, dtype=torch.float32)
        self.nsamples = 0

    def add_batch(self, inp):
        x, b = _as_cols_by_tokens(inp)
        self.scaler_row *= self.nsamples / (self.nsamples + b)
        self.nsamples += b
        x = x.type(torch.float32)
        self.scaler_row += torch.norm(x, p=2, dim=1) ** 2 / self.nsamples


class HessianStats:
    """lib/sparsegpt.py SparseGPT.add_batch: H = (2/N) sum_j X_j X_j^T in float32, with
        H *= n/(n+b); n += b; x = sqrt(2/n) * x; H += x @ x^T
    With ablate=True also the lib/ablate.py AblateGPT quirk: scaler_row is accumulated from the
    ALREADY SCALED x (sqrt(2/n) * x), i.e. scaler_row += ||sqrt(2/n) x_c||^2 / n, which weights
    sample j by 2/(j*N) instead of 1/N."""

    def __init__(self, layer, ablate=False):
        self.layer = layer
        self.rows, self.columns = layer.weight.shape
        self.H = torch.zeros((self.columns, self.columns), dtype=torch.float32)
        self.nsamples = 0
        self.ablate = ablate
        if ablate:
            self.scaler_row = torch.zeros(self.columns, dtype=torch.float32)

    def add_batch(self, inp):
        x, b = _as_cols_by_tokens(inp)
        self.H *= self.nsamples / (self.nsamples + b)
        if self.ablate:
            self.scaler_row *= self.nsamples / (self.nsamples + b)
        self.nsamples += b
        x = math.sqrt(2 / self.nsamples) * x.float()
        self.H += x.matmul(x.t())
        if self.ablate:
            self.scaler_row += torch.norm(x, p=2, dim=1) ** 2 / self.nsamples


# ----------------------------------------------------------------------------------------------
# mask rules
# ----------------------------------------------------------------------------------------------

def nm_mask(metric, n, m):
    """For every row and every group of m consecutive columns starting at a multiple of m, mark
    (True = prune) the n entries with the smallest metric (torch.topk(largest=False), computed in
    float32). Ties are implementation-defined in torch.topk; with real-valued metrics they only
    occur for exact zeros."""
    mask = torch.zeros_like(metric, dtype=torch.bool)
    for c in range(0, metric.shape[1], m):
        grp = metric[:, c:c + m].float()
        mask.scatter_(1, c + torch.topk(grp, n, dim=1, largest=False)[1], True)
    return mask


def layer_threshold_mask(metric, sparsity):
    """Whole-matrix threshold: thresh = sorted(metric.flatten())[int(numel*sparsity)];
    prune metric <= thresh. NOTE: index int(numel*s) (truncation) and `<=` mean at least
    int(numel*s)+1 entries are pruned (more with ties)."""
    k = int(metric.numel() * sparsity)
    thresh = torch.sort(metric.flatten())[0][k]
    return metric <= thresh


def per_row_sorted_mask(metric, sparsity):
    """Per output row: stable ascending sort, prune the first int(cols*sparsity) indices
    (exactly that many per row; ties broken by lower column index first)."""
    mask = torch.zeros_like(metric, dtype=torch.bool)
    sort_res = torch.sort(metric, dim=-1, stable=True)
    idx = sort_res[1][:, :int(metric.shape[1] * sparsity)]
    mask.scatter_(1, idx, True)
    return mask


def _variant_mask_for_alpha(alpha, sorted_vals, metric, cumsum, row_sum):
    limit = row_sum * alpha
    below = cumsum <= limit.reshape((-1, 1))
    # index = count - 1 (would be -1 and raise in torch.gather if no prefix fits)
    thres = torch.gather(sorted_vals, dim=1, index=below.sum(dim=1, keepdims=True) - 1)
    mask = metric <= thres
    cur = (mask == True).sum() / mask.numel()  # noqa: E712  (float32 0-dim tensor)
    return mask, cur


def wanda_variant_mask(metric, sparsity):
    """prune_wanda with --use_variant (appendix): per row prune the smallest entries whose
    cumulative sum is <= alpha * row sum; bisection on alpha until the layer's sparsity is within
    0.001 of the target or the bracket is narrower than 0.001."""
    sort_res = torch.sort(metric, dim=-1, stable=True)
    cumsum = torch.cumsum(sort_res[0], dim=1)
    row_sum = metric.sum(dim=1)
    alpha = 0.4
    lo, hi = 0.0, 0.8
    mask, cur = _variant_mask_for_alpha(alpha, sort_res[0], metric, cumsum, row_sum)
    steps = 0
    while (torch.abs(cur - sparsity) > 0.001) and (hi - lo >= 0.001):
        if cur > sparsity:
            new_alpha = (alpha + lo) / 2.0
            hi = alpha
        else:
            new_alpha = (alpha + hi) / 2.0
            lo = alpha
        alpha = new_alpha
        mask, cur = _variant_mask_for_alpha(alpha, sort_res[0], metric, cumsum, row_sum)
        steps += 1
    return mask, {"alpha": alpha, "layer_sparsity": float(cur), "bisection_steps": steps}


# ----------------------------------------------------------------------------------------------
# SparseGPT / ablation OBS solver (lib/sparsegpt.py fasterprune, lib/ablate.py fasterprune)
# ----------------------------------------------------------------------------------------------

def obs_prune(layer, H, sparsity, prune_n=0, prune_m=0, blocksize=128, percdamp=0.01,
              given_mask=None, select=None, scaler_row=None):
    """select: None = SparseGPT saliency w^2 / [Hinv]_cc^2; "mag" = |w|;
    "wanda" = |w| * sqrt(scaler_row) (ablate_*_iter). given_mask = fixed prune mask
    (ablate_*_seq). Returns info dict. Works in float32 and writes the weight back."""
    W = layer.weight.data.clone().float()
    cols = W.shape[1]
    H = H.clone()
    dead = torch.diag(H) == 0
    n_dead = int(dead.sum())
    # boolean-pair indexing H[dead, dead] touches only the diagonal entries (i, i) of dead i
    H[dead, dead] = 1
    W[:, dead] = 0
    damp = percdamp * torch.mean(torch.diag(H))   # mean taken AFTER the dead diagonals became 1
    d_idx = torch.arange(cols)
    H[d_idx, d_idx] += damp
    L = torch.linalg.cholesky(H)
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True)

    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        cnt = i2 - i1
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]

        if given_mask is not None:
            mask1 = given_mask[:, i1:i2]
        elif prune_n == 0:
            if select is None:
                score = W1 ** 2 / (torch.diag(Hinv1).reshape((1, -1))) ** 2
            elif select == "wanda":
                score = torch.abs(W1) * torch.sqrt(scaler_row[i1:i2].reshape((1, -1)))
            else:
                score = torch.abs(W1)
            # threshold over the whole (rows x block) slab, `<=`, index int(numel*s)
            thresh = torch.sort(score.flatten())[0][int(score.numel() * sparsity)]
            mask1 = score <= thresh
        else:
            mask1 = torch.zeros_like(W1, dtype=torch.bool)

        for i in range(cnt):
            w = W1[:, i]
            d = Hinv1[i, i]
            if prune_n != 0 and i % prune_m == 0 and given_mask is None:
                # N:M groups decided lazily from the CURRENT (already OBS-updated) W1 columns
                if select is None:
                    score = W1[:, i:i + prune_m] ** 2 / (torch.diag(Hinv1)[i:i + prune_m].reshape((1, -1))) ** 2
                elif select == "wanda":
                    score = torch.abs(W1[:, i:i + prune_m]) * torch.sqrt(
                        scaler_row[i + i1:i + i1 + prune_m].reshape((1, -1)))
                else:
                    score = torch.abs(W1[:, i:i + prune_m])
                mask1.scatter_(1, i + torch.topk(score, prune_n, dim=1, largest=False)[1], True)
            q = w.clone()
            q[mask1[:, i]] = 0
            Q1[:, i] = q
            err = (w - q) / d
            # row update includes column i itself (harmless: Q1[:, i] is already stored)
            W1[:, i:] -= err.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
            Err1[:, i] = err
        W[:, i1:i2] = Q1
        W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])

    layer.weight.data = W.reshape(layer.weight.shape).to(layer.weight.data.dtype)
    return {"dead_columns": n_dead, "damp": float(damp)}


# ----------------------------------------------------------------------------------------------
# OWL layer-wise sparsity (behaviour of luuyin/OWL lib/prune_all.py prune_*_outlier)
# ----------------------------------------------------------------------------------------------

def owl_outlier_ratios(model, ids, hyper_m):
    """OWL's first pass over the DENSE model, before the pruning pass (same samples): per block,
    hook every linear, run all samples through the block (its outputs are the next block's
    inputs; nothing is pruned), then take the Wanda scores |W| * sqrt(scaler_row) of ALL the
    block's linears, flatten and concatenate them (on CPU, float32), and count the entries above
    hyper_m times their one common mean: ratio = count / numel * 100 (percent)."""
    blocks, _, _ = decoder_blocks(model)
    with torch.no_grad():
        inps, kw = capture_block0_inputs(model, blocks, ids)
    outs = torch.zeros_like(inps)
    ratios = []
    for block in blocks:
        subset = linear_modules(block)
        stats = {n: RowNormStats(m) for n, m in subset.items()}
        handles = [subset[n].register_forward_hook(
            (lambda name: lambda _m, inp, _o: stats[name].add_batch(inp[0].data))(n)) for n in stats]
        _run_block(block, inps, outs, kw, Timer())
        for h in handles:
            h.remove()
        scores = [torch.abs(lin.weight.data) * torch.sqrt(stats[n].scaler_row.reshape((1, -1)))
                  for n, lin in subset.items()]
        flat = torch.cat([torch.flatten(x.cpu()) for x in scores])
        threshold = torch.mean(flat) * hyper_m
        ratios.append(float((flat > threshold).sum().item()) / flat.numel() * 100)
        inps, outs = outs, inps
    return ratios


def owl_block_sparsities(ratios, lamda, sparsity):
    """float64 numpy, in the official order of operations: scale the ratios to [0, 2*lamda]
    (dividing by max - min: all-equal ratios divide by zero there, so they are refused), shift
    them so that their MEAN (not the midpoint) becomes the target density 1 - sparsity; block
    sparsity = 1 - density, where a value <= 0 becomes 0.01 (the official wanda and sparsegpt
    paths; its magnitude path has no such guard)."""
    r = np.array(ratios)
    if r.max() == r.min():
        raise SystemExit("OWL: all blocks have the same outlier ratio; the official code divides by zero")
    r = (r - r.min()) * (1 / (r.max() - r.min()) * lamda * 2)
    r = r - np.mean(r) + (1 - sparsity)
    return [0.01 if 1 - d <= 0 else float(1 - d) for d in r]


# ----------------------------------------------------------------------------------------------
# pruning drivers (`sparsity` is one ratio per block)
# ----------------------------------------------------------------------------------------------

class Timer:
    def __init__(self):
        self.t = {}

    def add(self, key, dt):
        self.t[key] = self.t.get(key, 0.0) + dt


def prune_magnitude(model, sparsity, prune_n, prune_m, timer, per_layer):
    blocks, prefix, _ = decoder_blocks(model)
    for bi in range(len(blocks)):
        for name, lin in linear_modules(blocks[bi]).items():
            t0 = time.perf_counter()
            W = lin.weight.data
            metric = torch.abs(W)
            mask = nm_mask(metric, prune_n, prune_m) if prune_n else layer_threshold_mask(metric, sparsity[bi])
            W[mask] = 0
            timer.add("prune_seconds", time.perf_counter() - t0)
            per_layer[f"{prefix}.{bi}.{name}"] = {"pruned_by_mask": int(mask.sum())}


def _run_block(block, inps, outs, kw, timer):
    t0 = time.perf_counter()
    with torch.no_grad():
        for j in range(inps.shape[0]):
            outs[j] = block_output(block(inps[j].unsqueeze(0), **kw))[0]
    return time.perf_counter() - t0


def prune_calibrated(model, method, ids, sparsity, prune_n, prune_m, use_variant, timer, per_layer,
                     block_log):
    """Shared per-block loop of prune_wanda / prune_sparsegpt / prune_ablate:
    for each block: hook every linear, run all samples (one at a time) through the DENSE block to
    collect statistics (outputs discarded), remove hooks, prune every linear of the block, re-run
    all samples through the PRUNED block; its outputs are the next block's inputs."""
    blocks, prefix, _ = decoder_blocks(model)
    t0 = time.perf_counter()
    with torch.no_grad():
        inps, kw = capture_block0_inputs(model, blocks, ids)
    timer.add("capture_seconds", time.perf_counter() - t0)
    block_log["block_kwargs"] = describe_block_kwargs(kw)
    outs = torch.zeros_like(inps)

    all_sparsities = sparsity
    for bi in range(len(blocks)):
        sparsity = all_sparsities[bi]
        block = blocks[bi]
        subset = linear_modules(block)
        block_log["blocks"].append({
            "index": bi,
            "input_sample0_pos1_first4": [f32(v) for v in inps[0, 1, :4]],
            "input_abs_mean": float(inps.abs().double().mean()),
        })
        if method == "wanda":
            stats = {n: RowNormStats(m) for n, m in subset.items()}
        else:
            stats = {n: HessianStats(m, ablate=method.startswith("ablate")) for n, m in subset.items()}

        def make_hook(name):
            def hook(_mod, inp, _out):
                h0 = time.perf_counter()
                stats[name].add_batch(inp[0].data)
                timer.add("stats_seconds", time.perf_counter() - h0)
            return hook

        handles = [subset[n].register_forward_hook(make_hook(n)) for n in stats]
        timer.add("forward_seconds", _run_block(block, inps, outs, kw, timer))
        for h in handles:
            h.remove()

        for name, lin in subset.items():
            key = f"{prefix}.{bi}.{name}"
            info = {}
            t1 = time.perf_counter()
            if method == "wanda":
                metric = torch.abs(lin.weight.data) * torch.sqrt(stats[name].scaler_row.reshape((1, -1)))
                if prune_n:
                    mask = nm_mask(metric, prune_n, prune_m)
                elif use_variant:
                    mask, vinfo = wanda_variant_mask(metric, sparsity)
                    info["variant"] = vinfo
                else:
                    mask = per_row_sorted_mask(metric, sparsity)
                lin.weight.data[mask] = 0
                info["pruned_by_mask"] = int(mask.sum())
            elif method == "sparsegpt":
                info.update(obs_prune(lin, stats[name].H, sparsity, prune_n, prune_m))
            else:
                st = stats[name]
                given = None
                select = None
                if method == "ablate_wanda_seq":
                    metric = torch.abs(lin.weight.data) * torch.sqrt(st.scaler_row.reshape((1, -1)))
                    given = nm_mask(metric, prune_n, prune_m) if prune_n else per_row_sorted_mask(metric, sparsity)
                elif method == "ablate_mag_seq":
                    metric = torch.abs(lin.weight.data)
                    given = nm_mask(metric, prune_n, prune_m) if prune_n else layer_threshold_mask(metric, sparsity)
                elif method == "ablate_wanda_iter":
                    select = "wanda"
                else:
                    select = "mag"
                info.update(obs_prune(lin, st.H, sparsity, prune_n, prune_m, given_mask=given,
                                      select=select, scaler_row=st.scaler_row))
            timer.add("prune_seconds", time.perf_counter() - t1)
            if method == "wanda" or method.startswith("ablate"):
                info["sqrt_scaler_row_first8"] = [f32(v) for v in torch.sqrt(stats[name].scaler_row[:8])]
            if method != "wanda":
                info["hessian_diag_first8"] = [f32(v) for v in torch.diag(stats[name].H)[:8]]
            info["stat_nsamples"] = stats[name].nsamples
            per_layer[key] = info
        del stats

        timer.add("forward_seconds", _run_block(block, inps, outs, kw, timer))
        inps, outs = outs, inps


# ----------------------------------------------------------------------------------------------
# evaluation
# ----------------------------------------------------------------------------------------------

def wikitext_ids(tok, path):
    import pyarrow.parquet as pq
    rows = pq.read_table(path).column("text").to_pylist()
    return tok.encode("\n\n".join(rows))


def eval_ppl(model, ids, seqlen, max_windows):
    """lib/eval.py eval_ppl_wikitext with bs=1: non-overlapping windows of seqlen (the tail is
    dropped), per-window mean CE over the seqlen-1 shifted targets, ppl = exp(mean window CE)."""
    nwin = len(ids) // seqlen
    k = nwin if max_windows is None or max_windows <= 0 else min(nwin, max_windows)
    t = torch.tensor(ids[:k * seqlen], dtype=torch.int64).reshape(k, seqlen)
    losses = []
    with torch.no_grad():
        for w in range(k):
            x = t[w:w + 1]
            logits = model(x, use_cache=False).logits
            loss = nn.functional.cross_entropy(logits[0, :-1, :].float(), x[0, 1:])
            losses.append(float(loss))
    ppl = math.exp(sum(losses) / len(losses)) if losses else float("nan")
    return ppl, losses, nwin


# ----------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------

def calib_only(args, t_start):
    with open(os.path.join(args.model, "config.json")) as f:
        max_pos = json.load(f)["max_position_embeddings"]
    seqlen = args.seqlen or max_pos
    tok = Tok(args.model)
    docs = load_calib_docs(args.calib)
    seeds = [args.seed] + [int(x) for x in args.extra_seeds.split(",") if x.strip()]
    per_seed = {}
    for s in seeds:
        w, ids, draws = sample_c4_windows(docs, tok, args.nsamples, s, seqlen)
        per_seed[str(s)] = {"windows": w, "doc_draws": draws,
                            "ids_sha256": sha256_bytes(ids.numpy().astype("<i8").tobytes()),
                            "first_window_first16": ids[0, :16].tolist()}
    result = {
        "schema_version": SCHEMA_VERSION,
        "reference": "scripts/reference_prune.py --calib-only (lib/data.py get_c4)",
        "settings": {"tokenizer": os.path.basename(os.path.normpath(args.model)) + "/tokenizer.json",
                     "nsamples": args.nsamples, "seqlen": seqlen,
                     "calib_file": os.path.basename(args.calib), "calib_docs": len(docs)},
        "seeds": per_seed,
        "timings": {"total_seconds": round(time.perf_counter() - t_start, 4)},
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(dumps_compact(result) + "\n")
    print(f"calibration windows for seeds {seeds}: nsamples={args.nsamples} seqlen={seqlen}")


def check_goldens(gdir, fixtures):
    """Sanity checks of a generated golden folder (structure of the masks, sparsity counts,
    seeds, mask files, and an independent numpy recomputation of the magnitude masks)."""
    from safetensors.numpy import load_file
    problems = []

    def bad(msg):
        problems.append(msg)
        print("FAIL", msg)

    cases = sorted(f for f in os.listdir(gdir) if f.endswith(".json") and not f.startswith("calib_"))
    win_ref = {}
    for fn in cases:
        g = json.load(open(os.path.join(gdir, fn)))
        st = g["settings"]
        n, m = st["prune_n"], st["prune_m"]
        cal = g["calibration"]
        if cal["windows"] == cal["other_seeds"]["1"]["windows"]:
            bad(f"{fn}: seed 0 and seed 1 windows are equal")
        key = (st["nsamples"], st["seqlen"], st["seed"])
        win_ref.setdefault(key, (fn, cal["ids_sha256"]))
        if win_ref[key][1] != cal["ids_sha256"]:
            bad(f"{fn}: calibration ids differ from {win_ref[key][0]}")
        # per-row truncation int(cols*s) at block sparsities that are not multiples of 1/cols
        if abs(g["sparsity_actual"] - st["sparsity"]) > (0.005 if g.get("owl") else 0.001):
            bad(f"{fn}: sparsity_actual {g['sparsity_actual']}")
        if sum(v["zeros"] for v in g["layers"].values()) != g["zeros_total"]:
            bad(f"{fn}: zeros_total")
        ev = g["eval"]
        if not (ev and ev["windows_used"] == 16 and math.isfinite(ev["ppl"])):
            bad(f"{fn}: eval")
        masks = None
        if g.get("masks_file"):
            masks = load_file(os.path.join(gdir, g["masks_file"]))
        weights = None
        if st["method"] == "magnitude":
            weights = load_file(os.path.join(fixtures, "models", st["model"], "model.safetensors"))
        for name, e in g["layers"].items():
            # under OWL every linear of a block has its block's sparsity
            sp = g["owl"]["block_sparsity"][int(name.split(".layers.")[1].split(".")[0])] if g.get("owl") else st["sparsity"]
            rows, cols = e["shape"]
            numel = rows * cols
            z = e["zeros"]
            meth = st["method"]
            if n:
                if z != numel // m * n:
                    bad(f"{fn}: {name} N:M zeros {z}")
            elif meth == "magnitude" or meth == "ablate_mag_seq":
                if z != int(numel * sp) + 1:
                    bad(f"{fn}: {name} threshold zeros {z}")
            elif meth in ("wanda", "ablate_wanda_seq") and not st["use_variant"]:
                if z != rows * int(cols * sp):
                    bad(f"{fn}: {name} per-row zeros {z}")
            elif meth in ("sparsegpt", "ablate_mag_iter", "ablate_wanda_iter"):
                exp = sum(int(rows * (min(c + 128, cols) - c) * sp) + 1 for c in range(0, cols, 128))
                if z != exp:
                    bad(f"{fn}: {name} per-block zeros {z} != {exp}")
            kept = None
            if masks is not None:
                kept = np.unpackbits(masks[name], axis=1, bitorder="big", count=cols).astype(np.uint8)
                if sha256_bytes(kept.tobytes()) != e["mask_sha256"] or int((kept == 0).sum()) != z:
                    bad(f"{fn}: {name} mask file disagrees with mask_sha256/zeros")
                if n:
                    grp = (kept == 0).reshape(rows, cols // m, m).sum(-1)
                    if not (grp == n).all():
                        bad(f"{fn}: {name} groups")
                elif meth == "wanda" and not st["use_variant"]:
                    if not ((kept == 0).sum(1) == int(cols * sp)).all():
                        bad(f"{fn}: {name} rows")
            if weights is not None:
                a = np.abs(weights[name + ".weight"].astype(np.float32))
                if n:
                    pr = np.zeros_like(a, dtype=bool)
                    order = np.argsort(a.reshape(rows, cols // m, m), axis=-1, kind="stable")[..., :n]
                    np.put_along_axis(pr.reshape(rows, cols // m, m), order, True, axis=-1)
                else:
                    pr = a <= np.sort(a.reshape(-1))[int(numel * sp)]
                if sha256_bytes((~pr).astype(np.uint8).tobytes()) != e["mask_sha256"]:
                    bad(f"{fn}: {name} magnitude mask != numpy recomputation")
    for fn in sorted(f for f in os.listdir(gdir) if f.startswith("calib_") and f.endswith(".json")):
        g = json.load(open(os.path.join(gdir, fn)))
        if g["seeds"]["0"]["windows"] == g["seeds"]["1"]["windows"]:
            bad(f"{fn}: seeds 0 and 1 equal")
        if len(g["seeds"]["0"]["windows"]) != g["settings"]["nsamples"]:
            bad(f"{fn}: count")
    print(f"checked {len(cases)} cases: {'OK' if not problems else str(len(problems)) + ' problem(s)'}")
    return 1 if problems else 0


def main():
    if len(sys.argv) >= 2 and sys.argv[1] == "--check-goldens":
        gdir = sys.argv[2] if len(sys.argv) > 2 else "tests/goldens/prune"
        fx = sys.argv[3] if len(sys.argv) > 3 else "../shared/fixtures"
        sys.exit(check_goldens(gdir, fx))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--method", choices=METHODS, help="required unless --calib-only")
    ap.add_argument("--calib-only", action="store_true",
                    help="only sample the calibration windows (no model, no pruning)")
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--pattern", default="unstructured", choices=["unstructured", "2:4", "4:8"])
    ap.add_argument("--use-variant", action="store_true")
    ap.add_argument("--nsamples", type=int, default=128)
    ap.add_argument("--seqlen", type=int, default=None, help="calibration seqlen (default: max_position_embeddings)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--calib", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--eval-windows", type=int, default=0, help="WikiText-2 windows to evaluate (0 = none, -1 = all)")
    ap.add_argument("--eval-seqlen", type=int, default=None, help="default: max_position_embeddings")
    ap.add_argument("--wikitext", default=DEFAULT_WIKITEXT)
    ap.add_argument("--no-dense-eval", action="store_true")
    ap.add_argument("--save-masks", default=None, help="safetensors of bit-packed kept masks")
    ap.add_argument("--extra-seeds", default="", help="comma list: also record calibration windows for these seeds")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--n-weight-samples", type=int, default=64)
    ap.add_argument("--allocation", default="uniform", choices=["uniform", "owl"],
                    help="owl: layer-wise sparsity from outlier ratios (luuyin/OWL prune_*_outlier)")
    ap.add_argument("--owl-m", type=float, default=5.0, help="OWL's Hyper_m")
    ap.add_argument("--owl-lambda", type=float, default=0.08, help="OWL's Lamda")
    args = ap.parse_args()

    t_start = time.perf_counter()
    if args.calib_only:
        return calib_only(args, t_start)
    if not args.method:
        ap.error("--method is required")
    torch.set_num_threads(args.threads)
    # like main.py (no effect on the algorithms, which are deterministic given the data)
    np.random.seed(args.seed)
    torch.random.manual_seed(args.seed)

    prune_n = prune_m = 0
    if args.pattern != "unstructured":
        assert args.sparsity == 0.5, "N:M requires sparsity 0.5 (as in main.py)"
        prune_n, prune_m = map(int, args.pattern.split(":"))
    if args.use_variant:
        assert args.method == "wanda" and prune_n == 0, "the variant exists only for unstructured wanda"

    import transformers
    from transformers import AutoModelForCausalLM
    timer = Timer()
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    model.config.use_cache = False
    tok = Tok(args.model)
    timer.add("load_seconds", time.perf_counter() - t0)
    max_pos = model.config.max_position_embeddings
    seqlen = args.seqlen or max_pos
    eval_seqlen = args.eval_seqlen or max_pos
    blocks, prefix, family = decoder_blocks(model)
    if family == "opt" and args.use_variant:
        raise SystemExit("lib/prune_opt.py has no --use_variant")

    # calibration data (also drawn for magnitude, only to record it)
    t0 = time.perf_counter()
    docs = load_calib_docs(args.calib)
    windows, ids, draws = sample_c4_windows(docs, tok, args.nsamples, args.seed, seqlen)
    extra = {}
    for s in [int(x) for x in args.extra_seeds.split(",") if x.strip()]:
        w, i2, _ = sample_c4_windows(docs, tok, args.nsamples, s, seqlen)
        extra[str(s)] = {"windows": w, "ids_sha256": sha256_bytes(i2.numpy().astype("<i8").tobytes())}
    timer.add("calib_seconds", time.perf_counter() - t0)

    eval_ids = None
    dense = None
    if args.eval_windows != 0:
        t0 = time.perf_counter()
        eval_ids = wikitext_ids(tok, args.wikitext)
        if not args.no_dense_eval:
            ppl, losses, nwin = eval_ppl(model, eval_ids, eval_seqlen, args.eval_windows)
            dense = {"ppl": ppl, "window_losses": losses}
        timer.add("eval_seconds", time.perf_counter() - t0)

    per_layer = {}
    block_log = {"blocks": []}
    t_prune0 = time.perf_counter()
    owl = None
    block_sparsity = [args.sparsity] * len(blocks)
    if args.allocation == "owl":
        assert prune_n == 0, "OWL allocates unstructured sparsity only"
        ratios = owl_outlier_ratios(model, ids, args.owl_m)
        block_sparsity = owl_block_sparsities(ratios, args.owl_lambda, args.sparsity)
        owl = {"m": args.owl_m, "lambda": args.owl_lambda, "outlier_ratios": ratios, "block_sparsity": block_sparsity}
    if args.method == "magnitude":
        prune_magnitude(model, block_sparsity, prune_n, prune_m, timer, per_layer)
    else:
        prune_calibrated(model, args.method, ids, block_sparsity, prune_n, prune_m, args.use_variant,
                         timer, per_layer, block_log)
    prune_wall = time.perf_counter() - t_prune0

    # per-layer results
    layers_out = {}
    total_zero = total = 0
    packed = {}
    gidx = 0
    for bi in range(len(blocks)):
        for name, lin in linear_modules(blocks[bi]).items():
            key = f"{prefix}.{bi}.{name}"
            W = lin.weight.data
            kept = (W != 0)
            zeros = int((~kept).sum())
            total_zero += zeros
            total += W.numel()
            kept_u8 = kept.numpy().astype(np.uint8)
            ent = {"shape": list(W.shape), "zeros": zeros,
                   "mask_sha256": sha256_bytes(kept_u8.tobytes()),
                   "weight_fro_norm": float(torch.linalg.norm(W.double()))}
            ent.update(per_layer.get(key, {}))
            if "pruned_by_mask" in ent and ent["pruned_by_mask"] != zeros:
                print(f"warning: {key}: mask prunes {ent['pruned_by_mask']} but {zeros} zeros", file=sys.stderr)
            if args.method == "sparsegpt" or args.method.startswith("ablate"):
                rng = np.random.default_rng(gidx)
                nz = np.flatnonzero(kept_u8.reshape(-1))
                pick = np.sort(rng.choice(nz, size=min(args.n_weight_samples, nz.size), replace=False))
                cols = W.shape[1]
                Wn = W.numpy()
                ent["weight_samples"] = [[int(p // cols), int(p % cols), f32(Wn[p // cols, p % cols])] for p in pick]
            layers_out[key] = ent
            if args.save_masks:
                packed[key] = np.packbits(kept_u8, axis=1, bitorder="big")
            gidx += 1

    result = {
        "schema_version": SCHEMA_VERSION,
        "reference": "scripts/reference_prune.py (behaviour of locuslab/wanda lib/prune.py, lib/prune_opt.py)",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "python": sys.version.split()[0]},
        "settings": {
            "model": os.path.basename(os.path.normpath(args.model)),
            "model_safetensors_sha256": sha256_file(os.path.join(args.model, "model.safetensors")),
            "family": family, "method": args.method, "sparsity": args.sparsity, "pattern": args.pattern,
            "prune_n": prune_n, "prune_m": prune_m, "use_variant": args.use_variant,
            "nsamples": args.nsamples, "seqlen": seqlen, "seed": args.seed,
            "calib_file": os.path.basename(args.calib), "calib_docs": len(docs),
            "dtype": "float32", "attn_implementation": "eager", "threads": args.threads,
            "blocksize": 128, "percdamp": 0.01, "allocation": args.allocation,
        },
        "owl": owl,
        "calibration": {
            "windows": windows,
            "doc_draws": draws,
            "ids_sha256": sha256_bytes(ids.numpy().astype("<i8").tobytes()),
            "first_window_first16": ids[0, :16].tolist(),
            "other_seeds": extra,
        },
        "block_kwargs": block_log.get("block_kwargs"),
        "blocks": block_log["blocks"],
        "layers": layers_out,
        "sparsity_actual": total_zero / total,
        "zeros_total": total_zero,
        "params_total": total,
        "eval": None,
        "timings": {},
    }

    if eval_ids is not None:
        t0 = time.perf_counter()
        ppl, losses, nwin = eval_ppl(model, eval_ids, eval_seqlen, args.eval_windows)
        timer.add("eval_seconds", time.perf_counter() - t0)
        result["eval"] = {"dataset": "wikitext-2-raw-v1 test", "tokens": len(eval_ids), "seqlen": eval_seqlen,
                          "windows_total": nwin, "windows_used": len(losses), "ppl": ppl,
                          "window_losses": losses, "dense": dense}

    timings = dict(timer.t)
    timings["prune_total_seconds"] = prune_wall
    timings["total_seconds"] = time.perf_counter() - t_start
    result["timings"] = {k: round(v, 4) for k, v in sorted(timings.items())}

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    if args.save_masks:
        result["masks_file"] = os.path.basename(args.save_masks)
    with open(args.out, "w") as f:
        f.write(dumps_compact(result) + "\n")
    if args.save_masks:
        from safetensors.numpy import save_file
        meta = {"format": "kept-mask bits, row-major, np.packbits(axis=1, bitorder='big'): "
                          "byte [r, c//8] bit (7 - c%8) = 1 if W[r,c] kept (nonzero); rows padded to 8",
                "shapes": json.dumps({k: v["shape"] for k, v in layers_out.items()})}
        save_file(packed, args.save_masks, metadata=meta)

    ev = result["eval"]
    print(f"method={args.method} pattern={args.pattern} variant={args.use_variant} "
          f"sparsity_actual={result['sparsity_actual']:.6f} "
          + (f"ppl={ev['ppl']:.4f} dense_ppl={ev['dense']['ppl'] if ev['dense'] else float('nan'):.4f} " if ev else "")
          + f"prune_seconds={timings.get('prune_seconds', 0.0):.3f} total_seconds={timings['total_seconds']:.3f}")


if __name__ == "__main__":
    main()
