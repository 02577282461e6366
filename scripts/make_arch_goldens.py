#!/usr/bin/env python3
"""Generate tiny random HF checkpoints + reference outputs for architecture features.

Why this exists: the shared test fixtures only cover the plain Llama/OPT paths.
The Rust port must also reproduce transformers' forward (to float tolerance) for features
that real Wanda targets use but that a plain fixture never exercises:

  llama-gqa-llama3rope  GQA (4 q heads / 2 kv heads), untied lm_head, rope_theta 5e5,
                        llama3 rope scaling hitting all three branches (kept / smoothed /
                        divided by factor); config.json carries BOTH the v5 `rope_parameters`
                        and the legacy top-level `rope_theta` + `rope_scaling`.
  llama-tied            tie_word_embeddings (no lm_head.weight in the file), plain MHA.
  mistral-tiny          GQA + sliding_window 16 on 64-token inputs (mask really bites).
  opt-proj              word_embed_proj_dim 32 != hidden 64 (project_in / project_out),
                        pre-LN, tied lm_head, relu.
  opt-postln            do_layer_norm_before=False (opt-350m style): post-LN blocks and
                        NO decoder-level final_layer_norm.

Weights are re-drawn with a larger std than HF's 0.02 init (and norm weights / biases are
randomised too) so that attention is peaked and a port that ignores a norm weight, a bias,
the rope scaling or the window produces visibly different logits.

Each model goes to tests/fixtures/models/<name>/ as config.json + model.safetensors
(float32) + golden.json (eager attention, CPU, float32, eval, no_grad).

Regenerate:  .venv/bin/python scripts/make_arch_goldens.py
"""

import copy
import hashlib
import json
import math
import pathlib

import torch
import torch.nn.functional as F
import transformers
from transformers import (LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM,
                          OPTConfig, OPTForCausalLM)

ROOT = pathlib.Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "fixtures" / "models"
ATTN = "eager"
SEED = 20240521
W_STD = 0.15  # weight std; gives attention-score std ~1.4 at head_dim 16
LLAMA3_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                  "high_freq_factor": 4.0, "original_max_position_embeddings": 64}

MODELS = {
    "llama-gqa-llama3rope": (LlamaForCausalLM, LlamaConfig(
        vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        rms_norm_eps=1e-6, rope_theta=500000.0, rope_scaling=dict(LLAMA3_SCALING),
        tie_word_embeddings=False, attention_bias=False, bos_token_id=1, eos_token_id=2)),
    "llama-tied": (LlamaForCausalLM, LlamaConfig(
        vocab_size=512, hidden_size=64, intermediate_size=80, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
        rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=True,
        attention_bias=False, bos_token_id=1, eos_token_id=2)),
    "mistral-tiny": (MistralForCausalLM, MistralConfig(
        vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        sliding_window=16, rms_norm_eps=1e-5, rope_theta=10000.0,
        tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)),
    "opt-proj": (OPTForCausalLM, OPTConfig(
        vocab_size=512, hidden_size=64, word_embed_proj_dim=32, ffn_dim=128,
        num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64,
        do_layer_norm_before=True, activation_function="relu", dropout=0.0,
        tie_word_embeddings=True, pad_token_id=1, bos_token_id=2, eos_token_id=2)),
    "opt-postln": (OPTForCausalLM, OPTConfig(
        vocab_size=512, hidden_size=64, word_embed_proj_dim=64, ffn_dim=96,
        num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64,
        do_layer_norm_before=False, activation_function="relu", dropout=0.0,
        tie_word_embeddings=True, pad_token_id=1, bos_token_id=2, eos_token_id=2)),
}


def randomize(model):
    """Redraw every parameter: matrices N(0, W_STD), norm weights 1+N(0,.2), biases N(0,.2)."""
    with torch.no_grad():
        for name, p in model.named_parameters():  # tied tensors are yielded once
            if p.dim() >= 2:
                p.normal_(0.0, W_STD)
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            else:
                p.normal_(0.0, 0.2)


def make_inputs(cfg, idx):
    g = torch.Generator().manual_seed(SEED + 100 + idx)
    n = cfg.max_position_embeddings
    ids = torch.randint(3, cfg.vocab_size, (2, n), generator=g)  # skip unk/pad/bos/eos ids
    ids[:, 0] = cfg.bos_token_id
    return ids


@torch.no_grad()
def forward(model, ids):
    return model(input_ids=ids).logits.float()


