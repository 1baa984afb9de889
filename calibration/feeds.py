"""Feeds: one rewindable source of input batches for calibration, accuracy checks and timing.

Synthetic feeds are drawn from a model's input specs (valid ids, images in range); a user's ``.npz`` file
replaces them, after a check that its arrays match the model's inputs by name, shape and dtype, and that its ids
fit the tables they index (``id_range``).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import numpy as np

from common.hashing import sha256_file
from models import InputSpec


class FeedError(ValueError):
    """Calibration or input data that does not fit the model's inputs."""


class Feeds:
    """A fixed list of input batches (each a dict name -> array) holding ``samples`` samples in all, that can be
    iterated any number of times.

    It also speaks ONNX Runtime's ``CalibrationDataReader`` protocol (``get_next`` returning a batch or
    None, plus ``set_range`` and ``len`` for strided calibration) so the same object feeds the quantizer.
    """

    def __init__(self, batches: list[dict[str, np.ndarray]], origin: str, digest: str, samples: int | None = None):
        if not batches:
            raise FeedError(f"{origin}: no batches")
        self.batches = batches
        # Counted on the first axis where not given: the batch axis of every catalogue model's inputs.
        self.samples = samples if samples is not None else sum(next(iter(b.values())).shape[0] for b in batches)
        self.origin = origin
        self.digest = digest
        self._range = (0, len(batches))
        self._cursor = 0

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        """The next batch of the current range, or None at its end (then the reader rewinds)."""
        start, end = self._range
        if start + self._cursor >= end:
            self._cursor = 0
            return None
        batch = self.batches[start + self._cursor]
        self._cursor += 1
        return batch

    def set_range(self, start_index: int, end_index: int) -> None:
        """Limit ``get_next`` to batches [start_index, end_index): ORT's strided calibration calls this."""
        self._range = (start_index, min(end_index, len(self.batches)))
        self._cursor = 0

    def rewind(self) -> None:
        """Start over from the first batch of the whole list."""
        self.set_range(0, len(self.batches))


def synthetic_feeds(
    specs: list[InputSpec],
    samples: int,
    batch: int,
    seed: int,
    sampler: Callable[[int, np.random.Generator], dict[str, np.ndarray]] | None = None,
) -> Feeds:
    """``samples`` seeded samples cut into batches of at most ``batch``: drawn by ``sampler(batch, rng)``
    when given (a model's own sampler), else by each input spec."""
    rng = np.random.default_rng(seed)
    batches = []
    left = samples
    while left > 0:
        size = min(batch, left)
        batches.append(sampler(size, rng) if sampler else {s.name: s.sample(rng, size) for s in specs})
        left -= size
    digest = hashlib.sha256(repr((sorted(s.describe() for s in specs), samples, batch, seed)).encode()).hexdigest()
    return Feeds(batches, f"synthetic(seed={seed}, samples={samples})", digest, samples)


def id_range(spec: InputSpec) -> tuple[int, int] | None:
    """The values [low, high) that real data for an integer input of a catalogue model may hold, or None when the
    spec does not say (floats, or sampling ranges that start elsewhere).

    An InputSpec's low/high are where synthetic data is drawn from, not always the valid values: ids are drawn
    from [0, table size), so there they are the same; masks and lengths are drawn from [1, high) (bert's
    attention mask is all ones, a history is never empty) while real data holds 0 as well, and still stays
    below ``high``. So an integer input drawn from [0, high) or [1, high) is valid in [0, high): an id outside
    it makes ONNX Runtime's Gather fail deep inside calibration, or reads another row of a table.
    """
    if not np.issubdtype(np.dtype(spec.dtype), np.integer) or spec.low not in (0, 1):
        return None
    return 0, int(spec.high)


def _take(array: np.ndarray, axis: int | None, start: int, stop: int) -> np.ndarray:
    """Samples [start, stop) of ``array`` along its batch ``axis``; an input without one is the whole array."""
    if axis is None:
        return array
    return array[(slice(None),) * axis + (slice(start, stop),)]


