"""Where does run-to-run variation in `dlzoo verify gpt --preset 124M` come from?

    python benchmarks/verify_stability.py [--preset 124M] [--runs 3] [--out DIR]

Writes GPT weights of the preset (dlzoo torch init, seed 0) once in the published layout, then
runs transformers' GPT2LMHeadModel on verify's sample inputs in FRESH processes (each verify run
is one), under every combination of attention path (sdpa, eager) and torch thread count (1, 2,
and the default), several times each. It reports, for each setting, the spread across runs, and
for every run the max abs difference against a float64 evaluation of the same model (the exact
answer up to 1e-12), relative to the logits' scale; and dlzoo's own torch model likewise.
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
    result = subprocess.run([sys.executable, "-c", CHILD, str(folder), attn, threads, dtype, str(out)],
                            capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="124M")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    from dlzoo.zoo import hub, load
    from dlzoo.zoo.configs import get_config
    from dlzoo.zoo.reference import sample_inputs

    work = Path(args.out or tempfile.mkdtemp(prefix="verify-stability-"))
    folder = work / "model"
    config = get_config("gpt", args.preset)
    handle = load("gpt", "torch", config=config, seed=0)
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
                rows.append((f"transformers {attn:5} threads={info['threads']} run {run}",
                             float(np.max(np.abs(got - exact))),
                             float(np.max(np.abs(got - ours)))))
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
        for b in settings[i + 1:]:
            print(f"  {a} vs {b}: {float(np.max(np.abs(runs[a][0] - runs[b][0]))):.3e}")


if __name__ == "__main__":
    main()
