"""The Perceiver AR web app: a Gradio UI over ``perceiverar.pipeline`` (no tensor code lives here).

``perceiverar-app`` (``app.main:main``) starts it; ``app.ui.build_ui`` builds the Blocks; ``app.service.Service``
finds checkpoints, loads each once and turns library errors into messages a visitor understands.
"""
