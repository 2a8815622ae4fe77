"""The protocol's arms: each names its own fold folders and changes only what it says in the recipe."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from fakescope.checkpoint import load_checkpoint
from fakescope.train import score_holdout
from ops import protocol
from ops.protocol import CIFAKE_SMALL, TRACKS, Arm, Track, fold_config, fold_dir, run_fold
from tests.core.conftest import write_cifake


def test_the_plain_arm_trains_the_tracks_recipe_in_the_folders_runs_already_have() -> None:
    assert Arm().recipe("full") == TRACKS["full"].recipe
    assert fold_dir(Path("runs/protocol"), "full", "diffusion", "model", Arm()) == Path(
        "runs/protocol/full/diffusion-model"
    )


def test_each_arm_gets_its_own_folder() -> None:
    arms = [
        Arm(),
        Arm(variant="vgg3_wide_freq"),
        Arm(variant="vgg3_wide_freq", scratch=True),
        Arm(tiles=True),
        Arm(recon="bank"),
        Arm(recon="bank", recon_scale=4),
        Arm(init_seed=1),
        Arm(epochs=8),
        Arm(match_jpeg=0),
        Arm(resample_p=0.3),
        Arm(robust_p=0.6),
        Arm(gray_p=0.5),
        Arm(freq_mask_p=0.5),
        Arm(folder_balance=0.5),
        Arm(group_dro=0.01),
        Arm(group_dro=0.01, group_dro_start="sizes"),
        Arm(sam=0.05),
        Arm(position_loss=True),
        Arm(readout="top0.1"),
        Arm(members=("vgg3_wide_stem", "vgg3_wide_freq"), scratch=True),
    ]
    suffixes = [a.suffix() for a in arms]
    assert len(set(suffixes)) == len(arms)
    assert suffixes[2] == "-vgg3_wide_freq-scratch" and suffixes[5] == "-recon0.3x4"
    sized = Arm(group_dro=0.01, group_dro_start="sizes")
    assert sized.suffix() == "-dro0.01-sizes" and sized.recipe("full")["group_dro_start"] == "sizes"
    assert "group_dro_start" not in Arm(group_dro=0.01).recipe("full")


def test_the_small_track_matches_compression_history_unless_an_arm_turns_it_off() -> None:
    # CIFAKE's files are quality-75 JPEGs and multigen/small's tiles PNGs: the track gives the tiles
    # CIFAKE's round trip, and --match-jpeg 0 is the earlier measurement, in folders of its own.
    assert Arm().recipe("small")["match_jpeg"] == 75
    assert Arm(match_jpeg=0).recipe("small")["match_jpeg"] == 0
    assert Arm(match_jpeg=0).suffix() == "-jpeg0" and Arm().suffix() == ""
    assert "match_jpeg" not in Arm().recipe("full")  # multigen/full is JPEG for both labels already


STEM16 = Arm(variant="vgg2_wide_stem", scratch=True, epochs=16)


@pytest.mark.parametrize(
    ("arm", "field", "value", "suffix"),
    [
        (dataclasses.replace(STEM16, gray_p=0.5), "gray_p", 0.5, "-gray0.5"),
        (dataclasses.replace(STEM16, freq_mask_p=0.5), "freq_mask_p", 0.5, "-fmask0.5"),
        (dataclasses.replace(STEM16, folder_balance=0.5), "folder_balance", 0.5, "-bal0.5"),
        (dataclasses.replace(STEM16, group_dro=0.5), "group_dro", 0.5, "-dro0.5"),
        (dataclasses.replace(STEM16, sam=0.5), "sam", 0.5, "-sam0.5"),
        (dataclasses.replace(STEM16, position_loss=True), "position_loss", True, "-posloss"),
    ],
    ids=["grey images", "frequency masking", "draws by folder", "group DRO", "sharpness-aware", "position loss"],
)
def test_a_training_option_arm_changes_only_its_own_field(arm: Arm, field: str, value: object, suffix: str) -> None:
    assert arm.recipe("full") == {**STEM16.recipe("full"), field: value}
    assert arm.suffix() == STEM16.suffix() + suffix
    assert getattr(fold_config("full", "diffusion", ["diffusion"], "model", Path("x"), arm), field) == value


def test_a_robust_arm_changes_only_the_share_of_degraded_images() -> None:
    arm = Arm(variant="vgg3_wide_stem", scratch=True, epochs=16, robust_p=0.6)
    base = Arm(variant="vgg3_wide_stem", scratch=True, epochs=16)
    assert arm.recipe("full") == {**base.recipe("full"), "robust_p": 0.6}
    assert TRACKS["full"].recipe["robust_p"] == 0.3
    assert arm.suffix() == base.suffix() + "-robust0.6"


def test_from_scratch_drops_only_the_starting_weights() -> None:
    plain = Arm(variant="vgg3_wide_freq", epochs=3).recipe("full")
    scratch = Arm(variant="vgg3_wide_freq", scratch=True, epochs=3).recipe("full")
    assert plain["init_from"] == CIFAKE_SMALL and "init_from" not in scratch
    assert {k: v for k, v in plain.items() if k != "init_from"} == scratch
    assert scratch["variant"] == "vgg3_wide_freq" and scratch["epochs"] == 3


def test_tiles_belong_to_the_full_track() -> None:
    with pytest.raises(ValueError, match="full track"):
        Arm(tiles=True).recipe("small")


def test_an_ensemble_arm_names_its_members_as_arms_of_their_own() -> None:
    arm = Arm(members=("vgg3_wide_stem", "vgg3_wide_stem@1"), scratch=True, epochs=8)
    assert arm.suffix() == "-ens-vgg3_wide_stem+vgg3_wide_stem@1-scratch-ep8"
    assert arm.member_arms() == [
        Arm(variant="vgg3_wide_stem", scratch=True, epochs=8),
        Arm(variant="vgg3_wide_stem", init_seed=1, scratch=True, epochs=8),
    ]
    with pytest.raises(ValueError, match="must be a number"):
        Arm(members=("vgg3_wide@x",)).member_arms()


@pytest.fixture
def tiny_track(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A track named ``tiny``: two generators of synthetic CIFAKE-like images, one epoch a fold."""
    monkeypatch.setenv("FAKESCOPE_CACHE_DIR", str(tmp_path / "cache"))
    write_cifake(tmp_path / "d" / "gen-a", 24)
    write_cifake(tmp_path / "d" / "gen-b", 12)
    tiny = Track(
        data=(str(tmp_path / "d"),),
        recipe=dict(variant="freqnet_vgg", epochs=1, batch_size=16, val_size=16, calib_size=8, threads=1),
        content_side=8,
        extra_folds={},
    )
    monkeypatch.setitem(protocol.TRACKS, "tiny", tiny)


