#!/usr/bin/env bash
# Remakes docs/images/tensorboard_custom_scalars.png, the screenshot in docs/callback.md: TensorBoard's
# CUSTOM SCALARS tab (the layout of lightning_influence.lightning.loggers.tensorboard_layout) after a
# real run. This is a docs tool, not run by CI.
#
# The run is the demo's pruned arm and its loss-pruned baseline (`python -m lightning_influence.demo
# --arms pruned loss-pruned --epochs 20 --score-every 5 --fraction 0.25`): four analyses, three
# pruning plans, 20% of the labels flipped and passed as known_noise. Dropping 25% when 20% is noise
# keeps the precision and recall curves apart (with --fraction equal to --noise they coincide).
# About 2 minutes on two CPU cores.
#
# Needs: the project venv (.venv, with tensorboard: `pip install -e .[dev]`); Chromium at
# /usr/bin/chromium (Debian: `apt-get install chromium`), or CHROMIUM=/path/to/chrome; node and npm,
# to install playwright-core (no browser download) into the temporary folder.
# Everything else (logs, the TensorBoard server, node_modules) lives in a temporary folder, removed
# on exit: the only file written in the repository is the PNG.
#
# Environment: CHROMIUM, the browser; PYTHON, the interpreter (default .venv/bin/python); OUT, the
# PNG (default docs/images/tensorboard_custom_scalars.png).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

PYTHON=${PYTHON:-$repo/.venv/bin/python}
CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
OUT=${OUT:-$repo/docs/images/tensorboard_custom_scalars.png}
PLAYWRIGHT_CORE_VERSION=1.65.1
[[ -x "$CHROMIUM" ]] || { echo "no Chromium at $CHROMIUM: apt-get install chromium, or set CHROMIUM" >&2; exit 1; }
command -v npm >/dev/null || { echo "npm not found: it installs playwright-core" >&2; exit 1; }
"$PYTHON" -c "import tensorboard" 2>/dev/null \
    || { echo "$PYTHON has no tensorboard: pip install -e .[dev]" >&2; exit 1; }

work=$(mktemp -d -t lightning-influence-tb.XXXXXX)
tb_pid=""
cleanup() {
    [[ -n "$tb_pid" ]] && kill "$tb_pid" 2>/dev/null && wait "$tb_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

echo "== training (logs in $work/logs)"
(cd "$work" && PYTHONDONTWRITEBYTECODE=1 "$PYTHON" -m lightning_influence.demo \
    --arms pruned loss-pruned --epochs 20 --score-every 5 --fraction 0.25 --logdir "$work/logs")

echo "== playwright-core $PLAYWRIGHT_CORE_VERSION"
npm install --prefix "$work/node" --no-audit --no-fund --loglevel=error \
    "playwright-core@$PLAYWRIGHT_CORE_VERSION" >/dev/null

port=$("$PYTHON" -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
"$PYTHON" -m tensorboard.main --logdir "$work/logs" --host 127.0.0.1 --port "$port" \
    >"$work/tensorboard.log" 2>&1 &
tb_pid=$!
# Ready when the layout the callback wrote is served.
"$PYTHON" - "$port" <<'EOF' || { cat "$work/tensorboard.log" >&2; exit 1; }
import json, sys, time, urllib.request

url = f"http://127.0.0.1:{sys.argv[1]}/data/plugin/custom_scalars/layout"
for _ in range(120):
    try:
        if json.load(urllib.request.urlopen(url, timeout=5)).get("category"):
            sys.exit(0)
    except OSError:
        pass
    time.sleep(0.5)
sys.exit("TensorBoard served no custom-scalars layout within a minute")
EOF

cat >"$work/shot.js" <<'EOF'
// Opens the CUSTOM SCALARS tab with smoothing off and outliers kept in the y range (a few points
// per curve: smoothing would draw a curve that is not there, and the largest eigenvalue is the
// "outlier"), waits for every chart, hovers over "dropped vs known noise" so that its tooltip names
// the lines, and saves the page down to the last chart.
const [pw, chromium, url, out] = process.argv.slice(2);
(async () => {
  const browser = await require(pw).chromium.launch({
    executablePath: chromium,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  const page = await browser.newPage({ viewport: { width: 1600, height: 1300 } });
  await page.goto(url);
  const cards = page.locator("tf-custom-scalar-multi-line-chart-card");
  await cards.first().waitFor({ timeout: 60000 });
  await page.locator("paper-checkbox", { hasText: "Ignore outliers" }).click();
  await page.waitForLoadState("networkidle");
  await page.waitForTimeout(2000);
  let bottom = 0;
  for (let i = 0; i < (await cards.count()); i++) {
    const box = await cards.nth(i).boundingBox();
    bottom = Math.max(bottom, box.y + box.height);
  }
  const chart = cards.filter({ hasText: "dropped vs known noise" }).locator("vz-line-chart2").first();
  const box = await chart.boundingBox();
  await page.mouse.move(box.x + box.width * 0.55, box.y + box.height * 0.3);
  await page.waitForTimeout(1000);
  await page.screenshot({ path: out, clip: { x: 0, y: 0, width: 1600, height: Math.min(1300, bottom + 16) } });
  await browser.close();
})().catch((err) => { console.error(err); process.exit(1); });
EOF
echo "== screenshot"
node "$work/shot.js" "$work/node/node_modules/playwright-core" "$CHROMIUM" \
    "http://127.0.0.1:$port/#custom_scalars&_smoothingWeight=0" "$work/shot.png"

# A docs image stays under ~400 KB: 256 colours are plenty for a chart page.
"$PYTHON" - "$work/shot.png" "$OUT" <<'EOF'
import os, shutil, sys

from PIL import Image

src, dst = sys.argv[1:]
if os.path.getsize(src) > 400_000:
    Image.open(src).convert("RGB").quantize(256).save(dst, optimize=True)
else:
    shutil.copyfile(src, dst)
print(f"wrote {dst} ({os.path.getsize(dst) // 1000} KB)")
EOF
