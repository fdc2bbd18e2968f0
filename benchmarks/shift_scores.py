"""Which image out-of-distribution score tells another clinic's images from the training
clinic's (issue 21, point 2)? Candidate scores side by side, on one fold's model.

    OMP_NUM_THREADS=1 python benchmarks/shift_scores.py outputs/ext/ham_base --fold 0 \\
        --cache outputs/shift/ham_base_fold0.npz --controls outputs/shift/controls

One pass of the fold's best model (`inference.load_member`, the run's own preprocessing, one
view, no TTA) over three sets of images, cached in ``--cache`` (never in the repository):

* ``train``: the fold's training rows (`runtime.fold_data`), a seeded sample of at most
  ``--n-train``: what a score is fitted on;
* ``oof``: the fold's out-of-fold rows: the in-domain images (threshold and AUROC);
* ``ext``: every image of the external table present on disk (``--dataset`` /
  ``--data-dir`` / ``--image-dir`` through `external.external_table`: MILK10k's dermoscopic
  view by default), or with ``--camera FOLDER`` the OOF rows' images through
  `shift.simulate_camera` (a synthetic shift, to try the script on a tiny run).

Per image it keeps the pooled backbone features, the logits, the channel means and standard
deviations of every ``feature_info`` stage of the backbone ("style" statistics) and the
input's colour statistics (per-channel mean and SD in RGB and CIE Lab). Candidate scores,
each fitted on ``train`` only: Mahalanobis (Ledoit-Wolf) on raw and L2-normalised pooled
features, k-NN distance on L2-normalised pooled features (Sun et al. 2022), Mahalanobis and
k-NN on each stage's style statistics and on all stages together (Lee et al. 2018), colour
statistics, max-softmax and energy.

Honest selection: the external images' lesions (``group_id``) are split into two seeded
halves; the winner is the best AUROC (in-domain OOF vs external) on half A, every candidate is
reported on both halves, and the winner's half-B AUROC is the headline. Flagged: the share of
external images above the candidate's OOF 95th percentile. For the winner and melalib's own
score (`shift.fit_stats` on the `shift.style_layer` stage, what training stores): the error rates of flagged and unflagged
external images of the classes both tasks define (`classmap`; one view, fold model only).

Controls (``--controls FOLDER``: images re-stored there, outside the repository): two shared
datasets can differ in how their files were made as much as in their clinics. The OOF images
are stored again at the external images' most common size and JPEG quality (a storage-only
shift of in-domain lesions: a clinic detector stays near 0.5 here), and the external images at
the training images' (the clinic without its storage: a clinic detector stays high); each is
scored against the OOF images (the second on half B).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from melalib import shift
from melalib.classmap import class_mapping
from melalib.errors import MelalibError
from melalib.external import external_table
from melalib.inference import Predictor, load_member
from melalib.runs import RunDir
from melalib.runtime import fold_data, forward, make_dataset, make_loader, to_device
from melalib.table import LesionTable

Scorer = Callable[[np.ndarray], np.ndarray]
SETS = ("train", "oof", "ext")


# ----------------------------------------------------------------------------- extraction
def _stage_modules(backbone: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    info = getattr(backbone, "feature_info", None)
    dicts = list(info.get_dicts()) if hasattr(info, "get_dicts") else list(info or [])
    return [(d["module"], backbone.get_submodule(d["module"])) for d in dicts]


def _colour(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]
            ) -> np.ndarray:
    """Per-channel mean and SD of the un-normalised input in RGB and CIE Lab: (N, 12)."""
    from skimage.color import rgb2lab

    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    rgb = (images.float().cpu() * s + m).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    lab = rgb2lab(rgb, channel_axis=-1)
    out = [x.reshape(len(x), -1, 3) for x in (rgb, lab)]
    return np.concatenate([np.c_[x.mean(1), x.std(1)] for x in out], axis=1)


@torch.no_grad()
def extract(member: Any, task: Any, table: LesionTable, df: pd.DataFrame,
            batch_size: int) -> dict[str, np.ndarray]:
    """pooled, logits, stage{i} style statistics and colour statistics of ``df``'s images."""
    predictor = Predictor([member], task, torch.device("cpu"))
    df = df.reset_index(drop=True).copy()
    predictor.impute_absent(df, "the rows to score")
    meta = member.encoder.transform(df)
    ds = make_dataset(member.cfg, table, df, meta, train=False, labelled=False,
                      preprocessing=member.preprocessing)
    loader = make_loader(ds, batch_size, shuffle=False, seed=0, num_workers=0)
    model, backbone = member.model.eval(), member.model.backbone
    caught: dict[str, torch.Tensor] = {}
    hooks = [module.register_forward_hook(
        lambda _m, _i, out, key=f"stage{i}": caught.__setitem__(key, out))
        for i, (_, module) in enumerate(_stage_modules(backbone))]
    hooks.append(backbone.register_forward_hook(
        lambda _m, _i, out: caught.__setitem__("pooled", out)))
    parts: dict[str, list[np.ndarray]] = {}
    index = []
    pre = member.preprocessing
    try:
        for batch in loader:
            batch = to_device(batch, torch.device("cpu"), False)
            logits = forward(model, batch).float()
            got = {"logits": logits.numpy(), "pooled": caught["pooled"].float().numpy(),
                   "colour": _colour(batch["image"], pre.mean, pre.std)}
            for key, fmap in caught.items():
                if key.startswith("stage"):
                    got[key] = shift.style_statistics(fmap).numpy()
            for key, value in got.items():
                parts.setdefault(key, []).append(value)
            index.append(batch["index"].numpy())
    finally:
        for h in hooks:
            h.remove()
    order = np.argsort(np.concatenate(index))
    return {k: np.concatenate(v)[order] for k, v in parts.items()}


