#!/usr/bin/env python3
"""Writes a random LLaMA-shaped Hugging Face checkpoint (config.json, one safetensors shard per
decoder block plus an index, the LLaMA-2 tokenizer) for memory and speed measurements at real
shapes. Needs only torch and the standard library, so it runs on an offline GPU node's own Python.

  make_random_llama.py OUT --tokenizer DIR [--hidden 4096 --layers 32 --intermediate 11008
                       --heads 32 --kv-heads 32 --vocab 32000 --max-positions 4096]
                       [--dtype f16|bf16|f32] [--seed 0] [--device cpu|cuda]

Weights are N(0, 0.02) as transformers initialises LLaMA, norms are ones. Generation happens one
tensor at a time on --device, so host memory stays near one block whatever the model's size.
"""
import argparse
import ctypes
import json
import os
import shutil
import struct

import torch

DTYPES = {"f16": (torch.float16, "F16"), "bf16": (torch.bfloat16, "BF16"), "f32": (torch.float32, "F32")}
TOKENIZER_FILES = ["tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"]


def tensor_bytes(t):
    t = t.contiguous().cpu()
    return ctypes.string_at(t.data_ptr(), t.numel() * t.element_size())


def write_safetensors(path, tensors, st_dtype):
    """The safetensors layout: u64 header length, JSON header (8-byte aligned), raw data."""
    header, offset, blobs = {"__metadata__": {"format": "pt"}}, 0, []
    for name, t in tensors:
        data = tensor_bytes(t)
        header[name] = {"dtype": st_dtype, "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for blob in blobs:
            f.write(blob)
    os.replace(tmp, path)
    return offset


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--tokenizer", required=True, help="directory with the LLaMA-2 tokenizer files")
    ap.add_argument("--hidden", type=int, default=4096)
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--intermediate", type=int, default=11008)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=None)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--max-positions", type=int, default=4096)
    ap.add_argument("--dtype", choices=DTYPES, default="f16")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = ap.parse_args()
    kv = a.kv_heads or a.heads
    dtype, st_dtype = DTYPES[a.dtype]
    os.makedirs(a.out, exist_ok=True)
    gen = torch.Generator(device=a.device).manual_seed(a.seed)
    head_dim = a.hidden // a.heads

    def normal(*shape):
        return (torch.randn(*shape, generator=gen, device=a.device, dtype=torch.float32) * 0.02).to(dtype)

    def ones(n):
        return torch.ones(n, dtype=dtype)

    shards = a.layers + 1
    weight_map, total = {}, 0
    for i in range(a.layers):
        p = f"model.layers.{i}."
        block = [
            (p + "self_attn.q_proj.weight", normal(a.hidden, a.hidden)),
            (p + "self_attn.k_proj.weight", normal(kv * head_dim, a.hidden)),
            (p + "self_attn.v_proj.weight", normal(kv * head_dim, a.hidden)),
            (p + "self_attn.o_proj.weight", normal(a.hidden, a.hidden)),
            (p + "mlp.gate_proj.weight", normal(a.intermediate, a.hidden)),
            (p + "mlp.up_proj.weight", normal(a.intermediate, a.hidden)),
            (p + "mlp.down_proj.weight", normal(a.hidden, a.intermediate)),
            (p + "input_layernorm.weight", ones(a.hidden)),
            (p + "post_attention_layernorm.weight", ones(a.hidden)),
        ]
        shard = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        total += write_safetensors(os.path.join(a.out, shard), block, st_dtype)
        weight_map.update({name: shard for name, _ in block})
        print(f"block {i + 1}/{a.layers} written", flush=True)
    rest = [
        ("model.embed_tokens.weight", normal(a.vocab, a.hidden)),
        ("model.norm.weight", ones(a.hidden)),
        ("lm_head.weight", normal(a.vocab, a.hidden)),
    ]
    shard = f"model-{shards:05d}-of-{shards:05d}.safetensors"
    total += write_safetensors(os.path.join(a.out, shard), rest, st_dtype)
    weight_map.update({name: shard for name, _ in rest})
    with open(os.path.join(a.out, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=1)
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": a.hidden,
        "intermediate_size": a.intermediate,
        "num_hidden_layers": a.layers,
        "num_attention_heads": a.heads,
        "num_key_value_heads": kv,
        "vocab_size": a.vocab,
        "max_position_embeddings": a.max_positions,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": {"f16": "float16", "bf16": "bfloat16", "f32": "float32"}[a.dtype],
    }
    with open(os.path.join(a.out, "config.json"), "w") as f:
        json.dump(config, f, indent=1)
    for name in TOKENIZER_FILES:
        src = os.path.join(a.tokenizer, name)
        if os.path.exists(src):
            shutil.copy(src, os.path.join(a.out, name))
    print(f"wrote {a.out}: {total / 2**30:.2f} GiB of {a.dtype} weights in {shards} shards")


if __name__ == "__main__":
    main()
