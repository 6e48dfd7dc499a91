"""The Gradio Blocks of the Perceiver AR app: Image, Music and Text tabs over ``app.service.Service``.

API (``gradio_client``)
-----------------------
The three generation functions have stable ``api_name``s. Pass parameters by keyword; any left out take the default
shown by ``Client(url).view_api()`` (the default checkpoint's settings). Requests share one queue whose concurrency
is ``perceiverar-app --concurrency``; limits are checked against the chosen checkpoint.

Parameters common to all three:
    prompt (str, required): the description (image, music) or the text to continue (text). Up to the context
        budget of the checkpoint with these settings, counted in UTF-8 bytes; empty is an error.
    checkpoint (str): a checkpoint *name* as listed in the app (never a path).
    num_samples (int, 1..4): how many results from one request.
    seed (int): -1 picks a random seed; the seed used is in the status line and in the saved metadata.
    temperature (float, 0..2): 0 = greedy, 1 = the model's distribution.
    top_k (int, 0..256): keep the k likeliest tokens; 0 = off.
    top_p (float, 0.05..1): nucleus sampling; 1 = off.
    cfg_scale (float, 0..10): classifier-free guidance; 1 = off.
    n_latents (int): latents used at inference (1..context); fewer is faster, the trained number is best.

``/generate_image`` (prompt, checkpoint, size, num_samples, seed, temperature, top_k, top_p, cfg_scale, n_latents)
    size (str): "HEIGHTxWIDTH", e.g. "32x32": one of the sizes the checkpoint offers.
    Returns (gallery, files, status): gallery = [{"image": png_path, "caption": None}, ...]; files = one PNG per
    sample whose iTXt chunks "prompt" and "parameters" (JSON: prompt, checkpoint, seed, every setting) record how
    it was made; status = a Markdown line.

``/generate_music`` (prompt, checkpoint, seconds, num_samples, seed, temperature, top_k, top_p, cfg_scale,
n_latents)
    seconds (float, step 0.5): length of the audio, up to what the checkpoint's context holds.
    Returns (audio, files, status): audio = the first sample as a WAV path; files = a WAV (16-bit PCM) and a
    sidecar JSON (prompt, settings, sample rate) per sample; status = Markdown.

``/generate_text`` (prompt, checkpoint, max_new_bytes, num_samples, seed, temperature, top_k, top_p, cfg_scale,
n_latents)
    max_new_bytes (int): length of the continuation in UTF-8 bytes.
    Returns (text, files, status): text = the continuation (with several samples, each after a
    "── sample k ──" line); files = a UTF-8 TXT and a sidecar JSON per sample; status = Markdown.

Errors (empty prompt, prompt over the context, unknown or unloadable checkpoint, out of memory, settings out of
range) raise ``gradio_client.exceptions.AppError`` with the message the UI shows; the server keeps serving.

Example::

    from gradio_client import Client
    client = Client("http://127.0.0.1:7860/")
    gallery, files, status = client.predict(prompt="a red bird on a branch", size="32x32", seed=1,
                                            api_name="/generate_image")
    text, files, status = client.predict(prompt="Once upon a time", max_new_bytes=200,
                                         api_name="/generate_text")
    job = client.submit(prompt="a slow chorale in G major", seconds=8, api_name="/generate_music")
    audio_path, files, status = job.result()      # job.cancel() stops it
"""

from __future__ import annotations

import time

import gradio as gr

from app.service import MAX_SAMPLES, Capabilities, Service, device_of, size_label

TITLE = "Perceiver AR"
STOP_GRACE_S = 5.0  # how long Stop waits for a run to end by itself before cancelling it

CSS = """
.pa-header h1 { margin-bottom: 0.1em; }
.pa-header p { color: var(--body-text-color-subdued); margin-top: 0; }
.pa-notice { border-left: 4px solid #f59e0b; background: rgba(245, 158, 11, 0.10); padding: 0.4em 0.9em;
             border-radius: 6px; }
.pa-count { font-size: 0.92em; min-height: 1.6em; }
.pa-status { font-size: 0.92em; min-height: 1.6em; }
.pa-gallery img { image-rendering: pixelated; }
footer { display: none !important; }
"""

