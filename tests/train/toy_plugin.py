"""A test-only plugin: tiny models of each task, so the loop's tests need no real backbone.

Registered through a hand-written entry point (see conftest.py), which subprocesses started by
``accelerate launch`` find too.
"""

from __future__ import annotations

from mambaverse import BackboneSpec, hookimpl


@hookimpl
def mambaverse_backbones():
    return [
        BackboneSpec(
            "toy_classifier",
            "tests.train.toy_models:ToyClassifier",
            task="vision",
            presets={"toy_classifier_micro": {"dim": 64}},
        ),
        BackboneSpec(
            "toy_lm", "tests.train.toy_models:ToyLM", task="lm", presets={"toy_lm_micro": {}}
        ),
        BackboneSpec(
            "toy_captioner",
            "tests.train.toy_models:ToyCaptioner",
            task="vlm",
            presets={"toy_captioner_micro": {}},
        ),
    ]
