"""Every graph call of the pipeline: one bounded retry, and every output held to the graph's contract.

The stages (encode, temporal, spatial) and the offline reference call their graph only through `run_graph`, so one
place decides what a failed call and an impossible value mean:
- a call that raises (a restarted Triton server, a transient ONNX Runtime or TensorRT error) is logged and retried
  once (`RETRIES`); when the retry fails too, `BackendCallError`. Feeds that do not fit the graph (`InputError`),
  and errors that say `retryable = False`, are not retried: the same call would fail the same way;
- `check_outputs` holds each output to `stp_edge.bundle.contract`: the names and shapes of `expected_io` (B, T
  as fed), finite values, and the ranges of `OUTPUT_RANGES`. A fp16 overflow or a hostile graph gives NaN, inf
  or 4.85; none of them may become a silent "normal".

Problems are named per item (a snippet, or a snippet's frame) as "temporal.onnx (ort-cpu) output 'score' for
stream 0 snippet 12: NaN", so the Detector can mark exactly those snippets invalid, or raise `GraphOutputError`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from stp_edge.backends.base import InputError, Runner, feed_layout, is_device_array
from stp_edge.bundle.contract import OUTPUT_RANGES, PROB_SUM_TOLERANCE, RANGE_TOLERANCE, OutputRange, Shape
from stp_edge.errors import BackendCallError, GraphOutputError, InferenceError

RETRIES = 1  # a failed graph call is tried once more before its snippets are given up
log = logging.getLogger("stp_edge")

OnError = Callable[[InferenceError], None]


@dataclass(frozen=True)
class Item:
    """What one output row means to the caller: a label for messages and where its values are.

    Attributes:
        label: e.g. "stream 0 snippet 12".
        index: Index of the item's values in every output (`output[index]`), e.g. (row,) or (row, position).
    """

    label: str
    index: tuple[int, ...]


def graph_label(graph: str, runner: Runner) -> str:
    """How messages name a graph: the runner's name ("temporal.onnx (ort-cpu)"), with the slot if it lacks it."""
    name = str(getattr(runner, "name", "") or "")
    return name if name.startswith(graph) else f"{graph} graph ({name or type(runner).__name__})"


def _first_line(exc: BaseException, limit: int = 300) -> str:
    text = (str(exc).strip().splitlines() or [""])[0]
    text = text if len(text) <= limit else text[:limit] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _retryable(exc: Exception) -> bool:
    return not isinstance(exc, InputError) and getattr(exc, "retryable", True)


def call_graph(runner: Runner, where: str, feeds: Mapping[str, Any], about: str = "",
               keep_on_device: Sequence[str] = ()) -> dict[str, Any]:
    """`runner.infer_batched(feeds)`, retried `RETRIES` times when it raises; the first failures are logged.

    With `keep_on_device`, one `runner.infer(feeds, keep_on_device=...)` instead (device outputs view the runner's
    buffers, which its next call overwrites: they cannot be concatenated over chunks; the caller chunks).

    Raises:
        BackendCallError: The call and its retry failed (the original error is its `__cause__`).
        InputError: The feeds do not fit the graph (not retried).
    """
    for attempt in range(RETRIES + 1):
        try:
            if keep_on_device:
                return runner.infer(feeds, keep_on_device=keep_on_device)
            return runner.infer_batched(feeds)
        except Exception as exc:
            if not _retryable(exc):
                raise
            if attempt == RETRIES:
                raise BackendCallError(f"{where} failed{about}, and so did its retry: {_first_line(exc)}; "
                                       f"check the backend (server, GPU) and run again") from exc
            log.warning("%s failed%s (%s); retrying once", where, about, _first_line(exc))
    raise AssertionError("unreachable")  # pragma: no cover


def _shape_problem(value: Any, shape: Shape, dims: Mapping[str, int], returned: Sequence[str]) -> str | None:
    """Why an output's array breaks its contract shape (dims: the sizes of the symbolic axes as fed), or None."""
    if value is None:
        return f"missing (the graph returned {sorted(returned)})"
    if is_device_array(value):  # a stand-in of its shape and dtype (no memory): its values stay on the device
        shape_, dtype, _ = feed_layout(value)
        arr = np.broadcast_to(np.empty((), dtype), shape_)
    else:
        arr = np.asarray(value)
    if arr.dtype.kind != "f":
        return f"dtype {arr.dtype.name}, expected float32"
    want = [d if isinstance(d, int) else dims.get(d) for d in shape]
    if arr.ndim != len(shape) or any(w is not None and w != g for w, g in zip(want, arr.shape, strict=False)):
        named = ", ".join(f"{d}={w}" if isinstance(d, str) and w is not None else str(d)
                          for d, w in zip(shape, want, strict=True))
        return f"shape {list(arr.shape)}, expected [{named}]"
    return None


def _bounds(rng: OutputRange) -> str:
    lo = "-inf" if rng.low is None else f"{rng.low:g}"
    hi = "inf" if rng.high is None else f"{rng.high:g}"
    return f"[{lo}, {hi}]"