IMAGE_EXAMPLES = [  # in the style of the bundled emoji checkpoint's captions: name; category; keywords; style
    ["red apple; food & drink; food fruit; google style"],
    ["grinning face; smileys & emotion; face smiling; twitter style"],
    ["red heart; smileys & emotion; heart; google style"],
    [
        "frog; animals & nature; animal amphibian; twitter style\n\nA long prompt works too: the bundled emoji "
        "model was trained with captions buried in pages of other text, so the caption may open (or close) a "
        "prompt of up to about 60,000 characters."
    ],
]
MUSIC_EXAMPLES = [  # in the style of the bundled bach checkpoint's captions
    ["bach chorale in G major, 4/4 time"],
    ["bach chorale in D minor, 3/4 time"],
    ["bach chorale bwv1.6 in F major, 4/4 time"],
]
TEXT_EXAMPLES = [  # the bundled text checkpoint was trained on Shakespeare's plays
    ["ROMEO.\nBut soft, what light through yonder window breaks?\n"],
    ["ACT I\n\nSCENE I. Elsinore. A platform before the Castle.\n\n"],
    ["HAMLET.\nTo be, or not to be, that is the question:\n"],
]


def _md_checkpoint(caps: Capabilities, service: Service) -> str:
    pipe = service.pipeline(caps.name)
    n = pipe.model.num_params()
    params = f"{n / 1e6:,.1f} M" if n >= 1e5 else f"{n:,}"
    device = device_of(pipe)
    mods = ", ".join({"image": "images", "audio": "music", "text": "text"}[m] for m in caps.modalities)
    text = (
        f"Context **{caps.context_len:,}** tokens · **{caps.n_latents:,}** latents · "
        f"{params} parameters · makes {mods} · on `{device}`"
    )
    template = (getattr(pipe, "config", None) or {}).get("caption_template")
    if template:  # how the training captions were written: prompts in that form work best
        text += f"  \nTrained on captions written as `{template}`"
    return text


def _sampling_controls(caps: Capabilities, modality: str, max_context: int) -> dict:
    d = caps.modality_defaults(modality)
    c = {}
    with gr.Row():
        c["num_samples"] = gr.Slider(1, MAX_SAMPLES, value=int(d.get("num_samples", 1)), step=1,
                                     label="Samples", info="How many to make from one prompt")  # fmt: skip
        c["seed"] = gr.Number(value=-1, precision=0, label="Seed", info="-1 = random; the seed used is shown")
    with gr.Row():
        c["temperature"] = gr.Slider(0.0, 2.0, value=float(d.get("temperature", 1.0)), step=0.05,
                                     label="Temperature", info="0 = always the likeliest token")  # fmt: skip
        c["top_k"] = gr.Slider(0, 256, value=int(d.get("top_k") or 0), step=1, label="Top-k", info="0 = off")
    with gr.Row():
        c["top_p"] = gr.Slider(0.05, 1.0, value=float(d.get("top_p") or 1.0), step=0.01, label="Top-p",
                               info="1 = off")  # fmt: skip
        c["cfg_scale"] = gr.Slider(0.0, 10.0, value=float(d.get("cfg_scale", 1.0)), step=0.1,
                                   label="Guidance scale", info="Classifier-free guidance; 1 = off")  # fmt: skip
    c["n_latents"] = gr.Slider(
        1, max_context, value=caps.n_latents, step=1, label="Latents",
        info=f"Compute vs quality: fewer is faster; trained with {caps.n_latents:,}",
    )  # fmt: skip
    return c


def _sampling_updates(caps: Capabilities, modality: str) -> list:
    d = caps.modality_defaults(modality)
    return [
        gr.update(value=int(d.get("num_samples", 1))),
        gr.update(),
        gr.update(value=float(d.get("temperature", 1.0))),
        gr.update(value=int(d.get("top_k") or 0)),
        gr.update(value=float(d.get("top_p") or 1.0)),
        gr.update(value=float(d.get("cfg_scale", 1.0))),
        gr.update(maximum=min(caps.context_len, 2 * caps.n_latents), value=caps.n_latents,
                  info=f"Compute vs quality: fewer is faster; trained with {caps.n_latents:,}"),  # fmt: skip
    ]


SAMPLING_KEYS = ["num_samples", "seed", "temperature", "top_k", "top_p", "cfg_scale", "n_latents"]


def _prompt_box(tab: str, label: str, placeholder: str, service: Service):
    prompt = gr.Textbox(label=label, placeholder=placeholder, lines=6, max_lines=16, autoscroll=False,
                        elem_id=f"{tab}-prompt")  # fmt: skip
    with gr.Row(equal_height=True):
        count = gr.Markdown("", elem_classes="pa-count", elem_id=f"{tab}-count")
        upload = gr.UploadButton(
            f"Upload .txt / .md (≤ {service.max_upload_bytes // 1024:,} KB)", file_types=[".txt", ".md"],
            file_count="single", type="filepath", size="sm", variant="secondary", scale=0, min_width=220,
            elem_id=f"{tab}-upload",
        )  # fmt: skip
    upload.upload(service.read_prompt_file, upload, prompt, api_visibility="private", concurrency_limit=None,
                  show_progress="hidden")
    return prompt, count


