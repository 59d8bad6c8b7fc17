"""Failures of every kind map to the right class, by the shipped rules in skill.yaml."""

from __future__ import annotations

import asyncio
import errno
import http.server
import json
import socket
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import httpx2
import openai
import pytest

from selfheal.core.classify import Classifier, Failure, classify_error, traceback_exception_types
from selfheal.core.config import Config, load_config
from selfheal.testing import FakeModelServer, Fault


@pytest.fixture
def classifier(config: Config) -> Classifier:
    return Classifier(config.classify)


def _status_error(
    cls: type[openai.APIStatusError], status: int, body: object, headers: dict[str, str] | None = None
) -> openai.APIStatusError:
    request = httpx2.Request("POST", "http://127.0.0.1:1/v1/chat/completions")
    response = httpx2.Response(status, headers=headers or {}, json={"error": body}, request=request)
    return cls(f"Error code: {status}", response=response, body=body)


def _chained(outer: BaseException, cause: BaseException) -> BaseException:
    try:
        try:
            raise cause
        except BaseException as inner:
            raise outer from inner
    except BaseException as exc:
        return exc


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda: ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"), "transient"),
        (lambda: ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"), "transient"),
        (lambda: OSError(errno.ECONNRESET, "reset"), "transient"),
        (lambda: OSError(errno.EPIPE, "Broken pipe"), "transient"),
        (lambda: OSError(errno.ETIMEDOUT, "timed out"), "timeout"),
        (lambda: OSError(errno.ENOSPC, "No space left on device"), "resource"),
        (lambda: OSError(errno.ENOMEM, "Cannot allocate memory"), "resource"),
        (lambda: TimeoutError(), "timeout"),
        (lambda: TimeoutError("timed out"), "timeout"),
        (lambda: asyncio.TimeoutError(), "timeout"),
        (lambda: MemoryError(), "resource"),
        (lambda: json.JSONDecodeError("Expecting value", "<html>", 0), "format"),
        (lambda: ValueError("timeout must be positive"), "permanent"),  # type beats words
        (lambda: KeyError("choices"), "permanent"),
        (lambda: FileNotFoundError(errno.ENOENT, "No such file", "x.py"), "permanent"),
        (lambda: ModuleNotFoundError("No module named 'foo'"), "permanent"),
        (lambda: RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"), "resource"),
        (lambda: RuntimeError("unsupported model parameter: reasoning_effort"), "fatal"),
        (lambda: RuntimeError("something odd happened"), "unknown"),
        # a wrapper whose cause tells the truth
        (lambda: _chained(RuntimeError("fetch failed"), ConnectionResetError(errno.ECONNRESET, "reset")), "transient"),
    ],
)
def test_python_exceptions(classifier: Classifier, make: Callable[[], BaseException], expected: str) -> None:
    """Exceptions classify by type, errno and cause chain before falling back to their words."""
    assert classifier.classify_exception(make()).error_class == expected


@pytest.mark.parametrize(
    ("cls", "status", "body", "headers", "expected", "rule"),
    [
        (
            openai.RateLimitError,
            429,
            {"code": "rate_limit_exceeded", "message": "slow down"},
            {},
            "rate_limit",
            "http-rate-limit",
        ),
        (
            openai.RateLimitError,
            429,
            {"code": "insufficient_quota", "type": "insufficient_quota"},
            {},
            "fatal",
            "quota-exhausted",
        ),
        (openai.RateLimitError, 429, {"type": "billing_hard_limit_reached"}, {}, "fatal", "quota-exhausted"),
        (openai.BadRequestError, 400, {"code": "context_length_exceeded"}, {}, "permanent", "context-too-long"),
        (openai.BadRequestError, 400, {"code": "content_policy_violation"}, {}, "permanent", "content-policy"),
        (openai.BadRequestError, 400, {"code": "invalid_value"}, {}, "permanent", "http-client-error"),
        (openai.BadRequestError, 400, {"code": "x"}, {"x-should-retry": "true"}, "transient", "server-says-retry"),
        (
            openai.InternalServerError,
            503,
            {"code": None},
            {"x-should-retry": "false"},
            "permanent",
            "server-says-no-retry",
        ),
        (openai.AuthenticationError, 401, {"code": "invalid_api_key"}, {}, "auth", "http-auth"),
        (openai.PermissionDeniedError, 403, {}, {}, "auth", "http-auth"),
        (openai.NotFoundError, 404, {"code": "model_not_found"}, {}, "permanent", "http-client-error"),
        (openai.UnprocessableEntityError, 422, {}, {}, "permanent", "http-client-error"),
        (openai.ConflictError, 409, {}, {}, "transient", "http-lock-conflict"),
        (openai.InternalServerError, 500, {}, {}, "transient", "http-server-error"),
        (openai.InternalServerError, 502, {}, {}, "transient", "http-server-error"),
        (openai.InternalServerError, 504, {}, {}, "transient", "http-server-error"),
        (openai.APIStatusError, 408, {}, {}, "timeout", "http-timeout"),
        (openai.APIStatusError, 402, {}, {}, "fatal", "payment-required"),
    ],
)
def test_openai_status_errors_read_the_body(
    classifier: Classifier,
    cls: type[openai.APIStatusError],
    status: int,
    body: dict[str, object],
    headers: dict[str, str],
    expected: str,
    rule: str,
) -> None:
    """Status, error code in the body, and x-should-retry together decide the class."""
    result = classifier.classify_exception(_status_error(cls, status, body, headers))
    assert (result.error_class, result.rule) == (expected, rule)


