"""Tiny random-weight pipelines built in code, for tests and the CPU overhead benchmark.

They have the architecture of the real ones (UNet or transformer, VAE, CLIP/T5 text encoders,
tokenizers) at a few hundred thousand parameters, so every code path of the local engine runs
in well under a second on a CPU. Tokenizers are built from a small in-code vocabulary: no
download is needed. ``save_pretrained`` writes the usual diffusers folder layout, which is then
loaded through the same path as a user's model (``-m local:/path/to/folder``).
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

__all__ = [
    "build_tiny",
    "build_tiny_controlnet",
    "build_tiny_transformer_controlnet",
    "tiny_clip_tokenizer",
    "tiny_t5_tokenizer",
]

MERGE_PAIRS = [("t", "h"), ("th", "e</w>"), ("c", "a"), ("ca", "t</w>"), ("o", "n</w>")]


def _bytes_to_unicode() -> dict[int, str]:
    """The byte -> printable character table of byte-level BPE (as in CLIP and GPT-2)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), 256)]
    chars = list(keep)
    extra = 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(keep, (chr(c) for c in chars), strict=True))


def tiny_clip_tokenizer() -> Any:
    from transformers import CLIPTokenizer

    symbols = list(_bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for token in [*symbols, *(s + "</w>" for s in symbols)]:
        vocab[token] = len(vocab)
    for left, right in MERGE_PAIRS:
        vocab[left + right] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=list(MERGE_PAIRS), model_max_length=77)  # type: ignore[arg-type]


def tiny_t5_tokenizer() -> Any:
    from transformers import T5TokenizerFast  # type: ignore[attr-defined]

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(c, -1.0) for c in string.ascii_lowercase + string.digits + ",.:()"]
    return T5TokenizerFast(vocab=pieces, extra_ids=0)


def _clip_text(tokenizer: Any, *, projection: bool = False, hidden: int = 32, seed: int = 0) -> Any:
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        projection_dim=hidden,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        max_position_embeddings=77,
    )
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config).eval()


def _t5(tokenizer: Any, d_model: int = 32) -> Any:
    import torch
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(0)
    config = T5Config(
        vocab_size=len(tokenizer), d_model=d_model, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1,
    )  # fmt: skip
    return T5EncoderModel(config).eval()


def _sd15() -> Any:
    import torch
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=2, sample_size=32, in_channels=4,
        out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
        norm_num_groups=32, attention_head_dim=8,
    )  # fmt: skip
    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=[32, 64], in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"], norm_num_groups=32,
    )  # fmt: skip
    tokenizer = tiny_clip_tokenizer()
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1
    )
    return StableDiffusionPipeline(
        unet=unet, vae=vae, text_encoder=_clip_text(tokenizer), tokenizer=tokenizer,
        scheduler=scheduler, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )  # fmt: skip


def _sdxl() -> Any:
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    sd = _sd15()
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=2, sample_size=32, in_channels=4,
        out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4),
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2), projection_class_embeddings_input_dim=80,
        cross_attention_dim=64, norm_num_groups=1,
    )  # fmt: skip
    tokenizer = tiny_clip_tokenizer()
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1
    )
    return StableDiffusionXLPipeline(
        unet=unet, vae=sd.vae, text_encoder=_clip_text(tokenizer, seed=3), tokenizer=tokenizer,
        text_encoder_2=_clip_text(tokenizer, projection=True, seed=4), tokenizer_2=tokenizer,
        scheduler=scheduler,
    )  # fmt: skip


def _flow_vae(latent_channels: int) -> Any:
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(
        block_out_channels=[8, 8], in_channels=3, out_channels=3, latent_channels=latent_channels,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"], norm_num_groups=1,
        use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609,
        scaling_factor=1.5035,
    )  # fmt: skip


def _sd3() -> Any:
    import torch
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )

    torch.manual_seed(0)
    # Two layers: the last SD3 block only reads the text stream and takes no ControlNet
    # residual, so one layer would leave ControlNet nothing to act on.
    transformer = SD3Transformer2DModel(
        sample_size=32, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=8,
        num_attention_heads=4, caption_projection_dim=32, joint_attention_dim=32,
        pooled_projection_dim=64, out_channels=4,
    )  # fmt: skip
    tok = tiny_clip_tokenizer()
    t5_tok = tiny_t5_tokenizer()
    return StableDiffusion3Pipeline(
        transformer=transformer, vae=_flow_vae(4), scheduler=FlowMatchEulerDiscreteScheduler(),
        text_encoder=_clip_text(tok, projection=True, seed=1), tokenizer=tok,
        text_encoder_2=_clip_text(tok, projection=True, seed=2), tokenizer_2=tok,
        text_encoder_3=_t5(t5_tok), tokenizer_3=t5_tok,
    )  # fmt: skip


