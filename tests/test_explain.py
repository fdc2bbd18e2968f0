"""Grad-CAM in every model mode (checked against a hand computation), overlays, error
tables, explain_errors on a run folder, maps of chosen ids (methods, layers, TTA, targets).
Lesion masks and localisation: tests/test_localize.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from conftest import untrained_checkpoint
from PIL import Image

from melalib.checkpoints import save_checkpoint
from melalib.config import ModelConfig, RunConfig
from melalib.errors import ConfigError, DataError, MelalibError
from melalib.explain import (
    ImageOnlyWrapper,
    error_table,
    explain_errors,
    grad_cam,
    overlay,
    save_overlays,
)
from melalib.features import MetaEncoder
from melalib.models import build_model, gradcam_target_layers
from melalib.runs import RunDir
from melalib.table import LesionTable
from melalib.tasks import HAM7, MELANOMA, Task

SIZE = 64
N_META = 5


def tiny(task: Task, *, meta: bool = False, dual: bool = False, shared: bool = True,
         seed: int = 0, positive_head: bool = False) -> torch.nn.Module:
    """A random test_resnet model. Grad-CAM of a random network is all zero wherever the
    image's evidence for the target is negative; ``positive_head`` makes the head's weights
    positive, so the (non-negative) pooled features count for every class and every map has
    structure."""
    torch.manual_seed(seed)
    cfg = ModelConfig(backbone="test_resnet", use_meta=meta, meta_hidden=(8,), dual_image=dual,
                      shared_backbone=shared)
    model = build_model(cfg, task, N_META if meta else 0).eval()
    if positive_head:
        head = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
        with torch.no_grad():
            head.weight.abs_()
    return model


def batch(n: int = 3, dual: bool = False, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {"image": torch.randn(n, 3, SIZE, SIZE, generator=g),
           "meta": torch.randn(n, N_META, generator=g)}
    if dual:
        out["image2"] = torch.randn(n, 3, SIZE, SIZE, generator=g)
    return out


def hand_cam(model: torch.nn.Module, b: dict[str, torch.Tensor], branch: int,
             target: list[int] | None, binary: bool) -> np.ndarray:
    """Grad-CAM by hand: gradient of the target score at the branch's activation."""
    dual = getattr(model, "dual_image", False)
    separate = getattr(model, "backbone2", None) is not None
    layer = gradcam_target_layers(model, branch=branch if separate else 1, image_size=SIZE)[0]
    acts: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda m, i, o: acts.append(o))
    meta = b["meta"] if getattr(model, "n_meta", 0) else None
    out = model(image=b["image"], meta=meta, image2=b.get("image2") if dual else None)
    handle.remove()
    a = acts[branch - 1] if (dual and not separate) else acts[0]
    if binary:
        sign = torch.tensor([-1.0 if t == 0 else 1.0 for t in target]) if target else 1.0
        score = (out[:, 0] * sign).sum()
    else:
        classes = target if target is not None else out.argmax(1).tolist()
        score = out[torch.arange(len(out)), classes].sum()
    (grad,) = torch.autograd.grad(score, a)
    cam = F.relu((grad.mean(dim=(2, 3), keepdim=True) * a).sum(1)).detach().numpy()
    lo = cam.min(axis=(1, 2), keepdims=True)
    cam = cam - lo
    cam = cam / (1e-7 + cam.max(axis=(1, 2), keepdims=True))
    up = F.interpolate(torch.from_numpy(cam)[:, None], size=(SIZE, SIZE), mode="bilinear",
                       align_corners=False)[:, 0].numpy()
    up = up - up.min(axis=(1, 2), keepdims=True)
    return up / (1e-7 + up.max(axis=(1, 2), keepdims=True))


def check_maps(maps: np.ndarray, n: int) -> None:
    assert maps.shape == (n, SIZE, SIZE)
    assert maps.dtype == np.float32
    assert maps.min() >= 0.0 and maps.max() <= 1.0
    for m in maps:
        assert m.max() - m.min() > 0.1  # not constant