def test_context_length_is_marked_for_the_fallback_chain(classifier: Classifier) -> None:
    """A too-long request carries its own reason, so the chain can send it to a larger model."""
    result = classifier.classify_exception(
        _status_error(openai.BadRequestError, 400, {"code": "context_length_exceeded"})
    )
    assert result.reason == "context_length_exceeded"


def test_retry_after_is_read_from_the_response(classifier: Classifier) -> None:
    """A 429's Retry-After travels with the classification."""
    exc = _status_error(openai.RateLimitError, 429, {"code": "rate_limit_exceeded"}, {"retry-after": "17"})
    assert classifier.classify_exception(exc).retry_after_s == 17.0


@pytest.mark.parametrize(
    ("faults", "expected"),
    [
        ([Fault.http(429, retry_after=3, code="rate_limit_exceeded")], "rate_limit"),
        ([Fault.http(429, code="insufficient_quota")], "fatal"),
        ([Fault.http(503)], "transient"),
        ([Fault.http(401, code="invalid_api_key")], "auth"),
        ([Fault.http(400, code="context_length_exceeded")], "permanent"),
        ([Fault.reset()], "transient"),
        ([Fault.hang(5)], "timeout"),
        ([Fault.malformed()], "format"),
    ],
)
def test_real_openai_client_failures(faults: list[Fault], expected: str, config: Config) -> None:
    """What the real openai client raises against a real server classifies as a user would expect."""
    with FakeModelServer() as server:
        server.script("ep", *faults)
        client = openai.OpenAI(base_url=server.url("ep"), api_key="sk-test", max_retries=0, timeout=0.5)
        with pytest.raises(Exception) as info:
            client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
        client.close()
    assert classify_error(info.value, settings=config.classify).error_class == expected


