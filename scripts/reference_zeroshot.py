#!/usr/bin/env python3
"""Ground truth for the zero-shot goldens: the real lm-evaluation-harness, run on local fixtures.

Why this script exists
----------------------
`src/eval/{tasks,loglik,zeroshot}.rs` re-implement what lm-evaluation-harness (lm-eval) 0.4.13
does for the seven zero-shot tasks of the Wanda paper: prompt building, tokenisation of
(context, continuation) pairs, left truncation, summed continuation log-probs, `acc`/`acc_norm` and
their standard errors. The prompts alone are checked elsewhere (sha256 of lm-eval's
doc_to_text/target/choice). This script checks the rest: it runs lm-eval itself, not a
re-implementation, on the same model and documents, and writes what lm-eval computed per document
(every choice's loglikelihood and is_greedy, the prediction, the gold index) and per task. The Rust
test `tests/golden_zeroshot.rs` then asks `repro::eval::zeroshot::evaluate_task` for the same numbers.

How lm-eval is made to run offline
----------------------------------
The fixtures (`shared/fixtures/datasets/`) hold each task's hub dataset as a local folder with the
hub's parquet layout and a README `configs:` block (see ZERO_SHOT_SOURCES.md there). lm-eval's tasks
call `datasets.load_dataset(path=<hub id>, name=<config>, ...)`; this script replaces
`datasets.load_dataset` by a wrapper that opens `<fixtures>/datasets/<hub id>` instead. The fixtures
hold only the evaluation splits, and lm-eval 0.4.13 reads the task's `training_split` ("train")
while building a task even at 0-shot, so the wrapper adds an empty `train` split (the evaluation
split with no rows, same features). Nothing else of lm-eval is touched: its own TaskManager builds
each task from its own YAML, and its own HF backend (`lm_eval.models.huggingface.HFLM`) loads the
model with transformers and scores the requests.

Settings: HFLM(pretrained=<fixtures>/models/<model>, dtype=float32, device=cpu, batch_size=1),
num_fewshot 0 (the tasks' default), log_samples=True. Note that HFLM 0.4.13 encodes with the
tokenizer's default special tokens (its `tok_encode` passes no `add_special_tokens` unless
`add_bos_token` is given), so for LlamaTokenizer (`add_bos_token: true`) every context starts with
BOS. This is recorded in the goldens' settings (`contexts_start_with_bos`); `--add-bos-token false`
reproduces the older 0.4.x behaviour (no special tokens), for comparison only.

Usage (from the repository root, after `source scripts/env.sh`):
    python scripts/reference_zeroshot.py --limit 50 --out tests/goldens/zeroshot
    python scripts/reference_zeroshot.py --full --tasks rte,winogrande --out tests/goldens/zeroshot
    python scripts/reference_zeroshot.py --time-only --limit 200   # prints one JSON line, writes nothing

`--limit N` writes `<out>/<task>.json` (per-document records of the first N documents and the
metrics over them). `--full` evaluates whole splits and merges their metrics into
`<out>/full_splits.json` (tasks already there and not re-run are kept).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ALL_TASKS = ["boolq", "rte", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa"]

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def fixtures_dir() -> Path:
    env = os.environ.get("REPRO_HUB_MIRROR")
    return Path(env) if env else ROOT.parent / "shared" / "fixtures"


def install_local_datasets(datasets_root: Path) -> None:
    """Redirects `datasets.load_dataset(<hub id>, <config>)` to `<datasets_root>/<hub id>`."""
    import datasets

    original = datasets.load_dataset

    def load_dataset(path=None, name=None, *args, **kwargs):
        local = datasets_root / str(path)
        if path is None or not local.is_dir():
            return original(path, name, *args, **kwargs)
        # Hub-only options (download mode, cache dir, revision...) mean nothing for a local folder.
        keep = {k: v for k, v in kwargs.items() if k in ("split", "data_files")}
        ds = original(str(local), name, **keep)
        if isinstance(ds, datasets.DatasetDict) and "train" not in ds:
            first = next(iter(ds.values()))
            ds["train"] = first.select([])
        return ds

    datasets.load_dataset = load_dataset


def mean_stderr(xs: list[float]) -> float | None:
    """lm-eval's `mean_stderr`: sample standard deviation / sqrt(n)."""
    n = len(xs)
    if n < 2:
        return None
    mu = sum(xs) / n
    return math.sqrt(sum((x - mu) ** 2 for x in xs) / (n - 1)) / math.sqrt(n)


