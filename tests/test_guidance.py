"""melalib.guidance (issue 25, cam_guidance): the loss term is the Grad-CAM share outside the
mask, computed independently here by autograd; masks travel with the image's framing and
augmentation; training with it runs end to end and says how many rows are guided; absent
masks are a clear error, never a silent unguided run."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TINY
from PIL import Image

from melalib.config import RunConfig
from melalib.data.dataset import LesionDataset
from melalib.data.synthetic import make_synthetic
from melalib.engine import train
from melalib.errors import ConfigError
from melalib.guidance import CamGuide, RowMasks, outside_share, row_masks, target_classes
from melalib.localize import MaskSource
from melalib.models import FusionNet
from melalib.runs import RunDir
from melalib.tasks import HAM7, MELANOMA, MILK11
from melalib.transforms import build_transforms

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def test_outside_share_of_known_maps() -> None:
    maps = torch.zeros(3, 1, 2, 2)
    maps[0, 0, 0, 0] = 1.0  # all mass in the top-left cell
    maps[1, 0, 0, 0], maps[1, 0, 1, 1] = 1.0, 3.0
    weights = torch.ones(3, 1)
    masks = torch.zeros(3, 4, 4)
    masks[:, :2, :2] = 1  # the lesion is the top-left quadrant
    share = outside_share(maps, weights, masks)
    np.testing.assert_allclose(share.numpy(), [0.0, 0.75, 0.0], atol=1e-6)  # zero map: 0
    half = torch.zeros(1, 4, 4)
    half[:, :1, :2] = 1  # the top-left cell is half lesion
    assert outside_share(maps[:1], weights[:1], half).item() == pytest.approx(0.5, abs=1e-6)
    negative = outside_share(-maps[1:2], weights[:1], masks[:1])  # ReLU: nothing positive
    assert negative.item() == 0.0


def test_target_classes_per_task_kind() -> None:
    assert target_classes(HAM7, torch.tensor([3, 0])).tolist() == [3, 0]
    onehot = torch.zeros(2, len(MILK11.classes))
    onehot[0, 5] = 1
    assert target_classes(MILK11, onehot).tolist() == [5, -1]  # an unlabelled row: -1
    assert target_classes(MELANOMA, torch.tensor([1.0, 0.0, -1.0])).tolist() == [0, 0, -1]


def _grad_cam_share(model: FusionNet, image: torch.Tensor, meta: torch.Tensor,
                    classes: list[int], mask: torch.Tensor) -> np.ndarray:
    """Grad-CAM by its definition at the pooled layer: channel weights are the spatial mean
    of d logit_c / d A, the map ReLU(sum_k alpha_k A_k); then the share outside ``mask``."""
    kept: list[torch.Tensor] = []
    hook = model.backbone.global_pool.register_forward_hook(
        lambda _m, inputs, _o: kept.append(inputs[0]))
    logits = model(image=image, meta=meta)
    hook.remove()
    A = kept[0]
    shares = []
    for b, c in enumerate(classes):
        (grad,) = torch.autograd.grad(logits[b, c], A, retain_graph=True)
        alpha = grad[b].mean((1, 2))
        cam = torch.relu((alpha[:, None, None] * A[b]).sum(0)).detach()
        lesion = torch.nn.functional.adaptive_avg_pool2d(mask[b][None, None].float(),
                                                         cam.shape)[0, 0]
        shares.append(float((cam * (1 - lesion)).sum() / (cam.sum() + 1e-6)))
    return np.array(shares)


def test_penalty_is_the_grad_cam_share_outside_the_mask() -> None:
    torch.manual_seed(0)
    model = FusionNet("resnet10t", n_outputs=7, n_meta=3, meta_hidden=(4,)).eval()
    guide = CamGuide(model, HAM7, weight=2.0)
    image, meta = torch.randn(4, 3, 64, 64), torch.randn(4, 3)
    masks = torch.zeros(4, 1, 64, 64)
    masks[:, :, 10:40, 16:50] = 1
    target = torch.tensor([0, 3, 6, 2])
    model(image=image, meta=meta)
    batch = {"target": target, "mask": masks, "has_mask": torch.tensor([1.0, 1.0, 0.0, 1.0])}
    got = guide.penalty(batch).item()
    ref = _grad_cam_share(model, image, meta, target.tolist(), masks[:, 0])
    assert got == pytest.approx(2.0 * ref[[0, 1, 3]].mean(), rel=1e-4)  # row 2 has no mask
    guide.clear()  # the reference's own forward was captured too
    with torch.no_grad():
        model(image=image, meta=meta)  # validation captures nothing
    with pytest.raises(ConfigError, match="no feature map was captured"):
        guide.penalty(batch)


def test_guidance_moves_the_map_onto_the_lesion() -> None:
    torch.manual_seed(0)
    model = FusionNet("resnet10t", n_outputs=2).train()
    guide = CamGuide(model, HAM7, weight=1.0)
    image = torch.randn(8, 3, 64, 64)
    masks = torch.zeros(8, 1, 64, 64)
    masks[:, :, 16:48, 16:48] = 1
    batch = {"target": torch.zeros(8, dtype=torch.long), "mask": masks,
             "has_mask": torch.ones(8)}
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    shares = []
    for _ in range(15):
        guide.clear()
        model(image=image)
        loss = guide.penalty(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        shares.append(loss.item())
    assert shares[-1] < 0.5 * shares[0]


def test_a_model_without_a_pooled_linear_head_is_refused() -> None:
    with pytest.raises(ConfigError, match="global_pool and a linear head"):
        CamGuide(torch.nn.Linear(3, 2), HAM7, 1.0)


def _square(size: tuple[int, int], box: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    mask = np.zeros(size, bool)
    y0, y1, x0, x1 = box
    mask[y0:y1, x0:x1] = True
    image = np.where(mask[..., None], 255, 0).astype(np.uint8).repeat(3, axis=2)
    return image, mask


@pytest.mark.parametrize("aspect", ["squash", "crop", "pad"])
def test_the_mask_follows_framing_and_augmentation(aspect: str) -> None:
    image, mask = _square((60, 90), (10, 45, 5, 30))  # off-centre: a crop cuts into it
    transform = build_transforms(64, train=True, strength="medium", seed=3, aspect=aspect,
                                 mean=(0, 0, 0), std=(1, 1, 1))
    still = build_transforms(64, train=False, aspect=aspect).with_mask(image, mask)[1]

    def iou(a: np.ndarray, b: np.ndarray) -> float:
        union = (a | b).sum()
        return 1.0 if union == 0 else float((a & b).sum() / union)

    moved = []
    for seed in range(8):
        out, framed = transform.with_mask(image, mask, seed=seed)
        bright = out.mean(0) > 0.5  # the lesion's pixels after colour jitter
        assert framed.shape == (64, 64) and iou(bright, framed) > 0.7
        moved.append(iou(bright, still))
    assert min(moved) < 0.5  # an unmoved mask would miss: the check can fail


def test_a_crop_cuts_the_mask_as_it_cuts_the_image() -> None:
    image, mask = _square((40, 100), (5, 35, 0, 20))  # the lesion lies in the cropped margin
    crop = build_transforms(32, train=False, aspect="crop")
    squash = build_transforms(32, train=False, aspect="squash")
    assert not crop.with_mask(image, mask)[1].any()
    assert squash.with_mask(image, mask)[1].any()
    with pytest.raises(ValueError, match="does not fit"):
        crop.with_mask(image, mask[:10])


@pytest.fixture(scope="module")
def masked(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """A synthetic 7-class table and its true masks, one of them withheld."""
    root = tmp_path_factory.mktemp("guided")
    table = make_synthetic(root / "data", "multiclass", n_patients=16, image_size=32, seed=0)
    masks = root / "masks"
    masks.mkdir()
    for path in table.df["image_path"]:
        src = Path(path).parent.parent / "masks" / f"{Path(path).stem}.png"
        (masks / f"{Path(path).stem}_segmentation.png").write_bytes(src.read_bytes())
    withheld = table.df["image_id"].iat[1]
    (masks / f"{withheld}_segmentation.png").unlink()
    return {"root": root, "table": table, "masks": masks, "withheld": withheld}


def test_dataset_items_carry_their_masks(masked) -> None:
    table = masked["table"]
    df = table.df.head(3)
    rows = row_masks(df, str(masked["masks"]), "{image_id}_segmentation.png")
    assert rows.n_found == 2 and rows.paths[1] is None
    ds = LesionDataset(df, table.task, None, build_transforms(24, train=True, seed=1),
                       seed=1, masks=rows)
    items = [ds[i] for i in range(3)]
    assert [float(it["has_mask"]) for it in items] == [1.0, 0.0, 1.0]
    assert items[1]["mask"].shape == (1, 24, 24) and not items[1]["mask"].any()
    assert items[0]["mask"].shape == (1, 24, 24) and items[0]["mask"].any()
    plain = LesionDataset(df, table.task, None, build_transforms(24, train=True, seed=1), seed=1)
    torch.testing.assert_close(plain[1]["image"], items[1]["image"])  # same augmentation


def test_no_mask_at_all_is_an_error_naming_the_first_file(masked, tmp_path: Path) -> None:
    df = masked["table"].df
    with pytest.raises(ConfigError, match=r"none of the \d+ training rows has a mask") as err:
        row_masks(df, str(tmp_path), "{image_id}_segmentation.png")
    assert f"{df['image_id'].iat[0]}_segmentation.png" in str(err.value)
    with pytest.raises(ConfigError, match="cam_guidance > 0 needs guide_masks"):
        RunConfig.from_dict({**TINY, "cam_guidance": 1.0})


def test_row_masks_resizes_to_the_decoded_image(tmp_path: Path) -> None:
    mask = np.zeros((20, 30), np.uint8)
    mask[:, :15] = 255
    Image.fromarray(mask).save(tmp_path / "a_segmentation.png")
    df = pd.DataFrame({"image_id": ["a"], "image_path": ["x/a.jpg"]})
    rows = RowMasks.of(df, MaskSource(tmp_path))
    got = rows(0, (10, 15))
    assert got.shape == (10, 15) and got[:, :7].all() and not got[:, 8:].any()


def test_training_with_guidance_runs_and_says_how_many_rows_are_guided(
        masked, caplog: pytest.LogCaptureFixture) -> None:
    root, table = masked["root"], masked["table"]
    cfg = RunConfig.from_dict({**TINY, "synthetic_task": "multiclass", "data_dir": str(
        root / "data"), "output_dir": str(root / "out"), "name": "guided", "device": "cpu",
        "cam_guidance": 1.0, "guide_masks": str(masked["masks"]), "fold": 0})
    with caplog.at_level(logging.INFO, logger="melalib"):
        train(cfg, table=table, progress=False)
    run = RunDir.read(root / "out" / "guided")
    assert run.done_folds() == [0]
    n_train = len(run.table().fold(0)[0])
    assert any(f"of {n_train} training rows have a lesion mask" in r.getMessage()
               for r in caplog.records)
    assert run.cfg.train.cam_guidance == 1.0
