"""The optimised GPU path (``--option optimise=true``): the speed-ups of diffusion-fast kept
where they pay on a GPU. SDPA is already diffusers' default attention.

- fused QKV projections (one matmul instead of three per attention),
- channels_last memory format for the convolutional UNet and VAE,
- inductor settings that favour large GEMMs (1x1 convs as matmuls, coordinate-descent tuning),
- ``torch.compile`` of the denoiser and the VAE decoder, with CUDA graphs when asked
  (``mode="max-autotune"``) and without them otherwise.

Compilation costs a warm-up on the first call per shape; the benchmark reports it apart.
"""

from __future__ import annotations

from typing import Any

__all__ = ["optimise_pipeline"]


def optimise_pipeline(
    pipe: Any, *, compile_model: bool = True, cuda_graphs: bool = False
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
        inductor.coordinate_descent_tuning = True
        inductor.epilogue_fusion = False
        inductor.coordinate_descent_check_all_directions = True
        mode = "max-autotune" if cuda_graphs else "max-autotune-no-cudagraphs"
        compiled = torch.compile(denoiser, mode=mode, fullgraph=True)
        if getattr(pipe, "unet", None) is not None:
            pipe.unet = compiled
        else:
            pipe.transformer = compiled
        pipe.vae.decode = torch.compile(pipe.vae.decode, mode=mode, fullgraph=True)
        applied.append(f"torch.compile({mode})")
    return applied
