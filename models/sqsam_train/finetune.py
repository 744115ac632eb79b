"""Fine-tune the shipped model on one project's own masks, on a CPU, and export an ONNX model.

    sqsam finetune ../shared/data/project/CamVid-cars/train --minutes 10 --threads 2 [--data ../shared/data]
    python -m sqsam_train.finetune annotations.json --out project.onnx      # the same, without the CLI

Input: a COCO instances JSON, a Label Studio JSON export or an ``images/`` + ``masks/`` folder
(:mod:`sqsam_core.datasets`). The run:

1. holds out part of the annotated images (:func:`sqsam_core.datasets.holdout_split`, by image,
   deterministic by name; ``--holdout``) and trains on the rest;
2. starts from the shipped model's float16 weights (:data:`BASE_WEIGHTS`) and trains with the
   training recipe's own step (``train.train_step``: RITM-style corrective clicks, damaged
   previous masks, and the base's own convention for a single click: hypotheses with meanings,
   or best-of-K for a base without them, such as v22) at a small learning rate, cosine over ``--minutes`` of wall
   clock (or over ``--steps``). With ``--data`` a share of the general training sets
   (``../shared/data/train``) is mixed in, which limits forgetting. ``--members`` (default
   :data:`~sqsam_train.finetune_options.DEFAULT_MEMBERS`) such runs, seeds ``--seed``,
   ``--seed`` + 1, ..., each on an equal share of the budget, are averaged in weight space (a
   "model soup": less run-to-run spread, fewer clicks; docs/finetune.md);
3. mixes the fine-tuned weights with the base's, ``base + m * (tuned - base)`` for each ``m`` of
   ``--mix`` (default 0.5 and 1; weight-space interpolation keeps what the base knows while the
   project's gain stays, see :func:`interpolate_weights`), exports each under the model contract
   (``model_version`` ``<base>+ft.<id>``, or ``--version``) and scores base and candidates on the
   held-out images with ``sqsam eval``'s protocol (simulated clicks, zoom-in, edge refinement):
   NoC@85, NoC@90, mIoU@1, and the change against the base object by object
   (:func:`paired_change`). The candidate is the most fine-tuned mix that the refusal rule
   accepts, unless a less fine-tuned one needs clearly fewer clicks (:func:`choose_mix`);
4. writes ``--out`` only when the candidate is not worse than the base, unless ``--force``
   (:func:`is_worse`: not clearly more clicks per object at 85 % and 90 % together, and not a clearly
   worse first click, by 90 % bootstrap intervals over the held-out objects).

Resumable: ``RUN_DIR/last.ckpt`` (weights, optimiser, step, RNG states, seconds trained) is
written every ``--ckpt-minutes`` and on SIGTERM; the same command continues exactly from it.
Exit codes: 0 model written, 3 candidate worse than the base (nothing written), 2 bad input,
130 interrupted (checkpoint kept). ``RUN_DIR/report.json`` holds both scores and the costs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import resource
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import torch

import sqsam_core.weights
from sqsam_core import datasets
from sqsam_core.contract import DEFAULT_CLICK_RADIUS, DEFAULT_INPUT_SIZE
from sqsam_core.errors import SqsamError
from sqsam_train import train
from sqsam_train.average import average_states
from sqsam_train.data import MAX_SIDE, MIN_OBJECT_PIXELS, SET_WEIGHTS, Entry, SampleMaker, load_training_data
from sqsam_train.export import export, spec_for
from sqsam_train.finetune_options import Recipe, add_arguments
from sqsam_train.network import build_network, has_refine_stage, read_weights

#: The shipped model's float16 weights (``export --weights-out``), packaged beside its ONNX file
#: (``sqsam_core/weights/squeezesam.pt``): where every fine-tune starts.
BASE_WEIGHTS = Path(os.environ.get("SQSAM_BASE_WEIGHTS")
                    or Path(sqsam_core.weights.__file__).with_name("squeezesam.pt"))
PROJECT_SET = "project"
#: Confidence of the refusal rule's paired intervals (:func:`is_worse`).
REFUSAL_CONFIDENCE = 0.90
EXIT_WRITTEN, EXIT_WORSE, EXIT_INTERRUPTED = 0, 3, 130


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def to_entries(images: list[datasets.AnnotatedImage]) -> list[Entry]:
    """Training entries: each image downscaled to at most ``data.MAX_SIDE`` (as the general sets
    are cached), objects smaller than ``data.MIN_OBJECT_PIXELS`` there left out."""
    entries = []
    for item in images:
        rgb = item.load()
        h, w = rgb.shape[:2]
        scale = min(1.0, MAX_SIDE / max(h, w))
        size = (round(w * scale), round(h * scale))
        small = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA) if scale < 1 else rgb
        entry = Entry(f"{PROJECT_SET}/{item.name}", np.ascontiguousarray(small))
        for obj in item.objects:
            mask = obj.mask.astype(np.float32)
            mask = cv2.resize(mask, size, interpolation=cv2.INTER_AREA) > 0.5 if scale < 1 else obj.mask
            if obj.ignore is not None:
                mask = mask & ~(cv2.resize(obj.ignore.astype(np.float32), size) > 0.5 if scale < 1 else obj.ignore)
            if mask.sum() >= MIN_OBJECT_PIXELS:
                entry.masks.append(mask)
        if entry.masks:
            entries.append(entry)
    return entries


def sample_maker(project: list[Entry], general: dict | None, recipe: Recipe, input_size: int) -> SampleMaker:
    """Samples from the project (all of them, or ``recipe.project_share`` with the general sets)."""
    sets = {PROJECT_SET: project}
    weights = {PROJECT_SET: 1.0}
    salient = 0.0
    if general:
        total = sum(SET_WEIGHTS.values())
        for name, (train_entries, _val) in general.items():
            sets[name] = train_entries
            weights[name] = (1 - recipe.project_share) * SET_WEIGHTS[name] / total
        weights[PROJECT_SET] = recipe.project_share
        salient = recipe.salient_share
    return SampleMaker(sets, crop=recipe.crop, input_size=input_size, salient_share=salient, set_weights=weights)


# --------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------


def score(model_path: Path, held_out: list[datasets.AnnotatedImage], threads: int, max_clicks: int = 20) -> dict:
    """``sqsam eval``'s protocol on the held-out images (no zero-click pass), each object clicked
    until its IoU reaches 0.90: NoC@85, NoC@90, NoF and mIoU@1 as ``sqsam eval`` gives them."""
    from sqsam_core.evaluation import THRESHOLDS, evaluate
    from sqsam_core.predictor import SqueezeSAM

    model = SqueezeSAM(model_path, threads=threads)
    report = evaluate(model, datasets.iter_eval_objects(held_out), max_clicks=max_clicks, zero_click=False,
                      stop_iou=max(THRESHOLDS))
    report["model_version"] = model.spec.model_version
    return report


def summary(report: dict) -> dict:
    return {"model_version": report.get("model_version"), "objects": report["objects"],
            "NoC@85": round(report["NoC@85"], 3), "NoC@90": round(report["NoC@90"], 3),
            "mIoU@1": round(report["mIoU@k"][0], 4), "NoF@90": report["NoF@90"]}


def clicks(report: dict) -> tuple[float, float]:
    """How a model ranks on held-out images, lower is better: (NoC@85 + NoC@90, -mIoU@1)."""
    return round(report["NoC@85"] + report["NoC@90"], 6), -report["mIoU@1"]


def object_clicks(report: dict) -> np.ndarray:
    """Per scored object, clicks to 85 % IoU plus clicks to 90 % (``evaluation.THRESHOLDS``;
    ``max_clicks`` for a level never reached), from :func:`score`'s ``per_object`` IoU curves;
    shape ``(N,)``. Their mean is ``clicks(report)[0]``."""
    from sqsam_core.evaluation import THRESHOLDS, clicks_to_reach

    limit = report["max_clicks"]
    return np.array([sum(clicks_to_reach(o["ious"], t, limit) for t in THRESHOLDS) for o in report["per_object"]],
                    float)


def paired_change(candidate: dict, base: dict, confidence: float = REFUSAL_CONFIDENCE) -> dict:
    """The candidate minus the base, object by object on the same held-out objects (two
    :func:`score` reports): the mean change of clicks per object (NoC@85 + NoC@90; negative is
    better) and of the first click's IoU (positive is better), each with its ``confidence``
    bootstrap interval over objects (:func:`sqsam_train.compare.mean_interval`)."""
    from sqsam_train.compare import mean_interval

    names = [o["name"] for o in base["per_object"]]
    if [o["name"] for o in candidate["per_object"]] != names:
        raise ValueError("the two reports were not scored on the same objects")
    click_change = object_clicks(candidate) - object_clicks(base)
    first_change = np.array([c["ious"][0] - b["ious"][0] for c, b in zip(candidate["per_object"], base["per_object"])])
    return {"objects": len(names), "confidence": confidence,
            "clicks": round(float(click_change.mean()), 3),
            "clicks_interval": [round(v, 3) for v in mean_interval(click_change, confidence)],
            "first_iou": round(float(first_change.mean()), 4),
            "first_iou_interval": [round(v, 4) for v in mean_interval(first_change, confidence)]}


def is_worse(change: dict) -> bool:
    """The refusal rule, on :func:`paired_change`: the candidate is worse when it clearly needs more
    clicks per object (NoC@85 + NoC@90: the whole interval above 0) or clearly loses on the first
    click (IoU@1: the whole interval below 0). Differences within the interval are what the choice
    of held-out objects alone moves (on 50 objects, a few tenths of a click); they are not refusals."""
    return change["clicks_interval"][0] > 0 or change["first_iou_interval"][1] < 0


def choose_mix(mixes: list[dict]) -> dict:
    """The candidate among scored mixes (each ``{"mix", "scored", "worse", ...}``, ``scored`` a
    :func:`score` report on the same held-out objects): the most fine-tuned mix (largest ``mix``)
    that the refusal rule accepts, unless another accepted mix needs clearly fewer clicks than it,
    object by object (:func:`paired_change`: the whole interval below 0); among several such, the
    one with the fewest clicks. All refused: the mix with the fewest clicks (written only with
    ``--force``).

    Why the most fine-tuned mix by default: a held-out share of a project (a few dozen objects)
    rarely separates two mixes (a tenth or two of a click), and ranking by the raw mean then
    picks between them by chance. The fine-tune exists to specialise, so the held-out images
    decide only where they can: a refusal against the base, or a clear preference for less
    specialisation."""
    accepted = [m for m in mixes if not m["worse"]]
    if not accepted:
        return min(mixes, key=clicks)
    chosen = max(accepted, key=lambda m: m["mix"])
    clearly_fewer = [m for m in accepted
                     if m is not chosen and paired_change(m["scored"], chosen["scored"])["clicks_interval"][1] < 0]
    return min(clearly_fewer, key=clicks) if clearly_fewer else chosen


def format_change(change: dict) -> str:
    """``paired_change`` in one phrase, for the log."""
    (c_low, c_high), (f_low, f_high) = change["clicks_interval"], change["first_iou_interval"]
    return (f"against the base, per object: clicks {change['clicks']:+.2f} [{c_low:+.2f}, {c_high:+.2f}], "
            f"first-click IoU {change['first_iou']:+.3f} [{f_low:+.3f}, {f_high:+.3f}], "
            f"{round(100 * change['confidence'])} % intervals over {change['objects']} objects")


def interpolate_weights(base: dict[str, torch.Tensor], tuned: dict[str, torch.Tensor],
                        mix: float) -> dict[str, torch.Tensor]:
    """``base + mix * (tuned - base)`` for every floating-point tensor (BatchNorm statistics too),
    in ``tuned``'s dtype; other tensors (batch counters) as ``tuned`` has them. ``mix`` 1 is the
    fine-tuned model, 0 the base. Interpolating a fine-tune with its start (WiSE-FT, Wortsman et
    al. 2022) keeps most of the gain on the new data and loses less elsewhere; on CamVid-cars it
    removed the first-click spills over whole rows of cars that a short fine-tune learns from
    merged masks (docs/finetune.md)."""
    out = {}
    for key, value in tuned.items():
        if value.is_floating_point() and key in base:
            start = base[key].to(torch.float32)
            out[key] = (start + mix * (value.to(torch.float32) - start)).to(value.dtype)
        else:
            out[key] = value
    return out


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


def run_id(found: datasets.Annotations, args) -> str:
    """A short id of the annotations and the options that shape training (resume checks it; the
    budget, ``--minutes`` / ``--steps``, is not part of it: a resumed run may be given more)."""
    content = [(im.name, len(im.objects), [int(o.mask.sum()) for o in im.objects]) for im in found.images]
    key = json.dumps([content, args.seed, args.holdout, str(args.data), vars(args.recipe)]
                     + ([args.members] if args.members > 1 else []),
                     default=str)
    return hashlib.sha1(key.encode()).hexdigest()[:6]


def base_spec(base_model: Path):
    """The base model's :class:`~sqsam_core.contract.ModelSpec`: its version, and what its hypotheses
    mean, which the fine-tuned model keeps (a best-of-K base stays best-of-K: the runtime keeps
    choosing a single click's mask by the IoU head)."""
    from sqsam_core.predictor import OnnxBackend

    return OnnxBackend(base_model, threads=1).spec


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m sqsam_train.finetune", description=__doc__.split("\n")[0])
    add_arguments(p)
    return p.parse_args(argv)


class Interrupted(Exception):
    pass


def member_budget(options) -> SimpleNamespace:
    """One member's share of the run's budget: ``--steps`` and ``--minutes`` split evenly over ``--members``."""
    return SimpleNamespace(recipe=options.recipe, train_args=options.train_args, ckpt_minutes=options.ckpt_minutes,
                           steps=-(-options.steps // options.members) if options.steps else None,
                           minutes=options.minutes / options.members)


def train_for(net, optimizer, maker: SampleMaker, rng: np.random.Generator, folder: Path, options,
              state: dict | None, progress: bool, label: str = "finetune") -> dict:
    """Train until ``options.steps`` or ``options.minutes`` is spent; checkpoint ``folder/last.ckpt``,
    learning curve ``folder/log.jsonl``. Returns ``{"steps", "seconds"}``. Raises
    :class:`Interrupted` (after a checkpoint) on SIGTERM or Ctrl-C."""
    from tqdm import tqdm

    folder.mkdir(parents=True, exist_ok=True)
    last = folder / "last.ckpt"
    step = state["step"] if state else 0
    elapsed_before = state.get("elapsed", 0.0) if state else 0.0
    budget = None if options.steps else options.minutes * 60
    total_steps = options.steps or 10**9
    started = last_save = time.time()
    stop = threading.Event()

    def elapsed() -> float:
        return elapsed_before + time.time() - started

    handlers = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            handlers[sig] = signal.signal(sig, lambda *_: stop.set())
    bar = tqdm(total=options.steps or round(budget),
               initial=step if options.steps else round(min(elapsed_before, budget)),
               desc=label, unit="step" if options.steps else "s", disable=not progress, dynamic_ncols=True,
               mininterval=5)
    log = (folder / "log.jsonl").open("a")
    running: dict[str, float] = {}
    try:
        while step < total_steps and (budget is None or elapsed() < budget) and not stop.is_set():
            progress_share = elapsed() / budget if budget else None
            factor = train.learning_rate_factor(step, total_steps, options.recipe.warmup, "cosine", progress_share)
            for group in optimizer.param_groups:
                group["lr"] = group["base_lr"] * factor
            before = elapsed()
            samples = [maker.sample(rng) for _ in range(options.recipe.batch)]
            metrics = train.train_step(net, optimizer, samples, rng, options.train_args, "cpu")
            step += 1
            for k, v in metrics.items():
                running[k] = 0.9 * running.get(k, v) + 0.1 * v
            bar.update(1 if options.steps else round(elapsed()) - round(before))
            bar.set_postfix(step=step, loss=f"{running['loss']:.3f}", refresh=False)
            if step % 10 == 0:
                log.write(json.dumps({"step": step, "elapsed": round(elapsed(), 1), "lr": options.recipe.lr * factor,
                                      **{k: round(v, 4) for k, v in running.items()}}) + "\n")
                log.flush()
            if time.time() - last_save > options.ckpt_minutes * 60:
                train.save_checkpoint(last, net, optimizer, step, rng, options.train_args, elapsed())
                last_save = time.time()
        train.save_checkpoint(last, net, optimizer, step, rng, options.train_args, elapsed())
    finally:
        bar.close()
        log.close()
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    if stop.is_set():
        raise Interrupted(f"interrupted at step {step}; rerun the same command to continue from {last}")
    return {"steps": step, "seconds": round(elapsed(), 1)}


def member_dir(run_dir: Path, k: int) -> Path:
    """Where member ``k`` keeps its checkpoint and learning curve: the run folder itself for the
    first (a one-member run is laid out as before), ``member<k>/`` in it for the others."""
    return run_dir if k == 0 else run_dir / f"member{k}"


def train_member(net, weights: dict, maker: SampleMaker, run_dir: Path, args, k: int, log) -> tuple[dict, dict]:
    """Fine-tune member ``k`` of ``args.members`` from the base ``weights`` with seed ``args.seed + k``
    on its share of the budget (:func:`member_budget`), resuming from its checkpoint when there is
    one. Returns its weights (a detached copy) and ``{"steps", "seconds"}``."""
    net.load_weights(weights)
    optimizer = train.make_optimizer(net, args.train_args)
    seed = args.seed + k
    rng = np.random.default_rng(seed)
    random.seed(seed)
    torch.manual_seed(seed)
    folder = member_dir(run_dir, k)
    last = folder / "last.ckpt"
    state = torch.load(last, map_location="cpu", weights_only=False) if last.exists() else None
    if state:
        train.restore_checkpoint(state, net, optimizer, rng)
        log(f"resumed from {last} at step {state['step']} ({state.get('elapsed', 0) / 60:.1f} min trained)")
    label = "finetune" if args.members == 1 else f"finetune {k + 1}/{args.members}"
    trained = train_for(net, optimizer, maker, rng, folder, member_budget(args), state,
                        not args.no_progress, label)
    return {name: value.detach().clone() for name, value in net.state_dict().items()}, trained


def finetune(args, found: datasets.Annotations | None = None, log=print) -> int:
    """The whole run (module docstring); returns the exit code. ``found``: annotations already read."""
    started = time.time()
    if args.nice > 0:
        os.nice(args.nice)
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    args.recipe = Recipe(lr=args.lr, batch=args.batch, crop=args.crop, amp=args.amp)
    if found is None:
        found = datasets.read_annotations(args.source, images_dir=args.images)
    for reason in found.skipped:
        log(f"skipped: {reason}")
    train_images, held_out = datasets.holdout_split(found.images, args.holdout)
    if not held_out:
        raise SqsamError(f"{args.source}: {len(found.images)} annotated image(s); at least 2 are needed "
                         f"(one to train on, one to score on)")
    shortid = run_id(found, args)
    base_model = Path(args.base_model) if args.base_model else _bundled_model()
    base_model_spec = base_spec(base_model)
    version = args.version or f"{base_model_spec.model_version}+ft.{shortid}"
    run_dir = Path(args.run_dir) if args.run_dir else Path("sqsam-finetune") / shortid
    out = Path(args.out) if args.out else Path(f"{version}.onnx")
    run_dir.mkdir(parents=True, exist_ok=True)
    config = {"source": str(Path(args.source).resolve()), "id": shortid, "version": version}
    config_path = run_dir / "finetune.json"
    if config_path.exists() and (run_dir / "last.ckpt").exists():
        previous = json.loads(config_path.read_text())
        if previous.get("id") != shortid:
            raise SqsamError(f"{run_dir} holds a run on other annotations or options (id {previous.get('id')}, "
                             f"this one {shortid}); give another --run-dir")
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    log(f"{found.kind}: {found.num_objects} objects on {len(found.images)} images; training on "
        f"{len(train_images)} images, scoring on {len(held_out)} held-out images "
        f"({sum(len(i.objects) for i in held_out)} objects); run {run_dir}")

    project = to_entries(train_images)
    if not project:
        raise SqsamError(f"{args.source}: no training object of at least {MIN_OBJECT_PIXELS} pixels")
    general = load_training_data(Path(args.data), cache=run_dir / "general-cache.pkl") if args.data else None
    maker = sample_maker(project, general, args.recipe, DEFAULT_INPUT_SIZE)

    weights_path = Path(args.base_weights) if args.base_weights else BASE_WEIGHTS
    if not weights_path.is_file():
        raise SqsamError(f"the weights to start from are not at {weights_path}: give --base-weights or set "
                         f"SQSAM_BASE_WEIGHTS (models/weights/squeezesam.pt in the source tree)")
    weights = read_weights(weights_path)
    net = build_network(pretrained=None, refine=has_refine_stage(weights))
    args.train_args = SimpleNamespace(crop=args.recipe.crop, click_radius=DEFAULT_CLICK_RADIUS, amp=args.recipe.amp,
                                      corrupt_share=args.recipe.corrupt_share, spill_share=0.0, boundary_weight=0.0,
                                      coarse_band=0, lr=args.recipe.lr, backbone_lr_scale=args.recipe.backbone_lr_scale,
                                      seed=args.seed, source=str(args.source),
                                      hypotheses=base_model_spec.hypotheses)
    members = []
    trained = {"steps": 0, "seconds": 0.0}
    for k in range(args.members):
        try:
            tuned_member, member_trained = train_member(net, weights, maker, run_dir, args, k, log)
        except Interrupted as exc:
            log(str(exc))
            return EXIT_INTERRUPTED
        members.append(tuned_member)
        trained = {key: trained[key] + member_trained[key] for key in trained}
    log(f"trained {trained['steps']} steps in {trained['seconds'] / 60:.1f} min"
        + (f" ({args.members} members, averaged)" if args.members > 1 else ""))

    base_report = _cached_score(run_dir / "base-score.json", base_model, held_out, args)
    tuned = average_states(members)  # one member: its own weights
    mixes = []
    for mix in args.mix:
        net.load_state_dict(interpolate_weights(weights, tuned, mix))
        path = run_dir / f"candidate-mix{mix:g}.onnx"
        export(net.eval(), path, spec_for(net, version, hypotheses=base_model_spec.hypotheses))
        scored = score(path, held_out, args.threads, args.max_clicks)
        change = paired_change(scored, base_report)
        mixes.append({"mix": mix, "path": path, "scored": scored, **summary(scored), "change": change,
                      "worse": is_worse(change)})
        log(f"held-out mix {mix:g}: NoC@85 {mixes[-1]['NoC@85']:.2f}  NoC@90 {mixes[-1]['NoC@90']:.2f}  "
            f"mIoU@1 {mixes[-1]['mIoU@1']:.3f}  ({format_change(change)})")
    chosen = choose_mix(mixes)
    candidate = chosen["path"]
    base = summary(base_report)
    cand = summary(chosen["scored"])
    worse = chosen["worse"]
    written = not worse or args.force
    if written:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        shutil.copyfile(candidate, tmp)
        os.replace(tmp, out)
    report = {"id": shortid, "source": config["source"], "kind": found.kind, "model_version": version,
              "images": len(found.images), "objects": found.num_objects, "skipped": found.skipped,
              "train_images": len(train_images), "held_out_images": [im.name for im in held_out],
              "base": base, "candidate": cand, "mix": chosen["mix"], "change": chosen["change"],
              "mixes": [{k: v for k, v in m.items() if k not in ("path", "scored")} for m in mixes],
              "worse_than_base": worse, "written": str(out) if written else None,
              "steps": trained["steps"], "train_minutes": round(trained["seconds"] / 60, 2),
              "total_minutes": round((time.time() - started) / 60, 2), "threads": args.threads, "members": args.members,
              "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
              "mixed_general_data": bool(general)}
    text = json.dumps(report, indent=2) + "\n"
    (run_dir / "report.json").write_text(text)
    if args.json:
        Path(args.json).write_text(text)
    for name, s in (("base", base), (f"mix {chosen['mix']:g}", cand)):
        log(f"held-out {name:9s} {s['model_version']}: NoC@85 {s['NoC@85']:.2f}  NoC@90 {s['NoC@90']:.2f}  "
            f"mIoU@1 {s['mIoU@1']:.3f}  ({s['objects']} objects)")
    log(f"{report['total_minutes']:.1f} min in all, peak RSS {report['peak_rss_mb']:.0f} MB")
    if worse and not args.force:
        log("not written: the candidate is worse than the base on the held-out images "
            f"({format_change(chosen['change'])}; --force writes it anyway)")
        return EXIT_WORSE
    log(f"wrote {out} ({version})" + (" although it is worse than the base (--force)" if worse else ""))
    return EXIT_WRITTEN


def _cached_score(path: Path, model: Path, held_out, args) -> dict:
    """The base's held-out report, kept in the run folder (a resumed run does not score it again)."""
    digest = hashlib.sha256(model.read_bytes()).hexdigest()
    key = [digest, [im.name for im in held_out], args.max_clicks]
    if path.exists():
        cached = json.loads(path.read_text())
        if cached.get("key") == key:
            return cached["report"]
    report = score(model, held_out, args.threads, args.max_clicks)
    path.write_text(json.dumps({"key": key, "report": report}))
    return report


def _bundled_model() -> Path:
    from sqsam_core.predictor import default_model_path

    return Path(default_model_path())


def exit_with_parent() -> None:
    """Started by the Label Studio backend (``SQSAM_EXIT_WITH_PARENT`` = its pid): on Linux, ask the
    kernel to kill this run when the backend's process ends (``PR_SET_PDEATHSIG``), so that a run the
    backend paused for clicks (SIGSTOP) cannot stay stopped for ever; if the backend is already
    gone, exit at once. Elsewhere, nothing."""
    parent = os.environ.get("SQSAM_EXIT_WITH_PARENT")
    if not parent or not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    try:
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    if str(os.getppid()) != parent:
        sys.exit(EXIT_INTERRUPTED)


def main(argv=None) -> int:
    exit_with_parent()
    args = parse_args(argv)
    try:
        return finetune(args)
    except SqsamError as exc:
        print(f"sqsam: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