def window_losses(logits, ids):
    return [F.cross_entropy(logits[b, :-1], ids[b, 1:]).item() for b in range(ids.shape[0])]


def load(cls, d):
    return cls.from_pretrained(d, attn_implementation=ATTN, dtype=torch.float32).eval()


def add_legacy_rope_keys(d, model_cls, ids, ref):
    """Write top-level rope_theta + rope_scaling (hub Llama-3.1 style) next to rope_parameters."""
    path = d / "config.json"
    cfg = json.loads(path.read_text())
    rp = cfg.get("rope_parameters") or cfg.get("rope_scaling")
    cfg["rope_theta"] = rp["rope_theta"]
    cfg["rope_scaling"] = {k: v for k, v in rp.items() if k != "rope_theta"}
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    assert torch.equal(forward(load(model_cls, d), ids), ref), "legacy rope keys changed logits"
    # a hub-style config with ONLY the legacy keys must load to the same logits as well
    legacy = {k: v for k, v in cfg.items() if k != "rope_parameters"}
    cfg2 = model_cls.config_class.from_dict(legacy)
    m2 = model_cls.from_pretrained(d, config=cfg2, attn_implementation=ATTN).eval()
    assert torch.equal(forward(m2, ids), ref), "legacy-only rope config changed logits"


def feature_checks(name, model, ids, ref):
    """Assert that the feature a fixture exists for really changes transformers' forward."""
    if name == "llama-gqa-llama3rope":
        hd = model.config.head_dim
        plain = 1.0 / (500000.0 ** (torch.arange(0, hd, 2).float() / hd))
        r = model.model.rotary_emb.inv_freq / plain  # kept / smoothed / divided by factor 8
        assert r[0] == 1 and 0.125 < r[1] < 1 and torch.allclose(r[2:], torch.tensor(0.125)), r
        return f"inv_freq ratio llama3/plain {[round(x, 4) for x in r.tolist()]}"
    if name == "mistral-tiny":
        cfg = copy.deepcopy(model.config)
        cfg.sliding_window = None
        full = MistralForCausalLM(cfg).eval()
        full.load_state_dict(model.state_dict())
        diff = (forward(full, ids) - ref).abs().amax(-1)  # [batch, pos]
        W = model.config.sliding_window
        assert diff[:, :W].max() == 0 and (diff[:, W:] > 0).all(), diff
        return f"no-window vs window: pos<{W} identical, max diff {diff.max().item():.3f}"
    return ""


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    for idx, (name, (cls, cfg)) in enumerate(MODELS.items()):
        torch.manual_seed(SEED + idx)
        model = cls(cfg)
        model.config._attn_implementation = ATTN  # honoured per forward in transformers 5
        randomize(model)
        model = model.float().eval()
        ids = make_inputs(cfg, idx)
        ref = forward(model, ids)

        d = OUT / name
        d.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(d)  # v5 always writes safetensors (no safe_serialization arg)
        (d / "model.safetensors").chmod(0o644)  # safetensors writes 0600
        if name == "llama-gqa-llama3rope":
            add_legacy_rope_keys(d, cls, ids, ref)
        reloaded = forward(load(cls, d), ids)
        assert torch.equal(reloaded, ref), f"{name}: reload changed logits"

        note = feature_checks(name, model, ids, ref)
        L = ids.shape[1]
        pos = [0, 1, 7, L - 1]
        losses = window_losses(ref, ids)
        golden = {
            "model": name,
            "architecture": cls.__name__,
            "attn_implementation": ATTN,
            "dtype": "float32",
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
            "seed": SEED + idx,
            "safetensors_sha256": hashlib.sha256((d / "model.safetensors").read_bytes()).hexdigest(),
            "input_ids": ids.tolist(),
            "logits_shape": list(ref.shape),
            "positions": pos,
            "logits_seq0": [ref[0, p].tolist() for p in pos],
            "logits_mean": ref.mean().item(),
            "logits_std": ref.std().item(),  # unbiased (torch default), over both sequences
            "window_losses": losses,
            "ppl": math.exp(sum(losses) / len(losses)),
        }
        body = ",\n".join(f" {json.dumps(k)}: {json.dumps(v)}" for k, v in golden.items())
        (d / "golden.json").write_text("{\n" + body + "\n}\n")  # one key per line
        size = (d / "model.safetensors").stat().st_size
        print(f"{name:22s} logits {tuple(ref.shape)} ppl {golden['ppl']:.3f} "
              f"safetensors {size / 1024:.1f} KiB {note}")


if __name__ == "__main__":
    main()
