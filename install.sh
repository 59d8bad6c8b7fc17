#!/usr/bin/env bash
# self-heal set-up: a virtual environment with the dependencies, and the state folder.
# Idempotent: run it again at any time; it repairs what is missing and changes nothing else.
#
#   ./install.sh          runtime dependencies only
#   ./install.sh --dev    also the test, lint and benchmark tools
#   ./install.sh --fleet  also the PostgreSQL driver for fleet mode (store.url or SELFHEAL_DATABASE_URL)
#   ./install.sh --cron   edit THIS USER's crontab: the health check every 5 minutes, fix tasks every minute,
#                         regular tasks every 10 minutes (three marked lines; HOME, SELFHEAL_HOME, PATH pinned)
#   ./install.sh --no-cron  remove exactly those lines (SELFHEAL_CRONTAB names another crontab command)
#   ./install.sh --openclaw-cron  register the same three jobs in the running gateway (`openclaw cron add`);
#                         jobs already registered as wanted are kept
#   ./install.sh --no-openclaw-cron  remove self-heal's jobs from the running gateway's cron
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$ROOT/.venv"
DEV=0
FLEET=0
CRON=keep
CRONTAB="${SELFHEAL_CRONTAB:-crontab}"
CRON_MARK="# self-heal health check"
FIX_MARK="# self-heal fix tasks"
REGULAR_MARK="# self-heal regular tasks"
OPENCLAW_CRON=0

usage() {
    # The comment block at the top, whatever its length: from line 2 to the first line that is not a comment.
    awk 'NR == 1 { next } !/^#/ { exit } { sub(/^# ?/, ""); print }' "${BASH_SOURCE[0]}"
}

for arg in "$@"; do
    case "$arg" in
        --dev) DEV=1 ;;
        --fleet) FLEET=1 ;;
        --cron) CRON=add ;;
        --no-cron) CRON=remove ;;
        --openclaw-cron) OPENCLAW_CRON=1 ;;
        --no-openclaw-cron) OPENCLAW_CRON=remove ;;
        -h|--help) usage; exit 0 ;;
        *) echo "install.sh: unknown option '$arg' (see --help)" >&2; exit 2 ;;
    esac
done

say() { printf 'self-heal: %s\n' "$*" >&2; }

# Root with another user's HOME (sudo that keeps HOME): the state folder would be made root's, in that user's
# ~/.openclaw, and every script that user runs would then be refused it. Checked before anything is made.
if [ "$(id -u)" = 0 ] && [ -d "$HOME" ] && [ ! -O "$HOME" ]; then
    echo "install.sh: running as root with HOME=$HOME, which is another user's: the state folder would belong to root" \
        "and that user's scripts could not use it; run it as that user (without sudo), or as root with root's own" \
        "HOME (sudo -H)" >&2
    exit 2
fi

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

# 2. The virtual environment, re-made only if it is missing, broken, or another folder's: a skill copied with
#    its .venv (`openclaw skills install` copies verbatim) carries scripts that still run the source's Python.
#    Each Python writes that line its own way (3.12 and later `export VIRTUAL_ENV=...` after a cygpath line, later
#    ones shell-quoted): the script is sourced in a child shell and asked, rather than parsed, or a venv would be taken
#    for another folder's and made again on every run (the network, a minute, and cron lines failing meanwhile).
venv_made_for() {  # the folder the venv was made in, as its activate script says
    [ -f "$VENV/bin/activate" ] && bash --norc --noprofile -c '. "$1" >/dev/null 2>&1; printf "%s" "${VIRTUAL_ENV:-}"' \
        _ "$VENV/bin/activate" 2>/dev/null || true
}
venv_owner() {  # that folder, resolved
    local made
    made="$(venv_made_for)"
    [ -n "$made" ] && [ -d "$made" ] && (cd "$made" && pwd -P)
}
make_venv() {
    local code=0
    if [ ! -w "$ROOT" ] || ! rm -rf "$VENV" 2>/dev/null; then
        echo "install.sh: cannot make $VENV: the skill folder is not writable by $(id -un); run install.sh as the user" \
            "who owns $ROOT" >&2
        exit 3
    fi
    "$PY" -m venv "$VENV" >&2 || code=$?
    if [ "$code" != 0 ]; then
        rm -rf "$VENV"   # never leave a half-made one behind
        echo "install.sh: '$PY -m venv' failed (exit $code), nothing installed; on Debian or Ubuntu install the venv module" \
            "(apt-get install python3-venv), then run this again" >&2
        exit 3
    fi
}
if [ ! -x "$VENV/bin/python" ] || ! version_ok "$VENV/bin/python"; then
    say "creating $VENV with $("$PY" --version 2>&1)"
    make_venv
