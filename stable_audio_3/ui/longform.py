"""The page's long-form mode (its own page, /long-form): a prompt schedule, the total length, and a player
that starts while the piece is still being made (see `stable_audio_3.longform`).

Each finished stretch is written as a small WAV and announced to the page; the page's player (Web Audio,
in `PLAYER_JS`) fetches and schedules each one at its place in the piece, so playback starts after the
first window and the stretches join sample for sample. An `<audio>` element cannot play a file that is
still growing, and Gradio's own streaming audio output needs ffmpeg, which this package does not. The
whole piece is written once it is done (16-bit WAV, the same samples: no gain, clamped to [-1, 1]).

The run shares the page's one model, its lock and its Stop flag (`ModelHolder`), so it never overlaps a
generation of the main page.
"""

from __future__ import annotations

import re
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gradio as gr

from ..longform import DEFAULT_MAX_DURATION, LONG_FIELDS, LongFormRequest
from ..request import FIELDS, GenerationRequest, OptionError
from .controls import label_of, parse_seeds
from .generation import ModelHolder, Stopped, condense, is_demo, refused

PATH = "long-form"
LABELS = {"schedule": "Prompt schedule", "duration": "Total length (s)", "window_seconds": "Window (s)",
          "overlap_seconds": "Overlap (s)", "negative_prompt": "Negative prompt"}
DEMO_CONTINUATION = (8, 1.0)  # the demo's model card: steps and CFG for continuation
SCHEDULE_LINE = re.compile(r"\s*(\d+(?:\.\d*)?)\s*s?\s*:\s*(.*?)\s*")
SCHEDULE_HELP = ("One line per prompt: SECONDS: PROMPT (from that time on). The first line may leave out the time: "
                 "it plays from 0 s. Example:\n0: sine wave a4\n10: sine wave e5")

PLAYER_TEMPLATE = """
<div class="sa3-long-player">
  <button class="sa3-toggle" type="button">Play</button>
  <span class="sa3-time">0:00.0</span>
  <span class="sa3-ready">{{value.ready}}</span>
  <ol class="sa3-windows">{{#each value.stretches}}<li>{{this.label}}</li>{{/each}}</ol>
</div>
"""
PLAYER_CSS = """
.sa3-long-player { display: flex; flex-wrap: wrap; gap: 0.6em; align-items: center; }
.sa3-time { font-variant-numeric: tabular-nums; font-weight: 600; }
.sa3-windows { flex-basis: 100%; margin: 0; font-size: 0.9em; }
"""
# The player: one per page (window.sa3LongPlayer). Each value names its run; a new run stops the old one.
# Stretch i is fetched and decoded in order and starts at t0 + its start; when one comes later than its
# place (generation slower than playback), the timeline moves on so nothing overlaps.
PLAYER_JS = """
const P = window.sa3LongPlayer || (window.sa3LongPlayer = {ctx: null, run: null, t0: null, queued: 0, end: 0,
  sources: [], chain: Promise.resolve(), paused: false, done: false, error: null});
P.element = element;
const root = () => (window.gradio_config?.root || '').replace(/\\/$/, '');
P.unlock = (rate) => {
  if (!P.ctx) P.ctx = new AudioContext(rate ? {sampleRate: rate} : undefined);
  if (P.ctx.state === 'suspended' && !P.paused) P.ctx.resume();
};
const reset = (run) => {
  P.sources.forEach(s => { try { s.stop(); } catch (e) {} });
  Object.assign(P, {run, t0: null, queued: 0, end: 0, sources: [], chain: Promise.resolve(), paused: false,
                    error: null});
};
const schedule = (run, s) => {
  P.chain = P.chain.then(async () => {
    if (P.run !== run) return;
    const response = await fetch(root() + '/gradio_api/file=' + s.path);
    if (!response.ok) throw new Error('stretch ' + s.window + ': HTTP ' + response.status);
    const buffer = await P.ctx.decodeAudioData(await response.arrayBuffer());
    if (P.run !== run) return;
    const now = P.ctx.currentTime;
    if (P.t0 === null || P.t0 + s.start < now + 0.05) P.t0 = now + 0.05 - s.start;
    const source = P.ctx.createBufferSource();
    source.buffer = buffer;
    source.connect(P.ctx.destination);
    source.start(P.t0 + s.start);
    P.sources.push(source);
    P.end = s.start + buffer.duration;
  }).catch(e => { P.error = String(e); });
};
const sync = () => {
  const v = props.value || {};
  if (!v.run) return;
  if (v.run !== P.run) reset(v.run);
  P.unlock(v.rate);
  P.done = !!v.done;
  const list = v.stretches || [];
  while (P.queued < list.length) schedule(v.run, list[P.queued++]);
};
P.position = () => (P.ctx && P.t0 !== null) ? Math.max(0, Math.min(P.ctx.currentTime - P.t0, P.end)) : 0;
P.state = () => {
  if (!P.ctx || P.t0 === null) return 'idle';
  if (P.ctx.state !== 'running') return 'paused';
  if (P.ctx.currentTime - P.t0 < P.end) return 'playing';
  return P.done ? 'ended' : 'waiting';
};
element.addEventListener('click', (event) => {
  if (!event.target.closest('.sa3-toggle') || !P.ctx) return;
  P.paused = P.ctx.state === 'running';
  P.paused ? P.ctx.suspend() : P.ctx.resume();
});
if (!P.timer) P.timer = setInterval(() => {
  const el = P.element, at = P.position(), state = P.state();
  if (!el) return;
  el.dataset.position = at.toFixed(3);
  el.dataset.state = state;
  const time = el.querySelector('.sa3-time'), toggle = el.querySelector('.sa3-toggle');
  if (time) time.textContent = Math.floor(at / 60) + ':' + (at % 60).toFixed(1).padStart(4, '0')
    + (P.error ? ' (' + P.error + ')' : '');
  if (toggle) toggle.textContent = state === 'playing' || state === 'waiting' ? 'Pause' : 'Play';
}, 100);
watch('value', sync);
sync();
"""


