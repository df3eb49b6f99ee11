"""Screenshots of the rollout inspector for the README (headless system Chromium, as the browser tests).

    uv run python docs/make_screenshots.py RUN OUT.png [--stage S] [--step N] [--colour kl] [--prompt I]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from _browser import launch_chromium  # noqa: E402
from playwright.sync_api import sync_playwright  # noqa: E402

from ppolab.inspect import write_html  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run")
    ap.add_argument("out")
    ap.add_argument("--stage")
    ap.add_argument("--step", type=int)
    ap.add_argument("--colour", default="kl")
    ap.add_argument("--prompt", type=int, help="index of the prompt shown across steps")
    ap.add_argument("--focus", type=int, default=2, help="token of the first rollout to focus (-1: none)")
    ap.add_argument("--width", type=int, default=1200)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as p:
        html = write_html(args.run, Path(tmp) / "inspect.html")
        browser = launch_chromium(p)
        page = browser.new_page(viewport={"width": args.width, "height": 900}, device_scale_factor=1)
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(html.as_uri())
        if args.stage:
            page.select_option("#stage", args.stage)
        if args.step is not None:
            page.select_option("#step", str(args.step))
        page.select_option("#colour", args.colour)
        if args.prompt is not None:
            page.select_option("#prompt", str(args.prompt))
        if args.focus >= 0:
            page.focus(f"#rollouts .rollout >> nth=0 >> .tok >> nth={args.focus}")
        # As tall as the page, so the sticky detail box sits at its end, not over a rollout.
        page.set_viewport_size({"width": args.width, "height": page.evaluate("document.body.scrollHeight") + 40})
        page.screenshot(path=args.out, full_page=True)
        browser.close()
        if errors:
            raise SystemExit(f"page errors: {errors}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
