"""The ``locatlas`` command line: one subcommand per workflow step.

Every Snakemake rule is a thin call of one of these. Options that carry a stage's
scientific parameters take them as one JSON object (``--params``), exactly the
config section the rule passes, so the CLI and the workflow never disagree.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import logging
import sys
from collections.abc import Sequence

from . import __version__


def _json(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"--params is not valid JSON: {err}") from err
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("--params must be a JSON object")
    return value


def _add(sub, name: str, help: str) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help, description=help)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="locatlas", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"locatlas {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = _add(sub, "simulate", "Simulate an HPA-style atlas with ground truth.")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--preset", default="demo")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--params", type=_json, default={}, help="write_atlas overrides (JSON)")

    p = _add(sub, "validate-config", "Validate a config file against the schema.")
    p.add_argument("config")

    p = _add(sub, "ingest", "Sample sheet or folder -> sharded manifest + quarantine.")
    p.add_argument("--samples", required=True)
    p.add_argument("--pattern", default=None)
    p.add_argument("--out-dir", required=True)
    p.add_argument("--shard-size", type=int, required=True)
    p.add_argument(
        "--params", type=_json, default={}, help="the config's `channels` and `ingest` sections"
    )

    p = _add(sub, "flatfield", "Fit a plate's flat-field from a sample of its fields.")
    p.add_argument("--shard-manifests", nargs="+", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--params", type=_json, default={})

    p = _add(sub, "normalize", "Write one shard's fields to OME-Zarr with QC.")
    p.add_argument("--shard-manifest", required=True)
    p.add_argument("--zarr-root", required=True)
    p.add_argument("--flatfield", default=None)
    p.add_argument("--receipt", required=True)
    p.add_argument("--quarantine", required=True)
    p.add_argument("--params", type=_json, default={})
    p.add_argument("--threads", type=int, default=1)

    p = _add(sub, "plate-metadata", "Write HCS plate/well metadata after the plate's shards.")
    p.add_argument("--zarr-root", required=True)
    p.add_argument("--plate", required=True)
    p.add_argument("--shard-manifests", nargs="+", required=True)
    p.add_argument("--receipts", nargs="+", required=True)
    p.add_argument("--out", required=True)

    p = _add(sub, "clear", "Remove out-of-focus haze from one shard's fields.")
    p.add_argument("--normalize-receipt", required=True)
    p.add_argument("--receipt", required=True)
    p.add_argument("--params", type=_json, default={})
    p.add_argument("--threads", type=int, default=1)

    p = _add(sub, "segment", "Segment one shard's fields; per-cell table and crops.")
    p.add_argument("--clear-receipt", required=True)
    p.add_argument("--shard-manifest", required=True)
    p.add_argument("--cells", required=True)
    p.add_argument("--crops", required=True)
    p.add_argument("--receipt", required=True)
    p.add_argument("--params", type=_json, default={})
    p.add_argument("--threads", type=int, default=1)

    p = _add(sub, "train", "Train the localization model on labelled shards.")
    p.add_argument("--cells", nargs="+", required=True)
    p.add_argument("--crops", nargs="+", required=True)
    p.add_argument("--out-dir", required=True)
    p.add_argument("--params", type=_json, default={})
    p.add_argument("--threads", type=int, default=1)

    p = _add(sub, "localize", "Per-cell localization and embeddings for one shard.")
    p.add_argument("--cells", required=True)
    p.add_argument("--crops", required=True)
    p.add_argument("--model", required=True, help="model package folder")
    p.add_argument("--out", required=True)
    p.add_argument("--embeddings", required=True)
    p.add_argument("--params", type=_json, default={})
    p.add_argument("--threads", type=int, default=1)

    p = _add(sub, "evaluate", "Compare segmentation and localization with ground truth.")
    p.add_argument("--segment-receipts", nargs="+", required=True)
    p.add_argument("--clear-receipts", nargs="+", required=True)
    p.add_argument("--cells", nargs="+", required=True)
    p.add_argument("--localization", nargs="+", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--truth", required=True)
    p.add_argument("--out-dir", required=True)
    p.add_argument("--params", type=_json, default={})

    p = _add(sub, "aggregate", "Build the atlas: tables, statistics, maps, AnnData, report.")
    p.add_argument("--cells", nargs="+", required=True)
    p.add_argument("--localization", nargs="+", required=True)
    p.add_argument("--embeddings", nargs="+", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--out-dir", required=True)
    p.add_argument("--crops", nargs="+", default=[], help="crop stores, for the QC montage")
    p.add_argument("--quarantine", nargs="+", default=[])
    p.add_argument("--normalize-receipts", nargs="+", default=[])
    p.add_argument("--segment-receipts", nargs="+", default=[])
    p.add_argument("--evaluation", default=None)
    p.add_argument("--training", default=None)
    p.add_argument("--clearing-figure", default=None)
    p.add_argument("--truth", default=None)
    p.add_argument("--reference", default=None)
    p.add_argument("--params", type=_json, default={})
    p.add_argument("--config-hash", default="")

    p = _add(
        sub, "clear-example", "Clear a widefield z-stack file and write a before/after figure."
    )
    p.add_argument("--image", required=True, help="TIFF z-stack (Z, Y, X)")
    p.add_argument("--psf", required=True, help="JSON with pixel/z size, NA, wavelength, index")
    p.add_argument("--figure", required=True)
    p.add_argument("--params", type=_json, default={})
    p = _add(sub, "watch", "Process new acquisitions as they land (continuous mode).")
    p.add_argument("--samples", required=True, help="the sample sheet or folder being filled")
    p.add_argument("--workdir", default=".", help="where the workflow runs")
    p.add_argument("--interval", type=float, default=60.0, help="seconds between polls")
    p.add_argument(
        "--settle", type=float, default=30.0, help="seconds the input must stay unchanged"
    )
    p.add_argument(
        "snakemake_args", nargs=argparse.REMAINDER, help="arguments for snakemake, after --"
    )
    return parser


#: The modules each per-field job imports (most of them lazily, inside the job code).
#: Imported up front with the cyclic garbage collector paused, then frozen: torch alone
#: makes ~10^5 long-lived objects, and the collections that its import triggers, and
#: every later full collection that walks them again, cost 0.1-0.5 CPU s per job.
JOB_MODULES = {
    "normalize": ("locatlas.jobs.normalize", "locatlas.normalize", "locatlas.omezarr"),
    "flatfield": ("locatlas.jobs.normalize", "locatlas.normalize"),
    "plate-metadata": ("locatlas.jobs.normalize", "locatlas.omezarr"),
    "clear": ("torch", "locatlas.jobs.clear", "locatlas.clearing", "locatlas.omezarr"),
    "segment": ("locatlas.jobs.segment", "locatlas.segment", "locatlas.omezarr"),
    "localize": ("torch", "locatlas.jobs.localize", "locatlas.localize"),
    "train": ("torch", "locatlas.jobs.localize", "locatlas.localize"),
}


def preload(command: str) -> None:
    """Import ``command``'s modules without cyclic collections, then freeze what they made.

    Frozen objects are never collected; module-level state lives for the whole process
    anyway. Collections stay on for the job itself (its per-field garbage).
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        for name in JOB_MODULES.get(command, ()):
            importlib.import_module(name)
    finally:
        gc.freeze()
        if was_enabled:
            gc.enable()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .allocator import keep_freed_memory
    from .jobs.common import log_resources, setup_logging

    keep_freed_memory()  # before the first field's arrays

    setup_logging(logging.DEBUG if args.verbose else logging.INFO)
    preload(args.command)
    handler = _HANDLERS[args.command]
    result = handler(args)
    log_resources()  # what the job cost, for sizing cluster requests
    return int(result or 0)