@pytest.mark.usefixtures("tiny_track")
def test_an_ensemble_fold_trains_its_members_then_scores_their_average(tmp_path: Path) -> None:
    arm = Arm(members=("freqnet_vgg", "freqnet_vgg@1"))
    out = tmp_path / "runs"
    metrics = run_fold("tiny", "b", ["gen-b/FAKE"], "model", out, arm)

    a, b = (fold_dir(out, "tiny", "b", "model", m) for m in arm.member_arms())
    ens = fold_dir(out, "tiny", "b", "model", arm)
    assert "holdout" in json.loads((a / "config.json").read_text())["metrics"]
    assert "holdout" in json.loads((b / "config.json").read_text())["metrics"]
    net, meta = load_checkpoint(ens)
    assert meta.variant == "freqnet_vgg+freqnet_vgg" and len(list(net.nets())) == 2  # type: ignore[operator]
    member = json.loads((a / "config.json").read_text())["metrics"]["holdout"]
    assert metrics["holdout"]["n"] == member["n"] and metrics["holdout"]["folders"] == ["gen-b/FAKE"]
    # The scorer an ensemble fold uses gives a trained fold's own figures back from its checkpoint.
    again = score_holdout(fold_config("tiny", "b", ["gen-b/FAKE"], "model", a, arm.member_arms()[0]), a)
    assert again["roc_auc"] == pytest.approx(member["roc_auc"]) and again["n"] == member["n"]
    # Another readout reads the combined checkpoint (at share 1, the served readout's figures).
    read = run_fold("tiny", "b", ["gen-b/FAKE"], "model", out, dataclasses.replace(arm, readout="top1"))
    assert read["holdout"]["roc_auc"] == pytest.approx(metrics["holdout"]["roc_auc"])
    # A finished ensemble fold is read back, not combined again.
    (ens / "model.safetensors").unlink()
    assert run_fold("tiny", "b", ["gen-b/FAKE"], "model", out, arm) == metrics


