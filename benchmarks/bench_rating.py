"""What the rating check of one result image costs on this CPU, with a real-size tagger (run by hand; prints
figures, asserts nothing).

    python benchmarks/bench_rating.py [--samples 5] [--threads 0] [--keep FOLDER]

No hub is reachable here, so the WD ViT tagger v3 is stood in for by a model built in code with its
architecture's size: ViT-B/16 at 448x448 (patch embedding, 12 pre-norm blocks of 12-head attention and a
3072-wide MLP, 784 patches + a class token, a 10,861-tag sigmoid head: about 95M parameters, random
weights) and the real model's signature (input `input` NHWC float32 [batch, 448, 448, 3], BGR 0-255;
output `output` float32 [batch, 10861]), read through the bot's own code (inference.tagger.Tagger, the
class screening.py rates with). Random weights cost what trained ones do: the same matrix products.

Printed: building the stand-in (not a user's cost), the cold load (onnxruntime session from the file, what
the start-up preload does once), the first rating after the load, and the warm per-image cost at 1024x1024
and 832x1216 (Animagine/Anima sizes) split into preprocessing (pad, bicubic resize, BGR float32) and the
onnxruntime run, as the median of --samples. The model file (~380 MB) is written to a temporary folder and
deleted afterwards unless --keep names a folder (never commit it). Figures depend on the machine and on what
else it runs (the load average is printed first).
"""

from __future__ import annotations

import argparse
import csv
import functools
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from measure import median_seconds  # benchmarks/measure.py
from PIL import Image

from inference.tagger import MODEL_FILE, TAGS_FILE, Tagger, prepare_image

SIDE, PATCH, WIDTH, DEPTH, HEADS, MLP = 448, 16, 768, 12, 12, 3072
TAGS = 10861  # the v3 taggers' selected_tags.csv rows: 4 ratings, general tags, characters


