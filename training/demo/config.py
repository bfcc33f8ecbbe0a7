"""The demo model's architecture (an official-schema model_config.json) and its training settings.

Everything here is a value the project's model code supports: a single-stage SAME autoencoder at
4096x like the official ones (4096-sample patches x stride 1, 128 latent channels at 10.77 Hz, plain
rather than differential attention), a narrow DiT, a 2-layer T5Gemma-style encoder. The text
encoder's width stays 768 because the prompt conditioner fixes it by `model_name`
(google/t5gemma-b-b-ul2).
"""

from __future__ import annotations

SAMPLE_RATE = 44100
MAX_SECONDS = 6.0
DEFAULT_SECONDS = 3.0
LATENT_DIM = 128
PATCH_SIZE = 4096
STRIDE = 1
CHUNK_SIZE = 2  # SAME attention chunks of 2 patches: generate() aligns lengths to 2 latents
DOWNSAMPLING = PATCH_SIZE * STRIDE
# sample_size: MAX_SECONDS rounded up to the autoencoder's alignment (66 latents, 6.13 s).
_ALIGN = DOWNSAMPLING * CHUNK_SIZE
SAMPLE_SIZE = -(-int(MAX_SECONDS * SAMPLE_RATE) // _ALIGN) * _ALIGN
TEXT_MAX_LENGTH = 16
TEXT_SUBFOLDER = "t5gemma-demo"
# Prompt rewriting the shipped tokenizer_config.json asks PromptTokenizer for (see its docstring):
# "440 Hz" -> the note word heard nearest (tones sit on multiples of 44100 / 4096 Hz), and filler
# words dropped instead of read as <unk>.
PROMPT_SETTINGS = {
    "frequency_to_note": {"max_deviation": 0.03, "frame_hz": SAMPLE_RATE / (PATCH_SIZE * STRIDE)},
    "ignored_words": [
        "a", "an", "the", "at", "of", "in", "on", "with", "and", "to", "for", "some", "please", "play", "make",
    ],
}  # fmt: skip
# The DiT's size: 6 blocks of 192 channels (3 heads of 64), 4 memory tokens. It must be wider than
# the latents: at high noise the velocity is mostly the noise itself, in every latent channel.
DIT = {"embed_dim": 192, "depth": 6, "num_heads": 3, "num_memory_tokens": 4, "ff_mult": 3}


def same_config(side: str) -> dict:
    cfg = {
        "channels": 32,
        "c_mults": [4],
        "strides": [STRIDE],
        "latent_dim": LATENT_DIM,
        "transformer_depths": [1],
        "dim_heads": 64,
        "differential": False,  # plain attention: the closed-form start sets it to copy one token
        "variable_stride": True,
        "dyt": True,
        "chunk_size": CHUNK_SIZE,
        "chunk_midpoint_shift": False,
        "conv_mapping": False,
        "mask_noise": 0.0,
    }
    if side == "encoder":
        return {"in_channels": 2 * PATCH_SIZE, **cfg}
    return {"out_channels": 2 * PATCH_SIZE, **cfg, "sinusoidal_blocks": [0]}


def model_config() -> dict:
    return {
        "model_type": "diffusion_cond_inpaint",
        "sample_rate": SAMPLE_RATE,
        "sample_size": SAMPLE_SIZE,
        "default_duration": DEFAULT_SECONDS,
        # What every surface uses when no steps / cfg are given.
        "default_steps": 32,
        "default_cfg_scale": 4.0,
        # The card's advice for inpainting and continuation: paste-back on (CLI, page and server; the
        # Python API keeps the reference's "off"), and 8 steps at cfg 1 for long-form continuation.
        "default_inpaint_paste_back": True,
        "default_continuation_steps": 8,
        "default_continuation_cfg_scale": 1.0,
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
                "diffusion_objective": "rectified_flow",
                "cross_attention_cond_ids": ["prompt", "seconds_total"],
                "global_cond_ids": ["seconds_total"],
                "local_add_cond_ids": ["inpaint_mask", "inpaint_masked_input"],
                "mask_padding_attention": True,
                "use_effective_length_for_schedule": True,
                "config": {
                    "io_channels": LATENT_DIM,
                    "patch_size": 1,
                    "embed_dim": DIT["embed_dim"],
                    "depth": DIT["depth"],
                    "num_heads": DIT["num_heads"],
                    "cond_token_dim": 768,
                    "global_cond_dim": 768,
                    "local_add_cond_dim": LATENT_DIM + 1,
                    "num_memory_tokens": DIT["num_memory_tokens"],
                    "transformer_type": "continuous_transformer",
                    "global_cond_type": "adaLN",
                    "timestep_features_type": "expo",
                    "timestep_features_logsnr": False,
                    "attn_kwargs": {"qk_norm": "rms", "differential": False},
                    "norm_type": "rms_norm",
                    "norm_kwargs": {"force_fp32": True},
                    "ff_kwargs": {"mult": DIT["ff_mult"]},
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
    "ae_clips": 1500,
    "dataset_clips": 6000,
    "dit_minutes": 47.0,
    "dit_batch": 16,
    "dit_lr": 2e-3,
    "text_lr": 2e-3,
    "ema_decay": 0.995,
    "cfg_dropout": 0.05,
    "inpaint_prob": 0.3,
    "t_mixture": (0.35, 0.35),  # shares of train.sample_t's mid and sampler-t draws (the rest: wide)
    "frame_locked_prob": 0.8,  # share of the DiT's clips made frame-locked (see data.make_clip)
    "kind_weights": {"tone": 1.5},  # clips of these kinds are drawn this much more often than others
    "kept_weight": 2.0,  # loss weight of kept (inpainting) positions
    "prompt_batch": 32,  # extra items per step at t = 1 on short windows (see train.prompt_only_loss)
    "prompt_latents": 4,  # their length in latents
}
# The last stage, `polish`: a second DiT session from the trained weights, without the t = 1 batch,
# at a low learning rate, drawing silence and noise clips far more often, giving most items an
# inpainting mask with a heavy weight on the kept positions, and drawing half of the t values from
# the default sampler's own steps. The t = 1 batch teaches that silence and every noise colour have
# the same mean (zero) at t = 1, and the main run is slow to separate them at lower noise levels,
# where the difference is heard. Inpainting is judged on copying the kept latents, and generate()'s
# output is the clean estimate of its last step (t = 1/8 at the default 8 steps), so that is where
# the copy has to be exact.
POLISH = {
    "minutes": 9.0,
    "dit_lr": 5e-4,
    "text_lr": 5e-4,
    "prompt_batch": 0,
    "kind_weights": {"tone": 1.5, "silence": 4.0, "noise": 4.0},
    "inpaint_prob": 0.6,
    "kept_weight": 8.0,
    "t_mixture": (0.3, 0.5),
}
# Then `polish-noise`: a third session, noise clips drawn 12 times as often, fewer inpainting items,
# half the polish's learning rate. It steadies the noise colours' level over time (issue 22's retrain:
# after the polish alone, one 1 s stretch of a 20 s long-form `pink noise` lay 5.5 dB from the
# piece's median; the long-form bar is 3 dB).
POLISH_NOISE = {
    **POLISH,
    "dit_lr": 2.5e-4,
    "text_lr": 2.5e-4,
    "kind_weights": {"tone": 1.5, "silence": 4.0, "noise": 12.0},
    "inpaint_prob": 0.3,
}
