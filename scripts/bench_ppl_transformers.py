"""Baseline for scripts/bench_ppl.sh: WikiText-2 perplexity with transformers, the way the
official Wanda code evaluates (float32 here, one window per forward pass), timed."""
import argparse, json, math, time

import pyarrow.parquet as pq
import torch
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM

p = argparse.ArgumentParser()
p.add_argument("--model", required=True)
p.add_argument("--wikitext", required=True, help="wikitext-2-raw-v1 test parquet")
p.add_argument("--seqlen", type=int, default=None)
p.add_argument("--max-windows", type=int, default=None)
args = p.parse_args()

torch.set_grad_enabled(False)
model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
seqlen = args.seqlen or model.config.max_position_embeddings
text = "\n\n".join(pq.read_table(args.wikitext).column("text").to_pylist())
ids = torch.tensor([Tokenizer.from_file(f"{args.model}/tokenizer.json").encode(text).ids])
n = ids.shape[1] // seqlen
if args.max_windows:
    n = min(n, args.max_windows)
start = time.perf_counter()
nll = 0.0
for i in range(n):
    x = ids[:, i * seqlen:(i + 1) * seqlen]
    logits = model(x).logits
    loss = torch.nn.functional.cross_entropy(logits[0, :-1].float(), x[0, 1:])
    nll += loss.item() * seqlen
secs = time.perf_counter() - start
print(json.dumps({"ppl": math.exp(nll / (n * seqlen)), "windows": n, "seqlen": seqlen,
                  "eval_seconds": secs, "tokens_per_second": n * seqlen / secs,
                  "torch": torch.__version__, "threads": torch.get_num_threads()}))
