"""Train the demo LoRA `octave-up`: with it, tone, pluck and chord prompts sound an octave higher.

    python -m training.demo.lora --model stable_audio_3/assets/demo [--out PATH] [--minutes 6] [--clips 1500]

--out defaults to <model>/loras/octave-up.safetensors, next to the weights it was trained on.

A plain LoRA (W + alpha/r * B A) of rank 8 on every Linear layer of the DiT's blocks, trained with
the frozen base model on clips whose audio is transposed up 12 semitones while their prompts keep
the written note (with the same extra batch of short windows at t = 1 as the base model's training,
where the prompt alone decides the pitch). The file is in the official LoRA layout
(`<module>.parametrizations.weight.0.lora_A` keys, `lora_config` metadata), so `model.load_lora(path)`
and `set_lora_strength` work on it; at strength 0 the model is the base model exactly.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from . import config as C
from .data import NOTE_RANGE, make_clip, midi_to_hz
from .train import loss_weights, pure_noise_loss, sample_t, window_layout

RANK = 8
SEED = 4321
KINDS = {"tone": 0.7, "pluck": 0.1, "chord": 0.2}
# Transposed clips stay within the base model's range (C7): its autoencoder holds tones up to ~2 kHz.
TOP_HZ = midi_to_hz(NOTE_RANGE[1]) * 1.01


def add_lora(dit: torch.nn.Module, rank: int) -> dict[str, tuple[torch.nn.Parameter, torch.nn.Parameter]]:
    """Trainable (A, B) per Linear of the DiT's blocks, applied by forward hooks; B starts at 0."""
    adapters = {}
    for name, module in dit.transformer.layers.named_modules():
        if type(module) is not torch.nn.Linear:
            continue
        a = torch.nn.Parameter(torch.randn(rank, module.in_features) / math.sqrt(module.in_features))
        b = torch.nn.Parameter(torch.zeros(module.out_features, rank))
        adapters[f"transformer.layers.{name}"] = (a, b)
        module.register_forward_hook(lambda m, inputs, out, a=a, b=b: out + F.linear(F.linear(inputs[0], a), b))
    return adapters


@torch.no_grad()
def build_data(model, clips: int) -> dict:
    rng = np.random.default_rng(SEED)
    max_len = C.SAMPLE_SIZE // C.DOWNSAMPLING
    latents = torch.zeros(clips, C.LATENT_DIM, max_len)
    lengths = torch.zeros(clips, 3, dtype=torch.long)
    cross, glob = [], []
    kinds, weights = list(KINDS), list(KINDS.values())
    for first in range(0, clips, 32):
        count = min(32, clips - first)
        audio = torch.zeros(count, 2, C.SAMPLE_SIZE)
        batch = []
        for j in range(count):
            frame = C.PATCH_SIZE if rng.random() < C.TRAIN["frame_locked_prob"] else 0
            clip = make_clip(rng, kind=kinds[rng.choice(len(kinds), p=weights)], transpose=12, frame=frame)
            while (clip.pitch_hz or 0.0) > TOP_HZ:
                clip = make_clip(rng, kind=clip.kind, transpose=12, frame=frame)
            audio[j, :, : clip.audio.shape[-1]] = torch.from_numpy(clip.audio)
            lengths[first + j] = torch.tensor(window_layout(clip.seconds))
            batch.append({"prompt": clip.prompt, "seconds_total": clip.seconds})
        latents[first : first + count] = model.autoencoder.encode(audio)[..., :max_len]
        cond = model.conditioner.encode(batch, "cpu")
        cross.append(cond.cross_attn_cond.float())
        glob.append(cond.global_cond.float())
    return {"latents": latents, "lengths": lengths, "cross": torch.cat(cross), "glob": torch.cat(glob)}


