"""Every shell and Python example in README.md and docs/*.md is executed here on tiny
synthetic data, or names the test that runs it, or is marked as needing real data. A new
example that is none of these fails `test_every_documented_example_is_accounted_for`.

Examples are the fenced ``bash`` / ``sh`` / ``python`` blocks (one shell command per line,
backslash continuations joined) and the "headless example" column of the README's notebook
table. Shell examples run in a scratch folder as written (``melalib ...`` through
`melalib.cli.main`); only the data behind them is made tiny.
"""

from __future__ import annotations

import argparse
import re
import runpy
import shlex
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from PIL import Image

from melalib import cli

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

# ---------------------------------------------------------------- the examples
QUICK_START_INSTALL = ('python3 -m venv .venv && .venv/bin/pip install -c '
                       'requirements/constraints.txt -e ".[dev,weights]"')
PYTHON_EXAMPLE = "RunConfig.from_preset(\"isic2020_effnet_meta\""
STACK_PYTHON = "from melalib.stack import load_inputs, stack, summary_table"
RUN_HERE = {  # executed below, as written, in a scratch folder with tiny data
    "melalib prepare data/isic2020/jpeg/train data/isic2020-512/train --size 512",
    "melalib train --config my.yaml --set epochs=3 --set backbone=resnet50 --name r50",
    "melalib predict outputs/r50 --out outputs/r50/test_pred.csv --tta 8",
    "melalib ensemble outputs/effb3_512 outputs/r50 --method search --out submission.csv",
    "melalib reproduce outputs/r50",
    "melalib stack outputs/effb3_512 outputs/r50 --name stack",
    "melalib kaggle-bundle --kernel-id you/melalib-isic2020 --wheel-dataset "
    "you/melalib-wheel --weights-dataset you/effnet-weights/tf_efficientnet_b3.ns_jft_in1k.bin"
    " -p backbone=tf_efficientnet_b3.ns_jft_in1k -p image_size=384 -p epochs=15",
    PYTHON_EXAMPLE,
    "papermill --help-notebook notebooks/03_train.ipynb",
}
RUN_ELSEWHERE = {  # the test that executes it
    "bash benchmarks/gpu_check.sh": "tests/test_gpu_check.py (slow; without CUDA: the dry run)",
    "bash benchmarks/gpu_check.sh --dry-run": "tests/test_gpu_check.py (slow)",
    QUICK_START_INSTALL: ".ci/run (test_project: CI runs the README Quick start)",
    ".venv/bin/python -m pytest": ".ci/run",
    ".venv/bin/melalib demo": "tests/test_demo.py::test_full_demo_on_the_synthetic_default "
                              "(slow); the quick series in tests/test_notebooks.py",
    ".venv/bin/jupyter lab notebooks/": "tests/test_browser.py (-m browser)",
    "papermill notebooks/03_train.ipynb out/03.ipynb -p fold 2":
        "tests/test_notebooks.py::test_03_runs_from_the_notebooks_folder_with_relative_paths",
    "papermill notebooks/04_ensemble.ipynb out/04.ipynb -p runs demo,demo_effb0 -p "
    "ensemble_method search": "tests/test_notebooks.py (04 on two runs, the quick series)",
    "papermill notebooks/05_gradcam.ipynb out/05.ipynb -p name demo":
        "tests/test_notebooks.py::test_gradcam_notebook_reports_errors",
    "torchrun --nproc_per_node=4 -m melalib train --config my.yaml":
        "tests/test_distributed.py (torchrun, 2 processes on a 2-core machine)",
    "melalib weights": "tests/test_weights.py::test_weights_cli_lists_and_writes",
    "melalib weights --write tf_efficientnet_lite0 --out lite0.pth":
        "tests/test_weights.py::test_weights_cli_lists_and_writes",
    "melalib train --preset synthetic_demo --name round1":
        "tests/test_pseudo.py::test_second_round_trains_on_pseudo_labels (tiny config)",
    "melalib train --preset synthetic_demo --name round2 --set pseudo_run=outputs/round1 "
    "--set pseudo_threshold=0.95 --set pseudo_weight=0.5":
        "tests/test_pseudo.py::test_second_round_trains_on_pseudo_labels (tiny config)",
}
REAL_DATA = {  # needs data (or weights) that are not in the repository
    "melalib train --preset isic2020_effnet_meta --set data_dir=data/isic2020 --fold 2":
        "the ISIC 2020 images and EfficientNet-B3 weights",
    "papermill notebooks/01_eda.ipynb out/01.ipynb -p dataset ham10000 -p data_dir "
    "../shared/data/ham10000": "tests/test_notebooks.py (slow, realdata) runs it on HAM10000",
    "papermill notebooks/02_features.ipynb out/02.ipynb -p dataset isic2020 -p data_dir "
    "data/isic2020": "the ISIC 2020 tables (tests/test_notebooks.py runs 02 on them, slow)",
    "melalib evaluate outputs/r50 --dataset milk10k --data-dir ../shared/data/milk10k "
    "--image-dir ../shared/data/milk10k/images_256x192 --skip-missing-images":
        "a trained run and the MILK10k images (tests/test_external.py runs the CLI on a "
        "synthetic MILK10k-like table)",
    "melalib evaluate outputs/r50 --oof --blank-meta":
        "a trained run (tests/test_external.py runs it on a tiny run)",
    "melalib evaluate outputs/r50 --csv other_clinic.csv --image-dir other_clinic/images":
        "another clinic's table (tests/test_external.py: the CLI on a CSV)",
    "melalib evaluate outputs/r50 --csv other_clinic.csv --image-dir other_clinic/images "
    "--adapt-bn": "another clinic's table (tests/test_adapt.py: the CLI with --adapt-bn on a "
    "CSV)",
    "papermill notebooks/06_external.ipynb out/06.ipynb -p name demo -p external_dataset "
    "milk10k -p external_data_dir ../shared/data/milk10k -p external_image_dir "
    "../shared/data/milk10k/images_256x192": "a trained run and the MILK10k images "
    "(tests/test_notebooks.py runs 06 in the quick series; tests/test_external.py scores a "
    "HAM-like run on MILK-like data)",
    "melalib train --preset ham10000_lite0_pretrained --set data_dir=../shared/data/ham10000":
        "HAM10000 images (tests/test_weights.py trains the preset's recipe on tiny data)",
    "melalib train --preset ham10000_lite0_pretrained --set data_dir=../shared/data/ham10000 "
    "--set epochs=1 --set max_steps_per_epoch=20 --set tta=1 --fold 0 --name ham_tiny":
        "HAM10000 images (the model docs/benchmarks.md measures explanations on)",
    "melalib train --preset isic2020_effnet_meta --set data_dir=data/isic2020 --set "
    "target=diagnosis": "the ISIC 2020 images and EfficientNet-B3 weights",
    "melalib train --set dataset=isic2020+2019 --set data_dir=data --set target=diagnosis":
        "the ISIC 2020 and 2019 images",
    "melalib stack outputs/effb3 outputs/meta --name stack":
        "the ISIC 2020 runs above (tests/test_stack.py stacks tiny runs through the CLI)",
    "melalib stack --preset isic2020_meta_context --set data_dir=data/isic2020 --name "
    "meta_stack": "the ISIC 2020 tables (tests/test_stack.py: a metadata-only stack)",
    "melalib ensemble outputs/stack outputs/effb3 --out sub.csv":
        "the ISIC 2020 runs above (tests/test_stack.py ensembles a stack with a run)",
    STACK_PYTHON: "the ISIC 2020 runs above (tests/test_stack.py calls stack on tiny runs)",
    "melalib explain outputs/ham --kind fn --top 16 --masks ../shared/data/ham10000/masks_200x150"
    " --missing-masks skip"
    " --floor --faithfulness --out explain/ham_fn":
        "a HAM10000 run (tests/test_explain_run.py runs the command on a tiny synthetic run)",
    "melalib train --preset ham10000_lite0_guided --set data_dir=../shared/data/ham10000 "
    "--set guide_masks=../shared/data/ham10000/masks_200x150 --fold 0 --output-dir "
    "outputs/ext --name ham_guided":
        "the HAM10000 images and masks, 26 min on 2 cores (tests/test_config.py builds the "
        "preset; tests/test_guidance.py trains with cam_guidance end to end on synthetic data)",
    "melalib train --preset ham10000_lite0_robust --set data_dir=../shared/data/ham10000 "
    "--name ham_robust": "the HAM10000 images, about 45 min per fold on 2 cores "
    "(tests/test_config.py: the preset is the measured combination; every option is trained "
    "on synthetic data in its own test)",
    "melalib evaluate outputs/ham_robust --dataset milk10k --data-dir ../shared/data/milk10k "
    "--image-dir ../shared/data/milk10k/images_256x192 --skip-missing-images":
        "the HAM10000 run above and the MILK10k images (tests/test_external.py runs the CLI "
        "on a synthetic MILK10k-like table)",
    "melalib explain outputs/ext/ham_guided --kind wrong --top 16 --layer pooled "
    "--missing-masks skip --masks "
    "../shared/data/ham10000/masks_200x150 --out explain/ham_guided":
        "the HAM10000 run above (tests/test_explain_run.py runs explain on a tiny run; "
        "tests/test_models.py checks layer=pooled is the map the head pools)",
}
_MILK = ("-p preset milk10k_dual_lite0_pretrained -p dataset milk10k -p data_dir "
         "../shared/data/milk10k")
