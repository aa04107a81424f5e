"""Config: one typed tree, errors name the key, overrides, dry run, every shipped config validates."""

import subprocess
import sys

import pytest
import yaml
from conftest import ROOT, base_config, write_config

from bonsai.config import REDACTED, ConfigError, load_config, redact, save_resolved


def _load(tmp_path, cfg, overrides=()):
    return load_config(write_config(tmp_path / "c.yaml", cfg), overrides)


def test_every_shipped_config_validates():
    shipped = sorted((ROOT / "configs").glob("*.yaml"))
    assert {p.name for p in shipped} >= {"demo.yaml", "phi2_lora.yaml", "phi2_full.yaml"}
    for path in shipped:
        cfg = load_config(path)
        for world in (1, 2, 8):
            if cfg.train.global_batch_size and cfg.train.global_batch_size % (cfg.train.micro_batch_size * world):
                continue
            assert cfg.check_world_size(world) >= 1


def test_phi2_configs_target_phi2_in_bf16_where_the_gpu_has_it():
    import torch

    from bonsai.train.distributed import resolve_precision

    for name, finetune in (("phi2_lora.yaml", "lora"), ("phi2_full.yaml", "full")):
        cfg = load_config(ROOT / "configs" / name)
        assert cfg.model.name_or_path == "microsoft/phi-2"
        assert cfg.model.finetune == finetune and cfg.train.precision == "auto"
        bf16_gpu = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        assert resolve_precision(cfg.train.precision) == ("bf16" if bf16_gpu else "no")
        assert not cfg.model.trust_remote_code
    lora = load_config(ROOT / "configs" / "phi2_lora.yaml").model.lora
    assert set(lora.target_modules) == {"q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2"}


def test_unknown_key_is_named_with_what_was_meant(tmp_path):
    cfg = base_config(tmp_path / "run", tmp_path)
    cfg["train"]["lrr"] = 1e-4
    with pytest.raises(ConfigError, match=r"train\.lrr: unknown key \(did you mean train\.lr\?\)"):
        _load(tmp_path, cfg)
    # a misspelling, a name from HF TrainingArguments, a key in the wrong section, and nothing close
    for override, meant in (("train.wieght_decay=0.1", "train.weight_decay"), ("train.learning_rate=1e-4", "train.lr"),
                            ("train.max_length=64", "data.max_length"), ("eval.zzz=1", None)):
        with pytest.raises(ConfigError) as err:
            _load(tmp_path, base_config(tmp_path / "run", tmp_path), [override])
        key = override.split("=")[0]
        assert str(err.value).splitlines()[1].endswith(f"{key}: unknown key" + (f" (did you mean {meant}?)" if meant else ""))


def test_version():
    from importlib.metadata import version

    out = subprocess.run([sys.executable, "-m", "bonsai.cli", "--version"], cwd=ROOT, capture_output=True, text=True,
                         timeout=60, check=False)
    assert out.returncode == 0 and out.stdout.strip() == f"bonsai {version('bonsai')}"


def test_wrong_type_is_named(tmp_path):
    cfg = base_config(tmp_path / "run", tmp_path)
    cfg["train"]["max_steps"] = "many"
    with pytest.raises(ConfigError, match=r"train\.max_steps: .*integer.*'many'"):
        _load(tmp_path, cfg)


def test_missing_section_and_unknown_choice(tmp_path):
    cfg = base_config(tmp_path / "run", tmp_path)
    del cfg["data"]
    cfg["model"]["finetune"] = "qlora"
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, cfg)
    assert "data: Field required" in str(err.value)
    assert "model.finetune" in str(err.value) and "'qlora'" in str(err.value)


def test_global_batch_must_divide_by_micro_batch_times_world(tmp_path):
    cfg = base_config(tmp_path / "run", tmp_path)
    del cfg["train"]["gradient_accumulation_steps"]
    cfg["train"]["global_batch_size"] = 12
    loaded = _load(tmp_path, cfg)
    assert loaded.check_world_size(1) == 3
    assert loaded.check_world_size(3) == 1
    with pytest.raises(ConfigError, match=r"train\.global_batch_size 12 is not divisible by .* world size 2 = 8"):
        loaded.check_world_size(2)


