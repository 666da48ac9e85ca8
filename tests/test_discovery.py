"""nnU-Net's own trainer lookup finds our classes through nnUNet_extTrainer, with one class identity."""
import subprocess
import sys
from pathlib import Path

import pytest
from nnunetv2.utilities.find_class_by_name import recursive_find_python_class
from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

import nnunet_pdddpm
from nnunet_pdddpm import trainers
from nnunet_pdddpm.discovery import ENV_VAR, ensure_trainer_discovery, trainer_folder


@pytest.mark.parametrize("name", trainers.TRAINER_NAMES)
def test_nnunet_lookup_returns_the_package_class(name, monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    ensure_trainer_discovery()
    found = recursive_find_trainer_class_by_name(name)
    assert found is getattr(nnunet_pdddpm, name) is getattr(trainers, name)


def test_lookup_fails_without_the_environment_variable(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    with pytest.raises(RuntimeError):
        recursive_find_trainer_class_by_name("PDDDPMTrainer")


def test_nnunet_folder_search_finds_every_trainer_in_the_shim():
    """The search nnUNet_extTrainer triggers, on our folder alone: the shim exports every name of ``TRAINER_NAMES``
    (it copies them at import; nothing lists them a second time) and the folder holds nothing else."""
    folder = trainer_folder()
    assert sorted(p.name for p in Path(folder).glob("*.py")) == ["__init__.py", "nnunet_pdddpm_trainers.py"]
    for name in trainers.TRAINER_NAMES:
        found = recursive_find_python_class(folder, name, None, base_folder=folder,
                                            cleanup_imports_from_base_folder=True)
        assert found is getattr(trainers, name), name


def test_env_command_prints_an_export_line(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "/some/other")
    out = subprocess.run([sys.executable, "-m", "nnunet_pdddpm.cli.env"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"export {ENV_VAR}=/some/other:{trainer_folder()}"


def test_old_nnunetv2_is_refused_with_a_clear_message(monkeypatch):
    monkeypatch.setattr(nnunet_pdddpm, "version", lambda name: "2.5.0")
    with pytest.raises(ImportError, match="needs nnunetv2>=2.8.1 but nnunetv2 2.5.0 is installed"):
        nnunet_pdddpm._check_nnunetv2()
