"""The protocol's arms: each names its own fold folders and changes only what it says in the recipe."""

from __future__ import annotations

from pathlib import Path

import pytest

from ops.protocol import CIFAKE_SMALL, TRACKS, Arm, fold_dir


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
    ]
    suffixes = [a.suffix() for a in arms]
    assert len(set(suffixes)) == len(arms)
    assert suffixes[2] == "-vgg3_wide_freq-scratch" and suffixes[5] == "-recon0.3x4"


def test_from_scratch_drops_only_the_starting_weights() -> None:
    plain = Arm(variant="vgg3_wide_freq", epochs=3).recipe("full")
    scratch = Arm(variant="vgg3_wide_freq", scratch=True, epochs=3).recipe("full")
    assert plain["init_from"] == CIFAKE_SMALL and "init_from" not in scratch
    assert {k: v for k, v in plain.items() if k != "init_from"} == scratch
    assert scratch["variant"] == "vgg3_wide_freq" and scratch["epochs"] == 3


def test_tiles_belong_to_the_full_track() -> None:
    with pytest.raises(ValueError, match="full track"):
        Arm(tiles=True).recipe("small")
