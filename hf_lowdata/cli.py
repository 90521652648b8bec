"""The ``hf-lowdata`` command line."""

from __future__ import annotations

import argparse
import ast
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _int_list(text: str) -> list[int]:
    """``"0,1,2"`` or ``"0-4"`` (inclusive) or a mix: ``"0-2,8"``."""
    values: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part[1:]:
            lo, hi = part.split("-", 1)
            if int(hi) < int(lo):
                raise argparse.ArgumentTypeError(f"{part!r} is an empty range; write the smaller number first, e.g. 0-4")
            values.extend(range(int(lo), int(hi) + 1))
        else:
            values.append(int(part))
    return values



def _dev_k(value: str) -> int | str:
    """``--dev-k``: a number of examples per class, or ``same`` (the labelled set's k per class)."""
    from .data import DEV_K_SAME

    if value.strip().lower() == DEV_K_SAME:
        return DEV_K_SAME
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of examples per class or '{DEV_K_SAME}', "
                                         f"got {value!r}") from None


def _seed(value: str) -> int:
    """``--seed``: an integer from 0 to 2**32 - 1 (what numpy and torch accept)."""
    try:
        seed = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None
    if not 0 <= seed < 2**32:
        raise argparse.ArgumentTypeError(f"{seed} is out of range: give a seed from 0 to {2**32 - 1}")
    return seed