def value_problem(values: np.ndarray, rng: OutputRange) -> str | None:
    """Why some values break their range (NaN, inf, out of bounds, probabilities not summing to 1), or None.

    Good values cost one reduction where only finiteness is asked (a sum: NaN and inf propagate through it; a
    finite sum proves finite values, an overflowing one falls through to the exact test), else two (min, max) and,
    for probabilities, a sum per vector; no copy of the array.
    """
    v = np.asarray(values)
    if v.size == 0:
        return None
    if rng == OutputRange():
        with np.errstate(over="ignore", invalid="ignore"):
            if math.isfinite(float(v.sum())):
                return None
    lo, hi = float(v.min()), float(v.max())
    if not (math.isfinite(lo) and math.isfinite(hi)):
        nan = int(np.isnan(v).sum())
        if nan:
            return "NaN" if v.size == 1 else f"NaN ({nan} of {v.size} values)"
        return "+inf" if hi == math.inf else "-inf"
    if rng.low is not None and lo < rng.low - RANGE_TOLERANCE:
        return f"{lo:.4g} outside {_bounds(rng)}"
    if rng.high is not None and hi > rng.high + RANGE_TOLERANCE:
        return f"{hi:.4g} outside {_bounds(rng)}"
    if rng.sums_to_one:
        sums = v.sum(axis=-1, dtype=np.float64).reshape(-1)
        worst = float(sums[np.argmax(np.abs(sums - 1.0))])
        if abs(worst - 1.0) > PROB_SUM_TOLERANCE:
            return f"probabilities sum to {worst:.4g}, expected 1 within {PROB_SUM_TOLERANCE:g}"
    return None


def check_outputs(graph: str, where: str, outputs: Mapping[str, Any], expected: Mapping[str, Shape],
                  dims: Mapping[str, int], items: Sequence[Item]) -> list[str | None]:
    """One problem per item (None: its values are fine), each naming graph, output and item.

    Every expected output is checked: present, float, the contract's shape with `dims` ({"B": rows fed, "T":
    window length}); then each item's values (`output[item.index]`) against `OUTPUT_RANGES[graph]`. A shape
    problem concerns every item of the call. Good outputs cost one vectorised pass per output.

    Args:
        graph: The slot ("encoder", "temporal", "spatial"), which picks the ranges.
        where: How messages name the graph (`graph_label`).
        outputs: What the runner returned, by output name.
        expected: Output name -> contract shape (`expected_io(...)[graph]["outputs"]`).
        dims: Sizes of the symbolic axes as fed.
        items: What each checked part of the outputs means to the caller.
    """
    problems: list[str | None] = [None] * len(items)
    for name, shape in expected.items():
        whole = _shape_problem(outputs.get(name), shape, dims, list(outputs))
        rng = OUTPUT_RANGES.get(graph, {}).get(name, OutputRange())
        if whole is None and is_device_array(outputs[name]):
            continue  # kept on the device: its shape is checked here, its values where they are read back
        arr = None if whole else np.asarray(outputs[name])
        if arr is not None and value_problem(arr, rng) is None:
            continue  # the common case: the whole output is fine
        for i, item in enumerate(items):
            if problems[i] is None:
                why = whole or value_problem(arr[item.index], rng)  # type: ignore[index]
                problems[i] = None if why is None else f"{where} output {name!r} for {item.label}: {why}"
    return problems


def output_error(problems: Sequence[str | None]) -> GraphOutputError:
    """The one-line error of a call whose outputs broke the contract (the first problem, and how many more)."""
    bad = [p for p in problems if p]
    more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
    return GraphOutputError(f"{bad[0]}{more}: the graph's outputs break its contract (stp_edge/bundle/contract.py); "
                            f"check the engine's precision or re-export the bundle, or load the Detector with "
                            f"on_invalid='mark' to keep going with these snippets marked invalid")


def run_graph(runner: Runner, graph: str, feeds: Mapping[str, Any], *, expected: Mapping[str, Shape],
              dims: Mapping[str, int], items: Sequence[Item], on_error: OnError | None = None,
              keep_on_device: Sequence[str] = ()) -> tuple[dict[str, Any] | None, list[str | None]]:
    """Call a graph (one retry) and check its outputs for `items`: the one door of every stage to its graph.

    `keep_on_device`: outputs left on the GPU (`Runner.infer`); their names, dtypes and shapes are checked here,
    their values by whoever reads them back (the device feature ring's check copy, `stp_edge.pipeline.device`).

    Returns:
        The outputs (None when the call failed) and one problem per item (None: its values can be used).

    Raises:
        BackendCallError, GraphOutputError: Without `on_error`; with it, the error is handed to `on_error` and
            the items concerned come back with their problem instead.
        InputError: The feeds do not fit the graph (never retried, never handed over).
    """
    where = graph_label(graph, runner)
    labels = list(dict.fromkeys(item.label for item in items))
    about = f" for {labels[0]}" + (f" and {len(labels) - 1} more" if len(labels) > 1 else "") if labels else ""
    try:
        outputs = call_graph(runner, where, feeds, about, keep_on_device)
    except BackendCallError as exc:
        if on_error is None:
            raise
        on_error(exc)
        return None, [f"backend error: {exc}"] * len(items)
    problems = check_outputs(graph, where, outputs, expected, dims, items)
    if any(problems):
        err = output_error(problems)
        if on_error is None:
            raise err
        on_error(err)
    return outputs, problems
