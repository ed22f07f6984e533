from __future__ import annotations

import pytest

import gradcomp
from gradcomp.config import parse_spec, resolve_config


def test_parse_spec() -> None:
    assert parse_spec("topk") == ("topk", {})
    assert parse_spec(" topk : ratio = 0.05 ") == ("topk", {"ratio": 0.05})


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("", "malformed"),
        (":ratio=0.1", "malformed"),
        ("topk:", "nothing after"),
        ("topk:ratio", "is not 'key=value'"),
        ("topk:ratio=", "is not 'key=value'"),
        ("topk:ratio=abc", "is not a number"),
        ("topk:ratio=nan", "not finite"),
        ("topk:ratio=0.1,ratio=0.2", "given twice"),
    ],
)
def test_malformed_specs(spec: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_spec(spec)


def test_resolve_forms_agree() -> None:
    a = resolve_config("topk:ratio=0.02", {})
    b = resolve_config("topk", {"ratio": 0.02})
    c = resolve_config(gradcomp.TopK(ratio=0.02), {})
    assert a == b == c
    assert a.spec == "topk:ratio=0.02"
    assert resolve_config("topk", {}).ratio == 0.01  # the default


@pytest.mark.parametrize(
    ("compressor", "options", "error", "match"),
    [
        (
            "topq",
            {},
            ValueError,
            "unknown compressor 'topq'; valid names: bf16, fp16, int8, none, powersgd, qsgd",
        ),
        ("topk", {"ratio": 0.0}, ValueError, r"ratio=0 is out of range; valid: ratio in \(0, 1\]"),
        ("topk", {"ratio": 1.5}, ValueError, "ratio=1.5 is out of range"),
        ("topk", {"ratio": -1}, ValueError, "out of range"),
        ("topk", {"ratio": "0.1"}, TypeError, "must be a number, got str"),
        ("topk", {"raito": 0.1}, ValueError, r"option\(s\) \['raito'\].*valid options: ratio"),
        ("none", {"ratio": 0.1}, ValueError, "valid options: none"),
        ("topk:ratio=0.1", {"ratio": 0.2}, ValueError, "both in the spec"),
        (gradcomp.TopK(), {"ratio": 0.2}, ValueError, "beside a config object"),
    ],
)
def test_bad_configs(compressor, options, error, match) -> None:
    with pytest.raises(error, match=match):
        resolve_config(compressor, options)


def test_config_objects_validate_on_construction() -> None:
    with pytest.raises(ValueError, match="out of range"):
        gradcomp.TopK(ratio=2)
    with pytest.raises(TypeError, match="must be a number"):
        gradcomp.TopK(ratio=True)
