"""The one nvidia-smi reader (selfheal.models.gpu): what it makes of what nvidia-smi prints, and how a run of it is
bounded. The health check's GPU line and the model chain's memory check read through it, so they agree on every
answer. Real processes: a stand-in `nvidia-smi` shell script first on PATH."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest
from helpers.nvidia import alive, fake_smi

from selfheal.models import gpu
from selfheal.models.gpu import GpuReading
from selfheal.observe import health
from selfheal.observe.health import OK, SKIP, WARN


def gone_soon(pid: int, within_s: float = 3.0) -> bool:
    deadline = time.monotonic() + within_s
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    return not alive(pid)


A, B = "GPU-5c8d8f3e-1111-2222-3333-444455556666", "GPU-0a1b2c3d-7777-8888-9999-000011112222"


@pytest.mark.parametrize(
    ("printed", "gpus"),
    [
        (f"0, {A}, 24000, 81920\n1, {B}, 512, 81920\n", (GpuReading(0, A, 24000, 81920), GpuReading(1, B, 512, 81920))),
        (f"0, {A}, [N/A], [N/A]\n", ()),
        (f"0, {A}, [Not Supported], 81920\n1, {B}, 2048, [N/A]\n", (GpuReading(1, B, 2048, None),)),
        (f"0, {A}, [N/A], 81920\n", ()),  # a total alone is no free memory (the last column is not the free one)
        (f"²³, {A}, 24000, 81920\n0, {B}, ², 81920\n", ()),  # str.isdigit() takes these; int() does not
        ("\x00\xff garbage \x1b[31m\nNo devices were found\n", ()),
        ("", ()),
        ("24000\n", ()),  # a line that is not the row asked for: which GPU would it be?
        (f"0, {A}, 24000, 81920, 7\n", ()),
        (f"0, {A}, 24000\n", (GpuReading(0, A, 24000, None),)),  # selfheal.testing's FakeNvidiaSmi prints three
    ],
)  # fmt: skip
def test_the_health_check_and_the_model_chain_read_the_same_gpus(
    smi_dir: Path, tmp_path: Path, printed: str, gpus: tuple[GpuReading, ...]
) -> None:
    """Each used to run and parse nvidia-smi its own way: the model chain took a row's last number as the free
    memory (the total, once the total is asked for), the health check crashed on a `²` that str.isdigit() passed.
    Now both read the same rows, and a row that is not one GPU's figures is skipped by both."""
    (tmp_path / "out.txt").write_bytes(printed.encode("utf-8", "surrogateescape"))
    fake_smi(smi_dir, f"cat {tmp_path / 'out.txt'}")
    assert gpu.query().gpus == gpus
    assert asyncio.run(gpu.read_all(fresh=True)) == (gpus or None)
    check = health.check_gpu(1024, os.environ)
    if gpus:
        assert check.status == OK and check.data["gpus"] == [g._asdict() for g in gpus]
    else:
        said = f"nvidia-smi printed no memory figures: {printed.strip()[:100]!r}"
        assert (check.status, check.detail) == (WARN, said)


def test_without_nvidia_smi_there_is_no_reading_and_the_health_check_skips(tmp_path: Path) -> None:
    """No nvidia-smi on PATH, or a file of that name that cannot be run: no GPU here, said the same way."""
    env = {"PATH": str(tmp_path)}
    assert gpu.query(env=env) == gpu.Answer(None, (), "no nvidia-smi on PATH")
    (tmp_path / "nvidia-smi").write_text("#!/bin/sh\necho '0, GPU-a, 24000, 81920'\n")
    assert gpu.query(env=env).tool is None
    assert health.check_gpu(1024, env) == health.Check("gpu", SKIP, "no nvidia-smi on PATH", {})


def test_a_wrappers_child_holding_the_pipe_does_not_hide_the_reading_and_is_stopped(
    smi_dir: Path, tmp_path: Path
) -> None:
    """nvidia-smi printed its answer and exited, but a child it left holds stdout: the model chain waited for the
    pipe to close until its time was up (3 s here, 5 s by default) and then knew nothing. The answer is read when
    nvidia-smi exits, and the child is stopped with it."""
    pidfile = tmp_path / "child.pid"
    fake_smi(smi_dir, f"sleep 30 &\necho $! > {pidfile}\necho '0, GPU-a, 24000, 81920'")
    started = time.monotonic()
    assert asyncio.run(gpu.free_mb(0, fresh=True, timeout_s=3.0)) == 24000
    assert time.monotonic() - started < 1.5
    assert gone_soon(int(pidfile.read_text()))


def test_a_hanging_nvidia_smi_is_killed_with_its_group_at_the_bound(smi_dir: Path, tmp_path: Path) -> None:
    """Stuck (a GPU fallen off the bus): no reading, said as such, within the bound, and nothing of it left."""
    pidfile = tmp_path / "child.pid"
    fake_smi(smi_dir, f"sleep 30 &\necho $! > {pidfile}\nwait")
    started = time.monotonic()
    answer = gpu.query(timeout_s=0.5)
    assert (answer.gpus, answer.problem, answer.timed_out) == ((), "nvidia-smi did not answer within 0.5 s", True)
    assert time.monotonic() - started < 2.0
    assert gone_soon(int(pidfile.read_text()))


def test_a_cancelled_reading_stops_nvidia_smi(smi_dir: Path, tmp_path: Path) -> None:
    """The model chain's call cancelled while nvidia-smi runs (the reading is in a thread): nvidia-smi and what
    it started are stopped then, not at the end of the reading's own bound."""
    pidfile = tmp_path / "child.pid"
    fake_smi(smi_dir, f"sleep 30 &\necho $! > {pidfile}\nwait")

    async def cancel_midway() -> None:
        reading = asyncio.ensure_future(gpu.read_all(fresh=True))
        while not pidfile.exists() or not pidfile.read_text().strip():
            await asyncio.sleep(0.01)
        reading.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reading

    started = time.monotonic()
    asyncio.run(cancel_midway())
    assert gone_soon(int(pidfile.read_text()), within_s=1.0)
    assert time.monotonic() - started < 2.5  # the reading's own bound is 5 s


def test_endless_output_is_read_no_further_than_the_cap(smi_dir: Path) -> None:
    """A wrapper printing without end: stopped at the cap (not held whole, not run to the bound), and said."""
    fake_smi(smi_dir, "exec yes '0, GPU-x, 24000, 81920'")
    started = time.monotonic()
    answer = gpu.query()
    said = f"nvidia-smi printed over {gpu.MAX_OUTPUT_BYTES} bytes: not a reading of GPUs"
    assert (answer.gpus, answer.problem) == ((), said)
    assert time.monotonic() - started < 2.0
