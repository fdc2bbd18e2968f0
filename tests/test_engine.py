"""The training engine end to end on the tiny synthetic configuration (CPU)."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pandas as pd
import pytest
import torch

import melalib
from melalib import device, engine, runtime
from melalib.checkpoints import check_compatible, load_checkpoint
from melalib.errors import CheckpointError, ConfigError, RunExistsError
from melalib.runs import RunDir
from melalib.schedules import build_scheduler

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _oof(cfg) -> pd.DataFrame:
    return pd.read_csv(cfg.run_dir / "oof.csv", dtype={"image_id": str})


def test_all_folds_write_the_run_dir(tiny_cfg) -> None:
    cfg = tiny_cfg()
    summary = melalib.train(cfg)
    run = cfg.run_dir
    for name in ("config.yaml", "run.json", "table/table.csv", "history_fold0.csv",
                 "oof_fold0.csv", "oof_fold1.csv", "test_fold0.csv", "metrics.json",
                 "checkpoints/fold0_best.pt", "checkpoints/fold1_last.pt", "train.log"):
        assert (run / name).is_file(), name
    table = RunDir(run, cfg).table()
    train = table.df[table.df["split"] == "train"]
    oof = _oof(cfg)
    # every training image predicted exactly once, by the model that did not see it
    assert sorted(oof["image_id"]) == sorted(train["image_id"])
    fold_of = dict(zip(train["image_id"], train["fold"], strict=True))
    assert all(fold_of[i] == f for i, f in zip(oof["image_id"], oof["fold"], strict=True))
    assert oof["prob_melanoma"].between(0, 1).all()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["folds_done"] == [0, 1] and "roc_auc" in metrics["oof"]
    assert summary["oof_primary"] == metrics["oof"]["roc_auc"]
    info = json.loads((run / "run.json").read_text())
    assert info["table_hash"] == table.content_hash() and info["versions"]["torch"]


def test_same_seed_same_predictions(tiny_cfg) -> None:
    a = tiny_cfg(name="a", epochs=2)
    b = tiny_cfg(name="b", epochs=2)
    melalib.train(a)
    melalib.train(b)
    pd.testing.assert_frame_equal(_oof(a), _oof(b))


def test_resume_after_a_crash_gives_the_same_weights(tiny_cfg, monkeypatch) -> None:
    whole = tiny_cfg(name="whole", epochs=3, fold=0)
    melalib.train(whole)
    crashed = tiny_cfg(name="crashed", epochs=3, fold=0)
    real_epoch = engine.Trainer.epoch
    calls = {"n": 0}

    def crash_on_third_epoch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("simulated crash")
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(engine.Trainer, "epoch", crash_on_third_epoch)
    with pytest.raises(KeyboardInterrupt):
        melalib.train(crashed)
    assert load_checkpoint(crashed.run_dir / "checkpoints/fold0_last.pt")["epoch"] == 2
    assert not (crashed.run_dir / "oof_fold0.csv").exists()
    monkeypatch.setattr(engine.Trainer, "epoch", real_epoch)
    melalib.train(crashed)  # resumes at epoch 3
    a = load_checkpoint(whole.run_dir / "checkpoints/fold0_last.pt")
    b = load_checkpoint(crashed.run_dir / "checkpoints/fold0_last.pt")
    assert a["epoch"] == b["epoch"] == 3
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=0, atol=0)
    pd.testing.assert_frame_equal(
        pd.read_csv(whole.run_dir / "oof_fold0.csv"), pd.read_csv(crashed.run_dir / "oof_fold0.csv"))


def test_existing_run_with_another_config_is_refused_then_overwritten(tiny_cfg) -> None:
    cfg = tiny_cfg(fold=0)
    melalib.train(cfg)
    changed = tiny_cfg(fold=0, lr=0.05)
    with pytest.raises(RunExistsError, match=r"another config \(changed, now vs before: "
                                             r"\{'lr': \(0\.05, 0\.001\)\}"):
        melalib.train(changed)
    marker = cfg.run_dir / "oof_fold0.csv"
    before = marker.read_bytes()
    melalib.train(cfg)  # same config: a finished fold is skipped, nothing rewritten
    assert marker.read_bytes() == before
    melalib.train(tiny_cfg(fold=0, lr=0.05, overwrite=True))
    assert json.loads((cfg.run_dir / "run.json").read_text())["fingerprint"] == \
        changed.fingerprint()


def test_a_run_saved_before_a_new_config_field_still_resumes(tiny_cfg) -> None:
    """Fields added to the config later (absent from an old config.yaml) take their default
    and must not make an old run or its checkpoints look foreign."""
    import yaml

    cfg = tiny_cfg(fold=0, epochs=2)
    run = cfg.run_dir
    melalib.train(cfg)
    # pretend the run was written before `custom_split_column` existed
    saved = yaml.safe_load((run / "config.yaml").read_text())
    del saved["data"]["custom_split_column"]
    (run / "config.yaml").write_text(yaml.safe_dump(saved))
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**info, "fingerprint": "oldfingerprint00"}))
    (run / "oof_fold0.csv").unlink()  # unfinished: the fold resumes from its checkpoint
    again = tiny_cfg(fold=0, epochs=2)
    melalib.train(again)
    assert (run / "oof_fold0.csv").is_file()
    assert json.loads((run / "run.json").read_text())["fingerprint"] == again.fingerprint()
    state = load_checkpoint(run / "checkpoints/fold0_last.pt")
    check_compatible(state, path="x", config=again)
    with pytest.raises(CheckpointError, match=r"checkpoint vs now: \{'lr': \(0\.001, 0\.5\)\}"):
        check_compatible(state, path="x", config=tiny_cfg(fold=0, epochs=2, lr=0.5))


def test_foreign_folder_is_never_deleted(tiny_cfg) -> None:
    cfg = tiny_cfg(overwrite=True)
    cfg.run_dir.mkdir(parents=True)
    (cfg.run_dir / "notes.txt").write_text("mine")
    with pytest.raises(RunExistsError, match="not a melalib run"):
        melalib.train(cfg)
    assert (cfg.run_dir / "notes.txt").read_text() == "mine"


def test_checkpoint_from_another_model_is_refused(tiny_cfg) -> None:
    cfg = tiny_cfg(fold=0)
    melalib.train(cfg)
    path = cfg.run_dir / "checkpoints/fold0_last.pt"
    state = load_checkpoint(path)
    with pytest.raises(CheckpointError, match="backbone: checkpoint 'resnet10t', config 'resnet18'"):
        check_compatible(state, path=path, backbone="resnet18")
    with pytest.raises(CheckpointError, match="n_outputs: checkpoint 1, config 7"):
        check_compatible(state, path=path, n_outputs=7)
    with pytest.raises(CheckpointError, match="another config"):
        check_compatible(state, path=path, fingerprint="0" * 16)
    path.write_bytes(path.read_bytes()[:100])  # truncated
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_checkpoint(path)


@pytest.mark.parametrize("overrides", [
    dict(synthetic_task="multiclass", n_folds=2, loss="focal", sampler="sqrt"),
    dict(synthetic_task="paired", dual_image=True, shared_backbone=False),
    dict(use_image=False, meta_hidden=(8, 4), batch_size=64, ema=True),
    dict(use_meta=False, freeze_epochs=1, epochs=2, scheduler="plateau", grad_accum=2,
         clip_grad=1.0, tta=4),
], ids=["multiclass-focal-sampler", "paired-dual", "meta-only-ema", "image-only-options"])
def test_every_mode_trains(tiny_cfg, overrides) -> None:
    cfg = tiny_cfg(fold=0, **overrides)
    melalib.train(cfg)
    oof = pd.read_csv(cfg.run_dir / "oof_fold0.csv")
    table = RunDir(cfg.run_dir, cfg).table()
    probs = oof[table.task.prob_columns].to_numpy()
    assert np.isfinite(probs).all() and ((probs >= 0) & (probs <= 1)).all()
    if table.task.kind == "multiclass":
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    history = pd.read_csv(cfg.run_dir / "history_fold0.csv")
    assert len(history) == cfg.train.epochs
    if cfg.train.freeze_epochs:
        assert history["frozen_backbone"].tolist() == [True, False]


def test_bad_requests_fail_before_training(tiny_cfg) -> None:
    with pytest.raises(ConfigError, match="dual_image=true needs a paired dataset"):
        melalib.train(tiny_cfg(fold=0, dual_image=True))
    with pytest.raises(ConfigError, match="CUDA is not available"):
        device.resolve_device("cuda") if not torch.cuda.is_available() else \
            (_ for _ in ()).throw(ConfigError("CUDA is not available"))


def test_cosine_schedule_warms_up_then_decays(tiny_cfg) -> None:
    cfg = tiny_cfg(epochs=4, warmup_epochs=1.0, lr=1.0)
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    sched = build_scheduler(cfg.train, opt, steps_per_epoch=10)
    lrs = []
    for _ in range(40):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] < lrs[5] < lrs[9]  # linear warm-up over the first epoch
    assert max(lrs) == pytest.approx(1.0, abs=0.02)
    assert all(b <= a + 1e-12 for a, b in itertools.pairwise(lrs[10:]))  # then decays
    assert lrs[-1] < 0.05


def test_early_stopping_stops_after_patience_epochs(tiny_cfg) -> None:
    # a vanishing learning rate: the validation metric never improves after epoch 1
    cfg = tiny_cfg(fold=0, epochs=5, patience=2, lr=1e-12, warmup_epochs=0.0)
    melalib.train(cfg)
    history = pd.read_csv(cfg.run_dir / "history_fold0.csv")
    assert history["epoch"].tolist() == [1, 2, 3]  # best at 1, two stale epochs, stop
    assert load_checkpoint(cfg.run_dir / "checkpoints/fold0_best.pt")["epoch"] == 1


@pytest.mark.slow
def test_torch_compile_trains_the_same_model(tiny_cfg) -> None:
    """compile=True trains the network eager mode trains: the checkpoint holds the plain
    model's weights (no ``_orig_mod.`` keys: `melalib predict` loads it uncompiled) and the
    OOF probabilities match an eager run of the same config."""
    eager = tiny_cfg(fold=0, channels_last=True, name="eager")
    compiled = tiny_cfg(fold=0, channels_last=True, compile=True, name="compiled")
    melalib.train(eager)
    melalib.train(compiled)
    weights = load_checkpoint(RunDir.read(compiled.run_dir).checkpoint(0, "best"))["model"]
    assert weights and not any(k.startswith("_orig_mod.") for k in weights)
    a, b = (RunDir.read(c.run_dir).oof_by_fold() for c in (eager, compiled))
    columns = [c for c in a.columns if c.startswith("prob_")]
    assert a["image_id"].tolist() == b["image_id"].tolist() and columns
    np.testing.assert_allclose(b[columns].to_numpy(), a[columns].to_numpy(), atol=1e-3)


def _count_validation_passes(monkeypatch) -> dict[int, int]:
    """Wrap runtime.predict_probs: number of calls per dataset length."""
    real = runtime.predict_probs
    calls: dict[int, int] = {}

    def counting(model, loader, *args, **kwargs):
        n = len(loader.dataset)
        calls[n] = calls.get(n, 0) + 1
        return real(model, loader, *args, **kwargs)

    monkeypatch.setattr(runtime, "predict_probs", counting)
    return calls


@pytest.mark.parametrize("tta", [1, 2])
def test_best_epoch_validation_predictions_are_reused(tiny_cfg, monkeypatch, tta) -> None:
    cfg = tiny_cfg(name=f"reuse{tta}", epochs=3, fold=0, tta=tta)
    calls = _count_validation_passes(monkeypatch)
    melalib.train(cfg)
    run = RunDir(cfg.run_dir, cfg)
    table = run.table()
    df = table.df
    n_val = len(table.fold(0)[1])
    n_test = int((df["split"] == "test").sum())
    assert n_val != n_test
    # one validation pass per epoch; the OOF pass again only with TTA (other views)
    assert calls[n_val] == 3 + (tta > 1)
    assert calls.get(n_test, 0) == (1 if n_test else 0)
    # the reused predictions are those of the best checkpoint
    from melalib.inference import load_predictor

    predictor = load_predictor(run.checkpoint(0, "best"))
    val = table.fold(0)[1].reset_index(drop=True)
    again = predictor.predict(val, tta=tta, progress=False, num_workers=0)
    oof = pd.read_csv(cfg.run_dir / "oof_fold0.csv", dtype={"image_id": str})
    merged = oof.merge(again, on="image_id", suffixes=("", "_again"))
    assert len(merged) == n_val
    np.testing.assert_allclose(merged["prob_melanoma"], merged["prob_melanoma_again"],
                               atol=1e-5)


@pytest.mark.parametrize("augment", ["none", "light", "heavy"])
def test_augment_reaches_the_training_transform(tiny_cfg, augment: str) -> None:
    """``augment`` sets the training pipeline's strength; validation never augments, and the
    default (medium) is the pipeline training always used."""
    from melalib.data.load import load_table

    cfg = tiny_cfg(augment=augment)
    table = load_table(cfg.data)
    df = table.train.head(4)
    train_ds = runtime.make_dataset(cfg, table, df, None, train=True)
    assert train_ds.transform.strength == augment
    assert runtime.make_dataset(cfg, table, df, None, train=False).transform.strength == "none"
    default = runtime.make_dataset(tiny_cfg(), table, df, None, train=True)
    assert default.transform.strength == "medium"


# ------------------------------------------------------------------- a table handed in
def _hand_made(cfg, patients: int) -> pd.DataFrame:
    """The first ``patients`` patients of the tiny synthetic data, as a caller's own frame."""
    from melalib.data.load import load_table

    df = load_table(cfg.data).df
    keep = sorted(df["group_id"].unique())[:patients]
    return df[df["group_id"].isin(keep)].reset_index(drop=True)