elif [ "$(venv_owner)" != "$(cd "$VENV" && pwd -P)" ]; then
    say "re-creating $VENV: it was made for $(venv_made_for), not this folder"
    make_venv
elif ! "$VENV/bin/python" -c 'import pip' 2>/dev/null; then
    # Half made (`python3 -m venv` where Debian's python3-venv is missing leaves one): made again, not asked in vain.
    say "creating $VENV again with $("$PY" --version 2>&1): it has no pip"
    make_venv
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
# Already there at versions in range (a run again, a cron set-up): pip is not asked (it takes about a second).
if "$VPY" - "${DEPS[@]}" <<'PYEOF' 2>/dev/null
import sys
from importlib.metadata import PackageNotFoundError, version
from pip._vendor.packaging.requirements import Requirement
for line in sys.argv[1:]:
    req = Requirement(line)
    if req.marker is not None and not req.marker.evaluate():
        continue
    try:
        if not req.specifier.contains(version(req.name), prereleases=True):
            sys.exit(1)
    except PackageNotFoundError:
        sys.exit(1)
PYEOF
then
    say "${#DEPS[@]} packages already in .venv"
else
    say "installing ${#DEPS[@]} packages into .venv"
    if ! "$VPY" -m pip install --quiet --disable-pip-version-check "${DEPS[@]}"; then
        echo "install.sh: pip could not install the dependencies into $VENV (its message is above: no network, or no" \
            "package index it can reach? PIP_INDEX_URL names another); run this again when it can" >&2
        exit 3
    fi
fi

# 4. `import selfheal` from the venv, for users' own Python code (the library stays in scripts/).
SITE="$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
#    Written only when it says something else, so a run again in a skill folder made read-only after set-up
#    (installed by its owner, run by another) gets past it.
if [ "$(cat "$SITE/selfheal-skill.pth" 2>/dev/null)" != "$ROOT/scripts" ]; then
    printf '%s\n' "$ROOT/scripts" > "$SITE/selfheal-skill.pth"
fi

# 4b. The library's bytecode, written now as pip does for what it installs: every cron line starts a new
#     Python, and without bytecode each start compiles the library again (about 70 ms of CPU a start; always
#     so where PYTHONDONTWRITEBYTECODE is set or the folder is read-only). Only stale files are rewritten.
"$VPY" -m compileall -q -j 0 "$ROOT/scripts/selfheal" >/dev/null || say "could not write the library's bytecode (it still runs, only slower to start)"

# 4c. The log scanner's native engine (scripts/selfheal/observe/_logscan.c), built into .venv where a C compiler
#     exists: analyze_logs.py reads big logs several times faster with it. Optional: without it (no compiler,
#     a failed build) the same figures come from the Python fast path. Rebuilt only when the source changed.
NATIVE="$("$VPY" - "$ROOT/scripts" <<'PYEOF' 2>&1
import sys
sys.path.insert(0, sys.argv[1])
from selfheal.observe import native
path, how = native.build()
print(how if path else f"not built ({how})")
PYEOF
)" || NATIVE="not built ($NATIVE)"
case "$NATIVE" in
    built) say "built the native log scanner into .venv (analyze_logs.py reads big logs faster)" ;;
    "up to date") ;;
    *) say "the native log scanner is $NATIVE: analyze_logs.py reads logs in Python (the same figures, slower)" ;;
esac

# 5. The state folder, private to this user.
STATE="$("$VPY" -c 'import sys; sys.path.insert(0, sys.argv[1]); from selfheal.state.root import resolve_state_root; print(resolve_state_root())' "$ROOT/scripts")"
#    umask 077: where ~/.openclaw itself is missing, it is made 0700 as OpenClaw makes it (0755 would be flagged by
#    `openclaw security audit`: "State dir is readable by others"); folders already there keep their modes.
(umask 077 && mkdir -p "$STATE")
chmod 700 "$STATE"

