"""The onnxruntime edge, against the models bundled in ``models/``."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import shutil
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

from mesh.config import RuntimeConfig
from mesh.errors import (
    ConfigError,
    InferenceFailed,
    InvalidInput,
    ModelError,
    ModelIntegrityError,
    ModelNotFound,
)
from mesh.runtime.runtime import UNLISTED_VERSION, Runtime
from tests.helpers import MODELS_DIR

BUNDLED = ("cnn-heavy", "digits-large", "digits-small")


@pytest.fixture(scope="module")
def manifest() -> dict[str, Any]:
    with (MODELS_DIR / "manifest.toml").open("rb") as fh:
        return tomllib.load(fh)


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    with np.load(MODELS_DIR / "digits-test.npz") as data:
        return data["X"], data["y"]


def _config(*dirs: Path, **kwargs: Any) -> RuntimeConfig:
    return RuntimeConfig(model_dirs=dirs or (MODELS_DIR,), **kwargs)


@pytest.fixture
def runtime() -> Iterator[Runtime]:
    # Function scope: tests swap sessions for fakes.
    with Runtime(_config(model_names=("digits-small", "digits-large"))) as rt:
        yield rt


def _x(rows: int = 1) -> np.ndarray[Any, Any]:
    return np.zeros((rows, 64), dtype=np.float32)


# --- loading the bundled models --------------------------------------------------


def test_loads_every_bundled_model_as_the_manifest_says(manifest: dict[str, Any]) -> None:
    with Runtime(_config()) as rt:
        assert rt.names == BUNDLED
        assert [s.name for s in rt.specs()] == list(BUNDLED)
        for name in BUNDLED:
            declared = manifest["models"][name]
            spec = rt.spec(name)
            assert name in rt
            assert spec.source == "manifest"
            assert spec.version == declared["version"]
            assert spec.sha256 == declared["sha256"]
            assert spec.description == declared["description"]
            assert spec.accuracy == declared.get("accuracy")
            assert spec.compute_only == declared.get("compute_only", False)
            wire = spec.to_wire()
            assert wire["inputs"] == declared["inputs"]
            assert wire["outputs"] == declared["outputs"]


def test_cnn_heavy_runs() -> None:
    with Runtime(_config(model_names=("cnn-heavy",))) as rt:
        image = np.random.default_rng(0).random((2, 3, 64, 64), dtype=np.float32)
        out = asyncio.run(rt.infer("cnn-heavy", {"image": image}))
    assert out["label"].shape == (2,)
    assert out["probabilities"].shape == (2, 10)


@pytest.mark.parametrize("model", ["digits-small", "digits-large"])
async def test_accuracy_on_held_out_split_matches_manifest(
    runtime: Runtime,
    manifest: dict[str, Any],
    digits: tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]],
    model: str,
) -> None:
    x, y = digits
    out = await runtime.infer(model, {"X": x})
    assert set(out) == {"label", "probabilities"}
    assert all(isinstance(v, np.ndarray) for v in out.values())
    labels, probs = out["label"], out["probabilities"]
    assert labels.dtype == np.int64
    assert labels.shape == y.shape
    assert probs.dtype == np.float32
    assert probs.shape == (len(y), 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-4)
    np.testing.assert_array_equal(labels, probs.argmax(axis=1))
    expected = manifest["models"][model]["accuracy"]
    assert int((labels == y).sum()) == round(expected * len(y))
    assert float(np.mean(labels == y)) == pytest.approx(expected, abs=1e-12)


async def test_read_only_and_non_contiguous_inputs(
    runtime: Runtime, digits: tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]
) -> None:
    x = digits[0][:20]
    reference = await runtime.infer("digits-small", {"X": x.copy()})
    read_only = np.frombuffer(x.tobytes(), dtype=np.float32).reshape(x.shape)
    assert not read_only.flags.writeable
    out = await runtime.infer("digits-small", {"X": read_only})
    np.testing.assert_array_equal(out["label"], reference["label"])
    strided = np.asfortranarray(x)
    out = await runtime.infer("digits-small", {"X": strided})
    np.testing.assert_array_equal(out["label"], reference["label"])
    assert out["probabilities"].flags.writeable


async def test_empty_batch(runtime: Runtime) -> None:
    out = await runtime.infer("digits-small", {"X": _x(0)})
    assert out["label"].shape == (0,)
    assert out["probabilities"].shape == (0, 10)


# --- errors for bad requests --------------------------------------------------------


@pytest.mark.parametrize(
    ("inputs", "fragment"),
    [
        (
            {"X": np.zeros((1, 64), np.float64)},
            "input 'X' of model 'digits-small': expected dtype float32, got float64",
        ),
        ({"X": _x(1)[:, :63]}, "expected shape [-1, 64], got [1, 63]"),
        ({"X": np.zeros(64, np.float32)}, "expected 2 dimension(s)"),
        ({"x": _x(1)}, "missing input(s) 'X'; unexpected input(s) 'x'"),
        ({"X": np.zeros((1, 64), ">f4")}, "non-native byte order"),
    ],
)
async def test_invalid_input(runtime: Runtime, inputs: dict[str, Any], fragment: str) -> None:
    with pytest.raises(InvalidInput) as info:
        await runtime.infer("digits-small", inputs)
    assert fragment in info.value.message


async def test_model_not_found(runtime: Runtime) -> None:
    with pytest.raises(ModelNotFound, match=r"'nope'.*'digits-large', 'digits-small'"):
        await runtime.infer("nope", {"X": _x()})
    with pytest.raises(ModelNotFound, match="available models"):
        runtime.spec("cnn-heavy")  # filtered out by model_names
    assert "cnn-heavy" not in runtime


class _Activity:
    """Runs seen by the fake sessions that share it, whichever model or thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.active = 0
        self.max_active = 0
        self.order: list[str] = []
        self.threads: set[int] = set()