def external_rows(args: argparse.Namespace, run: RunDir, oof_df: pd.DataFrame,
                  table: LesionTable) -> tuple[LesionTable, pd.DataFrame]:
    """The external table and its rows whose image is present."""
    if args.camera:
        ext = shift.simulate_camera(LesionTable(oof_df, table.task, origin="oof"),
                                    args.camera)
    else:
        ext = external_table(args.dataset, args.data_dir, image_dir=args.image_dir)
    present = ext.df["image_path"].map(lambda p: isinstance(p, str) and os.path.isfile(p))
    print(f"external: {int(present.sum())} of {len(ext.df)} images present ({ext.origin})")
    return ext, ext.df[present.to_numpy()].reset_index(drop=True)


def build_cache(args: argparse.Namespace) -> dict[str, np.ndarray]:
    """Extract the three sets once and store them in ``args.cache`` (npz, no pickle)."""
    run = RunDir.read(args.run)
    member, task = load_member(run.checkpoint(args.fold, "best"), torch.device("cpu"),
                               config=run.cfg)
    table = run.table()
    fd = fold_data(run.cfg, table, args.fold)
    train_df = fd.train_df
    if len(train_df) > args.n_train:
        train_df = train_df.sample(args.n_train, random_state=args.seed)
    ext, ext_df = external_rows(args, run, fd.val_df, table)
    out: dict[str, np.ndarray] = {}
    for name, (tab, df) in {"train": (table, train_df), "oof": (table, fd.val_df),
                            "ext": (ext, ext_df)}.items():
        started = time.perf_counter()
        feats = extract(member, task, LesionTable(df, tab.task, origin=tab.origin), df,
                        args.batch_size)
        print(f"extracted {name}: {len(df)} images in {time.perf_counter() - started:.0f} s")
        out.update({f"{name}/{k}": v for k, v in feats.items()})
        out[f"{name}/image_id"] = np.asarray(df["image_id"], dtype=str)
        out[f"{name}/group_id"] = np.asarray(df["group_id"], dtype=str)
        out[f"{name}/label"] = df["label"].to_numpy(dtype=np.int64)
    try:  # the external labels in the model's classes (-1: a class it does not define)
        mapping = class_mapping(task, ext.task)
        out["ext/mapped_label"] = mapping.labels(ext_df["label"].to_numpy())
        out["ext/mapped_probs"] = mapping.probs(torch.softmax(
            torch.from_numpy(out["ext/logits"]), 1).numpy())
        out["ext/mapped_classes"] = np.asarray(mapping.task.classes, dtype=str)
    except MelalibError as exc:
        print(f"no shared classes: {exc}")
    stages = [name for name, _ in _stage_modules(member.model.backbone)]
    out["stage_modules"] = np.asarray(stages, dtype=str)
    out["style_layer"] = np.str_(shift.style_layer(member.model.backbone))
    Path(args.cache).parent.mkdir(parents=True, exist_ok=True)
    np.savez(args.cache, **out)
    return out


