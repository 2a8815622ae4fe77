"""The ``fakescope`` command: scan images, train and evaluate detectors, run the job service."""

from __future__ import annotations

import argparse
import functools
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fakescope.client import FakescopeClient
    from fakescope.result import OperatingPoint

__all__ = ["main"]

DEFAULT_DATA = ["../shared/data/cifake_train_subset", "../shared/data/cifake_train_more.tar.gz"]


def _add_split_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", action="append", help="CIFAKE-layout folder or archive (repeatable)")
    p.add_argument("--val-size", type=int, default=10_000, help="images held out for validation")
    p.add_argument("--calib-size", type=int, default=2_000, help="images held out for calibration")
    p.add_argument("--seed", type=int, default=0, help="split and training seed")


def _cmd_train(args: argparse.Namespace) -> int:
    from fakescope.train import TrainConfig, train

    cfg = TrainConfig(
        data=args.data or DEFAULT_DATA,
        out=args.out,
        variant=args.model,
        recipe=args.recipe,
        # The shipped small route's recipe unless told otherwise (its model card's command).
        epochs=args.epochs if args.epochs is not None else (20 if args.recipe == "paper" else 25),
        batch_size=args.batch_size,
        lr=args.lr,
        val_size=args.val_size,
        calib_size=args.calib_size,
        seed=args.seed,
        device=args.device,
        threads=args.threads,
        resume=args.resume,
        max_train=args.max_train,
        dev_size=args.dev_size,
        stop_after=args.stop_after,
        init_from=args.init_from,
        translate=args.translate,
        ema_decay=args.ema_decay,
        robust_p=args.robust_p,
        noise_p=args.noise_p,
        gray_p=args.gray_p,
        freq_mask_p=args.freq_mask_p,
        freq_mask_ratio=args.freq_mask_ratio,
        folder_balance=args.folder_balance,
        group_dro=args.group_dro,
        group_dro_start=args.group_dro_start,
        sam=args.sam,
        position_loss=args.position_loss,
        recon=args.recon,
        recon_p=args.recon_p,
        recon_scale=args.recon_scale,
        amp=args.amp,
        weight_decay=args.weight_decay,
        label_smoothing=args.label_smoothing,
        border_p=args.border_p,
        init_seed=args.init_seed,
        input_size=args.input_size,
        resize=args.resize,
        interpolation=args.interpolation,
        crop=args.crop,
        repeats=args.repeats,
        calib_every=args.calib_every,
        select_epoch=args.select_epoch,
        scale_p=args.scale_p,
        scale_min=args.scale_min,
        holdout=args.holdout,
        train_only=args.train_only,
        tiles=args.tiles,
        tile_share=args.tile_share,
        content_only=args.content_only,
        match_jpeg=args.match_jpeg,
        resample_p=args.resample_p,
    )
    out = train(cfg)
    print(json.dumps(json.loads((out / "config.json").read_text())["metrics"], indent=2))
    return 0


def _checkpoint(args: argparse.Namespace) -> str | None:
    """``--checkpoint``, else the setting (``FAKESCOPE_CHECKPOINT``); None: the shipped default."""
    from fakescope.settings import get_settings

    return args.checkpoint or get_settings().checkpoint


def _image_time_limit(args: argparse.Namespace) -> float | None:
    """``--image-time-limit`` (0: none), else the setting (``FAKESCOPE_IMAGE_TIME_LIMIT_S``)."""
    from fakescope.settings import get_settings

    seconds = get_settings().image_time_limit_s if args.image_time_limit is None else args.image_time_limit
    return seconds if seconds > 0 else None


