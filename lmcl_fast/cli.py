"""The `lmcl` command line: make-synthetic, train, ablate, eval, probe, predict, bench, demo (`lmcl <cmd> -h`)."""
from __future__ import annotations

import argparse
import errno
import json
import os
import sys
import time


def _cmd_make_synthetic(args) -> int:
    from .data import make_synthetic

    path = make_synthetic(args.src, args.out, levels=args.levels, seed=args.seed, max_images=args.max_images,
                          size=args.size, distortions=args.distortions)
    print(path)
    return 0


def _train_config(args):
    """The configuration of train / ablate / probe: --config FILE (or, resuming, the run's own config.json),
    then --preset, then the options given."""
    from .core.config import TrainConfig, config_from_args
    from .core.presets import preset

    if getattr(args, "auto_resume", False):
        # Resume when --out-dir already holds a run (a restarted or requeued job), else start it.
        out_dir = getattr(args, "out_dir", None) or (TrainConfig.from_json(args.config).out_dir if args.config
                                                     else TrainConfig().out_dir)
        args.resume = os.path.isfile(os.path.join(out_dir, "config.json"))
    base = TrainConfig.from_json(args.config) if args.config else None
    if base is None and getattr(args, "resume", False):
        # Resuming: start from the run's own config; options given on the command line override it
        # (the model-shaping ones must still match the checkpoints, see SHAPE_FIELDS).
        out_dir = getattr(args, "out_dir", TrainConfig().out_dir)
        saved = os.path.join(out_dir, "config.json")
        if not os.path.isfile(saved):
            raise SystemExit(f"lmcl train: --resume: no {saved} (nothing to resume in --out-dir {out_dir})")
        base = TrainConfig.from_json(saved)
    if args.preset:
        base = (base or TrainConfig()).replace(**preset(args.preset))
    return config_from_args(args, base)


# A full disk, a full quota or a read-only folder: reported in one line, never a traceback.
_OUT_OF_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


def _cmd_train(args) -> int:
    from .core.dist import init_distributed, shutdown
    from .experiment import train_splits
    from .train import CheckpointWriteError

    cfg = _train_config(args)
    if not cfg.root or not cfg.csv:
        raise SystemExit("lmcl train: --root and --csv are required (or --config FILE / --resume)")
    # Under torchrun (WORLD_SIZE > 1): one process per device, DDP over the default process group.
    dist = init_distributed(cfg.device)
    try:
        summary = train_splits(cfg, resume=args.resume, max_epochs=args.stop_after, dist=dist,
                               progress=not args.no_progress)
    except CheckpointWriteError as e:
        print(f"lmcl {e}", file=sys.stderr)
        return 1
    except OSError as e:
        if e.errno not in _OUT_OF_SPACE_ERRNOS:
            raise
        # Logs, config.json, metrics: a full disk or read-only folder outside the checkpoint write.
        print(f"lmcl train: cannot write {e.filename or cfg.out_dir}: {e.strerror}; training stopped and the "
              f"last complete checkpoint under {cfg.out_dir} (if any) is kept: continue with --resume",
              file=sys.stderr)
        return 1
    finally:
        shutdown()
    if summary is not None and dist.is_main:
        print(summary["table"])
        print(f"results: {os.path.join(cfg.out_dir, 'metrics.json')}")
    return 0


def _cmd_ablate(args) -> int:
    from .ablate import parse_variants, run_ablation

    cfg = _train_config(args)
    if not cfg.root or not cfg.csv:
        raise SystemExit("lmcl ablate: --root and --csv are required (or --config FILE)")
    try:
        variants = parse_variants(args.variants)
    except ValueError as e:
        raise SystemExit(str(e)) from None
    report = run_ablation(cfg, variants, progress=not args.no_progress, max_runs=args.stop_after_runs)
    print(report["table"])
    print(f"results: {os.path.join(cfg.out_dir, 'ablation.json')}")
    return 0