def test_conflicting_fields_are_refused(tmp_path):
    cfg = base_config(tmp_path / "run", tmp_path)
    cfg["train"]["global_batch_size"] = 8
    cfg["train"]["warmup_ratio"] = 0.1
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, cfg)
    assert "warmup_steps or warmup_ratio" in str(err.value)
    assert "gradient_accumulation_steps or global_batch_size" in str(err.value)


def test_dotted_overrides(tmp_path):
    cfg = _load(tmp_path, base_config(tmp_path / "run", tmp_path), ["train.lr=1e-4", "data.packing=false",
                                                                     "model.lora.target_modules=[fc1, fc2]"])
    assert cfg.train.lr == 1e-4 and cfg.data.packing is False and cfg.model.lora.target_modules == ["fc1", "fc2"]
    with pytest.raises(ConfigError, match=r"train\.nope: unknown key"):
        _load(tmp_path, base_config(tmp_path / "run", tmp_path), ["train.nope=1"])
    with pytest.raises(ConfigError, match="section.key=value"):
        _load(tmp_path, base_config(tmp_path / "run", tmp_path), ["train.lr"])


def test_secrets_are_redacted_when_saved(tmp_path):
    assert redact({"wandb": {"api_key": "abc", "project": "p"}, "hf_token": "hf_x", "empty_token": None,
                   "max_new_tokens": 96, "secret": "s"}) == {
        "wandb": {"api_key": REDACTED, "project": "p"}, "hf_token": REDACTED, "empty_token": None,
        "max_new_tokens": 96, "secret": REDACTED}
    cfg = _load(tmp_path, base_config(tmp_path / "run", tmp_path))
    save_resolved(cfg, tmp_path / "out" / "config.yaml")
    assert yaml.safe_load((tmp_path / "out" / "config.yaml").read_text())["train"]["lr"] == cfg.train.lr


def test_cli_dry_run_prints_resolved_config_and_errors_exit_2(tmp_path):
    path = write_config(tmp_path / "c.yaml", base_config(tmp_path / "run", tmp_path))
    ok = subprocess.run([sys.executable, "-m", "bonsai.cli", "train", str(path), "train.lr=5e-4", "--dry-run"],
                        capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert ok.returncode == 0, ok.stderr
    assert yaml.safe_load(ok.stdout)["train"]["lr"] == 5e-4
    assert not (tmp_path / "run").exists()
    bad = subprocess.run([sys.executable, "-m", "bonsai.cli", "train", str(path), "train.max_steps=0", "--dry-run"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert bad.returncode == 2
    assert "train.max_steps" in bad.stderr and "Traceback" not in bad.stderr


def test_saved_config_of_every_shipped_config_loads_back(tmp_path):
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        cfg = load_config(path)
        save_resolved(cfg, tmp_path / path.name)
        assert load_config(tmp_path / path.name) == cfg, path.name


def test_wandb_auto_mode_follows_wandb_mode_then_the_api_key(monkeypatch):
    from bonsai.config import WandbConfig
    from bonsai.observe.wandb_logger import resolve_mode

    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    assert resolve_mode(WandbConfig()) == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert resolve_mode(WandbConfig()) == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert resolve_mode(WandbConfig()) == "disabled"
    assert resolve_mode(WandbConfig(mode="offline")) == "offline"  # the config's own word wins


def test_every_cli_option_has_help():
    import argparse

    from bonsai.cli import _parser

    def undocumented(parser, path):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield from undocumented(sub, f"{path} {name}")
            elif not action.help:
                yield f"{path} {'/'.join(action.option_strings) or action.dest}"

    assert list(undocumented(_parser(), "bonsai")) == []
