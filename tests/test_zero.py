"""DeepSpeed ZeRO through Accelerate: every shipped launch/DeepSpeed config validated, and LoRA's
weight decay under ZeRO on real processes (DeepSpeed's CPU accelerator over gloo). The shipped configs
on every shipped launch file, DDP = ZeRO-1/2/3 included, are in test_shipped.py."""

import json

import pytest
import yaml
from safetensors.torch import load_file

from bonsai.config import ConfigError, config_from_dict
from bonsai.train.strategies.deepspeed_config import fill_deepspeed_config
from conftest import ROOT, base_config, losses, run_train, write_config

STEPS = 10
# Same data, same seed, fp32: the strategies differ only in the order fp32 gradients are summed
# (all-reduce vs reduce-scatter, bucketed). Seen: ~1e-6 after 10 Adam steps; 1e-5 leaves headroom
# while any real difference (a lost decay, a lost micro-batch, a wrong scale) moves the loss by >1e-4.
LOSS_TOL = 1e-5


def test_shipped_launch_configs_load_with_accelerate():
    from accelerate.commands.config.config_args import load_config_from_file

    shipped = sorted((ROOT / "launch").glob("*.yaml"))
    assert {p.stem for p in shipped} >= {"single_gpu", "ddp", "zero1", "zero2", "zero3", "zero3_offload",
                                         "multi_node_zero3"}
    for path in shipped:
        cfg = load_config_from_file(str(path))
        raw = yaml.safe_load(path.read_text())
        if raw["distributed_type"] == "DEEPSPEED":
            ds_file = ROOT / raw["deepspeed_config"]["deepspeed_config_file"]
            assert ds_file.exists(), f"{path.name} names a missing {ds_file}"
        assert cfg.num_processes >= 1


def test_shipped_deepspeed_configs_leave_batch_clipping_and_precision_to_bonsai():
    bonsai_cfg = config_from_dict(base_config(ROOT / "runs" / "x", ROOT / ".cache"))
    for path in sorted((ROOT / "ds_configs").glob("*.json")):
        ds = json.loads(path.read_text())
        for key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping"):
            assert ds[key] == "auto", f"{path.name}: {key} must be 'auto' (set once, in the Bonsai config)"
        fill_deepspeed_config(ds, bonsai_cfg, accumulation=2, world_size=4, mixed_precision="bf16", source=path.name)
        assert (ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"], ds["train_batch_size"]) == (
            4, 2, 32)
        assert ds["gradient_clipping"] == 1.0 and ds["bf16"]["enabled"] is True


def test_a_contradiction_between_deepspeed_json_and_bonsai_config_is_an_error():
    bonsai_cfg = config_from_dict(base_config(ROOT / "runs" / "x", ROOT / ".cache"))
    ds = {"train_micro_batch_size_per_gpu": 8, "gradient_accumulation_steps": "auto"}
    with pytest.raises(ConfigError, match=r"my.json: train_micro_batch_size_per_gpu is 8 but the Bonsai config gives 4 "
                                          r"\(train.micro_batch_size\)"):
        fill_deepspeed_config(ds, bonsai_cfg, 1, 2, "no", source="my.json")
    with pytest.raises(ConfigError, match="gradient_clipping is 0.5"):
        fill_deepspeed_config({"gradient_clipping": 0.5}, bonsai_cfg, 1, 2, "no")


def test_lora_under_zero_decays_its_adapters_as_ddp_does(tmp_path, model_cache):
    """LoRA at weight decay 0.1 with clipping (the shipped phi2_lora.yaml has 0.0, so the matrix in
    test_shipped.py cannot show a lost decay): under ZeRO-3 the adapters are partitioned, and the
    decay/no-decay split once saw their empty placeholders and decayed nothing."""
    runs = {}
    for launch in ("ddp", "zero3"):  # ZeRO-3 is where parameters are partitioned placeholders
        cfg = base_config(tmp_path / launch, model_cache)
        cfg["model"].update(finetune="lora", lora={"r": 4, "alpha": 8, "dropout": 0.0})
        cfg["train"].update(max_steps=STEPS, micro_batch_size=2, gradient_accumulation_steps=2, warmup_steps=2,
                            lr=1e-2, weight_decay=0.1, max_grad_norm=1.0)
        run_train(write_config(tmp_path / f"{launch}.yaml", cfg), nproc=2, launch=launch)
        runs[launch] = losses(tmp_path / launch)
    for launch in ("zero3",):
        for step in range(1, STEPS + 1):
            assert abs(runs[launch][step] - runs["ddp"][step]) < LOSS_TOL, (launch, step)
    reference = load_file(tmp_path / "ddp" / "model" / "adapter_model.safetensors")
    adapter = load_file(tmp_path / "zero3" / "model" / "adapter_model.safetensors")
    for key, tensor in reference.items():
        assert adapter[key].norm().item() == pytest.approx(tensor.norm().item(), rel=1e-4), key