def page_label(field: str) -> str:
    return LABELS.get(field) or label_of(field)


def parse_schedule(text: str) -> tuple[list[tuple[float, str]], list[int]]:
    """The schedule box -> ([(start, prompt)], the line number of each entry). `SECONDS: PROMPT` per line; the
    first line may be a bare prompt (from 0 s). Blank lines are skipped."""
    entries: list[tuple[float, str]] = []
    lines: list[int] = []
    for number, line in enumerate((text or "").splitlines(), start=1):
        if not line.strip():
            continue
        m = SCHEDULE_LINE.fullmatch(line)
        if m:
            entries.append((float(m.group(1)), m.group(2)))
        elif not entries:
            entries.append((0.0, line.strip()))
        else:
            raise gr.Error(f"Prompt schedule, line {number}: {line.strip()!r} needs a start time: SECONDS: PROMPT "
                           "(only the first line may leave it out)")
        lines.append(number)
    if not entries:
        raise gr.Error(f"Prompt schedule: give at least one prompt. {SCHEDULE_HELP.splitlines()[0]}")
    return entries, lines


def describe(err: OptionError, lines: list[int]) -> str:
    """An OptionError in the page's words: the control's label, and a schedule entry by its line."""
    m = re.fullmatch(r"schedule\[(\d+)\]", err.field)
    label = f"Prompt schedule, line {lines[int(m.group(1))]}" if m and int(m.group(1)) < len(lines) \
        else page_label(err.field)
    if err.detail is None:
        return err.spelled(label)
    detail = err.detail
    if detail.startswith(f"{err.field}="):
        detail = label + detail[len(err.field):]
    return detail if detail.startswith(label) else f"{label}: {detail}"


def continuation_settings(holder: ModelHolder) -> tuple[int | None, float | None]:
    """Steps and CFG the page starts with: the config's continuation settings, the demo card's advice, or
    the model's usual defaults."""
    from ..longform import CONTINUATION_DEFAULTS

    model = holder.model
    if model is None:
        return None, None
    config = model.components.config
    steps, cfg = (config.get(CONTINUATION_DEFAULTS[name]) for name in ("steps", "cfg_scale"))
    if steps is None and cfg is None and is_demo(holder.name):
        return DEMO_CONTINUATION
    return steps or model.defaults.steps, cfg if cfg is not None else model.defaults.cfg_scale


