"""What the run knows of a model before timing it, made once per FP32 file in a child process and cached in
the store: FLOPs, parameters and bytes at each batch size (``count_flops``), and the FP32 reference outputs
every cell's accuracy is judged against (``reference_outputs``)."""

from __future__ import annotations

import json

import numpy as np

from bench.inputs import ACCURACY_SEED, accuracy_feeds, run_batches, timing_feeds


def count_flops(model: str, size: str, batches: list[int]) -> dict[int, dict]:
    """FLOPs, params and bytes of the stored FP32 artifact at each batch size: ``{batch: {column: value}}``.

    Cached next to it under the artifact's sha256; the cache is used only while its own bytes match the
    sha256 the manifest recorded for it, and is recounted otherwise.

    Inputs take the shapes of the timed feeds at each batch size, so graphs with dynamic dimensions besides
    the batch (brought-in ONNX models) are counted at the shapes that are measured."""
    from analysis.flops import count
    from common.source_hash import source_digest
    from onnx_models import model_spec
    from onnx_models.store import ModelStore

    store = ModelStore(model, size)
    path = store.verified_path("fp32")
    spec = model_spec(model)

    # Keyed by the file and by the counting rules' source: a changed rule recounts instead of reusing.
    cache = f"flops-{store.entry('fp32')['sha256'][:16]}-{source_digest('analysis.flops', 'common.graphs')[:8]}.json"
    known = _read_json_cache(store, cache)
    missing = [b for b in batches if "activation_bytes" not in known.get(str(b), {})]
    if missing:
        import onnx

        from common.graphs import fold_fixed_ifs

        # An If decided by an input fixed with --input-values (a sample rate) counts as the branch that runs;
        # only the fixed inputs reach its condition, so it is resolved once, on any batch's feeds.
        fixed = [s.name for s in spec.input_specs(size) if s.value is not None]
        graph, _ = fold_fixed_ifs(onnx.load(str(path)), timing_feeds(spec, size, missing[0]), fixed)
        for batch in missing:
            feeds = timing_feeds(spec, size, batch)
            cost = count(graph, batch, {name: array.shape for name, array in feeds.items()}, feeds)
            known[str(batch)] = {
                "flops_per_batch": cost.flops,
                "mac_flops_per_batch": cost.mac_flops,
                "params": cost.params,
                "weight_bytes": cost.weight_bytes,
                "io_bytes": cost.io_bytes,
                "activation_bytes": cost.activation_bytes,
                "uncounted_ops": sorted(cost.uncounted),
                "unknown_shapes": len(cost.unknown_shapes),
            }
        text = json.dumps(known, indent=1, sort_keys=True)
        store.write_cache(cache, lambda tmp: tmp.write_text(text))
        store.update(params=known[str(missing[0])]["params"])
    return {b: known[str(b)] for b in batches}


def _read_json_cache(store, name: str) -> dict:
    """The JSON object in cache ``name`` of ``store`` if the manifest vouches for its bytes and it parses; else
    {} (and the file is deleted), so the caller counts again."""
    path = store.verified_cache(name)
    if path is None:
        return {}
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = None
    if isinstance(known, dict):
        return known
    path.unlink(missing_ok=True)
    return {}


def reference_outputs(model: str, size: str, batch: int, samples: int) -> str:
    """FP32 ONNX Runtime CPU outputs on the accuracy inputs, cached in the store; returns the .npz path, whose
    bytes match the sha256 recorded in the manifest when it was written."""
    from analysis.accuracy import concat
    from common.hashing import cache_key
    from common.packages import onnxruntime_version
    from engines.ort_cpu import OrtCpuEngine
    from onnx_models import model_spec
    from onnx_models.artifacts import output_batch_axes
    from onnx_models.store import ArtifactError, ModelStore

    store = ModelStore(model, size)
    fp32 = store.verified_path("fp32")
    # A brought-in INT8 file without an FP32 form is stored as it is: its outputs would score the file against
    # itself, and its int8 cell would claim all of an accuracy never measured.
    no_fp32 = store.entry("fp32").get("no_fp32")
    if no_fp32:
        raise ArtifactError(f"no FP32 reference: {no_fp32}")
    spec = model_spec(model)
    # The outputs depend on the file, on the inputs (the model's sampler code and the accuracy seed) and on the
    # ONNX Runtime that computed them.
    axes = output_batch_axes(spec, size)
    inputs = cache_key(sampler=spec.code_digest(), seed=ACCURACY_SEED, onnxruntime=onnxruntime_version(), axes=axes)
    name = f"reference-{store.entry('fp32')['sha256'][:16]}-{inputs[:8]}-b{batch}-n{samples}.npz"
    # Only a file whose sha256 the manifest recorded is used: a truncated one would fail every cell, an edited
    # one would move every accuracy number. Anything else is deleted and computed again.
    path = store.verified_cache(name)
    if path is not None:
        return str(path)
    with OrtCpuEngine() as engine:
        engine.activate(fp32)
        outputs = concat(run_batches(engine, spec, size, accuracy_feeds(spec, size, batch, samples)), axes)
    return str(store.write_cache(name, lambda tmp: np.savez(tmp, **outputs)))
