"""``perceiverar-app``: start the web UI on the checkpoints found in ``checkpoints/`` (and ``--checkpoint-dir``).

    perceiverar-app                      # http://127.0.0.1:7860, local only
    perceiverar-app --host 0.0.0.0 --port 8080 --checkpoint-dir ~/my-checkpoints
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path

# Before gradio is imported: no analytics, no version check, nothing leaves the machine unless --share.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from app.catalogue import BUNDLED_CHECKPOINTS  # noqa: E402
from perceiverar.decode_step import COMPILE_CHOICES  # noqa: E402
from app.service import Service  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="perceiverar-app",
        description="Web UI for generating images, music and text from long text prompts with Perceiver AR.",
    )
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 exposes it to the network)")
    p.add_argument("--port", type=int, default=7860, help="port to listen on (default 7860)")
    p.add_argument("--share", action="store_true",
                   help="also open a temporary public gradio.live link (off by default; traffic goes through "
                        "Gradio's servers)")
    p.add_argument("--checkpoint-dir", action="append", default=[], metavar="DIR",
                   help="extra folder to scan for checkpoints (a checkpoint itself or a folder of them); repeatable. "
                        "Its checkpoints come first: the first checkpoint that makes a medium is its tab's default")
    p.add_argument("--no-bundled", action="store_true",
                   help="do not scan the bundled checkpoints/ folder (of the repository and of the current directory)")
    p.add_argument("--demo", action="store_true",
                   help="offer the small randomly initialised demo model in every tab (by default only in tabs no "
                        "checkpoint makes)")
    p.add_argument("--concurrency", type=int, default=None,
                   help="generations that run at once; the rest wait in a queue (default: 1 on CPU, 2 on GPU)")
    p.add_argument("--max-queue", type=int, default=64, help="requests that may wait in the queue (default 64)")
    p.add_argument("--device", default="auto", help="'auto' (GPU when there is one), 'cpu', 'cuda', 'cuda:1', ...")
    p.add_argument("--max-upload-kb", type=int, default=512, help="largest prompt file accepted, in KB (default 512)")
    p.add_argument("--compile", choices=tuple(COMPILE_CHOICES), default="auto",
                   help="compile each model's decode step with torch.compile: auto (default) on a GPU only; on also on "
                        "the CPU: the first request of each checkpoint waits 15-50 s for it, later ones run ~1.5x "
                        "faster (on a 2-core Xeon a guided 16x16 emoji took 1.5-1.7 s instead of 2.3 s)")
    p.add_argument("--quiet", action="store_true", help="less logging")
    args = p.parse_args(argv)  # fmt: skip
    if args.concurrency is not None and args.concurrency < 1:
        p.error("--concurrency must be at least 1")
    if args.max_upload_kb < 1:
        p.error("--max-upload-kb must be at least 1")
    return args


def default_concurrency(device: str) -> int:
    import torch

    on_gpu = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    return 2 if on_gpu else 1


def create_app(service: Service, *, concurrency: int = 1, max_queue: int = 64):
    """The queued Blocks, ready for ``launch``."""
    from app.ui import build_ui

    demo = build_ui(service, concurrency=concurrency)
    demo.queue(max_size=max_queue, default_concurrency_limit=concurrency)
    return demo


def launch(demo, service: Service, *, host: str = "127.0.0.1", port: int = 7860, share: bool = False,
           block: bool = True, quiet: bool = False):  # fmt: skip
    """Serve ``demo``; ``block=False`` returns at once (tests)."""
    import gradio as gr

    from app.widgets import CSS

    for attempt in range(3):
        try:
            return demo.launch(
                server_name=host, server_port=port, share=share, prevent_thread_lock=not block, quiet=quiet,
                max_file_size=f"{service.max_upload_bytes // 1024}kb", allowed_paths=[str(service.outputs.root)],
                theme=gr.themes.Soft(primary_hue="indigo", secondary_hue="slate"), css=CSS, footer_links=["api"],
                show_error=True, ssr_mode=False, pwa=False, mcp_server=False, enable_monitoring=False,
            )  # fmt: skip
        except ValueError as e:
            # Gradio gives its freshly started server one 3 s request to answer, else it stops with "localhost is
            # not accessible": on a loaded CPU that is too short. Close that server and start again.
            if "localhost is not accessible" not in str(e) or attempt == 2:
                raise
            logging.getLogger("perceiverar.app").warning("the server did not answer itself within 3 s; restarting it")
            demo.close()


def _interrupt(*_):
    # SIGTERM (systemd, docker stop) ends the app like Ctrl-C: Gradio closes its server, and the finally below
    # removes the output folder on the way out.
    raise KeyboardInterrupt


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(name)s: %(message)s")  # fmt: skip
    from perceiverar import set_compile_default  # noqa: PLC0415
    from perceiverar.pipeline import resolve_device  # noqa: PLC0415

    try:
        resolve_device(args.device)
    except ValueError as e:
        print(f"perceiverar-app: error: --device: {e}", file=sys.stderr)
        return 2
    set_compile_default(args.compile)
    bundled = [BUNDLED_CHECKPOINTS, Path.cwd() / "checkpoints"]  # the repository's, and the one beside the user
    folders = args.checkpoint_dir + ([] if args.no_bundled else [p for p in bundled if p.is_dir()])
    service = Service(folders, device=args.device, max_upload_kb=args.max_upload_kb, demo=True if args.demo else "auto")
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        concurrency = args.concurrency or default_concurrency(args.device)
        demo = create_app(service, concurrency=concurrency, max_queue=args.max_queue)
        launch(demo, service, host=args.host, port=args.port, share=args.share, quiet=args.quiet)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM (also when it lands outside Gradio's own wait loop): a normal stop
        pass
    finally:
        service.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
