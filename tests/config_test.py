"""Config: validation messages, and command-line flags that come from its fields alone."""

import argparse
import dataclasses
import importlib.util
import typing
from pathlib import Path

import pytest

import dann_jax as dj
from dann_jax import cli, config, config_fields

ROOT = Path(__file__).resolve().parents[1]

ENUMERATIONS = {
    "arch": config.ARCHS,
    "resize": config.RESIZES,
    "mode": config.MODES,
    "lambda2_schedule": config.LAMBDA2_SCHEDULES,
    "optimizer": config.OPTIMIZERS,
    "bn_stats": config.BN_STATS,
    "precision": config.PRECISIONS,
    "bn_eval": config.BN_EVALS,
    "normalize": config.NORMALIZATIONS,
    "adversary": config.ADVERSARIES,
    "choose_by": config.CHOOSE_BY,
    "choose_checkpoint": config.CHOOSE_CHECKPOINTS,
    "input": config.INPUTS,
}


def _script(name):
    """Import ``experiments/<name>.py`` as a module (the folder is not a package)."""
    spec = importlib.util.spec_from_file_location(f"_{name}_script", ROOT / "experiments" / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _options(parser):
    """{dest: action} of the parser's flags, without --help."""
    return {a.dest: a for a in parser._actions if a.option_strings and a.dest != "help"}


def test_config_errors_name_the_flag():
    with pytest.raises(dj.ConfigError, match="--optimizer 'rmsprop'"):
        dj.Config(optimizer="rmsprop").validate()
    with pytest.raises(dj.ConfigError, match="--steps must be >= 1"):
        dj.Config(steps=0).validate()
    with pytest.raises(dj.ConfigError, match="steps is not set"):
        dj.hyperparams(dj.Config())


def test_every_field_is_a_flag_of_digits_and_every_flag_a_field():
    options = _options(_script("digits.py").parser())
    fields = [f.name for f in dataclasses.fields(dj.Config)]
    grouped = [name for group in cli.HELP_GROUPS.values() for name in group]
    assert sorted(grouped) == sorted(fields) and len(set(grouped)) == len(grouped)
    assert list(options) == ["recipe", *grouped]  # --recipe, then by group, in order
    hints = typing.get_type_hints(dj.Config)
    for name, action in options.items():
        off = [f"--no-{config_fields.flag(name)[2:]}"] if hints.get(name) is bool else []
        assert action.option_strings == [config_fields.flag(name), *off]  # bools: both ways
        assert action.help, name


def test_every_field_has_help_and_enumerations_their_choices():
    for f in dataclasses.fields(dj.Config):
        assert f.metadata["help"], f.name
        assert f.metadata.get("choices") is ENUMERATIONS.get(f.name), f.name
    assert "multihost" in dj.Config.__doc__ and "lr_alpha" in dj.Config.__doc__


def test_choices_of_the_flags_are_the_config_tuples():
    options = _options(cli.make_parser())
    for name, allowed in ENUMERATIONS.items():
        assert tuple(options[name].choices) == allowed, name
    assert options.pop("recipe").choices == list(cli.RECIPES)  # the scripts' own flag
    assert all(a.choices is None for n, a in options.items() if n not in ENUMERATIONS)


@pytest.mark.parametrize("name", sorted(ENUMERATIONS))
def test_validate_uses_the_same_choices(name):
    for value in ENUMERATIONS[name]:
        dj.Config(**{name: value}).validate()
    with pytest.raises(dj.ConfigError, match=f"{config_fields.flag(name)} 'nope' is not valid"):
        dj.Config(**{name: "nope"}).validate()


def test_help_lists_the_schedule_flags(capsys):
    with pytest.raises(SystemExit) as exit_:
        _script("digits.py").parser().parse_args(["--help"])
    assert exit_.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # the help wraps at the terminal width
    for needle in ("--gamma", "--lr-alpha", "--lr-beta", "--multihost", "(default: 0.75)"):
        assert needle in out, needle


def test_parsed_flags_give_the_config():
    parsed = cli.parse_config(
        ["--gamma", "5", "--lr-alpha", "0", "--bn-stats", "per_domain", "--batchnorm"]
    )
    assert parsed == dj.Config(gamma=5.0, lr_alpha=0.0, bn_stats="per_domain", batchnorm=True)
    assert isinstance(parsed.gamma, float)
    typed = cli.parse_config(["--steps", "7", "--seed", "3", "--data-dir", "d", "--multihost"])
    assert (typed.steps, typed.seed, typed.data_dir, typed.multihost) == (7, 3, "d", True)


def test_defaults_of_the_flags_are_the_config_defaults():
    parsed = cli.parse_config([])
    assert parsed == dj.Config()
    assert parsed.steps is None  # the experiment picks a length for the data found


def test_bad_choice_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.parse_config(["--bn-stats", "per_batch"])
    assert exit_.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_a_flag_on_by_default_can_be_turned_off():
    field = next(f for f in dataclasses.fields(dj.Config) if f.name == "analyze")
    kwargs = cli._argument(field, bool, True)
    parser = argparse.ArgumentParser()
    parser.add_argument("--analyze", **kwargs)
    assert parser.parse_args([]).analyze is True
    assert parser.parse_args(["--no-analyze"]).analyze is False


@pytest.mark.parametrize("script", ["digits.py", "adapt.py"])
def test_each_recipe_is_the_flags_its_help_names(script):
    # The help writes a recipe out as flags (--no-batchnorm for the paper's): each must
    # exist in every script, whatever that script's defaults, and mean the recipe.
    module = _script(script)
    for name in cli.RECIPES:
        flags = cli.recipe_flags(name)
        written = cli.config_from_args(module.parser(flags).parse_args(flags))
        named = cli.config_from_args(
            module.parser(["--recipe", name]).parse_args(["--recipe", name])
        )
        assert written == named
        for key, value in cli.RECIPES[name].items():
            assert getattr(written, key) == value, (script, name, key)


def test_unknown_fields_are_refused():
    with pytest.raises(ValueError, match="gama"):
        cli.add_config_arguments(argparse.ArgumentParser(), ["gama"])


def test_reproduce_shares_the_config_flags():
    parser = _script("reproduce.py").parser()
    args = parser.parse_args(["--batch-size", "8", "--vmap-seeds", "on"])
    base = cli.config_from_args(args)
    assert (base.steps, base.seeds, base.batch_size, base.eval_every) == (12_000, 3, 8, 2000)
    assert base.vmap_seeds is False  # its --vmap-seeds (auto/on/off) is the script's own
    assert args.vmap_seeds_choice == "on"
    digits = _options(cli.make_parser())
    shared = {n: a for n, a in _options(parser).items() if n in digits}
    assert set(shared) == {
        "data_dir", "tfds_dir", "steps", "seeds", "batch_size", "steps_per_call", "eval_every"
    }  # fmt: skip
    for name, action in shared.items():
        assert action.type == digits[name].type, name
        # The same text, less what "unset" means where this script sets its own default.
        assert digits[name].help.startswith(action.help), name
    assert "unset" not in shared["steps"].help and "unset" in digits["steps"].help


def test_run_cli_initialises_jax_distributed_when_multihost(monkeypatch, capsys):
    import jax

    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda: calls.append("init"))
    runner = lambda c: calls.append(c.workdir)
    assert cli.run_cli(dj.Config(workdir="w"), runner=runner) == 0
    assert calls == ["w"]
    assert cli.run_cli(dj.Config(workdir="m", multihost=True), runner=runner) == 0
    assert calls == ["w", "init", "m"]
    assert cli.run_cli(dj.Config(lr=-1.0, multihost=True), runner=runner) == 2
    assert calls == ["w", "init", "m"]  # refused before anything starts
    assert "--lr must be > 0" in capsys.readouterr().err
