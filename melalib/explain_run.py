"""`melalib explain`: a run's maps, measured against lesion masks and baselines, written to a
folder this command owns.

`measure` puts the pieces together for one selection of a run's rows: the maps
(`melalib.explain.explain`), their localisation against the masks in the model's framing
(`melalib.localize`) beside the centre-prior baseline and, when asked, the random-weights
floor, and, when asked, faithfulness and border occlusion (`melalib.faithful`).
`write_explanations` writes an `ExplainResult` to an output folder marked
``.melalib-explain``: a folder without that mark is never written into (unless empty), one
with it is replaced only with ``overwrite``, and the run folder and the mask folder are
never the output. Files: ``explanations.csv`` (one row per image: the run's call, the
explained class and its probability, the measures; ``prior_*`` / ``random_*`` the
baselines'), ``summary.json`` (options and pooled measures with CIs), ``maps.npz``
(``image_id``, ``cams``) and ``overlays/<image_id>.png``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .explain import Explanation, explain, save_overlays
from .faithful import run_faithfulness
from .io import atomic_path, write_csv, write_json
from .io import claim_folder as io_claim_folder
from .localize import BORDER, MaskSource, centre_prior, framed_masks, localization, pooled
from .runs import RunDir


@dataclass
class ExplainResult:
    """An explanation measured: per-image ``table``, ``pooled`` measures (column ``maps``:
    model / centre_prior / random_weights), the maps, the options used, and the masks the
    maps were measured against in the maps' framing (N, H, W bool; all False where a row
    had none)."""

    explanation: Explanation
    table: pd.DataFrame
    pooled: pd.DataFrame
    options: dict[str, Any] = field(default_factory=dict)
    masks: np.ndarray | None = None


def _masks(explanation: Explanation, source: MaskSource | None,
           missing: str) -> tuple[np.ndarray, list[str]]:
    """The masks of the explained rows in the checkpoints' own framing."""
    size = explanation.cams.shape[-1]
    return framed_masks(explanation.rows, size, explanation.aspect, source, missing,
                        images=explanation.images)


def _pool_all(parts: dict[str, pd.DataFrame], groups: Any, n_boot: int) -> pd.DataFrame:
    return pd.concat([pooled(per, groups, n_boot=n_boot).assign(maps=name)
                      for name, per in parts.items()], ignore_index=True)


def measure(run: RunDir | str | Path, rows: pd.DataFrame, *, method: str = "gradcam",
            layer: str | int | None = None, target: str = "run", tta: int = 1,
            masks: MaskSource | None = None, missing: str = "error", floor: bool = False,
            faithfulness: bool = False, border: float = BORDER, n_boot: int = 1000,
            device: str = "auto", with_masks: bool = True) -> ExplainResult:
    """Maps of ``rows`` (`melalib.explain.select_rows`) measured: localisation against
    ``masks`` (`melalib.localize.framed_masks`; ``missing`` skip: rows without a mask are
    left out of the measures) beside the centre prior and, with ``floor``, random weights;
    with ``faithfulness``, border occlusion and deletion / insertion. ``with_masks=False``:
    the border measures alone (no masks needed)."""
    run = run if isinstance(run, RunDir) else RunDir.read(run)
    expl = explain(run, rows, target=target, method=method, layer=layer, tta=tta,
                   device=device)
    table = expl.rows.copy()
    shape = expl.cams.shape[1:]
    if with_masks:
        mask, kinds = _masks(expl, masks, missing)
    else:
        mask, kinds = np.zeros((len(rows), *shape), bool), ["none"] * len(rows)
    table["mask"] = kinds
    keep = np.array([k != "missing" for k in kinds], dtype=bool)
    maps = {"model": expl.cams}
    maps["centre_prior"] = np.broadcast_to(centre_prior(shape), expl.cams.shape)
    if floor:
        maps["random_weights"] = explain(run, rows, target=target, method=method, layer=layer,
                                         tta=tta, device=device, random_weights=True).cams
    per = {name: localization(m, mask, border) for name, m in maps.items()}
    for name, prefix in (("model", ""), ("centre_prior", "prior_"), ("random_weights", "random_")):
        if name in per:
            table = pd.concat([table, per[name].add_prefix(prefix)], axis=1)
    if faithfulness:
        table = pd.concat([table, run_faithfulness(run, expl, border, device=device)], axis=1)
    groups = table["group_id"].astype(str).to_numpy()[keep] if "group_id" in table else None
    result = _pool_all({k: v[keep].reset_index(drop=True) for k, v in per.items()}, groups,
                       n_boot) if keep.any() else pd.DataFrame()
    options = {"method": method, "layer": str(layer or "auto"), "target": target, "tta": tta,
               "border": border, "masks": None if masks is None else
               {"folder": str(masks.folder), "pattern": masks.pattern},
               "missing_masks": missing, "n_images": len(rows), "n_measured": int(keep.sum()),
               "n_estimated_masks": kinds.count("estimate")}
    return ExplainResult(expl, table, result, options, mask)


# ------------------------------------------------------------------------- output folder
def claim_folder(out: str | Path, overwrite: bool, inputs: list[Path]) -> Path:
    """``out`` made ready for writing under the one write rule (`io.claim_folder`, kind
    ``explain``): created and marked, or an existing explain folder whose earlier files are
    removed (``overwrite``); never a folder that is not its own, never one that holds or lies
    inside one of ``inputs``, never through a link."""
    return io_claim_folder(out, "explain", overwrite=overwrite, inputs=inputs,
                           subfolders=("overlays",), clear=True)


def write_explanations(result: ExplainResult, out: str | Path, run: RunDir,
                       overwrite: bool = False, masks: MaskSource | None = None) -> Path:
    """Write ``result`` into ``out`` (`claim_folder`); returns the folder."""
    inputs = [run.path] + ([Path(masks.folder)] if masks is not None else [])
    path = claim_folder(out, overwrite, inputs)
    expl = result.explanation
    write_csv(path / "explanations.csv", result.table)
    summary = {"run": str(run.path), **result.options,
               "pooled": result.pooled.to_dict(orient="records")}
    write_json(path / "summary.json", summary)
    with atomic_path(path / "maps.npz") as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, image_id=expl.rows["image_id"].astype(str).to_numpy(),
                            cams=expl.cams.astype(np.float16))
    save_overlays(zip(expl.rows["image_id"].astype(str), expl.images, expl.cams, strict=True),
                  path / "overlays")
    return path


def pooled_text(pooled_df: pd.DataFrame) -> str:
    """The pooled measures as a small text table: one line per measure, one column per maps."""
    if pooled_df.empty:
        return "no image had a mask: nothing measured"
    lines = []
    for measure_name, part in pooled_df.groupby("measure", sort=False):
        cells = [f"{r.maps} {r.estimate:.3f} [{r.low:.3f}, {r.high:.3f}]"
                 for r in part.itertuples()]
        lines.append(f"{measure_name:<15} " + "; ".join(cells))
    return "\n".join(lines)