def _flux() -> Any:
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
        axes_dims_rope=[4, 4, 8],
    )  # fmt: skip
    tok = tiny_clip_tokenizer()
    t5_tok = tiny_t5_tokenizer()
    return FluxPipeline(
        transformer=transformer, vae=_flow_vae(4), scheduler=FlowMatchEulerDiscreteScheduler(),
        text_encoder=_clip_text(tok, projection=False), tokenizer=tok,
        text_encoder_2=_t5(t5_tok), tokenizer_2=t5_tok,
    )  # fmt: skip


BUILDERS = {"sd15": _sd15, "sdxl": _sdxl, "sd3": _sd3, "flux": _flux}


def build_tiny(kind: str, folder: Path | None = None) -> Any:
    """Build the tiny ``kind`` pipeline (sd15, sdxl, sd3, flux); save it to ``folder`` when given."""
    pipe = BUILDERS[kind]()
    if folder is not None:
        pipe.save_pretrained(str(folder), safe_serialization=True)
    return pipe


def build_tiny_controlnet(folder: Path, unet: Any) -> Path:
    """A random ControlNet shaped after ``unet``, saved as a diffusers folder."""
    import torch
    from diffusers import ControlNetModel

    torch.manual_seed(0)
    net = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16, 32))
    # A fresh ControlNet's output convolutions are zero, so it would change nothing: give them
    # small random weights, as training would.
    with torch.no_grad():
        for conv in [*net.controlnet_down_blocks, net.controlnet_mid_block]:
            conv.weight.normal_(0.0, 0.05)
    net.save_pretrained(str(folder), safe_serialization=True)
    return folder


def build_tiny_transformer_controlnet(folder: Path, pipe: Any, *, seed: int = 0) -> Path:
    """A random SD3 or FLUX ControlNet made from ``pipe``'s transformer, saved as a diffusers
    folder. Its zero-initialised input embedding and output projections get small random
    weights, as training would give them, so that the control changes the image."""
    import torch
    from diffusers import (
        FluxControlNetModel,
        FluxTransformer2DModel,
        SD3ControlNetModel,
        SD3Transformer2DModel,
    )

    transformer = pipe.transformer
    heads, head_dim = (
        transformer.config.num_attention_heads,
        transformer.config.attention_head_dim,
    )
    torch.manual_seed(seed)
    net: Any
    if isinstance(transformer, SD3Transformer2DModel):
        net = SD3ControlNetModel.from_transformer(
            transformer, num_layers=1, num_extra_conditioning_channels=0
        )
        zeroed = [*net.controlnet_blocks, net.pos_embed_input.proj]
    elif isinstance(transformer, FluxTransformer2DModel):
        net = FluxControlNetModel.from_transformer(
            transformer, num_layers=1, num_single_layers=1, attention_head_dim=head_dim,
            num_attention_heads=heads,
        )  # fmt: skip
        zeroed = [*net.controlnet_blocks, *net.controlnet_single_blocks, net.controlnet_x_embedder]
    else:
        raise TypeError(f"{type(transformer).__name__} has no transformer ControlNet here.")
    with torch.no_grad():
        for layer in zeroed:
            layer.weight.normal_(0.0, 0.05)
            layer.bias.normal_(0.0, 0.05)
    net.save_pretrained(str(folder), safe_serialization=True)
    return folder


def build_tiny_depth_estimator(folder: Path) -> Path:
    """A random DPT depth estimator with its image processor, for the depth-control path."""
    import torch
    from transformers import DPTConfig, DPTForDepthEstimation, DPTImageProcessor

    config = DPTConfig(
        hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=37,
        image_size=32, patch_size=8, backbone_out_indices=[0, 1, 2, 3],
        neck_hidden_sizes=[16, 16, 32, 32], fusion_hidden_size=16, is_hybrid=False,
    )  # fmt: skip
    torch.manual_seed(0)
    DPTForDepthEstimation(config).eval().save_pretrained(str(folder))
    DPTImageProcessor(size={"height": 32, "width": 32}, keep_aspect_ratio=False).save_pretrained(
        str(folder)
    )
    return folder


def build_tiny_lora(folder: Path, pipe: Any, *, rank: int = 4, seed: int = 0) -> Path:
    """A random LoRA for ``pipe``'s UNet or transformer, saved as diffusers LoRA safetensors."""
    import torch
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    denoiser = pipe.unet if hasattr(pipe, "unet") and pipe.unet is not None else pipe.transformer
    config = LoraConfig(r=rank, lora_alpha=rank, init_lora_weights=False,
                        target_modules=["to_q", "to_k", "to_v", "to_out.0"])  # fmt: skip
    torch.manual_seed(seed)
    denoiser.add_adapter(config, adapter_name="tmp")
    layers = get_peft_model_state_dict(denoiser, adapter_name="tmp")
    key = (
        "unet_lora_layers"
        if hasattr(pipe, "unet") and pipe.unet is not None
        else "transformer_lora_layers"
    )
    type(pipe).save_lora_weights(str(folder), **{key: layers}, safe_serialization=True)
    denoiser.delete_adapters("tmp")
    return folder
