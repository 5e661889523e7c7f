"""The ``dogbreed`` command. Each subcommand parses its flags and calls one library function."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from dogbreed import __version__, machine, registry, remote, tracking
from dogbreed.config import TrainConfig, normalize_argv
from dogbreed.errors import DogbreedError, JobError
from dogbreed.flags import add_flags, given
from dogbreed.logs import setup_logging, stdout_for_data

log = logging.getLogger("dogbreed")


MODEL_HELP = "trained artifact (or its unpacked folder), s3://BUCKET/KEY.tar.gz, or models:/NAME@ALIAS"


class _Formatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=34, width=100)


# --- subcommands ---------------------------------------------------------------------------------


def cmd_train(args: argparse.Namespace) -> int:
    from dogbreed import config as cfgmod
    from dogbreed import distributed
    from dogbreed.checkpoints import resume_config
    from dogbreed.run import train

    overrides = given(args, TrainConfig)
    remote.local_only(args.resume, "--resume", "a run continues from its checkpoints, which stay in its folder on the "
                                               "machine that trained it (--out s3:// uploads only the artifact and results)")
    if args.resume:
        if args.config:
            raise DogbreedError("--resume uses the run's own config.yaml; drop --config")
        cfg = resume_config(args.resume, overrides)
    else:
        cfg = cfgmod.resolve(args.config, overrides)
    # Under torchrun the ranks join; one that fails or hangs ends the job, named (in SageMaker's
    # failure file too).
    with distributed.session(cfg, on_fatal=cfgmod.write_sagemaker_failure) as ranks:
        result = train(cfg, ranks=ranks, resume=args.resume, progress=_progress(args) and ranks.main)
    if result.run_dir:
        print(f"run: {result.run_dir}\nartifact: {result.artifact}")
    if result.uploaded:
        print(f"uploaded: {result.uploaded}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from dogbreed.predict import (
        PredictOptions,
        check_flags,
        expand,
        explained_paths,
        format_answer,
        predict_files,
        warn_unused_keep,
        write_explained,
    )
    from dogbreed.runtime.pipeline import Options, RequestError, label_index

    asked = PredictOptions(**given(args, PredictOptions))
    if asked.json:
        stdout_for_data()
    if asked.explain_breed is not None:
        asked.explain = True
    check_flags(asked.topk, asked.threshold, asked.keep)  # before the artifact loads: a typo fails at once
    files = expand(args.images)
    if asked.out and not asked.explain:
        raise DogbreedError("--out is where --explain writes its figures: add --explain, or leave --out out")
    figures = explained_paths(files, asked.out) if asked.explain else {}  # an S3 photo without --out: refused now
    loaded = _load_model(args.model, _progress(args))
    warn_unused_keep(loaded, asked.keep, args.model)
    try:
        label = None if asked.explain_breed is None else label_index(loaded, asked.explain_breed, "--explain-breed")
    except RequestError as exc:
        raise DogbreedError(str(exc)) from None
    opts = Options.of(loaded).override(asked.topk, asked.threshold, asked.keep, "grid" if asked.explain else None, label)
    failed = 0
    for path, answer in predict_files(loaded, files, opts):
        failed += "error" in answer
        if asked.explain and "error" not in answer:
            answer = write_explained(loaded, path, answer, opts.threshold, figures[str(path)])
        if asked.json:
            print(json.dumps({"file": str(path), **answer}))
        else:
            print(format_answer(path, answer, opts.threshold))
    if failed:
        log.error("%d file(s) could not be read as images", failed)
    return 1 if failed else 0


def cmd_register(args: argparse.Namespace) -> int:
    if args.json:
        stdout_for_data()
    uri = registry.store(args.tracking_uri, args.track)
    done = registry.register(args.model, args.name, aliases=tuple(args.alias), promote=args.promote, data=args.data,
                             uri=uri, progress=_progress(args))
    if args.json:
        print(json.dumps(done))
        return 0
    print(f"registered {args.model} as {done['uri']} in {tracking.public(uri)}")
    for alias, moved in done["aliases"].items():
        if moved["moved"]:
            print(f"{args.name}@{alias} is now version {done['version']} ({moved['why']})")
        else:
            print(f"{args.name}@{alias} not moved: {moved['why']}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from dogbreed.evaluate import run
    from dogbreed.predict import PredictOptions, check_flags, warn_unused_keep
    from dogbreed.runtime.pipeline import Options

    asked = PredictOptions(**given(args, PredictOptions))
    check_flags(None, asked.threshold, asked.keep)
    options = None
    if asked.threshold is not None or asked.keep is not None:
        loaded = _load_model(args.model, _progress(args))
        warn_unused_keep(loaded, asked.keep, args.model)
        options = Options.of(loaded).override(None, asked.threshold, asked.keep)
    doc = run(args.model, args.data, ood=args.ood, split=args.split, out=args.out, options=options,
              progress=_progress(args), tracking_uri=tracking.tracking_uri(args.tracking_uri, args.track, "runs"))
    print(f"{doc['split']}: {doc['n']} images; accuracy {100 * doc['accuracy']:.1f}% (95% interval "
          f"{100 * doc['accuracy_ci95'][0]:.1f}-{100 * doc['accuracy_ci95'][1]:.1f}%), top-5 {100 * doc['top5']:.1f}%, "
          f"NLL {doc['nll']:.4f}, ECE {100 * doc['ece']:.1f}%")
    shares = ", ".join(f"{k} {100 * v:.0f}%" for k, v in doc["verdicts"].items())
    print(f"verdicts on {doc['split']}: {shares}")
    if doc.get("saliency_focus"):
        from dogbreed.saliency import summary

        print(summary(doc["saliency_focus"]))
    if "ood" in doc:
        o = doc["ood"]
        print(f"--ood ({o['out_n']} images): {o['score']} score AUROC {o['auroc']:.3f}, FPR at 95% TPR "
              f"{100 * o['fpr_at_95_tpr']:.1f}%; verdicts: " + ", ".join(f"{k} {100 * v:.0f}%" for k, v in o["verdicts"].items()))
    print(f"results: {remote.join(args.out, 'evaluation.json')} (and selective.png, reliability.png, top_losses.png, "
          f"confused_pairs.png"
          + (", scores.png)" if "ood" in doc else ")"))
    return 0


def cmd_data_synth(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from dogbreed.data.synth import SynthOptions, synth

    opts = SynthOptions(**given(args, SynthOptions))
    path = synth(args.dir, **asdict(opts), progress=_progress(args))
    print(f"wrote a synthetic data set: {path} ({opts.classes} classes, {opts.per_class} images each)")
    if opts.unseen:
        unseen = remote.join(path, "unseen")
        print(f"and {opts.unseen} unseen breeds in {unseen} ({opts.per_class // 2} images each; in no split): "
              f"try `dogbreed evaluate --model MODEL --data {path} --ood {unseen}`")
    return 0


def cmd_data_check(args: argparse.Namespace) -> int:
    from dogbreed.data.layout import IMAGE_EXTS, SPLITS, check
    from dogbreed.remote import staged

    report = check(staged(args.dir, IMAGE_EXTS, progress=_progress(args)).root, full=not args.quick, progress=_progress(args))
    if report.layout:
        counts = report.layout.counts()
        names = report.layout.labels.names
        if not args.quiet:
            print(f"{'class':<40} " + " ".join(f"{s:>6}" for s in SPLITS))
            for i, name in enumerate(names):
                print(f"{name:<40} " + " ".join(f"{counts[s][i]:>6}" for s in SPLITS))
        totals = ", ".join(f"{s} {sum(counts[s])}" for s in SPLITS)
        print(f"{report.layout.root}: {len(names)} classes; {totals} images")
        for s in SPLITS:
            print(f"  {s:<5} per class: min {min(counts[s])}, max {max(counts[s])}")
    for w in report.warnings:
        print(f"warning: {w}", file=sys.stderr)
    for e in report.errors:
        print(f"error: {e}", file=sys.stderr)
    if report.errors:
        print(f"{len(report.errors)} error(s)", file=sys.stderr)
        return 1
    print("ok" + (f" ({len(report.warnings)} warning(s))" if report.warnings else ""))
    return 0


def cmd_data_fetch(args: argparse.Namespace) -> int:
    from dogbreed.data.fetch import fetch

    root = fetch(args.dest, url=args.url, zip_path=args.zip, sha256=args.sha256, progress=_progress(args))
    print(f"data set ready: {root}\nnext: dogbreed data check {root} && dogbreed train --data {root}")
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from dogbreed import config as cfgmod
    from dogbreed.tune.options import TuneOptions
    from dogbreed.tune.results import format_trial, show
    from dogbreed.tune.tuner import default_storage, tune

    if args.tune_command == "show":
        remote.local_only(args.out, "--out", "the study's tune.db is a file on this machine (`tune --out s3://...` keeps "
                                             "it in runs/), or name its database with --storage URL")
        rows, best, objective = show(args.name, args.storage or default_storage(args.out, create=False))
        for row in rows:
            print(format_trial(row, objective))
        if best:
            params = " ".join(f"{k}={v}" for k, v in best["params"].items())
            print(f"best: trial {best['number']}  {objective} {best['value']:.4f}  {params}")
        return 0
    base = cfgmod.resolve(args.config, given(args, TrainConfig))
    from dogbreed import distributed

    # --seed seeds the sampler as well as every trial's training
    opts = TuneOptions(**given(args, TuneOptions), seed=base.seed)
    with distributed.session(base, join=False) as ranks:  # under torchrun: every rank a worker of one study
        result = tune(base, opts, ranks=ranks, progress=_progress(args))
    if result.artifact:
        print(f"best run: {result.final_run}\nartifact: {result.artifact}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from dogbreed.serve import ServeConfig, serve

    serve(ServeConfig.from_flags(given(args, ServeConfig)))
    return 0


def cmd_transform(args: argparse.Namespace) -> int:
    from dogbreed.transform import TransformOptions, run

    return run(TransformOptions(**given(args, TransformOptions)), progress=_progress(args))


def cmd_explain(args: argparse.Namespace) -> int:
    from dogbreed.explain import ExplainOptions, run
    from dogbreed.predict import expand

    opts = ExplainOptions(**given(args, ExplainOptions)).validate()  # a bad flag fails before the model loads
    files = expand(args.images)
    loaded = _load_model(args.model, _progress(args))
    lines = run(loaded, files, opts, progress=_progress(args))
    for line in lines:
        agree = line.get("correlation_with_cam")
        also = f" (correlation with CAM {agree:.2f})" if agree is not None else ""
        print(f"{line['file']}: {line.get('figure') or line.get('error')}{also}")
    print(f"{len(lines)} photo(s) explained by {opts.method}; one JSON line each in {opts.out}/explained.jsonl")
    return 1 if any("error" in line for line in lines) else 0


def cmd_export(args: argparse.Namespace) -> int:
    from dogbreed.data.layout import IMAGE_EXTS
    from dogbreed.export import ExportOptions, export

    opts = ExportOptions(**given(args, ExportOptions))
    if registry.is_model_uri(args.model) and not opts.out:  # beside it would be inside the registry's cache
        raise DogbreedError(f"{args.model} is a registered model: pass --out FILE for its export")
    if remote.is_s3(args.model) and opts.out == args.model:
        raise DogbreedError(f"{opts.out} is the artifact being exported, which the export would overwrite; "
                            f"pass --out with another path")
    progress = _progress(args)
    with remote.written_file(opts.out, "--out") as out:  # an s3:// --out: written here, then uploaded
        path = export(registry.model_file(args.model, progress=progress), opts.format, out,
                      data=remote.staged(opts.data, IMAGE_EXTS, progress=progress).root if opts.data else None,
                      calibration_images=opts.calibration_images, gate=opts.gate, progress=progress)
    target = opts.out or path
    if remote.is_s3(args.model) and not opts.out:  # beside an artifact on S3, as beside a local one
        target = f"{args.model.rsplit('/', 1)[0]}/{path.name}"
        remote.upload_file(path, target)
        path.unlink()
    print(f"wrote {target}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from dogbreed.monitor.rules import RULES

    if args.list_rules:
        for name, rule in RULES.items():
            params = ", ".join(f"{k}={v}" for k, v in rule.defaults.items()) or "no parameters"
            print(f"{name:<26} {rule.kind:<9} {params}\n{'':<26} {rule.description}")
        return 0
    if not args.run:
        raise DogbreedError("name a run folder: dogbreed report runs/<run> (or --list-rules)")
    remote.local_only(args.run, "RUN", "the report reads the run's profile in its folder on the machine that trained "
                                       "it (--out s3:// uploads only the artifact and results)")
    from dogbreed.monitor.report import evaluated, triggered, write_report

    report = write_report(args.run, args.rules)
    fired, counted = triggered(report.rules), evaluated(report.rules)
    for r in fired:
        print(f"triggered  {r['rule']:<26} {r['triggers']:>5}x  first: {(r['first_trigger'] or {}).get('message', '')}")
    print(f"{len(fired)} of {len(counted)} evaluated rules triggered; {len(report.rules) - len(counted)} summaries, "
          f"not applicable or without data")
    if not report.profile.finished:
        print(f"note: the run did not finish (status: {report.profile.meta.get('status')}); this covers what was collected")
    print(f"report: {report.html}\nrules: {report.html.parent / 'rules'}/<Rule>.json"
          + (f"\ntimeline: {report.png}" if report.png.exists() else ""))
    return 0


def cmd_monitor_baseline(args: argparse.Namespace) -> int:
    from dogbreed.drift.baseline import from_data

    baseline = from_data(args.model, args.data, args.out, split=args.split, progress=_progress(args))
    images = baseline.statistics["dataset"]["item_count"]
    print(f"baseline of {args.model} on {images} {args.split} images: {remote.join(args.out, 'statistics.json')}, "
          f"constraints.json, sketch.npz")
    return 0


def cmd_monitor_run(args: argparse.Namespace) -> int:
    from dogbreed.drift import execute

    kwargs = dict(capture=args.capture, baseline=args.baseline, model=args.model, ground_truth=args.ground_truth,
                  out=args.out, alpha=args.alpha, backend=args.backend, progress=_progress(args),
                  tracking_uri=tracking.tracking_uri(args.tracking_uri, args.track, "runs"))
    if args.metrics_port is not None and not args.every:
        raise DogbreedError("--metrics-port serves the last execution's gauges while --every runs; add --every")
    if args.every:
        if args.start or args.end:
            raise DogbreedError("--every runs over each period as it ends; drop --start and --end")
        execute.parse_period(args.every)
        execute.every(args.every, metrics_port=args.metrics_port, **kwargs)
        return 0
    done = execute.run(start=args.start, end=args.end, **kwargs)
    print(f"{done.images} captured images from {done.requests} requests: {len(done.violations)} violation(s)")
    for check in done.checks:
        print(f"  {'VIOLATION' if check.violated else 'ok':9} {check.name}: {check.description}")
    if done.quality and "multiclass_classification_metrics" in done.quality:
        accuracy = done.quality["multiclass_classification_metrics"]["accuracy"]["value"]
        print(f"accuracy on the {done.quality['dataset']['item_count']} images with ground truth: {100 * accuracy:.1f}%")
    print(f"results: {done.folder} (constraint_violations.json, statistics.json, checks.json); report: "
          f"{done.folder.parents[1] / 'report.html'}")
    return execute.VIOLATIONS_EXIT if done.violations else 0


def cmd_demo(args: argparse.Namespace) -> int:
    from dogbreed.demo import run_demo

    remote.local_only(args.out, "--out", "the demo's data, runs and tuning study are written on this machine")
    run_demo(args.out, progress=_progress(args))
    return 0


# --- parser --------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from dogbreed.data.fetch import DATASET_URL
    from dogbreed.data.synth import SynthOptions
    from dogbreed.explain import ExplainOptions
    from dogbreed.export import ExportOptions
    from dogbreed.predict import PredictOptions
    from dogbreed.runtime.backends import GATE
    from dogbreed.serve import ServeConfig
    from dogbreed.transform import TransformOptions
    from dogbreed.tune.options import TuneOptions

    parser = argparse.ArgumentParser(
        prog="dogbreed", formatter_class=_Formatter,
        description="Train, tune, profile and serve a dog-breed classifier on one machine.",
        epilog="workflow: dogbreed data fetch -> dogbreed train --data data/dogImages -> dogbreed predict IMG --model runs/<run>/model.tar.gz\n"
               "offline tour: dogbreed demo",
    )
    parser.add_argument("--version", action="version", version=f"dogbreed {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--no-progress", action="store_true", help="no progress bars (default: shown on a terminal)")
    common.add_argument("-v", "--verbose", action="store_true", help="more detail (default: off)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    data = sub.add_parser("data", help="get, synthesize and check data sets", formatter_class=_Formatter,
                          description="Get, synthesize and check ImageFolder data sets (DIR/{train,valid,test}/<class>/*.jpg).")
    data_sub = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    p = data_sub.add_parser("fetch", parents=[common], formatter_class=_Formatter, help="download and extract dogImages.zip",
                            description="Download the dogImages data set (about 1.1 GB; 133 breeds), resuming a partial "
                                        "download, verify it and extract it safely.")
    p.add_argument("--dest", default="data", help="local folder that receives the zip and the extracted data set (default: data)")
    p.add_argument("--url", default=DATASET_URL, help=f"where to download from: https://... or s3://BUCKET/KEY.zip (default: {DATASET_URL})")
    p.add_argument("--zip", default=None, metavar="PATH", help="extract this copy of the zip (a local file or s3://BUCKET/KEY.zip) "
                   "instead of downloading (default: none)")
    p.add_argument("--sha256", default=None, help="expected SHA-256 of the zip (downloaded or --zip), checked before "
                                                  "anything is extracted (default: none; a download's size and the server's MD5 ETag are always checked)")
    p.set_defaults(func=cmd_data_fetch)

    p = data_sub.add_parser("synth", parents=[common], formatter_class=_Formatter, help="write a synthetic data set",
                            description="Write a synthetic ImageFolder data set that a model must learn "
                                        "(class-specific colour, texture and shape). 70/15/15 train/valid/test.")
    p.add_argument("dir", help="folder to create (must not exist or be empty), or an empty s3://BUCKET/PREFIX/ to upload it to")
    add_flags(p, SynthOptions)
    p.set_defaults(func=cmd_data_synth)

    p = data_sub.add_parser("check", parents=[common], formatter_class=_Formatter, help="validate a data set",
                            description="Validate the layout, class sets, counts and every image. Exit 1 on errors, 0 with warnings.")
    p.add_argument("dir", help="data set root")
    p.add_argument("--quick", action="store_true", help="read image headers only, do not decode pixels (default: full decode)")
    p.add_argument("-q", "--quiet", action="store_true", help="no per-class table, only totals and problems (default: table shown)")
    p.set_defaults(func=cmd_data_check)

    p = sub.add_parser("train", parents=[common], formatter_class=_Formatter, help="train a model and write its artifact",
                       description="Fine-tune a pretrained backbone with a new head; writes runs/<run>/ and model.tar.gz.\n"
                                   "SageMaker: runs unchanged as a training job (reads SM_CHANNEL_TRAINING, SM_MODEL_DIR, "
                                   "SM_OUTPUT_DATA_DIR;\naccepts --learning_rate-style hyperparameters).")
    p.add_argument("--config", default=None, metavar="RECIPE.yaml", help="YAML recipe of training options (default: none)")
    p.add_argument("--resume", default=None, metavar="RUN", help="continue the run folder RUN from its last finished epoch (default: none)")
    add_flags(p.add_argument_group("training options (defaults -> --config recipe -> these flags)"), TrainConfig)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("tune", parents=[common], formatter_class=_Formatter, help="hyperparameter search (Optuna)",
                       description="Search hyperparameters with Optuna, then train the best trial's settings into a\n"
                                   "normal run and artifact. Workers on any machine join a study through --storage.\n"
                                   "Training options below set everything the search space does not.")
    add_flags(p.add_argument_group("search options"), TuneOptions, exclude=("seed",))
    p.add_argument("--config", default=None, metavar="RECIPE.yaml", help="YAML recipe of training options (default: none)")
    add_flags(p.add_argument_group("training options (defaults -> --config recipe -> these flags)"), TrainConfig)
    tune_sub = p.add_subparsers(dest="tune_command", metavar="ACTION")
    show_p = tune_sub.add_parser("show", formatter_class=_Formatter, help="print the trials and best trial of a study",
                                 description="Print the trials table and the best trial of an existing study.")
    show_p.add_argument("name", help="study name")
    show_p.add_argument("--storage", default=None, metavar="URL", help="storage URL (default: sqlite file OUT/tune.db)")
    show_p.add_argument("--out", default="runs", help="folder holding tune.db when --storage is not given (default: runs)")
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("report", parents=[common], formatter_class=_Formatter, help="profile report of a training run",
                       description="Run the debugger and profiler rules over a run's recorded profile and write\n"
                                   "RUN/profile/report.html (self-contained), rules/<Rule>.json and timeline.png. Works on\n"
                                   "a run killed mid-way: it reports what was collected.")
    p.add_argument("run", nargs="?", metavar="RUN", help="run folder written by `dogbreed train` (runs/<run>)")
    p.add_argument("--rules", default=None, metavar="RULES.yaml", help="rule parameters and actions to use instead of the "
                   "run's own (default: the rules the run trained with)")
    p.add_argument("--list-rules", action="store_true", help="list every rule with its default parameters and exit (default: off)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("predict", parents=[common], formatter_class=_Formatter, help="top-k breeds for images",
                       description="Predict the top-k breeds of images with a trained artifact.")
    p.add_argument("images", nargs="+", metavar="IMAGE_OR_DIR", help="image files or folders of images; s3://BUCKET/KEY.jpg or s3://BUCKET/PREFIX/")
    p.add_argument("--model", required=True, metavar="model.tar.gz", help=MODEL_HELP)
    add_flags(p, PredictOptions)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("serve", parents=[common], formatter_class=_Formatter, help="serve a model over HTTP (SageMaker's contract)",
                       description="Serve an artifact with SageMaker's endpoint contract: GET /ping, POST /invocations,\n"
                                   "POST /endpoints/NAME/invocations (boto3 sagemaker-runtime), POST /predict (multipart),\n"
                                   "GET / (web page), GET /metrics (Prometheus), GET /docs (OpenAPI).")
    add_flags(p.add_argument_group("server options"), ServeConfig)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("explain", parents=[common], formatter_class=_Formatter, help="heatmaps of where the model looked, "
                       "by CAM or KernelSHAP (SageMaker Clarify's way)",
                       description="Explain each photo's top breed with a heatmap over the model's view: the class activation\n"
                                   "map the network gives with its answer (--method cam), or KernelSHAP over 20 superpixels\n"
                                   "(--method shap, as SageMaker Clarify does: model-agnostic and slower), shown beside CAM.")
    p.add_argument("images", nargs="+", metavar="IMAGE_OR_DIR", help="image files or folders of images; s3://BUCKET/KEY.jpg or s3://BUCKET/PREFIX/")
    p.add_argument("--model", required=True, metavar="model.tar.gz", help=MODEL_HELP)
    add_flags(p, ExplainOptions)
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("transform", parents=[common], formatter_class=_Formatter, help="score a folder, bucket or manifest of "
                       "images in batch (SageMaker Batch Transform's contract)",
                       description="Score every file of a folder, an s3:// prefix or a manifest with an artifact, as SageMaker\n"
                                   "Batch Transform does: DEST/KEY.out per input, holding what the endpoint answers for it;\n"
                                   "JSON lines inputs record by record (--split-type Line); a failed input named in\n"
                                   "DEST/_failures.jsonl (exit status 3); a rerun skips what already has its .out.\n"
                                   "--shard K/N splits a job across machines; --engine ray runs it on a Ray cluster.")
    add_flags(p, TransformOptions)
    p.set_defaults(func=cmd_transform)

    p = sub.add_parser("export", parents=[common], formatter_class=_Formatter, help="add TorchScript, ONNX and int8 "
                       "variants to an artifact, checked against fp32",
                       description="Write an artifact variant holding faster ways to run the same network beside\n"
                                   "model.pth: a TorchScript model.pt, an ONNX model.onnx, an int8 model.int8.onnx\n"
                                   "(ONNX Runtime's static quantization, calibrated on the validation images).\n"
                                   "With --data, each of them and bf16 is checked against fp32 on the validation\n"
                                   "split and the agreement stored: `dogbreed serve --backend auto` uses bf16 and int8\n"
                                   f"only where top-1 agreed on {100 * GATE['top1']:g}% and top-5 on {100 * GATE['top5']:g}% "
                                   "(--gate). model.pt also suits\n"
                                   "SageMaker's default TorchScript loader. The artifact, --data and --out may be on S3 (s3://).")
    p.add_argument("model", metavar="model.tar.gz", help=MODEL_HELP)
    add_flags(p, ExportOptions)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("evaluate", parents=[common], formatter_class=_Formatter, help="accuracy, calibration and "
                       "rejection of an artifact on labelled data",
                       description="Evaluate an artifact on a labelled split through the inference path that answers\n"
                                   "requests: accuracy, top-5, NLL, ECE, the selective-prediction curve and, with --ood (a\n"
                                   "folder of non-dog photos, or of breeds the model never saw), how well its score tells\n"
                                   "those apart (AUROC, FPR at 95% TPR).")
    p.add_argument("--model", required=True, metavar="model.tar.gz", help=MODEL_HELP)
    p.add_argument("--data", required=True, metavar="DIR", help="data set root with DIR/<split>/<breed>/*.jpg, or "
                   "s3://BUCKET/PREFIX/")
    p.add_argument("--split", default="test", help="which split to evaluate (default: test)")
    p.add_argument("--ood", default=None, metavar="DIR", help="photos of anything but the model's breeds, e.g. the human "
                   "faces set that shipped with the Udacity project, or `data synth --unseen`'s DIR/unseen; or s3://BUCKET/PREFIX/ "
                   "(default: none)")
    add_flags(p, PredictOptions, exclude=("topk", "json", "explain", "explain_breed", "out"))
    p.add_argument("--out", default="evaluation", help="folder for evaluation.json and the plots, or s3://BUCKET/PREFIX/ "
                   "to upload them there (default: evaluation)")
    _tracking_flags(p, "log the figures and files to the model's MLflow run in this store (a run of their own "
                       "where the artifact names none there; default: $MLFLOW_TRACKING_URI, else not logged)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("register", parents=[common], formatter_class=_Formatter,
                       help="add an artifact to MLflow's model registry and move an alias",
                       description="Register an artifact as the next version of a named model in an MLflow registry, with\n"
                                   "its model card, test accuracy, ECE and test-set digest, and set aliases. With --promote an\n"
                                   "alias moves only when the new version is no worse than its holder on accuracy and ECE, on\n"
                                   "the same test set (--data DIR judges both on DIR's test split). Every command that takes\n"
                                   "a model then takes models:/NAME@ALIAS (docs/tracking.md).")
    p.add_argument("model", metavar="model.tar.gz", help="trained artifact, or s3://BUCKET/KEY.tar.gz")
    p.add_argument("--name", required=True, help="the registered model's name")
    p.add_argument("--alias", action="append", default=[], metavar="ALIAS",
                   help="an alias for the new version, e.g. champion (repeatable; default: none)")
    p.add_argument("--promote", action="store_true", help="move each --alias only if the new version is no worse "
                   "than the one holding it (default: set each --alias as given)")
    p.add_argument("--data", default=None, metavar="DIR", help="with --promote: judge both versions on DIR's test "
                   "split (needed where their recorded test sets differ; default: their recorded figures)")
    _tracking_flags(p, "the MLflow store holding the registry (default: $MLFLOW_TRACKING_URI, else runs/mlflow.db "
                       "where it exists)")
    p.add_argument("--json", action="store_true", help="print what was done as one JSON object (default: lines)")
    p.set_defaults(func=cmd_register)

    monitor = sub.add_parser("monitor", help="watch a deployed model: baselines, drift and accuracy from captured requests",
                             formatter_class=_Formatter,
                             description="Model Monitor on one machine: compare what `dogbreed serve --capture` recorded with\n"
                                         "the baseline every artifact keeps (its validation split), in SageMaker's files.")
    monitor_sub = monitor.add_subparsers(dest="monitor_command", metavar="ACTION", required=True)
    p = monitor_sub.add_parser("baseline", parents=[common], formatter_class=_Formatter,
                               help="the baseline of an artifact from a data set's split",
                               description="Write statistics.json, constraints.json and sketch.npz for an artifact from the\n"
                                           "images of a data set's split (artifacts trained by this version keep one already).")
    p.add_argument("--model", required=True, metavar="model.tar.gz", help=MODEL_HELP)
    p.add_argument("--data", required=True, metavar="DIR", help="data set root with DIR/<split>/<breed>/*.jpg, or s3://BUCKET/PREFIX/")
    p.add_argument("--split", default="valid", help="which split the baseline describes (default: valid)")
    p.add_argument("--out", default="baseline", help="folder to write, or s3://BUCKET/PREFIX/ (default: baseline)")
    p.set_defaults(func=cmd_monitor_baseline)
    p = monitor_sub.add_parser("run", parents=[common], formatter_class=_Formatter,
                               help="one monitoring execution over a window of captured requests",
                               description="Re-embed the window's captured images, test them against the baseline (embedding\n"
                                           "drift, breed shares, \"not a dog\" and \"unsure\" shares, confidence, image size and\n"
                                           "brightness, unreadable inputs) and, with --ground-truth, measure accuracy.\n"
                                           "Writes constraint_violations.json, statistics.json and an HTML report.\n"
                                           f"Exit status: 0 no violation, {3} violations found, 1 an error.")
    p.add_argument("--capture", required=True, metavar="DEST", help="the folder (or s3://BUCKET/PREFIX) `serve --capture` wrote")
    p.add_argument("--baseline", required=True, metavar="A", help="the serving artifact (it keeps its baseline), its run "
                   "folder, or a folder from `monitor baseline`")
    p.add_argument("--model", default=None, metavar="model.tar.gz", help="the artifact that re-embeds the images (default: "
                   "--baseline's, when it is an artifact or run folder)")
    p.add_argument("--ground-truth", default=None, metavar="DIR", help="SageMaker ground-truth records (groundTruthData lines "
                   "in yyyy/mm/dd/hh folders), joined on inferenceId, else eventId (default: none)")
    p.add_argument("--start", default=None, help="window start, ISO 8601 UTC, e.g. 2026-12-07T03:00:00Z (default: the first record)")
    p.add_argument("--end", default=None, help="window end, exclusive (default: now)")
    p.add_argument("--every", default=None, metavar="PERIOD", help="run at the end of each period (30m, 1h, 1d) over the "
                   "period just ended, until interrupted (default: once)")
    p.add_argument("--metrics-port", type=int, default=None, help="with --every: serve the last execution's results as "
                   "Prometheus gauges on 127.0.0.1:PORT/metrics (default: none)")
    p.add_argument("--alpha", type=float, default=None, help="the chance that a window like the baseline raises a false "
                   "violation, shared by the tests (default: the baseline's constraints.json, 0.01)")
    p.add_argument("--backend", default="auto", help="how the network runs, as for serve (default: auto, the fastest)")
    p.add_argument("--out", default="monitoring", help="folder for the executions' results and report.html (default: monitoring)")
    _tracking_flags(p, "log each execution's figures and files to the model's MLflow run in this store (a run of "
                       "their own where the artifact names none there; default: $MLFLOW_TRACKING_URI, else not logged)")
    p.set_defaults(func=cmd_monitor_run)

    p = sub.add_parser("demo", parents=[common], formatter_class=_Formatter, help="the whole workflow offline, on synthetic data",
                       description="Synthesize data, train (profiled), tune, write the artifact, predict, then serve it with\ncapture on and monitor a window of darker photos, offline, in about two minutes on 2 CPU cores.")
    p.add_argument("--out", default="demo", help="folder for the demo's data and runs (default: demo)")
    p.set_defaults(func=cmd_demo)
    return parser


def _tracking_flags(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--tracking-uri", default=None, metavar="URI", help=what)
    p.add_argument("--track", action="store_true", help="the local MLflow store of `train --track`, runs/mlflow.db "
                   "(default: off)")


def _load_model(path: str, progress: bool):
    """An artifact to predict with, from a local path or ``s3://`` (staged: fetched again only when changed)."""
    from dogbreed.artifact import load_artifact

    return load_artifact(registry.model_file(path, progress=progress), name=path)


