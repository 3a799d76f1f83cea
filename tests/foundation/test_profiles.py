"""Profiles: built-ins resolve, inheritance works, every bad file is one clear error."""
import json
import os
import textwrap

import pytest

from edgekit.contract.errors import EdgekitError
from edgekit.host.profiles import builtin_names, load_profile

EXPECTED = {
    # name: (runtime, variants, alignment, opset)
    "jetson": ("tensorrt", ("fp32", "fp16", "int8"), 8, 17),
    "jetson-nano": ("tensorrt", ("fp32", "fp16"), 8, 13),
    "hisilicon": ("onnxruntime", ("fp32", "int8"), 8, 11),
    "rk3588": ("onnxruntime", ("fp32", "int8"), 8, 12),
    "cpu": ("onnxruntime", ("fp32", "int8"), 16, 17),  # ONNX Runtime (MLAS) blocks 16 channels on AVX-512
}


def test_builtin_profiles_resolve_as_documented():
    assert set(EXPECTED) <= set(builtin_names())
    for name, (runtime, variants, alignment, opset) in EXPECTED.items():
        p = load_profile(name)
        assert (p.runtime, p.variants, p.alignment, p.opset) == (runtime, variants, alignment, opset), name
        json.dumps(p.to_dict())  # manifest-embeddable


def test_quantization_schemes_follow_the_hardware():
    assert load_profile("cpu").quantization.scheme == "u8s8"  # x86: uint8 activations
    assert load_profile("rk3588").quantization.scheme == "s8s8"  # ARM: int8 activations
    assert load_profile("hisilicon").quantization.scheme == "s8s8"
    jetson = load_profile("jetson")
    assert jetson.quantization.scheme == "tensorrt" and jetson.quantization.trt_calibration_cache


def test_extends_inherits_and_overrides_sections_key_by_key():
    nano = load_profile("jetson-nano")
    jetson = load_profile("jetson")
    assert nano.extends == ("jetson",)
    assert nano.tensorrt.version == "8.2.1" and jetson.tensorrt.version == "8.5.2"
    # untouched keys of an overridden section come from the parent
    assert nano.quantization == jetson.quantization
    assert nano.providers == jetson.providers


def write(tmp_path, name, body):
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return str(path)


def test_user_profile_extends_builtin_by_name(tmp_path):
    path = write(
        tmp_path,
        "orin-nx.toml",
        """
        extends = "jetson"
        description = "my Orin NX"
        alignment = 16
        [benchmark]
        iterations = 42
        """,
    )
    p = load_profile(path)
    assert p.name == "orin-nx"  # from the file name when not given
    assert p.alignment == 16 and p.benchmark.iterations == 42
    assert p.benchmark.warmup == load_profile("jetson").benchmark.warmup
    assert p.runtime == "tensorrt" and p.source == os.path.abspath(path)


def test_user_profile_extends_another_file_relative_to_itself(tmp_path):
    write(tmp_path, "base.toml", 'runtime = "onnxruntime"\nvariants = ["fp32"]\nalignment = 4\n')
    sub = tmp_path / "sub"
    sub.mkdir()
    path = write(sub, "child.toml", 'extends = "../base.toml"\nopset = 13\n')
    p = load_profile(path)
    assert (p.runtime, p.alignment, p.opset) == ("onnxruntime", 4, 13)


BAD = [
    # (body, words the one-line error must contain)
    ('extends = "cpu"\ncolour = "red"\n', ["unknown key 'colour'"]),
    ('extends = "cpu"\n[quantization]\nbits = 4\n', ["unknown key 'quantization.bits'"]),
    ('extends = "cpu"\nalignment = "8"\n', ["'alignment'", "power of two"]),
    ('extends = "cpu"\nalignment = 12\n', ["'alignment'", "power of two"]),
    ('extends = "cpu"\nalignment = 0\n', ["'alignment'", "power of two"]),
    ('extends = "cpu"\nalignment = -8\n', ["'alignment'", "power of two"]),
    ('extends = "cpu"\nopset = "17"\n', ["'opset'", "integer"]),
    ('extends = "cpu"\nruntime = "openvino"\n', ["'runtime'", "onnxruntime"]),
    ('extends = "cpu"\nvariants = ["fp32", "int4"]\n', ["'variants'", "int4"]),
    ('extends = "cpu"\nvariants = "fp32"\n', ["'variants'", "list"]),
    ('extends = "cpu"\n[benchmark]\niterations = 1.5\n', ["'benchmark.iterations'", "integer"]),
    ('extends = "cpu"\nquantization = 3\n', ["'quantization'", "table"]),
    ('extends = "no-such-board"\n', ["'extends'", "no-such-board"]),
    ('extends = "missing.toml"\n', ["'extends'", "missing.toml"]),
    ('description = "no runtime"\n', ["'runtime'", "missing"]),
    ('extends = "cpu"\nname = \n', ["not valid TOML"]),
]


@pytest.mark.parametrize("body,words", BAD)
def test_bad_profiles_give_one_line_naming_file_and_key(tmp_path, body, words):
    path = write(tmp_path, "bad.toml", body)
    with pytest.raises(EdgekitError) as info:
        load_profile(path)
    line = info.value.one_line()
    assert "\n" not in line
    assert "bad.toml" in line
    for word in words:
        assert word in line, line


def test_cyclic_extends_is_reported(tmp_path):
    write(tmp_path, "a.toml", 'extends = "b.toml"\nruntime = "onnxruntime"\n')
    path = write(tmp_path, "b.toml", 'extends = "a.toml"\n')
    with pytest.raises(EdgekitError) as info:
        load_profile(path)
    assert "cycle" in str(info.value) and "'extends'" in str(info.value)


def test_self_extension_is_a_cycle(tmp_path):
    path = write(tmp_path, "self.toml", 'extends = "self.toml"\nruntime = "onnxruntime"\n')
    with pytest.raises(EdgekitError, match="cycle"):
        load_profile(path)


def test_unknown_builtin_name_lists_the_known_ones():
    with pytest.raises(EdgekitError) as info:
        load_profile("jetsn")
    assert "jetson" in info.value.fix and "cpu" in info.value.fix


def test_missing_profile_file():
    with pytest.raises(EdgekitError, match="not found"):
        load_profile("/nonexistent/board.toml")


def test_tensorrt_int8_needs_the_tensorrt_scheme(tmp_path):
    path = write(tmp_path, "t.toml", 'extends = "jetson"\n[quantization]\nscheme = "u8s8"\n')
    with pytest.raises(EdgekitError, match="quantization.scheme"):
        load_profile(path)
