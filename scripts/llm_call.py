#!/usr/bin/env python3
"""One model call through the fallback chain (config.yaml's models.chain, else OpenClaw's models, else skill.yaml's).

Endpoints are tried in order, each behind its own circuit breaker; failures are retried where that can
help and fall over where it cannot; every answer is checked (empty, cut off, not the JSON asked for)
and a bad one is never printed as the answer. The answer goes to stdout; what happened, to stderr.

With no models.chain in config.yaml, the chain is the user's OpenClaw models (agents.defaults.model in
openclaw.json, for providers that speak the OpenAI chat API); --show-chain prints each entry and where
it came from, and calls nothing.

Exit codes: 0 answered; 2 usage or configuration error (bad flag, schema file, empty chain, missing key
variable, none of OpenClaw's models usable, a prompt or system text that is not UTF-8); 3 failed (every
endpoint failed, deadline, content refused, stopped by SIGTERM, SIGHUP or Ctrl-C: the call is abandoned);
4 not attempted (every endpoint's breaker is open, GPU memory short). With --json, every outcome is one
JSON object on stdout, and a failure's holds its exit code (`exit`).

With models.cache set in config.yaml (off by default), an identical request within its ttl_s is answered
from the cache without a request (`cached: true` in --json); --no-cache asks the model anyway.
"""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

from selfheal._bootstrap import CLOSED_AT_START, bootstrap

bootstrap()

from selfheal import cli  # noqa: E402
from selfheal.core.config import get_config, redactor_for  # noqa: E402
from selfheal.errors import EXIT_FAILED, EXIT_OK, StateError, UsageError  # noqa: E402
from selfheal.models import openclaw_chain  # noqa: E402
from selfheal.models.llm import Completion, ModelCallFailed, NoEndpointAvailable, complete  # noqa: E402
from selfheal.models.output import load_schema  # noqa: E402
from selfheal.state.root import read_input  # noqa: E402

# A prompt far longer than any model's window: refused before anything is sent, and never read whole.
PROMPT_MAX_BYTES = 16 * 1024 * 1024


# The signals that stop a call midway: `timeout` and service managers send SIGTERM, a closed terminal SIGHUP.
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)


