"""Build `offline.html`: an HTML template for `dvc plots diff` that renders with no network.

DVC's default page loads vega, vega-lite and vega-embed from a CDN, so offline it is blank. This
template inlines the copies npm installed here (`npm ci` in this folder, pinned by package-lock.json)
and has no `{scripts}` placeholder, so DVC adds no CDN tags. Inlining, rather than pointing at
node_modules, keeps the page working wherever `-o` writes it and when it is mailed or archived.

    make plots-template                      # npm ci + this script
    dvc plots diff main --html-template plots_template/offline.html -o dvc_plots
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# Load order matters: vega-lite and vega-embed expect the `vega` global.
SCRIPTS = ("vega/build/vega.min.js", "vega-lite/build/vega-lite.min.js", "vega-embed/build/vega-embed.min.js")

PAGE = """<!DOCTYPE html>
<html>
<head>
    {refresh_tag}
    <meta charset="utf-8">
    <title>DVC Plot (offline)</title>
    <style>table {{ border-spacing: 15px; }}</style>
{inline_scripts}
</head>
<body>
    {plot_divs}
</body>
</html>
"""


def inline_script(path: Path) -> str:
    code = path.read_text(encoding="utf8")
    # A literal "</script" or a DVC placeholder inside the code would break the page.
    for bad in ("</script", "{plot_divs}", "{scripts}", "{refresh_tag}"):
        if bad in code:
            raise ValueError(f"{path} contains {bad!r}; it cannot be inlined as is")
    return f"    <script>/* {path.relative_to(HERE)} */\n{code}\n    </script>"


def build(node_modules: Path = HERE / "node_modules", out: Path = HERE / "offline.html") -> Path:
    missing = [s for s in SCRIPTS if not (node_modules / s).is_file()]
    if missing:
        raise SystemExit(
            f"missing {missing} under {node_modules}: run `npm ci` in {HERE} first (or `make plots-template`)"
        )
    scripts = "\n".join(inline_script(node_modules / s) for s in SCRIPTS)
    # PAGE doubles the CSS braces for str.format; DVC's own placeholders stay single-braced.
    page = PAGE.format(inline_scripts=scripts, refresh_tag="{refresh_tag}", plot_divs="{plot_divs}")
    out.write_text(page, encoding="utf8")
    return out


if __name__ == "__main__":
    print(build(*(Path(a) for a in sys.argv[1:])))