def long_request(values: dict[str, Any]) -> tuple[LongFormRequest, list[int]]:
    """The page's values -> a verified request (and the schedule's line numbers); gr.Error names the control."""
    entries, lines = parse_schedule(values.get("schedule") or "")
    try:
        seed = parse_seeds(str(values.get("seed") if values.get("seed") is not None else "-1"))
        if isinstance(seed, list):
            raise OptionError("seed", values.get("seed"), "one whole number (-1: random) is required")
        number = {name: values.get(name) for name in ("steps", "cfg_scale", "window_seconds", "overlap_seconds")}
        if number["steps"] is not None and float(number["steps"]).is_integer():
            number["steps"] = int(number["steps"])
        request = GenerationRequest(prompt=None, negative_prompt=(values.get("negative_prompt") or "").strip() or None,
                                    seed=seed, steps=number["steps"], cfg_scale=number["cfg_scale"])
        long = LongFormRequest(request, values.get("duration"), tuple(entries), number["window_seconds"] or None,
                               number["overlap_seconds"] or None)
        return long.verify(), lines
    except OptionError as e:
        raise gr.Error(describe(e, lines)) from None


def player_value(run: str, rate: int, total: float, stretches: list[dict], done: bool) -> dict:
    ready = stretches[-1]["end"] if stretches else 0.0
    return {"run": run, "rate": rate, "total": total, "done": done, "stretches": list(stretches),
            "ready": f"{ready:.2f} s of {total:.2f} s made" + ("" if done else " so far")}


