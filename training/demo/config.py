"""The demo model's architecture (an official-schema model_config.json) and its training settings.

Everything here is a value the project's model code supports: a single-stage SAME autoencoder at 2048x
(2048-sample patches x stride 1, 64 latent channels, plain rather than differential attention), a
narrow DiT, a 2-layer T5Gemma-style encoder. The text encoder's width stays 768 because the prompt
conditioner fixes it by `model_name` (google/t5gemma-b-b-ul2).
"""

from __future__ import annotations

SAMPLE_RATE = 44100
MAX_SECONDS = 6.0
DEFAULT_SECONDS = 3.0
LATENT_DIM = 64
PATCH_SIZE = 2048
STRIDE = 1
DOWNSAMPLING = PATCH_SIZE * STRIDE
# sample_size: MAX_SECONDS rounded up to the autoencoder's alignment (chunk_size patches = 8 latents).
_ALIGN = DOWNSAMPLING * 8
SAMPLE_SIZE = -(-int(MAX_SECONDS * SAMPLE_RATE) // _ALIGN) * _ALIGN
TEXT_MAX_LENGTH = 32
TEXT_SUBFOLDER = "t5gemma-demo"


def same_config(side: str) -> dict:
    cfg = {
        "channels": 16,
        "c_mults": [4],
        "strides": [STRIDE],
        "latent_dim": LATENT_DIM,
        "transformer_depths": [2],
        "dim_heads": 32,
        "differential": False,  # plain attention: differential attention passes ~nothing at init
        "variable_stride": True,
        "dyt": True,
        "chunk_size": 8,
        "chunk_midpoint_shift": True,
    }
    if side == "encoder":
        return {"in_channels": 2 * PATCH_SIZE, **cfg, "conv_mapping": False, "mask_noise": 0.0}
    return {"out_channels": 2 * PATCH_SIZE, **cfg, "conv_mapping": True, "sinusoidal_blocks": [0], "mask_noise": 0.0}


def model_config() -> dict:
    return {
        "model_type": "diffusion_cond_inpaint",
        "sample_rate": SAMPLE_RATE,
        "sample_size": SAMPLE_SIZE,
        "audio_channels": 2,
        "model": {
            "io_channels": LATENT_DIM,
            "pretransform": {
                "type": "autoencoder",
                "chunked": False,
                "config": {
                    "latent_dim": LATENT_DIM,
                    "downsampling_ratio": DOWNSAMPLING,
                    "io_channels": 2,
                    "pretransform": {"type": "patched", "config": {"channels": 2, "patch_size": PATCH_SIZE}},
                    "encoder": {"type": "same", "config": same_config("encoder")},
                    "decoder": {"type": "same", "config": same_config("decoder")},
                    "bottleneck": {
                        "type": "softnorm",
                        "config": {
                            "dim": LATENT_DIM,
                            "noise_augment_dim": 0,
                            "noise_regularize": True,
                            "auto_scale": True,
                            "freeze": True,
                        },
                    },
                },
            },
            "conditioning": {
                "cond_dim": 768,
                "configs": [
                    {
                        "id": "prompt",
                        "type": "t5gemma",
                        "config": {
                            "model_name": "google/t5gemma-b-b-ul2",
                            "repo_id": ".",
                            "subfolder": TEXT_SUBFOLDER,
                            "max_length": TEXT_MAX_LENGTH,
                            "padding_mode": "learned",
                        },
                    },
                    {
                        "id": "seconds_total",
                        "type": "number",
                        "config": {"min_val": 0, "max_val": 16, "fourier_features_type": "expo"},
                    },
                ],
            },
            "diffusion": {
                "type": "dit",
                "diffusion_objective": "rf_denoiser",
                "cross_attention_cond_ids": ["prompt", "seconds_total"],
                "global_cond_ids": ["seconds_total"],
                "local_add_cond_ids": ["inpaint_mask", "inpaint_masked_input"],
                "mask_padding_attention": True,
                "use_effective_length_for_schedule": True,
                "config": {
                    "io_channels": LATENT_DIM,
                    "patch_size": 1,
                    "embed_dim": 128,
                    "depth": 5,
                    "num_heads": 2,
                    "cond_token_dim": 768,
                    "global_cond_dim": 768,
                    "local_add_cond_dim": LATENT_DIM + 1,
                    "num_memory_tokens": 4,
                    "transformer_type": "continuous_transformer",
                    "global_cond_type": "adaLN",
                    "timestep_features_type": "expo",
                    "timestep_features_logsnr": False,
                    "attn_kwargs": {"qk_norm": "rms", "differential": False},
                    "norm_type": "rms_norm",
                    "norm_kwargs": {"force_fp32": True},
                    "ff_kwargs": {"mult": 3},
                },
            },
        },
    }


def text_encoder_config(vocab_size: int) -> dict:
    """HF-style T5Gemma config.json (encoder and a matching decoder section, as the HF files have)."""
    side = {
        "attention_bias": False,
        "attention_dropout": 0.0,
        "attn_logit_softcapping": 50.0,
        "bos_token_id": 2,
        "dropout_rate": 0.0,
        "eos_token_id": 1,
        "final_logit_softcapping": 30.0,
        "head_dim": 32,
        "hidden_activation": "gelu_pytorch_tanh",
        "hidden_size": 768,
        "initializer_range": 0.02,
        "intermediate_size": 128,
        "is_decoder": False,
        "layer_types": ["sliding_attention", "full_attention"],
        "max_position_embeddings": 8192,
        "model_type": "t5_gemma_module",
        "num_attention_heads": 2,
        "num_hidden_layers": 2,
        "num_key_value_heads": 2,
        "pad_token_id": 0,
        "query_pre_attn_scalar": 32,
        "rms_norm_eps": 1e-6,
        "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"},
        "sliding_window": 4096,
        "tie_word_embeddings": True,
        "use_cache": True,
        "vocab_size": vocab_size,
    }
    return {
        "architectures": ["T5GemmaEncoderModel"],
        "encoder": side,
        "decoder": {**side, "is_decoder": True, "cross_attention_hidden_size": 768},
        "is_encoder_decoder": True,
        "model_type": "t5gemma",
        "pad_token_id": 0,
        "eos_token_id": 1,
        "bos_token_id": 2,
        "tie_word_embeddings": True,
        "vocab_size": vocab_size,
    }


# Training settings (wall-clock budgets are for 2 CPU cores).
TRAIN = {
    "seed": 1234,
    "ae_minutes": 0.0,
    "ae_batch": 8,
    "ae_crop_samples": 16384,
    "ae_lr": 2e-3,
    "dataset_clips": 1200,
    "dit_minutes": 30.0,
    "dit_batch": 12,
    "dit_lr": 1e-3,
    "text_lr": 1e-3,
    "ema_decay": 0.99,
    "cfg_dropout": 0.1,
    "inpaint_prob": 0.35,
}
