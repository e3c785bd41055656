"""Local engine benchmark.

GPU (when CUDA is available): builds SD1.5-, SDXL- and FLUX-sized pipelines from their configs
with random weights (random weights compute exactly like real ones) and measures, in one run,
plain diffusers (the default pipeline call in fp16/bf16) against limner's optimised path
(``limner.local.speed.optimise_pipeline``: fused QKV, channels_last, torch.compile with or
without CUDA graphs; SDPA is the default attention in both): it/s, s/image, peak GPU memory,
warm-up/compile time, and the output difference at a fixed seed.

CPU: the tiny test pipeline through ``Limner.run`` (``-m local:/folder``) against calling the
same diffusers pipeline directly, to measure limner's overhead (goal: at most 10%).

    python benchmarks/local_engine.py                 # CPU overhead, plus GPU when CUDA is there
    python benchmarks/local_engine.py --gpu --models sdxl --steps 30
    python benchmarks/local_engine.py --check-gpu-path  # the GPU code path on tiny models, on CPU

Prints a table and writes benchmarks/results/local_engine.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results" / "local_engine.json"
GPU_CASES = {"sd15": (512, 20), "sdxl": (1024, 30), "flux": (1024, 28)}


# -- full-size pipelines from configs -------------------------------------------------------------
def _vae(latent_channels: int, **extra: Any) -> Any:
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=[128, 256, 512, 512], layers_per_block=2, latent_channels=latent_channels,
        down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4, **extra,
    )  # fmt: skip


def _clip(hidden: int, layers: int, heads: int, projection: bool = False) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(vocab_size=49408, hidden_size=hidden, intermediate_size=hidden * 4, num_hidden_layers=layers,
                            num_attention_heads=heads, projection_dim=hidden, max_position_embeddings=77,
                            hidden_act="gelu", bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)  # fmt: skip
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)


@contextlib.contextmanager
def _default_dtype(dtype: Any) -> Iterator[None]:
    """New tensors in ``dtype`` (None: unchanged) inside the block."""
    import torch

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype or previous)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def build_full(kind: str, device: str = "cpu", dtype: Any = None) -> Any:
    """An SD1.5-, SDXL- or FLUX.1-sized pipeline with random weights, its models built on
    ``device`` in ``dtype`` (schedulers and tokenizers stay on the CPU: they use NumPy).
    Building in the target dtype keeps FLUX (12B) and its T5 (4.7B) from passing through
    67 GB of float32 on the way."""
    import torch
    from diffusers import (
        EulerDiscreteScheduler,
        FlowMatchEulerDiscreteScheduler,
        FluxPipeline,
        FluxTransformer2DModel,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import T5Config, T5EncoderModel

    from limner.local.testing import tiny_clip_tokenizer, tiny_t5_tokenizer

    tok = tiny_clip_tokenizer()
    euler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1
    )
    flow = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True)
    t5_tok = tiny_t5_tokenizer()
    with torch.device(device), _default_dtype(dtype):
        if kind == "sd15":
            unet = UNet2DConditionModel(
                sample_size=64, cross_attention_dim=768, attention_head_dim=8
            )
            return StableDiffusionPipeline(unet=unet, vae=_vae(4, sample_size=512), text_encoder=_clip(768, 12, 12),
                                           tokenizer=tok, scheduler=euler, safety_checker=None,
                                           feature_extractor=None, requires_safety_checker=False)  # fmt: skip
        if kind == "sdxl":
            unet = UNet2DConditionModel(
                sample_size=128, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                block_out_channels=(320, 640, 1280), transformer_layers_per_block=(1, 2, 10),
                attention_head_dim=(5, 10, 20), cross_attention_dim=2048, use_linear_projection=True,
                addition_embed_type="text_time", addition_time_embed_dim=256,
                projection_class_embeddings_input_dim=2816,
            )  # fmt: skip
            return StableDiffusionXLPipeline(unet=unet, vae=_vae(4, sample_size=1024, scaling_factor=0.13025),
                                             text_encoder=_clip(768, 12, 12), text_encoder_2=_clip(1280, 32, 20, True),
                                             tokenizer=tok, tokenizer_2=tok, scheduler=euler)  # fmt: skip
        t5 = T5EncoderModel(T5Config(vocab_size=32128, d_model=4096, d_ff=10240, d_kv=64, num_layers=24,
                                     num_heads=64, feed_forward_proj="gated-gelu"))  # fmt: skip
        vae = _vae(
            16,
            use_quant_conv=False,
            use_post_quant_conv=False,
            shift_factor=0.1159,
            scaling_factor=0.3611,
        )
        return FluxPipeline(transformer=FluxTransformer2DModel(guidance_embeds=True), vae=vae,
                            text_encoder=_clip(768, 12, 12), tokenizer=tok, text_encoder_2=t5,
                            tokenizer_2=t5_tok, scheduler=flow)  # fmt: skip


# -- measuring --------------------------------------------------------------------------------
def _call(pipe: Any, size: int, steps: int, seed: int = 0) -> Any:
    import torch

    kwargs: dict[str, Any] = {"prompt": "a lighthouse on a cliff at dusk", "num_inference_steps": steps,
                              "height": size, "width": size, "output_type": "np",
                              "generator": torch.Generator("cpu").manual_seed(seed)}  # fmt: skip
    if "negative_prompt" in type(pipe).__call__.__code__.co_varnames:
        kwargs["guidance_scale"] = 6.0
    return pipe(**kwargs).images


def _timed(pipe: Any, size: int, steps: int, repeats: int) -> tuple[float, Any]:
    import torch

    times, out = [], None
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = _call(pipe, size, steps)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def measure_pair(
    pipe: Any, label: str, size: int, steps: int, repeats: int, autotune: bool, cuda_graphs: bool
) -> dict[str, Any]:
    """Plain diffusers, then the same pipeline after limner's optimisations, in one process."""
    import numpy as np
    import torch

    from limner.local.speed import optimise_pipeline

    pipe.set_progress_bar_config(disable=True)
    gpu = torch.cuda.is_available()
    row: dict[str, Any] = {"model": label, "size": size, "steps": steps}
    warm = time.perf_counter()
    _call(pipe, size, steps)
    row["plain_warmup_s"] = round(time.perf_counter() - warm, 2)
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    plain_s, plain_out = _timed(pipe, size, steps, repeats)
    row["plain_peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2) if gpu else None
    row["applied"] = optimise_pipeline(
        pipe, compile_model=gpu, autotune=autotune, cuda_graphs=cuda_graphs
    )
    warm = time.perf_counter()
    _call(pipe, size, steps)
    row["optimised_warmup_s"] = round(time.perf_counter() - warm, 2)
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    fast_s, fast_out = _timed(pipe, size, steps, repeats)
    row["optimised_peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2) if gpu else None
    row.update(plain_s_per_image=round(plain_s, 3), optimised_s_per_image=round(fast_s, 3),
               plain_it_s=round(steps / plain_s, 2), optimised_it_s=round(steps / fast_s, 2),
               speedup=round(plain_s / fast_s, 3),
               max_abs_diff=float(np.abs(np.asarray(plain_out, dtype=np.float32) - np.asarray(fast_out, dtype=np.float32)).max()),
               mean_abs_diff=float(np.abs(np.asarray(plain_out, dtype=np.float32) - np.asarray(fast_out, dtype=np.float32)).mean()))  # fmt: skip
    return row


def gpu_benchmark(
    models: list[str],
    repeats: int,
    steps: int | None,
    autotune: bool,
    cuda_graphs: bool,
    report: dict[str, Any],
) -> None:
    """Each model's row goes into ``report["gpu_runs"]`` and the JSON as soon as it is measured:
    a run cut short by a time limit keeps the models it finished."""
    import torch

    rows = report.setdefault("gpu_runs", [])
    for kind in models:
        size, default_steps = GPU_CASES[kind]
        dtype = torch.bfloat16 if kind == "flux" else torch.float16
        start = time.perf_counter()
        pipe = build_full(kind, "cuda", dtype).to(dtype)
        build_s = time.perf_counter() - start
        row = measure_pair(pipe, kind, size, steps or default_steps, repeats, autotune, cuda_graphs)
        row.update(dtype=str(dtype).removeprefix("torch."), build_s=round(build_s, 1))
        rows.append(row)
        _write(report)
        print(_row_text(row), flush=True)
        del pipe
        torch.cuda.empty_cache()
        # Dynamo caches compiled code per function: the next model's UNet shares this one's
        # forward, so without a reset it would be recompiled with dynamic shapes (SDXL after
        # SD1.5: 369 s instead of 167 s) and its first call would not be its own.
        torch._dynamo.reset()


def check_gpu_path() -> list[dict[str, Any]]:
    """The GPU measurement code on the tiny pipelines, on CPU: it must run and agree."""
    from limner.local.testing import build_tiny

    return [
        measure_pair(build_tiny(kind), f"tiny-{kind}", 64, 2, 1, False, False)
        for kind in ("sd15", "sd3", "flux")
    ]


# -- CPU overhead ------------------------------------------------------------------------------
def cpu_overhead(repeats: int, size: int, steps: int) -> dict[str, Any]:
    import torch
    from diffusers import AutoPipelineForText2Image

    from limner.client import Limner
    from limner.local.testing import build_tiny
    from limner.types import ImageRequest

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "tiny-sd15"
        build_tiny("sd15", folder)
        direct = AutoPipelineForText2Image.from_pretrained(str(folder), use_safetensors=True)
        direct.set_progress_bar_config(disable=True)

        def call_direct() -> None:
            gen = [torch.Generator("cpu").manual_seed(1)]
            direct(prompt="the cat", num_inference_steps=steps, height=size, width=size, guidance_scale=7.0,
                   generator=gen, output_type="pil").images[0].save(Path(tmp) / "direct.png")  # fmt: skip

        client = Limner(home=Path(tmp) / "home")
        request = ImageRequest(prompt="the cat", model=f"local:{folder}", size=f"{size}x{size}", steps=steps,
                               guidance=7.0, seed=1, provider_options={"scheduler": "euler"})  # fmt: skip

        def call_limner() -> None:
            client.run("generate", request, use_cache=False)

        def in_thread(fn: Any) -> Any:
            # limner runs the pipeline in a worker thread; torch's CPU threading behaves
            # differently there than on the main thread, so diffusers is timed both ways.
            def run() -> None:
                worker = threading.Thread(target=fn)
                worker.start()
                worker.join()

            return run

        cases = {"diffusers_main_thread": call_direct, "diffusers_worker_thread": in_thread(call_direct),
                 "limner": call_limner}  # fmt: skip
        samples: dict[str, list[float]] = {name: [] for name in cases}
        for fn in cases.values():
            fn()  # warm-up: loads the model into limner's cache
        for _ in range(repeats):  # interleaved, so load changes hit all alike
            for name, fn in cases.items():
                start = time.perf_counter()
                fn()
                samples[name].append(time.perf_counter() - start)
        client.close()
    med = {name: statistics.median(values) for name, values in samples.items()}
    direct = min(med["diffusers_main_thread"], med["diffusers_worker_thread"])
    return {"size": size, "steps": steps, "repeats": repeats, **{f"{k}_s": round(v, 4) for k, v in med.items()},
            "overhead_pct": round((med["limner"] / direct - 1) * 100, 1), "threads": torch.get_num_threads()}  # fmt: skip


def _row_text(row: dict[str, Any]) -> str:
    return (f"{row['model']:<10} {row['size']:>5} {row['steps']:>5} {row['plain_it_s']:>9} {row['optimised_it_s']:>9} "
            f"{row['plain_s_per_image']:>8} {row['optimised_s_per_image']:>8} {row['speedup']:>7}x "
            f"{row['plain_peak_gib']!s:>7} {row['optimised_peak_gib']!s:>7} {row['plain_warmup_s']:>7} "
            f"{row['optimised_warmup_s']:>7} {row['max_abs_diff']:.4f}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--gpu", action="store_true", help="GPU part only")
    parser.add_argument("--cpu", action="store_true", help="CPU overhead part only")
    parser.add_argument(
        "--check-gpu-path", action="store_true", help="run the GPU code on tiny models on CPU"
    )
    parser.add_argument("--models", default="sd15,sdxl,flux")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--autotune", action="store_true", help="max-autotune: minutes of GEMM autotuning per model"
    )
    parser.add_argument("--cuda-graphs", action="store_true", help="compile with CUDA graphs")
    parser.add_argument("--cpu-size", type=int, default=64)
    parser.add_argument("--cpu-steps", type=int, default=4)
    args = parser.parse_args()

    import diffusers
    import torch

    report: dict[str, Any] = {"machine": platform.processor() or platform.machine(), "torch": torch.__version__,
                              "diffusers": diffusers.__version__,
                              "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}  # fmt: skip
    header = (f"{'model':<10} {'size':>5} {'steps':>5} {'plain it/s':>9} {'opt it/s':>9} {'plain s':>8} {'opt s':>8} "
              f"{'speedup':>8} {'plainGiB':>7} {'optGiB':>7} {'warm p':>7} {'warm o':>7} maxdiff")  # fmt: skip
    if args.check_gpu_path:
        print(header)
        report["gpu_path_check"] = rows = check_gpu_path()
        for row in rows:
            print(_row_text(row))
    if not args.cpu and not args.check_gpu_path:
        if torch.cuda.is_available():
            print(header)
            gpu_benchmark(args.models.split(","), args.repeats, args.steps, args.autotune,
                          args.cuda_graphs, report)  # fmt: skip
        else:
            print("No CUDA device: GPU part skipped.")
    if not args.gpu and not args.check_gpu_path:
        cpu = cpu_overhead(max(args.repeats, 5), args.cpu_size, args.cpu_steps)
        report["cpu_overhead"] = cpu
        print(f"CPU tiny SD1.5 {cpu['size']}x{cpu['size']}, {cpu['steps']} steps, median of {cpu['repeats']}: "
              f"diffusers {cpu['diffusers_main_thread_s']}s (main thread) / {cpu['diffusers_worker_thread_s']}s "
              f"(worker thread), limner {cpu['limner_s']}s: overhead {cpu['overhead_pct']}% over the faster")  # fmt: skip
    _write(report)
    print(f"wrote {RESULTS}")


def _write(report: dict[str, Any]) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
