#!/usr/bin/env bash
# Runs the tests marked `xla` on torch-xla's PJRT CPU device.
#
# torch-xla cannot share the main environment (it loads only beside the torch release it was built
# against), so this script keeps an environment of its own, pinned by scripts/xla-requirements.txt,
# in a cache outside the repository: built once (about 4 GB of downloads, a few minutes), reused
# while the lock file is unchanged. The package itself is installed with --no-deps on every run, so
# pip never touches torch. Exits non-zero when a test fails, and also when no test ran.
#
# --all runs the whole suite there, not only the tests marked xla: torch 2.9.0 is also the oldest
# torch the package declares, and this is where it is tested.
#
# Environment: XLA_VENV overrides the environment's folder; PYTHON the interpreter that creates it
# (default python3); extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

marker=(-m xla)
if [[ "${1:-}" == "--all" ]]; then
    marker=()
    shift
fi

TORCH_VERSION=2.9.0
LOCK=scripts/xla-requirements.txt
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/lightning-influence"
VENV="${XLA_VENV:-$CACHE/xla-venv-torch$TORCH_VERSION}"
MARKER="$VENV/.lightning-influence-complete"
STAMP="$(sha256sum "$LOCK" | cut -d' ' -f1)"
started=$SECONDS

# pip's output goes to a log: this machine's pip configuration adds a warning per package.
pip_quietly() {
    local log="$VENV.pip.log"
    if ! "$VENV/bin/python" -m pip "$@" >"$log" 2>&1; then
        grep -v "^WARNING: Location" "$log" | tail -n 40 >&2
        echo "test_xla: pip $1 failed (full log: $log)" >&2
        exit 1
    fi
}

if [[ "$(uname -s)-$(uname -m)" != "Linux-x86_64" ]]; then
    echo "test_xla: the pinned torch-xla wheels are for Linux x86_64, not $(uname -s) $(uname -m)" >&2
    exit 1
fi

if [[ ! -f "$MARKER" || "$(cat "$MARKER")" != "$STAMP" ]]; then
    echo "test_xla: building $VENV (once; about 4 GB of downloads)"
    if [[ -e "$VENV" && ! -f "$VENV/pyvenv.cfg" ]]; then
        echo "test_xla: $VENV exists and is not a virtual environment; not touching it" >&2
        exit 1
    fi
    rm -rf "$VENV"
    mkdir -p "$(dirname "$VENV")"
    "${PYTHON:-python3}" -m venv "$VENV"
    pip_quietly install --no-deps -r "$LOCK"
    # Check the pair loads before declaring the environment complete.
    PJRT_DEVICE=CPU "$VENV/bin/python" -c "
import torch, torch_xla
assert torch.__version__.split('+')[0] == '$TORCH_VERSION', torch.__version__
print('test_xla: torch', torch.__version__, 'torch_xla', torch_xla.__version__)
"
    # The marker is written last: an interrupted build is rebuilt, never reused.
    echo "$STAMP" >"$MARKER"
    echo "test_xla: environment built in $((SECONDS - started)) s"
fi

pip_quietly install --no-deps --no-build-isolation --force-reinstall .

report="$(mktemp)"
trap 'rm -f "$report"' EXIT
status=0
# LI_REQUIRE_XLA makes tests/test_xla.py fail, instead of skip, when torch_xla cannot be imported.
PJRT_DEVICE=CPU LI_REQUIRE_XLA=1 "$VENV/bin/python" -m pytest "${marker[@]}" -p no:cacheprovider \
    --junitxml="$report" "$@" || status=$?
if [[ $status -ne 0 ]]; then
    echo "test_xla: pytest exited $status" >&2
    exit "$status"
fi
# Skipped tests would let pytest exit 0 without testing anything: require at least one that ran.
"$VENV/bin/python" - "$report" <<'EOF'
import sys
import xml.etree.ElementTree as ET

suites = ET.parse(sys.argv[1]).getroot().iter("testsuite")
ran = sum(int(s.get("tests", 0)) - int(s.get("skipped", 0)) for s in suites)
if ran == 0:
    sys.exit("test_xla: no test ran")
print(f"test_xla: {ran} tests ran")
EOF
echo "test_xla: done in $((SECONDS - started)) s"