_TORCH_OOM = (
    "CUDA out of memory. Tried to allocate 8.00 GiB (GPU 0; 23.65 GiB total capacity; 20.10 GiB already allocated)"
)


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        # torch, behind a server that turns exceptions into OpenAI-style 500s
        (Fault.http(500, message=_TORCH_OOM), ("resource", "out_of_memory")),
        (Fault.http(500, message="RuntimeError: CUDA error: out of memory"), ("resource", "out_of_memory")),
        (Fault.http(500, message="torch.OutOfMemoryError: allocation failed"), ("resource", "out_of_memory")),
        # llama.cpp's server
        (
            Fault.raw(
                500, {"error": {"code": 500, "message": "failed to allocate compute buffers", "type": "server_error"}}
            ),
            ("resource", "out_of_memory"),
        ),
        (
            Fault.raw(
                500, {"error": {"code": 500, "message": "cudaMalloc failed: out of memory", "type": "server_error"}}
            ),
            ("resource", "out_of_memory"),
        ),
        (
            Fault.raw(503, {"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}}),
            ("resource", "model_loading"),
        ),
        # Ollama: {"error": "<text>"}
        (
            Fault.raw(500, {"error": "model requires more system memory (8.0 GiB) than is available (4.1 GiB)"}),
            ("resource", "out_of_memory"),
        ),
        (
            Fault.raw(500, {"error": "llama runner process has terminated: cudaMalloc failed: out of memory"}),
            ("resource", "out_of_memory"),
        ),
        # vLLM: {"object": "error", "message": ..., "type": ..., "code": ...}
        (
            Fault.raw(
                500,
                {"object": "error", "message": _TORCH_OOM, "type": "InternalServerError", "param": None, "code": 500},
            ),
            ("resource", "out_of_memory"),
        ),
        # Hugging Face style, and a plain-text body
        (
            Fault.raw(503, {"error": "Model org/tiny is currently loading", "estimated_time": 20.0}),
            ("resource", "model_loading"),
        ),
        (Fault.raw(500, "out of memory", headers={"content-type": "text/plain"}), ("resource", "out_of_memory")),
        # FastAPI's {"detail": ...}, or any key but error/message: the whole body is read
        (Fault.raw(500, {"detail": _TORCH_OOM}), ("resource", "out_of_memory")),
        (Fault.raw(500, {"status": "failed", "why": {"text": "model is loading"}}), ("resource", "model_loading")),
        # ...and a plain server error stays what its status says
        (Fault.raw(500, {"error": "Internal Server Error"}), ("transient", "transient")),
        (Fault.http(503, message="Service Unavailable"), ("transient", "transient")),
    ],
    ids=lambda v: "" if isinstance(v, tuple) else None,
)
def test_local_model_servers_out_of_memory_and_loading(fault: Fault, expected: tuple[str, str], config: Config) -> None:
    """A local server's out-of-memory answer is `resource` whatever its status (retrying at once cannot free
    memory), a model still loading is `resource` too (waited for), through the real openai client."""
    with FakeModelServer() as server:
        server.script("ep", fault)
        client = openai.OpenAI(base_url=server.url("ep"), api_key="sk-test", max_retries=0, timeout=2)
        with pytest.raises(openai.APIStatusError) as info:
            client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
        client.close()
    result = classify_error(info.value, settings=config.classify)
    assert (result.error_class, result.reason) == expected


def test_connection_refused_from_the_real_client(config: Config) -> None:
    """A dead endpoint (nothing listening) is transient."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-test", max_retries=0, timeout=2)
    with pytest.raises(openai.APIConnectionError) as info:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert classify_error(info.value, settings=config.classify).error_class == "transient"


class _StatusHandler(http.server.BaseHTTPRequestHandler):
    """Answers GET /<status> with that status and `Retry-After: 7`."""

    def do_GET(self) -> None:
        self.send_response(int(self.path.strip("/")))
        self.send_header("Retry-After", "7")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize(
    ("status", "expected"),
    [(429, "rate_limit"), (403, "auth"), (409, "transient"), (503, "transient"), (404, "permanent")],
)
def test_the_standard_librarys_http_errors_are_read_by_status_and_headers(
    config: Config, status: int, expected: str
) -> None:
    """urllib's HTTPError from a real server classifies by its status, as DESIGN's table says (a 403 is auth, a
    409 transient), and its Retry-After sets the wait."""
    server = http.server.HTTPServer(("127.0.0.1", 0), _StatusHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(f"http://127.0.0.1:{server.server_port}/{status}", timeout=5)
    finally:
        server.shutdown()
        server.server_close()
    info.value.close()
    result = classify_error(info.value, settings=config.classify)
    assert (result.error_class, result.retry_after_s) == (expected, 7.0)


@pytest.mark.parametrize(
    ("exit_code", "stderr", "expected"),
    [
        (1, "curl: (7) Failed to connect to host port 8000: Connection refused", "transient"),
        (1, "Error: 503 Service Unavailable", "transient"),
        (1, "HTTP/1.1 429 Too Many Requests", "rate_limit"),
        (1, "openai.RateLimitError: Error code: 429 - {'error': {'code': 'insufficient_quota'}}", "fatal"),
        (1, "Error: Incorrect API key provided: sk-abc***", "auth"),
        (1, "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 MiB", "resource"),
        (1, "OSError: [Errno 28] No space left on device", "resource"),
        (1, "requests.exceptions.ReadTimeout: HTTPSConnectionPool read timed out.", "timeout"),
        (1, "  File \"job.py\", line 3\n    def x(\n         ^\nSyntaxError: '(' was never closed", "permanent"),
        (1, "json.decoder.JSONDecodeError: Expecting value: line 1 column 1 (char 0)", "format"),
        (1, "something went wrong", "unknown"),
        (124, "", "timeout"),
        (127, "sh: 1: nosuchcmd: not found", "permanent"),
        (126, "permission denied", "permanent"),
        (75, "", "transient"),
        (64, "usage: tool [-h]", "permanent"),
        (-9, "", "resource"),
        (-11, "", "fatal"),
    ],
)
def test_commands(classifier: Classifier, exit_code: int, stderr: str, expected: str) -> None:
    """A command's exit code, signal and output tail decide its class."""
    failure = Failure.from_command(exit_code=exit_code, stderr_tail=stderr)
    assert classifier.classify(failure).error_class == expected


