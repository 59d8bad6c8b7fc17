"""The Python API as a library user meets it: what the decorator accepts and refuses, and the types mypy sees."""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import multiprocessing
import signal
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers.scripts import mypy_strict

import selfheal
from conftest import SCRIPTS
from selfheal.errors import StateWriteError
from selfheal.testing import FakeClock


def flaky(failures: int) -> tuple[list[int], Any]:
    """A function failing with a connection reset `failures` times, then returning its argument; and its calls."""
    calls: list[int] = []

    def fn(*args: Any) -> Any:
        calls.append(1)
        if len(calls) <= failures:
            raise ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")
        return args[-1]

    return calls, fn


def test_generator_functions_are_refused_when_decorated() -> None:
    """A generator fails while it is iterated, after the call returned: it was wrapped and never retried."""

    def lines() -> Any:
        yield 1

    async def chunks() -> Any:
        yield 1

    for fn in (lines, chunks):
        with pytest.raises(TypeError, match=f"cannot retry the generator function .*{fn.__name__}"):
            selfheal.retry(fn)
    with pytest.raises(TypeError, match="generator function"):
        selfheal.retry().call(lines)


def test_a_classmethod_or_staticmethod_under_the_decorator_is_retried() -> None:
    """@retry above @classmethod raised "'classmethod' object is not callable"; above @staticmethod an instance's
    call passed the instance as an argument. Both now run, retried, with the class or no instance."""
    calls, fn = flaky(1)

    class Report:
        @selfheal.retry(clock=FakeClock())
        @classmethod
        def build(cls, x: int) -> tuple[str, int]:
            return cls.__name__, fn(x)

        @selfheal.retry(clock=FakeClock())
        @staticmethod
        def check(x: int) -> int:
            return int(fn(x))

    assert Report.build(1) == ("Report", 1) and Report().build(2) == ("Report", 2)
    assert Report.check(3) == 3 and Report().check(4) == 4
    assert len(calls) == 5  # the first one failed and was retried


def test_options_given_without_their_name_are_refused_at_once() -> None:
    """@retry("weekly-report") made a wrapper around a string, failing at every call as a 'permanent' error."""
    with pytest.raises(TypeError, match=r"retry\(\) takes its options as keywords.*'weekly-report'"):
        selfheal.retry("weekly-report")  # type: ignore[call-overload]


def test_call_refuses_a_coroutine_function() -> None:
    """call() on an async function returned its coroutine at once, so nothing it raised was ever retried."""

    async def fetch() -> int:
        return 1

    with pytest.raises(TypeError, match=r"coroutine function: use `await retrier\.acall"):
        selfheal.retry().call(fetch)  # type: ignore[arg-type, unused-coroutine]


def test_an_object_with_an_async_call_is_retried_as_a_coroutine() -> None:
    """A callable object whose __call__ is async was wrapped as a sync function: its failures were never retried."""
    calls, fn = flaky(2)

    class Client:
        async def __call__(self, x: int) -> int:
            return int(fn(x))

    wrapped = selfheal.retry(clock=FakeClock())(Client())
    assert asyncio.run(wrapped(7)) == 7
    assert len(calls) == 3


@pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.TaskGroup is Python 3.11's")
def test_a_coroutine_whose_task_group_loses_its_connection_is_retried_as_transient() -> None:
    """A decorated coroutine fanning out with asyncio.TaskGroup: a reset in one task reached the retrier as an
    ExceptionGroup, read as `unknown` (one retry, marked unclassified), so a second reset ended the call."""
    calls, fn = flaky(2)

    async def part(x: int) -> int:
        return int(fn(x))

    @selfheal.retry(clock=FakeClock(), record=False)
    async def gather_parts(x: int) -> int:
        async with asyncio.TaskGroup() as group:
            task = group.create_task(part(x))
        return task.result()

    assert asyncio.run(gather_parts(5)) == 5
    assert len(calls) == 3