class _FakeSession:
    """Stands in for an InferenceSession to observe or break the thread side."""

    def __init__(
        self,
        real: Any,
        *,
        name: str = "",
        delay: float = 0.0,
        gate: threading.Event | None = None,
        error: Exception | Callable[[Any], Exception | None] | None = None,
        activity: _Activity | None = None,
    ) -> None:
        self._real = real
        self._name = name
        self._delay = delay
        self._gate = gate
        self._error = error
        self._ran = threading.Condition()
        self.activity = activity or _Activity()
        self.started = threading.Event()
        self.active = 0
        self.max_active = 0
        self.calls = 0
        self.options: list[Any] = []

    def run(self, names: Any, feeds: Any, options: Any = None) -> Any:
        with self._ran:
            self.calls += 1
            self.active += 1
            self.max_active = max(self.max_active, self.active)
            self.options.append(options)
            self._ran.notify_all()
        act = self.activity
        with act.lock:
            act.active += 1
            act.max_active = max(act.max_active, act.active)
            act.order.append(self._name)
            act.threads.add(threading.get_ident())
        self.started.set()
        try:
            if self._gate is not None:
                assert self._gate.wait(timeout=30)
            if self._delay:
                time.sleep(self._delay)
            error = self._error(feeds) if callable(self._error) else self._error
            if error is not None:
                raise error
            return self._real.run(names, feeds, options)
        finally:
            with act.lock:
                act.active -= 1
            with self._ran:
                self.active -= 1

    def wait_for_calls(self, count: int) -> bool:
        """Block until ``count`` runs have started; False after 30 s."""
        with self._ran:
            return self._ran.wait_for(lambda: self.calls >= count, timeout=30)


def _fake(rt: Runtime, model: str, **kwargs: Any) -> _FakeSession:
    loaded = rt._resolve(model, None)
    fake = _FakeSession(loaded.session, name=model, **kwargs)
    loaded.session = fake
    return fake


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (
            ort_state.InvalidArgument("[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : bad"),
            InvalidInput,
        ),
        (ort_state.Fail("[ONNXRuntimeError] : 1 : FAIL : boom"), InferenceFailed),
        (ort_state.RuntimeException("oops"), InferenceFailed),
    ],
)
async def test_onnxruntime_errors_are_mapped(
    runtime: Runtime, error: Exception, expected: type[ModelError]
) -> None:
    _fake(runtime, "digits-small", error=error)
    with pytest.raises(expected) as info:
        await runtime.infer("digits-small", {"X": _x()})
    assert "model 'digits-small'" in info.value.message
    assert "[ONNXRuntimeError]" not in info.value.message
    assert info.value.__cause__ is error


