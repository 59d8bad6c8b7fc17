#!/usr/bin/env bash
# self-heal set-up: a virtual environment with the dependencies, and the state folder.
# Idempotent: run it again at any time; it repairs what is missing and changes nothing else.
#
#   ./install.sh          runtime dependencies only
#   ./install.sh --dev    also the test, lint and benchmark tools
#   ./install.sh --fleet  also the PostgreSQL driver for fleet mode (store.url or SELFHEAL_DATABASE_URL)
#   ./install.sh --cron   also run the health check every 5 minutes from the user's crontab (one marked entry)
#   ./install.sh --no-cron  remove that entry (SELFHEAL_CRONTAB names another crontab command)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$ROOT/.venv"
DEV=0
FLEET=0
CRON=keep
CRONTAB="${SELFHEAL_CRONTAB:-crontab}"
CRON_MARK="# self-heal health check"

usage() {
    sed -n '2,9p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

for arg in "$@"; do
    case "$arg" in
        --dev) DEV=1 ;;
        --fleet) FLEET=1 ;;
        --cron) CRON=add ;;
        --no-cron) CRON=remove ;;
        -h|--help) usage; exit 0 ;;
        *) echo "install.sh: unknown option '$arg' (see --help)" >&2; exit 2 ;;
    esac
done

say() { printf 'self-heal: %s\n' "$*" >&2; }

# Checked before anything is installed, so a machine without cron learns it at once.
if [ "$CRON" != keep ] && ! command -v "$CRONTAB" >/dev/null 2>&1; then
    echo "install.sh: there is no '$CRONTAB' command here, so the health check cannot be put in the system crontab;" \
        "install cron (e.g. apt-get install cron) or run '$ROOT/scripts/health_check.py --cron' from a systemd timer" >&2
    exit 3
fi

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
mapfile -t DEPS < <("$VPY" - "$ROOT/pyproject.toml" "$DEV" "$FLEET" <<'PYEOF'
import re, sys
text = open(sys.argv[1], encoding="utf-8").read()
want_dev = sys.argv[2] == "1"
want_fleet = len(sys.argv) > 3 and sys.argv[3] == "1"
try:
    import tomllib
    project = tomllib.loads(text)["project"]
    deps = list(project["dependencies"])
    if want_dev:
        deps += project["optional-dependencies"]["dev"]
    if want_fleet:
        deps += project["optional-dependencies"]["fleet"]
except ImportError:  # Python 3.10 has no tomllib; these arrays are plain lists of strings
    def array(name):
        match = re.search(r"(?ms)^%s\s*=\s*\[(.*?)^\]" % re.escape(name), text)
        return re.findall(r'"([^"]+)"', match.group(1)) if match else []
    deps = array("dependencies") + (array("dev") if want_dev else []) + (array("fleet") if want_fleet else [])
print("\n".join(dict.fromkeys(deps)))
PYEOF
)
say "installing ${#DEPS[@]} packages into .venv"
"$VPY" -m pip install --quiet --disable-pip-version-check "${DEPS[@]}"

# 4. `import selfheal` from the venv, for users' own Python code (the library stays in scripts/).
SITE="$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
printf '%s\n' "$ROOT/scripts" > "$SITE/selfheal-skill.pth"

# 5. The state folder, private to this user.
STATE="$("$VPY" -c 'import sys; sys.path.insert(0, sys.argv[1]); from selfheal.state.root import resolve_state_root; print(resolve_state_root())' "$ROOT/scripts")"
mkdir -p "$STATE"
chmod 700 "$STATE"

# 6. --cron / --no-cron: the health check's entry in the user's crontab. Only the line carrying CRON_MARK is
#    ever written or removed; every other line is passed through unchanged.
if [ "$CRON" != keep ]; then
    shq() { printf "'%s'" "$(printf '%s' "$1" | sed "s/'/'\\\\''/g")"; }   # one shell word, single-quoted
    ERR="$(mktemp)"
    if CURRENT="$("$CRONTAB" -l 2>"$ERR")"; then
        :
    elif grep -qi "no crontab" "$ERR"; then
        CURRENT=""
    else
        echo "install.sh: cannot read the crontab ($CRONTAB -l: $(cat "$ERR")); nothing changed" >&2
        rm -f "$ERR"
        exit 3
    fi
    rm -f "$ERR"
    ENTRY=""
    if [ "$CRON" = add ]; then
        SCHEDULE="$("$VPY" -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["schedules"]["health"])' "$ROOT/skill.yaml")"
        # cron's environment has none of the user's variables: keep the ones that move state or the gateway.
        PREFIX=""
        for name in SELFHEAL_HOME SELFHEAL_CONFIG OPENCLAW_STATE_DIR OPENCLAW_CONFIG_PATH OPENCLAW_GATEWAY_PORT; do
            if [ -n "${!name:-}" ]; then PREFIX+="$name=$(shq "${!name}") "; fi
        done
        # NO_REPLY is OpenClaw's "nothing to say"; dropping it means cron mails only a summary of a problem.
        ENTRY="$SCHEDULE ${PREFIX}$(shq "$VPY") $(shq "$ROOT/scripts/health_check.py") --cron 2>&1 | grep -v '^NO_REPLY\$' $CRON_MARK"
        ENTRY="${ENTRY//%/\\%}"   # an unescaped % ends a crontab command
    fi
    {
        if [ -n "$CURRENT" ]; then printf '%s\n' "$CURRENT" | grep -vF -- "$CRON_MARK" || true; fi
        if [ -n "$ENTRY" ]; then printf '%s\n' "$ENTRY"; fi
    } | "$CRONTAB" -
    if [ "$CRON" = add ]; then
        say "crontab: the health check runs at '$SCHEDULE' (liveness belongs outside the gateway: OpenClaw's cron stops with it)"
        ARGV="$("$VPY" -c 'import json, sys; print(json.dumps(sys.argv[1:]))' "$VPY" "$ROOT/scripts/health_check.py" --cron)"
        OC_ENV=""
        for name in SELFHEAL_HOME SELFHEAL_CONFIG; do
            if [ -n "${!name:-}" ]; then OC_ENV+=" --command-env $(shq "$name=${!name}")"; fi
        done
        say "to also post problems to chat from inside the gateway, run:"
        echo "  openclaw cron add --name self-heal-health --every 10m --command-argv $(shq "$ARGV")$OC_ENV" >&2
    else
        say "crontab: the health check entry is removed (if there was one)"
    fi
fi

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