@pytest.mark.parametrize(
    ("stderr", "expected"),
    [
        ("urllib.error.HTTPError: HTTP Error 404: Not Found", "permanent"),
        ("curl: (22) The requested URL returned error: 404 Not Found", "permanent"),
        ("requests.exceptions.HTTPError: 500 Server Error: Internal Server Error for url: http://api/x", "transient"),
        ("Error: 500 Internal Server Error", "transient"),
        ("fetch failed: network error", "transient"),
        ("pydantic_core._pydantic_core.ValidationError: 1 validation error for Report", "permanent"),
        ("Error code: 400 - {'error': {'message': \"Unsupported parameter: 'max_tokens'\"}}", "permanent"),
        ("bash: /data/report.md: Permission denied", "permanent"),
        ("script.sh: line 3: syntax error near unexpected token `fi'", "permanent"),
    ],
)
def test_the_documents_phrases_in_command_output(classifier: Classifier, stderr: str, expected: str) -> None:
    """The second and third documents' error phrases, printed by a failed command, get the documents'
    classes instead of `unknown`: a 404, a validation error, an unsupported parameter, permission denied
    and a syntax error are never retried; a 500 and a network error are."""
    result = classifier.classify(Failure.from_command(exit_code=1, stderr_tail=stderr))
    assert result.error_class == expected


@pytest.mark.parametrize(
    ("exit_code", "stderr", "expected"),
    [
        (6, "curl: (6) Could not resolve host: api.example.com", "transient"),
        (255, "ssh: Could not resolve hostname backup.lan: Name or service not known", "transient"),
        (
            1,
            "npm ERR! code EAI_AGAIN\nnpm ERR! errno EAI_AGAIN\nnpm ERR! request to https://registry.npmjs.org/x",
            "transient",
        ),
        (1, "npm error code ENOTFOUND\nnpm error syscall getaddrinfo", "transient"),
        (7, "curl: (7) Failed to connect to 10.0.0.5 port 443 after 3 ms: Couldn't connect to server", "transient"),
        (255, "ssh: connect to host 10.0.0.9 port 22: No route to host", "transient"),
        (52, "curl: (52) Empty reply from server", "transient"),
        (128, "fatal: the remote end hung up unexpectedly", "transient"),
        (22, "curl: (22) The requested URL returned error: 500", "transient"),
        (22, "curl: (22) The requested URL returned error: 503", "transient"),
        (22, "curl: (22) The requested URL returned error: 401", "auth"),
        (22, "curl: (22) The requested URL returned error: 403", "auth"),
        (22, "curl: (22) The requested URL returned error: 429", "rate_limit"),
        (22, "curl: (22) The requested URL returned error: 400", "permanent"),
        (22, "curl: (22) The requested URL returned error: 422", "permanent"),
        (255, "Host key verification failed.", "permanent"),
        (
            254,
            "An error occurred (ThrottlingException) when calling the PutItem operation: Rate exceeded",
            "rate_limit",
        ),
        (1, "upload failed: An error occurred (SlowDown) when calling the PutObject operation", "rate_limit"),
        (1, "the nightly slowdown report is ready; step 3 failed", "unknown"),
    ],
)
def test_what_real_tools_print_when_they_fail(
    classifier: Classifier, exit_code: int, stderr: str, expected: str
) -> None:
    """curl, ssh, git, npm and the AWS CLI, as a cron job's output shows them: a name that did not resolve, a
    dropped connection or a 5xx is worth retrying; a refused key is auth; throttling waits as a rate limit; a
    4xx or an unknown host key is never retried. They were all `unknown` (one retry, whatever they said)."""
    assert classifier.classify(Failure.from_command(exit_code=exit_code, stderr_tail=stderr)).error_class == expected