MODES = [
    pytest.param(MELANOMA, False, False, True, 1, None, id="image-only-binary"),
    pytest.param(HAM7, False, False, True, 1, 2, id="image-only-multiclass"),
    pytest.param(MELANOMA, True, False, True, 1, [1, 1, 1], id="fusion-binary-list"),
    pytest.param(HAM7, True, False, True, 1, None, id="fusion-multiclass-pred"),
    pytest.param(HAM7, True, True, True, 1, None, id="dual-shared-branch1"),
    pytest.param(HAM7, True, True, True, 2, [0, 3, 6], id="dual-shared-branch2"),
    pytest.param(MELANOMA, True, True, False, 1, 1, id="dual-separate-branch1"),
    pytest.param(MELANOMA, False, True, False, 2, None, id="dual-separate-branch2"),
]


@pytest.mark.parametrize(("task", "meta", "dual", "shared", "branch", "target"), MODES)
def test_gradcam_every_mode_matches_hand_computation(task, meta, dual, shared, branch,
                                                     target) -> None:
    model = tiny(task, meta=meta, dual=dual, shared=shared, positive_head=True)
    b = batch(dual=dual)
    maps = grad_cam(model, b, target_class=target, branch=branch)
    check_maps(maps, 3)
    ref_target = [target] * 3 if isinstance(target, int) else target
    ref = hand_cam(model, b, branch, ref_target, binary=task.kind == "binary")
    np.testing.assert_allclose(maps, ref, atol=2e-3)
    assert getattr(model, "backbone2", None) is None or not shared  # model left as it was
    assert not model.training


def test_binary_negative_direction() -> None:
    model = tiny(MELANOMA, meta=True, seed=3)
    b = batch()
    mixed = grad_cam(model, b, target_class=[1, 0, 1])
    np.testing.assert_allclose(mixed, hand_cam(model, b, 1, [1, 0, 1], binary=True), atol=2e-3)
    pos = grad_cam(model, b, target_class=1)
    neg = grad_cam(model, b, target_class=0)
    assert np.abs(pos - neg).max() > 0.1
    np.testing.assert_allclose(pos, grad_cam(model, b), atol=1e-6)  # default: melanoma
    # with a positive head every image counts for melanoma: no evidence for benign at all
    positive = tiny(MELANOMA, meta=True, seed=3, positive_head=True)
    assert grad_cam(positive, b, target_class=0).max() == 0.0
    check_maps(grad_cam(positive, b, target_class=1), 3)


def test_metadata_is_held_per_sample() -> None:
    model = tiny(HAM7, meta=True, dual=True, positive_head=True)
    b = batch(dual=True)
    together = grad_cam(model, b, target_class=4, branch=2)
    for i in range(3):
        one = {k: v[i:i + 1] for k, v in b.items()}
        np.testing.assert_allclose(together[i], grad_cam(model, one, target_class=4,
                                                         branch=2)[0], atol=1e-5)


@pytest.mark.parametrize("method", ["gradcam++", "eigencam"])
def test_other_methods(method: str) -> None:
    model = tiny(MELANOMA, meta=True, dual=True, positive_head=True)
    for branch in (1, 2):
        check_maps(grad_cam(model, batch(dual=True), method=method, branch=branch), 3)


def test_metadata_only_model_and_bad_requests_raise() -> None:
    torch.manual_seed(0)
    meta_only = build_model(ModelConfig(use_image=False, meta_hidden=(8,)), MELANOMA, N_META)
    with pytest.raises(MelalibError, match="no image to explain"):
        grad_cam(meta_only, batch())
    with pytest.raises(MelalibError, match="branch=2"):
        grad_cam(tiny(MELANOMA), batch(), branch=2)
    with pytest.raises(MelalibError, match="method"):
        grad_cam(tiny(MELANOMA), batch(), method="scorecam")
    with pytest.raises(MelalibError, match="0 or 1"):
        grad_cam(tiny(MELANOMA), batch(), target_class=2)