async def test_gathered_calls_fail_or_succeed_each_on_its_own(runtime: Runtime) -> None:
    def error_for(feeds: Any) -> Exception | None:
        mark = feeds["X"][0, 0]
        if mark == 1:
            rejected: Exception = ort_state.InvalidArgument(
                "[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : bad"
            )
            return rejected
        if mark == 2:
            return KeyError("a bug in the session")  # not onnxruntime's: passed on as it is
        return None

    _fake(runtime, "digits-small", error=error_for)
    marks = [i % 3 for i in range(90)]
    results = await asyncio.gather(
        *(runtime.infer("digits-small", {"X": _x() + m}) for m in marks),
        return_exceptions=True,
    )
    for mark, result in zip(marks, results, strict=True):
        if mark == 0:
            assert isinstance(result, dict)
            assert result["label"].shape == (1,)
        elif mark == 1:
            assert isinstance(result, InvalidInput)
            assert "model 'digits-small' rejected its inputs: bad" in result.message
        else:
            assert type(result) is KeyError
    # No failure kept a slot: the model still serves.
    out = await runtime.infer("digits-small", {"X": _x()})
    assert out["label"].shape == (1,)


# --- concurrency ------------------------------------------------------------------


async def test_thousands_of_gathered_calls_get_their_own_outputs(
    digits: tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]],
) -> None:
    x = digits[0]
    models = ("digits-small", "digits-large")
    config = _config(model_names=models, per_model_concurrency=2, executor_threads=2)
    async with Runtime(config) as rt:
        expected = {m: (await rt.infer(m, {"X": x}))["probabilities"] for m in models}
        activity = _Activity()
        for model in models:
            _fake(rt, model, activity=activity)
        calls = [(models[i % 2], (i * 7) % len(x)) for i in range(3000)]
        results = await asyncio.gather(
            *(rt.infer(model, {"X": x[row : row + 1]}) for model, row in calls)
        )
    for (model, row), out in zip(calls, results, strict=True):
        # Batched kernels round differently from one-row ones; another row's
        # answer would be far off.
        np.testing.assert_allclose(out["probabilities"][0], expected[model][row], atol=1e-5)
    assert len(activity.order) == len(calls)
    # Never on the event loop's thread, and on no more threads than configured.
    assert threading.get_ident() not in activity.threads
    assert 1 <= len(activity.threads) <= 2


async def test_many_concurrent_calls_respect_the_per_model_limit(
    digits: tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]],
) -> None:
    x = digits[0]
    config = _config(model_names=("digits-small",), per_model_concurrency=2, executor_threads=8)
    async with Runtime(config) as rt:
        fake = _fake(rt, "digits-small", delay=0.005)
        results = await asyncio.gather(
            *(rt.infer("digits-small", {"X": x[i : i + 1]}) for i in range(50))
        )
        single = await rt.infer("digits-small", {"X": x[:50]})
    assert fake.calls == 51
    assert 1 <= fake.max_active <= 2
    np.testing.assert_array_equal(np.concatenate([r["label"] for r in results]), single["label"])


async def test_executor_threads_bound_all_models_together() -> None:
    config = _config(per_model_concurrency=4, executor_threads=2)
    async with Runtime(config) as rt:
        activity = _Activity()
        small = _fake(rt, "digits-small", delay=0.002, activity=activity)
        large = _fake(rt, "digits-large", delay=0.002, activity=activity)
        await asyncio.gather(
            *(rt.infer(("digits-small", "digits-large")[i % 2], {"X": _x()}) for i in range(40))
        )
    assert small.calls == large.calls == 20
    assert 1 <= activity.max_active <= 2
    assert len(activity.threads) <= 2


async def test_a_busy_model_does_not_starve_another() -> None:
    # One thread for two models: a worker with a backlog hands the thread to
    # the other model's call after each call instead of draining its queue.
    config = _config(per_model_concurrency=1, executor_threads=1)
    async with Runtime(config) as rt:
        gate = threading.Event()
        activity = _Activity()
        small = _fake(rt, "digits-small", gate=gate, activity=activity)
        _fake(rt, "digits-large", activity=activity)
        backlog = [asyncio.create_task(rt.infer("digits-small", {"X": _x()})) for _ in range(5)]
        assert await asyncio.to_thread(small.started.wait, 30)
        other = asyncio.create_task(rt.infer("digits-large", {"X": _x()}))
        await asyncio.sleep(0)  # its call is queued
        gate.set()
        await asyncio.gather(*backlog, other)
    assert activity.order == ["digits-small", "digits-large"] + ["digits-small"] * 4


