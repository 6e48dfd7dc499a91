"""The Gradio Blocks of the Perceiver AR app: Image, Music and Text tabs over ``app.service.Service``.

API (``gradio_client``)
-----------------------
The three generation functions have stable ``api_name``s. Pass parameters by keyword; any left out take the default
shown by ``Client(url).view_api()``: each endpoint's own default checkpoint (the first that makes its medium) and
that checkpoint's settings. Requests share one queue whose concurrency is ``perceiverar-app --concurrency``.

Parameters common to all three:
    prompt (str, required): the description (image, music) or the text to continue (text). Up to the context
        budget of the checkpoint with these settings, counted in UTF-8 bytes; empty is an error.
    checkpoint (str): a checkpoint *name* as listed in the tab (never a path).
    num_samples (int, 1..4): how many results from one request.
    seed (int, -1..2**63-1): -1 picks a random seed; the seed used is in the status line and the saved record.
    temperature (float, 0..2): 0 = greedy, 1 = the model's distribution.
    top_k (int, 0..256): keep the k likeliest tokens; 0 = off.
    top_p (float, 0.05..1): nucleus sampling; 1 = off.
    cfg_scale (float, 0..10): classifier-free guidance; 1 = off.
    n_latents (int): latents used at inference, up to twice the trained number; 0 = as trained (the default).
    candidates (int, 1..8): draw this many per result and keep the one the model finds likeliest given the prompt
        (the highest log p(result | prompt)); 1 = off; k times the work.

``/generate_image`` (prompt, checkpoint, size, num_samples, seed, temperature, top_k, top_p, cfg_scale, n_latents,
candidates)
    size (str): "HEIGHTxWIDTH", one of the sizes the checkpoint offers (its trained size).
    Returns (gallery, files, status): gallery = [{"image": png_path, "caption": None}, ...]; files = one PNG per
    sample whose iTXt chunks "prompt" and "parameters" (JSON: prompt, checkpoint, seed, every setting) record how
    it was made; status = a Markdown line.

``/generate_music`` (prompt, checkpoint, seconds, num_samples, seed, temperature, top_k, top_p, cfg_scale,
n_latents, candidates, key_lock)
    seconds (float): length of the audio, from 0.5 s up to what the checkpoint's context holds.
    key_lock (bool): with a checkpoint that plans chord labels, only the diatonic chords of the key the prompt names
        ("... in G minor"), opening on its tonic triad; no effect when the prompt names no key. Default: the
        checkpoint's.
    Returns (audio, files, status): audio = the first sample as a WAV path; files = a WAV (16-bit PCM) and a
    sidecar JSON (prompt, settings, sample rate) per sample; status = Markdown.

``/generate_text`` (prompt, checkpoint, max_new_bytes, num_samples, seed, temperature, top_k, top_p, cfg_scale,
n_latents, candidates)
    max_new_bytes (int): length of the continuation in UTF-8 bytes.
    Returns (text, files, status): text = the continuation (with several samples, each after a
    "── sample k ──" line); files = a UTF-8 TXT and a sidecar JSON per sample; status = Markdown.

Errors. A bad request (empty prompt, prompt over the context, unknown checkpoint or one that cannot make this
medium or cannot be loaded, a setting out of range) is refused before it is queued: the client raises
``gradio_client.exceptions.ValidationError`` listing each bad parameter with its range ("- temperature:
temperature must be between 0 and 2 (0 = greedy), got 100"), and the page marks the fields. A failure while
running (out of memory, stopped) raises ``gradio_client.exceptions.AppError`` with the message the page shows.
The server keeps serving either way.

Example::

    from gradio_client import Client
    client = Client("http://127.0.0.1:7860/")
    gallery, files, status = client.predict(prompt="red apple; food & drink", seed=1, api_name="/generate_image")
    text, files, status = client.predict(prompt="ROMEO.\\n", max_new_bytes=200, api_name="/generate_text")
    job = client.submit(prompt="bach chorale in G major, 4/4 time", seconds=8, api_name="/generate_music")
    audio_path, files, status = job.result()      # job.cancel() stops it
"""

from __future__ import annotations

import logging
import time

import gradio as gr

from app.catalogue import MEDIUM, Capabilities, CheckpointUnavailable
from app.requests import MAX_CANDIDATES, MAX_SAMPLES, params, size_label
from app.runner import RunFailed
from app.service import InvalidRequest, PromptFileError, Service
from app.widgets import EXAMPLES, INTRO, TABS, TITLE, dropdown, number, slider

