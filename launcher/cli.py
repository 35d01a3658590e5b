"""The ``launcher`` command line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click

from launcher import __version__, local, recipes

CONFIG = click.option("--config", type=click.Path(dir_okay=False), default=None,
                      help="config YAML to use instead of the recipe's config.yaml")
OVERRIDES = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                         help="override a config key (repeatable)")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="launcher")
def main() -> None:
    """Fine-tuning recipes that run the same locally, on Slurm and on Kubernetes."""


@main.command("list")
def list_recipes() -> None:
    """List the recipes with a one-line description."""
    found = recipes.all_recipes()
    width = max((len(r.name) for r in found), default=0)
    for recipe in found:
        click.echo(f"{recipe.name.ljust(width)}  {recipe.description}")


@main.command()
@click.argument("recipe")
@CONFIG
@OVERRIDES
@click.option("--nproc", type=click.IntRange(1, 1024), default=1, show_default=True,
              help="processes on this machine; more than 1 runs under torchrun (DDP)")
def run(recipe: str, config: str | None, overrides: tuple[str, ...], nproc: int) -> None:
    """Run RECIPE (a directory such as recipes/sft, or its name) on this machine."""
    sys.exit(local.run(recipes.load(recipe), config, overrides, nproc))


@main.command()
@click.argument("recipe")
@CONFIG
@OVERRIDES
def validate(recipe: str, config: str | None, overrides: tuple[str, ...]) -> None:
    """Check RECIPE's config and data, and print the resolved config."""
    loaded = recipes.load(recipe)
    code = subprocess.run([sys.executable, *local.recipe_args(loaded, config, overrides), "--check"]).returncode
    sys.exit(code)


@main.group()
def models() -> None:
    """Manage the embedded models."""


@models.command("prepare")
@click.option("--tiny", is_flag=True, help="also build the tiny random test model")
def models_prepare(tiny: bool) -> None:
    """Convert the embedded SmolLM2 GGUF into a cached HF checkpoint (idempotent)."""
    from recipekit import models as modellib

    try:
        click.echo(modellib.prepare_embedded())
        if tiny:
            click.echo(modellib.prepare_tiny())
    except RuntimeError as exc:
        raise click.ClickException(str(exc)) from None


@main.command("try")
@click.argument("output", type=click.Path(exists=True, file_okay=False))
@click.option("--prompt", "prompts", multiple=True, help="a question to ask (repeatable); none = interactive")
@click.option("--max-new-tokens", type=click.IntRange(1, 4096), default=64, show_default=True)
def try_model(output: str, prompts: tuple[str, ...], max_new_tokens: int) -> None:
    """Chat with a trained model: an output dir, or a model/merged dir inside it."""
    from launcher import chat

    model_dir = chat.find_model_dir(Path(output))
    if model_dir is None:
        raise click.BadParameter(f"no model found in {output} (expected merged/ or model/ inside it)",
                                 param_hint="OUTPUT")
    generate = chat.load(model_dir)
    questions = iter(prompts) if prompts else chat.read_questions()
    for question in questions:
        click.echo(f"> {question}\n{generate(question, max_new_tokens)}")


if __name__ == "__main__":
    main()
