"""The trained track's text model (``crnn_words``, the slowest of the track to train) in a file of its own: its
tests share its training (the store is per worker process), and a file runs in one worker, so this one trains
in parallel with tests/test_trained.py instead of after it."""

from __future__ import annotations

import pytest

from tests.test_tensorrt_conformance import assert_tensorrt_artifact_passes
from tests.test_trained import assert_scored_against_labels

# Roofs cached in a private cache, so that the reports at the end of runs measure nothing.
pytestmark = pytest.mark.usefixtures("cached_peaks")


def test_the_trained_crnn_is_scored_against_labels(tmp_path):
    assert_scored_against_labels(tmp_path, "crnn_words", None, "exact_match", 0.8)  # 3 or 4 digits: chance ~1e-4


def test_the_trained_crnns_tensorrt_artifact_passes():
    assert_tensorrt_artifact_passes("crnn_words")
