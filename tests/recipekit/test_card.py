"""recipekit.card: the model card names the real base model, the data and the run's measured numbers."""

from __future__ import annotations

from pathlib import Path

from recipekit import card, models, sft


def test_the_embedded_model_is_named_by_its_hub_id_and_a_hub_model_as_it_is(tmp_path):
    cfg = sft.Options(output_dir=str(tmp_path / "run"))
    metrics = {"hit_rate_before": 0.0, "hit_rate_after": 0.9, "eval_loss_before": 3.0012, "eval_loss_after": 0.025,
               "global_step": 111, "eval_examples": 80}
    text = card.render(cfg, "sft", metrics, tmp_path / "run" / "merged", "When is check-out?", "merged")
    assert cfg.model_name == models.EMBEDDED_MODEL and "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in text
    assert "| held-out answer hit rate | 0.0% | 90.0% |" in text and "| held-out eval loss | 3.0012 | 0.0250 |" in text
    assert "- train: `hotel` (split `train`)" in text and "- evaluation: `hotel` (split `eval`)" in text
    assert f"launcher try {tmp_path / 'run'} --prompt 'When is check-out?'" in text
    hub = card.render(sft.Options(model_name="org/base-7b", use_peft=False), "sft", {}, Path("out/model"), None,
                      "full")
    assert "base_model: org/base-7b" in hub and "library_name: transformers" in hub
    assert "No held-out evaluation was configured" in hub and "launcher try " in hub and "--prompt" not in hub


def test_preference_and_perplexity_numbers_get_their_rows():
    rows = card.results({"preference_accuracy_before": 0.0, "preference_accuracy_after": 0.75,
                         "perplexity_before": 20.0, "perplexity_after": 9.5, "hit_rate_after": None})
    assert rows[2:] == ["| held-out perplexity | 20.0000 | 9.5000 |", "| held-out preference accuracy | 0.0% | 75.0% |"]
