"""Models brought in with ``suite.py run --onnx FILE``, kept in the store: ``register`` writes the description
``models.byo.describe_onnx`` made of the file to ``<store>/byo/<stem>/spec.json`` (beside that model's
artifacts in ``<store>/byo/<stem>/<size>/``), and ``load`` rebuilds the ModelSpec from it in any process (child
processes look models up by name)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from common.paths import atomic_path, remove_owned, store_root
from models import ModelSpec, UnknownModelError
from models.byo import PREFIX, ByoError, build_spec, describe_onnx


def byo_root() -> Path:
    """The directory that holds every BYO model's entry, ``<store>/byo``: the only one ``register`` deletes in."""
    return store_root() / PREFIX.rstrip("/")


def spec_path(name: str) -> Path:
    """Where the spec of BYO model ``name`` is kept: ``<store>/<name>/spec.json``."""
    return store_root() / name / "spec.json"


def register(
    path: Path,
    input_shapes: Mapping[str, tuple[int, ...]] | None = None,
    output_batch_axes: Mapping[str, int] | None = None,
    feeds: Path | None = None,
    **inputs,
) -> ModelSpec:
    """Describe ``path`` (``models.byo.describe_onnx``, which takes ``inputs``: ``input_batch_axes``,
    ``input_values``, ``input_ranges``, ``state``), keep the description in the store for child processes,
    and return its ModelSpec. ``feeds``, an .npz of inputs for timing, accuracy and calibration, is checked
    against the inputs and recorded with its sha256.

    A store entry belongs to one file and one description of its inputs (shapes, values, ranges, feeds): when
    any changed since the last registration, the entry's artifacts and cached analyses (FLOPs, FP32 references)
    are removed first. A store that cannot be written raises ByoError naming it (and ``AIMATRIX_STORE``, which
    chooses it); so does a feeds file that does not fit.
    """
    from calibration.feeds import FeedError, file_feeds
    from common.hashing import sha256_file

    given = None
    if feeds is not None:
        feeds = Path(feeds).resolve()
        if not feeds.is_file():
            raise ByoError(f"--feeds {feeds} does not exist; give an .npz with one array per input")
        given = {"path": str(feeds), "sha256": sha256_file(feeds)}
    description = describe_onnx(path, input_shapes, output_batch_axes, feeds=given, **inputs)
    if feeds is not None:
        try:
            file_feeds(feeds, build_spec(description).input_specs("full"), 1, check_ranges=False)
        except FeedError as exc:
            raise ByoError(f"--feeds does not fit {Path(path).name}: {exc}") from None
    target = spec_path(description["name"])
    registered = target.is_file()
    try:
        old = json.loads(target.read_text()) if registered else None
    except (OSError, ValueError):  # unreadable or not JSON: registered anew
        old = None
    if old == description:
        # Registered as it is: nothing to write, so a store that has since become read-only still runs it.
        return build_spec(description)
    try:
        if registered:
            remove_owned(target.parent, byo_root())
        target.parent.mkdir(parents=True, exist_ok=True)
        # Atomic, so a child process never reads half a spec.
        with atomic_path(target) as tmp:
            tmp.write_text(json.dumps(description, indent=2, sort_keys=True))
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ByoError(
            f"cannot register {Path(path).name} in the store {store_root()}: {reason}; make it writable, or point "
            "AIMATRIX_STORE at a writable directory"
        ) from None
    return build_spec(description)


def load(name: str) -> ModelSpec:
    """The spec of a registered BYO model; raises UnknownModelError if ``name`` was never registered here."""
    path = spec_path(name)
    if not path.is_file():
        raise UnknownModelError(f"unknown model {name!r}: no {path}; bring it with suite.py run --onnx FILE")
    return build_spec(json.loads(path.read_text()))