def test_train_on_a_table_without_folds_assigns_grouped_folds(tiny_cfg) -> None:
    from melalib.table import LesionTable
    from melalib.tasks import MELANOMA

    cfg = tiny_cfg(name="handed", fold=0)
    df = _hand_made(cfg, 12)
    summary = melalib.train(cfg, table=LesionTable(df, MELANOMA, origin="mine"), progress=False)
    stored = RunDir(cfg.run_dir, cfg).table().df
    assert sorted(stored["image_id"]) == sorted(df["image_id"])  # this table, not cfg's data
    train = stored[stored["split"] == "train"]
    assert set(train["fold"]) == {0, 1}
    assert train.groupby("group_id")["fold"].nunique().max() == 1  # grouped by patient
    oof = pd.read_csv(cfg.run_dir / "oof_fold0.csv", dtype={"image_id": str})
    assert sorted(oof["image_id"]) == sorted(train.loc[train["fold"] == 0, "image_id"])
    assert summary["folds_done"] == [0]


def test_train_on_a_table_keeps_its_fold_column(tiny_cfg) -> None:
    from melalib.errors import LeakageError
    from melalib.table import LesionTable
    from melalib.tasks import MELANOMA

    cfg = tiny_cfg(name="own-folds", fold=1)
    df = _hand_made(cfg, 12)
    patients = sorted(df["group_id"].unique())
    df["fold"] = np.where(df["split"] == "train",
                          df["group_id"].map({g: i % 2 for i, g in enumerate(patients)}), -1)
    melalib.train(cfg, table=LesionTable(df, MELANOMA), progress=False)
    stored = RunDir(cfg.run_dir, cfg).table().df.set_index("image_id")
    assert (stored.loc[df["image_id"], "fold"].to_numpy() == df["fold"].to_numpy()).all()
    oof = pd.read_csv(cfg.run_dir / "oof_fold1.csv", dtype={"image_id": str})
    assert sorted(oof["image_id"]) == sorted(df.loc[df["fold"] == 1, "image_id"])
    train = df[df["split"] == "train"]
    sizes = train.groupby("group_id").size()
    rows = train.index[train["group_id"] == sizes[sizes >= 2].index[0]]
    leaky = df.copy()
    leaky.loc[rows[0], "fold"] = 1 - leaky.loc[rows[0], "fold"]  # one patient in both folds
    with pytest.raises(LeakageError):  # refused, as for a custom_fold_column
        melalib.train(tiny_cfg(name="leaky", fold=0), table=LesionTable(leaky, MELANOMA))