_MILK_SERIES = ("the MILK10k images (tests/test_notebooks.py::test_notebooks_01_to_05_run_on_"
                "the_real_milk10k_pairs, slow, realdata, runs 01 to 05 so with 2 steps)")
_MILK_FOLD0 = "a fold-0 MILK10k run of the preset (the 15-minute train command above it)"
REAL_DATA |= {
    f"papermill notebooks/01_eda.ipynb out/milk10k_01.ipynb {_MILK} -p name milk10k_nb":
        _MILK_SERIES,
    f"papermill notebooks/02_features.ipynb out/milk10k_02.ipynb {_MILK} -p name milk10k_nb "
    "-p baseline_epochs 1 -p max_steps_per_epoch 4": _MILK_SERIES,
    f"papermill notebooks/03_train.ipynb out/milk10k_03.ipynb {_MILK} -p name milk10k_nb "
    "-p fold 0 -p epochs 1 -p max_steps_per_epoch 4 -p tta 1": _MILK_SERIES,
    f"papermill notebooks/04_ensemble.ipynb out/milk10k_04.ipynb {_MILK} -p name milk10k_nb":
        _MILK_SERIES,
    f"papermill notebooks/05_gradcam.ipynb out/milk10k_05.ipynb {_MILK} -p name milk10k_nb "
    "-p n_examples 2 -p pair_kind wrong -p n_pairs 2": _MILK_SERIES,
    "melalib train --preset milk10k_dual_lite0_pretrained --set "
    "data_dir=../shared/data/milk10k --fold 0 --name milk10k_fold0":
        "the MILK10k images (15 min on 2 cores; tests/test_milk10k.py trains the preset's "
        "recipe on a few real lesions)",
    f"papermill notebooks/04_ensemble.ipynb out/milk10k_fold0_04.ipynb {_MILK} -p name "
    "milk10k_fold0": _MILK_FOLD0,
    f"papermill notebooks/05_gradcam.ipynb out/milk10k_fold0_05.ipynb {_MILK} -p name "
    "milk10k_fold0 -p n_examples 4 -p pair_kind tp -p n_pairs 2": _MILK_FOLD0,
}
BENCHMARKS = {  # minutes of CPU each; their flags are parsed by the script's own parser
    "OMP_NUM_THREADS=1 python benchmarks/prepare_bench.py --n 8 --repeats 3 --real "
    "../shared/data/ham10000/images_200x150 --real-n 300 --real-sizes 64,128,256",
    "OMP_NUM_THREADS=1 python benchmarks/folds_bench.py --rows 100000 --repeats 3",
    "OMP_NUM_THREADS=1 python benchmarks/tta_bench.py --n 64 --size 128 --repeats 3",
    "OMP_NUM_THREADS=2 python benchmarks/train_bench.py --backbones resnet18,efficientnet_b0 "
    "--sizes 64,128 --steps 4 --warmup 1",
    "python benchmarks/load_bench.py --n 20000 --workers 2 --json load20k.json",
    "python benchmarks/docs_figures.py --demo outputs/demo --milk10k outputs/milk10k_fold0",
    "python benchmarks/explain_results.py outputs/ham_tiny --masks "
    "../shared/data/ham10000/masks_200x150 --per-class 10 --fold 0 --n-boot 500 --device cpu "
    "--out outputs/explain-results/ham_tiny.json",
}


