"""The optimised GPU path (``--option optimise=true``): the speed-ups of diffusion-fast kept
where they pay on a GPU. SDPA is already diffusers' default attention.

- fused QKV projections (one matmul instead of three per attention),
- channels_last memory format for the convolutional UNet and VAE,
- ``torch.compile`` of the denoiser and the VAE decoder, with 1x1 convolutions as matmuls.

Compilation costs a warm-up on the first call per shape; the benchmark reports it apart.
GEMM autotuning (``autotune=True``: inductor's max-autotune with coordinate-descent tuning)
benchmarks every candidate kernel of every matmul and convolution shape: on an H100 that is
10-45 s per shape and more than nine minutes for SD1.5 alone, so it is opt-in, for servers
that keep one model loaded for days.
"""

from __future__ import annotations

from typing import Any

__all__ = ["optimise_pipeline"]


def compile_mode(autotune: bool, cuda_graphs: bool) -> str:
    """The ``torch.compile`` mode for the two choices."""
    if autotune:
        return "max-autotune" if cuda_graphs else "max-autotune-no-cudagraphs"
    return "reduce-overhead" if cuda_graphs else "default"


def optimise_pipeline(
    pipe: Any, *, compile_model: bool = True, autotune: bool = False, cuda_graphs: bool = False
) -> list[str]:
    """Apply the speed-ups in place; return what was applied."""
    import torch

    applied: list[str] = []
    denoiser = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    fuse = getattr(pipe, "fuse_qkv_projections", None) or getattr(
        denoiser, "fuse_qkv_projections", None
    )
    if fuse is not None:
        try:
            fuse()
            applied.append("fused-qkv")
        except (AttributeError, NotImplementedError, ValueError):
            pass  # an attention processor that cannot fuse: keep the separate projections
    if getattr(pipe, "unet", None) is not None:
        pipe.unet.to(memory_format=torch.channels_last)
        applied.append("channels-last-unet")
    if getattr(pipe, "vae", None) is not None:
        pipe.vae.to(memory_format=torch.channels_last)
        applied.append("channels-last-vae")
    device = getattr(pipe, "_execution_device", None) or getattr(pipe, "device", None)
    on_gpu = device is not None and torch.device(device).type == "cuda"
    if compile_model and on_gpu and denoiser is not None:
        inductor = torch._inductor.config
        inductor.conv_1x1_as_mm = True
        if autotune:
            inductor.coordinate_descent_tuning = True
            inductor.epilogue_fusion = False
            inductor.coordinate_descent_check_all_directions = True
        mode = compile_mode(autotune, cuda_graphs)
        compiled = torch.compile(denoiser, mode=mode, fullgraph=True)
        if getattr(pipe, "unet", None) is not None:
            pipe.unet = compiled
        else:
            pipe.transformer = compiled
        pipe.vae.decode = torch.compile(pipe.vae.decode, mode=mode, fullgraph=True)
        applied.append(f"torch.compile({mode})")
    return applied