async def test_models_do_not_share_a_limit() -> None:
    config = _config(per_model_concurrency=1, executor_threads=4)
    async with Runtime(config) as rt:
        gate = threading.Event()
        small = _fake(rt, "digits-small", gate=gate)
        large = _fake(rt, "digits-large", gate=gate)
        tasks = [
            asyncio.create_task(rt.infer("digits-small", {"X": _x()})),
            asyncio.create_task(rt.infer("digits-large", {"X": _x()})),
        ]
        # Both models are running at once although each allows only one call.
        assert await asyncio.to_thread(small.started.wait, 30)
        assert await asyncio.to_thread(large.started.wait, 30)
        gate.set()
        await asyncio.gather(*tasks)


async def test_cancelled_call_keeps_its_slot_until_the_thread_is_done() -> None:
    config = _config(model_names=("digits-small",), per_model_concurrency=1)
    async with Runtime(config) as rt:
        gate = threading.Event()
        fake = _fake(rt, "digits-small", gate=gate)
        first = asyncio.create_task(rt.infer("digits-small", {"X": _x()}))
        assert await asyncio.to_thread(fake.started.wait, 30)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        second = asyncio.create_task(rt.infer("digits-small", {"X": _x()}))
        await asyncio.sleep(0.05)
        # The first call's thread still runs, so the second must wait.
        assert fake.calls == 1
        assert not second.done()
        gate.set()
        out = await second
        assert fake.calls == 2
        assert out["label"].shape == (1,)


async def test_cancelled_calls_free_their_slots_queued_at_once_running_when_done() -> None:
    config = _config(model_names=("digits-small",), per_model_concurrency=2)
    async with Runtime(config) as rt:
        gate = threading.Event()
        fake = _fake(rt, "digits-small", gate=gate)
        running = [asyncio.create_task(rt.infer("digits-small", {"X": _x()})) for _ in range(2)]
        assert await asyncio.to_thread(fake.wait_for_calls, 2)
        queued = [asyncio.create_task(rt.infer("digits-small", {"X": _x()})) for _ in range(2)]
        await asyncio.sleep(0)  # both are queued behind the running two
        for task in (running[0], queued[0]):
            task.cancel()
        for task in (running[0], queued[0]):
            with pytest.raises(asyncio.CancelledError):
                await task
        # The running call is asked to stop; onnxruntime sees the flag.
        assert fake.options[0].terminate
        assert not fake.options[1].terminate
        gate.set()
        results = await asyncio.gather(running[1], queued[1])
        assert [r["label"].shape for r in results] == [(1,), (1,)]
        # The cancelled queued call never ran.
        assert fake.calls == 3
        # Both slots are free again: two new calls run at the same time.
        again = threading.Event()
        second = _fake(rt, "digits-small", gate=again)
        tasks = [asyncio.create_task(rt.infer("digits-small", {"X": _x()})) for _ in range(2)]
        assert await asyncio.to_thread(second.wait_for_calls, 2)
        again.set()
        await asyncio.gather(*tasks)


async def test_many_cancelled_calls_leave_the_model_serving() -> None:
    config = _config(model_names=("digits-small",), per_model_concurrency=2, executor_threads=2)
    async with Runtime(config) as rt:
        _fake(rt, "digits-small", delay=0.001)
        tasks = [asyncio.create_task(rt.infer("digits-small", {"X": _x()})) for _ in range(200)]
        await asyncio.sleep(0.01)
        for task in tasks[::2]:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for i, result in enumerate(results):
            if isinstance(result, asyncio.CancelledError):
                assert i % 2 == 0
            else:
                assert isinstance(result, dict)
        out = await rt.infer("digits-small", {"X": _x()})
        assert out["label"].shape == (1,)


@pytest.mark.parametrize("how", ["aclose", "close on another thread"])
async def test_close_finishes_running_calls_and_fails_queued_ones(how: str) -> None:
    rt = Runtime(_config(model_names=("digits-small",), per_model_concurrency=1))
    gate = threading.Event()
    fake = _fake(rt, "digits-small", gate=gate)
    running = asyncio.create_task(rt.infer("digits-small", {"X": _x(2)}))
    assert await asyncio.to_thread(fake.started.wait, 30)
    queued = asyncio.create_task(rt.infer("digits-small", {"X": _x()}))
    await asyncio.sleep(0)
    if how == "aclose":
        closing = asyncio.create_task(rt.aclose())
    else:
        closing = asyncio.create_task(asyncio.to_thread(rt.close))
    with pytest.raises(InferenceFailed, match="model 'digits-small': the runtime is closed"):
        await queued
    with pytest.raises(InferenceFailed, match="closed"):
        await rt.infer("digits-small", {"X": _x()})
    # close waits for the call still running...
    await asyncio.sleep(0.05)
    assert not closing.done()
    gate.set()
    # ...and its caller still gets the result.
    out = await running
    assert out["label"].shape == (2,)
    await closing
    assert fake.calls == 1