@pytest.mark.slow
def test_mypy_strict_keeps_the_types_of_decorated_functions(tmp_path: Path) -> None:
    """A user's program under mypy --strict: a decorated coroutine function stays a coroutine function (it was
    typed as returning a plain Awaitable, so asyncio.run() and create_task() were type errors), every
    documented option, a custom classifier included, type-checks, and so does the documented way to call the
    openai client's overloaded create (the form the docs showed before was a type error)."""
    program = tmp_path / "user_program.py"
    program.write_text(
        textwrap.dedent(
            """\
            from __future__ import annotations

            import asyncio

            import openai
            from openai import Stream
            from openai.types.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionMessageParam

            import selfheal


            class Mine(selfheal.Classifier):
                def classify(self, failure: selfheal.Failure, *, now: float | None = None) -> selfheal.Classification:
                    return selfheal.Classification("transient", "mine", "transient")


            @selfheal.retry(task="crawl", classifier=Mine(selfheal.get_config().classify))
            async def fetch(url: str) -> bytes:
                return url.encode()


            @selfheal.retry
            def summarise(text: str) -> str:
                return text


            async def main() -> bytes:
                task: asyncio.Task[bytes] = asyncio.create_task(fetch("u"))
                return await task + await selfheal.retry(on=(OSError,)).acall(fetch, "v")


            page: bytes = asyncio.run(fetch("x"))
            both: bytes = asyncio.run(main())
            text: str = summarise("y")
            reveal_type(fetch)

            # The documented call of an overloaded function (the openai client's create): through a lambda.
            client = openai.OpenAI(base_url="http://127.0.0.1:9/v1", api_key="k", max_retries=0)
            messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]
            reply: ChatCompletion = selfheal.retry(target="m").call(
                lambda: client.chat.completions.create(model="m", messages=messages)
            )
            chunks: Stream[ChatCompletionChunk] = selfheal.retry(target="m").call(
                lambda: client.chat.completions.create(model="m", messages=messages, stream=True)
            )

            # The same messages, as an openai user holds them, given to the chain.
            def ask_chain() -> selfheal.Completion:
                return selfheal.complete(messages=messages)
            aclient = openai.AsyncOpenAI(base_url="http://127.0.0.1:9/v1", api_key="k", max_retries=0)


            async def ask() -> ChatCompletion:
                return await selfheal.retry(target="m").acall(
                    lambda: aclient.chat.completions.create(model="m", messages=messages)
                )


            # on= as stamina users write it: a predicate of the Exception the retrier hands it.
            def is_network(exc: Exception) -> bool:
                return isinstance(exc, OSError)


            @selfheal.retry(on=is_network, retries=3, deadline_s=30)
            def ping() -> int:
                return 1


            class Report:
                @selfheal.retry(task="r")
                @classmethod
                def build(cls, x: int) -> str:
                    return cls.__name__

                @selfheal.retry
                @staticmethod
                def check(x: int) -> int:
                    return x

                @selfheal.retry
                async def fetch(self, x: int) -> int:
                    return x


            built: str = Report.build(1)
            checked: int = Report().check(2)
            fetched: int = asyncio.run(Report().fetch(3))
            try:
                ping()
            except OSError as exc:
                spent: tuple[selfheal.Attempt, ...] = selfheal.attempts_of(exc)
                why: str | None = selfheal.stop_reason_of(exc)


            # In the user's own tests: no_waits as a block and on test functions, sync or async.
            @selfheal.no_waits(attempts=1)
            async def test_fetch() -> None:
                assert await Report().fetch(1) == 1


            @selfheal.no_waits()
            def test_summarise() -> None:
                with selfheal.no_waits():
                    assert summarise("z") == "z"


            waited: None = asyncio.run(test_fetch())


            # Models through the chain, with a schema and streamed.
            schema: dict[str, object] = {"type": "object", "required": ["n"]}
            answer: selfheal.Completion = selfheal.complete("q", json_output=True, schema=schema, task="t")
            shown: list[str] = []
            streamed: selfheal.Completion = selfheal.complete("q", stream=True, on_text=shown.append, cache=False)
            try:
                selfheal.complete(messages=[{"role": "user", "content": "q"}], system="brief", max_tokens=10)
            except selfheal.ModelCallFailed as failed:
                status: int | None = failed.status
                code: str | None = failed.code
                tried: list[selfheal.ModelAttempt] = failed.attempts


            async def events() -> str:
                text = ""
                async for event in selfheal.astream("q", deadline_s=20):
                    if isinstance(event, selfheal.StreamText):
                        text += event.text
                    elif isinstance(event, selfheal.StreamRestart):
                        text = text[: len(text) - event.discard_chars]
                    else:
                        text = event.completion.content
                return text


            # A workflow of functions: ctx, outputs, compensate, retries, after.
            wf = selfheal.Workflow("weekly-report")


            @wf.step(compensate=lambda ctx: print(ctx.outputs["draft"]["id"]))
            def draft(ctx: selfheal.StepContext) -> dict[str, str]:
                return {"id": ctx.idempotency_key}


            @wf.step(retries=3, target="cms-api", after=["draft"])
            def publish(ctx: selfheal.StepContext) -> None:
                outcome = selfheal.run_with_retry(["true"], timeout_s=30, max_attempts=1)
                if not outcome.ok:
                    raise RuntimeError(outcome.error_class)


            result: selfheal.WorkflowResult = wf.run(task="weekly-report-2026-47")
            again: int = wf.run(task="weekly-report-2026-47", restart=True).exit_status
            later: int = wf.run(from_step="publish").exit_status
            """
        )
        + f"# run {uuid.uuid4().hex}: new text each run, so a kept cache never stands in for checking it\n"
    )
    lines = mypy_strict(program, tmp_path)
    assert [line for line in lines if ": error:" in line] == [], lines
    assert any('Revealed type is "def (url: str) -> typing.Coroutine[Any, Any, bytes]"' in line for line in lines)


