#!/usr/bin/env bash
# self-heal set-up: a virtual environment with the dependencies, and the state folder.
# Idempotent: run it again at any time; it repairs what is missing and changes nothing else.
#
#   ./install.sh          runtime dependencies only
#   ./install.sh --dev    also the test, lint and benchmark tools
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$ROOT/.venv"
DEV=0

usage() {
    sed -n '2,7p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

for arg in "$@"; do
    case "$arg" in
        --dev) DEV=1 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "install.sh: unknown option '$arg' (see --help)" >&2; exit 2 ;;
    esac
done

say() { printf 'self-heal: %s\n' "$*" >&2; }

# 1. A Python >= 3.10: $PYTHON if set, else the newest python3.x found on PATH.
version_ok() { "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' 2>/dev/null; }
PY=""
for candidate in ${PYTHON:-} python3 python3.13 python3.12 python3.11 python3.10; do
    if command -v "$candidate" >/dev/null 2>&1 && version_ok "$candidate"; then
        PY="$(command -v "$candidate")"
        break
    fi
done
if [ -z "$PY" ]; then
    echo "install.sh: self-heal needs Python 3.10 or newer; none found (set PYTHON=/path/to/python3.x)" >&2
    exit 2
fi

# 2. The virtual environment, re-made only if it is missing or broken.
if [ ! -x "$VENV/bin/python" ] || ! version_ok "$VENV/bin/python"; then
    say "creating $VENV with $("$PY" --version 2>&1)"
    rm -rf "$VENV"
    "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"

# 3. Dependencies: the ranges in pyproject.toml, read by the venv's own Python.
mapfile -t DEPS < <("$VPY" - "$ROOT/pyproject.toml" "$DEV" <<'PYEOF'
import re, sys
text = open(sys.argv[1], encoding="utf-8").read()
want_dev = sys.argv[2] == "1"
try:
    import tomllib
    project = tomllib.loads(text)["project"]
    deps = list(project["dependencies"])
    if want_dev:
        deps += project["optional-dependencies"]["dev"]
except ImportError:  # Python 3.10 has no tomllib; these two arrays are plain lists of strings
    def array(name):
        match = re.search(r"(?ms)^%s\s*=\s*\[(.*?)^\]" % re.escape(name), text)
        return re.findall(r'"([^"]+)"', match.group(1)) if match else []
    deps = array("dependencies") + (array("dev") if want_dev else [])
print("\n".join(deps))
PYEOF
)
say "installing ${#DEPS[@]} packages into .venv"
"$VPY" -m pip install --quiet --disable-pip-version-check "${DEPS[@]}"

# 4. `import selfheal` from the venv, for users' own Python code (the library stays in scripts/).
SITE="$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
printf '%s\n' "$ROOT/scripts" > "$SITE/selfheal-skill.pth"

# 5. The state folder, private to this user.
STATE="$("$VPY" -c 'import sys; sys.path.insert(0, sys.argv[1]); from selfheal.store import resolve_state_root; print(resolve_state_root())' "$ROOT/scripts")"
mkdir -p "$STATE"
chmod 700 "$STATE"

say "ready. State folder: $STATE"
{
    echo
    echo "Next:"
    echo "  see it work:      $VENV/bin/python $ROOT/scripts/demo.py"
    echo "  retry a command:  $VENV/bin/python $ROOT/scripts/retry_run.py --task NAME -- CMD ARGS..."
    if [ "$DEV" = 1 ]; then
        echo "  run the tests:    (cd $ROOT && .venv/bin/python -m pytest)"
    fi
} >&2