def _count(value: str) -> int:
    """A whole number of 0 or more (``--save-steps``)."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None
    if number < 0:
        raise argparse.ArgumentTypeError(f"{number} is negative: give 0 or more")
    return number


def _float_list(text: str) -> list[float]:
    return [float(p) for p in text.split(",") if p.strip()]


def _name_list(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


def parse_options(pairs: Sequence[str]) -> dict[str, Any]:
    """``key=value`` pairs; values are Python literals where they parse (numbers, lists), else strings."""
    options: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise argparse.ArgumentTypeError(f"--config expects key=value, got {pair!r}")
        key, raw = pair.split("=", 1)
        try:
            value: Any = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        options[key.strip()] = value
    return options


def _add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="compare methods under one few-shot protocol",
        description="Run every (dataset, label budget, seed, method) and write OUT/runs.jsonl, OUT/summary.md "
        "and OUT/plots/*.png.",
    )
    p.add_argument("--data-dir", required=True, type=Path, help="folder with one sub-folder per dataset")
    p.add_argument("--datasets", required=True, type=_name_list, help="comma-separated dataset folder names")
    p.add_argument("--methods", required=True, type=_name_list, help="comma-separated method names (hf-lowdata methods lists them)")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--shots", type=_int_list, default=None, help="labelled examples per class, e.g. 8,16 (default 8,16,32; none with --totals)")
    p.add_argument("--totals", type=_int_list, default=[], help="labelled examples in total, e.g. 300,500,1000")
    p.add_argument("--seeds", type=_int_list, default=[0, 1, 2, 3, 4], help="seeds, e.g. 0,1,2 or 0-4 (default 0-4)")
    p.add_argument("--model", default=None, help="model name or local folder (default: packaged all-MiniLM-L6-v2)")
    p.add_argument("--ood-datasets", type=_name_list, default=[], help="also test on these datasets (same labels)")
    p.add_argument("--label-noise", type=_float_list, default=[0.0], help="fractions of wrong labels, e.g. 0.1,0.3")
    p.add_argument("--unlabelled", type=int, default=2000,
                   help="unlabelled pool size for the methods that use one (default 2000; 0 = none)")
    p.add_argument("--dev-k", type=_dev_k, default=None,
                   help="a disjoint dev set of this many examples per class; 'same': as many as the labelled set")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--bf16", action="store_true", help="train under bf16 autocast (GPUs with bf16 support)")
    p.add_argument("--config", nargs="*", default=[], metavar="KEY=VALUE", help="method options, e.g. r=16")
    p.add_argument("--resume", action="store_true", help="continue the benchmark in --out, skipping finished runs")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_bench)


def _run_bench(args: argparse.Namespace) -> int:
    from .bench import BenchConfig, run_benchmark
    from .bench.report import latest_records

    shots = args.shots if args.shots is not None else ([] if args.totals else [8, 16, 32])
    config = BenchConfig(
        data_dir=args.data_dir,
        datasets=args.datasets,
        methods=args.methods,
        out=args.out,
        shots=shots,
        totals=args.totals,
        seeds=args.seeds,
        model=args.model,
        ood_datasets=args.ood_datasets,
        label_noise=args.label_noise,
        unlabelled=args.unlabelled,
        dev_k=args.dev_k,
        resume=args.resume,
        device=args.device,
        bf16=args.bf16,
        options=parse_options(args.config),
    )
    try:
        records = run_benchmark(config, show_progress=not args.no_progress)
    except KeyboardInterrupt:
        print(f"\nInterrupted. Finished runs are in {args.out}/runs.jsonl; run the same command with --resume to do "
              "the rest (the cut run starts again).", file=sys.stderr)
        return 130
    records = latest_records(records)  # a run that failed, then finished on --resume, counts as finished
    failed = [r for r in records if r.get("status") == "failed"]
    print(f"{len(records) - len(failed)} runs ok, {len(failed)} failed; results in {args.out}/summary.md")
    for r in failed[:5]:
        print(f"  failed: {r['dataset']} {r['method']} seed={r['seed']}: {r.get('error')}", file=sys.stderr)
    return 1 if failed else 0


def _list_methods(args: argparse.Namespace) -> int:
    from .methods import METHODS

    width = max(map(len, METHODS))
    for name in sorted(METHODS):
        cls = METHODS[name]
        reason = cls.unavailable_reason()
        needs = None if reason else cls.missing_requirements({})
        print(f"{name:{width}s}  {cls.summary}" + (f"  [unavailable: {reason}]" if reason else "")
              + (f"  [needs setup: {needs}]" if needs else ""))
    return 0


# --------------------------------------------------------------------------------------------------
# train / predict / push: one method on the user's own data, and sharing the result


def _add_train(sub: argparse._SubParsersAction) -> None:
    from .budgets import PRESETS

    p = sub.add_parser(
        "train",
        help="train one method on your data and save it (PEFT format + model card)",
        description="Train one method on DATA and save it to OUT in standard format (PEFT methods: "
        "adapter_config.json, adapter_model.safetensors) with a README.md model card. With an evaluation set "
        "(--eval, or the test split of a dataset folder) the figures are printed and written to "
        "OUT/eval_results.json. Checkpoints go to OUT/checkpoints; --resume continues an interrupted run.",
    )
    p.add_argument("--method", required=True, help="method name (see: hf-lowdata methods)")
    p.add_argument("--data", required=True, type=Path, help="labelled data: a dataset folder or a .csv/.tsv/.jsonl file")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--unlabelled", type=Path, default=None, help="unlabelled texts (.csv/.tsv/.jsonl) for methods that use them")
    p.add_argument("--eval", type=Path, default=None, help="labelled evaluation file (default: DATA's test split, if any)")
    p.add_argument("--dev", type=Path, default=None,
                   help="labelled dev file for model selection: the method keeps its best dev step (the probe, its C); "
                   "keep it apart from DATA and --eval (default: none)")
    p.add_argument("--model", default=None, help="model name or local folder (default: packaged all-MiniLM-L6-v2)")
    p.add_argument("--config", nargs="*", default=[], metavar="KEY=VALUE",
                   help="budget fields (max_steps=40 learning_rate=1e-4 batch_size=8 ...) or method options (r=16)")
    p.add_argument("--preset", choices=sorted(PRESETS), default="standard", help="budget preset (default: standard)")
    p.add_argument("--shots", type=int, default=None, help="train on K examples per class drawn from DATA, never a text of the evaluation or dev data "
                   "(default: every row)")
    p.add_argument("--seed", type=_seed, default=0, help="seed (initialisation, data order, --shots draw)")
    p.add_argument("--text-column", default="text", help="text column name (default: text)")
    p.add_argument("--text-pair-column", default="text_pair",
                   help="second text of pair examples (premise / hypothesis); default: text_pair, where the data have it")
    p.add_argument("--label-column", default="label", help="label column name (default: label)")
    p.add_argument("--save-steps", type=_count, default=None, help="checkpoint every N steps (default: 4 per run; 0: none)")
    p.add_argument("--resume", action="store_true", help="continue from the last complete checkpoint in OUT/checkpoints")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--bf16", action="store_true", help="train under bf16 autocast (GPUs with bf16 support)")
    p.set_defaults(func=_run_train)


def _print_evaluation(evaluation: dict[str, Any]) -> None:
    lo, hi = evaluation["accuracy_ci95"]
    flo, fhi = evaluation["macro_f1_ci95"]
    print(f"accuracy {evaluation['accuracy']:.4f} (95% CI {lo:.3f}-{hi:.3f}), macro-F1 {evaluation['macro_f1']:.4f} "
          f"(95% CI {flo:.3f}-{fhi:.3f}) on {evaluation['examples']} examples of {Path(evaluation['source']).name}")


def _step_printer(method: str):
    """A progress callback that prints about ten lines per run."""
    shown = {"tenth": -1}

    def report(message: str, fraction: float) -> None:
        tenth = int(fraction * 10)
        if tenth > shown["tenth"]:
            shown["tenth"] = tenth
            print(f"  {message}", file=sys.stderr, flush=True)

    return report


def _run_train(args: argparse.Namespace) -> int:
    from .workflow import check_device, output_lock, require_method

    require_method(args.method)  # before any data is read
    check_device(args.device)
    with output_lock(args.out):  # a second run on the same --out is refused here, before it reads or changes anything
        return _train_holding_the_lock(args)


def _train_holding_the_lock(args: argparse.Namespace) -> int:
    """``hf-lowdata train`` once ``--out`` is locked: check it, read the data, train (or finish a finished run)."""
    from dataclasses import replace

    from .data import (
        DataError,
        FewShotTask,
        balance_note,
        check_dev_set,
        excluded_pool_indices,
        load_data,
        load_file,
        make_few_shot_task,
        require_two_classes,
        warn_if_test_in_train,
    )
    from .methods import METHODS
    from .model_card import describe_model_selection
    from .workflow import (
        CHECKPOINTS_DIR,
        EVAL_FILE,
        WorkflowError,
        budget_fields_read,
        check_output_folder,
        finished_output,
        ignored_budget_settings,
        resume_finished,
        train_method,
    )

    out: Path = args.out
    finished = finished_output(out)
    if finished and not args.resume:
        raise WorkflowError(f"{out} already holds a trained model. Choose another --out or remove it first "
                            "(nothing was overwritten).")
    if not finished:
        check_output_folder(out)  # before the data is read; train_method checks it again
    pair = args.text_pair_column
    splits = load_data(args.data, text_column=args.text_column, label_column=args.label_column, text_pair_column=pair)
    dev = (load_file(args.dev, args.text_column, args.label_column, label_names=splits.label_names,
                     label_reading=splits.label_reading, text_pair_column=pair) if args.dev is not None else None)
    evaluation_data = (load_file(args.eval, args.text_column, args.label_column, label_names=splits.label_names,
                                 label_reading=splits.label_reading, text_pair_column=pair)
                       if args.eval is not None else splits.test)
    if args.shots is not None:  # the draw never takes a dev text, nor one it is evaluated on (as the benchmark's)
        held = [*(dev.texts if dev else ()), *(evaluation_data.texts if evaluation_data is not None else ())]
        try:
            task = make_few_shot_task(splits, seed=args.seed, k=args.shots, exclude_texts=held)
        except DataError as err:
            left_out = len(excluded_pool_indices(splits.train, held))
            if not left_out:
                raise
            raise DataError(f"{err} (The draw leaves out the {left_out} row(s) of {splits.train.source} whose text is "
                            "in the evaluation or dev data.)") from err
    else:
        require_two_classes(splits.train)
        task = FewShotTask(name=splits.name, label_names=splits.label_names, labelled=splits.train, seed=args.seed)
    if args.unlabelled is not None:
        task = replace(task, unlabelled=load_file(args.unlabelled, args.text_column, label_column=None,
                                                  text_pair_column=pair))
        if args.method in METHODS and not METHODS[args.method].uses_unlabelled:
            print(f"note: {args.method} does not use unlabelled data; --unlabelled is ignored.", file=sys.stderr)
    config = parse_options(args.config)
    ignored = ignored_budget_settings(args.method, config)
    if ignored:
        print(f"note: {args.method} does not read {', '.join(ignored)} (it trains with "
              f"{', '.join(sorted(budget_fields_read(args.method)))} only); ignored, and left out of the model card.",
              file=sys.stderr)
    if args.save_steps and args.method in METHODS and not METHODS[args.method].checkpoints:
        print(f"note: {args.method} writes no checkpoints (a short run on frozen features); --save-steps is ignored.",
              file=sys.stderr)
    if evaluation_data is not None and args.shots is None:  # a --shots draw never takes an evaluated text
        warn_if_test_in_train(task.labelled, evaluation_data)
    if dev is not None:
        check_dev_set(dev, task.labelled, evaluation_data)
        task = replace(task, dev=dev)
    if finished:  # checked to be the run asked for, and a save cut off after its card completed
        evaluation = resume_finished(out, args.method, task, model=args.model)
        print(f"{out} already holds the finished run; nothing to resume.")
        if evaluation is not None:
            _print_evaluation(evaluation)
        return 0
    if args.method in METHODS:
        for note in (_truncation_note(args, task, evaluation_data, config), balance_note(task.labelled)):
            if note:
                print(f"note: {note}", file=sys.stderr)
    class_counts = list(task.labelled.class_counts().items())
    counts = ", ".join(f"{n}: {c}" for n, c in class_counts[:10]) + (
        f", ... ({len(class_counts)} classes)" if len(class_counts) > 10 else "")
    print(f"Training {args.method} on {len(task.labelled)} labelled examples ({counts})"
          + (f" and {len(task.unlabelled)} unlabelled" if task.unlabelled is not None else ""), file=sys.stderr)
    try:
        result = train_method(
            args.method, task, out, model=args.model, seed=args.seed, preset=args.preset,
            config=config, evaluation_data=evaluation_data, progress=_step_printer(args.method),
            device=args.device, save_steps=args.save_steps, resume=args.resume, bf16=args.bf16,
        )
    except KeyboardInterrupt:
        if args.method in METHODS and not METHODS[args.method].checkpoints:
            print(f"Interrupted. {args.method} writes no checkpoints, so there is nothing to continue; run the same "
                  "command to train it from the start.", file=sys.stderr)
        elif not (out / CHECKPOINTS_DIR).is_dir():  # removed by the run: it held no complete checkpoint
            print("Interrupted before the first complete checkpoint, so there is nothing to continue; run the same "
                  "command to train from the start.", file=sys.stderr)
        else:
            print(f"Interrupted. Complete checkpoints (if any) are in {out / CHECKPOINTS_DIR}; run the same command "
                  "with --resume to continue.", file=sys.stderr)
        return 130
    if result.resumed_from:
        print(f"Resumed from {result.resumed_from}.")
    if result.resume_note:
        print(result.resume_note)
    files = ", ".join(sorted(p.name for p in out.iterdir() if p.is_file() and not p.name.startswith(".")))  # not the lock
    print(f"Saved {args.method} to {out} ({files}); {result.trainable_parameters:,} trainable parameters, "
          f"{result.adapter_bytes / 1024:,.1f} KiB, trained in {result.train_seconds:.1f} s.")
    chosen = describe_model_selection(result.classifier.notes)
    if chosen:
        print(chosen[0].upper() + chosen[1:] + ".")
    if result.evaluation is not None:
        _print_evaluation(result.evaluation.to_dict())
        print(f"Evaluation figures written to {out / EVAL_FILE}.")
    return 0


def _truncation_note(args: argparse.Namespace, task: Any, evaluation_data: Any, config: dict[str, Any]) -> str | None:
    """The note of :func:`~hf_lowdata.workflow.truncation_note` for this run; ``None`` where the budget or the model
    cannot be read yet (train_method then says what is wrong)."""
    from .models import ModelNotFoundError
    from .workflow import WorkflowError, resolve_budget, truncation_note

    try:
        budget, _ = resolve_budget(args.method, args.preset, config)
    except WorkflowError:
        return None
    texts = {"labelled": task.labelled.texts, "evaluation": evaluation_data.texts if evaluation_data is not None else ()}
    try:
        return truncation_note(texts, args.model, budget.max_length)
    except (ModelNotFoundError, OSError, ValueError):
        return None


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="predict labels with a saved adapter, full model or probe",
        description="Load a folder written by hf-lowdata train (a PEFT adapter, a full fine-tuned model or the "
        "probe) and print one line per text: label, probability, text (or JSON lines with --json).",
    )
    p.add_argument("folder", type=Path, help="the saved folder")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--text", action="append", help="a text to classify (repeat for several)")
    source.add_argument("--file", type=Path, help="a .csv/.tsv/.jsonl file of texts")
    p.add_argument("--text-pair", action="append",
                   help="the second text of a pair, for a model trained on pairs (one per --text, in order)")
    p.add_argument("--text-column", default="text", help="text column of --file (default: text)")
    p.add_argument("--text-pair-column", default="text_pair",
                   help="second text column of --file, for pairs (default: text_pair, where the file has it)")
    p.add_argument("--model", default=None, help="base model folder, when the recorded one is not available here")
    p.add_argument("--json", action="store_true", help="print JSON lines with every label's probability")
    p.add_argument("--device", default=None, help="torch device (default: cpu)")
    p.set_defaults(func=_run_predict)


_ONE_LINE = {ord("\t"): "\\t", ord("\n"): "\\n", ord("\r"): "\\r"}


def _run_predict(args: argparse.Namespace) -> int:
    import json

    from .data import PAIR_SEPARATOR, join_pair, load_file
    from .workflow import WorkflowError, load_classifier

    if args.text is not None:
        firsts = [t.strip() for t in args.text]
        seconds = [t.strip() for t in args.text_pair] if args.text_pair is not None else None
        if not all(firsts) or (seconds is not None and not all(seconds)):
            raise WorkflowError("--text and --text-pair need non-empty texts.")
        if seconds is not None and len(seconds) != len(firsts):
            raise WorkflowError(f"{len(firsts)} --text but {len(seconds)} --text-pair: give one --text-pair per --text.")
        texts = [join_pair(*parts) for parts in zip(firsts, seconds)] if seconds is not None else firsts
    else:
        if args.text_pair is not None:
            raise WorkflowError("--text-pair goes with --text; a --file gives its second texts in a column "
                                "(--text-pair-column).")
        texts = list(load_file(args.file, args.text_column, label_column=None, text_pair_column=args.text_pair_column).texts)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    classifier = load_classifier(args.folder, model=args.model, device=args.device)  # it knows the kind it reads
    proba = classifier.predict_proba(texts)
    for text, row in zip(texts, proba):
        parts = text.split(PAIR_SEPARATOR, 1)  # a pair: text, text_pair
        best = int(row.argmax())
        label = classifier.label_names[best]
        if args.json:
            print(json.dumps({"text": parts[0], **({"text_pair": parts[1]} if len(parts) == 2 else {}), "label": label,
                              "score": round(float(row[best]), 6),
                              "probabilities": {n: round(float(v), 6) for n, v in zip(classifier.label_names, row)}}))
        else:
            # one line per text (a pair's two texts tab-separated): tabs and line breaks inside a text are written
            # as \t, \n (--json keeps them exact)
            print("\t".join([label, f"{row[best]:.4f}", *(part.translate(_ONE_LINE) for part in parts)]))
    return 0


def _add_push(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "push",
        help="upload a saved adapter and its model card to the Hugging Face Hub",
        description="Upload exactly the Hub files of a saved folder (PEFT adapters: adapter_config.json, "
        "adapter_model.safetensors, README.md) to REPO_ID in one commit, which also deletes the model files (weights, "
        "configs and tokenizer files) an earlier push left there; other files stay. Uses the token of `hf auth login` or HF_TOKEN. The only "
        "hf_lowdata command that needs a network.",
    )
    p.add_argument("folder", type=Path, help="the saved folder")
    p.add_argument("repo_id", help="Hub repository, e.g. your-name/sst2-lora")
    p.add_argument("--private", action="store_true", help="create the repository as private")
    p.add_argument("--dry-run", action="store_true",
                   help="list what would be uploaded and deleted (reading the repository's file list when online); "
                   "change nothing")
    p.set_defaults(func=_run_push)


def _run_push(args: argparse.Namespace) -> int:
    from .hub import push_adapter

    result = push_adapter(args.folder, args.repo_id, private=args.private, dry_run=args.dry_run)
    head = "Would upload" if result.dry_run else "Uploaded"
    print(f"{head} {len(result.files)} files ({result.total_bytes / 1024:,.1f} KiB) to {result.repo_id}:")
    for name, size in zip(result.files, result.file_bytes):
        print(f"  {name}  ({size:,} bytes)")
    if result.deleted:
        print(f"{'Would delete' if result.dry_run else 'Deleted'} {len(result.deleted)} files of an earlier push "
              "that the folder does not hold:")
        for name in result.deleted:
            print(f"  {name}")
    elif result.deleted is None:
        print(f"note: could not read {result.repo_id} (offline or unreachable), so the files an earlier push left "
              "there are not listed; a push deletes the model files (weights, configs, tokenizer files) the folder "
              "does not hold.",
              file=sys.stderr)
    if result.url:
        print(f"Done: {result.url}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-lowdata", description="Few-label fine-tuning with PEFT methods.")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_bench(sub)
    lm = sub.add_parser("methods", help="list the available methods")
    lm.set_defaults(func=_list_methods)
    _add_train(sub)
    _add_predict(sub)
    _add_push(sub)
    return parser


def hide_upstream_deprecation_noise() -> None:
    """Hide a deprecation warning that a command's user can do nothing about (the CLI and demo only).

    PEFT 0.21 reads transformers 5's deprecated ``is_gradient_checkpointing`` on every
    ``get_peft_model``, so each trained method printed a FutureWarning into the progress bar. The
    library itself leaves the process's warning filters alone; other warnings are untouched.
    """
    warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)


def short_warning_format(command: str) -> Any:
    """A ``warnings.formatwarning`` that prints warnings about the user's data (:class:`~hf_lowdata.data.DataWarning`)
    as ``hf-lowdata COMMAND: warning: MESSAGE``, the way errors are printed: Python's default shows the library's
    file, line and source line, which say nothing to a command's user. Other warnings (a library's deprecation, ...)
    keep the default format, category and origin included."""
    from .data import DataWarning

    original = warnings.formatwarning

    def formatwarning(message, category, filename, lineno, line=None):  # noqa: ANN001 - warnings' signature
        if issubclass(category, DataWarning):
            return f"hf-lowdata {command}: warning: {message}\n"
        return original(message, category, filename, lineno, line)

    return formatwarning


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    hide_upstream_deprecation_noise()
    parser = build_parser()
    args = parser.parse_args(argv)
    processes = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if processes > 1 and args.command in {"train", "bench"}:
        print(f"hf-lowdata {args.command}: error: this command runs as one process, but it was started as {processes} "
              "(torchrun / accelerate launch): each would write the same output. Run it without the launcher; for "
              "multi-GPU training, use LowDataTrainer in your own script under accelerate launch (README, "
              "'The methods').", file=sys.stderr)
        return 2
    import hf_lowdata  # noqa: F401  (registers the PEFT methods before anything loads an adapter)

    from .bench import BenchError
    from .bench.results import OutputFolderBusyError
    from .data import DataError
    from .methods import MethodConfigError
    from .models import ModelNotFoundError
    from .training import NonFiniteLossError
    from .workflow import WorkflowError

    plain_format, warnings.formatwarning = warnings.formatwarning, short_warning_format(args.command)
    try:
        return int(args.func(args) or 0)
    except (BenchError, DataError, ModelNotFoundError, WorkflowError, NonFiniteLossError, OutputFolderBusyError,
            MethodConfigError, argparse.ArgumentTypeError) as err:
        print(f"hf-lowdata {args.command}: error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # noqa: BLE001 - a one-line message; HF_LOWDATA_DEBUG=1 shows the traceback
        if os.environ.get("HF_LOWDATA_DEBUG"):
            raise
        print(f"hf-lowdata {args.command}: error: {type(err).__name__}: {err}\n(an unexpected failure, often a "
              "setting the library underneath rejects, such as --config r=0; run with HF_LOWDATA_DEBUG=1 for the "
              "traceback)", file=sys.stderr)
        return 1
    finally:
        warnings.formatwarning = plain_format


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