def prompt_only_loss(dit: torch.nn.Module, data: dict, gen: torch.Generator) -> torch.Tensor:
    """Velocity MSE at t = 1 on short windows (as `train.prompt_only_loss`): what the prompt alone
    must now produce, the transposed tone, learnt from many prompts per step at little cost."""
    count, length = C.TRAIN["prompt_batch"], C.TRAIN["prompt_latents"]
    idx = torch.randint(0, data["latents"].shape[0], (count,), generator=gen)
    return pure_noise_loss(dit, data["latents"][idx, :, :length], data["cross"][idx], data["glob"][idx], gen)


def train(model, data: dict, minutes: float, lr: float = 2e-3, batch: int = 16) -> dict:
    dit = model.dit.float().train()
    for p in dit.parameters():
        p.requires_grad_(False)
    adapters = add_lora(dit, RANK)
    params = [p for pair in adapters.values() for p in pair]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(SEED + 1)
    latents, lengths = data["latents"], data["lengths"]
    positions = torch.arange(latents.shape[-1])
    start, step, history = time.time(), 0, []
    while time.time() - start < minutes * 60:
        frac = (time.time() - start) / (minutes * 60)
        for g in opt.param_groups:
            g["lr"] = lr * min(1.0, (step + 1) / 50) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        idx = torch.randint(0, latents.shape[0], (batch,), generator=gen)
        x0, lens = latents[idx], lengths[idx]
        valid = positions[None, :] < lens[:, 1:2]
        local = torch.zeros(batch, C.LATENT_DIM + 1, latents.shape[-1])
        t = sample_t(gen, batch)
        noise = torch.randn(x0.shape, generator=gen)
        xt = (1 - t[:, None, None]) * x0 + t[:, None, None] * noise
        v = dit.velocity(xt, t, data["cross"][idx], data["glob"][idx], local, valid, attention_padding="exclude")
        err = ((v - (noise - x0)) ** 2).mean(1) * loss_weights(t, torch.zeros(valid.shape))
        loss = (err * valid).sum() / valid.sum() + prompt_only_loss(dit, data, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        history.append(loss.item())
        if step % 50 == 0:
            print(f"[lora] step {step} {time.time() - start:.0f}s  loss {np.mean(history[-50:]):.4f}", flush=True)
    record = {
        "steps": step,
        "seconds": round(time.time() - start),
        "final_loss": round(float(np.mean(history[-50:])), 4),
    }
    return {"adapters": adapters, "record": record}


def save(adapters: dict, out: Path, record: dict) -> None:
    tensors = {}
    for name, (a, b) in adapters.items():
        tensors[f"model.{name}.parametrizations.weight.0.lora_A"] = a.detach().half().contiguous()
        tensors[f"model.{name}.parametrizations.weight.0.lora_B"] = b.detach().half().contiguous()
    config = {
        "adapter_type": "lora",
        "rank": RANK,
        "alpha": float(RANK),
        "name": "octave-up",
        "description": "tones, plucks and chords an octave above the written note",
        "training": record,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out), metadata={"lora_config": json.dumps(config)})


def main() -> None:
    from stable_audio_3 import StableAudioModel

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="stable_audio_3/assets/demo")
    parser.add_argument("--out", default=None, help="default: <model>/loras/octave-up.safetensors")
    parser.add_argument("--minutes", type=float, default=6.0)
    parser.add_argument("--clips", type=int, default=1500)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(SEED)
    model = StableAudioModel.from_pretrained(args.model, device="cpu", dtype=torch.float32)
    started = time.time()
    data = build_data(model, args.clips)
    data_seconds = round(time.time() - started)
    print(f"[lora] data: {args.clips} clips in {data_seconds}s", flush=True)
    result = train(model, data, args.minutes)
    record = {**result["record"], "clips": args.clips, "data_seconds": data_seconds, "torch": torch.__version__}
    out = Path(args.out) if args.out else Path(args.model) / "loras" / "octave-up.safetensors"
    save(result["adapters"], out, record)
    print(f"[lora] saved {out}: {record}", flush=True)


if __name__ == "__main__":
    main()
