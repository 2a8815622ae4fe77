"""The shipped default: a routed folder whose members load, route as documented, and are the ones
the README, docs/detector.md and the model card name."""

from __future__ import annotations

import json
from pathlib import Path

from fakescope.detector import DEFAULT_CHECKPOINT, ROUTES_FILE, RoutedDetector, load_detector

ROOT = Path(__file__).resolve().parents[2]


def test_the_default_is_routed_by_size_and_names_its_members_in_the_docs() -> None:
    routes = json.loads((DEFAULT_CHECKPOINT / ROUTES_FILE).read_text())["routes"]
    det = load_detector(None, device="cpu")
    assert isinstance(det, RoutedDetector)
    assert [r.name for r in det.routes] == [r["name"] for r in routes]
    # CIFAKE's 32x32 thumbnails to the first route; full-size photos to the last.
    assert det.routes[det.route(32, 32)].name == "small"
    assert det.routes[det.route(1024, 768)].name == "full"
    docs = {
        name: (ROOT / name).read_text()
        for name in ("README.md", "docs/detector.md", "shared/fakescope/weights/default/MODEL_CARD.md")
    }
    for route, member in zip(det.routes, det.members, strict=True):
        variant = member.meta.variant
        for name, text in docs.items():
            assert f"`{variant}`" in text, f"{name} does not name {route.name}'s variant {variant}"
        assert f"`{route.name}`" in docs["shared/fakescope/weights/default/MODEL_CARD.md"]


def test_fakescope_train_defaults_to_the_shipped_small_routes_recipe() -> None:
    from fakescope.cli import build_parser

    shipped = json.loads((DEFAULT_CHECKPOINT / "small" / "config.json").read_text())
    recipe = shipped["training"]["config"]
    args = build_parser().parse_args(["train", "--out", "x"])
    assert args.model == shipped["variant"] == recipe["variant"]
    for name in ("recipe", "batch_size", "weight_decay", "label_smoothing", "translate", "ema_decay", "robust_p"):
        assert getattr(args, name) == recipe[name], name
    for name in ("border_p", "val_size", "calib_size", "seed", "amp", "device"):
        assert getattr(args, name) == recipe[name], name
