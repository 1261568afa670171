"""Where does run-to-run variation in `dlzoo verify gpt --preset 124M` come from?

    python benchmarks/verify_stability.py [--preset 124M] [--runs 3] [--out DIR]
    python benchmarks/verify_stability.py --noise 124M medium [--frameworks torch flax]

Writes GPT weights of the preset (verify's random weights, ``weights.random_tensors``, seed 0)
once in the published layout, then
runs transformers' GPT2LMHeadModel on verify's sample inputs in FRESH processes (each verify run
is one), under every combination of attention path (sdpa, eager) and torch thread count (1, 2,
and the default), several times each. It reports, for each setting, the spread across runs, and
for every run the max abs difference against a float64 evaluation of the same model (the exact
answer up to 1e-12), relative to the logits' scale; and dlzoo's own torch model likewise.

``--noise PRESET...`` measures, in one process per preset, how far float32 evaluations are from
the float64 one as models grow: transformers in float32 and every framework named, each against
transformers in float64 (what ``dlzoo verify`` compares with), relative to the output scale.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

CHILD = r"""
import os, sys, json
import numpy as np, torch, transformers
folder, attn, threads, dtype, out = sys.argv[1:6]
if threads != "default":
    torch.set_num_threads(int(threads))
transformers.logging.set_verbosity_error()
model = transformers.GPT2LMHeadModel.from_pretrained(folder, attn_implementation=attn).eval()
if dtype == "float64":
    model = model.double()
inputs = np.load(os.path.join(folder, "inputs.npy"))
with torch.no_grad():
    logits = model(input_ids=torch.from_numpy(inputs.astype(np.int64))).logits
np.save(out, logits.double().numpy())
print(json.dumps({"threads": torch.get_num_threads(), "attn": model.config._attn_implementation}))
"""


def child(folder: Path, attn: str, threads: str, dtype: str, out: Path) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(folder), attn, threads, dtype, str(out)], capture_output=True, text=True, check=True
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def noise(presets: list[str], frameworks: list[str]) -> None:
    import gc

    from dlzoo.zoo import load, weights
    from dlzoo.zoo.configs import get_config
    from dlzoo.zoo.reference import sample_inputs, transformers_model, transformers_outputs

    print(f"{'preset':8} {'params':>12} {'scale':>8}  {'implementation':22} {'max abs vs fp64':>16} {'relative':>9}")
    for preset in presets:
        config = get_config("gpt", preset)
        tensors = weights.random_tensors("gpt", config, 0)  # what verify draws
        inputs = sample_inputs("gpt", config, seed=0)
        model = transformers_model("gpt", config, tensors)
        fp32 = transformers_outputs("gpt", model, inputs)["logits"].astype(np.float64)
        exact = transformers_outputs("gpt", model.double(), inputs)["logits"]
        del model
        gc.collect()
        scale = float(np.max(np.abs(exact)))
        rows = [("transformers float32", fp32)]
        for framework in frameworks:
            handle = load("gpt", framework, config=config, weights=tensors)
            rows.append((framework, handle.apply(inputs)["logits"].astype(np.float64)))
            del handle
            gc.collect()
        params = sum(v.size for v in tensors.values())
        for name, got in rows:
            d = float(np.max(np.abs(got - exact)))
            print(f"{preset:8} {params:12,d} {scale:8.3f}  {name:22} {d:16.3e} {d / max(1.0, scale):9.2e}", flush=True)
        del tensors, rows
        gc.collect()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="124M")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", default=None)
    parser.add_argument("--noise", nargs="+", default=None, metavar="PRESET")
    parser.add_argument("--frameworks", nargs="+", default=["torch", "flax"])
    args = parser.parse_args()
    if args.noise:
        return noise(args.noise, args.frameworks)

    from dlzoo.zoo import hub, load, weights
    from dlzoo.zoo.configs import get_config
    from dlzoo.zoo.reference import sample_inputs

    work = Path(args.out or tempfile.mkdtemp(prefix="verify-stability-"))
    work.mkdir(parents=True, exist_ok=True)
    folder = work / "model"
    config = get_config("gpt", args.preset)
    handle = load("gpt", "torch", config=config, weights=weights.random_tensors("gpt", config, 0))
    inputs = sample_inputs("gpt", config, seed=0)["input_ids"]
    if not folder.exists():
        hub.export("gpt", config, handle.state_dict(), folder)
    np.save(folder / "inputs.npy", inputs)
    ours = handle.apply({"input_ids": inputs})["logits"].astype(np.float64)

    exact_path = work / "float64.npy"
    child(folder, "eager", "default", "float64", exact_path)
    exact = np.load(exact_path)
    scale = float(np.max(np.abs(exact)))
    print(f"preset {args.preset}: logits scale max|x| = {scale:.4f}; cpu count {os.cpu_count()}")
    rows = [("dlzoo torch (in-process)", float(np.max(np.abs(ours - exact))), None)]
    runs: dict[tuple, list[np.ndarray]] = {}
    for attn in ("sdpa", "eager"):
        for threads in ("1", "2", "default"):
            for run in range(args.runs):
                path = work / f"{attn}-{threads}-{run}.npy"
                info = child(folder, attn, threads, "float32", path)
                got = np.load(path)
                runs.setdefault((attn, threads), []).append(got)
                rows.append(
                    (
                        f"transformers {attn:5} threads={info['threads']} run {run}",
                        float(np.max(np.abs(got - exact))),
                        float(np.max(np.abs(got - ours))),
                    )
                )
    print(f"{'run':42} {'vs fp64':>10} {'rel':>9} {'vs dlzoo torch':>15}")
    for name, d, vs_ours in rows:
        print(f"{name:42} {d:10.3e} {d / scale:9.2e} {'' if vs_ours is None else f'{vs_ours:15.3e}'}")
    print("spread across fresh processes (max abs diff between runs of one setting):")
    for key, outs in runs.items():
        spread = max(float(np.max(np.abs(a - outs[0]))) for a in outs)
        print(f"  {key[0]:5} threads={key[1]:7} {spread:.3e}")
    settings = list(runs)
    print("between settings (run 0 of each):")
    for i, a in enumerate(settings):
        for b in settings[i + 1 :]:
            print(f"  {a} vs {b}: {float(np.max(np.abs(runs[a][0] - runs[b][0]))):.3e}")


if __name__ == "__main__":
    main()