def test_wrapper_calls_with_one_tensor() -> None:
    model = tiny(HAM7, meta=True, dual=True)
    b = batch(dual=True)
    with torch.no_grad():
        full = model(image=b["image"], meta=b["meta"], image2=b["image2"])
        one = ImageOnlyWrapper(model, b["meta"], image2=b["image2"])(b["image"])
        two = ImageOnlyWrapper(model, b["meta"], explain="image2", image=b["image"])(b["image2"])
    torch.testing.assert_close(one, full)
    torch.testing.assert_close(two, full)


# ------------------------------------------------------------------------------ overlays
def test_overlay_and_save(tmp_path: Path) -> None:
    image = np.zeros((32, 48, 3), np.uint8)
    image[..., 1] = 255
    image[0, 0] = 0
    cam = np.zeros((8, 12), np.float32)
    cam[:, :6] = 1.0  # left half hot
    assert np.abs(overlay(image, cam, alpha=0.0).astype(int) - image).max() <= 1
    hot = overlay(image, cam, alpha=1.0)
    assert hot.shape == (32, 48, 3) and hot.dtype == np.uint8
    assert hot[16, 4, 0] > 100 and hot[16, 4, 2] < 30  # jet: red where the map is 1
    assert hot[16, 44, 2] > 100 and hot[16, 44, 0] < 30  # blue where it is 0
    paths = save_overlays([("a/b", image, cam), ("a b", image, cam), ("c", image, cam)],
                          tmp_path / "cams")
    assert [p.name for p in paths] == ["a_b.png", "a_b_2.png", "c.png"]
    written = np.asarray(Image.open(paths[2]))
    np.testing.assert_array_equal(written, overlay(image, cam))
    assert not [p for p in (tmp_path / "cams").iterdir() if p.suffix != ".png"]


# --------------------------------------------------------------------------- error table
def test_error_table_binary_by_hand() -> None:
    oof = pd.DataFrame({
        "image_id": list("abcdefgh"), "fold": [0, 1, 0, 1, 0, 1, 0, 1],
        "label": [1, 1, 1, 0, 0, 0, 1, 0],
        "prob_melanoma": [0.10, 0.45, 0.90, 0.95, 0.60, 0.05, 0.02, 0.40],
    })
    table = pd.DataFrame({"image_id": list("hgfedcba"), "age": np.arange(8) * 10.0,
                          "site": "torso", "image_path": [f"/x/{c}.jpg" for c in "hgfedcba"],
                          "label": 9})
    fn = error_table(oof, table, MELANOMA, "fn", top=2)
    assert fn["image_id"].tolist() == ["g", "a"]  # lowest P(mel) among positives first
    np.testing.assert_allclose(fn["confidence"], [0.98, 0.90])
    assert fn["age"].tolist() == [10.0, 70.0] and fn["image_path"].tolist()[0] == "/x/g.jpg"
    assert fn["label"].tolist() == [1, 1]  # the OOF's label, not the table's
    assert error_table(oof, table, MELANOMA, "fp")["image_id"].tolist() == ["d", "e"]
    assert error_table(oof, table, MELANOMA, "tp")["image_id"].tolist() == ["c"]
    assert error_table(oof, table, MELANOMA, "tn")["image_id"].tolist() == ["f", "h"]
    assert error_table(oof, table, MELANOMA, "wrong")["image_id"].tolist() == list("gdaeb")
    assert error_table(oof, table, MELANOMA, "fn", threshold=0.5)["pred_name"].eq(
        "benign").all()
    assert error_table(oof, table, MELANOMA, "fn", threshold=0.05)["image_id"].tolist() == ["g"]