def _simulate(a):
    from .simulate import write_atlas

    print(write_atlas(a.out, preset=a.preset, seed=a.seed, **a.params))


def _validate_config(a):
    from .config import ConfigError, load_config

    try:
        load_config(a.config)
    except ConfigError as err:
        print(f"{a.config}: {err}", file=sys.stderr)
        return 2
    print(f"{a.config}: valid")
    return 0


def _ingest(a):
    from .jobs.ingest import run_ingest

    run_ingest(
        a.samples,
        a.out_dir,
        pattern=a.pattern,
        roles_override=a.params.get("channels", {}).get("roles") or None,
        pixel_size_um=a.params.get("channels", {}).get("pixel_size_um"),
        shard_size=a.shard_size,
        limits=a.params.get("ingest"),
    )


def _flatfield(a):
    from .jobs.normalize import run_flatfield

    run_flatfield(a.shard_manifests, a.out, params=a.params)


def _normalize(a):
    from .jobs.normalize import run_normalize

    run_normalize(
        a.shard_manifest,
        a.zarr_root,
        a.receipt,
        a.quarantine,
        params=a.params,
        flatfield=a.flatfield,
        threads=a.threads,
    )


def _plate_metadata(a):
    from .jobs.normalize import run_plate_metadata

    run_plate_metadata(a.zarr_root, a.plate, a.shard_manifests, a.receipts, a.out)


