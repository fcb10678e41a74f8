"""A tiny stand-in for the WD tagger, built in code with the `onnx` package: the real model's signature
(input `input`, NHWC float32 [batch, side, side, 3] in BGR 0-255; output `output`, float32 [batch, N]
probabilities in selected_tags.csv order), written as `model.onnx` + `selected_tags.csv` in the hub
repo's layout. Its scores are a fixed function of the image's mean colour after the tagger's own
preprocessing (padding on white, resizing), so tests choose what it sees:

- white (or a transparent image, or the white padding): rating general, `1girl`, `solo`, `smile`
- pure red: rating explicit, `1girl`, `solo`
- pure blue: rating general, `1girl`, `solo`, and the character `ganyu_(genshin_impact)`
- always: `hatsune_miku` (character) scores 0.6, between the default thresholds (0.35 general, 0.85
  character), so it shows only when the character threshold is lowered; `looking_at_viewer` scores 0.02.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from inference.tagger import MODEL_FILE, TAGS_FILE

# name, category, bias, weights on the mean (blue, green, red) in 0..1: score = sigmoid(bias + w·mean).
TINY_TAGS: tuple[tuple[str, int, float, tuple[float, float, float]], ...] = (
    ("general", 9, 4.0, (4.0, 4.0, -8.0)),
    ("sensitive", 9, -2.0, (0.0, 0.0, 0.0)),
    ("questionable", 9, -3.0, (0.0, 0.0, 0.0)),
    ("explicit", 9, -4.0, (-4.0, -4.0, 8.0)),
    ("1girl", 0, 4.0, (0.0, 0.0, 0.0)),
    ("solo", 0, 3.0, (0.0, 0.0, 0.0)),
    ("smile", 0, -4.0, (0.0, 8.0, 0.0)),
    ("looking_at_viewer", 0, -4.0, (0.0, 0.0, 0.0)),
    ("ganyu_(genshin_impact)", 4, -6.0, (12.0, -6.0, -6.0)),
    ("hatsune_miku", 4, 0.405, (0.0, 0.0, 0.0)),
)


def write_tiny_tagger(folder: Path, side: int = 448) -> Path:
    """Write model.onnx and selected_tags.csv into `folder` (created) and return it."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    folder.mkdir(parents=True, exist_ok=True)
    count = len(TINY_TAGS)
    weights = np.array([w for _, _, _, w in TINY_TAGS], dtype=np.float32).T / 255.0  # (3, N), on 0-255 input
    bias = np.array([b for _, _, b, _ in TINY_TAGS], dtype=np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["input", "axes"], ["mean"], keepdims=0),  # (batch, 3)
            helper.make_node("MatMul", ["mean", "weights"], ["logits_raw"]),
            helper.make_node("Add", ["logits_raw", "bias"], ["logits"]),
            helper.make_node("Sigmoid", ["logits"], ["output"]),
        ],
        "tiny_wd_tagger",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", side, side, 3])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", count])],
        initializer=[
            numpy_helper.from_array(np.array([1, 2], dtype=np.int64), "axes"),
            numpy_helper.from_array(weights, "weights"),
            numpy_helper.from_array(bias, "bias"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8  # read by every onnxruntime of the last years
    onnx.checker.check_model(model)
    onnx.save(model, str(folder / MODEL_FILE))
    with (folder / TAGS_FILE).open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["tag_id", "name", "category", "count"])
        for i, (name, category, _, _) in enumerate(TINY_TAGS):
            writer.writerow([1000 + i, name, category, 100 * (count - i)])
    return folder
