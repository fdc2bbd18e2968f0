"""A deterministic synthetic default dataset of dermoscopy-like images plus metadata.

``make_synthetic(out_dir, task, n_patients, image_size, seed)`` draws patients, their
lesions and images, and writes JPEGs under ``out_dir/images/``, the true lesion masks under
``out_dir/masks/`` (PNG, read with `lesion_mask`), the stored table
(`LesionTable.save`) and ``meta.json`` (parameters, version, table checksum).

How labels relate to what a model can see:

* image (the ABCD rule): malignant classes are larger, asymmetric (odd shape harmonics),
  with irregular borders (high harmonics) and several colours; every class has its own
  colour palette and structures (vessels, dots, scale, lacunae, a central white patch);
* metadata: age raises melanoma / BCC / AKIEC odds, sites shift classes (BCC and AKIEC on
  the head and neck, dermatofibroma on the legs, ...), male sex slightly raises melanoma;
* a patient latent ``z`` lightens the patient's skin, shifts the lesions' hue and raises
  the odds of malignant classes; a patient "fingerprint" (background tint, lighting,
  dermoscope vignette, hairiness) is shared by the patient's images, and repeated images
  of a lesion share its label, so a split that is not grouped by patient scores higher.

Class counts are fixed per table (so tiny tables keep every class): the binary task has
``POSITIVE_RATE`` = 8 % melanoma lesions, the multiclass task a flattened HAM10000 profile
(nv dominant), the paired task a flattened MILK10k profile (BCC dominant). Lesions are
assigned to classes by Gumbel top-k on the label model's log-probabilities, after first
giving each non-dominant class up to 5 distinct training patients (grouped 5-fold CV).

About 15 % of patients (whole patients) form the test split: ``label`` -1, ``label_name``
"", their true labels kept in ``true_label`` for scoring. The binary table's training rows
carry the lesion's look as an ISIC ``diagnosis`` (MEL, NV, BKL, DF, VASC) for
``target=diagnosis``. The stored table keeps image paths
relative to ``out_dir``; the returned table holds absolute paths.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFilter

from ..errors import ConfigError, DataError
from ..io import write_json
from ..registry import Registry
from ..table import SITES, TABLE_FILE, TASK_FILE, LesionTable
from ..tasks import HAM7, MELANOMA, MILK11, Task

VERSION = 3  # 2: true lesion masks under masks/; 3: binary diagnosis column
GENERATOR = "melalib.data.synthetic"
#: the ``synthetic_task`` choices: name -> the task the generator draws
TASKS: Registry[Task] = Registry("synthetic_task",
                                 {"binary": MELANOMA, "multiclass": HAM7, "paired": MILK11})
POSITIVE_RATE = 0.08  # binary: melanoma share of lesions (ISIC 2020 has 1.8 %; kept higher
# so that 60-patient runs hold several positive patients in every one of 5 folds)
TEST_FRACTION = 0.15  # share of patients (whole patients) in the test split
MIN_PATIENTS_PER_CLASS = 5  # distinct training patients per class, where the table allows
JPEG_QUALITY = 90
MONET_CONCEPTS = ("ulceration_crust", "hair", "vasculature_vessels", "erythema", "pigmented",
                  "gel_water_drop_fluid_dermoscopy_liquid", "skin_markings_pen_ink_purple_pen")
_TASK_CODE = {"binary": 1, "multiclass": 2, "paired": 3}
_PARAMS = ("generator", "version", "task", "n_patients", "image_size", "seed")

# Class shares before the quota (flattened from HAM10000 / MILK10k so that every class
# has enough lesions at 60 patients); the first class listed in each is the dominant one.
_SHARES = {
    "multiclass": {"nv": 0.44, "mel": 0.14, "bkl": 0.12, "bcc": 0.09, "akiec": 0.07,
                   "vasc": 0.07, "df": 0.07},
    "paired": {"BCC": 0.25, "NV": 0.13, "BKL": 0.10, "SCCKA": 0.09, "MEL": 0.09, "AKIEC": 0.08,
               "DF": 0.05, "INF": 0.05, "VASC": 0.05, "BEN_OTH": 0.05, "MAL_OTH": 0.06},
}
_BENIGN_LOOKS = {"nv": 0.78, "bkl": 0.12, "df": 0.05, "vasc": 0.05}  # binary negatives

# Label model per look: effect of (age - 50) / 15, patient latent z, male sex, and site.
_LABEL_MODEL: dict[str, dict[str, Any]] = {
    "nv": dict(age=-0.8, z=0.0, male=0.0, site={"torso": 0.4, "palms_soles": 0.3}),
    "mel": dict(age=1.0, z=1.5, male=0.3, site={"torso": 0.3, "lower_extremity": 0.3}),
    "bkl": dict(age=0.7, z=0.3, male=0.0, site={"torso": 0.3, "head_neck": 0.3}),
    "bcc": dict(age=1.0, z=1.0, male=0.2, site={"head_neck": 1.2}),
    "akiec": dict(age=1.1, z=0.9, male=0.2, site={"head_neck": 1.0, "upper_extremity": 0.6}),
    "vasc": dict(age=0.0, z=0.0, male=0.0, site={"oral_genital": 0.8, "head_neck": 0.3}),
    "df": dict(age=-0.2, z=0.0, male=-0.4, site={"lower_extremity": 1.2, "upper_extremity": 0.4}),
    "ben_oth": dict(age=0.0, z=0.0, male=0.0, site={"torso": 0.2}),
    "inf": dict(age=-0.3, z=0.0, male=0.0, site={"lower_extremity": 0.5, "upper_extremity": 0.3}),
    "mal_oth": dict(age=1.0, z=0.8, male=0.3, site={"head_neck": 0.4, "oral_genital": 0.5}),
    "sccka": dict(age=1.2, z=0.9, male=0.3, site={"head_neck": 0.8, "upper_extremity": 0.6}),
}
_LOOK_OF = {**{c: c for c in HAM7.classes}, **{c: c.lower() for c in MILK11.classes},
            "melanoma": "mel"}

# Appearance per look. radius: fraction of the half image; asym: odd-harmonic amplitude;
# irregular: high-harmonic amplitude; fuzz: edge width / radius; colours: RGB palette
# (0..1), n_colours: (min, max) drawn from it; opacity of the pigment over the skin.
_LOOKS: dict[str, dict[str, Any]] = {
    "nv": dict(radius=0.30, asym=0.03, irregular=0.012, fuzz=0.07, opacity=0.92, mix=2.0,
               colours=[(0.45, 0.30, 0.20), (0.38, 0.24, 0.16), (0.52, 0.36, 0.24)],
               n_colours=(1, 2), centre_dark=0.25, atypical=0.15),
    "mel": dict(radius=0.42, asym=0.13, irregular=0.05, fuzz=0.05, opacity=0.95, mix=7.0,
                colours=[(0.28, 0.17, 0.12), (0.10, 0.07, 0.07), (0.40, 0.43, 0.50),
                         (0.58, 0.30, 0.24), (0.50, 0.36, 0.26)],
                n_colours=(3, 5), dots=5, early=0.2),
    "bkl": dict(radius=0.34, asym=0.06, irregular=0.03, fuzz=0.03, opacity=0.85, mix=4.0,
                colours=[(0.62, 0.48, 0.32), (0.50, 0.36, 0.24), (0.68, 0.56, 0.40)],
                n_colours=(2, 3), texture=0.12),
    "bcc": dict(radius=0.30, asym=0.08, irregular=0.03, fuzz=0.10, opacity=0.80, mix=4.0,
                colours=[(0.80, 0.58, 0.56), (0.72, 0.64, 0.68), (0.36, 0.31, 0.40)],
                n_colours=(2, 3), vessels=0.8),
    "akiec": dict(radius=0.30, asym=0.07, irregular=0.04, fuzz=0.15, opacity=0.85, mix=3.0,
                  colours=[(0.82, 0.46, 0.42), (0.76, 0.54, 0.47)], n_colours=(2, 2), scale=0.5),
    "vasc": dict(radius=0.22, asym=0.03, irregular=0.015, fuzz=0.05, opacity=0.95, mix=6.0,
                 colours=[(0.64, 0.12, 0.18), (0.42, 0.10, 0.26), (0.75, 0.25, 0.30)],
                 n_colours=(2, 3)),
    "df": dict(radius=0.20, asym=0.03, irregular=0.015, fuzz=0.12, opacity=0.85, mix=2.0,
               colours=[(0.56, 0.38, 0.28), (0.62, 0.44, 0.34)], n_colours=(1, 2),
               central_white=0.7),
    "ben_oth": dict(radius=0.22, asym=0.03, irregular=0.015, fuzz=0.10, opacity=0.85, mix=2.0,
                    colours=[(0.84, 0.58, 0.54), (0.76, 0.52, 0.50)], n_colours=(1, 2)),
    "inf": dict(radius=0.40, asym=0.06, irregular=0.02, fuzz=0.25, opacity=0.80, mix=2.0,
                colours=[(0.84, 0.32, 0.32), (0.76, 0.38, 0.36)], n_colours=(1, 2), scale=0.2),
    "mal_oth": dict(radius=0.40, asym=0.12, irregular=0.05, fuzz=0.08, opacity=0.85, mix=5.0,
                    colours=[(0.78, 0.36, 0.36), (0.55, 0.22, 0.22), (0.90, 0.80, 0.70)],
                    n_colours=(2, 3), ulcer=0.6),
    "sccka": dict(radius=0.32, asym=0.07, irregular=0.03, fuzz=0.10, opacity=0.85, mix=3.0,
                  colours=[(0.84, 0.52, 0.48), (0.78, 0.46, 0.42)], n_colours=(2, 2),
                  keratin=0.6, scale=0.4),
}
# Skin colour by tone 0 (lightest) .. 5 (darkest).
_SKIN = np.array([(0.96, 0.84, 0.76), (0.92, 0.76, 0.65), (0.85, 0.66, 0.53),
                  (0.74, 0.54, 0.40), (0.56, 0.39, 0.28), (0.38, 0.26, 0.19)])
# Share of lesions per site, in the order of the shared vocabulary `SITES`.
_SITE_P = dict(zip(SITES, (0.15, 0.15, 0.20, 0.40, 0.03, 0.03, 0.04), strict=True))
_HARM_ASYM = np.array([1, 3])
_HARM_IRR = np.arange(4, 11)
_IRR_DECAY = 4.0 / _HARM_IRR  # border harmonics fade with frequency


# --------------------------------------------------------------------------- public API
def make_synthetic(out_dir: str | os.PathLike[str], task: str = "binary", n_patients: int = 60,
                   image_size: int = 64, seed: int = 0) -> LesionTable:
    """Generate (or load the cached) synthetic dataset in ``out_dir`` and return its table.

    ``task``: ``binary`` (MELANOMA), ``multiclass`` (HAM7) or ``paired`` (MILK11, one row per
    lesion with a dermoscopic ``image_path`` and a clinical ``image_path_2``). The same
    arguments give byte-identical files. An existing ``out_dir`` is reused when it holds a
    complete dataset made with the same parameters; any other non-empty folder raises
    DataError (nothing is ever deleted or overwritten).
    """
    params = _params(task, n_patients, image_size, seed)
    out = Path(out_dir).expanduser().absolute()
    if _occupied(out):
        return _load_cached(out, params)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.synthetic-", suffix=".tmp", dir=out.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp's 0o700 would follow the folder through the rename
        _generate(tmp, params)
        try:
            os.replace(tmp, out)  # atomic; succeeds onto a missing or empty folder only
        except OSError:
            if not _occupied(out):  # not a race with another generator: a real failure
                raise
            return _load_cached(out, params)  # another process finished first
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return _load_cached(out, params)


# ---------------------------------------------------------------------------- cache
def _params(task: str, n_patients: int, image_size: int, seed: int) -> dict[str, Any]:
    TASKS.check(task)
    for name, value, low in (("n_patients", n_patients, 4), ("image_size", image_size, 16),
                             ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ConfigError(f"synthetic {name} must be an integer >= {low}, got {value!r}")
    return {"generator": GENERATOR, "version": VERSION, "task": task,
            "n_patients": int(n_patients), "image_size": int(image_size), "seed": int(seed)}


def _occupied(path: Path) -> bool:
    if not path.exists():
        return False
    if not path.is_dir():
        raise DataError("exists and is not a folder; pick another folder for the synthetic "
                        "dataset", file=path)
    return any(path.iterdir())


def _read_meta(out: Path) -> dict[str, Any] | None:
    try:
        meta = json.loads((out / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def _load_cached(out: Path, params: dict[str, Any]) -> LesionTable:
    """The dataset in ``out`` if it is complete and made with ``params``; else DataError."""
    meta = _read_meta(out)
    if meta is None or meta.get("generator") != GENERATOR:
        raise DataError("the folder is not empty and holds no melalib synthetic dataset; "
                        "pick another (empty or new) folder for it", file=out)
    stored = {k: meta.get(k) for k in _PARAMS}
    if stored != params:
        diff = {k: (stored[k], params[k]) for k in _PARAMS if stored[k] != params[k]}
        raise DataError(f"holds a synthetic dataset made with other parameters "
                        f"(stored, asked): {diff}; pick another folder", file=out)
    table_csv = out / TABLE_FILE
    try:
        digest = hashlib.sha256(table_csv.read_bytes()).hexdigest()
    except OSError:
        digest = None
    if digest != meta.get("table_sha256") or not (out / TASK_FILE).is_file():
        raise DataError(f"the synthetic dataset is incomplete or was modified ({TABLE_FILE} / "
                        f"{TASK_FILE}); pick another folder", file=out)
    table = LesionTable.load(out)
    for column in ("image_path", "image_path_2"):
        if column in table.df.columns:
            table.df[column] = [str(out / p) for p in table.df[column].astype(str)]
    try:
        table.check_images()
    except DataError as err:
        raise DataError(f"the synthetic dataset is incomplete: {err.detail}; pick another "
                        "folder", file=out, row=err.row, column=err.column) from None
    return table


# ----------------------------------------------------------------------- generation
@dataclass
class _Draw:
    """Patients, lesions and rows drawn before any image is rendered."""

    patients: pd.DataFrame  # one row per patient
    lesions: pd.DataFrame  # one row per lesion: patient, site, label, look, split
    rows: pd.DataFrame  # one row per table row: lesion, view


def _generate(folder: Path, params: dict[str, Any]) -> None:
    """Write the whole dataset into ``folder`` (a fresh temp folder)."""
    task_name, seed = params["task"], params["seed"]
    size = params["image_size"]
    task = TASKS[task_name]
    draw = _draw(task_name, params["n_patients"], seed)
    (folder / "images").mkdir()
    (folder / "masks").mkdir()
    pats, les, rows = draw.patients, draw.lesions, draw.rows
    paired = task_name == "paired"
    records = []
    for i, row in enumerate(rows.itertuples(index=False)):
        lesion = les.loc[row.lesion]
        patient = pats.loc[lesion["patient"]]
        image_id = f"SYN{i + 1:06d}"
        shape = _lesion_shape(seed, _TASK_CODE[task_name], int(row.lesion), lesion)
        views = [("derm", False), ("clin", True)] if paired else [("", False)]
        rec: dict[str, Any] = {"image_id": image_id}
        for k, (suffix, clinical) in enumerate(views):
            rng = np.random.default_rng([seed, _TASK_CODE[task_name], 7, i, k])
            pixels, mask = _render(shape, patient, size, rng, clinical=clinical,
                                   view=int(row.view), hairs=int(row.hairs_clin if clinical
                                                                 else row.hairs))
            name = f"{image_id}_{suffix}.jpg" if suffix else f"{image_id}.jpg"
            path = folder / "images" / name
            Image.fromarray(pixels).save(path, format="JPEG", quality=JPEG_QUALITY)
            Image.fromarray(mask).save(folder / "masks" / f"{path.stem}.png")
            column = "image_path" if k == 0 else "image_path_2"
            rec[column] = f"images/{name}"
            rec["image_bytes" if k == 0 else "image_bytes_2"] = path.stat().st_size
        rec["lesion"] = int(row.lesion)
        records.append(rec)
    df = _table_frame(task, draw, pd.DataFrame.from_records(records), paired, seed)
    LesionTable(df, task).validate()
    LesionTable(df, task).save(folder)
    meta = {**params, "positive_rate": POSITIVE_RATE if task_name == "binary" else None,
            "test_fraction": TEST_FRACTION, "n_rows": len(df), "jpeg_quality": JPEG_QUALITY,
            "table_sha256": hashlib.sha256((folder / TABLE_FILE).read_bytes()).hexdigest()}
    write_json(folder / "meta.json", meta)  # written last


def _draw(task_name: str, n_patients: int, seed: int) -> _Draw:
    """Patients, lesions (with labels) and table rows; no pixels."""
    code = _TASK_CODE[task_name]
    rng = np.random.default_rng([seed, code, 1])
    n = n_patients
    z = rng.normal(size=n)
    tone = np.clip(2.0 - 1.0 * z + rng.normal(0, 0.6, n), 0, 5)
    age = np.clip(np.round(rng.normal(52, 16, n) / 5) * 5, 15, 85).astype(float)
    sex = rng.choice(np.array(["male", "female"], dtype=object), n)
    unknown = rng.random(n) < 0.04  # a few patients without age / sex, as in ISIC
    age[unknown] = np.nan
    sex[unknown] = "unknown"
    n_img = np.clip(1 + rng.poisson(2.2, n), 1, 6)
    test = np.zeros(n, dtype=bool)
    n_test = max(1, round(TEST_FRACTION * n))
    test[rng.permutation(n)[:n_test]] = True
    patients = pd.DataFrame({
        "patient_id": [f"SP{i + 1:04d}" for i in range(n)], "z": z, "tone": tone, "age": age,
        "sex": sex, "test": test,
        # fingerprint: shared by the patient's images, unrelated to labels
        "tint_r": rng.normal(0, 0.025, n), "tint_g": rng.normal(0, 0.02, n),
        "tint_b": rng.normal(0, 0.02, n), "light": rng.uniform(0, 0.25, n),
        "light_angle": rng.uniform(0, 2 * np.pi, n), "scope": rng.uniform(1.0, 1.5, n),
        "vignette": rng.uniform(0.0, 0.35, n), "texture": rng.uniform(0.02, 0.08, n),
        "hairiness": rng.gamma(0.8, 1.5, n), "hair_shade": rng.uniform(0.05, 0.35, n),
    })
    # lesions and views: each image is a new lesion (p = 0.65) or another view of the last one
    lesion_patient, lesion_views, row_lesion, row_view = [], [], [], []
    for p in range(n):
        for j in range(int(n_img[p])):
            if j == 0 or rng.random() < 0.65:
                lesion_patient.append(p)
                lesion_views.append(0)
            lesion_views[-1] += 1
            row_lesion.append(len(lesion_patient) - 1)
            row_view.append(lesion_views[-1] - 1)
    lp = np.array(lesion_patient)
    sites = np.array(list(_SITE_P), dtype=object)
    site = rng.choice(sites, len(lp), p=np.array(list(_SITE_P.values())))
    lesions = pd.DataFrame({"patient": lp, "site": site, "views": lesion_views,
                            "test": test[lp]})
    lesions["label"], lesions["look"] = _assign_labels(task_name, patients, lesions, rng)
    if task_name == "paired":  # one row per lesion
        row_lesion, row_view = list(range(len(lesions))), [0] * len(lesions)
    rows = pd.DataFrame({"lesion": row_lesion, "view": row_view})
    hair_rate = patients["hairiness"].to_numpy()[lp[rows["lesion"].to_numpy()]]
    rows["hairs"] = rng.poisson(hair_rate)
    rows["hairs_clin"] = rng.poisson(hair_rate * 0.5)
    return _Draw(patients, lesions, rows)


def _assign_labels(task_name: str, patients: pd.DataFrame, lesions: pd.DataFrame,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Class index and look per lesion: fixed class counts, Gumbel top-k on log-probs."""
    task = TASKS[task_name]
    if task_name == "binary":
        shares = {"mel": POSITIVE_RATE, "benign": 1 - POSITIVE_RATE}
        looks = ["benign", "mel"]  # in class-index order
    else:
        shares = {_LOOK_OF[c]: _SHARES[task_name][c] for c in _SHARES[task_name]}
        looks = [_LOOK_OF[c] for c in task.classes]
    pat = lesions["patient"].to_numpy()
    age = patients["age"].to_numpy()[pat]
    age = np.where(np.isnan(age), 50.0, age)
    z = patients["z"].to_numpy()[pat]
    male = (patients["sex"].to_numpy()[pat] == "male").astype(float)
    site = lesions["site"].to_numpy()
    score = np.zeros((len(lesions), len(looks)))
    for j, look in enumerate(looks):
        score[:, j] = math.log(shares[look])  # intercept: the class share
        if look == "benign":
            continue  # the reference class
        m = _LABEL_MODEL[look]
        bonus = np.array([m["site"].get(s, 0.0) for s in site])
        score[:, j] += m["age"] * (age - 50) / 15 + m["z"] * z + m["male"] * male + bonus
    logp = score - np.logaddexp.reduce(score, axis=1, keepdims=True)
    keys = logp + rng.gumbel(size=logp.shape)
    n_les = len(lesions)
    dominant = max(shares, key=shares.__getitem__)
    order = sorted((k for k in shares if k != dominant), key=shares.__getitem__)
    label = np.full(n_les, -1)
    train = ~lesions["test"].to_numpy()
    n_train = int(train.sum())
    quota = max(1, min(MIN_PATIENTS_PER_CLASS, n_train // (2 * len(looks))))
    for look in order:  # coverage: `quota` distinct training patients per class
        j = looks.index(look)
        taken: set[int] = set()
        for i in np.argsort(-keys[:, j], kind="stable"):
            if len(taken) >= quota:
                break
            if label[i] < 0 and train[i] and pat[i] not in taken:
                label[i] = j
                taken.add(int(pat[i]))
    for look in order:  # fill up to the class's share of all lesions
        j = looks.index(look)
        need = round(shares[look] * n_les) - int((label == j).sum())
        free = np.flatnonzero(label < 0)
        if need > 0 and len(free) > 0:
            label[free[np.argsort(-keys[free, j], kind="stable")[:need]]] = j
    label[label < 0] = looks.index(dominant)
    look_of = np.array(looks, dtype=object)[label]
    if task_name == "binary":  # benign lesions get a benign look (nevus, keratosis, ...)
        benign = look_of == "benign"
        names = np.array(list(_BENIGN_LOOKS), dtype=object)
        look_of[benign] = rng.choice(names, int(benign.sum()),
                                     p=np.array(list(_BENIGN_LOOKS.values())))
    return label, look_of


def _table_frame(task: Task, draw: _Draw, files: pd.DataFrame, paired: bool,
                 seed: int) -> pd.DataFrame:
    """The canonical table from the draw and the written files (rows in image_id order)."""
    pats, les = draw.patients, draw.lesions
    lesion = files["lesion"].to_numpy()
    pat = les["patient"].to_numpy()[lesion]
    true_label = les["label"].to_numpy()[lesion].astype(np.int64)
    test = pats["test"].to_numpy()[pat]
    label = np.where(test, -1, true_label)
    site = les["site"].to_numpy()[lesion]
    patient_id = pats["patient_id"].to_numpy()[pat]
    df = pd.DataFrame({
        "image_id": files["image_id"],
        "image_path": files["image_path"],
        **({"image_path_2": files["image_path_2"]} if paired else {}),
        "group_id": patient_id,
        "label": label,
        "label_name": np.array((*task.classes, ""), dtype=object)[label],
        "age": pats["age"].to_numpy()[pat],
        "sex": pats["sex"].to_numpy()[pat],
        "site": site,
        "site_detail": site,
        "source": "synthetic",
        "split": np.where(test, "test", "train"),
        "patient_id": patient_id,
        "lesion_id": [f"SL{i + 1:05d}" for i in lesion],
    })
    df["n_images"] = df.groupby("patient_id")["image_id"].transform("size").astype(np.int64)
    df["image_bytes"] = files["image_bytes"].to_numpy()
    if paired:
        df["image_bytes_2"] = files["image_bytes_2"].to_numpy()
    df["true_label"] = true_label
    if task.name == MELANOMA.name:  # the lesion's look as an ISIC diagnosis (training rows)
        look = les["look"].to_numpy()[lesion].astype(str)
        df["diagnosis"] = np.where(test, None, np.char.upper(look)).astype(object)
    if paired:
        df["skin_tone"] = np.round(pats["tone"].to_numpy()[pat]).astype(np.int64)
        for column, values in _monet(draw, lesion, seed).items():
            df[column] = np.round(values, 6)
    return df.sort_values("image_id", kind="stable").reset_index(drop=True)


def _monet(draw: _Draw, lesion: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """MONET-like concept scores in [0, 1], correlated with the look and the hair drawn."""
    les, rows = draw.lesions, draw.rows
    rng = np.random.default_rng([seed, _TASK_CODE["paired"], 11])
    look = les["look"].to_numpy()[lesion]
    hairs = {"derm": rows["hairs"].to_numpy(), "clin": rows["hairs_clin"].to_numpy()}
    by_look = {
        "ulceration_crust": {"sccka": 2.0, "mal_oth": 2.0, "bcc": 1.0, "akiec": 1.2},
        "vasculature_vessels": {"bcc": 2.0, "vasc": 2.2, "inf": 0.8},
        "erythema": {"inf": 2.5, "akiec": 1.5, "vasc": 1.2, "bcc": 0.8, "sccka": 1.0},
        "pigmented": {"mel": 2.5, "nv": 2.2, "bkl": 1.6, "df": 1.0},
    }
    out: dict[str, np.ndarray] = {}
    for kind in ("derm", "clin"):
        for concept in MONET_CONCEPTS:
            noise = rng.normal(0, 0.7, len(lesion))
            if concept == "hair":
                logit = -2.0 + 1.2 * hairs[kind] + noise
            elif concept in by_look:
                logit = -1.5 + np.array([by_look[concept].get(x, 0.0) for x in look]) + noise
            elif concept.startswith("gel"):
                logit = (-1.0 if kind == "derm" else -2.5) + noise
            else:
                logit = -2.5 + noise
            out[f"monet_{concept}_{kind}"] = 1.0 / (1.0 + np.exp(-logit))
    return out


# -------------------------------------------------------------------------- drawing
def _lesion_shape(seed: int, code: int, index: int, lesion: pd.Series) -> dict[str, Any]:
    """The fixed geometry and colours of one lesion (shared by all its views)."""
    rng = np.random.default_rng([seed, code, 3, index])
    spec = _LOOKS[lesion["look"]]
    radius, asym, irr = spec["radius"], spec["asym"], spec["irregular"]
    if rng.random() < spec.get("atypical", 0.0):  # atypical nevus: larger, less regular
        radius, asym, irr = radius * 1.3, asym * 3.0, irr * 2.5
    if rng.random() < spec.get("early", 0.0):  # early melanoma: smaller, more regular
        radius, asym, irr = radius * 0.7, asym * 0.4, irr * 0.5
    lo, hi = spec["n_colours"]
    n_col = int(rng.integers(lo, hi + 1))
    palette = np.array(spec["colours"], dtype=float)
    colours = palette[rng.permutation(len(palette))[:n_col]]
    colours = np.clip(colours + rng.normal(0, 0.03, colours.shape), 0, 1)
    return {
        "look": lesion["look"], "spec": spec,
        "radius": 1.35 * radius * math.exp(rng.normal(0, 0.15)),
        "ellipse": rng.uniform(0.0, 0.15), "ellipse_phase": rng.uniform(0, np.pi),
        "asym_amp": np.abs(rng.normal(asym, asym * 0.4, len(_HARM_ASYM))),
        "asym_phase": rng.uniform(0, 2 * np.pi, len(_HARM_ASYM)),
        "irr_amp": np.abs(rng.normal(irr, irr * 0.5, len(_HARM_IRR))) * _IRR_DECAY,
        "irr_phase": rng.uniform(0, 2 * np.pi, len(_HARM_IRR)),
        "centre": rng.normal(0, 0.07, 2),
        "colours": colours,
        "fields": _fields(rng, n_col + 4),  # colour fields, then 4 structure fields
        "dots": rng.uniform(-0.7, 0.7, (spec.get("dots", 0), 2)),
    }


def _fields(rng: np.random.Generator, n: int, waves: int = 3) -> dict[str, np.ndarray]:
    """Parameters of ``n`` smooth random fields (sums of plane waves in lesion coords)."""
    return {"freq": rng.uniform(1.5, 4.0, (n, waves)), "angle": rng.uniform(0, np.pi, (n, waves)),
            "phase": rng.uniform(0, 2 * np.pi, (n, waves)), "amp": rng.uniform(0.5, 1.0, (n, waves))}


def _eval_fields(f: dict[str, np.ndarray], lx: np.ndarray, ly: np.ndarray,
                 which: slice, scale: float = 1.0) -> np.ndarray:
    """Evaluate fields ``which`` at lesion coords -> (k, H, W), roughly unit variance."""
    freq, ang = f["freq"][which] * scale, f["angle"][which]
    proj = (lx[None, None] * np.cos(ang)[..., None, None]
            + ly[None, None] * np.sin(ang)[..., None, None])
    waves = f["amp"][which][..., None, None] * np.sin(freq[..., None, None] * proj
                                                      + f["phase"][which][..., None, None])
    return waves.sum(axis=1) / math.sqrt(waves.shape[1] / 2)


def _smooth_noise(rng: np.random.Generator, size: int, grid: int) -> np.ndarray:
    """Low-frequency noise (size, size), about unit variance."""
    small = Image.fromarray(rng.normal(size=(grid, grid)).astype(np.float32), mode="F")
    return np.asarray(small.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float64)


def _render(shape: dict[str, Any], patient: pd.Series, size: int, rng: np.random.Generator,
            *, clinical: bool, view: int, hairs: int) -> tuple[np.ndarray, np.ndarray]:
    """One RGB uint8 image of a lesion (``clinical``: the wide-field close-up look) and its
    lesion mask (uint8, 255 inside the lesion border)."""
    spec = shape["spec"]
    t = (np.arange(size) + 0.5) / size * 2 - 1
    yy, xx = np.meshgrid(t, t, indexing="ij")
    img, skin = _skin(patient, size, rng, xx, yy, clinical=clinical)
    geo = _geometry(shape, size, rng, xx, yy, clinical=clinical, view=view)
    lesion = _lesion_colours(shape, patient, skin, geo, clinical=clinical)
    alpha = geo["alpha"]
    img = img * (1 - alpha[..., None] * spec["opacity"]) + lesion * (alpha * spec["opacity"])[
        ..., None]
    if not clinical:  # dermoscope: vignetting and the dark rim of the round field
        d0 = np.hypot(xx, yy)
        img *= (1 - float(patient["vignette"]) * d0**2 / 2)[..., None]
        rim = 1 / (1 + np.exp(-np.clip((float(patient["scope"]) - d0) / 0.03, -30, 30)))
        img *= rim[..., None]
    pixels = np.clip(np.round(img * 255), 0, 255).astype(np.uint8)
    pil = Image.fromarray(pixels)
    if hairs:
        _draw_hairs(pil, rng, hairs, float(patient["hair_shade"]))
    if clinical:
        pil = pil.filter(ImageFilter.GaussianBlur(radius=max(0.5, size / 128)))
    return np.asarray(pil), np.where(alpha > 0.5, 255, 0).astype(np.uint8)


def _skin(patient: pd.Series, size: int, rng: np.random.Generator, xx: np.ndarray,
          yy: np.ndarray, *, clinical: bool) -> tuple[np.ndarray, np.ndarray]:
    """The skin image (size, size, 3) float and its base colour: tone palette, patient
    tint, texture, pixel noise, lighting gradient."""
    tone = float(patient["tone"])
    lo = min(int(tone), 4)
    skin = _SKIN[lo] + (tone - lo) * (_SKIN[lo + 1] - _SKIN[lo])
    skin = skin + np.array([patient["tint_r"], patient["tint_g"], patient["tint_b"]])
    if clinical:
        skin = skin * np.array([1.06, 1.0, 0.92]) + 0.03
    tex = (_smooth_noise(rng, size, 5) * float(patient["texture"])
           + _smooth_noise(rng, size, max(8, size // 3)) * 0.015)
    img = skin[None, None, :] * (1 + tex[..., None]) + rng.normal(0, 0.01, (size, size, 3))
    ang = float(patient["light_angle"]) + (0.8 if clinical else 0.0)
    light = 1 + float(patient["light"]) * 0.5 * (np.cos(ang) * xx + np.sin(ang) * yy)
    return img * light[..., None], skin


def _geometry(shape: dict[str, Any], size: int, rng: np.random.Generator, xx: np.ndarray,
              yy: np.ndarray, *, clinical: bool, view: int) -> dict[str, np.ndarray]:
    """The lesion's outline in this view (rotation, scale, shift): per pixel its distance
    from the centre ``dist``, border radius ``r``, opacity ``alpha`` and lesion-frame
    coordinates ``lx`` / ``ly``."""
    spec = shape["spec"]
    rot = rng.uniform(0, 2 * np.pi) if view > 0 else 0.0
    scale = (0.6 if clinical else 1.0) * (math.exp(rng.normal(0, 0.08)) if view > 0 else 1.0)
    shift = rng.normal(0, 0.12 if clinical else 0.04, 2) if (view > 0 or clinical) else 0.0
    cy, cx = shape["centre"] * scale + shift
    dx, dy = xx - cx, yy - cy
    dist = np.hypot(dx, dy)
    theta = np.arctan2(dy, dx) - rot
    radius = shape["radius"] * scale
    r = radius * (1 + shape["ellipse"] * np.cos(2 * (theta - shape["ellipse_phase"]))
                  + (shape["asym_amp"] * np.cos(_HARM_ASYM * theta[..., None]
                                                + shape["asym_phase"])).sum(-1)
                  + (shape["irr_amp"] * np.cos(_HARM_IRR * theta[..., None]
                                               + shape["irr_phase"])).sum(-1))
    edge = max(spec["fuzz"] * radius, 0.7 / size)
    alpha = 1 / (1 + np.exp(-np.clip((r - dist) / edge, -30, 30)))
    lx = (dx * math.cos(rot) + dy * math.sin(rot)) / radius
    ly = (-dx * math.sin(rot) + dy * math.cos(rot)) / radius
    return {"dist": dist, "r": r, "alpha": alpha, "lx": lx, "ly": ly}


def _lesion_colours(shape: dict[str, Any], patient: pd.Series, skin: np.ndarray,
                    geo: dict[str, np.ndarray], *, clinical: bool) -> np.ndarray:
    """The lesion's colour per pixel: a soft partition among its palette (variegation),
    then the diagnosis' structures (texture, vessels, scale, keratin, crust, dots)."""
    spec, colours = shape["spec"], shape["colours"]
    dist, r, lx, ly = geo["dist"], geo["r"], geo["lx"], geo["ly"]
    k = len(colours)
    fields = _eval_fields(shape["fields"], lx, ly, slice(0, k))
    w = np.exp(spec["mix"] * (fields - fields.max(axis=0, keepdims=True)))
    w /= w.sum(axis=0, keepdims=True)
    lesion = np.einsum("khw,kc->hwc", w, colours)
    inner = np.clip(1 - dist / np.maximum(r, 1e-6), 0, 1)
    lesion *= (1 - spec.get("centre_dark", 0.0) * inner)[..., None]
    lesion = lesion * (0.8 + 0.2 * skin.mean() / _SKIN[1].mean())  # darker skin, darker lesion
    lesion = lesion + 0.03 * float(patient["z"]) * np.array([1.0, -0.3, -0.7])  # patient hue
    structure = _eval_fields(shape["fields"], lx, ly, slice(k, k + 4), scale=2.5)
    if spec.get("texture"):  # keratosis: cerebriform texture
        lesion *= (1 + spec["texture"] * structure[0])[..., None]
    if spec.get("vessels") and not clinical:  # BCC: thin red branching vessels
        vessel = np.exp(-(structure[1] / 0.12) ** 2) * spec["vessels"]
        lesion = _blend(lesion, np.array([0.72, 0.12, 0.16]), vessel)
    if spec.get("scale"):  # AKIEC / SCC / inflammation: white scale
        flakes = np.clip((structure[2] - 1.0) * 2, 0, 1) * spec["scale"]
        lesion = _blend(lesion, np.array([0.92, 0.88, 0.84]), flakes)
    if spec.get("keratin"):  # SCC / KA: central yellow-white keratin plug
        plug = 1 / (1 + np.exp(-np.clip((0.45 - dist / np.maximum(r, 1e-6)) / 0.08, -30, 30)))
        lesion = _blend(lesion, np.array([0.90, 0.84, 0.62]), plug * spec["keratin"])
    if spec.get("ulcer"):  # malignant other: dark red crust
        crust = np.clip((structure[3] - 0.8) * 2, 0, 1) * spec["ulcer"]
        lesion = _blend(lesion, np.array([0.40, 0.10, 0.08]), crust)
    if spec.get("central_white"):  # dermatofibroma: central white patch
        patch = 1 / (1 + np.exp(-np.clip((0.4 - dist / np.maximum(r, 1e-6)) / 0.1, -30, 30)))
        lesion = _blend(lesion, np.array([0.88, 0.84, 0.80]), patch * spec["central_white"])
    if len(shape["dots"]) and not clinical:  # melanoma: irregular dark dots / globules
        d2 = (lx[None] - shape["dots"][:, 0, None, None]) ** 2 + (
            ly[None] - shape["dots"][:, 1, None, None]) ** 2
        dots = np.exp(-d2 / 0.003).max(axis=0)
        lesion = _blend(lesion, np.array([0.08, 0.05, 0.05]), dots * 0.6)
    return lesion


def lesion_mask(image_path: str | os.PathLike[str]) -> np.ndarray | None:
    """The true lesion mask (H, W) bool of a synthetic image (``masks/<stem>.png`` beside
    its ``images/`` folder), or None for an image that has none (real data)."""
    path = Path(image_path)
    mask = path.parent.parent / "masks" / f"{path.stem}.png"
    if not mask.is_file():
        return None
    with Image.open(mask) as im:
        return np.asarray(im.convert("L")) > 127


def _blend(base: np.ndarray, colour: np.ndarray, weight: np.ndarray) -> np.ndarray:
    weight = np.clip(weight, 0, 1)[..., None]
    return base * (1 - weight) + colour * weight


def _draw_hairs(pil: Image.Image, rng: np.random.Generator, n: int, shade: float) -> None:
    """Dark, slightly curved hairs (quadratic Bezier polylines) drawn over the image."""
    size = pil.size[0]
    draw = ImageDraw.Draw(pil)
    width = max(1, round(size / 160))
    s = np.linspace(0, 1, 12)[:, None]
    for _ in range(n):
        p0 = rng.uniform(-0.1, 1.1, 2) * size
        direction = rng.uniform(0, 2 * np.pi)
        length = rng.uniform(0.4, 1.2) * size
        p2 = p0 + length * np.array([math.cos(direction), math.sin(direction)])
        p1 = (p0 + p2) / 2 + rng.normal(0, 0.15 * size, 2)
        pts = (1 - s) ** 2 * p0 + 2 * (1 - s) * s * p1 + s**2 * p2
        grey = int(255 * shade * rng.uniform(0.7, 1.2))
        colour = (min(grey + 10, 255), grey, max(grey - 10, 0))
        draw.line([tuple(p) for p in pts.tolist()], fill=colour, width=width)
