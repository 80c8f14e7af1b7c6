"""``keep_alive``: an http or grpc workload's opt-in to one connection kept across checks."""

from __future__ import annotations

import pytest

from healthd.config.editor import render
from healthd.config.loader import parse_text


@pytest.mark.parametrize("kind", ["http", "grpc"])
@pytest.mark.parametrize("value", [True, False])
def test_loads_and_renders_back(kind: str, value: bool) -> None:
    text = f"workload: w\ntype: {kind}\nport: 8080\nkeep_alive: {str(value).lower()}\n"
    cfg, problems = parse_text(text, "w.yaml", "w")
    assert problems == []
    assert cfg is not None
    assert cfg.keep_alive is value
    assert cfg.to_yaml_mapping()["keep_alive"] is value
    again, problems = parse_text(render(cfg), "w.yaml", "w")
    assert problems == []
    assert again == cfg


def test_unset_is_not_written() -> None:
    cfg, _ = parse_text("workload: w\ntype: http\n", "w.yaml", "w")
    assert cfg is not None
    assert cfg.keep_alive is None
    assert "keep_alive" not in cfg.to_yaml_mapping()


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("type: tcp\nport: 6379\nkeep_alive: true\n",
         "w.yaml:4: keep_alive: only for grpc and http checks (this is a tcp check)"),
        ("type: exec\ntarget: 'true'\nkeep_alive: false\n",
         "w.yaml:4: keep_alive: only for grpc and http checks (this is a exec check)"),
        ("type: http\nkeep_alive: sometimes\n",
         "w.yaml:3: keep_alive: expected true or false, got 'sometimes'"),
    ],
)  # fmt: skip
def test_problems(text: str, problem: str) -> None:
    cfg, problems = parse_text("workload: w\n" + text, "w.yaml", "w")
    assert cfg is None
    assert [str(p) for p in problems] == [problem]