def _threshold_args(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument("--fake-threshold", type=float, help=f"fake at this probability and above (default: {default})")
    p.add_argument(
        "--real-threshold",
        type=float,
        help="real below this probability; between it and the fake threshold the verdict is uncertain",
    )


def _point(args: argparse.Namespace) -> OperatingPoint | None:
    """The operating point the command line asks for; None: the default (the tenant's, for a service)."""
    if args.fake_threshold is None and args.real_threshold is None:
        return None
    from pydantic import ValidationError

    from fakescope.result import OperatingPoint

    fake = 0.5 if args.fake_threshold is None else args.fake_threshold
    try:
        return OperatingPoint(fake_threshold=fake, real_threshold=args.real_threshold)
    except ValidationError as e:
        raise SystemExit(f"fakescope: bad thresholds: {e.errors()[0]['msg']}") from e


def _cmd_scan(args: argparse.Namespace) -> int:
    from fakescope.scan import run_scan

    summary = run_scan(
        args.paths,
        args.out,
        checkpoint=_checkpoint(args),
        device=args.device,
        batch_size=args.batch_size,
        overlays=not args.no_overlays,
        explain=args.explain,
        explain_backend=args.explain_backend,
        max_pixels=args.max_pixels,
        progress=not args.quiet,
        point=_point(args),
        image_time_limit_s=_image_time_limit(args),
    )
    band = f"{summary.uncertain} uncertain, " if args.real_threshold is not None else ""
    print(
        f"{summary.total} inputs: {summary.fake} fake, {summary.real} real, {band}{summary.errors} errors "
        f"({summary.model_version}); wrote {summary.out_dir}/results.jsonl, task1.json, report.html"
    )
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from fakescope.detector import Detector, member_folder
    from fakescope.evaluate import domain_report, evaluate_arrays, format_table, load_eval_data, robustness

    detector = Detector.load(member_folder(_checkpoint(args), args.route), device=args.device)
    data = load_eval_data(args.data or DEFAULT_DATA, detector, split=args.split, limit=args.limit)
    if args.robustness:
        table = robustness(detector, data, batch_size=args.batch_size)
    else:
        table = {"clean": evaluate_arrays(detector, data, batch_size=args.batch_size)}
    report: dict[str, Any] = {
        "model_version": detector.model_version,
        "data": args.data or DEFAULT_DATA,
        "split": args.split or "all",
        "n": len(data),
        "metrics": table,
    }
    if detector.domain is not None:
        # The images are already at the input size here: this is the feature distance alone.
        report["domain_features_only"] = domain_report(detector, data, batch_size=args.batch_size)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    print(f"{detector.model_version} on {report['n']} images ({report['split']} of {', '.join(report['data'])})")
    print(format_table(table))
    if "domain_features_only" in report:
        d = report["domain_features_only"]
        print(
            f"domain (feature distance only): flagged {d['flagged']:.4f}, confident wrong {d['confident_wrong']:.4f}, "
            f"confident wrong and not flagged {d['confident_wrong_unflagged']:.4f}"
        )
    return 0


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from fakescope.detector import member_folder
    from fakescope.evaluate import operating_points, recalibrate

    if args.target_fpr is not None:
        if not args.data:
            raise SystemExit("fakescope calibrate --target-fpr needs --data: the platform's labelled images")
        points = operating_points(args.checkpoint, args.data, args.target_fpr)
        print(json.dumps(points, indent=2))
        print(
            "make these the tenant's default: fakescope operating-point "
            f"--fake-threshold {points['fake_threshold']:.4f} --real-threshold {points['real_threshold']:.4f}",
            file=sys.stderr,
        )
        return 0
    if not args.checkpoint:
        raise SystemExit("fakescope calibrate needs --checkpoint (the folder it rewrites)")

    result = recalibrate(
        member_folder(args.checkpoint, args.route),
        args.data or DEFAULT_DATA,
        tta_hflip=args.tta,
        domain_fit_images=args.domain_images,
        batch_size=args.batch_size,
    )
    print(json.dumps(result, indent=2))
    return 0


def _cmd_ensemble(args: argparse.Namespace) -> int:
    from fakescope.checkpoint import combine_checkpoints

    out = combine_checkpoints(args.members, args.out, args.weights)
    print(
        f"wrote the ensemble of {len(args.members)} checkpoints to {out}; "
        f"calibrate it next: fakescope calibrate --checkpoint {out}"
    )
    return 0


def _cmd_keys(args: argparse.Namespace) -> int:
    """Tenants' API keys in the service's database (``FAKESCOPE_DATABASE_URL``): run where the API runs."""
    from fakescope.db.engine import new_session
    from fakescope.service.tenants import create_api_key, list_api_keys, revoke_api_key
    from fakescope.settings import get_settings

    with new_session(get_settings().sqlalchemy_url) as session:
        if args.keys_command == "create":
            tenant, key = create_api_key(session, tenant_name=args.tenant)
            print(key)
            print(
                f"created a key for tenant {tenant.name!r} (prefix {key[:12]}); it is shown only now", file=sys.stderr
            )
        elif args.keys_command == "list":
            for name, row in list_api_keys(session, tenant_name=args.tenant):
                revoked = row.revoked_at.isoformat() if row.revoked_at else "-"
                print(f"{row.prefix}\t{name}\tcreated {row.created_at.isoformat()}\trevoked {revoked}")
        else:
            n = revoke_api_key(session, prefix=args.prefix)
            if not n:
                print(f"no active key has the prefix {args.prefix!r}", file=sys.stderr)
                return 1
            print(f"revoked {n} key(s) with the prefix {args.prefix!r}")
    return 0


def _cmd_export_split(args: argparse.Namespace) -> int:
    from fakescope.data import export_split

    n = export_split(
        args.data or DEFAULT_DATA,
        args.out,
        split=args.split,
        val_size=args.val_size,
        calib_size=args.calib_size,
        seed=args.seed,
    )
    print(f"wrote {n} images of the {args.split} split to {args.out}")
    return 0


# Subcommands whose own module parses the rest of the command line.
DELEGATED = {
    # The process runner lives beside the apps it starts (serve/), not in this package.
    "serve": ("serve.stack", "run the job service natively: API, classify and explain pools, Flower"),
    "finetune-explainer": ("fakescope.explain.finetune", "LoRA fine-tuning of the Idefics2 explainer"),
    "calibrate-evidence": ("fakescope.explain.calibrate", "measure the evidence signals on real images"),
    "sweep": ("fakescope.service.sweeper", "re-enqueue job work that waited past its deadline (run one)"),
}


def _client(args: argparse.Namespace) -> FakescopeClient:
    from fakescope.client import FakescopeClient

    return FakescopeClient(args.api)


def _wait_with_bar(client: FakescopeClient, job_id: str, timeout: float | None) -> dict:
    from tqdm import tqdm

    with tqdm(desc="processing", unit="img") as bar:

        def show(job: dict) -> None:
            c = job["counts"]
            bar.total = c["total"]
            bar.n = c["total"] - c["queued"] - c["awaiting_upload"]
            bar.set_postfix(state=job["state"], failed=c["failed"], explain_pending=c["explain_pending"])
            bar.refresh()

        return client.wait(job_id, timeout=timeout, progress=show)


def _cmd_submit(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    with _client(args) as client:
        with tqdm(desc="upload", unit="img") as bar:

            def uploaded(done: int, total: int) -> None:
                bar.total = total
                bar.n = done
                bar.refresh()

            from fakescope.client import is_url

            web = [p for p in args.paths if is_url(p)]
            if web and len(web) != len(args.paths):
                raise SystemExit("fakescope submit: give files or URLs, not both, in one job")
            submit = client.submit_urls if web else functools.partial(client.submit, progress=uploaded)
            job = submit(
                args.paths,
                explain=args.explain,
                overlays=not args.no_overlays,
                callback_url=args.callback_url,
                idempotency_key=args.idempotency_key,
                fake_threshold=args.fake_threshold,
                real_threshold=args.real_threshold,
            )
        print(f"job {job['id']}: {job['state']}, {job['counts']['total']} images", file=sys.stderr)
        if args.wait or args.out:
            job = _wait_with_bar(client, job["id"], args.timeout)
            if args.out:
                client.download(job["id"], args.out)
        print(json.dumps(job, indent=2))
        return 0 if job["state"] in ("succeeded", "partially_succeeded", "queued", "running") else 1


def _cmd_detect(args: argparse.Namespace) -> int:
    with _client(args) as client:
        result = client.detect(
            args.path,
            overlays=not args.no_overlays,
            fake_threshold=args.fake_threshold,
            real_threshold=args.real_threshold,
        )
        print(json.dumps(result, indent=2))
    return 0


def _cmd_operating_point(args: argparse.Namespace) -> int:
    with _client(args) as client:
        if args.fake_threshold is None and args.real_threshold is None:
            point = client.operating_point()
        else:
            fake = 0.5 if args.fake_threshold is None else args.fake_threshold
            point = client.set_operating_point(fake, args.real_threshold)
        print(json.dumps(point, indent=2))
    return 0


def _cmd_feedback(args: argparse.Namespace) -> int:
    with _client(args) as client:
        if args.feedback_command == "give":
            print(json.dumps(client.give_feedback(args.job, args.position, args.label, args.note), indent=2))
        else:
            counts = client.export_feedback(args.out)
            print(
                f"{counts['real']} real, {counts['fake']} fake written under {args.out}/REAL and FAKE; "
                f"{counts['skipped']} skipped (originals past retention)"
            )
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    with _client(args) as client:
        cmd = args.models_command
        if cmd == "train":
            out = client.train_model(args.source, base=args.base, epochs=args.epochs, command=" ".join(sys.argv))
        elif cmd == "list":
            for m in client.models():
                gate = (m["metrics"].get("gate") or {}).get("passes")
                progress = f"{m['progress'].get('epochs_done', 0)}/{m['progress'].get('epochs', '?')} epochs"
                shown = "" if gate is None else f", gate {'passes' if gate else 'refuses'}"
                print(f"{m['version']}\t{m['status']}\tfrom {m['base_version']}\t{progress}{shown}")
            return 0
        elif cmd == "show":
            out = client.model(args.version)
            print(json.dumps(out, indent=2))
            _print_comparison(out)
            return 0
        elif cmd == "promote":
            out = client.promote_model(args.version)
        elif cmd == "shadow":
            out = client.shadow_model(args.version, on=not args.stop)
        else:
            out = client.rollback_model()
        print(json.dumps(out, indent=2))
    return 0


def _print_comparison(m: dict[str, Any]) -> None:
    """The gate's side-by-side comparison, as a table after the JSON (stderr: the JSON stays parseable)."""
    sets = m["metrics"].get("sets") or {}
    if not sets:
        return
    print(f"\ncompared with {m['metrics'].get('compared_with')}:", file=sys.stderr)
    print(
        f"{'set':<12}{'n':>6}{'live AUC':>10}{'cand AUC':>10}{'live acc':>10}{'cand acc':>10}{'agree':>8}",
        file=sys.stderr,
    )

    def f(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    for name, s in sets.items():
        live, cand = s["live"], s["candidate"]
        print(
            f"{name:<12}{s['n']:>6}{f(live['auc']):>10}{f(cand['auc']):>10}{f(live['accuracy']):>10}"
            f"{f(cand['accuracy']):>10}{f(s.get('agreement')):>8}",
            file=sys.stderr,
        )
    shadow = m.get("shadow")
    if shadow:
        live, labelled = shadow["by_live_verdict"], shadow["labelled"]
        print(
            f"shadow: {shadow['n']} live items, agreement {shadow['agreement']:.3f} (live fake "
            f"{live['fake']['agree']}/{live['fake']['n']}, live real {live['real']['agree']}/{live['real']['n']}); "
            f"labelled {labelled['n']}: live right {labelled['live_correct']}, "
            f"shadow right {labelled['shadow_correct']}",
            file=sys.stderr,
        )
    gate = m["metrics"].get("gate") or {}
    print(
        "gate: " + ("passes" if gate.get("passes") else "refuses: " + "; ".join(gate.get("refusals", []))),
        file=sys.stderr,
    )


def _cmd_status(args: argparse.Namespace) -> int:
    with _client(args) as client:
        job = _wait_with_bar(client, args.job, args.timeout) if args.wait else client.status(args.job)
        print(json.dumps(job, indent=2))
    return 0


def _cmd_results(args: argparse.Namespace) -> int:
    with _client(args) as client:
        job = client.status(args.job)
        if job["state"] not in ("succeeded", "partially_succeeded", "failed", "cancelled"):
            print(f"job {args.job} is {job['state']}: results are partial (use --wait)", file=sys.stderr)
            if args.wait:
                _wait_with_bar(client, args.job, args.timeout)
        out = client.download(args.job, args.out, thumbnails=not args.no_thumbnails)
    print(f"wrote {out}/results.jsonl, task1.json, overlays/ and report.html", file=sys.stderr)
    return 0


def _cmd_cancel(args: argparse.Namespace) -> int:
    with _client(args) as client:
        print(json.dumps(client.cancel(args.job), indent=2))
    return 0


def _add_api_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--api", help="API base URL (default: $FAKESCOPE_API_URL or the client config file)")
    p.add_argument("--timeout", type=float, help="give up waiting after this many seconds")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fakescope", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a detector on CIFAKE-layout data")
    _add_split_args(p)
    p.add_argument("--out", required=True, help="checkpoint folder to write")
    p.add_argument("--model", default="vgg3_wide", help="variant name (default: the shipped small route's)")
    p.add_argument("--recipe", choices=["fast", "paper"], default="fast")
    p.add_argument("--epochs", type=int, help="default: 25 (the shipped recipe; 20 with --recipe paper)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--threads", type=int, help="CPU threads for torch")
    p.add_argument("--resume", action="store_true", help="continue from --out's last epoch")
    p.add_argument("--max-train", type=int, help="train on a seeded random subset of this many images")
    p.add_argument("--dev-size", type=int, default=0, help="hold out a dev split from training; score on it, not val")
    p.add_argument("--stop-after", type=int, help="stop after this epoch (preemptible runs; then --resume)")
    p.add_argument("--init-from", help="start from this checkpoint's weights with a fresh schedule (warm restart)")
    p.add_argument("--translate", type=int, default=2, help="random reflect-padded shift, pixels (fast recipe)")
    p.add_argument("--ema-decay", type=float, default=0.999, help="EMA of the weights per step; 0 turns it off")
    p.add_argument("--robust-p", type=float, default=0.15, help="share of images rescaled, blurred or re-JPEGed")
    p.add_argument("--noise-p", type=float, default=0.0, help="share of images given Gaussian noise (both labels)")
    p.add_argument("--gray-p", type=float, default=0.0, help="share of images seen in grey (both labels)")
    p.add_argument(
        "--freq-mask-p",
        type=float,
        default=0.0,
        help="share of images (both labels) with random Fourier coefficients zeroed (frequency masking)",
    )
    p.add_argument(
        "--freq-mask-ratio", type=float, default=0.15, help="with --freq-mask-p: share of coefficients zeroed"
    )
    p.add_argument(
        "--folder-balance",
        type=float,
        default=0.0,
        metavar="POWER",
        help="draw each image with weight n**-POWER, n its folder's images (1: folders equal; 0: off)",
    )
    p.add_argument(
        "--group-dro",
        type=float,
        default=0.0,
        metavar="STEP",
        help="online group DRO over the folders: a folder's loss weight grows as exp(STEP * its loss); 0: off",
    )
    p.add_argument(
        "--group-dro-start",
        choices=("even", "sizes"),  # fakescope.train.GROUP_DRO_STARTS (not imported: torch loads lazily)
        default="even",
        help="group DRO's first weights: every folder of a label even, or by the folders' sizes (the plain loss)",
    )
    p.add_argument(
        "--sam",
        type=float,
        default=0.0,
        metavar="RHO",
        help="sharpness-aware minimisation: each step's gradient taken RHO along the normalised gradient (0: off)",
    )
    p.add_argument(
        "--position-loss",
        action="store_true",
        help="the loss at every position of the last feature map, each with the image's label (not on their mean)",
    )
    p.add_argument("--recon", help="a reconstruction bank (ops/train_recon.py): aligned fakes made from training reals")
    p.add_argument("--recon-p", type=float, default=0.3, help="with --recon: share of each batch's fakes made so")
    p.add_argument("--recon-scale", type=float, default=1.0, help="with --recon: made at up to this enlargement")
    p.add_argument("--amp", choices=["auto", "on", "off"], default="auto", help="bf16 autocast (auto: CUDA or AMX)")
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--label-smoothing", type=float, default=0.05)
    p.add_argument(
        "--border-p", type=float, default=0.05, help="share of images shifted with a black border (the shipped 0.05)"
    )
    p.add_argument("--init-seed", type=int, help="seed of weights, order and augmentation (default: --seed)")
    p.add_argument("--input-size", type=int, default=32, help="images decoded at this square size")
    p.add_argument("--resize", choices=["stretch", "shorter_side"], default="stretch", help="how inputs are fitted")
    p.add_argument("--interpolation", default="bicubic", help="resampling filter of the saved preprocessing")
    p.add_argument("--crop", type=int, default=0, help="train on random crops of this side (0: whole images)")
    p.add_argument("--repeats", type=int, default=1, help="passes over the training images per epoch")
    p.add_argument("--calib-every", type=int, default=1, help="score the calibration split every N epochs")
    p.add_argument(
        "--select-epoch",
        choices=["last", "calib_auc"],
        default="last",
        help="keep the last epoch, or the scored epoch that ranks the calibration split best",
    )
    p.add_argument("--scale-p", type=float, default=0.0, help="share of batches shrunk before cropping")
    p.add_argument("--scale-min", type=float, default=0.5, help="smallest shrink factor")
    p.add_argument("--holdout", action="append", default=[], help="folder never trained on, scored at the end")
    p.add_argument(
        "--train-only",
        action="append",
        default=[],
        help="a source trained on in full, outside the split (the --data split and its validation stay as they were)",
    )
    p.add_argument(
        "--tiles",
        action="append",
        default=[],
        help="with --crop: a source of small images trained on as windows beside the crops (CIFAKE, multigen/small)",
    )
    p.add_argument("--tile-share", type=float, default=0.25, help="share of each batch that is --tiles")
    p.add_argument("--content-only", type=int, default=0, help="content baseline: shrink every image to this side")
    p.add_argument(
        "--match-jpeg",
        type=int,
        default=0,
        metavar="Q",
        help="one JPEG round trip at quality Q for every image whose file is not a JPEG (CIFAKE's are Q=75): "
        "compression history is then not a label when sources differ in it",
    )
    p.add_argument(
        "--resample-p",
        type=float,
        default=0.0,
        help="32x32: share of images, both labels, given the dcgan64 tiles' history (bilinear 2x, box back)",
    )
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("scan", help="classify images, folders and archives; no services needed")
    p.add_argument("paths", nargs="+", help="image files, folders (recursive), zip or tar archives")
    p.add_argument("--out", default="fakescope-out", help="output folder (default: fakescope-out)")
    p.add_argument("--checkpoint", help="checkpoint folder (default: $FAKESCOPE_CHECKPOINT or the shipped one)")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--no-overlays", action="store_true", help="skip GradCAM overlays (faster)")
    p.add_argument("--explain", action="store_true", help="name the artifacts of each fake (task2.json)")
    p.add_argument("--explain-backend", help="evidence (default) or vlm")
    p.add_argument("--max-pixels", type=int, default=40_000_000, help="refuse larger images")
    p.add_argument(
        "--image-time-limit",
        type=float,
        metavar="SECONDS",
        help="an image whose decoding takes longer gets an error and the scan goes on"
        " (default: $FAKESCOPE_IMAGE_TIME_LIMIT_S or 10; 0: none)",
    )
    _threshold_args(p, default="0.5")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_scan)

    p = sub.add_parser("evaluate", help="metrics (and robustness) on labelled CIFAKE-layout data")
    p.add_argument("--data", action="append", help="CIFAKE-layout folder or archive (repeatable)")
    p.add_argument("--checkpoint")
    p.add_argument("--route", help="for a routed folder (the default): which route's checkpoint (default: the first)")
    p.add_argument("--split", choices=["val", "calib"], help="only the checkpoint's held-out part of --data")
    p.add_argument("--limit", type=int, help="at most this many images (random, seeded)")
    p.add_argument("--robustness", action="store_true", help="add JPEG, noise, rescaling and FGSM rows")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", help="also write the report as JSON here")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser(
        "calibrate",
        help="refit the temperature on the checkpoint's calibration split, or (--target-fpr) print the "
        "operating thresholds a platform's own labelled images call for",
    )
    p.add_argument("--checkpoint", help="checkpoint folder (required unless --target-fpr: then the shipped one)")
    p.add_argument(
        "--target-fpr",
        type=float,
        help="print fake_threshold/real_threshold for --data (a REAL/FAKE folder, e.g. a feedback export) so that "
        "at most this share of its real images is called fake (and of its fakes called real); changes nothing",
    )
    p.add_argument("--route", help="for a routed folder: which route's checkpoint (default: the first)")
    p.add_argument("--data", action="append", help="the sources the checkpoint was trained on")
    p.add_argument(
        "--tta",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="mirror-image TTA on or off (default: on where the calibration split says it is more accurate)",
    )
    p.add_argument("--domain-images", type=int, default=20_000, help="training images the domain model is fitted on")
    p.add_argument("--batch-size", type=int, default=256, help="images per forward pass (smaller for full-size ones)")
    p.set_defaults(func=_cmd_calibrate)

    p = sub.add_parser("ensemble", help="combine trained checkpoints into one ensemble checkpoint")
    p.add_argument("members", nargs="+", help="checkpoint folders trained on the same split")
    p.add_argument("--out", required=True, help="checkpoint folder to write")
    p.add_argument("--weights", type=float, nargs="+", help="each member's share of the logit average (default equal)")
    p.set_defaults(func=_cmd_ensemble)

    p = sub.add_parser("keys", help="create, list and revoke tenants' API keys (in the service's database)")
    keys = p.add_subparsers(dest="keys_command", required=True)
    k = keys.add_parser("create", help="a new key for a tenant (created if new); printed once")
    k.add_argument("--tenant", required=True)
    k = keys.add_parser("list", help="every key's public prefix, tenant and dates (never the key)")
    k.add_argument("--tenant")
    k = keys.add_parser("revoke", help="revoke a key by the prefix `keys list` shows")
    k.add_argument("prefix")
    p.set_defaults(func=_cmd_keys)

    p = sub.add_parser("export-split", help="write one part of the train/val split as image files")
    _add_split_args(p)
    p.add_argument("--split", choices=["train", "val", "calib"], default="val")
    p.add_argument("--out", required=True)
    p.set_defaults(func=_cmd_export_split)

    api_help = " (API key: $FAKESCOPE_API_KEY or ~/.config/fakescope/client.json)"
    p = sub.add_parser("submit", help="send images to a fakescope service" + api_help)
    _add_api_arg(p)
    p.add_argument("paths", nargs="+", help="files, folders, zip/tar archives; or image URLs (https://...)")
    p.add_argument("--explain", action="store_true", help="explain the images classified fake")
    p.add_argument("--no-overlays", action="store_true", help="verdicts only: no GradCAM overlay PNGs")
    p.add_argument("--callback-url", help="the service POSTs here when the job finishes")
    p.add_argument("--idempotency-key", help="resubmitting with the same key resumes the same job")
    p.add_argument("--wait", action="store_true", help="wait for the job to finish, with a progress bar")
    p.add_argument("--out", help="when finished, write the scan files here (implies --wait)")
    _threshold_args(p, default="the tenant's")
    p.set_defaults(func=_cmd_submit)

    p = sub.add_parser("detect", help="check one image now, without a job (POST /v1/detect)" + api_help)
    _add_api_arg(p)
    p.add_argument("path", help="one image file, or its URL (https://...)")
    p.add_argument("--no-overlays", action="store_true", help="verdict only: no GradCAM overlay URL")
    _threshold_args(p, default="the tenant's")
    p.set_defaults(func=_cmd_detect)

    p = sub.add_parser(
        "operating-point", help="show the tenant's default thresholds, or set them with the options" + api_help
    )
    _add_api_arg(p)
    _threshold_args(p, default="0.5")
    p.set_defaults(func=_cmd_operating_point)

    p = sub.add_parser("feedback", help="label verdicts, and export the labelled images" + api_help)
    fsub = p.add_subparsers(dest="feedback_command", required=True)
    f = fsub.add_parser("give", help="label one classified image real or fake")
    _add_api_arg(f)
    f.add_argument("job")
    f.add_argument("position", type=int)
    f.add_argument("label", choices=["real", "fake"])
    f.add_argument("--note", help="why, in the reviewer's words")
    f.set_defaults(func=_cmd_feedback)
    f = fsub.add_parser("export", help="write every labelled image under DIR/REAL and DIR/FAKE")
    _add_api_arg(f)
    f.add_argument("out", help="folder to write (calibrate and train read it as it is)")
    f.set_defaults(func=_cmd_feedback)

    p = sub.add_parser("models", help="fine-tune, compare, promote and roll back detectors (admin keys)" + api_help)
    msub = p.add_subparsers(dest="models_command", required=True)
    m = msub.add_parser("train", help="fine-tune the promoted (or --base) version on labelled images, as a job")
    _add_api_arg(m)
    m.add_argument("source", help="REAL/ and FAKE/ folders the train workers can read, or s3://PREFIX in the bucket")
    m.add_argument("--base", help="version to start from (default: the promoted one; 'shipped': the shipped)")
    m.add_argument("--epochs", type=int, help="default: FAKESCOPE_MODELS_EPOCHS")
    m = msub.add_parser("list", help="every version: status, base, progress, gate")
    _add_api_arg(m)
    m = msub.add_parser("show", help="one version: lineage, progress, and the side-by-side comparison")
    _add_api_arg(m)
    m.add_argument("version")
    m = msub.add_parser("promote", help="make a candidate live (refused when the gate says it loses)")
    _add_api_arg(m)
    m.add_argument("version")
    m = msub.add_parser("shadow", help="let a candidate score a share of live traffic too, without answering")
    _add_api_arg(m)
    m.add_argument("version")
    m.add_argument("--stop", action="store_true", help="stop it shadowing")
    m = msub.add_parser("rollback", help="retire the promoted version; the one before it answers again")
    _add_api_arg(m)
    for m in msub.choices.values():
        m.set_defaults(func=_cmd_models)

    p = sub.add_parser("status", help="a job's state and counts" + api_help)
    _add_api_arg(p)
    p.add_argument("job")
    p.add_argument("--wait", action="store_true")
    p.set_defaults(func=_cmd_status)

    p = sub.add_parser("results", help="write a job's results as fakescope scan does" + api_help)
    _add_api_arg(p)
    p.add_argument("job")
    p.add_argument("--out", required=True)
    p.add_argument("--wait", action="store_true", help="wait for the job to finish first")
    p.add_argument("--no-thumbnails", action="store_true", help="skip downloading originals for thumbnails")
    p.set_defaults(func=_cmd_results)

    p = sub.add_parser("cancel", help="cancel a job" + api_help)
    _add_api_arg(p)
    p.add_argument("job")
    p.set_defaults(func=_cmd_cancel)

    for name, (_, help_text) in DELEGATED.items():
        sub.add_parser(name, help=f"{help_text} (see 'fakescope {name} --help')", add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in DELEGATED:
        import importlib

        module = importlib.import_module(DELEGATED[argv[0]][0])
        return int(module.main(argv[1:]))
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    if args.command in ("submit", "detect", "feedback", "models", "status", "results", "cancel"):
        from fakescope.client import ApiError

        try:
            return int(args.func(args))
        except (ApiError, ValueError, TimeoutError) as e:
            print(f"fakescope {args.command}: {e}", file=sys.stderr)
            return 2
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