class _Stopped(KeyboardInterrupt):
    """A stop signal, raised where the call is, so it unwinds as Ctrl-C does: the library cancels the request
    and gives its breaker permit back (SIGTERM's default would end the process with the permit still held, no
    JSON object for a --json caller, and exit 143, which no caller is told about)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.name = signal.Signals(signum).name


@contextmanager
def _stop_signals_unwind() -> Iterator[None]:
    """While this lasts, the first stop signal raises _Stopped; later ones are ignored, so a second Ctrl-C
    cannot cut the unwinding that gives the permit back. A signal the caller set to be ignored (`nohup`, a
    background job's SIGINT) stays ignored."""
    raised = False

    def stop(signum: int, _frame: FrameType | None) -> None:
        nonlocal raised
        if not raised:
            raised = True
            raise _Stopped(signum)

    previous = {sig: signal.getsignal(sig) for sig in _STOP_SIGNALS}
    try:
        for sig, handler in previous.items():
            if handler is not signal.SIG_IGN:
                signal.signal(sig, stop)
    except ValueError:  # main() called from another thread: only the main thread may handle signals
        previous = {}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _utf8(text: str, where: str) -> str:
    """`text` from the command line, refused when it holds a byte of another encoding (Python keeps one as a
    lone surrogate): it could not be sent, and each endpoint would fail it as a request error in turn."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise UsageError(f"{where}: not UTF-8 text (character {exc.start}); nothing was sent") from None
    return text


def _prompt(args: object) -> str:
    """The prompt, refused when it is empty or blank: a prompt file an earlier step left empty would cost a
    call and be answered as if something had been asked."""
    path = getattr(args, "prompt_file", None)
    text = _utf8(str(getattr(args, "prompt", "")), "--prompt") if path is None else _read_prompt(path)
    if not text.strip():
        where = "--prompt" if path is None else "standard input" if path == "-" else f"prompt file {path}"
        raise UsageError(f"{where}: empty; nothing was sent")
    return text


def _read_prompt(path: str) -> str:
    where = "standard input" if path == "-" else f"prompt file {path}"
    try:
        if path == "-":
            raw = _stdin_at_most(PROMPT_MAX_BYTES)
        else:
            raw = read_input(Path(path), PROMPT_MAX_BYTES, what="prompt file")
        if raw is None:
            raise UsageError(f"{where}: larger than {PROMPT_MAX_BYTES} bytes; a prompt is not that long")
        return raw.decode("utf-8")
    except StateError as exc:
        raise UsageError(f"{where}: larger than {PROMPT_MAX_BYTES} bytes; a prompt is not that long") from exc
    except UnicodeDecodeError as exc:
        raise UsageError(f"{where}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise UsageError(f"{where}: cannot read it ({exc.strerror or exc})") from None


def _stdin_at_most(max_bytes: int) -> bytes | None:
    """Standard input, or None as soon as it proves longer than `max_bytes` (never more is held)."""
    if sys.stdin is None or 0 in CLOSED_AT_START:  # descriptor 0 closed (`<&-`): /dev/null since bootstrap
        raise UsageError("--prompt-file -: standard input is closed; nothing to read the prompt from")
    stream = getattr(sys.stdin, "buffer", None)
    chunks: list[bytes] = []
    total = 0
    while total <= max_bytes:
        piece = stream.read(65536) if stream is not None else sys.stdin.read(65536).encode("utf-8")
        if not piece:
            return b"".join(chunks)
        chunks.append(piece)
        total += len(piece)
    return None


def _describe(result: Completion) -> str:
    """One line on stderr: who answered, and what it took (requests that failed, endpoints passed over)."""
    if result.cached:
        return f"answered from models.cache ({result.endpoint}, {result.model}): no request sent"
    failed = sum(1 for a in result.attempts if a.outcome in ("failed", "rejected"))
    skipped = [f"{a.endpoint} skipped: {a.reason}" for a in result.attempts if a.outcome == "skipped"]
    notes = ([f"{failed} failed attempt(s)"] if failed else []) + skipped
    if result.fallback_used:
        via = f" (fallback after {'; '.join(notes)})" if notes else " (fallback)"
    else:
        via = f" (after {'; '.join(notes)})" if notes else ""
    tokens = f", {result.usage['total_tokens']} tokens" if result.usage and "total_tokens" in result.usage else ""
    return f"answered by {result.endpoint} ({result.model}){via} in {result.duration_s:.1f}s{tokens}"


def _show_chain(as_json: bool) -> int:
    config = get_config()
    chain = openclaw_chain.resolve(config)
    # What is printed is masked for this chain (a key variable, or a credential its base URLs carry), not only
    # for the one in config.yaml: the chain may be the user's OpenClaw models.
    redactor_for(openclaw_chain.with_chain(config, chain))
    rows = [
        {
            "name": e.name,
            "model": e.model,
            "base_url": e.base_url,
            "api_key_env": e.api_key_env,  # the variable's name only, never the key
            "source": source,
        }
        for e, source in zip(chain.entries, chain.sources, strict=True)
    ]
    if as_json:
        cli.emit_json({"ok": True, "origin": chain.origin, "chain": rows, "unusable": list(chain.unusable)})
    else:
        for i, row in enumerate(rows, 1):
            key = f", key from ${row['api_key_env']}" if row["api_key_env"] else ""
            sys.stdout.write(f"{i}. {row['name']}: {row['model']} at {row['base_url']}{key}\n   from {row['source']}\n")
    if chain.unusable:
        cli.say(chain.unusable_line())
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = cli.ArgumentParser(
        prog="llm_call.py",
        description=__doc__.split("\n\n")[0],
        epilog="example: llm_call.py --json-output --schema report.schema.json --prompt-file prompt.txt",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--prompt", help="the prompt text")
    source.add_argument("--prompt-file", metavar="F", help="read the prompt from a file (- for stdin)")
    parser.add_argument("--system", help="a system message")
    parser.add_argument("--json-output", action="store_true", help="the answer must be one JSON object")
    parser.add_argument("--schema", metavar="F", help="a JSON Schema file the JSON answer must match")
    parser.add_argument("--max-tokens", type=int, metavar="N", help="tokens to ask for (also sizes the timeout)")
    parser.add_argument("--temperature", type=cli.finite, metavar="T")
    parser.add_argument("--stream", action="store_true", help="print the answer as it arrives")
    parser.add_argument(
        "--timeout", type=cli.seconds, metavar="S", help="deadline for the whole call (default models.deadline_s)"
    )
    parser.add_argument("--task", help="task id, recorded with every attempt in the ledger")
    parser.add_argument(
        "--no-cache", action="store_true", help="ask the model even when models.cache holds an answer (and store none)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object: the answer and every attempt")
    parser.add_argument(
        "--show-chain", action="store_true", help="print the chain and where each entry came from; call nothing"
    )
    args = parser.parse_args(argv)
    if args.show_chain:
        cli.setup_logging()
        return _show_chain(args.json)
    if args.prompt is None and args.prompt_file is None:
        parser.error("one of the arguments --prompt --prompt-file is required")
    if args.schema and not args.json_output:
        parser.error("--schema needs --json-output")
    if args.max_tokens is not None and args.max_tokens < 1:
        parser.error(f"--max-tokens must be >= 1, got {args.max_tokens}")
    if args.timeout is not None and args.timeout <= 0:
        parser.error(f"--timeout must be > 0 seconds, got {args.timeout}")
    cli.setup_logging()
    schema = load_schema(Path(args.schema)) if args.schema else None
    prompt = _prompt(args)
    if args.system is not None:
        _utf8(args.system, "--system")

    # Streamed text goes where the answer goes: stdout, or stderr when stdout is for the JSON report.
    sink = sys.stderr if args.json else sys.stdout

    def show(text: str) -> None:
        sink.write(text)
        sink.flush()

    def restart(reason: str) -> None:
        sink.write("\n")
        cli.say(f"the text above is void ({reason}); starting the answer again")

    try:
        with _stop_signals_unwind():
            result = complete(
                prompt,
                system=args.system,
                json_output=args.json_output,
                schema=schema,
                max_tokens=args.max_tokens,
                temperature=args.temperature,
                stream=args.stream,
                on_text=show if args.stream else None,
                on_restart=restart if args.stream else None,
                task=args.task,
                deadline_s=args.timeout,
                cache=not args.no_cache,
            )
    except (ModelCallFailed, NoEndpointAvailable) as exc:
        if args.json:
            cli.emit_json({**exc.to_json(), "exit": exc.exit_code})
        cli.say(str(exc))
        return exc.exit_code
    except _Stopped as stopped:
        message = f"interrupted by {stopped.name}: the call was abandoned, no answer"
        if args.json:
            cli.emit_json({"ok": False, "error": "Interrupted", "message": message, "exit": EXIT_FAILED})
        cli.say(message)
        return EXIT_FAILED
    if args.json:
        cli.emit_json(result.to_json())
    elif args.stream:
        sys.stdout.write("\n")
    elif result.data is not None:  # --json-output: the parsed object, clean for jq and friends
        sys.stdout.write(json.dumps(result.data, ensure_ascii=False) + "\n")
    else:
        sys.stdout.write(result.content.rstrip("\n") + "\n")
    cli.say(_describe(result))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