log = logging.getLogger("perceiverar.app")

STOP_GRACE_S = 5.0  # how long Stop waits for a run to end by itself before cancelling it
WHAT = {"image": "image", "audio": "clip", "text": "text"}


def summary(caps: Capabilities | None) -> str:
    if caps is None:
        return ""
    params_ = f"{caps.n_params / 1e6:,.1f} M" if caps.n_params >= 1e5 else f"{caps.n_params:,}"
    text = (f"Context **{caps.context_len:,}** tokens · **{caps.n_latents:,}** latents · {params_} parameters · "
            f"on `{caps.device}`")  # fmt: skip
    if caps.caption_template:  # how the training captions were written: prompts in that form work best
        text += f"  \nTrained on captions written as `{caps.caption_template}`"
    return text


def _status(kind: str, t0: float, modality: str, fraction: float = 0.0, record: dict | None = None, n: int = 0) -> str:
    dt = time.perf_counter() - t0
    if kind == "progress":
        return f"Generating… **{100 * fraction:.0f}%** · {dt:.1f} s"
    r = record or {}
    size = {"image": lambda: f" · {r['height']}x{r['width']}", "audio": lambda: f" · {r['seconds']:g} s",
            "text": lambda: f" · {r['max_new_bytes']:,} bytes"}[modality]()  # fmt: skip
    demo = " · ⚠ untrained demo model" if r.get("untrained_demo") else ""
    if r.get("stopped"):
        return f"■ **Stopped** after {dt:.1f} s: partial result · seed **{r['seed']}**{demo}"
    best = f" · best of {r['candidates']}" if (r.get("candidates") or 1) > 1 else ""
    key = f" · key lock: {r.get('locked_key') or 'no key named in the prompt'}" if r.get("key_lock") else ""
    return (f"✓ **Done**: {n} {WHAT[modality]}{'s' if n != 1 else ''} in {dt:.1f} s · seed **{r['seed']}**{size}{best}"
            f"{key}{demo}")


def _join_texts(texts) -> str:
    texts = [str(t) for t in (texts or [])]
    if len(texts) <= 1:
        return texts[0] if texts else ""
    return "\n\n".join(f"── sample {i + 1} ──\n{t}" for i, t in enumerate(texts))


def _shown(modality: str, results, files):
    """What the output widget shows: the saved PNGs, the first WAV, or the joined texts."""
    if modality == "image":
        return [f for f in files if f.endswith(".png")] if files else list(results or [])
    if modality == "audio":
        return next((f for f in files if f.endswith(".wav")), None)
    return _join_texts(results)


def _size_widget(modality: str, caps: Capabilities | None):
    if modality == "image":
        sizes = [size_label(*s) for s in caps.image_sizes] if caps else []
        return dropdown(sizes, value=size_label(*caps.default_image_size) if caps and caps.default_image_size else None,
                        label="Image size (height x width)", interactive=len(sizes) > 1, elem_id="image-size")
    if modality == "audio":
        top = max(caps.max_seconds, 1.0) if caps else 1.0
        return slider(0.5, top, value=caps.default_seconds if caps else 0.5, step=0.5, label="Length (seconds)",
                      elem_id="music-seconds")
    top = max(caps.max_text_bytes, 2) if caps else 2
    return slider(1, top, value=caps.default_text_bytes if caps else 1, step=1,
                  label="Length of the continuation (bytes)", elem_id="text-length")  # fmt: skip


def _latents_info(caps: Capabilities | None) -> str:
    n = caps.n_latents if caps else 0
    return f"0 = as trained ({n:,}); fewer is faster and coarser"