def test_python_traceback_in_output_classifies_by_its_exception(classifier: Classifier) -> None:
    """A script that died with a traceback is classified by the exception that ended it."""
    tail = (
        "Traceback (most recent call last):\n"
        '  File "job.py", line 9, in <module>\n'
        "    fetch()\n"
        "ConnectionRefusedError: [Errno 111] Refused\n"
    )
    result = classifier.classify(Failure.from_command(exit_code=1, stderr_tail=tail))
    assert (result.error_class, result.rule) == ("transient", "connection-exception")


def test_traceback_parser_finds_chained_exceptions_last_first() -> None:
    """Chained tracebacks: every ending exception, the final one first."""
    text = (
        "Traceback (most recent call last):\n  File \"a\", line 1\nKeyError: 'x'\n\n"
        "During handling of the above exception, another exception occurred:\n\n"
        'Traceback (most recent call last):\n  File "b", line 2\nopenai.APITimeoutError: Request timed out.\n'
    )
    assert traceback_exception_types(text) == ("openai.APITimeoutError", "KeyError")


def test_our_own_timeout_wins_over_the_output(classifier: Classifier) -> None:
    """A command we killed at its timeout is a timeout, whatever it printed."""
    failure = Failure.from_command(exit_code=-15, stderr_tail="SyntaxError", timed_out=True)
    assert classifier.classify(failure).error_class == "timeout"


def test_command_printing_retry_after_passes_it_on(classifier: Classifier) -> None:
    """`curl -i` output with a Retry-After header sets the minimum wait."""
    failure = Failure.from_command(exit_code=22, stdout_tail="HTTP/1.1 429 Too Many Requests\r\nRetry-After: 30\r\n")
    result = classifier.classify(failure)
    assert (result.error_class, result.retry_after_s) == ("rate_limit", 30.0)


def test_unmatched_failures_are_unknown_and_marked_unclassified(classifier: Classifier) -> None:
    """No rule: class unknown, flagged so the analysis can suggest a rule."""
    result = classifier.classify(Failure.from_command(exit_code=3, stderr_tail="weird"))
    assert result.error_class == "unknown" and result.unclassified


def test_http_answers_directly(classifier: Classifier) -> None:
    """A raw HTTP status with headers and body classifies like the client's exception would."""
    failure = Failure.from_http(429, {"Retry-After": "4"}, b'{"error": {"code": "insufficient_quota"}}')
    result = classifier.classify(failure)
    assert (result.error_class, result.retry_after_s) == ("fatal", 4.0)


def test_user_rules_come_first(write_config: Callable[[str], Path]) -> None:
    """A user's extra rule overrides the shipped ones for what it matches."""
    write_config("""
        classify:
          extra_rules:
            - {name: flaky-vendor, class: transient, exit_code: [3], pattern: "vendor busy"}
    """)
    classifier = Classifier(load_config().classify)
    assert classifier.classify(Failure.from_command(exit_code=3, stderr_tail="vendor busy")).error_class == "transient"
    assert classifier.classify(Failure.from_command(exit_code=3, stderr_tail="other")).error_class == "unknown"


def test_summary_prefers_the_last_stderr_line() -> None:
    """The one-line reason is the command's last stderr line, not whatever it printed to stdout."""
    failure = Failure.from_command(exit_code=1, stderr_tail="warming up\nfatal: db gone\n", stdout_tail="progress 99%")
    assert failure.summary() == "exit 1: fatal: db gone"


def test_broken_str_does_not_hide_the_failure(classifier: Classifier) -> None:
    """An exception whose __str__ raises is still classified."""

    class Weird(ConnectionError):
        def __str__(self) -> str:
            raise RuntimeError("no")

    assert classifier.classify_exception(Weird()).error_class == "transient"


def test_an_exception_whose_str_and_repr_both_raise_is_still_classified(classifier: Classifier) -> None:
    """The fallback for a broken __str__ was repr(), which raised too: classify_error() raised the repr's
    RuntimeError, and a retried function's own error was replaced by it."""

    class Opaque(ConnectionError):
        def __str__(self) -> str:
            raise RuntimeError("no str")

        def __repr__(self) -> str:
            raise RuntimeError("no repr")

    failure = Failure.from_exception(Opaque())
    assert classifier.classify(failure).error_class == "transient"
    assert "Opaque" in failure.summary()