# ------------------------------------------------------------------------- fold state
def _meta_only_state(cfg, seed: int):
    """A metadata-only model's FoldState on the tiny data, and its training batches."""
    from melalib.data.load import load_table
    from melalib.features import MetaEncoder
    from melalib.losses import build_loss
    from melalib.models import build_model
    from melalib.tasks import MELANOMA

    df = load_table(cfg.data).train.reset_index(drop=True)
    encoder = MetaEncoder("default").fit(df)
    torch.manual_seed(seed)
    model = build_model(cfg.model, MELANOMA, encoder.dim)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    labels = df["label"].to_numpy()
    trainer = engine.Trainer(cfg.train, model, optimizer,
                             build_scheduler(cfg.train, optimizer, 2),
                             torch.amp.GradScaler("cpu", enabled=False),
                             build_loss(cfg.train, MELANOMA, labels), device.FP32,
                             torch.device("cpu"))
    meta = torch.from_numpy(encoder.transform(df))
    batches = [{"meta": meta[i::2], "target": torch.from_numpy(labels[i::2]).float(),
                "index": torch.arange(len(df))[i::2]} for i in range(2)]
    return engine.FoldState(cfg, MELANOMA, 0, encoder, trainer), batches


def _epoch(state, batches, epoch: int, score: float) -> None:
    torch.manual_seed(100 + epoch)  # dropout: the engine re-seeds every epoch the same way
    loss = state.trainer.epoch(batches, len(batches))
    state.record({"fold": 0, "epoch": epoch, "train_loss": loss, "seconds": 0.0}, score,
                 np.zeros((1, 1)))


