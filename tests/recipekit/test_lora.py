"""recipekit.lora: adapters where the options put them, and generation with the adapter on, merged, or off."""

from __future__ import annotations

from recipekit import lora
from recipekit.schema import LoraOptions, ModelOptions


def tiny(tiny_model):
    import torch
    from transformers import AutoModelForCausalLM

    from recipekit import models

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(models.resolve(tiny_model), dtype=torch.float32)


def test_top_layers_name_the_linear_layers_and_restrict_the_adapters(tiny_model):
    model = tiny(tiny_model)
    config = lora.lora_config(LoraOptions(peft_top_layers=1, peft_lora_r=4), model)
    assert config.layers_to_transform == [1] and config.r == 4
    assert sorted(config.target_modules) == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj",
                                             "v_proj"]
    assert lora.lora_config(LoraOptions(), model).target_modules == "all-linear"


def test_generation_sees_the_base_model_or_the_merged_adapter_and_the_adapter_stays(tiny_model):
    import torch
    from peft import LoraConfig, get_peft_model

    base = tiny(tiny_model)
    ids = torch.randint(3, 1000, (1, 6))
    with torch.no_grad():
        expected_base = base(input_ids=ids).logits
        model = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False))
        adapted = model(input_ids=ids).logits
        with lora.generation_view(model, ModelOptions(), adapter=False) as view:
            assert torch.allclose(view(input_ids=ids).logits, expected_base, atol=1e-5)
        with lora.generation_view(model, ModelOptions(), adapter=True) as view:
            assert torch.allclose(view(input_ids=ids).logits, adapted, atol=1e-5)
            assert model.base_model.model.model.layers[0].self_attn.q_proj.merged
        assert not model.base_model.model.model.layers[0].self_attn.q_proj.merged  # unmerged again
        assert torch.allclose(model(input_ids=ids).logits, adapted, atol=1e-5)