def file_feeds(
    path: Path, specs: list[InputSpec], batch: int, samples: int | None = None, check_ranges: bool = True
) -> Feeds:
    """Read a user's ``.npz`` (one array per input name, samples along the input's batch axis: the first for
    every catalogue model) and cut it into batches.

    Every input name must be present with the model's per-sample shape and dtype (ints may be any integer
    width and are converted; floats likewise); an input without a batch axis holds its one array, fed to every
    batch. With ``check_ranges`` every integer input's values must lie in its ``id_range`` (pass False for
    specs whose ranges are guesses, such as a brought-in model's). Raises FeedError with the mismatch and the
    expected layout or range.
    """
    expected = ", ".join(s.describe() for s in specs)
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [s.name for s in specs if s.name not in data.files]
            if missing:
                raise FeedError(
                    f"{path} lacks inputs {missing} (it has {sorted(data.files)}); expected arrays {expected}"
                )
            _check_sizes(path, data, [s.name for s in specs])
            # Only the model's arrays are read: others in the file (however large) are never unpacked.
            arrays = {s.name: data[s.name] for s in specs}
    except FeedError:
        raise
    except FileNotFoundError:
        raise FeedError(f"input data {path} does not exist") from None
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
        raise FeedError(f"cannot read {path} as .npz ({exc}); expected arrays {expected}") from None
    count = None
    for spec in specs:
        array, axis = arrays[spec.name], spec.batch_axis
        want = tuple("N" if d == "batch" else d for d in spec.shape)
        if array.ndim != len(spec.shape) or any(
            d != "N" and got != d for got, d in zip(array.shape, want, strict=True)
        ):
            raise FeedError(
                f"{path}: array {spec.name!r} has shape {array.shape}, expected ({', '.join(map(str, want))})"
            )
        want_int = np.issubdtype(np.dtype(spec.dtype), np.integer)
        if np.issubdtype(array.dtype, np.integer) != want_int or not (
            want_int or np.issubdtype(array.dtype, np.floating) or array.dtype == np.dtype(spec.dtype)
        ):
            raise FeedError(f"{path}: array {spec.name!r} has dtype {array.dtype}, expected {spec.dtype}")
        if axis is None:
            continue
        if count is not None and array.shape[axis] != count:
            raise FeedError(f"{path}: arrays have different sample counts ({count} vs {array.shape[axis]})")
        count = array.shape[axis]
    if count is None:
        count = 1  # no input has a batch axis: the file is one sample
    if not count:
        raise FeedError(f"{path} holds no samples")
    for spec in specs if check_ranges else ():
        valid = id_range(spec)
        array = arrays[spec.name]
        # Checked before the arrays are cast to the model's dtype, which could wrap a too-large value into range.
        if valid is None or (array.min() >= valid[0] and array.max() < valid[1]):
            continue
        table = f" (it indexes a table of {valid[1]})" if spec.low == 0 else ""
        raise FeedError(
            f"{path}: array {spec.name!r} holds values from {array.min()} to {array.max()}, outside the valid range "
            f"{valid[0]} to {valid[1] - 1}{table}"
        )
    count = min(count, samples) if samples else count
    batches = []
    for start in range(0, count, batch):
        stop = min(start + batch, count)
        batches.append(
            {
                s.name: np.ascontiguousarray(_take(arrays[s.name], s.batch_axis, start, stop), dtype=s.dtype)
                for s in specs
            }
        )
    return Feeds(batches, f"file({path}, samples={count})", sha256_file(Path(path)), count)


def _check_sizes(path: Path, data, names: list[str]) -> None:
    """Raise FeedError when the arrays ``names`` of the open .npz ``data`` would take more than half the memory
    free now, read from their headers before any is unpacked (a few MB of compressed zeros can declare GBs)."""
    import psutil

    declared = 0
    for name in names:
        with data.zip.open(f"{name}.npy") as member:
            version = np.lib.format.read_magic(member)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read(member)
        declared += math.prod(shape) * dtype.itemsize
    free = psutil.virtual_memory().available
    if declared > free / 2:
        raise FeedError(
            f"{path}: the model's arrays hold {declared / 2**30:.1f} GiB unpacked, more than half the "
            f"{free / 2**30:.1f} GiB of memory free; give a file with fewer samples"
        )


def carry_state(feeds: Feeds, model: Path, pairs: Mapping[str, str]) -> Feeds:
    """``feeds`` as a stream sees them: each batch's state inputs replaced by what ``model`` (the FP32 file, on
    ONNX Runtime CPU) returned for them on the batch before (``pairs``: output -> input), from the first
    batch's own state. A stream's calibration must see the states the stream carries, not only its zero start:
    an INT8 range calibrated on zeros alone clips every later state to nothing. A batch whose size differs from
    the one before starts from its own state again."""
    from common.ort_session import cpu_session

    session = cpu_session(model)
    names = [o.name for o in session.get_outputs()]
    state: dict[str, np.ndarray] = {}
    carried = []
    for batch in feeds.batches:
        fed = {**batch, **{k: v for k, v in state.items() if v.shape == batch[k].shape}}
        outputs = dict(zip(names, session.run(None, fed), strict=True))
        state = {name: outputs[output] for output, name in pairs.items()}
        carried.append(fed)
    return Feeds(carried, f"{feeds.origin}, streamed", feeds.digest, feeds.samples)