# ----------------------------------------------------------------------------- controls
def _quality_tables() -> dict[int, float]:
    """PIL's JPEG quality -> mean of its luminance quantisation table."""
    out = {}
    for quality in range(1, 101):
        buf = io.BytesIO()
        Image.new("RGB", (16, 16)).save(buf, "JPEG", quality=quality)
        out[quality] = float(np.mean(Image.open(buf).quantization[0]))
    return out


def storage(paths: list[str], n: int = 100) -> tuple[tuple[int, int], int]:
    """The most common pixel size and (PIL-equivalent) JPEG quality of ``paths``' images."""
    tables = _quality_tables()
    sizes: Counter[tuple[int, int]] = Counter()
    qualities: Counter[int] = Counter()
    for path in paths[:n]:
        with Image.open(path) as im:
            sizes[im.size] += 1
            mean = float(np.mean(im.quantization[0])) if hasattr(im, "quantization") else 0
            qualities[min(tables, key=lambda q: abs(tables[q] - mean))] += 1
    return sizes.most_common(1)[0][0], qualities.most_common(1)[0][0]


def restored(df: pd.DataFrame, folder: Path, size: tuple[int, int], quality: int
             ) -> pd.DataFrame:
    """``df`` with its images stored again at ``size`` (Lanczos) and JPEG ``quality``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, path in enumerate(df["image_path"]):
        target = folder / f"{i:06d}_{Path(path).stem}.jpg"
        if not target.is_file():
            with Image.open(path) as im:
                im.convert("RGB").resize(size, Image.LANCZOS).save(target, "JPEG",
                                                                   quality=quality)
        paths.append(str(target))
    return df.assign(image_path=paths)


def add_controls(args: argparse.Namespace, data: dict[str, np.ndarray]) -> None:
    """Two control sets, added to the cache: the OOF images stored as the external ones are
    (size, JPEG quality: a storage-only shift of in-domain lesions) and the external images
    stored as the training ones are (the clinic without its storage)."""
    run = RunDir.read(args.run)
    member, task = load_member(run.checkpoint(args.fold, "best"), torch.device("cpu"),
                               config=run.cfg)
    table = run.table()
    fd = fold_data(run.cfg, table, args.fold)
    ext, ext_df = external_rows(args, run, fd.val_df, table)
    for name, df in (("oof", fd.val_df), ("ext", ext_df)):
        assert list(np.asarray(df["image_id"], dtype=str)) == list(data[f"{name}/image_id"])
    train_store = storage(list(fd.train_df["image_path"]))
    ext_store = storage(list(ext_df["image_path"]))
    print(f"storage: training images {train_store}, external images {ext_store} "
          "((width, height), JPEG quality)")
    folder = Path(args.controls)
    for name, tab, df, (size, quality) in (
            ("oof_as_ext", table, fd.val_df, ext_store),
            ("ext_as_train", ext, ext_df, train_store)):
        started = time.perf_counter()
        df = restored(df.reset_index(drop=True), folder / name, size, quality)
        feats = extract(member, task, LesionTable(df, tab.task, origin=tab.origin), df,
                        args.batch_size)
        print(f"extracted {name}: {len(df)} images in {time.perf_counter() - started:.0f} s")
        data.update({f"{name}/{k}": v for k, v in feats.items()})
    data["controls_storage"] = np.asarray([*train_store[0], train_store[1],
                                           *ext_store[0], ext_store[1]], dtype=np.int64)
    np.savez(args.cache, **data)


def load_cache(path: str) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


# ----------------------------------------------------------------------------- scores
def _l2(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _standardiser(train: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    mu, sd = train.mean(0), train.std(0)
    sd = np.where(sd > 1e-12, sd, 1.0)
    return lambda x: (np.asarray(x, dtype=np.float64) - mu) / sd


def mahalanobis(train: np.ndarray, standardise: bool = False, l2: bool = False) -> Scorer:
    """Ledoit-Wolf Mahalanobis distance to the training rows (melalib's old score on raw
    features), after z-scoring and / or L2 normalisation."""
    pre = _standardiser(train) if standardise else (lambda x: np.asarray(x, np.float64))
    post = _l2 if l2 else (lambda x: x)
    stats = shift.fit_stats(post(pre(train)), post(pre(train[:2])), standardise=False)
    return lambda x: stats.distance(post(pre(x)))


def knn(train: np.ndarray, k: int, standardise: bool = False) -> Scorer:
    """Distance to the k-th nearest training row on the unit sphere (Sun et al. 2022)."""
    pre = _standardiser(train) if standardise else (lambda x: np.asarray(x, np.float64))
    bank = _l2(pre(train))

    def score(x: np.ndarray) -> np.ndarray:
        q = _l2(pre(x))
        out = np.empty(len(q))
        for i in range(0, len(q), 1024):
            sim = q[i:i + 1024] @ bank.T
            out[i:i + 1024] = -np.partition(sim, -k, axis=1)[:, -k]
        return out
    return score


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def candidates(data: dict[str, np.ndarray]) -> dict[str, tuple[str, Scorer]]:
    """name -> (features key, scorer fitted on the training rows)."""
    tr = lambda key: data[f"train/{key}"]  # noqa: E731
    stages = sorted((k.split("/")[1] for k in data if k.startswith("train/stage")),
                    key=lambda s: int(s[5:]))
    out: dict[str, tuple[str, Scorer]] = {
        "(a) Mahalanobis, raw pooled": ("pooled", mahalanobis(tr("pooled"))),
        "(b) Mahalanobis, L2 pooled": ("pooled", mahalanobis(tr("pooled"), l2=True)),
    }
    for k in (1, 10, 50):
        out[f"(c) k-NN k={k}, L2 pooled"] = ("pooled", knn(tr("pooled"), k))
    for s in stages:
        width = tr(s).shape[1] // 2
        out[f"(d) Mahalanobis, {s} style ({width} ch)"] = (s, mahalanobis(tr(s), True))
        out[f"(d) k-NN k=10, {s} style"] = (s, knn(tr(s), 10, standardise=True))
    oof = {s: data[f"oof/{s}"] for s in stages}
    parts = []
    for s in stages:
        scorer = mahalanobis(tr(s), True)
        parts.append((s, scorer, float(np.quantile(scorer(oof[s]), shift.FLAG_QUANTILE))))
    out["(d) Mahalanobis, all stages summed"] = (
        "stages", lambda x: np.sum([sc(x[s]) / t for s, sc, t in parts], axis=0))
    out["(e) Mahalanobis, colour RGB+Lab mean/SD"] = ("colour", mahalanobis(tr("colour"), True))
    out["(e) k-NN k=10, colour"] = ("colour", knn(tr("colour"), 10, standardise=True))
    out["(f) 1 - max softmax"] = ("logits", lambda x: 1 - _softmax(x).max(1))
    out["(f) energy (-logsumexp)"] = (
        "logits", lambda x: -(x.max(1) + np.log(np.exp(x - x.max(1, keepdims=True)).sum(1))))
    return out


def features(data: dict[str, np.ndarray], split: str, key: str) -> Any:
    if key == "stages":
        return {k.split("/")[1]: v for k, v in data.items()
                if k.startswith(f"{split}/stage")}
    return data[f"{split}/{key}"]


# ----------------------------------------------------------------------------- evaluation
def halves(groups: np.ndarray, seed: int) -> np.ndarray:
    """True for the rows of half A: a seeded half of the unique groups (lesions)."""
    unique = np.unique(groups)
    rng = np.random.default_rng(seed)
    chosen = set(rng.permutation(unique)[: len(unique) // 2])
    return np.array([g in chosen for g in groups])


def auroc(in_domain: np.ndarray, external: np.ndarray) -> float:
    """AUROC of a score (higher: more shifted) telling external rows from in-domain ones."""
    y = np.r_[np.zeros(len(in_domain)), np.ones(len(external))]
    return float(roc_auc_score(y, np.r_[in_domain, external]))


def evaluate(name: str, key: str, scorer: Scorer, data: dict[str, np.ndarray],
             half_a: np.ndarray) -> dict[str, Any]:
    oof = scorer(features(data, "oof", key))
    ext = scorer(features(data, "ext", key))
    threshold = float(np.quantile(oof, shift.FLAG_QUANTILE))
    row: dict[str, Any] = {"score": name}
    for label, mask in (("A", half_a), ("B", ~half_a)):
        row[f"auroc_{label}"] = auroc(oof, ext[mask])
        row[f"flagged_{label}"] = float(np.mean(ext[mask] > threshold))
    controls(row, lambda split: scorer(features(data, split, key)), oof, data, half_a)
    row["_ext"], row["_threshold"] = ext, threshold
    return row


def controls(row: dict[str, Any], score: Callable[[str], np.ndarray], oof: np.ndarray,
             data: dict[str, np.ndarray], half_a: np.ndarray) -> None:
    """AUROC of OOF vs the OOF images re-stored as the external ones (storage only) and vs
    half B of the external images re-stored as the training ones (clinic only)."""
    if "oof_as_ext/pooled" in data:
        row["auroc_storage_only"] = auroc(oof, score("oof_as_ext"))
        row["auroc_B_clinic_only"] = auroc(oof, score("ext_as_train")[~half_a])


def error_rates(data: dict[str, np.ndarray], ext_scores: np.ndarray, threshold: float,
                mask: np.ndarray) -> dict[str, Any] | None:
    """Error rate of flagged and unflagged external images of the shared classes."""
    if "ext/mapped_label" not in data:
        return None
    y = data["ext/mapped_label"]
    keep = (y >= 0) & mask
    wrong = data["ext/mapped_probs"][keep].argmax(1) != y[keep]
    flag = ext_scores[keep] > threshold
    rate = lambda m: float(wrong[m].mean()) if m.any() else float("nan")  # noqa: E731
    return {"n": int(keep.sum()), "n_flagged": int(flag.sum()), "error_flagged": rate(flag),
            "error_unflagged": rate(~flag), "error_all": float(wrong.mean())}


def melalib_row(data: dict[str, np.ndarray], half_a: np.ndarray) -> dict[str, Any]:
    """melalib's own score as `shift.fit_fold_shift` stores it (`shift.fit_stats` on the
    `shift.style_layer` stage), fitted on the same training sample, threshold from the same
    OOF rows: what `shift.refit_run` writes for this fold (up to its larger training
    sample)."""
    layer = str(data["style_layer"])
    key = f"stage{list(data['stage_modules']).index(layer)}" if layer else "pooled"
    stats = shift.fit_stats(data[f"train/{key}"], data[f"oof/{key}"], layer=layer,
                            standardise=bool(layer))
    oof, ext = stats.score(data[f"oof/{key}"]), stats.score(data[f"ext/{key}"])
    row: dict[str, Any] = {"score": f"melalib `shift` ({stats.kind}, {layer or 'pooled'})"}
    for label, mask in (("A", half_a), ("B", ~half_a)):
        row[f"auroc_{label}"] = auroc(oof, ext[mask])
        row[f"flagged_{label}"] = float(np.mean(ext[mask] > 1.0))
    controls(row, lambda split: stats.score(data[f"{split}/{key}"]), oof, data, half_a)
    row["_ext"], row["_threshold"] = ext, 1.0
    return row


def _pct(v: float) -> str:
    return "-" if v != v else f"{100 * v:.0f} %"


def render(rows: list[dict[str, Any]], winner: str) -> list[str]:
    with_controls = "auroc_storage_only" in rows[0]
    head = "| score | AUROC half A (selection) | AUROC half B | flagged A | flagged B |"
    lines = [head + (" control: OOF re-stored as external | control: B re-stored as "
                     "training |" if with_controls else ""),
             "|---|---|---|---|---|" + ("---|---|" if with_controls else "")]
    for r in rows:
        mark = " **(chosen on A)**" if r["score"] == winner else ""
        line = (f"| {r['score']}{mark} | {r['auroc_A']:.3f} | {r['auroc_B']:.3f} | "
                f"{_pct(r['flagged_A'])} | {_pct(r['flagged_B'])} |")
        if with_controls:
            line += f" {r['auroc_storage_only']:.3f} | {r['auroc_B_clinic_only']:.3f} |"
        lines.append(line)
    return lines


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="a trained run folder (read only)")
    p.add_argument("--fold", type=int, default=0)
    p.add_argument("--dataset", default="milk10k", help="the external table's adapter")
    p.add_argument("--data-dir", default="../shared/data/milk10k")
    p.add_argument("--image-dir", default="../shared/data/milk10k/images_256x192")
    p.add_argument("--camera", default="", help="instead: the OOF images through "
                   "shift.simulate_camera, written to this folder (a tiny-run check)")
    p.add_argument("--cache", required=True, help="npz of the extracted features (made "
                   "once; outside the repository)")
    p.add_argument("--n-train", type=int, default=5000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--controls", default="", help="also score two control sets, their "
                   "images re-stored under this folder (outside the repository): the OOF "
                   "images at the external images' size and JPEG quality, the external "
                   "images at the training images'")
    p.add_argument("--out", default="", help="JSON file for the table and the command")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    started = time.perf_counter()
    torch.manual_seed(args.seed)
    data = load_cache(args.cache) if Path(args.cache).is_file() else build_cache(args)
    if args.controls and "oof_as_ext/pooled" not in data:
        add_controls(args, data)
    extracted = time.perf_counter() - started
    half_a = halves(data["ext/group_id"], args.seed)
    print(f"in-domain OOF {len(data['oof/label'])}, training sample {len(data['train/label'])}"
          f", external {len(half_a)} (half A {int(half_a.sum())}, half B "
          f"{int((~half_a).sum())} images)")
    rows = [evaluate(name, key, scorer, data, half_a)
            for name, (key, scorer) in candidates(data).items()]
    best = max(rows, key=lambda r: r["auroc_A"])
    ours = melalib_row(data, half_a)
    table = rows + ([ours] if ours else [])
    print("\n".join(render(table, best["score"])))
    print(f"\nchosen on half A: {best['score']}; half-B AUROC {best['auroc_B']:.3f} "
          "(the headline)")
    errors = {r["score"]: {half: error_rates(data, r["_ext"], r["_threshold"], mask)
                           for half, mask in (("B", ~half_a), ("all", np.ones_like(half_a)))}
              for r in (best, ours) if r is not None}
    for name, per in errors.items():
        for half, e in per.items():
            if e:
                print(f"{name}, {half}: shared-class images {e['n']}, flagged {e['n_flagged']}"
                      f"; error rate flagged {_pct(e['error_flagged'])}, unflagged "
                      f"{_pct(e['error_unflagged'])} (all {_pct(e['error_all'])})")
    wall = time.perf_counter() - started
    print(f"wall time {wall:.0f} s (feature extraction or cache read {extracted:.0f} s)")
    if args.out:
        clean = [{k: v for k, v in r.items() if not k.startswith("_")} for r in table]
        command = "python benchmarks/shift_scores.py " + " ".join(
            sys.argv[1:] if argv is None else argv)
        Path(args.out).write_text(json.dumps(
            {"command": command, "chosen": best["score"], "rows": clean, "errors": errors,
             "wall_s": round(wall, 1)}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