@pytest.mark.usefixtures("tiny_track")
def test_a_readout_fold_reads_the_mean_arms_checkpoint_and_trains_nothing(tmp_path: Path) -> None:
    out = tmp_path / "runs"
    every = Arm(readout="top1")  # all positions: the served readout, through the positional path
    metrics = run_fold("tiny", "b", ["gen-b/FAKE"], "model", out, every)
    base = fold_dir(out, "tiny", "b", "model", Arm())
    trained = json.loads((base / "config.json").read_text())["metrics"]["holdout"]
    assert metrics["holdout"]["roc_auc"] == pytest.approx(trained["roc_auc"])
    assert metrics["holdout"]["n"] == trained["n"]
    folder = fold_dir(out, "tiny", "b", "model", every)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json"]  # a record, no weights
    assert json.loads((folder / "config.json").read_text())["checkpoint"] == str(base)
    # Another share reads the same checkpoint: the mean arm is not trained again.
    stamp = (base / "model.safetensors").stat().st_mtime_ns
    top = run_fold("tiny", "b", ["gen-b/FAKE"], "model", out, Arm(readout="top0.1"))
    assert (base / "model.safetensors").stat().st_mtime_ns == stamp and top["holdout"]["n"] == trained["n"]


def test_a_product_arm_names_its_cross_fitted_content_baselines() -> None:
    arm = Arm(variant="vgg3_wide_stem", scratch=True, epochs=16, debias=2, bias_epochs=8)
    assert arm.suffix() == "-vgg3_wide_stem-scratch-ep16-poe2b8"
    first, second = arm.bias_arms()
    assert first == Arm(variant="vgg3_wide_stem", scratch=True, epochs=8, cross_fit="0/2")
    assert first.suffix() == "-vgg3_wide_stem-scratch-ep8-xfit0of2" and second.cross_fit == "1/2"
    plain = Arm(variant="vgg3_wide_stem", scratch=True, epochs=8).recipe("full")
    assert first.recipe("full") == {**plain, "cross_fit": "0/2"}
    assert Arm(debias=1).bias_arms() == [Arm()]
    # The control trains the model alone and shares the product arm's baselines, not its folders.
    control = Arm(variant="vgg3_wide_stem", scratch=True, epochs=16, debias=2, bias_epochs=8, poe=False)
    assert control.bias_arms() == arm.bias_arms() and control.suffix() == "-vgg3_wide_stem-scratch-ep16-prod2b8"


