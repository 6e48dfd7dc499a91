"""The page's fixed parts: input widgets whose values the service checks, the CSS, examples and tab texts.

Gradio checks a slider's or a dropdown's value against its range itself, before any of our code runs, with a
message that does not name the setting ("Value 9 is greater than maximum value 4"), and for a request checked
before queueing it answers an API client with a bare HTTP 400. The widgets made here pass the value through
untouched; ``app.requests`` checks it and names the setting. (A subclass would do the same, but Gradio writes a
``.pyi`` stub beside the module of every component subclass.) When a page changes a widget's range, Gradio
replaces that page's copy with a plain widget of the new range, which the page's own controls respect.
"""

from __future__ import annotations

import gradio as gr


def _unchecked(widget):
    widget.preprocess = lambda payload: payload  # no range check and no rounding: a seed of 1.5 is an error, not 2
    return widget


def slider(*args, **kwargs) -> gr.Slider:
    return _unchecked(gr.Slider(*args, **kwargs))


def dropdown(*args, **kwargs) -> gr.Dropdown:
    return _unchecked(gr.Dropdown(*args, **kwargs))


def number(*args, **kwargs) -> gr.Number:
    return _unchecked(gr.Number(*args, **kwargs))


TITLE = "Perceiver AR"
INTRO = (
    f"# {TITLE}\nGenerate images, music and text from long text prompts: a Perceiver AR reads up to its whole "
    "context (65,536 tokens for the largest model) and decodes with an exact key/value cache."
)

# Small results are drawn large with square pixels, each on a dark mat with a checkerboard under it, so a white or
# nearly white image still shows where it begins and ends.
CSS = """
.pa-header h1 { margin-bottom: 0.1em; }
.pa-header p { color: var(--body-text-color-subdued); margin-top: 0; }
.pa-notice { border-left: 4px solid #f59e0b; background: rgba(245, 158, 11, 0.10); padding: 0.4em 0.9em;
             border-radius: 6px; }
.pa-count, .pa-status { font-size: 0.92em; min-height: 1.6em; }
.pa-gallery .thumbnail-item { background: #4b5563 !important; padding: 12px !important; border-radius: 6px; }
.pa-gallery img { image-rendering: pixelated; object-fit: contain; outline: 1px solid #111827;
    background: repeating-conic-gradient(#cfd4dc 0% 25%, #f3f4f6 0% 50%) 50% / 16px 16px; }
footer { display: none !important; }
"""

TABS = {
    "image": dict(title="Image", api="generate_image", button="Generate image", label="Prompt",
                  placeholder="Describe the image… paste a long description or upload a text file"),
    "audio": dict(title="Music", api="generate_music", button="Generate music", label="Prompt",
                  placeholder="Describe the music…"),
    "text": dict(title="Text", api="generate_text", button="Continue text", label="Text to continue",
                 placeholder="Paste or type the beginning…"),
}  # fmt: skip

EXAMPLES = {
    "image": [  # in the style of the bundled emoji checkpoint's captions: name; category; keywords; style
        ["red apple; food & drink; food fruit; google style"],
        ["grinning face; smileys & emotion; face smiling; twitter style"],
        ["red heart; smileys & emotion; heart; google style"],
        ["frog; animals & nature; animal amphibian; twitter style"],
        ["grinning face"],  # the name alone: the bundled model was trained with parts of its captions left out
    ],
    "audio": [  # in the style of the bundled bach checkpoint's captions
        ["bach chorale in G major, 4/4 time"],
        ["bach chorale in D minor, 3/4 time"],
        ["bach chorale bwv1.6 in F major, 4/4 time"],
    ],
    "text": [  # the bundled text checkpoint was trained on Shakespeare's plays
        ["ROMEO.\nBut soft, what light through yonder window breaks?\n"],
        ["ACT I\n\nSCENE I. Elsinore. A platform before the Castle.\n\n"],
        ["HAMLET.\nTo be, or not to be, that is the question:\n"],
    ],
}  # fmt: skip
