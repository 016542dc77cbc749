"""atomic.write_json: the one writer of the project's JSON, always strict."""

from __future__ import annotations

import json
import math

import numpy as np

from aevae import atomic


def test_non_finite_numbers_become_null_at_any_depth(tmp_path):
    path = tmp_path / "out.json"
    atomic.write_json(
        path,
        {
            "kl": float("inf"),
            "nan": math.nan,
            "neg": -np.inf,
            "ok": np.float64(1.5),
            "nested": {"list": [1.0, float("nan"), (float("-inf"), 2)]},
        },
    )
    text = path.read_text()
    strict = json.loads(text, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(f"bare {c}")))
    assert strict == {"kl": None, "nan": None, "neg": None, "ok": 1.5, "nested": {"list": [1.0, None, [None, 2]]}}