# 6. --cron / --no-cron: self-heal's lines in this user's crontab (health check, fix tasks, regular tasks). Only
#    the lines carrying one of the three marks are ever written or removed; every other line passes unchanged,
#    byte for byte: the table goes through files, never through "$(...)" (which drops trailing blank lines)
#    nor grep (which prints "binary file matches" instead of a line it cannot decode). A table that would not
#    change is not written again. cron runs with almost no environment: each line pins HOME, the state
#    folder and PATH as they are now.
shq() { printf "'%s'" "$(printf '%s' "$1" | sed "s/'/'\\\\''/g")"; }   # one shell word, single-quoted
schedule() { "$VPY" -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["schedules"][sys.argv[2]])' "$ROOT/skill.yaml" "$1"; }
if [ "$CRON" != keep ]; then
    ERR="$(mktemp)"
    CURRENT="$(mktemp)"
    NEW="$(mktemp)"
    if "$CRONTAB" -l >"$CURRENT" 2>"$ERR"; then
        :
    elif grep -qi "no crontab" "$ERR"; then
        : >"$CURRENT"
    else
        echo "install.sh: cannot read the crontab ($CRONTAB -l: $(cat "$ERR")); nothing changed" >&2
        rm -f "$ERR" "$CURRENT" "$NEW"
        exit 3
    fi
    rm -f "$ERR"
    ENTRIES=""
    if [ "$CRON" = add ]; then
        PREFIX="HOME=$(shq "$HOME") SELFHEAL_HOME=$(shq "$STATE") PATH=$(shq "$PATH") "
        for name in SELFHEAL_CONFIG OPENCLAW_HOME OPENCLAW_STATE_DIR OPENCLAW_CONFIG_PATH OPENCLAW_GATEWAY_PORT; do
            if [ -n "${!name:-}" ]; then PREFIX+="$name=$(shq "${!name}") "; fi
        done
        # NO_REPLY is OpenClaw's "nothing to say"; dropping it means cron mails only a summary of a problem.
        HEALTH="$(schedule health) ${PREFIX}$(shq "$VPY") $(shq "$ROOT/scripts/health_check.py") --cron 2>&1 | grep -v '^NO_REPLY\$' $CRON_MARK"
        FIX="$(schedule fix-tasks) ${PREFIX}$(shq "$VPY") $(shq "$ROOT/scripts/tasks.py") run-next --type fix --quiet $FIX_MARK"
        REGULAR="$(schedule regular-tasks) ${PREFIX}$(shq "$VPY") $(shq "$ROOT/scripts/tasks.py") run-next --type regular --type creative --quiet $REGULAR_MARK"
        ENTRIES="$(printf '%s\n%s\n%s' "$HEALTH" "$FIX" "$REGULAR")"
        ENTRIES="${ENTRIES//%/\\%}"   # an unescaped % ends a crontab command
    fi
    # The table less every line carrying a mark (split at "\n" only), then our lines: "changed" or "same".
    CHANGED="$("$VPY" - "$CURRENT" "$NEW" "$ENTRIES" "$CRON_MARK" "$FIX_MARK" "$REGULAR_MARK" <<'PYEOF'
import os, sys
src, dst, entries, *marks = sys.argv[1:]
with open(src, "rb") as fh:
    old = fh.read()
lines = old.split(b"\n")
kept = [line + b"\n" for line in lines[:-1]] + ([lines[-1]] if lines[-1] else [])
kept = [line for line in kept if not any(os.fsencode(m) in line for m in marks)]
if entries:
    if kept and not kept[-1].endswith(b"\n"):
        kept[-1] += b"\n"
    kept.append(os.fsencode(entries) + b"\n")
new = b"".join(kept)
with open(dst, "wb") as fh:
    fh.write(new)
print("same" if new == old else "changed")
PYEOF
)"
    if [ "$CHANGED" = changed ]; then
        "$CRONTAB" - <"$NEW"
    fi
    rm -f "$CURRENT" "$NEW"
    if [ "$CRON" = add ]; then
        say "edited the crontab of user $(id -un) ($CRONTAB): three lines marked '# self-heal ...' (health check, fix tasks, regular tasks), state in $STATE; './install.sh --no-cron' removes exactly them"
        say "liveness belongs outside the gateway (OpenClaw's cron stops with it); the task runners may run in either"
        ARGV="$("$VPY" -c 'import json, sys; print(json.dumps(sys.argv[1:]))' "$VPY" "$ROOT/scripts/health_check.py" --cron)"
        say "to run the health check inside the gateway as well (failures kept in its run history, nothing posted), run:"
        echo "  openclaw cron add --name self-heal-health --every 10m --command-argv $(shq "$ARGV") --command-env $(shq "SELFHEAL_HOME=$STATE") --no-deliver" >&2
        say "or register all three there instead: ./install.sh --openclaw-cron (the gateway must be running)"
    else
        say "crontab: self-heal's lines are removed (if there were any); the rest of the crontab is unchanged"
    fi