@pytest.mark.usefixtures("tiny_track")
def test_a_product_fold_trains_its_baselines_then_scores_three_ways(tmp_path: Path) -> None:
    arm = Arm(debias=2)
    out = tmp_path / "runs"
    metrics = run_fold("tiny", "b", ["gen-b/FAKE"], "model", out, arm)
    for b in arm.bias_arms():
        record = json.loads((fold_dir(out, "tiny", "b", "content", b) / "config.json").read_text())
        assert record["training"]["config"]["content_only"] == 8 and record["training"]["config"]["cross_fit"]
    model = json.loads((fold_dir(out, "tiny", "b", "model", arm) / "config.json").read_text())
    assert len(model["training"]["config"]["bias_from"]) == 2
    assert {"holdout", "holdout_bias", "holdout_product"} <= set(metrics)
    assert metrics["holdout"]["n"] == metrics["holdout_bias"]["n"] == metrics["holdout_product"]["n"]
    r = protocol.row("tiny", "b", "model", metrics)
    assert {"roc_auc_bias", "roc_auc_product"} <= set(r) and "| b |" in protocol.product_table([r])
    with pytest.raises(ValueError, match="--kinds model"):
        run_fold("tiny", "b", ["gen-b/FAKE"], "content", out, arm)
    # The fold kept its held-out logits as it scored them: the readouts matched them, not a new pass.
    cfg = fold_config("tiny", "b", ["gen-b/FAKE"], "model", fold_dir(out, "tiny", "b", "model", arm), arm)
    assert len(list(fold_dir(out, "tiny", "b", "model", arm).glob("logits-*.pt"))) == 1
    assert score_holdout(cfg, fold_dir(out, "tiny", "b", "model", arm))["roc_auc"] == pytest.approx(
        metrics["holdout"]["roc_auc"]
    )
    # The control: the same baselines (already trained, so read back), the model trained without them.
    control = Arm(debias=2, poe=False)
    again = run_fold("tiny", "b", ["gen-b/FAKE"], "model", out, control)
    plain = json.loads((fold_dir(out, "tiny", "b", "model", control) / "config.json").read_text())
    assert plain["training"]["config"]["bias_from"] == [] and {"holdout_bias", "holdout_product"} <= set(again)
    assert again["holdout_bias"] == metrics["holdout_bias"]


def test_a_selection_arm_scores_its_own_calibration_split_every_second_epoch() -> None:
    base = Arm(variant="vgg2_wide_stem", scratch=True, epochs=16)
    arm = Arm(variant="vgg2_wide_stem", scratch=True, epochs=16, select_epoch="calib_auc")
    assert arm.recipe("full") == {**base.recipe("full"), "select_epoch": "calib_auc", "calib_every": 2}
    assert arm.suffix() == base.suffix() + "-select-calib-auc"


@pytest.mark.usefixtures("tiny_track")
def test_a_selection_fold_reports_the_chosen_epoch_beside_the_last(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(protocol.TRACKS["tiny"].recipe, "epochs", 4)
    arm = Arm(select_epoch="calib_auc")
    metrics = run_fold("tiny", "b", ["gen-b/FAKE"], "model", tmp_path / "runs", arm)
    record = json.loads((fold_dir(tmp_path / "runs", "tiny", "b", "model", arm) / "config.json").read_text())
    scored = [h["epoch"] for h in record["training"]["history"] if "calib_auc" in h]
    assert scored == [2, 4] and metrics["selected_epoch"] in scored
    r = protocol.row("tiny", "b", "model", metrics)
    last = metrics.get("holdout_last", metrics["holdout"])
    assert r["selected_epoch"] == metrics["selected_epoch"] and r["roc_auc_last"] == round(last["roc_auc"], 4)
    assert "| b |" in protocol.selection_table([r])


def test_each_folds_budget_is_chosen_by_the_other_folds_alone() -> None:
    scores = {8: {"a": 0.90, "b": 0.70, "c": 0.70}, 16: {"a": 0.60, "b": 0.80, "c": 0.75}}
    # a: the others (b, c) prefer 16, though a itself scores best at 8; b: a and c together prefer 8.
    assert protocol.budget_by_other_folds(scores) == {"a": (16, 0.60), "b": (8, 0.70), "c": (8, 0.70)}
    # A tie goes to the budget listed first.
    assert protocol.budget_by_other_folds({16: {"a": 0.5, "b": 0.7}, 8: {"a": 0.6, "b": 0.7}})["a"] == (16, 0.5)
    table = protocol.budget_table(scores)
    assert "| a | 0.900 | 0.600 | 0.600 (16) |" in table and "**0.667**" in table
    assert protocol.last_epoch_auc({"holdout": {"roc_auc": 0.81}, "holdout_last": {"roc_auc": 0.79}}) == 0.79
    assert protocol.last_epoch_auc({"holdout": {"roc_auc": 0.81234}}) == 0.8123