def documented_examples() -> list[tuple[str, str]]:
    """(file, example) for every shell command line and Python block in the docs."""
    found = []
    for path in DOCS:
        text = path.read_text()
        for lang, body in re.findall(r"```(bash|sh|python)\n(.*?)```", text, re.S):
            if lang == "python":
                found.append((path.name, body))
                continue
            for line in body.replace("\\\n", " ").splitlines():
                command = re.sub(r"\s+#.*$", "", line).strip()
                if command and not command.startswith("#"):
                    found.append((path.name, " ".join(command.split())))
        if path.name == "README.md":
            table = text.split("## The notebooks", 1)[1].split("\n## ", 1)[0]
            found += [(path.name, c) for c in re.findall(r"`(papermill [^`]+)`", table)]
    return found


def _key(example: str) -> str:
    return next((k for k in (PYTHON_EXAMPLE, STACK_PYTHON) if k in example), example)


def test_every_documented_example_is_accounted_for() -> None:
    known = RUN_HERE | set(RUN_ELSEWHERE) | set(REAL_DATA) | BENCHMARKS
    examples = documented_examples()
    unknown = [(f, e) for f, e in examples if _key(e) not in known]
    assert unknown == [], "document how each new example is tested (tests/test_docs.py)"
    stale = known - {_key(e) for _, e in examples}
    assert stale == set(), f"examples no longer in the docs: {stale}"