def _sampling_widgets(caps: Capabilities | None, slug: str) -> dict:
    """The sampling settings of a tab (slug: image, music, text); music also gets the key lock."""
    d = caps.defaults if caps else {}
    c = {}
    with gr.Row():
        c["num_samples"] = slider(1, MAX_SAMPLES, value=1, step=1, label="Samples", info="How many from one prompt",
                                  elem_id=f"{slug}-num-samples")  # fmt: skip
        c["seed"] = number(value=-1, precision=0, label="Seed", info="-1 = random; the seed used is shown",
                           elem_id=f"{slug}-seed")  # fmt: skip
    with gr.Row():
        c["temperature"] = slider(0.0, 2.0, value=float(d.get("temperature", 1.0)), step=0.05, label="Temperature",
                                  info="0 = always the likeliest token")  # fmt: skip
        c["top_k"] = slider(0, 256, value=int(d.get("top_k") or 0), step=1, label="Top-k", info="0 = off")
    with gr.Row():
        c["top_p"] = slider(0.05, 1.0, value=float(d.get("top_p") or 1.0), step=0.01, label="Top-p", info="1 = off")
        c["cfg_scale"] = slider(0.0, 10.0, value=float(d.get("cfg_scale", 1.0)), step=0.1, label="Guidance scale",
                                info="Classifier-free guidance; 1 = off")  # fmt: skip
    with gr.Row():
        c["n_latents"] = slider(0, max(caps.max_latents, 1) if caps else 1, value=0, step=1, label="Latents",
                                info=_latents_info(caps), elem_id=f"{slug}-latents")  # fmt: skip
        c["candidates"] = slider(1, MAX_CANDIDATES, value=int(d.get("candidates") or 1), step=1, label="Best of",
                                 info=CANDIDATES_INFO, elem_id=f"{slug}-candidates")  # fmt: skip
    if slug == "music":
        c["key_lock"] = gr.Checkbox(value=bool(d.get("key_lock")), label="Key lock", info=KEY_LOCK_INFO,
                                    elem_id="music-key-lock")  # fmt: skip
    return c


KEY_LOCK_INFO = "Chords only from the key the prompt names (e.g. 'in G minor'), opening on its tonic"
CANDIDATES_INFO = "Draw this many per result, keep the likeliest given the prompt; 1 = off (k× the time)"
CHECKPOINT_CONTROLS = ("temperature", "top_k", "top_p", "cfg_scale", "n_latents", "candidates")


def checkpoint_controls(modality: str) -> tuple[str, ...]:
    """The sampling controls a checkpoint change resets to its defaults: CHECKPOINT_CONTROLS, and for music the key lock."""
    return CHECKPOINT_CONTROLS + (("key_lock",) if modality == "audio" else ())


def checkpoint_updates(service: Service, modality: str, name: str) -> list:
    """Updates when a tab's checkpoint changes: notice, summary, length control, Generate, checkpoint_controls().

    Every slider keeps minimum < maximum (Gradio refuses an update otherwise, and the whole update is lost).
    """
    try:
        c = service.capabilities(name)
    except CheckpointUnavailable as e:
        log.info("%s", e)
        return [gr.update(value=f"⚠ {e}", visible=True), "", gr.update(), gr.update(interactive=False),
                *(gr.update() for _ in checkpoint_controls(modality))]  # fmt: skip
    note, d = service.notice(name, modality), c.defaults
    if modality == "image":
        sizes = [size_label(*s) for s in c.image_sizes]
        size_up = gr.update(choices=sizes, value=size_label(*c.default_image_size) if c.default_image_size else None,
                            interactive=len(sizes) > 1)  # fmt: skip
    elif modality == "audio":
        size_up = gr.update(maximum=max(c.max_seconds, 1.0), value=c.default_seconds or 0.5)
    else:
        size_up = gr.update(maximum=max(c.max_text_bytes, 2), value=c.default_text_bytes or 1)
    return [
        gr.update(value=note, visible=bool(note)), summary(c), size_up, gr.update(interactive=modality in c.modalities),
        gr.update(value=float(d.get("temperature", 1.0))), gr.update(value=int(d.get("top_k") or 0)),
        gr.update(value=float(d.get("top_p") or 1.0)), gr.update(value=float(d.get("cfg_scale", 1.0))),
        gr.update(maximum=max(c.max_latents, 1), value=0, info=_latents_info(c)),
        gr.update(value=int(d.get("candidates") or 1)),
        *([gr.update(value=bool(d.get("key_lock")))] if modality == "audio" else []),
    ]  # fmt: skip


