import importlib
import os
import tomllib

from conftest import ROOT

from ifnd_tf import console


def test_every_console_script_runs_the_python_m_command_of_its_name(monkeypatch):
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        scripts = tomllib.load(f)["project"]["scripts"]
    assert set(scripts) == {"ifnd-train", "ifnd-linear-eval", "ifnd-finetune", "ifnd-compare"}
    ran = []
    monkeypatch.setattr(console, "_run", ran.append)
    for name, target in scripts.items():
        module, function = target.split(":")
        getattr(importlib.import_module(module), function)()
        command = "ifnd_tf." + name.removeprefix("ifnd-").replace("-", "_")
        assert ran[-1] == command
        assert callable(importlib.import_module(command).main)  # what _run hands to app.run
