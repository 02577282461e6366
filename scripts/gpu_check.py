#!/usr/bin/env python3
"""The GPU kit's check: is repro right and fast on this node's CUDA, with this node's PyTorch?

Run through the kit's `gpu_check.sh`, which picks the Python whose torch repro should use. This
script needs only that torch and the standard library. Sections, each bounded in time:

  fidelity  llama-tiny and opt-tiny pruned on the device in f32 (magnitude, Wanda unstructured and
            2:4, SparseGPT): masks against the CPU masks computed when the kit was built (a SHA-256
            of each pruned layer's zero pattern), perplexity within 1e-4 relative; f16 and bf16
            within 1% of f32; a streamed run identical to the resident one; SparseGPT pruned twice
            giving the same bytes (a sweep resumes a stopped run's finished evaluation parts only
            for bit-identical weights, README "Sweeps, records and reports").
  scale     a random LLaMA-7B-shaped f16 checkpoint written here, pruned with Wanda and SparseGPT
            at 50% on 128 x 2048 calibration tokens: prune and calibration seconds (the paper's
            Table 4), peak device memory, WikiText-2 tokens per second at seqlen 2048.
  kernels   `repro kernels`: dense vs 2:4 sparse (cuSPARSELt) f16 linear layers at LLaMA-65B shapes
            (Table 5).
  zero-shot the seven tasks' first documents on llama-tiny and opt-tiny in f32: every choice's
            loglikelihood within 1e-4 of the CPU's (`--samples`), the same predictions wherever the
            CPU's margin exceeds twice that; streamed within 1e-5 of resident; f16's agreement
            with f32.
            On the scale checkpoint: HellaSwag's throughput in the tokens lm-eval's rows would
            compute per second, against perplexity's tokens per second (where nothing is shared).

Writes summary.json and summary.md into OUTDIR and prints the Markdown. `--make-expected` (used by
scripts/gpu_kit.sh) runs the fidelity and zero-shot cases on the CPU and writes the kit's expected.json instead.
"""
import argparse
import ctypes
import hashlib
import json
import lzma
import os
import re
import shutil
import struct
import subprocess
import sys
import threading
import time

import torch

PRUNED = re.compile(r"\.layers\.\d+\..*(proj|fc1|fc2)\.weight$")
ST_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
# (model, method, pattern): the fidelity cases; masks must match for the data-free and Wanda
# metrics, SparseGPT is held to its perplexity (its updates round differently on a GPU).
CASES = [(m, meth, pat) for m in ("llama-tiny", "opt-tiny")
         for meth, pat in (("magnitude", "unstructured"), ("wanda", "unstructured"), ("wanda", "2:4"), ("sparsegpt", "unstructured"))]
MASKS_MUST_MATCH = ("magnitude", "wanda")
TASKS = "boolq,rte,hellaswag,winogrande,arc_easy,arc_challenge,openbookqa"
ZERO_SHOT_LIMIT = "30"  # documents per task in the fidelity runs
LL_TOL = 1e-4  # tests/golden_zeroshot.rs's tolerance against lm-eval itself


def case_name(model, method, pattern, dtype="f32", stream="off"):
    return f"{model}-{method}-{pattern.replace(':', 'of')}-{dtype}-stream_{stream}"


class Kit:
    def __init__(self, kit_dir, out_dir, device, smoke):
        self.dir, self.out, self.device, self.smoke = kit_dir, out_dir, device, smoke
        os.makedirs(os.path.join(out_dir, "logs"), exist_ok=True)
        self.repro = self.unpack_binary()
        lib = os.path.join(os.path.dirname(torch.__file__), "lib")
        self.env = dict(os.environ, LD_LIBRARY_PATH=lib + os.pathsep + os.environ.get("LD_LIBRARY_PATH", ""),
                        REPRO_HUB_MIRROR=os.path.join(kit_dir, "fixtures"), HF_HUB_OFFLINE="1")

    def unpack_binary(self):
        packed = os.path.join(self.dir, "bin", "repro.xz")
        exe = os.path.join(self.out, "bin", "repro")
        os.makedirs(os.path.dirname(exe), exist_ok=True)
        with lzma.open(packed) as src, open(exe + ".tmp", "wb") as dst:
            shutil.copyfileobj(src, dst)
        os.chmod(exe + ".tmp", 0o755)
        os.replace(exe + ".tmp", exe)
        return exe

    def repro_json(self, name, args, timeout):
        """Runs repro with --json; returns (result or None, error text)."""
        log = os.path.join(self.out, "logs", name + ".log")
        cmd = [self.repro] + args + ["--json"]
        t = time.time()
        try:
            p = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return None, f"timed out after {timeout} s"
        with open(log, "w") as f:
            f.write(" ".join(cmd) + f"\n# exit {p.returncode} after {time.time() - t:.1f} s\n--- stdout\n{p.stdout}\n--- stderr\n{p.stderr}")
        if p.returncode != 0:
            tail = [line for line in p.stderr.strip().splitlines() if line.strip()][-3:]
            return None, f"exit {p.returncode}: " + " | ".join(tail)
        return json.loads(p.stdout.strip().splitlines()[-1]), ""


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        b, e = meta["data_offsets"]
        yield name, torch.frombuffer(bytearray(data[b:e]), dtype=ST_DTYPES[meta["dtype"]]).view(meta["shape"])