def _tab(modality: str, service: Service, gen: dict) -> None:
    """One tab: its checkpoint picker, prompt, length, sampling settings, outputs, and events."""
    spec = TABS[modality]
    slug = spec["title"].lower()  # image, music, text: element ids for tests and styling
    names, default = service.names(modality), service.default_name(modality)
    caps = service.capabilities(default) if default else None
    with gr.Tab(spec["title"], id=modality):
        notice_text = service.notice(default, modality)
        notice = gr.Markdown(notice_text, visible=bool(notice_text), elem_classes="pa-notice",
                             elem_id=f"{slug}-notice")  # fmt: skip
        with gr.Row(equal_height=True):
            ckpt = dropdown(names, value=default, label="Checkpoint", scale=1, interactive=len(names) > 1,
                            filterable=False, elem_id=f"{slug}-checkpoint")  # fmt: skip
            info = gr.Markdown(summary(caps), elem_id=f"{slug}-info")
        with gr.Row():
            with gr.Column(scale=5):
                prompt = gr.Textbox(label=spec["label"], placeholder=spec["placeholder"], lines=6, max_lines=16,
                                    autoscroll=False, elem_id=f"{slug}-prompt")  # fmt: skip
                with gr.Row(equal_height=True):
                    count = gr.Markdown(service.token_count(modality, "", default, None) if default else "",
                                        elem_classes="pa-count", elem_id=f"{slug}-count")  # fmt: skip
                    upload = gr.UploadButton(
                        f"Upload .txt / .md (≤ {service.max_upload_bytes // 1024:,} KB)", file_types=[".txt", ".md"],
                        file_count="single", type="filepath", size="sm", variant="secondary", scale=0,
                        min_width=220, elem_id=f"{slug}-upload",
                    )  # fmt: skip
                with gr.Row():
                    go = gr.Button(spec["button"], variant="primary", scale=3, interactive=caps is not None,
                                   elem_id=f"{slug}-generate")  # fmt: skip
                    stop = gr.Button("Stop", variant="stop", scale=1, elem_id=f"{slug}-stop")
                size = _size_widget(modality, caps)
                with gr.Accordion("Sampling settings", open=False, elem_id=f"{slug}-sampling"):
                    ctl = _sampling_widgets(caps, slug)
                gr.Examples(EXAMPLES[modality], inputs=[prompt], label="Examples (click to use)")
            with gr.Column(scale=4):
                if modality == "image":
                    out = gr.Gallery(label="Image", columns=2, height="auto", format="png", object_fit="contain",
                                     preview=False, elem_classes="pa-gallery", interactive=False,
                                     elem_id="image-output")  # fmt: skip
                elif modality == "audio":
                    out = gr.Audio(label="Music (sample 1)", type="filepath", interactive=False, elem_id="music-output")
                else:
                    out = gr.Textbox(label="Continuation", lines=14, max_lines=30, interactive=False,
                                     buttons=["copy"], elem_id="text-output")  # fmt: skip
                status = gr.Markdown("", elem_classes="pa-status", elem_id=f"{slug}-status")
                files = gr.File(label="Downloads (with the prompt and settings recorded)", file_count="multiple",
                                interactive=False, elem_id=f"{slug}-files")  # fmt: skip

    # ---- events ----
    private = dict(api_visibility="private", show_progress="hidden")

    def read_upload(path):
        try:
            return service.read_prompt_file(path)
        except PromptFileError as e:
            log.info("prompt file refused: %s", e)
            raise gr.Error(str(e), print_exception=False) from None

    upload.upload(read_upload, upload, prompt, concurrency_limit=None, **private)

    def recount(text, name, size_value):
        return service.token_count(modality, text, name, size_value)

    gr.on([prompt.change, size.change, ckpt.change], recount, [prompt, ckpt, size], count, queue=False,
          trigger_mode="always_last", **private)  # fmt: skip

    ckpt.change(lambda name: checkpoint_updates(service, modality, name), ckpt,
                [notice, info, size, go, *(ctl[k] for k in checkpoint_controls(modality))], queue=False, **private)

    inputs = [prompt, ckpt, size, *(ctl[k] for k in params(modality)[3:])]
    outputs = [out, files, status]
    api = spec["api"]

    def validate(args: list) -> list:
        """Runs before the request is queued: every bad setting is marked on the page or listed to the client."""
        values = dict(zip(params(modality), args))
        try:
            _, errors = service.check(modality, values)
        except Exception:  # noqa: BLE001 - never refuse a request because the check itself broke
            log.exception("checking a /%s request failed", api)
            errors = {}
        if errors:
            log.info("refused /%s: %s", api, " | ".join(errors.values()))
        return [gr.validate(p not in errors, errors.get(p, "")) for p in params(modality)]

    def run(args: list, request: gr.Request | None):
        t0 = time.perf_counter()
        req, errors = service.check(modality, dict(zip(params(modality), args)))
        if errors:  # a direct call that skipped the validator
            raise gr.Error(str(InvalidRequest(errors)), print_exception=False)
        empty = [] if modality == "image" else None if modality == "audio" else ""
        yield empty, None, "Starting…"
        try:
            for kind, *rest in service.run(req, session=getattr(request, "session_hash", None)):
                if kind == "progress":
                    fraction, partial = rest
                    shown = gr.skip() if not partial else list(partial) if modality == "image" else _join_texts(partial)
                    yield shown, gr.skip(), _status(kind, t0, modality, fraction)
                else:
                    results, paths, record = rest
                    yield _shown(modality, results, paths), paths, _status(kind, t0, modality, record=record,
                                                                           n=len(results))  # fmt: skip
        except RunFailed as e:
            yield gr.skip(), gr.skip(), f"⚠ **{e}**"
            raise gr.Error(str(e), print_exception=False) from None

    # One thin function per endpoint: Gradio takes the API's parameter names from the signature.
    if modality == "image":
        def fn(prompt, checkpoint, size, num_samples, seed, temperature, top_k, top_p, cfg_scale, n_latents,
               candidates, request: gr.Request):  # fmt: skip
            yield from run([prompt, checkpoint, size, num_samples, seed, temperature, top_k, top_p, cfg_scale,
                            n_latents, candidates], request)

        def check(prompt, checkpoint, size, num_samples, seed, temperature, top_k, top_p, cfg_scale, n_latents,
                  candidates):  # fmt: skip
            return validate([prompt, checkpoint, size, num_samples, seed, temperature, top_k, top_p, cfg_scale,
                             n_latents, candidates])
    elif modality == "audio":
        def fn(prompt, checkpoint, seconds, num_samples, seed, temperature, top_k, top_p, cfg_scale, n_latents,
               candidates, key_lock, request: gr.Request):  # fmt: skip
            yield from run([prompt, checkpoint, seconds, num_samples, seed, temperature, top_k, top_p, cfg_scale,
                            n_latents, candidates, key_lock], request)

        def check(prompt, checkpoint, seconds, num_samples, seed, temperature, top_k, top_p, cfg_scale, n_latents,
                  candidates, key_lock):  # fmt: skip
            return validate([prompt, checkpoint, seconds, num_samples, seed, temperature, top_k, top_p, cfg_scale,
                             n_latents, candidates, key_lock])
    else:
        def fn(prompt, checkpoint, max_new_bytes, num_samples, seed, temperature, top_k, top_p, cfg_scale, n_latents,
               candidates, request: gr.Request):  # fmt: skip
            yield from run([prompt, checkpoint, max_new_bytes, num_samples, seed, temperature, top_k, top_p, cfg_scale,
                            n_latents, candidates], request)

        def check(prompt, checkpoint, max_new_bytes, num_samples, seed, temperature, top_k, top_p, cfg_scale,
                  n_latents, candidates):  # fmt: skip
            return validate([prompt, checkpoint, max_new_bytes, num_samples, seed, temperature, top_k, top_p, cfg_scale,
                             n_latents, candidates])

    fn.__name__ = api
    go.click(None, None, [status], js="() => ''", queue=False, api_visibility="private")  # a fresh status per try
    ev = go.click(fn, inputs, outputs, api_name=api, validator=check, show_progress="minimal", **gen)

    def stop_run(request: gr.Request):
        # Graceful first: the pipeline stops between tokens and the run delivers its partial result.
        service.stop(getattr(request, "session_hash", None), wait=STOP_GRACE_S)

    # Then cancel, which only matters for a run still waiting in the queue (or one that ignored the stop).
    stop.click(stop_run, None, None, queue=False, api_visibility="private").then(
        None, None, None, cancels=[ev], queue=False, api_visibility="private")  # fmt: skip


def build_ui(service: Service, *, concurrency: int = 1) -> gr.Blocks:
    """The app's Blocks. ``concurrency``: generations that may run at once (all tabs share the limit)."""
    gen = dict(concurrency_limit=concurrency, concurrency_id="generate")
    with gr.Blocks(title=TITLE, analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
        gr.Markdown(INTRO, elem_classes="pa-header")
        for modality in ("image", "audio", "text"):
            _tab(modality, service, gen)
    log.info("tabs: %s", ", ".join(f"{MEDIUM[m]}: {service.default_name(m) or 'none'}" for m in TABS))
    return demo
