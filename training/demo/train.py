"""Train the built-in `demo` model from scratch on procedurally generated audio (CPU-friendly).

    python -m training.demo.train --out stable_audio_3/assets/demo [--work /tmp/demo_work]
        [--ae-minutes 12] [--dit-minutes 25] [--clips 2000] [--threads 2] [--stage all|ae|data|dit|export]

Stages (each saves to --work, so a stage can be rerun alone):
  ae      SAME autoencoder on random crops: L1 + multi-resolution STFT loss; then the SoftNorm bottleneck's
          running_std is set so the latents have unit standard deviation.
  data    a fixed, seeded set of labelled clips, encoded once with the frozen autoencoder in the exact
          latent layout generate() uses (content + 6 s headroom, capped at the model's sample_size).
  dit     DiT + T5Gemma encoder + conditioners, rectified flow (x_t = (1-t) x0 + t noise, target
          v = noise - x0), padding mask as in generate(), CFG dropout and random inpainting masks.
  export  model_config.json, model.safetensors (official prefixes), the text encoder folder.

Budgets are wall-clock minutes; every random draw is seeded, so the run is reproducible up to the
number of steps that fit in the budget (which is recorded in training_log.json).
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
from safetensors.torch import load_file, save_file

from stable_audio_3 import masks
from stable_audio_3.models.conditioning import Conditioner, PromptTokenizer
from stable_audio_3.models.dit import DiffusionTransformer
from stable_audio_3.models.same import SAMEAutoencoder
from stable_audio_3.models.t5gemma import T5GemmaEncoder, T5GemmaEncoderConfig

from . import config as C
from .data import SAMPLE_RATE, make_clip, vocabulary

SPECIAL_TOKENS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]


# -- tokenizer and text encoder ----------------------------------------------------------------------


def build_tokenizer_files(folder: Path) -> int:
    """Write tokenizer.json (WordLevel, lower-cased, digits split) and tokenizer_config.json; returns vocab size."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers

    words = SPECIAL_TOKENS + vocabulary()
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r"[\s,.;:!?()\"']+"), behavior="removed"),
            pre_tokenizers.Digits(individual_digits=True),
        ]
    )
    tok.add_special_tokens(SPECIAL_TOKENS)
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    tokenizer_config = {
        "backend": "tokenizers",
        "bos_token": "<bos>",
        "eos_token": "<eos>",
        "mask_token": "<mask>",
        "pad_token": "<pad>",
        "unk_token": "<unk>",
        "padding_side": "right",
        "add_bos_token": False,
        "add_eos_token": True,
        "model_max_length": C.TEXT_MAX_LENGTH,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")
    return len(words)


def new_text_encoder(vocab_size: int, folder: Path) -> T5GemmaEncoder:
    cfg_json = C.text_encoder_config(vocab_size)
    (folder / "config.json").write_text(json.dumps(cfg_json, indent=2) + "\n")
    model = T5GemmaEncoder(T5GemmaEncoderConfig.from_hf(cfg_json))
    for name, p in model.named_parameters():
        if name.endswith("layernorm.weight") or name == "norm.weight":
            torch.nn.init.zeros_(p)
        else:
            torch.nn.init.normal_(p, std=0.02)
    return model


# -- autoencoder ---------------------------------------------------------------------------------------


def stft_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Multi-resolution STFT: log-magnitude L1 + spectral convergence at 3 window sizes."""
    pred, target = pred.reshape(-1, pred.shape[-1]), target.reshape(-1, target.shape[-1])
    total = pred.new_zeros(())
    for n_fft in (256, 1024, 4096):
        window = torch.hann_window(n_fft, device=pred.device)
        sp = torch.stft(pred, n_fft, n_fft // 4, window=window, return_complex=True).abs()
        st = torch.stft(target, n_fft, n_fft // 4, window=window, return_complex=True).abs()
        total = total + F.l1_loss(torch.log(sp + 1e-2), torch.log(st + 1e-2)) * 0.5
        total = total + (st - sp).norm() / (st.norm() + 1e-7)
    return total


def ae_batch(rng: np.random.Generator, batch: int, crop: int) -> torch.Tensor:
    out = np.zeros((batch, 2, crop), np.float32)
    for i in range(batch):
        clip = make_clip(rng, seconds=float(np.ceil(crop / SAMPLE_RATE * 10) / 10 + 0.2))
        start = int(rng.integers(0, clip.audio.shape[-1] - crop + 1))
        out[i] = clip.audio[:, start : start + crop]
    return torch.from_numpy(out)


def copy_previous_token_attention(block: torch.nn.Module, dim: int, dim_heads: int, strength: float = 12.0) -> None:
    """Make a SAME block pass each token's predecessor through: x_p + x_{p-1}, feed-forward off.

    Queries and keys become constants (DyT q/k norms with gain 0 and bias = the constant), so after
    RoPE the logits depend on the relative position only; the key phases put the peak at offset -1.
    With stride 1, offset -1 is exactly "the patch (encoder) / latent (decoder) of my own group".
    """
    attn = block.self_attn
    rot = block.rope.inv_freq.numel()
    theta = block.rope.inv_freq.float()
    q = torch.zeros(dim_heads)
    k = torch.zeros(dim_heads)
    q[:rot] = strength
    k[:rot] = strength * torch.cos(theta)
    k[rot : 2 * rot] = strength * torch.sin(theta)
    with torch.no_grad():
        for norm, const in ((attn.q_norm, q), (attn.k_norm, k)):
            norm.gamma.zero_()
            norm.beta.copy_(const)
        for norm in (block.pre_norm, block.ff_norm):  # DyT as a near-identity: 1000 tanh(x / 1000)
            norm.alpha.fill_(1e-3)
            norm.gamma.fill_(1e3)
            norm.beta.zero_()
        w = attn.to_qkv.weight  # rows: q, k, v
        w.zero_()
        w[2 * dim : 3 * dim] = torch.eye(dim)
        attn.to_out.weight.copy_(torch.eye(dim))
        block.ff.ff[2].weight.zero_()
        block.ff.ff[2].bias.zero_()


def identity_block(block: torch.nn.Module) -> None:
    with torch.no_grad():
        block.self_attn.to_out.weight.zero_()
        block.ff.ff[2].weight.zero_()
        block.ff.ff[2].bias.zero_()


def pca_autoencoder_init(ae: SAMEAutoencoder, rng: np.random.Generator, clips: int = 250) -> dict:
    """Closed-form start: the SAME autoencoder as a PCA of 2048-sample stereo frames.

    Encoder mapping = the top principal directions, decoder mapping = their transpose, the
    transformer blocks copy a group's patch to its learned token (see above) or do nothing.
    """
    frame = ae.patch_size
    rows = []
    for _ in range(clips):
        clip = make_clip(rng, seconds=1.0)
        n = clip.audio.shape[-1] // frame
        x = torch.from_numpy(clip.audio[:, : n * frame]).reshape(2, n, frame).permute(1, 0, 2).reshape(n, -1)
        rows.append(x)
    data = torch.cat(rows).double()
    _, svals, vh = torch.linalg.svd(data, full_matrices=False)
    basis = vh[: ae.latent_dim].float()  # (latent, 2 * frame)
    enc_map = ae.encoder.layers[0].mapping
    dec_map = ae.decoder.layers[3].mapping
    width = enc_map.weight_v.shape[0]
    if width != ae.latent_dim:
        raise ValueError("the PCA start needs encoder width == latent_dim")
    with torch.no_grad():
        enc_map.weight_v.copy_(basis[:, :, None])
        enc_map.weight_g.fill_(1.0)
        enc_map.bias.zero_()
        v = torch.zeros_like(dec_map.weight_v)
        v[:, :, 1] = basis.T
        dec_map.weight_v.copy_(v)
        dec_map.weight_g.copy_(basis.T.norm(dim=1).reshape(-1, 1, 1))
        dec_map.bias.zero_()
        for lin in (ae.encoder.layers[2], ae.decoder.layers[1]):
            lin.weight.copy_(torch.eye(ae.latent_dim))
            lin.bias.zero_()
        for resampler in (ae.encoder.layers[0], ae.decoder.layers[3]):
            resampler.new_tokens.zero_()
            blocks = resampler.transformers
            heads_dim = blocks[0].self_attn.q_norm.gamma.numel()
            copy_previous_token_attention(blocks[0], width, heads_dim)
            for block in blocks[1:]:
                identity_block(block)
    energy = float((svals[: ae.latent_dim] ** 2).sum() / (svals**2).sum())
    return {"pca_frames": int(data.shape[0]), "pca_energy_kept": energy}


def train_autoencoder(work: Path, minutes: float, log: dict, resume: bool = False) -> SAMEAutoencoder:
    torch.manual_seed(C.TRAIN["seed"])
    rng = np.random.default_rng(C.TRAIN["seed"])
    cfg = C.model_config()
    ae = SAMEAutoencoder(cfg["model"]["pretransform"]["config"])
    if resume and (work / "ae.pt").is_file():  # continue an earlier session (its steps are in the log)
        ae.load_state_dict(torch.load(work / "ae.pt"))
    else:
        log["ae_init"] = pca_autoencoder_init(ae, rng)
        torch.save(ae.state_dict(), work / "ae_pca.pt")
    opt = torch.optim.AdamW(ae.parameters(), lr=C.TRAIN["ae_lr"], betas=(0.9, 0.99), weight_decay=0.0)
    start, step, history = time.time(), 0, []
    budget = minutes * 60
    while time.time() - start < budget:
        frac = (time.time() - start) / budget
        for group in opt.param_groups:  # warmup, then cosine to 10%
            group["lr"] = (
                C.TRAIN["ae_lr"] * min(1.0, (step + 1) / 50) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
            )
        audio = ae_batch(rng, C.TRAIN["ae_batch"], C.TRAIN["ae_crop_samples"])
        recon = ae.decode(ae.encode(audio))[..., : audio.shape[-1]]
        wave = F.l1_loss(recon, audio)
        spec = stft_loss(recon, audio)
        loss = 10 * wave + spec
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ae.parameters(), 1.0)
        opt.step()
        step += 1
        history.append((wave.item(), spec.item()))
        if step % 100 == 0:
            torch.save(ae.state_dict(), work / "ae_partial.pt")
        if step % 25 == 0:
            w, s = np.mean(history[-25:], axis=0)
            print(f"[ae] step {step} {time.time() - start:.0f}s  l1 {w:.4f}  stft {s:.3f}", flush=True)
    # Unit-variance latents for the DiT: running_std = std of the (affine) encoder output.
    ae.eval()
    with torch.no_grad():
        z = torch.cat([ae.encode(ae_batch(rng, 8, C.TRAIN["ae_crop_samples"])) for _ in range(8)])
        ae.bottleneck.running_std.fill_(float(z.std()) * float(ae.bottleneck.running_std))
    w, s = np.mean(history[-50:], axis=0) if history else (None, None)
    log.setdefault("ae_sessions", []).append({"steps": step, "seconds": round(time.time() - start)})
    log["ae"] = {
        "steps": step,
        "seconds": round(time.time() - start),
        "final_l1": None if w is None else float(w),
        "final_stft": None if s is None else float(s),
        "latent_std_before_norm": float(z.std()),
    }
    torch.save(ae.state_dict(), work / "ae.pt")
    return ae


def load_autoencoder(work: Path) -> SAMEAutoencoder:
    ae = SAMEAutoencoder(C.model_config()["model"]["pretransform"]["config"])
    ae.load_state_dict(torch.load(work / "ae.pt"))
    return ae.eval().requires_grad_(False)


# -- latent dataset ----------------------------------------------------------------------------------


def window_layout(seconds: float) -> tuple[int, int, int]:
    """(window latents, valid latents, content latents) exactly as generate() lays out one item."""
    enc = C.model_config()["model"]["pretransform"]["config"]["encoder"]["config"]
    n = masks.audio_sample_size(
        [seconds],
        sample_rate=SAMPLE_RATE,
        downsampling_ratio=C.DOWNSAMPLING,
        latents_per_align=masks.latents_per_alignment(enc),
        sample_size=C.SAMPLE_SIZE,
    )
    length = n // C.DOWNSAMPLING
    valid = int(
        masks.valid_lengths(
            [seconds], sample_rate=SAMPLE_RATE, downsampling_ratio=C.DOWNSAMPLING, latent_length=length
        )[0]
    )
    content = masks.content_latents([seconds], sample_rate=SAMPLE_RATE, downsampling_ratio=C.DOWNSAMPLING)[0]
    return length, valid, content


@torch.no_grad()
def build_dataset(work: Path, ae: SAMEAutoencoder, clips: int, log: dict, batch: int = 16) -> None:
    """Encode `clips` seeded clips, each zero-padded to its generate() window (max_len latents at most)."""
    rng = np.random.default_rng(C.TRAIN["seed"] + 1)
    max_len = C.SAMPLE_SIZE // C.DOWNSAMPLING
    latents = torch.zeros(clips, C.LATENT_DIM, max_len)
    lengths = torch.zeros(clips, 3, dtype=torch.long)
    prompts, seconds = [], []
    start = time.time()
    for first in range(0, clips, batch):
        count = min(batch, clips - first)
        audio = torch.zeros(count, 2, C.SAMPLE_SIZE)
        for j in range(count):
            clip = make_clip(rng)
            length, valid, content = window_layout(clip.seconds)
            audio[j, :, : clip.audio.shape[-1]] = torch.from_numpy(clip.audio)
            lengths[first + j] = torch.tensor([length, valid, content])
            prompts.append(clip.prompt)
            seconds.append(clip.seconds)
        latents[first : first + count] = ae.encode(audio)[..., :max_len]
        print(f"[data] {first + count}/{clips} clips, {time.time() - start:.0f}s", flush=True)
    # Windows shorter than max_len (only when MAX_SECONDS > 6 s of headroom allows) are masked as padding.
    torch.save({"latents": latents, "lengths": lengths, "prompts": prompts, "seconds": seconds}, work / "dataset.pt")
    log["data"] = {"clips": clips, "seconds": round(time.time() - start), "latent_std": float(latents.std())}


# -- DiT -----------------------------------------------------------------------------------------------


def inpaint_masks(rng: torch.Generator, lengths: torch.Tensor, max_len: int, prob: float) -> torch.Tensor:
    """(B, T) keep-masks: none, a continuation prefix, or 1-3 regenerated regions inside the content."""
    keep = torch.zeros(lengths.shape[0], max_len)
    for b in range(lengths.shape[0]):
        content = int(lengths[b, 2])
        if float(torch.rand((), generator=rng)) >= prob or content < 4:
            continue
        keep[b, :content] = 1
        if float(torch.rand((), generator=rng)) < 0.35:  # continuation: keep a prefix
            cut = int(torch.randint(1, content, (), generator=rng))
            keep[b, cut:content] = 0
        else:
            for _ in range(int(torch.randint(1, 4, (), generator=rng))):
                s = int(torch.randint(0, content - 1, (), generator=rng))
                e = min(content, s + int(torch.randint(1, max(2, content // 2), (), generator=rng)))
                keep[b, s:e] = 0
    return keep


def text_features(
    cond: Conditioner, text: T5GemmaEncoder, tok: PromptTokenizer, prompts: list[str], seconds: list[float]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The conditioner's computation with gradients through the text encoder (the inference path runs it frozen)."""
    ids, tok_mask = tok(prompts)
    hidden = text(ids, tok_mask)
    prompt = cond.conditioners["prompt"]
    embeds = torch.where(tok_mask.bool()[..., None], hidden, prompt.padding_embedding)
    secs = cond.conditioners["seconds_total"](seconds, "cpu").embeds
    return torch.cat([embeds, secs], dim=1), secs[:, 0]


def sample_t(gen: torch.Generator, b: int) -> torch.Tensor:
    """Half uniform, half uniform in log-SNR over the sampling schedule's range (-6.2 .. 2, widened)."""
    uniform = torch.rand(b, generator=gen)
    logsnr = -7.0 + 10.0 * torch.rand(b, generator=gen)
    t = torch.where(torch.rand(b, generator=gen) < 0.5, uniform, torch.sigmoid(-logsnr))
    return t.clamp(1e-3, 1 - 1e-3)


def train_dit(work: Path, out_text_dir: Path, minutes: float, log: dict, resume: bool = False) -> None:
    torch.manual_seed(C.TRAIN["seed"] + 2)
    gen = torch.Generator().manual_seed(C.TRAIN["seed"] + 3)
    data = torch.load(work / "dataset.pt")
    latents, lengths, prompts, seconds = data["latents"], data["lengths"], data["prompts"], data["seconds"]
    cfg = C.model_config()
    dit = DiffusionTransformer.from_config(cfg["model"]["diffusion"]["config"])
    cond = Conditioner.from_config(cfg["model"]["conditioning"], cfg["model"]["diffusion"])
    vocab = build_tokenizer_files(out_text_dir)
    text = new_text_encoder(vocab, out_text_dir)
    tok = PromptTokenizer.from_dir(out_text_dir, C.TEXT_MAX_LENGTH)
    if resume:  # continue from the last session's EMA weights (a fresh optimiser and LR schedule)
        saved = torch.load(work / "dit_ema.pt")
        for key, module in (("dit", dit), ("cond", cond), ("text", text)):
            module.load_state_dict(saved[key])
    params = [
        {"params": list(dit.parameters()) + list(cond.parameters()), "lr": C.TRAIN["dit_lr"]},
        {"params": list(text.parameters()), "lr": C.TRAIN["text_lr"]},
    ]
    opt = torch.optim.AdamW(params, betas=(0.9, 0.99), weight_decay=0.01)
    base_lrs = [g["lr"] for g in opt.param_groups]
    modules = {"dit": dit, "cond": cond, "text": text}
    ema = {k: {n: p.detach().clone() for n, p in m.state_dict().items()} for k, m in modules.items()}
    n_clips, max_len = latents.shape[0], latents.shape[-1]
    positions = torch.arange(max_len)
    start, step, history = time.time(), 0, []
    budget = minutes * 60
    while time.time() - start < budget:
        frac = (time.time() - start) / budget
        for g, lr in zip(opt.param_groups, base_lrs, strict=True):
            g["lr"] = lr * min(1.0, (step + 1) / 100) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))
        idx = torch.randint(0, n_clips, (C.TRAIN["dit_batch"],), generator=gen)
        x0, lens = latents[idx], lengths[idx]
        valid = positions[None, :] < lens[:, 1:2]
        keep = inpaint_masks(gen, lens, max_len, C.TRAIN["inpaint_prob"])
        local = torch.cat([keep[:, None], x0 * keep[:, None]], dim=1)
        cross, glob = text_features(cond, text, tok, [prompts[i] for i in idx], [seconds[i] for i in idx])
        drop = torch.rand(len(idx), generator=gen) < C.TRAIN["cfg_dropout"]
        cross = torch.where(drop[:, None, None], torch.zeros_like(cross), cross)
        t = sample_t(gen, len(idx))
        noise = torch.randn(x0.shape, generator=gen)
        xt = (1 - t[:, None, None]) * x0 + t[:, None, None] * noise
        v = dit.velocity(xt, t, cross, glob, local, valid, attention_padding="exclude")
        err = ((v - (noise - x0)) ** 2).mean(1)
        loss = (err * valid).sum() / valid.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in params for p in g["params"]], 1.0)
        opt.step()
        step += 1
        decay = min(C.TRAIN["ema_decay"], (1 + step) / (10 + step))
        with torch.no_grad():
            for k, m in modules.items():
                for n, p in m.state_dict().items():
                    if p.is_floating_point():
                        ema[k][n].mul_(decay).add_(p.detach(), alpha=1 - decay)
        history.append(loss.item())
        if step % 20 == 0:
            print(f"[dit] step {step} {time.time() - start:.0f}s  loss {np.mean(history[-20:]):.4f}", flush=True)
        if step % 200 == 0:
            torch.save(ema, work / "dit_ema.pt")
    torch.save(ema, work / "dit_ema.pt")
    log.setdefault("dit_sessions", []).append({"steps": step, "seconds": round(time.time() - start)})
    log["dit"] = {
        "steps": step,
        "seconds": round(time.time() - start),
        "final_loss": float(np.mean(history[-50:])),
        "batch": C.TRAIN["dit_batch"],
    }