def test_error_table_multiclass() -> None:
    task = Task("tri", "multiclass", ("nv", "mel", "bcc"), "balanced_accuracy")
    oof = pd.DataFrame({"image_id": ["p", "q", "r", "s"], "fold": 0, "label": [1, 0, 2, 1],
                        "prob_nv": [0.7, 0.2, 0.1, 0.1], "prob_mel": [0.2, 0.5, 0.3, 0.8],
                        "prob_bcc": [0.1, 0.3, 0.6, 0.1]})
    table = pd.DataFrame({"image_id": ["p", "q", "r", "s"], "sex": ["m", "f", "m", "f"]})
    wrong = error_table(oof, table, task, "wrong")
    assert wrong["image_id"].tolist() == ["p", "q"]
    assert wrong["pred_name"].tolist() == ["nv", "mel"]
    assert error_table(oof, table, task, "fn")["image_id"].tolist() == ["p"]
    assert error_table(oof, table, task, "fp")["image_id"].tolist() == ["q"]
    assert error_table(oof, table, task, "fn", positive="bcc").empty
    plain = Task("t2", "multiclass", ("x", "y", "z"), "balanced_accuracy")
    with pytest.raises(MelalibError, match="positive"):
        error_table(oof.rename(columns={"prob_nv": "prob_x", "prob_mel": "prob_y",
                                        "prob_bcc": "prob_z"}), table, plain, "fn")


# ------------------------------------------------------------------------ explain_errors
def _run(root: Path) -> tuple[RunDir, LesionTable]:
    ids = [f"r{i}" for i in range(8)]
    (root / "img").mkdir(parents=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in ids:
        arr = rng.integers(0, 255, (36, 36, 3), dtype=np.uint8)
        Image.fromarray(arr).save(root / "img" / f"{i}.jpg")
        paths.append(str(root / "img" / f"{i}.jpg"))
    df = pd.DataFrame({"image_id": ids, "image_path": paths, "group_id": ids,
                       "label": [1, 0] * 4, "label_name": ["melanoma", "benign"] * 4,
                       "age": [30.0, 40, 50, 60, 70, 35, 45, 55], "sex": ["male", "female"] * 4,
                       "site": "torso", "source": "synthetic", "split": "train",
                       "fold": [0, 0, 1, 1, 0, 0, 1, 1]})
    table = LesionTable(df, MELANOMA).validate()
    cfg = RunConfig.from_dict({"name": "x", "output_dir": str(root / "out"), "n_folds": 2,
                               "backbone": "test_resnet", "image_size": 32, "meta_hidden": (8,),
                               "device": "cpu"})
    run = RunDir.open(cfg)
    run.save_table(table)
    p = [0.1, 0.2, 0.3, 0.9, 0.8, 0.4, 0.05, 0.3]  # FN: r6 (0.05, fold 1), r0 (0.1, fold 0)
    for k in range(2):
        train, val = table.fold(k)
        enc = MetaEncoder("default").fit(train)
        torch.manual_seed(k)
        model = build_model(cfg.model, MELANOMA, enc.dim)
        save_checkpoint(run.checkpoint(k, "best"),
                        untrained_checkpoint(cfg, MELANOMA, k, model, enc))
        pd.DataFrame({"image_id": val["image_id"], "group_id": val["group_id"], "fold": k,
                      "label": val["label"], "prob_melanoma": np.array(p)[val.index]}
                     ).to_csv(run.oof_path(k), index=False)
    return run, table


def test_explain_errors_uses_each_rows_fold(tmp_path: Path) -> None:
    from melalib.inference import load_predictor
    from melalib.runtime import make_dataset

    run, table = _run(tmp_path)
    errors, images, cams = explain_errors(run.path, kind="fn", top=2, target="true")
    assert errors["image_id"].tolist() == ["r6", "r0"]
    assert errors["fold"].tolist() == [1, 0]
    assert errors["age"].tolist() == [45.0, 30.0]
    assert cams.shape == (2, 32, 32) and len(images) == 2
    assert images[0].shape == (32, 32, 3) and images[0].dtype == np.uint8
    for i, (image_id, k) in enumerate(zip(errors["image_id"], errors["fold"], strict=True)):
        member = load_predictor(run.checkpoint(k, "best"), device="cpu").members[0]
        row = table.df[table.df["image_id"] == image_id]
        ds = make_dataset(member.cfg, table, row, member.encoder.transform(row), train=False)
        item = ds[0]
        b = {"image": item["image"][None], "meta": item["meta"][None]}
        np.testing.assert_allclose(cams[i], grad_cam(member.model, b, target_class=1)[0],
                                   atol=1e-5)
    only = explain_errors(run.path, kind="fn", top=5, fold=0)[0]
    assert only["image_id"].tolist() == ["r0"]


def test_degenerate_maps_are_reported(caplog: pytest.LogCaptureFixture) -> None:
    model = tiny(MELANOMA, positive_head=True)
    small = {"image": torch.randn(2, 3, 32, 32)}  # the last stage would be 1 x 1 here ...
    with caplog.at_level("WARNING", logger="melalib"):
        maps = grad_cam(model, small)
    assert maps.shape == (2, 32, 32)  # ... so an earlier, finer stage is explained
    assert all(m.max() - m.min() > 0.1 for m in maps)
    assert "constant" not in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="melalib"):
        grad_cam(model, batch(n=2), target_class=0)  # no evidence for benign at all
    assert "2 of 2 maps are constant" in caplog.text