def gold_index(task, doc) -> int:
    """The gold index exactly as lm-eval's ConfigurableTask.process_results derives it."""
    choices = task.doc_to_choice(doc)
    gold = task.doc_to_text(doc) if task.multiple_input else task.doc_to_target(doc)
    if isinstance(gold, str):
        gold = choices.index(gold)
    return int(gold)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="llama-tiny", help="folder under <fixtures>/models")
    ap.add_argument("--tasks", default=",".join(ALL_TASKS))
    ap.add_argument("--limit", type=int, default=50)
    ap.add_argument("--full", action="store_true", help="whole splits; writes full_splits.json")
    ap.add_argument("--time-only", action="store_true", help="only print the evaluation's seconds")
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--add-bos-token", choices=["default", "true", "false"], default="default",
                    help="HFLM's add_bos_token (default: the tokenizer's own setting, as lm-eval 0.4.13 does)")
    ap.add_argument("--out", default=str(ROOT / "tests" / "goldens" / "zeroshot"))
    args = ap.parse_args()

    tasks = [t for t in args.tasks.split(",") if t]
    fx = fixtures_dir()
    install_local_datasets(fx / "datasets")

    import lm_eval
    import torch
    import transformers
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager, get_task_dict

    if args.threads:
        torch.set_num_threads(args.threads)
    model_path = fx / "models" / args.model
    t0 = time.time()
    bos = {"default": None, "true": True, "false": False}[args.add_bos_token]
    lm = HFLM(pretrained=str(model_path), dtype="float32", device="cpu", batch_size=args.batch_size, add_bos_token=bos)
    t_load = time.time() - t0
    task_dict = get_task_dict(tasks, TaskManager())
    limit = None if args.full else args.limit
    t0 = time.time()
    out = lm_eval.simple_evaluate(
        model=lm,
        tasks=[task_dict[t] for t in tasks],
        limit=limit,
        log_samples=not args.time_only,
        bootstrap_iters=100000,
    )
    seconds = time.time() - t0
    print(f"lm-eval: model load {t_load:.2f} s, evaluation {seconds:.2f} s", file=sys.stderr)
    if args.time_only:
        accs = {t: {k: out["results"][t].get(f"{k},none") for k in ("acc", "acc_norm")} for t in tasks}
        print(json.dumps({"seconds": round(seconds, 3), "model_load_seconds": round(t_load, 3), "metrics": accs}))
        return 0

    settings = {
        "model": args.model,
        "dtype": "float32",
        "device": "cpu",
        "reference": f"lm-evaluation-harness {lm_eval.__version__} (HF backend, HFLM)",
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "batch_size": args.batch_size,
        "num_fewshot": 0,
        "hflm_add_bos_token": args.add_bos_token,
        "contexts_start_with_bos": bool(lm.tok_encode("a")[0] == lm.tokenizer.bos_token_id),
        "max_length": lm.max_length,
    }
    outdir = Path(args.out)
    outdir.mkdir(parents=True, exist_ok=True)

    def metrics_of(task_name: str) -> dict:
        r = out["results"][task_name]
        m = {"n": int(out["n-samples"][task_name]["effective"])}
        for k in ("acc", "acc_norm"):
            if f"{k},none" in r:
                m[k] = r[f"{k},none"]
                se = r.get(f"{k}_stderr,none")
                m[f"{k}_stderr"] = None if se in (None, "N/A") else se
        return m

    if args.full:
        path = outdir / "full_splits.json"
        prev = json.loads(path.read_text()) if path.exists() else {"tasks": {}}
        done = prev.get("tasks", {})
        for t in tasks:
            done[t] = metrics_of(t) | {"seconds_all_tasks_in_run": round(seconds, 1), "run_tasks": tasks}
        body = {
            "settings": settings | {"limit": None},
            "tasks": {t: done[t] for t in ALL_TASKS if t in done},
            "not_run": [t for t in ALL_TASKS if t not in done],
        }
        path.write_text(json.dumps(body, indent=1) + "\n")
        print(f"wrote {path}", file=sys.stderr)
        return 0

    for t in tasks:
        task = task_dict[t]
        samples = sorted(out["samples"][t], key=lambda s: s["doc_id"])
        docs = []
        for s in samples:
            # resps: one [(loglikelihood, is_greedy)] per request, in choice order.
            resps = [r[0] for r in s["resps"]]
            lls = [float(r[0]) for r in resps]
            greedy = [bool(r[1]) for r in resps]
            filtered = [float(r[0]) for r in s["filtered_resps"]]
            assert filtered == lls, (t, s["doc_id"])
            choices = task.doc_to_choice(s["doc"])
            gold = gold_index(task, s["doc"])
            pred = max(range(len(lls)), key=lambda i: (lls[i], -i))  # numpy argmax (first max)
            rec = {
                "doc": int(s["doc_id"]),
                "loglikelihoods": lls,
                "is_greedy": greedy,
                "pred": pred,
                "gold": gold,
                "acc": float(s["acc"]),
            }
            if "acc_norm" in s:
                norm = [ll / len(c) for ll, c in zip(lls, choices)]
                rec["pred_norm"] = max(range(len(norm)), key=lambda i: (norm[i], -i))
                rec["acc_norm"] = float(s["acc_norm"])
            assert rec["acc"] == float(pred == gold), (t, s["doc_id"])
            docs.append(rec)
        m = metrics_of(t)
        # Cross-check lm-eval's aggregate against the per-doc records.
        assert abs(m["acc"] - sum(d["acc"] for d in docs) / len(docs)) < 1e-12
        assert abs(m["acc_stderr"] - mean_stderr([d["acc"] for d in docs])) < 1e-12
        body = {
            "settings": settings | {"task": t, "limit": args.limit, "split": task.config.test_split or task.config.validation_split},
            "metrics": m,
            "docs": docs,
        }
        path = outdir / f"{t}.json"
        path.write_text(json.dumps(body, indent=None, separators=(",", ":")).replace('},{"doc"', '},\n{"doc"') + "\n")
        print(f"wrote {path}: acc {m['acc']:.4f}" + (f" acc_norm {m['acc_norm']:.4f}" if "acc_norm" in m else ""), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
