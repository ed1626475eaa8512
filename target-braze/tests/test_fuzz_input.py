"""A few hundred seeded adversarial Singer streams: each ends in success, a reject with a
reason, or one clean error line; never "unexpected", never a hang."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys

import fuzz_streams
import pytest

CASES = 300
FIRST_SEED = 20_000
# The cases in parts, one test each, so that both workers can take a share.
PARTS = 2


@pytest.mark.parametrize("part", range(PARTS))
def test_adversarial_streams_end_in_success_a_reject_or_one_clean_line(braze, tmp_path, part):
    cases = CASES // PARTS
    first_seed = FIRST_SEED + part * cases
    results = tmp_path / "results.jsonl"
    log = tmp_path / "worker.log"
    with log.open("wb") as stderr, contextlib.suppress(subprocess.TimeoutExpired):
        subprocess.run(
            [
                sys.executable,
                fuzz_streams.__file__,
                str(results),
                str(tmp_path / "work"),
                braze.url,
                braze.api_key,
                str(first_seed),
                str(cases),
            ],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            timeout=900,  # a hang guard, not the verdict: the verdict is the results
            check=False,
        )
    lines = results.read_text().splitlines() if results.exists() else []
    started = [int(line.split()[1]) for line in lines if line.startswith("start ")]
    outcomes = [json.loads(line) for line in lines if line.startswith("{")]
    assert len(outcomes) == cases, (
        f"{len(outcomes)} of {cases} cases finished; case {started[-1] if started else None} "
        f"never ended. Worker log tail:\n{log.read_text(errors='replace')[-3000:]}"
    )
    problems = []
    for outcome in outcomes:
        problems += [f"seed {outcome['seed']}: {p}" for p in _problems(outcome)]
    assert not problems, "\n".join(problems[:20])
    kinds = {_kind(outcome) for outcome in outcomes}
    assert kinds == {"success", "rejects", "error"}, kinds  # the generator reaches all three


def _kind(outcome: dict) -> str:
    if outcome["code"] != 0:
        return "error"
    return "rejects" if outcome["rejects"] else "success"


def _problems(outcome: dict) -> list[str]:
    code, errors = outcome["code"], outcome["errors"]
    problems = ["a traceback in the output"] if outcome["traceback"] else []
    problems += [f"a reject without reason: {r}" for r in outcome["rejects"] if not r["reason"]]
    problems += [f"a reject without kind: {r}" for r in outcome["rejects"] if not r["error_type"]]
    if code == 0:
        if errors:
            problems.append(f"success with error output: {errors}")
        return problems
    if code != 1:
        return [*problems, f"ended with {code!r}: {errors}"]
    if len(errors) != 1:
        problems.append(f"not one error line: {errors}")
    elif "unexpected" in errors[0]:
        problems.append(errors[0])
    return problems