def _progress(args: argparse.Namespace) -> bool:
    """Bars on a terminal only: piped into a log they are lines of carriage returns."""
    return not args.no_progress and sys.stderr.isatty()


def run(argv: list[str]) -> tuple[int, str | None]:
    """One command, its words in our spelling (``config.normalize_argv``): the exit code and, when
    it failed in a way the user can fix, the one line that says why (``main`` prints it as
    ``error: ...``; a SageMaker job also leaves it as its failure reason). argparse's refusals exit
    as argparse does."""
    args = build_parser().parse_args(argv)
    setup_logging(getattr(args, "verbose", False))
    machine.keep_freed_memory()  # every batch's activations reuse the last one's pages
    try:
        return args.func(args), None
    except JobError as exc:  # every rank of the job met it: rank 0 says it for them all
        return 1, str(exc) if exc.rank == 0 else None
    except DogbreedError as exc:
        return 1, str(exc)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130, None
    except OSError as exc:  # a path that is a file, not writable, on a full disk...
        where = f"{exc.filename}: " if exc.filename else ""
        return 1, f"{where}{exc.strerror or exc}"


def main(argv: list[str] | None = None) -> int:
    code, error = run(normalize_argv(list(sys.argv[1:] if argv is None else argv)))
    if error:
        print(f"error: {error}", file=sys.stderr)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