# ------------------------------------------------------------- methods, layers and TTA
@pytest.mark.parametrize("method", ["hirescam", "layercam", "xgradcam"])
def test_more_methods_give_maps(method: str) -> None:
    maps = grad_cam(tiny(HAM7, positive_head=True), batch(n=2), method=method, target_class=1)
    assert maps.shape == (2, SIZE, SIZE) and maps.min() >= 0 and maps.max() <= 1


def test_tta_maps_are_each_views_map_mapped_back_and_averaged() -> None:
    from melalib.transforms import tta_views

    model = tiny(HAM7, positive_head=True)
    b = batch(n=2)
    both = grad_cam(model, b, target_class=[1, 2], tta=2)
    plain = grad_cam(model, b, target_class=[1, 2])
    flip = tta_views(2)[1]
    flipped = grad_cam(model, {"image": flip(b["image"])}, target_class=[1, 2])
    np.testing.assert_allclose(both, (plain + flip.inverse(torch.from_numpy(flipped)).numpy())
                               / 2, atol=1e-5)
    assert not np.allclose(both, plain, atol=1e-3)


def test_finer_layer_gives_a_finer_map() -> None:
    model = tiny(HAM7, positive_head=True)
    coarse = grad_cam(model, batch(n=1), target_class=1)
    fine = grad_cam(model, batch(n=1), target_class=1, layer="finer")
    assert fine.shape == coarse.shape and not np.allclose(fine, coarse, atol=1e-3)


# ------------------------------------------------------------------ maps of chosen ids
def test_select_rows_by_id_and_the_explained_class(tmp_path: Path) -> None:
    from melalib.explain import explained_classes, select_rows

    run, _ = _run(tmp_path)
    rows = select_rows(run, ids=["r3", "r0"])
    assert rows["image_id"].tolist() == ["r3", "r0"]
    assert rows["pred"].tolist() == [1, 0]  # the run's own call: 0.9 >= 0.5, 0.1 < 0.5
    assert explained_classes(rows, MELANOMA, "run").tolist() == [1, 0]
    assert explained_classes(rows, MELANOMA, "true").tolist() == [0, 1]
    assert explained_classes(rows, MELANOMA, "melanoma").tolist() == [1, 1]
    assert explained_classes(rows, MELANOMA, "benign").tolist() == [0, 0]
    with pytest.raises(ConfigError, match="target must be"):
        explained_classes(rows, MELANOMA, "nevus")
    with pytest.raises(DataError, match=r"no OOF prediction.*'zz'"):
        select_rows(run, ids=["r0", "zz"])
    with pytest.raises(ConfigError, match="not both"):
        select_rows(run, ids=["r0"], kind="fn")