@pytest.mark.slow
def test_mypy_strict_finds_a_misspelt_option_of_complete_astream_and_workflow_run(tmp_path: Path) -> None:
    """acomplete() names its options, so mypy found a misspelt one; complete(), astream() and Workflow.run() took
    `**options: Any`, so `complete(prompt, json_ouput=True)` type-checked and failed only when it ran."""
    program = tmp_path / "user_program.py"
    program.write_text(
        textwrap.dedent(
            """\
            from __future__ import annotations

            import selfheal


            async def main() -> None:
                await selfheal.acomplete("q", json_ouput=True)
                async for event in selfheal.astream("q", json_ouput=True):
                    pass


            selfheal.complete("q", json_ouput=True)
            selfheal.complete("q", deadline_s="soon")
            selfheal.Workflow("w").run(task="t", restat=True)
            """
        )
        + f"# run {uuid.uuid4().hex}: new text each run, so a kept cache never stands in for checking it\n"
    )
    errors = [line.split(":", 2)[1:] for line in mypy_strict(program, tmp_path) if ": error:" in line]
    flagged = {int(line) for line, _ in errors}
    assert flagged == {7, 8, 12, 13, 14}, errors


def _raise_in_worker(error: BaseException) -> None:
    raise error


@pytest.mark.slow
def test_errors_raised_in_a_process_pool_worker_reach_the_caller_whole() -> None:
    """The skill's errors take other arguments than their message: pickle could not rebuild them, and one raised
    in a ProcessPoolExecutor's worker broke the whole pool (BrokenProcessPool, for that job and every later one)."""
    attempt = selfheal.ModelAttempt("primary", "m", 1, "failed", error_class="transient", status=503)
    errors = [
        selfheal.InvalidIdError("task", "../x"),
        selfheal.CorruptStateError(Path("/s/tasks/t.json"), Path("/s/tasks/t.json.corrupt-1"), "not JSON"),
        selfheal.LockBusy("task t", "pid 5"),
        selfheal.ConfigError("must be > 0", file="/s/config.yaml", key="retry.deadline_s", value=-1, line=3),
        StateWriteError(Path("/s/ledger"), OSError(errno.ENOSPC, "No space left on device")),
        selfheal.ModelCallFailed("every endpoint failed", [attempt], error_class="transient"),
        selfheal.NoEndpointAvailable([attempt]),
        selfheal.Interrupted(signal.SIGTERM),
    ]
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        for error in errors:
            with pytest.raises(type(error)) as info:
                pool.submit(_raise_in_worker, error).result()
            assert str(info.value) == str(error)
            assert info.value.__dict__ == error.__dict__
    assert isinstance(info.value, selfheal.Interrupted) and info.value.signame == "SIGTERM"