# ------------------------------------------------------------ executed as written
def _melalib(command: str) -> None:
    argv = shlex.split(command)
    assert argv[0] == "melalib"
    assert cli.main(argv[1:]) == 0, command


@pytest.fixture
def scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, synthetic_root: Path) -> Path:
    """A project folder holding the tiny inputs the examples name: my.yaml (the tiny
    synthetic config) and a few JPEGs under data/isic2020/jpeg/train."""
    from conftest import TINY

    monkeypatch.chdir(tmp_path)
    tiny = {k: list(v) if isinstance(v, tuple) else v for k, v in TINY.items()}
    (tmp_path / "my.yaml").write_text(yaml.safe_dump({**tiny, "data_dir": str(synthetic_root)}))
    jpegs = tmp_path / "data" / "isic2020" / "jpeg" / "train"
    jpegs.mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (640, 600), (40 * i, 90, 120)).save(jpegs / f"ISIC_{i:07d}.jpg")
    return tmp_path


def test_cli_examples_run_as_written(scratch: Path) -> None:
    examples = [e for _, e in documented_examples()]
    commands = [e for e in examples if e in RUN_HERE and e.startswith("melalib ")]
    by_verb = {shlex.split(c)[1]: c for c in commands}
    _melalib(by_verb["prepare"])
    assert sorted(p.name for p in (scratch / "data/isic2020-512/train").glob("*.jpg")) == [
        f"ISIC_{i:07d}.jpg" for i in range(3)]
    _melalib(next(c for c in commands if "--name r50" in c))
    assert (scratch / "outputs/r50/oof.csv").is_file()
    _melalib(by_verb["predict"])
    assert (scratch / "outputs/r50/test_pred.csv").is_file()
    # the ensemble example combines r50 with the run of the Python example: a tiny stand-in
    _melalib("melalib train --config my.yaml --name effb3_512")
    _melalib(by_verb["ensemble"])
    assert (scratch / "submission.csv").is_file()
    _melalib(by_verb["reproduce"])
    _melalib(by_verb["stack"])
    assert (scratch / "outputs/stack").is_dir()


