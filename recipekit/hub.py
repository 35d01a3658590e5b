"""The Hugging Face Hub: the token (by reference), whether the Hub can be reached, and the final upload."""

from __future__ import annotations

import logging

from recipekit import distributed, models, secrets
from recipekit.errors import UsageError
from recipekit.schema import ModelOptions, TrainingOptions


def token(opts: ModelOptions) -> str | None:
    return secrets.read_secret("use_auth_token", opts.use_auth_token)


def check_reachable(opts: TrainingOptions, token: str | None) -> None:
    """Fail before training, not after it, when the model or push_to_hub needs a Hub that cannot be reached."""
    name = getattr(opts, "model_name", None)
    if name is not None and models.is_hub_id(name):
        from huggingface_hub import hf_hub_download

        hub_log = logging.getLogger("huggingface_hub")
        level = hub_log.level
        hub_log.setLevel(logging.ERROR)  # its warning about the failed request would repeat the error below
        try:
            hf_hub_download(name, "config.json", token=token)  # from the local Hub cache when offline
        except Exception as exc:  # noqa: BLE001 - network, auth and HTTP errors all mean the same here
            raise UsageError(f"model_name: {name!r} is neither an embedded alias ({', '.join(models.ALIASES)}) "
                             f"nor a local checkpoint, and no Hub model by that name can be reached "
                             f"({type(exc).__name__})") from None
        finally:
            hub_log.setLevel(level)
    if not opts.push_to_hub:
        return
    if token is None:
        raise UsageError("push_to_hub: needs use_auth_token (an env var name or file holding a Hub token)")
    from huggingface_hub import HfApi

    try:
        HfApi().whoami(token=token)
    except Exception as exc:  # noqa: BLE001 - network, auth and HTTP errors all mean the same here
        raise UsageError(f"push_to_hub: cannot reach the Hugging Face Hub ({type(exc).__name__}); "
                         "set push_to_hub: false or run with network access and a valid token") from None


def push(opts: TrainingOptions, model, tokenizer, token: str | None) -> None:
    """Upload the final model and its tokenizer to ``hub_model_id`` when ``push_to_hub`` is set (rank 0)."""
    if opts.push_to_hub and distributed.is_main():
        model.push_to_hub(opts.hub_model_id, token=token)
        tokenizer.push_to_hub(opts.hub_model_id, token=token)