def tensor_sha256(t):
    t = t.contiguous()
    return hashlib.sha256(ctypes.string_at(t.data_ptr(), t.numel() * t.element_size())).hexdigest()


def layer_hashes(save_dir):
    """SHA-256 of the zero pattern of every pruned layer of a saved checkpoint, by tensor name, and
    one SHA-256 over the bytes of all of them."""
    index = os.path.join(save_dir, "model.safetensors.index.json")
    files = sorted(set(json.load(open(index))["weight_map"].values())) if os.path.exists(index) else ["model.safetensors"]
    masks, weights = {}, {}
    for file in files:
        for name, t in read_safetensors(os.path.join(save_dir, file)):
            if PRUNED.search(name):
                masks[name] = tensor_sha256((t == 0).to(torch.uint8))
                weights[name] = tensor_sha256(t)
    return masks, hashlib.sha256("".join(weights[n] for n in sorted(weights)).encode()).hexdigest()


def prune_args(model, method, pattern, device, dtype, stream, save):
    args = ["prune", "--model", model, "--method", method, "--pattern", pattern, "--sparsity", "0.5",
            "--calib", "c4:c4-format-sample", "--nsamples", "16", "--eval", "wikitext2",
            "--max-windows", "4", "--device", device, "--dtype", dtype, "--stream", stream]
    return args + (["--save", save] if save else [])


def run_case(kit, model, method, pattern, dtype="f32", stream="off", hashes=True):
    name = case_name(model, method, pattern, dtype, stream)
    save = os.path.join(kit.out, "saved", name) if hashes else None
    res, err = kit.repro_json(name, prune_args(model, method, pattern, kit.device, dtype, stream, save), 300)
    if res is None:
        return {"case": name, "error": err}
    row = {"case": name, "ppl": res["ppl"]["wikitext2"], "sparsity": res["sparsity_actual"], "prune_seconds": res["prune_seconds"]}
    if save:
        row["masks"], row["weights"] = layer_hashes(save)
        shutil.rmtree(save, ignore_errors=True)
    return row


def rel(a, b):
    return abs(a - b) / max(abs(b), 1e-12)


