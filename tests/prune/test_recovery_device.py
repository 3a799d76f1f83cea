"""Recovery: a wrongly guessed output layout, errors worded for their caller, and ``--device``."""
import pytest
import torch

from edgekit.contract.errors import EdgekitError
from edgekit.host.prune import PruneConfig
from edgekit.host.prune.param_errors import ParameterError
from edgekit.host.prune.recovery import fits_layout, recover, resolve_device
from edgekit.host.prune.run import prune_and_recover, write_pruned

NO_GPU = not torch.cuda.is_available()


@pytest.fixture()
def unaligned_ref(tmp_path, zoo_file):
    (tmp_path / "extra.py").write_text(open(zoo_file).read() + "\n\ndef unaligned():\n    return Unaligned()\n")
    return "%s:unaligned" % (tmp_path / "extra.py")


# --- 1. --allow-unaligned with recovery (was: IndexError in the yolov5 loss) ---------------


def test_allow_unaligned_with_recovery_writes_the_model(run_cli, capsys, unaligned_ref, image_dir, tmp_path):
    # Unaligned's output is (1, 1024, 3): taken for a YOLOv5 detector by its shape,
    # whose loss read column 4 ("index 4 is out of bounds for dimension 1 with size 3").
    out = tmp_path / "out"
    args = ["prune", "--model", unaligned_ref, "--profile", "hisilicon", "--input-size", "32", "--calib", image_dir]
    code, stdout, stderr = run_cli(args + ["--recover-steps", "2", "--allow-unaligned", "--json", "--out", str(out)], capsys)
    assert code == 0, stderr
    assert "internal error" not in stderr and (out / "model.pt").is_file()
    import json

    recovery = json.loads(stdout)["recovery"]
    assert recovery["steps"] == 2 and recovery["layout"] == "generic"
    assert "[N, 1024, 3]" in recovery["layout_note"] and recovery["device"] == "cpu"


def test_layout_loss_is_used_only_where_the_outputs_fit(zoo, small_images):
    assert fits_layout("yolov5", torch.zeros(1, 100, 6)) and fits_layout("yolov5", torch.zeros(1, 100, 5))
    assert not fits_layout("yolov5", torch.zeros(1, 100, 3)) and not fits_layout("yolov5", torch.zeros(1, 100))
    assert fits_layout("yolov8", torch.zeros(1, 84, 100)) and not fits_layout("yolov8", torch.zeros(1, 4, 100))
    assert fits_layout(None, torch.zeros(3)) and fits_layout("logits", torch.zeros(1, 10))
    teacher = zoo.Unaligned().eval()
    student = zoo.Unaligned().eval()
    stats = recover(student, teacher, small_images, steps=2, layout="yolov5", device="cpu")
    assert stats["layout"] == "generic" and "yolov5 loss does not fit" in stats["layout_note"]
    assert stats["loss_first"] == stats["loss_first"]  # a number, not NaN


# --- 2. library errors name the caller's arguments -------------------------------------


@pytest.mark.parametrize(
    "kwargs, problem, fix",
    [
        ({}, "number of steps or a time budget", "give steps or time_budget_s"),
        ({"steps": 0}, "at least 1, got 0", "set steps to 1 or more"),
        ({"time_budget_s": -1.0}, "must be positive", "set time_budget_s to a positive number"),
        ({"steps": 1, "batch_size": 0}, "batch size", "set batch_size to 1 or more"),
        ({"steps": 1, "precision": "int4"}, "unknown precision", "set precision to one of"),
        ({"steps": 1, "device": "tpu"}, "unknown device 'tpu'", "set device to one of: auto, cpu, cuda"),
    ],
)
def test_recover_errors_name_its_own_arguments(zoo, small_images, kwargs, problem, fix):
    model = zoo.Residual().eval()
    with pytest.raises(ParameterError) as info:
        recover(model, model, small_images, **kwargs)
    assert problem in info.value.problem and info.value.fix.startswith(fix), str(info.value)
    assert "--" not in str(info.value)


def test_prune_and_recover_errors_name_its_arguments(zoo, small_images):
    with pytest.raises(ParameterError) as info:
        prune_and_recover(zoo.Residual().eval(), PruneConfig(ratio=0.25), (32, 32), small_images, recover_steps=0)
    assert str(info.value) == "recovery steps must be at least 1, got 0; set recover_steps to 1 or more"
    with pytest.raises(ParameterError) as info:
        prune_and_recover(zoo.Residual().eval(), PruneConfig(ratio=0.25), (32, 32), None, recover_steps=2)
    assert "give calib" in str(info.value) and "--" not in str(info.value)