async def _fail(error: Exception) -> None:
    raise error


async def _fail_in_a_task_group(*errors: Exception) -> None:
    async with asyncio.TaskGroup() as group:
        for error in errors:
            group.create_task(_fail(error))


def _task_group_error(*errors: Exception, nested: bool = False) -> BaseException:
    """What `async with asyncio.TaskGroup()` raises when its tasks fail with `errors` (in a second TaskGroup
    around it, if `nested`)."""

    async def outer() -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(_fail_in_a_task_group(*errors))

    try:
        asyncio.run(outer() if nested else _fail_in_a_task_group(*errors))
    except Exception as exc:
        return exc
    raise AssertionError("the task group did not fail")


needs_task_groups = pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.TaskGroup is Python 3.11's")


@needs_task_groups
@pytest.mark.parametrize(
    ("errors", "expected"),
    [
        ((ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"),), "transient"),
        ((TimeoutError("read timed out"),), "timeout"),
        ((KeyError("date"),), "permanent"),
        # Two different failures at once: no one member speaks for the group; it stays unknown (one retry).
        ((ConnectionResetError(errno.ECONNRESET, "reset"), KeyError("date")), "unknown"),
    ],
)
def test_a_task_group_that_failed_with_one_error_is_classified_as_that_error(
    classifier: Classifier, errors: tuple[Exception, ...], expected: str
) -> None:
    """A TaskGroup wraps its one failure in an ExceptionGroup: a reset read as `unknown` (retried once, marked
    unclassified) and a KeyError bug was retried as if it might pass."""
    group = _task_group_error(*errors)
    assert type(group).__name__ == "ExceptionGroup"
    assert classifier.classify_exception(group).error_class == expected


@needs_task_groups
def test_a_group_nested_in_a_group_is_read_down_to_its_one_error(classifier: Classifier) -> None:
    """A TaskGroup inside a TaskGroup nests the groups; the one error at the bottom still decides."""
    group = _task_group_error(ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"), nested=True)
    assert classifier.classify_exception(group).error_class == "transient"


_APP_ERROR_TRACE = (
    "Traceback (most recent call last):\n"
    '  File "/app/report.py", line {line}, in <module>\n'
    "    main()\n"
    '  File "/app/report.py", line 88, in main\n'
    "    rows = fetch(url, timeout=30)\n"
    "           ^^^^^^^^^^^^^^^^^^^^^^\n"
    "report.ReportError: column 'date' missing in sheet\n"
)


@pytest.mark.parametrize("line", [429, 503, 7])
def test_traceback_frames_are_not_read_as_the_error(classifier: Classifier, line: int) -> None:
    """A bug in a long script is not a rate limit, an outage or a timeout because a frame says `line 429`,
    `line 503` or `timeout=30`: only the exception line is evidence."""
    failure = Failure.from_command(exit_code=1, stderr_tail=_APP_ERROR_TRACE.format(line=line))
    assert classifier.classify(failure).error_class == "unknown"


def test_the_exception_line_under_frames_is_still_read(classifier: Classifier) -> None:
    """Dropping the frames keeps what the exception itself says."""
    tail = _APP_ERROR_TRACE.format(line=1).replace(
        "report.ReportError: column 'date' missing in sheet", "report.FetchError: 429 Too Many Requests"
    )
    assert classifier.classify(Failure.from_command(exit_code=1, stderr_tail=tail)).error_class == "rate_limit"


@pytest.mark.parametrize(
    ("exit_code", "expected", "summary"),
    [
        (137, "resource", "exit 137 (killed by SIGKILL)"),  # a shell or `docker run` whose command the OOM killer took
        (139, "fatal", "exit 139 (killed by SIGSEGV)"),
        (255, "unknown", "exit 255"),  # 128 + 127 is no signal: an ordinary exit code
    ],
)
def test_a_shells_128_plus_signal_exit_code_reads_as_that_signal(
    classifier: Classifier, exit_code: int, expected: str, summary: str
) -> None:
    """Exit 137 from a wrapper (`sh -c '...; ...'`, `docker run`) is the SIGKILL of an out-of-memory kill, as
    DESIGN's resource class says, not an unknown failure retried after a second."""
    failure = Failure.from_command(exit_code=exit_code)
    assert classifier.classify(failure).error_class == expected
    assert failure.summary() == summary