def _clear(a):
    from .jobs.clear import run_clear

    run_clear(a.normalize_receipt, a.receipt, params=a.params, threads=a.threads)


def _segment(a):
    from .jobs.segment import run_segment

    run_segment(
        a.clear_receipt,
        a.shard_manifest,
        a.cells,
        a.crops,
        a.receipt,
        params=a.params,
        threads=a.threads,
    )


def _train(a):
    from .jobs.localize import run_train

    run_train(a.cells, a.crops, a.out_dir, params=a.params, threads=a.threads)


def _localize(a):
    from .jobs.localize import run_localize

    run_localize(a.cells, a.crops, a.model, a.out, a.embeddings, params=a.params, threads=a.threads)


def _evaluate(a):
    from .jobs.evaluate import run_evaluate

    run_evaluate(
        a.segment_receipts,
        a.clear_receipts,
        a.cells,
        a.localization,
        a.model,
        a.truth,
        a.out_dir,
        classes_path=a.params.get("classes"),
    )


def _aggregate(a):
    from .jobs.aggregate import run_aggregate, workflow_sections

    sections = workflow_sections(
        quarantine_paths=a.quarantine,
        normalize_receipts=a.normalize_receipts,
        segment_receipts=a.segment_receipts,
        evaluation_dir=a.evaluation,
        training_dir=a.training,
        clearing_figure=a.clearing_figure,
        config_hash=a.config_hash,
    )
    run_aggregate(
        a.cells,
        a.localization,
        a.embeddings,
        a.out_dir,
        model_dir=a.model,
        params=a.params,
        classes_path=a.params.get("classes"),
        reference=a.reference,
        truth_dir=a.truth,
        sections=sections,
        crops_paths=a.crops,
    )


def _clear_example(a):
    from .jobs.clear_example import run_clear_example

    run_clear_example(a.image, a.psf, a.figure, params=a.params)


def _watch(a):
    from .watch import watch

    args = list(a.snakemake_args)
    if args[:1] == ["--"]:  # only the separator; a later "--" belongs to snakemake
        args = args[1:]
    watch(
        a.samples, snakemake_args=args, workdir=a.workdir, interval_s=a.interval, settle_s=a.settle
    )


_HANDLERS = {
    "watch": _watch,
    "simulate": _simulate,
    "validate-config": _validate_config,
    "ingest": _ingest,
    "flatfield": _flatfield,
    "normalize": _normalize,
    "plate-metadata": _plate_metadata,
    "clear": _clear,
    "segment": _segment,
    "train": _train,
    "localize": _localize,
    "evaluate": _evaluate,
    "aggregate": _aggregate,
    "clear-example": _clear_example,
}


if __name__ == "__main__":
    sys.exit(main())
