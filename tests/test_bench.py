"""dlzoo bench: every implementation steps on the same weights; the report's schema and its
refusals. Speed itself is measured by running the command, never asserted in a test."""

import importlib.util
import json
import mmap
import resource
import subprocess
import sys

import numpy as np
import pytest

from dlzoo.zoo import ZooError, installed_frameworks, load
from dlzoo.zoo.bench import allocator, run
from dlzoo.zoo.frameworks import backend

FRAMEWORKS = installed_frameworks()


@pytest.mark.parametrize("framework", FRAMEWORKS + (["keras-fit"] if "keras" in FRAMEWORKS else []))
@pytest.mark.parametrize("arch", ["gpt", "resnet"])
def test_train_step_is_a_real_step(framework, arch):
    """The benchmarked training step descends its objective (dropout off, so it is
    deterministic): a step that skipped the backward pass or the update would not."""
    overrides = {"dropout": 0.0, "attention_dropout": 0.0} if arch == "gpt" else {}
    name, kwargs = ("keras", {"fit": True}) if framework == "keras-fit" else (framework, {})
    handle = load(arch, name, config="tiny", seed=1, **overrides)
    if arch == "gpt":
        inputs = {"input_ids": (np.arange(16, dtype=np.int32).reshape(2, 8) * 7) % 256}
    else:
        inputs = {"pixel_values": np.random.default_rng(0).standard_normal((4, 32, 32, 3)).astype(np.float32)}
    out = handle.apply(inputs)
    cotangents = {k: np.random.default_rng(1).standard_normal(v.shape).astype(np.float32) for k, v in out.items()}
    step = backend(name).benchmark_step(arch, handle.config, handle.native, inputs, cotangents, mode="train", **kwargs)
    values = [float(np.asarray(step())) for _ in range(4)]
    assert values[0] > values[1] > values[2] > values[3], values


def test_report_schema_and_interleaving():
    chosen = [f for f in ("torch", "equinox") if f in FRAMEWORKS] or FRAMEWORKS[:1]
    report = run("gpt", "tiny", batch=2, seq_len=8, implementations=chosen, mode="forward", trials=3)
    assert [r["implementation"] for r in report["results"]] == chosen
    assert report["inputs"] == {"input_ids": [2, 8]}
    assert report["ceiling_gflops"] > 0 and report["flops_per_step"] > 0
    assert min(r["ratio_to_fastest"] for r in report["results"]) == 1.0
    for row in report["results"]:
        assert row["median_s"] > 0 and row["compile_s"] > 0 and row["iqr_s"][0] <= row["iqr_s"][1]
        assert row["tokens_per_s"] == pytest.approx(16 / row["median_s"])
        assert row["gflops"] == pytest.approx(report["flops_per_step"] / row["median_s"] / 1e9)
    json.dumps(report)  # the --json document is plain JSON


def test_ceiling_is_measured_in_every_round(monkeypatch):
    """The matmul ceiling runs once per round beside the steps (and once to warm up), so the
    steps' fraction of it compares times taken under the same load; the reported ceiling is
    2 n^3 over the median of those rounds."""
    import dlzoo.zoo.bench as bench

    calls, real = [], bench.ceiling_matmul

    def counting(size=bench.CEILING_SIZE):
        run, library = real(64)
        return (lambda: calls.append(run())), library

    monkeypatch.setattr(bench, "ceiling_matmul", counting)
    monkeypatch.setattr(bench, "CEILING_SIZE", 64)
    chosen = FRAMEWORKS[:1]
    report = run("gpt", "tiny", batch=2, seq_len=8, implementations=chosen, mode="forward", trials=5)
    assert len(calls) == 1 + 5
    row = report["results"][0]
    assert row["fraction_of_ceiling"] == pytest.approx(row["gflops"] / report["ceiling_gflops"])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"seq_len": 5000}, "exceeds the gpt context"),
        ({"image_size": 64}, "does not apply to gpt"),
        ({"implementations": ["mxnet"]}, "unknown implementation"),
        ({"mode": "backward"}, "--mode must be"),
        ({"trials": 1}, "at least 3"),
    ],
)
def test_refusals(kwargs, message):
    with pytest.raises(ZooError, match=message):
        run("gpt", "tiny", **kwargs)