def test_write_pruned_error_names_its_argument(zoo, small_images, tmp_path):
    result = prune_and_recover(zoo.Residual().eval(), PruneConfig(ratio=0.25), (32, 32), small_images)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ParameterError) as info:
        write_pruned(result, str(tmp_path / "file"))
    assert str(info.value).endswith("choose another out_dir")


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--recover-steps", "0"], "error: recovery steps must be at least 1, got 0; set --recover-steps to 1 or more"),
        (["--recover-seconds", "-2"], "error: recovery time budget must be positive, got -2.0; set --recover-seconds to a positive number of seconds"),
    ],
)
def test_prune_cli_words_library_errors_as_its_flags(run_cli, capsys, zoo_file, image_dir, tmp_path, extra, message):
    args = ["prune", "--model", "%s:Residual" % zoo_file, "--input-size", "32", "--calib", image_dir, "--out", str(tmp_path / "out")]
    code, stdout, stderr = run_cli(args + extra, capsys)
    assert code == 2 and stderr.strip().splitlines()[-1] == message
    assert "Traceback" not in stderr and not (tmp_path / "out").exists()


def test_prune_cli_out_error_names_the_flag(run_cli, capsys, zoo_file, tmp_path):
    (tmp_path / "file").write_text("x")
    code, stdout, stderr = run_cli(["prune", "--model", "%s:Residual" % zoo_file, "--input-size", "32", "--ratio", "0.25", "--out", str(tmp_path / "file")], capsys)
    assert code == 2 and stderr.strip().splitlines()[-1].endswith("choose another --out")


# --- 3. --device -------------------------------------------------------------------------


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device(None) == resolve_device("auto")
    with pytest.raises(ParameterError, match="unknown device 'gpu'"):
        resolve_device("gpu")


@pytest.mark.skipif(not NO_GPU, reason="this machine has a GPU")
def test_cuda_without_a_gpu_is_one_clear_error():
    with pytest.raises(ParameterError) as info:
        resolve_device("cuda")
    text = str(info.value)
    assert text.startswith("CUDA was asked for, but ") and "\n" not in text
    assert text.endswith("set device to cpu (or auto, which falls back to the CPU)")


def test_recovery_on_cpu_records_its_device_and_keeps_the_model_there(zoo, small_images):
    teacher = zoo.Residual().eval()
    result = prune_and_recover(teacher, PruneConfig(ratio=0.25), (32, 32), small_images, recover_steps=2, device="cpu")
    assert result.report.recovery["device"] == "cpu" and result.report.recovery["steps"] == 2
    assert {p.device.type for p in result.model.parameters()} == {"cpu"}
    assert result.report.recovery["precision"] in ("bf16", "fp32")  # fp16 autocast is CUDA only
    with pytest.raises(ParameterError, match="float16 training needs CUDA"):
        recover(result.model, teacher, small_images, steps=1, precision="fp16", device="cpu")


@pytest.mark.skipif(not NO_GPU, reason="this machine has a GPU")
def test_prune_cli_device_cuda_without_gpu_fails_before_pruning(run_cli, capsys, zoo_file, image_dir, tmp_path):
    args = ["prune", "--model", "%s:Residual" % zoo_file, "--input-size", "32", "--calib", image_dir, "--out", str(tmp_path / "out")]
    code, stdout, stderr = run_cli(args + ["--recover-steps", "2", "--device", "cuda"], capsys)
    last = stderr.strip().splitlines()[-1]
    assert code == 2 and last.startswith("error: CUDA was asked for, but ") and last.endswith("set --device to cpu (or auto, which falls back to the CPU)")
    assert stdout == "" and "Traceback" not in stderr  # refused before pruning: no report printed


@pytest.mark.skipif(not NO_GPU, reason="this machine has a GPU")
def test_build_device_cuda_without_gpu_fails_before_any_work(run_cli, capsys, tmp_path):
    out = tmp_path / "bundle"
    code, stdout, stderr = run_cli(["build", "--prune", "0,0.5", "--recover-steps", "2", "--device", "cuda", "--out", str(out)], capsys)
    last = stderr.strip().splitlines()[-1]
    assert code == 2 and last.startswith("error: CUDA was asked for") and "--device" in last
    assert not out.exists()