def test_kaggle_example_runs_as_written(scratch: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    import melalib.kaggle as kaggle

    monkeypatch.setattr(kaggle, "build_wheel", lambda dest: Path(dest))  # tests/test_kaggle.py
    command = next(e for _, e in documented_examples() if e.startswith("melalib kaggle-bundle"))
    _melalib(command)
    # the default folder sits beside the runs (ignored by git), not in the repository root
    meta = json.loads((scratch / "outputs/kaggle/melalib-isic2020/kernel-metadata.json"
                       ).read_text())
    assert meta["id"] == "you/melalib-isic2020" and meta["title"] == "melalib isic2020"
    assert meta["dataset_sources"] == ["you/melalib-wheel", "you/effnet-weights"]


def test_python_example_builds_its_config_and_trains(monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's Python block, executed; `melalib.train` is replaced (the example needs
    the ISIC 2020 images), so what is checked is what it hands to training."""
    import melalib

    block = next(e for _, e in documented_examples() if PYTHON_EXAMPLE in e)
    calls: list[tuple[Any, Any]] = []
    monkeypatch.setattr(melalib, "train", lambda cfg, fold=None: calls.append((cfg, fold)) or {})
    exec(compile(block, "README.md", "exec"), {})
    (cfg, fold), = calls
    assert fold == 2 and cfg.name == "effb3_512"
    assert cfg.data.dataset == "isic2020" and cfg.data.image_dir == "data/isic2020-512"
    assert cfg.model.backbone == "tf_efficientnet_b3.ns_jft_in1k"


class _Parsed(Exception):
    pass


@pytest.mark.parametrize("command", sorted(BENCHMARKS))
def test_benchmark_examples_parse(command: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The documented flags exist in the script's parser (the run itself is minutes)."""
    argv = [a for a in shlex.split(command) if "=" not in a or a.startswith("-")]
    script = REPO / argv[1]
    parse = argparse.ArgumentParser.parse_args
    seen: list[argparse.Namespace] = []

    def parse_only(self: argparse.ArgumentParser, args: Any = None, namespace: Any = None):
        seen.append(parse(self, args, namespace))
        raise _Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_only)
    monkeypatch.setattr(sys, "argv", [str(script), *argv[2:]])
    monkeypatch.syspath_prepend(str(script.parent))
    with pytest.raises(_Parsed):
        runpy.run_path(str(script), run_name="__main__")
    assert seen


def test_papermill_help_notebook_shows_typed_parameters() -> None:
    import subprocess

    command = "papermill --help-notebook notebooks/03_train.ipynb"
    assert command in [e for _, e in documented_examples()]
    done = subprocess.run([sys.executable, "-m", *shlex.split(command)], cwd=REPO,
                          capture_output=True, text=True, check=False, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "fold: int (default -1)" in done.stdout and "lr: float" in done.stdout
    assert 'preset: str (default "synthetic_demo")' in done.stdout  # what the demo trains
    assert "Unknown type" not in done.stdout