fi

# 7. --openclaw-cron: the same three jobs in OpenClaw's own cron, through its CLI. A job already registered
#    exactly as wanted is kept (its id and run history too); one that differs is replaced; a run again changes nothing.
#    --no-openclaw-cron removes every self-heal-* job.
if [ "$OPENCLAW_CRON" != 0 ]; then
    if ! command -v openclaw >/dev/null 2>&1; then
        echo "install.sh: there is no 'openclaw' command on PATH; nothing registered" >&2
        exit 3
    fi
    if ! LISTED="$(openclaw cron list --all --json 2>&1)"; then
        echo "install.sh: the OpenClaw gateway does not answer ('openclaw cron list' failed: $(printf '%s' "$LISTED" | tail -n 1)); start it ('openclaw gateway start') and run this again" >&2
        exit 4
    fi
    # Each wanted job: NAME, schedule flag and value, argv. Compared with what is registered, in Python.
    WANTED="$("$VPY" - "$OPENCLAW_CRON" "$VPY" "$ROOT" "$(schedule fix-tasks)" "$(schedule regular-tasks)" <<'PY'
import json, sys
mode, vpy, root, fix, regular = sys.argv[1:]
jobs = [
    ["self-heal-health", "--every", "10m", [vpy, f"{root}/scripts/health_check.py", "--cron"]],
    ["self-heal-fix-tasks", "--cron", fix, [vpy, f"{root}/scripts/tasks.py", "run-next", "--type", "fix", "--quiet"]],
    ["self-heal-regular-tasks", "--cron", regular,
     [vpy, f"{root}/scripts/tasks.py", "run-next", "--type", "regular", "--type", "creative", "--quiet"]],
]
print(json.dumps(jobs if mode == "1" else []))
PY
)"
    PLAN="$(printf '%s' "$LISTED" | "$VPY" -c '
import json, os, sys
wanted = json.loads(sys.argv[1])
env = {"SELFHEAL_HOME": sys.argv[2], "HOME": os.environ.get("HOME", "")}
data = json.loads(sys.stdin.read() or "{}")
jobs = data.get("jobs", []) if isinstance(data, dict) else data
ours = [j for j in jobs if isinstance(j, dict) and str(j.get("name", "")).startswith("self-heal-")]
def same(job, name, flag, when, argv):
    sched, payload = job.get("schedule") or {}, job.get("payload") or {}
    if flag == "--every":
        unit = {"s": 1000, "m": 60000, "h": 3600000}[when[-1]]
        fits = sched.get("kind") == "every" and sched.get("everyMs") == int(when[:-1]) * unit
    else:
        fits = sched.get("kind") == "cron" and sched.get("expr") == when
    delivery = (job.get("delivery") or {}).get("mode")
    return (fits and payload.get("kind") == "command" and payload.get("argv") == argv
            and payload.get("env") == env and delivery in (None, "none") and job.get("enabled", True))
kept = set()
for job in ours:
    match = [w for w in wanted if w[0] == job["name"] and w[0] not in kept and same(job, *w)]
    if match:
        kept.add(match[0][0])
        print("keep", job["name"], sep="\t")
    else:
        print("rm", job["id"], sep="\t")
for name, flag, when, argv in wanted:
    if name not in kept:
        print("add", name, flag, when, json.dumps(argv), sep="\t")
' "$WANTED" "$STATE")"
    while IFS=$'\t' read -r action what flag when argv; do
        case "$action" in
            rm) openclaw cron rm "$what" >/dev/null ;;
            add) openclaw cron add --name "$what" "$flag" "$when" --no-deliver --command-argv "$argv" \
                    --command-env "SELFHEAL_HOME=$STATE" --command-env "HOME=$HOME" >/dev/null ;;
        esac
    done <<< "$PLAN"
    if [ "$OPENCLAW_CRON" = 1 ]; then
        CHANGED="$(printf '%s\n' "$PLAN" | grep -c $'^add\t' || true)"
        say "OpenClaw's cron: self-heal-health, self-heal-fix-tasks, self-heal-regular-tasks registered ($CHANGED added or replaced, the rest already as wanted; no chat delivery; 'openclaw cron list' shows them)"
    else
        say "OpenClaw's cron: self-heal's jobs are removed (if there were any); other jobs are unchanged"
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