def _status(kind: str, t0: float, fraction: float | None = None, settings: dict | None = None, n: int = 0) -> str:
    dt = time.perf_counter() - t0
    if kind == "progress":
        return f"Generating… **{100 * (fraction or 0):.0f}%** · {dt:.1f} s"
    what = {"image": "image", "audio": "clip", "text": "text"}[settings["modality"]]
    extra = {
        "image": lambda s: f" · {s['height']}x{s['width']}",
        "audio": lambda s: f" · {s['seconds']:g} s",
        "text": lambda s: f" · {s['max_new_bytes']:,} bytes",
    }[settings["modality"]](settings)
    demo = " · ⚠ untrained demo model" if settings.get("untrained_demo") else ""
    if settings.get("stopped"):
        return f"■ **Stopped** after {dt:.1f} s: partial result · seed **{settings['seed']}**{demo}"
    return f"✓ **Done**: {n} {what}{'s' if n != 1 else ''} in {dt:.1f} s · seed **{settings['seed']}**{extra}{demo}"


def _join_texts(texts) -> str:
    texts = [str(t) for t in (texts or [])]
    if len(texts) <= 1:
        return texts[0] if texts else ""
    return "\n\n".join(f"── sample {i + 1} ──\n{t}" for i, t in enumerate(texts))


