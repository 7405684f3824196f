"""Screenshot of an explore page in the headless Chromium of the tests (docs/explore.png).

    python scripts/explore_screenshot.py PAGE.html OUT.png [--unit N] [--type TEXT] [--brush A B]

Opens the page from file://, optionally picks a unit, brushes a range of the passage and types into
the live model, then saves the top of the page. Fails if the page logs an error or asks the network
for anything."""

import argparse
import os
import shutil
from pathlib import Path

from playwright.sync_api import sync_playwright


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("page")
    parser.add_argument("out")
    parser.add_argument("--unit", type=int)
    parser.add_argument("--type", dest="typed", default="")
    parser.add_argument("--brush", type=int, nargs=2)
    parser.add_argument("--width", type=int, default=1500)
    parser.add_argument("--height", type=int, default=1250)
    args = parser.parse_args()
    executable = (os.environ.get("RNNLAB_CHROMIUM") or shutil.which("chromium-headless-shell")
                  or shutil.which("chromium"))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": args.width, "height": args.height}, device_scale_factor=1)
        problems = []
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(str(e)))
        url = Path(args.page).resolve().as_uri()
        page.on("request", lambda r: problems.append(f"request {r.url}") if r.url != url else None)
        page.goto(url)
        page.wait_for_function("window.explore && window.explore.ready", timeout=600_000)
        if args.unit is not None:
            page.evaluate(f"window.explore.selectUnit({args.unit})")
        if args.brush:
            spans = page.locator("#text .ch")
            spans.nth(args.brush[0]).hover()
            page.mouse.down()
            spans.nth(args.brush[1]).hover()
            page.mouse.up()
        if args.typed and page.locator("#live-input").count():
            page.click("#live-input")
            page.keyboard.type(args.typed)
        page.mouse.move(5, 5)
        page.evaluate("document.getElementById('text').scrollTop = 0")
        page.screenshot(path=args.out)
        browser.close()
    from PIL import Image  # 256 colours: a third of the bytes, the same picture (the repository stays small)

    Image.open(args.out).convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT,
                                                 dither=Image.Dither.NONE).save(args.out, optimize=True)
    if problems:
        raise SystemExit(f"the page reported: {problems}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