def test_calls_from_several_event_loops(
    digits: tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]],
) -> None:
    x = digits[0][:100]

    async def rows(rt: Runtime) -> np.ndarray[Any, Any]:
        outs = await asyncio.gather(
            *(rt.infer("digits-small", {"X": x[i : i + 1]}) for i in range(len(x)))
        )
        return np.concatenate([o["label"] for o in outs])

    with Runtime(_config(model_names=("digits-small",), executor_threads=2)) as rt:
        expected = asyncio.run(rt.infer("digits-small", {"X": x}))["label"]
        # One loop after another, then two loops on two threads at once.
        np.testing.assert_array_equal(asyncio.run(rows(rt)), expected)
        results: list[np.ndarray[Any, Any]] = []
        threads = [
            threading.Thread(target=lambda: results.append(asyncio.run(rows(rt)))) for _ in range(2)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    assert len(results) == 2
    for labels in results:
        np.testing.assert_array_equal(labels, expected)


async def test_closed_runtime_refuses_calls() -> None:
    rt = Runtime(_config(model_names=("digits-small",)))
    await rt.aclose()
    with pytest.raises(InferenceFailed, match="closed"):
        await rt.infer("digits-small", {"X": _x()})
    rt.close()  # idempotent


# --- integrity and discovery ----------------------------------------------------------


@pytest.fixture
def models_copy(tmp_path: Path) -> Path:
    target = tmp_path / "models"
    shutil.copytree(MODELS_DIR, target, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    return target


def test_tampered_model_refuses_to_load(models_copy: Path, manifest: dict[str, Any]) -> None:
    path = models_copy / "digits-small.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ModelIntegrityError) as info:
        Runtime(_config(models_copy))
    message = info.value.message
    assert "digits-small.onnx" in message
    assert manifest["models"]["digits-small"]["sha256"] in message
    assert hashlib.sha256(data).hexdigest() in message


def test_missing_listed_model_refuses_to_load(models_copy: Path) -> None:
    (models_copy / "digits-large.onnx").unlink()
    with pytest.raises(ModelIntegrityError, match=r"digits-large\.onnx.*does not exist"):
        Runtime(_config(models_copy))


def test_manifest_signature_must_match_the_model(models_copy: Path) -> None:
    manifest_path = models_copy / "manifest.toml"
    text = manifest_path.read_text(encoding="utf-8")
    manifest_path.write_text(text.replace("shape = [-1, 64]", "shape = [-1, 65]", 1), "utf-8")
    with pytest.raises(ModelIntegrityError) as info:
        Runtime(_config(models_copy))
    assert "does not match its manifest" in info.value.message
    assert "[-1, 65]" in info.value.message
    assert "[-1, 64]" in info.value.message


def test_invalid_manifest_names_the_file(models_copy: Path) -> None:
    manifest_path = models_copy / "manifest.toml"
    text = manifest_path.read_text(encoding="utf-8")
    manifest_path.write_text(
        text.replace("compute_only = false", 'compute_only = "no"', 1), "utf-8"
    )
    with pytest.raises(ConfigError, match=r"manifest\.toml.*'compute_only' must be true or false"):
        Runtime(_config(models_copy))
    manifest_path.write_text("[models\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid TOML"):
        Runtime(_config(models_copy))


async def test_user_model_without_manifest_is_served_under_its_stem(tmp_path: Path) -> None:
    path = tmp_path / "my-model.onnx"
    shutil.copyfile(MODELS_DIR / "digits-small.onnx", path)
    async with Runtime(_config(tmp_path)) as rt:
        assert rt.names == ("my-model",)
        spec = rt.spec("my-model")
        assert spec.source == "file"
        assert spec.version == UNLISTED_VERSION
        assert spec.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
        assert spec.accuracy is None
        assert spec.compute_only is False
        assert [t.to_wire() for t in spec.inputs] == [
            {"name": "X", "dtype": "float32", "shape": [-1, 64]}
        ]
        out = await rt.infer("my-model", {"X": _x(3)})
        assert out["label"].shape == (3,)


def test_unlisted_file_next_to_a_manifest_is_served_too(models_copy: Path) -> None:
    shutil.copyfile(models_copy / "digits-small.onnx", models_copy / "extra.onnx")
    with Runtime(_config(models_copy, model_names=("digits-small", "extra"))) as rt:
        assert rt.spec("digits-small").source == "manifest"
        assert rt.spec("extra").source == "file"


def test_broken_user_file_is_skipped_with_an_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    shutil.copyfile(MODELS_DIR / "digits-small.onnx", tmp_path / "good.onnx")
    (tmp_path / "broken.onnx").write_bytes(b"not a model")
    with (
        caplog.at_level(logging.ERROR, logger="mesh.runtime"),
        Runtime(_config(tmp_path)) as rt,
    ):
        assert rt.names == ("good",)
    assert any("broken.onnx" in r.getMessage() for r in caplog.records)
    # Asked for by name, the same file is a configuration error, with the reason.
    with pytest.raises(ConfigError, match=r"'broken': .*cannot load"):
        Runtime(_config(tmp_path, model_names=("broken",)))


def test_unsupported_tensor_types_are_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    onnx = pytest.importorskip("onnx")
    helper = onnx.helper
    graph = helper.make_graph(
        [helper.make_node("Identity", ["text"], ["same"])],
        "strings",
        [helper.make_tensor_value_info("text", onnx.TensorProto.STRING, [None])],
        [helper.make_tensor_value_info("same", onnx.TensorProto.STRING, [None])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (tmp_path / "strings.onnx").write_bytes(model.SerializeToString())
    with (
        caplog.at_level(logging.ERROR, logger="mesh.runtime"),
        Runtime(_config(tmp_path)) as rt,
    ):
        assert rt.names == ()
    assert any(
        "strings.onnx" in r.getMessage() and "tensor(string)" in r.getMessage()
        for r in caplog.records
    )


def test_model_names_filter_and_unknown_names() -> None:
    with Runtime(_config(model_names=("digits-small",))) as rt:
        assert rt.names == ("digits-small",)
    with pytest.raises(ConfigError) as info:
        Runtime(_config(model_names=("digits-small", "resnet")))
    message = info.value.message
    assert "'resnet'" in message
    assert "'cnn-heavy', 'digits-large', 'digits-small'" in message


def test_missing_model_dir(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        Runtime(_config(tmp_path / "nowhere"))


def test_duplicate_names_across_dirs(tmp_path: Path) -> None:
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        shutil.copyfile(MODELS_DIR / "digits-small.onnx", tmp_path / sub / "same.onnx")
    with pytest.raises(ConfigError, match="two models are named 'same'"):
        Runtime(_config(tmp_path / "a", tmp_path / "b"))
    # A user's copy of a bundled model clashes with the manifest entry.
    shutil.copyfile(MODELS_DIR / "digits-small.onnx", tmp_path / "a" / "digits-small.onnx")
    with pytest.raises(ConfigError, match="two models are named 'digits-small'"):
        Runtime(_config(MODELS_DIR, tmp_path / "a", model_names=("same",)))


def test_bad_user_file_name_is_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    shutil.copyfile(MODELS_DIR / "digits-small.onnx", tmp_path / "my model.onnx")
    with (
        caplog.at_level(logging.ERROR, logger="mesh.runtime"),
        Runtime(_config(tmp_path)) as rt,
    ):
        assert rt.names == ()
    assert any("my model.onnx" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    "kwargs",
    [{"executor_threads": 0}, {"per_model_concurrency": 0}, {"intra_op_threads": 0}],
)
def test_bad_runtime_config(kwargs: dict[str, int]) -> None:
    with pytest.raises(ConfigError, match="must be an integer >= 1"):
        Runtime(_config(**kwargs))


async def test_load_reports_service_time_and_idle_slots(runtime: Runtime) -> None:
    before = {m.name: m for m in runtime.load()}
    assert before["digits-small"].service_ewma_s is None
    await asyncio.gather(*(runtime.infer("digits-small", {"X": _x(4)}) for _ in range(20)))
    after = {m.name: m for m in runtime.load()}
    small = after["digits-small"]
    assert small.service_ewma_s is not None
    assert small.service_ewma_s > 0
    assert (small.queued, small.executing) == (0, 0)
    assert after["digits-large"].service_ewma_s is None  # never called
    assert runtime.threads >= 1