def make_piece(holder: ModelHolder, out_dir: Path, values: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """One click of Generate on the long-form page: yields {status, player[, output]} as each stretch is final.
    Refusals raise gr.Error naming the control (before any sampling); Stop raises `Stopped`."""
    from ..audio import write_audio
    from ..longform import check_lengths, model_plan, piece_metadata, stream_plan
    from ..pipeline import GenerationCancelled

    long, lines = long_request(values)
    loras = list(values.get("loras") or [])
    run = uuid.uuid4().hex[:12]
    folder = Path(tempfile.mkdtemp(dir=out_dir, prefix="long-"))
    holder.stop.clear()
    with holder.lock:
        model = holder.get(values.get("model") or holder.name)
        holder.set_loras(loras, [1.0])
        try:
            check_lengths(long, model.defaults.max_duration)
            plan = model_plan(model, long)
        except OptionError as e:  # what needs the model: the window against its maximum
            raise gr.Error(describe(e, lines)) from None
        sr, count, total = plan.sample_rate, len(plan.windows), plan.total / plan.sample_rate
        at = {"window": plan.windows[0], "step": 0}

        def on_window(w, n: int) -> None:
            at["window"] = w

        def callback(step: int, steps: int, x) -> bool:
            at["step"] = step
            return not holder.stop.is_set()

        def running(done_s: float) -> str:
            w = at["window"]
            return (f"Running: window {w.index + 1} of {count} (seed {w.seed}, {w.prompt!r}); "
                    f"{done_s:.2f} s of {total:.2f} s made.")

        stretches: list[dict] = []
        audio = None
        started = time.perf_counter()
        yield {"status": running(0.0), "player": player_value(run, sr, total, [], False)}
        try:
            for s in stream_plan(model, plan, callback, on_window):
                piece = s.audio.cpu()
                path = write_audio(folder / f"stretch-{s.window.index:04d}.wav", piece, sr, subtype="PCM_16")
                if audio is None:
                    import torch

                    audio = torch.empty(piece.shape[0], plan.total)
                audio[:, s.start : s.start + piece.shape[-1]] = piece
                w = s.window
                stretches.append({"path": str(path), "start": s.start_seconds, "end": s.end_seconds,
                                  "window": w.index + 1, "seed": w.seed, "prompt": w.prompt,
                                  "label": f"{s.start_seconds:.2f}-{s.end_seconds:.2f} s: window {w.index + 1}, "
                                           f"seed {w.seed}, {w.prompt}"})
                if w.index + 1 < count:
                    at["window"] = plan.windows[w.index + 1]
                    yield {"status": running(s.end_seconds), "player": player_value(run, sr, total, stretches, False)}
        except GenerationCancelled:
            w = at["window"]
            raise Stopped(f"Stopped in window {w.index + 1} of {count} at step {at['step']}; the "
                          f"{stretches[-1]['end'] if stretches else 0:.2f} s made so far stay in the player.") from None
        elapsed = time.perf_counter() - started
        model_name = holder.name
    title = condense(plan.request.entries()[0][1])
    path = write_audio(folder / f"{title}.long.seed{plan.windows[0].seed}.wav", audio, sr, subtype="PCM_16",
                       metadata=piece_metadata(plan, model_name, [(name, 1.0) for name in loras]))
    seeds = f"seeds {plan.windows[0].seed}-{plan.windows[-1].seed}" if count > 1 else f"seed {plan.windows[0].seed}"
    yield {"status": f"Made {total:.2f} s in {count} window(s) of {plan.window_seconds:.2f} s ({seeds}) in "
                     f"{elapsed:.1f} s.",
           "player": player_value(run, sr, total, stretches, True), "output": str(path)}


def long_form_page(app: gr.Blocks, holder: ModelHolder, out_dir: Path) -> None:
    """Add the long-form page to `app` (after its main page is built)."""

    steps, cfg = continuation_settings(holder)
    with app.route("Long-form", PATH):
        gr.Markdown("### Long-form\nA piece longer than the model's maximum, window by window: each window "
                    "continues the one before, prompts change at the times you give, and the player starts "
                    "after the first window.")
        with gr.Row():
            with gr.Column(scale=6):
                schedule = gr.Textbox(label=LABELS["schedule"], lines=4, info=SCHEDULE_HELP.split(" Example")[0],
                                      placeholder="0: sine wave a4\n10: sine wave e5", elem_id="long-schedule")
            with gr.Column(scale=1, min_width=160):
                generate = gr.Button("Generate", variant="primary", elem_id="long-generate")
                stop = gr.Button("Stop", variant="stop", elem_id="long-stop")
        message = gr.Markdown("", elem_id="long-message")
        with gr.Row(equal_height=False):
            with gr.Column():
                duration = gr.Number(30, label=LABELS["duration"], minimum=0, maximum=DEFAULT_MAX_DURATION,
                                     info=LONG_FIELDS["duration"].metadata["help"], elem_id="long-duration")
                with gr.Row():
                    steps_box = gr.Number(steps, label=label_of("steps"), precision=0, minimum=1,
                                          info="per window; starts at the model's advice for continuation",
                                          elem_id="long-steps")
                    cfg_box = gr.Number(cfg, label=label_of("cfg_scale"), minimum=0, elem_id="long-cfg")
                seed = gr.Textbox("-1", label=label_of("seed"), info="window i uses seed + i; -1: random",
                                  elem_id="long-seed")
                negative = gr.Textbox(label=LABELS["negative_prompt"], info=FIELDS["negative_prompt"].metadata["help"],
                                      elem_id="long-negative")
                with gr.Accordion("Windows", open=False):
                    window = gr.Number(None, label=LABELS["window_seconds"],
                                       info=LONG_FIELDS["window_seconds"].metadata["help"], elem_id="long-window")
                    overlap = gr.Number(None, label=LABELS["overlap_seconds"],
                                        info=LONG_FIELDS["overlap_seconds"].metadata["help"], elem_id="long-overlap")
                shipped = holder.shipped_loras()
                loras = gr.Dropdown(shipped, value=[], multiselect=True, visible=bool(shipped),
                                    label="LoRAs shipped with the model (strength 1)", elem_id="long-loras")
            with gr.Column():
                status = gr.Markdown("", elem_id="long-status")
                player = gr.HTML({}, html_template=PLAYER_TEMPLATE, css_template=PLAYER_CSS, js_on_load=PLAYER_JS,
                                 elem_id="long-player")
                output = gr.Audio(type="filepath", interactive=False, label="The whole piece", elem_id="long-output")

        names = ("schedule", "duration", "steps", "cfg_scale", "seed", "negative_prompt", "window_seconds",
                 "overlap_seconds", "loras")
        inputs = [schedule, duration, steps_box, cfg_box, seed, negative, window, overlap, loras]

        def run(*data):
            values = dict(zip(names, data, strict=True))
            try:
                for update in make_piece(holder, out_dir, values):
                    yield (update["status"], update["player"], update.get("output", gr.skip()), "")
            except gr.Error as e:
                yield (gr.skip(), gr.skip(), gr.skip(), refused("long-form", e.message))
            except Stopped as e:
                yield (gr.skip(), gr.skip(), gr.skip(), str(e))
            except Exception as e:  # a bug, not a mistake: its traceback in the log, the page kept
                import logging

                logging.getLogger("stable_audio_3.ui").exception("long-form generation failed")
                yield (gr.skip(), gr.skip(), gr.skip(), f"⚠️ Generation failed: {type(e).__name__}: {e}")

        generate.click(None, js="() => { window.sa3LongPlayer?.unlock?.(); }")  # sound may start: the user asked
        generate.click(lambda: "", None, message, queue=False, show_progress="hidden", api_name=False).then(
            run, inputs, [status, player, output, message], api_name="long_form", concurrency_id="generate",
            show_progress="hidden")
        stop.click(holder.stop.set, queue=False, api_name=False)