def _cmd_probe(args) -> int:
    from .probe import run_probe

    cfg = _train_config(args)
    if args.path is None and not (cfg.root and cfg.csv):
        raise SystemExit("lmcl probe: give a checkpoint / run folder, or --weights FILE (or none) with --root "
                         "and --csv")
    if args.path is not None and bool(cfg.root) != bool(cfg.csv):
        raise SystemExit("lmcl probe: give both --root and --csv to probe a checkpoint on another dataset")
    out = args.out or (os.path.join(args.path if os.path.isdir(args.path) else os.path.dirname(args.path), "probe")
                       if args.path else os.path.join(cfg.out_dir, "probe"))
    try:
        summary = run_probe(cfg, args.path, out, data_override=bool(cfg.root))
    except ValueError as e:
        raise SystemExit(f"lmcl {e}") from None
    print(summary["table"])
    print(f"results: {os.path.join(out, 'metrics.json')}")
    return 0


def _cmd_eval(args) -> int:
    from .eval.runner import evaluate_checkpoint, json_safe, split_checkpoints, summarize_results, write_result

    paths = split_checkpoints(args.path) if os.path.isdir(args.path) else [args.path]
    if not paths:
        raise SystemExit(f"lmcl eval: no split_*/last.pt checkpoints under {args.path}")
    results = []
    for p in paths:
        res = evaluate_checkpoint(p, args.device, args.root, args.csv, args.lower_is_better, args.num_workers)
        m = res["metrics"]
        print(f"{p}: SRCC {m['srcc']:.4f}  PLCC {m['plcc']:.4f}  ({m['n']} images)", file=sys.stderr)
        results.append(res)
    out = args.out or (args.path if os.path.isdir(args.path) else os.path.join(os.path.dirname(args.path), "eval"))
    if len(results) == 1 and not os.path.isdir(args.path):
        write_result(out, results[0], os.path.basename(args.path))
        print(json.dumps(json_safe(results[0]["metrics"]), indent=2))
    else:
        print(summarize_results(out, results, os.path.basename(os.path.normpath(args.path)))["table"])
    print(f"results: {os.path.join(out, 'metrics.json')}")
    return 0


def _cmd_predict(args) -> int:
    from .core.metric import load_metric

    metric = load_metric(args.checkpoint, args.device)
    failed = 0
    for path, score, err in metric.file_scores(args.images):
        if err is None:
            print(f"{score:.4f}\t{path}")
        else:
            failed += 1
            print(f"lmcl predict: cannot read {path}: {err}", file=sys.stderr)
    return 1 if failed else 0


def _cmd_score(args) -> int:
    from .score import main_score

    return main_score(args)


def _cmd_prepare(args) -> int:
    from .data.recipes import prepare

    out = args.out or f"{args.name.lower()}{f'_{args.split}' if args.split else ''}.csv"
    rec = prepare(args.name, args.root, out, args.split)
    counts = "".join(f", {k} {v}" for k, v in rec.get("split_counts", {}).items())
    print(f"lmcl prepare: {rec['rows']} images{counts} -> {out} (read {', '.join(rec['read'])}; record in "
          f"{out}.json)", file=sys.stderr)
    flag = " --lower-is-better" if rec["lower_is_better"] else ""
    print(f"train with: lmcl train --root {args.root} --csv {out}{flag}", file=sys.stderr)
    return 0


def _cmd_export(args) -> int:
    from .core.metric import export_metric

    export_metric(args.checkpoint, args.out)
    print(f"lmcl export: {args.out} ({os.path.getsize(args.out) / 1e6:.1f} MB; read it with "
          f"lmcl_fast.load_metric or lmcl score --checkpoint)", file=sys.stderr)
    return 0


def _cmd_bench(args) -> int:
    from .bench_quick import run_quick_bench

    print(run_quick_bench(args.device, args.repeats))
    return 0


