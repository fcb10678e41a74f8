"""What one /describe costs besides the model (run by hand; prints figures, asserts nothing).

    python benchmarks/bench_tagger.py [--sizes 512,2048,5000] [--samples 5] [--model FOLDER]

For a PNG upload of each size (a noisy image, so it does not compress to nothing): open_image (the
checks and the decode), prepare_image (pad, bicubic resize to 448, BGR float32) and Tagger.tag on the
tiny stand-in model (its graph is trivial: this times the code path around the model), as the median of
--samples runs, and the decoded image's size in memory (what max_pixels bounds).
With --model FOLDER (a real WD tagger: model.onnx + selected_tags.csv) the model's own run is timed too.
Figures depend on the machine and on what else it runs (the load average is printed first).
"""

from __future__ import annotations

import argparse
import functools
import io
import os
import tempfile
from pathlib import Path

import numpy as np
from measure import median_seconds  # benchmarks/measure.py
from PIL import Image

from inference.tagger import TaggerOptions, load_tagger, open_image, prepare_image
from inference.tiny.tagger import write_tiny_tagger


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="512,2048,5000")
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--model", type=Path, help="a real WD tagger folder (model.onnx + selected_tags.csv)")
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f}; {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as tmp:
        tiny = load_tagger(TaggerOptions(str(write_tiny_tagger(Path(tmp) / "tiny"))))
        real = load_tagger(TaggerOptions(str(args.model))) if args.model else None
        rng = np.random.default_rng(0)
        for side in (int(s) for s in args.sizes.split(",")):
            pixels = rng.integers(0, 256, (side, side * 3 // 4, 3), dtype=np.uint8)
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
            data = buffer.getvalue()
            image = open_image(data, max_bytes=len(data))
            rows = [
                ("open_image", median_seconds(functools.partial(open_image, data, max_bytes=len(data)), args.samples)),
                ("prepare_image", median_seconds(functools.partial(prepare_image, image, 448), args.samples)),
                ("tag (tiny model)", median_seconds(functools.partial(tiny.tag, image), args.samples)),
            ]
            if real is not None:
                rows.append(("tag (real model)", median_seconds(functools.partial(real.tag, image), args.samples)))
            decoded = image.width * image.height * len(image.getbands()) / 2**20
            print(f"{image.width}x{image.height} PNG, {len(data) / 2**20:.1f} MiB, decoded {decoded:.0f} MiB:")
            for name, seconds in rows:
                print(f"  {name:18} {seconds * 1000:8.1f} ms")


if __name__ == "__main__":
    main()
