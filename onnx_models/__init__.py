"""The artifact store: exported and converted ONNX files, one directory per model and size, one manifest each
(``onnx_models.store``); what each artifact is and how it is built or reused (``onnx_models.artifacts``); the
trained track's checkpoints and data (``onnx_models.trained``) and brought-in models (``onnx_models.byo``).

Layout: ``<root>/<model>/<size>/<artifact>.onnx`` plus ``manifest.json`` and caches. The root is
``common.paths.store_root()``: ``$AIMATRIX_STORE``, else ``store`` in the user's cache directory, never the
source tree. The store sits above the catalogue, exporters and calibration, which it calls, and below the
engines and the run pipeline."""

from __future__ import annotations

from models import ModelSpec


def model_spec(name: str) -> ModelSpec:
    """The spec of ``name``: a catalogue model, or a model brought in with ``--onnx`` and kept in the store
    (``byo/<stem>``). Unknown names raise ``models.UnknownModelError`` listing the valid ones."""
    import models
    from models.byo import PREFIX

    if name.startswith(PREFIX) and name not in models.all_models():
        from onnx_models.byo import load

        return load(name)
    return models.get_model(name)