def _cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(photos=args.photos, out=args.out, device=args.device, progress=not args.no_progress,
             max_images=args.max_images, epochs=args.epochs, threads=args.threads)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .ablate import VARIANT_HELP
    from .core.config import add_config_args
    from .core.presets import PRESETS

    PRESET_NAMES = tuple(PRESETS)

    p = argparse.ArgumentParser(prog="lmcl", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("make-synthetic", help="make a labelled synthetic IQA set from pristine photos")
    s.add_argument("src", help="folder of pristine photos (searched recursively)")
    s.add_argument("out", help="output folder (images + CSV)")
    s.add_argument("--levels", type=int, default=5, help="distortion levels per type (default 5)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--max-images", type=int, default=None, help="use at most this many photos")
    s.add_argument("--size", type=int, default=None, help="resize the photos to this side first")
    s.add_argument("--distortions", default="basic", choices=("basic", "kadid"),
                   help="distortion catalogue: basic (5 types, the demo's) or kadid (the 25 KADID-10k types)")
    s.set_defaults(func=_cmd_make_synthetic)

    s = sub.add_parser("train", help="train (and evaluate) on K content-aware splits",
                       description="Train on --splits K random content-aware splits of --root/--csv, evaluate "
                                   "each on its test part and report the median and spread. Writes "
                                   "OUT_DIR/config.json, OUT_DIR/split_XX/{config.json,last.pt,metrics.json,...} "
                                   "and OUT_DIR/{metrics.json,scatter.png}.")
    s.add_argument("--config", help="JSON config file (as written next to the checkpoints) to start from")
    s.add_argument("--resume", action="store_true",
                   help="continue the run in --out-dir from its split_XX/last.pt checkpoints")
    s.add_argument("--preset", choices=PRESET_NAMES, help="a named configuration (options given override it)")
    s.add_argument("--auto-resume", action="store_true",
                   help="--resume when --out-dir already holds a run, else start a new one (for jobs that a "
                        "scheduler or torchrun restarts with the same command)")
    s.add_argument("--stop-after", type=int, default=None, metavar="EPOCHS",
                   help="stop after this many epochs in this invocation (resume later with --resume)")
    s.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_config_args(s)
    s.set_defaults(func=_cmd_train)

    s = sub.add_parser("ablate", help="train named variants of a config on the same K splits; paired tests",
                       description="Train and evaluate each variant (the full method and ablations of its parts) "
                                   "on the same --splits K content-aware splits with the same seeds, then report per "
                                   "variant the median and range of SRCC/PLCC over the splits and, against the full "
                                   "method, the per-split differences with a Wilcoxon signed-rank and a sign test. "
                                   "Writes OUT_DIR/<variant>/split_XX/ and OUT_DIR/ablation.{json,md,png}; running "
                                   "it again skips finished runs and continues unfinished ones.")
    s.add_argument("--config", help="JSON config file to start from")
    s.add_argument("--preset", choices=PRESET_NAMES, help="a named configuration (options given override it)")
    s.add_argument("--variants", default=None,
                   help="comma-separated subset of: " + ", ".join(f"{k} ({v})" for k, v in VARIANT_HELP.items())
                        + "; the full method always runs (default: all)")
    s.add_argument("--stop-after-runs", type=int, default=None, metavar="RUNS",
                   help="train at most this many (variant, split) runs in this invocation")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_config_args(s)
    s.set_defaults(func=_cmd_ablate)

    s = sub.add_parser("eval", help="evaluate a checkpoint (its own test split) or a run folder (all splits)")
    s.add_argument("path", help="a checkpoint (split_XX/last.pt) or a run folder with split_XX/ folders")
    s.add_argument("--root", help="evaluate on this dataset instead (with --csv): all of its images")
    s.add_argument("--csv")
    s.add_argument("--lower-is-better", action="store_true", default=None)
    s.add_argument("--device", default="auto")
    s.add_argument("--num-workers", type=int, default=None)
    s.add_argument("--out", help="where to write metrics.json / scatter.png (default: the run folder, or "
                                 "eval/ next to the checkpoint)")
    s.set_defaults(func=_cmd_eval)

    s = sub.add_parser("probe", help="linear probe: frozen backbone features + ridge regression per split",
                       description="The linear-probe protocol (as CONTRIQUE): per-image features of a frozen "
                                   "backbone (crop features pooled as the predictor pools crop scores), a ridge "
                                   "regressor fitted on the training part of each split (penalty chosen by 5-fold "
                                   "cross-validation on that part, folds grouped by content), metrics on the test "
                                   "part, summarised over the splits. PATH: a checkpoint or a run folder (each split "
                                   "checkpoint on its own split, or with --root/--csv on --splits splits of that "
                                   "dataset); without PATH, --arch and --weights (a torchvision ResNet or timm ViT-S "
                                   "file) on --root/--csv.")
    s.add_argument("path", nargs="?", default=None, help="a checkpoint (split_XX/last.pt) or a run folder")
    s.add_argument("--config", help="JSON config file to start from")
    s.add_argument("--preset", choices=PRESET_NAMES, help="a named configuration (options given override it)")
    s.add_argument("--out", help="output folder (default: PATH/probe, or OUT_DIR/probe)")
    add_config_args(s)
    s.set_defaults(func=_cmd_probe)

    s = sub.add_parser("predict", help="print a predicted quality score per image")
    s.add_argument("images", nargs="+")
    s.add_argument("--checkpoint", required=True, help="a split_XX/last.pt checkpoint")
    s.add_argument("--device", default="auto")
    s.set_defaults(func=_cmd_predict)

    s = sub.add_parser("score", help="score many image files into a CSV (batched, resumable, torchrun-aware)",
                       description="Score image files, folders (searched recursively) and list files (.txt, .lst, "
                                   ".list: one path per line, relative to the list's folder) into OUT (CSV "
                                   "name,mos, or name,dmos for a lower-is-better model). Unreadable files go to "
                                   "ERRORS (name,error) and never stop the run. Rerunning continues an interrupted "
                                   "run. Under torchrun each rank scores its shard and rank 0 merges.")
    s.add_argument("paths", nargs="+", help="image files, folders or list files")
    s.add_argument("--checkpoint", required=True, help="a split_XX/last.pt checkpoint or an `lmcl export` file")
    s.add_argument("--out", required=True, help="CSV of scores")
    s.add_argument("--errors", default=None, help="CSV of unreadable files (default: OUT without .csv + .errors.csv)")
    s.add_argument("--device", default="auto")
    s.add_argument("--batch-size", type=int, default=16)
    s.add_argument("--num-workers", type=int, default=min(4, os.cpu_count() or 1),
                   help="Pillow decoding processes, or DALI threads (default: min(4, CPUs))")
    s.add_argument("--decoder", default="auto", choices=("auto", "pillow", "dali"),
                   help="auto: DALI on CUDA when installed, else Pillow")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=_cmd_score)

    s = sub.add_parser("prepare", help="turn a standard IQA dataset's official label files into this project's CSV",
                       description="Read the official label files of NAME under ROOT (koniq10k, spaq, livec, "
                                   "kadid10k, tid2013, live, csiq, flive) and write OUT (name,mos|dmos[,std][,ref]"
                                   "[,split]; names relative to ROOT) and OUT.json (what was read, lower_is_better). "
                                   "See the README's dataset table for the files and where to get each dataset.")
    s.add_argument("name", help="dataset: koniq10k, spaq, livec, kadid10k, tid2013, live, csiq or flive")
    s.add_argument("root", help="the dataset's folder as downloaded (FLIVE: its database/ folder)")
    s.add_argument("--out", default=None, help="CSV to write (default: NAME.csv, or NAME_SPLIT.csv)")
    s.add_argument("--split", choices=("train", "val", "test"), default=None,
                   help="only this part of the official split (KonIQ-10k, FLIVE)")
    s.set_defaults(func=_cmd_prepare)

    s = sub.add_parser("export", help="write a small inference-only file of a checkpoint (for load_metric)")
    s.add_argument("checkpoint", help="a split_XX/last.pt checkpoint")
    s.add_argument("out", help="the file to write")
    s.set_defaults(func=_cmd_export)

    s = sub.add_parser("bench", help="quick timing of the ops and of one training step (no data needed)")
    s.add_argument("--device", default="auto")
    s.add_argument("--repeats", type=int, default=5)
    s.set_defaults(func=_cmd_bench)

    s = sub.add_parser("demo", help="synthetic set from photos -> train a small model -> evaluate (CPU, minutes)")
    s.add_argument("--photos", default=None, help="pristine photos (default: ../shared/data/photos, then the "
                                                  "same path relative to the repository root)")
    s.add_argument("--out", default="demo_out")
    s.add_argument("--device", default="cpu")
    s.add_argument("--max-images", type=int, default=None, help="use at most this many photos (default: all)")
    s.add_argument("--epochs", type=int, default=None, help="override the demo's epoch count")
    s.add_argument("--threads", type=int, default=1, help="torch CPU threads for training (default 1: the "
                                                          "other core decodes images)")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=_cmd_demo)
    return p


def main(argv: list | None = None) -> int:
    args = build_parser().parse_args(argv)
    start = time.time()
    rc = args.func(args)
    if args.command in ("train", "demo") and os.environ.get("RANK", "0") == "0":
        print(f"lmcl {args.command}: {time.time() - start:.0f} s", file=sys.stderr)
    return rc


if __name__ == "__main__":  # python -m lmcl_fast.cli (as torchrun -m runs it)
    sys.exit(main())