def test_cli_device_choices(run_cli, capsys, zoo_file, tmp_path):
    code, stdout, stderr = run_cli(["prune", "--model", "%s:Residual" % zoo_file, "--device", "tpu", "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "'tpu' is not one of 'auto', 'cpu', 'cuda'" in stderr


def test_parameter_error_is_an_edgekit_error():
    exc = ParameterError("p", "give {steps}")
    assert isinstance(exc, EdgekitError) and exc.exit_code == 2
    assert str(exc.worded({"steps": "recover_steps"}).worded({"recover_steps": "--recover-steps"})) == "p; give --recover-steps"


# --- 2b. pruning options: library words vs the CLI's flags -------------------------------


@pytest.mark.parametrize(
    "kwargs, library",
    [
        (dict(ratio=0.5, target_macs=0.5), "ratio and target_macs are alternatives, got both; give only one way of saying how much to prune"),
        (dict(bn_threshold=0.01), "bn_threshold needs the BatchNorm-scale criterion; set criterion to bn"),
        (dict(ratio=1.5), "pruning ratio 1.5 is out of range; set ratio to the fraction of channels to remove, 0 <= ratio < 1 (e.g. 0.5)"),
    ],
)
def test_prune_config_errors_name_its_fields(kwargs, library):
    with pytest.raises(ParameterError) as info:
        PruneConfig(**kwargs).validate()
    assert str(info.value) == library


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--ratio", "0.5", "--target-macs", "0.5"], "error: --ratio and --target-macs are alternatives, got both; give only one way of saying how much to prune"),
        (["--bn-threshold", "0.01"], "error: --bn-threshold needs the BatchNorm-scale criterion; set --criterion to bn"),
        (["--ignore", "nothing.here"], "error: --ignore 'nothing.here' matches no conv/linear layer;"),
    ],
)
def test_prune_cli_words_option_errors_as_its_flags(run_cli, capsys, zoo_file, tmp_path, extra, message):
    code, stdout, stderr = run_cli(["prune", "--model", "%s:Residual" % zoo_file, "--input-size", "32", "--out", str(tmp_path / "o")] + extra, capsys)
    assert code == 2 and stderr.strip().splitlines()[-1].startswith(message), stderr


def test_sensitivity_without_images_names_the_callers_argument(zoo):
    from edgekit.host.prune import prune_model

    with pytest.raises(ParameterError) as info:
        prune_model(zoo.Residual().eval(), torch.zeros(1, 3, 32, 32), PruneConfig(ratio=0.25, strategy="sensitivity"))
    assert str(info.value).endswith("give calib_images: images like the ones the model will see")
    with pytest.raises(ParameterError) as info:
        prune_and_recover(zoo.Residual().eval(), PruneConfig(ratio=0.25, strategy="sensitivity"), (32, 32), None)
    assert str(info.value).endswith("give calib: images like the ones the model will see")


def test_library_error_texts_name_no_cli_flag():
    # Every error raised in edgekit.host.prune is worded by slots; flag names live in host/cli.
    import os
    import re

    import edgekit.host.prune as package

    folder = os.path.dirname(package.__file__)
    offenders = []
    for name in sorted(os.listdir(folder)):
        if not name.endswith(".py"):
            continue
        source = open(os.path.join(folder, name)).read()
        for call in re.finditer(r"raise \w*Error\((.*?)\)\n", source, re.S):
            if re.search(r"[\"'][^\"']*--[a-z]", call.group(1)):
                offenders.append("%s: %s" % (name, " ".join(call.group(1).split())[:80]))
    assert offenders == []


@pytest.mark.skipif(NO_GPU, reason="needs a CUDA GPU (none here: this test did not run where it was written)")
@pytest.mark.parametrize("precision, expected", [("auto", None), ("fp16", "fp16")])
def test_recovery_on_cuda_comes_back_on_the_cpu(zoo, small_images, precision, expected):
    teacher = zoo.Residual().eval()
    result = prune_and_recover(teacher, PruneConfig(ratio=0.25), (32, 32), small_images)
    stats = recover(result.model, teacher, small_images, steps=3, device="cuda", precision=precision, masks=result.masks)
    assert stats["device"].startswith("cuda") and stats["steps"] == 3
    assert stats["precision"] == (expected or ("bf16" if torch.cuda.is_bf16_supported() else "fp16"))
    assert {p.device.type for p in result.model.parameters()} == {"cpu"}
    assert all(p.device.type == "cpu" for p in teacher.parameters())
    result.model(small_images[0])  # runs on the CPU after training on the GPU