@pytest.mark.slow
def test_a_library_user_gets_no_files_handlers_or_signals_from_importing(tmp_path: Path) -> None:
    """With no state root and no config anywhere: importing every public name creates nothing under HOME and
    touches no signal or logging handler; a retried failure with record=False writes nothing either."""
    code = textwrap.dedent(
        """\
        import errno, logging, signal
        before = [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)]
        import selfheal
        for name in selfheal.__all__:
            getattr(selfheal, name)
        calls = []
        @selfheal.retry(record=False)
        def flaky():
            calls.append(1)
            if len(calls) < 2:
                raise ConnectionResetError(errno.ECONNRESET, "reset")
            return "ok"
        with selfheal.no_waits():
            assert flaky() == "ok"
        assert [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)] == before
        assert logging.getLogger().handlers == [] and logging.getLogger("selfheal").handlers == []
        """
    )
    home = tmp_path / "home"
    home.mkdir()
    env = {"HOME": str(home), "PATH": "/usr/bin:/bin", "PYTHONPATH": str(SCRIPTS), "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False)
    assert proc.returncode == 0, proc.stderr
    assert list(home.iterdir()) == []


def test_every_public_name_says_what_it_is() -> None:
    """`help(selfheal.x)` answers for everything `selfheal.__all__` lists: each function, class and module has a
    docstring (is_testing and stop_reason_of had none)."""
    import inspect

    import selfheal

    undocumented = [
        name
        for name in selfheal.__all__
        if (inspect.isfunction(obj := getattr(selfheal, name)) or inspect.isclass(obj) or inspect.ismodule(obj))
        and not inspect.getdoc(obj)
    ]
    assert undocumented == []


def test_no_waits_on_an_async_test_function_skips_the_waits_while_it_runs() -> None:
    """`@selfheal.no_waits()` on an `async def` test ended its block when the coroutine was made, before its body
    ran: the retries inside waited for real (and the blocks of a sync function were the only ones kept)."""
    calls, fn = flaky(2)
    clock = FakeClock()

    @selfheal.retry(clock=clock, record=False)
    async def fetch(x: int) -> int:
        return int(fn(x))

    @selfheal.no_waits()
    async def test_fetch() -> int:
        return await fetch(3)

    @selfheal.no_waits(attempts=1)
    def test_once() -> bool:
        return selfheal.is_testing()

    assert asyncio.run(test_fetch()) == 3
    assert len(calls) == 3 and clock.waits == []
    assert test_once() and not selfheal.is_testing()
    assert test_fetch.__name__ == "test_fetch" and asyncio.iscoroutinefunction(test_fetch)


def test_complete_and_astream_take_exactly_acompletes_options_with_its_defaults() -> None:
    """complete() and astream() name acomplete()'s options one by one (so mypy finds a misspelt one): a new option
    of acomplete(), or a changed default, must reach them too, or the sync and streaming forms quietly differ."""
    import inspect

    from selfheal.models import llm

    def public(fn: Callable[..., object]) -> dict[str, object]:
        params = inspect.signature(fn).parameters
        return {name: p.default for name, p in params.items() if not name.startswith("_")}

    wanted = public(llm.acomplete)
    assert public(llm.complete) == wanted
    assert public(llm.astream) == {k: v for k, v in wanted.items() if k not in ("stream", "on_text", "on_restart")}