# -- export --------------------------------------------------------------------------------------------


def shippable(name: str, tensor: torch.Tensor) -> torch.Tensor:
    """Large weights as float16 (the loader casts them back to the run dtype); small tensors and RoPE
    frequencies stay float32, where rounding would shift every position's angle."""
    if tensor.is_floating_point() and tensor.numel() >= 4096 and not name.endswith("inv_freq"):
        return tensor.half().contiguous()
    return tensor.contiguous()


def export(work: Path, out: Path, log: dict) -> None:
    ema = torch.load(work / "dit_ema.pt")
    ae = torch.load(work / "ae.pt")
    state = {f"model.model.{k}": v for k, v in ema["dit"].items()}
    state.update({f"pretransform.model.{k}": v for k, v in ae.items()})
    state.update({f"conditioner.{k}": v for k, v in ema["cond"].items()})
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: shippable(k, v) for k, v in state.items()}, str(out / "model.safetensors"))
    text_dir = out / C.TEXT_SUBFOLDER
    save_file(
        {f"model.encoder.{k}": v.contiguous() for k, v in ema["text"].items()}, str(text_dir / "model.safetensors")
    )
    (out / "model_config.json").write_text(json.dumps(C.model_config(), indent=2) + "\n")
    (out / "training_log.json").write_text(json.dumps(log, indent=2) + "\n")
    # A round trip through the loader's own reading, so a broken export fails here, not in a test.
    load_file(str(out / "model.safetensors"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="stable_audio_3/assets/demo")
    parser.add_argument("--work", default="/tmp/demo_work")
    parser.add_argument("--stage", default="all", choices=["all", "ae", "data", "dit", "export"])
    parser.add_argument("--ae-minutes", type=float, default=C.TRAIN["ae_minutes"])
    parser.add_argument("--dit-minutes", type=float, default=C.TRAIN["dit_minutes"])
    parser.add_argument("--clips", type=int, default=C.TRAIN["dataset_clips"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--resume-ae", action="store_true", help="continue from <work>/ae.pt")
    parser.add_argument("--resume-dit", action="store_true", help="continue from <work>/dit_ema.pt")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work, out = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    log_path = work / "training_log.json"
    log = json.loads(log_path.read_text()) if log_path.is_file() else {}
    log["command"] = " ".join(
        [
            "python -m training.demo.train",
            f"--out {args.out}",
            f"--stage {args.stage}",
            f"--ae-minutes {args.ae_minutes}",
            f"--dit-minutes {args.dit_minutes}",
            f"--clips {args.clips}",
            f"--threads {args.threads}",
        ]
    )
    log["torch"] = torch.__version__
    if args.stage in ("all", "ae"):
        train_autoencoder(work, args.ae_minutes, log, resume=args.resume_ae)
        log_path.write_text(json.dumps(log, indent=2))
    if args.stage in ("all", "data"):
        build_dataset(work, load_autoencoder(work), args.clips, log)
        log_path.write_text(json.dumps(log, indent=2))
    if args.stage in ("all", "dit"):
        train_dit(work, out / C.TEXT_SUBFOLDER, args.dit_minutes, log, resume=args.resume_dit)
        log_path.write_text(json.dumps(log, indent=2))
    if args.stage in ("all", "export", "dit"):
        export(work, out, log)
        log_path.write_text(json.dumps(log, indent=2))


if __name__ == "__main__":
    main()