def build_vit_tagger(folder: Path, seed: int = 0) -> tuple[Path, int]:
    """model.onnx (ViT-B/16 at 448, random weights) and a selected_tags.csv of TAGS rows in `folder`;
    the folder and the parameter count."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes: list[Any] = []
    inits: list[Any] = []
    params = 0

    def weight(name: str, *shape: int, value: float | None = None) -> str:
        nonlocal params
        if value is None:
            array = (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float32)
        else:
            array = np.full(shape, value, dtype=np.float32)
        params += array.size
        inits.append(numpy_helper.from_array(array, name))
        return name

    def const(name: str, values: list[int]) -> str:
        inits.append(numpy_helper.from_array(np.array(values, dtype=np.int64), name))
        return name

    def node(op: str, inputs: list[str], output: str, **attrs: Any) -> str:
        nodes.append(helper.make_node(op, inputs, [output], **attrs))
        return output

    def layer_norm(x: str, name: str) -> str:
        return node(
            "LayerNormalization", [x, weight(f"{name}.w", WIDTH, value=1.0), weight(f"{name}.b", WIDTH, value=0.0)],
            f"{name}.out", axis=-1, epsilon=1e-6,
        )

    def linear(x: str, name: str, n_in: int, n_out: int) -> str:
        y = node("MatMul", [x, weight(f"{name}.w", n_in, n_out)], f"{name}.mm")
        return node("Add", [y, weight(f"{name}.b", n_out, value=0.0)], f"{name}.out")

    tokens = (SIDE // PATCH) ** 2
    const("axis0", [0])
    head_dim = WIDTH // HEADS
    x = node("Transpose", ["input"], "nchw", perm=[0, 3, 1, 2])
    x = node("Conv", [x, weight("patch.w", WIDTH, 3, PATCH, PATCH), weight("patch.b", WIDTH, value=0.0)],
             "patches", strides=[PATCH, PATCH])
    x = node("Reshape", [x, const("flat_shape", [0, WIDTH, tokens])], "patches_flat")
    x = node("Transpose", [x], "patch_tokens", perm=[0, 2, 1])  # (B, 784, 768)
    batch = node("Slice", [node("Shape", [x], "x_shape"), const("s0", [0]), const("s1", [1])], "batch")
    cls_shape = node("Concat", [batch, const("cls_rest", [1, WIDTH])], "cls_shape", axis=0)
    cls = node("Expand", [weight("cls", 1, 1, WIDTH), cls_shape], "cls_tokens")
    x = node("Concat", [cls, x], "tokens", axis=1)
    x = node("Add", [x, weight("pos", 1, tokens + 1, WIDTH)], "embedded")
    split_shape = const("split_shape", [0, tokens + 1, 3, HEADS, head_dim])
    merge_shape = const("merge_shape", [0, tokens + 1, WIDTH])
    scale = weight("scale", 1, value=head_dim**-0.5)
    for i in range(DEPTH):
        b = f"block{i}"
        h = layer_norm(x, f"{b}.ln1")
        qkv = node("Reshape", [linear(h, f"{b}.qkv", WIDTH, 3 * WIDTH), split_shape], f"{b}.qkv_split")
        qkv = node("Transpose", [qkv], f"{b}.qkv_t", perm=[2, 0, 3, 1, 4])  # (3, B, heads, T, 64)
        q, k, v = (
            node("Squeeze", [node("Gather", [qkv, const(f"{b}.i{j}", [j])], f"{b}.{n}5", axis=0), const("axis0", [0])],
                 f"{b}.{n}")
            for j, n in enumerate("qkv")
        )
        kt = node("Transpose", [k], f"{b}.kt", perm=[0, 1, 3, 2])
        scores = node("Mul", [node("MatMul", [q, kt], f"{b}.qk"), scale], f"{b}.scores")
        attn = node("MatMul", [node("Softmax", [scores], f"{b}.probs", axis=-1), v], f"{b}.attn")
        attn = node("Transpose", [attn], f"{b}.attn_t", perm=[0, 2, 1, 3])
        attn = node("Reshape", [attn, merge_shape], f"{b}.attn_merged")
        x = node("Add", [x, linear(attn, f"{b}.proj", WIDTH, WIDTH)], f"{b}.res1")
        h = linear(layer_norm(x, f"{b}.ln2"), f"{b}.fc1", WIDTH, MLP)
        erf = node("Erf", [node("Mul", [h, weight(f"{b}.rsqrt2", 1, value=2**-0.5)], f"{b}.hs")], f"{b}.erf")
        gelu = node("Mul", [node("Mul", [h, node("Add", [erf, weight(f"{b}.one", 1, value=1.0)], f"{b}.e1")],
                                 f"{b}.he"), weight(f"{b}.half", 1, value=0.5)], f"{b}.gelu")
        x = node("Add", [x, linear(gelu, f"{b}.fc2", MLP, WIDTH)], f"{b}.res2")
    x = layer_norm(x, "final_ln")
    pooled = node("ReduceMean", [x, const("token_axis", [1])], "pooled", keepdims=0)  # (B, 768)
    node("Sigmoid", [linear(pooled, "head", WIDTH, TAGS)], "output")
    graph = helper.make_graph(
        nodes, "wd_vit_tagger_v3_standin",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", SIDE, SIDE, 3])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", TAGS])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(folder / MODEL_FILE))
    with (folder / TAGS_FILE).open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["tag_id", "name", "category", "count"])
        for i, name in enumerate(("general", "sensitive", "questionable", "explicit")):
            writer.writerow([i, name, 9, 0])
        for i in range(4, TAGS):
            writer.writerow([i, f"tag_{i}", 4 if i >= TAGS - 2000 else 0, TAGS - i])
    return folder, params


def resident_mib() -> float:
    """The process's resident memory now (Linux /proc; 0 elsewhere)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0: one per core)")
    parser.add_argument("--keep", type=Path, help="write the stand-in here and keep it (never commit it)")
    args = parser.parse_args()
    threads = args.threads or "default"
    print(f"load average {os.getloadavg()[0]:.2f}; {os.cpu_count()} CPUs; onnxruntime threads {threads}")
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        folder, params = build_vit_tagger(args.keep or Path(tmp) / "wd-vit-standin")
        size = (folder / MODEL_FILE).stat().st_size
        print(f"stand-in built in {time.perf_counter() - start:.1f} s: {params / 1e6:.1f}M parameters, "
              f"{size / 2**20:.0f} MiB (not a user's cost)")
        rss_before = resident_mib()
        start = time.perf_counter()
        tagger = Tagger(folder / MODEL_FILE, folder / TAGS_FILE, threads=args.threads)
        load = time.perf_counter() - start
        rng = np.random.default_rng(0)
        sizes = ((1024, 1024), (832, 1216))
        images = {f"{w}x{h}": Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes}
        first_image = images["1024x1024"]
        start = time.perf_counter()
        tagger.tag(first_image)
        first = time.perf_counter() - start
        print(f"cold: load {load:.2f} s (session from the file), then the first rating {first:.2f} s; "
              f"total {load + first:.2f} s; resident memory +{resident_mib() - rss_before:.0f} MiB")
        print(f"{'image':>10} {'preprocess':>11} {'model run':>10} {'rating (tag)':>13}   median of {args.samples}")
        for name, image in images.items():
            batch = prepare_image(image, tagger.side)
            prep = median_seconds(functools.partial(prepare_image, image, tagger.side), args.samples)
            session_run = functools.partial(tagger.session.run, [tagger.output.name], {tagger.input.name: batch})
            run = median_seconds(session_run, args.samples)
            whole = median_seconds(functools.partial(tagger.tag, image), args.samples)
            print(f"{name:>10} {prep * 1000:>9.0f} ms {run * 1000:>7.0f} ms {whole * 1000:>10.0f} ms")

if __name__ == "__main__":
    main()
