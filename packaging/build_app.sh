#!/usr/bin/env bash
# Build the one-folder AdapterStudio application with PyInstaller, then smoke-check it.
#
#   packaging/build_app.sh                 # build + check
#   SKIP_BUILD=1 packaging/build_app.sh    # check an existing dist/AdapterStudio
#
# Environment (all optional):
#   PYI_VENV   build environment (default: build/pyi-venv; created when missing)
#   TORCH      the torch requirement to install there (default: torch; e.g. "torch==2.13.0",
#              or set PIP_INDEX_URL=https://download.pytorch.org/whl/cu124 for a CUDA build)
#   DIST       output folder (default: dist)
#
# The project and the built-in plugins are installed NON-editable into the build venv, so
# PyInstaller collects them with their metadata (the plugins' entry points). Checks: the
# executable prints its version; `doctor` runs with no FAIL; the executable acts as python
# for `script.py` (it writes a tiny model and synthetic data) and for `-m module` (training
# runs `accelerate launch` and the worker as child processes of the frozen executable): a
# 2-step CPU training ends with the adapter in the catalogue; with a display server (Xvfb)
# the main window opens. Linux; several minutes (about 4 on 2 cores, plus installs).
# Not in CI: too slow. Run it before a release.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYI_VENV=${PYI_VENV:-$ROOT/build/pyi-venv}
DIST=${DIST:-$ROOT/dist}
APP="$DIST/AdapterStudio/AdapterStudio"
export PIP_DISABLE_PIP_VERSION_CHECK=1

if [ -z "${SKIP_BUILD:-}" ]; then
    echo "== build environment: $PYI_VENV"
    [ -x "$PYI_VENV/bin/python" ] || python3 -m venv "$PYI_VENV"
    "$PYI_VENV/bin/pip" install -q "${TORCH:-torch}" pyinstaller
    "$PYI_VENV/bin/pip" install -q "$ROOT[gui,data]" "$ROOT"/plugins/*/
    # the same version number is already installed: force this checkout's code in
    "$PYI_VENV/bin/pip" install -q --no-deps --force-reinstall "$ROOT" "$ROOT"/plugins/*/
    echo "== pyinstaller"
    start=$(date +%s)
    (cd "$ROOT" && "$PYI_VENV/bin/pyinstaller" packaging/pyinstaller/adapterstudio.spec --noconfirm \
        --log-level WARN --distpath "$DIST" --workpath "$ROOT/build/pyinstaller")
    echo "built in $(( $(date +%s) - start )) s"
fi

echo "== bundle: $DIST/AdapterStudio ($(du -sh "$DIST/AdapterStudio" | cut -f1))"
CHECK=$(mktemp -d)
trap 'rm -rf "$CHECK"' EXIT
export ADAPTERSTUDIO_HOME="$CHECK/home" HF_HUB_OFFLINE=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
unset PYTHONPATH
cd "$CHECK"   # run from elsewhere: nothing may come from the checkout

echo "== --version"
"$APP" --version

echo "== doctor"
"$APP" doctor --json > doctor.json || true
"$APP" doctor || true
python3 - doctor.json <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
bad = [c for c in d["checks"] if c["status"] == "error"]
assert not bad, f"doctor FAILs in the frozen app: {bad}"
names = {c["name"] for c in d["checks"]}
assert {"plugin:huggingface", "plugin:folder"} <= names, f"built-in plugins not found: {sorted(names)}"
print("doctor ok:", d["status"])
PY

echo "== acts as python: script.py"
"$APP" "$ROOT/packaging/smoke_assets.py" "$CHECK"

echo "== training in child processes (-m accelerate.commands.launch, -m worker)"
"$APP" base add "$CHECK/tiny-bert" --name tiny --no-hash > /dev/null
"$APP" train --base tiny --data "$CHECK/data.csv" --max-steps 2 --cpu --name smoke-lora
"$APP" adapter list --json | python3 -c \
    "import json,sys; a=json.load(sys.stdin); assert any(x['name']=='smoke-lora' for x in a), a; print('adapter in catalogue')"

echo "== two training processes (torchrun starts workers as 'python -u -m ...'; DDP over gloo)"
"$APP" train --base tiny --data "$CHECK/data.csv" --max-steps 2 --cpu --num-processes 2 --name smoke-ddp
"$APP" adapter list --json | python3 -c \
    "import json,sys; a=json.load(sys.stdin); assert any(x['name']=='smoke-ddp' for x in a), a; print('adapter in catalogue')"

echo "== window"
if [ -d "$DIST/AdapterStudio/_internal/PySide6" ] && command -v xvfb-run > /dev/null; then
    QT_QPA_PLATFORM=xcb xvfb-run -a -s "-screen 0 1280x800x24" bash -c '
        "$0" > window.log 2>&1 & pid=$!
        for _ in $(seq 1 120); do
            if xwininfo -root -tree 2>/dev/null | grep -q "\"AdapterStudio"; then
                xwininfo -root -tree | grep "\"AdapterStudio" | head -3
                kill $pid; wait $pid 2>/dev/null || true; echo "window opened"; exit 0
            fi
            kill -0 $pid 2>/dev/null || { echo "the app exited:"; cat window.log; exit 1; }
            sleep 1
        done
        echo "no window after 120 s:"; cat window.log; kill $pid; exit 1' "$APP"
elif [ -d "$DIST/AdapterStudio/_internal/PySide6" ]; then
    echo "skipped: xvfb-run not installed (apt-get install xvfb libxcb-cursor0 libxkbcommon-x11-0 ...)"
else
    echo "this build has no GUI (PySide6 not bundled); without a command it prints the help:"
    "$APP" | head -3
fi
echo "== all smoke checks passed"