def fidelity(kit, expected, deadline):
    rows, f32 = [], {}
    for model, method, pattern in CASES:
        if time.time() > deadline:
            rows.append({"case": case_name(model, method, pattern), "error": "skipped: time budget"})
            continue
        r = run_case(kit, model, method, pattern)
        exp = expected["cases"].get(r["case"])
        if "error" not in r and exp:
            differing = [n for n, h in exp["masks"].items() if r["masks"].get(n) != h]
            r["masks_differing_layers"] = len(differing)
            r["ppl_cpu"] = exp["ppl"]
            r["ppl_rel_diff"] = rel(r["ppl"], exp["ppl"])
            checks = [r["ppl_rel_diff"] <= 1e-4]
            if method in MASKS_MUST_MATCH:
                checks.append(not differing)
            r["ok"] = all(checks)
            f32[(model, method, pattern)] = r
        rows.append(r)
    # Half precision against the device's own f32, and streamed against resident.
    for model in ("llama-tiny", "opt-tiny"):
        base = f32.get((model, "wanda", "unstructured"))
        if base is None:
            continue  # its f32 case failed already
        for dtype, stream in (("f16", "off"), ("bf16", "off"), ("f32", "on")):
            if time.time() > deadline:
                rows.append({"case": case_name(model, "wanda", "unstructured", dtype, stream), "error": "skipped: time budget"})
                continue
            r = run_case(kit, model, "wanda", "unstructured", dtype=dtype, stream=stream, hashes=stream == "on")
            if "error" in r:
                rows.append(r)
                continue
            if stream == "on":
                r["identical_to_resident"] = r["ppl"] == base["ppl"] and (r["masks"], r["weights"]) == (base["masks"], base["weights"])
                r["ok"] = r["identical_to_resident"]
            else:
                r["ppl_f32"] = base["ppl"]
                r["ppl_rel_diff"] = rel(r["ppl"], base["ppl"])
                r["ok"] = r["ppl_rel_diff"] <= 0.01
            rows.append(r)
    # Pruning again on this device must give the same bytes, or a stopped sweep run could never
    # resume its finished parts here. SparseGPT's updates are the most exposed to kernel choices.
    base = f32.get(("llama-tiny", "sparsegpt", "unstructured"))
    if base is not None and time.time() <= deadline:
        r = run_case(kit, "llama-tiny", "sparsegpt", "unstructured")
        r["case"] += " (again)"
        if "error" not in r:
            r["identical_weights"] = r["weights"] == base["weights"]
            r["ok"] = r["identical_weights"] and r["ppl"] == base["ppl"]
        rows.append(r)
    elif base is not None:
        rows.append({"case": case_name("llama-tiny", "sparsegpt", "unstructured") + " (again)", "error": "skipped: time budget"})
    for r in rows:
        r.pop("masks", None)
        r.pop("weights", None)
        r.setdefault("ok", False)
    return rows


def zero_shot_run(kit, name, model, device, dtype="f32", stream="off", limit=ZERO_SHOT_LIMIT, tasks=TASKS, timeout=300):
    """`repro eval` on zero-shot tasks; returns (run JSON, samples) or (None, error)."""
    samples = os.path.join(kit.out, "samples", name + ".jsonl")
    args = ["eval", "--model", model, "--tasks", tasks, "--limit", limit, "--batch-size", "8",
            "--device", device, "--dtype", dtype, "--stream", stream, "--samples", samples]
    res, err = kit.repro_json("zero-shot-" + name, args, timeout)
    if res is None:
        return None, err
    with open(samples) as f:
        return res, [json.loads(line) for line in f]


def compare_samples(got, want):
    """Largest loglikelihood difference, and the documents whose prediction differs although the
    reference's two best choices are further apart than the tolerance."""
    max_diff, flipped = 0.0, []
    for g, w in zip(got, want):
        max_diff = max([max_diff] + [abs(a - b) for a, b in zip(g["loglikelihoods"], w["loglikelihoods"])])
        top = sorted(w["loglikelihoods"], reverse=True)
        if g["prediction"] != w["prediction"] and top[0] - top[1] > 2 * LL_TOL:
            flipped.append(f'{w["task"]}/{w["doc"]}')
    return max_diff, flipped


def zero_shot_fidelity(kit, expected, deadline):
    rows = []
    for model in ("llama-tiny", "opt-tiny"):
        want = expected.get("zero_shot", {}).get(model)
        runs = [("f32", "off"), ("f32", "on"), ("f16", "off")] if kit.device != "cpu" else [("f32", "off"), ("f32", "on")]
        base = None
        for dtype, stream in runs:
            name = f"{model}-{dtype}-stream_{stream}"
            if time.time() > deadline:
                rows.append({"case": name, "error": "skipped: time budget"})
                continue
            res, got = zero_shot_run(kit, name, model, kit.device, dtype, stream)
            if res is None:
                rows.append({"case": name, "error": got})
                continue
            r = {"case": name, "seconds": res["zero_shot_seconds"], "mean_acc": res["zero_shot_mean_acc"]}
            if (dtype, stream) == ("f32", "off"):
                base = got
                if want is None or len(want) != len(got):
                    r["error"] = "no CPU reference of this length in expected.json: rebuild the kit"
                else:
                    r["ll_max_diff"], flipped = compare_samples(got, want)
                    r["predictions_flipped"] = flipped
                    r["ok"] = r["ll_max_diff"] <= LL_TOL and not flipped
            elif base is not None and stream == "on":
                r["ll_max_diff"], flipped = compare_samples(got, base)
                r["predictions_flipped"] = flipped
                r["ok"] = r["ll_max_diff"] <= 1e-5 and not flipped
            elif base is not None:
                same = sum(g["prediction"] == b["prediction"] for g, b in zip(got, base))
                r["ll_max_diff"], _ = compare_samples(got, base)
                r["agreement_with_f32"] = same / len(base)
                # Half precision is held to agreement, not to f32's loglikelihoods.
                r["ok"] = r["agreement_with_f32"] >= 0.9
            rows.append(r)
    for r in rows:
        r.setdefault("ok", False)
    return rows