def build_ui(service: Service, *, concurrency: int = 1) -> gr.Blocks:
    """The app's Blocks. ``concurrency``: generations that may run at once (all tabs share the limit)."""
    default = service.default_name
    if default is None:
        raise ValueError(f"none of the checkpoints could be loaded: {', '.join(service.names) or 'none found'}")
    caps0 = service.capabilities(default)  # load the default checkpoint now, not on the first click
    # Static slider limits span every checkpoint (API clients may pick any); a page narrows them to the selected
    # checkpoint when it loads and when the checkpoint changes.
    max_ctx, max_seconds = service.envelope()
    gen = dict(concurrency_limit=concurrency, concurrency_id="generate")

    with gr.Blocks(title=TITLE, analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
        gr.Markdown(
            f"# {TITLE}\nGenerate images, music and text from long text prompts: a Perceiver AR reads up to "
            "its whole context (65,536 tokens for the largest model) and decodes with an exact key/value cache.",
            elem_classes="pa-header",
        )
        notice = gr.Markdown(caps0.notice, visible=bool(caps0.notice), elem_classes="pa-notice")
        with gr.Row(equal_height=True):
            ckpt = gr.Dropdown(service.names, value=default, label="Checkpoint", scale=1,
                               interactive=len(service.names) > 1, filterable=False, elem_id="checkpoint")  # fmt: skip
            ckpt_info = gr.Markdown(_md_checkpoint(caps0, service), elem_id="checkpoint-info")

        # ------------------------------------------------------------------------------------------ image
        with gr.Tab("Image", id="image"):
            with gr.Row():
                with gr.Column(scale=5):
                    img_prompt, img_count = _prompt_box(
                        "image", "Prompt", "Describe the image… paste a long description or upload a text file",
                        service,
                    )
                    with gr.Row():
                        img_go = gr.Button("Generate image", variant="primary", scale=3, elem_id="image-generate")
                        img_stop = gr.Button("Stop", variant="stop", scale=1, elem_id="image-stop")
                    img_size = gr.Dropdown(
                        [size_label(*s) for s in caps0.image_sizes],
                        value=size_label(*caps0.default_image_size) if caps0.default_image_size else None,
                        label="Image size (height x width)", allow_custom_value=True, elem_id="image-size",
                    )  # fmt: skip
                    with gr.Accordion("Sampling settings", open=False):
                        img_ctl = _sampling_controls(caps0, "image", max_ctx)
                    gr.Examples(IMAGE_EXAMPLES, inputs=[img_prompt], label="Examples (click to use)")
                with gr.Column(scale=4):
                    img_out = gr.Gallery(label="Image", columns=2, height="auto", format="png", object_fit="contain",
                                         preview=False, elem_classes="pa-gallery", interactive=False,
                                         elem_id="image-output")  # fmt: skip
                    img_status = gr.Markdown("", label="Status", elem_classes="pa-status", elem_id="image-status")
                    img_files = gr.File(label="Downloads (PNG with prompt and settings embedded)",
                                        file_count="multiple", interactive=False, elem_id="image-files")  # fmt: skip

        # ------------------------------------------------------------------------------------------ music
        with gr.Tab("Music", id="music"):
            with gr.Row():
                with gr.Column(scale=5):
                    mus_prompt, mus_count = _prompt_box("music", "Prompt", "Describe the music…", service)
                    with gr.Row():
                        mus_go = gr.Button("Generate music", variant="primary", scale=3, elem_id="music-generate")
                        mus_stop = gr.Button("Stop", variant="stop", scale=1, elem_id="music-stop")
                    mus_seconds = gr.Slider(0.5, max(max_seconds, 0.5), value=caps0.default_seconds or 0.5,
                                            step=0.5, label="Length (seconds)", elem_id="music-seconds")  # fmt: skip
                    with gr.Accordion("Sampling settings", open=False):
                        mus_ctl = _sampling_controls(caps0, "audio", max_ctx)
                    gr.Examples(MUSIC_EXAMPLES, inputs=[mus_prompt], label="Examples (click to use)")
                with gr.Column(scale=4):
                    mus_out = gr.Audio(label="Music (sample 1)", type="filepath", interactive=False,
                                       elem_id="music-output")  # fmt: skip
                    mus_status = gr.Markdown("", label="Status", elem_classes="pa-status", elem_id="music-status")
                    mus_files = gr.File(label="Downloads (WAV + JSON with prompt and settings)", file_count="multiple",
                                        interactive=False, elem_id="music-files")  # fmt: skip

        # ------------------------------------------------------------------------------------------- text
        with gr.Tab("Text", id="text"):
            with gr.Row():
                with gr.Column(scale=5):
                    txt_prompt, txt_count = _prompt_box("text", "Text to continue", "Paste or type the beginning…",
                                                        service)  # fmt: skip
                    with gr.Row():
                        txt_go = gr.Button("Continue text", variant="primary", scale=3, elem_id="text-generate")
                        txt_stop = gr.Button("Stop", variant="stop", scale=1, elem_id="text-stop")
                    txt_len = gr.Slider(1, max_ctx, value=caps0.default_text_bytes or 1, step=1,
                                        label="Length of the continuation (bytes)", elem_id="text-length")  # fmt: skip
                    with gr.Accordion("Sampling settings", open=False):
                        txt_ctl = _sampling_controls(caps0, "text", max_ctx)
                    gr.Examples(TEXT_EXAMPLES, inputs=[txt_prompt], label="Examples (click to use)")
                with gr.Column(scale=4):
                    txt_out = gr.Textbox(label="Continuation", lines=14, max_lines=30, interactive=False,
                                         buttons=["copy"], elem_id="text-output")  # fmt: skip
                    txt_status = gr.Markdown("", label="Status", elem_classes="pa-status", elem_id="text-status")
                    txt_files = gr.File(label="Downloads (TXT + JSON with prompt and settings)", file_count="multiple",
                                        interactive=False, elem_id="text-files")  # fmt: skip

        # --------------------------------------------------------------------------------- live token counts
        count_kw = dict(show_progress="hidden", queue=False, api_visibility="private", trigger_mode="always_last")

        def count_image(prompt, name, size):
            return service.token_count("image", prompt, name, size=size)

        def count_music(prompt, name, seconds):
            return service.token_count("audio", prompt, name, seconds=seconds)

        def count_text(prompt, name, n):
            return service.token_count("text", prompt, name, max_new_bytes=n)

        for fn, inputs, out in (
            (count_image, [img_prompt, ckpt, img_size], img_count),
            (count_music, [mus_prompt, ckpt, mus_seconds], mus_count),
            (count_text, [txt_prompt, ckpt, txt_len], txt_count),
        ):
            gr.on([inputs[0].change, inputs[2].change], fn, inputs, out, **count_kw)
            demo.load(fn, inputs, out, **count_kw)

        # --------------------------------------------------------------------------------------- generation
        def generate_image(prompt, checkpoint, size, num_samples, seed, temperature, top_k, top_p, cfg_scale,
                           n_latents, request: gr.Request):  # fmt: skip
            t0 = time.perf_counter()
            run = service.generate_image(prompt, checkpoint, size, num_samples, seed, temperature, top_k, top_p,
                                         cfg_scale, n_latents, session=_session(request))  # fmt: skip
            yield [], None, "Starting…"
            for kind, *rest in run:
                if kind == "progress":
                    fraction, partial = rest
                    yield (list(partial) if partial else gr.skip()), gr.skip(), _status(kind, t0, fraction)
                else:
                    images, files, settings = rest
                    yield images, files, _status(kind, t0, settings=settings, n=len(images))

        def generate_music(prompt, checkpoint, seconds, num_samples, seed, temperature, top_k, top_p, cfg_scale,
                           n_latents, request: gr.Request, progress=gr.Progress()):  # fmt: skip
            t0 = time.perf_counter()
            run = service.generate_music(prompt, checkpoint, seconds, num_samples, seed, temperature, top_k, top_p,
                                         cfg_scale, n_latents, session=_session(request))  # fmt: skip
            progress(0.0, desc="Generating audio tokens")
            yield None, None, "Starting…"
            for kind, *rest in run:
                if kind == "progress":
                    progress(rest[0], desc="Generating audio tokens")
                    yield gr.skip(), gr.skip(), _status(kind, t0, rest[0])
                else:
                    wavs, files, settings = rest
                    yield (wavs[0] if wavs else None), files, _status(kind, t0, settings=settings, n=len(wavs))

        def generate_text(prompt, checkpoint, max_new_bytes, num_samples, seed, temperature, top_k, top_p, cfg_scale,
                          n_latents, request: gr.Request):  # fmt: skip
            t0 = time.perf_counter()
            run = service.generate_text(prompt, checkpoint, max_new_bytes, num_samples, seed, temperature, top_k,
                                        top_p, cfg_scale, n_latents, session=_session(request))  # fmt: skip
            yield "", None, "Starting…"
            for kind, *rest in run:
                if kind == "progress":
                    fraction, partial = rest
                    yield (_join_texts(partial) if partial else gr.skip()), gr.skip(), _status(kind, t0, fraction)
                else:
                    texts, files, settings = rest
                    yield _join_texts(texts), files, _status(kind, t0, settings=settings, n=len(texts))

        def stop(request: gr.Request):
            # Graceful first: the pipeline stops between tokens and the run delivers its partial result.
            service.stop(_session(request), wait=STOP_GRACE_S)

        events = {}
        for name, fn, go, stop_btn, prompt, size_in, ctl, outs in (
            ("generate_image", generate_image, img_go, img_stop, img_prompt, img_size, img_ctl,
             [img_out, img_files, img_status]),
            ("generate_music", generate_music, mus_go, mus_stop, mus_prompt, mus_seconds, mus_ctl,
             [mus_out, mus_files, mus_status]),
            ("generate_text", generate_text, txt_go, txt_stop, txt_prompt, txt_len, txt_ctl,
             [txt_out, txt_files, txt_status]),
        ):  # fmt: skip
            inputs = [prompt, ckpt, size_in] + [ctl[k] for k in SAMPLING_KEYS]
            ev = go.click(fn, inputs, outs, api_name=name, show_progress="minimal", **gen)
            # Then cancel, which only matters for a run still waiting in the queue (or one that ignored the stop).
            stop_btn.click(stop, None, None, queue=False, api_visibility="private").then(
                None, None, None, cancels=[ev], queue=False, api_visibility="private"
            )
            events[name] = ev

        # ------------------------------------------------------------------------------- checkpoint changes
        def on_checkpoint(name):
            caps = service.capabilities(name)
            sizes = [size_label(*s) for s in caps.image_sizes]
            return [
                gr.update(value=caps.notice, visible=bool(caps.notice)),
                _md_checkpoint(caps, service),
                gr.update(choices=sizes, interactive=len(sizes) > 1,
                          value=size_label(*caps.default_image_size) if caps.default_image_size else None),
                gr.update(maximum=max(caps.max_seconds, 0.5), value=caps.default_seconds or 0.5),
                gr.update(maximum=max(caps.max_text_bytes, 1), value=caps.default_text_bytes or 1),
                *(gr.update(interactive=m in caps.modalities) for m in ("image", "audio", "text")),
                *_sampling_updates(caps, "image"),
                *_sampling_updates(caps, "audio"),
                *_sampling_updates(caps, "text"),
            ]

        ckpt_outputs = (
            [notice, ckpt_info, img_size, mus_seconds, txt_len, img_go, mus_go, txt_go]
            + [img_ctl[k] for k in SAMPLING_KEYS] + [mus_ctl[k] for k in SAMPLING_KEYS]
            + [txt_ctl[k] for k in SAMPLING_KEYS]
        )  # fmt: skip
        ckpt.change(on_checkpoint, ckpt, ckpt_outputs, api_visibility="private")
        demo.load(on_checkpoint, ckpt, ckpt_outputs, api_visibility="private", queue=False, show_progress="hidden")
        for m, btn in (("image", img_go), ("audio", mus_go), ("text", txt_go)):
            if m not in caps0.modalities:
                btn.interactive = False
    return demo


def _session(request: gr.Request | None) -> str | None:
    return getattr(request, "session_hash", None) if request is not None else None