def test_cli_refuses_in_one_line():
    result = subprocess.run([sys.executable, "-m", "dlzoo.cli", "bench", "resnet", "--seq-len", "8"], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["error: --seq-len does not apply to resnet; use --image-size"]


@pytest.mark.skipif("torch" not in FRAMEWORKS, reason="the reference is a torch model")
@pytest.mark.parametrize("head", ["mlm", "classifier"])
def test_the_bert_reference_differentiates_every_head_dlzoo_does(head):
    """A head that the reference computed but left out of the objective would get no gradient and
    no update: its step would do less work than dlzoo's and look faster."""
    pytest.importorskip("transformers")
    from dlzoo.zoo import get_config
    from dlzoo.zoo.bench import _reference_step, bench_inputs

    config = get_config("bert", "tiny", **({"mlm_head": True} if head == "mlm" else {"num_classes": 3}))
    handle = load("bert", "torch", config=config, seed=0)
    inputs = bench_inputs("bert", config, 2, 8, None)
    outputs = handle.apply(inputs)
    assert ("mlm_logits" if head == "mlm" else "logits") in outputs
    cotangents = {k: np.ones_like(v) for k, v in outputs.items()}
    step = _reference_step("transformers", "bert", config, handle.state_dict(), inputs, cotangents, "train")
    model = step.model
    weight = model.cls.predictions.transform.dense.weight if head == "mlm" else model.classifier.weight
    before = weight.detach().clone()
    step()
    assert not np.array_equal(weight.detach().numpy(), before.numpy()), f"the {head} head got no update"


def test_the_ceiling_is_the_fastest_installed_matmul():
    """Every installed library's matmul computes the product; the ceiling is one of them."""
    from dlzoo.zoo.bench import ceiling_matmul, matmul_candidates

    candidates = matmul_candidates(32)
    labels = [label.split()[0] for _, label in candidates]
    assert labels[-1] == "numpy"
    for library in ("torch", "jax"):
        assert (library in labels) == (importlib.util.find_spec(library) is not None)
    products = [np.asarray(run()) for run, _ in candidates]
    for product in products[1:]:
        np.testing.assert_allclose(product, products[0], rtol=1e-4)
    assert ceiling_matmul(32)[1] in [label for _, label in candidates]


def test_a_missing_vision_reference_says_how_to_install_it(monkeypatch, tmp_path):
    import dlzoo.zoo.reference as reference

    # where they are installed (site-packages or the ci's folder), hide them from the check
    monkeypatch.setattr(reference, "vision_references_installed", lambda folder=None: False)
    expected = r"not installed: torchvision;.*--target DIR torchvision==0\.28\.0 timm==1\.0\.31.*DLZOO_VISION_REFS=DIR"
    with pytest.raises(ZooError, match=expected):
        run("resnet", "tiny", batch=2, implementations=["torchvision"], trials=3)


def test_vision_references_are_found_in_the_folder_named_or_in_site_packages(tmp_path):
    from dlzoo.zoo.reference import vision_references_installed

    elsewhere = all(importlib.util.find_spec(name) is not None for name in ("torchvision", "timm"))
    assert vision_references_installed(tmp_path) == elsewhere  # an empty folder adds nothing
    for name in ("torchvision", "timm"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text("")
    assert vision_references_installed(tmp_path)
    (tmp_path / "timm" / "__init__.py").unlink()
    (tmp_path / "timm").rmdir()
    assert vision_references_installed(tmp_path) == elsewhere


def test_page_faults_of_a_step_count_its_fresh_memory():
    """A step that maps 64 MiB and touches every page faults each page in (other threads may add
    a few); the same step on memory it keeps faults none of it."""
    from dlzoo.zoo.bench import _timed_with_faults

    size, page = 64 * 2**20, resource.getpagesize()

    def touch(buffer):
        for offset in range(0, size, page):
            buffer[offset] = 1

    _, fresh = _timed_with_faults(lambda: touch(mmap.mmap(-1, size)))
    kept = mmap.mmap(-1, size)
    touch(kept)
    _, again = _timed_with_faults(lambda: touch(kept))
    assert fresh >= size // page
    assert again < 0.05 * size // page


def test_the_report_names_the_allocator_and_the_faults():
    report = run("gpt", "tiny", batch=2, seq_len=8, implementations=FRAMEWORKS[:1], mode="forward", trials=3)
    assert report["allocator"] == allocator()
    row = report["results"][0]
    assert isinstance(row["page_faults_per_step"], int) and row["page_faults_per_step"] >= 0


@pytest.mark.parametrize(
    "maps, expected",
    [
        ("7f00-7f01 r-xp 0 08:01 1 /usr/lib/x86_64-linux-gnu/libc.so.6\n", "glibc malloc"),
        ("7f00-7f01 r-xp 0 08:01 1 /usr/lib/libtcmalloc_minimal.so.4.5.10\n7f02-7f03 r-xp 0 08:01 2 /usr/lib/libc.so.6", "tcmalloc"),
        ("7f00-7f01 r-xp 0 08:01 1 /usr/lib/x86_64-linux-gnu/libjemalloc.so.2\n", "jemalloc"),
        ("7f00-7f01 r-xp 0 08:01 1 /usr/lib/libSystem.B.dylib\n", "system malloc"),
    ],
)
def test_allocator_is_read_from_the_mapped_libraries(maps, expected):
    assert allocator(maps) == expected


def test_the_cli_names_the_tcmalloc_fix_only_for_glibc_with_many_faults(capsys):
    import dlzoo.cli_bench as cli_bench

    row = {"implementation": "haiku", "ratio_to_fastest": 1.0, "ratio_to_torch": None, "median_s": 1.0, "iqr_s": [1.0, 1.0]}
    row |= {"compile_s": 1.0, "examples_per_s": 1.0, "gflops": 1.0, "fraction_of_ceiling": 0.5, "peak_step_memory_bytes": None}
    report = {"inputs": {}, "ceiling_gflops": 1.0, "ceiling_library": "numpy", "flops_per_step": 1e9}
    for name, faults, hinted in (("glibc malloc", 540_000, True), ("glibc malloc", 200, False), ("tcmalloc", 540_000, False)):
        cli_bench.render(report | {"allocator": name, "results": [row | {"page_faults_per_step": faults}]}, "gpt", "tiny", "train", 1, 3)
        out = capsys.readouterr().out
        assert f"allocator: {name}." in out
        assert ("LD_PRELOAD=libtcmalloc_minimal.so.4" in out) == hinted, (name, faults)