def test_fold_state_save_and_resume_continue_bit_identically(tiny_cfg, tmp_path) -> None:
    cfg = tiny_cfg(use_image=False, epochs=3)
    run = RunDir(tmp_path / "run", cfg)
    (run.path / "checkpoints").mkdir(parents=True)
    whole, batches = _meta_only_state(cfg, seed=0)
    _epoch(whole, batches, 1, 0.7)
    whole.save(run, best=True)
    _epoch(whole, batches, 2, 0.6)
    _epoch(whole, batches, 3, 0.8)

    resumed, _ = _meta_only_state(cfg, seed=1)  # other initial weights: all come from the file
    assert resumed.resume(run)
    assert (resumed.epoch, resumed.best, resumed.best_epoch, resumed.stale) == (1, 0.7, 1, 0)
    assert resumed.history == whole.history[:1] and resumed.best_val_probs is None
    _epoch(resumed, batches, 2, 0.6)
    _epoch(resumed, batches, 3, 0.8)
    assert (resumed.epoch, resumed.best_epoch, resumed.stale) == (3, 3, 0)
    a, b = whole.trainer.model.state_dict(), resumed.trainer.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert whole.trainer.scheduler.state_dict() == resumed.trainer.scheduler.state_dict()
    best = load_checkpoint(run.checkpoint(0, "best"))
    assert best["epoch"] == best["best_epoch"] == 1 and "optimizer" not in best
    assert "optimizer" in load_checkpoint(run.checkpoint(0, "last"))


def test_fold_state_without_a_checkpoint_starts_fresh(tiny_cfg, tmp_path) -> None:
    cfg = tiny_cfg(use_image=False)
    state, _ = _meta_only_state(cfg, seed=0)
    assert not state.resume(RunDir(tmp_path / "none", cfg))
    assert (state.epoch, state.best, state.history) == (0, -np.inf, [])