def zero_shot_scale(kit, model, dtype, timeout):
    """HellaSwag on the scale checkpoint: seconds, tokens computed, and the tokens per second of
    lm-eval's rows (one per request, context repeated), which is what sharing buys on this device."""
    res, samples = zero_shot_run(kit, "scale-hellaswag", model, kit.device, dtype, "off",
                                 limit="40" if kit.smoke else "400", tasks="hellaswag", timeout=timeout)
    if res is None:
        return {"case": "zero-shot hellaswag", "error": samples}
    t = res["zero_shot_tokens"]["hellaswag"]
    secs = res["zero_shot_seconds"]
    return {"case": "zero-shot hellaswag", "ok": True, "docs": len(samples), "zero_shot_seconds": secs,
            "tokens_computed": t["computed"], "tokens_lm_eval_rows": t["unshared"],
            "padding_fraction": res["zero_shot_padding_fraction"],
            "computed_tokens_per_second": t["computed"] / secs, "lm_eval_row_tokens_per_second": t["unshared"] / secs,
            "load_seconds": res["load_seconds"]}


class DeviceMemory:
    """Peak device memory used while a command runs, polled from the driver (nvidia-smi when
    present, else torch's view of the device), minus what was in use before it started."""

    def __init__(self, device):
        self.cuda = device.startswith("cuda")
        self.index = int(device.split(":")[1]) if ":" in device else 0
        self.peak = 0
        self.stop = threading.Event()

    def used(self):
        if shutil.which("nvidia-smi"):
            p = subprocess.run(["nvidia-smi", f"--id={self.index}", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                               capture_output=True, text=True)
            if p.returncode == 0:
                return int(p.stdout.strip().splitlines()[0]) * 2**20
        free, total = torch.cuda.mem_get_info(self.index)
        return total - free

    def __enter__(self):
        if self.cuda:
            self.base = self.used()
            threading.Thread(target=self.poll, daemon=True).start()
        return self

    def poll(self):
        while not self.stop.wait(0.2):
            self.peak = max(self.peak, self.used() - self.base)

    def __exit__(self, *exc):
        self.stop.set()


def scale(kit, deadline):
    shape = (["--hidden", "256", "--layers", "2", "--intermediate", "688", "--heads", "8"] if kit.smoke else [])
    model = os.path.join(kit.out, "llama-smoke-shape" if kit.smoke else "llama-7b-shape")
    t = time.time()
    gen = subprocess.run([sys.executable, os.path.join(kit.dir, "make_random_llama.py"), model,
                          "--tokenizer", os.path.join(kit.dir, "fixtures", "tokenizers", "llama-2"), "--dtype", "f16",
                          "--device", "cuda" if kit.device.startswith("cuda") else "cpu"] + shape,
                         capture_output=True, text=True)
    if gen.returncode != 0:
        return [{"case": "generate", "error": gen.stderr.strip().splitlines()[-1:]}]
    rows = [{"case": "generate", "ok": True, "seconds": time.time() - t, "model": model}]
    nsamples, seqlen, windows = ("4", "256", "4") if kit.smoke else ("128", "2048", "40")
    # The random model's f16 weights run in f32 on the CPU (f16 arithmetic is slow there).
    dtype = "f32" if kit.device == "cpu" else "f16"
    # Table 4's two methods, then the end-to-end effect of 2:4 sparse kernels on evaluation
    # (magnitude 2:4 needs no calibration; the same pruned model with and without them).
    runs = [("wanda", ["--method", "wanda"]), ("sparsegpt", ["--method", "sparsegpt"])]
    if not kit.smoke:
        runs += [("2:4 dense kernels", ["--method", "magnitude", "--pattern", "2:4"]),
                 ("2:4 sparse kernels", ["--method", "magnitude", "--pattern", "2:4", "--sparse-kernels"])]
    for case, method_args in runs:
        if time.time() > deadline:
            rows.append({"case": case, "error": "skipped: time budget"})
            continue
        args = ["prune", "--model", model, "--calib", "c4:c4-format-sample", "--nsamples", nsamples, "--seqlen", seqlen,
                "--eval", "wikitext2", "--max-windows", windows, "--device", kit.device, "--dtype", dtype] + method_args
        with DeviceMemory(kit.device) as mem:
            res, err = kit.repro_json("scale-" + case.replace(" ", "-").replace(":", "of"), args, max(60, int(deadline - time.time())))
        if res is None:
            rows.append({"case": case, "error": err})
            continue
        rows.append({"case": case, "ok": True, "prune_seconds": res["prune_seconds"],
                     "calibration_forward_seconds": res["calibration_forward_seconds"], "load_seconds": res["load_seconds"],
                     "eval_tokens_per_second": res.get("eval_tokens_per_second"), "ppl": res["ppl"]["wikitext2"],
                     "peak_device_bytes": mem.peak if mem.cuda else None, "peak_rss_bytes": res.get("peak_rss_bytes"),
                     "total_seconds": res["total_seconds"]})
    if time.time() > deadline:
        rows.append({"case": "zero-shot hellaswag", "error": "skipped: time budget"})
    else:
        rows.append(zero_shot_scale(kit, model, dtype, max(60, int(deadline - time.time()))))
    shutil.rmtree(model, ignore_errors=True)
    return rows


def kernels(kit, deadline):
    args = ["kernels", "--device", kit.device] + (["--small"] if kit.smoke else [])
    res, err = kit.repro_json("kernels", args, max(60, int(deadline - time.time())))
    return res if res is not None else {"error": err}


def markdown(summary):
    lines = [f"# repro GPU check ({summary['mode']})", "",
             f"- device: {summary['device']} ({summary['device_name']}), torch {summary['torch']} from {summary['torch_lib']}",
             f"- kit built against torch {summary['kit']['torch']} at repro {summary['kit']['commit']}; started {summary['started']}",
             f"- verdict: **{'PASS' if summary['pass'] else 'FAIL'}** ({summary['seconds']:.0f} s)", "",
             "## Fidelity (device vs CPU)", "", "| case | ok | ppl | reference ppl | rel. diff | masks differing (layers) |",
             "|---|---|---|---|---|---|"]
    for r in summary["fidelity"]:
        ref = r.get("ppl_cpu", r.get("ppl_f32", ""))
        diff = f"{r['ppl_rel_diff']:.2e}" if "ppl_rel_diff" in r else ""
        masks = r.get("masks_differing_layers", "same bytes" if r.get("identical_to_resident") or r.get("identical_weights") else "")
        lines.append(f"| {r['case']} | {'yes' if r['ok'] else 'NO'} | {r.get('ppl', r.get('error', ''))} | {ref} | {diff} | {masks} |")
    lines += ["", "## Scale (random LLaMA-shaped f16 checkpoint)", "",
              "| run | prune s | calibration forward s | load s | eval tok/s | ppl | peak device GiB | peak RSS GiB |", "|---|---|---|---|---|---|---|---|"]
    for r in summary["scale"]:
        if "error" in r:
            lines.append(f"| {r['case']} | {r['error']} | | | | | | |")
        elif r["case"] not in ("generate", "zero-shot hellaswag"):
            gib = lambda b: f"{b / 2**30:.2f}" if b else "-"  # noqa: E731
            lines.append(f"| {r['case']} | {r['prune_seconds']:.2f} | {r['calibration_forward_seconds']:.2f} | {r['load_seconds']:.1f} | "
                         f"{r['eval_tokens_per_second']:.0f} | {r['ppl']:.4g} | {gib(r['peak_device_bytes'])} | {gib(r['peak_rss_bytes'])} |")
    lines += ["", "## Zero-shot (seven tasks' first documents; f32 vs CPU, streamed vs resident, f16 vs f32)", "",
              "| case | ok | seconds | mean acc | max loglikelihood diff | predictions flipped / f16 agreement |", "|---|---|---|---|---|---|"]
    for r in summary["zero_shot"]:
        if "error" in r:
            lines.append(f"| {r['case']} | NO | {r['error']} | | | |")
            continue
        diff = f"{r['ll_max_diff']:.2e}" if "ll_max_diff" in r else ""
        agree = f"{100 * r['agreement_with_f32']:.1f}% agree" if "agreement_with_f32" in r else ", ".join(r.get("predictions_flipped", [])) or "none"
        lines.append(f"| {r['case']} | {'yes' if r['ok'] else 'NO'} | {r['seconds']:.1f} | {r['mean_acc']:.4f} | {diff} | {agree} |")
    for r in summary["scale"]:
        if r["case"] == "zero-shot hellaswag" and "error" not in r:
            lines += ["", f"Scale checkpoint, HellaSwag's first {r['docs']} documents at batch 8: {r['zero_shot_seconds']:.1f} s, "
                      f"{r['tokens_computed']} tokens computed ({100 * r['padding_fraction']:.2f}% padding) where lm-eval's rows hold "
                      f"{r['tokens_lm_eval_rows']}: {r['computed_tokens_per_second']:.0f} computed tokens/s, "
                      f"{r['lm_eval_row_tokens_per_second']:.0f} lm-eval-row tokens/s (compare perplexity's eval tok/s above)."]
    k = summary["kernels"]
    lines += ["", "## Kernels: dense vs 2:4 sparse linear layers (Table 5)", ""]
    if "error" in k:
        lines.append(f"error: {k['error']}")
    else:
        lines += [f"sparse backend: {k['sparse_backend']}", "", "| weight (out x in) | tokens | dense ms | 2:4 ms | speedup |", "|---|---|---|---|---|"]
        for r in k["rows"]:
            sp = f"{r['sparse_ms']:.4f}" if r.get("sparse_ms") is not None else "-"
            su = f"{r['speedup']:.2f}x" if r.get("speedup") else "-"
            lines.append(f"| {r['out']} x {r['in']} | {r['tokens']} | {r['dense_ms']:.4f} | {sp} | {su} |")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description="repro's GPU kit check")
    ap.add_argument("out")
    ap.add_argument("--kit", default=os.path.dirname(os.path.abspath(__file__)))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--smoke", action="store_true", help="small shapes, for a CPU run of the kit")
    ap.add_argument("--make-expected", action="store_true", help="write the kit's expected.json from CPU runs")
    ap.add_argument("--budget", type=float, default=480, help="seconds for the whole check")
    a = ap.parse_args()
    start = time.time()
    if a.make_expected:
        kit = Kit(a.kit, a.out, "cpu", smoke=False)
        cases = {}
        for model, method, pattern in CASES:
            r = run_case(kit, model, method, pattern)
            if "error" in r:
                sys.exit(f"expected results: {r['case']} failed: {r['error']}")
            cases[r["case"]] = {"ppl": r["ppl"], "masks": r["masks"]}
        zero_shot = {}
        for model in ("llama-tiny", "opt-tiny"):
            res, samples = zero_shot_run(kit, model + "-expected", model, "cpu")
            if res is None:
                sys.exit(f"expected results: zero-shot on {model} failed: {samples}")
            zero_shot[model] = [{k: d[k] for k in ("task", "doc", "loglikelihoods", "prediction")} for d in samples]
        info = json.load(open(os.path.join(a.kit, "kit.json")))
        json.dump(dict(info, cases=cases, zero_shot=zero_shot), open(os.path.join(a.kit, "expected.json"), "w"), indent=1)
        print(f"expected.json: {len(cases)} CPU pruning cases, zero-shot on {len(zero_shot)} models")
        return
    kit = Kit(a.kit, a.out, a.device, a.smoke)
    expected = json.load(open(os.path.join(a.kit, "expected.json")))
    deadline = start + a.budget
    summary = {"mode": "cpu smoke" if a.smoke else "gpu", "device": a.device, "torch": torch.__version__,
               "torch_lib": os.path.join(os.path.dirname(torch.__file__), "lib"), "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(start)),
               "device_name": torch.cuda.get_device_name(0) if a.device.startswith("cuda") and torch.cuda.is_available() else "cpu",
               "kit": {k: expected[k] for k in ("torch", "commit")}}
    # The smoke run checks plumbing, not speed: its fidelity section may take most of its budget.
    summary["fidelity"] = fidelity(kit, expected, start + a.budget * (0.55 if a.smoke else 0.4))
    summary["zero_shot"] = zero_shot_fidelity(kit, expected, start + a.budget * (0.65 if a.smoke else 0.5))
    summary["scale"] = scale(kit, start + a.budget * 0.85)
    summary["kernels"] = kernels(kit, deadline)
    summary["seconds"] = time.time() - start
    summary["pass"] = (all(r.get("ok") for r in summary["fidelity"] + summary["zero_shot"] + summary["scale"])
                       and "error" not in summary["kernels"])
    json.dump(summary, open(os.path.join(a.out, "summary.json"), "w"), indent=1)
    md = markdown(summary)
    open(os.path.join(a.out, "summary.md"), "w").write(md)
    print(md)
    sys.exit(0 if summary["pass"] else 1)


if __name__ == "__main__":
    main()
