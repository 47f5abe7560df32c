import pytest

from headstart.config import PretrainConfig, load_config, parse_overrides, recipe_names
from headstart.errors import HeadstartError


def test_recipes_load_and_overrides_apply():
    assert {"gpt-tiny", "bert-tiny", "quickstart", "shakespeare-char"} <= set(recipe_names())
    config = load_config(PretrainConfig, "gpt-tiny", ["model.n_layer=3", "train.compile=true", "optim.lr=1e-4"])
    assert config.model.n_layer == 3
    assert config.train.compile is True
    assert config.optim.lr == pytest.approx(1e-4)
    assert config.objective.name == "clm"


def test_parse_overrides_nests_and_types_values():
    assert parse_overrides(["a.b=3", "a.c=true", "d=x"]) == {"a": {"b": 3, "c": True}, "d": "x"}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.n_layr=3", "did you mean model.'n_layer'"),
        ("modle.n_layer=3", "did you mean 'model'"),
        ("train.steps=many", "expected int"),
        ("train.compile=maybe", "expected one of auto, True, False"),
        ("model.n_layer", "expected section.field=value"),
    ],
)
def test_bad_overrides_fail_with_one_line(override, message):
    with pytest.raises(HeadstartError) as info:
        load_config(PretrainConfig, "gpt-tiny", [override])
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_unknown_recipe_suggests_closest():
    with pytest.raises(HeadstartError, match="did you mean 'gpt-tiny'"):
        load_config(PretrainConfig, "gpt-tin")


def test_yaml_file_config(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model: {n_layer: 2}\ntrain: {steps: 5}\n")
    config = load_config(PretrainConfig, str(path), ["train.steps=7"])
    assert (config.model.n_layer, config.train.steps) == (2, 7)
    with pytest.raises(HeadstartError, match="no such file"):
        load_config(PretrainConfig, str(tmp_path / "missing.yaml"))
