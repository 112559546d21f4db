"""python -m app [--weights W] [--gallery DIR] [--port P] [--host H]: start the Gradio app."""
from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m app", description="Gradio app of the generative re-ID engine.")
    p.add_argument("--weights", default=None,
                   help="weights folder or Hugging Face Hub repo id (default: $REID_WEIGHTS, else weights/)")
    p.add_argument("--gallery", default=None, help="a gallery folder to offer and index at start-up "
                   "(Market-1501 layout or plain images; default: the demo dataset when it sits beside "
                   "the project, ../shared/datasets/cuhk03-pair1)")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (0.0.0.0 to serve others)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--concurrency", type=int, default=2, help="simultaneous model calls (default: 2, one per core)")
    p.add_argument("--no-warm-up", action="store_true",
                   help="do not index the gallery / fit the identity map in the background at start")
    args = p.parse_args(argv)
    from reid_core.engine import WeightsError
    from reid_core.data import DEMO_DATA
    from .gradio_app import launch
    if args.gallery is None and DEMO_DATA.is_dir():
        args.gallery = str(DEMO_DATA)
    try:
        launch(args.weights, args.gallery, args.host, args.port, args.concurrency, warm_up=not args.no_warm_up)
    except WeightsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