def test_explain_ids_explains_the_runs_call_with_its_probability(tmp_path: Path) -> None:
    from melalib.explain import explain, select_rows

    run, _ = _run(tmp_path)
    rows = select_rows(run, ids=["r3", "r0"])
    out = explain(run, rows, device="cpu")
    assert out.rows["explained_name"].tolist() == ["melanoma", "benign"]
    assert out.rows["explained_prob"].tolist() == pytest.approx([0.9, 0.9])
    by_hand = explain_errors(run.path, kind="fn", top=1, fold=0, target="pred")[2]  # r0
    np.testing.assert_allclose(out.cams[1], by_hand[0], atol=1e-6)
    mel = explain(run, rows, target="melanoma", device="cpu")
    np.testing.assert_allclose(mel.cams[0], out.cams[0], atol=1e-6)
    floor = explain(run, rows, device="cpu", random_weights=True)
    assert floor.cams.shape == out.cams.shape and not np.allclose(floor.cams, out.cams)
    again = explain(run, rows, device="cpu", random_weights=True)
    np.testing.assert_array_equal(again.cams, floor.cams)  # the floor is seeded


# ------------------------------------------------------------ both images of a pair
def test_branch_views_name_the_images_in_branch_order() -> None:
    from melalib.explain import branch_views

    milk = {"dataset": "milk10k", "dual_image": True}
    assert branch_views(RunConfig.from_dict(milk)) == ("dermoscopic", "clinical")
    assert branch_views(RunConfig.from_dict({**milk, "milk_view": "clinical"})) == (
        "clinical", "dermoscopic")
    assert branch_views(RunConfig.from_dict({"dataset": "milk10k"})) == ("image",)
    assert branch_views(RunConfig.from_dict({"dataset": "synthetic", "synthetic_task": "paired",
                                             "dual_image": True})) == ("dermoscopic", "clinical")
    assert branch_views(RunConfig.from_dict({"dataset": "custom", "custom_csv": "x.csv",
                                             "dual_image": True})) == (
        "image 1", "image 2")
    assert branch_views(None) == ("image",)


def test_explain_pairs_maps_each_image_with_the_other_held_fixed(dual_run: RunDir) -> None:
    """Issue 20: a dual-image run's Grad-CAM covers both images of a lesion, each by its
    own branch (the other image and the metadata held fixed), for the class the run
    called, with the run's out-of-fold probability of it."""
    from melalib.explain import explain_pairs, fold_inputs, select_rows

    oof = dual_run.oof()
    ids = oof["image_id"].astype(str).head(3).tolist()
    rows = select_rows(dual_run, ids=ids)
    pairs = explain_pairs(dual_run, rows, device="cpu")
    assert pairs.views == ("dermoscopic", "clinical")
    assert pairs.rows["image_id"].tolist() == ids
    task = dual_run.task
    probs = oof.set_index(oof["image_id"].astype(str)).loc[ids, task.prob_columns].to_numpy()
    called = probs.argmax(axis=1)
    assert pairs.rows["explained"].tolist() == called.tolist()
    assert pairs.rows["explained_name"].tolist() == [task.classes[c] for c in called]
    np.testing.assert_allclose(pairs.rows["explained_prob"], probs[np.arange(3), called])
    inputs = next(fold_inputs(dual_run, rows, "cpu"))
    for b in (1, 2):
        by_hand = grad_cam(inputs.model, inputs.batch, target_class=called.tolist(), branch=b)
        np.testing.assert_allclose(pairs.cams[b - 1], by_hand, atol=1e-5)
        for j in range(3):
            np.testing.assert_array_equal(pairs.images[b - 1][j], inputs.image(j, b))
    assert pairs.cams[0].shape == pairs.cams[1].shape == (3, 32, 32)
    assert not np.allclose(pairs.cams[0], pairs.cams[1])  # two images, two maps
    assert not np.array_equal(pairs.images[0][0], pairs.images[1][0])


def test_explain_pairs_refuses_a_single_image_run(tmp_path: Path) -> None:
    from melalib.explain import explain_pairs, select_rows

    run, _ = _run(tmp_path)
    with pytest.raises(ConfigError, match="single-image run"):
        explain_pairs(run, select_rows(run, ids=["r0"]), device="cpu")
